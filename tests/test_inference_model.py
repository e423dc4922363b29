"""The inference model DetLab runs: BatchNorm folded into convolutions, channels_last."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.config.loading import load_config
from core.engine.inference import inference_model
from symbol.builder import build_detector
from core.engine.rewrites.fold_bn import fold_batchnorm

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from identity, so that a wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen) * 1.5)
            if m.weight is not None:
                m.weight.data.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.data.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output tensor: (class_logits, box_deltas) lists of an effdet head, a list for YOLO."""
    with torch.no_grad():
        out = model(x)
    return [t for part in out for t in (part if isinstance(part, (list, tuple)) else [part])]


@pytest.mark.parametrize("name, folded_count", [("effdet_b0", 78), ("yolov4_s", 63), ("retina_r18_fpn", 20),
                                                ("nasfpn_effb0", 100), ("enet4y2", 92)])
def test_folded_model_gives_the_same_outputs(name: str, folded_count: int) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.py")
    model = build_detector(cfg, 3).eval()
    _randomise_batchnorm(model)
    folded, count = fold_batchnorm(model, torch.randn(1, 3, 128, 128))
    assert count == folded_count
    remaining = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(remaining) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - count
    if name == "effdet_b0":  # only the head's per-level norms after its shared convs stay
        assert remaining and all(".norms." in n for n in remaining)
    x = torch.randn(2, 3, 160, 192)  # another size and batch than the example the fold was read from
    for a, b in zip(_outputs(model, x), _outputs(folded, x)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())


class _SharedConvOutput(nn.Module):
    """A conv whose output feeds its BatchNorm and a residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _OneConvTwoNorms(nn.Module):
    """A conv shared by two inputs, each with its own BatchNorm (an EfficientDet head's pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norms = nn.ModuleList([nn.BatchNorm2d(3), nn.BatchNorm2d(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[0](self.conv(x)) + self.norms[1](self.conv(x * 2))


def test_fold_refuses_what_it_cannot_fold() -> None:
    shared = _SharedConvOutput().eval()
    _randomise_batchnorm(shared)
    with pytest.raises(RuntimeError, match="feeds something besides its BatchNorm"):
        fold_batchnorm(shared, torch.randn(1, 3, 8, 8))
    two = _OneConvTwoNorms().eval()
    _randomise_batchnorm(two)
    folded, count = fold_batchnorm(two, torch.randn(1, 3, 8, 8))
    assert count == 0
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(_OneConvTwoNorms(), torch.randn(1, 3, 8, 8))


def test_inference_model_leaves_the_training_model_alone() -> None:
    cfg = load_config(CONFIG_DIR / "effdet_b0.py", ["dataset.image_size=128"])
    model = build_detector(cfg, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = inference_model(model, torch.device("cpu"))
    assert not runner.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 108
