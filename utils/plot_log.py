"""Plot training curves of one or more runs.

    python -m utils.plot_log RUN_DIR [RUN_DIR ...] [--out FILE.png] [--text]

Writes a three-panel PNG (loss, lr, AP/AP50) to --out, by default RUN_DIR/curves.png for
one run and ./runs_compare.png for several. --text prints darknet-style loss bars for each run
instead (a PNG is then written only when --out is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m utils.plot_log", description=__doc__.split("\n")[1])
    ap.add_argument("run_dirs", nargs="+", help="run directories containing log.jsonl")
    ap.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/curves.png for "
                    "one run, ./runs_compare.png for several)")
    ap.add_argument("--text", action="store_true",
                    help="print text loss bars per run; write a PNG only if --out is given")
    ap.add_argument("--rows", type=int, default=20, help="table rows for --text")
    ap.add_argument("--width", type=int, default=80, help="line width for --text")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a missing log or an empty one)."""
    args = parse_args(argv)
    for d in args.run_dirs:
        log = Path(d) / "log.jsonl"
        if not log.is_file():
            print(f"error: no training log at {log}", file=sys.stderr)
            return 2

    from core.evaluation.plot import plot_runs, text_loss_bars

    if args.text:
        for d in args.run_dirs:
            if len(args.run_dirs) > 1:
                print(f"== {d}")
            try:
                print(text_loss_bars(d, rows=args.rows, width=args.width))
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        if args.out is None:
            return 0

    if args.out is not None:
        out = Path(args.out)
    elif len(args.run_dirs) == 1:
        out = Path(args.run_dirs[0]) / "curves.png"
    else:
        out = Path("runs_compare.png")
    print(plot_runs(args.run_dirs, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
