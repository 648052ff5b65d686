"""`chaiderm query --csv --reports none` over N images against `chaiderm evaluate` over the same images,
with the same model and index, side by side in one run (issue 29: at most 1.5x for 1,000 images).

Without --model/--index/--data: a synthetic set (`chaiderm synth`, 256x256 images), a small model trained on
it for one epoch (`chaiderm train --backbone tiny`) and its index of the training split, all in a temporary
folder. With them: the first N images of --data's --split are the queries (a labelled folder of links to
those files is what `evaluate` reads; `query` gets the same files as arguments).

Both commands run as a user runs them, each in a fresh process (loading the model and index included),
`--repeats` times in alternating order so a slow spell of a shared machine falls on both alike; the ratio is
of the medians. `evaluate` keeps its defaults (1,000 bootstrap resamples), as the issue timed it; it also
runs with `--n-boot 10` (its least), which leaves little but embedding and voting, the work both share: the
stricter comparison, reported beside.
Writes bench/batch_query.json (or --out):  python bench/batch_query.py --n 1000
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.5  # the bound on query / evaluate for 1,000 images
CLI = [sys.executable, "-m", "chaiderm.cli"]


def run(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one chaiderm command; its own error output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"chaiderm {args[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def synthetic_setup(tmp: Path, n: int, backbone: str) -> tuple[Path, Path, Path, str, dict]:
    """A synthetic set with ``n`` test images, a small model trained on it and its index; seconds taken."""
    data, model, index = tmp / "syn", tmp / "run", tmp / "ix"
    took = {}
    t = time.perf_counter()
    run(["synth", "--out", str(data), "--n-train", "300", "--n-val", "30", "--n-test", str(n), "--size", "256"])
    took["synth_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    run(["train", "--data", str(data), "--out", str(model), "--epochs", "1", "--backbone", backbone,
         "--image-size", "224", "--load-size", "256", "--batch-size", "32"])  # fmt: skip
    took["train_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    run(["index", "--model", str(model), "--data", str(data), "--out", str(index)])
    took["index_s"] = round(time.perf_counter() - t, 1)
    return model, index, data, "test", took


def query_set(data: Path, split: str | None, n: int, out: Path) -> list[Path]:
    """The first ``n`` images of ``data``'s ``split`` as a labelled folder ``out`` (links to the same files)
    that `evaluate` reads; returns the image files, which `query` gets."""
    from chaiderm.data.records import load_table

    table = load_table(data, split)
    table = table.subset(range(min(n, len(table))))
    (out / "images").mkdir(parents=True)
    files = []
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "diagnosis"])
        for iid, path, dx in zip(table.image_ids, table.paths, table.diagnoses, strict=True):
            link = out / "images" / f"{iid}{Path(path).suffix}"
            link.symlink_to(Path(path).resolve())
            files.append(link)
            w.writerow([iid, dx])
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="query images (default 1000, the issue's size)")
    ap.add_argument("--model", type=Path, help="trained run folder (with --index and --data)")
    ap.add_argument("--index", type=Path, help="index folder built with --model")
    ap.add_argument("--data", type=Path, help="labelled images: ISIC 2017 folder or generic folder")
    ap.add_argument("--split", default=None, help="split of --data (default: test where it has one)")
    ap.add_argument("--backbone", default="tiny", help="backbone of the model trained on synthetic data")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each command, alternating their order")
    ap.add_argument("--out", type=Path, default=HERE / "batch_query.json")
    a = ap.parse_args()
    given = [a.model, a.index, a.data]
    if any(given) and not all(given):
        ap.error("--model, --index and --data go together")
    res: dict = {"n_asked": a.n, "repeats": a.repeats}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if all(given):
            model, index, data = a.model, a.index, a.data
            split = a.split
            if split is None:
                from chaiderm.data.records import is_isic2017

                split = "test" if is_isic2017(data) or (data / "test").is_dir() else None
            res["setup"] = "given"
        else:
            print(f"[bench] synthetic set with {a.n} test images and a small {a.backbone} model ...", flush=True)
            model, index, data, split, took = synthetic_setup(tmp, a.n, a.backbone)
            res["setup"] = {"synthetic": True, "backbone": a.backbone, "epochs": 1, "image_size": 224, **took}
        files = query_set(data, split, a.n, tmp / "queries")
        res.update(model=str(model), index=str(index), data=str(data), split=split, n_images=len(files))
        query_args = ["query", *map(str, files), "--model", str(model), "--index", str(index), "--reports", "none"]
        evaluate_args = ["evaluate", "--model", str(model), "--index", str(index), "--data", str(tmp / "queries")]
        commands = {
            "query": query_args,
            "evaluate": evaluate_args,
            "evaluate_n_boot_10": [*evaluate_args, "--n-boot", "10"],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for r in range(a.repeats):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                pred = tmp / f"pred_{r}.csv"  # a fresh file each time: a rerun on the same one would resume
                args = [*query_args, "--csv", str(pred)] if name == "query" else commands[name]
                times[name].append(run(args))
                print(f"[bench] round {r + 1} {name}: {times[name][-1][0]:.1f} s", flush=True)
                if name == "query":
                    with open(pred, newline="") as fh:
                        rows = sum(1 for _ in fh) - 1
                    if rows != len(files):
                        sys.exit(f"query wrote {rows} rows for {len(files)} images")
    for name, t in times.items():
        res[f"{name}_wall_s"] = [round(w, 2) for w, _ in t]
        res[f"{name}_cpu_s"] = [round(c, 2) for _, c in t]
        res[f"{name}_median_s"] = round(statistics.median(w for w, _ in t), 2)
    res["ratio"] = round(res["query_median_s"] / res["evaluate_median_s"], 3)
    res["ratio_vs_evaluate_n_boot_10"] = round(res["query_median_s"] / res["evaluate_n_boot_10_median_s"], 3)
    res["target_ratio"] = TARGET
    res["within_target"] = res["ratio"] <= TARGET
    res["within_target_vs_evaluate_n_boot_10"] = res["ratio_vs_evaluate_n_boot_10"] <= TARGET
    res["query_ms_per_image"] = round(1000 * res["query_median_s"] / res["n_images"], 1)
    res["when"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    import torch

    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main()
