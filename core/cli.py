"""Command-line plumbing shared by the scripts: config loading with overrides, one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from core.config import Config, ConfigError, load_config


def config_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--config``, ``--set Section.field=value`` (repeatable) and ``--data FILE.yaml``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment module, e.g. config/effdet_b0.py")
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value",
                        help="override a config field (repeatable)")
    parser.add_argument("--data", help="dataset YAML replacing dataset.data")
    return parser


def load_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``args.config`` with ``--set`` and ``--data`` applied, its values checked."""
    from core.config_checks import check_values

    overrides = list(args.set)
    if args.data:
        overrides.append(f"dataset.data={args.data}")
    cfg = load_config(args.config, overrides)
    check_values(cfg)
    return cfg


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main``; user errors (bad config, dataset, checkpoint) exit 2 with one clear line."""
    from core.checkpoint import CheckpointError
    from core.data.records import DatasetError
    from core.engine.signals import TrainingInterrupted

    try:
        sys.exit(main() or 0)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
