"""Dataset description (a small YAML file) and the COCO / Pascal VOC / YOLO annotation readers.

Example ``data/demo.yaml``::

    format: coco            # coco | voc | yolo
    root: demo              # relative to this YAML file, or absolute
    classes: [circle, square, triangle, cross]  # required for voc and yolo; optional for coco
    train: {images: images/train, annotations: annotations/train.json}
    val:   {images: images/val,   annotations: annotations/val.json}
    synthesize: {kind: shapes, train_images: 480, val_images: 96, image_size: 256, seed: 0}

For ``voc``, ``annotations`` is a folder of Pascal VOC xml files and a split may add
``list: ImageSets/Main/train.txt`` (one image id, i.e. xml stem, per line).

For ``yolo`` (darknet txt), a split names ``images`` (a folder of pictures) and ``labels`` (a
folder with one ``<image stem>.txt`` per picture, a line ``class cx cy w h`` per object, class a
0-based index into ``classes``, the rest normalised by the image width / height); a picture
without a txt has no objects::

    format: yolo
    classes: [cat, dog]
    train: {images: images/train, labels: labels/train}

Readers work in two modes. *Strict* (the default, ``problems=None``): the first problem raises
:class:`DatasetError` naming the file, the annotation (id, object or line) and the fix.
*Collecting* (``problems=[]``): every problem is appended to the list as a :class:`Problem` and
reading goes on; records that could be built are returned (bad boxes left out of them), and each
problem names the image record it spoils (``Problem.image``) so a caller can drop those records.
"""
from __future__ import annotations

import difflib
import json
import math
import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import image_io
from .records import DatasetError, ImageRecord

FORMATS = ("coco", "voc", "yolo")
TOP_KEYS = ("format", "root", "classes", "train", "val", "test", "synthesize")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_KEYS = ("images", "annotations", "labels", "list")
SYNTH_KEYS = {"kind": "shapes", "train_images": 480, "val_images": 96, "image_size": 256, "seed": 0}
BOX_TOLERANCE = 1.0  # px a box may stick out of the image before it is an error
MAX_IMAGE_SIDE = 2**31 - 1  # px; an annotated width / height above this (PNG's limit) is a typo
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Problem kinds, as ``Problem.kind`` and the check report name them.
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "image size mismatch"
BOX_OUTSIDE = "box outside image"
BOX_EMPTY = "zero or negative size"
UNKNOWN_CLASS = "unknown class"
MALFORMED = "malformed annotation"
MISSING_ANNOTATION = "missing annotation"
UNREADABLE_ANNOTATIONS = "unreadable annotation file"
PROBLEM_KINDS = (MISSING_IMAGE, UNREADABLE_IMAGE, SIZE_MISMATCH, BOX_OUTSIDE, BOX_EMPTY, UNKNOWN_CLASS,
                 MALFORMED, MISSING_ANNOTATION, UNREADABLE_ANNOTATIONS)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, found by a reader in collecting mode.

    ``file``: the annotation file (COCO json, VOC xml, YOLO txt) or id list the problem is in;
    ``where``: the annotation inside it (``annotation id 42``, ``object 1``, ``line 3``,
    ``images[2]``), empty for the whole file; ``line``: line number in ``file`` when known;
    ``image``: absolute path of the image whose record the problem spoils (None when no record
    could be made, e.g. an unparsable file). ``str(problem)`` is the strict mode's error text.
    """

    kind: str
    file: str
    where: str
    message: str
    line: int | None = None
    image: str | None = None

    def __str__(self) -> str:
        loc = f"{self.file}: {self.where}: " if self.where else f"{self.file}: "
        line = f" [line {self.line}]" if self.line is not None and not self.where.startswith("line ") else ""
        return f"{loc}{self.message}{line}"


class _Sink:
    """Raises (strict mode, ``problems is None``) or collects (a list) reader problems."""

    def __init__(self, problems: list[Problem] | None) -> None:
        self.problems = problems

    def __call__(self, kind: str, file: Path | str, where: str, message: str, line: int | None = None,
                 image: str | None = None) -> None:
        problem = Problem(kind, str(file), where, message, line, image)
        if self.problems is None:
            raise DatasetError(str(problem))
        self.problems.append(problem)


@dataclass
class SplitSpec:
    """Absolute paths of one split: image folder, annotation file (coco), xml folder (voc) or
    label txt folder (yolo, the YAML's ``labels``), and for voc an optional id list file."""

    images: Path
    annotations: Path
    list: Path | None = None


@dataclass
class DatasetSpec:
    """A parsed dataset YAML. ``category_ids[c]`` is the id written to COCO results for
    contiguous label ``c`` (the json's category id for coco, ``c + 1`` for voc and yolo)."""

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


def _parse_split(name: str, s: Any, fmt: str, root: Path, path: Path) -> SplitSpec:
    """One split's mapping -> absolute paths, with the keys its format reads."""
    if not isinstance(s, dict):
        raise DatasetError(f"{path}: split '{name}' must be a mapping like "
                           f"{{images: images/{name}, {'labels' if fmt == 'yolo' else 'annotations'}: ...}}")
    _check_keys(s, SPLIT_KEYS, f"split '{name}'", path)
    images = _require(s, "images", f"split '{name}'", path, f"'images: images/{name}'")
    if fmt == "yolo":
        if "annotations" in s:
            raise DatasetError(f"{path}: split '{name}': 'annotations' is read only when 'format' is one of "
                               f"coco, voc; for yolo name the folder of label txt files, e.g. "
                               f"'labels: labels/{name}'")
        ann = _require(s, "labels", f"split '{name}'", path, f"'labels: labels/{name}'")
    else:
        if "labels" in s:
            raise DatasetError(f"{path}: split '{name}': 'labels' (a folder of txt files) is only valid for "
                               f"format yolo; {fmt} reads 'annotations'")
        ann = _require(s, "annotations", f"split '{name}'", path,
                       f"'annotations: annotations/{name}.json'" if fmt == "coco" else "'annotations: Annotations'")
    if "list" in s and fmt != "voc":
        raise DatasetError(f"{path}: field 'list' in split '{name}' is only valid for format voc; remove it")
    return SplitSpec(root / str(images), root / str(ann), root / str(s["list"]) if s.get("list") else None)


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

    splits = {name: _parse_split(name, raw[name], fmt, root, path) for name in SPLIT_NAMES if name in raw}
    if not splits:
        raise DatasetError(f"{path}: no split given; add e.g. 'train: {{images: ..., annotations: ...}}'")

    classes = raw.get("classes")
    if classes is not None:
        if (not isinstance(classes, list) or not classes
                or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
            raise DatasetError(f"{path}: field 'classes' must be a non-empty list of distinct names, "
                               f"e.g. 'classes: [cat, dog]'")
    elif fmt in ("voc", "yolo"):
        raise DatasetError(f"{path}: missing required field 'classes' (needed for {fmt}); add e.g. "
                           f"'classes: [cat, dog]'" + (" in the order of the txt files' class indices"
                                                       if fmt == "yolo" else ""))

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
    if fmt in ("voc", "yolo"):
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


def read_split(spec: DatasetSpec, split: str, problems: list[Problem] | None = None,
               decode: bool = False) -> list[ImageRecord]:
    """Read one split into records (boxes float32 [N,4] xyxy *original* pixels, labels int64
    [N] contiguous). Generates the synthetic data first when configured and missing.

    ``problems=None``: strict, the first problem raises :class:`DatasetError`. A list: collecting
    mode, problems are appended (see the module docstring) and every image is also opened to
    check that it can be read and has the annotated size (``decode=True``: fully decoded, else
    only its header is read).
    """
    if split not in spec.splits:
        raise DatasetError(f"{spec.path}: no split '{split}'; available: {', '.join(spec.splits)}")
    _ensure_data(spec, split)
    s = spec.splits[split]
    if spec.format == "coco":
        return read_coco(s.annotations, s.images, spec.class_names, spec.category_ids, problems, decode)
    if spec.format == "yolo":
        return read_yolo(s.annotations, s.images, spec.class_names, problems, decode)
    return read_voc(s.annotations, s.images, spec.class_names, s.list, problems, decode)


def _ensure_data(spec: DatasetSpec, split: str | None) -> None:
    """Run the configured synthesizer when the split's (or any split's) annotations are missing.
    It writes only into a folder of its own (see :func:`core.data.synthetic.synthesize_shapes`):
    a ``root`` holding anything else, e.g. real data under a copied demo YAML, is refused."""
    if not spec.synthesize:
        return
    splits = [spec.splits[split]] if split else list(spec.splits.values())
    if all(s.annotations.exists() for s in splits):
        return
    from .synthetic import SyntheticRootError, synthesize_shapes

    cfg = spec.synthesize
    try:
        synthesize_shapes(spec.root, cfg["train_images"], cfg["val_images"], cfg["image_size"], cfg["seed"])
    except SyntheticRootError as err:
        raise DatasetError(f"{spec.path}: field 'synthesize' would write the demo shapes into 'root' {spec.root}, "
                           f"but {err}; if that is your own data, remove the 'synthesize:' line, otherwise point "
                           f"'root' at an empty or new folder") from None
    for s in splits:
        if not s.annotations.exists():
            raise DatasetError(f"{spec.path}: 'synthesize' wrote {spec.root}/annotations/{{train,val}}.json "
                               f"but the split points to {s.annotations}; use the default split paths")


# ----------------------------------------------------------------------------- helpers


def _box_problem(box: np.ndarray, width: int, height: int) -> tuple[str, str] | None:
    """``(kind, message)`` when an xyxy box in original pixels has zero / negative size or lies
    outside the ``width`` x ``height`` image by more than ``BOX_TOLERANCE`` px, else None."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite([x1, y1, x2, y2]).all() or x2 <= x1 or y2 <= y1:
        return BOX_EMPTY, f"box {[x1, y1, x2, y2]} (xyxy) has zero or negative size; fix or remove it"
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        return BOX_OUTSIDE, (f"box {[x1, y1, x2, y2]} (xyxy) lies outside the {width}x{height} image "
                             f"by more than {t:g} px; fix the box or the image size")
    clipped = _clip_box(box, width, height)  # float32, as the box will be stored
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return BOX_OUTSIDE, (f"box {[x1, y1, x2, y2]} (xyxy) has nothing left inside the {width}x{height} image; "
                             "fix or remove it")
    return None


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """An xyxy box clipped to the image, float32."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], dtype=np.float32)


def _check_box(box: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Validate an xyxy box in original pixels and clip it to the image; ``where`` prefixes errors."""
    problem = _box_problem(box, width, height)
    if problem is not None:
        raise DatasetError(f"{where}: {problem[1]}")
    return _clip_box(box, width, height)


def _to_arrays(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


def image_size(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` of the displayed picture (EXIF orientation applied) from the file's header
    (``decode``: decode all pixels too, which also finds truncated files); see
    ``core.data.image_io.image_size``. Raises ``image_io.ImageReadError`` (a DatasetError, so a
    ValueError) naming the file when it cannot be read or declares too many pixels."""
    return image_io.image_size(path, decode)


def _verify_images(items: list[tuple[ImageRecord, Path, str]], sink: _Sink, decode: bool) -> None:
    """Collecting mode: report each record whose image is missing, unreadable or of another size
    than annotated. ``items``: ``(record, annotation file, where in it)``."""
    for rec, file, where in items:
        if not Path(rec.file_name).is_file():
            sink(MISSING_IMAGE, file, where, f"image file '{rec.file_name}' not found; check the split's "
                                             f"'images' folder or remove the entry", image=rec.file_name)
            continue
        try:
            size = image_size(rec.file_name, decode)
        except (OSError, ValueError, SyntaxError) as e:
            sink(UNREADABLE_IMAGE, file, where, f"cannot read image '{rec.file_name}' ({getattr(e, 'reason', e)}); "
                                                f"replace or remove it", image=rec.file_name)
            continue
        if size != (rec.width, rec.height):
            sink(SIZE_MISMATCH, file, where, f"image '{rec.file_name}' is {size[0]}x{size[1]} but the annotation "
                                             f"says {rec.width}x{rec.height}; fix its width/height",
                 image=rec.file_name)


def _check_images_exist(records: list[ImageRecord], ann: Path, sources: list[Path] | None = None) -> None:
    """Strict mode: raise naming ``ann`` (and, given ``sources[i]`` the file of ``records[i]``, the
    file of the first missing image) when image files are missing."""
    missing = [k for k, r in enumerate(records) if not Path(r.file_name).is_file()]
    if missing:
        src = f" (named in {sources[missing[0]]})" if sources else ""
        raise DatasetError(f"{ann}: {len(missing)} of {len(records)} image files not found, e.g. "
                           f"{records[missing[0]].file_name}{src}; check the split's 'images' folder")


def _image_path(image_dir: Path, name: Any) -> tuple[str | None, str]:
    """``(absolute path, "")`` of the image file ``name`` (relative to ``image_dir``) or, when ``name``
    cannot be a file path (not a string, empty, a NUL byte, too long for the file system),
    ``(None, what is wrong)``. Whether the file exists is checked later."""
    if not isinstance(name, str) or not name:
        return None, f"must be a non-empty file name, got {name!r}"
    try:
        path = (image_dir / name).resolve()
        path.is_file()  # raises for names the OS refuses (ENAMETOOLONG) instead of saying False
    except (OSError, ValueError) as e:
        return None, f"{name!r} is not a usable file name ({e})"
    return str(path), ""


def _finite(v: Any) -> bool:
    """A real number (no bool) that is finite as a float (ints too large for a float are not)."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


# ----------------------------------------------------------------------------- COCO


def _load_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found; check the split's 'annotations' field") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, ints over 4300 digits
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
    """(id, name) of the json's categories, sorted by id; ids must be distinct integers and names
    distinct non-empty strings."""
    cats: list[tuple[int, str]] = []
    first: dict[Any, int] = {}
    for i, c in enumerate(data["categories"]):
        where = f"{data['__path__']}: categories[{i}]"
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


def _resolve_coco_classes(class_names: list[str], cats: list[tuple[int, str]], ann: Path,
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


def _entry_fields(entry: Any, keys: tuple[str, ...], file: Path, where: str, sink: _Sink) -> list | None:
    """``_fields`` that reports a malformed entry to ``sink`` (returning None) instead of raising."""
    try:
        return _fields(entry, keys, f"{file}: {where}")
    except DatasetError as err:
        sink(MALFORMED, file, where, str(err).split(f"{where}: ", 1)[-1])
        return None


def read_coco(ann_file: Path, image_dir: Path, class_names: list[str], category_ids: list[int],
              problems: list[Problem] | None = None, decode: bool = False) -> list[ImageRecord]:
    """Read a COCO detection json. Keeps the json image ids, maps the chosen categories to
    labels ``0..C-1`` (annotations of other json categories are skipped), skips
    ``iscrowd=1``, converts ``xywh`` to ``xyxy`` original pixels. ``problems``: see
    :func:`read_split` (problems name the json and the image index or annotation id)."""
    sink = _Sink(problems)
    ann_file = Path(ann_file)
    try:
        data = _load_json(ann_file)
        cats = dict(_coco_categories(data))
    except DatasetError as err:
        if problems is None:
            raise
        sink(UNREADABLE_ANNOTATIONS, ann_file, "", str(err).split(f"{ann_file}: ", 1)[-1])
        return []
    label_of = {cid: c for c, cid in enumerate(category_ids)}
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
        path, bad = _image_path(image_dir, fname)
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
        if a.get("iscrowd", 0) == 1 or cid not in label_of:
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            sink(MALFORMED, ann_file, where, f"bbox must be [x, y, width, height], got {bbox!r}", image=image)
            continue
        x, y, bw, bh = (float(v) for v in bbox)  # floats: a sum too large is inf (a problem), no OverflowError
        box = np.array([x, y, x + bw, y + bh], dtype=np.float64)
        problem = _box_problem(box, rec.width, rec.height)
        if problem is not None:
            sink(problem[0], ann_file, where, problem[1], image=image)
            continue
        boxes[iid].append(_clip_box(box, rec.width, rec.height))
        labels[iid].append(label_of[cid])
    for iid, rec in records.items():
        rec.boxes, rec.labels = _to_arrays(boxes[iid], labels[iid])
    if problems is None:
        _check_images_exist(list(records.values()), ann_file)
    else:
        _verify_images([(r, ann_file, where_of[i]) for i, r in records.items()], sink, decode)
    return list(records.values())


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
    sink = _Sink(problems)
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
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            s = line.split()[0]
            if s not in ids:
                sink(MISSING_ANNOTATION, list_file, f"line {n}", f"id '{s}' has no annotation {ann_dir / (s + '.xml')}",
                     line=n)
                continue
            stems.append(s)
    label_of = {n: c for c, n in enumerate(class_names)}
    records: list[ImageRecord] = []
    checks: list[tuple[ImageRecord, Path, str]] = []
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
        image, bad = _image_path(image_dir, fname)
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
            diff = obj.find("difficult")
            difficult = diff is not None and bool(diff.text) and diff.text.strip() not in ("0", "")
            try:
                x1, y1, x2, y2 = (_xml_number(obj, f"bndbox/{t}", owhere) for t in ("xmin", "ymin", "xmax", "ymax"))
            except DatasetError as err:
                report(MALFORMED, str(err).split(f"{owhere}: ", 1)[-1])
                continue
            box = np.array([x1 - 1, y1 - 1, x2, y2], dtype=np.float64)
            problem = _box_problem(box, w, h)
            if problem is not None:
                report(*problem)
                continue
            (ignore_boxes if difficult else boxes).append(_clip_box(box, w, h))
            (ignore_labels if difficult else labels).append(label_of[name])
        rec = ImageRecord(ids[stem], image, w, h, *_to_arrays(boxes, labels),
                          *_to_arrays(ignore_boxes, ignore_labels))
        records.append(rec)
        checks.append((rec, xml_path, ""))
    if not records and not stems:
        sink(UNREADABLE_ANNOTATIONS, ann_dir, "", "no xml annotations found; check the split's 'annotations' field")
        return []
    if problems is None:
        if not records:
            raise DatasetError(f"{ann_dir}: no xml annotations found; check the split's 'annotations' field")
        _check_images_exist(records, ann_dir, [x for _, x, _ in checks])
    else:
        _verify_images(checks, sink, decode)
    return records


# ----------------------------------------------------------------------------- YOLO


def list_images(folder: Path) -> list[Path]:
    """Image files (by suffix, see ``IMAGE_SUFFIXES``) directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _yolo_line(tokens: list[str]) -> tuple[int, float, float, float, float] | str:
    """Parse ``class cx cy w h``; returns the values or an error message."""
    if len(tokens) != 5:
        return f"expected 5 values 'class cx cy w h', got {len(tokens)}"
    try:
        cls_f = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return f"values {tokens} are not numbers"
    if not math.isfinite(cls_f) or cls_f != int(cls_f):
        return f"class index '{tokens[0]}' is not an integer"
    return (int(cls_f), *values)  # type: ignore[return-value]


def read_yolo(label_dir: Path, image_dir: Path, class_names: list[str], problems: list[Problem] | None = None,
              decode: bool = False) -> list[ImageRecord]:
    """Read a YOLO (darknet txt) split: every image in ``image_dir`` (sorted) and its
    ``label_dir/<stem>.txt`` (absent: no objects). A line ``class cx cy w h`` (class a 0-based
    index into ``class_names``; centre, width, height normalised by the image size) becomes the
    xyxy box ``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W, (cy + h/2) H)`` in original pixels.
    The image size is read from the file. ``image_id`` is the 1-based position of the image in
    the sorted folder listing. ``problems``: see :func:`read_split` (problems name the txt file
    and line).
    """
    sink = _Sink(problems)
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    if not image_dir.is_dir():
        sink(UNREADABLE_ANNOTATIONS, image_dir, "", "images folder not found; check the split's 'images' field")
        return []
    if not label_dir.is_dir():
        sink(UNREADABLE_ANNOTATIONS, label_dir, "", "labels folder not found; check the split's 'labels' field")
        return []
    images = list_images(image_dir)
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            sink(MALFORMED, p, "", f"two images share the stem '{p.stem}' ({by_stem[p.stem].name}, {p.name}), so "
                                   f"{p.stem}.txt is ambiguous; rename one", image=str(p.resolve()))
        by_stem.setdefault(p.stem, p)
    for txt in sorted(label_dir.glob("*.txt")):
        if txt.stem not in by_stem and txt.name != "classes.txt":
            sink(MISSING_IMAGE, txt, "", f"no image '{txt.stem}.*' in {image_dir}; add the image or remove the "
                                         f"label file")
    records: list[ImageRecord] = []
    for k, path in enumerate(images):
        image = str(path.resolve())
        try:
            w, h = image_size(path, decode and problems is not None)
        except (OSError, ValueError, SyntaxError) as e:
            sink(UNREADABLE_IMAGE, path, "", f"cannot read image ({getattr(e, 'reason', e)}); replace or remove it",
                 image=image)
            continue
        txt = label_dir / f"{path.stem}.txt"
        boxes, labels = [], []
        if txt.is_file():
            try:
                lines = txt.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                sink(UNREADABLE_ANNOTATIONS, txt, "", f"cannot read label file ({e})", image=image)
                lines = []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parsed = _yolo_line(line.split())
                if isinstance(parsed, str):
                    sink(MALFORMED, txt, f"line {n}", f"{parsed}; fix the line", n, image)
                    continue
                c, cx, cy, bw, bh = parsed
                if not 0 <= c < len(class_names):
                    sink(UNKNOWN_CLASS, txt, f"line {n}", f"class index {c} is not in 0..{len(class_names) - 1} "
                                                         f"({', '.join(class_names)}); fix the line or 'classes'",
                         n, image)
                    continue
                xyxy = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                problem = _box_problem(xyxy, w, h)
                if problem is not None:
                    sink(problem[0], txt, f"line {n}", problem[1], n, image)
                    continue
                boxes.append(_clip_box(xyxy, w, h))
                labels.append(c)
        records.append(ImageRecord(k + 1, image, w, h, *_to_arrays(boxes, labels)))
    if not images and problems is None:
        raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found; check the split's "
                           f"'images' field")
    return records
