"""Property-based tests (hypothesis): annotation readers and post-processing on random and
adversarial input either give correct results or a DatasetError naming the file, never a crash."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops import box_iou

from core.data.check import load_checked_records
from core.data.records import DatasetError, ImageRecord
from core.data.formats.coco import read_coco
from core.data.formats.voc import read_voc
from core.data.formats.yolo import read_yolo
from core.data.problems import PROBLEM_KINDS, Problem
from core.data.spec import load_dataset_spec
from core.ops.postprocess import postprocess

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
    Image.new("RGB", (W, H), (90, 90, 90)).save(folder / "other.png")  # the picture of VOC_OTHER
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


# ----------------------------------------------------------------------------- whole files, both reader modes
# Every reader runs strict (records, or a DatasetError naming the file) and collecting (records plus
# Problems naming the file; never an exception but a DatasetError), then the entry points training and
# `python -m utils.dataset check` use: load_dataset_spec and load_checked_records with and without
# skip_bad_records. Whatever records come back must be sane. Inputs are valid files with 0-3
# corruptions each (so the code past the first check runs too), where a corruption sets a field to an
# edge case of its kind or to anything (`wild`), deletes it, or replaces a whole entry.

FUZZ = settings(SETTINGS, max_examples=100)

# junk plus the values that break float maths and json: huge ints (float() overflows), nan, inf
wild = st.one_of(junk, st.sampled_from([10**30, -10**30, 2**63, 10**400, -(10**400), 0, -1, 1.5, "1", "", "nan",
                                        float("nan"), float("inf"), True, False, None, [], {}]))


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, drawn with the given weights (st.one_of would merge repeats)."""
    return st.sampled_from([s for w, s in options for _ in range(w)]).flatmap(lambda s: s)


BAD_NAMES = ["missing.png", "", ".", "/", "../img.png", "img.png/x", "a" * 300, "x\x00y.png", " img.png"]
BAD_SIDES = [0, -1, 1, H, W, 2**31 - 1, 2**31, 10**30, 10**400, 64.0, True]
BAD_BOXES = [[0, 0, 10**400, 1], [1e308, 0, 1e308, 5], [10**308, 0, 10**308, 1], [0, 0, 0, 0], [W, H, 1, 1],
             [-3, -3, 2, 2], [1, 2, 3], [1, 2, 3, 4, 5], "1 2 3 4", [None, 1, 2, 3], [True, 1, 2, 3]]
COCO_BAD = {  # per entry kind: the edge cases of each field
    "images": {"id": st.sampled_from([0, -1, 1, 2, 2**63, 10**400, 1.0, "1", True, None]),
               "file_name": weighted((3, st.sampled_from(BAD_NAMES)),
                                     (1, st.text(st.characters(exclude_categories=("Cs",)), max_size=6))),
               "width": st.sampled_from(BAD_SIDES), "height": st.sampled_from(BAD_SIDES)},
    "categories": {"id": st.sampled_from([1, 2, 3, -1, "1", "2", 1.0, True, None, []]),
                   "name": st.sampled_from(["a", "b", "c", "", " ", None, 1, ["a"]]), "supercategory": wild},
    "annotations": {"id": wild, "image_id": st.sampled_from([0, 2, 99, "1", 1.0, True, None]),
                    "category_id": st.sampled_from([0, 1, 2, 3, "1", 1.0, True, None]),
                    "bbox": st.one_of(st.sampled_from(BAD_BOXES), st.lists(wild, max_size=5),
                                      st.lists(st.floats(-80, 80), min_size=4, max_size=4)),
                    "iscrowd": st.sampled_from([1, True, "1", None, [1], 0.5])},
}
GOOD_IMAGE = {"id": 1, "file_name": "img.png", "width": W, "height": H}
GOOD_CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
GOOD_ANNOTATION = {"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 20, 20]}


@st.composite
def corrupted(draw, good: dict[str, list], bad: dict[str, dict[str, st.SearchStrategy]], max_bad: int = 3) -> dict:
    """``good`` (lists of json objects by kind) with 0..max_bad corruptions."""
    doc = {kind: [dict(e) for e in entries] for kind, entries in good.items()}
    for _ in range(draw(st.integers(0, max_bad))):
        kind = draw(st.sampled_from(sorted(bad)))
        entries = doc[kind]
        how = draw(st.sampled_from(["field", "field", "field", "delete", "not an object", "add", "duplicate"]))
        if how == "add" or not entries:  # a new entry: copy of a good one, one field bad (or none)
            entries.append(dict(draw(st.sampled_from(good[kind] or [{}]))))
            how = "field"
        k = draw(st.integers(0, len(entries) - 1))
        if how == "duplicate":
            entries.append(entries[k] if not isinstance(entries[k], dict) else dict(entries[k]))
        elif how == "not an object":
            entries[k] = draw(wild)
        elif isinstance(entries[k], dict):
            key = draw(st.sampled_from(sorted(bad[kind])))
            if how == "delete":
                entries[k].pop(key, None)
            else:
                entries[k][key] = draw(weighted((3, bad[kind][key]), (1, wild)))
    return doc


@st.composite
def coco_good(draw) -> dict[str, list]:
    """A valid COCO document: 1-3 images of the fixture picture, categories a, b, some boxes."""
    n = draw(st.integers(1, 3))
    images = [{**GOOD_IMAGE, "id": i + 1} for i in range(n)]
    anns = [{"id": k + 1, "image_id": draw(st.integers(1, n)), "category_id": draw(st.sampled_from([1, 2])),
             "bbox": list(draw(valid_box)), **({"iscrowd": 1} if draw(st.integers(0, 5)) == 5 else {})}
            for k in range(draw(st.integers(0, 4)))]
    cats = draw(st.sampled_from([GOOD_CATEGORIES, GOOD_CATEGORIES[::-1], GOOD_CATEGORIES + [{"id": 3, "name": "c"}]]))
    return {"images": images, "categories": cats, "annotations": anns}


def coco_docs(kinds: tuple[str, ...], max_bad: int = 3) -> st.SearchStrategy:
    return coco_good().flatmap(lambda good: corrupted(good, {k: COCO_BAD[k] for k in kinds}, max_bad))


def assert_sane(records: list[ImageRecord], num_classes: int) -> None:
    """Records a reader returned: int ids, positive int sizes, finite boxes of positive size inside the
    image, float32 / int64 arrays, labels in 0..num_classes-1, one label per box."""
    assert isinstance(records, list)
    for rec in records:
        assert isinstance(rec, ImageRecord)
        assert type(rec.image_id) is int and type(rec.width) is int and type(rec.height) is int
        assert rec.width > 0 and rec.height > 0
        assert isinstance(rec.file_name, str) and Path(rec.file_name).is_absolute()
        for b, lab in ((rec.boxes, rec.labels), (rec.ignore_boxes, rec.ignore_labels)):  # ignored: VOC difficult
            assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4
            assert lab.dtype == np.int64 and lab.shape == (len(b),)
            assert np.isfinite(b).all()
            assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
            if len(b):  # compared as Python numbers: exact, and no overflow for any int size
                assert float(b[:, :2].min()) >= 0
                assert float(b[:, 2].max()) <= rec.width and float(b[:, 3].max()) <= rec.height
            assert ((lab >= 0) & (lab < num_classes)).all()


def assert_problems(problems: list, name: str) -> None:
    """Collected problems are Problems of a known kind, each naming a file whose path contains ``name``."""
    for p in problems:
        assert isinstance(p, Problem) and p.kind in PROBLEM_KINDS
        assert name in p.file, p
        assert name in str(p)


def both_modes(read, name: str, num_classes: int) -> tuple[list[ImageRecord] | None, list[Problem]]:
    """``read(problems)`` strict, then collecting; checks what each gives and that they agree: strict
    raises only where collecting finds a problem. Returns (strict records or None, problems)."""
    try:
        strict = read(None)
    except DatasetError as err:
        assert name in str(err), err
        strict = None
    else:
        assert_sane(strict, num_classes)
    problems: list[Problem] = []
    try:
        collected = read(problems)
    except DatasetError as err:  # allowed, if it names the file; records then are none
        assert name in str(err), err
        collected = []
    assert_sane(collected, num_classes)
    assert_problems(problems, name)
    if strict is None:
        assert problems, "strict mode raised but collecting mode found no problem"
    return strict, problems


def coco_file(folder: Path, doc: dict) -> Path:
    ann = folder / "fuzz.json"
    ann.write_text(json.dumps(doc, default=str))
    return ann


def check_entry_points(yaml_text: str, folder: Path, names: tuple[str, ...]) -> None:
    """load_dataset_spec on a YAML, then load_checked_records as training calls it (skip_bad_records
    False and True): records or a DatasetError naming the YAML or the annotation file, nothing else."""
    path = folder / "fuzz.yaml"
    path.write_text(yaml_text)
    try:
        spec = load_dataset_spec(path)
    except DatasetError as err:
        assert any(n in str(err) for n in ("fuzz.yaml", *names)), err
        return
    assert len(spec.class_names) == len(spec.category_ids) == spec.num_classes > 0
    assert all(isinstance(n, str) and n for n in spec.class_names) and len(set(spec.class_names)) == spec.num_classes
    assert all(type(i) is int for i in spec.category_ids) and len(set(spec.category_ids)) == spec.num_classes
    for skip in (False, True):
        try:
            out, notes = load_checked_records(spec, ("train",), skip_bad_records=skip)
        except DatasetError as err:
            assert any(n in str(err) for n in ("fuzz.yaml", *names)), err
            continue
        assert set(out) == {"train"} and all(isinstance(n, str) for n in notes)
        assert_sane(out["train"], spec.num_classes)


def doc_with(images=None, categories=None, annotations=None) -> dict:
    return {"images": [GOOD_IMAGE] if images is None else images,
            "categories": GOOD_CATEGORIES if categories is None else categories,
            "annotations": [GOOD_ANNOTATION] if annotations is None else annotations}


# The crashes these tests first found are kept as fixed examples (each was a traceback, not a DatasetError).
@FUZZ
@given(doc=coco_docs(("images", "annotations")))
@example(doc=doc_with(images=[{**GOOD_IMAGE, "file_name": "a" * 300}]))        # OSError: File name too long
@example(doc=doc_with(images=[{**GOOD_IMAGE, "file_name": "x\x00y.png"}]))     # ValueError: embedded null byte
@example(doc=doc_with(images=[{**GOOD_IMAGE, "width": 10**400}]))              # OverflowError in the box check
@example(doc=doc_with(images=[{**GOOD_IMAGE, "height": 0}], annotations=[]))  # a record of height 0
@example(doc=doc_with(annotations=[{**GOOD_ANNOTATION, "bbox": [0, 0, 10**400, 1]}]))      # OverflowError
@example(doc=doc_with(annotations=[{**GOOD_ANNOTATION, "bbox": [10**308, 0, 10**308, 1]}]))  # OverflowError
def test_coco_images_and_annotations_both_modes(doc, image_dir: Path, tmp_path_factory) -> None:
    ann = coco_file(tmp_path_factory.mktemp("coco"), doc)
    both_modes(lambda problems: read_coco(ann, image_dir, CLASSES, [1, 2], problems), "fuzz.json", 2)


@FUZZ
@given(doc=coco_docs(("categories",)), classes=st.sampled_from([(CLASSES, [1, 2]), (["a"], [1]), (["b", "a"], [2, 1]),
                                                                  (["a", "c"], [1, 3])]))
@example(doc=doc_with(categories=[{"id": "1", "name": "a"}, {"id": 2, "name": "b"}]), classes=(CLASSES, [1, 2]))
@example(doc=doc_with(categories=[{"id": [], "name": "a"}]), classes=(CLASSES, [1, 2]))  # TypeError: unhashable
def test_coco_categories_both_modes(doc, classes, image_dir: Path, tmp_path_factory) -> None:
    ann = coco_file(tmp_path_factory.mktemp("coco"), doc)
    names, ids = classes
    both_modes(lambda problems: read_coco(ann, image_dir, names, ids, problems), "fuzz.json", len(names))


@FUZZ
@given(doc=coco_docs(("images", "categories", "annotations")),
       classes=st.sampled_from(["", "classes: [a, b]\n", "classes: [b]\n"]))
@example(doc=doc_with(categories=[{"id": "1", "name": "a"}, {"id": 2, "name": "b"}]), classes="")  # sorted(): TypeError
@example(doc=doc_with(categories=[{"id": 1, "name": None}]), classes="classes: [a, b]\n")  # join(): TypeError
@example(doc=doc_with(images=[{**GOOD_IMAGE, "id": 2 ** 63}]), classes="")  # OverflowError in the start-up cache
@example(doc=doc_with(categories=[{"id": None, "name": "a"}]), classes="")  # category id None became the spec's
@example(doc=doc_with(categories=[]), classes="")  # a spec of 0 classes
def test_coco_entry_points_training_uses(doc, classes, image_dir: Path, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("coco")
    coco_file(folder, doc)
    check_entry_points(f"format: coco\nroot: {folder}\n{classes}"
                       f"train: {{images: {image_dir}, annotations: fuzz.json}}\n", folder, ("fuzz.json",))


@pytest.mark.parametrize("text", [b"", b"{", b"[]", b"null", b'{"images": {}, "annotations": [], "categories": []}',
                                  b"\xff\xfe{}",
                                  b'{"images": [], "annotations": [], "categories": [{"id": ' + b"1" * 5000 + b"}]}",
                                  b'{"images": [NaN], "annotations": [], "categories": []}', b"[" * 100_000],
                         ids=["empty", "truncated", "list", "null", "images-not-list", "utf16-bom", "5000-digit-int",
                              "nan-image", "deep-nesting"])
def test_coco_unreadable_json_both_modes(text: bytes, image_dir: Path, tmp_path: Path) -> None:
    ann = tmp_path / "fuzz.json"
    ann.write_bytes(text)
    both_modes(lambda problems: read_coco(ann, image_dir, CLASSES, [1, 2], problems), "fuzz.json", 2)
    check_entry_points(f"format: coco\nroot: {tmp_path}\ntrain: {{images: {image_dir}, annotations: fuzz.json}}\n",
                       tmp_path, ("fuzz.json",))


# VOC: a document is {leaf path: text} (see voc_render); a corruption gives one path a junk text and/or
# a form other than plain text: missing, empty (<tag/>), nested (<tag><x>text</x></tag>), twice, or raw
# (unescaped, so the xml may be malformed).
VOC_FORMS = ["plain", "missing", "empty", "nested", "twice", "raw"]
voc_junk = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "-5", "0", "0.4", "64.0", "64.5", " 12 ",
                                      "1_0", "0x10", "", "   ", "1e-400", "1e300", "2147483648", "a" * 300,
                                      "../img.png", "/", "zebra", "a", "b", "1", "<x/>"]),
                     st.text(st.characters(exclude_categories=("Cs",)), max_size=6))


def voc_node(tag: str, value: Any) -> str:
    """``value``: a text, a (form, text) pair, or a dict of child nodes."""
    if isinstance(value, dict):
        form, inner = "plain", "".join(voc_node(t, v) for t, v in value.items())
    else:
        form, text = value if isinstance(value, tuple) else ("plain", value)
        inner = text if form == "raw" else escape(text)
    return {"plain": f"<{tag}>{inner}</{tag}>", "raw": f"<{tag}>{inner}</{tag}>", "missing": "", "empty": f"<{tag}/>",
            "nested": f"<{tag}><x>{inner}</x></{tag}>", "twice": f"<{tag}>{inner}</{tag}>" * 2}[form]


@st.composite
def voc_docs(draw, max_bad: int = 3) -> str:
    """A valid VOC xml (0-3 objects of class a / b, some difficult) with 0..max_bad corruptions."""
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        x, y, w, h = draw(valid_box)
        obj = {"name": draw(st.sampled_from(["a", "b"]))}
        if draw(st.integers(0, 3)) == 3:
            obj["difficult"] = draw(st.sampled_from(["0", "1"]))
        obj["bndbox"] = {"xmin": f"{x + 1:.6g}", "ymin": f"{y + 1:.6g}", "xmax": f"{x + w:.6g}", "ymax": f"{y + h:.6g}"}
        objects.append(obj)
    doc = {"filename": "img.png", "size": {"width": str(W), "height": str(H), "depth": "3"}}
    for _ in range(draw(st.integers(0, max_bad))):
        paths = [("filename",), ("size",), ("size", "width"), ("size", "height")] + [
            p for k, o in enumerate(objects) for p in [(k, "name"), (k, "difficult"), (k, "bndbox")]
            + [(k, "bndbox", c) for c in ("xmin", "ymin", "xmax", "ymax")]]
        path = draw(st.sampled_from(paths))
        node = doc if isinstance(path[0], str) else objects[path[0]]
        path = path if isinstance(path[0], str) else path[1:]
        for step in path[:-1]:
            node = node[step] if isinstance(node.get(step), dict) else {}
        form = draw(st.sampled_from(VOC_FORMS))
        old = node.get(path[-1])
        if isinstance(old, dict) and form in ("plain", "raw"):  # a container: drop it, or text instead of children
            form = draw(st.sampled_from(["missing", "empty", "nested", "plain"]))
        node[path[-1]] = (form, draw(voc_junk) if form != "missing" else "")
    body = "".join(voc_node(t, v) for t, v in doc.items())
    return f"<annotation>{body}{''.join(voc_node('object', o) for o in objects)}</annotation>"


VOC_GOOD = (f"<annotation><filename>img.png</filename><size><width>{W}</width><height>{H}</height></size>"
            f"<object><name>a</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>"
            f"</object>"
            f"</annotation>")
VOC_OTHER = VOC_GOOD.replace("img.png", "other.png")  # a well-formed xml beside the fuzzed one, of another picture


def voc_read(folder: Path, image_dir: Path):
    return lambda problems: read_voc(folder, image_dir, CLASSES, None, problems)


@FUZZ
@given(text=voc_docs())
@example(text=VOC_GOOD.replace(f"<height>{H}<", "<height>nan<"))  # ValueError: cannot convert float NaN
@example(text=VOC_GOOD.replace(f"<width>{W}<", "<width>inf<"))  # OverflowError
@example(text=VOC_GOOD.replace(f"<width>{W}<", "<width>-5<"))  # a record of width -5
@example(text=VOC_GOOD.replace("img.png", "a" * 300))  # OSError: File name too long
@example(text=VOC_GOOD.replace("img.png", "nan"))  # strict error named the folder, not the xml
def test_voc_xml_fields_both_modes(text: str, image_dir: Path, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("voc")
    (folder / "fuzz.xml").write_text(text)
    both_modes(voc_read(folder, image_dir), "fuzz.xml", 2)


@FUZZ
@given(text=voc_docs(1), cut=st.integers(0, 400),
       insert=st.text(max_size=4).map(lambda t: t.encode("utf-8", "replace")),
       prolog=st.sampled_from([b"", b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="utf-8"?>',
                               b'<?xml version="1.0" encoding="foo"?>', b'<?xml version="1.0" encoding="utf-16"?>',
                               b'<!DOCTYPE a [<!ENTITY e "x">]>', b"\xef\xbb\xbf", b"\xff"]))
@example(text=VOC_GOOD, cut=0, insert=b"", prolog=b'<?xml version="1.0" encoding="foo"?>')  # LookupError
def test_voc_malformed_xml_both_modes(text: str, cut: int, insert: bytes, prolog: bytes, image_dir: Path,
                                      tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("voc")
    data = text.encode("utf-8")
    cut = min(cut, len(data))
    (folder / "fuzz.xml").write_bytes(prolog + data[:cut] + insert + data[cut:])
    (folder / "good.xml").write_text(VOC_OTHER)
    both_modes(voc_read(folder, image_dir), "fuzz.xml", 2)


def test_voc_xml_that_is_a_folder_both_modes(image_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "fuzz.xml").mkdir()  # globbed as an annotation, unreadable as a file: IsADirectoryError
    (tmp_path / "good.xml").write_text(VOC_OTHER)
    both_modes(voc_read(tmp_path, image_dir), "fuzz.xml", 2)


@FUZZ
@given(text=voc_docs())
def test_voc_entry_points_training_uses(text: str, image_dir: Path, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("voc")
    (folder / "fuzz.xml").write_text(text)
    check_entry_points(f"format: voc\nclasses: [a, b]\ntrain: {{images: {image_dir}, annotations: {folder}}}\n",
                       folder, ("fuzz.xml",))


yolo_token = st.sampled_from(["0", "1", "2", "-1", "0.5", "nan", "inf", "-inf", "1e400", "1e-400", "1.5", "-0", "1e300",
                              "x", "0x1", "1_0", "", "1.0", "0.0"])
yolo_junk_line = st.one_of(
    st.tuples(st.integers(-1, 3), st.floats(-0.5, 1.5), st.floats(-0.5, 1.5), st.floats(-0.1, 1.2),
              st.floats(-0.1, 1.2)).map(lambda t: " ".join(str(v) for v in t)),
    st.lists(yolo_token, max_size=6).map(" ".join),
    st.text(alphabet="0123456789.- abc\t\r\x00", max_size=20))


@st.composite
def yolo_lines(draw, max_bad: int = 3) -> list[str]:
    """Valid label lines (class 0 / 1, a box inside the image) with 0..max_bad corruptions: a line replaced
    or added, or one value of a line replaced."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        x, y, w, h = draw(valid_box)
        lines.append(f"{draw(st.integers(0, 1))} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}")
    for _ in range(draw(st.integers(0, max_bad))):
        how = draw(st.sampled_from(["value", "value", "line", "add"]))
        if how == "add" or not lines:
            lines.insert(draw(st.integers(0, len(lines))), draw(yolo_junk_line))
            continue
        k = draw(st.integers(0, len(lines) - 1))
        if how == "line":
            lines[k] = draw(yolo_junk_line)
        else:
            tokens = lines[k].split() or [""]
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(yolo_token)
            lines[k] = " ".join(tokens)
    return lines


@FUZZ
@given(lines=yolo_lines(), stray=st.booleans())
def test_yolo_lines_both_modes(lines, stray: bool, image_dir: Path, tmp_path_factory) -> None:
    labels = tmp_path_factory.mktemp("yolo")
    (labels / "img.txt").write_text("\n".join(lines) + "\n")
    if stray:  # a label file without its image: a problem in collecting mode only
        (labels / "img_gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    both_modes(lambda problems: read_yolo(labels, image_dir, CLASSES, problems), "img", 2)


@FUZZ
@given(lines=yolo_lines())
def test_yolo_entry_points_training_uses(lines, image_dir: Path, tmp_path_factory) -> None:
    labels = tmp_path_factory.mktemp("yolo")
    (labels / "img.txt").write_text("\n".join(lines) + "\n")
    check_entry_points(f"format: yolo\nclasses: [a, b]\ntrain: {{images: {image_dir}, labels: {labels}}}\n",
                       labels, ("img.txt",))
