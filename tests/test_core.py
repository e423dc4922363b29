"""Tests for core.config.loading, core.ops.anchors, core.ops.box_coder, core.tasks.anchor_loss, core.ops.postprocess and core.tasks.task."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms, sigmoid_focal_loss
from hypothesis import given, settings
from hypothesis import strategies as st

from core.ops import box_coder
from core.ops.anchors import AnchorGenerator, flatten_levels
from core.config.loading import ConfigError, load_config
from core.ops.focal_loss import sigmoid_focal_loss_sum
from core.tasks.anchor_loss import BACKGROUND, IGNORE, assign, detection_loss
from core.ops.nms import class_nms
from core.ops.postprocess import (Detections, batch_top_candidates, detections_to_cpu, full_topk, postprocess,
                              top_candidates)
from core.tasks.anchor_task import DetectionTask
from symbol.builder import build_detector

ROOT = Path(__file__).resolve().parent.parent
B0 = ROOT / "config" / "effdet_b0.py"
B2 = ROOT / "config" / "effdet_b2.py"


# ----------------------------------------------------------------------------- config

def test_config_loads_experiment_values() -> None:
    cfg = load_config(B2)
    assert cfg.neck.channels == 112
    assert cfg.backbone.name == "tf_efficientnet_b2"
    assert cfg.loss.focal_alpha == 0.25  # inherited from base
    assert set(cfg.section_names()) >= {"General", "dataset", "backbone", "neck", "head", "anchors", "loss", "test"}


def test_config_misspelt_field_in_module(tmp_path: Path) -> None:
    bad = tmp_path / "bad_cfg.py"
    bad.write_text("from config import base\n\n\nclass General(base.General):\n    batch_imag = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "batch_image" in str(err.value)
    assert "batch_imag'" in str(err.value)


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")


def test_config_override_misspelt_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(B0, ["General.batch_imag=4"])
    assert "batch_image" in str(err.value)


@pytest.mark.parametrize("override", ["General.batch_image=abc", "General.batch_image=1.5", "General.compile=1",
                                      "dataset.mean=0.5", "Generl.batch_image=4", "batch_image=4"])
def test_config_override_rejected(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config(B0, [override])


def test_config_override_types() -> None:
    cfg = load_config(B0, ["optimizer.lr=1", "General.batch_image=4", "General.name=my run",
                           "backbone.out_levels=[3, 4, 5]", "General.compile=True"])
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.General.batch_image == 4
    assert cfg.General.name == "my run"
    assert cfg.General.compile is True


def test_config_overrides_do_not_leak() -> None:
    first = load_config(B0, ["optimizer.lr=1", "neck.channels=8"])
    first.backbone.out_levels.append(6)
    first.anchors.aspect_ratios[0][0] = 9.0
    second = load_config(B0)
    assert second.optimizer.lr == "auto"
    assert second.neck.channels == 64
    assert second.backbone.out_levels == [3, 4, 5]
    assert second.anchors.aspect_ratios[0] == [1.0, 1.0]
    from config import base
    assert base.optimizer.lr == "auto" and base.backbone.out_levels == [3, 4, 5]


def test_config_save_round_trip(tmp_path: Path) -> None:
    cfg = load_config(B2, ["optimizer.lr=0.5"])
    path = tmp_path / "config.json"
    cfg.save(path)
    saved = json.loads(path.read_text())
    assert saved["source"] == str(B2)
    assert saved["sections"] == cfg.to_dict()
    assert saved["sections"]["optimizer"]["lr"] == 0.5
    assert not (tmp_path / "config.json.tmp").exists()


# ---------------------------------------------------------------------------- anchors

def _generator() -> AnchorGenerator:
    cfg = load_config(B0)
    a = cfg.anchors
    return AnchorGenerator([3, 4, 5, 6, 7], a.scale, a.num_scales, a.aspect_ratios)


def test_anchor_count_512() -> None:
    gen = _generator()
    sizes = gen.feature_sizes((512, 512))
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    anchors = gen((512, 512))
    assert gen.num_anchors == 9
    assert anchors.shape == (sum(h * w for h, w in sizes) * 9, 4) == (49104, 4)
    assert anchors.dtype == torch.float32


def test_anchor_feature_sizes_ceil() -> None:
    assert _generator().feature_sizes((100, 130)) == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


def test_known_anchors() -> None:
    anchors = _generator()((512, 512))
    # level 3, cell (0, 0), octave 0, ratio (1, 1): centre (4, 4), side 4 * 8 = 32
    assert anchors[0].tolist() == pytest.approx([-12.0, -12.0, 20.0, 20.0])
    # level 3, cell (y=1, x=2), octave 1, ratio (1.4, 0.7): centre (20, 12)
    idx = (1 * 64 + 2) * 9 + 1 * 3 + 1
    side = 32 * 2 ** (1 / 3)
    w, h = side * 1.4, side * 0.7
    assert anchors[idx].tolist() == pytest.approx([20 - w / 2, 12 - h / 2, 20 + w / 2, 12 + h / 2], rel=1e-6)
    # first anchor of level 4 (stride 16): centre (8, 8), side 64
    assert anchors[64 * 64 * 9].tolist() == pytest.approx([-24.0, -24.0, 40.0, 40.0])
    # last anchor: level 7 (stride 128) cell (3, 3), octave 2, ratio (0.7, 1.4): centre (448, 448)
    side = 4 * 128 * 2 ** (2 / 3)
    w, h = side * 0.7, side * 1.4
    assert anchors[-1].tolist() == pytest.approx([448 - w / 2, 448 - h / 2, 448 + w / 2, 448 + h / 2], rel=1e-6)


def test_flatten_levels_order_matches_anchors() -> None:
    # channel a * K + k of cell (y, x) on level l must land at row (offset_l + (y * W + x) * A + a), column k
    A, K = 3, 2
    level0 = torch.arange(A * K * 2 * 3, dtype=torch.float32).reshape(1, A * K, 2, 3)
    level1 = 1000 + torch.arange(A * K, dtype=torch.float32).reshape(1, A * K, 1, 1)
    flat = flatten_levels([level0, level1], K)
    assert flat.shape == (1, (6 + 1) * A, K)
    y, x, a, k = 1, 2, 2, 1
    assert flat[0, (y * 3 + x) * A + a, k] == level0[0, a * K + k, y, x]
    assert flat[0, 6 * A + 1, 0] == level1[0, 1 * K + 0, 0, 0]


# ------------------------------------------------------------------------- box coding

def _random_boxes(n: int, gen: torch.Generator, min_size: float) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1000
    wh = min_size + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 400
    return torch.cat([xy, xy + wh], dim=1)


def test_box_coding_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    boxes = _random_boxes(1000, gen, 1.0)
    anchors = _random_boxes(1000, gen, 16.0)
    decoded = box_coder.decode(box_coder.encode(boxes, anchors), anchors)
    assert torch.allclose(decoded, boxes, atol=1e-4, rtol=0)
    # float32 as used in training
    decoded32 = box_coder.decode(box_coder.encode(boxes.float(), anchors.float()), anchors.float())
    assert torch.allclose(decoded32, boxes.float(), atol=1e-3, rtol=1e-5)
    # a box equal to its anchor encodes to zeros
    assert box_coder.encode(anchors, anchors).abs().max() < 1e-9


_coord = st.floats(-500, 1500, allow_nan=False)
_side = st.floats(0.5, 600, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(_coord, _coord, _side, _side, _coord, _coord, st.floats(16, 600), st.floats(16, 600))
def test_box_coding_round_trip_hypothesis(x, y, w, h, ax, ay, aw, ah) -> None:
    box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64)
    anchor = torch.tensor([[ax, ay, ax + aw, ay + ah]], dtype=torch.float64)
    deltas = box_coder.encode(box, anchor)
    assert torch.isfinite(deltas).all()
    assert torch.allclose(box_coder.decode(deltas, anchor), box, atol=1e-4, rtol=0)


def test_box_decode_clamps_huge_deltas() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = box_coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchors)
    assert torch.isfinite(boxes).all()
    assert (boxes[0, 2] - boxes[0, 0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)


# ------------------------------------------------------------------------------- loss

def test_assignment_thresholds_and_forced_match() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # IoU 1 with gt 0: positive
                            [0.0, 0.0, 10.0, 22.0],      # IoU 0.45 with gt 0: ignored
                            [50.0, 50.0, 60.0, 60.0],    # nothing: background
                            [100.0, 100.0, 110.0, 110.0],  # best for gt 1 at IoU 0.11: forced positive
                            [300.0, 300.0, 310.0, 310.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 130.0, 130.0]])
    labels = torch.tensor([2, 5])
    a = assign(anchors, [gt, torch.zeros((0, 4))], [labels, torch.zeros((0,), dtype=torch.int64)], 0.5, 0.4)
    assert a.labels.shape == (2, 5) and a.boxes.shape == (2, 5, 4)
    assert a.labels[0].tolist() == [2, IGNORE, BACKGROUND, 5, BACKGROUND]
    assert a.boxes[0, 3].tolist() == gt[1].tolist()
    assert a.boxes[0, 0].tolist() == gt[0].tolist()
    assert (a.labels[1] == BACKGROUND).all()


def _assign_image_by_image(anchors, gt_boxes, gt_labels, match_iou, ignore_iou):
    """The matching rule written plainly, one image at a time with torchvision's box_iou."""
    from torchvision.ops import box_iou
    labels = torch.full((len(gt_boxes), len(anchors)), BACKGROUND, dtype=torch.int64)
    boxes = torch.zeros((len(gt_boxes), len(anchors), 4))
    for i, (gb, gl) in enumerate(zip(gt_boxes, gt_labels)):
        if len(gb) == 0:
            continue
        iou = box_iou(gb, anchors)
        best_iou, best_gt = iou.max(dim=0)
        per_gt_best = iou.max(dim=1, keepdim=True).values
        forced = ((iou == per_gt_best) & (per_gt_best > 0)).any(dim=0)
        lab = torch.where(best_iou >= match_iou, gl[best_gt], IGNORE)
        lab = torch.where(best_iou < ignore_iou, BACKGROUND, lab)
        labels[i] = torch.where(forced, gl[best_gt], lab)
        boxes[i] = gb[best_gt]
    return labels, boxes


@pytest.mark.parametrize("max_iou_elements", [1, 3 * 7 * 400, 2**24])
def test_batched_assignment_equals_image_by_image(max_iou_elements: int) -> None:
    """Padding the images' boxes to one IoU tensor, in groups of any size, changes no match: random
    boxes, an image without boxes, duplicate boxes (ties) and boxes that touch no anchor."""
    gen = torch.Generator().manual_seed(3)
    xy = (torch.rand(400, 2, generator=gen) * 256).round()
    anchors = torch.cat([xy, xy + 8 + (torch.rand(400, 2, generator=gen) * 56).round()], dim=1)
    gt_boxes, gt_labels = [], []
    for g in [7, 0, 1, 5, 7, 3]:
        xy = (torch.rand(g, 2, generator=gen) * 300).round()
        gt_boxes.append(torch.cat([xy, xy + 4 + (torch.rand(g, 2, generator=gen) * 80).round()], dim=1))
        gt_labels.append(torch.randint(0, 9, (g,), generator=gen))
    gt_boxes[3][1] = gt_boxes[3][0]  # two boxes tie on every anchor: the first wins
    gt_boxes[5][2] = torch.tensor([1000.0, 1000.0, 1010.0, 1010.0])  # overlaps no anchor
    want_labels, want_boxes = _assign_image_by_image(anchors, gt_boxes, gt_labels, 0.5, 0.4)
    got = assign(anchors, gt_boxes, gt_labels, 0.5, 0.4, max_iou_elements=max_iou_elements)
    assert (want_labels >= 0).sum() > 10 and (want_labels == IGNORE).any()
    assert torch.equal(got.labels, want_labels)
    assert torch.equal(got.boxes, want_boxes)


def _loss_inputs(batch: int = 2, n: int = 50, c: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 200
    anchors = torch.cat([xy, xy + 16 + torch.rand(n, 2, generator=gen) * 48], dim=1)
    logits = torch.randn(batch, n, c, generator=gen)
    deltas = torch.randn(batch, n, 4, generator=gen) * 0.1
    return anchors, logits, deltas


def test_loss_finite_and_zero_positives() -> None:
    anchors, logits, deltas = _loss_inputs()
    gt = [anchors[:3] + 1.0, torch.zeros((0, 4))]
    labels = [torch.tensor([0, 1, 2]), torch.zeros((0,), dtype=torch.int64)]
    a = assign(anchors, gt, labels, 0.5, 0.4)
    out = detection_loss([logits], deltas, anchors, a, 0.25, 1.5, 0.1, 50.0)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["box_loss"] > 0 and out["cls_loss"] > 0
    assert out["loss"].item() == pytest.approx((out["cls_loss"] + 50.0 * out["box_loss"]).item(), rel=1e-6)

    empty = assign(anchors, [torch.zeros((0, 4))] * 2, [torch.zeros((0,), dtype=torch.int64)] * 2, 0.5, 0.4)
    deltas.requires_grad_(True)
    out = detection_loss([logits], deltas, anchors, empty, 0.25, 1.5, 0.1, 50.0)
    assert out["box_loss"].item() == 0.0
    assert torch.isfinite(out["cls_loss"]) and out["cls_loss"] > 0
    out["loss"].backward()  # the zero box loss still keeps the graph connected
    assert deltas.grad is not None and deltas.grad.abs().sum() == 0


def test_loss_prefers_correct_predictions() -> None:
    anchors, logits, _ = _loss_inputs(batch=1)
    gt, labels = [anchors[:2].clone()], [torch.tensor([1, 2])]
    a = assign(anchors, gt, labels, 0.5, 0.4)
    positive = a.labels >= 0
    good = torch.full_like(logits, -8.0)
    good[positive] = torch.nn.functional.one_hot(a.labels[positive], 3).float() * 16 - 8
    zero = torch.zeros(1, anchors.shape[0], 4)
    good_loss = detection_loss([good], zero, anchors, a, 0.25, 1.5, 0.1, 50.0)
    bad_loss = detection_loss([logits], zero + 0.5, anchors, a, 0.25, 1.5, 0.1, 50.0)
    assert good_loss["loss"] < 0.1 * bad_loss["loss"]


def test_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    cfg = load_config(B0, ["dataset.image_size=128", "backbone.drop_path_rate=0.0"])
    size = cfg.dataset.image_size
    model = build_detector(cfg, 2)
    model.train()
    task = DetectionTask(cfg, model.levels, 2)
    images = torch.randn(2, 3, size, size)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]),
                "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0]]), "labels": torch.tensor([1])}]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = task.loss(model(images), images, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------ postprocess

def _post(logits, deltas, anchors, image_size=(100, 100), max_det=100, nms=0.5, top_n=1000):
    return postprocess([logits], deltas, anchors, image_size, top_n, 0.05, nms, max_det)


def test_nms_same_class_suppressed() -> None:
    anchors = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0]])  # IoU ~0.9
    logits = torch.full((1, 2, 2), -10.0)
    logits[0, 0, 0], logits[0, 1, 0] = 4.0, 3.0
    dets = _post(logits, torch.zeros(1, 2, 4), anchors)
    assert len(dets) == 1
    d = dets[0]
    assert d.labels.tolist() == [0]
    assert d.scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(4.0)).item()])
    assert d.boxes.tolist() == [[10.0, 10.0, 50.0, 50.0]]


def test_nms_different_classes_kept() -> None:
    anchors = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0]])
    logits = torch.full((1, 2, 2), -10.0)
    logits[0, 0, 0], logits[0, 1, 1] = 4.0, 3.0
    d = _post(logits, torch.zeros(1, 2, 4), anchors)[0]
    assert d.labels.tolist() == [0, 1]
    assert d.scores[0] > d.scores[1]
    assert d.boxes.tolist() == anchors.tolist()


def test_max_det_and_min_score() -> None:
    n = 20
    x = torch.arange(n, dtype=torch.float32) * 20
    anchors = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)  # disjoint
    logits = torch.full((2, n, 1), -10.0)
    logits[0, :, 0] = torch.linspace(0.0, 5.0, n)
    dets = _post(logits, torch.zeros(2, n, 4), anchors, image_size=(50, 500), max_det=7)
    assert len(dets[0].scores) == 7
    assert torch.all(dets[0].scores[:-1] >= dets[0].scores[1:])
    assert dets[0].scores[0].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    assert len(dets[1].scores) == 0  # every score below min_score
    assert dets[1].boxes.shape == (0, 4)


def test_boxes_clipped_to_image() -> None:
    anchors = torch.tensor([[-20.0, -10.0, 90.0, 70.0]])
    logits = torch.full((1, 1, 1), 5.0)
    d = _post(logits, torch.zeros(1, 1, 4), anchors, image_size=(48, 64))[0]  # H=48, W=64
    assert d.boxes.tolist() == [[0.0, 0.0, 64.0, 48.0]]
    back = d.rescale(0.5, (90, 100))
    assert back.boxes.tolist() == [[0.0, 0.0, 100.0, 90.0]]
    # a portrait picture in a square input: a box found wholly in the padding right of it is no detection
    padded = Detections(torch.tensor([[10.0, 10.0, 30.0, 40.0], [52.0, 5.0, 60.0, 20.0], [45.0, 0.0, 55.0, 9.0]]),
                        torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 2]))
    back = padded.rescale(0.5, (128, 100))  # picture: 100 px wide, 50 input px
    assert back.boxes.tolist() == [[20.0, 20.0, 60.0, 80.0], [90.0, 0.0, 100.0, 18.0]]
    assert back.scores.tolist() == pytest.approx([0.9, 0.7]) and back.labels.tolist() == [0, 2]


def test_task_detect_end_to_end() -> None:
    torch.manual_seed(0)
    cfg = load_config(B0, ["test.max_det_per_image=5"])
    model = build_detector(cfg, 2).eval()
    task = DetectionTask(cfg, model.levels, 2)
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        dets = task.detect(model(images), images)
    assert len(dets) == 2
    for d in dets:
        assert len(d.scores) <= 5
        assert d.boxes.shape == (len(d.scores), 4)
        if len(d.scores):
            assert d.boxes[:, 0::2].min() >= 0 and d.boxes[:, 0::2].max() <= 128
            assert d.boxes[:, 1::2].min() >= 0 and d.boxes[:, 1::2].max() <= 96
            assert d.labels.max() < 2


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0, 2.5])
def test_focal_loss_sum_matches_torchvision(gamma: float) -> None:
    """The fused focal loss equals torchvision's, value and gradient, on a permuted view with
    positives, background and ignored anchors."""
    gen = torch.Generator().manual_seed(int(gamma * 10))
    raw = torch.randn(2, 3 * 11, 7, 5, generator=gen) * 6  # [B, A*C, H, W] as a head gives it
    labels = torch.randint(IGNORE, 11, (2, 7, 5, 3), generator=gen)

    ref_x = raw.clone().requires_grad_()
    ref_view = ref_x.permute(0, 2, 3, 1).unflatten(-1, (3, 11))
    target = F.one_hot(labels.clamp(min=0), 11).float() * (labels >= 0).unsqueeze(-1)
    ref = (sigmoid_focal_loss(ref_view, target, 0.25, gamma, "none").sum(-1) * (labels != IGNORE)).sum()
    (ref * 0.3).backward()

    x = raw.clone().requires_grad_()
    out = sigmoid_focal_loss_sum([x.permute(0, 2, 3, 1).unflatten(-1, (3, 11))], [labels], 0.25, gamma)
    (out * 0.3).backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6, rtol=1e-4)


def test_focal_loss_sum_levels_and_dtype() -> None:
    """Several levels sum; a bfloat16 input gets a bfloat16 gradient of the float32 loss."""
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 4, 3, generator=gen), torch.randn(2, 6, 3, generator=gen)]
    labels = [torch.randint(IGNORE, 3, (2, 4), generator=gen), torch.randint(IGNORE, 3, (2, 6), generator=gen)]
    total = sigmoid_focal_loss_sum(xs, labels, 0.25, 1.5)
    parts = [sigmoid_focal_loss_sum([x], [lab], 0.25, 1.5) for x, lab in zip(xs, labels)]
    assert total.item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)
    half = xs[0].bfloat16().requires_grad_()
    out = sigmoid_focal_loss_sum([half], [labels[0]], 0.25, 1.5)
    out.backward()
    assert out.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="labels of shape"):
        sigmoid_focal_loss_sum([xs[0]], [labels[1]], 0.25, 1.5)


def _nms_class_by_class(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's nms run on each class alone; kept indices by decreasing score."""
    kept = [(labels == c).nonzero().squeeze(1)[nms(boxes[labels == c], scores[labels == c], iou)] for c in labels.unique()]
    kept = torch.cat(kept) if kept else labels[:0]
    return kept[scores[kept].argsort(descending=True)]


@pytest.mark.parametrize("num_boxes,num_classes", [(1000, 90), (600, 40), (1000, 4), (100, 90), (0, 1)])
def test_class_nms_keeps_what_per_class_nms_keeps(num_boxes: int, num_classes: int) -> None:
    """Same kept boxes, in the same order, as torchvision's nms class by class: both the
    same-class-pairs route (many classes) and the one-shifted-nms route (few classes, few boxes)."""
    gen = torch.Generator().manual_seed(num_boxes + num_classes)
    xy = torch.rand(num_boxes, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + 10 + torch.rand(num_boxes, 2, generator=gen) * 100], 1)
    scores = torch.rand(num_boxes, generator=gen)
    labels = torch.randint(0, num_classes, (num_boxes,), generator=gen)
    for iou in (0.3, 0.5, 0.7):
        assert torch.equal(class_nms(boxes, scores, labels, iou), _nms_class_by_class(boxes, scores, labels, iou))


@pytest.mark.parametrize("chunk", [1, 50, 997])
def test_class_nms_in_chunks_keeps_the_same(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same-class pairs tested a chunk at a time (``PAIRS_PER_CHUNK``, which bounds memory for tens of
    thousands of candidates) keep what torchvision's nms keeps class by class: chunks that cut a class,
    and a box with more pairs than a chunk holds (chunk 1 and 50 against classes of ~40 boxes)."""
    from core.ops import nms as nms_module

    gen = torch.Generator().manual_seed(chunk)
    xy = torch.rand(1200, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + 10 + torch.rand(1200, 2, generator=gen) * 100], 1)
    scores = torch.rand(1200, generator=gen)
    labels = torch.randint(0, 30, (1200,), generator=gen)
    monkeypatch.setattr(nms_module, "PAIRS_PER_CHUNK", chunk)
    for iou in (0.3, 0.7):
        assert torch.equal(class_nms(boxes, scores, labels, iou), _nms_class_by_class(boxes, scores, labels, iou))


def test_class_nms_follows_suppression_chains() -> None:
    """Boxes in a row, each overlapping the next (IoU 0.54) but not the one after (0.25): greedy NMS
    keeps every other box, because a suppressed box suppresses nothing. The same-class-pairs route
    needs several rounds to get there."""
    chain = torch.tensor([[3.0 * i, 0.0, 3.0 * i + 10, 10.0] for i in range(10)])
    boxes = torch.cat([chain + 1000 * c for c in range(30)])  # 30 classes x 10 boxes: the pairs route
    scores = (1 - 0.003 * (30 * torch.arange(10) + torch.arange(30)[:, None])).reshape(-1)  # distinct, falling in each class
    labels = torch.arange(30).repeat_interleave(10)
    kept = class_nms(boxes, scores, labels, 0.5)
    assert torch.equal(kept.sort().values, torch.arange(0, 300, 2))
    assert torch.equal(kept, _nms_class_by_class(boxes, scores, labels, 0.5))


@pytest.mark.parametrize("k", [1, 7, 100, 1000, 5000])
def test_top_candidates_equal_full_topk(k: int) -> None:
    """The threshold-first selection returns exactly the values of a full topk, at indices that
    hold those values, also with many ties, all logits equal, a score floor, and -inf logits
    (never returned)."""
    gen = torch.Generator().manual_seed(k)
    ragged = [torch.randn(300, 9, generator=gen), torch.randn(77, 9, generator=gen),  # slices leave remainders
              torch.randint(-3, 3, (40, 9), generator=gen).float()]  # integer level: many ties
    pyramid = [torch.randn(64 * 9, 10, generator=gen), torch.randint(-3, 3, (16 * 9, 10), generator=gen).float(),
               torch.randn(4 * 9, 10, generator=gen)]  # slices divide every level
    tied = [torch.full((64 * 9, 10), -4.6), torch.full((16 * 9, 10), -4.6), torch.randn(4 * 9, 10, generator=gen)]
    never = [torch.randn(300, 9, generator=gen), torch.full((77, 9), -math.inf), torch.randn(40, 9, generator=gen)]
    aligned = [torch.randn(1024, 32, generator=gen), torch.randn(256, 32, generator=gen),  # slices of 32n floats
               torch.randint(-3, 3, (64, 32), generator=gen).float()]
    for levels in (ragged, pyramid, tied, never, aligned):
        flat = torch.cat([x.reshape(-1) for x in levels])
        for min_logit in (-math.inf, -4.6, 0.5, 100.0):  # 100: nothing reaches the floor
            values, idx = top_candidates([levels[0], levels[1].t().contiguous().t(), levels[2]], k, min_logit)
            eligible = flat[(flat >= min_logit) & (flat > -math.inf)]
            expected = eligible.topk(min(k, eligible.numel())).values
            assert torch.equal(values, expected)
            assert torch.equal(flat[idx], values) and idx.unique().numel() == idx.numel()


def test_batch_top_candidates_routes_agree() -> None:
    """The CPU route (threshold-first selection image by image) and the GPU route (one topk over
    the batch) give each image the same values, -inf where fewer than k pass the floor, at
    indices that hold those values."""
    gen = torch.Generator().manual_seed(3)
    levels = [torch.randn(3, 300, 9, generator=gen), torch.randint(-3, 3, (3, 40, 9), generator=gen).float()]
    levels[1][2] = -math.inf  # one image with few candidates
    flat = torch.cat([x.reshape(3, -1) for x in levels], 1)
    for k, floor in ((50, -math.inf), (500, 1.0), (2000, 0.0)):
        values, index = batch_top_candidates(levels, k, floor)
        full_values, full_index = full_topk(levels, k, floor)
        width = values.shape[1]
        assert torch.equal(values, full_values[:, :width]) and (full_values[:, width:] == -math.inf).all()
        for v, i in ((values, index), (full_values, full_index)):
            found = v > -math.inf
            assert torch.equal(flat.gather(1, i)[found], v[found])


def test_postprocess_batch_equals_images_one_by_one() -> None:
    """A batch's detections equal those of each image post-processed alone (NMS never mixes
    images, max_det counts per image)."""
    gen = torch.Generator().manual_seed(5)
    n, c = 400, 6
    xy = torch.rand(n, 2, generator=gen) * 80
    anchors = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=gen) * 30], 1)
    logits = torch.randn(4, n, c, generator=gen) * 2
    logits[2] = -20.0  # an image without detections
    deltas = torch.randn(4, n, 4, generator=gen) * 0.2
    batch = postprocess([logits], deltas, anchors, (100, 100), 300, 0.05, 0.5, 40)
    assert len(batch) == 4 and len(batch[2].boxes) == 0 and 0 < len(batch[0].boxes) <= 40
    for i, det in enumerate(batch):
        alone = postprocess([logits[i:i + 1]], deltas[i:i + 1], anchors, (100, 100), 300, 0.05, 0.5, 40)[0]
        assert torch.equal(det.boxes, alone.boxes) and torch.equal(det.scores, alone.scores)
        assert torch.equal(det.labels, alone.labels)


def test_detections_to_cpu_keeps_each_image() -> None:
    dets = [Detections(torch.rand(n, 4), torch.rand(n), torch.randint(0, 5, (n,))) for n in (3, 0, 2)]
    moved = detections_to_cpu(dets)
    assert len(moved) == 3 and detections_to_cpu([]) == []
    for a, b in zip(dets, moved):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
