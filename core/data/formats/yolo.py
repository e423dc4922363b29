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
    """Parse ``class cx cy w h``; returns the values or an error message."""
    if len(tokens) != 5:
        return f"expected 5 values 'class cx cy w h', got {len(tokens)}"
    try:
        cls_f = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return f"values {tokens} are not numbers"
    if not math.isfinite(cls_f) or cls_f != int(cls_f):
        return f"class index '{tokens[0]}' is not an integer"
    return (int(cls_f), *values)  # type: ignore[return-value]


def read_yolo(label_dir: Path, image_dir: Path, class_names: list[str], problems: list[Problem] | None = None,
              decode: bool = False) -> list[ImageRecord]:
    """Read a YOLO (darknet txt) split: every image in ``image_dir`` (sorted) and its
    ``label_dir/<stem>.txt`` (absent: no objects). A line ``class cx cy w h`` (class a 0-based
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
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            sink(MALFORMED, p, "", f"two images share the stem '{p.stem}' ({by_stem[p.stem].name}, {p.name}), so "
                                   f"{p.stem}.txt is ambiguous; rename one", image=str(p.resolve()))
        by_stem.setdefault(p.stem, p)
    for txt in sorted(label_dir.glob("*.txt")):
        if txt.stem not in by_stem and txt.name != "classes.txt":
            sink(MISSING_IMAGE, txt, "", f"no image '{txt.stem}.*' in {image_dir}; add the image or remove the "
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
        txt = label_dir / f"{path.stem}.txt"
        boxes, labels = [], []
        if txt.is_file():
            try:
                lines = txt.read_text().splitlines()
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
