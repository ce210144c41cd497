"""Reports: what a run did with unseen classes, as pictures a person opens in a browser.

``build_report(run_dir)`` reads a finished run folder (config.json, metrics.json,
history.csv, scores.npz) and writes, without retraining:

* ``report.html``: self-contained (every figure embedded as a base64 PNG, inline CSS, no
  external resource), opens offline;
* ``report.md``: the same tables, linking the PNGs;
* ``plots/*.png``: the figures (for a run with several heads, ``<head>/plots/*.png``; the
  report then has one section per head).

``write_comparison(run_dirs, out_dir)`` writes ``comparison.html``, ``comparison.md``,
``comparison.json`` and ``comparison.csv``: one row per configuration (runs whose
config.json differs only in :data:`GROUPING_IGNORES`, i.e. seeds of the same setting), mean
and sample standard deviation over its runs of every metric of every score.
``aggregate_runs(run_dirs)`` returns those rows as dicts, for other commands (``unseen sweep``).

Scores follow the package convention: higher = more likely a known class.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .config import FIELDS, RESULT_NEUTRAL_KEYS, with_field_defaults
from .console import absorbed_text, counted, counts_text, mean_std_text, valid_unicode
from .data import absolute_paths
from .errors import UnseenError
from .farood import (
    current_results,
    far_ood_stats,
    is_stale,
    ood_image_scores,
    ood_path,
    ood_results,
    ood_sentence,
)
from .metrics import CONFIDENT, mean_std
from .rare import rare_statistics
from .runfolder import (
    FINISHED_FILE,
    atomic_write,
    describe_mixed,
    is_finished,
    mixed_settings,
    read_config_json,
    read_json,
    read_npz,
    require_finished,
    resolved_settings,
    run_damage,
    run_heads,
    write_json,
)
from .threads import thread_budget

#: config.json keys that do not make a different configuration: runs differing only here
#: are repetitions of one setting and are averaged together (the seed, and the options that
#: change where a run is written or how fast it runs, not what it computes)
#: config.json keys in which repeats of one configuration may differ; ``scores``: the score
#: list changes neither the network nor any score's values (a sweep rescored with +vim, then
#: given more seeds, is one row per condition, whose ``computed`` counts each score's runs)
GROUPING_IGNORES = ("seed", "scores", *RESULT_NEUTRAL_KEYS, "pretrained_weights")

#: metrics of each score shown in tables: key, column label, True when higher is better
SCORE_METRICS = (
    ("auroc", "AUROC", True),
    ("aupr_in", "AUPR-in", True),
    ("aupr_out", "AUPR-out", True),
    ("fpr_at_95_tpr", "FPR@95TPR", False),
    ("oscr", "OSCR", True),
    ("open_set_accuracy", "open-set acc", True),
    ("open_set_macro_f1", "open-set F1", True),
    # a trade-off at one threshold (rejecting everything maximises the first): neither bold
    ("unseen_rejected", "unseen rejected", None),
    ("known_rejected", "known rejected", None),
    ("threshold", "threshold", None),
)

#: run-level metrics averaged in comparisons
RUN_METRICS = (
    ("closed_set_accuracy", "closed-set acc"),
    ("all_test_accuracy", "all-test acc"),
    ("final_val_accuracy", "val acc"),
    ("train_seconds", "train s"),
)

_IMAGES_LOADED_SCRIPT = """<script>
/* once loaded, sets the body attribute data-images-loaded to "loaded/total"; a browser test reads it */
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1150px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{margin-top:1.3em}table{border-collapse:collapse;margin:8px 0 16px;font-size:0.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}table.kv td{text-align:left}
.best{font-weight:bold;background:#eef6ee}.note{color:#555;font-size:0.92em}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:0.92em;max-width:900px}.grid{display:flex;flex-wrap:wrap;gap:8px}
.grid figure{flex:0 1 540px}.headline{background:#fff8e6;border-left:4px solid #e0a000;padding:8px 12px}
.warning{background:#fdecea;border-left:4px solid #c0392b;padding:8px 12px}
"""


# ----------------------------------------------------------------------------- reading a run


@dataclass
class HeadRun:
    """What one head of a run left: its folder, metrics, test arrays and training history."""

    head: str
    folder: Path
    metrics: dict
    arrays: dict[str, np.ndarray]
    history: list[dict]


def is_run(path: str | Path) -> bool:
    """A run folder (finished or not) is a folder holding config.json."""
    return (Path(path) / "config.json").is_file()


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UnseenError(f"{path} does not exist; the run folder is incomplete.")
    arrays = read_npz(path)
    # a damaged or hand-edited file: one sentence, not an IndexError in the middle of a plot
    for prefix, rows_of in (("val_", "val_label"), ("", "label")):
        group = {
            k: v
            for k, v in arrays.items()
            if k.startswith(prefix) and (prefix or not k.startswith("val_"))
        }
        lengths = {len(v) if v.ndim else -1 for v in group.values()}
        if len(lengths) > 1:
            raise UnseenError(
                f"{path} holds arrays of different lengths ({rows_of} and the others): the run folder is damaged."
            )
    for k, v in arrays.items():
        if "score_" in k and not np.isfinite(v).all():
            raise UnseenError(f"{path} holds non-finite values in {k}: the run folder is damaged.")
    return arrays


def head_folder(run_dir: Path, config: dict, head: str) -> Path:
    """Where one head's files are: the run folder itself, or ``RUN/<head>`` for several heads."""
    return run_dir if len(run_heads(run_dir, config)) == 1 else run_dir / head


def load_head_metrics(run_dir: Path, config: dict) -> dict[str, dict]:
    """head -> metrics.json of that head."""
    return {
        h: read_json(head_folder(run_dir, config, h) / "metrics.json")
        for h in run_heads(run_dir, config)
    }


def load_run(run_dir: str | Path, check_finished: bool = True) -> tuple[dict, list[HeadRun]]:
    """config.json and every head of a run; refuses unfinished runs unless ``check_finished``
    is False."""
    run_dir = check_run_folder(run_dir) if check_finished else Path(run_dir)
    config = read_config_json(run_dir / "config.json")
    heads = []
    for head, metrics in load_head_metrics(run_dir, config).items():
        folder = head_folder(run_dir, config, head)
        heads.append(
            HeadRun(
                head, folder, metrics, read_arrays(folder / "scores.npz"),
                read_history(folder / "history.csv"),
            )
        )  # fmt: skip
    return config, heads


def check_run_folder(run_dir: str | Path) -> Path:
    """A finished run folder, or a one-line error saying what the folder is instead. One
    head's folder of a run with several heads is a complete one-head run: its report is that
    head's alone."""
    run_dir = Path(run_dir)
    require_finished(run_dir)
    if not is_run(run_dir):
        raise UnseenError(f"{run_dir} has no config.json; it is not a run folder.")
    return run_dir


# ----------------------------------------------------------------------------- figures of a run


@dataclass
class Plot:
    """One figure: its file (relative to the report), title, caption and PNG bytes."""

    file: str
    title: str
    caption: str
    png: bytes


@dataclass
class HeadSection:
    head: HeadRun
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: the far-OOD figure of each dataset scored (one of ``plots``), shown in its section
    ood_plots: dict[str, Plot] = field(default_factory=dict)


def head_confidence(head: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """Confidence of each test image and its name: the head's largest class probability from
    the stored logits (max softmax, or max sigmoid for one-vs-rest heads), else the stored
    ``msp`` score of an older run folder."""
    from .heads import confidence, is_one_vs_rest

    if "logits" in arrays:
        import torch

        logits = torch.from_numpy(arrays["logits"].astype(np.float32))
        if is_one_vs_rest(head):
            return confidence(head, logits).numpy(), "max-sigmoid"
        return confidence("softmax", logits).numpy(), "max-softmax"
    if "score_msp" in arrays:
        return arrays["score_msp"].astype(np.float64), "max-softmax"
    return None, "max-softmax"


def head_plots(
    config: dict, h: HeadRun, prefix: str, tsne: bool = True, max_points: int = 3000
) -> HeadSection:
    """Every figure of one head; ``prefix`` is the plots folder relative to the head folder."""
    section, a = HeadSection(h), h.arrays
    with ThreadPoolExecutor(1) as pool:
        # the projection (t-SNE: most of the report's time) is computed on a second thread,
        # with every core of the thread budget, while this one draws the other figures;
        # t-SNE's loop runs outside Python's GIL
        projection = None
        if "features" in a and config.get("split", {}).get("classes"):
            projection = pool.submit(_timed_projection, a["features"], a["label"], max_points, tsne)
        _draw_head_figures(section, config, h, prefix, projection)
    return section


def _timed_projection(
    features: np.ndarray, labels: np.ndarray, max_points: int, tsne: bool
) -> tuple[plots.Projection, float]:
    start = time.perf_counter()
    proj = plots.project_features(
        features, labels, max_points, 1500 if tsne else 0, threads=thread_budget()
    )
    return proj, time.perf_counter() - start


def _draw_head_figures(
    section: HeadSection,
    config: dict,
    h: HeadRun,
    prefix: str,
    projection: Future[tuple[plots.Projection, float]] | None,
) -> None:
    a, split = h.arrays, config.get("split", {})
    classes = list(split.get("classes") or [])
    known = list(split.get("known") or [])
    unseen = list(split.get("unseen") or [])
    is_unseen = a["is_unseen"].astype(bool)
    score_names = list(h.metrics.get("scores", {}))

    def add(stem: str, title: str, caption: str, make: Callable[[], Any]) -> None:
        start = time.perf_counter()
        fig = make()
        png = plots.figure_png(fig)
        section.seconds[stem] = time.perf_counter() - start
        section.plots.append(Plot(f"{prefix}/{stem}.png", title, caption, png))

    for name in score_names:
        if f"score_{name}" not in a:
            continue
        s = a[f"score_{name}"]
        threshold = h.metrics["scores"][name].get("threshold")
        m = h.metrics["scores"][name]
        where = (
            "the score's own decision rule"
            if m.get("threshold_from") == "score"
            else "calibrated on the validation slice"
        )
        known_rejected = m.get("known_rejected")
        accepted = None if known_rejected is None else 1 - known_rejected
        caption = (
            f"Test images at or right of the dashed threshold ({where}) are accepted as known: "
            f"here {_pct(accepted)} of known test images; "
        )
        caption += (
            f"{_pct(m.get('unseen_rejected'))} of unseen images fall left of it and are rejected. "
            "The less the two histograms overlap, the better the score separates them."
            if is_unseen.any()
            else "no test image is of an unseen class in this run, so there is nothing to "
            "separate them from"
            + (
                " (a --rare class is known: see the summary for it)."
                if h.metrics.get("rare")
                else "."
            )
        )
        add(
            f"hist_{name}",
            f"{name}: known vs unseen" if is_unseen.any() else f"{name}: known test images",
            caption,
            lambda s=s, t=threshold, n=name: plots.score_histogram(
                s[~is_unseen], s[is_unseen], t, n
            ),
        )
    # a known rare class (--rare) against the other known classes, on the run's first score
    first = next((n for n in score_names if f"score_{n}" in a), None)
    for cls, r in h.metrics.get("rare", {}).items() if first else ():
        if not r.get("known") or cls not in classes or "label" not in a:
            continue
        is_rare = a["label"] == classes.index(cls)
        others = ~is_unseen & ~is_rare
        if not is_rare.any() or not others.any():
            continue
        s, threshold = a[f"score_{first}"], h.metrics["scores"][first].get("threshold")
        auroc_rare = r.get("auroc_vs_known", {}).get(first)
        add(
            f"hist_rare_{classes.index(cls)}_{first}",
            f"{first}: rare class {cls} vs the other known classes",
            f"The {int(is_rare.sum())} test images of the rare class {cls} (kept at "
            f"{r.get('fraction')} of its training images) against those of the other known "
            f"classes, with the threshold calibrated on the validation slice. AUROC of the "
            f"others against it: {_fmt(auroc_rare)} (0.5: the score does not single it out; "
            "below 0.5: it is more confident on the rare class).",
            lambda s=s, t=threshold, o=others, k=is_rare, c=cls: plots.score_histogram(
                s[o], s[k], t, first, groups=("other known", f"rare class {c}")
            ),
        )
    # another dataset's images (`unseen ood`, --ood) beside the run's own, on the score
    # `unseen predict` decides with by default (else the run's first score they have)
    from .predict import DEFAULT_SCORE

    for r in current_results(h.folder).values():
        per_image = ood_image_scores(h.folder, r)
        shown = [n for n in (DEFAULT_SCORE, *score_names) if n in per_image and f"score_{n}" in a]
        if not shown or shown[0] not in h.metrics.get("scores", {}):
            continue
        name, m = shown[0], r["scores"].get(shown[0], {})
        s, threshold = a[f"score_{name}"], h.metrics["scores"][name].get("threshold")
        add(
            f"ood_{ood_path(h.folder, r['dataset']).stem}",
            f"{name}: known vs unseen vs {r['dataset']}",
            f"The run's {name} score on its known and unseen test images and on the "
            f"{r['num_images']} images of {r['dataset']} (grey). Left of the dashed threshold "
            f"the run rejects {_pct(m.get('unseen_rejected'))} of them (AUROC against the "
            f"known images {_fmt(m.get('auroc'))}).",
            lambda s=s, t=threshold, n=name, o=(r["dataset"], per_image[name]): (
                plots.score_histogram(s[~is_unseen], s[is_unseen], t, n, other=o)
            ),
        )
        section.ood_plots[r["dataset"]] = section.plots[-1]
    if score_names and is_unseen.any() and (~is_unseen).any():
        add(
            "roc",
            "ROC curves",
            "Each curve sweeps one score's threshold: known images accepted (up) against unseen "
            "images accepted (right). The dashed line is 95% of known images accepted: where it "
            "crosses a curve is about that score's FPR@95TPR (the table's figure is exact: "
            "where tied scores make a straight segment of the curve, it can be higher). Higher "
            "and further left is better.",
            lambda: plots.roc_figure(
                {n: a[f"score_{n}"] for n in score_names if f"score_{n}" in a}, ~is_unseen
            ),
        )
    if classes and known:
        counts = plots.confusion_counts(a["label"], a["predicted"], known, unseen)
        add(
            "confusion",
            "Confusion matrix with the unseen classes",
            "Rows are true classes, columns the class the network predicted (it can only name known "
            "classes). The red rows below the line are the unseen classes: they show which known "
            "classes absorbed them. Colour is the share of the row, numbers are image counts.",
            lambda: plots.confusion_figure(
                counts,
                [classes[i] for i in known + unseen],
                [classes[i] for i in known],
                len(known),
            ),
        )
    msp, conf_name = head_confidence(h.head, a)
    if msp is not None:
        correct = a["predicted"] == a["label_known"]
        add(
            "reliability",
            f"Reliability of the {conf_name} probability",
            "Left: on known images, accuracy per confidence bin against the diagonal of perfect "
            "calibration; ECE is the average gap weighted by bin size. Right: the confidence the "
            "network gives unseen images, which it always gets wrong: the further right, the more "
            "confidently an unseen image was given a known class's name.",
            lambda: plots.reliability_figure(
                msp[~is_unseen], correct[~is_unseen], msp[is_unseen], name=conf_name
            ),
        )
    if projection is None:
        section.notes.append(
            "No feature projection: this run's scores.npz has no test features (written by an "
            "older version); rerun it to get one."
        )
    else:
        labels = a["label"]
        proj, section.seconds["projection_fit"] = projection.result()
        if not proj.coords:
            section.notes.append(
                "No feature projection: the test features are all alike or give no finite "
                "principal components (did training diverge?)."
            )
        else:
            add(
                "projection",
                "Test features in 2-D",
                f"{' and '.join(proj.coords)} of the penultimate-layer features of the test "
                "images (a stratified sample where there are many), coloured by true class; "
                "unseen classes are black markers. Unseen images that sit inside a known cluster "
                "are the ones no feature-based score can reject. t-SNE distances between "
                "clusters mean little; PCA is linear and faithful but crowded.",
                lambda: plots.projection_figure(proj, labels, classes, unseen),
            )
    if h.history:
        separate = any(row.get("network") not in (None, "") for row in h.history)
        add(
            "training",
            "Training curves",
            (
                "Per-epoch loss and accuracy of each binary network (class k or not; one line "
                "per network), and the learning-rate schedule they share."
                if separate
                else "Per-epoch loss and accuracy on the known classes (training accuracy is "
                "measured on augmented batches while the weights change; validation on the "
                "held-back slice), and the learning-rate schedule."
            ),
            lambda: plots.training_figure(h.history),
        )


# ----------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * float(value):.1f}%"


def md_text(value: Any) -> str:
    """``value`` for report.md: ``|`` would end a table cell and ``<`` open an HTML tag in most
    Markdown viewers (class names come from folder names and npz files)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _names(values: Sequence[Any]) -> str:
    return ", ".join(map(str, values)) or "-"


def summary_rows(config: dict, metrics: dict) -> list[tuple[str, str]]:
    """The key/value facts of a run at the top of its report."""
    split = config.get("split", {})
    augment = config.get("augment", "-")
    if config.get("flip") is not None:
        augment += ", flips " + ("on" if config.get("flip") else "off")
    pretrained = (
        metrics.get("pretrained_on") or config.get("pretrained") or "none (trained from scratch)"
    )
    thresholds = (
        f"calibrated to accept {_pct(config.get('known_acceptance'))} of known validation images"
    )
    heads = metrics.get("heads") or {"": metrics}
    own = sorted({n for h in heads.values() for n, m in h.get("scores", {}).items()
                  if m.get("threshold_from") == "score"})  # fmt: skip
    if own:
        thresholds += f"; {', '.join(own)}: the score's own decision rule"
    counts = next((h for h in heads.values() if "num_train" in h), None)  # the same for each head
    trained_on = (  # recorded since 2026-11-29: earlier runs have no such row
        f"{counts['num_train']} trained on, {counts.get('num_val', '-')} for validation"
        if counts
        else None
    )
    per_s = metrics.get("train_images_per_second")
    epochs = config.get("epochs", "-")
    train = (
        f"{_fmt(metrics.get('train_seconds'), 1)} s for {epochs} epoch{'' if epochs == 1 else 's'}"
    )
    if per_s:
        train += f" ({per_s:,.0f} images/s)"
    rows = [
        ("dataset", str(config.get("dataset", metrics.get("dataset", "-")))),
        ("known classes", _names(split.get("known_names") or metrics.get("known_classes", []))),
        ("unseen classes", _names(split.get("unseen_names") or metrics.get("unseen_classes", []))),
        ("training images", trained_on),
        ("test images", f"{metrics.get('num_test_known', '-')} known, {metrics.get('num_test_unseen', '-')} unseen"),
        ("model", str(config.get("model", metrics.get("model", "-")))),
        ("head", str(metrics.get("head", "-"))),
        ("augmentation", augment),
        ("pretrained weights", str(pretrained)),
        ("training", train),
        ("device", f"{metrics.get('device', '-')}, {metrics.get('precision', '-')}"),
        ("seed", str(config.get("seed", "-"))),
        ("thresholds", thresholds),
        ("rescored", _rescored_text(next(iter(heads.values())).get("rescored"))),
    ]  # fmt: skip
    return [(key, value) for key, value in rows if value is not None]


def _rescored_text(rescored: Any) -> str | None:
    """The report's line for a run that ``unseen rescore`` scored again: what changed, and
    the scores it trained with."""
    if not isinstance(rescored, dict):
        return None

    def text(value: Any) -> str:
        return _names(value) if isinstance(value, list) else "auto" if value is None else str(value)

    changed = rescored.get("changed")
    parts = [
        f"{k} {text(v[0])} -> {text(v[1])}"
        for k, v in (changed.items() if isinstance(changed, dict) else [])
        if isinstance(v, list) and len(v) == 2
    ]
    text = f"on {rescored.get('device', '-')}, without training again"
    text += f"; last changed: {'; '.join(parts)}" if parts else " (options unchanged)"
    computed = rescored.get("computed")  # said when --scores did not change: 'all' grew
    if (
        isinstance(computed, list)
        and len(computed) == 2
        and all(isinstance(c, list) for c in computed)
        and not (isinstance(changed, dict) and "scores" in changed)
    ):
        if added := [n for n in computed[1] if n not in computed[0]]:
            text += f"; scores added: {_names(added)}"
        if dropped := [n for n in computed[0] if n not in computed[1]]:
            text += f"; scores dropped: {_names(dropped)}"
    trained = (rescored.get("trained_with") or {}).get("scores")
    if isinstance(trained, list):
        text += f"; trained with scores {_names(trained)}"
    return text


def headline(metrics: dict) -> str:
    """The sentences a naive evaluation hides, in plain text."""
    from .rare import rare_summary

    uc = metrics.get("unseen_confidence", {})
    absorbed = counts_text(metrics.get("unseen_predicted_as", {}))
    parts = [
        f"Closed-set accuracy {_pct(metrics.get('closed_set_accuracy'))} on known classes; "
        f"a naive evaluation over all test images reports {_pct(metrics.get('all_test_accuracy'))}."
    ]
    if metrics.get("num_test_unseen"):
        parts.append(
            f"The network labelled every one of the {metrics['num_test_unseen']} unseen images as a "
            f"known class (mostly {absorbed}), with mean {metrics.get('confidence_from', 'max softmax probability')} "
            f"{_fmt(uc.get('mean_msp'))}; {_pct(uc.get('frac_msp_above_0_9'))} of them above {CONFIDENT}."
        )
    for name, r in metrics.get("rare", {}).items():  # --rare: how the scarce class fared
        summary = rare_summary(name, r, _fmt, share=_pct)
        parts.append(f"{summary[0].upper()}{summary[1:]}.")
    if metrics.get("pretrained_warning"):
        parts.append(f"Warning: {metrics['pretrained_warning']}")
    for note in metrics.get("data_notes", []):  # reading a folder dataset: resized, 16-bit...
        parts.append(f"Note on the data: {note}.")
    return " ".join(parts)


def best_values(scores: dict[str, dict]) -> dict[str, float]:
    """Best value of each metric over scores (max, or min where lower is better)."""
    best = {}
    for key, _, higher in SCORE_METRICS:
        values = [
            v[key]
            for v in scores.values()
            if isinstance(v.get(key), (int, float)) and math.isfinite(v[key])
        ]
        if values and higher is not None and len(scores) > 1:
            best[key] = max(values) if higher else min(values)
    return best


def score_table_html(scores: dict[str, dict]) -> str:
    best = best_values(scores)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in SCORE_METRICS)
    rows = []
    for name, m in scores.items():
        cells = []
        for key, _, _ in SCORE_METRICS:
            v = m.get(key)
            cls = ' class="best"' if key in best and v == best[key] else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return (
        f'<table class="scores" id="score-table"><thead><tr><th>score</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def score_table_md(scores: dict[str, dict]) -> str:
    best = best_values(scores)
    lines = [
        "| score | " + " | ".join(label for _, label, _ in SCORE_METRICS) + " |",
        "|---|" + "---:|" * len(SCORE_METRICS),
    ]
    for name, m in scores.items():
        cells = []
        for key, _, _ in SCORE_METRICS:
            text = _fmt(m.get(key))
            cells.append(f"**{text}**" if key in best and m.get(key) == best[key] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kv_table_html(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure_html(p: Plot) -> str:
    return (
        f"<figure>{img_tag(p.png, p.title)}<figcaption><b>{html.escape(p.title)}.</b> "
        f"{html.escape(p.caption)}</figcaption></figure>"
    )


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{_IMAGES_LOADED_SCRIPT}</head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _write_text(path: Path, text: str) -> Path:
    # valid UTF-8 whatever the names hold: runs of earlier versions kept a class folder's
    # non-UTF-8 bytes as lone surrogates
    return atomic_write(path, lambda fh: fh.write(valid_unicode(text).encode("utf-8")))


def _write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


# ----------------------------------------------------------------------------- the run report


def build_report(run_dir: str | Path, tsne: bool = True, check_finished: bool = True) -> Path:
    """Write report.html, report.md and the plots of a finished run; return report.html's path.

    Reads only the run folder: nothing is retrained or recomputed except the figures.
    ``tsne=False`` leaves out the t-SNE panel (the slowest figure). For a run with several
    heads, each head folder gets its own report and the run folder one with a section per
    head (the PNGs are written once, in ``<head>/plots/``).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    config, heads = load_run(run_dir, check_finished=check_finished)
    sections = [head_plots(config, h, "plots", tsne=tsne) for h in heads]
    for s in sections:
        for p in s.plots:
            _write_bytes(s.head.folder / p.file, p.png)
        # figures of an earlier build that this one has not (a score `unseen rescore`
        # dropped, the t-SNE panel after --no-tsne) would sit beside the report as if current
        written = {s.head.folder / p.file for p in s.plots}
        for old in (s.head.folder / "plots").glob("*.png"):
            if old not in written:
                old.unlink()
    multi = len(sections) > 1
    if multi:
        for s in sections:
            head_config = {**config, "head": [s.head.head]}
            _write_report_files(s.head.folder, head_config, [s], start)
    return _write_report_files(run_dir, config, sections, start, multi=multi)


def _write_report_files(
    folder: Path,
    config: dict,
    sections: list[HeadSection],
    start: float,
    multi: bool = False,
) -> Path:
    """report.html and report.md in ``folder``; plots are linked relative to it."""
    title = (
        f"unseen report: {config.get('dataset', '?')}, unseen "
        f"{_names(config.get('split', {}).get('unseen_names', []))}"
    )
    html_parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">run folder {html.escape(str(folder.resolve()))}</p>',
    ]
    md_parts = [f"# {md_text(title)}", "", f"Run folder `{folder.resolve()}`", ""]
    if multi:
        links = " · ".join(
            f'<a href="#head-{html.escape(s.head.head)}">{html.escape(s.head.head)}</a>'
            for s in sections
        )
        html_parts.append(
            f"<p>One section per head (each head folder also has its own report): {links}</p>"
        )
    for s in sections:
        h, m = s.head, s.head.metrics
        rel = os.path.relpath(h.folder, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        if multi:
            html_parts.append(
                f'<h2 id="head-{html.escape(h.head)}">Head: {html.escape(h.head)}</h2>'
            )
            md_parts += [f"## Head: {h.head}", ""]
        level = "h3" if multi else "h2"
        md_level = "###" if multi else "##"
        rows = summary_rows(config, m)
        html_parts += [
            f"<{level}>Run</{level}>", kv_table_html(rows),
            f'<p class="headline">{html.escape(headline(m))}</p>',
            f"<{level}>Rejection scores</{level}>",
            '<p class="note">Every score: higher = more likely a known class. AUROC, AUPR, FPR@95TPR and '
            "OSCR need no threshold; the open-set columns use the calibrated threshold. Best per column in "
            "bold, except the two rejection rates: a trade-off, not two goals.</p>",
            score_table_html(m.get("scores", {})),
            f"<{level}>Figures</{level}>",
        ]  # fmt: skip
        md_parts += [f"{md_level} Run", "", "| | |", "|---|---|"]
        md_parts += [f"| {md_text(k)} | {md_text(v)} |" for k, v in rows]
        md_parts += ["", f"> {md_text(headline(m))}", "", f"{md_level} Rejection scores", "",
                     "Higher = more likely a known class; best per column in bold (not the "
                     "rejection rates: a trade-off).", "",
                     score_table_md(m.get("scores", {})), ""]  # fmt: skip
        results, not_results = ood_results(h.folder)
        for r in results:  # `unseen ood`: another dataset's images as unseen
            title = f"Another dataset as unseen: {r['dataset']}"
            if is_stale(r, h.folder):  # rerun or rescored since: not its figures any more
                limit = f" --limit {r['limit']}" if r.get("limit") else ""
                text = (f"Scored before the run was last finished (a rerun or a rescore), so its "
                        f"figures are left out; `unseen ood {h.folder} --dataset {r['dataset']}"
                        f"{limit}` scores it again.")  # fmt: skip
                parts_html, parts_md = [f'<p class="note">{html.escape(text)}</p>'], [md_text(text)]
            else:
                text = ood_sentence(r)
                parts_html = [f'<p class="note">{html.escape(text)}</p>',
                              score_table_html(r.get("scores", {}))]  # fmt: skip
                parts_md = [md_text(text), "", score_table_md(r.get("scores", {}))]
                if (p := s.ood_plots.get(r["dataset"])) is not None:
                    parts_html.append(figure_html(p))
                    parts_md += ["", f"**{md_text(p.title)}.** {md_text(p.caption)}", "",
                                 f"![{md_text(p.title)}]({prefix}{p.file})"]  # fmt: skip
            html_parts[-1:-1] = [f"<{level}>{html.escape(title)}</{level}>", *parts_html]
            md_parts += [f"{md_level} {md_text(title)}", "", *parts_md, ""]
        if not_results:
            text = f"Left out of the report: {', '.join(not_results)} in ood/ (not results of unseen ood)."
            html_parts[-1:-1] = [f'<p class="note">{html.escape(text)}</p>']
            md_parts += [f"_{md_text(text)}_", ""]
        md_parts += [f"{md_level} Figures", ""]
        hist = [p for p in s.plots if p.file.rsplit("/", 1)[-1].startswith("hist_")]
        shown = hist + list(s.ood_plots.values())  # those in their far-OOD section
        others = [p for p in s.plots if p not in shown]
        if hist:
            html_parts.append(
                '<div class="grid">' + "".join(figure_html(p) for p in hist) + "</div>"
            )
        html_parts += [figure_html(p) for p in others]
        for p in hist + others:
            md_parts += [f"**{md_text(p.title)}.** {md_text(p.caption)}", "",
                         f"![{md_text(p.title)}]({prefix}{p.file})", ""]  # fmt: skip
        for note in s.notes:
            html_parts.append(f'<p class="note">{html.escape(note)}</p>')
            md_parts += [f"_{md_text(note)}_", ""]
    footer = (
        f"Built {time.strftime('%Y-%m-%d %H:%M')} by unseen report in "
        f"{time.perf_counter() - start:.1f} s from the run folder's files; rebuild with: "
        f"unseen report {folder}"
    )
    html_parts.append(f'<p class="note">{html.escape(footer)}</p>')
    md_parts += ["---", footer, ""]
    _write_text(folder / "report.md", "\n".join(md_parts))
    return _write_text(folder / "report.html", page(title, "\n".join(html_parts)))


# ----------------------------------------------------------------------------- several runs


def find_runs(
    paths: Iterable[str | Path],
    on_skip: Callable[[str], None] | None = None,
    on_damaged: Callable[[str], None] | None = None,
) -> list[Path]:
    """Expand ``paths`` into finished run folders.

    A path that is a run must be finished (else a one-line error). A folder that is not a run
    is searched (up to three levels down) for runs; unfinished runs found that way are skipped,
    each reported through ``on_skip``, and so are finished ones whose files cannot be read
    (:func:`~unseen.runfolder.run_damage`), each reported through ``on_damaged`` (or
    ``on_skip``): one damaged run of a sweep does not stop its comparison.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if is_run(path) or not path.is_dir():
            found.append(check_run_folder(path))
            continue
        inside = _runs_below(path, depth=3)
        if not inside:
            raise UnseenError(
                f"{path} is neither a run folder nor a folder of runs (no config.json found)."
            )
        for run in inside:
            if not is_finished(run):
                if on_skip is not None:
                    on_skip(
                        f"skipping {run}: not finished (no {FINISHED_FILE} with status 'finished')"
                    )
            elif problem := run_damage(run):
                if (say := on_damaged or on_skip) is not None:
                    say(f"skipping {run}: damaged: {problem}")
            else:
                found.append(run)
    unique: list[Path] = []
    for p in found:
        if p.resolve() not in {q.resolve() for q in unique}:
            unique.append(p)
    return unique


def _runs_below(folder: Path, depth: int) -> list[Path]:
    out: list[Path] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if is_run(child):
            out.append(child)
        elif depth > 1:
            out.extend(_runs_below(child, depth - 1))
    return out


def _grouping_config(config: dict) -> dict:
    """What makes two runs the same configuration: config.json without
    :data:`GROUPING_IGNORES`, with the split given one way. ``--holdout 9`` and ``--known
    0,...,8`` (or the same classes by name or index, in any order) train the same experiment:
    both become ``holdout`` = the unseen class names that the run's split recorded."""
    # older runs recorded paths as given, and lack the options added since (at their default)
    config = absolute_paths(with_field_defaults(config))
    out = {k: v for k, v in config.items() if k not in GROUPING_IGNORES}
    unseen = (config.get("split") or {}).get("unseen_names")
    if unseen is not None:
        out["holdout"], out["known"] = sorted(map(str, unseen)), None
    return out


def aggregate_runs(run_dirs: Iterable[str | Path]) -> list[dict]:
    """One dict per configuration x head, averaging its runs (seeds).

    Runs are grouped when their config.json is equal apart from :data:`GROUPING_IGNORES`; a run
    with several heads gives one row per head. Each row: ``label`` (the settings that differ
    between rows), ``head``, ``config`` (grouping config), ``runs`` (folders), ``seeds``,
    ``n_runs``, ``computed`` (score -> how many of the runs computed it), ``metrics``
    (run-level metric -> {mean, std, n}) and ``scores`` (score -> metric -> {mean, std,
    n}). ``std`` is the sample standard deviation, None for one run.
    ``--device`` and ``--precision`` stay 'auto' in config.json and so do not split a group;
    a row whose runs resolved them differently (``runfolder.resolved_settings``: a CPU and a
    GPU run, bf16 and fp32) is averaged all the same, as in ``unseen sweep``, and gets
    ``mixed_settings``. (Batch size, learning rate and epochs are recorded resolved, so runs
    that resolved them differently are separate rows.) Every folder must be a finished run.
    """
    groups: dict[tuple[str, str], dict] = {}
    for raw in run_dirs:
        run_dir = check_run_folder(raw)
        config = read_config_json(run_dir / "config.json")
        key_cfg = _grouping_config(config)
        for head, metrics in load_head_metrics(run_dir, config).items():
            key = (json.dumps(key_cfg, sort_keys=True, default=str), head)
            g = groups.setdefault(
                key,
                {"config": key_cfg, "head": head, "runs": [], "seeds": [], "m": [], "s": [],
                 "ood": []},
            )  # fmt: skip
            g["ood"].append(current_results(head_folder(run_dir, config, head)))
            g["runs"].append(str(run_dir))
            g["seeds"].append(config.get("seed"))
            g["m"].append(metrics)
            g["s"].append({"settings": resolved_settings(config, metrics)})
    rows = []
    for g in groups.values():
        score_names: list[str] = []
        for m in g["m"]:
            score_names += [n for n in m.get("scores", {}) if n not in score_names]
        rows.append({
            "head": g["head"],
            "config": g["config"],
            "runs": g["runs"],
            "seeds": g["seeds"],
            "n_runs": len(g["runs"]),
            # how many of the runs computed each score (a run without unseen test images
            # computes it, with AUROC null)
            "computed": {n: sum(n in m.get("scores", {}) for m in g["m"]) for n in score_names},
            # runs whose pretrained weights may know a class they hold out
            "seen_in_pretraining": sum(bool(m.get("pretrained_warning")) for m in g["m"]),
            "metrics": {k: mean_std([m.get(k) for m in g["m"]]) for k, _ in RUN_METRICS},
            "scores": {
                n: {k: mean_std([m.get("scores", {}).get(n, {}).get(k) for m in g["m"]])
                    for k, _, _ in SCORE_METRICS if k != "threshold"}
                for n in score_names
            },
        })  # fmt: skip
        if far := far_ood_stats(g["ood"]):  # `unseen ood`, --ood: another dataset as unseen
            rows[-1]["far_ood"] = far
        if mixed := mixed_settings(g["s"]):
            rows[-1]["mixed_settings"] = mixed
        if (rare := rare_statistics(g["m"], score_names)) is not None:  # --rare runs
            rows[-1]["rare"] = rare
    _label_rows(rows)
    return rows


def comparison_warnings(rows: Sequence[dict]) -> list[str]:
    """One sentence per row of :func:`aggregate_runs` that averages runs whose 'auto'
    settings resolved differently, per row that holds a seed twice (the same run counted
    twice, e.g. a copied run folder: its std is too small), and per row whose scores do not
    all come from every one of its runs."""
    out = [
        f"'{r['label']}' averages runs with different resolved settings: "
        f"{describe_mixed(r['mixed_settings'])}; pin them (--device, --precision, "
        "--batch-size, --lr, --epochs) to compare like with like."
        for r in rows
        if r.get("mixed_settings")
    ]
    for r in rows:
        seeds = [s for s in r.get("seeds", []) if s is not None]
        if twice := sorted({s for s in seeds if seeds.count(s) > 1}):
            out.append(
                f"'{r['label']}' averages several runs of seed {', '.join(map(str, twice))} "
                "with the same settings (copies of one run?); its std understates the spread."
            )
        n_runs = r.get("n_runs", 0)
        if leaked := r.get("seen_in_pretraining"):
            out.append(
                f"'{r['label']}': {leaked} of its {n_runs} runs carry a pretraining warning "
                "(the pretrained weights trained on a class the run holds out, or may have "
                "seen such images: see each run's report); its unseen-class figures may not "
                "be a held-out evaluation."
            )
        short = {name: n for name, n in r.get("computed", {}).items() if n < n_runs}
        if short:
            counts = ", ".join(f"{name} {n} of {n_runs}" for name, n in short.items())
            out.append(
                f"'{r['label']}' has some scores from fewer of its runs ({counts}: runs of an "
                "earlier version with fewer scores, or runs rescored with other --scores); "
                "`unseen rescore` with --scores naming them computes them on every run."
            )
    return out


def _label_rows(rows: list[dict]) -> None:
    """Name each row by the settings that differ between rows (or dataset/model/head): the
    options, and what the run derived from them (``augmentation``...) only when no option
    differs, as the derived record would repeat the option at length."""
    keys = sorted({k for r in rows for k in r["config"]} - {"split"})
    varying = [
        k for k in keys if len({json.dumps(r["config"].get(k), default=str) for r in rows}) > 1
    ]
    varying = [k for k in varying if k in FIELDS] or varying
    heads_vary = len({r["head"] for r in rows}) > 1
    for r in rows:
        parts = [f"{k}={_short(r['config'].get(k), k)}" for k in varying]
        if heads_vary and "head" not in varying:
            parts.append(f"head={r['head']}")
        elif heads_vary:
            parts.append(f"[{r['head']}]")
        if not parts:
            parts = [f"{r['config'].get('dataset')} {r['config'].get('model')} {r['head']}"]
        r["label"] = ", ".join(parts)


#: how a comparison label shows an option left at None, as the command line spells it
_NONE_WORDS = {"pretrained": "none", "rare": "none", "ood": "none", "data_root": "default",
               "holdout": "auto", "known": "auto", "knn_bank": "all",
               "train_subset": "all", "test_subset": "all"}  # fmt: skip


def _short(value: Any, key: str = "") -> str:
    if isinstance(value, list):
        return "+".join(map(str, value)) or "(none)"
    if value is None:  # an option left to its default: 'auto' for most (vim_dim, epochs, lr)
        return _NONE_WORDS.get(key, "auto")
    return str(value)


def write_comparison(run_dirs: Iterable[str | Path], out_dir: str | Path) -> Path:
    """Write the comparison of several finished runs into ``out_dir``; return comparison.html.

    Also writes comparison.md, comparison.json (the rows of :func:`aggregate_runs`) and
    comparison.csv (one line per configuration x score x metric: mean, std, n).
    """
    start = time.perf_counter()
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UnseenError("no runs to compare.")
    rows = aggregate_runs(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    score_names: list[str] = []
    for r in rows:
        score_names += [n for n in r["scores"] if n not in score_names]

    figures: list[Plot] = []
    for metric, label in (("auroc", "AUROC"), ("oscr", "OSCR")):
        means = _score_table(rows, score_names, metric, "mean")
        stds = _score_table(rows, score_names, metric, "std")
        if np.isfinite(means).any():
            fig = plots.comparison_figure(
                [r["label"] for r in rows], score_names, label, means, stds
            )
            png = plots.figure_png(fig)
            figures.append(Plot(f"plots/compare_{metric}.png", f"{label} per configuration",
                                "Bars are means over the runs of a configuration, whiskers one sample "
                                "standard deviation (none for a single run).", png))  # fmt: skip
    if (vaze := accuracy_auroc_plot(rows, score_names)) is not None:
        figures.append(vaze)
    for p in figures:
        _write_bytes(out_dir / p.file, p.png)

    # the configurations table
    cfg_head = (
        ["configuration", "runs", "seeds"] + [label for _, label in RUN_METRICS] + ["reports"]
    )
    cfg_rows = []
    for r in rows:
        links = []
        for n, run in enumerate(r["runs"]):
            report = Path(run) / "report.html"
            if report.is_file():
                links.append((f"seed {r['seeds'][n]}", os.path.relpath(report, out_dir)))
        cfg_rows.append((r, links))

    title = f"unseen comparison: {len(rows)} configuration(s), {len(run_dirs)} run(s)"
    warnings = comparison_warnings(rows)
    h = [f"<h1>{html.escape(title)}</h1>",
         *(f'<p class="warning">WARNING: {html.escape(w)}</p>' for w in warnings),
         '<p class="note">Runs whose config.json differs only in '
         f"{', '.join(GROUPING_IGNORES)} are one configuration; values are mean ± sample standard "
         "deviation over its runs. Every score: higher = more likely a known class.</p>",
         "<h2>Configurations</h2>",
         '<table id="config-table"><thead><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in cfg_head)
         + "</tr></thead><tbody>"]  # fmt: skip
    md = [f"# {title}", "", *(f"**WARNING:** {md_text(w)}\n" for w in warnings),
          f"Runs whose config.json differs only in {', '.join(GROUPING_IGNORES)} are one configuration; "
          "values are mean ± sample standard deviation over its runs.", "", "## Configurations", "",
          "| " + " | ".join(cfg_head) + " |", "|---|" + "---:|" * (len(cfg_head) - 1)]  # fmt: skip
    for r, links in cfg_rows:
        stats = [mean_std_text(r["metrics"][k]) for k, _ in RUN_METRICS]
        seeds = ", ".join(map(str, r["seeds"]))
        link_html = (
            " ".join(f'<a href="{html.escape(u)}">{html.escape(t)}</a>' for t, u in links) or "-"
        )
        h.append(
            f"<tr><td>{html.escape(r['label'])}</td><td>{r['n_runs']}</td><td>{html.escape(seeds)}</td>"
            + "".join(f"<td>{s}</td>" for s in stats) + f"<td>{link_html}</td></tr>"
        )  # fmt: skip
        link_md = " ".join(f"[{t}]({u})" for t, u in links) or "-"
        md.append(
            f"| {md_text(r['label'])} | {r['n_runs']} | {seeds} | "
            + " | ".join(stats)
            + f" | {link_md} |"
        )
    h.append("</tbody></table>")

    metric_cols = [(k, label) for k, label, _ in SCORE_METRICS if k != "threshold"]
    h += ["<h2>Scores</h2>",
          '<table class="scores" id="score-table"><thead><tr><th>configuration</th><th>score</th>'
          + "".join(f"<th>{html.escape(label)}</th>" for _, label in metric_cols) + "</tr></thead><tbody>"]  # fmt: skip
    md += ["", "## Scores", "", "| configuration | score | " + " | ".join(lb for _, lb in metric_cols) + " |",
           "|---|---|" + "---:|" * len(metric_cols)]  # fmt: skip
    for r in rows:
        for n, stats in r["scores"].items():
            cells = [mean_std_text(stats[k]) for k, _ in metric_cols]
            h.append(f"<tr><td>{html.escape(r['label'])}</td><td>{html.escape(n)}</td>"
                     + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
            md.append(f"| {md_text(r['label'])} | {n} | " + " | ".join(cells) + " |")
    h.append("</tbody></table>")
    if far_rows := far_ood_table_rows(rows, [k for k, _ in metric_cols]):
        far_head = ["configuration", "dataset", "runs", "score"] + [lb for _, lb in metric_cols]
        h += ["<h2>Another dataset as unseen (far-OOD)</h2>",
              '<p class="note">The test images of another dataset (`unseen ood`, `--ood`) as '
              "unseen, against each run's known test images, at each run's thresholds; mean ± "
              "sample standard deviation over the runs that scored it.</p>",
              '<table class="scores" id="far-ood-table"><thead><tr>'
              + "".join(f"<th>{html.escape(c)}</th>" for c in far_head) + "</tr></thead><tbody>"]  # fmt: skip
        md += ["", "## Another dataset as unseen (far-OOD)", "",
               "| " + " | ".join(far_head) + " |", "|---|---|---:|---|" + "---:|" * len(metric_cols)]  # fmt: skip
        for cells in far_rows:
            h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            md.append("| " + " | ".join(md_text(c) for c in cells) + " |")
        h.append("</tbody></table>")
    if rare_rows := rare_table_rows(rows):
        rare_head = ["configuration", "rare class", "train imgs", "recall", "precision",
                     "mean confidence", f"wrong >{CONFIDENT}", "absorbed by"]  # fmt: skip
        h += ["<h2>Rare classes</h2>",
              f'<p class="note">A --rare class kept at a fraction of its training images: closed-set '
              f"recall and precision on the test set, the head's mean confidence on its test "
              f"images, the share of them labelled as another class with confidence above "
              f"{CONFIDENT}, and the other class that took most of them.</p>",
              '<table id="rare-table"><thead><tr>'
              + "".join(f"<th>{html.escape(c)}</th>" for c in rare_head) + "</tr></thead><tbody>"]  # fmt: skip
        md += ["", "## Rare classes", "", "| " + " | ".join(rare_head) + " |",
               "|---|---|" + "---:|" * (len(rare_head) - 2)]  # fmt: skip
        for cells in rare_rows:
            h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            md.append("| " + " | ".join(md_text(c) for c in cells) + " |")
        h.append("</tbody></table>")
    if figures:
        h.append("<h2>Figures</h2>")
        h += [figure_html(p) for p in figures]
        md += ["", "## Figures", ""]
        for p in figures:
            md += [f"**{p.title}.** {p.caption}", "", f"![{p.title}]({p.file})", ""]
    footer = f"Built {time.strftime('%Y-%m-%d %H:%M')} by unseen report in {time.perf_counter() - start:.1f} s."
    h.append(f'<p class="note">{html.escape(footer)}</p>')
    md += ["", footer, ""]

    write_json(out_dir / "comparison.json", rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["configuration", "head", "n_runs", "score", "metric", "mean", "std", "n"])
    for r in rows:
        for k, _ in RUN_METRICS:
            s = r["metrics"][k]
            writer.writerow(
                [r["label"], r["head"], r["n_runs"], "", k, s["mean"], s["std"], s["n"]]
            )
        for n, stats in r["scores"].items():
            for k, s in stats.items():
                writer.writerow(
                    [r["label"], r["head"], r["n_runs"], n, k, s["mean"], s["std"], s["n"]]
                )
        for cls, stats in r.get("rare", {}).items():  # metric "rare:<class>:recall", ...
            for k in RARE_COLUMNS:
                s = stats[k]
                writer.writerow(
                    [r["label"], r["head"], r["n_runs"], "", f"rare:{cls}:{k}", s["mean"],
                     s["std"], s["n"]]
                )  # fmt: skip
            for n, s in stats["auroc_vs_known"].items():  # other known classes vs the class
                writer.writerow(
                    [r["label"], r["head"], r["n_runs"], n, f"rare:{cls}:auroc_vs_known",
                     s["mean"], s["std"], s["n"]]
                )  # fmt: skip
            if ab := stats.get("absorbed_by"):  # its share of the class's test images
                writer.writerow(
                    [r["label"], r["head"], r["n_runs"], "", f"rare:{cls}:absorbed_by:{ab['class']}",
                     ab["share"], "", r["n_runs"]]
                )  # fmt: skip
        for dataset, far in r.get("far_ood", {}).items():  # metric "ood:<dataset>:auroc", ...
            for n, stats in far["scores"].items():
                for k, s in stats.items():
                    writer.writerow(
                        [r["label"], r["head"], r["n_runs"], n, f"ood:{dataset}:{k}", s["mean"],
                         s["std"], s["n"]]
                    )  # fmt: skip
    _write_text(out_dir / "comparison.csv", buf.getvalue())
    _write_text(out_dir / "comparison.md", "\n".join(md))
    return _write_text(out_dir / "comparison.html", page(title, "\n".join(h)))


#: the rare-class statistics of a comparison row, in its table's order
RARE_COLUMNS = ("train_images", "recall", "precision", "mean_confidence", "confidently_mislabelled")


def far_ood_table_rows(rows: Sequence[dict], metrics: Sequence[str]) -> list[list[str]]:
    """The cells of the comparison's far-OOD table: one line per configuration, dataset and
    score (none when no run scored another dataset)."""
    out = []
    for r in rows:
        for dataset, far in r.get("far_ood", {}).items():
            for n, stats in far["scores"].items():
                out.append(
                    [r["label"], dataset, str(far["runs"]), n]
                    + [mean_std_text(stats.get(k), runs=far["runs"]) for k in metrics]
                )
    return out


def rare_table_rows(rows: Sequence[dict]) -> list[list[str]]:
    """The cells of the comparison's rare-class table: one line per configuration and rare
    class (none when no run kept a class rare)."""
    out = []
    for r in rows:
        for cls, stats in r.get("rare", {}).items():
            out.append(
                [r["label"], cls, mean_std_text(stats["train_images"], 0)]
                + [mean_std_text(stats[k], runs=r["n_runs"]) for k in RARE_COLUMNS[1:]]
                + [absorbed_text(stats.get("absorbed_by"))]
            )
    return out


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _score_table(
    rows: Sequence[dict], score_names: Sequence[str], metric: str, stat: str
) -> np.ndarray:
    """Configurations x scores: ``stat`` ("mean" or "std") of ``metric`` in the rows of
    :func:`aggregate_runs`, NaN where a row lacks it."""
    return np.array(
        [[_nan(r["scores"].get(n, {}).get(metric, {}).get(stat)) for n in score_names]
         for r in rows]
    )  # fmt: skip


def accuracy_auroc_plot(rows: Sequence[dict], score_names: Sequence[str]) -> Plot | None:
    """Closed-set accuracy against AUROC over the configurations of a comparison, with each
    score's rank correlation; None with fewer than three configurations of known accuracy."""
    from .metrics import rank_correlation

    acc = np.array([_nan(r["metrics"]["closed_set_accuracy"].get("mean")) for r in rows])
    auroc = _score_table(rows, score_names, "auroc", "mean")
    if np.isfinite(acc).sum() < 3 or not np.isfinite(auroc).any():
        return None
    rho = [rank_correlation(acc, auroc[:, j]) for j in range(len(score_names))]
    said = ", ".join(
        f"{n} {r:.2f}" for n, r in zip(score_names, rho, strict=True) if math.isfinite(r)
    )
    fig = plots.accuracy_auroc_figure(acc, auroc, score_names, rho)
    return Plot(
        "plots/accuracy_vs_auroc.png",
        "Closed-set accuracy against AUROC",
        "One point per configuration (means over its runs). Vaze et al. (2022) found that "
        "open-set AUROC rises with closed-set accuracy across models; Spearman's rank "
        f"correlation over these {len(rows)} configurations: {said or 'none (too few values)'}. "
        "Configurations that differ in the classes held out (a sweep's conditions) also differ "
        "in how hard their unseen classes are, which this does not separate.",
        plots.figure_png(fig),
    )


# ----------------------------------------------------------------------------- command


def report_command(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    tsne: bool = True,
    each: bool = False,
    log: Callable[[str], None] = print,
    on_damaged: Callable[[str], None] | None = None,
) -> Path:
    """``unseen report``: one run -> its report; several runs or folders of runs -> comparison.

    The comparison goes to ``out``, by default ``<folder>/comparison`` for a single folder of
    runs (``<folder>/report`` for a sweep's, where ``unseen sweep`` writes it) and
    ``./comparison`` otherwise. ``each`` also rebuilds every compared run's report.
    A damaged run found in a folder (:func:`find_runs`) is left out, said on stderr and
    passed to ``on_damaged``; a run named itself must be whole.
    Returns the path of the report or comparison written.
    """
    import sys

    paths = [Path(p) for p in paths]
    if not paths:
        raise UnseenError("give at least one run folder.")
    if len(paths) == 1 and (is_run(paths[0]) or not paths[0].is_dir()):
        if out is not None:
            raise UnseenError(
                "--out names the folder of a comparison; a single run's report is written "
                "into its run folder."
            )
        start = time.perf_counter()
        path = build_report(paths[0], tsne=tsne)
        log(f"report: {path} ({time.perf_counter() - start:.1f} s)")
        return path

    def damaged(message: str) -> None:
        print(f"unseen: {message}", file=sys.stderr)
        if on_damaged is not None:
            on_damaged(message)

    runs = find_runs(
        paths, on_skip=lambda msg: print(f"unseen: {msg}", file=sys.stderr), on_damaged=damaged
    )
    if not runs:
        raise UnseenError(f"no finished runs found in {', '.join(map(str, paths))}.")
    if each:
        for run in runs:
            start = time.perf_counter()
            path = build_report(run, tsne=tsne)
            log(f"report: {path} ({time.perf_counter() - start:.1f} s)")
    if out is None:
        only = paths[0]
        # a sweep's own comparison is its report/ folder, which `unseen sweep` writes
        inside = "report" if (only / "sweep.json").is_file() else "comparison"
        out = only / inside if len(paths) == 1 and not is_run(only) else Path("comparison")
    start = time.perf_counter()
    path = write_comparison(runs, out)
    for warning in comparison_warnings(read_json(path.parent / "comparison.json")):
        print(f"unseen: warning: {warning}", file=sys.stderr)
    log(f"comparison of {counted(len(runs), 'run')}: {path} ({time.perf_counter() - start:.1f} s)")
    return path
