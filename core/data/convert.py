"""Rewriting datasets: format conversion (COCO / Pascal VOC / YOLO), class subsets and splits.

Conversion goes through :class:`ImageRecord` lists (boxes xyxy float32 in original pixels), so it
carries exactly what DetLab trains on: every non-crowd, non-difficult box and every class name.
Writers keep boxes to well below 1e-3 px: COCO ``bbox`` xywh and VOC corners are written with 6
decimals (VOC's 1-based convention: ``xmin = x1 + 1``, ``xmax = x2``), YOLO's normalised centre
and size with 10. Crowd (COCO ``iscrowd``) and ``difficult`` (VOC) annotations have no place in
YOLO and are not carried; :func:`convert_dataset` counts them.
"""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from core.engine.output_paths import atomic_output, real, refuse_existing, refuse_inputs

from .records import DatasetError, ImageRecord
from .formats import FORMATS
from .formats.coco import load_coco_json
from .spec import DatasetSpec, read_split

COORD_DECIMALS = 6   # pixel coordinates (COCO, VOC)
NORM_DECIMALS = 10   # normalised coordinates (YOLO)


def _num(value: float, decimals: int) -> str:
    """``value`` with at most ``decimals`` decimals, trailing zeros dropped (``12.5``, ``3``)."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ----------------------------------------------------------------------------- writers


def write_coco(records: Sequence[ImageRecord], file_names: Sequence[str], class_names: Sequence[str],
               category_ids: Sequence[int], path: Path) -> None:
    """Write a COCO detection json: ``images`` (record ids, ``file_names[i]`` relative to the
    split's image folder), ``annotations`` (bbox ``[x, y, w, h]`` original pixels, ``area = w*h``,
    ids from 1) and ``categories`` (``category_ids`` / ``class_names``)."""
    images, annotations = [], []
    for rec, name in zip(records, file_names):
        images.append({"id": int(rec.image_id), "file_name": name, "width": int(rec.width), "height": int(rec.height)})
        for (x1, y1, x2, y2), lab in zip(rec.boxes.astype(np.float64).tolist(), rec.labels.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": int(rec.image_id),
                                "category_id": int(category_ids[lab]),
                                "bbox": [round(v, COORD_DECIMALS) for v in (x1, y1, w, h)],
                                "area": round(w * h, COORD_DECIMALS), "iscrowd": 0})
    categories = [{"id": int(i), "name": n, "supercategory": ""} for n, i in zip(class_names, category_ids)]
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def voc_xml(rec: ImageRecord, file_name: str, class_names: Sequence[str]) -> str:
    """One Pascal VOC annotation: ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2`` (VOC's
    1-based inclusive pixels) for each xyxy box in original pixels."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(rec.width))
    ET.SubElement(size, "height").text = str(int(rec.height))
    ET.SubElement(size, "depth").text = "3"
    for (x1, y1, x2, y2), lab in zip(rec.boxes.astype(np.float64).tolist(), rec.labels.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[lab]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):
            ET.SubElement(box, tag).text = _num(v, COORD_DECIMALS)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def yolo_txt(rec: ImageRecord) -> str:
    """One YOLO label file: a line ``class cx cy w h`` per box, normalised by the image size."""
    lines = []
    for (x1, y1, x2, y2), lab in zip(rec.boxes.astype(np.float64).tolist(), rec.labels.tolist()):
        cx, cy = (x1 + x2) / 2 / rec.width, (y1 + y2) / 2 / rec.height
        w, h = (x2 - x1) / rec.width, (y2 - y1) / rec.height
        lines.append(" ".join([str(int(lab))] + [_num(v, NORM_DECIMALS) for v in (cx, cy, w, h)]))
    return "".join(line + "\n" for line in lines)


# ----------------------------------------------------------------------------- images


def _unique_names(records: Sequence[ImageRecord]) -> list[str]:
    """A file name per record for one output folder: its own base name, prefixed with the image
    id when two records share a stem (YOLO and VOC pair files by stem)."""
    stems: dict[str, int] = {}
    for rec in records:
        stem = Path(rec.file_name).stem
        stems[stem] = stems.get(stem, 0) + 1
    names = []
    for rec in records:
        p = Path(rec.file_name)
        names.append(p.name if stems[p.stem] == 1 else f"{rec.image_id}_{p.name}")
    return names


def _place_images(records: Sequence[ImageRecord], names: Sequence[str], folder: Path, mode: str) -> None:
    """Put each record's image into ``folder`` under its new name: ``link`` (symlink to the
    original, absolute) or ``copy``."""
    folder.mkdir(parents=True, exist_ok=True)
    for rec, name in zip(records, names):
        dst = folder / name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if mode == "copy":
            shutil.copyfile(rec.file_name, dst)
        else:
            os.symlink(Path(rec.file_name).resolve(), dst)


# ----------------------------------------------------------------------------- conversion


@dataclass
class ConversionResult:
    """What :func:`convert_dataset` wrote: the new YAML, images and boxes per split, and the
    crowd / difficult annotations of the source that were not carried over."""

    yaml_path: Path
    images: dict[str, int]
    boxes: dict[str, int]
    not_carried: dict[str, int]


def ignored_annotations(spec: DatasetSpec, split: str, records: Sequence[ImageRecord]) -> int:
    """How many annotations of ``split`` (its ``records``, as ``read_split`` reads them) the readers skip
    on purpose: COCO ``iscrowd=1`` boxes of the chosen classes, VOC ``difficult`` objects (the records'
    ``ignore_boxes``: only the split's own files, as its list names them); YOLO has neither."""
    if spec.format == "coco":
        data = load_coco_json(spec.splits[split].annotations)
        chosen = set(spec.category_ids)
        return sum(1 for a in data.get("annotations", []) if a.get("iscrowd", 0) == 1 and a.get("category_id") in chosen)
    return sum(len(r.ignore_boxes) for r in records)


def _annotation_folder(out_dir: Path, to: str, split: str) -> tuple[Path, str]:
    """Where a voc / yolo conversion writes a split's xml / txt files, and their suffix."""
    return (out_dir / "annotations" / split, ".xml") if to == "voc" else (out_dir / "labels" / split, ".txt")


def _source_paths(spec: DatasetSpec, records: dict[str, list[ImageRecord]]) -> tuple[list[Path], list[Path]]:
    """``(files, folders)`` a conversion reads: the YAML, annotation files (and every xml / txt of
    an annotation folder), id lists, every image; the image and annotation folders."""
    files: list[Path] = [spec.path]
    folders: list[Path] = []
    for split, s in spec.splits.items():
        folders.append(s.images)
        if s.annotations.is_dir():
            folders.append(s.annotations)
            files += [p for p in s.annotations.iterdir() if p.suffix in (".xml", ".txt")]
        else:
            files.append(s.annotations)
        if s.list is not None:
            files.append(s.list)
        files += [Path(r.file_name) for r in records[split]]
    return files, folders


def _check_outputs(spec: DatasetSpec, records: dict[str, list[ImageRecord]], names: dict[str, list[str]],
                   to: str, out_dir: Path, overwrite: bool) -> None:
    """Refuse (one-line :class:`DatasetError`) an output that would land on the source, and, unless
    ``overwrite``, any output that exists already. Nothing is written before this passes."""
    files, folders = _source_paths(spec, records)
    fix = "choose an OUT_DIR outside the source dataset (e.g. a new folder)"
    out_folders, out_files, images_out = [], [out_dir / "data.yaml"], []
    stale: list[Path] = []
    for split in records:
        image_dir = out_dir / "images" / split
        out_folders.append(image_dir)
        images_out += [image_dir / n for n in names[split]]
        if to == "coco":
            out_files.append(out_dir / "annotations" / f"{split}.json")
        else:
            ann, suffix = _annotation_folder(out_dir, to, split)
            out_folders.append(ann)
            out_files += [ann / f"{Path(n).stem}{suffix}" for n in names[split]]
            if ann.is_dir():  # an earlier run's files there are replaced (with --overwrite)
                stale += [p for p in ann.iterdir() if p.suffix == suffix]
    # an output folder holding a source folder or file: writing there would clobber it
    real_out = {real(f): f for f in out_folders}
    for source in folders + files:
        rp = real(source)
        folder = next((real_out[a] for a in (rp, *rp.parents) if a in real_out), None)
        if folder is not None:
            raise DatasetError(f"{folder}: this output folder {'is' if rp == real(folder) else 'holds'} the "
                               f"source's {source}; converting into it would overwrite the source: {fix}")
    # an output file that is (or resolves to) a source file; a symbolic link among the images is an
    # earlier run's link to its picture, which is replaced, never written through
    refuse_inputs(out_files + [p for p in images_out if not p.is_symlink()], files, fix, DatasetError)
    refuse_existing(list(dict.fromkeys(out_files + images_out + stale)), overwrite,
                    "choose another OUT_DIR (outputs of an earlier convert?)", DatasetError)


def convert_dataset(spec: DatasetSpec, to: str, out_dir: Path, images: str = "link",
                    overwrite: bool = False) -> ConversionResult:
    """Write every split of ``spec`` in format ``to`` (coco | voc | yolo) under ``out_dir``:
    ``images/<split>/`` (the pictures, symlinked or copied as ``images`` says), the annotations
    (``annotations/<split>.json``, ``annotations/<split>/*.xml`` or ``labels/<split>/*.txt``) and
    ``data.yaml`` describing them with the class names. Source splits are read strictly, so a
    broken dataset stops with the reader's error (run ``utils.dataset check`` first).

    Nothing of the source is ever written over: an output that is, resolves to or would clobber
    a source file or folder raises :class:`DatasetError` before anything is written. Outputs that
    exist already (an earlier conversion) are replaced only with ``overwrite`` (``--overwrite``),
    and then only those: of an existing xml / txt folder just its ``.xml`` / ``.txt`` files go."""
    if to not in FORMATS:
        raise DatasetError(f"unknown target format '{to}'; use one of {', '.join(FORMATS)}")
    if images not in ("link", "copy"):
        raise DatasetError(f"images must be 'link' or 'copy', got '{images}'")
    out_dir = Path(out_dir).resolve()
    records = {split: read_split(spec, split) for split in spec.splits}
    names = {split: _unique_names(recs) for split, recs in records.items()}
    _check_outputs(spec, records, names, to, out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc: dict[str, Any] = {"format": to, "root": ".", "classes": list(spec.class_names)}
    n_images, n_boxes, not_carried = {}, {}, {}
    for split in spec.splits:
        recs, split_names = records[split], names[split]
        _place_images(recs, split_names, out_dir / "images" / split, images)
        if to == "coco":
            write_coco(recs, split_names, spec.class_names, spec.category_ids,
                       out_dir / "annotations" / f"{split}.json")
            desc[split] = {"images": f"images/{split}", "annotations": f"annotations/{split}.json"}
        else:
            folder, suffix = _annotation_folder(out_dir, to, split)
            folder.mkdir(parents=True, exist_ok=True)
            for old in [p for p in folder.iterdir() if p.suffix == suffix]:
                old.unlink()  # an earlier run's (checked above: only with overwrite)
            for rec, name in zip(recs, split_names):
                text = voc_xml(rec, name, spec.class_names) if to == "voc" else yolo_txt(rec)
                with atomic_output(folder / f"{Path(name).stem}{suffix}") as tmp:
                    tmp.write_text(text)
            key = "annotations" if to == "voc" else "labels"
            desc[split] = {"images": f"images/{split}", key: f"{key}/{split}"}
        n_images[split] = len(recs)
        n_boxes[split] = int(sum(len(r.boxes) for r in recs))
        not_carried[split] = ignored_annotations(spec, split, recs)
    yaml_path = out_dir / "data.yaml"
    header = f"# Converted from {spec.path} ({spec.format}) by python -m utils.dataset convert --to {to}\n"
    with atomic_output(yaml_path) as tmp:  # last: a convert cut short leaves no data.yaml to train on
        tmp.write_text(header + yaml.safe_dump(desc, sort_keys=False, default_flow_style=None))
    return ConversionResult(yaml_path, n_images, n_boxes, not_carried)


# ----------------------------------------------------------------------------- COCO subsets and splits


def _with_images(data: dict, image_ids: set) -> dict:
    """A copy of ``data`` with only the images in ``image_ids`` and their annotations."""
    out = {k: deepcopy(v) for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = [deepcopy(im) for im in data["images"] if im["id"] in image_ids]
    out["annotations"] = [deepcopy(a) for a in data["annotations"] if a["image_id"] in image_ids]
    return out


def subset_coco(data: dict, classes: Sequence[str], keep_empty: bool = False, source: str = "COCO json") -> dict:
    """The annotations of ``classes`` (category names) only, with category ids remapped to
    ``1..K`` in the order given. Images without any annotation of these classes are dropped
    unless ``keep_empty``. Other top-level keys (info, licenses) are kept."""
    by_name: dict[str, int] = {}
    for c in data["categories"]:
        if c["name"] in by_name:
            raise DatasetError(f"{source}: two categories are named '{c['name']}'; subset by name is ambiguous")
        by_name[c["name"]] = c["id"]
    missing = [n for n in classes if n not in by_name]
    if missing:
        raise DatasetError(f"{source}: classes {missing} are not among its categories ({', '.join(by_name)}); "
                           f"fix --classes")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"--classes names a class twice: {list(classes)}")
    new_id = {by_name[n]: k + 1 for k, n in enumerate(classes)}
    old_cat = {c["id"]: c for c in data["categories"]}
    out = {k: deepcopy(v) for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out["categories"] = [{**deepcopy(old_cat[by_name[n]]), "id": k + 1} for k, n in enumerate(classes)]
    out["annotations"] = [{**deepcopy(a), "category_id": new_id[a["category_id"]]}
                          for a in data["annotations"] if a["category_id"] in new_id]
    used = {a["image_id"] for a in out["annotations"]}
    out["images"] = [deepcopy(im) for im in data["images"] if keep_empty or im["id"] in used]
    return out


def _permuted_ids(data: dict, seed: int) -> list:
    ids = sorted(im["id"] for im in data["images"])
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def split_coco(data: dict, val_fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """``(train, val)``: a random ``val_fraction`` of the images (rounded, at least one when the
    fraction is positive and there are two or more images) with their annotations go to val,
    the rest to train. The same ``seed`` gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    order = _permuted_ids(data, seed)
    n_val = min(max(int(round(len(order) * val_fraction)), 1 if len(order) > 1 else 0), max(len(order) - 1, 0))
    val = set(order[:n_val])
    return _with_images(data, set(order) - val), _with_images(data, val)


def kfold_coco(data: dict, folds: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """K-fold cross-validation splits: the images, shuffled with ``seed``, are cut into ``folds``
    parts of near-equal size; fold ``k`` is ``(all other parts, part k)``."""
    order = _permuted_ids(data, seed)
    if folds < 2 or folds > len(order):
        raise DatasetError(f"--folds must be between 2 and the number of images ({len(order)}), got {folds}")
    parts = [set(p.tolist()) for p in np.array_split(np.array(order, dtype=object), folds)]
    return [(_with_images(data, set(order) - part), _with_images(data, part)) for part in parts]
