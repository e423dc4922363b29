"""Anchor assignment and the EfficientDet / RetinaNet loss (focal classification + Huber box)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from core.ops import box_coder
from core.ops.focal_loss import BACKGROUND, IGNORE, sigmoid_focal_loss_sum
from core.ops.iou import batched_box_iou


@dataclass
class Assignment:
    """Per-anchor training targets for a batch.

    ``labels``: int64 ``[B, N]``, a class index, ``BACKGROUND`` or ``IGNORE``;
    ``boxes``: float32 ``[B, N, 4]`` xyxy input pixels of the matched ground truth (zeros elsewhere).
    """

    labels: torch.Tensor
    boxes: torch.Tensor


def assign(anchors: torch.Tensor, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
           match_iou: float, ignore_iou: float, max_iou_elements: int = 2**22) -> Assignment:
    """Match anchors ``[N, 4]`` xyxy to each image's ground truth (``[G_i, 4]`` xyxy input pixels,
    labels ``[G_i]``). IoU >= ``match_iou`` is positive, below ``ignore_iou`` background, between
    ignored; every ground-truth box also claims the anchors it overlaps best (low-quality matches),
    so no object goes unlearned. An anchor equally close to several boxes takes the first.

    Images are matched together: their boxes padded to the batch's largest ``G``, one
    ``[images, G, N]`` IoU tensor per group of images, a group as large as keeps that tensor within
    ``max_iou_elements`` (one image at a time at least, as for EfficientDet-D7's 442k anchors). The
    default, 4 M (16 MB a tensor), timed best overall of 2^18-2^24 on a 2-core CPU; on a GPU
    it still takes a batch of 16 COCO-like images (8 boxes, 49k anchors at 512 px) in two groups."""
    n = anchors.shape[0]
    labels = torch.full((len(gt_boxes), n), BACKGROUND, dtype=torch.int64, device=anchors.device)
    boxes = torch.zeros((len(gt_boxes), n, 4), dtype=anchors.dtype, device=anchors.device)
    g = max((len(b) for b in gt_boxes), default=0)
    if g == 0:
        return Assignment(labels, boxes)
    padded_boxes = pad_sequence([b.to(anchors.dtype) for b in gt_boxes], batch_first=True)  # [B, G, 4], zeros
    padded_labels = pad_sequence(list(gt_labels), batch_first=True, padding_value=-1)  # [B, G]; classes are >= 0
    padding = padded_labels < 0
    group = max(1, max_iou_elements // (g * n))
    for start in range(0, len(gt_boxes), group):
        rows = slice(start, start + group)
        iou = batched_box_iou(padded_boxes[rows], anchors).masked_fill_(padding[rows, :, None], -1.0)  # [b, G, N]
        best_iou, best_gt = iou.max(dim=1)  # [b, N]: the first best box (padding, at -1, never wins)
        per_gt_best = iou.max(dim=2, keepdim=True).values  # [b, G, 1]; a box that overlaps nothing claims nothing
        forced = (iou == per_gt_best.masked_fill(per_gt_best <= 0, 2.0)).any(dim=1)
        matched = padded_labels[rows].gather(1, best_gt)
        img_labels = torch.where(best_iou >= match_iou, matched, IGNORE)
        img_labels = torch.where(best_iou < ignore_iou, BACKGROUND, img_labels)
        labels[rows] = torch.where(forced, matched, img_labels)
        boxes[rows] = padded_boxes[rows].gather(1, best_gt[..., None].expand(-1, -1, 4))
    return Assignment(labels, boxes)


def detection_loss(class_logits: list[torch.Tensor], box_deltas: torch.Tensor, anchors: torch.Tensor,
                   assignment: Assignment, focal_alpha: float, focal_gamma: float, huber_delta: float,
                   box_loss_weight: float, num_positives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Focal loss over all non-ignored anchors and classes plus Huber loss on the encoded box
    offsets of positive anchors, both normalised by the number of positives.

    ``class_logits``: per pyramid level ``[B, ..., C]`` (any strides, e.g. ``[B, H, W, A, C]``
    views of the head outputs) whose leading dims, flattened and concatenated over levels, are
    the ``N`` anchors in order; ``box_deltas`` ``[B, N, 4]``; ``anchors`` ``[N, 4]`` xyxy.
    ``num_positives`` may be passed in (e.g. averaged over processes); by default it is counted
    here. Returns ``loss = cls_loss + box_loss_weight * box_loss`` with both parts (float32).
    """
    labels = assignment.labels
    positive = labels >= 0
    if num_positives is None:
        num_positives = positive.sum()
    norm = num_positives.to(torch.float32).clamp(min=1.0)

    counts = [logits.shape[1:-1].numel() for logits in class_logits]
    if sum(counts) != labels.shape[1]:
        raise ValueError(f"class logits cover {sum(counts)} anchors, the assignment {labels.shape[1]}")
    level_labels = [lab.reshape(logits.shape[:-1]) for lab, logits in zip(labels.split(counts, dim=1), class_logits)]
    cls_loss = sigmoid_focal_loss_sum(class_logits, level_labels, focal_alpha, focal_gamma) / norm

    if positive.any():
        pos_anchors = anchors.unsqueeze(0).expand_as(assignment.boxes)[positive]
        box_target = box_coder.encode(assignment.boxes[positive], pos_anchors)
        box = F.huber_loss(box_deltas.float()[positive], box_target, delta=huber_delta, reduction="sum")
        box_loss = box / (norm * 4.0)
    else:
        box_loss = box_deltas.float().sum() * 0.0
    return {"loss": cls_loss + box_loss_weight * box_loss, "cls_loss": cls_loss, "box_loss": box_loss}
