"""Runs that survive: kills, signals, corrupt checkpoints, non-finite losses, unreadable images."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("faultdata"), 16, 4, 96, seed=5)


def overrides(data: Path, work_dir: Path, name: str) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={work_dir}", f"General.name={name}",
            "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True", "General.log_frequency=1",
            "schedule.end_epoch=3", "schedule.eval_every=0"]


DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from core.config import load_config
    from core.engine.trainer import Trainer
    crash_on = os.environ.get("CRASH_ON_SAVE")
    if crash_on:
        real_replace = os.replace
        def dying_replace(src, dst):
            if str(dst).endswith(crash_on):  # the temp file is written and synced, the rename never happens
                os._exit(9)
            return real_replace(src, dst)
        os.replace = dying_replace
    cfg = load_config({root!r} + "/config/demo.py", sys.argv[2:])
    Trainer(cfg, resume=sys.argv[1] == "resume").fit()
""")


def run_driver(tmp_path: Path, args: list[str], mode: str, env: dict | None = None, kill_after: float | None = None,
               sig: int = signal.SIGKILL) -> int:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), mode, *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(sig)
    out, _ = proc.communicate(timeout=600)
    run_driver.last_output = out
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory) -> dict:
    """Final weights and logged losses of an uninterrupted 3-epoch run."""
    work = tmp_path_factory.mktemp("ref")
    # in a subprocess like the interrupted runs: the same thread count gives the same float sums
    assert run_driver(work, overrides(tiny_data, work, "ref"), "fresh") == 0, run_driver.last_output
    state = load_checkpoint(work / "ref" / "epoch_0003.pt")
    losses = [json.loads(x)["loss"] for x in (work / "ref" / "log.jsonl").read_text().splitlines()]
    return {"model": state["model"], "losses": losses}


def assert_same_run(run: Path, reference: dict) -> None:
    state = load_checkpoint(run / "epoch_0003.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, state["model"][key]), key
    losses = [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert losses == reference["losses"]


def test_kill_at_random_points_then_resume_is_exact(tiny_data: Path, tmp_path: Path, reference: dict) -> None:
    args = overrides(tiny_data, tmp_path, "killed")
    rng = random.Random(1234)
    for _ in range(2):  # SIGKILL at random moments (start-up, mid-epoch, during evaluation or saving)
        run_driver(tmp_path, args, "resume", kill_after=rng.uniform(3.0, 12.0))
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert_same_run(tmp_path / "killed", reference)


def test_crash_during_checkpoint_write_keeps_previous(tiny_data: Path, tmp_path: Path, reference: dict) -> None:
    args = overrides(tiny_data, tmp_path, "crash")
    assert run_driver(tmp_path, args, "fresh", env={"CRASH_ON_SAVE": "epoch_0002.pt"}) == 9  # dies writing epoch 2
    run = tmp_path / "crash"
    assert (run / "epoch_0001.pt").exists() and not (run / "epoch_0002.pt").exists()
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert "resumed from" in run_driver.last_output and "epoch_0001.pt" in run_driver.last_output
    assert_same_run(run, reference)


def start_training(args: list[str], log: Path, lines: int) -> subprocess.Popen:
    """``detection_train.py`` with ``--set args`` in its own process group, returned once ``log``
    holds ``lines`` lines (or after 120 s)."""
    proc = subprocess.Popen([sys.executable, "detection_train.py", "--config", "config/demo.py",
                             *[a for o in args for a in ("--set", o)]], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < lines):
        time.sleep(0.2)
    return proc


def test_sigterm_saves_and_resume_is_exact(tiny_data: Path, tmp_path: Path, reference: dict) -> None:
    args = overrides(tiny_data, tmp_path, "term")
    proc = start_training(args, tmp_path / "term" / "log.jsonl", 6)  # the second epoch is under way
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted.pt" in out and "--resume" in out
    state = load_checkpoint(tmp_path / "term" / "interrupted.pt")
    assert 4 < state["step"] < 12  # saved inside epoch 2 or 3, at a step boundary
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert not (tmp_path / "term" / "interrupted.pt").exists()
    assert_same_run(tmp_path / "term", reference)


def test_sigterm_to_the_process_group_with_workers_still_saves(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM to every process of the run (as Ctrl-C, ``timeout`` or a scheduler send it): the
    DataLoader workers must not die before the main process has finished its step and saved."""
    args = overrides(tiny_data, tmp_path, "group") + ["General.loader_worker=2", "schedule.end_epoch=20"]
    proc = start_training(args, tmp_path / "group" / "log.jsonl", 3)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "DataLoader worker" not in out and "--resume" in out
    assert load_checkpoint(tmp_path / "group" / "interrupted.pt")["step"] >= 3


def test_nonfinite_losses_skip_then_stop(tiny_data: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(ROOT / "config/demo.py", overrides(tiny_data, tmp_path, "nan"))
    trainer = Trainer(cfg)
    trainer.fit()  # a good run first: its checkpoints must survive the failure below
    before = (tmp_path / "nan" / "epoch_0003.pt").read_bytes()
    cfg2 = load_config(ROOT / "config/demo.py", overrides(tiny_data, tmp_path, "nan") + ["schedule.end_epoch=5"])
    trainer = Trainer(cfg2, resume=True)
    real_loss = trainer.task.loss

    def nan_loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    trainer.task.loss = nan_loss
    with pytest.raises(FloatingPointError, match="non-finite losses in a row"):
        trainer.fit()
    err = capsys.readouterr().err
    assert "step skipped" in err and ".jpg" in err  # the warning names the batch's images
    assert (tmp_path / "nan" / "epoch_0003.pt").read_bytes() == before


def test_unreadable_image_is_reported_or_skipped(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    data_dir = tmp_path / "broken"
    shutil.copytree(tiny_data.parent, data_dir)
    images = sorted((data_dir / "tiny" / "images" / "train").iterdir())
    images[0].write_bytes(b"not a jpeg")
    yaml_path = data_dir / "tiny.yaml"
    cfg = load_config(ROOT / "config/demo.py", overrides(yaml_path, tmp_path, "bad") + ["schedule.end_epoch=1"])
    with pytest.raises(Exception, match=images[0].name):
        Trainer(cfg).fit()
    cfg = load_config(ROOT / "config/demo.py", overrides(yaml_path, tmp_path, "skip")
                      + ["schedule.end_epoch=1", "dataset.skip_bad_images=True"])
    with pytest.warns(UserWarning, match=images[0].name):
        Trainer(cfg).fit()
    rows = [json.loads(x) for x in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_images"] == 1
