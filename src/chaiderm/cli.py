"""The ``chaiderm`` command: thin adapters from arguments to the layers below."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from chaiderm.config import DEFAULT_VIEWS
from chaiderm.errors import ChaidermError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evidence-based melanoma classification (CHAI).")
# no markup: paths and error texts printed here are data, and "[/x]" in one would raise mid-command
console = Console(stderr=True, markup=False)
groups_app = typer.Typer(no_args_is_help=True, help="Make similarity-group CSVs for training.")
app.add_typer(groups_app, name="groups")
archive_app = typer.Typer(no_args_is_help=True, help="Grow, shrink and inspect an index without rebuilding it.")
app.add_typer(archive_app, name="archive")
users_app = typer.Typer(no_args_is_help=True, help="Who may sign in to `chaiderm serve`, and with which role.")
app.add_typer(users_app, name="users")
USERS_FILE = Path("chaiderm-users.json")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


BAD_IMAGE = ("corrupt", "not_image", "empty", "too_large", "bad_shape")


@contextlib.contextmanager
def _errors(skip_bad_hint: bool = False):
    try:
        yield
    except ChaidermError as e:
        hint = ""
        if skip_bad_hint and getattr(e, "code", None) in BAD_IMAGE:
            hint = "\n  (remove or replace the file, or pass --skip-bad to skip unreadable images and count them)"
        typer.echo(f"error: {e}{hint}", err=True)  # plain and unwrapped: the message names the file
        raise typer.Exit(2) from None
    except OSError as e:
        # a folder that cannot be written (--out /proc/x), a full disk, a TLS file that is not what it
        # claims: the environment's fault, said in one line with the path, never a traceback
        where = e.filename if e.filename is not None else "error"
        typer.echo(f"error: {where}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None


def _warn(message: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", message))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _torchrun(nproc: int) -> int:
    """``chaiderm train --nproc N ...`` is ``torchrun --nproc-per-node N -m chaiderm.train ...``."""
    import subprocess

    args, skip = [], False
    for a in sys.argv[2:]:  # the options after `chaiderm train`, less --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "chaiderm.train"]
    return subprocess.call([*cmd, *args])


@app.command()
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
    from chaiderm.index.knn import VOTES
    from chaiderm.models.ensemble import combine

    if vote is not None and vote not in VOTES:
        raise _fail(f"--vote: one of {', '.join(VOTES)}, not '{vote}'")
    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out}: exists; choose another --out or pass --force")
    if views is not None:
        from chaiderm.models.embedding import VIEWS

        if views not in VIEWS:
            raise _fail(f"--views: '{views}' is not one of {', '.join(VIEWS)}")
    with _errors():
        net, cfg = combine([str(r) for r in runs], out, views=views, vote=vote)
    console.print(f"ensemble of {len(runs)} runs ({net.dim}-d embedding) written to {out}")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="output folder (train/val/test sub-folders)")] = Path("synthetic"),
    n_train: int = 300,
    n_val: int = 90,
    n_test: int = 120,
    size: int = 128,
    seed: int = 0,
    difficulty: Annotated[str, typer.Option(help="standard or easy")] = "standard",
) -> None:
    """Write the seeded synthetic dermoscopy set (images, exact masks, labels, groups)."""
    from chaiderm.data.synthetic import write_dataset

    total = n_train + n_val + n_test
    with _errors(), _progress() as p:
        task = p.add_task("generating", total=total, info="")
        write_dataset(
            out,
            splits={"train": n_train, "val": n_val, "test": n_test},
            size=size,
            seed=seed,
            difficulty=difficulty,
            progress=lambda: p.advance(task),
        )
    console.print(f"wrote {total} synthetic cases to {out}")


@app.command("train")
def train_cmd(
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
    views: Annotated[str, typer.Option(help="test-time views: none, flip, flip4")] = DEFAULT_VIEWS,
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
            help="a named recipe: 'recommended' (the model we recommend, docs/accuracy.md) sets --logic, "
            "--ensemble, --vote, --colour, --colour-jitter and --zoom; leave those out"
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
    from chaiderm.data.records import is_isic2017, load_table

    if nproc < 1:
        raise _fail(f"--nproc: must be at least 1, got {nproc}")
    if ensemble is not None and ensemble < 1:
        raise _fail(f"--ensemble: must be at least 1, got {ensemble}")
    # options a recipe may set: None where the user left them out, so an explicit value is never overridden
    given = {
        "logic": logic,
        "ensemble": ensemble,
        "vote": vote,
        "colour": colour,
        "colour_jitter": colour_jitter,
        "zoom": zoom,
    }
    m0, t0 = ModelConfig(), TrainConfig()  # their defaults, where neither the user nor a recipe sets them
    settings = {
        "logic": t0.logic,
        "ensemble": 1,
        "vote": m0.vote,
        "colour": m0.colour,
        "colour_jitter": t0.colour_jitter,
        "zoom": t0.zoom,
    }
    if recipe is not None:
        from chaiderm.training.recipes import get_recipe

        try:
            r = get_recipe(recipe)
        except ValueError as e:
            raise _fail(f"--recipe: {e}") from None
        fixed = r.fixes()
        if any(v is not None and v != fixed[k] for k, v in given.items()):
            sets = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in fixed.items())
            raise _fail(f"--recipe {r.name} sets {sets}; leave those out (every other setting is still yours)")
        settings.update(fixed)
    settings.update({k: v for k, v in given.items() if v is not None})
    logic, ensemble, vote, colour, colour_jitter, zoom = (settings[k] for k in given)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_torchrun(nproc))

    with _errors(skip_bad_hint=True):
        from chaiderm.models.registry import check_backbone

        check_backbone(backbone, pretrained=weights is None)  # before minutes of loading images
        table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")), groups)
        if extra_data:
            from chaiderm.data.records import concat_tables

            table = concat_tables(table, *(load_table(p, "train" if is_isic2017(p) else None) for p in extra_data))
        val_table = None
        vd = val_data or data
        vs = val_split or ("val" if is_isic2017(vd) else _split_of(vd, "val"))
        if val_data is not None or val_split is not None:
            val_table = load_table(vd, vs, groups)  # asked for explicitly: a bad one is an error
        elif vs is not None:
            # found by convention (ISIC validation split, or a val/ sub-folder): train without if unreadable
            try:
                val_table = load_table(vd, vs, groups)
            except ChaidermError as e:
                _warn(f"no validation data ({e}); training without it")
        cfg = RunConfig(
            model=ModelConfig(
                backbone=backbone,
                pretrained=pretrained,
                weights=str(weights) if weights else None,
                head=head,
                normalize=normalize,
                image_size=image_size,
                load_size=load_size,
                freeze_stages=freeze_stages,
                views=views,
                vote=vote,
                colour=colour,
                padding=padding or ("replicate" if mask_data is not None else "zeros"),
                map_stride=map_stride or (16 if mask_data is not None else 32),
            ),
            train=TrainConfig(
                logic=logic,
                epochs=epochs,
                batch_size=batch_size,
                m_per_class=m_per_class,
                protocol=protocol,
                triplets_per_epoch=triplets_per_epoch,
                optimizer=optimizer,
                lr_backbone=lr_backbone,
                lr_head=lr_head,
                lr_step=lr_step,
                margin=margin,
                reduction=reduction,
                ema_decay=ema_decay,
                colour_jitter=colour_jitter,
                zoom=zoom,
                seed=seed,
                val_k=val_k,
                positive_class=positive_class,
                feedback_weight=feedback_weight,
                mask_weight=mask_weight,
                recipe=recipe or "",
            ),
            data=DataConfig(
                train=str(data),
                extra=[str(p) for p in extra_data or ()],
                val=str(vd) if val_table is not None else None,
                train_split=split,
                val_split=vs,
                groups=str(groups) if groups else None,
                feedback=str(feedback) if feedback else None,
            ),
        )
        fb = _read_feedback(feedback, table) if feedback is not None else None
        masks = _read_masks(mask_data) if mask_data is not None else None
        kw = dict(
            val_table=val_table,
            init=init,
            resume=resume,
            force=force,
            skip_bad=skip_bad,
            device=device,
            feedback=fb,
            masks=masks,
        )
        if ensemble > 1:
            import copy

            from chaiderm.models.ensemble import combine
            from chaiderm.training.checkpoint import training_progress

            members = []
            for i in range(ensemble):
                mcfg = copy.deepcopy(cfg)
                mcfg.train.seed = seed + i
                member = out / "members" / f"seed{seed + i}"
                done = training_progress(member) if resume and member.exists() else None
                if done is not None and done[0] >= done[1]:
                    members.append(member)  # finished before the run was stopped
                    continue
                console.print(f"member {i + 1} of {ensemble} (seed {seed + i})")
                result = _run_training(mcfg, table, member, **{**kw, "resume": resume and member.exists()})
                members.append(member)
            if int(os.environ.get("RANK", "0")) == 0:
                net, _ = combine([str(m) for m in members], out)
                console.print(f"ensemble of {ensemble} members ({net.dim}-d embedding) written to {out}")
            return
        result = _run_training(cfg, table, out, **kw)
    if result.skipped:
        _warn(f"skipped {len(result.skipped)} unreadable image(s), e.g. {result.skipped[0]}")
    console.print(f"model written to {out} (best epoch {result.best_epoch})")


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


def _split_of(path: Path, split: str) -> str | None:
    return split if (path / split).is_dir() else None


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


@app.command("index")
def index_cmd(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    data: Annotated[Path, typer.Option(help="archive images (ISIC 2017 folder or generic folder)")],
    out: Annotated[Path, typer.Option(help="index folder to write")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    groups: Path | None = None,
    kind: Annotated[
        str, typer.Option(help="flat (exact), ivf or hnsw (approximate), ivf_ondisk (larger than memory)")
    ] = "flat",
    nlist: int | None = None,
    nprobe: Annotated[
        int | None, typer.Option(help="lists searched per query (ivf: 128; ivf_ondisk: a 32nd of them, at least 64)")
    ] = None,
    store_maps: Annotated[bool, typer.Option(help="keep archive evidence maps for fast QAM/RAM")] = True,
    skip_bad: bool = False,
    views: Annotated[
        str | None, typer.Option(help="test-time views (none, flip, flip4); default: the model's setting")
    ] = None,
    allow_incomplete: Annotated[
        bool, typer.Option(help="index a model whose training stopped before its last epoch")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            help="embed on a Ray cluster: its address (e.g. ray://head:10001), or local for one on this machine "
            "(needs pip install -e '.[distributed]')"
        ),
    ] = None,
    ray_workers: Annotated[int | None, typer.Option(help="with --ray: embedding actors (default: the CPUs)")] = None,
    ray_shards: Annotated[
        Path | None,
        typer.Option(help="with --ray: a folder every worker can write (shared storage on a real cluster); kept"),
    ] = None,
) -> None:
    """Embed an archive and build its search index."""
    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.index.faiss_index import INDEX_TYPES
    from chaiderm.index.ondisk import KIND as ONDISK
    from chaiderm.models.embedding import load_model
    from chaiderm.pipeline import build_index
    from chaiderm.training.checkpoint import training_progress

    kinds = (*INDEX_TYPES, ONDISK)
    if kind not in kinds:
        raise _fail(f"--kind: unknown index type '{kind}'; use one of {', '.join(kinds)}")
    if ray_workers is not None and (ray is None or ray_workers < 1):
        raise _fail("--ray-workers: needs --ray and at least 1 worker")
    if ray_shards is not None and ray is None:
        raise _fail("--ray-shards: needs --ray")
    with _errors(skip_bad_hint=True):
        net, cfg = load_model(model, fold=True)
        progress = training_progress(model)
        if progress is not None and progress[0] < progress[1]:
            msg = (
                f"{model}: training stopped after epoch {progress[0]} of {progress[1]} (killed or failed?); "
                f"finish it with `chaiderm train ... --resume`"
            )
            if not allow_incomplete:
                raise _fail(msg + ", or index it as it is with --allow-incomplete")
            _warn(f"{msg}; indexing it as it is (--allow-incomplete)")
        if views is not None:
            cfg.model.views = views  # recorded in the index; queries follow it
        table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")), groups)
        with _progress() as p:
            task = p.add_task("indexing", total=2 * len(table), info="")
            index, errors = build_index(
                net,
                cfg,
                table,
                model_dir=model,
                kind=kind,
                store_maps=store_maps,
                skip_bad=skip_bad,
                progress=lambda n: p.advance(task, max(n, 1)),
                ray=ray,
                ray_workers=ray_workers,
                ray_shards=ray_shards,
                **(
                    {"nlist": nlist, "nprobe": nprobe or (128 if kind == "ivf" else None)}
                    if kind in ("ivf", ONDISK)
                    else {}
                ),
            )
        index.save(out)
    if errors:
        _warn(f"skipped {len(errors)} unreadable image(s), e.g. {errors[0]}")
    console.print(f"indexed {len(index)} images into {out}")


def _index_model(index: Path, model: Path | None, ix=None):
    """The model an index was built with (or ``model``, which must be that same model); ``ix``: the index
    already loaded from ``index``."""
    from chaiderm.errors import ArtifactError
    from chaiderm.index.archive import ArchiveIndex
    from chaiderm.models.embedding import load_model
    from chaiderm.pipeline import weights_digest

    ix = ArchiveIndex.load(index) if ix is None else ix
    run = model or Path(ix.info.get("model_dir", ""))
    if not str(run) or not (run / "config.json").exists():
        raise ArtifactError(f"{index}: the model it was built with is not at '{run}'; name it with --model")
    want = ix.info.get("model_digest")
    if want and want != weights_digest(run):
        raise ArtifactError(f"{index}: built with another model than {run}; new cases must be embedded alike")
    net, cfg = load_model(run, fold=True)
    return ix, net, cfg


@archive_app.command("list")
def archive_list_cmd(index: Annotated[Path, typer.Option(help="index folder")]) -> None:
    """Size, model, sources and cases per diagnosis of an index."""
    from collections import Counter

    from chaiderm.index.archive import ArchiveIndex

    with _errors():
        ix = ArchiveIndex.load(index)
    info = ix.info
    typer.echo(f"index: {index} ({info.get('index_type', 'flat')}, {len(ix)} cases, dim {info.get('dim')})")
    typer.echo(f"model: {info.get('model_dir', '?')} (weights {info.get('model_digest', '?')})")
    typer.echo(f"positive class: {info.get('positive_class', '?')}; synthetic: {bool(info.get('synthetic'))}")
    for src in info.get("sources", [info.get("source", "?")]):
        typer.echo(f"source: {src}")
    for d, n in Counter(ix.diagnoses).most_common():
        typer.echo(f"  {d}: {n}")


# `archive add/remove` wait this long for another writer of the index (a server's add, another command)
ARCHIVE_WAIT_S = 120.0
SERVER_DB = Path("chaiderm-feedback.db")  # `serve --db`'s default
ArchiveDb = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="the server's database (`serve --db`): the change is written to its audit log "
        f"(default: {SERVER_DB} here, if it exists; without one nothing is recorded, and the command says so)",
    ),
]


class _ArchiveAudit:
    """The outcome of an archive command in the server's audit log, as ``cli:<login>``: each case changed with
    the status the API would answer (201 added, 200 removed), a refusal with its own (409 refused, 422 bad
    input, 503 index busy). The rows of a change are committed with its save (``AuditLog.change``)."""

    def __init__(self, db: Path | None, action: str):
        from chaiderm.data.audit import AuditLog
        from chaiderm.data.feedback import FeedbackStore
        from chaiderm.errors import DataError

        self.action = action
        if db is not None and not db.is_file():
            raise DataError(db, "database not found (give the server's `serve --db` file)")
        path = db if db is not None else SERVER_DB if SERVER_DB.is_file() else None
        self.log = AuditLog(FeedbackStore(path)) if path is not None else None
        if self.log is None:
            console.print(f"note: no audit log written (no --db, and no {SERVER_DB} in this folder)", highlight=False)
        self.user = f"cli:{_login()}"

    def save(self, new, index: Path, targets: list[str], status: int, details: list[str | None]) -> None:
        if self.log is None:
            new.save(index)
            return
        with self.log.change() as record:
            new.save(index)
            for target, detail in zip(targets, details, strict=True):
                record(self.action, user=self.user, target=target, status=status, detail=detail)

    def refused(self, error: Exception | str, status: int | None = None) -> None:
        from chaiderm.errors import DataError
        from chaiderm.index.lock import IndexBusyError

        if self.log is None:
            return
        if status is None:
            status = 503 if isinstance(error, IndexBusyError) else 422 if isinstance(error, DataError) else 409
        with contextlib.suppress(ChaidermError):  # a refusal changed nothing: its error is what the user sees
            self.log.record(self.action, user=self.user, status=status, detail=str(error))


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment: the account's number
        return str(os.getuid())


@archive_app.command("add")
def archive_add_cmd(
    index: Annotated[Path, typer.Option(help="index folder to grow")],
    data: Annotated[Path, typer.Option(help="new cases (ISIC 2017 folder or generic folder)")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    groups: Path | None = None,
    model: Annotated[Path | None, typer.Option(help="model run (default: the one the index records)")] = None,
    skip_bad: bool = False,
    db: ArchiveDb = None,
) -> None:
    """Embed only the cases the index lacks and add them; ids, files and images already there are skipped.
    Waits for another writer of the index (a server's add) to finish first."""
    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.index.lock import open_for_writing
    from chaiderm.pipeline import add_to_index

    with _errors(skip_bad_hint=True):
        audit = _ArchiveAudit(db, "archive_add")
        try:
            with open_for_writing(index, ARCHIVE_WAIT_S) as loaded:
                ix, net, cfg = _index_model(index, model, loaded)
                table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")), groups)
                with _progress() as p:
                    task = p.add_task("embedding new cases", total=2 * len(table), info="")
                    new, messages = add_to_index(
                        ix, net, cfg, table, skip_bad=skip_bad, progress=lambda n: p.advance(task, max(n, 1))
                    )
                if new is not ix:
                    added = new.image_ids[len(ix) :]
                    # atomic: a killed add leaves the index as it was
                    audit.save(new, index, added, 201, new.diagnoses[len(ix) :])
        except ChaidermError as e:
            audit.refused(e)
            raise
        if messages and new is ix:
            audit.refused("; ".join(messages), 409)
    for m in messages:
        console.print(f"note: {m}", highlight=False)
    console.print(f"added {len(new) - len(ix)} case(s); {index} now holds {len(new)}")


@archive_app.command("remove")
def archive_remove_cmd(
    index: Annotated[Path, typer.Option(help="index folder to shrink")],
    ids: Annotated[Path, typer.Option(help="text file, one image id per line (or a CSV with an image_id column)")],
    db: ArchiveDb = None,
) -> None:
    """Remove cases by id; the others keep their ids and order. Images the server stored for them
    (`<index>-cases/`) are deleted once the smaller index is saved."""
    from chaiderm.errors import DataError
    from chaiderm.index.archive import discard_added_images
    from chaiderm.index.lock import open_for_writing

    with _errors():
        audit = _ArchiveAudit(db, "archive_remove")
        try:
            if not ids.exists():
                raise DataError(ids, "file not found")
            lines = [ln.strip() for ln in ids.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            if lines and lines[0].split(",")[0].strip() == "image_id":
                lines = [ln.split(",")[0].strip() for ln in lines[1:]]
            if not lines:
                raise DataError(ids, "no image ids in the file")
            with open_for_writing(index, ARCHIVE_WAIT_S) as ix:
                new = ix.remove(lines)
                gone = sorted(set(lines))
                audit.save(new, index, gone, 200, [None] * len(gone))
                discard_added_images(index, [ix.paths[ix.row_of(i)] for i in gone])
        except ChaidermError as e:
            audit.refused(e)
            raise
    console.print(f"removed {len(ix) - len(new)} case(s); {index} now holds {len(new)}")


@app.command()
def query(
    images: Annotated[list[Path], typer.Argument(help="query image files")],
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder")],
    out: Annotated[Path, typer.Option(help="report folder")] = Path("chaiderm-query"),
    k: int = 10,
    where: Annotated[
        str | None, typer.Option(help='only archive cases that pass, e.g. "sex = female and age >= 50"')
    ] = None,
    csv: Annotated[
        Path | None,
        typer.Option(
            help="also write the predictions in the ISIC challenge's task 3 CSV layout, a row as each image is "
            "answered; an existing file of the same layout is resumed (its images are not answered again)"
        ),
    ] = None,
    csv_format: Annotated[str, typer.Option(help="isic2019 (MEL ... SCC, UNK) or isic2018 (MEL ... VASC)")] = (
        "isic2019"
    ),
    region: Annotated[
        str | None,
        typer.Option(help="search by the part of the image inside x0,y0,x1,y1 (pixels of the image; ';' for more)"),
    ] = None,
    reports: Annotated[
        str | None,
        typer.Option(
            help="per-image reports in --out: html (the evidence page, its JSON and images: about 3 MB with an "
            "ensemble), json (the vote and neighbours only, a few kB) or none. Default: html, or none with --csv"
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="skip unreadable images with a warning naming each (no CSV row, no report)")
    ] = False,
) -> None:
    """Classify images by kNN vote, print each answer, and write evidence reports and/or a predictions CSV.

    Images are embedded in batches and answered as they come. Without --csv each image gets an HTML evidence
    report (--reports html); with --csv the CSV alone is written unless --reports asks for reports too. A run
    that is stopped keeps the CSV rows it wrote; running it again with the same --csv answers only the rest."""
    from chaiderm.data.images import load_image
    from chaiderm.evaluation import isic_csv
    from chaiderm.evidence.report import write_query_json, write_query_report
    from chaiderm.index import refine
    from chaiderm.pipeline import Predictor

    if not 1 <= k <= 1000:
        raise _fail(f"--k must be between 1 and 1000 (the number of nearest archive cases that vote), not {k}")
    if reports is not None and reports not in QUERY_REPORTS:
        raise _fail(f"--reports: one of {', '.join(QUERY_REPORTS)}, not '{reports}'")
    paths = _query_paths(images)
    if reports is None:
        reports = "none" if csv is not None else "html"
        if csv is not None:
            console.print("note: --csv without --reports: no report files (--reports json or html for them)")
    if reports != "none":
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _fail(f"{out}: cannot write reports there ({e.strerror or e})") from None
    skipped: list[str] = []
    answered = 0
    with _errors(skip_bad_hint=True), contextlib.ExitStack() as stack:
        predictor = Predictor.load(model, index)
        if csv is not None:  # refuse a layout the archive's diagnoses do not fit before any query runs
            for d in predictor.classes:
                isic_csv.code_of(d, csv_format)
        boxes = refine.parse_regions(region)
        sheet = stack.enter_context(isic_csv.PredictionsFile(csv, csv_format)) if csv is not None else None
        if sheet is not None and sheet.answered:
            before = len(paths)
            paths = [p for p in paths if p.stem not in sheet.answered]
            console.print(
                f"note: {csv} already answers {before - len(paths)} of these {before} image(s): skipped; "
                f"answering the other {len(paths)} (delete the file to answer all again)",
                highlight=False,
                soft_wrap=True,
            )

        def answers(chunk: list[Path]):
            """(path, result, region) for each image of ``chunk`` that loads, in order."""
            if boxes:  # boxes are in the original image's pixels: decoded whole, one at a time
                for path in chunk:
                    try:
                        img = load_image(path)
                    except ChaidermError as e:
                        if not skip_bad:
                            raise
                        _skip(e, skipped)
                        continue
                    try:
                        regions = refine.from_original(boxes, img.shape[:2], predictor.cfg.model.load_size)
                    except ChaidermError as e:
                        raise _fail(f"{path}: {e}") from None
                    res = predictor.predict(
                        img, k=k, image_id=path.stem, where=where, regions=regions, evidence=reports == "html"
                    )
                    yield path, res, ";".join(map(str, regions)) or None
                return
            loaded, imgs, bad = [], [], None
            for path in chunk:
                try:  # decoded as an index, evaluate and the server decode: shrunk while >= load_size
                    imgs.append(load_image(path, fit=predictor.cfg.model.load_size))
                    loaded.append(path)
                except ChaidermError as e:
                    if not skip_bad:
                        bad = e  # the images before it are answered (and written) first
                        break
                    _skip(e, skipped)
            results = predictor.predict_many(
                imgs, k=k, image_ids=[p.stem for p in loaded], where=where, evidence=reports == "html"
            )
            for path, res in zip(loaded, results, strict=True):
                yield path, res, None
            if bad is not None:
                raise bad

        for start in range(0, len(paths), QUERY_CHUNK):
            for path, res, searched in answers(paths[start : start + QUERY_CHUNK]):
                pred = res.prediction
                try:
                    if reports == "html":
                        neigh = predictor.neighbor_images(res)
                        write_query_report(out, path.stem, res.image, pred, neigh, res.qams, res.rams, region=searched)
                    elif reports == "json":
                        write_query_json(out, path.stem, pred, region=searched)
                except OSError as e:
                    raise _fail(f"{out}: cannot write the report of {path.name} ({e.strerror or e})") from None
                if sheet is not None:
                    try:
                        sheet.write(path.stem, pred.class_probabilities)
                    except OSError as e:
                        raise _fail(f"{csv}: cannot write the row of {path.name} ({e.strerror or e})") from None
                answered += 1
                dist = " ".join(f"{d}={p:.3f}" for d, p in pred.class_probabilities.items())
                typer.echo(f"{path.name}\t{pred.positive_class}_probability={pred.positive_probability:.3f}\t{dist}")
    if skipped:
        _warn(f"skipped {len(skipped)} unreadable image(s): no row, no report")
    if reports != "none":
        console.print(f"reports in {out}/", highlight=False, soft_wrap=True)
    if csv is not None:
        console.print(f"{answered} row(s) added to {csv}", highlight=False, soft_wrap=True)


QUERY_REPORTS = ("none", "json", "html")
# images decoded, embedded and searched together; small enough that a stopped run loses little
QUERY_CHUNK = 64


def _query_paths(images: list[Path]) -> list[Path]:
    """The query files, each once; refused where two files would answer under one image id (the CSV's rows
    and the reports are named by it)."""
    seen: dict[str, Path] = {}
    paths = []
    for p in images:
        first = seen.get(p.stem)
        if first is None:
            seen[p.stem] = p
            paths.append(p)
        elif first.resolve() != p.resolve():
            raise _fail(f"{first} and {p} would both answer as image '{p.stem}': query them in separate runs")
    return paths


def _skip(e: ChaidermError, skipped: list[str]) -> None:
    skipped.append(str(e))
    typer.echo(f"warning: skipped {e}", err=True)  # plain and unwrapped: the message names the file


@app.command("duplicates")
def duplicates_cmd(
    data: Annotated[Path, typer.Option(help="images to check (ISIC 2017, ISIC Archive download or generic folder)")],
    out: Annotated[Path, typer.Option(help="report folder: pairs.csv, index.html with thumbnails")],
    split: Annotated[str | None, typer.Option(help="ISIC 2017 split of --data (default train)")] = None,
    against: Annotated[Path | None, typer.Option(help="a second set, checked within and against the first")] = None,
    against_split: Annotated[str | None, typer.Option(help="ISIC 2017 split of --against")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="near-duplicate distance (default: chosen on ISIC 2017 training images)")
    ] = None,
    skip_bad: bool = False,
) -> None:
    """Find identical and near-duplicate images within and across sets (leakage between splits)."""
    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.evaluation.duplicates import DEFAULT_THRESHOLD, find_duplicates, image_features, write_report

    with _errors(skip_bad_hint=True):
        sets = []
        for label, path, sp in (("a", data, split), ("b", against, against_split)):
            if path is None:
                continue
            table = load_table(path, sp or ("train" if is_isic2017(path) else None))
            name = f"{label}:{sp}" if sp else label
            with _progress() as p:
                task = p.add_task(f"features of {path}", total=len(table), info="")
                feats, table = image_features(table, skip_bad=skip_bad, progress=lambda p=p, task=task: p.advance(task))
            sets.append((name, table, feats))
        pairs = find_duplicates(sets, DEFAULT_THRESHOLD if threshold is None else threshold)
        paths = {f"{n}:{i}": pth for n, t, _ in sets for i, pth in zip(t.image_ids, t.paths, strict=True)}
        write_report(out, pairs, paths)
    counts: dict[str, int] = {}
    for p_ in pairs:
        where = "within " + p_.a.split(":")[0] if p_.a.split(":")[0] == p_.b.split(":")[0] else "across sets"
        counts[f"{p_.kind}, {where}"] = counts.get(f"{p_.kind}, {where}", 0) + 1
    for k, v in sorted(counts.items()):
        typer.echo(f"{v}\t{k}")
    console.print(f"{len(pairs)} pair(s); {out / 'pairs.csv'} and {out / 'index.html'}")


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder")],
    db: Annotated[Path, typer.Option(help="SQLite file for queries, feedback, sessions and the audit log")] = Path(
        "chaiderm-feedback.db"
    ),
    host: Annotated[str, typer.Option(help="bind address (loopback unless told otherwise)")] = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: int = 20,
    users: Annotated[
        Path | None, typer.Option(help="users file (`chaiderm users add`): sign-in required on every route")
    ] = None,
    keep_queries: Annotated[
        float | None, typer.Option(help="erase query images after this many days (0: never store them)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="inferences at once (default: the CPU cores, at most 4)")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve https directly")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    behind_https_proxy: Annotated[
        bool,
        typer.Option(
            help="a TLS-terminating proxy on this machine forwards to us: secure cookies; the client address is "
            "the last X-Forwarded-For value on connections from loopback, audited as 'CLIENT via 127.0.0.1' "
            "(any local process can set it)"
        ),
    ] = False,
    access_log: Annotated[Path | None, typer.Option(help="append one JSON line per request to this file")] = None,
) -> None:
    """Serve the evidence viewer (query page + JSON API) and record users' similarity judgements."""
    import logging

    import uvicorn

    from chaiderm.pipeline import query_cost_warning
    from chaiderm.web.app import create_app

    if not 1 <= max_upload_mb <= 200:
        raise _fail(f"--max-upload-mb must be between 1 and 200, not {max_upload_mb}")
    if workers is not None and not 1 <= workers <= 16:
        raise _fail(f"--workers must be between 1 and 16, not {workers}")
    if not 0 <= port <= 65535:
        raise _fail(f"--port must be between 1 and 65535 (0: any free port), not {port}")
    if keep_queries is not None and (not math.isfinite(keep_queries) or keep_queries < 0):
        raise _fail(f"--keep-queries must be 0 (keep no query images) or more days, not {keep_queries:g}")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise _fail("--ssl-certfile and --ssl-keyfile go together")
    for f in (ssl_certfile, ssl_keyfile):
        if f is not None and not f.is_file():
            raise _fail(f"{f}: file not found")
    if ssl_certfile is not None and ssl_keyfile is not None:
        _check_tls(ssl_certfile, ssl_keyfile)  # before the model loads: uvicorn would raise only after
    if users is None and not _is_loopback(host):
        raise _fail(
            f"--host {host} would let anyone who reaches this port see every archive and query image and write "
            "feedback: sign-in is required off loopback. Create users with `chaiderm users add NAME --role admin "
            "--users users.json`, then add `--users users.json` (and TLS: --ssl-certfile/--ssl-keyfile, or "
            "--behind-https-proxy)"
        )
    if behind_https_proxy and not _is_loopback(host):
        raise _fail("--behind-https-proxy: bind to loopback (--host 127.0.0.1) and let the proxy reach the world")
    with _errors():
        application = create_app(
            model,
            index,
            db,
            max_upload=max_upload_mb * 1_000_000,
            users=users,
            keep_queries_days=keep_queries,
            workers=workers,
            secure_cookies=ssl_certfile is not None or behind_https_proxy,
            behind_proxy=behind_https_proxy,
        )
    if access_log is not None:
        try:
            handler = logging.FileHandler(access_log)
        except OSError as e:
            raise _fail(f"{access_log}: cannot write the access log ({e.strerror})") from None
        logger = logging.getLogger("chaiderm.access")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    sock = _bind(host, port)  # before announcing the address: a port in use is one readable line
    port = sock.getsockname()[1]  # the port really listened on (--port 0 picks a free one)
    scheme = "https" if ssl_certfile else "http"
    who = f"sign-in from {users}" if users else "no sign-in (loopback, one local user)"
    console.print(
        f"a query with its evidence took {application.state.query_ms:.0f} ms here "
        "(median of the warm-up queries, on one request's threads)"
    )
    advice = query_cost_warning(application.state.query_ms, application.state.viewer.predictor.model, model)
    if advice:
        _warn(advice)
    console.print(f"evidence viewer on {scheme}://{host}:{port}/ ({who}; data in {db}); Ctrl-C stops it")
    config = uvicorn.Config(
        application,
        log_level="warning",
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        proxy_headers=False,  # the app reads them itself (web.access.Forwarded), keeping the peer beside them
    )
    uvicorn.Server(config).run(sockets=[sock])


def _check_tls(certfile: Path, keyfile: Path) -> None:
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as e:
        raise _fail(
            f"{certfile} / {keyfile}: not a matching PEM certificate and private key ({e.reason or e}); "
            "--ssl-certfile takes the certificate, --ssl-keyfile its key"
        ) from None
    except OSError as e:
        raise _fail(f"{e.filename or certfile}: cannot read ({e.strerror or e})") from None


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        import sys

        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name (letters, digits, . _ @ -)")],
    role: Annotated[str, typer.Option(help="viewer, expert or admin")],
    users: Annotated[Path, typer.Option(help="users file (created if missing)")] = USERS_FILE,
    password_stdin: Annotated[bool, typer.Option(help="read the password from the first line of stdin")] = False,
    replace: Annotated[bool, typer.Option(help="change an existing user's role and password")] = False,
) -> None:
    """Add a user (asks for the password; it is stored only as an argon2id hash)."""
    from chaiderm.web.auth import Users, check_name, check_password, check_role

    with _errors():
        check_name(name)
        check_role(role)
        uf = Users(users, create=True)
        existed = name in uf.users
        if existed and not replace:
            raise _fail(f"{users}: user '{name}' exists; add --replace to change the role or password")
        password = _new_password(password_stdin)
        check_password(password)
        uf.add(name, role, password, replace=replace)
    ended = "; their sessions on a running server end at their next request" if existed else ""
    console.print(f"{name} ({role}) saved in {users}{ended}")


@users_app.command("remove")
def users_remove(name: str, users: Annotated[Path, typer.Option(help="users file")] = USERS_FILE) -> None:
    """Remove a user; a running server signs them out at their next request."""
    from chaiderm.web.auth import Users

    with _errors():
        Users(users).remove(name)
    console.print(f"{name} removed from {users}")


@users_app.command("list")
def users_list(users: Annotated[Path, typer.Option(help="users file")] = USERS_FILE) -> None:
    from chaiderm.web.auth import Users

    with _errors():
        uf = Users(users)
    for name, u in sorted(uf.users.items()):
        typer.echo(f"{name}\t{u['role']}")


def _when(option: str, value: str | None) -> float | None:
    from chaiderm.data.audit import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as e:
        raise _fail(f"{option} {e}") from None


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder (the archive that votes)")],
    data: Annotated[Path, typer.Option(help="labelled queries (ISIC 2017 folder or generic folder)")],
    split: Annotated[str | None, typer.Option(help="split of --data (ISIC default: test)")] = None,
    out: Annotated[Path | None, typer.Option(help="write every figure here as JSON")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    vote: Annotated[
        str | None,
        typer.Option(
            help="uniform (each of the k neighbours one vote) or distance (weighed by 1 / squared distance); "
            "default: the model's own vote, as query and serve use it"
        ),
    ] = None,
) -> None:
    """Measure a model and its archive on a labelled split: kNN AUC@k per diagnosis with 95% intervals, the
    vote's balanced accuracy, REL@k where the data has groups. A query never votes for itself or its lesion."""
    from chaiderm._io import write_json
    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.evaluation.evaluate import evaluate_index
    from chaiderm.index.knn import VOTES
    from chaiderm.pipeline import Predictor

    if not 10 <= n_boot <= 100_000:
        raise _fail(f"--n-boot must be between 10 and 100000, not {n_boot}")
    if vote is not None and vote not in VOTES:
        raise _fail(f"--vote: one of {', '.join(VOTES)}, not '{vote}'")
    with _errors():
        predictor = Predictor.load(model, index)
        vote = vote or predictor.vote
        table = load_table(data, split or ("test" if is_isic2017(data) else _split_of(data, "test")))
        try:
            res = evaluate_index(predictor, table, n_boot=n_boot, vote=vote)
        except ValueError as e:
            raise _fail(f"{data}: {e}") from None
    t = evaluation_table(res, len(table))
    console.print(t)
    if res["not_in_archive"]:
        console.print(f"note: diagnoses no archive case has (never predicted): {', '.join(res['not_in_archive'])}")
    if out is not None:
        write_json(out, {"model": str(model), "index": str(index), "data": str(data), "split": split, **res})
        console.print(f"written to {out}")


def evaluation_table(res: dict, n_queries: int) -> Table:
    """``evaluate``'s terminal table. Each AUC sits over its interval in one cell and long diagnosis names
    fold, so that seven diagnoses fit 80 columns without an ellipsis hiding a figure."""
    t = Table(title=f"{n_queries} queries against {res['n_archive']} archive cases")
    ks = list(res["balanced_accuracy"])
    t.add_column("AUC (95% interval)", overflow="fold")
    for k in ks:
        t.add_column(f"k={k}", justify="right", no_wrap=True)
    for c, row in res["auc"].items():
        t.add_row(c, *(f"{row[k]:.3f}\n{res['auc_ci'][c][k][0]:.2f}-{res['auc_ci'][c][k][1]:.2f}" for k in ks))
    t.add_section()
    t.add_row("balanced accuracy", *(f"{res['balanced_accuracy'][k]:.3f}" for k in ks))
    if "rel" in res:
        t.add_row("REL", *(f"{res['rel'][k]:.2f}" for k in ks))
    return t


@app.command()
def audit(
    db: Annotated[Path, typer.Option(help="the server's database (`serve --db`)")],
    since: Annotated[str | None, typer.Option(help="from this date/time, UTC (YYYY-MM-DD[THH:MM])")] = None,
    until: Annotated[str | None, typer.Option(help="before this date/time, UTC")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's entries")] = None,
    action: Annotated[str | None, typer.Option(help="only this action (e.g. sign_in_failed, view_image)")] = None,
    csv: Annotated[Path | None, typer.Option(help="write CSV here ('-': standard output)")] = None,
) -> None:
    """Export the audit log: who signed in, queried, saw which images, clicked, changed the archive."""
    from chaiderm.errors import DataError
    from chaiderm.storage import ACTIONS, AuditLog, to_csv

    if action is not None and action not in ACTIONS:
        raise _fail(f"--action must be one of {', '.join(ACTIONS)}")
    t0, t1 = _when("--since", since), _when("--until", until)
    with _errors():
        if not db.is_file():
            raise DataError(db, "database not found")
        entries = AuditLog(db).entries(since=t0, until=t1, user=user, action=action)
        text = to_csv(entries)
        if csv is None or str(csv) == "-":
            typer.echo(text, nl=False)
        else:
            from chaiderm._io import write_text

            write_text(csv, text)
            console.print(f"{len(entries)} entries written to {csv}")


@app.command()
def purge(
    db: Annotated[Path, typer.Option(help="the server's database (`serve --db`)")],
    older_than: Annotated[float, typer.Option(help="erase query images recorded more than this many days ago")],
) -> None:
    """Erase stored query images by age (feedback rows stay; the images are overwritten, not just unlinked)."""
    from chaiderm.errors import DataError
    from chaiderm.storage import AuditLog, FeedbackStore

    if not math.isfinite(older_than) or older_than < 0:
        raise _fail(f"--older-than must be 0 or more days, not {older_than:g}")
    with _errors():
        if not db.is_file():
            raise DataError(db, "database not found")
        store = FeedbackStore(db)
        n = store.purge(older_than)
        AuditLog(store).record("purge", user="chaiderm purge", detail=f"{n} query image(s) over {older_than:g} days")
    console.print(f"erased {n} query image(s) older than {older_than:g} days from {db}")


def _bind(host: str, port: int):
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise _fail(f"--host '{host}' is not an address of this machine ({e})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family in (socket.AF_INET, socket.AF_INET6):
        # accepted connections inherit it: without it a keep-alive client waits ~40 ms (Nagle against
        # delayed ACKs) on every response after its first, which uvicorn's own sockets avoid
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise _fail(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@app.command()
def annotate(
    data: Annotated[Path, typer.Option(help="images to sort (ISIC 2017 folder or generic folder)")],
    out: Annotated[Path, typer.Option(help="groups CSV to write (resumed if it exists)")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    mode: Annotated[str, typer.Option(help="hierarchical (one disease at a time) or joint (disease-blind)")] = (
        "hierarchical"
    ),
    host: str = "127.0.0.1",
    port: int = 8001,
) -> None:
    """A page for sorting images into visual-similarity groups; writes `chaiderm train --groups` CSVs."""
    import uvicorn

    from chaiderm.data.records import is_isic2017, load_table
    from chaiderm.web.annotate import create_annotate_app

    with _errors():
        table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")))
        application = create_annotate_app(table, out, mode=mode)
        console.print(f"annotator on http://{host}:{port}/ ({len(table)} images, saving to {out})")
        uvicorn.run(application, host=host, port=port, log_level="warning")


@groups_app.command("enhance")
def groups_enhance(
    enhance: Annotated[Path, typer.Option(help="ENHANCE folder (crowd/, student/)")],
    data: Annotated[Path, typer.Option(help="ISIC 2017 folder (its training split is grouped)")],
    out: Annotated[Path, typer.Option(help="folder for the group CSVs")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    n_finetune: Annotated[int, typer.Option(help="annotated images kept for group-based fine-tuning")] = 1000,
    melanoma_groups: Annotated[
        int, typer.Option(help="groups within melanoma (paper 20; docs/reproduction.md tried 10 and 5)")
    ] = 20,
    sk_groups: Annotated[int, typer.Option(help="groups within seborrheic keratosis (paper 12)")] = 12,
    nevus_groups: Annotated[int, typer.Option(help="groups within nevus (paper 15)")] = 15,
    blind_groups: int = 37,
    seed: int = 0,
) -> None:
    """Group images on non-expert ENHANCE ratings: hierarchical (within disease) and disease-blind.

    Writes groups.csv / groups_blind.csv (the fine-tuning images) and groups_heldout.csv /
    groups_blind_heldout.csv (the other rated images, for REL only), plus groups_info.json.
    """
    from chaiderm.data.enhance import GROUP_FILES, enhance_groups, read_enhance, write_group_files
    from chaiderm.data.records import is_isic2017, load_table

    with _errors():
        table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")))
        ratings = read_enhance(enhance)
        per = {"melanoma": melanoma_groups, "seborrheic_keratosis": sk_groups, "nevus": nevus_groups}
        parts = enhance_groups(
            ratings,
            table.image_ids,
            table.diagnoses,
            n_finetune=n_finetune,
            groups_per_disease=per,
            n_blind=blind_groups,
            seed=seed,
        )
        write_group_files(
            parts,
            out,
            {
                "enhance": str(enhance),
                "data": str(data),
                "split": split,
                "seed": seed,
                "n_rated": sum(len(parts[k]) for k in ("finetune", "heldout")),
                "groups_per_disease": per,
                "blind_groups": blind_groups,
                "sources": ratings.sources,
            },
        )
    console.print(
        f"wrote {', '.join(GROUP_FILES.values())} to {out} ({len(parts['finetune'])} fine-tuning images, "
        f"{len(parts['heldout'])} held out)"
    )


@groups_app.command("proxy")
def groups_proxy(
    data: Annotated[Path, typer.Option(help="images to group (ISIC 2017 folder or generic folder)")],
    out: Annotated[Path, typer.Option(help="folder for the group CSVs")],
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    n_finetune: int = 1000,
    melanoma_groups: int = 20,
    sk_groups: int = 12,
    nevus_groups: int = 15,
    blind_groups: int = 37,
    seed: int = 0,
) -> None:
    """PROXY groups computed from the images (size, colour, border, texture), for data without annotations."""
    from chaiderm.data.enhance import GROUP_FILES, write_group_files
    from chaiderm.data.proxy import DESCRIPTORS, proxy_groups
    from chaiderm.data.records import is_isic2017, load_table

    with _errors():
        table = load_table(data, split or ("train" if is_isic2017(data) else _split_of(data, "train")))
        per = {"melanoma": melanoma_groups, "seborrheic_keratosis": sk_groups, "nevus": nevus_groups}
        parts = proxy_groups(
            table.paths,
            table.image_ids,
            table.diagnoses,
            n_finetune=n_finetune,
            groups_per_disease=per,
            n_blind=blind_groups,
            seed=seed,
        )
        write_group_files(
            parts,
            out,
            {"kind": "proxy (computed, not human)", "descriptors": DESCRIPTORS, "data": str(data), "seed": seed},
        )
    console.print(f"wrote proxy groups ({', '.join(GROUP_FILES.values())}) to {out}")


@app.command()
def reproduce(
    isic: Annotated[Path, typer.Option(help="ISIC 2017 folder (challenge layout)")],
    enhance: Annotated[Path, typer.Option(help="ENHANCE folder (non-expert ratings)")],
    masks_data: Annotated[Path, typer.Option(help="images with lesion masks for localisation (ham10000_dev)")],
    out: Annotated[Path, typer.Option(help="output folder; a killed run resumes from it")],
    seeds: Annotated[int, typer.Option(help="train every variant this many times (mean and std)")] = 1,
    epochs: Annotated[int | None, typer.Option(help="epochs from ImageNet (default: the tuned setting)")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="epochs of group fine-tuning from Disease")] = None,
    backbone: Annotated[str | None, typer.Option(help="backbone (default: the tuned setting)")] = None,
    image_size: Annotated[int | None, typer.Option(help="network input side")] = None,
    n_boot: int = 1000,
    paper_groups: Annotated[
        bool,
        typer.Option(
            "--paper-groups/--half-groups",
            help="hierarchical groups: the paper's 20 / 12 / 15, or half of them (10 / 6 / 8, docs/reproduction.md)",
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="where to compute: cpu, cuda (not a setting of the results)")] = "cpu",
    views: Annotated[str | None, typer.Option(help="test-time views of every evaluation: none, flip, flip4")] = None,
    colour: Annotated[
        str | None, typer.Option(help="colour normalisation of every variant: none, shades_of_gray")
    ] = None,
    colour_jitter: Annotated[float | None, typer.Option(help="training brightness/contrast/saturation jitter")] = None,
    teach_maps: Annotated[
        bool,
        typer.Option(
            help="beyond the paper: the embeddings also learn where lesions are from a seeded quarter of "
            "--masks-data; localisation is then scored on the other three quarters"
        ),
    ] = False,
    teach_map_stride: Annotated[
        int | None, typer.Option(help="with --teach-maps: map stride of the taught variants, 32 or 16 (finer maps)")
    ] = None,
    mask_dice_share: Annotated[
        float | None,
        typer.Option(help="with --teach-maps: the Dice term's share of the mask term (0.5: mass and Dice alike)"),
    ] = None,
) -> None:
    """The paper's Table 1: six embeddings, AUC@k, REL@k, map localisation, statistics and figures.

    Defaults are the settings chosen on the validation split (bench/tune_val.py, docs/reproduction.md)."""
    from chaiderm.reproduce import ReproduceSettings, run_reproduce

    given = dict(
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        backbone=backbone,
        image_size=image_size,
        views=views,
        colour=colour,
        colour_jitter=colour_jitter,
        teach_maps=teach_maps or None,
        mask_dice_share=mask_dice_share,
        teach_map_stride=teach_map_stride,
    )
    if teach_map_stride not in (None, 16, 32):
        raise _fail(f"--teach-map-stride: 32 or 16, got {teach_map_stride}")
    if mask_dice_share is not None and not 0.0 <= mask_dice_share <= 1.0:
        raise _fail(f"--mask-dice-share: must be in [0, 1], got {mask_dice_share}")
    s = ReproduceSettings(seeds=seeds, n_boot=n_boot, **{k: v for k, v in given.items() if v is not None})
    if not paper_groups:
        from chaiderm.data.enhance import HALF_GROUPS

        s.groups_per_disease = dict(HALF_GROUPS)
    with _errors():
        run_reproduce(isic, enhance, masks_data, out, s, log=lambda m: console.print(m, markup=False), device=device)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("chaiderm-demo"),
    backbone: str = "efficientnet_lite0",
    n_train: int = 600,
    n_test: int = 150,
    size: int = 128,
    image_size: int = 112,
    epochs: Annotated[int, typer.Option(help="the Disease embedding's (the Hierarchical fine-tunes it 2 more)")] = 3,
    queries: int = 4,
    difficulty: str = "standard",
    seed: int = 0,
) -> None:
    """Synthetic data -> Disease and Hierarchical embeddings -> index -> evidence report, end to end."""
    from chaiderm.demo import DemoSettings, run_demo

    settings = DemoSettings(
        backbone=backbone,
        n_train=n_train,
        n_test=n_test,
        size=size,
        image_size=image_size,
        epochs=epochs,
        queries=queries,
        difficulty=difficulty,
        seed=seed,
    )
    with _errors(), _progress() as p:
        tasks: dict[tuple[str, int], int] = {}

        def on_step(name: str, epoch: int, step: int, n: int, loss: float) -> None:
            if (name, epoch) not in tasks:
                tasks[name, epoch] = p.add_task(f"{name} epoch {epoch + 1}/{epochs}", total=n, info="")
            p.update(tasks[name, epoch], completed=step, info=f"loss {loss:.4f}")

        summary = run_demo(out, settings, log=lambda msg: p.console.print(msg, markup=False), on_step=on_step)
    Console(markup=False, highlight=False).print(demo_table(summary))
    typer.echo(f"report: {Path(out) / 'report.html'}   figures: {Path(out) / 'demo.json'}")
    typer.echo(f"\nopen the evidence viewer on this model and archive:\n  {summary['serve']}")


def demo_table(summary: dict) -> Table:
    """The demo's last screen: one row per embedding, the figures a newcomer compares (all in demo.json)."""
    table = Table(title="synthetic images, not patients", title_justify="left")
    for col in ("embedding", "melanoma AUC@10", "REL@10", "trained in"):
        table.add_column(col, justify="left" if col == "embedding" else "right")
    for name, m in summary["metrics"].items():
        auc, rel = (m.get("auc") or {}).get("10"), (m.get("rel") or {}).get("10")
        took = summary["seconds"].get(f"train_{name.lower()}")
        table.add_row(
            name if took is not None else f"{name} (ImageNet, not trained)",
            "-" if auc is None else f"{auc:.3f}",
            "-" if rel is None else f"{rel:.2f}",
            "-" if took is None else f"{took:.0f} s",
        )
    table.caption = (
        "AUC@10: melanoma against the rest by a vote of the 10 nearest archive cases; REL@10: how many of "
        f"them share the query's similarity group. All in {summary['seconds']['total']:.0f} s."
    )
    table.caption_justify = "left"
    return table


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
