"""Dataset description (a small YAML file); the COCO / Pascal VOC / YOLO readers are in ``core.data.formats``.

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

Readers are strict or collecting (see ``core.data.problems``): :func:`read_split` passes ``problems`` on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config.schema import nearest_name
from core.data.formats import FORMATS
from core.data.problems import Problem
from core.data.records import DatasetError, ImageRecord

TOP_KEYS = ("format", "root", "classes", "train", "val", "test", "synthesize")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_KEYS = ("images", "annotations", "labels", "list")
SYNTH_KEYS = {"kind": "shapes", "train_images": 480, "val_images": 96, "image_size": 256, "seed": 0}


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
    classes_listed: bool = True  # False: the YAML has no 'classes' (coco: they are a json's categories)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _nearest(key: str, valid: tuple[str, ...] | list[str]) -> str:
    near = nearest_name(key, valid)
    hint = f"did you mean '{near}'? " if near else ""
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
    """One split's mapping -> absolute paths, with the keys its format (``FORMATS[fmt]``) reads."""
    form = FORMATS[fmt]
    key = form.annotations_key
    if not isinstance(s, dict):
        raise DatasetError(f"{path}: split '{name}' must be a mapping like {{images: images/{name}, {key}: ...}}")
    _check_keys(s, SPLIT_KEYS, f"split '{name}'", path)
    images = _require(s, "images", f"split '{name}'", path, f"'images: images/{name}'")
    for other in SPLIT_KEYS:
        if other in s and other != "images" and other != key and other not in form.optional_keys:
            readers = [n for n, f in FORMATS.items() if other in (f.annotations_key, *f.optional_keys)]
            raise DatasetError(f"{path}: split '{name}': '{other}' is read only when 'format' is "
                               f"one of {', '.join(readers)}; {fmt} reads '{key}', e.g. "
                               f"'{key}: {form.example.format(split=name)}'")
    ann = _require(s, key, f"split '{name}'", path, f"'{key}: {form.example.format(split=name)}'")
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
    except IsADirectoryError:
        yamls = sorted(p.name for p in path.glob("*.y*ml"))
        found = f" ({', '.join(yamls[:3])} there)" if yamls else ""
        raise DatasetError(f"{path}: is a folder; pass its dataset YAML{found}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file; pass the dataset YAML") from None
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of keys (format, root, train, ...) at top level")
    _check_keys(raw, TOP_KEYS, "the top level", path)

    fmt = _require(raw, "format", "the top level", path, "'format: coco'")
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: field 'format' is '{fmt}'; use one of {', '.join(FORMATS)}")
    form = FORMATS[fmt]
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
    elif form.classes_required is not None:
        raise DatasetError(f"{path}: missing required field 'classes' (needed for {fmt}); add e.g. "
                           f"'classes: [cat, dog]'{form.classes_required}")

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

    spec = DatasetSpec(path, fmt, root, list(classes or []), [], splits, synth, classes is not None)
    if form.category_ids is None:
        spec.category_ids = list(range(1, len(spec.class_names) + 1))
    else:
        _ensure_data(spec, None)
        spec.class_names, spec.category_ids = form.category_ids(spec)
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
    return FORMATS[spec.format].read(spec.splits[split], spec, problems, decode)


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
