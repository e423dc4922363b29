"""Start-up cost against dataset size: the start-up dataset check, first and second start.

    python tools/bench_startup.py [--sizes 1000,10000,100000] [--boxes 7] [--work /tmp/detlab_startup]

For each size it writes a COCO-format split of that many small JPEG images (32 x 32 px, the same
bytes in every file) with ``--boxes`` boxes each, then times ``core.data.check.load_checked_records``
(what ``detection_train.py`` runs at start-up: parse, check every annotation, open every image
header) with an empty check cache (first start) and again (second start: the cached result, after
hashing the annotation file and reading every image's size and time). It prints one markdown row
per size: seconds for each start, the resident-memory growth of the process across the first
start, and the Python heap held by the records (tracemalloc, second start) per image, less the
boxes' and labels' own bytes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.check import load_checked_records  # noqa: E402
from core.data.spec import load_dataset_spec  # noqa: E402


def write_dataset(folder: Path, images: int, boxes: int) -> Path:
    """``folder/data.yaml``: one ``train`` split of ``images`` 32 x 32 JPEGs and ``boxes`` boxes each."""
    image_dir, ann_dir = folder / "images", folder / "annotations"
    image_dir.mkdir(parents=True)
    ann_dir.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 120, 200)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    entries, annotations = [], []
    for i in range(images):
        name = f"{i:07d}.jpg"
        (image_dir / name).write_bytes(jpeg)
        entries.append({"id": i + 1, "file_name": name, "width": 32, "height": 32})
        for k in range(boxes):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1 + k % 3,
                                "bbox": [k % 8, k % 5, 10.0 + k % 7, 12.0], "area": 120.0, "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    (ann_dir / "train.json").write_text(json.dumps({"images": entries, "annotations": annotations,
                                                    "categories": categories}))
    yaml = folder / "data.yaml"
    yaml.write_text("format: coco\nroot: .\ntrain: {images: images, annotations: annotations/train.json}\n")
    return yaml


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--work", default="/tmp/detlab_startup")
    args = parser.parse_args(argv)
    work = Path(args.work)
    print("| images | first start (s) | second start (s) | RSS growth, first (MiB) | records' heap per image, "
          "boxes excluded (B) |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        folder = work / f"n{n}"
        shutil.rmtree(folder, ignore_errors=True)
        os.environ["DETLAB_CACHE"] = str(folder / "cache")
        yaml = write_dataset(folder / "data", n, args.boxes)
        spec = load_dataset_spec(yaml)
        before = rss_mb()
        start = time.perf_counter()
        first, _ = load_checked_records(spec, ("train",), skip_bad_records=False)
        first_s = time.perf_counter() - start
        grown = rss_mb() - before
        del first
        start = time.perf_counter()
        second, notes = load_checked_records(load_dataset_spec(yaml), ("train",), skip_bad_records=False)
        second_s = time.perf_counter() - start
        assert any("unchanged" in note for note in notes), notes
        del second
        tracemalloc.start()  # a third start for the heap: tracing slows allocation, so it is not timed
        third, _ = load_checked_records(load_dataset_spec(yaml), ("train",), skip_bad_records=False)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        arrays = sum(r.boxes.nbytes + r.labels.nbytes for r in third["train"])
        print(f"| {n} | {first_s:.2f} | {second_s:.2f} | {grown:.0f} | {(held - arrays) / n:.0f} |", flush=True)
        del third
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
