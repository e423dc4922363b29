"""Where a run executes: device, precision, seeding, and the run folder."""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch


def select_device(name: str) -> torch.device:
    """``auto`` picks the local CUDA device when one is visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("General.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown General.device '{name}'; choose auto, cpu or cuda")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, enabled: bool):
    """Mixed-precision context for ``device``: bf16 where the GPU supports it, else fp16; a no-op on CPU
    or when disabled."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 autocast needs loss scaling; bf16 and fp32 do not."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def run_dir(cfg: Any) -> Path:
    """``General.work_dir / General.name``."""
    return Path(cfg.General.work_dir) / cfg.General.name
