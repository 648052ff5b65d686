"""Choose the near-duplicate rule of `archive add` / `POST /api/archive` (pipeline.NEAR_DUPLICATE) on the
synthetic set and the tiny test model, untrained (two seeds) and trained for a few epochs.

A new case is a copy of an archive case when its squared embedding distance to its nearest archive case is
below a fraction of the archive's own typical nearest-neighbour distance (the median over archive cases of
the distance to their nearest *other* case): a fraction, not a fixed distance, because raw embeddings have
no fixed scale (one model's copies are as far apart as another model's distinct lesions). For each of 60
archive images, copies as an operator could add them again: the API's own path (decoded shrunk, PNG), JPEG
at quality 95 and 75, scaled 2x up, scaled to half and back; their distance to the original, and every
archive image's nearest other image, both as a fraction of that median. Writes
research/duplicates/archive_near_duplicates.json (about 30 s on 2 cores).

    python -m research.duplicates.archive_near_duplicates
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import chaiderm  # noqa: F401  (sets the OpenMP spin limit before torch loads)
from chaiderm.data.images import load_image
from chaiderm.data.records import load_table
from chaiderm.data.synthetic import write_dataset
from chaiderm.data.transforms import prepare, resize_square
from chaiderm.evidence.render import to_png_bytes
from chaiderm.models import build_model
from chaiderm.models.inference import embed
from chaiderm.training import train
from research._common import tiny_config

N_COPIES = 60


def copies(path: str, load: int) -> dict[str, np.ndarray]:
    raw = Path(path).read_bytes()
    pil = Image.open(io.BytesIO(raw)).convert("RGB")

    def jpeg(q: int) -> Image.Image:
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    w, h = pil.size
    made = {
        "api_png": load_image(to_png_bytes(load_image(raw, fit=load)), "copy"),
        "jpeg95": jpeg(95),
        "jpeg75": jpeg(75),
        "up2x": pil.resize((2 * w, 2 * h), Image.BICUBIC),
        "half_and_back": pil.resize((w // 2, h // 2), Image.BICUBIC).resize((w, h), Image.BICUBIC),
    }
    return {k: resize_square(np.asarray(v), load) for k, v in made.items()}


def measure(model, cfg, table) -> dict:
    load, size = cfg.model.load_size, cfg.model.image_size
    images, _, _ = prepare(table.paths, load)
    emb, _ = embed(model.eval(), images, size)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.min(1)
    scale = float(np.median(nearest))
    out = {"median_nearest": scale, "distinct_nearest_over_median": _q(nearest / scale)}
    kinds: dict[str, list[float]] = {}
    for i in range(N_COPIES):
        made = copies(table.paths[i], load)
        e, _ = embed(model, np.stack(list(made.values())), size)
        for name, row in zip(made, e, strict=True):
            kinds.setdefault(name, []).append(float(((row - emb[i]) ** 2).sum()) / scale)
    out["copies_over_median"] = {k: _q(np.array(v)) for k, v in kinds.items()}
    out["share_caught"] = {
        str(t): {k: float(np.mean(np.array(v) <= t)) for k, v in kinds.items()}
        | {"distinct": float(np.mean(nearest / scale <= t))}
        for t in (0.05, 0.1, 0.2)
    }
    return out


def _q(x: np.ndarray) -> dict[str, float]:
    return {q: float(np.quantile(x, p)) for q, p in (("min", 0), ("p1", 0.01), ("median", 0.5), ("p99", 0.99))} | {
        "max": float(x.max())
    }


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        syn = Path(tmp) / "syn"
        write_dataset(syn, splits={"train": 240, "val": 60, "test": 0}, size=72, seed=0, difficulty="easy")
        table = load_table(syn, "train")
        cfg = tiny_config()
        results = {}
        for seed in (0, 1):
            torch.manual_seed(seed)
            results[f"untrained_seed{seed}"] = measure(build_model(cfg.model), cfg, table)
        torch.manual_seed(0)
        trained = tiny_config(epochs=4)
        train(trained, table, Path(tmp) / "run")
        from chaiderm.models import load_model

        model, cfg = load_model(Path(tmp) / "run")
        results["trained_4_epochs"] = measure(model, cfg, table)
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
