"""unseen: what an image classifier does with classes it never saw, and how to make it say "I don't know".

Library entry points::

    from unseen import RunConfig, load, run_experiment
    result = run_experiment(RunConfig(dataset="digits", holdout=("9",)))
    result.metrics["scores"]["energy"]["auroc"]

    predictor = load(result.run_dir)          # the model with its reject option
    predictor.predict(images)                 # known class index, or -1 for "unknown"
"""

__version__ = "0.1.0"

from .config import RunConfig, resolve_config  # noqa: E402
from .errors import UnseenError  # noqa: E402


def run_experiment(*args, **kwargs):  # noqa: D103 - thin lazy import keeps `import unseen` fast
    from .experiment import run_experiment as _run

    return _run(*args, **kwargs)


def load(*args, **kwargs):  # noqa: D103 - lazy; see unseen.predict.load
    """Restore a finished run folder as a Predictor (see :func:`unseen.predict.load`)."""
    from .predict import load as _load

    return _load(*args, **kwargs)


__all__ = ["RunConfig", "UnseenError", "load", "resolve_config", "run_experiment", "__version__"]
