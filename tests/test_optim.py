"""unseen.optim against torch.optim: the same updates and rates, without importing the compiler."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from unseen.optim import SGD, Schedule, one_cycle

SHAPES = [(4, 3), (5,), (2, 2, 3)]
# torch's schedulers here step without an optimiser step in between, which they warn about
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")


def twin_params(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(seed)
    ours = [torch.randn(s, requires_grad=True) for s in SHAPES]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    return ours, theirs


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


def groups_of(params: list[torch.Tensor], split: bool) -> list:
    # two groups with their own rate, as --backbone-lr-scale makes, or one plain list
    return [{"params": params[:1], "lr": 0.3}, {"params": params[1:]}] if split else params


@pytest.mark.parametrize(
    "momentum, nesterov, weight_decay, split",
    [(0.9, True, 5e-4, False), (0.9, False, 0.0, False), (0.0, False, 1e-2, False),
     (0.5, True, 0.0, True)],
)  # fmt: skip
@pytest.mark.parametrize("fused", [None, True])  # fused: one kernel (a GPU run's; CPUs have it too)
def test_sgd_updates_bit_for_bit_as_torch_sgd(momentum, nesterov, weight_decay, split, fused):
    ours, theirs = twin_params()
    kw = dict(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=fused)
    a = SGD(groups_of(ours, split), **kw)
    b = torch.optim.SGD(groups_of(theirs, split), **kw)
    for step in range(6):
        grads = [torch.randn(s) for s in SHAPES]
        set_grads(ours, grads)
        set_grads(theirs, grads)
        if step == 3:  # a schedule changes the rates between steps
            for opt in (a, b):
                opt.param_groups[-1]["lr"] = 0.05
        a.step()
        b.step()
        a.zero_grad()
        b.zero_grad()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q) and p.grad is None
    assert (len(a.state) == len(SHAPES)) == (momentum > 0)  # buffers only with momentum
    for p, q in zip(ours, theirs, strict=True):
        if momentum > 0:
            assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])


def test_a_parameter_without_a_gradient_is_left_alone():
    ours, _ = twin_params()
    before = [p.detach().clone() for p in ours]
    opt = SGD(ours, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    ours[0].grad = torch.ones(SHAPES[0])
    opt.step()
    assert not torch.equal(ours[0], before[0])
    assert torch.equal(ours[1], before[1]) and torch.equal(ours[2], before[2])
    assert ours[1] not in opt.state  # no buffer for a parameter never updated


@pytest.mark.parametrize("split", [False, True])
def test_state_dicts_load_both_ways_and_the_update_goes_on_the_same(split):
    """A checkpoint of torch.optim.SGD (older unseen versions) resumes here, and back."""
    ours, theirs = twin_params()
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    a, b = SGD(groups_of(ours, split), **kw), torch.optim.SGD(groups_of(theirs, split), **kw)
    for _ in range(3):
        grads = [torch.randn(s) for s in SHAPES]
        set_grads(ours, grads), set_grads(theirs, grads)
        a.step(), b.step()
    ours_sd, theirs_sd = a.state_dict(), b.state_dict()
    assert ours_sd["param_groups"] == theirs_sd["param_groups"]  # the same layout and values
    # swap: a fresh optimiser of each kind takes the other's state
    a2 = SGD(groups_of(ours, split), lr=1.0)
    b2 = torch.optim.SGD(groups_of(theirs, split), lr=1.0)
    a2.load_state_dict(theirs_sd)
    b2.load_state_dict(ours_sd)
    grads = [torch.randn(s) for s in SHAPES]
    set_grads(ours, grads), set_grads(theirs, grads)
    a2.step(), b2.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)


def test_state_saved_with_the_fused_update_resumes_with_this_optimiser_s_own_choice():
    # a checkpoint of a GPU run (fused=True) resumed on a CPU, or the other way round:
    # the saved momentum buffers and rates come back, the way the update runs does not
    ours, _ = twin_params()
    gpu_like = SGD(ours, lr=0.1, momentum=0.9, fused=True)
    for p in ours:
        p.grad = torch.ones_like(p)
    gpu_like.step()
    cpu = SGD(ours, lr=1.0, momentum=0.9)
    cpu.load_state_dict(gpu_like.state_dict())
    assert cpu.param_groups[0]["fused"] is None and cpu.param_groups[0]["lr"] == 0.1
    assert torch.equal(cpu.state[ours[0]]["momentum_buffer"], torch.ones(SHAPES[0]))


def test_loading_state_of_other_parameter_groups_is_a_value_error():
    ours, _ = twin_params()
    sd = SGD(ours, lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="other parameter groups"):
        SGD(ours[:2], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="other parameter groups"):
        SGD(groups_of(ours, True), lr=0.1).load_state_dict(sd)


def rates(opt, sched, steps: int) -> list[tuple]:
    """The (lr, momentum) of every group at the schedule's next ``steps`` steps, this one first."""
    seen = []
    for i in range(steps):
        if i:
            sched.step()
        seen.append(tuple((g["lr"], g["momentum"]) for g in opt.param_groups))
    return seen


@pytest.mark.parametrize("total, pct", [(4, 0.3), (5, 0.25), (7, 0.25), (40, 0.25), (997, 0.25)])
def test_onecycle_equals_torch_one_cycle_lr_exactly(total, pct):
    ours, theirs = twin_params()
    a = SGD(groups_of(ours, True), lr=0.1, momentum=0.9, nesterov=True)
    b = torch.optim.SGD(groups_of(theirs, True), lr=0.1, momentum=0.9, nesterov=True)
    ours_s = Schedule(a, "onecycle", total, pct_start=pct, momentum=(0.85, 0.95))
    theirs_s = torch.optim.lr_scheduler.OneCycleLR(
        b, max_lr=[0.3, 0.1], total_steps=total, pct_start=pct,
        base_momentum=0.85, max_momentum=0.95,
    )  # fmt: skip
    # all steps and the one after the last (the loop steps the schedule after every batch)
    assert rates(a, ours_s, total + 1) == rates(b, theirs_s, total + 1)  # the same floats


def test_onecycle_without_momentum_leaves_the_momentum_alone():
    opt = SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.0)
    sched = Schedule(opt, "onecycle", 20)
    assert {m for ((_, m),) in rates(opt, sched, 20)} == {0.0}


@pytest.mark.parametrize("total", [1, 2, 9, 300])
def test_cosine_equals_torch_cosine_annealing_within_rounding(total):
    # torch computes the same curve recursively from the previous rate; ours is closed
    ours, theirs = twin_params()
    a, b = SGD(ours, lr=0.2, momentum=0.9), torch.optim.SGD(theirs, lr=0.2, momentum=0.9)
    mine = rates(a, Schedule(a, "cosine", total), total + 1)
    torch_s = rates(b, torch.optim.lr_scheduler.CosineAnnealingLR(b, T_max=total), total + 1)
    assert [r[0][0] for r in mine] == pytest.approx(
        [r[0][0] for r in torch_s], rel=1e-12, abs=1e-18
    )
    assert mine[0][0][0] == 0.2 and mine[-1][0][0] == 0.0  # from the peak to 0 at the end


def test_a_schedule_resumes_at_its_step_also_from_a_torch_schedulers_state():
    def fresh():
        opt = SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
        return opt, Schedule(opt, "onecycle", 50, momentum=(0.85, 0.95))

    opt, sched = fresh()
    # a torch OneCycleLR (older unseen versions) stopped at the same step: its state names
    # the step last_epoch
    t_opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    t_sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, total_steps=50, pct_start=0.25)
    for _ in range(17):
        sched.step()
        t_sched.step()
    states = [sched.state_dict(), t_sched.state_dict()]
    expected = rates(opt, sched, 10)  # steps 17 to 26
    assert expected[0] != rates(*fresh(), 1)[0]
    for state in states:
        assert state["last_epoch"] == 17
        opt2, sched2 = fresh()
        sched2.load_state_dict(state)
        assert rates(opt2, sched2, 10) == expected


def test_a_schedule_refuses_a_step_past_its_end_and_unknown_kinds():
    opt = SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    sched = Schedule(opt, "onecycle", 3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="past it"):
        sched.step()
    with pytest.raises(ValueError, match="onecycle, cosine, constant"):
        Schedule(opt, "linear", 3)


def test_one_cycle_turns_at_pct_start_and_ends_at_the_last_step():
    values = (1.0, 10.0, 0.0)
    assert one_cycle(0, 100, 0.25, values) == 1.0
    assert one_cycle(24, 100, 0.25, values) == 10.0  # the turn: step pct * total - 1
    assert one_cycle(99, 100, 0.25, values) == pytest.approx(0.0, abs=1e-12)
    ups = [one_cycle(s, 100, 0.25, values) for s in range(25)]
    downs = [one_cycle(s, 100, 0.25, values) for s in range(24, 100)]
    assert ups == sorted(ups) and downs == sorted(downs, reverse=True)


def test_training_does_not_import_the_compiler():
    """torch.optim imports torch._dynamo at every call (1 s on a 2-core CPU, 5-7 s on an
    H200): a run's training, evaluation and scores must not pay for it."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from unseen import augment as A
        from unseen.heads import HEADS
        from unseen.models import create_model
        from unseen.train import TrainSettings, train_model
        x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
        y = torch.arange(40) % 3
        spec = A.make_augment_spec("standard", 8, flip_ok=True)
        from unseen.data import _read_idx
        from pathlib import Path
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:  # an IDX file, as Fashion-MNIST's are read
            path = Path(tmp) / "x-idx"
            path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 6]))
            assert _read_idx(path).tolist() == [5, 6]
        from unseen.data import resize_images  # as predict and folder datasets resize
        assert resize_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), (6, 6)).shape[-1] == 6
        for name in ("resnet20", "resnet18"):
            model = create_model(name, 1, 3, 8)
            r = train_model(model, x, y, TrainSettings(epochs=2, batch_size=16), HEADS["softmax"],
                            spec, torch.device("cpu"), progress=False)
            assert len(r.history) == 2
        from unseen.optim import SGD  # and the fused update, which a GPU run takes
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        SGD([p], lr=0.1, momentum=0.9, fused=True).step()
        print("torch._dynamo" in sys.modules or "torchvision" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "constant"])
def test_torch_s_schedulers_resume_from_our_state(kind):
    """A checkpoint written here resumes under torch.optim (earlier versions of unseen): torch's
    schedulers keep their peaks in the optimiser's groups, so ours writes them there too."""

    def torch_pair(params):
        opt = torch.optim.SGD(groups_of(params, True), lr=0.1, momentum=0.9, nesterov=True)
        if kind == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[0.3, 0.1], total_steps=20, pct_start=0.25,
                base_momentum=0.85, max_momentum=0.95,
            )  # fmt: skip
        elif kind == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return opt, sched

    ours, theirs = twin_params()
    a = SGD(groups_of(ours, True), lr=0.1, momentum=0.9, nesterov=True)
    a_sched = Schedule(a, kind, 20, momentum=(0.85, 0.95) if kind == "onecycle" else None)
    b, b_sched = torch_pair(theirs)
    for _ in range(7):
        a_sched.step()
        b_sched.step()
    resumed, resumed_sched = torch_pair([p.detach().clone().requires_grad_() for p in ours])
    resumed.load_state_dict(a.state_dict())
    resumed_sched.load_state_dict(a_sched.state_dict())

    def flat(seen):
        return [x for step in seen for group in step for x in group]

    later = flat(rates(b, b_sched, 10))
    assert flat(rates(resumed, resumed_sched, 10)) == pytest.approx(later, rel=1e-12)
