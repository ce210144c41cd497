"""The ``unseen predict`` subcommand: argparse wiring only (the work is in :mod:`unseen.predict`).

Kept apart from :mod:`unseen.predict` so that building the CLI parser imports no torch.
"""

from __future__ import annotations

import argparse

from .cli import CLOSED_STREAMS, nonempty_path
from .config import FIELDS
from .errors import UnseenError


def _number(text: str, kind: type = float) -> float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None


def _known_acceptance(text: str) -> float:
    """As ``unseen run --known-acceptance`` checks it (above 0, at most 1)."""
    value = _number(text)
    if problem := FIELDS["known_acceptance"].metadata["check"](value):
        raise argparse.ArgumentTypeError(f"{problem}, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _finite(text: str) -> float:
    import math

    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import run_predict

    if "stdout" in CLOSED_STREAMS and args.output is None:
        raise UnseenError("standard output is closed: give --output FILE for the predictions.")

    return run_predict(
        args.run_dir,
        args.inputs,
        head=args.head,
        score=args.score,
        threshold=args.threshold,
        known_acceptance=args.known_acceptance,
        fmt=args.format,
        output=args.output,
        device=args.device,
        batch_size=args.batch_size,
    )


def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``unseen predict`` on the subcommand table ``sub``."""
    p = sub.add_parser(
        "predict",
        help="label new images with a trained run's known classes or 'unknown'",
        description="Label images with a finished run's known classes, or 'unknown' when the "
        "rejection score is below the threshold (score >= threshold = known). The threshold "
        "defaults to the run's own calibration on its known validation images. One row per "
        "image; a file that cannot be read gets its own row with an error, and the exit code "
        "is 2 only when no input could be read.",
    )
    p.add_argument(
        "run_dir",
        type=nonempty_path,
        metavar="RUN",
        help="a finished run folder (or RUN/<head>/)",
    )
    p.add_argument(
        "inputs",
        type=nonempty_path,
        metavar="INPUT",
        nargs="+",
        help="image files, folders of images (searched recursively) or .npz files with an "
        "array x, images or x_test (N x H x W, N x H x W x C or N x C x H x W)",
    )
    p.add_argument(
        "--score",
        metavar="NAME",
        default=None,
        help="rejection score of the run to use [default: energy if the run computed it, "
        "else the run's first score]",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--threshold",
        type=_finite,
        metavar="T",
        default=None,
        help="accept as known when score >= T (overrides the calibration)",
    )
    how.add_argument(
        "--known-acceptance",
        type=_known_acceptance,
        metavar="F",
        default=None,
        help="recalibrate the threshold to accept this fraction of the run's known validation "
        "images [default: the run's own --known-acceptance]",
    )
    p.add_argument(
        "--head", metavar="NAME", default=None, help="which head's model, for multi-head runs"
    )
    p.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default=None,
        help="output format [default: from the --output suffix (.csv, .json), else table]",
    )
    p.add_argument(
        "--output",
        type=nonempty_path,
        metavar="FILE",
        default=None,
        help="write there instead of stdout",
    )
    add_model_options(p)
    p.set_defaults(func=cmd_predict)
    return p


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--batch-size``: where a run's restored model runs, and how many
    images it takes per forward pass (``unseen predict`` and ``unseen ood``)."""
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run the model (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        default=256,
        help="images per forward pass (default: %(default)s)",
    )
