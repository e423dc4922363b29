"""Dataset validation: every problem of every split, class counts and a box-size histogram.

``check_dataset(spec)`` reads each split with the readers' collecting mode (see
``core.data.spec``), so one run lists *all* problems (missing or unreadable images, boxes
outside the image or of zero size, unknown classes, malformed entries), each with its file and
annotation id / object / line. ``load_checked_records`` is what training calls at start-up: it
refuses a broken dataset with the report, or drops the spoiled records when asked to.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .records import DatasetError, ImageRecord
from .formats.coco import load_coco_json
from .problems import UNREADABLE_IMAGE, Problem
from .spec import DatasetSpec, read_split

SIZE_BINS = ("small", "medium", "large")
SMALL_AREA = 32 ** 2   # COCO: small < 32^2 px^2 <= medium < 96^2 px^2 <= large (box w*h, original pixels)
LARGE_AREA = 96 ** 2
BAR_WIDTH = 30


def size_bin(boxes: np.ndarray) -> np.ndarray:
    """COCO size bin (0 small, 1 medium, 2 large) of each xyxy box ``[N, 4]`` (original pixels),
    by its area ``w * h``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (area >= SMALL_AREA).astype(np.int64) + (area >= LARGE_AREA).astype(np.int64)


@dataclass
class SplitReport:
    """What the check found in one split.

    ``records``: every record the reader could build (bad boxes already left out);
    ``problems``: every problem, in reading order; ``warnings``: one line per image path of the
    annotations that leaves the dataset root (:func:`paths_leaving_root`), no problem by itself.
    """

    split: str
    source: str
    class_names: list[str]
    records: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def bad_images(self, ignore_kinds: Iterable[str] = ()) -> set[str]:
        """Absolute paths of images named by a problem (of a kind not in ``ignore_kinds``)."""
        ignore = set(ignore_kinds)
        return {p.image for p in self.problems if p.image is not None and p.kind not in ignore}

    def clean_records(self, ignore_kinds: Iterable[str] = ()) -> list[ImageRecord]:
        """The records no problem (of a kind not in ``ignore_kinds``) names, in reading order."""
        bad = self.bad_images(ignore_kinds)
        return [r for r in self.records if r.file_name not in bad]

    def counts(self) -> np.ndarray:
        """int64 ``[C, 4]``: per class, the number of boxes in each size bin (small, medium, large)
        and the number of images with at least one box of the class."""
        c = len(self.class_names)
        table = np.zeros((c, 4), dtype=np.int64)
        for rec in self.records:
            if len(rec.labels):
                np.add.at(table, (rec.labels, size_bin(rec.boxes)), 1)
                table[np.unique(rec.labels), 3] += 1
        return table

    def format(self) -> str:
        """Class table and box-size histogram of this split, as text."""
        table = self.counts()
        boxes = table[:, :3].sum(axis=1)
        name_w = max([len("class"), len("all")] + [len(n) for n in self.class_names])
        lines = [f"[{self.split}] {len(self.records)} images, {int(boxes.sum())} boxes, "
                 f"{len(self.problems)} problems ({self.source})",
                 f"  {'class':<{name_w}}  {'boxes':>7}  {'images':>7}  {'small':>7}  {'medium':>7}  {'large':>7}"]
        for name, row, n in zip(self.class_names, table, boxes):
            lines.append(f"  {name:<{name_w}}  {n:>7}  {row[3]:>7}  {row[0]:>7}  {row[1]:>7}  {row[2]:>7}")
        with_boxes = sum(1 for r in self.records if len(r.labels))
        tot = table[:, :3].sum(axis=0)
        lines.append(f"  {'all':<{name_w}}  {int(boxes.sum()):>7}  {with_boxes:>7}  {tot[0]:>7}  {tot[1]:>7}  "
                     f"{tot[2]:>7}")
        lines.append("  box sizes (COCO areas w*h in original pixels):")
        peak = max(int(tot.max()), 1)
        labels = ("small  (< 32^2)", "medium (< 96^2)", "large  (>= 96^2)")
        for label, n in zip(labels, tot):
            bar = "#" * int(round(BAR_WIDTH * int(n) / peak))
            lines.append(f"    {label:<17} {bar:<{BAR_WIDTH}} {int(n)}")
        return "\n".join(lines)


@dataclass
class CheckReport:
    """The check of a whole dataset: one :class:`SplitReport` per split checked."""

    spec: DatasetSpec
    splits: dict[str, SplitReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.splits.values() for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format_problems(self) -> str:
        """Every problem on its own line: ``[split] kind: file: where: message``."""
        lines = [f"problems: {len(self.problems)}"]
        for s in self.splits.values():
            for p in s.problems:
                lines.append(f"  [{s.split}] {p.kind}: {p}")
        return "\n".join(lines)

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.splits.values() for w in s.warnings]

    def format(self) -> str:
        """The full report: dataset line, each split's tables, then every problem (or 'no problems')
        and every warning."""
        head = (f"dataset {self.spec.path}: format {self.spec.format}, {self.spec.num_classes} classes "
                f"({', '.join(self.spec.class_names)}), splits {', '.join(self.splits)}")
        parts = [head] + [s.format() for s in self.splits.values()]
        parts.append(self.format_problems() if self.problems else "no problems found")
        if self.warnings:
            parts.append(f"warnings: {len(self.warnings)}")
            parts += [f"  [{s.split}] {w}" for s in self.splits.values() for w in s.warnings]
        return "\n".join(parts)


def _source(spec: DatasetSpec, split: str) -> str:
    s = spec.splits[split]
    return f"images {s.images}, {'labels' if spec.format == 'yolo' else 'annotations'} {s.annotations}"


def _leaves(path: str, folders: Sequence[str]) -> bool:
    return not any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def paths_leaving_root(spec: DatasetSpec, split: str) -> list[str]:
    """One warning line per image path written in the split's annotations (COCO ``file_name``,
    VOC ``<filename>``) that leaves the dataset root: ``..`` parts or an absolute path taking it
    outside both ``root`` and the split's image folder. Judged on the path as written (symbolic
    links inside the root, as ``convert`` makes, are fine). YOLO pairs files found in the image
    folder, so it has none. Files the readers cannot parse are left to their problems."""
    s = spec.splits[split]
    folders = [os.path.normpath(spec.root), os.path.normpath(s.images)]
    fix = "keep the images under the root, or fix the path"

    def outside(name: str) -> str | None:
        path = os.path.normpath(os.path.join(s.images, name))
        return path if _leaves(path, folders) else None

    lines: list[str] = []
    if spec.format == "coco":
        try:
            images = load_coco_json(s.annotations)["images"]
        except DatasetError:
            return []
        for i, im in enumerate(images if isinstance(images, list) else []):
            if isinstance(im, dict) and isinstance(im.get("file_name"), str):
                target = outside(im["file_name"])
                if target:
                    where = f"image id {im['id']}" if "id" in im else f"images[{i}]"
                    lines.append(f"{s.annotations}: {where}: file_name '{im['file_name']}' leaves the dataset root "
                                 f"{spec.root} (it points to {target}); {fix}")
    elif spec.format == "voc" and s.annotations.is_dir():
        xmls = sorted(s.annotations.glob("*.xml"))
        if s.list is not None and s.list.is_file():
            wanted = {line.split()[0] for line in s.list.read_text().splitlines() if line.strip()}
            xmls = [p for p in xmls if p.stem in wanted]
        for xml_path in xmls:
            try:
                name = (ET.parse(xml_path).getroot().findtext("filename") or "").strip()
            except (ET.ParseError, OSError):
                continue
            target = outside(name) if name else None
            if target:
                lines.append(f"{xml_path}: <filename> '{name}' leaves the dataset root {spec.root} "
                             f"(it points to {target}); {fix}")
    return lines


def check_dataset(spec: DatasetSpec, splits: Sequence[str] | None = None, decode: bool = False,
                  path_warnings: bool = True) -> CheckReport:
    """Read ``splits`` (default: all of the spec's) collecting every problem; images are opened
    to check they can be read and have the annotated size (``decode``: decode all pixels, which
    also finds truncated files; otherwise headers only). ``path_warnings``: also list the image
    paths that leave the dataset root (:func:`paths_leaving_root`; the annotations are read again)."""
    names = list(splits) if splits is not None else list(spec.splits)
    reports: dict[str, SplitReport] = {}
    for name in names:
        problems: list[Problem] = []
        records = read_split(spec, name, problems, decode)
        warnings = paths_leaving_root(spec, name) if path_warnings else []
        reports[name] = SplitReport(name, _source(spec, name), list(spec.class_names), records, problems, warnings)
    return CheckReport(spec, reports)


def load_checked_records(spec: DatasetSpec, splits: Sequence[str], skip_bad_records: bool,
                         skip_bad_images: bool = False, optional: Sequence[str] = ("val", "test")
                         ) -> tuple[dict[str, list[ImageRecord]], list[str]]:
    """Records of ``splits`` for training, after a check of the dataset. A split the YAML lacks is
    an error unless it is ``optional`` (then it is left out of the result).

    Each split's check is remembered (``core.data.check_cache``): a split whose annotations and
    images have not changed since is not read or checked again, and a note says so.

    A dataset with problems raises :class:`DatasetError` carrying the whole check report unless
    ``skip_bad_records``; then every record a problem names is left out and the returned notes
    say how many per split. With ``skip_bad_images`` unreadable images are no start-up problem:
    their records stay and the data loader skips them when they fail to decode (and counts them).
    Returns ``({split: records}, notes)``.
    """
    for name in splits:
        if name not in spec.splits and name not in optional:
            raise DatasetError(f"{spec.path}: no split '{name}'; available: {', '.join(spec.splits)}")
    from .check_cache import checked_split

    notes: list[str] = []
    reports: dict[str, SplitReport] = {}
    for name in (s for s in splits if s in spec.splits):
        def check(name: str = name) -> tuple[list[ImageRecord], list[Problem]]:
            problems: list[Problem] = []
            return read_split(spec, name, problems), problems

        records, problems, cached = checked_split(spec, name, check)
        reports[name] = SplitReport(name, _source(spec, name), list(spec.class_names), records, problems, [])
        if cached:
            notes.append(f"dataset check: {name} unchanged since it was last checked (annotations, image sizes and "
                         f"times); its result is reused")
    report = CheckReport(spec, reports)
    ignore = (UNREADABLE_IMAGE,) if skip_bad_images else ()
    fatal = [p for p in report.problems if p.kind not in ignore]
    if fatal and not skip_bad_records:
        raise DatasetError(
            f"{spec.path}: the dataset has {len(fatal)} problem(s); fix them, or set dataset.skip_bad_records = True "
            f"to train without the records they affect. Check report "
            f"(python -m utils.dataset check {spec.path}):\n{report.format()}")
    out: dict[str, list[ImageRecord]] = {}
    for name, s in report.splits.items():
        out[name] = s.clean_records(ignore)
        if skip_bad_records:
            dropped = len(s.records) - len(out[name])
            whole = sum(1 for p in s.problems if p.image is None)
            if dropped or whole:
                notes.append(f"dataset.skip_bad_records: skipped {dropped} of {len(s.records)} {name} images with "
                             f"bad records" + (f" and {whole} problem(s) affecting no single readable image "
                                               f"(files or entries that could not be read)" if whole else "")
                             + f"; see python -m utils.dataset check {spec.path}")
    if skip_bad_images:
        for name, s in report.splits.items():
            unreadable = [p for p in s.problems if p.kind == UNREADABLE_IMAGE]
            if unreadable:
                notes.append(f"dataset.skip_bad_images: {len(unreadable)} unreadable {name} image(s) will be "
                             f"skipped as the loader meets them, e.g. {unreadable[0].image}")
    return out, notes
