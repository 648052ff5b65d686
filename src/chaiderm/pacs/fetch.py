"""PACS instances into archive cases: each dermoscopic instance that has a label and is not in the archive
yet is retrieved, checked as a file would be (``data.images``), and written as ``<SOP Instance UID>.dcm`` in
the archive's case folder; the labels come from a CSV keyed by SOP Instance UID.

The labels CSV: ``sop_instance_uid,diagnosis[,group][,age,sex,site,...]`` (``image_id`` is read as a synonym
of ``sop_instance_uid``; the metadata columns are those of ``data.records.METADATA_ALIASES``). The UID is the
case's image id in the index. Where the CSV is silent, the instance's own tags give age, sex, site and
lesion (``data.dicom.dicom_metadata``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chaiderm._io import atomic_path
from chaiderm.data.diagnoses import canonical
from chaiderm.data.records import ImageTable, _read_csv, metadata_of
from chaiderm.errors import DataError
from chaiderm.pacs.client import Pacs
from chaiderm.pacs.select import InstanceRef

# a DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1). Anything else from a PACS is refused
# before it can name a file
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_LABELS = 1_000_000


def check_uid(uid: str, what: str = "SOP Instance UID") -> str:
    if not (len(uid) <= 64 and UID.match(uid)):
        raise DataError(what, f"'{uid[:80]}' is not a DICOM UID (digits and dots, at most 64)", code="invalid")
    return uid


def read_labels(path: str | Path) -> dict[str, dict[str, str]]:
    """SOP Instance UID -> its row (``diagnosis`` canonical), from the labels CSV described above."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > 200 * MAX_LABELS:
        raise DataError(path, "labels CSV over 200 MB; refused", code="too_large")
    first = _read_csv(path, ())
    key = "sop_instance_uid" if "sop_instance_uid" in first[0] else "image_id"
    rows = _read_csv(path, (key, "diagnosis"))
    out: dict[str, dict[str, str]] = {}
    for lineno, row in enumerate(rows, start=2):
        uid = row[key]
        try:
            check_uid(uid)
        except DataError:
            raise DataError(path, f"line {lineno}: '{uid[:80]}' is not a SOP Instance UID") from None
        if uid in out:
            raise DataError(path, f"line {lineno}: SOP Instance UID {uid} appears twice")
        out[uid] = {**row, "diagnosis": canonical(row["diagnosis"])}
    return out


@dataclass
class Fetched:
    """The new cases (a table over their files), the files this run created, and what was passed over."""

    table: ImageTable
    files: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def discard(self, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Delete the files this run created, but those of the cases ``keep`` names (the ones an index took)."""
        for f in self.files:
            if f.stem not in keep:
                f.unlink(missing_ok=True)


def fetch_cases(
    pacs: Pacs,
    refs: Iterable[InstanceRef],
    labels: dict[str, dict[str, str]],
    folder: Path,
    *,
    have: set[str] = frozenset(),  # type: ignore[assignment]
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Fetched:
    """Retrieve the labelled instances of ``refs`` the archive lacks (``have``: its image ids) into
    ``folder``. A malformed or oversized instance is a :class:`DataError` naming it (skipped and named with
    ``skip_bad``); on any error the files already written are deleted again."""
    from chaiderm.data.dicom import dicom_metadata
    from chaiderm.data.images import load_image

    refs = list(refs)
    known = [r for r in refs if r.instance in have]
    unlabelled = [r for r in refs if r.instance not in have and r.instance not in labels]
    wanted = [r for r in refs if r.instance not in have and r.instance in labels]
    out = Fetched(ImageTable([], [], [], source=f"dicomweb:{pacs.name}"))
    if known:
        out.messages.append(f"{len(known)} instance(s) already in the archive, not retrieved")
    if unlabelled:
        shown = ", ".join(r.instance for r in unlabelled[:3])
        out.messages.append(f"{len(unlabelled)} instance(s) without a row in the labels CSV, skipped: {shown}")
    ids, paths, diagnoses, groups, metadata, bad = [], [], [], [], [], []
    try:
        for ref in wanted:
            try:
                check_uid(ref.instance)
                data = pacs.fetch(ref)
                load_image(data, ref.name)  # refused by name as a file would be, before it is written
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append(str(e))
                continue
            finally:
                if progress is not None:
                    progress(1)
            path = folder / f"{ref.instance}.dcm"
            existed = path.exists()  # an earlier run's copy, which an index may hold: never deleted here
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            if not existed:
                out.files.append(path)
            row = labels[ref.instance]
            meta = metadata_of(row)
            for k, v in dicom_metadata(data, ref.name).items():
                meta.setdefault(k, v)
            ids.append(ref.instance)
            paths.append(str(path))
            diagnoses.append(row["diagnosis"])
            groups.append(row.get("group") or None)
            metadata.append(meta)
    except BaseException:  # an error, a refusal, Ctrl-C: no file of this run stays behind
        out.discard()
        raise
    out.messages += [f"skipped unreadable: {e}" for e in bad]
    out.table = ImageTable(ids, paths, diagnoses, groups, metadata=metadata, source=f"dicomweb:{pacs.name}")
    return out
