"""Class-wise greedy non-maximum suppression."""
from __future__ import annotations

import torch
from torchvision.ops import nms

from core.ops.iou import paired_box_iou


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes that greedy NMS keeps within each class, highest score first.

    ``boxes`` ``[N, 4]`` xyxy (any one coordinate space), ``scores`` ``[N]``, ``labels`` ``[N]``
    int64 >= 0. A box is dropped when a kept box of its class with a higher score overlaps it with
    IoU > ``iou_threshold``: the boxes ``torchvision.ops.nms`` keeps class by class (the order among
    equal scores aside).

    Few boxes or few classes: one ``torchvision.ops.nms`` over all boxes, each class's shifted
    (in float64) past the others' so that classes cannot overlap (torchvision's ``batched_nms``
    loops over the classes below 5000 boxes on a GPU, one kernel each). That kernel tests each box
    against every later box not yet suppressed: ~0.5 M pairs for 1000
    candidates spread over many classes. When the classes cut the pairs 16-fold or more (and
    there are 256 boxes or more, below which the kernel's fixed cost wins), only same-class pairs
    are tested, all at once, and the greedy choice is resolved on the overlapping pairs in rounds:
    start with every box kept, then keep a box when no kept box of higher score overlaps it. After
    round ``r`` a box is right if every chain of overlapping boxes leading to it in decreasing
    score is shorter than ``r``, so the rounds reach the greedy result and stop when nothing
    changes (a few rounds for real detections; at most the largest class).
    """
    n = boxes.shape[0]
    counts = torch.bincount(labels) if n else labels.new_zeros(0)
    pairs = int((counts * (counts - 1) // 2).sum())
    if n < 256 or 32 * pairs > n * n:
        return _shifted_nms(boxes, scores, labels, iou_threshold)
    by_score = scores.argsort(descending=True, stable=True)
    order = by_score.index_select(0, labels.index_select(0, by_score).argsort(stable=True))  # by class, then score
    ends = counts.cumsum(0).index_select(0, labels.index_select(0, order))  # where each box's class ends in order
    position = torch.arange(n, device=boxes.device)
    behind = ends - position - 1  # boxes of the same class after each box
    first = position.repeat_interleave(behind, output_size=pairs)
    second = torch.arange(pairs, device=boxes.device) - (behind.cumsum(0) - ends).repeat_interleave(behind, output_size=pairs)
    sorted_boxes = boxes.index_select(0, order)
    overlapping = paired_box_iou(sorted_boxes.index_select(0, first), sorted_boxes.index_select(0, second)) > iou_threshold
    first, second = first[overlapping], second[overlapping]  # first suppresses second if first is kept
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    while True:
        suppressed = torch.zeros_like(keep)
        suppressed[second[keep.index_select(0, first)]] = True
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    kept = torch.zeros_like(keep)
    kept[order[keep]] = True
    return by_score[kept[by_score]]


def _shifted_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """One ``nms`` call for all classes: class ``k``'s boxes moved by ``k * (span + 1)`` in float64,
    where float32 coordinates keep their precision (torchvision's own shift is in the boxes' dtype)."""
    if boxes.numel() == 0:
        return labels.new_zeros(0)
    shifted = boxes.double()
    span = shifted.max() - shifted.min() + 1
    shifted = shifted + (labels.double() * span)[:, None]
    return nms(shifted, scores.double(), iou_threshold)
