"""Backbones from timm with ``features_only``: any timm model becomes a pyramid feature extractor.

``TimmBackboneHeadConv`` adds EfficientNet's 1x1 "head conv" on the coarsest output. timm's
``features_only`` EfficientNet stops after the last MBConv stage (320 channels for B0); the
classifier network then has a 1x1 conv + BN + swish to ``1280 x width`` channels (``conv_head``). The YOLOv4-EfficientNet experiments (seed 000, row 8 of each table: ``CBS
[320, 1280, 1, 1]`` for B0) keep that conv and feed its output to SPPCSP.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
import timm

from symbol.layers import ConvBnAct
from symbol.registry import BACKBONES


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)`` with fresh weights (building never loads
    pretrained ones: ``core.weights.pretrain`` does that when a run starts).

    ``forward(images [B, 3, H, W]) -> list`` of feature maps, one per requested level
    (stride ``2**level``), finest first. ``channels`` and ``levels`` describe them.
    """

    def __init__(self, name: str, out_levels: list[int], drop_path_rate: float = 0.0):
        super().__init__()
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        # timm's feature index i has stride 2**(i + 1) for the CNN families used here.
        self.body = timm.create_model(name, features_only=True, out_indices=[lv - 1 for lv in out_levels],
                                      pretrained=False, **kwargs)
        reductions = self.body.feature_info.reduction()
        if reductions != [2**lv for lv in out_levels]:
            raise ValueError(
                f"backbone '{name}' gives feature strides {reductions} for backbone.out_levels={out_levels}; "
                f"expected {[2**lv for lv in out_levels]}: choose out_levels that this backbone has"
            )
        self.name = name
        self.levels = list(out_levels)
        self.channels: list[int] = list(self.body.feature_info.channels())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body(images)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named top-level stages for the model summary (stem, then each stage)."""
        body = self.body
        if hasattr(body, "conv_stem") and hasattr(body, "blocks"):  # EfficientNet / MobileNet family
            stem = nn.ModuleList([body.conv_stem, body.bn1])
            return [("stem", stem)] + [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
        return [(name, module) for name, module in body.named_children()]


class TimmBackboneHeadConv(TimmBackbone):
    """:class:`TimmBackbone` whose coarsest map goes through a 1x1 conv + BN + SiLU to
    ``head_channels``: ``forward(images [B, 3, H, W]) -> list`` of maps at ``out_levels``, finest
    first; the last one has ``head_channels`` channels (``channels[-1] == head_channels``)."""

    def __init__(self, name: str, out_levels: list[int], head_channels: int, drop_path_rate: float = 0.0):
        super().__init__(name, out_levels, drop_path_rate=drop_path_rate)
        self.head_conv = ConvBnAct(self.channels[-1], head_channels, 1, act=nn.SiLU)
        self.channels = self.channels[:-1] + [head_channels]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = super().forward(images)
        return features[:-1] + [self.head_conv(features[-1])]

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The timm rows (stem, stages), then ``head_conv``."""
        return super().stages() + [("head_conv", self.head_conv)]


class TimmOptions:
    """``backbone`` fields only the timm backbone reads."""
    head_conv = 0                # 1x1 conv+BN+swish on the coarsest map to this many channels (EfficientNet's
                                 # conv_head, 1280 x width, as the YOLOv4-EfficientNet tables); 0 = none


@BACKBONES.register("timm", options=TimmOptions)
def build_timm(b: Any) -> TimmBackbone:
    """A timm model as a feature pyramid from the ``backbone`` section (``name``, ``out_levels``,
    ``drop_path_rate``); ``head_conv > 0`` adds EfficientNet's 1x1 head conv on the coarsest map."""
    if b.head_conv:
        return TimmBackboneHeadConv(b.name, b.out_levels, b.head_conv, drop_path_rate=b.drop_path_rate)
    return TimmBackbone(b.name, b.out_levels, drop_path_rate=b.drop_path_rate)
