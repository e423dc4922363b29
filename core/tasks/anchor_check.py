"""The start-up anchor check: the share of training boxes the anchors match, asked of the head family.

``measure_anchor_fit`` puts the records' boxes into input pixels (``core.tasks.anchor_fit.input_boxes``) and
asks the config's head family (``core.tasks.task.task_class(head.type).fit_anchors``) how many match under
the rule its loss uses and which anchors would fit; ``check_anchors`` prints it and, with
``anchors.auto``, applies the fit. The rules and searches are described in ``core.tasks.anchor_fit``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from core.tasks.anchor_fit import AnchorFit, format_value, input_boxes
from core.tasks.task import task_class


def measure_anchor_fit(cfg: Any, records: Sequence[Any], suggest: bool | None = None, seed: int = 0) -> AnchorFit:
    """How well ``cfg``'s anchors fit ``records``' boxes (see the module docstring); with ``suggest``
    (default: when the share is below ``core.tasks.anchor_fit.FIT_TARGET``) also the anchors that would fit."""
    image_size = int(cfg.dataset.image_size)
    boxes = input_boxes(records, image_size, int(getattr(cfg.dataset, "tile", 0) or 0))
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    median = (float(np.median(wh[:, 0])), float(np.median(wh[:, 1]))) if len(wh) else (float("nan"),) * 2
    return task_class(cfg.head.type).fit_anchors(cfg, boxes, median, suggest, seed)


def check_anchors(cfg: Any, records: Sequence[Any], log: Callable[[str], None] = print) -> AnchorFit:
    """The trainer's start-up check: print the share of ``records``' boxes the anchors match and, below
    ``core.tasks.anchor_fit.FIT_TARGET``, a warning with the ``--set`` line of anchors that fit. With ``anchors.auto``
    the suggestion (when it matches more boxes) replaces the config's anchors, which is printed too;
    call it before the network and the loss are built from ``cfg``."""
    fit = measure_anchor_fit(cfg, records, seed=cfg.General.seed)
    for line in fit.lines():
        log(line)
    better = fit.suggested_share is not None and fit.suggested_share > fit.share
    if cfg.anchors.auto and not fit.fits and fit.suggestion and better:
        for key, value in fit.suggestion.items():
            setattr(cfg.anchors, key, value)
        changes = ", ".join(f"anchors.{k} = {format_value(v)}" for k, v in fit.suggestion.items())
        log(f"anchors.auto: using {changes} (they fit {fit.suggested_share:.1%} of the training boxes, "
            f"the configured ones {fit.share:.1%})")
    return fit
