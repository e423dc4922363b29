"""Inference form of TensorFlow SAME stride-2 convolutions, without copying the input into a padded buffer.

TF SAME pads a stride-2 ``k x k`` convolution (``k`` odd) asymmetrically: along an even input
dimension by ``(k - 2) // 2`` before and ``k // 2`` after, along an odd one by ``(k - 1) // 2`` on
both sides. ``timm``'s ``Conv2dSame`` (the stride-2 convs of every ``tf_*`` EfficientNet) does it
with ``F.pad`` before the convolution: a full copy of the input, the largest tensors of the
network (96 x 257 x 257 floats in EfficientNet-B0's first stride-2 block at 512 px).

Along an even dimension the same result comes from a ``(k + 1)``-wide kernel whose first row
(column) is zero, with symmetric padding ``(k - 1) // 2``: output ``i`` then reads input rows
``2i - (k-1)/2 .. 2i + (k+1)/2``, and the first of them meets the zero row. The convolution
library pads internally; nothing is copied, and the extra products are exact zeros. Training
keeps timm's module (the gradients are timm's); ``core.engine.inference.inference_model`` swaps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

from core.engine.rewrites.swap import swap_modules


class StridedSameConv2d(nn.Conv2d):
    """TF-SAME stride-2 convolution with an odd square kernel ``k``, made from a ``Conv2dSame``.

    ``weight`` is ``[C_out, C_in / groups, k + 1, k + 1]`` with a zero first row and column;
    padding is symmetric ``(k - 1) // 2``. ``forward(x [B, C_in, H, W]) -> [B, C_out, ceil(H/2),
    ceil(W/2)]`` equals the source module's output for any ``H``, ``W`` (along an odd dimension
    the zero row is sliced off: TF SAME is symmetric there).
    """

    def __init__(self, source: nn.Conv2d):
        if not _expressible(source):
            raise ValueError(f"StridedSameConv2d needs stride 2, an odd square kernel and no dilation; got stride "
                             f"{source.stride}, kernel {source.kernel_size}, dilation {source.dilation}")
        k = source.kernel_size[0]
        super().__init__(source.in_channels, source.out_channels, k + 1, stride=2, padding=(k - 1) // 2,
                         groups=source.groups, bias=source.bias is not None,
                         device=source.weight.device, dtype=source.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(F.pad(source.weight, (1, 0, 1, 0)))
            if source.bias is not None:
                self.bias.copy_(source.bias)
        self.train(source.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        odd_h, odd_w = x.shape[-2] % 2, x.shape[-1] % 2
        weight = self.weight[:, :, odd_h:, odd_w:] if odd_h or odd_w else self.weight
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def replace_strided_same_convs(module: nn.Module) -> int:
    """Swap, in place, every ``timm`` ``Conv2dSame`` inside ``module`` that has stride 2, an odd
    square kernel and no dilation for its :class:`StridedSameConv2d` (other convolutions stay).
    For inference: the new weights are copies. Returns the number swapped."""
    same = (Conv2dSame, Conv2dSameExport)
    return swap_modules(module, lambda m: StridedSameConv2d(m) if isinstance(m, same) and _expressible(m) else None)


def _expressible(conv: nn.Conv2d) -> bool:
    """Stride 2, an odd square kernel, no dilation."""
    k = conv.kernel_size[0]
    return k % 2 == 1 and conv.stride == (2, 2) and conv.kernel_size == (k, k) and conv.dilation == (1, 1)
