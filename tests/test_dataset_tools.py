"""Dataset check (every planted problem, with file and id / line), training's refusal, subset,
split, format conversion round trip, and --results evaluation against pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.config.loading import load_config
from core.data.check import check_dataset
from core.data.convert import kfold_coco, split_coco, subset_coco
from core.data.records import DatasetError
from core.data.problems import Problem
from core.data.spec import load_dataset_spec, read_split
from core.data.synthetic import synthesize_shapes
from core.evaluation.coco_eval import evaluate_results_file
from utils.dataset import main as dataset_main

ROOT = Path(__file__).resolve().parent.parent


def _image(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = dataset_main(argv)
    return code, buf.getvalue()


# ----------------------------------------------------------------------------- check: COCO


@pytest.fixture()
def broken_coco(tmp_path: Path) -> Path:
    """Train: 8 images, 4 of them with one planted problem kind each (5 problems); val: clean."""
    img = tmp_path / "img"
    for name in ("a", "b", "e", "f", "g", "h", "v"):
        _image(img / f"{name}.png", 100, 80)
    (img / "c.png").write_bytes(b"this is not a png")  # unreadable; d.png is missing
    images = [{"id": k + 1, "file_name": f"{n}.png", "width": 100, "height": 80} for k, n in enumerate("abcdefgh")]
    good = {"category_id": 1, "bbox": [10, 10, 40, 30], "iscrowd": 0}
    annotations = [{"id": 1, "image_id": 1, **good},
                   {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 10, 30, 10]},   # outside
                   {"id": 3, "image_id": 2, "category_id": 2, "bbox": [10, 10, 0, 5]},     # zero width
                   {"id": 4, "image_id": 2, "category_id": 99, "bbox": [5, 5, 10, 10]},    # unknown class
                   {"id": 5, "image_id": 3, **good}, {"id": 6, "image_id": 4, **good}]
    annotations += [{"id": 10 + k, "image_id": k, "category_id": 2, "bbox": [5, 5, 20, 40], "iscrowd": 0}
                    for k in range(5, 9)]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (tmp_path / "train.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "v.png", "width": 100, "height": 80}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 80]}], "categories": cats}))
    path = tmp_path / "data.yaml"
    path.write_text("format: coco\ntrain: {images: img, annotations: train.json}\n"
                    "val: {images: img, annotations: val.json}\n")
    return path


def test_check_reports_every_planted_problem(broken_coco: Path) -> None:
    code, out = run_cli(["check", str(broken_coco)])
    assert code == 1
    ann = broken_coco.parent / "train.json"
    img = broken_coco.parent / "img"
    expected = [
        f"[train] box outside image: {ann}: annotation id 2: box [90.0, 10.0, 120.0, 20.0] (xyxy) lies outside",
        f"[train] zero or negative size: {ann}: annotation id 3: box [10.0, 10.0, 10.0, 15.0] (xyxy) has zero",
        f"[train] unknown class: {ann}: annotation id 4: category_id 99 is not in 'categories'",
        f"[train] unreadable image: {ann}: image id 3: cannot read image '{img / 'c.png'}'",
        f"[train] missing image: {ann}: image id 4: image file '{img / 'd.png'}' not found",
    ]
    problem_lines = [line.strip() for line in out.splitlines() if line.startswith("  [")]
    assert len(problem_lines) == 5
    for exp in expected:
        assert sum(line.startswith(exp) for line in problem_lines) == 1, exp
    assert "problems: 5" in out
    # counts per class and the COCO size histogram (boxes w*h: 1200 -> medium, 800 -> small, 8000 -> large)
    assert re.search(r"\[train\] 8 images, 7 boxes, 5 problems", out)
    assert re.search(r"  cat\s+3\s+3\s+0\s+3\s+0", out) and re.search(r"  dog\s+4\s+4\s+4\s+0\s+0", out)
    assert re.search(r"\[val\] 1 images, 1 boxes, 0 problems", out)
    assert re.search(r"small  \(< 32\^2\)\s+#+\s+4", out)

    clean = broken_coco.parent / "clean.yaml"
    clean.write_text("format: coco\nval: {images: img, annotations: val.json}\n")
    code, out = run_cli(["check", str(clean)])
    assert code == 0 and "no problems found" in out


def _tiny_overrides(data: Path, work: Path, *extra: str) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=64", f"General.work_dir={work}", "General.name=run",
            "General.batch_image=4", "General.loader_worker=0", "schedule.end_epoch=1", *extra]


def test_training_refuses_broken_dataset_with_the_report(broken_coco: Path, tmp_path: Path, capsys) -> None:
    from core.engine.trainer import Trainer

    _, out = run_cli(["check", str(broken_coco)])
    problem_lines = [line.strip() for line in out.splitlines() if line.startswith("  [")]
    with pytest.raises(DatasetError) as err:
        Trainer(load_config(ROOT / "config/demo.py", _tiny_overrides(broken_coco, tmp_path)))
    message = str(err.value)
    assert "dataset.skip_bad_records" in message
    for line in problem_lines:
        assert line in message
    capsys.readouterr()
    trainer = Trainer(load_config(ROOT / "config/demo.py",
                                  _tiny_overrides(broken_coco, tmp_path, "dataset.skip_bad_records=True")))
    assert "skipped 4 of 8 train images" in capsys.readouterr().err
    assert sorted(Path(r.file_name).name for r in trainer.train_loader.dataset.records) == \
        ["e.png", "f.png", "g.png", "h.png"]
    assert len(trainer.val_records) == 1


# ----------------------------------------------------------------------------- check: VOC and YOLO


def _voc_object(name: str, box: tuple) -> str:
    return (f"  <object>\n    <name>{name}</name>\n    <difficult>0</difficult>\n    <bndbox>\n"
            f"      <xmin>{box[0]}</xmin>\n      <ymin>{box[1]}</ymin>\n      <xmax>{box[2]}</xmax>\n"
            f"      <ymax>{box[3]}</ymax>\n    </bndbox>\n  </object>\n")


def test_voc_collecting_mode_names_xml_object_and_line(tmp_path: Path) -> None:
    ann = tmp_path / "Annotations"
    ann.mkdir()
    _image(tmp_path / "JPEGImages" / "x.png", 100, 80)
    head = "<annotation>\n  <filename>{}</filename>\n  <size><width>100</width><height>80</height></size>\n"
    (ann / "x.xml").write_text(head.format("x.png") + _voc_object("cat", (1, 1, 50, 40))
                               + _voc_object("horse", (1, 1, 5, 5)) + _voc_object("cat", (30, 30, 29, 60))
                               + "</annotation>\n")
    (ann / "y.xml").write_text(head.format("y.png") + _voc_object("cat", (1, 1, 150, 40)) + "</annotation>\n")
    spec = load_dataset_spec(_write(tmp_path / "voc.yaml", "format: voc\nclasses: [cat]\n"
                                    "train: {images: JPEGImages, annotations: Annotations}\n"))
    problems: list[Problem] = []
    records = read_split(spec, "train", problems)
    kinds = [(p.kind, Path(p.file).name, p.where, p.line) for p in problems]
    assert ("unknown class", "x.xml", "object 1", 14) in kinds
    assert ("zero or negative size", "x.xml", "object 2", 24) in kinds  # VOC xmin 30..xmax 29: no pixel
    assert ("box outside image", "y.xml", "object 0", 4) in kinds
    assert ("missing image", "y.xml", "", None) in kinds and len(problems) == 4
    assert "x.xml: object 1: class 'horse' is not in classes (cat)" in str(problems[0])
    assert str(problems[0]).endswith("[line 14]")
    assert len(records) == 2 and len(records[0].boxes) == 1
    with pytest.raises(DatasetError, match=r"x\.xml: object 1: class 'horse'"):
        read_split(spec, "train")  # strict mode stops at the first


def test_yolo_reader_and_collecting_mode(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "p.png", 200, 100)
    _image(tmp_path / "images" / "q.jpg", 50, 60)
    (tmp_path / "images" / "broken.png").write_bytes(b"nope")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "p.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.25 0.1 0.5 0.2\n")
    spec = load_dataset_spec(_write(tmp_path / "y.yaml", "format: yolo\nclasses: [cat, dog]\n"
                                    "train: {images: images, labels: labels}\n"))
    assert spec.category_ids == [1, 2]
    problems: list[Problem] = []
    recs = read_split(spec, "train", problems)
    assert [Path(r.file_name).name for r in recs] == ["p.png", "q.jpg"] and [r.image_id for r in recs] == [2, 3]
    np.testing.assert_allclose(recs[0].boxes, [[80, 30, 120, 70], [0, 0, 100, 20]], atol=1e-4)
    assert recs[0].labels.tolist() == [0, 1] and len(recs[1].boxes) == 0  # q has no txt: background
    assert [p.kind for p in problems] == ["unreadable image"]

    (labels / "q.txt").write_text("2 0.5 0.5 0.1 0.1\n\n0 1.3 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n0 0.5 0.5\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    problems = []
    read_split(spec, "train", problems)
    found = {(p.kind, Path(p.file).name, p.line) for p in problems}
    assert found == {("unreadable image", "broken.png", None), ("missing image", "orphan.txt", None),
                     ("unknown class", "q.txt", 1), ("box outside image", "q.txt", 3),
                     ("zero or negative size", "q.txt", 4), ("malformed annotation", "q.txt", 5)}
    assert any(str(p).startswith(f"{labels / 'q.txt'}: line 3: box") for p in problems)
    with pytest.raises(DatasetError, match="labels"):
        load_dataset_spec(_write(tmp_path / "z.yaml", "format: yolo\nclasses: [a]\ntrain: {images: images}\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- subset / split


def _vehicles() -> dict:
    names = ["person", "motorcycle", "car", "bus", "truck"]
    cats = [{"id": 10 * (k + 1), "name": n, "supercategory": "x"} for k, n in enumerate(names)]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(1, 21)]
    anns, aid = [], 1
    for i in range(1, 21):
        for c in ([10] if i % 4 == 0 else [10, 20 + 10 * (i % 4), 50 if i % 3 == 0 else 30]):
            anns.append({"id": aid, "image_id": i, "category_id": c, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0})
            aid += 1
    return {"info": {"description": "t"}, "images": images, "annotations": anns, "categories": cats}


def test_subset_remaps_ids_and_drops_empty_images(tmp_path: Path) -> None:
    src = _write(tmp_path / "src.json", json.dumps(_vehicles()))
    out = tmp_path / "out.json"
    code, text = run_cli(["subset", str(src), str(out), "--classes", "bus,car"])
    assert code == 0 and "1=bus, 2=car" in text
    data = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "bus"), (2, "car")]
    assert {a["category_id"] for a in data["annotations"]} == {1, 2}
    src_data = _vehicles()
    car_bus = {a["image_id"] for a in src_data["annotations"] if a["category_id"] in (30, 40)}
    assert {im["id"] for im in data["images"]} == car_bus and len(car_bus) < 20
    assert len(data["annotations"]) == sum(a["category_id"] in (30, 40) for a in src_data["annotations"])
    assert data["info"] == {"description": "t"}
    kept = subset_coco(src_data, ["bus", "car"], keep_empty=True)
    assert len(kept["images"]) == 20
    code, _ = run_cli(["subset", str(src), str(out), "--classes", "bus,plane"])
    assert code == 2


def test_split_and_folds_are_deterministic_partitions(tmp_path: Path) -> None:
    data = _vehicles()
    train, val = split_coco(data, 0.25, seed=1)
    ids_t, ids_v = {im["id"] for im in train["images"]}, {im["id"] for im in val["images"]}
    assert len(ids_v) == 5 and ids_t | ids_v == set(range(1, 21)) and not ids_t & ids_v
    assert {a["image_id"] for a in val["annotations"]} <= ids_v
    assert len(train["annotations"]) + len(val["annotations"]) == len(data["annotations"])
    assert split_coco(data, 0.25, seed=1) == (train, val) and split_coco(data, 0.25, seed=2)[1] != val
    folds = kfold_coco(data, 3, seed=0)
    vals = [{im["id"] for im in v["images"]} for _, v in folds]
    assert sorted(len(v) for v in vals) == [6, 7, 7] and set().union(*vals) == set(range(1, 21))
    src = _write(tmp_path / "src.json", json.dumps(data))
    assert run_cli(["split", str(src), str(tmp_path / "s"), "--val-fraction", "0.25", "--seed", "1"])[0] == 0
    assert json.loads((tmp_path / "s" / "val.json").read_text()) == val
    assert run_cli(["split", str(src), str(tmp_path / "k"), "--folds", "3"])[0] == 0
    assert json.loads((tmp_path / "k" / "fold2_val.json").read_text()) == folds[2][1]


# ----------------------------------------------------------------------------- conversion round trip


def test_coco_voc_yolo_coco_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    sizes = {"train": [(150, 97), (64, 200), (333, 251)], "val": [(120, 45), (77, 77)]}
    rng = np.random.default_rng(4)
    names = ["motorcycle", "car", "bus"]
    cats = [{"id": cid, "name": n} for cid, n in zip((3, 7, 11), names)]
    for split, dims in sizes.items():
        images, anns = [], []
        for k, (w, h) in enumerate(dims):
            iid = 100 * (split == "val") + k + 1
            _image(src / split / f"{split}_{k}.png", w, h, seed=iid)
            images.append({"id": iid, "file_name": f"{split}_{k}.png", "width": w, "height": h})
            for j in range(0 if (split, k) == ("val", 1) else 4):  # one picture without objects
                x1, y1 = rng.uniform(0, w - 6), rng.uniform(0, h - 6)
                x2, y2 = rng.uniform(x1 + 2, w), rng.uniform(y1 + 2, h)
                if j == 0:
                    x1, y1, x2, y2 = 0.0, 0.0, float(w), y2   # touching the image borders
                anns.append({"id": 1000 * iid + j, "image_id": iid, "category_id": int(rng.choice([3, 7, 11])),
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
        (src / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    yaml = _write(src / "data.yaml", "format: coco\ntrain: {images: train, annotations: train.json}\n"
                                     "val: {images: val, annotations: val.json}\n")
    spec0 = load_dataset_spec(yaml)
    current = yaml
    for fmt in ("voc", "yolo", "coco"):
        code, out = run_cli(["convert", "--to", fmt, str(current), str(tmp_path / fmt)])
        assert code == 0, out
        current = tmp_path / fmt / "data.yaml"
        spec = load_dataset_spec(current)
        assert spec.format == fmt and spec.class_names == names
        assert check_dataset(spec).ok
    for split in ("train", "val"):
        before = {Path(r.file_name).name: r for r in read_split(spec0, split)}
        after = {Path(r.file_name).name: r for r in read_split(spec, split)}
        assert before.keys() == after.keys()
        for name, r0 in before.items():
            r1 = after[name]
            assert (r1.width, r1.height) == (r0.width, r0.height)
            order0, order1 = np.lexsort(r0.boxes.T[::-1]), np.lexsort(r1.boxes.T[::-1])
            np.testing.assert_allclose(r1.boxes[order1], r0.boxes[order0], atol=1e-3, rtol=0)
            assert [names[c] for c in r1.labels[order1]] == [spec0.class_names[c] for c in r0.labels[order0]]
    xml = (tmp_path / "voc" / "annotations" / "train" / "train_0.xml").read_text()
    assert "<xmin>1</xmin>" in xml  # x1 = 0 is VOC's 1-based pixel 1


# ----------------------------------------------------------------------------- evaluation


def test_results_evaluation_equals_pycocotools(tmp_path: Path) -> None:
    synthesize_shapes(tmp_path / "shapes", 2, 16, 128, seed=7)
    gt_json = tmp_path / "shapes" / "annotations" / "val.json"
    yaml = _write(tmp_path / "data.yaml", "format: coco\nroot: shapes\n"
                                         "val: {images: images/val, annotations: annotations/val.json}\n")
    gt = json.loads(gt_json.read_text())
    rng = np.random.default_rng(0)
    results = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(2):  # a near hit and a rougher one, sometimes of the wrong class
            jitter = rng.normal(0, 0.08 * max(w, h), 4)
            results.append({"image_id": a["image_id"], "score": round(float(rng.uniform(0.05, 1)), 4),
                            "category_id": a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 5)),
                            "bbox": [round(float(v), 2) for v in (x + jitter[0], y + jitter[1],
                                                                  max(w + jitter[2], 1), max(h + jitter[3], 1))]})
    for im in gt["images"][:6]:  # false positives
        results.append({"image_id": im["id"], "category_id": 2, "score": 0.5, "bbox": [5.0, 5.0, 30.0, 20.0]})
    res_json = _write(tmp_path / "results.json", json.dumps(results))

    with contextlib.redirect_stdout(io.StringIO()) as noise:
        coco_gt = COCO(str(gt_json))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(res_json)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_eval.summarize()
    assert noise is not None
    direct = [line for line in buf.getvalue().splitlines() if line.startswith(" Average")]
    assert len(direct) == 12 and 0 < coco_eval.stats[0] < 1 and (coco_eval.stats > 0).sum() >= 9

    ours = evaluate_results_file(gt_json, res_json)
    assert list(ours.stats.values()) == coco_eval.stats.tolist()  # all 12 numbers, exactly

    cmd = [sys.executable, "detection_test.py", "--config", "config/demo.py", "--set", f"dataset.data={yaml}",
           "--set", f"General.work_dir={tmp_path / 'runs'}", "--results", str(res_json)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith(" Average")]
    assert printed == direct
