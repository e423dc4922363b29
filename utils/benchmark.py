"""Training and inference speed of a config's detector, optionally side by side with effdet.

    python -m utils.benchmark --config config/effdet_b0.py [--compare effdet] [--channels-last] [--compile]

Prints images/s for a training step (forward, loss with target assignment, backward, SGD step;
batch ``--train-batch``) and for prediction including post-processing (batch
``--predict-batch``), at the config's input size, on random images with a few random boxes.
DetLab runs as ``detection_train.py`` and ``detection_test.py`` do: channels_last, and for
inference with BatchNorm folded into the convolutions (``core.engine.inference.inference_model``).
``--compare effdet`` times effdet's matching model (``tf_efficientdet_d{phi}`` for effdet_b{phi})
in its ``DetBenchTrain`` / ``DetBenchPredict`` in the same process, same threads, same inputs,
alternating one iteration of each so that machine noise hits both sides alike, and prints the
DetLab / effdet ratios (median over rounds of the ratio of each round's back-to-back calls, with
the spread over rounds); effdet runs in its default contiguous layout unless ``--channels-last``.
``--compile`` wraps both sides' networks in ``torch.compile``. On a GPU it also prints achieved
TFLOP/s and the fraction of the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.config.loading import load_config
from core.engine.inference import compile_for_inference, detect_batch, inference_model
from core.engine.runtime import autocast, seed_everything, select_device
from core.tasks.task import build_task
from symbol.builder import build_detector

# Dense bf16 tensor-core peaks (vendor data sheets), matched against torch.cuda.get_device_name in
# this order: the PCIe and NVL H100s are slower than the SXM part ("NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of the GPU named ``device_name`` (as ``torch.cuda.get_device_name``
    gives it), or None for a device not in :data:`PEAK_BF16_TFLOPS`."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def achieved_tflops(forward_gflops: float, images_per_s: float, training: bool) -> float:
    """TFLOP/s achieved from the forward GFLOPs per image (``FlopCounterMode``'s count: two per
    multiply-add) at ``images_per_s``; a training step counts three forwards (backward ~ 2x)."""
    return forward_gflops * (3.0 if training else 1.0) * images_per_s / 1e3


def random_targets(batch: int, size: int, num_classes: int, generator: torch.Generator) -> list[dict]:
    """Four random boxes per image: xyxy input pixels, labels ``0..C-1``."""
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * size * 0.7
        wh = 16 + torch.rand(4, 2, generator=generator) * size * 0.3
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(0, num_classes, (4,), generator=generator)})
    return targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], None]], iters: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call of each function, calling them in turn ``iters`` times (round ``i`` of
    every function at index ``i``)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio_spread(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile over rounds of ``slow[i] / fast[i]``: each round's two
    calls ran back to back, so a slow phase of the machine hits both."""
    ratios = [s / f for s, f in zip(slow, fast)]
    deciles = statistics.quantiles(ratios, n=10, method="inclusive") if len(ratios) > 1 else ratios * 9
    return statistics.median(ratios), deciles[0], deciles[-1]


def detlab_fns(cfg, num_classes: int, device: torch.device, train_batch: int, predict_batch: int,
               compile_model: bool, precision: str) -> tuple[dict[str, Callable[[], None]], float]:
    """Callables for one DetLab training step and one prediction, each as ``detection_train.py``
    and ``detection_test.py`` run them (channels_last; inference with BatchNorm folded); also
    GFLOPs per image (forward)."""
    size = cfg.dataset.image_size
    model = build_detector(cfg, num_classes).to(device, memory_format=torch.channels_last)
    task = build_task(cfg, model)
    predict_net = inference_model(model, device, compile_model)  # a folded copy; model itself is unchanged
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size, device=device))
    gflops = counter.get_total_flops() / 1e9
    train_net = torch.compile(model) if compile_model else model
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randn(train_batch, 3, size, size, generator=gen).to(device, memory_format=torch.channels_last)
    predict_x = torch.randn(predict_batch, 3, size, size, generator=gen).to(device, memory_format=torch.channels_last)
    targets = [{k: v.to(device) for k, v in t.items()} for t in random_targets(train_batch, size, num_classes, gen)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        model.train()
        with autocast(device, precision):
            outputs = train_net(train_x)
        loss = task.loss(outputs, train_x, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    predict_targets = [{"scale": 1.0, "orig_size": (size, size)}] * predict_batch

    def predict() -> None:  # what the tester and the predictor run per batch, detections on the CPU
        detect_batch(predict_net, task, predict_x, predict_targets, device, precision)

    return {"train": train, "predict": predict}, gflops


def effdet_fns(cfg, num_classes: int, device: torch.device, train_batch: int, predict_batch: int,
               channels_last: bool, compile_model: bool, precision: str) -> dict[str, Callable[[], None]]:
    """The same two callables for effdet's matching ``tf_efficientdet_d{phi}``."""
    try:
        import effdet
    except ImportError:
        raise SystemExit("error: --compare effdet needs the effdet package (pip install effdet)") from None
    match = re.fullmatch(r"tf_efficientnet_b(\d)", cfg.backbone.name)
    if not match:
        raise SystemExit(f"error: no effdet model matches backbone '{cfg.backbone.name}' (tf_efficientnet_bN only)")
    name = f"tf_efficientdet_d{match.group(1)}"
    size = cfg.dataset.image_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    train_bench = effdet.create_model(name, bench_task="train", bench_labeler=True, num_classes=num_classes,
                                      pretrained=False,
                                      pretrained_backbone=False, image_size=(size, size)).to(device, memory_format=fmt)
    predict_bench = effdet.DetBenchPredict(train_bench.model).to(device)  # its anchors are built on the CPU
    if compile_model:  # as DetLab compiles its training and inference networks
        predict_bench.model = compile_for_inference(train_bench.model, device)
        train_bench.model = torch.compile(train_bench.model)
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randn(train_batch, 3, size, size, generator=gen).to(device, memory_format=fmt)
    predict_x = torch.randn(predict_batch, 3, size, size, generator=gen).to(device, memory_format=fmt)
    boxes = [t["boxes"] for t in random_targets(train_batch, size, num_classes, gen)]
    target = {"bbox": torch.stack([b[:, [1, 0, 3, 2]] for b in boxes]).to(device),  # effdet wants yxyx
              "cls": torch.randint(1, num_classes + 1, (train_batch, 4), generator=gen).float().to(device)}
    optimizer = torch.optim.SGD(train_bench.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        train_bench.train()
        with autocast(device, precision):
            loss = train_bench(train_x, target)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def predict() -> None:
        predict_bench.eval()
        with autocast(device, precision):
            predict_bench(predict_x)

    return {"train": train, "predict": predict}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="Section.field=value")
    parser.add_argument("--num-classes", type=int, default=90)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--predict-batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true",
                        help="run effdet channels_last too (DetLab always runs channels_last, as its trainer does)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (both sides)")
    parser.add_argument("--compare", choices=["effdet"])
    parser.add_argument("--only", choices=["train", "predict"], help="time one of the two (compiling both is slow on CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(cfg.General.device)
    seed_everything(cfg.General.seed, cfg.General.deterministic)  # as the trainer runs (cudnn autotuning unless deterministic)
    precision = cfg.General.precision if device.type == "cuda" else "fp32"
    sizes = dict(train_batch=args.train_batch, predict_batch=args.predict_batch, compile_model=args.compile, precision=precision)
    fns, gflops = detlab_fns(cfg, args.num_classes, device, **sizes)
    runs = {f"detlab/{k}": v for k, v in fns.items()}
    if args.compare == "effdet":
        runs.update({f"effdet/{k}": v for k, v in
                     effdet_fns(cfg, args.num_classes, device, channels_last=args.channels_last, **sizes).items()})
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x {torch.get_num_threads()} threads"
    print(f"{cfg.source}: {cfg.dataset.image_size} px, {args.num_classes} classes, {device_name}, "
          f"effdet channels_last={args.channels_last}, compile={args.compile}, precision={precision}, {args.iters} timed iterations")
    if args.only:
        runs = {name: fn for name, fn in runs.items() if name.endswith("/" + args.only)}
    rounds = time_interleaved(runs, args.iters, args.warmup, device)
    times = {name: statistics.median(t) for name, t in rounds.items()}
    batch = {"train": args.train_batch, "predict": args.predict_batch}
    print(f"{'':18}{'ms/iter':>10}{'images/s':>10}   (medians)")
    for name, seconds in times.items():
        print(f"{name:18}{seconds * 1e3:10.1f}{batch[name.split('/')[1]] / seconds:10.2f}")
    if args.compare:
        for kind in [args.only] if args.only else ["train", "predict"]:
            median, low, high = ratio_spread(rounds[f"effdet/{kind}"], rounds[f"detlab/{kind}"])
            print(f"ratio {kind} images/s detlab/effdet: {median:.2f} (median of {args.iters} rounds; "
                  f"10-90% of rounds {low:.2f}-{high:.2f}; ratio of the medians {times[f'effdet/{kind}'] / times[f'detlab/{kind}']:.2f})")
    if device.type == "cuda":
        peak = peak_bf16_tflops(device_name)
        for kind in [args.only] if args.only else ["train", "predict"]:
            tflops = achieved_tflops(gflops, batch[kind] / times[f"detlab/{kind}"], training=kind == "train")
            share = f" = {tflops / peak:.1%} of {peak:.0f} bf16 peak" if peak else ""
            print(f"detlab/{kind}: {tflops:.1f} TFLOP/s achieved{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
