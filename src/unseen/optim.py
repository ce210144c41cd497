"""SGD, its learning-rate schedules and fp16 loss scaling, without ``torch.optim``'s classes.

Why not ``torch.optim.SGD`` and ``torch.optim.lr_scheduler``: every call of their methods
(constructing, ``zero_grad``, ``step``, ``state_dict``) imports ``torch._dynamo``, the
compiler, even when nothing is compiled. That import took 1.0 s of a 10.8 s default
``unseen run`` on a 2-core CPU, and 5-7 s of a 31 s ResNet-18 run on an H200 (see
``benchmarks/startup.py``). Nothing here imports it.

What is still torch's: the update itself. :meth:`SGD.step` hands each parameter group to
``torch.optim.sgd.sgd``, the functional form that ``torch.optim.SGD.step`` calls, with the
same arguments; so a run trains bit for bit as it did with ``torch.optim.SGD``. The classes
here only keep the parameter groups and momentum buffers, in ``torch.optim.SGD``'s
``state_dict`` layout, so checkpoints written with either load into either.

The schedules are closed forms of the step count, equal to torch's ``OneCycleLR`` (the same
arithmetic, so the same floats) and ``CosineAnnealingLR`` (which computes the same curve
recursively: equal within rounding). ``tests/test_optim.py`` checks both, step by step,
against torch's own classes.

:class:`LossScale` is fp16's dynamic loss scaling, ``torch.amp.GradScaler``'s arithmetic
(through the same two torch operations) without its wait: ``GradScaler.step`` reads on the
host whether a gradient overflowed, which a CUDA graph cannot capture.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch.optim.sgd import sgd as torch_sgd

#: the schedules :class:`Schedule` computes
SCHEDULE_KINDS = ("onecycle", "cosine", "constant")


class SGD:
    """Stochastic gradient descent with (Nesterov) momentum and weight decay.

    ``params`` is a list of tensors, or of parameter groups (dicts with ``params`` and any of
    the hyperparameters, which override the keyword arguments for that group), as for
    ``torch.optim.SGD``. ``param_groups`` and ``state`` (each parameter's ``momentum_buffer``)
    have ``torch.optim.SGD``'s layout; schedules write each group's ``lr`` and ``momentum``.
    ``fused=True`` updates all parameters of a CUDA group in one kernel.
    """

    def __init__(
        self,
        params: list[torch.Tensor] | list[dict[str, Any]],
        *,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be 0 or more")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        # torch.optim.SGD's keys, so that its load_state_dict reads ours and ours reads its
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay, nesterov=nesterov,
            maximize=False, foreach=None, differentiable=False, fused=fused,
        )  # fmt: skip
        self.defaults = defaults
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        if not groups:
            raise ValueError("SGD got an empty parameter list")
        self.param_groups: list[dict[str, Any]] = []
        for group in groups:
            assert isinstance(group, dict)
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        # as torch's: a parameter's entry appears when first looked up
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or, with ``set_to_none=False``, zero it)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, group by group."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            has_momentum = group["momentum"] != 0
            # torch's first step starts the buffer at the gradient: a missing one is None
            buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
            torch_sgd(
                params,
                grads,
                buffers if has_momentum else [],
                has_sparse_grad=any(g.is_sparse for g in grads),
                foreach=group["foreach"],
                fused=group["fused"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            if has_momentum:
                for p, buf in zip(params, buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buf

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.SGD``'s layout: parameters are numbered in group order from 0."""
        index: dict[torch.Tensor, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                ids.append(index.setdefault(p, len(index)))
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[p]: dict(s) for p, s in self.state.items() if p in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and momentum buffers (also from ``torch.optim.SGD``), cast
        to each parameter's device and dtype.

        Raises ``ValueError`` when the saved groups do not match these in number or size.
        """
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"])
            for s, g in zip(saved, self.param_groups, strict=True)
        ):
            raise ValueError("the saved optimiser state has other parameter groups than this one")
        by_id = {}
        for s, g in zip(saved, self.param_groups, strict=True):
            by_id.update(zip(s["params"], g["params"], strict=True))
        self.state = defaultdict(dict)
        for key, values in state_dict["state"].items():
            p = by_id[key]
            self.state[p] = {
                k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                for k, v in values.items()
            }
        for s, g in zip(saved, self.param_groups, strict=True):
            # the hyperparameters; how to run the update stays this device's choice (a run
            # saved on a GPU with fused=True may resume on a CPU)
            g.update({k: v for k, v in s.items() if k not in ("params", "fused", "foreach")})


def _annealing_cos(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1): torch's ``OneCycleLR`` arithmetic."""
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def one_cycle(
    step: int, total_steps: int, pct_start: float, values: tuple[float, float, float]
) -> float:
    """The value at ``step`` of a two-phase cosine cycle, as torch's ``OneCycleLR`` computes it.

    ``values`` = (start, turn, end): from ``start`` to ``turn`` over the first
    ``pct_start * total_steps`` steps, then to ``end`` at step ``total_steps - 1``.
    """
    start, turn, end = values
    phases = ((float(pct_start * total_steps) - 1, start, turn), (total_steps - 1, turn, end))
    start_step = 0.0
    for i, (end_step, a, b) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            return _annealing_cos(a, b, (step - start_step) / (end_step - start_step))
        start_step = end_step
    raise AssertionError("unreachable: the last phase always answers")


class Schedule:
    """Sets every group's learning rate (and momentum) for each step of training.

    ``kind``:

    - ``onecycle``: Smith's 1cycle, as torch's ``OneCycleLR`` (cosine, two phases): from
      ``peak / 25`` up to ``peak`` over the first ``pct_start`` of the steps, then down to
      ``peak / 25 / 1e4``; with ``momentum=(low, high)`` the momentum moves the other way,
      ``high -> low -> high``.
    - ``cosine``: ``peak * (1 + cos(pi * step / total_steps)) / 2``, as ``CosineAnnealingLR``.
    - ``constant``: the peak throughout.

    The peak of each group is its ``lr`` when the schedule is made. As with torch's
    schedulers, making the schedule sets step 0's rates, and :meth:`step` moves to the next
    step (call it after each optimiser step). ``state_dict`` holds the step count (under
    torch's name, ``last_epoch``), and :meth:`load_state_dict` sets that step's rates, so a
    resumed run goes on where it stopped (also from a torch scheduler's state).
    """

    def __init__(
        self,
        optimizer: SGD,
        kind: str,
        total_steps: int,
        *,
        pct_start: float = 0.25,
        momentum: tuple[float, float] | None = None,
    ):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"no schedule {kind!r}; one of {', '.join(SCHEDULE_KINDS)}")
        if total_steps < 1:
            raise ValueError(f"a schedule needs 1 step or more, not {total_steps}")
        self.optimizer, self.kind, self.total_steps = optimizer, kind, total_steps
        self.pct_start, self.momentum = pct_start, momentum
        self.peak_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        # the keys torch's schedulers keep in each group, so that the optimiser state of a
        # checkpoint written here still resumes under torch's (earlier versions of unseen)
        for group, peak in zip(optimizer.param_groups, self.peak_lrs, strict=True):
            group["initial_lr"] = peak / 25.0 if kind == "onecycle" else peak
            if kind == "onecycle":
                group["max_lr"], group["min_lr"] = peak, peak / 25.0 / 1e4
                if momentum is not None:
                    group["base_momentum"], group["max_momentum"] = momentum
        self.last_epoch = 0
        self._apply()

    def lr_at(self, step: int, peak: float) -> float:
        """The learning rate of ``step`` for a group whose peak is ``peak``."""
        if self.kind == "onecycle":
            initial = peak / 25.0
            return one_cycle(step, self.total_steps, self.pct_start, (initial, peak, initial / 1e4))
        if self.kind == "cosine":
            return peak * (1 + math.cos(math.pi * step / self.total_steps)) / 2
        return peak

    def momentum_at(self, step: int) -> float | None:
        """The momentum of ``step``, or None where the schedule leaves it alone."""
        if self.kind != "onecycle" or self.momentum is None:
            return None
        low, high = self.momentum
        return one_cycle(step, self.total_steps, self.pct_start, (high, low, high))

    def _apply(self) -> None:
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"the schedule has {self.total_steps} steps; step {self.last_epoch} is past it"
            )
        momentum = self.momentum_at(self.last_epoch)
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
            group["lr"] = self.lr_at(self.last_epoch, peak)
            if momentum is not None:
                group["momentum"] = momentum

    def step(self) -> None:
        """Move to the next step and set its rates."""
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        state = {"kind": self.kind, "last_epoch": self.last_epoch, "total_steps": self.total_steps}
        if self.kind == "constant":  # what torch's LambdaLR (earlier versions) reads back
            state["lr_lambdas"] = [None] * len(self.peak_lrs)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self._apply()


class LossScale:
    """Dynamic loss scaling for fp16 training, as ``torch.amp.GradScaler`` does it, held in
    device tensors so that a CUDA graph can capture it (see :mod:`unseen.cudagraphs`).

    fp16 keeps about 3.3 decimal digits between 6e-8 and 65504: the small gradients of a
    cross-entropy flush to zero in it. So the loss is multiplied by ``scale`` (2**16 to start)
    before the backward pass and the gradients are divided by it after (:meth:`unscale_`).
    When a gradient overflowed (inf or NaN), that step is skipped (``found_inf`` is 1) and the
    scale halves; after ``growth_interval`` steps in a row without, it doubles
    (:meth:`update`). The two operations are torch's own, those ``GradScaler`` calls:
    ``torch._amp_foreach_non_finite_check_and_unscale_`` and ``torch._amp_update_scale_``.
    Nothing here waits for the device.

    ``state_dict`` has ``GradScaler``'s keys (and ``skipped_steps``), so a checkpoint's
    state loads into either.
    """

    def __init__(
        self,
        device: torch.device | str,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        #: 1.0 when the last :meth:`unscale_` met an inf or NaN gradient, else 0.0
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        #: steps skipped so far for an overflow (a device tensor: read it when training ends)
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale``, to run the backward pass on."""
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, grads: list[torch.Tensor]) -> None:
        """Divide the float32 ``grads`` by the scale in place, and set ``found_inf``."""
        self.found_inf.zero_()
        if grads:  # GradScaler's inverse: computed in float64, rounded once
            inv_scale = self.scale.double().reciprocal().float()
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, inv_scale)

    def step(self, optimizer: SGD | torch.optim.Optimizer) -> None:
        """The eager loop's ``GradScaler.step`` and ``update``: unscale the gradients of
        ``optimizer``'s parameters, step unless one overflowed (reading that waits for the
        device), then :meth:`update`. The backward pass ran on :meth:`scale_loss`'s loss."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.unscale_(grads)
        if not self.found_inf.item():
            optimizer.step()
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        """Count a skipped step, then halve the scale after an overflow or grow it after
        ``growth_interval`` clean steps (``GradScaler.update``)."""
        self.skipped_steps.add_(self.found_inf.to(torch.int64))
        torch._amp_update_scale_(
            self.scale, self.growth_tracker, self.found_inf,
            self.growth_factor, self.backoff_factor, self.growth_interval,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": float(self.scale),
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": int(self.growth_tracker),
            "skipped_steps": int(self.skipped_steps),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scale and its counters (also from ``GradScaler.state_dict()``)."""
        if not state_dict:  # what a disabled GradScaler saves
            raise ValueError("the saved loss scale is empty")
        self.growth_factor = float(state_dict["growth_factor"])
        self.backoff_factor = float(state_dict["backoff_factor"])
        self.growth_interval = int(state_dict["growth_interval"])
        self.scale.fill_(float(state_dict["scale"]))
        self.growth_tracker.fill_(int(state_dict["_growth_tracker"]))
        self.skipped_steps.fill_(int(state_dict.get("skipped_steps", 0)))
