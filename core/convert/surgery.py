"""Surgery on DetLab detector state dicts: removing the predictors, keeping some classes' channels.

Predictors (the only class-dependent tensors) of each head type:

* ``effdet`` (``symbol/head/effdet_head.py``): ``head.class_net.predict.*`` (separable conv;
  ``conv_pw`` has ``A * C`` output channels, channel ``a * C + c`` = anchor ``a``, class ``c``) and
  ``head.box_net.predict.*`` (``A * 4`` channels).
* ``yolo`` (``symbol/head/yolo_head.py``): ``head.layers.N.predict.{weight,bias}`` per level
  (``A_N * (5 + C)`` channels, channel ``a * (5 + C) + k``: ``k`` 0-3 box, 4 objectness, ``5 + c`` class ``c``).
"""
from __future__ import annotations

import re
from typing import Any

import torch

from core.convert.common import Conversion, ConversionError

EFFDET_PREDICTORS = ("head.class_net.predict.", "head.box_net.predict.")
_YOLO_PREDICT = re.compile(r"^head\.layers\.(\d+)\.predict\.(weight|bias)$")


def head_type(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> str:
    """``effdet`` or ``yolo``: from a checkpoint's saved config when given, else from the names."""
    if config and isinstance(config.get("head"), dict) and config["head"].get("type"):
        return str(config["head"]["type"])
    if any(k.startswith("head.class_net.") for k in state):
        return "effdet"
    if any(_YOLO_PREDICT.match(k) for k in state):
        return "yolo"
    raise ConversionError("no DetLab detection head in this state dict (neither head.class_net.* nor "
                          "head.layers.N.predict.*); is it a DetLab detector? (--from converts other layouts)")


def predictor_names(state: dict[str, torch.Tensor], kind: str) -> list[str]:
    """Names of the class and box predictors of head ``kind`` in ``state``."""
    if kind == "effdet":
        return [k for k in state if k.startswith(EFFDET_PREDICTORS)]
    if kind == "yolo":
        return [k for k in state if _YOLO_PREDICT.match(k)]
    raise ConversionError(f"unknown head type '{kind}'; known: effdet, yolo")


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
    if kind == "effdet":
        # the predictor's output conv: conv_pw of the separable conv, or the plain conv (head.separable=False)
        targets = [k for k in state if re.fullmatch(r"head\.class_net\.predict\.(conv_pw\.)?(weight|bias)", k)]
        per_anchor, fixed = num_classes, 0
    elif kind == "yolo":
        targets = [k for k in state if _YOLO_PREDICT.match(k)]
        per_anchor, fixed = 5 + num_classes, 5
    else:
        raise ConversionError(f"unknown head type '{kind}'; known: effdet, yolo")
    if not targets:
        raise ConversionError(f"no {kind} class predictor in this state dict (stripped?); --keep-classes needs one")
    for name in targets:
        channels = class_channels(state[name].shape[0], per_anchor, index, fixed)
        out[name] = state[name].index_select(0, torch.tensor(channels)).clone()
        notes.append(f"{name}: {tuple(state[name].shape)} -> {tuple(out[name].shape)}")
    return Conversion(out, [], [], notes)
