"""Batched, per-sample augmentation on the training device: no per-image Python.

Each preset is a function ``(images, spec, generator) -> images`` on a float batch
``B x C x H x W`` in ``[0, 1]``; every image gets its own random crop offset and flip, drawn
from ``generator`` so that a seed fixes them. Output stays in ``[0, 1]`` with the input's shape.

Presets: ``none``; ``standard`` (random crop with zero padding, horizontal flip where it keeps
the meaning); ``strong`` (standard, then one TrivialAugment-style operation per image at a
uniformly drawn magnitude, then random erasing). In ``strong`` each operation runs once per
batch on the images that drew it (on CUDA: on the whole batch, each image keeping its own
operation's result with ``torch.where``, so nothing waits for the host), all geometric
operations share one ``affine_grid`` + ``grid_sample`` with per-image matrices, and erasing
boxes are per-image masks: a few tensor operations per batch, no per-image Python.
"""

from __future__ import annotations

import math
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
    #: ``strong`` only: the operations one of which is drawn per image (empty: none)
    ops: tuple[str, ...] = ()
    #: ``strong`` only: magnitudes are drawn uniformly from this many levels in [0, 1]
    magnitude_bins: int = 0
    #: ``strong`` only: probability of random erasing per image, its area fraction and aspect range
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

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
    if preset == "none":
        # nothing is applied: record no parameters that would suggest otherwise
        return AugmentSpec(preset=preset, padding=0, flip=False)
    extra: dict = {}
    if preset == "strong":
        extra = dict(ops=STRONG_OPS, magnitude_bins=31, erase_prob=0.25)
    return AugmentSpec(
        preset=preset,
        padding=default_padding(image_height),
        flip=flip_ok if flip is None else flip,
        **extra,
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


# ----------------------------------------------------------------------------- strong: ops
#
# Every operation takes the batch ``x`` (B x C x H x W floats in [0, 1]) and one parameter per
# image ``v`` (shape B, in the operation's own units) and returns the whole transformed batch.
# Colour operations follow torchvision's definitions (``transforms.functional``) on [0, 1] floats.


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float32).reshape(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1] (torchvision's ``_blend``)."""
    f = _per_image(factor).to(x.dtype)
    return (other + f * (x - other)).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of RGB images (B x 1 x H x W); one-channel images are returned as is."""
    if x.shape[1] != 3:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image; a no-op for one-channel images (as in torchvision)."""
    if x.shape[1] != 3:
        return x
    return _blend(x, grayscale(x).expand_as(x), factor)


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothed image (kernel 1,1,1/1,5,1/1,1,1 over 13); borders stay as they are."""
    b, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = F.conv2d(x, kernel, groups=c)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, factor)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each 8-bit pixel value."""
    step = torch.pow(2.0, 8.0 - _per_image(bits)).to(x.dtype)
    return torch.floor(torch.round(x * 255.0) / step) * step / 255.0


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert every pixel at or above ``threshold`` (in [0, 1])."""
    return torch.where(x >= _per_image(threshold).to(x.dtype), 1.0 - x, x)


def autocontrast(x: torch.Tensor, _v: torch.Tensor | None = None) -> torch.Tensor:
    """Stretch each channel of each image to the full [0, 1] range."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 0
    scale = torch.where(flat, torch.ones_like(span), 1.0 / torch.where(flat, 1.0, span))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0.0, 1.0)


def equalize(x: torch.Tensor, _v: torch.Tensor | None = None) -> torch.Tensor:
    """Histogram equalisation of each channel of each image on 256 levels (PIL's algorithm)."""
    b, c, h, w = x.shape
    levels = torch.round(x * 255.0).clamp_(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.float32)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    top = hist.gather(1, levels.amax(dim=1, keepdim=True))  # count of the highest level present
    step = torch.div(h * w - top, 255, rounding_mode="floor")  # (B*C, 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = torch.div(
        hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor"
    )
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = lut.gather(1, levels) / 255.0
    out = torch.where(step > 0, out, levels / 255.0)
    return out.reshape(b, c, h, w).to(x.dtype)


def warp_affine(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample each image at ``matrix @ p + shift`` for every output pixel ``p``.

    ``p`` is in pixels measured from the image centre (x right, y down); ``matrix`` is
    ``B x 2 x 2`` and ``shift`` ``B x 2`` in pixels. Bilinear sampling; outside is filled with 0.
    """
    b, _, h, w = x.shape
    theta = torch.empty(b, 2, 3, device=x.device, dtype=torch.float32)
    # pixels from the centre -> grid_sample's [-1, 1] units (align_corners=False)
    theta[:, 0, 0] = matrix[:, 0, 0]
    theta[:, 0, 1] = matrix[:, 0, 1] * h / w
    theta[:, 0, 2] = shift[:, 0] * 2.0 / w
    theta[:, 1, 0] = matrix[:, 1, 0] * w / h
    theta[:, 1, 1] = matrix[:, 1, 1]
    theta[:, 1, 2] = shift[:, 1] * 2.0 / h
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype).clamp_(0.0, 1.0)


def _eye(v: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, device=v.device).expand(len(v), 2, 2).clone()


def rotation_matrix(degrees: torch.Tensor) -> torch.Tensor:
    """Inverse map of a counter-clockwise rotation by ``degrees`` (as displayed, y down)."""
    a = torch.deg2rad(degrees.float())
    cos, sin = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _geometry(name: str, v: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrix, shift) of the inverse map for geometric operation ``name`` with parameters ``v``."""
    m, t = _eye(v), torch.zeros(len(v), 2, device=v.device)
    v = v.float()
    if name == "rotate":
        m = rotation_matrix(v)
    elif name == "shear_x":
        m[:, 0, 1] = v
    elif name == "shear_y":
        m[:, 1, 0] = v
    elif name == "translate_x":
        t[:, 0] = v * w
    elif name == "translate_y":
        t[:, 1] = v * h
    return m, t


#: colour operations: name -> function(x, per-image parameter)
COLOR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "color": adjust_saturation,
    "sharpness": adjust_sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": autocontrast,
    "equalize": equalize,
}
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")

#: magnitude m in [0, 1] (and a random sign s = +-1) -> the operation's parameter
STRONG_MAGNITUDES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": lambda m, s: m,
    "brightness": lambda m, s: 1.0 + 0.9 * m * s,  # factor in [0.1, 1.9]
    "contrast": lambda m, s: 1.0 + 0.9 * m * s,
    "color": lambda m, s: 1.0 + 0.9 * m * s,
    "sharpness": lambda m, s: 1.0 + 0.9 * m * s,
    "posterize": lambda m, s: 8.0 - torch.round(6.0 * m),  # 8 .. 2 bits
    "solarize": lambda m, s: 1.0 - m,  # threshold 1 .. 0
    "autocontrast": lambda m, s: m,
    "equalize": lambda m, s: m,
    "rotate": lambda m, s: 30.0 * m * s,  # degrees
    "shear_x": lambda m, s: 0.3 * m * s,
    "shear_y": lambda m, s: 0.3 * m * s,
    "translate_x": lambda m, s: 0.25 * m * s,  # fraction of the width
    "translate_y": lambda m, s: 0.25 * m * s,
}
STRONG_OPS: tuple[str, ...] = tuple(STRONG_MAGNITUDES)


def _apply_to(
    chosen: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    subset: bool,
) -> torch.Tensor:
    """``out`` with the images where ``chosen`` replaced by ``fn`` of them (same result either way).

    ``subset``: compute ``fn`` on the chosen images only (less work; finding them needs the
    host, fine on a CPU); otherwise on the whole batch, keeping the chosen rows with
    ``torch.where`` (no host synchronisation, better on a GPU).
    """
    if not subset:
        return torch.where(chosen.reshape(-1, *[1] * (x.ndim - 1)), fn(x, value), out)
    idx = chosen.nonzero().squeeze(1)
    if len(idx) == 0:
        return out
    return out.index_copy(0, idx, fn(x.index_select(0, idx), value.index_select(0, idx)))


def trivial_augment(
    x: torch.Tensor,
    ops: tuple[str, ...],
    bins: int,
    generator: torch.Generator,
    subset: bool | None = None,
) -> torch.Tensor:
    """TrivialAugment (Mueller & Hutter, 2021): one operation per image, magnitude uniform.

    Each image draws an operation from ``ops``, a magnitude level from ``bins`` levels in
    [0, 1] and a sign. Geometric operations share one warp with per-image matrices. Each
    operation is applied to the images that drew it (``subset``, the default off CUDA) or to
    the whole batch keeping those images' results (the default on CUDA: no host sync).
    """
    b, _, h, w = x.shape
    dev = x.device
    subset = dev.type != "cuda" if subset is None else subset
    unknown = [n for n in ops if n != "identity" and n not in COLOR_OPS and n not in GEOMETRIC_OPS]
    if unknown:
        raise ValueError(f"unknown augmentation operation(s): {', '.join(unknown)}")
    op = torch.randint(0, len(ops), (b,), device=dev, generator=generator)
    level = torch.randint(0, max(bins, 1), (b,), device=dev, generator=generator)
    mag = level.float() / max(bins - 1, 1)
    sign = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    out = x
    geo = [(i, n) for i, n in enumerate(ops) if n in GEOMETRIC_OPS]
    if geo:
        matrix, shift = _eye(mag), torch.zeros(b, 2, device=dev)
        is_geo = torch.zeros(b, dtype=torch.bool, device=dev)
        for i, name in geo:
            m, t = _geometry(name, STRONG_MAGNITUDES[name](mag, sign), h, w)
            chosen = op == i
            matrix = torch.where(chosen[:, None, None], m, matrix)
            shift = torch.where(chosen[:, None], t, shift)
            is_geo |= chosen
        affine = torch.cat([matrix.flatten(1), shift], 1)  # B x 6, split again inside

        def warp(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
            return warp_affine(images, params[:, :4].reshape(-1, 2, 2), params[:, 4:])

        out = _apply_to(is_geo, warp, x, affine, out, subset)
    for i, name in enumerate(ops):
        if name in COLOR_OPS:
            value = STRONG_MAGNITUDES[name](mag, sign)
            out = _apply_to(op == i, COLOR_OPS[name], x, value, out, subset)
    return out


def random_erasing(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Replace one random box per image (with probability ``p``) by uniform noise in [0, 1].

    The box covers a fraction ``scale`` of the image with aspect ratio (height / width) drawn
    log-uniformly from ``ratio``; boxes larger than the image are clipped to it.
    """
    b, c, h, w = x.shape
    dev = x.device
    if p <= 0:
        return x
    area = (
        h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, device=dev, generator=generator))
    )
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, device=dev, generator=generator))
    bh = torch.sqrt(area * aspect).round().clamp(1, h)
    bw = torch.sqrt(area / aspect).round().clamp(1, w)
    top = torch.floor(torch.rand(b, device=dev, generator=generator) * (h - bh + 1))
    left = torch.floor(torch.rand(b, device=dev, generator=generator) * (w - bw + 1))
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # B,H
    in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # B,W
    erase = torch.rand(b, device=dev, generator=generator) < p
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :] & erase[:, None, None, None]
    noise = torch.rand(x.shape, device=dev, generator=generator, dtype=torch.float32)
    return torch.where(mask, noise.to(x.dtype), x)


def _strong(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    x = _standard(x, spec, g)
    if spec.ops:
        x = trivial_augment(x, spec.ops, spec.magnitude_bins, g)
    return random_erasing(x, spec.erase_prob, g, spec.erase_scale, spec.erase_ratio)


#: preset name -> function(images, spec, generator)
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, AugmentSpec, torch.Generator], torch.Tensor]] = {
    "none": _none,
    "standard": _standard,
    "strong": _strong,
}
