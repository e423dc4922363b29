"""The start-up dataset check, remembered: a second start on the same data skips reading and checking.

Training checks every split it reads at start-up (``core.data.check.load_checked_records``): the
annotations are parsed and every image header is opened. This module keeps what one split's check
found (its records and problems) in a cache file, and gives it back when nothing it depends on has
changed:

* the annotations' content: the annotation file, or every file in the annotation folder (VOC xml,
  YOLO txt), and a VOC id list, byte for byte (SHA-256);
* the split's paths, format and classes, and the names in its image folder;
* every image a record or problem names: its size in bytes and modification time.

The cache lives in ``$DETLAB_CACHE`` or ``$XDG_CACHE_HOME/detlab`` (``~/.cache/detlab``), under
``dataset_checks/``, never beside the data. A file is NumPy arrays and a JSON header, read with
``allow_pickle=False``: loading it runs no code. It is written atomically (temp file, then rename);
an unreadable, foreign or stale file is ignored and replaced. Any input that cannot be read (a
missing annotation file) means no cache: the check runs as always and reports it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from .problems import Problem
from .records import ImageRecord
from .spec import DatasetSpec

VERSION = 2  # bump when what a check finds, or this file's layout, changes
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where check results are kept: ``$DETLAB_CACHE``, else ``$XDG_CACHE_HOME/detlab``, else
    ``~/.cache/detlab``, each with ``dataset_checks/`` below it."""
    base = os.environ.get("DETLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "detlab")
    return Path(base) / "dataset_checks"


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def inputs_key(spec: DatasetSpec, split: str) -> str:
    """SHA-256 (hex) of what a split's records are read from; OSError when an input cannot be read."""
    s = spec.splits[split]
    h = hashlib.sha256()
    h.update(json.dumps([VERSION, spec.format, spec.class_names, spec.category_ids, spec.classes_listed, str(s.images),
                         str(s.annotations), str(s.list)]).encode())
    if s.annotations.is_dir():  # subfolders too: YOLO labels pair images in subfolders
        files = [(name, s.annotations / name) for name in _listing(s.annotations)]
    else:
        files = [(s.annotations.name, s.annotations)]
    for name, path in files + ([(s.list.name, s.list)] if s.list is not None else []):
        h.update(f"\0{name}\0".encode())
        _hash_file(h, path)
    h.update("\0".join(_listing(s.images)).encode())
    return h.hexdigest()


def _listing(folder: Path) -> list[str]:
    """The files below ``folder``, as sorted paths relative to it."""
    names: list[str] = []
    for top, _, files in os.walk(folder):
        below = os.path.relpath(top, folder)
        prefix = "" if below == "." else below + os.sep
        names += [prefix + f for f in files]
    return sorted(names)


def image_stamps(paths: list[str]) -> str:
    """SHA-256 (hex) of each image's path, size and modification time ("missing" when absent)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def _image_paths(records: list[ImageRecord], problems: list[Problem]) -> list[str]:
    return [r.file_name for r in records] + sorted({p.image for p in problems if p.image})


def _save(path: Path, records: list[ImageRecord], problems: list[Problem], stamps: str) -> None:
    def cat(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(shape, dtype)

    header = {"version": VERSION, "stamps": stamps, "problems": [asdict(p) for p in problems],
              "file_names": [r.file_name for r in records]}
    arrays = {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "image_ids": np.array([r.image_id for r in records], np.int64),
        "sizes": np.array([(r.width, r.height) for r in records], np.int64).reshape(-1, 2),
        "counts": np.array([len(r.boxes) for r in records], np.int64),
        "boxes": cat([r.boxes for r in records], (0, 4), np.float32),
        "labels": cat([r.labels for r in records], (0,), np.int64),
        "ignore_counts": np.array([len(r.ignore_boxes) for r in records], np.int64),
        "ignore_boxes": cat([r.ignore_boxes for r in records], (0, 4), np.float32),
        "ignore_labels": cat([r.ignore_labels for r in records], (0,), np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> tuple[list[ImageRecord], list[Problem], str] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode())
            if header.get("version") != VERSION:
                return None
            counts, ignore_counts = data["counts"], data["ignore_counts"]
            ends, ignore_ends = np.cumsum(counts), np.cumsum(ignore_counts)
            boxes, labels = data["boxes"], data["labels"]
            ignore_boxes, ignore_labels = data["ignore_boxes"], data["ignore_labels"]
            records = [ImageRecord(int(i), name, int(w), int(h), boxes[e - c:e], labels[e - c:e],
                                   ignore_boxes[ie - ic:ie], ignore_labels[ie - ic:ie])
                       for i, name, (w, h), c, e, ic, ie in zip(data["image_ids"], header["file_names"], data["sizes"],
                                                               counts, ends, ignore_counts, ignore_ends)]
        problems = [Problem(**p) for p in header["problems"]]
        return records, problems, header["stamps"]
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, truncated or foreign: check again
        return None


def checked_split(spec: DatasetSpec, split: str,
                  check: Callable[[], tuple[list[ImageRecord], list[Problem]]]) -> tuple[list[ImageRecord],
                                                                                      list[Problem], bool]:
    """``(records, problems, from_cache)`` of a split's start-up check: the cached result when its
    inputs and images are unchanged, else ``check()``'s (cached for next time)."""
    try:
        key = inputs_key(spec, split)
    except OSError:  # an input is missing or unreadable: the check itself says which
        records, problems = check()
        return records, problems, False
    path = cache_dir() / f"{key}.npz"
    cached = _load(path) if path.is_file() else None
    if cached is not None:
        records, problems, stamps = cached
        if image_stamps(_image_paths(records, problems)) == stamps:
            return records, problems, True
    records, problems = check()
    try:
        _save(path, records, problems, image_stamps(_image_paths(records, problems)))
    except OSError:  # a read-only or full cache folder costs the next start its speed, nothing else
        pass
    return records, problems, False
