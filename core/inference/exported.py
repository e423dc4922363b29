"""An exported detector network: ONNX export, and the exported graph run by ONNX Runtime or OpenVINO.

``export_onnx`` writes the network alone (input ``images`` float32 ``[B, 3, S, S]``, normalised as the
config says; one output per level and kind, named by the head family's ``output_names``, each the torch
network's ``[B, C, H, W]`` output as ``[B, H, W, C]``), or with
``postprocess`` the network followed by its post-processing (``boxes``, ``scores``, ``labels``).
:class:`ExportedNetwork` runs the plain export in a deployment runtime and is called like the torch
network: ``images [B, 3, S, S]`` in, the network's raw outputs (nested as the head gives them) out,
so the task's decoding, ``core.engine.inference.detect_batch`` and everything built on it run on it
unchanged. That is how ``detection_test.py --runtime``, ``utils.predict --runtime`` and
``utils.benchmark --runtimes`` measure the exported model.

``openvino-int8`` is the OpenVINO graph quantized after training by NNCF (``quantize_openvino``),
calibrated on images of the training set (``calibration_batches``): 8-bit weights and inputs for the
dense convolutions and nothing else. The depthwise ones stay in floating point (OpenVINO's CPU plugin
runs them in float whatever the graph says; quantizing their inputs only adds conversions), so do the
elementwise and pooling operations (a quantizer there splits the convolution + Swish that OpenVINO
fuses), the output predictors and the modules the task names in ``float_modules`` (for the anchor
heads, the neck and the box branch: they set the boxes' precision).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from core.engine.output_paths import atomic_output
from core.engine.runtime import cpu_info
from core.tasks.task import Task

RUNTIMES = ("onnxruntime", "openvino", "openvino-int8")
DEFAULT_CALIBRATION_IMAGES = 128


class _FlatOutputs(nn.Module):
    """The detector with its nested list outputs flattened into a tuple (ONNX needs flat outputs), each
    ``[B, C, H, W]`` output as ``[B, H, W, C]``: the order the decoding reads, so the runtime lays the
    values out once instead of the caller copying each output again."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        flat = tuple(out[0]) + tuple(out[1]) if isinstance(out, tuple) else tuple(out)
        return tuple(o.permute(0, 2, 3, 1) for o in flat)


class _WithPostprocess(nn.Module):
    """The detector followed by its post-processing, for one ``[1, 3, S, S]`` image:
    ``forward(images) -> (boxes [K, 4] xyxy input pixels, scores [K], labels [K] int64)``.
    ``task``: the model's task (``core.tasks.task.build_task``); its ``export_head`` gives the candidates."""

    def __init__(self, model: nn.Module, task: Task, image_size: int):
        super().__init__()
        self.model = model
        self.candidates = task.export_head(image_size)
        self.image_size = image_size
        t = task.test_cfg
        self.min_score, self.nms_thresh, self.max_det = t.min_det_score, t.nms_thresh, t.max_det_per_image

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = self.candidates(self.model(images))
        keep = scores > self.min_score
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        boxes = boxes.clamp(0, self.image_size)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        apart = boxes + (labels.to(boxes.dtype) * (self.image_size + 1))[:, None]  # classes never overlap
        keep = nms(apart, scores, self.nms_thresh)[:self.max_det]
        return boxes[keep], scores[keep], labels[keep]


def output_names(model: nn.Module, task: Task) -> list[str]:
    """ONNX output names of the raw network, as the head family names them (one per level and kind)."""
    return task.output_names(list(model.levels))


def export_onnx(model: nn.Module, task: Task, image_size: int, path: Path, batch: int = 1,
                postprocess: bool = False) -> list[str]:
    """Write ``model`` (eval mode; ``task`` its ``core.tasks.task.build_task``) to ``path`` as ONNX for
    ``[batch, 3, image_size, image_size]`` inputs; returns the output names. With ``postprocess``
    (``batch`` 1) the graph ends in its detections: ``boxes``, ``scores``, ``labels``."""
    model = model.eval()
    if not postprocess:
        names, graph = output_names(model, task), _FlatOutputs(model)
    elif batch != 1:
        raise ValueError(f"--postprocess exports one image at a time; got --batch {batch}")
    else:
        names, graph = ["boxes", "scores", "labels"], _WithPostprocess(model, task, image_size)
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise SystemExit(f"error: ONNX export needs the {package} package: pip install -r requirements-deploy.txt") \
                from None
    example = torch.randn(batch, 3, image_size, image_size)
    with atomic_output(path) as tmp:
        torch.onnx.export(graph.eval(), (example,), str(tmp), input_names=["images"], output_names=names,
                          opset_version=18, dynamo=True, external_data=False)
    return names


def nested_outputs(flat: Sequence[torch.Tensor], num_levels: int) -> Any:
    """The inverse of the export's flattening: ``2 x num_levels`` outputs are a head's
    ``(class outputs, box outputs)`` pair of per-level lists, ``num_levels`` outputs one per-level list."""
    flat = list(flat)
    if len(flat) == 2 * num_levels:
        return flat[:num_levels], flat[num_levels:]
    if len(flat) == num_levels:
        return flat
    raise ValueError(f"{len(flat)} outputs for {num_levels} levels: not a DetLab network export")


class ExportedNetwork:
    """An export of a DetLab network (``export_onnx`` without ``postprocess``) run by ``runtime`` on the CPU
    with ``threads`` threads (None: the runtime's choice): ``"onnxruntime"`` or ``"openvino"`` run the ONNX
    file ``path`` in float32; ``"openvino-int8"`` runs ``quantize_openvino``'s IR ``path``, its float parts
    in bfloat16 where the CPU has AMX (``cpu_has_amx``), else in float32; ``precision`` says which
    (``"f32"``, ``"bf16"``). ``batch``: the export's fixed batch; a call with fewer images pads them, with
    more runs them ``batch`` at a time.
    ``__call__(images [N, 3, S, S]) -> the raw outputs`` as the torch network returns them (float32 CPU
    tensors, channels-last). OpenVINO's outputs share its buffers (no copy of the 18 MB of D0's logits):
    they hold until the next call, so decode them before calling again, as ``detect_batch`` does."""

    def __init__(self, path: Path, runtime: str, names: list[str], num_levels: int, batch: int,
                 threads: int | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
        self.runtime, self.names, self.num_levels, self.batch = runtime, list(names), num_levels, batch
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise SystemExit("error: --runtime onnxruntime needs onnxruntime: "
                                 "pip install -r requirements-deploy.txt") from None
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            # its workers spin between operators (fast) and, by default, on after a run returns: they then take
            # the cores from DetLab's post-processing and from whatever runs next (docs/PERFORMANCE.md)
            options.add_session_config_entry("session.force_spinning_stop", "1")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.precision = "f32"
            self._run = lambda x: session.run(self.names, {"images": x})
        else:
            try:
                import openvino as ov
            except ImportError:
                raise SystemExit("error: --runtime openvino needs openvino: pip install -r requirements-deploy.txt") \
                    from None
            # openvino: f32, or OpenVINO computes in bf16 (2-3 significant digits) on CPUs with bf16 units.
            # openvino-int8: the float parts in bf16 only where the CPU has AMX; AVX-512 bf16 alone is slower
            # than f32 (docs/PERFORMANCE.md)
            float32 = runtime == "openvino" or not cpu_has_amx()
            config = {"INFERENCE_PRECISION_HINT": "f32"} if float32 else {}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            core = ov.Core()
            model = core.read_model(str(path))
            # in bf16 the predictors' biases fuse into their convolutions once they are constants (network
            # 1.05x faster on an AMX Xeon); in f32 the plugin's own way is faster (0.96x): left as read
            compiled = core.compile_model(model if float32 else constant_biases(model), "CPU", config)
            self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            outputs = [compiled.output(name) for name in self.names]
            request = compiled.create_infer_request()

            def run(x: np.ndarray) -> list[np.ndarray]:
                # one inference, all outputs; no copy in or out: the arrays are the request's own buffers
                results = request.infer({"images": x}, share_inputs=True, share_outputs=True)
                return [results[o] for o in outputs]
            self._run = run

    input_memory_format = torch.contiguous_format  # what the runtimes read: detect_batch keeps it, no copy

    def eval(self) -> "ExportedNetwork":
        return self  # always an inference graph; called as a torch module's eval() is

    def to(self, *args: Any, **kwargs: Any) -> "ExportedNetwork":
        return self  # runs on the CPU; called as a torch module's to() is

    def __call__(self, images: torch.Tensor) -> Any:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
            outputs = [np.asarray(a)[:n] for a in self._run(chunk)]
            # OpenVINO's next inference overwrites the arrays it returned: keep a copy of all but the last
            reused = self.runtime != "onnxruntime" and start + self.batch < len(x)
            parts.append([a.copy() for a in outputs] if reused else outputs)
        # [B, H, W, C] arrays as the torch network's [B, C, H, W] outputs in channels_last (no copy)
        flat = [torch.from_numpy(np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k])
                .permute(0, 3, 1, 2) for k in range(len(self.names))]
        return nested_outputs(flat, self.num_levels)


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX tiles for bf16 (the ``amx_bf16`` flag of Linux's ``cpuinfo``; False where the
    file is missing or unreadable)."""
    return "amx_bf16" in cpu_info(cpuinfo).get("flags", "").split()


def export_network(model: nn.Module, task: Task, image_size: int, runtime: str, folder: Path, batch: int = 1,
                   threads: int | None = None,
                   calibration: Sequence[np.ndarray] | None = None) -> ExportedNetwork:
    """``model`` exported to ``folder/model.onnx`` (``openvino-int8``: quantized on ``calibration``, batches
    ``[batch, 3, S, S]`` as ``calibration_batches`` makes them, into ``folder/model_int8.xml``) and loaded in
    ``runtime`` (see :class:`ExportedNetwork`). A compiled network (``torch.compile``) is exported as the
    module it wraps."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    model = getattr(model, "_orig_mod", model)
    path = Path(folder) / "model.onnx"
    names = export_onnx(model, task, image_size, path, batch)
    if runtime == "openvino-int8":
        if not calibration:
            raise ValueError("openvino-int8 needs calibration images (calibration_batches)")
        path = quantize_openvino(path, Path(folder) / "model_int8.xml", calibration, task.float_modules)
    return ExportedNetwork(path, runtime, names, len(model.levels), batch, threads)


def deployed_network(model: nn.Module, task: Task, cfg: Any, runtime: str, batch: int,
                     calibration_images: int = DEFAULT_CALIBRATION_IMAGES) -> ExportedNetwork:
    """The trained ``model`` (its config ``cfg``) exported for ``runtime`` at the config's input size and
    batch ``batch``, in a temporary folder (the runtime holds the graph once loaded); ``openvino-int8`` is
    calibrated on ``calibration_images`` images of the config's training split."""
    calibration = calibration_batches(cfg, calibration_images, batch) if runtime == "openvino-int8" else None
    with tempfile.TemporaryDirectory() as folder:
        return export_network(model, task, cfg.dataset.image_size, runtime, Path(folder), batch, None, calibration)


def calibration_batches(cfg: Any, count: int, batch: int, split: str = "train") -> list[np.ndarray]:
    """``count`` images of the config's ``split`` (spread evenly over it), as the network sees them in
    evaluation (resized, padded, normalised: ``core.data.loader`` without augmentation), in float32
    batches ``[batch, 3, S, S]``; the last batch is filled up with the first images."""
    from core.data.loader import build_loader
    from core.data.spec import load_dataset_spec, read_split

    if count < 1:
        raise ValueError(f"calibration needs at least one image; got {count}")
    spec = load_dataset_spec(cfg.dataset.data)
    if split not in spec.splits:
        raise SystemExit(f"error: {spec.path}: INT8 calibration reads the '{split}' split, which this dataset "
                         f"lacks; add it (splits: {', '.join(spec.splits)})")
    records = read_split(spec, split)
    step = max(1, len(records) // count)
    chosen = records[::step][:count]
    images = [x for x, _ in build_loader(cfg, chosen, train=False, batch_size=batch)]
    flat = torch.cat(images).contiguous().numpy()
    need = math.ceil(len(flat) / batch) * batch
    flat = flat[np.arange(need) % len(flat)]  # the first images again where the last batch is short
    return [flat[i:i + batch] for i in range(0, need, batch)]


def quantize_openvino(onnx_path: Path, xml_path: Path, calibration: Sequence[np.ndarray],
                      float_modules: Sequence[str] = ()) -> Path:
    """The ONNX graph at ``onnx_path`` (written by ``export_onnx``) quantized to INT8 by NNCF's
    post-training quantization on the ``calibration`` batches (each one input of the graph), written as
    OpenVINO IR to ``xml_path`` (and its ``.bin``), which is returned. Only dense convolutions are
    quantized; of those, the one reading the input, the output predictors and the ones in the detector
    modules ``float_modules`` (paths such as ``head.box_net``, as the task names them) stay in floating
    point."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise SystemExit("error: INT8 quantization needs nncf and openvino: pip install -r requirements-deploy.txt") \
            from None
    logging.getLogger("nncf").setLevel(logging.WARNING)  # not a line per convolution it leaves in float
    model = ov.Core().read_model(str(onnx_path))
    # MIXED: asymmetric activations (Swish outputs are not symmetric about 0). Demo set AP against fp32:
    # -10.6 with NNCF's default preset, -4.4 with MIXED and the predictors in float, -0.6 with the box branch too
    per_module = {m: _nodes_under(onnx_path, [f"model.{m}"]) for m in float_modules}
    missing = [m for m, nodes in per_module.items() if not nodes]
    if missing:  # a task naming a module its detector does not have would quantize it without a word
        raise ValueError(f"float_modules {missing}: no node of the exported graph ran in such a module")
    under = {name for nodes in per_module.values() for name in nodes}
    # OpenVINO names the parts it splits off an ONNX node "<name>/<part>" (a biased convolution becomes
    # "<name>/WithoutBiases" and its Add): match them by the ONNX name before the first "/". The
    # convolution that reads the picture stays in float too: quantizing the input costs more than its
    # 27-channel dot products gain (EfficientDet-D0 stem: 2 % of the network's time, 2026-12-02 Xeon)
    names = _predictor_names(model) + _input_convolution_names(model) + [
        op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name().split("/")[0] in under]
    # Only the dense convolutions take 8-bit inputs: a quantizer on any other input (the Multiply of
    # x * sigmoid(x), a weighted Add, a pooling) splits the convolution + Swish that OpenVINO fuses
    others = sorted({op.get_type_name() for op in model.get_ops()} - {"Convolution"})
    keep_float = nncf.IgnoredScope(names=names, types=others, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, ignored_scope=keep_float)
    if not any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()):
        raise SystemExit(f"error: {onnx_path}: INT8 found no convolution to quantize (all of them are output "
                         "predictors or under the task's float_modules); export it in float (--format openvino)")
    save_ir(quantized, xml_path)
    return xml_path


def _nodes_under(onnx_path: Path, scopes: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes that torch's exporter recorded as run inside one of the module ``scopes``
    (``pkg.torch.onnx.name_scopes``; OpenVINO keeps the node names)."""
    if not scopes:
        return []
    import onnx

    wanted = {f"'{scope}'" for scope in scopes}
    names = []
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        recorded = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if any(scope in recorded for scope in wanted):
            names.append(node.name)
    return names


def _input_convolution_names(model: Any) -> list[str]:
    """Names of the convolutions that read an OpenVINO model's inputs: the first one on each path from an
    input (through whatever ops come before it)."""
    names: list[str] = []
    seen: set[str] = set()
    frontier = [t.get_node() for parameter in model.get_parameters() for t in parameter.output(0).get_target_inputs()]
    while frontier:
        node = frontier.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() in ("Convolution", "GroupConvolution"):
            names.append(name)
        elif node.get_type_name() != "Result":
            frontier += [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]
    return names


def _predictor_names(model: Any) -> list[str]:
    """Names of the convolutions that write an OpenVINO model's outputs (through layout-only ops)."""
    names = []
    for output in model.outputs:
        node = output.get_node().input_value(0).get_node()  # the Result's producer
        while node.get_type_name() not in ("Convolution", "GroupConvolution") and node.get_input_size():
            node = node.input_value(0).get_node()
        names.append(node.get_friendly_name())
    return names


def save_openvino(onnx_path: Path, xml_path: Path) -> None:
    """The ONNX graph at ``onnx_path`` as OpenVINO IR (``xml_path`` and its ``.bin``)."""
    try:
        import openvino as ov
    except ImportError:
        raise SystemExit("error: --format openvino needs openvino: pip install -r requirements-deploy.txt") from None
    save_ir(ov.convert_model(str(onnx_path)), xml_path)


def constant_biases(model: Any) -> Any:
    """An OpenVINO model whose reshaped constants (the convolution biases the ONNX reader reshapes to
    ``[1, C, 1, 1]`` by a shape computed from ``ShapeOf`` nodes) are plain constants, in place; returned. Left
    so, the CPU plugin computing in bf16 does not fuse the output predictors' biases into their convolutions
    and adds them in a separate f32 pass over all 4.4 M class logits of an EfficientDet-D0 image
    (docs/PERFORMANCE.md). Only those reshapes are computed: OpenVINO's general ``ConstantFolding`` would also
    turn the INT8 weights back into floats."""
    import openvino as ov

    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape" or not op.get_output_partial_shape(0).is_static:
            continue
        source = op.input_value(0).get_node()
        if source.get_type_name() != "Constant" or source.get_output_element_type(0) != ov.Type.f32:
            continue
        values = source.get_data().reshape(list(op.get_output_shape(0)))
        op.output(0).replace(ov.opset13.constant(values).output(0))
    return model


def save_ir(model: Any, xml_path: Path) -> None:
    """An OpenVINO model as IR, ``xml_path`` and the ``.bin`` beside it, each written whole under a temporary
    name and renamed (the ``.bin`` first, then the ``.xml`` a reader opens): never half a model under its name."""
    import openvino as ov

    xml_path = Path(os.path.realpath(xml_path))  # a link's target, and its .bin beside it
    with atomic_output(xml_path, suffix=".xml") as tmp_xml:  # save_model takes only a name ending in .xml
        tmp_bin = tmp_xml.with_suffix(".bin")  # where save_model puts the weights
        try:
            ov.save_model(model, str(tmp_xml))
            os.replace(tmp_bin, xml_path.with_suffix(".bin"))
        finally:
            tmp_bin.unlink(missing_ok=True)
