"""The in-memory description of one annotated image, shared by every reader and the dataset."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """Dataset description or annotation data is invalid; the message names the file, the
    field (or annotation / object) and how to fix it."""


@dataclass
class ImageRecord:
    """One image and its annotations.

    ``boxes`` is float32 ``[N, 4]`` ``xyxy`` in *original* image pixels (continuous
    coordinates: a box covering pixel columns 0..9 is ``x1=0, x2=10``); ``labels`` is int64
    ``[N]`` with contiguous class indices ``0..C-1``. ``file_name`` is an absolute path.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise DatasetError(
                f"{self.file_name}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )
