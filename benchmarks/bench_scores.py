"""Time to fit and apply every rejection score on synthetic features of realistic sizes.

What a run spends on its scores beyond the forward pass: ``fit`` (on the known training
features, or the validation slice) plus ``score`` of the test set. ODIN is left out: it
runs the model again, so its cost is that of two forward passes and one backward pass.

    python benchmarks/bench_scores.py                      # resnet20 (64) and resnet18 (512)
    python benchmarks/bench_scores.py --dims 512 --json    # machine-readable
    python benchmarks/bench_scores.py --knn-bank all       # KNN over every training feature
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from unseen.config import RunConfig
from unseen.scores import SCORES, FitContext, Outputs, create_score


def synthetic(n: int, dim: int, classes: int, gen: torch.Generator, head=None):
    """Post-ReLU-like features around class means, their labels, and logits of a linear head."""
    means = torch.randn(classes, dim, generator=gen) * 2
    labels = torch.randint(0, classes, (n,), generator=gen)
    feats = (means[labels] + torch.randn(n, dim, generator=gen)).relu()
    if head is None:
        head = (torch.randn(classes, dim, generator=gen) / dim**0.5, torch.zeros(classes))
    w, b = head
    return Outputs(feats @ w.T + b, feats, labels), head


def _to(o: Outputs, device: torch.device) -> Outputs:
    return Outputs(o.logits.to(device), o.features.to(device), o.labels.to(device))


def _head(o: Outputs, n: int) -> Outputs:
    return Outputs(o.logits[:n], o.features[:n], o.labels[:n])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    dim: int,
    classes: int,
    n_train: int,
    n_val: int,
    n_test: int,
    names: list[str],
    cfg: RunConfig,
    device: torch.device,
) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    train, head = synthetic(n_train, dim, classes, gen)
    val, _ = synthetic(n_val, dim, classes, gen, head)
    test, _ = synthetic(n_test, dim, classes, gen, head)
    train, val, test = _to(train, device), _to(val, device), _to(test, device)
    ctx = FitContext(train, val, head[0].to(device), head[1].to(device), "softmax")
    small = FitContext(_head(train, 500), _head(val, 500), ctx.head_weight, ctx.head_bias)
    for name in names:  # warm-up: imports, CUDA context and kernels are not what we time
        create_score(name, cfg).fit(small).score(_head(test, 500))
    rows = []
    for name in names:
        s = create_score(name, cfg)
        _sync(device)
        t0 = time.perf_counter()
        s.fit(ctx)
        _sync(device)
        t1 = time.perf_counter()
        s.score(test).cpu()
        _sync(device)
        t2 = time.perf_counter()
        rows.append(
            {"dim": dim, "classes": classes, "score": name, "fit_s": t1 - t0, "score_s": t2 - t1,
             "total_s": t2 - t0}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="64,512", help="feature dimensions, comma-separated")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train", type=int, default=50000, help="known training features")
    parser.add_argument("--val", type=int, default=5000, help="validation features")
    parser.add_argument("--test", type=int, default=10000, help="test features")
    parser.add_argument("--scores", default="all", help="scores, comma-separated (odin excluded)")
    parser.add_argument("--knn-bank", default="10000", help="--knn-bank of the run ('all')")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from unseen.config import parse_value
    from unseen.scores import expand_score_names

    cfg = RunConfig(knn_bank=parse_value("knn_bank", args.knn_bank))
    names = [
        n
        for n in expand_score_names(args.scores.split(","))
        if not SCORES[n].needs_model and not SCORES[n].one_vs_rest_only
    ]
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        rows += bench(
            dim,
            args.classes,
            args.train,
            args.val,
            args.test,
            names,
            cfg,
            torch.device(args.device),
        )
    info = {
        "machine": platform.processor() or platform.machine(),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "train": args.train,
        "val": args.val,
        "test": args.test,
        "knn_bank": cfg.knn_bank,
    }
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return
    print(
        f"{args.train} training, {args.val} validation, {args.test} test features; "
        f"{args.device}, {info['torch_threads']} torch threads; "
        f"load average {info['load_average'][0]:.1f}"
    )
    print(f"{'dim':>4} {'score':12s} {'fit s':>7} {'score s':>8} {'total s':>8}")
    for dim in sorted({r["dim"] for r in rows}):
        sub = [r for r in rows if r["dim"] == dim]
        for r in sub:
            print(
                f"{dim:>4} {r['score']:12s} {r['fit_s']:7.3f} {r['score_s']:8.3f} {r['total_s']:8.3f}"
            )
        print(f"{dim:>4} {'(all)':12s} {'':7s} {'':8s} {sum(r['total_s'] for r in sub):8.3f}")


if __name__ == "__main__":
    main()
