"""YOLOv4's neck: SPPCSP on the coarsest level, then a PAN (top-down + bottom-up) of CSP blocks.

For output levels ``min_level..max_level`` (P3-P5 in YOLOv4) and ``channels`` W at the top, level
``l`` is ``W / 2**(max_level - l)`` wide (YOLOv4-L: P5 512, P4 256, P3 128):

* levels above the backbone's coarsest output (e.g. P6) are made by 3x3 stride-2 ConvBnAct to W;
* :class:`SPPCSP` turns the top level into W channels;
* top-down, coarse to fine: 1x1 conv of the level above, nearest x2 upsampling, concatenated with
  a 1x1 conv of the backbone map (backbone first), then a :class:`BottleneckCSP2`;
* bottom-up, fine to coarse: 3x3 stride-2 conv of the finer PAN output, concatenated with the
  top-down map (downsampled first), then a BottleneckCSP2.

The outputs (finest first) go to the YOLO layers of ``symbol.head.yolo_head``, which widen them
with a 3x3 conv as PyTorch_YOLOv4's ``yolov4l-mish.yaml`` does before ``Detect``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from symbol.backbone.csp_darknet import Bottleneck
from symbol.layers import ConvBnAct, yolo_batch_norm
from symbol.registry import NECKS


class BottleneckCSP2(nn.Module):
    """The neck's CSP block (no residuals): ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    A 1x1 ConvBnAct to ``C_out`` feeds both ``repeats`` plain bottlenecks and a plain 1x1 conv; their
    concatenation is batch-normalised, Mish, and fused by a 1x1 ConvBnAct to ``C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, repeats: int = 1):
        super().__init__()
        hidden = out_channels
        self.reduce = ConvBnAct(in_channels, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut=False, expansion=1.0)
                                      for _ in range(repeats)))
        self.bypass = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.bn = yolo_batch_norm(2 * hidden)
        self.act = nn.Mish()
        self.fuse = ConvBnAct(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(self.act(self.bn(torch.cat((self.blocks(x), self.bypass(x)), dim=1))))


class SPPCSP(nn.Module):
    """Spatial pyramid pooling in a CSP block: ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    Main path: 1x1, 3x3, 1x1 ConvBnAct to ``hidden = C_out``; the map and its stride-1 max-pools
    (5, 9, 13) concatenated; 1x1 and 3x3 ConvBnAct. Bypass: plain 1x1 conv of the input. Both are
    concatenated, batch-normalised, Mish, and fused by a 1x1 ConvBnAct.
    """

    def __init__(self, in_channels: int, out_channels: int, pool_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = out_channels
        self.pre = nn.Sequential(ConvBnAct(in_channels, hidden, 1), ConvBnAct(hidden, hidden, 3),
                                 ConvBnAct(hidden, hidden, 1))
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pool_sizes)
        self.post = nn.Sequential(ConvBnAct((len(pool_sizes) + 1) * hidden, hidden, 1), ConvBnAct(hidden, hidden, 3))
        self.bypass = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = yolo_batch_norm(2 * hidden)
        self.act = nn.Mish()
        self.fuse = ConvBnAct(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        y = self.post(torch.cat([y] + [pool(y) for pool in self.pools], dim=1))
        return self.fuse(self.act(self.bn(torch.cat((y, self.bypass(x)), dim=1))))


class TopDownBlock(nn.Module):
    """Top-down PAN node at one level: ``(coarser [B, 2W, H/2, W/2], backbone [B, C, H, W]) -> [B, W, H, W]``."""

    def __init__(self, coarser_channels: int, backbone_channels: int, channels: int, repeats: int):
        super().__init__()
        self.reduce = ConvBnAct(coarser_channels, channels, 1)
        self.lateral = ConvBnAct(backbone_channels, channels, 1)
        self.csp = BottleneckCSP2(2 * channels, channels, repeats)

    def forward(self, coarser: torch.Tensor, backbone: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.reduce(coarser), size=backbone.shape[-2:], mode="nearest")
        return self.csp(torch.cat((self.lateral(backbone), up), dim=1))


class BottomUpBlock(nn.Module):
    """Bottom-up PAN node: ``(finer [B, W/2, 2H, 2W], top_down [B, W, H, W]) -> [B, W, H, W]``."""

    def __init__(self, finer_channels: int, channels: int, repeats: int):
        super().__init__()
        self.down = ConvBnAct(finer_channels, channels, 3, 2)
        self.csp = BottleneckCSP2(2 * channels, channels, repeats)

    def forward(self, finer: torch.Tensor, top_down: torch.Tensor) -> torch.Tensor:
        return self.csp(torch.cat((self.down(finer), top_down), dim=1))


class YoloPAN(nn.Module):
    """Backbone maps (levels ``in_levels``, finest first) -> PAN maps on ``min_level..max_level``,
    finest first, ``[B, channels[i], H / 2**l, W / 2**l]``. ``levels`` and ``channels`` describe them."""

    def __init__(self, in_channels: list[int], in_levels: list[int], channels: int = 512, repeats: int = 2,
                 min_level: int = 3, max_level: int = 5):
        super().__init__()
        if in_levels[0] != min_level or in_levels != list(range(min_level, in_levels[-1] + 1)):
            raise ValueError(f"yolo_pan needs consecutive backbone levels starting at neck.min_level={min_level}, "
                             f"got backbone.out_levels={in_levels}")
        if max_level < in_levels[-1]:
            raise ValueError(f"neck.max_level={max_level} is below the backbone's coarsest level {in_levels[-1]}")
        self.levels = list(range(min_level, max_level + 1))
        top = len(self.levels) - 1
        if channels % 2**top:
            raise ValueError(f"neck.pan_channels={channels} must be divisible by 2**{top} ({len(self.levels)} levels)")
        self.channels: list[int] = [channels >> (top - i) for i in range(len(self.levels))]
        self.out_channels = self.channels

        level_channels = list(in_channels)
        self.extra = nn.ModuleList()
        for _ in range(in_levels[-1] + 1, max_level + 1):
            self.extra.append(ConvBnAct(level_channels[-1], channels, 3, 2))
            level_channels.append(channels)
        self.sppcsp = SPPCSP(level_channels[-1], channels)
        self.top_down = nn.ModuleList(
            TopDownBlock(self.channels[i + 1], level_channels[i], self.channels[i], repeats)
            for i in range(top - 1, -1, -1))  # coarse to fine
        self.bottom_up = nn.ModuleList(
            BottomUpBlock(self.channels[i - 1], self.channels[i], repeats) for i in range(1, top + 1))  # fine to coarse

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for extra in self.extra:
            features.append(extra(features[-1]))
        top = len(features) - 1
        down = [None] * len(features)
        down[top] = self.sppcsp(features[top])
        for block, i in zip(self.top_down, range(top - 1, -1, -1)):
            down[i] = block(down[i + 1], features[i])
        outputs = [down[0]]
        for block, i in zip(self.bottom_up, range(1, top + 1)):
            outputs.append(block(outputs[-1], down[i]))
        return outputs

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Model-summary rows: extra levels (if any), ``sppcsp``, top-down nodes coarse to fine
        (``top_down.p{level}``), bottom-up nodes fine to coarse (``bottom_up.p{level}``)."""
        rows = [("extra_levels", self.extra)] if len(self.extra) else []
        rows.append(("sppcsp", self.sppcsp))
        top = len(self.levels) - 1
        rows += [(f"top_down.p{self.levels[i]}", b) for b, i in zip(self.top_down, range(top - 1, -1, -1))]
        rows += [(f"bottom_up.p{self.levels[i]}", b) for b, i in zip(self.bottom_up, range(1, top + 1))]
        return rows


class YoloPANOptions:
    """``neck`` fields only the YOLO PAN reads."""
    pan_channels = 512           # SPPCSP / top-level width; each finer level has half (YOLOv4-L 512, -S 256)
    pan_repeats = 2              # bottlenecks in each BottleneckCSP2 of the PAN (YOLOv4-L 2, -S 1)


@NECKS.register("yolo_pan", options=YoloPANOptions)
def build_yolo_pan(n: Any, in_channels: list[int], in_levels: list[int]) -> YoloPAN:
    """YOLOv4's SPPCSP + PAN from the ``neck`` section (``pan_channels``, ``pan_repeats``, levels)."""
    return YoloPAN(in_channels, in_levels, n.pan_channels, n.pan_repeats, n.min_level, n.max_level)
