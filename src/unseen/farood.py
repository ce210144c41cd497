"""Another dataset's images as unseen: how well a finished run's scores reject them (far-OOD).

A run's own unseen images are the classes it held out of its dataset: near out-of-distribution
(OOD) images, alike in everything but the class. The test images of another dataset (MNIST
digits for a Fashion-MNIST run, say) are far OOD. :func:`evaluate_ood` scores them with the
run's network and fitted scores, as ``unseen predict`` would (converted to the run's channels
and image size), and sets them against the run's own known test images, whose scores the run
stored in ``scores.npz``: the same metrics as the run's own table, at the same thresholds,
and where the other images went. ``unseen ood RUN --dataset NAME`` prints it and saves it as
``RUN/ood/<dataset>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, InputError
from .metrics import confidence_summary, predicted_as, score_metrics
from .runfolder import read_json, slug, write_json


def evaluate_ood(
    run_dir: str | Path,
    dataset: str,
    *,
    data_root: str | None = None,
    download: bool = False,
    head: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    limit: int | None = None,
) -> dict[str, Any]:
    """The run's scores on ``dataset``'s test images (its first ``limit``), as unseen images
    against the run's known test images; see the module docstring. Returns what
    ``ood/<dataset>.json`` holds: ``scores`` maps each score the run stored to its metrics,
    keyed as in ``metrics.json`` (``auroc``, ``fpr_at_95_tpr``, ``unseen_rejected`` at the
    run's threshold, ...).

    The dataset is read as a run reads it (a folder's images brought to its most common
    size, 16-bit files at the run's ``--bit-depth``), then converted to the run's channels
    and image size as ``unseen predict`` converts images."""
    from .data import absolute_dataset, load_dataset
    from .predict import conversions, load
    from .report import read_arrays

    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise InputError(f"limit must be a whole number of at least 1, not {limit!r}.")
    p = load(run_dir, head=head, device=device, batch_size=batch_size)
    stored = read_arrays(p.run_dir / "scores.npz")  # checked: one sentence if damaged
    if missing := {"is_unseen", "label_known", "predicted"} - set(stored):
        raise DataError(
            f"{p.run_dir / 'scores.npz'} has no {', '.join(sorted(missing))}: the run folder "
            "is damaged or of an incompatible version."
        )
    dataset = absolute_dataset(dataset)  # npz:/folder: paths as config.json records them
    data = load_dataset(dataset, data_root, download, bit_depth=p.bit_depth)
    x = data.x_test if limit is None else data.x_test[: int(limit)]
    if len(x) == 0:
        raise DataError(f"{dataset} has no test images to score.")
    converted = conversions(None, x, p)  # a dataset's images share their size and channels
    # one forward pass: every score, and the closest class with its probability
    other, closest, probability = p.all_scores_and_closest(p.conform(x))
    known = ~stored["is_unseen"].astype(bool)
    n_other = len(x)
    labels = np.concatenate([stored["label_known"][known], np.full(n_other, -1)])
    predicted = np.concatenate([stored["predicted"][known], closest])
    scores, missing_scores = {}, []
    for name, values in other.items():
        if f"score_{name}" not in stored or f"val_score_{name}" not in stored:
            missing_scores.append(name)  # a score this version computes, the run did not store
            continue
        q = p.with_options(score=name)  # the threshold `unseen predict` decides with
        m = score_metrics(
            np.concatenate([stored[f"score_{name}"][known], values]),
            stored[f"val_score_{name}"],
            predicted,
            labels,
            num_known=len(p.classes),
            threshold=q.threshold,
        )
        # as metrics.json says it: calibrated on validation images, or the score's own rule
        m["threshold_from"] = "validation" if q.known_acceptance is not None else "score"
        scores[name] = m
    config = read_json(p.run_dir / "config.json")
    return {
        "dataset": dataset,
        "source": data.source,
        "own_dataset": str(config.get("dataset", "")),
        "run": str(p.run_dir.resolve()),
        "limit": limit,
        "head": p.head,
        # which state of the run folder this was computed from (a rerun or rescore changes it)
        "run_state": run_state(p.run_dir),
        "num_images": n_other,
        "converted": "; ".join(converted.values()) or None,
        "num_known_test": int(known.sum()),
        "predicted_as": predicted_as(closest, p.classes),
        "confidence": confidence_summary(probability),
        "scores": scores,
        "not_stored": missing_scores,
    }


def run_state(head_folder: str | Path) -> str | None:
    """A fingerprint of a finished run folder's results: when it was finished, and a hash of
    its metrics.json (``--overwrite`` and ``unseen rescore`` change them; copying or moving
    the folder does not)."""
    import hashlib

    folder = Path(head_folder)
    finished, metrics = folder / "run.json", folder / "metrics.json"
    if not (finished.is_file() and metrics.is_file()):
        return None
    digest = hashlib.sha256(metrics.read_bytes()).hexdigest()[:16]
    return f"{read_json(finished).get('finished_at')} {digest}"


def is_stale(result: dict[str, Any], head_folder: str | Path) -> bool:
    """Whether the run in ``head_folder`` (where ``result`` was found) was finished again
    (``--overwrite``, ``unseen rescore``) after ``result`` was computed: its figures are then
    of another network or other thresholds."""
    return result.get("run_state") != run_state(head_folder)


def ood_path(head_folder: str | Path, dataset: str) -> Path:
    """Where :func:`save_ood` writes ``dataset``'s result: ``ood/<dataset>.json`` in the run's
    folder (its head's folder in a multi-head run), the name made file-safe."""
    return Path(head_folder) / "ood" / f"{slug(dataset)}.json"


def save_ood(result: dict[str, Any]) -> Path:
    path = ood_path(result["run"], result["dataset"])
    path.parent.mkdir(exist_ok=True)
    write_json(path, result)
    return path


#: what every result of :func:`evaluate_ood` holds (a file without them is not one)
RESULT_KEYS = ("dataset", "num_images", "num_known_test", "predicted_as", "confidence", "scores")


def ood_results(head_folder: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The results :func:`save_ood` saved for a run (or a head's folder), by file name, and
    the names of the files in ``ood/`` that are not such results (unreadable, or edited)."""
    results, others = [], []
    for f in sorted(Path(head_folder).glob("ood/*.json")):
        try:
            r = read_json(f)
        except Exception:  # not JSON, or not readable: not ours to explain
            r = None
        if isinstance(r, dict) and all(k in r for k in RESULT_KEYS):
            results.append(r)
        else:
            others.append(f.name)
    return results, others


def ood_sentence(result: dict[str, Any]) -> str:
    """One sentence on what was scored and where the images went (the report's caption)."""
    from .console import confidence_text, counted, counts_text

    converted = f" ({result['converted']})" if result.get("converted") else ""
    return (
        f"{counted(result['num_images'], 'test image')} of {result['dataset']}{converted}, "
        f"scored as unseen against the run's {counted(result['num_known_test'], 'known test image')}"
        f", were labelled as {counts_text(result['predicted_as'])}; the head's probability of "
        f"its class: {confidence_text(result['confidence'])}."
    )


def ood_summary(result: dict[str, Any]) -> str:
    """The console's account of :func:`evaluate_ood`'s result: what was scored, where the
    images went, how confident the network was, and one row per score (best AUROC first)."""
    from .console import confidence_text, counted, counts_text, printable_names, score_table

    converted = f", {result['converted']}" if result["converted"] else ""
    lines = [
        f"{result['dataset']}: {counted(result['num_images'], 'test image')} from "
        f"{result['source']}{converted}, scored as unseen against the run's "
        f"{counted(result['num_known_test'], 'known test image')}",
        f"labelled as: {counts_text(result['predicted_as'])}",
        f"confidence (the head's probability of its class): {confidence_text(result['confidence'])}",
    ]
    if result["own_dataset"] and result["own_dataset"] == result["dataset"]:
        lines.append(
            "note: this is the run's own dataset: its test images hold the known classes too, "
            "so they are not all unseen"
        )
    if result["not_stored"]:
        lines.append(
            f"note: {printable_names(result['not_stored'])} left out: the run stored no "
            "scores of its own for them (`unseen rescore` computes them)"
        )
    return "\n".join([*lines, "", score_table(result["scores"], sort_by="auroc")])
