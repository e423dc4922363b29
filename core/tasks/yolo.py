"""YOLOv4 / YOLOv5-style training targets, loss and decoding for ``symbol.head.yolo_head`` outputs.

Raw outputs are a list over output layers (finest first) of ``[B, A_l * (5 + C), H_l, W_l]``;
:func:`split_layers` views each as ``[B, A_l, H_l, W_l, 5 + C]`` with the last axis
``(tx, ty, tw, th, objectness, class_0 .. class_{C-1})``, all logits. A layer has stride ``s``
and anchors ``(w, h)`` in input pixels. Decoding, per cell ``(x, y)`` and anchor ``(a_w, a_h)``:

    centre = (2 sigmoid(tx, ty) - 0.5 + (x, y)) * s        (input pixels, within half a cell around the cell)
    size   = (2 sigmoid(tw, th))**2 * (a_w, a_h)            (0 .. 4 x the anchor)
    score  = sigmoid(objectness) * sigmoid(class_c)

Targets (:func:`build_targets`): a ground-truth box matches every anchor of a layer whose width and
height ratios to it (either way) are below ``anchor_t``; each match claims the box centre's cell
and the two neighbouring cells whose sides are nearest the centre (YOLOv5's "rect4" rule), so a
box trains up to 3 cells per matched anchor. Loss (:func:`yolo_loss`): ``1 - CIoU`` of the matched
predictions, objectness BCE on every cell and anchor with target ``CIoU.clamp(0)`` at the matched
ones (0 elsewhere), weighted per layer, and class BCE of the matched predictions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.tasks.anchor_fit import AnchorFit, kmeans_anchors, yolo_rows, yolo_share
from core.ops.postprocess import Detections, batch_top_candidates, clip_and_suppress, passing_candidates
from core.tasks.registry import TASKS

# the per-level predictor convs: head.layers.N.predict.{weight,bias}, A_N * (5 + C) channels each
PREDICTOR = re.compile(r"^head\.layers\.(\d+)\.predict\.(weight|bias)$")

# Cell shifts (dx, dy) of the centre cell and of the left, top, right, bottom neighbours.
_SHIFTS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass
class LayerTargets:
    """Matches of one output layer, one row per (ground truth, anchor, cell), ``M`` rows.

    ``image``, ``anchor``, ``gy``, ``gx``: int64 ``[M]`` indices into ``[B, A, H, W]``;
    ``box``: float32 ``[M, 4]`` ``(x, y, w, h)`` in grid units with ``(x, y)`` the centre relative to
    the cell's top-left corner (in ``[-0.5, 1.5]``); ``anchor_wh``: ``[M, 2]`` the anchor in grid
    units; ``label``: int64 ``[M]``.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    gy: torch.Tensor
    gx: torch.Tensor
    box: torch.Tensor
    anchor_wh: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return int(self.image.shape[0])


def split_layers(outputs: list[torch.Tensor], num_anchors: list[int], num_classes: int) -> list[torch.Tensor]:
    """``[B, A_l * (5 + C), H, W]`` per layer -> ``[B, A_l, H, W, 5 + C]`` (permuted, not copied)."""
    if len(outputs) != len(num_anchors):
        raise RuntimeError(f"network gives {len(outputs)} output layers, anchors.yolo has {len(num_anchors)} rows")
    layers = []
    for out, a in zip(outputs, num_anchors):
        b, ch, h, w = out.shape
        if ch != a * (5 + num_classes):
            raise RuntimeError(f"output layer has {ch} channels, expected {a} anchors x (5 + {num_classes} classes)")
        layers.append(out.reshape(b, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2))
    return layers


def gather_targets(targets: list[dict[str, Any]], device: torch.device) -> torch.Tensor:
    """Ground truth of a batch as one float32 ``[N, 6]`` tensor of ``(image, label, cx, cy, w, h)``,
    box centre and size in input pixels (from ``targets[i]["boxes"]`` xyxy input pixels)."""
    rows = []
    for i, t in enumerate(targets):
        boxes = t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
        labels = t["labels"].to(device=device, dtype=torch.float32).reshape(-1, 1)
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        rows.append(torch.cat([torch.full_like(labels, i), labels, centre, size], dim=1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), device=device)


def build_targets(gt: torch.Tensor, anchors: torch.Tensor, stride: float, grid_size: tuple[int, int],
                  anchor_t: float) -> LayerTargets:
    """Matches of one layer. ``gt`` ``[N, 6]`` from :func:`gather_targets`; ``anchors`` ``[A, 2]``
    ``(w, h)`` input pixels; ``grid_size = (H, W)`` of the layer's map."""
    device = gt.device
    h, w = grid_size
    anchor_grid = anchors.to(device=device, dtype=torch.float32) / stride  # [A, 2]
    gxy, gwh = gt[:, 2:4] / stride, gt[:, 4:6] / stride
    ratio = gwh[None] / anchor_grid[:, None]  # [A, N, 2]
    matched = torch.maximum(ratio, 1.0 / ratio).amax(dim=2) < anchor_t  # [A, N]
    a_idx, g_idx = matched.nonzero(as_tuple=True)
    gxy_m = gxy[g_idx]
    frac = gxy_m % 1.0
    size = torch.tensor([w, h], device=device, dtype=torch.float32)
    use = [
        torch.ones_like(a_idx, dtype=torch.bool),
        (frac[:, 0] < 0.5) & (gxy_m[:, 0] > 1.0),           # left neighbour
        (frac[:, 1] < 0.5) & (gxy_m[:, 1] > 1.0),           # top
        (frac[:, 0] > 0.5) & (gxy_m[:, 0] < size[0] - 1.0),  # right
        (frac[:, 1] > 0.5) & (gxy_m[:, 1] < size[1] - 1.0),  # bottom
    ]
    shifts = torch.tensor(_SHIFTS, device=device, dtype=torch.float32)
    keep = torch.stack(use)  # [5, M]
    which, pick = keep.nonzero(as_tuple=True)
    a_sel, g_sel = a_idx[pick], g_idx[pick]
    centre = gxy[g_sel]
    cell = (centre.floor() + shifts[which]).clamp(min=torch.zeros_like(size), max=size - 1)
    return LayerTargets(
        image=gt[g_sel, 0].long(), anchor=a_sel, gy=cell[:, 1].long(), gx=cell[:, 0].long(),
        box=torch.cat([centre - cell, gwh[g_sel]], dim=1), anchor_wh=anchor_grid[a_sel], label=gt[g_sel, 1].long())


def complete_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``1 - CIoU`` per row of ``pred`` and ``target``, ``[M, 4]`` boxes ``(cx, cy, w, h)`` in one space
    (grid units here); ``[M]``. Zheng et al.'s CIoU: IoU minus the centre distance over the enclosing
    box's diagonal, minus ``alpha * v`` for the aspect ratios (``alpha`` without gradient).

    Computed from the widths and heights themselves, with ``eps`` under every division, so that it and
    its gradient stay finite for any finite input, a box of size 0 included. (torchvision's
    ``complete_box_iou_loss`` takes xyxy corners and divides by the predicted height with no epsilon:
    a predicted height below the float32 resolution of its centre becomes 0 between the corners, and
    the gradient of ``atan(w / h)`` is then NaN.)
    """
    px, py, pw, ph = pred.unbind(-1)
    tx, ty, tw, th = target.unbind(-1)
    left, right = torch.max(px - pw / 2, tx - tw / 2), torch.min(px + pw / 2, tx + tw / 2)
    top, bottom = torch.max(py - ph / 2, ty - th / 2), torch.min(py + ph / 2, ty + th / 2)
    inter = (right - left).clamp(min=0) * (bottom - top).clamp(min=0)
    iou = inter / (pw * ph + tw * th - inter + eps)
    enclosing_w = torch.max(px + pw / 2, tx + tw / 2) - torch.min(px - pw / 2, tx - tw / 2)
    enclosing_h = torch.max(py + ph / 2, ty + th / 2) - torch.min(py - ph / 2, ty - th / 2)
    distance = ((px - tx) ** 2 + (py - ty) ** 2) / (enclosing_w ** 2 + enclosing_h ** 2 + eps)
    v = (4 / math.pi ** 2) * (torch.atan(tw / (th + eps)) - torch.atan(pw / (ph + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return 1 - iou + distance + alpha * v


def yolo_loss(layers: list[torch.Tensor], targets: list[LayerTargets], num_classes: int, box_weight: float,
              obj_weight: float, cls_weight: float, obj_balance: list[float],
              average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """YOLOv4/v5 loss of ``layers`` (``[B, A, H, W, 5 + C]`` logits per layer) against their matches.

    Per layer: box ``mean(1 - CIoU)`` over matches; objectness BCE averaged over all
    ``B x A x H x W`` outputs times ``obj_balance[layer]``, target ``CIoU.clamp(0)`` (detached; the
    best one where matches share an output) at matched outputs; class BCE averaged over matches x
    classes (only when ``num_classes > 1``). Layers are summed; gains: ``box_weight``,
    ``obj_weight`` and ``cls_weight * num_classes / 80``, each times ``3 / layers``. ``average`` maps
    this process's match counts to their mean over processes (distributed training).

    Returns ``loss = batch_size x (box + obj + cls)`` (as YOLOv5 scales its loss) and the
    weighted parts ``box_loss``, ``obj_loss``, ``cls_loss``; all float32.
    """
    if len(obj_balance) != len(layers):
        raise ValueError(f"loss.yolo_obj_balance has {len(obj_balance)} weights for {len(layers)} output layers")
    device = layers[0].device
    counts = torch.tensor([float(len(t)) for t in targets], device=device)
    if average is not None:
        counts = average(counts)
    box_loss = torch.zeros((), device=device)
    obj_loss = torch.zeros((), device=device)
    cls_loss = torch.zeros((), device=device)
    for pred, t, count, balance in zip(layers, targets, counts, obj_balance):
        pred = pred.float()
        obj_target = torch.zeros(pred.shape[:4], device=device)
        if len(t):
            matched = pred[t.image, t.anchor, t.gy, t.gx]  # [M, 5 + C]
            xy = matched[:, :2].sigmoid() * 2.0 - 0.5
            wh = (matched[:, 2:4].sigmoid() * 2.0) ** 2 * t.anchor_wh
            ciou_loss = complete_iou_loss(torch.cat([xy, wh], 1), t.box)
            norm = count.clamp(min=1.0)
            box_loss = box_loss + ciou_loss.sum() / norm
            quality = (1.0 - ciou_loss).detach().clamp(min=0.0)
            _, a, h, w = obj_target.shape
            flat = ((t.image * a + t.anchor) * h + t.gy) * w + t.gx
            obj_target.view(-1).scatter_reduce_(0, flat, quality, reduce="amax")
            if num_classes > 1:
                onehot = F.one_hot(t.label, num_classes).float()
                bce = F.binary_cross_entropy_with_logits(matched[:, 5:], onehot, reduction="sum")
                cls_loss = cls_loss + bce / (norm * num_classes)
        obj_loss = obj_loss + balance * F.binary_cross_entropy_with_logits(pred[..., 4], obj_target)
    layer_scale = 3.0 / len(layers)
    box_loss = box_loss * box_weight * layer_scale
    obj_loss = obj_loss * obj_weight * layer_scale
    cls_loss = cls_loss * cls_weight * num_classes / 80.0 * layer_scale
    batch = layers[0].shape[0]
    return {"loss": (box_loss + obj_loss + cls_loss) * batch, "box_loss": box_loss, "obj_loss": obj_loss,
            "cls_loss": cls_loss}


def decode(layers: list[torch.Tensor], anchors: list[torch.Tensor],
           strides: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """All predictions of a batch: boxes float32 ``[B, N, 4]`` xyxy input pixels and scores
    ``[B, N, C]`` = ``sigmoid(obj) * sigmoid(class)``, ``N = sum_l A_l H_l W_l`` in the order
    (layer, anchor, y, x). ``anchors[l]`` ``[A_l, 2]`` ``(w, h)`` input pixels."""
    all_boxes, all_scores = [], []
    for pred, anchor, stride in zip(layers, anchors, strides):
        pred = pred.float().sigmoid()
        b, a, h, w, _ = pred.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=pred.device), torch.arange(w, device=pred.device),
                                indexing="ij")
        grid = torch.stack([xs, ys], dim=-1).float()  # [H, W, 2]
        centre = (pred[..., :2] * 2.0 - 0.5 + grid) * stride
        size = (pred[..., 2:4] * 2.0) ** 2 * anchor.to(pred.device, torch.float32).view(1, a, 1, 1, 2)
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        all_boxes.append(boxes.reshape(b, -1, 4))
        all_scores.append((pred[..., 4:5] * pred[..., 5:]).reshape(b, a * h * w, -1))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], top_n: int,
                      min_score: float, nms_thresh: float, max_det: int) -> list[Detections]:
    """Per image: the ``top_n`` highest (box, class) scores above ``min_score`` (a box may give several
    classes), boxes clipped to ``image_size = (H, W)``, empty ones dropped, class-wise NMS at
    ``nms_thresh``, at most ``max_det`` sorted by score. ``boxes`` ``[B, N, 4]`` xyxy input pixels,
    ``scores`` ``[B, N, C]``; the returned boxes are in input pixels."""
    batch, _, num_classes = scores.shape
    top_scores, top_idx = batch_top_candidates([scores], top_n, min_score)
    image, box_idx, labels, score = passing_candidates(top_scores, top_idx, min_score, num_classes)
    box = boxes[image, box_idx]  # advanced indexing: a copy, so clipping in place is safe
    return clip_and_suppress(box, score, labels, image, batch, num_classes, image_size, nms_thresh, max_det)


class YoloLossOptions:
    """``loss`` fields of the YOLO family (CIoU box + objectness + class BCE)."""
    yolo_box_weight = 0.05       # CIoU box loss gain (x 3 / output layers)
    yolo_obj_weight = 1.0        # objectness BCE gain at 640 px (x (input / 640)**2 x 3 / output layers)
    yolo_cls_weight = 0.5        # class BCE gain (x num_classes / 80 x 3 / output layers)
    yolo_anchor_t = 4.0          # a box matches an anchor when its w and h are within this factor of it
    yolo_obj_balance = [4.0, 1.0, 0.4]  # objectness weight per output layer, finest first


@TASKS.register("yolo", options=YoloLossOptions)
class YoloTask:
    """Loss and post-processing for YOLO heads, from the config's ``anchors.yolo``, ``loss.yolo_*``
    and ``test`` sections. Holds no weights (serves plain, EMA and DDP-wrapped networks alike)."""

    float_modules: tuple[str, ...] = ()  # one predictor per level writes boxes and scores; INT8 keeps it in float

    def __init__(self, cfg: Any, levels: list[int], num_classes: int):
        rows = cfg.anchors.yolo
        if len(rows) != len(levels) or any(len(r) < 2 or len(r) % 2 for r in rows):
            raise ValueError(f"anchors.yolo needs one row of (w, h) pairs per output level {levels}, got {rows}")
        self.anchors = [torch.tensor(r, dtype=torch.float32).view(-1, 2) for r in rows]
        if any((a <= 0).any() for a in self.anchors):
            raise ValueError(f"anchors.yolo sizes must be positive, got {rows}")
        self.levels = list(levels)
        self.strides = [float(2**lv) for lv in levels]
        self.num_anchors = [a.shape[0] for a in self.anchors]
        self.num_classes = num_classes
        self.loss_cfg = cfg.loss
        self.test_cfg = cfg.test
        if len(cfg.loss.yolo_obj_balance) != len(levels):
            raise ValueError(f"loss.yolo_obj_balance has {len(cfg.loss.yolo_obj_balance)} weights for "
                             f"{len(levels)} output levels {levels}: give one per level, finest first")

    def _layers(self, outputs: list[torch.Tensor], images: torch.Tensor) -> list[torch.Tensor]:
        layers = split_layers(list(outputs), self.num_anchors, self.num_classes)
        for layer, stride in zip(layers, self.strides):
            expected = (-(-images.shape[-2] // int(stride)), -(-images.shape[-1] // int(stride)))
            if tuple(layer.shape[2:4]) != expected:
                raise RuntimeError(f"output layer of size {tuple(layer.shape[2:4])} does not have stride {stride:g} "
                                   f"for input {tuple(images.shape[-2:])}: check neck.min_level/max_level")
        return layers

    def loss(self, outputs: list[torch.Tensor], images: torch.Tensor, targets: list[dict[str, Any]],
             average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Training loss for a batch (see :func:`yolo_loss`). ``images`` ``[B, 3, H, W]`` (only its shape
        is used: the objectness gain ``loss.yolo_obj_weight`` is scaled by ``H x W / 640**2``, as YOLOv5
        scales it by the input area); ``targets[i]["boxes"]`` ``[G_i, 4]`` xyxy input pixels, ``["labels"]`` ``[G_i]``."""
        layers = self._layers(outputs, images)
        gt = gather_targets(targets, layers[0].device)
        c = self.loss_cfg
        matches = [build_targets(gt, anchors, stride, tuple(layer.shape[2:4]), c.yolo_anchor_t)
                   for layer, anchors, stride in zip(layers, self.anchors, self.strides)]
        # YOLOv5's objectness gain follows the input area: (S / 640)**2, 1 at 640 px
        obj_weight = c.yolo_obj_weight * images.shape[-2] * images.shape[-1] / 640 ** 2
        return yolo_loss(layers, matches, self.num_classes, c.yolo_box_weight, obj_weight, c.yolo_cls_weight,
                         c.yolo_obj_balance, average)

    def detect(self, outputs: list[torch.Tensor], images: torch.Tensor) -> list[Detections]:
        """Detections per image, boxes xyxy in input pixels of ``images`` ``[B, 3, H, W]``."""
        layers = self._layers(outputs, images)
        boxes, scores = decode(layers, self.anchors, self.strides)
        t = self.test_cfg
        return select_detections(boxes, scores, tuple(images.shape[-2:]), t.top_n, t.min_det_score, t.nms_thresh,
                                 t.max_det_per_image)

    # ------------------------------------------------------------------ what only this family knows

    def export_head(self, image_size: int) -> nn.Module:
        """For ONNX export of one ``[1, 3, S, S]`` image: raw outputs -> ``(boxes [K, 4]`` xyxy input
        pixels, ``scores [K]``, ``labels [K])``, the ``test.top_n`` best (box, class) scores before NMS."""
        return _YoloCandidates(self, image_size)

    @staticmethod
    def output_names(levels: list[int]) -> list[str]:
        """ONNX output names of the raw outputs, one per level."""
        return [f"yolo_P{lv}" for lv in levels]

    @staticmethod
    def owns_state(state: dict[str, torch.Tensor]) -> bool:
        """Whether a DetLab state dict holds this family's head."""
        return any(PREDICTOR.match(k) for k in state)

    @staticmethod
    def predictor_names(state: dict[str, torch.Tensor]) -> list[str]:
        """Names of the per-level predictors (box, objectness and class channels) in ``state``."""
        return [k for k in state if PREDICTOR.match(k)]

    @staticmethod
    def class_predictors(state: dict[str, torch.Tensor], num_classes: int) -> tuple[list[str], int, int]:
        """``(names, channels per anchor, leading non-class channels per anchor)``: per anchor
        ``5 + C`` channels, the first 5 box and objectness."""
        return [k for k in state if PREDICTOR.match(k)], 5 + num_classes, 5

    @staticmethod
    def fit_anchors(cfg: Any, boxes: np.ndarray, median: tuple[float, float], suggest: bool | None,
                    seed: int) -> AnchorFit:
        """The share of ``boxes`` (``[N, 4]`` xyxy input pixels) whose width and height are within
        ``loss.yolo_anchor_t`` of an ``anchors.yolo`` size and, when asked (default: below the target),
        YOLOv5-style k-means anchors that fit."""
        a, t = cfg.anchors, cfg.loss.yolo_anchor_t
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        anchors = np.asarray([v for row in a.yolo for v in row], dtype=np.float64).reshape(-1, 2)
        remedy = (f"The median box is {median[0]:.0f} x {median[1]:.0f} input px: more anchors per level or a "
                  "larger loss.yolo_anchor_t would match more")
        fit = AnchorFit(len(wh), yolo_share(wh, anchors, t),
                        f"are within loss.yolo_anchor_t = {t:g} of an anchors.yolo size (width and height ratio)",
                        remedy, current={"yolo": [list(r) for r in a.yolo]})
        if (suggest if suggest is not None else not fit.fits) and len(wh):
            try:
                found = kmeans_anchors(wh, len(anchors), t, seed=seed)
            except ValueError:
                return fit
            fit.suggestion = {"yolo": yolo_rows(found, a.yolo)}
            flat = np.asarray([v for row in fit.suggestion["yolo"] for v in row], dtype=np.float64).reshape(-1, 2)
            fit.suggested_share = yolo_share(wh, flat, t)
        return fit


class _YoloCandidates(nn.Module):
    """:meth:`YoloTask.export_head`: decode every prediction, keep the top (box, class) scores."""

    def __init__(self, task: YoloTask, image_size: int):
        super().__init__()
        self.task = task
        positions = sum(a * math.ceil(image_size / s) ** 2 for a, s in zip(task.num_anchors, task.strides))
        self.top_n = min(task.test_cfg.top_n, positions * task.num_classes)

    def forward(self, outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        task = self.task
        layers = split_layers(list(outputs), task.num_anchors, task.num_classes)
        all_boxes, all_scores = decode(layers, task.anchors, task.strides)  # scores box-major (box, class)
        scores, index = all_scores.reshape(-1).topk(self.top_n)
        position = torch.div(index, task.num_classes, rounding_mode="floor")
        return all_boxes[0, position], scores, index - position * task.num_classes
