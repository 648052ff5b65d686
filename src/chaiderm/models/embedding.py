"""The CHAI embedding: backbone conv map -> conv to 1024 channels (+ReLU) -> global average pooling.

``forward_features`` gives the activation maps g_z(x, i, j) used as evidence, ``forward_head`` the
pooled vector f_z(x) (Eq. 3). When embeddings are L2-normalised, ``evidence_maps`` returns the maps
divided by ||f(x)||, so that the exact GAP of the returned maps *is* the embedding used for search,
and Eq. 2 computed on them decomposes the distance actually ranked on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from chaiderm._io import atomic_path
from chaiderm.config import ModelConfig, RunConfig, check_setting
from chaiderm.errors import ArtifactError
from chaiderm.models.fold import fold_batchnorms, refuse_if_folded
from chaiderm.models.registry import Backbone, create_backbone, set_map_stride, set_padding

EPS = 1e-12

# test-time views: the torch.flip dims (of an NCHW batch) of each view averaged into one embedding.
# Dermoscopic images have no canonical orientation, so a mirror is as valid a view as the original.
VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flip": ((), (3,)),  # the image and its left-right mirror
    "flip4": ((), (3,), (2,), (2, 3)),  # + the up-down mirror and both (a 180-degree turn)
}


def check_views(views: str) -> tuple[tuple[int, ...], ...]:
    """The flips of ``views`` (one of ``config.Views``), else a ``config.SettingError``."""
    return VIEWS[check_setting("views", views)]


class EmbeddingNet(nn.Module):
    def __init__(self, backbone: Backbone, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.freeze_stages = backbone.default_freeze if cfg.freeze_stages is None else cfg.freeze_stages
        self.freeze_stages = max(0, min(self.freeze_stages, len(backbone.stages)))
        for s in backbone.stages[: self.freeze_stages]:
            s.requires_grad_(False)
        if cfg.head == "conv":
            # the new layer the paper adds before GAP; 1x1 keeps the map resolution for evidence
            self.proj: nn.Module | None = nn.Conv2d(backbone.out_channels, cfg.embedding_dim, 1)
            self.dim = cfg.embedding_dim
        elif cfg.head == "none":
            self.proj = None
            self.dim = backbone.out_channels
        else:
            raise ArtifactError(f"unknown head '{cfg.head}' (use 'conv' or 'none')")
        self.classifier = nn.Linear(self.dim, cfg.n_classes) if cfg.n_classes > 0 else None

    @property
    def mean(self) -> tuple[float, ...]:
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.backbone.std

    @property
    def colour(self) -> str:
        """The colour normalisation every input of this model gets (``data.transforms.COLOURS``)."""
        return self.cfg.colour

    def train(self, mode: bool = True) -> EmbeddingNet:
        if mode:
            refuse_if_folded(self)
        super().train(mode)
        if mode and self.backbone.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def new_parameters(self) -> list[nn.Parameter]:
        """Randomly initialised layers (higher learning rate, as in the paper)."""
        mods = [m for m in (self.proj, self.classifier) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def transferred_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def forward_features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Activation maps g(x): ``(B, D, h, w)``, non-negative. ``start``: ``x`` is the output of the first
        ``start`` backbone stages already (an ensemble computes the stages its members share once)."""
        stages = self.backbone.stages
        if start < self.freeze_stages:
            with torch.no_grad():
                for s in stages[start : self.freeze_stages]:
                    x = s(x)
        for s in stages[max(start, self.freeze_stages) :]:
            x = s(x)
        if self.proj is not None:
            x = F.relu(self.proj(x))
        return x

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Eq. 3: f_z(x) = mean over positions of g_z(x, i, j)."""
        return fmap.mean(dim=(2, 3))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        f = self.pool(fmap)
        return F.normalize(f, dim=1, eps=EPS) if self.cfg.normalize else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise ArtifactError("this model has no classifier head")
        return self.classifier(self.pool(self.forward_features(x)))

    def evidence_maps(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(maps, embedding)`` with ``maps.mean((2, 3)) == embedding`` exactly."""
        g = self.forward_features(x, start)
        if self.cfg.normalize:
            norm = self.pool(g).norm(dim=1).clamp_min(EPS)
            g = g / norm.view(-1, 1, 1, 1)
        return g, self.pool(g)

    def fold(self) -> int:
        """Inference only: fold batch norms into their convolutions (``models.fold``); returns how many."""
        return fold_batchnorms(self, example_input(self.cfg.image_size))


def example_input(image_size: int) -> torch.Tensor:
    """A fixed random image batch of one, for passes that only look at the network's structure."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, image_size, image_size, generator=g).to(memory_format=torch.channels_last)


def build_model(cfg: ModelConfig, *, load_pretrained: bool = True) -> EmbeddingNet:
    """The network ``cfg`` describes (its values were checked when it was built). Records the backbone's
    default ``freeze_stages`` in ``cfg`` where it was left None, so a saved config names the concrete value."""
    if cfg.backbone == "ensemble":  # trained members only: nothing pretrained to load
        from chaiderm.models.ensemble import build_ensemble

        return build_ensemble(cfg).to(memory_format=torch.channels_last)
    bb = create_backbone(
        cfg.backbone, pretrained=cfg.pretrained and load_pretrained, weights=cfg.weights if load_pretrained else None
    )
    set_map_stride(set_padding(bb, cfg.padding), cfg.map_stride)
    model = EmbeddingNet(bb, cfg)
    if cfg.freeze_stages is None:
        cfg.freeze_stages = model.freeze_stages  # record the concrete value in saved configs
    return model.to(memory_format=torch.channels_last)


WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: EmbeddingNet, run_dir: str | Path, cfg: RunConfig, name: str = WEIGHTS) -> None:
    """Write weights (safetensors) and the full run config beside them, each atomically."""
    refuse_if_folded(model)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / name) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(cfg.to_dict())})
    cfg.save(run_dir / CONFIG)


def load_model(run_dir: str | Path, name: str = WEIGHTS, *, fold: bool = False) -> tuple[EmbeddingNet, RunConfig]:
    """Load a trained run folder (``config.json`` + ``model.safetensors``) in eval mode.

    ``fold``: batch norms folded into their convolutions, for the copy that only answers queries (faster;
    equal outputs to float rounding); such a copy refuses to train or to be saved."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise ArtifactError(f"{run_dir}: not a model run folder (no {CONFIG})")
    cfg = RunConfig.load(run_dir / CONFIG)
    wpath = run_dir / name
    if not wpath.exists():
        raise ArtifactError(f"{wpath}: weights file missing")
    model = build_model(cfg.model, load_pretrained=False)
    try:
        state = load_file(str(wpath))
    except Exception as e:
        raise ArtifactError(f"{wpath}: cannot read weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{wpath}: weights do not match {CONFIG} ({str(e)[:300]})") from None
    model.eval()
    if fold:
        model.fold()
        model.to(memory_format=torch.channels_last)  # folded weights come back in the default layout
    return model, cfg
