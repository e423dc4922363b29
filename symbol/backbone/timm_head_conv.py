"""A timm feature backbone with EfficientNet's 1x1 "head conv" on its coarsest output.

timm's ``features_only`` EfficientNet stops after the last MBConv stage (320 channels for B0);
the classifier network then has a 1x1 conv + BN + swish to ``1280 x width`` channels
(``conv_head``). The YOLOv4-EfficientNet experiments (seed 000, row 8 of each table: ``CBS
[320, 1280, 1, 1]`` for B0) keep that conv and feed its output to SPPCSP.
"""
from __future__ import annotations

import torch
from torch import nn

from symbol.backbone.csp_darknet import ConvBnAct
from symbol.backbone.timm_backbone import TimmBackbone


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
