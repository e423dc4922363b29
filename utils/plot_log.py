"""Plot training curves of one or more runs.

    python -m utils.plot_log RUN_DIR [RUN_DIR ...] [--out FILE.png] [--text] [--overwrite]

Writes a three-panel PNG (loss, lr, AP/AP50) to --out, by default RUN_DIR/curves.png for
one run (the file the run itself draws, redrawn from its log) and ./runs_compare.png for several.
Any other PNG that exists is replaced only with --overwrite. --text prints darknet-style loss bars
for each run instead (a PNG is then written only when --out is given).
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--overwrite", action="store_true", help="replace --out (or ./runs_compare.png) if it exists")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a missing log or an empty one)."""
    args = parse_args(argv)
    for d in args.run_dirs:
        log = Path(d) / "log.jsonl"
        if not log.is_file():
            print(f"error: no training log at {log}", file=sys.stderr)
            return 2

    from core.engine.output_paths import OutputPathError, refuse_existing, refuse_inputs
    from core.evaluation.plot import plot_runs, text_loss_bars

    own = Path(args.run_dirs[0]) / "curves.png" if len(args.run_dirs) == 1 else None  # the run's own drawing
    out = Path(args.out) if args.out is not None else own or Path("runs_compare.png")
    if args.out is not None or not args.text:  # a PNG is written: refused before anything is printed
        try:
            refuse_inputs([out], [Path(d) / "log.jsonl" for d in args.run_dirs], "choose another --out")
            if own is None or os.path.realpath(out) != os.path.realpath(own):
                refuse_existing([out], args.overwrite, "choose another --out")
        except OutputPathError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
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
    print(plot_runs(args.run_dirs, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
