"""Export a trained detector's network to ONNX.

    python -m utils.export --config config/effdet_b0.py --weights runs/effdet_b0/epoch_0300.pt \\
        --format onnx [--out model.onnx] [--batch 1]

The ONNX graph is the network alone: input ``images`` float32 ``[B, 3, S, S]`` (normalised as the
config says), outputs ``class_logits_P3..`` and ``box_deltas_P3..`` for EfficientDet/RetinaNet
heads (``[B, A*C, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``) or ``yolo_P3..`` for YOLO heads.
Anchors, decoding and NMS stay in DetLab (``core.task``), where they run on any device.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from core.cli import run_main
from core.config import load_config
from core.engine.tester import load_trained


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


def output_names(model: nn.Module, head_type: str) -> list[str]:
    """ONNX output names, one per level and output kind."""
    levels = [f"P{level}" for level in model.levels]
    if head_type == "yolo":
        return [f"yolo_{p}" for p in levels]
    return [f"class_logits_{p}" for p in levels] + [f"box_deltas_{p}" for p in levels]


def export_onnx(model: nn.Module, head_type: str, image_size: int, path: Path, batch: int = 1) -> list[str]:
    """Write ``model`` (eval mode) to ``path`` as ONNX for ``[batch, 3, image_size, image_size]``
    inputs; returns the output names."""
    model = model.eval()
    names = output_names(model, head_type)
    example = torch.randn(batch, 3, image_size, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(_FlatOutputs(model).eval(), (example,), str(path), input_names=["images"], output_names=names,
                      opset_version=18, dynamo=True, external_data=False)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True, help="a DetLab checkpoint")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: next to the weights, .onnx)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    trained = load_trained(cfg, Path(args.weights), torch.device("cpu"))
    out = args.out or Path(args.weights).with_suffix(".onnx")
    names = export_onnx(trained.model, cfg.head.type, cfg.dataset.image_size, out, args.batch)
    print(f"wrote {out}: input images [{args.batch}, 3, {cfg.dataset.image_size}, {cfg.dataset.image_size}], "
          f"outputs {', '.join(names)}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
