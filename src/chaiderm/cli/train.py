"""`chaiderm train` and `chaiderm ensemble`: run folders from data, or from other run folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import (
    VAL,
    _errors,
    _fail,
    _progress,
    _warn,
    checked_option,
    config_from_options,
    console,
    default_split,
    flag_of,
)
from chaiderm.config import DEFAULT_VIEWS, choices
from chaiderm.errors import ChaidermError


def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="trained run folders (two or more)")],
    out: Annotated[Path, typer.Option(help="run folder to write: index, query, evaluate and serve use it")],
    views: Annotated[str | None, typer.Option(help="test-time views (default: the first member's)")] = None,
    vote: Annotated[
        str | None,
        typer.Option(help="uniform or distance (default: the members' shared vote, else uniform)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
) -> None:
    """Several trained embeddings as one model: their embeddings side by side, their maps stacked."""
    from chaiderm.models.ensemble import combine

    checked_option("vote", vote)
    checked_option("views", views)
    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out}: exists; choose another --out or pass --force")
    with _errors():
        net, cfg = combine([str(r) for r in runs], out, views=views, vote=vote)
    console.print(f"ensemble of {len(runs)} runs ({net.dim}-d embedding) written to {out}")


def train_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="ISIC 2017 folder or generic folder (labels.csv)")],
    out: Annotated[Path, typer.Option(help="run folder to write")],
    extra_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="more labelled images to train on, e.g. ham10000_dev (repeatable; all of each folder, "
            "diagnoses in the shared vocabulary); validation still comes from --data"
        ),
    ] = None,
    logic: Annotated[
        str | None, typer.Option(help="disease (the default), joint, hierarchical, nonhierarchical or classifier")
    ] = None,
    groups: Annotated[Path | None, typer.Option(help="groups CSV image_id,group[,disease]")] = None,
    init: Annotated[Path | None, typer.Option(help="run folder to fine-tune from")] = None,
    feedback: Annotated[Path | None, typer.Option(help="feedback database from `chaiderm serve`")] = None,
    feedback_weight: float = 1.0,
    mask_data: Annotated[
        Path | None,
        typer.Option(help="images with lesion masks (ham10000_dev layout): teach the evidence maps where lesions are"),
    ] = None,
    mask_weight: float = 3.0,
    split: Annotated[str | None, typer.Option(help="training split (ISIC: train)")] = None,
    val_data: Annotated[Path | None, typer.Option(help="validation data (default: same folder, split val)")] = None,
    val_split: str | None = None,
    backbone: str = "efficientnet_lite0",
    weights: Annotated[Path | None, typer.Option(help="backbone weights file (e.g. AlexNet)")] = None,
    pretrained: bool = True,
    normalize: bool = False,
    head: str = "conv",
    image_size: int = 224,
    load_size: int = 256,
    freeze_stages: int | None = None,
    views: Annotated[str, typer.Option(help=f"test-time views: {', '.join(choices('views'))}")] = DEFAULT_VIEWS,
    vote: Annotated[
        str | None,
        typer.Option(
            help="how the k nearest cases vote in query, serve and evaluate: uniform (the default), or distance "
            "(each weighed by 1 / squared distance)"
        ),
    ] = None,
    colour: Annotated[
        str | None,
        typer.Option(help="colour normalisation of every input: none (the default), shades_of_gray (colour constancy)"),
    ] = None,
    colour_jitter: Annotated[
        float | None,
        typer.Option(help="random brightness/contrast/saturation factors in [1-x, 1+x] in training (default 0)"),
    ] = None,
    zoom: Annotated[
        float | None,
        typer.Option(help="training crops as small as image-size / zoom pixels, enlarged (1 to 4; default 1: none)"),
    ] = None,
    padding: Annotated[
        str | None,
        typer.Option(
            help="conv padding: zeros (ImageNet's; the default), replicate or reflect (no padding imprint in the "
            "maps; the default with --mask-data)"
        ),
    ] = None,
    map_stride: Annotated[
        int | None,
        typer.Option(help="32, or 16 for evidence maps of twice the resolution (the default with --mask-data)"),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            help="hold this fraction of --data out of training (stratified, whole lesions; 0 to 0.5): it "
            "chooses the epoch kept instead of the validation split, and `chaiderm index` sets the novelty "
            "threshold on it (default 0: none)"
        ),
    ] = None,
    epochs: int = 3,
    batch_size: int = 48,
    m_per_class: int = 4,
    protocol: Annotated[str, typer.Option(help="mined (in-batch) or random (paper: N triplets/epoch)")] = "mined",
    triplets_per_epoch: int = 150_000,
    optimizer: str = "adam",
    lr_backbone: float = 1e-4,
    lr_head: float = 1e-3,
    lr_step: int = 0,
    margin: float = 1.0,
    reduction: str = "nonzero_mean",
    ema_decay: Annotated[float, typer.Option(help="keep a moving average of the weights (0: off; e.g. 0.98)")] = 0.0,
    seed: int = 0,
    val_k: int = 10,
    positive_class: str = "melanoma",
    resume: Annotated[bool, typer.Option(help="continue a killed run from its last checkpoint")] = False,
    force: Annotated[bool, typer.Option(help="replace an existing run folder")] = False,
    skip_bad: Annotated[bool, typer.Option(help="skip unreadable images with a counted warning")] = False,
    device: Annotated[str, typer.Option(help="where to compute: cpu, cuda, cuda:1 (not saved as a setting)")] = "cpu",
    ensemble: Annotated[
        int | None,
        typer.Option(
            help="train this many members (seeds seed, seed+1, ...) into OUT/members/ and write their "
            "ensemble to OUT (chaiderm ensemble); default 1, a single model"
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="a named recipe: 'recommended' (the model we recommend, docs/results.md) sets --logic, "
            "--ensemble, --vote, --colour, --colour-jitter, --zoom and --holdout; leave those out"
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="data-parallel processes on this machine (torchrun; gloo on CPU, nccl with --device cuda); "
            "every batch is split between them and the loss sees the whole batch"
        ),
    ] = 1,
) -> None:
    """Train an embedding (triplet logics) or a multiclass classifier (BaselineFT)."""
    from chaiderm.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from chaiderm.data.records import load_table

    options = _resolved_options(ctx.params, recipe)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from chaiderm.train import relaunch

        raise typer.Exit(relaunch(nproc, sys.argv[2:]))  # the options after `chaiderm train`

    with _errors(skip_bad_hint=True):
        from chaiderm.models.registry import check_backbone

        check_backbone(backbone, pretrained=weights is None)  # before minutes of loading images
        table = load_table(data, default_split(data, split), groups)
        held: list[str] = []
        if options["holdout"]:
            if val_data is not None or val_split is not None:
                raise _fail("--holdout: the held-out images choose the epoch; leave --val-data and --val-split out")
            table, val_table = _held_out(table, options["holdout"], seed)
            held, vd, vs = val_table.image_ids, data, None
        else:
            vd, vs = val_data or data, default_split(val_data or data, val_split, VAL)
            val_table = _validation(vd, vs, groups, asked=val_data is not None or val_split is not None)
        if extra_data:
            from chaiderm.data.records import concat_tables, is_isic2017

            table = concat_tables(table, *(load_table(p, "train" if is_isic2017(p) else None) for p in extra_data))
        cfg = RunConfig(
            model=config_from_options(ModelConfig, options),
            train=config_from_options(TrainConfig, options),
            data=DataConfig(
                train=str(data),
                extra=[str(p) for p in extra_data or ()],
                val=str(vd) if val_table is not None else None,
                train_split=split,
                val_split=vs,
                groups=str(groups) if groups else None,
                feedback=str(feedback) if feedback else None,
                holdout=held,
            ),
        )
        kw = dict(
            val_table=val_table,
            init=init,
            resume=resume,
            force=force,
            skip_bad=skip_bad,
            device=device,
            feedback=_read_feedback(feedback, table) if feedback is not None else None,
            masks=_read_masks(mask_data) if mask_data is not None else None,
        )
        members = options["ensemble"] or 1
        if members > 1:
            from chaiderm.training.ensemble import train_ensemble

            result = train_ensemble(cfg, table, out, members, trainer=_run_training, log=console.print, **kw)
            # written by the first of torchrun's processes only
            done = f"ensemble of {members} members ({result.dim}-d embedding) written to {out}" if result.dim else ""
        else:
            result = _run_training(cfg, table, out, **kw)
            done = f"model written to {out} (best epoch {result.best_epoch})"
    if result.skipped:
        _warn(f"skipped {len(result.skipped)} unreadable image(s), e.g. {result.skipped[0]}")
    if done:
        console.print(done)


def _resolved_options(given: dict, recipe: str | None) -> dict:
    """The training options: those given, checked, with the named recipe's fixed settings filled in, and the
    finer, unpadded maps that --mask-data implies unless told otherwise."""
    from chaiderm.training.recipes import RecipeConflictError, resolve

    if given["nproc"] < 1:
        raise _fail(f"--nproc: must be at least 1, got {given['nproc']}")
    if given["ensemble"] is not None and given["ensemble"] < 1:
        raise _fail(f"--ensemble: must be at least 1, got {given['ensemble']}")
    try:  # the settings a recipe fixes, None where neither the user nor a recipe sets them
        options = resolve(recipe, given)
    except RecipeConflictError as e:
        sets = ", ".join(f"{flag_of(k)} {v}" for k, v in e.recipe.fixes().items())
        raise _fail(
            f"--recipe {e.recipe.name} sets {sets}; leave those out (every other setting is still yours)"
        ) from None
    except ValueError as e:
        raise _fail(f"--recipe: {e}") from None
    if given["mask_data"] is not None:
        options["padding"] = given["padding"] or "replicate"
        options["map_stride"] = given["map_stride"] or 16
    return options


def _held_out(table, fraction: float, seed: int):
    """(training rows, held-out rows) of ``table``; the same split for every member of an ensemble."""
    from chaiderm.data.splits import holdout_split

    try:
        train_idx, hold_idx = holdout_split(table, fraction, seed)
    except ValueError as e:
        raise _fail(f"--holdout: {str(e).removeprefix('holdout: ')}") from None
    console.print(f"holdout: {len(hold_idx)} of {len(table)} images not trained on; they choose the epoch")
    return table.subset(train_idx), table.subset(hold_idx)


def _validation(data: Path, split: str | None, groups: Path | None, asked: bool):
    from chaiderm.data.records import load_table

    if asked:  # a bad one is an error
        return load_table(data, split, groups)
    if split is None:
        return None
    try:  # found by convention (ISIC validation split, or a val/ sub-folder): train without if unreadable
        return load_table(data, split, groups)
    except ChaidermError as e:
        _warn(f"no validation data ({e}); training without it")
        return None


def _read_masks(path: Path):
    from chaiderm.data.records import read_folder
    from chaiderm.errors import DataError

    table = read_folder(path)
    if not any(table.mask_paths):
        raise DataError(path, "no lesion masks found (expected masks/<image_id>_segmentation.png beside images/)")
    return table


def _read_feedback(path: Path, table):
    from chaiderm.data.feedback import TRAINING_ROLES, read_feedback_triplets

    fb = read_feedback_triplets(path, set(table.image_ids))
    console.print(
        f"feedback: {len(fb.triplets)} triplet(s) from {len(fb.query_images)} quer(ies) judged by "
        f"{'/'.join(TRAINING_ROLES)} users in {path}"
    )
    for n, why in (
        (fb.purged_queries, "judged queries whose image the retention policy erased"),
        (fb.other_roles, "clicks by users whose role does not train the model"),
        (fb.unknown_ids, "clicks on images outside the training data"),
    ):
        if n:
            console.print(f"note: {n} {why}: not used", highlight=False)
    return fb


def _run_training(cfg, table, out, **kw):
    from chaiderm.training import train

    with _progress() as p:
        prep = p.add_task("loading images", total=len(table) + (len(kw.get("val_table") or [])), info="")
        tasks: dict[int, int] = {}

        def on_step(epoch: int, step: int, n: int, loss: float) -> None:
            if epoch not in tasks:
                tasks[epoch] = p.add_task(f"epoch {epoch + 1}/{cfg.train.epochs}", total=n, info="")
            p.update(tasks[epoch], completed=step, info=f"loss {loss:.4f}")

        def on_epoch(epoch: int, rec: dict) -> None:
            shown = " ".join(f"{k[4:]} {rec[k]:.3f}" for k in ("val_auc", "val_rel") if k in rec)
            shown += f" {rec['images_per_s']:.0f} img/s"
            if epoch in tasks:
                p.update(tasks[epoch], info=shown)

        return train(cfg, table, out, on_step=on_step, on_epoch=on_epoch, on_prepare=lambda: p.advance(prep), **kw)
