"""EfficientDet / RetinaNet-style head: class and box subnets shared across pyramid levels."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from timm.layers import create_conv2d

from symbol.fold_bn import batchnorm_affine, fold_into_conv
from symbol.head.level_canvas import LevelCanvas
from symbol.layers import SeparableConv, activation, batch_norm
from symbol.registry import HEADS
from symbol.swap import swap_modules


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


class LevelSubNet(nn.Module):
    """Inference form of a separable :class:`SubNet`, same outputs to float rounding; its weights
    are copies (for inference, not training).

    Each level gets its own copy of the repeated separable convs with that level's BatchNorm
    folded into the pointwise conv (a shared conv feeding five per-level norms cannot be folded),
    then the subnet's activation. Levels of at most ``max_packed_pixels`` pixels (the coarse end of the pyramid,
    16x16 and smaller by default), when there are two or more, run together instead: on one
    :class:`~symbol.head.level_canvas.LevelCanvas` through the shared convs, each level's
    BatchNorm a per-pixel scale and shift that is zero in the gaps (so the activation keeps the gaps zero),
    so that each conv is called once for all of them; on such small maps a call costs far more
    than its arithmetic. Which levels pack is decided per input size, in ``forward``.

    ``forward(list of [B, C, H_l, W_l]) -> list of [B, num_anchors * num_outputs, H_l, W_l]``.
    """

    def __init__(self, subnet: SubNet, max_packed_pixels: int = 256):
        super().__init__()
        if not subnet.separable:
            raise ValueError("LevelSubNet needs a separable SubNet (RetinaNet's subnets have no per-level norms)")
        self.max_packed_pixels = max_packed_pixels
        self.levels = nn.ModuleList(
            nn.Sequential(*(m for conv, norms in zip(subnet.convs, subnet.norms)
                            for m in (_folded_copy(conv, norms[level]), copy.deepcopy(subnet.act))))
            for level in range(len(subnet.norms[0])))
        self.shared_convs = copy.deepcopy(subnet.convs)
        self.register_buffer("level_affine", torch.stack([  # [repeat, level, (scale, shift), C]
            torch.stack([torch.stack(batchnorm_affine(bn)) for bn in norms]) for norms in subnet.norms]))
        self.predict = copy.deepcopy(subnet.predict)
        self.act = copy.deepcopy(subnet.act)
        self.gap = max(conv.conv_dw.kernel_size[0] for conv in [*subnet.convs, subnet.predict]) // 2

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        small = 0  # coarse levels of at most max_packed_pixels; a plain loop, which Dynamo traces
        for x in reversed(features):
            if x.shape[-2:].numel() > self.max_packed_pixels:
                break
            small += 1
        first_packed = len(features) - small if small >= 2 else len(features)
        outputs = [self.predict(layers(x)) for layers, x in zip(self.levels, features[:first_packed])]
        if first_packed == len(features):
            return outputs
        coarse = features[first_packed:]
        canvas = LevelCanvas([tuple(x.shape[-2:]) for x in coarse], self.gap)
        x = canvas.place(coarse)
        repeats, _, _, channels = self.level_affine.shape
        # every repeat's scale and shift on one canvas: [repeat, (scale, shift), C, H, W], zero in the gaps
        affine = canvas.place([self.level_affine[:, level].reshape(-1, channels, 1, 1).expand(-1, -1, *f.shape[-2:])
                               for level, f in enumerate(coarse, start=first_packed)]).unflatten(0, (repeats, 2))
        for conv, (scale, shift) in zip(self.shared_convs, affine):
            x = self.act(conv(x) * scale + shift)
        return outputs + canvas.split(self.predict(x))


def _folded_copy(conv: SeparableConv, bn: nn.BatchNorm2d) -> SeparableConv:
    """A copy of the (norm-free) separable ``conv`` with the eval-mode ``bn`` after it folded in."""
    folded = copy.deepcopy(conv)
    fold_into_conv(folded.conv_pw, bn)
    return folded


def split_level_norms(module: nn.Module) -> int:
    """Replace, in place, every separable :class:`SubNet` inside ``module`` by its
    :class:`LevelSubNet` (inference only); returns the number replaced."""
    return swap_modules(module, lambda m: LevelSubNet(m) if isinstance(m, SubNet) and m.separable else None)


class EfficientDetHead(nn.Module):
    """Class and box subnets. ``forward(features) -> (class_logits, box_deltas)``, each a list over
    levels of ``[B, A*num_classes, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``; box channels per anchor
    are ``(dx, dy, dw, dh)`` in the coding of ``core.box_coder``. ``separable=False``: RetinaNet's
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


@HEADS.register("effdet")
def build_effdet_head(cfg: Any, in_channels: list[int], levels: list[int], num_classes: int) -> EfficientDetHead:
    """Class and box subnets shared over ``levels``, from the ``head`` section (``repeats``,
    ``separable``, ``activation``) with ``anchors.num_scales x len(anchors.aspect_ratios)`` anchors
    per place and the neck's ``padding``. The subnets are shared, so every level needs one width."""
    h, a = cfg.head, cfg.anchors
    if len(set(in_channels)) != 1:
        raise ValueError(f"head.type 'effdet' shares its subnets over levels and needs equal widths; "
                         f"neck '{cfg.neck.type}' gives {in_channels}")
    num_anchors = a.num_scales * len(a.aspect_ratios)
    return EfficientDetHead(in_channels[0], h.repeats, len(levels), num_anchors, num_classes, cfg.neck.padding,
                            separable=h.separable, act=h.activation)
