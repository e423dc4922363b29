"""DataLoaders for a config: dataset spec -> records -> transforms -> batches."""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import threading
import weakref
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from core.data.augment import AugmentConfig
from core.data.dataset import DetectionDataset, collate
from core.data.records import ImageRecord
from core.data.sampler import EpochSampler
from core.data.transforms import build_transform


def build_loader(cfg: Any, records: list[ImageRecord], train: bool, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader yielding ``(images [B, 3, S, S], targets)`` (see ``core.data.dataset``).

    Training loaders augment (scale, crop, flip, and what the config's ``augment`` section turns
    on: photometric jitter, mosaic, MixUp, CutMix; with ``dataset.tile`` a random tile of each
    picture first), draw a seeded order per epoch through an
    :class:`~core.data.sampler.EpochSampler` (call ``loader.sampler.set_epoch(epoch, start)``)
    and give process ``rank`` of ``world_size`` its shard; evaluation loaders read every record
    in order, unaugmented.
    """
    d = cfg.dataset
    augment = AugmentConfig.from_config(cfg) if train else None
    transform = build_transform(d.image_size, d.mean, d.std, train=train,
                                hflip_prob=d.hflip_prob if train else 0.0,
                                scale_range=(d.scale_min, d.scale_max) if train else (1.0, 1.0),
                                photometric=augment.photometric if augment is not None else None,
                                tile=getattr(d, "tile", 0) if train else 0)
    dataset = DetectionDataset(records, transform, skip_bad=d.skip_bad_images, augment=augment)
    sampler = EpochSampler(len(dataset), batch_size, shuffle=True, seed=seed, rank=rank,
                           world_size=world_size) if train else None
    workers = cfg.General.loader_worker
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
    )


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start_workers(loader: DataLoader) -> Iterator:
    """``iter(loader)``, with SIGINT and SIGTERM blocked while it forks its worker processes.

    A worker sets itself to ignore those signals (:func:`ignore_stop_signals`) only once it runs;
    a signal sent to the whole process group in between (Ctrl-C during the start of an epoch or of
    an evaluation) would kill it, and the main process would die with "DataLoader worker exited
    unexpectedly" instead of saving. Blocked, the signal waits: the workers discard it, and the
    main process receives it as soon as the workers are started.
    """
    if loader.num_workers == 0:
        return iter(loader)
    before = set(multiprocessing.active_children())
    main = threading.current_thread() is threading.main_thread()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if main else None
    try:
        batches = iter(loader)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # also when iter() was cut short: its workers run, and nothing else would ever stop them
        _WORKERS.update(p for p in multiprocessing.active_children() if p not in before)
    _RUNNING.add(batches)
    return batches


_RUNNING: "weakref.WeakSet[Iterator]" = weakref.WeakSet()  # worker iterators start_workers made
_WORKERS: "weakref.WeakSet[multiprocessing.Process]" = weakref.WeakSet()  # and their worker processes


@atexit.register  # registered after multiprocessing's own exit handler, so it runs before it
def _stop_workers_at_exit() -> None:
    """Shut down the workers of every loader still alive at interpreter exit (a persistent iterator
    kept by its loader until the garbage collector frees it), then kill the workers start_workers
    started that are left (an iterator whose start was cut short). multiprocessing's exit handler
    would send them SIGTERM, which they ignore, and wait forever. Other child processes are left alone."""
    for batches in list(_RUNNING):
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    for worker in list(_WORKERS):
        if worker.is_alive():
            worker.kill()
            worker.join()


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM and leave the stop to the main process
    (``core.engine.signals``: finish the step, save, exit; the workers then end with it). A signal
    sent to the whole process group (Ctrl-C in a terminal, ``timeout``, a cluster scheduler) would
    otherwise kill the workers at once and the main process with a "DataLoader worker killed"
    error before it could save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by start_workers; pending ones are dropped
