"""Runs that survive interruption: training checkpoints, resume, clean stops, safe weight loading.

A run writes ``checkpoint.pt`` into its (head's) folder at the end of an epoch, every
``--checkpoint-every`` seconds (30; 0: every epoch) and after the last epoch: the model,
optimiser and scheduler states, the torch RNG states (global and the training
``torch.Generator``), the history and the epoch reached. ``unseen run --resume --out DIR``
continues from it and, on the CPU with the same seed, ends with exactly the metrics of an
uninterrupted run. Ctrl-C (SIGINT) and SIGTERM do not kill training: they set a flag, the
loop finishes the current step, saves a checkpoint that includes the position inside the
epoch, and the process exits with 130 (SIGINT) or 143 (SIGTERM). A second signal stops at
once. The checkpoint is deleted when the run finishes (``model.pt`` keeps the final weights).

Every file is loaded with ``torch.load(weights_only=True)``: a pickle that carries code is
refused, and a file that is not what it should be gives one clear sentence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .config import FIELDS, PRECISIONS, RESULT_NEUTRAL_KEYS, with_field_defaults
from .console import warn
from .data import absolute_paths
from .errors import ConfigError, Interrupted, UnseenError
from .hardware import describe_device
from .runfolder import (
    FINISHED_FILE,
    is_finished,
    is_side_file,
    jsonable,
    load_torch,
    save_torch,
)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_KIND = "unseen-training-checkpoint"
CHECKPOINT_VERSION = 1

if TYPE_CHECKING:
    from .config import RunConfig

#: config keys that do not change a run's results: ``--resume`` accepts a difference in these;
#: and ``pretrained_weights``, how the weights fitted, which follows from options compared
#: anyway (and whose layout for several heads changed once)
RESUME_IGNORED_KEYS = frozenset(RESULT_NEUTRAL_KEYS) | {"pretrained_weights"}

#: exit codes of a run stopped by a signal (the shell's 128 + signal number)
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stateful(Protocol):
    """What a checkpoint saves of an optimiser, schedule or loss scale (``unseen.optim``'s or
    torch's)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class TrainingDiverged(UnseenError):
    """The training loss became NaN or infinite (exit code 2: usually a too-high --lr)."""


# ----------------------------------------------------------------------------- config check


def _canonical(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: frozenset[str] = RESUME_IGNORED_KEYS,
) -> list[str]:
    """Keys (outside ``ignore``) whose values differ, compared as JSON; absent counts as differing."""
    missing = object()
    keys = sorted((set(saved) | set(current)) - ignore)
    return [
        k
        for k in keys
        if (saved.get(k, missing) is missing)
        or (current.get(k, missing) is missing)
        or _canonical(saved[k]) != _canonical(current[k])
    ]


def _leaf_differences(key: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for each value that differs inside nested dicts."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            missing = "absent"
            out += _leaf_differences(f"{key}.{k}", a.get(k, missing), b.get(k, missing))
        return out
    return [] if _canonical(a) == _canonical(b) else [(key, a, b)]


def _short(value: Any, limit: int = 60) -> str:
    text = value if value == "absent" else _canonical(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_same_config(saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Refuse to resume when an option that changes results differs from the saved run.

    The message names the options that differ; what the run derived from them (the split,
    the augmentation's parameters) only when no option does, and then by the values inside
    that differ. Long values are shortened."""
    # paths compare as absolute: older run folders recorded them as given; options added
    # since an older run was saved count as their defaults
    saved = absolute_paths(with_field_defaults(saved, only=current))
    current = absolute_paths(current)
    differing = config_differences(saved, current)
    if not differing:
        return
    options = [k for k in differing if k in FIELDS] or differing
    leaves = [
        leaf
        for k in options
        for leaf in _leaf_differences(k, saved.get(k, "absent"), current.get(k, "absent"))
    ]
    detail = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in leaves[:6])
    more = f" and {len(leaves) - 6} more" if len(leaves) > 6 else ""
    raise ConfigError(
        f"cannot resume {where}: the options differ from the saved run in {detail}{more}; "
        "resume with the same options, or pass --overwrite to start again."
    )


def saved_config(run_dir: str | Path) -> RunConfig | None:
    """The options of the run in ``run_dir`` (its config.json), as the base that
    ``--resume`` starts from, so ``unseen run --resume --out DIR`` needs no other flag.
    None when the folder has no config.json."""
    from .config import RunConfig

    path = Path(run_dir) / "config.json"
    return RunConfig.from_run(path) if path.is_file() else None


# ----------------------------------------------------------------------------- run folder state


#: what a run writes in its folder (and in each head's subfolder); --overwrite removes these
RUN_FILES = (
    FINISHED_FILE, "metrics.json", "config.json", "model.pt", "detectors.pt", "scores.npz",
    "history.csv", "report.html", "report.md",
)  # fmt: skip


def _run_folders(run_dir: Path) -> list[Path]:
    """``run_dir`` and the subfolder of every head it has."""
    from .heads import HEADS

    return [run_dir] + [run_dir / h for h in HEADS if (run_dir / h).is_dir()]


def holds_run_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any file a run writes (finished or not), at the top or in
    a head's subfolder."""
    return any(
        any((folder / name).exists() for name in RUN_FILES) or any(folder.glob("checkpoint*.pt"))
        for folder in _run_folders(run_dir)
    )


def clear_run_state(run_dir: Path) -> None:
    """Forget an earlier run in ``run_dir`` (for ``--overwrite``): every file a run writes
    (:data:`RUN_FILES`, ``plots/``, checkpoints, and ``ood/``), at the top and in the subfolder of every head
    the old run may have had, whatever heads the new run has. A model left behind by the old
    run would otherwise be what ``unseen predict`` loads. Files of the user's own are kept."""
    import shutil

    for folder in _run_folders(run_dir):
        for name in RUN_FILES:
            (folder / name).unlink(missing_ok=True)
        for ckpt in folder.glob("checkpoint*.pt"):
            ckpt.unlink()
        for sub in ("plots", "ood"):  # the figures, and `unseen ood`'s results, of the old run
            if (folder / sub).is_dir():
                shutil.rmtree(folder / sub)
        if folder != run_dir and not any(folder.iterdir()):
            folder.rmdir()


def check_run_folder(run_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """What to do with ``--out``, decided before any work starts.

    Returns ``"new"`` (start a run), ``"resume"`` (continue an unfinished run) or
    ``"finished"`` (``--resume`` of a run that already finished: nothing to do). Raises a
    :class:`ConfigError` for a folder that holds a run when neither option allows it.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder.")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    if overwrite:  # the caller clears the old run once the options and data are known good
        return "new"
    finished = is_finished(run_dir)
    visible = any(not p.name.startswith(".") for p in run_dir.iterdir())  # not a temp file
    if resume and not finished and visible and not holds_run_files(run_dir):
        raise ConfigError(
            f"--resume: {run_dir} holds other files but no run to continue; check --out, "
            "or pass --overwrite instead to write a new run into it."
        )
    if resume:
        return "finished" if finished else "resume"
    if finished:
        raise ConfigError(
            f"{run_dir} already holds a finished run; pass --overwrite to replace it, "
            "or choose another --out."
        )
    if (run_dir / "config.json").is_file():
        raise ConfigError(
            f"{run_dir} holds an unfinished run; pass --resume to continue it, --overwrite "
            "to start it again, or choose another --out."
        )
    own = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    if all(is_side_file(p) for p in own) and not holds_run_files(run_dir):
        return "new"  # a log (`| tee DIR/run.log`), a config file or notes, and no run
    raise ConfigError(
        f"--out {run_dir} is a folder with other files in it, not a run folder; choose a new "
        "or empty folder, or pass --overwrite to write into it anyway."
    )


# ----------------------------------------------------------------------------- weights


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def state_dict_problems(model: torch.nn.Module, state: Any) -> str | None:
    """Why ``state`` cannot be loaded into ``model`` (None when it fits exactly)."""
    if not isinstance(state, Mapping):
        return f"it holds a {type(state).__name__}, not a state dict (names -> tensors)"
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"it is not a state dict: {', '.join(not_tensors[:3])} are not tensors"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    mismatched = [
        f"{k} is {_shape(state[k])}, the model needs {_shape(v)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} shapes do not fit ({'; '.join(mismatched[:2])})")
    if missing:
        parts.append(f"{len(missing)} weights are missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} are unknown (e.g. {', '.join(unexpected[:2])})")
    return "; ".join(parts) or None


def load_weights(model: torch.nn.Module, state: Any, source: str | Path) -> None:
    """Load a state dict into ``model`` strictly, or raise one clear :class:`UnseenError`.

    ``state`` may be a plain state dict or a dict holding one under ``state_dict`` (a
    run's ``model.pt``) or ``model`` (a training checkpoint).
    """
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    problem = state_dict_problems(model, state)
    if problem:
        raise UnseenError(f"the weights in {source} do not fit this model: {problem}.")
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- signals


#: a stop asked for outside training (set by a ``unseen sweep --jobs`` worker's signal
#: handler): training that starts afterwards stops at its first step, with a checkpoint
PENDING_STOP: int | None = None


class StopSignal:
    """While active, SIGINT and SIGTERM only record that a stop was asked for.

    The training loop polls :attr:`requested` at safe points. The first signal re-installs
    the previous handlers, so a second Ctrl-C or SIGTERM stops the process at once. Outside
    the main thread (where Python cannot install handlers) this does nothing. A
    :data:`PENDING_STOP` counts as a signal received.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = PENDING_STOP
        self._received: int | None = None  # by this handler, not PENDING_STOP
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = self._received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignal:
        if self.enabled:
            for signum in SIGNAL_EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._restore()
        if self._received is not None and exc_type is None:
            # a signal after training's last look (while the report's imports were waited
            # for, say): not lost, but passed on to the handler it would have met, so the
            # process stops as by a signal after training (a sweep: SigtermStop)
            signum, self._received = self._received, None
            signal.raise_signal(signum)


@contextlib.contextmanager
def catch_signals(checkpoint: Checkpointing | None) -> Iterator[None]:
    """While training with ``checkpoint``, turn SIGINT/SIGTERM into a clean stop request."""
    if checkpoint is None:
        yield
        return
    with StopSignal() as stop:
        checkpoint.stop = stop
        try:
            yield
        finally:
            checkpoint.stop = None


class SigtermStop(KeyboardInterrupt):
    """SIGTERM under :func:`sigterm_raises`. A ``KeyboardInterrupt`` (a ``BaseException``),
    so that no ``except Exception`` or ``except UnseenError`` on its way (a damaged file
    taken for a failed far-OOD result, a failed run) swallows it; the places that catch
    Ctrl-C turn it into :class:`Interrupted` with its ``exit_code``."""

    exit_code = SIGNAL_EXIT_CODES[signal.SIGTERM]


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises :class:`SigtermStop` (exit code 143) where the process
    is, as Ctrl-C raises ``KeyboardInterrupt``: the code around can say how to go on (a
    sweep's ``--jobs`` workers are stopped, a finished run's ``--ood`` scoring says that
    ``--resume`` completes it) instead of the process ending silently. Outside the main
    thread (where Python cannot install handlers), or where SIGTERM has a handler already
    (a sweep's ``--jobs`` worker: it finishes the run in progress), this does nothing."""
    is_main = threading.current_thread() is threading.main_thread()
    if not is_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SigtermStop("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- divergence


class FiniteGuard:
    """Remembers the first training step whose loss was NaN or infinite, without a device sync.

    ``update`` runs a few tiny tensor operations on the loss's device every step; ``check``
    reads the result (one sync), so the loop may call it once per epoch and still report
    the exact step.
    """

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, global_step: int) -> None:
        loss = loss.detach().float()
        new = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step.masked_fill_(new, global_step)
        self.value = torch.where(new, loss, self.value)

    def first_bad(self) -> tuple[int, float] | None:
        """``(global step, loss value)`` of the first non-finite loss, or None."""
        step = int(self.first_step)
        return None if step < 0 else (step, float(self.value))


# ----------------------------------------------------------------------------- checkpoints


#: what a resume says when the checkpoint's generator state could not be restored
RESEEDED = (
    "the rest of the epoch in progress is augmented, and the epochs after it are shuffled and "
    "augmented, from a new seed (a GPU's random generator state does not fit a CPU's "
    "generator, nor the other way round)"
)


def restore_generator(generator: torch.Generator, state: dict[str, Any], seed: int) -> bool:
    """Give ``generator`` (the one that draws batches and augmentation, first seeded with
    ``seed``) the checkpoint's state, and return False. When the checkpoint was saved on
    another kind of device (a run interrupted on a GPU resumed on a CPU, or the other way
    round: a CUDA generator's state is 16 bytes, a CPU generator's 5,056, and neither takes
    the other's), seed it anew from ``seed`` and the position instead, the same way every
    time, and return True: the epoch in progress keeps its saved batch order, and the rest of
    its augmentation and the epochs after it draw from the new seed. A state that does not
    fit on the same kind of device is an error, as it always was."""
    saved_on = str(state.get("computed_on") or "").split(" ", 1)[0]  # "cpu", "cuda", or ""
    if saved_on not in ("cpu", "cuda") or saved_on == generator.device.type:
        generator.set_state(state["generator"])
        return False
    position = (int(seed) * 1_000_003 + int(state["epoch"])) * 1_000_003 + int(state["step"])
    generator.manual_seed(position % 2**63)
    return True


@dataclass
class Position:
    """Where a (resumed) training run continues: 0-based epoch and the next step in it."""

    epoch: int = 0
    step: int = 0
    #: the permutation and running sums of a partly done epoch (when ``step > 0``)
    epoch_state: dict[str, Any] | None = None
    #: training seconds and wall-clock seconds spent before the interruption
    train_seconds: float = 0.0
    wall_seconds: float = 0.0


_WRITER: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    """The one thread that writes background checkpoints (joined at interpreter exit)."""
    global _WRITER
    if _WRITER is None:
        _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unseen-checkpoint")
    return _WRITER


def to_cpu(obj: Any, copy: bool = False) -> Any:
    """``obj`` with every tensor in it (through dicts, lists and tuples) detached and on the CPU.

    With ``copy``, the result never shares memory with ``obj``: CPU tensors are copied too and
    other values deep-copied (a snapshot that later in-place updates cannot reach)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=copy)
    if isinstance(obj, dict):
        return {k: to_cpu(v, copy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v, copy) for v in obj)
    return deepcopy(obj) if copy else obj


@dataclass
class Checkpointing:
    """Where a training run saves its checkpoint, and whether to start from it.

    ``config`` (the run's resolved options) is stored in the checkpoint and must match on
    resume; ``resume_hint`` is the command that continues the run, for messages.
    """

    path: Path
    config: dict[str, Any]
    resume: bool = False
    resume_hint: str = ""
    #: the active signal catcher whose flag the training loop polls (None: signals act as usual)
    stop: StopSignal | None = None
    #: seconds between end-of-epoch checkpoints (``--checkpoint-every``; 0: every epoch)
    every: float = 0.0
    #: what the run trains on (:func:`data_fingerprint`): stored, and on resume it must match
    data: dict[str, Any] = field(default_factory=dict)
    #: the arithmetic the run trains in, as resolved (bf16, fp16 or fp32): stored, so that a
    #: resume keeps it (:func:`resumed_precision`) wherever ``--precision auto`` would now resolve
    precision: str = ""
    #: where a resume's warning goes: stderr, whatever --quiet or a sweep does with the log
    warn: Callable[[str], None] = field(default=warn)
    #: a checkpoint still being written in the background (see ``save(background=True)``)
    _pending: Future | None = field(default=None, init=False, repr=False, compare=False)
    #: when the last checkpoint was saved (or training started), ``time.monotonic()``
    _last_saved: float = field(default_factory=time.monotonic, repr=False, compare=False)

    def member(self, k: int) -> Checkpointing:
        """The checkpoint of the k-th network of a head that trains several in turn."""
        path = self.path.with_name(f"{self.path.stem}-{k}{self.path.suffix}")
        return dataclasses.replace(self, path=path)

    def due(self) -> bool:
        """Whether an end-of-epoch checkpoint is due: ``every`` seconds have passed since the
        last one (or since training started)."""
        return time.monotonic() - self._last_saved >= self.every

    def stop_requested(self) -> int | None:
        """The signal number of a pending stop request, or None."""
        return None if self.stop is None else self.stop.requested

    def remove(self) -> None:
        """Delete this checkpoint and those of its members (after the run has finished)."""
        for p in self.path.parent.glob(f"{self.path.stem}*{self.path.suffix}"):
            p.unlink(missing_ok=True)

    def save(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Stateful,
        scheduler: Stateful,
        generator: torch.Generator,
        history: list[dict],
        images_seen: int,
        train_seconds: float,
        epoch: int,
        step: int,
        epoch_state: dict[str, Any] | None,
        wall_seconds: float = 0.0,
        background: bool = False,
        loss_scale: Stateful | None = None,
    ) -> float:
        """Write the checkpoint atomically; return the seconds it took.

        ``epoch`` is the 0-based epoch to continue with and ``step`` the next step in it;
        ``epoch_state`` holds that epoch's permutation and running sums when ``step > 0``;
        ``loss_scale`` is fp16's (:class:`unseen.optim.LossScale`).

        With ``background``, the state is copied to the CPU now and written by a writer
        thread while training goes on; the returned seconds are those of the copy. The next
        ``save`` (and :meth:`wait`) first waits for the previous write, so at most one is in
        flight and the file on disk is always a complete checkpoint.
        """
        start = time.perf_counter()
        device = generator.device
        weights = {k: v.detach() for k, v in model.state_dict().items()}
        state = {
            "kind": CHECKPOINT_KIND,
            "format_version": CHECKPOINT_VERSION,
            "config": self.config,
            "epoch": epoch,
            "step": step,
            # copied to the CPU once: here, or by the background snapshot below
            "model": weights if background else to_cpu(weights),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loss_scale": None if loss_scale is None else loss_scale.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "generator": generator.get_state(),
            "history": history,
            "images_seen": images_seen,
            "train_seconds": train_seconds,
            "wall_seconds": wall_seconds,
            "epoch_state": to_cpu(epoch_state),
            # what the arithmetic ran on: a resume elsewhere cannot repeat it bit for bit
            "computed_on": computed_on(device),
            "precision": self.precision,
            "data": self.data,
        }
        self.wait()
        if background:  # a snapshot the training loop cannot change while it is written
            self._pending = _writer().submit(save_torch, self.path, to_cpu(state, copy=True))
        else:
            save_torch(self.path, state)
        self._last_saved = time.monotonic()
        return time.perf_counter() - start

    def wait(self) -> None:
        """Block until a background write has finished (re-raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load(self) -> dict[str, Any] | None:
        """The saved training state when resuming and a checkpoint exists, else None."""
        if not self.resume or not self.path.is_file():
            return None
        try:
            state = load_torch(self.path)
        except UnseenError as exc:  # retrying cannot help: say how to start the run again
            raise UnseenError(
                f"{str(exc).rstrip('.')}; delete it to train this run from the start (a sweep "
                "then reruns it), or pass --overwrite."
            ) from None
        required = ("model", "optimizer", "scheduler", "generator", "torch_rng", "epoch", "step")
        if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
            raise UnseenError(
                f"{self.path} is not an unseen training checkpoint; delete it or pass --overwrite."
            )
        missing = [k for k in required if k not in state]
        if state.get("format_version") != CHECKPOINT_VERSION or missing:
            raise UnseenError(
                f"{self.path} was written by another version of unseen (format "
                f"{state.get('format_version')!r}); pass --overwrite to start again."
            )
        check_same_config(state.get("config") or {}, self.config, self.path)
        before = state.get("data")
        if before and self.data and before != self.data:  # the files changed during the pause
            then, now = before.get("images"), self.data.get("images")
            counts = f" ({then} training images then, {now} now)" if then != now else ""
            raise UnseenError(
                f"cannot resume {self.path.parent}: its training and validation images changed "
                f"since the run started{counts}; restore them, or pass --overwrite to start again."
            )
        return state

    def start(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Stateful,
        scheduler: Stateful,
        generator: torch.Generator,
        result: Any,
        seed: int = 0,
        epochs: int | None = None,
        loss_scale: Stateful | None = None,
    ) -> Position:
        """Where training starts: from the checkpoint when resuming (model, optimiser,
        scheduler, fp16's ``loss_scale``, RNGs, ``result.history`` and ``result.images_seen``
        restored), else at 0.
        ``seed`` is the one ``generator`` was seeded with and ``epochs`` the training's length
        (see :func:`restore_generator`)."""
        self._last_saved = time.monotonic()
        state = self.load()
        if state is None:
            return Position()
        load_weights(model, state["model"], self.path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if loss_scale is not None and state.get("loss_scale"):
                loss_scale.load_state_dict(state["loss_scale"])
            torch.set_rng_state(state["torch_rng"])
            reseeded = restore_generator(generator, state, seed)
            if epochs is not None and int(state["epoch"]) >= epochs:
                reseeded = False  # nothing is left to draw: no need to say so
            if state.get("cuda_rng") is not None and generator.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], generator.device)
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnseenError(
                f"{self.path} does not fit this run ({first[:160]}); pass --overwrite to start again."
            ) from None
        before, now = state.get("computed_on"), computed_on(generator.device)
        # versions before 2026-11-29 did not name AVX512-BF16 units: the same machine
        if before is not None and before not in (now, now.replace(", AVX512-BF16)", ")")):
            self.warn(
                f"this run trained on {before} and resumes on {now}; a different "
                "thread count, device or torch version rounds differently, so the results "
                "will not equal those of an uninterrupted run bit for bit"
                + (f", and {RESEEDED}" if reseeded else "")
            )
        elif reseeded:
            self.warn(f"{self.path} resumes on {now}: {RESEEDED}")
        result.history = list(state.get("history") or [])
        result.images_seen = int(state.get("images_seen") or 0)
        # wall-clock seconds at the save (inside an epoch, its steps so far count too); a
        # checkpoint of an older version has only the history's last end of epoch
        wall = state.get("wall_seconds")
        if wall is None:
            wall = result.history[-1]["seconds"] if result.history else 0.0
        return Position(
            epoch=int(state["epoch"]),
            step=int(state["step"]),
            epoch_state=state.get("epoch_state"),
            train_seconds=float(state.get("train_seconds") or 0.0),
            wall_seconds=float(wall),
        )

    def interrupted(self, epoch: int, step: int, steps: int) -> Interrupted:
        """The error ending a run stopped by a signal, once the checkpoint is saved."""
        self.wait()  # on disk before the message says so
        signum = self.stop_requested() or signal.SIGINT
        name = signal.Signals(signum).name
        where = (
            f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1}, step {step} of {steps}"
        )
        hint = f"; continue with: {self.resume_hint}" if self.resume_hint else ""
        return Interrupted(
            f"stopped by {name} {where}; checkpoint saved to {self.path}{hint}",
            SIGNAL_EXIT_CODES.get(signal.Signals(signum), 128 + signum),
        )


def data_fingerprint(*tensors: torch.Tensor) -> dict[str, Any]:
    """What ``--resume`` checks the data against: the number of images (the first tensor's
    length) and a CRC-32 of every tensor's bytes (0.02 s for Fashion-MNIST's training set)."""
    import zlib

    crc = 0
    for t in tensors:
        if t.numel():  # (a view of no bytes cannot be cast)
            crc = zlib.crc32(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"), crc)
    return {"images": len(tensors[0]), "crc32": crc}


def resumed_precision(run_dir: str | Path, device: torch.device | None = None) -> str | None:
    """The arithmetic an interrupted run trained in, from its checkpoint (or a head's), which
    its ``--resume`` keeps: ``bf16``, ``fp16`` or ``fp32``. A checkpoint of a version that did
    not record it gets what that version's ``auto`` chose: on a CPU, bf16 with AMX, else fp32;
    on a GPU, resumed on the CUDA ``device``, bf16 from compute capability 8.0 on, else fp32
    (never fp16). None for such a GPU checkpoint resumed elsewhere, or without a readable
    checkpoint."""
    run_dir = Path(run_dir)
    stem, suffix = Path(CHECKPOINT_FILE).stem, Path(CHECKPOINT_FILE).suffix
    for path in sorted({*run_dir.glob(f"{stem}*{suffix}"), *run_dir.glob(f"*/{stem}*{suffix}")}):
        try:  # mmap: the pickle is read, the weights are not
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - the resume itself names a damaged checkpoint
            continue
        if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
            continue
        if state.get("precision") in PRECISIONS:
            return str(state["precision"])
        where = str(state.get("computed_on") or "")
        if where.startswith("cpu"):
            return "bf16" if "AMX" in where else "fp32"
        if device is not None and device.type == "cuda":
            return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
        return None
    return None


def computed_on(device: torch.device) -> str:
    """The device (a CPU with its thread count), and the torch version: what decides the
    rounding of a run's arithmetic, e.g. ``cpu (2 threads, AMX), torch 2.14.1``."""
    return f"{describe_device(device)}, torch {torch.__version__}"


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer (batch-norm statistics) is finite;
    one device sync."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


def diverged(
    epoch: int,
    step: int,
    steps: int,
    value: float | None,
    lr: float,
    checkpoint: Checkpointing | None,
    auto_lr: float | None = None,
) -> TrainingDiverged:
    """The message for a loss that stopped being finite at (0-based) ``epoch``/``step``, or,
    with ``value`` None, for weights that did while the losses stayed finite (the update
    after step ``step``)."""
    what = (
        f"the loss became {value} in epoch {epoch + 1}, step {step + 1} of {steps}"
        if value is not None
        else f"the weights became NaN or infinite by epoch {epoch + 1}, step {step + 1} of "
        f"{steps}, though every loss was finite"
    )
    kept = ""
    if checkpoint is not None:
        failed = ""
        try:  # a checkpoint still being written in the background is on disk first
            checkpoint.wait()
        except Exception as exc:  # the write failed (a full disk): the file is the one before
            failed = f" (the last write failed: {type(exc).__name__}: {exc})"
        kept = (
            f"; the last good checkpoint is kept in {checkpoint.path}{failed}"
            if checkpoint.path.is_file()
            else f"; no checkpoint had been saved yet{failed}"
        )
    # a tenth of it, or --lr auto's value for this batch where that is lower (--lr 1e6)
    if auto_lr is not None and auto_lr < lr / 10:
        suggest = f"--lr {auto_lr:g}, auto's value for this batch size"
    else:
        suggest = f"--lr {lr / 10:g}"
    return TrainingDiverged(
        f"training diverged: {what}; lower the learning rate (--lr {lr:g} now, try "
        f"{suggest}) and start again{' with --overwrite' if checkpoint is not None else ''}"
        f"{kept}."
    )
