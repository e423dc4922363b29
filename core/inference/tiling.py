"""Tiled (sliced) inference for pictures much larger than the network input, as SAHI does.

A picture is cut into overlapping ``size`` x ``size`` windows of its own (original) pixels: along
each side the windows start every ``round(size * (1 - overlap))`` pixels and the last one is moved
back to end at the border; a side no longer than ``size`` is one window, so a picture smaller than
a tile is one tile, the whole picture. Each window is predicted as a picture of its own
(``core.inference.predictor.Predictor.detect_pictures``, batched), its boxes are moved back by the window's
corner into the picture's pixels, and the detections of all windows (and, with ``full``, of the
untiled picture) are merged: class-wise greedy NMS (``core.ops.nms.class_nms``) at ``iou``
(default ``test.nms_thresh``), or weighted boxes fusion (``core.inference.ensemble.weighted_boxes_fusion``,
all windows as one model: a fused box's score is the mean of its cluster) at ``iou`` (default the
detector's WBF IoU, 0.55). At most ``test.max_det_per_image`` detections are kept, best first.

An object cut by a window border is also seen whole in a neighbouring window when it is smaller
than the overlap (``size * overlap`` pixels). NMS keeps the whole copy (it scores higher) and the
cut piece when it overlaps the whole one too little, as a weaker extra detection; WBF averages
pieces that overlap it enough into the fused box, which then falls short of the object's extent.
Objects larger than a window are only seen in pieces: add the whole picture (``full``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from core.inference.ensemble import weighted_boxes_fusion
from core.ops.nms import class_nms
from core.ops.postprocess import Detections

TILE_MERGES = ("nms", "wbf")
DEFAULT_OVERLAP = 0.2


@dataclass(frozen=True)
class TilePlan:
    """How to tile: window side ``size`` (original pixels), ``overlap`` (fraction of ``size`` shared
    by neighbouring windows, in [0, 1)), ``merge`` (``"nms"`` or ``"wbf"``), ``full`` (also merge
    in the prediction on the whole, untiled picture) and ``iou`` (merge IoU; None = NMS:
    ``test.nms_thresh``, WBF: the detector's ``wbf_iou``)."""

    size: int
    overlap: float = DEFAULT_OVERLAP
    merge: str = "nms"
    full: bool = False
    iou: float | None = None

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"--tile {self.size}: the tile side must be a positive number of pixels")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap {self.overlap}: the tile overlap is a fraction in [0, 1)")
        if self.merge not in TILE_MERGES:
            raise ValueError(f"--tile-merge '{self.merge}': use one of {', '.join(TILE_MERGES)}")
        if self.iou is not None and not 0.0 < self.iou <= 1.0:
            raise ValueError(f"tile merge IoU {self.iou} must be in (0, 1]")

    @property
    def step(self) -> int:
        """Pixels between the starts of neighbouring windows."""
        return max(1, int(round(self.size * (1.0 - self.overlap))))

    def describe(self) -> str:
        return (f"tiles {self.size} px, overlap {self.overlap:g}, {self.merge}"
                + (" + full picture" if self.full else ""))


def tile_starts(length: int, size: int, step: int) -> list[int]:
    """Window starts along a side of ``length`` pixels: ``0, step, 2 step, ...`` while the window
    ends inside, then one ending exactly at ``length``; ``[0]`` when ``length <= size``."""
    if length <= size:
        return [0]
    return list(range(0, length - size, step)) + [length - size]


def tile_windows(width: int, height: int, size: int, overlap: float = DEFAULT_OVERLAP) -> list[tuple[int, int, int, int]]:
    """The windows ``(x0, y0, x1, y1)`` (original pixels, exclusive right/bottom) that tile a
    ``width`` x ``height`` picture, row by row; each is ``size`` x ``size`` or, on a side no longer
    than ``size``, that whole side."""
    step = TilePlan(size, overlap).step
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in tile_starts(height, size, step) for x in tile_starts(width, size, step)]


def shift_detections(det: Detections, x0: float, y0: float) -> Detections:
    """``det`` with its boxes moved by ``(x0, y0)``: window pixels -> picture pixels."""
    offset = torch.tensor([x0, y0, x0, y0], dtype=det.boxes.dtype)
    return Detections(det.boxes + offset, det.scores, det.labels)


def merge_detections(parts: Sequence[Detections], merge: str = "nms", iou: float = 0.5,
                     max_det: int | None = None) -> Detections:
    """One picture's detections from several windows (all in the picture's pixels) as one set:
    class-wise NMS at ``iou`` (``merge="nms"``) or WBF of all boxes as one model at ``iou``
    (``"wbf"``); at most ``max_det``, best first."""
    if merge not in TILE_MERGES:
        raise ValueError(f"tile merge '{merge}': use one of {', '.join(TILE_MERGES)}")
    boxes = torch.cat([p.boxes.reshape(-1, 4).float() for p in parts]) if parts else torch.zeros(0, 4)
    scores = torch.cat([p.scores.float() for p in parts]) if parts else torch.zeros(0)
    labels = torch.cat([p.labels.long() for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    if merge == "nms":
        keep = class_nms(boxes, scores, labels, iou)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = torch.argsort(scores, descending=True, stable=True)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
    else:
        b, s, lab = weighted_boxes_fusion([boxes.numpy()], [scores.numpy()], [labels.numpy()], iou_thr=iou)
        boxes, scores, labels = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab)
    if max_det is not None:
        boxes, scores, labels = boxes[:max_det], scores[:max_det], labels[:max_det]
    return Detections(boxes.reshape(-1, 4), scores, labels)


def tile_count(width: int, height: int, plan: TilePlan) -> int:
    """How many windows :func:`tile_windows` cuts a ``width`` x ``height`` picture into."""
    return len(tile_starts(width, plan.size, plan.step)) * len(tile_starts(height, plan.size, plan.step))
