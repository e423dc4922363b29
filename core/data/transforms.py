"""Image + box transforms: (when training with a tile size: a random tile of the original
picture,) resize (longer side to S, random scale when training), random crop or bottom/right zero
padding to S x S, horizontal flip, normalisation.

A transform is a callable ``(PIL image, boxes, labels, generator=None) -> (image, boxes, labels,
scale)`` with ``boxes`` float32 ``[N, 4]`` xyxy in *original* pixels going in and in *input*
pixels coming out, ``image`` float32 tensor ``[3, S, S]`` and ``scale`` input pixels per original
pixel. Randomness comes from the per-call ``generator`` (the dataset seeds one per sample from
``(index, seed)``), else the one given at construction, else torch's global RNG. Photometric
jitter (``core.data.augment``) is applied after the geometry when configured.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .augment import (MIN_KEEP_FRACTION, MIN_SIDE, PhotometricConfig, filter_boxes, photometric, rand as _rand,
                      resize_region)

__all__ = ["DetectionTransform", "build_transform", "MIN_KEEP_FRACTION", "MIN_SIDE"]


class DetectionTransform:
    """See :func:`build_transform`."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                 hflip_prob: float = 0.5, scale_range: tuple[float, float] = (1.0, 1.0),
                 generator: torch.Generator | None = None, photometric: PhotometricConfig | None = None,
                 tile: int = 0) -> None:
        mean_a, std_a = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if mean_a.shape != (3,) or std_a.shape != (3,) or (std_a <= 0).any():
            raise ValueError(f"mean and std need 3 values each with std > 0, got {mean}, {std}")
        if max(mean_a.max(), std_a.max()) <= 1.0:  # given in 0..1 units: convert to 0..255
            mean_a, std_a = mean_a * 255.0, std_a * 255.0
        self.mean = torch.from_numpy(mean_a).view(3, 1, 1)
        self.std = torch.from_numpy(std_a).view(3, 1, 1)
        self.size, self.train = int(image_size), bool(train)
        self.hflip_prob, self.scale_range = float(hflip_prob), (float(scale_range[0]), float(scale_range[1]))
        self.generator = generator
        self.photometric = photometric if (train and photometric is not None and photometric.enabled) else None
        if int(tile) != tile or tile < 0:
            raise ValueError(f"dataset.tile = {tile} must be 0 (off) or a tile side in original pixels (> 0)")
        self.tile = int(tile) if train else 0

    @property
    def fill(self) -> tuple[int, int, int]:
        """The RGB colour (0..255) that normalises to 0, i.e. the colour of the padding."""
        return tuple(int(round(float(v))) for v in self.mean.view(3))  # type: ignore[return-value]

    def __call__(self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float]:
        """Transform one sample; randomness from ``generator``, else the one given at construction,
        else torch's global RNG."""
        gen = generator if generator is not None else self.generator
        S = self.size
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        area_uncut = None  # box areas before the tile cut (original px), when one is made
        if self.tile and (image.size[0] > self.tile or image.size[1] > self.tile):
            area_uncut = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            image, boxes = random_tile(image, boxes, self.tile, gen)
        w, h = image.size
        target = S
        if self.train and self.scale_range[1] != self.scale_range[0]:
            lo, hi = self.scale_range
            target = S * (lo + (hi - lo) * _rand(gen))
        scale = target / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        boxes = boxes * np.float32(scale)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if area_uncut is not None:
            area0 = area_uncut * np.float32(scale * scale)

        x0 = y0 = 0
        if self.train and (nw > S or nh > S):
            x0 = int(torch.randint(0, max(nw - S, 0) + 1, (), generator=gen))
            y0 = int(torch.randint(0, max(nh - S, 0) + 1, (), generator=gen))
        cw, ch = min(nw, S), min(nh, S)
        image = resize_region(image, (nw, nh), (x0, y0, x0 + cw, y0 + ch))  # only the kept crop is resampled
        boxes = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
        boxes = np.clip(boxes, 0, np.array([cw, ch, cw, ch], dtype=np.float32))

        if self.train and self.hflip_prob > 0 and _rand(gen) < self.hflip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], axis=1)

        boxes, labels = filter_boxes(boxes, labels, area0)

        if self.photometric is not None:
            image = photometric(image, self.photometric, gen)
        pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8))
        out = torch.zeros(3, S, S, dtype=torch.float32)  # the padding: 0 is the mean colour, normalised
        picture = out[:, :ch, :cw]
        picture.copy_(pixels.permute(2, 0, 1))
        picture.sub_(self.mean).div_(self.std)
        return out, boxes, labels, float(scale)


def random_tile(image: Image.Image, boxes: np.ndarray, tile: int,
                generator: torch.Generator | None) -> tuple[Image.Image, np.ndarray]:
    """A random ``tile`` x ``tile`` window of ``image`` (a side shorter than ``tile`` is kept whole),
    its top-left corner uniform over the positions inside the picture and drawn from ``generator``
    (x, then y). Returns the cut picture and ``boxes`` (float32 ``[N, 4]`` xyxy original pixels) in
    its pixels, clipped to it; the caller drops boxes too little of which is left."""
    w, h = image.size
    x0 = int(torch.randint(0, max(w - tile, 0) + 1, (), generator=generator))
    y0 = int(torch.randint(0, max(h - tile, 0) + 1, (), generator=generator))
    cw, ch = min(w, tile), min(h, tile)
    image = image.crop((x0, y0, x0 + cw, y0 + ch))
    boxes = np.clip(boxes - np.array([x0, y0, x0, y0], dtype=np.float32), 0,
                    np.array([cw, ch, cw, ch], dtype=np.float32))
    return image, boxes.astype(np.float32)


def build_transform(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                    hflip_prob: float = 0.5, scale_range: tuple[float, float] = (1.0, 1.0),
                    generator: torch.Generator | None = None,
                    photometric: PhotometricConfig | None = None, tile: int = 0) -> DetectionTransform:
    """Transform for training (``train=True``: random scale, random crop, flip) or evaluation.

    The longer image side is resized (PIL bilinear) to ``image_size * s``, ``s`` uniform in
    ``scale_range`` when training, else 1. When training and the result exceeds
    ``image_size``, a random ``image_size`` crop is taken; the picture is then placed at the
    top-left of an ``image_size`` square, padded bottom/right with zeros after normalisation.
    Boxes (xyxy, original px in, input px out) follow the image, are clipped to the crop, and
    dropped when their width or height is below 2 px or under 20% of their area remains.
    ``mean``/``std`` are per RGB channel, in 0..1 units (values above 1 are taken as 0..255
    units). Randomness uses ``generator`` or, by default, torch's global RNG. ``photometric``
    (training only) jitters colours after the geometry; boxes are unaffected.

    ``tile`` (training only; ``dataset.tile``; 0 = off): first cut a random ``tile`` x ``tile``
    window of the original picture (:func:`random_tile`; pictures no larger than the tile are left
    whole), so a model trained at ``image_size = tile`` sees large pictures at their own
    resolution, as tiled prediction (``core.inference.tiling``) shows them. Boxes are clipped to the window
    and dropped by the same rule, their area compared with the uncut box's.
    """
    return DetectionTransform(image_size, mean, std, train, hflip_prob, scale_range, generator, photometric, tile)
