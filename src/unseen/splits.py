"""Split a dataset into known classes, unseen classes and a validation slice.

Known classes are remapped to ``0..K-1`` in ascending order of their original index; unseen
test images get label ``-1``. The validation slice (seeded, stratified) comes out of the
known-class *training* images and is never trained on: thresholds are calibrated on it.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import is_auto
from .data import ImageData
from .errors import ConfigError

UNSEEN = -1


@dataclass(frozen=True)
class Split:
    """Which classes are known and which are held out, by original index."""

    classes: tuple[str, ...]
    known: tuple[int, ...]
    unseen: tuple[int, ...]

    @property
    def known_names(self) -> list[str]:
        return [self.classes[i] for i in self.known]

    @property
    def unseen_names(self) -> list[str]:
        return [self.classes[i] for i in self.unseen]

    @property
    def num_known(self) -> int:
        return len(self.known)

    def remap(self, labels: torch.Tensor) -> torch.Tensor:
        """Original labels -> 0..K-1 for known classes, -1 for unseen ones."""
        table = torch.full((len(self.classes),), UNSEEN, dtype=torch.long)
        table[list(self.known)] = torch.arange(len(self.known))
        return table[labels.long()]

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "known": list(self.known),
            "unseen": list(self.unseen),
            "known_names": self.known_names,
            "unseen_names": self.unseen_names,
            "mapping": {self.classes[orig]: new for new, orig in enumerate(self.known)},
        }


def resolve_classes(
    tokens: tuple[str, ...] | list[str], classes: tuple[str, ...], option: str
) -> list[int]:
    """Class tokens (names, case-insensitive, or indices) -> sorted original indices.

    A token that is a class name wins over the same token read as an index. A name that
    matches a class exactly (as given, which a tuple from Python keeps: the command line
    and config files strip each name's surrounding spaces; or without them) wins over
    case-insensitive matches, which ignore surrounding spaces too; a token that matches
    several classes only that way (``cat`` for ``Cat`` and ``CAT``) is an error. Below an
    exact match, names also compare in Unicode NFC form (macOS writes folder names
    decomposed: ``a`` + accent). Two different tokens naming one class (``0,1`` where class
    0 is named ``1``) are an error: one of them surely meant another class.
    """
    exact = {c: i for i, c in enumerate(classes)}
    composed: dict[str, list[int]] = {}
    lower: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        composed.setdefault(_nfc(c).strip(), []).append(i)
        lower.setdefault(_nfc(c).strip().lower(), []).append(i)
    out: dict[int, str] = {}  # class index -> the token that named it
    for tok in tokens:
        given = str(tok)
        t = given.strip()
        if given in exact:  # a name with its own spaces ('cat ' from an npz or a folder)
            index = exact[given]
        elif t in exact:
            index = exact[t]
        elif len(matches := composed.get(_nfc(t), [])) == 1:
            index = matches[0]
        elif len(matches := matches or lower.get(_nfc(t).lower(), [])) > 1:
            names = " and ".join(repr(classes[i]) for i in matches)
            raise ConfigError(
                f"{option} {t!r} could mean {names}; give the exact name or the index."
            )
        elif matches:
            index = matches[0]
        elif (index := _as_index(t)) is not None and 0 <= index < len(classes):
            pass
        else:
            shown = ", ".join(f"{i}={c}" for i, c in enumerate(classes[:20]))
            more = ", ..." if len(classes) > 20 else ""
            comma = (
                " (commas separate classes: put a name that holds one in double quotes, "
                "--holdout '\"a, b\"', or give its index)"
                if any("," in c for c in classes)
                else ""
            )
            raise ConfigError(
                f"{option} {t!r} is not a class of this dataset; classes are {shown}{more}{comma}."
            )
        if out.setdefault(index, t) != t:
            raise ConfigError(
                f"{option} {out[index]!r} and {t!r} both name class {index} "
                f"({classes[index]!r}); give each class once."
            )
    return sorted(out)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _as_index(token: str) -> int | None:
    """``token`` as a class index when it is a plain ASCII integer of sane length, else None.

    (``str.isdigit`` also accepts digits such as "²" that ``int`` refuses, and ``int`` refuses
    strings of more than 4,300 digits.)"""
    digits = token[1:] if token.startswith("-") else token
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(token)


def resolve_auto(
    classes: Sequence[str], holdout: tuple[str, ...] | None, known: tuple[str, ...] | None
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """``holdout`` and ``known`` with a lone ``auto`` read as not given (the default), unless
    the dataset has a class named ``auto``: then it names that class."""
    if any(is_auto([c]) for c in classes):
        return holdout, known
    return (None if is_auto(holdout) else holdout), (None if is_auto(known) else known)


def make_split(
    classes: tuple[str, ...],
    holdout: tuple[str, ...] | None = None,
    known: tuple[str, ...] | None = None,
    rare: Sequence[tuple[int, float]] = (),
    untrained: Sequence[int] = (),
    rare_option: str = "--rare",
) -> Split:
    """Known/unseen split from ``holdout`` or its complement ``known`` (not both).

    With neither, the last class is held out (class 9 of a ten-class dataset) -- unless
    ``rare`` classes are given (``(original index, fraction)``, see :mod:`unseen.rare`): then
    no class is held out. A rare class at fraction 0 is never trained on and becomes unseen;
    one at a fraction above 0 must be known.

    ``untrained`` classes (no training images: :attr:`unseen.data.ImageData.untrained`) are
    held out always, besides ``holdout``; with neither ``holdout`` nor ``known`` they are the
    classes held out (the last class is not). ``known`` must not name one.
    """
    holdout, known = resolve_auto(classes, holdout, known)
    if holdout is not None and known is not None:
        raise ConfigError("give --holdout or --known, not both.")
    n = len(classes)
    if n < 2:
        raise ConfigError(
            f"the dataset has one class only ({', '.join(classes) or 'none'}); a run needs at "
            "least two known classes, and a class to hold out."
        )
    if known is not None:
        known_idx = resolve_classes(known, classes, "--known")
        if named := [classes[i] for i in known_idx if i in untrained]:
            has = "has" if len(named) == 1 else "have"
            raise ConfigError(
                f"--known names {', '.join(map(repr, named))}, which {has} no training images "
                "(only the test set holds any) and so can only be held out."
            )
    else:
        default = list(untrained) or ([] if rare else [n - 1])
        held = resolve_classes(holdout, classes, "--holdout") if holdout is not None else default
        known_idx = [i for i in range(n) if i not in held and i not in untrained]
    for cls, frac in rare:
        if frac == 0.0:
            known_idx = [i for i in known_idx if i != cls]
        elif cls in untrained:
            raise ConfigError(
                f"{rare_option} class {classes[cls]!r} has no training images (only the test "
                "set holds any); it can only be held out."
            )
        elif cls not in known_idx:
            raise ConfigError(
                f"{rare_option} class {classes[cls]!r} is held out; a rare class with a "
                "fraction above 0 must be a known class (fraction 0 leaves it out)."
            )
    unseen_idx = [i for i in range(n) if i not in known_idx]
    if not known_idx:
        raise ConfigError("every class is held out; keep at least two known classes.")
    if len(known_idx) < 2:
        small = (
            f": this dataset has only {n} classes, and holding one out needs three or more"
            if n == 2
            else ""
        )
        raise ConfigError(
            f"only one known class ({classes[known_idx[0]]}); keep at least two{small}."
        )
    return Split(tuple(classes), tuple(known_idx), tuple(unseen_idx))


@dataclass(frozen=True)
class SplitData:
    """Tensors ready for training and evaluation (uint8 images, remapped labels)."""

    split: Split
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    #: remapped: 0..K-1 for known classes, -1 for unseen
    y_test: torch.Tensor
    #: original dataset labels of the test images
    y_test_original: torch.Tensor

    @property
    def test_is_unseen(self) -> torch.Tensor:
        return self.y_test == UNSEEN


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified subset of ``n`` items (all items if ``n`` >= len).
    Where stratifying cannot work (``n``, or what is left out, is smaller than the number of
    classes, or a class has a single item) the draw is uniform instead."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    n_classes = int((counts > 0).sum())
    # scikit-learn stratifies only when both the kept and the left-out part can hold every class
    can_stratify = counts[counts > 0].min() >= 2 and min(n, len(labels) - n) >= n_classes
    stratify = labels if can_stratify else None
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=n, stratify=stratify, random_state=seed
    )
    return np.sort(keep)


def check_val_fraction(val_fraction: float, n: int, per_side: int) -> None:
    """Both slices of ``n`` known-class training images must hold at least ``per_side`` images
    (one of each class for a stratified split); scikit-learn puts ``ceil(f * n)`` in validation."""
    n_val = math.ceil(val_fraction * n)
    what = "one image of each known class" if per_side > 1 else "one image"
    if n_val < per_side:
        need = math.ceil(per_side / n * 1000) / 1000
        raise ConfigError(
            f"--val-fraction {val_fraction:g} keeps {n_val} of {n} known-class training images for "
            f"validation, which needs at least {what} ({per_side}): use {need:g} or more."
        )
    if n - n_val < per_side:
        most = math.floor((n - per_side) / n * 1000) / 1000
        raise ConfigError(
            f"--val-fraction {val_fraction:g} leaves {n - n_val} of {n} known-class training images "
            f"to train on, which needs at least {what} ({per_side}): use {most:g} or less."
        )


def split_data(
    data: ImageData,
    split: Split,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    rare: Sequence[tuple[int, float]] = (),
) -> SplitData:
    """Drop unseen classes from training, carve the validation slice, remap labels.

    ``rare`` classes (``(original index, fraction)``, after ``train_subset``) keep only that
    fraction of their training images (see :mod:`unseen.rare`), and all of those are trained
    on: the validation slice comes from the other known classes.
    """
    from sklearn.model_selection import train_test_split

    from .rare import subsample_class

    y_train = data.y_train.numpy()
    train_idx = np.arange(len(y_train))
    if train_subset is not None:
        train_idx = stratified_subset(y_train, train_subset, seed)
    train_idx = train_idx[np.isin(y_train[train_idx], split.known)]
    present = set(np.unique(y_train[train_idx]).tolist())
    empty = [c for c in split.known if c not in present]
    if empty:
        names = ", ".join(repr(split.classes[c]) for c in empty[:10])
        if len(empty) > 10:  # labels with gaps (an npz with labels 0, 40000, ...) give many
            names += f", ... ({len(empty)} in all)"
        where = f" in a --train-subset of {train_subset}" if train_subset is not None else ""
        what = f"known class {names} has" if len(empty) == 1 else f"known classes {names} have"
        fix = "hold them out (--holdout) or train on more images"
        if len(empty) == 1:
            fix = "hold it out (--holdout) or train on more images"
        if train_subset is None and data.name.startswith("npz:"):  # labels with gaps, say
            fix = (
                f"{fix.removesuffix(' or train on more images')}, name the classes to train "
                "on (--known), or, if the npz's labels skip numbers (they number the classes "
                "from 0), renumber them 0..K-1"
            )
        raise ConfigError(f"{what} no training images{where}: {fix}.")
    rare_known = [(cls, frac) for cls, frac in rare if cls in split.known]
    for cls, frac in rare_known:
        train_idx = subsample_class(train_idx, y_train, cls, frac, seed)
    # rare classes, and classes with a single image, are trained on whole: the validation
    # slice is drawn, stratified, from the classes with two images or more
    counts = np.bincount(y_train[train_idx], minlength=len(split.classes))
    whole = [cls for cls, _ in rare_known] + np.flatnonzero(counts == 1).tolist()
    keep_whole = np.isin(y_train[train_idx], whole)
    whole_idx, train_idx = train_idx[keep_whole], train_idx[~keep_whole]
    if len(train_idx) < 4:
        rest = " that are neither --rare nor single images" if len(whole_idx) else ""
        raise ConfigError(
            f"only {len(train_idx)} known-class training images{rest} to draw the validation "
            "slice from; need more to train."
        )
    known_labels = y_train[train_idx]
    check_val_fraction(val_fraction, len(train_idx), len(np.unique(known_labels)))
    fit_idx, val_idx = train_test_split(
        train_idx, test_size=val_fraction, stratify=known_labels, random_state=seed
    )
    fit_idx, val_idx = np.sort(np.concatenate([fit_idx, whole_idx])), np.sort(val_idx)
    trained = set(y_train[fit_idx].tolist())
    untrained = [c for c in split.known if c not in trained]
    if untrained:  # a stratified split can still round a small class's share to nothing
        names = ", ".join(repr(split.classes[c]) for c in untrained)
        raise ConfigError(
            f"--val-fraction {val_fraction:g} leaves known class {names} no training image "
            "(all of its images went to validation): lower --val-fraction or train on more images."
        )

    test_idx = np.arange(len(data.y_test))
    if test_subset is not None:
        test_idx = stratified_subset(data.y_test.numpy(), test_subset, seed)

    remap = split.remap
    return SplitData(
        split=split,
        x_train=data.x_train[fit_idx],
        y_train=remap(data.y_train[fit_idx]),
        x_val=data.x_train[val_idx],
        y_val=remap(data.y_train[val_idx]),
        x_test=data.x_test[test_idx],
        y_test=remap(data.y_test[test_idx]),
        y_test_original=data.y_test[test_idx].clone(),
    )
