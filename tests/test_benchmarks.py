"""The benchmark scripts stay runnable: a tiny CPU run of each, and their one-line refusals."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_reports_both_loops_and_their_ratio(capsys):
    bench = load("bench_train")
    args = ["--dataset", "digits", "--device", "cpu", "--images", "256", "--batch-size", "64",
            "--workers", "0", "--target-accuracy", "0.5", "--epochs", "2", "--json"]  # fmt: skip
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    tool, conv = out["tool"]["images_per_second"], out["conventional"]["images_per_second"]
    assert tool > 0 and conv > 0
    assert out["speedup"] == pytest.approx(tool / conv)
    assert out["tool"]["cuda_graphs"] is False
    ev = out["evaluation"]
    assert ev["test_images"] == 540
    assert ev["forward_seconds"] > 0 and ev["forward_seconds_unfolded"] > 0
    assert ev["fold_batch_norm_seconds"] > 0
    assert set(ev["per_score_seconds"]) >= {"msp", "energy", "mahalanobis", "knn"}
    assert set(ev["per_score_seconds_warm"]) == set(ev["per_score_seconds"])
    assert all(isinstance(v, float) for v in ev["per_score_seconds_warm"].values())
    assert out["time_to_accuracy"]["epochs"] == 2 and out["peak_memory_mib"] > 0


def test_bench_train_refuses_cuda_graphs_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    bench = load("bench_train")
    assert bench.main(["--dataset", "digits", "--device", "cpu", "--cuda-graphs", "both"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need a CUDA device" in err[0]


def test_profile_step_needs_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert load("profile_step").main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    every = ["--dtype", "bf16", "fp16", "--layout", "channels_last", "nchw"]
    assert load("profile_step").main([*every, "--cudnn-benchmark", "both"]) == 2  # parsed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_step_times_every_combination_asked_for_on_a_gpu(capsys):
    every = ["--dtype", "bf16", "fp16", "--layout", "channels_last", "nchw"]
    args = ["--batch-size", "16", "--steps", "2", *every, "--cudnn-benchmark", "both"]
    assert load("profile_step").main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("batch 16, ")]
    assert len(lines) == 8  # 2 dtypes x 2 layouts x cuDNN autotuning off and on
    assert sum("graphed" in ln for ln in lines) == 4  # bf16 only


@pytest.mark.parametrize(
    "script, args, said",
    [
        ("startup", ["--dataset", "nosuch"], "--dataset 'nosuch' is not known"),
        ("bench_train", ["--model", "nosuch"], "--model 'nosuch' is not known"),
        ("bench_train", ["--dataset", "digits", "--batch-size", "0"], "--batch-size must be"),
    ],
)
def test_the_benchmarks_refuse_what_a_user_mistyped_in_one_line(script, args, said, capsys):
    assert load(script).main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{script}: {said}")


def test_startup_times_each_stage_and_the_total(capsys):
    assert load("startup").main(["--dataset", "digits", "--device", "cpu"]) == 0
    *lines, last = capsys.readouterr().out.strip().splitlines()
    # yes or no: other tests in this process may have imported it (a run alone: no)
    assert last in ("torch._dynamo imported: no", "torch._dynamo imported: yes")
    stages = {line.rsplit(None, 2)[0]: float(line.rsplit(None, 2)[1]) for line in lines}
    expected = ["import torch ", "start cpu", "first convolution", "import unseen.experiment",
                "import sklearn.model_selection", "import matplotlib.font_manager",
                "import unseen.report", "load digits (1797 images)", "total"]  # fmt: skip
    assert len(stages) == len(expected)
    assert all(name.startswith(e) for name, e in zip(stages, expected, strict=True)), stages
    *parts, total = stages.values()
    assert total >= sum(parts) - 1e-3  # the stages follow one another from the script's start


SMALL = ["--dataset", "digits", "--device", "cpu", "--workers", "0"]


def test_bench_train_terminates_with_two_batches_an_epoch():
    # 256 images at batch 128: two batches an epoch, fewer than the conventional loop's two
    # untimed ones; its timer once started only at the third batch *of an epoch*, so never
    cmd = [sys.executable, str(BENCHMARKS / "bench_train.py"), *SMALL,
           "--images", "256", "--batch-size", "128", "--json"]  # fmt: skip
    env = {**os.environ, "UNSEEN_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["conventional"]["images_timed"] >= 256
    assert out["conventional"]["images_per_second"] > 0


def test_bench_train_refuses_a_dataset_too_small_to_split_in_one_line(tmp_path, capsys):
    from test_data import make_idx_set

    make_idx_set(tmp_path, gz=True, n_train=60, n_test=20)  # 6 validation images, 9 classes
    bench = load("bench_train")
    assert bench.main(["--data-root", str(tmp_path), "--device", "cpu", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_train: --val-fraction 0.1 keeps 6 of 54")


def test_bench_train_refuses_fewer_images_than_one_batch(capsys):
    bench = load("bench_train")
    # --skip-conventional: without the check the conventional loop, with an empty loader,
    # would spin forever
    assert (
        bench.main([*SMALL, "--images", "100", "--batch-size", "128", "--skip-conventional"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--images" in err[0] and "128" in err[0]


def test_bench_train_needs_four_full_batches_for_cuda_graphs():
    # GraphedStep warms up 3 steps and captures on the 4th full batch: all of it has to happen
    # in the untimed first epoch
    bench = load("bench_train")
    assert bench.images_needed(512, graphed=True) == 4 * 512
    assert bench.images_needed(512, graphed=False) == 512
    assert "2048" in bench.too_few_images(2047, 512, graphed=True)
    assert bench.too_few_images(2048, 512, graphed=True) is None


def test_bench_train_rejects_unknown_precisions_and_runs_fp16(capsys):
    bench = load("bench_train")
    small = [*SMALL, "--images", "128", "--batch-size", "64", "--skip-conventional", "--json"]
    with pytest.raises(SystemExit) as exc:
        bench.main([*small, "--precision", "fp8"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    # fp16 (once printed as fp16 and run as fp32): run as fp16, with its loss scaling
    assert bench.main([*small, "--precision", "fp16"]) == 0
    assert json.loads(capsys.readouterr().out)["tool"]["precision"] == "fp16"


def test_bench_train_counts_the_images_it_trained(capsys):
    # 257 images at batch 64: unseen's loop drops the last batch of one image (batch norm
    # needs two); the conventional loop runs whole batches until it has seen 257 or more
    bench = load("bench_train")
    assert bench.main([*SMALL, "--images", "257", "--batch-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tool, conv = out["tool"], out["conventional"]
    assert out["images_requested"] == 257
    assert tool["images_timed"] == 256
    assert conv["images_timed"] == 320
    for loop in (tool, conv):
        assert loop["images_per_second"] == pytest.approx(
            loop["images_timed"] / loop["timed_seconds"]
        )


def test_bench_train_rounds_alternate_the_loops_and_report_the_median_ratio(capsys, monkeypatch):
    bench = load("bench_train")
    order = []
    for name in ("tool_images_per_second", "conventional_images_per_second"):
        real = getattr(bench, name)
        monkeypatch.setattr(
            bench, name, lambda *a, _r=real, _n=name: order.append(_n[:4]) or _r(*a)
        )
    assert (
        bench.main([*SMALL, "--images", "128", "--batch-size", "64", "--rounds", "3", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert order == ["tool", "conv", "conv", "tool", "tool", "conv"]  # 1: tool first, 2: conv...
    rounds = out["rounds"]
    assert [r["first"] for r in rounds] == ["tool", "conventional", "tool"]
    assert rounds[0]["tool"] == out["tool"]["images_per_second"]  # round 1 is the one reported
    assert rounds[0]["conventional"] == out["conventional"]["images_per_second"]
    for r in rounds:
        assert r["speedup"] == pytest.approx(r["tool"] / r["conventional"])
    assert out["speedup"] == sorted(r["speedup"] for r in rounds)[1]  # the median of three
    assert set(out["peak_memory"]["mib"]) == {"tool", "evaluation", "conventional", "rounds"}
    assert bench.main([*SMALL, "--images", "128", "--batch-size", "64", "--rounds", "2"]) == 0
    text = capsys.readouterr().out
    line = next(s for s in text.splitlines() if s.startswith("  rounds"))
    two = [float(w.rstrip("x,")) for w in line.split("(")[0].split(":")[1].split()]
    assert len(two) == 2  # an even count: the median is the mean of the middle two
    speedup = next(s for s in text.splitlines() if s.startswith("speedup"))
    assert "(median of 2 rounds)" in speedup
    assert float(speedup.split(":")[1].split("x")[0]) == pytest.approx(sum(two) / 2, abs=0.006)
    assert "rounds 2 on" in text  # their peak memory, a phase of its own


@pytest.mark.parametrize(
    "args, said",
    [(["--rounds", "0"], "--rounds must be 1 or more, not 0."),
     (["--rounds", "2", "--skip-conventional"], "it cannot go with --skip-conventional")],
)  # fmt: skip
def test_bench_train_refuses_rounds_it_cannot_time(args, said, capsys):
    assert load("bench_train").main([*SMALL, "--images", "128", "--batch-size", "64", *args]) == 2
    assert said in capsys.readouterr().err


def test_bench_train_reports_peak_memory_per_phase(capsys):
    bench = load("bench_train")
    args = [*SMALL, "--images", "192", "--batch-size", "64", "--json"]
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    mem = out["peak_memory"]
    assert mem["measure"] == "process max RSS so far (cannot be reset)"  # a CPU run
    assert set(mem["mib"]) == {"tool", "conventional", "evaluation"}
    assert all(v > 0 for v in mem["mib"].values())
    # RSS so far only grows, phase after phase
    assert mem["mib"]["tool"] <= mem["mib"]["evaluation"] <= mem["mib"]["conventional"]
    assert out["peak_memory_mib"] == max(mem["mib"].values())
    assert "conventional_workers_max_rss_mib" not in mem  # no workers, nothing to report


def test_bench_train_text_says_the_layout_it_used(capsys, monkeypatch):
    # --compile trains in NCHW (inductor asserts on channels_last weights in backward); the
    # text line once said channels_last regardless. Compiling costs ~30 s on a CPU, so the
    # tool's loop trains uncompiled here: only the reporting is under test
    bench = load("bench_train")
    real = bench.train_model

    def uncompiled(model, x, y, s, *rest, **kw):
        return real(model, x, y, dataclasses.replace(s, compile=False), *rest, **kw)

    monkeypatch.setattr(bench, "train_model", uncompiled)
    args = [*SMALL, "--images", "128", "--batch-size", "64", "--skip-conventional", "--compile"]
    assert bench.main(args) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("unseen loop"))
    assert "NCHW" in line and "channels_last" not in line and "compiled" in line
    assert bench.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tool"]["channels_last"] is False


def test_bench_precision_times_both_precisions_side_by_side(capsys):
    bench = load("bench_precision")
    args = ["--device", "cpu", "--batch-size", "8", "--image-size", "8", "--steps", "1",
            "--rounds", "3", "--json"]  # fmt: skip
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rounds = out["images_per_s_rounds"]
    assert len(rounds["fp32"]) == len(rounds["bf16"]) == 3
    medians = out["images_per_s_median"]
    assert out["bf16_over_fp32"] == pytest.approx(medians["bf16"] / medians["fp32"], rel=1e-2)
    assert out["auto_precision"] == ("bf16" if out["cpu_bf16_units"] else "fp32")
    assert "fp16" not in rounds  # emulated on a CPU: timed only when asked for


def test_bench_precision_times_fp16_with_loss_scaling_when_asked(capsys):
    bench = load("bench_precision")
    args = ["--device", "cpu", "--batch-size", "4", "--image-size", "8", "--steps", "1",
            "--rounds", "1", "--precisions", "fp16", "--json"]  # fmt: skip
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["images_per_s_rounds"]) == ["fp32", "fp16"]  # fp32 is always the baseline
    m16, m32 = out["images_per_s_median"]["fp16"], out["images_per_s_median"]["fp32"]
    # the medians are printed to 0.1 images/s; fp16, emulated here, runs a few images/s
    low, high = (m16 - 0.05) / (m32 + 0.05), (m16 + 0.05) / (m32 - 0.05)
    assert low - 1e-3 <= out["fp16_over_fp32"] <= high + 1e-3
    assert "bf16_over_fp32" not in out
