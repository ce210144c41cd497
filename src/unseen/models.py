"""Networks: one registry from a name to a builder; every model splits features from head.

All models take images as floats in ``[0, 1]`` of shape ``N x C x H x W`` and normalise
them inside (the per-channel mean and std of the known training images are buffers, so
a saved model carries them to ``unseen predict``). ``forward_features`` returns the
penultimate features ``N x D``; ``forward_head`` maps them to logits ``N x K``.
"""

from __future__ import annotations

import copy
import numbers
import re
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


class Classifier(nn.Module):
    """Normalisation + backbone (images -> features) + linear head (features -> logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, in_channels: int):
        super().__init__()
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.5))
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.in_channels = in_channels
        #: images are resized to ``input_size x input_size`` first (None: used as they come);
        #: saved in model.pt as ``input_size`` so that evaluation and prediction do the same
        self.input_size: int | None = None
        #: linear probe: backbone weights fixed and its batch norm kept in eval mode
        self.backbone_frozen = False

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.clamp_min(1e-3).reshape(self.std.shape))

    def freeze_backbone(self) -> None:
        """Train only the head: no gradients for the backbone, batch-norm statistics frozen."""
        self.backbone_frozen = True
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinear resize to ``input_size`` (anti-aliased when shrinking); a no-op when unset."""
        size = self.input_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        shrink = size < min(x.shape[-2:])
        return F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``N x feature_dim`` of float images ``N x C x H x W`` in
        [0, 1] (uint8 images divided by 255; normalisation happens here)."""
        if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != self.in_channels:
            hint = "" if x.is_floating_point() else " (divide uint8 images by 255)"
            raise ValueError(
                f"the model takes float images N x {self.in_channels} x H x W in [0, 1], not "
                f"{x.dtype} {tuple(x.shape)}{hint}"
            )
        return self.backbone((self.resize(x) - self.mean) / self.std)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``N x num_classes`` of penultimate ``features``."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def model_input(images: torch.Tensor) -> torch.Tensor:
    """A batch as the network is fed it in evaluation: float32 in [0, 1] (uint8 images are
    divided by 255, float ones taken as they are), in one fixed ``channels_last`` layout.

    The layout is made, not inherited: for one-channel images the NCHW and NHWC strides of
    the same pixels are both "contiguous", yet the CPU's convolutions pick different kernels
    for them, whose results differ in the last bits (in fp32; by up to 1e-2 in bf16). A
    fresh tensor makes the scores of the same pixels the same, whether they come from a
    NumPy array, a dataset tensor or image files. Inputs that are not image batches (the
    ``N x D`` rows of a module of your own given to ODIN) are made contiguous instead."""
    layout = torch.channels_last if images.dim() == 4 else torch.contiguous_format
    x = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=layout)
    x.copy_(images)
    return x.div_(255) if images.dtype == torch.uint8 else x


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for inference, with every batch norm that directly follows
    a convolution folded into that convolution's weight and bias (``torch.fx``'s conv-bn
    fusion, applied to the backbone of each :class:`Classifier` inside ``model``).

    The same function up to float rounding, without the batch-norm kernels: the test pass of
    a bf16 ResNet-18 ran 1.25-1.36x faster on a 2-core CPU (the evaluation line of
    ``benchmarks/bench_train.py``). For inference only: the copy has no batch norm left to
    train, and ``model`` is not changed.
    """
    with warnings.catch_warnings():
        # on torch 2.11 this import builds torch.utils.mkldnn's TorchScript classes, and each
        # of their 14 script methods warns that TorchScript is deprecated (not our use of it)
        warnings.filterwarnings("ignore", ".*torch.jit.script_method", DeprecationWarning)
        from torch.fx.experimental.optimization import fuse

    folded = copy.deepcopy(model).eval()
    for m in [m for m in folded.modules() if isinstance(m, Classifier)]:
        m.backbone = fuse(m.backbone, inplace=True)
    return folded


# ----------------------------------------------------------------------------- ResNet-20


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): 3 stages of ``n`` blocks, widths 16/32/64."""

    def __init__(
        self, in_channels: int, blocks_per_stage: int = 3, widths: tuple[int, ...] = (16, 32, 64)
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def build_resnet20(
    in_channels: int, num_classes: int, image_size: int, stem: str = "auto"
) -> Classifier:
    body = CifarResNet(in_channels, blocks_per_stage=3)
    return Classifier(body, body.out_dim, num_classes, in_channels)


# ----------------------------------------------------------------------------- ResNet-18


class ResNetBlock(nn.Module):
    """torchvision's ``BasicBlock``, under its names: two 3x3 convolutions and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ``resnet18(weights=None)`` without its classifier: images -> 512 features.

    The same modules, names, order of construction and initialisation as torchvision's, so
    torchvision's ImageNet weights load by name and a seed gives the weights that earlier
    versions of unseen got from torchvision itself (``tests/test_models.py`` checks both).
    It is written out here because ``import torchvision`` imports ``torch._dynamo``, the
    compiler: 1 s on a 2-core CPU, 5-7 s on an H200, for a network of 40 lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or c_in != width:
                downsample = nn.Sequential(
                    nn.Conv2d(c_in, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks = [
                ResNetBlock(c_in, width, stride, downsample),
                ResNetBlock(width, width, 1, None),
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # torchvision makes its 1000-class classifier here, which unseen replaces by its own
        # head: drawn all the same, so that the initialisation below draws what it always drew
        nn.Linear(512, 1000)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNetBackbone(nn.Module):
    """The ResNet-18 as a backbone; its weights are named ``backbone.net.<torchvision name>``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resolve_stem(stem: str, image_size: int) -> str:
    if stem == "auto":
        return "small" if image_size <= 64 else "imagenet"
    return stem


def build_resnet18(
    in_channels: int, num_classes: int, image_size: int, stem: str = "auto"
) -> Classifier:
    """torchvision's ResNet-18; the small-image stem (3x3 stride-1 conv, no max-pool) up to 64 px."""
    net = ResNet18()
    if resolve_stem(stem, image_size) == "small":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return Classifier(ResNetBackbone(net), 512, num_classes, in_channels)


#: name -> builder(in_channels, num_classes, image_size, stem) -> Classifier
MODELS: dict[str, Callable[..., Classifier]] = {
    "resnet20": build_resnet20,
    "resnet18": build_resnet18,
}
#: the models whose input stem ``--stem`` chooses; the others have one and ignore ``--stem``
HAS_STEMS = {"resnet18"}
BUILT_IN_MODELS = frozenset(MODELS)


def register_model(
    name: str, *, has_stem: bool = False
) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator adding a network of your own to the registry, under ``name``.

    The builder is called as ``builder(in_channels, num_classes, image_size, stem)`` and
    returns a :class:`Classifier` (your backbone, mapping normalised images to ``N x D``
    features, its ``D`` and the sizes: ``Classifier(backbone, D, num_classes, in_channels)``).
    ``stem`` is ``auto``, ``small`` or ``imagenet`` (``--stem``); with ``has_stem=False`` the
    network has one stem and a ``--stem`` given is ignored with a note. Then
    ``RunConfig(model=name)``, rescore, report and ``unseen.load`` work with it in any
    Python process that registered it first (the CLI knows only the built-in ones).

    Names are letters, digits, ``_``, ``.`` and ``-``. Registering a name of your own again
    replaces its builder (a notebook cell run twice); the built-in names are refused."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"a model name is letters, digits, '_', '.' and '-', not {name!r}.")
    if name in BUILT_IN_MODELS:
        raise ConfigError(f"{name!r} is a built-in model; register yours under another name.")

    def add(builder: Callable[..., Classifier]) -> Callable[..., Classifier]:
        MODELS[name] = builder
        if has_stem:
            HAS_STEMS.add(name)
        else:
            HAS_STEMS.discard(name)
        return builder

    return add


def list_models() -> list[str]:
    """The registered model names, the built-in ones first (``resnet20``, the default, then
    ``resnet18``), then those registered, in order."""
    return list(MODELS)


def not_registered(name: str, what: str, python: str) -> str:
    """The sentence for ``what`` (a file or folder) trained with a network ``name`` that this
    process has not registered (a network of one's own, registered in the Python process that
    trained it); ``python`` names the call to use from Python instead."""
    return (
        f"{what} holds the network {name!r}, which is not registered in this process; "
        f"register its builder (unseen.models.register_model) and use {python} from Python, "
        "or rerun with a built-in --model."
    )


def check_model(name: str) -> None:
    """ConfigError for an unknown model name, listing the known ones."""
    if name not in MODELS:
        raise ConfigError(
            f"--model {name!r} is not known; choose one of: {', '.join(MODELS)} (a "
            "network of your own is registered from Python: unseen.models.register_model)."
        )


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    stem: str = "auto",
    input_size: int | None = None,
) -> Classifier:
    """Build ``name``; with ``input_size`` images are resized to it inside the model first."""
    check_model(name)
    if stem not in ("auto", "small", "imagenet"):
        raise ConfigError(f"--stem must be auto, small or imagenet, not {stem!r}.")
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"create_model's {key} must be a whole number, not {value!r}.")
    in_channels, num_classes, image_size = int(in_channels), int(num_classes), int(image_size)
    if in_channels < 1 or num_classes < 1 or image_size < 1:
        raise ConfigError(
            f"a model needs at least one input channel, class and pixel, not in_channels="
            f"{in_channels}, num_classes={num_classes}, image_size={image_size}."
        )
    model = MODELS[name](in_channels, num_classes, input_size or image_size, stem)
    if not isinstance(model, Classifier):
        raise ConfigError(
            f"the builder of model {name!r} returned a {type(model).__name__}, not an "
            "unseen.models.Classifier (wrap your backbone: Classifier(backbone, feature_dim, "
            "num_classes, in_channels))."
        )
    model.input_size = input_size
    return model
