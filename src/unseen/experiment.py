"""The held-out-class experiment, end to end, as one library call.

``run_experiment(config)`` follows the data flow of the whole tool:

    data source -> split (known / unseen / validation) -> model -> train
    -> one forward pass -> scores -> metrics -> run folder

and returns the metrics with the path of the run folder. The CLI's ``unseen run`` is a
thin layer over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .augment import make_augment_spec
from .config import RunConfig, validate
from .data import ImageData, load_dataset
from .evaluate import forward_pass
from .hardware import configure_threads, describe_device, resolve_device, resolve_precision
from .heads import HEADS
from .metrics import confidence_summary, predicted_as, score_metrics
from .models import Classifier, create_model
from .runfolder import (
    FORMAT_VERSION,
    default_run_dir,
    mark_finished,
    save_torch,
    write_csv,
    write_json,
    write_npz,
)
from .scores import FitContext, Outputs, Score, create_score, expand_score_names, max_softmax
from .splits import Split, SplitData, make_split, split_data
from .train import TrainResult, TrainSettings, train_model

#: epochs when --epochs is not given: the default digits run fits a minute on 2 CPU cores
DEFAULT_EPOCHS = {"digits": 60}
FALLBACK_EPOCHS = 10


def default_epochs(dataset: str) -> int:
    return DEFAULT_EPOCHS.get(dataset, FALLBACK_EPOCHS)


@dataclass
class RunResult:
    run_dir: Path
    config: RunConfig
    metrics: dict


@dataclass
class Prepared:
    """Everything a run needs before training: resolved config, data, split, device."""

    config: RunConfig
    data: ImageData
    split: Split
    split_data: SplitData
    device: torch.device
    precision: str


def prepare(cfg: RunConfig) -> Prepared:
    """Validate, load the data, split it, pick the device; resolve every 'auto' setting."""
    validate(cfg)
    configure_threads()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    split = make_split(data.classes, cfg.holdout, cfg.known)
    sd = split_data(
        data,
        split,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
    )
    cfg = cfg.replace(
        epochs=cfg.epochs or default_epochs(cfg.dataset),
        holdout=tuple(split.unseen_names) if cfg.known is None else None,
        flip=make_augment_spec(cfg.augment, data.image_size[0], data.flip_ok, cfg.flip).flip,
    )
    return Prepared(cfg, data, split, sd, device, precision)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    xf = x.float().div_(255)
    return xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3))


def build_model(p: Prepared, head: str) -> Classifier:
    torch.manual_seed(p.config.seed)
    h, _ = p.data.image_size
    model = create_model(p.config.model, p.data.channels, p.split.num_known, h, p.config.stem)
    model.set_normalization(*channel_stats(p.split_data.x_train))
    return model


def fit_scores(
    names: list[str], model: Classifier, p: Prepared, val: Outputs, head: str
) -> dict[str, Score]:
    """Fit every score on known-class data only: the validation slice, and training images if asked."""
    scores = {name: create_score(name) for name in names}
    train = None
    if any(s.needs_train for s in scores.values()):
        sd = p.split_data
        train = forward_pass(model, sd.x_train, p.device, p.precision, labels=sd.y_train)
    ctx = FitContext(
        train, val, model.head.weight.detach().float(), model.head.bias.detach().float(), head
    )
    return {name: s.fit(ctx) for name, s in scores.items()}


def build_metrics(
    p: Prepared,
    test: Outputs,
    test_scores: dict[str, np.ndarray],
    val_scores: dict[str, np.ndarray],
) -> dict:
    sd, split = p.split_data, p.split
    labels = sd.y_test.numpy()
    predicted = test.logits.argmax(1).cpu().numpy()
    is_unseen = labels < 0
    msp = max_softmax(test.logits).cpu().numpy()
    names = split.known_names
    return {
        "closed_set_accuracy": float(np.mean(predicted[~is_unseen] == labels[~is_unseen])),
        "all_test_accuracy": float(np.mean(predicted == labels)),
        "known_classes": names,
        "unseen_classes": split.unseen_names,
        "num_test_known": int((~is_unseen).sum()),
        "num_test_unseen": int(is_unseen.sum()),
        "known_confidence": confidence_summary(msp[~is_unseen]),
        "unseen_confidence": confidence_summary(msp[is_unseen]),
        "unseen_predicted_as": predicted_as(predicted[is_unseen], names),
        "scores": {
            name: score_metrics(
                test_scores[name],
                val_scores[name],
                predicted,
                labels,
                split.num_known,
                p.config.known_acceptance,
            )
            for name in test_scores
        },
    }


def run_head(p: Prepared, head: str, run_dir: Path, progress: bool = True) -> dict:
    """Train one model with ``head``, score the test set, write the run folder; return metrics."""
    cfg, sd = p.config, p.split_data
    model = build_model(p, head)
    spec = make_augment_spec(cfg.augment, p.data.image_size[0], p.data.flip_ok, cfg.flip)
    settings = TrainSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        label_smoothing=cfg.label_smoothing,
        seed=cfg.seed,
    )
    trained: TrainResult = train_model(
        model, sd.x_train, sd.y_train, settings, HEADS[head], spec, p.device, p.precision,
        x_val=sd.x_val, y_val=sd.y_val, progress=progress,
    )  # fmt: skip

    start = time.perf_counter()
    test = forward_pass(model, sd.x_test, p.device, p.precision, labels=sd.y_test)
    val = forward_pass(model, sd.x_val, p.device, p.precision, labels=sd.y_val)
    names = expand_score_names(cfg.scores)
    fitted = fit_scores(names, model, p, val, head)
    test_scores = {n: s.score(test).float().cpu().numpy() for n, s in fitted.items()}
    val_scores = {n: s.score(val).float().cpu().numpy() for n, s in fitted.items()}
    eval_seconds = time.perf_counter() - start

    metrics = build_metrics(p, test, test_scores, val_scores)
    metrics.update(
        head=head,
        model=cfg.model,
        dataset=cfg.dataset,
        epochs=cfg.epochs,
        train_seconds=trained.seconds,
        train_images_per_second=trained.images_per_second,
        eval_seconds=eval_seconds,
        device=describe_device(p.device),
        precision=p.precision,
        final_val_accuracy=trained.history[-1]["val_accuracy"] if trained.history else None,
    )
    write_run_files(
        run_dir, p, head, model, trained, test, test_scores, val_scores, fitted, metrics
    )
    return metrics


def write_run_files(
    run_dir, p, head, model, trained, test, test_scores, val_scores, fitted, metrics
) -> None:
    sd = p.split_data
    write_csv(run_dir / "history.csv", trained.history)
    arrays = {
        "label": sd.y_test_original.numpy(),
        "label_known": sd.y_test.numpy(),
        "is_unseen": sd.test_is_unseen.numpy(),
        "predicted": test.logits.argmax(1).cpu().numpy(),
        "val_label": sd.y_val.numpy(),
    }
    arrays.update({f"score_{n}": v for n, v in test_scores.items()})
    arrays.update({f"val_score_{n}": v for n, v in val_scores.items()})
    write_npz(run_dir / "scores.npz", **arrays)
    save_torch(run_dir / "model.pt", checkpoint_payload(p, head, model))
    save_torch(run_dir / "detectors.pt", {n: _to_cpu(s.fitted_state()) for n, s in fitted.items()})
    write_json(run_dir / "metrics.json", metrics)


def checkpoint_payload(p: Prepared, head: str, model: Classifier) -> dict:
    """What model.pt holds: weights plus everything needed to rebuild and use them."""
    return {
        "format_version": FORMAT_VERSION,
        "unseen_version": __version__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": p.config.to_dict(),
        "head": head,
        "model": p.config.model,
        "in_channels": p.data.channels,
        "image_size": list(p.data.image_size),
        "num_classes": p.split.num_known,
        "split": p.split.to_dict(),
    }


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def run_experiment(
    cfg: RunConfig, progress: bool = True, log: Callable[[str], None] | None = print
) -> RunResult:
    """Run the whole experiment for ``cfg`` and return its metrics and run folder."""
    say = log or (lambda _msg: None)
    p = prepare(cfg)
    cfg = p.config
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.dataset, p.split.unseen_names)
    sd = p.split_data
    say(
        f"{cfg.dataset}: {len(sd.x_train)} training, {len(sd.x_val)} validation, {len(sd.x_test)} test images "
        f"({int(sd.test_is_unseen.sum())} of unseen classes) from {p.data.source}"
    )
    say(
        f"known: {', '.join(p.split.known_names)} | unseen: {', '.join(p.split.unseen_names) or '-'}"
    )
    say(
        f"{cfg.model}, {cfg.epochs} epochs on {describe_device(p.device)}, {p.precision}; run folder {run_dir}"
    )
    write_json(run_dir / "config.json", {**cfg.to_dict(), "split": p.split.to_dict()})
    per_head = {}
    for head in cfg.head:
        head_dir = run_dir if len(cfg.head) == 1 else run_dir / head
        per_head[head] = run_head(p, head, head_dir, progress)
    metrics = per_head[cfg.head[0]] if len(cfg.head) == 1 else {"heads": per_head}
    if len(cfg.head) > 1:
        write_json(run_dir / "metrics.json", metrics)
    mark_finished(run_dir, heads=list(cfg.head))
    return RunResult(run_dir, cfg, metrics)
