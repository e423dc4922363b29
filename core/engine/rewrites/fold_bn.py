"""Inference-time folding of BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm is a per-channel affine map ``y = (x - mean) * g / sqrt(var + eps) + b``;
when ``x`` is the output of a convolution, the map folds exactly into that convolution's weights
and bias, and the BatchNorm's full pass over the feature map disappears (about a tenth of an
EfficientDet's CPU inference time).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from core.engine.rewrites.swap import swap_modules


def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-3) -> tuple[nn.Module, int]:
    """A copy of the eval-mode ``model`` with every foldable BatchNorm folded; also the count folded.

    Which convolution feeds which BatchNorm is read from one forward pass over ``example`` (any
    input the model takes, e.g. ``[1, 3, 128, 128]``): a BatchNorm is folded when every one of its
    inputs was the very output tensor of one and the same ``nn.Conv2d`` (``timm``'s SAME-padded
    convs included) that feeds no other BatchNorm. A BatchNorm shared by several convs, or a conv
    shared by BatchNorms (the per-level norms of an EfficientDet head), stays. Folded BatchNorms
    become ``nn.Identity``; ``timm``'s ``BatchNormAct2d`` keeps its activation. The copy's
    outputs on ``example`` are checked against the original's (max abs difference ``<= atol``
    times the largest output magnitude); a mismatch raises ``RuntimeError``.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (model.eval())")
    folded = copy.deepcopy(model)
    producer: dict[int, nn.Conv2d] = {}  # id(conv output) -> conv
    alive: list[torch.Tensor] = []  # keeps outputs alive so that ids stay unique during the pass
    sources: dict[nn.Module, set[nn.Module | None]] = {}

    def after_conv(conv: nn.Module, _inputs, output: torch.Tensor) -> None:
        producer[id(output)] = conv
        alive.append(output)

    def before_bn(bn: nn.Module, inputs) -> None:
        sources.setdefault(bn, set()).add(producer.get(id(inputs[0])))

    handles = []
    for module in folded.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            handles.append(module.register_forward_pre_hook(before_bn))
    with torch.no_grad():
        reference = _flat_outputs(model(example))
        folded(example)
    for handle in handles:
        handle.remove()
    alive.clear()

    feeds: dict[nn.Module, list[nn.Module]] = {}
    for bn, convs in sources.items():
        if len(convs) == 1 and None not in convs:
            feeds.setdefault(next(iter(convs)), []).append(bn)
    pairs = {bns[0]: conv for conv, bns in feeds.items() if len(bns) == 1}
    replacements = {bn: fold_into_conv(conv, bn) for bn, conv in pairs.items()}
    swap_modules(folded, replacements.get)

    with torch.no_grad():
        outputs = _flat_outputs(folded(example))
    scale = max(float(r.abs().max()) for r in reference) if reference else 1.0
    worst = max(float((o - r).abs().max()) for o, r in zip(outputs, reference)) if reference else 0.0
    if worst > atol * max(scale, 1.0):
        raise RuntimeError(f"folding BatchNorm changed the outputs by {worst:.3g} (largest output {scale:.3g}); "
                           "a folded convolution feeds something besides its BatchNorm")
    return folded, len(replacements)


def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Fold the eval-mode ``bn`` into ``conv`` (whose output it normalises), in place: ``conv``
    gets the scaled weights and a bias. Returns the module that replaces ``bn``: ``nn.Identity``, or
    the activation of a ``timm`` ``BatchNormAct2d``."""
    with torch.no_grad():
        scale, shift = batchnorm_affine(bn)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype))
    act = getattr(bn, "act", None)  # timm BatchNormAct2d: batch_norm -> drop -> act
    if act is not None:
        return nn.Sequential(bn.drop, act)
    return nn.Identity()


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode ``bn`` as ``x * scale + shift`` per channel: ``(scale [C], shift [C])``."""
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return scale, shift


def _flat_outputs(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs.float()]
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in _flat_outputs(o)]
    return []
