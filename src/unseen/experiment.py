"""The held-out-class experiment, end to end, as one library call.

``run_experiment(config)`` follows the data flow of the whole tool:

    data source -> split (known / unseen / validation) -> model -> train
    -> one forward pass -> scores -> metrics -> run folder

and returns the metrics with the path of the run folder. The CLI's ``unseen run`` is a
thin layer over it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .augment import make_augment_spec
from .checkpoint import (
    CHECKPOINT_FILE,
    Checkpointing,
    catch_signals,
    check_run_folder,
    check_same_config,
    clear_run_state,
    data_fingerprint,
    resumed_precision,
    sigterm_raises,
    to_cpu,
)
from .config import RunConfig, validate
from .console import counted, printable_names, warn
from .data import ImageData, absolute_dataset, absolute_paths, load_dataset
from .detectors import check_vim_dim, knn_k_note
from .errors import ConfigError, DataError, Interrupted
from .evaluate import check_finite, forward_pass
from .farood import locate_ood, missing_ood, score_run_ood
from .hardware import (
    configure_threads,
    describe_device,
    precision_warning,
    resolve_device,
    resolve_precision,
    sync,
)
from .heads import HEADS, confidence
from .metrics import confidence_summary, open_set_metrics, predicted_as, score_metrics
from .models import HAS_STEMS, Classifier, fold_batch_norm, resolve_stem
from .ovr import build_model_for_head, train_separate
from .preload import importing, modules_to_preload
from .pretrained import (
    LoadReport,
    PretrainedSource,
    apply_pretrained,
    leakage_warning,
    lineage,
    resolve_model_settings,
    resolve_pretrained,
)
from .rare import rare_metrics, resolve_rare
from .runfolder import (
    FORMAT_VERSION,
    default_run_dir,
    is_finished,
    mark_finished,
    read_json,
    save_torch,
    write_csv,
    write_json,
    write_npz,
)
from .scores import (
    FitContext,
    Outputs,
    Score,
    create_score,
    expand_score_names,
    scores_for_head,
    unused_options_notes,
    unused_score_options,
)
from .splits import Split, SplitData, make_split, resolve_auto, split_data
from .train import TrainResult, TrainSettings, default_lr, train_model, use_cuda_graphs

#: epochs when --epochs is not given: the default digits run fits a minute on 2 CPU cores
DEFAULT_EPOCHS = {"digits": 60}
FALLBACK_EPOCHS = 15


def default_epochs(dataset: str) -> int:
    return DEFAULT_EPOCHS.get(dataset, FALLBACK_EPOCHS)


def default_batch_size(device: torch.device) -> int:
    """128 on a CPU; 512 on a GPU, where small batches leave the chip idle."""
    return 512 if device.type == "cuda" else 128


@dataclass
class RunResult:
    run_dir: Path
    config: RunConfig
    metrics: dict
    #: wall-clock seconds by stage (see :func:`wall_clock`); empty for a run found finished
    seconds: dict[str, float] = field(default_factory=dict)
    #: why a (head, dataset) pair of ``--ood`` could not be scored (the run is finished)
    ood_errors: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything a run needs before training: resolved config, data, split, device."""

    config: RunConfig
    data: ImageData
    split: Split
    split_data: SplitData
    device: torch.device
    precision: str
    #: ``--rare`` classes as (original index, fraction)
    rare: list[tuple[int, float]] = field(default_factory=list)
    #: ``--pretrained`` weights as loaded, and how they fitted the network
    pretrained: PretrainedSource | None = None
    #: per head (``build_model`` fills it): how the weights fitted that head's network
    load_reports: dict[str, LoadReport] = field(default_factory=dict)

    @functools.cached_property
    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images (in [0, 1] units): the model's
        input normalisation, computed once for every head."""
        return channel_stats(self.split_data.x_train)

    @functools.cached_property
    def data_fingerprint(self) -> dict:
        """The training and validation images' fingerprint, which ``--resume`` and
        ``unseen rescore`` check the data against (:func:`unseen.checkpoint.data_fingerprint`)."""
        sd = self.split_data
        return data_fingerprint(sd.x_train, sd.y_train, sd.x_val, sd.y_val)


def half_if_it_fits(x: np.ndarray) -> np.ndarray:
    """``x`` as float16 (half the file) when every value fits its range, else float32."""
    finite = x[np.isfinite(x)]
    fits = finite.size == 0 or float(np.abs(finite).max()) <= float(np.finfo(np.float16).max)
    return x.astype(np.float16 if fits else np.float32)


#: images larger than this (px, after --input-size) make a full-resolution network slow on a CPU
LARGE_ON_CPU = 64


def run_stem(cfg: RunConfig, image_size: tuple[int, int]) -> str:
    """The input stem ``--stem`` gives on images of ``image_size`` (after ``--input-size``)."""
    return resolve_stem(cfg.stem, cfg.input_size or image_size[0])


def prepare(cfg: RunConfig, precision: str | None = None) -> Prepared:
    """Validate, load the data, split it, pick the device; resolve every 'auto' setting
    (``precision`` replaces what ``--precision auto`` resolves to: a resume's arithmetic)."""
    validate(cfg)
    # config.json records absolute paths, so that --resume works from any working directory
    paths = absolute_paths(cfg.to_dict())
    cfg = cfg.replace(**{k: paths[k] for k in ("dataset", "data_root", "pretrained", "ood")})
    # pretrained weights first: a missing file fails in a second, before any data is read
    pretrained = resolve_pretrained(cfg.pretrained, cfg.download) if cfg.pretrained else None
    locate_ood(cfg.ood, cfg.data_root, cfg.download)  # --ood files: now, not after training
    configure_threads()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision if precision is None else precision, device)
    graphs = use_cuda_graphs(cfg.cuda_graphs, device, cfg.balance)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, bit_depth=cfg.bit_depth)
    rare = resolve_rare(cfg.rare, data.classes)
    holdout, known = resolve_auto(data.classes, cfg.holdout, cfg.known)  # config.json: resolved
    cfg = cfg.replace(holdout=holdout, known=known)
    split = make_split(data.classes, cfg.holdout, cfg.known, rare=rare, untrained=data.untrained)
    sd = split_data(
        data,
        split,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        rare=rare,
    )
    batch_size = cfg.batch_size or default_batch_size(device)
    cfg = cfg.replace(
        epochs=cfg.epochs or default_epochs(cfg.dataset),
        batch_size=batch_size,
        # scaled by the batch the steps really take: the training set, when it is smaller
        lr=cfg.lr or default_lr(min(batch_size, max(len(sd.x_train), 2))),
        holdout=tuple(split.unseen_names) if cfg.known is None else None,
        cuda_graphs="on" if graphs else "off",
        flip=make_augment_spec(cfg.augment, data.image_size[0], data.flip_ok, cfg.flip).flip,
    )
    check_score_settings(cfg, split.num_known)
    if pretrained is not None:
        cfg = cfg.replace(
            **resolve_model_settings(
                cfg.model, cfg.stem, cfg.input_size, pretrained, data.image_size[0]
            )
        )
    return Prepared(cfg, data, split, sd, device, precision, rare, pretrained=pretrained)


def knn_note(p: Prepared) -> str | None:
    """:func:`unseen.detectors.knn_k_note` for the run prepared in ``p``, whose ``--rare``
    classes (small on purpose) do not count as the smallest class."""
    rare = [p.split.known.index(c) for c, _ in p.rare if c in p.split.known]
    return knn_k_note(p.config, p.split_data.y_train.numpy(), exclude=rare)


def check_score_settings(cfg: RunConfig, num_known: int) -> None:
    """Score settings that depend on the network, checked before any training: ``--vim-dim``
    must be below the feature size of every head's network (K networks' features side by side
    for ``ovr-separate``)."""
    if cfg.vim_dim is None or "vim" not in expand_score_names(cfg.scores):
        return
    for head in cfg.head:
        check_vim_dim(cfg.vim_dim, feature_dim(cfg.model, head, num_known))


@functools.cache
def feature_dim(model: str, head: str, num_known: int) -> int:
    """The feature size of ``head``'s network, read off a throw-away one on the meta device
    (it depends on neither channels, image size nor stem); cached, as a sweep asks per run."""
    with torch.device("meta"):
        return build_model_for_head(model, 1, num_known, 32, "auto", head).feature_dim


#: a training-image channel whose std is below one grey level (in [0, 1] units) makes the
#: model's normalisation (x - mean) / std blow up any image that differs there: a run says so
MIN_CHANNEL_STD = 1 / 255


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    xf = x.float().div_(255)
    return xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3))


def build_model(p: Prepared, head: str) -> Classifier:
    torch.manual_seed(p.config.seed)
    h, _ = p.data.image_size
    cfg = p.config
    model = build_model_for_head(
        cfg.model, p.data.channels, p.split.num_known, cfg.input_size or h, cfg.stem, head
    )
    model.set_normalization(*p.channel_stats)
    classifiers = [m for m in model.modules() if isinstance(m, Classifier)]
    for net in classifiers:  # one, or one per class for ovr-separate
        net.input_size = cfg.input_size
        report = apply_pretrained(net, p.pretrained) if p.pretrained is not None else None
        if cfg.freeze_backbone:
            if report is not None:
                refuse_frozen_fresh_weights(net, report)
            net.freeze_backbone()
        if report is not None:
            if len(classifiers) > 1:
                report.new_head += f" in each of {len(classifiers)} networks"
            p.load_reports[head] = report
    return model


def refuse_frozen_fresh_weights(net: Classifier, report: LoadReport) -> None:
    """--freeze-backbone must not freeze backbone weights that the pretrained weights did not
    provide: they would stay at their random start (e.g. the first conv of ``--stem small``
    under ImageNet weights), under batch-norm statistics computed for other features."""
    params = {name for name, _ in net.backbone.named_parameters(prefix="backbone")}
    # batch-norm statistics too: frozen at their start (mean 0, variance 1), they would not
    # normalise the loaded weights' features
    stats = {
        name
        for name, _ in net.backbone.named_buffers(prefix="backbone")
        if name.endswith(("running_mean", "running_var"))
    }
    fresh = [k for k in report.missing if k in params or k in stats]
    if fresh:
        more = f" and {len(fresh) - 2} more" if len(fresh) > 2 else ""
        raise ConfigError(
            f"--freeze-backbone would keep {len(fresh)} backbone weights (or batch-norm "
            f"statistics) that the pretrained weights do not provide at their initial values "
            f"({', '.join(fresh[:2])}{more}); drop --freeze-backbone to train them, or use "
            "weights, a --stem and a --model that provide them."
        )


def fit_scores(
    names: list[str],
    model: Classifier,
    p: Prepared,
    val: Outputs,
    head: str,
    progress: bool = False,
) -> dict[str, Score]:
    """Fit every score on known-class data only: the validation slice, and training images if asked."""
    scores = {name: create_score(name, p.config) for name in names}
    train = None
    if any(s.needs_train for s in scores.values()):
        sd = p.split_data
        train = forward_pass(
            model, sd.x_train, p.device, p.precision, labels=sd.y_train,
            desc="training-image features" if progress else None,
        )  # fmt: skip
    ctx = FitContext(
        train, val, model.head.weight.detach().float(), model.head.bias.detach().float(), head
    )
    fitted = {}
    for name, s in scores.items():
        start = time.perf_counter()
        fitted[name] = s.fit(ctx)
        sync(p.device)  # a GPU fit's kernels count for this score, not the next
        s._seconds = time.perf_counter() - start  # fit + scoring time, for metrics.json
    return fitted


def apply_score(
    s: Score,
    outputs: Outputs,
    model: Classifier,
    images: torch.Tensor,
    p: Prepared,
    desc: str | None = None,
):
    """One score for a set of images as a NumPy array: from the forward pass's outputs, or, for
    ``needs_model`` scores (ODIN), by running ``model`` on ``images`` again (behind a progress
    bar named ``desc``, when given)."""
    start = time.perf_counter()
    if s.needs_model:
        values = s.score_images(model, images, p.device, p.precision, desc=desc)
    else:
        values = s.score(outputs)
    sync(p.device)
    s._seconds = getattr(s, "_seconds", 0.0) + time.perf_counter() - start
    return values.double().cpu().numpy()  # float64: see scores.max_softmax


def add_fit_summaries(
    metrics: dict, fitted: dict[str, Score], test: Outputs, p: Prepared, head: str
) -> None:
    """Per score in metrics.json: what its fit produced (``fit``), its time (``seconds``), and
    the metrics of its own decision rule where it has one (``own_decision``, OpenMax)."""
    labels = p.split_data.y_test.numpy()
    predicted = HEADS[head].predict(test.logits).cpu().numpy()
    for name, s in fitted.items():
        entry = metrics["scores"][name]
        entry["fit"] = s.fit_summary()
        entry["seconds"] = getattr(s, "_seconds", None)
        accepts = s.accepts(test)
        if accepts is not None:
            own = s.own_prediction(test)
            entry["own_decision"] = open_set_metrics(
                accepts.float().cpu().numpy(),
                0.5,
                predicted if own is None else own.cpu().numpy(),
                labels,
                p.split.num_known,
            )


def build_metrics(
    p: Prepared,
    test: Outputs,
    test_scores: dict[str, np.ndarray],
    val_scores: dict[str, np.ndarray],
    head: str = "softmax",
    thresholds: dict[str, float | None] | None = None,
) -> dict:
    """Closed-set and per-score open-set metrics of one head.

    ``known_confidence``/``unseen_confidence`` summarise the head's own probabilities (max
    softmax, or max sigmoid for one-vs-rest heads; ``confidence_from`` says which).
    ``thresholds`` gives a score's own decision threshold (None: calibrate on validation).
    """
    sd, split = p.split_data, p.split
    labels = sd.y_test.numpy()
    predicted = test.logits.argmax(1).cpu().numpy()
    is_unseen = labels < 0
    msp = confidence(head, test.logits).cpu().numpy()
    thresholds = thresholds or {}
    names = split.known_names
    known_correct = predicted[~is_unseen] == labels[~is_unseen]
    return {
        # NaN, without numpy's warning, when no known image is tested
        "closed_set_accuracy": float(known_correct.mean()) if known_correct.size else math.nan,
        "all_test_accuracy": float(np.mean(predicted == labels)),
        "known_classes": names,
        "unseen_classes": split.unseen_names,
        "num_train": len(sd.x_train),
        "num_val": len(sd.x_val),
        "num_test_known": int((~is_unseen).sum()),
        "num_test_unseen": int(is_unseen.sum()),
        "known_confidence": confidence_summary(msp[~is_unseen]),
        "unseen_confidence": confidence_summary(msp[is_unseen]),
        "unseen_predicted_as": predicted_as(predicted[is_unseen], names),
        "confidence_from": HEADS[head].confidence,
        "logits": HEADS[head].logits_kind,
        "scores": {
            name: score_metrics(
                test_scores[name],
                val_scores[name],
                predicted,
                labels,
                split.num_known,
                p.config.known_acceptance,
                thresholds.get(name),
            )
            for name in test_scores
        },
    }


def run_head(
    p: Prepared,
    head: str,
    run_dir: Path,
    progress: bool = True,
    checkpoint: Checkpointing | None = None,
) -> dict:
    """Train one model with ``head``, score the test set, write the run folder; return metrics.

    With ``checkpoint``, training saves (and on resume restores) its state at the end of an
    epoch as often as ``--checkpoint-every`` says, and Ctrl-C/SIGTERM stop it cleanly with a
    checkpoint (see :mod:`unseen.checkpoint`)."""
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
        balance=cfg.balance,
        backbone_lr_scale=cfg.backbone_lr_scale,
        compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs,
    )
    trained: TrainResult
    # on a GPU, the report's imports happen on a side thread while the GPU trains, instead of
    # after training (see unseen.preload); waited for when training ends
    with catch_signals(checkpoint), importing(modules_to_preload(p.device, cfg.report)):
        if HEADS[head].separate:  # K binary networks, one after another
            trained = train_separate(
                model, sd.x_train, sd.y_train, settings, spec, p.device, p.precision,
                x_val=sd.x_val, y_val=sd.y_val, progress=progress, checkpoint=checkpoint,
            )  # fmt: skip
        else:
            trained = train_model(
                model, sd.x_train, sd.y_train, settings, HEADS[head], spec, p.device, p.precision,
                x_val=sd.x_val, y_val=sd.y_val, progress=progress, checkpoint=checkpoint,
            )  # fmt: skip

    scored = score_head(p, head, model, progress)
    metrics = finish_metrics(p, head, scored, training_metrics(trained), describe_device(p.device))
    write_run_files(run_dir, p, scored, checkpoint_payload(p, head, model), history=trained.history)
    return metrics


@dataclass
class Scored:
    """One head's network scored: the forward passes, every fitted score, their values and
    the metrics so far (:func:`score_head`); a run and ``unseen rescore`` both write it."""

    test: Outputs
    val: Outputs
    fitted: dict[str, Score]
    test_scores: dict[str, np.ndarray]
    val_scores: dict[str, np.ndarray]
    metrics: dict
    #: the forward passes, fitting and scoring (metrics.json's eval_seconds)
    seconds: float


def score_head(p: Prepared, head: str, model: Classifier, progress: bool = True) -> Scored:
    """One forward pass over the test and validation images, every score fitted (on
    known-class data only) and applied, and the metrics of them all."""
    cfg, sd = p.config, p.split_data
    start = time.perf_counter()
    infer = fold_batch_norm(model)  # evaluation only; model.pt holds the trained network
    test = forward_pass(infer, sd.x_test, p.device, p.precision, labels=sd.y_test,
                        desc="test images" if progress else None)  # fmt: skip
    val = forward_pass(infer, sd.x_val, p.device, p.precision, labels=sd.y_val)
    check_finite(test, "test images")
    check_finite(val, "validation images")
    names = scores_for_head(cfg.scores, head)
    fitted = fit_scores(names, infer, p, val, head, progress)

    def bar(name: str, images: str) -> str | None:
        return f"{name}, {images}" if progress else None

    test_scores = {
        n: apply_score(s, test, infer, sd.x_test, p, bar(n, "test images"))
        for n, s in fitted.items()
    }
    val_scores = {
        n: apply_score(s, val, infer, sd.x_val, p, bar(n, "validation images"))
        for n, s in fitted.items()
    }
    seconds = time.perf_counter() - start

    thresholds = {n: s.decision_threshold() for n, s in fitted.items()}
    metrics = build_metrics(p, test, test_scores, val_scores, head, thresholds)
    if "ovr-doc" in fitted:  # the fitted DOC thresholds, by class name
        t = fitted["ovr-doc"].thresholds_.cpu().tolist()
        metrics["scores"]["ovr-doc"]["class_thresholds"] = dict(
            zip(p.split.known_names, t, strict=True)
        )
        metrics["scores"]["ovr-doc"]["doc_alpha"] = fitted["ovr-doc"].alpha_
    add_fit_summaries(metrics, fitted, test, p, head)
    if p.rare:
        metrics["rare"] = rare_metrics(
            p.rare, p.split.classes, p.split.known, sd.y_train.numpy(),
            sd.y_test_original.numpy(), HEADS[head].predict(test.logits).cpu().numpy(), test_scores,
            confidence=confidence(head, test.logits).cpu().numpy(),
        )  # fmt: skip
    metrics.update(pretrained_metrics(p, head))
    return Scored(test, val, fitted, test_scores, val_scores, metrics, seconds)


def training_metrics(trained: TrainResult) -> dict:
    """metrics.json's entries about training (:data:`TRAINING_METRICS`)."""
    return {
        "train_seconds": trained.seconds,
        "train_images_per_second": trained.images_per_second,
        "validation_seconds": trained.validation_seconds,
        "checkpoint_seconds": trained.checkpoint_seconds,
        "resumed_train_seconds": trained.resumed_seconds,
        "cuda_graphs": trained.cuda_graphs,
        # fp16 only (null otherwise): steps its loss scaling skipped, and the scale it ended at
        "fp16_skipped_steps": trained.skipped_steps if trained.loss_scale is not None else None,
        "fp16_loss_scale": trained.loss_scale,
    }


#: the names of those entries, which a rescore keeps as the run recorded them
TRAINING_METRICS = tuple(training_metrics(TrainResult()))


def finish_metrics(p: Prepared, head: str, scored: Scored, training: dict, device: str) -> dict:
    """``scored``'s metrics with the run's description, ``training``'s entries
    (:data:`TRAINING_METRICS`) and the device it trained on: metrics.json of one head."""
    cfg, val = p.config, scored.val
    scored.metrics.update(
        head=head,
        model=cfg.model,
        # the input stem --stem auto chose (resnet18's; null for the others)
        stem=run_stem(cfg, p.data.image_size) if cfg.model == "resnet18" else None,
        dataset=cfg.dataset,
        # what reading the data did that a user should know (folder datasets): kept, since
        # --quiet and sweeps do not print it
        data_notes=list(p.data.notes),
        epochs=cfg.epochs,
        **training,
        eval_seconds=scored.seconds,
        device=device,
        precision=p.precision,
        # K-way accuracy of the final model (for ovr-separate the history holds per-network
        # binary accuracies instead)
        final_val_accuracy=(
            float((HEADS[head].predict(val.logits) == val.labels).float().mean())
            if len(val)
            else None
        ),
    )
    return scored.metrics


def weights_record(p: Prepared, heads: Sequence[str]) -> dict | None:
    """How the pretrained weights fitted: the head's report, or one per head for several."""
    reports = {h: p.load_reports[h].to_dict() for h in heads if h in p.load_reports}
    if not reports:
        return None
    return reports[heads[0]] if len(heads) == 1 else reports


def run_record(p: Prepared, heads: Sequence[str]) -> dict:
    """What config.json (and a checkpoint, whose ``--resume`` compares it) records of a run
    of ``heads``: its options, the split, the resolved augmentation and how the pretrained
    weights fitted the network of each head."""
    cfg = p.config.replace(head=tuple(heads))
    spec = make_augment_spec(cfg.augment, p.data.image_size[0], p.data.flip_ok, cfg.flip)
    return {
        **cfg.to_dict(),
        "split": p.split.to_dict(),
        "augmentation": spec.to_dict(),
        "pretrained_weights": weights_record(p, heads),
    }


def pretrained_metrics(p: Prepared, head: str) -> dict:
    """metrics.json entries for augmentation, and where the weights came from."""
    cfg = p.config
    src = p.pretrained
    return {
        "augment": cfg.augment,
        "pretrained_on": src.description if src is not None else None,
        "pretrained_warning": (
            leakage_warning(src, cfg.dataset, p.split.unseen_names) if src is not None else None
        ),
        "pretrained_weights": weights_record(p, [head]),
        "freeze_backbone": cfg.freeze_backbone,
        "input_size": cfg.input_size,
    }


def write_run_files(
    run_dir: Path,
    p: Prepared,
    scored: Scored,
    model_payload: dict,
    history: list[dict] | None = None,
) -> None:
    """One head's run files: scores.npz, model.pt (``model_payload``), detectors.pt,
    metrics.json (``scored.metrics``) and, given the training ``history``, history.csv."""
    sd, test = p.split_data, scored.test
    if history is not None:
        write_csv(run_dir / "history.csv", history)
    arrays = {
        "label": sd.y_test_original.numpy(),
        "label_known": sd.y_test.numpy(),
        "is_unseen": sd.test_is_unseen.numpy(),
        "predicted": test.logits.argmax(1).cpu().numpy(),
        "val_label": sd.y_val.numpy(),
        # test outputs for the report (reliability diagram, feature projection)
        "logits": test.logits.float().cpu().numpy(),
        "features": half_if_it_fits(test.features.cpu().numpy()),
    }
    arrays.update({f"score_{n}": v for n, v in scored.test_scores.items()})
    arrays.update({f"val_score_{n}": v for n, v in scored.val_scores.items()})
    write_npz(run_dir / "scores.npz", **arrays)
    save_torch(run_dir / "model.pt", model_payload)
    fitted = {n: to_cpu(s.fitted_state()) for n, s in scored.fitted.items()}
    save_torch(run_dir / "detectors.pt", fitted)
    write_json(run_dir / "metrics.json", scored.metrics)


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
        # images are resized to this inside the model (None: used as they are)
        "input_size": p.config.input_size,
        "num_classes": p.split.num_known,
        "split": p.split.to_dict(),
        # the training and validation images, which `unseen rescore` checks
        "data": p.data_fingerprint,
        # what the starting weights were trained on, for the leakage check of later runs
        "lineage": lineage(p.pretrained) if p.pretrained is not None else [],
    }


def write_run_report(run_dir: Path, say: Callable[[str], None]) -> None:
    """Write report.html/report.md. A failure here costs the report, never the run:
    it is logged and ``unseen report RUN`` can build the report later."""
    start = time.perf_counter()  # importing matplotlib counts too, as in the time: line
    from .report import build_report

    try:
        path = build_report(run_dir, check_finished=False)
    except Exception as exc:  # noqa: BLE001 - the run's results are already on disk
        say(f"report: not written ({type(exc).__name__}: {exc}); try `unseen report {run_dir}`")
        return
    say(f"report: {path} ({time.perf_counter() - start:.1f} s)")


def run_experiment(
    cfg: RunConfig, progress: bool = True, log: Callable[[str], None] | None = print
) -> RunResult:
    """Run the whole experiment for ``cfg`` and return its metrics and run folder.

    The run uses the process's thread budget (``threads.thread_budget``) and gives the caller
    back what it changes of torch's global state: the thread count, the random number
    generators it seeds, and ``torch.backends.cudnn.benchmark``.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(
            f"run_experiment takes a RunConfig, not a {type(cfg).__name__}: "
            "build one with RunConfig(**options)"
        )
    with caller_torch_state():
        return _run_experiment(cfg, progress, log)


@contextlib.contextmanager
def caller_torch_state() -> Iterator[None]:
    """Restore, on leaving, the torch state a run sets for itself: the thread count, the CPU
    (and, where initialised, CUDA) random number generators and cuDNN's autotuning switch."""
    threads = torch.get_num_threads()
    benchmark = torch.backends.cudnn.benchmark
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = benchmark
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def _run_experiment(cfg: RunConfig, progress: bool, log: Callable[[str], None] | None) -> RunResult:
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    validate(cfg)
    # an --out folder that holds a run needs --resume or --overwrite: decided before any work
    folder = "new"
    if cfg.out:
        folder = check_run_folder(Path(cfg.out), resume=cfg.resume, overwrite=cfg.overwrite)
    saved = None  # the config.json of the run in --out, read once for both checks
    if folder != "new" and (Path(cfg.out) / "config.json").is_file():
        # another dataset: its class names would fail to resolve before the full check below
        saved = read_json(Path(cfg.out) / "config.json")
        if "dataset" in saved:
            check_same_config(
                {"dataset": saved["dataset"]}, {"dataset": cfg.dataset}, Path(cfg.out)
            )
    # a resumed run keeps the arithmetic it started in, though `auto` may resolve otherwise now
    # (another machine, or a version whose rule changed): also fp16 on a CPU, which emulates
    # it slowly (the warning below says so), so that every head of a run shares one arithmetic
    kept = None
    if folder == "resume" and cfg.precision == "auto":
        kept = resumed_precision(Path(cfg.out), resolve_device(cfg.device))
    p = prepare(cfg, precision=kept)
    prepare_seconds = time.perf_counter() - started
    cfg = p.config
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.dataset, p.split.unseen_names)
    sd = p.split_data
    if p.pretrained is not None:  # fit the weights to each head's network: config.json says how
        for head in cfg.head:
            build_model(p, head)
    record = run_record(p, cfg.head)
    if saved is not None:  # run_dir is --out here
        check_same_config(saved, record, run_dir)
    if folder == "finished":
        say(f"{run_dir} holds a finished run with these options; nothing to train.")
        errors = complete_finished_run(
            run_dir,
            cfg.ood,
            data_root=cfg.data_root,
            download=cfg.download,
            device=cfg.device,
            report=cfg.report,
            log=say,
        )
        return RunResult(run_dir, cfg, read_json(run_dir / "metrics.json"), ood_errors=errors)
    if cfg.overwrite and cfg.out:
        clear_run_state(run_dir)
    shape = " x ".join(map(str, sd.x_test.shape[1:]))  # as read: an npz's layout, a folder's size
    say(
        f"{cfg.dataset}: {len(sd.x_train)} training, {len(sd.x_val)} validation, {len(sd.x_test)} test images "
        f"({int(sd.test_is_unseen.sum())} of unseen classes), {shape} (C x H x W), "
        f"from {p.data.source}"
    )
    for note in p.data.notes:
        say(f"note: {note}")
    say(
        f"known: {printable_names(p.split.known_names)} | "
        f"unseen: {printable_names(p.split.unseen_names) or '-'}"
    )
    h, w = p.data.image_size
    resized = (  # --input-size, or the size the pretrained weights brought
        f" at {cfg.input_size} x {cfg.input_size} px (images resized from {h} x {w})"
        if cfg.input_size and (cfg.input_size, cfg.input_size) != (h, w)
        else ""
    )
    epochs = counted(cfg.epochs, "epoch")
    stem = f" ({run_stem(cfg, (h, w))} stem)" if cfg.model == "resnet18" else ""
    say(
        f"{cfg.model}{stem}{resized}, {epochs} on {describe_device(p.device)}, {p.precision}; "
        f"run folder {run_dir}"
    )
    if warning := precision_warning(p.precision, p.device, resumed=folder == "resume"):
        warn(warning)  # with --quiet too
    if p.pretrained is not None:
        for head, report in p.load_reports.items():
            for line in report.lines():
                say(f"head {head}: {line}" if len(cfg.head) > 1 else line)
        if warning := leakage_warning(p.pretrained, cfg.dataset, p.split.unseen_names):
            say(f"warning: {warning}")
    if untrained := [p.data.classes[c] for c in p.data.untrained]:
        one = len(untrained) == 1
        trained = {c.strip().casefold(): c for c in p.data.classes if c not in untrained}
        alike = [
            f"{u!r} and {trained[k]!r}" for u in untrained if (k := u.strip().casefold()) in trained
        ]
        say(
            f"note: {'class' if one else 'classes'} {printable_names(untrained)} "
            f"{'has' if one else 'have'} no training images (only the test set holds any), so "
            f"{'it is' if one else 'they are'} held out"
            + (
                f"; {', '.join(alike)} differ only in case or spaces: the same class?"
                if alike
                else ""
            )
        )
    if not p.split.unseen_names and not p.rare:
        say(
            "note: every class is known, so no test image is unseen: the open-set metrics are empty"
        )
    elif p.split.unseen_names and not bool(sd.test_is_unseen.any()):
        say(
            "note: no test image is of an unseen class (none in the test set, or none left by "
            "--test-subset): the open-set metrics are empty"
        )
    if flat := [c for c, s in enumerate(p.channel_stats[1].tolist()) if s < MIN_CHANNEL_STD]:
        which = (
            f"channel {flat[0]} hardly varies"
            if len(flat) == 1
            else (f"channels {', '.join(map(str, flat))} hardly vary")
        )
        say(
            f"note: {which} in the training images (std below one grey level): normalised by so "
            "small a std, test images that differ there reach the network far out of range and the "
            "scores can say more about that than about the classes"
        )
    if cfg.stem != "auto" and cfg.model not in HAS_STEMS:
        say(f"note: --stem {cfg.stem} has no effect: {cfg.model} has one input stem")
    # the built-in networks that convolve at full resolution: slow on large images on a CPU
    size = (cfg.input_size, cfg.input_size) if cfg.input_size else (h, w)
    full_size = cfg.model == "resnet20" or (
        cfg.model == "resnet18" and run_stem(cfg, (h, w)) == "small"
    )
    if p.device.type == "cpu" and max(size) > LARGE_ON_CPU and full_size:
        other = "--model resnet18 --stem imagenet" if cfg.model == "resnet20" else "--stem imagenet"
        say(
            f"note: {size[0]} x {size[1]} px images on a CPU: {cfg.model} convolves them at full "
            f"resolution, which is slow; --input-size {LARGE_ON_CPU} shrinks them to "
            f"{LARGE_ON_CPU} x {LARGE_ON_CPU} inside the model, or {other} downsamples them 4x "
            "first (see the README's Speed section)"
        )
    if cfg.bit_depth != 16 and not cfg.dataset.startswith("folder:"):
        say(
            f"note: --bit-depth {cfg.bit_depth} has no effect: only folder datasets read 16-bit files"
        )
    if note := knn_note(p):
        say(note)
    if cfg.freeze_backbone and p.pretrained is None:
        say("note: --freeze-backbone without --pretrained trains a head on random features")
    elif cfg.backbone_lr_scale != 1 and p.pretrained is None:
        say(
            f"note: --backbone-lr-scale {cfg.backbone_lr_scale:g} without --pretrained trains "
            "the randomly initialised backbone at a scaled learning rate"
        )
    for line in unused_options_notes(unused_score_options(cfg)):
        say(line)
    write_json(run_dir / "config.json", record)
    per_head = {}
    earlier: list[str] = []  # heads a process before a --resume finished
    checkpoints: list[Checkpointing] = []
    for head in cfg.head:
        head_dir = run_dir if len(cfg.head) == 1 else run_dir / head
        head_record = run_record(p, [head])
        if len(cfg.head) > 1:  # each head's folder is a complete one-head run folder
            say(f"head {head}: {HEADS[head].description}")
            write_json(head_dir / "config.json", head_record)
        checkpoint = Checkpointing(
            head_dir / CHECKPOINT_FILE,
            head_record,
            resume=cfg.resume,
            resume_hint=f"unseen run --resume --out {run_dir}",
            every=cfg.checkpoint_every,
            data=p.data_fingerprint,
            precision=p.precision,
        )
        checkpoints.append(checkpoint)
        if len(cfg.head) > 1 and cfg.resume and is_finished(head_dir):
            say(f"head {head}: finished before the interruption")
            per_head[head] = read_json(head_dir / "metrics.json")
            earlier.append(head)
            have = per_head[head].get("scores", {})
            if missing := [n for n in scores_for_head(cfg.scores, head) if n not in have]:
                say(
                    f"note: head {head} finished without {', '.join(missing)} (scores its "
                    f"version did not have); `unseen rescore {run_dir}` computes them"
                )
            continue
        per_head[head] = run_head(p, head, head_dir, progress, checkpoint)
        if len(cfg.head) > 1:
            mark_finished(head_dir, heads=[head])
    metrics = per_head[cfg.head[0]] if len(cfg.head) == 1 else {"heads": per_head}
    if len(cfg.head) > 1:
        write_json(run_dir / "metrics.json", metrics)
    for checkpoint in checkpoints:  # kept until the run is finished; model.pt has the weights
        checkpoint.remove()
    # finished: --ood and the report read the run from its folder, as `unseen ood` and
    # `unseen report` do, and a failure of either costs only itself
    timings = wall_clock(per_head, prepare_seconds, None, started, earlier)
    finished = mark_finished(run_dir, heads=list(cfg.head), seconds=timings)
    ood_start = time.perf_counter()
    errors = {}
    try:
        with sigterm_raises():
            if cfg.ood:
                errors = score_run_ood(
                    run_dir,
                    cfg.head,
                    cfg.ood,
                    data_root=cfg.data_root,
                    download=cfg.download,
                    device=cfg.device,
                    limit=cfg.test_subset,
                    log=say,
                )
            report_start = time.perf_counter()
            if cfg.report:
                write_run_report(run_dir, say)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (sigterm_raises: exit code 143)
        raise Interrupted(
            f"interrupted after the run finished, while it scored --ood or wrote its report; "
            f"`unseen run --resume --out {run_dir}` adds what it lacks",
            getattr(exc, "exit_code", 130),
        ) from None
    timings = wall_clock(
        per_head,
        prepare_seconds,
        time.perf_counter() - report_start if cfg.report else 0.0,
        started,
        earlier,
        ood=report_start - ood_start if cfg.ood else None,
    )
    # the same finish, with the time of all stages (its time stamp kept: the far-OOD results
    # name it as the state of the run they were computed from)
    mark_finished(
        run_dir,
        heads=list(cfg.head),
        seconds=timings,
        finished_at=read_json(finished)["finished_at"],
    )
    return RunResult(run_dir, cfg, metrics, timings, errors)


def complete_finished_run(
    run_dir: str | Path,
    ood: Sequence[str] = (),
    *,
    data_root: str | None = None,
    download: bool = False,
    device: str = "auto",
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], str]:
    """Add to the finished run in ``run_dir`` what it may lack, without training: a current
    far-OOD result of each dataset of ``ood`` for each head (its images limited as the
    run's ``--test-subset``), and, with ``report``, the report of a run made with one
    (not ``--no-report``) when it has none (stopped while writing it) or far-OOD results
    were added. ``unseen run --resume`` on a finished run and ``unseen sweep`` on its
    finished runs call it; the run's own options are read from its folder, so a run
    rescored since (other ``--scores``) is no obstacle. Returns why a (head, dataset) pair
    could not be scored."""
    from .runfolder import read_config_json

    run_dir = Path(run_dir)
    say = log or (lambda _msg: None)
    config = read_config_json(run_dir / "config.json")
    heads = [str(h) for h in config.get("head") or ()]
    if not heads:
        raise DataError(f"{run_dir / 'config.json'} names no head: the run folder is damaged.")
    ood = [absolute_dataset(d) for d in ood]
    todo = missing_ood(run_dir, heads, ood)
    errors = {}
    report = report and config.get("report", True) is not False
    try:
        with sigterm_raises():
            if todo:
                say(f"scoring --ood {', '.join(dict.fromkeys(d for _, d in todo))}")
                errors = score_run_ood(
                    run_dir,
                    heads,
                    ood,
                    data_root=data_root,
                    download=download,
                    device=device,
                    limit=config.get("test_subset"),
                    log=say,
                )
            if report and (todo or not (run_dir / "report.html").is_file()):
                write_run_report(run_dir, say)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (sigterm_raises: exit code 143)
        raise Interrupted(
            f"interrupted while it completed the finished run {run_dir}; the same command "
            "adds what it still lacks",
            getattr(exc, "exit_code", 130),
        ) from None
    return errors


def wall_clock(
    per_head: dict[str, dict],
    prepare: float,
    report: float | None,
    started: float,
    earlier: Sequence[str] = (),
    ood: float | None = None,
) -> dict[str, float]:
    """Where a run's wall-clock time went (seconds), summed over heads; saved in run.json.

    ``total`` counts from the call of :func:`run_experiment`: it leaves out the Python and
    torch start-up before it (2.5 s on a 2-core CPU, 5-7 s on the project's H200 machine).
    The stages are this process's, so they add up to ``total``; after ``--resume``, the
    training an earlier process did (part of a head's, or all of the ``earlier`` heads it
    finished) is ``trained_before_resume``, outside ``total``. metrics.json's
    ``train_seconds`` (for ``train_images_per_second``) covers the whole training. ``ood``
    (scoring the ``--ood`` datasets) is there when the run had some; ``report`` once it is
    written (None: not yet)."""

    def summed(key: str) -> float:
        return sum(float(m.get(key) or 0.0) for h, m in per_head.items() if h not in earlier)

    total = time.perf_counter() - started
    before = summed("resumed_train_seconds") + sum(
        float(per_head[h].get("train_seconds") or 0.0) for h in earlier
    )
    parts = {
        "prepare": prepare,
        "train": summed("train_seconds") - summed("resumed_train_seconds"),
        **{key: summed(f"{key}_seconds") for key in ("validation", "checkpoint", "eval")},
        **({"ood": ood} if ood is not None else {}),  # with --ood
        **({"report": report} if report is not None else {}),
    }
    out = {**parts, "other": max(total - sum(parts.values()), 0.0), "total": total}
    return out | ({"trained_before_resume": before} if before > 0 else {})
