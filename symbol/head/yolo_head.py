"""YOLO output layers: per pyramid level a 3x3 ConvBnAct (doubling the width) and a 1x1 prediction conv.

``forward(list of [B, C_l, H_l, W_l]) -> list of [B, A_l * (5 + num_classes), H_l, W_l]`` raw
outputs, finest first. Channel ``a * (5 + C) + k`` is anchor ``a``'s output ``k``: 0-3 box
(``tx, ty, tw, th``), 4 objectness logit, 5.. class logits. Decoding (sigmoid, grid, anchors) and
the loss live in ``core.tasks.yolo``; the head knows only how many anchors each level has.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from symbol.layers import ConvBnAct
from symbol.registry import HEADS


PRIOR_IMAGE_SIZE = 640       # objectness prior: about PRIOR_OBJECTS objects per 640 x 640 image
PRIOR_OBJECTS = 8


class YoloLayer(nn.Module):
    """One level's output: ``[B, C_in, H, W] -> [B, A * (5 + num_classes), H, W]``."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, stride: int):
        super().__init__()
        self.conv = ConvBnAct(in_channels, 2 * in_channels, 3)
        self.predict = nn.Conv2d(2 * in_channels, num_anchors * (5 + num_classes), 1)
        self.num_anchors, self.num_classes = num_anchors, num_classes
        with torch.no_grad():  # YOLOv5's bias prior: rare objects, uniform-ish classes
            bias = self.predict.bias.view(num_anchors, 5 + num_classes)
            bias[:, 4] += math.log(PRIOR_OBJECTS / (PRIOR_IMAGE_SIZE / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / max(num_classes - 0.99, 0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(self.conv(x))


class YoloHead(nn.Module):
    """YOLO layers for levels ``levels`` (stride ``2**level``) with ``num_anchors[i]`` anchors each."""

    def __init__(self, in_channels: list[int], levels: list[int], num_anchors: list[int], num_classes: int):
        super().__init__()
        if not len(in_channels) == len(levels) == len(num_anchors):
            raise ValueError(f"{len(levels)} levels {levels} need as many anchor sets, got {len(num_anchors)}: "
                             "give anchors.yolo one row per output level")
        self.levels = list(levels)
        self.num_classes = num_classes
        self.num_anchors = list(num_anchors)
        self.layers = nn.ModuleList(YoloLayer(c, a, num_classes, 2**lv)
                                    for c, a, lv in zip(in_channels, num_anchors, levels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.layers):
            raise ValueError(f"YOLO head has {len(self.layers)} layers, got {len(features)} feature maps")
        return [layer(x) for layer, x in zip(self.layers, features)]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"yolo.p{lv}", layer) for lv, layer in zip(self.levels, self.layers)]


@HEADS.register("yolo")
def build_yolo_head(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int) -> YoloHead:
    """One YOLO layer per level with the anchors of ``anchors.yolo`` (one row of (w, h) pairs per level)."""
    a = cfg.anchors
    if len(a.yolo) != len(levels):
        raise ValueError(f"anchors.yolo has {len(a.yolo)} rows for {len(levels)} output levels "
                         f"P{levels[0]}-P{levels[-1]}: give one row of (w, h) pairs per level")
    if any(len(row) < 2 or len(row) % 2 for row in a.yolo):
        raise ValueError(f"anchors.yolo rows must hold (w, h) pairs, got {a.yolo}")
    return YoloHead(in_channels, levels, [len(row) // 2 for row in a.yolo], num_classes)
