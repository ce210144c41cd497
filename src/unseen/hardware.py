"""Device, precision and thread choices, detected at run time."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .console import counted
from .errors import ConfigError
from .threads import thread_budget


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``--device``: auto, cpu or cuda (from Python also ``cuda:1`` or a
    ``torch.device``); an unknown name is a :class:`ConfigError`."""
    if isinstance(name, torch.device):  # checked as its name is: a GPU that is not there
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {name!r} is not known; choose one of: auto, cpu, cuda."
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; choose one of: auto, cpu, cuda.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for, but PyTorch sees no CUDA GPU here; use 'cpu' or "
            "'auto' (--device cpu on the command line)."
        )
    if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
        raise ConfigError(
            f"device {name!r} was asked for, but PyTorch sees {count} CUDA GPU(s) here, "
            f"numbered from 0."
        )
    return device


# Native bf16 matrix units on x86 CPUs, fastest first: torch's probe, then the flag in
# /proc/cpuinfo. Without them (AVX2, or AVX-512 without BF16) oneDNN emulates bf16, slower than fp32.
_CPU_BF16_UNITS = (
    ("AMX", "_is_amx_tile_supported", "amx_bf16"),
    ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"),
)


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matrix instructions, ``"AMX"`` or ``"AVX512-BF16"``, or None.

    bf16 autocast pays on both: a ResNet-20 training step at 28 px ran about 2x (AMX, Xeon)
    and 1.5x (AVX512-BF16, AMD EPYC Zen 4) the fp32 rate on 2 cores."""
    flags = None
    for name, probe_name, flag in _CPU_BF16_UNITS:
        probe = getattr(torch.cpu, probe_name, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                if probe():
                    return name
                continue
        if flags is None:
            try:
                flags = Path("/proc/cpuinfo").read_text().split()
            except OSError:
                flags = []
        if flag in flags:
            return name
    return None


#: the 16-bit type each autocast precision (:data:`unseen.config.PRECISIONS`) computes in
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16', 'fp16' or 'fp32'. Auto picks bf16 on CUDA GPUs with native bf16 (compute
    capability 8.0, Ampere, or newer) and on CPUs with native bf16 units
    (:func:`cpu_bf16_units`); fp16 on CUDA GPUs with fp16 tensor cores but no native bf16
    (7.x: V100, T4, RTX 20); fp32 elsewhere. fp16 trains with loss scaling (see
    :mod:`unseen.train`); a CPU never picks it (no CPU this project knows has fp16 units)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        # torch's is_bf16_supported() also says yes for the slow emulation on older GPUs
        major = torch.cuda.get_device_capability(device)[0]
        return "bf16" if major >= 8 else "fp16" if major == 7 else "fp32"
    return "bf16" if device.type == "cpu" and cpu_bf16_units() else "fp32"


def precision_warning(precision: str, device: torch.device, resumed: bool = False) -> str | None:
    """What to tell a user who trains in ``precision`` on ``device`` where it is slow: fp16 on
    a CPU (emulated; no CPU this project knows has fp16 units). A ``resumed`` run keeps the
    precision it started in, so the advice differs."""
    if precision != "fp16" or device.type != "cpu":
        return None
    advice = (
        "a resumed run keeps the arithmetic it started in: finish it on a GPU, or start it "
        "again with --overwrite and --precision auto, bf16 or fp32"
        if resumed
        else "use --precision auto, bf16 or fp32 here"
    )
    return (
        "fp16 on a CPU is emulated: a ResNet-20 training step ran 18-24x slower than in fp32 "
        f"on a 2-core AMD EPYC; fp16 is meant for CUDA GPUs without native bf16 ({advice})"
    )


def scoring_warning(precision: str, device: torch.device) -> str | None:
    """What to tell a user who scores images with an fp16 run on a CPU (``unseen rescore``,
    ``unseen ood``): they keep the run's arithmetic, which the CPU emulates."""
    if precision != "fp16" or device.type != "cpu":
        return None
    return (
        "this run computes in fp16, which a CPU only emulates: its forward passes run several "
        "times slower than in fp32 (6x for a ResNet-20 on a 2-core AMD EPYC); on a GPU, "
        "--device cuda avoids it"
    )


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a GPU's kernels run asynchronously), so that a
    clock read afterwards times it; nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 or fp16 autocast context for the forward pass, or a no-op for fp32.

    ``cache=False`` turns off autocast's cache of 16-bit weight copies (required inside a CUDA
    graph capture)."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(
            device_type=device.type, dtype=AUTOCAST_DTYPES[precision], cache_enabled=cache
        )
    return contextlib.nullcontext()


def configure_threads() -> int:
    """Use the thread budget for torch's intra-op parallelism."""
    n = thread_budget()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    units = cpu_bf16_units()
    return f"cpu ({counted(torch.get_num_threads(), 'thread')}{f', {units}' if units else ''})"
