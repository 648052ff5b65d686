"""Does chaiderm know what it does not know? Novelty, abstention, calibration and prediction sets, measured.

    python bench/uncertainty.py --model RUN --index INDEX [--isic DIR --ham DIR --out bench/uncertainty.json]

INDEX is ``chaiderm index --model RUN --data ISIC --split train`` (the ISIC 2017 training archive). Writes
``bench/uncertainty.json`` and a reliability diagram PNG under ``bench/out/`` (git-ignored). Needs the ISIC 2017
and ham10000_dev folders; the >= 200 non-dermoscopic images are made here at run time, never stored.

What is measured (issue 31), every interval a 95% percentile bootstrap (1000 resamples, seed 0):

- novelty of "diagnosis absent from the archive" (ham10000_dev's bcc, akiec, vasc, df) against "present"
  (mel, nv, bkl): AUROC and FPR at 95% TPR, for every candidate score, the plain k-th neighbour distance
  (``kth``) being the baseline;
- non-dermoscopic images (photos and crops of them, rendered elevation and MRI arrays, lesion masks, flat,
  gradient, checker and noise frames, rendered text, the synthetic generator's lesions) against the ISIC 2017
  test split: AUROC, and the share flagged at the index's threshold; the ISIC 2017 test split's false-alarm
  rate at that threshold against the rate the threshold states;
- calibration on the ISIC 2017 test split: ECE of the index's calibrated melanoma probability against the raw
  vote share, reliability bins of both;
- conformal prediction sets calibrated on the ISIC 2017 validation split: coverage and mean set size at 80,
  90 and 95% on the test split, and on ham10000_dev's known classes (its benign_keratosis counted as the
  archive's seborrheic_keratosis), flagged and not flagged apart.

Rule for choosing the novelty score, written before any of these figures was seen (also in
research/uncertainty/README.md and in the JSON as ``rule``; second version, written before the second
recommended model was trained, adds cosine and maha to the candidates and sets the threshold on held-out
training images):

  Candidates: kth (k-th neighbour squared distance, k=10), mean (mean of the 10), mean+image (the larger of
  mean's percentile and the image statistics' percentile, ``index.novelty``), cosine (kth on L2-normalised
  embeddings, Sun et al. 2022), maha (the smallest class-conditional Mahalanobis distance, one covariance
  shared by the classes with Ledoit-Wolf shrinkage, in the archive's first 128 principal components; Lee et
  al. 2018), and members (disagreement of the ensemble members' own 10-neighbour votes: the mean
  total-variation distance of each member's class shares from their average). Only tuning data is used: (a)
  ``tune_nonderm_auc``: AUROC of the TUNE half of the non-dermoscopic images (seed 1; the EVAL half, seed 2,
  is only reported) against the archive's own leave-one-out scores; (b) ``proxy_absent_auc``:
  leave-one-class-out on the archive, each of its classes in turn taken out and its cases scored against
  the rest, against the rest's own leave-one-out scores, the mean AUROC over classes. Among kth, mean,
  mean+image, cosine and maha (members is measured for the record) those with tune_nonderm_auc >= 0.99 are
  eligible (none: all are); of those, the highest proxy_absent_auc wins, and a candidate within 0.005 of the
  best is preferred in the order kth, mean, cosine, mean+image, maha (simpler first). The product offers
  kth, mean and mean+image: if cosine or maha wins, the JSON says so and the best of the product's three
  stays the index's default until it is built in.

  Third version (written after the second's results and before this run): one more candidate, msp (1 - the
  largest vote share among the 10 nearest, weighed as the model votes: the maximum-softmax-probability
  baseline of Hendrycks & Gimpel 2017, which often does better than distances on diagnoses never seen); the
  order of preference becomes kth, mean, msp, cosine, mean+image, maha; the rest of the rule is unchanged.

  Fourth version (written after the third's results and before this run): one more candidate, imagenet (the
  10th-neighbour squared distance among the ImageNet-pretrained Lite0's own pooled features, not fine-tuned:
  an embedding trained on three diagnoses may have dropped what tells a fourth apart); order kth, mean,
  msp, cosine, imagenet, mean+image, maha.

  The threshold is the index's: with a model trained with ``--holdout`` (the recommended recipe holds out a
  tenth of the training split), set on those held-out archive cases so that at most 5% of new images like
  them are flagged (``index.uncertainty.held_out_threshold``); otherwise the archive's own 95th percentile.
  The calibrator is fitted on the archive's leave-one-out votes (never the test or validation split). The
  conformal sets are smoothed (a tie-break per query and class from a hash of its embedding) and calibrated
  on the validation split, which nothing else chose from when the model was trained with ``--holdout``
  (the JSON says which); a check on the test split halved at random, one half calibrating, the other
  covered, 200 times, is reported beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_auc_score

import chaiderm  # noqa: F401  (sets the OpenMP spin limit before torch loads)
from chaiderm._io import write_json
from chaiderm.data.image_stats import image_statistics
from chaiderm.data.images import load_image
from chaiderm.data.records import load_table
from chaiderm.evaluation.calibration import ece, ece_interval, reliability
from chaiderm.evaluation.conformal import LEVELS, Conformal, nonconformity, tiebreaks
from chaiderm.evaluation.metrics import bootstrap_auc_ci
from chaiderm.index import novelty as nv
from chaiderm.index.knn import vote_weights
from chaiderm.index.uncertainty import excluded_sets, set_key
from chaiderm.models.inference import embed
from chaiderm.pipeline import Predictor

RULE = __doc__.split("Rule for choosing the novelty score, written before any of these figures was seen")[1].strip()
K = nv.REFERENCE_K
ABSENT = ("basal_cell_carcinoma", "actinic_keratosis", "vascular_lesion", "dermatofibroma")
KNOWN_MAP = {"melanoma": "melanoma", "nevus": "nevus", "benign_keratosis": "seborrheic_keratosis"}
PRODUCT = ("kth", "mean", "mean+image")
RULED = ("kth", "mean", "msp", "cosine", "imagenet", "mean+image", "maha")  # the rule's candidates, simpler first
SIMPLER = {c: i for i, c in enumerate(RULED)}
MAHA_DIMS = 128
N_BOOT = 1000


# ---- non-dermoscopic images --------------------------------------------------------------------------------
def _sources() -> list[np.ndarray]:
    """Every sample picture matplotlib and scikit-learn ship, as RGB uint8."""
    import matplotlib
    from matplotlib import colormaps
    from sklearn.datasets import load_sample_images

    out = [np.asarray(im, np.uint8) for im in load_sample_images().images]
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        out.append(np.asarray(Image.open(sample / name).convert("RGB")))
    for name, key, cmap in (("topobathy.npz", "topo", "terrain"), ("jacksboro_fault_dem.npz", "elevation", "gray")):
        arr = np.load(sample / name)[key].astype(np.float64)
        arr = (arr - arr.min()) / max(np.ptp(arr), 1e-9)
        out.append((colormaps[cmap](arr)[..., :3] * 255).astype(np.uint8))
    with gzip.open(sample / "s1045.ima.gz") as fh:  # a 256x256 MRI slice, 16-bit
        mri = np.frombuffer(fh.read(), np.uint16).reshape(256, 256).astype(np.float64)
    mri = (255 * mri / mri.max()).astype(np.uint8)
    out.append(np.stack([mri] * 3, -1))
    return out


def _crop(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return img[y : y + side, x : x + side]


def _text(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    words = ["patient", "dermoscopy", "report", "lesion", "2026", "scan", "invoice", "hello", "chaiderm", "skin"]
    for line in range(int(rng.integers(4, 18))):
        fg = tuple(int(255 - v) for v in bg) if rng.random() < 0.7 else tuple(int(v) for v in rng.integers(0, 256, 3))
        text = " ".join(rng.choice(words, int(rng.integers(2, 6))))
        draw.text((int(rng.integers(0, 40)), 8 + line * 14), text, fill=fg, font=font)
    return np.asarray(img)


def non_dermoscopic(seed: int, masks: list[Path]) -> tuple[list[np.ndarray], list[str]]:
    """150 images that are not dermoscopic photographs, of 9 kinds, drawn with ``seed``."""
    from chaiderm.data.synthetic import DISEASES, make_case

    rng = np.random.default_rng(seed)
    src = _sources()
    images: list[np.ndarray] = []
    kinds: list[str] = []

    def add(kind: str, img: np.ndarray) -> None:
        images.append(np.ascontiguousarray(img, np.uint8))
        kinds.append(kind)

    for i in range(24):
        add("photo" if i < len(src) else "photo_crop", src[i] if i < len(src) else _crop(rng, src[i % len(src)]))
    for p in rng.choice(masks, 18, replace=False):
        add("lesion_mask", np.stack([np.asarray(Image.open(p).convert("L"))] * 3, -1))
    for _ in range(16):
        add("flat", np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (256, 256, 3)))
    add("flat", np.full((256, 256, 3), 128, np.uint8))  # the grey frame
    for _ in range(15):
        a, b = rng.integers(0, 256, (2, 3))
        t = np.linspace(0, 1, 256)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, 256)[None, :, None]
        add("gradient", np.broadcast_to(a + (b - a) * t, (256, 256, 3)))
    for _ in range(12):
        cell = int(rng.integers(8, 64))
        yy, xx = np.mgrid[:256, :256]
        board = ((yy // cell + xx // cell) % 2).astype(bool)
        a, b = rng.integers(0, 256, (2, 3))
        add("checker", np.where(board[..., None], a, b))
    for n in range(20):
        noise = rng.normal(128, rng.uniform(10, 80), (256, 256, 3 if n % 2 else 1))
        add("noise", np.clip(np.broadcast_to(noise, (256, 256, 3)), 0, 255))
    for _ in range(20):
        add("text", _text(rng))
    for n in range(24):
        case = make_case(seed * 1000 + n, n, DISEASES[n % 3], size=256, difficulty="standard")
        add("synthetic_lesion", case.image)
    return images, kinds


# ---- embeddings and distances ------------------------------------------------------------------------------
_IMAGENET: list = []


def imagenet_features(squares: np.ndarray, image_size: int) -> np.ndarray:
    """The ImageNet-pretrained EfficientNet-Lite0's own pooled features (not fine-tuned) of centre crops."""
    import torch

    from chaiderm.data.transforms import center_crop, to_tensor
    from chaiderm.models.registry import create_backbone

    if not _IMAGENET:
        _IMAGENET.append(create_backbone("efficientnet_lite0", pretrained=True).eval())
    bb = _IMAGENET[0]
    with torch.inference_mode():
        return bb(to_tensor(center_crop(squares, image_size), bb.mean, bb.std)).mean((2, 3)).numpy()


def embed_images(pred: Predictor, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (with the index's views), image statistics and ImageNet features of decoded images, as a
    query gets them."""
    embs, stats, inet = [], [], []
    for s in range(0, len(images), 32):
        squares = np.stack([pred.square(im) for im in images[s : s + 32]])
        e, _ = embed(pred.model, squares, pred.cfg.model.image_size, views=pred.views)
        embs.append(e)
        stats.append(image_statistics(squares))
        inet.append(imagenet_features(squares, pred.cfg.model.image_size))
    return np.concatenate(embs), np.concatenate(stats), np.concatenate(inet)


def load_split(pred: Predictor, data: Path, split: str | None):
    table = load_table(data, split)
    images = [load_image(p, fit=pred.cfg.model.load_size) for p in table.paths]
    e, s, f = embed_images(pred, images)
    return table, e, s, f


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sqdist(q: np.ndarray, a: np.ndarray) -> np.ndarray:
    q64, a64 = np.asarray(q, np.float64), np.asarray(a, np.float64)
    return ((q64 * q64).sum(1)[:, None] - 2 * q64 @ a64.T + (a64 * a64).sum(1)[None]).clip(min=0)


def nearest(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending k smallest of each row of a distance matrix (inf where excluded) and their columns."""
    idx = np.argpartition(d, k - 1, axis=1)[:, :k]
    dd = np.take_along_axis(d, idx, 1)
    order = np.argsort(dd, axis=1, kind="stable")
    return np.take_along_axis(dd, order, 1), np.take_along_axis(idx, order, 1)


class Archive:
    """The archive's embeddings, image statistics, diagnoses and per-member slices, for scoring queries
    against all of it or part of it (``cols``)."""

    def __init__(self, pred: Predictor):
        ix = pred.index
        self.emb = np.asarray(ix.embeddings, np.float32)
        self.u = ix.uncertainty
        # fitted here as the index fits it for mean+image (whatever method the index itself uses)
        self.scale = nv.StatScale.fit(ix.image_stats) if ix.image_stats is not None else None
        self.z = self.scale.apply(ix.image_stats) if self.scale is not None else None
        self.diag = np.asarray(ix.diagnoses)
        self.classes = sorted(set(ix.diagnoses))
        self.vote = pred.vote
        members = getattr(pred.model, "members", None)
        dims = [int(m.dim) for m in members] if members is not None else [self.emb.shape[1]]
        self.slices = list(zip(np.cumsum([0, *dims[:-1]]), np.cumsum(dims), strict=True))
        self.excluded = excluded_sets(ix.metadata, np.arange(len(ix)))
        self._maha: dict[bytes, object] = {}
        self.inet: np.ndarray | None = None  # the archive's ImageNet features, in its row order (main sets it)

    def features(
        self, q_emb: np.ndarray, q_z: np.ndarray | None, cols: np.ndarray, self_rows=None, q_inet=None
    ) -> dict:
        """Raw candidate features of queries against archive columns ``cols`` (bool); ``self_rows``: the
        archive row each query is (leave-one-out), excluded with its lesion."""

        def mask(d: np.ndarray) -> np.ndarray:
            d = np.where(cols[None], d, np.inf)
            if self_rows is not None:
                for r, row in enumerate(self_rows):
                    d[r, list(self.excluded[row])] = np.inf
            return d

        dist, idx = nearest(mask(sqdist(q_emb, self.emb)), K)
        out = {"kth": dist[:, -1], "mean": dist.mean(1), "dist": dist, "idx": idx}
        out["cosine"] = nearest(mask(sqdist(unit(q_emb), unit(self.emb))), K)[0][:, -1]
        out["maha"] = self.mahalanobis(cols)(q_emb)
        out["msp"] = 1.0 - self.shares(dist, idx).max(1)
        if q_inet is not None and self.inet is not None:
            out["imagenet"] = nearest(mask(sqdist(q_inet, self.inet)), K)[0][:, -1]
        if q_z is not None and self.z is not None:
            out["img"] = nearest(mask(sqdist(q_z, self.z)), nv.IMAGE_K)[0].mean(1)
        shares = []
        for lo, hi in self.slices:
            d, i = nearest(mask(sqdist(q_emb[:, lo:hi], self.emb[:, lo:hi])), K)
            shares.append(self.shares(d, i))
        avg = np.mean(shares, axis=0)
        out["members"] = np.mean([0.5 * np.abs(s - avg).sum(1) for s in shares], axis=0)
        return out

    def mahalanobis(self, cols: np.ndarray):
        """Lee et al. 2018's score fitted on archive columns ``cols``: the smallest squared Mahalanobis
        distance to a class mean, one shrunk covariance for all classes, in the first MAHA_DIMS principal
        components. Fitted with the case itself in (no leave-one-out: one case of thousands moves it little)."""
        key = cols.tobytes()
        if key not in self._maha:
            from sklearn.covariance import LedoitWolf
            from sklearn.decomposition import PCA

            a, lab = self.emb[cols], self.diag[cols]
            pca = PCA(n_components=min(MAHA_DIMS, len(a) - 1), random_state=0).fit(a)
            z = pca.transform(a)
            classes = sorted(set(lab))
            means = np.stack([z[lab == c].mean(0) for c in classes])
            centred = np.concatenate([z[lab == c] - means[i] for i, c in enumerate(classes)])
            prec = LedoitWolf().fit(centred).precision_

            def score(q: np.ndarray) -> np.ndarray:
                zq = pca.transform(np.asarray(q, np.float64))
                d = [np.einsum("ij,jk,ik->i", zq - m, prec, zq - m) for m in means]
                return np.min(d, axis=0)

            self._maha[key] = score
        return self._maha[key]

    def shares(self, dist: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Vote shares (the model's vote weighting), columns in ``classes`` order."""
        w = vote_weights(dist, self.vote)
        lab = self.diag[idx]
        out = np.stack([(w * (lab == c)).sum(1) for c in self.classes], 1)
        return out / w.sum(1, keepdims=True)


def scores(feat: dict, ref: dict) -> dict[str, np.ndarray]:
    """Each candidate's score of queries ``feat`` as a percentile of the reference ``ref`` (archive
    leave-one-out features over the same columns): the percentile the product shows."""
    out = {}
    for c in ("kth", "mean", "msp", "cosine", "maha", "members", "imagenet"):
        if c in feat and c in ref:
            out[c] = nv.percentile(np.sort(ref[c]), feat[c])
    if "img" in feat and "img" in ref:
        emb_ref, img_ref = np.sort(ref["mean"]), np.sort(ref["img"])
        final = np.sort(nv.combine(nv.percentile(emb_ref, ref["mean"]), nv.percentile(img_ref, ref["img"])))
        out["mean+image"] = nv.percentile(
            final, nv.combine(nv.percentile(emb_ref, feat["mean"]), nv.percentile(img_ref, feat["img"]))
        )
    return out


# ---- statistics ----------------------------------------------------------------------------------------
def by_rule(candidates: list[str], tune_auc: dict, proxy_auc: dict) -> str:
    """The rule's choice among ``candidates``."""
    eligible = [c for c in candidates if tune_auc[c] >= 0.99] or candidates
    best = max(proxy_auc[c] for c in eligible)
    return min((c for c in eligible if proxy_auc[c] >= best - 0.005), key=SIMPLER.__getitem__)


def fpr_at_tpr(y: np.ndarray, s: np.ndarray, tpr: float = 0.95) -> float:
    pos = np.sort(s[y])
    cut = pos[int(np.floor((1 - tpr) * len(pos)))]  # flags at least tpr of the positives
    return float((s[~y] >= cut).mean())


def separation(y: np.ndarray, s: np.ndarray, seed: int = 0) -> dict:
    y = np.asarray(y, bool)
    s = np.asarray(s, np.float64)
    rng = np.random.default_rng(seed)
    fprs = []
    for _ in range(N_BOOT):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        fprs.append(fpr_at_tpr(y[i], s[i]))
    lo, hi = bootstrap_auc_ci(y, s, n_boot=N_BOOT, seed=seed)
    return {
        "auroc": round(float(roc_auc_score(y, s)), 4),
        "auroc_ci": [round(lo, 4), round(hi, 4)],
        "fpr_at_95tpr": round(fpr_at_tpr(y, s), 4),
        "fpr_at_95tpr_ci": [round(float(v), 4) for v in np.percentile(fprs, [2.5, 97.5])],
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
    }


def rate(flags: np.ndarray, seed: int = 0) -> dict:
    f = np.asarray(flags, np.float64)
    rng = np.random.default_rng(seed)
    boots = [f[rng.integers(0, len(f), len(f))].mean() for _ in range(N_BOOT)]
    return {"rate": round(float(f.mean()), 4), "ci": [round(float(v), 4) for v in np.percentile(boots, [2.5, 97.5])]}


def ties_of(embeddings: np.ndarray, classes: list[str]) -> np.ndarray:
    """Each query's prediction-set tie-breaks, as the product draws them (from its embedding)."""
    return np.stack([tiebreaks(set_key(e), classes) for e in embeddings])


def coverage(conf: Conformal, shares: np.ndarray, truth: np.ndarray, ties: np.ndarray) -> dict:
    out = {}
    for level in LEVELS:
        sets = conf.set_matrix(shares, level, ties)
        hit = sets[np.arange(len(truth)), truth]
        out[f"{level:.2f}"] = {
            "coverage": rate(hit)["rate"],
            "coverage_ci": rate(hit)["ci"],
            "mean_set_size": round(float(sets.sum(1).mean()), 3),
            "n": int(len(truth)),
        }
    return out


def reliability_png(path: Path, bins_raw: list, bins_cal: list, ece_raw: float, ece_cal: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    for bins, name, colour in (
        (bins_raw, f"vote share (ECE {ece_raw:.3f})", "#d62728"),
        (bins_cal, f"calibrated (ECE {ece_cal:.3f})", "#1f77b4"),
    ):
        pts = [(b["mean_predicted"], b["observed"]) for b in bins if b["count"]]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name, color=colour)
    ax.set_xlabel("predicted melanoma probability")
    ax.set_ylabel("observed melanoma rate")
    ax.set_title("ISIC 2017 test: reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---- the run -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--isic", type=Path, default=Path("../shared/data/isic2017"))
    ap.add_argument("--ham", type=Path, default=Path("../shared/data/ham10000_dev"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--figure", type=Path, default=Path(__file__).parent / "out" / "uncertainty_reliability.png")
    args = ap.parse_args()
    t0 = time.time()
    pred = Predictor.load(args.model, args.index)
    if pred.uncertainty is None:
        raise SystemExit(f"{args.index}: no novelty reference (index it again with this version)")
    arch = Archive(pred)
    n = len(arch.emb)
    every = np.ones(n, bool)
    rows = np.arange(n)

    # the archive's ImageNet features (the index keeps only its own embedding), in the index's row order
    train, _, _, train_inet = load_split(pred, args.isic, "train")
    row_of = {image_id: r for r, image_id in enumerate(train.image_ids)}
    if set(row_of) == set(pred.index.image_ids):
        arch.inet = train_inet[[row_of[i] for i in pred.index.image_ids]]
    # the archive's own leave-one-out features: the reference every percentile is read against
    ref = arch.features(arch.emb, arch.z, every, self_rows=rows, q_inet=arch.inet)
    ref_scores = scores(ref, ref)

    # queries
    val, val_e, val_s, val_f = load_split(pred, args.isic, "val")
    test, test_e, test_s, test_f = load_split(pred, args.isic, "test")
    ham, ham_e, ham_s, ham_f = load_split(pred, args.ham, None)
    masks = sorted((args.ham / "masks").glob("*.png"))
    half = len(masks) // 2
    tune_imgs, tune_kinds = non_dermoscopic(1, masks[:half])
    eval_imgs, eval_kinds = non_dermoscopic(2, masks[half:])
    tune_e, tune_s, tune_f = embed_images(pred, tune_imgs)
    eval_e, eval_s, eval_f = embed_images(pred, eval_imgs)
    z = arch.scale.apply
    feats = {
        name: arch.features(e, z(s), every, q_inet=f)
        for name, e, s, f in (
            ("val", val_e, val_s, val_f),
            ("test", test_e, test_s, test_f),
            ("ham", ham_e, ham_s, ham_f),
            ("tune", tune_e, tune_s, tune_f),
            ("eval", eval_e, eval_s, eval_f),
        )
    }
    sc = {name: scores(f, ref) for name, f in feats.items()}
    candidates = list(ref_scores)

    # the product computes the same novelty: its own path on the first 24 test images
    check = pred.predict_many(
        [load_image(p, fit=pred.cfg.model.load_size) for p in test.paths[:24]], image_ids=test.image_ids[:24]
    )
    product_pct = np.array([r.prediction.uncertainty["novelty_percentile"] for r in check])
    product_agrees = float(np.abs(product_pct - sc["test"][pred.uncertainty.method][:24]).max())

    # --- the rule: tuning data only
    tune_auc = {
        c: float(roc_auc_score(np.r_[np.ones(len(sc["tune"][c])), np.zeros(n)], np.r_[sc["tune"][c], ref_scores[c]]))
        for c in candidates
    }
    proxy = {c: [] for c in candidates}
    for cls in arch.classes:
        out_rows = np.flatnonzero(arch.diag == cls)
        keep = arch.diag != cls
        kept_rows = np.flatnonzero(keep)
        inet = arch.inet
        r_ref = arch.features(
            arch.emb[kept_rows],
            arch.z[kept_rows],
            keep,
            self_rows=kept_rows,
            q_inet=None if inet is None else inet[kept_rows],
        )
        r_out = arch.features(
            arch.emb[out_rows], arch.z[out_rows], keep, q_inet=None if inet is None else inet[out_rows]
        )
        s_ref, s_out = scores(r_ref, r_ref), scores(r_out, r_ref)
        for c in candidates:
            y = np.r_[np.ones(len(out_rows)), np.zeros(len(kept_rows))]
            proxy[c].append(float(roc_auc_score(y, np.r_[s_out[c], s_ref[c]])))
    proxy_auc = {c: float(np.mean(v)) for c, v in proxy.items()}
    chosen = by_rule([c for c in RULED if c in candidates], tune_auc, proxy_auc)
    in_product = by_rule([c for c in PRODUCT if c in candidates], tune_auc, proxy_auc)

    u = pred.uncertainty
    threshold = u.threshold
    absent = np.isin(np.asarray(ham.diagnoses), ABSENT)
    known = np.isin(np.asarray(ham.diagnoses), list(KNOWN_MAP))
    novelty_res = {}
    for c in candidates:
        s_ham = sc["ham"][c]
        nonderm_y = np.r_[np.ones(len(eval_imgs), bool), np.zeros(len(test), bool)]
        novelty_res[c] = {
            "absent_vs_present": separation(absent[absent | known], s_ham[absent | known]),
            "nonderm_eval_vs_isic_test": separation(nonderm_y, np.r_[sc["eval"][c], sc["test"][c]]),
            "isic_test_flagged_at_threshold": rate(sc["test"][c] >= threshold),
            "isic_val_flagged_at_threshold": rate(sc["val"][c] >= threshold),
            "nonderm_eval_flagged_at_threshold": rate(sc["eval"][c] >= threshold),
            "ham_absent_flagged_at_threshold": rate(s_ham[absent] >= threshold),
            "ham_present_flagged_at_threshold": rate(s_ham[known] >= threshold),
            "tune_nonderm_auc": round(tune_auc[c], 4),
            "proxy_absent_auc": round(proxy_auc[c], 4),
            "proxy_absent_auc_per_class": dict(zip(arch.classes, [round(v, 4) for v in proxy[c]], strict=True)),
        }
    nonderm_kinds = {}
    for kind in sorted(set(eval_kinds)):
        m = np.array([k == kind for k in eval_kinds])
        nonderm_kinds[kind] = {
            "n": int(m.sum()),
            **{c: rate(sc["eval"][c][m] >= threshold)["rate"] for c in (chosen, "kth")},
        }

    # --- calibration on the test split (the index's calibrator, fitted on archive leave-one-out votes)
    mel = arch.classes.index("melanoma")
    test_shares = arch.shares(feats["test"]["dist"], feats["test"]["idx"])
    y_mel = np.asarray(test.diagnoses) == "melanoma"
    cal = pred.uncertainty.calibrator
    test_cal = cal.apply_matrix(test_shares, arch.classes)
    raw_p, cal_p = test_shares[:, mel], test_cal[:, mel]
    calibration = {
        "method": cal.to_dict()["method"],
        "fitted_on": cal.fitted_on,
        "raw_share": {
            "ece": round(ece(raw_p, y_mel), 4),
            "ece_ci": [round(v, 4) for v in ece_interval(raw_p, y_mel)],
            "bins": reliability(raw_p, y_mel),
        },
        "calibrated": {
            "ece": round(ece(cal_p, y_mel), 4),
            "ece_ci": [round(v, 4) for v in ece_interval(cal_p, y_mel)],
            "bins": reliability(cal_p, y_mel),
        },
        "n": int(len(y_mel)),
        "figure": str(args.figure),
    }
    reliability_png(
        args.figure,
        calibration["raw_share"]["bins"],
        calibration["calibrated"]["bins"],
        calibration["raw_share"]["ece"],
        calibration["calibrated"]["ece"],
    )

    # --- conformal sets: calibrated on the validation split's raw vote shares
    col = {c: i for i, c in enumerate(arch.classes)}
    val_shares = arch.shares(feats["val"]["dist"], feats["val"]["idx"])
    val_truth = np.array([col[d] for d in val.diagnoses])
    conf = Conformal.fit(nonconformity(val_shares, val_truth), fitted_on="ISIC 2017 validation split")
    stored = pred.uncertainty.conformal
    test_truth = np.array([col[d] for d in test.diagnoses])
    ham_known_idx = np.flatnonzero(known)
    ham_shares = arch.shares(feats["ham"]["dist"], feats["ham"]["idx"])
    ham_truth = np.array([col[KNOWN_MAP[ham.diagnoses[i]]] for i in ham_known_idx])
    ham_flag = sc["ham"][pred.uncertainty.method][ham_known_idx] >= threshold
    test_ties = ties_of(test_e, arch.classes)
    test_flag = sc["test"][pred.uncertainty.method] >= threshold
    ham_ties = ties_of(ham_e[ham_known_idx], arch.classes)
    rng = np.random.default_rng(0)
    halves = {f"{lv:.2f}": [] for lv in LEVELS}
    for _ in range(200):
        perm = rng.permutation(len(test))
        a, b = perm[: len(test) // 2], perm[len(test) // 2 :]
        c_half = Conformal.fit(nonconformity(test_shares[a], test_truth[a]))
        for lv in LEVELS:
            sets = c_half.set_matrix(test_shares[b], lv, test_ties[b])
            halves[f"{lv:.2f}"].append(sets[np.arange(len(b)), test_truth[b]].mean())
    held = list(pred.cfg.data.holdout)
    if held:
        calibrated_on = (
            f"ISIC 2017 validation split ({len(val_truth)}); nothing else chose from it: each member's epoch was "
            f"kept by {len(held)} training images held out of training (train --holdout)"
        )
    else:
        calibrated_on = f"ISIC 2017 validation split ({len(val_truth)}); also what each member's best epoch was kept by"
    conformal = {
        "score": "1 - raw vote share of the true class",
        "smoothing": "tie-break per query and class from a hash of its embedding (conformal.tiebreaks)",
        "calibrated_on": calibrated_on,
        "n_calibration": int(len(val_truth)),
        "index_stored_matches": None
        if stored is None
        else bool(len(stored.scores) == len(conf.scores) and np.allclose(stored.scores, conf.scores, atol=1e-6)),
        "isic_test": coverage(conf, test_shares, test_truth, test_ties),
        # the product shows no set for a flagged image: the coverage of the sets it does show
        "isic_test_not_flagged": coverage(conf, test_shares[~test_flag], test_truth[~test_flag], test_ties[~test_flag]),
        "ham_known": coverage(conf, ham_shares[ham_known_idx], ham_truth, ham_ties),
        "ham_known_not_flagged": coverage(
            conf, ham_shares[ham_known_idx][~ham_flag], ham_truth[~ham_flag], ham_ties[~ham_flag]
        ),
        "ham_known_flagged": coverage(
            conf, ham_shares[ham_known_idx][ham_flag], ham_truth[ham_flag], ham_ties[ham_flag]
        )
        if ham_flag.any()
        else None,
        "isic_test_random_halves": {
            lv: {
                "mean_coverage": round(float(np.mean(v)), 4),
                "range": [round(float(min(v)), 4), round(float(max(v)), 4)],
            }
            for lv, v in halves.items()
        },
    }

    result = {
        "command": "python bench/uncertainty.py --model RUN --index INDEX",
        "model": str(args.model),
        "index": str(args.index),
        "archive_cases": n,
        "rule": RULE,
        "novelty_chosen_by_rule": chosen,
        "novelty_chosen_among_product_methods": in_product,
        "novelty_method_of_index": u.method,
        "threshold_percentile": threshold,
        "threshold_fitted_on": u.threshold_fitted_on,
        "stated_false_alarm_rate": u.stated_rate(),
        "threshold_fitted_rate": u.fitted_rate,
        "observed_rate": u.observed_rate,
        "observed_on": u.observed_on,
        "held_out_training_images": len(pred.cfg.data.holdout),
        "product_path_max_abs_difference": round(product_agrees, 6),
        "n_nonderm": {"tune": len(tune_imgs), "eval": len(eval_imgs)},
        "nonderm_eval_kinds_flagged_at_threshold": nonderm_kinds,
        "novelty": novelty_res,
        "calibration": calibration,
        "conformal": conformal,
        "seconds": round(time.time() - t0, 1),
        "machine": platform.platform(),
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("novelty_chosen_by_rule", "threshold_percentile", "seconds")}))


if __name__ == "__main__":
    main()
