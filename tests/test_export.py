"""ONNX export: onnxruntime gives the same raw outputs as PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import load_config
from symbol.builder import build_detector
from utils.export import export_onnx

ROOT = Path(__file__).resolve().parent.parent
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("config", ["effdet_b0", "yolov4_s"])
def test_onnx_matches_pytorch(config: str, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / f"{config}.py", ["dataset.image_size=128"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding errors would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    names = export_onnx(model, cfg.head.type, 128, tmp_path / "model.onnx")
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = model(images)
    expected = list(out[0]) + list(out[1]) if isinstance(out, tuple) else list(out)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(names, {"images": images.numpy()})
    assert len(got) == len(expected)
    for name, a, b in zip(names, got, expected):
        assert a.shape == tuple(b.shape), name
        assert np.abs(a - b.numpy()).max() < 1e-4, name
