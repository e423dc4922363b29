"""The training loop: one config in, checkpoints, a JSON-lines log and curves out."""
from __future__ import annotations

import json
import contextlib
import itertools
import math
import os
import shutil
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from core.tasks.anchor_check import check_anchors
from core.engine.checkpoint import (CheckpointError, PickleRequiredError, checkpoint_path, list_checkpoints,
                             load_checkpoint, load_latest, save_checkpoint)
from core.config.loading import Config, ConfigError
from core.data.check import load_checked_records
from core.data.loader import build_loader, start_workers
from core.data.spec import DatasetSpec, load_dataset_spec
from core.engine import distributed
from core.engine.recipe import read_saved_config, resolve_recipe
from core.engine.inference import evaluate_detections, inference_model, predict_batches
from core.engine.output_paths import atomic_output
from core.engine.run_folder import RunFolderError, claim_run_folder, clear_run, config_changes, resume_command
from core.engine.runtime import (autocast, check_precision, needs_grad_scaler, run_dir, seed_everything,
                                 select_device)
from core.evaluation.coco_eval import STAT_NAMES, coco_ground_truth
from core.engine.schedule import apply_mult, lr_factor
from core.engine.signals import StopNow, StopSignals, TrainingInterrupted
from core.weights.pretrain import apply_pretrain, starting_weights
from core.tasks.task import build_task
from symbol.builder import build_detector

TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files, next to log.jsonl
TENSORBOARD_IMAGES = 4  # validation images drawn with their detections at each evaluation
TENSORBOARD_SCORE = 0.3  # lowest score drawn on them
INTERRUPTED = "interrupted.pt"  # checkpoint written when a run is stopped by a signal mid-epoch
BEST = "best.pt"  # the state after the best evaluation by schedule.best_metric; never pruned
NONFINITE_LIMIT = 5  # consecutive non-finite losses after which a run stops


def build_optimizer(model: nn.Module, opt: Any) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov off) or AdamW over ``model``; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt.type == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum)
    if opt.type == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr)
    raise ValueError(f"unknown optimizer.type '{opt.type}'; choose sgd or adamw")


DATA_WAIT_WARN = 0.10  # share of the step time spent waiting for the loader above which the trainer warns


def data_wait_warning(wait_s: float, step_s: float, workers: int) -> str | None:
    """The warning for an epoch whose steps spent ``wait_s`` of their ``step_s`` seconds waiting for the
    loader (the epoch's first step, which starts the workers, left out), or None below
    :data:`DATA_WAIT_WARN`."""
    if step_s <= 0 or wait_s / step_s <= DATA_WAIT_WARN:
        return None
    return (f"warning: the steps waited for data {wait_s / step_s:.0%} of the time (data_s in log.jsonl), more "
            f"than {DATA_WAIT_WARN:.0%}: the loader does not keep up; raise General.loader_worker (now {workers}) "
            "if the machine has idle cores, or make decoding cheaper (smaller pictures on disk)")


class Trainer:
    """Trains ``cfg``'s detector on the dataset named by ``cfg.dataset.data``.

    Writes into ``General.work_dir/General.name``: ``config.json`` (resolved config),
    ``log.jsonl``, ``epoch_NNNN.pt`` checkpoints (atomic, each epoch), ``curves.png``.
    Runs on one CPU or GPU, or under ``torchrun`` on many (only rank 0 writes).

    The run folder is locked by rank 0 from here until :meth:`fit` ends (``RUN_DIR/.lock``; a second
    trainer there is refused), and a folder that already holds a run is never written over: it is
    continued with ``resume=True`` (refused if the checkpoint was trained on another network, classes or
    data; other changes are followed and printed), or started afresh with ``overwrite=True``, which first
    removes the files a run writes there (``core.engine.run_folder.RUN_FILES``). Without either such a
    folder is refused (:class:`~core.engine.run_folder.RunFolderError`). An elastic restart under
    ``torchrun`` resumes by itself.
    """

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        g = cfg.General
        if not isinstance(g.accumulate, int) or g.accumulate < 1:
            raise ConfigError(f"General.accumulate = {g.accumulate!r}: set a whole number of forward passes per "
                              "optimizer step, 1 or more")
        if cfg.schedule.best_metric not in STAT_NAMES:
            raise ConfigError(f"schedule.best_metric '{cfg.schedule.best_metric}' is not an evaluation stat; "
                              f"use one of {', '.join(STAT_NAMES)}")
        mult_note = apply_mult(cfg.schedule)  # configs write their schedule for mult 1
        self.dist = distributed.init()
        self.device = select_device(g.device)
        seed_everything(g.seed + self.dist.rank, g.deterministic)
        self.out = run_dir(cfg)
        check_precision(self.device, g.precision)
        # the dataset YAML first: a wrong --data stops before the run folder is made (no empty runs/NAME/ left)
        self.spec: DatasetSpec = load_dataset_spec(cfg.dataset.data)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        # rank 0 locks the folder; a fresh run never writes over one there (core.engine.run_folder)
        self._lock, resume, overwrite = claim_run_folder(self.out, self.dist, resume, overwrite, self._print)
        if self._lock is not None:  # freed when fit() ends, or when this trainer is dropped without fitting
            weakref.finalize(self, self._lock.release)

        # start-up dataset check: problems stop the run with the full report unless dataset.skip_bad_records
        checked, notes = load_checked_records(self.spec, ("train", "val"), cfg.dataset.skip_bad_records,
                                              cfg.dataset.skip_bad_images)
        for note in notes:
            self._print(note)
        train_records = checked["train"]
        # recipe fields left at "auto": chosen now from the data and the run's length, or as its first start chose
        # the state a resume continues from, loaded once (its config stands in for a missing config.json)
        resumed = self._newest_state() if resume else None
        first_start = read_saved_config(self.out) if resume else None
        if first_start is None and resumed:
            first_start = resumed[0].get("config")
        self.recipe = resolve_recipe(cfg, len(train_records), self.dist.world_size, first_start)
        total_batch = g.batch_image * g.accumulate * self.dist.world_size  # images per optimizer step
        for note in ([mult_note] if mult_note else []) + [f"recipe: {choice}" for choice in self.recipe]:
            self._print(note)
        self.val_records = checked.get("val", [])
        check_anchors(cfg, train_records, log=self._print)  # share of boxes the anchors match; anchors.auto: a fit
        # a step's batch comes whole from the loader; _step runs it as `accumulate` forward passes
        self.train_loader = build_loader(cfg, train_records, train=True, batch_size=g.batch_image * g.accumulate,
                                         seed=g.seed,
                                         rank=self.dist.rank, world_size=self.dist.world_size)
        # each process evaluates its share of the val images; rank 0 gathers and scores them
        self.val_loader = build_loader(cfg, self.val_records[self.dist.rank::self.dist.world_size], train=False,
                                       batch_size=cfg.test.batch_image)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.spec.path}: {len(train_records)} training images are fewer than one batch "
                             f"(General.batch_image = {g.batch_image} x accumulate {g.accumulate} per process "
                             f"x {self.dist.world_size})")

        # channels_last is faster for these convnets on GPUs and on CPUs alike
        self.model = build_detector(cfg, self.spec.num_classes).to(self.device, memory_format=torch.channels_last)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = g.bn_momentum
        if g.sync_bn and self.dist.world_size > 1:  # before freezing, which must keep frozen norms frozen
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        apply_pretrain(self.model, cfg, self.spec.class_names, log=self._print)  # weights, frozen params
        self._print(starting_weights(cfg))
        self.task = build_task(cfg, self.model)
        # BatchNorm statistics move in the forward pass: a skipped step puts them back from this copy
        self._buffers = list(self.model.buffers())
        self._buffers_before_step = [b.detach().clone() for b in self._buffers]
        self.total_batch = total_batch
        self.base_lr = cfg.optimizer.lr * self.total_batch / cfg.optimizer.lr_batch
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.ema = ModelEmaV3(self.model, decay=cfg.optimizer.ema_decay, use_warmup=True) \
            if cfg.optimizer.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.device, g.precision))
        self.net = distributed.wrap(self.model, self.device, self.dist)
        if g.compile:
            self.net = torch.compile(self.net)
        self.epoch = cfg.schedule.begin_epoch
        self.step = self.epoch * self.steps_per_epoch
        self.nonfinite_in_row = 0
        self.skipped_images = 0
        self.train_records_by_id = {r.image_id: r for r in train_records}
        self.images_in_epoch = 0  # of the epoch's order, seen by all processes together (resumes at any batch)
        self.eval_pending = False  # the epoch's evaluation was cut short by a signal: done first when resumed
        # the best evaluation so far by schedule.best_metric, and how many have not beaten it since
        self.best: dict[str, Any] = {"metric": cfg.schedule.best_metric, "value": -math.inf, "epoch": 0,
                                     "evals_since": 0}
        self._train_ids = [r.image_id for r in train_records]  # the order the epoch's permutation indexes
        if resume:
            self._resume(resumed)
        elif overwrite and self.dist.is_main:
            removed = clear_run(self.out, keep=[cfg.source])  # a config read from the run folder stays
            if removed:
                self._print(f"--overwrite: removed {len(removed)} files of the previous run in {self.out}")

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it stands."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "skipped_images": self.skipped_images,
            # the position in the epoch as a count of images, and what it was counted with: a resume with
            # another batch or number of processes continues at the same image
            "images_in_epoch": self.images_in_epoch,
            "total_batch": self.total_batch,
            "world_size": self.dist.world_size,
            "train_images": len(self._train_ids),
            "eval_pending": self.eval_pending,
            "best": self.best,
            "class_names": self.spec.class_names,
            "category_ids": self.spec.category_ids,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _newest_state(self) -> tuple[dict[str, Any], Path] | None:
        """The newest of the run's epoch checkpoints and ``interrupted.pt`` (by step), loaded, with its
        path; None when there is none."""
        allow_pickle = self.cfg.pretrain.allow_pickle  # one that needs it and is not allowed stops the resume
        found = load_latest(self.out, map_location="cpu", warn=self._print, allow_pickle=allow_pickle)
        interrupted = self.out / INTERRUPTED
        if interrupted.exists():
            try:
                state = load_checkpoint(interrupted, allow_pickle=allow_pickle)
                if found is None or state["step"] > found[0]["step"]:
                    found = state, interrupted
            except PickleRequiredError:
                raise
            except CheckpointError as err:
                self._print(f"warning: {err}; using the epoch checkpoints instead")
        return found

    def _resume(self, found: tuple[dict[str, Any], Path] | None) -> None:
        """Continue from ``found`` (``_newest_state``), or start afresh when it is None."""
        if found is None:
            self._print(f"no checkpoint in {self.out} to resume from; starting at epoch {self.epoch}")
            return
        state, path = found
        self._check_resumable(state, path)
        self.model.load_state_dict(state["model"])
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        elif self.ema:  # EMA turned on since: it starts from the resumed weights
            self.ema.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] or not self.scaler.is_enabled():  # saved by a disabled scaler (fp32, bf16): nothing
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.skipped_images = state.get("skipped_images", 0)
        self.eval_pending = bool(state.get("eval_pending", False))
        if state.get("best") and state["best"]["metric"] == self.cfg.schedule.best_metric:
            self.best = state["best"]  # another best_metric starts its count afresh
        # older checkpoints count the position in steps of the batch they were written with, taken to be this one
        self.images_in_epoch = state.get("images_in_epoch",
                                         (self.step - self.epoch * self.steps_per_epoch) * self.total_batch)
        self._print(f"resumed from {path} (epoch {self.epoch}, step {self.step})")
        saved_total, saved_world = state.get("total_batch"), state.get("world_size")
        if saved_total is not None and (saved_total, saved_world) != (self.total_batch, self.dist.world_size):
            self._print(f"resume: total batch {saved_total} ({saved_world} process(es)) -> {self.total_batch} "
                        f"({self.cfg.General.batch_image} x {self.dist.world_size} process(es)), lr scaled to it; "
                        f"epoch {self.epoch + 1} continues after its first {self.images_in_epoch} images, none "
                        "repeated or left out")

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """Refuse ``state`` when it was trained on another network, classes or data (one line naming every
        field that differs, old and new value); print each change resume follows. Which is which is decided
        in ``core.engine.run_folder`` (``RESUME_REFUSES`` / ``RESUME_FOLLOWS``)."""
        refused, followed = [], []
        if isinstance(state.get("config"), dict):
            from core.config.loading import config_from_dict

            saved = config_from_dict(state["config"], str(path)).to_dict()  # fields declared since: defaults
            refused, followed = config_changes(saved, self.cfg.to_dict())
        for key, what in (("class_names", "class names"), ("category_ids", "category ids")):
            old, new = state.get(key), getattr(self.spec, key)
            if old is not None and list(old) != list(new):
                refused.append(f"{what}: {list(old)!r} -> {list(new)!r}")
        if state.get("train_images") is not None and state["train_images"] != len(self._train_ids):
            refused.append(f"training images: {state['train_images']} -> {len(self._train_ids)}")
        if refused:
            raise RunFolderError(
                f"cannot resume {self.out} from {path.name}: it was trained on another network, classes or data "
                f"({'; '.join(refused)}); undo the change, or start a new run (another General.name, or --overwrite)")
        for change in followed:
            self._print(f"resume: {change}")

    # ------------------------------------------------------------------ output
    def _print(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def _log(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            tb = self._tensorboard()
            if tb is not None:  # the same numbers as scalars, tagged "<kind>/<name>"
                for key, value in row.items():
                    if key not in ("kind", "epoch", "step") and isinstance(value, (int, float)) \
                            and not isinstance(value, bool):
                        tb.add_scalar(f"{row.get('kind', 'log')}/{key}", value, row.get("step", self.step))
                tb.flush()

    def _tensorboard(self) -> Any:
        """The run's TensorBoard writer (``RUN_DIR/tensorboard``) on rank 0, created on first use;
        None elsewhere or when the ``tensorboard`` package is missing (said once)."""
        writer = getattr(self, "_tb_writer", None)
        if writer is None and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._print("note: TensorBoard logging is off (pip install tensorboard); log.jsonl has everything")
                writer = False
            else:  # purge_step drops events a resumed run is about to write again
                writer = SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=self.step or None)
            self._tb_writer = writer
        return writer or None

    def _tensorboard_images(self, detections: dict[int, Any]) -> None:
        """The first ``TENSORBOARD_IMAGES`` validation images with their detections (score >=
        ``TENSORBOARD_SCORE``) drawn, into TensorBoard at the current step."""
        tb = self._tensorboard()
        if tb is None:
            return
        import numpy as np

        from core.data.dataset import load_image
        from core.data.records import DatasetError
        from core.inference.visualize import draw_detections

        for rec in self.val_records[:TENSORBOARD_IMAGES]:
            det = detections.get(rec.image_id)
            if det is None:
                continue
            try:
                image = load_image(rec)
            except DatasetError:
                continue
            keep = det.scores >= TENSORBOARD_SCORE
            drawn = draw_detections(image, det.boxes[keep], det.labels[keep], det.scores[keep], self.spec.class_names)
            tb.add_image(f"val/{Path(rec.file_name).name}", np.asarray(drawn), self.step, dataformats="HWC")
        tb.flush()

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after ``step`` (work lost with an interrupted epoch), and an evaluation
        row at ``step`` when that evaluation is to be redone (``eval_pending``)."""
        log = self.out / "log.jsonl"
        if not self.dist.is_main or not log.exists():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
                redone = self.eval_pending and row.get("kind") == "eval"
                if row["step"] < step or (row["step"] == step and not redone):
                    kept.append(line)
            except (ValueError, KeyError):
                continue
        with atomic_output(log) as tmp:  # a kill here keeps the whole log, never half of it
            tmp.write_text("".join(k + "\n" for k in kept))

    def _save_interrupted(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(), self.out / INTERRUPTED)

    def _save(self) -> None:
        if not self.dist.is_main:
            return
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # never written, so never pruning a good checkpoint in favour of a broken one
            raise FloatingPointError(
                f"{len(bad)} weight tensors are non-finite after epoch {self.epoch} (first: {bad[0]}); nothing saved, "
                f"the checkpoints in {self.out} are intact: lower optimizer.lr or set optimizer.clip_grad_norm")
        save_checkpoint(self.state(), checkpoint_path(self.out, self.epoch))
        (self.out / INTERRUPTED).unlink(missing_ok=True)  # superseded by the epoch checkpoint
        keep = self.cfg.General.keep_checkpoints
        if keep > 0:
            for _, old in list_checkpoints(self.out)[:-keep]:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, float]:
        """Train from the current step to ``schedule.end_epoch``; returns the last evaluation's stats.

        SIGINT / SIGTERM finish the current step, save ``interrupted.pt`` (resumable with
        ``--resume``) and raise :class:`TrainingInterrupted`; a second signal stops at once. One that
        comes during an evaluation stops it at once (a single process; several processes finish it, then
        stop after the next step) and saves ``interrupted.pt``, whose evaluation a resumed run does first.
        The run folder's lock is released when this returns or raises.
        """
        try:
            return self._fit()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _fit(self) -> dict[str, float]:
        cfg = self.cfg
        self._truncate_log(self.step)  # rows of a killed attempt beyond the state we start from
        if self.dist.is_main:
            cfg.save(self.out / "config.json", notes={"recipe": {f"{c.section}.{c.field}": c.reason
                                                                 for c in self.recipe}})
            copy = self.out / "config.py"
            if not (copy.exists() and os.path.samefile(cfg.source, copy)):  # --config runs/NAME/config.py: itself
                with atomic_output(copy) as tmp:
                    shutil.copyfile(cfg.source, tmp)
            self._tensorboard()  # opened at the start step, so a resumed run replaces the events it redoes
        self._print(f"training {cfg.General.name}: {len(self.train_loader.dataset)} images, "
                    f"{self.spec.num_classes} classes, {self.steps_per_epoch} steps/epoch, device {self.device}, "
                    f"{self.dist.world_size} process(es) -> {self.out}")
        stats: dict[str, float] = {}
        end = cfg.schedule.end_epoch
        with StopSignals() as stop:
            if self.eval_pending:  # resumed from a checkpoint whose evaluation a signal cut short
                stats = self._end_epoch(stop) or stats
            while self.epoch < end and not self._out_of_patience():
                self._train_epoch(stop)
                self.epoch += 1
                stats = self._end_epoch(stop) or stats
        if self.dist.is_main:
            from core.evaluation.plot import plot_runs

            plot_runs([self.out], self.out / "curves.png")
            if getattr(self, "_tb_writer", None):
                self._tb_writer.close()
                self._tb_writer = None
            self._print(f"done: checkpoints, log.jsonl and curves.png in {self.out}")
        distributed.barrier(self.dist)
        return stats

    def _end_epoch(self, stop: "StopSignals") -> dict[str, float]:
        """After an epoch: its evaluation when due, then its checkpoint; returns the evaluation's stats ({}
        when there was none). A signal during the evaluation (single process) stops it at once: the state
        goes to ``interrupted.pt`` with ``eval_pending`` and the RNG the evaluation started from, so the
        resumed run does that evaluation first and continues exactly as this one would have. A signal at
        any other time is seen after the next step, as during an epoch."""
        stats: dict[str, float] = {}
        every, end = self.cfg.schedule.eval_every, self.cfg.schedule.end_epoch
        if self.val_records and every > 0 and (self.epoch % every == 0 or self.epoch == end):
            rng = self.state()["rng"] if self.dist.is_main else None
            self.eval_pending = True
            # workers start outside the urgent part: a StopNow raised while they start would leave them
            # half-started, never shut down, and the process hanging at exit
            batches = start_workers(self.val_loader)
            try:  # with several processes, the evaluation finishes: gathering must not stop halfway on some
                with stop.urgent(self.dist.world_size == 1):
                    stats = self.evaluate(batches)
            except StopNow:
                if self.dist.is_main:
                    save_checkpoint({**self.state(), "rng": rng}, self.out / INTERRUPTED)
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} during the evaluation after epoch {self.epoch}; state saved to "
                    f"{self.out / INTERRUPTED} (the evaluation runs first when resumed); "
                    f"continue with: {resume_command()}") from None
        self.eval_pending = False  # done (or no longer due, after a change of schedule.eval_every)
        improved = self._track_best(stats)
        if improved and self.dist.is_main:  # the epoch's state, under a name pruning never touches; written
            save_checkpoint(self.state(), self.out / BEST)  # first, so no checkpoint records a best it lacks
        self._save()
        return stats

    def _track_best(self, stats: dict[str, float]) -> bool:
        """Count this evaluation against the best ``schedule.best_metric`` so far; True when it is a new best."""
        if not stats:
            return False
        metric, value = self.cfg.schedule.best_metric, stats[self.cfg.schedule.best_metric]
        if value > self.best["value"]:
            self.best = {"metric": metric, "value": value, "epoch": self.epoch, "evals_since": 0}
            return True
        self.best["evals_since"] += 1
        return False

    def _out_of_patience(self) -> bool:
        """True (and said once) when ``schedule.patience`` evaluations in a row did not beat the best."""
        patience = self.cfg.schedule.patience
        # rank 0 alone scores the evaluations: the others follow its decision
        if patience <= 0 or not distributed.any_true(self.best["evals_since"] >= patience, self.dist):
            return False
        self._print(f"early stop after epoch {self.epoch}: {self.best['metric']} has not improved for "
                    f"{self.best['evals_since']} evaluations (schedule.patience {patience}); best "
                    f"{self.best['value']:.4f} at epoch {self.best['epoch']}, kept in {self.out / BEST}")
        return True

    def _train_epoch(self, stop: "StopSignals") -> None:
        cfg, g = self.cfg, self.cfg.General
        self.net.train()
        # resumes at the same image of the epoch's order, whatever the batch and processes were then
        self.train_loader.sampler.set_epoch(self.epoch, seen=self.images_in_epoch)
        done_in_epoch = self.steps_per_epoch - len(self.train_loader)  # > 0 when resuming mid-epoch
        # a redrawn bar on a terminal; in a log file (CI, nohup, a scheduler) one line per log interval
        interactive = self.dist.is_main and sys.stderr.isatty()
        bar = tqdm(start_workers(self.train_loader), desc=f"epoch {self.epoch + 1}/{cfg.schedule.end_epoch}",
                   initial=done_in_epoch, total=self.steps_per_epoch,
                   disable=not interactive, dynamic_ncols=True, file=sys.stderr)
        in_epoch = done_in_epoch
        window: dict[str, float] = {}
        window_n, window_images, window_start, window_wait = 0, 0, time.perf_counter(), 0.0
        epoch_wait = epoch_time = 0.0  # after the epoch's first step (which starts the workers)
        steps_without_images = window_steps = 0
        batches = iter(bar)
        while True:
            fetch_start = time.perf_counter()
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            step_start = time.perf_counter()
            wait = step_start - fetch_start  # this step waited for the loader this long
            window_wait += wait
            drawn = (len(targets) + getattr(targets, "skipped", 0)) * self.dist.world_size  # as many on every rank
            passes = self._step_passes(targets)
            if passes == 0:
                steps_without_images += 1
            else:
                losses = self._step(images, targets, passes)
                if losses is not None:
                    for k, v in losses.items():
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
            self.step += 1
            self.images_in_epoch += drawn
            window_images += drawn
            window_steps += 1
            in_epoch += 1
            if in_epoch > done_in_epoch + 1:
                epoch_wait, epoch_time = epoch_wait + wait, epoch_time + time.perf_counter() - fetch_start
            if window_n and (window_n >= g.log_frequency or in_epoch >= self.steps_per_epoch):
                elapsed = time.perf_counter() - window_start
                row = {k: v / window_n for k, v in window.items()}
                ips = window_images / max(elapsed, 1e-9)  # every process's images, read or skipped
                lr = self.optimizer.param_groups[0]["lr"]
                data_s = window_wait / window_steps  # mean wait for data per step of the window
                data_share = window_wait / max(elapsed, 1e-9)
                self._log({"kind": "train", "epoch": self.epoch + 1, "step": self.step, **row, "lr": lr,
                           "images_per_s": ips, "data_s": data_s, "skipped_images": self.skipped_images})
                if interactive:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}",
                                    data=f"{data_share:.0%}")
                else:
                    self._print(f"epoch {self.epoch + 1}/{cfg.schedule.end_epoch} step {in_epoch}/"
                                f"{self.steps_per_epoch}: loss {row['loss']:.4f}  lr {lr:.2e}  img/s {ips:.1f}  "
                                f"data {data_share:.0%}")
                window, window_n, window_images, window_steps = {}, 0, 0, 0
                window_start, window_wait = time.perf_counter(), 0.0
            if distributed.any_true(stop.requested, self.dist):
                bar.close()
                self._save_interrupted()
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} at epoch {self.epoch + 1}, step {self.step}; state saved to "
                    f"{self.out / INTERRUPTED}; continue with: {resume_command()}")
        self.images_in_epoch = 0
        warning = data_wait_warning(epoch_wait, epoch_time, g.loader_worker)
        if warning:
            self._print(f"epoch {self.epoch + 1}: {warning}")
        if self.skipped_images:
            self._print(f"epoch {self.epoch + 1}: {self.skipped_images} unreadable images skipped so far "
                        "(dataset.skip_bad_images)")
        if steps_without_images:
            self._print(f"epoch {self.epoch + 1}: {steps_without_images} steps not taken: a process had too few "
                        "readable images left for the passes the others needed (dataset.skip_bad_images)")

    def _step_passes(self, targets: list[dict[str, Any]]) -> int:
        """Count the batch's unreadable images (``dataset.skip_bad_images``; over all processes) and return
        the number of forward passes each process runs this step, none over ``General.batch_image``
        images: ``General.accumulate`` for a whole batch, fewer for a short one, 0 to skip the step. Every
        process of a group runs as many passes, so that their collectives keep pairing up; when a
        process has fewer images left than the passes another one needs, every process skips the step."""
        skipped = getattr(targets, "skipped", 0)
        passes = -(-len(targets) // self.cfg.General.batch_image)
        if self.dist.world_size == 1 or not self.cfg.dataset.skip_bad_images:  # batches stay whole and alike
            self.skipped_images += skipped
            return passes
        counts = distributed.all_gather_ints([len(targets), passes, skipped], self.dist)
        self.skipped_images += sum(c[2] for c in counts)
        passes = max(c[1] for c in counts)
        return passes if all(c[0] >= passes for c in counts) else 0

    def _step(self, images: torch.Tensor, targets: list[dict[str, Any]], passes: int) -> dict[str, float] | None:
        """One optimisation step in ``passes`` forward passes (``_step_passes``); ``None`` when the loss was
        not finite and the step was skipped."""
        cfg = self.cfg
        # the schedule's position from images seen (the step count itself runs on over a change of batch)
        position = self.epoch * self.steps_per_epoch + self.images_in_epoch / self.total_batch
        lr = self.base_lr * lr_factor(position, self.steps_per_epoch, cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        if self._buffers:
            torch._foreach_copy_(self._buffers_before_step, self._buffers)
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._forward_backward(images, targets, passes)
        if losses is None:
            self._nonfinite(targets, "loss")
            return None
        if self.scaler.is_enabled():
            # fp16: the scaler itself skips steps whose gradients overflowed and lowers its scale
            if cfg.optimizer.clip_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.clip_grad_norm)
        else:
            if cfg.optimizer.clip_grad_norm > 0:  # the clip computes the norm the check needs
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.clip_grad_norm)
            else:
                norm = nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            if not distributed.all_true(bool(torch.isfinite(norm)), self.dist):
                self.optimizer.zero_grad(set_to_none=True)
                self._nonfinite(targets, "gradients")
                return None
        self.nonfinite_in_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model, step=self.step)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _forward_backward(self, images: torch.Tensor, targets: list[dict[str, Any]],
                          passes: int) -> dict[str, torch.Tensor] | None:
        """Gradients of the step's loss in ``passes`` forward passes (``General.accumulate`` of ``batch_image``
        images for a whole batch; sizes differing by at most one image, the largest first); returns the
        loss parts averaged over them, or ``None`` (nothing applied) when one was not finite.

        Each pass normalises by the mean over the passes (and processes) of the counts the loss divides
        by (positive anchors, YOLO matches), counted first on zero outputs of the same shapes, and its
        gradient counts ``1 / passes``: the passes add up to what ``passes`` processes give, which for
        the anchor heads is the gradient of the whole batch in one pass (frozen BatchNorm aside)."""
        sizes = [len(targets) // passes + (i < len(targets) % passes) for i in range(passes)]  # largest first
        bounds = [0, *itertools.accumulate(sizes)]
        chunks = [(images[a:b], targets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        average = distributed.averager(self.dist)
        precision = self.cfg.General.precision
        normalisers: list[torch.Tensor] | None = None
        total: dict[str, torch.Tensor] = {}
        for i, (chunk_images, chunk_targets) in enumerate(chunks):
            # DistributedDataParallel reduces the gradients once, in the last backward pass
            with self.net.no_sync() if passes > 1 and i < passes - 1 and self.dist.world_size > 1 \
                    else contextlib.nullcontext():
                with autocast(self.device, precision):
                    outputs = self.net(chunk_images)
                if passes > 1 and normalisers is None:
                    normalisers = self._pass_normalisers(outputs, chunks, average)
                shared = iter(normalisers or [])
                losses = self.task.loss(outputs, chunk_images, chunk_targets,
                                        average=(lambda _: next(shared)) if normalisers else average)
                if not distributed.all_true(bool(torch.isfinite(losses["loss"])), self.dist):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                self.scaler.scale(losses["loss"] / passes).backward()
            for k, v in losses.items():
                total[k] = total.get(k, 0.0) + v.detach() / passes
        return total

    def _pass_normalisers(self, outputs: Any, chunks: list[tuple[torch.Tensor, list[dict[str, Any]]]],
                          average: Any) -> list[torch.Tensor]:
        """What each of the loss's ``average`` calls must return so that every forward pass of a step
        divides by the same counts: the mean of the counts over the passes, and over processes."""
        blank = torch.utils._pytree.tree_map(lambda t: torch.zeros_like(t.detach(), dtype=torch.float32), outputs)
        per_pass: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for chunk_images, chunk_targets in chunks:
                seen: list[torch.Tensor] = []
                shaped = torch.utils._pytree.tree_map(lambda t: t[:len(chunk_targets)], blank)  # a shorter pass
                self.task.loss(shaped, chunk_images, chunk_targets, average=lambda c: seen.append(c.float()) or c)
                per_pass.append(seen)
        means = [torch.stack(calls).mean(0) for calls in zip(*per_pass)]
        return [average(m) for m in means] if average is not None else means

    def _nonfinite(self, targets: list[dict[str, Any]], what: str) -> None:
        """Count a skipped step whose ``what`` ("loss" or "gradients") was not finite; warn naming the
        batch's images, and raise FloatingPointError after ``NONFINITE_LIMIT`` in a row."""
        self.nonfinite_in_row += 1
        if self._buffers:  # the skipped step leaves no trace, not even in the BatchNorm statistics
            torch._foreach_copy_(self._buffers, self._buffers_before_step)
        names = [Path(self.train_records_by_id[t["image_id"]].file_name).name for t in targets]
        self._print(f"warning: non-finite {what} at step {self.step} ({self.nonfinite_in_row} in a row); "
                    f"step skipped; images: {', '.join(names)}")
        if self.nonfinite_in_row >= NONFINITE_LIMIT:
            raise FloatingPointError(
                f"{NONFINITE_LIMIT} non-finite steps in a row (last at step {self.step}); stopping. The last "
                f"good checkpoint in {self.out} is intact: lower optimizer.lr or check the images named above")

    def evaluate(self, batches: Iterable[tuple[torch.Tensor, list[dict]]] | None = None) -> dict[str, float]:
        """COCO metrics of the EMA (or plain) weights on the val split (``batches`` from the val loader,
        by default the loader itself), computed by every process on its share of the images and scored
        on rank 0; logged and returned there ({} elsewhere)."""
        model = self.ema.module if self.ema else getattr(self.model, "module", self.model)
        batches = self.val_loader if batches is None else batches
        network = inference_model(model, self.device)  # the form detection_test.py runs; model keeps its weights
        detections = predict_batches(network, self.task, batches, self.device, self.cfg.General.precision)
        detections = distributed.gather_to_main(detections, self.dist)
        if not self.dist.is_main:
            return {}
        coco_gt = coco_ground_truth(self.spec, "val", self.val_records)
        result, _ = evaluate_detections(detections, coco_gt, self.spec.class_names, self.spec.category_ids)
        stats = {k: (v if math.isfinite(v) else -1.0) for k, v in result.stats.items()}
        self._log({"kind": "eval", "epoch": self.epoch, "step": self.step, **stats})
        self._tensorboard_images(detections)
        self._print(f"epoch {self.epoch}: AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  AP75 {stats['AP75']:.3f}")
        return stats
