"""The command line end to end: a real run on digits, config precedence, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unseen.cli import build_parser, config_from_args, main

SCORE_KEYS = {
    "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "oscr", "threshold",
    "open_set_accuracy", "open_set_macro_f1", "unseen_rejected", "known_rejected",
}  # fmt: skip


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "run",
        "--out",
        str(out),
        "--epochs",
        "15",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--quiet",
    ]
    assert main(argv) == 0
    return out


def test_run_writes_every_file_and_metric(cli_run):
    for name in (
        "config.json",
        "metrics.json",
        "history.csv",
        "scores.npz",
        "model.pt",
        "run.json",
    ):
        assert (cli_run / name).is_file(), name
    m = json.loads((cli_run / "metrics.json").read_text())
    for key in ("closed_set_accuracy", "all_test_accuracy", "known_classes", "unseen_classes", "unseen_confidence",
                "known_confidence", "unseen_predicted_as", "scores", "train_seconds", "train_images_per_second", "device"):  # fmt: skip
        assert key in m, key
    assert m["unseen_classes"] == ["9"] and len(m["known_classes"]) == 9
    assert set(m["unseen_confidence"]) == {"mean_msp", "std_msp", "frac_msp_above_0_9"}
    assert set(m["scores"]) == {"msp", "maxlogit", "energy", "entropy"}
    for s in m["scores"].values():
        assert set(s) >= SCORE_KEYS
    assert m["closed_set_accuracy"] >= 0.9
    # the naive figure counts every unseen image wrong, so it sits below closed-set accuracy
    n_known, n_unseen = m["num_test_known"], m["num_test_unseen"]
    assert m["all_test_accuracy"] == pytest.approx(
        m["closed_set_accuracy"] * n_known / (n_known + n_unseen)
    )
    assert sum(m["unseen_predicted_as"].values()) == n_unseen
    # every known-class training image is trained on or kept for validation (10% of them)
    from unseen.data import load_dataset

    y_train = load_dataset("digits").y_train
    assert m["num_train"] + m["num_val"] == int((y_train != 9).sum())
    assert m["num_val"] == pytest.approx(0.1 * int((y_train != 9).sum()), abs=9)


def test_scores_npz_agrees_with_metrics(cli_run):
    from unseen.metrics import auroc

    z = np.load(cli_run / "scores.npz")
    m = json.loads((cli_run / "metrics.json").read_text())
    assert z["is_unseen"].sum() == m["num_test_unseen"]
    assert (z["label"][z["is_unseen"]] == 9).all()
    assert auroc(z["score_energy"], ~z["is_unseen"]) == pytest.approx(
        m["scores"]["energy"]["auroc"]
    )
    known = ~z["is_unseen"]
    assert np.mean(z["predicted"][known] == z["label_known"][known]) == pytest.approx(
        m["closed_set_accuracy"]
    )


def test_config_json_holds_resolved_settings(cli_run):
    c = json.loads((cli_run / "config.json").read_text())
    assert c["epochs"] == 15 and c["holdout"] == ["9"] and c["dataset"] == "digits"
    assert c["flip"] is False  # digits are not flipped
    assert c["split"]["mapping"]["8"] == 8


def test_model_checkpoint_loads_weights_only(cli_run):
    import torch

    ck = torch.load(cli_run / "model.pt", weights_only=True)
    assert ck["format_version"] == 1 and ck["num_classes"] == 9
    assert ck["split"]["unseen_names"] == ["9"] and "head.weight" in ck["state_dict"]


def test_history_has_one_row_per_epoch(cli_run):
    lines = (cli_run / "history.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,loss,train_accuracy,val_accuracy") and len(lines) == 16


def test_toml_config_then_flags_override(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('dataset = "digits"\nepochs = 7\nholdout = [3, 4]\nlabel-smoothing = 0.1\n')
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--epochs", "2"])
    cfg = config_from_args(args)
    assert cfg.epochs == 2 and cfg.holdout == ("3", "4") and cfg.label_smoothing == 0.1


def test_scores_starting_with_plus_add_to_the_layer_below(tmp_path, capsys):
    from unseen.config import DEFAULT_SCORES, RunConfig

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('scores = "+vim"\n')
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--scores", "+knn,+msp"])
    assert config_from_args(args).scores == (*DEFAULT_SCORES, "vim", "knn")
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--scores", "knn"])
    assert config_from_args(args).scores == ("knn",)  # without +, the list replaces
    # the Python API: a new config adds to the defaults, replace() to its own list
    assert RunConfig(scores="+odin").scores == (*DEFAULT_SCORES, "odin")
    # +all is --scores all (one sweep folder), with what 'all' leaves out kept
    assert RunConfig(scores=("vim", "odin")).replace(scores=("+all",)).scores == ("all", "odin")
    assert main(["run", "--scores", "msp,+vim"]) == 2
    err = capsys.readouterr().err
    assert "mixes names with and without '+'" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--scores", "+"]) == 2
    assert "--scores + names no score to add" in capsys.readouterr().err


def test_resume_checks_added_scores_against_the_run_s_heads(tmp_path):
    from unseen.config import RunConfig

    run = tmp_path / "heads"
    run.mkdir()
    saved = RunConfig(head=("softmax", "ovr"), out=str(run)).to_dict()
    (run / "config.json").write_text(json.dumps(saved))
    args = build_parser().parse_args(["run", "--resume", "--out", str(run), "--scores", "+ovr"])
    cfg = config_from_args(args)  # the default head (softmax) alone would refuse ovr
    assert cfg.head == ("softmax", "ovr") and cfg.scores[-1] == "ovr"


def test_every_default_shown_in_help_gives_the_default_back_when_typed():
    # --out auto would be a folder named auto: the help shows what typing gives the default
    from unseen.cli import shown_default
    from unseen.config import FIELDS, is_auto, parse_value

    for name, f in FIELDS.items():
        value = parse_value(name, shown_default(name))
        if f.default is None:
            assert value is None or is_auto(value), name
        else:
            assert value == f.default, name
    assert shown_default("out") == "none" and shown_default("epochs") == "auto"
    assert shown_default("train_subset") == "all" and shown_default("knn_bank") == "10000"


def test_holdout_auto_is_the_default_and_an_empty_list_is_refused(capsys):
    # the help shows [default: auto]: 'auto' means the default, unless a class is named so
    from unseen.splits import make_split

    assert make_split(tuple("abc"), holdout=("auto",)).unseen_names == ["c"]
    assert make_split(tuple("abc"), known=(" Auto",)).unseen_names == ["c"]
    assert make_split(("auto", "b", "c"), holdout=("auto",)).unseen_names == ["auto"]
    # 'auto' is not a second setting beside --known (in a config file neither)
    cfg = config_from_args(
        build_parser().parse_args(["run", "--holdout", "auto", "--known", "0,1,2"])
    )
    assert cfg.known == ("0", "1", "2")
    assert main(["run", "--holdout", ","]) == 2
    assert "--holdout must be one or more class indices or names" in capsys.readouterr().err


def test_known_on_the_command_line_replaces_a_file_s_holdout(tmp_path, capsys):
    # one setting given two ways: the higher layer wins, whichever spelling it uses
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("holdout = [9]\n")
    cfg = config_from_args(build_parser().parse_args(["run", "--config", str(cfg_file),
                                                      "--known", "0,1,2"]))  # fmt: skip
    assert cfg.known == ("0", "1", "2") and cfg.holdout is None
    cfg_file.write_text("known = [0, 1, 2]\n")
    cfg = config_from_args(build_parser().parse_args(["run", "--config", str(cfg_file),
                                                      "--holdout", "9"]))  # fmt: skip
    assert cfg.holdout == ("9",) and cfg.known is None
    cfg_file.write_text("known = [0, 1, 2]\nholdout = [9]\n")  # both in one layer
    assert main(["run", "--config", str(cfg_file)]) == 2
    assert "not both" in capsys.readouterr().err


BAD = [
    (["run", "--epochs", "0"], "--epochs must be positive"),
    (["run", "--batch-size", "1"], "--batch-size must be at least 2 (batch norm needs two images)"),
    (
        ["run", "--vim-dim", "64", "--scores", "vim"],
        "--vim-dim 64 must be below the feature dimension 64 of this model",
    ),
    (["run", "--augment", "none", "--flip", "on"], "--flip on has no effect with --augment none"),
    (["run", "--epochs", "two"], "--epochs must be"),
    (["run", "--input-size", "100000"], "--input-size must be between 1 and 1024"),
    (["run", "--model", "vgg"], "choose one of: resnet20, resnet18"),
    (["run", "--dataset", "imagenet"], "--dataset 'imagenet' is not known"),
    (["run", "--holdout", "Hat"], "'Hat' is not a class"),
    (["run", "--holdout", "0,1,2,3,4,5,6,7,8,9"], "every class is held out"),
    (["run", "--holdout", "1", "--known", "2,3"], "not both"),
    (["run", "--scores", "foo"], "--scores 'foo' is not known"),
    (["run", "--head", "softmax,softmax"], "--head lists the same head twice"),
    (["run", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["run", "--device", "tpu"], "must be one of: auto, cpu, cuda"),
    (["run", "--config", "/nonexistent.toml"], "does not exist"),
    (["run", "--no-such-flag"], "unseen run: error: unrecognized arguments"),
    (
        ["--no-such-flag", "run"],
        "unseen: error: unrecognized arguments: --no-such-flag (see unseen --help)",
    ),
    (["run", "--dataset", "fashion-mnist", "--data-root", "/nonexistent"], "IDX files not found"),
    (["run", "--val-fraction", "1e-9"], "use 0.008 or more"),
    (["run", "--config", ""], "argument --config: an empty string is not a path"),
    # an empty path (an unset shell variable) is not read as the default or the current folder
    (["run", "--out", ""], "--out must be a folder (or 'none' for the default), not ''"),
    (["run", "--pretrained", ""], "--pretrained must be 'torchvision', a run folder"),
    (["report", ""], "argument RUN: an empty string is not a path"),
    (["predict", "runs/x", ""], "argument INPUT: an empty string is not a path"),
    (["predict", "runs/x", "a.png", "--threshold", ""], "--threshold: must be a number, not ''"),
    (["sweep", "--protocol", "single", "--dry-run", "--summary-only"], "not both"),
    # a path the operating system refuses: one line naming it (shortened) and the reason
    (["run", "--pretrained", "x" * 300], "xxx...: File name too long."),
    (
        ["run", "--epochs", "1", "--out", "/proc/no/such/run"],
        "error: /proc/no: No such file or directory.",
    ),
]


@pytest.mark.parametrize("argv, fragment", BAD)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, monkeypatch):
    monkeypatch.chdir("/tmp")
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and len(err.splitlines()) == 1, err


def test_bad_toml_key_is_rejected(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text("epochz = 3\n")
    assert main(["run", "--config", str(f)]) == 2
    assert "unknown key 'epochz' (did you mean 'epochs'?)" in capsys.readouterr().err
    f.write_text("zzz = 3\n")  # nothing close: the keys it takes
    assert main(["run", "--config", str(f)]) == 2
    assert "unknown key 'zzz'; valid keys: dataset, data_root" in capsys.readouterr().err


def test_a_command_line_option_in_a_config_file_is_named_as_such(tmp_path, capsys):
    import argparse

    from unseen.config import COMMAND_LINE_ONLY, flag_name

    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, commands in COMMAND_LINE_ONLY.items():  # each is a real flag of its commands
        for command in commands:
            sub = subs.choices[command]
            assert flag_name(name) in {o for a in sub._actions for o in a.option_strings}, name
    f = tmp_path / "c.toml"
    f.write_text("seeds = 3\n")
    assert main(["run", "--config", str(f)]) == 2
    assert "the key 'seeds', a command-line option only (pass --seeds to `unseen sweep`)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "text, keys",
    [("train-subset = 100\ntrain_subset = 200\n", "'train-subset' and 'train_subset'"),
     ("epochs = 3\n[run]\nepochs = 4\n", "'epochs' and 'epochs'")],
)  # fmt: skip
def test_a_setting_given_twice_in_toml_is_rejected(tmp_path, capsys, text, keys):
    f = tmp_path / "c.toml"
    f.write_text(text)
    assert main(["run", "--config", str(f)]) == 2
    assert f"sets {keys.split(chr(39))[1].replace('-', '_')} twice ({keys}); keep one" in (
        capsys.readouterr().err
    )


def test_output_cut_short_by_a_pipe_ends_quietly(tmp_path):
    # `unseen sweep ... --dry-run | head -1`: 3,000 lines, more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "unseen", "sweep", "--protocol", "loo", "--seeds", "300",
         "--dry-run", "--out", str(tmp_path / "sw")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert b"loo-0-seed0" in proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_a_run_whose_reader_goes_away_still_finishes(tmp_path):
    # `unseen run | head -1`: lines arrive as they are printed, and once the reader has gone
    # the run drops its later lines instead of ending unfinished
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unseen", "run", "--epochs", "2", "--train-subset", "200",
         "--out", str(out)],  # with the report: its line comes after the reader has gone
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "UNSEEN_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert b"digits:" in proc.stdout.readline()
    assert not (out / "run.json").exists()  # each line is flushed: progress shows in a pipe
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 141) and "Traceback" not in err
    assert (out / "run.json").is_file() and (out / "metrics.json").is_file()


def test_error_from_a_real_process_has_no_traceback():
    r = subprocess.run(
        [sys.executable, "-m", "unseen", "run", "--holdout", "Hat"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_datasets_and_scores_commands(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "fashion-mnist" in out and "npz:PATH" in out
    assert main(["scores"]) == 0
    assert "higher score = more likely a known class" in capsys.readouterr().out


def test_run_json_records_where_the_time_went(digits_run):
    from unseen.console import timing_line

    seconds = json.loads((digits_run / "run.json").read_text())["seconds"]
    parts = ["prepare", "train", "validation", "checkpoint", "eval", "report", "other"]
    assert set(seconds) == {*parts, "total"}
    assert all(seconds[k] >= 0 for k in parts) and seconds["train"] > 0
    # "other" is what the named stages leave of the total
    assert sum(seconds[k] for k in parts) == pytest.approx(seconds["total"])
    line = timing_line(dict.fromkeys(parts, 1.0) | {"train": 2.25, "total": 8.25})
    assert line == (
        "time: 8.2 s in all (data and setup 1.0, training 2.2, per-epoch validation 1.0, "
        "checkpoints 1.0, evaluation and scores 1.0, report 1.0, other 1.0)"
    )


def test_tables_align_wide_characters_and_escape_control_characters():
    from unseen.console import table

    lines = table(
        ["input", "score"],
        [["a.png", 1.0], ["画像.png", 2.0], ["e\u0301.png", 3.0], ["x\ny.png", 4.0]],
    ).splitlines()
    assert len(lines) == 6  # the newline in a name does not break a row
    assert lines[5] == "x\\ny.png  4.000"
    # every score column ends at the same terminal column: CJK is two wide, the accent none
    assert {len(ln) + sum(c in "画像" for c in ln) - ln.count("\u0301") for ln in lines} == {15}


def test_a_run_says_when_nothing_unseen_is_tested_or_a_channel_never_varies(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.zeros((90, 8, 8, 3), np.uint8)
    y = np.arange(90) % 3
    x[..., 1] = rng.integers(0, 256, (90, 8, 8))  # green varies; red only in class 2
    x[y == 2, :, :, 0] = 200
    np.savez(tmp_path / "d.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    args = ["run", "--epochs", "1", "--no-report", "--checkpoint-every", "0"]
    assert main([*args, "--dataset", f"npz:{tmp_path / 'd.npz'}", "--holdout", "2",
                 "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "note: channels 0, 2 hardly vary in the training images" in out
    assert "no test image is of an unseen class" not in out
    assert "resnet20, 1 epoch on cpu" in out  # no resize: no size named
    # the held-out digit 9 falls out of a 5-image test subset
    assert (
        main([*args, "--test-subset", "5", "--input-size", "12", "--out", str(tmp_path / "b")]) == 0
    )
    out = capsys.readouterr().out
    assert "note: no test image is of an unseen class" in out and "hardly var" not in out
    assert "resnet20 at 12 x 12 px (images resized from 8 x 8), 1 epoch on cpu" in out
    # a rare-class run holds nothing out: no note that nothing unseen is tested
    assert main([*args, "--rare", "3:0.5", "--out", str(tmp_path / "c")]) == 0
    assert "note:" not in capsys.readouterr().out


def test_class_names_reach_the_console_without_their_control_characters():
    from unseen.console import printable_names

    assert printable_names(["a\nb", "c", "d\x1b[31m"]) == "a\\nb, c, d\\x1b[31m"
    assert printable_names([str(i) for i in range(98)], limit=3) == "0, 1, 2, ... (98 in all)"


def test_negative_numbers_in_exponent_notation_are_option_values():
    from unseen.cli import join_negative_numbers

    assert join_negative_numbers(["predict", "r", "x.png", "--threshold", "-1.5e2"]) == [
        "predict", "r", "x.png", "--threshold=-1.5e2",
    ]  # fmt: skip
    assert join_negative_numbers(["--threshold", "-5.", "--format", "csv"]) == [
        "--threshold=-5.", "--format", "csv",
    ]  # fmt: skip
    unchanged = ["--threshold=-1e3", "--quiet", "-h", "--", "-2e3", "-", "--lr", "-x"]
    assert join_negative_numbers(unchanged) == unchanged
    # what argparse read before keeps its meaning: -5 after a flag is a positional, and
    # nothing after -- is joined
    for argv in (["report", "--each", "-5"], ["report", "--no-tsne", "-0.5", "r2"],
                 ["predict", "r", "--", "--odd.png", "-1e3"]):  # fmt: skip
        assert join_negative_numbers(argv) == argv
    # an argparse that reads -1e3 as a number itself (Python 3.14's pattern) is left to do so
    import re

    wider = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(\.\d*)?e[+-]?\d+$")
    assert join_negative_numbers(["report", "--each", "-1e3"], wider) == [
        "report",
        "--each",
        "-1e3",
    ]


@pytest.mark.parametrize(
    ("args", "line", "noted"),
    [
        (["--model", "resnet20"], "resnet20, 1 epoch", True),
        (["--model", "resnet18"], "resnet18 (imagenet stem), 1 epoch", False),
        (["--model", "resnet18", "--stem", "small"], "resnet18 (small stem), 1 epoch", True),
        (["--model", "resnet20", "--input-size", "32"], "resnet20 at 32 x 32 px", False),
    ],
)
def test_large_images_on_a_cpu_get_advice_and_the_stem_is_named(
    tmp_path, capsys, args, line, noted
):
    rng = np.random.default_rng(0)
    data = tmp_path / "big.npz"
    np.savez(data, x_train=rng.integers(0, 256, (12, 72, 72), dtype=np.uint8),
             y_train=np.arange(12) % 3, x_test=rng.integers(0, 256, (6, 72, 72), dtype=np.uint8),
             y_test=np.arange(6) % 3)  # fmt: skip
    rc = main(["run", "--dataset", f"npz:{data}", "--epochs", "1", "--device", "cpu",
               "--scores", "msp", "--no-report", "--val-fraction", "0.25",
               "--out", str(tmp_path / "run"), *args])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and line in out
    assert ("72 x 72 px images on a CPU" in out) == noted
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stem"] == (line.split("(")[1].split(" ")[0] if "(" in line else None)


def test_class_counts_are_unambiguous_and_say_when_some_are_left_out():
    from unseen.console import absorbed_text, counts_text

    assert counts_text({"5": 30, "3": 9}) == "5 (30), 3 (9)"
    assert counts_text({str(i): 5 - i for i in range(5)}) == "0 (5), 1 (4), 2 (3), 3 (2), ..."
    assert counts_text({}) == "-"
    assert absorbed_text({"class": "8", "share": 0.45}) == "8 (45%)" and absorbed_text(None) == "-"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--holdout", "3", "--holdout", "4"], "argument --holdout: given twice; give "
         "several values once, comma-separated"),
        (["run", "--scores", "vim", "--scores=knn"], "argument --scores: given twice"),
        (["run", "--epochs", "3", "--epochs", "3"], "argument --epochs: given twice; give it once"),
        (["sweep", "--protocol", "loo", "--seeds", "1", "--seeds", "2"], "--seeds: given twice"),
        (["rescore", "runs/x", "--scores", "msp", "--scores", "knn"], "--scores: given twice"),
    ],
)  # fmt: skip
def test_an_option_given_twice_is_refused_not_overridden(capsys, argv, said):
    # argparse keeps the last value: --holdout 3 --holdout 4 would hold out 4 alone
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "Traceback" not in err[0]
    # once is fine, and a list is given comma-separated
    args = build_parser().parse_args(["run", "--holdout", "3,4", "--no-report", "--report"])
    assert config_from_args(args).holdout == ("3", "4") and config_from_args(args).report is True
