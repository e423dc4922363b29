"""Tests for core.evaluation.coco_eval, core.inference.visualize, core.evaluation.plot and utils.plot_log."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.evaluation.coco_eval import (
    STAT_NAMES,
    coco_ground_truth_from_file,
    coco_ground_truth_from_records,
    evaluate,
    evaluate_results_file,
    format_per_class_table,
    save_pr_curves,
    to_coco_results,
)
from core.data.records import ImageRecord
from core.evaluation.plot import plot_runs, read_log, text_loss_bars
from core.inference.visualize import draw_detections, save_grid, save_png

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["cat", "dog", "person"]
CATEGORY_IDS = [1, 3, 7]  # deliberately not contiguous


def make_records(n_images: int = 6, seed: int = 0) -> list[ImageRecord]:
    """Images with small, medium and large boxes of all classes (xyxy original pixels)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_images):
        w, h = 640, 480
        boxes, labels = [], []
        for size in (20, 60, 200):  # small (<32^2), medium, large (>96^2)
            x1, y1 = rng.uniform(0, w - size - 1), rng.uniform(0, h - size - 1)
            boxes.append([x1, y1, x1 + size, y1 + size * 0.9])
            labels.append(int(rng.integers(0, len(CLASS_NAMES))))
        recs.append(ImageRecord(i + 1, f"/img/{i + 1}.jpg", w, h,
                        np.asarray(boxes, np.float32), np.asarray(labels, np.int64)))
    return recs


def perfect_results(recs: list[ImageRecord]) -> list[dict]:
    out = []
    for r in recs:
        out += to_coco_results(r.image_id, r.boxes, np.ones(len(r.boxes)), r.labels, CATEGORY_IDS)
    return out


def noisy_results(recs: list[ImageRecord], seed: int = 1) -> list[dict]:
    """Jittered true boxes, wrong labels and random false positives with random scores."""
    rng = np.random.default_rng(seed)
    out = []
    for r in recs:
        b = r.boxes + rng.normal(0, 4, r.boxes.shape).astype(np.float32)
        lab = r.labels.copy()
        lab[0] = (lab[0] + 1) % len(CLASS_NAMES)
        fp = rng.uniform(0, 400, (3, 2))
        fp = np.concatenate([fp, fp + rng.uniform(10, 150, (3, 2))], axis=1).astype(np.float32)
        boxes = np.concatenate([b, fp])
        labels = np.concatenate([lab, rng.integers(0, len(CLASS_NAMES), 3)])
        out += to_coco_results(r.image_id, boxes, rng.uniform(0.05, 1, len(boxes)), labels,
                               CATEGORY_IDS)
    return out


@pytest.fixture(scope="module")
def recs() -> list[ImageRecord]:
    return make_records()


@pytest.fixture(scope="module")
def gt(recs) -> COCO:
    return coco_ground_truth_from_records(recs, CLASS_NAMES, CATEGORY_IDS)


def test_ground_truth_is_quiet_and_complete(recs, capsys):
    coco = coco_ground_truth_from_records(recs, CLASS_NAMES, CATEGORY_IDS)
    assert capsys.readouterr().out == ""
    assert sorted(coco.getImgIds()) == [r.image_id for r in recs]
    assert sorted(coco.getCatIds()) == CATEGORY_IDS
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    x1, y1, x2, y2 = recs[0].boxes[0].tolist()
    assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert ann["area"] == pytest.approx((x2 - x1) * (y2 - y1))
    assert ann["iscrowd"] == 0 and ann["id"] >= 1


def test_perfect_detections_give_ap_one(gt, recs, capsys):
    res = evaluate(gt, perfect_results(recs), CLASS_NAMES, CATEGORY_IDS)
    assert capsys.readouterr().out == ""
    assert res.stats["AP"] == pytest.approx(1.0)
    assert res.stats["AP50"] == pytest.approx(1.0)
    assert res.stats["AR100"] == pytest.approx(1.0)
    for name, ap, ap50 in res.per_class:
        assert ap == pytest.approx(1.0) and ap50 == pytest.approx(1.0), name
    assert len(res.summary.strip().splitlines()) == 12
    assert res.summary.splitlines()[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")


def test_shifted_box_lowers_ap(gt, recs):
    results = perfect_results(recs)
    results[0] = dict(results[0], bbox=[v + 8.0 if i < 2 else v
                                         for i, v in enumerate(results[0]["bbox"])])
    res = evaluate(gt, results, CLASS_NAMES, CATEGORY_IDS)
    assert res.stats["AP"] < 1.0


def test_empty_results_give_zeros(gt):
    res = evaluate(gt, [], CLASS_NAMES, CATEGORY_IDS)
    assert set(res.stats) == set(STAT_NAMES)
    assert all(v == 0.0 for v in res.stats.values()), res.stats
    assert all(ap == 0.0 and ap50 == 0.0 for _, ap, ap50 in res.per_class)
    assert len(res.summary.strip().splitlines()) == 12


def test_images_without_detections_are_misses_and_unknown_images_ignored(gt, recs):
    results = [r for r in perfect_results(recs) if r["image_id"] != recs[0].image_id]
    results.append({"image_id": 9999, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9})
    res = evaluate(gt, results, CLASS_NAMES, CATEGORY_IDS)
    assert 0.0 < res.stats["AR100"] < 1.0


def test_evaluate_matches_pycocotools(tmp_path, gt, recs):
    results = noisy_results(recs)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt.dataset))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        ref_gt = COCO(str(gt_path))
        ref = COCOeval(ref_gt, ref_gt.loadRes(copy.deepcopy(results)), "bbox")
        ref.evaluate()
        ref.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        ref.summarize()
    ref_summary = out.getvalue()

    before = copy.deepcopy(results)
    res = evaluate(gt, results, CLASS_NAMES, CATEGORY_IDS)
    assert results == before  # caller's list untouched
    assert 0.05 < res.stats["AP"] < 0.95
    assert [res.stats[n] for n in STAT_NAMES] == pytest.approx(list(ref.stats), abs=1e-12)
    assert res.summary == ref_summary
    np.testing.assert_allclose(res.precision, ref.eval["precision"])  # cat ids already sorted

    res_file = tmp_path / "results.json"
    res_file.write_text(json.dumps(results))
    from_file = evaluate_results_file(gt_path, res_file, CLASS_NAMES, CATEGORY_IDS)
    assert from_file.stats == pytest.approx(res.stats)
    assert coco_ground_truth_from_file(gt_path).getImgIds() == gt.getImgIds()


def test_per_class_table_and_pr_curves(tmp_path, gt, recs):
    names = CLASS_NAMES + ["unicorn"]  # a class without ground truth
    res = evaluate(gt, noisy_results(recs), names, CATEGORY_IDS + [42])
    assert [n for n, _, _ in res.per_class] == names
    assert res.per_class[-1][1:] == (-1.0, -1.0)
    table = format_per_class_table(res.per_class).splitlines()
    rows = table[2:]
    assert len(rows) == len(names)
    assert all(r.split()[0] == n for r, n in zip(rows, names))
    assert "n/a" in rows[-1]
    assert len({len(line) for line in table}) == 1  # aligned
    paths = save_pr_curves(res, names, tmp_path / "pr")
    assert len(paths) == len(names) and all(p.stat().st_size > 0 for p in paths)


def test_to_coco_results_converts_boxes_and_labels():
    torch = pytest.importorskip("torch")
    boxes = torch.tensor([[10.0, 20.0, 30.5, 60.25], [0.0, 0.0, 1.0, 2.0]])
    out = to_coco_results(5, boxes, torch.tensor([0.9, 0.123456789]), torch.tensor([2, 0]),
                          CATEGORY_IDS)
    assert out == [
        {"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 20.5, 40.25], "score": 0.9},
        {"image_id": 5, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.12346},
    ]
    assert json.dumps(out)  # plain python types
    assert to_coco_results(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0), CATEGORY_IDS) == []


def test_draw_detections_changes_pixels(tmp_path):
    img = Image.new("RGB", (160, 120), (128, 128, 128))
    boxes = np.array([[10, 30, 80, 100], [90, 5, 150, 60]], np.float32)
    out = draw_detections(img, boxes, np.array([0, 2]), np.array([0.9, 0.4]), CLASS_NAMES)
    assert out.size == img.size
    assert np.any(np.asarray(out) != np.asarray(img))
    assert np.all(np.asarray(img) == 128)  # input untouched
    hidden = draw_detections(img, boxes, np.array([0, 2]), np.array([0.9, 0.4]), CLASS_NAMES,
                             score_thresh=0.95)
    assert np.all(np.asarray(hidden) == 128)
    grid = save_grid([out, img, out], tmp_path / "grid.png", cols=2)
    with Image.open(grid) as g:
        assert g.width >= 2 * 160 and g.height >= 2 * 120


def write_log(run_dir: Path, n_steps: int = 200, start: float = 5.0, truncate: bool = False):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, n_steps + 1):
        loss = start * np.exp(-s / 60) + 0.2
        lines.append(json.dumps({"kind": "train", "epoch": s // 50, "step": s, "loss": loss,
                                 "cls_loss": loss / 2, "box_loss": loss / 2,
                                 "lr": 0.01 * min(1, s / 20), "images_per_s": 100.0}))
        if s % 50 == 0:
            lines.append(json.dumps({"kind": "eval", "epoch": s // 50, "step": s,
                                     "AP": 0.1 * s / 50, "AP50": 0.2 * s / 50}))
    text = "\n".join(lines) + "\n"
    if truncate:
        text += '{"kind": "train", "epoch": 4, "st'
    (run_dir / "log.jsonl").write_text(text)


def test_plot_runs_writes_png(tmp_path):
    write_log(tmp_path / "run_a", truncate=True)
    write_log(tmp_path / "run_b", start=3.0)
    train, evals = read_log(tmp_path / "run_a" / "log.jsonl")
    assert len(train) == 200 and len(evals) == 4
    out = plot_runs([tmp_path / "run_a", tmp_path / "run_b"], tmp_path / "cmp.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 500


def test_text_loss_bars(tmp_path):
    write_log(tmp_path / "run", n_steps=400)
    text = text_loss_bars(tmp_path / "run", rows=10, width=80)
    lines = text.splitlines()
    assert lines[0].startswith("loss range: ")
    hi, lo = (float(v) for v in lines[0][len("loss range: "):].split(" to "))
    assert hi > lo
    rows = [ln for ln in lines if ln.rstrip().endswith("|") and "#" in ln]
    assert len(rows) == 10
    bars = [ln.count("#") for ln in rows]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1]
    assert all(len(ln) == 80 for ln in rows)
    min_line = [ln for ln in lines if ln.startswith("MIN")]
    assert len(min_line) == 1 and min_line[0].split()[1] == "400" and ">" in min_line[0]
    assert lines[-1] == "-" * 80


def test_plot_log_cli(tmp_path):
    missing = tmp_path / "no_such_run"
    proc = subprocess.run([sys.executable, "-m", "utils.plot_log", str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert str(missing / "log.jsonl") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    write_log(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "utils.plot_log", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "curves.png").is_file()

    def plot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "utils.plot_log", str(tmp_path / "run"), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    # the run's own curves.png is redrawn from its log; any other PNG that exists only with --overwrite,
    # and the log itself never
    assert plot().returncode == 0
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    refused = plot("--out", str(mine))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--overwrite" in refused.stderr and mine.read_bytes() == b"my picture"
    assert plot("--out", str(mine), "--overwrite").returncode == 0 and mine.read_bytes()[:4] == b"\x89PNG"
    log = tmp_path / "run" / "log.jsonl"
    text = log.read_text()
    assert plot("--out", str(log), "--overwrite").returncode == 2 and log.read_text() == text


def test_a_drawing_is_complete_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``save_png``: the PNG reads back pixel for pixel; a save that fails half-way (a full disk, a stop)
    leaves no file under the drawing's name and no temporary file, and an earlier drawing there intact."""
    from PIL import Image

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    target = tmp_path / "x.png"
    save_png(picture, target)
    assert np.array_equal(np.asarray(Image.open(target)), np.asarray(picture))
    before = target.read_bytes()

    def half_then_fail(self, fp, *args, **kwargs) -> None:
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_png(picture, target)
    with pytest.raises(OSError, match="No space"):
        save_png(picture, tmp_path / "new.png")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("damage", ["ids from 0", "ids per image", "no area, no iscrowd"])
def test_a_user_json_scores_perfect_detections_as_perfect(tmp_path: Path, recs, damage: str) -> None:
    """The user's own COCO json is scored as pycocotools would score a well-formed copy of it:
    annotation id 0, ids repeated (restarting per image, as merged files have them) and missing
    ``area`` / ``iscrowd`` fields change nothing."""
    gt = coco_ground_truth_from_records(recs, CLASS_NAMES, CATEGORY_IDS).dataset
    data = copy.deepcopy(gt)
    per_image: dict[int, int] = {}
    for k, a in enumerate(data["annotations"]):
        if damage == "ids from 0":
            a["id"] = k
        elif damage == "ids per image":
            a["id"] = per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        else:
            del a["area"], a["iscrowd"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    result = evaluate(coco_ground_truth_from_file(path), perfect_results(recs), CLASS_NAMES, CATEGORY_IDS)
    assert result.stats["AP"] == pytest.approx(1.0) and result.stats["AR100"] == pytest.approx(1.0), damage
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(perfect_results(recs)))
    assert evaluate_results_file(path, results_path).stats["AP"] == pytest.approx(1.0)
