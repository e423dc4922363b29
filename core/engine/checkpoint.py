"""Checkpoints: atomic writes, content checksums, and finding the newest good one."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^epoch_(\d+)\.pt$")
_MAGIC = b"DETLAB-CKPT-1\n"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file."""


class PickleRequiredError(CheckpointError):
    """A weights file holds more than tensors and plain values, so only full unpickling (which can
    run code) would read it, and the caller did not allow that; the message names the file and the fix."""


ALLOW_PICKLE_HINT = "--allow-pickle (in a config: pretrain.allow_pickle = True)"
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_WEIGHTS_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.+)")


def _pickle_detail(err: BaseException) -> str:
    """What torch's weights-only unpickler stopped at, in a few words (its message spans many lines)."""
    text = str(err)
    if m := _UNSUPPORTED_GLOBAL.search(text):
        return f"it refers to {m.group(1)}"
    if m := _WEIGHTS_UNPICKLER.search(text):
        return m.group(1).strip().rstrip(".")
    return "not only tensors and plain values"


def _needs_pickle(err: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed because the file needs full unpickling
    (rather than because it is damaged)."""
    return isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """``run_dir/epoch_0003.pt`` for epoch 3 (epochs count completed epochs, from 1)."""
    return Path(run_dir) / f"epoch_{epoch:04d}.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    The file is a short header, the SHA-256 of the payload and the ``torch.save`` payload, so
    truncation or bit rot is detected on load. A crash mid-write leaves the old file untouched.
    A failed write (disk full, any I/O error) removes its temp file and raises :class:`CheckpointError`
    naming ``path``; the file that was there before is left as it was.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # the temp file never outlives a failed write, whatever stopped it
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(err, OSError):
            raise
        reason = err.strerror or str(err) or type(err).__name__
        raise CheckpointError(f"cannot write checkpoint '{path}': {reason}; nothing was replaced, the previous "
                              "checkpoints are intact") from None
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:  # the file is complete and in place; only its rename may not be on disk yet
        raise CheckpointError(f"wrote checkpoint '{path}' but cannot sync its folder: {err.strerror}") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", allow_pickle: bool = False) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint` (tensors to ``map_location``).

    Plain ``torch.save`` files (no header) are read as they are, without a checksum. This is the
    one place DetLab unpickles a weights file: always with ``weights_only=True`` (tensors and plain
    values only; nothing in the file can run). A file that needs more (numpy objects, a whole
    pickled ``nn.Module``, custom classes) raises :class:`PickleRequiredError` unless
    ``allow_pickle`` (``--allow-pickle`` / ``pretrain.allow_pickle``); then it is read with full
    unpickling after a warning on stderr naming the file.
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
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip
        if not _needs_pickle(err):
            raise CheckpointError(f"checkpoint '{path}' cannot be read: {err}") from None
        detail = _pickle_detail(err)
    if not allow_pickle:
        raise PickleRequiredError(f"weights file '{path}' needs unpickling to load ({detail}), and unpickling can "
                                  f"run code; if you trust the file, pass {ALLOW_PICKLE_HINT}")
    print(f"warning: reading '{path}' by full unpickling ({detail}), as --allow-pickle / pretrain.allow_pickle "
          "allows: whatever code the file carries runs now; use only files you trust", file=sys.stderr)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as err:  # anything the file's own objects raise while being rebuilt
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {type(err).__name__}: {err}") from None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``epoch_NNNN.pt`` in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu",
                warn=print, allow_pickle: bool = False) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``run_dir`` that loads and verifies, or ``None`` if there is none.
    Each newer one that fails is reported through ``warn`` and skipped, except one that needs
    unpickling without ``allow_pickle``: that :class:`PickleRequiredError` is raised (a run does not
    quietly continue from an older checkpoint than the one the user has)."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location, allow_pickle), path
        except PickleRequiredError:
            raise
        except CheckpointError as err:
            warn(f"warning: {err}; falling back to the previous checkpoint")
    return None
