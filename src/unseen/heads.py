"""Classification heads: how logits are trained and turned into class probabilities.

A head names a loss on the ``K`` logits and the map from logits to per-class
probabilities. The network is the same for every head except ``ovr-separate``, which
trains K one-output networks and stacks them (see :mod:`unseen.ovr`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Head:
    name: str
    description: str
    #: (logits N x K, targets N in 0..K-1, label_smoothing) -> scalar loss
    loss: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    #: logits -> per-class probabilities (rows of softmax, or independent sigmoids)
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    #: logits -> predicted labels (argmax over the classes, or a 0/1 decision for a binary net)
    predict: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits.argmax(dim=1)
    #: what the logits are, for labelling logit-based scores (maxlogit, energy, ...)
    logits_kind: str = "softmax logits"
    #: what known_confidence / unseen_confidence summarise (the head's own probabilities)
    confidence: str = "max softmax probability"
    #: scores every run with this head computes besides the requested ones
    scores: tuple[str, ...] = ()
    #: True when the logits are K independent one-vs-rest sigmoids (not a softmax)
    one_vs_rest: bool = False
    #: True when the head is K independent binary networks rather than one shared backbone
    separate: bool = False


def softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def one_vs_rest_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary targets N x K: 1 where the column is the image's own class, 0 elsewhere.

    A comparison rather than ``F.one_hot``, whose range check synchronises with a GPU (and so
    cannot run inside a CUDA graph)."""
    classes = torch.arange(num_classes, device=targets.device)
    return (targets.long().unsqueeze(1) == classes).float()


def smooth_binary(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Pull 0/1 targets towards 1/2: 1 -> 1 - e/2 and 0 -> e/2."""
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def ovr_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean binary cross-entropy over the N x K one-vs-rest problems (each image is positive
    for its own class and negative for the K-1 others)."""
    binary = smooth_binary(one_vs_rest_targets(targets, logits.shape[1]), label_smoothing)
    return F.binary_cross_entropy_with_logits(logits, binary)


def binary_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy of a one-output network (logits N x 1) against targets in {0, 1}."""
    binary = smooth_binary(targets.float().reshape(-1), label_smoothing)
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), binary)


#: the head of one member of ``ovr-separate``: one logit, "is it my class?" (not a --head choice)
BINARY_HEAD = Head(
    "binary",
    "one logit trained with binary cross-entropy: is the image of this network's class?",
    binary_loss,
    lambda logits: logits.sigmoid(),
    predict=lambda logits: (logits.reshape(len(logits), -1)[:, 0] > 0).long(),
    logits_kind="binary logit",
    confidence="sigmoid",
)

_OVR_SCORES = ("ovr", "ovr-doc")

HEADS: dict[str, Head] = {
    "softmax": Head(
        "softmax",
        "K logits trained with cross-entropy; probabilities sum to one over the known classes",
        softmax_loss,
        lambda logits: logits.softmax(dim=1),
    ),
    "ovr": Head(
        "ovr",
        "one-vs-rest: one shared backbone, K sigmoid outputs trained with binary cross-entropy; "
        "an image may be claimed by no class",
        ovr_loss,
        lambda logits: logits.sigmoid(),
        logits_kind="one-vs-rest logits",
        confidence="max sigmoid (one-vs-rest)",
        scores=_OVR_SCORES,
        one_vs_rest=True,
    ),
    "ovr-separate": Head(
        "ovr-separate",
        "one-vs-rest with K independent binary networks (a full backbone each, trained one after "
        "another: K times the training cost), stacked for prediction",
        ovr_loss,
        lambda logits: logits.sigmoid(),
        logits_kind="one-vs-rest logits (K separate networks)",
        confidence="max sigmoid (one-vs-rest)",
        scores=_OVR_SCORES,
        one_vs_rest=True,
        separate=True,
    ),
}


def confidence(head: str, logits: torch.Tensor) -> torch.Tensor:
    """Each image's largest class probability under ``head`` (max softmax, or max sigmoid for
    one-vs-rest heads), in float64, like the ``msp`` score: in float32 confident images'
    probabilities round to exactly 1. What metrics.json, the report and predict show."""
    return HEADS[head].probabilities(logits.double()).amax(dim=1)


def is_one_vs_rest(head: str) -> bool:
    """True for heads whose logits are K independent sigmoids (``ovr``, ``ovr-separate``)."""
    return head in HEADS and HEADS[head].one_vs_rest
