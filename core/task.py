"""What turns a network's raw outputs into a loss or detections: anchors, matching, coding."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from core.anchors import AnchorGenerator, flatten_levels
from core.loss import assign, detection_loss
from core.postprocess import Detections, postprocess

if TYPE_CHECKING:
    from core.yolo import YoloTask


class DetectionTask:
    """Loss and post-processing for an anchor-based one-stage detector.

    Built from the config's ``anchors``, ``loss`` and ``test`` sections; holds no weights, so the
    same task serves a plain, an EMA and a DistributedDataParallel-wrapped network alike.
    """

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


def build_task(cfg: Any, model: nn.Module) -> DetectionTask | YoloTask:
    """The loss / post-processing object for ``model`` (built by ``symbol.builder`` from ``cfg``):
    :class:`DetectionTask` for ``head.type == "effdet"``, ``core.yolo.YoloTask`` for ``"yolo"``.
    Both offer ``loss(outputs, images, targets, average=None) -> dict`` (``loss`` and its parts) and
    ``detect(outputs, images) -> list[Detections]`` (boxes in input pixels)."""
    model = getattr(model, "module", model)  # DistributedDataParallel / EMA wrappers
    if cfg.head.type == "effdet":
        return DetectionTask(cfg, model.levels, model.num_classes)
    if cfg.head.type == "yolo":
        from core.yolo import YoloTask

        return YoloTask(cfg, model.levels, model.num_classes)
    raise ValueError(f"no task for head.type '{cfg.head.type}'; choose effdet or yolo")
