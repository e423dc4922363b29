"""Runs that survive: kills, signals, corrupt checkpoints, non-finite losses, unreadable images."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from core.engine.checkpoint import list_checkpoints, load_checkpoint
from core.config.loading import load_config
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("faultdata"), 16, 4, 96, seed=5)


def overrides(data: Path, work_dir: Path, name: str) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={work_dir}", f"General.name={name}",
            "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True", "General.log_frequency=1",
            "schedule.end_epoch=3", "schedule.eval_every=1"]
# 16 images / batch 4: 4 steps an epoch, 12 in all. Evaluation is on in every run, the reference included:
# creating the val loader's iterator draws from torch's global RNG, so it is part of the run's state.
STEPS_PER_EPOCH, TOTAL_STEPS = 4, 12


DRIVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from core.config.loading import load_config
    from core.engine.trainer import Trainer
    crash_on = os.environ.get("CRASH_ON_SAVE")
    if crash_on:
        real_replace = os.replace
        def dying_replace(src, dst):
            if str(dst).endswith(crash_on):  # the temp file is written and synced, the rename never happens
                os._exit(9)
            return real_replace(src, dst)
        os.replace = dying_replace
    kill_at_step = int(os.environ.get("KILL_AT_STEP", "-1"))      # killed before this step (0-based) runs
    kill_in_eval = int(os.environ.get("KILL_IN_EVAL", "-1"))      # killed inside the evaluation after this epoch
    steps_run = [0]
    real_step, real_evaluate = Trainer._step, Trainer.evaluate
    def step(self, images, targets, passes):
        if self.step == kill_at_step:
            os._exit(9)
        steps_run[0] += 1
        return real_step(self, images, targets, passes)
    def evaluate(self, *batches):
        if self.epoch == kill_in_eval:
            os._exit(9)
        return real_evaluate(self, *batches)
    Trainer._step, Trainer.evaluate = step, evaluate
    cfg = load_config({root!r} + "/config/demo.py", sys.argv[2:])
    trainer = Trainer(cfg, resume=sys.argv[1] == "resume")
    print(f"starting at step {{trainer.step}}", flush=True)
    trainer.fit()
    print(f"steps run: {{steps_run[0]}}", flush=True)
""")


def run_driver(tmp_path: Path, args: list[str], mode: str, env: dict | None = None) -> int:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), mode, *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    return {"model": state["model"], "log": log_rows(work / "ref")}


def log_rows(run: Path) -> list[dict]:
    """The run's log.jsonl rows without their timings: train losses, lr and the evaluations' metrics."""
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "data_s")} for row in rows]  # timings


def assert_same_run(run: Path, reference: dict) -> None:
    state = load_checkpoint(run / "epoch_0003.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, state["model"][key]), key
    assert log_rows(run) == reference["log"]


def started_at(output: str) -> tuple[str, int, int] | None:
    """``(checkpoint file name, epoch, step)`` a driver run printed it resumed from, or None."""
    found = re.search(r"resumed from (\S+) \(epoch (\d+), step (\d+)\)", output)
    return (Path(found.group(1)).name, int(found.group(2)), int(found.group(3))) if found else None


def steps_run(output: str) -> int:
    return int(re.search(r"steps run: (\d+)", output).group(1))


def logged_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "train"]


def test_kill_mid_epoch_and_during_evaluation_then_resume_is_exact(tiny_data: Path, tmp_path: Path,
                                                                   reference: dict) -> None:
    args = overrides(tiny_data, tmp_path, "killed")
    run = tmp_path / "killed"
    # 1. SIGKILL-like death before step 6 runs: in the middle of epoch 2 (steps 4-7)
    assert run_driver(tmp_path, args, "fresh", env={"KILL_AT_STEP": "6"}) == 9, run_driver.last_output
    assert [e for e, _ in list_checkpoints(run)] == [1]
    assert logged_steps(run)[-1] == 6 > STEPS_PER_EPOCH  # work after the epoch-1 checkpoint was lost
    # 2. resumed, then killed inside the evaluation that follows epoch 2, before its checkpoint
    assert run_driver(tmp_path, args, "resume", env={"KILL_IN_EVAL": "2"}) == 9, run_driver.last_output
    assert started_at(run_driver.last_output) == ("epoch_0001.pt", 1, STEPS_PER_EPOCH)
    assert [e for e, _ in list_checkpoints(run)] == [1]
    assert logged_steps(run)[-1] == 2 * STEPS_PER_EPOCH
    # 3. resumed again: from epoch 1 once more, and only the remaining steps are run
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert started_at(run_driver.last_output) == ("epoch_0001.pt", 1, STEPS_PER_EPOCH)
    assert steps_run(run_driver.last_output) == TOTAL_STEPS - STEPS_PER_EPOCH
    assert_same_run(run, reference)


def test_crash_during_checkpoint_write_keeps_previous(tiny_data: Path, tmp_path: Path, reference: dict) -> None:
    args = overrides(tiny_data, tmp_path, "crash")
    assert run_driver(tmp_path, args, "fresh", env={"CRASH_ON_SAVE": "epoch_0002.pt"}) == 9  # dies writing epoch 2
    run = tmp_path / "crash"
    assert (run / "epoch_0001.pt").exists() and not (run / "epoch_0002.pt").exists()
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert started_at(run_driver.last_output) == ("epoch_0001.pt", 1, STEPS_PER_EPOCH)
    assert steps_run(run_driver.last_output) == TOTAL_STEPS - STEPS_PER_EPOCH
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
    step = state["step"]
    assert STEPS_PER_EPOCH < step < TOTAL_STEPS and step % STEPS_PER_EPOCH  # mid-epoch, at a step boundary
    assert run_driver(tmp_path, args, "resume") == 0, run_driver.last_output
    assert started_at(run_driver.last_output) == ("interrupted.pt", step // STEPS_PER_EPOCH, step)
    assert steps_run(run_driver.last_output) == TOTAL_STEPS - step
    assert not (tmp_path / "term" / "interrupted.pt").exists()
    assert_same_run(tmp_path / "term", reference)


def test_sigterm_to_the_process_group_with_workers_still_saves(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM to every process of the run (as Ctrl-C, ``timeout`` or a scheduler send it): the
    DataLoader workers must not die before the main process has finished its step and saved."""
    args = overrides(tiny_data, tmp_path, "group") + ["General.loader_worker=2", "schedule.end_epoch=20"]
    proc = start_training(args, tmp_path / "group" / "log.jsonl", 3)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(out[-8000:])
    assert proc.returncode == 130, out
    assert "DataLoader worker" not in out and "--resume" in out
    assert load_checkpoint(tmp_path / "group" / "interrupted.pt")["step"] >= 3


def _snapshot(trainer: Trainer) -> list[torch.Tensor]:
    """Copies of every tensor of the weights, the optimizer state and the EMA weights."""
    tensors = list(trainer.model.state_dict().values()) + list(trainer.ema.module.state_dict().values())
    for state in trainer.optimizer.state_dict()["state"].values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return [t.detach().clone() for t in tensors]


def test_nonfinite_steps_are_skipped_then_stop(tiny_data: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(ROOT / "config/demo.py", overrides(tiny_data, tmp_path, "nan"))
    Trainer(cfg).fit()  # a good run first: its checkpoints must survive the failure below
    before = (tmp_path / "nan" / "epoch_0003.pt").read_bytes()
    cfg2 = load_config(ROOT / "config/demo.py", overrides(tiny_data, tmp_path, "nan") + ["schedule.end_epoch=8"])
    trainer = Trainer(cfg2, resume=True)
    assert trainer.step == TOTAL_STEPS and trainer.ema is not None
    # steps 12-15 are not finite (a NaN loss, or a finite loss with NaN gradients), 16 is good, then five
    # bad ones in a row stop the run at step 21. Without the reset at 16 it would stop at step 17.
    plan = {12: "loss", 13: "gradients", 14: "loss", 15: "gradients", 17: "loss", 18: "gradients",
            19: "loss", 20: "loss", 21: "gradients"}
    real_loss, real_step = trainer.task.loss, trainer._step

    def broken_loss(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        if plan.get(trainer.step) == "loss":
            out["loss"] = out["loss"] * float("nan")
        elif plan.get(trainer.step) == "gradients":  # value 0, gradient 0 * inf = NaN
            weight = next(p for p in trainer.model.parameters() if p.requires_grad)
            out["loss"] = out["loss"] + 0.0 * torch.sqrt((weight - weight.detach()).sum())
        return out

    seen = []

    def checked_step(images, targets, passes):
        state, step = _snapshot(trainer), trainer.step
        seen.append(step)
        result = real_step(images, targets, passes)
        if step in plan:  # skipped: weights, optimizer state and EMA exactly as before
            assert result is None, step
            assert all(torch.equal(a, b) for a, b in zip(state, _snapshot(trainer))), f"step {step} was applied"
        else:
            assert result is not None and math.isfinite(result["loss"]), step
            assert not all(torch.equal(a, b) for a, b in zip(state, _snapshot(trainer)))
        return result

    trainer.task.loss, trainer._step = broken_loss, checked_step
    with pytest.raises(FloatingPointError, match=r"5 non-finite steps in a row \(last at step 21\)"):
        trainer.fit()
    assert seen == list(range(12, 22))
    err = capsys.readouterr().err
    assert "non-finite loss at step 12" in err and "non-finite gradients at step 13" in err
    assert "step skipped" in err and ".jpg" in err  # the warning names the batch's images
    assert (tmp_path / "nan" / "epoch_0003.pt").read_bytes() == before
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    # weights that did go bad are never checkpointed, so no good checkpoint is pruned for them
    saved = sorted(p.name for p in (tmp_path / "nan").glob("epoch_*.pt"))
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite after epoch"):
        trainer._save()
    assert sorted(p.name for p in (tmp_path / "nan").glob("epoch_*.pt")) == saved
    assert (tmp_path / "nan" / "epoch_0003.pt").read_bytes() == before


def test_unreadable_image_is_reported_or_skipped(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    from core.data.spec import load_dataset_spec, read_split

    read_split(load_dataset_spec(tiny_data), "train")  # the shapes are drawn on first use: before the copy
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
    assert [r for r in rows if r["kind"] == "train"][-1]["skipped_images"] == 1


WORKER_START = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    import torch
    from torch.utils.data import DataLoader
    from core.data.loader import ignore_stop_signals, start_workers

    def slow_start(worker_id):  # a worker that takes a while before it can ignore signals
        time.sleep(1.5)
        ignore_stop_signals(worker_id)

    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_init_fn=slow_start)
    batches = start_workers(loader)
    time.sleep(0.3)
    os.killpg(0, signal.SIGTERM)  # the whole group, while both workers are still starting
    print("batches", sum(1 for _ in batches), "signals", len(received), flush=True)
""")


def test_a_signal_while_loader_workers_start_does_not_kill_them(tmp_path: Path) -> None:
    """The window a group-wide SIGTERM fell into when it arrived as an evaluation's workers started."""
    script = tmp_path / "workers.py"
    script.write_text(WORKER_START.format(root=str(ROOT)))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batches 4 signals 1" in proc.stdout, proc.stdout + proc.stderr[-3000:]


WORKERS_AT_EXIT = textwrap.dedent("""
    import multiprocessing, signal, sys, time
    sys.path.insert(0, {root!r})
    from torch.utils.data import DataLoader
    from core.data.loader import ignore_stop_signals, start_workers

    from torch.utils.data import _utils

    class Holder:  # a reference cycle: freed only by the garbage collector, which does not run before exit
        pass

    holder = Holder()
    holder.me = holder
    holder.loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,
                               worker_init_fn=ignore_stop_signals)
    print("first batch", next(start_workers(holder.loader)).tolist(), flush=True)

    def cut_short(*args):  # as a StopNow raised while the iterator starts: its workers run, unowned
        raise RuntimeError("cut short")
    _utils.signal_handling._set_worker_pids = cut_short
    try:
        start_workers(DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    except RuntimeError:
        pass
    bystander = multiprocessing.Process(target=time.sleep, args=(2,), daemon=True)  # not a loader's: left alone
    bystander.start()
    print("exiting", flush=True)
""")


def test_the_process_exits_with_loader_workers_still_alive(tmp_path: Path) -> None:
    """Workers ignore SIGTERM, which multiprocessing's exit handler sends them before joining them:
    without DetLab's own exit handler a run whose loaders were still alive at exit never ended."""
    script = tmp_path / "exit.py"
    script.write_text(WORKERS_AT_EXIT.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("the process did not exit:\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    # (torch's own "Exception ignored in __del__" for the half-built iterator may be printed: it is harmless)
    assert "first batch [0, 1]" in out and "exiting" in out, out[-3000:]
