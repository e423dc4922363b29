"""Print a per-stage summary of a detector: parameters, channels, strides and GFLOPs.

    python -m utils.model_summary --config config/effdet_b0.py [--num-classes N] [--img-size S]

One row per entry of ``model.stages()`` (YOLOv5-style layout), then a final line
``Model Summary: L layers, P parameters, G gradients, F GFLOPs``. ``from`` is ``-1`` when the
row takes the previous row's output, otherwise the indices of the rows it reads from; ``n`` is
the number of repeated blocks in the row; ``arguments`` is ``[in_channels, out_channels,
out_stride]`` measured on a dummy forward (a list where the row takes or gives several maps).
GFLOPs are ``2 x multiply-adds`` for one image at the input size
(``torch.utils.flop_counter.FlopCounterMode``).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class Row:
    """One summary row. ``source`` is ``-1`` (previous row / the image) or a list of row indices."""

    index: int
    name: str
    module_type: str
    n: int
    params: int
    source: Any = -1
    arguments: list = field(default_factory=list)


@dataclass
class Totals:
    layers: int       # modules without children
    parameters: int
    gradients: int    # parameters with requires_grad
    gflops: float     # FlopCounterMode total (2 x MACs) / 1e9 for one image


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "stages"):
        return list(model.stages())
    return list(model.named_children())


def _repeats(module: nn.Module) -> int:
    """Length of a Sequential / ModuleList made of repeated blocks (all children of one type), else 1."""
    if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 0:
        if len({type(m) for m in module}) == 1:
            return len(module)
    return 1


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _collapse(values: list[int]) -> Any:
    """One value when all equal (or only one), else the list; ``None`` when empty."""
    if not values:
        return None
    return values[0] if len(set(values)) == 1 else values


def _channels(tensors: list[torch.Tensor]) -> Any:
    return _collapse([t.shape[1] for t in tensors if t.dim() >= 3])


def _strides(tensors: list[torch.Tensor], image_size: int) -> Any:
    """Each map's stride: the power of two nearest ``image_size / width`` (at 320 px, P7's 3 pixels
    wide map, a ceil of 2.5, is stride 128, not 107)."""
    return _collapse([2 ** round(math.log2(image_size / t.shape[-1]))
                      for t in tensors if t.dim() >= 3 and t.shape[-1] > 0])


class _StageProbe:
    """Forward hooks on every module of one stage; records the stage's outermost ("entry") calls."""

    def __init__(self, index: int, module: nn.Module):
        self.index = index
        self.depth = 0
        self.first_input: list[torch.Tensor] | None = None
        self.last_output: list[torch.Tensor] | None = None
        self.inputs: list[torch.Tensor] = []   # every entry call's input tensors
        self.outputs: list[torch.Tensor] = []  # every entry call's output tensors
        self.handles = []
        for m in module.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, module: nn.Module, args: tuple) -> None:
        if self.depth == 0:
            tensors = _tensors(args)
            self.inputs += tensors
            if self.first_input is None:
                self.first_input = tensors
        self.depth += 1

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            tensors = _tensors(output)
            self.outputs += tensors
            self.last_output = tensors

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _sources(probe: _StageProbe, producers: dict[int, int]) -> Any:
    """Rows whose outputs this row reads (its own outputs excluded); -1 for the previous row only."""
    found = sorted({producers[id(t)] for t in probe.inputs if id(t) in producers} - {probe.index})
    if not found or found == [probe.index - 1]:
        return -1
    return found


def summarize(model: nn.Module, image_size: int) -> tuple[list[Row], Totals]:
    """Rows (one per ``model.stages()`` entry, plus ``other`` for parameters outside every row)
    and totals, from one dummy forward of a ``[1, 3, image_size, image_size]`` zero image.
    The model's train/eval mode is restored afterwards."""
    stages = _stages(model)
    seen: set[int] = set()
    rows: list[Row] = []
    for i, (name, module) in enumerate(stages):
        params = 0
        for p in module.parameters():
            if id(p) not in seen:  # a parameter shared by two rows counts in the first only
                seen.add(id(p))
                params += p.numel()
        rows.append(Row(i, name, type(module).__name__, _repeats(module), params))

    probes = [_StageProbe(i, module) for i, (_, module) in enumerate(stages)]
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, image_size, image_size, device=device))
        flops = counter.get_total_flops()
        producers: dict[int, int] = {}
        for probe in probes:  # all tensors are still referenced by the probes, so ids are unique
            for t in probe.outputs:
                producers.setdefault(id(t), probe.index)
        for row, probe in zip(rows, probes):
            row.source = _sources(probe, producers)
            if probe.first_input is not None and probe.last_output is not None:
                row.arguments = [_channels(probe.first_input), _channels(probe.last_output),
                                 _strides(probe.last_output, image_size)]
    finally:
        for probe in probes:
            probe.remove()
        model.train(was_training)

    total = sum(p.numel() for p in model.parameters())
    rest = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    if rest:
        rows.append(Row(len(rows), "other", "-", 1, rest))
    totals = Totals(
        layers=sum(1 for m in model.modules() if next(m.children(), None) is None),
        parameters=total,
        gradients=sum(p.numel() for p in model.parameters() if p.requires_grad),
        gflops=flops / 1e9,
    )
    return rows, totals


def format_summary(rows: list[Row], totals: Totals) -> str:
    """The table and the ``Model Summary`` line as text."""
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments'}"]
    for r in rows:
        args = str(r.arguments) if r.arguments else ""
        lines.append(f"{r.index:>3}{str(r.source):>18}{r.n:>3}{r.params:10.0f}  {r.name:<40}{args:<30}".rstrip())
    lines.append(f"Model Summary: {totals.layers} layers, {totals.parameters} parameters, "
                 f"{totals.gradients} gradients, {totals.gflops:.2f} GFLOPs")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m utils.model_summary", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="config module, e.g. config/effdet_b0.py")
    ap.add_argument("--num-classes", type=int, default=None,
                    help="foreground classes (default: from the dataset YAML named by dataset.data)")
    ap.add_argument("--img-size", type=int, default=None, help="input size (default: dataset.image_size)")
    ap.add_argument("--set", action="append", default=[], metavar="Section.field=value",
                    help="config override (repeatable)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from core.config.loading import ConfigError, load_config
    from symbol.builder import build_detector

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    num_classes = args.num_classes
    if num_classes is None:
        from core.data.records import DatasetError
        from core.data.spec import load_dataset_spec

        try:
            num_classes = load_dataset_spec(cfg.dataset.data).num_classes
        except (DatasetError, OSError) as err:
            print(f"error: {err}; pass --num-classes to skip reading the dataset", file=sys.stderr)
            return 2
    image_size = args.img_size or cfg.dataset.image_size
    model = build_detector(cfg, num_classes)
    rows, totals = summarize(model, image_size)
    print(format_summary(rows, totals))
    return 0


if __name__ == "__main__":
    from core.engine.cli import run_main  # a bad config or dataset: one line, exit 2

    run_main(main)
