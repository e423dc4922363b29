"""DataLoaders for a config: dataset spec -> records -> transforms -> batches."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.data.dataset import DetectionDataset, collate
from core.data.records import ImageRecord
from core.data.transforms import build_transform


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(cfg: Any, records: list[ImageRecord], train: bool, batch_size: int, seed: int = 0,
                 distributed: bool = False) -> DataLoader:
    """A DataLoader over ``records``: shuffled, augmented and with incomplete batches dropped when
    ``train``; in order and complete otherwise. Yields ``(images [B, 3, S, S], targets)``
    (see ``core.data.dataset``). With ``distributed`` each process reads its own shard."""
    d = cfg.dataset
    transform = build_transform(d.image_size, d.mean, d.std, train=train,
                                hflip_prob=d.hflip_prob if train else 0.0,
                                scale_range=(d.scale_min, d.scale_max) if train else (1.0, 1.0))
    dataset = DetectionDataset(records, transform)
    workers = cfg.General.loader_worker
    generator = torch.Generator().manual_seed(seed)
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train) if distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
    )
