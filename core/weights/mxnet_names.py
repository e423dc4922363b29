"""Names of MXNet ``.params`` files <-> PyTorch state-dict names.

MXNet's ``Module.save_params`` (SimpleDet) and GluonCV prefix every array with ``arg:`` (a learned
parameter) or ``aux:`` (an auxiliary state: BatchNorm's moving statistics) and join parts with
``_``: ``arg:conv0_weight``, ``arg:bn0_gamma``, ``aux:bn0_moving_mean``. PyTorch names end in
``.weight``, ``.bias``, ``.running_mean``, ``.running_var``.
"""
from __future__ import annotations

import numpy as np
import torch

from core.weights.common import Conversion, ConversionError

# MXNet suffix -> PyTorch suffix, for underscore-joined names (the first match wins)
SUFFIXES = (("_moving_mean", ".running_mean"), ("_moving_var", ".running_var"), ("_running_mean", ".running_mean"),
            ("_running_var", ".running_var"), ("_gamma", ".weight"), ("_beta", ".bias"), ("_weight", ".weight"),
            ("_bias", ".bias"))
RUNNING_STATS = ("running_mean", "running_var", "moving_mean", "moving_var")


def is_running_stat(name: str) -> bool:
    """Whether ``name`` is a BatchNorm running statistic (an MXNet ``aux:`` state)."""
    return name.endswith(RUNNING_STATS)


def mxnet_to_torch(arrays: dict[str, np.ndarray]) -> Conversion:
    """MXNet arrays -> PyTorch names and tensors.

    ``arg:`` / ``aux:`` prefixes are removed; names without a ``.`` (MXNet style) get PyTorch
    suffixes (``conv0_weight -> conv0.weight``, ``bn0_gamma -> bn0.weight``,
    ``bn0_moving_var -> bn0.running_var``); dotted names (files written by DetLab) keep their name.
    """
    out: dict[str, torch.Tensor] = {}
    renamed: list[tuple[str, str]] = []
    for name, array in arrays.items():
        new = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
        if "." not in new:
            for mx_suffix, pt_suffix in SUFFIXES:
                if new.endswith(mx_suffix):
                    new = new[: -len(mx_suffix)] + pt_suffix
                    break
        if new in out:
            raise ConversionError(f"MXNet arrays '{name}' and another both become '{new}'; rename one of them")
        out[new] = torch.from_numpy(np.ascontiguousarray(array))
        if new != name:
            renamed.append((name, new))
    return Conversion(out, renamed)


def torch_to_mxnet(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """PyTorch tensors -> MXNet names (``aux:`` for running statistics, ``arg:`` otherwise; the rest
    of the name unchanged) and numpy arrays. BatchNorm's ``num_batches_tracked`` counters (0-d, no
    MXNet counterpart) are left out; returns ``(arrays, removed)`` with ``(name, reason)`` pairs."""
    arrays: dict[str, np.ndarray] = {}
    removed: list[tuple[str, str]] = []
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            removed.append((name, "BatchNorm step counter; MXNet has none"))
            continue
        t = tensor.detach().cpu()
        if t.dtype == torch.bfloat16:
            raise ConversionError(f"tensor '{name}' is bfloat16, which MXNet 1.x files cannot hold; "
                                  "convert the model to float32 first")
        arrays[("aux:" if is_running_stat(name) else "arg:") + name] = t.contiguous().numpy()
    return arrays, removed
