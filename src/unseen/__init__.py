"""unseen: what an image classifier does with classes it never saw, and how to make it say "I don't know".

Library entry points::

    from unseen import RunConfig, load, run_experiment
    result = run_experiment(RunConfig(dataset="digits", holdout=("9",)))
    result.metrics["scores"]["energy"]["auroc"]

    predictor = load(result.run_dir)          # the model with its reject option
    predictor.predict(images)                 # known class index, or -1 for "unknown"
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING  # noqa: E402

from .config import RunConfig, resolve_config  # noqa: E402
from .errors import UnseenError  # noqa: E402

# The two entry points import torch only when called (``import unseen`` stays fast); their
# signatures repeat those of unseen.experiment.run_experiment and unseen.predict.load (a
# test checks that they match), so that help() and editors show them.
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .experiment import RunResult
    from .predict import Predictor


def run_experiment(
    cfg: RunConfig, progress: bool = True, log: Callable[[str], None] | None = print
) -> RunResult:
    """Train with ``cfg``'s classes held out, evaluate on the full test set, write a run
    folder and return a :class:`unseen.experiment.RunResult` (``run_dir``, ``config``,
    ``metrics``: the content of metrics.json, ``seconds``). ``log=None`` and
    ``progress=False`` make it silent. See :func:`unseen.experiment.run_experiment`."""
    from .experiment import run_experiment as _run

    return _run(cfg, progress=progress, log=log)


def load(
    run_dir: str | Path,
    *,
    head: str | None = None,
    score: str | None = None,
    threshold: float | None = None,
    known_acceptance: float | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 256,
) -> Predictor:
    """Restore a finished run folder as a :class:`unseen.predict.Predictor`: the model with
    its reject option (``predict(images)`` gives a known class index, or -1 for unknown).
    See :func:`unseen.predict.load` for the options."""
    from .predict import load as _load

    return _load(
        run_dir, head=head, score=score, threshold=threshold,
        known_acceptance=known_acceptance, device=device, precision=precision,
        batch_size=batch_size,
    )  # fmt: skip


__all__ = ["RunConfig", "UnseenError", "load", "resolve_config", "run_experiment", "__version__"]
