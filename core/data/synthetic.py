"""Deterministic synthetic "shapes" detection data set in COCO format (the demo data).

Four classes, each drawn in its own hue (with jitter) on a noisy, low-saturation textured
background with thin clutter lines: circle (red), square (green), triangle (blue),
cross (orange). 1-6 objects per image, box sides from 12 px to 45% of the image side, so at
256 px small, medium and large boxes (COCO area ranges, ``area`` = box ``w*h``) all occur.
"""
from __future__ import annotations

import colorsys
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .records import DatasetError

CLASSES = ("circle", "square", "triangle", "cross")
HUES = (0.0, 0.33, 0.62, 0.08)
MIN_SIDE = 12
MAX_SIDE_FRAC = 0.45
MAX_IOU = 0.3
MAX_COVER = 0.5  # also reject if the overlap covers more than this much of the smaller box
JPEG_QUALITY = 90
MARKER = ".detlab-synthetic"   # written into a folder synthesize_shapes created; lists what it wrote
WRITTEN_BY = "DetLab core.data.synthetic.synthesize_shapes"
SYNTH_DIRS = ("images", "images/train", "images/val", "annotations")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [S, S, 3] RGB in 0..255: smooth grey-ish blotches, fine noise, clutter lines."""
    grid = rng.normal(0.0, 28.0, (5, 5, 1)) + rng.normal(0.0, 7.0, (5, 5, 3)) + rng.uniform(70, 185)
    low = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(low)
    for _ in range(int(rng.integers(2, 8))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        grey = rng.uniform(30, 225) + rng.normal(0, 10, 3)
        draw.line(pts, fill=tuple(int(v) for v in np.clip(grey, 0, 255)), width=int(rng.integers(1, 4)))
    return np.asarray(low, dtype=np.float32) + rng.normal(0.0, 7.0, (size, size, 3)).astype(np.float32)


def _overlaps(box: np.ndarray, placed: list[np.ndarray]) -> bool:
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        a1 = (box[2] - box[0]) * (box[3] - box[1])
        a2 = (other[2] - other[0]) * (other[3] - other[1])
        if inter / (a1 + a2 - inter) > MAX_IOU or inter / min(a1, a2) > MAX_COVER:
            return True
    return False


def _shape_mask(cls: int, box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bool [S, S] mask of one shape drawn inside the integer box ``[x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x1, y1 = x1 - 1, y1 - 1  # PIL's shape coordinates are inclusive
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    name = CLASSES[cls]
    if name == "circle":
        d.ellipse([x0, y0, x1, y1], fill=255)
    elif name == "square":
        d.rectangle([x0, y0, x1, y1], fill=255)
    elif name == "triangle":
        apex = int(round(x0 + (x1 - x0) * rng.uniform(0.3, 0.7)))
        tip, base = (y0, y1) if rng.random() < 0.5 else (y1, y0)
        d.polygon([(apex, tip), (x0, base), (x1, base)], fill=255)
    else:  # cross
        tx = max(3, (x1 - x0 + 1) // 3)
        ty = max(3, (y1 - y0 + 1) // 3)
        cx0 = x0 + (x1 - x0 + 1 - tx) // 2
        cy0 = y0 + (y1 - y0 + 1 - ty) // 2
        d.rectangle([cx0, y0, cx0 + tx - 1, y1], fill=255)
        d.rectangle([x0, cy0, x1, cy0 + ty - 1], fill=255)
    return np.asarray(mask) > 0


def _colour(cls: int, rng: np.random.Generator) -> np.ndarray:
    hue = (HUES[cls] + rng.uniform(-0.03, 0.03)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def render_image(rng: np.random.Generator, size: int, sides: tuple[int, int] | None = None,
                 objects: tuple[int, int] = (1, 6)) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One synthetic picture and its objects as ``(class index, [x1, y1, x2, y2])``, tight xyxy
    boxes in the picture's pixels (continuous coordinates, exclusive right/bottom).

    ``sides``: the range of box sides in pixels (default ``MIN_SIDE`` to ``MAX_SIDE_FRAC`` of
    ``size``); ``objects``: the least and most objects tried (fewer when they do not fit)."""
    img = _background(rng, size)
    min_side, max_side = (MIN_SIDE, max(MIN_SIDE + 1, int(MAX_SIDE_FRAC * size))) if sides is None else sides
    placed: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(50):
            side = math.exp(rng.uniform(math.log(min_side), math.log(max_side)))
            aspect = math.exp(rng.uniform(-0.22, 0.22))
            w = int(np.clip(round(side * aspect), min_side, max_side))
            h = int(np.clip(round(side / aspect), min_side, max_side))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
            if not _overlaps(box, placed):
                placed.append(box)
                classes.append(int(rng.integers(len(CLASSES))))
                break
    objects = []
    # Largest first, so a smaller object is never hidden under a larger one.
    for k in sorted(range(len(placed)), key=lambda k: -(placed[k][2] - placed[k][0]) * (placed[k][3] - placed[k][1])):
        mask = _shape_mask(classes[k], placed[k], size, rng)
        ys, xs = np.nonzero(mask)
        img[mask] = _colour(classes[k], rng) + rng.normal(0.0, 6.0, (len(ys), 3)).astype(np.float32)
        objects.append((classes[k], [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)), objects


def _write_split(out: Path, split: int, name: str, count: int, size: int, seed: int, first_id: int) -> None:
    image_dir = out / "images" / name
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, split, i])
        picture, objects = render_image(rng, size)
        file_name = f"{i:06d}.jpg"
        picture.save(image_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        image_id = first_id + i
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for k, (cls, (x1, y1, x2, y2)) in enumerate(objects):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": image_id * 10 + k, "image_id": image_id,  # <= 6 objects/image
                                "category_id": cls + 1, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": c + 1, "name": n, "supercategory": "shape"} for c, n in enumerate(CLASSES)]
    (out / "annotations").mkdir(exist_ok=True)
    with open(out / "annotations" / f"{name}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


class SyntheticRootError(DatasetError):
    """The folder given to :func:`synthesize_shapes` holds something DetLab did not write there."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_marker(root: Path) -> dict | None:
    """The marker's content, or ``None`` when ``root`` has no marker."""
    marker = root / MARKER
    if not marker.exists() and not marker.is_symlink():
        return None
    try:
        if marker.is_symlink() or not marker.is_file():
            raise ValueError("not a plain file")
        info = json.loads(marker.read_text())
        if not (isinstance(info, dict) and info.get("written_by") == WRITTEN_BY
                and isinstance(info.get("files"), dict)):
            raise ValueError("not a DetLab marker")
    except (OSError, ValueError) as err:
        raise SyntheticRootError(f"{marker} is not a marker DetLab wrote ({err}), so {root} is not a folder "
                                 "DetLab synthesized") from None
    return info


def _listed(info: dict) -> dict[str, set[str]]:
    """Every file a marker accounts for, with the SHA-256 values it may have: ``files`` (what the
    last run wrote) and, while a run replaces them, ``replacing`` (what the run before wrote)."""
    listed: dict[str, set[str]] = {}
    for key in ("replacing", "files"):
        for rel, digest in (info.get(key) or {}).items():
            listed.setdefault(str(rel), set()).add(str(digest))
    return listed


def _foreign_entries(root: Path, files: dict[str, set[str]]) -> list[str]:
    """Entries under ``root`` that the marker (``files``: relative path -> the SHA-256 values it
    may have) does not account for: unlisted files or folders, links, files whose content changed."""
    foreign = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames):
            rel = (here / name).relative_to(root).as_posix()
            if (here / name).is_symlink() or rel not in SYNTH_DIRS:
                foreign.append(rel + "/")
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink() and
                             (here / d).relative_to(root).as_posix() in SYNTH_DIRS)
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel in (MARKER, MARKER + ".tmp"):
                continue
            if path.is_symlink() or not path.is_file() or rel not in files:
                foreign.append(rel)
            elif _sha256(path) not in files[rel]:
                foreign.append(f"{rel} (changed since DetLab wrote it)")
    return foreign


def _write_marker(root: Path, info: dict) -> None:
    tmp = root / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=0, sort_keys=True) + "\n")
    os.replace(tmp, root / MARKER)


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (flock on the directory itself: no lock file), so that
    processes started together (torchrun ranks) synthesize one after the other."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim(root: Path) -> None:
    """Refuse ``root`` unless it is missing, empty or marked by DetLab; create it if missing."""
    if root.is_symlink() and not root.exists():
        raise SyntheticRootError(f"{root} is a broken symbolic link, not a folder DetLab synthesized")
    if root.exists() and not root.is_dir():
        raise SyntheticRootError(f"{root} is a file, not a folder DetLab synthesized")
    if root.is_dir() and _read_marker(root) is None and any(p.name != MARKER + ".tmp" for p in root.iterdir()):
        shown = sorted(p.name for p in root.iterdir() if p.name != MARKER + ".tmp")[:3]
        raise SyntheticRootError(f"{root} is not a folder DetLab synthesized (no {MARKER} marker) and is not "
                                 f"empty (it holds {', '.join(shown)}{', ...' if len(shown) == 3 else ''})")
    root.mkdir(parents=True, exist_ok=True)


def synthesize_shapes(root: Path, train_images: int, val_images: int, image_size: int, seed: int) -> Path:
    """Write the shapes data set: ``root/images/{train,val}/*.jpg`` (JPEG quality 90, square
    ``image_size`` px) and ``root/annotations/{train,val}.json`` (COCO, bbox ``xywh`` pixels,
    category ids 1..4). Byte-identical for equal arguments. Returns ``root``.

    It writes only into a folder it owns: ``root`` must be missing or empty (it is then created
    and marked with a ``.detlab-synthetic`` file listing every file written, with its SHA-256),
    or marked so by an earlier call. A folder holding anything else, a file added or a written
    one changed, raises :class:`SyntheticRootError` and nothing is touched; only files the marker
    lists are ever deleted. A complete earlier run with the same arguments is kept as it is.
    Everything is generated in a new temporary sibling folder first and moved in afterwards,
    annotation files last, so an interrupted run never leaves a json describing missing images.
    """
    root = Path(root).resolve()
    params = {"kind": "shapes", "train_images": train_images, "val_images": val_images,
              "image_size": image_size, "seed": seed}
    _claim(root)
    with _locked(root):
        info = _read_marker(root)
        if info is None:  # empty (checked again under the lock): claim it
            _claim(root)  # raises if something appeared meanwhile
            info = {"written_by": WRITTEN_BY, "complete": False, "params": params, "files": {}}
            _write_marker(root, info)
        listed = _listed(info)
        foreign = _foreign_entries(root, listed)
        if foreign:
            raise SyntheticRootError(
                f"{root} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} DetLab did not write "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}), so it would not regenerate "
                "the synthetic data there")
        if info.get("complete") and info.get("params") == params and all((root / f).is_file() for f in listed):
            return root  # the same data is already there, every file as written
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))  # new: ours alone
        try:
            _write_split(tmp, 0, "train", train_images, image_size, seed, first_id=1)
            _write_split(tmp, 1, "val", val_images, image_size, seed, first_id=train_images + 1)
            new = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            # the marker lists old and new files before any of them moves, so an interruption at
            # any point leaves a folder whose every file the marker accounts for
            old = {rel: _sha256(root / rel) for rel in listed if (root / rel).is_file()}  # checked above
            _write_marker(root, {"written_by": WRITTEN_BY, "complete": False, "params": params, "files": new,
                                 "replacing": old})
            for rel in sorted(old, key=lambda f: not f.startswith("annotations/")):  # annotations first
                (root / rel).unlink()
            (root / "images").mkdir(exist_ok=True)
            (root / "annotations").mkdir(exist_ok=True)
            for name in ("train", "val"):
                target = root / "images" / name
                if target.is_dir():
                    target.rmdir()  # empty now: every file in it was listed and is gone
                os.replace(tmp / "images" / name, target)
            for name in ("train", "val"):
                os.replace(tmp / "annotations" / f"{name}.json", root / "annotations" / f"{name}.json")
            _write_marker(root, {"written_by": WRITTEN_BY, "complete": True, "params": params, "files": new})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
