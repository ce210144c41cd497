"""Pretrained weights: find them, load them safely, fit them to this run's network.

``--pretrained`` takes

* ``torchvision``: torchvision's ImageNet-1k ResNet-18 (``ResNet18_Weights.IMAGENET1K_V1``),
  read from torch's hub cache (``torch.hub.get_dir()/checkpoints``). The file is looked for
  *before* any download is tried: offline, a missing file is one clear error naming the file and
  the folder; the download happens only with ``--download``.
* a run folder (its ``model.pt``) or a ``model.pt`` written by ``unseen run``;
* a ``.pt``/``.pth`` file holding a state dict (or a dict with ``state_dict`` /
  ``model_state_dict``), in torchvision's key names (``conv1.weight``, ``layer1.0...``,
  ``fc.weight``) or ours (``backbone.net.conv1.weight``, ``head.weight``);
* a ``.safetensors`` file with either key naming.

Every PyTorch file is read with ``torch.load(weights_only=True)``: a pickle that carries code is
refused. The classifier head of the source (``fc.*`` or ``head.*``) is never loaded: this run's
head is new and sized for its known classes. The normalisation buffers (``mean``/``std``) are
not loaded either: inputs are standardised with this run's training-image statistics. A first
convolution with another number of input channels is adapted (3 -> 1: weights summed over the
input channels, which gives the same response to a grey image replicated in RGB; 1 -> 3:
repeated and divided by 3). Tensors whose shapes still differ are skipped and listed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import absolute_dataset
from .errors import UnseenError
from .runfolder import load_torch

TORCHVISION = "torchvision"
TORCHVISION_WEIGHTS = "ResNet18_Weights.IMAGENET1K_V1"
#: where torchvision fetches those weights from (``ResNet18_Weights.IMAGENET1K_V1.url``; a test
#: keeps them equal), named here so that finding the file does not import torchvision
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
TORCHVISION_DESCRIPTION = f"imagenet-1k (torchvision {TORCHVISION_WEIGHTS})"
#: keys of a source's classifier: never loaded, the run's head is new
HEAD_PREFIXES = ("fc.", "head.")
#: the normalisation buffers of our Classifier: this run's data statistics are kept
NORMALISATION_KEYS = ("mean", "std")


@dataclass
class PretrainedSource:
    """Weights as loaded, before they are fitted to a network."""

    #: what the user gave to --pretrained
    spec: str
    #: "torchvision", "run" (a checkpoint written by ``unseen run``) or "file"
    kind: str
    path: Path | None
    state_dict: dict[str, torch.Tensor]
    #: metrics.json's ``pretrained_on``
    description: str
    #: for kind "run": the checkpoint's entries other than the weights (config, split, model...)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        """The architecture name, where the source says it (torchvision: resnet18)."""
        if self.kind == TORCHVISION:
            return "resnet18"
        return self.checkpoint.get("model")

    @property
    def first_conv_kernel(self) -> int | None:
        """Kernel size of the source's first convolution (7: ImageNet stem, 3: small stem)."""
        for key in ("conv1.weight", "backbone.net.conv1.weight"):
            w = self.state_dict.get(key)
            if w is not None and w.ndim == 4:
                return int(w.shape[-1])
        return None

    @property
    def input_size(self) -> int | None:
        """The input size a run checkpoint was trained at (None: none recorded)."""
        size = self.checkpoint.get("input_size")
        return int(size) if size else None


@dataclass
class LoadReport:
    """What happened to each tensor when the weights were fitted to the network."""

    source: str
    loaded: list[str] = field(default_factory=list)
    #: network tensors that got no weights (they keep their fresh initialisation)
    missing: list[str] = field(default_factory=list)
    #: source tensors with no place in the network
    unexpected: list[str] = field(default_factory=list)
    #: "key: source shape -> network shape", skipped
    mismatched: list[str] = field(default_factory=list)
    #: "key: what was done", loaded after adapting
    adapted: list[str] = field(default_factory=list)
    #: the source's classifier tensors that were dropped for a new head
    head_replaced: list[str] = field(default_factory=list)
    #: the new head: "in_features -> num_classes"
    new_head: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_loaded": len(self.loaded),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "adapted": self.adapted,
            "head_replaced": self.head_replaced,
            "new_head": self.new_head,
        }

    def lines(self, limit: int = 6) -> list[str]:
        """Console lines: a summary, then each non-empty list (long lists shortened)."""

        def short(items: list[str]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        total = len(self.loaded) + len(self.missing)
        head = (
            f"head replaced ({', '.join(self.head_replaced)} dropped; new head {self.new_head})"
            if self.head_replaced
            else f"new head {self.new_head}"
        )
        out = [
            f"pretrained weights: {self.source}: loaded {len(self.loaded)} of {total} "
            f"network tensors; {head}"
        ]
        if self.adapted:
            out.append(f"  adapted: {short(self.adapted)}")
        if self.mismatched:
            out.append(f"  not loaded, shapes differ: {short(self.mismatched)}")
        if self.missing:
            out.append(f"  missing (kept fresh initialisation): {short(self.missing)}")
        if self.unexpected:
            out.append(f"  unexpected (ignored): {short(self.unexpected)}")
        return out


# ----------------------------------------------------------------------------- finding weights


def torchvision_weights_file() -> tuple[Path, str]:
    """Where torch's hub keeps the ImageNet ResNet-18 file, and the URL it comes from."""
    url = TORCHVISION_WEIGHTS_URL
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return folder / os.path.basename(url), url


def load_torchvision_weights(download: bool = False) -> PretrainedSource:
    """ImageNet ResNet-18 weights from the hub cache; downloaded there only if ``download``."""
    path, url = torchvision_weights_file()
    if not path.is_file():
        if not download:
            raise UnseenError(
                f"--pretrained torchvision needs {path.name}, which is not in torch's hub cache "
                f"{path.parent}; place the file there (from {url}) or add --download to fetch it."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # the hash prefix in the file name (resnet18-<sha256 prefix>.pth) is checked
            torch.hub.download_url_to_file(url, str(path), hash_prefix=path.stem.split("-")[-1])
        except Exception as exc:  # URLError, timeouts, a hash mismatch
            raise UnseenError(
                f"could not download {url} into {path.parent} ({type(exc).__name__}: "
                f"{str(exc).strip()[:160]}); place the file there by hand."
            ) from None
    state = _state_dict_of(load_torch(path), path)
    return PretrainedSource(TORCHVISION, TORCHVISION, path, state, TORCHVISION_DESCRIPTION)


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: a state dict, or one under a usual key of a checkpoint."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner:
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            # weights saved from nn.DataParallel / DistributedDataParallel
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module.") :]: v for k, v in tensors.items()}
            return tensors
    raise UnseenError(
        f"{path} holds no state dict (a dict of tensor names to tensors, or one under "
        "'state_dict'); save weights with torch.save(model.state_dict(), PATH)."
    )


def load_weights_file(path: Path) -> PretrainedSource:
    """A run folder, a model.pt of ours, a .pt/.pth state dict or a .safetensors file."""
    spec = str(path)
    if path.is_dir():
        heads = sorted(d.name for d in path.iterdir() if (d / "model.pt").is_file())
        if not (path / "model.pt").is_file() and heads:
            raise UnseenError(
                f"--pretrained {path} holds one model per head ({', '.join(heads)}); give "
                f"one of them, e.g. {path / heads[0]}."
            )
        if not (path / "model.pt").is_file():
            raise UnseenError(
                f"--pretrained {path} is a folder without model.pt; give a finished run folder "
                "or a weights file."
            )
        path = path / "model.pt"
    if not path.is_file():
        raise UnseenError(
            f"--pretrained {spec} is neither 'torchvision' nor an existing run folder or weights file."
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UnseenError(
                f"reading {path} needs the safetensors package; pip install safetensors."
            ) from None
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise UnseenError(f"{path} is not a valid safetensors file ({exc}).") from None
    else:
        obj = load_torch(path)
    state = _state_dict_of(obj, path)  # a `module.` prefix is dropped from either kind
    if any(k.startswith("members.") for k in state):
        raise UnseenError(
            f"--pretrained {spec} is an ovr-separate ensemble of one network per class; its "
            "weights cannot start one network: give a softmax or ovr run."
        )
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj.get("split"), dict):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return PretrainedSource(spec, "run", path, state, _describe_run(path, meta), meta)
    return PretrainedSource(spec, "file", path, state, f"file: {path}")


def _describe_run(path: Path, meta: dict[str, Any]) -> str:
    dataset = (meta.get("config") or {}).get("dataset", "?")
    known = (meta.get("split") or {}).get("known_names") or []
    return f"run: {path.parent} (dataset {dataset}, known classes {', '.join(map(str, known))})"


def resolve_pretrained(spec: str, download: bool = False) -> PretrainedSource:
    """Load what ``--pretrained spec`` names; raise :class:`UnseenError` in one sentence if not."""
    if spec.strip().lower() == TORCHVISION:
        return load_torchvision_weights(download)
    return load_weights_file(Path(spec).expanduser())


# ----------------------------------------------------------------------------- run settings


def resolve_model_settings(
    model: str, stem: str, input_size: int | None, source: PretrainedSource, image_size: int
) -> dict[str, Any]:
    """The ``stem`` and ``input_size`` a run with these weights should use ('auto' resolved).

    * A run checkpoint fixes the architecture: another ``--model`` is an error. Its stem (read
      from its first convolution) and input size are used unless given explicitly.
    * ImageNet weights come with the ImageNet stem (7x7 stride-2 conv and max-pool): with
      ``--stem auto`` it is chosen, and images of 64 px or less are up-sampled 4x, which gives
      the same feature-map sizes as the small stem at the native size. ``--stem small`` keeps
      the 3x3 first convolution, which then starts from fresh weights (listed as mismatched).
    """
    if source.kind == "run" and source.model and source.model != model:
        raise UnseenError(
            f"--pretrained {source.spec} holds a {source.model}; run with --model {source.model}."
        )
    changes: dict[str, Any] = {}
    if model != "resnet18":
        if input_size is None and source.input_size:
            changes["input_size"] = source.input_size
        return changes
    kernel = source.first_conv_kernel
    if stem == "auto" and kernel in (3, 7):
        stem = "imagenet" if kernel == 7 else "small"
        changes["stem"] = stem
    if input_size is None:
        if source.kind == "run" and source.input_size:
            changes["input_size"] = source.input_size
        elif stem == "imagenet" and kernel == 7 and image_size <= 64:
            changes["input_size"] = 4 * image_size
    return changes


# ----------------------------------------------------------------------------- fitting


def first_conv_name(model: nn.Module) -> str | None:
    """State-dict key of the weight of the first ``Conv2d`` registered in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv weight ``O x I x k x k`` for ``channels`` inputs.

    To one channel: the sum over the ``I`` inputs (a grey image repeated ``I`` times gives the
    same output). From one channel: repeated ``channels`` times and divided by ``channels``.
    """
    have = weight.shape[1]
    if have == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    raise ValueError(f"cannot adapt {have} input channels to {channels}")


def _candidates(key: str) -> tuple[str, ...]:
    """Our names for a source key: as is, inside torchvision's net, inside our backbone."""
    return (key, f"backbone.net.{key}", f"backbone.{key}")


def apply_pretrained(model: nn.Module, source: PretrainedSource) -> LoadReport:
    """Copy ``source``'s weights into ``model`` in place and say what fitted and what did not.

    The head is not loaded (the run's head is sized for its own known classes) and neither are
    the normalisation buffers. Raises :class:`UnseenError` when no tensor of the network fits.
    """
    target = model.state_dict()
    first_conv = first_conv_name(model)
    report = LoadReport(source=source.description)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        report.new_head = f"{head.in_features} -> {head.out_features} classes"
    new_state: dict[str, torch.Tensor] = {}
    for key, value in source.state_dict.items():
        if key.startswith(HEAD_PREFIXES):
            report.head_replaced.append(f"{key} {tuple(value.shape)}")
            continue
        if key in NORMALISATION_KEYS:
            continue
        name = next((c for c in _candidates(key) if c in target), None)
        if name is None:
            report.unexpected.append(key)
            continue
        want = target[name]
        if name == first_conv and value.ndim == 4 and value.shape[1] != want.shape[1]:
            have = value.shape[1]
            if (want.shape[1] == 1 or have == 1) and value.shape[2:] == want.shape[2:]:
                n = want.shape[1]
                value = adapt_input_channels(value, n)
                how = "summed over them" if n == 1 else f"repeated {n} times and divided by {n}"
                report.adapted.append(f"{name}: {have} -> {n} input channels (weights {how})")
        if value.shape != want.shape:
            note = (
                " (the first conv: another stem; it keeps fresh weights)"
                if name == first_conv
                else ""
            )
            report.mismatched.append(f"{name}: {tuple(value.shape)} -> {tuple(want.shape)}{note}")
            continue
        new_state[name] = value.to(dtype=want.dtype)
        report.loaded.append(name)
    skip = {k for k in target if k.startswith("head.") or k in NORMALISATION_KEYS}
    report.missing = [k for k in target if k not in new_state and k not in skip]
    if not any(v.is_floating_point() and v.ndim > 1 for v in new_state.values()):
        sample = ", ".join(list(source.state_dict)[:4])
        raise UnseenError(
            f"none of the weights in {source.path or source.spec} fit this network "
            f"(its first keys: {sample}); were they saved from another --model?"
        )
    model.load_state_dict({**target, **new_state})
    return report


# ----------------------------------------------------------------------------- leakage


def lineage(source: PretrainedSource) -> list[dict[str, Any]]:
    """Everything the weights of ``source`` were trained on, nearest first: the source run
    itself (dataset, known classes), then what that run started from, recursively, as each
    run's ``model.pt`` records it (``lineage``). Entries: ``{"kind": "run", "run",
    "dataset", "known"}``, ``{"kind": "torchvision"}``, ``{"kind": "file", "path"}``, and
    ``{"kind": "unrecorded", "spec"}`` for a run from a version that did not record it."""
    if source.kind == TORCHVISION:
        return [{"kind": TORCHVISION}]
    if source.kind != "run":
        return [{"kind": "file", "path": str(source.path)}]
    config = source.checkpoint.get("config") or {}
    split = source.checkpoint.get("split") or {}
    run = source.path.parent if source.path is not None else source.spec
    dataset = config.get("dataset")  # absolute, as this run's (older runs recorded it as given)
    dataset = absolute_dataset(dataset) if isinstance(dataset, str) else dataset
    own = {"kind": "run", "run": str(run), "dataset": dataset,
           "known": [str(c) for c in split.get("known_names") or []]}  # fmt: skip
    earlier = source.checkpoint.get("lineage")
    if earlier is None:  # a run from a version that did not record it: what its config says
        spec = config.get("pretrained")
        if not spec:
            earlier = []
        elif str(spec).lower() == TORCHVISION:
            earlier = [{"kind": TORCHVISION}]
        else:
            earlier = [{"kind": "unrecorded", "spec": str(spec)}]
    return [own, *earlier]


def leakage_warning(source: PretrainedSource, dataset: str, unseen_names: list[str]) -> str | None:
    """Why the held-out classes may not be unseen by a model started from ``source``.

    Every step of the weights' :func:`lineage` is checked, so a class (or ImageNet) that
    reached them through an intermediate run is found too. Returns None only when every step
    is one of our runs on the same dataset whose known classes exclude every class this run
    holds out. The most serious reason is given: a held-out class trained on, then ImageNet,
    then weights of unrecorded origin, then another dataset.
    """
    held = ", ".join(unseen_names) or "none"
    steps = lineage(source)

    def via(i: int) -> str:  # how the weights got here from step i
        if i == 0:
            return ""
        runs = [str(s["run"]) for s in steps[:i] if s["kind"] == "run"]
        return f" (reached this run through {', '.join(runs)})" if runs else ""

    for i, step in enumerate(steps):
        if step["kind"] == "run" and step["dataset"] == dataset:
            leaked = [c for c in unseen_names if c in step["known"]]
            if leaked:
                which = "class" if len(leaked) == 1 else "classes"
                return (
                    f"the pretrained run {step['run']} trained on {dataset} {which} "
                    f"{', '.join(leaked)}{via(i)}, which this run holds out: not unseen by this "
                    "model, so its unseen-class figures are not a held-out evaluation."
                )
    for i, step in enumerate(steps):
        if step["kind"] == TORCHVISION:
            return (
                f"weights pretrained on ImageNet-1k (1.28 million images of 1,000 classes){via(i)} "
                f"may have seen images like the held-out classes ({held}), so they are not truly "
                "unseen; compare with a run without --pretrained."
            )
    for i, step in enumerate(steps):
        if step["kind"] in ("file", "unrecorded"):
            origin = step.get("path") or step.get("spec")
            return (
                f"weights from {origin} of unknown origin{via(i)} may have been trained on "
                f"images like the held-out classes ({held}); check before reading them as unseen."
            )
    for i, step in enumerate(steps):
        if step["kind"] == "run" and step["dataset"] != dataset:
            return (
                f"weights pretrained on {step['dataset']} (classes {', '.join(step['known'])})"
                f"{via(i)}: check that they include nothing like the held-out classes ({held}) "
                "before reading them as unseen."
            )
    return None
