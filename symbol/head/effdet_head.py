"""EfficientDet / RetinaNet-style head: class and box subnets shared across pyramid levels."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from timm.layers import create_conv2d

from symbol.layers import SeparableConv, activation, batch_norm
from symbol.registry import HEADS


class SubNet(nn.Module):
    """``repeats`` separable convs shared over levels, each with its own BatchNorm per level and the
    activation ``act`` (swish; EfficientDet-Lite: relu6), then a prediction conv with
    ``num_anchors * num_outputs`` channels. ``separable=False`` gives RetinaNet's subnet instead:
    plain 3x3 convs with bias, ReLU whatever ``act`` says, no normalisation, a plain 3x3
    prediction conv (weights N(0, 0.01), biases 0 but the prior).

    ``forward(list of [B, C, H_l, W_l]) -> list of [B, num_anchors * num_outputs, H_l, W_l]``;
    the channel index is ``anchor * num_outputs + output``.
    """

    def __init__(self, channels: int, repeats: int, num_levels: int, num_anchors: int, num_outputs: int,
                 padding: str, prior_bias: float = 0.0, separable: bool = True, act: str = "swish"):
        super().__init__()
        self.separable = separable
        self.act = activation(act)
        self.num_outputs = num_outputs
        if not separable:
            self.convs = nn.ModuleList(create_conv2d(channels, channels, 3, padding=padding, bias=True)
                                       for _ in range(repeats))
            self.predict = create_conv2d(channels, num_anchors * num_outputs, 3, padding=padding, bias=True)
            for conv in list(self.convs) + [self.predict]:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
            nn.init.constant_(self.predict.bias, prior_bias)
        else:
            self.convs = nn.ModuleList(SeparableConv(channels, channels, 3, padding=padding, norm=False)
                                       for _ in range(repeats))
            self.norms = nn.ModuleList(nn.ModuleList(batch_norm(channels) for _ in range(num_levels))
                                       for _ in range(repeats))
            self.predict = SeparableConv(channels, num_anchors * num_outputs, 3, padding=padding, bias=True,
                                         norm=False)
            for conv in list(self.convs) + [self.predict]:
                nn.init.normal_(conv.conv_dw.weight, std=math.sqrt(1.0 / 9))
                nn.init.normal_(conv.conv_pw.weight, std=math.sqrt(1.0 / conv.conv_pw.in_channels))
            nn.init.constant_(self.predict.conv_pw.bias, prior_bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            if self.separable:
                for conv, norms in zip(self.convs, self.norms):
                    x = self.act(norms[level](conv(x)))
            else:
                for conv in self.convs:
                    x = nn.functional.relu(conv(x))
            outputs.append(self.predict(x))
        return outputs


class EfficientDetHead(nn.Module):
    """Class and box subnets. ``forward(features) -> (class_logits, box_deltas)``, each a list over
    levels of ``[B, A*num_classes, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``; box channels per anchor
    are ``(dx, dy, dw, dh)`` in the coding of ``core.ops.box_coder``. ``separable=False``: RetinaNet's
    subnets (see :class:`SubNet`); ``act``: the subnets' activation (``symbol.layers.ACTIVATIONS``)."""

    def __init__(self, channels: int, repeats: int, num_levels: int, num_anchors: int, num_classes: int,
                 padding: str = "same", prior_prob: float = 0.01, separable: bool = True, act: str = "swish"):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.class_net = SubNet(channels, repeats, num_levels, num_anchors, num_classes, padding,
                                prior_bias=-math.log((1 - prior_prob) / prior_prob), separable=separable, act=act)
        self.box_net = SubNet(channels, repeats, num_levels, num_anchors, 4, padding, separable=separable, act=act)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.class_net(features), self.box_net(features)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("class_net", self.class_net), ("box_net", self.box_net)]


def _build_subnets(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int,
                   separable: bool) -> EfficientDetHead:
    h, a = cfg.head, cfg.anchors
    if len(set(in_channels)) != 1:
        raise ValueError(f"head.type '{h.type}' shares its subnets over levels and needs equal widths; "
                         f"neck '{cfg.neck.type}' gives {in_channels}")
    num_anchors = a.num_scales * len(a.aspect_ratios)
    return EfficientDetHead(in_channels[0], h.repeats, len(levels), num_anchors, num_classes, cfg.neck.padding,
                            separable=separable, act=h.activation)


class EfficientDetHeadOptions:
    """``head`` fields only the EfficientDet subnets read (RetinaNet's always use ReLU)."""
    activation = "swish"         # "swish", "relu6" (EfficientDet-Lite) or "relu"


@HEADS.register("effdet", options=EfficientDetHeadOptions)
def build_effdet_head(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int) -> EfficientDetHead:
    """EfficientDet's class and box subnets (separable convs, BatchNorm per level, ``head.activation``)
    shared over ``levels``: ``head.repeats`` convs, ``anchors.num_scales x len(anchors.aspect_ratios)``
    anchors per place, the neck's ``padding``. The subnets are shared, so every level needs one width."""
    return _build_subnets(cfg, in_channels, levels, num_classes, separable=True)


@HEADS.register("retina")
def build_retina_head(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int) -> EfficientDetHead:
    """RetinaNet's class and box subnets (plain 3x3 convs with bias and ReLU, no norm) shared over
    ``levels``; otherwise as :func:`build_effdet_head`."""
    return _build_subnets(cfg, in_channels, levels, num_classes, separable=False)
