"""Data sources: one registry from a name to a loader returning whole uint8 image tensors.

Every loader returns an :class:`ImageData`: train and test images as ``uint8`` tensors of
shape ``N x C x H x W`` (one channel stays one channel), integer labels, and class names.
Nothing here downloads unless the user passed ``--download``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError

#: The folder Debian's ``dataset-fashion-mnist`` package installs.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class ImageData:
    """A whole dataset in memory. Images are uint8 ``N x C x H x W``; labels int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str
    #: whether a horizontal flip keeps an image's meaning (not for digits)
    flip_ok: bool = True

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    load: Callable[[str | None, bool], ImageData]
    #: returns where the data was found, or raises DataError saying how to get it
    locate: Callable[[str | None], str]


def default_root() -> Path:
    return Path(os.environ.get("UNSEEN_DATA_ROOT", "data"))


# ----------------------------------------------------------------------------- digits


def _load_digits(root: str | None = None, download: bool = False) -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N,1,8,8
    labels = bunch.target.astype(np.int64)
    # A fixed train/test split (independent of the run seed): the test set never changes.
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.3, stratify=labels, random_state=0
    )
    return ImageData(
        name="digits",
        x_train=torch.from_numpy(images[idx_train]),
        y_train=torch.from_numpy(labels[idx_train]),
        x_test=torch.from_numpy(images[idx_test]),
        y_test=torch.from_numpy(labels[idx_test]),
        classes=DIGIT_CLASSES,
        source="scikit-learn's bundled 8x8 digits (fixed 70/30 train/test split)",
        flip_ok=False,
    )


# ----------------------------------------------------------------------------- IDX (MNIST family)

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_candidates(root: str | None, folder: str, debian: Path | None) -> list[Path]:
    dirs: list[Path] = []
    for base in [Path(root)] if root else [default_root()]:
        dirs += [base / folder / "raw", base / folder, base]
    if root is None and debian is not None:
        dirs.append(debian)
        debian_dirs = _dpkg_listed_dirs("dataset-fashion-mnist") if folder == "FashionMNIST" else []
        dirs += [d for d in debian_dirs if d not in dirs]
    return dirs


def _dpkg_listed_dirs(package: str) -> list[Path]:
    """Folders holding IDX files of an installed Debian package (empty when dpkg is absent)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({Path(p).parent for p in listing.split() if "idx" in Path(p).name})


def _find_idx_dir(dirs: list[Path]) -> Path | None:
    for d in dirs:
        if all(_idx_file(d, stem) is not None for stem in _IDX_FILES.values()):
            return d
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path) -> torch.Tensor:
    """Read one IDX file (plain or .gz) with torchvision's reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    try:
        if path.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(path), strict=False)
        # torchvision's reader takes unpacked files only: unpack to a temporary file.
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            return read_sn3_pascalvincent_tensor(str(plain), strict=False)
    except (OSError, EOFError, ValueError, RuntimeError, AssertionError, KeyError) as exc:
        raise DataError(f"{path} is truncated or not an IDX file ({type(exc).__name__}).") from None


def _idx_loader(
    name: str, folder: str, classes: tuple[str, ...], debian: Path | None, how: str, flip_ok: bool
):
    def locate(root: str | None) -> str:
        dirs = _idx_candidates(root, folder, debian)
        found = _find_idx_dir(dirs)
        if found is None:
            looked = ", ".join(str(d) for d in dirs)
            raise DataError(f"{name} IDX files not found (looked in {looked}); {how}")
        return str(found)

    def load(root: str | None = None, download: bool = False) -> ImageData:
        folder_found = Path(locate(root))
        t = {key: _read_idx(_idx_file(folder_found, stem)) for key, stem in _IDX_FILES.items()}
        for split in ("train", "test"):
            x, y = t[f"x_{split}"], t[f"y_{split}"]
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DataError(
                    f"{name} {split} files in {folder_found} do not match: "
                    f"{tuple(x.shape)} images, {tuple(y.shape)} labels."
                )
        return ImageData(
            name=name,
            x_train=t["x_train"][:, None].contiguous(),
            y_train=t["y_train"].long(),
            x_test=t["x_test"][:, None].contiguous(),
            y_test=t["y_test"].long(),
            classes=classes,
            source=str(folder_found),
            flip_ok=flip_ok,
        )

    return load, locate


_fm_load, _fm_locate = _idx_loader(
    "fashion-mnist",
    "FashionMNIST",
    FASHION_CLASSES,
    DEBIAN_FASHION_MNIST,
    "install Debian's package (apt-get install dataset-fashion-mnist) or put the four "
    "IDX files (.gz or unpacked) in DIR/FashionMNIST/raw/ or DIR and pass --data-root DIR.",
    flip_ok=True,
)
_mnist_load, _mnist_locate = _idx_loader(
    "mnist",
    "MNIST",
    DIGIT_CLASSES,
    None,
    "put the four MNIST IDX files (.gz or unpacked) in DIR/MNIST/raw/ or DIR and pass --data-root DIR.",
    flip_ok=False,
)


# ----------------------------------------------------------------------------- torchvision


def _torchvision_source(name: str, flip_ok: bool) -> tuple[Callable, Callable]:
    def make(root: str, train: bool, download: bool):
        from torchvision import datasets

        if name == "cifar10":
            return datasets.CIFAR10(root, train=train, download=download)
        if name == "cifar100":
            return datasets.CIFAR100(root, train=train, download=download)
        return datasets.SVHN(root, split="train" if train else "test", download=download)

    def how(root: str) -> str:
        return (
            f"{name} not found in {root}; pass --data-root DIR holding torchvision's files for it, "
            "or add --download on a machine with internet."
        )

    def locate(root: str | None) -> str:
        r = str(root or default_root())
        try:
            make(r, True, False)
            make(r, False, False)
        except (RuntimeError, OSError, ValueError) as exc:
            raise DataError(how(r)) from exc
        return r

    def load(root: str | None = None, download: bool = False) -> ImageData:
        r = str(root or default_root())
        try:
            train, test = make(r, True, download), make(r, False, download)
        except (RuntimeError, OSError, ValueError) as exc:
            if download:
                raise DataError(f"{name} could not be downloaded into {r} ({exc}).") from None
            raise DataError(how(r)) from None
        except Exception as exc:  # unpickling or scipy.io errors on damaged files
            raise DataError(
                f"{name} files in {r} could not be read ({type(exc).__name__}: {exc})."
            ) from None

        def arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
            if name == "svhn":
                x = torch.from_numpy(np.ascontiguousarray(ds.data))  # N,3,32,32 already
                y = torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)
            else:
                x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
                y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
            return x, y

        xtr, ytr = arrays(train)
        xte, yte = arrays(test)
        classes = tuple(train.classes) if hasattr(train, "classes") else DIGIT_CLASSES
        return ImageData(name, xtr, ytr, xte, yte, classes, r, flip_ok=flip_ok)

    return load, locate


# ----------------------------------------------------------------------------- folder / npz


def _load_image_files(paths: list[Path]) -> tuple[np.ndarray, str]:
    """Decode image files into one uint8 N,H,W,C array (resized to the most common size)."""
    from collections import Counter

    from PIL import Image, UnidentifiedImageError

    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"image {p} could not be decoded ({type(exc).__name__}).") from None
    gray = all(im.mode in {"L", "1", "I;16", "I"} for im in images)
    mode = "L" if gray else "RGB"
    size = Counter(im.size for im in images).most_common(1)[0][0]
    arrs = []
    for im in images:
        im = im.convert(mode)
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrs.append(a[:, :, None] if a.ndim == 2 else a)
    return np.stack(arrs), f"{size[0]}x{size[1]} {mode}"


def _folder_source(path: str) -> tuple[Callable, Callable]:
    root = Path(path)

    def locate(_root: str | None = None) -> str:
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise DataError(
                    f"folder dataset {root} needs subfolders train/<class>/ and test/<class>/ "
                    f"({root / split} is missing)."
                )
        return str(root)

    def load(_root: str | None = None, download: bool = False) -> ImageData:
        from torchvision.datasets import ImageFolder

        locate()
        splits = {}
        for split in ("train", "test"):
            try:
                ds = ImageFolder(str(root / split), loader=lambda p: p)  # only list the files
            except (FileNotFoundError, OSError) as exc:
                raise DataError(f"folder dataset {root / split}: {exc}.") from None
            empty = [
                c for c in ds.classes if not any(t == ds.class_to_idx[c] for _, t in ds.samples)
            ]
            if empty:
                raise DataError(
                    f"class folder(s) {', '.join(empty)} in {root / split} hold no images."
                )
            splits[split] = ds
        classes = tuple(splits["train"].classes)
        extra = sorted(set(splits["test"].classes) - set(classes))
        if extra:
            raise DataError(f"{root / 'test'} has classes missing from train/: {', '.join(extra)}.")
        out = {}
        for split, ds in splits.items():
            x, _ = _load_image_files([Path(p) for p, _ in ds.samples])
            y = np.array([classes.index(ds.classes[t]) for _, t in ds.samples], dtype=np.int64)
            out[split] = (x, y)
        shapes = {out[s][0].shape[1:] for s in out}
        if len(shapes) != 1:
            raise DataError(
                f"train and test images in {root} differ in size or channels: {shapes}."
            )
        return ImageData(
            name=f"folder:{root}",
            x_train=torch.from_numpy(out["train"][0]).permute(0, 3, 1, 2).contiguous(),
            y_train=torch.from_numpy(out["train"][1]),
            x_test=torch.from_numpy(out["test"][0]).permute(0, 3, 1, 2).contiguous(),
            y_test=torch.from_numpy(out["test"][1]),
            classes=classes,
            source=str(root),
        )

    return load, locate


def _npz_source(path: str) -> tuple[Callable, Callable]:
    file = Path(path)

    def locate(_root: str | None = None) -> str:
        if not file.is_file():
            raise DataError(f"npz file {file} does not exist.")
        return str(file)

    def load(_root: str | None = None, download: bool = False) -> ImageData:
        import zipfile

        locate()
        try:
            with np.load(file, allow_pickle=False) as npz:
                missing = [
                    k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files
                ]
                if missing:
                    raise DataError(f"npz file {file} lacks the arrays {', '.join(missing)}.")
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            if "allow_pickle" in str(exc):  # object arrays: loading them would run pickle
                raise DataError(
                    f"npz file {file} holds object arrays, which are not loaded (unpickling "
                    "can run code); save plain uint8 images and integer labels."
                ) from None
            raise DataError(
                f"npz file {file} is truncated or not an npz archive ({type(exc).__name__})."
            ) from None

        def images(a: np.ndarray, key: str) -> torch.Tensor:
            if a.dtype != np.uint8:
                raise DataError(f"{key} in {file} must be uint8 images, not {a.dtype}.")
            if a.ndim == 3:
                a = a[:, None]
            elif a.ndim == 4:
                a = np.moveaxis(a, 3, 1)
            else:
                raise DataError(
                    f"{key} in {file} must be N x H x W or N x H x W x C, not {a.shape}."
                )
            return torch.from_numpy(np.ascontiguousarray(a))

        def labels(a: np.ndarray, key: str, n: int) -> torch.Tensor:
            if a.ndim != 1 or len(a) != n or not np.issubdtype(a.dtype, np.integer):
                raise DataError(
                    f"{key} in {file} must be {n} integer labels, not {a.dtype} {a.shape}."
                )
            if len(a) and a.min() < 0:
                raise DataError(f"{key} in {file} has negative labels.")
            return torch.from_numpy(a.astype(np.int64))

        xtr, xte = images(arrays["x_train"], "x_train"), images(arrays["x_test"], "x_test")
        ytr = labels(arrays["y_train"], "y_train", len(xtr))
        yte = labels(arrays["y_test"], "y_test", len(xte))
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataError(
                f"x_train and x_test in {file} differ in shape: {tuple(xtr.shape[1:])} vs {tuple(xte.shape[1:])}."
            )
        n_classes = int(max(ytr.max(), yte.max())) + 1
        if "classes" in arrays:
            classes = tuple(str(c) for c in arrays["classes"].tolist())
            if len(classes) < n_classes:
                raise DataError(
                    f"'classes' in {file} names {len(classes)} classes but labels go up to {n_classes - 1}."
                )
        else:
            classes = tuple(str(i) for i in range(n_classes))
        return ImageData(f"npz:{file}", xtr, ytr, xte, yte, classes, str(file))

    return load, locate


# ----------------------------------------------------------------------------- registry

_cifar10 = _torchvision_source("cifar10", flip_ok=True)
_cifar100 = _torchvision_source("cifar100", flip_ok=True)
_svhn = _torchvision_source("svhn", flip_ok=False)

SOURCES: dict[str, Source] = {
    "digits": Source(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits (1,797 images)",
        _load_digits,
        lambda r: "bundled with scikit-learn",
    ),
    "fashion-mnist": Source(
        "fashion-mnist", "Zalando's 28x28 clothing images (70,000)", _fm_load, _fm_locate
    ),
    "mnist": Source("mnist", "28x28 handwritten digits (70,000)", _mnist_load, _mnist_locate),
    "cifar10": Source("cifar10", "32x32 colour images, 10 classes (torchvision)", *_cifar10),
    "cifar100": Source("cifar100", "32x32 colour images, 100 classes (torchvision)", *_cifar100),
    "svhn": Source("svhn", "32x32 house-number digits (torchvision)", *_svhn),
}
PATH_SOURCES = {
    "folder": ("image-folder tree PATH/train/<class>/*, PATH/test/<class>/*", _folder_source),
    "npz": ("arrays x_train, y_train, x_test, y_test (uint8), optional classes", _npz_source),
}


def get_source(name: str) -> Source:
    """Look up a data source by name, including ``folder:PATH`` and ``npz:PATH``."""
    prefix, sep, path = name.partition(":")
    if sep and prefix in PATH_SOURCES:
        if not path:
            raise ConfigError(f"--dataset {name!r} needs a path after '{prefix}:'.")
        description, factory = PATH_SOURCES[prefix]
        return Source(name, description, *factory(path))
    if name in SOURCES:
        return SOURCES[name]
    valid = list(SOURCES) + [f"{p}:PATH" for p in PATH_SOURCES]
    raise ConfigError(f"--dataset {name!r} is not known; choose one of: {', '.join(valid)}.")


def check_dataset_name(name: str) -> None:
    get_source(name)


def load_dataset(name: str, root: str | None = None, download: bool = False) -> ImageData:
    """Load a whole dataset by registry name. Raises :class:`DataError` when it is missing."""
    return get_source(name).load(root, download)


def describe_sources(root: str | None = None) -> list[tuple[str, str, str]]:
    """(name, description, where found or how to get it) for `unseen datasets`."""
    rows = []
    for src in SOURCES.values():
        try:
            where = "found: " + src.locate(root)
        except DataError as exc:
            where = "missing: " + str(exc)
        rows.append((src.name, src.description, where))
    for prefix, (description, _) in PATH_SOURCES.items():
        rows.append((f"{prefix}:PATH", description, "give the path"))
    return rows
