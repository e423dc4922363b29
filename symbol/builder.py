"""Assembles a detector from a config's backbone / neck / head sections, each part found by name
in ``symbol.registry`` (registered in the part's own file):

* ``backbone.type``: ``timm`` (any timm model with ``features_only``; ``backbone.head_conv > 0``
  adds EfficientNet's 1x1 head conv on the coarsest map) or ``csp_darknet`` (YOLOv4's CSP-Darknet,
  scaled by ``backbone.depth_multiple`` / ``width_multiple``);
* ``neck.type``: ``bifpn`` (EfficientDet), ``fpn`` (RetinaNet's FPN), ``nasfpn`` (NAS-FPN cells)
  or ``yolo_pan`` (YOLOv4's SPPCSP + PAN);
* ``head.type``: ``effdet`` (class / box subnets over ``anchors.num_scales x aspect_ratios``
  anchors; ``head.separable=False`` gives RetinaNet's plain-conv subnets) or ``yolo`` (one YOLO
  layer per level with the anchors of ``anchors.yolo``).
"""
from __future__ import annotations

from typing import Any

from torch import nn

import symbol.backbone  # noqa: F401  (registers the backbones)
import symbol.head  # noqa: F401  (registers the heads)
import symbol.neck  # noqa: F401  (registers the necks)
from symbol.detector import Detector
from symbol.registry import BACKBONES, HEADS, NECKS


def build_backbone(b: Any) -> nn.Module:
    """The ``backbone`` section's network; it has ``levels``, ``channels`` and ``stages()``."""
    return BACKBONES.get(b.type)(b)


def build_detector(cfg: Any, num_classes: int) -> Detector:
    """Build the network described by ``cfg`` (a ``core.config.loading.Config`` or anything with the same
    sections) for ``num_classes`` foreground classes. Weights are freshly initialised: building
    never loads pretrained weights (``core.weights.pretrain.apply_pretrain`` does, when a run starts)."""
    neck_builder, head_builder = NECKS.get(cfg.neck.type), HEADS.get(cfg.head.type)  # unknown names fail first
    backbone = build_backbone(cfg.backbone)
    neck = neck_builder(cfg.neck, backbone.channels, backbone.levels)
    head = head_builder(cfg, neck.out_channels, neck.levels, num_classes)
    return Detector(backbone, neck, head, num_classes, neck.levels)
