"""One round of the recommended recipe, as a user runs it, with its guard and ablation:
``python -m research.recipe_rounds.recipe_round --work DIR --ablation 5 \\
--out research/recipe_rounds/accuracy_recipe_round4.json``.

1. ``chaiderm train --recipe recommended`` (skipped where ``DIR/run`` holds a finished run);
2. the recipe's first ``--ablation`` members as one ensemble (``chaiderm ensemble``), the previous recipe;
3. both indexed over the ISIC 2017 training split and scored on data one may tune on (the official
   validation split, the ham10000_dev tune half): the guard (research/recipe_rounds/recipe_rounds.md, recipe
   rounds 3-4) decides
   from these alone whether the recipe keeps its members;
4. only then both on the ISIC 2017 test split and ham10000_dev (report half, all): the recipe's figures,
   and the smaller ensemble's as the ablation.
Every step is the ``chaiderm`` command a user types; the figures are those commands' JSON files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from research._common import DATA

HERE = Path(__file__).resolve().parent
SHARED = DATA
MEL = "melanoma"
KS = ("3", "5", "10", "20", "40")


def _run(args: list[str], timing: dict, key: str) -> None:
    t = time.perf_counter()
    print("$ chaiderm " + " ".join(args), flush=True)
    exe = shutil.which("chaiderm") or sys.exit("chaiderm: not installed (pip install -e .)")
    subprocess.run([exe, *args], check=True)
    timing[key] = round(time.perf_counter() - t, 1)


def _mel(path: Path) -> dict:
    d = json.loads(path.read_text())
    return {"auc": d["auc"][MEL], "auc_ci": d["auc_ci"][MEL], "file": path.name}


def guard(recipe: dict, smaller: dict, margin: float = 0.01) -> dict:
    """The rule written before the run: the recipe keeps its members unless it scores below the smaller
    ensemble on both tunable sets by more than ``margin`` (validation: mean AUC@3..40; tune half: AUC@20)."""
    val = sum(recipe["val"]["auc"][k] - smaller["val"]["auc"][k] for k in KS) / len(KS)
    tune = recipe["ham_tune"]["auc"]["20"] - smaller["ham_tune"]["auc"]["20"]
    keep = not (val < -margin and tune < -margin)
    return {"val_mean_gain": val, "ham_tune_auc20_gain": tune, "margin": margin, "recipe_members_kept": keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the run, indexes and evaluations")
    ap.add_argument("--isic", type=Path, default=SHARED / "isic2017")
    ap.add_argument("--ham", type=Path, default=SHARED / "ham10000_dev")
    ap.add_argument(
        "--ham-tune", type=Path, required=True, help="tune half (external_archive.py --write-halves DIR: DIR/tune)"
    )
    ap.add_argument("--ham-report", type=Path, required=True, help="the report half (DIR/report)")
    ap.add_argument("--ablation", type=int, default=3, help="members of the smaller ensemble it is guarded against")
    ap.add_argument("--out", type=Path, default=HERE / "accuracy_recipe_round.json")
    a = ap.parse_args()
    w = a.work
    ev = w / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    run = w / "run"
    if not (run / "model.safetensors").exists():
        _run(["train", "--data", str(a.isic), "--out", str(run), "--recipe", "recommended"], timing, "train")
    members = sorted((run / "members").iterdir())
    small = f"first_{a.ablation}"
    models = {"recipe": run, small: w / f"ens{a.ablation}"}
    if not (models[small] / "model.safetensors").exists():
        _run(["ensemble", *map(str, members[: a.ablation]), "--out", str(models[small]), "--vote", "distance"],
             timing, small)  # fmt: skip
    for name, model in models.items():
        if not (w / f"ix_{name}").exists():
            _run(
                ["index", "--model", str(model), "--data", str(a.isic), "--split", "train",
                 "--out", str(w / f"ix_{name}"), "--no-store-maps"],
                timing, f"index_{name}",
            )  # fmt: skip

    def evaluate(name: str, what: str, data: Path, split: str | None) -> dict:
        out = ev / f"{name}_{what}.json"
        if not out.exists():
            args = ["evaluate", "--model", str(models[name]), "--index", str(w / f"ix_{name}"), "--data", str(data)]
            _run([*args, *(["--split", split] if split else []), "--out", str(out)], timing, f"evaluate_{name}_{what}")
        return _mel(out)

    res: dict[str, dict] = {name: {} for name in models}
    for name in models:  # tunable data first: the guard reads nothing else
        res[name]["val"] = evaluate(name, "val", a.isic, "val")
        res[name]["ham_tune"] = evaluate(name, "ham_tune", a.ham_tune, None)
    decision = guard(res["recipe"], res[small])
    print("guard:", json.dumps(decision), flush=True)
    for name in models:
        res[name]["test"] = evaluate(name, "test", a.isic, "test")
        res[name]["ham_report"] = evaluate(name, "ham_report", a.ham_report, None)
        res[name]["ham_all"] = evaluate(name, "ham_all", a.ham, None)
    test = json.loads((ev / "recipe_test.json").read_text())
    out = {
        "what": f"`chaiderm train --recipe recommended` with {len(members)} Disease members (distance vote), its "
        f"first {a.ablation} members as the ablation; guard on tunable data before the test split was read",
        "guard": decision,
        "members": len(members),
        "timing_s": timing,
        "recipe_test_sk_auc": test["auc"].get("seborrheic_keratosis"),
        "recipe_test_sk_auc_ci": test["auc_ci"].get("seborrheic_keratosis"),
        "recipe_test_balanced_accuracy": test["balanced_accuracy"],
        "recipe_test_balanced_accuracy_ci": test.get("balanced_accuracy_ci"),
        "results_melanoma": res,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
