"""From raw head outputs to final detections: top-k, decode, clip, class-wise NMS."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from core import box_coder


@dataclass
class Detections:
    """One image's detections: ``boxes`` float32 ``[K, 4]`` xyxy (the space is stated by whoever
    returns it), ``scores`` ``[K]`` in (0, 1), ``labels`` int64 ``[K]`` contiguous class indices."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def rescale(self, scale: float, orig_size: tuple[int, int]) -> "Detections":
        """Input pixels -> original pixels: divide by ``scale`` and clip to ``orig_size = (h, w)``."""
        boxes = self.boxes / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_size[0])
        return Detections(boxes, self.scores, self.labels)

    def to_cpu(self) -> "Detections":
        return Detections(self.boxes.cpu(), self.scores.cpu(), self.labels.cpu())


def postprocess(class_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor,
                image_size: tuple[int, int], top_n: int, min_score: float, nms_thresh: float,
                max_det: int) -> list[Detections]:
    """Detections per image, boxes in input pixels.

    ``class_logits`` ``[B, N, C]``, ``box_deltas`` ``[B, N, 4]``, ``anchors`` ``[N, 4]`` xyxy.
    Keeps the ``top_n`` highest (anchor, class) logits of each image, drops scores below
    ``min_score``, decodes and clips the boxes to ``image_size = (H, W)``, runs NMS per class at
    ``nms_thresh`` and returns at most ``max_det`` detections sorted by score.
    """
    batch, _, num_classes = class_logits.shape
    flat = class_logits.reshape(batch, -1)
    k = min(top_n, flat.shape[1])
    top_logits, top_idx = flat.topk(k, dim=1)
    results = []
    for i in range(batch):
        scores = top_logits[i].float().sigmoid()
        keep = scores > min_score
        scores, idx = scores[keep], top_idx[i][keep]
        anchor_idx = idx // num_classes
        labels = idx % num_classes
        boxes = box_coder.decode(box_deltas[i, anchor_idx].float(), anchors[anchor_idx])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_det]
        results.append(Detections(boxes[keep], scores[keep], labels[keep]))
    return results
