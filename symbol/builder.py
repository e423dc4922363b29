"""Assembles a detector from a config's backbone / neck / head / anchors sections."""
from __future__ import annotations

from typing import Any

from symbol.backbone.timm_backbone import TimmBackbone
from symbol.detector import Detector
from symbol.head.effdet_head import EfficientDetHead
from symbol.neck.bifpn import BiFPN

BACKBONES = ("timm",)
NECKS = ("bifpn",)
HEADS = ("effdet",)


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind}.type '{value}'; choose one of {', '.join(choices)}")


def build_detector(cfg: Any, num_classes: int) -> Detector:
    """Build the network described by ``cfg`` (a ``core.config.Config`` or anything with the same
    sections) for ``num_classes`` foreground classes. Weights are freshly initialised (the backbone
    loads timm's ImageNet weights when ``backbone.pretrained``)."""
    b, n, h, a = cfg.backbone, cfg.neck, cfg.head, cfg.anchors
    _choice("backbone", b.type, BACKBONES)
    _choice("neck", n.type, NECKS)
    _choice("head", h.type, HEADS)
    backbone = TimmBackbone(b.name, b.out_levels, pretrained=b.pretrained, drop_path_rate=b.drop_path_rate)
    neck = BiFPN(backbone.channels, backbone.levels, n.channels, n.repeats, n.min_level, n.max_level, n.padding)
    num_anchors = a.num_scales * len(a.aspect_ratios)
    head = EfficientDetHead(n.channels, h.repeats, len(neck.levels), num_anchors, num_classes, n.padding)
    return Detector(backbone, neck, head, num_classes, neck.levels)
