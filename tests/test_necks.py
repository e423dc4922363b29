"""FPN and NAS-FPN necks, the RetinaNet head variant and the retina_* / nasfpn_* configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.ops.anchors import AnchorGenerator
from core.config.loading import config_from_dict, load_config
from core.engine.trainer import build_optimizer
from core.tasks.task import build_task
from symbol.backbone.timm_backbone import TimmBackbone
from symbol.builder import build_detector
from symbol.detector import Detector
from symbol.head.effdet_head import EfficientDetHead
from symbol.neck.fpn import FPN
from symbol.neck.nasfpn import NASFPN, NASFPN_CELL, NASFPNCell, cell_wiring

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
NEW_CONFIGS = ["retina_r18_fpn", "retina_r50_fpn", "nasfpn_r50", "nasfpn_effb0"]
LEVELS = [3, 4, 5, 6, 7]

# torchvision 0.29's retinanet_resnet50_fpn(weights=None, weights_backbone=None): 91 classes, P6 from P5,
# trainable BatchNorm in the backbone (with ImageNet backbone weights it uses FrozenBatchNorm2d, whose
# 53,120 affine values are buffers: 34,014,999 parameters, the number in torchvision's docs).
TORCHVISION_RETINANET_R50 = 34_068_119
# RetinaNet-R50-FPN with 80 classes and P6 from C5 (the paper, Detectron, mmdetection): 37.97 M.
RETINANET_R50_80_CLASSES_M = 37.97


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet18() -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone("resnet18", [3, 4, 5]).eval()


def _expected_sizes(size: int) -> list[tuple[int, int]]:
    return AnchorGenerator(LEVELS, 4.0, 3, [[1.0, 1.0]]).feature_sizes((size, size))


@pytest.mark.parametrize("size", [128, 100])
def test_fpn_shapes_and_strides(resnet18: TimmBackbone, size: int) -> None:
    fpn = FPN(resnet18.channels, resnet18.levels, 256)
    assert fpn.levels == LEVELS
    with torch.no_grad():
        outputs = fpn(resnet18(torch.randn(2, 3, size, size)))
    assert [tuple(o.shape) for o in outputs] == [(2, 256, h, w) for h, w in _expected_sizes(size)]
    if size == 128:  # strides 8 .. 128
        assert [size // o.shape[-1] for o in outputs] == [2**lv for lv in LEVELS]


def test_fpn_extra_levels_from_c5_or_p5(resnet18: TimmBackbone) -> None:
    from_c5 = FPN(resnet18.channels, resnet18.levels, 256)
    from_p5 = FPN(resnet18.channels, resnet18.levels, 256, extra_input="output")
    assert [c.in_channels for c in from_c5.extra] == [512, 256]  # resnet18's C5 has 512 channels
    assert [c.in_channels for c in from_p5.extra] == [256, 256]
    assert [c.stride for c in from_c5.extra] == [(2, 2), (2, 2)]
    assert [c.in_channels for c in from_c5.lateral] == [128, 256, 512]
    assert [c.kernel_size for c in from_c5.output] == [(3, 3)] * 3
    with pytest.raises(ValueError, match="consecutive"):
        FPN([256, 512], [4, 5], 256)
    assert [name for name, _ in from_c5.stages()] == ["lateral", "output", "extra_levels"]


@pytest.mark.parametrize("size", [128, 100])
def test_nasfpn_shapes_and_strides(resnet18: TimmBackbone, size: int) -> None:
    neck = NASFPN(resnet18.channels, resnet18.levels, 64, repeats=2)
    assert neck.levels == LEVELS
    with torch.no_grad():
        outputs = neck(resnet18(torch.randn(2, 3, size, size)))
    assert [tuple(o.shape) for o in outputs] == [(2, 64, h, w) for h, w in _expected_sizes(size)]
    if size == 128:
        assert [size // o.shape[-1] for o in outputs] == [2**lv for lv in LEVELS]
    with pytest.raises(ValueError, match="P3-P7"):
        NASFPN(resnet18.channels, resnet18.levels, 64, min_level=3, max_level=6)


def test_nasfpn_cell_wiring() -> None:
    # (levels of the two inputs, unused same-level maps an output block adds): block 4 (P5 out)
    # also sums the cell's P5 input, block 5 (P7 out) the cell's P7 input, as tensorflow/tpu.
    assert cell_wiring(NASFPN_CELL, LEVELS) == [((4, 6), []), ((4, 4), []), ((3, 4), []), ((4, 3), []),
                                                ((3, 4), [2]), ((4, 5), [4]), ((5, 7), [])]
    assert [b.op for b in NASFPN_CELL] == ["attention", "sum", "sum", "sum", "attention", "attention", "attention"]
    assert [b.level for b in NASFPN_CELL] == [4, 4, 3, 4, 5, 7, 6]
    assert [b.is_output for b in NASFPN_CELL] == [False, False, True, True, True, True, True]
    cell = NASFPNCell(8, "")
    assert cell.output_ids == [7, 8, 9, 11, 10]  # P3, P4, P5 from blocks 2-4, P6 from block 6, P7 from block 5


def test_nasfpn_global_attention() -> None:
    """Block 0 merges P4 and P6 at level 4: P6 upsampled + P4 * sigmoid(global max of upsampled P6)."""
    torch.manual_seed(0)
    cell = NASFPNCell(4, "")
    block = cell.blocks[0]
    block.conv = nn.Identity()
    maps = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(5)]
    sizes = {lv: m.shape[-2:] for lv, m in zip(LEVELS, maps)}
    p6_up = nn.functional.interpolate(maps[3], size=(8, 8), mode="nearest")
    expected = torch.relu(p6_up + maps[1] * torch.sigmoid(p6_up.amax(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(block(maps, sizes), expected)


def test_nasfpn_config_cells_and_repeats() -> None:
    cfg = load_config(CONFIG_DIR / "nasfpn_r50.py")
    neck = build_detector(cfg, 80).neck
    assert isinstance(neck, NASFPN)
    assert cfg.neck.repeats == 7 and len(neck.cells) == 7 and cfg.neck.channels == 256
    assert all(len(cell.blocks) == len(NASFPN_CELL) == 7 for cell in neck.cells)
    per_cell = 7 * (3 * 3 * 256 * 256 + 2 * 256)  # 3x3 conv (no bias) + BN per block
    assert all(_params(cell) == per_cell for cell in neck.cells)
    assert _params(neck) == 7 * per_cell + (512 + 1024 + 2048) * 256 + 3 * 2 * 256  # + 1x1 conv + BN per input
    assert len({id(cell.blocks[0].conv.conv.weight) for cell in neck.cells}) == 7  # own weights per repeat
    cfg.override("neck.repeats=3")
    assert len(build_detector(cfg, 80).neck.cells) == 3


def _retinanet_like_torchvision(num_classes: int) -> Detector:
    """RetinaNet-R50-FPN as torchvision builds it: P6 from P5, 4 plain convs per subnet, 9 anchors."""
    backbone = TimmBackbone("resnet50", [3, 4, 5])
    neck = FPN(backbone.channels, backbone.levels, 256, extra_input="output")
    head = EfficientDetHead(256, 4, 5, 9, num_classes, "", separable=False)
    return Detector(backbone, neck, head, num_classes, neck.levels)


def test_retinanet_r50_fpn_param_count() -> None:
    """Ours (80 classes, P6 from C5) vs torchvision's retinanet_resnet50_fpn (91 classes, P6 from P5).

    Same choices as torchvision: the same parameter shapes, so exactly the same count; the config's
    count differs from torchvision's by exactly the two documented choices.
    """
    from torchvision.models.detection import retinanet_resnet50_fpn

    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    tv_count = _params(tv)
    assert tv_count == TORCHVISION_RETINANET_R50
    ours_like_tv = _retinanet_like_torchvision(91)
    assert _params(ours_like_tv) == tv_count
    assert sorted(tuple(p.shape) for p in ours_like_tv.parameters()) == sorted(tuple(p.shape) for p in tv.parameters())

    model = build_detector(load_config(CONFIG_DIR / "retina_r50_fpn.py"), 80)
    p6_from_c5 = (2048 - 256) * 3 * 3 * 256              # P6 conv reads C5 (2048 ch), not P5 (256 ch)
    fewer_classes = (91 - 80) * 9 * (3 * 3 * 256 + 1)    # class predictor: 9 anchors x 11 classes fewer
    assert _params(model) == tv_count + p6_from_c5 - fewer_classes == 37_968_692
    assert _params(model) / 1e6 == pytest.approx(RETINANET_R50_80_CLASSES_M, rel=0.01)
    assert _params(model.head) == 2 * 4 * (9 * 256 * 256 + 256) + (9 * 256 + 1) * 9 * (80 + 4)


def test_retina_config_head_and_anchors() -> None:
    cfg = load_config(CONFIG_DIR / "retina_r50_fpn.py")
    model = build_detector(cfg, 80)
    assert isinstance(model.neck, FPN) and model.levels == LEVELS
    subnet = model.head.class_net
    assert not subnet.separable and len(subnet.convs) == 4
    assert all(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) and c.in_channels == c.out_channels == 256
               for c in subnet.convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.head.modules())
    assert model.head.num_anchors == cfg.anchors.num_scales * len(cfg.anchors.aspect_ratios) == 9
    assert cfg.anchors.scale == 4.0
    assert [w * h for w, h in cfg.anchors.aspect_ratios] == pytest.approx([1.0, 1.0, 1.0])  # equal areas
    assert sorted(h / w for w, h in cfg.anchors.aspect_ratios) == pytest.approx([0.5, 1.0, 2.0])
    assert (cfg.loss.focal_gamma, cfg.loss.focal_alpha) == (2.0, 0.25)
    assert (cfg.optimizer.type, cfg.optimizer.lr, cfg.optimizer.lr_batch) == ("sgd", 0.01, 16)
    assert cfg.dataset.image_size == 640
    prior = model.head.class_net.predict.bias
    torch.testing.assert_close(torch.sigmoid(prior), torch.full_like(prior, 0.01))


def test_effdet_head_default_is_separable() -> None:
    cfg = load_config(CONFIG_DIR / "effdet_b0.py")
    assert cfg.head.type == "effdet"
    assert build_detector(cfg, 90).head.class_net.separable


def test_run_saved_before_retina_type_loads_as_retina() -> None:
    """A checkpoint config from before ``head.type = "retina"`` (``effdet`` with ``separable = False``)
    builds RetinaNet subnets again, and an old EfficientDet one its separable subnets."""
    saved = load_config(CONFIG_DIR / "retina_r18_fpn.py").to_dict()
    saved["head"] = {**saved["head"], "type": "effdet", "separable": False}
    cfg = config_from_dict(saved, "old retina checkpoint")
    assert cfg.head.type == "retina"
    assert not build_detector(cfg, 3).head.class_net.separable
    saved["head"] = {**saved["head"], "type": "effdet", "separable": True}
    assert config_from_dict(saved, "old effdet checkpoint").head.type == "effdet"


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_config_trains_a_few_steps(name: str) -> None:
    """A tiny fixed batch at 128 px, the config's optimizer, lr and clipping: the loss falls."""
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / f"{name}.py")
    model = build_detector(cfg, 3).train()
    task = build_task(cfg, model)
    optimizer = build_optimizer(model, cfg.optimizer)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 64.0, 120.0, 100.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0]]), "labels": torch.tensor([0])}]
    losses = []
    for _ in range(6):
        loss = task.loss(model(images), images, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optimizer.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.clip_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.98 * losses[0], losses


def test_keep_classes_on_a_plain_conv_retinanet_head() -> None:
    from core.weights.surgery import keep_classes

    cfg = load_config(ROOT / "config" / "retina_r18_fpn.py")
    full = build_detector(cfg, 3).state_dict()
    kept = keep_classes(full, ["a", "b", "c"], ["c", "a"], "effdet").tensors
    small = build_detector(cfg, 2)
    small.load_state_dict(kept)  # strict: every shape fits a 2-class detector
    w_full = full["head.class_net.predict.weight"].reshape(9, 3, *full["head.class_net.predict.weight"].shape[1:])
    w_small = kept["head.class_net.predict.weight"].reshape(9, 2, *w_full.shape[2:])
    assert torch.equal(w_small[:, 0], w_full[:, 2]) and torch.equal(w_small[:, 1], w_full[:, 0])
