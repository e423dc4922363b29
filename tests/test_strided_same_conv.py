"""StridedSameConv2d gives timm's TF-SAME Conv2dSame outputs without the padded copy."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers.conv2d_same import Conv2dSame

from core.engine.rewrites.strided_same_conv import StridedSameConv2d, replace_strided_same_convs


@pytest.mark.parametrize("kernel,groups", [(3, 1), (3, 8), (5, 8), (7, 2)])
@pytest.mark.parametrize("height,width", [(16, 16), (15, 15), (16, 13), (9, 20), (1, 2)])
def test_equals_timm_conv2d_same(kernel: int, groups: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    reference = Conv2dSame(8, 16, kernel, stride=2, groups=groups, bias=True)
    conv = StridedSameConv2d(reference)
    assert conv.weight.shape[-2:] == (kernel + 1, kernel + 1)
    x = torch.randn(2, 8, height, width)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = x.to(memory_format=layout)
        with torch.no_grad():
            expected, got = reference(x), conv(x)
        assert got.shape == expected.shape == (2, 16, (height + 1) // 2, (width + 1) // 2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_refuses_what_it_cannot_express() -> None:
    for conv in (Conv2dSame(4, 4, 3, stride=1), Conv2dSame(4, 4, 4, stride=2), Conv2dSame(4, 4, 3, stride=2, dilation=2)):
        with pytest.raises(ValueError, match="stride 2, an odd square kernel"):
            StridedSameConv2d(conv)


def test_backbone_swap_keeps_outputs() -> None:
    """tf_efficientnet_b0 has 5 stride-2 SAME convs (stem and four depthwise); with them swapped
    the backbone gives the same outputs in both memory layouts, at even and odd sizes."""
    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=[2, 3, 4]).eval()
    swapped = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=[2, 3, 4]).eval()
    swapped.load_state_dict(plain.state_dict())
    assert replace_strided_same_convs(swapped) == 5
    assert not any(isinstance(m, Conv2dSame) for m in swapped.modules())
    assert replace_strided_same_convs(swapped) == 0
    for layout in (torch.contiguous_format, torch.channels_last):
        for size in ((96, 80), (77, 90)):
            x = torch.randn(1, 3, *size).to(memory_format=layout)
            with torch.no_grad():
                for got, expected in zip(swapped.to(memory_format=layout)(x), plain.to(memory_format=layout)(x)):
                    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
