"""The automatic fine-tuning recipe: values for the recipe fields a config leaves at ``"auto"``.

``config/base.py`` declares ``General.batch_image``, ``optimizer.type``, ``optimizer.lr``,
``General.bn_momentum``, ``schedule.warmup_epochs`` and ``dataset.scale_min`` / ``scale_max`` as
``"auto"``. A value an experiment module or ``--set`` gives wins. For the rest the trainer calls
:func:`resolve_recipe` when a run first starts, from the training set's size and the run's length:

* **batch**: 8 images per process, halved down to 4 while an epoch would have fewer than 16 optimizer
  steps. A few dozen photos at 8 give 4 steps an epoch; at 4 the same pass over the data makes twice
  the updates for about the same compute, and a fine-tune of a few hundred steps is short of updates,
  not of images per update. Larger datasets keep EfficientDet's 8.

* **optimizer**: AdamW at lr 1e-3 (at any batch) for runs of up to 10 000 steps, SGD at lr 0.01 per
  16 images for longer ones. Ultralytics' ``optimizer=auto`` makes the same cut: a short run on a
  small dataset needs an optimizer that converges in few steps; a long one generalises better with SGD.
* **BatchNorm momentum**: ``50 / steps`` within [0.01, 0.1]. The running statistics average about the
  last ``1 / momentum`` batches; EfficientDet's 0.01 (100 batches) trails the weights of a
  few-hundred-step run, and evaluation then normalises with stale statistics.
* **warmup**: 5 % of the steps, at least 20 and at most 1000.
* **scale jitter**: 0.8-1.2 up to 5 000 steps, 0.5-1.5 up to 50 000, EfficientDet's 0.1-2.0 beyond.
  Wide jitter makes most objects tiny or cut off, a range a short run cannot learn.

A resumed run takes the values its first start chose (its ``config.json``, or the config its newest
checkpoint embeds when that file is gone), so it never switches optimizer halfway.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config.loading import Config, is_auto

LONG_RUN_STEPS = 10_000  # above this, SGD (as ultralytics' optimizer=auto)
BATCH, SMALL_BATCH, MIN_EPOCH_STEPS = 8, 4, 16  # auto batch: 8 per process, down to 4 below 16 steps an epoch


@dataclass(frozen=True)
class Choice:
    """One recipe field the run chose: ``section.field = value`` and why."""

    section: str
    field: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.section}.{self.field} = {self.value!r} ({self.reason})"


def auto_fields(cfg: Config) -> list[tuple[str, str]]:
    """The ``(section, field)`` pairs of ``cfg`` that still say ``"auto"``, in the order they are resolved."""
    order = [("General", "batch_image"), ("optimizer", "type"), ("optimizer", "lr"), ("General", "bn_momentum"),
             ("schedule", "warmup_epochs"), ("dataset", "scale_min"), ("dataset", "scale_max")]
    return [(s, f) for s, f in order if is_auto(getattr(getattr(cfg, s), f))]


def auto_batch(train_images: int, world_size: int = 1, accumulate: int = 1) -> int:
    """Images per process for ``General.batch_image = "auto"``: :data:`BATCH`, halved down to
    :data:`SMALL_BATCH` while an epoch of ``train_images`` would have fewer than :data:`MIN_EPOCH_STEPS`
    optimizer steps (``world_size`` processes, ``accumulate`` passes a step)."""
    batch = BATCH
    while batch > SMALL_BATCH and train_images // (batch * world_size * accumulate) < MIN_EPOCH_STEPS:
        batch //= 2
    return batch


def resolve_recipe(cfg: Config, train_images: int, world_size: int = 1,
                   first_start: dict[str, dict[str, Any]] | None = None) -> list[Choice]:
    """Set every ``"auto"`` recipe field of ``cfg`` in place and return what was chosen and why.

    ``train_images`` (the training set's size) and ``world_size`` (processes) describe the run; the
    batch is chosen first, then the rest from the run's optimizer steps. ``first_start`` is the
    config (``Config.to_dict()``) the run's first start saved: a resumed run reuses its values.
    Fields already given a value are left alone and not listed.
    """
    choices: list[Choice] = []

    def choose(section: str, field: str, value: Any, reason: str) -> None:
        saved = (first_start or {}).get(section, {}).get(field)
        if saved is not None and not is_auto(saved):
            value, reason = saved, "auto, as the run's first start chose"
        setattr(getattr(cfg, section), field, value)
        choices.append(Choice(section, field, value, reason))

    g = cfg.General
    if is_auto(g.batch_image):
        batch = auto_batch(train_images, world_size, g.accumulate)
        epoch_steps = train_images // (batch * world_size * g.accumulate)
        choose("General", "batch_image", batch,
               f"auto: {train_images} training images give {epoch_steps} steps an epoch at {batch} per process"
               + ("" if batch == BATCH else f"; below {MIN_EPOCH_STEPS} steps at {BATCH} the batch is halved, "
                                            f"down to {SMALL_BATCH}, for more updates per pass over the data"))
    total_batch = g.batch_image * g.accumulate * world_size  # images per optimizer step, all processes
    steps_per_epoch = train_images // total_batch
    steps = max(1, cfg.schedule.end_epoch * steps_per_epoch)
    run = f"{steps} steps of {total_batch} images"
    for section, field in auto_fields(cfg):  # the batch is no longer among them: chosen above
        if (section, field) == ("optimizer", "type"):
            long_run = steps > LONG_RUN_STEPS
            given_lr = "" if is_auto(cfg.optimizer.lr) else (
                f"; optimizer.lr = {cfg.optimizer.lr} is given: check that it suits this optimizer, or set its type")
            choose(section, field, "sgd" if long_run else "adamw",
                   f"auto: {run}, {'more' if long_run else 'no more'} than {LONG_RUN_STEPS}: "
                   + ("SGD generalises better on long runs" if long_run else "AdamW converges in few steps")
                   + given_lr)
        elif (section, field) == ("optimizer", "lr"):
            if cfg.optimizer.type == "adamw":  # the same step size at any batch: lr_batch scaling cancelled
                choose(section, field, round(1e-3 * cfg.optimizer.lr_batch / total_batch, 8),
                       f"auto: AdamW steps at 1e-3 at any batch; per optimizer.lr_batch {cfg.optimizer.lr_batch} "
                       f"images that is this value at a batch of {total_batch}")
            else:
                choose(section, field, 0.01 * cfg.optimizer.lr_batch / 16,
                       f"auto: SGD at 0.01 per 16 images, scaled to the batch of {total_batch}")
        elif (section, field) == ("General", "bn_momentum"):
            choose(section, field, round(min(0.1, max(0.01, 50 / steps)), 4),
                   f"auto: 50 / {steps} steps within [0.01, 0.1], so the statistics follow the weights")
        elif (section, field) == ("schedule", "warmup_epochs"):
            warmup = min(1000, max(20, round(0.05 * steps)), steps)
            choose(section, field, round(warmup / max(1, steps_per_epoch), 4),
                   f"auto: {warmup} steps, 5 % of {run} within [20, 1000]")
        elif section == "dataset":
            low, high = (0.8, 1.2) if steps <= 5_000 else (0.5, 1.5) if steps <= 50_000 else (0.1, 2.0)
            choose(section, field, low if field == "scale_min" else high,
                   f"auto: jitter {low}-{high} for {run}; wider ranges need longer runs")
    return choices


def read_saved_config(run_folder: Path) -> dict[str, dict[str, Any]] | None:
    """The config sections a run's ``config.json`` holds (what its first start resolved), or None."""
    try:
        saved = json.loads((Path(run_folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    sections = saved.get("sections") if isinstance(saved, dict) else None
    return sections if isinstance(sections, dict) else None
