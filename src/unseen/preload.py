"""On a GPU, import on a side thread what a run needs after training, while the GPU trains.

After training, a run imports scikit-learn's metrics and scipy for its scores and, for its
report, matplotlib and scikit-learn's t-SNE. On the project's H200 machine Python imports are
slow: unseen's report module took 2.0 s to import (3.8 s on a fresh machine, where matplotlib
first builds its font cache), against 0.9 s on a 2-core laptop CPU (``benchmarks/startup.py``).
While the GPU trains, the run's main thread mostly waits for it, and PyTorch lets go of
Python's GIL while it waits, so a second thread can import these modules then instead of
after training.

On a CPU the training threads need every core: with the imports beside them, the default
digits run on the 2-core CI machine took 10.0-12.0 s instead of 9.2-9.3 s (two runs each), so
CPU runs import as before. The gain on the GPU is expected, not yet measured:
``benchmarks/gpu_check.sh`` times a run with and without it.

The imports are the ones the run makes anyway. One that fails here is left to fail again
where the run needs it, with the error it always gave.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: what a run imports after training for its metrics and scores
METRICS_MODULES = ("sklearn.metrics", "scipy.stats")
#: what writing a run's report imports: matplotlib (and its font cache), the t-SNE projection
REPORT_MODULES = (
    "unseen.report",
    "matplotlib.backends.backend_agg",
    "sklearn.decomposition",
    "sklearn.manifold",
)


def modules_to_preload(device: torch.device, report: bool) -> tuple[str, ...]:
    """What a run on ``device`` imports while it trains: on a GPU the metrics' modules, and
    the report's when it writes one; nothing on a CPU."""
    if device.type != "cuda":
        return ()
    return METRICS_MODULES + (REPORT_MODULES if report else ())


def preload(modules: Iterable[str]) -> threading.Thread | None:
    """Start importing ``modules``, in order, on a daemon thread; None when all are imported.

    Python's import lock makes this safe: a module the main thread asks for while the side
    thread is importing it is waited for, not imported twice. ``join()`` the thread to be
    sure it is done."""
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
