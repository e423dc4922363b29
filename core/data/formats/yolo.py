"""The YOLO (darknet) txt reader (``format: yolo``): one ``class cx cy w h`` line per object, normalised."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core.data.problems import (IMAGE_SUFFIXES, MALFORMED, MISSING_IMAGE, UNKNOWN_CLASS, UNREADABLE_ANNOTATIONS,
                                UNREADABLE_IMAGE, box_problem, clip_box, image_size, list_images, Problem,
                                ProblemSink, to_arrays)
from core.data.records import DatasetError, ImageRecord


def _yolo_line(tokens: list[str]) -> tuple[int, float, float, float, float] | str:
    """Parse ``class cx cy w h``, or an ultralytics segmentation line ``class x1 y1 x2 y2 x3 y3 ...``
    (three or more normalised polygon points), which becomes the box around the polygon as ultralytics
    trains a detector on it; returns ``(class, cx, cy, w, h)`` or an error message."""
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        return (f"expected 5 values 'class cx cy w h' (or a class and 3 or more polygon points x y), "
                f"got {len(tokens)}")
    try:
        cls_f = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return f"values {tokens} are not numbers"
    if not math.isfinite(cls_f) or cls_f != int(cls_f):
        return f"class index '{tokens[0]}' is not an integer"
    if len(values) > 4:  # a polygon: its bounding box
        xs, ys = values[0::2], values[1::2]
        values = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    return (int(cls_f), *values)  # type: ignore[return-value]


def read_yolo(label_dir: Path, image_dir: Path, class_names: list[str], problems: list[Problem] | None = None,
              decode: bool = False) -> list[ImageRecord]:
    """Read a YOLO (darknet txt) split: every image in ``image_dir`` and its subfolders (sorted) and its
    ``label_dir/<same subfolders>/<stem>.txt`` (absent: no objects). A line ``class cx cy w h`` (class a 0-based
    index into ``class_names``; centre, width, height normalised by the image size) becomes the
    xyxy box ``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)`` in original pixels.
    The image size is read from the file. ``image_id`` is the 1-based position of the image in
    the sorted folder listing. ``problems``: see :func:`read_split` (problems name the txt file
    and line).
    """
    sink = ProblemSink(problems)
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    if not image_dir.is_dir():
        sink(UNREADABLE_ANNOTATIONS, image_dir, "", "images folder not found; check the split's 'images' field")
        return []
    if not label_dir.is_dir():
        sink(UNREADABLE_ANNOTATIONS, label_dir, "", "labels folder not found; check the split's 'labels' field")
        return []
    images = list_images(image_dir)
    key_of = {p: p.relative_to(image_dir).with_suffix("").as_posix() for p in images}  # 'sub/x' pairs labels/sub/x.txt
    by_key: dict[str, Path] = {}
    for p in images:
        if key_of[p] in by_key:
            sink(MALFORMED, p, "", f"two images share the stem '{key_of[p]}' ({by_key[key_of[p]].name}, {p.name}), "
                                   f"so {key_of[p]}.txt is ambiguous; rename one", image=str(p.resolve()))
        by_key.setdefault(key_of[p], p)
    for txt in sorted(label_dir.rglob("*.txt")):
        key = txt.relative_to(label_dir).with_suffix("").as_posix()
        if key not in by_key and key != "classes":
            sink(MISSING_IMAGE, txt, "", f"no image '{key}.*' in {image_dir}; add the image or remove the "
                                         f"label file")
    records: list[ImageRecord] = []
    for k, path in enumerate(images):
        image = str(path.resolve())
        try:
            w, h = image_size(path, decode and problems is not None)
        except (OSError, ValueError, SyntaxError) as e:
            sink(UNREADABLE_IMAGE, path, "", f"cannot read image ({getattr(e, 'reason', e)}); replace or remove it",
                 image=image)
            continue
        txt = label_dir / f"{key_of[path]}.txt"
        boxes, labels = [], []
        if txt.is_file():
            try:
                lines = txt.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is no class
            except (OSError, UnicodeDecodeError) as e:
                sink(UNREADABLE_ANNOTATIONS, txt, "", f"cannot read label file ({e})", image=image)
                lines = []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parsed = _yolo_line(line.split())
                if isinstance(parsed, str):
                    sink(MALFORMED, txt, f"line {n}", f"{parsed}; fix the line", n, image)
                    continue
                c, cx, cy, bw, bh = parsed
                if not 0 <= c < len(class_names):
                    sink(UNKNOWN_CLASS, txt, f"line {n}", f"class index {c} is not in 0..{len(class_names) - 1} "
                                                         f"({', '.join(class_names)}); fix the line or 'classes'",
                         n, image)
                    continue
                xyxy = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                problem = box_problem(xyxy, w, h)
                if problem is not None:
                    sink(problem[0], txt, f"line {n}", problem[1], n, image)
                    continue
                boxes.append(clip_box(xyxy, w, h))
                labels.append(c)
        records.append(ImageRecord(k + 1, image, w, h, *to_arrays(boxes, labels)))
    if not images and problems is None:
        raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found; check the split's "
                           f"'images' field")
    return records
