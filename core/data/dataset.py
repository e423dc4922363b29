"""Torch dataset over :class:`ImageRecord` lists, and the batch collate function.

Mosaic, MixUp and CutMix (``core.data.augment``) need several pictures per sample, so they live
here: the dataset draws the partner indices, like every other random choice, from the sample's
generator, so an item stays a pure function of its ``(index, seed)`` key.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augment import AugmentConfig, beta, cutmix, mixup, mosaic, rand, randint
from .image_io import open_image
from .records import DatasetError, ImageRecord

Transform = Callable[[Image.Image, np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray, float]]


def load_image(record: ImageRecord) -> Image.Image:
    """Decode ``record.file_name`` as 8-bit RGB the right way up (``core.data.image_io.open_image``:
    EXIF orientation applied, 16-bit scaled); raises DatasetError naming the file when it cannot be
    read, declares too many pixels or its size differs from the annotated ``width`` x ``height``."""
    image = open_image(record.file_name)
    if image.size != (record.width, record.height):
        raise DatasetError(f"{record.file_name}: image is {image.size[0]}x{image.size[1]} but the annotations "
                           f"say {record.width}x{record.height}; fix the annotation's width/height")
    return image


class DetectionDataset(Dataset):
    """Item ``i`` is ``(image float32 [3, S, S], target)``; ``target`` holds ``boxes`` float32
    ``[N, 4]`` xyxy *input* pixels, ``labels`` int64 ``[N]``, ``image_id`` int, ``scale`` float
    (input px per original px) and ``orig_size`` ``(h, w)`` of the original image.

    ``augment`` (training only) adds mosaic (before the transform, on original pictures), MixUp
    and CutMix (after it, on two transformed samples); for a mixed item ``scale`` and
    ``orig_size`` describe its own record's picture only.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Transform, skip_bad: bool = False,
                 augment: AugmentConfig | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.skip_bad = skip_bad
        self.augment = augment if augment is not None and augment.mixes else None  # photometric: in the transform
        if self.augment is not None and self.augment.mosaic_prob > 0 and not hasattr(transform, "size"):
            raise ValueError("augment.mosaic_prob > 0 needs a transform with a 'size' (the input side S), "
                             "such as core.data.transforms.DetectionTransform")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """``key`` is an index, or ``(index, seed)`` to draw the augmentation from ``seed``
        (as ``core.data.sampler.EpochSampler`` yields) instead of torch's global RNG. With
        ``skip_bad``, an unreadable image gives None (see :func:`collate`)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[index]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sample = self._sample(index, generator, mix=True)
        if sample is None:
            return None
        image, boxes, labels, scale = sample
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(rec.image_id),
            "scale": float(scale),
            "orig_size": (int(rec.height), int(rec.width)),
        }
        return image, target

    def _load(self, index: int) -> Image.Image | None:
        """The record's picture; None (with a warning) when unreadable and ``skip_bad``."""
        try:
            return load_image(self.records[index])
        except DatasetError as err:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipped: {err}", stacklevel=2)
            return None

    def _sample(self, index: int, generator: torch.Generator | None,
                mix: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float] | None:
        """Load, (mosaic,) transform and (MixUp / CutMix when ``mix``) one sample; None when its
        own picture is unreadable and ``skip_bad``. Unreadable partners are left out."""
        rec = self.records[index]
        image = self._load(index)
        if image is None:
            return None
        boxes, labels = rec.boxes, rec.labels
        aug = self.augment
        if aug is not None and aug.mosaic_prob > 0 and rand(generator) < aug.mosaic_prob:
            tiles = [(image, boxes, labels)]
            for j in [randint(generator, len(self.records)) for _ in range(3)]:
                partner = self._load(j)
                if partner is not None:
                    tiles.append((partner, self.records[j].boxes, self.records[j].labels))
            image, boxes, labels = mosaic(tiles, self.transform.size, generator,  # type: ignore[attr-defined]
                                          getattr(self.transform, "fill", (124, 116, 104)))
        image_t, boxes, labels, scale = self.transform(image, boxes, labels, generator)
        if mix and aug is not None:
            if aug.mixup_prob > 0 and rand(generator) < aug.mixup_prob:
                other = self._sample(randint(generator, len(self.records)), generator, mix=False)
                if other is not None:
                    ratio = beta(generator, aug.mixup_alpha)
                    image_t, boxes, labels = mixup((image_t, boxes, labels), other[:3], ratio)
            if aug.cutmix_prob > 0 and rand(generator) < aug.cutmix_prob:
                other = self._sample(randint(generator, len(self.records)), generator, mix=False)
                if other is not None:
                    image_t, boxes, labels = cutmix((image_t, boxes, labels), other[:3], generator)
        return image_t, boxes, labels, scale


class Targets(list):
    """The per-image target dicts of a batch; ``skipped`` counts the batch's images that could not be
    read and were left out (``skip_bad``)."""

    skipped: int = 0


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]] | None]) -> tuple[torch.Tensor, Targets]:
    """Stack images into float32 ``[B, 3, S, S]``; targets stay a list of per-image dicts. Items that
    are ``None`` (skipped unreadable images) are dropped and counted in ``targets.skipped``; a batch
    of only such items gives an empty ``[0, 3, 0, 0]`` image tensor."""
    good = [item for item in batch if item is not None]
    images = torch.stack([item[0] for item in good]) if good else torch.zeros(0, 3, 0, 0)
    targets = Targets(item[1] for item in good)
    targets.skipped = len(batch) - len(good)
    return images, targets
