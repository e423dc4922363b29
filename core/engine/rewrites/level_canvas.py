"""Several pyramid levels laid out on one zero-separated canvas, so that one convolution call
covers them all.

A head whose convolution weights are shared across levels calls each convolution once per level.
On the coarse levels (16x16 and smaller for EfficientDet-D0 at 512 px) a call costs far more
than its arithmetic (D0's three coarsest levels make 48 convolution calls). Placed side by side with ``gap`` zero rows / columns between them (``gap =
k // 2`` for ``k x k`` stride-1 convolutions with symmetric zero padding), a convolution over the
canvas gives every level exactly the output it gets alone, as long as the gaps are zero again
before each convolution: a level's border pixels see zeros across the gap, as they see the
zero padding when alone.

Layout: the first (finest) level at the top left; the others stacked top to bottom in a column to
its right, ``gap`` apart. For a pyramid whose sizes halve, the column fits beside the first level
(``8 + 1 + 4 <= 16``), and the canvas wastes little (400 pixels for the 336 of 16x16, 8x8, 4x4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class LevelCanvas:
    """Placement of maps of ``sizes`` (``[(H_l, W_l), ...]``, the finest first) on one canvas with
    ``gap`` zero pixels between them; ``(top, left)`` of each level in ``origins``."""

    def __init__(self, sizes: list[tuple[int, int]], gap: int):
        if len(sizes) < 2:
            raise ValueError(f"LevelCanvas lays out two or more levels, got sizes {sizes}")
        self.sizes = [tuple(s) for s in sizes]
        self.gap = gap
        (first_h, first_w), column = self.sizes[0], self.sizes[1:]
        tops = [sum(h + gap for h, _ in column[:i]) for i in range(len(column))]
        self.origins = [(0, 0)] + [(top, first_w + gap) for top in tops]
        self.height = max(first_h, tops[-1] + column[-1][0])
        self.width = first_w + gap + max(w for _, w in column)

    def place(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """One ``[B, C, height, width]`` canvas holding ``maps`` (``[B, C, H_l, W_l]`` in
        ``sizes``; ``B`` may be 1 for all), zero elsewhere."""
        if [tuple(m.shape[-2:]) for m in maps] != self.sizes:
            raise ValueError(f"LevelCanvas laid out for sizes {self.sizes}, got {[tuple(m.shape[-2:]) for m in maps]}")
        first_h, first_w = self.sizes[0]
        column_w = self.width - first_w - self.gap
        column = torch.cat([F.pad(m, (0, column_w - m.shape[-1], 0, self.gap)) for m in maps[1:]], dim=2)
        column = F.pad(column, (0, 0, 0, self.height - column.shape[-2]))  # negative: drops the last gap
        return torch.cat([F.pad(maps[0], (0, self.gap, 0, self.height - first_h)), column], dim=3)

    def split(self, canvas: torch.Tensor) -> list[torch.Tensor]:
        """The per-level regions of ``canvas`` (``[B, C, height, width]``): ``[B, C, H_l, W_l]``
        views, in ``sizes`` order."""
        return [canvas[..., top:top + h, left:left + w] for (top, left), (h, w) in zip(self.origins, self.sizes)]
