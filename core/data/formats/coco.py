"""The COCO json reader (``format: coco``): ``images``, ``annotations`` (xywh boxes) and ``categories``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.data.problems import (MALFORMED, MAX_IMAGE_SIDE, UNKNOWN_CLASS, UNREADABLE_ANNOTATIONS, box_problem,
                                check_images_exist, clip_box, is_finite_number, Problem, ProblemSink,
                                resolve_image_path, to_arrays, verify_images)
from core.data.records import DatasetError, ImageRecord


def load_coco_json(path: Path) -> dict:
    """A COCO json as a dict, checked for its ``images``, ``annotations`` and ``categories`` lists;
    DatasetError naming the file and the fix otherwise."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the path (a dataset YAML's split 'annotations' field)") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
        raise DatasetError(f"{path}: not valid JSON ({e}); regenerate or fix the file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO json object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list field '{key}'; a COCO file needs "
                               f"'images', 'annotations' and 'categories' lists")
    return data


def _fields(entry: Any, keys: tuple[str, ...], where: str) -> list:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    for k in keys:
        if k not in entry:
            raise DatasetError(f"{where}: missing field '{k}'; add it")
    return [entry[k] for k in keys]


def check_coco_ids(data: dict, path: Path) -> None:
    """DatasetError (one line: the file, the entry, the missing field) unless every image of ``data`` (the
    COCO json ``load_coco_json`` read from ``path``) has an ``id``, every annotation an ``image_id`` and a
    ``category_id`` and every category an ``id`` and ``name``: the fields the subset and split tools join on."""
    for key, fields in (("images", ("id",)), ("annotations", ("image_id", "category_id")),
                        ("categories", ("id", "name"))):
        for i, entry in enumerate(data[key]):
            _fields(entry, fields, f"{path}: {key}[{i}]")


def coco_categories(data: dict, path: Path) -> list[tuple[int, str]]:
    """(id, name) of the categories of ``data`` (the COCO json read from ``path``), sorted by id; ids
    must be distinct integers and names distinct non-empty strings."""
    cats: list[tuple[int, str]] = []
    first: dict[Any, int] = {}
    for i, c in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        cid, name = _fields(c, ("id", "name"), where)
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DatasetError(f"{where}: 'id' must be an integer, got {cid!r}; fix it")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: 'name' must be a non-empty string, got {name!r}; fix it")
        for key, what in ((("id", cid), f"id {cid}"), (("name", name), f"name '{name}'")):
            if key in first:
                raise DatasetError(f"{where}: duplicate category {what} (also categories[{first[key]}]); "
                                   f"category ids and names must be distinct")
            first[key] = i
        cats.append((cid, name))
    return sorted(cats)


def resolve_coco_classes(class_names: list[str], cats: list[tuple[int, str]], ann: Path,
                          yaml_path: Path) -> tuple[list[str], list[int]]:
    """Class names (given, or all json categories in id order) and their json category ids."""
    if not class_names:
        if not cats:
            raise DatasetError(f"{ann}: 'categories' is empty and {yaml_path} sets no 'classes'; add the "
                               f"categories to the json")
        return [n for _, n in cats], [i for i, _ in cats]
    by_name = {n: i for i, n in cats}
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DatasetError(f"{yaml_path}: classes {missing} not among the categories of {ann} "
                           f"({', '.join(by_name)}); fix 'classes'")
    return list(class_names), [by_name[n] for n in class_names]


def _entry_fields(entry: Any, keys: tuple[str, ...], file: Path, where: str, sink: ProblemSink) -> list | None:
    """``_fields`` that reports a malformed entry to ``sink`` (returning None) instead of raising."""
    try:
        return _fields(entry, keys, f"{file}: {where}")
    except DatasetError as err:
        sink(MALFORMED, file, where, str(err).split(f"{where}: ", 1)[-1])
        return None


def _check_repeated_pictures(records: dict[int, ImageRecord], boxes: dict[int, list], labels: dict[int, list],
                             ann_file: Path, where_of: dict[int, str], sink: ProblemSink) -> None:
    """A picture listed by several image entries must have the same annotations in each (a repeat, to
    sample it more often); otherwise its objects are split over records, each teaching that the other's
    are background, which is a problem."""
    ids_of: dict[str, list[int]] = {}
    for iid, rec in records.items():
        ids_of.setdefault(rec.file_name, []).append(iid)
    for path, ids in ids_of.items():
        if len(ids) < 2:
            continue
        objects = [sorted((int(c), *map(float, b)) for c, b in zip(labels[i], boxes[i])) for i in ids]
        for iid, found in zip(ids[1:], objects[1:]):
            if found != objects[0]:
                sink(MALFORMED, ann_file, where_of[iid], f"its picture is also image id {ids[0]}, with other "
                                                         "annotations; give each picture one image entry with all "
                                                         "its annotations", image=path)


def read_coco(ann_file: Path, image_dir: Path, class_names: list[str], category_ids: list[int],
              problems: list[Problem] | None = None, decode: bool = False,
              all_categories: bool = False) -> list[ImageRecord]:
    """Read a COCO detection json. Keeps the json image ids, maps the chosen categories to
    labels ``0..C-1`` (annotations of other json categories are skipped; with ``all_categories``, the
    classes were not chosen but read from another split's json, and a category of this file outside them
    is a problem), skips ``iscrowd=1``, converts ``xywh`` to ``xyxy`` original pixels. ``problems``: see
    :func:`read_split` (problems name the json and the image index or annotation id)."""
    sink = ProblemSink(problems)
    ann_file = Path(ann_file)
    try:
        data = load_coco_json(ann_file)
        cats = dict(coco_categories(data, ann_file))
    except DatasetError as err:
        if problems is None:
            raise
        sink(UNREADABLE_ANNOTATIONS, ann_file, "", str(err).split(f"{ann_file}: ", 1)[-1])
        return []
    label_of = {cid: c for c, cid in enumerate(category_ids)}
    unlisted = [name for cid, name in sorted(cats.items()) if cid not in label_of]
    if all_categories and unlisted:
        sink(UNREADABLE_ANNOTATIONS, ann_file, "", f"categories {unlisted} are not among the classes, which the "
                                                   "dataset YAML leaves to the smallest split's json; list 'classes' "
                                                   "in the YAML or give every split's json the same 'categories'")
        return []
    for cid, name in zip(category_ids, class_names):
        if cats.get(cid) != name:
            sink(UNREADABLE_ANNOTATIONS, ann_file, "", f"category id {cid} should be '{name}' (as in the other "
                                                       f"split) but is {cats.get(cid)!r}; splits must share categories")
            return []
    records: dict[int, ImageRecord] = {}
    where_of: dict[int, str] = {}
    boxes: dict[int, list] = {}
    labels: dict[int, list] = {}
    for i, im in enumerate(data["images"]):
        fields = _entry_fields(im, ("id", "file_name", "width", "height"), ann_file, f"images[{i}]", sink)
        if fields is None:
            continue
        iid, fname, w, h = fields
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iid, w, h)):
            sink(MALFORMED, ann_file, f"images[{i}]", "'id', 'width' and 'height' must be integers")
            continue
        if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
            sink(MALFORMED, ann_file, f"images[{i}]", f"'width' and 'height' must be positive pixel counts (at most "
                                                      f"{MAX_IMAGE_SIDE}), got {w}x{h}; fix them")
            continue
        if not -2 ** 63 <= iid < 2 ** 63:  # the start-up cache and the evaluation hold ids as int64
            sink(MALFORMED, ann_file, f"images[{i}]", f"'id' {iid} does not fit in a signed 64-bit integer; "
                                                      "renumber the images")
            continue
        path, bad = resolve_image_path(image_dir, fname)
        if path is None:
            sink(MALFORMED, ann_file, f"images[{i}]", f"'file_name' {bad}; fix it")
            continue
        if iid in records:  # the first entry's record is spoilt too: which image do its annotations belong to?
            sink(MALFORMED, ann_file, f"images[{i}]", f"duplicate image id {iid}", image=records[iid].file_name)
            continue
        records[iid] = ImageRecord(iid, path, w, h, np.zeros((0, 4)), np.zeros(0))
        where_of[iid] = f"image id {iid}"
        boxes[iid], labels[iid] = [], []
    for i, a in enumerate(data["annotations"]):
        fields = _entry_fields(a, ("id", "image_id", "category_id", "bbox"), ann_file, f"annotations[{i}]", sink)
        if fields is None:
            continue
        aid, iid, cid, bbox = fields
        where = f"annotation id {aid}"
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iid, cid)):
            sink(MALFORMED, ann_file, where, f"'image_id' and 'category_id' must be integers, got {iid!r}, {cid!r}")
            continue
        rec = records.get(iid)
        image = rec.file_name if rec is not None else None
        if rec is None:
            sink(MALFORMED, ann_file, where, f"image_id {iid} is not in 'images'; fix the annotation")
            continue
        if cid not in cats:
            sink(UNKNOWN_CLASS, ann_file, where, f"category_id {cid} is not in 'categories' ({sorted(cats)})",
                 image=image)
            continue
        crowd = a.get("iscrowd", 0)
        if not (isinstance(crowd, int) and crowd in (0, 1)):  # "1" would train on the crowd pycocotools ignores
            sink(MALFORMED, ann_file, where, f"'iscrowd' must be 0 or 1, got {crowd!r}; fix it", image=image)
            continue
        if crowd == 1 or cid not in label_of:
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            sink(MALFORMED, ann_file, where, f"bbox must be [x, y, width, height], got {bbox!r}", image=image)
            continue
        x, y, bw, bh = (float(v) for v in bbox)  # floats: a sum too large is inf (a problem), no OverflowError
        box = np.array([x, y, x + bw, y + bh], dtype=np.float64)
        problem = box_problem(box, rec.width, rec.height)
        if problem is not None:
            sink(problem[0], ann_file, where, problem[1], image=image)
            continue
        boxes[iid].append(clip_box(box, rec.width, rec.height))
        labels[iid].append(label_of[cid])
    _check_repeated_pictures(records, boxes, labels, ann_file, where_of, sink)
    for iid, rec in records.items():
        rec.boxes, rec.labels = to_arrays(boxes[iid], labels[iid])
    if problems is None:
        check_images_exist(list(records.values()), ann_file)
    else:
        verify_images([(r, ann_file, where_of[i]) for i, r in records.items()], sink, decode)
    return list(records.values())
