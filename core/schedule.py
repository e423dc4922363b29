"""Learning-rate schedule: linear warmup, then cosine or step decay, evaluated per step."""
from __future__ import annotations

import math
from typing import Any


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
