"""Checkpoint surgery and conversion: strip the predictors, keep some classes, rename other layouts into DetLab's.

    python -m utils.param_surgery IN OUT [--strip-head] [--keep-classes car,bus,...]
        [--from auto|detlab|timm|torchvision|lukemelas|effdet|mxnet] [--format torch|mxnet]
        [--config C] [--arch TIMM_NAME] [--verbose] [--overwrite]

IN is a weights file (a DetLab checkpoint, any ``torch.save`` state dict, ``.safetensors``, an MXNet
``.params`` file) or ``pkg:MODULE/PATH`` (a file inside an installed package). What it does:

* ``--from`` (default ``auto``: told from the names) converts into DetLab's layout: ``timm`` /
  ``torchvision`` / ``lukemelas`` backbones -> ``backbone.body.*`` (torchvision and lukemelas need the
  target structure: ``--config`` or ``--arch``; lukemelas files named ``efficientnet-lite0-*.pth`` /
  ``efficientnet-b3-*.pth`` default to timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_b3``);
  ``effdet`` EfficientDet -> the detector of ``--config`` (biases folded, box channels permuted);
  ``mxnet``: an MXNet ``.params`` file, ``arg:`` / ``aux:`` prefixes and ``_weight`` / ``_gamma`` /
  ``_moving_mean`` suffixes turned into PyTorch names.
* ``--strip-head`` removes the class and box predictors (effdet: ``head.class_net.predict.*``,
  ``head.box_net.predict.*``; yolo: ``head.layers.N.predict.*``); fine-tuning then starts from the rest.
* ``--keep-classes a,b`` keeps, for every anchor, only the class-logit channels of the named classes
  (a DetLab checkpoint knows its class names) and updates ``class_names`` / ``category_ids``: the
  result is a detector of those classes for ``detection_test.py --weights OUT``.
* ``--format mxnet`` writes what ``mx.nd.save`` would (``arg:`` / ``aux:`` names); default ``torch``: a
  DetLab checkpoint stays one (model and EMA weights, class names, config; the optimizer state
  is dropped), anything else is written as a plain state dict.

Everything kept, removed and renamed is printed. OUT is never IN (nor a path resolving to it), and
an existing OUT is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine.checkpoint import CheckpointError, save_checkpoint
from core.engine.cli import add_allow_pickle
from core.engine.output_paths import atomic_output
from core.weights.common import Conversion, ConversionError, removed_lines
from core.weights.effdet_ckpt import effdet_to_detlab
from core.weights.layout import LAYOUTS, detect_layout
from core.weights.mxnet_names import torch_to_mxnet
from core.weights.mxnet_ndarray import write_ndarray_file
from core.weights.surgery import head_type, keep_classes, strip_head
from core.weights.weights_file import WeightsFile, read_weights
from core.weights.pretrain import backbone_conversion

SOURCES = ("auto", "mxnet") + LAYOUTS
DETLAB_DROPPED = ("optimizer", "scaler", "rng")  # state that no longer fits the surgically changed weights


def _load_cfg(path: str | None) -> Any:
    if not path:
        return None
    from core.config.loading import load_config

    return load_config(path)


def guess_arch(path: Path) -> str | None:
    """timm name for a lukemelas file named like ``efficientnet-lite0-*.pth`` or ``efficientnet-b3-*.pth``."""
    m = re.search(r"efficientnet-(lite\d|b\d)", path.name)
    return f"tf_efficientnet_{m.group(1)}" if m else None


def backbone_target(args: argparse.Namespace, wf: WeightsFile) -> nn.Module | None:
    """The timm network a backbone checkpoint is renamed into: DetLab's ``backbone.body`` of
    ``--config``, or ``timm.create_model(--arch, features_only=True)``; ``None`` when neither is known."""
    cfg = _load_cfg(args.config)
    if cfg is not None:
        from symbol.builder import build_backbone

        body = getattr(build_backbone(cfg.backbone), "body", None)
        if body is None:
            raise ConversionError(f"--config {args.config}: backbone.type '{cfg.backbone.type}' is not a timm backbone")
        return body
    arch = args.arch or (guess_arch(wf.path) if args.source in ("auto", "lukemelas") else None)
    if not arch:
        return None
    import timm

    if not timm.is_model(arch):
        raise ConversionError(f"--arch '{arch}' is not a timm model name (e.g. tf_efficientnet_lite0)")
    print(f"target structure: timm '{arch}' (features_only)")
    return timm.create_model(arch, features_only=True, pretrained=False)


def to_detlab(args: argparse.Namespace, wf: WeightsFile, tensors: dict[str, torch.Tensor], layout: str) -> Conversion:
    """``tensors`` (in ``layout``) renamed into DetLab's names."""
    if layout == "detlab":
        return Conversion.identity(tensors)
    if layout == "effdet":
        cfg = _load_cfg(args.config)
        if cfg is None:
            raise ConversionError("--from effdet needs --config (the DetLab detector to convert into, "
                                  "e.g. config/effdet_b0.py for tf_efficientdet_d0)")
        from symbol.builder import build_detector

        anchors = cfg.anchors.num_scales * len(cfg.anchors.aspect_ratios)
        predict = next((v for k, v in tensors.items() if k.endswith("class_net.predict.conv_pw.weight")), None)
        classes = predict.shape[0] // anchors if predict is not None else 1
        return effdet_to_detlab(tensors, build_detector(cfg, classes))
    body = backbone_target(args, wf)
    if body is None and layout in ("lukemelas", "torchvision"):
        raise ConversionError(f"--from {layout} needs the target structure: --config C (its backbone) or "
                              "--arch TIMM_NAME (e.g. tf_efficientnet_lite0)")
    if body is None:
        return Conversion.identity(tensors).with_prefix("backbone.body.")
    conversion = backbone_conversion(tensors, body, layout)
    names = set(body.state_dict())
    extra = [k for k in conversion.tensors if k not in names]
    for k in extra:
        del conversion.tensors[k]
    conversion.removed += [(k, f"not in DetLab's features-only backbone {type(body).__name__}") for k in extra]
    return conversion.with_prefix("backbone.body.")


def operate(args: argparse.Namespace, tensors: dict[str, torch.Tensor], class_names: list[str] | None,
            config: dict | None) -> Conversion:
    """``--strip-head`` / ``--keep-classes`` on a DetLab-layout state dict."""
    result = Conversion.identity(tensors)
    if not (args.strip_head or args.keep_classes):
        return result
    kind = head_type(tensors, config)
    if args.keep_classes:
        if not class_names:
            raise ConversionError("--keep-classes needs class names; only DetLab checkpoints (written by "
                                  "detection_train.py) carry them")
        kept = keep_classes(tensors, class_names, args.keep_classes, kind)
        result = Conversion(kept.tensors, [], [], kept.notes)
    if args.strip_head:
        stripped = strip_head(result.tensors, kind)
        result = Conversion(stripped.tensors, [], stripped.removed, result.notes)
    return result


def report(title: str, conversion: Conversion, source_names: list[str], verbose: bool) -> None:
    """Print what a step renamed, removed and changed."""
    print(f"{title}: kept {len(conversion.tensors)} tensors")
    if conversion.renamed:
        shown = conversion.renamed if verbose else conversion.renamed[:5]
        print(f"  renamed {len(conversion.renamed)}:" + ("" if verbose else " (first 5; --verbose lists all)"))
        for old, new in shown:
            print(f"    {old} -> {new}")
    if conversion.removed:
        print(f"  removed {len(conversion.removed)}:")
        for line in removed_lines(conversion.removed, source_names, 10**9 if verbose else 10):
            print(f"    {line}")
    for note in conversion.notes:
        print(f"  {note}")


def _save_torch(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("input", metavar="IN", help="weights file or pkg:MODULE/PATH")
    parser.add_argument("output", metavar="OUT", help="file to write")
    parser.add_argument("--strip-head", action="store_true", help="remove the class and box predictors")
    parser.add_argument("--keep-classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                        help="comma-separated class names to keep (DetLab checkpoints)")
    parser.add_argument("--from", dest="source", choices=SOURCES, default="auto", help="layout of IN (default auto)")
    parser.add_argument("--format", choices=("torch", "mxnet"), default="torch", help="format of OUT")
    parser.add_argument("--config", help="DetLab config giving the target structure (effdet, torchvision, lukemelas)")
    parser.add_argument("--arch", help="timm model name giving the target backbone structure")
    parser.add_argument("--verbose", action="store_true", help="list every renamed and removed tensor")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never IN)")
    add_allow_pickle(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Read, convert, operate, write, printing each step."""
    wf = read_weights(args.input, allow_pickle=args.allow_pickle)
    if args.source == "mxnet" and wf.file_format != "mxnet":
        raise ConversionError(f"--from mxnet: '{wf.path}' is not an MXNet .params file (no NDArray list magic)")
    print(f"read {wf.path}: {wf.describe}, {len(wf.tensors)} tensors")
    for note in wf.notes:
        print(f"  {note}")
    if wf.renamed:
        report("  MXNet names", Conversion(wf.tensors, wf.renamed), list(wf.tensors), args.verbose)
    ckpt = wf.checkpoint
    # a DetLab checkpoint carries model and EMA weights: both get the same treatment
    parts = {"model": ckpt["model"], "ema": ckpt["ema"]} if ckpt and ckpt.get("ema") is not None else \
        {"model": ckpt["model"]} if ckpt else {"weights": wf.tensors}
    layout = detect_layout(wf.tensors) if args.source in ("auto", "mxnet") else args.source
    print(f"layout: {layout}" + (" (detected)" if args.source in ("auto", "mxnet") else ""))
    class_names = wf.class_names
    results: dict[str, dict[str, torch.Tensor]] = {}
    for part, tensors in parts.items():
        converted = to_detlab(args, wf, dict(tensors), layout)
        if part == next(iter(parts)) and layout != "detlab":
            report(f"converted {layout} -> DetLab", converted, list(tensors), args.verbose)
        operated = operate(args, converted.tensors, class_names, ckpt.get("config") if ckpt else None)
        if part == next(iter(parts)) and (args.strip_head or args.keep_classes):
            report("surgery" + (f" (applied to {' and '.join(parts)})" if len(parts) > 1 else ""), operated,
                   list(converted.tensors), args.verbose)
        results[part] = operated.tensors
    write(args, wf, results, class_names)


def write(args: argparse.Namespace, wf: WeightsFile, results: dict[str, dict[str, torch.Tensor]],
          class_names: list[str] | None) -> None:
    """Write ``results`` to ``args.output`` in ``args.format``."""
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = wf.checkpoint
    if args.format == "mxnet":
        part = "ema" if "ema" in results else next(iter(results))
        arrays, removed = torch_to_mxnet(results[part])
        write_ndarray_file(out, arrays)
        print(f"wrote {out}: MXNet NDArray file, {len(arrays)} arrays from the {part} weights "
              f"({sum(a.startswith('aux:') for a in arrays)} aux:, {sum(a.startswith('arg:') for a in arrays)} arg:)")
        if removed:
            print(f"  left out {len(removed)} BatchNorm num_batches_tracked counters (MXNet has none)")
        if ckpt:
            print("  note: an MXNet file holds no class names or config")
        return
    if ckpt:
        new = {k: v for k, v in ckpt.items() if k not in DETLAB_DROPPED and k not in results}
        new.update(results)
        if args.keep_classes:
            ids = list(ckpt.get("category_ids") or [])
            index = [class_names.index(c) for c in args.keep_classes]
            new["class_names"] = list(args.keep_classes)
            new["category_ids"] = [ids[i] for i in index] if ids else [i + 1 for i in index]
        new["surgery"] = {"source": str(wf.path), "strip_head": bool(args.strip_head),
                          "keep_classes": args.keep_classes, "from": args.source}
        save_checkpoint(new, out)
        print(f"wrote {out}: DetLab checkpoint ({', '.join(results)} weights, classes {new.get('class_names')}); "
              f"left out {', '.join(k for k in DETLAB_DROPPED if k in ckpt)} (no longer valid after surgery)")
        return
    _save_torch(results["weights"], out)
    print(f"wrote {out}: state dict, {len(results['weights'])} tensors")


def check_output(args: argparse.Namespace) -> None:
    """Refuse an OUT that is (or resolves to) IN, and an existing OUT unless ``--overwrite``."""
    from core.weights.weights_file import WeightsFileError, resolve_weights_path
    from core.engine.output_paths import refuse_existing, refuse_inputs

    try:
        source = resolve_weights_path(args.input)
    except WeightsFileError:
        return  # a missing IN is reported by run()
    refuse_inputs([args.output], [source], "write OUT to another file")
    refuse_existing([args.output], args.overwrite, "choose another OUT")


def main(argv: list[str] | None = None) -> int:
    """Run the tool; 0 on success, 2 with a one-line ``error:`` on stderr for a bad file or option."""
    args = parse_args(argv)
    try:
        check_output(args)
        run(args)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
