"""The anchor-based head family (``head.type`` ``"effdet"``: EfficientDet subnets, ``"retina"``: RetinaNet
subnets): anchors, matching, loss, decoding, its export form, its predictors for surgery and its anchor-fit check.

Raw outputs are ``(class_logits, box_deltas)``: lists over levels (finest first) of
``[B, A*C, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``, channel ``a * C + c`` = anchor ``a``, class ``c``.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from core.ops import box_coder
from core.tasks.anchor_fit import AnchorFit, anchor_levels, anchor_share, suggest_anchor_params
from core.ops.anchors import AnchorGenerator, flatten_levels
from core.tasks.anchor_loss import assign, detection_loss
from core.ops.postprocess import Detections, postprocess
from core.tasks.registry import TASKS

PREDICTORS = ("head.class_net.predict.", "head.box_net.predict.")
# the class predictor's output conv: conv_pw of the separable conv, or the plain conv (head.type "retina")
_CLASS_PREDICTOR = re.compile(r"head\.class_net\.predict\.(conv_pw\.)?(weight|bias)")


class AnchorLossOptions:
    """``loss`` fields of the anchor-based family (focal classification + Huber box loss)."""
    focal_alpha = 0.25
    focal_gamma = 1.5
    huber_delta = 0.1            # box loss: Huber on encoded offsets (core.ops.box_coder), as EfficientDet
    box_loss_weight = 50.0
    match_iou = 0.5              # anchors with IoU >= match_iou to a box are positives
    ignore_iou = 0.4             # anchors with ignore_iou <= IoU < match_iou are ignored


@TASKS.register("retina", options=AnchorLossOptions)
@TASKS.register("effdet", options=AnchorLossOptions)
class DetectionTask:
    """Loss and post-processing for an anchor-based one-stage detector.

    Built from the config's ``anchors``, ``loss`` and ``test`` sections; holds no weights, so the
    same task serves a plain, an EMA and a DistributedDataParallel-wrapped network alike.
    """

    # INT8 keeps the neck and the box branch in float: what sets the boxes' precision. Demo set, 2026-12-02
    # Xeon: the box branch also in INT8 -2.9 AP, only it in float -1.0, with the neck -0.3; at D0 as fast
    # (the 64-channel convolutions of the neck gain nothing from 8 bits; docs/PERFORMANCE.md)
    float_modules = ("neck", "head.box_net")

    def __init__(self, cfg: Any, levels: list[int], num_classes: int):
        a = cfg.anchors
        self.anchors = AnchorGenerator(levels, a.scale, a.num_scales, a.aspect_ratios)
        self.loss_cfg = cfg.loss
        self.test_cfg = cfg.test
        self.num_classes = num_classes

    def _anchors(self, images: torch.Tensor, num_positions: int) -> torch.Tensor:
        anchors = self.anchors(tuple(images.shape[-2:]), images.device)
        if anchors.shape[0] != num_positions:
            raise RuntimeError(f"network gives {num_positions} anchor positions, anchors {anchors.shape[0]}: "
                               "check neck.min_level/max_level against the head's levels")
        return anchors

    def loss(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]], images: torch.Tensor,
             targets: list[dict[str, Any]],
             average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Training loss for a batch. ``images`` ``[B, 3, H, W]`` (only its shape is used);
        ``targets[i]["boxes"]`` ``[G_i, 4]`` xyxy input pixels, ``["labels"]`` ``[G_i]``.
        ``average`` maps this process's count of positive anchors to the mean over processes, so
        that every process normalises by the same number (distributed training)."""
        # [B, A*C, H, W] -> [B, H, W, A, C] views in anchor order; no copy of the largest tensors.
        class_logits = [o.permute(0, 2, 3, 1).unflatten(-1, (-1, self.num_classes)) for o in outputs[0]]
        box_deltas = flatten_levels(outputs[1], 4)
        anchors = self._anchors(images, box_deltas.shape[1])
        c = self.loss_cfg
        assignment = assign(anchors, [t["boxes"].to(anchors.device) for t in targets],
                            [t["labels"].to(anchors.device) for t in targets], c.match_iou, c.ignore_iou)
        num_positives = (assignment.labels >= 0).sum()
        if average is not None:
            num_positives = average(num_positives.float())
        return detection_loss(class_logits, box_deltas, anchors, assignment, c.focal_alpha, c.focal_gamma,
                              c.huber_delta, c.box_loss_weight, num_positives)

    def detect(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]], images: torch.Tensor) -> list[Detections]:
        """Detections per image, boxes xyxy in input pixels of ``images`` ``[B, 3, H, W]``."""
        # [B, A*C, H, W] -> [B, H*W*A, C]: views when the outputs are channels_last, as DetLab runs them
        class_logits = [o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, self.num_classes) for o in outputs[0]]
        box_deltas = flatten_levels(outputs[1], 4)
        anchors = self._anchors(images, box_deltas.shape[1])
        t = self.test_cfg
        return postprocess(class_logits, box_deltas, anchors, tuple(images.shape[-2:]), t.top_n,
                           t.min_det_score, t.nms_thresh, t.max_det_per_image)

    # ------------------------------------------------------------------ what only this family knows

    def export_head(self, image_size: int) -> nn.Module:
        """For ONNX export of one ``[1, 3, S, S]`` image: raw outputs -> ``(boxes [K, 4]`` xyxy input
        pixels, ``scores [K]``, ``labels [K])``, the ``test.top_n`` best (anchor, class) pairs before NMS."""
        return _AnchorCandidates(self, image_size)

    @staticmethod
    def output_names(levels: list[int]) -> list[str]:
        """ONNX output names of the raw outputs, one per level and output kind."""
        return [f"class_logits_P{lv}" for lv in levels] + [f"box_deltas_P{lv}" for lv in levels]

    @staticmethod
    def owns_state(state: dict[str, torch.Tensor]) -> bool:
        """Whether a DetLab state dict holds this family's head."""
        return any(k.startswith("head.class_net.") for k in state)

    @staticmethod
    def predictor_names(state: dict[str, torch.Tensor]) -> list[str]:
        """Names of the class and box predictors (the only class-dependent tensors) in ``state``."""
        return [k for k in state if k.startswith(PREDICTORS)]

    @staticmethod
    def class_predictors(state: dict[str, torch.Tensor], num_classes: int) -> tuple[list[str], int, int]:
        """``(names, channels per anchor, leading non-class channels per anchor)`` of the class predictor."""
        return [k for k in state if _CLASS_PREDICTOR.fullmatch(k)], num_classes, 0

    @staticmethod
    def fit_anchors(cfg: Any, boxes: np.ndarray, median: tuple[float, float], suggest: bool | None,
                    seed: int) -> AnchorFit:
        """The share of ``boxes`` (``[N, 4]`` xyxy input pixels) with an anchor at IoU >= ``loss.match_iou``
        and, when asked (default: below the target), the ``anchors.scale`` / ``aspect_ratios`` that fit."""
        a, image_size = cfg.anchors, int(cfg.dataset.image_size)
        levels = anchor_levels(cfg)
        m = cfg.loss.match_iou
        remedy = (f"The median box is {median[0]:.0f} x {median[1]:.0f} input px against a finest anchor grid of "
                  f"stride {2 ** levels[0]} px (P{levels[0]}): a finer level (neck.min_level, if the backbone gives "
                  "it), a larger dataset.image_size or a lower loss.match_iou would match more")
        fit = AnchorFit(len(boxes), anchor_share(boxes, levels, a.scale, a.num_scales, a.aspect_ratios, image_size, m),
                        f"have an anchor at IoU >= {m:g} (loss.match_iou)", remedy,
                        current={"scale": a.scale, "aspect_ratios": [list(r) for r in a.aspect_ratios]})
        if (suggest if suggest is not None else not fit.fits) and len(boxes):
            scale, ratios = suggest_anchor_params(boxes, levels, a.scale, a.num_scales, a.aspect_ratios, image_size,
                                                  m, seed=seed)
            fit.suggestion = {"scale": scale, "aspect_ratios": ratios}
            fit.suggested_share = anchor_share(boxes, levels, scale, a.num_scales, ratios, image_size, m)
        return fit


class _AnchorCandidates(nn.Module):
    """:meth:`DetectionTask.export_head`: the anchors as a buffer (a constant of the exported graph)."""

    def __init__(self, task: DetectionTask, image_size: int):
        super().__init__()
        self.register_buffer("anchors", task.anchors((image_size, image_size), torch.device("cpu")))
        self.num_classes = task.num_classes
        self.top_n = min(task.test_cfg.top_n, self.anchors.shape[0] * self.num_classes)

    def forward(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        class_logits, box_deltas = outputs
        # the top logits (sigmoid saturates: ranking the logits keeps ties apart), (anchor, class) anchor-major
        logits, index = flatten_levels(class_logits, self.num_classes).reshape(-1).topk(self.top_n)
        position = torch.div(index, self.num_classes, rounding_mode="floor")
        boxes = box_coder.decode(flatten_levels(box_deltas, 4)[0, position], self.anchors[position])
        return boxes, logits.sigmoid(), index - position * self.num_classes
