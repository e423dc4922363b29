"""Box coding between xyxy boxes and regression targets relative to anchors.

Coding (Faster R-CNN, no variance scaling, as EfficientDet): for anchor centre ``(xa, ya)`` and
size ``(wa, ha)`` and box centre ``(x, y)`` and size ``(w, h)``:
``dx = (x - xa) / wa, dy = (y - ya) / ha, dw = log(w / wa), dh = log(h / ha)``.
"""
from __future__ import annotations

import math

import torch

_MAX_LOG = math.log(1000.0 / 16)  # clamp for dw, dh when decoding (as torchvision)


def _centers(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``boxes``, ``anchors``: ``[..., 4]`` xyxy (same coordinate space) -> ``[..., 4]`` (dx, dy, dw, dh)."""
    x, y, w, h = _centers(boxes)
    xa, ya, wa, ha = _centers(anchors)
    w = w.clamp(min=1e-6)
    h = h.clamp(min=1e-6)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=-1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`: ``[..., 4]`` (dx, dy, dw, dh) -> ``[..., 4]`` xyxy boxes."""
    xa, ya, wa, ha = _centers(anchors)
    dx, dy, dw, dh = deltas.unbind(-1)
    x = xa + dx * wa
    y = ya + dy * ha
    w = wa * torch.exp(dw.clamp(max=_MAX_LOG))
    h = ha * torch.exp(dh.clamp(max=_MAX_LOG))
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)
