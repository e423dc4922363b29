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

# Under pytest-xdist (`pytest -n auto`) the workers share the CPUs: each one's torch and OpenMP pools get
# CPUs / workers threads (subprocesses inherit OMP_NUM_THREADS), so two workers on 2 CPUs do not
# oversubscribe them and spin against each other.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch  # noqa: E402

    _threads = max(1, _CPUS // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per CPU this process may run on, at most 8 (each worker holds its own torch
    and models, a GiB or two). xdist's own count is physical cores: 1 on a 2-vCPU machine whose vCPUs are
    one core's hyperthreads, which would leave the suite serial."""
    return min(_CPUS, 8)


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
