"""EfficientDet / RetinaNet-style head: class and box subnets shared across pyramid levels."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from timm.layers import create_conv2d

from symbol.layers import SeparableConv, batch_norm
from symbol.swap import swap_modules


class SubNet(nn.Module):
    """``repeats`` separable convs shared over levels, each with its own BatchNorm per level, swish,
    then a prediction conv with ``num_anchors * num_outputs`` channels. ``separable=False`` gives
    RetinaNet's subnet instead: plain 3x3 convs with bias, ReLU, no normalisation, a plain 3x3
    prediction conv (weights N(0, 0.01), biases 0 but the prior).

    ``forward(list of [B, C, H_l, W_l]) -> list of [B, num_anchors * num_outputs, H_l, W_l]``;
    the channel index is ``anchor * num_outputs + output``.
    """

    def __init__(self, channels: int, repeats: int, num_levels: int, num_anchors: int, num_outputs: int,
                 padding: str, prior_bias: float = 0.0, separable: bool = True):
        super().__init__()
        self.separable = separable
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
                    x = nn.functional.silu(norms[level](conv(x)))
            else:
                for conv in self.convs:
                    x = nn.functional.relu(conv(x))
            outputs.append(self.predict(x))
        return outputs


class LevelSubNet(nn.Module):
    """Inference form of a separable :class:`SubNet`: every level runs its own copy of the repeated
    separable convs, each followed by that level's BatchNorm and swish, then the shared prediction
    conv. Same outputs as the SubNet it is made from; with one conv per BatchNorm,
    ``symbol.fold_bn`` can fold every norm (a shared conv feeding five per-level norms cannot be
    folded). The copies do not share weights any more: for inference, not training.

    ``forward(list of [B, C, H_l, W_l]) -> list of [B, num_anchors * num_outputs, H_l, W_l]``.
    """

    def __init__(self, subnet: SubNet):
        super().__init__()
        if not subnet.separable:
            raise ValueError("LevelSubNet needs a separable SubNet (RetinaNet's subnets have no per-level norms)")
        self.levels = nn.ModuleList(
            nn.Sequential(*(m for conv, norms in zip(subnet.convs, subnet.norms)
                            for m in (copy.deepcopy(conv), norms[level], nn.SiLU())))
            for level in range(len(subnet.norms[0])))
        self.predict = subnet.predict

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.predict(layers(x)) for layers, x in zip(self.levels, features)]


def split_level_norms(module: nn.Module) -> int:
    """Replace, in place, every separable :class:`SubNet` inside ``module`` by its
    :class:`LevelSubNet` (inference only); returns the number replaced."""
    return swap_modules(module, lambda m: LevelSubNet(m) if isinstance(m, SubNet) and m.separable else None)


class EfficientDetHead(nn.Module):
    """Class and box subnets. ``forward(features) -> (class_logits, box_deltas)``, each a list over
    levels of ``[B, A*num_classes, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``; box channels per anchor
    are ``(dx, dy, dw, dh)`` in the coding of ``core.box_coder``. ``separable=False``: RetinaNet's
    subnets (see :class:`SubNet`)."""

    def __init__(self, channels: int, repeats: int, num_levels: int, num_anchors: int, num_classes: int,
                 padding: str = "same", prior_prob: float = 0.01, separable: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.class_net = SubNet(channels, repeats, num_levels, num_anchors, num_classes, padding,
                                prior_bias=-math.log((1 - prior_prob) / prior_prob), separable=separable)
        self.box_net = SubNet(channels, repeats, num_levels, num_anchors, 4, padding, separable=separable)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.class_net(features), self.box_net(features)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("class_net", self.class_net), ("box_net", self.box_net)]
