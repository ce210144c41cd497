"""Another dataset's images as unseen: how well a finished run's scores reject them (far-OOD).

A run's own unseen images are the classes it held out of its dataset: near out-of-distribution
(OOD) images, alike in everything but the class. The test images of another dataset (MNIST
digits for a Fashion-MNIST run, say) are far OOD. :func:`evaluate_ood` scores them with the
run's network and fitted scores, as ``unseen predict`` would (converted to the run's channels
and image size), and sets them against the run's own known test images, whose scores the run
stored in ``scores.npz``: the same metrics as the run's own table, at the same thresholds,
and where the other images went. ``unseen ood RUN --dataset NAME`` prints it and saves it as
``RUN/ood/<dataset>.json``; ``unseen run --ood NAMES`` scores each of them once the run is
trained (:func:`score_run_ood`), and ``unseen sweep --ood NAMES`` does so for every run and
averages the results per variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, InputError, UnseenError
from .metrics import confidence_summary, predicted_as, score_metrics
from .runfolder import read_json, slug, write_json

if TYPE_CHECKING:
    import torch

    from .data import TestImages


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
    data: TestImages | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The run's scores on ``dataset``'s test images (``limit`` of them, drawn by
    :func:`subset_index`), as unseen images
    against the run's known test images; see the module docstring. Returns what
    ``ood/<dataset>.json`` holds: ``scores`` maps each score the run stored to its metrics,
    keyed as in ``metrics.json`` (``auroc``, ``fpr_at_95_tpr``, ``unseen_rejected`` at the
    run's threshold, ...), and ``image_scores`` each score of each image (float32 arrays,
    which :func:`save_ood` writes to ``ood/<dataset>.npz``; the JSON file leaves them out).

    The images are read by :func:`unseen.data.load_test_images`, as a run reads a dataset
    (a folder's images brought to their most common size, 16-bit files at the run's
    ``--bit-depth``) but without labels or a training split (a folder of images, an npz of
    ``x``), then converted to the run's channels and image size as ``unseen predict``
    converts images. ``data`` is what it read already (for several heads of one run)."""
    from .data import absolute_dataset, load_test_images
    from .hardware import scoring_warning
    from .predict import conversions, load, run_precision
    from .report import read_arrays

    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise InputError(f"limit must be a whole number of at least 1, not {limit!r}.")
    p = load(run_dir, head=head, device=device, batch_size=batch_size)
    if run_precision(p.run_dir) == "fp16":
        # the known test scores below are the run's, in fp16: score the other images in it
        # too (on a CPU, load() predicts an fp16 run in fp32)
        p.precision = "fp16"
    stored = read_arrays(p.run_dir / "scores.npz")  # checked: one sentence if damaged
    if missing := {"is_unseen", "label_known", "predicted"} - set(stored):
        raise DataError(
            f"{p.run_dir / 'scores.npz'} has no {', '.join(sorted(missing))}: the run folder "
            "is damaged or of an incompatible version."
        )
    dataset = absolute_dataset(dataset)  # npz:/folder: paths as config.json records them
    if data is None:
        data = load_test_images(dataset, data_root, download, bit_depth=p.bit_depth)
    x = data.x if limit is None else data.x[subset_index(len(data.x), int(limit))]
    if len(x) == 0:
        raise DataError(f"{dataset} has no test images to score.")
    converted = conversions(None, x, p)  # a dataset's images share their size and channels
    # the slow part, once the run, the dataset and its images have been accepted
    if warn is not None and (warning := scoring_warning(p.precision, p.device)):
        warn(warning)
    # one forward pass: every score, and the closest class with its probability
    other, closest, probability = p.all_scores_and_closest(p.conform(x))
    known = ~stored["is_unseen"].astype(bool)
    n_other = len(x)
    labels = np.concatenate([stored["label_known"][known], np.full(n_other, -1)])
    predicted = np.concatenate([stored["predicted"][known], closest])
    scores, missing_scores, image_scores = {}, [], {}
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
        image_scores[name] = np.asarray(values, np.float32)
    config = read_json(p.run_dir / "config.json")
    return {
        "dataset": dataset,
        "source": data.source,
        # where it was looked for (a named dataset's root): a rescore looks there again
        "data_root": None if data_root is None else str(Path(data_root).expanduser().resolve()),
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
        "image_scores": image_scores,
    }


def subset_index(n: int, limit: int) -> torch.Tensor:
    """The ``limit`` of ``n`` images a far-OOD result scores: drawn at random with a fixed
    seed (the same ones every time; a folder's images come sorted by folder, so its first N
    would be its first classes), kept in their order. All of them when ``limit >= n``."""
    import torch

    if limit >= n:
        return torch.arange(n)
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit]
    return drawn.sort().values


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
    folder (its head's folder in a multi-head run), the name made file-safe. A path source's
    name (``npz:``, ``folder:``) gets 8 hex digits of its hash besides: file-safe names of
    two paths can be the same (``sets/far.npz`` and ``sets_far.npz``, ``SETS`` and ``sets``).
    (Versions before it named those by the file-safe name alone: :func:`legacy_path`.)"""
    import hashlib

    name = slug(dataset)
    if ":" in dataset:
        name += "-" + hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return Path(head_folder) / "ood" / f"{name}.json"


def legacy_path(head_folder: str | Path, dataset: str) -> Path | None:
    """The file an earlier version saved ``dataset``'s result in (a path source's file-safe
    name without the hash), when it is there and holds that dataset; None otherwise."""
    path = Path(head_folder) / "ood" / f"{slug(dataset)}.json"
    if ":" not in dataset or not path.is_file():
        return None
    try:
        r = read_json(path)
    except UnseenError:
        return None
    return path if isinstance(r, dict) and r.get("dataset") == dataset else None


def result_path(head_folder: str | Path, dataset: str) -> Path:
    """The file that holds ``dataset``'s result in ``head_folder``: :func:`ood_path`, or the
    one an earlier version wrote (:func:`legacy_path`) where only that is there."""
    path = ood_path(head_folder, dataset)
    return path if path.is_file() else legacy_path(head_folder, dataset) or path


def save_ood(result: dict[str, Any]) -> Path:
    """Write ``result`` as ``ood/<dataset>.json`` in its run's folder, and its images' scores
    (``image_scores``) beside it as ``ood/<dataset>.npz`` (``score_<name>`` arrays)."""
    from .runfolder import write_npz

    path = ood_path(result["run"], result["dataset"])
    path.parent.mkdir(exist_ok=True)
    per_image = result.get("image_scores") or {}
    if per_image:  # first: a JSON file is a result only once its scores are there too
        write_npz(path.with_suffix(".npz"), **{f"score_{n}": v for n, v in per_image.items()})
    write_json(path, {k: v for k, v in result.items() if k != "image_scores"})
    if (old := legacy_path(result["run"], result["dataset"])) is not None:
        old.unlink()  # replaced: one result per dataset
        old.with_suffix(".npz").unlink(missing_ok=True)
    return path


def ood_image_scores(head_folder: str | Path, result: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each score of each image of a saved ``result`` (``ood/<dataset>.npz``), by score name;
    empty when the file is missing, damaged, or not of that result (another image count)."""
    from .runfolder import read_npz

    path = result_path(head_folder, result["dataset"]).with_suffix(".npz")
    try:
        arrays = read_npz(path) if path.is_file() else {}
    except UnseenError:
        return {}
    n = result.get("num_images")
    return {
        k.removeprefix("score_"): v
        for k, v in arrays.items()
        if k.startswith("score_") and v.ndim == 1 and len(v) == n
    }


#: what every result of :func:`evaluate_ood` holds (a file without them is not one)
RESULT_KEYS = ("dataset", "num_images", "num_known_test", "predicted_as", "confidence", "scores")


def is_current(head_folder: str | Path, dataset: str) -> bool:
    """Whether ``head_folder`` holds a result of ``dataset`` computed from the run as it
    stands (not stale), whatever number of its images it scored."""
    try:
        r = read_json(result_path(head_folder, dataset))
    except UnseenError:  # none, or not readable: to compute
        return False
    return (
        isinstance(r, dict)
        and all(k in r for k in RESULT_KEYS)
        and r["dataset"] == dataset
        and not is_stale(r, head_folder)
    )


def head_folders(run_dir: str | Path, heads: Sequence[str]) -> dict[str, Path]:
    """Each head's folder of a run with ``heads``: the run folder itself for one head."""
    run_dir = Path(run_dir)
    return {h: run_dir if len(heads) == 1 else run_dir / h for h in heads}


def missing_ood(
    run_dir: str | Path, heads: Sequence[str], datasets: Sequence[str]
) -> list[tuple[str, str]]:
    """The (head, dataset) pairs of a finished run that have no current result."""
    from .data import absolute_dataset

    return [
        (head, dataset)
        for head, folder in head_folders(run_dir, heads).items()
        for dataset in datasets
        if not is_current(folder, absolute_dataset(dataset))
    ]


def locate_ood(datasets: Sequence[str], data_root: str | None, download: bool = False) -> None:
    """Fail now, in one sentence naming ``--ood``, for a dataset whose files are not there
    (unless ``download`` may fetch it), rather than once the run is trained."""
    from .data import check_dataset_name, locate_test_images

    for name in datasets:
        check_dataset_name(name, "--ood")
        if download and ":" not in name:
            continue
        try:
            locate_test_images(name, data_root)
        except DataError as exc:
            raise DataError(f"--ood {name}: {exc}") from None


def score_run_ood(
    run_dir: str | Path,
    heads: Sequence[str],
    datasets: Sequence[str],
    *,
    data_root: str | None = None,
    download: bool = False,
    device: str = "auto",
    limit: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], str]:
    """Score ``datasets`` with every head of the finished run in ``run_dir`` (trained with
    ``heads``) where it has no current result (:func:`missing_ood`), and save each result as
    ``unseen ood`` does, and say which were scored and how long it took. Returns why a (head,
    dataset) pair could not be scored (a dataset's files unreadable, say): the run stays
    finished, and ``unseen ood`` can try again."""
    import time

    say = log or (lambda _msg: None)
    todo = missing_ood(run_dir, heads, datasets)
    if not todo:
        return {}
    start = time.perf_counter()
    folders = head_folders(run_dir, heads)
    load = far_ood_loader(run_dir, download)
    failed: dict[tuple[str, str], str] = {}
    for head, dataset in todo:
        error = score_and_save(
            run_dir,
            dataset,
            load(dataset, data_root),
            data_root=data_root,  # recorded: a rescore looks there again
            head=head if len(heads) > 1 else None,
            device=device,
            limit=limit,
        )
        if error is not None:
            failed[(head, dataset)] = error
            where = f"head {head}: " if len(heads) > 1 else ""
            say(
                f"{where}far-OOD {dataset}: not scored ({error.rstrip('.')}); "
                f"{ood_command(folders[head], dataset, data_root)} tries again"
            )
    if done := list(dict.fromkeys(d for pair in todo if pair not in failed for d in pair[1:])):
        say(f"far-OOD: {', '.join(done)} scored ({time.perf_counter() - start:.1f} s)")
    return failed


def far_ood_loader(
    run_dir: str | Path, download: bool = False
) -> Callable[[str, str | None], TestImages | Exception]:
    """A function giving a far-OOD set's test images as the run in ``run_dir`` reads them
    (at its ``--bit-depth``), read once for all the heads that score them, or the exception
    reading them raised (it costs that set's results only: :func:`score_and_save`)."""
    from .data import load_test_images
    from .runfolder import read_config_json

    bit_depth = int(read_config_json(Path(run_dir) / "config.json").get("bit_depth", 16))
    loaded: dict[tuple[str, str | None], TestImages | Exception] = {}

    def load(dataset: str, data_root: str | None) -> TestImages | Exception:
        if (dataset, data_root) not in loaded:
            try:
                loaded[(dataset, data_root)] = load_test_images(
                    dataset, data_root, download, bit_depth
                )
            except Exception as exc:  # noqa: BLE001 - unreadable data costs its result only
                loaded[(dataset, data_root)] = exc
        return loaded[(dataset, data_root)]

    return load


def score_and_save(
    run_dir: str | Path,
    dataset: str,
    data: TestImages | Exception,
    *,
    data_root: str | None,
    head: str | None,
    device: str,
    limit: int | None,
) -> str | None:
    """:func:`evaluate_ood` of ``data`` (or the exception reading it raised) with the
    finished run in ``run_dir``, saved by :func:`save_ood`; None, or why it could not be
    scored, in one line: the run is finished, so a failure costs this result only."""
    try:
        if isinstance(data, BaseException):
            raise data
        result = evaluate_ood(
            run_dir,
            dataset,
            data_root=data_root,
            head=head,
            device=device,
            batch_size=1024,
            limit=limit,
            data=data,
        )
    except Exception as exc:  # noqa: BLE001 - the run is finished: it costs this result only
        return describe_error(exc)
    save_ood(result)
    return None


def ood_command(head_folder: str | Path, dataset: str, data_root: str | None = None) -> str:
    """The ``unseen ood`` command that scores ``dataset`` with the run (or head) in
    ``head_folder``, in backticks: for a hint."""
    root = f" --data-root {data_root}" if data_root and ":" not in dataset else ""
    return f"`unseen ood {head_folder} --dataset {dataset}{root}`"


def describe_error(exc: BaseException) -> str:
    """An exception as one line: an :class:`UnseenError`'s own sentence, else its type and
    message (out of memory, say)."""
    if isinstance(exc, UnseenError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def current_results(head_folder: str | Path) -> dict[str, dict[str, Any]]:
    """The results in a run's (or head's) ``ood/`` computed from the run as it stands, by
    dataset: those :func:`is_stale` flags are left out."""
    results = ood_results(head_folder)[0]
    return {r["dataset"]: r for r in results if not is_stale(r, head_folder)}


def far_ood_stats(per_run: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per far-OOD dataset that any of ``per_run`` (each one run's :func:`current_results`)
    holds: ``runs`` (how many scored it), ``num_images`` (the numbers of its images they
    scored) and ``scores``: each score's numeric metrics as :func:`unseen.metrics.mean_std`
    over those runs (not ``threshold``: each run's is on its own network's scale)."""
    from .metrics import mean_std

    out = {}
    for dataset in dict.fromkeys(d for run in per_run for d in run):
        results = [run[dataset] for run in per_run if dataset in run]
        names = dict.fromkeys(n for r in results for n in r["scores"])
        scores = {}
        for name in names:
            per = [r["scores"].get(name, {}) for r in results]
            keys = dict.fromkeys(
                k
                for m in per
                for k, v in m.items()
                if (isinstance(v, (int, float)) or v is None) and k != "threshold"
            )
            scores[name] = {k: mean_std([m.get(k) for m in per]) for k in keys}
        out[dataset] = {
            "runs": len(results),
            "num_images": sorted({int(r["num_images"]) for r in results}),
            "scores": scores,
        }
    return out


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
