"""Anchor boxes for a feature pyramid, computed once per input size."""
from __future__ import annotations

import functools

import torch


class AnchorGenerator:
    """Anchors of every level, in the order the head's outputs are flattened.

    For a level with stride ``s = 2**level`` and a ``H x W`` feature map, the anchor at grid cell
    ``(y, x)`` is centred at ``((x + 0.5) s, (y + 0.5) s)`` in input pixels, with side
    ``scale * s * 2**(i / num_scales)`` times the ``(w, h)`` multipliers of each aspect ratio.
    Order: level, then y, then x, then octave scale, then aspect ratio (as effdet / automl).
    """

    def __init__(self, levels: list[int], scale: float, num_scales: int, aspect_ratios: list[list[float]]):
        self.levels = list(levels)
        self.scale = scale
        self.num_scales = num_scales
        self.aspect_ratios = [tuple(r) for r in aspect_ratios]

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell."""
        return self.num_scales * len(self.aspect_ratios)

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map ``(H, W)`` per level for an input of ``image_size = (H, W)`` (ceil halving)."""
        sizes = []
        h, w = image_size
        for level in range(1, max(self.levels) + 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            if level in self.levels:
                sizes.append((h, w))
        return sizes

    def __call__(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """All anchors for an input of ``image_size = (H, W)``: ``[N, 4]`` xyxy input pixels."""
        return _anchors(tuple(self.levels), self.scale, self.num_scales, tuple(self.aspect_ratios),
                        tuple(image_size), str(device))


@functools.lru_cache(maxsize=16)
def _anchors(levels, scale, num_scales, aspect_ratios, image_size, device) -> torch.Tensor:
    gen = AnchorGenerator(list(levels), scale, num_scales, [list(r) for r in aspect_ratios])
    out = []
    for level, (h, w) in zip(levels, gen.feature_sizes(image_size)):
        stride = 2.0**level
        sizes = []
        for octave in range(num_scales):
            base = scale * stride * 2.0 ** (octave / num_scales)
            for rw, rh in aspect_ratios:
                sizes.append((base * rw / 2.0, base * rh / 2.0))
        half = torch.tensor(sizes, dtype=torch.float64)  # [A, 2] half widths / heights
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [HW, 1, 2]
        boxes = torch.cat([centers - half, centers + half], dim=-1)  # [HW, A, 4]
        out.append(boxes.reshape(-1, 4))
    return torch.cat(out).to(dtype=torch.float32, device=device)


def flatten_levels(outputs: list[torch.Tensor], num_outputs: int) -> torch.Tensor:
    """Head outputs per level ``[B, A*K, H_l, W_l]`` -> ``[B, N, K]`` in anchor order
    (level, y, x, anchor), where ``N = sum_l H_l * W_l * A`` and ``K = num_outputs``."""
    batch = outputs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1, num_outputs) for o in outputs], dim=1)
