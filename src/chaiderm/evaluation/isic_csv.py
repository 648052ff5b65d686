"""Predictions and ground truth in the ISIC 2018-2019 task 3 layout: ``image`` plus one probability column
per diagnosis, the files the organisers' scorer (``isic-challenge-scoring``) reads.

The vote's canonical diagnoses map onto the challenge's codes; BKL is the challenge's union of benign
keratoses (seborrheic keratosis, solar lentigo, lichenoid keratosis), so their shares add up there.

``UNK`` (ISIC 2019: "none of the others") is 1.0 for a query marked unlike the archive (``index.novelty``)
and 0.0 otherwise, so the challenge's argmax reads such a query as UNK while the diagnosis columns keep the
vote's shares for their own AUCs. An index without a novelty reference leaves it 0.0, as before.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import BinaryIO

from chaiderm._io import write_text
from chaiderm.errors import DataError

COLUMNS = {
    "isic2019": ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"),
    "isic2018": ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
}
_CODES = {
    "melanoma": "MEL",
    "nevus": "NV",
    "basal_cell_carcinoma": "BCC",
    "actinic_keratosis": "AK",
    "benign_keratosis": "BKL",
    "seborrheic_keratosis": "BKL",
    "solar_lentigo": "BKL",
    "lichenoid_keratosis": "BKL",
    "dermatofibroma": "DF",
    "vascular_lesion": "VASC",
    "squamous_cell_carcinoma": "SCC",
}


def code_of(diagnosis: str, fmt: str) -> str:
    """The challenge column of a canonical diagnosis; refused where the layout has none for it."""
    if fmt not in COLUMNS:
        raise DataError(None, f"--csv-format: '{fmt}' is not one of {', '.join(COLUMNS)}")
    code = _CODES.get(diagnosis, "UNK")
    if fmt == "isic2018" and code == "AK":
        code = "AKIEC"
    if code not in COLUMNS[fmt]:
        raise DataError(
            None,
            f"diagnosis '{diagnosis}' has no column in the {fmt} layout ({', '.join(COLUMNS[fmt])}); "
            "use --csv-format isic2019, whose UNK column takes it",
        )
    return code


def unknown_of(uncertainty: dict | None) -> float:
    """The ``UNK`` value of an answer with this ``Prediction.uncertainty``."""
    return 1.0 if uncertainty and uncertainty.get("unlike_archive") else 0.0


def row(class_probabilities: dict[str, float], fmt: str, unknown: float = 0.0) -> dict[str, float]:
    """One prediction row: each column the summed share of the diagnoses that map onto it; ``unknown``
    (:func:`unknown_of`) is added to ``UNK`` where the layout has it."""
    out = dict.fromkeys(COLUMNS[fmt], 0.0)
    for diagnosis, p in class_probabilities.items():
        out[code_of(diagnosis, fmt)] += p
    if "UNK" in out:
        out["UNK"] = min(1.0, out["UNK"] + unknown)
    return out


def header(fmt: str) -> list[str]:
    return ["image", *COLUMNS[fmt]]


def _cells(image_id: str, values: dict[str, float], fmt: str) -> list[str]:
    return [image_id, *(f"{values[c]:.6f}" for c in COLUMNS[fmt])]


def write_csv(path: str | Path, rows: list[tuple[str, dict[str, float]]], fmt: str) -> None:
    """Write ``(image id, {column: value})`` rows, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header(fmt))
    for image_id, values in rows:
        w.writerow(_cells(image_id, values, fmt))
    write_text(path, buf.getvalue())


def write_predictions(
    path: str | Path, predictions: list[tuple[str, dict[str, float]]], fmt: str, unknown: dict[str, float] | None = None
) -> None:
    """``(image id, class_probabilities)`` of each query, in the challenge layout; ``unknown``: image id ->
    its :func:`unknown_of` (0 where absent)."""
    unk = unknown or {}
    write_csv(path, [(iid, row(probs, fmt, unk.get(iid, 0.0))) for iid, probs in predictions], fmt)


def write_truth(path: str | Path, image_ids: list[str], diagnoses: list[str], fmt: str) -> None:
    """Ground truth in the same layout (one 1.0 per row), for scoring a labelled query set."""
    write_csv(path, [(iid, row({d: 1.0}, fmt)) for iid, d in zip(image_ids, diagnoses, strict=True)], fmt)


class PredictionsFile:
    """A predictions CSV written a row at a time, each row flushed as it is answered, so a run that is
    killed keeps every answer it gave and a rerun on the same file resumes: ``answered`` holds the image
    ids already there. The rows are those of :func:`write_predictions`, byte for byte.

    An existing file must have this layout's header; a last line cut short by a kill is dropped (its image
    is answered again). Use as a context manager."""

    def __init__(self, path: str | Path, fmt: str):
        self.path = Path(path)
        self.fmt = fmt
        self.answered: set[str] = set()
        want = header(fmt)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            raw = open(self.path, "a+b")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise DataError(self.path, f"cannot write the predictions CSV ({e.strerror or e})") from None
        try:
            _lock(raw, self.path)  # read after the lock: no other run appends between reading and writing
            raw.seek(0)
            kept = self._complete(raw.read(), want)
            raw.truncate(len(kept.encode("utf-8")))
        except OSError as e:
            raw.close()
            raise DataError(self.path, f"cannot write the predictions CSV ({e.strerror or e})") from None
        except BaseException:
            raw.close()
            raise
        self._fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        if not kept:
            self._writer.writerow(want)
            self._fh.flush()

    def _complete(self, data: bytes, want: list[str]) -> str:
        """The file's complete lines (all of it but a torn last line), checked against the layout."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(self.path, "not a predictions CSV (not UTF-8 text); give another --csv") from None
        kept = text[: text.rfind("\n") + 1]  # rows end in a newline: anything after the last one is torn
        rows = list(csv.reader(io.StringIO(kept)))
        if not rows:
            return ""
        if rows[0] != want:
            other = [f for f in COLUMNS if header(f) == rows[0]]
            hint = f"it was written with --csv-format {other[0]}" if other else "it is not a predictions CSV"
            raise DataError(
                self.path,
                f"its header ({','.join(rows[0])[:80]}) is not the {self.fmt} layout ({','.join(want)}): "
                f"{hint}; give that, or another --csv",
            )
        for n, r in enumerate(rows[1:], start=2):
            if len(r) != len(want):
                raise DataError(self.path, f"line {n} has {len(r)} fields, not {len(want)}: not a predictions CSV")
            self.answered.add(r[0])
        return kept

    def write(self, image_id: str, class_probabilities: dict[str, float], unknown: float = 0.0) -> None:
        """Append one query's row and flush it to the operating system (a kill after this keeps it)."""
        self._writer.writerow(_cells(image_id, row(class_probabilities, self.fmt, unknown), self.fmt))
        self._fh.flush()
        self.answered.add(image_id)

    def close(self) -> None:
        self._fh.close()  # and the lock with it

    def __enter__(self) -> PredictionsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(fh: BinaryIO, path: Path) -> None:
    """Hold the file for this run alone: two runs resuming one CSV would both answer the missing images."""
    try:
        import fcntl
    except ImportError:  # not POSIX: unlocked, as before
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(path, "another run is writing this file; let it finish, or give another --csv") from None
