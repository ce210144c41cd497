"""unseen sweep: protocol expansion, config hash, resuming, aggregation, rare classes, balance."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unseen import sweep
from unseen.cli import main
from unseen.config import FIELDS, RunConfig, resolve_config
from unseen.data import load_dataset
from unseen.errors import ConfigError, Interrupted
from unseen.experiment import RunResult
from unseen.rare import rare_keep_count, rare_metrics, resolve_rare
from unseen.runfolder import is_finished, mark_finished, write_json
from unseen.splits import make_split, split_data
from unseen.sweep import SweepOptions, config_hash, expand

DIGITS = tuple(str(i) for i in range(10))
TINY = RunConfig(epochs=1, train_subset=200, scores=("msp",), device="cpu", precision="fp32")


# ----------------------------------------------------------------------------- expansion


def test_loo_expands_to_one_run_per_class_and_seed():
    runs = expand(TINY, DIGITS, SweepOptions("loo", seeds=2))
    assert len(runs) == 20
    assert [r.config.holdout for r in runs[:4]] == [("0",), ("0",), ("1",), ("1",)]
    assert [r.config.seed for r in runs[:4]] == [0, 1, 0, 1]
    assert all(r.config.known is None for r in runs)
    assert {r.tags["condition"] for r in runs} == set(DIGITS)
    # only seed and holdout change: every other field is the base's
    assert runs[5].config == TINY.replace(holdout=("2",), seed=1)


def test_seeds_start_at_the_given_seed():
    runs = expand(TINY.replace(seed=5), DIGITS, SweepOptions("loo", seeds=3))
    assert sorted({r.config.seed for r in runs}) == [5, 6, 7]


def test_seeds_past_the_largest_seed_or_too_many_runs_are_config_errors():
    with pytest.raises(ConfigError, match="goes past the largest seed, 4294967295"):
        expand(TINY.replace(seed=2**32 - 2), DIGITS, SweepOptions("loo", seeds=3))
    last = expand(TINY.replace(seed=2**32 - 2), DIGITS, SweepOptions("single", seeds=2))
    assert [r.config.seed for r in last] == [2**32 - 2, 2**32 - 1]
    with pytest.raises(ConfigError, match=r"would plan 10010 runs \(10 conditions x 1 balance"):
        expand(TINY, DIGITS, SweepOptions("loo", seeds=1001))
    assert len(expand(TINY, DIGITS, SweepOptions("loo", seeds=1000))) == sweep.MAX_RUNS


def test_neal6_uses_the_published_splits():
    runs = expand(TINY, DIGITS, SweepOptions("neal6"))
    assert [r.config.known for r in runs] == [
        ("0", "1", "2", "4", "5", "9"),
        ("0", "3", "5", "7", "8", "9"),
        ("0", "1", "5", "6", "7", "8"),
        ("3", "4", "5", "7", "8", "9"),
        ("0", "1", "2", "3", "7", "8"),
    ]
    assert all(r.config.holdout is None for r in runs)
    with pytest.raises(ConfigError, match="ten-class"):
        expand(TINY, DIGITS[:8], SweepOptions("neal6"))


def test_neal6_uses_class_names_of_the_dataset():
    names = tuple(f"c{i}" for i in range(10))
    runs = expand(TINY, names, SweepOptions("neal6"))
    assert runs[3].config.known == ("c3", "c4", "c5", "c7", "c8", "c9")


def test_random_splits_are_distinct_seeded_and_prefix_stable():
    five = expand(TINY, DIGITS, SweepOptions("random:6"))
    assert len(five) == 5
    known = [r.config.known for r in five]
    assert len(set(known)) == 5
    assert all(len(k) == 6 and list(k) == sorted(k) for k in known)
    # independent of --seed, and the first splits of a longer list are the same
    again = expand(TINY.replace(seed=3), DIGITS, SweepOptions("random:6", splits=7))
    assert [r.config.known for r in again][:5] == known
    with pytest.raises(ConfigError, match="known classes"):
        expand(TINY, DIGITS, SweepOptions("random:10"))
    with pytest.raises(ConfigError, match="different"):
        expand(TINY, DIGITS[:4], SweepOptions("random:3", splits=5))  # only 4 splits exist


def test_protocols_choose_among_classes_with_training_images():
    untrained = (3, 7)  # held out in every run, whatever the protocol
    loo = expand(TINY, DIGITS, SweepOptions("loo"), untrained)
    assert [r.config.holdout for r in loo] == [(c,) for c in "01245689"]
    picks = [r.config.known for r in expand(TINY, DIGITS, SweepOptions("random:4"), untrained)]
    assert len(set(picks)) == 5 and not {"3", "7"} & {c for k in picks for c in k}
    # the 8 classes with images, drawn as random_splits draws from 8
    assert picks[0] == tuple(str("01245689"[i]) for i in sweep.random_splits(8, 4, 1)[0])
    with pytest.raises(ConfigError, match="10 classes, 8 with training images"):
        expand(TINY, DIGITS, SweepOptions("neal6"), untrained)
    with pytest.raises(ConfigError, match="2 to 7 known classes for a dataset of 8 classes with"):
        expand(TINY, DIGITS, SweepOptions("random:8"), untrained)
    with pytest.raises(ConfigError, match="loo needs at least three classes with training images"):
        expand(TINY, DIGITS[:4], SweepOptions("loo"), (0, 1))


def test_rare_expands_fractions_and_balance_modes():
    runs = expand(TINY, DIGITS, SweepOptions("rare:3"))
    assert [r.config.rare for r in runs] == [
        ("3:0",),
        ("3:0.001",),
        ("3:0.01",),
        ("3:0.1",),
        ("3:1",),
    ]
    assert all(r.config.holdout is None and r.config.known is None for r in runs)
    both = expand(
        TINY, DIGITS, SweepOptions("rare:3", fractions=(0.0, 0.5), balances=("none", "sampler"))
    )
    assert [(r.tags["condition"], r.config.balance) for r in both] == [
        (0.0, "none"), (0.0, "sampler"), (0.5, "none"), (0.5, "sampler"),
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="not a class"):
        expand(TINY, DIGITS, SweepOptions("rare:cat"))


def test_protocol_and_option_mistakes_are_config_errors():
    for bad in ("lo", "random", "random:x", "rare:"):
        with pytest.raises(ConfigError):
            expand(TINY, DIGITS, SweepOptions(bad))
    with pytest.raises(ConfigError, match="--splits"):
        expand(TINY, DIGITS, SweepOptions("loo", splits=3))
    with pytest.raises(ConfigError, match="--fractions"):
        expand(TINY, DIGITS, SweepOptions("loo", fractions=(0.5,)))
    with pytest.raises(ConfigError, match="holdout"):
        expand(TINY.replace(holdout=("3",)), DIGITS, SweepOptions("loo"))
    with pytest.raises(ConfigError):
        sweep.parse_fractions("0.5,2")
    assert sweep.parse_balances("all") == ("none", "weighted-loss", "sampler")


def test_rare_fractions_keep_every_digit(tmp_path, capsys):
    from unseen.config import parse_value

    # --rare records the fraction it was given, not a 6-digit rounding of it
    assert parse_value("rare", "3:0.1234567") == ("3:0.1234567",)
    assert parse_value("rare", "3:0.1, 7:1e-7, 8:0") == ("3:0.1", "7:1e-07", "8:0")
    assert resolve_rare(parse_value("rare", "3:0.1234567"), DIGITS) == [(3, 0.1234567)]
    # two fractions equal to six digits are two runs in two folders
    runs = sweep.plan(
        TINY, DIGITS, SweepOptions("rare:3", fractions=(0.1234561, 0.1234564)), tmp_path
    )
    assert [r.config.rare for r in runs] == [("3:0.1234561",), ("3:0.1234564",)]
    assert len({r.run_dir for r in runs}) == 2
    assert len({r.label for r in runs}) == 2
    rc = main(["sweep", "--protocol", "rare:3", "--fractions", "0.1234561,0.1234564", "--epochs",
               "1", "--dry-run", "--out", str(tmp_path / "s")])  # fmt: skip
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "to run" in ln]
    assert len(lines) == len(set(lines)) == 2
    # the same condition twice is refused
    with pytest.raises(ConfigError, match="twice"):
        expand(TINY, DIGITS, SweepOptions("rare:3", fractions=(0.5, 0.5)))
    with pytest.raises(ConfigError, match="twice"):
        expand(TINY, DIGITS, SweepOptions("rare:3", fractions=(0.0, -0.0)))


def test_huge_split_requests_fail_before_drawing():
    hundred = tuple(f"c{i}" for i in range(100))
    # drawing 10**9 splits would not finish in test time: the error must come first
    with pytest.raises(ConfigError, match=r"would plan 1000000000 runs \(1000000000 conditions"):
        expand(TINY, hundred, SweepOptions("random:50", splits=10**9))
    with pytest.raises(ConfigError, match=r"would plan 15000 runs \(5000 conditions x 1 balance"):
        expand(TINY, hundred, SweepOptions("random:50", splits=5000, seeds=3))
    with pytest.raises(ConfigError, match="at most 10000"):
        sweep.random_splits(100, 50, 10**9)
    # every split of a small dataset can still be asked for
    all_of_them = sweep.random_splits(6, 3, math.comb(6, 3))
    assert len(set(all_of_them)) == 20
    assert sweep.random_splits(6, 3, 5) == all_of_them[:5]


def test_split_mistakes_are_refused_when_planning(tmp_path):
    # the rare class held out: every fraction above 0 is impossible
    with pytest.raises(ConfigError, match="held out"):
        sweep.plan(TINY.replace(holdout=("3",)), DIGITS, SweepOptions("rare:3"), tmp_path)
    # fraction 0 of a rare class among two known classes leaves one
    with pytest.raises(ConfigError, match="only one known class"):
        sweep.plan(
            TINY.replace(known=("3", "4")), DIGITS, SweepOptions("rare:3", fractions=(0.0, 0.5)),
            tmp_path,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="only one known class"):
        sweep.plan(TINY.replace(holdout=DIGITS[1:]), DIGITS, SweepOptions("single"), tmp_path)
    assert not tmp_path.joinpath("runs").exists()


def test_split_mistake_in_a_sweep_exits_2_before_any_folder(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sweep", "--protocol", "rare:3", "--holdout", "3", "--fractions", "0.5",
            "--train-subset", "200", "--epochs", "1", "--no-report", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    # named as given (--protocol rare:CLASS), not as --rare, which was not given
    assert "--protocol rare:CLASS class '3' is held out" in err and len(err.splitlines()) == 1
    assert "--rare" not in err
    assert not out.exists()
    assert main([*args, "--dry-run"]) == 2
    assert not out.exists()


@pytest.mark.parametrize("jobs", ["0", "-2"])
@pytest.mark.parametrize("flag", ["--dry-run", "--summary-only", None])
def test_bad_jobs_exit_2_before_anything_is_written(tmp_path, capsys, jobs, flag):
    out = tmp_path / "s"
    args = ["sweep", "--protocol", "loo", "--epochs", "1", "--jobs", jobs, "--out", str(out)]
    assert main(args + ([flag] if flag else [])) == 2
    err = capsys.readouterr().err.strip()
    assert f"--jobs must be at least 1 (got {jobs})" in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(ConfigError, match="--jobs"):
        sweep.plan(TINY, DIGITS, SweepOptions("loo", jobs=int(jobs)), tmp_path)


# ----------------------------------------------------------------------------- hash


def test_config_hash_ignores_out_and_changes_with_settings():
    h = config_hash(TINY)
    assert len(h) == 64
    assert config_hash(TINY.replace(out="/somewhere/else")) == h
    assert config_hash(TINY.replace(epochs=2)) != h
    assert config_hash(TINY.replace(holdout=("3",))) != config_hash(TINY.replace(holdout=("4",)))
    # where and how to run is not part of the configuration
    assert config_hash(TINY.replace(resume=True, overwrite=True, data_root="/data")) == h
    # how a run executes, not what it computes: the same folder in a resumed sweep
    assert (
        config_hash(
            TINY.replace(
                cuda_graphs="off", cudnn_benchmark=True, report=False, checkpoint_every=0.0
            )
        )
        == h
    )
    # a setting given explicitly at its default value is the same configuration
    assert config_hash(TINY.replace(lr=FIELDS["lr"].default)) == h


def test_config_hash_is_stable_across_processes():
    code = (
        "from unseen.config import RunConfig; from unseen.sweep import config_hash; "
        "print(config_hash(RunConfig(epochs=1, train_subset=200, scores=('msp',), "
        "device='cpu', precision='fp32')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == config_hash(TINY)


def test_run_folders_are_named_from_label_and_hash(tmp_path):
    runs = sweep.plan(TINY, DIGITS, SweepOptions("loo"), tmp_path)
    r = runs[3]
    assert r.run_dir == tmp_path / "runs" / f"loo-3-seed0-{config_hash(r.config)[:8]}"
    assert config_hash(r.config) == config_hash(r.config.replace(out=None))


# ----------------------------------------------------------------------------- resuming


def _fake_metrics(cfg: RunConfig, auroc: float = 0.9) -> dict:
    return {
        "closed_set_accuracy": 0.5 + cfg.seed / 10,
        "unseen_predicted_as": {"1": 3, "7": 1},
        "scores": {
            "msp": {"auroc": auroc, "fpr_at_95_tpr": 0.4, "oscr": 0.7, "open_set_accuracy": 0.8}
        },
    }


def _finish_fake_run(cfg: RunConfig, metrics: dict | None = None) -> None:
    """What a finished run leaves in ``cfg.out`` that reading it needs: config.json,
    metrics.json (``metrics``, else :func:`_fake_metrics`), scores.npz and model.pt (empty
    archives), then run.json."""
    out = Path(cfg.out)
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "metrics.json", metrics or _fake_metrics(cfg))
    np.savez(out / "scores.npz")
    torch.save({}, out / "model.pt")
    mark_finished(out, heads=list(cfg.head))


@pytest.fixture
def fake_runs(monkeypatch):
    """Replace training by a fake that writes metrics.json and run.json; record the calls."""
    calls: list[RunConfig] = []

    def fake_run_experiment(cfg, progress=True, log=print):
        calls.append(cfg)
        _finish_fake_run(cfg)
        if cfg.report:  # as a run does (a finished run without it would be completed)
            (Path(cfg.out) / "report.html").write_text("<p>report</p>")
        return RunResult(Path(cfg.out), cfg, {})

    monkeypatch.setattr("unseen.experiment.run_experiment", fake_run_experiment)
    return calls


def test_second_invocation_trains_nothing(tmp_path, fake_runs):
    opts = SweepOptions("random:8", splits=2, seeds=2)
    first = sweep.run_sweep(TINY, opts, tmp_path, report=False, log=None)
    assert len(fake_runs) == 4
    assert [o.status for o in first.outcomes] == ["finished"] * 4
    mtimes = {r.run_dir: (r.run_dir / "run.json").stat().st_mtime_ns for r in first.runs}
    second = sweep.run_sweep(TINY, opts, tmp_path, report=False, log=None)
    assert len(fake_runs) == 4  # nothing ran again
    assert [o.status for o in second.outcomes] == ["skipped"] * 4
    assert {r.run_dir: (r.run_dir / "run.json").stat().st_mtime_ns for r in second.runs} == mtimes
    assert second.summary["runs_finished"] == 4
    # a changed setting is a different run, so another sweep: not in this sweep's folder
    record = (tmp_path / "sweep.json").read_bytes()
    with pytest.raises(ConfigError, match="differs in --lr and does not plan 4 of its 4 runs"):
        sweep.run_sweep(TINY.replace(lr=0.05), opts, tmp_path, report=False, log=None)
    assert len(fake_runs) == 4 and (tmp_path / "sweep.json").read_bytes() == record
    sweep.run_sweep(TINY.replace(lr=0.05), opts, tmp_path / "lr", report=False, log=None)
    assert len(fake_runs) == 8 and len(list((tmp_path / "lr" / "runs").iterdir())) == 4


def test_another_sweep_is_refused_in_a_sweeps_folder(tmp_path, fake_runs, capsys):
    out = tmp_path / "S"
    neal6 = SweepOptions("neal6")
    sweep.run_sweep(TINY, neal6, out, report=False, log=None)
    kept = {
        name: (out / name).read_bytes() for name in ("sweep.json", "summary.json", "summary.txt")
    }
    for extra in (["--summary-only"], ["--dry-run"], []):
        args = ["sweep", "--protocol", "loo", "--dataset", "digits", "--out", str(out), *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"unseen: error: --out {out} holds another sweep (--protocol neal6 on "
        )
        assert "does not plan 5 of its 5 runs; give this sweep another --out" in err
        assert len(err.strip().splitlines()) == 1
        assert {n: (out / n).read_bytes() for n in kept} == kept  # its record as it was
    assert len(fake_runs) == 5 and len(list((out / "runs").iterdir())) == 5
    # other scores only: a rescore of the sweep gives them, without training
    with pytest.raises(ConfigError, match=f"differs in --scores .*`unseen rescore {out}` with "
                       "--scores gives its runs other scores without training them again"):  # fmt: skip
        sweep.run_sweep(TINY.replace(scores=("msp", "knn")), neal6, out, report=False, log=None)
    # fewer seeds would forget runs the record lists: refused too
    sweep.run_sweep(TINY, SweepOptions("neal6", seeds=2), out, report=False, log=None)
    with pytest.raises(ConfigError, match=r"holds this sweep with more runs \(--seeds 2, see "
                       "its sweep.json\\): this command does not plan 5 of its 10 runs; give "
                       "those options again"):  # fmt: skip
        sweep.run_sweep(TINY, neal6, out, summary_only=True, report=False, log=None)
    # the same sweep again, with options that are not hashed or only add runs: as before
    for base, opts in ((TINY.replace(report=False, checkpoint_every=5.0), SweepOptions("neal6", seeds=2, jobs=3)),
                       (TINY, SweepOptions("neal6", seeds=3))):  # fmt: skip
        result = sweep.run_sweep(base, opts, out, report=False, log=None)
        assert result.summary["runs_finished"] == len(result.runs) and not result.failed
    assert len(fake_runs) == 15
    assert json.loads((out / "sweep.json").read_text())["seeds"] == 3


def test_other_fractions_name_the_options_that_plan_both(tmp_path):
    out, only = tmp_path / "S", dict(summary_only=True, report=False, log=None)
    first = SweepOptions("rare:3", fractions=(0.5,))  # its record, as a sweep writes it
    sweep.write_plan(out, TINY, first, sweep.plan_sweep(TINY, first, out))
    # not "this sweep with more runs, give those options again": that would drop 0.1 and 0.2
    with pytest.raises(ConfigError, match=r"holds this sweep with other runs \(--fractions 0.5, "
                       r"see its sweep.json\).*give --fractions 0.1,0.2,0.5 \(its"):  # fmt: skip
        sweep.run_sweep(TINY, SweepOptions("rare:3", fractions=(0.1, 0.2)), out, **only)
    opts = SweepOptions("rare:3", fractions=(0.1, 0.2, 0.5))  # what it says: accepted
    assert len(sweep.run_sweep(TINY, opts, out, **only).runs) == 3


def test_a_sweep_is_not_written_into_a_folder_of_other_files(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")
    for extra in (["--dry-run"], ["--summary-only"]):
        assert main(["sweep", "--protocol", "single", "--out", str(images), *extra]) == 2
        err = capsys.readouterr().err
        assert (
            f"--out {images} is a folder with other files in it (a.png), not a sweep folder" in err
        )
        assert sorted(p.name for p in images.iterdir()) == ["a.png"]
    # a log that `| tee DIR/sweep.log` made before the sweep started, or its --config file
    (images / "a.png").unlink()
    for name in ("sweep.log", "sweep.toml"):
        (images / name).write_text("")
        assert main(["sweep", "--protocol", "single", "--out", str(images), "--dry-run"]) == 0
        (images / name).unlink()
    capsys.readouterr()
    # hidden files, or only what a sweep writes (its record lost), are a sweep's folder
    (images / ".DS_Store").write_bytes(b"")
    (images / "runs").mkdir()
    assert main(["sweep", "--protocol", "single", "--out", str(images), "--dry-run"]) == 0
    # a sweep.json that is not a sweep's record: said, not taken for a sweep
    (images / "sweep.json").write_text("[1]")
    assert main(["sweep", "--protocol", "single", "--out", str(images), "--dry-run"]) == 2
    assert "sweep.json is not a sweep's record" in capsys.readouterr().err


def test_overwrite_runs_finished_runs_again(tmp_path, fake_runs):
    opts = SweepOptions("random:8", splits=2)
    sweep.run_sweep(TINY, opts, tmp_path, report=False, log=None)
    assert all(c.resume and not c.overwrite for c in fake_runs)  # unfinished runs continue
    again = sweep.run_sweep(TINY.replace(overwrite=True), opts, tmp_path, report=False, log=None)
    assert len(fake_runs) == 4
    assert [o.status for o in again.outcomes] == ["finished"] * 2
    assert [r.run_dir for r in again.runs] == [
        r.run_dir for r in sweep.plan(TINY, DIGITS, opts, tmp_path)
    ]


def test_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch):
    done: list[str] = []

    def flaky(cfg, progress=True, log=print):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(cfg.out)
        _finish_fake_run(cfg)
        return RunResult(Path(cfg.out), cfg, {})

    monkeypatch.setattr("unseen.experiment.run_experiment", flaky)
    opts = SweepOptions("random:8", splits=4)
    # (a KeyboardInterrupt that escapes would stop pytest itself: caught, and a failure)
    with pytest.raises((Interrupted, KeyboardInterrupt)) as info:
        sweep.run_sweep(TINY, opts, tmp_path, report=False, log=None)
    assert isinstance(info.value, Interrupted)  # Ctrl-C outside training: said as SIGTERM is
    assert info.value.exit_code == 130
    assert "run the same `unseen sweep` command again to continue it" in str(info.value)
    runs = sweep.plan(TINY, DIGITS, opts, tmp_path)
    assert [is_finished(r.run_dir) for r in runs] == [True, True, False, False]

    partial = sweep.run_sweep(TINY, opts, tmp_path, summary_only=True, report=False, log=None)
    assert partial.summary["runs_finished"] == 2 and partial.summary["variants"][0]["runs"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["runs_planned"] == 4

    again: list[str] = []

    def record(cfg, progress=True, log=print):
        again.append(cfg.out)
        _finish_fake_run(cfg)
        return RunResult(Path(cfg.out), cfg, {})

    monkeypatch.setattr("unseen.experiment.run_experiment", record)
    sweep.run_sweep(TINY, opts, tmp_path, report=False, log=None)
    assert again == [str(r.run_dir) for r in runs[2:]]


def test_ctrl_c_while_a_sweep_plans_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def stopped(*args, **kwargs):  # Ctrl-C while the data loads and the runs are planned
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "plan_sweep", stopped)
    args = ["sweep", "--protocol", "single", "--out", str(tmp_path / "S")]
    assert main(args) == 130
    assert f"interrupted; {sweep.SWEEP_AGAIN}" in capsys.readouterr().err
    assert main([*args, "--dry-run"]) == 130  # a listing: no hint to continue
    assert capsys.readouterr().err.strip() == "unseen: interrupted."


def test_sigterm_between_runs_of_a_serial_sweep_says_how_to_continue(tmp_path, monkeypatch):
    import signal

    def terminated(cfg, progress=True, log=print):  # SIGTERM while a run loads its data
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    monkeypatch.setattr("unseen.experiment.run_experiment", terminated)
    with pytest.raises(Interrupted) as info:
        sweep.run_sweep(TINY, SweepOptions("random:8", splits=2), tmp_path, report=False, log=None)
    assert info.value.exit_code == 143
    assert "stopped by SIGTERM; the sweep stopped" in str(info.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("error.txt"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_interrupted_run_stops_the_sweep(tmp_path, monkeypatch):
    import pickle

    calls: list[str] = []

    def stopped(cfg, progress=True, log=print):
        calls.append(cfg.out)
        raise Interrupted("stopped by SIGTERM in epoch 1", 143)

    monkeypatch.setattr("unseen.experiment.run_experiment", stopped)
    with pytest.raises(Interrupted, match="run the same `unseen sweep` command") as info:
        sweep.run_sweep(TINY, SweepOptions("random:8", splits=3), tmp_path, report=False, log=None)
    assert info.value.exit_code == 143
    assert len(calls) == 1  # the other runs were not started
    # what a --jobs worker raises comes back intact through pickling
    back = pickle.loads(pickle.dumps(sweep.RunInterrupted("stopped", 130)))
    assert isinstance(back, Interrupted) and back.exit_code == 130 and str(back) == "stopped"


def test_a_failed_run_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def sometimes(cfg, progress=True, log=print):
        if cfg.known == expand(TINY, DIGITS, SweepOptions("random:8"))[0].config.known:
            raise ConfigError("boom")
        _finish_fake_run(cfg)
        return RunResult(Path(cfg.out), cfg, {})

    monkeypatch.setattr("unseen.experiment.run_experiment", sometimes)
    result = sweep.run_sweep(
        TINY, SweepOptions("random:8", splits=3), tmp_path, report=False, log=None
    )
    assert [o.status for o in result.outcomes] == ["failed", "finished", "finished"]
    assert result.failed[0].error == "boom"
    assert (result.runs[0].run_dir / "error.txt").is_file()
    assert result.summary["runs_finished"] == 2


#: the command line of TINY's options
TINY_ARGS = ["--epochs", "1", "--train-subset", "200", "--scores", "msp", "--device", "cpu",
             "--precision", "fp32", "--no-report"]  # fmt: skip


def test_damaged_runs_are_named_and_left_out_of_the_summary(tmp_path, fake_runs, capsys):
    out = tmp_path / "S"
    opts = SweepOptions("random:8", splits=4)
    runs = sweep.run_sweep(TINY.replace(report=False), opts, out, report=False, log=None).runs
    (runs[0].run_dir / "metrics.json").write_text("{\n")
    (runs[1].run_dir / "scores.npz").unlink()
    (runs[2].run_dir / "scores.npz").write_bytes(b"PK\x03\x04 cut short")
    args = ["sweep", "--protocol", "random:8", "--splits", "4", *TINY_ARGS, "--out", str(out)]
    # --dry-run says what the sweep will do with them: leave them out
    assert main([*args, "--dry-run"]) == 0
    states = [ln.split("  ")[1] for ln in capsys.readouterr().out.splitlines()]
    assert states[0].startswith("damaged, to leave out: metrics.json is not valid JSON (")
    assert states[1:] == ["damaged, to leave out: scores.npz is missing",
                          "damaged, to leave out: scores.npz is truncated or damaged (not a "
                          "readable archive)", "finished"]  # fmt: skip
    for extra in (["--summary-only"], []):  # the rest summarised; nothing trained again
        assert main([*args, *extra]) == 1
        stdout = capsys.readouterr().out
        assert "3 finished runs are damaged and left out (delete a run's folder" in stdout
        assert f"  {runs[0].run_dir}: metrics.json is not valid JSON (" in stdout
        assert f"  {runs[1].run_dir}: scores.npz is missing\n" in stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["variants"][0]["runs"] == 1 and summary["runs_finished"] == 4
        assert [d["dir"] for d in summary["runs_damaged"]] == [str(r.run_dir) for r in runs[:3]]
        assert "NOTE: 1 of the 4 planned runs have finished (3 more finished but damaged" in stdout
    assert len(fake_runs) == 4
    # --overwrite runs them again
    result = sweep.run_sweep(TINY.replace(overwrite=True), opts, out, report=False, log=None)
    assert not result.damaged and result.summary["variants"][0]["runs"] == 4


# ----------------------------------------------------------------------------- aggregation


def _write_fake_run(folder: Path, metrics: dict) -> None:
    write_json(folder / "metrics.json", metrics)
    mark_finished(folder)


def test_aggregation_matches_hand_computed_means_and_stds(tmp_path):
    base = TINY
    runs = expand(base, DIGITS, SweepOptions("loo", seeds=3))[:6]  # classes 0 and 1, seeds 0-2
    runs = [
        sweep.PlannedRun(r.label, r.config.replace(out=str(tmp_path / r.label)), r.tags)
        for r in runs
    ]
    aurocs = [0.8, 0.9, 1.0, 0.6, 0.7, None]  # a missing value (NaN written as null)
    accs = [0.90, 0.92, 0.94, 0.80, 0.84, 0.88]
    absorbed = [{"7": 5, "1": 2}, {"7": 1, "1": 4}, {"1": 1}, {"4": 3}, {"4": 1, "9": 2}, {"9": 1}]
    for r, a, acc, ab in zip(runs, aurocs, accs, absorbed, strict=True):
        _write_fake_run(
            r.run_dir,
            {"closed_set_accuracy": acc, "unseen_predicted_as": ab,
             "scores": {"msp": {"auroc": a, "fpr_at_95_tpr": 1 - (a or 0), "oscr": 0.5,
                                "threshold": acc}}},
        )  # fmt: skip
    runs.append(
        sweep.PlannedRun("unfinished", TINY.replace(out=str(tmp_path / "nothing")), runs[0].tags)
    )
    summary = sweep.aggregate(sweep.load_records(runs), "loo")
    (v,) = summary["variants"]
    assert v["runs"] == 6
    acc = v["closed_set_accuracy"]
    assert acc["mean"] == pytest.approx(sum(accs) / 6)
    assert acc["std"] == pytest.approx(np.std(accs, ddof=1))
    au = v["scores"]["msp"]["auroc"]
    assert au["n"] == 5
    assert au["mean"] == pytest.approx((0.8 + 0.9 + 1.0 + 0.6 + 0.7) / 5)
    m = 0.8
    assert au["std"] == pytest.approx(
        math.sqrt(sum((x - m) ** 2 for x in [0.8, 0.9, 1.0, 0.6, 0.7]) / 4)
    )
    assert v["scores"]["msp"]["oscr"] == {"mean": 0.5, "std": 0.0, "n": 6}
    assert "threshold" not in v["scores"]["msp"]  # each on its own network's scale
    c0, c1 = v["conditions"]
    assert (c0["condition"], c1["condition"]) == ("0", "1")
    assert c0["auroc"]["msp"]["mean"] == pytest.approx(0.9)
    assert c0["auroc"]["msp"]["std"] == pytest.approx(0.1)
    assert c1["auroc"]["msp"] == {
        "mean": pytest.approx(0.65),
        "std": pytest.approx(math.sqrt(0.005)),
        "n": 2,
    }
    # class 0: "7" took 6 of 13, "1" took 7 of 13 -> "1"
    assert c0["absorbed_by"] == {"class": "1", "share": pytest.approx(7 / 13)}
    assert c1["absorbed_by"] == {"class": "4", "share": pytest.approx(4 / 7)}
    text = sweep.format_summary(summary)
    # hardest first: class 1 (0.65) before class 0 (0.9)
    assert text.index("\n1 ") < text.index("\n0 ")
    assert "0.900 ± 0.100" in text
    # a value missing in some runs says how many went in
    assert "0.800 ± 0.158 (n=5)" in text and "0.650 ± 0.071 (n=2)" in text
    # the conditions' own means (seeds averaged first): the std of papers' per-split figures
    over = v["over_conditions"]
    assert over["conditions"] == 2
    assert over["scores"]["msp"]["auroc"] == {
        "mean": pytest.approx(0.775), "std": pytest.approx(0.25 / math.sqrt(2)), "n": 2
    }  # fmt: skip
    assert over["closed_set_accuracy"]["mean"] == pytest.approx(0.88)
    assert over["closed_set_accuracy"]["std"] == pytest.approx(0.08 / math.sqrt(2))
    assert "AUROC over 2 held-out class means" in text and "0.775 ± 0.177" in text
    # a condition without any value: left out of the conditions' means, and counted
    for r in runs[3:5]:
        _write_fake_run(r.run_dir, {"closed_set_accuracy": 0.8, "scores": {"msp": {"auroc": None}}})
    v = sweep.aggregate(sweep.load_records(runs), "loo")["variants"][0]
    assert v["over_conditions"]["scores"]["msp"]["auroc"] == {"mean": 0.9, "std": None, "n": 1}
    assert "0.900 (n=1)" in sweep.format_summary(sweep.aggregate(sweep.load_records(runs), "loo"))


def _write_run_settings(
    folder: Path, *, device: str, precision: str, batch: int, lr: float, epochs: int = 1
) -> None:
    """metrics.json and config.json as a finished run writes them, with resolved settings."""
    write_json(
        folder / "config.json",
        {**TINY.to_dict(), "device": "auto", "precision": "auto", "batch_size": batch, "lr": lr,
         "epochs": epochs},
    )  # fmt: skip
    _write_fake_run(
        folder,
        {"closed_set_accuracy": 0.9, "scores": {"msp": {"auroc": 0.8}}, "epochs": epochs,
         "device": device, "precision": precision},
    )  # fmt: skip


def test_summary_flags_conditions_whose_runs_resolved_settings_differently(tmp_path):
    runs = expand(
        TINY.replace(device="auto", precision="auto"), DIGITS, SweepOptions("loo", seeds=2)
    )
    runs = [
        sweep.PlannedRun(r.label, r.config.replace(out=str(tmp_path / r.label)), r.tags)
        for r in runs[:4]
    ]  # classes 0 and 1, seeds 0 and 1
    # class 0: both runs on CPUs (thread counts differ, settings do not)
    _write_run_settings(
        runs[0].run_dir, device="cpu (1 thread)", precision="fp32", batch=128, lr=0.1
    )
    _write_run_settings(runs[1].run_dir, device="cpu (8 threads, AMX)", precision="fp32",
                        batch=128, lr=0.1)  # fmt: skip
    # class 1: the second seed resumed on a GPU machine
    _write_run_settings(
        runs[2].run_dir, device="cpu (1 thread)", precision="fp32", batch=128, lr=0.1
    )
    _write_run_settings(runs[3].run_dir, device="cuda (NVIDIA H200)", precision="bf16",
                        batch=512, lr=0.2)  # fmt: skip
    summary = sweep.aggregate(sweep.load_records(runs), "loo")
    (v,) = summary["variants"]
    c0, c1 = v["conditions"]
    assert "mixed_settings" not in c0
    assert c1["mixed_settings"] == {
        "device": ["cpu", "cuda"], "precision": ["fp32", "bf16"], "batch_size": [128, 512],
        "lr": [0.1, 0.2],
    }  # fmt: skip
    assert v["mixed_settings"] == c1["mixed_settings"]
    assert len(summary["warnings"]) == 1 and "'1'" in summary["warnings"][0]
    text = sweep.format_summary(summary)
    assert text.startswith("WARNING")
    assert "device cpu vs cuda" in text and "batch_size 128 vs 512" in text
    row1 = next(ln for ln in text.splitlines() if ln.startswith("1"))
    assert "mixed" in row1
    row0 = next(ln for ln in text.splitlines() if ln.startswith("0"))
    assert "mixed" not in row0
    # consistent runs: no warning at all
    same = sweep.aggregate(sweep.load_records(runs[:2]), "loo")
    assert same["warnings"] == [] and "mixed_settings" not in same["variants"][0]
    assert "WARNING" not in sweep.format_summary(same)
    # each condition consistent, but class 0 on CPUs and class 1 on a GPU: the overall row mixes
    _write_run_settings(runs[2].run_dir, device="cuda (NVIDIA H200)", precision="bf16",
                        batch=512, lr=0.2)  # fmt: skip
    split = sweep.aggregate(sweep.load_records(runs), "loo")
    (v,) = split["variants"]
    assert all("mixed_settings" not in c for c in v["conditions"])
    assert v["mixed_settings"]["batch_size"] == [128, 512]
    assert len(split["warnings"]) == 1 and "overall" in split["warnings"][0]


def test_summary_flags_conditions_whose_pretrained_weights_may_know_the_held_out_class(
    tmp_path,
):
    runs = expand(TINY, DIGITS, SweepOptions("loo", seeds=2))
    runs = [
        sweep.PlannedRun(r.label, r.config.replace(out=str(tmp_path / r.label)), r.tags)
        for r in runs[:4]
    ]  # classes 0 and 1, seeds 0 and 1
    warning = "the pretrained run runs/d trained on digits class 1, which this run holds out"
    for i, run in enumerate(runs):
        write_json(run.run_dir / "config.json", TINY.to_dict())
        _write_fake_run(
            run.run_dir,
            {"closed_set_accuracy": 0.9, "scores": {"msp": {"auroc": 0.8}},
             "pretrained_warning": warning if i == 3 else None},
        )  # fmt: skip
    summary = sweep.aggregate(sweep.load_records(runs), "loo")
    c0, c1 = summary["variants"][0]["conditions"]
    assert "seen_in_pretraining" not in c0 and c1["seen_in_pretraining"] == 1
    assert summary["seen_in_pretraining"] == [f"condition '1' (1 of 2 runs): {warning}"]
    text = sweep.format_summary(summary)
    assert "WARNING: runs of these conditions carry a pretraining warning" in text
    row1 = next(ln for ln in text.splitlines() if ln.startswith("1"))
    row0 = next(ln for ln in text.splitlines() if ln.startswith("0"))
    assert "pretraining warning" in row1 and "pretraining" not in row0
    clean = sweep.aggregate(sweep.load_records(runs[:2]), "loo")
    assert clean["seen_in_pretraining"] == [] and "pretraining" not in sweep.format_summary(clean)


def _rare_record(fraction, seed, rare, auroc=None):
    """A finished run's record as load_records makes it, with ``rare`` entries per class."""
    metrics = {
        "closed_set_accuracy": 0.9,
        "scores": {"msp": {"auroc": auroc}},
        "rare": {cls: {"train_images": n, "test_images": 50, "recall": rec, "precision": 0.8,
                       "auroc_vs_known": {"msp": a}} for cls, (n, rec, a) in rare.items()},
    }  # fmt: skip
    tags = {"condition": fraction, "seed": seed, "balance": "none"}
    return {"label": f"f{fraction}-{seed}", "dir": "-", "tags": tags, "head": "softmax",
            "metrics": metrics, "settings": {}}  # fmt: skip


def test_rare_statistics_are_kept_per_class():
    # --rare "3:0.5,8:0": class 3 trains on 10 images and class 8 on none, in both seeds
    records = [
        _rare_record("single", s, {"3": (10, 0.6, 0.7), "8": (0, None, 0.9)}) for s in (0, 1)
    ]
    (c,) = sweep.aggregate(records, "single")["variants"][0]["conditions"]
    assert set(c["rare"]) == {"3", "8"}
    assert c["rare"]["3"]["train_images"] == {"mean": 10.0, "std": 0.0, "n": 2}
    assert c["rare"]["8"]["train_images"]["mean"] == 0 and c["rare"]["8"]["recall"]["n"] == 0
    assert c["rare"]["8"]["auroc_vs_known"]["msp"]["mean"] == pytest.approx(0.9)


def test_rare_protocol_table_says_where_the_class_went_and_how_confidently():
    records = []
    for seed, went, wrong in ((0, {"5": 30, "3": 15, "8": 5}, 0.5), (1, {"5": 10, "8": 40}, 0.7)):
        r = _rare_record(0.1, seed, {"3": (5, 0.3, 0.6)})
        r["metrics"]["rare"]["3"].update(predicted_as=went, confidently_mislabelled=wrong,
                                         mean_confidence=0.9)  # fmt: skip
        records.append(r)
    old = _rare_record(0.5, 0, {"3": (20, 0.8, 0.7)})  # a run of an earlier version
    (c, c_old) = sweep.aggregate([*records, old], "rare")["variants"][0]["conditions"]
    stats = c["rare"]["3"]
    # of its 100 test images over the two runs, 45 went to 8 and 40 to 5 (15 stayed 3)
    assert stats["absorbed_by"] == {"class": "8", "share": pytest.approx(0.45)}
    assert stats["confidently_mislabelled"]["mean"] == pytest.approx(0.6)
    assert c_old["rare"]["3"]["absorbed_by"] is None
    text = sweep.format_summary(sweep.aggregate([*records, old], "rare"))
    header = next(ln for ln in text.splitlines() if ln.startswith("fraction"))
    assert "absorbed by" in header and "wrong >0.9" in header
    row = next(ln for ln in text.splitlines() if ln.startswith("0.1"))
    assert "8 (45%)" in row and "0.600 ± 0.141" in row


def test_sweep_summary_says_the_notes_on_the_data_once():
    records = [_rare_record(0.1, seed, {"3": (5, 0.3, 0.6)}) for seed in (0, 1)]
    for r in records:
        r["metrics"]["data_notes"] = ["the 40 16-bit images use values up to 4095 of 65535"]
    summary = sweep.aggregate(records, "rare")
    assert summary["data_notes"] == ["the 40 16-bit images use values up to 4095 of 65535"]
    text = sweep.format_summary(summary)
    assert text.count("NOTE on the data: the 40 16-bit images") == 1


def test_rare_protocol_table_shows_detection_auroc_when_classes_are_held_out_too():
    # rare:3 alone: at fraction 0.5 nothing is unseen, so the run has no detection AUROC
    alone = [_rare_record(0.0, 0, {"3": (0, None, 0.8)}, auroc=0.8),
             _rare_record(0.5, 0, {"3": (10, 0.6, 0.6)})]  # fmt: skip
    text = sweep.format_summary(sweep.aggregate(alone, "rare"))
    assert "rare class per fraction" in text and "unseen AUROC" not in text
    # rare:3 --holdout 9: every fraction has unseen images, and their AUROC is shown
    both = [_rare_record(0.0, 0, {"3": (0, None, 0.8)}, auroc=0.85),
            _rare_record(0.5, 0, {"3": (10, 0.6, 0.6)}, auroc=0.93)]  # fmt: skip
    text = sweep.format_summary(sweep.aggregate(both, "rare"))
    header = next(ln for ln in text.splitlines() if ln.startswith("fraction"))
    assert "unseen AUROC msp" in header
    row = next(ln for ln in text.splitlines() if ln.startswith("0.5"))
    assert "0.930" in row and "0.600" in row
    # the fractions are different tasks: no closed-set accuracy pooled over them
    assert text.splitlines()[0] == "2 runs (per fraction below)"
    assert "over_conditions" not in sweep.aggregate(both, "rare")["variants"][0]
    # a precision that only one of two seeds has (the other predicted nothing as the class)
    seeds = [_rare_record(0.5, s, {"3": (10, 0.6, 0.6)}) for s in (0, 1)]
    seeds[1]["metrics"]["rare"]["3"]["precision"] = None
    text = sweep.format_summary(sweep.aggregate(seeds, "rare"))
    row = next(ln for ln in text.splitlines() if ln.startswith("0.5"))
    assert "0.800 (n=1)" in row and "0.600 ± 0.000" in row


def test_rare_protocol_prints_far_ood_per_fraction():
    def far(auroc, n=100):
        return {"digits": {"num_images": n, "scores": {"msp": {"auroc": auroc, "threshold": 1.0}}}}

    records = [_rare_record(f, s, {"3": (5, 0.5, 0.6)}) for f in (0.5, 0.0) for s in (0, 1)]
    for r, auroc in zip(records, (0.9, 0.7, 0.6, None), strict=True):
        if auroc is not None:  # the last run never scored the far-OOD set
            r["ood"] = far(auroc)
    summary = sweep.aggregate(records, "rare")
    by_fraction = {c["condition"]: c for c in summary["variants"][0]["conditions"]}
    assert by_fraction[0.5]["far_ood"]["digits"]["scores"]["msp"]["auroc"]["mean"] == 0.8
    assert by_fraction[0.0]["far_ood"]["digits"]["runs"] == 1
    lines = sweep.format_summary(summary).splitlines()
    at = lines.index("far-OOD digits per fraction: 100 of its test images as unseen")
    assert lines[at + 1].split() == ["fraction", "runs", "AUROC", "msp"]
    # fractions in order, each with its own runs' mean: not one figure over different tasks
    assert lines[at + 3].split() == ["0", "1", "of", "2", "0.600"]
    assert lines[at + 4].split() == ["0.5", "2", "of", "2", "0.800", "±", "0.141"]


def test_console_tells_a_zero_spread_and_a_partial_sweep_apart():
    # the same value in two runs shows its zero spread; a single run shows none
    from unseen.console import mean_std_text

    assert mean_std_text({"mean": 0.5, "std": 0.0, "n": 2}) == "0.500 ± 0.000"
    assert mean_std_text({"mean": 0.5, "std": None, "n": 1}) == "0.500"
    records = [_rare_record("single", s, {}, auroc=0.8) for s in (0, 1)]
    summary = sweep.aggregate(records, "single")
    summary.update(runs_planned=4, runs_finished=2)
    assert sweep.format_summary(summary).startswith("NOTE: 2 of the 4 planned runs have finished")
    summary.update(runs_finished=4)
    assert "NOTE" not in sweep.format_summary(summary)


def test_single_run_has_no_std():
    from unseen.metrics import mean_std

    assert mean_std([0.7]) == {"mean": 0.7, "std": None, "n": 1}
    as_numpy = mean_std([np.float32(0.5), np.int64(1), np.float64(0.75)])
    assert as_numpy == {"mean": pytest.approx(0.75), "std": pytest.approx(0.25), "n": 3}
    assert mean_std([None, float("nan"), float("inf"), True]) == {"mean": None, "std": None, "n": 0}


# ----------------------------------------------------------------------------- rare classes


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_rare_subsampling_counts(digits):
    rare = resolve_rare(("3:0.1",), digits.classes)
    assert rare == [(3, 0.1)]
    split = make_split(digits.classes, None, None, rare=rare)
    assert split.known == tuple(range(10))  # with --rare nothing else is held out
    n3 = int((digits.y_train == 3).sum())
    sd = split_data(digits, split, seed=0, rare=rare)
    assert int((sd.y_train == 3).sum()) == math.floor(0.1 * n3 + 0.5)
    assert int((sd.y_val == 3).sum()) == 0  # the kept images are all trained on
    # other classes are untouched: training + validation hold all their images
    for c in (0, 5):
        assert int((sd.y_train == c).sum() + (sd.y_val == c).sum()) == int(
            (digits.y_train == c).sum()
        )


def test_rare_keep_rule():
    assert rare_keep_count(127, 0.001) == 1  # at least one image when the class has any
    assert rare_keep_count(127, 0.01) == 1
    assert rare_keep_count(127, 0.1) == 13
    assert rare_keep_count(125, 0.1) == 13  # 12.5 rounds up
    assert rare_keep_count(127, 1.0) == 127
    assert rare_keep_count(127, 0.0) == 0
    assert rare_keep_count(0, 0.5) == 0


def test_smaller_fractions_keep_subsets_of_larger_ones(digits):
    kept = {}
    for f in (0.05, 0.2, 0.6):
        rare = [(3, f)]
        sd = split_data(digits, make_split(digits.classes, rare=rare), seed=1, rare=rare)
        kept[f] = {bytes(x.numpy()) for x, y in zip(sd.x_train, sd.y_train, strict=True) if y == 3}
    assert kept[0.05] <= kept[0.2] <= kept[0.6]
    assert len(kept[0.05]) < len(kept[0.2]) < len(kept[0.6])


def test_rare_fraction_zero_makes_the_class_unseen(digits):
    rare = [(3, 0.0)]
    split = make_split(digits.classes, rare=rare)
    assert split.unseen == (3,)
    sd = split_data(digits, split, seed=0, rare=rare)
    assert int((sd.y_test == -1).sum()) == int((digits.y_test == 3).sum())


def test_rare_class_must_be_known_unless_absent(digits):
    with pytest.raises(ConfigError, match="held out"):
        make_split(digits.classes, holdout=("3",), rare=[(3, 0.5)])
    assert make_split(digits.classes, holdout=("3",), rare=[(3, 0.0)]).unseen == (3,)
    with pytest.raises(ConfigError, match="twice"):
        resolve_rare(("3:0.5", "3:0.1"), digits.classes)


def test_rare_option_parsing():
    cfg = resolve_config({"rare": ("Ankle boot:0.01",)})
    assert cfg.rare == ("Ankle boot:0.01",)
    from unseen.config import parse_value

    assert parse_value("rare", "3:0.5, 7:0") == ("3:0.5", "7:0")
    for bad in ("3", "3:2", "3:x", ":0.5"):
        with pytest.raises(ConfigError, match="CLASS:FRACTION"):
            parse_value("rare", bad)


def test_rare_metrics_known_answer():
    # known classes 0, 3, 5 -> remapped 0, 1, 2; class 3 is rare; class 9 is unseen
    y_orig = np.array([0, 0, 3, 3, 3, 5, 5, 9])
    predicted = np.array([0, 1, 1, 0, 1, 2, 1, 1])
    score = np.array([0.9, 0.8, 0.3, 0.85, 0.2, 0.7, 0.6, 0.1])
    y_train = np.array([0, 0, 1, 2, 2])
    out = rare_metrics([(3, 0.1)], DIGITS, [0, 3, 5], y_train, y_orig, predicted, {"s": score})
    r = out["3"]
    assert r["train_images"] == 1 and r["test_images"] == 3 and r["known"]
    assert r["recall"] == pytest.approx(2 / 3)
    # predicted as 3 among known-class images: indices 1, 2, 4, 6 -> 2 of 4 are 3s
    assert r["precision"] == pytest.approx(0.5)
    assert r["predicted_as"] == {"3": 2, "0": 1}
    # others (0,0,5,5): 0.9 0.8 0.7 0.6 vs rare 0.3 0.85 0.2: pairs won = 4+3+2+2... computed
    pos, neg = [0.9, 0.8, 0.7, 0.6], [0.3, 0.85, 0.2]
    expected = np.mean([[p > n for n in neg] for p in pos])
    assert r["auroc_vs_known"]["s"] == pytest.approx(expected)
    assert "mean_confidence" not in r  # without the head's confidence
    # with it: the 3s (indices 2, 3, 4) at 0.95, 0.99, 0.5; index 3 went to class 0 at 0.99
    conf = np.array([0.9, 0.9, 0.95, 0.99, 0.5, 0.9, 0.9, 0.9])
    r = rare_metrics([(3, 0.1)], DIGITS, [0, 3, 5], y_train, y_orig, predicted, {"s": score},
                     confidence=conf)["3"]  # fmt: skip
    assert r["mean_confidence"] == pytest.approx((0.95 + 0.99 + 0.5) / 3)
    assert r["confidently_mislabelled"] == pytest.approx(1 / 3)


def test_rare_metrics_when_the_class_is_absent():
    y_orig = np.array([0, 3, 3, 5])
    out = rare_metrics(
        [(3, 0.0)], DIGITS, [0, 5], np.array([0, 1]), y_orig, np.array([0, 1, 0, 1]),
        {"s": np.array([0.9, 0.1, 0.2, 0.8])}, confidence=np.array([0.5, 0.95, 0.85, 0.5]),
    )  # fmt: skip
    r = out["3"]
    assert not r["known"] and r["train_images"] == 0
    assert math.isnan(r["recall"]) and math.isnan(r["precision"])
    assert r["predicted_as"] == {"5": 1, "0": 1}
    assert r["auroc_vs_known"]["s"] == 1.0
    # absent: every label it gets is wrong; one of its two above 0.9
    assert r["mean_confidence"] == pytest.approx(0.9)
    assert r["confidently_mislabelled"] == pytest.approx(0.5)
    from unseen.console import fmt
    from unseen.rare import rare_summary

    line = rare_summary("3", r, fmt)
    assert "its 2 test images were labelled as: 0 (1), 5 (1); mean confidence 0.900, 0.500" in line


# ----------------------------------------------------------------------------- balance


def test_class_weights_and_weighted_loss_match_torch():
    from unseen.heads import HEADS
    from unseen.train import class_weights, weighted_loss

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = class_weights(y)
    assert torch.allclose(w, torch.tensor([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)]))
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    expected = F.cross_entropy(logits, y, weight=w)
    got = weighted_loss(HEADS["softmax"], logits, y, 0.0, w)
    assert torch.allclose(got, expected, atol=1e-6)


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_rare_on_unseen_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        ["run", "--rare", "3:0.05", "--epochs", "1", "--train-subset", "300", "--scores", "msp",
         "--device", "cpu", "--precision", "fp32", "--quiet", "--out", str(out), "--no-report"]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["rare"] == ["3:0.05"] and config["split"]["unseen"] == []
    r = metrics["rare"]["3"]
    digits = load_dataset("digits")
    from unseen.splits import stratified_subset

    keep = stratified_subset(digits.y_train.numpy(), 300, 0)
    n3 = int((digits.y_train.numpy()[keep] == 3).sum())
    assert r["train_images"] == rare_keep_count(n3, 0.05)
    # recall recomputed independently from scores.npz
    arrays = np.load(out / "scores.npz")
    is3 = arrays["label"] == 3
    assert r["recall"] == pytest.approx(np.mean(arrays["predicted"][is3] == 3))
    assert "rare class 3" in capsys.readouterr().out


def test_bad_rare_and_protocol_exit_2(capsys):
    assert main(["run", "--rare", "3:1.5"]) == 2
    assert "CLASS:FRACTION" in capsys.readouterr().err
    assert main(["sweep", "--protocol", "nope", "--epochs", "1"]) == 2
    assert "--protocol" in capsys.readouterr().err
    assert main(["sweep", "--protocol", "neal6", "--known", "1,2,3", "--dry-run"]) == 2
    capsys.readouterr()
    # a class the rare protocol does not know: named as given, not as --rare (not given)
    assert main(["sweep", "--protocol", "rare:foo", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--protocol rare:CLASS 'foo' is not a class of this dataset" in err
    assert "--rare" not in err


def test_dry_run_lists_folders(tmp_path, capsys):
    rc = main(["sweep", "--protocol", "loo", "--epochs", "1", "--dry-run", "--out", str(tmp_path)])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "to run" in ln]
    assert len(lines) == 10 and sum(ln.endswith("  (held out: 9; seed 0)") for ln in lines) == 1
    assert not (tmp_path / "runs").exists()
    # what each run keeps, by class name, before anything trains
    assert main(["sweep", "--protocol", "neal6", "--dry-run", "--out", str(tmp_path / "n")]) == 0
    neal = capsys.readouterr().out.splitlines()
    assert len(neal) == 5 and neal[0].endswith("  (held out: 3, 6, 7, 8; seed 0)")
    for extra, said in (([], "held out: 9"), (["--rare", "3:0.1"], "held out: none; rare: 3:0.1")):
        args = ["sweep", "--protocol", "single", "--dry-run", "--out", str(tmp_path / "s")]
        assert main([*args, *extra]) == 0
        assert capsys.readouterr().out.strip().endswith(f"  ({said}; seed 0)")
    # an interrupted run (a checkpoint in its folder or a head's) is said to resume
    first = Path(lines[0].split()[0])
    (first / "ovr").mkdir(parents=True)
    (first / "ovr" / "checkpoint.pt").write_bytes(b"")
    rc = main(["sweep", "--protocol", "loo", "--epochs", "1", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"{first}  to resume (from its checkpoint)" in out and out.count("to run") == 9
    rc = main(["sweep", "--protocol", "loo", "--epochs", "1", "--dry-run", "--overwrite",
               "--out", str(tmp_path)])  # fmt: skip
    assert f"{first}  to run (its checkpoint ignored: --overwrite)" in capsys.readouterr().out
    # --quiet lists the same states, without the split
    for extra, state in (([], "to resume (from its checkpoint)"),
                         (["--overwrite"], "to run (its checkpoint ignored: --overwrite)")):  # fmt: skip
        rc = main(["sweep", "--protocol", "loo", "--epochs", "1", "--dry-run", "--quiet",
                   "--out", str(tmp_path), *extra])  # fmt: skip
        assert rc == 0 and f"{first}  {state}\n" in capsys.readouterr().out
    # an ovr-separate head keeps one checkpoint per network: checkpoint-K.pt
    (first / "ovr" / "checkpoint.pt").rename(first / "ovr" / "checkpoint-3.pt")
    rc = main(["sweep", "--protocol", "loo", "--epochs", "1", "--dry-run", "--out", str(tmp_path)])
    assert f"{first}  to resume (from its checkpoint)" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_end_to_end_on_digits(tmp_path, capsys):
    args = ["sweep", "--protocol", "rare:3", "--fractions", "0,0.5", "--epochs", "1",
            "--train-subset", "200", "--scores", "msp", "--device", "cpu", "--precision", "fp32",
            "--no-report", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs_finished"] == 2
    (v,) = summary["variants"]
    by_fraction = {c["condition"]: c for c in v["conditions"]}
    assert by_fraction[0.0]["rare"]["3"]["train_images"]["mean"] == 0
    assert by_fraction[0.5]["rare"]["3"]["train_images"]["mean"] > 0
    # at fraction 0 the rare class is the only unseen class: both AUROCs are the same number
    run0 = next(r for r in summary["runs"] if r["tags"]["condition"] == 0.0)
    m0 = json.loads((Path(run0["dir"]) / "metrics.json").read_text())
    assert m0["rare"]["3"]["auroc_vs_known"]["msp"] == pytest.approx(m0["scores"]["msp"]["auroc"])
    assert "rare class per fraction" in capsys.readouterr().out
    mtimes = [(Path(r["dir"]) / "metrics.json").stat().st_mtime_ns for r in summary["runs"]]
    assert main(args) == 0  # resumes: nothing left to run, nothing rewritten
    assert [(Path(r["dir"]) / "metrics.json").stat().st_mtime_ns for r in summary["runs"]] == mtimes


@pytest.mark.slow
def test_parallel_jobs(tmp_path):
    base = TINY.replace(epochs=1, train_subset=150)
    result = sweep.run_sweep(
        base, SweepOptions("random:8", splits=2, jobs=2), tmp_path, report=False, log=None
    )
    assert [o.status for o in result.outcomes] == ["finished", "finished"]
    assert all(is_finished(r.run_dir) for r in result.runs)


#: the --jobs sweeps a test started, with their workers: killed after the test whatever its
#: outcome, so that a failing test (a timeout) leaves no sweep training on the machine
_STARTED: list[tuple[subprocess.Popen, list[int]]] = []


@pytest.fixture(autouse=True)
def _reap_jobs_sweeps():
    yield
    while _STARTED:
        proc, workers = _STARTED.pop()
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _jobs_sweep(out: Path, *args: str, started: int = 2) -> tuple[subprocess.Popen, list[int]]:
    """A ``--jobs 2`` sweep (``args``: protocol and run options), once ``started`` runs have
    begun; and its worker processes."""
    env = {k: v for k, v in os.environ.items() if k != "UNSEEN_NUM_THREADS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unseen", "sweep", "--jobs", "2", *args, "--train-subset",
         "300", "--no-report", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # SIGINT as a terminal gives it: a test suite started in the background of a
        # non-interactive shell (`pytest &`) ignores SIGINT, and its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("runs/*/config.json"))) < started and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # in their first epochs
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [int(c) for c in children
               if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]  # fmt: skip
    _STARTED.append((proc, workers))
    return proc, workers


def _jobs_sweep_started(out: Path) -> tuple[subprocess.Popen, list[int]]:
    """A ``--jobs 2`` loo sweep of long runs, once both workers train; and its children."""
    return _jobs_sweep(out, "--protocol", "loo", "--epochs", "3000")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_jobs_sweep_stopped_by_a_signal_leaves_no_worker_behind(tmp_path, how):
    # the two runs in progress checkpoint and stop; no queued run starts; no worker outlives
    # the sweep (after kill -9 of the main process, they notice it is gone)
    out = tmp_path / "sw"
    proc, workers = _jobs_sweep_started(out)
    assert len(workers) == 2
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    expected = {"SIGTERM": 143, "SIGINT": 130, "SIGKILL": -9}[how]
    assert proc.returncode == expected, err
    if how != "SIGKILL":  # what to do next, after Ctrl-C too
        assert b"run the same `unseen sweep` command again" in err
    assert b"Traceback" not in err
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    assert len(list(out.glob("runs/*/config.json"))) == 2  # no queued run was started
    assert len(list(out.glob("runs/*/checkpoint.pt"))) == 2  # each stopped run can resume


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_jobs_worker_fails_its_runs_instead_of_the_sweep(tmp_path):
    out = tmp_path / "sw"
    proc, workers = _jobs_sweep_started(out)
    os.kill(workers[0], signal.SIGKILL)  # what the out-of-memory killer does
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"Traceback" not in err
    assert "FAILED: a worker process died" in stdout.decode()
    summary = json.loads((out / "summary.json").read_text())
    errors = [r["error"] for r in summary["runs_failed"]]
    assert summary["runs_finished"] == 0 and len(errors) == 10
    assert errors.count(sweep.WORKER_DIED) == 2  # the two runs in progress
    assert errors.count(sweep.NOT_RUN) == 8
    assert not _alive(workers[1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_killing_an_idle_jobs_worker_does_not_hang_the_sweep(tmp_path):
    # three runs on two workers: once two have finished, one worker trains the third and the
    # other waits for work, holding the queue's lock; killed there, it must not leave the
    # busy worker (and so the sweep) waiting forever
    out = tmp_path / "sw"
    proc, workers = _jobs_sweep(out, "--protocol", "single", "--seeds", "3", "--epochs", "400",
                                started=3)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("runs/*/run.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = {w: _cpu_ticks(w) for w in workers}
    time.sleep(1.0)
    idle = min(workers, key=lambda w: _cpu_ticks(w) - before[w])
    os.kill(idle, signal.SIGKILL)
    stdout, err = proc.communicate(timeout=90)  # before the fix: waited forever
    assert proc.returncode == 1 and b"Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_finished"] == 2 and len(summary["runs_failed"]) == 1
    assert not any(_alive(w) for w in workers)


def test_a_sweep_is_not_written_into_a_run_folder(digits_run, capsys):
    before = sorted(p.name for p in digits_run.iterdir())
    assert main(["sweep", "--protocol", "single", "--out", str(digits_run)]) == 2
    assert "holds a run of `unseen run`, not a sweep" in capsys.readouterr().err
    assert sorted(p.name for p in digits_run.iterdir()) == before


def test_holdout_auto_is_planned_and_hashed_as_the_default(tmp_path, capsys):
    def planned(*extra: str) -> list[str]:
        assert main(["sweep", "--protocol", "single", "--seeds", "2", "--dry-run",
                     "--out", str(tmp_path / "sw"), *extra]) == 0  # fmt: skip
        return [line.split()[0] for line in capsys.readouterr().out.splitlines() if "runs/" in line]

    default = planned()
    assert len(default) == 2 and planned("--holdout", "auto") == default == planned(
        "--known", "auto"
    )
    assert main(["sweep", "--protocol", "loo", "--holdout", "auto", "--dry-run",
                 "--out", str(tmp_path / "loo")]) == 0  # fmt: skip


def test_each_variant_lists_only_the_scores_it_computed():
    def record(head: str, seed: int, scores: dict) -> dict:
        metrics = {"closed_set_accuracy": 0.9, "scores": scores}
        tags = {"condition": "single", "seed": seed, "balance": "none"}
        return {"label": f"{head}-{seed}", "dir": "-", "tags": tags, "head": head,
                "metrics": metrics, "settings": {}}  # fmt: skip

    msp = {"auroc": 0.8, "threshold": 0.5}
    records = [record("softmax", s, {"msp": msp}) for s in (0, 1)]
    records += [
        record("ovr", s, {"msp": msp, "ovr": {"auroc": 0.7, "threshold": 0.0}}) for s in (0, 1)
    ]
    text = sweep.format_summary(sweep.aggregate(records, "single"))
    softmax_table = text.split("== ovr")[0]
    assert "\nmsp " in softmax_table and "\novr " not in softmax_table
    assert "\novr   " in text.split("== ovr")[1]
    assert "computed on only" not in text  # each variant's runs all have its scores
    # runs of an earlier version that lack a score, among runs that have it: said plainly
    records[0]["metrics"]["scores"]["gen"] = msp
    summary = sweep.aggregate(records, "single")
    assert summary["score_coverage"] == [
        "softmax / none: gen was computed on 1 of the 2 runs (runs of an earlier version with "
        "fewer scores, or runs rescored with other --scores): their means are over fewer runs "
        "than the other scores'; `unseen rescore` on the sweep folder with --scores naming "
        "them computes them on every finished run"
    ]
    assert "WARNING: softmax / none: gen was computed on 1 of" in sweep.format_summary(summary)
    # a whole balance mode without it (finished by an earlier version), the other with it
    for r in records[:2]:
        r["metrics"]["scores"]["gen"] = msp
    late = [record("softmax", s, {"msp": msp}) for s in (0, 1)]
    for r in late:
        r["tags"]["balance"] = "sampler"
    summary = sweep.aggregate(records[:2] + late, "single")
    assert [w.split(" (")[0] for w in summary["score_coverage"]] == [
        "softmax / sampler: gen was computed on 0 of the 2 runs"
    ]


def test_sweep_option_values_are_refused_in_their_own_sentence(capsys):
    # through argparse: a ValueError from a type function would become "invalid ... value"
    for args, said in ((["--fractions", "2"], "--fractions must be numbers from 0 to 1, not '2'."),
                       (["--compare-balance", "foo"], "--compare-balance takes modes from")):  # fmt: skip
        assert main(["sweep", "--protocol", "rare:3", *args, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("unseen: error: ") and said in err and "invalid" not in err


def test_rare_fractions_that_kept_the_same_images_are_noted():
    records = [
        _rare_record(f, s, {"3": (n, 0.5, 0.6)}, auroc=0.8)
        for f, n in ((0.001, 1), (0.01, 1), (0.1, 11), (1.0, 114))
        for s in (0, 1)
    ]
    text = sweep.format_summary(sweep.aggregate(records, "rare"))
    assert "note: fractions 0.001, 0.01 kept the same 1 training image(s) of the rare class" in text
    assert text.count("note: fractions") == 1
    # 0.1 and 1 with the same mean count, but seeds that kept different numbers: no note
    for i, n in ((4, 113), (5, 114), (6, 113), (7, 114)):  # (fraction, seed) in order
        records[i]["metrics"]["rare"]["3"]["train_images"] = n
    text = sweep.format_summary(sweep.aggregate(records, "rare"))
    assert "note: fractions 0.001, 0.01 kept" in text and "0.1, 1" not in text


def test_dry_run_names_the_classes_only_the_test_set_has(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=np.arange(30) % 3, x_test=x[30:],
             y_test=np.arange(10) % 4, classes=np.array(["a", "b", "c", "d"]))  # fmt: skip
    args = ["sweep", "--protocol", "single", "--dataset", f"npz:{tmp_path / 'd.npz'}",
            "--dry-run", "--out", str(tmp_path / "s")]  # fmt: skip
    for extra, said in (([], "held out: d"), (["--rare", "a:0.5"], "held out: d; rare: a:0.5")):
        assert main([*args, *extra]) == 0
        assert capsys.readouterr().out.strip().endswith(f"  ({said}; seed 0)")


def test_sweep_help_describes_its_own_folder_and_resume_is_refused(tmp_path, capsys):
    assert main(["sweep", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    assert "--out DIR the sweep folder: sweep.json, summary.json, summary.txt" in text
    assert "[default: sweeps/<dataset>-<protocol>]" in text
    assert "--overwrite run every run of the sweep again from scratch" in text
    assert "runs/<time>-<dataset>-<holdout>" not in text and "--resume" not in text
    # a sweep always continues where it stopped: --resume is refused, nothing written
    out = tmp_path / "S"
    assert main(["sweep", "--protocol", "single", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "unseen: error: a sweep continues where it stopped by itself, so it takes no "
        "--resume: run the same `unseen sweep` command again."
    )
    assert not out.exists()
    assert main(["run", "--help"]) == 0  # a run's own help is unchanged
    text = " ".join(capsys.readouterr().out.split())
    assert "--out DIR run folder (none: runs/<time>-<dataset>-<holdout>)" in text
    assert "--resume continue the unfinished run in --out" in text


def test_summary_only_changes_no_record_and_needs_a_sweep(tmp_path, capsys):
    """Aggregating trains nothing, so it leaves sweep.json as the sweep wrote it (other
    options, say more seeds, used to replace it and lock the sweep's own command out); with no
    sweep and no finished run there is nothing to summarise (a mistyped --out)."""
    out = tmp_path / "S"
    args = ["sweep", "--protocol", "single", "--out", str(out), "--epochs", "1",
            "--train-subset", "200", "--test-subset", "100", "--no-report", "--quiet"]  # fmt: skip
    assert main(args) == 0
    record = (out / "sweep.json").read_text()
    assert main([*args, "--seeds", "3", "--summary-only"]) == 0
    assert "1 of the 3 planned runs" in capsys.readouterr().out
    assert (out / "sweep.json").read_text() == record
    assert main([*args, "--dry-run"]) == 0  # the sweep's own command still fits its folder
    none = tmp_path / "none"
    assert main([*args[:4], str(none), *args[5:], "--summary-only"]) == 2
    assert "holds no sweep (no sweep.json) and no finished run" in capsys.readouterr().err
    assert not none.exists()


def test_a_diverged_run_of_a_sweep_is_told_what_the_sweep_accepts(tmp_path, capsys):
    """A run's advice (a lower --lr, then --overwrite) is another sweep's in a sweep: --lr is
    part of the folder names, and this folder refuses other options."""
    out = tmp_path / "S"
    args = ["sweep", "--protocol", "single", "--out", str(out), "--epochs", "2", "--lr", "1e6",
            "--train-subset", "300", "--test-subset", "100", "--no-report", "--quiet"]  # fmt: skip
    assert main(args) == 1
    printed = capsys.readouterr()
    said = printed.out + printed.err
    assert "training diverged" in said and "lower the learning rate" in said
    assert "run the sweep with it and another --out" in said
    assert "start again with --overwrite" not in said
