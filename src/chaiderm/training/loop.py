"""The training loop: triplet logics (mined in-batch, or the paper's random triplets) or the
multiclass classifier (BaselineFT); validation every epoch; a checkpoint every epoch; resume.

Determinism: every epoch re-seeds its own generators from (seed, epoch), so a run killed and
resumed at an epoch boundary produces the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import chaiderm
from chaiderm._io import write_json
from chaiderm.config import RunConfig
from chaiderm.data.diagnoses import VOCABULARY, canonical, require_class
from chaiderm.data.images import load_image
from chaiderm.data.records import ImageTable, check_nested
from chaiderm.data.sampler import m_per_class_batches
from chaiderm.data.transforms import (
    augment,
    center_crop,
    check_jitter,
    check_zoom,
    mask_as_seen,
    prepare,
    resize_square,
    to_tensor,
)
from chaiderm.errors import ArtifactError, DataError
from chaiderm.index.faiss_index import nearest_images
from chaiderm.index.knn import VOTES, knn_vote, relevance_at_k
from chaiderm.losses.logic import encode_labels, get_rule
from chaiderm.losses.miners import sample_triplets
from chaiderm.losses.triplet import ChaiTripletLoss, chai_triplet_loss
from chaiderm.models.embedding import EmbeddingNet, build_model, load_model, save_model
from chaiderm.models.inference import resolve_device
from chaiderm.storage.feedback import FeedbackTriplets
from chaiderm.training import distributed
from chaiderm.training.checkpoint import load_checkpoint, save_checkpoint

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
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum)
    raise DataError(None, f"train.optimizer: unknown optimiser '{t.optimizer}'")


def _set_lr(opt: torch.optim.Optimizer, cfg: RunConfig, epoch: int) -> None:
    t = cfg.train
    factor = t.lr_gamma ** (epoch // t.lr_step) if t.lr_step > 0 else 1.0
    base = [t.lr_backbone, t.lr_head][-len(opt.param_groups) :]
    for g, lr in zip(opt.param_groups, base, strict=True):
        g["lr"] = lr * factor


def _forward_chunks(model: EmbeddingNet, x: torch.Tensor, chunk: int, fn) -> torch.Tensor:
    # small chunks keep activations in cache on CPU; one backward runs over all of them
    return torch.cat([fn(c) for c in x.split(chunk)])


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
class _Feedback:
    queries: np.ndarray  # (Q, S, S, 3) uint8
    triplets: np.ndarray  # (T, 3): query index, similar row, not-similar row (rows of the training table)


def _prepare_feedback(fb: FeedbackTriplets, train_p: _Prepared, load_size: int) -> _Feedback:
    rows = {iid: i for i, iid in enumerate(train_p.table.image_ids)}
    trip = [(q, rows[p], rows[n]) for q, p, n in fb.triplets if p in rows and n in rows]
    if not trip:
        raise DataError(None, "feedback: no usable (similar, not similar) pair refers to a training image")
    queries = np.stack(
        [resize_square(load_image(b, name=f"feedback query {i}"), load_size) for i, b in enumerate(fb.query_images)]
    )
    return _Feedback(queries, np.asarray(trip, dtype=np.int64))


def _train_input(model: EmbeddingNet, imgs: np.ndarray, cfg: RunConfig, rng: np.random.Generator) -> torch.Tensor:
    """Augmented training batch: random crop, flips and turns, the model's colour normalisation, jitter."""
    crops = augment(imgs, cfg.model.image_size, rng, cfg.train.zoom)
    return to_tensor(crops, model.mean, model.std, colour=model.colour, jitter=cfg.train.colour_jitter, rng=rng)


def _feedback_loss(
    model: EmbeddingNet, fb: _Feedback, train_p: _Prepared, cfg: RunConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Eq. 1 on user-judged triplets (query, clicked similar, clicked not similar)."""
    n = min(len(fb.triplets), max(1, cfg.train.batch_size // 6))
    pick = fb.triplets[rng.choice(len(fb.triplets), n, replace=False)]
    imgs = np.concatenate([fb.queries[pick[:, 0]], train_p.images[pick[:, 1]], train_p.images[pick[:, 2]]])
    device = next(model.parameters()).device
    x = _train_input(model, imgs, cfg, rng).to(device)
    emb = _forward_chunks(model, x, cfg.train.chunk_size, model)
    return chai_triplet_loss(emb[:n], emb[n : 2 * n], emb[2 * n :], cfg.train.margin).mean()


@dataclass
class _Masks:
    images: np.ndarray  # (N, S, S, 3) uint8 at load_size
    masks: np.ndarray  # (N, s, s) bool: the lesion on the centre crop the network sees


def _prepare_masks(table: ImageTable, cfg: RunConfig) -> _Masks:
    missing = [iid for iid, m in zip(table.image_ids, table.mask_paths, strict=True) if not m]
    if missing:
        raise DataError(
            table.source, f"mask supervision: {len(missing)} image(s) have no lesion mask, e.g. '{missing[0]}'"
        )
    if len(table) < 2:
        raise DataError(table.source, "mask supervision needs at least 2 images with masks")
    if not 0.0 <= cfg.train.mask_dice_share <= 1.0:
        raise DataError(None, f"mask_dice_share: must be in [0, 1], got {cfg.train.mask_dice_share}")
    images = prepare(table.paths, cfg.model.load_size)[0]
    masks = np.stack([mask_as_seen(p, cfg.model.load_size, cfg.model.image_size) for p in table.mask_paths])
    return _Masks(images, masks)


def _mask_loss(model: EmbeddingNet, ms: _Masks, cfg: RunConfig, rng: np.random.Generator) -> torch.Tensor:
    """Teach the evidence maps where lesions are: each masked image's QAM against another masked image
    (Eq. 2, the per-dimension weights held fixed) should put its mass inside the lesion and, scaled to
    its maximum, overlap the lesion (soft Dice). Both are measured on the map upsampled to the input,
    as the localisation metrics measure it."""
    n = min(len(ms.images), max(2, cfg.train.batch_size // 3))
    pick = rng.choice(len(ms.images), n, replace=False)
    imgs = center_crop(ms.images[pick], cfg.model.image_size)
    masks = ms.masks[pick]
    out_i, out_m = [], []
    for img, m in zip(imgs, masks, strict=True):  # the same flips and turns for the image and its mask
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        img, m = np.rot90(img, k, axes=(0, 1)), np.rot90(m, k, axes=(0, 1))
        if flip:
            img, m = img[:, ::-1], m[:, ::-1]
        out_i.append(np.ascontiguousarray(img))
        out_m.append(np.ascontiguousarray(m))
    device = next(model.parameters()).device
    x = to_tensor(np.stack(out_i), model.mean, model.std, colour=model.colour).to(device)
    mask = torch.from_numpy(np.stack(out_m)).float().to(device)
    g = _forward_chunks(model, x, cfg.train.chunk_size, model.forward_features)
    f = g.mean(dim=(2, 3))
    w = (f - f.roll(1, dims=0)).pow(2).detach()
    qam = torch.einsum("nd,ndhw->nhw", w, g)
    up = F.interpolate(qam[:, None], size=mask.shape[1:], mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    eps = 1e-8
    mass = (up * mask).sum(dim=(1, 2)) / up.sum(dim=(1, 2)).clamp_min(eps)
    scaled = up / up.amax(dim=(1, 2), keepdim=True).clamp_min(eps)
    dice = 2 * (scaled * mask).sum(dim=(1, 2)) / (scaled.sum(dim=(1, 2)) + mask.sum(dim=(1, 2))).clamp_min(eps)
    s = cfg.train.mask_dice_share
    return (2 * ((1 - s) * (1 - mass) + s * (1 - dice))).mean()  # s = 0.5: the two terms, summed


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
) -> TrainResult:
    """Train an embedding and write ``out/{config.json, model.safetensors, history.json, checkpoints/}``.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...) only says where the arithmetic runs; it is not a
    setting of the result, so it is kept out of the saved config and a run may resume on another device.
    """
    run_dir = Path(out)
    t = cfg.train
    # under torchrun: one share of every batch per process, the whole batch's loss (training.distributed)
    dd = distributed.from_env()
    if dd is not None:
        device = distributed.init(dd, device)
    main = dd is None or dd.main  # only the first process writes, validates and reports
    dev = resolve_device(device)
    if t.logic not in ("disease", "joint", "hierarchical", "nonhierarchical", "classifier"):
        raise DataError(None, f"unknown logic '{t.logic}'")
    if not 0.0 <= t.ema_decay < 1.0:
        raise DataError(None, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.ce_weight < 0:
        raise DataError(None, f"train.ce_weight: must be 0 or more, got {t.ce_weight}")
    check_jitter(t.colour_jitter)
    check_zoom(t.zoom)
    if cfg.model.vote not in VOTES:
        raise DataError(None, f"vote: '{cfg.model.vote}' is not one of {', '.join(VOTES)}")
    t.positive_class = canonical(t.positive_class)  # before --resume compares settings: 'mel' is 'melanoma'
    ckpt = load_checkpoint(run_dir) if resume else None
    if not resume and not force and (run_dir / "checkpoints").exists():
        raise ArtifactError(f"{run_dir}: a run already exists here; pass --resume to continue or --force to replace")
    distributed.barrier()  # every process has looked before the first one writes
    if ckpt is not None:
        saved = RunConfig.from_dict(json.loads(ckpt["config"]), str(run_dir))
        if saved.train != cfg.train:
            raise ArtifactError(f"{run_dir}: --resume with different training settings than the saved run")
        cfg = saved

    if t.logic in ("hierarchical", "nonhierarchical"):
        if not train_table.has_groups:
            raise DataError(train_table.source, f"{t.logic} logic needs similarity groups (--groups CSV)")
        check_nested(train_table, cfg.data.groups or train_table.source)
    if t.logic == "joint" and not train_table.has_groups:
        raise DataError(train_table.source, "joint logic needs similarity groups (--groups CSV)")

    require_class(t.positive_class, train_table.diagnoses, train_table.source or str(run_dir))
    cfg.data.diagnoses = dict(sorted(Counter(train_table.diagnoses).items()))
    cfg.data.vocabulary = VOCABULARY

    if cfg.model.backbone == "ensemble":
        raise ArtifactError("an ensemble is not trained as one: train its members, then `chaiderm ensemble`")
    torch.manual_seed(t.seed)
    if init is not None and ckpt is None:
        model, init_cfg = load_model(init)
        if init_cfg.model.backbone == "ensemble":
            raise ArtifactError(f"{init}: is an ensemble; fine-tune one of its members instead")
        cfg.model = init_cfg.model
        cfg.data.init = str(init)
    else:
        model = build_model(cfg.model, load_pretrained=ckpt is None)
    diseases = sorted(set(train_table.diagnoses))
    if (t.logic == "classifier" or t.ce_weight > 0) and model.classifier is None:
        cfg.model.n_classes = len(diseases)
        model.classifier = torch.nn.Linear(model.dim, len(diseases))
    cfg.version = chaiderm.__version__
    model.to(dev)
    if dd is not None:
        distributed.broadcast_state(model)

    archive_p, skipped = _prepare(train_table, cfg.model.load_size, skip_bad, on_prepare)
    train_p = archive_p
    if t.logic in ("hierarchical", "nonhierarchical"):
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

    fb = _prepare_feedback(feedback, train_p, cfg.model.load_size) if feedback is not None else None
    ms = _prepare_masks(masks, cfg) if masks is not None else None
    if ms is not None:
        cfg.data.masks = masks.source or f"{len(masks)} images with lesion masks"

    dis, _ = encode_labels(train_p.table.diagnoses)
    grp, _ = encode_labels(train_p.table.groups)
    loss_fn = ChaiTripletLoss(get_rule(t.logic), t.margin, t.reduction) if t.logic != "classifier" else None

    opt = _optimizer(model, cfg)
    ema = None
    if t.ema_decay:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
    history: list[dict[str, Any]] = []
    best = -math.inf
    best_epoch = -1
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        history = json.loads(ckpt["history"])
        best, best_epoch, start_epoch = ckpt["best"], ckpt["best_epoch"], ckpt["epoch"] + 1
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")

    for epoch in range(start_epoch, t.epochs):
        rng = np.random.default_rng([t.seed, epoch])
        torch.manual_seed(t.seed * 100_003 + epoch)
        _set_lr(opt, cfg, epoch)
        model.train()
        t0 = time.perf_counter()
        losses: list[float] = []
        n_images = 0
        batches = list(_batches(cfg, dis, grp, rng))
        for step, (idx, triplets) in enumerate(batches):
            # every process augments the whole batch (the generators stay in step) and runs its share
            x = _train_input(model, train_p.images[idx], cfg, rng).to(dev)
            lo, hi = (0, len(x)) if dd is None else distributed.share(len(x), t.chunk_size, dd)
            if t.logic == "classifier":
                head = lambda c: model.classifier(model.pool(model.forward_features(c)))  # noqa: E731
                out = _forward_chunks(model, x[lo:hi], t.chunk_size, head)
            else:
                out = _forward_chunks(model, x[lo:hi], t.chunk_size, model)
            if dd is not None:
                out = distributed.gather(out, len(x), t.chunk_size, dd)
            if t.logic == "classifier":
                loss = F.cross_entropy(out, torch.from_numpy(dis[idx]).to(dev))
            else:
                loss = loss_fn(out, dis[idx], grp[idx], indices_tuple=triplets)
                if t.ce_weight > 0:
                    ce = F.cross_entropy(model.classifier(out), torch.from_numpy(dis[idx]).to(dev))
                    loss = loss + t.ce_weight * ce
            extra = torch.zeros((), device=dev)
            if fb is not None:
                extra = extra + t.feedback_weight * _feedback_loss(model, fb, train_p, cfg, rng)
            if ms is not None:
                extra = extra + t.mask_weight * _mask_loss(model, ms, cfg, rng)
            opt.zero_grad(set_to_none=True)
            # each process computes the extra terms whole: a 1/world share of each keeps the gradients' sum exact
            objective = loss + (extra if dd is None else extra / dd.world)
            loss = loss + extra
            # a step when some process has a gradient (one without triplets still joins the sum)
            if objective.requires_grad if dd is None else distributed.any_true(objective.requires_grad):
                if objective.requires_grad:
                    objective.backward()
                if dd is not None:
                    distributed.sum_gradients(model)
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
            if dd is not None:
                distributed.broadcast_buffers(model)
            losses.append(float(loss.detach()))
            n_images += len(idx)
            if on_step is not None and main:
                on_step(epoch, step + 1, len(batches), losses[-1])
        elapsed = time.perf_counter() - t0
        rec: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else 0.0,
            "images_per_s": n_images / max(elapsed, 1e-9),
            "train_s": elapsed,
            "device": str(dev),
        }
        kept = model if ema is None else ema.module  # the weights that are validated and saved
        if not main:  # the others wait for the first process to validate and write
            distributed.barrier()
            continue
        if val_p is not None:
            rec.update(validate(kept, archive_p, val_p, cfg.model.image_size, t.val_k, t.positive_class))
        score = {"auc": rec.get("val_auc", -rec["loss"]), "loss": -rec["loss"], "last": epoch}[t.select_metric]
        if score > best:
            best, best_epoch = score, epoch
            save_model(kept, run_dir, cfg)
        rec["best_epoch"] = best_epoch
        history.append(rec)
        write_json(run_dir / "history.json", history)
        save_checkpoint(
            run_dir,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                **({} if ema is None else {"ema": ema.state_dict()}),
                "epoch": epoch,
                "best": best,
                "best_epoch": best_epoch,
                "history": json.dumps(history),
                "config": json.dumps(cfg.to_dict()),
            },
        )
        if on_epoch is not None:
            on_epoch(epoch, rec)
        if dd is not None:
            distributed.barrier()
    if main and not (run_dir / "model.safetensors").exists():  # zero epochs asked: save the initial weights
        save_model(model if ema is None else ema.module, run_dir, cfg)
    distributed.barrier()
    return TrainResult(run_dir, history, best_epoch, skipped)
