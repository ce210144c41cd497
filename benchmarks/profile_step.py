"""Where one training step's time goes on a GPU: the step alone, eager and graphed, and its kernels.

    python benchmarks/profile_step.py --model resnet18 --batch-size 512 1024

For each batch size, on random 28 px images (nothing but the step: no data indexing or
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
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = resolve_device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, {args.model}, bf16")

    def loss_fn(z, t):
        return HEADS["softmax"].loss(z, t, 0.0)

    for bs in args.batch_size:
        torch.manual_seed(0)
        model = create_model(args.model, 1, 9, args.image_size).to(dev)
        model = model.to(memory_format=torch.channels_last).train()
        opt = make_optimizer(model, TrainSettings(epochs=1, batch_size=bs))
        x = torch.rand(bs, 1, args.image_size, args.image_size, device=dev)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 9, (bs,), device=dev)

        def eager(xb, yb, model=model, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                z = model(xb)
            loss = loss_fn(z.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        graphed = GraphedStep(model, loss_fn, opt, dev, "bf16", bs)
        ms_eager = time_steps(eager, x, y, args.steps)
        ms_graph = time_steps(graphed, x, y, args.steps)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                eager(x, y)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events) / 3
        print(
            f"batch {bs}: eager {ms_eager:.2f} ms/step ({bs / ms_eager * 1e3:,.0f} images/s); "
            f"graphed {ms_graph:.2f} ms/step ({bs / ms_graph * 1e3:,.0f} images/s); "
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
