"""The graphed training step: its SGD update, its eager fallback on the CPU, and (on a GPU) capture."""

from __future__ import annotations

import warnings

import pytest
import torch

from unseen import train as train_module
from unseen.augment import make_augment_spec
from unseen.cudagraphs import GraphedStep, sgd_update
from unseen.errors import ConfigError
from unseen.heads import HEADS, one_vs_rest_targets
from unseen.models import create_model
from unseen.optim import LossScale
from unseen.train import TrainSettings, make_optimizer, make_scheduler, train_model, use_cuda_graphs

CPU = torch.device("cpu")


def tiny_data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    for c in range(3):  # a bright row per class: learnable
        x[y == c, :, 2 * c + 1, :] = 250
    return x, y


@pytest.mark.parametrize("nesterov, weight_decay", [(True, 5e-4), (False, 0.0), (False, 1e-2)])
def test_sgd_update_equals_torch_sgd_under_a_changing_schedule(nesterov, weight_decay):
    torch.manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    ours = [torch.randn(s) for s in shapes]
    theirs = [p.clone().requires_grad_() for p in ours]
    opt = torch.optim.SGD(
        theirs, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=12
    )  # lr and momentum move
    buffers = [torch.zeros_like(p) for p in ours]
    for _ in range(10):
        grads = [torch.randn(s) for s in shapes]
        group = opt.param_groups[0]
        lr, momentum = torch.tensor(group["lr"]), torch.tensor(group["momentum"])
        sgd_update(ours, grads, buffers, lr, momentum, weight_decay, nesterov)
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        sched.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    for buf, p in zip(buffers, theirs, strict=True):
        torch.testing.assert_close(buf, opt.state[p]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_one_vs_rest_targets_match_one_hot():
    y = torch.tensor([2, 0, 1, 2])
    expected = torch.nn.functional.one_hot(y, 4).float()
    assert torch.equal(one_vs_rest_targets(y, 4), expected)


def test_graphed_step_without_capture_trains_like_the_eager_loop():
    """The step's own code path (functional SGD on optimiser state) against torch's SGD."""
    x, y = tiny_data()
    xb, yb = x[:32].float().div(255), y[:32]
    nets = []
    for _ in range(2):
        torch.manual_seed(1)
        nets.append(create_model("resnet20", 1, 3, 8))
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.05)
    opt_a = make_optimizer(nets[0], settings)
    opt_b = make_optimizer(nets[1], settings)
    sched_a = make_scheduler(opt_a, settings, 6)
    sched_b = make_scheduler(opt_b, settings, 6)

    def loss_fn(z, t):
        return HEADS["softmax"].loss(z, t, 0.0)

    step = GraphedStep(nets[0], loss_fn, opt_a, CPU, "fp32", batch_size=32)
    assert not step.capture  # no CUDA: every step eager, through the same code
    for _ in range(5):
        loss_a, _ = step(xb, yb)
        sched_a.step()
        loss_b = loss_fn(nets[1](xb), yb)
        opt_b.zero_grad()
        loss_b.backward()
        opt_b.step()
        sched_b.step()
        torch.testing.assert_close(loss_a, loss_b.detach(), rtol=1e-4, atol=1e-5)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    # the momentum buffers are the optimiser's state: what a checkpoint saves
    first = next(iter(nets[0].parameters()))
    assert opt_a.state[first]["momentum_buffer"].abs().sum() > 0


def test_train_model_through_the_graphed_step_matches_eager(monkeypatch):
    """train_model's graphed branch (forced on the CPU, where it runs eagerly) gives the eager result."""
    x, y = tiny_data()
    spec = make_augment_spec("standard", 8, flip_ok=True)
    settings = TrainSettings(epochs=2, batch_size=40, lr=0.01)  # 96 = 2 x 40 + a partial 16
    results = {}
    calls = []
    step = GraphedStep.__call__
    monkeypatch.setattr(GraphedStep, "__call__", lambda self, *a: calls.append(1) or step(self, *a))
    for graphed in (False, True):
        monkeypatch.setattr(train_module, "use_cuda_graphs", lambda *a, g=graphed: g)
        torch.manual_seed(3)
        model = create_model("resnet20", 1, 3, 8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, progress=False)
        assert len(calls) == (6 if graphed else 0)  # 3 batches (2 of 40, one of 16) x 2 epochs
        assert r.cuda_graphs is False  # the graphed step ran, eagerly: on a CPU nothing is captured
        assert not caught  # (torch's schedulers warned that the graph's update is no step())
        results[graphed] = (r, [p.detach().clone() for p in model.parameters()])
    (eager, pe), (graph, pg) = results[False], results[True]
    # same batches, same arithmetic up to rounding (which training then amplifies a little)
    first_e, first_g = eager.history[0], graph.history[0]
    assert first_e["loss"] == pytest.approx(first_g["loss"], rel=1e-3)
    assert first_e["train_accuracy"] == first_g["train_accuracy"]
    assert eager.history[1]["loss"] == pytest.approx(graph.history[1]["loss"], rel=1e-3)
    for p, q in zip(pe, pg, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_cuda_graph_mode_is_resolved_and_checked():
    cuda = torch.device("cuda")
    assert use_cuda_graphs("auto", cuda, "none")
    assert not use_cuda_graphs("auto", CPU, "none")
    assert not use_cuda_graphs("auto", cuda, "weighted-loss")
    assert use_cuda_graphs("on", cuda, "sampler")
    assert not use_cuda_graphs("off", cuda, "none")
    for args in [(CPU, "none"), (cuda, "weighted-loss")]:
        with pytest.raises(ConfigError, match="--cuda-graphs on cannot be used here"):
            use_cuda_graphs("on", *args)
    with pytest.raises(ConfigError, match="auto, on or off"):
        use_cuda_graphs("yes", cuda, "none")


def test_cli_rejects_cuda_graphs_on_a_cpu(tmp_path):
    from unseen.cli import main

    code = main(["run", "--device", "cpu", "--cuda-graphs", "on", "--out", str(tmp_path / "r")])
    assert code == 2
    assert not (tmp_path / "r" / "run.json").exists()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_cuda():
    """fp32 without TF32 and deterministic cuDNN kernels, so two runs can be compared closely."""
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)  # fmt: skip
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.device("cuda")
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
     torch.backends.cuda.matmul.allow_tf32) = flags  # fmt: skip


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_replayed_graph_equals_the_same_step_run_eagerly(exact_cuda, precision):
    """Capture and replay against the very same step code run eagerly, under a moving lr (in
    fp16 with a loss scale that overflows at first, so that the graph skips steps too)."""
    dev = exact_cuda
    nets, opts = [], []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(create_model("resnet20", 1, 3, 8).to(dev).to(memory_format=torch.channels_last))
        opts.append(make_optimizer(nets[-1], TrainSettings(epochs=1, lr=0.05)))

    def loss_fn(z, t):
        return HEADS["softmax"].loss(z, t, 0.0)

    scales = [
        LossScale(dev, init_scale=2.0**24, growth_interval=2) if precision == "fp16" else None
        for _ in range(2)
    ]
    graphed = GraphedStep(nets[0], loss_fn, opts[0], dev, precision, batch_size=32, warmup=2,
                          loss_scale=scales[0])  # fmt: skip
    eager = GraphedStep(nets[1], loss_fn, opts[1], dev, precision, batch_size=32, capture=False,
                        loss_scale=scales[1])  # fmt: skip
    x, y = tiny_data(n=32 * 8)
    x = x.to(dev).float().div(255).contiguous(memory_format=torch.channels_last)
    y = y.to(dev)
    for i in range(8):  # 2 warm-up steps, the capture, then replays
        for opt in opts:
            opt.param_groups[0]["lr"] = 0.05 * (i + 1) / 8
            opt.param_groups[0]["momentum"] = 0.95 - 0.01 * i
        xb, yb = x[32 * i : 32 * (i + 1)], y[32 * i : 32 * (i + 1)]
        la, _ = graphed(xb, yb)
        lb, _ = eager(xb, yb)
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
    assert graphed.graph is not None and eager.graph is None
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    if precision == "fp16":
        a, b = (s.state_dict() for s in scales)
        assert a == b and a["skipped_steps"] >= 1


@needs_cuda
@pytest.mark.parametrize("head", ["softmax", "ovr"])
def test_captured_training_trains_like_eager_on_a_gpu(exact_cuda, head):
    """train_model with and without graphs on the digits: the same first epoch, both learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images * 255 / 16, dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target)
    spec = make_augment_spec("standard", 8, flip_ok=False)
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = create_model("resnet20", 1, 10, 8)
        s = TrainSettings(epochs=10, batch_size=128, lr=0.1, cuda_graphs=mode)
        runs[mode] = train_model(
            model, x, y, s, HEADS[head], spec, exact_cuda, "fp32", progress=False
        )
    assert runs["on"].cuda_graphs and not runs["off"].cuda_graphs
    first_off, first_on = runs["off"].history[0], runs["on"].history[0]
    assert first_off["loss"] == pytest.approx(first_on["loss"], rel=1e-3)
    for r in runs.values():  # on the CPU (eager) 10 epochs reach 0.93 (softmax) and 0.88 (ovr)
        assert r.history[-1]["train_accuracy"] > 0.75


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("graphed", [False, True])
def test_compiled_training_matches_eager_and_compiles_once(monkeypatch, graphed):
    """``--compile`` (alone, and through the graphed step, which on the CPU runs without
    capture): the same first-epoch loss as eager, and the partial last batch of each epoch
    goes through the uncompiled network, so the model is compiled for one batch size only."""
    from torch._dynamo.utils import counters

    x, y = tiny_data()
    spec = make_augment_spec("standard", 8, flip_ok=True)
    monkeypatch.setattr(train_module, "use_cuda_graphs", lambda *a: graphed)
    losses = {}
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        settings = TrainSettings(epochs=2, batch_size=40, lr=0.01, compile=compiled)
        torch.manual_seed(3)
        model = create_model("resnet20", 1, 3, 8)
        r = train_model(model, x, y, settings, HEADS["softmax"], spec, CPU, progress=False)
        losses[compiled] = [h["loss"] for h in r.history]
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)
    assert losses[True][1] == pytest.approx(losses[False][1], rel=2e-2)
    assert counters["stats"]["unique_graphs"] == 1  # 96 = 2 x 40 + 16: no graph for the 16
