"""What the localisation metrics allow: the scores of a perfect map at each map resolution, and of
centred Gaussians of several widths, on the ham10000_dev masks (the reproduction's protocol: mask as the
network sees it, bilinear upsampling, Jaccard at 0.5 of the map's range, share of mass inside the mask).

    python -m research.maps.map_ceiling --masks-data DATA/ham10000_dev
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from chaiderm.data.records import read_folder
from chaiderm.data.transforms import mask_as_seen
from chaiderm.evaluation.metrics import calculate_jaccard, calculate_mass_in_mask, centred_gaussian


def pooled(mask: np.ndarray, cells: int) -> np.ndarray:
    """The mask averaged onto a ``cells`` x ``cells`` grid: the best map of that resolution can do."""
    return np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((cells, cells), Image.BOX))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks-data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    a = ap.parse_args()
    masks = np.stack([mask_as_seen(m, 256, 224) for m in read_folder(a.masks_data).mask_paths])
    area = masks.mean((1, 2))
    out: dict = {
        "n": len(masks),
        "lesion_area_fraction": {"mean": float(area.mean()), "median": float(np.median(area))},
        "perfect_map": {},
        "centred_gaussian": {},
    }
    for cells in (4, 7, 14, 28):
        maps = [pooled(m, cells) for m in masks]
        out["perfect_map"][f"{cells}x{cells}"] = {
            "ja": float(np.mean([calculate_jaccard(p, m) for p, m in zip(maps, masks, strict=True)])),
            "mass": float(np.mean([calculate_mass_in_mask(p, m) for p, m in zip(maps, masks, strict=True)])),
        }
    for frac in (0.15, 0.2, 0.25, 0.3):
        g = centred_gaussian((224, 224), frac)
        out["centred_gaussian"][f"sigma {frac}"] = {
            "ja": float(np.mean([calculate_jaccard(g, m) for m in masks])),
            "mass": float(np.mean([calculate_mass_in_mask(g, m) for m in masks])),
        }
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
