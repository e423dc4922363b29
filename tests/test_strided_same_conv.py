"""StridedSameConv2d is timm's TF-SAME Conv2dSame without the padded copy: same outputs, same grads."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers.conv2d_same import Conv2dSame

from symbol.backbone.timm_backbone import TimmBackbone
from symbol.strided_same_conv import StridedSameConv2d, replace_strided_same_convs


@pytest.mark.parametrize("kernel,groups", [(3, 1), (3, 8), (5, 8), (7, 2)])
@pytest.mark.parametrize("height,width", [(16, 16), (15, 15), (16, 13), (9, 20), (1, 2)])
def test_equals_timm_conv2d_same(kernel: int, groups: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    reference = Conv2dSame(8, 16, kernel, stride=2, groups=groups, bias=True)
    conv = StridedSameConv2d(8, 16, kernel, groups=groups, bias=True)
    conv.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, height, width, requires_grad=True)
    expected, got = reference(x), conv(x)
    assert got.shape == expected.shape == (2, 16, (height + 1) // 2, (width + 1) // 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, [x, reference.weight, reference.bias], grad)
    got_grads = torch.autograd.grad(got, [x, conv.weight, conv.bias], grad)
    for g, e in zip(got_grads, expected_grads):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_even_kernel_refused() -> None:
    with pytest.raises(ValueError, match="odd kernel"):
        StridedSameConv2d(4, 4, 4)


def test_backbone_swaps_every_strided_same_conv_and_keeps_outputs() -> None:
    """tf_efficientnet_b0 has 5 stride-2 SAME convs (stem and four depthwise); after the swap the
    backbone gives timm's own outputs, in both memory layouts, and loads timm's state dict."""
    torch.manual_seed(0)
    backbone = TimmBackbone("tf_efficientnet_b0", [3, 4, 5]).eval()
    plain = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=[2, 3, 4]).eval()
    assert sum(isinstance(m, Conv2dSame) for m in plain.modules()) == 5
    assert sum(isinstance(m, Conv2dSame) for m in backbone.modules()) == 0
    assert sum(isinstance(m, StridedSameConv2d) for m in backbone.modules()) == 5
    backbone.body.load_state_dict(plain.state_dict())  # same keys and shapes
    assert replace_strided_same_convs(backbone) == 0
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, 3, 96, 80).to(memory_format=layout)
        with torch.no_grad():
            for got, expected in zip(backbone.to(memory_format=layout)(x), plain.to(memory_format=layout)(x)):
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
