"""utils.benchmark: a short side-by-side run with effdet prints both sides and their ratios."""
from __future__ import annotations

import math
import re

import pytest

from utils.benchmark import achieved_tflops, main, peak_bf16_tflops, ratio_spread, set_batchnorm_statistics


def test_ratio_spread_pairs_rounds() -> None:
    """Each round's ratio uses that round's two calls; median and 10/90% points over rounds, interpolated
    within the rounds (extrapolated deciles of 3 widely spread rounds went below 0 on a loaded machine)."""
    slow = [2.0, 4.0, 6.0, 8.0, 10.0]
    fast = [1.0, 2.0, 2.0, 4.0, 10.0]  # ratios 2, 2, 3, 2, 1
    median, low, high = ratio_spread(slow, fast)
    assert median == 2.0 and low == pytest.approx(1.4) and high == pytest.approx(2.6)
    assert 1.0 <= ratio_spread([1.0, 1.0, 9.0], [1.0, 0.1, 1.0])[1]  # never below the smallest ratio
    assert ratio_spread([3.0], [1.5]) == (2.0, 2.0, 2.0)


def test_benchmark_networks_answer_the_picture() -> None:
    """``set_batchnorm_statistics``: a fresh D0's class logits are the prior to 5 digits whatever the
    picture (its signal fades through the default BatchNorm statistics); with each BatchNorm's statistics
    taken from its own input they spread and differ between pictures, and the network is back in eval
    mode with its momenta."""
    import torch

    from core.config.loading import load_config
    from symbol.builder import build_detector

    cfg = load_config("config/effdet_b0.py", ["dataset.image_size=128"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).eval()
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))

    def spread() -> float:
        with torch.no_grad():
            logits = model(images)[0][0]
        return float((logits[0] - logits[1]).abs().max())

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    assert spread() < 1e-3
    set_batchnorm_statistics(model, 128, torch.device("cpu"))
    assert not model.training and [m.momentum for m in norms] == momenta
    assert spread() > 0.1


def test_gpu_figures() -> None:
    """The GPU lines' arithmetic, checked here since CI has no GPU: device names as torch reports
    them find their own peak (PCIe H100 before the generic H100), and a training step counts three
    forwards."""
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("NVIDIA L40S") == 362.0 and peak_bf16_tflops("NVIDIA L4") == 121.0
    assert peak_bf16_tflops("Tesla T4") is None
    assert achieved_tflops(5.0, 200.0, training=False) == pytest.approx(1.0)  # 5 GFLOP x 200 img/s
    assert achieved_tflops(5.0, 200.0, training=True) == pytest.approx(3.0)


def test_benchmark_compares_with_effdet(capsys: pytest.CaptureFixture[str]) -> None:
    """Training and prediction of effdet_b0 (at 128 px) and of effdet's tf_efficientdet_d0, timed
    in turn: a time and images/s for each of the four, and a ratio for training and prediction."""
    assert main(["--config", "config/effdet_b0.py", "--set", "dataset.image_size=128", "--num-classes", "5",
                 "--iters", "3", "--warmup", "1", "--threads", "1", "--compare", "effdet"]) == 0
    out = capsys.readouterr().out
    for name in ("detlab/train", "detlab/predict", "effdet/train", "effdet/predict"):
        ms, images_per_s = re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)$", out, re.M).groups()
        assert float(ms) > 0 and float(images_per_s) > 0
    for kind in ("train", "predict"):
        median, low, high = map(float, re.search(
            rf"ratio {kind} images/s detlab/effdet: ([\d.]+) \(median of 3 rounds; 10-90% of rounds ([\d.]+)-([\d.]+)",
            out).groups())
        assert 0 < low <= median <= high


def test_data_benchmark_times_one_worker_as_configured_and_with_mosaic(tmp_path, capsys) -> None:
    """``--only data`` reads the training split, builds the training loader in this process and
    prints each variant's images/s and the workers a target rate needs (ceil(target / rate))."""
    from conftest import synthetic_shapes_yaml

    data = synthetic_shapes_yaml(tmp_path, 8, 0, 64, seed=4)
    assert main(["--config", "config/demo.py", "--only", "data", "--data", str(data), "--set",
                 "dataset.image_size=64", "--set", "General.batch_image=2", "--iters", "3", "--warmup", "1",
                 "--target-ips", "1000"]) == 0
    out = capsys.readouterr().out
    assert "(8 training images), 64 px, batch 2" in out
    for name in ("configured", "mosaic"):
        ips, workers = re.search(rf"^  {name}\s+([\d.]+) images/s per worker; (\d+) workers for 1000", out, re.M).groups()
        assert float(ips) > 0 and abs(int(workers) - math.ceil(1000 / float(ips))) <= 1  # ips is printed rounded


def test_runtimes_benchmark_times_each_runtime_against_effdet(capsys) -> None:
    """``--runtimes``: one row per DetLab runtime and for effdet's eager prediction, each runtime
    with its ratio to effdet's (the reference row has none; ``--compile`` would add effdet compiled)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    assert main(["--config", "config/effdet_b0.py", "--set", "dataset.image_size=128", "--num-classes", "5",
                 "--iters", "2", "--warmup", "1", "--threads", "1", "--compare", "effdet",
                 "--runtimes", "torch,onnxruntime,openvino"]) == 0
    out = capsys.readouterr().out
    for name in ("detlab/predict-torch", "detlab/predict-onnxruntime", "detlab/predict-openvino"):
        ms, ips, ratio = re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \(", out, re.M).groups()
        assert float(ms) > 0 and float(ips) > 0 and float(ratio) > 0
    assert re.search(r"^detlab/predict-openvino\s.*float parts in f32$", out, re.M), out
    assert re.search(r"^CPU: .+ \(", out, re.M), out
    assert re.search(r"^effdet/predict-eager\s+[\d.]+\s+[\d.]+$", out, re.M), out


def test_a_mistyped_config_is_one_line_from_each_tool() -> None:
    """The tools that read a config (benchmark, model_summary, config_table) stop on a wrong path or field with
    one line and exit 2, as the trainer does, not with a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for argv in (["utils.benchmark", "--config", "config/dem.py"],
                 ["utils.benchmark", "--config", "config/demo.py", "--set", "General.batch_imag=2"],
                 ["utils.model_summary", "--config", "config/dem.py"]):
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=root, capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, proc.stderr[-2000:])
