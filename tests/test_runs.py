"""Run folders are safe by default: never written over, one trainer at a time, resumed only where resume can
follow (at any batch, without repeating or leaving out an image), with a resume hint that keeps the whole
command line, checkpoint writes that fail in one line, and signals during an evaluation that still save."""
from __future__ import annotations

import errno
import gc
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from core.engine.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from core.config.loading import load_config
from core.engine.run_folder import RESUME_FOLLOWS, RESUME_REFUSES, RunFolderError
from core.engine.runtime import run_dir
from core.engine.signals import TrainingInterrupted
from core.engine.trainer import Trainer
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config/demo.py"
TRAIN_IMAGES, STEPS_PER_EPOCH = 16, 4  # at batch 4


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("runsdata"), TRAIN_IMAGES, 4, 96, seed=5)


def overrides(data: Path, work_dir: Path, name: str, epochs: int = 1, *extra: str) -> list[str]:
    return [f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={work_dir}", f"General.name={name}",
            "General.batch_image=4", "General.loader_worker=0", "General.deterministic=True", "General.log_frequency=1",
            f"schedule.end_epoch={epochs}", "schedule.eval_every=0", "pretrain.backbone_weights=", "backbone.pretrained=False", *extra]


def config(data: Path, work_dir: Path, name: str, epochs: int = 1, *extra: str):
    return load_config(DEMO, overrides(data, work_dir, name, epochs, *extra))


def signal_at_step(monkeypatch, step: int) -> None:
    """SIGTERM to this process while global step ``step`` runs (the trainer stops after that step)."""
    real = Trainer._step

    def stepping(self, images, targets, passes):
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, images, targets, passes)

    monkeypatch.setattr(Trainer, "_step", stepping)


def log_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "data_s")} for row in rows]  # timings


# ----------------------------------------------------------------------------- 1. never written over


def test_a_fresh_run_never_writes_over_a_run_folder(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "old"
    (run / "tensorboard").mkdir(parents=True)
    old = {name: f"old {name}".encode() for name in ("epoch_0004.pt", "epoch_0008.pt", "interrupted.pt",
                                                     "log.jsonl", "config.json", "config.py", "curves.png",
                                                     "results_val.json", "tensorboard/events.x",
                                                     ".log.jsonl.tmp4242", ".epoch_0004.pt.tmp4242")}
    mine = {name: b"keep me" for name in ("notes.txt", "my_data/a.jpg", "vis/b.png", "epoch_0008.pt.bak")}
    for name, data in {**old, **mine}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)

    # the script: one line naming the folder and the three ways on, exit 2, nothing touched
    proc = subprocess.run([sys.executable, "detection_train.py", "--config", "config/demo.py",
                           *[a for o in overrides(tiny_data, tmp_path, "old") for a in ("--set", o)]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: run folder {run} already holds a run")
    assert "--resume" in lines[0] and "General.name" in lines[0] and "--overwrite" in lines[0]
    assert all((run / name).read_bytes() == data for name, data in {**old, **mine}.items())

    # the same through the API
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(config(tiny_data, tmp_path, "old"))
    assert not (run / ".lock").exists()  # the refused trainer let go of the folder

    # --overwrite: the previous run's files go, nothing else; then the new run is the only one there
    Trainer(config(tiny_data, tmp_path, "old"), overwrite=True).fit()
    assert not (run / ".lock").exists()  # released when fit() ends
    assert [e for e, _ in list_checkpoints(run)] == [1]
    assert not (run / "interrupted.pt").exists() and not (run / "results_val.json").exists()
    assert not (run / "tensorboard" / "events.x").exists()
    assert not (run / ".log.jsonl.tmp4242").exists() and not (run / ".epoch_0004.pt.tmp4242").exists()
    assert all((run / name).read_bytes() == data for name, data in mine.items())
    assert log_rows(run)[0]["step"] == 1 and b"old" not in (run / "log.jsonl").read_bytes()

    # an elastic restart of the same run under torchrun resumes by itself, and never overwrites
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    for kwargs in ({}, {"overwrite": True}):
        restarted = Trainer(config(tiny_data, tmp_path, "old", 2), **kwargs)
        assert (restarted.epoch, restarted.step) == (1, STEPS_PER_EPOCH)
        assert [e for e, _ in list_checkpoints(run)] == [1]
        del restarted


def test_a_run_continues_and_restarts_from_its_own_config_copy(tiny_data: Path, tmp_path: Path) -> None:
    """``--config runs/NAME/config.py`` (the copy a run saves) with ``--resume`` or ``--overwrite``: the copy is
    the input, so it is neither copied onto itself nor removed with the run's files."""
    run = tmp_path / "own"
    Trainer(config(tiny_data, tmp_path, "own")).fit()
    saved = run / "config.py"
    text = saved.read_bytes()
    Trainer(load_config(saved, overrides(tiny_data, tmp_path, "own", 2)), resume=True).fit()
    assert [e for e, _ in list_checkpoints(run)] == [1, 2] and saved.read_bytes() == text
    Trainer(load_config(saved, overrides(tiny_data, tmp_path, "own")), overwrite=True).fit()
    assert [e for e, _ in list_checkpoints(run)] == [1] and saved.read_bytes() == text
    assert not list(run.glob(".*tmp*"))  # no temporary file left behind


def test_a_wrong_dataset_stops_before_the_run_folder_is_made(tmp_path: Path) -> None:
    from core.data.records import DatasetError

    cfg = load_config(DEMO, overrides(tmp_path / "no_such.yaml", tmp_path, "typo"))
    with pytest.raises(DatasetError, match="no_such.yaml: dataset YAML not found"):
        Trainer(cfg)
    assert not (tmp_path / "typo").exists()


# ----------------------------------------------------------------------------- 2. a folder per config


def test_run_name_defaults_to_the_config_file(tmp_path: Path) -> None:
    body = "from config import base\n\n\nclass General(base.General):\n    batch_image = 2\n"
    (tmp_path / "my_exp.py").write_text(body)
    (tmp_path / "other_exp.py").write_text(body)
    a, b = load_config(tmp_path / "my_exp.py"), load_config(tmp_path / "other_exp.py")
    assert (a.General.name, b.General.name) == ("my_exp", "other_exp")
    assert run_dir(a) == Path("runs/my_exp") and run_dir(a) != run_dir(b)
    assert load_config(tmp_path / "my_exp.py", ["General.name=mine"]).General.name == "mine"  # --set wins
    assert load_config(DEMO).General.name == "demo"  # so does the module's own
    assert load_config(ROOT / "config/effdet_b2.py").General.name == "effdet_b2"


# ----------------------------------------------------------------------------- 3. one trainer per folder

HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": "job7"}).encode())
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin
""")


def test_a_lock_keeps_a_second_trainer_out(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as err:
            Trainer(config(tiny_data, tmp_path, "locked"))
        message = str(err.value)
        assert "\n" not in message and f"run folder {run} is in use" in message and f"pid {holder.pid}" in message
        # a restart of another elastic run is no owner either
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job8")
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            Trainer(config(tiny_data, tmp_path, "locked"))
        # an elastic restart of the same run takes its own lock over
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
        capsys.readouterr()
        trainer = Trainer(config(tiny_data, tmp_path, "locked"))
        assert "taking over the lock" in capsys.readouterr().err
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        trainer._lock.release()
        assert not (run / ".lock").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")

    # a stale lock (its holder died without releasing it): reported in one line, then taken over
    (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "run_id": ""}))
    capsys.readouterr()
    trainer = Trainer(config(tiny_data, tmp_path, "locked"))
    stale = [line for line in capsys.readouterr().err.splitlines() if "stale lock" in line]
    assert len(stale) == 1 and f"pid {holder.pid}" in stale[0] and str(run / ".lock") in stale[0]
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    # while it is held, another process is kept out
    proc = subprocess.run([sys.executable, "-c", HOLDER, str(run / ".lock")], input="", capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "BlockingIOError" in proc.stderr
    del trainer  # a trainer dropped without fitting lets go of it too
    gc.collect()
    assert not (run / ".lock").exists()


# ----------------------------------------------------------------------------- 4. resume checks the setup


def test_resume_refuses_another_setup_and_follows_the_rest(tiny_data: Path, tmp_path: Path, capsys) -> None:
    Trainer(config(tiny_data, tmp_path, "run")).fit()
    before = (tmp_path / "run" / "epoch_0001.pt").read_bytes()
    subset = synthetic_shapes_yaml(tiny_data.parent, TRAIN_IMAGES, 4, 96, seed=5, name="subset",
                                   classes=["circle", "square"])
    changed = config(tiny_data, tmp_path, "run", 2, "dataset.image_size=128", f"dataset.data={subset}",
                     "neck.channels=32", "optimizer.lr=0.005")
    with pytest.raises(RunFolderError) as err:
        Trainer(changed, resume=True)
    message = str(err.value)
    assert "\n" not in message and "epoch_0001.pt" in message
    for change in ("dataset.image_size: 96 -> 128", f"dataset.data: '{tiny_data}' -> '{subset}'",
                   "neck.channels: 64 -> 32",
                   "class names: ['circle', 'square', 'triangle', 'cross'] -> ['circle', 'square']"):
        assert change in message, change
    assert "optimizer.lr" not in message  # followed, not refused
    assert (tmp_path / "run" / "epoch_0001.pt").read_bytes() == before

    capsys.readouterr()
    trainer = Trainer(config(tiny_data, tmp_path, "run", 2, "optimizer.lr=0.005", "General.log_frequency=2"),
                      resume=True)
    err = capsys.readouterr().err
    assert trainer.epoch == 1
    for change in ("resume: optimizer.lr: 0.002 -> 0.005", "resume: schedule.end_epoch: 1 -> 2",
                   "resume: General.log_frequency: 1 -> 2"):
        assert change in err.splitlines(), err


def test_resume_field_lists_cover_every_field() -> None:
    from config import base
    from core.config.loading import _collect_sections

    for section, fields in _collect_sections(base).items():
        for field in fields:
            listed = [table for table in (RESUME_REFUSES, RESUME_FOLLOWS)
                      if table.get(section) == "*" or field in table.get(section, ())]
            assert len(listed) == 1, f"{section}.{field}: put it in exactly one of core.engine.run_folder's " \
                                     "RESUME_REFUSES / RESUME_FOLLOWS"


def test_resume_at_another_batch_sees_every_image_once(tiny_data: Path, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    seen: dict[int, list[int]] = {}
    real = Trainer._step

    def counting(self, images, targets, passes):
        seen.setdefault(self.epoch, []).extend(t["image_id"] for t in targets)
        return real(self, images, targets, passes)

    monkeypatch.setattr(Trainer, "_step", counting)
    signal_at_step(monkeypatch, STEPS_PER_EPOCH + 1)  # stops after 2 steps (8 images) of epoch 2
    with pytest.raises(TrainingInterrupted):
        Trainer(config(tiny_data, tmp_path, "batch", 2)).fit()
    assert len(seen[1]) == 8
    monkeypatch.setattr(Trainer, "_step", counting)  # no more signals
    capsys.readouterr()
    resumed = Trainer(config(tiny_data, tmp_path, "batch", 2, "General.batch_image=2"), resume=True)
    said = capsys.readouterr().err
    resumed.fit()
    ids = sorted(r.image_id for r in resumed.train_loader.dataset.records)
    assert len(ids) == TRAIN_IMAGES
    for epoch in (0, 1):  # before and across the change: every image exactly once
        assert sorted(seen[epoch]) == ids, (epoch, Counter(seen[epoch]))
    steps = [r["step"] for r in log_rows(tmp_path / "batch")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # the step count runs on
    assert "total batch 4 (1 process(es)) -> 2" in said and "after its first 8 images" in said
    final = load_checkpoint(tmp_path / "batch" / "epoch_0002.pt")
    assert (final["step"], final["images_in_epoch"], final["total_batch"]) == (6 + 4, 0, 2)


# ----------------------------------------------------------------------------- 5. the resume hint


def test_resume_hint_repeats_the_whole_command_line(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    argv = ["detection_train.py", "--config", "config/demo.py", "--data", str(tiny_data),
            "--set", "General.name=my run", "--set", "schedule.end_epoch=1", "--overwrite"]
    monkeypatch.setattr(sys, "argv", argv)
    signal_at_step(monkeypatch, 0)
    with pytest.raises(TrainingInterrupted) as err:
        Trainer(config(tiny_data, tmp_path, "my run")).fit()
    hint = str(err.value).split("continue with: ", 1)[1]
    assert hint == "python " + shlex.join(argv[:-1] + ["--resume"])
    assert "--data" in hint and "'General.name=my run'" in hint and hint.count("--resume") == 1

    monkeypatch.setattr(sys, "argv", argv[:-1] + ["--resume"])  # a resumed run that is stopped again
    signal_at_step(monkeypatch, 1)
    with pytest.raises(TrainingInterrupted) as err:
        Trainer(config(tiny_data, tmp_path, "my run"), resume=True).fit()
    assert str(err.value).split("continue with: ", 1)[1] == "python " + shlex.join(argv[:-1] + ["--resume"])


# ----------------------------------------------------------------------------- 6. a failed checkpoint write


def test_disk_full_checkpoint_write_is_one_line_and_keeps_the_previous(tiny_data: Path, tmp_path: Path,
                                                                       monkeypatch, capsys) -> None:
    import core.engine.checkpoint
    from core.engine.cli import run_main

    trainer = Trainer(config(tiny_data, tmp_path, "full"))
    trainer.fit()
    run = tmp_path / "full"
    before = (run / "epoch_0001.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(core.engine.checkpoint.os, "fsync", no_space)
    for epoch in (1, 2):  # replacing a checkpoint, and writing a new one
        trainer.epoch = epoch
        with pytest.raises(CheckpointError) as err:
            trainer._save()
        path = run / f"epoch_{epoch:04d}.pt"
        assert "\n" not in str(err.value) and f"'{path}'" in str(err.value) and "No space left" in str(err.value)
    assert (run / "epoch_0001.pt").read_bytes() == before and not (run / "epoch_0002.pt").exists()
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == []  # no temp file left behind
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        run_main(trainer._save_interrupted)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot write checkpoint '{run}")


# ----------------------------------------------------------------------------- 7. signals during evaluation


def test_signal_during_evaluation_or_the_last_epoch_saves(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    args = ("schedule.eval_every=1",)
    Trainer(config(tiny_data, tmp_path, "ref", 2, *args)).fit()
    reference = load_checkpoint(tmp_path / "ref" / "epoch_0002.pt")

    real_evaluate, real_step = Trainer.evaluate, Trainer._step
    steps = []

    def stepping(self, images, targets, passes):
        steps.append(self.step)
        return real_step(self, images, targets, passes)

    def signalled_in(epoch):
        def evaluate(self, *batches):
            if self.epoch == epoch:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while the evaluation runs
            return real_evaluate(self, *batches)
        return evaluate

    monkeypatch.setattr(Trainer, "_step", stepping)
    run = tmp_path / "sig"
    for epoch, resume in ((1, False), (2, True)):  # the first epoch's evaluation, then the last one's
        monkeypatch.setattr(Trainer, "evaluate", signalled_in(epoch))
        steps.clear()
        with pytest.raises(TrainingInterrupted, match=f"during the evaluation after epoch {epoch}"):
            Trainer(config(tiny_data, tmp_path, "sig", 2, *args), resume=resume).fit()
        assert steps == list(range((epoch - 1) * STEPS_PER_EPOCH, epoch * STEPS_PER_EPOCH))  # not a step more
        state = load_checkpoint(run / "interrupted.pt")
        assert state["eval_pending"] and (state["epoch"], state["step"]) == (epoch, epoch * STEPS_PER_EPOCH)
        assert [e for e, _ in list_checkpoints(run)] == list(range(1, epoch))
        assert [r["epoch"] for r in log_rows(run) if r["kind"] == "eval"] == list(range(1, epoch))
    monkeypatch.setattr(Trainer, "evaluate", real_evaluate)
    steps.clear()
    Trainer(config(tiny_data, tmp_path, "sig", 2, *args), resume=True).fit()  # only the evaluation was left
    assert steps == []
    final = load_checkpoint(run / "epoch_0002.pt")
    assert not final["eval_pending"] and not (run / "interrupted.pt").exists()
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert log_rows(run) == log_rows(tmp_path / "ref")  # each evaluation once, with the same numbers


# ----------------------------------------------------------------------------- 8. best checkpoint and patience


def test_best_checkpoint_and_patience(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """best.pt holds the state after the best evaluation and survives pruning; schedule.patience stops the
    run after that many evaluations without a better one, also when resumed; --weights best finds it."""
    from core.engine.tester import find_weights

    scripted = {1: 0.10, 2: 0.30, 3: 0.20, 4: 0.30, 5: 0.25, 6: 0.50, 7: 0.60}  # AP after each epoch

    def evaluate(self, *batches):
        return {"AP": scripted[self.epoch], "AP50": 1.0 - scripted[self.epoch]}  # AP50 falls as AP rises

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    extra = ("schedule.eval_every=1", "schedule.patience=3", "General.keep_checkpoints=1")
    cfg = config(tiny_data, tmp_path, "best", 8, *extra)
    Trainer(cfg).fit()
    run = tmp_path / "best"
    out = capsys.readouterr().err
    assert "early stop after epoch 5: AP has not improved for 3 evaluations" in out, out
    assert "best 0.3000 at epoch 2" in out  # an equal AP (epoch 4) is no improvement
    assert [p.name for _, p in list_checkpoints(run)] == ["epoch_0005.pt"]
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == 2 and best["best"]["value"] == 0.30
    assert find_weights(cfg, None, "best") == run / "best.pt"

    Trainer(config(tiny_data, tmp_path, "best", 8, *extra), resume=True).fit()  # still out of patience
    assert "early stop after epoch 5" in capsys.readouterr().err
    assert load_checkpoint(list_checkpoints(run)[-1][1])["step"] == 5 * STEPS_PER_EPOCH

    # another metric starts afresh: AP50 0.5 after epoch 6 is its first best, 0.4 after epoch 7 no better
    Trainer(config(tiny_data, tmp_path, "best", 8, *extra[:2], "schedule.best_metric=AP50",
                   "schedule.patience=1"), resume=True).fit()
    assert "early stop after epoch 7: AP50 has not improved for 1 evaluations" in capsys.readouterr().err
    assert load_checkpoint(run / "best.pt")["epoch"] == 6
    with pytest.raises(CheckpointError, match="no best.pt"):
        find_weights(config(tiny_data, tmp_path, "none"), None, "best")


def test_testing_the_newest_checkpoint_reads_it_once(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """detection_test.py without --epoch / --weights finds the newest checkpoint by reading and verifying
    it; the model is then loaded from that read, not from a second read and checksum of the file."""
    import core.engine.checkpoint
    from core.engine import tester

    cfg = config(tiny_data, tmp_path, "once")
    Trainer(cfg).fit()
    reads: list[Path] = []
    real = core.engine.checkpoint.load_checkpoint

    def counting(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(core.engine.checkpoint, "load_checkpoint", counting)
    monkeypatch.setattr(tester, "load_checkpoint", counting)
    trained = tester.load_run_weights(cfg, None, None, torch.device("cpu"))
    assert reads == [tmp_path / "once" / "epoch_0001.pt"] and trained.source == reads[0]
    reads.clear()
    tester.load_run_weights(cfg, 1, None, torch.device("cpu"))  # by epoch: found without reading, read once
    assert reads == [tmp_path / "once" / "epoch_0001.pt"]
