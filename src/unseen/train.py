"""The training loop: data resident on the device, batched augmentation, one optimiser step a batch.

The whole known-class training set sits on the training device as one uint8 tensor. Each
epoch draws a seeded permutation; each batch is indexed, converted to float, augmented per
sample in a few tensor operations and fed through the network in ``channels_last`` layout
(bf16 autocast where it pays). There is no DataLoader and no per-image Python.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .augment import AugmentSpec
from .evaluate import forward_pass
from .hardware import autocast
from .heads import Head
from .models import Classifier


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


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_seen: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else math.nan


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of a single image is dropped (batch norm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=s.lr,
        momentum=s.momentum,
        nesterov=s.momentum > 0,
        weight_decay=s.weight_decay,
    )


def make_scheduler(
    opt: torch.optim.Optimizer, s: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(total_steps, 1),
            pct_start=0.25,
        )
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


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
) -> TrainResult:
    """Train ``model`` in place and return its per-epoch history.

    ``x_train`` is uint8 ``N x C x H x W``; ``y_train`` holds labels 0..K-1. Validation
    accuracy is measured after every epoch on ``x_val``/``y_val`` when given.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    x = x_train.to(device)
    y = y_train.to(device)
    model.to(device).to(memory_format=torch.channels_last)
    model.train()
    n = len(x)
    steps = steps_per_epoch(n, settings.batch_size)
    opt = make_optimizer(model, settings)
    sched = make_scheduler(opt, settings, steps * settings.epochs)
    result = TrainResult()
    bar = tqdm(
        range(settings.epochs),
        desc="training",
        unit="epoch",
        disable=None if progress else True,
        leave=False,
    )
    start = time.perf_counter()
    for epoch in bar:
        perm = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step in range(steps):
            idx = perm[step * settings.batch_size : (step + 1) * settings.batch_size]
            xb = augment(x[idx].float().div_(255), generator).contiguous(
                memory_format=torch.channels_last
            )
            yb = y[idx]
            with autocast(device, precision):
                logits = model(xb)
            loss = head.loss(logits.float(), yb, settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(idx)
        result.images_seen += seen
        row = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / seen,
            "train_accuracy": float(correct) / seen,
            "val_accuracy": math.nan,
            "lr": opt.param_groups[0]["lr"],
        }
        if x_val is not None and y_val is not None and len(x_val):
            val = forward_pass(model, x_val, device, precision)
            row["val_accuracy"] = float((val.logits.argmax(1).cpu() == y_val.cpu()).float().mean())
        row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{row['val_accuracy']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result
