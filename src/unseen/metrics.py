"""Metrics of a rejection score: pure functions of NumPy arrays (array-likes and torch
tensors, on any device and of any dtype, are accepted and converted).

Convention (the same for every score in :mod:`unseen.scores`): **a higher score means
more likely a known class**. "Positive" below means known. A threshold ``t`` accepts an
image (calls it known) when ``score >= t``.

scikit-learn computes the curves. It is imported inside the functions that use it, because
importing it takes 0.8 s and ``unseen predict`` needs only :func:`calibrate_threshold`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np


def _both_present(is_known: np.ndarray) -> bool:
    return bool(is_known.any() and (~is_known).any())


def _array(x: object) -> np.ndarray:
    """``x`` as a NumPy array; a torch tensor (recognised without importing torch) is
    detached and copied to the host, floats as float64 (NumPy has no bfloat16)."""
    if hasattr(x, "detach") and hasattr(x, "is_floating_point"):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _scores(score: np.ndarray, what: str = "score") -> np.ndarray:
    """``score`` as a 1-D float array; ValueError for other shapes and non-finite values."""
    s = _array(score).astype(float)
    if s.ndim != 1:
        raise ValueError(f"{what} must hold one value per image (1-D), not shape {s.shape}")
    if bad := int(np.count_nonzero(~np.isfinite(s))):
        raise ValueError(f"{what} holds {bad} value(s) that are not finite (NaN or infinite)")
    return s


def _known_mask(is_known: np.ndarray, n: int, what: str = "is_known") -> np.ndarray:
    """``is_known`` (or ``correct``) as booleans, one per score; only booleans or 0/1 are
    accepted, so that passing class labels by mistake (where -1 or class 0 would be read as
    a boolean) is an error."""
    k = _array(is_known)
    if k.dtype != bool:
        if k.size and not np.isin(k, (0, 1)).all():
            if what == "is_known":
                raise ValueError(
                    "is_known must be booleans or 0/1 (1 = a known class), not class labels; "
                    "for labels with -1 for unseen images pass labels >= 0"
                )
            raise ValueError(
                "correct must be booleans or 0/1 (1 = correctly classified), not class "
                "labels; pass predicted == labels"
            )
        k = k.astype(bool)
    if k.shape != (n,):
        raise ValueError(f"{what} has shape {k.shape}, the scores ({n},)")
    return k


def _fraction(value: float, what: str) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a fraction in (0, 1], not {value!r} (0.95, not 95)")
    return float(value)


def auroc(score: np.ndarray, is_known: np.ndarray) -> float:
    """Area under the ROC curve, known = positive. NaN without both groups."""
    from sklearn.metrics import roc_auc_score

    score = _scores(score)
    is_known = _known_mask(is_known, len(score))
    return float(roc_auc_score(is_known, score)) if _both_present(is_known) else math.nan


def aupr_in(score: np.ndarray, is_known: np.ndarray) -> float:
    """Average precision with known images as the positive class."""
    from sklearn.metrics import average_precision_score

    score = _scores(score)
    is_known = _known_mask(is_known, len(score))
    return float(average_precision_score(is_known, score)) if _both_present(is_known) else math.nan


def aupr_out(score: np.ndarray, is_known: np.ndarray) -> float:
    """Average precision with unseen images as the positive class (scored by ``-score``)."""
    from sklearn.metrics import average_precision_score

    score = _scores(score)
    is_known = _known_mask(is_known, len(score))
    return (
        float(average_precision_score(~is_known, -score)) if _both_present(is_known) else math.nan
    )


def fpr_at_tpr(score: np.ndarray, is_known: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of unseen images accepted at the highest threshold accepting >= ``tpr`` of known ones."""
    from sklearn.metrics import roc_curve

    score = _scores(score)
    is_known = _known_mask(is_known, len(score))
    tpr = _fraction(tpr, "tpr")
    if not _both_present(is_known):
        return math.nan
    fprs, tprs, _ = roc_curve(is_known, score, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def oscr(score: np.ndarray, is_known: np.ndarray, correct: np.ndarray) -> float:
    """Open-Set Classification Rate (Dhamija et al. 2018): area under CCR vs FPR.

    CCR(t) is the fraction of known images that are both accepted (score >= t) and
    correctly classified; FPR(t) the fraction of unseen images accepted. At the lowest
    threshold everything is accepted, so the curve ends at (1, closed-set accuracy).
    """
    from sklearn.metrics import auc

    score = _scores(score)
    is_known = _known_mask(is_known, len(score))
    correct = _known_mask(correct, len(score), "correct")
    if not _both_present(is_known):
        return math.nan
    order = np.argsort(-score, kind="stable")
    s = score[order]
    unseen_cum = np.cumsum(~is_known[order])
    correct_cum = np.cumsum((is_known & correct)[order])
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    x = np.r_[0.0, unseen_cum[last_of_tie] / (~is_known).sum()]
    y = np.r_[0.0, correct_cum[last_of_tie] / is_known.sum()]
    return float(auc(x, y))


def calibrate_threshold(val_scores: np.ndarray, known_acceptance: float = 0.95) -> float:
    """Threshold accepting at least ``known_acceptance`` of the known validation images."""
    known_acceptance = _fraction(known_acceptance, "known_acceptance")
    val_scores = np.sort(_scores(_array(val_scores).ravel(), "the validation scores"))
    if val_scores.size == 0:
        raise ValueError("no validation scores to calibrate on")
    n = val_scores.size
    # the largest threshold that still accepts ceil(acceptance * n) images (score >= t)
    n_accept = min(n, max(1, math.ceil(known_acceptance * n - 1e-9)))
    return float(val_scores[n - n_accept])


def _classes(a: np.ndarray, what: str, num_known: int, n: int) -> np.ndarray:
    """``labels`` (-1..K-1, -1: unseen) or ``predicted`` (0..K-1) as integers, one per score;
    whole numbers stored as floats are accepted."""
    a = _array(a)
    lo = -1 if what == "labels" else 0
    if a.shape != (n,):
        raise ValueError(f"{what} has shape {a.shape}, the scores ({n},)")
    whole = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and bool(np.all(np.mod(a, 1) == 0))
    )
    if a.size and (not whole or a.min() < lo or a.max() >= num_known):
        raise ValueError(
            f"{what} must be whole numbers from {lo} to num_known - 1 = {num_known - 1}"
            + (" (-1: unseen)" if lo < 0 else "")
        )
    return a.astype(np.int64)


def open_set_metrics(
    score: np.ndarray, threshold: float, predicted: np.ndarray, labels: np.ndarray, num_known: int
) -> dict[str, float]:
    """Metrics of the K+1-way decision: a known class if ``score >= threshold``, else unseen.

    ``labels`` are 0..K-1 for known images and -1 for unseen ones; ``predicted`` is the
    argmax over known classes.
    """
    from sklearn.metrics import f1_score

    score = _scores(score)
    labels = _classes(labels, "labels", num_known, len(score))
    predicted = _classes(predicted, "predicted", num_known, len(score))
    threshold = float(threshold)  # a 0-d array or tensor too
    if math.isnan(threshold):
        raise ValueError("the threshold is NaN; give a number (-inf accepts every image)")
    accept = score >= threshold
    open_pred = np.where(accept, predicted, num_known)
    open_true = np.where(labels < 0, num_known, labels)
    is_unseen = labels < 0
    return {
        "threshold": float(threshold),
        "open_set_accuracy": float(np.mean(open_pred == open_true)),
        "open_set_macro_f1": float(
            f1_score(
                open_true,
                open_pred,
                # the classes present in truth or predictions: a class absent from both
                # (e.g. no unseen test images, nothing rejected) has no F1 to count
                labels=np.union1d(open_true, open_pred),
                average="macro",
                zero_division=0,
            )
        ),
        "unseen_rejected": float(np.mean(~accept[is_unseen])) if is_unseen.any() else math.nan,
        "known_rejected": float(np.mean(~accept[~is_unseen])) if (~is_unseen).any() else math.nan,
    }


def score_metrics(
    test_score: np.ndarray,
    val_score: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    num_known: int,
    known_acceptance: float = 0.95,
    threshold: float | None = None,
) -> dict[str, float]:
    """Every metric of one score: threshold-free ones on the test set, then the calibrated ones.

    The open-set decision uses ``threshold`` when given (a score with its own rule, e.g.
    DOC's margin >= 0), otherwise the validation threshold accepting ``known_acceptance``.
    ``val_known_accepted`` is the share of validation images that threshold accepts.
    """
    test_score = _scores(test_score)
    labels = _classes(labels, "labels", num_known, len(test_score))
    predicted = _classes(predicted, "predicted", num_known, len(test_score))
    is_known = labels >= 0
    correct = is_known & (predicted == labels)
    out = {
        "auroc": auroc(test_score, is_known),
        "aupr_in": aupr_in(test_score, is_known),
        "aupr_out": aupr_out(test_score, is_known),
        "fpr_at_95_tpr": fpr_at_tpr(test_score, is_known, 0.95),
        "oscr": oscr(test_score, is_known, correct),
    }
    threshold_from = "validation" if threshold is None else "score"
    if threshold is None:
        threshold = calibrate_threshold(val_score, known_acceptance)
    out.update(open_set_metrics(test_score, threshold, predicted, labels, num_known))
    val_score = _scores(_array(val_score).ravel(), "the validation scores")
    out["threshold_from"] = threshold_from
    out["val_known_accepted"] = (
        float(np.mean(val_score >= threshold)) if val_score.size else math.nan
    )
    return out


#: a confidence above this counts as confident (``frac_msp_above_0_9``; a rare class's
#: ``confidently_mislabelled``)
CONFIDENT = 0.9


def confidence_summary(msp: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (of the images' values, ddof=0) and share above
    :data:`CONFIDENT` of max-softmax probabilities."""
    msp = _array(msp).astype(float)
    if msp.size == 0:
        return {"mean_msp": math.nan, "std_msp": math.nan, "frac_msp_above_0_9": math.nan}
    return {
        "mean_msp": float(msp.mean()),
        "std_msp": float(msp.std()),
        "frac_msp_above_0_9": float(np.mean(msp > CONFIDENT)),
    }


def absorbed_by(counts: Iterable[dict[str, int]], exclude: str | None = None) -> dict | None:
    """The class that took the most images, summed over ``counts`` (per-run ``class -> images``
    dicts such as :func:`predicted_as`), as ``{"class", "share"}`` of all the images counted;
    ``exclude`` (a class's own name) counts in the total but cannot take first place. None
    when no other class took any."""
    totals: dict[str, int] = {}
    for c in counts:
        for name, n in c.items():
            totals[name] = totals.get(name, 0) + int(n)
    total = sum(totals.values())
    totals.pop(exclude, None)
    if not totals:
        return None
    top = max(totals, key=lambda name: totals[name])
    return {"class": top, "share": totals[top] / total}


def predicted_as(predicted: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """How many images went to each known class (classes with none are left out), largest first."""
    counts = np.bincount(_array(predicted).astype(int), minlength=len(names))
    pairs = sorted(((names[i], int(c)) for i, c in enumerate(counts) if c > 0), key=lambda p: -p[1])
    return dict(pairs)


def mean_std(values: Sequence[object]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof=1; None for one value) of the finite numbers
    in ``values``, and their count ``n``: ``None``, NaN and infinities (a metric a run could
    not compute) are left out. ``unseen sweep`` and ``unseen report`` both aggregate runs
    with this one function."""
    finite = [
        float(v)
        for v in values
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
    }


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of the pairs where both values are finite (scipy's
    ``spearmanr``); NaN with fewer than three such pairs or when either side is constant.
    Vaze et al. (2022) found open-set AUROC to rise with closed-set accuracy across models:
    the comparison report gives this figure for its configurations."""
    from scipy.stats import spearmanr

    a, b = _array(x).astype(float), _array(y).astype(float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, not {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)
