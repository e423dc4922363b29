"""Inference form of EfficientNet's squeeze-excite projections.

A squeeze-excite block pools a ``[B, C, H, W]`` map to ``[B, C, 1, 1]``, then applies two 1x1
convolutions (``C -> C/4/expand`` and back) to that single pixel. Compiled with inductor
freezing, each becomes a prepacked oneDNN call whose fixed cost dwarfs its few thousand
multiply-adds, and EfficientNet-B0 has 32 of them. Written as an elementwise product and a sum,
inductor generates the loop itself and fuses it with the pooling and the activations around it.
Only compiled inference uses it: run eagerly, the product and sum dispatch 7 operations where the
conv dispatches one (what launches cost on a GPU). Measured gains: docs/PERFORMANCE.md.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models._efficientnet_blocks import SqueezeExcite


class PixelProjection(nn.Module):
    """A 1x1 convolution for ``[B, C_in, 1, 1]`` inputs, made from an ``nn.Conv2d``:
    ``forward(x [B, C_in, 1, 1]) -> [B, C_out, 1, 1]``, computed as ``(x * W).sum`` + bias."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise ValueError(f"PixelProjection needs a plain 1x1 conv, got {conv}")
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=conv.weight.requires_grad)
        bias = conv.bias.detach().clone() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"PixelProjection takes [B, C, 1, 1] inputs, got {tuple(x.shape)}")
        return ((x.flatten(1)[:, None, :] * self.weight).sum(-1) + self.bias)[:, :, None, None]


def replace_excite_convs(module: nn.Module) -> int:
    """Swap, in place, the two 1x1 convs of every ``timm`` EfficientNet ``SqueezeExcite`` inside
    ``module`` for :class:`PixelProjection` copies (for inference). Returns the blocks changed."""
    changed = 0
    for block in module.modules():
        if isinstance(block, SqueezeExcite) and isinstance(block.conv_reduce, nn.Conv2d):
            block.conv_reduce = PixelProjection(block.conv_reduce)
            block.conv_expand = PixelProjection(block.conv_expand)
            changed += 1
    return changed
