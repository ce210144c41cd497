"""fp16 training: loss scaling (eager and graphed), its checkpoint, and where fp16 is chosen.

fp16 is meant for CUDA GPUs without native bf16 (V100, T4). A CPU emulates it, slowly but
correctly, so these tests run it on tiny 8 x 8 data; the GPU paths are in test_cuda.py.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from test_cudagraphs import tiny_data
from test_robustness import TINY, TINY_ARGS, assert_same_results, interrupt_at, run

from unseen import train as train_module
from unseen.augment import make_augment_spec
from unseen.cli import main
from unseen.cudagraphs import GraphedStep, sgd_update
from unseen.errors import Interrupted, UnseenError
from unseen.heads import HEADS
from unseen.models import create_model
from unseen.optim import SGD, LossScale
from unseen.train import TrainSettings, train_model

CPU = torch.device("cpu")


def test_loss_scale_follows_grad_scaler_step_for_step():
    """The same gradients (two of them overflowing) through torch's GradScaler + SGD and
    through LossScale + unseen's SGD: the same scales (a known sequence), steps and weights."""
    torch.manual_seed(0)
    ours = [torch.randn(3, 2), torch.randn(4)]
    theirs = [p.clone() for p in ours]
    opt_ours = SGD(ours, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt_theirs = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    kw = dict(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2)
    scaler = torch.amp.GradScaler("cpu", **kw)
    scale = LossScale(CPU, **kw)
    overflow = {1: float("inf"), 4: float("nan")}
    scales = []
    for i in range(6):
        scaled = [torch.randn_like(p) * float(scale.scale) for p in ours]  # grads of loss*scale
        if i in overflow:
            scaled[1][2] = overflow[i]
        scaler.scale(torch.ones(()))  # (GradScaler starts its scale on first use)
        for p, g in zip(theirs, scaled, strict=True):
            p.grad = g.clone()
        scaler.step(opt_theirs)
        scaler.update()
        for p, g in zip(ours, scaled, strict=True):
            p.grad = g.clone()
        scale.step(opt_ours)  # unscale, step unless an overflow, update
        assert float(scale.scale) == scaler.get_scale()
        scales.append(float(scale.scale))
    # grows after 2 clean steps in a row, halves at each overflow
    assert scales == [1024.0, 512.0, 512.0, 1024.0, 512.0, 512.0]
    assert int(scale.skipped_steps) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # each reads the other's state
    other = LossScale(CPU)
    other.load_state_dict(scaler.state_dict())
    assert float(other.scale) == 512.0 and int(other.growth_tracker) == 1
    assert other.growth_interval == 2
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(scale.state_dict())
    assert back.get_scale() == 512.0 and back.get_growth_interval() == 2
    assert back.state_dict()["_growth_tracker"] == 1
    with pytest.raises(ValueError, match="empty"):
        LossScale(CPU).load_state_dict({})


@pytest.mark.parametrize("nesterov, weight_decay", [(True, 5e-4), (False, 0.0)])
def test_a_skipped_update_changes_nothing_and_a_kept_one_is_the_plain_update(
    nesterov, weight_decay
):
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    buffers = [torch.randn(5, 3), torch.randn(7)]
    lr, momentum = torch.tensor(0.05), torch.tensor(0.9)
    bad = [torch.randn(5, 3), torch.randn(7)]
    bad[0][1, 1], bad[1][3] = float("inf"), float("nan")
    p, b = [q.clone() for q in params], [q.clone() for q in buffers]
    sgd_update(p, [g.clone() for g in bad], b, lr, momentum, weight_decay, nesterov,
               skip=torch.tensor(1.0))  # fmt: skip
    for new, old in zip(p + b, params + buffers, strict=True):
        assert torch.equal(new, old)
    good = [torch.randn(5, 3), torch.randn(7)]
    plain_p, plain_b = [q.clone() for q in params], [q.clone() for q in buffers]
    sgd_update(plain_p, [g.clone() for g in good], plain_b, lr, momentum, weight_decay, nesterov)
    kept_p, kept_b = [q.clone() for q in params], [q.clone() for q in buffers]
    sgd_update(kept_p, [g.clone() for g in good], kept_b, lr, momentum, weight_decay, nesterov,
               skip=torch.tensor(0.0))  # fmt: skip
    for a, c in zip(kept_p + kept_b, plain_p + plain_b, strict=True):
        assert torch.equal(a.view(torch.int32), c.view(torch.int32))  # to the bit
    assert not torch.equal(kept_p[0], params[0])  # (and it did update)


def overflowing_scale(monkeypatch, init_scale: float = 2.0**19, growth_interval: int = 3):
    """Train with a loss scale that overflows fp16 at first and then grows often, so that
    steps are skipped and the scale moves during a tiny run."""
    scale = functools.partial(LossScale, init_scale=init_scale, growth_interval=growth_interval)
    monkeypatch.setattr(train_module, "LossScale", scale)


def test_an_overflow_skips_the_step_and_halves_the_scale(monkeypatch):
    x, y = tiny_data()
    spec = make_augment_spec("standard", 8, flip_ok=True)
    settings = TrainSettings(epochs=2, batch_size=40, lr=0.05)  # 3 steps an epoch
    overflowing_scale(monkeypatch, growth_interval=2000)  # no growth in 6 steps
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 3, 8)
    before = [q.detach().clone() for q in model.parameters()]
    r = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, "fp16", progress=False)
    # 2**19 overflows fp16 (65504) at first: skipped steps halve it until it fits
    assert 1 <= r.skipped_steps < 6
    assert r.loss_scale == 2.0**19 * 0.5**r.skipped_steps
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(q).all() for q in after)
    # the default scale, 2**16, on the same data: fewer steps skipped
    monkeypatch.undo()
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 3, 8)
    default = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, "fp16",
                          progress=False)  # fmt: skip
    assert default.skipped_steps < r.skipped_steps
    assert default.loss_scale == 2.0**16 * 0.5**default.skipped_steps
    # other precisions do not scale
    r = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, "fp32", progress=False)
    assert r.skipped_steps == 0 and r.loss_scale is None


def test_the_graphed_step_scales_fp16_as_the_eager_loop_does(monkeypatch):
    """train_model's graphed branch (forced on the CPU, where it runs without capture) skips
    the same steps, ends at the same scale and trains the same network as the eager loop."""
    x, y = tiny_data()
    spec = make_augment_spec("standard", 8, flip_ok=True)
    settings = TrainSettings(epochs=3, batch_size=40, lr=0.01)  # 2 full + 1 partial batch
    overflowing_scale(monkeypatch, growth_interval=2)
    results = {}
    for graphed in (False, True):
        monkeypatch.setattr(train_module, "use_cuda_graphs", lambda *a, g=graphed: g)
        torch.manual_seed(3)
        model = create_model("resnet20", 1, 3, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (no GradScaler or autocast warnings)
            r = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, "fp16",
                            progress=False)  # fmt: skip
        results[graphed] = (r, [q.detach().clone() for q in model.parameters()])
    (eager, pe), (graph, pg) = results[False], results[True]
    assert eager.skipped_steps >= 1
    assert (graph.skipped_steps, graph.loss_scale) == (eager.skipped_steps, eager.loss_scale)
    assert eager.history[0]["loss"] == pytest.approx(graph.history[0]["loss"], rel=1e-3)
    for p, q in zip(pe, pg, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_graphed_step_needs_a_loss_scale_in_fp16_only():
    model = create_model("resnet20", 1, 3, 8)
    opt = SGD(list(model.parameters()), lr=0.1)

    def loss_fn(z, t):
        return HEADS["softmax"].loss(z, t, 0.0)

    with pytest.raises(ValueError, match="loss_scale in fp16"):
        GraphedStep(model, loss_fn, opt, CPU, "fp16", 8)
    with pytest.raises(ValueError, match="loss_scale in fp16"):
        GraphedStep(model, loss_fn, opt, CPU, "bf16", 8, loss_scale=LossScale(CPU))


FP16 = dict(precision="fp16")


def test_an_interrupted_fp16_run_resumes_with_its_loss_scale(tmp_path, monkeypatch):
    """The scale, its growth counter and the skip count are in the checkpoint: a resumed run
    equals the uninterrupted one, skipped steps included (a resume that started the scale
    afresh would overflow, and skip, again)."""
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")  # the same rounding in both processes' runs
    overflowing_scale(monkeypatch)
    reference = tmp_path / "reference"
    run(reference, **FP16)
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and metrics["fp16_skipped_steps"] >= 2
    from unseen.console import run_summary

    skipped = f"fp16 loss scaling skipped {metrics['fp16_skipped_steps']} steps"
    assert skipped in run_summary(metrics)  # on the training line
    assert "loss scaling" not in run_summary({**metrics, "fp16_skipped_steps": 0})
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 12)  # in epoch 2
    with pytest.raises(Interrupted):
        run(out, **FP16)
    monkeypatch.undo()
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    overflowing_scale(monkeypatch)
    run(out, resume=True, **FP16)
    assert_same_results(reference, out)


def test_fp16_on_a_cpu_runs_with_a_warning_and_predicts_in_fp32(tmp_path, capsys):
    out = tmp_path / "run"
    args = [a for a in TINY_ARGS if a != "--quiet"]
    args[args.index("fp32")] = "fp16"
    assert main(["run", *args, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "fp16; run folder" in printed.out
    assert "unseen: warning: fp16 on a CPU is emulated" in printed.err
    assert main(["run", *args, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    printed = capsys.readouterr()
    assert "run folder /" not in printed.out  # the header is left out, the warning is not
    assert "warning: fp16 on a CPU is emulated" in printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "fp16"
    skipped = metrics["fp16_skipped_steps"]
    assert 0 <= skipped < 28 and metrics["fp16_loss_scale"] == 2.0**16 * 0.5**skipped  # 28 steps

    from unseen.data import load_dataset
    from unseen.predict import load

    x = load_dataset("digits").x_test[:50]
    on_cpu = load(out, device="cpu")
    assert on_cpu.precision == "fp32"  # a CPU has no fp16 units: predict in fp32
    asked = load(out, device="cpu", precision="fp16")
    assert asked.precision == "fp16"
    a, b = on_cpu.scores(x), asked.scores(x)
    assert not np.array_equal(a, b)  # two arithmetics...
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)  # ...within fp16's rounding
    with pytest.raises(UnseenError, match="precision must be one of bf16, fp16, fp32, not 'fp8'"):
        load(out, device="cpu", precision="fp8")


def test_far_ood_images_of_an_fp16_run_are_scored_in_fp16_on_a_cpu(tmp_path, capsys):
    """Known answer: the run's own held-out images, scored as another dataset, get the run's
    own scores, which it computed in fp16 (predict's fp32 on a CPU would differ from them)."""
    from test_farood import save_npz_dataset

    from unseen import RunConfig
    from unseen.experiment import prepare
    from unseen.farood import evaluate_ood

    out = tmp_path / "run"
    run(out, scores=("msp", "energy"), **FP16)
    cfg = RunConfig(out=str(out), **{**TINY, "scores": ("msp", "energy"), **FP16})
    sd = prepare(cfg).split_data
    unseen = sd.test_is_unseen.numpy()
    result = evaluate_ood(out, save_npz_dataset(tmp_path / "nines.npz", sd.x_test[unseen].numpy()))
    stored = np.load(out / "scores.npz")
    for name in ("msp", "energy"):
        got = result["image_scores"][name]
        np.testing.assert_allclose(got, stored[f"score_{name}"][unseen], rtol=1e-5, atol=1e-6)
    # the commands that keep fp16 on a CPU say that it is emulated (and slow)
    capsys.readouterr()
    nines = f"npz:{tmp_path / 'nines.npz'}"
    assert main(["ood", str(out), "--dataset", nines, "--device", "cpu"]) == 0
    assert (
        "warning: this run computes in fp16, which a CPU only emulates" in capsys.readouterr().err
    )
    assert main(["rescore", str(out), str(out), "--device", "cpu", "--no-report"]) == 0
    printed = capsys.readouterr()
    assert "), fp16: msp, energy" in printed.out  # rescoring RUN on cpu (...), fp16: ...
    assert printed.err.count("warning: this run computes in fp16") == 1  # once for all runs


def test_a_run_auto_started_in_fp16_keeps_it_on_a_cpu_and_says_how_to_go_faster(
    tmp_path, monkeypatch, capsys
):
    """`auto` picks fp16 on a V100 or T4. Resumed on a CPU, which emulates fp16 slowly, the run
    keeps it (every head of a run shares one arithmetic), and the warning's advice is one a
    resume can follow."""
    from unseen import experiment

    real = experiment.resolve_precision
    monkeypatch.setattr(  # as on a 7.x GPU
        experiment, "resolve_precision", lambda p, d: "fp16" if p == "auto" else real(p, d)
    )
    out = tmp_path / "run"
    auto = [a if a != "fp32" else "auto" for a in TINY_ARGS]
    interrupt_at(monkeypatch, 12)
    assert main(["run", *auto, "--out", str(out)]) == 130
    capsys.readouterr()
    monkeypatch.undo()
    monkeypatch.setenv("UNSEEN_NUM_THREADS", "1")
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "fp16 on a CPU is emulated" in err
    assert "a resumed run keeps the arithmetic it started in" in err and "--overwrite" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and metrics["fp16_skipped_steps"] is not None
    # a new run is told to pick another precision
    assert main(["run", *[a if a != "fp32" else "fp16" for a in TINY_ARGS],
                 "--out", str(tmp_path / "new")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "use --precision auto, bf16 or fp32 here" in err and "resumed" not in err


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), (None, None)]
)
def test_an_old_gpu_checkpoint_resumes_in_what_its_version_picked(
    tmp_path, monkeypatch, capability, expected
):
    """Versions that did not record the precision never trained in fp16: on a 7.x GPU their
    `auto` gave fp32, from Ampere on bf16 (resumed on a CPU: what auto picks there, None)."""
    from unseen.checkpoint import CHECKPOINT_KIND, resumed_precision

    saved = {"kind": CHECKPOINT_KIND, "computed_on": "cuda (Tesla T4), torch 2.11.0"}
    torch.save(saved, tmp_path / "checkpoint.pt")
    device = CPU
    if capability is not None:
        device = torch.device("cuda")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    assert resumed_precision(tmp_path, device) == expected
