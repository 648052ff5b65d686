"""`chaiderm archive add/remove/list`: change an index in place, audited like the server's own changes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import SERVER_DB, _errors, _fail, _progress, console, default_split
from chaiderm.cli._pacs import DicomWeb, Labels, Qido, SeriesOpt, Studies
from chaiderm.errors import ChaidermError

archive_app = typer.Typer(no_args_is_help=True, help="Grow, shrink and inspect an index without rebuilding it.")


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
    u = ix.uncertainty
    if u is None:
        typer.echo("novelty: unknown (built before novelty references; index it again to have one)")
    else:
        typer.echo(
            f"novelty: {u.method}, unlike the archive above its {u.threshold:g}th percentile "
            f"(a stated {1 - u.threshold / 100:.0%} false-alarm rate); calibration: "
            + (u.calibrator.to_dict()["method"] if u.calibrator is not None else "none")
            + "; prediction sets: "
            + (f"calibrated on {len(u.conformal.scores)} held-out cases" if u.conformal is not None else "none")
        )
    for d, n in Counter(ix.diagnoses).most_common():
        typer.echo(f"  {d}: {n}")


# `archive add/remove` wait this long for another writer of the index (a server's add, another command)
ARCHIVE_WAIT_S = 120.0
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
    data: Annotated[Path | None, typer.Option(help="new cases (ISIC 2017 folder or generic folder)")] = None,
    split: Annotated[str | None, typer.Option(help="ISIC split (default train)")] = None,
    groups: Path | None = None,
    model: Annotated[Path | None, typer.Option(help="model run (default: the one the index records)")] = None,
    skip_bad: bool = False,
    db: ArchiveDb = None,
    dicomweb: DicomWeb = None,
    study: Studies = None,
    series: SeriesOpt = None,
    qido: Qido = None,
    labels: Labels = None,
) -> None:
    """Embed only the cases the index lacks and add them; ids, files and images already there are skipped.
    Waits for another writer of the index (a server's add) to finish first.

    From a PACS (--dicomweb with --study, --series or --qido, and --labels): its dermoscopic and VL
    photographic instances that have a label and are not in the index yet are retrieved into
    <index>-cases/ as <SOP Instance UID>.dcm and added; other instances are skipped and counted."""
    from chaiderm.data.records import load_table
    from chaiderm.index.lock import open_for_writing
    from chaiderm.pipeline import add_to_index

    if (data is None) == (dicomweb is None):
        raise _fail("archive add: give --data FOLDER or --dicomweb URL (one of them)")
    if dicomweb is not None:
        if labels is None:
            raise _fail("--dicomweb: needs --labels CSV (sop_instance_uid,diagnosis)")
        _add_from_pacs(index, model, skip_bad, db, dicomweb, study, series, qido, labels)
        return
    with _errors(skip_bad_hint=True):
        audit = _ArchiveAudit(db, "archive_add")
        try:
            with open_for_writing(index, ARCHIVE_WAIT_S) as loaded:
                ix, net, cfg = _index_model(index, model, loaded)
                table = load_table(data, default_split(data, split), groups)
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


def _add_from_pacs(index, model, skip_bad, db, url, study, series, qido, labels) -> None:
    """``archive add --dicomweb``: retrieval outside the writer lock (a slow PACS never holds up the server's
    own adds), the add under it; the files of cases the index did not take are deleted again."""
    from chaiderm.cli._pacs import retrieve
    from chaiderm.index.archive import ArchiveIndex
    from chaiderm.index.lock import open_for_writing
    from chaiderm.pipeline import add_to_index

    with _errors(skip_bad_hint=True):
        audit = _ArchiveAudit(db, "archive_add")
        try:
            snapshot = ArchiveIndex.load(index)
            _, net, cfg = _index_model(index, model, snapshot)
            pacs, found, fetched = retrieve(
                url, study, series, qido, labels, index, have=set(snapshot.image_ids), skip_bad=skip_bad
            )
            studies = {r.instance: r.study for r in found.images}
            kept: set[str] = set()
            try:
                with open_for_writing(index, ARCHIVE_WAIT_S) as ix:
                    new, messages = ix, []
                    if len(fetched.table):
                        with _progress() as p:
                            task = p.add_task("embedding new cases", total=2 * len(fetched.table), info="")
                            new, messages = add_to_index(
                                ix,
                                net,
                                cfg,
                                fetched.table,
                                skip_bad=skip_bad,
                                progress=lambda n: p.advance(task, max(n, 1)),
                            )
                    if new is not ix:
                        added = new.image_ids[len(ix) :]
                        # the audit names studies and instances by UID only, never the patient
                        details = [
                            f"{d}; study {studies.get(i, '?')}"
                            for i, d in zip(added, new.diagnoses[len(ix) :], strict=True)
                        ]
                        audit.save(new, index, added, 201, details)
                        kept = set(added)
            finally:
                fetched.discard(keep=kept)
        except ChaidermError as e:
            audit.refused(e)
            raise
    for m in [*fetched.messages, *messages]:
        console.print(f"note: {m}", highlight=False, soft_wrap=True)
    console.print(f"added {len(new) - len(ix)} case(s) from {pacs.name}; {index} now holds {len(new)}", highlight=False)


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
