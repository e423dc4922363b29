"""COCO-style evaluation: ground truth from records, results conversion, metrics, PR curves.

Boxes inside DetLab are ``xyxy`` float32 in *original* image pixels; COCO json uses ``xywh``.
Class labels are contiguous ``0..C-1``; ``category_ids[c]`` is the id written to COCO json.
pycocotools prints progress noise on every call; everything here runs it with stdout captured.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.engine.output_paths import atomic_output

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


class RecordLike(Protocol):
    """The fields of ``core.data.records.ImageRecord`` that evaluation reads."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: Any   # float32 [N, 4] xyxy, original pixels
    labels: Any  # int64 [N], contiguous 0..C-1
    # optional, read with getattr: ignore_boxes [M, 4] / ignore_labels [M], ground truth that is
    # neither hit nor miss (VOC difficult)


class SpecLike(Protocol):
    """The fields of ``core.data.spec.DatasetSpec`` that evaluation reads."""

    class_names: list[str]
    category_ids: list[int]


@dataclass
class EvalResult:
    """Outcome of one COCO evaluation.

    ``stats``: the 12 pycocotools numbers by name (see ``STAT_NAMES``); -1 where pycocotools
    reports -1 (no ground truth in that area range).
    ``summary``: pycocotools' 12-line ``summarize()`` text, verbatim.
    ``per_class``: ``(name, AP, AP50)`` per DetLab class, in contiguous label order; -1.0 for a
    class with no ground truth.
    ``precision``: ``[T, R, C, A, M]`` (IoU thresholds, recall thresholds, classes in contiguous
    label order, area ranges, max-dets); -1 where undefined. Area 0 is 'all', max-dets -1 is 100.
    """

    stats: dict[str, float]
    summary: str
    per_class: list[tuple[str, float, float]]
    precision: np.ndarray
    iou_thrs: np.ndarray = field(default_factory=lambda: np.linspace(0.5, 0.95, 10))
    rec_thrs: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 101))


def _to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


DIFFICULT_KEY = "difficult"  # ground-truth annotation key: 1 = ignored (VOC difficult)


class _COCOeval(COCOeval):
    """COCOeval that also ignores ground truth marked ``difficult``: matched by IoU like any box, but
    as pycocotools' ignored ground truth (a match is neither hit nor false positive, no miss
    undetected). pycocotools' own ``ignore`` key cannot carry this: ``_prepare`` overwrites it
    with ``iscrowd``."""

    def _prepare(self) -> None:
        super()._prepare()
        for gts in self._gts.values():
            for gt in gts:
                if gt.get(DIFFICULT_KEY):
                    gt["ignore"] = 1


def _quiet_index(coco: COCO) -> COCO:
    """Run ``coco.createIndex()`` without pycocotools' prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ground_truth_from_records(
    records: Sequence[RecordLike],
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> COCO:
    """Build an in-memory COCO ground truth from image records.

    ``records[i].boxes`` are float32 ``[N, 4]`` xyxy in original pixels and ``labels`` int64
    ``[N]`` contiguous; label ``c`` becomes category ``category_ids[c]``. Each annotation gets
    ``area = w * h``, ``iscrowd = 0`` and an id starting at 1 (pycocotools treats id 0 as
    "unmatched", so it must not be used). A record's ``ignore_boxes`` / ``ignore_labels`` (VOC
    ``difficult``) are added with ``difficult = 1``: :func:`evaluate` ignores them (a detection
    matching one at the IoU threshold is neither a hit nor a false positive; undetected, it is no
    miss). ``iscrowd`` is not used for them, as pycocotools would then match by intersection over
    the detection's area and not by IoU.
    """
    if len(class_names) != len(category_ids):
        raise ValueError(
            f"{len(class_names)} class names but {len(category_ids)} category ids")
    images: list[dict] = []
    annotations: list[dict] = []
    seen: set[int] = set()
    for rec in records:
        image_id = int(rec.image_id)
        if image_id in seen:
            raise ValueError(f"duplicate image_id {image_id} ({rec.file_name})")
        seen.add(image_id)
        images.append({"id": image_id, "file_name": str(rec.file_name),
                       "width": int(rec.width), "height": int(rec.height)})
        ignore_boxes = getattr(rec, "ignore_boxes", None)
        ignore_labels = getattr(rec, "ignore_labels", None)
        groups = [(rec.boxes, rec.labels, False)]
        if ignore_boxes is not None and ignore_labels is not None:
            groups.append((ignore_boxes, ignore_labels, True))
        for group_boxes, group_labels, ignored in groups:
            boxes = _to_numpy(group_boxes).reshape(-1, 4).astype(np.float64)
            labels = _to_numpy(group_labels).reshape(-1).astype(np.int64)
            if len(boxes) != len(labels):
                raise ValueError(f"image {image_id}: {len(boxes)} boxes but {len(labels)} labels")
            for (x1, y1, x2, y2), lab in zip(boxes.tolist(), labels.tolist()):
                if not 0 <= lab < len(category_ids):
                    raise ValueError(f"image {image_id}: label {lab} outside 0..{len(category_ids) - 1}")
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_ids[lab]),
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    **({DIFFICULT_KEY: 1} if ignored else {}),
                })
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(cid), "name": str(name)}
                       for name, cid in zip(class_names, category_ids)],
    }
    return _quiet_index(coco)


def coco_ground_truth(spec: SpecLike, split: str, records: Sequence[RecordLike]) -> COCO:
    """COCO ground truth for ``records`` of ``split`` of a dataset spec (ARCHITECTURE.md form).

    A COCO-format dataset is evaluated against its own annotation file (crowd regions and
    segmentation areas as pycocotools expects), restricted to the images of ``records`` (images
    left out of them, e.g. by ``dataset.skip_bad_records``, are no misses); other formats against
    boxes built from ``records``.
    """
    if getattr(spec, "format", None) == "coco":  # the user's own json: crowd flags and mask areas count
        coco = coco_ground_truth_from_file(spec.splits[split].annotations)
        return restrict_images(coco, [rec.image_id for rec in records])
    coco = coco_ground_truth_from_records(records, spec.class_names, spec.category_ids)
    coco.dataset["info"] = {"description": f"DetLab ground truth, split {split}"}
    return coco


def restrict_images(coco: COCO, image_ids: Sequence[int]) -> COCO:
    """A new COCO ground truth with only the images ``image_ids`` and their annotations (the other
    top-level entries, such as categories, as they are)."""
    keep = {int(i) for i in image_ids}
    data = dict(coco.dataset)
    data["images"] = [im for im in coco.dataset.get("images", []) if im["id"] in keep]
    data["annotations"] = [a for a in coco.dataset.get("annotations", []) if a["image_id"] in keep]
    out = COCO()
    out.dataset = data
    return _quiet_index(out)


def coco_ground_truth_from_file(path: str | os.PathLike) -> COCO:
    """Load a COCO annotation json (boxes xywh, original pixels) for scoring, without pycocotools'
    prints. The annotations are renumbered 1..N in file order: pycocotools takes id 0 for "unmatched"
    (a hit on it counts as a false positive) and keeps one annotation per id (ids restarting per image,
    as in merged files, would drop the others). Where an annotation has no ``area`` it gets its box's
    ``w * h`` and where it has no ``iscrowd``, 0 (pycocotools needs both; DetLab's reader takes them
    so)."""
    with open(path) as f:
        data = json.load(f)
    annotations = []
    for k, a in enumerate(data.get("annotations", [])):
        a = {**a, "id": k + 1}
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            box = a.get("bbox")
            a["area"] = float(box[2]) * float(box[3]) if isinstance(box, list) and len(box) == 4 else 0.0
        annotations.append(a)
    coco = COCO()
    coco.dataset = {**data, "annotations": annotations}
    return _quiet_index(coco)


def to_coco_results(
    image_id: int,
    boxes: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int],
) -> list[dict]:
    """Convert one image's detections to COCO result dicts.

    ``boxes``: ``[K, 4]`` xyxy in *original* image pixels (numpy or tensor); ``scores``: ``[K]``;
    ``labels``: ``[K]`` contiguous class indices, mapped through ``category_ids``. Output bbox is
    ``[x, y, w, h]`` rounded to 2 decimals, score rounded to 5 decimals.
    """
    b = _to_numpy(boxes).reshape(-1, 4).astype(np.float64)
    s = _to_numpy(scores).reshape(-1).astype(np.float64)
    lab = _to_numpy(labels).reshape(-1).astype(np.int64)
    if not len(b) == len(s) == len(lab):
        raise ValueError(f"{len(b)} boxes, {len(s)} scores, {len(lab)} labels")
    out: list[dict] = []
    for (x1, y1, x2, y2), sc, c in zip(b.tolist(), s.tolist(), lab.tolist()):
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[c]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(sc, 5),
        })
    return out


def _load_results(coco_gt: COCO, results: Sequence[dict]) -> COCO:
    """``coco_gt.loadRes`` that accepts an empty list and does not mutate ``results``."""
    if len(results) == 0:
        res = COCO()
        res.dataset = {
            "images": list(coco_gt.dataset.get("images", [])),
            "categories": list(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        return _quiet_index(res)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes([dict(r) for r in results])


def evaluate(
    coco_gt: COCO,
    results: Sequence[dict],
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Run pycocotools' COCOeval on ``results`` (COCO result dicts, bbox xywh original pixels).

    ``class_names`` / ``category_ids`` give the DetLab class order for ``per_class`` and
    ``precision``; when omitted they are taken from the ground truth's categories, sorted by id.
    Scoring covers the ground truth's images, or only those of them in ``image_ids`` (the images
    that were evaluated; pycocotools' ``params.imgIds``). Results on other images are dropped;
    scored images without detections count as misses. Ground truth marked ``difficult`` (see
    :func:`coco_ground_truth_from_records`) is ignored. An empty ``results`` gives zeros (and -1
    where pycocotools would, i.e. no ground truth in an area range) instead of failing.
    """
    if category_ids is None:
        category_ids = sorted(coco_gt.getCatIds())
    if class_names is None:
        class_names = [coco_gt.cats[c].get("name", str(c)) if c in coco_gt.cats else str(c)
                       for c in category_ids]
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")

    gt_images = set(coco_gt.getImgIds())
    if image_ids is not None:
        gt_images &= {int(i) for i in image_ids}
    kept = [r for r in results if r["image_id"] in gt_images]
    coco_dt = _load_results(coco_gt, kept)

    cocoeval = _COCOeval(coco_gt, coco_dt, iouType=iou_type)
    cocoeval.params.imgIds = sorted(gt_images)  # only the evaluated images
    cocoeval.params.catIds = [int(c) for c in category_ids]  # only the classes the model knows
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.evaluate()
        cocoeval.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cocoeval.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, cocoeval.stats)}

    params = cocoeval.eval["params"]
    coco_prec = np.asarray(cocoeval.eval["precision"])  # [T, R, K, A, M], K = params.catIds
    k_of = {int(cid): k for k, cid in enumerate(params.catIds)}
    t_dim, r_dim, _, a_dim, m_dim = coco_prec.shape
    precision = -np.ones((t_dim, r_dim, len(category_ids), a_dim, m_dim))
    per_class: list[tuple[str, float, float]] = []
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    for c, (name, cid) in enumerate(zip(class_names, category_ids)):
        k = k_of.get(int(cid))
        if k is not None:
            precision[:, :, c] = coco_prec[:, :, k]
        p_all = precision[:, :, c, 0, -1]
        p_50 = precision[iou50, :, c, 0, -1]
        ap = float(np.mean(p_all[p_all > -1])) if np.any(p_all > -1) else -1.0
        ap50 = float(np.mean(p_50[p_50 > -1])) if np.any(p_50 > -1) else -1.0
        per_class.append((str(name), ap, ap50))

    return EvalResult(
        stats=stats,
        summary=buf.getvalue(),
        per_class=per_class,
        precision=precision,
        iou_thrs=np.asarray(params.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(params.recThrs, dtype=np.float64),
    )


def evaluate_results_file(
    gt_json: str | os.PathLike,
    results_json: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
) -> EvalResult:
    """Evaluate an existing COCO results json (list of dicts, bbox xywh original pixels)
    against a COCO ground-truth json. Class order defaults to the gt categories sorted by id."""
    coco_gt = coco_ground_truth_from_file(gt_json)
    with open(results_json) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{results_json}: expected a json list of result dicts")
    return evaluate(coco_gt, results, class_names, category_ids, iou_type)


def _fmt_metric(v: float) -> str:
    """Percentage with one decimal, or 'n/a' for -1 / NaN (class without ground truth)."""
    if v is None or math.isnan(v) or v < 0:
        return "n/a"
    return f"{100.0 * v:.1f}"


def format_per_class_table(per_class: Sequence[tuple[str, float, float]]) -> str:
    """Aligned text table, one row per class: name, AP and AP50 in percent ('n/a' = no gt)."""
    name_w = max([len("class")] + [len(n) for n, _, _ in per_class])
    header = f"{'class':<{name_w}}  {'AP':>6}  {'AP50':>6}"
    lines = [header, "-" * len(header)]
    for name, ap, ap50 in per_class:
        lines.append(f"{name:<{name_w}}  {_fmt_metric(ap):>6}  {_fmt_metric(ap50):>6}")
    return "\n".join(lines)


def _safe_filename(name: str) -> str:
    """Class name -> something usable as a file name."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep or "class"


def save_pr_curves(
    eval_result: EvalResult,
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
) -> list[Path]:
    """Write one ``pr_<idx>_<name>.png`` per class into ``out_dir``: precision vs recall at
    IoU 0.5 and averaged over IoU 0.50:0.95 (area 'all', 100 dets). Classes without ground
    truth get a note instead of curves. Returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prec = eval_result.precision
    rec = eval_result.rec_thrs
    iou50 = int(np.argmin(np.abs(eval_result.iou_thrs - 0.5)))
    written: list[Path] = []
    for c, name in enumerate(class_names):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        p = prec[:, :, c, 0, -1] if c < prec.shape[2] else -np.ones((1, len(rec)))
        if np.all(p <= -1):
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
        else:
            p50 = np.where(p[iou50] > -1, p[iou50], np.nan)
            mask = p > -1
            count = mask.sum(axis=0)
            pmean = np.where(count > 0, np.where(mask, p, 0.0).sum(axis=0) / np.maximum(count, 1),
                             np.nan)
            ap = eval_result.per_class[c][1] if c < len(eval_result.per_class) else float("nan")
            ap50 = eval_result.per_class[c][2] if c < len(eval_result.per_class) else float("nan")
            ax.plot(rec, p50, label=f"IoU 0.50 (AP50 {_fmt_metric(ap50)})")
            ax.plot(rec, pmean, label=f"IoU 0.50:0.95 (AP {_fmt_metric(ap)})")
            ax.legend(loc="lower left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(str(name))
        ax.grid(alpha=0.3)
        path = out / f"pr_{c:03d}_{_safe_filename(str(name))}.png"
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(path)
    return written
