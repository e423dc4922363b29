"""Datasets as users' tools write them: each one either reads as the tool meant it or gives a problem
that names the file and the fix, never a silently different dataset. (Merged COCO files, splits with
different categories, repeated pictures, Windows BOMs, ultralytics polygons and subfolders, VOC
``difficult`` spellings, phone photos annotated in their stored frame.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.check import check_dataset
from core.data.spec import load_dataset_spec, read_split


def _image(path: Path, w: int = 100, h: int = 80, exif: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path, **({"exif": exif} if exif else {}))


def _coco_json(path: Path, images: list[tuple[int, str]], annotations: list[dict],
               categories: tuple[str, ...] = ("car", "bus")) -> None:
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "width": 100, "height": 80} for i, f in images],
        "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(categories)]}))


def _problems(yaml: Path) -> list[str]:
    return [str(p) for p in check_dataset(load_dataset_spec(yaml)).problems]


def test_coco_splits_with_different_categories_and_no_classes_are_a_problem(tmp_path: Path) -> None:
    """The classes come from the smallest json when the YAML lists none: a category only the other
    split has would be left out of training without a word."""
    _image(tmp_path / "img" / "a.png")
    box = {"image_id": 1, "bbox": [10, 10, 20, 20]}
    _coco_json(tmp_path / "train.json", [(1, "a.png")],
               [{**box, "category_id": c} for c in (1, 2, 3)] + [{**box, "category_id": 3}] * 20,
               ("car", "bus", "bike"))
    _coco_json(tmp_path / "val.json", [(1, "a.png")], [{**box, "category_id": 1}])
    splits = "train: {images: img, annotations: train.json}\nval: {images: img, annotations: val.json}\n"
    (tmp_path / "data.yaml").write_text("format: coco\n" + splits)
    (problem,) = _problems(tmp_path / "data.yaml")
    assert "train.json" in problem and "['bike']" in problem and "'classes'" in problem
    (tmp_path / "listed.yaml").write_text("format: coco\nclasses: [car, bus]\n" + splits)  # a chosen subset
    assert _problems(tmp_path / "listed.yaml") == []
    (rec,) = read_split(load_dataset_spec(tmp_path / "listed.yaml"), "train")
    assert rec.labels.tolist() == [0, 1]


def test_a_picture_named_by_two_entries_with_other_objects_is_a_problem(tmp_path: Path) -> None:
    """Its objects would be split over two records, each teaching that the other's are background. A
    repeat with the same objects (listed twice to sample it more often) is no problem."""
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    box = {"category_id": 1, "bbox": [10, 10, 20, 20]}
    other = {"category_id": 2, "bbox": [50, 10, 20, 20]}
    _coco_json(tmp_path / "ann.json", [(1, "a.png"), (2, "b.png"), (3, "a.png"), (4, "b.png")],
               [{**box, "image_id": i} for i in (1, 2, 3, 4)] + [{**other, "image_id": 1}, {**other, "image_id": 1}])
    (tmp_path / "coco.yaml").write_text("format: coco\ntrain: {images: img, annotations: ann.json}\n")
    (problem,) = _problems(tmp_path / "coco.yaml")
    assert "ann.json: image id 3" in problem and "also image id 1, with other annotations" in problem
    data = json.loads((tmp_path / "ann.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 3]
    data["annotations"] += [{**a, "id": 100 + k, "image_id": 3} for k, a in enumerate(data["annotations"])
                            if a["image_id"] == 1][::-1]  # the same objects, in another order
    (tmp_path / "ann.json").write_text(json.dumps(data))
    assert _problems(tmp_path / "coco.yaml") == []
    # VOC: two xml files naming one picture, and an id listed twice
    voc = tmp_path / "voc"
    xml = ("<annotation><filename>{f}</filename><size><width>100</width><height>80</height></size><object>"
           "<name>car</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
           "</object></annotation>")
    (voc / "Annotations").mkdir(parents=True)
    for stem, f in (("1", "a.png"), ("2", "b.png"), ("3", "a.png"), ("4", "b.png")):
        (voc / "Annotations" / f"{stem}.xml").write_text(xml.format(f=f))
    (voc / "Annotations" / "3.xml").write_text(xml.format(f="a.png").replace("<xmax>30", "<xmax>40"))
    (voc / "train.txt").write_text("1\n2\n1\n")
    (voc / "data.yaml").write_text(f"format: voc\nclasses: [car]\ntrain: {{images: {tmp_path / 'img'}, "
                                   "annotations: Annotations, list: train.txt}\n"
                                   f"val: {{images: {tmp_path / 'img'}, annotations: Annotations}}\n")
    found = _problems(voc / "data.yaml")
    assert len(found) == 2, found
    assert "train.txt: line 3" in found[0] and "listed again (first on line 1)" in found[0]
    assert "3.xml" in found[1] and "also the picture of" in found[1] and "1.xml, with other objects" in found[1]


def test_iscrowd_and_difficult_take_only_their_documented_values(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png")
    _coco_json(tmp_path / "ann.json", [(1, "a.png")],
               [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": "1"}])
    (tmp_path / "coco.yaml").write_text("format: coco\ntrain: {images: img, annotations: ann.json}\n")
    (problem,) = _problems(tmp_path / "coco.yaml")
    assert "'iscrowd' must be 0 or 1, got '1'" in problem
    ann = tmp_path / "Annotations"
    ann.mkdir()
    objects = "".join(f"<object><name>car</name><difficult>{d}</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
                      f"<xmax>{20 + k}</xmax><ymax>30</ymax></bndbox></object>"
                      for k, d in enumerate(("false", "True", "0", "1", "maybe")))
    (ann / "1.xml").write_text(f"<annotation><filename>a.png</filename><size><width>100</width>"
                               f"<height>80</height></size>{objects}</annotation>")
    (tmp_path / "voc.yaml").write_text("format: voc\nclasses: [car]\ntrain: {images: img, annotations: Annotations}\n")
    report = check_dataset(load_dataset_spec(tmp_path / "voc.yaml"))
    (problem,) = [str(p) for p in report.problems]
    assert "object 4" in problem and "<difficult> is 'maybe'; use 0 or 1" in problem
    (rec,) = report.splits["train"].records
    assert rec.boxes[:, 2].tolist() == [20, 22] and rec.ignore_boxes[:, 2].tolist() == [21, 23]


def test_windows_bom_ultralytics_polygons_and_subfolders_read_as_ultralytics_reads_them(tmp_path: Path) -> None:
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        _image(tmp_path / "images" / rel)
    labels = tmp_path / "labels"
    (labels / "sub" / "deeper").mkdir(parents=True)
    (labels / "a.txt").write_text("\ufeff0 0.5 0.5 0.2 0.25\n", encoding="utf-8")  # Notepad's BOM
    (labels / "sub" / "b.txt").write_text("0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")   # a polygon (segment label)
    (labels / "sub" / "deeper" / "c.txt").write_text("0 0.25 0.25 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("format: yolo\nclasses: [car]\ntrain: {images: images, labels: labels}\n")
    spec = load_dataset_spec(tmp_path / "data.yaml")
    assert _problems(tmp_path / "data.yaml") == []
    records = read_split(spec, "train")
    assert [Path(r.file_name).relative_to(tmp_path / "images").as_posix() for r in records] == \
        ["a.png", "sub/b.png", "sub/deeper/c.png"]
    np.testing.assert_allclose(records[0].boxes, [[40, 30, 60, 50]], atol=1e-4)
    np.testing.assert_allclose(records[1].boxes, [[10, 16, 30, 48]], atol=1e-4)  # the polygon's bounding box
    np.testing.assert_allclose(records[2].boxes, [[20, 16, 30, 24]], atol=1e-4)
    (labels / "sub" / "b.txt").write_text("0 0.1 0.2 0.3 0.2 0.3\n")  # 2.5 points: neither form
    (problem,) = _problems(tmp_path / "data.yaml")
    assert "b.txt: line 1" in problem and "polygon points" in problem
    # a VOC id list saved with a BOM
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "000001.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>100</width><height>80</height></size></annotation>")
    (tmp_path / "train.txt").write_text("\ufeff000001\n", encoding="utf-8")
    (tmp_path / "voc.yaml").write_text("format: voc\nclasses: [car]\n"
                                       "train: {images: images, annotations: Annotations, list: train.txt}\n")
    assert _problems(tmp_path / "voc.yaml") == []


def test_a_phone_photo_annotated_in_its_stored_frame_is_told_why(tmp_path: Path) -> None:
    """Width and height swapped against an EXIF-turned picture: the fix is not to edit the numbers
    (the boxes would stay in the stored frame), so the message says what happened."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(tmp_path / "img" / "phone.jpg", 100, 80, exif.tobytes())  # stored 100x80, shown 80x100
    _image(tmp_path / "img" / "plain.jpg", 100, 80)
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "phone.jpg", "width": 100, "height": 80},
                   {"id": 2, "file_name": "plain.jpg", "width": 80, "height": 100}],
        "annotations": [], "categories": [{"id": 1, "name": "car"}]}))
    (tmp_path / "coco.yaml").write_text("format: coco\ntrain: {images: img, annotations: ann.json}\n")
    phone, plain = _problems(tmp_path / "coco.yaml")
    assert "is 80x100 but the annotation says 100x80" in phone and "EXIF orientation" in phone
    assert "exiftool -Orientation=" in phone and "fix its width/height" not in phone
    assert "is 100x80 but the annotation says 80x100; fix its width/height" in plain
