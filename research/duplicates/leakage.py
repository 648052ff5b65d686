"""Duplicates across ISIC 2017 train / validation / test and ham10000_dev, and the test AUC without leaks.

Counts identical and near-duplicate pairs (`chaiderm.evaluation.duplicates`, default threshold) within and
between the sets, then scores the reproduction's Disease and Hierarchical models (a `chaiderm reproduce`
output folder) on the full test split and on the test split without every case whose duplicate sits in
the training archive. Writes research/duplicates/leakage.json:

    python -m research.duplicates.leakage --isic DATA/isic2017 --masks-data DATA/ham10000_dev \\
        --runs repro/runs/seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import chaiderm  # noqa: F401  (sets the OpenMP spin limit before torch loads)
from chaiderm.data.records import load_table, read_folder
from chaiderm.data.transforms import prepare
from chaiderm.evaluation.duplicates import DEFAULT_THRESHOLD, find_duplicates, image_features
from chaiderm.index.faiss_index import exact_search
from chaiderm.index.knn import knn_vote
from chaiderm.models.embedding import load_model
from chaiderm.models.inference import embed

KS = (3, 5, 10, 20, 40)


def auc_at_k(run: Path, train, test, keep: np.ndarray) -> dict[str, dict[str, float]]:
    model, cfg = load_model(run)
    tr = embed(model, prepare(train.paths, cfg.model.load_size)[0], cfg.model.image_size)[0]
    te = embed(model, prepare(test.paths, cfg.model.load_size)[0], cfg.model.image_size)[0]
    _, idx = exact_search(tr, te, max(KS))
    pos, y = train.is_positive(), test.is_positive()
    out: dict[str, dict[str, float]] = {"full": {}, "without_leaks": {}}
    for k in KS:
        v = knn_vote(pos[idx], k)
        out["full"][str(k)] = float(roc_auc_score(y, v))
        out["without_leaks"][str(k)] = float(roc_auc_score(y[keep], v[keep]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isic", type=Path, required=True)
    ap.add_argument("--masks-data", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True, help="reproduce's runs/seed<N> folder")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    a = ap.parse_args()
    tables = {sp: load_table(a.isic, sp) for sp in ("train", "val", "test")}
    tables["ham"] = read_folder(a.masks_data)
    sets = []
    for name, t in tables.items():
        feats, t = image_features(t)
        sets.append((name, t, feats))
        print(f"features of {name}: {len(t)}", flush=True)
    pairs = find_duplicates(sets, a.threshold)
    counts: dict[str, int] = {}
    for p in pairs:
        sa, sb = sorted((p.a.split(":")[0], p.b.split(":")[0]))
        key = f"{p.kind}: {sa}" + ("" if sa == sb else f" - {sb}")
        counts[key] = counts.get(key, 0) + 1
    leaked = set()
    for p in pairs:
        ends = {p.a.split(":")[0]: p.a.split(":", 1)[1], p.b.split(":")[0]: p.b.split(":", 1)[1]}
        if set(ends) == {"train", "test"}:
            leaked.add(ends["test"])
    test = tables["test"]
    keep = np.array([i not in leaked for i in test.image_ids])
    res = {
        "threshold": a.threshold,
        "pairs": counts,
        "test_cases_with_a_duplicate_in_train": int((~keep).sum()),
        "test_melanomas_removed": int((~keep & test.is_positive()).sum()),
        "auc": {v: auc_at_k(a.runs / v, tables["train"], test, keep) for v in ("Disease", "Hierarchical")},
    }
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
