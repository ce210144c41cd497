"""Rejection scores: one registry, one sign convention.

**Every score is oriented so that a higher value means "more likely a known class".**
Scores that are naturally "higher = more unusual" (entropy, distances) are negated.
A score is an object in the manner of a scikit-learn estimator: ``fit(context)`` learns
its state from known-class data only (training or validation outputs, never test or
unseen images), stores it in attributes ending in ``_`` and returns ``self``;
``score(outputs)`` maps a batch of network outputs to one number per image.
Scores work on torch tensors on whatever device the outputs live on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import ConfigError


@dataclass
class Outputs:
    """What one forward pass gives for a set of images."""

    logits: torch.Tensor  # N x K, float32
    features: torch.Tensor  # N x D, float32
    labels: torch.Tensor | None = None  # N, 0..K-1 for known, -1 unseen (None when unknown)

    def __len__(self) -> int:
        return int(self.logits.shape[0])


@dataclass
class FitContext:
    """Everything a score may learn from: known-class data and the model's head."""

    train: Outputs | None  # known-class training images without augmentation (None unless asked)
    val: Outputs  # the validation slice (known classes only)
    head_weight: torch.Tensor  # K x D
    head_bias: torch.Tensor  # K
    head: str = "softmax"


class Score:
    """Base class: override ``score``; override ``fit`` when the score learns state."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True when ``fit`` needs features of the known training images (an extra forward pass)
    needs_train: ClassVar[bool] = False
    #: True when computing the score needs the model itself (e.g. input perturbation)
    needs_model: ClassVar[bool] = False

    def fit(self, context: FitContext) -> Score:
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        raise NotImplementedError

    def fitted_state(self) -> dict[str, Any]:
        """The learned attributes (names ending in ``_``), for the run folder."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def load_fitted_state(self, state: dict[str, Any]) -> Score:
        for k, v in state.items():
            setattr(self, k, v)
        return self


# ----------------------------------------------------------------------------- logit scores


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Largest softmax probability (Hendrycks and Gimpel 2017)."""
    return logits.float().softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al. 2022)."""
    return logits.float().amax(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al. 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Minus the entropy of the softmax distribution (sum p log p)."""
    logp = logits.float().log_softmax(dim=1)
    return (logp.exp() * logp).sum(dim=1)


class LogitScore(Score):
    """A score that is a fixed function of the logits."""

    fn: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def score(self, outputs: Outputs) -> torch.Tensor:
        return type(self).fn(outputs.logits)


def logit_score(
    name: str, fn: Callable[[torch.Tensor], torch.Tensor], description: str
) -> type[Score]:
    return type(
        name, (LogitScore,), {"name": name, "fn": staticmethod(fn), "description": description}
    )


#: name -> Score class; ``unseen scores`` lists it, ``--scores all`` runs all of it
SCORES: dict[str, type[Score]] = {}


def register(cls: type[Score]) -> type[Score]:
    SCORES[cls.name] = cls
    return cls


register(logit_score("msp", max_softmax, "maximum softmax probability"))
register(logit_score("maxlogit", max_logit, "maximum logit"))
register(logit_score("energy", energy, "negative free energy, logsumexp of the logits"))
register(logit_score("entropy", negative_entropy, "negative entropy of the softmax"))


# ----------------------------------------------------------------------------- helpers


def expand_score_names(names: Iterable[str]) -> list[str]:
    """Resolve 'all' and check names against the registry, keeping order, dropping repeats."""
    out: list[str] = []
    for n in names:
        for name in SCORES if n == "all" else [n]:
            if name not in SCORES:
                raise ConfigError(
                    f"--scores {name!r} is not known; choose from: {', '.join(SCORES)}, or all."
                )
            if name not in out:
                out.append(name)
    return out


def check_score_names(names: Iterable[str]) -> None:
    if not expand_score_names(names):
        raise ConfigError(
            f"--scores needs at least one score; choose from: {', '.join(SCORES)}, or all."
        )


def create_score(name: str) -> Score:
    expand_score_names([name])
    return SCORES[name]()
