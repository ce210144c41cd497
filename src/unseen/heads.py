"""Classification heads: how logits are trained and turned into class probabilities.

A head names a loss on the ``K`` logits and the map from logits to per-class
probabilities. The network itself is the same for every head.
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


def softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


HEADS: dict[str, Head] = {
    "softmax": Head(
        "softmax",
        "K logits trained with cross-entropy; probabilities sum to one over the known classes",
        softmax_loss,
        lambda logits: logits.softmax(dim=1),
    ),
}
