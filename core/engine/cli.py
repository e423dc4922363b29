"""Command-line plumbing shared by the scripts: config loading with overrides, one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from core.config.loading import Config, ConfigError, load_config


def config_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--set Section.field=value`` (repeatable), ``--data FILE.yaml`` and
    ``--allow-pickle`` (= ``pretrain.allow_pickle = True``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment module, e.g. config/effdet_b0.py")
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value",
                        help="override a config field (repeatable)")
    parser.add_argument("--data", help="dataset YAML replacing dataset.data")
    add_allow_pickle(parser)
    return parser


def add_allow_pickle(parser: argparse.ArgumentParser) -> None:
    """``--allow-pickle``: the one opt-in to reading weights files that need full unpickling."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read weights files that need full unpickling (numpy objects, whole pickled modules); "
                             "unpickling can run code, so only for files you trust (= pretrain.allow_pickle = True)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runtime`` (PyTorch, or the network exported and run by a deployment runtime on the CPU, with
    DetLab's post-processing) and ``--calib-images`` (the INT8 runtime's calibration)."""
    from core.inference.exported import RUNTIMES

    parser.add_argument("--runtime", choices=["torch", *RUNTIMES], default="torch",
                        help="run the network in PyTorch (default), or exported to ONNX and run by ONNX Runtime or "
                        "OpenVINO on the CPU, or quantized to INT8 by NNCF and run by OpenVINO (openvino-int8)")
    add_calibration_argument(parser)


def add_calibration_argument(parser: argparse.ArgumentParser) -> None:
    """``--calib-images N``: how many training images an INT8 quantization is calibrated on."""
    from core.inference.exported import DEFAULT_CALIBRATION_IMAGES

    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help="INT8 (openvino-int8, --int8): training images the quantization is calibrated on "
                        f"(default {DEFAULT_CALIBRATION_IMAGES})")


def load_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``args.config`` with ``--set`` and ``--data`` applied, its values checked."""
    from core.config.checks import check_values

    overrides = list(args.set)
    if args.data:
        overrides.append(f"dataset.data={args.data}")
    if getattr(args, "allow_pickle", False):
        overrides.append("pretrain.allow_pickle=True")
    cfg = load_config(args.config, overrides)
    check_values(cfg)
    return cfg


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main``; user errors (bad config, dataset, checkpoint, run folder, an output that exists)
    exit 2 with one clear line."""
    from core.engine.checkpoint import CheckpointError
    from core.data.records import DatasetError
    from core.engine.output_paths import OutputPathError
    from core.engine.run_folder import RunFolderError
    from core.engine.signals import TrainingInterrupted

    try:
        sys.exit(main() or 0)
    except (ConfigError, DatasetError, CheckpointError, RunFolderError, OutputPathError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
