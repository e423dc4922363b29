"""What turns a network's raw outputs into a loss or detections: the head family's task.

Each head family has a task class in its own module, registered in ``core.tasks.registry.TASKS``
under its ``head.type``: ``core.tasks.anchor_task`` (``effdet``) and ``core.tasks.yolo`` (``yolo``). A task is
built from the config's ``anchors``, ``loss`` and ``test`` sections and holds no weights, so the
same task serves a plain, an EMA and a DistributedDataParallel-wrapped network alike. It offers
(see :class:`Task`): the training loss, detections, an export form, and, as class-level methods,
what only the family knows about its weights and anchors (surgery and the anchor check ask it).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

import core.tasks.anchor_task  # noqa: F401  (registers the anchor-based family)
import core.tasks.yolo  # noqa: F401  (registers the YOLO family)
from core.tasks.anchor_fit import AnchorFit
from core.ops.postprocess import Detections
from core.tasks.registry import TASKS


class Task(Protocol):
    """The interface every head family's task class offers."""

    num_classes: int
    test_cfg: Any
    # detector modules an INT8 export keeps in float besides the output predictors: what sets the boxes'
    # precision (core.inference.exported.quantize_openvino)
    float_modules: tuple[str, ...]

    def __init__(self, cfg: Any, levels: list[int], num_classes: int) -> None: ...

    def loss(self, outputs: Any, images: torch.Tensor, targets: list[dict[str, Any]],
             average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``loss`` and its parts for a batch; ``targets[i]["boxes"]`` xyxy input pixels, ``["labels"]``."""

    def detect(self, outputs: Any, images: torch.Tensor) -> list[Detections]:
        """Detections per image, boxes xyxy in input pixels of ``images`` ``[B, 3, H, W]``."""

    def export_head(self, image_size: int) -> nn.Module:
        """Raw outputs of one image -> ``(boxes [K, 4], scores [K], labels [K])`` candidates before NMS."""

    @staticmethod
    def output_names(levels: list[int]) -> list[str]:
        """ONNX names of the raw outputs, flattened in the order the network returns them."""

    @staticmethod
    def owns_state(state: dict[str, torch.Tensor]) -> bool:
        """Whether a DetLab state dict holds this family's head."""

    @staticmethod
    def predictor_names(state: dict[str, torch.Tensor]) -> list[str]:
        """The class and box predictors in ``state`` (what ``--strip-head`` removes)."""

    @staticmethod
    def class_predictors(state: dict[str, torch.Tensor], num_classes: int) -> tuple[list[str], int, int]:
        """``(names, channels per anchor, leading non-class channels per anchor)`` of the class predictors."""

    @staticmethod
    def fit_anchors(cfg: Any, boxes: np.ndarray, median: tuple[float, float], suggest: bool | None,
                    seed: int) -> AnchorFit:
        """How well ``cfg``'s anchors fit ``boxes`` (``[N, 4]`` xyxy input pixels), see ``core.tasks.anchor_check``."""


def task_class(head_type: str) -> type[Task]:
    """The task class registered for ``head.type = head_type``; ValueError naming the choices otherwise."""
    return TASKS.get(head_type)


def build_task(cfg: Any, model: nn.Module) -> Task:
    """The loss / post-processing object for ``model`` (built by ``symbol.builder`` from ``cfg``), of the
    class registered for ``cfg.head.type``."""
    model = getattr(model, "module", model)  # DistributedDataParallel / EMA wrappers
    return task_class(cfg.head.type)(cfg, model.levels, model.num_classes)


def head_type_of(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> str:
    """The ``head.type`` of a DetLab state dict: from a checkpoint's saved config when given, else the
    family whose head the names hold. ValueError when none does."""
    if config and isinstance(config.get("head"), dict) and config["head"].get("type"):
        return str(config["head"]["type"])
    for name in TASKS:
        if TASKS.get(name).owns_state(state):
            return name
    raise ValueError("no DetLab detection head in this state dict (no registered head family's names); "
                     "is it a DetLab detector? (--from converts other layouts)")
