"""The training loop: data resident on the device, batched augmentation, one optimiser step a batch.

The whole known-class training set sits on the training device as one uint8 tensor. Each
epoch draws a seeded permutation; each batch is indexed, converted to float, augmented per
sample in a few tensor operations and fed through the network in ``channels_last`` layout
(bf16 autocast where it pays; fp16 autocast with dynamic loss scaling on GPUs without native
bf16). There is no DataLoader and no per-image Python.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .augment import AugmentSpec
from .checkpoint import Checkpointing, FiniteGuard, Position, diverged, weights_finite
from .cudagraphs import GraphedStep
from .errors import ConfigError
from .evaluate import forward_pass
from .hardware import autocast
from .heads import Head
from .models import Classifier
from .optim import SGD, LossScale, Schedule

#: without a progress bar (stderr not a terminal), a plain progress line at the end of an
#: epoch once this many seconds have passed since the last one (none for a run under 30 s)
LOG_EVERY_SECONDS = 30.0


@dataclass
class ProgressLog:
    """The plain progress lines of :func:`train_model` without a bar: when the last one was
    printed, and what names the network being trained (``network 3/9``: one of a head's
    several), so that networks trained one after another share one rhythm."""

    label: str = ""
    last: float = field(default_factory=time.monotonic)
    #: seconds the networks before this one took (their lines count time from the first)
    offset: float = 0.0


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0
    #: class imbalance: "none", "weighted-loss" or "sampler" (see :func:`class_weights`)
    balance: str = "none"
    #: learning rate of the backbone relative to the head (fine-tuning pretrained weights)
    backbone_lr_scale: float = 1.0
    #: train through ``torch.compile(model)`` (see ``--compile``)
    compile: bool = False
    #: replay each full-size step as one CUDA graph: "auto" (on CUDA when possible), "on", "off"
    cuda_graphs: str = "auto"


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_seen: int = 0
    #: whether full-size steps were replayed as CUDA graphs
    cuda_graphs: bool = False
    #: wall-clock seconds outside ``seconds``: per-epoch validation passes, checkpoint writes
    validation_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    #: the part of ``seconds`` that an earlier process trained (restored on ``--resume``)
    resumed_seconds: float = 0.0
    #: fp16 only: steps skipped because a gradient overflowed, and the final loss scale
    skipped_steps: int = 0
    loss_scale: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else math.nan


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single image is dropped (batch norm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Balanced class weights ``n / (K * n_c)`` (scikit-learn's "balanced"); 0 for absent classes.

    ``K`` counts the classes present in ``y``. Used as loss weights by ``balance="weighted-loss"``
    and, per image, as sampling weights by ``balance="sampler"``.
    """
    counts = torch.bincount(y.long()).float()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = len(y) / (int(present.sum()) * counts[present])
    return weights


def weighted_loss(
    head: Head, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_i w[y_i] loss_i / sum_i w[y_i]`` for any head whose loss is a per-image mean.

    Computed class by class (the head's loss of the images of one class is the mean of their
    per-image losses), so it works for every head; for the softmax head without label
    smoothing it equals ``F.cross_entropy(logits, y, weight=weights)``.
    """
    total = logits.new_zeros(())
    norm = logits.new_zeros(())
    for c in torch.unique(y).tolist():
        mine = y == c
        n_c = mine.sum()
        total = total + weights[c] * n_c * head.loss(logits[mine], y[mine], label_smoothing)
        norm = norm + weights[c] * n_c
    return total / norm


def use_cuda_graphs(mode: str, device: torch.device, balance: str) -> bool:
    """Whether training replays its steps as CUDA graphs (see :mod:`unseen.cudagraphs`).

    ``mode`` "auto" turns them on for CUDA devices unless the run uses the weighted loss
    (whose per-class terms need the host); "on" raises :class:`ConfigError` where they cannot
    run; "off" never uses them. With ``--compile`` the compiled network is captured.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"--cuda-graphs must be auto, on or off, not {mode!r}.")
    if mode == "off":
        return False
    blocker = None
    if device.type != "cuda":
        blocker = f"they need a CUDA device and this run trains on the {device.type}"
    elif balance == "weighted-loss":
        blocker = "--balance weighted-loss computes its loss class by class on the host"
    if blocker is None:
        return True
    if mode == "on":
        raise ConfigError(f"--cuda-graphs on cannot be used here: {blocker}.")
    return False


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> SGD:
    """SGD over the trainable parameters; the head first, then the backbone at ``lr * scale``.

    Frozen parameters (``requires_grad=False``) are left out. With ``backbone_lr_scale`` 1 all
    parameters form one group; otherwise a model with a ``head`` gets two groups, whose peak
    learning rates the schedules follow separately. :class:`unseen.optim.SGD` updates as
    ``torch.optim.SGD`` does, without importing the compiler (see :mod:`unseen.optim`).
    """
    trainable = [q for q in model.parameters() if q.requires_grad]
    groups: list[dict] | list[torch.nn.Parameter] = trainable
    head = getattr(model, "head", None)
    if s.backbone_lr_scale != 1.0 and isinstance(head, torch.nn.Module):
        head_ids = {id(q) for q in head.parameters()}
        head_params = [q for q in trainable if id(q) in head_ids]
        rest = [q for q in trainable if id(q) not in head_ids]
        groups = [{"params": head_params, "lr": s.lr}]
        if rest:
            groups.append({"params": rest, "lr": s.lr * s.backbone_lr_scale})
    on_cuda = bool(trainable) and all(q.is_cuda for q in trainable)
    return SGD(
        groups,
        lr=s.lr,
        momentum=s.momentum,
        nesterov=s.momentum > 0,
        weight_decay=s.weight_decay,
        fused=True if on_cuda else None,  # one kernel for the whole update on a GPU
    )


def default_lr(batch_size: int) -> float:
    """0.1 at batch 128, scaled by the square root of the batch size (``--lr`` auto)."""
    return round(0.1 * math.sqrt(batch_size / 128), 4)


def make_scheduler(opt: SGD, s: TrainSettings, total_steps: int) -> Schedule:
    """The learning-rate schedule of ``s.schedule`` over ``total_steps`` steps (one per batch)."""
    if s.schedule == "onecycle" and total_steps < 4:
        # the warm-up would end before the first step (a single step would run at
        # lr / 25 / 1e4): too few steps for a cycle, so train at the peak learning rate
        return Schedule(opt, "constant", max(total_steps, 1))
    if s.schedule == "onecycle":
        # Smith's 1cycle moves the momentum against the learning rate: torch's default cycle
        # (0.95 -> 0.85 -> 0.95) is the one around the default --momentum 0.9; other values
        # shift it (without momentum there is nothing to cycle)
        m = s.momentum
        return Schedule(
            opt,
            "onecycle",
            total_steps,
            # torch's OneCycleLR, which this one equals, divides by zero when
            # pct_start * total_steps == 1 (4 steps): nudge it
            pct_start=0.25 if total_steps != 4 else 0.3,
            momentum=(max(m - 0.05, 0.0), min(m + 0.05, 0.999)) if m > 0 else None,
        )
    if s.schedule == "cosine":
        return Schedule(opt, "cosine", max(total_steps, 1))
    return Schedule(opt, "constant", max(total_steps, 1))


def train_model(
    model: Classifier,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    settings: TrainSettings,
    head: Head,
    augment: AugmentSpec,
    device: torch.device,
    precision: str = "fp32",
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint: Checkpointing | None = None,
    log: ProgressLog | None = None,
) -> TrainResult:
    """Train ``model`` in place and return its per-epoch history.

    ``x_train`` is uint8 ``N x C x H x W``; ``y_train`` holds labels 0..K-1. Validation
    accuracy is measured after every epoch on ``x_val``/``y_val`` when given.

    With ``checkpoint``, the full training state is saved after the last epoch and after
    every epoch that ends ``checkpoint.every`` seconds or more after the previous save (and
    resumed from when ``checkpoint.resume``), and SIGINT/SIGTERM stop after the current step
    with a checkpoint (raising :class:`unseen.checkpoint.Interrupted`). A NaN or infinite loss
    raises :class:`unseen.checkpoint.TrainingDiverged` naming the first bad epoch and step.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    x = x_train.to(device)
    y = y_train.to(device)
    model.to(device)
    if not settings.compile:  # inductor asserts on channels_last conv weights in backward
        model.to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if settings.compile else model
    n = len(x)
    steps = steps_per_epoch(n, settings.batch_size)
    weights = class_weights(y)
    sample_weights = weights[y]
    opt = make_optimizer(model, settings)
    sched = make_scheduler(opt, settings, steps * settings.epochs)
    # fp16 holds too few exponent bits for small gradients: scale the loss (see LossScale)
    scaler = LossScale(device) if precision == "fp16" else None
    result = TrainResult()
    pos = Position()
    if checkpoint is not None:
        pos = checkpoint.start(
            model=model, optimizer=opt, scheduler=sched, generator=generator, result=result,
            seed=settings.seed, epochs=settings.epochs, loss_scale=scaler,
        )  # fmt: skip
        result.resumed_seconds = pos.train_seconds
    guard = FiniteGuard(device)

    def loss_fn(logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if settings.balance == "weighted-loss":
            return weighted_loss(head, logits, yb, settings.label_smoothing, weights)
        return head.loss(logits, yb, settings.label_smoothing)

    def eager_step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a last, smaller batch skips the compiled network, which would compile again for it
        net = forward if len(xb) == settings.batch_size else model
        with autocast(device, precision):
            logits = net(xb)
        loss = loss_fn(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
            return loss.detach(), logits.detach()
        scaler.scale_loss(loss).backward()
        scaler.step(opt)  # skipped when a gradient overflowed, as GradScaler.step does
        return loss.detach(), logits.detach()

    graphed = use_cuda_graphs(settings.cuda_graphs, device, settings.balance)
    train_step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    train_step = eager_step
    if graphed:
        train_step = GraphedStep(
            forward, loss_fn, opt, device, precision, settings.batch_size, odd_batch_model=model,
            loss_scale=scaler,
        )  # fmt: skip
    bar = tqdm(
        range(pos.epoch, settings.epochs),
        initial=pos.epoch,
        total=settings.epochs,
        desc="training",
        unit="epoch",
        disable=None if progress else True,
        leave=False,
    )
    start = time.perf_counter()
    log = log if log is not None else ProgressLog()  # lines without a bar: LOG_EVERY_SECONDS
    eval_seconds = 0.0
    save_seconds = 0.0  # writing checkpoints is not training time either

    def train_seconds() -> float:
        return pos.train_seconds + time.perf_counter() - start - eval_seconds - save_seconds

    def wall_seconds() -> float:
        return pos.wall_seconds + time.perf_counter() - start

    def save(epoch: int, step: int, epoch_state: dict | None = None) -> float:
        assert checkpoint is not None
        return checkpoint.save(
            model=model, optimizer=opt, scheduler=sched, generator=generator,
            history=result.history, images_seen=result.images_seen,
            train_seconds=train_seconds(), epoch=epoch, step=step, epoch_state=epoch_state,
            wall_seconds=wall_seconds(), loss_scale=scaler,
            background=device.type == "cuda",  # a GPU trains on while the CPU writes
        )  # fmt: skip

    auto_lr = default_lr(min(settings.batch_size, max(n, 2)))  # what a diverged run may try

    def stop_if_diverged(epoch: int, step: int) -> None:
        """Raise when a loss so far was not finite, or the weights after ``step`` are not
        (the last update can overflow while its own loss was finite)."""
        if (bad := guard.first_bad()) is not None:
            bad_epoch, bad_step = divmod(bad[0], steps)
            raise diverged(bad_epoch, bad_step, steps, bad[1], settings.lr, checkpoint, auto_lr)
        if not weights_finite(model):
            raise diverged(epoch, step, steps, None, settings.lr, checkpoint, auto_lr)

    for epoch in bar:
        first_step = 0
        lr_used = opt.param_groups[0]["lr"]  # the rate of the epoch's last step, for history
        if pos.epoch_state is not None and epoch == pos.epoch:  # resume inside this epoch
            perm = pos.epoch_state["perm"].to(device)
            loss_sum = pos.epoch_state["loss_sum"].to(device)
            correct = pos.epoch_state["correct"].to(device)
            seen, first_step = int(pos.epoch_state["seen"]), pos.step
            # stopped after the epoch's last step: no step is left to set it
            lr_used = float(pos.epoch_state.get("lr_used", lr_used))
        elif settings.balance == "sampler":
            perm = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
        else:
            perm = torch.randperm(n, device=device, generator=generator)
        if first_step == 0:
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
        for step in range(first_step, steps):
            idx = perm[step * settings.batch_size : (step + 1) * settings.batch_size]
            xb = augment(x[idx].float().div_(255), generator).contiguous(
                memory_format=torch.channels_last
            )
            yb = y[idx]
            lr_used = opt.param_groups[0]["lr"]  # the schedule moves it on after the step
            loss, logits = train_step(xb, yb)
            sched.step()
            loss_sum += loss * len(idx)
            correct += (head.predict(logits) == yb).sum()
            seen += len(idx)
            guard.update(loss, epoch * steps + step)
            if checkpoint is not None and checkpoint.stop_requested() is not None:
                stop_if_diverged(epoch, step)  # never save a checkpoint with NaN weights
                state = dict(perm=perm, loss_sum=loss_sum, correct=correct, seen=seen)
                save(epoch, step + 1, {**state, "lr_used": lr_used})
                raise checkpoint.interrupted(epoch, step + 1, steps)
        stop_if_diverged(epoch, steps - 1)
        result.images_seen += seen
        row = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / seen,
            "train_accuracy": float(correct) / seen,
            "val_accuracy": math.nan,
            "lr": lr_used,  # of the epoch's last step
        }
        if x_val is not None and y_val is not None and len(x_val):
            val_start = time.perf_counter()
            val = forward_pass(model, x_val, device, precision)
            row["val_accuracy"] = float(
                (head.predict(val.logits).cpu() == y_val.cpu()).float().mean()
            )
            eval_seconds += time.perf_counter() - val_start
        row["seconds"] = wall_seconds()
        result.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{row['val_accuracy']:.3f}")
        if progress and bar.disable and time.monotonic() - log.last >= LOG_EVERY_SECONDS:
            # no bar (stderr is a log file, as under nohup or a batch job): a plain line now
            # and then, so that a long run is seen to progress
            log.last = time.monotonic()
            rate = result.images_seen / max(train_seconds(), 1e-9)
            print(
                f"training: {log.label}epoch {epoch + 1}/{settings.epochs}, loss "
                f"{row['loss']:.3f}, val acc {row['val_accuracy']:.3f}, "
                f"{log.offset + row['seconds']:.0f} s, "
                f"{rate:.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if checkpoint is not None:  # a stop, the last epoch and --checkpoint-every save one
            stopping = checkpoint.stop_requested() is not None
            if stopping or epoch + 1 == settings.epochs or checkpoint.due():
                save_seconds += save(epoch + 1, 0)
            if stopping:
                raise checkpoint.interrupted(epoch + 1, 0, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if checkpoint is not None:  # the last checkpoint is on disk before training returns
        wait_start = time.perf_counter()
        checkpoint.wait()
        save_seconds += time.perf_counter() - wait_start
        if checkpoint.stop_requested() is not None:  # a stop while the last save was written
            raise checkpoint.interrupted(settings.epochs, 0, steps)
    # training time excludes the per-epoch validation passes and checkpoint writes
    result.seconds = train_seconds()
    # replayed as graphs: captured, which takes more than its warm-up steps and a GPU
    result.cuda_graphs = isinstance(train_step, GraphedStep) and train_step.graph is not None
    result.validation_seconds, result.checkpoint_seconds = eval_seconds, save_seconds
    if scaler is not None:
        result.skipped_steps, result.loss_scale = int(scaler.skipped_steps), float(scaler.scale)
    return result
