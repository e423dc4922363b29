"""Intersection over union of xyxy boxes (all arguments in one pixel space), in the forms DetLab needs.

Torch: :func:`paired_box_iou` (row by row, as torchvision's NMS kernel computes it) and
:func:`batched_box_iou` (every box of each image against shared anchors, as ``torchvision.ops.box_iou``
computes it). NumPy: :func:`box_iou` (every pair of two sets) and :func:`centred_wh_iou` (sizes only,
boxes placed on one centre, for anchor fitting).
"""
from __future__ import annotations

import numpy as np
import torch


def paired_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` and ``b[i]`` (``[P, 4]`` xyxy each), computed as torchvision's NMS kernel does."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


def batched_box_iou(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU ``[B, G, N]`` of ``boxes`` ``[B, G, 4]`` with ``anchors`` ``[N, 4]``, both xyxy; the same
    arithmetic as ``torchvision.ops.box_iou`` image by image, so the same values to the bit."""
    area_boxes = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area_anchors = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    b, a = boxes[:, :, None, :], anchors[None, None]
    width = (torch.minimum(b[..., 2], a[..., 2]) - torch.maximum(b[..., 0], a[..., 0])).clamp_(min=0)
    height = (torch.minimum(b[..., 3], a[..., 3]) - torch.maximum(b[..., 1], a[..., 1])).clamp_(min=0)
    inter = width.mul_(height)
    union = area_boxes[..., None] + area_anchors - inter
    return inter.div_(union)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box of ``a`` ``[N, 4]`` with every one of ``b`` ``[K, 4]`` -> ``[N, K]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def centred_wh_iou(wh: np.ndarray, k: np.ndarray) -> np.ndarray:
    """IoU ``[N, K]`` of boxes ``wh`` ``[N, 2]`` and ``k`` ``[K, 2]`` placed on the same centre."""
    inter = np.minimum(wh[:, None, 0], k[None, :, 0]) * np.minimum(wh[:, None, 1], k[None, :, 1])
    return inter / (wh[:, None].prod(axis=2) + k[None].prod(axis=2) - inter)
