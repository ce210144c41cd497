"""One forward pass: logits and penultimate features for a set of images."""

from __future__ import annotations

import torch

from .checkpoint import TrainingDiverged
from .console import image_bar
from .errors import InputError
from .hardware import autocast
from .models import Classifier, model_input
from .scores import Outputs


@torch.no_grad()
def forward_pass(
    model: Classifier,
    images: torch.Tensor,
    device: torch.device | str,
    precision: str = "fp32",
    batch_size: int = 1024,
    labels: torch.Tensor | None = None,
    desc: str | None = None,
) -> Outputs:
    """Run ``images`` (uint8 ``N x C x H x W``, any device) through ``model`` in eval mode.

    Returns float32 logits and features on ``device``. Under bf16 the features come from
    autocast and the head (one linear layer) runs in fp32 on them. With ``desc``, a progress
    bar of that name is shown on a terminal (as for training) while the batches run.
    """
    if images.dtype != torch.uint8:
        raise InputError(
            f"forward_pass takes uint8 images (0-255), not {images.dtype}: convert float "
            "images in [0, 1] with (x * 255).round().to(torch.uint8), or use unseen.load(run)."
        )
    device = torch.device(device)  # "cpu" and "cuda:0" too
    was_training = model.training
    model.eval()
    to_gpu = images.device.type == "cpu" and device.type == "cuda"
    logits, feats = [], []
    bar = image_bar(desc, len(images))
    try:
        for start in range(0, len(images), batch_size):
            # non-blocking only from the CPU to a GPU: a copy back to the CPU could still be
            # running when the next line reads it
            xb = images[start : start + batch_size].to(device, non_blocking=to_gpu)
            xb = model_input(xb)
            with autocast(device, precision):
                f = model.forward_features(xb).float()
            # the head in fp32: bf16 logits keep 3 significant digits, and the logit scores of
            # confident images would tie (186 distinct max-logits for 540 digits test images)
            z = model.forward_head(f).float()
            feats.append(f)
            logits.append(z)
            bar.update(len(xb))
    finally:
        bar.close()
        model.train(was_training)
    k, d = model.num_classes, model.feature_dim
    return Outputs(
        logits=torch.cat(logits) if logits else torch.empty(0, k, device=device),
        features=torch.cat(feats) if feats else torch.empty(0, d, device=device),
        labels=None if labels is None else labels.to(device),
    )


def check_finite(outputs: Outputs, images: str) -> None:
    """Raise :class:`TrainingDiverged` when the network's outputs for ``images`` hold NaN or
    infinite values. Finite weights do not rule that out: batch-norm statistics gathered on
    degenerate batches (1 x 1 pixel images, say) can overflow in evaluation mode."""
    bad = ~(outputs.logits.isfinite().all(1) & outputs.features.isfinite().all(1))
    if n_bad := int(bad.sum()):
        raise TrainingDiverged(
            f"the trained network gives NaN or infinite outputs for {n_bad} of the "
            f"{len(bad)} {images}, though its weights are finite; lower --lr or train on "
            "more (or larger) images."
        )
