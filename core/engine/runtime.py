"""Where a run executes: device, precision, seeding, and the run folder."""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config.loading import ConfigError


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of Linux's cpuinfo (``"model name"``, ``"flags"``, ...) as strings;
    empty where the file is missing or unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


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


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``device`` and ``General.precision`` (``bf16``, ``fp16`` or
    ``fp32``): ``torch.autocast`` to that dtype on a GPU, a no-op for ``fp32`` and on CPUs."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def needs_grad_scaler(device: torch.device, precision: str) -> bool:
    """fp16 autocast needs loss scaling; bf16 and fp32 do not."""
    return device.type == "cuda" and precision == "fp16"


def check_precision(device: torch.device, precision: str) -> None:
    """Fail with the fix when ``General.precision = "bf16"`` meets a GPU without bfloat16."""
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"General.precision = 'bf16' but {torch.cuda.get_device_name(device)} has no bfloat16; "
                          "set General.precision = 'fp16' (or 'fp32') in the config or with --set")


def run_dir(cfg: Any) -> Path:
    """``General.work_dir / General.name`` (an empty name, which ``load_config`` never leaves, is the
    config file's stem: never ``work_dir`` itself)."""
    return Path(cfg.General.work_dir) / (cfg.General.name or Path(cfg.source).stem)
