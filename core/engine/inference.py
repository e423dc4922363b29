"""Running a detector over a loader and scoring it with pycocotools."""
from __future__ import annotations

import copy
import sys
from typing import Any, Iterable, Sequence

import torch
import torch._inductor.config
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.data.loader import start_workers
from core.engine.runtime import autocast
from core.evaluation.coco_eval import EvalResult, evaluate, to_coco_results
from core.inference.ensemble import flip_inputs, unflip_boxes
from core.ops.postprocess import Detections, detections_to_cpu
from core.tasks.task import Task
from core.engine.rewrites.fold_bn import fold_batchnorm


def inference_model(model: nn.Module, device: torch.device, compile_model: bool = False) -> nn.Module:
    """``model`` (a ``symbol.detector.Detector``) as DetLab runs it for inference: on ``device``, in
    eval mode, channels_last, as a new module with every BatchNorm that follows a convolution alone
    folded into it (``core.engine.rewrites.fold_bn``; ``model`` is only moved to ``device`` and set to
    eval, its weights stay), and when ``compile_model`` (``General.compile``) compiled by
    :func:`compile_for_inference`. Outputs equal the plain eval-mode model's to float rounding: the
    folding is checked on one small random input when built."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    side = max(128, 2 ** max(model.levels))  # the coarsest level still has a pixel
    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))  # leaves the global RNG be
    example = example.to(device, memory_format=torch.channels_last)
    folded, _ = fold_batchnorm(copy.deepcopy(model), example)
    return compile_for_inference(folded, device) if compile_model else folded


def compile_for_inference(network: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile`` of an eval-mode ``network`` for no-grad calls, its weights frozen into the
    compiled code: later changes to its parameters are not seen (compile again instead).

    Inductor freezing makes the weights constants: prepacked oneDNN convolutions with fused
    activations on CPUs, constant folding everywhere. It is a global inductor setting (the per-call
    ``options=`` route does not turn it on) that acts on no-grad graphs only, so a training compile
    in the same process is unaffected. On a CPU the generated code is called from a C++ wrapper
    (``cpp_wrapper``), which saves the Python wrapper's cost per convolution call. Shapes are
    static: each new input size compiles anew.
    """
    torch._inductor.config.freezing = True
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    return torch.compile(network, dynamic=False, options=options)


@torch.no_grad()
def detect_batch(model: nn.Module, task: Task, images: torch.Tensor, targets: Sequence[dict[str, Any]],
                 device: torch.device, precision: str = "fp32", flip: bool = False) -> list[Detections]:
    """Detections of one padded batch ``images [B, 3, S, S]`` (as ``core.data.transforms`` makes it),
    boxes xyxy in *original* image pixels, on the CPU: the network, the task's decoding, then each
    picture's boxes scaled back by its target's ``scale`` and clipped to its ``orig_size``. ``flip``:
    run on the mirrored pictures and mirror the boxes back (test-time augmentation). Every inference
    path (training-time evaluation, ``detection_test.py``, the predictor, the benchmark) runs this."""
    widths = [max(1, round(t["orig_size"][1] * t["scale"])) for t in targets] if flip else []
    x = flip_inputs(images, widths) if flip else images
    # channels_last for torch networks; an exported one (core.inference.exported) names the layout it reads
    x = x.to(device, non_blocking=True, memory_format=getattr(model, "input_memory_format", torch.channels_last))
    with autocast(device, precision):
        outputs = model(x)
    out = []
    for k, (det, t) in enumerate(zip(detections_to_cpu(task.detect(outputs, x)), targets)):
        if flip:
            det = Detections(unflip_boxes(det.boxes, float(widths[k])), det.scores, det.labels)
        out.append(det.rescale(t["scale"], t["orig_size"]))
    return out


@torch.no_grad()
def predict_batches(model: nn.Module, task: Task, batches: Iterable[tuple[torch.Tensor, list[dict]]],
                    device: torch.device, precision: str = "fp32",
                    progress: bool = False) -> dict[int, Detections]:
    """Detections per ``image_id``, boxes xyxy in *original* image pixels.

    ``batches`` yields ``(images [B, 3, S, S], targets)`` as ``core.data.loader`` makes them; only the
    targets' ``image_id``, ``scale`` and ``orig_size`` are used.
    """
    model.eval()
    out: dict[int, Detections] = {}
    total = len(batches) if isinstance(batches, DataLoader) else None
    if isinstance(batches, DataLoader):
        batches = start_workers(batches)  # a stop signal must not kill its workers as they start
    bar = tqdm(batches, desc="eval", total=total, disable=not (progress and sys.stderr.isatty()), leave=False,
               file=sys.stderr)
    for images, targets in bar:
        for det, t in zip(detect_batch(model, task, images, targets, device, precision), targets):
            out[t["image_id"]] = det
    return out


def coco_results(detections: dict[int, Detections], category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO results json entries (bbox xywh original pixels) for every image's detections."""
    results: list[dict[str, Any]] = []
    for image_id, det in detections.items():
        results += to_coco_results(image_id, det.boxes, det.scores, det.labels, category_ids)
    return results


def evaluate_detections(detections: dict[int, Detections], coco_gt: Any, class_names: list[str],
                        category_ids: list[int]) -> tuple[EvalResult, list[dict[str, Any]]]:
    """pycocotools metrics of ``detections`` against ``coco_gt``, scored on the images ``detections`` has
    an entry for (the ones evaluated: an image the loader skipped as unreadable is no miss); also
    returns the results json list."""
    results = coco_results(detections, category_ids)
    return evaluate(coco_gt, results, class_names, category_ids, image_ids=list(detections)), results
