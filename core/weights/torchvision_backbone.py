"""torchvision classifier state dicts -> timm module names of the same architecture.

torchvision's ResNets use timm's names already (``conv1``, ``bn1``, ``layer1.0.conv1``, ``fc``): they
pass through unchanged. torchvision's EfficientNet / MobileNet put everything under
``features.S.B.block.K.{0,1}`` / ``fc1`` / ``fc2`` where timm has ``conv_stem``, ``blocks.S.B.conv_dw``,
``se.conv_reduce``, ... Both list their tensors in forward order (stem, stages, head, classifier)
and, inside each layer, in the same order (conv weight; BN weight, bias, running_mean,
running_var, num_batches_tracked), so the tensors are paired in order: the ``i``-th tensor of
the source goes to the ``i``-th of the target, and every pair must agree in shape and in the
kind of tensor (the last name component), else the architectures differ and nothing is renamed.
"""
from __future__ import annotations

import torch
from torch import nn

from core.weights.common import Conversion, ConversionError


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def torchvision_to_timm(state: dict[str, torch.Tensor], target: nn.Module) -> Conversion:
    """Rename a torchvision classifier's state dict into ``target``'s (a timm model's) names.

    Names that ``target`` already has with the same shapes are kept (ResNets). Otherwise the
    tensors are paired in order (see the module docstring); source tensors after the target's
    last one (the classifier, when ``target`` is ``features_only``) are listed in ``removed``.
    Raises :class:`ConversionError` at the first pair that disagrees, naming both tensors.
    """
    target_state = target.state_dict()
    common = [k for k in state if k in target_state]
    if len(common) == len(target_state) and all(state[k].shape == target_state[k].shape for k in common):
        kept = {k: v for k, v in state.items() if k in target_state}
        removed = [(k, f"{type(target).__name__} has no such tensor") for k in state if k not in target_state]
        return Conversion(kept, [], removed, ["names already match the timm model"])
    source_names = list(state)
    target_names = list(target_state)
    if len(source_names) < len(target_names):
        raise ConversionError(f"the torchvision state dict has {len(source_names)} tensors, the timm model "
                              f"{type(target).__name__} needs {len(target_names)}: the architectures differ; "
                              "use the timm model of the same variant (e.g. efficientnet_b0 for torchvision's "
                              "efficientnet_b0)")
    out: dict[str, torch.Tensor] = {}
    renamed: list[tuple[str, str]] = []
    for src, dst in zip(source_names, target_names):
        a, b = state[src], target_state[dst]
        if _kind(src) != _kind(dst) or a.shape != b.shape:
            raise ConversionError(f"tensor #{len(out)} of the torchvision state dict, '{src}' {tuple(a.shape)}, "
                                  f"does not pair with the timm model's '{dst}' {tuple(b.shape)}: the architectures "
                                  "differ; choose the timm model of the same variant")
        out[dst] = a
        if src != dst:
            renamed.append((src, dst))
    removed = [(k, f"after the last tensor of {type(target).__name__}") for k in source_names[len(target_names):]]
    return Conversion(out, renamed, removed, ["paired torchvision and timm tensors in forward order"])
