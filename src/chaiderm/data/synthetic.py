"""A seeded synthetic dermoscopy generator: lesion images with exact masks, three diseases that
differ the way a dermatologist describes them, and non-expert similarity groups nested under each.

Disease cues (the signal an embedding must learn):
- melanoma: asymmetric, irregular notched border, several colours (dark brown, black, blue-grey,
  red), a blue-white veil, irregular peripheral dots;
- seborrheic keratosis: sharp "stuck-on" border, oval, waxy cerebriform texture, milia-like
  (white-yellow) cysts and comedo-like dark openings;
- nevus: symmetric, smooth border, one or two browns, a regular pigment network that fades out.

Group cues (what a non-expert sorts by, and what an untrained embedding sees first): lesion size
(small / large) and skin tone (pale / tan). Hair and lighting vary freely as nuisances, and at the
"standard" difficulty so do the dermoscope's contrast curve and colour cast.
Hierarchical groups are ``<disease>/<size>-<tone>``; disease-blind (joint) groups drop the prefix.
Every cue is drawn with a disease-dependent probability (``CUE_PROBABILITY``) and colours come
from one shared palette, so no single cue decides the label; 20% of cases also get an atypical
shape (a nevus with some asymmetry, a melanoma that is nearly round).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from chaiderm._io import atomic_dir

DISEASES = ("melanoma", "seborrheic_keratosis", "nevus")
SIZES = ("small", "large")
TONES = ("pale", "tan")
SKIN = {"pale": np.array([232.0, 196.0, 178.0]), "tan": np.array([186.0, 134.0, 100.0])}
DEFAULT_PROPORTIONS = (0.3, 0.3, 0.4)
BROWNS = [[120.0, 75.0, 45.0], [95, 55, 30], [150, 100, 65], [60, 38, 25]]
BLUE_GREY, RED = [100.0, 110.0, 140.0], [150.0, 65.0, 60.0]
# probability of each dermoscopic cue per disease (n_colours: P(1), P(2), P(3), P(4))
# "easy": cues far apart, learnable by a tiny CNN from a few hundred images (tests)
EASY_CUE_PROBABILITY = {
    "melanoma": dict(
        n_colours=[0.0, 0.1, 0.4, 0.5],
        blue_red=0.9,
        eccentric=0.9,
        network=0.3,
        irregular_network=0.9,
        cerebriform=0.05,
        milia=0.02,
        comedo=0.05,
        veil=0.7,
        peripheral_dots=0.8,
        edge=[0.1, 0.2, 0.7],
    ),
    "seborrheic_keratosis": dict(
        n_colours=[0.7, 0.3, 0.0, 0.0],
        blue_red=0.02,
        eccentric=0.2,
        network=0.05,
        irregular_network=0.2,
        cerebriform=0.9,
        milia=0.8,
        comedo=0.7,
        veil=0.0,
        peripheral_dots=0.05,
        edge=[0.9, 0.0, 0.1],
    ),
    "nevus": dict(
        n_colours=[0.7, 0.3, 0.0, 0.0],
        blue_red=0.02,
        eccentric=0.1,
        network=0.9,
        irregular_network=0.05,
        cerebriform=0.03,
        milia=0.03,
        comedo=0.03,
        veil=0.0,
        peripheral_dots=0.05,
        edge=[0.05, 0.9, 0.05],
    ),
}
# "standard": cues overlap more; an ImageNet embedding is no longer enough (the demo's default)
CUE_PROBABILITY = {
    "melanoma": dict(
        n_colours=[0.15, 0.35, 0.3, 0.2],
        blue_red=0.45,
        eccentric=0.7,
        network=0.45,
        irregular_network=0.7,
        cerebriform=0.15,
        milia=0.1,
        comedo=0.15,
        veil=0.3,
        peripheral_dots=0.5,
        edge=[0.2, 0.3, 0.5],
    ),
    "seborrheic_keratosis": dict(
        n_colours=[0.4, 0.4, 0.2, 0.0],
        blue_red=0.15,
        eccentric=0.35,
        network=0.15,
        irregular_network=0.35,
        cerebriform=0.65,
        milia=0.5,
        comedo=0.5,
        veil=0.08,
        peripheral_dots=0.15,
        edge=[0.6, 0.15, 0.25],
    ),
    "nevus": dict(
        n_colours=[0.4, 0.4, 0.2, 0.0],
        blue_red=0.15,
        eccentric=0.3,
        network=0.65,
        irregular_network=0.25,
        cerebriform=0.12,
        milia=0.12,
        comedo=0.12,
        veil=0.08,
        peripheral_dots=0.2,
        edge=[0.15, 0.6, 0.25],
    ),
}


@dataclass
class SyntheticCase:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool, exactly the lesion drawn
    diagnosis: str
    group: str  # hierarchical group, "<disease>/<size>-<tone>"
    blind_group: str  # disease-blind group, "<size>-<tone>"


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    a = np.asarray(img)
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-6)


def _radius(theta: np.ndarray, rng: np.random.Generator, asym: float, rough: float) -> np.ndarray:
    r = np.ones_like(theta)
    for k in (1, 2, 3):
        r += asym * rng.uniform(0.4, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    for k in rng.choice(np.arange(7, 25), size=5, replace=False):
        r += rough * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def _dots(canvas, rng, centres_mask, n, radius, colour, yy, xx, alpha=1.0):
    ys, xs = np.nonzero(centres_mask)
    if len(ys) == 0:
        return
    pick = rng.integers(0, len(ys), size=n)
    for y, x in zip(ys[pick], xs[pick], strict=True):
        rr = radius * rng.uniform(0.6, 1.4)
        d = (yy - y) ** 2 + (xx - x) ** 2
        m = np.clip(1.0 - d / (rr * rr), 0, 1)[..., None] * alpha
        canvas[:] = canvas * (1 - m) + np.asarray(colour, dtype=np.float32) * m


def _outline(rng: np.random.Generator, diagnosis: str, atypical: bool) -> tuple[float, float, float]:
    """Asymmetry, border roughness and aspect ratio of the lesion outline."""
    if diagnosis == "melanoma":
        return (0.04, 0.012, 0.9) if atypical else (rng.uniform(0.06, 0.14), 0.03, 0.85)
    if diagnosis == "seborrheic_keratosis":
        return rng.uniform(0.02, 0.06), 0.01, rng.uniform(0.65, 0.9)
    return (0.07, 0.02, 0.9) if atypical else (rng.uniform(0.0, 0.04), 0.006, 0.92)


def _pigment(rng: np.random.Generator, pr: dict, S: int, theta: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """The lesion's base brown and up to three extra colour blobs."""
    base = np.asarray(BROWNS[int(rng.integers(len(BROWNS)))]) * rng.uniform(0.8, 1.15) + rng.normal(0, 8, 3)
    lesion = np.ones((S, S, 3), np.float32) * base
    n_col = int(rng.choice([1, 2, 3, 4], p=pr["n_colours"]))
    if n_col > 1:
        extra = np.array(BROWNS + [BLUE_GREY, RED], dtype=np.float32)
        allow = len(BROWNS) + (2 if rng.random() < pr["blue_red"] else 0)
        cols = extra[rng.choice(allow, size=n_col - 1, replace=False)]
        for c in cols:
            blob = _smooth_noise(rng, S, 5)
            # melanoma colours sit off-centre (asymmetric); benign ones concentric
            shift = np.cos(theta - rng.uniform(0, 6.28)) if rng.random() < pr["eccentric"] else -rel
            w = np.clip((blob + 0.5 * shift - 0.45) * 4, 0, 1)[..., None]
            lesion = lesion * (1 - 0.8 * w) + c * 0.8 * w
    return lesion


def _texture(lesion, rng: np.random.Generator, pr: dict, S: int, yy, xx, rel: np.ndarray) -> np.ndarray:
    """Pigment network (regular or warped) and cerebriform waxy texture."""
    if rng.random() < pr["network"]:
        period = rng.uniform(5.0, 7.0) * S / 128
        irregular = rng.random() < pr["irregular_network"]
        warp = _smooth_noise(rng, S, 8) * (6.0 if irregular else 0.0)
        net = (np.sin((xx + warp) * 2 * np.pi / period) * np.sin((yy - warp) * 2 * np.pi / period)) ** 2
        lesion *= 1.0 - 0.35 * net[..., None] * np.clip(1.2 - rel, 0, 1)[..., None]
    if rng.random() < pr["cerebriform"]:
        cereb = np.sin(_smooth_noise(rng, S, 16) * rng.uniform(18, 26))
        lesion *= (1.0 + 0.16 * cereb)[..., None]
        lesion += rng.normal(0, 6, (S, S, 1))  # waxy grain
    return lesion


def _structures(lesion, rng: np.random.Generator, pr: dict, S: int, yy, xx, rel: np.ndarray, mask: np.ndarray):
    """Milia-like cysts, comedo-like openings, blue-white veil and peripheral dots, drawn in place."""
    inside = mask & (rel < 0.85)
    if rng.random() < pr["milia"]:
        _dots(lesion, rng, inside, int(rng.integers(3, 9)), S * 0.018, (245, 238, 200), yy, xx)
    if rng.random() < pr["comedo"]:
        _dots(lesion, rng, inside, int(rng.integers(3, 8)), S * 0.014, (45, 30, 20), yy, xx)
    if rng.random() < pr["veil"]:
        veil = (_smooth_noise(rng, S, 4) > 0.62) & mask
        lesion[veil] = lesion[veil] * 0.4 + np.array([165, 180, 205]) * 0.6
    if rng.random() < pr["peripheral_dots"]:
        _dots(lesion, rng, mask & (rel > 0.7), int(rng.integers(3, 9)), S * 0.012, (30, 20, 18), yy, xx)


def _edge_alpha(rng: np.random.Generator, pr: dict, rel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How the lesion blends into skin: sharp, soft or mixed border."""
    edge = {"sharp": 0.04, "soft": 0.35, "mixed": rng.uniform(0.05, 0.3)}[
        str(rng.choice(["sharp", "soft", "mixed"], p=pr["edge"]))
    ]
    alpha = np.clip((1.0 - rel) / edge, 0, 1) ** 0.8
    return alpha * mask


def _hair(img: np.ndarray, rng: np.random.Generator, S: int, yy, xx) -> None:
    """A few dark curved strands, drawn in place (not part of the mask)."""
    for _ in range(int(rng.integers(2, 7))):
        a, b = rng.uniform(-1, 1, 2)
        c = rng.uniform(0, S)
        curve = a * 0.004 * (xx - S / 2) ** 2 / max(S / 128, 1) + b * (xx - S / 2) + c
        strand = np.abs(yy - curve) < rng.uniform(0.5, 1.2) * S / 128
        if rng.random() < 0.5:
            strand = strand.T
        img[strand] = img[strand] * 0.3 + np.array([40, 30, 25]) * 0.7


def _acquisition(img: np.ndarray, rng: np.random.Generator, S: int, yy, xx, difficulty: str) -> np.ndarray:
    """Nuisances of taking the picture: hair, vignette, exposure, white balance, noise, dermoscope."""
    if rng.random() < 0.5:
        _hair(img, rng, S, yy, xx)
    if rng.random() < 0.5:  # uneven lighting: dermoscope vignette
        v = 1.0 - rng.uniform(0.15, 0.35) * (np.hypot(yy - S / 2, xx - S / 2) / (S / 1.4)) ** 2
        img *= v[..., None]
    img *= rng.uniform(0.85, 1.1) * (1 + rng.normal(0, 0.04, 3))  # exposure and white balance
    img += rng.normal(0, 3, img.shape)
    if difficulty == "standard":
        # acquisition differences between dermoscopes (contrast curve, colour cast): they dominate generic
        # image features without saying anything about the disease, so an embedding must learn to ignore them
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.65, 1.5)
        img *= 1 + rng.normal(0, 0.1, 3)
    return img


def make_case(seed: int, index: int, diagnosis: str, size: int = 128, difficulty: str = "standard") -> SyntheticCase:
    """Draw one case. The same (seed, index, diagnosis, size) always gives the same pixels.

    The random draws happen in a fixed order (helpers below are called in sequence on one generator),
    so reordering any of them changes every image for a given seed."""
    if diagnosis not in DISEASES:
        raise ValueError(f"unknown synthetic diagnosis '{diagnosis}'")
    if difficulty not in ("easy", "standard"):
        raise ValueError(f"unknown difficulty '{difficulty}' (use 'easy' or 'standard')")
    rng = np.random.default_rng([seed, index, DISEASES.index(diagnosis)])
    S = size
    lesion_size = SIZES[int(rng.integers(2))]
    tone = TONES[int(rng.integers(2))]
    atypical = rng.random() < 0.2

    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    skin = SKIN[tone] + rng.normal(0, 6, 3)
    img = np.ones((S, S, 3), np.float32) * skin
    img += (_smooth_noise(rng, S, 6)[..., None] - 0.5) * 18  # skin mottling

    R = S * (rng.uniform(0.15, 0.21) if lesion_size == "small" else rng.uniform(0.29, 0.37))
    cy, cx = S / 2 + rng.normal(0, S * 0.03, 2)
    rot = rng.uniform(0, 2 * np.pi)
    theta = np.arctan2(yy - cy, xx - cx) - rot
    dist = np.hypot(yy - cy, xx - cx)

    asym, rough, aspect = _outline(rng, diagnosis, atypical)
    # ellipse: stretch along the rotated x axis
    ell = 1.0 / np.sqrt(np.cos(theta) ** 2 + (np.sin(theta) / aspect) ** 2)
    boundary = R * ell * _radius(theta, rng, asym, rough)
    rel = dist / boundary  # < 1 inside the lesion
    mask = rel < 1.0

    # Each cue is drawn with a disease-dependent probability, so no single cue decides the label
    # and colour statistics overlap between diseases (what makes the task need training).
    pr = (EASY_CUE_PROBABILITY if difficulty == "easy" else CUE_PROBABILITY)[diagnosis]
    lesion = _texture(_pigment(rng, pr, S, theta, rel), rng, pr, S, yy, xx, rel)
    _structures(lesion, rng, pr, S, yy, xx, rel, mask)
    alpha = _edge_alpha(rng, pr, rel, mask)
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]
    img = _acquisition(img, rng, S, yy, xx, difficulty)
    group_blind = f"{lesion_size}-{tone}"
    return SyntheticCase(
        image=np.clip(img, 0, 255).astype(np.uint8),
        mask=mask,
        diagnosis=diagnosis,
        group=f"{diagnosis}/{group_blind}",
        blind_group=group_blind,
    )


def diagnoses_for(n: int, seed: int, proportions=DEFAULT_PROPORTIONS) -> list[str]:
    """A seeded, shuffled list of diagnoses with the given class proportions."""
    counts = np.floor(np.asarray(proportions) * n).astype(int)
    counts[-1] += n - counts.sum()
    labels = [d for d, c in zip(DISEASES, counts, strict=True) for _ in range(c)]
    rng = np.random.default_rng([seed, 7919])
    return [labels[i] for i in rng.permutation(n)]


def generate(
    n: int,
    *,
    size: int = 128,
    seed: int = 0,
    start: int = 0,
    proportions=DEFAULT_PROPORTIONS,
    difficulty: str = "standard",
):
    """Yield ``n`` cases; ``start`` offsets the case index so splits never share a case."""
    for i, d in enumerate(diagnoses_for(n, seed + start, proportions)):
        yield make_case(seed, start + i, d, size, difficulty)


SYNTHETIC_MARKER = "synthetic.json"


def write_dataset(
    out: str | Path,
    *,
    splits: dict[str, int] | None = None,
    size: int = 128,
    seed: int = 0,
    difficulty: str = "standard",
    progress=None,
) -> Path:
    """Write the synthetic set in the generic layout, one sub-folder per split:
    ``<split>/images/*.png``, ``<split>/masks/*_segmentation.png``, ``<split>/labels.csv``
    (``image_id,diagnosis,group``) and ``<split>/groups_blind.csv`` (``image_id,group``)."""
    splits = splits or {"train": 300, "val": 90, "test": 120}
    out = Path(out)
    with atomic_dir(out) as tmp:
        start = 0
        for split, n in splits.items():
            d = tmp / split
            (d / "images").mkdir(parents=True)
            (d / "masks").mkdir()
            rows, blind = [], []
            for j, case in enumerate(generate(n, size=size, seed=seed, start=start, difficulty=difficulty)):
                iid = f"SYN_{split}_{j:05d}"
                Image.fromarray(case.image).save(d / "images" / f"{iid}.png", compress_level=1)
                Image.fromarray(case.mask.astype(np.uint8) * 255).save(
                    d / "masks" / f"{iid}_segmentation.png", compress_level=1
                )
                rows.append((iid, case.diagnosis, case.group))
                blind.append((iid, case.blind_group))
                if progress is not None:
                    progress()
            start += n
            _write_csv(d / "labels.csv", ("image_id", "diagnosis", "group"), rows)
            _write_csv(d / "groups_blind.csv", ("image_id", "group"), blind)
            # marks the folder as generated, so indexes and the viewer can say it is not real patients
            (d / SYNTHETIC_MARKER).write_text(
                json.dumps({"generator": "chaiderm.data.synthetic", "seed": seed, "difficulty": difficulty})
            )
    return out


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
