"""Validation-only choices for ``chaiderm reproduce``: ``python -m research.reproduction.tune_val [--only NAME ...]``.

Every candidate trains an embedding on the 2000 ISIC 2017 training images (``--seed``, default 0;
Disease logic, or Hierarchical fine-tuned from a Disease candidate) and is scored on the 150 validation images only
(melanoma kNN AUC@k against the training archive, k = 3..40, and their mean); the test split is never
read. Figures are merged into ``research/reproduction/tuning.json`` one candidate at a time, so a killed run keeps what
finished. The Lite1 candidates need ``pip install -e '.[lite1]'``. The choices this led to are recorded
in research/reproduction/reproduction.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from research._common import ISIC

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = ISIC
KS = (3, 5, 10, 20, 40)

# name -> (model settings, training settings); "epochs": 0 means no fine-tuning (Baseline)
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "baseline_224": ({"head": "none", "image_size": 224}, {"epochs": 0}),
    "baseline_256": ({"head": "none", "image_size": 256}, {"epochs": 0}),
    "disease_224": ({"image_size": 224}, {}),
    "disease_256": ({"image_size": 256}, {}),
    "disease_256_lowlr": ({"image_size": 256}, {"lr_backbone": 3e-5, "lr_head": 3e-4}),
    "baseline_lite1_240": ({"backbone": "efficientnet_lite1", "head": "none", "image_size": 240}, {"epochs": 0}),
    "disease_lite1_240": ({"backbone": "efficientnet_lite1", "image_size": 240}, {}),
    # fine-tuned from disease_224 on the 1000 group-annotated images: how many epochs val keeps rising
    "hierarchical_224_ft4": ({"image_size": 224}, {"logic": "hierarchical", "epochs": 4, "init": "disease_224"}),
    # L2-normalised embeddings (an early prototype's choice) need more epochs to settle
    "disease_224_norm_e5": ({"image_size": 224, "normalize": True}, {"epochs": 5}),
    "hierarchical_224_norm_ft4": (
        {"image_size": 224, "normalize": True},
        {"logic": "hierarchical", "epochs": 4, "init": "disease_224_norm_e5"},
    ),
    # weights averaged over steps (EMA, decay 0.98: about one 42-step epoch) instead of the last step's
    "disease_224_ema": ({"image_size": 224}, {"ema_decay": 0.98}),
    "hierarchical_224_ema_ft4": (
        {"image_size": 224},
        {"logic": "hierarchical", "epochs": 4, "init": "disease_224_ema", "ema_decay": 0.98},
    ),
    "hierarchical_lite1_240_ft4": (
        {"backbone": "efficientnet_lite1", "image_size": 240},
        {"logic": "hierarchical", "epochs": 4, "init": "disease_lite1_240"},
    ),
}
DEFAULT_ENHANCE = DEFAULT_ISIC.parent / "enhance"


def val_auc_at_k(model, train_img: np.ndarray, val_img: np.ndarray, y_train, y_val, size: int) -> dict[str, float]:
    from chaiderm.evaluation.metrics import calculate_auc_at_k
    from chaiderm.index.faiss_index import nearest_images

    idx = nearest_images(model, train_img, val_img, size, max(KS))
    return {str(k): v for k, v in calculate_auc_at_k(y_train[idx], y_val, KS).items()}


def _finetune_table(tr_t, enhance: Path, work: Path):
    from chaiderm.data.enhance import GROUP_FILES, PAPER_GROUPS, enhance_groups, read_enhance, write_group_files
    from chaiderm.data.records import attach_groups

    groups = work / "groups"
    if not (groups / "groups_info.json").exists():
        # the paper's numbers, with which these candidates ran (the package default changed after them)
        parts = enhance_groups(read_enhance(enhance), tr_t.image_ids, tr_t.diagnoses, groups_per_disease=PAPER_GROUPS)
        write_group_files(parts, groups)
    return attach_groups(tr_t, groups / GROUP_FILES["finetune"])


def _key(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_seed{seed}"


def run_candidate(name: str, isic: Path, enhance: Path, work: Path, train_img, val_img, seed: int = 0) -> dict:
    from chaiderm.config import ModelConfig, RunConfig, TrainConfig
    from chaiderm.data.records import load_table
    from chaiderm.models.embedding import build_model, load_model
    from chaiderm.training import train

    mset, tset = CANDIDATES[name]
    tset = dict(tset)
    init = tset.pop("init", None)
    init = None if init is None else _key(init, seed)
    tr_t, va_t = load_table(isic, "train"), load_table(isic, "val")
    y_tr, y_va = tr_t.is_positive("melanoma"), va_t.is_positive("melanoma")
    cfg = RunConfig(
        model=ModelConfig(load_size=256, **mset),
        train=TrainConfig(**{"logic": "disease", "epochs": 3, "seed": seed, "val_k": 20, **tset}),
    )
    t = time.perf_counter()
    history: list = []
    if init is not None and not (work / init / "model.safetensors").exists():
        raise SystemExit(f"{name} fine-tunes {init}: run that candidate first (same --work)")
    if cfg.train.epochs == 0:
        torch.manual_seed(seed)
        model = build_model(cfg.model)
    else:
        table = _finetune_table(tr_t, enhance, work) if cfg.train.logic == "hierarchical" else tr_t
        start = None if init is None else work / init
        res = train(cfg, table, work / _key(name, seed), val_table=va_t, force=True, init=start)
        history = [{k: h[k] for k in ("epoch", "loss", "val_auc")} for h in res.history]
        model, _ = load_model(work / _key(name, seed))
    auc = val_auc_at_k(model, train_img, val_img, y_tr, y_va, cfg.model.image_size)
    return {
        "model": mset,
        "train": tset,
        "init": init,
        "seed": seed,
        "epochs": cfg.train.epochs,
        "history_val_auc20": history,
        "val_auc": auc,
        "val_auc_mean": float(np.mean(list(auc.values()))),
        "seconds": time.perf_counter() - t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates to run (default: all)")
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--enhance", type=Path, default=DEFAULT_ENHANCE, help="ENHANCE ratings (fine-tuning candidates)")
    ap.add_argument("--work", type=Path, default=None, help="keep trained candidates here (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=HERE / "tuning.json")
    ap.add_argument("--seed", type=int, default=0, help="training seed; results of seed s > 0 are keyed NAME_seed<s>")
    a = ap.parse_args()
    from chaiderm._io import write_json
    from chaiderm.data.records import load_table
    from chaiderm.data.transforms import prepare

    if not (a.isic / "ISIC-2017_Training_Part3_GroundTruth.csv").exists():
        raise SystemExit(f"{a.isic}: the ISIC 2017 data is needed for validation tuning")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_img = prepare(load_table(a.isic, "train").paths, 256)[0]
    val_img = prepare(load_table(a.isic, "val").paths, 256)[0]
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results.setdefault("candidates", {})
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        for name in a.only or list(CANDIDATES):
            r = run_candidate(name, a.isic, a.enhance, work, train_img, val_img, a.seed)
            results["candidates"][_key(name, a.seed)] = r
            results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
            results["date"] = datetime.date.today().isoformat()
            write_json(a.out, results)
            print(
                _key(name, a.seed),
                " ".join(f"{v:.3f}" for v in r["val_auc"].values()),
                f"mean {r['val_auc_mean']:.3f}",
                f"{r['seconds']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
