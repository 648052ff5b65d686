"""Does refining a search help? By region and by example, measured (issue 17).

    python bench/refine.py --isic ../shared/data/isic2017 --masks-data ../shared/data/ham10000_dev \
        --model bench/out/maps/zeros-32 --out bench/refine.json

Model: a Disease embedding trained on the ISIC 2017 training split (`bench/map_localisation.py`'s zeros-32,
the reproduction's recipe). Archive: the 2000 ISIC 2017 training images.

- **By region**: every ham10000_dev image queries the archive twice, whole and by the bounding box of its
  lesion mask (the embedding pooled over the map cells under the box, as the viewer does). Melanoma AUC@k
  of the vote, and P@k = the share of neighbours with the query's diagnosis for the ham10000_dev queries
  whose diagnosis the archive has (melanoma, nevus; benign keratosis counted as seborrheic keratosis),
  with 95% bootstrap intervals over the queries.
- **By example** (Rocchio), simulated users: a user marks the first page (10) of neighbours: those of the
  query's own diagnosis "similar", the others "not similar"; one round refines with those marks, a second
  round adds the marks of the refined first page. The weights are chosen on the training split (each
  training image queries the other training images; highest mean P@10 after one round on the grid below),
  then measured once on the validation split: P@k and melanoma AUC@k before and after one and two rounds,
  with a share of wrong marks (each mark flipped with that probability) to show what a noisier user leaves.
  Caveat: the marks come from the true diagnosis, so the AUC after refinement is what a user who judges
  similarity like the labels gets, not a blind classifier's score.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import chaiderm  # noqa: F401  (sets the OpenMP spin limit before torch loads)
from chaiderm.data.records import load_table, read_folder
from chaiderm.data.transforms import mask_as_seen, prepare
from chaiderm.evaluation.metrics import bootstrap_auc_ci, bootstrap_mean_ci
from chaiderm.index.faiss_index import exact_search
from chaiderm.index.knn import knn_vote
from chaiderm.index.refine import Region, region_cells, rocchio
from chaiderm.models.embedding import load_model
from chaiderm.models.inference import embed

KS = (5, 10, 20)
PAGE = 10
BETAS = (0.25, 0.5, 0.75, 1.0)
GAMMAS = (0.0, 0.1, 0.25, 0.5)
WRONG = (0.0, 0.2)
HAM_TO_ISIC = {"melanoma": "melanoma", "nevus": "nevus", "benign_keratosis": "seborrheic_keratosis"}


def _scores(idx: np.ndarray, arch_dx: np.ndarray, q_dx: np.ndarray, y: np.ndarray, mel: np.ndarray) -> dict:
    out = {}
    for k in KS:
        vote = knn_vote(mel[idx], k)
        out[f"auc@{k}"] = float(roc_auc_score(y, vote))
        out[f"auc@{k}_ci"] = list(bootstrap_auc_ci(y, vote, n_boot=1000, seed=0))
        known = q_dx != ""
        p = (arch_dx[idx[:, :k]] == q_dx[:, None])[known].mean(axis=1)
        out[f"p@{k}"] = float(p.mean())
        out[f"p@{k}_ci"] = bootstrap_mean_ci(p)
    return out


def _simulate(q, arch, arch_dx, q_dx, beta, gamma, rounds, wrong, rng, exclude_self=False) -> list[np.ndarray]:
    """Neighbour lists (n, max k) before and after each round of simulated marks."""
    kmax = max(KS) + (1 if exclude_self else 0)

    def search(emb):
        _, idx = exact_search(arch, emb, kmax)
        if exclude_self:
            idx = np.array([[j for j in row if j != i][: max(KS)] for i, row in enumerate(idx)])
        return idx

    idx = search(q)
    out = [idx]
    marks: list[dict[int, bool]] = [{} for _ in range(len(q))]
    for _ in range(rounds):
        moved = np.empty_like(q)
        for i in range(len(q)):
            for j in idx[i, :PAGE]:
                if int(j) in marks[i]:
                    continue
                same = arch_dx[j] == q_dx[i]
                marks[i][int(j)] = (not same) if rng.random() < wrong else same
            sim = [j for j, s in marks[i].items() if s]
            dis = [j for j, s in marks[i].items() if not s]
            moved[i] = rocchio(q[i], arch[sim], arch[dis], beta, gamma)
        idx = search(moved)
        out.append(idx)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isic", type=Path, required=True)
    ap.add_argument("--masks-data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/refine.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, cfg = load_model(a.model)
    size, load = cfg.model.image_size, cfg.model.load_size
    train_t, val_t, ham = load_table(a.isic, "train"), load_table(a.isic, "val"), read_folder(a.masks_data)
    arch = embed(model, prepare(train_t.paths, load)[0], size)[0]
    val = embed(model, prepare(val_t.paths, load)[0], size)[0]
    _, hm_maps = embed(model, prepare(ham.paths, load)[0], size, with_maps=True, maps_dtype=np.float32)
    arch_dx = np.array(train_t.diagnoses)
    mel = train_t.is_positive("melanoma").astype(float)

    # by region: the lesion's bounding box (mask on the crop the network sees, shifted to the square)
    whole = hm_maps.mean(axis=(2, 3))
    region = np.empty_like(whole)
    off = (load - size) // 2
    for i, mpath in enumerate(ham.mask_paths):
        m = mask_as_seen(mpath, load, size)
        ys, xs = np.nonzero(m)
        box = Region(int(xs.min()) + off, int(ys.min()) + off, int(xs.max()) + 1 + off, int(ys.max()) + 1 + off)
        try:
            cells = region_cells([box], load, size, hm_maps.shape[2:])
        except Exception:  # a lesion smaller than a cell: the cell under its centre
            cells = np.zeros(hm_maps.shape[2:], bool)
            h, w = cells.shape
            cells[min(h - 1, int((ys.mean()) * h / size)), min(w - 1, int((xs.mean()) * w / size))] = True
        region[i] = hm_maps[i][:, cells].mean(axis=1)
    y_ham = ham.is_positive("melanoma")
    ham_dx = np.array([HAM_TO_ISIC.get(d, "") for d in ham.diagnoses])
    by_region = {}
    for name, emb in (("whole image", whole), ("lesion bounding box", region)):
        _, idx = exact_search(arch, emb, max(KS))
        by_region[name] = _scores(idx, arch_dx, ham_dx, y_ham, mel)

    # by example: tune on the training split (each training image against the others), then validation
    rng = np.random.default_rng(0)
    tune_rows = rng.permutation(len(arch))[:500]
    grid = {}
    for beta in BETAS:
        for gamma in GAMMAS:
            lists = _simulate(
                arch[tune_rows],
                arch,
                arch_dx,
                arch_dx[tune_rows],
                beta,
                gamma,
                1,
                0.0,
                np.random.default_rng(1),
                exclude_self=True,
            )
            # marks that name the query itself are impossible here: it is excluded from its own results
            grid[f"{beta},{gamma}"] = float((arch_dx[lists[1][:, :PAGE]] == arch_dx[tune_rows][:, None]).mean())
    best = max(grid, key=grid.get)
    beta, gamma = map(float, best.split(","))
    val_dx = np.array(val_t.diagnoses)
    y_val = val_t.is_positive("melanoma")
    by_example = {}
    for wrong in WRONG:
        lists = _simulate(val, arch, arch_dx, val_dx, beta, gamma, 2, wrong, np.random.default_rng(2))
        by_example[f"wrong marks {wrong:.0%}"] = {
            name: _scores(idx, arch_dx, val_dx, y_val, mel)
            for name, idx in zip(("before", "after 1 round", "after 2 rounds"), lists, strict=True)
        }
    out = {
        "model": str(a.model),
        "archive": f"ISIC 2017 train ({len(arch)})",
        "by_region": {"queries": f"ham10000_dev ({len(ham)})", **by_region},
        "by_example": {
            "queries": f"ISIC 2017 validation ({len(val)})",
            "tuning_p@10_after_one_round_on_train": grid,
            "chosen_beta_gamma": [beta, gamma],
            **by_example,
        },
        "seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in by_region.items():
        print(f"region {name:22s} AUC@20 {r['auc@20']:.3f} P@10 {r['p@10']:.3f}")
    print("chosen", beta, gamma)
    for w, rows in by_example.items():
        for name, r in rows.items():
            print(f"{w} {name:15s} P@10 {r['p@10']:.3f} AUC@20 {r['auc@20']:.3f}")


if __name__ == "__main__":
    main()
