"""Do the anchors fit the data? The share of training boxes an anchor matches, and anchors that would fit.

At start-up the trainer calls ``core.tasks.anchor_check.check_anchors`` with the training records. It prints the share
of training boxes that match at least one anchor under the rule the loss uses, and below
:data:`FIT_TARGET` (95 %) it warns and prints the anchor settings that would fit as a ``--set`` line;
with ``anchors.auto = True`` it puts them into the config before the network and the loss are built.

Boxes are taken as the network sees them at evaluation: each record's boxes (xyxy original pixels)
times ``dataset.image_size / max(width, height)``, as ``core.data.transforms`` resizes the longer side
to the input size, at their positions in the picture (with ``dataset.tile``, in a tile; see
:func:`input_boxes`). Training's random scale jitter (``dataset.scale_min`` / ``scale_max``) and
crops are left out.

* anchor-based heads (EfficientDet / RetinaNet subnets, ``core.tasks.anchor_task``): a box matches when its IoU with some
  anchor is at least ``loss.match_iou``, computed **exactly against the anchor grid** of
  ``core.ops.anchors.AnchorGenerator`` (levels ``neck.min_level .. max_level``), the IoU that
  ``core.tasks.anchor_loss.assign`` computes. For one anchor shape on one level the best anchor is the one whose
  centre is nearest the box centre in x and in y (the overlap along each axis only falls with the
  distance of the centres), so each box needs one IoU per level and anchor shape, not one per anchor.
  The suggestion searches ``anchors.scale`` (2**(k/4), 0.25 .. 8, and the current value) and sets of
  ``anchors.aspect_ratios`` with as many ratios as now (the current set, geometric spreads of aspect
  1.5 .. 6 and the data's own aspect quantiles), so the head keeps its shape.
* YOLO heads (``core.tasks.yolo``): a box matches when its width and height are both within a
  factor ``loss.yolo_anchor_t`` of one of the ``anchors.yolo`` sizes (``core.tasks.yolo.build_targets``; a
  shape-only rule, position plays no part). The suggestion is YOLOv5's autoanchor: k-means on the
  boxes' (w, h) with ``1 - IoU`` of the centred boxes as distance, then a genetic refinement
  (multiplicative jitter of all anchors, kept when YOLOv5's fitness, the mean best ratio metric above
  ``1 / anchor_t``, rises), sorted by area and split into the config's rows, finest level first.

Searches use at most :data:`SAMPLE` boxes, drawn with a generator seeded by ``seed``; every share
printed is over all boxes. Everything is deterministic for given records, config and seed.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from core.ops.iou import centred_wh_iou

FIT_TARGET = 0.95  # below this share of matched training boxes the check warns
SAMPLE = 10000  # boxes used by the suggestion searches (a seeded subsample of larger sets)
SCALES = tuple(2.0 ** (k / 4) for k in range(-8, 13))  # anchors.scale candidates, 0.25 .. 8
SPREADS = (1.5, 2.0, 3.0, 4.0, 6.0)  # aspect (w / h) from 1 / spread to spread across a ratio set
_CHUNK = 4096  # boxes per vectorised IoU block


# ---------------------------------------------------------------------------------------- boxes
def input_boxes(records: Sequence[Any], image_size: int, tile: int = 0) -> np.ndarray:
    """All boxes of ``records`` (``ImageRecord``: ``boxes`` xyxy original pixels, ``width``, ``height``)
    in input pixels at evaluation scale (``image_size / max(width, height)``): float64 ``[N, 4]`` xyxy.
    With ``tile > 0`` (``dataset.tile``: training cuts a random ``tile`` x ``tile`` window first) the
    scale is ``image_size`` over the window's longer side and each box is placed relative to the
    window of a regular tiling that holds its top-left corner. Boxes without area are left out."""
    parts = []
    for r in records:
        boxes = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        if tile > 0:
            origin = np.floor(boxes[:, :2] / tile) * tile
            boxes = boxes - np.concatenate([origin, origin], axis=1)
            parts.append(boxes * (image_size / max(min(r.width, tile), min(r.height, tile))))
        else:
            parts.append(boxes * (image_size / max(r.width, r.height)))
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep]


def _sample(n: int, seed: int, limit: int = SAMPLE) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items, drawn without replacement, seeded."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# ------------------------------------------------------------------------- anchor (effdet) heads
def anchor_levels(cfg: Any) -> list[int]:
    """Pyramid levels the head predicts at: ``neck.min_level .. neck.max_level`` (every neck)."""
    return list(range(cfg.neck.min_level, cfg.neck.max_level + 1))


def _shapes(scales: Sequence[float], num_scales: int, aspect_ratios: Sequence[Sequence[float]]) -> np.ndarray:
    """Anchor (w, h) per unit stride, ``[len(scales), A, 2]``, in AnchorGenerator's order."""
    out = []
    for scale in scales:
        sizes = []
        for octave in range(num_scales):
            base = scale * 2.0 ** (octave / num_scales)
            sizes += [(base * rw, base * rh) for rw, rh in aspect_ratios]
        out.append(sizes)
    return np.asarray(out, dtype=np.float64)


def _grid_sizes(levels: Sequence[int], image_size: int) -> list[int]:
    """Feature-map side per level for a square input (ceil halving, as AnchorGenerator.feature_sizes)."""
    sizes, side = {}, image_size
    for level in range(1, max(levels) + 1):
        side = (side + 1) // 2
        sizes[level] = side
    return [sizes[lv] for lv in levels]


def best_anchor_iou(boxes: np.ndarray, levels: Sequence[int], scales: Sequence[float], num_scales: int,
                    aspect_ratios: Sequence[Sequence[float]], image_size: int) -> np.ndarray:
    """Per box (xyxy input pixels ``[N, 4]``) and candidate ``anchors.scale``, the highest IoU with any
    anchor of ``AnchorGenerator(levels, scale, num_scales, aspect_ratios)`` for a square
    ``image_size`` input: float64 ``[N, len(scales)]``. Exact against the grid: per level and anchor
    shape, the anchor centred in the cell that holds the box centre (clamped to the map)."""
    shapes = _shapes(scales, num_scales, aspect_ratios)  # [S, A, 2]
    best = np.zeros((len(boxes), len(scales)))
    for start in range(0, len(boxes), _CHUNK):
        b = boxes[start:start + _CHUNK]
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        chunk_best = best[start:start + _CHUNK]
        for level, side in zip(levels, _grid_sizes(levels, image_size)):
            stride = 2.0 ** level
            ax = (np.clip(np.floor(cx / stride), 0, side - 1) + 0.5) * stride  # nearest anchor centre
            ay = (np.clip(np.floor(cy / stride), 0, side - 1) + 0.5) * stride
            half = shapes * (stride / 2.0)  # [S, A, 2]
            hw, hh = half[None, :, :, 0], half[None, :, :, 1]  # [1, S, A]
            ox = (np.minimum(b[:, 2, None, None], ax[:, None, None] + hw)
                  - np.maximum(b[:, 0, None, None], ax[:, None, None] - hw)).clip(min=0)
            oy = (np.minimum(b[:, 3, None, None], ay[:, None, None] + hh)
                  - np.maximum(b[:, 1, None, None], ay[:, None, None] - hh)).clip(min=0)
            inter = ox * oy
            iou = inter / ((bw * bh)[:, None, None] + 4.0 * hw * hh - inter)
            np.maximum(chunk_best, iou.max(axis=2), out=chunk_best)
    return best


def anchor_share(boxes: np.ndarray, levels: Sequence[int], scale: float, num_scales: int,
                 aspect_ratios: Sequence[Sequence[float]], image_size: int, match_iou: float) -> float:
    """Share of ``boxes`` (xyxy input pixels) with an anchor at IoU >= ``match_iou`` (see
    :func:`best_anchor_iou`); NaN for no boxes."""
    if len(boxes) == 0:
        return float("nan")
    iou = best_anchor_iou(boxes, levels, [scale], num_scales, aspect_ratios, image_size)[:, 0]
    return float((iou >= match_iou).mean())


def _ratio_set(aspects: Sequence[float]) -> list[list[float]]:
    """(w, h) multipliers ``(sqrt(a), 1 / sqrt(a))`` per aspect ``a = w / h``, 2 decimals, the one nearest
    square first (ties: the wider before the taller, as the default set)."""
    ordered = sorted(aspects, key=lambda a: (round(abs(math.log(a)), 6), -a))
    return [[round(math.sqrt(a), 2), round(1.0 / math.sqrt(a), 2)] for a in ordered]


def candidate_ratio_sets(current: Sequence[Sequence[float]], boxes: np.ndarray) -> list[list[list[float]]]:
    """Ratio sets with as many ratios as ``current``: ``current`` itself, geometric spreads of aspect
    ``1 / s .. s`` for ``s`` in :data:`SPREADS`, and the boxes' aspect quantiles; duplicates dropped."""
    k = len(current)
    sets = [[list(map(float, r)) for r in current]]
    if k == 1:
        sets.append([[1.0, 1.0]])
    else:
        for spread in SPREADS:
            sets.append(_ratio_set(np.exp(np.linspace(-math.log(spread), math.log(spread), k)).tolist()))
    if len(boxes):
        aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
        quantiles = np.quantile(aspect, (np.arange(k) + 0.5) / k)
        sets.append(_ratio_set(np.clip(quantiles, 1 / 16, 16).tolist()))
    unique: list[list[list[float]]] = []
    for s in sets:
        if s not in unique:
            unique.append(s)
    return unique


def suggest_anchor_params(boxes: np.ndarray, levels: Sequence[int], scale: float, num_scales: int,
                          aspect_ratios: Sequence[Sequence[float]], image_size: int, match_iou: float,
                          seed: int = 0) -> tuple[float, list[list[float]]]:
    """The ``(anchors.scale, anchors.aspect_ratios)`` of the grid search (:data:`SCALES` and the current
    scale x :func:`candidate_ratio_sets`) that matches the most boxes of a seeded sample; ties go to
    the current ratio set, then to the scale nearest the current one (in octaves)."""
    sample = boxes[_sample(len(boxes), seed)]
    scales = sorted(set(SCALES) | {float(scale)})
    best_key, best = None, (float(scale), [list(map(float, r)) for r in aspect_ratios])
    for set_index, ratios in enumerate(candidate_ratio_sets(aspect_ratios, sample)):
        shares = (best_anchor_iou(sample, levels, scales, num_scales, ratios, image_size) >= match_iou).mean(axis=0)
        for s, share in zip(scales, shares):
            key = (-round(float(share), 6), set_index, abs(math.log2(s / scale)), s)
            if best_key is None or key < best_key:
                best_key, best = key, (round(float(s), 2), ratios)
    return best


# ----------------------------------------------------------------------------------- YOLO heads
def yolo_worst_ratio(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Per box (w, h) ``[N, 2]``: the smallest over ``anchors`` ``[K, 2]`` of the larger of the width and
    height ratios (either way), ``[N]``; the box matches when it is below ``anchor_t``, as in
    ``core.tasks.yolo.build_targets``."""
    out = np.full(len(wh), np.inf)
    for start in range(0, len(wh), _CHUNK):
        r = wh[start:start + _CHUNK, None, :] / anchors[None]  # [n, K, 2]
        out[start:start + _CHUNK] = np.maximum(r, 1.0 / r).max(axis=2).min(axis=1)
    return out


def yolo_share(wh: np.ndarray, anchors: np.ndarray, anchor_t: float) -> float:
    """Share of boxes (w, h) that match an anchor (see :func:`yolo_worst_ratio`); NaN for no boxes."""
    if len(wh) == 0:
        return float("nan")
    return float((yolo_worst_ratio(wh, np.asarray(anchors, dtype=np.float64).reshape(-1, 2)) < anchor_t).mean())


def _fitness(wh: np.ndarray, k: np.ndarray, anchor_t: float) -> float:
    """YOLOv5's anchor fitness: mean over boxes of the best anchor's ``min(w ratio, h ratio)`` (ratios
    taken <= 1), counting 0 where that is not above ``1 / anchor_t``."""
    r = wh[:, None] / k[None]
    best = np.minimum(r, 1.0 / r).min(axis=2).max(axis=1)
    return float((best * (best > 1.0 / anchor_t)).mean())


def _kmeans(wh: np.ndarray, n: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """One k-means run on ``wh`` with distance ``1 - IoU`` of centred boxes: k-means++ seeding from
    ``rng``, medians as centres, until the assignment stops changing. ``[n, 2]``."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):  # k-means++: each next centre drawn by its squared distance to the nearest one
        d = (1.0 - centred_wh_iou(wh, np.asarray(centres)).max(axis=1)) ** 2
        total = d.sum()
        centres.append(wh[rng.choice(len(wh), p=d / total)] if total > 0 else wh[rng.integers(len(wh))])
    k = np.asarray(centres, dtype=np.float64)
    assign = None
    for _ in range(iterations):
        new = centred_wh_iou(wh, k).argmax(axis=1)
        if assign is not None and (new == assign).all():
            break
        assign = new
        for j in range(n):
            members = wh[assign == j]
            if len(members):
                k[j] = np.median(members, axis=0)
    return k


def kmeans_anchors(wh: np.ndarray, n: int, anchor_t: float, seed: int = 0, iterations: int = 100,
                   restarts: int = 8, generations: int = 300) -> np.ndarray:
    """``n`` anchor sizes ``[n, 2]`` (w, h), sorted by area, for boxes ``wh`` ``[N, 2]``: k-means with
    distance ``1 - IoU`` of centred boxes (k-means++ seeding, medians as centres; the best of
    ``restarts`` runs by mean IoU of each box with its nearest centre), then ``generations``
    rounds of YOLOv5's genetic refinement (each anchor's w and h multiplied by ``1 + 0.1 x normal x
    uniform`` with probability 0.9, clipped to 0.3 .. 3; kept when :func:`_fitness` rises). Boxes under
    2 px a side are left out, as YOLOv5 does. Seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh >= 2.0).all(axis=1)]
    wh = wh[_sample(len(wh), seed)]
    if len(wh) < n:
        raise ValueError(f"{len(wh)} boxes of at least 2 px are too few for {n} anchors")
    k = max((_kmeans(wh, n, rng, iterations) for _ in range(restarts)),
            key=lambda c: centred_wh_iou(wh, c).max(axis=1).mean())  # the restart of the highest mean IoU
    best = _fitness(wh, k, anchor_t)
    for _ in range(generations):
        v = np.ones_like(k)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < 0.9) * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1).clip(0.3, 3.0)
        trial = (k * v).clip(min=2.0)
        f = _fitness(wh, trial, anchor_t)
        if f > best:
            k, best = trial, f
    return k[np.argsort(k.prod(axis=1), kind="stable")]


def yolo_rows(anchors: np.ndarray, like: Sequence[Sequence[float]]) -> list[list[int]]:
    """Anchor sizes ``[n, 2]`` (sorted by area) as ``anchors.yolo`` rows shaped like ``like`` (the same
    number of (w, h) pairs per level), rounded to whole pixels (>= 1)."""
    flat = [max(1, int(round(float(v)))) for v in np.asarray(anchors).reshape(-1)]
    rows, start = [], 0
    for row in like:
        rows.append(flat[start:start + len(row)])
        start += len(row)
    return rows


# ------------------------------------------------------------------------------------ the check
def format_value(value: Any) -> str:
    """A config value as a ``--set`` line or a message writes it."""
    return repr(value)


@dataclass
class AnchorFit:
    """What ``core.tasks.anchor_check.measure_anchor_fit`` found.

    ``boxes``: training boxes counted; ``share``: those that match an anchor (NaN without boxes);
    ``rule``: what matching means, as the printed line says it; ``remedy``: what else would match
    more, said when no suggestion reaches the target (the head family writes both); ``current``: the
    config's anchor fields; ``suggestion``: config fields -> values that would fit better (empty when
    the anchors fit, or nothing better was found); ``suggested_share``: the share with them (all boxes).
    """

    boxes: int
    share: float
    rule: str
    remedy: str = ""
    current: dict[str, Any] = field(default_factory=dict)
    suggestion: dict[str, Any] = field(default_factory=dict)
    suggested_share: float | None = None
    target: float = FIT_TARGET

    @property
    def fits(self) -> bool:
        """No boxes, or at least ``target`` of them match."""
        return self.boxes == 0 or self.share >= self.target

    def set_args(self) -> str:
        """The suggestion as ``--set`` arguments to paste after a ``detection_train.py`` command."""
        return " ".join(f"--set {shlex.quote(f'anchors.{k}={format_value(v)}')}" for k, v in self.suggestion.items())

    def lines(self) -> list[str]:
        """What the trainer prints: one line, or a warning naming the fitting values."""
        if self.boxes == 0:
            return ["anchors: no training boxes to check the anchors against"]
        head = f"{self.share:.1%} of {self.boxes} training boxes {self.rule}"
        if self.fits:
            return [f"anchors: {head}"]
        fields = " / ".join(f"anchors.{k}" for k in self.current)
        text = f"warning: only {head}, below {self.target:.0%}"
        if self.suggestion and self.suggested_share is not None and self.suggested_share > self.share:
            text += (f"; {fields} that fit {self.suggested_share:.1%} of them: {self.set_args()} "
                     "(or --set anchors.auto=True to use them)")
            if self.suggested_share < self.target and self.remedy:
                text += f". {self.remedy}"
        else:
            text += f"; no {fields} tried fits more" + (f". {self.remedy}" if self.remedy else "")
        return [text]


def use_trained_anchors(cfg: Any, saved: dict[str, Any] | None,
                        log: Callable[[str], None] | None = None) -> list[str]:
    """A network works only with the anchors it was trained with. When a checkpoint's config (``saved``,
    as ``Config.to_dict()`` stores it) had ``anchors.auto = True``, the trainer may have replaced the
    anchors, so its ``anchors.scale`` / ``aspect_ratios`` / ``yolo`` replace ``cfg``'s where they differ
    (printed through ``log``, default stderr). Returns the fields replaced."""
    anchors = (saved or {}).get("anchors") if isinstance(saved, dict) else None
    if not isinstance(anchors, dict) or not anchors.get("auto"):
        return []
    changed = []
    for key in ("scale", "aspect_ratios", "yolo"):
        if key in anchors and anchors[key] != getattr(cfg.anchors, key):
            setattr(cfg.anchors, key, anchors[key])
            changed.append(key)
    if changed:
        text = ", ".join(f"anchors.{k} = {format_value(anchors[k])}" for k in changed)
        message = f"note: using the anchors the checkpoint was trained with (anchors.auto): {text}"
        if log is None:
            import sys

            print(message, file=sys.stderr)
        else:
            log(message)
    return changed
