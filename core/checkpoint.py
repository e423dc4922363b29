"""Checkpoints: atomic writes, content checksums, and finding the newest good one."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^epoch_(\d+)\.pt$")
_MAGIC = b"DETLAB-CKPT-1\n"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file."""


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """``run_dir/epoch_0003.pt`` for epoch 3 (epochs count completed epochs, from 1)."""
    return Path(run_dir) / f"epoch_{epoch:04d}.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    The file is a short header, the SHA-256 of the payload and the ``torch.save`` payload, so
    truncation or bit rot is detected on load. A crash mid-write leaves the old file untouched.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + digest + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (tensors to ``map_location``).

    Plain ``torch.save`` files (no header) are read as they are, without a checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    data = path.read_bytes()
    if data.startswith(_MAGIC):
        header_end = len(_MAGIC) + 65
        digest, payload = data[len(_MAGIC):header_end - 1], data[header_end:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated (checksum mismatch)")
    else:
        payload = data
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a damaged zip
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {err}") from None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``epoch_NNNN.pt`` in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu",
                warn=print) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``run_dir`` that loads and verifies, or ``None`` if there is none.
    Each newer one that fails is reported through ``warn`` and skipped."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as err:
            warn(f"warning: {err}; falling back to the previous checkpoint")
    return None
