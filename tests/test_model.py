"""Tests for symbol/ (networks built from configs) and utils.model_summary."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.ops.anchors import AnchorGenerator
from core.config.loading import load_config
from core.tasks.task import build_task
from symbol.builder import build_detector
from utils.model_summary import format_summary, summarize
from utils.model_summary import main as summary_main

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"

# EfficientDet-D0..D6 with 90 COCO classes (effdet / automl reference counts), in millions.
PAPER_PARAMS_M = [3.88, 6.63, 8.10, 12.03, 20.72, 33.65, 51.87]
# Multiply-adds (billions) at the native input size; FlopCounterMode counts 2 FLOPs per MAC.
PAPER_GMACS = [2.49, 6.00, 10.83]
# Compound scaling (Tan et al. 2020, table 1) for phi = 0..7.
# D_bifpn is 3 + phi except that the paper's table (and google/automl) keeps D5 at 7 and caps D6, D7 at 8.
W_BIFPN = [64, 88, 112, 160, 224, 288, 384, 384]
D_BIFPN = [3, 4, 5, 6, 7, 7, 8, 8]
INPUT_SIZE = [512, 640, 768, 896, 1024, 1280, 1280, 1536]

# EfficientNet-B0 stage parameters (stem, blocks.0 .. blocks.6) of the seed table.
B0_STAGE_PARAMS = [928, 1448, 16714, 46640, 242930, 543148, 2026348, 717232]


def _config_paths() -> list[Path]:
    return sorted(p for p in CONFIG_DIR.glob("*.py") if p.name not in ("base.py", "__init__.py"))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("phi", range(len(PAPER_PARAMS_M)))
def test_param_count_matches_paper(phi: int) -> None:
    model = build_detector(load_config(CONFIG_DIR / f"effdet_b{phi}.py"), 90)
    assert _params(model) / 1e6 == pytest.approx(PAPER_PARAMS_M[phi], rel=0.01)


@pytest.mark.parametrize("phi", range(len(PAPER_GMACS)))
def test_gflops_matches_paper(phi: int) -> None:
    cfg = load_config(CONFIG_DIR / f"effdet_b{phi}.py")
    model = build_detector(cfg, 90)
    rows, totals = summarize(model, cfg.dataset.image_size)
    assert totals.gflops == pytest.approx(2 * PAPER_GMACS[phi], rel=0.03)
    assert totals.parameters == _params(model)
    assert sum(r.params for r in rows) == totals.parameters


def test_efficientnet_b0_stage_rows() -> None:
    model = build_detector(load_config(CONFIG_DIR / "effdet_b0.py"), 90)
    rows, totals = summarize(model, 256)
    backbone = [r for r in rows if r.name.startswith("backbone.")]
    assert [r.name for r in backbone] == ["backbone.stem"] + [f"backbone.blocks.{i}" for i in range(7)]
    assert [r.params for r in backbone] == B0_STAGE_PARAMS
    # repeated blocks per stage and channels / strides measured on the dummy forward
    assert [r.n for r in backbone] == [1, 1, 2, 2, 3, 3, 4, 1]
    assert backbone[0].arguments == [3, 32, 2]
    assert [r.arguments[1] for r in backbone] == [32, 16, 24, 40, 80, 112, 192, 320]
    assert [r.arguments[2] for r in backbone] == [2, 2, 4, 8, 16, 16, 32, 32]
    assert all(r.source == -1 for r in backbone)
    assert totals.layers == sum(1 for m in model.modules() if not list(m.children()))
    assert totals.gradients == totals.parameters
    text = format_summary(rows, totals)
    assert text.splitlines()[0].split() == ["from", "n", "params", "module", "arguments"]
    assert re.search(r"^\s+0\s+-1\s+1\s+928\s+backbone\.stem\s+\[3, 32, 2\]$", text, re.M)


def test_summary_strides_at_sizes_not_divisible_by_128() -> None:
    """At 320 px P7 is 3 pixels wide (ceil of 2.5): its stride still reads 128."""
    rows, _ = summarize(build_detector(load_config(CONFIG_DIR / "effdet_lite0.py"), 90), 320)
    head = next(r for r in rows if r.name == "head.class_net")
    assert head.arguments[2] == [8, 16, 32, 64, 128]


def test_summary_other_row_and_gradients() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.b = nn.Conv2d(4, 5, 1)
            self.scale = nn.Parameter(torch.ones(7))  # in no stage

        def forward(self, x):
            return self.b(self.a(x)) * self.scale[0]

        def stages(self):
            return [("a", self.a), ("b", self.b)]

    model = Tiny()
    model.a.weight.requires_grad_(False)
    rows, totals = summarize(model, 32)
    assert [r.name for r in rows] == ["a", "b", "other"]
    assert [r.params for r in rows] == [3 * 4 * 9 + 4, 4 * 5 + 5, 7]
    assert sum(r.params for r in rows) == totals.parameters == _params(model)
    assert totals.gradients == totals.parameters - 3 * 4 * 9
    assert rows[0].arguments == [3, 4, 2] and rows[1].arguments == [4, 5, 2]
    expected_flops = 2 * (16 * 16 * 4 * 27 + 16 * 16 * 5 * 4)
    assert totals.gflops == pytest.approx(expected_flops / 1e9, rel=1e-6)


@pytest.mark.parametrize("phi", range(8))
def test_compound_scaling(phi: int) -> None:
    cfg = load_config(CONFIG_DIR / f"effdet_b{phi}.py")
    assert cfg.neck.channels == W_BIFPN[phi]
    assert cfg.neck.repeats == D_BIFPN[phi]
    assert cfg.neck.repeats == min(3 + phi, 8) or phi == 5
    assert cfg.head.repeats == 3 + phi // 3
    assert cfg.dataset.image_size == INPUT_SIZE[phi]
    assert cfg.backbone.name == f"tf_efficientnet_b{phi}"
    assert cfg.General.name == f"effdet_b{phi}"


def test_all_configs_are_globbed() -> None:
    names = {p.stem for p in _config_paths()}
    assert {f"effdet_b{i}" for i in range(8)} <= names


@pytest.mark.parametrize("path", _config_paths(), ids=lambda p: p.stem)
def test_forward_backward_shapes(path: Path) -> None:
    torch.manual_seed(0)
    size, num_classes = 128, 3
    cfg = load_config(path)
    model = build_detector(cfg, num_classes)
    model.train()
    images = torch.randn(2, 3, size, size)
    outputs = model(images)

    if cfg.head.type != "yolo":  # the YOLO family's shapes are checked in test_yolo.py
        class_logits, box_deltas = outputs
        a = cfg.anchors
        gen = AnchorGenerator(model.levels, a.scale, a.num_scales, a.aspect_ratios)
        sizes = gen.feature_sizes((size, size))
        assert len(class_logits) == len(box_deltas) == len(sizes) == len(model.levels)
        for cls, box, (h, w) in zip(class_logits, box_deltas, sizes):
            assert cls.shape == (2, gen.num_anchors * num_classes, h, w)
            assert box.shape == (2, gen.num_anchors * 4, h, w)
        assert sum(h * w for h, w in sizes) * gen.num_anchors == gen((size, size)).shape[0]

    task = build_task(cfg, model)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    losses = task.loss(outputs, images, targets)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_model_summary_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "utils.model_summary", "--config", "config/effdet_b0.py",
                          "--num-classes", "90"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"Model Summary: (\d+) layers, (\d+) parameters, (\d+) gradients, (\d+\.\d\d) GFLOPs", last)
    assert m, last
    assert int(m.group(2)) / 1e6 == pytest.approx(3.88, rel=0.01)
    assert int(m.group(3)) == int(m.group(2))
    assert float(m.group(4)) == pytest.approx(2 * 2.49, rel=0.03)
    assert "backbone.stem" in out.stdout and "head.box_net" in out.stdout


def test_model_summary_main_errors_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert summary_main(["--config", str(tmp_path / "nope.py"), "--num-classes", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    missing = f"dataset.data={tmp_path / 'missing.yaml'}"
    # --num-classes given: the dataset YAML is never read
    assert summary_main(["--config", str(CONFIG_DIR / "effdet_b0.py"), "--num-classes", "2", "--img-size", "64",
                         "--set", missing]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("Model Summary:")
    # otherwise the class count comes from the dataset YAML
    assert summary_main(["--config", str(CONFIG_DIR / "effdet_b0.py"), "--img-size", "64", "--set", missing]) == 2
    assert "--num-classes" in capsys.readouterr().err
    yaml_path = tmp_path / "three.yaml"
    yaml_path.write_text("format: voc\nroot: .\nclasses: [a, b, c]\n"
                         "train: {images: images, annotations: annotations}\n")
    assert summary_main(["--config", str(CONFIG_DIR / "effdet_b0.py"), "--img-size", "64",
                         "--set", f"dataset.data={yaml_path}"]) == 0
    out = capsys.readouterr().out
    three = build_detector(load_config(CONFIG_DIR / "effdet_b0.py"), 3)
    assert f"{_params(three)} parameters" in out.splitlines()[-1]
