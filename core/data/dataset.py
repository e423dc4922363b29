"""Torch dataset over :class:`ImageRecord` lists, and the batch collate function."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .records import DatasetError, ImageRecord

Transform = Callable[[Image.Image, np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray, np.ndarray, float]]


def load_image(record: ImageRecord) -> Image.Image:
    """Decode ``record.file_name`` as RGB; raises DatasetError naming the file when it cannot be
    read or its size differs from the annotated ``width`` x ``height``."""
    try:
        with Image.open(record.file_name) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"{record.file_name}: cannot read image ({e}); replace or remove it") from None
    if image.size != (record.width, record.height):
        raise DatasetError(f"{record.file_name}: image is {image.size[0]}x{image.size[1]} but the annotations "
                           f"say {record.width}x{record.height}; fix the annotation's width/height")
    return image


class DetectionDataset(Dataset):
    """Item ``i`` is ``(image float32 [3, S, S], target)``; ``target`` holds ``boxes`` float32
    ``[N, 4]`` xyxy *input* pixels, ``labels`` int64 ``[N]``, ``image_id`` int, ``scale`` float
    (input px per original px) and ``orig_size`` ``(h, w)`` of the original image."""

    def __init__(self, records: Sequence[ImageRecord], transform: Transform, skip_bad: bool = False) -> None:
        self.records = list(records)
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``key`` is an index, or ``(index, seed)`` to draw the augmentation from ``seed``
        (as ``core.data.sampler.EpochSampler`` yields) instead of torch's global RNG."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[index]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        try:
            image = load_image(rec)
        except DatasetError as err:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipped: {err}", stacklevel=1)
            return None
        image, boxes, labels, scale = self.transform(image, rec.boxes, rec.labels, generator)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(rec.image_id),
            "scale": float(scale),
            "orig_size": (int(rec.height), int(rec.width)),
        }
        return image, target


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
