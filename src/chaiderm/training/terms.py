"""The loss terms of a training step, each a small object in one list (``training.loop``).

A term is called with the step's :class:`Batch` and returns an unweighted scalar; the step adds
``weight * value`` of each. *Batch* terms (``whole = False``) score the network's output on the batch,
gathered from every process under torchrun; *whole* terms (``whole = True``) run their own forward pass on
data of their own, computed whole by every process and scaled by 1 / processes, so the gradients' sum is
exact. A caller adds terms of its own through ``train(..., extra_terms=[...])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from chaiderm.config import RunConfig
from chaiderm.data.images import load_image
from chaiderm.data.records import ImageTable
from chaiderm.data.transforms import augment, center_crop, mask_as_seen, prepare, resize_square, to_tensor
from chaiderm.errors import DataError
from chaiderm.losses.logic import get_rule
from chaiderm.losses.triplet import ChaiTripletLoss, chai_triplet_loss
from chaiderm.models.embedding import EmbeddingNet
from chaiderm.storage.feedback import FeedbackTriplets


@dataclass
class Batch:
    """What a term sees of one training step."""

    model: EmbeddingNet
    out: torch.Tensor  # the whole batch's output: embeddings, or logits for the classifier logic
    diagnoses: np.ndarray  # diagnosis code per batch image
    groups: np.ndarray  # similarity-group code per batch image (-1: none)
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # fixed triplets (random protocol)
    rng: np.random.Generator  # the epoch's generator: a term drawing from it keeps the run repeatable
    device: torch.device


@runtime_checkable
class LossTerm(Protocol):
    weight: float
    whole: bool

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        """Called once, right after the model is built and before the optimiser sees its parameters: a
        term that needs a layer of its own adds it here (and records it in ``cfg``, the run's own copy)."""

    def __call__(self, batch: Batch) -> torch.Tensor: ...


def forward_chunks(x: torch.Tensor, chunk: int, fn) -> torch.Tensor:
    # small chunks keep activations in cache on CPU; one backward runs over all of them
    return torch.cat([fn(c) for c in x.split(chunk)])


def train_input(model: EmbeddingNet, imgs: np.ndarray, cfg: RunConfig, rng: np.random.Generator) -> torch.Tensor:
    """Augmented training batch: random crop, flips and turns, the model's colour normalisation, jitter."""
    crops = augment(imgs, cfg.model.image_size, rng, cfg.train.zoom)
    return to_tensor(crops, model.mean, model.std, colour=model.colour, jitter=cfg.train.colour_jitter, rng=rng)


def add_classifier(model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
    """A diagnosis classifier on the pooled map, unless the model (fine-tuned from one) has it already."""
    if model.classifier is None:
        cfg.model.n_classes = n_classes
        model.classifier = torch.nn.Linear(model.dim, n_classes)


class TripletTerm:
    """Eq. 1 under the run's logic, on the batch's embeddings (mined in-batch, or the given triplets)."""

    whole = False

    def __init__(self, cfg: RunConfig):
        t = cfg.train
        self.weight = 1.0
        self.loss = ChaiTripletLoss(get_rule(t.logic), t.margin, t.reduction)

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        pass

    def __call__(self, b: Batch) -> torch.Tensor:
        return self.loss(b.out, b.diagnoses, b.groups, indices_tuple=b.triplets)


class ClassifierTerm:
    """Multiclass cross-entropy on the classifier's logits (the classifier logic, BaselineFT)."""

    whole = False
    weight = 1.0

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        add_classifier(model, cfg, n_classes)

    def __call__(self, b: Batch) -> torch.Tensor:
        return F.cross_entropy(b.out, torch.from_numpy(b.diagnoses).to(b.device))


class FeedbackTerm:
    """Eq. 1 on user-judged triplets (query, clicked similar, clicked not similar)."""

    whole = True

    def __init__(self, fb: FeedbackTriplets, images: np.ndarray, image_ids: list[str], cfg: RunConfig):
        rows = {iid: i for i, iid in enumerate(image_ids)}
        trip = [(q, rows[p], rows[n]) for q, p, n in fb.triplets if p in rows and n in rows]
        if not trip:
            raise DataError(None, "feedback: no usable (similar, not similar) pair refers to a training image")
        load = cfg.model.load_size
        self.queries = np.stack(
            [resize_square(load_image(b, name=f"feedback query {i}"), load) for i, b in enumerate(fb.query_images)]
        )
        self.triplets = np.asarray(trip, dtype=np.int64)  # query index, similar row, not-similar row
        self.images, self.cfg, self.weight = images, cfg, cfg.train.feedback_weight

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        pass

    def __call__(self, b: Batch) -> torch.Tensor:
        cfg, model = self.cfg, b.model
        n = min(len(self.triplets), max(1, cfg.train.batch_size // 6))
        pick = self.triplets[b.rng.choice(len(self.triplets), n, replace=False)]
        imgs = np.concatenate([self.queries[pick[:, 0]], self.images[pick[:, 1]], self.images[pick[:, 2]]])
        x = train_input(model, imgs, cfg, b.rng).to(b.device)
        emb = forward_chunks(x, cfg.train.chunk_size, model)
        return chai_triplet_loss(emb[:n], emb[n : 2 * n], emb[2 * n :], cfg.train.margin).mean()


class MaskTerm:
    """Teach the evidence maps where lesions are: each masked image's QAM against another masked image
    (Eq. 2, the per-dimension weights held fixed) should put its mass inside the lesion and, scaled to
    its maximum, overlap the lesion (soft Dice). Both are measured on the map upsampled to the input,
    as the localisation metrics measure it."""

    whole = True

    def __init__(self, table: ImageTable, cfg: RunConfig):
        missing = [iid for iid, m in zip(table.image_ids, table.mask_paths, strict=True) if not m]
        if missing:
            raise DataError(
                table.source, f"mask supervision: {len(missing)} image(s) have no lesion mask, e.g. '{missing[0]}'"
            )
        if len(table) < 2:
            raise DataError(table.source, "mask supervision needs at least 2 images with masks")
        self.images = prepare(table.paths, cfg.model.load_size)[0]  # (N, S, S, 3) uint8 at load_size
        # (N, s, s) bool: the lesion on the centre crop the network sees
        self.masks = np.stack([mask_as_seen(p, cfg.model.load_size, cfg.model.image_size) for p in table.mask_paths])
        self.cfg, self.weight = cfg, cfg.train.mask_weight

    def prepare(self, model: EmbeddingNet, cfg: RunConfig, n_classes: int) -> None:
        pass

    def _views(self, pick: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        imgs = center_crop(self.images[pick], self.cfg.model.image_size)
        out_i, out_m = [], []
        for img, m in zip(imgs, self.masks[pick], strict=True):  # the same flips and turns for image and mask
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            img, m = np.rot90(img, k, axes=(0, 1)), np.rot90(m, k, axes=(0, 1))
            if flip:
                img, m = img[:, ::-1], m[:, ::-1]
            out_i.append(np.ascontiguousarray(img))
            out_m.append(np.ascontiguousarray(m))
        return np.stack(out_i), np.stack(out_m)

    def __call__(self, b: Batch) -> torch.Tensor:
        cfg, model = self.cfg, b.model
        n = min(len(self.images), max(2, cfg.train.batch_size // 3))
        imgs, masks = self._views(b.rng.choice(len(self.images), n, replace=False), b.rng)
        x = to_tensor(imgs, model.mean, model.std, colour=model.colour).to(b.device)
        mask = torch.from_numpy(masks).float().to(b.device)
        g = forward_chunks(x, cfg.train.chunk_size, model.forward_features)
        f = g.mean(dim=(2, 3))
        w = (f - f.roll(1, dims=0)).pow(2).detach()
        qam = torch.einsum("nd,ndhw->nhw", w, g)
        up = F.interpolate(qam[:, None], size=mask.shape[1:], mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
        eps = 1e-8
        mass = (up * mask).sum(dim=(1, 2)) / up.sum(dim=(1, 2)).clamp_min(eps)
        scaled = up / up.amax(dim=(1, 2), keepdim=True).clamp_min(eps)
        dice = 2 * (scaled * mask).sum(dim=(1, 2)) / (scaled.sum(dim=(1, 2)) + mask.sum(dim=(1, 2))).clamp_min(eps)
        s = cfg.train.mask_dice_share
        return (2 * ((1 - s) * (1 - mass) + s * (1 - dice))).mean()  # s = 0.5: the two terms, summed
