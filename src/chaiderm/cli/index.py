"""`chaiderm index`: embed an archive and build its search index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import VAL, _errors, _fail, _progress, _warn, checked_option, console, default_split
from chaiderm.cli._pacs import DicomWeb, Labels, Qido, SeriesOpt, Studies


def index_cmd(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    out: Annotated[Path, typer.Option(help="index folder to write")],
    data: Annotated[Path | None, typer.Option(help="archive images (ISIC 2017 folder or generic folder)")] = None,
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
    dicomweb: DicomWeb = None,
    study: Studies = None,
    series: SeriesOpt = None,
    qido: Qido = None,
    labels: Labels = None,
    novelty_threshold: Annotated[
        float | None,
        typer.Option(
            help="novelty percentile above which a query is marked 'unlike the archive'. Default: set so that "
            "about 5%% of the archive cases the model held out of training (train --holdout) are flagged, else "
            "95. `query --novelty-threshold` overrides it per run"
        ),
    ] = None,
    novelty_method: Annotated[
        str, typer.Option(help="kth, mean or mean+image (index.novelty; kth was chosen by bench/uncertainty.py)")
    ] = "kth",
    conformal_data: Annotated[
        Path | None,
        typer.Option(
            help="labelled images never used to train or choose anything (not the archive): calibrate prediction "
            "sets on them; without, answers carry no prediction set"
        ),
    ] = None,
    conformal_split: Annotated[str | None, typer.Option(help="split of --conformal-data (ISIC default: val)")] = None,
) -> None:
    """Embed an archive and build its search index, with its novelty reference and calibrated votes (and,
    given --conformal-data, prediction sets).

    From a PACS (--dicomweb with --study, --series or --qido, and --labels): its labelled dermoscopic and VL
    photographic instances are retrieved into <out>-cases/ as <SOP Instance UID>.dcm and indexed."""
    from chaiderm.data.records import load_table
    from chaiderm.models.embedding import load_model

    _check_options(kind, ray, ray_workers, ray_shards, data, dicomweb, labels)
    _check_novelty(novelty_method, novelty_threshold)
    checked_option("views", views)
    trust = (novelty_method, novelty_threshold, conformal_data, conformal_split)
    fetched = None
    with _errors(skip_bad_hint=True):
        net, cfg = load_model(model, fold=True)
        _check_training(model, allow_incomplete)
        if views is not None:
            cfg.model.views = views  # recorded in the index; queries follow it
        if dicomweb is not None:
            fetched = _fetch_archive(out, dicomweb, study, series, qido, labels, skip_bad)
            table = fetched.table
        else:
            table = load_table(data, default_split(data, split), groups)
        try:
            _build(
                table,
                net,
                cfg,
                model,
                out,
                kind,
                store_maps,
                skip_bad,
                ray,
                ray_workers,
                ray_shards,
                nlist,
                nprobe,
                trust,
            )
        except BaseException:
            if fetched is not None:  # the files retrieved go again unless the index that holds them is saved
                fetched.discard()
            raise
    if fetched is not None:
        for m in fetched.messages:
            console.print(f"note: {m}", highlight=False, soft_wrap=True)


def _check_options(kind, ray, ray_workers, ray_shards, data, dicomweb, labels) -> None:
    from chaiderm.index.faiss_index import INDEX_TYPES
    from chaiderm.index.ondisk import KIND as ONDISK

    kinds = (*INDEX_TYPES, ONDISK)
    if kind not in kinds:
        raise _fail(f"--kind: unknown index type '{kind}'; use one of {', '.join(kinds)}")
    if ray_workers is not None and (ray is None or ray_workers < 1):
        raise _fail("--ray-workers: needs --ray and at least 1 worker")
    if ray_shards is not None and ray is None:
        raise _fail("--ray-shards: needs --ray")
    if (data is None) == (dicomweb is None):
        raise _fail("index: give --data FOLDER or --dicomweb URL (one of them)")
    if dicomweb is not None and labels is None:
        raise _fail("--dicomweb: needs --labels CSV (sop_instance_uid,diagnosis)")


def _check_novelty(method: str, threshold: float | None) -> None:
    from chaiderm.index import novelty

    try:
        novelty.check_method(method)
    except ValueError as e:
        raise _fail(f"--novelty-method: {str(e).removeprefix('novelty method: ')}") from None
    try:
        if threshold is not None:
            novelty.check_threshold(threshold)
    except ValueError as e:
        raise _fail(f"--novelty-threshold: {str(e).removeprefix('novelty threshold: ')}") from None


def _check_training(model: Path, allow_incomplete: bool) -> None:
    """A run whose training stopped early is indexed only when asked (--allow-incomplete), with a warning."""
    from chaiderm.training.checkpoint import training_progress

    progress = training_progress(model)
    if progress is not None and progress[0] < progress[1]:
        msg = (
            f"{model}: training stopped after epoch {progress[0]} of {progress[1]} (killed or failed?); "
            f"finish it with `chaiderm train ... --resume`"
        )
        if not allow_incomplete:
            raise _fail(msg + ", or index it as it is with --allow-incomplete")
        _warn(f"{msg}; indexing it as it is (--allow-incomplete)")


def _fetch_archive(out, url, study, series, qido, labels, skip_bad):
    from chaiderm.cli._pacs import retrieve

    pacs, _, fetched = retrieve(url, study, series, qido, labels, out, skip_bad=skip_bad)
    if not len(fetched.table):
        fetched.discard()
        raise _fail(f"{pacs.name}: no labelled dermoscopic instance to index")
    return fetched


def _build(table, net, cfg, model, out, kind, store_maps, skip_bad, ray, ray_workers, ray_shards, nlist, nprobe, trust):
    """``trust``: (novelty method, novelty threshold, conformal data, its split)."""
    from chaiderm.index.ondisk import KIND as ONDISK
    from chaiderm.pipeline import build_index

    method, threshold, conformal_data, conformal_split = trust
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
            novelty_method=method,
            novelty_threshold=threshold,
            **(
                {"nlist": nlist, "nprobe": nprobe or (128 if kind == "ivf" else None)}
                if kind in ("ivf", ONDISK)
                else {}
            ),
        )
    notes = _calibrate_sets(index, net, cfg, conformal_data, conformal_split)
    if index.uncertainty is not None:
        u = index.uncertainty
        notes.insert(0, f"novelty threshold: percentile {u.threshold:.2f}; {u.threshold_fitted_on}")
    index.save(out)
    for n in notes:
        console.print(f"note: {n}", highlight=False, soft_wrap=True)
    if errors:
        _warn(f"skipped {len(errors)} unreadable image(s), e.g. {errors[0]}")
    console.print(f"indexed {len(index)} images into {out}")


def _calibrate_sets(index, net, cfg, data: Path | None, split: str | None) -> list[str]:
    """Prediction sets calibrated on held-out labelled images (none without ``data``); returns notes."""
    if data is None:
        return []
    from chaiderm.data.records import load_table
    from chaiderm.pipeline import calibrate_sets

    held = load_table(data, default_split(data, split, VAL))
    with _progress() as p:
        task = p.add_task("calibrating prediction sets", total=len(held), info="")
        return calibrate_sets(index, net, cfg, held, progress=lambda n: p.advance(task, n))
