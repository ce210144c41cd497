"""The ``unseen ood`` subcommand: argparse wiring only (the work is in :mod:`unseen.farood`)."""

from __future__ import annotations

import argparse
import contextlib

from .cli import nonempty_path
from .predict_cli import _positive_int, add_model_options


def cmd_ood(args: argparse.Namespace) -> int:
    from .console import warn
    from .data import absolute_dataset
    from .farood import evaluate_ood, ood_path, ood_summary, save_ood
    from .predict import locate_run
    from .runfolder import check_writable

    # the result can be saved: checked before the work, not after it
    path = ood_path(locate_run(args.run_dir, args.head), absolute_dataset(args.dataset))
    made = not path.parent.exists()
    try:
        check_writable(path)  # creates ood/
        result = evaluate_ood(
            args.run_dir,
            args.dataset,
            data_root=args.data_root,
            download=args.download,
            head=args.head,
            device=args.device,
            batch_size=args.batch_size,
            limit=args.limit,
            warn=warn,  # fp16 on a CPU: once the dataset is read, before the forward pass
        )
    except BaseException:
        if made:  # no empty ood/ left behind by a dataset that could not be read, or a refusal
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    print(ood_summary(result))
    save_ood(result)  # to `path`, the same file named from the absolute run folder
    print(f"\nsaved: {path}")  # as the run folder was given
    if (path.parent.parent / "report.html").is_file():
        print(f"`unseen report {args.run_dir}` adds it to the run's report")
    return 0


def add_ood_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``unseen ood`` on the subcommand table ``sub``."""
    p = sub.add_parser(
        "ood",
        help="score another dataset's images as unseen with a finished run (far-OOD)",
        description="Score the test images of another dataset with a finished run's network "
        "and fitted scores (converted to the run's channels and image size, as `unseen "
        "predict` converts images), as unseen images against the run's own known test images: "
        "the run's metrics for them, at the run's thresholds, and the known classes that "
        "took them. Saved as RUN/ood/<dataset>.json.",
    )
    p.add_argument("run_dir", type=nonempty_path, metavar="RUN", help="a finished run folder")
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="the other dataset: a built-in name (`unseen datasets` lists them), npz:PATH (its "
        "array x_test, x or images) or folder:PATH (the images under PATH/test/, else all "
        "under PATH); no labels or training split needed",
    )
    p.add_argument(
        "--data-root",
        type=nonempty_path,
        default=None,
        metavar="DIR",
        help="where its files are, as `unseen run --data-root` (default: the usual places)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch a built-in dataset that is missing (needs internet), as `unseen run --download`",
    )
    p.add_argument("--head", default=None, help="which head of a multi-head run")
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="N of its test images, drawn at random with a fixed seed (the same N every time)",
    )
    add_model_options(p)
    p.set_defaults(func=cmd_ood)
    return p
