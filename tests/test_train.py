"""The training loop's record of itself (history rows)."""

from __future__ import annotations

import pytest
import torch

from unseen import augment as A
from unseen.heads import HEADS
from unseen.models import create_model
from unseen.train import TrainSettings, make_optimizer, make_scheduler, steps_per_epoch, train_model


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_history_lr_is_the_rate_of_each_epoch_s_last_step(schedule):
    torch.manual_seed(0)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.1, schedule=schedule)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 3
    spec = A.make_augment_spec("none", 8, flip_ok=False)
    model = create_model("resnet20", 1, 3, 8)
    result = train_model(model, x, y, settings, HEADS["softmax"], spec, torch.device("cpu"),
                         progress=False)  # fmt: skip
    # the same schedule replayed on its own: the rate each step used
    steps = steps_per_epoch(40, 16)  # 16 + 16 + 8
    opt = make_optimizer(create_model("resnet20", 1, 3, 8), settings)
    sched = make_scheduler(opt, settings, steps * settings.epochs)
    used = []
    for _ in range(steps * settings.epochs):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [used[(e + 1) * steps - 1] for e in range(settings.epochs)]
    assert [row["lr"] for row in result.history] == pytest.approx(expected)
    assert result.history[-1]["lr"] > 0  # the last step's rate, not one past the schedule


@pytest.mark.parametrize(
    "momentum, lowest, highest", [(0.9, 0.85, 0.95), (0.5, 0.45, 0.55), (0.0, 0.0, 0.0)]
)
def test_onecycle_cycles_the_momentum_around_the_one_asked_for(momentum, lowest, highest):
    # torch's OneCycleLR cycles 0.95 -> 0.85 -> 0.95 whatever the optimiser's momentum was:
    # --momentum must move the cycle (0.9 keeps torch's default, so default runs are unchanged)
    settings = TrainSettings(epochs=1, lr=0.1, momentum=momentum)
    opt = make_optimizer(torch.nn.Linear(2, 2), settings)
    sched = make_scheduler(opt, settings, 40)
    used = []
    for _ in range(40):
        used.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    assert min(used) == pytest.approx(lowest) and max(used) == pytest.approx(highest)
    assert used[0] == pytest.approx(highest)  # high momentum while the learning rate is low


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 40])
def test_onecycle_reaches_a_useful_rate_however_few_the_steps(total):
    # with 1-3 steps torch's warm-up ends before the first step: one step ran at lr/25/1e4
    settings = TrainSettings(epochs=1, lr=0.1)
    opt = make_optimizer(torch.nn.Linear(2, 2), settings)
    sched = make_scheduler(opt, settings, total)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if total < 4:
        assert used == pytest.approx([0.1] * total)  # too few steps for a cycle: the peak
    else:
        assert max(used) >= 0.05 and used[0] < max(used)  # a warm-up towards the peak


def test_auto_lr_follows_the_batch_the_steps_really_take():
    # a batch larger than the training set trains on the whole set at each step: the
    # learning rate was scaled for 100,000 images (2.8) instead of the 270 there are
    from unseen.config import RunConfig
    from unseen.experiment import default_lr, prepare

    p = prepare(RunConfig(batch_size=100000, train_subset=300, device="cpu"))
    n = len(p.split_data.x_train)
    assert n < 300 and p.config.lr == default_lr(n) and p.config.batch_size == 100000
    assert prepare(RunConfig(batch_size=64, device="cpu")).config.lr == default_lr(64)


@pytest.mark.parametrize("every, lines", [(0.0, 3), (30.0, 0)])
def test_without_a_bar_long_training_says_how_it_goes(capsys, monkeypatch, every, lines):
    # stderr captured: not a terminal, so no bar; a line per epoch once `every` s have passed
    from unseen import train

    monkeypatch.setattr(train, "LOG_EVERY_SECONDS", every)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.1)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 3
    spec = A.make_augment_spec("none", 8, flip_ok=False)
    train_model(create_model("resnet20", 1, 3, 8), x, y, settings, HEADS["softmax"], spec,
                torch.device("cpu"), x_val=x[:9], y_val=y[:9])  # fmt: skip
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training: ")]
    assert len(said) == lines
    if lines:
        assert said[0].startswith("training: epoch 1/3, loss ") and "val acc " in said[0]
        assert said[-1].endswith(" images/s")


def test_a_terminal_gets_the_bar_and_no_log_lines(request, monkeypatch):
    from unseen import train

    terminal = request.getfixturevalue("terminal")  # in the test: capture is set up by then
    monkeypatch.setattr(train, "LOG_EVERY_SECONDS", 0.0)
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.1)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    spec = A.make_augment_spec("none", 8, flip_ok=False)
    train_model(create_model("resnet20", 1, 3, 8), x, torch.arange(40) % 3, settings,
                HEADS["softmax"], spec, torch.device("cpu"))  # fmt: skip
    assert "training: epoch" not in terminal.getvalue() and "epoch" in terminal.getvalue()


def test_networks_trained_in_turn_share_one_rhythm_of_progress_lines(capsys, monkeypatch):
    from unseen import train
    from unseen.ovr import OneVsRestEnsemble, train_separate

    monkeypatch.setattr(train, "LOG_EVERY_SECONDS", 0.0)
    model = OneVsRestEnsemble([create_model("resnet20", 1, 1, 8) for _ in range(3)])
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    spec = A.make_augment_spec("none", 8, flip_ok=False)
    train_separate(model, x, torch.arange(30) % 3, TrainSettings(epochs=2, batch_size=16, lr=0.1),
                   spec, torch.device("cpu"))  # fmt: skip
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training: ")]
    assert [ln.split(", loss")[0] for ln in said] == [
        f"training: network {k}/3, epoch {e}/2" for k in (1, 2, 3) for e in (1, 2)
    ]
    # seconds since the first network started, as history.csv counts them: a later network
    # adds the time of those before it
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.1)
    train_model(create_model("resnet20", 1, 3, 8), x, torch.arange(30) % 3, settings,
                HEADS["softmax"], spec, torch.device("cpu"),
                log=train.ProgressLog(label="network 2/2, ", offset=500.0))  # fmt: skip
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training: ")]
    assert line.startswith("training: network 2/2, epoch 1/1") and ", 500 s, " in line
    # at the usual 30 s, three short networks say nothing
    monkeypatch.setattr(train, "LOG_EVERY_SECONDS", 30.0)
    train_separate(model, x, torch.arange(30) % 3, TrainSettings(epochs=2, batch_size=16, lr=0.1),
                   spec, torch.device("cpu"))  # fmt: skip
    assert "training: " not in capsys.readouterr().err
