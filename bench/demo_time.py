"""`chaiderm demo` of an earlier revision against this working tree, one after the other on this machine.

The earlier revision is exported with `git archive` into a temporary folder and run from there with the
same Python (so the same packages); each demo writes into its own temporary folder. The figures are the
wall time of each whole command and the AUC@10 / REL@10 each demo reports, so a faster demo that teaches
less is seen as such.

    python bench/demo_time.py [--before 533f00d] [--out bench/demo_time.json]

Run it on an otherwise idle machine: two CPU-bound jobs at once on 2 cores measure each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, folder: Path) -> Path:
    """The tree of ``rev`` (its src/ is what runs)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True)
    folder.mkdir(parents=True)
    tar = folder / "src.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(folder, filter="data")
    return folder / "src"


def run_demo(src: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "chaiderm.cli", "demo", "--out", str(out)], env=env,
                       capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"demo from {src} failed:\n{r.stderr[-2000:]}")
    summary = json.loads((out / "demo.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "seconds": {k: round(v, 1) for k, v in summary["seconds"].items()},
        "settings": {k: summary["settings"].get(k) for k in ("n_train", "epochs", "hierarchical_epochs", "size")},
        "auc10": {name: round(m["auc"]["10"], 3) for name, m in summary["metrics"].items()},
        "rel10": {name: round(m["rel"]["10"], 2) for name, m in summary["metrics"].items() if m.get("rel")},
        "last_screen_lines": len(r.stdout.strip().splitlines()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="533f00d", help="the revision to compare against")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "demo_time.json")
    args = ap.parse_args()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = run_demo(export(args.before, tmp / "before"), tmp / "demo_before")
        print(f"{args.before}: {before['wall_s']} s", flush=True)
        after = run_demo(ROOT / "src", tmp / "demo_after")
        print(f"this tree: {after['wall_s']} s", flush=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "chaiderm demo --out TMP",
        "before": {"rev": args.before, **before},
        "after": {"rev": f"{head.stdout.strip()} (working tree)", **after},
        "ratio": round(after["wall_s"] / before["wall_s"], 3),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"after / before = {result['ratio']}; written to {args.out}")


if __name__ == "__main__":
    main()
