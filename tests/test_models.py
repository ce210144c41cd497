"""Batch-norm folding for inference (models.fold_batch_norm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from unseen.config import RunConfig
from unseen.data import load_dataset
from unseen.errors import ConfigError
from unseen.evaluate import forward_pass
from unseen.models import create_model, fold_batch_norm
from unseen.ovr import OneVsRestEnsemble


def _with_batch_norm_statistics(model: nn.Module, channels: int, size: int) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters, as training
    would, so that folding has something to fold."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, channels, size, size) * 2)
    return model


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "channels", "size", "stem", "input_size"),
    [
        ("resnet20", 1, 8, "auto", None),
        ("resnet20", 3, 16, "auto", None),
        ("resnet18", 1, 16, "small", None),
        ("resnet18", 3, 16, "imagenet", 32),
    ],
)
def test_folded_model_computes_the_same_function_without_batch_norm(
    name, channels, size, stem, input_size
):
    model = create_model(name, channels, 5, size, stem=stem, input_size=input_size)
    model = _with_batch_norm_statistics(model, channels, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = (torch.rand(20, channels, size, size) * 255).to(torch.uint8)

    folded = fold_batch_norm(model)

    assert _batch_norms(model) > 0 and _batch_norms(folded) == 0
    assert model.training and not folded.training  # the original keeps its mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref = forward_pass(model, x, torch.device("cpu"), "fp32")
    out = forward_pass(folded, x, torch.device("cpu"), "fp32")
    torch.testing.assert_close(out.features, ref.features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    assert folded.input_size == input_size


def test_folding_reaches_each_member_of_a_one_vs_rest_ensemble_and_a_frozen_backbone():
    members = [create_model("resnet20", 1, 1, 8) for _ in range(3)]
    members[0].freeze_backbone()
    ensemble = _with_batch_norm_statistics(OneVsRestEnsemble(members), 1, 8)
    x = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)

    folded = fold_batch_norm(ensemble)

    assert _batch_norms(folded) == 0
    ref = forward_pass(ensemble, x, torch.device("cpu"), "fp32")
    out = forward_pass(folded, x, torch.device("cpu"), "fp32")
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.features, ref.features, rtol=1e-4, atol=1e-4)


def test_forward_pass_batches_and_progress_bar(capsys, request):
    """Batching does not change the outputs; ``desc`` shows a progress bar on a terminal only."""
    model = create_model("resnet20", 1, 3, 8).eval()
    x = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    whole = forward_pass(model, x, torch.device("cpu"))
    batched = forward_pass(model, x, torch.device("cpu"), batch_size=5, desc="test images")
    torch.testing.assert_close(batched.logits, whole.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.features, whole.features, rtol=1e-5, atol=1e-5)
    assert capsys.readouterr().err == ""  # not a terminal: no bar

    terminal = request.getfixturevalue("terminal")
    forward_pass(model, x, torch.device("cpu"), batch_size=5, desc="test images")
    shown = terminal.getvalue()
    assert "test images:" in shown and "/12.0 " in shown and "img/s" in shown
    forward_pass(model, x, torch.device("cpu"), batch_size=5)  # no desc: no bar
    assert terminal.getvalue() == shown


def test_under_bf16_the_head_runs_in_fp32_on_the_features():
    # bf16 logits keep 3 significant digits: confident images would tie in every logit score
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(create_model("resnet20", 1, 5, 8), 1, 8).eval()
    x = (torch.rand(64, 1, 8, 8) * 255).to(torch.uint8)
    out = forward_pass(model, x, torch.device("cpu"), precision="bf16")
    with torch.no_grad():
        expected = model.forward_head(out.features)  # fp32, on the bf16-computed features
    torch.testing.assert_close(out.logits, expected, rtol=1e-6, atol=1e-6)
    assert out.logits.amax(1).unique().numel() == 64


def flat_builder(in_channels, num_classes, image_size, stem="auto"):
    """A network of one's own at the top level of an importable module: --jobs workers can
    load it by reference."""
    from unseen.models import Classifier

    return Classifier(torch.nn.Flatten(), in_channels * image_size * image_size, num_classes,
                      in_channels)  # fmt: skip


@pytest.fixture
def registry():
    """The model registry, restored after the test (the same objects, which other modules
    import by name)."""
    from unseen import models

    saved_models, saved_stems = dict(models.MODELS), set(models.HAS_STEMS)
    yield models
    models.MODELS.clear()
    models.MODELS.update(saved_models)
    models.HAS_STEMS.clear()
    models.HAS_STEMS.update(saved_stems)


def test_a_registered_model_of_ones_own_trains_evaluates_and_predicts(registry, tmp_path):
    import unseen
    from unseen.experiment import run_experiment

    @registry.register_model("tinycnn")
    def build(in_channels, num_classes, image_size, stem="auto"):
        backbone = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        return registry.Classifier(backbone, 8, num_classes, in_channels)

    assert registry.list_models() == ["resnet20", "resnet18", "tinycnn"]  # built-ins first
    cfg = RunConfig(model="tinycnn", epochs=2, device="cpu", precision="fp32",
                    scores=("msp", "mahalanobis"), report=False, out=str(tmp_path / "run"))  # fmt: skip
    result = run_experiment(cfg, progress=False, log=None)
    assert result.metrics["scores"]["mahalanobis"]["auroc"] > 0
    predictor = unseen.load(result.run_dir, device="cpu")
    assert predictor.model.feature_dim == 8
    scores = np.load(result.run_dir / "scores.npz")["score_msp"]
    x = load_dataset("digits").x_test
    np.testing.assert_allclose(predictor.with_options(score="msp").scores(x), scores, rtol=1e-5)


def test_register_model_refuses_built_in_and_odd_names_and_builders_of_other_types(registry):
    with pytest.raises(ConfigError, match="'resnet20' is a built-in model"):
        registry.register_model("resnet20")(lambda *a: None)
    for bad in ("", "a b", "line\nbreak", "my/net", 3):
        with pytest.raises(ConfigError, match="letters, digits"):
            registry.register_model(bad)
    first = registry.register_model("notaclassifier")(lambda *a: None)
    registry.register_model("notaclassifier")(lambda *a: torch.nn.Linear(2, 2))  # run again
    assert registry.MODELS["notaclassifier"] is not first
    with pytest.raises(ConfigError, match="not an unseen.models.Classifier"):
        registry.create_model("notaclassifier", 1, 3, 8)
    with pytest.raises(ConfigError, match="choose one of: resnet20, resnet18, notaclassifier .a"):
        registry.check_model("nope")


def test_a_run_of_an_unregistered_network_says_how_to_load_it(registry, tmp_path, capsys):
    from unseen.cli import main
    from unseen.experiment import run_experiment

    registry.register_model("tinylinear")(
        lambda c, k, size, stem="auto": registry.Classifier(
            torch.nn.Flatten(), c * size * size, k, c
        )
    )
    cfg = RunConfig(model="tinylinear", epochs=1, device="cpu", precision="fp32",
                    scores=("msp",), report=False, out=str(tmp_path / "run"))  # fmt: skip
    run = run_experiment(cfg, progress=False, log=None).run_dir
    del registry.MODELS["tinylinear"]  # a new process: the CLI knows the built-in ones only
    assert main(["predict", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'tinylinear', which is not registered in this process" in err and "unseen.load" in err
    assert main(["rescore", str(run), "--scores", "+energy"]) == 2
    err = capsys.readouterr().err
    assert "'tinylinear', which is not registered" in err and "rescore_run from Python" in err


def test_a_registered_model_with_stems_gets_stem_but_no_resnet18_rules(registry, tmp_path, capsys):
    from unseen.cli import main

    chosen = []

    @registry.register_model("stemmed", has_stem=True)
    def build(in_channels, num_classes, image_size, stem="auto"):
        chosen.append(stem)
        return registry.Classifier(torch.nn.Flatten(), in_channels * 64, num_classes, in_channels)

    args = ["run", "--epochs", "1", "--device", "cpu", "--scores", "msp", "--no-report"]
    assert main([*args, "--model", "stemmed", "--stem", "small", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert chosen[-1] == "small" and "has no effect" not in out  # its builder took --stem
    assert "stemmed, 1 epoch" in out  # no "(small stem)": only resnet18's rule is known
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["stem"] is None


@pytest.mark.slow
def test_a_sweep_with_jobs_sends_registered_networks_to_its_workers(registry, tmp_path):
    import sys
    import types

    from unseen.errors import ConfigError
    from unseen.sweep import SweepOptions, run_sweep

    base = RunConfig(epochs=1, train_subset=300, device="cpu", precision="fp32",
                     scores=("msp",), report=False)  # fmt: skip
    registry.register_model("flat")(flat_builder)
    ok = run_sweep(base.replace(model="flat"), SweepOptions("single", seeds=2, jobs=2),
                   tmp_path / "ok", log=None)  # fmt: skip
    assert not ok.failed and len(ok.runs) == 2
    # a builder only this process can reach (a notebook's): every run fails saying why
    here = types.ModuleType("only_in_this_process")

    def build(in_channels, num_classes, image_size, stem="auto"):
        return flat_builder(in_channels, num_classes, image_size, stem)

    build.__module__, build.__qualname__ = "only_in_this_process", "build"
    here.build = build
    sys.modules["only_in_this_process"] = here
    try:
        registry.register_model("unreachable")(build)
        bad = run_sweep(base.replace(model="unreachable"), SweepOptions("single", seeds=2, jobs=2),
                        tmp_path / "bad", log=None)  # fmt: skip
    finally:
        del sys.modules["only_in_this_process"]
    assert len(bad.failed) == 2
    assert "could not be registered in a worker process" in bad.failed[0].error
    # one that cannot be pickled at all (a lambda) is refused before any run starts
    registry.register_model("lam")(lambda c, k, size, stem="auto": flat_builder(c, k, size))
    with pytest.raises(ConfigError, match="cannot be sent to the sweep's worker processes"):
        run_sweep(base.replace(model="lam"), SweepOptions("single", seeds=2, jobs=2),
                  tmp_path / "lam", log=None)  # fmt: skip


def _torchvision_resnet18(in_channels: int, image_size: int, stem: str) -> nn.Module:
    """What earlier versions built for ``resnet18``: torchvision's network, stem swapped."""
    from torchvision.models import resnet18

    from unseen.models import resolve_stem

    net = resnet18(weights=None)
    if resolve_stem(stem, image_size) == "small":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


@pytest.mark.parametrize(
    "seed, in_channels, image_size, stem",
    [(0, 1, 28, "auto"), (1, 3, 32, "small"), (2, 3, 32, "imagenet"), (3, 1, 72, "auto")],
)
def test_resnet18_is_torchvision_s_weight_for_weight_and_output_for_output(
    seed, in_channels, image_size, stem
):
    """unseen's ResNet-18 (written out so as not to import torchvision) against torchvision's:
    the same names in the same order, the same weights from the same seed (runs of earlier
    versions are reproduced), and the same features from the same images, bit for bit."""
    torch.manual_seed(seed)
    theirs = _torchvision_resnet18(in_channels, image_size, stem)
    their_head = nn.Linear(512, 7)  # Classifier's, made after the backbone
    after_theirs = torch.rand(3)  # and the global generator is left where it was left
    torch.manual_seed(seed)
    model = create_model("resnet18", in_channels, 7, image_size, stem=stem)
    assert torch.equal(torch.rand(3), after_theirs)
    assert torch.equal(model.head.weight, their_head.weight)
    ours = model.backbone.net
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, in_channels, image_size, image_size)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(theirs, mode)()
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x))


def test_resnet18_loads_torchvision_s_weights_by_name_and_folds_its_batch_norm():
    torch.manual_seed(0)
    theirs = _torchvision_resnet18(3, 64, "imagenet")
    for m in theirs.modules():  # weights unlike any initialisation
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
    torch.manual_seed(1)
    model = create_model("resnet18", 3, 5, 64, stem="imagenet").eval()
    model.backbone.net.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), theirs.eval()(x))
        folded = fold_batch_norm(model)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
