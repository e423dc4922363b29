"""Inference API and CLI, weighted boxes fusion, and TTA / ensembles in detection_test.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config.loading import load_config
from core.inference.ensemble import TTAPlan, flip_inputs, weighted_boxes_fusion
from core.inference.predictor import Predictor
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- WBF


def test_wbf_fuses_overlapping_boxes_to_score_weighted_mean() -> None:
    a, b = np.array([[10, 10, 50, 60]], np.float32), np.array([[14, 12, 54, 58]], np.float32)
    boxes, scores, labels = weighted_boxes_fusion([a, b], [np.array([0.9]), np.array([0.6])],
                                                  [np.array([2]), np.array([2])])
    assert boxes.shape == (1, 4) and labels.tolist() == [2]
    np.testing.assert_allclose(boxes[0], (0.9 * a[0] + 0.6 * b[0]) / 1.5, rtol=1e-6)
    assert scores[0] == pytest.approx((0.9 + 0.6) / 2)
    # found by one model of two: its score is halved
    boxes, scores, _ = weighted_boxes_fusion([a, np.zeros((0, 4))], [np.array([0.8]), np.zeros(0)],
                                             [np.array([0]), np.zeros(0, np.int64)])
    np.testing.assert_allclose(boxes, a)
    assert scores.tolist() == pytest.approx([0.4])


def test_wbf_never_fuses_different_classes() -> None:
    box = np.array([[10, 10, 50, 60]], np.float32)
    boxes, scores, labels = weighted_boxes_fusion([box, box], [np.array([0.9]), np.array([0.7])],
                                                  [np.array([0]), np.array([1])])
    assert sorted(labels.tolist()) == [0, 1]
    np.testing.assert_allclose(boxes, np.concatenate([box, box]))
    assert scores.tolist() == pytest.approx([0.45, 0.35])


def test_wbf_single_model_passes_through() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (30, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0.05, 1, 30).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    # what a detector returns: per-class NMS at 0.5, so same-class boxes overlap less than WBF's 0.55
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5).numpy()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    out_b, out_s, out_l = weighted_boxes_fusion([boxes], [scores], [labels])
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_allclose(out_b, boxes[order], rtol=1e-6)
    np.testing.assert_allclose(out_s, scores[order], rtol=1e-6)
    assert out_l.tolist() == labels[order].tolist()


def test_wbf_weights_and_threshold() -> None:
    a, b = np.array([[0, 0, 10, 10]], np.float32), np.array([[1, 0, 11, 10]], np.float32)
    boxes, scores, _ = weighted_boxes_fusion([a, b], [np.array([0.5]), np.array([0.5])], [np.array([0])] * 2,
                                             weights=[3, 1])
    np.testing.assert_allclose(boxes[0], [0.25, 0, 10.25, 10])  # weight 3 pulls towards a
    assert scores[0] == pytest.approx((1.5 + 0.5) / 2 * 2 / 4)
    _, scores, _ = weighted_boxes_fusion([a, b], [np.array([0.5]), np.array([0.01])], [np.array([0])] * 2,
                                         skip_box_thr=0.05)
    assert scores.tolist() == pytest.approx([0.25])
    empty = weighted_boxes_fusion([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)])
    assert empty[0].shape == (0, 4)


def test_tta_plan_parsing() -> None:
    assert TTAPlan.parse("flip").passes() == [(1.0, False), (1.0, True)]
    plan = TTAPlan.parse("flip,0.8,1.2")
    assert plan.scales == (1.0, 0.8, 1.2) and len(plan.passes()) == 6 and plan.describe() == "flip,0.8,1.2"
    assert TTAPlan.parse("1.5").passes() == [(1.0, False), (1.5, False)]
    with pytest.raises(ValueError, match="'big'"):
        TTAPlan.parse("flip,big")


# ----------------------------------------------------------------------------- a tiny trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two epochs of the demo config on 16 synthetic 128 px pictures: checkpoints 1 and 2."""
    folder = tmp_path_factory.mktemp("predict")
    data = synthetic_shapes_yaml(folder, 16, 8, 128, seed=3)
    overrides = [f"dataset.data={data}", "dataset.image_size=128", f"General.work_dir={folder}", "General.name=run",
                 "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True",
                 "schedule.end_epoch=2", "schedule.eval_every=2", "test.batch_image=8"]
    Trainer(load_config(ROOT / "config/demo.py", overrides)).fit()
    return {"data": data, "folder": folder, "overrides": overrides,
            "ckpt1": folder / "run" / "epoch_0001.pt", "ckpt2": folder / "run" / "epoch_0002.pt",
            "val": sorted((folder / "tiny" / "images" / "val").glob("*.jpg"))}


def test_training_writes_tensorboard_next_to_the_log(trained: dict) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained["folder"] / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "eval/AP", "eval/AP50"} <= set(tags["scalars"])
    log = [json.loads(x) for x in (trained["folder"] / "run" / "log.jsonl").read_text().splitlines()]
    ap = next(r for r in log if r["kind"] == "eval")
    assert events.Scalars("eval/AP")[0].value == pytest.approx(ap["AP"]) and events.Scalars("eval/AP")[0].step == ap["step"]
    images = [t for t in tags["images"] if t.startswith("val/")]
    assert len(images) == 4 and events.Images(images[0])[0].width == 128


def test_from_checkpoint_needs_no_config_file(trained: dict) -> None:
    det = Predictor.from_checkpoint(trained["ckpt2"], device="cpu")
    assert "embedded config" in det.cfg.source
    assert det.cfg.dataset.image_size == 128 and det.cfg.anchors.scale == 2.0
    assert det.class_names == ["circle", "square", "triangle", "cross"] and det.category_ids == [1, 2, 3, 4]
    assert det.cfg.augment.mosaic_prob == 0.0  # sections the checkpoint may lack get base defaults


def test_predict_returns_original_pixels(trained: dict) -> None:
    det = Predictor.from_checkpoint(trained["ckpt2"], device="cpu")
    picture = Image.open(trained["val"][0]).convert("RGB")
    wide = picture.resize((256, 160), Image.BILINEAR)          # non-square, twice the input size
    half = wide.resize((128, 80), Image.BILINEAR)               # what the network sees of `wide`
    big, small = det.predict(wide), det.predict(half)
    assert len(big) > 0 and len(big) == len(small)
    np.testing.assert_allclose(big.boxes, 2 * small.boxes, atol=1e-3)
    np.testing.assert_allclose(big.scores, small.scores, atol=1e-6)
    assert big.boxes.dtype == np.float32 and big.labels.dtype == np.int64
    assert (big.boxes[:, 2] <= 256).all() and (big.boxes[:, 3] <= 160).all() and (big.boxes >= 0).all()
    assert big.boxes[:, 2].max() > 128 or big.boxes[:, 3].max() > 80  # not stuck in input pixels
    assert big.names == [det.class_names[c] for c in big.labels]
    assert (np.diff(big.scores) <= 0).all()

    path = trained["folder"] / "wide.png"
    wide.save(path)
    for same in (det.predict(path), det.predict(np.asarray(wide))):
        np.testing.assert_allclose(same.boxes, big.boxes, atol=1e-4)
    strong = det.predict(wide, score_thresh=0.2)
    assert (strong.scores >= 0.2).all() and len(strong) == int((big.scores >= 0.2).sum())


def test_flip_pass_equals_mirrored_picture(trained: dict) -> None:
    det = Predictor.from_checkpoint(trained["ckpt2"], device="cpu")
    tall = Image.open(trained["val"][1]).convert("RGB").resize((80, 128), Image.BILINEAR)  # padded on the right
    mirrored = tall.transpose(Image.FLIP_LEFT_RIGHT)
    tf = det.transform()
    x, _, _, scale = tf(tall, np.zeros((0, 4)), np.zeros(0))
    xm, *_ = tf(mirrored, np.zeros((0, 4)), np.zeros(0))
    assert torch.equal(flip_inputs(x[None], [80])[0], xm)  # mirrored content, padding kept bottom/right
    target = [{"scale": scale, "orig_size": (128, 80)}]
    flipped = det.forward(x[None], target, flip=True)[0]
    direct = det.forward(xm[None], target)[0]
    assert len(direct.boxes) > 0
    torch.testing.assert_close(flipped.boxes[:, [0, 2]], 80 - direct.boxes[:, [2, 0]], atol=1e-4, rtol=0)
    torch.testing.assert_close(flipped.scores, direct.scores)
    both = det.predict(tall, tta=TTAPlan.parse("flip,1.5"))
    assert len(both) > 0 and (both.boxes[:, 2] <= 80).all()


def test_predict_cli_writes_json_and_pngs(trained: dict, tmp_path: Path) -> None:
    val = trained["val"]
    out, vis = tmp_path / "pred.json", tmp_path / "vis"
    cmd = [sys.executable, "-m", "utils.predict", "--config", "config/demo.py", "--set", "dataset.image_size=128",
           "--weights", str(trained["ckpt2"]), str(val[0]), str(val[0].parent / "00000[3-5].jpg"),
           "--out", str(out), "--vis", str(vis), "--vis-score", "0.0", "--min-score", "0.002"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert rows and {"image_id", "file_name", "category_id", "category_name", "bbox", "score"} <= set(rows[0])
    assert {r["file_name"] for r in rows} <= {str(v) for v in val}
    assert all(r["score"] >= 0.002 for r in rows) and all(len(r["bbox"]) == 4 for r in rows)
    assert sorted(p.name for p in vis.glob("*.png")) == ["000000.png", "000003.png", "000004.png", "000005.png"]
    assert Image.open(vis / "000000.png").size == Image.open(val[0]).size

    bad = subprocess.run(cmd[:9] + [str(tmp_path / "nothing.jpg")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "nothing.jpg" in bad.stderr

    # the json scores on the split it came from: its rows are matched to the split's pictures by file name
    # (utils.predict numbers the pictures it was given 1, 2, ...; the split's own ids are others)
    from core.data.spec import load_dataset_spec, read_split
    from core.engine.tester import read_results

    records = read_split(load_dataset_spec(trained["data"]), "val")
    id_of = {r.file_name: r.image_id for r in records}
    scored = read_results(out, records, "val")
    assert len(scored) == len(rows) and all(r["image_id"] == id_of[r["file_name"]] for r in scored)
    assert {r["image_id"] for r in rows} != {r["image_id"] for r in scored}  # the numbering did differ

    # a drawing never lands on a picture it was given, --overwrite or not
    picture = tmp_path / "mine" / "shot.png"
    picture.parent.mkdir()
    Image.open(val[0]).save(picture)
    before = picture.read_bytes()
    over = subprocess.run(cmd[:9] + [str(picture), "--out", str(tmp_path / "p2.json"), "--vis", str(picture.parent),
                                     "--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert over.returncode == 2 and "is an input" in over.stderr and len(over.stderr.strip().splitlines()) == 1
    assert picture.read_bytes() == before and not (tmp_path / "p2.json").exists()


def test_detection_test_prints_tta_and_ensemble_next_to_single(trained: dict) -> None:
    cmd = [sys.executable, "detection_test.py", "--config", "config/demo.py",
           *[a for o in trained["overrides"] for a in ("--set", o)],
           "--weights", str(trained["ckpt2"]), "--tta", "flip", "--ensemble", str(trained["ckpt1"])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out  # unchanged output
    assert "circle" in out
    ap = float(re.search(r"\(AP\) @\[ IoU=0\.50:0\.95 \| area=   all \| maxDets=100 \] = (-?[\d.]+)", out).group(1))
    rows = {}
    for name in ("single model (epoch_0002.pt)", "TTA flip (WBF of 2 passes)", "ensemble of 2 (WBF, each with TTA)"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        rows[name] = [None if v == "n/a" else float(v) for v in line[len(name):].split()]
        assert len(rows[name]) == 7
    assert rows["single model (epoch_0002.pt)"][0] == pytest.approx(100 * ap, abs=0.051)
    run = trained["folder"] / "run"
    for name in ("results_val.json", "results_val_tta.json", "results_val_ensemble.json"):
        results = json.loads((run / name).read_text())
        assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}


def test_drawing_names_never_collide() -> None:
    """``vis_names``: one drawing name per picture, also where a repeated stem's ``<stem>_<k>`` is another
    picture's own stem (a COCO split with subfolders), so no drawing replaces another in the same run."""
    from utils.predict import vis_names

    paths = [Path("a/x.jpg"), Path("b/x.jpg"), Path("x_1.jpg"), Path("c/x.png"), Path("y.jpg")]
    names = vis_names(paths)
    assert names == ["x.png", "x_1.png", "x_1_1.png", "x_2.png", "y.png"]
