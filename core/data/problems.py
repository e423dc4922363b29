"""What a dataset reader finds wrong, and the checks every reader shares (boxes, image files and sizes).

Readers work in two modes. *Strict* (``problems=None``): the first problem raises
:class:`DatasetError` naming the file, the annotation (id, object or line) and the fix.
*Collecting* (``problems=[]``): every problem is appended to the list as a :class:`Problem` and
reading goes on; records that could be built are returned (bad boxes left out of them), and each
problem names the image record it spoils (``Problem.image``) so a caller can drop those records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import image_io
from .records import DatasetError, ImageRecord

BOX_TOLERANCE = 1.0  # px a box may stick out of the image before it is an error
MAX_IMAGE_SIDE = 2**31 - 1  # px; an annotated width / height above this (PNG's limit) is a typo
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Problem kinds, as ``Problem.kind`` and the check report name them.
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "image size mismatch"
BOX_OUTSIDE = "box outside image"
BOX_EMPTY = "zero or negative size"
UNKNOWN_CLASS = "unknown class"
MALFORMED = "malformed annotation"
MISSING_ANNOTATION = "missing annotation"
UNREADABLE_ANNOTATIONS = "unreadable annotation file"
PROBLEM_KINDS = (MISSING_IMAGE, UNREADABLE_IMAGE, SIZE_MISMATCH, BOX_OUTSIDE, BOX_EMPTY, UNKNOWN_CLASS,
                 MALFORMED, MISSING_ANNOTATION, UNREADABLE_ANNOTATIONS)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, found by a reader in collecting mode.

    ``file``: the annotation file (COCO json, VOC xml, YOLO txt) or id list the problem is in;
    ``where``: the annotation inside it (``annotation id 42``, ``object 1``, ``line 3``,
    ``images[2]``), empty for the whole file; ``line``: line number in ``file`` when known;
    ``image``: absolute path of the image whose record the problem spoils (None when no record
    could be made, e.g. an unparsable file). ``str(problem)`` is the strict mode's error text.
    """

    kind: str
    file: str
    where: str
    message: str
    line: int | None = None
    image: str | None = None

    def __str__(self) -> str:
        loc = f"{self.file}: {self.where}: " if self.where else f"{self.file}: "
        line = f" [line {self.line}]" if self.line is not None and not self.where.startswith("line ") else ""
        return f"{loc}{self.message}{line}"


class ProblemSink:
    """Raises (strict mode, ``problems is None``) or collects (a list) reader problems."""

    def __init__(self, problems: list[Problem] | None) -> None:
        self.problems = problems

    def __call__(self, kind: str, file: Path | str, where: str, message: str, line: int | None = None,
                 image: str | None = None) -> None:
        problem = Problem(kind, str(file), where, message, line, image)
        if self.problems is None:
            raise DatasetError(str(problem))
        self.problems.append(problem)


def box_problem(box: np.ndarray, width: int, height: int) -> tuple[str, str] | None:
    """``(kind, message)`` when an xyxy box in original pixels has zero / negative size or lies
    outside the ``width`` x ``height`` image by more than ``BOX_TOLERANCE`` px, else None."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite([x1, y1, x2, y2]).all() or x2 <= x1 or y2 <= y1:
        return BOX_EMPTY, f"box {[x1, y1, x2, y2]} (xyxy) has zero or negative size; fix or remove it"
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return BOX_OUTSIDE, (f"box {[x1, y1, x2, y2]} (xyxy) lies outside the {width}x{height} image "
                             f"by more than {t:g} px; fix the box or the image size")
    clipped = clip_box(box, width, height)  # float32, as the box will be stored
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return BOX_OUTSIDE, (f"box {[x1, y1, x2, y2]} (xyxy) has nothing left inside the {width}x{height} image; "
                             "fix or remove it")
    return None


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """An xyxy box clipped to the image, float32."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], dtype=np.float32)


def check_box(box: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Validate an xyxy box in original pixels and clip it to the image; ``where`` prefixes errors."""
    problem = box_problem(box, width, height)
    if problem is not None:
        raise DatasetError(f"{where}: {problem[1]}")
    return clip_box(box, width, height)


def to_arrays(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


def image_size(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` of the displayed picture (EXIF orientation applied) from the file's header
    (``decode``: decode all pixels too, which also finds truncated files); see
    ``core.data.image_io.image_size``. Raises ``image_io.ImageReadError`` (a DatasetError, so a
    ValueError) naming the file when it cannot be read or declares too many pixels."""
    return image_io.image_size(path, decode)


def verify_images(items: list[tuple[ImageRecord, Path, str]], sink: ProblemSink, decode: bool) -> None:
    """Collecting mode: report each record whose image is missing, unreadable or of another size
    than annotated. ``items``: ``(record, annotation file, where in it)``."""
    for rec, file, where in items:
        if not Path(rec.file_name).is_file():
            sink(MISSING_IMAGE, file, where, f"image file '{rec.file_name}' not found; check the split's "
                                             f"'images' folder or remove the entry", image=rec.file_name)
            continue
        try:
            size = image_size(rec.file_name, decode)
        except (OSError, ValueError, SyntaxError) as e:
            sink(UNREADABLE_IMAGE, file, where, f"cannot read image '{rec.file_name}' ({getattr(e, 'reason', e)}); "
                                                f"replace or remove it", image=rec.file_name)
            continue
        if size != (rec.width, rec.height):
            turned = (size == (rec.height, rec.width)
                      and image_io.image_orientation(rec.file_name) in image_io.SWAPS_SIDES)
            fix = ("its EXIF orientation turns the stored picture upright, but the boxes were drawn on the stored "
                   "one (the annotation tool ignored the tag): annotate the upright picture, or remove the tag "
                   "(e.g. exiftool -Orientation= FILE) if the boxes fit the stored picture" if turned else
                   "fix its width/height")
            sink(SIZE_MISMATCH, file, where, f"image '{rec.file_name}' is {size[0]}x{size[1]} but the annotation "
                                             f"says {rec.width}x{rec.height}; {fix}", image=rec.file_name)


def check_images_exist(records: list[ImageRecord], ann: Path, sources: list[Path] | None = None) -> None:
    """Strict mode: raise naming ``ann`` (and, given ``sources[i]`` the file of ``records[i]``, the
    file of the first missing image) when image files are missing."""
    missing = [k for k, r in enumerate(records) if not Path(r.file_name).is_file()]
    if missing:
        src = f" (named in {sources[missing[0]]})" if sources else ""
        raise DatasetError(f"{ann}: {len(missing)} of {len(records)} image files not found, e.g. "
                           f"{records[missing[0]].file_name}{src}; check the split's 'images' folder")


def resolve_image_path(image_dir: Path, name: Any) -> tuple[str | None, str]:
    """``(absolute path, "")`` of the image file ``name`` (relative to ``image_dir``) or, when ``name``
    cannot be a file path (not a string, empty, a NUL byte, too long for the file system),
    ``(None, what is wrong)``. Whether the file exists is checked later."""
    if not isinstance(name, str) or not name:
        return None, f"must be a non-empty file name, got {name!r}"
    try:
        path = (image_dir / name).resolve()
        path.is_file()  # raises for names the OS refuses (ENAMETOOLONG) instead of saying False
    except (OSError, ValueError) as e:
        return None, f"{name!r} is not a usable file name ({e})"
    return str(path), ""


def is_finite_number(v: Any) -> bool:
    """A real number (no bool) that is finite as a float (ints too large for a float are not)."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


def list_images(folder: Path) -> list[Path]:
    """Image files (by suffix, see ``IMAGE_SUFFIXES``) in ``folder`` and its subfolders (as ultralytics
    reads them), sorted by their path below ``folder`` (by name for a flat folder)."""
    folder = Path(folder)
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(folder).parts)
