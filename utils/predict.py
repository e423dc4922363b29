"""Run a trained detector on pictures and videos and write COCO-style detections (and drawings).

    python -m utils.predict --weights runs/demo/epoch_0010.pt [--config config/demo.py] INPUTS...
        [--out predictions.json] [--vis DIR] [--vis-score 0.3] [--min-score 0.05] [--tta flip,0.8,1.2]
        [--tile 512 [--overlap 0.2] [--tile-merge nms|wbf] [--tile-full]] [--video-dir DIR]
        [--log-every 100] [--overwrite] [--allow-pickle]

INPUTS are files, folders (their pictures and videos, not recursive) or glob patterns (quoted, e.g.
'photos/**/*.jpg'). For the pictures, the json is a list of COCO result dicts (``image_id`` =
position of the picture among the input pictures from 1, ``category_id``, ``bbox`` [x, y, w, h] in
pixels of the picture, ``score``) with ``file_name`` and ``category_name`` added. Without --config
the checkpoint's own config is used.

A video file (``VIDEO_SUFFIXES``; read with OpenCV, ``pip install opencv-python-headless``) gives
two files in --video-dir (default: the folder of --out): ``<name>.jsonl``, one JSON object a frame
(``frame`` index from 0, ``time`` in seconds = frame / fps, ``detections``: a list of ``box`` [x1,
y1, x2, y2] in pixels of the frame, ``score``, ``label``, ``category_id``, ``class_name``), and
``<name>_detections.mp4``, the frames with their detections (score >= --vis-score) drawn, at the
video's size and frame rate.

--tile SIZE predicts overlapping SIZE x SIZE windows of each picture or frame at their own
resolution and merges them (``core.inference.tiling``): for pictures much larger than the network input,
with objects that would be a few pixels across once the whole picture is shrunk to it.

Outputs that already exist are refused before the model loads unless --overwrite; each is written
under a temporary name and renamed when complete, so an interrupted run leaves no half file.

Progress goes to stderr: a bar on a terminal, else one line per --log-every pictures or frames.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from core.engine.output_paths import refuse_existing, refuse_inputs

GLOB_CHARS = set("*?[")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 25.0  # written for a video whose frame rate OpenCV cannot read


def is_video(path: Path) -> bool:
    """Whether ``path`` is taken as a video file (by its suffix, ``VIDEO_SUFFIXES``)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_images(items: Sequence[str]) -> list[Path]:
    """Files as given, pictures and videos directly inside folders (sorted), and glob matches
    (sorted) that are pictures or videos. Raises FileNotFoundError naming an item that matches
    nothing."""
    from core.data.problems import IMAGE_SUFFIXES

    wanted = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in wanted)
        elif path.is_file():
            found = [path]
        elif GLOB_CHARS & set(item):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                     if Path(p).is_file() and Path(p).suffix.lower() in wanted]
        else:
            raise FileNotFoundError(f"'{item}' is not a file, folder or glob pattern that exists")
        if not found:
            raise FileNotFoundError(f"'{item}' holds no pictures ({', '.join(IMAGE_SUFFIXES)}) or videos "
                                    f"({', '.join(VIDEO_SUFFIXES)})")
        out += [p for p in found if p not in out]
    return out


def vis_names(paths: Sequence[Path], suffix: str = ".png") -> list[str]:
    """A unique ``<stem><suffix>`` per file (``<stem>_<k><suffix>`` with the smallest free ``k`` when the
    name is taken: ``a/x.jpg``, ``b/x.jpg`` and ``x_1.jpg`` give ``x``, ``x_1`` and ``x_1_1``)."""
    names: list[str] = []
    taken: set[str] = set()
    for p in paths:
        name, k = f"{p.stem}{suffix}", 0
        while name in taken:
            k += 1
            name = f"{p.stem}_{k}{suffix}"
        taken.add(name)
        names.append(name)
    return names


class Progress:
    """Progress on stderr: a tqdm bar on a terminal; otherwise (a log file, CI, a pipe) one line per
    ``every`` items and one at the end, ``<desc>: <done>/<total> <unit> (<rate> <unit>/s)``."""

    def __init__(self, desc: str, total: int | None, unit: str, every: int) -> None:
        import time

        from tqdm import tqdm

        self.desc, self.total, self.unit, self.every = desc, total, unit, max(1, int(every))
        self.done, self.start, self._clock = 0, time.perf_counter(), time.perf_counter
        self.shown = -1  # ``done`` when the last line was printed
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                        leave=False) if sys.stderr.isatty() else None

    def update(self, n: int) -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done // self.every > before // self.every:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.shown:  # the last line, unless just printed
            self._line()

    def _line(self) -> None:
        self.shown = self.done
        rate = self.done / max(self._clock() - self.start, 1e-9)
        total = "?" if not self.total else str(self.total)
        print(f"{self.desc}: {self.done}/{total} {self.unit} ({rate:.1f} {self.unit}/s)", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    from core.engine.cli import add_allow_pickle, add_runtime_arguments

    ap = argparse.ArgumentParser(prog="python -m utils.predict", description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", metavar="INPUTS", help="picture or video files, folders or glob patterns")
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
    add_runtime_arguments(ap)
    ap.add_argument("--batch", type=int, help="pictures per forward pass (default: test.batch_image)")
    add_tile_arguments(ap)
    ap.add_argument("--video-dir", metavar="DIR", help="where a video's <name>.jsonl and <name>_detections.mp4 go "
                                                       "(default: the folder of --out)")
    ap.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (the json, drawings, "
                                                             "a video's .jsonl and _detections.mp4); without it they "
                                                             "are refused before anything runs")
    ap.add_argument("--log-every", type=int, default=100, metavar="N", help="without a terminal, one progress line "
                                                                         "per N pictures or frames (default 100)")
    add_allow_pickle(ap)
    args = ap.parse_args(argv)
    try:
        args.tiling = tile_plan(args)
    except ValueError as err:
        ap.error(str(err))
    return args


def add_tile_arguments(ap: argparse.ArgumentParser) -> None:
    """--tile, --overlap, --tile-merge and --tile-full (shared with detection_test.py)."""
    ap.add_argument("--tile", type=int, metavar="SIZE", help="predict overlapping SIZE x SIZE windows of each picture "
                    "(original pixels) and merge their detections: for large pictures with small objects")
    ap.add_argument("--overlap", type=float, default=0.2, metavar="F", help="with --tile: the fraction of a window "
                    "its neighbours share, in [0, 1) (default 0.2)")
    ap.add_argument("--tile-merge", choices=("nms", "wbf"), default="nms", help="with --tile: merge the windows' "
                    "detections by class-wise NMS (default) or weighted boxes fusion")
    ap.add_argument("--tile-full", action="store_true", help="with --tile: also merge in the prediction on the "
                    "whole picture (large objects that no window holds)")


def tile_plan(args: argparse.Namespace):
    """The ``core.inference.tiling.TilePlan`` of the --tile arguments, or None without --tile; ValueError when
    they are out of range or given without --tile."""
    if args.tile is None:
        if args.tile_full or args.tile_merge != "nms" or args.overlap != 0.2:
            raise ValueError("--overlap, --tile-merge and --tile-full need --tile SIZE")
        return None
    from core.inference.tiling import TilePlan

    return TilePlan(args.tile, args.overlap, args.tile_merge, args.tile_full)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 for bad input."""
    args = parse_args(argv)
    from core.engine.checkpoint import CheckpointError
    from core.config.loading import ConfigError

    try:
        return run(args)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Predict, write the json and the drawings (and per video its JSON lines and annotated copy)."""
    inputs = expand_images(args.images)  # before the heavy imports: a typo fails fast
    paths = [p for p in inputs if not is_video(p)]
    videos = [p for p in inputs if is_video(p)]
    if videos:
        _cv2()  # fail before loading the model when videos cannot be read
    video_dir = Path(args.video_dir) if args.video_dir else Path(args.out).parent
    video_outputs = [(video_dir / f"{name}.jsonl", video_dir / f"{name}_detections.mp4")
                     for name in vis_names(videos, "")]
    planned = planned_outputs(args, paths, videos, video_outputs)
    # a picture or video is never written over, --overwrite or not (a --vis drawing named as a PNG input)
    refuse_inputs(planned, inputs, "choose another --out / --vis / --video-dir")
    refuse_existing(planned, args.overwrite, "choose another --out / --vis / --video-dir")
    from core.inference.ensemble import TTAPlan
    from core.inference.predictor import Predictor

    tta = TTAPlan.parse(args.tta) if args.tta else None
    if args.runtime != "torch" and tta and any(s != 1.0 for s in tta.scales):
        raise SystemExit(f"error: --runtime {args.runtime} runs the network at the config's input size; --tta scales "
                         "need --runtime torch (flip works)")
    tiling = getattr(args, "tiling", None)
    det = Predictor.from_checkpoint(args.weights, args.config, args.device, args.set, allow_pickle=args.allow_pickle,
                                    runtime=args.runtime, calibration_images=args.calib_images)
    print(f"{len(paths)} pictures, {len(videos)} videos, model {det.source} ({len(det.class_names)} classes), "
          f"tta {tta.describe() if tta else 'none'}, {tiling.describe() if tiling else 'no tiles'}")
    if paths or not videos:
        predict_pictures(args, det, paths, tta, tiling)
    for path, (jsonl, annotated) in zip(videos, video_outputs):
        predict_video(args, det, path, jsonl, annotated, tta, tiling)
    return 0


def planned_outputs(args: argparse.Namespace, paths: Sequence[Path], videos: Sequence[Path],
                    video_outputs: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Every file a run of ``args`` would write: the json (--out, when there are pictures or no
    videos), each picture's drawing (--vis) and each video's JSON lines and annotated copy."""
    planned = [Path(args.out)] if paths or not videos else []
    if args.vis:
        planned += [Path(args.vis) / name for name in vis_names(paths)]
    return planned + [p for pair in video_outputs for p in pair]


def predict_pictures(args: argparse.Namespace, det, paths: Sequence[Path], tta, tiling) -> None:
    """Predict the pictures; write the json (--out) and the drawings (--vis)."""
    from core.engine.tester import write_json
    from core.evaluation.coco_eval import to_coco_results
    from core.inference.predictor import to_pil
    from core.inference.visualize import draw_detections, save_png

    results: list[dict] = []
    vis_dir = Path(args.vis) if args.vis else None
    if vis_dir is not None:
        vis_dir.mkdir(parents=True, exist_ok=True)
    names = vis_names(paths)
    bs = args.batch or det.cfg.test.batch_image
    progress = Progress("pictures", len(paths), "pictures", args.log_every)
    step = 1 if tiling else bs  # tiled, one picture gives batches of its windows
    for start in range(0, len(paths), step):
        chunk = paths[start:start + step]
        pictures = [to_pil(p) for p in chunk]
        found = det.predict_many(pictures, args.min_score, tta, bs, tiling=tiling)
        for k, (path, picture, pred) in enumerate(zip(chunk, pictures, found)):
            image_id = start + k + 1
            for row, name in zip(to_coco_results(image_id, pred.boxes, pred.scores, pred.labels, det.category_ids),
                                 pred.names):
                results.append({**row, "file_name": str(path), "category_name": name})
            if vis_dir is not None:
                keep = pred.scores >= args.vis_score
                save_png(draw_detections(picture, pred.boxes[keep], pred.labels[keep], pred.scores[keep],
                                         det.class_names), vis_dir / names[start + k])
        progress.update(len(chunk))
    progress.close()
    out = Path(args.out)
    write_json(results, out)
    print(f"{len(results)} detections written to {out}")
    if vis_dir is not None:
        print(f"{len(paths)} pictures with detections (score >= {args.vis_score}) saved to {vis_dir}")


def _cv2():
    """OpenCV, or a ValueError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise ValueError("reading and writing video files needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def frame_record(index: int, fps: float, pred, category_ids: Sequence[int]) -> dict:
    """One video frame's JSON line: ``frame``, ``time`` (s), ``detections`` (box xyxy frame pixels,
    score, label, category_id, class_name), best first."""
    return {"frame": index, "time": round(index / fps, 6), "detections": [
        {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5), "label": int(label),
         "category_id": int(category_ids[int(label)]), "class_name": name}
        for box, score, label, name in zip(pred.boxes, pred.scores, pred.labels, pred.names)]}


def predict_video(args: argparse.Namespace, det, path: Path, jsonl: Path, annotated: Path, tta, tiling) -> None:
    """Predict every frame of the video ``path`` in batches; write its JSON lines to ``jsonl`` and the
    frames with their detections drawn to ``annotated`` (mp4, the video's size and frame rate)."""
    import numpy as np
    from PIL import Image

    from core.inference.visualize import draw_detections

    cv2 = _cv2()
    for target in (jsonl, annotated):
        if target.resolve() == path.resolve():
            raise ValueError(f"{target} would overwrite the input video; pass another --video-dir")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot read video '{path}' (OpenCV could not open it)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not fps > 0:  # also NaN
        print(f"warning: {path} does not say its frame rate; writing {DEFAULT_FPS:g} fps", file=sys.stderr)
        fps = DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    # written under temporary names (same folder, same suffix for OpenCV) and renamed when complete
    part_jsonl, part_video = (p.with_name(f".{p.stem}.part{p.suffix}") for p in (jsonl, annotated))
    writer = None
    bs = args.batch or det.cfg.test.batch_image
    progress = Progress(path.name, total if total > 0 else None, "frames", args.log_every)
    index, found = 0, 0
    try:
        with open(part_jsonl, "w") as lines:
            while True:
                frames = []
                while len(frames) < bs:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    frames.append(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB
                if not frames:
                    break
                if writer is None:
                    h, w = frames[0].shape[:2]
                    writer = cv2.VideoWriter(str(part_video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise ValueError(f"cannot write video '{annotated}' (OpenCV's mp4v encoder would not open)")
                for frame, pred in zip(frames, det.predict_many(frames, args.min_score, tta, bs, tiling=tiling)):
                    lines.write(json.dumps(frame_record(index, fps, pred, det.category_ids)) + "\n")
                    keep = pred.scores >= args.vis_score
                    drawn = draw_detections(Image.fromarray(frame), pred.boxes[keep], pred.labels[keep],
                                            pred.scores[keep], det.class_names)
                    writer.write(np.ascontiguousarray(np.asarray(drawn)[:, :, ::-1]))  # RGB -> BGR
                    index += 1
                    found += len(pred)
                progress.update(len(frames))
    except BaseException:
        if writer is not None:
            writer.release()
            writer = None
        for part in (part_jsonl, part_video):
            part.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
    if index == 0:
        part_jsonl.unlink(missing_ok=True)
        raise ValueError(f"video '{path}' has no frames OpenCV can read")
    os.replace(part_jsonl, jsonl)
    os.replace(part_video, annotated)
    print(f"{path}: {index} frames at {fps:g} fps, {found} detections written to {jsonl}; "
          f"drawn (score >= {args.vis_score}) into {annotated}")


if __name__ == "__main__":
    sys.exit(main())
