"""Annotation formats a dataset YAML can name (``format: coco | voc | yolo``): one entry each in
:data:`FORMATS`, naming the split key that points at the annotations, whether the YAML must list the
classes, how the classes' ids are found and the reader (one module per format in this package).

Adding a format is a reader module here and one entry in :data:`FORMATS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from core.data.formats import coco, voc, yolo
from core.data.records import DatasetError


@dataclass(frozen=True)
class DatasetFormat:
    """What ``format: <name>`` means.

    ``annotations_key``: the split key that names the annotations (``annotations`` or ``labels``),
    ``example``: that key's example value for split ``{split}``; ``optional_keys``: other split keys
    the format reads (voc: ``list``); ``classes_required``: None when ``classes`` may be left out,
    else why it is needed; ``read(split, spec, problems, decode)``: the split's records
    (``core.data.spec.read_split`` documents the modes); ``category_ids(spec)``: the ``(class_names,
    category_ids)`` of a parsed spec (default: the YAML's classes with ids 1..C).
    """

    annotations_key: str
    example: str
    optional_keys: tuple[str, ...]
    classes_required: str | None
    read: Callable[[Any, Any, Any, bool], list]
    category_ids: Callable[[Any], tuple[list[str], list[int]]] | None = None


def _coco_category_ids(spec: Any) -> tuple[list[str], list[int]]:
    """The classes and their COCO ids, from the smallest split annotation json (the YAML's ``classes``
    pick and order them)."""
    existing = [s.annotations for s in spec.splits.values() if s.annotations.is_file()]
    if not existing:
        first = next(iter(spec.splits.values())).annotations
        raise DatasetError(f"{first}: annotation file not found (from {spec.path}); check the 'annotations' "
                           f"fields and 'root' ({spec.root})")
    smallest = min(existing, key=lambda p: p.stat().st_size)
    cats = coco.coco_categories(coco.load_coco_json(smallest), smallest)
    return coco.resolve_coco_classes(spec.class_names, cats, smallest, spec.path)


FORMATS: dict[str, DatasetFormat] = {
    "coco": DatasetFormat(
        "annotations", "annotations/{split}.json", (), None,
        lambda s, spec, problems, decode: coco.read_coco(s.annotations, s.images, spec.class_names,
                                                         spec.category_ids, problems, decode,
                                                         not spec.classes_listed),
        _coco_category_ids),
    "voc": DatasetFormat(
        "annotations", "Annotations", ("list",), "",
        lambda s, spec, problems, decode: voc.read_voc(s.annotations, s.images, spec.class_names, s.list,
                                                       problems, decode)),
    "yolo": DatasetFormat(
        "labels", "labels/{split}", (), " in the order of the txt files' class indices",
        lambda s, spec, problems, decode: yolo.read_yolo(s.annotations, s.images, spec.class_names, problems,
                                                         decode)),
}
