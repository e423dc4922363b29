"""BiFPN (EfficientDet, Tan et al. 2020): weighted bidirectional feature pyramid.

Levels ``min_level..max_level`` (P3-P7 by default). Backbone levels above the backbone's
coarsest output (P6, P7) are made from it: 1x1 conv + BN to ``channels`` if needed, then a
3x3 stride-2 max-pool per level. Every fusion node combines its inputs by one of
:data:`FUSIONS` (``fast``: *fast normalized fusion* ``sum_i relu(w_i) * x_i / (sum_i relu(w_i) + eps)``
with learned ``w_i``, EfficientDet's; ``softmax``: ``sum_i softmax(w)_i * x_i``; ``sum``: a plain
sum with no weights, EfficientDet-Lite's), then applies the activation (swish; Lite: ReLU6) and
a separable 3x3 conv + BN. Node wiring follows google/automl's ``bifpn`` config.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import create_pool2d

from symbol.layers import ConvBn, SeparableConv, activation
from symbol.registry import NECKS


FUSIONS = ("fast", "softmax", "sum")


class Resample(nn.Module):
    """Brings a feature map to ``out_channels`` (1x1 conv + BN when channels differ), then to the
    target's spatial size: max-pool 3x3/2 when coarser, nearest upsampling when finer."""

    def __init__(self, in_channels: int, out_channels: int, padding: str):
        super().__init__()
        self.conv = ConvBn(in_channels, out_channels, 1, padding=padding) if in_channels != out_channels else None
        self.pool = create_pool2d("max", kernel_size=3, stride=2, padding=padding or 1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        if x.shape[-1] > size[-1]:
            x = self.pool(x)
        elif x.shape[-1] < size[-1]:
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class FusionNode(nn.Module):
    """One BiFPN node: resample each input to the node's level, fuse them (``fusion``, one of
    :data:`FUSIONS`; ``fast`` and ``softmax`` learn one weight per input, ``sum`` none), apply
    the activation ``act``, then a separable conv + BN. Inputs are indices into the growing list
    of feature maps."""

    def __init__(self, inputs: list[int], in_channels: list[int], channels: int, padding: str,
                 fusion: str = "fast", act: str = "swish", eps: float = 1e-4):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown BiFPN fusion '{fusion}'; choose one of {', '.join(FUSIONS)}")
        self.inputs = inputs
        self.fusion = fusion
        self.resample = nn.ModuleList(Resample(c, channels, padding) for c in in_channels)
        self.edge_weights = nn.Parameter(torch.ones(len(inputs))) if fusion != "sum" else None
        self.act = activation(act)
        self.conv = SeparableConv(channels, channels, 3, padding=padding)
        self.eps = eps

    def forward(self, features: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        resampled = [r(features[i], size) for r, i in zip(self.resample, self.inputs)]
        if self.edge_weights is not None:
            weights = self.edge_weights.to(features[0].dtype)
            if self.fusion == "softmax":
                weights = weights.softmax(0)
            else:
                weights = F.relu(weights)
                weights = weights / (weights.sum() + self.eps)
            resampled = [w * x for w, x in zip(weights, resampled)]
        fused = sum(resampled[1:], resampled[0])  # not sum(resampled): its 0 + x is a pass over x for nothing
        return self.conv(self.act(fused))


def bifpn_wiring(num_levels: int) -> list[tuple[int, list[int]]]:
    """Node list ``(level_index, input_node_ids)`` of one BiFPN layer over ``num_levels`` levels.

    Node ids ``0..num_levels-1`` are the layer's inputs (finest first); each new node gets the
    next id. Top-down nodes come first (coarse to fine), then bottom-up nodes (fine to coarse).
    """
    last = {lv: lv for lv in range(num_levels)}
    every = {lv: [lv] for lv in range(num_levels)}
    nodes: list[tuple[int, list[int]]] = []
    next_id = num_levels
    for lv in range(num_levels - 2, -1, -1):
        nodes.append((lv, [last[lv], last[lv + 1]]))
        last[lv] = next_id
        every[lv].append(next_id)
        next_id += 1
    for lv in range(1, num_levels):
        nodes.append((lv, every[lv] + [last[lv - 1]]))
        last[lv] = next_id
        every[lv].append(next_id)
        next_id += 1
    return nodes


class BiFPNLayer(nn.Module):
    """One BiFPN layer: ``list`` of ``num_levels`` maps (finest first) -> same-shaped list of
    ``channels``-channel maps."""

    def __init__(self, in_channels: list[int], channels: int, padding: str, fusion: str = "fast", act: str = "swish"):
        super().__init__()
        self.num_levels = len(in_channels)
        self.wiring = bifpn_wiring(self.num_levels)
        node_channels = list(in_channels)
        self.nodes = nn.ModuleList()
        for _, inputs in self.wiring:
            self.nodes.append(FusionNode(inputs, [node_channels[i] for i in inputs], channels, padding, fusion, act))
            node_channels.append(channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [f.shape[-2:] for f in features]
        nodes = list(features)
        for (level, _), node in zip(self.wiring, self.nodes):
            nodes.append(node(nodes, sizes[level]))
        return nodes[-self.num_levels:]


class BiFPN(nn.Module):
    """Backbone features (levels ``in_levels``) -> ``channels``-channel maps on levels
    ``min_level..max_level``, finest first. ``[B, C_l, H/2**l, W/2**l]`` per level. ``fusion``
    and ``act``: every node's fusion (:data:`FUSIONS`) and activation (``symbol.layers.ACTIVATIONS``)."""

    def __init__(self, in_channels: list[int], in_levels: list[int], channels: int, repeats: int,
                 min_level: int = 3, max_level: int = 7, padding: str = "same", fusion: str = "fast",
                 act: str = "swish"):
        super().__init__()
        if in_levels[0] != min_level or in_levels != list(range(min_level, in_levels[-1] + 1)):
            raise ValueError(f"BiFPN needs consecutive backbone levels starting at min_level={min_level}, got {in_levels}")
        self.channels = channels
        self.levels = list(range(min_level, max_level + 1))
        self.out_channels = [channels] * len(self.levels)
        self.extra = nn.ModuleList()
        level_channels = list(in_channels)
        for _ in range(in_levels[-1] + 1, max_level + 1):
            self.extra.append(Resample(level_channels[-1], channels, padding))
            level_channels.append(channels)
        self.cells = nn.ModuleList()
        for _ in range(repeats):
            self.cells.append(BiFPNLayer(level_channels, channels, padding, fusion, act))
            level_channels = [channels] * len(level_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for extra in self.extra:
            h, w = features[-1].shape[-2:]
            features.append(extra(features[-1], torch.Size(((h + 1) // 2, (w + 1) // 2))))
        for cell in self.cells:
            features = cell(features)
        return features

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named rows for the model summary: the extra-level resampling, then each cell."""
        rows = [("extra_levels", self.extra)] if len(self.extra) else []
        return rows + [(f"cells.{i}", c) for i, c in enumerate(self.cells)]


class BiFPNOptions:
    """``neck`` fields only the BiFPN reads."""
    fusion = "fast"              # how a node weighs its inputs: "fast" (normalized learned weights, EfficientDet),
                                 # "softmax" (softmax of learned weights), "sum" (no weights, EfficientDet-Lite)
    activation = "swish"         # after each fusion; "swish", "relu6" (EfficientDet-Lite) or "relu"


@NECKS.register("bifpn", options=BiFPNOptions)
def build_bifpn(n: Any, in_channels: list[int], in_levels: list[int]) -> BiFPN:
    """EfficientDet's BiFPN from the ``neck`` section (``channels``, ``repeats``, levels, ``padding``,
    ``fusion``, ``activation``)."""
    return BiFPN(in_channels, in_levels, n.channels, n.repeats, n.min_level, n.max_level, n.padding, n.fusion,
                 n.activation)
