"""In-place module swapping, the one mechanism behind DetLab's inference rewrites."""
from __future__ import annotations

from typing import Callable

from torch import nn


def swap_modules(root: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace, in place, every submodule ``m`` of ``root`` (not ``root`` itself) for which
    ``replacement(m)`` returns a module by that module; ``None`` keeps ``m``. A module registered
    under several parents is asked once per registration. Returns the number of swaps."""
    swapped = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
                swapped += 1
    return swapped
