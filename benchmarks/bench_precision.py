"""Does 16-bit autocast pay on this machine? fp32, bf16 (and fp16) training steps, side by side.

``--precision auto`` picks bf16 on CPUs with native bf16 units (AMX, AVX512-BF16) and on CUDA
GPUs of compute capability 8.0 or newer, fp16 on CUDA GPUs of compute capability 7.x, fp32
elsewhere. This script checks that choice on the machine it runs on: one process builds the
same network once per precision (channels_last), then alternates rounds of training steps in
each on one fixed batch, so that all see the same machine load, and prints each precision's
median images/s and its ratio to fp32. fp16 steps scale the loss as a run does
(:class:`unseen.optim.LossScale`). By default fp16 is timed on CUDA only (a CPU emulates it,
18-24x slower than fp32: docs/speed.md); ``--precisions`` chooses. No data or augmentation:
the step alone.

    python benchmarks/bench_precision.py                       # resnet20, 28 px, batch 128
    python benchmarks/bench_precision.py --model resnet18 --rounds 5 --json

On a 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX), torch 2.14.1, 2026-11-29, with other work
running: fp32 about 1,440 images/s, bf16 about 2,240 (1.55x).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from unseen.config import PRECISIONS
from unseen.hardware import (
    autocast,
    configure_threads,
    cpu_bf16_units,
    describe_device,
    resolve_device,
    resolve_precision,
    sync,
)
from unseen.models import create_model
from unseen.optim import LossScale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per precision")
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=None,
        help="what to time (default: fp32 bf16, and fp16 on CUDA)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu":
        configure_threads()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, args.channels, args.image_size, args.image_size, generator=gen)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 9, (args.batch_size,), generator=gen).to(device)

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = create_model(args.model, args.channels, 9, args.image_size).to(device)
        net = net.to(memory_format=torch.channels_last)
        return net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    precisions = args.precisions or ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    precisions = ["fp32", *[p for p in dict.fromkeys(precisions) if p != "fp32"]]  # the baseline
    nets = {precision: build() for precision in precisions}
    scales = {"fp16": LossScale(device)}

    def steps(precision: str, n: int) -> float:
        net, opt = nets[precision]
        scale = scales.get(precision)
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            if scale is None:
                loss.backward()
                opt.step()
                continue
            scale.scale_loss(loss).backward()  # as train_model's eager fp16 step
            scale.step(opt)
        sync(device)
        return n * args.batch_size / (time.perf_counter() - start)

    for precision in nets:  # warm-up: first-use costs of each precision's kernels
        steps(precision, 3)
    rates: dict[str, list[float]] = {precision: [] for precision in nets}
    for _ in range(args.rounds):
        for precision in nets:
            rates[precision].append(steps(precision, args.steps))

    medians = {precision: statistics.median(r) for precision, r in rates.items()}
    result = {
        "device": describe_device(device),
        "cpu_bf16_units": cpu_bf16_units() if device.type == "cpu" else None,
        "auto_precision": resolve_precision("auto", device),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "images_per_s_median": {k: round(v, 1) for k, v in medians.items()},
        "images_per_s_rounds": {k: [round(v, 1) for v in r] for k, r in rates.items()},
        **{
            f"{p}_over_fp32": round(medians[p] / medians["fp32"], 3)
            for p in precisions
            if p != "fp32"
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model}, batch {args.batch_size}, {args.image_size} px on {result['device']}")
    for precision, rate in medians.items():
        print(f"  {precision}: {rate:,.0f} images/s (median of {args.rounds} rounds)")
    for precision in precisions[1:]:
        print(f"  {precision} / fp32: {result[f'{precision}_over_fp32']:.2f}x")
    print(f"  --precision auto picks {result['auto_precision']} here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
