"""From raw head outputs to final detections: top-k, decode, clip, class-wise NMS."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from core.ops import box_coder
from core.ops.nms import class_nms


@dataclass
class Detections:
    """One image's detections: ``boxes`` float32 ``[K, 4]`` xyxy (the space is stated by whoever
    returns it), ``scores`` ``[K]`` in (0, 1), ``labels`` int64 ``[K]`` contiguous class indices."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def rescale(self, scale: float, orig_size: tuple[int, int]) -> "Detections":
        """Input pixels -> original pixels: divide by ``scale`` and clip to ``orig_size = (h, w)``;
        boxes left empty by the clip (found wholly in the input's padding) are dropped."""
        boxes = self.boxes / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_size[0])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if bool(keep.all()):
            return Detections(boxes, self.scores, self.labels)
        return Detections(boxes[keep], self.scores[keep], self.labels[keep])


def detections_to_cpu(detections: Sequence[Detections]) -> list[Detections]:
    """The same detections on the CPU, copied over in three transfers for the whole batch instead of
    three per image (each a device sync)."""
    if not detections:
        return []
    sizes = [len(d.scores) for d in detections]
    fields = [torch.cat([getattr(d, name) for d in detections]).cpu().split(sizes)
              for name in ("boxes", "scores", "labels")]
    return [Detections(*parts) for parts in zip(*fields)]


def top_candidates(class_scores: Sequence[torch.Tensor], k: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest (anchor, class) scores of one image that are >= ``floor`` (scores of -inf
    never count).

    ``class_scores``: per level ``[N_l, C]`` logits or probabilities (any layout; contiguous ones
    are read without a copy). Returns ``values [K]`` and flat indices ``[K]`` into the levels'
    concatenation ``[sum N_l, C]`` (``anchor * C + class``), ``K <= k``, largest first.

    A plain ``topk`` over all 4.4 M logits of an EfficientDet-D0 image runs on one thread (the
    figures are in docs/PERFORMANCE.md). Instead the logits are cut into ~16k slices (of a length that divides
    every level when one is near; a level's remainder is padded with -inf to a whole slice) and
    the ``k`` slices with the largest maxima are kept. Their smallest maximum ``t`` is a threshold
    that ``k`` logits reach, so the ``k``-th largest logit is >= ``t``; every logit above ``t`` lies
    in a kept slice (its slice's maximum is above ``t``), and each kept slice holds a logit >= ``t``,
    so the kept slices hold the ``k`` largest logits also when many tie at ``t``. Only the kept
    slices are searched, and ``topk`` runs on their logits >= ``t``.
    """
    flat = [x.reshape(-1) for x in class_scores]
    total = sum(x.numel() for x in flat)
    if total == 0 or k <= 0:
        empty = flat[0].new_empty((0,)) if flat else torch.empty(0)
        return empty, torch.empty(0, dtype=torch.int64, device=empty.device)
    length = _slice_length([x.numel() for x in flat if x.numel()], max(1, total // (16 * k)))
    pieces: list[tuple[int, torch.Tensor]] = []  # (flat offset, [slices, length] rows)
    offset = 0
    for x in flat:
        whole = x.numel() // length * length
        if whole:
            pieces.append((offset, x[:whole].view(-1, length)))
        if whole < x.numel():
            tail = torch.nn.functional.pad(x[whole:], (0, length - (x.numel() - whole)), value=-math.inf)
            pieces.append((offset + whole, tail.view(1, -1)))
        offset += x.numel()
    maxima = torch.cat([rows.amax(dim=1) for _, rows in pieces])
    top_maxima, top_slices = maxima.topk(min(k, maxima.numel()), sorted=False)
    threshold = top_maxima.min().clamp(min=max(floor, torch.finfo(maxima.dtype).min))  # the padding never passes
    kept = top_slices[top_maxima >= threshold].sort().values  # slice numbers, ascending
    first_slice = [0]
    for _, rows in pieces:
        first_slice.append(first_slice[-1] + rows.shape[0])
    cuts = torch.searchsorted(kept, torch.tensor(first_slice, device=kept.device)).tolist()
    blocks, starts = [], []
    for (start, rows), first, lo, hi in zip(pieces, first_slice, cuts[:-1], cuts[1:]):
        if hi > lo:
            local = kept[lo:hi] - first
            blocks.append(rows.index_select(0, local))
            starts.append(start + local * length)
    if not blocks:  # nothing reaches the floor
        return maxima[:0], kept
    block = torch.cat(blocks)
    r, c = (block >= threshold).nonzero(as_tuple=True)
    values, index = block[r, c], torch.cat(starts)[r] + c
    top, order = values.topk(min(k, values.numel()))
    return top, index[order]


def _slice_length(sizes: list[int], target: int) -> int:
    """The largest common divisor of ``sizes`` in ``(target / 2, target]``, preferring multiples of 32
    (the row maxima of such slices are found faster: docs/PERFORMANCE.md), else ``target``."""
    common = 0
    for n in sizes:
        common = math.gcd(common, n)
    divisors = [d for d in range(target, target // 2, -1) if common % d == 0]
    return next((d for d in divisors if d % 32 == 0), divisors[0] if divisors else target)


def batch_top_candidates(class_scores: Sequence[torch.Tensor], k: int,
                         floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest (anchor, class) scores >= ``floor`` of each image of a batch.

    ``class_scores``: per level ``[B, N_l, C]`` logits or probabilities. Returns ``values [B, K]``
    and flat indices ``[B, K]`` into each image's ``[sum N_l, C]`` (``anchor * C + class``),
    largest first; where an image has fewer than ``K`` such scores its row ends in ``-inf`` values
    (index 0). On a GPU one ``topk`` over the batch's concatenated scores (a few kernels whatever
    the batch); on a CPU :func:`top_candidates` image by image (a plain ``topk`` runs single-threaded
    there and is the slow part of post-processing).
    """
    if class_scores[0].is_cuda:
        return full_topk(class_scores, k, floor)
    batch = class_scores[0].shape[0]
    found = [top_candidates([x[i] for x in class_scores], k, floor) for i in range(batch)]
    width = max(v.numel() for v, _ in found)
    values = class_scores[0].new_full((batch, width), -math.inf)
    index = torch.zeros(batch, width, dtype=torch.int64, device=values.device)
    for i, (v, idx) in enumerate(found):
        values[i, :v.numel()] = v
        index[i, :idx.numel()] = idx
    return values, index


def full_topk(class_scores: Sequence[torch.Tensor], k: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch_top_candidates` as one ``topk`` over each image's concatenated scores (what it
    runs on a GPU); same inputs and outputs, the ``-inf`` fill included."""
    batch = class_scores[0].shape[0]
    flat = torch.cat([x.reshape(batch, -1) for x in class_scores], dim=1)
    values, index = flat.topk(min(k, flat.shape[1]), dim=1)
    return values.masked_fill(values < floor, -math.inf), index


def postprocess(class_logits: Sequence[torch.Tensor], box_deltas: torch.Tensor, anchors: torch.Tensor,
                image_size: tuple[int, int], top_n: int, min_score: float, nms_thresh: float,
                max_det: int) -> list[Detections]:
    """Detections per image, boxes in input pixels.

    ``class_logits``: per level ``[B, N_l, C]`` (e.g. ``[B, H*W*A, C]`` views of the head
    outputs), the levels' anchors concatenated in order; ``box_deltas`` ``[B, N, 4]``;
    ``anchors`` ``[N, 4]`` xyxy. Keeps the ``top_n`` highest (anchor, class) logits of each image
    with score above ``min_score``, decodes and clips the boxes to ``image_size = (H, W)``, runs
    NMS per class at ``nms_thresh`` and returns at most ``max_det`` detections sorted by score.
    The whole batch goes through each step at once (no per-image loop on a GPU).
    """
    num_classes = class_logits[0].shape[-1]
    # sigmoid(x) > min_score  <=>  x > logit(min_score); a hair lower, the exact test follows
    min_logit = math.log(min_score / (1.0 - min_score)) - 1e-3 if 0.0 < min_score < 1.0 else -math.inf
    top_logits, top_idx = batch_top_candidates(class_logits, top_n, min_logit)
    image, anchor_idx, labels, scores = passing_candidates(top_logits.float().sigmoid(), top_idx, min_score,
                                                           num_classes)
    boxes = box_coder.decode(box_deltas[image, anchor_idx].float(), anchors[anchor_idx])
    return clip_and_suppress(boxes, scores, labels, image, box_deltas.shape[0], num_classes, image_size,
                             nms_thresh, max_det)


def passing_candidates(scores: torch.Tensor, index: torch.Tensor, min_score: float,
                       num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates of :func:`batch_top_candidates` (``scores`` ``[B, K]`` as probabilities, flat
    ``index`` ``[B, K]``) scoring above ``min_score``, as flat ``[M]`` tensors: image numbers,
    anchor (or box) indices, class labels and scores."""
    image, rank = (scores > min_score).nonzero(as_tuple=True)
    idx = index[image, rank]
    return image, idx // num_classes, idx % num_classes, scores[image, rank]


def clip_and_suppress(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                      num_images: int, num_classes: int, image_size: tuple[int, int], nms_thresh: float,
                      max_det: int) -> list[Detections]:
    """Candidates of a batch (``boxes`` ``[K, 4]`` xyxy input pixels, modified in place; ``scores``,
    ``labels`` in ``0..num_classes-1`` and image numbers ``images`` ``[K]``) clipped to
    ``image_size = (H, W)``, empty boxes dropped, NMS per image and class at ``nms_thresh`` (all
    images in one call): per image of ``num_images``, at most ``max_det`` detections, highest
    score first."""
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels, images = boxes[nonempty], scores[nonempty], labels[nonempty], images[nonempty]
    if num_images == 1:  # the latency case: no grouping by image (it costs small ops)
        keep = class_nms(boxes, scores, labels, nms_thresh)[:max_det]
        return [Detections(boxes[keep], scores[keep], labels[keep])]
    keep = class_nms(boxes, scores, images * num_classes + labels, nms_thresh)  # highest score first
    keep = keep.index_select(0, images.index_select(0, keep).argsort(stable=True))  # by image, then score
    kept_images = images.index_select(0, keep)
    counts = torch.bincount(kept_images, minlength=num_images)
    rank = torch.arange(keep.numel(), device=keep.device) - (counts.cumsum(0) - counts).index_select(0, kept_images)
    keep = keep[rank < max_det]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    sizes = counts.clamp(max=max_det).tolist()
    return [Detections(b, s, l) for b, s, l in zip(boxes.split(sizes), scores.split(sizes), labels.split(sizes))]
