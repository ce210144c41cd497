"""A training step replayed as one CUDA graph: forward, loss, backward and the SGD update.

At batch 512 and 28 px, an eager ResNet-18 step on an H200 is bound by the host: the GPU waits
while Python and the autograd engine launch some 500 small kernels. Captured once as a CUDA
graph, the whole step is one launch, and the GPU runs back to back.

What a graph needs, and how this module provides it:

- **Static shapes and addresses.** Each full-size batch is copied into the same input tensors;
  a batch of another size (the last, partial one of an epoch) runs eagerly through the same
  code, so every image is still seen once an epoch (except a last batch of a single image,
  which the loop drops in both modes: batch norm needs two).
- **Hyperparameters that change without re-capture.** The learning rate and momentum of each
  parameter group live in device tensors, refilled from the optimiser's ``param_groups``
  (where the schedulers write them) before every step. :func:`sgd_update` reads them there.
- **The optimiser's own state.** Momentum buffers are the optimiser's state tensors,
  updated in place, so checkpoints and resumption work as in the eager loop.
- **fp16's loss scaling on the device.** ``torch.amp.GradScaler`` asks the host whether a
  gradient overflowed before it steps; here :class:`unseen.optim.LossScale` keeps the scale
  and that flag in device tensors, and :func:`sgd_update` turns a flagged step into no change.
- **Warm-up before capture.** A few eager steps on a side stream (cuDNN picks its kernels,
  ``torch.compile`` compiles), then capture; autocast's weight cache is off throughout.

Randomness (the batch permutation and augmentation) stays outside the graph, on the caller's
generator, so a graphed run draws exactly the batches an eager run draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hardware import autocast
from .optim import SGD, LossScale

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    lr: torch.Tensor,
    momentum: torch.Tensor,
    weight_decay: float,
    nesterov: bool,
    skip: torch.Tensor | None = None,
) -> None:
    """``torch.optim.SGD``'s update (dampening 0) with the learning rate and momentum as tensors.

    ``g = grad + weight_decay * p``; ``buf = momentum * buf + g``; the step direction is
    ``g + momentum * buf`` with Nesterov, else ``buf``; ``p -= lr * direction``. A zero buffer
    gives torch's first step (``buf = g``). Everything is in place and free of host
    synchronisation, so it can be captured in a CUDA graph.

    ``skip`` (fp16 loss scaling: :attr:`unseen.optim.LossScale.found_inf`), a device tensor:
    at 1, parameters and buffers keep their values (the gradients, which then hold an inf or
    NaN, are zeroed in place, ``g`` is taken as 0, the momentum as 1 and the rate as 0; being
    arithmetic, this can turn a -0.0 into +0.0, which no later step can tell apart); at 0, the
    update is the one above, to the bit.
    """
    if not params:
        return
    if skip is not None:
        for grad in grads:  # inf * 0 would be NaN: zero them (they are finite unless skipped)
            torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)
    g = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else list(grads)
    if skip is not None:  # times 1 or 0; the momentum 1 keeps the buffer, the rate 0 the weights
        keep = 1.0 - skip
        torch._foreach_mul_(g, keep)
        momentum = torch.where(skip > 0, 1.0, momentum)
        lr = lr * keep
    torch._foreach_mul_(momentum_buffers, momentum)
    torch._foreach_add_(momentum_buffers, g)
    if nesterov:
        direction = torch._foreach_add(g, torch._foreach_mul(momentum_buffers, momentum))
    else:
        direction = momentum_buffers
    torch._foreach_sub_(params, torch._foreach_mul(direction, lr))


@dataclass
class _Group:
    """One optimiser parameter group: its trainable tensors and its hyperparameters on device."""

    group: dict
    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    lr: torch.Tensor
    momentum: torch.Tensor


#: eager full-size steps before the capture (cuDNN picks its kernels, torch.compile compiles)
WARMUP_STEPS = 3


class GraphedStep:
    """``step(x, y) -> (loss, logits)``: one SGD step of ``model`` on a batch, graphed on CUDA.

    ``optimizer`` must be an :class:`unseen.optim.SGD` (or a ``torch.optim.SGD``) without
    dampening; its ``param_groups`` supply the hyperparameters at every call and its state
    holds the momentum buffers. Batches of ``batch_size`` images are replayed from one graph
    after ``warmup`` eager steps; other sizes run eagerly, through ``odd_batch_model`` when
    given (the uncompiled network when ``model`` is ``torch.compile``'d, which would otherwise
    compile again for the new size).
    With ``capture=False`` (or on a CPU) every step runs eagerly through the same code, which
    is how the tests check it on machines without a GPU. In fp16, ``loss_scale`` (required
    there) scales the loss and skips a step whose gradients overflowed, inside the graph.

    The returned tensors are the graph's outputs: read (or copy) them before the next call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        optimizer: SGD | torch.optim.SGD,
        device: torch.device,
        precision: str,
        batch_size: int,
        warmup: int = WARMUP_STEPS,
        capture: bool = True,
        odd_batch_model: torch.nn.Module | None = None,
        loss_scale: LossScale | None = None,
    ):
        if not isinstance(optimizer, SGD | torch.optim.SGD):
            raise TypeError("GraphedStep implements SGD; got " + type(optimizer).__name__)
        if (precision == "fp16") != (loss_scale is not None):
            raise ValueError("GraphedStep takes a loss_scale in fp16, and only there")
        self.loss_scale = loss_scale
        self.model, self.loss_fn, self.device, self.precision = model, loss_fn, device, precision
        # batches of another size (a compiled model would recompile for them)
        self.odd_batch_model = odd_batch_model or model
        self.batch_size, self.warmup = batch_size, warmup
        self.capture = capture and device.type == "cuda"
        self.groups: list[_Group] = []
        for group in optimizer.param_groups:
            if group.get("dampening", 0) or group.get("maximize", False):
                raise ValueError("GraphedStep supports SGD without dampening or maximize")
            params = [q for q in group["params"] if q.requires_grad]
            buffers = []
            for q in params:
                state = optimizer.state[q]
                if state.get("momentum_buffer") is None:  # torch's first step: buf = grad
                    state["momentum_buffer"] = torch.zeros_like(q)
                buffers.append(state["momentum_buffer"])
            self.groups.append(
                _Group(
                    group,
                    params,
                    buffers,
                    lr=torch.zeros((), device=device),
                    momentum=torch.zeros((), device=device),
                )
            )
        self.params = [q for g in self.groups for q in g.params]
        self.eager_steps = 0
        # the warm-up steps' stream: one for them all, so that they reuse each other's memory
        # (the allocator keeps freed blocks per stream)
        self.side_stream: torch.cuda.Stream | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, ...] = ()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model if len(x) == self.batch_size else self.odd_batch_model
        # autocast's cache of 16-bit weight copies must not outlive a capture; off in every step,
        # so that a compiled network sees the same autocast state and never recompiles
        with autocast(self.device, self.precision, cache=False):
            logits = model(x)
        loss = self.loss_fn(logits.float(), y)
        scaled = loss if self.loss_scale is None else self.loss_scale.scale_loss(loss)
        grads = list(
            torch.autograd.grad(scaled, self.params, allow_unused=True, materialize_grads=True)
        )
        skip = None
        if self.loss_scale is not None:
            self.loss_scale.unscale_(grads)
            skip = self.loss_scale.found_inf
        start = 0
        for g in self.groups:
            n = len(g.params)
            sgd_update(
                g.params, grads[start : start + n], g.buffers, g.lr, g.momentum,
                g.group["weight_decay"], g.group["nesterov"], skip=skip,
            )  # fmt: skip
            start += n
        if self.loss_scale is not None:
            self.loss_scale.update()
        return loss.detach(), logits.detach()

    def _load_hyperparameters(self) -> None:
        for g in self.groups:  # a fill with a Python number: a kernel launch, no sync
            g.lr.fill_(g.group["lr"])
            g.momentum.fill_(g.group["momentum"])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._load_hyperparameters()
        if not self.capture or len(x) != self.batch_size:
            return self._step(x, y)
        if self.graph is None:
            if self.eager_steps < self.warmup:
                self.eager_steps += 1
                return self._warmup_step(x, y)
            self._capture(x, y)
        assert self.graph is not None
        static_x, static_y, static_loss, static_logits = self._static
        static_x.copy_(x)
        static_y.copy_(y)
        with torch.cuda.device(self.device):  # replayed on the graph's device, whichever is current
            self.graph.replay()
        return static_loss, static_logits

    def _warmup_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step on a side stream, as PyTorch's CUDA graph recipe asks before capture."""
        main = torch.cuda.current_stream(self.device)
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(self.device)
        side = self.side_stream
        side.wait_stream(main)
        with torch.cuda.stream(side):
            loss, logits = self._step(x, y)
        main.wait_stream(side)
        for t in (loss, logits):  # used on the main stream: keep their memory until it is done
            t.record_stream(main)
        return loss, logits

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        static_x = torch.empty_like(x).copy_(x)
        static_y = torch.empty_like(y).copy_(y)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph's own capture stream belongs to the current device: on another
        # (cuda:1 while cuda:0 is current) nothing would be captured, so the capture gets a
        # stream of the model's device, with that device current
        with (
            torch.cuda.device(self.device),
            torch.cuda.graph(self.graph, stream=torch.cuda.Stream(self.device)),
        ):
            loss, logits = self._step(static_x, static_y)
        self._static = (static_x, static_y, loss, logits)
