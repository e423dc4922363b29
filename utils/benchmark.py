"""Training and inference speed of a config's detector, optionally side by side with effdet.

    python -m utils.benchmark --config config/effdet_b0.py [--compare effdet] [--channels-last] [--compile]

Prints images/s for a training step (forward, loss with target assignment, backward, SGD step;
batch ``--train-batch``) and for prediction including post-processing (batch
``--predict-batch``), at the config's input size, on random images with a few random boxes. Both
sides' networks have random weights and BatchNorm statistics of their own activations
(``set_batchnorm_statistics``), so that their outputs, and the work of post-processing them, depend on
the picture as a trained detector's do.
DetLab runs as ``detection_train.py`` and ``detection_test.py`` do: channels_last, and for
inference with BatchNorm folded into the convolutions (``core.engine.inference.inference_model``).
``--compare effdet`` times effdet's matching model (``tf_efficientdet_d{phi}`` for effdet_b{phi})
in its ``DetBenchTrain`` / ``DetBenchPredict`` in the same process, same threads, same inputs,
alternating one iteration of each so that machine noise hits both sides alike, and prints the
DetLab / effdet ratios (median over rounds of the ratio of each round's back-to-back calls, with
the spread over rounds); effdet runs in its default contiguous layout unless ``--channels-last``.
``--compile`` wraps both sides' networks in ``torch.compile``. On a GPU it also prints achieved
TFLOP/s and the fraction of the device's dense bf16 peak.

``--runtimes torch,torch-compiled,onnxruntime,openvino,openvino-int8`` times prediction only (batch
``--predict-batch``, post-processing included, detections moved to the CPU), once per runtime:
PyTorch eager and compiled (``inference_model``), and the network exported to ONNX and run by ONNX
Runtime or OpenVINO (float32), or quantized to INT8 and run by OpenVINO (``core.inference.exported``),
interleaved round by round; with
``--compare effdet`` next to effdet's eager ``DetBenchPredict`` (and its compiled one with
``--compile``), with each runtime's ratio to effdet's compiled (else eager) prediction.

``--only data`` times the training data loader instead: the config's dataset (or ``--data``), its
training transform and augmentation (the recipe's choices where the config says "auto"), in one
process, which is what each ``General.loader_worker`` worker does. It prints images/s of one worker
as configured and with every sample a mosaic (``augment.mosaic_prob = 1``), interleaved batch by
batch, and how many workers ``--target-ips`` images/s of training needs.
"""
from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.config.loading import load_config
from core.engine.inference import compile_for_inference, detect_batch, inference_model
from core.engine.runtime import autocast, cpu_info, seed_everything, select_device
from core.inference.exported import RUNTIMES as EXPORT_RUNTIMES
from core.tasks.task import build_task
from symbol.builder import build_detector

# Dense bf16 tensor-core peaks (vendor data sheets), matched against torch.cuda.get_device_name in
# this order: the PCIe and NVL H100s are slower than the SXM part ("NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and its widest vector units (AVX2, AVX-512, AMX) as Linux's cpuinfo gives them;
    "unknown" where there is no such file."""
    info = cpu_info(cpuinfo)
    if not info:
        return "unknown"
    flags = set(info.get("flags", "").split())
    units = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 bf16", "avx512_bf16"),
                                     ("AVX-512 VNNI", "avx512_vnni"), ("AMX", "amx_bf16")) if flag in flags]
    return f"{info.get('model name') or 'unknown'} ({', '.join(units) or 'no AVX2'})"


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
    every function at index ``i``). Each round calls them in a new (seeded) random order, so no
    function always follows the same one: a thread pool still spinning from the call before (as
    ONNX Runtime's does by default; DetLab stops it after each run) slows whichever call comes next."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(iters):
        shuffle(order)
        for name in order:
            fn = fns[name]
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


def set_batchnorm_statistics(model: torch.nn.Module, size: int, device: torch.device, seed: int = 0) -> None:
    """Each BatchNorm's running statistics set to those of its own input on two batches of 2 random
    ``size`` x ``size`` pictures (``model`` left in eval mode). A fresh network with the default statistics
    (mean 0, variance 1) fades its signal about tenfold per stage: DetLab's and effdet's D0 alike return the
    class prior for every anchor, whatever the picture, and their post-processing then works on 4.4 M tied
    scores, as no trained detector's does. With these statistics the logits spread (D0: std ~0.3 around
    the prior) and depend on the picture."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # the plain mean over the batches
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, size, size, generator=gen).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def detlab_fns(cfg, num_classes: int, device: torch.device, train_batch: int, predict_batch: int,
               compile_model: bool, precision: str) -> tuple[dict[str, Callable[[], None]], float]:
    """Callables for one DetLab training step and one prediction, each as ``detection_train.py``
    and ``detection_test.py`` run them (channels_last; inference with BatchNorm folded); also
    GFLOPs per image (forward)."""
    size = cfg.dataset.image_size
    model = build_detector(cfg, num_classes).to(device, memory_format=torch.channels_last)
    set_batchnorm_statistics(model, size, device)
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
    set_batchnorm_statistics(train_bench.model, size, device)
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


RUNTIMES = ("torch", "torch-compiled", *EXPORT_RUNTIMES)


def runtime_fns(cfg, num_classes: int, device: torch.device, predict_batch: int, runtimes: Sequence[str],
                precision: str) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    """One prediction (network, decoding, NMS, detections on the CPU) of ``predict_batch`` random
    images per runtime, all of one network with the same random weights and ``set_batchnorm_statistics``
    (``openvino-int8`` calibrated on 8 batches of random images: its speed, not its accuracy, is measured
    here); also the float precision each exported runtime computes in (``ExportedNetwork.precision``)."""
    import tempfile

    from core.inference.exported import export_network

    size = cfg.dataset.image_size
    model = build_detector(cfg, num_classes).to(device, memory_format=torch.channels_last)
    set_batchnorm_statistics(model, size, device)
    task = build_task(cfg, model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(predict_batch, 3, size, size, generator=gen)
    calibration = [torch.randn(predict_batch, 3, size, size, generator=gen).numpy() for _ in range(8)]
    targets = [{"scale": 1.0, "orig_size": (size, size)}] * predict_batch
    fns: dict[str, Callable[[], None]] = {}
    precisions: dict[str, str] = {}
    for runtime in runtimes:
        if runtime.startswith("torch"):
            net, on = inference_model(model, device, runtime == "torch-compiled"), device
        else:
            with tempfile.TemporaryDirectory() as folder:
                net = export_network(inference_model(model, torch.device("cpu")), task, size, runtime, Path(folder),
                                     predict_batch, torch.get_num_threads(), calibration)
            on = torch.device("cpu")
            precisions[f"detlab/predict-{runtime}"] = net.precision
        fns[f"detlab/predict-{runtime}"] = (lambda net, on: lambda: detect_batch(net, task, x, targets, on,
                                                                                 precision))(net, on)
    return fns, precisions


def runtime_benchmark(cfg, args: argparse.Namespace, device: torch.device, precision: str) -> int:
    """``--runtimes``: prediction images/s per runtime, and against effdet's with ``--compare effdet``."""
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise SystemExit(f"error: unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    runs, precisions = runtime_fns(cfg, args.num_classes, device, args.predict_batch, runtimes, precision)
    if args.compare == "effdet":
        for compiled in (False, True) if args.compile else (False,):
            fns = effdet_fns(cfg, args.num_classes, device, 2, args.predict_batch, args.channels_last, compiled,
                             precision)
            runs[f"effdet/predict-{'compiled' if compiled else 'eager'}"] = fns["predict"]
    rounds = time_interleaved(runs, args.iters, args.warmup, device)
    reference = next((name for name in ("effdet/predict-compiled", "effdet/predict-eager") if name in rounds), None)
    print(f"{cfg.source}: prediction at {cfg.dataset.image_size} px, batch {args.predict_batch}, {args.num_classes} "
          f"classes, {device}, {torch.get_num_threads()} threads, {args.iters} rounds (post-processing included)")
    print(f"CPU: {cpu_description()}")
    print(f"{'':30}{'ms/iter':>10}{'images/s':>10}" + (f"   x {reference} (median, 10-90 % of rounds)"
                                                       if reference else ""))
    for name, seconds in rounds.items():
        median_s = statistics.median(seconds)
        line = f"{name:30}{median_s * 1e3:10.1f}{args.predict_batch / median_s:10.2f}"
        if reference and name != reference:
            ratio, low, high = ratio_spread(rounds[reference], seconds)
            line += f"   {ratio:.2f} ({low:.2f}-{high:.2f})"
        if name in precisions:
            line += f"   float parts in {precisions[name]}"
        print(line)
    return 0


def data_benchmark(cfg, iters: int, warmup: int, target_ips: float) -> int:
    """``--only data``: training-loader images/s of one worker, as configured and all-mosaic."""
    from core.config.loading import config_from_dict
    from core.data.loader import build_loader
    from core.data.spec import load_dataset_spec, read_split
    from core.engine.recipe import resolve_recipe

    records = read_split(load_dataset_spec(cfg.dataset.data), "train")
    resolve_recipe(cfg, len(records))
    cfg.General.loader_worker = 0  # this process is the one worker
    mosaic = config_from_dict(cfg.to_dict(), cfg.source)
    mosaic.augment.mosaic_prob = 1.0
    batch = cfg.General.batch_image

    def batches(c) -> Callable[[], None]:
        loader = build_loader(c, records, train=True, batch_size=batch, seed=c.General.seed)
        state = {"epoch": 0, "it": iter(loader)}

        def next_batch() -> None:
            try:
                next(state["it"])
            except StopIteration:  # a new epoch of the sampler's order
                state["epoch"] += 1
                loader.sampler.set_epoch(state["epoch"])
                state["it"] = iter(loader)
                next(state["it"])
        return next_batch

    rounds = time_interleaved({"configured": batches(cfg), "mosaic": batches(mosaic)}, iters, warmup,
                              torch.device("cpu"))
    print(f"{cfg.source}: data {cfg.dataset.data} ({len(records)} training images), {cfg.dataset.image_size} px, "
          f"batch {batch}, {iters} timed batches each, one worker (this process)")
    for name, seconds in rounds.items():
        ips = batch / statistics.median(seconds)
        print(f"  {name:11s} {ips:7.1f} images/s per worker; {math.ceil(target_ips / ips)} workers for "
              f"{target_ips:g} images/s")
    return 0


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
    parser.add_argument("--only", choices=["train", "predict", "data"],
                        help="time one of the two (compiling both is slow on CPU), or the data loader")
    parser.add_argument("--runtimes", metavar="R1,R2,...",
                        help=f"time prediction in each of these runtimes ({', '.join(RUNTIMES)})")
    parser.add_argument("--data", help="dataset YAML for --only data (default: the config's dataset.data)")
    parser.add_argument("--target-ips", type=float, default=140.0,
                        help="--only data: training images/s the loader must keep up with")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set + ([f"dataset.data={args.data}"] if args.data else []))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "data":
        return data_benchmark(cfg, args.iters, args.warmup, args.target_ips)
    device = select_device(cfg.General.device)
    seed_everything(cfg.General.seed, cfg.General.deterministic)  # as the trainer runs (cudnn autotuning unless deterministic)
    precision = cfg.General.precision if device.type == "cuda" else "fp32"
    if args.runtimes:
        return runtime_benchmark(cfg, args, device, precision)
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
    from core.engine.cli import run_main  # a bad config or dataset: one line, exit 2

    run_main(main)
