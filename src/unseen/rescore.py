"""Score a finished run again, without training it again: ``unseen rescore RUN --scores all``.

A run's network is fixed once trained; its post-hoc scores are not. :func:`rescore_run`
rebuilds the network from ``model.pt``, makes the run's one forward pass again over the
same images (it checks that they are the same), fits the scores now asked for on
known-class data only, and rewrites the run's ``scores.npz``, ``detectors.pt``,
``metrics.json``, ``config.json`` and report, as the run itself would have written them
with those score options. What training recorded stays: ``history.csv``, the training
entries of ``metrics.json`` (time, images/s, the device it trained on) and ``run.json``.

Only the options in :data:`unseen.config.SCORE_OPTIONS` change (which scores, their
settings, the known-acceptance of the thresholds); anything else would need another
network, so another run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import FIELDS, SCORE_OPTIONS, RunConfig, scores_without_their_head
from .console import notes_once, once, warn
from .errors import ConfigError, DataError, UnseenError
from .experiment import (
    TRAINING_METRICS,
    Prepared,
    RunResult,
    Scored,
    caller_torch_state,
    finish_metrics,
    knn_note,
    prepare,
    pretrained_metrics,
    score_head,
    write_run_files,
    write_run_report,
)
from .farood import far_ood_loader, ood_command, ood_results, score_and_save
from .hardware import describe_device, scoring_warning
from .predict import is_head_folder, load_checkpoint, rebuild_model
from .report import head_folder
from .runfolder import is_finished, read_json, read_npz, require_finished, run_damage, write_json
from .scores import unused_options_notes, unused_score_options


def rescore_run(
    run_dir: str | Path,
    changes: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    dataset: str | None = None,
    data_root: str | None = None,
    report: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    warn: Callable[[str], None] = warn,
) -> RunResult:
    """Fit and apply the scores of the finished run in ``run_dir`` again, with ``changes``
    to its score options (:data:`~unseen.config.SCORE_OPTIONS`, e.g. ``{"scores":
    ("msp", "vim"), "vim_dim": 16}``; none: the run's own options), and rewrite its results.

    ``device`` runs the forward pass (any machine can rescore a run); the run's precision is
    kept. When the data moved since the run, ``data_root`` finds a named dataset
    (``fashion-mnist``...) and ``dataset`` gives a ``folder:``/``npz:`` source its new path;
    config.json then records where it is. The data must be the run's: the training and
    validation images are checked against the fingerprint in model.pt (runs of earlier
    versions do not have it) and the test and validation labels against scores.npz.
    ``report`` rebuilds the run's report; by default, when it has one (a ``--no-report`` run
    gets none, and an existing report does not go stale). Returns
    the new metrics (``metrics["rescored"]`` says what changed). Like
    :func:`~unseen.experiment.run_experiment`, it gives the caller's torch state back
    (threads, random number generators). ``warn`` takes what must be said even without a
    log (fp16 on a CPU): on stderr by default.
    """
    _check_changes(changes)
    with caller_torch_state():
        return _rescore_run(
            Path(run_dir),
            dict(changes or {}),
            device,
            dataset,
            data_root,
            report,
            progress,
            log,
            warn,
        )


def _check_changes(changes: Any) -> None:
    if changes is not None and not isinstance(changes, Mapping):
        raise TypeError(
            f"rescore's changes map score options to values, e.g. {{'scores': ('msp', 'knn')}}; "
            f"not a {type(changes).__name__}."
        )


def _rescore_run(
    run_dir: Path,
    changes: dict[str, Any],
    device: str,
    dataset: str | None,
    data_root: str | None,
    report: bool | None,
    progress: bool,
    log: Callable[[str], None] | None,
    warn: Callable[[str], None] = warn,
) -> RunResult:
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    run_dir = require_finished(run_dir)
    if report is None:
        report = (run_dir / "report.html").is_file()
    if is_head_folder(run_dir):
        raise ConfigError(
            f"{run_dir} is one head of the run {run_dir.parent}; rescore {run_dir.parent}, "
            "which rescores every head."
        )
    if other := [k for k in changes if k not in SCORE_OPTIONS]:
        where = (
            f"pass {other[0]} as rescore_run's own argument"
            if other[0] in ("device", "dataset", "data_root", "report")
            else "that needs another network, so another run"
            if other[0] in FIELDS
            else "no option has that name"
        )
        raise ConfigError(
            f"rescoring changes only the score options ({', '.join(SCORE_OPTIONS)}), not "
            f"{other[0]!r}: {where}."
        )
    saved = read_json(run_dir / "config.json")
    from .models import MODELS, not_registered

    if isinstance(saved.get("model"), str) and saved["model"] not in MODELS:
        raise ConfigError(
            not_registered(saved["model"], str(run_dir), "unseen.rescore.rescore_run")
        )
    cfg = RunConfig.from_run(run_dir).replace(**changes)  # checks each new value
    if ovr_only := scores_without_their_head(cfg):
        raise ConfigError(
            f"--scores {','.join(ovr_only)} needs a one-vs-rest head, and {run_dir} trained "
            f"--head {','.join(cfg.head)}: train a run with --head ovr (or softmax,ovr) for it."
        )
    if dataset is not None:
        check_same_source(dataset, cfg.dataset)
    heads = list(cfg.head)
    folders = {h: head_folder(run_dir, saved, h) for h in heads}
    old = {h: read_json(folders[h] / "metrics.json") for h in heads}
    # the network as it trained: its precision and input sizes (config.json holds them as
    # resolved), without the pretrained weights, which model.pt replaces
    try:
        p = prepare(
            cfg.replace(
                pretrained=None,
                device=device,
                precision=old[heads[0]].get("precision") or cfg.precision,
                dataset=dataset or cfg.dataset,
                data_root=data_root or cfg.data_root,
                out=str(run_dir),
                report=report,
                ood=(),  # the far-OOD results there are refreshed below, where found
            )
        )
    except DataError as exc:
        hint = moved_hint(cfg.dataset, cfg.data_root, dataset, data_root)
        raise DataError(f"{str(exc).rstrip('.')}{hint}.") from None
    say(
        f"rescoring {run_dir} on {describe_device(p.device)}, {p.precision}: {', '.join(cfg.scores)}"
    )
    if warning := scoring_warning(p.precision, p.device):
        warn(warning)  # with --quiet too
    for line in unused_options_notes(unused_score_options(cfg, given=changes), "rescored run"):
        say(line)
    if note := knn_note(p):
        say(note)
    resolved = p.config.to_dict()  # paths made absolute
    options = cfg.to_dict()
    new_options = {k: options[k] for k in SCORE_OPTIONS}
    if dataset is not None or data_root is not None:  # where the data is now
        new_options.update(dataset=resolved["dataset"], data_root=resolved["data_root"])
    changed = {k: [saved.get(k), v] for k, v in new_options.items() if saved.get(k, v) != v}
    results: dict[str, tuple[Scored, dict]] = {}
    added: dict[str, None] = {}  # scores --scores takes in now that the run's version did not
    for head in heads:  # every head scored before any file is rewritten
        path = folders[head] / "model.pt"
        payload = load_checkpoint(path)
        check_same_data(p, payload, folders[head])
        model = rebuild_model(payload, path).to(p.device)
        if len(heads) > 1:
            say(f"head {head}")
        scored = score_head(p, head, model, progress)
        training = {k: old[head].get(k) for k in TRAINING_METRICS}
        metrics = finish_metrics(p, head, scored, training, old[head].get("device", "?"))
        # the pretrained weights' record is the run's (rescoring does not load them)
        kept = [k for k in pretrained_metrics(p, head) if k in old[head]]
        metrics.update({k: old[head][k] for k in kept})
        before = old[head].get("rescored") or {}
        metrics["rescored"] = {
            "changed": changed,
            # the score options of the run as trained, kept through every later rescore
            "trained_with": before.get("trained_with")
            or {k: saved.get(k) for k in SCORE_OPTIONS if k in saved},
            "device": describe_device(p.device),
            "seconds": scored.seconds,
        }
        computed = [list(old[head].get("scores", {})), list(metrics["scores"])]
        if computed[0] != computed[1]:  # also with --scores as it was: 'all' grows
            metrics["rescored"]["computed"] = computed
            if "scores" not in changed:
                added.update(dict.fromkeys(n for n in computed[1] if n not in computed[0]))
        payload = {**payload, "config": {**payload.get("config", {}), **new_options}}
        results[head] = scored, payload
    if added:
        say(
            f"note: --scores {','.join(cfg.scores)} now also computes {', '.join(added)}, "
            "which the run's version did not have"
        )
    # far-OOD results: scored again below with the rescored run (those out of date already,
    # which an earlier rescore could not score again, too: --overwrite removes ood/, so every
    # result there is of this network)
    far = {
        h: list({r["dataset"]: r for r in ood_results(f)[0]}.values()) for h, f in folders.items()
    }
    for head, (scored, payload) in results.items():
        write_run_files(folders[head], p, scored, payload)
        if len(heads) > 1:
            record = read_json(folders[head] / "config.json")
            write_json(folders[head] / "config.json", {**record, **new_options})
    per_head = {h: scored.metrics for h, (scored, _) in results.items()}
    metrics = per_head[heads[0]] if len(heads) == 1 else {"heads": per_head}
    if len(heads) > 1:
        write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "config.json", {**saved, **new_options})
    errors = refresh_ood(run_dir, folders, far, p.config.data_root, device, say)
    if report:
        write_run_report(run_dir, say)
    seconds = {"total": time.perf_counter() - started}
    return RunResult(run_dir, cfg, metrics, seconds, errors)


def refresh_ood(
    run_dir: Path,
    folders: dict[str, Path],
    far: dict[str, list[dict[str, Any]]],
    data_root: str | None,
    device: str,
    say: Callable[[str], None],
) -> dict[tuple[str, str], str]:
    """Score again, with the rescored run, the far-OOD results each head has (``far``; the
    head's folder in ``folders``), each with its own image count and where its data was found
    (``data_root`` for a result that does not say); one that cannot be (its data gone) stays,
    marked out of date, and is said and returned."""
    errors = {}
    load = far_ood_loader(run_dir)  # a set several heads scored is read once
    for head, results in far.items():
        for r in results:
            dataset, root = r["dataset"], r.get("data_root", data_root)
            error = score_and_save(
                run_dir,
                dataset,
                load(dataset, root),
                data_root=root,
                head=head if len(far) > 1 else None,
                device=device,
                limit=r.get("limit"),
            )
            if error is not None:  # the rescore is written: it costs this result only
                errors[(head, dataset)] = error
                where = f"head {head}: " if len(far) > 1 else ""
                say(
                    f"note: {where}far-OOD {dataset} not scored again, so out of date "
                    f"({error.rstrip('.')}); {ood_command(folders[head], dataset, root)} scores it"
                )
                continue
            say(f"far-OOD {dataset} scored again" + (f" (head {head})" if len(far) > 1 else ""))
    return errors


def moved_hint(source: str, root: str | None, dataset: str | None, data_root: str | None) -> str:
    """What to add to a data error of a rescore: which flag says where moved data is now;
    nothing when the user gave one already, or when the data is where it was (and the error
    is about its content)."""
    from .data import get_source

    if dataset or data_root:
        return ""
    try:
        get_source(source).locate(root)
        return ""
    except UnseenError:  # not there
        flag = "--dataset" if ":" in source else "--data-root"
        return f"; if the data moved, {flag} says where it is now"


def check_same_source(dataset: str, saved: str) -> None:
    """A new ``dataset`` for a rescore must be the run's source at another path: a
    ``folder:`` or ``npz:`` source again (named datasets move with ``data_root``)."""
    if ":" not in saved or _kind(dataset) != _kind(saved):
        raise ConfigError(
            f"--dataset {dataset} is not the run's data source ({saved}): a rescore uses the "
            "run's data, and --dataset only gives a folder: or npz: source its new path "
            "(--data-root finds a named dataset that moved)."
        )


def check_same_data(p: Prepared, payload: dict, folder: Path) -> None:
    """Refuse to rescore on other data than the run's: the training and validation images
    (the fingerprint model.pt holds since this version) and the labels of the test and
    validation images, against the run's scores.npz."""
    hint = (
        "give the run's data (--data-root, or --dataset for a folder: or npz: source), or "
        "train a new run on these"
    )
    saved = payload.get("data")
    if saved and saved != p.data_fingerprint:
        raise DataError(
            f"the training and validation images differ from those {folder} trained on; {hint}."
        )
    sd = p.split_data
    path = folder / "scores.npz"
    if not path.is_file():
        raise DataError(f"{path} does not exist; the run folder is incomplete.")
    arrays = read_npz(path, keep=lambda k: k in ("label", "val_label"))  # damage: one sentence
    same = all(
        key in arrays and np.array_equal(arrays[key], now.numpy())
        for key, now in (("label", sd.y_test_original), ("val_label", sd.y_val))
    )
    if not same:
        raise DataError(
            f"the test or validation images differ from those {folder} was scored on; {hint}."
        )


def rescore_sweep(
    sweep_dir: str | Path,
    changes: Mapping[str, Any] | None = None,
    *,
    device: str = "auto",
    dataset: str | None = None,
    data_root: str | None = None,
    report: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    warn: Callable[[str], None] = warn,
) -> tuple[list[RunResult], Any]:
    """:func:`rescore_run` on every finished run of the sweep in ``sweep_dir`` (its
    ``sweep.json`` lists them), then the sweep's summary again (``unseen sweep
    --summary-only``, which reads the runs' new metrics). Returns the runs' results and the
    :class:`unseen.sweep.SweepResult`; runs not finished are left alone, and so are finished
    runs whose files cannot be read (:func:`unseen.runfolder.run_damage`, found before any
    run is rewritten): the summary leaves them out, and the result's ``damaged`` lists them.

    The data is read where the runs found it (their config.json records absolute paths), so
    a sweep given a relative ``folder:``/``npz:`` path rescores from any working directory;
    ``dataset`` and ``data_root`` say where it is now if it moved, as for :func:`rescore_run`.
    ``report``, as there: by default each run's report and the sweep's comparison are
    rebuilt where they exist.
    """
    from .data import load_dataset
    from .sweep import RunOutcome, SweepOptions, plan_sweep, summarize

    _check_changes(changes)  # before the data is loaded, and with no run finished too
    sweep_dir = Path(sweep_dir)
    log = notes_once(log)  # what applies to every run is said once
    warn = once(warn)  # and so is a warning
    say = log or (lambda _msg: None)
    plan_file = sweep_dir / "sweep.json"
    plan = read_json(plan_file)
    # the plan is rebuilt (data loaded, runs planned) before any run is rewritten: a sweep
    # that could not be summarised again must not be left half rescored
    try:
        base = RunConfig.from_dict(plan["base_config"])
        if data_root is not None:  # not hashed: the runs keep their folders
            base = base.replace(data_root=data_root)
        opts = SweepOptions(
            protocol=str(plan["protocol"]),
            seeds=int(plan["seeds"]),
            splits=None if plan.get("splits") is None else int(plan["splits"]),
            fractions=tuple(map(float, plan["fractions"])) if plan.get("fractions") else None,
            balances=_names(plan.get("compare_balance")),
        )
        listed = {Path(r["dir"]).name for r in plan["runs"]}
        if dataset is not None:
            check_same_source(dataset, base.dataset)
        source, root = dataset or base.dataset, base.data_root
        if dataset is None:  # where the runs found it (--data-root: where it is now)
            source, root = recorded_source(sweep_dir, sorted(listed), base)
            root = data_root or root
    except (KeyError, TypeError, ValueError, AttributeError, UnseenError) as exc:
        raise DataError(f"cannot rescore the sweep in {sweep_dir}: {plan_file}: {exc}") from None
    try:
        data = load_dataset(source, root, bit_depth=base.bit_depth)
    except DataError as exc:
        hint = moved_hint(source, root, dataset, data_root)
        raise DataError(
            f"cannot rescore the sweep in {sweep_dir}: {str(exc).rstrip('.')}{hint}."
        ) from None
    try:  # the folders are those of the options as given (a path is hashed as typed)
        planned = plan_sweep(base, opts, sweep_dir, data)
    except UnseenError as exc:
        raise DataError(f"cannot rescore the sweep in {sweep_dir}: {plan_file}: {exc}") from None
    if {r.run_dir.name for r in planned} != listed:
        raise DataError(
            f"{plan_file} lists other runs than its options plan; it was edited or damaged."
        )
    folders = [r.run_dir for r in planned]
    finished = [f for f in folders if is_finished(f)]
    if left := len(folders) - len(finished):
        were = "is" if left == 1 else "are"
        say(f"{left} of the sweep's {len(folders)} runs {were} not finished: left as they are")
    # damaged runs are found before any run is rewritten, and left out (the summary says so)
    damaged = {f: problem for f in finished if (problem := run_damage(f, model=True))}
    for folder, problem in damaged.items():
        say(f"{folder.name}: DAMAGED, left as it is: {problem}")
    finished = [f for f in finished if f not in damaged]
    results = []
    for i, folder in enumerate(finished):
        say(f"run {i + 1} of {len(finished)}: {folder.name}")
        results.append(
            rescore_run(
                folder,
                changes,
                device=device,
                dataset=dataset,
                data_root=data_root,
                report=report,
                progress=progress,
                log=log,
                warn=warn,
            )  # fmt: skip
        )
    # the summary of `unseen sweep --summary-only`, from the plan rebuilt above, without
    # the damaged runs
    skipped = [
        RunOutcome(r, "damaged", error=damaged[r.run_dir])
        if r.run_dir in damaged
        else RunOutcome(r, "skipped")
        for r in planned
    ]
    if report is None:
        report = (sweep_dir / "report").is_dir()
    summary = summarize(sweep_dir, base, opts, planned, skipped, report=report, log=log)
    return results, summary


def recorded_source(
    sweep_dir: Path, names: Sequence[str], base: RunConfig
) -> tuple[str, str | None]:
    """The dataset and data root that the first finished run of the sweep recorded (as
    absolute paths; a damaged run is passed over), or ``base``'s when no run finished or a
    run records another source."""
    for name in names:
        folder = sweep_dir / "runs" / name
        if is_finished(folder) and run_damage(folder) is None:
            saved = read_json(folder / "config.json")
            dataset, root = saved.get("dataset"), saved.get("data_root")
            if isinstance(dataset, str) and _kind(dataset) == _kind(base.dataset):
                return dataset, root if isinstance(root, str) else base.data_root
            break
    return base.dataset, base.data_root


def _kind(dataset: str) -> str:
    """``folder``/``npz`` for a file source, else the dataset's name."""
    return dataset.split(":", 1)[0] if ":" in dataset else dataset


def _names(value: Any) -> tuple[str, ...] | None:
    """sweep.json's list of balance modes (None: not compared)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"compare_balance must be a list of names, not {value!r}")
    return tuple(value) or None
