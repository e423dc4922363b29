"""End to end: train a small EfficientDet on generated data, test it, resume it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.engine.checkpoint import list_checkpoints, load_checkpoint
from core.config.loading import load_config
from core.engine.signals import StopSignals
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A 24 + 8 image synthetic shapes set at 128 px, described by a YAML file."""
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("data"), 24, 8, 128, seed=3)


def tiny_overrides(data: Path, work_dir: Path, name: str, epochs: int) -> list[str]:
    return [
        f"dataset.data={data}", "dataset.image_size=128", f"General.work_dir={work_dir}", f"General.name={name}",
        "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True", "General.log_frequency=2",
        f"schedule.end_epoch={epochs}", "schedule.eval_every=1", "test.batch_image=8",
    ]


def test_train_then_test_script(tiny_data: Path, tmp_path: Path) -> None:
    # trained by the script with stderr going to a file, as under CI, nohup or a scheduler
    stderr_file = tmp_path / "train.err"
    with open(stderr_file, "w") as err:
        proc = subprocess.run([sys.executable, "detection_train.py", "--config", "config/demo.py",
                               *[a for o in tiny_overrides(tiny_data, tmp_path, "run", 2) for a in ("--set", o)]],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, timeout=600)
    printed = stderr_file.read_text()
    assert proc.returncode == 0, printed[-3000:]
    out = tmp_path / "run"
    assert [e for e, _ in list_checkpoints(out)] == [1, 2]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"}
    assert set(rows[-1]) >= {"AP", "AP50", "AR100"}
    # a log file gets compact lines, no carriage-return redraws: one per log_frequency (2) of the 6 steps an epoch
    assert "\r" not in printed and "\r" not in proc.stdout
    progress = [line for line in printed.splitlines() if line.startswith("epoch ") and " step " in line]
    assert progress and len(progress) <= 2 * 6 // 2, printed
    assert progress[0].startswith("epoch 1/2 step 2/6: loss ")
    assert all(r["loss"] == r["loss"] for r in rows if r["kind"] == "train")  # finite, not NaN
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["sections"]["General"]["name"] == "run"

    vis = tmp_path / "vis"
    cmd = [sys.executable, "detection_test.py", "--config", "config/demo.py", "--vis", str(vis), "--vis-score", "0.0",
           *[a for o in tiny_overrides(tiny_data, tmp_path, "run", 2) for a in ("--set", o)]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
    assert "circle" in proc.stdout  # per-class table
    results = json.loads((out / "results_val.json").read_text())
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert len(list(vis.glob("*.png"))) == 8

    # the drawings are the user's now: the same command again is refused before the model loads, in one
    # line naming a drawing and the flag, and writes nothing; --overwrite replaces them
    drawn = {f: f.stat().st_mtime_ns for f in vis.glob("*.png")}
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "testing " not in refused.stdout
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {vis}") and "exists (and 7 more output files); pass --overwrite" in message
    assert {f: f.stat().st_mtime_ns for f in vis.glob("*.png")} == drawn
    again = subprocess.run(cmd + ["--overwrite"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all(f.stat().st_mtime_ns > t for f, t in drawn.items())

    # scoring the written results json again without a model gives the same numbers
    again = subprocess.run(cmd[:4] + ["--results", str(out / "results_val.json")] + cmd[8:],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = [line for line in proc.stdout.splitlines() if line.startswith(" Average")]
    assert summary == [line for line in again.stdout.splitlines() if line.startswith(" Average")]


def test_resume_matches_uninterrupted_run(tiny_data: Path, tmp_path: Path, capsys) -> None:
    straight = load_config(ROOT / "config/demo.py", tiny_overrides(tiny_data, tmp_path, "straight", 2)
                           + ["schedule.eval_every=0"])
    Trainer(straight).fit()

    first = load_config(ROOT / "config/demo.py", tiny_overrides(tiny_data, tmp_path, "resumed", 1)
                        + ["schedule.eval_every=0", "schedule.end_epoch=2"])
    trainer = Trainer(first)
    trainer._train_epoch(StopSignals())  # one epoch, then "crash" after its checkpoint
    trainer.epoch += 1
    trainer._save()
    del trainer
    resumed = Trainer(first, resume=True)
    assert (resumed.epoch, resumed.step) == (1, 6)  # 24 images / batch 4: epoch 1 ends at step 6
    assert f"resumed from {tmp_path / 'resumed' / 'epoch_0001.pt'} (epoch 1, step 6)" in capsys.readouterr().err
    resumed.fit()

    a = load_checkpoint(tmp_path / "straight" / "epoch_0002.pt")
    b = load_checkpoint(tmp_path / "resumed" / "epoch_0002.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    log_a = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert log_a == log_b


def test_corrupt_newest_checkpoint_falls_back(tiny_data: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(ROOT / "config/demo.py", tiny_overrides(tiny_data, tmp_path, "corrupt", 1)
                      + ["schedule.eval_every=0"])
    Trainer(cfg).fit()
    good = tmp_path / "corrupt" / "epoch_0001.pt"
    bad = tmp_path / "corrupt" / "epoch_0002.pt"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated newer checkpoint
    trainer = Trainer(load_config(ROOT / "config/demo.py", tiny_overrides(tiny_data, tmp_path, "corrupt", 2)
                                  + ["schedule.eval_every=0"]), resume=True)
    assert trainer.epoch == 1
    assert "epoch_0002.pt" in capsys.readouterr().err
