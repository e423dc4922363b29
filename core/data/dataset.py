"""Torch dataset over :class:`ImageRecord` lists, and the batch collate function."""
from __future__ import annotations

from typing import Any, Callable, Sequence

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

    def __init__(self, records: Sequence[ImageRecord], transform: Transform) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.records[index]
        image, boxes, labels, scale = self.transform(load_image(rec), rec.boxes, rec.labels)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(rec.image_id),
            "scale": float(scale),
            "orig_size": (int(rec.height), int(rec.width)),
        }
        return image, target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images into float32 ``[B, 3, S, S]``; targets stay a list of per-image dicts."""
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]
