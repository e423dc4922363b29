"""The EfficientDet head's inference form: per-level copies of its shared separable convs with each
level's BatchNorm folded in, the coarse levels run together on one canvas."""
from __future__ import annotations

import copy

import torch
from torch import nn

from core.engine.rewrites.fold_bn import batchnorm_affine, fold_into_conv
from core.engine.rewrites.level_canvas import LevelCanvas
from core.engine.rewrites.swap import swap_modules
from symbol.head.effdet_head import SubNet
from symbol.layers import SeparableConv


class LevelSubNet(nn.Module):
    """Inference form of a separable :class:`SubNet`, same outputs to float rounding; its weights
    are copies (for inference, not training).

    Each level gets its own copy of the repeated separable convs with that level's BatchNorm
    folded into the pointwise conv (a shared conv feeding five per-level norms cannot be folded),
    then the subnet's activation. Levels of at most ``max_packed_pixels`` pixels (the coarse end of the pyramid,
    16x16 and smaller by default), when there are two or more, run together instead: on one
    :class:`~core.engine.rewrites.level_canvas.LevelCanvas` through the shared convs, each level's
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
