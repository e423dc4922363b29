"""torch.distributed set-up for runs under ``torchrun`` (one process per GPU, or gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``; ``is_main`` for rank 0."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``...): gloo on CPUs; on GPUs NCCL for CUDA tensors and gloo beside it for
    the CPU ones (the flags that keep processes on one branch, ``all_true``), which NCCL refuses.
    A plain ``python`` run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart == "0":
            dist.init_process_group(backend)
        else:  # the rendezvous store can outlive a failed attempt: keep this attempt's keys apart from its
            # (seen: a restarted gloo group reading the dead worker's address and failing to connect)
            store, rank, size = next(dist.rendezvous("env://"))
            dist.init_process_group(backend, store=dist.PrefixStore(f"detlab_attempt_{restart}", store),
                                    rank=rank, world_size=size)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def wrap(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``model`` itself in a single process, else DistributedDataParallel around it."""
    if info.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def averager(info: DistInfo) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function giving the mean of a tensor over all processes, or ``None`` in a single process."""
    if info.world_size == 1:
        return None

    def average(value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / info.world_size

    return average


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds in every process (so that all processes take the same branch)."""
    if info.world_size == 1:
        return flag
    value = torch.tensor([0 if flag else 1], dtype=torch.int64)
    dist.all_reduce(value)
    return int(value.item()) == 0


def all_gather_ints(values: list[int], info: DistInfo) -> list[list[int]]:
    """Every process's ``values`` (each process passes as many), in rank order."""
    if info.world_size == 1:
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]


def any_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds in at least one process."""
    return not all_true(not flag, info)


def gather_to_main(items: dict, info: DistInfo) -> dict:
    """Merge every process's ``items`` dict on rank 0 (other ranks get ``{}``); picklable values."""
    if info.world_size == 1:
        return items
    parts: list[dict] | None = [{} for _ in range(info.world_size)] if info.is_main else None
    dist.gather_object(items, parts, dst=0)
    if not info.is_main:
        return {}
    merged: dict = {}
    for part in parts or []:
        merged.update(part)
    return merged
