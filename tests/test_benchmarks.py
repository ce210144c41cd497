"""The benchmark scripts stay runnable: a tiny CPU run of each, and their one-line refusals."""

from __future__ import annotations

import importlib.util
import json
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
    assert set(out["evaluation"]["per_score_seconds"]) >= {"msp", "energy", "mahalanobis", "knn"}
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
