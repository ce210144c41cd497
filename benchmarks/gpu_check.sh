#!/usr/bin/env bash
# The prepared GPU check of issue 8 (speed): one call of about 8 minutes on a CUDA machine.
#
# What it measures, in this order, each in its own process:
#   1. a full `unseen run --dataset fashion-mnist --holdout 9 --model resnet18` on a fresh
#      machine, start to end (target: under 20 s, closed-set accuracy >= 0.94), then once more
#      with warm file caches;
#   2. training images/s of unseen's loop, with and without CUDA graphs, against the
#      conventional DataLoader loop (8 workers), with evaluation time and peak memory;
#   3. the same loop compiled at batch 1024 and 2048 (the 100,000 images/s target);
#   4. one training step alone, eager and graphed, with its GPU kernel time.
#
# The machine needs torch >= 2.11 with CUDA and the package's dependencies (the project's
# H200 image has them); the package itself is read from src/ through PYTHONPATH.
#
# Fashion-MNIST travels in a git-ignored folder. Once, on the machine that has the data:
#   mkdir -p .devdata/fashion && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .devdata/fashion/
# (Debian's dataset-fashion-mnist; `dpkg -L dataset-fashion-mnist` shows where it put them)
# then, with the project's device tool: command `bash benchmarks/gpu_check.sh`,
# carry [".devdata"], timeout_s 600. Results land in $OUT (./gpu-check without it):
# log.txt holds everything printed, *.json the benchmarks' machine-readable output.
set -uo pipefail

OUT=${OUT:-gpu-check}
DATA=${UNSEEN_GPU_DATA:-.devdata/fashion}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"

step() {  # step SECONDS NAME COMMAND...: run one step under a time limit, timing it
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "=== $name: exit $?, $((SECONDS - start)) s wall"
}

{
    if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -f "$DATA/train-images-idx3-ubyte" ]; then
        echo "gpu_check: no Fashion-MNIST in $DATA (see this script's header); stopping"
        exit 2
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

    step 90 "full run, fresh machine" "$PY" -m unseen run --dataset fashion-mnist --holdout 9 \
        --model resnet18 --data-root "$DATA" --out "$OUT/run1"
    step 90 "full run, warm caches" "$PY" -m unseen run --dataset fashion-mnist --holdout 9 \
        --model resnet18 --data-root "$DATA" --out "$OUT/run2" --no-report

    step 150 "training loop vs conventional" "$PY" benchmarks/bench_train.py --data-root "$DATA" \
        --model resnet18 --images 65536 --workers 8 --cuda-graphs both --json \
        >"$OUT/bench_resnet18.json"
    for batch in 1024 2048; do
        step 90 "compiled, batch $batch" "$PY" benchmarks/bench_train.py --data-root "$DATA" \
            --model resnet18 --images 131072 --skip-conventional --compile --batch-size "$batch" \
            --json >"$OUT/bench_compiled_$batch.json"
    done
    step 60 "one step alone" "$PY" benchmarks/profile_step.py --batch-size 512 1024
    for f in "$OUT"/*.json; do echo "--- $f"; cat "$f"; done
} 2>&1 | tee "$LOG"
