"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def score_table(scores: dict[str, dict], sort_by: str | None = None) -> str:
    names = list(scores)
    if sort_by:
        names.sort(key=lambda n: -(scores[n].get(sort_by) or -math.inf))
    return table(
        ["score"] + [label for _, label in SCORE_COLUMNS],
        [[n] + [scores[n].get(k) for k, _ in SCORE_COLUMNS] for n in names],
    )


def run_summary(metrics: dict) -> str:
    """What a finished run prints: the figures a naive evaluation hides, then one row per score."""
    uc, kc = metrics["unseen_confidence"], metrics["known_confidence"]
    absorbed = (
        ", ".join(f"{k} {v}" for k, v in list(metrics["unseen_predicted_as"].items())[:4]) or "-"
    )
    lines = [
        f"closed-set accuracy {fmt(metrics['closed_set_accuracy'])} (known classes) | "
        f"all-test accuracy {fmt(metrics['all_test_accuracy'])} (what a naive evaluation reports)",
        f"max-softmax on known images: mean {fmt(kc['mean_msp'])}, {fmt(kc['frac_msp_above_0_9'])} above 0.9 | "
        f"on unseen images: mean {fmt(uc['mean_msp'])}, {fmt(uc['frac_msp_above_0_9'])} above 0.9",
        f"unseen images were labelled as: {absorbed}",
        f"training: {fmt(metrics['train_seconds'], 1)} s, {fmt(metrics['train_images_per_second'], 0)} images/s on {metrics['device']}",
        "",
        score_table(metrics["scores"]),
    ]
    return "\n".join(lines)
