"""Make the repository root importable so a bare ``pytest`` finds ``core``, ``symbol``, ``utils``."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the start-up check's cache (core.data.check_cache) of this test session, not the user's; removed at exit
if "DETLAB_CACHE" not in os.environ:
    os.environ["DETLAB_CACHE"] = tempfile.mkdtemp(prefix="detlab-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DETLAB_CACHE"], ignore_errors=True)

# Property tests draw the same examples on every run, so a red suite is reproducible and CI does not turn
# red on a new draw; `pytest --hypothesis-profile=fuzz` draws new ones (and keeps what fails as an @example).
from hypothesis import settings  # noqa: E402

settings.register_profile("default", derandomize=True)
settings.register_profile("fuzz", derandomize=False)
settings.load_profile("default")


def synthetic_shapes_yaml(folder: Path, train_images: int, val_images: int, image_size: int, seed: int,
                          root: str = "tiny", name: str | None = None, classes: list[str] | None = None) -> Path:
    """Write ``folder/<name or root>.yaml``, a COCO-format data set spec whose shapes pictures
    (``train_images`` + ``val_images`` at ``image_size`` px, deterministic in ``seed``) are drawn
    under ``folder/<root>`` on first use; ``classes`` keeps only those. Returns the yaml's path."""
    path = folder / f"{name or root}.yaml"
    path.write_text(
        f"format: coco\nroot: {root}\n" + (f"classes: [{', '.join(classes)}]\n" if classes else "")
        + "train: {images: images/train, annotations: annotations/train.json}\n"
        "val: {images: images/val, annotations: annotations/val.json}\n"
        f"synthesize: {{kind: shapes, train_images: {train_images}, val_images: {val_images}, "
        f"image_size: {image_size}, seed: {seed}}}\n")
    return path
