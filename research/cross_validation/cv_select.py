"""Cross-validated choice of the reproduction's training settings.

    python -m research.cross_validation.cv_select [--device cuda] [--workers 5] [--budget-s 420] [--out FILE.json]

Why: the 150-image validation split (30 melanomas) cannot rank settings: a seed change moves its AUC
more than any setting tried (research/cross_validation/cross_validation.md). Here every candidate is scored on all 2000
*training* images instead, by 5-fold cross-validation, and on five training seeds at once.

Protocol. The training images are split into 5 folds, stratified by disease (seed 0). For fold f
(training seed f): a Disease model is trained on the other four folds (the epoch kept is chosen, as in
the reproduction, by the official validation split searched against those four folds); the Hierarchical
candidates fine-tune it on the group-annotated images of those four folds. Each image of fold f then
queries the other four folds. The melanoma votes of all 2000 queries are pooled and scored: AUC@k for
k = 3, 5, 10, 20, 40 and their mean. The test split is never read.

Decision rule, fixed before the first run: among the Hierarchical candidates finished on all five folds,
the one with the highest pooled mean AUC replaces the default settings when it beats the default by more
than 0.01 and has the higher per-fold mean AUC in at least 4 of the 5 folds. Otherwise the defaults stay.

Each fold runs in its own process; ``--budget-s`` stops starting new candidates after that many seconds,
so the script ends inside a fixed time (unfinished candidates are reported, never chosen).

Round 4 (CPU, second split: ``--fold-seed 1 --only h_default h_groups_half --views flip flip4``), two more
rules, fixed before it ran:
- *Groups.* 10 / 6 / 8 (``h_groups_half``, adopted after round 3 on the first split) stays the default if,
  over the ten folds of both splits, its per-fold mean AUC beats the paper's 20 / 12 / 15
  (``h_default``) by more than 0.01 on average and in at least 7 of 10 folds; otherwise the paper's
  numbers come back (:func:`compare_over_splits`).
- *Test-time views* (``--views``: the embedding averaged over mirrored copies, scored on the same trained
  models, so a paired comparison with no training noise): a view set is adopted for every variant if,
  for the default Hierarchical model (``h_groups_half``), its pooled mean AUC beats plain inference by
  more than 0.005 and wins at least 4 of 5 folds, and it does not lower the Disease model's pooled mean
  AUC. Of two that pass, the cheaper one is taken unless the dearer one adds another 0.005
  (:func:`decide_views`).

Round 5 (CPU, third split: ``--fold-seed 2 --only h_default h_groups_half --other-split <round 3>
<round 4>``), added because round 4 kept 10 / 6 / 8 by 0.0003; rule fixed before it ran: the groups rule
above over the fifteen folds of the three splits (mean difference > 0.01, won in at least two thirds of
the folds, i.e. 10 of 15); otherwise the paper's numbers return. An unfinished split changes nothing.

Round 6 (CPU, third split again: ``--fold-seed 2 --only h_colour --baseline <round 5>``): colour.
Dermoscopes differ in white balance, and the triplet models, trained with no colour augmentation,
overfit within 2-3 epochs. ``d_colour`` / ``h_colour`` train and embed with Shades of Gray colour
constancy (p = 6) and jitter brightness, contrast and saturation by up to 20 % in training. The default
models of that split are not retrained: CPU training is deterministic, so round 5's per-fold results
(``--baseline``) are theirs. Rule, fixed before it ran: colour becomes the default for every trained
variant if ``h_colour``'s pooled mean AUC beats round 5's ``h_default`` by more than 0.01, wins at least 4
of 5 folds, and ``d_colour``'s pooled mean AUC is not below ``d_default``'s (a colour change that is real
should not hurt the model the group fine-tuning starts from) (:func:`decide_pair`).
Outcome: +0.007, 3 of 5 folds, Disease -0.0003: not adopted (research/cross_validation/cross_validation.md).

Round 7 (CPU, third split again: ``--fold-seed 2 --only h_lite1 --baseline <round 5>``): capacity.
``d_lite1`` / ``h_lite1`` use EfficientNet-Lite1 at its native 240 input (from the 256 image), all else
default. Rule, fixed before it ran: the round-6 rule with ``h_lite1`` / ``d_lite1`` in place of the colour
pair (Hierarchical pooled mean AUC > default + 0.01, at least 4 of 5 folds won, Disease not lower)
(:func:`decide_pair`); Lite1 becomes the reproduction's backbone if it passes.
Outcome: Hierarchical +0.002, 2 of 5 folds (Disease +0.008): not adopted.

Round 8 (CPU, third split again: ``--fold-seed 2 --disease d_ham --baseline <round 5>``), for the
recommended model (issue 16), which is an ensemble of Disease models, so Disease models are compared.
``d_ham`` trains on the four folds *plus all of ham10000_dev* (``--ham``; 1108 images of other clinics,
seven diagnoses in the shared vocabulary), all else default; its fold-f queries still search the same
four ISIC folds as ``d_default``'s, so only the embedding differs. Three more scorings of the same
``d_ham`` models (paired, no training noise): ``d_ham+distance`` (each neighbour's vote weighed by 1 /
squared distance), ``d_ham+archive_ham`` (ham10000_dev added to the searched archive) and both. Rules,
fixed before it ran (:func:`decide_round8`):
- *Training data.* ISIC 2017 plus ham10000_dev becomes the recipe's training data if ``d_ham``'s pooled
  mean AUC beats round 5's ``d_default`` by more than 0.01 and wins at least 4 of 5 folds.
- *Vote.* Distance-weighted votes become the recipe's vote if ``d_ham+distance`` beats ``d_ham`` by more
  than 0.005 pooled and wins at least 4 of 5 folds.
- *Archive.* ham10000_dev joins the recipe's archive if ``d_ham+archive_ham`` beats ``d_ham`` by more than
  0.005 pooled and wins at least 4 of 5 folds (and with distance votes, if those are adopted, the same
  against ``d_ham+distance``).
The test split is not read; a model trained with ham10000_dev can no longer be measured on it as external.
Outcome: training data -0.017 (2 of 5 folds), not adopted; distance votes +0.008 (5 of 5), adopted; archive
-0.002, not adopted (research/recipe_rounds/recipe_rounds.md).

Round 9 (CPU, third split again: ``--fold-seed 2 --disease d_default --views flip flip4 --baseline
<round 5>``): test-time views for the recommended recipe's members, which vote by distance. ``d_default``
is retrained (CPU training is deterministic: its plain scores must equal round 5's, a check of the whole
path) and scored with distance votes plain, with ``flip`` (2 views) and with ``flip4`` (4 views). Rule,
fixed before it ran (:func:`decide_round9`): a view set passes if ``d_default+<views>+distance`` beats
``d_default+distance`` by more than 0.005 pooled and wins at least 4 of 5 folds; of two that pass the
cheaper is chosen unless the dearer adds another 0.005. A view set that passes joins the recipe only with
a number of members whose query, with those views and 10 evidence pairs, stays within 150 ms at the 95th
percentile on 2 cores (measured before it is adopted).
Outcome: flip -0.004 (1 of 5), flip4 -0.005 (2 of 5): not adopted. The retrained ``d_default`` did *not*
reproduce round 5's scores (pooled mean 0.764 against 0.762): round 5 ran with ``--workers 1`` (2 torch
threads per fold), rounds 8-9 with ``--workers 2`` (1 thread), and another summation order is another
trajectory (with 2 threads today's code gives round 5's fold 1 to every digit). Round 8's training-data rule
judged again against this round's ``d_default`` (1 thread, like ``d_ham``): -0.019, the same verdict. Compare
only runs with the same ``--workers`` on the same machine; the summary records ``threads_per_fold``.

Round 11 (``--disease d_reseed d_lite1_224``): the fold models ``research/recipe_rounds/cv_members.py`` compares as
second members; its rule is there.

Round 13 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_ce --baseline
research/recipe_rounds/cv_round9.json``): the recipe's members learn only from triplets; re-identification practice adds
a classifier's cross-entropy on the same embedding, which also asks the embedding to separate the diagnoses
linearly. ``d_ce`` is ``d_default`` plus a diagnosis head on the embedding, its cross-entropy added with
weight 1 (``TrainConfig.ce_weight``; the head never votes), trained with round 9's seeds and thread count.
Rule, fixed before it ran (:func:`decide_single_change`): the term joins the recipe if ``d_ce+distance`` beats round
9's ``d_default+distance`` by more than 0.01 pooled mean AUC and wins at least 4 of 5 folds (the rule for a
change of training in round 8); then a recipe round of its own, guarded on the validation split and the
ham10000_dev tune half, before the test split is read.
Outcome: -0.016 pooled (0.754 against 0.770), 1 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 14 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_lite2 --baseline
research/recipe_rounds/cv_round9.json``): a larger backbone. ``d_lite2`` is EfficientNet-Lite2 at its native 260 input
(the 256 x 256 images loaded at 260), all else default, with round 9's seeds and thread count. One Lite2 query
costs 19.0 ms at p95 against Lite0's 11.6 ms (``bench/run.py --only backbone_query``), so a Lite2 recipe
would hold about five members instead of eight. Rule, fixed before it ran (:func:`decide_single_change`): Lite2
becomes the recipe's backbone candidate if ``d_lite2+distance`` beats round 9's ``d_default+distance`` by more
than 0.01 pooled mean AUC and wins at least 4 of 5 folds; a recipe round with as many Lite2 members as the
latency rule allows would then decide, guarded on the validation split and the ham10000_dev tune half.
Outcome: -0.012 pooled (0.758 against 0.770), 2 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 15 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_long_aug --baseline
research/recipe_rounds/cv_round9.json``): the issue's last untried candidate, longer training with stronger
augmentation. Five epochs alone lost 0.012 on the first split (the models overfit by epoch 3); stronger augmentation
should let a longer run keep learning. ``d_long_aug`` trains 6 epochs (learning rates / 10 for the last
two), crops down to 224 / 1.25 = 179 pixels enlarged (``zoom`` 1.25, against 205 at the default) and
brightness / contrast / saturation jitter of 0.2, all else default (no colour constancy, so members still
see one input); the kept epoch is chosen on the validation split as for every candidate. Round 9's seeds
and thread count. Rule, fixed before it ran (:func:`decide_single_change`): the settings join the recipe if
``d_long_aug+distance`` beats round 9's ``d_default+distance`` by more than 0.01 pooled mean AUC and wins at
least 4 of 5 folds; then a recipe round of its own (eight members, guarded on the validation split and the
ham10000_dev tune half) before the test split is read.
Outcome: -0.006 pooled (0.764 against 0.770), 3 of 5 folds: not adopted; the validation split kept the third
epoch in four folds, so mostly the augmentation was measured (research/recipe_rounds/recipe_rounds.md).

Round 16 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_freeze1 --baseline
research/recipe_rounds/cv_round9.json``): the stem and the blocks down to 1/8 resolution (6 of Lite0's 18 stages) have
been frozen since the first prototype, chosen for training speed (twice the images per second), never judged
for retrieval. ``d_freeze1`` freezes the stem alone, so the early blocks' ImageNet filters can adapt to
dermoscopic colour and texture; batch-norm statistics stay fixed as before; all else default; round 9's
seeds and thread count. Rule, fixed before it ran (:func:`decide_single_change`): the setting joins the recipe if
``d_freeze1+distance`` beats round 9's ``d_default+distance`` by more than 0.01 pooled mean AUC and wins at
least 4 of 5 folds; members would then share one stage instead of six, so a recipe round would first
measure how many fit in 150 ms at the 95th percentile, then be guarded on the validation split and the
ham10000_dev tune half before the test split is read.
Outcome: -0.025 pooled (0.745 against 0.770), 0 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 17 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_dim256 --baseline
research/recipe_rounds/cv_round9.json``): the embedding's 1024 dimensions are the paper's, never judged here. The models
overfit by the third epoch (round 15), and the new 1x1 projection (320 to 1024 channels) is most of what
is trained from scratch; ``d_dim256`` projects to 256 instead (a quarter of the new weights), all else
default, round 9's seeds and thread count. A member's embedding and stored maps would also shrink 4x, which
is not part of the rule. Rule, fixed before it ran (:func:`decide_single_change`): 256 dimensions join the
recipe if ``d_dim256+distance`` beats round 9's ``d_default+distance`` by more than 0.01 pooled mean AUC and
wins at least 4 of 5 folds; then a recipe round of its own (eight members, guarded on the validation split
and the ham10000_dev tune half) before the test split is read.
Outcome: -0.005 pooled (0.765 against 0.770), 3 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 18 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_freeze12 --baseline
research/recipe_rounds/cv_round9.json``): round 16 found that training more of the backbone (the stem alone frozen) lost
0.025 in every fold, the models fitting the 1600 images faster and transferring worse. The other direction
was never tried: ``d_freeze12`` keeps the first 12 of Lite0's 18 stages frozen (everything down to 1/16
resolution, against 1/8 by default), so only the 7 x 7 stages, the head and the projection learn; all else
default, round 9's seeds and thread count. Members would also share twice the stem, so queries would be
cheaper; that is not part of the rule. Rule, fixed before it ran (:func:`decide_single_change`): the setting
joins the recipe if ``d_freeze12+distance`` beats round 9's ``d_default+distance`` by more than 0.01 pooled
mean AUC and wins at least 4 of 5 folds; then a recipe round of its own (members counted by the latency
rule, guarded on the validation split and the ham10000_dev tune half) before the test split is read.
Outcome: -0.018 pooled (0.752 against 0.770), 2 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 19 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_batch96 --baseline
research/recipe_rounds/cv_round9.json``): every Disease batch holds 16 images of each diagnosis (48), so an anchor meets
at most 32 images of the other two diagnoses, and the loss is averaged over the triplets still active. Metric
learning usually gains from more negatives per anchor, the hard ones being rare. ``d_batch96`` draws batches of
96 (32 per diagnosis): the same images per epoch and the same three epochs, so the same compute, half the
optimiser steps and about eight times the in-batch triplets per step; all else default, round 9's seeds and
thread count. Rule, fixed before it ran (:func:`decide_single_change`): the setting joins the recipe if
``d_batch96+distance`` beats round 9's ``d_default+distance`` by more than 0.01 pooled mean AUC and wins at
least 4 of 5 folds; then a recipe round of its own (eight members, guarded on the validation split and the
ham10000_dev tune half) before the test split is read.
Outcome: -0.023 pooled (0.747 against 0.770), 1 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).

Round 20 (CPU, third split again: ``--fold-seed 2 --workers 2 --disease d_batch24 --baseline
research/recipe_rounds/cv_round9.json``): round 19's larger batches came with half the optimiser steps and lost 0.023,
lower at every k. The other direction: ``d_batch24`` draws batches of 24 (8 per diagnosis), the same images and three
epochs, so the same compute, twice the optimiser steps (about 200 a fold) and fewer in-batch triplets per step;
all else default, round 9's seeds and thread count. Rule, fixed before it ran (:func:`decide_single_change`):
the setting joins the recipe if ``d_batch24+distance`` beats round 9's ``d_default+distance`` by more than 0.01
pooled mean AUC and wins at least 4 of 5 folds; then a recipe round of its own (eight members, guarded on the
validation split and the ham10000_dev tune half) before the test split is read.
Outcome: -0.019 pooled (0.752 against 0.770), 2 of 5 folds: not adopted (research/recipe_rounds/recipe_rounds.md).
Rounds 13-20 each compared against seed 0 of ``d_default``, the higher of its two seeds (round 11: 0.770 and
0.753); ``research/recipe_rounds/cv_seed_yardstick.py`` sets every candidate beside both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from research._common import ISIC

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = ISIC
KS = (3, 5, 10, 20, 40)
N_FOLDS = 5

# Disease candidates: (model settings, training settings), trained from ImageNet weights
DISEASE: dict[str, tuple[dict, dict]] = {
    "d_default": ({}, {}),
    "d_e5": ({}, {"epochs": 5}),
    "d_256": ({"image_size": 256}, {}),
    "d_ema": ({}, {"ema_decay": 0.98}),
    "d_e5_step": ({}, {"epochs": 5, "lr_step": 3}),  # learning rates / 10 for the last two epochs
    "d_norm_e5": ({"normalize": True}, {"epochs": 5}),
    "d_colour": ({"colour": "shades_of_gray"}, {"colour_jitter": 0.2}),
    "d_lite1": ({"backbone": "efficientnet_lite1", "image_size": 240}, {}),
    "d_ham": ({}, {}),  # + ham10000_dev in training (EXTRA_DATA)
    # round 11: another seed of d_default, and EfficientNet-Lite1 at Lite0's input (ensemble members must
    # share one input size), judged as the second member beside d_default by research/recipe_rounds/cv_members.py
    "d_reseed": ({}, {"seed_shift": 100}),
    "d_lite1_224": ({"backbone": "efficientnet_lite1"}, {}),
    # round 13: + a diagnosis classifier's cross-entropy on the embedding (research/recipe_rounds/ce_term.py; the
    # product's TrainConfig.ce_weight it was run with left after this round)
    "d_ce": ({}, {"ce_weight": 1.0}),
    # round 14: Lite2 at its native 260 (the 256 images loaded at 260)
    "d_lite2": ({"backbone": "efficientnet_lite2", "image_size": 260, "load_size": 260}, {}),
    # round 15: longer training with stronger augmentation
    "d_long_aug": ({}, {"epochs": 6, "lr_step": 4, "zoom": 1.25, "colour_jitter": 0.2}),
    # round 16: the stem alone frozen (Lite0's default freezes 6 stages, down to 1/8 resolution)
    "d_freeze1": ({"freeze_stages": 1}, {}),
    # round 17: a 256-d embedding instead of the paper's 1024
    "d_dim256": ({"embedding_dim": 256}, {}),
    # round 18: the first 12 stages frozen (down to 1/16 resolution) instead of 6
    "d_freeze12": ({"freeze_stages": 12}, {}),
    # round 19: batches of 96 (32 per diagnosis) instead of 48
    "d_batch96": ({}, {"batch_size": 96}),
    # round 20: batches of 24 (8 per diagnosis): twice the optimiser steps
    "d_batch24": ({}, {"batch_size": 24}),
}
# Disease candidates trained on more than the four ISIC folds: the extra source (a --ham folder)
EXTRA_DATA = {"d_ham": "ham"}
# scorings of a Disease candidate's models beside the plain one (round 8): "+distance", "+archive_ham"
# Hierarchical candidates: (Disease candidate fine-tuned, training settings); priority order
HIER: dict[str, tuple[str, dict]] = {
    "h_default": ("d_default", {}),
    "h_lowlr": ("d_default", {"lr_backbone": 3e-5, "lr_head": 3e-4}),
    "h_e4": ("d_default", {"epochs": 4}),
    "h_m8": ("d_default", {"m_per_class": 8}),
    "h_from_e5": ("d_e5", {}),
    "h_from_256": ("d_256", {}),
    "h_ema": ("d_ema", {"ema_decay": 0.98}),
    "h_from_e5_step": ("d_e5_step", {}),
    "h_from_norm_e5": ("d_norm_e5", {}),
    "h_ema_lowlr": ("d_ema", {"ema_decay": 0.98, "lr_backbone": 3e-5, "lr_head": 3e-4}),
    # other numbers of ENHANCE groups per disease (the paper's are 20 / 12 / 15), same 1000 images
    "h_groups_half": ("d_default", {"groups_per_disease": {"melanoma": 10, "seborrheic_keratosis": 6, "nevus": 8}}),
    "h_groups_quarter": ("d_default", {"groups_per_disease": {"melanoma": 5, "seborrheic_keratosis": 3, "nevus": 4}}),
    "h_groups_double": (
        "d_default",
        {"groups_per_disease": {"melanoma": 40, "seborrheic_keratosis": 24, "nevus": 30}},
    ),
    "h_colour": ("d_colour", {"colour_jitter": 0.2}),  # colour constancy comes with the Disease model
    "h_lite1": ("d_lite1", {}),  # the backbone comes with the Disease model
}
# candidates judged against a baseline run on the same split (rounds 6, 7): Hierarchical -> its Disease
PAIRED = {"h_colour": "d_colour", "h_lite1": "d_lite1"}
DEFAULT_HIER = "h_default"


def _extra_terms(t_set: dict) -> tuple[dict, list]:
    """A candidate's training settings as ``TrainConfig`` takes them, and the loss terms it adds: ``ce_weight``
    (round 13) left the product's settings and is now ``research/recipe_rounds/ce_term.py``."""
    t_cfg = dict(t_set)
    weight = t_cfg.pop("ce_weight", 0.0)
    if not weight:
        return t_cfg, []
    from research.recipe_rounds.ce_term import CrossEntropyTerm

    return t_cfg, [CrossEntropyTerm(weight)]


def folds_of(diagnoses: list[str], fold_seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    fold = np.empty(len(diagnoses), np.int64)
    skf = StratifiedKFold(N_FOLDS, shuffle=True, random_state=fold_seed)
    for f, (_, held) in enumerate(skf.split(np.zeros(len(diagnoses)), diagnoses)):
        fold[held] = f
    return fold


def _tables(isic: Path, limit: int):
    """The training and validation tables; ``limit`` > 0 keeps that many training images (smoke runs)."""
    from chaiderm.data.records import load_table

    tr_t, va_t = load_table(isic, "train"), load_table(isic, "val")
    if limit:
        rng = np.random.default_rng(0)
        tr_t = tr_t.subset(np.sort(rng.choice(len(tr_t), limit, replace=False)))
    return tr_t, va_t


VIEWS_SCORED = ("d_default", "h_groups_half")  # the models --views also scores with test-time views
VIEW_COST_ORDER = ("flip", "flip4")  # cheapest first


def _neighbour_labels(model, archive_img, query_img, y_archive, size: int, views: str = "none") -> np.ndarray:
    from chaiderm.index.faiss_index import nearest_images

    return y_archive[nearest_images(model, archive_img, query_img, size, max(KS), views=views)]


def _embedded(model, images: np.ndarray, size: int, views: str = "none") -> np.ndarray:
    from chaiderm.models.inference import embed

    return embed(model, images, size, views=views)[0]


def _entries(
    arch: np.ndarray, queries: np.ndarray, val: np.ndarray, y_arch: np.ndarray, base: dict, since: float
) -> tuple[dict, dict]:
    """One scoring of held-out and validation queries, with neighbour distances: its uniform-vote entry and
    the same entry read with distance-weighted votes."""
    lab, dist = _neighbours_of(arch, queries, y_arch)
    va_lab, va_dist = _neighbours_of(arch, val, y_arch)
    plain = {
        **base,
        "neighbour_melanoma": lab,
        "neighbour_distance": dist,
        "val_neighbour_melanoma": va_lab,
        "val_neighbour_distance": va_dist,
        "seconds": time.perf_counter() - since,
    }
    return plain, {**plain, "vote": "distance"}


def _neighbours_of(archive: np.ndarray, queries: np.ndarray, y_archive: np.ndarray) -> tuple[list, list]:
    """Melanoma labels and squared distances of each query's nearest archive rows (embeddings in)."""
    from chaiderm.index.faiss_index import exact_search

    dist, rows = exact_search(archive, queries, max(KS))
    return y_archive[rows].tolist(), dist.astype(float).round(6).tolist()


def run_fold(
    fold: int,
    isic: Path,
    enhance: Path,
    work: Path,
    out: Path,
    device: str,
    deadline: float,
    limit: int = 0,
    fold_seed: int = 0,
    only: tuple[str, ...] = (),
    workers: int = N_FOLDS,
    views: tuple[str, ...] = (),
    disease: tuple[str, ...] = (),
    ham: Path | None = None,
) -> None:
    """Train and score every candidate on one fold; results go to ``out/fold<f>.json`` as they finish.

    ``disease``: train and score only these Disease candidates (no Hierarchical ones; round 8)."""
    import torch

    from chaiderm._io import write_json
    from chaiderm.config import ModelConfig, RunConfig, TrainConfig
    from chaiderm.data.enhance import GROUP_FILES, PAPER_GROUPS, enhance_groups, read_enhance, write_group_files
    from chaiderm.data.records import attach_groups, load_table
    from chaiderm.data.transforms import prepare
    from chaiderm.models.embedding import load_model
    from chaiderm.models.ensemble import set_member_threads
    from chaiderm.training import train

    threads = max(1, (os.cpu_count() or 2) // min(workers, N_FOLDS))
    torch.set_num_threads(threads)
    set_member_threads(threads)  # folds side by side share the cores: an ensemble's members too
    tr_t, va_t = _tables(isic, limit)
    full = load_table(isic, "train")  # groups come from every rated image, also in a --limit smoke run
    ratings = read_enhance(enhance)
    grouped: dict[str, object] = {}

    def grouped_for(per_disease: dict | None):
        # candidates without their own numbers use the paper's 20 / 12 / 15, the package default (10 / 6 / 8
        # was the default between rounds 3 and 5)
        per_disease = per_disease or PAPER_GROUPS
        key = json.dumps(per_disease, sort_keys=True)
        if key not in grouped:
            # each process writes its own copy: no race on one folder
            gdir = work / f"groups_f{fold}_{len(grouped)}"
            parts = enhance_groups(ratings, full.image_ids, full.diagnoses, groups_per_disease=per_disease)
            write_group_files(parts, gdir)
            grouped[key] = attach_groups(tr_t, gdir / GROUP_FILES["finetune"])
        return grouped[key]

    fold_of = folds_of(tr_t.diagnoses, fold_seed)
    seed = N_FOLDS * fold_seed + fold  # another split also means other training seeds
    keep = np.flatnonzero(fold_of != fold)
    held = np.flatnonzero(fold_of == fold)
    imgs = prepare(tr_t.paths, 256)[0]
    va_img = prepare(va_t.paths, 256)[0]
    y = tr_t.is_positive("melanoma")
    result: dict = {"fold": fold, "held": held.tolist(), "candidates": {}}
    chunk = 48 if device.startswith("cuda") else 16
    cap = {"epochs": 1} if limit else {}  # a smoke run only checks that everything runs

    ham_t = ham_img = None
    if ham is not None:
        ham_t = load_table(ham)
        ham_img = prepare(ham_t.paths, 256)[0]

    def score_round8(name: str, run: Path, t0: float, **extra) -> None:
        """Plain, distance-weighted, archive+ham and test-time-view scorings of one Disease model."""
        model, cfg = load_model(run)
        model.to(device)
        size = cfg.model.image_size
        t_imgs, t_va = imgs, va_img
        if cfg.model.load_size != 256:  # a model loaded at another size (round 14) sees its own inputs
            t_imgs = prepare(tr_t.paths, cfg.model.load_size)[0]
            t_va = prepare(va_t.paths, cfg.model.load_size)[0]
        arch, q, va = (_embedded(model, x, size) for x in (t_imgs[keep], t_imgs[held], t_va))
        base = {"history": json.loads((run / "history.json").read_text()), **extra}
        cands = result["candidates"]
        cands[name], cands[f"{name}+distance"] = _entries(arch, q, va, y[keep], base, t0)
        if ham_img is not None:
            arch2 = np.concatenate([arch, _embedded(model, ham_img, size)])
            y2 = np.concatenate([y[keep], ham_t.is_positive("melanoma")])
            cands[f"{name}+archive_ham"], cands[f"{name}+archive_ham+distance"] = _entries(arch2, q, va, y2, base, t0)
        for v in views:  # round 9: the same weights, every image embedded as the mean of mirrored copies
            t1 = time.perf_counter()
            arch_v, q_v, va_v = (_embedded(model, x, size, v) for x in (imgs[keep], imgs[held], va_img))
            cands[f"{name}+{v}"], cands[f"{name}+{v}+distance"] = _entries(
                arch_v, q_v, va_v, y[keep], {**base, "views": v}, t1
            )
        write_json(out / f"fold{fold}.json", result)
        print(f"fold {fold} {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    if disease:
        from chaiderm.data.records import concat_tables

        for d_name in disease:
            if time.time() > deadline:
                break
            t0 = time.perf_counter()
            m_set, t_set = DISEASE[d_name]
            t_set = dict(t_set)
            shift = t_set.pop("seed_shift", 0)  # another draw of the same candidate on the same folds
            t_cfg, terms = _extra_terms(t_set)
            table = tr_t.subset(keep)
            if EXTRA_DATA.get(d_name) == "ham":
                if ham_t is None:
                    raise SystemExit(f"{d_name} needs --ham")
                table = concat_tables(table, ham_t)
            cfg = RunConfig(
                model=ModelConfig(**{"load_size": 256, **m_set}),
                train=TrainConfig(
                    **{
                        "logic": "disease",
                        "epochs": 3,
                        "seed": seed + shift,
                        "val_k": 20,
                        "chunk_size": chunk,
                        **t_cfg,
                        **cap,
                    }
                ),
            )
            d_run = work / f"{d_name}_f{fold}"
            train(cfg, table, d_run, val_table=va_t, force=True, device=device, extra_terms=terms)
            score_round8(d_name, d_run, t0, model=m_set, train=t_set, n_train=len(table))
        return

    def score(name: str, run: Path, t0: float, **extra) -> None:
        model, cfg = load_model(run)
        model.to(device)
        size = cfg.model.image_size
        result["candidates"][name] = {
            "neighbour_melanoma": _neighbour_labels(model, imgs[keep], imgs[held], y[keep], size).tolist(),
            "val_neighbour_melanoma": _neighbour_labels(model, imgs[keep], va_img, y[keep], size).tolist(),
            "history": json.loads((run / "history.json").read_text()),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
        if name in VIEWS_SCORED:
            for v in views:  # the same weights, embedded as the average of mirrored copies
                t1 = time.perf_counter()
                result["candidates"][f"{name}+{v}"] = {
                    **result["candidates"][name],
                    "neighbour_melanoma": _neighbour_labels(model, imgs[keep], imgs[held], y[keep], size, v).tolist(),
                    "val_neighbour_melanoma": _neighbour_labels(model, imgs[keep], va_img, y[keep], size, v).tolist(),
                    "seconds": time.perf_counter() - t1,
                    "views": v,
                }
        write_json(out / f"fold{fold}.json", result)
        print(f"fold {fold} {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    for h_name, (d_name, h_set) in HIER.items():
        if only and h_name not in only:
            continue
        if time.time() > deadline:
            break
        d_run = work / f"{d_name}_f{fold}"
        if d_name not in result["candidates"]:
            t0 = time.perf_counter()
            m_set, t_set = DISEASE[d_name]
            t_cfg, terms = _extra_terms(t_set)
            cfg = RunConfig(
                model=ModelConfig(**{"load_size": 256, **m_set}),
                train=TrainConfig(
                    **{"logic": "disease", "epochs": 3, "seed": seed, "val_k": 20, "chunk_size": chunk, **t_cfg, **cap}
                ),
            )
            train(cfg, tr_t.subset(keep), d_run, val_table=va_t, force=True, device=device, extra_terms=terms)
            score(d_name, d_run, t0, model=m_set, train=t_set)
        if time.time() > deadline:
            break
        t0 = time.perf_counter()
        h_set = dict(h_set)
        table = grouped_for(h_set.pop("groups_per_disease", None))
        cfg = RunConfig(
            train=TrainConfig(
                **{"logic": "hierarchical", "epochs": 2, "seed": seed, "val_k": 20, "chunk_size": chunk, **h_set, **cap}
            )
        )
        h_run = work / f"{h_name}_f{fold}"
        train(cfg, table.subset(keep), h_run, val_table=va_t, init=d_run, force=True, device=device)
        score(h_name, h_run, t0, init=d_name, train=HIER[h_name][1])


def _auc(neigh: np.ndarray, y: np.ndarray, dist: np.ndarray | None = None, vote: str = "uniform") -> dict[str, float]:
    from chaiderm.evaluation.metrics import calculate_auc_at_k

    return {str(k): float(v) for k, v in calculate_auc_at_k(neigh, y, KS, dist, vote).items()}


def _scored(c: dict, val: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A candidate's neighbour labels, distances (None before round 8) and vote, for test or validation."""
    pre = "val_" if val else ""
    dist = c.get(f"{pre}neighbour_distance")
    return (
        np.asarray(c[f"{pre}neighbour_melanoma"]),
        None if dist is None else np.asarray(dist),
        c.get("vote", "uniform"),
    )


def summarise(out: Path, isic: Path, limit: int = 0) -> dict:
    """Pool the per-fold files in ``out`` and apply the decision rule."""
    tr_t, va_t = _tables(isic, limit)
    folds = [
        json.loads((out / f"fold{f}.json").read_text()) for f in range(N_FOLDS) if (out / f"fold{f}.json").exists()
    ]
    return summarise_folds(folds, tr_t.is_positive("melanoma"), va_t.is_positive("melanoma"))


def summarise_folds(folds: list[dict], y: np.ndarray, y_va: np.ndarray) -> dict:
    """Per candidate: per-fold and pooled AUC@k of the held-out queries; then the decision rule.

    ``folds`` are the per-fold results of :func:`run_fold`; ``y`` / ``y_va`` say which training /
    validation images are melanoma.
    """
    seen = {n for f in folds for n in f["candidates"]}
    names = list(DISEASE) + list(HIER)
    names += sorted(n for n in seen if n not in names)  # "<candidate>+<views>" scorings
    table: dict[str, dict] = {}
    for name in names:
        got = [f for f in folds if name in f["candidates"]]
        if not got:
            continue
        per_fold = {}
        for f in got:
            c = f["candidates"][name]
            auc = _auc(*_split(_scored(c), y[f["held"]]))
            per_fold[f["fold"]] = {
                "auc": auc,
                "mean": float(np.mean(list(auc.values()))),
                "val_mean": float(np.mean(list(_auc(*_split(_scored(c, val=True), y_va)).values()))),
                "best_epoch": c["history"][-1]["best_epoch"],
                "seconds": c["seconds"],
            }
        entry = {"folds": sorted(per_fold), "per_fold": per_fold}
        if len(got) == N_FOLDS:
            parts = [_scored(f["candidates"][name]) for f in got]
            neigh = np.concatenate([p[0] for p in parts])
            dist = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
            held = np.concatenate([f["held"] for f in got])
            pooled = _auc(neigh, y[held], dist, parts[0][2])
            entry.update(pooled_auc=pooled, pooled_mean=float(np.mean(list(pooled.values()))))
            entry["val_mean_over_folds"] = float(np.mean([p["val_mean"] for p in per_fold.values()]))
        table[name] = entry
    decision = "defaults stay"
    chosen = DEFAULT_HIER
    base = table.get(DEFAULT_HIER, {})
    finished = {n: e for n, e in table.items() if n in HIER and "pooled_mean" in e}
    if "pooled_mean" in base and finished:
        best = max(finished, key=lambda n: finished[n]["pooled_mean"])
        margin = finished[best]["pooled_mean"] - base["pooled_mean"]
        wins = sum(finished[best]["per_fold"][f]["mean"] > base["per_fold"][f]["mean"] for f in base["per_fold"])
        if best != DEFAULT_HIER and margin > 0.01 and wins >= 4:
            chosen, decision = best, f"{best} replaces the defaults (+{margin:.3f}, wins {wins}/5 folds)"
        else:
            decision = f"defaults stay (best {best}: {margin:+.3f}, wins {wins}/5 folds)"
    return {"candidates": table, "chosen": chosen, "decision": decision}


def _split(scored: tuple, y: np.ndarray) -> tuple:
    neigh, dist, vote = scored
    return neigh, y, dist, vote


def _paired(table: dict, a: str, b: str, margin: float) -> dict:
    """``a`` against ``b`` on the same split: pooled mean AUC gain, folds won, and whether it passes."""
    if any("pooled_mean" not in table.get(n, {}) for n in (a, b)):
        return {"passes": False, "why": "unfinished"}
    ea, eb = table[a], table[b]
    gain = ea["pooled_mean"] - eb["pooled_mean"]
    wins = sum(ea["per_fold"][f]["mean"] > eb["per_fold"][f]["mean"] for f in eb["per_fold"])
    return {"vs": b, "gain": gain, "wins": wins, "passes": bool(gain > margin and wins >= 4)}


def decide_round8(table: dict) -> dict:
    """Round 8's three rules (module docstring) on a :func:`summarise_folds` table with round 5's baseline."""
    data = _paired(table, "d_ham", "d_default", 0.01)
    vote = _paired(table, "d_ham+distance", "d_ham", 0.005)
    plain, with_ham = (
        ("d_ham+distance", "d_ham+archive_ham+distance") if vote["passes"] else ("d_ham", "d_ham+archive_ham")
    )
    archive = _paired(table, "d_ham+archive_ham", "d_ham", 0.005)
    if vote["passes"]:
        both = _paired(table, with_ham, plain, 0.005)
        archive = {**archive, "with_distance": both, "passes": archive["passes"] and both["passes"]}
    return {"training_data": data, "vote": vote, "archive": archive}


def decide_round9(table: dict, base: str = "d_default") -> dict:
    """Round 9's rule (module docstring): test-time views for the recipe's Disease members, distance votes."""
    plain = f"{base}+distance"
    report = {v: _paired(table, f"{base}+{v}+distance", plain, 0.005) for v in VIEW_COST_ORDER}
    chosen = "none"
    for v in VIEW_COST_ORDER:  # cheapest first; a dearer view set must add another 0.005 over the one chosen
        if not report[v]["passes"]:
            continue
        if chosen == "none" or report[v]["gain"] > report[chosen]["gain"] + 0.005:
            chosen = v
    return {"views": report, "chosen": chosen}


# Rounds 13-20 each judged one Disease candidate against round 9's ``d_default``, distance votes, by one rule
# (module docstring): more than 0.01 pooled mean AUC and at least 4 of 5 folds. candidate: (summary key, rule name)
SINGLE_CHANGE_ROUNDS = {
    "d_ce": ("round13_rules", "ce_weight"),
    "d_lite2": ("round14_rules", "lite2"),
    "d_long_aug": ("round15_rules", "long_aug"),
    "d_freeze1": ("round16_rules", "freeze1"),
    "d_dim256": ("round17_rules", "dim256"),
    "d_freeze12": ("round18_rules", "freeze12"),
    "d_batch96": ("round19_rules", "batch96"),
    "d_batch24": ("round20_rules", "batch24"),
}


def decide_single_change(table: dict, candidate: str) -> dict:
    """The rule of rounds 13-20 for ``candidate`` (a key of :data:`SINGLE_CHANGE_ROUNDS`)."""
    name = SINGLE_CHANGE_ROUNDS[candidate][1]
    return {name: _paired(table, f"{candidate}+distance", "d_default+distance", 0.01)}


def decide_views(table: dict, hier: str = "h_groups_half", disease: str = "d_default") -> dict:
    """Round 4's rule for test-time views (module docstring), on a :func:`summarise_folds` table."""
    base, dbase = table.get(hier, {}), table.get(disease, {})
    passed: dict[str, float] = {}
    report: dict[str, dict] = {}
    for name in sorted(table):
        if not name.startswith(hier + "+") or "pooled_mean" not in table[name] or "pooled_mean" not in base:
            continue
        v = name.split("+", 1)[1]
        e = table[name]
        gain = e["pooled_mean"] - base["pooled_mean"]
        wins = sum(e["per_fold"][f]["mean"] > base["per_fold"][f]["mean"] for f in base["per_fold"])
        d = table.get(f"{disease}+{v}", {})
        d_gain = d["pooled_mean"] - dbase["pooled_mean"] if "pooled_mean" in d and "pooled_mean" in dbase else None
        ok = gain > 0.005 and wins >= 4 and d_gain is not None and d_gain >= 0
        report[v] = {"gain": gain, "wins": wins, "disease_gain": d_gain, "passes": ok}
        if ok:
            passed[v] = gain
    chosen = "none"
    for v in sorted(passed, key=VIEW_COST_ORDER.index):
        # cheapest first; a dearer view set must add another 0.005 over the one chosen so far
        if chosen == "none" or passed[v] > passed[chosen] + 0.005:
            chosen = v
    return {"views": report, "chosen": chosen}


def merge_baseline(table: dict, baseline: dict) -> dict:
    """Candidates of another run on the same split (a :func:`summarise_folds` result read from JSON)
    added to ``table`` where it lacks them; per-fold keys back to ints, as in a fresh table."""
    out = dict(table)
    for name, e in baseline["candidates"].items():
        if name not in out:
            out[name] = {**e, "per_fold": {int(f): v for f, v in e["per_fold"].items()}, "from_baseline": True}
    return out


def decide_pair(table: dict, hier: str, disease: str) -> dict:
    """Rounds 6-7: ``hier`` (fine-tuned from ``disease``) replaces the defaults if its pooled mean AUC beats
    the default Hierarchical model's by more than 0.01, it wins at least 4 of 5 folds, and ``disease`` is
    not below the default Disease model."""
    need = (hier, disease, DEFAULT_HIER, "d_default")
    if any("pooled_mean" not in table.get(n, {}) for n in need):
        return {"adopt": False, "why": "unfinished"}
    h, hb = table[hier], table[DEFAULT_HIER]
    gain = h["pooled_mean"] - hb["pooled_mean"]
    wins = sum(h["per_fold"][f]["mean"] > hb["per_fold"][f]["mean"] for f in hb["per_fold"])
    d_gain = table[disease]["pooled_mean"] - table["d_default"]["pooled_mean"]
    return {
        "gain": gain,
        "wins": wins,
        "disease_gain": d_gain,
        "adopt": bool(gain > 0.01 and wins >= 4 and d_gain >= 0),
    }


def compare_over_splits(splits: list[dict], a: str = "h_groups_half", b: str = "h_default") -> dict:
    """Round 4's groups rule: per-fold mean AUC of ``a`` minus ``b`` over the folds of several splits
    (each a :func:`summarise_folds` result)."""
    diffs = []
    for s in splits:
        ca, cb = s["candidates"].get(a), s["candidates"].get(b)
        if not ca or not cb:
            continue
        for f, pa in ca["per_fold"].items():
            if f in cb["per_fold"]:
                diffs.append(pa["mean"] - cb["per_fold"][f]["mean"])
    n = len(diffs)
    mean = float(np.mean(diffs)) if diffs else float("nan")
    wins = int(sum(d > 0 for d in diffs))
    # every fold of at least two splits; two thirds of the folds won (7 of 10, 10 of 15)
    keep = n == N_FOLDS * len(splits) and len(splits) >= 2 and mean > 0.01 and 3 * wins >= 2 * n
    return {
        "folds": n,
        "mean_diff": mean,
        "sd_diff": float(np.std(diffs, ddof=1)) if n > 1 else None,
        "wins": wins,
        "keeps": a if keep else b,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    ap.add_argument("--enhance", type=Path, default=DEFAULT_ISIC.parent / "enhance")
    ap.add_argument("--work", type=Path, default=Path("/tmp/chaiderm_cv"), help="trained fold models")
    ap.add_argument("--raw", type=Path, default=None, help="per-fold votes (default: WORK/raw)")
    ap.add_argument("--out", type=Path, default=HERE / "cv_selection.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=N_FOLDS, help="folds run at once")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new candidate after this many seconds")
    ap.add_argument("--limit", type=int, default=0, help="smoke run: this many training images, 1 epoch each")
    ap.add_argument("--fold-seed", type=int, default=0, help="another split (and training seeds 5s..5s+4)")
    ap.add_argument("--only", nargs="*", choices=sorted(HIER), default=(), help="Hierarchical candidates to run")
    ap.add_argument("--summarise-only", action="store_true", help="only pool the per-fold files in --raw")
    ap.add_argument(
        "--disease", nargs="*", choices=sorted(DISEASE), default=(), help="only these Disease candidates (round 8)"
    )
    ap.add_argument("--ham", type=Path, default=DEFAULT_ISIC.parent / "ham10000_dev", help="ham10000_dev folder")
    ap.add_argument(
        "--views",
        nargs="*",
        choices=VIEW_COST_ORDER,
        default=(),
        help=f"also score {', '.join(VIEWS_SCORED)} with these views",
    )
    ap.add_argument("--other-split", type=Path, nargs="*", default=(), help="summaries of other splits (groups rule)")
    ap.add_argument(
        "--baseline", type=Path, default=None, help="summary of an earlier run on the same split (candidates it lacks)"
    )
    a = ap.parse_args()
    import multiprocessing as mp

    from chaiderm._io import write_json

    raw = a.raw or a.work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not a.summarise_only:
        deadline = t0 + a.budget_s
        ctx = mp.get_context("spawn")  # CUDA cannot be shared with forked processes
        with ctx.Pool(a.workers) as pool:
            pool.starmap(
                run_fold,
                [
                    (
                        f,
                        a.isic,
                        a.enhance,
                        a.work,
                        raw,
                        a.device,
                        deadline,
                        a.limit,
                        a.fold_seed,
                        tuple(a.only),
                        a.workers,
                        tuple(a.views),
                        tuple(a.disease),
                        a.ham if any(d in EXTRA_DATA for d in a.disease) else None,
                    )
                    for f in range(N_FOLDS)
                ],
            )
    summary = summarise(raw, a.isic, a.limit)
    if a.baseline:
        base = json.loads(a.baseline.read_text())
        if base.get("fold_seed", 0) != a.fold_seed:
            raise SystemExit(f"{a.baseline}: fold seed {base.get('fold_seed', 0)}, not {a.fold_seed}")
        summary["candidates"] = merge_baseline(summary["candidates"], base)
        summary["paired_rules"] = {
            h: decide_pair(summary["candidates"], h, d) for h, d in PAIRED.items() if h in summary["candidates"]
        }
    summary["fold_seed"] = a.fold_seed
    # CPU training is deterministic only for a given thread count: runs with other --workers are other draws
    summary["threads_per_fold"] = max(1, (os.cpu_count() or 2) // min(a.workers, N_FOLDS))
    if "d_ham" in a.disease:
        summary["round8_rules"] = decide_round8(summary["candidates"])
    for cand, (key, _) in SINGLE_CHANGE_ROUNDS.items():
        if cand in a.disease:
            summary[key] = decide_single_change(summary["candidates"], cand)
    if a.disease and a.views:
        summary["round9_rules"] = decide_round9(summary["candidates"])
    if a.views and not a.disease:
        summary["views_rule"] = decide_views(summary["candidates"])
    if a.other_split:
        summary["groups_rule"] = compare_over_splits([*(json.loads(p.read_text()) for p in a.other_split), summary])
    import torch

    summary.update(
        machine=f"{platform.machine()}, {os.cpu_count()} cores, device {a.device}"
        + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else "")
        + f", torch {torch.__version__}",
        date=datetime.date.today().isoformat(),
        wall_s=time.time() - t0,
        disease_candidates=DISEASE,
        hierarchical_candidates=HIER,
    )
    write_json(a.out, summary)
    for name, e in summary["candidates"].items():
        if "pooled_mean" in e:
            print(
                name,
                " ".join(f"{v:.3f}" for v in e["pooled_auc"].values()),
                f"mean {e['pooled_mean']:.3f}",
                f"val {e['val_mean_over_folds']:.3f}",
            )
        else:
            print(name, f"unfinished ({len(e['folds'])} folds)")
    print(summary["decision"])
    for key in summary:
        if key.endswith(("_rule", "_rules")):
            print(key, json.dumps(summary[key]))


if __name__ == "__main__":
    main()
