"""The run folder's safety rules: one trainer at a time, never written over, resumed only where resume can follow.

* :func:`claim_run_folder` (called by ``Trainer.__init__``) takes the folder's lock on rank 0 and refuses a
  fresh run into a folder that already holds a run's checkpoints or log, unless it is resumed or explicitly
  started afresh (``--overwrite``, which removes only :data:`RUN_FILES`). An elastic restart of the same run
  under ``torchrun`` (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes by itself.
* :class:`RunLock`: ``RUN_DIR/.lock``, held with ``fcntl.flock`` and holding the holder's pid, host and
  ``TORCHELASTIC_RUN_ID``.
* :data:`RESUME_REFUSES` / :data:`RESUME_FOLLOWS`: which config changes ``--resume`` refuses and which it follows.
* :func:`resume_command`: the command line that continues an interrupted run.

Only the standard library is imported at module level, so the lock can be used without torch.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

try:
    import fcntl
except ImportError:  # not on POSIX: no lock (said when one is asked for)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# What a run writes into its folder, and so all that --overwrite removes (nothing else in the folder is touched):
# checkpoints, the log, the config record, the curves, TensorBoard events, detection_test.py's results, and the
# temp files a killed write of one of them can leave (``.<name>.tmp<pid>``: core.engine.output_paths.atomic_output).
_RUN_OUTPUTS = ("epoch_*.pt", "interrupted.pt", "best.pt", "log.jsonl", "config.json", "config.py", "curves.png",
                "results_*.json")
RUN_FILES = _RUN_OUTPUTS + ("tensorboard",) + tuple(f".{name}.tmp*" for name in _RUN_OUTPUTS)
# A folder holding any of these holds a run: a fresh run there is refused.
RUN_MARKERS = ("epoch_*.pt", "interrupted.pt", "best.pt", "log.jsonl")


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (it holds another run, another trainer holds it, or the
    checkpoint to resume was trained on another setup); the one-line message names the folder and the way out."""


def elastic_restart_count() -> int:
    """How many times ``torchrun`` has restarted this run's workers (0 outside torchrun or on the first attempt)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def run_contents(run_dir: Path) -> list[Path]:
    """The checkpoints and log in ``run_dir`` that show it holds a run (empty when it holds none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted({p for pattern in RUN_MARKERS for p in run_dir.glob(pattern)})


def clear_run(run_dir: Path, keep: Iterable[str | Path] = ()) -> list[Path]:
    """Remove what a run wrote into ``run_dir`` (:data:`RUN_FILES`, nothing else) except the files in
    ``keep`` (this run's own inputs, such as ``--config runs/NAME/config.py``); returns what was removed."""
    import shutil

    kept = {os.path.realpath(p) for p in keep}
    removed = sorted({p for pattern in RUN_FILES for p in Path(run_dir).glob(pattern)
                      if os.path.realpath(p) not in kept})
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed


def _describe(found: list[Path]) -> str:
    checkpoints = [p.name for p in found if p.suffix == ".pt"]
    parts = []
    if checkpoints:
        parts.append(checkpoints[0] if len(checkpoints) == 1 else
                     f"{len(checkpoints)} checkpoints {checkpoints[0]} ... {checkpoints[-1]}")
    parts += [p.name for p in found if p.suffix != ".pt"]
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the lock


class RunLock:
    """The lock of one run folder, ``RUN_DIR/.lock``: an ``fcntl.flock`` on a file that holds the holder's pid,
    host and ``TORCHELASTIC_RUN_ID`` (JSON), taken by rank 0 only.

    * Held by another live process: :class:`RunFolderError` naming the folder and that pid.
    * Held by an earlier attempt of the same elastic run (``TORCHELASTIC_RESTART_COUNT`` > 0 and the same
      ``TORCHELASTIC_RUN_ID``): taken over.
    * The file is there but nobody holds it (its holder died without releasing it): reported in one line
      as stale, then taken over.

    Within one process the lock is shared: a second ``Trainer`` of the same folder in the same process (a
    resumed one, as tests and notebooks make them) counts as another user of the same lock, which is freed
    (and the file removed) when the last user releases it, at the latest when the process exits. Processes
    forked from the holder (DataLoader workers) drop their inherited copy, so a killed trainer's lingering
    workers never keep its folder locked.
    """

    _held: dict[str, list[Any]] = {}  # realpath of the lock file -> [fd, users], in this process

    def __init__(self, path: Path, key: str):
        self.path, self._key, self._released = path, key, False

    @classmethod
    def acquire(cls, run_dir: Path, log: Callable[[str], None] = print) -> "RunLock | None":
        """The lock of ``run_dir`` (created if needed), or None where the file system cannot lock (said once)."""
        path = Path(run_dir) / LOCK_NAME
        key = os.path.realpath(path)
        if key in cls._held:
            cls._held[key][1] += 1
            return cls(path, key)
        fd = _take(path, log)
        if fd is None:
            return None
        cls._held[key] = [fd, 1]
        return cls(path, key)

    def release(self) -> None:
        """Give up this user's share; the last one unlocks and removes the file. Calling it again does nothing."""
        if self._released:
            return
        self._released = True
        entry = self._held.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._held[self._key]
            _let_go(self.path, entry[0])

    @classmethod
    def _release_all(cls) -> None:  # at exit
        for key, (fd, _) in list(cls._held.items()):
            del cls._held[key]
            _let_go(Path(key), fd)

    @classmethod
    def _forget_in_child(cls) -> None:  # after fork: the child closes its copy and never unlocks the parent's lock
        for fd, _ in cls._held.values():
            try:
                os.close(fd)
            except OSError:
                pass
        cls._held.clear()


atexit.register(RunLock._release_all)
os.register_at_fork(after_in_child=RunLock._forget_in_child)


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "run_id": os.environ.get("TORCHELASTIC_RUN_ID", ""),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode()) if data.strip() else {}
        return holder if isinstance(holder, dict) else {"pid": "?"}
    except (OSError, ValueError):
        return {"pid": "?"}


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _own_restart(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` is an earlier attempt of this elastic run (so this restart may take its lock over)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic_restart_count() == 0 or not run_id or holder.get("run_id") != run_id:
        return False
    # torchrun's default id "none" is shared by unrelated jobs: then only one of this host counts
    return run_id != "none" or holder.get("host") == socket.gethostname()


def _take(path: Path, log: Callable[[str], None]) -> int | None:
    """Lock ``path`` for this process and write who holds it; the fd, or None where locking is not supported."""
    folder = path.parent
    if fcntl is None:
        log(f"warning: no file locks on this system; a second trainer in {folder} would not be kept out")
        return None
    for _ in range(10):  # a holder releasing it removes the file: then lock the new one
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(f"cannot create the lock file {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if _own_restart(holder):
                log(f"note: elastic restart {elastic_restart_count()} of run {holder['run_id']}: taking over the lock "
                    f"of {folder} from the previous attempt (pid {holder.get('pid')})")
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                continue
            raise RunFolderError(
                f"run folder {folder} is in use by another trainer (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, lock file {path}); wait for it to end or stop it, or train into another "
                "folder (--set General.name=NAME)") from None
        except OSError as err:  # e.g. ENOLCK: a file system without flock
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise RunFolderError(f"cannot lock {path}: {err.strerror}") from None
            log(f"warning: cannot lock {path} ({err.strerror}); a second trainer in {folder} would not be kept out")
            return None
        if not _same_file(fd, path):  # removed by its releasing holder between our open and our lock
            os.close(fd)
            continue
        holder = _read_holder(fd)
        if holder:  # written by a holder that ended without releasing it (killed, power loss)
            if _own_restart(holder):
                log(f"note: elastic restart {elastic_restart_count()} of run {holder['run_id']}: taking over the lock "
                    f"of {folder} from the previous attempt (pid {holder.get('pid')})")
            else:
                log(f"note: stale lock {path} of pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                    "(that process is gone); taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
        return fd
    raise RunFolderError(f"cannot take the lock {path}: it keeps changing hands; is another trainer starting there?")


def _let_go(path: Path, fd: int) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- starting a run


def claim_run_folder(run_dir: Path, dist: Any, resume: bool, overwrite: bool,
                     log: Callable[[str], None]) -> tuple[RunLock | None, bool, bool]:
    """Lock ``run_dir`` (rank 0) and decide how this run starts there: returns ``(lock, resume, overwrite)``.

    A folder that already holds a run (:data:`RUN_MARKERS`) is never written over: without ``resume`` or
    ``overwrite`` this raises :class:`RunFolderError` naming the folder and the three ways on. An elastic
    restart (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes by itself, and never overwrites what its first
    attempt wrote. Every process raises together (rank 0 with the reason), so none is left waiting.
    """
    from core.engine import distributed

    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or start it afresh")
    restart = elastic_restart_count()
    if restart > 0:
        if not resume:
            log(f"elastic restart {restart}: resuming {run_dir} from its newest checkpoint")
        resume, overwrite = True, False
    lock, error = None, None
    if dist.is_main:
        try:
            lock = RunLock.acquire(run_dir, log)
            found = run_contents(run_dir)
            if found and not resume and not overwrite:
                raise RunFolderError(
                    f"run folder {run_dir} already holds a run ({_describe(found)}); continue it with --resume, "
                    f"train into another folder with --set General.name=NAME, or start afresh there with "
                    f"--overwrite (removes that run's checkpoints, log and records, nothing else)")
        except RunFolderError as err:
            if lock is not None:
                lock.release()
            error = err
    if not distributed.all_true(error is None, dist):
        raise error or RunFolderError(f"rank 0 refused run folder {run_dir} (see its message)")
    return lock, resume, overwrite


# ----------------------------------------------------------------------------- what --resume may change

# Which config changes --resume refuses and which it follows: decided here, for every section of
# config/base.py ("*" = every field of the section; tests/test_runs.py checks that each declared field is in
# exactly one of the two). A field in neither (declared later and not sorted yet) is refused: resume follows
# only what it is known to follow.
#
# Refused: the network's shapes and what its outputs mean (model sections, anchors, input size and
# normalisation), the data and the order the position inside an epoch counts through (dataset.data,
# General.seed), and what the optimizer state is laid out for (its type, the frozen parameters). The class
# names and the training images themselves are compared as well (Trainer._resume).
RESUME_REFUSES: dict[str, tuple[str, ...] | str] = {
    "backbone": "*", "neck": "*", "head": "*", "anchors": "*",
    "dataset": ("data", "image_size", "mean", "std"),
    "General": ("seed",),
    "optimizer": ("type",),
    "pretrain": ("fixed_param",),
}
# Followed (printed, one line per changed field): schedule and learning rate, augmentation, loss weights,
# evaluation and logging, workers, precision, batch size (the run continues at the same count of images seen
# in the epoch, with the lr scaled to the new total batch), and start-up options that a resume no longer uses.
RESUME_FOLLOWS: dict[str, tuple[str, ...] | str] = {
    "General": ("name", "work_dir", "batch_image", "accumulate", "precision", "compile", "loader_worker",
                "log_frequency",
                "deterministic", "device", "keep_checkpoints", "sync_bn", "bn_momentum"),
    "schedule": "*",
    "optimizer": ("lr", "lr_batch", "momentum", "weight_decay", "clip_grad_norm", "ema_decay"),
    "dataset": ("hflip_prob", "scale_min", "scale_max", "tile", "skip_bad_images", "skip_bad_records"),
    "augment": "*", "loss": "*", "test": "*",
    "pretrain": ("backbone_weights", "detector_weights", "excluded_param", "allow_pickle"),
}


def _listed(table: dict[str, tuple[str, ...] | str], section: str, field: str) -> bool:
    fields = table.get(section, ())
    return fields == "*" or field in fields


def resume_follows(section: str, field: str) -> bool:
    """Whether ``--resume`` follows a change of ``section.field`` (else it refuses it)."""
    return _listed(RESUME_FOLLOWS, section, field) and not _listed(RESUME_REFUSES, section, field)


def _same(section: str, field: str, old: Any, new: Any) -> bool:
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same(section, field, a, b) for a, b in zip(old, new))
    if (section, field) == ("dataset", "data") and isinstance(old, str) and isinstance(new, str):
        return old == new or os.path.realpath(old) == os.path.realpath(new)
    return old == new


def config_changes(saved: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
                   ) -> tuple[list[str], list[str]]:
    """``(refused, followed)``: one ``"section.field: old -> new"`` per field that differs between the
    checkpoint's config ``saved`` and ``current`` (both ``Config.to_dict()``; a field missing on one side
    is not compared), sorted by :func:`resume_follows`."""
    refused, followed = [], []
    for section, values in current.items():
        old_values = saved.get(section)
        if not isinstance(old_values, dict):
            continue
        for field, new in values.items():
            if field not in old_values or _same(section, field, old_values[field], new):
                continue
            change = f"{section}.{field}: {old_values[field]!r} -> {new!r}"
            (followed if resume_follows(section, field) else refused).append(change)
    return refused, followed


def resume_command(argv: Iterable[str] | None = None) -> str:
    """The command line that continues this run: ``argv`` (default ``sys.argv``, as given) with ``--resume``
    added once and ``--overwrite`` dropped, shell-quoted; under ``torchrun`` with its process count."""
    argv = list(sys.argv if argv is None else argv)
    script, args = (argv[0] if argv else "detection_train.py"), argv[1:]

    def abbreviates(arg: str, option: str) -> bool:  # argparse accepts unambiguous prefixes
        return len(arg) > 2 and option.startswith(arg)

    args = [a for a in args if not abbreviates(a, "--overwrite")]
    if not any(abbreviates(a, "--resume") for a in args):
        args.append("--resume")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    if world > 1:
        nodes = [f"--nnodes={world // local}"] if world != local else []
        prefix = ["torchrun", *nodes, f"--nproc_per_node={local}"]
        tail = " (with the same rendezvous options, on every node)" if nodes else ""
        return shlex.join(prefix + [script] + args) + tail
    return shlex.join(["python", script] + args)
