"""Workflows on real data: tiled prediction of large pictures (and training on tiles), prediction on
folders, globs and videos, and the confusion matrix of detection_test.py."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.config.loading import load_config
from core.evaluation.confusion import confusion_matrix, detections_from_results, format_confusion, match_detections
from core.data.dataset import DetectionDataset
from core.data.records import ImageRecord
from core.data.transforms import build_transform
from core.ops.postprocess import Detections
from core.inference.predictor import Predictor
from core.inference.tiling import TilePlan, merge_detections, tile_starts, tile_windows

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- a fake detector


class BrightBlobs:
    """A stand-in for a trained task: every 8-connected blob of pixels whose red and green are above
    the middle grey (white or yellow, in the normalised input) is one detection of class 0, its box
    the blob's bounding box in input pixels, its score 0.3 + 0.6 x min(1, its area / 256 px)
    (whole 16 px squares 0.9, pieces of them less). Whatever the Predictor does around it (resize,
    padding, batching, rescaling, tiling) is real."""

    def detect(self, outputs: torch.Tensor, images: torch.Tensor) -> list[Detections]:
        out = []
        for image in outputs:
            mask = (image[0] > 0.0) & (image[1] > 0.0)
            h, w = mask.shape
            labels = torch.where(mask, torch.arange(1, h * w + 1, dtype=torch.float32).view(h, w), 0.0)
            while True:  # each blob takes its largest pixel number: propagate the maximum within the mask
                spread = torch.nn.functional.max_pool2d(labels[None, None], 3, 1, 1)[0, 0] * mask
                if torch.equal(spread, labels):
                    break
                labels = spread
            boxes = []
            for value in labels.unique():
                if value == 0:
                    continue
                ys, xs = torch.nonzero(labels == value, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            scores = 0.3 + 0.6 * (area / 256).clamp(max=1)
            out.append(Detections(b, scores, torch.zeros(len(b), dtype=torch.int64)))
        return out


def fake_detector(image_size: int = 64) -> Predictor:
    cfg = load_config(ROOT / "config/demo.py", [f"dataset.image_size={image_size}", "test.batch_image=16"])
    return Predictor(nn.Identity(), cfg, ["blob"], [1], torch.device("cpu"), task=BrightBlobs(), source="fake")


def squares_picture(width: int, height: int, boxes: list[list[int]]) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box of a [N, 4] with each of b [K, 4]."""
    from core.ops.iou import box_iou as pairwise_iou

    return pairwise_iou(np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4))


# ----------------------------------------------------------------------------- tiling geometry


def test_tile_windows_cover_the_picture_and_end_at_its_border() -> None:
    assert tile_starts(768, 256, 205) == [0, 205, 410, 512]
    assert tile_starts(256, 256, 205) == [0] and tile_starts(100, 256, 205) == [0]
    for width, height, size, overlap in [(300, 200, 64, 0.25), (768, 768, 256, 0.2), (1000, 90, 128, 0.0),
                                         (50, 40, 64, 0.5), (65, 64, 64, 0.2)]:
        windows = tile_windows(width, height, size, overlap)
        covered = np.zeros((height, width), bool)
        for x0, y0, x1, y1 in windows:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert x1 - x0 == min(size, width) and y1 - y0 == min(size, height)
            covered[y0:y1, x0:x1] = True
        assert covered.all()
        assert max(x1 for *_, x1, _ in windows) == width and max(y1 for *_, y1 in windows) == height
        step = max(1, round(size * (1 - overlap)))
        xs = sorted({w[0] for w in windows})
        assert all(b - a <= step for a, b in zip(xs, xs[1:]))  # neighbours overlap by >= size - step
    assert tile_windows(50, 40, 64) == [(0, 0, 50, 40)]  # smaller than a tile: one tile, the picture
    with pytest.raises(ValueError, match="overlap"):
        TilePlan(64, 1.0)
    with pytest.raises(ValueError, match="tile-merge"):
        TilePlan(64, 0.2, "mean")


SQUARES = [[3, 4, 19, 20], [58, 30, 74, 46], [150, 100, 166, 116], [281, 10, 297, 26], [120, 181, 136, 197],
           [283, 183, 299, 199], [200, 60, 213, 80], [38, 36, 54, 52]]


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_tiled_prediction_finds_each_square_once_in_picture_pixels(merge: str) -> None:
    """A 300 x 200 picture with 16 px squares (some across window borders, one whole in four windows,
    some only in the windows moved back to the right / bottom border), tiles of the network's 64 px
    at scale 1, overlapping by half: each square
    is found once, with its exact box (NMS; WBF averages in the larger pieces of it that other
    windows see, IoU > 0.7 here), and every detection lies on a square (pieces from windows that hold
    only part of one are allowed, within it). Fails when tile boxes are not moved back by their
    window's corner (they pile up in the top-left 64 px), when the last row / column is not moved
    to the border (the squares at x 281-299 / y 181-199 are missed) and when overlapping windows'
    copies are not merged (a square seen whole twice is found twice)."""
    det = fake_detector(64)
    picture = squares_picture(300, 200, SQUARES)
    assert sum(x0 <= 38 and 54 <= x1 and y0 <= 36 and 52 <= y1 for x0, y0, x1, y1 in tile_windows(300, 200, 64, 0.5)) == 4
    plan = TilePlan(64, 0.5, merge)
    pred = det.predict(picture, tiling=plan)
    gt = np.array(SQUARES, np.float32)
    overlap = iou(gt, pred.boxes)
    found = overlap > (0.99 if merge == "nms" else 0.7)
    assert found.sum(axis=1).tolist() == [1] * len(SQUARES), (pred.boxes, pred.scores)
    inside = ((pred.boxes[:, None, :2] >= gt[None, :, :2] - 0.5) & (pred.boxes[:, None, 2:] <= gt[None, :, 2:] + 0.5)
              ).all(-1).any(1)
    assert inside.all(), pred.boxes[~inside]
    # the whole squares score highest: the best detection of each square is the one found
    best = np.argmax(np.where(overlap > 0, pred.scores[None, :], -1), axis=1)
    assert found[np.arange(len(SQUARES)), best].all()
    untiled = det.predict(picture)  # the picture shrunk to 64 px: squares of 3.4 px, boxes off by a pixel or more
    assert (iou(gt, untiled.boxes) > 0.99).sum() < len(SQUARES)


def test_tile_full_adds_objects_larger_than_a_tile() -> None:
    """A 150 px square in a 300 x 200 picture is larger than any 64 px window: tiles alone find only
    pieces of it, with --tile-full the whole-picture pass finds it (boxes in picture pixels)."""
    det = fake_detector(64)
    big = [[100, 30, 250, 180]]
    picture = squares_picture(300, 200, big + [[10, 10, 26, 26]])
    tiles_only = det.predict(picture, tiling=TilePlan(64, 0.2))
    with_full = det.predict(picture, tiling=TilePlan(64, 0.2, full=True))
    assert iou(big, tiles_only.boxes).max() < 0.5
    assert iou(big, with_full.boxes).max() > 0.9
    assert iou([[10, 10, 26, 26]], with_full.boxes).max() > 0.99  # the small one still at full resolution


def test_merge_detections_nms_and_wbf() -> None:
    a = Detections(torch.tensor([[0., 0., 10., 10.], [50., 50., 60., 60.]]), torch.tensor([0.9, 0.4]),
                   torch.tensor([0, 1]))
    b = Detections(torch.tensor([[1., 0., 11., 10.], [50., 50., 60., 60.]]), torch.tensor([0.6, 0.8]),
                   torch.tensor([0, 0]))
    nms = merge_detections([a, b], "nms", 0.5)
    assert nms.scores.tolist() == pytest.approx([0.9, 0.8, 0.4])  # class 1 never suppresses class 0
    assert nms.boxes[0].tolist() == [0, 0, 10, 10]
    wbf = merge_detections([a, b], "wbf", 0.55, max_det=2)
    assert wbf.scores.tolist() == pytest.approx([0.8, 0.75])  # one model: a cluster's score is its mean
    torch.testing.assert_close(wbf.boxes[1], torch.tensor([0.4, 0, 10.4, 10]))  # score-weighted corners
    empty = merge_detections([], "nms", 0.5)
    assert empty.boxes.shape == (0, 4)


# ----------------------------------------------------------------------------- training on tiles


def test_training_tile_is_a_random_window_of_original_pixels_drawn_from_the_sample_key(tmp_path: Path) -> None:
    """``dataset.tile``: each training sample is a tile x tile window of the original picture (read
    back from a picture whose pixels encode their own position), its boxes moved into the window,
    clipped, and dropped when under 20% of their area is left; the window is drawn from the
    sample's (index, seed) key only. Fails when the boxes are not moved with the window, when the
    window comes from torch's global RNG, or when it is resized instead of cut."""
    size, tile = 256, 64
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    path = tmp_path / "grid.png"
    Image.fromarray(pixels).save(path)
    boxes = np.array([[10, 10, 40, 30], [100, 120, 130, 150], [0, 200, 256, 210], [170, 20, 200, 60],
                      [28, 28, 228, 228]], np.float32)  # the last: at most 10% of it in any window, always dropped
    record = ImageRecord(1, str(path), size, size, boxes, np.arange(5, dtype=np.int64))
    transform = build_transform(tile, (0, 0, 0), (1, 1, 1), train=True, hflip_prob=0.0, tile=tile)
    dataset = DetectionDataset([record], transform)
    corners = set()
    for seed in range(12):
        image, target = dataset[(0, seed)]
        torch.manual_seed(seed + 1000)  # the global RNG must not matter
        again, target_again = dataset[(0, seed)]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])
        assert image.shape == (3, tile, tile) and target["scale"] == 1.0
        x0, y0 = int(round(float(image[0, 0, 0]) * 255)), int(round(float(image[1, 0, 0]) * 255))
        assert int(round(float(image[0, 0, -1]) * 255)) == x0 + tile - 1  # cut at scale 1, not resized
        assert int(round(float(image[1, -1, 0]) * 255)) == y0 + tile - 1
        corners.add((x0, y0))
        shifted = boxes - np.array([x0, y0, x0, y0], np.float32)
        clipped = np.clip(shifted, 0, tile)
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = ((clipped[:, 2] - clipped[:, 0]) >= 2) & ((clipped[:, 3] - clipped[:, 1]) >= 2) & \
            (area(clipped) >= 0.2 * area(boxes))
        np.testing.assert_allclose(target["boxes"].numpy(), clipped[keep], atol=1e-4)
        assert target["labels"].tolist() == np.flatnonzero(keep).tolist() and 4 not in target["labels"].tolist()
    assert len(corners) >= 10  # random windows, not one
    small = ImageRecord(2, str(path), size, size, boxes, np.arange(5, dtype=np.int64))
    whole = DetectionDataset([small], build_transform(256, (0, 0, 0), (1, 1, 1), train=True, hflip_prob=0.0,
                                                      tile=512))[(0, 3)]
    np.testing.assert_allclose(whole[1]["boxes"].numpy(), boxes)  # no larger than the tile: left whole
    with pytest.raises(ValueError, match="dataset.tile"):
        build_transform(64, (0, 0, 0), (1, 1, 1), train=True, tile=-1)


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_counts_hand_made_cases() -> None:
    """Rows predicted, columns true, index 3 background, at IoU > 0.45 and score >= 0.25."""
    gt_a = (np.array([[0, 0, 10, 10],          # class 0, found                 -> [0, 0]
                      [20, 20, 30, 30],        # class 1, found as class 2      -> [2, 1]
                      [40, 40, 50, 50],        # class 2, missed                -> [3, 2]
                      [80, 80, 90, 90],        # class 0, found twice           -> [0, 0] and [0, 3]
                      [100, 100, 110, 110]]),  # class 1, only a box at IoU 0.43 -> [3, 1], the box [1, 3]
            np.array([0, 1, 2, 0, 1]))
    det_a = (np.array([[0, 0, 10, 10], [20, 21, 30, 31], [60, 60, 70, 70], [80, 80, 90, 90], [81, 80, 91, 90],
                       [40, 40, 50, 50], [104, 100, 114, 110]]),
             np.array([0.9, 0.8, 0.7, 0.9, 0.6, 0.1, 0.5]),
             np.array([0, 2, 1, 0, 0, 2, 1]))  # [60..70]: a false class-1 box -> [1, 3]; 0.1: under the score
    gt_b, det_b = (np.zeros((0, 4)), np.zeros(0, np.int64)), (np.array([[5, 5, 15, 15]]), np.array([0.3]), np.array([2]))
    gt_c, det_c = (np.array([[0, 0, 8, 8]]), np.array([2])), (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    matrix = confusion_matrix([det_a, det_b, det_c], [gt_a, gt_b, gt_c], num_classes=3)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 2       # two right class-0 detections
    expected[2, 1] = 1       # a class-1 object called class 2
    expected[3, 2] = 2       # class-2 objects missed (image a, image c)
    expected[3, 1] = 1       # the class-1 object with only a poor box
    expected[0, 3] = 1       # the duplicate of the second class-0 object
    expected[1, 3] = 2       # the false class-1 box and the poor one
    expected[2, 3] = 1       # image b's false class-2 box
    np.testing.assert_array_equal(matrix, expected)
    assert matrix[:, :3].sum(axis=0).tolist() == [2, 2, 2]  # columns add up to the objects of each class
    # a lower IoU threshold lets the poor box (IoU 0.43) match; a higher score drops the duplicate (0.6)
    loose = confusion_matrix([det_a, det_b, det_c], [gt_a, gt_b, gt_c], 3, iou_thr=0.4, score_thr=0.65)
    assert loose[1, 1] == 0 and loose[3, 1] == 1  # the poor box scores 0.5 < 0.65: still missed
    assert confusion_matrix([det_a], [gt_a], 3, iou_thr=0.4)[1, 1] == 1
    assert loose[0, 3] == 0 and loose[0, 0] == 2
    # greedy by IoU: one box between two objects goes to the one it overlaps more
    assert match_detections(np.array([[0, 0, 10, 10], [2, 0, 12, 10]]), np.array([[2, 0, 12, 10]]), 0.45) == [(1, 0)]
    table = format_confusion(matrix, ["a", "b", "c"])
    assert table.splitlines()[0].split()[-1] == "background" and table.splitlines()[-1].split()[0] == "background"
    results = [{"image_id": 7, "category_id": 12, "bbox": [1, 2, 3, 4], "score": 0.5},
               {"image_id": 7, "category_id": 99, "bbox": [1, 2, 3, 4], "score": 0.5}]
    boxes, scores, labels = detections_from_results(results, [11, 12])[7]
    assert boxes.tolist() == [[1, 2, 4, 6]] and labels.tolist() == [1] and scores.tolist() == [0.5]
    with pytest.raises(ValueError, match="label 3"):
        confusion_matrix([det_b], [(np.array([[0, 0, 1, 1]]), np.array([3]))], 3)


# ----------------------------------------------------------------------------- folders, globs, videos


def write_video(path: Path, frames: int, fps: float, side: int = 64) -> list[list[int]]:
    """A ``side`` px mp4 of a 16 px yellow square moving right and down; returns its box per frame."""
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (side, side))
    assert writer.isOpened()
    boxes = []
    for i in range(frames):
        x0, y0 = 4 + 4 * i, 6 + 2 * i
        frame = np.zeros((side, side, 3), np.uint8)
        frame[y0:y0 + 16, x0:x0 + 16] = (0, 255, 255)  # BGR: yellow
        writer.write(frame)
        boxes.append([x0, y0, x0 + 16, y0 + 16])
    writer.release()
    return boxes


def test_predict_takes_folders_globs_and_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """utils.predict on a folder (two pictures, a 10-frame video, a text file) and a glob: the
    pictures' COCO json, per video a JSON line per frame (index, time = frame / fps, boxes in frame
    pixels following the square) and an annotated mp4 of the same size, frame rate and length with
    the red boxes drawn, and progress lines on a non-terminal stderr. Fails when frames are not
    turned from OpenCV's BGR into RGB (the yellow square reads as cyan and is not found), when
    drawn frames are not turned back (the boxes come out blue), when frames are skipped or
    reordered, and when the time is not frame / fps."""
    cv2 = pytest.importorskip("cv2")
    import utils.predict as predict

    folder = tmp_path / "inputs"
    folder.mkdir()
    truth = write_video(folder / "clip.mp4", frames=10, fps=8.0)
    squares_picture(64, 48, [[5, 5, 21, 21]]).save(folder / "a.png")
    squares_picture(80, 80, [[40, 30, 56, 46]]).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not a picture")
    other = tmp_path / "more"
    other.mkdir()
    squares_picture(64, 64, [[1, 1, 17, 17]]).save(other / "c.png")
    assert [p.name for p in predict.expand_images([str(folder), str(other / "*.png")])] == \
        ["a.png", "b.jpg", "clip.mp4", "c.png"]

    fake = fake_detector(64)
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: fake))
    out = tmp_path / "out"
    code = predict.main(["--weights", "unused.pt", str(folder), str(other / "*.png"), "--out", str(out / "p.json"),
                         "--log-every", "2", "--batch", "3", "--vis-score", "0.5"])
    assert code == 0
    err = capsys.readouterr().err
    # batches of 3, a line each time a multiple of 2 is passed, and one at the end unless just printed
    progress = [line.split(" (")[0] for line in err.splitlines() if " frames (" in line or " pictures (" in line]
    assert progress == ["pictures: 3/3 pictures", "clip.mp4: 3/10 frames", "clip.mp4: 6/10 frames",
                        "clip.mp4: 9/10 frames", "clip.mp4: 10/10 frames"], err
    rows = json.loads((out / "p.json").read_text())
    assert sorted({Path(r["file_name"]).name for r in rows}) == ["a.png", "b.jpg", "c.png"]
    a = [r for r in rows if r["file_name"].endswith("a.png")]
    assert len(a) == 1 and a[0]["bbox"] == pytest.approx([5, 5, 16, 16], abs=1.0)

    lines = [json.loads(x) for x in (out / "clip.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(10))
    assert [x["time"] for x in lines] == pytest.approx([i / 8.0 for i in range(10)])
    for line, box in zip(lines, truth):
        best = max(line["detections"], key=lambda d: d["score"])
        assert set(best) == {"box", "score", "label", "category_id", "class_name"} and best["class_name"] == "blob"
        assert iou([box], [best["box"]])[0, 0] > 0.75, (line, box)

    annotated = cv2.VideoCapture(str(out / "clip_detections.mp4"))
    assert annotated.get(cv2.CAP_PROP_FPS) == pytest.approx(8.0)
    assert (annotated.get(cv2.CAP_PROP_FRAME_WIDTH), annotated.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 64)
    frames = []
    while True:
        ok, frame = annotated.read()
        if not ok:
            break
        frames.append(frame.astype(int))
    assert len(frames) == 10
    for frame in frames:  # class 0's colour is red: R well above G and B where the box and its label are
        red = (frame[:, :, 2] > frame[:, :, 1] + 60) & (frame[:, :, 2] > frame[:, :, 0] + 60)
        blue = (frame[:, :, 0] > frame[:, :, 1] + 60) & (frame[:, :, 0] > frame[:, :, 2] + 60)
        assert red.sum() > 30 and blue.sum() < 5

    # a second run refuses to replace any of the first one's outputs, before the model loads
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(p.name for p in before) == ["clip.jsonl", "clip_detections.mp4", "p.json"]
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: pytest.fail("model loaded")))
    for name in ("p.json", "clip.jsonl", "clip_detections.mp4"):
        keep = {p: (tmp_path / f"kept_{p.name}") for p in before if p.name != name}
        for p, kept in keep.items():
            p.rename(kept)
        assert predict.main(["--weights", "unused.pt", str(folder), "--out", str(out / "p.json")]) == 2
        assert f"{out / name}: exists; pass --overwrite" in capsys.readouterr().err
        for p, kept in keep.items():
            kept.rename(p)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: fake))
    assert predict.main(["--weights", "unused.pt", str(folder), "--out", str(out / "p.json"), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip_detections.mp4", "p.json"]  # no temp left
    assert len((out / "clip.jsonl").read_text().splitlines()) == 10

    assert predict.main(["--weights", "unused.pt", str(tmp_path / "missing.mp4")]) == 2
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert predict.main(["--weights", "unused.pt", str(tmp_path / "broken.mp4"), "--out", str(out / "q.json")]) == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_predict_cli_tiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """utils.predict --tile 64 --overlap 0.5: the json holds each square of the 300 x 200 picture with
    its exact box (COCO xywh, picture pixels); --tile-merge / --overlap without --tile and an
    overlap of 1 are refused."""
    import utils.predict as predict

    squares_picture(300, 200, SQUARES).save(tmp_path / "big.png")
    fake = fake_detector(64)
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: fake))
    out = tmp_path / "p.json"
    assert predict.main(["--weights", "unused.pt", str(tmp_path / "big.png"), "--out", str(out), "--tile", "64",
                         "--overlap", "0.5", "--min-score", "0.85"]) == 0
    boxes = sorted([round(v) for v in (r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                                       r["bbox"][1] + r["bbox"][3])] for r in json.loads(out.read_text()))
    assert boxes == sorted(SQUARES)
    for bad in (["--overlap", "0.3"], ["--tile-merge", "wbf"], ["--tile", "64", "--overlap", "1"]):
        with pytest.raises(SystemExit) as stop:
            predict.parse_args(["--weights", "w.pt", "x.png", *bad])
        assert stop.value.code == 2


# ----------------------------------------------------------------------------- tiles help on large pictures

TILE = 64          # network input side and tile side (original pixels)
LARGE = 256        # side of the large test pictures: 4 x the input, so their 12-20 px objects shrink to 3-5 px
SIDES = (12, 20)   # object sides in original pixels
OBJECTS = (30, 40)  # objects per large picture


def write_shapes(root: Path, split: str, count: int, seed: int, repeat: int = 1) -> None:
    """``count`` LARGE px pictures of core.data.synthetic's shapes with many small objects, as a COCO
    split under ``root``; each picture listed ``repeat`` times (more samples per epoch, each its
    own random tile)."""
    from core.data.synthetic import CLASSES, render_image

    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        picture, objects = render_image(np.random.default_rng([seed, i]), LARGE, SIDES, OBJECTS)
        picture.save(folder / f"{i:04d}.png")
        for r in range(repeat):
            image_id = 1 + i + r * count
            images.append({"id": image_id, "file_name": f"{i:04d}.png", "width": LARGE, "height": LARGE})
            for c, (x1, y1, x2, y2) in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": 0})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"{split}.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}))
    splits = sorted(p.stem for p in (root / "annotations").glob("*.json"))
    (root / "data.yaml").write_text("format: coco\nroot: .\n" + "".join(
        f"{name}: {{images: images/{name}, annotations: annotations/{name}.json}}\n" for name in splits))


TRAIN_STEPS = 96
MODEL_OVERRIDES = [f"dataset.image_size={TILE}", f"dataset.tile={TILE}", "dataset.scale_min=1.0",
                   "dataset.scale_max=1.0", "neck.repeats=1", "head.repeats=1", "anchors.scale=1.5",
                   "optimizer.lr=4e-3", "optimizer.lr_batch=16", "test.batch_image=32", "test.top_n=200"]


@pytest.fixture(scope="module")
def tile_model(tmp_path_factory) -> dict:
    """A small EfficientDet (config/demo.py with one BiFPN layer and head layer, 64 px input) trained
    for TRAIN_STEPS steps (one epoch) of 16 random 64 px tiles (``dataset.tile``) of 96 large shapes
    pictures with 30-40 objects of 12-20 px each."""
    from core.engine.trainer import Trainer

    folder = tmp_path_factory.mktemp("tiles")
    data = folder / "train"
    write_shapes(data, "train", 96, seed=100, repeat=TRAIN_STEPS * 16 // 96)
    write_shapes(data, "val", 2, seed=101)
    overrides = MODEL_OVERRIDES + [f"dataset.data={data / 'data.yaml'}", f"General.work_dir={folder}",
                                   "General.name=run", "General.batch_image=16", "General.loader_worker=0",
                                   "General.deterministic=True", "schedule.end_epoch=1", "schedule.eval_every=0",
                                   "General.log_frequency=20"]
    Trainer(load_config(ROOT / "config/demo.py", overrides)).fit()
    return {"folder": folder, "ckpt": folder / "run" / "epoch_0001.pt", "overrides": overrides}


def tiled_vs_untiled(det: Predictor, root: Path) -> tuple[float, float]:
    """AP50 of untiled and tiled prediction on the val split under ``root``."""
    from core.data.spec import load_dataset_spec, read_split
    from core.engine.inference import coco_results
    from core.evaluation.coco_eval import coco_ground_truth_from_records, evaluate

    spec = load_dataset_spec(root / "data.yaml")
    records = read_split(spec, "val")
    gt = coco_ground_truth_from_records(records, spec.class_names, spec.category_ids)
    ap50 = [evaluate(gt, coco_results(found, spec.category_ids), spec.class_names, spec.category_ids).stats["AP50"]
            for found in (det.predict_records(records), det.predict_records_tiled(records, TilePlan(TILE, 0.2)))]
    return ap50[0], ap50[1]


def test_tiles_beat_the_shrunk_picture_on_small_objects(tile_model: dict, tmp_path: Path) -> None:
    """On LARGE px pictures with 12-20 px objects, a detector trained on 64 px tiles finds them
    when the picture is predicted in 64 px tiles and not when it is shrunk whole to 64 px (objects of
    3-5 px). Three generated test sets (4 pictures, 30-40 objects each): tiled AP50 must exceed
    untiled by 0.3 on each. Measured on the 2-core CPU (torch 2.x, deterministic training): untiled
    0.000 on all three, tiled 0.745 / 0.722 / 0.716 (WBF merge 0.727 / 0.701 / 0.698; after 60
    training steps instead of 96: 0.41 / 0.44 / 0.32, after 120: 0.84 / 0.87 / 0.85). With the
    tile boxes not moved back by their window's corner, tiled AP50 was 0.005 / 0.008 / 0.003."""
    det = Predictor.from_checkpoint(tile_model["ckpt"], device="cpu")
    for seed in (1, 2, 3):
        root = tmp_path / f"test{seed}"
        write_shapes(root, "val", 4, seed=1000 + seed)
        untiled, tiled = tiled_vs_untiled(det, root)
        print(f"seed {seed}: untiled AP50 {untiled:.3f}, tiled AP50 {tiled:.3f}")
        assert tiled > untiled + 0.3, (seed, untiled, tiled)


def test_detection_test_tiles_and_writes_confusion_matrices(tile_model: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """detection_test.py --tile prints the tiled AP next to the single model's and writes the
    confusion matrix (printed, PNG and CSV) of both: each true column adds up to that class's
    objects, and tiles find more of them on the diagonal. Fails without the tiled row, when the
    confusion files are missing or when the matrix counts objects in the wrong place."""
    import detection_test

    root = tmp_path / "set"
    write_shapes(root, "val", 3, seed=2001)
    overrides = [o for o in tile_model["overrides"] if not o.startswith("dataset.data=")]
    overrides.append(f"dataset.data={root / 'data.yaml'}")
    monkeypatch.setattr(sys, "argv", ["detection_test.py", "--config", str(ROOT / "config/demo.py"),
                                      *[a for o in overrides for a in ("--set", o)],
                                      "--weights", str(tile_model["ckpt"]), "--tile", str(TILE)])
    assert detection_test.main() == 0
    out = capsys.readouterr().out
    rows = {}
    for name in ("single model (epoch_0001.pt)", f"tiled (tiles {TILE} px, overlap 0.2, nms)"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        rows[name] = [float(v) for v in line[len(name):].split()[:2]]  # AP, AP50 in percent
    single, tiled = rows.values()
    assert tiled[1] > single[1] + 30, out
    assert "confusion matrix, confusion_val (rows predicted, columns true; match IoU > 0.45, score >= 0.25)" in out
    run = tile_model["folder"] / "run"
    objects = np.zeros(4, int)
    for ann in json.loads((root / "annotations" / "val.json").read_text())["annotations"]:
        objects[ann["category_id"] - 1] += 1
    diagonal = {}
    for stem in ("confusion_val", "confusion_val_tiled"):
        assert (run / f"{stem}.png").stat().st_size > 0
        with open(run / f"{stem}.csv") as f:
            table = list(csv.reader(f))
        assert table[0] == ["predicted \\ true", "circle", "square", "triangle", "cross", "background"]
        assert [r[0] for r in table[1:]] == ["circle", "square", "triangle", "cross", "background"]
        counts = np.array([[int(v) for v in r[1:]] for r in table[1:]])
        assert counts[:, :4].sum(axis=0).tolist() == objects.tolist() and counts[4, 4] == 0
        diagonal[stem] = int(np.trace(counts[:4, :4]))
    assert diagonal["confusion_val_tiled"] > diagonal["confusion_val"] + objects.sum() // 10, diagonal


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "openvino-int8"])
def test_detection_test_scores_the_exported_network_in_each_runtime(tile_model: dict, tmp_path: Path, runtime: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """detection_test.py --runtime exports the trained network and runs it in ONNX Runtime or OpenVINO
    with DetLab's post-processing, tiles included (--tile, where this model finds its objects): the
    tiled AP and AP50 equal PyTorch's on the same pictures (the graphs compute the same sums in
    another order, so detections differ by float rounding only). INT8 (NNCF, calibrated on the
    set's 4 training pictures) may lose at most 1.0 AP and 1.0 AP50 (points of percent)."""
    pytest.importorskip("openvino" if runtime.startswith("openvino") else runtime)
    if runtime.endswith("int8"):
        pytest.importorskip("nncf")
    import detection_test

    root = tmp_path / "set"
    write_shapes(root, "val", 3, seed=2002)
    write_shapes(root, "train", 4, seed=2003)  # the INT8 calibration's pictures
    overrides = [o for o in tile_model["overrides"] if not o.startswith("dataset.data=")]
    overrides.append(f"dataset.data={root / 'data.yaml'}")
    tiled = {}
    for name in ("torch", runtime):
        monkeypatch.setattr(sys, "argv", ["detection_test.py", "--config", str(ROOT / "config/demo.py"),
                                          *[a for o in overrides for a in ("--set", o)],
                                          "--weights", str(tile_model["ckpt"]), "--runtime", name, "--tile", str(TILE)])
        assert detection_test.main() == 0
        out = capsys.readouterr().out
        assert (f"runtime: {runtime}" in out) == (name == runtime)
        row = f"tiled (tiles {TILE} px, overlap 0.2, nms)"
        line = next(line for line in out.splitlines() if line.startswith(row))
        tiled[name] = [float(v) for v in line[len(row):].split()[:2]]  # AP, AP50 in percent
    assert tiled["torch"][1] > 30, tiled  # the model finds its objects, so the comparison means something
    if runtime.endswith("int8"):
        assert all(q >= t - 1.0 for q, t in zip(tiled[runtime], tiled["torch"])), tiled
    else:
        assert tiled[runtime] == pytest.approx(tiled["torch"], abs=0.5), tiled


def test_export_int8_writes_a_quantized_ir_that_detects_as_torch_does(tile_model: dict, tmp_path: Path) -> None:
    """utils.export --format openvino --int8: an OpenVINO IR with 8-bit quantization, calibrated on the
    config's training pictures; run by OpenVINO its class logits follow PyTorch's (correlation > 0.98 on a
    tile of a picture; an uncalibrated range or a wrong input layout falls far below)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    from core.inference.exported import ExportedNetwork, cpu_has_amx
    from utils import export

    root = tmp_path / "set"
    write_shapes(root, "train", 4, seed=2003)
    overrides = [o for o in tile_model["overrides"] if not o.startswith("dataset.data=")]
    overrides.append(f"dataset.data={root / 'data.yaml'}")
    out = tmp_path / "int8" / "model.xml"
    assert export.main(["--config", str(ROOT / "config/demo.py"), *[a for o in overrides for a in ("--set", o)],
                        "--weights", str(tile_model["ckpt"]), "--format", "openvino", "--int8", "--calib-images", "4",
                        "--batch", "2", "--out", str(out)]) == 0
    ops = ov.Core().read_model(str(out)).get_ops()
    quantizers = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    assert quantizers, {op.get_type_name() for op in ops}
    # only dense convolutions take 8-bit inputs: a quantizer elsewhere splits OpenVINO's fused operations
    fed = {target.get_node().get_type_name() for q in quantizers for target in q.output(0).get_target_inputs()}
    assert fed == {"Convolution"}, fed
    det = Predictor.from_checkpoint(tile_model["ckpt"], ROOT / "config/demo.py", "cpu", overrides)
    net = ExportedNetwork(out, "openvino-int8", det.task.output_names(list(det.model.levels)), len(det.model.levels), 2)
    assert net.precision == ("bf16" if cpu_has_amx() else "f32")  # AVX-512 bf16 alone is slower than f32
    from core.data.dataset import load_image
    from core.data.spec import load_dataset_spec, read_split

    record = read_split(load_dataset_spec(root / "data.yaml"), "train")[0]
    tile = load_image(record).crop((0, 0, TILE, TILE))
    x = det.transform()(tile, np.zeros((0, 4)), np.zeros(0, np.int64))[0][None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        expected = det.model(x)[0][0].flatten()
    got = net(x)[0][0].flatten()
    assert torch.corrcoef(torch.stack([expected, got]))[0, 1] > 0.98
