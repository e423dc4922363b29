"""A one-stage detector assembled from a backbone, a neck and a head."""
from __future__ import annotations

import torch
from torch import nn


class Detector(nn.Module):
    """``forward(images [B, 3, S, S]) -> (class_logits, box_deltas)``: lists over pyramid levels
    (finest first) of ``[B, A*C, H_l, W_l]`` and ``[B, A*4, H_l, W_l]`` raw head outputs.

    Anchors, losses and post-processing live in ``core``; the network knows none of them.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, num_classes: int,
                 levels: list[int]):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = num_classes
        self.levels = levels

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.head(self.neck(self.backbone(images)))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Top-level rows for ``utils.model_summary``: ``(qualified name, module)``."""
        rows = []
        for part_name in ("backbone", "neck", "head"):
            part = getattr(self, part_name)
            rows += [(f"{part_name}.{name}", module) for name, module in part.stages()]
        return rows
