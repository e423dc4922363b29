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
    are tested (``PAIRS_PER_CHUNK`` at a time), and the greedy choice is resolved on the overlapping
    pairs in rounds: start with every box kept, then keep a box when no kept box of higher score
    overlaps it. After round ``r`` a box is right if every chain of overlapping boxes leading to it
    in decreasing score is shorter than ``r``, so the rounds reach the greedy result and stop when
    nothing changes (a few rounds for real detections; at most the largest class).
    """
    n = boxes.shape[0]
    counts = torch.bincount(labels) if n else labels.new_zeros(0)
    pairs = int((counts * (counts - 1) // 2).sum())
    if n < 256 or 32 * pairs > n * n:
        return _shifted_nms(boxes, scores, labels, iou_threshold)
    by_score = scores.argsort(descending=True, stable=True)
    order = by_score.index_select(0, labels.index_select(0, by_score).argsort(stable=True))  # by class, then score
    ends = counts.cumsum(0).index_select(0, labels.index_select(0, order))  # where each box's class ends in order
    behind = ends - torch.arange(n, device=boxes.device) - 1  # boxes of the same class after each box
    first, second = _overlapping_pairs(boxes.index_select(0, order), behind, pairs, iou_threshold)
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


PAIRS_PER_CHUNK = 1 << 20  # same-class pairs tested at once: ~170 MiB at the peak (docs/PERFORMANCE.md)


def _overlapping_pairs(boxes: torch.Tensor, behind: torch.Tensor, pairs: int,
                       iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs ``(i, j)``, ``i < j``, of ``boxes`` ``[N, 4]`` (sorted by class, then by falling score) that
    overlap with IoU > ``iou_threshold``, where ``behind[i]`` is the number of boxes of ``i``'s class after
    it (so ``j`` runs over ``i + 1 .. i + behind[i]``; ``pairs`` is their sum): two ``[P]`` index tensors,
    by ``i`` then ``j``. The pairs are tested ``PAIRS_PER_CHUNK`` at a time, whole boxes at a time, so
    memory stays bounded when tens of thousands of candidates make hundreds of millions of pairs."""
    total = behind.cumsum(0)  # pairs of the boxes up to each box
    firsts, seconds = [], []
    start, done, n = 0, 0, behind.numel()
    while start < n:
        if pairs - done <= PAIRS_PER_CHUNK:  # the rest at once (all of it, as a rule: no sync to find a cut)
            stop, chunk = n, pairs - done
        else:
            stop = max(start + 1, int(torch.searchsorted(total, done + PAIRS_PER_CHUNK, right=True)))
            chunk = int(total[stop - 1]) - done
        counts = behind[start:stop]
        if chunk:
            first = torch.arange(start, stop, device=boxes.device).repeat_interleave(counts, output_size=chunk)
            # j - i - 1 counts up from 0 within each box's run of pairs
            step = torch.arange(chunk, device=boxes.device) - (counts.cumsum(0) - counts).repeat_interleave(
                counts, output_size=chunk)
            second = first + 1 + step
            overlapping = paired_box_iou(boxes.index_select(0, first), boxes.index_select(0, second)) > iou_threshold
            firsts.append(first[overlapping])
            seconds.append(second[overlapping])
        start, done = stop, done + chunk
    if not firsts:
        empty = behind.new_zeros(0)
        return empty, empty
    return torch.cat(firsts), torch.cat(seconds)


def _shifted_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """One ``nms`` call for all classes: class ``k``'s boxes moved by ``k * (span + 1)`` in float64,
    where float32 coordinates keep their precision (torchvision's own shift is in the boxes' dtype)."""
    if boxes.numel() == 0:
        return labels.new_zeros(0)
    shifted = boxes.double()
    span = shifted.max() - shifted.min() + 1
    shifted = shifted + (labels.double() * span)[:, None]
    return nms(shifted, scores.double(), iou_threshold)
