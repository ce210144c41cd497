"""On a GPU, import on a side thread what a run's report needs, while the GPU trains.

After training, a run that writes a report imports matplotlib (which builds its font cache
on a fresh machine) and scikit-learn's t-SNE. On the project's H200 machine these imports
are slow: ``import unseen.report`` took 2.0 s there (3.8 s on a fresh machine), against
0.9 s on the 2-core AMD EPYC CI machine (``benchmarks/startup.py``). While the GPU trains,
the run's main thread mostly waits for it, and PyTorch lets go of Python's GIL while it
waits, so a second thread can import these modules then instead of after training.
(Scikit-learn's other modules, and scipy, are imported before training by the split.)

On a CPU the training threads need every core: with the imports beside them, the default
digits run on the 2-core CI machine took 10.0-12.0 s instead of 9.2-9.3 s (two runs each), so
CPU runs import as before. The gain on the GPU is expected, not yet measured:
``benchmarks/gpu_check.sh`` times runs with and without it, and ``UNSEEN_PRELOAD=0`` turns
it off.

The imports are the ones the run makes anyway. One that fails here is left to fail again
where the run needs it, with the error it always gave.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: what writing a run's report imports: matplotlib (and its font cache), the t-SNE projection
REPORT_MODULES = (
    "unseen.report",
    "matplotlib.backends.backend_agg",
    "sklearn.decomposition",
    "sklearn.manifold",
)


#: values of ``UNSEEN_PRELOAD`` that turn preloading off (any case, spaces around ignored)
OFF = ("0", "false", "no", "off")


def modules_to_preload(device: torch.device, report: bool) -> tuple[str, ...]:
    """What a run on ``device`` imports while it trains: on a GPU, the report's modules when
    it writes one; nothing on a CPU, or with ``UNSEEN_PRELOAD=0`` (or false, no, off)."""
    off = os.environ.get("UNSEEN_PRELOAD", "").strip().lower() in OFF
    if device.type != "cuda" or not report or off:
        return ()
    return REPORT_MODULES


def preload(modules: Iterable[str]) -> threading.Thread | None:
    """Start importing ``modules``, in order, on a daemon thread; None when all are imported.

    Python's import lock makes this safe: a module the main thread asks for while the side
    thread is importing it is waited for, not imported twice. ``join()`` the thread to be
    sure it is done (:func:`importing` does)."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return None

    def work() -> None:
        for name in missing:
            # one that fails is imported again where the run needs it, and reported there
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=work, name="unseen-preload", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def importing(modules: Iterable[str]) -> Iterator[None]:
    """Import ``modules`` on a side thread while the block runs; on leaving it, also by an
    exception or Ctrl-C, wait for them, so that no import is left half done (a daemon thread
    stopped inside a C extension's import can abort the interpreter at exit) and the run's
    own imports after the block never race the thread's. A run stopped by Ctrl-C during
    its first seconds of training so waits up to the rest of these imports (seconds on the
    H200 machine) before it exits; its checkpoint is saved before that."""
    thread = preload(modules)
    try:
        yield
    finally:
        if thread is not None:
            thread.join()
