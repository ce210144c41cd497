"""Issue 10: runs that survive interruption, bad input and bad files.

Every training here is tiny (200 digits, a few epochs, one thread) and on the CPU in fp32,
where a resumed run must end with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unseen.checkpoint import (
    CHECKPOINT_FILE,
    Checkpointing,
    FiniteGuard,
    check_run_folder,
    config_differences,
    load_weights,
    state_dict_problems,
)
from unseen.cli import main
from unseen.config import FIELDS, RunConfig
from unseen.errors import ConfigError, Interrupted, UnseenError
from unseen.runfolder import is_finished, load_torch, require_finished

#: a run of ~2 s: 4 epochs of 7 steps on 200 digits (9 held out), one score, and a checkpoint
#: after every epoch, so that the tests can stop and kill runs between epochs
TINY = dict(
    epochs=4, train_subset=200, test_subset=100, batch_size=24, scores=("msp",),
    device="cpu", precision="fp32", checkpoint_every=0.0,
    **({"report": False} if "report" in FIELDS else {}),
)  # fmt: skip
#: the same run as command-line flags
TINY_ARGS = [
    "--epochs", "4", "--train-subset", "200", "--test-subset", "100", "--batch-size", "24",
    "--scores", "msp", "--device", "cpu", "--precision", "fp32", "--quiet",
    "--checkpoint-every", "0",
    *(["--no-report"] if "report" in FIELDS else []),
]  # fmt: skip


def _is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith(("_seconds", "per_second", "_at"))


def strip_timings(value):
    """A metrics dict without the wall-clock entries (train_seconds, eval_seconds, ...)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not _is_timing(str(k))}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def results(run_dir: Path) -> tuple[dict, list[list[str]], dict[str, np.ndarray]]:
    """metrics.json and history.csv without timings, and every array of scores.npz."""
    metrics = strip_timings(json.loads((run_dir / "metrics.json").read_text()))
    rows = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if not _is_timing(name)]
    history = [[row[i] for i in keep] for row in rows]
    with np.load(run_dir / "scores.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return metrics, history, arrays


def assert_same_results(a: Path, b: Path) -> None:
    ma, ha, xa = results(a)
    mb, hb, xb = results(b)
    assert ma == mb
    assert ha == hb
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Two cores shared by many processes: one intra-op thread is both faster and steadier."""
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")


def run(out: Path, **changes):
    from unseen.experiment import run_experiment

    cfg = RunConfig(out=str(out), **{**TINY, **changes})
    return run_experiment(cfg, progress=False, log=None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    os.environ["UNSEEN_NUM_THREADS"] = "1"
    out = tmp_path_factory.mktemp("ref") / "run"
    run(out)
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unseen: "), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- 1. resume


def interrupt_at(monkeypatch, call: int) -> None:
    """Send a real SIGINT to this process the ``call``-th time the loop polls for a stop
    (once per step and once after each epoch's checkpoint)."""
    original = Checkpointing.stop_requested
    calls = {"n": 0}

    def poll(self):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Checkpointing, "stop_requested", poll)


@pytest.mark.parametrize(
    "call, where",
    [
        (12, "in epoch 2, step 4 of 7"),
        (8, "after epoch 1"),
        (32, "after epoch 4"),
        (7, "in epoch 1, step 7 of 7"),
    ],  # the last step: nothing of the epoch is left to run
)
def test_interrupted_run_resumes_to_identical_metrics(
    reference, tmp_path, monkeypatch, call, where
):
    # the loop polls 8 times an epoch: after each of its 7 steps and after the checkpoint
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    interrupt_at(monkeypatch, call)
    with pytest.raises(Interrupted) as info:
        run(out)
    assert info.value.exit_code == 130
    assert where in str(info.value) and "SIGINT" in str(info.value)
    assert f"unseen run --resume --out {out}" in str(info.value)
    assert (out / CHECKPOINT_FILE).is_file()
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()
    assert not is_finished(out)
    # the handlers are back: a later Ctrl-C is a plain KeyboardInterrupt again
    assert signal.getsignal(signal.SIGINT) is handler
    monkeypatch.undo()
    os.environ["UNSEEN_NUM_THREADS"] = "1"

    run(out, resume=True)
    assert is_finished(out)
    assert not (out / CHECKPOINT_FILE).exists()  # deleted on success; model.pt has the weights
    assert_same_results(reference, out)


def test_a_checkpoint_from_a_gpu_resumes_on_a_cpu_with_a_new_seed(tmp_path, monkeypatch, capsys):
    # a CUDA generator's state is 16 bytes, a CPU generator's 5,056: neither takes the other's.
    # A run interrupted on a GPU (here: its checkpoint given a CUDA-sized generator state and
    # a GPU's `computed_on`) finishes on a CPU, drawing its remaining epochs from a new seed
    from unseen.runfolder import save_torch

    out = tmp_path / "run"
    interrupt_at(monkeypatch, 12)  # epoch 2, step 4 of 7
    code, _, _ = cli(capsys, "run", *TINY_ARGS, "--out", str(out))
    assert code == 130
    monkeypatch.undo()
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    state = load_torch(out / CHECKPOINT_FILE)
    state["generator"] = torch.arange(16, dtype=torch.uint8)  # as a CUDA generator saves it
    state["computed_on"] = "cuda (NVIDIA H200), torch 2.11.0"
    save_torch(out / CHECKPOINT_FILE, state)
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert "trained on cuda (NVIDIA H200), torch 2.11.0 and resumes on cpu" in err
    assert "from a new seed" in err
    assert len(json.loads((out / "metrics.json").read_text())["scores"]) == 1  # finished


def test_a_generator_state_of_another_device_reseeds_the_same_way_every_time():
    from unseen.checkpoint import restore_generator

    cpu = torch.Generator().manual_seed(5)
    on_cpu = {"generator": cpu.get_state(), "epoch": 2, "step": 3, "computed_on": "cpu (2 threads)"}
    g = torch.Generator()
    assert restore_generator(g, on_cpu, 7) is False and torch.equal(g.get_state(), cpu.get_state())
    on_gpu = {**on_cpu, "generator": torch.arange(16, dtype=torch.uint8),
              "computed_on": "cuda (NVIDIA H200), torch 2.11.0"}  # fmt: skip

    def reseeded(seed=7, **changes):
        gen = torch.Generator()
        assert restore_generator(gen, {**on_gpu, **changes}, seed) is True
        return gen.get_state()

    assert torch.equal(reseeded(), reseeded())  # deterministic
    for other in (reseeded(seed=8), reseeded(epoch=3), reseeded(step=4)):
        assert not torch.equal(reseeded(), other)  # each of seed, epoch and step counts
    # on the same kind of device a state that does not fit is refused, as before
    for broken in (cpu.get_state()[:-8], None):
        with pytest.raises((RuntimeError, TypeError)):
            restore_generator(torch.Generator(), {**on_cpu, "generator": broken}, 7)


def test_a_stop_inside_an_epoch_keeps_that_epoch_s_time(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 12)  # epoch 2, step 4 of 7
    with pytest.raises(Interrupted):
        run(out)
    monkeypatch.undo()
    state = load_torch(out / CHECKPOINT_FILE)
    stopped_at = state["wall_seconds"]
    assert stopped_at > state["history"][-1]["seconds"]  # epoch 1, plus part of epoch 2
    run(out, resume=True)
    seconds = [float(line.split(",")[-1]) for line in
               (out / "history.csv").read_text().splitlines()[1:]]  # fmt: skip
    assert seconds[1] >= stopped_at and seconds == sorted(seconds)
    # run.json's stages are this process's and add up to its total; the training done
    # before the interruption is reported apart (it was counted in `train` and lost in `other`)
    wall = json.loads((out / "run.json").read_text())["seconds"]
    stages = ("prepare", "train", "validation", "checkpoint", "eval", "report", "other")
    assert sum(wall[k] for k in stages) == pytest.approx(wall["total"])
    assert wall["trained_before_resume"] == pytest.approx(state["train_seconds"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_seconds"] == pytest.approx(wall["train"] + wall["trained_before_resume"])


def test_a_stop_during_the_last_checkpoint_write_is_not_lost(reference, tmp_path, monkeypatch):
    from unseen import checkpoint as checkpoint_module

    real_save, saves = checkpoint_module.save_torch, []

    def save_then_signal(path, state):  # SIGINT arrives while the last epoch's file is written
        saves.append(state["epoch"])
        real_save(path, state)
        if state["epoch"] == TINY["epochs"]:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoint_module, "save_torch", save_then_signal)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped by SIGINT after epoch 4") as info:
        run(out)
    assert info.value.exit_code == 130 and not (out / "metrics.json").exists()
    monkeypatch.undo()
    run(out, resume=True)  # only the evaluation is left
    assert_same_results(reference, out)


def test_a_run_from_pretrained_weights_resumes(reference, tmp_path, monkeypatch):
    # config.json records how the weights fitted; the resume check must see the same record
    whole = tmp_path / "whole"
    run(whole, pretrained=str(reference))
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 8)  # after epoch 1
    with pytest.raises(Interrupted):
        run(out, pretrained=str(reference))
    monkeypatch.undo()
    run(out, resume=True, pretrained=str(reference))
    assert_same_results(whole, out)


def test_multi_head_run_from_pretrained_weights_records_each_head_s_fit_and_resumes(
    reference, tmp_path, monkeypatch
):
    # each head's network fits the weights its own way (ovr-separate: nine one-output
    # networks); a head's files record its own fit, and --resume in the second head works
    out = tmp_path / "run"
    heads = ("ovr-separate", "softmax")
    interrupt_at(monkeypatch, 9 * 32 + 10)  # ovr-separate's 9 networks x 32 polls, then softmax
    with pytest.raises(Interrupted):
        run(out, head=heads, pretrained=str(reference), epochs=4)
    monkeypatch.undo()
    os.environ["UNSEEN_NUM_THREADS"] = "1"
    assert is_finished(out / "ovr-separate") and not is_finished(out / "softmax")
    run(out, head=heads, pretrained=str(reference), resume=True)
    top = json.loads((out / "config.json").read_text())["pretrained_weights"]
    assert top["softmax"]["new_head"] == "64 -> 9 classes"
    assert top["ovr-separate"]["new_head"] == "64 -> 1 classes in each of 9 networks"
    for head in heads:
        own = json.loads((out / head / "config.json").read_text())["pretrained_weights"]
        assert own == top[head]
        assert json.loads((out / head / "metrics.json").read_text())["pretrained_weights"] == own


def test_relative_pretrained_path_resumes_from_another_directory(
    reference, tmp_path, capsys, monkeypatch
):
    # config.json records the weights' absolute path: --resume elsewhere still finds them
    whole = tmp_path / "whole"
    run(whole, pretrained=str(reference))
    out = tmp_path / "run"
    monkeypatch.chdir(reference.parent)
    interrupt_at(monkeypatch, 8)  # after epoch 1
    with pytest.raises(Interrupted):
        run(out, pretrained=reference.name)
    monkeypatch.undo()
    assert json.loads((out / "config.json").read_text())["pretrained"] == str(reference)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert_same_results(whole, out)


def test_relative_npz_dataset_resumes_elsewhere_and_its_run_predicts(
    reference, tmp_path, capsys, monkeypatch
):
    # an RGBA npz given by a relative path: config.json records it absolute, so --resume
    # works from another directory; alpha is dropped, so `unseen predict` takes its images
    from sklearn.datasets import load_digits

    import unseen

    digits = load_digits()
    grey = (digits.images[:400] * 16).clip(0, 255).astype(np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x_train=rgba[:300], y_train=digits.target[:300],
             x_test=rgba[300:], y_test=digits.target[300:400])  # fmt: skip
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "data")
    interrupt_at(monkeypatch, 8)  # after epoch 1
    with pytest.raises(Interrupted):
        run(out, dataset="npz:d.npz", train_subset=None, test_subset=None)
    monkeypatch.undo()
    saved = json.loads((out / "config.json").read_text())["dataset"]
    assert saved == f"npz:{tmp_path / 'data' / 'd.npz'}"
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    labels = unseen.load(out).predict(rgba[300:310])
    assert labels.shape == (10,)


def test_resume_refuses_training_images_that_changed_during_the_pause(
    reference, tmp_path, capsys, monkeypatch
):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * 16).clip(0, 255).astype(np.uint8)

    def save(n_train: int, flip: bool = False) -> None:
        train = x[:n_train][:, :, ::-1] if flip else x[:n_train]
        np.savez(tmp_path / "d.npz", x_train=train, y_train=digits.target[:n_train],
                 x_test=x[1400:1500], y_test=digits.target[1400:1500])  # fmt: skip

    save(400)
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 8)  # after epoch 1
    with pytest.raises(Interrupted):
        run(out, dataset=f"npz:{tmp_path / 'd.npz'}", train_subset=None, test_subset=None)
    monkeypatch.undo()
    for n_train, flip, counts in (
        (300, False, "(324 training images then, 242 now)"),
        (400, True, ""),
    ):
        save(n_train, flip)  # fewer images (an IndexError before), or the same count changed
        code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
        assert code == 2, err
        assert one_line_error(err) == (
            f"unseen: error: cannot resume {out}: its training and validation images changed "
            f"since the run started{' ' + counts if counts else ''}; restore them, or pass "
            "--overwrite to start again."
        )
    from unseen.checkpoint import data_fingerprint

    empty = torch.zeros(0, 1, 8, 8, dtype=torch.uint8)  # no bytes to add, and no error
    assert data_fingerprint(empty, empty) == {"images": 0, "crc32": 0}
    save(400)  # the same images again: it resumes
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err


def test_resume_needs_no_flags_but_out(reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 3)
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--out", str(out))
    assert code == 130
    assert one_line_error(err).startswith("unseen: stopped by SIGINT in epoch 1, step 3")
    monkeypatch.undo()
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert_same_results(reference, out)


def test_resume_refuses_other_options(reference, tmp_path, capsys):
    unfinished = tmp_path / "run"
    shutil.copytree(reference, unfinished)
    (unfinished / "run.json").unlink()
    code, _, err = cli(capsys, "run", "--resume", "--out", str(unfinished), "--lr", "0.5",
                       "--seed", "3", "--quiet")  # fmt: skip
    line = one_line_error(err)
    assert code == 2
    assert "lr: " in line and "-> 0.5" in line and "seed: 0 -> 3" in line
    assert "out" not in line.split("differ")[1].split(";")[0]


def test_resume_names_the_option_not_what_was_derived_from_it(reference, tmp_path, capsys):
    unfinished = tmp_path / "run"
    shutil.copytree(reference, unfinished)
    (unfinished / "run.json").unlink()
    # --augment strong: named, without the derived augmentation parameters
    code, _, err = cli(capsys, "run", "--resume", "--out", str(unfinished), "--augment",
                       "strong", "--quiet")  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and 'augment: "standard" -> "strong"' in line
    assert "augmentation" not in line and len(line) < 300
    # another dataset: named as such, not as a class name the other dataset lacks
    code, _, err = cli(capsys, "run", "--resume", "--out", str(unfinished), "--dataset",
                       "npz:/nowhere.npz", "--quiet")  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and 'dataset: "digits" -> "npz:/nowhere.npz"' in line


#: options this version added after runs of earlier versions were saved
LATER_OPTIONS = ("ash_percentile", "ash_variant", "scale_percentile", "dice_sparsity",
                 "gen_gamma", "gen_m", "bit_depth")  # fmt: skip


def as_earlier_version(run_dir: Path) -> None:
    """Strip the options added since from a run folder's config.json and checkpoint, as an
    earlier version wrote them."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k not in LATER_OPTIONS}))
    if (run_dir / "checkpoint.pt").is_file():
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        state["config"] = {k: v for k, v in state["config"].items() if k not in LATER_OPTIONS}
        torch.save(state, run_dir / "checkpoint.pt")


def test_a_run_of_an_earlier_version_resumes(reference, tmp_path, capsys, monkeypatch):
    """An option added since counts as its default: an interrupted run of an earlier version
    resumes to the same results, a finished one is left as it is, and `unseen report` groups
    it with a run of this version."""
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 12)
    code, _, _ = cli(capsys, "run", *TINY_ARGS, "--out", str(out))
    assert code == 130
    monkeypatch.undo()
    as_earlier_version(out)
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert_same_results(reference, out)
    as_earlier_version(out)
    code, printed, err = cli(capsys, "run", "--resume", "--out", str(out))
    assert code == 0 and "holds a finished run with these options" in printed, err
    # an option the earlier run did not have, given away from its default: a difference
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--gen-m", "5")
    assert code == 2 and "gen_m: 100 -> 5" in one_line_error(err)  # it ran as the default
    from unseen.report import aggregate_runs

    rows = aggregate_runs([out, reference])
    assert len(rows) == 1 and rows[0]["n_runs"] == 2


def test_a_resume_keeps_the_arithmetic_the_run_started_in(reference, tmp_path, capsys, monkeypatch):
    """`--precision auto` resolved again on resume could switch a run to bf16 halfway (another
    machine, or a version that counts more CPUs as bf16-capable): the checkpoint's stays."""
    from unseen import hardware

    out = tmp_path / "run"
    auto = [a if a != "fp32" else "auto" for a in TINY_ARGS]
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: None)  # auto: fp32
    interrupt_at(monkeypatch, 12)
    code, _, _ = cli(capsys, "run", *auto, "--out", str(out))
    assert code == 130
    monkeypatch.undo()
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: "AVX512-BF16")  # auto now: bf16
    assert hardware.resolve_precision("auto", torch.device("cpu")) == "bf16"
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["precision"] == "fp32"
    assert_same_results(reference, out)  # the fp32 run, as if never interrupted


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"precision": "bf16", "computed_on": "cpu (2 threads)"}, "bf16"),
        ({"precision": "fp32", "computed_on": "cpu (2 threads, AMX)"}, "fp32"),
        ({"precision": "fp16", "computed_on": "cuda (Tesla T4), torch 2.11.0"}, "fp16"),
        # checkpoints of versions that did not record it: what their `auto` chose on a CPU
        ({"computed_on": "cpu (2 threads, AMX), torch 2.14.1"}, "bf16"),
        ({"computed_on": "cpu (2 threads), torch 2.14.1"}, "fp32"),
        ({"computed_on": "cuda (NVIDIA H200), torch 2.11.0"}, None),
    ],
)
def test_resumed_precision_reads_the_checkpoint(tmp_path, saved, expected):
    from unseen.checkpoint import CHECKPOINT_KIND, resumed_precision

    assert resumed_precision(tmp_path) is None  # no checkpoint
    (tmp_path / "ovr").mkdir()  # one head's, for a run of several
    torch.save({"kind": CHECKPOINT_KIND, **saved}, tmp_path / "ovr" / "checkpoint.pt")
    assert resumed_precision(tmp_path) == expected


def test_derived_differences_are_named_by_the_values_inside():
    from unseen.checkpoint import check_same_config

    saved = {"split": {"unseen_names": ["9"], "known": list(range(9))}, "lr": 0.1}
    current = {"split": {"unseen_names": ["8"], "known": list(range(9))}, "lr": 0.1}
    with pytest.raises(ConfigError) as info:
        check_same_config(saved, current, Path("r"))
    assert 'split.unseen_names: ["9"] -> ["8"]' in str(info.value)
    assert "known" not in str(info.value)


def test_run_folders_that_recorded_relative_paths_still_resume(tmp_path, monkeypatch):
    # written before paths were made absolute: read against the working directory
    from unseen.checkpoint import check_same_config

    monkeypatch.chdir(tmp_path)
    saved = {"dataset": "npz:d.npz", "pretrained": "runs/x", "data_root": "data", "lr": 0.1,
             "pretrained_weights": {"new_head": "64 -> 9 classes"}}  # fmt: skip
    current = {"dataset": f"npz:{tmp_path / 'd.npz'}", "pretrained": str(tmp_path / "runs/x"),
               "data_root": str(tmp_path / "data"), "lr": 0.1,
               "pretrained_weights": {"softmax": {"new_head": "64 -> 9 classes"}}}  # fmt: skip
    check_same_config(saved, current, Path("r"))  # the same run: no error
    with pytest.raises(ConfigError, match="pretrained: "):
        check_same_config({**saved, "pretrained": "runs/y"}, current, Path("r"))


def test_config_differences_ignores_only_harmless_keys():
    saved = {"lr": 0.1, "out": "a", "holdout": ["9"], "resume": False, "epochs": 4}
    assert config_differences(saved, {**saved, "out": "b", "resume": True}) == []
    assert (
        config_differences({**saved, "checkpoint_every": 30.0}, {**saved, "checkpoint_every": 0})
        == []
    )
    assert config_differences(saved, {**saved, "holdout": ("9",)}) == []  # tuple == list
    assert config_differences(saved, {**saved, "epochs": 5, "lr": 0.1}) == ["epochs"]
    assert config_differences(saved, {k: v for k, v in saved.items() if k != "lr"}) == ["lr"]


def test_multi_head_run_checkpoints_and_resumes_per_head(tmp_path, monkeypatch):
    from unseen.heads import HEADS

    if "ovr" not in HEADS:
        pytest.skip("needs a second head")
    heads = ("softmax", "ovr")
    ref = tmp_path / "ref"
    run(ref, head=heads, epochs=2)
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 2 * 8 + 3)  # head 2, epoch 1, step 3 (8 polls an epoch)
    with pytest.raises(Interrupted):
        run(out, head=heads, epochs=2)
    assert is_finished(out / "softmax") and not is_finished(out)
    assert (out / "ovr" / CHECKPOINT_FILE).is_file()
    ovr_before = load_torch(out / "ovr" / CHECKPOINT_FILE)["train_seconds"]
    monkeypatch.undo()
    os.environ["UNSEEN_NUM_THREADS"] = "1"
    run(out, head=heads, epochs=2, resume=True)
    for head in heads:
        assert_same_results(ref / head, out / head)
    # the softmax head trained wholly before the interruption, the ovr head partly: both
    # count as training before it, and this process's stages still add up to its total
    wall = json.loads((out / "run.json").read_text())["seconds"]
    stages = ("prepare", "train", "validation", "checkpoint", "eval", "report", "other")
    assert sum(wall[k] for k in stages) == pytest.approx(wall["total"])
    softmax = json.loads((out / "softmax" / "metrics.json").read_text())["train_seconds"]
    assert wall["trained_before_resume"] == pytest.approx(softmax + ovr_before)
    assert strip_timings(json.loads((ref / "metrics.json").read_text())) == strip_timings(
        json.loads((out / "metrics.json").read_text())
    )
    assert not list(out.rglob("checkpoint*.pt"))


def test_resuming_says_when_a_head_finished_earlier_lacks_scores(tmp_path, monkeypatch):
    """A head an earlier version finished lacks the scores added since: resuming the run's
    other head says so, and how to add them."""
    from unseen.experiment import run_experiment

    out = tmp_path / "run"
    interrupt_at(monkeypatch, 2 * 8 + 3)  # in the second head
    with pytest.raises(Interrupted):
        run(out, head=("softmax", "ovr"), epochs=2)
    monkeypatch.undo()
    metrics = json.loads((out / "softmax" / "metrics.json").read_text())
    del metrics["scores"]["msp"]  # as a version without msp would have written it
    (out / "softmax" / "metrics.json").write_text(json.dumps(metrics))
    said: list[str] = []
    cfg = RunConfig(out=str(out), **{**TINY, "head": ("softmax", "ovr"), "epochs": 2})
    run_experiment(cfg.replace(resume=True), progress=False, log=said.append)
    assert (
        f"note: head softmax finished without msp (scores its version did not have); "
        f"`unseen rescore {out}` computes them" in said
    )
    assert not [line for line in said if "head ovr finished without" in line]


# ----------------------------------------------------------------------------- 2. run folders


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "UNSEEN_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "unseen", "run", *TINY_ARGS, "--out", str(out)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out / CHECKPOINT_FILE).is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_checkpoint(proc, out)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    assert not (out / "model.pt").exists()
    assert not is_finished(out)
    assert not list(out.glob(".*.tmp"))  # no temporary file was left behind either
    with pytest.raises(UnseenError, match="not a finished run"):
        require_finished(out)
    # without --resume the folder is refused, with it the run finishes
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--out", str(out))
    assert code == 2 and "unfinished run; pass --resume" in one_line_error(err)
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert_same_results(reference, out)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(reference, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_checkpoint(proc, out)
    first = load_torch(out / CHECKPOINT_FILE)["epoch"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    line = one_line_error(err.decode())
    assert line.startswith("unseen: stopped by SIGTERM") and "checkpoint saved" in line
    state = load_torch(out / CHECKPOINT_FILE)
    assert (state["epoch"], state["step"]) > (first, 0)  # saved at the stop, not before
    code, _, err = cli(capsys, "run", "--resume", "--out", str(out), "--quiet")
    assert code == 0, err
    assert_same_results(reference, out)


def test_existing_run_folders(reference, tmp_path, capsys, monkeypatch):
    finished = tmp_path / "finished"
    shutil.copytree(reference, finished)
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--out", str(finished))
    assert code == 2
    assert "already holds a finished run; pass --overwrite" in one_line_error(err)

    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"mine")
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--out", str(other))
    assert code == 2 and "not a run folder" in one_line_error(err)
    # --resume there is a typo in --out, not a run to continue: refused, nothing written
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--resume", "--out", str(other))
    assert code == 2 and "holds other files but no run to continue" in one_line_error(err)
    assert sorted(p.name for p in other.iterdir()) == ["photo.png"]
    # a log that `unseen run --out DIR | tee DIR/run.log` made first, or a config file: new
    (other / "photo.png").unlink()
    for name in ("run.log", "run.toml"):
        (other / name).write_text("")
    assert check_run_folder(other, resume=False, overwrite=False) == "new"
    with pytest.raises(ConfigError, match="holds other files but no run to continue"):
        check_run_folder(other, resume=True, overwrite=False)
    for name in ("run.log", "run.toml"):
        (other / name).unlink()
    # a temporary file a killed write left behind is not 'other files'
    (other / ".config.json.x1.tmp").write_text("{")
    assert check_run_folder(other, resume=True, overwrite=False) == "resume"

    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--out", str(afile))
    assert code == 2 and "is a file, not a folder" in one_line_error(err)

    for argv, message in [
        (["--resume"], "--resume needs --out"),
        (["--resume", "--overwrite", "--out", str(finished)], "give --resume or --overwrite"),
    ]:
        code, _, err = cli(capsys, "run", *TINY_ARGS, *argv)
        assert code == 2 and message in one_line_error(err)

    # --resume of a finished run trains nothing and reports its metrics
    monkeypatch.setattr("unseen.experiment.train_model", lambda *a, **k: pytest.fail("trained"))
    code, out, _ = cli(capsys, "run", "--resume", "--out", str(finished))
    assert code == 0 and "nothing to train" in out
    assert_same_results(reference, finished)


def test_overwrite_forgets_the_old_run_first(reference, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    (folder / CHECKPOINT_FILE).write_bytes(b"stale")
    # an old head's subfolder (the new run has other heads) and a file of the user's own
    shutil.copytree(reference, folder / "ovr", ignore=shutil.ignore_patterns("ovr"))
    (folder / "notes.txt").write_text("mine")
    assert check_run_folder(folder, resume=False, overwrite=True) == "new"
    seen = {}

    def fake_train(*args, **kwargs):  # what the folder holds while the new run trains
        seen["finished"] = is_finished(folder)
        seen["metrics"] = (folder / "metrics.json").exists()
        seen["old model"] = (folder / "model.pt").exists() or (folder / "scores.npz").exists()
        seen["old head"] = (folder / "ovr").exists()
        raise KeyboardInterrupt

    import unseen.experiment

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(unseen.experiment, "train_model", fake_train)
        with pytest.raises(KeyboardInterrupt):
            run(folder, overwrite=True, epochs=2)
    assert seen == {"finished": False, "metrics": False, "old model": False, "old head": False}
    assert not (folder / CHECKPOINT_FILE).exists()
    assert (folder / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- 3. NaN / inf


def test_finite_guard_records_the_first_bad_step():
    guard = FiniteGuard(torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0]):
        guard.update(torch.tensor(value), step)
    assert guard.first_bad() == (2, float("inf"))
    fresh = FiniteGuard(torch.device("cpu"))
    fresh.update(torch.tensor(0.5), 0)
    assert fresh.first_bad() is None


def test_nan_loss_names_the_exact_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from unseen import heads as heads_module
    from unseen.augment import make_augment_spec
    from unseen.checkpoint import TrainingDiverged
    from unseen.models import create_model
    from unseen.train import TrainSettings, train_model

    softmax = heads_module.HEADS["softmax"]
    calls = {"n": 0}

    def poisoned(logits, targets, smoothing=0.0):
        loss = softmax.loss(logits, targets, smoothing)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 13 else loss  # global step 12

    head = dataclasses.replace(softmax, loss=poisoned)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(50) % 3
    model = create_model("resnet20", 1, 3, 8)
    ckpt = Checkpointing(tmp_path / CHECKPOINT_FILE, {"lr": 0.1})
    settings = TrainSettings(epochs=4, batch_size=10, lr=0.1)  # 5 steps an epoch
    spec = make_augment_spec("standard", 8, False)
    with pytest.raises(TrainingDiverged) as info:
        train_model(model, x, y, settings, head, spec, torch.device("cpu"), progress=False,
                    checkpoint=ckpt)  # fmt: skip
    message = str(info.value)
    assert "loss became nan in epoch 3, step 3 of 5" in message
    assert "--lr 0.1 now" in message and str(ckpt.path) in message
    assert info.value.exit_code == 2
    state = load_torch(ckpt.path)
    assert (state["epoch"], state["step"]) == (2, 0)  # the end of the last good epoch
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_divergence_message_waits_for_a_background_write_and_names_its_failure(tmp_path):
    from concurrent.futures import Future

    from unseen.checkpoint import diverged

    ckpt = Checkpointing(tmp_path / CHECKPOINT_FILE, {"lr": 0.1})
    failed: Future = Future()
    failed.set_exception(OSError(28, "No space left on device"))
    ckpt._pending = failed  # a GPU run's writer thread, whose last write failed
    message = str(diverged(1, 2, 5, float("nan"), 0.1, ckpt))
    assert message.endswith(
        "; no checkpoint had been saved yet (the last write failed: OSError: [Errno 28] No space "
        "left on device)."
    )
    ckpt.path.write_bytes(b"an earlier, complete checkpoint")
    assert f"kept in {ckpt.path}." in str(diverged(1, 2, 5, float("nan"), 0.1, ckpt))


def test_weights_that_overflow_in_an_epoch_s_last_update_are_caught(tmp_path):
    # every loss is finite, but the last update of epoch 2 leaves infinite weights: no
    # checkpoint of them, and one clear error instead of a traceback in the metrics
    from unseen import heads as heads_module
    from unseen.augment import make_augment_spec
    from unseen.checkpoint import TrainingDiverged
    from unseen.models import create_model
    from unseen.train import TrainSettings, train_model

    softmax = heads_module.HEADS["softmax"]
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 3, 8)
    calls = {"n": 0}

    def overflowing(logits, targets, smoothing=0.0):
        loss = softmax.loss(logits, targets, smoothing)
        calls["n"] += 1
        if calls["n"] == 10:  # global step 9: epoch 2, step 5 of 5
            with torch.no_grad():
                model.head.bias[0] = float("inf")  # not needed by the backward pass
        return loss

    head = dataclasses.replace(softmax, loss=overflowing)
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(50) % 3
    ckpt = Checkpointing(tmp_path / CHECKPOINT_FILE, {"lr": 0.1})
    settings = TrainSettings(epochs=4, batch_size=10, lr=0.1)  # 5 steps an epoch
    with pytest.raises(TrainingDiverged) as info:
        train_model(model, x, y, settings, head, make_augment_spec("none", 8, False),
                    torch.device("cpu"), progress=False, checkpoint=ckpt)  # fmt: skip
    assert "weights became NaN or infinite by epoch 2, step 5 of 5" in str(info.value)
    assert info.value.exit_code == 2
    state = load_torch(ckpt.path)
    assert (state["epoch"], state["step"]) == (1, 0)  # the end of epoch 1, the last good one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_absurd_learning_rate_stops_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", *TINY_ARGS, "--lr", "1e6", "--out", str(out))
    line = one_line_error(err)
    assert code == 2
    assert "training diverged: the loss became" in line and "in epoch 1, step" in line
    assert "(--lr 1e+06 now, try --lr 0.0433, auto's value for this batch size)" in line
    assert line.endswith("no checkpoint had been saved yet.")
    assert not (out / "metrics.json").exists() and not is_finished(out)


# ----------------------------------------------------------------------------- 5. bad files


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_files(tmp_path, capsys, suffix):
    rng = np.random.default_rng(0)
    for stem, shape in [("train-images-idx3-ubyte", (20, 28, 28)), ("train-labels-idx1-ubyte", (20,)),
                        ("t10k-images-idx3-ubyte", (10, 28, 28)), ("t10k-labels-idx1-ubyte", (10,))]:  # fmt: skip
        _write_idx(tmp_path / (stem + suffix), rng.integers(0, 10, shape))
    bad = tmp_path / ("train-images-idx3-ubyte" + suffix)
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    code, _, err = cli(capsys, "run", "--dataset", "mnist", "--data-root", str(tmp_path),
                       "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2
    assert f"{bad} is truncated or not an IDX file" in one_line_error(err)


def test_bad_npz_files(tmp_path, capsys):
    good = dict(
        x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 4,
        x_test=np.zeros((8, 8, 8), np.uint8), y_test=np.arange(8) % 4,
    )  # fmt: skip
    cases = {}
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, **good)
    truncated.write_bytes(truncated.read_bytes()[:300])
    cases[truncated] = "is truncated or damaged"
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**good, "x_train": np.array([None] * 20, dtype=object)})
    cases[objects] = "holds object arrays, which are not loaded (unpickling can run code)"
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, x_train=good["x_train"])
    cases[lacking] = "lacks the arrays y_train, x_test, y_test (it has: x_train)"
    keras = tmp_path / "keras.npz"
    np.savez(keras, X_train=good["x_train"], Y_train=good["y_train"])
    cases[keras] = "lacks the arrays x_train, y_train, x_test, y_test (it has: X_train, Y_train)"
    floats = tmp_path / "floats.npz"
    np.savez(floats, **{**good, "x_train": good["x_train"].astype(np.float32)})
    cases[floats] = (
        "must be uint8 images, not float32 (floats in [0, 1]: save (x * 255).round().astype"
    )
    for path, expected in cases.items():
        code, _, err = cli(capsys, "run", "--dataset", f"npz:{path}", "--out", str(tmp_path / "r"))
        assert code == 2, path
        assert expected in one_line_error(err), err
    # labels as a column (N x 1) are read as the N labels they are
    column = tmp_path / "column.npz"
    np.savez(column, **{**good, "y_train": good["y_train"][:, None]})
    code, _, err = cli(capsys, "run", "--dataset", f"npz:{column}", "--epochs", "1",
                       "--val-fraction", "0.25", "--no-report", "--out", str(tmp_path / "c"))  # fmt: skip
    assert code == 0, err


def test_bad_image_folders(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("cat", "dog", "owl"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), color=i * 40).save(root / split / cls / f"{i}.png")
    broken = root / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    code, _, err = cli(capsys, "run", "--dataset", f"folder:{root}", "--out", str(tmp_path / "r"))
    assert code == 2 and f"image {broken} could not be decoded" in one_line_error(err)

    broken.unlink()
    for f in (root / "test" / "owl").iterdir():
        f.unlink()
    code, _, err = cli(capsys, "run", "--dataset", f"folder:{root}", "--out", str(tmp_path / "r"))
    line = one_line_error(err)
    assert code == 2 and "owl" in line and str(root / "test") in line


def test_a_class_only_the_test_folder_has_is_held_out(tmp_path, capsys):
    # deployment data: train/ lacks the novel class that test/ holds
    from PIL import Image

    root = tmp_path / "images"
    for split, names in (("train", ("cat", "dog", "owl")), ("test", ("cat", "dog", "fox", "owl"))):
        for c, cls in enumerate(names):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (8, 8), color=c * 60 + i).save(root / split / cls / f"{i}.png")
    args = (
        "run",
        "--dataset",
        f"folder:{root}",
        "--epochs",
        "1",
        "--no-report",
        "--val-fraction",
        "0.25",
    )
    code, out, err = cli(capsys, *args, "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "known: cat, dog, owl | unseen: fox" in out
    assert "note: class fox has no training images (only the test set holds any)" in out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["unseen_classes"] == ["fox"] and metrics["num_test_unseen"] == 4
    code, out, _ = cli(capsys, *args, "--holdout", "owl", "--out", str(tmp_path / "r2"))
    assert code == 0 and "known: cat, dog | unseen: fox, owl" in out
    code, _, err = cli(capsys, *args, "--known", "cat,fox", "--out", str(tmp_path / "r3"))
    assert code == 2 and "--known names 'fox', which has no training images" in one_line_error(err)
    # test/Dog beside train/dog: most likely one class written two ways, and said so
    (root / "test" / "fox").rename(root / "test" / "Dog")
    code, out, err = cli(capsys, *args, "--out", str(tmp_path / "r4"))
    assert code == 0, err
    assert "'Dog' and 'dog' differ only in case or spaces: the same class?" in out


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """An unfinished run folder (config.json) and a real checkpoint of it, loaded."""
    os.environ["UNSEEN_NUM_THREADS"] = "1"
    out = tmp_path_factory.mktemp("ckpt") / "run"
    with pytest.MonkeyPatch.context() as mp:
        # ask for a stop as soon as the first checkpoint exists: "after epoch 1"
        mp.setattr(
            Checkpointing,
            "stop_requested",
            lambda self: signal.SIGTERM if self.path.is_file() else None,
        )
        with pytest.raises(Interrupted):
            run(out)
    return out, load_torch(out / CHECKPOINT_FILE)


def _unfinished_with(tmp_path: Path, saved: Path, payload) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(saved / "config.json", folder / "config.json")
    torch.save(payload, folder / CHECKPOINT_FILE)
    return folder


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda s: [1, 2, 3], "is not an unseen training checkpoint"),
        (lambda s: {**s, "model": [torch.zeros(3)]}, "holds a list, not a state dict"),
        (
            lambda s: {**s, "model": {**s["model"], "head.weight": torch.zeros(5, 7)}},
            "head.weight is 5x7, the model needs 9x64",
        ),
        (
            lambda s: {**s, "model": {k: v for k, v in s["model"].items() if k != "head.bias"}},
            "1 weights are missing (e.g. head.bias)",
        ),
        (lambda s: {**s, "config": {**s["config"], "epochs": 9}}, "epochs: 9 -> 4"),
    ],
)
def test_bad_checkpoints_give_one_line(saved_checkpoint, tmp_path, capsys, tamper, expected):
    saved, state = saved_checkpoint
    folder = _unfinished_with(tmp_path, saved, tamper(state))
    code, _, err = cli(capsys, "run", "--resume", "--out", str(folder), "--quiet")
    assert code == 2
    assert expected in one_line_error(err)


def test_truncated_checkpoint(saved_checkpoint, tmp_path, capsys):
    saved, state = saved_checkpoint
    folder = _unfinished_with(tmp_path, saved, state)
    data = (folder / CHECKPOINT_FILE).read_bytes()
    (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    code, _, err = cli(capsys, "run", "--resume", "--out", str(folder), "--quiet")
    assert code == 2
    line = one_line_error(err)
    assert "could not be loaded as a weights-only PyTorch file" in line
    assert "it is truncated, damaged or not a PyTorch file" in line
    assert line.endswith("delete it to train this run from the start (a sweep then reruns it), "
                         "or pass --overwrite.")  # fmt: skip


@pytest.mark.parametrize(
    "content", [b"hello world\n", b"", bytes(range(256)), pickle.dumps({"a": 1}, protocol=4)]
)
def test_files_that_are_not_pytorch_files_are_named_so(tmp_path, content, recwarn):
    # torch's own messages here: '101', 'pop from empty list', or advice to load unsafely
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UnseenError) as info:
        load_torch(path)
    message = str(info.value)
    assert "it is truncated, damaged or not a PyTorch file" in message
    assert "weights_only" not in message and len(message.splitlines()) == 1
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # stderr stays clean


class _Payload:
    """A pickle that runs code when unpickled: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_carrying_code_is_refused(saved_checkpoint, tmp_path, capsys):
    saved, state = saved_checkpoint
    # control: the payload does run code when unpickled the unsafe way
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    folder = _unfinished_with(tmp_path, saved, {**state, "model": _Payload(marker)})
    code, _, err = cli(capsys, "run", "--resume", "--out", str(folder), "--quiet")
    assert code == 2
    line = one_line_error(err)
    assert "could not be loaded as a weights-only PyTorch file" in line
    assert "Python objects besides tensors, whose unpickling could run code" in line
    with pytest.raises(UnseenError):
        load_torch(folder / CHECKPOINT_FILE)
    assert not marker.exists()


def test_load_weights_explains_what_does_not_fit():
    from unseen.models import create_model

    model = create_model("resnet20", 1, 3, 8)
    good = model.state_dict()
    assert state_dict_problems(model, good) is None
    assert "not a state dict" in state_dict_problems(model, {"head.weight": "x"})
    assert "holds a str" in state_dict_problems(model, "weights")
    extra = {**good, "extra.weight": torch.zeros(1)}
    assert "1 are unknown (e.g. extra.weight)" in state_dict_problems(model, extra)
    with pytest.raises(UnseenError, match=r"^the weights in f.pt do not fit this model: 1 shapes"):
        load_weights(model, {"state_dict": {**good, "head.bias": torch.zeros(4)}}, "f.pt")
    load_weights(model, {"state_dict": good}, "f.pt")  # model.pt layout loads


# ----------------------------------------------------------------------------- 6. determinism


def test_same_seed_same_metrics_fp32(reference, tmp_path):
    again = tmp_path / "again"
    run(again)
    assert_same_results(reference, again)
    # and the comparison can fail: another seed gives other results
    other = tmp_path / "other"
    run(other, seed=1)
    assert results(reference)[0] != results(other)[0]


def test_same_seed_same_metrics_bf16(tmp_path):
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    except RuntimeError as exc:  # pragma: no cover - CPUs without bf16 autocast
        pytest.skip(f"no bf16 autocast on this CPU: {exc}")
    a, b = tmp_path / "a", tmp_path / "b"
    run(a, precision="bf16", epochs=2)
    run(b, precision="bf16", epochs=2)
    assert_same_results(a, b)


def test_config_errors_never_touch_the_folder(reference, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = cli(capsys, "run", "--overwrite", "--out", str(folder), "--lr", "-1")
    assert code == 2 and "--lr must be positive and finite" in one_line_error(err)
    assert sorted(p.name for p in folder.iterdir()) == before and is_finished(folder)


def test_check_run_folder_states(tmp_path):
    assert check_run_folder(tmp_path / "absent", resume=False, overwrite=False) == "new"
    (tmp_path / "empty").mkdir()
    assert check_run_folder(tmp_path / "empty", resume=True, overwrite=False) == "new"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    assert check_run_folder(unfinished, resume=True, overwrite=False) == "resume"
    with pytest.raises(ConfigError, match="holds an unfinished run"):
        check_run_folder(unfinished, resume=False, overwrite=False)


def test_background_checkpoint_is_a_snapshot_written_whole(tmp_path):
    """save(background=True) copies the state first: changing the model afterwards does not
    reach the file, and wait() leaves a checkpoint that resumes to the saved weights."""
    from unseen.checkpoint import Checkpointing
    from unseen.train import TrainResult

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator().manual_seed(1)
    ck = Checkpointing(tmp_path / "ck.pt", {"a": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    buf = opt.state[model.weight]["momentum_buffer"].clone()
    ck.save(model=model, optimizer=opt, scheduler=sched, generator=gen, history=[{"epoch": 1, "seconds": 0.1}],
            images_seen=4, train_seconds=0.1, epoch=1, step=0, epoch_state=None,
            background=True)  # fmt: skip
    with torch.no_grad():  # training goes on while the file is written
        model.weight.add_(100.0)
        opt.state[model.weight]["momentum_buffer"].add_(100.0)
    ck.wait()
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda _: 1.0)
    resumed = Checkpointing(tmp_path / "ck.pt", {"a": 1}, resume=True)
    pos = resumed.start(model=fresh, optimizer=fresh_opt, scheduler=fresh_sched,
                        generator=torch.Generator(), result=TrainResult())  # fmt: skip
    assert pos.epoch == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k])
    assert torch.equal(fresh_opt.state[fresh.weight]["momentum_buffer"], buf)


@pytest.mark.parametrize(
    "every, saved_after",
    [(0.0, [1, 2, 3, 4, 5, 6, 7]), (2.5, [3, 6, 7]), (1e9, [7])],
)
def test_checkpoint_every_saves_by_training_time_and_after_the_last_epoch(
    tmp_path, monkeypatch, every, saved_after
):
    """--checkpoint-every: a checkpoint at the end of the first epoch that ends that many
    seconds after the last one, and always after the last epoch. Every epoch takes one
    second of a fake clock."""
    from types import SimpleNamespace

    from unseen import checkpoint as checkpoint_module
    from unseen import heads as heads_module
    from unseen.augment import make_augment_spec
    from unseen.models import create_model
    from unseen.train import TrainSettings, train_model

    now, saves = [0.0], []
    fake_time = SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(checkpoint_module, "time", fake_time)
    real_save = checkpoint_module.save_torch
    monkeypatch.setattr(
        checkpoint_module,
        "save_torch",
        lambda path, state: (saves.append(state["epoch"]), real_save(path, state)),
    )

    def one_second(epoch, row):
        now[0] += 1.0

    torch.manual_seed(0)
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(30) % 3
    ckpt = Checkpointing(tmp_path / CHECKPOINT_FILE, {"lr": 0.1}, every=every)
    train_model(create_model("resnet20", 1, 3, 8), x, y, TrainSettings(epochs=7, batch_size=10),
                heads_module.HEADS["softmax"], make_augment_spec("standard", 8, False),
                torch.device("cpu"), progress=False, on_epoch_end=one_second,
                checkpoint=ckpt)  # fmt: skip
    assert saves == saved_after
    assert load_torch(ckpt.path)["epoch"] == 7

    # a stop is saved at once, whether or not a checkpoint is due
    saves.clear()

    def stop_after_epoch_2(epoch, row):
        one_second(epoch, row)
        if epoch == 1:
            ckpt.stop = SimpleNamespace(requested=signal.SIGINT)

    ckpt = Checkpointing(tmp_path / "stopped.pt", {"lr": 0.1}, every=every)
    with pytest.raises(Interrupted, match="after epoch 2"):
        train_model(create_model("resnet20", 1, 3, 8), x, y,
                    TrainSettings(epochs=7, batch_size=10), heads_module.HEADS["softmax"],
                    make_augment_spec("standard", 8, False), torch.device("cpu"),
                    progress=False, on_epoch_end=stop_after_epoch_2,
                    checkpoint=ckpt)  # fmt: skip
    assert saves[-1] == 2 and load_torch(ckpt.path)["epoch"] == 2


def test_run_files_get_the_usual_permissions(tmp_path):
    """Files are written to a private temporary file and renamed: the result must still be
    readable as any file the user creates (umask), not 0600 like mkstemp's."""
    from unseen import runfolder

    path = runfolder.atomic_write(tmp_path / "metrics.json", lambda fh: fh.write(b"{}"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~runfolder._UMASK
    if runfolder._UMASK == 0o022:
        assert path.stat().st_mode & 0o777 == 0o644


def test_resuming_with_another_thread_count_warns_that_results_will_differ(tmp_path, capsys):
    # a CPU run's rounding depends on its thread count: a resume with another one cannot
    # repeat the uninterrupted run bit for bit, and says so instead of promising it
    from unseen.checkpoint import Checkpointing
    from unseen.train import TrainResult

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    threads = torch.get_num_threads()
    Checkpointing(tmp_path / "ck.pt", {"a": 1}).save(
        model=model, optimizer=opt, scheduler=sched, generator=torch.Generator(), history=[],
        images_seen=0, train_seconds=0.0, epoch=1, step=0, epoch_state=None)  # fmt: skip
    for resume_threads, warned in ((threads, False), (threads + 1, True)):
        said = []
        resumed = Checkpointing(tmp_path / "ck.pt", {"a": 1}, resume=True, warn=said.append)
        torch.set_num_threads(resume_threads)
        try:
            resumed.start(model=model, optimizer=opt, scheduler=sched,
                          generator=torch.Generator(), result=TrainResult())  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        assert bool(said) == warned, said
    assert f"trained on cpu ({threads} thread" in said[0] and "bit for bit" in said[0]
    # by default on stderr, so that --quiet and sweeps (which run without a log) show it too
    torch.set_num_threads(threads + 1)
    try:
        Checkpointing(tmp_path / "ck.pt", {"a": 1}, resume=True).start(
            model=model, optimizer=opt, scheduler=sched, generator=torch.Generator(),
            result=TrainResult())  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().err.startswith("unseen: warning: this run trained on cpu")


def test_a_network_with_nan_outputs_ends_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    # finite weights do not rule out NaN outputs (batch-norm statistics of 1 x 1 pixel images
    # overflowed in evaluation mode): the run stops before scoring, as a diverged one does
    import unseen.experiment as experiment

    real = experiment.forward_pass

    def nan_outputs(*args, **kwargs):
        out = real(*args, **kwargs)
        out.logits[0, 0] = float("nan")
        return out

    monkeypatch.setattr(experiment, "forward_pass", nan_outputs)
    code = main(["run", "--epochs", "1", "--train-subset", "200", "--no-report",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "gives NaN or infinite outputs for 1 of the" in err and "test images" in err


def test_a_run_with_every_class_known_says_nothing_is_unseen(tmp_path, capsys):
    known = ",".join(str(i) for i in range(10))
    assert main(["run", "--known", known, "--epochs", "1", "--train-subset", "200",
                 "--no-report", "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    assert "note: every class is known, so no test image is unseen" in capsys.readouterr().out


def test_a_stem_on_a_model_with_one_stem_is_a_note(tmp_path, capsys):
    # earlier versions recorded it silently; refusing it now would strand their run folders
    assert main(["run", "--stem", "small", "--epochs", "1", "--train-subset", "200",
                 "--no-report", "--out", str(tmp_path / "r")]) == 0  # fmt: skip
    assert (
        "note: --stem small has no effect: resnet20 has one input stem" in capsys.readouterr().out
    )


def test_known_auto_is_recorded_as_the_default_split(tmp_path, capsys):
    # recorded unresolved, `--known auto` and the default could not resume each other
    args = ["--epochs", "1", "--train-subset", "200", "--no-report", "--out", str(tmp_path / "r")]
    assert main(["run", "--known", "auto", *args]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["holdout"] == ["9"] and saved["known"] is None
    capsys.readouterr()
    assert main(["run", "--resume", *args]) == 0  # the default spelled out or not: one run
    assert "holds a finished run with these options" in capsys.readouterr().out


def test_default_run_folders_are_claimed_so_two_runs_never_share_one(tmp_path, monkeypatch):
    from unseen.runfolder import default_run_dir

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261129-120000")  # the same second
    first = default_run_dir("npz:/data/my set.npz", ["Ankle boot"], tmp_path / "runs")
    second = default_run_dir("npz:/data/my set.npz", ["Ankle boot"], tmp_path / "runs")
    assert first.name == "20261129-120000-my-set.npz-ankle-boot" and first.is_dir()
    assert second.name == first.name + "-2" and second.is_dir()


def test_ctrl_c_while_the_command_line_starts_is_one_line(monkeypatch, capsys):
    # building the parser imports torch (seconds): a Ctrl-C then is no traceback either
    import unseen.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(unseen.cli, "build_parser", interrupted)
    assert unseen.cli.main(["run"]) == 130
    assert capsys.readouterr().err == "unseen: interrupted.\n"


def test_a_signal_after_trainings_last_look_is_passed_on():
    """SIGTERM while catch_signals is still active but training no longer looks (the report's
    imports waited for on a GPU): passed on to the handler it would have met, not lost."""
    import signal

    from unseen.checkpoint import SigtermStop, StopSignal, sigterm_raises

    with sigterm_raises(), pytest.raises(SigtermStop), StopSignal():  # a serial sweep's run
        signal.raise_signal(signal.SIGTERM)  # recorded; nothing reads it any more
    with sigterm_raises(), pytest.raises(ValueError), StopSignal():  # acted on: not sent again
        signal.raise_signal(signal.SIGTERM)
        raise ValueError
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
