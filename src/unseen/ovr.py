"""One-vs-rest as K separate networks (``--head ovr-separate``).

``--head ovr`` needs nothing here: it is the ordinary :class:`~unseen.models.Classifier`
trained with :func:`unseen.heads.ovr_loss`. ``--head ovr-separate`` trains K one-output
networks, each a full backbone that answers "is this image of my class?", one after
another with :func:`unseen.train.train_model`, and stacks them in
:class:`OneVsRestEnsemble`, which looks like a ``Classifier`` to the rest of the pipeline:

* ``forward_features`` concatenates the K members' features (``N x K*D``);
* ``forward_head`` applies member k's one-output head to its own block of features, which
  is exactly the linear map of the block-diagonal ``K x K*D`` matrix that ``head`` returns,
  so scores that read ``FitContext.head_weight``/``head_bias`` work unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .augment import AugmentSpec
from .checkpoint import Checkpointing
from .heads import BINARY_HEAD, HEADS
from .models import Classifier, create_model
from .train import ProgressLog, TrainResult, TrainSettings, train_model


class OneVsRestEnsemble(nn.Module):
    """K one-output classifiers stacked into one K-logit model (logit k = member k's logit)."""

    def __init__(self, members: Sequence[Classifier]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.num_classes != 1 for m in members):
            raise ValueError("every member of a one-vs-rest ensemble must have one output")
        self.members = nn.ModuleList(members)
        self.num_classes = len(members)
        self.feature_dim = sum(m.feature_dim for m in members)
        self.in_channels = members[0].in_channels

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        for m in self.members:
            m.set_normalization(mean, std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Member features side by side: columns ``k*D:(k+1)*D`` are member k's."""
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        blocks = features.split([m.feature_dim for m in self.members], dim=1)
        return torch.cat([m.forward_head(f) for m, f in zip(self.members, blocks, strict=True)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def head(self) -> nn.Linear:
        """The equivalent linear head: block-diagonal ``K x K*D`` weight, bias of the K members.

        A fresh, detached copy (training goes through the members, not through this).
        """
        with torch.no_grad():
            weight = torch.block_diag(*[m.head.weight for m in self.members])
            bias = torch.cat([m.head.bias for m in self.members])
        linear = nn.Linear(self.feature_dim, self.num_classes, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear.requires_grad_(False)


def build_model_for_head(
    name: str, in_channels: int, num_classes: int, image_size: int, stem: str, head: str
) -> nn.Module:
    """The network a head trains: a ``Classifier``, or K one-output ones for ``ovr-separate``.

    Also what a saved ``model.pt`` (its ``head`` and ``num_classes`` entries) rebuilds into.
    """
    if HEADS[head].separate:
        members = [create_model(name, in_channels, 1, image_size, stem) for _ in range(num_classes)]
        return OneVsRestEnsemble(members)
    return create_model(name, in_channels, num_classes, image_size, stem)


def train_separate(
    model: OneVsRestEnsemble,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    settings: TrainSettings,
    augment: AugmentSpec,
    device: torch.device,
    precision: str = "fp32",
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    progress: bool = True,
    checkpoint: Checkpointing | None = None,
) -> TrainResult:
    """Train member k on "class k or not" (binary cross-entropy), for k = 0..K-1 in turn.

    With ``checkpoint``, member k saves to (and resumes from) its own ``checkpoint-k.pt``.

    Every member sees all known-class training images (its own class positive, the rest
    negative) with the same settings; member k uses seed ``settings.seed + k`` for its
    batch order and augmentation. The history has one row per member and epoch, with
    the member's binary train/validation accuracy; ``seconds`` is cumulative over members.
    """
    result = TrainResult()
    offset = 0.0
    log = ProgressLog()  # one rhythm of plain progress lines across the members
    for k, member in enumerate(model.members):
        member_settings = dataclasses.replace(settings, seed=settings.seed + k)
        log.label, log.offset = f"network {k + 1}/{len(model.members)}, ", offset
        trained = train_model(
            member,
            x_train,
            (y_train == k).long(),
            member_settings,
            BINARY_HEAD,
            augment,
            device,
            precision,
            x_val=x_val,
            y_val=None if y_val is None else (y_val == k).long(),
            progress=progress,
            checkpoint=None if checkpoint is None else checkpoint.member(k),
            log=log,
        )
        for row in trained.history:
            result.history.append({"network": k, **row, "seconds": offset + row["seconds"]})
        offset += trained.history[-1]["seconds"] if trained.history else trained.seconds
        result.seconds += trained.seconds
        result.images_seen += trained.images_seen
        result.validation_seconds += trained.validation_seconds
        result.checkpoint_seconds += trained.checkpoint_seconds
        result.resumed_seconds += trained.resumed_seconds
        result.cuda_graphs = result.cuda_graphs or trained.cuda_graphs  # captured for any
        if trained.loss_scale is not None:  # fp16: the skips of all members, the last's scale
            result.skipped_steps += trained.skipped_steps
            result.loss_scale = trained.loss_scale
    return result
