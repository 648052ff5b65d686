"""What growing an archive costs: adding 1,000 cases to a 100,000-case index, against rebuilding it.

The 100,000 archive embeddings are synthetic (1024-d, as the model makes; no evidence maps stored), since
what is measured is the index's own work: `ArchiveIndex.add` / `remove` plus the atomic save, for the
exact (flat) and the approximate (ivf) kinds. Embedding the 1,000 new images is the other part of an add;
it is measured on real model inference (EfficientNet-Lite0 at 224) on 64 synthetic images and scaled.
Writes bench/archive_edit.json:  python bench/archive_edit.py
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import chaiderm  # noqa: F401  (sets the OpenMP spin limit before torch loads)
from chaiderm.config import ModelConfig
from chaiderm.index.archive import ArchiveIndex
from chaiderm.index.filters import parse_where
from chaiderm.models.embedding import build_model
from chaiderm.models.inference import embed


def columns(n: int, start: int = 0) -> dict:
    return dict(
        image_ids=[f"c{i}" for i in range(start, start + n)],
        diagnoses=["nevus"] * n,
        groups=[None] * n,
        paths=[f"/archive/c{i}.jpg" for i in range(start, start + n)],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--add", type=int, default=1_000)
    ap.add_argument("--out", type=Path, default=Path("bench/archive_edit.json"))
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    base = rng.normal(size=(a.n, 1024)).astype(np.float32)
    new = rng.normal(size=(a.add, 1024)).astype(np.float32)
    res: dict = {"n": a.n, "added": a.add, "machine": f"{platform.machine()}, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "ivf"):
            ix_dir = Path(tmp) / kind
            t = time.perf_counter()
            ix = ArchiveIndex.build(base, kind=kind, **columns(a.n))
            ix.save(ix_dir)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            grown = ArchiveIndex.load(ix_dir).add(new, **columns(a.add, a.n))
            add_s = time.perf_counter() - t
            t = time.perf_counter()
            grown.save(ix_dir)
            save_s = time.perf_counter() - t
            t = time.perf_counter()
            ArchiveIndex.load(ix_dir).remove([f"c{i}" for i in range(0, a.n, 100)]).save(ix_dir)
            remove_s = time.perf_counter() - t
            res[kind] = {
                "build_and_save_s": round(build_s, 2),
                "add_s": round(add_s, 2),
                "save_after_add_s": round(save_s, 2),
                "remove_1000_and_save_s": round(remove_s, 2),
            }
            print(kind, json.dumps(res[kind]), flush=True)
    # filtered search: the exact k = 10 nearest among the cases that pass, parse and mask included
    sexes = rng.choice(["female", "male"], a.n)
    ages = rng.integers(5, 90, a.n)
    meta = [{"sex": str(s_), "age": str(int(g))} for s_, g in zip(sexes, ages, strict=True)]
    diags = ["nevus"] * a.n
    ix = ArchiveIndex.build(base, **columns(a.n))
    q = rng.normal(size=(20, 1024)).astype(np.float32)
    res["filtered_search"] = {}
    for where in ("sex = female and age >= 50", "sex = male and age < 20"):
        times = []
        for row in q:
            t = time.perf_counter()
            rows = np.flatnonzero(parse_where(where, diags, meta).mask(diags, meta))
            ix.search_among(row[None], 10, rows)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for row in q:
            ix.search(row[None], 10)
        plain = (time.perf_counter() - t) / len(q)
        res["filtered_search"][where] = {
            "passing": int(len(rows)),
            "median_ms": round(1000 * float(np.median(times)), 1),
            "unfiltered_ms": round(1000 * plain, 1),
        }
    print(json.dumps(res["filtered_search"]), flush=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    imgs = rng.integers(0, 255, (64, 256, 256, 3), dtype=np.uint8)
    embed(model, imgs[:8], 224, with_maps=True)  # warm-up
    t = time.perf_counter()
    embed(model, imgs, 224, with_maps=True)
    per_image = (time.perf_counter() - t) / len(imgs)
    res["embed_1000_images_s"] = round(per_image * a.add, 1)
    res["embed_whole_archive_s"] = round(per_image * (a.n + a.add), 1)
    print(json.dumps(res, indent=2))
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
