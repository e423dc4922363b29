"""YOLOv4 networks (CSP-Darknet, timm EfficientNet / ResNet backbones + SPPCSP / CSP-PAN + YOLO layers)
against the parameter tables of seeds 000 / 001, and core.tasks.yolo's targets, loss and decoding."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from core.config.loading import load_config
from core.tasks.anchor_task import DetectionTask
from core.tasks.task import build_task
from core.tasks.yolo import YoloTask, build_targets, decode, gather_targets, split_layers
from symbol.builder import build_detector
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"

# Backbone rows then SPPCSP, exactly as the "params" column of the seed tables (000 for CSP and
# EfficientNet, 001 for ResNet), and the tables' "Model Summary" totals. The seeds trained on 4
# vehicle classes ['motorcycle', 'car', 'bus', 'truck'], so their totals hold for num_classes = 4.
SEED_ROWS: dict[str, list[int]] = {
    "yolov4_l": [928, 18560, 20672, 73984, 119936, 295424, 1463552, 1180672, 5843456, 4720640, 12858368, 7610368],
    "yolov4_s": [464, 4672, 5216, 18560, 19904, 73984, 161152, 295424, 641792, 1180672, 1248768, 1904640],
    "yolov4_effb0": [928, 1448, 16714, 46640, 242930, 543148, 2026348, 717232, 412160, 7872512],
    "yolov4_effb1": [928, 2060, 27424, 77930, 345830, 751720, 2614300, 2280832, 412160, 7872512],
    "yolov4_effb2": [928, 2060, 27424, 103134, 421550, 862768, 3048878, 2735820, 498432, 8003584],
    "yolov4_effb3": [1160, 3504, 48118, 110912, 638700, 1387760, 4628964, 3284218, 592896, 8134656],
    "yolov4_effb4": [1392, 4146, 66238, 197586, 1059898, 2306724, 8636228, 4470004, 806400, 8396800],
    "yolov4_effb5": [1392, 5352, 122846, 329514, 1632464, 3286344, 12165292, 9744908, 1052672, 8658944],
    "yolov4_effb6": [1624, 8094, 156922, 493444, 2379438, 4840930, 19186878, 12336662, 1331712, 8921088],
    "yolov4_effb7": [1856, 10920, 253424, 716068, 3721660, 7615904, 28390712, 21432896, 1643520, 9183232],
    "yolov4_r18": [9408, 128, 0, 0, 147968, 525568, 2099712, 8393728, 7086080],
    "yolov4_r34": [9408, 128, 0, 0, 221952, 1116416, 6822400, 13114368, 7086080],
    "yolov4_r50": [9408, 128, 0, 0, 215808, 1219584, 7098368, 14964736, 8658944],
}
SEED_TOTALS = {
    "yolov4_l": 5.25155e07, "yolov4_s": 9.12461e06, "yolov4_effb0": 3.0059e07, "yolov4_effb1": 3.25646e07,
    "yolov4_effb2": 3.38865e07, "yolov4_effb3": 3.7017e07, "yolov4_effb4": 4.41386e07, "yolov4_effb5": 5.51981e07,
    "yolov4_effb6": 6.78623e07, "yolov4_effb7": 9.11829e07, "yolov4_r18": 3.64896e07, "yolov4_r34": 4.65978e07,
    "yolov4_r50": 5.06398e07,
}
CSP_ROW_NAMES = ["stem"] + [f"stage{i}.{part}" for i in range(1, 6) for part in ("down", "block")]
YOLO_CONFIGS = sorted(SEED_ROWS) + ["enet_coco", "enet4y2"]
# Forward + backward on the configs that build and run in about a second or two each on one CPU thread.
RUN_CONFIGS = ["yolov4_s", "yolov4_l", "yolov4_effb0", "yolov4_effb1", "yolov4_r18", "yolov4_r50",
               "enet_coco", "enet4y2"]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _seed_rows(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, _params(m)) for name, m in model.stages() if name.startswith("backbone.") or name == "neck.sppcsp"]


def _targets() -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 64.0, 120.0, 100.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]


@pytest.mark.parametrize("name", sorted(SEED_ROWS))
def test_stage_parameters_match_seed_table(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.py")
    with torch.device("meta"):  # shapes only: no weight initialisation, so even B7 builds at once
        model = build_detector(cfg, 4)
    rows = _seed_rows(model)
    assert [p for _, p in rows] == SEED_ROWS[name], rows
    assert rows[-1][0] == "neck.sppcsp"
    assert float(f"{_params(model):.6g}") == SEED_TOTALS[name]
    if name in ("yolov4_l", "yolov4_s"):
        assert [n for n, _ in rows[:-1]] == [f"backbone.{n}" for n in CSP_ROW_NAMES]
    if name.startswith("yolov4_r"):
        assert [n for n, _ in rows[:8]] == [f"backbone.{n}" for n in
                                            ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")]
    if name.startswith("yolov4_effb"):
        assert [n for n, _ in rows[:-1]] == (["backbone.stem"] + [f"backbone.blocks.{i}" for i in range(7)]
                                             + ["backbone.head_conv"])


def test_yolov4_l_with_80_classes() -> None:
    with torch.device("meta"):
        model = build_detector(load_config(CONFIG_DIR / "yolov4_l.py"), 80)
    # 4 classes give the seed's 52515505; each of the 3 x 3 anchors adds 76 class outputs (weights + bias).
    extra = 3 * 76 * (256 + 512 + 1024 + 3)
    assert _params(model) == 52515505 + extra == 52924765
    assert [n for n, _ in model.stages()][-7:] == ["neck.top_down.p4", "neck.top_down.p3", "neck.bottom_up.p4",
                                                   "neck.bottom_up.p5", "head.yolo.p3", "head.yolo.p4", "head.yolo.p5"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    size, num_classes = 128, 3
    cfg = load_config(CONFIG_DIR / f"{name}.py")
    model = build_detector(cfg, num_classes).train()
    task = build_task(cfg, model)
    assert isinstance(task, YoloTask)
    images = torch.randn(2, 3, size, size)
    outputs = model(images)
    assert len(outputs) == len(cfg.anchors.yolo) == len(model.levels)
    for out, level, anchors in zip(outputs, model.levels, cfg.anchors.yolo):
        assert out.shape == (2, len(anchors) // 2 * (5 + num_classes), size >> level, size >> level)
    losses = task.loss(outputs, images, _targets())
    assert set(losses) == {"loss", "box_loss", "obj_loss", "cls_loss"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(set(YOLO_CONFIGS) - set(RUN_CONFIGS)))
def test_large_configs_build(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.py")
    with torch.device("meta"):
        model = build_detector(cfg, 3)
    assert cfg.head.type == "yolo" and model.levels == [3, 4, 5]
    assert isinstance(build_task(cfg, model), YoloTask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_falls_on_a_fixed_batch(seed: int) -> None:
    """40 AdamW steps on one batch at 128 px (objectness gain x (128 / 640)**2). Measured over seeds 0-2
    and torch threads 1 and 2 (AMD EPYC, AVX-512): the total loss ends at 0.49-0.57 of its first value
    and the box loss at 0.63-0.74. With the box term's gradient cut (the boxes detached) they end at
    0.85-0.91 and 1.15-1.26."""
    torch.manual_seed(seed)
    cfg = load_config(CONFIG_DIR / "yolov4_s.py")
    model = build_detector(cfg, 3).train()
    task = build_task(cfg, model)
    images = torch.randn(2, 3, 128, 128)
    targets = _targets()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history, box = [], []
    for _ in range(40):
        losses = task.loss(model(images), images, targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
        box.append(losses["box_loss"].item())
    assert all(math.isfinite(v) for v in history)
    assert max(history[-3:]) < 0.70 * history[0], history
    assert max(box[-3:]) < 0.90 * box[0], box


def _finite_loss_and_grads(outputs: list[torch.Tensor], targets: list[dict], size: int = 128) -> dict:
    cfg = load_config(CONFIG_DIR / "yolov4_s.py")
    model = build_detector(cfg, 3)
    task = build_task(cfg, model)
    leaves = [o.detach().clone().requires_grad_(True) for o in outputs]
    losses = task.loss(leaves, torch.zeros(len(targets), 3, size, size), targets)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    return losses


def _outputs(fill: float | None = None, seed: int = 0, scale: float = 1.0, size: int = 128) -> list[torch.Tensor]:
    """yolov4_s head outputs for 2 images at ``size`` px: constant ``fill`` or random * ``scale``."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 3 * 8, size // s, size // s) for s in (8, 16, 32)]
    return [torch.full(sh, fill) if fill is not None else torch.randn(sh, generator=g) * scale for sh in shapes]


def test_complete_iou_loss_equals_torchvision_on_ordinary_boxes() -> None:
    from torchvision.ops import complete_box_iou_loss

    from core.tasks.yolo import complete_iou_loss

    g = torch.Generator().manual_seed(0)
    pred = torch.cat([torch.rand(500, 2, generator=g) * 4, 0.1 + torch.rand(500, 2, generator=g) * 5], 1)
    target = torch.cat([torch.rand(500, 2, generator=g) * 4, 0.1 + torch.rand(500, 2, generator=g) * 5], 1)
    corners = lambda b: torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)  # noqa: E731
    expected = complete_box_iou_loss(corners(pred.double()), corners(target.double()), eps=1e-7)
    # float32 against float64 with the same eps: the difference is float32 rounding of O(1) terms
    torch.testing.assert_close(complete_iou_loss(pred, target).double(), expected, rtol=0, atol=1e-5)


def test_degenerate_predicted_box_gives_finite_loss_and_gradients() -> None:
    """The cause of the non-finite gradients seen in training: a predicted height below the float32
    resolution of its centre (logit -11 gives a height of ~1e-8 grid units) became 0 between the
    corners torchvision's CIoU takes, and its ``atan(w / h)`` had a NaN gradient."""
    from core.tasks.yolo import complete_iou_loss

    pred = torch.tensor([[1.0, 1.0, 1e-8, 1e-8], [1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 3.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 2.0, 3.0]] * 3)
    loss = complete_iou_loss(pred, target)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("fill", [-1e4, 1e4, -11.0, 0.0])
def test_extreme_logits_give_finite_loss_and_gradients(fill: float) -> None:
    _finite_loss_and_grads(_outputs(fill), _targets())


def test_images_without_boxes_and_boxes_smaller_than_a_cell_give_finite_loss() -> None:
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    assert _finite_loss_and_grads(_outputs(seed=1), empty)["box_loss"] == 0
    tiny = [{"boxes": torch.tensor([[40.0, 40.0, 40.5, 40.25], [3.0, 100.0, 3.1, 100.1]]),
             "labels": torch.tensor([0, 2])}, empty[0]]
    _finite_loss_and_grads(_outputs(seed=2), tiny)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]),
       boxes=st.lists(st.tuples(st.floats(0, 126), st.floats(0, 126), st.floats(0.01, 128), st.floats(0.01, 128),
                                st.integers(0, 2)), max_size=6))
def test_random_extreme_batches_give_finite_loss_and_gradients(seed: int, scale: float, boxes: list) -> None:
    rows = [(x, y, min(x + w, 128.0), min(y + h, 128.0), c) for x, y, w, h, c in boxes]
    rows = [r for r in rows if r[2] > r[0] and r[3] > r[1]]
    targets = [{"boxes": torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([r[4] for r in rows], dtype=torch.int64)},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    _finite_loss_and_grads(_outputs(seed=seed, scale=scale), targets)


@pytest.mark.parametrize(("name", "overrides", "strides"), [
    ("yolov4_s", [], [8, 16, 32]),
    ("enet_coco", [], [16, 32]),
    ("enet4y2", [], [4, 8, 16, 32]),
    ("yolov4_s", ["neck.max_level=6", "anchors.yolo=[[12,16,19,36,40,28],[36,75,76,55,72,146],"
                  "[142,110,192,243,459,401],[300,300,450,450,600,600]]",
                  "loss.yolo_obj_balance=[4.0,1.0,0.25,0.06]"], [8, 16, 32, 64]),
], ids=["P3-P5", "P4-P5", "P2-P5", "P3-P6"])
def test_output_layers_have_their_strides(name: str, overrides: list[str], strides: list[int]) -> None:
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / f"{name}.py", overrides)
    model = build_detector(cfg, 3).eval()
    assert [2**lv for lv in model.levels] == strides
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        outputs = model(images)
    assert [128 // o.shape[-1] for o in outputs] == [128 // o.shape[-2] for o in outputs] == strides
    task = build_task(cfg, model)
    assert torch.isfinite(task.loss(outputs, images, _targets()[:1])["loss"])


def test_build_task_picks_the_head() -> None:
    with torch.device("meta"):
        effdet = build_detector(load_config(CONFIG_DIR / "effdet_b0.py"), 3)
    assert isinstance(build_task(load_config(CONFIG_DIR / "effdet_b0.py"), effdet), DetectionTask)


def test_build_targets_matches_anchors_and_neighbour_cells() -> None:
    anchors = torch.tensor([[12.0, 16.0], [19.0, 36.0], [40.0, 28.0]])
    # centre (42, 46) px at stride 8 is grid (5.25, 5.75): its cell, the left and the bottom neighbour
    gt = gather_targets([{"boxes": torch.tensor([[26.0, 30.0, 58.0, 62.0]]), "labels": torch.tensor([2])}], "cpu")
    t = build_targets(gt, anchors, 8.0, (16, 16), anchor_t=4.0)
    assert len(t) == 9  # 3 anchors (32 x 32 is within 4x of each) x 3 cells
    cells = {(int(x), int(y)) for x, y in zip(t.gx, t.gy)}
    assert cells == {(5, 5), (4, 5), (5, 6)}
    for x, y, box in zip(t.gx, t.gy, t.box):
        assert box[:2].tolist() == pytest.approx([5.25 - float(x), 5.75 - float(y)])
        assert -0.5 <= float(box[0]) <= 1.5 and -0.5 <= float(box[1]) <= 1.5
        assert box[2:].tolist() == pytest.approx([4.0, 4.0])
    assert set(t.label.tolist()) == {2} and set(t.anchor.tolist()) == {0, 1, 2}
    # a 200 px box is more than 4x every P3 anchor: no match; near the border no neighbour leaves the grid
    big = gather_targets([{"boxes": torch.tensor([[0.0, 0.0, 200.0, 200.0]]), "labels": torch.tensor([0])}], "cpu")
    assert len(build_targets(big, anchors, 8.0, (32, 32), 4.0)) == 0
    corner = gather_targets([{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0])}], "cpu")
    t = build_targets(corner, anchors, 8.0, (16, 16), 4.0)
    assert len(t) == 1 and (int(t.gx[0]), int(t.gy[0])) == (0, 0)  # 5 x 5 matches only the 12 x 16 anchor


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 120), st.floats(0, 120), st.floats(2, 128), st.floats(2, 128)),
                min_size=0, max_size=6),
       st.sampled_from([4, 8, 16, 32]))
def test_build_targets_stay_in_the_grid(boxes: list[tuple[float, float, float, float]], stride: int) -> None:
    xyxy = torch.tensor([[x, y, min(x + w, 128.0), min(y + h, 128.0)] for x, y, w, h in boxes]).reshape(-1, 4)
    gt = gather_targets([{"boxes": xyxy, "labels": torch.zeros(len(boxes), dtype=torch.int64)}], "cpu")
    anchors = torch.tensor([[12.0, 16.0], [36.0, 75.0], [142.0, 110.0]])
    size = 128 // stride
    t = build_targets(gt, anchors, float(stride), (size, size), anchor_t=4.0)
    assert ((t.gx >= 0) & (t.gx < size) & (t.gy >= 0) & (t.gy < size)).all()
    assert ((t.box[:, :2] >= -0.5) & (t.box[:, :2] <= 1.5)).all()
    ratio = t.box[:, 2:] / t.anchor_wh
    assert (torch.maximum(ratio, 1 / ratio) < 4.0).all()
    centre_cells = (gt[:, 2:4] / stride).floor()
    for g in range(len(gt)):  # every box that matches an anchor trains at least its own cell
        ratio_g = (gt[g, 4:6] / anchors).clamp(min=1e-9)
        if (torch.maximum(ratio_g, 1 / ratio_g).amax(1) < 4.0).any():
            cx, cy = centre_cells[g].clamp(0, size - 1).long().tolist()
            assert ((t.gx == cx) & (t.gy == cy)).any()


def test_decode_and_detect_recover_an_encoded_box() -> None:
    cfg = load_config(CONFIG_DIR / "yolov4_s.py")
    num_classes, size = 3, 128
    task = YoloTask(cfg, [3, 4, 5], num_classes)
    outputs = []
    for level in (3, 4, 5):
        out = torch.full((2, 3, 5 + num_classes, size >> level, size >> level), -12.0)
        outputs.append(out)
    # P4 (stride 16), anchor 1 (76 x 55), cell x=3, y=2: sigmoid(0) -> centre of the cell, size = anchor
    outputs[1][1, 1, :4, 2, 3] = 0.0
    outputs[1][1, 1, 4, 2, 3] = 12.0
    outputs[1][1, 1, 5 + 2, 2, 3] = 12.0
    raw = [o.flatten(1, 2) for o in outputs]  # the head's layout [B, A * (5 + C), H, W]
    images = torch.zeros(2, 3, size, size)
    layers = split_layers(raw, task.num_anchors, num_classes)
    boxes, scores = decode(layers, task.anchors, task.strides)
    n = sum(3 * (size >> lv) ** 2 for lv in (3, 4, 5))
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, num_classes)
    dets = task.detect(raw, images)
    assert len(dets) == 2 and len(dets[0].boxes) == 0
    cx, cy = 3.5 * 16, 2.5 * 16
    assert dets[1].boxes.tolist() == [pytest.approx([cx - 38, cy - 27.5, cx + 38, cy + 27.5])]
    assert dets[1].labels.tolist() == [2]
    assert dets[1].scores.item() == pytest.approx(torch.sigmoid(torch.tensor(12.0)).item() ** 2)


def test_detect_shapes_and_limits() -> None:
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / "enet_coco.py", ["test.max_det_per_image=7", "test.min_det_score=0.0"])
    with torch.no_grad():
        model = build_detector(cfg, 4).eval()
        images = torch.randn(3, 3, 96, 96)
        dets = build_task(cfg, model).detect(model(images), images)
    assert len(dets) == 3
    for d in dets:
        assert d.boxes.shape == (7, 4) and d.scores.shape == (7,) and d.labels.shape == (7,)
        assert d.labels.dtype == torch.int64 and int(d.labels.max()) < 4
        assert (d.boxes >= 0).all() and (d.boxes <= 96).all()
        assert (d.boxes[:, 2:] > d.boxes[:, :2]).all()
        assert torch.equal(d.scores, d.scores.sort(descending=True).values)


def test_loss_normaliser_uses_average() -> None:
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / "yolov4_s.py")
    task = YoloTask(cfg, [3, 4, 5], 3)
    outputs = [torch.randn(2, 24, 128 >> lv, 128 >> lv) for lv in (3, 4, 5)]
    images = torch.zeros(2, 3, 128, 128)
    plain = task.loss(outputs, images, _targets())
    doubled = task.loss(outputs, images, _targets(), average=lambda counts: counts * 2)
    assert doubled["box_loss"].item() == pytest.approx(plain["box_loss"].item() / 2)
    assert doubled["cls_loss"].item() == pytest.approx(plain["cls_loss"].item() / 2)
    assert doubled["obj_loss"].item() == pytest.approx(plain["obj_loss"].item())


def test_train_and_test_yolov4_s_end_to_end(tmp_path: Path) -> None:
    """The trainer and tester drive a YOLO config through ``build_task``: train, evaluate, reload, predict."""
    from core.engine.inference import predict_batches
    from core.engine.tester import find_weights, load_trained
    from core.engine.trainer import Trainer

    data = synthetic_shapes_yaml(tmp_path, 8, 4, 96, seed=5)
    cfg = load_config(CONFIG_DIR / "yolov4_s.py", [
        f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={tmp_path}", "General.name=run",
        "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True", "General.log_frequency=1",
        "schedule.end_epoch=1", "schedule.warmup_epochs=0.5", "test.batch_image=4"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.task, YoloTask)
    stats = trainer.fit()
    assert set(stats) >= {"AP", "AP50"}
    trained = load_trained(cfg, find_weights(cfg), torch.device("cpu"))
    assert isinstance(trained.task, YoloTask)
    detections = predict_batches(trained.model, trained.task, trainer.val_loader, torch.device("cpu"))
    assert len(detections) == 4
    for det in detections.values():
        assert det.boxes.shape[1:] == (4,) and len(det.boxes) <= cfg.test.max_det_per_image


def test_channels_last_outputs() -> None:
    """CUDA training and evaluation run channels_last; the YOLO outputs must still split and decode."""
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / "yolov4_s.py")
    model = build_detector(cfg, 3).eval().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    task = build_task(cfg, model)
    with torch.no_grad():
        outputs = model(images)
        assert not outputs[0].is_contiguous()
        assert len(task.detect(outputs, images)) == 2
        assert torch.isfinite(task.loss(outputs, images, _targets())["loss"])
