"""Figures of a reproduction run: ROC curves, ranked results (paper Fig. 3), QAM/RAM pairs (Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from chaiderm.data.transforms import center_crop  # noqa: E402
from chaiderm.evidence.maps import activation_map_pairs  # noqa: E402
from chaiderm.evidence.render import overlay  # noqa: E402
from chaiderm.models.embedding import load_model  # noqa: E402
from chaiderm.models.inference import embed  # noqa: E402


def _show(ax, img, title="", red=False):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_edgecolor("red" if red else "#bbbbbb")
        sp.set_linewidth(4 if red else 1)
    if title:
        ax.set_title(title, fontsize=7)


def write_figures(out: Path, d, variants, ks, k_roc: int = 20, views: str = "none") -> None:
    scores = {v: np.load(out / "eval" / "seed0" / f"{v}.npz") for v in variants}
    y = d.test.is_positive("melanoma")
    fig, ax = plt.subplots(figsize=(5, 5))
    for v in variants:
        fpr, tpr, _ = roc_curve(y, scores[v][f"auc_{k_roc}"])
        ax.plot(fpr, tpr, label=v)
    if "softmax" in scores["BaselineFT"]:
        fpr, tpr, _ = roc_curve(y, scores["BaselineFT"]["softmax"])
        ax.plot(fpr, tpr, "k--", label="BaselineFT softmax")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"melanoma vs rest, kNN vote k={k_roc}, ISIC 2017 test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)

    # Fig. 3: one melanoma test query, top-5 results per variant, melanoma in red
    q = int(np.flatnonzero(y)[0])
    mel = d.train.is_positive("melanoma")
    fig, axes = plt.subplots(len(variants), 6, figsize=(9, 1.6 * len(variants)))
    for r, v in enumerate(variants):
        _show(axes[r, 0], d.test_img[q], f"query ({v})", red=True)
        for c, j in enumerate(scores[v]["neighbors_test"][q][:5]):
            _show(axes[r, c + 1], d.train_img[j], f"#{c + 1} {d.train.diagnoses[j][:12]}", red=bool(mel[j]))
    fig.tight_layout()
    fig.savefig(out / "fig3.png", dpi=110)
    plt.close(fig)

    # Fig. 4: QAM/RAM pair of one external query (with a mask) and its nearest archive case, per variant
    shown = d.ham.is_positive("melanoma")
    shown[getattr(d, "taught", [])] = False  # a held-out image, never one whose mask was taught
    q = int(np.flatnonzero(shown)[0])
    fig, axes = plt.subplots(len(variants), 4, figsize=(6.4, 1.6 * len(variants)))
    for r, v in enumerate(variants):
        model, cfg = load_model(out / "runs" / "seed0" / v)
        j = int(scores[v]["neighbors_ham"][q][0])
        pair = np.stack([d.ham_img[q], d.train_img[j]])
        _, maps = embed(model, pair, cfg.model.image_size, with_maps=True, views=views)
        qam, ram = activation_map_pairs(maps[0], maps[1:2])
        size = cfg.model.image_size
        qi = center_crop(d.ham_img[q : q + 1], size)[0]
        ri = center_crop(d.train_img[j : j + 1], size)[0]
        _show(axes[r, 0], qi, f"{v}: query")
        _show(axes[r, 1], overlay(qi, qam[0]), "QAM")
        _show(axes[r, 2], ri, f"result ({d.train.diagnoses[j][:12]})")
        _show(axes[r, 3], overlay(ri, ram[0]), "RAM")
    fig.tight_layout()
    fig.savefig(out / "fig4.png", dpi=110)
    plt.close(fig)
