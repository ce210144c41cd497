"""The ``unseen sweep`` subcommand: argparse wiring and printing (the work is in
:mod:`unseen.sweep`, which a Python user calls as :func:`unseen.sweep.run_sweep`)."""

from __future__ import annotations

import argparse

from .cli import add_run_options, config_from_args, option_type
from .console import progress_line
from .errors import ConfigError, Interrupted
from .sweep import (
    BALANCE_MODES,
    DEFAULT_FRACTIONS,
    DEFAULT_SPLITS,
    SWEEP_AGAIN,
    SweepOptions,
    damaged_lines,
    dry_run_state,
    format_summary,
    parse_balances,
    parse_fractions,
    run_sweep,
)


def add_sweep_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``unseen sweep`` on the subcommand table ``sub``: its own options, then every
    ``unseen run`` option, which applies to every run of the sweep."""
    sw = sub.add_parser(
        "sweep",
        help="run a protocol (leave-one-out, Neal et al. splits, random splits, rare class, "
        "seeds) and aggregate it; resumable",
        description="Expand a protocol into runs, run those not finished yet (re-running the "
        "command resumes an interrupted sweep) and print mean and standard deviation over runs. "
        "Every `unseen run` option applies to every run; --out is the sweep folder "
        "[default: sweeps/<dataset>-<protocol>].",
    )
    g = sw.add_argument_group("sweep options")
    g.add_argument(
        "--protocol",
        required=True,
        metavar="P",
        help="loo (each class held out in turn), neal6 (the five 6-known splits of Neal et al. "
        "2018), random:K (random splits with K known classes), rare:CLASS (CLASS kept at "
        "--fractions of its training images) or single (the run options' split)",
    )
    g.add_argument(
        "--seeds", type=int, default=1, metavar="N",
        help="repeat every run with N seeds: --seed .. --seed+N-1 [default: 1]",
    )  # fmt: skip
    g.add_argument(
        "--splits", type=int, default=None, metavar="N",
        help=f"number of random:K splits [default: {DEFAULT_SPLITS}]",
    )  # fmt: skip
    g.add_argument(
        "--fractions", type=option_type(parse_fractions), default=None, metavar="LIST",
        several=True, help="rare:CLASS fractions of the class's training images "
        f"[default: {','.join(f'{f:g}' for f in DEFAULT_FRACTIONS)}]",
    )  # fmt: skip
    g.add_argument(
        "--compare-balance", type=option_type(parse_balances), default=None, metavar="MODES",
        several=True, help="run every condition once per --balance mode and compare them: comma-separated "
        f"modes from {', '.join(BALANCE_MODES)}, or all [default: only --balance]",
    )  # fmt: skip
    g.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="runs at a time, in separate processes sharing the cores [default: 1]",
    )  # fmt: skip
    g.add_argument(
        "--dry-run", action="store_true", help="list the run folders and their state; train nothing"
    )
    g.add_argument(
        "--summary-only",
        action="store_true",
        help="aggregate the runs finished so far; train nothing",
    )
    add_run_options(sw, help_for=SWEEP_HELP)
    sw.set_defaults(func=cmd_sweep)
    return sw


#: the run options that mean something else for a sweep; --resume is refused (cmd_sweep)
SWEEP_HELP = {
    "out": "the sweep folder: sweep.json, summary.json, summary.txt, report/ and runs/ (a run "
    "folder each); new, empty, or this sweep's own (the same command again continues it) "
    "[default: sweeps/<dataset>-<protocol>]",
    "overwrite": "run every run of the sweep again from scratch, finished ones included "
    "[default: False]",
    "resume": argparse.SUPPRESS,
}


def cmd_sweep(args: argparse.Namespace) -> int:
    """``unseen sweep``: run the protocol, print the tables, exit 1 if a run failed or a
    finished one is damaged (left out of the summary)."""
    if getattr(args, "resume", False):  # given on the command line (a config file's is moot)
        raise ConfigError(
            "a sweep continues where it stopped by itself, so it takes no --resume: run the "
            "same `unseen sweep` command again."
        )
    base = config_from_args(args)
    opts = SweepOptions(
        protocol=args.protocol,
        seeds=args.seeds,
        splits=args.splits,
        fractions=args.fractions,
        balances=args.compare_balance,
        jobs=args.jobs,
    )
    listing = args.dry_run or args.summary_only  # a listing cut short by a pipe exits 141
    say = None if args.quiet else (print if listing else progress_line)
    try:
        result = run_sweep(
            base, opts, base.out, dry_run=args.dry_run, summary_only=args.summary_only, log=say
        )
    except KeyboardInterrupt:  # Ctrl-C while it plans or summarises (runs say it themselves)
        if args.dry_run:
            raise
        raise Interrupted(f"interrupted; {SWEEP_AGAIN}", 130) from None
    if args.dry_run:
        if args.quiet:
            for r in result.runs:
                print(f"{r.run_dir}  {dry_run_state(r, base.overwrite)}")
        return 0
    print()
    print(format_summary(result.summary))
    written = ["summary.json", "summary.txt"]
    written += ["runs/"] if (result.out_dir / "runs").is_dir() else []
    written += ["report/"] if result.summary.get("report") else []
    print(f"\nsweep folder: {result.out_dir} ({', '.join(written)})")
    if result.failed:
        print(f"{len(result.failed)} runs failed (see error.txt in their folders):")
        for o in result.failed:
            print(f"  {o.run.run_dir}: {o.error}")
    for line in damaged_lines(result):
        print(line)
    return 1 if result.failed or result.damaged else 0
