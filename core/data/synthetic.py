"""Deterministic synthetic "shapes" detection data set in COCO format (the demo data).

Four classes, each drawn in its own hue (with jitter) on a noisy, low-saturation textured
background with thin clutter lines: circle (red), square (green), triangle (blue),
cross (orange). 1-6 objects per image, box sides from 12 px to 45% of the image side, so at
256 px small, medium and large boxes (COCO area ranges, ``area`` = box ``w*h``) all occur.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
HUES = (0.0, 0.33, 0.62, 0.08)
MIN_SIDE = 12
MAX_SIDE_FRAC = 0.45
MAX_IOU = 0.3
MAX_COVER = 0.5  # also reject if the overlap covers more than this much of the smaller box
JPEG_QUALITY = 90


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


def render_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One synthetic picture and its objects as ``(class index, [x1, y1, x2, y2])``, tight xyxy
    boxes in the picture's pixels (continuous coordinates, exclusive right/bottom)."""
    img = _background(rng, size)
    max_side = max(MIN_SIDE + 1, int(MAX_SIDE_FRAC * size))
    placed: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(50):
            side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(max_side)))
            aspect = math.exp(rng.uniform(-0.22, 0.22))
            w = int(np.clip(round(side * aspect), MIN_SIDE, max_side))
            h = int(np.clip(round(side / aspect), MIN_SIDE, max_side))
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


def synthesize_shapes(root: Path, train_images: int, val_images: int, image_size: int, seed: int) -> Path:
    """Write the shapes data set: ``root/images/{train,val}/*.jpg`` (JPEG quality 90, square
    ``image_size`` px) and ``root/annotations/{train,val}.json`` (COCO, bbox ``xywh`` pixels,
    category ids 1..4). Byte-identical for equal arguments. Everything is generated in a
    temporary sibling folder first and moved in afterwards, annotation files last, so an
    interrupted run never leaves a json describing missing images. Returns ``root``."""
    root = Path(root).resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_split(tmp, 0, "train", train_images, image_size, seed, first_id=1)
        _write_split(tmp, 1, "val", val_images, image_size, seed, first_id=train_images + 1)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        for name in ("train", "val"):
            (root / "annotations" / f"{name}.json").unlink(missing_ok=True)
        for name in ("train", "val"):
            shutil.rmtree(root / "images" / name, ignore_errors=True)
            os.replace(tmp / "images" / name, root / "images" / name)
        for name in ("train", "val"):
            os.replace(tmp / "annotations" / f"{name}.json", root / "annotations" / f"{name}.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
