"""The report's figures: pure functions of NumPy arrays returning matplotlib figures.

Figures are built with :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so
they render with the Agg backend whatever the session's backend is, hold no global state
and need no display. Conventions are those of :mod:`unseen.metrics`: a higher score means
more likely a known class, and known = positive in ROC curves.

The numbers behind a figure come from separate functions (``confusion_counts``,
``calibration_bins``, ``expected_calibration_error``, ``project_features``) so that they
can be tested against hand-computed values.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from .console import valid_unicode

KNOWN_COLOR = "#1f77b4"
UNSEEN_COLOR = "#d62728"
#: another dataset's images (far OOD), beside the run's own known and unseen ones
OTHER_COLOR = "#7f7f7f"
DPI = 100


#: matplotlib's warning for a character its font lacks (CJK class names): one per glyph
GLYPH_MISSING = r"Glyph \d+ .*missing from font"


#: the longest class name a tick label or legend entry shows in full
LABEL_CHARS = 40


def literal(text: object, limit: int | None = None) -> str:
    """``text`` as matplotlib should show it: a class or run name with two ``$`` signs would
    otherwise be read as a mathtext formula (and one it cannot parse stops the report).
    With ``limit``, a longer text is cut to that many characters in the middle, where an
    ellipsis stands (names that differ only in their ends stay apart)."""
    text = valid_unicode(str(text))
    if limit is not None and len(text) > limit:
        head = (limit - 1) * 3 // 5
        text = text[:head] + "…" + text[len(text) - (limit - 1 - head) :]
    return text.replace("$", r"\$")


def tight_layout(fig: Figure, **kwargs: object) -> None:
    """``fig.tight_layout`` without its warning when long labels leave it no room (the
    figure is then saved with ``bbox_inches="tight"`` as it is, and nothing is cut off)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        warnings.filterwarnings("ignore", GLYPH_MISSING, UserWarning)  # it draws the text too
        fig.tight_layout(**kwargs)


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes (Agg). Class names in scripts the font lacks (CJK, say)
    are drawn as boxes without a warning per character on stderr."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", GLYPH_MISSING, UserWarning)
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# ----------------------------------------------------------------------------- score histograms


def score_histogram(
    known: np.ndarray,
    unseen: np.ndarray,
    threshold: float | None,
    name: str,
    bins: int = 50,
    groups: tuple[str, str] = ("known", "unseen"),
    other: tuple[str, np.ndarray] | None = None,
) -> Figure:
    """Overlapping histograms of one score on known and unseen test images (or two other
    ``groups`` of test images: the other known classes and a rare class, say), and on
    ``other`` (a name and its images' scores: another dataset's, far OOD) when given.

    The calibrated threshold is a vertical dashed line (label ``threshold``): images at or
    above it are accepted as known. Histograms are densities so that groups of different
    sizes compare.
    """
    known = np.asarray(known, float)
    unseen = np.asarray(unseen, float)
    series = [
        (known, f"{literal(groups[0], LABEL_CHARS)} ({len(known)})", KNOWN_COLOR),
        (unseen, f"{literal(groups[1], LABEL_CHARS)} ({len(unseen)})", UNSEEN_COLOR),
    ]
    if other is not None:
        values = np.asarray(other[1], float)
        series.append((values, f"{literal(other[0], LABEL_CHARS)} ({len(values)})", OTHER_COLOR))
    both = np.concatenate([values for values, _, _ in series])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot()
    for values, label, color in series:
        values = values[np.isfinite(values)]
        if values.size:
            # one filled outline per group, not 50 bar patches: looks the same, draws 2x faster
            ax.hist(values, bins=edges, density=True, alpha=0.55, color=color, label=label,
                    histtype="stepfilled")  # fmt: skip
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label="threshold")
    ax.set_xlabel(f"{name} (higher = more likely known)")
    ax.set_ylabel("density")
    first, second = (literal(g, LABEL_CHARS) for g in groups)
    names = [first] + ([second] if len(unseen) else [])
    names += [literal(other[0], 24)] if other is not None else []
    ax.set_title(f"{name}: {' vs '.join(names)} test images")
    ax.legend(fontsize=8, frameon=False)
    tight_layout(fig)
    return fig


# ----------------------------------------------------------------------------- ROC


#: line styles and bar hatches of the series after the first 10 colours, 10 at a time
SERIES_LINES = ("-", "--", ":", "-.")
SERIES_HATCHES = ("", "//", "..", "xx")


def series_style(i: int, bars: bool = False) -> dict[str, object]:
    """Series ``i``'s colour (matplotlib's 10-colour cycle) and, from the 11th series on, a
    line style (or bar hatch), so that no two of up to 40 series look alike."""
    shapes = SERIES_HATCHES if bars else SERIES_LINES
    return {"color": f"C{i % 10}", ("hatch" if bars else "linestyle"): shapes[i // 10 % 4]}


#: a legend of more entries goes beside the axes, not over the curves
LEGEND_INSIDE = 8


def roc_figure(scores: Mapping[str, np.ndarray], is_known: np.ndarray) -> Figure:
    """ROC curves of every score in one axes (known = positive), best AUROC first in the
    legend (beside the axes for more than 8 scores)."""
    is_known = np.asarray(is_known, bool)
    both = bool(is_known.any() and (~is_known).any())
    beside = both and len(scores) > LEGEND_INSIDE
    fig = Figure(figsize=(7.0 if beside else 4.8, 4.4))
    ax = fig.add_subplot()
    aurocs = {n: roc_auc_score(is_known, s) for n, s in scores.items()} if both else {}
    for i, name in enumerate(sorted(aurocs, key=lambda n: -aurocs[n])):
        fpr, tpr, _ = roc_curve(is_known, np.asarray(scores[name], float))
        ax.plot(fpr, tpr, linewidth=1.4, label=f"{name} (AUROC {aurocs[name]:.3f})",
                **series_style(i))  # fmt: skip
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("unseen images accepted (FPR)")
    ax.set_ylabel("known images accepted (TPR)")
    ax.set_title("ROC, known = positive" if both else "ROC needs known and unseen test images")
    if beside:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    elif both:
        ax.legend(fontsize=8, loc="lower right", frameon=False)
    tight_layout(fig)
    return fig


# ----------------------------------------------------------------------------- confusion matrix


def confusion_counts(
    labels: np.ndarray,
    predicted: np.ndarray,
    known: Sequence[int],
    unseen: Sequence[int],
) -> np.ndarray:
    """Counts of true class (rows) x predicted known class (columns).

    ``labels`` are original class indices; ``predicted`` indices into ``known`` (0..K-1, the
    classifier's argmax). Rows are the known classes in ``known`` order, then the unseen
    classes in ``unseen`` order; columns the K known classes. Row ``K + j`` tells where the
    images of unseen class ``unseen[j]`` went.
    """
    known, unseen = list(known), list(unseen)
    predicted_original = np.asarray(known)[np.asarray(predicted, int)] if len(predicted) else []
    full = confusion_matrix(np.asarray(labels, int), predicted_original, labels=known + unseen)
    return full[:, : len(known)]


def confusion_figure(
    counts: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], num_known: int
) -> Figure:
    """The confusion matrix, coloured by row share, counts written in the cells.

    The rows after ``num_known`` (unseen classes) are set off by a line and labelled
    ``name (unseen)``.
    """
    counts = np.asarray(counts)
    rows, cols = counts.shape
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = [
        literal(n, LABEL_CHARS) + (" (unseen)" if i >= num_known else "")
        for i, n in enumerate(row_names)
    ]
    col_labels = [literal(c, LABEL_CHARS) for c in col_names]
    tick_size = 8 if max(rows, cols) <= 30 else 5
    # the labels take room of their own: long row names widen the figure, and column names
    # wider than their cell (a character is about 0.6 of the font size) are turned upright
    char = tick_size * 0.6 / 72  # inches
    row_room = char * max((len(t) for t in labels), default=0)
    col_long = char * max((len(t) for t in col_labels), default=0)
    width = min(16.0, max(4.0, 0.45 * cols + 2.5) + max(0.0, row_room - 1.0))
    upright = cols > 10 or col_long > 0.8 * (width - row_room - 1.5) / max(cols, 1)
    height = min(16.0, max(3.5, 0.4 * rows + 1.8) + (max(0.0, col_long - 0.3) if upright else 0))
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if rows * cols <= 900:
        for i in range(rows):
            for j in range(cols):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_yticks(range(rows), labels, fontsize=tick_size)
    ax.set_xticks(range(cols), col_labels, fontsize=tick_size, rotation=90 if upright else 0)
    for tick in ax.get_yticklabels()[num_known:]:
        tick.set_color(UNSEEN_COLOR)
    if num_known < rows:
        ax.axhline(num_known - 0.5, color=UNSEEN_COLOR, linewidth=1.5)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("where test images went (colour: share of the row)")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    tight_layout(fig)
    return fig


# ----------------------------------------------------------------------------- calibration


@dataclass
class CalibrationBins:
    """Equal-width confidence bins over [0, 1]: bin ``b`` holds ``edges[b] < c <= edges[b+1]``
    (the first bin also holds 0). Accuracy and mean confidence are NaN in empty bins."""

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> CalibrationBins:
    confidence = np.asarray(confidence, float)
    correct = np.asarray(correct, float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
        conf = np.bincount(idx, weights=confidence, minlength=n_bins) / counts
    return CalibrationBins(edges, counts, acc, conf)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """ECE (Guo et al. 2017): sum over bins of |bin share| x |accuracy - mean confidence|.

    On unseen images every prediction is wrong, so their ECE is their mean confidence.
    NaN for no images.
    """
    b = calibration_bins(confidence, correct, n_bins)
    n = b.counts.sum()
    if n == 0:
        return math.nan
    filled = b.counts > 0
    return float(np.sum(b.counts[filled] / n * np.abs(b.accuracy[filled] - b.confidence[filled])))


def reliability_figure(
    known_confidence: np.ndarray,
    known_correct: np.ndarray,
    unseen_confidence: np.ndarray,
    n_bins: int = 15,
    name: str = "max-softmax",
) -> Figure:
    """Left: accuracy vs MSP confidence on known images, with ECE. Right: the MSP
    distribution of unseen images, which are always wrong (their ECE is their mean MSP)."""
    fig = Figure(figsize=(9.0, 3.8))
    left, right = fig.subplots(1, 2)
    b = calibration_bins(known_confidence, known_correct, n_bins)
    width = b.edges[1] - b.edges[0]
    centers = b.edges[:-1] + width / 2
    filled = b.counts > 0
    ece_known = expected_calibration_error(known_confidence, known_correct, n_bins)
    left.bar(centers[filled], b.accuracy[filled], width=width * 0.95, color=KNOWN_COLOR,
             edgecolor="white", label="accuracy")  # fmt: skip
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    left.plot(b.confidence[filled], b.accuracy[filled], "o", color="black", markersize=3,
              label="mean confidence")  # fmt: skip
    left.set_xlim(0, 1)
    left.set_ylim(0, 1.02)
    left.set_xlabel(f"{name} confidence")
    left.set_ylabel("accuracy")
    left.set_title(f"known images ({len(known_confidence)}): ECE {ece_known:.3f}", fontsize=10)
    left.legend(fontsize=7, loc="upper left", frameon=False)

    unseen_confidence = np.asarray(unseen_confidence, float)
    if unseen_confidence.size:
        ece_unseen = expected_calibration_error(
            unseen_confidence, np.zeros(len(unseen_confidence)), n_bins
        )
        weights = np.full(len(unseen_confidence), 1.0 / len(unseen_confidence))
        right.hist(unseen_confidence, bins=b.edges, weights=weights, color=UNSEEN_COLOR, alpha=0.75,
                   edgecolor="white")  # fmt: skip
        right.set_title(
            f"unseen images ({len(unseen_confidence)}): always wrong, ECE {ece_unseen:.3f}",
            fontsize=10,
        )
    else:
        right.set_title("no unseen test images", fontsize=10)
    right.set_xlim(0, 1)
    right.set_xlabel(f"{name} confidence")
    right.set_ylabel("share of unseen images")
    tight_layout(fig)
    return fig


# ----------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """2-D coordinates of the rows ``index`` of the feature matrix, per method."""

    index: np.ndarray
    coords: dict[str, np.ndarray]


def subsample_index(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` row indices, stratified by label, sorted.

    Each label keeps its share, rounded, and at least one row; when rounding up overshoots,
    the largest shares give one row back. (Only with more labels than ``max_points`` do
    the one-row minimums exceed it.)
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    sizes = np.minimum(counts, [max(1, round(c * max_points / n)) for c in counts])
    while sizes.sum() > max_points and (sizes > 1).any():
        sizes[np.argmax(sizes)] -= 1
    keep = [
        rng.choice(np.flatnonzero(labels == value), size=int(k), replace=False)
        for value, k in zip(values, sizes, strict=True)
    ]
    return np.sort(np.concatenate(keep))


def project_features(
    features: np.ndarray,
    labels: np.ndarray,
    max_points: int = 3000,
    tsne_points: int = 1500,
    seed: int = 0,
    threads: int = 1,
) -> Projection:
    """PCA of all test features shown on a stratified subsample of ``max_points``; t-SNE
    (on the first 50 principal components) of at most ``tsne_points`` of those when
    ``tsne_points > 0``. t-SNE is the slow part (2.8 s for 1,500 points on one core of the
    2-core CI machine, 1.9 s on two); it uses at most ``threads`` OpenMP threads. For a given
    thread count the layout repeats; across thread counts it can differ in rounding, because
    scikit-learn sums t-SNE's normalising constant over the threads."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, np.float64)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    index = subsample_index(labels, max_points, seed)
    coords: dict[str, np.ndarray] = {}
    if len(x) < 3 or x.shape[1] < 2 or np.ptp(x, axis=0).max() == 0:
        return Projection(index, coords)  # nothing to project (one point, or all alike)
    with np.errstate(all="ignore"):
        pca = PCA(n_components=min(50, x.shape[1], len(x)), random_state=seed).fit(x)
        pcs = pca.transform(x[index])
    if not np.isfinite(pcs).all():  # features of a diverged network: t-SNE would crash on them
        return Projection(index, coords)
    coords["PCA"] = pcs[:, :2]
    if tsne_points > 0 and len(index) > 10:
        sub = subsample_index(np.asarray(labels)[index], tsne_points, seed)
        perplexity = float(min(30.0, (len(sub) - 1) / 3))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                    max_iter=500)  # fmt: skip
        t = np.full((len(index), 2), np.nan)
        # one scale for all components (t-SNE's perplexity calibration makes the layout
        # scale-free): it computes in float32, where the distances of huge features overflow
        spread = float(np.abs(pcs[sub]).max()) or 1.0
        with threadpool_limits(limits=max(1, threads)):
            t[sub] = tsne.fit_transform(pcs[sub] / spread)
        coords["t-SNE"] = t
    return Projection(index, coords)


def projection_figure(
    projection: Projection, labels: np.ndarray, class_names: Sequence[str], unseen: Sequence[int]
) -> Figure:
    """One panel per method; known classes coloured dots, unseen classes black-edged crosses.

    ``labels`` are original class indices of all test images; ``unseen`` the unseen ones.
    """
    from matplotlib import colormaps

    labels = np.asarray(labels)[projection.index]
    methods = list(projection.coords)
    fig = Figure(figsize=(5.2 * max(1, len(methods)) + 1.6, 4.6))
    axes = fig.subplots(1, max(1, len(methods)), squeeze=False)[0]
    present = [c for c in range(len(class_names)) if (labels == c).any()]
    known_present = [c for c in present if c not in set(unseen)]
    cmap = colormaps["tab10" if len(known_present) <= 10 else "tab20"]
    unseen_markers = ["X", "P", "*", "D", "s", "^", "v"]
    for ax, method in zip(axes, methods, strict=False):
        xy = projection.coords[method]
        for n, c in enumerate(known_present):
            rows = (labels == c) & np.isfinite(xy[:, 0])
            ax.scatter(xy[rows, 0], xy[rows, 1], s=5, alpha=0.6, color=cmap(n % cmap.N),
                       label=literal(class_names[c], LABEL_CHARS), rasterized=True, linewidths=0)  # fmt: skip
        for n, c in enumerate(c for c in present if c in set(unseen)):
            rows = (labels == c) & np.isfinite(xy[:, 0])
            ax.scatter(xy[rows, 0], xy[rows, 1], s=22, color="black", alpha=0.8,
                       marker=unseen_markers[n % len(unseen_markers)],
                       label=literal(class_names[c], LABEL_CHARS) + " (unseen)", rasterized=True,
                       linewidths=0)  # fmt: skip
        shown = int(np.isfinite(xy[:, 0]).sum())
        ax.set_title(f"{method} of test features ({shown} images)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if not methods:
        axes[0].set_title("too few test images to project")
    else:
        handles, names = axes[0].get_legend_handles_labels()
        right = 1 - 1.6 / fig.get_figwidth()
        tight_layout(fig, rect=(0, 0, right, 1))
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7,
                   frameon=False, markerscale=2)  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- training curves


def training_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Loss, accuracy (training and validation) and learning rate per epoch.

    Rows with a ``network`` column (``--head ovr-separate``: one row per binary network and
    epoch) are drawn as one thin line per network; their accuracies are each network's own
    "class k or not" accuracy.
    """
    fig = Figure(figsize=(11.0, 3.2))
    axes = fig.subplots(1, 3)
    networks = sorted({row["network"] for row in history if row.get("network") not in (None, "")})
    groups = [[row for row in history if row.get("network") == n] for n in networks] or [history]
    many = len(groups) > 1

    def column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
        return np.array([_float(row.get(key)) for row in rows], float)

    style = dict(linewidth=0.8, alpha=0.6) if many else dict(marker="o", markersize=3)
    for g, rows in enumerate(groups):
        epochs = column(rows, "epoch")
        axes[0].plot(epochs, column(rows, "loss"), color="C0" if many else None, **style)
        for c, (key, label) in enumerate(
            (("train_accuracy", "training (augmented)"), ("val_accuracy", "validation"))
        ):
            values = column(rows, key)
            if np.isfinite(values).any():
                axes[1].plot(epochs, values, color=f"C{c}", label=label if g == 0 else None,
                             **style)  # fmt: skip
        if g == 0:  # one schedule, the same for every network
            axes[2].plot(epochs, column(rows, "lr"), color="grey")
    axes[0].set_title(
        f"training loss ({len(groups)} binary networks)" if many else "training loss", fontsize=10
    )
    axes[1].set_title(
        "accuracy of each network (class k or not)" if many else "accuracy on known classes",
        fontsize=10,
    )
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, frameon=False)
    axes[2].set_title("learning rate", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tight_layout(fig)
    return fig


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- comparison


def comparison_figure(
    labels: Sequence[str],
    score_names: Sequence[str],
    metric: str,
    means: np.ndarray,
    stds: np.ndarray,
) -> Figure:
    """Grouped horizontal bars: one group per configuration, one bar per score, error bars =
    standard deviation over seeds. ``means``/``stds`` are configurations x scores (NaN = absent)."""
    means = np.asarray(means, float)
    stds = np.nan_to_num(np.asarray(stds, float), nan=0.0)
    n_cfg, n_scores = means.shape
    beside = n_scores > LEGEND_INSIDE
    fig = Figure(figsize=(9.0 if beside else 7.5, max(2.5, 0.28 * n_cfg * max(n_scores, 1) + 1.2)))
    ax = fig.add_subplot()
    height = 0.8 / max(n_scores, 1)
    for j, name in enumerate(score_names):
        y = np.arange(n_cfg) + (j - (n_scores - 1) / 2) * height
        ok = np.isfinite(means[:, j])
        ax.barh(y[ok], means[ok, j], height=height * 0.9, xerr=stds[ok, j], capsize=2, label=name,
                edgecolor="white", **series_style(j, bars=True))  # fmt: skip
    ax.set_yticks(range(n_cfg), [literal(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean ± std over seeds)")
    if beside:  # more entries than fit over the bars
        ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    tight_layout(fig)
    return fig


def accuracy_auroc_figure(
    accuracy: np.ndarray,
    auroc: np.ndarray,
    score_names: Sequence[str],
    correlations: Sequence[float],
) -> Figure:
    """Closed-set accuracy (x) against AUROC (y), one point per configuration and one series
    per score, each labelled with its rank correlation (Vaze et al. 2022's check that a
    better closed-set classifier is a better open-set one). ``auroc`` is configurations x
    scores (NaN = absent)."""
    accuracy, auroc = np.asarray(accuracy, float), np.asarray(auroc, float)
    beside = len(score_names) > LEGEND_INSIDE
    fig = Figure(figsize=(8.5 if beside else 6.0, 4.2))
    ax = fig.add_subplot()
    for j, name in enumerate(score_names):
        ok = np.isfinite(accuracy) & np.isfinite(auroc[:, j])
        rho = correlations[j]
        label = f"{name} (ρ = {rho:.2f})" if math.isfinite(rho) else f"{name} (ρ: -)"
        style = series_style(j)
        ax.plot(accuracy[ok], auroc[ok, j], marker="o", markersize=4, linestyle="none",
                color=style["color"], label=literal(label))  # fmt: skip
    ax.set_xlabel("closed-set accuracy (mean over runs)")
    ax.set_ylabel("AUROC (mean over runs)")
    ax.grid(alpha=0.3)
    if beside:
        ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=8, frameon=False, loc="best")
    tight_layout(fig)
    return fig
