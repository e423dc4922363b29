"""What each inference-time rewrite of ``core.engine.inference.inference_model`` gains, measured.

    python tools/bench_rewrites.py [--config config/effdet_b0.py] [--batch 1] [--iters 30] [--compile]

Builds the config's detector once and times, in one process and interleaved round by round (so a
slow phase of the machine hits every variant alike), the network as ``inference_model`` makes it
and that network with one rewrite left out. For each rewrite it prints the median over rounds of
``time without it / time with all`` and the 10th-90th percentile spread of that ratio: a rewrite
gains only where the whole spread is above 1. The network is timed alone (no post-processing), on
random input, channels_last, under ``torch.no_grad``. ``--compile`` times the compiled forms
instead (``compile_for_inference``); compiling takes minutes on a small CPU. It also times ``core.ops.nms.class_nms`` (same-class pairs resolved in
rounds when the classes cut the pairs 16-fold) against one shifted ``torchvision.ops.nms`` over
``--candidates`` boxes of 90 classes, clustered as a detector's candidates are.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config.loading import load_config  # noqa: E402
from core.engine.inference import compile_for_inference  # noqa: E402
from core.engine.rewrites.fold_bn import fold_batchnorm  # noqa: E402
from core.ops.nms import _shifted_nms, class_nms  # noqa: E402
from symbol.builder import build_detector  # noqa: E402
from utils.benchmark import ratio_spread, time_interleaved  # noqa: E402

# rewrites applied before the fold, by name (none left: the head's per-level form, the TF-SAME strided
# convs and the squeeze-excite products were measured here without a gain and deleted on 2026-12-01)
REWRITES: dict[str, Callable[[nn.Module], object]] = {}


def variant(model: nn.Module, leave_out: str | None, compiled: bool, device: torch.device) -> nn.Module:
    """``model`` rewritten as ``inference_model`` does, without the rewrite ``leave_out``
    ("fold_bn" or a ``REWRITES`` name; None: all of them)."""
    network = copy.deepcopy(model)
    for name, rewrite in REWRITES.items():
        if name != leave_out:
            rewrite(network)
    if leave_out != "fold_bn":
        example = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        network, _ = fold_batchnorm(network, example.to(device, memory_format=torch.channels_last))
    return compile_for_inference(network, device) if compiled else network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config/effdet_b0.py")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = load_config(args.config)
    model = build_detector(cfg, 90).to(device, memory_format=torch.channels_last).eval()
    size = cfg.dataset.image_size
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    x = x.to(device, memory_format=torch.channels_last)
    left_out = ["fold_bn", *REWRITES]
    networks = {"all": variant(model, None, args.compile, device)}
    networks.update({f"without {name}": variant(model, name, args.compile, device) for name in left_out})

    def call(net: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                net(x)
        return run

    times = time_interleaved({k: call(v) for k, v in networks.items()}, args.iters, args.warmup, device)
    form = "compiled" if args.compile else "eager"
    print(f"{args.config} at {size} px, batch {args.batch}, {form}, {device}, {torch.get_num_threads()} threads, "
          f"{args.iters} rounds; all rewrites: {sorted(times['all'])[len(times['all']) // 2] * 1e3:.1f} ms")
    for name in left_out:
        median, lo, hi = ratio_spread(times[f"without {name}"], times["all"])
        verdict = "gains" if lo > 1.0 else "no gain beyond the spread"
        print(f"  {name:18s} time without / with all: {median:.3f} (10-90 %: {lo:.3f}-{hi:.3f})  {verdict}")

    boxes, scores, labels = clustered_candidates(args.candidates, size, device)
    nms_times = time_interleaved({"rounds": lambda: class_nms(boxes, scores, labels, 0.5),
                                  "shifted": lambda: _shifted_nms(boxes, scores, labels, 0.5)},
                                 args.iters * 10, args.warmup, device)
    median, lo, hi = ratio_spread(nms_times["shifted"], nms_times["rounds"])
    verdict = "gains" if lo > 1.0 else "no gain beyond the spread"
    print(f"  {'nms rounds':18s} shifted nms / class_nms, {args.candidates} candidates: {median:.3f} "
          f"(10-90 %: {lo:.3f}-{hi:.3f})  {verdict}")
    return 0


def clustered_candidates(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` xyxy boxes in ``size`` px around 50 objects (jittered copies, as a detector's top-k
    candidates cluster), their scores and labels of 90 classes (the object's class for half of them)."""
    gen = torch.Generator().manual_seed(2)
    centres = torch.rand(50, 2, generator=gen) * size
    sides = 16 + torch.rand(50, 2, generator=gen) * size / 4
    owner = torch.randint(0, 50, (n,), generator=gen)
    jitter = 1 + 0.15 * torch.randn(n, 4, generator=gen)
    cxcy, wh = centres[owner] * jitter[:, :2].clamp(0.7, 1.3), sides[owner] * jitter[:, 2:].clamp(0.5, 1.5)
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1).clamp(0, size)
    object_class = torch.randint(0, 90, (50,), generator=gen)
    stray = torch.randint(0, 90, (n,), generator=gen)
    labels = torch.where(torch.rand(n, generator=gen) < 0.5, object_class[owner], stray)
    return boxes.to(device), torch.rand(n, generator=gen).to(device), labels.to(device)


if __name__ == "__main__":
    raise SystemExit(main())
