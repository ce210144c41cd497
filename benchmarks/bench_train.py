"""Training and evaluation speed of unseen's loop against a conventional DataLoader loop.

Both loops train the same model at the same batch size on the same device, side by side in
one process, so the ratio is meaningful on a noisy machine even when the absolute numbers
are not. The conventional loop is the one of the usual tutorials: a ``Dataset`` applying
torchvision transforms to one image at a time, a ``DataLoader``, fp32, NCHW.

    python benchmarks/bench_train.py                       # Fashion-MNIST (or digits), resnet20
    python benchmarks/bench_train.py --model resnet18 --batch-size 512 --json
    python benchmarks/bench_train.py --target-accuracy 0.9 --epochs 15
    python benchmarks/bench_train.py --model resnet18 --images 65536 --cuda-graphs both  # GPU

Prints images/s of both loops and their ratio, evaluation time (one forward pass over the
test set plus every score but odin), optionally the time to reach a validation accuracy,
and peak memory. ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from unseen.augment import make_augment_spec
from unseen.data import DEBIAN_FASHION_MNIST, load_dataset
from unseen.errors import UnseenError
from unseen.evaluate import forward_pass
from unseen.experiment import channel_stats, default_batch_size, default_lr
from unseen.hardware import configure_threads, describe_device, resolve_device, resolve_precision
from unseen.heads import HEADS
from unseen.models import create_model, fold_batch_norm
from unseen.scores import SCORES, FitContext
from unseen.splits import make_split, split_data
from unseen.train import TrainSettings, train_model, use_cuda_graphs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PerImageDataset(Dataset):
    """What a tutorial does: transform one image at a time in Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int, flip: bool, mean, std):
        from torchvision.transforms import v2

        ops = [v2.RandomCrop(x.shape[-1], padding=padding)]
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean.tolist(), std.tolist())]
        self.t = v2.Compose(ops)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.t(self.x[i]), self.y[i]


def conventional_images_per_second(
    model, x, y, args, device, spec, mean, std, n_images: int
) -> float:
    ds = PerImageDataset(x, y, spec.padding, spec.flip, mean, std)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0)  # fmt: skip
    model.to(device).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    # the model normalises internally; undo that so both loops see the same arithmetic
    model.mean.zero_()
    model.std.fill_(1.0)
    seen, warm, start = 0, 2, None
    while True:
        for i, (xb, yb) in enumerate(loader):
            if i == warm and start is None:
                sync(device)
                start, seen = time.perf_counter(), 0
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(xb)
            if start is not None and seen >= n_images:
                sync(device)
                return seen / (time.perf_counter() - start)


def tool_images_per_second(model, x, y, args, device, precision, spec, graphs: str) -> dict:
    """Two epochs of unseen's own train_model on ``x``; the second one is timed.

    The first epoch holds the one-off costs (cuDNN autotuning, graph capture, compilation)."""
    s = TrainSettings(
        epochs=2, batch_size=args.batch_size, lr=0.05, compile=args.compile, cuda_graphs=graphs
    )
    result = train_model(model, x, y, s, HEADS["softmax"], spec, device, precision, progress=False)
    h = result.history
    return {
        "images_per_second": len(x) / (h[1]["seconds"] - h[0]["seconds"]),
        "first_epoch_seconds": h[0]["seconds"],
        "cuda_graphs": result.cuda_graphs,
    }


def evaluation_seconds(model, sd, device, precision) -> dict:
    """As ``unseen run`` evaluates: fold batch norm into a copy of the network, one forward
    pass over the test set, the passes over the training and validation images that the
    scores fit on, then fit + score every score except odin. The test pass is also timed
    through the unfolded network, after one warm-up batch through each."""

    def timed(fn):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        return result, time.perf_counter() - start

    infer, fold_seconds = timed(lambda: fold_batch_norm(model))
    for net in (model, infer):  # warm-up: first-call costs land in neither timing
        forward_pass(net, sd.x_test[:1024], device, precision)
    _, unfolded_seconds = timed(lambda: forward_pass(model, sd.x_test, device, precision))
    test, forward_seconds = timed(lambda: forward_pass(infer, sd.x_test, device, precision))
    (train, val), train_val_seconds = timed(
        lambda: (
            forward_pass(infer, sd.x_train, device, precision, labels=sd.y_train),
            forward_pass(infer, sd.x_val, device, precision, labels=sd.y_val),
        )
    )
    ctx = FitContext(
        train, val, model.head.weight.detach().float(), model.head.bias.detach().float(), "softmax"
    )
    per_score = {}
    for name, cls in SCORES.items():
        if getattr(cls, "needs_model", False) or getattr(cls, "one_vs_rest_only", False):
            continue
        a = time.perf_counter()
        try:
            score = cls()
            score.fit(ctx)
            score.score(test)
        except Exception as exc:  # report, don't hide
            per_score[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        sync(device)
        per_score[name] = time.perf_counter() - a
    return {
        "test_images": len(sd.x_test),
        "fold_batch_norm_seconds": fold_seconds,
        "forward_seconds": forward_seconds,
        "forward_seconds_unfolded": unfolded_seconds,
        "train_val_forward_seconds": train_val_seconds,
        "scores_seconds": sum(v for v in per_score.values() if isinstance(v, float)),
        "per_score_seconds": per_score,
    }


def time_to_accuracy(args, p_data, sd, device, precision, spec) -> dict:
    model = create_model(args.model, p_data.channels, sd.split.num_known, p_data.image_size[0])
    model.set_normalization(*channel_stats(sd.x_train))
    s = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr or default_lr(args.batch_size),
        compile=args.compile,
        cuda_graphs="off" if args.cuda_graphs == "off" else "auto",
    )
    r = train_model(model, sd.x_train, sd.y_train, s, HEADS["softmax"], spec, device, precision,
                    x_val=sd.x_val, y_val=sd.y_val, progress=False)  # fmt: skip
    hit = next((h for h in r.history if h["val_accuracy"] >= args.target_accuracy), None)
    return {
        "target_val_accuracy": args.target_accuracy,
        "epochs": args.epochs,
        "reached_at_epoch": hit["epoch"] if hit else None,
        "seconds_to_target": hit["seconds"] if hit else None,
        "final_val_accuracy": r.history[-1]["val_accuracy"],
        "train_images_per_second": r.images_per_second,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dataset", default=None, help="default: fashion-mnist when found, else digits"
    )
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on CPU, 512 on GPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--precision",
        default="auto",
        help="precision of unseen's loop (the conventional one is fp32)",
    )
    ap.add_argument("--images", type=int, default=8192, help="images timed per loop")
    ap.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the conventional loop"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile unseen's loop")
    ap.add_argument(
        "--cuda-graphs",
        default="auto",
        choices=("auto", "on", "off", "both"),
        help="CUDA graphs in unseen's loop; 'both' times it without and with them, side by side",
    )
    ap.add_argument("--lr", type=float, default=None, help="of --target-accuracy's training")
    ap.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="also time a full training to this val accuracy",
    )
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--skip-conventional", action="store_true")
    ap.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels (autotuning)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.dataset is None:
        found = DEBIAN_FASHION_MNIST.is_dir() or args.data_root is not None
        args.dataset = "fashion-mnist" if found else "digits"

    threads = configure_threads()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    precision = resolve_precision(args.precision, device)
    args.batch_size = args.batch_size or default_batch_size(device)
    try:
        if args.cuda_graphs in ("on", "both"):
            use_cuda_graphs("on", device, "none")
        data = load_dataset(args.dataset, args.data_root)
    except UnseenError as exc:
        print(f"bench_train: {exc}", file=sys.stderr)
        return 2
    split = make_split(data.classes)
    sd = split_data(data, split, val_fraction=0.1, seed=0)
    spec = make_augment_spec("standard", data.image_size[0], data.flip_ok)
    mean, std = channel_stats(sd.x_train)
    n = args.images
    # both loops see the same images: repeat a small training set until there are enough
    reps = math.ceil(n / len(sd.x_train))
    x, y = sd.x_train.repeat(reps, 1, 1, 1)[:n], sd.y_train.repeat(reps)[:n]

    def fresh():
        torch.manual_seed(0)
        m = create_model(args.model, data.channels, split.num_known, data.image_size[0])
        m.set_normalization(mean, std)
        return m

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {
        "hardware": {
            "device": describe_device(device),
            "cpu": platform.processor() or platform.machine(),
            "threads": threads,
            "torch": torch.__version__,
        },
        "dataset": args.dataset,
        "model": args.model,
        "batch_size": args.batch_size,
        "images_timed": n,
        "tool": {
            "precision": precision,
            "channels_last": not args.compile,
            "compile": args.compile,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
    }
    if args.cuda_graphs == "both":
        plain = tool_images_per_second(fresh(), x, y, args, device, precision, spec, "off")
        out["tool_without_cuda_graphs"] = plain
    tool_model = fresh()
    mode = "on" if args.cuda_graphs == "both" else args.cuda_graphs
    out["tool"].update(
        tool_images_per_second(tool_model, x, y, args, device, precision, spec, mode)
    )
    if args.cuda_graphs == "both":
        out["cuda_graphs_speedup"] = out["tool"]["images_per_second"] / plain["images_per_second"]
    if not args.skip_conventional:
        conv = conventional_images_per_second(fresh(), x, y, args, device, spec, mean, std, n)
        out["conventional"] = {
            "precision": "fp32",
            "channels_last": False,
            "workers": args.workers,
            "images_per_second": conv,
        }
        out["speedup"] = out["tool"]["images_per_second"] / conv
    out["evaluation"] = evaluation_seconds(tool_model, sd, device, precision)
    if args.target_accuracy is not None:
        out["time_to_accuracy"] = time_to_accuracy(args, data, sd, device, precision, spec)
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    hw = out["hardware"]
    print(
        f"{args.dataset}, {args.model}, batch {args.batch_size}, {n} images timed; {hw['device']}, torch {hw['torch']}"
    )
    t = out["tool"]
    extras = (", compiled" if args.compile else "") + (", CUDA graphs" if t["cuda_graphs"] else "")
    print(
        f"unseen loop       : {t['images_per_second']:10.0f} images/s  ({precision}, channels_last, data resident on the device{extras}; first epoch {t['first_epoch_seconds']:.2f} s)"
    )
    if "tool_without_cuda_graphs" in out:
        p = out["tool_without_cuda_graphs"]
        print(
            f"  without graphs  : {p['images_per_second']:10.0f} images/s  (first epoch {p['first_epoch_seconds']:.2f} s); graphs {out['cuda_graphs_speedup']:.2f}x"
        )
    if "conventional" in out:
        print(
            f"conventional loop : {out['conventional']['images_per_second']:10.0f} images/s  (fp32, NCHW, DataLoader with {args.workers} workers, per-image transforms)"
        )
        print(f"speedup           : {out['speedup']:10.2f}x")
    ev = out["evaluation"]
    print(f"evaluation        : forward pass over {ev['test_images']} test images {ev['forward_seconds']:.3f} s "
          f"with batch norm folded ({ev['fold_batch_norm_seconds']:.3f} s to fold), {ev['forward_seconds_unfolded']:.3f} s unfolded "
          f"({ev['forward_seconds_unfolded'] / ev['forward_seconds']:.2f}x); "
          f"over the training and validation images (for the scores' fits) {ev['train_val_forward_seconds']:.3f} s; "
          f"every score but odin (fit + score) {ev['scores_seconds']:.3f} s")  # fmt: skip
    for name, sec in ev["per_score_seconds"].items():
        print(f"    {name:12s} {sec if isinstance(sec, str) else f'{sec:.3f} s'}")
    if "time_to_accuracy" in out:
        t = out["time_to_accuracy"]
        reached = (
            f"{t['seconds_to_target']:.1f} s (epoch {t['reached_at_epoch']} of {t['epochs']})"
            if t["seconds_to_target"] is not None
            else f"not reached in {t['epochs']} epochs"
        )
        print(
            f"time to val acc {t['target_val_accuracy']}: {reached}; final {t['final_val_accuracy']:.4f}"
        )
    print(f"peak memory       : {out['peak_memory_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
