"""Inference-only speed-up: fold each batch norm into the convolution whose output it normalises.

In eval mode a batch norm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
rescaled weights and a bias; the folded network skips a pass over every feature map (EfficientNet-Lite has
a batch norm after each of its convolutions). A trained model's weights and saved files are not touched:
folding happens on the loaded copy that answers queries, and a folded model refuses to train.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from chaiderm.errors import ArtifactError


def _pairs(module: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, batch norm name)`` for every batch norm whose input, in one forward pass on ``x``, was
    exactly the tensor a convolution returned. Found by running the network, not from the order layers were
    registered in, so a batch norm applied elsewhere (after an addition, say) is never folded into a conv."""
    # the tensors themselves are kept (not only their ids, which Python reuses once a tensor is freed), with
    # their version counters: an in-place op between conv and batch norm (a ReLU(inplace=True)) bumps it
    outputs: dict[int, tuple[torch.Tensor, int, str]] = {}
    found: list[tuple[str, str]] = []
    uses: dict[str, int] = {}

    def conv_out(_m: nn.Module, _i: tuple, out: torch.Tensor, n: str) -> None:
        outputs[id(out)] = (out, out._version, n)

    def bn_in(_m: nn.Module, inp: tuple, n: str) -> None:
        t = inp[0]
        seen = outputs.get(id(t))
        if seen is not None and seen[0] is t and seen[1] == t._version:
            found.append((seen[2], n))

    def count(n: str) -> None:
        uses[n] = uses.get(n, 0) + 1

    handles = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mm, i, o, n=name: conv_out(mm, i, o, n)))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(lambda mm, i, n=name: bn_in(mm, i, n)))
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            handles.append(m.register_forward_hook(lambda *_a, n=name: count(n)))
    try:
        # version counters exist outside inference mode only; a caller may be inside it
        with torch.inference_mode(False), torch.no_grad():
            module(x.clone())
    finally:
        for h in handles:
            h.remove()
    # a module called twice per pass (shared weights) may meet different partners: leave those alone
    return [(c, b) for c, b in found if uses.get(c) == 1 and uses.get(b) == 1]


def fold_batchnorms(module: nn.Module, x: torch.Tensor) -> int:
    """Fold, in place, every batch norm that directly follows a convolution in ``module``'s forward pass
    on the example input ``x``; returns how many were folded. ``module`` is put in eval mode and marked
    folded (``is_folded``); its outputs equal the unfolded ones to float rounding."""
    module.eval()
    pairs = _pairs(module, x)
    mods = dict(module.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        fused = fuse_conv_bn_eval(conv, bn)
        # conv layers with a static padding module (EfficientNet's "same" padding) keep it: fuse deep-copies
        _set(module, conv_name, fused)
        _set(module, bn_name, nn.Identity())
    mark_folded(module)
    return len(pairs)


def mark_folded(module: nn.Module) -> None:
    """Mark ``module`` as holding folded parts (a container whose children were folded one by one)."""
    module._chaiderm_folded = True  # type: ignore[attr-defined]


def is_folded(module: nn.Module) -> bool:
    return bool(getattr(module, "_chaiderm_folded", False))


def refuse_if_folded(module: nn.Module) -> None:
    """Training a folded copy would train other parameters than the saved model has: refuse it."""
    if is_folded(module):
        raise ArtifactError("this model was folded for inference (batch norms merged); load it again to train it")


def _set(root: nn.Module, dotted: str, new: nn.Module) -> None:
    # a ModuleList's children are attributes named "0", "1", ... too, so one setattr serves every parent
    parent_name, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)
