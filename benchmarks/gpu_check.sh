#!/usr/bin/env bash
# The prepared GPU check of issue 8 (speed): one call on a CUDA machine. Its first version took
# 2.5 minutes on 2026-11-29. Every command runs under a time limit; the limits add up to 530 s
# (590 s with the grace before each kill), under the device tool's 600 s a call, so a hung
# step cannot eat a 15-minute lease.
#
# What it measures, in this order, each in its own process:
#   1. a full `unseen run --dataset fashion-mnist --holdout 9 --model resnet18` on a fresh
#      machine (the first Python process to import torch there), start to end (target: under
#      20 s, closed-set accuracy >= 0.94); then warm, with and without unseen.preload's
#      imports during training (UNSEEN_PRELOAD=0), and in fp16 (--precision fp16: its batch
#      norm runs through cuDNN; an eager fp16 step without loss scaling spent 16% less time
#      in kernels than bf16's on 2026-11-29).
#      Each with the run's own account of where the time went (run.json; compare its `report`
#      and `train`, less noisy than the wall time);
#   2. the fixed start-up costs (benchmarks/startup.py: imports, CUDA, fonts, data; its last
#      line says whether torch._dynamo was imported: it should not be), and whether Python can
#      cache bytecode there;
#   3. training images/s of unseen's loop, with and without CUDA graphs, against the
#      conventional DataLoader loop (8 workers), with evaluation time and peak memory;
#   4. one training step alone at batch 512, bf16 and fp16, with its GPU kernel time;
#   5. unseen's loop compiled at batch 2048 (the 100,000 images/s target);
#   6. the tests that need CUDA (tests/test_cuda.py: whole small runs, a resume across devices,
#      one-vs-rest heads, a sampler, no torch._dynamo in a GPU run; tests/test_cudagraphs.py;
#      the benchmarks' tests).
#
# The machine needs torch >= 2.11 with CUDA and the package's dependencies (the project's
# H200 image has them, and pytest); the package itself is read from src/ through PYTHONPATH.
#
# Fashion-MNIST travels in a git-ignored folder. Once, on the machine that has the data:
#   mkdir -p .devdata/fashion && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .devdata/fashion/
# (Debian's dataset-fashion-mnist; `dpkg -L dataset-fashion-mnist` shows where it put them)
# then, with the project's device tool: command `bash benchmarks/gpu_check.sh`,
# carry [".devdata"], timeout_s 600. Results land in $OUT (./gpu-check without it): log.txt
# holds everything printed, *.json the benchmarks' machine-readable output (three files: the
# device tool brings back eight at most). The run folders go to a temporary folder.
set -uo pipefail

OUT=${OUT:-gpu-check}
DATA=${UNSEEN_GPU_DATA:-.devdata/fashion}
mkdir -p "$OUT"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"
RUN=(-m unseen run --dataset fashion-mnist --holdout 9 --model resnet18 --data-root "$DATA")

step() {  # step SECONDS NAME COMMAND...: run one step under a time limit, timing it
    local limit=$1 name=$2
    shift 2
    # on stderr, so that a step whose stdout is a JSON file keeps the file valid
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" >&2
    local start=$EPOCHREALTIME
    timeout -k 5 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc, $(awk "BEGIN {print $EPOCHREALTIME - $start}") s wall" >&2
}

timings() {  # where a run's time went, by its own account
    timeout -k 2 5 "$PY" - "$1" <<'PYEOF'
import json, pathlib, sys
for run in sorted(pathlib.Path(sys.argv[1]).glob("**/run.json")):
    print("run.json seconds:", json.dumps(json.loads(run.read_text()).get("seconds")))
    for m in sorted(run.parent.glob("**/metrics.json")):
        d = json.loads(m.read_text())
        keys = ("closed_set_accuracy", "train_seconds", "train_images_per_second",
                "validation_seconds", "eval_seconds", "cuda_graphs", "precision",
                "fp16_skipped_steps", "fp16_loss_scale")
        print(m.relative_to(run.parent), {k: d.get(k) for k in keys})
PYEOF
}

{
    if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ] && [ ! -f "$DATA/train-images-idx3-ubyte" ]; then
        echo "gpu_check: no Fashion-MNIST in $DATA (see this script's header); stopping"
        exit 2
    fi
    timeout -k 2 10 nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader || true
    # the versions without importing them, so that the first run below is the first import
    timeout -k 2 10 "$PY" -c "from importlib.metadata import version as v; print('torch', v('torch'), 'torchvision', v('torchvision'))"

    step 60 "full run, fresh machine" "$PY" "${RUN[@]}" --out "$RUNS/run1"
    timings "$RUNS/run1"
    for n in 2 3; do  # warm: with unseen.preload, then without it
        if [ "$n" = 3 ]; then preload=0; else preload=1; fi
        step 35 "full run, warm, UNSEEN_PRELOAD=$preload" env UNSEEN_PRELOAD=$preload \
            "$PY" "${RUN[@]}" --out "$RUNS/run$n"
        timings "$RUNS/run$n"
    done
    step 35 "full run, warm, fp16" "$PY" "${RUN[@]}" --precision fp16 --out "$RUNS/run4"
    timings "$RUNS/run4"
    timeout -k 2 20 "$PY" - <<'PYEOF'
import glob, os, sys, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print("python", sys.version.split()[0], "| bytecode writes off:", sys.flags.dont_write_bytecode,
      "| site-packages writable:", os.access(site, os.W_OK), "| torch .py files",
      len(glob.glob(site + "/torch/**/*.py", recursive=True)), "| .pyc files",
      len(glob.glob(site + "/torch/**/__pycache__/*.pyc", recursive=True)))
PYEOF
    step 25 "start-up costs" "$PY" benchmarks/startup.py --data-root "$DATA"
    step 60 "training loop vs conventional" "$PY" benchmarks/bench_train.py --data-root "$DATA" \
        --model resnet18 --images 65536 --workers 8 --cuda-graphs both --json \
        >"$OUT/bench_resnet18.json"
    step 25 "one step alone" "$PY" benchmarks/profile_step.py --batch-size 512 --dtype bf16 fp16
    step 60 "compiled, batch 2048" "$PY" benchmarks/bench_train.py --data-root "$DATA" \
        --model resnet18 --images 262144 --skip-conventional --compile --batch-size 2048 \
        --json >"$OUT/bench_compiled_2048.json"
    step 135 "tests that need CUDA" "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_cuda.py tests/test_cudagraphs.py tests/test_benchmarks.py
    for f in "$OUT"/*.json; do echo "--- $f"; cat "$f"; done
} 2>&1 | tee "$LOG"
