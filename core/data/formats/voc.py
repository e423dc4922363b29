"""The Pascal VOC xml reader (``format: voc``): a folder of xml files, an optional id list."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path

import numpy as np

from core.data.problems import (MALFORMED, MAX_IMAGE_SIDE, MISSING_ANNOTATION, UNKNOWN_CLASS, UNREADABLE_ANNOTATIONS,
                                box_problem, check_images_exist, clip_box, Problem, ProblemSink, resolve_image_path,
                                to_arrays, verify_images)
from core.data.records import DatasetError, ImageRecord


_FLAGS = {"0": False, "1": True, "false": False, "true": True, "": False}  # <difficult> values


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


def _xml_side(node: ET.Element, path: str, where: str) -> int:
    """An image width / height in pixels: a finite number, truncated to an int in 1..MAX_IMAGE_SIDE."""
    v = _xml_number(node, path, where)
    if not (math.isfinite(v) and 1 <= int(v) <= MAX_IMAGE_SIDE):
        raise DatasetError(f"{where}: <{path}> is '{_xml_text(node, path, where)}', not a positive pixel count "
                           f"(at most {MAX_IMAGE_SIDE}); fix it")
    return int(v)


def _object_lines(xml_path: Path) -> list[int]:
    """Line numbers of the ``<object>`` elements directly under the root of an xml file, in order."""
    lines: list[int] = []
    depth = 0
    parser = xml.parsers.expat.ParserCreate()

    def start(name: str, _attrs: dict) -> None:
        nonlocal depth
        depth += 1
        if depth == 2 and name == "object":
            lines.append(parser.CurrentLineNumber)

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        parser.Parse(xml_path.read_bytes(), True)
    except xml.parsers.expat.ExpatError:
        pass
    return lines


def read_voc(ann_dir: Path, image_dir: Path, class_names: list[str], list_file: Path | None = None,
             problems: list[Problem] | None = None, decode: bool = False) -> list[ImageRecord]:
    """Read a folder of Pascal VOC xml files (optionally only the ids in ``list_file``).

    VOC pixel coordinates are 1-based and inclusive, so ``xmin..xmax`` covers continuous
    0-based ``[xmin - 1, xmax]``: boxes become ``(xmin-1, ymin-1, xmax, ymax)`` original pixels.
    ``difficult`` objects become the record's ``ignore_boxes`` (evaluation ignores them, as the VOC
    protocol does; they are no training target). ``image_id`` is the 1-based position of the xml in the
    sorted listing of the whole folder, so it is stable across splits sharing the folder.
    ``problems``: see :func:`read_split` (problems name the xml, the object and its line).
    """
    sink = ProblemSink(problems)
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        sink(UNREADABLE_ANNOTATIONS, ann_dir, "", "annotation folder not found; check the split's 'annotations' field")
        return []
    all_xml = sorted(ann_dir.glob("*.xml"))
    ids = {p.stem: k + 1 for k, p in enumerate(all_xml)}
    stems = list(ids)
    if list_file is not None:
        if not list_file.is_file():
            sink(UNREADABLE_ANNOTATIONS, list_file, "", "id list not found; check the split's 'list' field")
            return []
        stems = []
        listed: dict[str, int] = {}
        for n, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):  # a BOM is no id
            if not line.strip():
                continue
            s = line.split()[0]
            if s not in ids:
                sink(MISSING_ANNOTATION, list_file, f"line {n}", f"id '{s}' has no annotation {ann_dir / (s + '.xml')}",
                     line=n)
                continue
            if s in listed:
                sink(MALFORMED, list_file, f"line {n}", f"id '{s}' is listed again (first on line {listed[s]}); "
                                                        "remove the repeat", line=n)
                continue
            listed[s] = n
            stems.append(s)
    label_of = {n: c for c, n in enumerate(class_names)}
    records: list[ImageRecord] = []
    checks: list[tuple[ImageRecord, Path, str]] = []
    xml_of: dict[str, tuple[Path, list]] = {}  # picture -> the first xml naming it, its objects
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, LookupError) as e:  # LookupError: an unknown encoding in the xml declaration
            sink(UNREADABLE_ANNOTATIONS, xml_path, "", f"not valid XML ({e}); fix the file")
            continue
        except OSError as e:
            sink(UNREADABLE_ANNOTATIONS, xml_path, "", f"cannot read the file ({e}); fix or remove it")
            continue
        where = str(xml_path)
        try:
            fname = _xml_text(root, "filename", where)
            w, h = _xml_side(root, "size/width", where), _xml_side(root, "size/height", where)
        except DatasetError as err:
            sink(MALFORMED, xml_path, "", str(err).split(f"{where}: ", 1)[-1])
            continue
        image, bad = resolve_image_path(image_dir, fname)
        if image is None:
            sink(MALFORMED, xml_path, "", f"<filename> {bad}; fix it")
            continue
        obj_lines: list[int] | None = None
        boxes, labels = [], []
        ignore_boxes, ignore_labels = [], []
        for k, obj in enumerate(root.findall("object")):
            owhere = f"{xml_path}: object {k}"

            def report(kind: str, message: str) -> None:
                nonlocal obj_lines
                if problems is not None and obj_lines is None:
                    obj_lines = _object_lines(xml_path)
                line = obj_lines[k] if obj_lines and k < len(obj_lines) else None
                sink(kind, xml_path, f"object {k}", message, line, image)

            try:
                name = _xml_text(obj, "name", owhere)
            except DatasetError as err:
                report(MALFORMED, str(err).split(f"{owhere}: ", 1)[-1])
                continue
            if name not in label_of:
                report(UNKNOWN_CLASS, f"class '{name}' is not in classes ({', '.join(class_names)}); "
                                      f"add it to 'classes' in the dataset YAML or fix the xml")
                continue
            flag = (obj.findtext("difficult") or "0").strip().lower()
            if flag not in _FLAGS:
                report(MALFORMED, f"<difficult> is '{flag}'; use 0 or 1")
                continue
            difficult = _FLAGS[flag]
            try:
                x1, y1, x2, y2 = (_xml_number(obj, f"bndbox/{t}", owhere) for t in ("xmin", "ymin", "xmax", "ymax"))
            except DatasetError as err:
                report(MALFORMED, str(err).split(f"{owhere}: ", 1)[-1])
                continue
            box = np.array([x1 - 1, y1 - 1, x2, y2], dtype=np.float64)
            problem = box_problem(box, w, h)
            if problem is not None:
                report(*problem)
                continue
            (ignore_boxes if difficult else boxes).append(clip_box(box, w, h))
            (ignore_labels if difficult else labels).append(label_of[name])
        objects = sorted((int(c), *map(float, b)) for c, b in zip(labels + ignore_labels, boxes + ignore_boxes))
        if image in xml_of and xml_of[image][1] != objects:  # a repeat with the same objects is oversampling
            sink(MALFORMED, xml_path, "", f"<filename> '{fname}' is also the picture of {xml_of[image][0]}, with "
                                          "other objects; give each picture one xml with all its objects", image=image)
            continue
        xml_of.setdefault(image, (xml_path, objects))
        rec = ImageRecord(ids[stem], image, w, h, *to_arrays(boxes, labels),
                          *to_arrays(ignore_boxes, ignore_labels))
        records.append(rec)
        checks.append((rec, xml_path, ""))
    if not records and not stems:
        sink(UNREADABLE_ANNOTATIONS, ann_dir, "", "no xml annotations found; check the split's 'annotations' field")
        return []
    if problems is None:
        if not records:
            raise DatasetError(f"{ann_dir}: no xml annotations found; check the split's 'annotations' field")
        check_images_exist(records, ann_dir, [x for _, x, _ in checks])
    else:
        verify_images(checks, sink, decode)
    return records
