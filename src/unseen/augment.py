"""Batched, per-sample augmentation on the training device: no per-image Python.

Each preset is a function ``(images, spec, generator) -> images`` on a float batch
``B x C x H x W`` in ``[0, 1]``; every image gets its own random crop offset and flip, drawn
from ``generator`` so that a seed fixes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """A preset and its parameters, as recorded in config.json."""

    preset: str
    padding: int
    flip: bool

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return AUGMENTATIONS[self.preset](x, self, generator)

    def to_dict(self) -> dict:
        return asdict(self)


def default_padding(height: int) -> int:
    """Crop padding scaled to the image: 4 px at 28-32 px, 1 px at 8 px."""
    return max(1, round(height / 8))


def make_augment_spec(
    preset: str, image_height: int, flip_ok: bool, flip: bool | None = None
) -> AugmentSpec:
    """Resolve a preset for a dataset: flips only where they keep the meaning, unless forced."""
    return AugmentSpec(
        preset=preset, padding=default_padding(image_height), flip=flip_ok if flip is None else flip
    )


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random crop of the original size, per image."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # B,1,H,1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # B,1,1,W
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    mask = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def _none(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    return x


def _standard(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    x = random_crop(x, spec.padding, g)
    return random_flip(x, g) if spec.flip else x


#: preset name -> function(images, spec, generator)
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, AugmentSpec, torch.Generator], torch.Tensor]] = {
    "none": _none,
    "standard": _standard,
}
