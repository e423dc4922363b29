"""Data commands never overwrite or delete what the user has.

* ``synthesize:`` writes only into a folder it created (marked ``.detlab-synthetic``) and refuses a
  folder holding anything it did not write;
* ``utils.dataset convert / subset / split`` and ``utils.param_surgery`` refuse an output that is
  (or resolves to, or would clobber) an input, and replace an existing output only with ``--overwrite``;
* ``utils.dataset check`` warns about annotation paths that leave the dataset root.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.records import DatasetError
from core.data.spec import load_dataset_spec, read_split
from core.data.synthetic import synthesize_shapes
from utils import param_surgery
from utils.dataset import main as dataset_main

from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = ".detlab-synthetic"  # core.data.synthetic.MARKER


def _image(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file -> sha256 of its bytes, symlink -> 'link:' + target."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = dataset_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _user_coco(folder: Path) -> Path:
    """A user's own COCO data: two pictures and train.json; val.json is (still) missing."""
    _image(folder / "images" / "train" / "mine.jpg", seed=1)
    _image(folder / "images" / "val" / "theirs.jpg", seed=2)
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "mine.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 1, "name": "circle"}]}))
    return folder


# ----------------------------------------------------------------------------- 1. synthesize


def test_synthesize_refuses_a_folder_it_did_not_create(tmp_path: Path, capsys) -> None:
    """A copied demo YAML (its ``synthesize:`` line kept) pointed at real data stops with one line
    naming the YAML, the field and the fix, and leaves every file as it was."""
    user = _user_coco(tmp_path / "mydata")
    before = _tree(user)
    demo = (ROOT / "data" / "demo.yaml").read_text().replace("root: demo", f"root: {user}")
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(demo)
    with pytest.raises(DatasetError) as info:
        load_dataset_spec(yaml_path)
    message = str(info.value)
    assert "\n" not in message and str(yaml_path) in message and "'synthesize'" in message
    assert "remove the 'synthesize:' line" in message and "empty or new folder" in message
    assert _tree(user) == before
    code, _, err = _cli(["check", str(yaml_path)], capsys)  # the check command the same
    assert code == 2 and "'synthesize'" in _one_error_line(err)
    assert _tree(user) == before
    with pytest.raises(DatasetError, match="not a folder DetLab synthesized"):
        synthesize_shapes(user, 2, 1, 64, seed=0)  # the writer itself refuses too
    assert _tree(user) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_synthesize_regenerates_only_its_own_marked_folder(tmp_path: Path) -> None:
    yaml_path = synthetic_shapes_yaml(tmp_path, 3, 2, 64, seed=0)
    root = tmp_path / "tiny"
    assert len(read_split(load_dataset_spec(yaml_path), "train")) == 3
    assert (root / MARKER).is_file()
    first = _tree(root)
    (root / "annotations" / "val.json").unlink()  # e.g. an interrupted first run: regenerated
    assert len(read_split(load_dataset_spec(yaml_path), "val")) == 2
    assert _tree(root) == first
    # The demo's own YAML regenerates into its marked folder the same way (data/demo.yaml's fields).
    demo = tmp_path / "demo_copy"
    demo.mkdir()
    small = (ROOT / "data" / "demo.yaml").read_text().replace("train_images: 480, val_images: 96",
                                                               "train_images: 2, val_images: 1")
    (demo / "demo.yaml").write_text(small.replace("image_size: 256", "image_size: 64"))
    assert load_dataset_spec(demo / "demo.yaml").class_names == ["circle", "square", "triangle", "cross"]
    (demo / "demo" / "annotations" / "train.json").unlink()
    assert len(read_split(load_dataset_spec(demo / "demo.yaml"), "train")) == 2

    # Anything added to (or changed in) the marked folder stops regeneration; nothing is deleted.
    _image(root / "images" / "train" / "added_by_user.jpg", seed=5)
    (root / "annotations" / "val.json").unlink()
    before = _tree(root)
    with pytest.raises(DatasetError, match=r"added_by_user\.jpg"):
        load_dataset_spec(yaml_path)
    assert _tree(root) == before
    (root / "images" / "train" / "added_by_user.jpg").unlink()
    (root / "images" / "val" / "000000.jpg").write_bytes(b"edited by the user")
    before = _tree(root)
    with pytest.raises(DatasetError, match=r"000000\.jpg"):
        load_dataset_spec(yaml_path)
    assert _tree(root) == before


# ----------------------------------------------------------------------------- 2. outputs vs inputs


def _plain_coco(tmp_path: Path) -> Path:
    """Synthesized shapes described by a YAML without ``synthesize:`` (so: the user's own data)."""
    synthesize_shapes(tmp_path / "ds", 3, 2, 64, seed=1)
    (tmp_path / "ds" / MARKER).unlink(missing_ok=True)
    path = tmp_path / "ds" / "data.yaml"
    path.write_text("format: coco\nroot: .\ntrain: {images: images/train, annotations: annotations/train.json}\n"
                    "val: {images: images/val, annotations: annotations/val.json}\n")
    return path


@pytest.mark.parametrize("to", ["coco", "voc", "yolo"])
def test_convert_refuses_to_write_over_its_source(tmp_path: Path, capsys, to: str) -> None:
    yaml_path = _plain_coco(tmp_path)
    root = yaml_path.parent
    before = _tree(root)
    code, _, err = _cli(["convert", "--to", to, str(yaml_path), str(root)], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(root) in line and "OUT_DIR" in line
    assert _tree(root) == before  # no image unlinked, no annotation rewritten
    code, _, err = _cli(["convert", "--to", to, str(yaml_path), str(root), "--overwrite"], capsys)
    assert code == 2 and _tree(root) == before  # --overwrite never applies to inputs
    # an output folder that is a symlink to the source resolves to it
    (tmp_path / "alias").symlink_to(root)
    code, _, err = _cli(["convert", "--to", to, str(yaml_path), str(tmp_path / "alias")], capsys)
    assert code == 2 and _tree(root) == before


def test_convert_replaces_an_earlier_output_only_with_overwrite(tmp_path: Path, capsys) -> None:
    yaml_path = _plain_coco(tmp_path)
    out = tmp_path / "as_voc"
    assert _cli(["convert", "--to", "voc", str(yaml_path), str(out)], capsys)[0] == 0
    written = _tree(out)
    code, _, err = _cli(["convert", "--to", "voc", str(yaml_path), str(out)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "--overwrite" in line and str(out) in line and _tree(out) == written
    assert _cli(["convert", "--to", "voc", str(yaml_path), str(out), "--overwrite"], capsys)[0] == 0
    assert _tree(out) == written


def test_subset_and_split_refuse_their_input_and_existing_outputs(tmp_path: Path, capsys) -> None:
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 7)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [1, 1, 3, 3]}
                            for i in range(1, 7)],
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}]}
    src = tmp_path / "train.json"
    src.write_text(json.dumps(data))
    original = src.read_bytes()
    code, _, err = _cli(["subset", str(src), str(src), "--classes", "car"], capsys)
    assert code == 2 and str(src) in _one_error_line(err) and src.read_bytes() == original
    (tmp_path / "link.json").symlink_to(src)
    code, _, err = _cli(["subset", str(src), str(tmp_path / "link.json"), "--classes", "car"], capsys)
    assert code == 2 and src.read_bytes() == original
    # split SRC into SRC's own folder: train.json is SRC
    code, _, err = _cli(["split", str(src), str(tmp_path), "--val-fraction", "0.5"], capsys)
    assert code == 2 and str(src) in _one_error_line(err) and src.read_bytes() == original
    assert not (tmp_path / "val.json").exists()

    out = tmp_path / "cars.json"
    out.write_text("{}")
    code, _, err = _cli(["subset", str(src), str(out), "--classes", "car"], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err) and out.read_text() == "{}"
    assert _cli(["subset", str(src), str(out), "--classes", "car", "--overwrite"], capsys)[0] == 0
    assert len(json.loads(out.read_text())["categories"]) == 1
    parts = tmp_path / "parts"
    assert _cli(["split", str(src), str(parts), "--folds", "2"], capsys)[0] == 0
    folds = _tree(parts)
    code, _, err = _cli(["split", str(src), str(parts), "--folds", "2"], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err) and _tree(parts) == folds
    assert _cli(["split", str(src), str(parts), "--folds", "2", "--overwrite"], capsys)[0] == 0

    # a hand-edited entry without the field the tools join on: one line naming the file, the entry and the field
    for key, index, field in (("images", 2, "id"), ("annotations", 4, "category_id")):
        edited = json.loads(original)
        del edited[key][index][field]
        bad = tmp_path / f"no_{field}.json"
        bad.write_text(json.dumps(edited))
        for argv in (["subset", str(bad), str(tmp_path / "o.json"), "--classes", "car"],
                     ["split", str(bad), str(tmp_path / "o"), "--val-fraction", "0.5"]):
            code, _, err = _cli(argv, capsys)
            assert code == 2 and f"{bad}: {key}[{index}]: missing field '{field}'" in _one_error_line(err)


def test_param_surgery_refuses_its_input_and_existing_outputs(tmp_path: Path, capsys) -> None:
    source = tmp_path / "w.pt"
    torch.save({"backbone.body.conv.weight": torch.ones(2, 3, 1, 1)}, source)
    original = source.read_bytes()
    for out in (source, f"{tmp_path}/./w.pt"):
        assert param_surgery.main([str(source), str(out)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "w.pt" in line and "OUT" in line
        assert source.read_bytes() == original
    (tmp_path / "alias.pt").symlink_to(source)
    assert param_surgery.main([str(source), str(tmp_path / "alias.pt"), "--format", "mxnet"]) == 2
    assert "resolves to the input" in _one_error_line(capsys.readouterr().err) and source.read_bytes() == original
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    assert param_surgery.main([str(source), str(out)]) == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err) and out.read_bytes() == b"keep me"
    assert param_surgery.main([str(source), str(out), "--overwrite"]) == 0
    assert torch.equal(torch.load(out)["backbone.body.conv.weight"], torch.ones(2, 3, 1, 1))


# ----------------------------------------------------------------------------- 3. check: paths leaving the root


def test_check_warns_about_paths_that_leave_the_dataset_root(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    _image(root / "img" / "inside.png")
    _image(tmp_path / "outside.png")            # reachable as ../../outside.png from root/img
    _image(tmp_path / "elsewhere" / "abs.png")  # an absolute file_name
    absolute = str(tmp_path / "elsewhere" / "abs.png")
    names = ["inside.png", "../../outside.png", absolute]
    (root / "train.json").write_text(json.dumps({
        "images": [{"id": k + 1, "file_name": n, "width": 40, "height": 30} for k, n in enumerate(names)],
        "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in range(3)],
        "categories": [{"id": 1, "name": "cat"}]}))
    voc = root / "voc"
    voc.mkdir()
    for stem, fname in (("a", "inside.png"), ("b", "../../outside.png")):
        (voc / f"{stem}.xml").write_text(
            f"<annotation><filename>{fname}</filename><size><width>40</width><height>30</height></size>"
            "<object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>6</xmax><ymax>6</ymax></bndbox>"
            "</object></annotation>\n")
    coco_yaml = root / "coco.yaml"
    coco_yaml.write_text("format: coco\ntrain: {images: img, annotations: train.json}\n")
    voc_yaml = root / "voc.yaml"
    voc_yaml.write_text("format: voc\nclasses: [cat]\ntrain: {images: img, annotations: voc}\n")

    code, out, _ = _cli(["check", str(coco_yaml)], capsys)
    assert code == 0, out  # a warning, not a problem: the images are there
    lines = [line for line in out.splitlines() if "leaves the dataset root" in line]
    assert len(lines) == 2, out
    assert "../../outside.png" in lines[0] and "train.json" in lines[0] and "image id 2" in lines[0]
    assert absolute in lines[1] and "image id 3" in lines[1]
    code, out, _ = _cli(["check", str(voc_yaml)], capsys)
    lines = [line for line in out.splitlines() if "leaves the dataset root" in line]
    assert code == 0 and len(lines) == 1 and "b.xml" in lines[0] and "../../outside.png" in lines[0], out


# ----------------------------------------------------------------------------- every output: whole or not at all


def test_an_output_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """``atomic_output``: the new bytes replace the file at the end of the block; a block that fails (a full
    disk, a stop) leaves the earlier file as it was and no temporary file beside it. OpenVINO's IR pair
    (``save_ir``) is written through it, .bin and .xml each whole."""
    from core.engine.output_paths import atomic_output

    target = tmp_path / "out" / "table.csv"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(OSError, match="No space"):
        with atomic_output(target) as tmp:
            tmp.write_text("half of the sec")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]
    with atomic_output(target) as tmp:  # a name no reader's *.csv / *.xml / *.txt listing picks up if left
        assert tmp.name.startswith(".table.csv.tmp") and not tmp.name.endswith(".csv")
        tmp.write_text("second")
    # a symbolic link is written through, and the file keeps its mode
    real_file = tmp_path / "elsewhere" / "real.csv"
    real_file.parent.mkdir()
    real_file.write_text("old")
    real_file.chmod(0o640)
    link = tmp_path / "out" / "link.csv"
    link.symlink_to(real_file)
    with atomic_output(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real_file.read_text() == "new" and real_file.stat().st_mode & 0o777 == 0o640

    ov = pytest.importorskip("openvino")
    from core.inference.exported import save_ir

    def model(scale: float):
        x = ov.opset13.parameter([1, 4], np.float32, name="x")
        return ov.Model([ov.opset13.multiply(x, np.full((1, 4), scale, np.float32))], [x])

    xml = tmp_path / "ir" / "m.xml"
    save_ir(model(2.0), xml)
    run = lambda: ov.Core().compile_model(str(xml), "CPU")(np.ones((1, 4), np.float32))[0]  # noqa: E731
    assert run().tolist() == [[2.0] * 4]
    real_save = ov.save_model

    def dies_half_way(m, path, *args, **kwargs):
        real_save(m, path, *args, **kwargs)
        Path(path).with_suffix(".bin").write_bytes(b"trunc")
        raise OSError(28, "No space left on device")

    ov.save_model = dies_half_way
    try:
        with pytest.raises(OSError):
            save_ir(model(3.0), xml)
    finally:
        ov.save_model = real_save
    assert run().tolist() == [[2.0] * 4] and sorted(p.name for p in xml.parent.iterdir()) == ["m.bin", "m.xml"]


def test_a_folder_or_a_picture_given_as_the_dataset_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    folder = _user_coco(tmp_path / "mine")
    (folder / "mine.yaml").write_text("format: coco\n")
    code, _, err = _cli(["check", str(folder)], capsys)
    assert code == 2 and "is a folder; pass its dataset YAML (mine.yaml there)" in _one_error_line(err)
    code, _, err = _cli(["check", str(folder / "images" / "train" / "mine.jpg")], capsys)
    assert code == 2 and "not a text file" in _one_error_line(err)


def test_results_that_are_not_of_the_split_say_so(tmp_path: Path) -> None:
    """``detection_test.py --results``: a file that is not a list of detections, or whose detections are all of
    other pictures, stops in one line naming it; rows of other pictures among the split's are left out."""
    from core.engine.tester import read_results

    records = read_split(load_dataset_spec(synthetic_shapes_yaml(tmp_path, 4, 3, 64, seed=1)), "val")
    ids = [r.image_id for r in records]
    row = {"category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    cases = {"gt.json": ({"images": [], "annotations": [], "categories": []}, "is a COCO annotation file"),
             "lines.json": ('{"a": 1}\n{"b": 2}\n', "not a json file"),
             "rows.json": ([{"image_id": ids[0], "score": 0.5}], "row 0 is not a detection"),
             "other.json": ([{**row, "image_id": max(ids) + 100}], "none of its 1 detections is of a picture of "
                                                                   "split 'val'")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(DatasetError, match=message):
            read_results(path, records, "val")
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{**row, "image_id": ids[0]}, {**row, "image_id": max(ids) + 100},
                                 {**row, "image_id": 12345, "file_name": records[1].file_name}]))
    assert [r["image_id"] for r in read_results(mixed, records, "val")] == [ids[0], ids[1]]
    # a picture the split names twice (sampled twice as often) is scored under both of its ids
    import dataclasses

    twice = records + [dataclasses.replace(records[0], image_id=max(ids) + 1)]
    own = tmp_path / "own.json"
    own.write_text(json.dumps([{**row, "image_id": r.image_id} for r in twice]))
    assert [r["image_id"] for r in read_results(own, twice, "val")] == [r.image_id for r in twice]
    predicted = tmp_path / "predicted.json"
    predicted.write_text(json.dumps([{**row, "image_id": 1, "file_name": records[0].file_name}]))
    assert [r["image_id"] for r in read_results(predicted, twice, "val")] == [ids[0], max(ids) + 1]
