"""The in-memory description of one annotated image, shared by every reader and the dataset."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    ``width`` / ``height`` are those of the picture as displayed (EXIF orientation applied, see
    ``core.data.image_io``), the space of the boxes.

    ``ignore_boxes`` / ``ignore_labels`` (same forms, default empty) are objects evaluation neither
    rewards nor penalises (VOC ``difficult``): a detection matching one is no false positive and
    leaving one undetected is no miss. They are not in ``boxes``, so they are no training target
    and everything that reads ``boxes`` (training, augmentation, conversion, the check's counts)
    leaves them out.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise DatasetError(
                f"{self.file_name}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )
        self.ignore_boxes = np.asarray(self.ignore_boxes, dtype=np.float32).reshape(-1, 4)
        self.ignore_labels = np.asarray(self.ignore_labels, dtype=np.int64).reshape(-1)
        if len(self.ignore_boxes) != len(self.ignore_labels):
            raise DatasetError(f"{self.file_name}: {len(self.ignore_boxes)} ignored boxes but "
                               f"{len(self.ignore_labels)} labels")
