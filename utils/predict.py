"""Run a trained detector on pictures and write COCO-style detections (and drawings).

    python -m utils.predict --weights runs/demo/epoch_0010.pt [--config config/demo.py] IMAGES...
        [--out predictions.json] [--vis DIR] [--vis-score 0.3] [--min-score 0.05] [--tta flip,0.8,1.2]
        [--allow-pickle]

IMAGES are files, folders (their pictures, not recursive) or glob patterns (quoted, e.g.
'photos/**/*.jpg'). The json is a list of COCO result dicts (``image_id`` = position of the
picture in the input list from 1, ``category_id``, ``bbox`` [x, y, w, h] in pixels of the picture,
``score``) with ``file_name`` and ``category_name`` added. Without --config the checkpoint's own
config is used.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Sequence

GLOB_CHARS = set("*?[")


def expand_images(items: Sequence[str]) -> list[Path]:
    """Files as given, pictures directly inside folders (sorted), and glob matches (sorted)
    that are pictures. Raises FileNotFoundError naming an item that matches nothing."""
    from core.data.spec import IMAGE_SUFFIXES, list_images

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
        elif path.is_file():
            found = [path]
        elif GLOB_CHARS & set(item):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                     if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise FileNotFoundError(f"'{item}' is not a file, folder or glob pattern that exists")
        if not found:
            raise FileNotFoundError(f"'{item}' holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
        out += [p for p in found if p not in out]
    return out


def _vis_names(paths: Sequence[Path]) -> list[str]:
    """A unique ``<stem>.png`` per picture (``<stem>_<k>.png`` when stems repeat)."""
    names, seen = [], {}
    for p in paths:
        k = seen.get(p.stem, 0)
        seen[p.stem] = k + 1
        names.append(f"{p.stem}.png" if k == 0 else f"{p.stem}_{k}.png")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from core.cli import add_allow_pickle

    ap = argparse.ArgumentParser(prog="python -m utils.predict", description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", help="picture files, folders or glob patterns")
    ap.add_argument("--weights", required=True, help="checkpoint written by detection_train.py")
    ap.add_argument("--config", help="experiment module (default: the config saved in the checkpoint)")
    ap.add_argument("--set", action="append", default=[], metavar="Section.field=value", help="config override")
    ap.add_argument("--out", default="predictions.json", help="output json (default predictions.json)")
    ap.add_argument("--vis", metavar="DIR", help="also save each picture with its detections as DIR/<name>.png")
    ap.add_argument("--vis-score", type=float, default=0.3, help="lowest score drawn with --vis (default 0.3)")
    ap.add_argument("--min-score", type=float, default=0.0, help="lowest score written to the json (default: all "
                                                                 "the config's test section keeps)")
    ap.add_argument("--tta", help="test-time augmentation: 'flip', scales such as '0.8,1.2', or both")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch", type=int, help="pictures per forward pass (default: test.batch_image)")
    add_allow_pickle(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 for bad input."""
    args = parse_args(argv)
    from core.checkpoint import CheckpointError
    from core.config import ConfigError

    try:
        return run(args)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Predict, write the json and the drawings."""
    paths = expand_images(args.images)  # before the heavy imports: a typo fails fast
    from core.ensemble import TTAPlan
    from core.evaluation import to_coco_results
    from core.predictor import Detector, to_pil
    from core.visualize import draw_detections

    tta = TTAPlan.parse(args.tta) if args.tta else None
    det = Detector.from_checkpoint(args.weights, args.config, args.device, args.set, allow_pickle=args.allow_pickle)
    print(f"{len(paths)} pictures, model {det.source} ({len(det.class_names)} classes), "
          f"tta {tta.describe() if tta else 'none'}")
    results: list[dict] = []
    vis_dir = Path(args.vis) if args.vis else None
    if vis_dir is not None:
        vis_dir.mkdir(parents=True, exist_ok=True)
    names = _vis_names(paths)
    bs = args.batch or det.cfg.test.batch_image
    for start in range(0, len(paths), bs):
        chunk = paths[start:start + bs]
        pictures = [to_pil(p) for p in chunk]
        for k, (path, picture, pred) in enumerate(zip(chunk, pictures, det.predict_many(pictures, args.min_score, tta,
                                                                                         bs))):
            image_id = start + k + 1
            for row, name in zip(to_coco_results(image_id, pred.boxes, pred.scores, pred.labels, det.category_ids),
                                 pred.names):
                results.append({**row, "file_name": str(path), "category_name": name})
            if vis_dir is not None:
                keep = pred.scores >= args.vis_score
                draw_detections(picture, pred.boxes[keep], pred.labels[keep], pred.scores[keep],
                                det.class_names).save(vis_dir / names[start + k])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results))
    print(f"{len(results)} detections written to {out}")
    if vis_dir is not None:
        print(f"{len(paths)} pictures with detections (score >= {args.vis_score}) saved to {vis_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
