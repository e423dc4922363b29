"""Export a trained detector's network to ONNX.

    python -m utils.export --config config/effdet_b0.py --weights runs/effdet_b0/epoch_0300.pt \\
        --format onnx [--out model.onnx] [--batch 1]

The ONNX graph is the network alone by default: input ``images`` float32 ``[B, 3, S, S]``
(normalised as the config says), outputs ``class_logits_P3..`` and ``box_deltas_P3..`` for
EfficientDet/RetinaNet heads (``[B, A*C, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``) or ``yolo_P3..``
for YOLO heads; anchors, decoding and NMS then stay in DetLab (``core.tasks.task``).

``--postprocess`` (batch 1) appends the post-processing to the
graph: outputs ``boxes`` ``[K, 4]`` xyxy in input pixels, ``scores`` ``[K]`` and ``labels``
``[K]`` (int64 class indices), at most ``test.max_det_per_image`` detections, highest score
first, with the config's ``test`` settings. It is the plain form of ``core.ops.postprocess`` and
``core.tasks.yolo.select_detections``: one ``TopK`` over all scores and ONNX's ``NonMaxSuppression``
per class, where DetLab's own runs a faster CPU search; both keep the same detections (checked
in ``tests/test_export.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from torchvision.ops import nms

from core.engine.cli import add_allow_pickle, run_main
from core.config.loading import load_config
from core.engine.tester import load_trained
from core.tasks.task import Task


class _FlatOutputs(nn.Module):
    """The detector with its nested list outputs flattened into a tuple (ONNX needs flat outputs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out, tuple):  # (class_logits per level, box_deltas per level)
            return tuple(out[0]) + tuple(out[1])
        return tuple(out)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(graph.eval(), (example,), str(path), input_names=["images"], output_names=names,
                      opset_version=18, dynamo=True, external_data=False)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True, help="a DetLab checkpoint")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: next to the weights, .onnx)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--postprocess", action="store_true",
                        help="end the graph in detections (boxes, scores, labels); batch 1")
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value")
    add_allow_pickle(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set + (["pretrain.allow_pickle=True"] if args.allow_pickle else []))
    trained = load_trained(cfg, Path(args.weights), torch.device("cpu"))
    out = args.out or Path(args.weights).with_suffix(".onnx")
    names = export_onnx(trained.model, trained.task, cfg.dataset.image_size, out, args.batch, args.postprocess)
    print(f"wrote {out}: input images [{args.batch}, 3, {cfg.dataset.image_size}, {cfg.dataset.image_size}], "
          f"outputs {', '.join(names)}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
