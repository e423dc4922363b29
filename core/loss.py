"""Anchor assignment and the EfficientDet / RetinaNet loss (focal classification + Huber box)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from core import box_coder
from core.focal_loss import BACKGROUND, IGNORE, sigmoid_focal_loss_sum


@dataclass
class Assignment:
    """Per-anchor training targets for a batch.

    ``labels``: int64 ``[B, N]``, a class index, ``BACKGROUND`` or ``IGNORE``;
    ``boxes``: float32 ``[B, N, 4]`` xyxy input pixels of the matched ground truth (zeros elsewhere).
    """

    labels: torch.Tensor
    boxes: torch.Tensor


def assign(anchors: torch.Tensor, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
           match_iou: float, ignore_iou: float) -> Assignment:
    """Match anchors ``[N, 4]`` xyxy to each image's ground truth (``[G_i, 4]`` xyxy input pixels,
    labels ``[G_i]``). IoU >= ``match_iou`` is positive, below ``ignore_iou`` background, between
    ignored; every ground-truth box also claims the anchors it overlaps best (low-quality matches),
    so no object goes unlearned."""
    n = anchors.shape[0]
    labels = torch.full((len(gt_boxes), n), BACKGROUND, dtype=torch.int64, device=anchors.device)
    boxes = torch.zeros((len(gt_boxes), n, 4), dtype=anchors.dtype, device=anchors.device)
    for i, (gb, gl) in enumerate(zip(gt_boxes, gt_labels)):
        if gb.numel() == 0:
            continue
        iou = box_iou(gb, anchors)  # [G, N]
        best_iou, best_gt = iou.max(dim=0)
        per_gt_best = iou.max(dim=1, keepdim=True).values
        forced = ((iou == per_gt_best) & (per_gt_best > 0)).any(dim=0)
        img_labels = gl[best_gt]
        img_labels = torch.where(best_iou >= match_iou, img_labels, torch.full_like(img_labels, IGNORE))
        img_labels = torch.where(best_iou < ignore_iou, torch.full_like(img_labels, BACKGROUND), img_labels)
        img_labels = torch.where(forced, gl[best_gt], img_labels)
        labels[i] = img_labels
        boxes[i] = gb[best_gt]
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
