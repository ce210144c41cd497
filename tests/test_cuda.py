"""Whole runs on a CUDA GPU: the paths the CPU-only CI never takes.

Skipped without a GPU; `benchmarks/gpu_check.sh` runs them when the project is lent one. Each
is a small digits run, seconds on a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_robustness import interrupt_at

from unseen import RunConfig
from unseen.errors import Interrupted
from unseen.experiment import prepare, run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: a digits run with enough full-size steps an epoch (15) for a capture: 3 warm-up steps, then it
GPU_RUN = dict(epochs=3, batch_size=64, checkpoint_every=0.0)


def metrics_of(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_a_gpu_run_captures_its_steps_and_predict_gives_its_scores(tmp_path):
    from unseen.predict import load

    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), scores=("msp", "energy", "mahalanobis", "knn", "vim", "react",
                                          "openmax", "odin"), **GPU_RUN)  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    m = metrics_of(out)
    assert m["device"].startswith("cuda") and m["cuda_graphs"] is True
    assert set(m["scores"]) >= {"odin", "vim", "openmax"}
    assert (out / "report.html").is_file()  # its modules were imported during training
    stored = np.load(out / "scores.npz")
    x = prepare(cfg).split_data.x_test  # the run's test images, in its order
    for device, tol in (("cuda", 1e-4), ("cpu", 5e-2)):  # on the CPU: within bf16's rounding
        p = load(out, device=device)
        for name in ("energy", "mahalanobis"):
            got = p.with_options(score=name).scores(x)
            np.testing.assert_allclose(got, stored[f"score_{name}"], rtol=tol, atol=tol)


def test_an_fp16_run_captures_its_steps_with_loss_scaling(tmp_path):
    """What a V100 or T4 runs by default: fp16 autocast, the loss scale inside the graph."""
    from unseen.predict import load

    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), precision="fp16", report=False, scores=("msp", "energy"),
                    **GPU_RUN)  # fmt: skip
    run_experiment(cfg, progress=False, log=None)
    m = metrics_of(out)
    assert m["precision"] == "fp16" and m["cuda_graphs"] is True
    skipped = m["fp16_skipped_steps"]  # 45 steps: too few for the scale to grow (2,000)
    assert 0 <= skipped < 45 and m["fp16_loss_scale"] == 2.0**16 * 0.5**skipped
    assert m["closed_set_accuracy"] > 0.3  # it learnt (chance: 0.11)
    stored = np.load(out / "scores.npz")
    x = prepare(cfg).split_data.x_test
    p = load(out, device="cuda")
    assert p.precision == "fp16"  # the run's arithmetic, which its threshold was calibrated on
    np.testing.assert_allclose(p.scores(x), stored["score_energy"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_run_stopped_on_one_device_finishes_on_the_other(
    first, then, tmp_path, monkeypatch, capsys
):
    # a GPU's generator state does not fit a CPU's: the resume reseeds it and says so
    import unseen.experiment as experiment

    real = experiment.resolve_device
    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), report=False, **GPU_RUN)
    monkeypatch.setattr(experiment, "resolve_device", lambda name: real(first))
    interrupt_at(monkeypatch, 20)  # in the second epoch (16 polls an epoch)
    with pytest.raises(Interrupted):
        run_experiment(cfg, progress=False, log=None)
    monkeypatch.undo()
    monkeypatch.setattr(experiment, "resolve_device", lambda name: real(then))
    run_experiment(cfg.replace(resume=True), progress=False, log=None)
    assert "from a new seed" in capsys.readouterr().err
    m = metrics_of(out)
    assert m["device"].startswith(then) and m["closed_set_accuracy"] > 0.5


@pytest.mark.parametrize("head", ["ovr-separate", "ovr"])
def test_one_vs_rest_heads_capture_on_the_gpu(head, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), head=(head,), report=False, **{**GPU_RUN, "epochs": 2})
    run_experiment(cfg, progress=False, log=None)
    m = metrics_of(out)
    assert m["cuda_graphs"] is True and m["closed_set_accuracy"] > 0.2


def test_a_balanced_sampler_and_a_rare_class_on_the_gpu(tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig(out=str(out), rare=("3:0.1",), balance="sampler", report=False, **GPU_RUN)
    run_experiment(cfg, progress=False, log=None)
    m = metrics_of(out)
    assert m["cuda_graphs"] is True and "3" in m["rare"]


@pytest.mark.parametrize("graphs", ["on", "off"])
def test_a_gpu_run_does_not_import_the_compiler(graphs, tmp_path):
    """On the CPU, tests/test_optim.py checks this of training; on a GPU a whole run (its
    fused or graphed SGD update, CUDA graph capture, a resnet18 from unseen.models) must not
    import torch._dynamo either: 5-7 s on the H200 machine."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys
        from unseen import RunConfig
        from unseen.experiment import run_experiment
        run_experiment(RunConfig(out={str(tmp_path / "run")!r}, model="resnet18", epochs=1,
                                 batch_size=64, cuda_graphs={graphs!r}, report=False),
                       progress=False, log=None)
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
    assert metrics_of(tmp_path / "run")["cuda_graphs"] is (graphs == "on")
