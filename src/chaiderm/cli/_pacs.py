"""The options every command that reads a PACS shares, and how they name the instances to read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import _progress, console
from chaiderm.errors import DataError

DicomWeb = Annotated[
    str | None,
    typer.Option(
        "--dicomweb",
        help="a PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web): its dermoscopic and VL photographic "
        "instances are read instead of files; other instances are skipped and counted",
    ),
]
Studies = Annotated[
    list[str] | None, typer.Option("--study", help="with --dicomweb: a Study Instance UID (repeatable)")
]
SeriesOpt = Annotated[
    list[str] | None, typer.Option("--series", help="with --dicomweb: a Series Instance UID (repeatable)")
]
Qido = Annotated[
    list[str] | None,
    typer.Option(
        "--qido",
        help="with --dicomweb: a QIDO-RS search as key=value (repeatable, all must match), e.g. "
        "--qido Modality=XC --qido StudyDate=20260101-20261231",
    ),
]
Labels = Annotated[
    Path | None,
    typer.Option(
        help="with --dicomweb: the labels CSV, sop_instance_uid,diagnosis[,group][,age,sex,site] (a row per "
        "instance, keyed by its SOP Instance UID, which becomes the case's image id); instances without a row "
        "are skipped and counted"
    ),
]
MAX_QIDO_TERMS = 16


def parse_qido(terms: list[str] | None) -> dict[str, str]:
    """``["Modality=XC", ...]`` as QIDO-RS search filters; a term without '=' or a key that is not a DICOM
    keyword or tag is refused by name."""
    out: dict[str, str] = {}
    for term in terms or []:
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        ok = key.isalnum() and 0 < len(key) <= 64 and 0 < len(value) <= 256
        if not sep or not ok:
            raise DataError("--qido", f"'{term[:80]}' is not key=value (a DICOM keyword or tag, and its value)")
        out[key] = value
    if len(out) > MAX_QIDO_TERMS:
        raise DataError("--qido", f"at most {MAX_QIDO_TERMS} search terms")
    return out


def find_images(url: str, studies: list[str] | None, series: list[str] | None, qido: list[str] | None):
    """The PACS and its dermoscopic instances that the options name, with a note for the ones skipped."""
    from chaiderm.pacs.client import Pacs
    from chaiderm.pacs.fetch import check_uid

    for uid in [*(studies or []), *(series or [])]:
        check_uid(uid, "--study/--series")
    filters = parse_qido(qido)
    if not (studies or series or filters):
        raise DataError("--dicomweb", "name what to read: --study UID, --series UID or --qido key=value")
    pacs = Pacs(url)
    found = pacs.find(studies=studies or (), series=series or (), filters=filters)
    line = found.skipped_line()
    if line:
        console.print(f"note: {line}", highlight=False, soft_wrap=True)
    return pacs, found


def retrieve(
    url, studies, series, qido, labels: Path, index_dir: Path, *, have: set[str] | None = None, skip_bad=False
):
    """The PACS, what it holds that the options name, and the labelled instances of it retrieved into the
    index's case folder (those in ``have`` are not fetched again), with a progress bar."""
    from chaiderm.index.archive import cases_dir
    from chaiderm.pacs.fetch import fetch_cases, read_labels

    rows = read_labels(labels)
    pacs, found = find_images(url, studies, series, qido)
    folder = cases_dir(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _progress() as p:
        task = p.add_task("retrieving", total=len(found.images), info="")
        fetched = fetch_cases(
            pacs,
            found.images,
            rows,
            folder,
            have=have or set(),
            skip_bad=skip_bad,
            progress=lambda n: p.advance(task, n),
        )
    return pacs, found, fetched
