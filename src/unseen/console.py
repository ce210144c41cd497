"""Plain-text tables and progress bars for the terminal."""

from __future__ import annotations

import math
import os
import sys
import unicodedata
from collections.abc import Callable, Collection, Sequence
from typing import Any

SCORE_COLUMNS = (
    ("auroc", "AUROC"),
    ("aupr_in", "AUPR-in"),
    ("aupr_out", "AUPR-out"),
    ("fpr_at_95_tpr", "FPR@95"),
    ("oscr", "OSCR"),
    ("open_set_accuracy", "open-acc"),
    ("open_set_macro_f1", "open-F1"),
    ("unseen_rejected", "unseen-rej"),
    ("known_rejected", "known-rej"),
)


def valid_unicode(text: str) -> str:
    """``text`` with the bytes of a file name that are not UTF-8 (which Python decodes as
    lone surrogates) written as ``\\xe9``: text that files, JSON and plots can hold."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mean_std_text(s: dict | None, digits: int = 3, runs: int | None = None) -> str:
    """A :func:`unseen.metrics.mean_std` result as ``mean ± std`` (or just the mean, or ``-``),
    and ``(n=N)`` when only N of the ``runs`` have a value (a precision where a run predicted
    nothing as the class). The sweep's console tables and the comparison report use it."""
    if not s or s.get("mean") is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    if s.get("std") is not None:
        text += f" ± {s['std']:.{digits}f}"
    if runs is not None and s.get("n", runs) < runs:
        text += f" (n={s['n']})"
    return text


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def printable_names(names: Sequence[str], limit: int = 30) -> str:
    """Class names for one console line: comma-separated, a newline or a terminal escape in a
    name written as ``\\n``, ``\\x1b`` (not obeyed by the terminal); past ``limit`` names,
    the count (an npz whose labels have gaps names hundreds of classes)."""
    shown = ", ".join(_printable(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _width(text: str) -> int:
    """Terminal columns of ``text``."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence[object]], left: Collection[int] = (0,)
) -> str:
    """Aligned columns under a dashed rule: the ``left`` columns flush left, the rest right.
    Widths are those on a terminal (CJK characters take two columns, combining accents none),
    and a control character in a cell (a file name with a newline) is shown escaped."""
    cells = [list(map(_printable, header))] + [[_printable(fmt(v)) for v in row] for row in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c + " " * (w - _width(c)) if i in left else " " * (w - _width(c)) + c
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def score_table(scores: dict[str, dict], sort_by: str | None = None) -> str:
    names = list(scores)
    if sort_by:  # best first; missing or NaN values last, ties keep their order

        def key(n: str) -> float:
            v = scores[n].get(sort_by)
            return -v if isinstance(v, (int, float)) and not math.isnan(v) else math.inf

        names.sort(key=key)
    return table(
        ["score"] + [label for _, label in SCORE_COLUMNS],
        [[n] + [scores[n].get(k) for k, _ in SCORE_COLUMNS] for n in names],
    )


def timing_line(seconds: dict[str, float]) -> str:
    """One line from :func:`unseen.experiment.wall_clock`'s breakdown."""
    names = {"prepare": "data and setup", "train": "training", "validation": "per-epoch validation",
             "checkpoint": "checkpoints", "eval": "evaluation and scores", "ood": "far-OOD",
             "report": "report", "other": "other"}  # fmt: skip
    parts = ", ".join(f"{label} {seconds[k]:.1f}" for k, label in names.items() if k in seconds)
    before = seconds.get("trained_before_resume")
    resumed = f"; and {before:.1f} s of training before the interruption" if before else ""
    return f"time: {seconds['total']:.1f} s in all ({parts}){resumed}"


def counts_text(counts: dict[str, int], top: int = 4) -> str:
    """The first ``top`` entries of a ``class -> images`` dict as ``5 (30), 3 (9)`` (class,
    then its count in brackets: unambiguous with digit class names), ``, ...`` when more
    classes took some, or ``-``."""
    shown = ", ".join(f"{k} ({v})" for k, v in list(counts.items())[:top])
    return (shown + (", ..." if len(counts) > top else "")) or "-"


def absorbed_text(absorbed: dict | None) -> str:
    """:func:`unseen.metrics.absorbed_by`'s result as ``8 (45%)``, or ``-``."""
    return f"{absorbed['class']} ({absorbed['share']:.0%})" if absorbed else "-"


def confidence_text(summary: dict) -> str:
    """``mean 0.840, 0.553 above 0.9`` from :func:`unseen.metrics.confidence_summary`."""
    from .metrics import CONFIDENT

    mean, above = fmt(summary["mean_msp"]), fmt(summary["frac_msp_above_0_9"])
    return f"mean {mean}, {above} above {CONFIDENT}"


def _skipped_text(skipped: int | None) -> str:
    """fp16's skipped steps, for the training line (nothing when none were skipped)."""
    if not skipped:
        return ""
    return f"; fp16 loss scaling skipped {counted(skipped, 'step')} (gradients overflowed)"


def run_summary(metrics: dict, with_scores: bool = True) -> str:
    """What a finished run prints: the figures a naive evaluation hides, then one row per score
    (left out with ``with_scores=False``, when several heads share one table)."""
    uc, kc = metrics["unseen_confidence"], metrics["known_confidence"]
    absorbed = counts_text(metrics["unseen_predicted_as"])
    lines = [
        f"closed-set accuracy {fmt(metrics['closed_set_accuracy'])} (known classes) | "
        f"all-test accuracy {fmt(metrics['all_test_accuracy'])} (what a naive evaluation reports)",
        f"{metrics.get('confidence_from', 'max softmax probability')} on known images: "
        f"{confidence_text(kc)} | on unseen images: {confidence_text(uc)}",
        f"unseen images were labelled as: {absorbed}",
        f"training: {fmt(metrics['train_seconds'], 1)} s, {fmt(metrics['train_images_per_second'], 0)} images/s on {metrics['device']}"
        + _skipped_text(metrics.get("fp16_skipped_steps")),
    ]
    if with_scores:
        lines += ["", score_table(metrics["scores"], sort_by="auroc")]
        if metrics.get("logits", "softmax logits") != "softmax logits":  # one-vs-rest heads
            lines.append(_logits_note(metrics))
        lines += score_notes(metrics)
    for name, r in metrics.get("rare", {}).items():  # --rare
        from .rare import rare_summary

        lines.append(rare_summary(name, r, fmt))
    if metrics.get("pretrained_on"):  # --pretrained
        lines.append(f"started from pretrained weights: {metrics['pretrained_on']}")
    if metrics.get("pretrained_warning"):
        lines.append(f"warning: {metrics['pretrained_warning']}")
    return "\n".join(lines)


def score_notes(metrics: dict) -> list[str]:
    """Notes on fitted scores that a reader of the table should know (ViM's subspace or alpha
    not what was asked or expected)."""
    notes = []
    vim_fit = metrics["scores"].get("vim", {}).get("fit", {})
    asked, used = vim_fit.get("requested_dim"), vim_fit.get("dim")
    if isinstance(asked, int) and isinstance(used, int) and used < asked:
        notes.append(
            f"note: vim used a {used}-dimensional principal subspace, not --vim-dim {asked}: "
            f"the training features span only {vim_fit.get('rank')} directions, and a "
            "subspace of them all leaves the training images no residual"
        )
    alpha = vim_fit.get("alpha")
    if isinstance(alpha, (int, float)) and alpha <= 0:
        notes.append(
            f"note: vim's alpha is {alpha:.3g} (the mean largest training logit is not "
            "positive), so a large residual makes an image look more known; see "
            "docs/detectors.md"
        )
    return notes


# ----------------------------------------------------------------------------- several heads


def _logits_note(metrics: dict) -> str:
    return (
        f"note: logit scores (msp, maxlogit, energy, entropy, gen...) of head {metrics.get('head')} are "
        f"computed on its {metrics['logits']}; ovr-doc rejects at its own DOC thresholds "
        "(margin 0), the other scores at the validation threshold"
    )


def heads_summary(heads: dict[str, dict]) -> str:
    """Several heads trained on the same split and seed, side by side: one row per head, then
    one row per head and score."""
    overview = table(
        ["head", "closed-acc", "all-test-acc", "conf-known", "conf-unseen", "train-s", "logits"],
        [
            [
                head,
                m["closed_set_accuracy"],
                m["all_test_accuracy"],
                m["known_confidence"]["mean_msp"],
                m["unseen_confidence"]["mean_msp"],
                fmt(m.get("train_seconds"), 1),
                "softmax"
                if m.get("logits", "softmax logits") == "softmax logits"
                else "one-vs-rest",
            ]
            for head, m in heads.items()
        ],
    )
    rows = []
    for head, m in heads.items():
        scores = m["scores"]
        names = sorted(scores, key=lambda n: -_num(scores[n].get("auroc")))
        rows += [[head, n] + [scores[n].get(k) for k, _ in SCORE_COLUMNS] for n in names]
    by_score = table(["head", "score"] + [label for _, label in SCORE_COLUMNS], rows)
    lines = [
        "heads side by side (same split, same seed); conf = mean of each head's own "
        "probability (max softmax, or max sigmoid for one-vs-rest)",
        "",
        overview,
        "",
        by_score,
    ]
    notes = [f"head {head}: {n}" for head, m in heads.items() for n in score_notes(m)]
    if notes:
        lines += [""] + notes
    if any(m.get("logits", "softmax logits") != "softmax logits" for m in heads.values()):
        lines += [
            "",
            "on one-vs-rest heads, msp/maxlogit/energy/entropy/gen... are computed on one-vs-rest "
            "logits; ovr-doc rejects at its own DOC thresholds (margin 0), every other score "
            "at the threshold accepting --known-acceptance of the validation images",
        ]
    return "\n".join(lines)


def _num(value: object) -> float:
    return value if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf


def image_bar(desc: str | None, total: int | None = None) -> Any:
    """A tqdm bar counting images (``update(n)`` after each batch, ``close()`` at the end).

    Shown on stderr when ``desc`` is given and stderr is a terminal, as the training bar is;
    with ``desc=None`` it shows nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False,
                disable=None if desc else True)  # fmt: skip


def warn(message: str) -> None:
    """A warning on stderr, with --quiet and in sweeps too (which run without a log)."""
    print(f"unseen: warning: {message}", file=sys.stderr)


def once(emit: Callable[[str], None]) -> Callable[[str], None]:
    """``emit`` passing each message only the first time: a command over several runs gives
    a warning that applies to all of them once."""
    seen: set[str] = set()

    def emit_once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            emit(message)

    return emit_once


def notes_once(log: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """``log`` passing each note (a line starting ``note:``) only the first time: a command
    over several runs says what applies to all of them once."""
    if log is None:
        return None
    seen: set[str] = set()

    def say(message: str) -> None:
        if message.startswith("note:"):
            if message in seen:
                return
            seen.add(message)
        log(message)

    return say


def progress_line(message: str) -> None:
    """Print a line of a long job's progress. When whoever reads stdout has gone
    (``unseen run | head``), drop this and later output instead of stopping the job: a run
    would otherwise end unfinished at its next line. (Short commands exit with 141.)"""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at the null device, once its reader has gone (a broken pipe), so that
    later output, and the flush at exit, do not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
