"""``chaiderm reproduce``: the paper's Table 1 on ISIC 2017, with the six embeddings of section 2.3.

Protocol (docs/guide/reproduce.md): non-expert groups from ENHANCE (1000 rated training images for
group-based fine-tuning, the other rated ones held out as REL queries); Baseline = ImageNet
EfficientNet-Lite0 GAP, not fine-tuned; BaselineFT = the same fine-tuned with a multiclass loss;
Disease / Joint from ImageNet with triplets; NonHierarchical / Hierarchical fine-tuned from Disease on
the 1000 annotated images. Choices are made on the validation split; the test split is evaluated once per
final model. Every finished step is kept on disk, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from chaiderm._io import write_json, write_text
from chaiderm.config import (
    DEFAULT_VIEWS,
    Colour,
    MapStride,
    ModelConfig,
    Padding,
    RunConfig,
    TrainConfig,
    Views,
    check_fields,
)
from chaiderm.data.enhance import (
    GROUP_FILES,
    PAPER_GROUPS,
    enhance_groups,
    read_enhance,
    write_group_files,
)
from chaiderm.data.records import ImageTable, attach_groups, load_table, read_folder, read_groups
from chaiderm.data.transforms import center_crop, mask_as_seen, prepare, to_tensor
from chaiderm.errors import ArtifactError
from chaiderm.evaluation.evaluate import score_neighbours, score_relevance
from chaiderm.evaluation.metrics import bootstrap_auc_ci, paired_bootstrap_test
from chaiderm.evaluation.retrieval import in_memory, localisation_scores, nearest_excluding
from chaiderm.index.knn import knn_vote
from chaiderm.losses.logic import encode_labels
from chaiderm.models.embedding import build_model, load_model, save_model
from chaiderm.models.inference import embed, resolve_device
from chaiderm.training import train

VARIANTS = ("Baseline", "BaselineFT", "Disease", "Joint", "NonHierarchical", "Hierarchical")
KS = (3, 5, 10, 20, 40)
PAPER = {
    "auc": {
        "Baseline": [0.663, 0.675, 0.681, 0.712, 0.691], "BaselineFT": [0.700, 0.714, 0.709, 0.745, 0.742],
        "Disease": [0.734, 0.744, 0.757, 0.775, 0.776], "Joint": [0.704, 0.738, 0.754, 0.752, 0.760],
        "NonHierarchical": [0.713, 0.743, 0.749, 0.769, 0.776], "Hierarchical": [0.729, 0.756, 0.774, 0.783, 0.786],
    },
    "rel": {
        "Baseline": [0.942, 1.505, 2.875, 5.470, 10.283], "BaselineFT": [1.005, 1.608, 3.027, 5.772, 10.703],
        "Disease": [0.865, 1.412, 2.632, 4.903, 9.125], "Joint": [1.048, 1.678, 3.147, 6.067, 11.507],
        "NonHierarchical": [1.212, 1.958, 3.793, 7.300, 13.958], "Hierarchical": [1.125, 1.872, 3.658, 6.968, 13.333],
    },
    "ja": {"Baseline": None, "BaselineFT": None, "Disease": 0.176, "Joint": 0.201, "NonHierarchical": 0.193,
           "Hierarchical": 0.208},
}  # fmt: skip


@dataclass
class ReproduceSettings:
    backbone: str = "efficientnet_lite0"
    epochs: int = 3  # variants trained from ImageNet weights
    finetune_epochs: int = 2  # NonHierarchical / Hierarchical, from Disease
    image_size: int = 224
    load_size: int = 256
    seeds: int = 1
    n_finetune: int = 1000
    # hierarchical ENHANCE groups within each disease (10 / 6 / 8 did not beat these on cross-validation)
    groups_per_disease: dict[str, int] = field(default_factory=lambda: dict(PAPER_GROUPS))
    n_boot: int = 1000
    # test-time views of every evaluation; trained models do not depend on it
    views: Views = DEFAULT_VIEWS
    # colour normalisation of every variant's inputs and training colour jitter
    colour: Colour = "none"
    colour_jitter: float = 0.0
    # beyond the paper: the embedding variants also learn from the lesion masks of a seeded quarter of the
    # masks data (mask_weight of the training term); the localisation metrics then use the other images only
    teach_maps: bool = False
    mask_weight: float = 3.0
    # the taught variants pad by repeating edge pixels: no zero-padding imprint, so a uniform image maps flat
    # (research/maps/map_localisation_round6.json, half A2 of ham10000_dev); 14x14 maps (stride 16): the one
    # setting whose four variants meet both localisation targets on A2 (research/maps/maps.md)
    teach_padding: Padding = "replicate"
    teach_map_stride: MapStride = 16
    # the Dice term's share of the mask term (TrainConfig.mask_dice_share; research/maps/maps.md)
    mask_dice_share: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, {"teach_padding": "padding", "teach_map_stride": "map_stride", "finetune_epochs": "epochs"})


TEACH_SEED = 0  # the quarter of the masks data taught on is the same for every training seed
TAUGHT = ("Disease", "Joint", "NonHierarchical", "Hierarchical")  # the variants with evidence maps of their own


def taught_rows(n: int) -> np.ndarray:
    """Rows of the masks data whose masks teach the maps (``research/maps/map_localisation.py``'s half A1)."""
    return np.sort(np.random.default_rng(TEACH_SEED).permutation(n)[: n // 4])


def choice_rows(n: int) -> np.ndarray:
    """Rows of the masks data that map settings may be chosen on (half A2): the rest of half A. Half B,
    ``perm[n // 2:]``, is never chosen on, so its figures are the unbiased report."""
    return np.sort(np.random.default_rng(TEACH_SEED).permutation(n)[n // 4 : n // 2])


@dataclass
class _Data:
    train: ImageTable
    val: ImageTable
    test: ImageTable
    ham: ImageTable
    train_img: np.ndarray
    val_img: np.ndarray
    test_img: np.ndarray
    ham_img: np.ndarray
    ham_masks: np.ndarray  # (n, S, S) bool, on the crop the network sees
    rel_groups: np.ndarray  # hierarchical group code per training image (-1: unrated)
    rel_queries: np.ndarray  # rows of the held-out rated training images
    taught: np.ndarray  # rows of ham whose masks trained the maps (empty unless teach_maps)


def _load(isic: Path, masks_data: Path, groups_dir: Path, s: ReproduceSettings, log) -> _Data:
    train_t, val_t, test_t = (load_table(isic, sp) for sp in ("train", "val", "test"))
    ham = read_folder(masks_data)
    if not ham.has_masks:
        raise ValueError(f"{masks_data}: every image needs a mask for the localisation metrics")
    t = time.perf_counter()
    train_img = prepare(train_t.paths, s.load_size)[0]
    val_img = prepare(val_t.paths, s.load_size)[0]
    test_img = prepare(test_t.paths, s.load_size)[0]
    ham_img = prepare(ham.paths, s.load_size)[0]
    masks = np.stack([mask_as_seen(m, s.load_size, s.image_size) for m in ham.mask_paths])
    n = len(train_img) + len(val_img) + len(test_img) + len(ham_img)
    log(f"decoded {n} images in {time.perf_counter() - t:.0f} s")
    rated = {**read_groups(groups_dir / GROUP_FILES["finetune"]), **read_groups(groups_dir / GROUP_FILES["heldout"])}
    codes, _ = encode_labels([rated[i][0] if i in rated else None for i in train_t.image_ids])
    held = set(read_groups(groups_dir / GROUP_FILES["heldout"]))
    rel_q = np.array([j for j, i in enumerate(train_t.image_ids) if i in held])
    taught = taught_rows(len(ham)) if s.teach_maps else np.zeros(0, np.int64)
    return _Data(train_t, val_t, test_t, ham, train_img, val_img, test_img, ham_img, masks, codes, rel_q, taught)


def _train_variant(
    name: str,
    run: Path,
    d: _Data,
    groups_dir: Path,
    runs: dict[str, Path],
    seed: int,
    s: ReproduceSettings,
    log,
    device: str = "cpu",
) -> None:
    if (run / "done").exists():
        return
    mc = dict(backbone=s.backbone, image_size=s.image_size, load_size=s.load_size, colour=s.colour)
    if s.teach_maps and name in TAUGHT:
        mc["padding"] = s.teach_padding
        mc["map_stride"] = s.teach_map_stride
    if name == "Baseline":
        torch.manual_seed(seed)
        cfg = RunConfig(model=ModelConfig(head="none", **mc), train=TrainConfig(logic="disease", epochs=0))
        save_model(build_model(cfg.model), run, cfg)
    else:
        table, logic, init, epochs = {
            "BaselineFT": (d.train, "classifier", None, s.epochs),
            "Disease": (d.train, "disease", None, s.epochs),
            "Joint": (attach_groups(d.train, groups_dir / GROUP_FILES["blind_finetune"]), "joint", None, s.epochs),
            "NonHierarchical": (
                attach_groups(d.train, groups_dir / GROUP_FILES["finetune"]),
                "nonhierarchical",
                runs["Disease"],
                s.finetune_epochs,
            ),
            "Hierarchical": (
                attach_groups(d.train, groups_dir / GROUP_FILES["finetune"]),
                "hierarchical",
                runs["Disease"],
                s.finetune_epochs,
            ),
        }[name]
        cfg = RunConfig(
            model=ModelConfig(head="none" if name == "BaselineFT" else "conv", **mc),
            train=TrainConfig(
                logic=logic,
                epochs=epochs,
                seed=seed,
                val_k=20,
                colour_jitter=s.colour_jitter,
                mask_weight=s.mask_weight,
                mask_dice_share=s.mask_dice_share,
            ),
        )
        masks = d.ham.subset(d.taught) if s.teach_maps and name in TAUGHT else None
        cfg.data.groups = str(groups_dir)
        resume = (run / "checkpoints" / "last.pt").exists()
        res = train(
            cfg,
            table,
            run,
            val_table=d.val,
            init=init,
            resume=resume,
            force=not resume,
            device=device,
            masks=masks,
            on_epoch=lambda e, r: log(f"  {name} epoch {e + 1}: val AUC@20 {r.get('val_auc', float('nan')):.3f}"),
        )
        log(f"  {name}: best epoch {res.best_epoch + 1}")
    (run / "done").write_text("ok\n")


def _evaluate(
    run: Path, d: _Data, s: ReproduceSettings, seed: int, device: str = "cpu"
) -> tuple[dict, dict[str, np.ndarray]]:
    model, cfg = load_model(run)
    model.to(device)
    tr, tr_maps = embed(model, d.train_img, s.image_size, with_maps=True, views=s.views)
    te, _ = embed(model, d.test_img, s.image_size, views=s.views)
    hm, hm_maps = embed(model, d.ham_img, s.image_size, with_maps=True, views=s.views)
    kmax = max(KS)
    i_te, _ = nearest_excluding(in_memory(tr), te, len(tr), kmax)
    mel_tr = d.train.is_positive("melanoma")
    y_mel = d.test.is_positive("melanoma")
    # every figure through the code of `chaiderm evaluate`, so both give one number for one model
    ev = score_neighbours(d.train.diagnoses, i_te, d.test.diagnoses, ks=KS, n_boot=s.n_boot, seed=seed)
    out: dict = {
        "auc": ev["auc"]["melanoma"],
        "auc_ci": ev["auc_ci"]["melanoma"],
        "sk_auc": ev["auc"].get("seborrheic_keratosis", {}),
        "sk_auc_ci": ev["auc_ci"].get("seborrheic_keratosis", {}),
        "balanced_accuracy": ev["balanced_accuracy"],
    }
    scores: dict[str, np.ndarray] = {f"auc_{k}": knn_vote(mel_tr[i_te], k) for k in KS}
    # REL: held-out rated training images query the other 1999 training images (themselves excluded)
    ids = d.train.image_ids
    own = [([ids[q] for q in d.rel_queries], ids)]
    i_rel, _ = nearest_excluding(in_memory(tr), tr[d.rel_queries], len(tr), kmax, own)
    out["rel"] = score_relevance(i_rel, d.rel_groups, d.rel_groups[d.rel_queries], KS, n_boot=0)["rel"]
    # external queries (HAM10000, with masks) against the ISIC 2017 training archive
    i_hm, _ = nearest_excluding(in_memory(tr), hm, len(tr), kmax)
    held_out = np.setdiff1d(np.arange(len(hm)), d.taught)  # never the images whose masks were taught
    ext = score_neighbours(
        d.train.diagnoses, i_hm[held_out], d.ham.subset(held_out).diagnoses, ks=KS, n_boot=s.n_boot, seed=seed
    )
    out["external_auc"] = ext["auc"]["melanoma"]
    out["external_auc_ci"] = ext["auc_ci"]["melanoma"]
    out["localisation_images"] = int(len(held_out))
    loc = localisation_scores(hm_maps[held_out], tr_maps, i_hm[held_out, 0], d.ham_masks[held_out], references=True)
    if len(d.taught):  # the localisation figures of the halves a map setting may and may not be chosen on
        a2 = np.isin(held_out, choice_rows(len(hm)))
        for half, sel in (("A2", a2), ("B", ~a2)):
            out[f"ja_{half}"] = float(np.mean(loc["ja"][sel]))
            out[f"mass_in_mask_{half}"] = float(np.mean(loc["mass_in_mask"][sel]))
            out[f"ja_gaussian_{half}"] = float(np.mean(loc["ja_gaussian"][sel]))
    out.update({k: float(np.mean(v)) for k, v in loc.items()})
    if model.classifier is not None:
        names = sorted(set(d.train.diagnoses))
        with torch.inference_mode():
            logits = torch.cat(
                [
                    model.logits(
                        to_tensor(
                            center_crop(d.test_img[i : i + 16], s.image_size),
                            model.mean,
                            model.std,
                            colour=model.colour,
                        ).to(device)
                    ).cpu()
                    for i in range(0, len(d.test_img), 16)
                ]
            )
        p = torch.softmax(logits, 1)[:, names.index("melanoma")].numpy()
        scores["softmax"] = p
        out["softmax_auc"] = float(roc_auc_score(y_mel, p))
        out["softmax_auc_ci"] = bootstrap_auc_ci(y_mel, p, n_boot=s.n_boot, seed=seed)
    scores["neighbors_test"] = i_te[:, :5]
    scores["neighbors_ham"] = i_hm[:, :1]
    return out, scores


ENSEMBLED = ("Disease", "Hierarchical")


def _evaluate_ensemble(runs: list[Path], d: _Data, s: ReproduceSettings, seed: int, device: str = "cpu") -> dict:
    """kNN over the concatenated embeddings of one variant's seeds (beyond the paper).

    Concatenation makes the squared distance the sum of the members' distances. Validation AUC@k is
    reported beside the test figures, so the ensemble is judged on validation like every other choice.
    """
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for run in runs:
        model, _ = load_model(run)
        model.to(device)
        for split, img in (("train", d.train_img), ("val", d.val_img), ("test", d.test_img)):
            parts[split].append(embed(model, img, s.image_size, views=s.views)[0])
    tr, va, te = (np.ascontiguousarray(np.concatenate(parts[k], 1)) for k in ("train", "val", "test"))
    i_va, _ = nearest_excluding(in_memory(tr), va, len(tr), max(KS))
    i_te, _ = nearest_excluding(in_memory(tr), te, len(tr), max(KS))
    val = score_neighbours(d.train.diagnoses, i_va, d.val.diagnoses, ks=KS, n_boot=0, seed=seed)
    test = score_neighbours(d.train.diagnoses, i_te, d.test.diagnoses, ks=KS, n_boot=s.n_boot, seed=seed)
    return {
        "n_models": len(runs),
        "val_auc": val["auc"]["melanoma"],
        "auc": test["auc"]["melanoma"],
        "auc_ci": test["auc_ci"]["melanoma"],
    }


def run_reproduce(
    isic: str | Path,
    enhance: str | Path,
    masks_data: str | Path,
    out: str | Path,
    s: ReproduceSettings | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict:
    """Run (or resume) the whole reproduction into ``out``; ``device`` only says where to compute."""
    s = s or ReproduceSettings()
    resolve_device(device)  # before anything is written or decoded, as the settings were checked
    isic, enhance, masks_data, out = Path(isic), Path(enhance), Path(masks_data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, s)
    # each step's duration is kept on disk when it runs, so a resumed run still reports what every step took
    timing_path = out / "timing.json"
    timing: dict[str, float] = json.loads(timing_path.read_text()) if timing_path.exists() else {}

    def took(step: str, since: float) -> None:
        timing[step] = time.perf_counter() - since
        write_json(timing_path, timing)

    t0 = time.perf_counter()
    groups_dir = out / "groups"
    if not (groups_dir / "groups_info.json").exists():
        t = time.perf_counter()
        train_t = load_table(isic, "train")
        ratings = read_enhance(enhance)
        parts = enhance_groups(
            ratings,
            train_t.image_ids,
            train_t.diagnoses,
            n_finetune=s.n_finetune,
            groups_per_disease=s.groups_per_disease,
        )
        write_group_files(parts, groups_dir, {"sources": ratings.sources, "groups_per_disease": s.groups_per_disease})
        took("groups", t)
    t = time.perf_counter()
    d = _load(isic, masks_data, groups_dir, s, log)
    took("decode", t)
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in range(s.seeds):
        runs = {v: out / "runs" / f"seed{seed}" / v for v in VARIANTS}
        per_seed[seed] = {}
        for name in VARIANTS:
            if not (runs[name] / "done").exists():
                t = time.perf_counter()
                log(f"[seed {seed}] {name}: training")
                _train_variant(name, runs[name], d, groups_dir, runs, seed, s, log, device)
                took(f"train_{name}_seed{seed}", t)
            ev_path = out / "eval" / f"seed{seed}" / f"{name}.json"
            if not ev_path.exists():
                t = time.perf_counter()
                ev, scores = _evaluate(runs[name], d, s, seed, device)
                ev_path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(ev_path.with_suffix(".npz"), **scores)
                write_json(ev_path, ev)
                took(f"eval_{name}_seed{seed}", t)
            per_seed[seed][name] = json.loads(ev_path.read_text())
            log(
                f"[seed {seed}] {name}: AUC@20 {per_seed[seed][name]['auc']['20']:.3f}, "
                f"REL@10 {per_seed[seed][name]['rel']['10']:.2f}, JA {per_seed[seed][name]['ja']:.3f}"
            )
    table = _table(per_seed, out, d, s)
    if s.seeds > 1:
        table["ensembles"] = {}
        for name in ENSEMBLED:
            path = out / "eval" / f"ensemble{s.seeds}_{name}.json"
            if not path.exists():
                log(f"{name}: ensemble of {s.seeds} seeds")
                t = time.perf_counter()
                runs = [out / "runs" / f"seed{seed}" / name for seed in range(s.seeds)]
                write_json(path, _evaluate_ensemble(runs, d, s, 0, device))
                took(f"eval_ensemble{s.seeds}_{name}", t)
            table["ensembles"][name] = json.loads(path.read_text())
    table["timing_s"] = {**timing, "total": sum(timing.values()), "this_run": time.perf_counter() - t0}
    table["settings"] = asdict(s)
    write_json(out / "table1.json", table)
    write_text(out / "table1.md", _markdown(table))
    from chaiderm.evaluation.figures import write_figures

    write_figures(out, d, VARIANTS, KS, views=s.views)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min: {out / 'table1.json'}, {out / 'table1.md'}")
    return table


def _check_settings(out: Path, s: ReproduceSettings) -> None:
    """Resuming is only sound with the settings the finished steps were made with; more seeds may be added."""
    path = out / "settings.json"
    now = {k: v for k, v in asdict(s).items() if k != "seeds"}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path}: unreadable ({e}); remove it or choose another --out") from e
        # folders from before the setting existed were grouped with the paper's numbers
        saved.setdefault("groups_per_disease", dict(PAPER_GROUPS))
        saved.setdefault("views", "none")  # and evaluated single views
        saved.setdefault("colour", "none")  # and had no colour normalisation or jitter
        saved.setdefault("colour_jitter", 0.0)
        saved.setdefault("teach_maps", False)  # and no map learnt from masks
        saved.setdefault("mask_weight", 3.0)
        saved.setdefault("teach_padding", "replicate")
        saved.setdefault("teach_map_stride", 32)
        saved.setdefault("mask_dice_share", 0.5)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise ArtifactError(
                f"{path}: this folder holds a run made with other settings ({', '.join(diff)}: "
                f"{', '.join(f'{saved.get(k)} there, {now.get(k)} now' for k in diff)}); choose another --out"
            )
    else:
        write_json(path, now)


def _table(per_seed: dict[int, dict[str, dict]], out: Path, d: _Data, s: ReproduceSettings) -> dict:
    variants = {}
    for name in VARIANTS:
        evs = [per_seed[seed][name] for seed in per_seed]
        v = dict(evs[0])
        if len(evs) > 1:
            for key in ("auc", "rel", "sk_auc", "external_auc"):
                v[key] = {k: float(np.mean([e[key][k] for e in evs])) for k in evs[0][key]}
                v[key + "_std"] = {k: float(np.std([e[key][k] for e in evs], ddof=1)) for k in evs[0][key]}
            v["ja"] = float(np.mean([e["ja"] for e in evs]))
            v["ja_std"] = float(np.std([e["ja"] for e in evs], ddof=1))
        v["n_seeds"] = len(evs)
        variants[name] = v
    y = d.test.is_positive("melanoma")
    tests = {}
    sc = {n: np.load(out / "eval" / "seed0" / f"{n}.npz") for n in VARIANTS}
    for other in ("Disease", "Baseline"):
        tests[f"Hierarchical_vs_{other}"] = {
            str(k): paired_bootstrap_test(y, sc["Hierarchical"][f"auc_{k}"], sc[other][f"auc_{k}"], n_boot=s.n_boot)
            for k in KS
        }
    return {"variants": variants, "baselineft_softmax_auc": variants["BaselineFT"].get("softmax_auc"), "tests": tests}


def _markdown(t: dict) -> str:
    lines = [
        "| metric | " + " | ".join(f"{v} (ours / paper)" for v in VARIANTS) + " |",
        "| --- |" + " --- |" * len(VARIANTS),
    ]

    def pm(value: float, std: float | None) -> str:
        return f"{value:.3f}" + (f" ± {std:.3f}" if std is not None else "")

    def ours(v: str, key: str, k: int) -> str:
        row = t["variants"][v]
        return pm(row[key][str(k)], row.get(f"{key}_std", {}).get(str(k)))

    for key, label in (("auc", "AUC"), ("rel", "REL")):
        for i, k in enumerate(KS):
            cells = [f"{ours(v, key, k)} / {PAPER[key][v][i]:.3f}" for v in VARIANTS]
            lines.append(f"| {label} k{k} | " + " | ".join(cells) + " |")
    cells = [
        pm(t["variants"][v]["ja"], t["variants"][v].get("ja_std"))
        + f" / {PAPER['ja'][v] if PAPER['ja'][v] is not None else 'NA'}"
        for v in VARIANTS
    ]
    lines.append("| JA (QAM) | " + " | ".join(cells) + " |")
    lines.append(
        "| JA (similarity map) | " + " | ".join(f"{t['variants'][v]['ja_similarity_map']:.3f}" for v in VARIANTS) + " |"
    )
    lines.append(
        "| JA (centred Gaussian) | " + " | ".join(f"{t['variants'][v]['ja_gaussian']:.3f}" for v in VARIANTS) + " |"
    )
    sm = t.get("baselineft_softmax_auc")
    lines.append("")
    lines.append(f"BaselineFT softmax AUC: {sm:.3f} (paper 0.772)" if sm is not None else "")
    for name, e in t.get("ensembles", {}).items():
        lines.append("")
        lines.append(
            f"{name}, kNN over the concatenated embeddings of {e['n_models']} seeds (beyond the paper), "
            f"AUC@{'/'.join(map(str, KS))}: test "
            + " / ".join(f"{e['auc'][str(k)]:.3f}" for k in KS)
            + "; validation "
            + " / ".join(f"{e['val_auc'][str(k)]:.3f}" for k in KS)
        )
    return "\n".join(lines) + "\n"
