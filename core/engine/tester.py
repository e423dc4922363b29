"""Loading a trained detector and testing it on a dataset split."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from core.tasks.anchor_fit import use_trained_anchors
from core.engine.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, load_latest
from core.config.loading import Config
from core.engine.inference import inference_model
from core.engine.output_paths import atomic_output
from core.engine.runtime import run_dir
from core.tasks.task import Task, build_task
from symbol.builder import build_detector


@dataclass
class TrainedModel:
    """A network with trained weights and what it was trained on."""

    model: nn.Module
    task: Task
    class_names: list[str]
    category_ids: list[int]
    source: Path


def find_weights(cfg: Config, epoch: int | None = None, weights: str | None = None) -> Path:
    """``weights`` if given (``"best"``: the run's ``best.pt``), else the run's checkpoint of ``epoch``,
    else its newest checkpoint that loads and verifies."""
    return _find_weights(cfg, epoch, weights)[0]


def load_run_weights(cfg: Config, epoch: int | None, weights: str | None, device: torch.device) -> TrainedModel:
    """:func:`find_weights` then :func:`load_trained`, reading (and verifying) the checkpoint once."""
    path, state = _find_weights(cfg, epoch, weights)
    return load_trained(cfg, path, device, state=state)


def _find_weights(cfg: Config, epoch: int | None, weights: str | None) -> tuple[Path, dict | None]:
    """The weights' path, and the checkpoint when finding it meant reading it (the newest one)."""
    out = run_dir(cfg)
    if weights == "best":
        if not (out / "best.pt").exists():
            raise CheckpointError(f"no best.pt in {out}: it is written after an evaluation (schedule.eval_every > 0) "
                                  "that beats the previous ones; pass --weights FILE or --epoch N instead")
        return out / "best.pt", None
    if weights:
        return Path(weights), None
    if epoch is not None:
        return checkpoint_path(out, epoch), None
    found = load_latest(out, allow_pickle=cfg.pretrain.allow_pickle)
    if found is None:
        raise CheckpointError(f"no checkpoint in {out}; train first (python detection_train.py --config "
                              f"{cfg.source}) or pass --weights FILE")
    return found[1], found[0]


def load_trained(cfg: Config, path: Path, device: torch.device, state: dict | None = None) -> TrainedModel:
    """Build ``cfg``'s network for the checkpoint's classes and load its weights (EMA when saved).
    ``state`` is the checkpoint at ``path`` when the caller has read it already; else it is read
    with ``cfg.pretrain.allow_pickle`` (see :func:`core.engine.checkpoint.load_checkpoint`)."""
    if state is None:
        state = load_checkpoint(path, map_location="cpu", allow_pickle=cfg.pretrain.allow_pickle)
    class_names = state.get("class_names")
    if not class_names:
        raise CheckpointError(f"checkpoint '{path}' has no class_names; it was not written by detection_train.py")
    use_trained_anchors(cfg, state.get("config"))  # anchors.auto may have replaced the config's anchors
    model = build_detector(cfg, len(class_names))
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint '{path}' does not fit config {cfg.source}: {str(err).splitlines()[0]} "
                              "(was it trained with another backbone/neck/head?)") from None
    model = inference_model(model, device, cfg.General.compile)
    category_ids = state.get("category_ids") or list(range(1, len(class_names) + 1))
    return TrainedModel(model, build_task(cfg, model), list(class_names), list(category_ids), Path(path))


def read_results(path: Path, records: Sequence[Any], split: str) -> list[dict[str, Any]]:
    """The COCO result rows of the json at ``path`` (a list of ``{image_id, category_id, bbox, score}``, bbox
    xywh in original pixels, as ``detection_test.py`` writes them) that belong to ``records``, the pictures of
    ``split`` (``core.data.records`` records, ``file_name`` absolute). A row with a ``file_name`` (as
    ``utils.predict`` writes them: it numbers the pictures it was given in its own order; a relative name is
    taken from the working folder) is matched to the split's picture of that file and takes its ``image_id``
    (one copy per entry where the split names the picture more than once). Raises ``DatasetError`` (one line
    naming the file, the row and the fix) for a file that is not such a list, and when no row belongs to the
    split; rows of other pictures are left out with a warning."""
    from core.data.records import DatasetError

    try:
        rows = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a json file ({err}); --results takes the json list detection_test.py "
                           "or utils.predict writes (a .jsonl of a video is not scored)") from None
    if not isinstance(rows, list):
        kind = "a COCO annotation file" if isinstance(rows, dict) and "annotations" in rows else type(rows).__name__
        raise DatasetError(f"{path}: is {kind}, not a list of detections; --results takes the json list "
                           "detection_test.py or utils.predict writes")
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and {"image_id", "category_id", "bbox", "score"} <= row.keys()
                and isinstance(row["bbox"], list) and len(row["bbox"]) == 4):
            raise DatasetError(f"{path}: row {i} is not a detection (needs image_id, category_id, bbox [x, y, w, h] "
                               f"and score): {str(row)[:120]}")
    ids = {r.image_id for r in records}
    by_file: dict[str, list[int]] = {}  # a picture the split names twice (oversampled) has two ids
    for r in records:
        by_file.setdefault(os.path.realpath(r.file_name), []).append(r.image_id)
    kept: list[dict[str, Any]] = []
    left_out = 0
    for row in rows:
        own = (by_file.get(os.path.realpath(row["file_name"]), []) if "file_name" in row
               else [row["image_id"]] if row["image_id"] in ids else [])
        kept += [{**row, "image_id": i} for i in own]
        left_out += not own
    if rows and not kept:
        lo, hi = (min(ids), max(ids)) if ids else (None, None)
        raise DatasetError(f"{path}: none of its {len(rows)} detections is of a picture of split '{split}' (image ids "
                           f"{lo}..{hi}, or the pictures' files); pass the --split they were predicted on, or results "
                           "of this split's pictures")
    if left_out:
        print(f"warning: {path}: {left_out} of {len(rows)} detections are of pictures not in split '{split}'; "
              "left out")
    return kept


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj))
