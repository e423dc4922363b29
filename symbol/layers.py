"""Small building blocks shared by backbones, necks and heads."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from timm.layers import create_conv2d


ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    """The activation ``name`` (a key of :data:`ACTIVATIONS`: ``swish`` = SiLU, EfficientDet's;
    ``relu6``, EfficientDet-Lite's; ``relu``) as a module. Each maps 0 to 0."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's EfficientDet settings (momentum 0.01 in PyTorch terms, eps 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class SeparableConv(nn.Module):
    """Depthwise k x k conv, pointwise 1x1 conv, optional BatchNorm.

    Input ``[B, C_in, H, W]`` -> output ``[B, C_out, H, W]`` (stride 1).
    ``padding="same"`` reproduces TensorFlow SAME padding; ``""`` pads symmetrically.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: str = "",
                 bias: bool = False, norm: bool = True):
        super().__init__()
        self.conv_dw = create_conv2d(in_channels, in_channels, kernel_size, padding=padding, depthwise=True)
        self.conv_pw = create_conv2d(in_channels, out_channels, 1, padding=padding, bias=bias)
        self.bn = batch_norm(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_pw(self.conv_dw(x)))


class ConvBn(nn.Module):
    """k x k conv (no bias) followed by BatchNorm; ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: str = ""):
        super().__init__()
        self.conv = create_conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def yolo_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the YOLOv4/v5 settings (eps 1e-3, momentum 0.03)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.03)


class ConvBnAct(nn.Module):
    """k x k conv (no bias, padding ``k // 2``) + BN + activation: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: Callable[[], nn.Module] = nn.Mish):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = yolo_batch_norm(out_channels)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
