"""Inference on pictures with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(image)``.

A checkpoint written by ``detection_train.py`` carries its resolved config (``state["config"]``,
a dict of sections) and its class names, so no config file is needed::

    det = Predictor.from_checkpoint("runs/demo/epoch_0010.pt")
    pred = det.predict("street.jpg")          # path, PIL image or HxWx3 uint8 array
    pred.boxes, pred.scores, pred.names       # xyxy in pixels of the picture as given

Test-time augmentation (``tta=TTAPlan.parse("flip,0.8,1.2")``) runs extra passes (mirrored,
rescaled inputs) and fuses them with weighted boxes fusion. Tiled prediction
(``tiling=TilePlan(256, 0.2)``, ``core.inference.tiling``) predicts overlapping windows of a large picture
at their own resolution and merges their detections.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.engine.checkpoint import CheckpointError, load_checkpoint
from core.config.loading import Config, config_from_dict, load_config
from core.data.dataset import DetectionDataset, collate, load_image
from core.data.image_io import open_image, to_rgb
from core.data.records import ImageRecord
from core.data.transforms import DetectionTransform, build_transform
from core.engine.inference import detect_batch
from core.engine.runtime import select_device
from core.inference.ensemble import WBF_IOU, TTAPlan, fuse_detections, scaled_size
from core.inference.exported import DEFAULT_CALIBRATION_IMAGES, deployed_network
from core.ops.postprocess import Detections
from core.tasks.task import build_task
from core.inference.tiling import TilePlan, merge_detections, shift_detections, tile_count, tile_windows

ImageInput = str | os.PathLike | Image.Image | np.ndarray
TTA_SIZE_MULTIPLE = 32  # rescaled TTA inputs are rounded to a multiple of this (the P5 stride)


@dataclass
class Prediction:
    """One picture's detections: ``boxes`` float32 ``[K, 4]`` xyxy in pixels of the picture as given
    (original pixels), ``scores`` float32 ``[K]`` (best first), ``labels`` int64 ``[K]`` contiguous
    class indices, ``names`` the class name of each detection."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.scores)


def config_from_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Config:
    """The :class:`Config` a checkpoint was trained with, rebuilt from ``state["config"]`` on top of
    ``config/base.py``'s defaults (so fields added since the checkpoint was written get their
    defaults; fields no longer declared are ignored)."""
    saved = state.get("config")
    if not isinstance(saved, dict) or not saved:
        raise CheckpointError(f"checkpoint '{path}' carries no config; pass config=... (the experiment module)")
    return config_from_dict(saved, source=f"{path} (embedded config)")


def to_pil(image: ImageInput) -> Image.Image:
    """A path, PIL image or ``[H, W, 3]`` uint8 RGB array as an 8-bit RGB PIL image. A path is read
    by ``core.data.image_io.open_image`` (EXIF orientation applied, so boxes are in pixels of the
    picture as a viewer shows it; 16-bit scaled; ImageReadError, a ValueError, naming an unreadable
    file); a PIL image is taken as it is (16-bit values scaled, no orientation applied)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an array image must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
        return Image.fromarray(np.ascontiguousarray(image))
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' not found")
    return open_image(path)


class Predictor:
    """A trained network ready for inference (eval mode, on ``device``).

    ``cfg`` supplies the input size, normalisation and post-processing (``test`` section);
    ``class_names[c]`` / ``category_ids[c]`` name contiguous label ``c``.
    """

    def __init__(self, model: nn.Module, cfg: Config, class_names: Sequence[str], category_ids: Sequence[int],
                 device: torch.device, task: Any | None = None, source: str = "") -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.task = task if task is not None else build_task(cfg, model)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.device = device
        self.source = source
        self.size_multiple = TTA_SIZE_MULTIPLE
        self.wbf_iou = WBF_IOU  # IoU at which WBF joins the boxes of TTA passes

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: str | os.PathLike | Config | None = None,
                        device: str | torch.device = "auto", overrides: Iterable[str] = (),
                        allow_pickle: bool = False, runtime: str = "torch",
                        calibration_images: int = DEFAULT_CALIBRATION_IMAGES) -> "Predictor":
        """Load a checkpoint (EMA weights when saved). ``config``: None to use the config embedded in
        the checkpoint, else a config module path or a :class:`Config`; ``overrides``
        (``Section.field=value``) are applied to it (e.g. ``test.min_det_score=0.3``).
        ``allow_pickle``: read a checkpoint that needs full unpickling (which can run code; see
        :func:`core.engine.checkpoint.load_checkpoint`); the config's ``pretrain.allow_pickle`` is not
        consulted, since the config may come from the checkpoint itself. ``runtime``: ``"torch"``, or
        ``"onnxruntime"`` / ``"openvino"`` / ``"openvino-int8"`` to run the network exported to ONNX on the CPU
        (``core.inference.exported``; fixed at the config's input size, ``test.batch_image`` a call; INT8
        calibrated on ``calibration_images`` images of the config's training split)."""
        from core.engine.tester import load_trained

        state = load_checkpoint(Path(path), map_location="cpu", allow_pickle=allow_pickle)
        class_names = state.get("class_names")
        if not class_names:
            raise CheckpointError(f"checkpoint '{path}' has no class_names; it was not written by detection_train.py")
        if config is None:
            cfg = config_from_checkpoint(state, path)
        elif isinstance(config, Config):
            cfg = config
        else:
            cfg = load_config(config)
        for assignment in overrides:
            cfg.override(assignment)
        dev = device if isinstance(device, torch.device) else select_device(device)
        if runtime != "torch":
            dev = torch.device("cpu")
        trained = load_trained(cfg, Path(path), dev, state)
        model: Any = trained.model
        if runtime != "torch":
            model = deployed_network(model, trained.task, cfg, runtime, cfg.test.batch_image, calibration_images)
        return cls(model, cfg, trained.class_names, trained.category_ids, dev, task=trained.task, source=str(path))

    # ------------------------------------------------------------------ passes
    def transform(self, scale: float = 1.0) -> DetectionTransform:
        """The evaluation transform at ``scale`` x the config's input size (other than 1: rounded to
        a multiple of ``TTA_SIZE_MULTIPLE``; the networks' ceil-halving pyramids take any size)."""
        d = self.cfg.dataset
        if scale == 1.0:
            return build_transform(d.image_size, d.mean, d.std, train=False)
        return build_transform(scaled_size(d.image_size, scale, self.size_multiple), d.mean, d.std, train=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, targets: Sequence[dict[str, Any]], flip: bool = False) -> list[Detections]:
        """Detections of a padded batch ``[B, 3, S, S]`` made by :meth:`transform`, boxes xyxy in
        *original* pixels (``targets[i]``: ``scale``, ``orig_size``). ``flip``: run on the mirrored
        pictures and mirror the boxes back."""
        return detect_batch(self.model, self.task, images, targets, self.device, self.cfg.General.precision, flip)

    def _fuse(self, passes: list[Detections]) -> Detections:
        if len(passes) == 1:
            return passes[0]
        return fuse_detections(passes, iou_thr=self.wbf_iou, max_det=self.cfg.test.max_det_per_image)

    def predict_records(self, records: Sequence[ImageRecord], tta: TTAPlan | None = None,
                        batch_size: int | None = None, workers: int = 0) -> dict[int, Detections]:
        """Detections per ``image_id`` of dataset records, boxes xyxy original pixels; with ``tta``
        each pass (scale, flip) runs over all records and the passes are fused per image by WBF."""
        plan = tta or TTAPlan()
        bs = batch_size or self.cfg.test.batch_image
        runs: list[dict[int, Detections]] = []
        for scale, flips in _group_passes(plan):
            loader = DataLoader(DetectionDataset(records, self.transform(scale)), batch_size=bs,
                                num_workers=workers, collate_fn=collate)
            per_flip: list[dict[int, Detections]] = [{} for _ in flips]
            for images, targets in loader:
                for k, flip in enumerate(flips):
                    for det, t in zip(self.forward(images, targets, flip), targets):
                        per_flip[k][t["image_id"]] = det
            runs += per_flip
        if len(runs) == 1:
            return runs[0]
        return {i: self._fuse([run[i] for run in runs]) for i in runs[0]}

    def predict_records_tiled(self, records: Sequence[ImageRecord], tiling: TilePlan, tta: TTAPlan | None = None,
                              batch_size: int | None = None, progress: bool = False) -> dict[int, Detections]:
        """Tiled detections (:meth:`detect_tiled`) per ``image_id`` of dataset records, boxes xyxy
        original pixels. The pictures (``core.data.dataset.load_image``) are read and predicted a
        group at a time, as many as give ``batch_size`` (default ``test.batch_image``) windows."""
        bs = batch_size or self.cfg.test.batch_image
        out: dict[int, Detections] = {}
        group: list[ImageRecord] = []
        windows = 0
        for k, rec in enumerate(tqdm(records, desc="tiles", disable=not (progress and sys.stderr.isatty()),
                                     leave=False, file=sys.stderr)):
            group.append(rec)
            windows += tile_count(rec.width, rec.height, tiling)
            if windows >= bs or k == len(records) - 1:
                for r, det in zip(group, self.detect_tiled([load_image(r) for r in group], tiling, tta, bs)):
                    out[r.image_id] = det
                group, windows = [], 0
        return out

    # ------------------------------------------------------------------ pictures
    def detect_tiled(self, pictures: Sequence[Image.Image], tiling: TilePlan, tta: TTAPlan | None = None,
                     batch_size: int | None = None) -> list[Detections]:
        """Detections of each RGB picture (xyxy in its pixels, best first) from its overlapping
        ``tiling.size`` windows (``core.inference.tiling.tile_windows``), each predicted by
        :meth:`detect_pictures` as a picture of its own (with ``tta``), moved back by the window's
        corner and merged (``core.inference.tiling.merge_detections``) with the other windows' and, when
        ``tiling.full``, the whole picture's."""
        crops, owner, corners = [], [], []
        for i, pic in enumerate(pictures):
            for x0, y0, x1, y1 in tile_windows(pic.width, pic.height, tiling.size, tiling.overlap):
                crops.append(pic.crop((x0, y0, x1, y1)))
                owner.append(i)
                corners.append((x0, y0))
        parts: list[list[Detections]] = [[] for _ in pictures]
        for i, corner, det in zip(owner, corners, self.detect_pictures(crops, tta, batch_size)):
            parts[i].append(shift_detections(det, *corner))
        if tiling.full:
            for i, det in enumerate(self.detect_pictures(pictures, tta, batch_size)):
                parts[i].append(det)
        iou = tiling.iou if tiling.iou is not None else (self.cfg.test.nms_thresh if tiling.merge == "nms"
                                                         else self.wbf_iou)
        return [merge_detections(p, tiling.merge, iou, self.cfg.test.max_det_per_image) for p in parts]

    def detect_pictures(self, pictures: Sequence[Image.Image], tta: TTAPlan | None = None,
                        batch_size: int | None = None) -> list[Detections]:
        """Detections of each RGB picture, boxes xyxy in its pixels (the TTA passes fused by WBF),
        ``batch_size`` pictures per forward pass."""
        plan = tta or TTAPlan()
        bs = batch_size or self.cfg.test.batch_image
        passes: list[list[Detections]] = [[] for _ in pictures]
        for scale, flips in _group_passes(plan):
            tf = self.transform(scale)
            for start in range(0, len(pictures), bs):
                chunk = pictures[start:start + bs]
                tensors, targets = [], []
                for pic in chunk:
                    x, _, _, s = tf(pic, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
                    tensors.append(x)
                    targets.append({"scale": s, "orig_size": (pic.height, pic.width)})
                batch = torch.stack(tensors)
                for flip in flips:
                    for k, det in enumerate(self.forward(batch, targets, flip)):
                        passes[start + k].append(det)
        return [self._fuse(dets) for dets in passes]

    def predict_many(self, images: Sequence[ImageInput], score_thresh: float = 0.0, tta: TTAPlan | None = None,
                     batch_size: int | None = None, tiling: TilePlan | None = None) -> list[Prediction]:
        """:meth:`predict` for several pictures, batched (with ``tiling``: their windows)."""
        pictures = [to_pil(im) for im in images]
        if tiling is not None:
            found = self.detect_tiled(pictures, tiling, tta, batch_size)
        else:
            found = self.detect_pictures(pictures, tta, batch_size)
        out = []
        for det in found:
            keep = det.scores >= score_thresh
            boxes, scores, labels = det.boxes[keep].numpy(), det.scores[keep].numpy(), det.labels[keep].numpy()
            order = np.argsort(-scores, kind="stable")
            labels = labels[order].astype(np.int64)
            out.append(Prediction(boxes[order].astype(np.float32), scores[order].astype(np.float32), labels,
                                  [self.class_names[c] for c in labels.tolist()]))
        return out

    def predict(self, image: ImageInput, score_thresh: float = 0.0, tta: TTAPlan | None = None,
                tiling: TilePlan | None = None) -> Prediction:
        """Detect objects in one picture (a path, PIL image or ``[H, W, 3]`` uint8 RGB array).

        Boxes are xyxy in pixels of the picture as given (not of the network input), clipped to
        it; detections scoring below ``score_thresh`` (and the config's ``test.min_det_score``)
        are left out. ``tiling``: predict overlapping windows of the picture and merge them
        (``core.inference.tiling``; the windows go through the network in batches of ``test.batch_image``).
        """
        return self.predict_many([image], score_thresh, tta, batch_size=None if tiling else 1, tiling=tiling)[0]


def _group_passes(plan: TTAPlan) -> list[tuple[float, tuple[bool, ...]]]:
    """The plan's passes grouped by scale: ``[(scale, (False[, True])), ...]``."""
    return [(s, (False, True) if plan.flip else (False,)) for s in plan.scales]
