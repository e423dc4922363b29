"""The start-up anchor check (core.tasks.anchor_check, core.tasks.anchor_fit): the share of training boxes an anchor matches, the
warning below 95 % with a --set line that fits, anchors.auto, and YOLOv5-style k-means anchors."""
from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch

from core.tasks import anchor_check, anchor_fit
from core.ops.anchors import AnchorGenerator
from core.config.loading import load_config
from core.data.records import ImageRecord
from core.ops.iou import batched_box_iou

BASE = "config/effdet_b0.py"  # EfficientDet-D0: 512 px, P3-P7, scale 4, 3 x 3 anchors
YOLO = "config/yolov4_effb0.py"  # 640 px, P3-P5, YOLOv4's COCO anchors, anchor_t 4


def records_from_wh(wh: np.ndarray, image: int, seed: int, per_image: int = 10) -> list[ImageRecord]:
    """Square ``image`` px pictures holding boxes of sizes ``wh`` ``[N, 2]`` at random positions."""
    rng = np.random.default_rng(seed)
    wh = np.minimum(wh, image - 1)
    x1 = rng.uniform(0, image - wh[:, 0])
    y1 = rng.uniform(0, image - wh[:, 1])
    boxes = np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], axis=1).astype(np.float32)
    return [ImageRecord(i, f"/nowhere/{i}.jpg", image, image, boxes[s:s + per_image], np.zeros(len(boxes[s:s + per_image])))
            for i, s in enumerate(range(0, len(boxes), per_image))]


def anchor_shaped_wh(cfg, n: int, seed: int) -> np.ndarray:
    """``n`` box sizes each within 8 % of one of the config's anchors (any level, scale, ratio)."""
    a = cfg.anchors
    shapes = anchor_fit._shapes([a.scale], a.num_scales, a.aspect_ratios)[0]
    sizes = np.concatenate([shapes * 2.0 ** lv for lv in anchor_fit.anchor_levels(cfg)])
    sizes = sizes[sizes.max(axis=1) < cfg.dataset.image_size * 0.9]
    rng = np.random.default_rng(seed)
    return sizes[rng.integers(len(sizes), size=n)] * rng.uniform(0.92, 1.08, size=(n, 2))


def uniform_wh(n: int, lo: float, hi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(lo, hi, n), rng.uniform(lo, hi, n)], axis=1)


def test_share_is_exact_against_the_anchor_grid():
    """best_anchor_iou is the best IoU over every anchor AnchorGenerator makes (core.tasks.anchor_loss's IoU)."""
    cfg = load_config(BASE, ["dataset.image_size=128"])
    a, levels = cfg.anchors, anchor_fit.anchor_levels(cfg)
    wh = np.concatenate([uniform_wh(150, 4, 40, 0), uniform_wh(150, 20, 120, 1)])
    boxes = anchor_fit.input_boxes(records_from_wh(wh, 128, seed=2), 128)
    anchors = AnchorGenerator(levels, a.scale, a.num_scales, a.aspect_ratios)((128, 128))
    full = batched_box_iou(torch.tensor(boxes, dtype=torch.float32)[None], anchors)[0].max(dim=1).values.double()
    ours = anchor_fit.best_anchor_iou(boxes, levels, [a.scale], a.num_scales, a.aspect_ratios, 128)[:, 0]
    assert np.allclose(ours, full.numpy(), atol=1e-5)
    assert 0.2 < (full.numpy() >= 0.5).mean() < 0.95  # both sides of the threshold are exercised
    share = anchor_fit.anchor_share(boxes, levels, a.scale, a.num_scales, a.aspect_ratios, 128, 0.5)
    assert share == pytest.approx(float((full >= 0.5).double().mean()))


def test_boxes_that_fit_the_default_anchors_give_no_warning():
    cfg = load_config(BASE, ["anchors.auto=True"])
    before = cfg.to_dict()["anchors"]
    records = records_from_wh(anchor_shaped_wh(cfg, 2000, seed=0), 512, seed=1)
    lines: list[str] = []
    fit = anchor_check.check_anchors(cfg, records, log=lines.append)
    assert fit.share >= 0.95 and fit.boxes == 2000
    assert len(lines) == 1 and lines[0].startswith("anchors: ") and "warning" not in lines[0]
    assert f"{fit.share:.1%} of 2000 training boxes" in lines[0]
    assert not fit.suggestion and cfg.to_dict()["anchors"] == before  # auto changes nothing that fits


def _apply_set_line(config: str, line: str, extra: list[str] = ()) -> object:
    """A fresh config with the ``--set`` arguments printed in ``line`` applied."""
    words = shlex.split(line[line.index("--set"):line.index(" (or --set anchors.auto")])
    overrides = [w for prev, w in zip(words, words[1:]) if prev == "--set"]
    assert overrides and all(o.startswith("anchors.") for o in overrides)
    return load_config(config, list(extra) + overrides)


def test_small_boxes_warn_with_anchors_that_fit():
    """16-24 px boxes at 512 px: the default anchors (32 px and up) match few, the printed --set line
    matches over 95 %, and anchors.auto applies exactly that."""
    cfg = load_config(BASE)
    records = records_from_wh(uniform_wh(1500, 16, 24, seed=3), 512, seed=4)
    lines: list[str] = []
    fit = anchor_check.check_anchors(cfg, records, log=lines.append)
    assert fit.share < 0.5 and len(lines) == 1
    line = lines[0]
    assert line.startswith("warning: only ") and "--set anchors.scale=" in line and "anchors.aspect_ratios=" in line
    fixed = _apply_set_line(BASE, line)
    assert fixed.anchors.scale < cfg.anchors.scale
    again = anchor_check.measure_anchor_fit(fixed, records)
    assert again.share >= 0.95 and again.share == pytest.approx(fit.suggested_share)
    assert f"fit {fit.suggested_share:.1%} of them" in line
    assert again.lines()[0].startswith("anchors: ")

    auto = load_config(BASE, ["anchors.auto=True"])
    auto_lines: list[str] = []
    anchor_check.check_anchors(auto, records, log=auto_lines.append)
    assert auto.anchors.scale == fixed.anchors.scale and auto.anchors.aspect_ratios == fixed.anchors.aspect_ratios
    assert auto_lines[0] == line and auto_lines[1].startswith("anchors.auto: using anchors.scale = ")
    assert anchor_check.check_anchors(auto, records, log=lambda _: None).fits  # deterministic: the same fit


def test_tiny_boxes_warn_and_say_why_the_grid_cannot_fit_them():
    """4-8 px boxes at 512 px: no anchor of the P3 grid (stride 8) reaches IoU 0.5 with most of them
    wherever their centre falls between anchor centres, so the best scale / ratio set raises the
    share from ~0 to about 20 % (stated level: >= 15 %) and the warning says what else would help."""
    cfg = load_config(BASE)
    records = records_from_wh(uniform_wh(1500, 4, 8, seed=5), 512, seed=6)
    fit = anchor_check.measure_anchor_fit(cfg, records)
    assert fit.share < 0.01
    line = fit.lines()[0]
    assert "--set anchors.scale=" in line and "neck.min_level" in line and "stride 8 px" in line
    fixed = _apply_set_line(BASE, line)
    assert anchor_check.measure_anchor_fit(fixed, records).share >= 0.15
    # the same boxes 4x as large in the input (dataset.image_size 2048) fit again with a suggestion
    bigger = anchor_check.measure_anchor_fit(load_config(BASE, ["dataset.image_size=2048"]), records)
    assert bigger.share < 0.95 and bigger.suggested_share >= 0.95


def test_yolo_kmeans_recovers_clustered_sizes():
    """k-means (1 - IoU) + genetic refinement finds 9 clusters of box sizes to within 10 %, for
    several seeds, and the same anchors for the same seed."""
    centres = np.array([(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198),
                        (373, 326)], dtype=np.float64)
    rng = np.random.default_rng(1)
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (300, 2))) for c in centres])
    for seed in (0, 1, 2):
        found = anchor_fit.kmeans_anchors(wh, 9, 4.0, seed=seed)
        assert np.abs(np.log(found / centres)).max() < 0.1, (seed, found.round(1))
    assert np.array_equal(anchor_fit.kmeans_anchors(wh, 9, 4.0, seed=0), anchor_fit.kmeans_anchors(wh, 9, 4.0, seed=0))
    # k-means alone puts each centre at its cluster's median (within 5 %; a member box is ~12 % off)
    plain = anchor_fit.kmeans_anchors(wh, 9, 4.0, seed=0, generations=0)
    assert np.abs(np.log(plain / centres)).max() < 0.05
    # the genetic refinement only ever raises YOLOv5's fitness
    refined = anchor_fit.kmeans_anchors(wh, 9, 4.0, seed=0)
    assert anchor_fit._fitness(wh, refined, 4.0) >= anchor_fit._fitness(wh, plain, 4.0)


def test_yolo_check_matches_build_targets_and_warns_for_boxes_no_anchor_fits():
    from core.tasks.yolo import build_targets

    cfg = load_config(YOLO)
    ordinary = records_from_wh(uniform_wh(500, 8, 400, seed=7), 640, seed=8)
    fit = anchor_check.measure_anchor_fit(cfg, ordinary)
    assert list(fit.current) == ["yolo"] and fit.share >= 0.95 and fit.lines()[0].startswith("anchors: ")

    # long thin boxes (text lines): no YOLOv4 COCO anchor is within 4x in both width and height
    rng = np.random.default_rng(9)
    thin = np.stack([rng.uniform(100, 200, 800), rng.uniform(3, 6, 800)], axis=1)
    mixed = np.concatenate([thin, uniform_wh(200, 20, 60, seed=10)])
    records = records_from_wh(mixed, 640, seed=11)
    fit = anchor_check.measure_anchor_fit(cfg, records)
    # the share is what build_targets matches: boxes with at least one (anchor, layer) match
    boxes = torch.tensor(anchor_fit.input_boxes(records, 640), dtype=torch.float32)
    gt = torch.cat([torch.zeros(len(boxes), 2), (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    gt[:, 0] = torch.arange(len(boxes)).float()  # one "image" per box, to count boxes
    matched = set()
    for row, level in zip(cfg.anchors.yolo, (3, 4, 5)):
        t = build_targets(gt, torch.tensor(row, dtype=torch.float32).view(-1, 2), 2.0 ** level,
                          (640 // 2 ** level,) * 2, cfg.loss.yolo_anchor_t)
        matched |= set(t.image.tolist())
    assert fit.share == pytest.approx(len(matched) / len(boxes))
    assert 0.1 < fit.share < 0.5
    line = fit.lines()[0]
    assert line.startswith("warning: only ") and "--set 'anchors.yolo=[[" in line
    fixed = _apply_set_line(YOLO, line)
    assert [len(r) for r in fixed.anchors.yolo] == [len(r) for r in cfg.anchors.yolo]
    assert anchor_check.measure_anchor_fit(fixed, records).share >= 0.95

    auto = load_config(YOLO, ["anchors.auto=True"])
    said: list[str] = []
    anchor_check.check_anchors(auto, records, log=said.append)
    assert auto.anchors.yolo == fixed.anchors.yolo and said[1].startswith("anchors.auto: using anchors.yolo = ")


def test_tester_uses_the_anchors_auto_chose():
    """A checkpoint trained with anchors.auto carries the anchors it used; loading it with a config
    that lacks them takes the checkpoint's (else detections would be decoded with other anchors)."""
    trained = load_config(BASE, ["anchors.auto=True", "anchors.scale=1.5"]).to_dict()
    cfg = load_config(BASE)
    said: list[str] = []
    assert anchor_fit.use_trained_anchors(cfg, trained, log=said.append) == ["scale"]
    assert cfg.anchors.scale == 1.5 and "anchors.scale = 1.5" in said[0]
    plain = load_config(BASE, ["anchors.scale=1.5"]).to_dict()  # without auto the config is the user's word
    cfg = load_config(BASE)
    assert anchor_fit.use_trained_anchors(cfg, plain) == [] and cfg.anchors.scale == 4.0


def test_no_boxes():
    cfg = load_config(BASE)
    fit = anchor_check.check_anchors(cfg, [ImageRecord(0, "/x.jpg", 64, 64, np.zeros((0, 4)), np.zeros(0))],
                                   log=lambda _: None)
    assert fit.fits and fit.boxes == 0 and "no training boxes" in fit.lines()[0]
