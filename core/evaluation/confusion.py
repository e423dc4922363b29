"""Detection confusion matrix with a background row and column, as ultralytics' ``ConfusionMatrix``.

``matrix[p, t]`` counts objects: **rows are predicted classes, columns true classes**, and index
``C`` (the last row / column) is *background*. Per image, the detections scoring at least
``score_thr`` are matched one-to-one to the ground truth regardless of class: every (object,
detection) pair with IoU above ``iou_thr`` is a candidate, and candidates are taken greedily,
highest IoU first (ties: lower object index, then lower detection index), skipping any whose
object or detection is already matched. Then

* a matched object of class ``t`` found as class ``p`` adds 1 to ``[p, t]`` (the diagonal when
  right, off the diagonal when the class is wrong);
* an unmatched object of class ``t`` adds 1 to ``[C, t]`` (missed: predicted background);
* an unmatched detection of class ``p`` adds 1 to ``[p, C]`` (false detection: true background),
  so of several detections of one object all but the matched one count there.

``[C, C]`` stays 0. Column ``t`` sums to the number of objects of class ``t``; row ``p`` (without its
background cell) to the detections of class ``p`` that found an object. Boxes are xyxy in one pixel
space (original pixels in DetLab).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.engine.output_paths import atomic_output
from core.ops.iou import box_iou

CONFUSION_IOU = 0.45  # ultralytics' default IoU for the confusion matrix
CONFUSION_SCORE = 0.25  # and its default score threshold
BACKGROUND = "background"


def _np(x: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def match_detections(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_thr: float) -> list[tuple[int, int]]:
    """One-to-one ``(object index, detection index)`` pairs with IoU > ``iou_thr``, taken greedily
    by IoU, highest first (see the module docstring)."""
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return []
    iou = box_iou(gt_boxes, det_boxes)
    gi, di = np.nonzero(iou > iou_thr)  # row-major: by object, then detection
    order = np.argsort(-iou[gi, di], kind="stable")
    used_g, used_d, pairs = set(), set(), []
    for k in order.tolist():
        g, d = int(gi[k]), int(di[k])
        if g not in used_g and d not in used_d:
            used_g.add(g)
            used_d.add(d)
            pairs.append((g, d))
    return pairs


def confusion_matrix(detections: Sequence[tuple[Any, Any, Any]], ground_truth: Sequence[tuple[Any, Any]],
                     num_classes: int, iou_thr: float = CONFUSION_IOU,
                     score_thr: float = CONFUSION_SCORE) -> np.ndarray:
    """Counts ``int64 [C + 1, C + 1]``, rows predicted, columns true, index ``C`` background (see the
    module docstring), summed over images.

    ``detections[i]``: image ``i``'s ``(boxes [K, 4] xyxy, scores [K], labels [K])``;
    ``ground_truth[i]``: its ``(boxes [N, 4] xyxy, labels [N])``; labels contiguous ``0..C-1``.
    Detections scoring below ``score_thr`` are left out; a match needs IoU > ``iou_thr``."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    C = int(num_classes)
    matrix = np.zeros((C + 1, C + 1), dtype=np.int64)
    for i, ((db, ds, dl), (gb, gl)) in enumerate(zip(detections, ground_truth)):
        db, ds, dl = _np(db, np.float64, (-1, 4)), _np(ds, np.float64, (-1,)), _np(dl, np.int64, (-1,))
        gb, gl = _np(gb, np.float64, (-1, 4)), _np(gl, np.int64, (-1,))
        if not (len(db) == len(ds) == len(dl)) or len(gb) != len(gl):
            raise ValueError(f"image {i}: {len(db)} boxes, {len(ds)} scores, {len(dl)} labels detected; "
                             f"{len(gb)} boxes, {len(gl)} labels true")
        for name, lab in (("detected", dl), ("true", gl)):
            if len(lab) and (lab.min() < 0 or lab.max() >= C):
                raise ValueError(f"image {i}: {name} label {int(lab.max() if lab.max() >= C else lab.min())} "
                                 f"outside 0..{C - 1}")
        keep = ds >= score_thr
        db, dl = db[keep], dl[keep]
        pairs = match_detections(gb, db, iou_thr)
        matched_g = np.zeros(len(gb), dtype=bool)
        matched_d = np.zeros(len(db), dtype=bool)
        for g, d in pairs:
            matrix[dl[d], gl[g]] += 1
            matched_g[g] = matched_d[d] = True
        np.add.at(matrix, (np.full(int((~matched_g).sum()), C), gl[~matched_g]), 1)
        np.add.at(matrix, (dl[~matched_d], np.full(int((~matched_d).sum()), C)), 1)
    return matrix


def detections_from_results(results: Sequence[dict], category_ids: Sequence[int]
                            ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """COCO result dicts (bbox xywh) -> ``{image_id: (boxes xyxy, scores, labels)}``; results of
    categories not in ``category_ids`` are left out."""
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    grouped: dict[int, list[tuple[list[float], float, int]]] = {}
    for r in results:
        lab = label_of.get(int(r["category_id"]))
        if lab is None:
            continue
        x, y, w, h = (float(v) for v in r["bbox"])
        grouped.setdefault(int(r["image_id"]), []).append(([x, y, x + w, y + h], float(r["score"]), lab))
    return {i: (np.array([b for b, _, _ in rows], np.float64).reshape(-1, 4), np.array([s for _, s, _ in rows]),
                np.array([lab for _, _, lab in rows], np.int64)) for i, rows in grouped.items()}


def _names(class_names: Sequence[str]) -> list[str]:
    return [str(n) for n in class_names] + [BACKGROUND]


def format_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The counts as an aligned text table: one row per predicted class, one column per true class,
    background last."""
    names = _names(class_names)
    corner = "predicted \\ true"
    first_w = max(len(corner), *(len(n) for n in names))
    col_w = max(6, *(len(n) for n in names), *(len(str(int(v))) for v in matrix.ravel()))
    lines = [f"{corner:<{first_w}}  " + "  ".join(f"{n:>{col_w}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:<{first_w}}  " + "  ".join(f"{int(v):>{col_w}}" for v in row))
    return "\n".join(lines)


def write_confusion_csv(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """The counts as CSV: a header of true classes (background last) after the corner cell
    ``predicted \\ true``, then one row per predicted class. Returns the path."""
    path = Path(path)
    names = _names(class_names)
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["predicted \\ true", *names])
        for name, row in zip(names, matrix):
            writer.writerow([name, *(int(v) for v in row)])
    return path


def save_confusion_png(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                       iou_thr: float = CONFUSION_IOU, score_thr: float = CONFUSION_SCORE) -> Path:
    """Draw the matrix: rows predicted (y axis), columns true (x axis), each cell coloured by its
    share of its true column (of that class's objects; background column: of all false detections)
    and labelled with its count. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = _names(class_names)
    n = len(names)
    share = matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1)
    side = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true column")
    if n <= 40:
        for p in range(n):
            for t in range(n):
                if matrix[p, t]:
                    ax.text(t, p, str(int(matrix[p, t])), ha="center", va="center", fontsize=8,
                            color="white" if share[p, t] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=90 if n > 6 else 45, ha="center" if n > 6 else "right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    ax.set_title(f"confusion matrix: rows predicted, columns true\n"
                 f"(match IoU > {iou_thr:g}, score >= {score_thr:g})", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
