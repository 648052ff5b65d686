"""Does refining a search help? By region and by example, measured (issue 17).

    python -m research.refine.refine --isic DATA/isic2017 --masks-data DATA/ham10000_dev \
        --model research/out/maps/zeros-32 --out research/refine/refine.json

Model: a Disease embedding trained on the ISIC 2017 training split (`research/maps/map_localisation.py`'s zeros-32,
the reproduction's recipe). Archive: the 2000 ISIC 2017 training images.

- **By region**: every ham10000_dev image queries the archive twice, whole and by the bounding box of its
  lesion mask (the embedding pooled over the map cells under the box, as the viewer does). Melanoma AUC@k
  of the vote, and P@k = the share of neighbours with the query's diagnosis for the ham10000_dev queries
  whose diagnosis the archive has (melanoma, nevus; benign keratosis counted as seborrheic keratosis),
  with 95% bootstrap intervals over the queries.
- **By example** (Rocchio), simulated users: a user marks the first page (10) of neighbours: those of the
  query's own diagnosis "similar", the others "not similar"; one round refines with those marks, a second
  round adds the marks of the refined first page. The weights are chosen on the training split (each
  training image queries the other training images) on the grid below, which keeps the query at least as
  heavy as the marks (beta <= 0.5, `refine.MAX_SIMILAR`) and a "not similar" mark pushing no harder than
  a "similar" one pulls (gamma <= beta: with gamma 1.0, a case marked similar could drop off the page), by
  the highest mean *residual* P@10 after one round: P@10 of the neighbours the user has not marked yet.
  Plain P@10 rewards finding the marked cases again, which the marks carry the true labels of; a weight
  that turns the query into a marked case wins it. Then measured once on the validation split: P@k,
  residual P@10 and melanoma AUC@k before and after one and two rounds, with a share of wrong marks (each
  mark flipped with that probability) to show what a noisier user leaves. Caveat: the marks come from the
  true diagnosis, so the AUC after refinement is what a user who judges similarity like the labels gets,
  not a blind classifier's score.

A smaller run (`--archive-size`, `--ham-size 0` skips the by-region part) says so in its JSON.
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
BETAS = (0.1, 0.2, 0.3, 0.4, 0.5)  # up to refine.MAX_SIMILAR
GAMMAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
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


def _residual_p(idx: np.ndarray, marked: list[set[int]], arch_dx: np.ndarray, q_dx: np.ndarray) -> float:
    """Mean P@PAGE over each list's first PAGE cases the user has not marked."""
    p = []
    for row, seen, dx in zip(idx, marked, q_dx, strict=True):
        if dx == "":
            continue
        rest = [j for j in row if int(j) not in seen][:PAGE]
        p.append(float(np.mean(arch_dx[rest] == dx)))
    return float(np.mean(p))


def _simulate(
    q, arch, arch_dx, q_dx, beta, gamma, rounds, wrong, rng, self_rows=None
) -> tuple[list[np.ndarray], list[list[set[int]]]]:
    """Neighbour lists (n, max k, and room for the marked cases) before and after each round of simulated
    marks, and the cases marked before each list. ``self_rows``: the archive row of each query, which
    its own results leave out (an archive case querying the others)."""
    kmax = max(KS) + PAGE * rounds + (0 if self_rows is None else 1)

    def search(emb):
        _, idx = exact_search(arch, emb, kmax)
        if self_rows is not None:
            idx = np.array([[j for j in row if j != me][: kmax - 1] for me, row in zip(self_rows, idx, strict=True)])
        return idx

    idx = search(q)
    out = [idx]
    marks: list[dict[int, bool]] = [{} for _ in range(len(q))]
    seen = [[set() for _ in range(len(q))]]
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
        seen.append([set(m) for m in marks])
    return out, seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isic", type=Path, required=True)
    ap.add_argument("--masks-data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--archive-size", type=int, default=0, help="a random subset of the training images (0: all)")
    ap.add_argument("--ham-size", type=int, default=-1, help="ham10000_dev queries by region (-1: all, 0: skip)")
    a = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, cfg = load_model(a.model)
    size, load = cfg.model.image_size, cfg.model.load_size
    train_t, val_t, ham = load_table(a.isic, "train"), load_table(a.isic, "val"), read_folder(a.masks_data)
    if a.archive_size:
        train_t = train_t.subset(np.sort(np.random.default_rng(0).permutation(len(train_t))[: a.archive_size]))
    if a.ham_size >= 0:
        ham = ham.subset(np.sort(np.random.default_rng(0).permutation(len(ham))[: a.ham_size]))
    arch = embed(model, prepare(train_t.paths, load)[0], size)[0]
    val = embed(model, prepare(val_t.paths, load)[0], size)[0]
    arch_dx = np.array(train_t.diagnoses)
    mel = train_t.is_positive("melanoma").astype(float)

    by_region = {} if len(ham) else {"skipped": "--ham-size 0"}
    if len(ham):
        by_region = _by_region(model, ham, arch, arch_dx, mel, size, load)

    # by example: tune on the training split (each training image against the others), then validation
    rng = np.random.default_rng(0)
    tune_rows = rng.permutation(len(arch))[:500]
    grid, grid_plain = {}, {}
    for beta in BETAS:
        for gamma in (g for g in GAMMAS if g <= beta):  # a "not similar" pushes no harder than a "similar" pulls
            lists, seen = _simulate(
                arch[tune_rows],
                arch,
                arch_dx,
                arch_dx[tune_rows],
                beta,
                gamma,
                1,
                0.0,
                np.random.default_rng(1),
                self_rows=tune_rows,
            )
            # marks that name the query itself are impossible here: it is excluded from its own results
            key = f"{beta},{gamma}"
            grid[key] = _residual_p(lists[1], seen[1], arch_dx, arch_dx[tune_rows])
            grid_plain[key] = float((arch_dx[lists[1][:, :PAGE]] == arch_dx[tune_rows][:, None]).mean())
    best = max(grid, key=grid.get)
    beta, gamma = map(float, best.split(","))
    val_dx = np.array(val_t.diagnoses)
    y_val = val_t.is_positive("melanoma")
    by_example = {}
    for wrong in WRONG:
        lists, seen = _simulate(val, arch, arch_dx, val_dx, beta, gamma, 2, wrong, np.random.default_rng(2))
        by_example[f"wrong marks {wrong:.0%}"] = {
            name: {
                **_scores(idx[:, : max(KS)], arch_dx, val_dx, y_val, mel),
                f"residual_p@{PAGE}": _residual_p(idx, marked, arch_dx, val_dx),
            }
            for name, idx, marked in zip(("before", "after 1 round", "after 2 rounds"), lists, seen, strict=True)
        }
    out = {
        "model": str(a.model),
        "archive": f"ISIC 2017 train ({len(arch)})",
        "by_region": {"queries": f"ham10000_dev ({len(ham)})", **by_region},
        "by_example": {
            "queries": f"ISIC 2017 validation ({len(val)})",
            f"tuning_residual_p@{PAGE}_after_one_round_on_train": grid,
            f"tuning_p@{PAGE}_after_one_round_on_train": grid_plain,
            "chosen_beta_gamma": [beta, gamma],
            **by_example,
        },
        "seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for name, r in by_region.items():
        if isinstance(r, dict):
            print(f"region {name:22s} AUC@20 {r['auc@20']:.3f} P@10 {r['p@10']:.3f}")
    print("chosen", beta, gamma)
    for w, rows in by_example.items():
        for name, r in rows.items():
            rest = r[f"residual_p@{PAGE}"]
            print(f"{w} {name:15s} P@10 {r['p@10']:.3f} residual P@10 {rest:.3f} AUC@20 {r['auc@20']:.3f}")


def _by_region(model, ham, arch, arch_dx, mel, size, load) -> dict:
    """Each ham10000_dev image queries the archive whole and by its lesion's bounding box."""
    _, hm_maps = embed(model, prepare(ham.paths, load)[0], size, with_maps=True, maps_dtype=np.float32)
    # the lesion's bounding box (mask on the crop the network sees, shifted to the square)
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
    return by_region


if __name__ == "__main__":
    main()
