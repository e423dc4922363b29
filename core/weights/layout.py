"""Which layout a state dict is in, told from its tensor names alone."""
from __future__ import annotations

from typing import Iterable

LAYOUTS = ("detlab", "effdet", "lukemelas", "torchvision", "timm")


def detect_layout(names: Iterable[str]) -> str:
    """One of :data:`LAYOUTS` for a state dict with these names.

    * ``detlab``: DetLab's detector (``backbone.body.*``, ``neck.*``, ``head.*``);
    * ``effdet``: rwightman's effdet EfficientDet (``backbone.*``, ``fpn.*``, ``class_net.*``, ``box_net.*``,
      optionally under ``model.`` as effdet's training bench saves it);
    * ``lukemelas``: EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N.*``, ``_fc``);
    * ``torchvision``: torchvision classifiers whose names differ from timm's (``features.0.0.weight``:
      EfficientNet, MobileNet, ...). torchvision ResNets have timm's names and count as ``timm``;
    * ``timm``: anything else, taken as a timm model's names.
    """
    names = list(names)
    top = {n.split(".", 1)[0] for n in names}
    if top & {"neck", "head"} or any(n.startswith("backbone.body.") for n in names):
        return "detlab"
    stripped = {n.split(".", 1)[1].split(".", 1)[0] for n in names if n.startswith("model.")}
    if top & {"fpn", "class_net", "box_net"} or (top == {"model"} and stripped & {"fpn", "class_net"}):
        return "effdet"
    if top & {"_conv_stem", "_blocks"}:
        return "lukemelas"
    if "features" in top and any(n.startswith("features.0.") for n in names):
        return "torchvision"
    return "timm"
