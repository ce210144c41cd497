"""Rare classes: a known class trained on only a fraction of its training images.

``--rare "CLASS:FRACTION"`` keeps ``FRACTION`` of that class's training images (seeded; the
kept images of a smaller fraction are a subset of those of a larger one with the same
seed). The rules, applied in :func:`unseen.splits.make_split` and
:func:`unseen.splits.split_data`:

* ``FRACTION > 0``: the class stays *known*. It keeps ``max(1, floor(FRACTION * n + 0.5))``
  of its ``n`` training images (at least one when it has any). All kept images are trained
  on: none go to the validation slice, so the count is exactly what the model sees.
* ``FRACTION == 0``: the class is never trained on, so it becomes *unseen* (label -1 in the
  test set, like ``--holdout``): the run's AUROC and friends then measure how well the
  scores detect it.
* With ``--rare`` and neither ``--holdout`` nor ``--known``, no other class is held out
  (all classes are known), instead of the usual default of holding out the last class.

Whatever the fraction, :func:`rare_metrics` reports the class's closed-set recall and
precision on the test set and, per score, the AUROC of *the other known classes* (positive)
against *the rare class* (negative) -- the same orientation as every other AUROC here
(higher score = more likely a known, well-trained class). At fraction 0 it is the detection
AUROC of the absent class; at larger fractions a value near 0.5 means the scores no longer
single the class out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError
from .metrics import CONFIDENT, absorbed_by, auroc, mean_std


def parse_rare_item(text: str) -> tuple[str, float]:
    """``"Ankle boot:0.01"`` -> ``("Ankle boot", 0.01)``; the fraction must be in [0, 1]."""
    name, sep, frac = text.strip().rpartition(":")
    if not sep or not name.strip():
        raise ValueError(f"expected CLASS:FRACTION, got {text!r}")
    value = float(frac)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {frac!r}")
    return name.strip(), value


def rare_summary(
    name: str, r: dict, fmt: Callable[[Any], str], share: Callable[[Any], str] | None = None
) -> str:
    """One rare class's result in a sentence, for the console and the report: its training
    images, recall and precision, where its test images went and how confidently, and the
    AUROC of the other known classes against it (``fmt`` formats a number, ``share`` a share
    of its images: ``fmt`` too, unless given, e.g. as a percentage)."""
    share = share or fmt
    from .console import counted, counts_text

    aurocs = ", ".join(f"{s} {fmt(v)}" for s, v in r.get("auroc_vs_known", {}).items())
    were = "was" if r["test_images"] == 1 else "were"
    text = (
        f"rare class {name} (fraction {format_fraction(r['fraction'])}, "
        f"{counted(r['train_images'], 'training image')}): recall {fmt(r['recall'])}, "
        f"precision {fmt(r['precision'])}; its {counted(r['test_images'], 'test image')} "
        f"{were} labelled as: {counts_text(r.get('predicted_as', {}))}"
    )
    if "mean_confidence" in r:  # runs of earlier versions did not record it
        text += (
            f"; mean confidence {fmt(r['mean_confidence'])}, "
            f"{share(r['confidently_mislabelled'])} labelled as another class above {CONFIDENT}"
        )
    return text + f"; AUROC other known classes vs {name}: {aurocs or '-'}"


def format_fraction(value: float) -> str:
    """A fraction as text that reads back as the same float: ``0.1`` -> ``"0.1"``, ``1.0`` ->
    ``"1"``, ``0.1234567`` -> ``"0.1234567"`` (never rounded to six digits, which would merge
    distinct fractions into one run configuration)."""
    value = float(value) + 0.0  # -0.0 -> 0.0
    short = f"{value:g}"  # the historical form, kept wherever it is exact (hashes stay the same)
    return short if float(short) == value else repr(value)


def parse_rare(text: str) -> tuple[str, ...] | None:
    """Config parser: comma-separated ``CLASS:FRACTION`` items, normalised to ``"CLASS:F"``;
    an item whose class name holds a comma is given in double quotes
    (``'"Bag, leather:0.1",3:0.5'``, :func:`unseen.config.split_csv`)."""
    from .config import split_csv

    if text.strip().lower() in {"none", "null"}:
        return None
    try:
        items = split_csv(text)
    except ValueError as exc:
        raise ConfigError(f"--rare items are CLASS:FRACTION, comma-separated ({exc}).") from None
    if not items:
        return None
    out = []
    for item in items:
        try:
            name, frac = parse_rare_item(item)
        except ValueError:
            raise ConfigError(
                f"--rare expects CLASS:FRACTION with a fraction from 0 to 1 "
                f"(e.g. 'Ankle boot:0.01'), not {item.strip()!r}."
            ) from None
        out.append(f"{name}:{format_fraction(frac)}")
    return tuple(out)


def resolve_rare(
    rare: Sequence[str] | None, classes: Sequence[str], option: str = "--rare"
) -> list[tuple[int, float]]:
    """``cfg.rare`` -> ``[(original class index, fraction), ...]``, checked against ``classes``;
    errors name ``option`` (what the user typed: ``--protocol rare:CLASS`` in a sweep)."""
    from .splits import resolve_classes

    out: dict[int, float] = {}
    for item in rare or ():
        try:
            name, frac = parse_rare_item(item)
        except ValueError:
            raise ConfigError(f"{option} expects CLASS:FRACTION items, not {item!r}.") from None
        (idx,) = resolve_classes((name,), tuple(classes), option)
        if idx in out:
            raise ConfigError(f"{option} names class {classes[idx]!r} twice.")
        out[idx] = frac
    return sorted(out.items())


def rare_keep_count(n: int, fraction: float) -> int:
    """How many of ``n`` training images a class keeps at ``fraction`` (see the module rules)."""
    if fraction <= 0.0 or n == 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def subsample_class(
    indices: np.ndarray, labels: np.ndarray, cls: int, fraction: float, seed: int
) -> np.ndarray:
    """Drop all but ``rare_keep_count`` of the images of class ``cls`` from ``indices``.

    ``labels[indices]`` are the classes. The kept images are the first ones of a permutation
    seeded by ``(seed, cls)``, so smaller fractions keep subsets of larger ones.
    """
    mine = indices[labels[indices] == cls]
    keep_n = rare_keep_count(len(mine), fraction)
    order = np.random.default_rng([seed, cls]).permutation(len(mine))
    kept = mine[np.sort(order[:keep_n])]
    return np.sort(np.concatenate([indices[labels[indices] != cls], kept]))


def rare_metrics(
    rare: Sequence[tuple[int, float]],
    classes: Sequence[str],
    known: Sequence[int],
    y_train: np.ndarray,
    y_test_original: np.ndarray,
    predicted: np.ndarray,
    test_scores: dict[str, np.ndarray],
    confidence: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per rare class: training images, closed-set recall/precision, where its test images
    went, how confident the network was about them, and the AUROC against the others.

    ``known`` are the original indices of the known classes in order (``predicted`` and
    ``y_train`` use the remapped labels 0..K-1); ``y_test_original`` the original test labels.
    Recall and precision are closed-set, over the test images of known classes; both are
    ``NaN`` when the class is unseen (fraction 0) and precision is ``NaN`` when nothing is
    predicted as the class. With ``confidence`` (the head's largest class probability per
    test image), ``mean_confidence`` is its mean over the class's test images and
    ``confidently_mislabelled`` the share of them labelled as another class with confidence
    above :data:`CONFIDENT` -- the confident wrong answer.
    """
    known = list(known)
    y_test_original = np.asarray(y_test_original)
    predicted = np.asarray(predicted)
    test_known = np.isin(y_test_original, known)
    out: dict[str, dict] = {}
    for cls, frac in rare:
        is_cls = y_test_original == cls
        others = test_known & ~is_cls
        entry: dict = {
            "fraction": frac,
            "known": cls in known,
            "test_images": int(is_cls.sum()),
            "train_images": 0,
            "recall": math.nan,
            "precision": math.nan,
        }
        if cls in known:
            k = known.index(cls)
            entry["train_images"] = int((np.asarray(y_train) == k).sum())
            pred_cls = predicted == k
            if is_cls.any():
                entry["recall"] = float(np.mean(pred_cls[is_cls]))
            if (pred_cls & test_known).any():
                entry["precision"] = float(np.mean(is_cls[pred_cls & test_known]))
        if confidence is not None:
            conf = np.asarray(confidence, float)[is_cls]
            wrong = predicted[is_cls] != (known.index(cls) if cls in known else -1)
            entry["mean_confidence"] = float(conf.mean()) if conf.size else math.nan
            entry["confidently_mislabelled"] = (
                float(np.mean(wrong & (conf > CONFIDENT))) if conf.size else math.nan
            )
        # images of the rare class went to which (other) known class
        counts = np.bincount(predicted[is_cls].astype(int), minlength=len(known))
        entry["predicted_as"] = {
            classes[known[i]]: int(c)
            for i, c in sorted(enumerate(counts), key=lambda p: -p[1])
            if c > 0
        }
        subset = others | is_cls
        entry["auroc_vs_known"] = {
            name: auroc(np.asarray(s)[subset], others[subset]) for name, s in test_scores.items()
        }
        out[classes[cls]] = entry
    return out


def rare_statistics(metrics: Sequence[dict], names: Sequence[str]) -> dict | None:
    """Per rare class (by name), over runs (their ``metrics.json``): its training and test
    images, recall, precision, confidence, the other class that took most of its test images
    (``absorbed_by``, summed over the runs) and the AUROC against the other known classes per
    score in ``names``, each as :func:`~unseen.metrics.mean_std`. None without rare classes.
    The sweep summary and the comparison report both use it."""
    classes = list(dict.fromkeys(c for m in metrics for c in m.get("rare", {})))
    if not classes:
        return None
    out = {}
    for cls in classes:
        entries = [m.get("rare", {}).get(cls, {}) for m in metrics]
        out[cls] = {
            "train_images": mean_std([e.get("train_images") for e in entries]),
            "test_images": mean_std([e.get("test_images") for e in entries]),
            "recall": mean_std([e.get("recall") for e in entries]),
            "precision": mean_std([e.get("precision") for e in entries]),
            "mean_confidence": mean_std([e.get("mean_confidence") for e in entries]),
            "confidently_mislabelled": mean_std(
                [e.get("confidently_mislabelled") for e in entries]
            ),
            # the other known class that took most of its test images, summed over the runs
            "absorbed_by": absorbed_by((e.get("predicted_as", {}) for e in entries), cls),
            "auroc_vs_known": {
                n: mean_std([e.get("auroc_vs_known", {}).get(n) for e in entries]) for n in names
            },
        }
    return out
