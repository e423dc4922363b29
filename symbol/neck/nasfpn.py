"""NAS-FPN (Ghiasi, Lin, Le, "NAS-FPN: Learning Scalable Feature Pyramid Architecture", 2019).

Backbone maps C3-C5 are brought to ``channels`` by 1x1 conv + BN (when their width differs);
levels above the backbone's (P6, P7) are max-pools (kernel = stride = 2) of the level below, as
tensorflow/tpu's ``nasfpn``. Then ``repeats`` identical cells (own weights each) map P3-P7 to P3-P7.

A cell is the searched architecture: 7 merge blocks, each taking two of the feature maps built so
far (the cell's 5 inputs, then the blocks' outputs in order), resampling them to its level
(nearest upsampling, or max-pool with kernel = stride), combining them by ``sum`` or global
``attention`` (``coarser + finer * sigmoid(global max-pool of coarser)``), then ReLU, 3x3 conv and
BN. An output block also adds every same-level map that no block has used so far. The last 5
blocks (levels 3, 4, 5, 7, 6) are the cell's outputs.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from symbol.layers import ConvBn
from symbol.registry import NECKS


class BlockSpec(NamedTuple):
    """One merge block: output ``level``, ``op`` (``sum`` | ``attention``), two ``inputs`` (indices
    into the cell's growing list of maps: 0-4 = P3-P7 inputs, 5.. = earlier blocks), ``is_output``."""

    level: int
    op: str
    inputs: tuple[int, int]
    is_output: bool


# The published NAS-FPN cell (the paper's final architecture; tensorflow/tpu's NASFPN_BLOCK_SPECS), P3-P7.
NASFPN_CELL: list[BlockSpec] = [
    BlockSpec(4, "attention", (1, 3), False),
    BlockSpec(4, "sum", (1, 5), False),
    BlockSpec(3, "sum", (0, 6), True),
    BlockSpec(4, "sum", (6, 7), True),
    BlockSpec(5, "attention", (7, 8), True),
    BlockSpec(7, "attention", (6, 9), True),
    BlockSpec(6, "attention", (9, 10), True),
]
NASFPN_LEVELS = [3, 4, 5, 6, 7]


def resample(x: torch.Tensor, level: int, target_level: int, size: torch.Size) -> torch.Tensor:
    """``[B, C, h, w]`` map at ``level`` -> ``[B, C, *size]`` at ``target_level``: max-pool with
    kernel = stride = ``2**(target_level - level)`` (ceil mode, as TF "SAME") when coarser, nearest
    upsampling when finer."""
    if target_level > level:
        stride = 2 ** (target_level - level)
        return F.max_pool2d(x, stride, stride, ceil_mode=True)
    if target_level < level:
        return F.interpolate(x, size=size, mode="nearest")
    return x


class MergeBlock(nn.Module):
    """One block of a cell. ``forward(maps, sizes) -> [B, C, *sizes[level]]``; ``maps`` is the
    cell's list so far, ``sizes`` maps a level to its ``(H, W)``."""

    def __init__(self, spec: BlockSpec, input_levels: tuple[int, int], extra: list[int], extra_levels: list[int],
                 channels: int, padding: str):
        super().__init__()
        self.spec = spec
        self.input_levels = input_levels
        self.extra = extra                # unused same-level maps added by an output block
        self.extra_levels = extra_levels
        self.conv = ConvBn(channels, channels, 3, padding=padding)

    def forward(self, maps: list[torch.Tensor], sizes: dict[int, torch.Size]) -> torch.Tensor:
        level, size = self.spec.level, sizes[self.spec.level]
        a, b = (resample(maps[i], lv, level, size) for i, lv in zip(self.spec.inputs, self.input_levels))
        if self.spec.op == "sum":
            x = a + b
        else:  # global attention: the map from the coarser (or equal) level weights the other
            if self.input_levels[0] < self.input_levels[1]:
                a, b = b, a
            x = a + b * torch.sigmoid(a.amax(dim=(2, 3), keepdim=True))
        for i, lv in zip(self.extra, self.extra_levels):
            x = x + resample(maps[i], lv, level, size)
        return self.conv(F.relu(x))


def cell_wiring(spec: list[BlockSpec], levels: list[int]) -> list[tuple[tuple[int, int], list[int]]]:
    """Per block: the levels of its two inputs and the ids of the unused same-level maps an output
    block adds (tensorflow/tpu's ``num_output_connections`` rule), for cell inputs at ``levels``."""
    map_levels = list(levels)
    uses = [0] * len(levels)
    wiring = []
    for block in spec:
        for i in block.inputs:
            if i >= len(map_levels):
                raise ValueError(f"NAS-FPN block {block} reads map {i}, only {len(map_levels)} exist")
            uses[i] += 1
        extra = []
        if block.is_output:
            extra = [j for j, lv in enumerate(map_levels) if uses[j] == 0 and lv == block.level]
            for j in extra:
                uses[j] += 1
        wiring.append(((map_levels[block.inputs[0]], map_levels[block.inputs[1]]), extra))
        map_levels.append(block.level)
        uses.append(0)
    return wiring


class NASFPNCell(nn.Module):
    """One NAS-FPN cell: list of 5 ``[B, C, H_l, W_l]`` maps (P3-P7) -> the same shapes."""

    def __init__(self, channels: int, padding: str, spec: list[BlockSpec] = NASFPN_CELL,
                 levels: list[int] = NASFPN_LEVELS):
        super().__init__()
        self.levels = list(levels)
        self.blocks = nn.ModuleList()
        map_levels = list(levels)
        for block, (input_levels, extra) in zip(spec, cell_wiring(spec, levels)):
            self.blocks.append(MergeBlock(block, input_levels, extra, [map_levels[j] for j in extra], channels, padding))
            map_levels.append(block.level)
        outputs = map_levels[-len(levels):]
        if sorted(outputs) != self.levels:
            raise ValueError(f"NAS-FPN cell's last {len(levels)} blocks give levels {outputs}, need {self.levels}")
        # output i of the cell (level levels[i]) is map output_ids[i]
        self.output_ids = [len(map_levels) - len(levels) + outputs.index(lv) for lv in self.levels]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = {lv: f.shape[-2:] for lv, f in zip(self.levels, features)}
        maps = list(features)
        for block in self.blocks:
            maps.append(block(maps, sizes))
        return [maps[i] for i in self.output_ids]


class NASFPN(nn.Module):
    """Backbone features (levels ``in_levels``, finest first) -> ``repeats`` NAS-FPN cells ->
    ``channels``-channel maps on P3-P7, finest first: ``[B, channels, ceil(H/2**l), ceil(W/2**l)]``."""

    def __init__(self, in_channels: list[int], in_levels: list[int], channels: int = 256, repeats: int = 7,
                 min_level: int = 3, max_level: int = 7, padding: str = ""):
        super().__init__()
        if (min_level, max_level) != (NASFPN_LEVELS[0], NASFPN_LEVELS[-1]):
            raise ValueError(f"NAS-FPN's searched cell works on P3-P7: set neck.min_level=3, neck.max_level=7 "
                             f"(got {min_level}, {max_level})")
        if in_levels[0] != min_level or in_levels != list(range(min_level, in_levels[-1] + 1)) \
                or in_levels[-1] > max_level:
            raise ValueError(f"NAS-FPN needs consecutive backbone levels from P{min_level} up to at most "
                             f"P{max_level}, got {in_levels}")
        if repeats < 1:
            raise ValueError(f"NAS-FPN needs neck.repeats >= 1, got {repeats}")
        self.channels = channels
        self.levels = list(range(min_level, max_level + 1))
        self.out_channels = [channels] * len(self.levels)
        self.inputs = nn.ModuleList(ConvBn(c, channels, 1, padding=padding) if c != channels else nn.Identity()
                                    for c in in_channels)
        self.num_extra = max_level - in_levels[-1]
        self.cells = nn.ModuleList(NASFPNCell(channels, padding) for _ in range(repeats))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [proj(f) for proj, f in zip(self.inputs, features)]
        for _ in range(self.num_extra):
            maps.append(F.max_pool2d(maps[-1], 2, 2, ceil_mode=True))
        for cell in self.cells:
            maps = cell(maps)
        return maps

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named rows for the model summary: the input 1x1 projections, then each cell."""
        return [("inputs", self.inputs)] + [(f"cells.{i}", c) for i, c in enumerate(self.cells)]


@NECKS.register("nasfpn")
def build_nasfpn(n: Any, in_channels: list[int], in_levels: list[int]) -> NASFPN:
    """NAS-FPN cells from the ``neck`` section (``channels``, ``repeats``, levels, ``padding``)."""
    return NASFPN(in_channels, in_levels, n.channels, n.repeats, n.min_level, n.max_level, n.padding)
