"""Training augmentations beyond resize / crop / flip: photometric jitter, mosaic, MixUp, CutMix.

Every function takes its randomness from a ``torch.Generator`` (the per-sample generator that
``DetectionDataset`` seeds from ``(index, seed)``), so an augmented sample is a pure function of
its key and exact resume keeps working. ``generator=None`` means torch's global RNG.

Boxes are float32 ``[N, 4]`` xyxy; each function states the pixel space. Boxes that an
operation cuts are clipped to what stays visible; a box is dropped when its width or height falls
below ``MIN_SIDE`` px or less than ``MIN_KEEP_FRACTION`` of its area is left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

MIN_KEEP_FRACTION = 0.2  # drop a box when less than this fraction of its area survives a crop / cut
MIN_SIDE = 2.0  # drop a box whose width or height (px) is below this
CUTMIX_MIN_VISIBLE = 0.5  # CutMix: drop a box of the base image when the pasted patch hides more than half of it

Sample = tuple[Any, np.ndarray, np.ndarray]  # (image, boxes float32 [N, 4] xyxy, labels int64 [N])


def rand(generator: torch.Generator | None) -> float:
    """A uniform float in [0, 1) from ``generator`` (None: torch's global RNG)."""
    return float(torch.rand((), generator=generator))


def uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    """A uniform float in [low, high)."""
    return low + (high - low) * rand(generator)


def randint(generator: torch.Generator | None, high: int) -> int:
    """A uniform integer in [0, high)."""
    return int(torch.randint(0, high, (), generator=generator))


def beta(generator: torch.Generator | None, alpha: float) -> float:
    """A draw from Beta(alpha, alpha), through a NumPy generator seeded from ``generator``."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def filter_boxes(boxes: np.ndarray, labels: np.ndarray, area_before: np.ndarray,
                 min_side: float = MIN_SIDE, min_fraction: float = MIN_KEEP_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Keep boxes (xyxy) whose sides are at least ``min_side`` and whose area is at least
    ``min_fraction`` of ``area_before`` (their area before clipping, same pixel space)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= min_side) & (h >= min_side) & (w * h >= min_fraction * area_before)
    return boxes[keep].astype(np.float32), labels[keep]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ----------------------------------------------------------------------------- photometric


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour jitter parameters (see ``config/base.py``, section ``augment``).

    ``hsv_prob``: probability of an HSV jitter; hue shifted by ``U(-hsv_h, hsv_h)`` of the hue
    circle, saturation and value multiplied by ``U(1 - hsv_s, 1 + hsv_s)`` / ``U(1 - hsv_v, 1 + hsv_v)``.
    ``brightness``: add ``U(-b, b) * 255``; ``contrast``: scale the deviation from the image mean by
    ``U(1 - c, 1 + c)``; 0 turns each off.
    """

    hsv_prob: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    brightness: float = 0.0
    contrast: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.hsv_prob > 0 or self.brightness > 0 or self.contrast > 0


def photometric(image: Image.Image, cfg: PhotometricConfig, generator: torch.Generator | None) -> Image.Image:
    """Colour-jittered RGB copy of ``image``; geometry (and so every box) is unchanged. Draws
    nothing from ``generator`` for the parts that are off."""
    if not cfg.enabled:
        return image
    image = image.convert("RGB")
    if cfg.hsv_prob > 0 and rand(generator) < cfg.hsv_prob:
        dh = uniform(generator, -cfg.hsv_h, cfg.hsv_h)
        gs = uniform(generator, 1 - cfg.hsv_s, 1 + cfg.hsv_s)
        gv = uniform(generator, 1 - cfg.hsv_v, 1 + cfg.hsv_v)
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + dh * 256.0, 256.0)
        hsv[..., 1] *= gs
        hsv[..., 2] *= gv
        hsv8 = np.ascontiguousarray(np.clip(hsv + 0.5, 0, 255).astype(np.uint8))
        image = Image.frombytes("HSV", image.size, hsv8.tobytes()).convert("RGB")
    if cfg.brightness > 0 or cfg.contrast > 0:
        arr = np.asarray(image, dtype=np.float32)
        if cfg.contrast > 0:
            mean = arr.mean()
            arr = (arr - mean) * uniform(generator, 1 - cfg.contrast, 1 + cfg.contrast) + mean
        if cfg.brightness > 0:
            arr = arr + uniform(generator, -cfg.brightness, cfg.brightness) * 255.0
        image = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    return image


# ----------------------------------------------------------------------------- mosaic


def resize_region(image: Image.Image, size: tuple[int, int], region: tuple[int, int, int, int]) -> Image.Image:
    """The ``region = (x0, y0, x1, y1)`` (pixels of the resized picture) of ``image`` resized (bilinear) to
    ``size = (w, h)``, resampled alone: only the kept pixels are computed."""
    w, h = image.size
    if region == (0, 0, *size):
        return image.resize(size, Image.BILINEAR)
    sx, sy = w / size[0], h / size[1]
    x0, y0, x1, y1 = region
    return image.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def mosaic(tiles: Sequence[Sample], size: int, generator: torch.Generator | None,
           fill: tuple[int, int, int] = (124, 116, 104)) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` mosaic of up to four pictures (YOLOv4 style).

    ``tiles``: ``(PIL image, boxes xyxy in its original pixels, labels)``; each picture is resized
    so its longer side is ``size`` and placed in one quadrant around a random centre (uniform in
    the middle half of the canvas): the first with its bottom-right corner at the centre, then
    top-right, bottom-left, bottom-right. Returns the mosaic (``fill`` where no picture is), the
    boxes in mosaic pixels, clipped to their picture's visible part, and the labels.
    """
    S = int(size)
    canvas = Image.new("RGB", (S, S), tuple(int(v) for v in fill))
    xc = int(round(uniform(generator, 0.25 * S, 0.75 * S)))
    yc = int(round(uniform(generator, 0.25 * S, 0.75 * S)))
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(list(tiles)[:4]):
        w, h = image.size
        r = S / max(w, h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        ox = xc - nw if k in (0, 2) else xc
        oy = yc - nh if k in (0, 1) else yc
        # resample only the part of the resized picture that lands on the canvas (about a quarter of it)
        vx0, vy0, vx1, vy1 = max(ox, 0), max(oy, 0), min(ox + nw, S), min(oy + nh, S)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        canvas.paste(resize_region(rgb, (nw, nh), (vx0 - ox, vy0 - oy, vx1 - ox, vy1 - oy)), (vx0, vy0))
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([nw / w, nh / h, nw / w, nh / h],
                                                                          dtype=np.float32)
        b = b + np.array([ox, oy, ox, oy], dtype=np.float32)
        area0 = _area(b)
        lo = np.array([max(ox, 0), max(oy, 0)] * 2, dtype=np.float32)
        hi = np.array([min(ox + nw, S), min(oy + nh, S)] * 2, dtype=np.float32)
        b = np.clip(b, lo, hi)
        b, lab = filter_boxes(b, np.asarray(labels, dtype=np.int64).reshape(-1), area0)
        all_boxes.append(b)
        all_labels.append(lab)
    boxes_out = np.concatenate(all_boxes).astype(np.float32) if all_boxes else np.zeros((0, 4), np.float32)
    labels_out = np.concatenate(all_labels).astype(np.int64) if all_labels else np.zeros(0, np.int64)
    return canvas, boxes_out.reshape(-1, 4), labels_out


# ----------------------------------------------------------------------------- MixUp / CutMix


def mixup(a: Sample, b: Sample, ratio: float) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """MixUp of two transformed samples ``(image float32 [3, S, S], boxes xyxy input px, labels)``:
    the image ``ratio * a + (1 - ratio) * b``, the boxes and labels of both."""
    image = a[0] * ratio + b[0] * (1.0 - ratio)
    boxes = np.concatenate([np.asarray(a[1], np.float32).reshape(-1, 4), np.asarray(b[1], np.float32).reshape(-1, 4)])
    labels = np.concatenate([np.asarray(a[2], np.int64).reshape(-1), np.asarray(b[2], np.int64).reshape(-1)])
    return image, boxes, labels


def cutmix_box(height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """The CutMix rectangle ``(x1, y1, x2, y2)`` in pixels of an ``height`` x ``width`` image:
    side ratio ``sqrt(1 - lam)``, ``lam ~ U(0, 1)``, centre uniform, clipped to the image."""
    cut = float(np.sqrt(1.0 - rand(generator)))
    cw, ch = width * cut, height * cut
    cx, cy = uniform(generator, 0, width), uniform(generator, 0, height)
    x1, x2 = int(round(np.clip(cx - cw / 2, 0, width))), int(round(np.clip(cx + cw / 2, 0, width)))
    y1, y2 = int(round(np.clip(cy - ch / 2, 0, height))), int(round(np.clip(cy + ch / 2, 0, height)))
    return x1, y1, x2, y2


def occlude_boxes(boxes: np.ndarray, labels: np.ndarray, patch: tuple[int, int, int, int],
                  min_visible: float = CUTMIX_MIN_VISIBLE) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy) of an image after ``patch`` (xyxy) was pasted over it: a box the patch cuts
    across its whole height (width) from one side shrinks to the visible rectangle; a box with
    less than ``min_visible`` of its area left visible, or too small after shrinking
    (see :func:`filter_boxes`), is dropped."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    if not len(b):
        return b, np.asarray(labels, np.int64).reshape(-1)
    px1, py1, px2, py2 = (float(v) for v in patch)
    area0 = _area(b)
    full_h = (py1 <= b[:, 1]) & (py2 >= b[:, 3])
    full_w = (px1 <= b[:, 0]) & (px2 >= b[:, 2])
    left = full_h & (px1 <= b[:, 0]) & (px2 > b[:, 0]) & (px2 < b[:, 2])
    right = full_h & (px2 >= b[:, 2]) & (px1 > b[:, 0]) & (px1 < b[:, 2])
    top = full_w & (py1 <= b[:, 1]) & (py2 > b[:, 1]) & (py2 < b[:, 3])
    bottom = full_w & (py2 >= b[:, 3]) & (py1 > b[:, 1]) & (py1 < b[:, 3])
    b[left, 0] = px2
    b[right, 2] = px1
    b[top, 1] = py2
    b[bottom, 3] = py1
    iw = np.clip(np.minimum(b[:, 2], px2) - np.maximum(b[:, 0], px1), 0, None)
    ih = np.clip(np.minimum(b[:, 3], py2) - np.maximum(b[:, 1], py1), 0, None)
    visible = 1.0 - iw * ih / np.maximum(_area(b), 1e-9)
    lab = np.asarray(labels, np.int64).reshape(-1)
    ok = visible >= min_visible
    return filter_boxes(b[ok], lab[ok], area0[ok])


def cutmix(a: Sample, b: Sample, generator: torch.Generator | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """CutMix of two transformed samples ``(image float32 [3, S, S], boxes xyxy input px, labels)``:
    a random rectangle (:func:`cutmix_box`) of ``b`` is pasted into ``a`` at the same place. ``a``'s
    boxes follow :func:`occlude_boxes`; ``b``'s are clipped to the rectangle and filtered."""
    image = a[0].clone()
    _, height, width = image.shape
    x1, y1, x2, y2 = cutmix_box(height, width, generator)
    image[:, y1:y2, x1:x2] = b[0][:, y1:y2, x1:x2]
    boxes_a, labels_a = occlude_boxes(a[1], a[2], (x1, y1, x2, y2))
    bb = np.asarray(b[1], np.float32).reshape(-1, 4)
    area0 = _area(bb)
    bb = np.clip(bb, np.array([x1, y1, x1, y1], np.float32), np.array([x2, y2, x2, y2], np.float32))
    boxes_b, labels_b = filter_boxes(bb, np.asarray(b[2], np.int64).reshape(-1), area0)
    return image, np.concatenate([boxes_a, boxes_b]).astype(np.float32), np.concatenate([labels_a, labels_b])


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AugmentConfig:
    """The dataset-level augmentations of a training loader (see ``config/base.py``, ``augment``)."""

    photometric: PhotometricConfig = PhotometricConfig()
    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0
    mixup_alpha: float = 8.0
    cutmix_prob: float = 0.0

    @property
    def mixes(self) -> bool:
        """Whether a sample may need other samples (mosaic, MixUp or CutMix)."""
        return self.mosaic_prob > 0 or self.mixup_prob > 0 or self.cutmix_prob > 0

    @classmethod
    def from_config(cls, cfg: Any) -> "AugmentConfig":
        """From a config's ``augment`` section; defaults (all off) for a config without one (e.g. the
        embedded config of a checkpoint written before the section existed)."""
        section = getattr(cfg, "augment", None)
        values = section.as_dict() if hasattr(section, "as_dict") else {}
        photo = PhotometricConfig(**{k: float(values[k]) for k in PhotometricConfig.__dataclass_fields__
                                     if k in values})
        kw = {k: float(values[k]) for k in ("mosaic_prob", "mixup_prob", "mixup_alpha", "cutmix_prob") if k in values}
        for k in ("hsv_prob", "mosaic_prob", "mixup_prob", "cutmix_prob"):
            v = values.get(k, 0.0)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"augment.{k} = {v} is a probability; use a value in [0, 1]")
        if kw.get("mixup_alpha", 8.0) <= 0:
            raise ValueError(f"augment.mixup_alpha = {kw['mixup_alpha']} must be > 0")
        return cls(photo, **kw)
