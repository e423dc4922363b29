"""FPN as used by RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Backbone maps C_l (levels ``min_level..last backbone level``, C3-C5 by default) each get a lateral
1x1 conv to ``channels``; going coarse to fine, the running top-down map is nearest-upsampled to
the next finer level and added to its lateral; every sum then gets a 3x3 output conv (P3-P5).
Levels above the backbone's (P6, P7) come from 3x3 stride-2 convs: the first on C5 (the paper,
Detectron, mmdetection) or on P5 (torchvision's ``retinanet_resnet50_fpn``), each further one on
ReLU of the previous (P7 = conv(ReLU(P6))). All convs have a bias and no normalisation.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import create_conv2d

from symbol.registry import NECKS


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: str) -> nn.Module:
    """Conv with bias, initialised as Detectron's XavierFill / torchvision's FPN (uniform,
    bound sqrt(3 / fan_in)), bias zero."""
    conv = create_conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    """Backbone features (levels ``in_levels``, finest first) -> ``channels``-channel maps on levels
    ``min_level..max_level``, finest first: ``[B, channels, ceil(H/2**l), ceil(W/2**l)]`` per level.

    ``extra_input``: ``"input"`` makes the first extra level from the coarsest backbone map
    (RetinaNet paper's P6 from C5), ``"output"`` from the coarsest FPN output (P6 from P5).
    """

    def __init__(self, in_channels: list[int], in_levels: list[int], channels: int = 256, min_level: int = 3,
                 max_level: int = 7, padding: str = "", extra_input: str = "input"):
        super().__init__()
        if in_levels[0] != min_level or in_levels != list(range(min_level, in_levels[-1] + 1)):
            raise ValueError(f"FPN needs consecutive backbone levels starting at min_level={min_level}, got {in_levels}")
        if in_levels[-1] > max_level:
            raise ValueError(f"FPN: backbone level {in_levels[-1]} is above neck.max_level={max_level}")
        if extra_input not in ("input", "output"):
            raise ValueError(f"FPN extra_input must be 'input' or 'output', got '{extra_input}'")
        self.channels = channels
        self.levels = list(range(min_level, max_level + 1))
        self.out_channels = [channels] * len(self.levels)
        self.extra_input = extra_input
        self.lateral = nn.ModuleList(_conv(c, channels, 1, 1, padding) for c in in_channels)
        self.output = nn.ModuleList(_conv(channels, channels, 3, 1, padding) for _ in in_channels)
        first = in_channels[-1] if extra_input == "input" else channels
        num_extra = max_level - in_levels[-1]
        self.extra = nn.ModuleList(_conv(first if i == 0 else channels, channels, 3, 2, padding)
                                   for i in range(num_extra))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down, coarse to fine
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        outputs = [conv(x) for conv, x in zip(self.output, laterals)]
        x = features[-1] if self.extra_input == "input" else outputs[-1]
        for i, conv in enumerate(self.extra):
            x = conv(x if i == 0 else F.relu(x))
            outputs.append(x)
        return outputs

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named rows for the model summary: lateral 1x1 convs, 3x3 output convs, extra levels."""
        rows = [("lateral", self.lateral), ("output", self.output)]
        return rows + ([("extra_levels", self.extra)] if len(self.extra) else [])


@NECKS.register("fpn")
def build_fpn(n: Any, in_channels: list[int], in_levels: list[int]) -> FPN:
    """RetinaNet's FPN from the ``neck`` section (``channels``, levels, ``padding``)."""
    return FPN(in_channels, in_levels, n.channels, n.min_level, n.max_level, n.padding)
