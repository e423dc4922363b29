"""Learning-rate schedule: linear warmup, then cosine or step decay, evaluated per step."""
from __future__ import annotations

import math
from typing import Any

from core.config.loading import is_auto


def lr_factor(step: int, steps_per_epoch: int, sched: Any) -> float:
    """Multiplier of the base lr at global ``step`` (0-based) for the config's ``schedule`` section.

    Warmup rises linearly from ``warmup_factor`` to 1 over ``warmup_epochs``; then ``cosine`` decays
    to ``min_lr_ratio`` at ``end_epoch``, or ``step`` multiplies by ``lr_gamma`` at each of ``lr_steps``.
    """
    epoch = step / steps_per_epoch
    warmup_steps = sched.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        alpha = step / warmup_steps
        return sched.warmup_factor * (1 - alpha) + alpha
    if sched.decay == "cosine":
        total = max(sched.end_epoch * steps_per_epoch - warmup_steps, 1)
        progress = min((step - warmup_steps) / total, 1.0)
        return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if sched.decay == "step":
        return sched.lr_gamma ** sum(epoch >= s for s in sched.lr_steps)
    raise ValueError(f"unknown schedule.decay '{sched.decay}'; choose cosine or step")


def apply_mult(sched: Any) -> str | None:
    """Scale the ``schedule`` section in place by its ``mult`` (SimpleDet's schedule multiplier): the
    begin and end epochs, the ``lr_steps`` and a given ``warmup_epochs`` are multiplied, and ``mult``
    becomes 1, so the section then describes the run it trains. Configs write their schedule for mult 1.
    Returns the line saying what changed, or None for mult 1."""
    mult = sched.mult
    if mult == 1:
        return None
    if mult <= 0:
        raise ValueError(f"schedule.mult = {mult} must be > 0")
    before = f"epochs {sched.begin_epoch}-{sched.end_epoch}"
    sched.begin_epoch, sched.end_epoch = round(sched.begin_epoch * mult), round(sched.end_epoch * mult)
    sched.lr_steps = [round(e * mult) for e in sched.lr_steps]
    if not is_auto(sched.warmup_epochs):
        sched.warmup_epochs = sched.warmup_epochs * mult
    sched.mult = 1
    return (f"schedule.mult {mult}: {before} -> {sched.begin_epoch}-{sched.end_epoch}, lr_steps {sched.lr_steps}, "
            f"warmup_epochs {sched.warmup_epochs}")
