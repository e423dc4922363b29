"""Surgery on DetLab detector state dicts: removing the predictors, keeping some classes' channels.

Which tensors are a head's predictors (the only class-dependent tensors), and which of their output
channels are classes, only the head family knows: its task class (``core.tasks.task.task_class``) answers
``predictor_names`` and ``class_predictors``. A predictor's output channels are ``A * per_anchor``:
for every anchor, ``fixed`` leading channels (YOLO's box and objectness) and then one per class.
"""
from __future__ import annotations

from typing import Any

import torch

from core.weights.common import Conversion, ConversionError
from core.tasks.task import head_type_of, task_class


def head_type(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> str:
    """The ``head.type`` of ``state``: from a checkpoint's saved config when given, else from the names."""
    try:
        return head_type_of(state, config)
    except ValueError as err:
        raise ConversionError(str(err)) from None


def _family(kind: str) -> Any:
    try:
        return task_class(kind)
    except ValueError as err:
        raise ConversionError(str(err)) from None


def predictor_names(state: dict[str, torch.Tensor], kind: str) -> list[str]:
    """Names of the class and box predictors of head ``kind`` in ``state``."""
    return _family(kind).predictor_names(state)


def strip_head(state: dict[str, torch.Tensor], kind: str) -> Conversion:
    """``state`` without the predictors of head ``kind``; everything else unchanged.

    Loading the result into a detector of any number of classes leaves only the predictors
    freshly initialised (reported as missing)."""
    drop = set(predictor_names(state, kind))
    if not drop:
        raise ConversionError(f"no {kind} predictors in this state dict to strip; was the head stripped already?")
    kept = {k: v for k, v in state.items() if k not in drop}
    return Conversion(kept, [], [(k, "class / box predictor (--strip-head)") for k in state if k in drop])


def class_channels(num_outputs: int, per_anchor: int, keep: list[int], fixed: int = 0) -> list[int]:
    """Output channels to keep of a predictor with ``num_outputs = A * per_anchor`` channels:
    for every anchor, its first ``fixed`` channels (YOLO's box + objectness), then the class
    channels ``fixed + c`` for ``c`` in ``keep`` (in that order)."""
    if num_outputs % per_anchor:
        raise ConversionError(f"predictor has {num_outputs} output channels, not a multiple of {per_anchor} per "
                              "anchor: the checkpoint's class_names do not match its head")
    anchors = num_outputs // per_anchor
    return [a * per_anchor + j for a in range(anchors) for j in list(range(fixed)) + [fixed + c for c in keep]]


def keep_classes(state: dict[str, torch.Tensor], class_names: list[str], keep: list[str],
                 kind: str) -> Conversion:
    """``state`` with only the class-logit channels of ``keep`` (class names, in the order wanted),
    for every anchor, in the class predictor(s). Box channels and every other tensor are unchanged,
    so the result is a detector of ``len(keep)`` classes whose logits for those classes equal
    the original's."""
    unknown = [k for k in keep if k not in class_names]
    if unknown:
        raise ConversionError(f"--keep-classes: {unknown} not among the checkpoint's classes {class_names}")
    if len(set(keep)) != len(keep) or not keep:
        raise ConversionError(f"--keep-classes needs distinct class names, got {keep}")
    index = [class_names.index(k) for k in keep]
    num_classes = len(class_names)
    out = dict(state)
    notes: list[str] = []
    targets, per_anchor, fixed = _family(kind).class_predictors(state, num_classes)
    if not targets:
        raise ConversionError(f"no {kind} class predictor in this state dict (stripped?); --keep-classes needs one")
    for name in targets:
        channels = class_channels(state[name].shape[0], per_anchor, index, fixed)
        out[name] = state[name].index_select(0, torch.tensor(channels)).clone()
        notes.append(f"{name}: {tuple(state[name].shape)} -> {tuple(out[name].shape)}")
    return Conversion(out, [], [], notes)
