"""Drawing detections on images and tiling images into a grid."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.engine.output_paths import atomic_output


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class ``label`` (golden-ratio hue spacing)."""
    hue = (label * 0.618033988749895) % 1.0
    sat = 0.85 if label % 2 == 0 else 0.65
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``bg``."""
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels (the fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    boxes: Any,
    labels: Any,
    scores: Any | None,
    class_names: Sequence[str],
    score_thresh: float = 0.0,
) -> Image.Image:
    """Return an RGB copy of ``image`` with detections drawn on it.

    ``boxes``: ``[K, 4]`` xyxy in pixels of *this* image (numpy or tensor); ``labels``: ``[K]``
    contiguous class indices; ``scores``: ``[K]`` or None (ground truth: name only, no score).
    Detections with score below ``score_thresh`` are skipped. Each class has its own colour;
    the label "name score" is written on a filled background above the box (inside when the
    box touches the top edge). The input image is not modified.
    """
    out = image.convert("RGB")  # always a copy
    b = _to_numpy(boxes).reshape(-1, 4).astype(np.float64)
    lab = _to_numpy(labels).reshape(-1).astype(np.int64)
    sc = None if scores is None else _to_numpy(scores).reshape(-1).astype(np.float64)
    if len(b) != len(lab) or (sc is not None and len(sc) != len(b)):
        raise ValueError(f"{len(b)} boxes, {len(lab)} labels, "
                         f"{'no' if sc is None else len(sc)} scores")
    draw = ImageDraw.Draw(out)
    width, height = out.size
    font = _default_font(max(10, round(min(width, height) / 40)))
    line_w = max(1, round(min(width, height) / 250))

    order = np.argsort(sc, kind="stable") if sc is not None else np.arange(len(b))
    for i in order:  # lowest score first, so the best boxes end up on top
        if sc is not None and sc[i] < score_thresh:
            continue
        c = int(lab[i])
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        text = name if sc is None else f"{name} {sc[i]:.2f}"
        color = class_color(c)
        x1, y1, x2, y2 = b[i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_w)

        l, t, r, btm = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, btm - t
        pad = 2
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(x1, 0), max(width - tw - 2 * pad, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
        draw.text((tx + pad - l, ty + pad - t), text, fill=_text_color(color), font=font)
    return out


def save_grid(
    images: Sequence[Image.Image],
    path: str | os.PathLike,
    cols: int = 4,
    background: tuple[int, int, int] = (32, 32, 32),
    gap: int = 4,
) -> Path:
    """Tile ``images`` row-major into one PNG at ``path``; every cell is as large as the
    largest image, smaller images sit in the top-left of their cell. Returns the path."""
    if len(images) == 0:
        raise ValueError("save_grid: no images")
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap),
                     background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (c * (cell_w + gap), r * (cell_h + gap)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(grid, out)
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """``image`` as a PNG at ``path``, atomically: written beside it under a hidden temporary name and
    renamed when complete, so an interrupted run never leaves half a drawing under the final name."""
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
