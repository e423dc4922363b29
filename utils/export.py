"""Export a trained detector's network to ONNX or OpenVINO IR.

    python -m utils.export --config config/effdet_b0.py --weights runs/effdet_b0/epoch_0300.pt \\
        --format onnx|openvino [--int8 [--calib-images 128]] [--out model.onnx|model.xml] [--batch 1]

The ONNX graph is the network alone by default: input ``images`` float32 ``[B, 3, S, S]``
(normalised as the config says), outputs ``class_logits_P3..`` and ``box_deltas_P3..`` for
EfficientDet/RetinaNet heads (``[B, H_l, W_l, A*C]`` and ``[B, H_l, W_l, A*4]``, channels last: the
torch network's ``[B, C, H, W]`` outputs permuted) or ``yolo_P3..`` for YOLO heads; anchors, decoding
and NMS then stay in DetLab (``core.tasks.task``).

``--postprocess`` (batch 1) appends the post-processing to the
graph: outputs ``boxes`` ``[K, 4]`` xyxy in input pixels, ``scores`` ``[K]`` and ``labels``
``[K]`` (int64 class indices), at most ``test.max_det_per_image`` detections, highest score
first, with the config's ``test`` settings. It is the plain form of ``core.ops.postprocess`` and
``core.tasks.yolo.select_detections``: one ``TopK`` over all scores and ONNX's ``NonMaxSuppression``
per class, where DetLab's own runs a faster CPU search; both keep the same detections (checked
in ``tests/test_export.py``).

``--format openvino`` writes the same graph as OpenVINO IR (``model.xml`` + ``model.bin``), converted
from the ONNX file written beside it. ``--int8`` (with ``--format openvino``) quantizes that IR to
INT8 after training with NNCF, calibrated on ``--calib-images`` images of the config's training split
(``core.inference.exported.quantize_openvino``). To run an export with DetLab's post-processing and score it,
``detection_test.py --runtime onnxruntime|openvino|openvino-int8`` (``core.inference.exported``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from core.config.loading import load_config
from core.engine.cli import add_allow_pickle, add_calibration_argument, run_main
from core.engine.output_paths import refuse_existing
from core.engine.tester import load_trained
from core.inference.exported import calibration_batches, export_onnx, quantize_openvino, save_openvino


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True, help="a DetLab checkpoint")
    parser.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: next to the weights, .onnx or .xml)")
    parser.add_argument("--int8", action="store_true", help="--format openvino: quantize to INT8 (NNCF, post-training)")
    add_calibration_argument(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--postprocess", action="store_true",
                        help="end the graph in detections (boxes, scores, labels); batch 1")
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    add_allow_pickle(parser)
    args = parser.parse_args(argv)
    if args.int8 and (args.format != "openvino" or args.postprocess):
        parser.error("--int8 quantizes the OpenVINO IR of the network alone: use it with --format openvino, "
                     "without --postprocess")
    out = args.out or Path(args.weights).with_suffix(".xml" if args.format == "openvino" else ".onnx")
    onnx_path = out.with_suffix(".onnx")
    written = [onnx_path] + ([out, out.with_suffix(".bin")] if args.format == "openvino" else [])
    refuse_existing(written, args.overwrite, "choose another --out")  # before any work, nothing replaced
    cfg = load_config(args.config, args.set + (["pretrain.allow_pickle=True"] if args.allow_pickle else []))
    trained = load_trained(cfg, Path(args.weights), torch.device("cpu"))
    names = export_onnx(trained.model, trained.task, cfg.dataset.image_size, onnx_path, args.batch, args.postprocess)
    if args.int8:
        quantize_openvino(onnx_path, out, calibration_batches(cfg, args.calib_images, args.batch),
                          trained.task.float_modules)
    elif args.format == "openvino":  # OpenVINO reads the ONNX graph; its IR is model.xml + model.bin beside it
        save_openvino(onnx_path, out)
    kind = f"INT8 (calibrated on {args.calib_images} training images) " if args.int8 else ""
    print(f"wrote {kind}{out}: input images [{args.batch}, 3, {cfg.dataset.image_size}, {cfg.dataset.image_size}], "
          f"outputs {', '.join(names)}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
