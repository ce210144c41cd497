"""Use a trained run with its reject option: ``unseen predict`` and :func:`unseen.load`.

A :class:`Predictor` restores a run folder's model (``model.pt``, loaded with
``weights_only=True``) and its fitted rejection scores (``detectors.pt``), and labels new
images with a known class or "unknown". An image is accepted as known when
``score >= threshold`` (every score is oriented so that higher = more likely known); the
threshold defaults to the one the run calibrated on its known-class validation images
(``scores.npz``, ``val_score_<name>``), so it accepts about ``known_acceptance`` of the
known-class images.

Image conventions (the same for every entry point):

* Paths of image files (``str`` or ``Path``) and PIL images of any mode, read exactly as
  a ``folder:PATH`` dataset reads its files in training (``data.read_image_file``: Pillow,
  EXIF orientation applied; ``data.image_tensor``: 16-bit greyscale scaled to 0..255);
  NumPy arrays channels-last (``H x W``, ``H x W x C``,
  ``N x H x W`` or ``N x H x W x C``); torch tensors channels-first (``H x W``,
  ``C x H x W``, ``N x H x W`` or ``N x C x H x W``); or a list of any of these.
  A 3-D input is one image when its channel axis (last for arrays, first for tensors) has
  1, 3 or 4 entries, otherwise a batch of grayscale images. A 4-D input whose channel axis
  is not 1/3/4 long is read in the other layout when that one fits.
* ``uint8`` values are 0..255; floating-point values must lie in ``[0, 1]`` (they are
  rounded to 0..255, as the training images were); other integer types must lie in 0..255.
* Channels follow the model: RGB(A) becomes grayscale (ITU-R 601-2 luma) for a
  one-channel model, grayscale is repeated for a three-channel one, alpha is dropped.
* Every image is resized to the training image size (bilinear, antialiased); the aspect
  ratio is *not* kept, as for folder datasets in training: crop beforehand if that matters.
* Normalisation happens inside the model (its mean/std buffers), as in training.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import numbers
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import PRECISIONS
from .console import valid_unicode
from .data import (
    IMAGE_EXTENSIONS,
    NPZ_LAYOUTS,
    convert_channels,
    decode_error,
    image_files,
    image_tensor,
    looks_like_one_image,
    npz_images_nchw,
    read_image_file,
    resize_images,
    wide_peak,
)
from .errors import InputError, UnseenError
from .evaluate import forward_pass
from .models import Classifier, fold_batch_norm
from .runfolder import (
    FINISHED_FILE,
    FORMAT_VERSION,
    atomic_write,
    check_writable,
    is_finished,
    load_torch,
    read_npz,
    require_finished,
)
from .scores import SCORES, Outputs, Score, create_score

UNKNOWN = -1
UNKNOWN_NAME = "unknown"
#: the score used when none is asked for (if the run computed it; else the run's first score)
DEFAULT_SCORE = "energy"
#: npz array names tried, in order
NPZ_KEYS = ("x", "images", "x_test")
_CHANNEL_COUNTS = (1, 3, 4)
_REQUIRED_KEYS = ("state_dict", "model", "in_channels", "image_size", "num_classes", "split")


# ----------------------------------------------------------------------------- run folder


def locate_run(run_dir: str | Path, head: str | None = None) -> Path:
    """The folder holding ``model.pt`` for ``run_dir`` (and ``head`` for multi-head runs).

    Accepts a single-head run folder, a multi-head run folder with ``head``, or a head's
    subfolder ``RUN/<head>/`` directly. Raises :class:`UnseenError` for unfinished runs.
    """
    path = Path(run_dir)
    if path.is_file():
        raise UnseenError(
            f"run folder {path} is a file, not a folder; give the run folder "
            f"(e.g. {path.parent}) first, then the images."
        )
    if not path.is_dir():
        raise UnseenError(f"run folder {path} does not exist.")
    if (path / "model.pt").is_file() and not is_finished(path) and is_head_folder(path):
        return _check_head(path, head)  # RUN/<head>/ of a finished multi-head run
    require_finished(path)
    heads = _run_heads(path)
    if head is not None and (path / head / "model.pt").is_file():
        return path / head
    if (path / "model.pt").is_file():
        return _check_head(path, head)
    if head is not None:
        raise UnseenError(
            f"run folder {path} has no head {head!r}; its heads are: {', '.join(heads) or 'none'}."
        )
    if len(heads) > 1:
        raise UnseenError(
            f"run folder {path} holds one model per head ({', '.join(heads)}); "
            f"pass --head NAME (head= in Python), or point at {path}/<head>/."
        )
    raise UnseenError(f"run folder {path} has no model.pt.")


def _run_heads(path: Path) -> list[str]:
    try:
        info = json.loads((path / FINISHED_FILE).read_text())
    except (OSError, ValueError):
        return []
    heads = info.get("heads") if isinstance(info, dict) else None
    return [str(h) for h in heads] if isinstance(heads, list) else []


def is_head_folder(path: Path) -> bool:
    """Whether ``path`` is one head's subfolder of a finished run with several heads."""
    return is_finished(path.parent) and path.name in _run_heads(path.parent)


def _check_head(folder: Path, head: str | None) -> Path:
    if head is None:
        return folder
    if is_head_folder(folder):
        if head != folder.name:
            raise UnseenError(f"{folder} is the folder of head {folder.name!r}, not {head!r}.")
        return folder
    trained = _run_heads(folder)
    if trained and head not in trained:
        raise UnseenError(
            f"run {folder} has no head {head!r}; its heads are: {', '.join(trained)}."
        )
    return folder


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``model.pt`` loaded weights-only, checked against this version's format."""
    from . import __version__

    ckpt = load_torch(path)
    if not isinstance(ckpt, dict):
        raise UnseenError(f"{path} is not an unseen model file (it holds a {type(ckpt).__name__}).")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise UnseenError(
            f"{path} has run-folder format {version!r} (written by unseen "
            f"{ckpt.get('unseen_version', '?')}); this unseen {__version__} reads format "
            f"{FORMAT_VERSION}: rerun the experiment with this version."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UnseenError(
            f"{path} lacks {', '.join(missing)}; it was not written by unseen {__version__}: "
            "rerun the experiment with this version."
        )
    return ckpt


def rebuild_model(ckpt: dict[str, Any], path: Path) -> torch.nn.Module:
    """The network described by a checkpoint, with its weights (strict loading).

    Built as training builds it (:func:`unseen.ovr.build_model_for_head`: one ``Classifier``,
    or K one-output ones for ``ovr-separate``), with the checkpoint's ``input_size``.
    """
    from .heads import HEADS
    from .ovr import build_model_for_head

    cfg = ckpt.get("config") or {}
    head = str(ckpt.get("head", "softmax"))
    if head not in HEADS:
        raise UnseenError(
            f"{path} was trained with head {head!r}, which this version does not know: "
            "rerun the experiment with this version."
        )
    height = int(ckpt["image_size"][0])
    input_size = ckpt.get("input_size", cfg.get("input_size"))
    input_size = int(input_size) if input_size else None
    try:
        # the random init (replaced by the weights below) leaves the caller's random numbers
        with torch.random.fork_rng(devices=[]):
            model = build_model_for_head(
                str(ckpt["model"]),
                int(ckpt["in_channels"]),
                int(ckpt["num_classes"]),
                input_size or height,
                str(cfg.get("stem", "auto")),
                head,
            )
    except UnseenError as exc:
        from .models import MODELS, not_registered

        if str(ckpt["model"]) not in MODELS:  # a network registered in Python for that run
            raise UnseenError(
                not_registered(str(ckpt["model"]), str(path), "unseen.load")
            ) from None
        raise UnseenError(f"{path} cannot be rebuilt by this version: {exc}") from None
    for net in model.modules():
        if isinstance(net, Classifier):
            net.input_size = input_size
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnseenError(
            f"the weights in {path} do not fit a {ckpt['model']} network of this version "
            f"({first[:160]}): rerun the experiment with this version."
        ) from None
    return model.eval()


def run_config(ckpt: dict[str, Any]) -> Any:
    """The run's RunConfig (its score settings, e.g. KNN's k), or None if unreadable. A value
    this version refuses (the run's version accepted it) is left at its default alone, not
    the whole config; the fitted state in detectors.pt is what scores use in any case."""
    from .config import FIELDS, RunConfig

    cfg = ckpt.get("config")
    if not isinstance(cfg, dict):
        return None
    values = {k: v for k, v in cfg.items() if k in FIELDS}
    try:
        return RunConfig.from_dict(values)
    except UnseenError:  # RunConfig checks field by field: keep each value it accepts alone
        accepted = {}
        for key, value in values.items():
            try:
                RunConfig(**{key: value})
            except UnseenError:
                continue
            accepted[key] = value
        return RunConfig.from_dict(accepted)


def load_detectors(path: Path, device: torch.device, config: Any = None) -> dict[str, Score]:
    """Fitted scores from ``detectors.pt``; names this version does not know are skipped."""
    state = load_torch(path, map_location=device)
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise UnseenError(f"{path} is not an unseen detectors file: rerun the experiment.")
    out = {}
    for name, fitted in state.items():
        if name not in SCORES:
            continue
        try:
            score = create_score(name, config)
        except (AttributeError, TypeError, ValueError, UnseenError):  # an older config
            score = create_score(name)
        out[name] = score.load_fitted_state(fitted)
    return out


# ----------------------------------------------------------------------------- images


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """One tensor in the documented layout -> N x C x H x W."""
    first_ok, last_ok = t.shape[0] in _CHANNEL_COUNTS, t.shape[-1] in _CHANNEL_COUNTS
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        if channels_last and last_ok:
            return t.permute(2, 0, 1)[None]
        if not channels_last and first_ok:
            return t[None]
        return t[:, None]  # a batch of grayscale images
    if t.ndim == 4:
        c_first, c_last = t.shape[1] in _CHANNEL_COUNTS, t.shape[-1] in _CHANNEL_COUNTS
        if (channels_last and c_last) or (not c_first and c_last):
            return t.permute(0, 3, 1, 2)
        if c_first:
            return t
    raise InputError(
        f"an image array of shape {tuple(t.shape)} is not understood; give H x W, H x W x C or "
        "N x H x W x C arrays, or C x H x W or N x C x H x W tensors, with 1, 3 or 4 channels."
    )


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"images of type {t.dtype} are not supported; give uint8 or float.")
    if t.numel() == 0:
        return t.to(torch.uint8)
    if t.is_floating_point():
        t = t.float()
        lo, hi = float(t.min()), float(t.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(
                f"float images must lie in [0, 1] (got values from {lo:g} to {hi:g}); "
                "divide 0..255 images by 255 or pass them as uint8."
            )
        return t.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    # torch has no min/max for uint16..uint64: compare in a wide type (float64 for uint64,
    # whose values above 2**63 would wrap negative in int64)
    wide = t.to(torch.float64 if t.dtype == torch.uint64 else torch.int64)
    lo, hi = int(wide.min()), int(wide.max())
    if lo < 0 or hi > 255:
        raise InputError(
            f"integer images must lie in 0..255 (got {lo} to {hi}); pass uint8 or floats in [0, 1]."
        )
    return wide.to(torch.uint8)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


def _array_tensor(image: np.ndarray) -> torch.Tensor:
    """A NumPy image array as a tensor sharing nothing odd with it: native byte order,
    contiguous, writable (torch warns about read-only memory), floats torch lacks (long
    double) as float64."""
    kind = image.dtype.kind
    if kind not in "uif":  # bool, complex, strings, objects, dates...
        raise InputError(
            f"an image array of dtype {image.dtype} is not supported; give uint8 or floats in "
            "[0, 1]."
        )
    if image.ndim == 0:
        raise InputError("an image array of shape () holds one number, not an image.")
    if kind == "f" and image.dtype.itemsize > 8:
        image = image.astype(np.float64)
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    image = np.ascontiguousarray(image)
    return torch.from_numpy(image if image.flags.writeable else image.copy())


def to_nchw_uint8(image: Any, bit_depth: int = 16) -> torch.Tensor:
    """One input (an image file's path, PIL image, array or tensor, single image or batch)
    -> uint8 N x C x H x W (16-bit greyscale files read at ``bit_depth`` bits)."""
    image = _decoded(image)
    if _is_pil(image):
        try:
            x = image_tensor(image, bit_depth)
        except ValueError as exc:  # e.g. a 32-bit image beyond 16-bit values
            raise InputError(f"an image of mode {image.mode} cannot be read: {exc}.") from None
    elif isinstance(image, torch.Tensor):
        x = _to_uint8(_layout(image.detach().cpu(), channels_last=False))
    elif isinstance(image, np.ndarray):
        x = _to_uint8(_layout(_array_tensor(image), channels_last=True))
    else:
        raise InputError(
            f"cannot read an image from a {type(image).__name__}; give image file paths, PIL "
            "images, NumPy arrays or torch tensors (or a list of them)."
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:  # a batch of no images is fine; no pixels is not
        raise InputError(f"an image of height {x.shape[-2]} and width {x.shape[-1]} has no pixels.")
    return x


def _decoded(image: Any) -> Any:
    """An image file's path decoded to a PIL image; anything else as it is."""
    if not isinstance(image, (str, os.PathLike)):
        return image
    if not Path(image).is_file():
        raise UnseenError(f"{image} is not an image file (it does not exist or is a folder).")
    item = _decode_file(Path(image))
    if item.error is not None:
        raise UnseenError(f"{image} {item.error}.")
    return item.image


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


# ----------------------------------------------------------------------------- predictor


@dataclass
class Decision:
    """What a predictor says about a batch of images (NumPy arrays of length N)."""

    #: known class index 0..K-1, or -1 (unknown) when the score is below the threshold
    label: np.ndarray
    #: the closest known class (argmax of the logits), also for rejected images
    closest: np.ndarray
    #: the head's probability of the closest class (softmax, or sigmoid for one-vs-rest heads)
    probability: np.ndarray
    #: the rejection score (higher = more likely a known class)
    score: np.ndarray


class Predictor:
    """A trained classifier with its reject option, restored from a run folder.

    Use :func:`load` to make one. ``predict`` returns known class indices 0..K-1 (the
    order of ``classes``) and -1 for "unknown"; an image is accepted when
    ``score >= threshold``. See the module docstring for the accepted image formats.
    """

    def __init__(
        self,
        run_dir: Path,
        checkpoint: dict[str, Any],
        model: torch.nn.Module,
        detectors: dict[str, Score],
        device: torch.device,
        precision: str,
        batch_size: int = 256,
    ):
        split = checkpoint["split"]
        self.run_dir = run_dir
        self.head: str = str(checkpoint.get("head", "softmax"))
        #: the network in eval mode, batch norm folded into the convolutions (inference only)
        self.model = fold_batch_norm(model.to(device))
        self.detectors = detectors
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        #: known class names, in the order of the predicted indices
        #: (names that runs of earlier versions kept with a folder name's non-UTF-8 bytes
        #: are written with escapes, as folder datasets now name them)
        self.classes: tuple[str, ...] = tuple(map(valid_unicode, split["known_names"]))
        #: the classes held out of training
        self.unseen_classes: tuple[str, ...] = tuple(
            map(valid_unicode, split.get("unseen_names", ()))
        )
        self.image_size: tuple[int, int] = (
            int(checkpoint["image_size"][0]),
            int(checkpoint["image_size"][1]),
        )
        self.in_channels = int(checkpoint["in_channels"])
        self.run_known_acceptance = float(
            (checkpoint.get("config") or {}).get("known_acceptance", 0.95)
        )
        #: the bits of 16-bit greyscale files, as the run read its own (``--bit-depth``)
        self.bit_depth = int((checkpoint.get("config") or {}).get("bit_depth") or 16)
        self._val_scores: dict[str, np.ndarray] | None = None
        self.score_name = ""
        self.threshold = math.nan
        #: the known acceptance the threshold was calibrated for (None for a given threshold)
        self.known_acceptance: float | None = None
        #: where the threshold comes from, in words
        self.threshold_source = ""

    # -- configuration

    def default_score(self) -> str:
        if DEFAULT_SCORE in self.detectors:
            return DEFAULT_SCORE
        if not self.detectors:
            raise UnseenError(f"{self.run_dir} has no scores this version can compute.")
        return next(iter(self.detectors))

    def validation_scores(self, name: str) -> np.ndarray:
        """The run's scores of its known-class validation images (``scores.npz``)."""
        if self._val_scores is None:
            path = self.run_dir / "scores.npz"
            if not path.is_file():
                raise UnseenError(
                    f"{path} does not exist; pass a --threshold (threshold= in Python) instead."
                )
            arrays = read_npz(path, keep=lambda k: k.startswith("val_score_"))
            self._val_scores = {k[len("val_score_") :]: v for k, v in arrays.items()}
        if name not in self._val_scores or self._val_scores[name].size == 0:
            raise UnseenError(
                f"{self.run_dir / 'scores.npz'} has no validation scores for {name!r} to calibrate on; "
                "pass a --threshold (threshold= in Python) instead."
            )
        return self._val_scores[name]

    def configure(
        self,
        score: str | None = None,
        threshold: float | None = None,
        known_acceptance: float | None = None,
    ) -> Predictor:
        """Choose the score and its threshold, in place; returns ``self``. Without
        ``score``, the score chosen before stays (the run's default on a new predictor).

        ``threshold`` is used as given; otherwise the threshold is calibrated on the run's
        validation scores to accept ``known_acceptance`` of known images (default: the
        run's own ``known_acceptance``). Give at most one of the two.
        """
        from .config import FIELDS
        from .metrics import calibrate_threshold

        if threshold is not None and known_acceptance is not None:
            raise InputError("give a threshold or a known acceptance, not both.")
        name = score or self.score_name or self.default_score()  # keeps the chosen score
        if name not in self.detectors:
            why = (
                "this version has no score of that name"
                if name not in SCORES
                else "the run did not compute it"
            )
            raise InputError(
                f"score {name!r} is not available for {self.run_dir} ({why}); "
                f"choose from: {', '.join(self.detectors)}."
            )
        if threshold is not None:
            try:
                if isinstance(threshold, (str, bytes)):
                    raise TypeError
                threshold = float(threshold)  # a NumPy scalar or one-element tensor too
            except (TypeError, ValueError):
                raise InputError(f"the threshold must be a number, not {threshold!r}.") from None
            if not math.isfinite(threshold):
                raise InputError(f"the threshold must be a finite number, not {threshold}.")
            self.threshold, self.known_acceptance, self.threshold_source = (
                float(threshold),
                None,
                "given",
            )
        elif known_acceptance is None and self.detectors[name].decision_threshold() is not None:
            # the score's own rule (e.g. ovr-doc: rejected below 0), as in the run's metrics
            self.threshold = float(self.detectors[name].decision_threshold())
            self.known_acceptance, self.threshold_source = None, "the score's own rule"
        else:
            acceptance = self.run_known_acceptance if known_acceptance is None else known_acceptance
            if problem := FIELDS["known_acceptance"].metadata["check"](acceptance):
                # the rule of `unseen run --known-acceptance`
                raise InputError(f"the known acceptance {problem}, not {acceptance}.")
            self.threshold = calibrate_threshold(self.validation_scores(name), acceptance)
            self.known_acceptance = float(acceptance)
            self.threshold_source = (
                f"calibrated to accept {acceptance:.1%} of the run's known validation images"
            )
        self.score_name = name
        return self

    def with_options(
        self,
        score: str | None = None,
        threshold: float | None = None,
        known_acceptance: float | None = None,
    ) -> Predictor:
        """A copy (sharing the model) with another score or threshold; see :meth:`configure`
        (without ``score``, the copy keeps this predictor's score).
        Unless ``threshold`` or ``known_acceptance`` is given, the copy keeps how this
        predictor decides: a threshold given for this score stays while the score does (a new
        score, on another scale, is calibrated instead); a known acceptance other than the
        run's carries over, also to a new score, unless that score has its own decision rule
        (ovr-doc)."""
        chosen = self.known_acceptance  # None when the threshold was given or a score's own rule
        name = score or self.score_name or self.default_score()
        own_rule = name in self.detectors and self.detectors[name].decision_threshold() is not None
        keep = threshold is None and known_acceptance is None
        if keep and self.threshold_source == "given" and name == self.score_name:
            threshold = self.threshold
        elif keep and not own_rule and chosen != self.run_known_acceptance:
            known_acceptance = chosen
        return copy.copy(self).configure(score, threshold, known_acceptance)

    # -- images

    def prepare(self, images: Any) -> torch.Tensor:
        """Images in any accepted format -> uint8 N x C x H x W as the model was trained on."""
        items = _as_list(images)
        batches = [self.conform(to_nchw_uint8(im, self.bit_depth)) for im in items]
        if not batches:
            return torch.empty(0, self.in_channels, *self.image_size, dtype=torch.uint8)
        return torch.cat(batches).contiguous()

    def conform(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 N x C x H x W tensor (C 1 to 4) -> the run's channels (alpha dropped,
        colour to greyscale or back) and image size (resized), as training read its own
        images. Other formats go through :meth:`prepare`, which reads and then conforms."""
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4):
            what = (
                f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            )
            raise InputError(
                f"conform takes a uint8 N x C x H x W tensor, not {what}; prepare() reads "
                "every other format (files, PIL images, arrays, float tensors)."
            )
        if not 1 <= x.shape[1] <= 4:
            raise InputError(
                f"conform takes 1 to 4 channels, not {x.shape[1]} (N x C x H x W: is the "
                "batch channels-last? prepare() reads both layouts)."
            )
        return resize_images(convert_channels(x, self.in_channels), self.image_size)

    def outputs(self, images: Any) -> Outputs:
        """Logits and features of the images (on the predictor's device)."""
        return self._forward(images)[1]

    def _forward(self, images: Any) -> tuple[torch.Tensor, Outputs]:
        x = images if _is_prepared(images, self) else self.prepare(images)
        out = forward_pass(self.model, x, self.device, self.precision, batch_size=self.batch_size)
        return x, out

    def _apply(self, name: str, x: torch.Tensor, out: Outputs) -> np.ndarray:
        s = self.detectors[name]
        if s.needs_model:  # e.g. ODIN: perturbs the inputs, another pass through the model
            values = s.score_images(
                self.model, x, self.device, self.precision, batch_size=self.batch_size
            )
        else:
            values = s.score(out)
        return values.double().cpu().numpy()  # as the run stored them (float64)

    def all_scores(self, images: Any) -> dict[str, np.ndarray]:
        """Every score of the run that this version can compute, by name."""
        x, out = self._forward(images)
        return {n: self._apply(n, x, out) for n in self.detectors}

    def all_scores_and_closest(
        self, images: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """:meth:`all_scores`, and the closest known class of each image with the head's
        probability of it (as :meth:`decide` gives them), from one forward pass."""
        x, out = self._forward(images)
        return {n: self._apply(n, x, out) for n in self.detectors}, *self._closest(out)

    def _closest(self, out: Outputs) -> tuple[np.ndarray, np.ndarray]:
        """The closest known class (int64) and the head's probability of it, in float64 as
        the run's known_confidence (heads.confidence), returned as float32."""
        from .heads import HEADS

        prob, closest = HEADS[self.head].probabilities(out.logits.double()).max(dim=1)
        return closest.cpu().numpy().astype(np.int64), prob.float().cpu().numpy()

    def scores(self, images: Any) -> np.ndarray:
        """The chosen score (``score_name``) of each image; higher = more likely known."""
        x, out = self._forward(images)
        return self._apply(self.score_name, x, out)

    def decide(self, images: Any) -> Decision:
        """Labels, closest known classes, probabilities and scores in one forward pass."""
        x, out = self._forward(images)
        score = self._apply(self.score_name, x, out)
        closest, probability = self._closest(out)
        label = np.where(score >= self.threshold, closest, UNKNOWN).astype(np.int64)
        return Decision(label, closest, probability, score)

    def predict(self, images: Any) -> np.ndarray:
        """Known class index 0..K-1 per image, or -1 (unknown) below the threshold."""
        return self.decide(images).label

    def predict_names(self, images: Any) -> list[str]:
        """Known class name per image, or ``"unknown"`` (``"<unknown>"`` when a known class is
        named "unknown": ``unknown_name``)."""
        return [self.name_of(i) for i in self.predict(images)]

    @property
    def unknown_name(self) -> str:
        """The name of a rejection: "unknown", or "<unknown>" when a known class has that name."""
        return UNKNOWN_NAME if UNKNOWN_NAME not in self.classes else "<unknown>"

    def name_of(self, index: int) -> str:
        return self.unknown_name if index < 0 else self.classes[int(index)]

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.run_dir)!r}, head={self.head!r}, classes={list(self.classes)}, "
            f"score={self.score_name!r}, threshold={self.threshold:.6g} ({self.threshold_source}))"
        )


def _is_prepared(images: Any, p: Predictor) -> bool:
    return (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        and images.ndim == 4
        and tuple(images.shape[1:]) == (p.in_channels, *p.image_size)
    )


def run_precision(run_dir: Path) -> str:
    """The precision the run (a head's folder) evaluated in, from its metrics.json: its stored
    scores, and the thresholds calibrated on them, are in that arithmetic (fp32 when unknown)."""
    metrics_path = run_dir / "metrics.json"
    precision = "fp32"
    if metrics_path.is_file():
        try:
            precision = str(json.loads(metrics_path.read_text()).get("precision", "fp32"))
        except (ValueError, AttributeError, OSError):
            precision = "fp32"
    return precision if precision in PRECISIONS else "fp32"


def resolve_predict_precision(run_dir: Path, device: torch.device) -> str:
    """:func:`run_precision`, except where ``device`` lacks it: fp32 for a bf16 run on a GPU
    without bf16, and for an fp16 run on a CPU (emulated there: its forward pass ran 6x slower
    than fp32's on the 2-core AMD EPYC). Those scores differ from the run's by the 16-bit
    type's rounding."""
    precision = run_precision(run_dir)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "fp32"
    if precision == "fp16" and device.type == "cpu":
        precision = "fp32"
    return precision


def load(
    run_dir: str | Path,
    *,
    head: str | None = None,
    score: str | None = None,
    threshold: float | None = None,
    known_acceptance: float | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 256,
) -> Predictor:
    """Restore a finished run folder as a :class:`Predictor`.

    ``score`` defaults to ``energy`` when the run computed it, else the run's first score.
    The threshold defaults to the run's calibration (``known_acceptance`` of its known
    validation images accepted); pass ``known_acceptance`` to recalibrate on the stored
    validation scores, or ``threshold`` to set it. ``precision`` defaults to the one the run
    evaluated in, so that scores match the calibration. Nothing here needs the training data.
    """
    from .hardware import resolve_device

    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(
            f"load takes a run folder's path (str or Path), not {type(run_dir).__name__}."
        )
    whole = isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool)
    if not whole or batch_size < 1:
        raise InputError(f"batch_size must be a whole number of at least 1, not {batch_size!r}.")
    batch_size = int(batch_size)  # a NumPy integer too
    dev = resolve_device(device)
    folder = locate_run(run_dir, head)
    ckpt = load_checkpoint(folder / "model.pt")
    if precision is None:
        precision = resolve_predict_precision(folder, dev)
    elif precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    model = rebuild_model(ckpt, folder / "model.pt")
    detectors = load_detectors(folder / "detectors.pt", dev, run_config(ckpt))
    predictor = Predictor(folder, ckpt, model, detectors, dev, precision, batch_size)
    return predictor.configure(score, threshold, known_acceptance)


# ----------------------------------------------------------------------------- files


@dataclass
class Item:
    """One input image (decoded, not yet converted) or the reason it could not be read."""

    name: str
    image: Any = None
    error: str | None = None


def _decode_file(path: Path) -> Item:
    try:
        return Item(str(path), read_image_file(path))
    except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        why = f"could not be read as an image ({decode_error(exc, path)})"
        if path.suffix.lower() == ".npy":  # one array without a name: predict reads .npz
            why += "; save arrays of images as .npz, np.savez(path, x=images)"
        return Item(str(path), error=why)


def _npz_items(path: Path) -> Iterator[Item]:
    names: list[str] = []

    def keep(name: str) -> bool:  # only the image arrays are read (a dataset's x_train is not)
        names.append(name)
        return name in NPZ_KEYS

    try:
        arrays = read_npz(path, keep=keep)
    except UnseenError as exc:
        yield Item(str(path), error=str(exc).removeprefix(f"{path} ").rstrip("."))
        return
    key = next((k for k in NPZ_KEYS if k in arrays), None)
    if key is None:
        yield Item(
            str(path),
            error=f"npz has no array named {', '.join(NPZ_KEYS)} (it has: "
            f"{', '.join(names) or 'none'})",
        )
        return
    array = arrays[key]
    if looks_like_one_image(array.shape):
        yield Item(
            str(path),
            error=f"npz array {key!r} of shape {array.shape} looks like one H x W x C image; "
            f"npz files hold N images ({NPZ_LAYOUTS}): save it as x[None]",
        )
        return
    if (nchw := npz_images_nchw(array)) is None:
        yield Item(
            str(path), error=f"npz array {key!r} has shape {array.shape}; expected {NPZ_LAYOUTS}"
        )
        return
    if len(nchw) == 0:
        yield Item(str(path), error=f"npz array {key!r} holds no images")
        return
    for i in range(len(nchw)):
        yield Item(f"{path}[{i}]", np.moveaxis(nchw[i], 0, -1))  # H x W x C, as decoded files


def iter_inputs(inputs: Iterable[str | Path], skipped: list[Path] | None = None) -> Iterator[Item]:
    """Image files, folders (searched recursively for image extensions; the other files are
    added to ``skipped`` when given) and npz files."""
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = image_files(path, skipped)  # as a folder:PATH dataset lists them
            if not files:
                yield Item(
                    str(path), error=f"folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})"
                )
            for f in files:
                yield _decode_file(f)
        elif not path.exists():
            yield Item(str(path), error="does not exist")
        elif path.suffix.lower() == ".npz":
            yield from _npz_items(path)
        else:
            yield _decode_file(path)


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_items(
    predictor: Predictor,
    items: Iterable[Item],
    progress: bool = False,
    converted: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per item: input, prediction, class_index, score, threshold, closest, probability,
    error, converted. With ``progress``, a count of the images done is shown on a terminal
    (stderr). Each item holds one image; the row's ``converted`` says what was done to make
    it like the run's images (:func:`conversions`), None when nothing was. The argument
    ``converted``, a dict when given, counts the rows by kind of conversion (``"resized"``,
    ``"alpha"``, ``"channels"``, ``"clipped"``): :func:`conversion_note` says it."""
    from .console import image_bar

    rows: list[dict[str, Any]] = []
    bar = image_bar("predicting" if progress else None)
    for chunk in _chunks(items, predictor.batch_size):
        good: list[tuple[int, torch.Tensor]] = []
        chunk_rows = []
        for item in chunk:
            row = {
                "input": valid_unicode(item.name),  # a file name's non-UTF-8 bytes as \xe9
                "prediction": None,
                "class_index": None,
                "score": None,
                "threshold": predictor.threshold,
                "closest": None,
                "probability": None,
                "error": item.error,
                "converted": None,
            }
            if item.error is None:
                try:
                    image = _decoded(item.image)
                    read = to_nchw_uint8(image, predictor.bit_depth)
                    if len(read) != 1:  # a batch in one item: its rows would go to other items
                        raise InputError(f"holds {len(read)} images; give one image per item.")
                    x = predictor.conform(read)
                    done = conversions(image, read, predictor)
                except UnseenError as exc:
                    row["error"] = str(exc).rstrip(".")
                except Exception as exc:  # nothing foresaw it: its row says so, the rest go on
                    row["error"] = f"could not be prepared ({type(exc).__name__}: {exc})"
                else:
                    good.append((len(chunk_rows), x))
                    row["converted"] = "; ".join(done.values()) or None
                    if converted is not None:
                        for kind in done:
                            converted[kind] = converted.get(kind, 0) + 1
            chunk_rows.append(row)
        if good:
            d = predictor.decide(torch.cat([x for _, x in good]))
            for j, (i, _) in enumerate(good):
                chunk_rows[i].update(
                    prediction=predictor.name_of(int(d.label[j])),
                    class_index=int(d.label[j]),
                    score=float(d.score[j]),
                    closest=predictor.classes[int(d.closest[j])],
                    probability=float(d.probability[j]),
                )
        rows.extend(chunk_rows)
        bar.update(len(chunk))
    bar.close()
    return rows


# ----------------------------------------------------------------------------- output

COLUMNS = (
    "input", "prediction", "class_index", "score", "threshold", "closest", "probability", "error",
    "converted",
)  # fmt: skip


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()


def rows_to_json(rows: Sequence[dict[str, Any]], predictor: Predictor) -> str:
    doc = {
        "run": str(predictor.run_dir),
        "head": predictor.head,
        "score": predictor.score_name,
        "threshold": predictor.threshold,
        "known_acceptance": predictor.known_acceptance,
        "threshold_source": predictor.threshold_source,
        "classes": list(predictor.classes),
        "convention": "accepted as a known class when score >= threshold; otherwise 'unknown'",
        "predictions": [{k: row.get(k) for k in COLUMNS} for row in rows],
    }
    return json.dumps(doc, indent=2) + "\n"


def rows_to_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text columns: text left, numbers right."""
    from .console import table

    def num(v: Any) -> str:
        return "" if v is None else f"{v:.4f}"

    header = ["input", "prediction", "score", "threshold", "closest", "prob", "note"]
    cells = [
        [
            r["input"], r["prediction"] or "-", num(r["score"]), num(r["threshold"]),
            r["closest"] or "-", num(r["probability"]),
            r.get("error") or r.get("converted") or "",  # a row has one or the other
        ]
        for r in rows
    ]  # fmt: skip
    if not any(c[-1] for c in cells):  # the note column only when a row has one
        header, cells = header[:-1], [c[:-1] for c in cells]
    return table(header, cells, left=(0, 1, 4, 6))


def run_aurocs(run_dir: Path) -> dict[str, float]:
    """Each score's AUROC on the run's own test set (known against unseen images), from its
    metrics.json; empty when the run held nothing out (or the file is unreadable)."""
    try:
        scores = json.loads((run_dir / "metrics.json").read_text()).get("scores", {})
    except (OSError, ValueError, AttributeError):
        return {}
    out = {}
    for name, m in scores.items() if isinstance(scores, dict) else ():
        value = m.get("auroc") if isinstance(m, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[str(name)] = float(value)
    return out


def weak_score_note(predictor: Predictor) -> str | None:
    """A warning when the chosen score did worse than chance on the run's own unseen images
    (AUROC below 0.5: it ranked them as *more* known), naming the run's best score."""
    aurocs = run_aurocs(predictor.run_dir)
    mine = aurocs.get(predictor.score_name)
    if mine is None or mine >= 0.5:
        return None
    best = max((n for n in aurocs if n in predictor.detectors), key=lambda n: aurocs[n])
    advice = (
        f"; the run's best was {best} (AUROC {aurocs[best]:.3f}): --score {best}"
        if aurocs[best] >= 0.5
        else "; no score the run computed did better than chance (unseen rescore --scores all "
        "adds more)"
    )
    return (
        f"warning: on the run's own test set, {predictor.score_name} ranked unseen images as "
        f"more known than known ones (AUROC {mine:.3f}), so it will accept most images of "
        f"classes it never saw{advice}."
    )


def summary_line(rows: Sequence[dict[str, Any]], predictor: Predictor) -> str:
    n_err = sum(r["error"] is not None for r in rows)
    n_unknown = sum(r["class_index"] == UNKNOWN for r in rows)
    n_ok = len(rows) - n_err
    how = predictor.threshold_source
    renamed = (
        f" (labelled {predictor.unknown_name!r}: a class is named {UNKNOWN_NAME!r})"
        if predictor.unknown_name != UNKNOWN_NAME
        else ""
    )
    return (
        f"{n_ok} image(s): {n_ok - n_unknown} known, {n_unknown} unknown{renamed}"
        f"{f'; {n_err} row(s) could not be read' if n_err else ''} | score {predictor.score_name}, "
        f"threshold {predictor.threshold:.6g} ({how})"
    )


#: files --output never replaces, whatever their content: images, arrays, checkpoints
BINARY_SUFFIXES = frozenset(
    {*IMAGE_EXTENSIONS, ".gif", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".pkl"}
)


def _looks_binary(path: Path) -> bool:
    """Whether ``path`` is a file predict did not write: a binary suffix, or a NUL byte in
    its first 8 KiB (text, CSV and JSON hold none). A file that cannot be read counts: the
    atomic write would replace it unread."""
    if path.suffix.lower() in BINARY_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return b"\0" in fh.read(8192)
    except OSError:
        return True


def check_output(output: str, run_dir: str | Path, inputs: Sequence[str]) -> None:
    """Refuse an ``--output`` that would replace what predict did not write: one of the
    inputs, a file of the run (model.pt, metrics.json, ...; of the whole run when
    ``run_dir`` is one head's folder), a file named as an image or other binary file
    (existing or not: predict writes text), or an existing file that is not text."""
    from .checkpoint import RUN_FILES

    target = Path(output).resolve()

    def same(item: str) -> bool:  # an input no file can have (a NUL byte) is not the target
        try:
            return Path(item).resolve() == target
        except (OSError, ValueError):
            return False

    if any(same(item) for item in inputs):
        raise InputError(f"--output {output} is one of the inputs; give another file name.")
    folder = Path(run_dir).resolve()
    runs = [folder, folder.parent] if is_head_folder(folder) else [folder]
    own = target.name in RUN_FILES or (
        target.name.startswith("checkpoint") and target.suffix == ".pt"
    )
    if own and any(target.is_relative_to(r) for r in runs):
        raise InputError(f"--output {output} is a file of the run itself; give another file name.")
    if target.suffix.lower() in BINARY_SUFFIXES:  # a table in photo.png: a typo, not a wish
        raise InputError(
            f"--output {output} names an image or binary file ({target.suffix}), and predict "
            "writes text: give a .csv, .json or .txt file name."
        )
    if target.is_file() and _looks_binary(target):
        raise InputError(
            f"--output {output} exists and is not a text file predict can read; predict would "
            "replace it: give another file name, or delete it first."
        )


def format_for(fmt: str | None, output: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(output).suffix.lower() if output else ""
    return {".csv": "csv", ".json": "json"}.get(suffix, "table")


def run_predict(
    run_dir: str,
    inputs: Sequence[str],
    *,
    head: str | None = None,
    score: str | None = None,
    threshold: float | None = None,
    known_acceptance: float | None = None,
    fmt: str | None = None,
    output: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> int:
    """What ``unseen predict`` does; returns the exit code (see the CLI help)."""
    if threshold is not None and known_acceptance is not None:
        raise UnseenError("give --threshold or --known-acceptance, not both.")
    if output and Path(output).is_dir():
        raise UnseenError(
            f"--output {output} is a folder; give a file name, e.g. {Path(output) / 'predictions.csv'}."
        )
    predictor = load(
        run_dir,
        head=head,
        score=score,
        threshold=threshold,
        known_acceptance=known_acceptance,
        device=device,
        batch_size=batch_size,
    )
    if output:
        check_output(output, run_dir, inputs)
        check_writable(output)  # before the images, not after
    skipped: list[Path] = []
    converted: dict[str, int] = {}
    rows = predict_items(
        predictor, iter_inputs(inputs, skipped), progress=True, converted=converted
    )
    kind = format_for(fmt, output)
    if kind == "csv":
        text = rows_to_csv(rows)
    elif kind == "json":
        text = rows_to_json(rows, predictor)
    else:
        text = rows_to_table(rows) + "\n"
    summary = summary_line(rows, predictor)
    if output:
        atomic_write(output, lambda fh: fh.write(text.encode()))
        print(f"{summary}\nwrote {len(rows)} row(s) to {output}")
    else:
        sys.stdout.write(text)
        if kind == "table":
            print(f"\n{summary}")
        else:
            print(summary, file=sys.stderr)
    if skipped:  # on stderr: stdout may be the CSV or JSON
        print(skipped_note(skipped), file=sys.stderr)
    if note := conversion_note(converted, predictor):
        print(note, file=sys.stderr)
    if note := weak_score_note(predictor):  # "warning: ...", as the run's console notes
        print(note, file=sys.stderr)
    if rows and all(r["error"] is not None for r in rows):
        raise UnseenError(f"none of the {len(rows)} input(s) could be read as an image.")
    return 0


def conversions(image: Any, read: torch.Tensor, predictor: Predictor) -> dict[str, str]:
    """What :meth:`Predictor.conform` does to ``read``, uint8 N x C x H x W read from
    ``image`` (one image from a PIL image, an array...; or a dataset's images, all of one
    size, with ``image`` None), to make it like the run's images, by kind: ``resized`` (from
    its own height x width), ``alpha`` (dropped), ``channels`` (colour to greyscale, unless
    the three channels are equal everywhere and nothing changes; greyscale to RGB) and
    ``clipped`` (a PIL image's values above the run's ``--bit-depth``). Empty when its pixels
    are used as they are."""
    c, h, w = read.shape[-3:]
    done = {}
    if (h, w) != tuple(predictor.image_size):
        done["resized"] = f"resized from {h} x {w}"
    if c in (2, 4):
        done["alpha"] = "alpha dropped"
    if c >= 3 and predictor.in_channels == 1:
        r, g, b = read[:, 0], read[:, 1], read[:, 2]
        if not (torch.equal(r, g) and torch.equal(g, b)):
            done["channels"] = "colour to greyscale"
    elif c <= 2 and predictor.in_channels == 3:
        done["channels"] = "greyscale to RGB"
    if _is_pil(image) and _clipped(image, predictor.bit_depth):
        done["clipped"] = f"values above {2**predictor.bit_depth - 1} clipped"
    return done


def _clipped(image: Any, bit_depth: int) -> bool:
    """Whether a PIL image holds values above ``2^bit_depth - 1`` that reading it at the run's
    ``--bit-depth`` clips to white (16-bit PNG or TIFF; a PGM's maxval is applied instead)."""
    top = wide_peak(image) if bit_depth < 16 else None
    return top is not None and top > 2**bit_depth - 1


def conversion_note(converted: dict[str, int], predictor: Predictor) -> str | None:
    """One line on the images read at another size, or with another channel count, than the
    run trained on: they were resized (not cropped: the aspect ratio follows) or converted,
    as training read its own images."""
    parts = []
    if n := converted.get("resized"):
        h, w = predictor.image_size
        parts.append(f"{n} resized to the run's {h} x {w} (stretched where the aspect differs)")
    if n := converted.get("alpha"):
        parts.append(f"{n} with their alpha channel dropped")
    if n := converted.get("channels"):
        to = "greyscale" if predictor.in_channels == 1 else "RGB"
        parts.append(f"{n} converted to {to}")
    if n := converted.get("clipped"):
        full = 2**predictor.bit_depth - 1
        parts.append(f"{n} with values above {full} clipped to white (the run's --bit-depth)")
    return (
        f"note: of the images read, {' and '.join(parts)}, as training reads images"
        if parts
        else None
    )


def skipped_note(skipped: Sequence[Path]) -> str:
    """One line on the files of the folders given that were not read: how many, by suffix."""
    from collections import Counter

    kinds = Counter(p.suffix.lower() or "no suffix" for p in skipped)
    said = ", ".join(f"{n} {suffix}" for suffix, n in kinds.most_common(5))
    more = ", ..." if len(kinds) > 5 else ""
    return (
        f"note: {len(skipped)} file(s) in the folders given were not read ({said}{more}): not "
        "image files by their extension; name such a file to read it anyway."
    )
