"""Tests for core.data: YAML spec, COCO / VOC readers, synthetic data, transforms, dataset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.dataset import DetectionDataset, collate
from core.data.records import DatasetError
from core.data.formats.coco import read_coco
from core.data.formats.voc import read_voc
from core.data.spec import load_dataset_spec, read_split
from core.data.synthetic import synthesize_shapes
from core.data.transforms import build_transform


def _image(path: Path, w: int = 100, h: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _coco(tmp_path: Path, annotations: list[dict] | None = None) -> Path:
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 80},
                   {"id": 9, "file_name": "b.png", "width": 100, "height": 80}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 100, 80]},
            {"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 1},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ds.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- COCO


def test_coco_reader_via_spec(tmp_path: Path) -> None:
    _coco(tmp_path)
    spec = load_dataset_spec(_yaml(tmp_path, "format: coco\nroot: .\ntrain: {images: img, annotations: ann.json}\n"))
    assert spec.class_names == ["cat", "dog"] and spec.category_ids == [1, 3] and spec.num_classes == 2
    recs = read_split(spec, "train")
    assert [r.image_id for r in recs] == [7, 9]
    assert Path(recs[0].file_name).is_absolute() and recs[0].file_name.endswith("a.png")
    np.testing.assert_allclose(recs[0].boxes, [[10, 5, 30, 35], [0, 0, 100, 80]])
    assert recs[0].boxes.dtype == np.float32 and recs[0].labels.dtype == np.int64
    assert recs[0].labels.tolist() == [1, 0]
    assert recs[1].boxes.shape == (0, 4)  # the only annotation is a crowd one


def test_coco_class_subset_and_order(tmp_path: Path) -> None:
    _coco(tmp_path)
    spec = load_dataset_spec(_yaml(tmp_path, "format: coco\nclasses: [dog]\ntrain: {images: img, annotations: ann.json}\n"))
    assert spec.category_ids == [3]
    recs = read_split(spec, "train")
    assert recs[0].labels.tolist() == [0] and len(recs[0].boxes) == 1


def test_coco_malformed_json(tmp_path: Path) -> None:
    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [')
    with pytest.raises(DatasetError, match="ann.json.*not valid JSON"):
        read_coco(ann, tmp_path, ["cat"], [1])


def test_coco_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.json.*not found"):
        read_coco(tmp_path / "nope.json", tmp_path, ["cat"], [1])
    path = _yaml(tmp_path, "format: coco\ntrain: {images: img, annotations: nope.json}\n")
    with pytest.raises(DatasetError, match="nope.json.*not found"):
        load_dataset_spec(path)


@pytest.mark.parametrize("bbox, problem", [([90, 10, 20, 10], "outside"), ([10, 10, 0, 5], "zero or negative")])
def test_coco_bad_box(tmp_path: Path, bbox: list, problem: str) -> None:
    ann = _coco(tmp_path, [{"id": 42, "image_id": 7, "category_id": 1, "bbox": bbox}])
    with pytest.raises(DatasetError, match=f"ann.json: annotation id 42.*{problem}"):
        read_coco(ann, tmp_path / "img", ["cat", "dog"], [1, 3])


def test_coco_missing_field_and_unknown_category(tmp_path: Path) -> None:
    ann = _coco(tmp_path, [{"id": 5, "image_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match="annotations\\[0\\].*category_id"):
        read_coco(ann, tmp_path / "img", ["cat"], [1])
    ann = _coco(tmp_path, [{"id": 5, "image_id": 7, "category_id": 99, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match="annotation id 5.*category_id 99"):
        read_coco(ann, tmp_path / "img", ["cat"], [1])


# ----------------------------------------------------------------------------- VOC


def _voc_xml(name: str, objects: list[tuple[str, tuple, int]], fname: str = "x.jpg") -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><filename>{fname}</filename><size><width>100</width><height>80</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def _voc(tmp_path: Path, objects: list, extra: dict[str, str] | None = None) -> Path:
    ann = tmp_path / "Annotations"
    ann.mkdir()
    _image(tmp_path / "JPEGImages" / "x.jpg")
    _image(tmp_path / "JPEGImages" / "y.jpg")
    (ann / "000001.xml").write_text(_voc_xml("x", objects))
    (ann / "000002.xml").write_text(_voc_xml("y", [("dog", (5, 5, 20, 20), 0)], "y.jpg"))
    for stem, text in (extra or {}).items():
        (ann / f"{stem}.xml").write_text(text)
    return ann


def test_convert_counts_the_difficult_objects_of_the_split_only(tmp_path: Path) -> None:
    """VOCdevkit keeps every split's xml in one Annotations/ folder: a conversion counts the difficult objects
    (not carried over) of the files the split's list names, and never reads the others (a broken one included)."""
    from core.data.convert import convert_dataset

    _voc(tmp_path, [("cat", (1, 1, 50, 40), 0), ("dog", (10, 10, 20, 20), "true"), ("dog", (11, 21, 100, 80), 0)],
         extra={"000003": _voc_xml("z", [("cat", (1, 1, 9, 9), 1)], "y.jpg"), "000004": "<annotation><broken"})
    (tmp_path / "train.txt").write_text("000001\n000002\n")
    spec = load_dataset_spec(_yaml(tmp_path, "format: voc\nclasses: [cat, dog]\n"
                                   "train: {images: JPEGImages, annotations: Annotations, list: train.txt}\n"))
    result = convert_dataset(spec, "coco", tmp_path / "out")
    assert result.not_carried == {"train": 1} and result.boxes == {"train": 3}


def test_voc_reader(tmp_path: Path) -> None:
    _voc(tmp_path, [("cat", (1, 1, 50, 40), 0), ("dog", (10, 10, 20, 20), 1), ("dog", (11, 21, 100, 80), 0)])
    (tmp_path / "train.txt").write_text("000001\n")
    spec = load_dataset_spec(_yaml(tmp_path, "format: voc\nclasses: [cat, dog]\n"
                                   "train: {images: JPEGImages, annotations: Annotations, list: train.txt}\n"
                                   "val: {images: JPEGImages, annotations: Annotations}\n"))
    assert spec.category_ids == [1, 2]
    (rec,) = read_split(spec, "train")
    assert rec.image_id == 1 and (rec.width, rec.height) == (100, 80)
    np.testing.assert_allclose(rec.boxes, [[0, 0, 50, 40], [10, 20, 100, 80]])  # difficult one skipped
    assert rec.labels.tolist() == [0, 1]
    assert [r.image_id for r in read_split(spec, "val")] == [1, 2]


def test_voc_unknown_class(tmp_path: Path) -> None:
    ann = _voc(tmp_path, [("cat", (1, 1, 5, 5), 0), ("horse", (1, 1, 5, 5), 0)])
    with pytest.raises(DatasetError, match=r"000001\.xml: object 1: class 'horse'.*cat, dog"):
        read_voc(ann, tmp_path / "JPEGImages", ["cat", "dog"])


def test_voc_malformed_and_bad_box(tmp_path: Path) -> None:
    ann = _voc(tmp_path, [("cat", (1, 1, 5, 5), 0)], {"000003": "<annotation><filename>"})
    with pytest.raises(DatasetError, match=r"000003\.xml: not valid XML"):
        read_voc(ann, tmp_path / "JPEGImages", ["cat", "dog"])
    ann.joinpath("000003.xml").unlink()
    ann.joinpath("000001.xml").write_text(_voc_xml("x", [("cat", (1, 1, 150, 5), 0)]))
    with pytest.raises(DatasetError, match=r"000001\.xml: object 0.*outside"):
        read_voc(ann, tmp_path / "JPEGImages", ["cat", "dog"])
    with pytest.raises(DatasetError, match="Missing.*annotation folder not found"):
        read_voc(tmp_path / "Missing", tmp_path, ["cat"])


# ----------------------------------------------------------------------------- YAML


def test_yaml_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "format: coco\nclases: [a]\ntrain: {images: i, annotations: a.json}\n")
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'clases'.*did you mean 'classes'"):
        load_dataset_spec(path)
    path = _yaml(tmp_path, "format: coco\ntrain: {image: i, annotations: a.json}\n")
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'image'.*split 'train'.*did you mean 'images'"):
        load_dataset_spec(path)


def test_yaml_missing_and_invalid_fields(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'format'"):
        load_dataset_spec(_yaml(tmp_path, "root: .\ntrain: {images: i, annotations: a.json}\n"))
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'classes'"):
        load_dataset_spec(_yaml(tmp_path, "format: voc\ntrain: {images: i, annotations: a}\n"))
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'annotations'.*split 'val'"):
        load_dataset_spec(_yaml(tmp_path, "format: voc\nclasses: [a]\nval: {images: i}\n"))
    with pytest.raises(DatasetError, match=r"ds\.yaml.*'format'.*coco, voc"):
        load_dataset_spec(_yaml(tmp_path, "format: yolo\ntrain: {images: i, annotations: a}\n"))


# ----------------------------------------------------------------------------- synthetic


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_deterministic(tmp_path: Path) -> None:
    a = synthesize_shapes(tmp_path / "a", 4, 2, 128, seed=3)
    b = synthesize_shapes(tmp_path / "b", 4, 2, 128, seed=3)
    ta, tb = _tree(a), _tree(b)
    assert len(ta) == 9 and ta == tb and ".detlab-synthetic" in ta  # 6 pictures, 2 jsons, the marker
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder cleaned up
    c = synthesize_shapes(tmp_path / "c", 4, 2, 128, seed=4)
    assert _tree(c) != ta


def test_synthetic_via_spec_has_classes_and_sizes(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "format: coco\nroot: shapes\n"
                 "train: {images: images/train, annotations: annotations/train.json}\n"
                 "val: {images: images/val, annotations: annotations/val.json}\n"
                 "synthesize: {kind: shapes, train_images: 40, val_images: 3, image_size: 256, seed: 0}\n")
    spec = load_dataset_spec(path)
    assert spec.class_names == ["circle", "square", "triangle", "cross"] and spec.category_ids == [1, 2, 3, 4]
    recs = read_split(spec, "train")
    assert len(recs) == 40 and len(read_split(spec, "val")) == 3
    boxes = np.concatenate([r.boxes for r in recs])
    labels = np.concatenate([r.labels for r in recs])
    assert set(labels.tolist()) == {0, 1, 2, 3}
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (area < 32 ** 2).any() and ((area >= 32 ** 2) & (area < 96 ** 2)).any() and (area >= 96 ** 2).any()
    assert all(1 <= len(r.boxes) <= 6 for r in recs)
    # Tight boxes: the object's hue fills the box centre.
    rec = recs[0]
    img = np.asarray(Image.open(rec.file_name).convert("RGB"), dtype=np.float32)
    x1, y1, x2, y2 = rec.boxes[np.argmax((rec.boxes[:, 2] - rec.boxes[:, 0]))].astype(int)
    centre = img[(y1 + y2) // 2, (x1 + x2) // 2]
    assert centre.max() - centre.min() > 60  # saturated object colour, not grey background


# ----------------------------------------------------------------------------- transforms


RED = (255, 0, 0)


def _red_boxes_image() -> tuple[Image.Image, np.ndarray]:
    img = Image.new("RGB", (320, 200), (0, 0, 255))
    boxes = np.array([[10, 20, 60, 90], [200, 30, 300, 180], [100, 150, 130, 170]], dtype=np.float32)
    arr = np.asarray(img).copy()
    for x1, y1, x2, y2 in boxes.astype(int):
        arr[y1:y2, x1:x2] = RED
    return Image.fromarray(arr), boxes


def test_train_transform_keeps_boxes_on_objects() -> None:
    img, boxes = _red_boxes_image()
    gen = torch.Generator().manual_seed(0)
    tf = build_transform(128, (0, 0, 0), (1, 1, 1), train=True, scale_range=(0.6, 1.8), generator=gen)
    flipped_seen, kept = False, 0
    for _ in range(40):
        out, b, lab, scale = tf(img, boxes, np.arange(3))
        assert out.shape == (3, 128, 128) and out.dtype == torch.float32
        assert b.dtype == np.float32 and len(b) == len(lab) and scale > 0
        assert (b >= 0).all() and (b <= 128).all()
        for x1, y1, x2, y2 in b:
            inner = out[:, int(np.ceil(y1)):int(np.floor(y2)), int(np.ceil(x1)):int(np.floor(x2))]
            red = (inner[0] > 0.5) & (inner[2] < 0.5)
            assert red.float().mean() > 0.85
            kept += 1
        flipped_seen |= bool(len(b)) and (lab == 1).any() and b[lab == 1][0, 0] < 20
    assert kept > 40 and flipped_seen


def test_eval_transform_scale_round_trip_and_padding() -> None:
    img, boxes = _red_boxes_image()
    tf = build_transform(160, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), train=False)
    out, b, lab, scale = tf(img, boxes, np.arange(3))
    assert scale == pytest.approx(160 / 320)
    np.testing.assert_allclose(b / scale, boxes, atol=1e-3)
    assert lab.tolist() == [0, 1, 2]
    assert out.shape == (3, 160, 160) and (out[:, 100:, :] == 0).all()  # 320x200 -> 160x100, padded


# ----------------------------------------------------------------------------- dataset


def test_dataset_and_collate(tmp_path: Path) -> None:
    synthesize_shapes(tmp_path / "s", 3, 0, 96, seed=1)
    spec = load_dataset_spec(_yaml(tmp_path, "format: coco\nroot: s\n"
                                   "train: {images: images/train, annotations: annotations/train.json}\n"))
    recs = read_split(spec, "train")
    ds = DetectionDataset(recs, build_transform(64, (0.5,) * 3, (0.25,) * 3, train=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    t = targets[0]
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
    assert t["labels"].dtype == torch.int64 and len(t["labels"]) == len(t["boxes"]) == len(recs[0].boxes)
    assert t["image_id"] == recs[0].image_id and t["orig_size"] == (96, 96)
    assert t["scale"] == pytest.approx(64 / 96)
    torch.testing.assert_close(t["boxes"] / t["scale"], torch.from_numpy(recs[0].boxes), atol=1e-3, rtol=0)

    Path(recs[1].file_name).write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=Path(recs[1].file_name).name):
        ds[1]
