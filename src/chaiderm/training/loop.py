"""The training loop: triplet logics (mined in-batch, or the paper's random triplets) or the
multiclass classifier (BaselineFT); validation every epoch; a checkpoint every epoch; resume.

``train`` is set-up (``_set_up``), epochs of steps (``_train_epoch``, ``_step``: the sum of the loss terms
of ``training.terms``), validation (``_validate_epoch``) and checkpointing (``_checkpoint``).

Determinism: every epoch re-seeds its own generators from (seed, epoch), so a run killed and
resumed at an epoch boundary produces the same weights as one that never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import chaiderm
from chaiderm._io import write_json
from chaiderm.config import RemovedSettingWarning, RunConfig
from chaiderm.data.diagnoses import VOCABULARY, canonical, require_class
from chaiderm.data.records import ImageTable, check_nested
from chaiderm.data.sampler import m_per_class_batches
from chaiderm.data.transforms import prepare
from chaiderm.errors import ArtifactError, DataError
from chaiderm.index.faiss_index import nearest_images
from chaiderm.index.knn import knn_vote, relevance_at_k
from chaiderm.losses.logic import encode_labels, get_rule
from chaiderm.losses.miners import sample_triplets
from chaiderm.models.embedding import EmbeddingNet, build_model, load_model, save_model
from chaiderm.models.inference import resolve_device
from chaiderm.storage.feedback import FeedbackTriplets
from chaiderm.training import distributed
from chaiderm.training.checkpoint import load_checkpoint, save_checkpoint
from chaiderm.training.terms import (
    Batch,
    ClassifierTerm,
    FeedbackTerm,
    LossTerm,
    MaskTerm,
    TripletTerm,
    forward_chunks,
    train_input,
)

StepCallback = Callable[[int, int, int, float], None]  # epoch, step, n_steps, loss
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    images: np.ndarray
    table: ImageTable


def _prepare(table: ImageTable, load_size: int, skip_bad: bool, progress=None) -> tuple[_Prepared, list[str]]:
    imgs, ok, errors = prepare(table.paths, load_size, skip_bad=skip_bad, progress=progress)
    return _Prepared(imgs, table.subset(ok)), errors


def validate(
    model: EmbeddingNet, train: _Prepared, val: _Prepared, image_size: int, k: int, positive: str
) -> dict[str, float]:
    """kNN AUC@k (and REL@k where validation images carry groups) of val queries against train."""
    idx = nearest_images(model, train.images, val.images, image_size, k)
    pos_train = train.table.is_positive(positive)
    y = val.table.is_positive(positive)
    out: dict[str, float] = {}
    if 0 < y.sum() < len(y):
        out["val_auc"] = float(roc_auc_score(y, knn_vote(pos_train[idx], idx.shape[1])))
    codes, names = encode_labels(list(train.table.groups) + list(val.table.groups))
    tr_g, va_g = codes[: len(train.table)], codes[len(train.table) :]
    if (va_g >= 0).any():
        has = va_g >= 0
        out["val_rel"] = float(relevance_at_k(va_g[has], tr_g[idx[has]], idx.shape[1]).mean())
    return out


def _optimizer(model: EmbeddingNet, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = [
        {"params": model.transferred_parameters(), "lr": t.lr_backbone},
        {"params": model.new_parameters(), "lr": t.lr_head},
    ]
    groups = [g for g in groups if g["params"]]
    if t.optimizer == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=t.momentum)


def _set_lr(opt: torch.optim.Optimizer, cfg: RunConfig, epoch: int) -> None:
    t = cfg.train
    factor = t.lr_gamma ** (epoch // t.lr_step) if t.lr_step > 0 else 1.0
    base = [t.lr_backbone, t.lr_head][-len(opt.param_groups) :]
    for g, lr in zip(opt.param_groups, base, strict=True):
        g["lr"] = lr * factor


def _batches(cfg: RunConfig, dis: np.ndarray, grp: np.ndarray, rng: np.random.Generator):
    """Yield ``(image indices, triplet indices into them or None)`` for one epoch."""
    t = cfg.train
    logic = t.logic
    if logic == "classifier":
        order = rng.permutation(len(dis))
        for s in range(0, len(order), t.batch_size):
            yield order[s : s + t.batch_size], None
        return
    rule = get_rule(logic)
    if t.protocol == "random":
        n_steps = max(1, math.ceil(t.triplets_per_epoch / max(1, t.batch_size // 3)))
        trip = sample_triplets(rule, dis, grp, n_steps * max(1, t.batch_size // 3), rng)
        for s in range(n_steps):
            part = trip[s * (t.batch_size // 3) : (s + 1) * (t.batch_size // 3)]
            uniq, inv = np.unique(part, return_inverse=True)
            inv = torch.from_numpy(inv.reshape(part.shape))
            yield uniq, (inv[:, 0], inv[:, 1], inv[:, 2])
        return
    if logic == "disease":
        label = dis
    elif logic in ("hierarchical", "nonhierarchical"):
        label = grp
    else:  # joint: group where annotated, else a pseudo-class per disease
        label = np.where(grp >= 0, grp, grp.max() + 1 + dis)
    for idx in m_per_class_batches(label, t.batch_size, t.m_per_class, rng):
        yield idx, None


@dataclass
class _Run:
    """One training run, set up: its own copy of the settings, the network, optimiser, data and terms."""

    cfg: RunConfig
    run_dir: Path
    model: EmbeddingNet
    dev: torch.device
    dd: distributed.Dist | None
    archive: _Prepared  # every training image: what validation searches
    train: _Prepared  # the images the steps draw from
    val: _Prepared | None
    dis: np.ndarray  # diagnosis code per training image
    grp: np.ndarray  # group code per training image (-1: none)
    terms: list[LossTerm]
    forward: Callable[[torch.Tensor], torch.Tensor]  # what a batch term scores: embeddings or logits
    skipped: list[str]
    opt: torch.optim.Optimizer | None = None
    ema: AveragedModel | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = -1
    start_epoch: int = 0

    @property
    def main(self) -> bool:
        """Only the first process writes, validates and reports."""
        return self.dd is None or self.dd.main

    @property
    def kept(self) -> EmbeddingNet:
        """The weights that are validated and saved."""
        return self.model if self.ema is None else self.ema.module


def train(
    cfg: RunConfig,
    train_table: ImageTable,
    out: str | Path,
    *,
    val_table: ImageTable | None = None,
    init: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    skip_bad: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_prepare: Callable[[], None] | None = None,
    feedback: FeedbackTriplets | None = None,
    masks: ImageTable | None = None,
    device: str = "cpu",
    extra_terms: Sequence[LossTerm] = (),
) -> TrainResult:
    """Train an embedding and write ``out/{config.json, model.safetensors, history.json, checkpoints/}``.

    ``cfg`` is not changed: the run works on its own copy, and the settings it completes (the data's
    fingerprint, the backbone's frozen stages...) are in the saved ``config.json``. ``device`` (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``...) only says where the arithmetic runs; it is not a setting of the result, so
    it is kept out of the saved config and a run may resume on another device. ``extra_terms``: loss terms
    added to every step after the run's own (``training.terms``).
    """
    run = _set_up(
        copy.deepcopy(cfg),
        train_table,
        Path(out),
        val_table=val_table,
        init=init,
        resume=resume,
        force=force,
        skip_bad=skip_bad,
        on_prepare=on_prepare,
        feedback=feedback,
        masks=masks,
        device=device,
        extra_terms=extra_terms,
    )
    for epoch in range(run.start_epoch, run.cfg.train.epochs):
        rec = _train_epoch(run, epoch, on_step)
        if not run.main:  # the others wait for the first process to validate and write
            distributed.barrier()
            continue
        _validate_epoch(run, epoch, rec)
        _checkpoint(run, epoch, rec)
        if on_epoch is not None:
            on_epoch(epoch, rec)
        if run.dd is not None:
            distributed.barrier()
    if run.main and not (run.run_dir / "model.safetensors").exists():  # zero epochs: the initial weights
        save_model(run.kept, run.run_dir, run.cfg)
    distributed.barrier()
    return TrainResult(run.run_dir, run.history, run.best_epoch, run.skipped)


def _set_up(
    cfg: RunConfig,
    train_table: ImageTable,
    run_dir: Path,
    *,
    val_table: ImageTable | None,
    init: str | Path | None,
    resume: bool,
    force: bool,
    skip_bad: bool,
    on_prepare: Callable[[], None] | None,
    feedback: FeedbackTriplets | None,
    masks: ImageTable | None,
    device: str,
    extra_terms: Sequence[LossTerm],
) -> _Run:
    """Everything before the first step. ``cfg`` is the run's own copy: it is completed here."""
    # under torchrun: one share of every batch per process, the whole batch's loss (training.distributed)
    dd = distributed.from_env()
    if dd is not None:
        device = distributed.init(dd, device)
    dev = resolve_device(device)
    cfg.train.positive_class = canonical(cfg.train.positive_class)  # before --resume compares: 'mel' is 'melanoma'
    cfg, ckpt = _open_run(cfg, run_dir, resume, force)
    _check_data(cfg, train_table, run_dir)
    model = _build(cfg, init, resumed=ckpt is not None)
    diseases = sorted(set(train_table.diagnoses))
    objective: LossTerm = ClassifierTerm() if cfg.train.logic == "classifier" else TripletTerm(cfg)
    for term in (objective, *extra_terms):  # layers of their own, before the optimiser sees the parameters
        term.prepare(model, cfg, len(diseases))
    cfg.version = chaiderm.__version__
    model.to(dev)
    if dd is not None:
        distributed.broadcast_state(model)
    run = _prepare_data(cfg, run_dir, model, dev, dd, train_table, val_table, skip_bad, on_prepare)
    terms = [objective]
    if feedback is not None:
        terms.append(FeedbackTerm(feedback, run.train.images, run.train.table.image_ids, cfg))
    if masks is not None:
        terms.append(MaskTerm(masks, cfg))
        cfg.data.masks = masks.source or f"{len(masks)} images with lesion masks"
    run.terms = [*terms, *extra_terms]
    if cfg.train.logic == "classifier":
        run.forward = lambda c: model.classifier(model.pool(model.forward_features(c)))
    _start_optimiser(run, ckpt)
    if run.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    return run


def _open_run(cfg: RunConfig, run_dir: Path, resume: bool, force: bool) -> tuple[RunConfig, dict | None]:
    """The settings to train with and the checkpoint to resume from (None: a fresh run)."""
    ckpt = load_checkpoint(run_dir) if resume else None
    if not resume and not force and (run_dir / "checkpoints").exists():
        raise ArtifactError(f"{run_dir}: a run already exists here; pass --resume to continue or --force to replace")
    distributed.barrier()  # every process has looked before the first one writes
    if ckpt is None:
        return cfg, None
    with warnings.catch_warnings():  # a run trained with a removed setting cannot go on without it
        warnings.simplefilter("error", RemovedSettingWarning)
        try:
            saved = RunConfig.from_dict(json.loads(ckpt["config"]), str(run_dir))
        except RemovedSettingWarning as e:
            raise ArtifactError(f"cannot resume: {e}") from None
    if saved.train != cfg.train:
        raise ArtifactError(f"{run_dir}: --resume with different training settings than the saved run")
    return saved, ckpt


def _check_data(cfg: RunConfig, table: ImageTable, run_dir: Path) -> None:
    """What the logic needs of the training data; records the diagnoses trained on."""
    logic = cfg.train.logic
    if logic == "none":
        raise DataError(None, "logic: 'none' is an ensemble's; train its members with a logic of their own")
    if logic in ("hierarchical", "nonhierarchical", "joint") and not table.has_groups:
        raise DataError(table.source, f"{logic} logic needs similarity groups (--groups CSV)")
    if logic in ("hierarchical", "nonhierarchical"):
        check_nested(table, cfg.data.groups or table.source)
    require_class(cfg.train.positive_class, table.diagnoses, table.source or str(run_dir))
    cfg.data.diagnoses = dict(sorted(Counter(table.diagnoses).items()))
    cfg.data.vocabulary = VOCABULARY


def _build(cfg: RunConfig, init: str | Path | None, resumed: bool) -> EmbeddingNet:
    """The network to train: built from ``cfg.model``, or the weights of ``init`` (fine-tuning)."""
    if cfg.model.backbone == "ensemble":
        raise ArtifactError("an ensemble is not trained as one: train its members, then `chaiderm ensemble`")
    torch.manual_seed(cfg.train.seed)
    if init is None or resumed:
        return build_model(cfg.model, load_pretrained=not resumed)
    model, init_cfg = load_model(init)
    if init_cfg.model.backbone == "ensemble":
        raise ArtifactError(f"{init}: is an ensemble; fine-tune one of its members instead")
    cfg.model = init_cfg.model
    cfg.data.init = str(init)
    return model


def _prepare_data(
    cfg: RunConfig,
    run_dir: Path,
    model: EmbeddingNet,
    dev: torch.device,
    dd: distributed.Dist | None,
    train_table: ImageTable,
    val_table: ImageTable | None,
    skip_bad: bool,
    on_prepare: Callable[[], None] | None,
) -> _Run:
    """Decode the training and validation images; a run without its optimiser and terms yet."""
    archive_p, skipped = _prepare(train_table, cfg.model.load_size, skip_bad, on_prepare)
    train_p = archive_p
    if cfg.train.logic in ("hierarchical", "nonhierarchical"):
        # as in the paper, only group-annotated images feed group-based fine-tuning; validation still
        # searches the whole archive, as the evaluation does, so the epoch kept is chosen on that task
        rows = [i for i, g in enumerate(archive_p.table.groups) if g is not None]
        train_p = _Prepared(archive_p.images[rows], archive_p.table.subset(rows))
    val_p = None
    if val_table is not None and len(val_table):
        val_p, sk = _prepare(val_table, cfg.model.load_size, skip_bad, on_prepare)
        skipped += sk
    cfg.data.train_fingerprint = train_p.table.fingerprint()
    cfg.data.n_train, cfg.data.n_val = len(train_p.table), 0 if val_p is None else len(val_p.table)
    dis, _ = encode_labels(train_p.table.diagnoses)
    grp, _ = encode_labels(train_p.table.groups)
    return _Run(cfg, run_dir, model, dev, dd, archive_p, train_p, val_p, dis, grp, [], model, skipped)


def _start_optimiser(run: _Run, ckpt: dict | None) -> None:
    """The optimiser and weight average, restored with the weights and history where a run resumes."""
    t = run.cfg.train
    run.opt = _optimizer(run.model, run.cfg)
    if t.ema_decay:
        run.ema = AveragedModel(run.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    if ckpt is None:
        return
    run.model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    run.history = json.loads(ckpt["history"])
    run.best, run.best_epoch, run.start_epoch = ckpt["best"], ckpt["best_epoch"], ckpt["epoch"] + 1


def _train_epoch(run: _Run, epoch: int, on_step: StepCallback | None) -> dict[str, Any]:
    """One pass over the epoch's batches; its record (loss, speed) for the history."""
    t = run.cfg.train
    rng = np.random.default_rng([t.seed, epoch])
    torch.manual_seed(t.seed * 100_003 + epoch)
    _set_lr(run.opt, run.cfg, epoch)
    run.model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    n_images = 0
    batches = list(_batches(run.cfg, run.dis, run.grp, rng))
    for step, (idx, triplets) in enumerate(batches):
        losses.append(_step(run, idx, triplets, rng))
        n_images += len(idx)
        if on_step is not None and run.main:
            on_step(epoch, step + 1, len(batches), losses[-1])
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "loss": float(np.mean(losses)) if losses else 0.0,
        "images_per_s": n_images / max(elapsed, 1e-9),
        "train_s": elapsed,
        "device": str(run.dev),
    }


def _step(run: _Run, idx: np.ndarray, triplets, rng: np.random.Generator) -> float:
    """One optimiser step on the batch ``idx``: the sum of every term, each by its weight. Returns the loss."""
    cfg, dd, model = run.cfg, run.dd, run.model
    chunk = cfg.train.chunk_size
    # every process augments the whole batch (the generators stay in step) and runs its share
    x = train_input(model, run.train.images[idx], cfg, rng).to(run.dev)
    lo, hi = (0, len(x)) if dd is None else distributed.share(len(x), chunk, dd)
    out = forward_chunks(x[lo:hi], chunk, run.forward)
    if dd is not None:
        out = distributed.gather(out, len(x), chunk, dd)
    loss, extra = _terms(run.terms, Batch(model, out, run.dis[idx], run.grp[idx], triplets, rng, run.dev))
    run.opt.zero_grad(set_to_none=True)
    # each process computes the whole terms in full: a 1/world share of each keeps the gradients' sum exact
    objective = loss + (extra if dd is None else extra / dd.world)
    # a step when some process has a gradient (one without triplets still joins the sum)
    if objective.requires_grad if dd is None else distributed.any_true(objective.requires_grad):
        if objective.requires_grad:
            objective.backward()
        if dd is not None:
            distributed.sum_gradients(model)
        run.opt.step()
        if run.ema is not None:
            run.ema.update_parameters(model)
    if dd is not None:
        distributed.broadcast_buffers(model)
    return float((loss + extra).detach())


def _terms(terms: list[LossTerm], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted sums of the batch terms and of the whole terms, in the list's order."""
    loss: torch.Tensor | None = None
    for term in terms:
        if not term.whole:
            value = term.weight * term(batch)
            loss = value if loss is None else loss + value
    extra = torch.zeros((), device=batch.device)
    for term in terms:
        if term.whole:
            extra = extra + term.weight * term(batch)
    if loss is None:
        raise ValueError("a training run needs a term that scores the batch")
    return loss, extra


def _validate_epoch(run: _Run, epoch: int, rec: dict[str, Any]) -> None:
    """Score the kept weights on validation into ``rec``; save them when they are the best so far."""
    t = run.cfg.train
    if run.val is not None:
        rec.update(validate(run.kept, run.archive, run.val, run.cfg.model.image_size, t.val_k, t.positive_class))
    score = {"auc": rec.get("val_auc", -rec["loss"]), "loss": -rec["loss"], "last": epoch}[t.select_metric]
    if score > run.best:
        run.best, run.best_epoch = score, epoch
        save_model(run.kept, run.run_dir, run.cfg)
    rec["best_epoch"] = run.best_epoch


def _checkpoint(run: _Run, epoch: int, rec: dict[str, Any]) -> None:
    """The epoch's record into history.json, and everything a resumed run needs into the checkpoint."""
    run.history.append(rec)
    write_json(run.run_dir / "history.json", run.history)
    save_checkpoint(
        run.run_dir,
        {
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            **({} if run.ema is None else {"ema": run.ema.state_dict()}),
            "epoch": epoch,
            "best": run.best,
            "best_epoch": run.best_epoch,
            "history": json.dumps(run.history),
            "config": json.dumps(run.cfg.to_dict()),
        },
    )
