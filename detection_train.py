"""Train a detector from a config module.

    python detection_train.py --config config/effdet_b0.py [--set Section.field=value ...] [--resume]
    torchrun --nproc_per_node=N detection_train.py --config ...
"""
from __future__ import annotations

from core.cli import config_parser, load_from_args, run_main


def main() -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint of this run")
    args = parser.parse_args()
    cfg = load_from_args(args)
    from core.engine.trainer import Trainer  # heavy imports after the config is known to be valid

    Trainer(cfg, resume=args.resume).fit()
    return 0


if __name__ == "__main__":
    run_main(main)
