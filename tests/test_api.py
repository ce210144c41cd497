"""The library API as a notebook uses it: configs built in Python, scores and metrics on
arrays of one's own model, models from the registry. Misuse fails in one clear sentence."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import unseen
from unseen import RunConfig
from unseen.config import FIELDS
from unseen.errors import ConfigError, UnseenError
from unseen.evaluate import check_finite, forward_pass
from unseen.metrics import (
    aupr_in,
    auroc,
    calibrate_threshold,
    fpr_at_tpr,
    open_set_metrics,
    oscr,
    score_metrics,
)
from unseen.models import create_model
from unseen.scores import SCORES, FitContext, Outputs, create_score

# ----------------------------------------------------------------------------- RunConfig


@pytest.mark.parametrize(
    "given, expected",
    [
        (dict(holdout="8,9"), dict(holdout=("8", "9"))),  # a string is read as on the CLI
        (dict(holdout="Ankle boot"), dict(holdout=("Ankle boot",))),  # not one class per letter
        (dict(holdout=9), dict(holdout=("9",))),
        (dict(holdout=[9, "Bag"]), dict(holdout=("9", "Bag"))),
        (dict(scores="msp"), dict(scores=("msp",))),
        (dict(head=["softmax", "ovr"]), dict(head=("softmax", "ovr"))),
        (dict(epochs="5", lr="0.1"), dict(epochs=5, lr=0.1)),
        (dict(epochs=np.int64(3), lr=np.float32(0.5)), dict(epochs=3, lr=0.5)),
        (dict(report=np.bool_(False)), dict(report=False)),
        (dict(out=Path("/tmp/x")), dict(out="/tmp/x")),
    ],
)
def test_run_config_gives_each_field_its_type(given, expected):
    cfg = RunConfig(**given)
    for name, value in expected.items():
        assert getattr(cfg, name) == value and type(getattr(cfg, name)) is type(value), name
    hash(cfg)  # frozen and hashable: no list slipped in


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(epochs=1.5), "epochs (--epochs) must be an integer (got 1.5)"),
        (dict(batch_size=64.0), "batch_size (--batch-size) must be an integer"),
        (dict(seed=None), "seed (--seed) cannot be None"),
        (dict(epochs=-1), "epochs (--epochs) must be positive and finite (got -1)"),
        (dict(lr=True), "lr (--lr) must be a number"),
        (dict(report="maybe"), "report (--report) must be true or false"),
        (dict(holdout=[True]), "holdout (--holdout) must be a list of names or indices"),
        (dict(epochs="x"), "epochs (--epochs) must be an integer or 'auto', not 'x'"),
        (dict(model=3), "model (--model) must be a string (got 3)"),
    ],
)
def test_run_config_refuses_a_wrong_type_when_built(given, message):
    # named as the Python keyword and the command-line flag: both kinds of user know it
    with pytest.raises(ConfigError) as err:
        RunConfig(**given)
    assert message in str(err.value)


def test_run_config_round_trips_through_a_run_folder(tmp_path):
    cfg = RunConfig(holdout=("3",), epochs=2, scores=("msp", "energy"), out=str(tmp_path / "r"))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps({**cfg.to_dict(), "split": {}}))
    again = RunConfig.from_run(tmp_path / "r")  # the split and other records are skipped
    assert again == cfg.replace(out=None)  # without the run's own folder
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown option 'split'"):
        RunConfig.from_dict({"split": {}})
    with pytest.raises(UnseenError, match="does not exist"):
        RunConfig.from_run(tmp_path / "nothing")


def test_the_lazy_entry_points_show_the_real_signatures():
    from unseen.experiment import run_experiment
    from unseen.predict import load

    assert inspect.signature(unseen.run_experiment) == inspect.signature(run_experiment)
    assert inspect.signature(unseen.load) == inspect.signature(load)
    assert unseen.run_experiment.__doc__ and unseen.load.__doc__


# ----------------------------------------------------------------------------- scores on arrays


def _blobs(seed: int = 0):
    """Three known Gaussian classes and unseen points far from them, with a linear head."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (3, 8))
    y_train = rng.integers(0, 3, 600)
    x_train = means[y_train] + rng.normal(size=(600, 8))
    y_test = np.r_[rng.integers(0, 3, 200), -np.ones(100, int)]
    x_test = np.r_[means[y_test[:200]] + rng.normal(size=(200, 8)), rng.normal(0, 12, (100, 8))]
    return (x_train, x_train @ means.T, y_train), (x_test, x_test @ means.T, y_test), means


def test_feature_scores_fit_and_score_numpy_arrays_without_a_model():
    (xf, xl, y), (tf, tl, ty), _ = _blobs()
    ctx = FitContext(train=Outputs(logits=xl, features=xf, labels=y))  # no head, no val
    assert ctx.num_classes == 3
    # higher = known, as for every score (a flipped sign would give an AUROC below 0.5)
    for name, least in (("mahalanobis", 0.99), ("rmd", 0.9), ("knn", 0.99), ("openmax", 0.8)):
        s = create_score(name).fit(ctx).score(Outputs(tl, tf)).numpy()
        assert auroc(s, ty >= 0) > least, name


def test_outputs_refuse_what_is_not_one_row_per_image():
    with pytest.raises(ValueError, match="128 rows of logits but 3 of features"):
        Outputs(np.zeros((128, 3)), np.zeros((3, 8)))
    with pytest.raises(ValueError, match="labels must be one integer class per row"):
        Outputs(np.zeros((3, 3)), np.zeros((3, 8)), labels=np.full(3, 0.5))
    assert (
        Outputs(np.zeros((3, 3)), np.zeros((3, 8)), labels=np.zeros(3)).labels.dtype == torch.int64
    )
    with pytest.raises(ValueError, match=r"logits must be N x K \(classes\)"):
        Outputs(np.zeros(3), np.zeros((3, 8)))
    for bad in (np.inf, 1e20):  # inf == round(inf): whole-number floats must also be finite
        with pytest.raises(ValueError, match="labels must be one integer class per row"):
            Outputs(np.zeros((2, 3)), np.zeros((2, 8)), labels=np.array([0.0, bad]))
    out = Outputs([[1, 2]], [[3, 4, 5]], labels=[1])
    assert out.logits.dtype == torch.float32 and out.labels.dtype == torch.int64


def test_a_custom_score_that_learns_is_marked_fitted_by_its_fit():
    from unseen.scores import Score

    class Centre(Score):  # state without a trailing underscore: fit is what counts
        name = "centre"

        def fit(self, context):
            self.mu = context.train.features.mean(0)
            return self

        def score(self, outputs):
            return -(outputs.features - self.mu).norm(dim=1)

    (xf, xl, y), _, _ = _blobs()
    train = Outputs(xl, xf, y)
    with pytest.raises(UnseenError, match="score 'centre' is not fitted"):
        Centre().score(train)
    assert Centre().fit(FitContext(train=train)).score(train).shape == (600,)
    odin = create_score("odin")  # fixed settings: fit is optional
    odin.epsilon = 0.0
    assert odin.score(train).shape == (600,)


def test_a_fit_may_score_its_own_outputs_and_a_failed_fit_leaves_the_score_unfitted():
    from unseen.scores import Score

    class Calibrated(Score):  # calibrates on its own scores inside fit
        name = "calibrated"

        def fit(self, context):
            self.mu_ = context.train.features.mean(0)
            if context.train.labels is None:
                raise ValueError("needs labels")
            self.t_ = self.score(context.train).quantile(0.05)
            return self

        def score(self, outputs):
            return -(outputs.features - self.mu_).norm(dim=1)

    (xf, xl, y), _, _ = _blobs()
    fitted = Calibrated().fit(FitContext(train=Outputs(xl, xf, y)))
    assert float(fitted.t_) < 0
    failed = Calibrated()
    with pytest.raises(ValueError, match="needs labels"):
        failed.fit(FitContext(train=Outputs(xl, xf)))
    with pytest.raises(UnseenError, match="is not fitted"):
        failed.score(Outputs(xl, xf))
    with pytest.raises(ValueError, match="is not fitted"):  # as scikit-learn's NotFittedError
        failed.score(Outputs(xl, xf))
    with pytest.raises(UnseenError, match="'knn' is not fitted"):  # a damaged detectors.pt
        create_score("knn").load_fitted_state({}).score(Outputs(xl, xf))


def test_a_score_that_learns_refuses_to_score_before_fit():
    (_, _, _), (tf, tl, _), _ = _blobs()
    outputs = Outputs(tl, tf)
    for name, cls in SCORES.items():
        score = create_score(name)
        if cls.fit is not SCORES["msp"].fit and not cls.stateless and not cls.needs_model:
            with pytest.raises(UnseenError, match=f"score '{name}' is not fitted"):
                score.score(outputs)
    assert create_score("msp").score(outputs).shape == (300,)  # nothing to learn: no fit


def test_what_a_score_needs_is_named_when_missing():
    (xf, xl, y), _, _ = _blobs()
    ctx = FitContext(train=Outputs(xl, xf, y))
    with pytest.raises(ValueError, match="'vim' needs the head's weight and bias"):
        create_score("vim").fit(ctx)
    _, (tf, tl, _), means = _blobs()
    with_head = FitContext(train=Outputs(xl, xf, y), head_weight=means, head_bias=np.zeros(3))
    for name in ("vim", "react"):  # a NumPy head is accepted as the outputs are
        assert create_score(name).fit(with_head).score(Outputs(tl, tf)).shape == (300,)
    with pytest.raises(
        ValueError,
        match=r"'mahalanobis' needs the labels of the known training images \(FitContext.train.labels\)",
    ):
        create_score("mahalanobis").fit(FitContext(train=Outputs(xl, xf)))
    create_score("knn").fit(FitContext(train=Outputs(xl, xf)))  # knn needs no labels
    with pytest.raises(ValueError, match="training labels must be 0 to 2"):
        create_score("mahalanobis").fit(FitContext(train=Outputs(xl, xf, np.where(y == 0, -1, y))))


def test_mistakes_in_python_are_value_errors_and_wrong_types_type_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError, match="is not known"):
        create_score("nope")
    with pytest.raises(ValueError, match="epochs"):
        RunConfig(epochs=0)
    with pytest.raises(TypeError, match="run_experiment takes a RunConfig, not a dict"):
        unseen.run_experiment({"epochs": 1})


def test_a_score_checks_the_logits_width_it_was_fitted_for():
    (xf, xl, y), (tf, tl, _), means = _blobs()
    head = dict(head_weight=means, head_bias=np.zeros(3))
    with pytest.raises(ValueError, match=r"class counts differ \(head 3, train 2\)"):
        FitContext(train=Outputs(xl[:, :2], xf, y), **head)
    with pytest.raises(ValueError, match=r"class counts differ \(train 3, val 2\)"):
        FitContext(train=Outputs(xl, xf, y), val=Outputs(xl[:, :2], xf))
    ctx = FitContext(train=Outputs(xl, xf, y), val=Outputs(xl, xf, y), **head)
    for name in ("vim", "openmax", "temperature"):  # these read the logits they are given
        score = create_score(name).fit(ctx)
        assert score.score(Outputs(tl, tf)).shape == (len(tl),)
        with pytest.raises(
            ValueError, match=f"'{name}' was fitted for 3 classes; these outputs have logits for 2"
        ):
            score.score(Outputs(tl[:, :2], tf))
    for name in ("knn", "react"):  # these ignore them: a placeholder is fine
        score = create_score(name).fit(ctx)
        assert score.score(Outputs(tl[:, :1], tf)).shape == (len(tl),)


def test_a_context_is_checked_detached_and_copied_when_built():
    from unseen.errors import InputError

    (xf, xl, y), (tf, tl, _), means = _blobs()
    assert issubclass(InputError, UnseenError) and issubclass(InputError, ValueError)
    head = torch.nn.Linear(8, 3)  # a model's own head: parameters that require gradients
    ctx = FitContext(train=Outputs(xl, xf, y), head_weight=head.weight, head_bias=head.bias)
    features = torch.as_tensor(tf, dtype=torch.float32).requires_grad_(True)
    test = Outputs(head(features), features)  # outputs computed with gradients
    vim = create_score("vim").fit(ctx)
    react = create_score("react").fit(ctx)
    before = react.score(test).numpy().copy()  # .numpy(): no graph attached
    with torch.no_grad():
        head.weight.mul_(3)  # the model trains on: the fitted scores stay as fitted
    np.testing.assert_array_equal(react.score(test).numpy(), before)
    assert not vim.score(test).requires_grad
    with pytest.raises(InputError, match="train has 8 features per image, but the head takes 5"):
        FitContext(train=Outputs(xl, xf, y), head_weight=np.zeros((3, 5)), head_bias=np.zeros(3))
    with pytest.raises(InputError, match="head_bias must hold 3 values, not \\(4,\\)"):
        FitContext(head_weight=np.zeros((3, 8)), head_bias=np.zeros(4))
    bad = xf.copy()
    bad[5, 2] = np.nan  # one NaN would have made every Mahalanobis score -0.0
    with pytest.raises(InputError, match="train.features holds 1 values that are not finite"):
        FitContext(train=Outputs(xl, bad, y))


def test_logits_alone_serve_the_logit_scores_and_the_feature_scores_say_what_they_need():
    from unseen.errors import InputError

    (xf, xl, y), (tf, tl, ty), _ = _blobs()
    ctx = FitContext(train=Outputs(xl, labels=y), val=Outputs(xl, labels=y))  # no features
    uses = {n for n, cls in SCORES.items() if cls.uses_features}
    assert uses == {"mahalanobis", "rmd", "knn", "vim", "react", "ash", "scale", "dice"}
    for name in ("msp", "maxlogit", "energy", "entropy", "temperature", "gen", "openmax"):
        s = create_score(name).fit(ctx).score(Outputs(tl)).numpy()
        assert s.shape == (300,) and np.isfinite(s).all(), name
    with pytest.raises(InputError, match="'knn' needs the features of the training images"):
        create_score("knn").fit(ctx)
    fitted = create_score("mahalanobis").fit(FitContext(train=Outputs(xl, xf, y)))
    with pytest.raises(InputError, match="'mahalanobis' needs the penultimate features"):
        fitted.score(Outputs(tl))


def test_scores_check_their_settings_types_and_the_outputs_they_are_given():
    from unseen.detectors import KNN
    from unseen.errors import InputError

    assert KNN(k=np.int64(7)).k == 7 and type(KNN(k=np.int64(7)).k) is int
    with pytest.raises(ConfigError, match=r"KNN\(k=2.5\): k must be an integer"):
        KNN(k=2.5)  # used to be truncated to 2
    # a bad setting is a ValueError too, as Python code (and scikit-learn's users) expect
    with pytest.raises(ValueError, match=r"KNN\(k=0\): k must be positive"):
        KNN(k=0)
    (xf, xl, y), (tf, tl, _), means = _blobs()
    ctx = FitContext(train=Outputs(xl, xf, y), val=Outputs(xl, xf, np.where(y == 2, 3, y)))
    for name in ("knn", "mahalanobis", "rmd"):
        s = create_score(name).fit(ctx)
        assert s.fit_summary()["feature_dim"] == 8
        with pytest.raises(
            InputError, match=f"'{name}' was fitted on 8 features per image; these outputs have 5"
        ):
            s.score(Outputs(tl, tf[:, :5]))
    with pytest.raises(InputError, match="validation labels must be 0 to 2"):
        create_score("temperature").fit(ctx)  # a label 3 of a three-class head


def test_a_context_with_other_training_outputs_fits_again():
    import dataclasses

    (xf, xl, y), (tf, tl, _), _ = _blobs()
    ctx = FitContext(train=Outputs(xl, xf, y))
    first = create_score("mahalanobis").fit(ctx)
    moved = Outputs(xl, xf + 5.0, y)  # mahalanobis and rmd share one fit per training outputs
    for other in (dataclasses.replace(ctx, train=moved), ctx):
        other.train = moved
        refit = create_score("mahalanobis").fit(other)
        torch.testing.assert_close(refit.means_, first.means_ + 5.0)
        assert create_score("rmd").fit(other).means_ is refit.means_  # still shared


def test_score_settings_are_checked_as_the_cli_checks_them():
    from unseen.detectors import KNN, ODIN, OpenMax, ReAct, ViM

    for make, message in [
        (lambda: KNN(k=0), "KNN(k=0): k must be positive"),
        (lambda: OpenMax(tail_size=1), "OpenMax(tail_size=1): tail_size must be at least 2"),
        (lambda: ReAct(percentile=200), "ReAct(percentile=200): percentile must be above 0"),
        (lambda: ViM(dim=0), "ViM(dim=0): dim must be positive"),
        (lambda: ODIN(epsilon=-1), "ODIN(epsilon=-1): epsilon must be from 0 to 1"),
        (lambda: ODIN(epsilon=1e10), "ODIN(epsilon=10000000000.0): epsilon must be from 0 to 1"),
    ]:
        with pytest.raises(ConfigError) as err:
            make()
        assert message in str(err.value)
    with pytest.raises(ConfigError, match="'all' stands for several"):
        create_score("all")


# ----------------------------------------------------------------------------- metrics


def test_metrics_refuse_labels_passed_as_is_known():
    s = np.array([0.9, 0.8, 0.1, 0.2])
    labels = np.array([0, 2, -1, -1])  # what scores.npz stores as label_known
    for metric in (auroc, aupr_in, fpr_at_tpr):
        with pytest.raises(ValueError, match="is_known must be booleans or 0/1"):
            metric(s, labels)
    assert auroc(s, labels >= 0) == 1.0 and auroc(s, [1, 1, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="is_known has shape"):
        auroc(s, [True, False])


def test_metrics_refuse_non_finite_scores_alike():
    s = np.array([0.9, np.nan, 0.1, 0.2])
    k = np.array([True, True, False, False])
    for call in (lambda: auroc(s, k), lambda: oscr(s, k, k), lambda: calibrate_threshold(s)):
        with pytest.raises(ValueError, match="1 value\\(s\\) that are not finite"):
            call()


def test_fractions_are_fractions():
    s, k = np.array([0.9, 0.8, 0.1]), np.array([True, True, False])
    with pytest.raises(ValueError, match="tpr must be a fraction in \\(0, 1\\], not 95"):
        fpr_at_tpr(s, k, 95)
    with pytest.raises(ValueError, match="known_acceptance must be a fraction"):
        calibrate_threshold(s, 95)
    assert calibrate_threshold(s, 1.0) == 0.1  # accept every validation image


def test_open_set_metrics_refuse_predictions_outside_the_known_classes():
    s, labels = np.array([0.9, 0.8, 0.1]), np.array([0, 1, -1])
    with pytest.raises(
        ValueError, match="predicted must be whole numbers from 0 to num_known - 1 = 1"
    ):
        open_set_metrics(s, 0.5, np.array([0, 4, 1]), labels, num_known=2)
    with pytest.raises(ValueError, match="labels must be whole numbers from -1"):
        score_metrics(s, s, np.array([0, 1, 1]), np.array([0, 5, -1]), num_known=2)
    assert open_set_metrics(s, 0.5, np.array([0, 1, 1]), labels, 2)["open_set_accuracy"] == 1.0
    float_labels = labels.astype(float)  # whole numbers stored as floats are fine
    assert (
        open_set_metrics(s, 0.5, np.array([0.0, 1, 1]), float_labels, 2)["open_set_accuracy"] == 1.0
    )


# ----------------------------------------------------------------------------- models


def test_models_take_the_inputs_they_document():
    model = create_model("resnet20", 1, 3, 8)
    with pytest.raises(ValueError, match="float images N x 1 x H x W in \\[0, 1\\]"):
        model(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not torch.float32 \\(2, 3, 8, 8\\)"):
        model(torch.zeros(2, 3, 8, 8))  # three channels into a one-channel model
    with pytest.raises(ValueError, match="forward_pass takes uint8 images"):
        forward_pass(model, torch.zeros(2, 1, 8, 8), torch.device("cpu"))
    out = forward_pass(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "cpu", "bf16")
    assert out.logits.shape == (2, 3) and out.logits.dtype == torch.float32
    with pytest.raises(ConfigError, match="--stem must be auto, small or imagenet, not 'x'"):
        create_model("resnet20", 1, 3, 8, stem="x")
    create_model("resnet20", 1, 3, 8, stem="imagenet")  # one stem: ignored (earlier runs say so)
    with pytest.raises(ConfigError, match="at least one input channel, class and pixel"):
        create_model("resnet20", 1, 0, 8)
    with pytest.raises(ValueError, match="num_classes must be a whole number, not 2.5"):
        create_model("resnet20", 1, 2.5, 8)
    assert create_model("resnet20", np.int64(1), 3, 8).num_classes == 3
    with pytest.raises(ConfigError, match="choose one of: resnet20, resnet18"):
        create_model("resnet50", 1, 3, 8)


def test_non_finite_outputs_of_a_trained_network_are_a_training_failure():
    from unseen.checkpoint import TrainingDiverged

    check_finite(Outputs(torch.zeros(4, 3), torch.zeros(4, 8)), "test images")
    logits = torch.zeros(4, 3)
    logits[1, 2] = float("nan")
    with pytest.raises(
        TrainingDiverged, match="NaN or infinite outputs for 1 of the 4 test images"
    ):
        check_finite(Outputs(logits, torch.zeros(4, 8)), "test images")


def test_every_field_has_a_type_the_config_can_check():
    # a new field with a type __post_init__ does not know would pass unchecked
    kinds = ("str", "int", "float", "bool", "tuple")
    assert all(str(f.type).startswith(kinds) for f in FIELDS.values())


def test_a_run_and_a_load_leave_the_caller_s_torch_state_as_it_was(tmp_path, digits_run):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch.backends.cudnn.benchmark = True
    try:
        cfg = RunConfig(epochs=1, train_subset=200, device="cpu", report=False, out=str(tmp_path))
        unseen.run_experiment(cfg, progress=False, log=None)  # seeds torch with cfg.seed
        predictor = unseen.load(digits_run)  # builds a randomly initialised network first
        torch.testing.assert_close(torch.rand(3), expected)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = False
    # a copy with another score keeps an acceptance chosen for this predictor
    strict = unseen.load(digits_run, known_acceptance=0.99)
    assert strict.with_options(score="msp").known_acceptance == 0.99
    assert predictor.with_options(score="msp").known_acceptance == 0.95  # the run's
    given = unseen.load(digits_run, threshold=0.5).with_options(score="msp")
    assert given.known_acceptance == 0.95  # a given threshold does not carry over as one


def test_with_options_keeps_a_score_s_own_rule(tmp_path):
    cfg = RunConfig(head=("ovr",), scores=("msp", "ovr-doc"), epochs=1, train_subset=300,
                    device="cpu", report=False, out=str(tmp_path / "ovr"))  # fmt: skip
    unseen.run_experiment(cfg, progress=False, log=None)
    predictor = unseen.load(tmp_path / "ovr", score="msp", known_acceptance=0.9)
    doc = predictor.with_options(score="ovr-doc")  # rejected below 0, whatever acceptance
    assert doc.threshold == 0.0 and doc.threshold_source == "the score's own rule"
    assert predictor.with_options(score="msp").known_acceptance == 0.9


def test_scores_follow_scikit_learn_s_parameter_conventions():
    from sklearn.base import clone

    knn = create_score("knn", RunConfig(knn_k=7))
    assert repr(knn) == "KNN(k=7, bank_size=10000, seed=0)"
    assert knn.get_params() == {"k": 7, "bank_size": 10000, "seed": 0}
    (xf, xl, y), (tf, tl, _), _ = _blobs()
    knn.fit(FitContext(train=Outputs(xl, xf, y)))
    copy = clone(knn)  # an unfitted copy with the same settings
    assert copy.get_params() == knn.get_params() and not hasattr(copy, "feature_dim_")
    assert knn.set_params(k=3) is knn and knn.k == 3
    with pytest.raises(ValueError, match="k must be positive"):
        knn.set_params(k=0)
    with pytest.raises(ValueError, match="has no setting 'q'; its settings: k, bank_size, seed"):
        knn.set_params(q=1)
    assert knn.k == 3  # a refused change changes nothing
    with pytest.raises(ValueError, match="seed must be an integer"):
        knn.set_params(seed="x")
    assert create_score("energy").get_params() == {}
