"""torch.distributed: 2 CPU processes (gloo) train exactly like 1 process with the same total batch, whether
one torchrun launches both or two torchrun launchers (``--nnodes=2``, c10d rendezvous on 127.0.0.1) launch
one each; and a group whose worker is killed mid-epoch under ``--max-restarts`` restarts, resumes from
its newest checkpoint by itself and ends with the weights of an uninterrupted run."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.engine.checkpoint import load_checkpoint
from conftest import synthetic_shapes_yaml

ROOT = Path(__file__).resolve().parent.parent
MAX_MODEL_RATIO, MAX_TENSOR_RATIO = 0.03, 0.15  # see the test for what rounding and a broken average give

# BatchNorm statistics depend on the per-process batch (SyncBatchNorm fixes that on GPUs, but
# PyTorch has no CPU SyncBatchNorm), so the comparison freezes BatchNorm in both runs: what is
# compared is the distributed machinery itself (sharding, loss normalisation, gradient averaging,
# evaluation gathering, rank-0 writing). The frozen statistics come from one fixed batch.
DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import torch.nn as nn
    from timm.layers import freeze_batch_norm_2d  # keeps the activation of timm's BatchNormAct2d

    def calibrated(model, cfg):
        # BatchNorm statistics of 8 real validation images, then frozen
        import torch
        from core.data.loader import build_loader
        from core.data.spec import load_dataset_spec, read_split
        images, _ = next(iter(build_loader(cfg, read_split(load_dataset_spec(cfg.dataset.data), "val"),
                                           train=False, batch_size=8)))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            model(images)
        return freeze_batch_norm_2d(model)

    import os
    import core.engine.trainer as trainer_module
    kill_at = int(os.environ.get("KILL_RANK1_AT_STEP", "-1"))  # first attempt only: rank 1 dies before that step
    if kill_at >= 0 and os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        real_step = trainer_module.Trainer._step
        def dying_step(self, images, targets, passes):
            if self.step == kill_at:
                os._exit(9)
            return real_step(self, images, targets, passes)
        trainer_module.Trainer._step = dying_step
    real_build = trainer_module.build_detector
    trainer_module.build_detector = lambda cfg, n: calibrated(real_build(cfg, n), cfg)
    from core.config.loading import load_config
    cfg = load_config({root!r} + "/config/demo.py", sys.argv[1:])
    trainer = trainer_module.Trainer(cfg)
    if trainer.dist.is_main:  # the weights training starts from, after calibration and pretrained loading
        import torch
        torch.save(trainer.model.state_dict(), cfg.General.work_dir + "/" + cfg.General.name + "_init.pt")
    stats = trainer.fit()
    if stats:
        print("AP50", stats["AP50"])
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthetic_shapes_yaml(tmp_path_factory.mktemp("ddpdata"), 16, 6, 96, seed=7)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``): torchrun starts its workers in sessions of
    their own, so killing the launcher's group leaves them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to ``proc``, if it still runs, and to every process below it (workers blocked in a
    collective included): the launcher first, so it cannot start new workers."""
    if proc.poll() is not None:  # ended and reaped: its pid may be another process's by now
        return
    below = descendants(proc.pid)
    for pid in [proc.pid, *below]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_group(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` run with its output captured; on a timeout it is killed with every process below it
    (torchrun's workers, not left blocked in a collective) and TimeoutExpired raised."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # the timeout, or an interrupted test run
        kill_tree(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run(tmp_path: Path, data: Path, name: str, processes: int, launch: str = "processes", epochs: int = 1,
        torchrun: tuple[str, ...] = (), env: dict[str, str] | None = None,
        args: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """Train the demo config on ``data`` with a total batch of 4 in ``processes`` processes: one plain
    process, one torchrun of ``processes`` workers (``launch="processes"``), or one torchrun launcher per
    process with ``--nnodes`` (``launch="nodes"``; their outputs are joined). ``args``: more config overrides."""
    script = tmp_path / "ddp_driver.py"
    script.write_text(DRIVER.format(root=str(ROOT)))
    args = [f"dataset.data={data}", "dataset.image_size=96", f"General.work_dir={tmp_path}", f"General.name={name}",
            f"General.batch_image={4 // processes}", "General.loader_worker=0", "General.deterministic=True",
            f"schedule.end_epoch={epochs}", "schedule.eval_every=1", "optimizer.lr_batch=4", "test.batch_image=2",
            "optimizer.type=sgd", "optimizer.lr=0.01", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DETLAB_TEST_THREADS", "1"), **(env or {})}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if processes == 1:
        return run_group([sys.executable, str(script), *args], env, timeout)
    if launch == "processes":
        rendezvous = (["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", f"--rdzv_id={name}"]
                      if torchrun else [f"--master_port={free_port()}"])  # c10d: what elastic restarts rendezvous on
        cmd = [*launcher, f"--nproc_per_node={processes}", *rendezvous, *torchrun, str(script), *args]
        return run_group(cmd, env, timeout)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([*launcher, f"--nnodes={processes}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                               f"--rdzv_endpoint={endpoint}", f"--rdzv_id={name}", *torchrun, str(script), *args],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    try:
        outputs = [node.communicate(timeout=timeout) for node in nodes]
    except BaseException:  # the timeout, or an interrupted test run
        for node in nodes:
            kill_tree(node)
        raise
    return subprocess.CompletedProcess(nodes[0].args, max(node.returncode for node in nodes),
                                       "".join(o for o, _ in outputs), "".join(e for _, e in outputs))


@pytest.fixture(scope="module")
def one_process(tiny_data: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("one")
    one = run(work, tiny_data, "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    return work, one


@pytest.mark.parametrize("launch", ["processes", "nodes"])
def test_two_gloo_processes_equal_one_process(tiny_data: Path, tmp_path: Path, one_process, launch: str) -> None:
    work, one = one_process
    two = run(tmp_path, tiny_data, "two", 2, launch)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stderr

    a = load_checkpoint(work / "one" / "epoch_0001.pt")
    b = load_checkpoint(tmp_path / "two" / "epoch_0001.pt")
    init = torch.load(work / "one_init.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    # The two runs add the same numbers in another order, so they differ by float rounding accumulated
    # over 4 steps; that is measured against how far those steps moved the weights, tensor by tensor and
    # for the whole model. Measured on an AMD EPYC (AVX-512) over General.seed 0-2 and torch threads 1
    # and 2: the largest tensor ratio 8e-5 to 1.6e-2 (the pretrained stem, which 4 steps barely move),
    # the whole-model ratio at most 3.3e-3. With the loss average over processes switched off (each
    # process normalising by its own positives), seeds 0 and 1: largest tensor ratio 0.64-0.69, whole
    # model 0.089-0.25.
    differ2 = moved2 = 0.0
    ratios = {}
    for key, value in a["model"].items():
        if not value.is_floating_point():
            continue
        moved = (value - init[key]).norm().item()
        differ = (b["model"][key] - value).norm().item()
        differ2, moved2 = differ2 + differ ** 2, moved2 + moved ** 2
        rounding = 1e-6 * value.norm().item()  # float32 resolution of the tensor itself
        if moved > rounding:
            ratios[key] = differ / moved
        else:  # a tensor training did not move (frozen statistics) is the same in both runs
            assert differ <= rounding, key
    worst = max(ratios, key=ratios.get)
    whole = (differ2 / moved2) ** 0.5
    print(f"|two - one| / |one - init|: whole model {whole:.2e}, largest tensor {ratios[worst]:.2e} ({worst})")
    assert whole < MAX_MODEL_RATIO, whole
    assert ratios[worst] < MAX_TENSOR_RATIO, (worst, ratios[worst])
    # rank 0 alone wrote the log; evaluation gathered all 6 val images from both ranks
    ap_one = [line for line in one.stdout.splitlines() if line.startswith("AP50")]
    ap_two = [line for line in two.stdout.splitlines() if line.startswith("AP50")]
    assert len(ap_two) == 1
    assert float(ap_one[0].split()[1]) == pytest.approx(float(ap_two[0].split()[1]), abs=1e-3)
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == len(
        (work / "one" / "log.jsonl").read_text().splitlines())


def test_a_killed_worker_restarts_the_group_which_resumes_and_ends_as_uninterrupted(tiny_data: Path,
                                                                                  tmp_path: Path) -> None:
    """16 images at a total batch of 4: 4 steps an epoch. Rank 1 dies (``os._exit``, no checkpoint)
    before step 6, in epoch 2; torchrun restarts both workers, which resume from epoch_0001.pt without
    ``--resume`` and end with the same weights as a run nobody killed."""
    ref = run(tmp_path, tiny_data, "ref", 2, epochs=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run(tmp_path, tiny_data, "killed", 2, epochs=2, torchrun=("--max_restarts=1",),
                 env={"KILL_RANK1_AT_STEP": "6"})
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "elastic restart 1: resuming" in killed.stderr
    assert "resumed from" in killed.stderr and "epoch_0001.pt" in killed.stderr
    a = load_checkpoint(tmp_path / "ref" / "epoch_0002.pt")
    b = load_checkpoint(tmp_path / "killed" / "epoch_0002.pt")
    assert a["step"] == b["step"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_unreadable_images_skipped_unevenly_across_processes_keep_the_group_in_step(tiny_data: Path,
                                                                                     tmp_path: Path) -> None:
    """``dataset.skip_bad_images`` with 7 of the 16 training images unreadable, 2 processes, each step 2
    accumulated passes of 2 images per process (2 steps an epoch), so the processes' batches keep different
    numbers of images. Every process must run as many forward passes, none over 2 images, or the group's
    collectives stop pairing up (before the fix: a hang): 3 and 2 images run as two passes on both, and a
    step where one process has fewer images than the passes another needs (0 or 1 against 3) is skipped
    by all. The skipped images are counted over both processes."""
    import shutil

    from core.data.sampler import EpochSampler
    from core.data.spec import load_dataset_spec, read_split

    records = read_split(load_dataset_spec(tiny_data), "train")  # the shapes are drawn on first use: before the copy
    broken = tmp_path / "data"
    shutil.copytree(tiny_data.parent, broken)
    bad = sorted(p.name for p in (broken / "tiny" / "images" / "train").iterdir())[-7:]
    for name in bad:
        (broken / "tiny" / "images" / "train" / name).write_bytes(b"not a jpeg")
    # what each process's batch keeps, step by step (General.seed 0): the cases above, all of them
    readable = []
    for epoch in range(2):
        per_rank = []
        for rank in range(2):
            sampler = EpochSampler(len(records), 4, shuffle=True, seed=0, rank=rank, world_size=2)
            sampler.set_epoch(epoch)
            order = [Path(records[i].file_name).name for i, _ in sampler]
            per_rank.append([sum(name not in bad for name in order[k:k + 4]) for k in range(0, len(order), 4)])
        readable.append(list(zip(*per_rank)))
    assert readable == [[(0, 3), (3, 3)], [(3, 2), (1, 3)]]

    two = run(tmp_path, broken / tiny_data.name, "uneven", 2, epochs=2, torchrun=("--max_restarts=0",),
              args=("dataset.skip_bad_images=True", "General.accumulate=2"), timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "epoch 1: 1 steps not taken" in two.stderr and "epoch 2: 1 steps not taken" in two.stderr
    state = load_checkpoint(tmp_path / "uneven" / "epoch_0002.pt")
    assert state["step"] == 4 and state["skipped_images"] == 14  # 7 unreadable images in each of 2 epochs
    rows = [json.loads(line) for line in (tmp_path / "uneven" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "train")
