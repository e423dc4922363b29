"""The inference model DetLab runs: BatchNorm folded into convolutions, channels_last."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from core.config.loading import load_config
from core.engine.inference import inference_model
from symbol.builder import build_detector
from core.engine.rewrites.fold_bn import fold_batchnorm
from core.engine.rewrites.level_subnet import split_level_norms

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


@pytest.mark.parametrize("name", ["effdet_b0", "effdet_lite0", "demo"])
def test_head_level_norms_fold_into_per_level_convs(name: str) -> None:
    """split_level_norms gives each level its own copy of the head's shared convs with its
    BatchNorm folded in, and runs the coarse levels together on one canvas; the outputs stay,
    whichever levels pack (none, the two or the three coarsest). Then no BatchNorm is left in
    the inference network, and its outputs match the training model's."""
    from core.engine.rewrites.level_subnet import LevelSubNet

    cfg = load_config(CONFIG_DIR / f"{name}.py", ["dataset.image_size=128"])
    model = build_detector(cfg, 3).eval()
    _randomise_batchnorm(model)
    split = copy.deepcopy(model)
    assert split_level_norms(split) == 2  # class and box subnets
    assert not any(isinstance(m, nn.BatchNorm2d) for m in split.head.modules())
    subnets = [m for m in split.modules() if isinstance(m, LevelSubNet)]
    for max_packed_pixels in (0, 6, 20):  # at 128 x 160 P3-P7 are 16x20, 8x10, 4x5, 2x3, 1x2: none, P6-7, P5-7
        for subnet in subnets:
            subnet.max_packed_pixels = max_packed_pixels
        x = torch.randn(2, 3, 128, 160)
        for a, b in zip(_outputs(model, x), _outputs(split, x)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())
    runner = inference_model(model, torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in runner.modules())
    for a, b in zip(_outputs(model, x), _outputs(runner, x.to(memory_format=torch.channels_last))):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())


def test_level_canvas_places_and_splits_exactly() -> None:
    """Maps placed on a LevelCanvas come back bit for bit, with ``gap`` zeros between them and zero
    elsewhere; a 3x3 conv over the canvas gives each map exactly its own zero-padded conv."""
    from core.engine.rewrites.level_canvas import LevelCanvas

    torch.manual_seed(0)
    maps = [torch.randn(2, 4, h, w) for h, w in [(16, 16), (8, 8), (4, 4), (3, 2)]]
    canvas = LevelCanvas([tuple(m.shape[-2:]) for m in maps], gap=1)
    assert canvas.origins == [(0, 0), (0, 17), (9, 17), (14, 17)]
    placed = canvas.place(maps)
    assert placed.shape == (2, 4, 17, 25)
    assert int((placed != 0).sum()) == sum(int((m != 0).sum()) for m in maps)
    for a, b in zip(maps, canvas.split(placed)):
        assert torch.equal(a, b)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        for alone, together in zip([conv(m) for m in maps], canvas.split(conv(placed))):
            assert torch.allclose(alone, together, atol=1e-6)
    with pytest.raises(ValueError, match="laid out for sizes"):
        canvas.place(maps[:3])


def test_squeeze_excite_projections_keep_outputs() -> None:
    """replace_excite_convs swaps the 2 x 16 one-pixel 1x1 convs of EfficientNet-B0's
    squeeze-excite blocks; the block outputs stay (to float rounding), and any other input shape
    is refused."""
    from timm.models._efficientnet_blocks import SqueezeExcite

    from core.engine.rewrites.squeeze_excite import PixelProjection, replace_excite_convs

    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=[2, 3, 4]).eval()
    swapped = copy.deepcopy(plain)
    assert replace_excite_convs(swapped) == 16
    assert sum(isinstance(m, PixelProjection) for m in swapped.modules()) == 32
    assert not any(isinstance(m.conv_reduce, nn.Conv2d) for m in swapped.modules() if isinstance(m, SqueezeExcite))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        for got, expected in zip(swapped(x), plain(x)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, C, 1, 1\]"):
        PixelProjection(nn.Conv2d(4, 2, 1))(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="plain 1x1 conv"):
        PixelProjection(nn.Conv2d(4, 2, 3))
