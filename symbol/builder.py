"""Assembles a detector from a config's backbone / neck / head / anchors sections.

This is the one place where parts are wired by config:

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

from symbol.backbone.csp_darknet import CSPDarknet
from symbol.backbone.timm_backbone import TimmBackbone
from symbol.backbone.timm_head_conv import TimmBackboneHeadConv
from symbol.detector import Detector
from symbol.head.effdet_head import EfficientDetHead
from symbol.head.yolo_head import YoloHead
from symbol.neck.bifpn import BiFPN
from symbol.neck.fpn import FPN
from symbol.neck.nasfpn import NASFPN
from symbol.neck.yolo_pan import YoloPAN

BACKBONES = ("timm", "csp_darknet")
NECKS = ("bifpn", "fpn", "nasfpn", "yolo_pan")
HEADS = ("effdet", "yolo")


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind}.type '{value}'; choose one of {', '.join(choices)}")


def build_backbone(b: Any) -> nn.Module:
    """The ``backbone`` section's network; it has ``levels``, ``channels`` and ``stages()``."""
    _choice("backbone", b.type, BACKBONES)
    if b.type == "csp_darknet":
        if b.drop_path_rate:
            raise ValueError("backbone.drop_path_rate: csp_darknet has no stochastic depth; set it to 0.0")
        if b.head_conv:
            raise ValueError("backbone.head_conv is for timm backbones; set it to 0 with csp_darknet")
        return CSPDarknet(b.name, b.out_levels, b.depth_multiple, b.width_multiple)
    if b.head_conv:
        return TimmBackboneHeadConv(b.name, b.out_levels, b.head_conv, drop_path_rate=b.drop_path_rate)
    return TimmBackbone(b.name, b.out_levels, drop_path_rate=b.drop_path_rate)


def build_detector(cfg: Any, num_classes: int) -> Detector:
    """Build the network described by ``cfg`` (a ``core.config.Config`` or anything with the same
    sections) for ``num_classes`` foreground classes. Weights are freshly initialised: building
    never loads pretrained weights (``core.pretrain.apply_pretrain`` does, when a run starts)."""
    n, h, a = cfg.neck, cfg.head, cfg.anchors
    _choice("neck", n.type, NECKS)
    _choice("head", h.type, HEADS)
    backbone = build_backbone(cfg.backbone)
    if n.type == "bifpn":
        neck: nn.Module = BiFPN(backbone.channels, backbone.levels, n.channels, n.repeats, n.min_level, n.max_level,
                                n.padding, n.fusion, n.activation)
        neck_channels = [n.channels] * len(neck.levels)
    elif n.type == "fpn":
        neck = FPN(backbone.channels, backbone.levels, n.channels, n.min_level, n.max_level, n.padding)
        neck_channels = [n.channels] * len(neck.levels)
    elif n.type == "nasfpn":
        neck = NASFPN(backbone.channels, backbone.levels, n.channels, n.repeats, n.min_level, n.max_level, n.padding)
        neck_channels = [n.channels] * len(neck.levels)
    else:
        neck = YoloPAN(backbone.channels, backbone.levels, n.pan_channels, n.pan_repeats, n.min_level, n.max_level)
        neck_channels = neck.channels
    if h.type == "effdet":
        if len(set(neck_channels)) != 1:
            raise ValueError(f"head.type 'effdet' shares its subnets over levels and needs equal widths; "
                             f"neck '{n.type}' gives {neck_channels}")
        num_anchors = a.num_scales * len(a.aspect_ratios)
        head: nn.Module = EfficientDetHead(neck_channels[0], h.repeats, len(neck.levels), num_anchors, num_classes,
                                           n.padding, separable=h.separable, act=h.activation)
    else:
        if len(a.yolo) != len(neck.levels):
            raise ValueError(f"anchors.yolo has {len(a.yolo)} rows for {len(neck.levels)} output levels "
                             f"P{neck.levels[0]}-P{neck.levels[-1]}: give one row of (w, h) pairs per level")
        if any(len(row) < 2 or len(row) % 2 for row in a.yolo):
            raise ValueError(f"anchors.yolo rows must hold (w, h) pairs, got {a.yolo}")
        head = YoloHead(neck_channels, neck.levels, [len(row) // 2 for row in a.yolo], num_classes)
    return Detector(backbone, neck, head, num_classes, neck.levels)
