"""One-vs-rest heads (issue 3): binary targets, DOC thresholds, separate networks, several heads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unseen.augment import make_augment_spec
from unseen.config import RunConfig, resolve_config
from unseen.errors import ConfigError
from unseen.heads import BINARY_HEAD, HEADS, binary_loss, one_vs_rest_targets, ovr_loss
from unseen.metrics import auroc, score_metrics
from unseen.ovr import OneVsRestEnsemble, build_model_for_head, train_separate
from unseen.scores import (
    FitContext,
    Outputs,
    create_score,
    doc_thresholds,
    scores_for_head,
)
from unseen.train import TrainSettings, train_model


def logit(p) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def context(logits: torch.Tensor, labels: torch.Tensor, head: str = "ovr") -> FitContext:
    k = logits.shape[1]
    val = Outputs(logits, torch.zeros(len(logits), 4), labels)
    return FitContext(None, val, torch.zeros(k, 4), torch.zeros(k), head)


# ----------------------------------------------------------------------------- loss and targets


def test_binary_targets_are_one_hot_rows():
    t = one_vs_rest_targets(torch.tensor([2, 0, 1]), 4)
    expected = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(t, expected)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_ovr_loss_is_mean_binary_cross_entropy(eps):
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]])
    y = torch.tensor([0, 2])
    # independent computation, by hand in NumPy: own class positive, others negative
    target = np.array([[1, 0, 0], [0, 0, 1]], float) * (1 - eps) + eps / 2
    p = 1 / (1 + np.exp(-z.numpy().astype(float)))
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    assert ovr_loss(z, y, eps).item() == pytest.approx(bce.mean(), rel=1e-5)


def test_binary_loss_and_prediction_of_one_output_networks():
    z = torch.tensor([[1.0], [-2.0], [0.3]])
    y = torch.tensor([1, 0, 0])
    p = 1 / (1 + np.exp(-z.numpy().ravel().astype(float)))
    bce = -(np.log(p[0]) + np.log(1 - p[1]) + np.log(1 - p[2])) / 3
    assert binary_loss(z, y).item() == pytest.approx(bce, rel=1e-5)
    assert BINARY_HEAD.predict(z).tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------- rejection


def test_ovr_score_rejects_image_no_class_claims():
    # validation: every image is claimed by its own class with sigmoid >= 0.9
    val_p = torch.tensor([[0.95, 0.02, 0.01], [0.03, 0.9, 0.05], [0.01, 0.02, 0.97]] * 4)
    labels = torch.tensor([0, 1, 2] * 4)
    score = create_score("ovr").fit(context(logit(val_p), labels))
    # test: a known image, and an image every sigmoid calls "not mine" (note: its softmax
    # would still be confident, 0.2 vs 0.05 vs 0.01 -> about 0.36 / 0.33 / 0.31 not; see msp)
    test_p = torch.tensor([[0.93, 0.01, 0.02], [0.2, 0.05, 0.01]])
    s = score.score(Outputs(logit(test_p), torch.zeros(2, 4))).numpy()
    assert s == pytest.approx([0.93, 0.2], abs=1e-6)
    m = score_metrics(
        s, score.score(Outputs(logit(val_p), torch.zeros(12, 4))).numpy(),
        predicted=np.array([0, 0]), labels=np.array([0, -1]), num_known=3,
    )  # fmt: skip
    assert m["unseen_rejected"] == 1.0 and m["known_rejected"] == 0.0
    assert m["threshold_from"] == "validation" and m["val_known_accepted"] >= 0.95


def test_ovr_scores_need_a_one_vs_rest_head():
    with pytest.raises(ConfigError, match="one-vs-rest"):
        create_score("ovr").fit(context(torch.zeros(3, 3), torch.tensor([0, 1, 2]), "softmax"))
    with pytest.raises(ConfigError, match="one-vs-rest head"):
        resolve_config({"scores": ("msp", "ovr"), "head": ("softmax",)})
    cfg = resolve_config({"scores": ("msp", "ovr-doc"), "head": ("softmax", "ovr")})
    assert cfg.head == ("softmax", "ovr")


def test_scores_for_head_adds_and_filters_ovr_scores():
    assert scores_for_head(("msp", "energy"), "ovr") == ["msp", "energy", "ovr", "ovr-doc"]
    assert scores_for_head(("msp", "energy"), "softmax") == ["msp", "energy"]
    assert "ovr" not in scores_for_head(("all",), "softmax")
    assert scores_for_head(("ovr-doc", "msp"), "ovr-separate") == ["ovr-doc", "msp", "ovr"]


# ----------------------------------------------------------------------------- DOC


def test_doc_thresholds_against_hand_computed_example():
    # class 0: p = 0.9, 0.8, 1.0 -> mirrored about 1, mean 1, sigma^2 = (0.01+0.04+0)/3
    # class 1: p = 0.6, 0.99     -> sigma^2 = (0.16 + 0.0001)/2
    # class 2: no validation images -> 0.5
    p = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [1.0, 0.0, 0.0], [0.3, 0.6, 0.2],
                      [0.0, 0.99, 0.4]])  # fmt: skip
    labels = torch.tensor([0, 0, 0, 1, 1])
    sigma0, sigma1 = math.sqrt(0.05 / 3), math.sqrt(0.1601 / 2)
    assert sigma0 == pytest.approx(np.std([0.9, 0.8, 1.0, 1.1, 1.2, 1.0]))  # the mirrored set
    t, s = doc_thresholds(p, labels, alpha=3.0)
    assert s[:2].tolist() == pytest.approx([sigma0, sigma1], abs=1e-6)
    assert math.isnan(s[2])
    assert t.tolist() == pytest.approx([1 - 3 * sigma0, 0.5, 0.5], abs=1e-6)  # 0.6127, floor
    t1, _ = doc_thresholds(p, labels, alpha=1.0)
    assert t1.tolist() == pytest.approx([1 - sigma0, 1 - sigma1, 0.5], abs=1e-6)


def test_ovr_doc_rejects_when_no_class_clears_its_own_threshold():
    # (0.9999999, not 1.0: the logit of 1.0 is infinite, which FitContext refuses)
    p_val = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.9999999, 0.01, 0.01],
                          [0.3, 0.6, 0.2], [0.01, 0.99, 0.4], [0.1, 0.2, 0.9]])  # fmt: skip
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    cfg = RunConfig(head=("ovr",), doc_alpha=3.0)
    doc = create_score("ovr-doc", cfg).fit(context(logit(p_val), labels))
    t = doc.thresholds_.tolist()  # about [0.6127, 0.5, 0.7]
    assert t == pytest.approx([1 - 3 * math.sqrt(0.05 / 3), 0.5, 0.7], abs=1e-5)
    assert doc.fitted_state()["alpha_"] == 3.0
    assert doc.decision_threshold() == 0.0
    test_p = torch.tensor(
        [
            [0.70, 0.20, 0.10],  # class 0 clears 0.613: accepted
            [0.60, 0.45, 0.65],  # 0.60 < 0.613, 0.45 < 0.5, 0.65 < 0.7: rejected
            [0.55, 0.52, 0.10],  # class 1 clears 0.5 (argmax is still class 0, as in DOC)
            [0.05, 0.05, 0.05],  # no class claims it
        ]
    )
    margin = doc.score(Outputs(logit(test_p), torch.zeros(4, 4))).numpy()
    expected = (test_p.numpy() - np.array(t)).max(axis=1)
    assert margin == pytest.approx(expected, abs=1e-5)
    assert (margin >= 0).tolist() == [True, False, True, False]
    # the open-set metrics use the DOC decision (margin >= 0), not a validation quantile
    m = score_metrics(
        margin, doc.score(Outputs(logit(p_val), torch.zeros(6, 4))).numpy(),
        predicted=np.array([0, 0, 0, 0]), labels=np.array([0, -1, 0, -1]), num_known=3,
        threshold=doc.decision_threshold(),
    )  # fmt: skip
    assert m["threshold"] == 0.0 and m["threshold_from"] == "score"
    assert m["unseen_rejected"] == 1.0 and m["known_rejected"] == 0.0


def test_ovr_doc_ranks_confident_images_that_float32_sigmoids_would_tie():
    # sigmoid(z) is exactly 1.0 in float32 from z ~ 17: the DOC margin must still rank them
    rng = np.random.default_rng(0)
    known = np.full((50, 3), -20.0)
    known[:, 0] = rng.uniform(20, 30, 50)
    unseen = np.full((50, 3), -20.0)
    unseen[:, 0] = rng.uniform(17, 20, 50)
    val_logits = torch.as_tensor(known[:20]).float()
    doc = create_score("ovr-doc", RunConfig(head=("ovr",))).fit(
        context(val_logits, torch.zeros(20, dtype=torch.long))
    )
    test = torch.as_tensor(np.concatenate([known, unseen])).float()
    margin = doc.score(Outputs(test, torch.zeros(100, 4))).numpy()
    assert margin.dtype == np.float64
    assert auroc(margin, np.r_[np.ones(50), np.zeros(50)]) == 1.0
    ovr = create_score("ovr", RunConfig(head=("ovr",))).score(Outputs(test, torch.zeros(100, 4)))
    assert auroc(ovr.numpy(), np.r_[np.ones(50), np.zeros(50)]) == 1.0  # as the max sigmoid


# ----------------------------------------------------------------------------- ovr-separate


def test_ensemble_is_a_classifier_with_a_block_diagonal_head():
    torch.manual_seed(0)
    model = build_model_for_head("resnet20", 1, 3, 8, "auto", "ovr-separate")
    assert isinstance(model, OneVsRestEnsemble) and len(model.members) == 3
    assert model.num_classes == 3 and model.feature_dim == 3 * 64
    model.eval()
    x = torch.rand(5, 1, 8, 8)
    feats = model.forward_features(x)
    assert feats.shape == (5, 192)
    logits = model(x)
    for k, m in enumerate(model.members):  # logit k is member k's own output
        assert torch.allclose(logits[:, k], m(x)[:, 0], atol=1e-5)
    head = model.head  # the equivalent linear head, as FitContext reads it
    assert head.weight.shape == (3, 192) and head.weight[0, 64:].abs().sum() == 0
    assert torch.allclose(head(feats), logits, atol=1e-5)


def test_separate_variant_trains_k_distinct_networks():
    torch.manual_seed(0)
    k = 3
    x = (torch.rand(24, 1, 8, 8) * 255).to(torch.uint8)
    y = torch.arange(24) % k
    model = build_model_for_head("resnet20", 1, k, 8, "auto", "ovr-separate")
    before = [[p.detach().clone() for p in m.parameters()] for m in model.members]
    # members start from distinct initial weights
    assert not torch.equal(before[0][0], before[1][0])
    spec = make_augment_spec("none", 8, False, None)
    settings = TrainSettings(epochs=2, batch_size=12, lr=0.05, seed=0)
    result = train_separate(
        model, x, y, settings, spec, torch.device("cpu"), x_val=x[:9], y_val=y[:9], progress=False
    )
    # one history row per network and epoch; binary accuracies in [0, 1]
    assert [r["network"] for r in result.history] == [0, 0, 1, 1, 2, 2]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in result.history)
    assert result.images_seen == k * 2 * 24
    # the per-epoch validation passes of all K networks are counted, outside training time
    assert result.validation_seconds > 0 and result.cuda_graphs is False
    assert all(
        b["seconds"] >= a["seconds"]
        for a, b in zip(result.history, result.history[1:], strict=False)
    )
    for m, b in zip(model.members, before, strict=True):  # every network changed by training
        assert any(not torch.equal(p.detach(), q) for p, q in zip(m.parameters(), b, strict=True))
    # the trained parameter sets are K distinct ones (not shared, not copies)
    params = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in model.members]
    assert len({p.data_ptr() for p in params}) == k
    assert not torch.equal(params[0], params[1]) and not torch.equal(params[1], params[2])


@pytest.mark.slow
def test_member_k_learns_class_k_versus_rest():
    """Separable toy data: bright images are class 1; member 1 alone should say 'mine'."""
    torch.manual_seed(0)
    n = 64
    y = torch.arange(n) % 2
    x = torch.where(y[:, None, None, None] == 1, 200, 30).expand(n, 1, 8, 8).to(torch.uint8)
    x = (x.int() + torch.randint(-20, 20, x.shape)).clamp(0, 255).to(torch.uint8)
    model = build_model_for_head("resnet20", 1, 2, 8, "auto", "ovr-separate")
    spec = make_augment_spec("none", 8, False, None)
    train_separate(model, x, y, TrainSettings(epochs=3, batch_size=16, lr=0.05), spec,
                   torch.device("cpu"), progress=False)  # fmt: skip
    model.eval()
    with torch.no_grad():
        p = model(x.float() / 255).sigmoid()
    assert (p.argmax(1) == y).float().mean() > 0.9


def test_train_model_reports_binary_accuracy_with_binary_head():
    torch.manual_seed(0)
    x = (torch.rand(32, 1, 8, 8) * 255).to(torch.uint8)
    yb = torch.zeros(32, dtype=torch.long)  # all negative
    net = build_model_for_head("resnet20", 1, 1, 8, "auto", "softmax")
    spec = make_augment_spec("none", 8, False, None)
    res = train_model(net, x, yb, TrainSettings(epochs=1, batch_size=16), BINARY_HEAD, spec,
                      torch.device("cpu"), x_val=x, y_val=yb, progress=False)  # fmt: skip
    with torch.no_grad():
        net.eval()
        expected = float((net(x.float() / 255)[:, 0] <= 0).float().mean())
    assert res.history[-1]["val_accuracy"] == pytest.approx(expected)
    assert HEADS["ovr-separate"].separate and not HEADS["ovr"].separate


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_run_softmax_and_ovr_side_by_side(tmp_path, capsys):
    from unseen.cli import main

    out = tmp_path / "run"
    rc = main(
        ["run", "--head", "softmax,ovr", "--epochs", "2", "--train-subset", "300",
         "--test-subset", "300", "--device", "cpu", "--precision", "fp32", "--quiet", "--no-report",
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "heads side by side" in printed
    top = json.loads((out / "metrics.json").read_text())
    assert set(top["heads"]) == {"softmax", "ovr"}
    soft, ovr = top["heads"]["softmax"], top["heads"]["ovr"]
    assert soft["head"] == "softmax" and ovr["head"] == "ovr"
    assert set(soft["scores"]) == {"msp", "maxlogit", "energy", "entropy"}
    assert list(ovr["scores"]) == ["msp", "maxlogit", "energy", "entropy", "ovr", "ovr-doc"]
    assert ovr["logits"] == "one-vs-rest logits" and soft["logits"] == "softmax logits"
    assert "sigmoid" in ovr["confidence_from"] and "softmax" in soft["confidence_from"]
    doc = ovr["scores"]["ovr-doc"]
    assert doc["threshold"] == 0.0 and doc["threshold_from"] == "score"
    assert ovr["scores"]["ovr"]["threshold_from"] == "validation"
    assert list(doc["class_thresholds"]) == ovr["known_classes"]
    assert all(0.5 <= t <= 1.0 for t in doc["class_thresholds"].values())
    # same split and seed for both heads; every head folder is a complete run folder
    for head in ("softmax", "ovr"):
        d = out / head
        for f in ("config.json", "metrics.json", "history.csv", "scores.npz", "model.pt",
                  "detectors.pt", "run.json"):  # fmt: skip
            assert (d / f).is_file(), f"{head}/{f}"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["head"] == [head] and cfg["seed"] == 0
        assert json.loads((d / "metrics.json").read_text())["head"] == head
    a, b = (np.load(out / h / "scores.npz") for h in ("softmax", "ovr"))
    assert np.array_equal(a["label"], b["label"]) and np.array_equal(a["val_label"], b["val_label"])
    # the ovr-doc decision recomputed independently from the saved state
    state = torch.load(out / "ovr" / "detectors.pt", weights_only=True)["ovr-doc"]
    assert state["thresholds_"].tolist() == pytest.approx(list(doc["class_thresholds"].values()))
    margin = b["score_ovr-doc"]
    unseen = b["is_unseen"].astype(bool)
    assert doc["unseen_rejected"] == pytest.approx(np.mean(margin[unseen] < 0))
    assert doc["known_rejected"] == pytest.approx(np.mean(margin[~unseen] < 0))
    if "logits" in b.files:
        p = 1 / (1 + np.exp(-b["logits"].astype(float)))
        expected = (p - state["thresholds_"].numpy()).max(1)
        assert margin == pytest.approx(expected, abs=1e-5)
        # the ovr score is the largest sigmoid; confidence is summarised from it too
        assert b["score_ovr"] == pytest.approx(p.max(1), abs=1e-5)
        assert ovr["known_confidence"]["mean_msp"] == pytest.approx(p.max(1)[~unseen].mean())


def test_cli_rejects_ovr_score_without_ovr_head(capsys):
    from unseen.cli import main

    assert main(["run", "--scores", "ovr", "--head", "softmax", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one-vs-rest head" in err


def test_head_confidence_is_the_largest_probability_in_float64():
    from unseen.heads import confidence
    from unseen.scores import max_softmax

    z = torch.tensor([[25.0, 0.0, -3.0], [0.5, 0.2, -1.0]])
    soft = confidence("softmax", z)
    assert soft.dtype == torch.float64 and torch.equal(soft, max_softmax(z))
    assert soft[0] < 1  # float32 would round it to exactly 1
    for head in ("ovr", "ovr-separate"):
        ovr = confidence(head, z)
        assert ovr.dtype == torch.float64
        torch.testing.assert_close(ovr, z.double().sigmoid().amax(dim=1), rtol=0, atol=0)
