"""Run configuration: one frozen dataclass, resolved as defaults -> TOML file -> flags.

Every field of :class:`RunConfig` is at once a config-file key, a command-line flag
(``--batch-size`` for ``batch_size``) and an entry of the run folder's ``config.json``.
Each field carries its help text, its parser and its validator in ``metadata``, so the
CLI is generated from this file and a value is checked the same way wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnseenError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the arithmetic a network can train and run in (``--precision``, besides ``auto``): bf16 or
#: fp16 autocast (fp32 weights; convolutions and matrix products in 16 bits), or fp32
PRECISIONS = ("bf16", "fp16", "fp32")

# ----------------------------------------------------------------------------- parsers


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false (also on/off, yes/no, 1/0)")


def parse_count_or_all(text: str) -> int | None:
    """A count, or ``all`` (also ``none`` or nothing) for no limit: None."""
    return None if text.strip().lower() in {"all", "none", ""} else int(text)


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated list; empty items are dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _csv_item(text: str) -> str:
    """One item of a comma-separated list as a CSV line writes it: in double quotes (its own
    doubled) when it holds a comma, a quote or a line break."""
    special = any(c in text for c in ',"\r\n')
    return '"' + text.replace('"', '""') + '"' if special else text


def split_csv(text: str) -> list[str]:
    """A comma-separated list read as one CSV line: an item in double quotes may hold commas
    (``'"Bag, leather",3'``); items are stripped and empty ones dropped. ``ValueError`` for
    a quote left open, text after a closing quote, or a line break outside quotes."""
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True))
    except csv.Error as exc:
        raise ValueError(str(exc)) from None
    if len(rows) > 1:  # commas separate items, nothing else
        raise ValueError("a line break between items")
    return [part.strip() for part in (rows[0] if rows else []) if part.strip()]


def parse_classes(text: str) -> tuple[str, ...] | None:
    """``--holdout``/``--known``: comma-separated class indices or names (``auto``, the
    default, is resolved with the dataset's classes: :func:`unseen.splits.make_split`). A
    name that holds a comma is given in double quotes (:func:`split_csv`). An empty list is
    refused rather than read as the default."""
    classes = tuple(split_csv(text))
    if not classes:
        raise ValueError("no class given")
    return classes


def parse_datasets(text: str) -> tuple[str, ...]:
    """``--ood``: dataset names, comma-separated (a path that holds a comma in double quotes,
    as :func:`split_csv` reads it); ``none`` (or nothing) for none."""
    if text.strip().lower() in {"", "none"}:
        return ()
    if not (names := tuple(split_csv(text))):
        raise ValueError("no dataset given")
    return names


def parse_optional_str(text: str) -> str | None:
    """A path or name, or ``none``/``null`` for the default. An empty string is
    refused: it is what an unset shell variable gives (``--out "$DIR"``), and reading it as
    the default would quietly write elsewhere or train without the weights asked for."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    return None if text.lower() in {"none", "null"} else text


def parse_optional_int(text: str) -> int | None:
    text = text.strip()
    return None if text.lower() in {"", "none", "auto"} else int(text)


def parse_optional_float(text: str) -> float | None:
    text = text.strip()
    return None if text.lower() in {"", "none", "auto"} else float(text)


def _parse_rare(text: str) -> tuple[str, ...] | None:
    """``--rare``: CLASS:FRACTION items (see :mod:`unseen.rare`)."""
    from .rare import parse_rare

    return parse_rare(text)


def _finite(v: float | int) -> bool:
    """False for NaN and infinities (Python ints are always finite)."""
    return isinstance(v, int) or math.isfinite(v)


def _positive(v: float | int | None) -> str | None:
    return None if v is None or (v > 0 and _finite(v)) else "must be positive and finite"


#: the largest --input-size: 1024 x 1024 images already take 4 MB each in float32
MAX_INPUT_SIZE = 1024


def _input_size(v: int | None) -> str | None:
    ok = v is None or 1 <= v <= MAX_INPUT_SIZE
    return None if ok else f"must be between 1 and {MAX_INPUT_SIZE} (pixels per side)"


def _bit_depth(v: int) -> str | None:
    return None if 8 <= v <= 16 else "must be between 8 and 16 (bits per pixel)"


def _non_negative(v: float | int) -> str | None:
    return None if v >= 0 and _finite(v) else "must be zero or more, and finite"


#: seeds go to torch, numpy and scikit-learn; the latter accepts 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


def _batch_size(v: int | None) -> str | None:
    # batch norm cannot normalise over one image: training would stop at the first step
    return None if v is None or v >= 2 else "must be at least 2 (batch norm needs two images)"


def _seed_range(v: int) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"must be an integer from 0 to {MAX_SEED}"


def _fraction_open(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else "must be between 0 and 1 (exclusive)"


def _fraction_open_closed(v: float) -> str | None:
    return None if 0.0 < v <= 1.0 else "must be above 0 and at most 1"


def _fraction_closed_open(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be at least 0 and below 1"


def _percent_closed_open(v: float) -> str | None:
    return None if 0.0 <= v < 100.0 else "must be at least 0 and below 100"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of: {', '.join(choices)}"

    return check


def opt(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] = str,
    check: Callable[[Any], str | None] | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    group: str = "run",
    accepts: str | None = None,
) -> Any:
    """A config field: its default plus everything the CLI and the file loader need.

    ``accepts`` says what ``parse`` takes, for the error message when it fails (needed for
    parsers other than int, float, parse_bool and the parse_optional_* functions)."""
    if choices is not None and check is None:
        check = _one_of(*choices)
    return field(
        default=default,
        metadata={
            "help": help,
            "parse": parse,
            "check": check,
            "metavar": metavar,
            "choices": choices,
            "group": group,
            "accepts": accepts,
        },
    )


# ----------------------------------------------------------------------------- config

DEFAULT_SCORES = ("msp", "maxlogit", "energy", "entropy")


def add_scores(current: tuple[str, ...], given: tuple[str, ...]) -> tuple[str, ...]:
    """``--scores`` over the list it replaces: ``given`` itself, or, when it starts with
    ``+`` (``+vim,knn``), ``current`` with the given names added (a name already there
    keeps its place). ``+`` is accepted on every added name, but only a list whose first
    name has it adds."""
    if not any(n.startswith("+") for n in given):
        return given
    if not given[0].startswith("+"):
        raise ConfigError(
            f"--scores {','.join(given)} mixes names with and without '+': start the list "
            "with '+' to add its names to the scores (+vim,knn), or give the whole list."
        )
    added = [name for n in given if (name := n.lstrip("+").strip())]
    if not added:
        raise ConfigError("--scores + names no score to add; give one, e.g. +vim,knn.")
    names = list(dict.fromkeys([*current, *added]))
    if "all" in names:  # the names 'all' takes in go: +all is --scores all (one sweep folder)
        from .scores import SCORES

        names = [
            "all",
            *(n for n in names if n != "all" and not getattr(SCORES.get(n), "in_all", False)),
        ]
    return tuple(names)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run. Field order is the order of ``unseen run --help``."""

    # data and split
    dataset: str = opt(
        "digits",
        "data source: digits, fashion-mnist, mnist, cifar10, cifar100, svhn, folder:PATH or "
        "npz:PATH (see `unseen datasets`)",
        metavar="NAME",
        group="data",
    )
    data_root: str | None = opt(
        None,
        "folder holding the dataset files (none: look in the usual places)",
        parse=parse_optional_str,
        accepts="a folder (or 'none' for the default)",
        metavar="DIR",
        group="data",
    )
    download: bool = opt(
        False,
        "allow torchvision to download cifar10/cifar100/svhn into --data-root, and the ImageNet "
        "weights of --pretrained torchvision into torch's hub cache (needs internet)",
        parse=parse_bool,
        group="data",
    )
    holdout: tuple[str, ...] | None = opt(
        None,
        "classes held out of training, by index or name, comma-separated (e.g. 9 or 'Ankle boot'; "
        "default: the last class, 9 for digits); classes without training images (only the "
        "test set holds any) are held out besides, and by default instead",
        parse=parse_classes,
        accepts="one or more class indices or names, comma-separated (a name holding a comma "
        "in double quotes), or 'auto'",
        metavar="CLASSES",
        group="data",
    )
    known: tuple[str, ...] | None = opt(
        None,
        "the classes to train on instead (the complement of --holdout; give only one of the two)",
        parse=parse_classes,
        accepts="one or more class indices or names, comma-separated (a name holding a comma "
        "in double quotes), or 'auto'",
        metavar="CLASSES",
        group="data",
    )
    val_fraction: float = opt(
        0.1,
        "fraction of known-class training images kept out of training to calibrate thresholds",
        parse=float,
        check=_fraction_open,
        metavar="F",
        group="data",
    )
    train_subset: int | None = opt(
        None,
        "use at most this many training images, drawn (seeded, stratified) over every class "
        "before the held-out classes and the validation slice are taken out: the console "
        "prints the images trained on (for quick runs); 'all' for no limit",
        parse=parse_count_or_all,
        check=_positive,
        metavar="N",
        group="data",
        accepts="an integer or 'all'",
    )
    test_subset: int | None = opt(
        None,
        "use at most this many test images (seeded, stratified; for quick runs); 'all' for "
        "no limit",
        parse=parse_count_or_all,
        check=_positive,
        metavar="N",
        group="data",
        accepts="an integer or 'all'",
    )
    bit_depth: int = opt(
        16,
        "bits used by the raw values of a folder dataset's 16-bit greyscale PNG and TIFF files: "
        "values 0..2^N-1 map to 0..255, those above are clipped (12 for unscaled 12-bit data "
        "such as X-rays; PGM files carry their own maxval, which applies instead; unseen "
        "predict reads new files the same way)",
        parse=int,
        check=_bit_depth,
        metavar="N",
        group="data",
    )

    # model and training
    model: str = opt("resnet20", "network: resnet20 or resnet18", metavar="NAME", group="model")
    stem: str = opt(
        "auto",
        "resnet18 input stem: small (3x3 conv, no max-pool), imagenet, or auto (small up to 64 px)",
        choices=("auto", "small", "imagenet"),
        group="model",
    )
    head: tuple[str, ...] = opt(
        ("softmax",),
        "classification head(s); several comma-separated train one model each",
        parse=parse_list,
        metavar="HEADS",
        group="model",
    )
    epochs: int | None = opt(
        None,
        "training epochs (default: 60 for digits, about 10 s on a 2-core CPU; 15 otherwise, "
        "10-15 minutes for Fashion-MNIST on that CPU, seconds on a GPU)",
        parse=parse_optional_int,
        check=_positive,
        metavar="N",
        group="training",
    )
    batch_size: int | None = opt(
        None,
        "training batch size (default auto: 128 on a CPU, 512 on a GPU)",
        parse=parse_optional_int,
        check=_batch_size,
        metavar="N",
        group="training",
    )
    lr: float | None = opt(
        None,
        "peak learning rate of SGD with Nesterov momentum (default auto: 0.1 x sqrt(batch / "
        "128), the batch at most the training set)",
        parse=parse_optional_float,
        check=_positive,
        metavar="LR",
        group="training",
    )
    momentum: float = opt(
        0.9,
        "SGD momentum (Nesterov); the onecycle schedule cycles it from M+0.05 (at most 0.999) "
        "down to M-0.05 at the peak learning rate and back",
        parse=float,
        check=_fraction_closed_open,
        metavar="M",
        group="training",
    )
    weight_decay: float = opt(
        5e-4, "weight decay", parse=float, check=_non_negative, metavar="WD", group="training"
    )
    schedule: str = opt(
        "onecycle",
        "learning-rate schedule, stepped every batch: onecycle (torch's OneCycleLR: a quarter "
        "warm-up to --lr, then cosine annealing down), cosine (from --lr down to 0, no "
        "warm-up), constant (--lr throughout)",
        choices=("onecycle", "cosine", "constant"),
        group="training",
    )
    label_smoothing: float = opt(
        0.0,
        "label smoothing of the cross-entropy loss",
        parse=float,
        check=_fraction_closed_open,
        metavar="E",
        group="training",
    )
    augment: str = opt(
        "standard",
        "augmentation preset: none, standard (random crop with padding, plus flip where it keeps "
        "the meaning) or strong (standard + one TrivialAugment operation per image + random erasing)",
        metavar="PRESET",
        group="training",
    )
    flip: bool | None = opt(
        None,
        "force horizontal flips on or off: on/off, true/false, yes/no (default: auto, off for "
        "digits, mnist and svhn, on otherwise)",
        parse=lambda s: None if s.strip().lower() in {"", "auto", "none"} else parse_bool(s),
        metavar="BOOL",
        group="training",
        accepts="on, off or auto (or true/false, yes/no, 1/0)",
    )

    # evaluation
    scores: tuple[str, ...] = opt(
        DEFAULT_SCORES,
        "rejection scores to compute, comma-separated, or 'all' (see `unseen scores`); a "
        "list that starts with + adds to the scores (+vim,knn)",
        parse=parse_list,
        metavar="NAMES",
        group="evaluation",
    )
    known_acceptance: float = opt(
        0.95,
        "fraction of known validation images each calibrated threshold accepts (1: all of "
        "them, as `unseen predict --known-acceptance` allows)",
        parse=float,
        check=_fraction_open_closed,
        metavar="F",
        group="evaluation",
    )
    ood: tuple[str, ...] = opt(
        (),
        "other datasets whose test images are scored as unseen once the run is trained "
        "(far-OOD, as `unseen ood` scores them; saved in RUN/ood/), comma-separated: built-in "
        "names (looked for under --data-root), npz:PATH or folder:PATH (no labels or training "
        "split needed); --test-subset scores N of their test images, drawn with a fixed seed",
        parse=parse_datasets,
        accepts="dataset names, comma-separated (or 'none')",
        metavar="NAMES",
        group="evaluation",
    )

    # execution
    seed: int = opt(
        0,
        "random seed (split, initialisation, batches, augmentation)",
        parse=int,
        check=_seed_range,
        metavar="N",
        group="execution",
    )
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"), group="execution")
    precision: str = opt(
        "auto",
        "arithmetic: auto (bf16 autocast on CUDA GPUs and CPUs with native bf16, fp16 with "
        "loss scaling on older GPUs with tensor cores), bf16, fp16 or fp32",
        choices=("auto", *PRECISIONS),
        group="execution",
    )
    out: str | None = opt(
        None,
        "run folder (none: runs/<time>-<dataset>-<holdout>)",
        parse=parse_optional_str,
        accepts="a folder (or 'none' for the default)",
        metavar="DIR",
        group="execution",
    )
    # --- reports
    report: bool = opt(
        True,
        "write report.html and report.md with plots into the run folder (--no-report skips it; "
        "`unseen report RUN` builds it later)",
        parse=parse_bool,
        group="execution",
    )

    # --- one-vs-rest heads
    doc_alpha: float = opt(
        3.0,
        "DOC per-class thresholds of the ovr-doc score: t_k = max(0.5, 1 - alpha * sigma_k), "
        "sigma_k from class k's validation sigmoids mirrored about 1 (one-vs-rest heads)",
        parse=float,
        check=_non_negative,
        metavar="ALPHA",
        group="evaluation",
    )

    # --- augmentation and pretrained weights
    pretrained: str | None = opt(
        None,
        "start from pretrained weights: 'torchvision' (ImageNet-1k ResNet-18, needs --model "
        "resnet18; offline the file must be in torch's hub cache), a run folder or its model.pt, "
        "a .pt/.pth state dict or a .safetensors file; the head is always replaced",
        parse=parse_optional_str,
        accepts="'torchvision', a run folder or a weights file (or 'none')",
        metavar="SOURCE",
        group="model",
    )
    freeze_backbone: bool = opt(
        False,
        "linear probe: train only the head; backbone weights and batch-norm statistics stay fixed",
        parse=parse_bool,
        group="model",
    )
    backbone_lr_scale: float = opt(
        1.0,
        "learning rate of the backbone relative to the head's --lr (e.g. 0.1 when fine-tuning)",
        parse=float,
        check=_positive,
        metavar="F",
        group="model",
    )
    input_size: int | None = opt(
        None,
        "resize images to N x N inside the model, in training, evaluation and prediction "
        "(default auto: 4x up-sampling for ImageNet weights with the ImageNet stem on images of "
        "64 px or less, a run checkpoint's own size, otherwise none)",
        parse=parse_optional_int,
        check=_input_size,
        metavar="N",
        group="model",
    )

    # --- detectors
    knn_k: int = opt(
        50,
        "knn score: distance to the k-th nearest normalised training feature",
        parse=int,
        check=_positive,
        metavar="K",
        group="detectors",
    )
    knn_bank: int | None = opt(
        10000,
        "knn score: at most this many training features in the neighbour bank (seeded random "
        "subset, for speed); 'all' keeps every one",
        parse=parse_count_or_all,
        check=_positive,
        metavar="N",
        group="detectors",
        accepts="an integer or 'all'",
    )
    vim_dim: int | None = opt(
        None,
        "vim score: dimension of the principal subspace (auto: half the feature dimension, "
        "at most 1000, and at most half the rank of the training features; a value at or "
        "above that rank is lowered below it, with a note)",
        parse=parse_optional_int,
        check=_positive,
        metavar="D",
        group="detectors",
    )
    react_percentile: float = opt(
        90.0,
        "react score: clip features at this percentile of the training activations",
        parse=float,
        check=lambda v: None if 0 < v <= 100 else "must be above 0 and at most 100",
        metavar="P",
        group="detectors",
    )
    ash_percentile: float = opt(
        90.0,
        "ash score: zero all but each image's largest (100-P)% of activations (by count: "
        "n - round(n P/100) kept, at least one)",
        parse=float,
        check=_percent_closed_open,
        metavar="P",
        group="detectors",
    )
    ash_variant: str = opt(
        "s",
        "ash score: what happens to the activations kept: s scales them by exp(sum of all / sum "
        "kept), b sets each to the sum of all over the number kept, p leaves them",
        choices=("s", "b", "p"),
        group="detectors",
    )
    scale_percentile: float = opt(
        85.0,
        "scale score: each image's activations times exp(sum of all / sum of its largest "
        "(100-P)%, by count)",
        parse=float,
        check=_percent_closed_open,
        metavar="P",
        group="detectors",
    )
    dice_sparsity: float = opt(
        90.0,
        "dice score: set to zero the head's weights whose contribution (weight times the mean "
        "training activation) is at or below this percentile of all contributions",
        parse=float,
        check=_percent_closed_open,
        metavar="P",
        group="detectors",
    )
    gen_gamma: float = opt(
        0.1,
        "gen score: exponent gamma of the generalized entropy (the paper uses 0 < G < 1)",
        parse=float,
        check=_positive,
        metavar="G",
        group="detectors",
    )
    gen_m: int = opt(
        100,
        "gen score: the generalized entropy sums over this many largest softmax probabilities "
        "(all of them when there are fewer classes)",
        parse=int,
        check=_positive,
        metavar="M",
        group="detectors",
    )
    openmax_tail: int = opt(
        20,
        "openmax score: Weibull fit on this many largest distances to each class mean",
        parse=int,
        check=lambda v: None if v >= 2 else "must be at least 2",
        metavar="N",
        group="detectors",
    )
    openmax_alpha: int = opt(
        3,
        "openmax score: number of top logits revised",
        parse=int,
        check=_positive,
        metavar="N",
        group="detectors",
    )
    odin_temperature: float = opt(
        1000.0,
        "odin score: softmax temperature",
        parse=float,
        check=_positive,
        metavar="T",
        group="detectors",
    )
    odin_epsilon: float = opt(
        0.0014,
        "odin score: input perturbation size, in [0, 1] pixel units",
        parse=float,
        check=lambda v: (
            None if 0 <= v <= 1 else "must be from 0 to 1 (pixel units of [0, 1] images)"
        ),
        metavar="EPS",
        group="detectors",
    )

    # --- protocols / rare classes
    rare: tuple[str, ...] | None = opt(
        None,
        "train on only FRACTION of a class's training images, CLASS:FRACTION, comma-separated "
        "for several (e.g. 'Ankle boot:0.01'); fraction 0 leaves the class out (unseen); with "
        "--rare and no --holdout/--known no other class is held out",
        parse=_parse_rare,
        metavar="CLASS:F",
        group="data",
    )
    balance: str = opt(
        "none",
        "counter class imbalance in training: none, weighted-loss (class weights n/(K*n_c)) or "
        "sampler (draw images with probability 1/n_c, with replacement)",
        choices=("none", "weighted-loss", "sampler"),
        group="training",
    )

    # --- robustness, resume
    resume: bool = opt(
        False,
        "continue the unfinished run in --out from its last checkpoint (the other options must "
        "match the run's config.json); a finished run is left as it is",
        parse=parse_bool,
        group="execution",
    )
    overwrite: bool = opt(
        False,
        "start again in an --out folder that already holds a run (finished or not)",
        parse=parse_bool,
        group="execution",
    )
    checkpoint_every: float = opt(
        30.0,
        "seconds (wall clock) between checkpoints: one is saved after the first epoch that ends "
        "that long after the last one, and after the last epoch (0: after every epoch); Ctrl-C "
        "and SIGTERM always save one",
        parse=float,
        check=_non_negative,
        metavar="SECONDS",
        group="execution",
    )

    # --- speed
    compile: bool = opt(
        False,
        "compile the network with torch.compile for training (pays on long GPU runs; the first "
        "epoch then includes the compile time; with --cuda-graphs the compiled network is "
        "captured)",
        parse=parse_bool,
        group="execution",
    )
    cudnn_benchmark: bool = opt(
        False,
        "let cuDNN time its kernels for every new shape and keep the fastest (on a GPU: costs "
        "seconds at the start, for long runs; off: cuDNN's heuristics choose)",
        parse=parse_bool,
        group="execution",
    )
    cuda_graphs: str = opt(
        "auto",
        "replay each training step as one CUDA graph (auto: on for CUDA devices unless "
        "--balance weighted-loss; off: eager steps, as on a CPU)",
        choices=("auto", "on", "off"),
        group="execution",
    )

    def __post_init__(self) -> None:
        # Python callers bypass the command line's parsers. Give every field its declared
        # type here (a list becomes a tuple; "8,9" or 9 a tuple of class names; "5" an int)
        # and refuse a value of the wrong type or range in one sentence, now rather than deep
        # inside a run. Cross-field checks and registry names are left to :func:`validate`.
        for f in fields(self):
            value = getattr(self, f.name)
            typed = _typed(f, value)
            if typed is not value:
                object.__setattr__(self, f.name, typed)
            check = f.metadata["check"]
            if check is not None and typed is not None and (problem := check(typed)):
                raise ConfigError(f"{_keyword(f.name)} {problem} (got {value!r}).")
        # scores="+vim" adds to the default list (replace() adds to the config's own)
        object.__setattr__(self, "scores", add_scores(DEFAULT_SCORES, self.scores))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config from ``to_dict``'s output or any mapping of field names (lists allowed);
        an unknown key is an error."""
        unknown = [k for k in values if k not in FIELDS]
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; valid options: {', '.join(FIELDS)}.")
        return cls(**values)

    @classmethod
    def from_run(cls, run: str | os.PathLike[str]) -> RunConfig:
        """The options recorded in a run folder's ``config.json`` (or that file's path), with
        each ``auto`` setting as the run resolved it (epochs, batch size, learning rate...)
        and without the run's own folder (``out``, ``resume`` and ``overwrite`` at their
        defaults, and ``cuda_graphs`` back at ``auto`` where the run's GPU turned it on):
        ``run_experiment(RunConfig.from_run(run).replace(seed=1))`` repeats a run with
        another seed. The split, augmentation and weights the run resolved stay in
        config.json."""
        from .runfolder import read_config_json

        path = Path(run)
        record = read_config_json(path / "config.json" if path.is_dir() else path)
        own = {"out", "resume", "overwrite"}  # the run's own folder
        if record.get("cuda_graphs") == "on":  # resolved on a GPU; 'off' works anywhere
            own.add("cuda_graphs")
        try:
            return cls.from_dict({k: v for k, v in record.items() if k in FIELDS and k not in own})
        except ConfigError as exc:  # a hand-edited file, or one of another version
            raise ConfigError(f"{path} records a value this version refuses: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``; ``scores="+vim"`` adds to this config's scores."""
        if "scores" in changes:
            changes["scores"] = add_scores(self.scores, typed_value("scores", changes["scores"]))
        return dataclasses.replace(self, **changes)


def with_field_defaults(
    record: Mapping[str, Any], only: Iterable[str] | None = None
) -> dict[str, Any]:
    """A recorded config (config.json, a checkpoint's) with the options it lacks (of
    ``only``, when given) at their defaults: a run of an earlier version, which had no such
    option, ran as its default does, so resuming it or grouping it with newer runs must not
    see a difference there. (Every option added since came with the default that keeps the
    earlier results; ``cudnn_benchmark``, ``cuda_graphs`` and ``checkpoint_every`` changed
    only speed or checkpointing, and no comparison looks at them.)"""
    defaults = RunConfig().to_dict()
    wanted = defaults.keys() if only is None else [k for k in only if k in defaults]
    return {**{k: defaults[k] for k in wanted if k not in record}, **record}


def typed_value(name: str, value: Any) -> Any:
    """``value`` as the type of the RunConfig field ``name`` (as a RunConfig built with it
    would hold it), or a ConfigError saying what the field takes."""
    return _typed(FIELDS[name], value)


def _typed(f: dataclasses.Field, value: Any) -> Any:
    """``value`` as field ``f``'s declared type, or a ConfigError naming what it takes.
    Returns ``value`` itself when it already has that type."""
    kind, flag = str(f.type), _keyword(f.name)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{flag} cannot be None (its default is {f.default!r}).")
    if isinstance(value, str) and (not kind.startswith("str") or "None" in kind):
        return parse_value(f.name, value, source="python")  # as on the command line
    if kind.startswith("tuple"):
        if type(value).__module__ == "numpy":  # an array of class indices
            value = value.tolist()
        items = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(v, bool) or not isinstance(v, (str, numbers.Integral)) for v in items):
            raise ConfigError(f"{flag} must be a list of names or indices (got {value!r}).")
        typed = tuple(v if isinstance(v, str) else str(int(v)) for v in items)
        return value if typed == value and isinstance(value, tuple) else typed
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
            return bool(value)
        raise ConfigError(f"{flag} must be True or False (got {value!r}).")
    if kind.startswith("int"):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value if type(value) is int else int(value)
        raise ConfigError(f"{flag} must be an integer (got {value!r}).")
    if kind.startswith("float"):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value if type(value) is float else float(value)
        raise ConfigError(f"{flag} must be a number (got {value!r}).")
    if isinstance(value, os.PathLike) and f.name in ("data_root", "out", "pretrained"):
        return os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"{flag} must be a string (got {value!r}).")
    return value


# ----------------------------------------------------------------------------- resolving

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(RunConfig)}

#: options that change where a run is written or how fast it runs, never what it computes:
#: ``--resume`` accepts a difference in them, and comparisons group runs across them
RESULT_NEUTRAL_KEYS = (
    "out", "report", "resume", "overwrite", "data_root", "download", "cuda_graphs",
    "cudnn_benchmark", "checkpoint_every", "ood",
)  # fmt: skip


#: options that only say how scores are fitted and thresholded after training: ``unseen
#: rescore`` changes them on a finished run without training it again
SCORE_OPTIONS = (
    "scores", "known_acceptance", "doc_alpha", "knn_k", "knn_bank", "vim_dim",
    "react_percentile", "ash_percentile", "ash_variant", "scale_percentile", "dice_sparsity",
    "gen_gamma", "gen_m", "openmax_tail", "openmax_alpha", "odin_temperature", "odin_epsilon",
)  # fmt: skip


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _keyword(name: str) -> str:
    """A field as a Python caller of RunConfig and a command-line user both recognise it."""
    return f"{name} ({flag_name(name)})"


def parse_value(name: str, raw: Any, *, source: str = "flag") -> Any:
    """Convert one raw value (flag text or TOML value) for field ``name`` and check it.

    Raises :class:`ConfigError` naming the option and what it accepts.
    """
    f = FIELDS[name]
    where = {"flag": flag_name(name), "python": _keyword(name)}.get(source, f"'{name}' in {source}")
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, (list, tuple)):
        # a class name holding a comma is quoted, as --holdout takes it
        quoted = (parse_classes, _parse_rare, parse_datasets)
        item = _csv_item if f.metadata["parse"] in quoted else str
        text = ",".join(item(str(x)) for x in raw)
    elif isinstance(raw, (str, int, float)):
        text = str(raw)
    else:
        raise ConfigError(f"{where} got a {type(raw).__name__}; expected a string, number or list.")
    parser = f.metadata["parse"]
    try:
        value = parser(text)
    except UnseenError:  # the parser's own sentence (a ConfigError is a ValueError too)
        raise
    except (ValueError, TypeError):
        kind = {int: "an integer", float: "a number", parse_bool: "true or false"}.get(parser)
        if kind is None:
            kind = (
                getattr(parser, "__name__", "a value")
                .replace("parse_optional_", "")
                .replace("parse_", "")
            )
            kind = {"int": "an integer or 'auto'", "float": "a number or 'auto'"}.get(
                kind, "a valid value"
            )
        kind = f.metadata.get("accepts") or kind
        raise ConfigError(f"{where} must be {kind}, not {text!r}.") from None
    check = f.metadata["check"]
    problem = check(value) if check is not None and value is not None else None
    if problem:
        raise ConfigError(f"{where} {problem} (got {text!r}).")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; keys may use - or _. Unknown keys are an error."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a TOML file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}).") from None
    items = list(data.items())
    if "run" in data and isinstance(data["run"], dict):  # allow a [run] table
        items = [(k, v) for k, v in items if k != "run"] + list(data["run"].items())
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # setting -> the key that gave it
    for key, raw in items:
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"config file {path} has {_unknown_key(key, name)}.")
        if name in given:  # 'train-subset' and 'train_subset', or a key also in [run]
            raise ConfigError(
                f"config file {path} sets {name} twice ('{given[name]}' and '{key}'); keep one."
            )
        given[name] = key
        out[name] = parse_value(name, raw, source=str(path))
    return out


#: options of the command line only: a config file holds run options
COMMAND_LINE_ONLY: dict[str, tuple[str, ...]] = {
    "config": ("run", "sweep"), "quiet": ("run", "sweep")
} | {
    k: ("sweep",)
    for k in (
        "protocol", "seeds", "splits", "fractions", "compare_balance", "jobs", "dry_run",
        "summary_only",
    )
}  # fmt: skip


def _unknown_key(key: str, name: str) -> str:
    """What a config file's unknown key is: a command-line-only option, or a typo."""
    if name in COMMAND_LINE_ONLY:
        return (
            f"the key '{key}', a command-line option only (pass {flag_name(name)} to "
            f"{' or '.join(f'`unseen {c}`' for c in COMMAND_LINE_ONLY[name])}); a config file "
            "holds run options"
        )
    import difflib

    if close := difflib.get_close_matches(name, list(FIELDS), n=1):
        return f"an unknown key '{key}' (did you mean '{close[0]}'?)"
    return f"an unknown key '{key}'; valid keys: {', '.join(FIELDS)}"


def is_auto(tokens: Sequence[str] | None) -> bool:
    """Whether class tokens are the lone word ``auto``: the default ``--help`` shows for
    ``--holdout``/``--known``, which :func:`unseen.splits.resolve_auto` reads as not given
    once the dataset's classes are known (unless one is named ``auto``)."""
    return tokens is not None and [t.strip().lower() for t in tokens] == ["auto"]


def _gives_classes(tokens: tuple[str, ...] | None) -> bool:
    """Whether ``--holdout``/``--known`` names classes: not when absent or ``auto``."""
    return tokens is not None and not is_auto(tokens)


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    base: RunConfig | None = None,
    check: bool = True,
) -> RunConfig:
    """Defaults (or ``base``), then the TOML file, then ``overrides`` (already parsed values);
    checked by :func:`validate` unless ``check`` is false.

    ``holdout`` and ``known`` are one setting given two ways: a layer that gives one of them
    clears the other from the layers below (``--known`` on the command line wins over a
    file's ``holdout``). Only a layer that gives both is refused.
    """
    values: dict[str, Any] = {}
    layers = [load_toml(config_file)] if config_file is not None else []
    for name in overrides or {}:
        if name not in FIELDS:
            raise ConfigError(f"unknown option '{name}'.")
    layers.append(dict(overrides or {}))
    base = base or RunConfig()
    for layer in layers:
        given = [k for k in ("holdout", "known") if _gives_classes(layer.get(k))]
        if len(given) == 1:
            values["known" if given[0] == "holdout" else "holdout"] = None
        if "scores" in layer:  # '+vim' adds to the layers below
            below = values.get("scores", base.scores)
            layer = {**layer, "scores": add_scores(below, typed_value("scores", layer["scores"]))}
        values.update(layer)
    cfg = base.replace(**values)
    if check:
        validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks and registry names, all before any work starts."""
    from .augment import AUGMENTATIONS
    from .data import check_dataset_name
    from .heads import HEADS
    from .models import check_model
    from .scores import check_score_names

    # each field's type and range were checked when cfg was built (RunConfig.__post_init__)
    if _gives_classes(cfg.known) and _gives_classes(cfg.holdout):
        raise ConfigError("give --holdout or --known, not both.")
    _check_run_folder_options(cfg)
    check_dataset_name(cfg.dataset)
    _check_ood(cfg)
    check_model(cfg.model)
    if not cfg.head:
        raise ConfigError(f"--head needs at least one head; choose from: {', '.join(HEADS)}.")
    for head in cfg.head:
        if head not in HEADS:
            raise ConfigError(f"--head {head!r} is not known; choose from: {', '.join(HEADS)}.")
    if len(set(cfg.head)) != len(cfg.head):
        raise ConfigError("--head lists the same head twice.")
    if cfg.augment not in AUGMENTATIONS:
        raise ConfigError(
            f"--augment {cfg.augment!r} is not known; choose one of: {', '.join(AUGMENTATIONS)}."
        )
    if cfg.augment == "none" and cfg.flip:
        raise ConfigError("--flip on has no effect with --augment none; use --augment standard.")
    check_score_names(cfg.scores)
    if cfg.knn_bank is not None and cfg.knn_k > cfg.knn_bank:  # detectors
        raise ConfigError(
            f"--knn-k {cfg.knn_k} is larger than --knn-bank {cfg.knn_bank}; lower k or enlarge the bank."
        )
    _check_pretrained(cfg)
    if ovr_only := scores_without_their_head(cfg):
        raise ConfigError(
            f"--scores {','.join(ovr_only)} needs a one-vs-rest head; add --head ovr "
            "(or ovr-separate), e.g. --head softmax,ovr."
        )


def scores_without_their_head(cfg: RunConfig) -> list[str]:
    """The scores for sigmoid logits that ``cfg`` names explicitly although none of its
    heads is one-vs-rest (``all`` takes them in only where there is one)."""
    from .heads import HEADS
    from .scores import SCORES

    ovr_only = [n for n in cfg.scores if n in SCORES and SCORES[n].one_vs_rest_only]
    return [] if any(HEADS[h].one_vs_rest for h in cfg.head) else ovr_only


def _check_ood(cfg: RunConfig) -> None:
    """``--ood`` names known data sources, each once, none of them the run's own dataset
    (whose held-out classes are the run's unseen images already)."""
    from .data import absolute_dataset, check_dataset_name

    seen: set[str] = set()
    for name in cfg.ood:
        check_dataset_name(name, "--ood")
        where = absolute_dataset(name)
        if where == absolute_dataset(cfg.dataset):
            raise ConfigError(
                f"--ood {name} is the run's own dataset: its held-out classes are the run's "
                "unseen images already; give another dataset."
            )
        if where in seen:
            raise ConfigError(f"--ood lists {name} twice.")
        seen.add(where)


def _check_run_folder_options(cfg: RunConfig) -> None:
    """``--resume`` and ``--overwrite`` need a run folder and exclude each other."""
    if cfg.resume and cfg.overwrite:
        raise ConfigError("give --resume or --overwrite, not both.")
    if cfg.resume and not cfg.out:
        raise ConfigError("--resume needs --out DIR, the run folder to continue.")
    if cfg.out is not None:
        if "\x00" in cfg.out:
            raise ConfigError("--out must be a folder path, not text with a NUL character.")
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise ConfigError(f"--out {cfg.out} is a file, not a folder.")


def _check_pretrained(cfg: RunConfig) -> None:
    """--pretrained torchvision has weights for resnet18 only (files are checked when loaded)."""
    is_torchvision = cfg.pretrained is not None and cfg.pretrained.lower() == "torchvision"
    if is_torchvision and cfg.model != "resnet18":
        raise ConfigError(
            f"--pretrained torchvision has ImageNet weights for --model resnet18 only "
            f"(got --model {cfg.model}); add --model resnet18."
        )
