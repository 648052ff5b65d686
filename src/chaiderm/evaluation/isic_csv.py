"""Predictions and ground truth in the ISIC 2018-2019 task 3 layout: ``image`` plus one probability column
per diagnosis, the files the organisers' scorer (``isic-challenge-scoring``) reads.

The vote's canonical diagnoses map onto the challenge's codes; BKL is the challenge's union of benign
keratoses (seborrheic keratosis, solar lentigo, lichenoid keratosis), so their shares add up there.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

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


def row(class_probabilities: dict[str, float], fmt: str) -> dict[str, float]:
    """One prediction row: each column the summed share of the diagnoses that map onto it."""
    out = dict.fromkeys(COLUMNS[fmt], 0.0)
    for diagnosis, p in class_probabilities.items():
        out[code_of(diagnosis, fmt)] += p
    return out


def write_csv(path: str | Path, rows: list[tuple[str, dict[str, float]]], fmt: str) -> None:
    """Write ``(image id, {column: value})`` rows, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *COLUMNS[fmt]])
    for image_id, values in rows:
        w.writerow([image_id, *(f"{values[c]:.6f}" for c in COLUMNS[fmt])])
    write_text(path, buf.getvalue())


def write_predictions(path: str | Path, predictions: list[tuple[str, dict[str, float]]], fmt: str) -> None:
    """``(image id, class_probabilities)`` of each query, in the challenge layout."""
    write_csv(path, [(iid, row(probs, fmt)) for iid, probs in predictions], fmt)


def write_truth(path: str | Path, image_ids: list[str], diagnoses: list[str], fmt: str) -> None:
    """Ground truth in the same layout (one 1.0 per row), for scoring a labelled query set."""
    write_csv(path, [(iid, row({d: 1.0}, fmt)) for iid, d in zip(image_ids, diagnoses, strict=True)], fmt)
