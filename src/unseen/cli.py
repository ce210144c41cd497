"""Command line: ``unseen run | rescore | datasets | scores | report | sweep | predict | ood``;
a thin layer over the library.

Every ``unseen run`` flag is generated from a field of :class:`unseen.config.RunConfig`.
Mistakes a user can make end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from .config import (
    FIELDS,
    RESULT_NEUTRAL_KEYS,
    SCORE_OPTIONS,
    RunConfig,
    flag_name,
    is_auto,
    parse_count_or_all,
    parse_value,
    resolve_config,
    validate,
)
from .errors import Interrupted, UnseenError

T = TypeVar("T")

if TYPE_CHECKING:
    from .experiment import RunResult

EXIT_USAGE = 2
#: the default an option of ``unseen rescore`` shows: the rescored run's own value
RUNS_VALUE = "the run's"


def one_line(message: object) -> str:
    """``message`` on one line: newlines and other control characters (which may come from
    the user's own input) are shown escaped, as in ``'\\n'``."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2, and an
    option given twice is refused (:class:`StoreOnce`, every plain option's action)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.register("action", None, StoreOnce)
        self.register("action", "store", StoreOnce)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def nonempty_path(text: str) -> str:
    """argparse type of a path: an empty string (an unset shell variable) is refused, not
    read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty string is not a path")
    return text


class StoreOnce(argparse.Action):
    """Store a flag's value, refusing a second one: argparse would keep only the last, so
    ``--holdout 3 --holdout 4`` would hold out 4 alone and ``--scores vim --scores knn``
    compute knn alone. ``several``: the option takes a comma-separated list."""

    def __init__(self, *args: object, several: bool = False, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.several = several

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        given = vars(namespace).setdefault("_given", set())  # (defaults are set beforehand)
        if self.dest in given:
            raise argparse.ArgumentError(
                self,
                "given twice; give several values once, comma-separated"
                if self.several
                else "given twice; give it once",
            )
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class OptionError(UnseenError):
    """A flag's value refused while the command line is parsed. Not a ``ValueError``, unlike
    :class:`unseen.errors.ConfigError`: argparse rewords a ``ValueError`` raised by a type
    function into "invalid ... value", and the sentence saying why would be lost."""


def option_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` whose :class:`UnseenError` reaches the user as it was written."""

    @functools.wraps(parse)
    def checked(text: str) -> T:
        try:
            return parse(text)
        except UnseenError as exc:
            raise OptionError(str(exc)) from None

    return checked


def _value_parser(name: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        return parse_value(name, text)

    parse.__name__ = name
    return option_type(parse)


def shown_default(name: str) -> str:
    """A RunConfig field's default as --help shows it: a tuple comma-separated, and None as
    the word that gives it back on the command line: ``auto`` where the option takes it,
    else ``none`` (a path: ``--out auto`` is a folder named auto)."""
    default = FIELDS[name].default
    if isinstance(default, tuple):
        return ",".join(default) or "none"  # an empty list (--ood): given back as none
    if default is not None:
        return str(default)
    parse = FIELDS[name].metadata["parse"]
    if parse is parse_count_or_all:  # no limit: --train-subset all
        return "all"
    try:
        auto = parse("auto")
    except (ValueError, TypeError, UnseenError):
        return "none"
    return "auto" if auto is None or (isinstance(auto, tuple) and is_auto(auto)) else "none"


def add_run_options(
    parser: argparse.ArgumentParser,
    only: Sequence[str] | None = None,
    help_for: Mapping[str, str] | None = None,
) -> None:
    """One flag per RunConfig field, grouped as in the dataclass (and a hidden ``--no-X`` for
    each boolean, to undo a config file's ``X = true``), plus --config and --quiet; with
    ``only``, the flags of those fields, whose default is a run's value (``unseen rescore``),
    and --quiet. ``help_for`` gives a field's flag another help text, default included
    (``argparse.SUPPRESS`` hides it): ``unseen sweep``'s ``--out`` is the sweep's folder."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(RunConfig):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        group = groups.setdefault(
            meta["group"], parser.add_argument_group(f"{meta['group']} options")
        )
        default = f.default
        help_text = (
            f"{meta['help']} [default: {shown_default(f.name) if only is None else RUNS_VALUE}]"
        )
        help_text = (help_for or {}).get(f.name, help_text)
        if help_text != argparse.SUPPRESS:
            help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if isinstance(default, bool):
            group.add_argument(
                flag_name(f.name),
                dest=f.name,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            group.add_argument(
                "--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const=False,
                default=argparse.SUPPRESS, help=argparse.SUPPRESS,
            )  # fmt: skip
        else:
            metavar = meta["metavar"] or (
                "{" + ",".join(meta["choices"]) + "}" if meta["choices"] else "VALUE"
            )
            group.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=_value_parser(f.name),
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=help_text,
                several=str(f.type).startswith("tuple"),  # a comma-separated list
            )
    if only is None:
        parser.add_argument(
            "--config",
            type=nonempty_path,
            metavar="FILE",
            default=None,
            help="TOML file with the same option names; flags override it",
        )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, log lines or notes: only the results printed once the run is "
        "trained (accuracy, confidence, where the unseen images went, times, the table)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    # checked once the base is known: --resume --out RUN --scores +ovr is checked against
    # the run's heads, not against the default's
    cfg = resolve_config(overrides, config_file=args.config, check=False)
    if cfg.resume and cfg.out:  # resume from the run's own options; flags must agree with them
        from .checkpoint import saved_config

        if (base := saved_config(cfg.out)) is not None:
            return resolve_config(overrides, config_file=args.config, base=base)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from .console import progress_line
    from .experiment import run_experiment

    cfg = config_from_args(args)
    result = run_experiment(cfg, progress=not args.quiet, log=None if args.quiet else progress_line)
    print_result(result)
    return 0


def print_result(result: RunResult, timing: bool = True) -> None:
    """A run's summary: per head, its metrics and score table (heads side by side for
    several), then the time line and the run folder."""
    from .console import heads_summary, run_summary, timing_line

    metrics = result.metrics
    heads = metrics["heads"] if "heads" in metrics else {result.config.head[0]: metrics}
    for head, m in heads.items():
        if len(heads) > 1:
            print(f"\n== head: {head}")
        print(run_summary(m, with_scores=len(heads) == 1))
    if len(heads) > 1:  # one table, heads side by side
        print("\n" + heads_summary(heads))
    print_ood(result)
    if timing and result.seconds:
        print("\n" + timing_line(result.seconds))
    print(f"\nrun folder: {result.run_dir}")


def print_ood(result: RunResult) -> None:
    """``--ood``: what ``unseen ood`` prints, for each dataset (and head), or why it could
    not be scored."""
    from .farood import head_folders, is_current, ood_summary, result_path
    from .runfolder import read_json

    cfg = result.config
    for head, folder in head_folders(result.run_dir, cfg.head).items() if cfg.ood else ():
        where = f" (head {head})" if len(cfg.head) > 1 else ""
        for dataset in cfg.ood:
            print(f"\n== far-OOD{where} ", end="")
            if error := result.ood_errors.get((head, dataset)):
                print(f"{dataset}: not scored: {error}")
            elif is_current(folder, dataset):
                print(ood_summary(read_json(result_path(folder, dataset))))
            else:  # not scored, and no reason kept (a Python caller's result, say)
                print(f"{dataset}: not scored; `unseen ood {folder} --dataset {dataset}` scores it")


def cmd_rescore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .console import counted, notes_once, once, progress_line, warn
    from .rescore import rescore_run, rescore_sweep
    from .sweep import damaged_lines, format_summary

    changes = {k: getattr(args, k) for k in SCORE_OPTIONS if hasattr(args, k)}
    common = dict(
        device=args.device,
        data_root=args.data_root,
        report=args.report,
        progress=not args.quiet,
        log=None if args.quiet else notes_once(progress_line),  # a note once for all runs
        warn=once(warn),  # and a warning once (fp16 on a CPU)
    )
    damaged = False  # a sweep's finished run left out: exit 1 at the end
    for i, folder in enumerate(args.runs):
        if i:
            print()
        try:
            if (Path(folder) / "sweep.json").is_file():  # every finished run, then the summary
                results, sweep = rescore_sweep(folder, changes, dataset=args.dataset, **common)
                print(format_summary(sweep.summary))
                print(f"\nsweep folder: {sweep.out_dir}: {counted(len(results), 'run')} rescored")
                for line in damaged_lines(sweep):
                    print(line)
                damaged = damaged or bool(sweep.damaged)
                continue
            result = rescore_run(folder, changes, dataset=args.dataset, **common)
        except UnseenError as exc:  # name the folder when there are several
            if len(args.runs) > 1 and folder not in str(exc):
                raise type(exc)(f"{folder}: {exc}") from None
            raise
        print_result(result, timing=False)
        print(f"rescored in {result.seconds['total']:.1f} s")
    return 1 if damaged else 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import describe_sources

    for name, description, where in describe_sources(args.data_root):
        print(f"{name:14s} {description}\n{'':14s} {where}")
    return 0


def cmd_scores(args: argparse.Namespace) -> int:
    from .scores import SCORES

    print("higher score = more likely a known class, for every score")
    for name, cls in SCORES.items():
        print(f"{name:14s} {cls.description}")
        if cls.options:
            settings = ", ".join(f"{flag_name(o)} {shown_default(o)}" for o in cls.options)
            print(f"{'':14s} settings: {settings}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_command

    damaged: list[str] = []  # runs of a folder left out: said, and exit 1
    report_command(
        args.runs, out=args.out, tsne=not args.no_tsne, each=args.each, on_damaged=damaged.append
    )
    return 1 if damaged else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(
        prog="unseen",
        description="What does my image classifier do with classes it never saw in training?",
    )
    parser.add_argument("--version", action="version", version=f"unseen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="train with classes held out, evaluate on the full test set, write a run folder",
        description="Train with classes held out, evaluate on the full test set and report what the "
        "naive accuracy hides. Scores follow one convention: higher = more likely a known class.",
    )
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    rs = sub.add_parser(
        "rescore",
        help="fit and apply a finished run's scores again with other score options, "
        "without training",
        description="Rebuild each run's trained network from its model.pt, make its forward "
        "pass again over the same images (checked), fit the scores asked for on known-class "
        "data only and rewrite scores.npz, detectors.pt, metrics.json, config.json and the "
        "report (where the run has one). Only score options change; the network and its "
        "training record stay. "
        "Options not given keep the run's values.",
    )
    rs.add_argument(
        "runs",
        nargs="+",
        type=nonempty_path,
        metavar="RUN",
        help="finished run folder(s), or a sweep folder (its finished runs, then its summary)",
    )
    add_run_options(rs, only=SCORE_OPTIONS)
    rs.add_argument(
        "--device",
        type=_value_parser("device"),
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="where to run the network (any machine can rescore a run; its precision is kept) "
        "[default: auto]",
    )
    rs.add_argument(
        "--dataset",
        type=nonempty_path,
        default=None,
        metavar="SOURCE",
        help="the run's (or sweep's) folder:PATH or npz:PATH source at its new path, if it "
        "moved [default: where the run found it]",
    )
    rs.add_argument(
        "--data-root",
        type=nonempty_path,
        default=None,
        metavar="DIR",
        help="where the run's named dataset (fashion-mnist, ...) is now, if it moved "
        "[default: where the run found it]",
    )
    rs.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rebuild the run's report (--no-report: leave report.html/report.md as they are) "
        "[default: where the run has one]",
    )
    rs.set_defaults(func=cmd_rescore)

    ds = sub.add_parser(
        "datasets", help="list the data sources, where each was found or how to get it"
    )
    ds.add_argument(
        "--data-root",
        type=nonempty_path,
        default=None,
        metavar="DIR",
        help="look in this folder instead of the usual places, as `unseen run --data-root` does",
    )
    ds.set_defaults(func=cmd_datasets)

    sc = sub.add_parser("scores", help="list the rejection scores")
    sc.set_defaults(func=cmd_scores)

    # --- `unseen report`
    rep = sub.add_parser(
        "report",
        help="rebuild a run's report.html/report.md, or compare several runs (mean ± std over seeds)",
        description="Given one finished run folder, rebuild its report.html, report.md and plots/ "
        "from the files in it (no retraining). Given several runs, or a folder of runs, write a "
        "comparison: one row per configuration (runs differing only in seed, output options or "
        "speed switches), mean and standard deviation over its runs of every metric of every "
        "score.",
    )
    rep.add_argument(
        "runs",
        nargs="+",
        type=nonempty_path,
        metavar="RUN",
        help="run folder(s), or folder(s) of runs",
    )
    rep.add_argument(
        "--out",
        type=nonempty_path,
        metavar="DIR",
        default=None,
        help="comparison folder [default: FOLDER/comparison for one folder of runs, "
        "FOLDER/report for a sweep folder, else ./comparison]",
    )
    rep.add_argument(
        "--each", action="store_true", help="also rebuild the report of every compared run"
    )
    rep.add_argument(
        "--no-tsne", action="store_true", help="leave out the t-SNE projection (the slowest plot)"
    )
    rep.set_defaults(func=cmd_report)

    # --- `unseen sweep`
    from .sweep_cli import add_sweep_parser

    add_sweep_parser(sub)

    # --- `unseen predict`
    from .predict_cli import add_predict_parser

    add_predict_parser(sub)

    # --- `unseen ood`
    from .ood_cli import add_ood_parser

    add_ood_parser(sub)
    return parser


def unknown_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str], command: str, extra: list[str]
) -> None:
    """The usage error for ``extra`` arguments: from the subcommand's parser (pointing to
    ``unseen COMMAND --help``) when they follow the command, else from ``unseen``'s. For
    ``rescore``, an option of the trained network says that it needs another run."""
    message = f"unrecognized arguments: {' '.join(extra)}"
    argv = list(argv)
    if command in argv and extra[0] in argv and argv.index(command) > argv.index(extra[0]):
        parser.error(message)  # unseen --bogus run
    # the options that shape the network (not where files go or how fast), and --no-X forms
    trained = [n for n in FIELDS if n not in SCORE_OPTIONS and n not in RESULT_NEUTRAL_KEYS]
    flags = [flag_name(n) for n in trained] + [f"--no-{flag_name(n)[2:]}" for n in trained]
    for arg in extra:
        given = arg.split("=", 1)[0]  # --epochs=3 too, and a prefix as argparse reads it
        matches = [f for f in flags if f == given] or [f for f in flags if f.startswith(given)]
        if command == "rescore" and given.startswith("--") and len(matches) == 1:
            message += f"; a rescore changes only score options, and {matches[0]} needs another run"
            break
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices[command].error(message)


#: the standard streams the process was started without (see :func:`main`)
CLOSED_STREAMS: set[str] = set()


#: what argparse reads as a negative number (a value or a positional, never an option)
#: where the parser does not say (its own pattern, ``_negative_number_matcher``, is private)
_ARGPARSE_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _joinable(token: str, negative: re.Pattern[str]) -> bool:
    """A negative number that argparse would take for an option (``-1e3``, ``-5.``)."""
    if not token.startswith("-") or negative.match(token):
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def join_negative_numbers(
    argv: list[str], negative: re.Pattern[str] = _ARGPARSE_NEGATIVE
) -> list[str]:
    """``--threshold -1.5e2`` as ``--threshold=-1.5e2``: argparse takes a value that starts
    with '-' for an option unless it matches ``negative`` (its pattern of a negative number:
    ``-5`` or ``-0.5`` up to Python 3.13), and negative thresholds (mahalanobis and knn
    scores are all negative) are often written in exponent notation. Only a number argparse
    would refuse is joined to the option before it, so no command line that argparse parsed
    before changes meaning; nothing after ``--`` is touched."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        before = out[-1] if out else ""
        joinable = _joinable(token, negative)
        if before.startswith("--") and len(before) > 2 and "=" not in before and joinable:
            out[-1] = f"{before}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    # started with stdout or stderr closed (`unseen ... >&-`): Python sets them to None, and
    # every print or progress bar would fail; write those lines nowhere instead (`predict`,
    # whose result is stdout, refuses a closed one)
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            CLOSED_STREAMS.add(name)
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    try:
        parser = build_parser()  # imports torch: seconds, in which Ctrl-C must not trace back
        try:
            negative = getattr(parser, "_negative_number_matcher", _ARGPARSE_NEGATIVE)
            argv = join_negative_numbers(sys.argv[1:] if argv is None else list(argv), negative)
            args, extra = parser.parse_known_args(argv)
            if extra:  # named by the subcommand, whose --help lists what it takes
                unknown_arguments(parser, argv, args.command, extra)
        except SystemExit as exc:  # --help, --version, or a usage error already printed
            return int(exc.code or 0)
        return int(args.func(args) or 0)
    except Interrupted as exc:  # Ctrl-C or SIGTERM, checkpoint saved: not an error
        print(f"unseen: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except UnseenError as exc:
        print(f"unseen: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("unseen: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read stdout stopped (`unseen ... | head`): stop quietly
        from .console import silence_stdout

        silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a process ended by a broken pipe
    except OSError as exc:  # the system refused a path given: too long, no permission, disk full
        if exc.filename is None:
            raise
        name = one_line(exc.filename)
        name = name if len(name) <= 80 else name[:77] + "..."
        print(f"unseen: error: {name}: {exc.strerror or exc}.", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
