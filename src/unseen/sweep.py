"""Protocols: many runs from one command, resumable, aggregated.

``unseen sweep --protocol P [run options] --out DIR`` expands a protocol into run
configurations (:func:`expand`), runs those not finished yet (:func:`run_plan`, optionally
several at once) and aggregates their ``metrics.json`` files (:func:`aggregate`).

Protocols (:data:`PROTOCOLS`):

* ``loo`` -- each class held out in turn (one unseen class per run);
* ``neal6`` -- the five 6-known / 4-unseen splits of Neal et al. (2018), ten-class datasets only;
* ``random:K`` -- ``--splits N`` random splits with K known classes; split ``i`` is the
  ``i``-th distinct draw of ``numpy.random.default_rng(0)``, independent of ``--seed``, so the
  first splits of ``--splits 10`` are those of ``--splits 5``;
* ``rare:CLASS`` -- the class kept at ``--fractions`` of its training images (see
  :mod:`unseen.rare`), every other class known;
* ``single`` -- the split given by the run options, unchanged (to repeat it with ``--seeds``).

Every run is repeated for each of ``--seeds N`` seeds (``--seed`` .. ``--seed + N - 1``) and,
with ``--compare-balance``, for each ``--balance`` mode. A run lives in
``DIR/runs/<label>-<hash8>``, where the hash covers the configuration *as given*
(:func:`config_hash`: fields at their default and those of ``config.RESULT_NEUTRAL_KEYS`` such
as ``out`` left out); a folder holding a finished run (``run.json``) is skipped, so running
the same command again continues an interrupted sweep. Settings left on ``auto`` (device,
precision, batch size, learning rate, epochs) are hashed as ``auto``, not as what they resolve
to on the machine that ran them, so a sweep continued on another machine can hold runs with
different settings in one condition: the summary marks such conditions (``mixed_settings``,
:func:`mixed_settings`) and warns, rather than averaging them silently.

Aggregates are means and *sample* standard deviations (``ddof=1``; ``null`` for a single run)
over the finished runs; missing values (``null`` in ``metrics.json``) are left out and ``n``
says how many values went in. Scores follow the tool's one convention: higher = more likely a
known class, and AUROC takes known images as positives.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import (
    FIELDS,
    MAX_SEED,
    RESULT_NEUTRAL_KEYS,
    SCORE_OPTIONS,
    RunConfig,
    flag_name,
    validate,
)
from .console import printable_names
from .data import absolute_dataset
from .errors import ConfigError, Interrupted, UnseenError
from .farood import current_results, far_ood_stats, head_folders, locate_ood, missing_ood
from .metrics import CONFIDENT, absorbed_by, mean_std
from .rare import rare_statistics
from .runfolder import (
    describe_mixed,
    is_finished,
    is_side_file,
    mixed_settings,
    read_json,
    resolved_settings,
    run_damage,
    slug,
    write_json,
)
from .scores import unused_options_notes, unused_score_options

if TYPE_CHECKING:
    from .data import ImageData

#: Neal et al. 2018 ("Open Set Learning with Counterfactual Images"), known classes per split
NEAL6_SPLITS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 4, 5, 9),
    (0, 3, 5, 7, 8, 9),
    (0, 1, 5, 6, 7, 8),
    (3, 4, 5, 7, 8, 9),
    (0, 1, 2, 3, 7, 8),
)
DEFAULT_FRACTIONS = (0.0, 0.001, 0.01, 0.1, 1.0)
DEFAULT_SPLITS = 5
#: a sweep that plans more runs than this is almost certainly a typo in --seeds or --splits
MAX_RUNS = 10_000
BALANCE_MODES = ("none", "weighted-loss", "sampler")
PROTOCOLS = {
    "loo": "each class held out in turn",
    "neal6": "the five 6-known/4-unseen splits of Neal et al. 2018 (ten-class datasets)",
    "random:K": "--splits N seeded random splits with K known classes",
    "rare:CLASS": "CLASS kept at --fractions of its training images, all classes known",
    "single": "the split of the run options as given (repeat it with --seeds)",
}
#: per-score metrics of the console tables (all numeric ones go to summary.json)
TABLE_METRICS = (
    ("auroc", "AUROC"),
    ("fpr_at_95_tpr", "FPR@95"),
    ("oscr", "OSCR"),
    ("open_set_accuracy", "open-acc"),
)


# ----------------------------------------------------------------------------- hashing


#: fields that say where the files are and how to run, not what: left out of the hash (the
#: same keys ``--resume`` and the comparison tables ignore)
NOT_HASHED = frozenset(RESULT_NEUTRAL_KEYS)


def hash_fields(cfg: RunConfig) -> dict[str, Any]:
    """The fields a run's hash covers: those that differ from their default, except
    :data:`NOT_HASHED` (``config.RESULT_NEUTRAL_KEYS``: where the files go and how fast the
    run goes, such as ``out``, ``data_root``, ``report``, ``cuda_graphs``).

    Fields at their default are left out so that a later version adding an option (with a
    default) keeps the hashes, and so the folders, of an existing sweep.
    """
    values = cfg.to_dict()
    return {
        f.name: values[f.name]
        for f in fields(cfg)
        if f.name not in NOT_HASHED and getattr(cfg, f.name) != f.default
    }


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`hash_fields`: stable across processes."""
    text = json.dumps(hash_fields(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its configuration (``out`` set to its folder) and its place in it."""

    label: str
    config: RunConfig
    #: protocol axis ("condition"), seed and balance mode of this run
    tags: dict[str, Any] = field(default_factory=dict)
    #: the classes the run holds out, as its split resolved them (None: not planned yet)
    held_out: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    @property
    def run_dir(self) -> Path:
        if self.config.out is None:
            raise ValueError("planned run has no folder")
        return Path(self.config.out)


@dataclass(frozen=True)
class SweepOptions:
    """What ``unseen sweep`` adds to the run options."""

    protocol: str
    seeds: int = 1
    splits: int | None = None
    fractions: tuple[float, ...] | None = None
    balances: tuple[str, ...] | None = None
    jobs: int = 1


def parse_protocol(text: str) -> tuple[str, str | None]:
    """``"random:6"`` -> ``("random", "6")``; checks the protocol name."""
    kind, sep, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind in {"loo", "neal6", "single"} and not sep:
        return kind, None
    if kind in {"random", "rare"} and sep and arg.strip():
        return kind, arg.strip()
    raise ConfigError(f"--protocol {text!r} is not known; choose one of: {', '.join(PROTOCOLS)}.")


def parse_fractions(text: str) -> tuple[float, ...]:
    """``--fractions``: comma-separated numbers from 0 to 1, returned sorted and unique."""
    try:
        values = sorted({float(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ConfigError(f"--fractions must be numbers from 0 to 1, not {text!r}.") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"--fractions must be numbers from 0 to 1, not {text!r}.")
    return tuple(values)


def parse_balances(text: str) -> tuple[str, ...]:
    """``--compare-balance``: comma-separated --balance modes, or ``all``."""
    if text.strip().lower() == "all":
        return BALANCE_MODES
    modes = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [m for m in modes if m not in BALANCE_MODES]
    if bad or not modes:
        raise ConfigError(
            f"--compare-balance takes modes from {', '.join(BALANCE_MODES)} or 'all', not {text!r}."
        )
    return modes


def random_splits(
    num_classes: int, k: int, count: int, of: str = "classes"
) -> list[tuple[int, ...]]:
    """``count`` distinct sorted sets of ``k`` known classes from ``default_rng(0)``; ``of``
    names the classes drawn from in messages."""
    if not 2 <= k <= num_classes - 1:
        raise ConfigError(
            f"--protocol random:{k} needs 2 to {num_classes - 1} known classes for a dataset of "
            f"{num_classes} {of}."
        )
    if count > math.comb(num_classes, k):
        raise ConfigError(
            f"--splits {count} is more than the {math.comb(num_classes, k)} different "
            f"{k}-of-{num_classes} splits."
        )
    if count > MAX_RUNS:  # checked before drawing: a typo must not hang the command
        raise ConfigError(f"--splits {count} is too many; a sweep plans at most {MAX_RUNS} runs.")
    rng = np.random.default_rng(0)
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < count:
        pick = tuple(sorted(int(i) for i in rng.choice(num_classes, size=k, replace=False)))
        if pick not in seen:
            seen.add(pick)
            out.append(pick)
    return out


def check_options(opts: SweepOptions) -> None:
    """The sweep options' own ranges, checked before anything is loaded, planned or written."""
    if opts.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1 (got {opts.seeds}).")
    if opts.splits is not None and opts.splits < 1:
        raise ConfigError(f"--splits must be at least 1 (got {opts.splits}).")
    if opts.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {opts.jobs}).")


def _check_total(conditions: int, balances: int, seeds: int) -> None:
    total = conditions * balances * seeds
    if total > MAX_RUNS:
        raise ConfigError(
            f"this sweep would plan {total} runs ({conditions} conditions x "
            f"{balances} balance modes x {seeds} seeds); at most {MAX_RUNS} are allowed."
        )


def _split_name(i: int, known: Sequence[int]) -> str:
    """``"2: known 0,1,5,6,7,8"`` (class indices), the condition of split ``i``."""
    return f"{i}: known {','.join(str(c) for c in known)}"


def expand(
    base: RunConfig, classes: Sequence[str], opts: SweepOptions, untrained: Sequence[int] = ()
) -> list[PlannedRun]:
    """The runs of a protocol, without folders: one per condition x balance mode x seed.

    ``base`` holds the run options; ``classes`` the dataset's class names. ``untrained``
    classes (no training images) are held out in every run, so the protocols choose among
    the others: ``loo`` holds out each other class in turn, ``random:K`` draws K known
    classes from them, and ``neal6`` (fixed splits of ten classes) is refused.
    """
    from .rare import format_fraction, resolve_rare

    kind, arg = parse_protocol(opts.protocol)
    trained = [i for i in range(len(classes)) if i not in untrained]
    n = len(trained)
    of = "classes with training images" if untrained else "classes"  # in messages
    check_options(opts)
    if opts.seeds > MAX_SEED - base.seed + 1:
        raise ConfigError(
            f"--seeds {opts.seeds} from --seed {base.seed} goes past the largest seed, {MAX_SEED}."
        )
    if opts.splits is not None and kind != "random":
        raise ConfigError("--splits only applies to --protocol random:K.")
    if opts.fractions is not None and kind != "rare":
        raise ConfigError("--fractions only applies to --protocol rare:CLASS.")
    if kind in {"loo", "neal6", "random"} and (base.holdout is not None or base.known is not None):
        raise ConfigError(
            f"--protocol {opts.protocol} chooses the known classes; drop --holdout/--known."
        )
    if base.rare is not None and kind not in {"single"}:
        raise ConfigError(
            "--rare cannot be combined with this protocol; use --protocol rare:CLASS "
            "(or --protocol single to repeat one --rare run)."
        )

    balances = opts.balances or (base.balance,)
    # conditions: (label, tag value, config changes)
    conditions: list[tuple[str, Any, dict[str, Any]]] = []
    if kind == "loo":
        if n < 3:
            raise ConfigError(f"--protocol loo needs at least three {of}.")
        conditions = [
            (f"loo-{slug(classes[c])}", classes[c], {"holdout": (classes[c],)}) for c in trained
        ]
    elif kind == "neal6":
        if len(classes) != 10 or untrained:
            with_images = f", {n} with training images" if untrained else ""
            raise ConfigError(
                f"--protocol neal6 is defined for ten-class datasets whose every class has "
                f"training images; {base.dataset} has {len(classes)} classes{with_images} "
                "(use random:K instead)."
            )
        conditions = [
            (f"neal6-split{i}", _split_name(i, known), {"known": tuple(classes[c] for c in known)})
            for i, known in enumerate(NEAL6_SPLITS)
        ]
    elif kind == "random":
        try:
            k = int(arg or "")
        except ValueError:
            raise ConfigError(f"--protocol random:K needs a number K, not {arg!r}.") from None
        count = opts.splits or DEFAULT_SPLITS
        _check_total(count, len(balances), opts.seeds)  # before drawing the splits
        picks = [tuple(trained[c] for c in pick) for pick in random_splits(n, k, count, of)]
        conditions = [
            (
                f"random{k}-split{i}",
                _split_name(i, known),
                {"known": tuple(classes[c] for c in known)},
            )
            for i, known in enumerate(picks)
        ]
    elif kind == "rare":
        ((cls, _),) = resolve_rare((f"{arg}:1",), classes, "--protocol rare:CLASS")
        name = classes[cls]
        # exact text (0.1 stays "0.1"; 0.1234561 and 0.1234564 stay apart): the text goes
        # into the hash and the folder name, so two fractions must never share one
        texts = [format_fraction(f) for f in (opts.fractions or DEFAULT_FRACTIONS)]
        if twice := next((t for i, t in enumerate(texts) if t in texts[:i]), None):
            raise ConfigError(f"--fractions lists {twice} twice; give each fraction once.")
        conditions = [
            (f"rare-{slug(name)}-f{t}", float(t), {"rare": (f"{name}:{t}",)}) for t in texts
        ]
    else:  # single
        conditions = [("single", "single", {})]

    _check_total(len(conditions), len(balances), opts.seeds)
    runs = []
    for (label, value, changes), balance, i in itertools.product(
        conditions, balances, range(opts.seeds)
    ):
        seed = base.seed + i
        cfg = base.replace(**changes, balance=balance, seed=seed, out=None)
        suffix = (f"-{balance}" if opts.balances else "") + f"-seed{seed}"
        tags = {"protocol": kind, "condition": value, "seed": seed, "balance": balance}
        if kind == "rare":
            tags["rare_class"] = classes[cls]
        runs.append(PlannedRun(label + suffix, cfg, tags))
    return runs


def plan(
    base: RunConfig,
    classes: Sequence[str],
    opts: SweepOptions,
    out_dir: str | Path,
    untrained: Sequence[int] = (),
) -> list[PlannedRun]:
    """:func:`expand`, then give every run its folder ``out_dir/runs/<label>-<hash8>`` and check it.

    Each run's configuration is validated and its split built from ``classes`` (as the run
    itself will: :func:`unseen.rare.resolve_rare`, :func:`unseen.splits.make_split`,
    :func:`unseen.experiment.check_score_settings`), so a split or a score setting no run
    could use (a rare class held out, a single known class, a ``--vim-dim`` too large for the
    network, ...) is a :class:`ConfigError` here, before any folder exists, instead of a
    failed run.
    """
    from .experiment import check_score_settings
    from .rare import resolve_rare
    from .splits import make_split

    classes = tuple(classes)
    planned = []
    checked: dict[tuple, tuple[str, ...]] = {}  # split -> the classes it holds out
    folders: set[Path] = set()
    for run in expand(base, classes, opts, untrained):
        folder = Path(out_dir) / "runs" / f"{run.label}-{run.hash[:8]}"
        if folder in folders:  # two runs would write one folder (and the summary count it twice)
            raise ConfigError(f"--protocol {opts.protocol} plans the run {folder.name} twice.")
        folders.add(folder)
        # an unfinished run continues from its last checkpoint, unless --overwrite
        cfg = run.config.replace(out=str(folder), resume=not base.overwrite)
        validate(cfg)
        key = (cfg.holdout, cfg.known, cfg.rare)
        if key not in checked:  # runs differing only in seed or balance share a split
            try:
                # a rare:CLASS protocol's errors name what the user typed, not --rare
                option = "--protocol rare:CLASS" if run.tags["protocol"] == "rare" else "--rare"
                rare = resolve_rare(cfg.rare, classes, option)
                split = make_split(
                    classes, cfg.holdout, cfg.known, rare=rare, untrained=untrained,
                    rare_option=option,
                )  # fmt: skip
                check_score_settings(cfg, split.num_known)
            except ConfigError as exc:
                raise ConfigError(f"run {run.label}: {exc}") from None
            checked[key] = tuple(split.unseen_names)
        planned.append(PlannedRun(run.label, cfg, run.tags, checked[key]))
    return planned


def default_sweep_dir(dataset: str, protocol: str) -> Path:
    """``sweeps/<dataset>-<protocol>``: the same command finds the same folder again."""
    name = Path(dataset).name if ":" in dataset else dataset
    return Path("sweeps") / f"{slug(name)}-{slug(protocol)}"


# ----------------------------------------------------------------------------- the sweep folder

#: what a sweep writes into its folder; a folder without sweep.json that holds anything else
#: (hidden files aside) is not a sweep's
SWEEP_ENTRIES = frozenset({"sweep.json", "summary.json", "summary.txt", "runs", "report"})


def sweep_record(out: Path) -> dict | None:
    """The ``sweep.json`` of the sweep folder ``out`` (None: a new or empty folder, or one
    holding only what a sweep writes). Raises a :class:`ConfigError` for a file, a run
    folder, a folder of other files, and a ``sweep.json`` that is not a sweep's record.
    Checked before anything is planned or written."""
    from .checkpoint import holds_run_files

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder.")
    if not out.is_dir():
        return None
    if holds_run_files(out):
        raise ConfigError(
            f"--out {out} holds a run of `unseen run`, not a sweep; give the sweep its own folder."
        )
    path = out / "sweep.json"
    if not path.is_file():
        other = sorted(
            p.name
            for p in out.iterdir()
            if not p.name.startswith(".") and p.name not in SWEEP_ENTRIES and not is_side_file(p)
        )
        if other:
            raise ConfigError(
                f"--out {out} is a folder with other files in it ({other[0]}), not a sweep "
                "folder (it has no sweep.json); give the sweep a new or empty folder."
            )
        return None
    try:
        record = read_json(path)
    except UnseenError as exc:
        raise ConfigError(f"{str(exc).rstrip('.')}; give the sweep another --out.") from None
    runs = record.get("runs") if isinstance(record, dict) else None
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and isinstance(r.get("dir"), str) for r in runs
    ):
        raise ConfigError(
            f"{path} is not a sweep's record (it lists no run folders); give the sweep "
            "another --out."
        )
    return record


def check_same_sweep(
    out: Path, record: dict, base: RunConfig, opts: SweepOptions, runs: Sequence[PlannedRun]
) -> None:
    """Refuse to write this sweep over another one: every run that ``out``'s ``record``
    (its sweep.json) lists must be among ``runs``, those this command plans. The same
    command, and one that only adds runs (more ``--seeds``, ``--splits``, ``--fractions``)
    or changes an option that is not hashed (``--ood``, ``--jobs``, ``--report``...),
    plans them all; another protocol, dataset or hashed run option plans other folders,
    and its sweep.json would forget the recorded runs."""
    recorded = [Path(r["dir"]).name for r in record["runs"]]
    planned = {r.run_dir.name for r in runs}
    missing = [name for name in recorded if name not in planned]
    if not missing:
        return
    differing = _differing_options(record, base, opts)
    fewer = {"--seeds", "--splits", "--fractions"}
    if differing and set(differing) <= fewer:  # this very sweep, cut short: not another one
        recorded_opts = ", ".join(
            f"{flag} {_option_text(record.get(flag[2:]), flag[2:])}" for flag in differing
        )
        if planned <= set(recorded):  # only runs it records: the record has more
            what, give = "more", "those options again"
        else:  # runs it lacks too (--fractions 0.1 after 0.5): name options that plan both
            what, give = "other", _covering_options(record, opts, differing)
        raise ConfigError(
            f"--out {out} holds this sweep with {what} runs ({recorded_opts}, see its "
            f"sweep.json): this command does not plan {len(missing)} of its {len(recorded)} "
            f"runs; give {give} (its finished runs are kept and skipped), or another --out."
        )
    why = f"differs in {', '.join(differing)}" if differing else "plans other run folders"
    recorded_base = record.get("base_config")
    dataset = recorded_base.get("dataset") if isinstance(recorded_base, dict) else "?"
    rescore = ""
    if differing and set(differing) <= {flag_name(k) for k in SCORE_OPTIONS}:
        rescore = (
            f"; `unseen rescore {out}` with {', '.join(differing)} gives its runs other scores "
            "without training them again"
        )
    raise ConfigError(
        f"--out {out} holds another sweep (--protocol {record.get('protocol')} on "
        f"{dataset}, see its sweep.json): this command "
        f"{why} and does not plan {len(missing)} of its {len(recorded)} runs; give this sweep "
        f"another --out (or delete {out} to replace that sweep){rescore}."
    )


def _option_text(value: Any, key: str) -> str:
    """A sweep.json value as the command line spells it (``[0.1, 0.5]`` -> ``0.1,0.5``;
    None: the default)."""
    if value is None:
        value = {"splits": DEFAULT_SPLITS, "fractions": list(DEFAULT_FRACTIONS)}.get(key)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _covering_options(record: dict, opts: SweepOptions, flags: Sequence[str]) -> str:
    """The --seeds, --splits and --fractions that plan the runs of ``record`` and those of
    ``opts`` both: the larger count, the union of the fractions."""
    parts = []
    for flag in flags:
        key = flag[2:]
        theirs = record.get(key)
        if key == "fractions":
            both = set(theirs or DEFAULT_FRACTIONS) | set(opts.fractions or DEFAULT_FRACTIONS)
            parts.append(f"{flag} {','.join(f'{f:g}' for f in sorted(both))}")
        else:
            default = DEFAULT_SPLITS if key == "splits" else 1
            parts.append(f"{flag} {max(theirs or default, getattr(opts, key) or default)}")
    return " ".join(parts)


def _differing_options(record: dict, base: RunConfig, opts: SweepOptions) -> list[str]:
    """The flags whose values differ between the sweep of ``record`` and this one: the
    sweep options, then the run options that the run folders' hashes cover."""
    from .runfolder import jsonable

    ours = {"protocol": opts.protocol, "seeds": opts.seeds, "splits": opts.splits,
            "fractions": opts.fractions, "compare_balance": opts.balances}  # fmt: skip
    out = [flag_name(k) for k, v in ours.items() if jsonable(v) != record.get(k)]
    try:
        theirs = hash_fields(RunConfig.from_dict(record["base_config"]))
    except (KeyError, TypeError, ValueError, UnseenError):  # a record of another version
        return out
    mine = hash_fields(base)
    keys = sorted(set(theirs) | set(mine), key=list(FIELDS).index)
    return out + [flag_name(k) for k in keys if jsonable(theirs.get(k)) != jsonable(mine.get(k))]


# ----------------------------------------------------------------------------- running

#: how a stopped sweep says to go on
SWEEP_AGAIN = "the sweep stopped: run the same `unseen sweep` command again to continue it"


class RunInterrupted(Interrupted):
    """:class:`Interrupted` that survives pickling (out of a ``--jobs`` worker process)."""

    def __reduce__(self):
        return type(self), (str(self), self.exit_code)


@dataclass
class RunOutcome:
    run: PlannedRun
    #: "finished", "skipped", "failed", or "damaged" (a finished run whose files cannot be
    #: read, :func:`unseen.runfolder.run_damage`: left out, its problem in ``error``)
    status: str
    seconds: float = 0.0
    error: str | None = None


# ----------------------------------------------------------------------------- --jobs workers

#: in a ``--jobs`` worker: the sweep is stopping (a signal came, or the main process is
#: gone), so the worker takes no further run
_STOPPING = False
#: in a ``--jobs`` worker: a run is in progress
_RUNNING = False
#: this process is a ``--jobs`` worker (set by its initializer)
_IN_WORKER = False


def _worker_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM in a worker outside training (training catches them itself). An idle
    worker exits at once; in a run, training that starts afterwards stops at its first step
    (with a checkpoint), and the worker exits once the run is over (:func:`_watch`)."""
    from . import checkpoint

    global _STOPPING
    if not _RUNNING:
        os._exit(128 + signum)
    _STOPPING = True
    checkpoint.PENDING_STOP = signum


def _watch(parent: int) -> None:
    """A worker's watch thread. Once the sweep is stopping, or its main process is gone (``kill
    -9``: the current run is then stopped as by SIGTERM, with a checkpoint), the worker exits
    as soon as no run is in progress, instead of waiting for more work: a queue whose lock a
    killed worker held would keep it waiting forever."""
    import signal

    global _STOPPING
    while True:
        if os.getppid() != parent and not _STOPPING:
            _STOPPING = True
            os.kill(os.getpid(), signal.SIGTERM)
        if _STOPPING and not _RUNNING:
            time.sleep(0.5)  # the run's result is sent back first
            if not _RUNNING:
                os._exit(143)
        time.sleep(0.2)


#: in a ``--jobs`` worker: why a network registered in the main process could not be
#: registered here (its runs fail with this, not with "not known")
_MODEL_ERRORS: dict[str, str] = {}


def _registered_builders(names: set[str]) -> dict[str, tuple[bytes, bool]]:
    """The networks of one's own (:func:`unseen.models.register_model`) that runs in worker
    processes need: name -> (pickled builder, has_stem). Spawned workers start with only the
    built-in networks, so the builders travel to them by reference (module and name)."""
    import pickle

    from .models import BUILT_IN_MODELS, HAS_STEMS, MODELS

    out = {}
    for name in sorted(n for n in names if n not in BUILT_IN_MODELS and n in MODELS):
        try:
            out[name] = (pickle.dumps(MODELS[name]), name in HAS_STEMS)
        except Exception as exc:  # noqa: BLE001 - a lambda, a function inside a function...
            raise ConfigError(
                f"model {name!r} cannot be sent to the sweep's worker processes ({exc}); "
                "define its builder at the top level of an importable module, or use jobs=1."
            ) from None
    return out


def _init_worker(parent: int, builders: dict[str, tuple[bytes, bool]] | None = None) -> None:
    import pickle
    import signal
    import threading

    from .models import register_model

    global _IN_WORKER
    _IN_WORKER = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _worker_signal)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    for name, (builder, has_stem) in (builders or {}).items():
        try:
            register_model(name, has_stem=has_stem)(pickle.loads(builder))
        except Exception as exc:  # noqa: BLE001 - e.g. a builder defined in a notebook
            _MODEL_ERRORS[name] = (
                f"model {name!r} could not be registered in a worker process "
                f"({type(exc).__name__}: {exc}); define its builder at the top level of an "
                "importable module (not in a notebook, nor under `if __name__ == '__main__':`), "
                "or use jobs=1"
            )


def _run_one(cfg: RunConfig, threads: int | None = None) -> tuple[float, str | None, str | None]:
    """Run one configuration (in this process or a worker); return (seconds, error or None,
    note or None): the note says which ``--ood`` datasets a finished run could not score.

    A failure writes ``error.txt`` (with the traceback) into the run folder.
    """
    global _RUNNING
    if _STOPPING:  # a worker of a sweep that is stopping
        raise RunInterrupted("not started: the sweep is stopping", 130)
    _RUNNING = True
    try:
        return _run_one_now(cfg, threads)
    finally:
        _RUNNING = False


def _run_one_now(cfg: RunConfig, threads: int | None) -> tuple[float, str | None, str | None]:
    from . import experiment

    global _STOPPING
    if threads is not None:
        import torch

        from .threads import THREADS_ENV

        os.environ[THREADS_ENV] = str(threads)
        torch.set_num_threads(threads)
    start = time.perf_counter()
    if cfg.model in _MODEL_ERRORS:
        return 0.0, _MODEL_ERRORS[cfg.model], None
    if cfg.out and not cfg.overwrite:  # continue a run an earlier sweep left unfinished
        cfg = cfg.replace(resume=True)
    if cfg.out:
        (Path(cfg.out) / "error.txt").unlink(missing_ok=True)
    try:
        if cfg.out and not cfg.overwrite and is_finished(cfg.out):
            # a finished run that lacks --ood results: scored with the run as it stands (its
            # own options, rescored or not), nothing trained
            errors = experiment.complete_finished_run(
                cfg.out,
                cfg.ood,
                data_root=cfg.data_root,
                download=cfg.download,
                device=cfg.device,
                report=cfg.report,
            )
        else:
            errors = experiment.run_experiment(cfg, progress=False, log=None).ood_errors
    except Interrupted as exc:  # Ctrl-C or SIGTERM (checkpoint saved): stop the whole sweep
        _STOPPING = _IN_WORKER  # a worker takes no further run
        raise RunInterrupted(str(exc), exc.exit_code) from None
    except Exception as exc:  # one failed run must not stop the sweep
        detail = str(exc) if isinstance(exc, UnseenError) else f"{type(exc).__name__}: {exc}"
        from .checkpoint import TrainingDiverged

        if isinstance(exc, TrainingDiverged):  # a new --lr is another sweep's folders
            detail = re.sub(
                r" and start again( with --overwrite)?",
                " and run the sweep with it and another --out (--lr is hashed: --overwrite "
                "in this folder is refused)",
                detail,
                count=1,
            )
        folder = Path(cfg.out) if cfg.out else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(traceback.format_exc())
        first = detail.strip().splitlines()[0] if detail.strip() else detail
        return time.perf_counter() - start, first, None
    by = len(cfg.head) > 1  # name the head
    notes = [
        f"far-OOD {d} not scored" + (f" by head {h}" if by else "") + f" ({first_line(e)})"
        for (h, d), e in errors.items()
    ]
    if cfg.out and lacks_report(Path(cfg.out), cfg.report):
        notes.append(f"report not written (`unseen report {cfg.out}` says why)")
    note = "; ".join(notes)
    return time.perf_counter() - start, None, note or None


def first_line(text: str) -> str:
    """An error's first line, without its closing full stop (it goes inside brackets)."""
    return text.strip().splitlines()[0].rstrip(".") if text.strip() else text


def run_plan(
    runs: Sequence[PlannedRun], jobs: int = 1, log: Callable[[str], None] | None = print
) -> list[RunOutcome]:
    """Run every planned run whose folder holds no finished run; ``jobs`` at a time.

    With ``jobs > 1`` the runs go to a pool of spawned processes, each limited to
    ``cores // jobs`` threads. Ctrl-C (``KeyboardInterrupt``) and SIGTERM stop the sweep
    with :class:`Interrupted` (exit code 130 or 143), which says how to continue it.
    """
    say = log or (lambda _msg: None)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {jobs}).")
    outcomes: dict[int, RunOutcome] = {}
    todo = []
    completing = set()  # finished runs that lack --ood results or their report only
    for i, run in enumerate(runs):
        if not is_finished(run.run_dir) or run.config.overwrite:
            todo.append(i)
        elif problem := run_damage(run.run_dir):  # not run again: its folder may be of use
            outcomes[i] = RunOutcome(run, "damaged", error=problem)
        elif lacks(run):
            todo.append(i)
            completing.add(i)
        else:
            outcomes[i] = RunOutcome(run, "skipped")
    total = len(runs)
    unfinished = len(todo) - len(completing)
    damaged = [o for o in outcomes.values() if o.status == "damaged"]
    say(
        f"{total} runs: {total - unfinished - len(damaged)} already finished, {unfinished} to run"
        + (
            f", {len(completing)} finished to complete (--ood results, or a report)"
            if completing
            else ""
        )
        + (f", {len(damaged)} finished but damaged (left out)" if damaged else "")
    )
    for o in damaged:
        say(f"{o.run.run_dir.name}: DAMAGED, left out: {o.error}")

    def report(i: int, seconds: float, error: str | None, note: str | None = None) -> None:
        run = runs[i]
        done = len(outcomes) + 1
        if error is None:
            outcomes[i] = RunOutcome(run, "finished", seconds)
            what = "completed" if i in completing else "finished"
            say(
                f"[{done}/{total}] {run.run_dir.name}: {what} in {seconds:.1f} s"
                + (f", but {note}" if note else "")
            )
        else:
            outcomes[i] = RunOutcome(run, "failed", seconds, error)
            say(f"[{done}/{total}] {run.run_dir.name}: FAILED: {error}")

    from .checkpoint import sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM between runs too, serial or --jobs
            _run_todo(runs, todo, jobs, report)
    except Interrupted as exc:
        raise Interrupted(f"{exc}; {SWEEP_AGAIN}", exc.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside training, or in --jobs' main
        code = getattr(exc, "exit_code", 130)  # SigtermStop: 143
        raise Interrupted(f"{str(exc) or 'interrupted'}; {SWEEP_AGAIN}", code) from None
    return [outcomes[i] for i in range(total)]


def lacks(run: PlannedRun) -> list[str]:
    """What the finished ``run`` lacks, which ``experiment.complete_finished_run`` adds: a
    current result of each ``--ood`` dataset, and the report (a run made with one, stopped
    while writing it)."""
    cfg = run.config
    missing = list(
        dict.fromkeys(f"far-OOD {d}" for _, d in missing_ood(run.run_dir, cfg.head, cfg.ood))
    )
    if lacks_report(run.run_dir, cfg.report):
        missing.append("its report")
    return missing


def lacks_report(run_dir: Path, report: bool = True) -> bool:
    """Whether the finished run in ``run_dir``, made with a report (not ``--no-report``), has
    none, where ``report`` asks for one."""
    if not report or (run_dir / "report.html").is_file():
        return False
    try:
        return read_json(run_dir / "config.json").get("report", True) is not False
    except (UnseenError, AttributeError):  # no config.json to say: not this sweep's to mend
        return False


def _run_todo(
    runs: Sequence[PlannedRun],
    todo: Sequence[int],
    jobs: int,
    report: Callable[..., None],
) -> None:
    if jobs == 1 or len(todo) <= 1:
        for i in todo:
            report(i, *_run_one(runs[i].config))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        from .threads import available_cores

        threads = max(1, available_cores() // jobs)
        builders = _registered_builders({runs[i].config.model for i in todo})
        pool = ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), builders),
        )
        processes = []
        try:
            futures = {pool.submit(_run_one, runs[i].config, threads): i for i in todo}
            processes = list(getattr(pool, "_processes", {}).values())
            reported: set[int] = set()
            broken = False
            for fut in as_completed(futures):
                if isinstance(fut.exception(), BrokenProcessPool):
                    broken = True  # a worker was killed (out of memory, kill -9)
                    break
                reported.add(futures[fut])
                report(futures[fut], *fut.result())
            if broken:
                # the pool stops the other workers; once they are gone, each run not
                # reported is what its folder says: finished, started, or never begun
                _stop_workers(pool, processes)
                for i in todo:
                    if i not in reported:
                        if is_finished(runs[i].run_dir):  # what it got of --ood, report
                            lost = lacks(runs[i])
                            note = f"{', '.join(lost)} not made ({WORKER_DIED})" if lost else None
                            report(i, 0.0, None, note)
                        else:
                            started = (runs[i].run_dir / "config.json").exists()
                            report(i, 0.0, WORKER_DIED if started else NOT_RUN)
        except BaseException:
            # Ctrl-C, SIGTERM, or a run stopped by one: every worker checkpoints its run
            # and takes no further one; wait for them, so none outlives the sweep
            _stop_workers(pool, processes)
            raise
        pool.shutdown()


#: how long a stopping sweep waits for its workers' runs to stop (training stops at its next
#: step; evaluation and the report of a run in progress finish first) before killing them
WORKER_GRACE_SECONDS = 300.0


def _stop_workers(pool: Any, processes: Sequence[Any]) -> None:
    """SIGTERM every live worker (each checkpoints its run and exits, see :func:`_watch`),
    wait up to :data:`WORKER_GRACE_SECONDS`, kill those still there, release the pool.
    ``processes`` are the workers seen earlier (a broken pool forgets its own)."""
    current = list(getattr(pool, "_processes", {}).values())  # private, but the only handle
    processes = list({id(p): p for p in [*processes, *current]}.values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + WORKER_GRACE_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


#: the error of runs a sweep lost with a killed ``--jobs`` worker, and of those it then
#: did not start
WORKER_DIED = (
    "a worker process died (killed from outside, or out of memory?) before this run was "
    "reported; run the same command again to retry it"
)
NOT_RUN = "not run: the sweep stopped when a worker process died; run the same command again"


# ----------------------------------------------------------------------------- aggregation


def load_records(runs: Sequence[PlannedRun]) -> list[dict]:
    """One record per finished run and head: the run's tags, head, ``metrics.json``,
    :func:`resolved_settings` and, by dataset, the far-OOD results of the head as the run
    stands (``--ood``, ``unseen ood``; stale ones left out)."""
    records = []
    for run in runs:
        if not is_finished(run.run_dir):
            continue
        metrics = read_json(run.run_dir / "metrics.json")
        config_file = run.run_dir / "config.json"
        config = read_json(config_file) if config_file.is_file() else {}
        per_head = metrics["heads"] if "heads" in metrics else {run.config.head[0]: metrics}
        folders = head_folders(run.run_dir, list(per_head))
        for head, m in per_head.items():
            records.append(
                {"label": run.label, "dir": str(run.run_dir), "tags": run.tags, "head": head,
                 "metrics": m, "settings": resolved_settings(config, m),
                 "ood": current_results(folders[head])}
            )  # fmt: skip
    return records


def _condition_text(cond: Any, protocol: str) -> str:
    from .rare import format_fraction

    if protocol == "rare" and isinstance(cond, (int, float)):
        return format_fraction(cond)
    return str(cond)


def _score_names(records: Sequence[dict]) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r["metrics"].get("scores", {})))
    return list(names)


def _score_stats(records: Sequence[dict], names: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in names:
        per_run = [r["metrics"].get("scores", {}).get(name, {}) for r in records]
        # each run's threshold is on its own network's scale: a mean of them means nothing
        keys = dict.fromkeys(
            k
            for m in per_run
            for k, v in m.items()
            if (isinstance(v, (int, float)) or v is None) and k != "threshold"
        )
        out[name] = {k: mean_std([m.get(k) for m in per_run]) for k in keys}
    return out


def _over_conditions(records: Sequence[dict], conditions: Sequence[dict], names: Sequence[str]):
    """Mean and sample std over the conditions' means (one value per split or held-out
    class, its seeds averaged first): the figure of papers that report one number per
    split. The overall statistics instead treat every run (split x seed) as one value."""
    per_condition = [
        _score_stats([r for r in records if r["tags"].get("condition") == c["condition"]], names)
        for c in conditions
    ]
    return {
        "conditions": len(conditions),
        "closed_set_accuracy": mean_std([c["closed_set_accuracy"]["mean"] for c in conditions]),
        "scores": {
            n: {
                k: mean_std([s[n][k]["mean"] for s in per_condition if k in s[n]])
                for k in dict.fromkeys(k for s in per_condition for k in s[n])
            }
            for n in names
        },
    }


def _variant(record: dict) -> tuple[str, str]:
    return record["head"], record["tags"].get("balance", "none")


def aggregate(records: Sequence[dict], protocol: str = "", ood: Sequence[str] = ()) -> dict:
    """Means and standard deviations over runs, per variant (head x balance mode).

    Each variant holds the overall statistics (closed-set accuracy and every per-score
    metric) and one row per protocol condition (held-out class, split or fraction) with its
    closed-set accuracy, per-score AUROC, the known class absorbing most unseen images and,
    for rare-class runs, the rare class's training images, recall, precision and AUROC
    against the other known classes. ``far_ood`` averages the runs' far-OOD results per
    dataset; a dataset of ``ood`` (``--ood``, as given) that no run scored gets a coverage
    warning.
    """
    names = _score_names(records)
    variants = []
    warnings: list[str] = []  # runs of different resolved settings averaged together
    coverage: list[str] = []  # scores that some runs lack
    seen: list[str] = []  # conditions whose held-out classes the pretrained weights may know
    keys = list(dict.fromkeys(_variant(r) for r in records))
    for key in keys:
        mine = [r for r in records if _variant(r) == key]
        where = f"{key[0]} / {key[1]}: " if len(keys) > 1 else ""
        conditions = []
        for cond in dict.fromkeys(r["tags"].get("condition") for r in mine):
            rows = [r for r in mine if r["tags"].get("condition") == cond]
            row = {
                "condition": cond,
                "runs": len(rows),
                "closed_set_accuracy": mean_std(
                    [r["metrics"].get("closed_set_accuracy") for r in rows]
                ),
                "auroc": {
                    n: mean_std(
                        [r["metrics"].get("scores", {}).get(n, {}).get("auroc") for r in rows]
                    )
                    for n in names
                },
                "absorbed_by": absorbed_by(
                    r["metrics"].get("unseen_predicted_as", {}) for r in rows
                ),
            }
            rare = rare_statistics([r["metrics"] for r in rows], names)
            if rare is not None:
                row["rare"] = rare
            if protocol == "rare":  # fractions are different tasks: far-OOD per fraction too
                row["far_ood"] = far_ood_stats([r.get("ood", {}) for r in rows])
            if leaked := [r for r in rows if r["metrics"].get("pretrained_warning")]:
                # the weights may know the held-out classes: averaged in, and said loudly
                row["seen_in_pretraining"] = len(leaked)
                seen.append(
                    f"{where}condition {_condition_text(cond, protocol)!r} ({len(leaked)} of "
                    f"{len(rows)} runs): {leaked[0]['metrics']['pretrained_warning']}"
                )
            if mixed := mixed_settings(rows):
                row["mixed_settings"] = mixed
                warnings.append(
                    f"{where}condition {_condition_text(cond, protocol)!r} averages runs with "
                    f"different resolved settings: {describe_mixed(mixed)}"
                )
            conditions.append(row)
        variant = {
            "head": key[0],
            "balance": key[1],
            "runs": len(mine),
            "closed_set_accuracy": mean_std(
                [r["metrics"].get("closed_set_accuracy") for r in mine]
            ),
            "scores": _score_stats(mine, names),
            "conditions": conditions,
        }
        if protocol != "rare" and len(conditions) > 1:
            variant["over_conditions"] = _over_conditions(mine, conditions, names)
        variant["far_ood"] = far_ood_stats([r.get("ood", {}) for r in mine])
        for dataset in dict.fromkeys(absolute_dataset(d) for d in ood):
            if dataset not in variant["far_ood"]:
                first = Path(mine[0]["dir"])  # its head's folder in a run with several
                first = first / key[0] if (first / key[0] / "model.pt").is_file() else first
                coverage.append(
                    f"{where}far-OOD {dataset} was scored on none of the {len(mine)} runs; "
                    f"`unseen ood {first} --dataset {dataset}` says why"
                )
        for dataset, far in variant["far_ood"].items():
            if far["runs"] < len(mine):
                coverage.append(
                    f"{where}far-OOD {dataset} was scored on {far['runs']} of the {len(mine)} "
                    f"runs; the same `unseen sweep` command with --ood {dataset} scores the rest"
                )
            if len(far["num_images"]) > 1:
                coverage.append(
                    f"{where}far-OOD {dataset} averages runs that scored different numbers of "
                    f"its images ({', '.join(map(str, far['num_images']))}: --test-subset, or "
                    "`unseen ood --limit`)"
                )
        if mixed := mixed_settings(mine):
            variant["mixed_settings"] = mixed
            if not any("mixed_settings" in c for c in conditions):  # else said per condition
                warnings.append(
                    f"{where}the overall statistics average conditions run with different "
                    f"resolved settings: {describe_mixed(mixed)}"
                )
        # the scores any run of this head has (another balance mode's runs count too)
        same_head = [r for r in records if _variant(r)[0] == key[0]]
        expected = [n for n in names if any(n in r["metrics"].get("scores", {}) for r in same_head)]
        counts = {n: sum(n in r["metrics"].get("scores", {}) for r in mine) for n in expected}
        if partial := [n for n in expected if counts[n] < len(mine)]:
            coverage.append(
                f"{where}"
                + ", ".join(
                    f"{n} was computed on {counts[n]} of the {len(mine)} runs" for n in partial
                )
                + " (runs of an earlier version with fewer scores, or runs rescored with other "
                "--scores): their means are over fewer runs than the other scores'; `unseen "
                "rescore` on the sweep folder with --scores naming them computes them on every "
                "finished run"
            )
        variants.append(variant)
    return {
        "protocol": protocol,
        "statistics": "mean and sample standard deviation (ddof=1) over runs; std is null "
        "with one run; n = runs with a value",
        "score_names": names,
        "variants": variants,
        # runs whose 'auto' settings resolved differently (another machine) averaged together
        "warnings": warnings,
        "score_coverage": coverage,
        "seen_in_pretraining": seen,
        # what reading the data did (resized images, 16-bit images using few levels...), once
        "data_notes": list(
            dict.fromkeys(n for r in records for n in r["metrics"].get("data_notes", []))
        ),
    }


# ----------------------------------------------------------------------------- console


#: what a protocol's conditions are, for the console
_CONDITION_WORD = {"loo": "held-out class", "neal6": "split", "random": "split"}


def _variant_name(v: dict, many_heads: bool, many_balances: bool) -> str:
    parts = ([v["head"]] if many_heads else []) + ([v["balance"]] if many_balances else [])
    return " / ".join(parts)


def format_summary(summary: dict) -> str:
    """Console tables of :func:`aggregate`: overall per score, then per condition."""
    from .console import absorbed_text, mean_std_text, table

    variants = summary["variants"]
    if not variants:
        return "no finished runs to summarise."
    names = summary["score_names"]
    many_heads = len({v["head"] for v in variants}) > 1
    many_bal = len({v["balance"] for v in variants}) > 1
    vcol = ["variant"] if (many_heads or many_bal) else []
    protocol = summary.get("protocol", "")
    lines = []
    planned, finished = summary.get("runs_planned"), summary.get("runs_finished")
    damaged = len(summary.get("runs_damaged", []))  # summaries of earlier versions lack it
    if planned is not None and finished is not None and finished - damaged < planned:
        left_out = f" ({damaged} more finished but damaged: left out)" if damaged else ""
        lines += [
            f"NOTE: {finished - damaged} of the {planned} planned runs have finished{left_out}; "
            "the figures below cover those only.",
            "",
        ]
    if warnings := summary.get("warnings"):
        lines.append(
            "WARNING: runs whose 'auto' settings resolved differently (another machine, or an "
            "earlier version of unseen?) are "
            "averaged together below (marked 'mixed'); pin --device, --precision, --batch-size, "
            "--lr and --epochs, or delete the odd run folders and run the sweep again:"
        )
        lines += [f"  {w}" for w in warnings]
        lines.append("")
    if coverage := summary.get("score_coverage"):
        lines += [f"WARNING: {w}" for w in coverage] + [""]
    if data_notes := summary.get("data_notes"):
        lines += [f"NOTE on the data: {n}" for n in data_notes] + [""]
    if seen := summary.get("seen_in_pretraining"):
        lines.append(
            "WARNING: runs of these conditions carry a pretraining warning: their held-out "
            "classes may not be unseen by the model (marked 'pretraining warning'); the "
            "figures below average them in:"
        )
        lines += [f"  {w}" for w in seen] + [""]
    for v in variants:
        title = _variant_name(v, many_heads, many_bal)
        head = (f"== {title}: " if title else "") + f"{v['runs']} runs"
        if protocol == "rare":  # fractions are different tasks: no figure over all of them
            lines.append(head + " (per fraction below)")
            lines += _rare_far_ood_lines(v, names)
            continue
        lines.append(
            head
            + f", closed-set accuracy {mean_std_text(v['closed_set_accuracy'], runs=v['runs'])}"
        )
        # with seeds, the std over runs mixes seeds and conditions: add the one over conditions
        over = v.get("over_conditions")
        over = over if over and over["conditions"] < v["runs"] else None
        word = _CONDITION_WORD.get(protocol, "condition")
        extra = [f"AUROC over {over['conditions']} {word} means"] if over else []
        lines.append(
            table(
                ["score"] + [label for _, label in TABLE_METRICS] + extra,
                [
                    [n]
                    + [
                        mean_std_text(v["scores"][n].get(k), runs=v["runs"])
                        for k, _ in TABLE_METRICS
                    ]
                    + (
                        [mean_std_text(over["scores"][n].get("auroc"), runs=over["conditions"])]
                        if over
                        else []
                    )
                    for n in names
                    if any(s.get("n") for s in v["scores"][n].values())  # this variant's scores
                ],
            )
        )
        lines.append("")
        for dataset, far in v.get("far_ood", {}).items():  # summaries of earlier versions lack it
            images = " or ".join(f"{k:,}" for k in far["num_images"])
            lines.append(
                f"far-OOD {dataset}: {images} of its test images as unseen, {far['runs']} runs"
            )
            lines.append(
                table(
                    ["score"] + [label for _, label in TABLE_METRICS],
                    [
                        [n] + [mean_std_text(st.get(k), runs=far["runs"]) for k, _ in TABLE_METRICS]
                        for n, st in far["scores"].items()
                    ],
                )
            )
            lines.append("")

    rows = []
    is_rare = protocol == "rare"
    # with --holdout, every fraction has unseen images: show how well each is detected too
    detection = is_rare and any(
        c["condition"] != 0 and c["auroc"].get(n, {}).get("mean") is not None
        for v in variants for c in v["conditions"] for n in names
    )  # fmt: skip
    for v in variants:
        title = _variant_name(v, many_heads, many_bal)
        for c in v["conditions"]:
            cond = _condition_text(c["condition"], protocol)
            if "mixed_settings" in c:
                cond += " (mixed settings!)"
            if c.get("seen_in_pretraining"):
                cond += " (pretraining warning!)"
            row: list[object] = [cond] + ([title] if vcol else [])
            k = c["runs"]
            if is_rare and "rare" in c:
                (r,) = c["rare"].values()  # the protocol's one rare class
                row += [mean_std_text(r["train_images"], 0, k), mean_std_text(r["recall"], runs=k)]
                row += [mean_std_text(r["precision"], runs=k)]
                # summaries of earlier versions lack the next two
                row.append(absorbed_text(r.get("absorbed_by")))
                row.append(mean_std_text(r.get("confidently_mislabelled", {}), runs=k))
                row += [mean_std_text(r["auroc_vs_known"][n], runs=k) for n in names]
                row += [mean_std_text(c["auroc"][n], runs=k) for n in names] if detection else []
                row += [mean_std_text(c["closed_set_accuracy"], runs=k)]
            else:
                row += [mean_std_text(c["closed_set_accuracy"], runs=k)]
                row += [mean_std_text(c["auroc"][n], runs=k) for n in names]
                row.append(absorbed_text(c["absorbed_by"]))
            rows.append((c, row))
    if is_rare:
        rows.sort(key=lambda cr: (cr[0]["condition"], cr[1][1] if vcol else ""))
        header = ["fraction", *vcol, "train imgs", "recall", "precision", "absorbed by",
                  f"wrong >{CONFIDENT}"]  # fmt: skip
        header += [f"AUROC {n}" for n in names]
        header += [f"unseen AUROC {n}" for n in names] if detection else []
        header += ["closed-acc"]
        lines.append("")
        lines.append(
            "rare class per fraction (absorbed by: the other class that took most of its test "
            f"images, summed over runs; wrong >{CONFIDENT}: share of its test images labelled as "
            f"another class with confidence above {CONFIDENT}; AUROC: other known classes vs "
            "the rare class, higher = the scores single it out; at fraction 0 it is unseen"
            + ("; unseen AUROC: known vs all unseen test images, the held-out classes "
               "and, at fraction 0, the rare class)" if detection else ")")
        )  # fmt: skip
    else:
        if protocol == "loo":
            # hardest to detect first: lowest mean AUROC of the first score
            def key(cr):
                m = cr[0]["auroc"].get(names[0], {}).get("mean") if names else None
                return math.inf if m is None else m

            rows.sort(key=key)
            first = "held out"
            lines.append(
                f"per held-out class, hardest to detect first (by AUROC of {names[0] if names else '-'})"
            )
        else:
            first = "split" if protocol in {"neal6", "random"} else "condition"
            lines.append(f"per {first}")
        header = [first, *vcol, "closed-acc"] + [f"AUROC {n}" for n in names] + ["absorbed by"]
    lines.append(table(header, [row for _, row in rows]))
    if is_rare:
        lines += _same_count_notes(variants, many_heads, many_bal)
    lines += ["", "mean ± sample standard deviation (ddof=1) over runs; (n=N): N runs had a value"]
    return "\n".join(lines)


def _rare_far_ood_lines(variant: dict, names: Sequence[str]) -> list[str]:
    """A rare sweep's far-OOD results: per dataset, one row per fraction with each score's
    AUROC (a fraction's runs train other models than the next fraction's)."""
    from .console import mean_std_text, table

    conditions = sorted(variant["conditions"], key=lambda c: c["condition"])
    datasets = dict.fromkeys(d for c in conditions for d in c.get("far_ood", {}))
    lines = []
    for dataset in datasets:
        per = [(c, c.get("far_ood", {}).get(dataset)) for c in conditions]
        scored = [n for n in names if any(f and n in f["scores"] for _, f in per)]
        images = sorted({k for _, f in per if f for k in f["num_images"]})
        lines.append(
            f"far-OOD {dataset} per fraction: "
            f"{' or '.join(f'{k:,}' for k in images)} of its test images as unseen"
        )
        rows = []
        for c, f in per:
            k = f["runs"] if f else 0
            row: list[object] = [_condition_text(c["condition"], "rare"), f"{k} of {c['runs']}"]
            row += [
                mean_std_text(f["scores"].get(n, {}).get("auroc") if f else None, runs=k)
                for n in scored
            ]
            rows.append(row)
        header = ["fraction", "runs"] + [f"AUROC {n}" for n in scored]
        lines += [table(header, rows), ""]
    return lines


def _same_count_notes(variants: Sequence[dict], many_heads: bool, many_bal: bool) -> list[str]:
    """A note per group of rare fractions that kept the same training images in every run
    (a small class rounds 0.001 and 0.01 to one image): with one seed, the kept images of a
    smaller fraction are a subset of a larger one's, so those runs trained on the same data."""
    notes = []
    for v in variants:
        by_count: dict[float, list] = {}
        for c in v["conditions"]:
            for r in c.get("rare", {}).values():
                images = r["train_images"]
                if images.get("mean") is not None and not images.get("std"):
                    by_count.setdefault(images["mean"], []).append(c["condition"])
        title = _variant_name(v, many_heads, many_bal)
        for count, fractions in by_count.items():
            if len(fractions) > 1 and count > 0:
                notes.append(
                    f"note: {'' if not title else title + ': '}fractions "
                    f"{', '.join(f'{f:g}' for f in fractions)} kept the same {count:g} training "
                    "image(s) of the rare class: their runs trained on the same data"
                )
    return [""] + notes if notes else []


# ----------------------------------------------------------------------------- whole sweep


@dataclass
class SweepResult:
    out_dir: Path
    runs: list[PlannedRun]
    outcomes: list[RunOutcome]
    summary: dict

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def damaged(self) -> list[RunOutcome]:
        """Finished runs left out of the summary because their files cannot be read."""
        return [o for o in self.outcomes if o.status == "damaged"]


#: how to run a damaged run of a sweep again
DAMAGED_HINT = "delete a run's folder and run the same `unseen sweep` command again to run it again"


def damaged_lines(result: SweepResult) -> list[str]:
    """What ``unseen sweep`` and ``unseen rescore`` print at the end about the damaged runs
    they left out: a line each, naming its folder and what is wrong."""
    if not result.damaged:
        return []
    n = len(result.damaged)
    return [
        f"{n} finished {'run is' if n == 1 else 'runs are'} damaged and left out ({DAMAGED_HINT}):"
    ] + [f"  {o.run.run_dir}: {o.error}" for o in result.damaged]


def write_plan(
    out_dir: Path, base: RunConfig, opts: SweepOptions, runs: Sequence[PlannedRun]
) -> None:
    write_json(
        out_dir / "sweep.json",
        {
            "protocol": opts.protocol,
            "seeds": opts.seeds,
            "splits": opts.splits,
            "fractions": opts.fractions,
            "compare_balance": opts.balances,
            "base_config": base.to_dict(),
            "runs": [
                {"label": r.label, "hash": r.hash, "dir": str(r.run_dir), "tags": r.tags}
                for r in runs
            ],
        },
    )


def write_report(
    out_dir: Path, run_dirs: Sequence[Path], say: Callable[[str], None]
) -> Path | None:
    """The comparison report of ``unseen report`` over the sweep's finished runs. A failure
    costs the report, never the sweep: it is said, and ``unseen report`` can retry."""
    from .report import write_comparison

    if not run_dirs:
        return None
    try:
        return write_comparison(run_dirs, out_dir / "report")
    except Exception as exc:  # an optional extra: the sweep's own results are written already
        say(f"comparison report skipped: {type(exc).__name__}: {exc}")
        return None


def plan_sweep(
    base: RunConfig, opts: SweepOptions, out_dir: str | Path, data: ImageData | None = None
) -> list[PlannedRun]:
    """The runs of the sweep in ``out_dir``: :func:`plan` over the classes of ``base``'s
    dataset, or of ``data`` when given (``unseen rescore`` loads the sweep's data from where
    its runs found it, while the runs' folders stay those of ``base`` as given)."""
    from .data import load_dataset
    from .splits import resolve_auto

    if data is None:
        data = load_dataset(base.dataset, base.data_root, base.download, bit_depth=base.bit_depth)
    holdout, known = resolve_auto(data.classes, base.holdout, base.known)  # hashed as not given
    resolved = base.replace(out=None, holdout=holdout, known=known)
    return plan(resolved, data.classes, opts, out_dir, data.untrained)


def run_sweep(
    base: RunConfig,
    opts: SweepOptions,
    out_dir: str | Path | None = None,
    *,
    dry_run: bool = False,
    summary_only: bool = False,
    report: bool = True,
    log: Callable[[str], None] | None = print,
) -> SweepResult:
    """Expand, run what is not finished, aggregate: ``summary.json`` and ``summary.txt`` in ``out_dir``.

    ``dry_run`` only lists the run folders; ``summary_only`` aggregates the finished runs
    without training the others. ``out_dir`` must be new, empty, or this sweep's folder
    (:func:`sweep_record`, :func:`check_same_sweep`): another sweep's, a run's or a folder
    of other files is refused before anything is written.
    """
    for value, kind, name in ((base, RunConfig, "base"), (opts, SweepOptions, "opts")):
        if not isinstance(value, kind):
            raise TypeError(
                f"run_sweep's {name} must be a {kind.__name__}, not a {type(value).__name__}"
            )
    say = log or (lambda _msg: None)
    # sweep.json and the summary name them as the runs' config.json do: absolute paths
    base = base.replace(ood=tuple(absolute_dataset(d) for d in base.ood))
    parse_protocol(opts.protocol)  # an unknown protocol fails before any work
    check_options(opts)  # before the dataset is loaded or anything is written
    locate_ood(base.ood, base.data_root, base.download)  # --ood's files, as each run would
    if dry_run and summary_only:
        raise ConfigError("give --dry-run or --summary-only, not both.")
    out = Path(out_dir) if out_dir else default_sweep_dir(base.dataset, opts.protocol)
    record = sweep_record(out)  # a run folder, the user's own files, a damaged sweep.json
    runs = plan_sweep(base, opts, out)
    if record is not None:  # another sweep's folder: its record must not be replaced
        check_same_sweep(out, record, base, opts, runs)
    if dry_run:
        for r in runs:
            say(f"{r.run_dir}  {dry_run_state(r, base.overwrite)}  ({_split_text(r)})")
        return SweepResult(out, runs, [], {})
    if summary_only and record is None and not any(is_finished(r.run_dir) for r in runs):
        # nothing to aggregate: a mistyped --out, or other options than the sweep's
        raise ConfigError(
            f"--summary-only: {out} holds no sweep (no sweep.json) and no finished run of this "
            "one to summarise."
        )
    if not summary_only or record is None:  # aggregating alone leaves a sweep's record as it
        write_plan(out, base, opts, runs)  # is (a lost one is written again from the runs)
    say(f"sweep {opts.protocol} on {base.dataset} in {out}")
    for line in unused_options_notes(unused_score_options(base), "sweep"):
        say(line)
    if summary_only:  # aggregate what has finished, train nothing
        outcomes = [RunOutcome(r, "skipped") for r in runs]
    else:
        outcomes = run_plan(runs, opts.jobs, say)
    return summarize(out, base, opts, runs, outcomes, report=report, log=log)


def _split_text(run: PlannedRun) -> str:
    """The classes a planned run holds out (as its split resolved them: by name, with the
    classes only the test set has), its rare classes and its seed, for --dry-run."""
    cfg = run.config
    held = "?" if run.held_out is None else printable_names(run.held_out) or "none"
    parts = [f"held out: {held}"]
    if cfg.rare:
        parts.append(f"rare: {', '.join(cfg.rare)}")
    return "; ".join([*parts, f"seed {cfg.seed}"])


def dry_run_state(run: PlannedRun, overwrite: bool) -> str:
    """What the sweep will do with a run's folder: nothing (finished), complete it (finished,
    but it :func:`lacks` ``--ood`` results or its report), resume it from the checkpoint an
    interrupted run left (in its folder, or a head's), or run it."""
    from .checkpoint import CHECKPOINT_FILE

    run_dir = run.run_dir
    if is_finished(run_dir):
        if overwrite:
            return "to run again (--overwrite)"
        if problem := run_damage(run_dir):
            return f"damaged, to leave out: {problem}"
        todo = lacks(run)
        return f"finished, to complete: {', '.join(todo)}" if todo else "finished"
    stem, suffix = Path(CHECKPOINT_FILE).stem, Path(CHECKPOINT_FILE).suffix
    # checkpoint.pt, or checkpoint-K.pt for each network of an ovr-separate head
    kept = (f for d in (run_dir, *run_dir.glob("*/")) for f in d.glob(f"{stem}*{suffix}"))
    if any(f.is_file() for f in kept):
        return (
            "to run (its checkpoint ignored: --overwrite)"
            if overwrite
            else "to resume (from its checkpoint)"
        )
    return "to run"


def summarize(
    out: Path,
    base: RunConfig,
    opts: SweepOptions,
    runs: Sequence[PlannedRun],
    outcomes: Sequence[RunOutcome],
    *,
    report: bool = True,
    log: Callable[[str], None] | None = print,
) -> SweepResult:
    """Aggregate the finished ``runs`` of the sweep in ``out`` (planned from ``base`` and
    ``opts``): ``summary.json``, ``summary.txt`` and, with ``report``, the comparison report.
    A finished run that :func:`unseen.runfolder.run_damage` finds damaged (or whose outcome,
    one per run in ``outcomes``, says "damaged" already) is left out: its outcome becomes
    "damaged", and ``runs_damaged`` lists it."""
    say = log or (lambda _msg: None)
    kind, _ = parse_protocol(opts.protocol)
    finished = [is_finished(r.run_dir) for r in runs]
    # a finished run whose files cannot be read is left out and said, never the end of it
    # (or one that the caller found damaged: a rescore needs model.pt too)
    damage = [
        (run_damage(r.run_dir) if done else None) or (o.error if o.status == "damaged" else None)
        for r, done, o in zip(runs, finished, outcomes, strict=True)
    ]
    outcomes = [
        RunOutcome(r, "damaged", error=problem) if problem else o
        for r, o, problem in zip(runs, outcomes, damage, strict=True)
    ]
    usable = [
        r for r, done, problem in zip(runs, finished, damage, strict=True) if done and not problem
    ]
    summary = aggregate(load_records(usable), kind, base.ood)
    summary.update(
        {
            "protocol_arg": opts.protocol,
            "dataset": base.dataset,
            "runs_planned": len(runs),
            "runs_finished": sum(finished),
            "runs_failed": [
                {"dir": str(o.run.run_dir), "error": o.error} for o in outcomes if o.status == "failed"
            ],
            "runs_damaged": [
                {"dir": str(o.run.run_dir), "error": o.error} for o in outcomes if o.status == "damaged"
            ],
            "runs": [
                {"label": r.label, "hash": r.hash, "dir": str(r.run_dir), "tags": r.tags,
                 "finished": done, **({"damaged": problem} if problem else {})}
                for r, done, problem in zip(runs, finished, damage, strict=True)
            ],
        }
    )  # fmt: skip
    write_json(out / "summary.json", summary)
    text = format_summary(summary)
    (out / "summary.txt").write_text(text + "\n")
    if report:
        path = write_report(out, [r.run_dir for r in usable], say)
        if path is not None:
            summary["report"] = str(path)
            write_json(out / "summary.json", summary)
    return SweepResult(out, list(runs), list(outcomes), summary)
