"""Detectors against independent computations, plus separation and sign tests for every score.

The reference computations use scikit-learn, SciPy and plain NumPy, written from the papers,
never the functions under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import weibull_min
from sklearn.covariance import EmpiricalCovariance

from unseen import detectors as det
from unseen.config import RunConfig
from unseen.errors import ConfigError
from unseen.evaluate import forward_pass
from unseen.heads import is_one_vs_rest
from unseen.metrics import auroc, open_set_metrics
from unseen.models import Classifier
from unseen.scores import SCORES, FitContext, Outputs, create_score, expand_score_names

# ----------------------------------------------------------------------------- random features


def random_problem(seed=0, n=400, d=6, k=3, n_test=60):
    """Random labelled training features (non-negative, anisotropic), test features, a head."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 2, (k, d))
    mix = rng.normal(0, 1, (d, d)) * np.linspace(0.3, 1.5, d)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    x = means[y] + rng.normal(0, 1, (n, d)) @ mix
    xt = rng.normal(0, 3, (n_test, d))
    w, b = rng.normal(0, 1, (k, d)), rng.normal(0, 1, k)
    return x, y, xt, w, b


def outputs(x, w, b, y=None) -> Outputs:
    xt = torch.as_tensor(x, dtype=torch.float32)
    logits = xt @ torch.as_tensor(w, dtype=torch.float32).T + torch.as_tensor(b).float()
    return Outputs(logits, xt, None if y is None else torch.as_tensor(y))


def context(x, y, w, b, val=None) -> FitContext:
    train = outputs(x, w, b, y)
    return FitContext(
        train, val or train, torch.as_tensor(w).float(), torch.as_tensor(b).float(), "softmax"
    )


def f32(x):
    """The float32 values the detectors see."""
    return np.asarray(x, np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- Mahalanobis


@pytest.mark.parametrize("dead_dimension", [False, True])
def test_mahalanobis_matches_sklearn_shared_covariance(dead_dimension):
    x, y, xt, w, b = random_problem(1)
    if dead_dimension:  # a feature that is always 0 (a dead ReLU): singular covariance
        x[:, 2] = 0.0
    s = create_score("mahalanobis").fit(context(x, y, w, b))
    xs, xts = f32(x), f32(xt)
    mus = np.stack([xs[y == c].mean(0) for c in range(3)])
    ec = EmpiricalCovariance(assume_centered=True).fit(xs - mus[y])  # pooled, centred per class
    expected = -np.min([ec.mahalanobis(xts - mus[c]) for c in range(3)], axis=0)
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s.covariance_.numpy(), ec.covariance_, rtol=1e-9, atol=1e-12)
    assert s.fit_summary()["covariance_rank"] == (5 if dead_dimension else 6)


def test_rmd_matches_sklearn_background_gaussian():
    x, y, xt, w, b = random_problem(2)
    s = create_score("rmd").fit(context(x, y, w, b))
    xs, xts = f32(x), f32(xt)
    mus = np.stack([xs[y == c].mean(0) for c in range(3)])
    ec = EmpiricalCovariance(assume_centered=True).fit(xs - mus[y])
    background = EmpiricalCovariance().fit(xs)
    expected = -np.min(
        [ec.mahalanobis(xts - mus[c]) - background.mahalanobis(xts) for c in range(3)], axis=0
    )
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_rmd_refuses_a_single_known_class():
    """With one class the background Gaussian is the class's own: every image would score 0."""
    from unseen.errors import InputError

    x, y, xt, w, b = random_problem(2, k=1)
    with pytest.raises(InputError, match="'rmd' needs at least two known classes"):
        create_score("rmd").fit(context(x, y, w, b))
    assert create_score("mahalanobis").fit(context(x, y, w, b)).score(outputs(xt, w, b)).std() > 0


# ----------------------------------------------------------------------------- KNN


def numpy_knn(train, test, k):
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = test / np.linalg.norm(test, axis=1, keepdims=True)
    d = np.linalg.norm(q[:, None, :] - a[None, :, :], axis=2)
    return -np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_matches_brute_force_numpy(k):
    x, y, xt, w, b = random_problem(3, n=200, d=8)
    s = det.KNN(k=k, bank_size=None).fit(context(x, y, w, b))
    got = s.score(outputs(xt, w, b)).numpy()
    np.testing.assert_allclose(got, numpy_knn(f32(x), f32(xt), k), rtol=1e-4, atol=1e-5)


def test_knn_k_above_the_smallest_class_in_the_bank_is_noted():
    from types import SimpleNamespace

    labels = np.repeat([0, 1, 2], [100, 40, 60])  # 200 training images, the smallest class 40

    def note(k, bank, scores=("msp", "knn")):
        return det.knn_k_note(SimpleNamespace(scores=scores, knn_k=k, knn_bank=bank), labels)

    assert note(40, None) is None  # the 40th neighbour can still be of its own class
    assert "--knn-k 41 is above the 40 training images" in note(41, None)
    # a bank of 100 of the 200 images holds about 20 of the smallest class
    assert note(20, 100) is None and "above the 20 training images" in note(21, 100)
    assert note(500, 10_000) is not None  # a bank above the training set holds them all
    assert note(500, None, scores=("msp",)) is None  # no knn: nothing to say
    assert note(500, None, scores=("all",)) is not None
    # a --rare class, small on purpose, is not the smallest: class 1 left out, 60 is
    exclude = det.knn_k_note(SimpleNamespace(scores=("knn",), knn_k=50, knn_bank=None), labels, [1])
    assert exclude is None
    assert "above the 60 training images" in det.knn_k_note(
        SimpleNamespace(scores=("knn",), knn_k=61, knn_bank=None), labels, [1]
    )


def test_knn_chunks_and_bank_subset():
    x, y, xt, w, b = random_problem(4, n=300, d=5)
    s = det.KNN(k=4, bank_size=120, seed=3).fit(context(x, y, w, b))
    assert s.bank_size_ == 120 and s.train_size_ == 300 and s.k_ == 4
    # the bank is 120 distinct normalised training rows
    a = f32(x) / np.linalg.norm(f32(x), axis=1, keepdims=True)
    match = np.abs(s.bank_.numpy()[:, None, :] - a[None]).max(2) < 1e-6
    assert (match.sum(1) == 1).all() and len(set(match.argmax(1))) == 120
    q = torch.nn.functional.normalize(torch.as_tensor(xt).float(), dim=1)
    chunked = det.kth_neighbour_distance(q, s.bank_, 4, max_elements=7 * 120)  # 7-row chunks
    np.testing.assert_allclose(
        -chunked.numpy(), numpy_knn(s.bank_.numpy().astype(float), f32(xt), 4), atol=1e-5
    )
    # k larger than the bank is clipped
    assert det.KNN(k=1000, bank_size=None).fit(context(x, y, w, b)).k_ == 300


def test_kth_neighbour_distance_is_exact_for_any_norms():
    # a zero query (what L2 normalisation leaves of an all-zero feature) is at distance 1
    # from every unit-norm row, not sqrt(2); a zero bank row is ranked by its true distance
    rng = np.random.default_rng(5)
    bank = rng.normal(0, 1, (30, 6))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank[3] = 0
    queries = rng.normal(0, 1, (8, 6)) * rng.uniform(0.1, 3, (8, 1))
    queries[0] = 0
    got = det.kth_neighbour_distance(torch.as_tensor(queries), torch.as_tensor(bank), 3)
    d = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    np.testing.assert_allclose(got.numpy(), np.sort(d, axis=1)[:, 2], rtol=1e-5, atol=1e-6)
    assert got[0].item() == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- ViM, ReAct


def test_vim_matches_numpy_reimplementation():
    x, y, xt, w, b = random_problem(5, n=500, d=10)
    x = np.abs(x)
    dim = 4
    s = det.ViM(dim=dim).fit(context(x, y, w, b))
    xs, xts, ws, bs = f32(x), f32(xt), f32(w), f32(b)
    # Wang et al. (2022), following the authors' code
    u = -np.linalg.pinv(ws) @ bs
    ec = EmpiricalCovariance(assume_centered=True).fit(xs - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray(eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]].T)
    logit_train = xs @ ws.T + bs
    v_train = np.linalg.norm((xs - u) @ ns, axis=-1)
    alpha = logit_train.max(axis=-1).mean() / v_train.mean()
    logit_test = xts @ ws.T + bs
    expected = -alpha * np.linalg.norm((xts - u) @ ns, axis=-1) + logsumexp(logit_test, axis=-1)
    assert s.alpha_ == pytest.approx(alpha, rel=1e-5)
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_vim_dimension_must_be_below_feature_dimension():
    x, y, xt, w, b = random_problem(5, d=6)
    with pytest.raises(ConfigError, match="vim-dim"):
        det.ViM(dim=6).fit(context(x, y, w, b))
    assert det.ViM().fit(context(x, y, w, b)).dim_ == 3  # auto: half of 6


def test_vim_subspace_stays_below_the_rank_of_the_training_features():
    # 6 training images in 10 features: the centred features span 6 directions; a principal
    # subspace of 5 (auto, half the features) used to... fit, then a subspace of all 6 left
    # no residual and alpha ~1e12. Auto now takes half the rank; --vim-dim is capped below it.
    x, y, xt, w, b = random_problem(7, n=6, d=10)
    ctx = context(x, y, w, b)
    auto = det.ViM().fit(ctx)
    assert (auto.rank_, auto.dim_, auto.requested_dim_) == (6, 3, None)
    asked = det.ViM(dim=8).fit(ctx)
    assert (asked.dim_, asked.requested_dim_) == (5, 8)
    assert asked.fit_summary()["requested_dim"] == 8 and "requested_dim" not in auto.fit_summary()
    # the result is ViM with that dimension: alpha of the order of the logits, and the
    # scores do not depend on the order of the training rows (up to float32 sums: the
    # training logits' order changes alpha's last bits, by CPU)
    same = det.ViM(dim=3).fit(ctx)
    assert auto.alpha_ == pytest.approx(same.alpha_) and 0.01 < abs(auto.alpha_) < 100
    order = np.random.default_rng(0).permutation(6)
    shuffled = det.ViM().fit(context(x[order], y[order], w, b))
    test = outputs(xt, w, b)
    torch.testing.assert_close(shuffled.score(test), auto.score(test), rtol=1e-5, atol=1e-6)
    # full-rank features keep the old rule: half the features
    x, y, xt, w, b = random_problem(7, n=200, d=10)
    assert det.ViM().fit(context(x, y, w, b)).dim_ == 5


def test_run_summary_says_when_the_rank_lowered_vim_dim(digits_run):
    from unseen.console import run_summary

    metrics = json.loads((digits_run / "metrics.json").read_text())
    fit = {"alpha": 2.0, "dim": 5, "rank": 6, "requested_dim": 8}
    metrics["scores"]["vim"] = {**metrics["scores"]["msp"], "fit": fit}
    note = "note: vim used a 5-dimensional principal subspace, not --vim-dim 8: the training features span only 6"
    assert note in run_summary(metrics)
    metrics["scores"]["vim"]["fit"] = {**fit, "dim": 8, "rank": 60}
    assert "note: vim used" not in run_summary(metrics)


@pytest.mark.parametrize("percentile", [90.0, 50.0])
def test_react_matches_numpy(percentile):
    x, y, xt, w, b = random_problem(6)
    x, xt = np.maximum(x, 0), np.maximum(xt, 0)  # post-ReLU features
    s = det.ReAct(percentile=percentile).fit(context(x, y, w, b))
    c = np.percentile(f32(x).ravel(), percentile)
    expected = logsumexp(np.minimum(f32(xt), c) @ f32(w).T + f32(b), axis=1)
    assert s.clip_ == pytest.approx(c, rel=1e-6)
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- ASH, SCALE, DICE


def numpy_shape(x, percentile, variant):
    """ASH / SCALE written from the papers with NumPy: per row, keep the n - round(n p / 100)
    largest activations; s1 = sum of all, s2 = sum of those kept."""
    out = np.zeros_like(x)
    for i, row in enumerate(x):
        keep = max(1, len(row) - int(np.round(len(row) * percentile / 100)))
        top = np.argsort(-row, kind="stable")[:keep]
        s1, s2 = row.sum(), row[top].sum()
        if variant == "scale":
            out[i] = row * np.exp(s1 / s2)
        elif variant == "s":
            out[i, top] = row[top] * np.exp(s1 / s2)
        elif variant == "b":
            out[i, top] = s1 / keep
        else:
            out[i, top] = row[top]
    return out


def test_ash_and_scale_on_a_known_vector():
    x = torch.tensor([[4.0, 0.0, 3.0, 1.0, 2.0]])  # p = 60: keeps 5 - round(3) = 2 (4 and 3)
    e = math.exp(10 / 7)  # s1 = 10, s2 = 4 + 3
    torch.testing.assert_close(det.ash(x, 60, "p"), torch.tensor([[4.0, 0, 3, 0, 0]]).double())
    torch.testing.assert_close(det.ash(x, 60, "b"), torch.tensor([[5.0, 0, 5, 0, 0]]).double())
    torch.testing.assert_close(
        det.ash(x, 60, "s"), torch.tensor([[4 * e, 0, 3 * e, 0, 0]]).double()
    )
    torch.testing.assert_close(det.scale(x, 60), x.double() * e)
    # ties at the cut go to the lower index: b fills the same entries on every device
    tied = torch.tensor([[0.0, 2.0, 0.0, 0.0]])  # p = 50 keeps 2: the 2 and the first 0
    torch.testing.assert_close(det.ash(tied, 50, "b"), torch.tensor([[1.0, 1, 0, 0]]).double())
    assert det.kept_count(5, 99.9) == 1 and det.kept_count(512, 90) == 51
    assert det.kept_count(64, 90) == 6  # 57.6 rounds to 58
    # an all-zero image stays zero: the energy of the bias alone, not NaN
    zero = torch.zeros(1, 5)
    assert torch.equal(det.ash(zero, 90, "s"), zero.double())
    assert torch.equal(det.scale(zero, 90), zero.double())


@pytest.mark.parametrize(("name", "variant", "percentile"),
                         [("ash", "s", 90.0), ("ash", "b", 65.0), ("ash", "p", 50.0),
                          ("scale", "scale", 85.0), ("scale", "scale", 0.0)])  # fmt: skip
def test_ash_and_scale_match_numpy(name, variant, percentile):
    x, y, xt, w, b = random_problem(14, d=20)
    x, xt = np.maximum(x, 0), np.maximum(xt, 0)  # post-ReLU features
    s = det.ASH(percentile, variant) if name == "ash" else det.Scale(percentile)
    s.fit(context(x, y, w, b))
    expected = logsumexp(numpy_shape(f32(xt), percentile, variant) @ f32(w).T + f32(b), axis=1)
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["ash", "scale"])
def test_activation_shaping_refuses_negative_features(name):
    x, y, xt, w, b = random_problem(15)
    with pytest.raises(ValueError, match=f"'{name}' shapes post-ReLU activations"):
        create_score(name).fit(context(x, y, w, b))
    s = create_score(name).fit(FitContext(head_weight=w, head_bias=b))  # no training outputs
    with pytest.raises(ValueError, match="Outputs.features has negative values"):
        s.score(outputs(xt, w, b))
    with pytest.raises(ValueError, match="fitted on 6 features per image; these outputs have 3"):
        s.score(Outputs(np.zeros((2, 3)), np.ones((2, 3))))


def separate_problem(seed=18, k=3, d=8, n=200):
    """Features of K member networks side by side (member m: columns m*d:(m+1)*d, on their
    own scale), a block-diagonal head as ovr-separate stacks the members' one-output heads."""
    rng = np.random.default_rng(seed)
    scales = np.repeat(np.array([0.5, 1.0, 2.0])[:k], d)
    x = rng.gamma(2.0, 1.0, (n, k * d)) * scales
    xt = rng.gamma(2.0, 1.0, (40, k * d)) * scales
    w = np.zeros((k, k * d))
    for m in range(k):
        w[m, m * d : (m + 1) * d] = rng.normal(0, 1, d)
    b = rng.normal(0, 1, k)
    return x, rng.integers(0, k, n), xt, w, b


@pytest.mark.parametrize("name", ["ash", "scale", "dice"])
def test_ovr_separate_members_are_shaped_and_sparsified_one_by_one(name):
    """On ovr-separate each member network is treated as the paper's network: its own
    features shaped (ash, scale), its own one-output head sparsified (dice) -- not the
    stacked features and block-diagonal head as a whole."""
    x, y, xt, w, b = separate_problem()
    k, d = w.shape[0], w.shape[1] // w.shape[0]
    ctx = context(x, y, w, b)
    ctx.head = "ovr-separate"
    s = create_score(name).fit(ctx)
    assert s.members_ == k
    expected = np.empty((len(xt), k))
    for m in range(k):  # each member alone: its features, its one-output head
        cols = slice(m * d, (m + 1) * d)
        member = create_score(name).fit(context(x[:, cols], y, w[m : m + 1, cols], b[m : m + 1]))
        feats = f32(xt[:, cols])
        if name == "dice":
            feats_w = member.head_weight_.double().numpy()
        else:
            feats = member.shape(torch.as_tensor(feats)).numpy()
            feats_w = f32(w[m : m + 1, cols])
        expected[:, m] = (feats @ feats_w.T)[:, 0] + f32(b[m])
    np.testing.assert_allclose(
        s.score(outputs(xt, w, b)).numpy(), logsumexp(expected, axis=1), rtol=1e-6
    )
    if name == "dice":  # 90% of each member's d weights go, none of the structural zeros count
        assert s.kept_fraction_ == pytest.approx(1 / d)


def test_activation_shaping_refuses_a_scale_beyond_float64():
    """exp(s1/s2) overflows float64 past s1/s2 = 709.8; s1/s2 reaches n/k for even
    activations: 2048 of them, one kept (p = 99.99), is refused in one sentence."""
    x = torch.ones(2, 2048)
    with pytest.raises(ValueError, match="beyond float64: keep more activations"):
        det.ash(x, 99.99, "s")
    with pytest.raises(ValueError, match="beyond float64"):
        det.scale(x, 99.99)
    # 10 kept: exp(204.8), within float64
    torch.testing.assert_close(det.scale(x, 99.5), x.double() * math.exp(204.8))


@pytest.mark.parametrize("sparsity", [90.0, 50.0, 0.0])
def test_dice_matches_numpy(sparsity):
    x, y, xt, w, b = random_problem(16, d=12)
    x, xt = np.maximum(x, 0), np.maximum(xt, 0)
    s = det.DICE(sparsity).fit(context(x, y, w, b))
    contribution = f32(x).mean(0)[None, :] * f32(w)
    mask = contribution > np.percentile(contribution, sparsity)
    expected = logsumexp(f32(xt) @ (f32(w) * mask).T + f32(b), axis=1)
    np.testing.assert_allclose(s.score(outputs(xt, w, b)).numpy(), expected, rtol=1e-6)
    assert s.kept_fraction_ == pytest.approx(mask.mean())


def test_dice_drops_the_weights_of_smallest_mean_contribution():
    """A known answer: mean features (1, 2, 3); contributions W * mean; sparsity 50 of the
    six sets to zero the three at or below the median contribution (the bias is kept)."""
    train = Outputs(np.zeros((2, 2)), [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [0, 1])
    w = np.array([[1.0, 1.0, 1.0], [3.0, 0.1, -1.0]])  # contributions 1 2 3 / 3 0.2 -3
    s = det.DICE(50).fit(FitContext(train, head_weight=w, head_bias=[0.5, -0.5]))
    # the median contribution is 1.5: the weights of contributions 2, 3 and 3 stay
    torch.testing.assert_close(s.head_weight_, torch.tensor([[0.0, 1.0, 1.0], [3.0, 0.0, 0.0]]))
    assert s.kept_fraction_ == 0.5
    feats = torch.tensor([[2.0, 5.0, 1.0]])  # logits 5 + 1 + 0.5 and 6 - 0.5
    torch.testing.assert_close(
        s.score(Outputs(np.zeros((1, 2)), feats)),
        torch.logsumexp(torch.tensor([[6.5, 5.5]]).double(), 1),
    )


# ----------------------------------------------------------------------------- GEN


@pytest.mark.parametrize(("gamma", "m"), [(0.1, 100), (0.5, 2), (0.9, 1)])
def test_gen_matches_numpy(gamma, m):
    z = np.random.default_rng(17).normal(0, 4, (50, 6))
    p = -np.sort(-softmax(z, axis=1), axis=1)[:, :m]
    expected = -(p**gamma * (1 - p) ** gamma).sum(1)
    s = det.GEN(gamma, m).fit(FitContext())
    np.testing.assert_allclose(s.score(Outputs(z)).numpy(), expected, rtol=1e-12)
    # uniform over K classes: -K (1/K)^g (1 - 1/K)^g, the lowest value (least known)
    uniform = s.score(Outputs(np.zeros((1, 4)))).item()
    assert uniform == pytest.approx(-min(m, 4) * (0.25 * 0.75) ** gamma)
    assert s.score(Outputs([[50.0, 0, 0, 0]])).item() > uniform


# ----------------------------------------------------------------------------- temperature


def numpy_nll(z, y, t):
    logp = z / t - logsumexp(z / t, axis=1, keepdims=True)
    return -logp[np.arange(len(y)), y].mean()


def test_temperature_minimises_validation_nll_and_recovers_a_known_temperature():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 3, (6000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(z / 2.5, axis=1)])  # true T = 2.5
    val = Outputs(torch.as_tensor(z).float(), torch.zeros(len(z), 2), torch.as_tensor(y))
    ctx = FitContext(None, val, torch.zeros(4, 2), torch.zeros(4))
    s = create_score("temperature").fit(ctx)
    t = s.temperature_
    zs = f32(z)
    for other in (t * 1.01, t / 1.01, 1.0):
        assert numpy_nll(zs, y, t) <= numpy_nll(zs, y, other) + 1e-12
    grid = np.linspace(1.5, 4.0, 501)
    assert t == pytest.approx(grid[np.argmin([numpy_nll(zs, y, g) for g in grid])], abs=6e-3)
    assert t == pytest.approx(2.5, rel=0.08)
    assert not s.at_bound_
    expected = softmax(zs / t, axis=1).max(1)
    np.testing.assert_allclose(s.score(val).numpy(), expected, rtol=1e-9)
    assert json.dumps(s.fit_summary())  # JSON-friendly


@pytest.mark.parametrize("seed", range(40))
def test_fitted_temperature_is_the_nll_minimum_scipy_finds(seed):
    # partly informative logits of many scales; the minimum must not be left at a midpoint
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 500)), int(rng.integers(2, 10))
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k)) * rng.uniform(0.5, 20)
    z[np.arange(n), y] += rng.uniform(0, 10)
    zt, yt = torch.as_tensor(z).float(), torch.as_tensor(y)
    t = det.fit_temperature(zt, yt, det.TEMPERATURE_BOUNDS)
    zs = f32(z)
    best = minimize_scalar(
        lambda beta: numpy_nll(zs, y, 1 / beta), bounds=(0.01, 100), method="bounded",
        options={"xatol": 1e-12},
    )  # fmt: skip
    assert numpy_nll(zs, y, t) <= best.fun + 1e-9


# ----------------------------------------------------------------------------- OpenMax


@pytest.mark.parametrize("spread", [1e-5, 3e-6, 1e-7, 2e-9])
def test_weibull_tail_fit_of_nearly_equal_distances(spread):
    # near-duplicate tails need a huge shape (about 1 / spread): found, not a brentq error
    tail = 7.0 * (1 + spread * np.random.default_rng(0).random(20))
    shape, scale, n = det.fit_weibull_tail(tail, tail_size=20)
    assert n == 20 and 0.1 / spread < shape < 10 / spread
    assert tail.min() * (1 - spread) <= scale <= tail.max()
    assert np.isfinite(weibull_min(shape, scale=scale).logpdf(tail)).all()


def test_weibull_tail_fit_recovers_known_parameters():
    sample = weibull_min.rvs(3.0, scale=2.0, size=4000, random_state=np.random.default_rng(8))
    shape, scale, n = det.fit_weibull_tail(sample, tail_size=4000)
    assert n == 4000
    assert shape == pytest.approx(3.0, rel=0.06) and scale == pytest.approx(2.0, rel=0.03)
    shape, scale, n = det.fit_weibull_tail(np.arange(100.0), tail_size=10)
    assert n == 10
    # the tail is the 10 largest values: the fitted CDF is near 0 below 90 and near 1 at 99+
    assert (
        weibull_min.cdf(85, shape, scale=scale)
        < 0.05
        < 0.9
        < weibull_min.cdf(100, shape, scale=scale)
    )


def reference_openmax(v, mavs, shapes, scales, alpha):
    """The per-image loop of the authors' compute_openmax.py (Euclidean distance)."""
    out = []
    for row in v:
        ranked = np.argsort(row)[::-1]
        weights = [((alpha + 1) - i) / float(alpha) for i in range(1, alpha + 1)]
        revised, unknown = row.copy(), 0.0
        for r in range(alpha):
            c = ranked[r]
            wscore = weibull_min.cdf(np.linalg.norm(row - mavs[c]), shapes[c], scale=scales[c])
            revised[c] = row[c] * (1 - weights[r] * wscore)
            unknown += row[c] - revised[c]
        out.append(softmax(np.r_[unknown, revised]))
    return np.array(out)


def test_openmax_matches_reference_loop():
    x, y, xt, w, b = random_problem(9, n=600, d=5, k=4)
    s = det.OpenMax(tail_size=15, alpha=2).fit(context(x, y, w, b))
    logits_train = outputs(x, w, b).logits.double().numpy()
    correct = logits_train.argmax(1) == y
    for c in range(4):
        av = logits_train[(y == c) & correct]
        mav = av.mean(0)
        tail = np.sort(np.linalg.norm(av - mav, axis=1))[-15:]
        np.testing.assert_allclose(s.mavs_[c].numpy(), mav, rtol=1e-9)
        shape, _, scale = weibull_min.fit(tail, floc=0)  # scipy's numerical optimiser
        got = s.weibull_shape_[c].item(), s.weibull_scale_[c].item()
        np.testing.assert_allclose(got, (shape, scale), rtol=1e-4)
        # the exact root is at least as likely as scipy's approximate optimum
        loglik = weibull_min(got[0], scale=got[1]).logpdf(tail).sum()
        assert loglik >= weibull_min(shape, scale=scale).logpdf(tail).sum() - 1e-9
    out = outputs(xt, w, b)
    expected = reference_openmax(
        out.logits.double().numpy(), s.mavs_.numpy(), s.weibull_shape_.numpy(),
        s.weibull_scale_.numpy(), 2,
    )  # fmt: skip
    np.testing.assert_allclose(s.probabilities(out).numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.score(out).numpy(), 1 - expected[:, 0], rtol=1e-9, atol=1e-12)
    assert (s.accepts(out).numpy() == (expected.argmax(1) != 0)).all()
    assert len(s.fit_summary()["weibull_shape"]) == 4


def test_openmax_class_with_one_image_borrows_the_median_weibull():
    x, y, _, w, b = random_problem(3, k=3)
    y = y.copy()
    y[y == 2] = 0
    y[0] = 2  # class 2: a single training image, no distance to fit a Weibull on
    fits = [det.OpenMax().fit(context(x * f, y, w, b * f)) for f in (1.0, 10.0)]
    for s in fits:
        assert s.tail_counts_.tolist()[2] == 0
        assert s.weibull_scale_[2] == pytest.approx(np.median(s.weibull_scale_[:2].numpy()))
        assert s.weibull_shape_[2] == pytest.approx(np.median(s.weibull_shape_[:2].numpy()))
        assert s.fit_summary()["tail_counts"][2] == 0
    # it scales with the logits, as the fitted classes' scales do
    assert float(fits[1].weibull_scale_[2]) == pytest.approx(10 * float(fits[0].weibull_scale_[2]))


def test_openmax_own_prediction_is_the_recalibrated_argmax():
    # logits 10 and 9.5: recalibration takes most from class 0 (far from its mean), so
    # OpenMax's class is 1 although the largest logit is class 0's (Bendale and Boult, Alg. 2)
    s = det.OpenMax(alpha=2)
    s.mavs_ = torch.tensor(
        [[13.0, 0.0, 0.0], [10.0, 9.5, 0.0], [0.0, 0.0, 10.0]], dtype=torch.float64
    )
    s.weibull_shape_ = torch.full((3,), 2.0, dtype=torch.float64)
    s.weibull_scale_ = torch.full((3,), 10.0, dtype=torch.float64)
    s.alpha_ = 2
    out = Outputs(torch.tensor([[10.0, 9.5, 0.0]]), torch.zeros(1, 2))
    assert s.probabilities(out).argmax(1).item() == 2  # column 0 is "unknown"
    assert bool(s.accepts(out)) and s.own_prediction(out).item() == 1
    assert out.logits.argmax(1).item() == 0
    assert create_score("msp").own_prediction(out) is None


# ----------------------------------------------------------------------------- ODIN


def linear_model(w, b, std=1.0) -> Classifier:
    """A Classifier whose features are the pixels (1 x 1 x D images) divided by ``std``."""
    k, d = w.shape
    model = Classifier(torch.nn.Flatten(), d, k, 1)
    model.set_normalization(torch.zeros(1), torch.full((1,), std))
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(w))
        model.head.bias.copy_(torch.as_tensor(b))
    return model


def test_odin_matches_analytic_gradient_of_a_linear_model():
    rng = np.random.default_rng(10)
    w, b = rng.normal(0, 3, (3, 6)), rng.normal(0, 1, 3)
    x = rng.uniform(0, 1, (20, 1, 1, 6))
    t, eps = 5.0, 0.05
    model = linear_model(w, b)
    got = det.odin_scores(model, torch.as_tensor(x).float(), t, eps).numpy()
    xf, wf, bf = f32(x).reshape(20, 6), f32(w), f32(b)
    p = softmax((xf @ wf.T + bf) / t, axis=1)
    onehot = np.eye(3)[p.argmax(1)]
    grad = (p - onehot) @ wf / t  # d/dx of cross-entropy(f(x)/T, predicted class)
    x_tilde = xf - eps * np.sign(grad)
    expected = softmax((x_tilde @ wf.T + bf) / t, axis=1).max(1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the perturbation raises the max softmax (it descends the loss) compared to eps = 0
    plain = det.odin_scores(model, torch.as_tensor(x).float(), t, 0.0).numpy()
    assert (got >= plain - 1e-7).all() and (got > plain).any()


def test_odin_takes_rows_of_a_module_of_ones_own_and_any_strides():
    # a plain MLP on N x D rows: not image batches, so not made channels_last
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(10, 5))
    rows = torch.rand(6, 10)
    got = det.odin_scores(mlp, rows, temperature=10, epsilon=0.01)
    assert got.shape == (6,) and got.dtype == torch.float64 and got.isfinite().all()
    # the same pixels in NCHW and NHWC strides: the same scores, to the last bit
    model = linear_model(np.random.default_rng(1).normal(0, 1, (3, 16)), np.zeros(3))
    x = torch.randint(0, 256, (5, 4, 4, 1), dtype=torch.uint8).permute(0, 3, 1, 2)
    nchw = torch.empty(x.shape, dtype=x.dtype).copy_(x)
    assert torch.equal(x, nchw) and x.stride() != nchw.stride()
    torch.testing.assert_close(
        det.odin_scores(model, x, 10.0, 0.01), det.odin_scores(model, nchw, 10.0, 0.01),
        rtol=0, atol=0,
    )  # fmt: skip


def test_odin_runs_the_head_in_fp32_under_bf16():
    # as forward_pass does: at T = 1000, bf16 logits' rounding (3 significant digits) is as
    # large as the perturbation's effect. Flatten and the normalisation do not round, so
    # with the head in fp32 bf16 gives the fp32 scores exactly.
    rng = np.random.default_rng(12)
    model = linear_model(rng.normal(0, 3, (3, 6)), rng.normal(0, 1, 3))
    x = torch.as_tensor(rng.uniform(0, 1, (20, 1, 1, 6))).float()
    fp32 = det.odin_scores(model, x, 1000.0, 0.0014)
    torch.testing.assert_close(det.odin_scores(model, x, 1000.0, 0.0014, precision="bf16"), fp32)


def test_odin_progress_bar_on_a_terminal_only(capsys, request):
    rng = np.random.default_rng(11)
    model = linear_model(rng.normal(0, 3, (3, 6)), rng.normal(0, 1, 3))
    x = torch.as_tensor(rng.uniform(0, 1, (20, 1, 1, 6))).float()
    plain = det.odin_scores(model, x, 5.0, 0.05, batch_size=8)
    assert capsys.readouterr().err == ""

    terminal = request.getfixturevalue("terminal")
    s = create_score("odin", RunConfig(odin_temperature=5.0, odin_epsilon=0.05))
    shown = s.score_images(model, x, desc="odin, test images")
    torch.testing.assert_close(shown, plain)
    assert "odin, test images:" in terminal.getvalue() and "/20.0 " in terminal.getvalue()
    torch.testing.assert_close(s.score_images(model, x.numpy(), batch_size=8), plain)
    with pytest.raises(ValueError, match="call score_images"):  # an InputError
        s.score(Outputs(logits=torch.zeros(2, 3)))


def test_odin_runs_only_when_named():
    assert "odin" not in expand_score_names(["all"])
    assert expand_score_names(["all", "odin"])[-1] == "odin"
    s = create_score("odin", RunConfig(odin_temperature=10.0, odin_epsilon=0.01))
    assert (s.temperature, s.epsilon) == (10.0, 0.01)


# ----------------------------------------------------------------------------- every score


def synthetic_run(seed=0, k=3, d=16, std=0.1):
    """Images whose pixels are the features (x std): known class c lights up block c of 4
    dimensions, the unseen class the last block (a far-away cluster); noise elsewhere. Returns the model and the
    uint8 images and labels of train, validation and test (unseen = -1)."""
    rng = np.random.default_rng(seed)

    def images(labels, ambiguous=0.0):
        x = rng.uniform(0, 0.05, (len(labels), d))
        for i, c in enumerate(labels):
            block = c if c >= 0 else d // 4 - 1
            x[i, 4 * block : 4 * block + 4] += rng.uniform(0.45, 0.75, 4)
            if c >= 0:  # class-dependent offsets in the unseen block, so that the unseen
                # direction is not one that relative Mahalanobis cancels by design
                x[i, d - 4 :] += 0.05 * c
            if c >= 0 and rng.random() < ambiguous:  # look like two classes at once
                other = (c + 1 + rng.integers(k - 1)) % k
                x[i, 4 * other : 4 * other + 4] += rng.uniform(0.3, 0.6, 4)
        return torch.as_tensor(np.round(x * 255).clip(0, 255), dtype=torch.uint8).reshape(
            len(labels), 1, 1, d
        )

    w = np.zeros((k, d))
    for c in range(k):
        w[c, 4 * c : 4 * c + 4] = 0.25
    model = linear_model(w, np.zeros(k), std=std)
    y_train = np.arange(300) % k
    y_val = np.arange(90) % k
    y_test = np.r_[np.arange(90) % k, -np.ones(60, int)]
    # ambiguous training and validation images: a validation NLL with an interior minimum
    return model, [
        (images(y, a), torch.as_tensor(y))
        for y, a in ((y_train, 0.15), (y_val, 0.15), (y_test, 0.0))
    ]


@pytest.mark.parametrize("name", list(SCORES))
def test_every_score_separates_and_is_oriented_higher_known(name):
    """Separation and sign for every registered score, including other engineers' scores:
    known-class test images must score higher than a far-away unseen cluster."""
    model, ((xtr, ytr), (xv, yv), (xte, yte)) = synthetic_run()
    head = "ovr" if SCORES[name].one_vs_rest_only and is_one_vs_rest("ovr") else "softmax"
    train = forward_pass(model, xtr, torch.device("cpu"), labels=ytr)
    val = forward_pass(model, xv, torch.device("cpu"), labels=yv)
    test = forward_pass(model, xte, torch.device("cpu"), labels=yte)
    ctx = FitContext(train, val, model.head.weight.detach(), model.head.bias.detach(), head)
    # dice: 36 of the head's 48 weights are zero, so its default 90% sparsity would also
    # drop weights that matter; 70% keeps all 12 that are not
    s = create_score(name, RunConfig(dice_sparsity=70)).fit(ctx)
    values = s.score_images(model, xte, "cpu", "fp32") if s.needs_model else s.score(test)
    values = values.float().numpy()
    assert values.shape == (len(yte),) and np.isfinite(values).all()
    a = auroc(values, yte.numpy() >= 0)
    assert a > 0.97, f"{name}: AUROC {a:.3f} (below 0.5 would mean an inverted sign)"


def test_fit_uses_known_training_data_only():
    """The fitted state of a train-fitted detector depends on the training outputs only, and
    not on what is scored afterwards."""
    x, y, xt, w, b = random_problem(11)
    ctx = context(x, y, w, b)
    for name in ("mahalanobis", "rmd", "knn", "vim", "react", "dice", "openmax"):
        s1 = create_score(name).fit(ctx)
        before = {k: v.clone() if torch.is_tensor(v) else v for k, v in s1.fitted_state().items()}
        s1.score(outputs(xt, w, b))
        for key, v in s1.fitted_state().items():
            assert torch.equal(v, before[key]) if torch.is_tensor(v) else v == before[key]
        with pytest.raises(ValueError, match="training outputs"):
            create_score(name).fit(FitContext(None, ctx.val, ctx.head_weight, ctx.head_bias))
        # rows labelled unseen (-1) are refused by every score, labels needed or not
        unseen_rows = FitContext(outputs(x, w, b, np.where(np.arange(len(y)) < 5, -1, y)),
                                 ctx.val, ctx.head_weight, ctx.head_bias)  # fmt: skip
        with pytest.raises(ValueError, match="known classes only"):
            create_score(name).fit(unseen_rows)


def test_detector_settings_come_from_the_config():
    cfg = RunConfig(knn_k=7, knn_bank=None, vim_dim=5, react_percentile=80, openmax_tail=9,
                    openmax_alpha=2)  # fmt: skip
    knn, vim = create_score("knn", cfg), create_score("vim", cfg)
    react, om = create_score("react", cfg), create_score("openmax", cfg)
    assert (knn.k, knn.bank_size, vim.dim, react.percentile) == (7, None, 5, 80)
    assert (om.tail_size, om.alpha) == (9, 2)
    cfg = RunConfig(ash_percentile=65, ash_variant="b", scale_percentile=80, dice_sparsity=70,
                    gen_gamma=0.5, gen_m=3)  # fmt: skip
    ash, scale = create_score("ash", cfg), create_score("scale", cfg)
    dice, gen = create_score("dice", cfg), create_score("gen", cfg)
    assert (ash.percentile, ash.variant, scale.percentile) == (65, "b", 80)
    assert (dice.sparsity, gen.gamma, gen.m) == (70, 0.5, 3)


def test_detector_options_are_checked():
    from unseen.config import parse_value

    assert parse_value("knn_bank", "all") is None
    assert parse_value("knn_bank", "500") == 500
    for name, bad in [("knn_k", "0"), ("react_percentile", "0"), ("react_percentile", "101"),
                      ("openmax_tail", "1"), ("odin_epsilon", "-1"), ("vim_dim", "0"),
                      ("ash_percentile", "100"), ("ash_percentile", "-1"), ("ash_variant", "x"),
                      ("scale_percentile", "100"), ("dice_sparsity", "100"), ("gen_gamma", "0"),
                      ("gen_m", "0")]:  # fmt: skip
        with pytest.raises(ConfigError):
            parse_value(name, bad)
    # the same checks for a score built in Python
    for make in (lambda: det.ASH(percentile=100), lambda: det.ASH(variant="x"),
                 lambda: det.Scale(-1), lambda: det.DICE(100), lambda: det.GEN(gamma=-1),
                 lambda: det.GEN(m=2.5)):  # fmt: skip
        with pytest.raises(ConfigError):
            make()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_digits_run_with_every_score(tmp_path):
    from unseen.cli import main

    out = tmp_path / "run"
    code = main(["run", "--epochs", "3", "--train-subset", "600", "--device", "cpu",
                 "--precision", "fp32", "--scores", "all,odin", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = [n for n in expand_score_names(["all", "odin"]) if not SCORES[n].one_vs_rest_only]
    assert list(metrics["scores"]) == expected
    for name, m in metrics["scores"].items():
        # a 3-epoch model on 600 images is weak: some scores may be near chance
        assert 0.0 <= m["auroc"] <= 1.0, name
        assert "fit" in m and m["seconds"] >= 0
    assert metrics["scores"]["knn"]["fit"]["k"] == 50
    assert 0 < metrics["scores"]["temperature"]["fit"]["temperature"] < 100
    own = metrics["scores"]["openmax"]["own_decision"]
    assert 0 <= own["unseen_rejected"] <= 1
    # recomputed from the stored logits and OpenMax's stored state: its own classes, not argmax
    arrays = np.load(out / "scores.npz")
    assert arrays["score_msp"].dtype == np.float64
    detectors = torch.load(out / "detectors.pt", weights_only=True)
    openmax = det.OpenMax().load_fitted_state(detectors["openmax"])
    test = Outputs(torch.from_numpy(arrays["logits"]), torch.from_numpy(arrays["features"]))
    expected = open_set_metrics(
        openmax.accepts(test).float().numpy(), 0.5, openmax.own_prediction(test).numpy(),
        arrays["label_known"], 9,
    )  # fmt: skip
    assert own == pytest.approx(expected)
    assert detectors["mahalanobis"]["precision_"].shape == (64, 64)
    assert detectors["openmax"]["weibull_shape_"].shape == (9,)


def test_temperature_at_the_bounds():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]] * 10)
    y = z.argmax(1)  # perfectly separated: the NLL keeps falling as T -> 0
    val = Outputs(z, torch.zeros(len(z), 2), y)
    s = create_score("temperature").fit(FitContext(None, val, torch.zeros(2, 2), torch.zeros(2)))
    assert s.fitted_temperature_ == det.TEMPERATURE_BOUNDS[0] and s.at_bound_
    # no calibrated optimum: the score falls back to T = 1 (plain MSP) instead of saturating
    assert s.degenerate_ and s.temperature_ == 1.0
    assert torch.equal(s.score(val), z.double().softmax(1).amax(1))
    val = Outputs(z, torch.zeros(len(z), 2), 1 - y)  # always wrong: T -> infinity
    s = create_score("temperature").fit(FitContext(None, val, torch.zeros(2, 2), torch.zeros(2)))
    assert s.temperature_ == det.TEMPERATURE_BOUNDS[1] and s.at_bound_ and not s.degenerate_


@pytest.mark.parametrize(
    "name", ["mahalanobis", "rmd", "knn", "vim", "react", "ash", "scale", "dice", "gen", "openmax"]
)
def test_restored_detector_scores_the_same(name, tmp_path):
    """What detectors.pt holds is enough to score again (weights-only loading), to the last
    bit: a threshold is one of the validation scores, and an image at it must stay accepted."""
    x, y, xt, w, b = random_problem(12)
    x, xt = np.maximum(x, 0), np.maximum(xt, 0)  # post-ReLU features (ash, scale)
    s = create_score(name).fit(context(x, y, w, b))
    torch.save(s.fitted_state(), tmp_path / "d.pt")
    restored = create_score(name).load_fitted_state(
        torch.load(tmp_path / "d.pt", weights_only=True)
    )
    out = outputs(xt, w, b)
    np.testing.assert_array_equal(restored.score(out).numpy(), s.score(out).numpy())


def test_cli_rejects_knn_k_above_the_bank(capsys):
    from unseen.cli import main

    assert main(["run", "--knn-k", "100", "--knn-bank", "50"]) == 2
    assert "--knn-k 100 is larger than --knn-bank 50" in capsys.readouterr().err


@pytest.mark.parametrize("q", [0.0, 37.5, 90.0, 99.9, 100.0])
def test_sorted_percentile_interpolates_like_numpy(q):
    """The GPU path of ReAct's percentile (sort, then interpolate), run on the CPU."""
    x = torch.rand(1001, dtype=torch.float64) ** 3
    assert det.sorted_percentile(x.sort().values, q) == pytest.approx(np.percentile(x, q))


def test_vim_dim_is_checked_against_every_head_before_training(tmp_path, capsys):
    from unseen.cli import main
    from unseen.experiment import check_score_settings

    cfg = RunConfig(scores=("vim",), vim_dim=64)  # resnet20: 64 features
    with pytest.raises(ConfigError, match="--vim-dim 64 must be below the feature dimension 64"):
        check_score_settings(cfg, 9)
    check_score_settings(cfg.replace(head=("ovr-separate",)), 9)  # 9 networks: 576 features
    check_score_settings(cfg.replace(scores=("msp",)), 9)  # no vim: nothing to check
    with pytest.raises(ConfigError):
        check_score_settings(cfg.replace(head=("ovr-separate", "softmax")), 9)
    # a sweep refuses it while planning: no folder, exit 2
    code = main(["sweep", "--protocol", "single", "--seeds", "2", "--scores", "vim",
                 "--vim-dim", "64", "--out", str(tmp_path / "sw"), "--dry-run"])  # fmt: skip
    assert code == 2 and "--vim-dim 64 must be below" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_the_run_summary_notes_a_vim_alpha_that_is_not_positive(digits_run):
    import json

    from unseen.console import run_summary

    metrics = json.loads((digits_run / "metrics.json").read_text())
    for alpha, noted in ((2.0, False), (-0.25, True)):
        metrics["scores"]["vim"] = {**metrics["scores"]["msp"], "fit": {"alpha": alpha}}
        assert ("note: vim's alpha is -0.25" in run_summary(metrics)) == noted
    # several heads share one table: the note says which head it is about
    from unseen.console import heads_summary

    ok = {**metrics, "scores": {**metrics["scores"], "vim": {"fit": {"alpha": 1.0}}}}
    shown = heads_summary({"softmax": metrics, "ovr": ok})
    assert "head softmax: note: vim's alpha is -0.25" in shown and "head ovr: note" not in shown


# ----------------------------------------------------------------------------- score options


def test_every_score_option_belongs_to_one_score_which_reads_it():
    """Each detector option (and --doc-alpha) is declared by exactly one score, rescore can
    change it, and the score's from_config really reads it."""
    from unseen.config import FIELDS, SCORE_OPTIONS

    owners = {}
    for name, cls in SCORES.items():
        for option in cls.options:
            assert option not in owners, f"{option}: {owners.get(option)} and {name}"
            owners[option] = name
    detector_fields = {n for n, f in FIELDS.items() if f.metadata["group"] == "detectors"}
    assert set(owners) == detector_fields | {"doc_alpha"}
    assert set(owners) <= set(SCORE_OPTIONS)
    for option, name in owners.items():
        f = FIELDS[option]
        if f.metadata["choices"]:
            other = next(c for c in f.metadata["choices"] if c != f.default)
        elif f.default is None:
            other = 8
        else:
            other = f.default + 1 if isinstance(f.default, int) else f.default / 2
        default, changed = (
            create_score(name, RunConfig()),
            create_score(name, RunConfig(**{option: other})),
        )
        assert vars(default) != vars(changed), f"{name} does not read {option}"


def test_a_run_says_which_score_options_have_no_effect(tmp_path, capsys):
    from unseen.cli import main
    from unseen.scores import unused_options_notes, unused_score_options

    cfg = RunConfig(scores=("msp", "knn"), knn_k=5, ash_variant="b", doc_alpha=1.0)
    assert unused_score_options(cfg) == [("doc_alpha", "ovr-doc"), ("ash_variant", "ash")]
    # ovr-doc is computed on a one-vs-rest head, whatever --scores says
    assert unused_score_options(cfg.replace(head=("softmax", "ovr"))) == [("ash_variant", "ash")]
    assert unused_score_options(cfg.replace(scores=("all",))) == [("doc_alpha", "ovr-doc")]
    assert unused_score_options(RunConfig()) == []
    # options given on a command line count whatever their value (rescore: back to a default)
    assert unused_score_options(RunConfig(), given=["gen_m", "knn_k"]) == [
        ("knn_k", "knn"),
        ("gen_m", "gen"),
    ]
    assert unused_options_notes(unused_score_options(cfg)) == [
        "note: --ash-variant has no effect: this run does not compute ash (--scores)",
        "note: --doc-alpha has no effect: ovr-doc needs a one-vs-rest head (--head ovr or "
        "ovr-separate)",
    ]
    two = unused_options_notes([("knn_k", "knn"), ("knn_bank", "knn"), ("gen_m", "gen")], "sweep")
    assert two == [
        "note: --knn-k, --knn-bank and --gen-m have no effect: this sweep does not compute knn "
        "or gen (--scores)"
    ]
    code = main(["run", "--epochs", "1", "--train-subset", "100", "--no-report", "--gen-m", "3",
                 "--knn-k", "5", "--scores", "msp,knn", "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "note: --gen-m has no effect: this run does not compute gen (--scores)" in out
    assert "--knn-k has" not in out
    # a sweep says it once, before its runs
    code = main(["sweep", "--protocol", "single", "--seeds", "1", "--epochs", "1",
                 "--train-subset", "100", "--no-report", "--scores", "msp", "--knn-k", "5",
                 "--out", str(tmp_path / "sw")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("note: --knn-k has no effect: this sweep does not compute knn") == 1
