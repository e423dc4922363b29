"""The trainer logs how long each step waits for the data loader (``data_s``) and warns when the loader
does not keep up (more than 10 % of the step time spent waiting)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.config.loading import load_config
from core.engine.trainer import DATA_WAIT_WARN, Trainer, data_wait_warning

ROOT = Path(__file__).resolve().parent.parent


def test_the_warning_threshold() -> None:
    assert data_wait_warning(0.0, 10.0, 2) is None
    assert data_wait_warning(DATA_WAIT_WARN * 10.0, 10.0, 2) is None  # at the threshold: no warning
    said = data_wait_warning(5.0, 10.0, 0)
    assert said is not None and said.startswith("warning: the steps waited for data 50% of the time")
    assert "General.loader_worker (now 0)" in said
    assert data_wait_warning(1.0, 0.0, 0) is None  # no steps timed (a one-step epoch)


def _large_pictures(root: Path, count: int, side: int) -> Path:
    """``count`` JPEG pictures of ``side`` x ``side`` px with one box each, as a COCO data set; returns its yaml."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(count):
        pixels = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1)
        x, y = (int(v) for v in rng.integers(0, side // 2, 2))
        pixels[y:y + side // 4, x:x + side // 4] = (255, 0, 0)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / f"{i}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": side, "height": side})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, side // 4, side // 4],
                            "area": (side // 4) ** 2, "iscrowd": 0})
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                 "categories": [{"id": 1, "name": "square"}]}))
    yaml = root / "big.yaml"
    yaml.write_text("format: coco\nroot: .\ntrain: {images: images, annotations: train.json}\n")
    return yaml


def test_data_wait_is_logged_and_a_loader_that_cannot_keep_up_is_warned(tmp_path: Path, capsys) -> None:
    """Pictures of 3000 x 3000 px decoded in the main process (no workers) for a network at 64 px: on an
    idle machine most of each step is spent waiting for the next batch. The warning follows the share
    the log itself shows (steps 2 on, as the trainer counts), so a loaded machine whose compute slows
    more than its decoding checks the other side of the threshold instead."""
    data = _large_pictures(tmp_path / "data", 8, 3000)
    cfg = load_config(ROOT / "config/demo.py", [
        f"dataset.data={data}", "dataset.image_size=64", f"General.work_dir={tmp_path}", "General.name=slow",
        "General.batch_image=2", "General.loader_worker=0", "General.log_frequency=1", "schedule.end_epoch=1",
        "schedule.eval_every=0", "pretrain.backbone_weights=", "backbone.pretrained=False"])
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "slow" / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 4
    step_s = [2 / row["images_per_s"] for row in train]  # one step a row: 2 images
    for row, seconds in zip(train, step_s):  # its wait is part of its time
        assert 0.0 <= row["data_s"] <= seconds
    assert all(row["data_s"] > 0 for row in train)  # decoding 3000 px pictures takes time
    share = sum(row["data_s"] for row in train[1:]) / sum(step_s[1:])
    err = capsys.readouterr().err
    warned = "epoch 1: warning: the steps waited for data" in err and "General.loader_worker (now 0)" in err
    if share > 1.2 * DATA_WAIT_WARN:
        assert warned, (share, err)
    elif share < 0.8 * DATA_WAIT_WARN:
        assert not warned, (share, err)
    assert " data " in err.split("step 1/4:")[1].splitlines()[0]  # the printed line gives the share too
