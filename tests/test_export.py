"""ONNX export: onnxruntime gives the same raw outputs as PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config.loading import load_config
from symbol.builder import build_detector
from core.tasks.task import build_task
from core.inference.exported import export_onnx
from utils.benchmark import set_batchnorm_statistics

ROOT = Path(__file__).resolve().parent.parent
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


# float32 through ~100 layers summed in another order: 1e-5 (D0) to 5e-5 (yolov4_s) of each output's
# largest magnitude for onnxruntime and OpenVINO on a 2026-12-02 Xeon; the bound leaves room for other CPUs
FLOAT32_RTOL = 3e-4


def lively_network(config: str, size: int) -> tuple[torch.nn.Module, object]:
    """A fresh ``config`` network (3 classes, eval mode) whose outputs depend on the picture, and its config.
    With its default BatchNorm statistics a fresh network's signal fades about tenfold per stage (D0's
    class logits are the prior to 7 digits, whatever the picture), so any export would match it: here each
    BatchNorm's statistics are its own input's, from two batches of random pictures, and its affine
    parameters are random."""
    cfg = load_config(ROOT / "config" / f"{config}.py", [f"dataset.image_size={size}"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    set_batchnorm_statistics(model, size, torch.device("cpu"))
    return model.eval(), cfg


def flat_outputs(out) -> list[torch.Tensor]:
    """A network's raw outputs (a list per level, or a (class, box) pair of lists) as one list."""
    return list(out[0]) + list(out[1]) if isinstance(out, tuple) else list(out)


def assert_close_outputs(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    """Each output within ``rtol`` of its largest magnitude, and the pictures' outputs far apart from each
    other (so a runtime that mixed up or ignored its inputs could not pass)."""
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, k
        tolerance = rtol * b.abs().max()
        assert (a - b).abs().max() <= tolerance, (k, float((a - b).abs().max()), float(tolerance))
        assert (b[0] - b[-1]).abs().max() > 100 * tolerance, k  # the outputs depend on the picture


@pytest.mark.parametrize("config", ["effdet_b0", "yolov4_s"])
def test_onnx_matches_pytorch(config: str, tmp_path: Path) -> None:
    """onnxruntime runs the ONNX export to PyTorch's raw outputs (float32 rounding), picture by picture."""
    model, cfg = lively_network(config, 128)
    names = export_onnx(model, build_task(cfg, model), 128, tmp_path / "model.onnx", batch=2)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [o.permute(0, 2, 3, 1) for o in flat_outputs(model(images))]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = [torch.from_numpy(a) for a in session.run(names, {"images": images.numpy()})]
    assert_close_outputs(got, expected, FLOAT32_RTOL)


@pytest.mark.parametrize("config,bn_var", [("effdet_b0", (0.5, 2.0)), ("yolov4_s", (0.2, 0.5))])
def test_onnx_with_postprocess_matches_detlab_detections(config: str, bn_var: tuple[float, float],
                                                         tmp_path: Path) -> None:
    """``--postprocess``: onnxruntime's boxes, scores and labels equal DetLab's own detections
    (``task.detect``: the CPU top-k search and class-wise NMS) on the same image."""
    cfg = load_config(ROOT / "config" / f"{config}.py", ["dataset.image_size=128", "test.min_det_score=0.05"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).eval()
    # outputs that depend on the image and spread out (a fresh network's are nearly constant and tie):
    # many candidates, many overlaps; BatchNorm variances that neither fade nor blow up the signal
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(*bn_var)
        predictors = [model.head.class_net.predict.conv_pw] if cfg.head.type != "yolo" else \
            [m for name, m in model.head.named_modules() if name.endswith("predict")]
        for conv in predictors:
            conv.bias.normal_(-2.0, 1.0)
            conv.weight.mul_(10.0)
    task = build_task(cfg, model)
    names = export_onnx(model, task, 128, tmp_path / "det.onnx", postprocess=True)
    assert names == ["boxes", "scores", "labels"]
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    for seed in range(3):
        images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = task.detect(model(images), images)[0]
        boxes, scores, labels = session.run(names, {"images": images.numpy()})
        assert 20 <= len(scores) <= cfg.test.max_det_per_image, len(scores)
        assert len(scores) == len(expected.scores)
        assert np.abs(scores - expected.scores.numpy()).max() < 1e-5  # same scores, highest first
        # the same detections; two of (nearly) equal score may come in either order
        unmatched = list(zip(expected.boxes.numpy(), expected.scores.numpy(), expected.labels.numpy()))
        for box, score, label in zip(boxes, scores, labels):
            match = next(i for i, (b, s, lab) in enumerate(unmatched)
                         if lab == label and abs(s - score) < 1e-5 and np.abs(b - box).max() < 1e-3)
            unmatched.pop(match)


def test_postprocess_export_is_one_image_at_a_time(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config/effdet_b0.py", ["dataset.image_size=128"])
    model = build_detector(cfg, 3)
    with pytest.raises(ValueError, match="one image at a time; got --batch 2"):
        export_onnx(model, build_task(cfg, model), 128, tmp_path / "e.onnx", batch=2, postprocess=True)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("config", ["effdet_b0", "yolov4_s"])
def test_exported_network_is_called_like_the_torch_network(config: str, runtime: str, tmp_path: Path) -> None:
    """``export_network``: the runtime's outputs have the torch network's nesting and values (to float
    rounding), for 3 images through an export of batch 2 (one full call, one padded)."""
    pytest.importorskip(runtime)
    from core.inference.exported import export_network

    model, cfg = lively_network(config, 128)
    net = export_network(model, build_task(cfg, model), 128, runtime, tmp_path, batch=2)
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
    got = net.eval()(images)
    assert net.precision == "f32"  # not OpenVINO's bf16 on CPUs that have it
    assert type(got) is type(expected)
    assert_close_outputs(flat_outputs(got), flat_outputs(expected), FLOAT32_RTOL)


def test_int8_keeps_every_dense_convolution_of_the_float_modules_in_float(tmp_path: Path) -> None:
    """``quantize_openvino(..., float_modules)``: each dense convolution that torch's exporter recorded under
    one of the modules (ONNX node metadata) loses its 8-bit input, biased ones included (OpenVINO renames
    those ``<name>/WithoutBiases``), and no other convolution does. The convolution that reads the picture
    is never quantized."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import onnx
    import openvino as ov

    from core.inference.exported import quantize_openvino

    model, cfg = lively_network("effdet_b0", 128)
    path = tmp_path / "model.onnx"
    export_onnx(model, build_task(cfg, model), 128, path)

    def dense_under(scope: str) -> int:
        convs = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"
                 and all(a.i == 1 for a in n.attribute if a.name == "group")]
        return sum(any(f"'{scope}'" in p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes")
                   for n in convs)

    calibration = [np.random.default_rng(k).standard_normal((1, 3, 128, 128)).astype(np.float32) for k in range(2)]
    quantized = {}
    for modules in ((), ("neck",), ("neck", "head.box_net")):
        xml = quantize_openvino(path, tmp_path / f"q{len(modules)}.xml", calibration, modules)
        graph = ov.Core().read_model(str(xml))
        quantized[modules] = sum(op.get_type_name() == "Convolution"
                                 and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
                                 for op in graph.get_ops())
        stem = [t.get_node() for t in graph.get_parameters()[0].output(0).get_target_inputs()]
        assert [op.get_type_name() for op in stem] == ["Convolution"]  # the picture goes straight in, unquantized
    with pytest.raises(ValueError, match=r"float_modules \['head.boxes'\]: no node"):
        quantize_openvino(path, tmp_path / "typo.xml", calibration, ("neck", "head.boxes"))
    neck, box = dense_under("model.neck"), dense_under("model.head.box_net")
    assert neck > 0 and box > 0
    assert quantized[()] - quantized[("neck",)] == neck, (quantized, neck)
    # the box branch's convolutions but its predictors (never quantized: they write the outputs)
    assert quantized[("neck",)] - quantized[("neck", "head.box_net")] == box - len(model.levels), (quantized, box)


    # constant_biases (what the INT8 runtime applies where it computes in bf16): every bias is a constant, no
    # ShapeOf is left, the 8-bit weights stay 8-bit and the outputs are the same in f32, to its rounding (a bias
    # fused into its convolution may be added in another order; on the 2026-12-03 Xeon they were bit-equal)
    from core.inference.exported import constant_biases

    def kinds(graph) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in graph.get_ops():
            counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
        return counts

    core = ov.Core()
    xml = tmp_path / "q0.xml"
    before, after = core.read_model(str(xml)), constant_biases(core.read_model(str(xml)))
    assert kinds(before)["ShapeOf"] > 0 and "ShapeOf" not in kinds(after)
    int8 = lambda graph: sum(op.get_type_name() == "Constant" and op.get_output_element_type(0) in  # noqa: E731
                             (ov.Type.i8, ov.Type.u8) for op in graph.get_ops())
    assert int8(after) == int8(before) > 0
    assert (kinds(after)["FakeQuantize"], kinds(after)["Convert"]) == (kinds(before)["FakeQuantize"],
                                                                       kinds(before)["Convert"])
    run = lambda graph: [np.asarray(v) for v in core.compile_model(  # noqa: E731
        graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(calibration[0]).values()]
    for a, b in zip(run(before), run(after)):
        assert np.abs(a - b).max() <= FLOAT32_RTOL * np.abs(a).max(), float(np.abs(a - b).max())


def test_cpu_has_amx_reads_the_flags_line(tmp_path: Path) -> None:
    """``cpu_has_amx``: True only for an ``amx_bf16`` flag on the flags line of cpuinfo (the INT8 runtime's
    float parts go bf16 only there); a flag-like word elsewhere, or no file, is False."""
    from core.inference.exported import cpu_has_amx

    def cpuinfo(text: str) -> Path:
        path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        path.write_text(text)
        return path

    amx = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    avx512 = "processor\t: 0\nmodel name\t: amx_bf16 lookalike\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert cpu_has_amx(cpuinfo(amx))
    assert not cpu_has_amx(cpuinfo(avx512))
    assert not cpu_has_amx(tmp_path / "missing")


def test_onnxruntime_leaves_no_thread_spinning_after_a_call(tmp_path: Path) -> None:
    """An ONNX Runtime call returns with its worker threads stopped: by default they spin on after the run
    and take the cores from the post-processing and from whatever runs
    next. Measured as the process's CPU time while it sleeps right after a call."""
    import time

    from core.inference.exported import export_network

    model, cfg = lively_network("effdet_b0", 128)
    net = export_network(model, build_task(cfg, model), 128, "onnxruntime", tmp_path, threads=2)
    images = torch.randn(1, 3, 128, 128)
    burnt = []
    for _ in range(3):
        net(images)
        start = time.process_time()
        time.sleep(0.2)
        burnt.append(time.process_time() - start)
    assert min(burnt) < 0.005, burnt  # seconds of CPU in 0.2 s of sleep
