"""The start-up check is remembered: a second start on unchanged data reuses it; any change to the
annotations or the images checks again; the cache is safe to read and lives outside the data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.check import load_checked_records
from core.data.check_cache import cache_dir
from core.data.spec import load_dataset_spec
from conftest import synthetic_shapes_yaml


@pytest.fixture()
def data(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DETLAB_CACHE", str(tmp_path / "cache"))
    yaml = synthetic_shapes_yaml(tmp_path, 6, 2, 64, seed=3)
    load_dataset_spec(yaml)
    return yaml


def start(yaml: Path) -> tuple[dict, list[str]]:
    return load_checked_records(load_dataset_spec(yaml), ("train", "val"), skip_bad_records=False)


def same(a: list, b: list) -> bool:
    return [(r.image_id, r.file_name, r.width, r.height) for r in a] == [(r.image_id, r.file_name, r.width, r.height)
                                                                          for r in b] and all(
        np.array_equal(x.boxes, y.boxes) and x.boxes.dtype == y.boxes.dtype and np.array_equal(x.labels, y.labels)
        for x, y in zip(a, b))


def test_second_start_reuses_the_check_exactly(data: Path) -> None:
    first, notes = start(data)
    assert not any("unchanged" in n for n in notes)
    listing = sorted(p.relative_to(data.parent) for p in data.parent.rglob("*") if "cache" not in p.parts)
    second, notes = start(data)
    assert [n for n in notes if "unchanged" in n] and len([n for n in notes if "unchanged" in n]) == 2
    assert same(first["train"], second["train"]) and same(first["val"], second["val"])
    # everything the cache wrote is in the cache folder, nothing beside the data
    assert sorted(p.relative_to(data.parent) for p in data.parent.rglob("*") if "cache" not in p.parts) == listing
    assert len(list(cache_dir().glob("*.npz"))) == 2


def test_a_changed_annotation_is_read_again(data: Path) -> None:
    first, _ = start(data)
    ann = data.parent / "tiny" / "annotations" / "train.json"
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"][2] -= 3.0
    ann.write_text(json.dumps(coco))
    second, notes = start(data)
    assert [n for n in notes if "unchanged" in n and "val" in n] and not [n for n in notes if "train unchanged" in n]
    image_id = coco["annotations"][0]["image_id"]
    before = next(r for r in first["train"] if r.image_id == image_id)
    after = next(r for r in second["train"] if r.image_id == image_id)
    assert not np.array_equal(before.boxes, after.boxes)


def test_a_replaced_image_is_checked_again(data: Path) -> None:
    first, _ = start(data)
    picture = Path(first["train"][0].file_name)
    Image.new("RGB", (40, 30)).save(picture)  # another size than annotated
    with pytest.raises(Exception, match="is 40x30 but the annotation says 64x64"):
        start(data)


def test_a_yolo_image_or_label_added_in_a_subfolder_is_read(tmp_path: Path, monkeypatch) -> None:
    """YOLO reads the folders' subfolders (as ultralytics does), so the cache must see what lands there."""
    monkeypatch.setenv("DETLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "a.png")
    (tmp_path / "data.yaml").write_text("format: yolo\nclasses: [car]\ntrain: {images: images, labels: labels}\n")
    spec = load_dataset_spec(tmp_path / "data.yaml")
    count = lambda: [len(r.boxes) for r in load_checked_records(spec, ("train",), skip_bad_records=False)[0]["train"]]
    assert count() == [0] and count() == [0]
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "sub" / "b.png")
    assert count() == [0, 0]
    (tmp_path / "labels" / "sub" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert count() == [0, 1]


def test_a_garbled_cache_file_is_ignored(data: Path) -> None:
    first, _ = start(data)
    for f in cache_dir().glob("*.npz"):
        f.write_bytes(b"not a cache file")
    second, notes = start(data)
    assert not any("unchanged" in n for n in notes) and same(first["train"], second["train"])
    third, notes = start(data)  # rewritten by the second start
    assert any("unchanged" in n for n in notes)


def test_a_cache_file_holds_no_pickled_objects(data: Path) -> None:
    start(data)
    for f in cache_dir().glob("*.npz"):
        with np.load(f, allow_pickle=False) as arrays:  # would raise on an object array
            assert all(arrays[k].dtype != object for k in arrays.files)
    assert os.environ["DETLAB_CACHE"].endswith("cache")
