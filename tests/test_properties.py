"""Property-based tests (hypothesis): annotation readers and post-processing on random and
adversarial input either give correct results or a DatasetError naming the file, never a crash."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops import box_iou

from core.data.records import DatasetError
from core.data.spec import read_coco, read_voc, read_yolo
from core.postprocess import postprocess

W, H = 64, 48
CLASSES = ["a", "b"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# anything a hand-edited annotation file might hold where a number belongs
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-10**6, 10**6), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (W, H), (90, 90, 90)).save(folder / "img.png")
    return folder


valid_box = st.tuples(st.floats(0, W - 2), st.floats(0, H - 2)).flatmap(
    lambda xy: st.tuples(st.just(xy[0]), st.just(xy[1]), st.floats(1, W - xy[0]), st.floats(1, H - xy[1])))


@SETTINGS
@given(boxes=st.lists(st.tuples(valid_box, st.integers(0, 1)), max_size=6))
def test_coco_reader_reads_valid_boxes_exactly(boxes, image_dir: Path, tmp_path_factory) -> None:
    ann = tmp_path_factory.mktemp("coco") / "a.json"
    ann.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "img.png", "width": W, "height": H}],
        "categories": [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": (3, 9)[c], "bbox": list(b), "iscrowd": 0}
                        for i, (b, c) in enumerate(boxes)]}))
    records = read_coco(ann, image_dir, CLASSES, [3, 9])
    assert len(records) == 1 and records[0].image_id == 7
    expected = np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in boxes], dtype=np.float32).reshape(-1, 4)
    np.testing.assert_allclose(records[0].boxes, expected, rtol=1e-6, atol=1e-4)
    assert records[0].labels.tolist() == [c for _, c in boxes]


@SETTINGS
@given(bbox=st.one_of(junk, st.lists(junk, min_size=0, max_size=5)), category=junk, image_id=junk)
def test_coco_reader_rejects_junk_with_a_named_error(bbox, category, image_id, image_dir: Path,
                                                      tmp_path_factory) -> None:
    ann = tmp_path_factory.mktemp("coco") / "junk.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "img.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 1, "image_id": image_id, "category_id": category, "bbox": bbox}]}, default=str))
    try:
        records = read_coco(ann, image_dir, CLASSES, [1, 2])
    except DatasetError as err:
        assert "junk.json" in str(err)
        return
    for rec in records:  # whatever was accepted is a sane box inside the image
        assert np.isfinite(rec.boxes).all()
        assert ((rec.boxes[:, 2] > rec.boxes[:, 0]) & (rec.boxes[:, 3] > rec.boxes[:, 1])).all()


@SETTINGS
@given(values=st.lists(st.one_of(st.text(max_size=6), st.floats(-100, 200).map(str)), min_size=4, max_size=4),
       name=st.sampled_from(["a", "b", "zebra", ""]))
def test_voc_reader_junk_coordinates_give_named_errors(values, name, image_dir: Path, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("voc")
    xmin, ymin, xmax, ymax = values
    (folder / "img.xml").write_text(
        f"<annotation><filename>img.png</filename><size><width>{W}</width><height>{H}</height></size>"
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
        f"<ymax>{ymax}</ymax></bndbox></object></annotation>")
    try:
        records = read_voc(folder, image_dir, CLASSES)
    except DatasetError as err:
        assert "img.xml" in str(err)
        return
    box = records[0].boxes[0]
    assert np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]
    assert 0 <= box[0] and box[2] <= W and 0 <= box[1] and box[3] <= H


@SETTINGS
@given(lines=st.lists(st.one_of(
    st.tuples(st.integers(-1, 3), st.floats(-0.5, 1.5), st.floats(-0.5, 1.5), st.floats(-0.1, 1.2),
              st.floats(-0.1, 1.2)).map(lambda t: " ".join(str(v) for v in t)),
    st.text(alphabet="0123456789.- abc\t", max_size=20)), max_size=5))
def test_yolo_reader_lines_give_boxes_or_named_errors(lines, image_dir: Path, tmp_path_factory) -> None:
    labels = tmp_path_factory.mktemp("yolo")
    (labels / "img.txt").write_text("\n".join(lines) + "\n")
    try:
        records = read_yolo(labels, image_dir, CLASSES)
    except DatasetError as err:
        assert "img.txt" in str(err)
        return
    boxes = records[0].boxes
    assert np.isfinite(boxes).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert set(records[0].labels.tolist()) <= {0, 1}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 10.0, 1e4]),
       nms=st.floats(0.3, 0.7), max_det=st.integers(1, 50))
def test_postprocess_invariants(seed: int, scale: float, nms: float, max_det: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, c = 60, 3
    anchors = torch.rand(n, 2, generator=g) * 100
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(n, 2, generator=g) * 40], 1)
    logits = torch.randn(2, n, c, generator=g) * scale
    deltas = torch.randn(2, n, 4, generator=g) * scale  # huge offsets must be clamped, not overflow
    dets = postprocess([logits], deltas, anchors, (120, 110), top_n=100, min_score=0.05, nms_thresh=nms, max_det=max_det)
    for det in dets:
        assert len(det.boxes) <= max_det
        assert torch.isfinite(det.boxes).all()
        assert (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= 110).all()
        assert (det.boxes[:, 1] >= 0).all() and (det.boxes[:, 3] <= 120).all()
        assert (det.scores > 0.05).all()
        assert torch.all(det.scores[:-1] >= det.scores[1:])
        for k in det.labels.unique():
            same = det.boxes[det.labels == k]
            iou = box_iou(same, same) - torch.eye(len(same))
            assert len(same) < 2 or iou.max() <= nms + 1e-6
