"""Where one training step's time goes on a GPU: the step alone, eager and graphed, and its kernels.

    python benchmarks/profile_step.py --model resnet18 --batch-size 512 1024

For each batch size (and --dtype, --layout, --cudnn-benchmark), on random 28 px images (nothing but the step: no data indexing or
augmentation): milliseconds per step and images/s of the eager step and of the graphed one
(:class:`unseen.cudagraphs.GraphedStep`), then, from ``torch.profiler``, the GPU kernel time
of one eager step (the ceiling a perfect host could reach) and its top kernels. Needs CUDA.
"""

from __future__ import annotations

import argparse
import sys

import torch

from unseen.cudagraphs import GraphedStep
from unseen.hardware import resolve_device
from unseen.heads import HEADS
from unseen.models import create_model
from unseen.optim import LossScale
from unseen.train import TrainSettings, make_optimizer


def time_steps(step, x, y, n: int) -> float:
    """Milliseconds per call of ``step`` (CUDA events; after 5 untimed calls)."""
    for _ in range(5):
        step(x, y)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        step(x, y)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--cudnn-benchmark",
        default="off",
        choices=("off", "on", "both"),
        help="let cuDNN time its kernels; 'both' measures each batch size without, then with",
    )
    ap.add_argument(
        "--dtype",
        nargs="+",
        default=["bf16"],
        choices=("bf16", "fp16"),
        help="autocast dtype of the step; fp16 scales its loss as a run does (its batch norm "
        "runs through cuDNN, which PyTorch does not use for bf16), eager and graphed",
    )
    ap.add_argument(
        "--layout",
        nargs="+",
        default=["channels_last"],
        choices=("channels_last", "nchw"),
        help="memory layout of the network and its input",
    )
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = resolve_device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, {args.model}")

    def loss_fn(z, t):
        return HEADS["softmax"].loss(z, t, 0.0)

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.cudnn_benchmark]
    cases = [
        (bs, b, d, lay)
        for bs in args.batch_size
        for b in modes
        for d in args.dtype
        for lay in args.layout
    ]
    for bs, benchmark, dtype_name, layout_name in cases:
        layout = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}[
            layout_name
        ]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
        torch.backends.cudnn.benchmark = benchmark
        torch.manual_seed(0)
        model = create_model(args.model, 1, 9, args.image_size).to(dev)
        model = model.to(memory_format=layout).train()
        opt = make_optimizer(model, TrainSettings(epochs=1, batch_size=bs))
        x = torch.rand(bs, 1, args.image_size, args.image_size, device=dev)
        x = x.contiguous(memory_format=layout)
        y = torch.randint(0, 9, (bs,), device=dev)

        # fp16 scales its loss as a run does (the eager step then waits for the overflow flag)
        scale = LossScale(dev) if dtype_name == "fp16" else None

        def eager(xb, yb, model=model, opt=opt, dtype=dtype, scale=scale):
            with torch.autocast("cuda", dtype=dtype):
                z = model(xb)
            loss = loss_fn(z.float(), yb)
            opt.zero_grad(set_to_none=True)
            if scale is None:
                loss.backward()
                opt.step()
                return
            scale.scale_loss(loss).backward()
            scale.step(opt)

        ms_eager = time_steps(eager, x, y, args.steps)
        graphed = GraphedStep(
            model, loss_fn, opt, dev, dtype_name, bs,
            loss_scale=LossScale(dev) if dtype_name == "fp16" else None,
        )  # fmt: skip
        ms_graph = time_steps(graphed, x, y, args.steps)
        graphed_text = f"graphed {ms_graph:.2f} ms/step ({bs / ms_graph * 1e3:,.0f} images/s); "
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                eager(x, y)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events) / 3
        print(
            f"batch {bs}, {dtype_name}, {layout_name}, cudnn.benchmark {'on' if benchmark else 'off'}: "
            f"eager {ms_eager:.2f} ms/step ({bs / ms_eager * 1e3:,.0f} images/s); {graphed_text}"
            f"GPU kernel time of an eager step {gpu_us / 1e3:.2f} ms "
            f"(ceiling {bs / gpu_us * 1e6:,.0f} images/s)"
        )
        top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
        for e in top:
            share = e.self_device_time_total / 3 / gpu_us
            print(f"    {share:6.1%}  {e.self_device_time_total / 3 / 1e3:7.3f} ms  {e.key[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
