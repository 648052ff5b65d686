"""Settings for images from other clinics, chosen on half of ham10000_dev (issue 16's external goal).

    python -m research.external.external_select [--seeds 0 1] [--reuse-default MEMBERS_DIR] [--out FILE.json]

Why: a model trained on ISIC 2017 alone reaches melanoma AUC@20 of only about 0.58 (one seed) on
ham10000_dev queries against the ISIC 2017 archive; the goal is 0.75 for a model that never trained on
ham10000_dev. Choosing settings on all of ham10000_dev and then reporting it would flatter the figure, so
its 1108 images are split once, by diagnosis, into a *tune* half (settings are chosen on it) and a
*report* half (read only for the recipe's final figure).

Protocol. Every candidate is a Disease model trained by ``chaiderm train`` on the 2000 ISIC 2017
training images (the default settings otherwise: Lite0 at 224, 3 epochs, epoch chosen on the official
validation split), once per seed. Its ISIC 2017 training archive is searched by (a) the tune half of
ham10000_dev and (b) the 150 ISIC 2017 validation images; melanoma AUC@3..40 (``evaluation.evaluate.
score_neighbours``, the code of ``chaiderm evaluate``). The report half and the ISIC test split are not read.

Round 1 candidates (``CANDIDATES``): ``default``; ``colour`` (Shades of Gray colour constancy, training
jitter 0.3); ``zoom`` (training crops down to 224 / 1.6 = 140 pixels, enlarged); ``colour_zoom`` (both).
Rule, fixed 2026-11-26 before the run (:func:`decide`): a candidate passes if, averaged over the seeds, its
tune-half AUC@20 beats ``default``'s by more than 0.02, it beats it on every seed, and its mean ISIC
validation AUC@3..40 is not more than 0.02 below ``default``'s (not bought with ISIC accuracy). Of those
that pass, the one with the highest tune-half AUC@20 joins the recommended recipe; none passing, the recipe
keeps the default augmentation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from research._common import DATA

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = DATA
KS = (3, 5, 10, 20, 40)
SPLIT_SEED = 2026  # the tune / report halves of ham10000_dev; never changed after round 1

# name -> extra `chaiderm train` flags
CANDIDATES: dict[str, list[str]] = {
    "default": [],
    "colour": ["--colour", "shades_of_gray", "--colour-jitter", "0.3"],
    "zoom": ["--zoom", "1.6"],
    "colour_zoom": ["--colour", "shades_of_gray", "--colour-jitter", "0.3", "--zoom", "1.6"],
}


def halves(diagnoses: list[str], seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the tune and report halves, each diagnosis split in two (the odd one to report)."""
    rng = np.random.default_rng(seed)
    dx = np.asarray(diagnoses)
    tune, report = [], []
    for d in sorted(set(diagnoses)):
        rows = rng.permutation(np.flatnonzero(dx == d))
        tune += rows[: len(rows) // 2].tolist()
        report += rows[len(rows) // 2 :].tolist()
    return np.sort(tune), np.sort(report)


def score(run: Path, isic: Path, ham: Path, rows: np.ndarray) -> dict:
    """Melanoma AUC@k of the ham rows and of ISIC validation, against the ISIC training archive."""
    from chaiderm.data.records import load_table
    from chaiderm.data.transforms import prepare
    from chaiderm.evaluation.evaluate import score_neighbours
    from chaiderm.index.faiss_index import exact_search
    from chaiderm.models.embedding import load_model
    from chaiderm.models.inference import embed

    model, cfg = load_model(run)
    size, load = cfg.model.image_size, cfg.model.load_size
    tr, va, hm = load_table(isic, "train"), load_table(isic, "val"), load_table(ham).subset(rows)
    emb = {n: embed(model, prepare(t.paths, load)[0], size)[0] for n, t in (("tr", tr), ("va", va), ("hm", hm))}
    out = {}
    for name, t, q in (("ham", hm, emb["hm"]), ("val", va, emb["va"])):
        _, nn = exact_search(emb["tr"], q, max(KS))
        out[name] = score_neighbours(tr.diagnoses, nn, t.diagnoses, ks=KS, n_boot=0)["auc"]["melanoma"]
    return out


def decide(results: dict[str, dict[int, dict]]) -> dict:
    """Round 1's rule (module docstring) on ``results[candidate][seed] = score(...)``."""
    base = results.get("default", {})
    report: dict[str, dict] = {}
    passed = {}
    for name, per_seed in results.items():
        if name == "default":
            continue
        seeds = sorted(set(per_seed) & set(base))
        if not seeds or len(seeds) < len(base):
            report[name] = {"passes": False, "why": "unfinished"}
            continue
        gains = [per_seed[s]["ham"]["20"] - base[s]["ham"]["20"] for s in seeds]
        mean_val = {
            n: np.mean([np.mean(list(r[s]["val"].values())) for s in seeds]) for n, r in (("c", per_seed), ("b", base))
        }
        val_gap = float(mean_val["c"] - mean_val["b"])
        ok = bool(np.mean(gains) > 0.02 and min(gains) > 0 and val_gap >= -0.02)
        report[name] = {"ham20_gain": float(np.mean(gains)), "per_seed_gain": gains, "val_gap": val_gap, "passes": ok}
        if ok:
            passed[name] = float(np.mean([per_seed[s]["ham"]["20"] for s in seeds]))
    chosen = max(passed, key=passed.get) if passed else "default"
    return {"candidates": report, "chosen": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isic", type=Path, default=DEFAULT_DATA / "isic2017")
    ap.add_argument("--ham", type=Path, default=DEFAULT_DATA / "ham10000_dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/chaiderm_external"))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    ap.add_argument(
        "--reuse-default",
        type=Path,
        default=None,
        help="a folder holding seed<N>/ runs trained with the default settings (e.g. a recipe's members/)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "external_round1.json")
    a = ap.parse_args()
    from chaiderm._io import write_json
    from chaiderm.data.records import load_table

    tune, report = halves(load_table(a.ham).diagnoses)
    results: dict[str, dict[int, dict]] = {}
    seconds: dict[str, float] = {}
    t_all = time.time()
    for name in ["default", *(c for c in a.only if c != "default")]:
        for seed in a.seeds:
            run = a.work / f"{name}_seed{seed}"
            reuse = a.reuse_default / f"seed{seed}" if a.reuse_default and name == "default" else None
            t0 = time.time()
            if reuse is not None and (reuse / "model.safetensors").exists():
                run = reuse
            elif not (run / "model.safetensors").exists():
                if run.exists():
                    shutil.rmtree(run)
                cmd = ["chaiderm", "train", "--data", str(a.isic), "--out", str(run), "--seed", str(seed)]
                subprocess.run([*cmd, *CANDIDATES[name]], check=True, env=os.environ, stdout=sys.stderr)
            results.setdefault(name, {})[seed] = score(run, a.isic, a.ham, tune)
            seconds[f"{name}_seed{seed}"] = time.time() - t0
            r = results[name][seed]
            print(f"{name} seed {seed}: ham-tune AUC@20 {r['ham']['20']:.3f}, val {r['val']['20']:.3f}", flush=True)
            summary = {
                "rule": "module docstring of research/external/external_select.py",
                "split_seed": SPLIT_SEED,
                "tune_rows": len(tune),
                "report_rows": len(report),
                "candidates": {n: CANDIDATES[n] for n in results},
                "results": {n: {str(s): v for s, v in per.items()} for n, per in results.items()},
                "decision": decide(results),
                "seconds": seconds,
                "wall_s": time.time() - t_all,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, cpu",
                "date": datetime.date.today().isoformat(),
            }
            write_json(a.out, summary)
    print(json.dumps(summary["decision"], indent=1))


if __name__ == "__main__":
    main()
