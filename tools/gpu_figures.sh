#!/usr/bin/env bash
# The README's GPU figures in one run: effdet_b0 at 512 px (bf16 autocast, channels_last on both
# sides), eager and compiled, side by side with effdet, and a one-epoch demo training and test on
# the GPU. Logs go to $LOGS (default ./gpu_logs); each step has its own time limit so that a slow
# compile cannot hide the figures before it.
#   bash tools/gpu_figures.sh            (needs a CUDA device and the effdet package)
set -uo pipefail
LOGS=${LOGS:-gpu_logs}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "=== $name: rc ${PIPESTATUS[0]} in $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,utilization.gpu --format=csv
python3 -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('torch', 'torchvision', 'timm', 'effdet')))"

BENCH="python3 -m utils.benchmark --config config/effdet_b0.py --compare effdet --channels-last"
# Limits from the H200 run of 2026-11-30 (a process's first CUDA start and cudnn autotuning take
# ~60 s; compiling both sides' training did not finish in 180 s): 10 minutes in all; under a
# shorter time limit the last steps are the ones cut.
step eager_b16 80 $BENCH --train-batch 16 --predict-batch 16 --iters 20 --warmup 5
step compiled_predict_b16 140 $BENCH --compile --only predict --predict-batch 16 --iters 30 --warmup 5
step demo_train 60 python3 detection_train.py --config config/demo.py --set schedule.end_epoch=1 \
    --set schedule.eval_every=1 --set "pretrain.backbone_weights=''"
step demo_test 35 python3 detection_test.py --config config/demo.py
step compiled_train_b16 220 $BENCH --compile --only train --train-batch 16 --iters 20 --warmup 5
step eager_b2_b1 60 $BENCH --iters 20 --warmup 5
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
