"""The training loop: one config in, checkpoints, a JSON-lines log and curves out."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from core.checkpoint import checkpoint_path, list_checkpoints, load_latest, save_checkpoint
from core.config import Config
from core.data.loader import build_loader
from core.data.spec import DatasetSpec, load_dataset_spec, read_split
from core.engine import distributed
from core.engine.inference import evaluate_detections, predict_batches
from core.engine.runtime import autocast, needs_grad_scaler, run_dir, seed_everything, select_device
from core.evaluation import coco_ground_truth
from core.schedule import lr_factor
from core.task import DetectionTask
from symbol.builder import build_detector


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


class Trainer:
    """Trains ``cfg``'s detector on the dataset named by ``cfg.dataset.data``.

    Writes into ``General.work_dir/General.name``: ``config.json`` (resolved config),
    ``log.jsonl``, ``epoch_NNNN.pt`` checkpoints (atomic, each epoch), ``curves.png``.
    Runs on one CPU or GPU, or under ``torchrun`` on many (only rank 0 writes).
    """

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        g = cfg.General
        self.dist = distributed.init()
        self.device = select_device(g.device)
        seed_everything(g.seed + self.dist.rank, g.deterministic)
        self.out = run_dir(cfg)
        self.amp = bool(g.fp16) and self.device.type == "cuda"
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        self.spec: DatasetSpec = load_dataset_spec(cfg.dataset.data)
        train_records = read_split(self.spec, "train")
        self.val_records = read_split(self.spec, "val") if "val" in self.spec.splits else []
        self.train_loader = build_loader(cfg, train_records, train=True, batch_size=g.batch_image, seed=g.seed,
                                         distributed=self.dist.world_size > 1)
        self.val_loader = build_loader(cfg, self.val_records, train=False, batch_size=cfg.test.batch_image)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.spec.path}: {len(train_records)} training images are fewer than one batch "
                             f"(General.batch_image = {g.batch_image} per process x {self.dist.world_size})")

        self.model = build_detector(cfg, self.spec.num_classes).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task = DetectionTask(cfg, self.model.levels, self.spec.num_classes)
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.ema = ModelEmaV3(self.model, decay=cfg.optimizer.ema_decay, use_warmup=True) \
            if cfg.optimizer.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.device, g.fp16))
        self.net = distributed.wrap(self.model, self.device, self.dist)
        self.epoch = cfg.schedule.begin_epoch
        self.step = self.epoch * self.steps_per_epoch
        if resume:
            self._resume()

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
            "class_names": self.spec.class_names,
            "category_ids": self.spec.category_ids,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _resume(self) -> None:
        found = load_latest(self.out, map_location="cpu", warn=self._print)
        if found is None:
            self._print(f"no checkpoint in {self.out} to resume from; starting at epoch {self.epoch}")
            return
        state, path = found
        self.model.load_state_dict(state["model"])
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step = state["epoch"], state["step"]
        self._truncate_log(self.step)
        self._print(f"resumed from {path} (epoch {self.epoch}, step {self.step})")

    # ------------------------------------------------------------------ output
    def _print(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def _log(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after ``step`` (work lost with an interrupted epoch)."""
        log = self.out / "log.jsonl"
        if not self.dist.is_main or not log.exists():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue
        log.write_text("".join(k + "\n" for k in kept))

    def _save(self) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.state(), checkpoint_path(self.out, self.epoch))
        keep = self.cfg.General.keep_checkpoints
        if keep > 0:
            for _, old in list_checkpoints(self.out)[:-keep]:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, float]:
        """Train from the current epoch to ``schedule.end_epoch``; returns the last evaluation's stats."""
        cfg = self.cfg
        if self.dist.is_main:
            cfg.save(self.out / "config.json")
            shutil.copyfile(cfg.source, self.out / "config.py")
        self._print(f"training {cfg.General.name}: {len(self.train_loader.dataset)} images, "
                    f"{self.spec.num_classes} classes, {self.steps_per_epoch} steps/epoch, device {self.device}, "
                    f"{self.dist.world_size} process(es) -> {self.out}")
        stats: dict[str, float] = {}
        end = cfg.schedule.end_epoch
        while self.epoch < end:
            self._train_epoch()
            self.epoch += 1
            every = cfg.schedule.eval_every
            if self.val_records and every > 0 and (self.epoch % every == 0 or self.epoch == end):
                stats = self.evaluate()
            self._save()
        if self.dist.is_main:
            from core.plot import plot_runs

            plot_runs([self.out], self.out / "curves.png")
            self._print(f"done: checkpoints, log.jsonl and curves.png in {self.out}")
        distributed.barrier(self.dist)
        return stats

    def _train_epoch(self) -> None:
        cfg, g = self.cfg, self.cfg.General
        self.net.train()
        self.train_loader.generator.manual_seed(g.seed + self.epoch)
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(self.epoch)
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.schedule.end_epoch}",
                   disable=not self.dist.is_main, dynamic_ncols=True, file=sys.stderr)
        window: dict[str, float] = {}
        window_n, window_start = 0, time.perf_counter()
        for images, targets in bar:
            lr = cfg.optimizer.lr * lr_factor(self.step, self.steps_per_epoch, cfg.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                images = images.to(memory_format=torch.channels_last)
            with autocast(self.device, self.amp):
                outputs = self.net(images)
            losses = self.task.loss(outputs, images, targets, average=distributed.averager(self.dist))
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at step {self.step} (images {[t['image_id'] for t in targets]}); "
                    f"lower optimizer.lr or check these images' boxes")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optimizer.clip_grad_norm > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:
                self.ema.update(self.model, step=self.step)
            self.step += 1

            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + float(v.detach())
            window_n += 1
            if window_n == g.log_frequency or bar.n + 1 == self.steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                row = {k: v / window_n for k, v in window.items()}
                ips = window_n * images.shape[0] * self.dist.world_size / max(elapsed, 1e-9)
                self._log({"kind": "train", "epoch": self.epoch + 1, "step": self.step, **row, "lr": lr,
                           "images_per_s": ips})
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                window, window_n, window_start = {}, 0, time.perf_counter()

    def evaluate(self) -> dict[str, float]:
        """COCO metrics of the EMA (or plain) weights on the val split; logged and returned (rank 0)."""
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return {}
        model = self.ema.module if self.ema else self.model
        detections = predict_batches(model, self.task, self.val_loader, self.device, self.amp)
        coco_gt = coco_ground_truth(self.spec, "val", self.val_records)
        result, _ = evaluate_detections(detections, coco_gt, self.spec.class_names, self.spec.category_ids)
        stats = {k: (v if math.isfinite(v) else -1.0) for k, v in result.stats.items()}
        self._log({"kind": "eval", "epoch": self.epoch, "step": self.step, **stats})
        self._print(f"epoch {self.epoch}: AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  AP75 {stats['AP75']:.3f}")
        distributed.barrier(self.dist)
        return stats
