"""Backbones from timm with ``features_only``: any timm model becomes a pyramid feature extractor."""
from __future__ import annotations

import timm
import torch
from torch import nn


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)`` with fresh weights (building never loads
    pretrained ones: ``core.pretrain`` does that when a run starts).

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
