"""Loading a trained detector and testing it on a dataset split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.tasks.anchor_fit import use_trained_anchors
from core.engine.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, load_latest
from core.config.loading import Config
from core.engine.inference import inference_model
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


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)
