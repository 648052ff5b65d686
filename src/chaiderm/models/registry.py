"""Backbone registry: configs and the CLI name backbones by string (as timm's ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from chaiderm.errors import ArtifactError


class Backbone(nn.Module):
    """A CNN cut before its pooling, as an ordered list of stages.

    ``stages`` run in order and end with the conv map of ``out_channels`` channels; the first
    stages can be frozen. ``mean``/``std`` give the input scaling its weights were trained with.
    """

    def __init__(
        self,
        stages: list[nn.Module],
        out_channels: int,
        mean,
        std,
        *,
        default_freeze: int = 0,
        freeze_bn: bool = True,
    ):
        super().__init__()
        self.default_freeze = default_freeze  # leading stages frozen unless the config says otherwise
        self.freeze_bn = freeze_bn  # pretrained BN statistics stay fixed: small batches would spoil them
        self.stages = nn.ModuleList(stages)
        self.out_channels = out_channels
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            x = s(x)
        return x


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str):
    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def create_backbone(name: str, *, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build a registered backbone; ``weights`` loads a user file over the (optional) pretrained ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ArtifactError(f"unknown backbone '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    bb = _REGISTRY[name](pretrained=pretrained and weights is None)
    if weights is not None:
        load_backbone_weights(bb, weights, name)
    return bb


def load_backbone_weights(bb: Backbone, path: str | Path, name: str) -> None:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many kinds of error
        raise ArtifactError(f"{path}: cannot read weights ({e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    adapt = getattr(bb, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    missing, unexpected = bb.load_state_dict(state, strict=False)
    if missing:
        raise ArtifactError(f"{path}: weights do not fit backbone '{name}': missing {missing[:4]}")
    del unexpected  # classifier layers of a full network are expected and ignored


def _ensure_loaded() -> None:
    from chaiderm.models import backbones  # noqa: F401  (registers on import)
