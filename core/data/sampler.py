"""The training sampler: a seeded order per epoch, sharded over processes, resumable mid-epoch."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch``: the same in every process,
    worker and resumed run."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation_seed)`` pairs for one epoch.

    The order is a permutation seeded by ``(seed, epoch)`` (or ``0..size-1`` without ``shuffle``).
    With ``world_size`` processes, process ``rank`` takes every ``world_size``-th item, so the
    ``k``-th batches of all processes together hold exactly the items that one process with the
    total batch would see at step ``k``. The tail that does not fill a batch on every process is
    dropped. ``set_epoch(epoch, start)`` skips the first ``start`` items of this process, to
    resume inside an epoch; ``set_epoch(epoch, seen=n)`` starts after the first ``n`` items of the
    epoch's order, which all processes together have seen (as a checkpoint counts them): this holds
    when the batch or the number of processes changed since, so no item is repeated or left out.
    After a change the last batch may be smaller; every process gets the same number of items.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.seen = 0, 0
        total = batch_size * world_size
        self.per_rank = (size // total) * batch_size

    def set_epoch(self, epoch: int, start: int = 0, seen: int | None = None) -> None:
        self.epoch = epoch
        self.seen = start * self.world_size if seen is None else seen

    def __len__(self) -> int:
        return max(0, self.per_rank * self.world_size - self.seen) // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        # the k-th items of all processes are consecutive in the order, from the first one not yet seen
        mine = order[self.seen + self.rank::self.world_size][: len(self)]
        for index in mine:
            yield index, sample_seed(self.seed, self.epoch, index)
