"""Dataset description (a small YAML file) and the COCO / VOC annotation readers.

Example ``data/demo.yaml``::

    format: coco            # coco | voc
    root: demo              # relative to this YAML file, or absolute
    classes: [circle, square, triangle, cross]  # required for voc; optional for coco
    train: {images: images/train, annotations: annotations/train.json}
    val:   {images: images/val,   annotations: annotations/val.json}
    synthesize: {kind: shapes, train_images: 480, val_images: 96, image_size: 256, seed: 0}

For ``voc``, ``annotations`` is a folder of Pascal VOC xml files and a split may add
``list: ImageSets/Main/train.txt`` (one image id, i.e. xml stem, per line).
Every problem raises :class:`DatasetError` naming the file, the field and the fix.
"""
from __future__ import annotations

import difflib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .records import DatasetError, ImageRecord

FORMATS = ("coco", "voc")
TOP_KEYS = ("format", "root", "classes", "train", "val", "test", "synthesize")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_KEYS = ("images", "annotations", "list")
SYNTH_KEYS = {"kind": "shapes", "train_images": 480, "val_images": 96, "image_size": 256, "seed": 0}
BOX_TOLERANCE = 1.0  # px a box may stick out of the image before it is an error


@dataclass
class SplitSpec:
    """Absolute paths of one split: image folder, annotation file (coco) or folder (voc),
    and for voc an optional id list file."""

    images: Path
    annotations: Path
    list: Path | None = None


@dataclass
class DatasetSpec:
    """A parsed dataset YAML. ``category_ids[c]`` is the id written to COCO results for
    contiguous label ``c`` (the json's category id for coco, ``c + 1`` for voc)."""

    path: Path
    format: str
    root: Path
    class_names: list[str]
    category_ids: list[int]
    splits: dict[str, SplitSpec]
    synthesize: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _nearest(key: str, valid: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.0)
    hint = f"did you mean '{match[0]}'? " if match else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _check_keys(mapping: dict, valid: tuple[str, ...], where: str, path: Path) -> None:
    for key in mapping:
        if key not in valid:
            raise DatasetError(f"{path}: unknown key '{key}' in {where}; {_nearest(key, valid)}")


def _require(mapping: dict, key: str, where: str, path: Path, example: str) -> Any:
    if mapping.get(key) is None:
        raise DatasetError(f"{path}: missing required field '{key}' in {where}; add e.g. {example}")
    return mapping[key]


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a dataset YAML. Paths in the result are absolute.

    For coco without ``classes`` (or to look up their ids) the categories are read from the
    smallest split annotation json; when ``synthesize`` is set and that data is missing it is
    generated first.
    """
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset YAML not found; check the path") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of keys (format, root, train, ...) at top level")
    _check_keys(raw, TOP_KEYS, "the top level", path)

    fmt = _require(raw, "format", "the top level", path, "'format: coco'")
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: field 'format' is '{fmt}'; use one of {', '.join(FORMATS)}")
    root = Path(str(raw.get("root", ".")))
    root = (root if root.is_absolute() else path.parent / root).resolve()

    splits: dict[str, SplitSpec] = {}
    for name in SPLIT_NAMES:
        if name not in raw:
            continue
        s = raw[name]
        if not isinstance(s, dict):
            raise DatasetError(f"{path}: split '{name}' must be a mapping like "
                               f"{{images: images/{name}, annotations: ...}}")
        _check_keys(s, SPLIT_KEYS, f"split '{name}'", path)
        images = _require(s, "images", f"split '{name}'", path, f"'images: images/{name}'")
        ann = _require(s, "annotations", f"split '{name}'", path,
                       f"'annotations: annotations/{name}.json'" if fmt == "coco" else "'annotations: Annotations'")
        if "list" in s and fmt != "voc":
            raise DatasetError(f"{path}: field 'list' in split '{name}' is only valid for format voc; remove it")
        splits[name] = SplitSpec(root / str(images), root / str(ann),
                                 root / str(s["list"]) if s.get("list") else None)
    if not splits:
        raise DatasetError(f"{path}: no split given; add e.g. 'train: {{images: ..., annotations: ...}}'")

    classes = raw.get("classes")
    if classes is not None:
        if (not isinstance(classes, list) or not classes
                or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
            raise DatasetError(f"{path}: field 'classes' must be a non-empty list of distinct names, "
                               f"e.g. 'classes: [cat, dog]'")
    elif fmt == "voc":
        raise DatasetError(f"{path}: missing required field 'classes' (needed for voc); add e.g. 'classes: [cat, dog]'")

    synth = raw.get("synthesize")
    if synth is not None:
        if not isinstance(synth, dict):
            raise DatasetError(f"{path}: field 'synthesize' must be a mapping like "
                               f"{{kind: shapes, train_images: 480, ...}}")
        _check_keys(synth, tuple(SYNTH_KEYS), "'synthesize'", path)
        synth = {**SYNTH_KEYS, **synth}
        if synth["kind"] != "shapes":
            raise DatasetError(f"{path}: synthesize.kind is '{synth['kind']}'; the only kind is 'shapes'")
        if fmt != "coco":
            raise DatasetError(f"{path}: 'synthesize' writes coco data; set 'format: coco'")
        for k in ("train_images", "val_images", "image_size", "seed"):
            if not isinstance(synth[k], int) or isinstance(synth[k], bool) or synth[k] < 0:
                raise DatasetError(f"{path}: synthesize.{k} must be a non-negative integer, got {synth[k]!r}")

    spec = DatasetSpec(path, fmt, root, list(classes or []), [], splits, synth)
    if fmt == "voc":
        spec.category_ids = list(range(1, len(spec.class_names) + 1))
    else:
        _ensure_data(spec, None)
        existing = [s.annotations for s in splits.values() if s.annotations.is_file()]
        if not existing:
            first = next(iter(splits.values())).annotations
            raise DatasetError(f"{first}: annotation file not found (from {path}); check the 'annotations' "
                               f"fields and 'root' ({root})")
        smallest = min(existing, key=lambda p: p.stat().st_size)
        cats = _coco_categories(_load_json(smallest))
        spec.class_names, spec.category_ids = _resolve_coco_classes(spec.class_names, cats, smallest, path)
    return spec


def read_split(spec: DatasetSpec, split: str) -> list[ImageRecord]:
    """Read one split into records (boxes float32 [N,4] xyxy *original* pixels, labels int64
    [N] contiguous). Generates the synthetic data first when configured and missing."""
    if split not in spec.splits:
        raise DatasetError(f"{spec.path}: no split '{split}'; available: {', '.join(spec.splits)}")
    _ensure_data(spec, split)
    s = spec.splits[split]
    if spec.format == "coco":
        return read_coco(s.annotations, s.images, spec.class_names, spec.category_ids)
    return read_voc(s.annotations, s.images, spec.class_names, s.list)


def _ensure_data(spec: DatasetSpec, split: str | None) -> None:
    """Run the configured synthesizer when the split's (or any split's) annotations are missing."""
    if not spec.synthesize:
        return
    splits = [spec.splits[split]] if split else list(spec.splits.values())
    if all(s.annotations.exists() for s in splits):
        return
    from .synthetic import synthesize_shapes

    cfg = spec.synthesize
    synthesize_shapes(spec.root, cfg["train_images"], cfg["val_images"], cfg["image_size"], cfg["seed"])
    for s in splits:
        if not s.annotations.exists():
            raise DatasetError(f"{spec.path}: 'synthesize' wrote {spec.root}/annotations/{{train,val}}.json "
                               f"but the split points to {s.annotations}; use the default split paths")


# ----------------------------------------------------------------------------- helpers


def _check_box(box: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Validate an xyxy box in original pixels and clip it to the image; ``where`` prefixes errors."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite([x1, y1, x2, y2]).all() or x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{where}: box {[x1, y1, x2, y2]} (xyxy) has zero or negative size; fix or remove it")
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise DatasetError(f"{where}: box {[x1, y1, x2, y2]} (xyxy) lies outside the {width}x{height} image "
                           f"by more than {t:g} px; fix the box or the image size")
    return np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], dtype=np.float32)


def _to_arrays(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


# ----------------------------------------------------------------------------- COCO


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found; check the split's 'annotations' field") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); regenerate or fix the file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO json object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list field '{key}'; a COCO file needs "
                               f"'images', 'annotations' and 'categories' lists")
    data["__path__"] = path
    return data


def _fields(entry: Any, keys: tuple[str, ...], where: str) -> list:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    for k in keys:
        if k not in entry:
            raise DatasetError(f"{where}: missing field '{k}'; add it")
    return [entry[k] for k in keys]


def _coco_categories(data: dict) -> list[tuple[int, str]]:
    """(id, name) of the json's categories, sorted by id."""
    cats = [tuple(_fields(c, ("id", "name"), f"{data['__path__']}: categories[{i}]"))
            for i, c in enumerate(data["categories"])]
    return sorted(cats)


def _resolve_coco_classes(class_names: list[str], cats: list[tuple[int, str]], ann: Path,
                          yaml_path: Path) -> tuple[list[str], list[int]]:
    """Class names (given, or all json categories in id order) and their json category ids."""
    if not class_names:
        return [n for _, n in cats], [i for i, _ in cats]
    by_name = {n: i for i, n in cats}
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DatasetError(f"{yaml_path}: classes {missing} not among the categories of {ann} "
                           f"({', '.join(by_name)}); fix 'classes'")
    return list(class_names), [by_name[n] for n in class_names]


def read_coco(ann_file: Path, image_dir: Path, class_names: list[str],
              category_ids: list[int]) -> list[ImageRecord]:
    """Read a COCO detection json. Keeps the json image ids, maps the chosen categories to
    labels ``0..C-1`` (annotations of other json categories are skipped), skips
    ``iscrowd=1``, converts ``xywh`` to ``xyxy`` original pixels."""
    data = _load_json(ann_file)
    cats = dict(_coco_categories(data))
    label_of = {cid: c for c, cid in enumerate(category_ids)}
    for cid, name in zip(category_ids, class_names):
        if cats.get(cid) != name:
            raise DatasetError(f"{ann_file}: category id {cid} should be '{name}' (as in the other split) "
                               f"but is {cats.get(cid)!r}; splits must share categories")
    records: dict[int, ImageRecord] = {}
    boxes: dict[int, list] = {}
    labels: dict[int, list] = {}
    for i, im in enumerate(data["images"]):
        iid, fname, w, h = _fields(im, ("id", "file_name", "width", "height"), f"{ann_file}: images[{i}]")
        if iid in records:
            raise DatasetError(f"{ann_file}: images[{i}]: duplicate image id {iid}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iid, w, h)):
            raise DatasetError(f"{ann_file}: images[{i}]: 'id', 'width' and 'height' must be integers")
        records[iid] = ImageRecord(iid, str((image_dir / str(fname)).resolve()), w, h,
                                   np.zeros((0, 4)), np.zeros(0))
        boxes[iid], labels[iid] = [], []
    for i, a in enumerate(data["annotations"]):
        aid, iid, cid, bbox = _fields(a, ("id", "image_id", "category_id", "bbox"), f"{ann_file}: annotations[{i}]")
        where = f"{ann_file}: annotation id {aid}"
        if iid not in records:
            raise DatasetError(f"{where}: image_id {iid} is not in 'images'; fix the annotation")
        if cid not in cats:
            raise DatasetError(f"{where}: category_id {cid} is not in 'categories' ({sorted(cats)})")
        if a.get("iscrowd", 0) == 1 or cid not in label_of:
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, bw, bh = bbox
        rec = records[iid]
        boxes[iid].append(_check_box(np.array([x, y, x + bw, y + bh]), rec.width, rec.height, where))
        labels[iid].append(label_of[cid])
    for iid, rec in records.items():
        rec.boxes, rec.labels = _to_arrays(boxes[iid], labels[iid])
    _check_images_exist(list(records.values()), ann_file)
    return list(records.values())


def _check_images_exist(records: list[ImageRecord], ann: Path) -> None:
    missing = [r.file_name for r in records if not Path(r.file_name).is_file()]
    if missing:
        raise DatasetError(f"{ann}: {len(missing)} of {len(records)} image files not found, e.g. {missing[0]}; "
                           f"check the split's 'images' folder")


# ----------------------------------------------------------------------------- VOC


def _xml_text(node: ET.Element, path: str, where: str) -> str:
    el = node.find(path)
    if el is None or el.text is None or not el.text.strip():
        raise DatasetError(f"{where}: missing <{path}>; add it")
    return el.text.strip()


def _xml_number(node: ET.Element, path: str, where: str) -> float:
    text = _xml_text(node, path, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{where}: <{path}> is '{text}', not a number") from None


def read_voc(ann_dir: Path, image_dir: Path, class_names: list[str],
             list_file: Path | None = None) -> list[ImageRecord]:
    """Read a folder of Pascal VOC xml files (optionally only the ids in ``list_file``).

    VOC pixel coordinates are 1-based and inclusive, so ``xmin..xmax`` covers continuous
    0-based ``[xmin - 1, xmax]``: boxes become ``(xmin-1, ymin-1, xmax, ymax)`` original pixels.
    ``difficult`` objects are skipped. ``image_id`` is the 1-based position of the xml in the
    sorted listing of the whole folder, so it is stable across splits sharing the folder.
    """
    if not ann_dir.is_dir():
        raise DatasetError(f"{ann_dir}: annotation folder not found; check the split's 'annotations' field")
    all_xml = sorted(ann_dir.glob("*.xml"))
    ids = {p.stem: k + 1 for k, p in enumerate(all_xml)}
    if list_file is not None:
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: id list not found; check the split's 'list' field")
        stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        for s in stems:
            if s not in ids:
                raise DatasetError(f"{list_file}: id '{s}' has no annotation {ann_dir / (s + '.xml')}")
    else:
        stems = list(ids)
    label_of = {n: c for c, n in enumerate(class_names)}
    records = []
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            raise DatasetError(f"{xml_path}: not valid XML ({e}); fix the file") from None
        where = str(xml_path)
        fname = _xml_text(root, "filename", where)
        w, h = int(_xml_number(root, "size/width", where)), int(_xml_number(root, "size/height", where))
        boxes, labels = [], []
        for k, obj in enumerate(root.findall("object")):
            owhere = f"{xml_path}: object {k}"
            name = _xml_text(obj, "name", owhere)
            if name not in label_of:
                raise DatasetError(f"{owhere}: class '{name}' is not in classes ({', '.join(class_names)}); "
                                   f"add it to 'classes' in the dataset YAML or fix the xml")
            diff = obj.find("difficult")
            if diff is not None and diff.text and diff.text.strip() not in ("0", ""):
                continue
            x1, y1, x2, y2 = (_xml_number(obj, f"bndbox/{t}", owhere) for t in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append(_check_box(np.array([x1 - 1, y1 - 1, x2, y2]), w, h, owhere))
            labels.append(label_of[name])
        records.append(ImageRecord(ids[stem], str((image_dir / fname).resolve()), w, h, *_to_arrays(boxes, labels)))
    if not records:
        raise DatasetError(f"{ann_dir}: no xml annotations found; check the split's 'annotations' field")
    _check_images_exist(records, ann_dir)
    return records
