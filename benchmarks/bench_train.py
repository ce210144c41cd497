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
and peak memory per phase. ``--json`` prints one JSON object instead.

With ``--rounds N`` (N > 1) both loops are timed N times, alternating which goes first
(round 1: unseen's loop first, round 2: the conventional loop first, ...), each time on a fresh
network, and the ratio reported is the median of the rounds' ratios: a machine whose speed
drifts moves both loops of a round alike.

unseen's loop trains two epochs on ``--images`` images and times the second. The first holds
the one-off costs, CUDA graph capture included, which is why ``--images`` must hold at least
one full batch, and with CUDA graphs four (three warm-up steps and the capture). The
conventional loop runs two untimed batches, then times batches, fetching included, until it
has trained on ``--images`` images or more.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from unseen.augment import make_augment_spec
from unseen.config import PRECISIONS
from unseen.cudagraphs import WARMUP_STEPS
from unseen.data import DEBIAN_FASHION_MNIST, load_dataset
from unseen.errors import UnseenError
from unseen.evaluate import forward_pass
from unseen.experiment import channel_stats, default_batch_size, default_lr
from unseen.hardware import (
    configure_threads,
    describe_device,
    resolve_device,
    resolve_precision,
    sync,
)
from unseen.heads import HEADS
from unseen.models import check_model, create_model, fold_batch_norm
from unseen.scores import SCORES, FitContext
from unseen.splits import make_split, split_data
from unseen.train import TrainSettings, train_model, use_cuda_graphs


def images_needed(batch_size: int, graphed: bool) -> int:
    """The fewest ``--images`` a measurement can use.

    One full batch: the conventional loader drops a partial one, and unseen's timed epoch
    should hold a full-size step. With CUDA graphs, enough full batches for GraphedStep's
    warm-up steps and its capture to fall in the untimed first epoch (train_model does not
    say whether a capture happened, so this is how the bench makes sure of it)."""
    return batch_size * (WARMUP_STEPS + 1 if graphed else 1)


def too_few_images(n: int, batch_size: int, graphed: bool) -> str | None:
    need = images_needed(batch_size, graphed)
    if n >= need:
        return None
    if graphed:
        why = (
            f"with CUDA graphs unseen's loop needs {WARMUP_STEPS + 1} full batches an epoch "
            f"({WARMUP_STEPS} warm-up steps and the capture, all in the untimed first epoch)"
        )
        other = "a smaller --batch-size or --cuda-graphs off"
    else:
        why = "both loops need at least one full batch"
        other = "a smaller --batch-size"
    return f"--images {n} is too few: {why}, so at batch {batch_size} it must be at least {need} (or use {other})."


def max_rss_mib(who: int) -> float:
    """``ru_maxrss`` in MiB: kilobytes on Linux, bytes on macOS."""
    return resource.getrusage(who).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


class PeakMemory:
    """Peak memory of each phase of the bench.

    On CUDA, ``torch.cuda.max_memory_allocated`` reset before each phase (it includes what was
    still allocated when the phase began; the phases free their models and data in between).
    On a CPU, the process's max RSS so far: the OS cannot reset it, so a phase shows only
    whether it raised the high-water mark."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.measure = (
            "torch.cuda.max_memory_allocated, reset before each phase"
            if self.cuda
            else "process max RSS so far (cannot be reset)"
        )
        self.mib: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        gc.collect()  # what the previous phase left behind
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.mib[name] = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib[name] = max_rss_mib(resource.RUSAGE_SELF)


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
) -> dict:
    """Two untimed batches, then whole batches, timed from the fetch of the first, until
    ``n_images`` or more were trained on. Batches are counted across epochs; the loader must
    hold one full batch (it drops a partial one)."""
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
    if len(loader) == 0:
        raise ValueError(f"{len(x)} images hold no full batch of {args.batch_size}")

    def batches():  # epoch after epoch
        while True:
            yield from loader

    def step(xb, yb) -> int:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(xb)

    stream = batches()
    for _ in range(2):  # warm-up: first-call costs, the workers' start
        step(*next(stream))
    sync(device)
    start, seen = time.perf_counter(), 0
    while seen < n_images:
        seen += step(*next(stream))  # the fetch is timed too
    sync(device)
    seconds = time.perf_counter() - start
    stream.close()  # the workers stop when the loader goes, on return
    return {"images_timed": seen, "timed_seconds": seconds, "images_per_second": seen / seconds}


def tool_images_per_second(model, x, y, args, device, precision, spec, graphs: str) -> dict:
    """Two epochs of unseen's own train_model on ``x``; the second one is timed.

    The first epoch holds the one-off costs (cuDNN autotuning, graph capture, compilation);
    with CUDA graphs, main() made sure it holds the warm-up steps and the capture."""
    s = TrainSettings(
        epochs=2, batch_size=args.batch_size, lr=0.05, compile=args.compile, cuda_graphs=graphs
    )
    result = train_model(model, x, y, s, HEADS["softmax"], spec, device, precision, progress=False)
    h = result.history
    seconds = h[1]["seconds"] - h[0]["seconds"]
    # both epochs train the same images: all of x, less a last batch of one image, which
    # train_model drops (batch norm needs two)
    images = result.images_seen // s.epochs
    out = {
        "images_timed": images,
        "timed_seconds": seconds,
        "images_per_second": images / seconds,
        "first_epoch_seconds": h[0]["seconds"],
        "cuda_graphs": result.cuda_graphs,
    }
    if result.cuda_graphs:
        out["cuda_graph_capture"] = (
            f"full batch {WARMUP_STEPS + 1} of {len(x) // args.batch_size} of the untimed first "
            "epoch (ensured by the --images check; train_model does not report it)"
        )
    return out


def more_rounds(out: dict, rounds: int, tool, conventional) -> list[dict]:
    """Round 1 is the one ``out`` holds (unseen's loop first); rounds 2..N time both loops
    again, ``tool()`` and ``conventional()`` each on a fresh network, the conventional loop
    first in even rounds. Each round's images/s of both loops, their ratio and which went
    first."""
    done = [{"tool": out["tool"]["images_per_second"],
             "conventional": out["conventional"]["images_per_second"], "first": "tool"}]  # fmt: skip
    for i in range(2, rounds + 1):
        if i % 2 == 0:
            c = conventional()["images_per_second"]
            t = tool()["images_per_second"]
        else:
            t = tool()["images_per_second"]
            c = conventional()["images_per_second"]
        done.append(
            {"tool": t, "conventional": c, "first": "conventional" if i % 2 == 0 else "tool"}
        )
    for r in done:
        r["speedup"] = r["tool"] / r["conventional"]
    return done


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
    # Every score is fitted and scored twice: the first pass as in a run (first-use costs such
    # as a linear-algebra library's start-up included, and what scores share, as rmd shares
    # mahalanobis's class Gaussians, fitted once), the second pass warm but from scratch.
    per_score, per_score_warm = {}, {}
    for timings in (per_score, per_score_warm):
        ctx.shared.clear()
        for name, cls in SCORES.items():
            if getattr(cls, "needs_model", False) or getattr(cls, "one_vs_rest_only", False):
                continue
            a = time.perf_counter()
            try:
                score = cls()
                score.fit(ctx)
                score.score(test)
            except Exception as exc:  # report, don't hide
                timings[name] = f"failed: {type(exc).__name__}: {exc}"
                continue
            sync(device)
            timings[name] = time.perf_counter() - a
    return {
        "test_images": len(sd.x_test),
        "fold_batch_norm_seconds": fold_seconds,
        "forward_seconds": forward_seconds,
        "forward_seconds_unfolded": unfolded_seconds,
        "train_val_forward_seconds": train_val_seconds,
        "scores_seconds": sum(v for v in per_score.values() if isinstance(v, float)),
        "per_score_seconds": per_score,
        "scores_seconds_warm": sum(v for v in per_score_warm.values() if isinstance(v, float)),
        "per_score_seconds_warm": per_score_warm,
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
        choices=("auto", *PRECISIONS),
        help="precision of unseen's loop (the conventional one is fp32)",
    )
    ap.add_argument(
        "--images",
        type=int,
        default=8192,
        help="images timed per loop: at least one batch, four with CUDA graphs",
    )
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
        "--rounds",
        type=int,
        default=1,
        help="time both loops this many times, alternating their order; the ratio is the "
        "median of the rounds' (default: %(default)s)",
    )
    ap.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels (autotuning)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.dataset is None:
        found = DEBIAN_FASHION_MNIST.is_dir() or args.data_root is not None
        args.dataset = "fashion-mnist" if found else "digits"

    threads = configure_threads()
    mode = "on" if args.cuda_graphs == "both" else args.cuda_graphs  # of the tool's timed loop
    try:
        device = resolve_device(args.device)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        precision = resolve_precision(args.precision, device)
        check_model(args.model)
        if args.batch_size is None:  # 0 is refused below, not taken for auto
            args.batch_size = default_batch_size(device)
        if args.cuda_graphs == "both" and device.type != "cuda":
            raise UnseenError(
                "--cuda-graphs both times the loop with CUDA graphs, which need a CUDA device; "
                "use --cuda-graphs off here."
            )
        graphed = use_cuda_graphs(mode, device, "none")
        if args.batch_size < 2:
            raise UnseenError("--batch-size must be at least 2 (batch norm needs two images).")
        if args.rounds < 1:
            raise UnseenError(f"--rounds must be 1 or more, not {args.rounds}.")
        if args.rounds > 1 and args.skip_conventional:
            raise UnseenError("--rounds times both loops; it cannot go with --skip-conventional.")
        if (message := too_few_images(args.images, args.batch_size, graphed)) is not None:
            raise UnseenError(message)
        data = load_dataset(args.dataset, args.data_root)
        split = make_split(data.classes)
        sd = split_data(data, split, val_fraction=0.1, seed=0)  # too few images: refused here
    except UnseenError as exc:
        print(f"bench_train: {exc}", file=sys.stderr)
        return 2
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

    memory = PeakMemory(device)
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
        "images_requested": n,
        "full_batches_per_epoch": n // args.batch_size,
        "tool": {
            "precision": precision,
            "channels_last": not args.compile,  # train_model trains compiled networks in NCHW
            "compile": args.compile,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
    }
    # phases in order: unseen's loop (without graphs first, with --cuda-graphs both), its
    # evaluation, the conventional loop, with --rounds the further rounds of both loops, the
    # training to --target-accuracy
    if args.cuda_graphs == "both":
        with memory.phase("tool_without_cuda_graphs"):
            plain = tool_images_per_second(fresh(), x, y, args, device, precision, spec, "off")
        out["tool_without_cuda_graphs"] = plain
    tool_model = fresh()
    with memory.phase("tool"):
        out["tool"].update(
            tool_images_per_second(tool_model, x, y, args, device, precision, spec, mode)
        )
    if args.cuda_graphs == "both":
        out["cuda_graphs_speedup"] = out["tool"]["images_per_second"] / plain["images_per_second"]
    with memory.phase("evaluation"):
        out["evaluation"] = evaluation_seconds(tool_model, sd, device, precision)
    del tool_model
    workers_rss = None
    if not args.skip_conventional:
        with memory.phase("conventional"):
            conv = conventional_images_per_second(fresh(), x, y, args, device, spec, mean, std, n)
        out["conventional"] = {
            "precision": "fp32",
            "channels_last": False,
            "workers": args.workers,
            **conv,
        }
        out["speedup"] = out["tool"]["images_per_second"] / conv["images_per_second"]
        if args.rounds > 1:
            with memory.phase("rounds"):  # else on a CPU their peak would land in the next phase
                out["rounds"] = more_rounds(
                    out,
                    args.rounds,
                    lambda: tool_images_per_second(
                        fresh(), x, y, args, device, precision, spec, mode
                    ),
                    lambda: conventional_images_per_second(
                        fresh(), x, y, args, device, spec, mean, std, n
                    ),
                )
            out["speedup"] = statistics.median(r["speedup"] for r in out["rounds"])
        gc.collect()  # the loaders and their workers, so that they count as waited-for children
        if args.workers > 0:
            workers_rss = max_rss_mib(resource.RUSAGE_CHILDREN)
    if args.target_accuracy is not None:
        with memory.phase("time_to_accuracy"):
            out["time_to_accuracy"] = time_to_accuracy(args, data, sd, device, precision, spec)
    out["peak_memory"] = {"measure": memory.measure, "mib": memory.mib}
    if workers_rss is not None:
        # RUSAGE_CHILDREN: the largest child process waited for so far, which are the
        # DataLoader workers; forked, so the pages they share with this process count too
        out["peak_memory"]["conventional_workers_max_rss_mib"] = workers_rss
    out["peak_memory_mib"] = max(memory.mib.values())  # the single number of earlier versions

    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    hw = out["hardware"]
    print(
        f"{args.dataset}, {args.model}, batch {args.batch_size}, {n} images ({out['full_batches_per_epoch']} full batches an epoch); {hw['device']}, torch {hw['torch']}"
    )
    t = out["tool"]
    layout = "channels_last" if t["channels_last"] else "NCHW"
    extras = (", compiled" if t["compile"] else "") + (
        ", CUDA graphs captured in the first epoch (ensured, not read back)"
        if t["cuda_graphs"]
        else ""
    )
    print(
        f"unseen loop       : {t['images_per_second']:10.0f} images/s  over {t['images_timed']} images in the second epoch ({t['precision']}, {layout}, data resident on the device{extras}; first epoch {t['first_epoch_seconds']:.2f} s)"
    )
    if "tool_without_cuda_graphs" in out:
        p = out["tool_without_cuda_graphs"]
        print(
            f"  without graphs  : {p['images_per_second']:10.0f} images/s  (first epoch {p['first_epoch_seconds']:.2f} s); graphs {out['cuda_graphs_speedup']:.2f}x"
        )
    if "conventional" in out:
        c = out["conventional"]
        print(
            f"conventional loop : {c['images_per_second']:10.0f} images/s  over {c['images_timed']} images after 2 untimed batches (fp32, NCHW, DataLoader with {c['workers']} workers, per-image transforms)"
        )
        if "rounds" in out:
            each = ", ".join(f"{r['speedup']:.2f}x" for r in out["rounds"])
            print(f"  rounds          : {each} (images/s of unseen's loop: "
                  f"{', '.join(str(round(r['tool'])) for r in out['rounds'])}; conventional: "
                  f"{', '.join(str(round(r['conventional'])) for r in out['rounds'])})")  # fmt: skip
            print(f"speedup           : {out['speedup']:10.2f}x  (median of {len(out['rounds'])} rounds)")  # fmt: skip
        else:
            print(f"speedup           : {out['speedup']:10.2f}x")
    ev = out["evaluation"]
    print(f"evaluation        : forward pass over {ev['test_images']} test images {ev['forward_seconds']:.3f} s "
          f"with batch norm folded ({ev['fold_batch_norm_seconds']:.3f} s to fold), {ev['forward_seconds_unfolded']:.3f} s unfolded "
          f"({ev['forward_seconds_unfolded'] / ev['forward_seconds']:.2f}x); "
          f"over the training and validation images (for the scores' fits) {ev['train_val_forward_seconds']:.3f} s; "
          f"every score but odin (fit + score) {ev['scores_seconds']:.3f} s, "
          f"{ev['scores_seconds_warm']:.3f} s when repeated")  # fmt: skip
    for name, sec in ev["per_score_seconds"].items():
        warm = ev["per_score_seconds_warm"][name]
        both = [s if isinstance(s, str) else f"{s:.3f} s" for s in (sec, warm)]
        print(f"    {name:12s} {both[0]} (repeated: {both[1]})")
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
    mem = out["peak_memory"]
    names = {"tool_without_cuda_graphs": "unseen loop without graphs", "tool": "unseen loop",
             "rounds": "rounds 2 on", "time_to_accuracy": "time to accuracy"}  # fmt: skip
    phases = ", ".join(f"{names.get(k, k)} {v:.0f}" for k, v in mem["mib"].items())
    if device.type == "cuda":
        print(f"peak memory (MiB) : {phases}  (CUDA max allocated, reset before each phase)")
    else:
        print(f"peak memory (MiB) : {phases}  (process max RSS so far, after each phase: it cannot be reset)")  # fmt: skip
    if "conventional_workers_max_rss_mib" in mem:
        print(f"    largest DataLoader worker: max RSS {mem['conventional_workers_max_rss_mib']:.0f} MiB "
              "(forked: pages shared with the main process count too)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
