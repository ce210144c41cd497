"""Where a run's fixed start-up cost goes: imports, device start, first convolution, fonts, data.

    python benchmarks/startup.py --data-root DIR      # Fashion-MNIST IDX files in DIR

``unseen run`` pays these once per process, before or around its training; on a fresh machine
some of them (matplotlib's font cache, the GPU's first kernels) are paid in full. Run it first
on a fresh machine, then again, to see which costs a warm machine hides. Each line is the
seconds of one stage; the last line says whether any stage imported ``torch._dynamo``.
"""

from __future__ import annotations

import argparse
import sys
import time

STARTED = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dataset", default="fashion-mnist", help="the data to load last (default: %(default)s)"
    )
    ap.add_argument(
        "--data-root", default=None, help="where its files are (default: the usual places)"
    )
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    args = ap.parse_args(argv)
    stages: list[tuple[str, float]] = []
    last = STARTED

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        stages.append((name, now - last))
        last = now

    import torch

    mark(f"import torch {torch.__version__}")
    from unseen.errors import UnseenError

    try:
        return _stages(args, mark, stages)
    except UnseenError as exc:  # no such device or dataset: one line, as the CLI says it
        print(f"startup: {exc}", file=sys.stderr)
        return 2


def _stages(args: argparse.Namespace, mark, stages: list[tuple[str, float]]) -> int:
    import torch

    from unseen.hardware import describe_device, resolve_device, sync

    device = resolve_device(args.device)
    torch.zeros(1, device=device)
    sync(device)
    mark(f"start {describe_device(device)}")
    conv = torch.nn.Conv2d(1, 64, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.rand(512, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        conv(x).float().sum().backward()
    sync(device)
    mark("first convolution, forward and backward (bf16)")
    import unseen.experiment  # noqa: F401  (unseen itself: scikit-learn is imported later)

    mark("import unseen.experiment")
    import sklearn.model_selection  # noqa: F401  (the validation split, before training)

    mark("import sklearn.model_selection (the split)")
    from matplotlib import font_manager  # its import builds the font cache on a fresh machine

    font_manager.findfont("DejaVu Sans")
    mark("import matplotlib.font_manager (with the font cache)")
    import unseen.report  # noqa: F401  (the rest of matplotlib, scikit-learn's metrics)

    mark("import unseen.report")
    from unseen.data import load_dataset

    data = load_dataset(args.dataset, args.data_root)
    mark(f"load {args.dataset} ({len(data.x_train) + len(data.x_test)} images)")
    width = max(len(name) for name, _ in stages)
    for name, seconds in stages:
        print(f"{name:{width}s} {seconds:7.3f} s")
    print(f"{'total':{width}s} {time.perf_counter() - STARTED:7.3f} s")
    # torch.optim's optimisers and schedulers (at every call) and torchvision (on import)
    # import the compiler (seconds on a GPU machine); a run uses neither, so none of the stages
    # above should have imported it
    print(f"torch._dynamo imported: {'yes' if 'torch._dynamo' in sys.modules else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
