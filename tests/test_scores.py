"""The sign convention of the logit scores: higher = more likely a known class."""

from __future__ import annotations

import math

import pytest
import torch

from unseen.errors import ConfigError
from unseen.scores import (
    SCORES,
    Outputs,
    energy,
    expand_score_names,
    max_logit,
    max_sigmoid,
    max_softmax,
    negative_entropy,
)

BASE = ["msp", "maxlogit", "energy", "entropy"]


def _outputs(logits: torch.Tensor) -> Outputs:
    return Outputs(logits=logits, features=torch.zeros(len(logits), 4))


@pytest.mark.parametrize("name", BASE)
def test_confident_logits_score_higher_than_flat_ones(name):
    confident = torch.tensor([[12.0, 0.0, 0.0], [0.0, 9.0, 1.0]])
    flat = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.4, 0.5]])
    s = SCORES[name]()
    assert (s.score(_outputs(confident)).min() > s.score(_outputs(flat)).max()).item()


def test_logit_score_values():
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = torch.tensor([math.exp(2) / (math.exp(2) + 1), 0.5], dtype=torch.float64)
    assert torch.allclose(max_softmax(z), expected)
    assert torch.allclose(max_logit(z), torch.tensor([2.0, 0.0]))
    assert torch.allclose(energy(z), torch.tensor([math.log(math.exp(2) + 1), math.log(2)]))
    assert torch.allclose(negative_entropy(z)[1], torch.tensor(-math.log(2), dtype=torch.float64))
    assert (negative_entropy(z) <= 0).all()
    # a -inf logit has probability 0 and adds 0 log 0 = 0, not NaN
    z = torch.tensor([[0.0, float("-inf")], [0.0, -1000.0]])
    assert negative_entropy(z).tolist() == [0.0, 0.0]
    # ...but a NaN, +inf or all -inf row stays NaN, for the metrics to refuse
    z = torch.tensor([[float("nan"), 0.0], [float("inf"), 0.0], [float("-inf")] * 2])
    assert negative_entropy(z).isnan().all()


def test_score_names():
    assert expand_score_names(["energy", "msp", "energy"]) == ["energy", "msp"]
    assert set(BASE) <= set(expand_score_names(["all"]))
    with pytest.raises(ConfigError, match="not known"):
        expand_score_names(["nope"])


@pytest.mark.parametrize("score", [max_softmax, max_sigmoid])
def test_probability_scores_keep_confident_logits_apart(score):
    # top logit ahead by 20, 25 and 30: in float32, 1 - p rounds to 0 and all three would tie
    # at exactly 1.0, so confident known and unseen images could not be ranked
    z = torch.tensor([[20.0, 0.0, 0.0], [25.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    if score is max_sigmoid:
        z = z - torch.tensor([0.0, 30.0, 30.0])  # the other sigmoids near 0
        assert z.float().sigmoid().amax(1).unique().numel() == 1  # the float32 failure
    else:
        assert z.float().softmax(1).amax(1).unique().numel() == 1
    s = score(z)
    assert s.dtype == torch.float64 and bool((s.diff() > 0).all())


def test_negative_entropy_ranks_confident_logits_as_float64_does():
    # margins 20 and 21 on top of a logit of 35: the float32 log-softmax of the top class is
    # quantised to the ulp of 35 (4e-6), larger than the entropy itself (about 8e-8)
    z = torch.tensor([[35.0, 15.0, 15.0], [35.0, 14.0, 14.0], [35.0, 13.5, 14.5]])
    logp = z.double().log_softmax(1)
    exact = (logp.exp() * logp).sum(1)
    got = negative_entropy(z)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=0)
