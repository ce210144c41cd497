"""Every metric against hand-computed answers (known = positive, higher score = known)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unseen import metrics as M


def test_auroc_perfect_reversed_and_tied():
    known = np.array([True, True, False, False])
    assert M.auroc(np.array([0.9, 0.8, 0.2, 0.1]), known) == 1.0
    assert M.auroc(np.array([0.1, 0.2, 0.8, 0.9]), known) == 0.0
    assert M.auroc(np.array([0.5, 0.5, 0.5, 0.5]), known) == 0.5
    # one of four known/unseen pairs mis-ordered: 3/4
    assert M.auroc(np.array([0.9, 0.3, 0.4, 0.1]), known) == pytest.approx(0.75)


def test_metrics_without_both_groups_are_nan():
    s = np.array([0.1, 0.2])
    assert math.isnan(M.auroc(s, np.array([True, True])))
    assert math.isnan(M.fpr_at_tpr(s, np.array([False, False])))
    assert math.isnan(M.oscr(s, np.array([True, True]), np.array([True, True])))


def test_aupr_in_and_out():
    known = np.array([True, True, False, False])
    perfect = np.array([0.9, 0.8, 0.2, 0.1])
    assert M.aupr_in(perfect, known) == 1.0
    assert M.aupr_out(perfect, known) == 1.0
    # ranking known, unseen, known, unseen from the top:
    s = np.array([4.0, 2.0, 3.0, 1.0])
    # AP(known positive) = (1/1 + 2/3) / 2
    assert M.aupr_in(s, known) == pytest.approx((1 + 2 / 3) / 2)
    # AP(unseen positive) on -score: order 1(u),2(k),3(u),4(k) -> (1/1 + 2/3) / 2
    assert M.aupr_out(s, known) == pytest.approx((1 + 2 / 3) / 2)


def test_fpr_at_95_tpr_edge_cases():
    known_scores = np.arange(100, 120, dtype=float)  # 20 known images
    unseen_scores = np.arange(0, 10, dtype=float)
    s = np.r_[known_scores, unseen_scores]
    k = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    assert M.fpr_at_tpr(s, k) == 0.0  # perfectly separated
    assert M.fpr_at_tpr(-s, k) == 1.0  # reversed: accepting 95% of known accepts all unseen
    assert M.fpr_at_tpr(np.zeros(30), k) == 1.0  # all tied: the only threshold accepts all
    # 19 of 20 known (95%) are accepted at threshold 101; unseen scores 100.5 and 101.5 -> one accepted
    s2 = np.r_[known_scores, [100.5, 101.5], np.zeros(8)]
    assert M.fpr_at_tpr(s2, k) == pytest.approx(1 / 10)


def test_oscr_ends_at_closed_set_accuracy():
    rng = np.random.default_rng(0)
    known = np.r_[np.ones(50, bool), np.zeros(30, bool)]
    correct = np.r_[rng.random(50) < 0.8, np.zeros(30, bool)]
    closed = correct[:50].mean()
    separated = np.r_[rng.random(50) + 10, rng.random(30)]
    assert M.oscr(separated, known, correct) == pytest.approx(closed)  # CCR reaches acc at FPR 0
    reversed_ = np.r_[rng.random(50), rng.random(30) + 10]
    assert M.oscr(reversed_, known, correct) == pytest.approx(0.0)  # CCR > 0 only at FPR 1


def test_oscr_hand_computed():
    # order by score: k-correct(4), u(3), k-wrong(2), u(1); 2 known, 2 unseen
    s = np.array([4.0, 3.0, 2.0, 1.0])
    known = np.array([True, False, True, False])
    correct = np.array([True, False, False, False])
    # curve (FPR, CCR): (0,0) -> (0,.5) -> (.5,.5) -> (.5,.5) -> (1,.5): area 0.5
    assert M.oscr(s, known, correct) == pytest.approx(0.5)
    # unseen first: (0,0)->(.5,0)->(.5,.5)->(1,.5): area .25
    s2 = np.array([3.0, 4.0, 2.0, 1.0])
    assert M.oscr(s2, known, correct) == pytest.approx(0.25)


def test_calibrate_threshold_accepts_target_fraction():
    val = np.arange(100, dtype=float)
    t = M.calibrate_threshold(val, 0.95)
    assert t == 5.0
    assert np.mean(val >= t) == 0.95
    assert np.mean(val >= M.calibrate_threshold(val, 0.9)) == 0.9
    with pytest.raises(ValueError):
        M.calibrate_threshold(np.array([]), 0.95)


def test_score_metrics_refuses_non_finite_validation_scores_with_either_threshold():
    # with a score's own threshold the validation scores only give val_known_accepted; a
    # NaN there must not pass as a rejected image
    test, val = np.array([0.9, 0.1, 0.8]), np.array([0.7, np.nan])
    args = (np.array([0, 0, 1]), np.array([0, -1, 1]), 2)
    for threshold in (None, 0.5):
        with pytest.raises(ValueError, match="validation scores holds 1 value"):
            M.score_metrics(test, val, *args, threshold=threshold)
    out = M.score_metrics(test, np.array([0.7, 0.2]), *args, threshold=0.5)
    assert out["val_known_accepted"] == 0.5 and out["threshold_from"] == "score"
    assert math.isnan(M.score_metrics(test, [], *args, threshold=0.5)["val_known_accepted"])


def test_open_set_metrics_hand_computed():
    # K = 2 known classes; labels -1 = unseen
    labels = np.array([0, 0, 1, 1, -1, -1])
    predicted = np.array([0, 1, 1, 1, 0, 1])
    score = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.9])
    out = M.open_set_metrics(score, 0.5, predicted, labels, 2)
    # accepted: 0,1,3,5 ; open predictions: [0,1,2,1,2,1]; truth: [0,0,1,1,2,2]
    assert out["open_set_accuracy"] == pytest.approx(3 / 6)
    assert out["unseen_rejected"] == pytest.approx(0.5)
    assert out["known_rejected"] == pytest.approx(0.25)
    # per-class F1: class0 P=1 R=.5 -> 2/3; class1 P=1/3 R=1/2 -> .4; unknown P=1/2 R=1/2 -> .5
    assert out["open_set_macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0.5) / 3)


def test_open_set_macro_f1_counts_only_classes_that_occur():
    # a perfect decision scores 1 even when a class is absent from the test set
    labels = np.array([0, 0, 1, 2, 2])  # K = 4: class 3 and unseen images absent
    out = M.open_set_metrics(np.ones(5), 0.5, labels, labels, 4)
    assert out["open_set_accuracy"] == 1.0 and out["open_set_macro_f1"] == 1.0
    unseen = np.full(3, -1)  # all unseen, all rejected
    assert (
        M.open_set_metrics(np.zeros(3), 0.5, np.zeros(3, int), unseen, 4)["open_set_macro_f1"]
        == 1.0
    )
    # a known image rejected: "unseen" occurs in the predictions and its F1 of 0 counts
    out = M.open_set_metrics(np.array([1, 1, 1, 1, 0]), 0.5, labels, labels, 4)
    assert out["open_set_macro_f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)


def test_confidence_summary_and_predicted_as():
    c = M.confidence_summary(np.array([0.95, 0.5, 0.99, 0.7]))
    assert c["mean_msp"] == pytest.approx(0.785)
    assert c["frac_msp_above_0_9"] == 0.5
    assert M.predicted_as(np.array([2, 2, 0]), ["a", "b", "c"]) == {"c": 2, "a": 1}


def test_oscr_refuses_labels_passed_as_correct():
    s, known = np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 1, 0])
    assert M.oscr(s, known, np.array([1, 0, 0, 0])) == pytest.approx(0.5)  # 0/1 is fine
    with pytest.raises(ValueError, match="correct must be booleans or 0/1"):
        M.oscr(s, known, np.array([3, 0, 0, 0]))  # class labels, not correctness
    with pytest.raises(ValueError, match=r"correct has shape \(3,\)"):
        M.oscr(s, known, np.array([1, 0, 0]))


def test_metrics_take_torch_tensors_of_any_dtype_and_refuse_a_nan_threshold():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    s, known = rng.random(40), rng.random(40) < 0.6
    pred, labels = rng.integers(0, 3, 40), np.where(known, rng.integers(0, 3, 40), -1)
    expected = M.auroc(s.astype(np.float32), known)
    for t in (torch.tensor(s, dtype=torch.float32), torch.tensor(s, requires_grad=True)):
        assert M.auroc(t, torch.tensor(known)) == pytest.approx(expected)
    bf16 = torch.tensor(s).bfloat16()
    assert M.auroc(bf16, known) == M.auroc(bf16.double().numpy(), known)
    got = M.open_set_metrics(torch.tensor(s), torch.tensor(0.5), torch.tensor(pred), labels, 3)
    assert got == M.open_set_metrics(s, 0.5, pred, labels, 3)
    assert M.calibrate_threshold(torch.tensor(s).bfloat16()) == M.calibrate_threshold(
        bf16.double().numpy()
    )
    with pytest.raises(ValueError, match="the threshold is NaN"):
        M.open_set_metrics(s, math.nan, pred, labels, 3)


def test_rank_correlation():
    assert M.rank_correlation([0.1, 0.5, 0.3, 0.9], [1, 3, 2, 10]) == pytest.approx(1.0)
    assert M.rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # hand-computed: ranks (1,2,3,4) vs (2,1,4,3): 1 - 6 * 4 / (4 * 15) = 0.6
    assert M.rank_correlation([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert M.rank_correlation([1, 2, float("nan"), 4, 5], [1, 2, 3, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(M.rank_correlation([1, 2], [1, 2]))  # too few pairs
    assert math.isnan(M.rank_correlation([1, 2, 3], [5, 5, 5]))  # constant
    with pytest.raises(ValueError, match="1-D of one length"):
        M.rank_correlation([1, 2, 3], [1, 2])


def test_absorbed_by_sums_runs_and_can_leave_a_class_out():
    from unseen.metrics import absorbed_by

    runs = [{"5": 30, "3": 15, "8": 5}, {"5": 10, "8": 40}]
    assert absorbed_by(runs) == {"class": "8", "share": pytest.approx(0.45)}
    assert absorbed_by(runs, exclude="8") == {"class": "5", "share": pytest.approx(0.40)}
    assert absorbed_by([{"3": 4}], exclude="3") is None and absorbed_by([]) is None


@pytest.mark.parametrize(
    "n, acceptance, accepted", [(90, 0.95, 86), (101, 0.95, 96), (100, 0.55, 55), (20, 0.95, 19)]
)
def test_calibrate_threshold_accepts_at_least_the_fraction_asked(n, acceptance, accepted):
    # 0.95 * 90 = 85.5: at least 95% means 86 images, not 85; 0.55 * 100 is
    # 55.00000000000001 in floating point: still 55 images, not 56
    val = np.random.default_rng(n).permutation(n).astype(float)
    t = M.calibrate_threshold(val, acceptance)
    assert int(np.sum(val >= t)) == accepted


def test_oscr_counts_tied_scores_together():
    # one known-correct and one unseen image tie at 2: no threshold separates them, so the
    # curve goes diagonally from (0, .5) to (.5, 1) (a trapezoid), whatever their order
    s = np.array([3.0, 2.0, 2.0, 1.0])
    known = np.array([True, True, False, False])
    correct = np.array([True, True, False, False])
    expected = 0.5 * 0.75 + 0.5 * 1.0  # (0,0)->(0,.5)->(.5,1)->(1,1)
    assert M.oscr(s, known, correct) == pytest.approx(expected)
    order = [0, 2, 1, 3]  # the unseen image first among the tied pair: the same area
    assert M.oscr(s[order], known[order], correct[order]) == pytest.approx(expected)
