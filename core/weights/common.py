"""What every conversion returns: the renamed tensors and a record of what happened to each."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch

from core.engine.checkpoint import CheckpointError


class ConversionError(CheckpointError):
    """A state dict cannot be converted into the requested layout; the message says why and what to do."""


@dataclass
class Conversion:
    """``tensors``: the result, ``target name -> tensor``, in the target's order where known.

    ``renamed``: ``(source name, target name)`` for every tensor whose name changed;
    ``removed``: ``(source name, reason)`` for every source tensor left out of ``tensors``;
    ``notes``: other changes in words (folded biases, permuted channels).
    """

    tensors: dict[str, torch.Tensor]
    renamed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def identity(cls, tensors: dict[str, torch.Tensor]) -> "Conversion":
        """Nothing to convert: the same names and tensors."""
        return cls(dict(tensors))

    def with_prefix(self, prefix: str) -> "Conversion":
        """The same conversion with ``prefix`` in front of every target name (e.g. ``backbone.body.``)."""
        renamed_from = {new: old for old, new in self.renamed}
        renamed = [(renamed_from.get(k, k), prefix + k) for k in self.tensors]
        return Conversion({prefix + k: v for k, v in self.tensors.items()}, renamed, list(self.removed),
                          list(self.notes))


def compact_names(names: Iterable[str], universe: Iterable[str]) -> list[str]:
    """Summarise ``names`` for a report: the shortest dotted prefix all of whose names in
    ``universe`` are listed becomes ``prefix.* (N)``; other names stay as they are. Order
    follows ``universe`` (names missing from it come last).

    ``compact_names(["neck.a.w", "neck.b.w", "head.x.w"], ["neck.a.w", "neck.b.w", "head.x.w", "head.y.w"])``
    gives ``["neck.* (2)", "head.x.w"]``.
    """
    chosen = list(dict.fromkeys(names))
    chosen_set = set(chosen)
    ordered = list(dict.fromkeys(universe))
    known = set(ordered)
    ordered += [n for n in chosen if n not in known]
    total: dict[str, int] = {}
    hit: dict[str, int] = {}
    for name in ordered:
        parts = name.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            total[prefix] = total.get(prefix, 0) + 1
            if name in chosen_set:
                hit[prefix] = hit.get(prefix, 0) + 1
    out: list[str] = []
    seen: set[str] = set()
    for name in ordered:
        if name not in chosen_set:
            continue
        parts = name.split(".")
        label = name
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if total[prefix] == hit.get(prefix, 0) and total[prefix] > 1:
                label = f"{prefix}.* ({total[prefix]})"
                break
        if label not in seen:
            seen.add(label)
            out.append(label)
    return out


def format_names(names: Iterable[str], universe: Iterable[str], limit: int = 12) -> str:
    """:func:`compact_names` joined with commas, at most ``limit`` entries, then ``... and N more``."""
    items = compact_names(names, universe)
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... and {len(items) - limit} more"
    return ", ".join(items)


def removed_lines(removed: list[tuple[str, str]], universe: Iterable[str], limit: int = 12) -> list[str]:
    """``removed`` ``(name, reason)`` pairs as one line per reason (quoted parts of reasons
    ignored when grouping): ``"N x reason: name, prefix.* (K), ..."``."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, why in removed:
        key = re.sub(r"'[^']*'", "'...'", why)
        groups.setdefault(key, (why, []))[1].append(name)
    universe = list(universe)
    return [f"{len(names)} x {why if len(names) == 1 else key}: {format_names(names, universe, limit)}"
            for key, (why, names) in groups.items()]
