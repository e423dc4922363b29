"""Train a detector from a config module.

    python detection_train.py --config config/effdet_b0.py [--set Section.field=value ...] [--resume | --overwrite]
    torchrun --nproc_per_node=N detection_train.py --config ...

A run folder that already holds a run is never written over: continue it with --resume, train into
another one (--set General.name=NAME), or start afresh there with --overwrite.
"""
from __future__ import annotations

from core.engine.cli import config_parser, load_from_args, run_main


def main() -> int:
    parser = config_parser(__doc__)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint of this run")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in a run folder that holds a run: first removes the files a run writes "
                            "there (checkpoints, log.jsonl, config.json/.py, curves.png, tensorboard/, results_*.json)")
    args = parser.parse_args()
    cfg = load_from_args(args)
    from core.engine.trainer import Trainer  # heavy imports after the config is known to be valid

    Trainer(cfg, resume=args.resume, overwrite=args.overwrite).fit()
    return 0


if __name__ == "__main__":
    run_main(main)
