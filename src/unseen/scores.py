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

import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import ConfigError, InputError, NotFittedError, SettingError

if sys.version_info >= (3, 11):
    from typing import Self
else:  # typing_extensions comes with torch
    from typing_extensions import Self


@dataclass
class Outputs:
    """What one forward pass gives for a set of images.

    Any array-like is accepted (NumPy arrays of your own model's outputs, lists): logits and
    features become float tensors, labels int64 tensors, on the device they are on. Logits
    alone (``features=None``) serve the scores of logits (msp, maxlogit, energy, entropy,
    temperature, gen, openmax); the feature scores say that they need features."""

    logits: torch.Tensor  # N x K, floating point (integers become float32; others keep their dtype)
    features: torch.Tensor | None = None  # N x D, as logits; scores cast what they compute with
    labels: torch.Tensor | None = None  # N, 0..K-1 for known, -1 unseen (None when unknown)

    def __post_init__(self) -> None:
        for name in ("logits", "features"):
            if name == "features" and self.features is None:
                continue
            value = _tensor(getattr(self, name), f"Outputs.{name}")
            if value.ndim != 2:
                width = "K (classes)" if name == "logits" else "D (features)"
                raise InputError(f"Outputs.{name} must be N x {width}, not {tuple(value.shape)}")
            if not value.is_floating_point():
                value = value.float()
            setattr(self, name, value)
        if self.features is not None and len(self.features) != len(self.logits):
            raise InputError(
                f"Outputs has {len(self.logits)} rows of logits but {len(self.features)} of features"
            )
        if self.labels is not None:
            labels = _tensor(self.labels, "Outputs.labels")
            whole = not labels.is_floating_point() or bool(
                (labels.isfinite() & (labels == labels.round()) & (labels.abs() < 2**53)).all()
            )
            if not whole or labels.dtype == torch.bool or labels.ndim != 1:
                raise InputError("Outputs.labels must be one integer class per row (-1: unseen)")
            if len(labels) != len(self.logits):
                raise InputError(
                    f"Outputs has {len(self.logits)} rows of logits but {len(labels)} labels"
                )
            self.labels = labels.long()

    def __len__(self) -> int:
        return int(self.logits.shape[0])


def _tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` as a tensor outside autograd (outputs computed with gradients, a head's
    parameters): scores are numbers, never part of a graph."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name} must be an array of numbers ({exc})") from None


@dataclass
class FitContext:
    """Everything a score may learn from: known-class data and the model's head.

    Only what a score uses must be there: mahalanobis, rmd and openmax need ``train`` with
    labels, knn ``train`` without them, temperature ``val``, and vim, react, dice, ash and
    scale the head's weight and bias (docs/detectors.md has the table). Without a head, the
    number of known classes is the logits' width; the head, ``train`` and ``val`` must agree
    on it."""

    train: Outputs | None = None  # known-class training images without augmentation
    val: Outputs | None = None  # the validation slice (known classes only)
    head_weight: torch.Tensor | None = None  # K x D
    head_bias: torch.Tensor | None = None  # K
    head: str = "softmax"
    #: results that several scores fit from the same data (e.g. the class Gaussians that
    #: mahalanobis and rmd share), computed by the first score that needs them
    shared: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("head_weight", "head_bias"):  # NumPy arrays of your own head welcome
            value = getattr(self, name)
            if value is not None:  # a copy: a fitted score must not change with the model
                value = _tensor(value, f"FitContext.{name}").float().clone()
                setattr(self, name, value)
        w, b = self.head_weight, self.head_bias
        if w is not None and w.ndim != 2:
            raise InputError(f"FitContext.head_weight must be K x D, not {tuple(w.shape)}")
        if b is not None and (b.ndim != 1 or (w is not None and len(b) != len(w))):
            k = f"{len(w)}" if w is not None else "K"
            raise InputError(f"FitContext.head_bias must hold {k} values, not {tuple(b.shape)}")
        widths = {
            n: o.logits.shape[1]
            for n, o in (("train", self.train), ("val", self.val))
            if o is not None
        }
        if w is not None:
            widths = {"head": len(w), **widths}
        if len(set(widths.values())) > 1:
            said = ", ".join(f"{n} {k}" for n, k in widths.items())
            raise InputError(f"FitContext's class counts differ ({said}): give one model's outputs")
        for name in ("train", "val"):
            outputs = getattr(self, name)
            if outputs is None:
                continue
            if (
                w is not None
                and outputs.features is not None
                and outputs.features.shape[1] != w.shape[1]
            ):
                raise InputError(
                    f"FitContext.{name} has {outputs.features.shape[1]} features per image, "
                    f"but the head takes {w.shape[1]}"
                )
            for part in ("features", "logits"):
                values = getattr(outputs, part)
                # a sum is finite when every value is (and cheap); count only when it is not
                if values is None or bool(values.sum().isfinite()):
                    continue
                if bad := int((~values.isfinite()).sum()):
                    raise InputError(
                        f"FitContext.{name}.{part} holds {bad} values that are not finite (NaN "
                        "or infinite): no score can be fitted on them"
                    )

    @property
    def num_classes(self) -> int:
        """K, the number of known classes: rows of the head, else the logits' width."""
        if self.head_weight is not None:
            return int(self.head_weight.shape[0])
        for outputs in (self.train, self.val):
            if outputs is not None:
                return int(outputs.logits.shape[1])
        raise InputError("FitContext holds neither a head nor any outputs")


class Score:
    """Base class: override ``score``; override ``fit`` when the score learns state."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True when ``fit`` needs features of the known training images (an extra forward pass)
    needs_train: ClassVar[bool] = False
    #: True when computing the score needs the model itself (e.g. input perturbation)
    needs_model: ClassVar[bool] = False
    #: True when the score only makes sense on one-vs-rest (sigmoid) logits
    one_vs_rest_only: ClassVar[bool] = False
    #: False for costly scores (e.g. ODIN's extra passes) that ``--scores all`` leaves out;
    #: they run only when named
    in_all: ClassVar[bool] = True
    #: True for a score whose ``score`` works without ``fit`` (a fit that only checks the
    #: context, or fixed settings)
    stateless: ClassVar[bool] = False
    #: True when ``score`` reads the penultimate features, not only the logits
    uses_features: ClassVar[bool] = False
    #: False when ``score`` ignores the logits (a feature score, or one applying its own copy
    #: of the head); a fitted score that reads them checks their width against the fit's
    reads_logits: ClassVar[bool] = True
    #: the RunConfig fields (options) that set the score, read by ``from_config``
    options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a score that learns state refuses to score before it has learnt it, in one clear
        # sentence instead of an AttributeError on the first missing attribute: its fit (or
        # load_fitted_state) marks it fitted, its score checks the mark
        super().__init_subclass__(**kwargs)
        if "fit" in vars(cls):
            cls.fit = _marks_fitted(vars(cls)["fit"])
        if "score" in vars(cls) and cls.uses_features:
            cls.score = _with_features(vars(cls)["score"])
        if cls.fit is not Score.fit and "score" in vars(cls) and not cls.stateless:
            cls.score = _after_fit(vars(cls)["score"])

    @classmethod
    def from_config(cls, config: Any) -> Self:
        """Build the score with its settings taken from a RunConfig (default: no settings)."""
        return cls()

    def fit(self, context: FitContext) -> Self:
        """Learn the score's state from known-class data in ``context``; returns ``self``."""
        return self

    @classmethod
    def _param_names(cls) -> list[str]:
        if cls.__init__ is object.__init__:
            return []
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, as scikit-learn's estimators give them (so that
        ``sklearn.base.clone`` makes an unfitted copy)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change constructor arguments, checked as the constructor checks them; the fitted
        state is kept until the next ``fit``. Returns ``self``."""
        if unknown := sorted(set(params) - set(self._param_names())):
            valid = ", ".join(self._param_names()) or "none"
            raise InputError(
                f"score '{self.name}' has no setting {unknown[0]!r}; its settings: {valid}"
            )
        checked = type(self)(**{**self.get_params(), **params})
        for name in params:
            setattr(self, name, getattr(checked, name))
        return self

    def __repr__(self) -> str:
        # a score of one's own may keep its arguments under other names: shown without them
        params = {n: getattr(self, n) for n in self._param_names() if hasattr(self, n)}
        args = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({args})"

    def decision_threshold(self) -> float | None:
        """The threshold of the score's own accept/reject rule, or None (the default) when the
        open-set metrics should calibrate one on the validation slice (``--known-acceptance``)."""
        return None

    def score(self, outputs: Outputs) -> torch.Tensor:
        """One score per image of ``outputs``: higher = more likely a known class."""
        raise NotImplementedError

    def score_images(
        self,
        model: Any,
        images: torch.Tensor,
        device: Any = "cpu",
        precision: str = "fp32",
        desc: str | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """For ``needs_model`` scores: score uint8 ``images`` by running ``model`` again,
        ``batch_size`` at a time (with ``desc``, behind a progress bar of that name on a
        terminal)."""
        raise NotImplementedError(f"score '{self.name}' scores outputs, not images")

    def accepts(self, outputs: Outputs) -> torch.Tensor | None:
        """The score's own accept (True = known) rule when it has one that is not a threshold
        on the score (OpenMax: known unless "unknown" wins); None otherwise."""
        return None

    def own_prediction(self, outputs: Outputs) -> torch.Tensor | None:
        """The known class (0..K-1) the score's own rule assigns to an accepted image, when it
        is not the head's argmax (OpenMax: the argmax of the recalibrated probabilities)."""
        return None

    def fitted_state(self) -> dict[str, Any]:
        """The learned attributes (names ending in ``_``), for the run folder."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def fit_summary(self) -> dict[str, Any]:
        """The JSON-friendly scalars of the fitted state (T, k, clip value...), for metrics.json."""
        out: dict[str, Any] = {}
        for k, v in self.fitted_state().items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, (bool, int, float, str)):
                out[k.rstrip("_")] = v
        return out

    def load_fitted_state(self, state: dict[str, Any]) -> Self:
        for k, v in state.items():
            setattr(self, k, v)
        self._fitted = bool(state)  # an empty (damaged) state leaves the score unfitted
        return self


def _marks_fitted(fit: Callable[[Score, FitContext], Score]) -> Callable:
    @functools.wraps(fit)
    def marking(self: Score, context: FitContext) -> Score:
        # marked first, so that a fit may call score (to calibrate on its own outputs, say);
        # a fit that fails leaves the mark as it was
        before = getattr(self, "_fitted", False)
        self._fitted = True
        try:
            fitted = fit(self, context)
        except BaseException:
            self._fitted = before
            raise
        train = context.train
        if self.uses_features and train is not None and train.features is not None:
            self.feature_dim_ = int(train.features.shape[1])  # what score() will check
        given = (context.head_weight, context.train, context.val)
        if self.reads_logits and any(x is not None for x in given):
            self.num_classes_ = context.num_classes  # the logits' width score() will check
        return fitted

    return marking


def _with_features(score: Callable[[Score, Outputs], torch.Tensor]) -> Callable:
    @functools.wraps(score)
    def checked(self: Score, outputs: Outputs) -> torch.Tensor:
        if outputs.features is None:
            raise InputError(
                f"score '{self.name}' needs the penultimate features (Outputs.features), "
                "not the logits alone"
            )
        fitted_on = getattr(self, "feature_dim_", None)  # (runs of earlier versions: none)
        if fitted_on is not None and outputs.features.shape[1] != fitted_on:
            raise InputError(
                f"score '{self.name}' was fitted on {fitted_on} features per image; these "
                f"outputs have {outputs.features.shape[1]}"
            )
        return score(self, outputs)

    return checked


def _after_fit(score: Callable[[Score, Outputs], torch.Tensor]) -> Callable:
    @functools.wraps(score)
    def checked(self: Score, outputs: Outputs) -> torch.Tensor:
        if not getattr(self, "_fitted", False):
            raise NotFittedError(f"score '{self.name}' is not fitted: call fit(context) first.")
        fitted_for = getattr(self, "num_classes_", None)  # (runs of earlier versions: none)
        if fitted_for is not None and outputs.logits.shape[1] != fitted_for:
            raise InputError(
                f"score '{self.name}' was fitted for {fitted_for} classes; these outputs have "
                f"logits for {outputs.logits.shape[1]}"
            )
        return score(self, outputs)

    return checked


def check_setting(score: Score, setting: str, value: Any, option: str) -> Any:
    """A score's constructor argument checked as ``--option`` is checked (see
    :mod:`unseen.config`): its type (``k=2.5`` is refused, not truncated; a NumPy integer
    becomes an int) and its range, so that a score built in Python cannot hold a value the
    CLI refuses. Returns the value as the option's type."""
    from .config import FIELDS, typed_value

    name = f"{type(score).__name__}({setting}={value!r})"
    try:
        value = typed_value(option, value)
    except ConfigError:
        kind = str(FIELDS[option].type).split(" |")[0]
        raise SettingError(
            f"{name}: {setting} must be {'an' if kind == 'int' else 'a'} "
            f"{'integer' if kind == 'int' else 'number'}."
        ) from None
    check = FIELDS[option].metadata["check"]
    if value is not None and check is not None and (problem := check(value)):
        raise SettingError(f"{name}: {setting} {problem}.")
    return value


# ----------------------------------------------------------------------------- logit scores


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Largest softmax probability (Hendrycks and Gimpel 2017).

    In float64: in float32, ``1 - p`` rounds to 0 once the top logit leads by about 17, and
    confident known and unseen images would tie at exactly 1.0 (float64 holds out to about 37).
    """
    return logits.double().softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al. 2022)."""
    return logits.float().amax(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al. 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Minus the entropy of the softmax distribution (sum p log p, with 0 log 0 = 0).

    In float64, as ``max_softmax``: in float32 the top class's ``log p`` rounds to a multiple
    of the top logit's ulp (2e-6 at a logit of 20), which for confident images is as large as
    the whole entropy, and reorders them (errors of 5% at margins of 15 to 25)."""
    logp = logits.double().log_softmax(dim=1)
    # a -inf logit: p = 0 and logp = -inf, whose product is 0 (NaN logits stay NaN)
    return (logp.exp() * logp.masked_fill(logp == -math.inf, 0.0)).sum(dim=1)


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
    """Resolve 'all' and check names against the registry, keeping order, dropping repeats.

    'all' is every registered score except those with ``in_all = False`` (ODIN), which run
    only when named, e.g. ``--scores all,odin``.
    """
    out: list[str] = []
    for n in names:
        for name in [s for s, c in SCORES.items() if c.in_all] if n == "all" else [n]:
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


def create_score(name: str, config: Any = None) -> Score:
    """A fresh score; with a RunConfig, its settings (e.g. ``doc_alpha``) come from it."""
    if name not in SCORES:
        expand_score_names([name])  # names the valid scores
        raise ConfigError(f"create_score takes one score name; {name!r} stands for several.")
    return SCORES[name]() if config is None else SCORES[name].from_config(config)


def unused_score_options(config: Any, given: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(option, score)`` for each score option whose score ``config`` does not compute (on
    any of its heads): ``knn_k`` without knn, say. The options looked at are those set away
    from their default, or the ``given`` ones (options given on a command line)."""
    from .config import FIELDS

    computed = {n for head in config.head for n in scores_for_head(config.scores, head)}
    return [
        (option, name)
        for name, cls in SCORES.items()
        for option in cls.options
        if name not in computed
        and (
            option in given
            if given is not None
            else getattr(config, option) != FIELDS[option].default
        )
    ]


def _listed(items: Sequence[str], last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def unused_options_notes(unused: Iterable[tuple[str, str]], what: str = "run") -> list[str]:
    """The note lines for :func:`unused_score_options`' answer: one for scores missing from
    ``--scores``, one for one-vs-rest scores without a one-vs-rest head. ``what`` is the
    ``run`` or ``sweep`` given the options, or the ``rescored run`` (whose head is fixed)."""
    from .config import flag_name

    unused, lines = list(unused), []
    for ovr in (False, True):
        mine = [(o, n) for o, n in unused if SCORES[n].one_vs_rest_only == ovr]
        if not mine:
            continue
        flags = _listed([flag_name(o) for o, _ in mine])
        names = list(dict.fromkeys(n for _, n in mine))
        verb = "has" if len(mine) == 1 else "have"
        if not ovr:
            why = f"this {what} does not compute {_listed(names, 'or')} (--scores)"
        elif what == "rescored run":
            why = f"{_listed(names)} needs a one-vs-rest head, which this run was not trained with"
        else:
            why = f"{_listed(names)} needs a one-vs-rest head (--head ovr or ovr-separate)"
        lines.append(f"note: {flags} {verb} no effect: {why}")
    return lines


def scores_for_head(names: Iterable[str], head: str) -> list[str]:
    """The scores a model with ``head`` computes: the requested ones that apply to it (scores
    for one-vs-rest logits are skipped on a softmax head), then those the head always adds."""
    from .heads import HEADS

    h = HEADS[head]
    out = [n for n in expand_score_names(names) if h.one_vs_rest or not SCORES[n].one_vs_rest_only]
    return out + [n for n in h.scores if n not in out]


# ----------------------------------------------------------------------------- one-vs-rest


def _require_one_vs_rest(score: Score, context: FitContext) -> None:
    from .heads import is_one_vs_rest

    if not is_one_vs_rest(context.head):
        raise ConfigError(
            f"score '{score.name}' needs a one-vs-rest head (--head ovr or ovr-separate), "
            f"not '{context.head}'."
        )


def max_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Largest one-vs-rest probability ``max_k sigmoid(z_k)``, in float64 (see ``max_softmax``)."""
    return logits.double().sigmoid().amax(dim=1)


def doc_thresholds(
    probabilities: torch.Tensor, labels: torch.Tensor, alpha: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class rejection thresholds of DOC (Shu, Xu and Liu 2017).

    For class k, take the sigmoid outputs ``p`` of class k's own known images at output k,
    add their mirror images ``2 - p`` about 1, and fit a Gaussian with mean 1: its standard
    deviation is ``sigma_k = sqrt(mean((1 - p)^2))``. The threshold is
    ``t_k = max(0.5, 1 - alpha * sigma_k)``; a class with no images keeps 0.5.

    ``probabilities`` is N x K, ``labels`` N in 0..K-1 (others are ignored).
    Returns ``(thresholds, sigmas)``, both K float64 tensors (sigma NaN for an empty class).
    """
    p = probabilities.double()
    k = p.shape[1]
    sigmas = torch.full((k,), float("nan"), dtype=torch.float64, device=p.device)
    for c in range(k):
        own = p[labels == c, c]
        if len(own):
            mirrored = torch.cat([own, 2.0 - own])
            sigmas[c] = mirrored.std(correction=0)  # mean of the mirrored set is exactly 1
    thresholds = (1.0 - alpha * sigmas).nan_to_num(0.5).clamp_min(0.5)
    return thresholds, sigmas


@register
class OvrScore(Score):
    name = "ovr"
    description = (
        "one-vs-rest heads only: largest sigmoid; rejected when no class claims the image "
        "(threshold calibrated on validation)"
    )
    one_vs_rest_only = True
    stateless = True

    def fit(self, context: FitContext) -> Self:
        _require_one_vs_rest(self, context)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        return max_sigmoid(outputs.logits)


@register
class OvrDocScore(Score):
    """DOC: class k is accepted when its sigmoid clears its own threshold ``t_k``.

    The score is the margin ``max_k (p_k - t_k)``: an image is rejected exactly when no
    class's sigmoid reaches its threshold, i.e. when the margin is below 0, so the score's
    decision threshold is 0 (not a validation quantile). The predicted class of an accepted
    image is ``argmax_k p_k``, as in DOC.
    """

    name = "ovr-doc"
    description = (
        "one-vs-rest heads only: DOC per-class thresholds t_k = max(0.5, 1 - alpha*sigma_k) "
        "from validation sigmoids; score = max_k (p_k - t_k), rejected below 0"
    )
    one_vs_rest_only = True
    options = ("doc_alpha",)

    def __init__(self, alpha: float = 3.0):
        alpha = check_setting(self, "alpha", alpha, "doc_alpha")
        self.alpha = alpha

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(alpha=config.doc_alpha)

    def fit(self, context: FitContext) -> Self:
        _require_one_vs_rest(self, context)
        val = context.val
        if val is None or val.labels is None:
            raise InputError("ovr-doc needs the labels of the validation images")
        self.thresholds_, self.sigmas_ = doc_thresholds(
            val.logits.double().sigmoid(), val.labels, self.alpha
        )
        self.alpha_ = float(self.alpha)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        # float64, as in max_sigmoid: in float32 sigmoids saturate from a logit of about 17
        p = outputs.logits.double().sigmoid()
        return (p - self.thresholds_.to(p.device, torch.float64)).amax(dim=1)

    def decision_threshold(self) -> float | None:
        return 0.0


# ----------------------------------------------------------------------------- detectors

from . import detectors as _detectors  # noqa: E402,F401  (registers mahalanobis, knn, vim, ...)
