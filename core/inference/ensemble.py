"""Combining detections: weighted boxes fusion (WBF) of several models or test-time-augmented passes,
and the box arithmetic of horizontal-flip TTA.

WBF (Solovyev, Wang, Gabruseva, "Weighted boxes fusion: Ensembling boxes from different object
detection models", 2021): all boxes of all models, per class, sorted by score; each box joins the
fused box it overlaps most if that IoU exceeds ``iou_thr``, else it starts a new cluster. A fused
box is the score-weighted mean of its cluster's corners; its score the mean score of the cluster
times ``min(cluster size, models) / sum(model weights)``, so a box found by only some models is
down-weighted. Unlike NMS, no box is thrown away: every one moves its cluster's coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from core.ops.postprocess import Detections
from core.ops.iou import box_iou

WBF_IOU = 0.55  # the paper's default IoU for joining a cluster


def weighted_boxes_fusion(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray],
                          labels_list: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                          iou_thr: float = WBF_IOU, skip_box_thr: float = 0.0
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse the detections of ``M`` models (or TTA passes) of one image.

    ``boxes_list[m]``: ``[K_m, 4]`` xyxy, every model in the same pixel space (e.g. original
    pixels); ``scores_list[m]``: ``[K_m]``; ``labels_list[m]``: ``[K_m]`` class indices.
    ``weights``: one per model (default 1); a box's score is multiplied by its model's weight.
    Boxes scoring below ``skip_box_thr`` are ignored. Boxes of different labels never fuse.
    Returns ``(boxes float32 [K, 4] xyxy, scores float32 [K], labels int64 [K])`` sorted by
    score, highest first.
    """
    m = len(boxes_list)
    if not (len(scores_list) == len(labels_list) == m):
        raise ValueError(f"{m} box arrays, {len(scores_list)} score arrays, {len(labels_list)} label arrays")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or (w <= 0).any():
        raise ValueError(f"weights must be {m} positive numbers, got {weights}")
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    if m == 0:
        return empty
    boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in boxes_list])
    raw = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores_list])
    labels = np.concatenate([np.asarray(lab, np.int64).reshape(-1) for lab in labels_list])
    model = np.concatenate([np.full(len(np.asarray(s).reshape(-1)), k) for k, s in enumerate(scores_list)])
    if not len(boxes) == len(raw) == len(labels):
        raise ValueError("each model needs as many boxes as scores and labels")
    keep = raw >= skip_box_thr
    boxes, scores, labels = boxes[keep], raw[keep] * w[model[keep]], labels[keep]
    out_boxes, out_scores, out_labels = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        fused = np.zeros((len(idx), 4))
        coord_sum = np.zeros((len(idx), 4))
        score_sum = np.zeros(len(idx))
        count = np.zeros(len(idx), dtype=np.int64)
        k = 0
        for i in idx:
            j = -1
            if k:
                ious = box_iou(boxes[i][None], fused[:k])[0]
                best = int(np.argmax(ious))
                if ious[best] > iou_thr:
                    j = best
            if j < 0:
                j, k = k, k + 1
            coord_sum[j] += scores[i] * boxes[i]
            score_sum[j] += scores[i]
            count[j] += 1
            fused[j] = coord_sum[j] / max(score_sum[j], 1e-12)
        conf = score_sum[:k] / count[:k] * np.minimum(count[:k], m) / w.sum()
        out_boxes.append(fused[:k])
        out_scores.append(conf)
        out_labels.append(np.full(k, c, dtype=np.int64))
    if not out_boxes:
        return empty
    b, s, lab = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    order = np.argsort(-s, kind="stable")
    return b[order].astype(np.float32), s[order].astype(np.float32), lab[order]


def fuse_detections(detections: Sequence[Detections], weights: Sequence[float] | None = None,
                    iou_thr: float = WBF_IOU, skip_box_thr: float = 0.0, max_det: int | None = None) -> Detections:
    """WBF of one image's :class:`Detections` from several models / passes (all in the same pixel
    space); at most ``max_det`` fused detections, best first."""
    to_np = [(d.boxes.detach().cpu().float().numpy(), d.scores.detach().cpu().float().numpy(),
              d.labels.detach().cpu().numpy()) for d in detections]
    b, s, lab = weighted_boxes_fusion([t[0] for t in to_np], [t[1] for t in to_np], [t[2] for t in to_np],
                                      weights, iou_thr, skip_box_thr)
    if max_det is not None:
        b, s, lab = b[:max_det], s[:max_det], lab[:max_det]
    return Detections(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab))


def fuse_per_image(runs: Sequence[dict[int, Detections]], weights: Sequence[float] | None = None,
                   iou_thr: float = WBF_IOU, skip_box_thr: float = 0.0,
                   max_det: int | None = None) -> dict[int, Detections]:
    """WBF image by image of several ``{image_id: Detections}`` maps (boxes in original pixels);
    an image missing from a map counts as no detections of that model."""
    ids: list[int] = []
    for run in runs:
        ids += [i for i in run if i not in ids]
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return {i: fuse_detections([run.get(i, empty) for run in runs], weights, iou_thr, skip_box_thr, max_det)
            for i in ids}


# ----------------------------------------------------------------------------- TTA


@dataclass(frozen=True)
class TTAPlan:
    """Test-time augmentation: input scales (1.0 = the config's ``image_size``) and whether each
    scale is also run on the horizontally flipped picture. ``passes()`` lists ``(scale, flip)``."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    @classmethod
    def parse(cls, text: str) -> "TTAPlan":
        """``"flip"``, ``"0.8,1.2"``, ``"flip,0.8,1.2"``, ...: comma-separated ``flip`` and scale
        factors; scale 1.0 is always included."""
        flip, scales = False, [1.0]
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if part.lower() in ("flip", "hflip"):
                flip = True
                continue
            try:
                value = float(part)
            except ValueError:
                raise ValueError(f"--tta '{text}': '{part}' is neither 'flip' nor a scale factor such as 0.8") from None
            if not 0.1 <= value <= 4.0:
                raise ValueError(f"--tta '{text}': scale {value} is outside 0.1..4")
            if value not in scales:
                scales.append(value)
        return cls(tuple(scales), flip)

    def passes(self) -> list[tuple[float, bool]]:
        return [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]

    def describe(self) -> str:
        parts = (["flip"] if self.flip else []) + [f"{s:g}" for s in self.scales if s != 1.0]
        return ",".join(parts) or "none"


def scaled_size(image_size: int, scale: float, stride: int) -> int:
    """``image_size * scale`` rounded to a multiple of ``stride``, at least one ``stride``."""
    return max(stride, int(round(image_size * scale / stride)) * stride)


def flip_inputs(images: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Mirror each picture of a padded batch ``[B, 3, S, S]`` left-right within its content width
    ``widths[i]`` (input pixels), keeping the padding bottom/right as in training."""
    flipped = images.flip(-1)
    size = images.shape[-1]
    return torch.stack([torch.roll(f, shifts=-(size - int(w)), dims=-1) if w < size else f
                        for f, w in zip(flipped, widths)])


def unflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes ``[K, 4]`` xyxy found on a picture mirrored within ``width`` -> boxes on the unmirrored one."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
