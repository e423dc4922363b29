"""CSP-Darknet backbones of YOLOv4 (the PyTorch_YOLOv4 "u5" yolov4-L / yolov4-S Mish models).

Building blocks (all ``[B, C, H, W]`` feature maps, "same" padding ``k // 2``):

* :class:`ConvBnAct` - k x k conv (no bias) + BatchNorm + activation (Mish unless told otherwise).
* :class:`Bottleneck` - 1x1 then 3x3 ConvBnAct, plus the input when shapes allow (residual).
* :class:`BottleneckCSP` - Cross Stage Partial block: a main path (1x1 ConvBnAct, ``n``
  bottlenecks, plain 1x1 conv) and a plain 1x1 bypass conv, concatenated, BN + Mish, then a 1x1
  ConvBnAct. Half the output width inside (``expansion = 0.5``).

The backbone is a stem conv (stride 1) and five stages, each a 3x3 stride-2 ConvBnAct followed
by a block: a plain Bottleneck at stride 2, then BottleneckCSP stages at strides 4, 8, 16, 32.
YOLOv4-L (``depth_multiple = width_multiple = 1``) uses widths 32 | 64, 128, 256, 512, 1024 and
block repeats 1, 2, 8, 8, 4; YOLOv4-S scales the widths by 0.5 (rounded up to a multiple of 8)
and the repeats by 0.33 (rounded, at least 1; a single block stays single).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from symbol.layers import ConvBnAct, yolo_batch_norm
from symbol.registry import BACKBONES


# (stem width, [(stage width, block repeats)]) of the unscaled network; stage i has stride 2**(i + 1).
CSP_DARKNET53 = (32, [(64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)])
ARCHITECTURES = {"cspdarknet53": CSP_DARKNET53}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``value`` (YOLOv4/v5 width rounding)."""
    return int(math.ceil(value / divisor) * divisor)


def scale_depth(repeats: int, depth_multiple: float) -> int:
    """Repeats after depth scaling: ``round(n * d)``, at least 1; a single block is never scaled."""
    return max(round(repeats * depth_multiple), 1) if repeats > 1 else repeats


class Bottleneck(nn.Module):
    """1x1 ConvBnAct to ``hidden = int(out * expansion)`` channels, 3x3 ConvBnAct to ``out``; adds the
    input when ``shortcut`` and the widths agree. ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.reduce = ConvBnAct(in_channels, hidden, 1)
        self.conv = ConvBnAct(hidden, out_channels, 3)
        self.residual = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.reduce(x))
        return x + y if self.residual else y


class BottleneckCSP(nn.Module):
    """CSP block (Wang et al. 2020): ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    Main path: 1x1 ConvBnAct to ``hidden = int(C_out * expansion)``, ``repeats`` residual
    bottlenecks (``hidden`` wide), a plain 1x1 conv. Bypass: a plain 1x1 conv of the input to
    ``hidden``. The two are concatenated, batch-normalised, Mish, and fused by a 1x1 ConvBnAct.
    """

    def __init__(self, in_channels: int, out_channels: int, repeats: int = 1, shortcut: bool = True,
                 expansion: float = 0.5):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.main_in = ConvBnAct(in_channels, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, expansion=1.0) for _ in range(repeats)))
        self.main_out = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.bypass = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = yolo_batch_norm(2 * hidden)
        self.act = nn.Mish()
        self.fuse = ConvBnAct(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.main_out(self.blocks(self.main_in(x)))
        return self.fuse(self.act(self.bn(torch.cat((main, self.bypass(x)), dim=1))))


class CSPStage(nn.Module):
    """One backbone stage: 3x3 stride-2 ConvBnAct, then a Bottleneck (``csp=False``) or a
    BottleneckCSP with ``repeats`` bottlenecks. ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int, repeats: int, csp: bool):
        super().__init__()
        self.down = ConvBnAct(in_channels, out_channels, 3, 2)
        if csp:
            self.block: nn.Module = BottleneckCSP(out_channels, out_channels, repeats)
        else:
            if repeats != 1:
                raise ValueError(f"a plain bottleneck stage has one block, got {repeats}")
            self.block = Bottleneck(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.down(x))


class CSPDarknet(nn.Module):
    """YOLOv4 CSP-Darknet: ``forward(images [B, 3, H, W]) -> list`` of the maps at ``out_levels``
    (stride ``2**level``, levels 1..5), finest first. ``channels`` and ``levels`` describe them.

    ``depth_multiple`` / ``width_multiple`` scale repeats and widths as YOLOv4/v5 do
    (YOLOv4-L: 1.0 / 1.0, YOLOv4-S: 0.33 / 0.5).
    """

    def __init__(self, name: str = "cspdarknet53", out_levels: list[int] = (3, 4, 5), depth_multiple: float = 1.0,
                 width_multiple: float = 1.0):
        super().__init__()
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown csp_darknet backbone '{name}'; choose one of {', '.join(ARCHITECTURES)}")
        stem_width, stage_specs = ARCHITECTURES[name]
        if not out_levels or any(lv not in range(1, len(stage_specs) + 1) for lv in out_levels) \
                or list(out_levels) != sorted(set(out_levels)):
            raise ValueError(f"backbone.out_levels={list(out_levels)}: csp_darknet has levels 1..{len(stage_specs)}, "
                             "give them increasing and without repeats")
        self.name = name
        self.levels = list(out_levels)
        width = make_divisible(stem_width * width_multiple)
        self.stem = ConvBnAct(3, width, 3, 1)
        self.layers = nn.ModuleList()  # stages up to the coarsest requested level only
        widths = []
        for i, (stage_width, repeats) in enumerate(stage_specs[:self.levels[-1]]):
            out = make_divisible(stage_width * width_multiple)
            self.layers.append(CSPStage(width, out, scale_depth(repeats, depth_multiple), csp=i > 0))
            widths.append(out)
            width = out
        self.channels: list[int] = [widths[lv - 1] for lv in self.levels]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        features = []
        for level, stage in enumerate(self.layers, start=1):
            x = stage(x)
            if level in self.levels:
                features.append(x)
        return features

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Model-summary rows in the order of PyTorch_YOLOv4's table: stem, then each stage's
        stride-2 conv and its block (``stage{level}.down``, ``stage{level}.block``)."""
        rows: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for level, stage in enumerate(self.layers, start=1):
            rows += [(f"stage{level}.down", stage.down), (f"stage{level}.block", stage.block)]
        return rows


class CSPDarknetOptions:
    """``backbone`` fields only CSP-Darknet reads."""
    depth_multiple = 1.0         # block repeats x this, rounded, >= 1 (YOLOv4-L 1.0, YOLOv4-S 0.33)
    width_multiple = 1.0         # widths x this, rounded up to a multiple of 8 (YOLOv4-L 1.0, -S 0.5)


@BACKBONES.register("csp_darknet", options=CSPDarknetOptions)
def build_csp_darknet(b: Any) -> CSPDarknet:
    """YOLOv4's CSP-Darknet from the ``backbone`` section (``name``, ``out_levels``, ``depth_multiple``,
    ``width_multiple``); it has no stochastic depth and no head conv."""
    if b.drop_path_rate:
        raise ValueError("backbone.drop_path_rate: csp_darknet has no stochastic depth; set it to 0.0")
    if b.head_conv:
        raise ValueError("backbone.head_conv is for timm backbones; set it to 0 with csp_darknet")
    return CSPDarknet(b.name, b.out_levels, b.depth_multiple, b.width_multiple)
