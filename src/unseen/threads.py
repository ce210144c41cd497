"""How many threads a process should use; without torch, so that the report's t-SNE thread
can start before torch is imported."""

from __future__ import annotations

import contextlib
import os

#: environment variable that sets the threads of one run (set by `unseen sweep --jobs N`)
THREADS_ENV = "UNSEEN_NUM_THREADS"


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_budget() -> int:
    """Threads this process should use: every core it may run on, or $UNSEEN_NUM_THREADS
    (which sweeps with --jobs set per worker)."""
    n = available_cores()
    with contextlib.suppress(ValueError):
        n = max(1, int(os.environ.get(THREADS_ENV, n)))
    return n
