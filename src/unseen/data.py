"""Data sources: one registry from a name to a loader returning whole uint8 image tensors.

Every loader returns an :class:`ImageData`: train and test images as ``uint8`` tensors of
shape ``N x C x H x W`` (one channel stays one channel), integer labels, and class names.
Nothing here downloads unless the user passed ``--download``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import platform
import shutil
import struct
import subprocess
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .console import valid_unicode
from .errors import ConfigError, DamagedData, DataError, UnseenError
from .runfolder import read_npz

#: The folder Debian's ``dataset-fashion-mnist`` package installs.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))
#: the most classes an npz file without a ``classes`` array may number (labels 0 .. this - 1)
MAX_NPZ_CLASSES = 100_000


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
    #: what reading the files did that a user should know (resized images, grey made RGB,
    #: 16-bit images that use few of their levels), one sentence each; a run prints them
    notes: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    @property
    def untrained(self) -> tuple[int, ...]:
        """The classes only the test set has (a novel class met in deployment): no run can
        train on them, so every run holds them out (:func:`unseen.splits.make_split`). A
        class with no image in either split is not one of them (a run refuses it as known)."""
        trained = set(self.y_train.unique().tolist())
        tested = set(self.y_test.unique().tolist())
        return tuple(i for i in range(len(self.classes)) if i in tested and i not in trained)


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    load: Callable[[str | None, bool], ImageData]
    #: returns where the data was found, or raises DataError saying how to get it
    locate: Callable[[str | None], str]


def default_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("UNSEEN_DATA_ROOT", "data")))


def data_root(root: str | None) -> Path:
    """The folder a named dataset is looked for in: ``root`` (``--data-root``) with ``~``
    expanded, as torchvision's dataset classes expanded it (``--data-root=~/data`` reaches
    here unexpanded: no shell expands ``~`` after ``=``), or :func:`default_root`."""
    return Path(os.path.expanduser(root)) if root else default_root()


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
    base = data_root(root)
    dirs = [base / folder / "raw", base / folder, base]
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


def _first_labels(path: Path, n: int = 10) -> tuple[int, ...] | None:
    """The first ``n`` labels of an IDX label file (plain or .gz), read without the rest;
    None when the file is too short or unreadable (loading it then says why)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(8 + n)  # 4 bytes magic, 4 bytes count, then one byte per label
    except (OSError, EOFError, zlib.error):
        return None
    return tuple(head[8:]) if len(head) == 8 + n else None


def _idx_layout(head: bytes) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """``(header length, shape, dtype)`` from the first bytes of an IDX file: 4 magic bytes
    (0, 0, the type code, the number of dimensions, at most 32), then each dimension as a
    big-endian uint32. None when they are no IDX header."""
    ndim = head[3] if len(head) >= 4 else 0
    header = 4 + 4 * ndim
    if len(head) < header or head[0] or head[1] or head[2] not in IDX_DTYPES or ndim > 32:
        return None
    return header, struct.unpack(f">{ndim}I", head[4:header]), np.dtype(IDX_DTYPES[head[2]])


def _idx_damage(path: Path) -> str | None:
    """Why the IDX file at ``path`` cannot be whole, found cheaply: its header gives the size
    of the values, which a plain file must have, and which a .gz file's trailer (the size
    unpacked, modulo 2**32) must give. Only where the trailer disagrees is the file read whole
    (a .gz of several members has only the last one's size there). None: it looks whole, and
    a corrupt stream inside a .gz is still found when the dataset loads."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            layout = _idx_layout(fh.read(4 + 4 * 32))  # magic, then at most 32 dimensions
        if layout is None:
            raise EOFError
        header, shape, dtype = layout
        size = header + math.prod(shape) * dtype.itemsize
        if path.suffix != ".gz":
            return (
                None if path.stat().st_size == size else f"{path} is truncated or not an IDX file"
            )
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            unpacked = int.from_bytes(fh.read(4), "little")
    except (OSError, EOFError, zlib.error, ValueError):
        return f"{path} is truncated or not an IDX file"
    if unpacked == size % 2**32:
        return None
    try:
        _read_idx(path)  # the whole file decides (and says what is wrong)
    except DataError as exc:
        return str(exc).rstrip(".")
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


#: IDX type codes (the magic number's third byte) -> numpy dtypes, big-endian as in the files
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> torch.Tensor:
    """Read one IDX file (plain or .gz), LeCun's format for (Fashion-)MNIST.

    The file is 4 magic bytes (0, 0, the type code, the number of dimensions), each dimension
    as a big-endian uint32, then the values, big-endian, in C order; nothing may follow. This
    reads what torchvision's ``read_sn3_pascalvincent_tensor`` reads (a test checks that),
    without importing torchvision, which imports ``torch._dynamo`` (5-7 s on an H200).
    """
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # a cut .gz, a corrupt stream
        why = "corrupt gzip data" if isinstance(exc, zlib.error) else type(exc).__name__
        raise DataError(f"{path} is truncated or not an IDX file ({why}).") from None
    if (layout := _idx_layout(raw)) is None:
        raise DataError(f"{path} is truncated or not an IDX file (no IDX header).")
    header, shape, dtype = layout
    values = math.prod(shape)
    if len(raw) != header + values * dtype.itemsize:
        raise DataError(
            f"{path} is truncated or not an IDX file ({len(raw) - header} bytes of values for "
            f"a {' x '.join(map(str, shape))} array of {dtype.itemsize}-byte values)."
        )
    array = np.frombuffer(raw, dtype, values, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(shape))


#: the first ten training and test labels of the published files. MNIST and Fashion-MNIST use
#: the same file names, so a flat folder of one would otherwise load as the other.
IDX_FINGERPRINTS = {
    "mnist": ((5, 0, 4, 1, 9, 2, 1, 3, 1, 4), (7, 2, 1, 0, 4, 1, 4, 9, 5, 9)),
    "fashion-mnist": ((9, 0, 0, 3, 0, 2, 7, 2, 5, 5), (9, 2, 1, 1, 6, 1, 4, 6, 5, 7)),
}


def _idx_loader(
    name: str, folder: str, classes: tuple[str, ...], debian: Path | None, how: str, flip_ok: bool
):
    def locate(root: str | None) -> str:
        """The first candidate folder with all four files whose first labels are not those of
        the other dataset (MNIST and Fashion-MNIST share file names), so that a folder of one
        never hides the other further down the list."""
        dirs = _idx_candidates(root, folder, debian)
        incomplete: list[tuple[Path, list[str]]] = []
        other_found: tuple[Path, str] | None = None
        for d in dirs:
            files = {key: _idx_file(d, stem) for key, stem in _IDX_FILES.items()}
            missing = [_IDX_FILES[k] for k, f in files.items() if f is None]
            if len(missing) == len(files):
                continue
            if missing:
                incomplete.append((d, missing))
                continue
            first = (_first_labels(files["y_train"]), _first_labels(files["y_test"]))
            other = next((o for o, f in IDX_FINGERPRINTS.items() if o != name and f == first), None)
            if other is None:
                # damage found now, not once the data loads (after training, for --ood)
                for file in files.values():
                    assert file is not None
                    if why := _idx_damage(file):
                        raise DamagedData(f"{why}; replace it with an undamaged copy.")
                return str(d)
            other_found = other_found or (d, other)
        if other_found is not None:
            d, other = other_found
            raise DataError(
                f"{d} holds the {other} files, not {name} (both use the same file names): use "
                f"--dataset {other}, or a --data-root with the {name} files."
            )
        if incomplete:
            d, missing = incomplete[0]
            raise DataError(
                f"{name} IDX files incomplete in {d}: {', '.join(missing)} (.gz or unpacked) "
                f"missing; {how}"
            )
        looked = ", ".join(str(d) for d in dirs)
        raise DataError(f"{name} IDX files not found (looked in {looked}); {how}")

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
            if len(y) == 0:
                raise DataError(f"{name} {split} files in {folder_found} hold no images.")
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= len(classes):
                label_file = _idx_file(folder_found, _IDX_FILES[f"y_{split}"])
                raise DataError(
                    f"{label_file} has labels {lo}..{hi}, but {name} labels must lie in "
                    f"0..{len(classes) - 1}."
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


# ----------------------------------------------------------------------------- CIFAR and SVHN

#: The files of torchvision's CIFAR-10, CIFAR-100 and SVHN datasets, in its layout under the
#: data root, with the MD5s its dataset classes check (a test keeps these equal to
#: torchvision's own tables). unseen reads these files itself and imports torchvision only to
#: ``--download`` them: importing it imports ``torch._dynamo`` (1 s on a 2-core CPU, 5-7 s on
#: an H200).
TORCHVISION_FILES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": (
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        "test": (("test_batch", "40351d587109b95175f43aff81a1287e"),),
        "meta": ("batches.meta", "label_names", "5ff9c542aee3614f3951f8cda6e48888"),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": (("train", "16019d7e3df5f24257cddd939b257f8d"),),
        "test": (("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        "meta": ("meta", "fine_label_names", "7973b15100ade9c7d40fb424638fde48"),
    },
    "svhn": {
        "folder": "",
        "train": (("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),),
        "test": (("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),),
    },
}


def _md5_matches(path: Path, md5: str) -> bool:
    """Whether ``path`` is a file with this MD5 (torchvision's integrity check)."""
    if not path.is_file():
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == md5


def _torchvision_source(name: str, flip_ok: bool) -> tuple[Callable, Callable]:
    def files(root: str) -> list[tuple[Path, str]]:
        """Every file of ``name`` under ``root``, with its MD5."""
        table = TORCHVISION_FILES[name]
        base = Path(root) / table["folder"]
        listed = [*table["train"], *table["test"]]
        if "meta" in table:  # (file, key of the class names, md5)
            listed.append((table["meta"][0], table["meta"][2]))
        return [(base / f, md5) for f, md5 in listed]

    def how(root: str) -> DataError:
        if all(f.is_file() for f, _ in files(root)):  # there, but not the published files
            return DamagedData(
                f"the {name} files in {root} are there but fail torchvision's integrity (MD5) "
                "check: they are damaged or incomplete; replace them, or delete them and add "
                "--download on a machine with internet."
            )
        return DataError(
            f"{name} not found in {root}; pass --data-root DIR holding torchvision's files for it, "
            "or add --download on a machine with internet."
        )

    def intact(r: str) -> bool:
        try:
            return all(_md5_matches(f, md5) for f, md5 in files(r))
        except OSError as exc:  # no permission, an I/O error: one sentence (and `unseen
            # datasets` lists the other sources), as when torchvision's check refused them
            raise DataError(
                f"{name} file {exc.filename} could not be read ({exc.strerror or exc})."
            ) from None

    def locate(root: str | None) -> str:
        r = str(data_root(root))
        if not intact(r):
            raise how(r)
        return r

    def fetch(root: str) -> None:
        """torchvision's dataset classes fetch the files (and skip those already right)."""
        from torchvision import datasets

        for train in (True, False):
            if name == "svhn":
                datasets.SVHN(root, split="train" if train else "test", download=True)
            else:
                cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
                cls(root, train=train, download=True)

    def read(root: str) -> ImageData:
        table = TORCHVISION_FILES[name]
        base = Path(root) / table["folder"]
        if name == "svhn":
            from scipy.io import loadmat

            def split(file: str) -> tuple[torch.Tensor, torch.Tensor]:
                mat = loadmat(str(base / file))
                x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))  # H,W,C,N -> N,C,H,W
                y = mat["y"].astype(np.int64).squeeze()
                y[y == 10] = 0  # the digit 0 is labelled 10 in the files
                return torch.from_numpy(x), torch.from_numpy(y)

            (xtr, ytr), (xte, yte) = split(table["train"][0][0]), split(table["test"][0][0])
            classes = DIGIT_CLASSES
        else:

            def unpickle(file: str) -> dict:
                with (base / file).open("rb") as fh:
                    return pickle.load(fh, encoding="latin1")

            def split(listed) -> tuple[torch.Tensor, torch.Tensor]:
                entries = [unpickle(f) for f, _ in listed]
                x = np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32)
                y = [v for e in entries for v in e.get("labels", e.get("fine_labels"))]
                return torch.from_numpy(x), torch.tensor(y, dtype=torch.long)

            (xtr, ytr), (xte, yte) = split(table["train"]), split(table["test"])
            meta_file, key, _ = table["meta"]
            classes = tuple(unpickle(meta_file)[key])
        return ImageData(name, xtr, ytr, xte, yte, classes, root, flip_ok=flip_ok)

    def load(root: str | None = None, download: bool = False) -> ImageData:
        r = str(data_root(root))
        ok = intact(r)  # each file hashed once when it is there (~180 MB for each dataset)
        if download and not ok:
            try:
                fetch(r)
            except Exception as exc:  # URLError, torchvision's RuntimeError, tarfile's errors
                raise DataError(f"{name} could not be downloaded into {r} ({exc}).") from None
            ok = intact(r)
        if not ok:  # missing or damaged: one sentence on how to get them
            raise how(r)
        try:
            return read(r)
        except Exception as exc:  # unpickling or scipy.io errors, a file of other contents
            raise DataError(
                f"{name} files in {r} could not be read ({type(exc).__name__}: {exc})."
            ) from None

    return load, locate


# ----------------------------------------------------------------------------- folder / npz


# One way to read image files, shared by the folder:PATH source and ``unseen predict``, so a
# file gives the same pixels in training and in prediction.

#: the image files a ``folder:PATH`` dataset and ``unseen predict`` read from folders:
#: torchvision's ``IMG_EXTENSIONS``, which folder datasets have always used (a test keeps
#: them equal; a GIF named on ``unseen predict``'s command line is still read)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: PIL modes of one channel with more than 8 bits per pixel (16-bit PNG and TIFF, PGM, float)
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
#: PIL modes :func:`image_array` reads as greyscale (one channel, perhaps with alpha)
GREY_MODES = frozenset({"1", "L", "LA"}) | WIDE_MODES


def read_image_file(path: str | os.PathLike):
    """Decode one image file into a PIL image, upright (its EXIF orientation applied).

    Raises what PIL raises for a file it cannot decode (``UnidentifiedImageError``,
    ``OSError``, ``DecompressionBombError``, ...).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        upright = ImageOps.exif_transpose(im)
        out = im.copy() if upright is im else upright
        if im.format == "PPM" and out.mode == "I":  # a 16-bit PGM, scaled by PIL to 0..65535
            out = out.convert("I;16")
            # its header's maxval is applied already: --bit-depth must not scale it again
            out.info[FULL_RANGE] = True
        return out


#: ``PIL.Image.info`` key of an image whose values already span 0..65535 (a PGM, which PIL
#: scaled by its header's maxval): read at 16 bits whatever ``--bit-depth`` says
FULL_RANGE = "unseen_full_range"

#: how far above 1 a float image ("F") may reach and still be read as [0, 1] (clipped):
#: values computed in floating point overshoot 1 by rounding, and read as 0..255 instead
#: the image would turn black
FLOAT_SLACK = 1e-3


def image_array(image, bit_depth: int = 16) -> np.ndarray:
    """A PIL image -> uint8 ``H x W`` (grey), ``H x W x 2`` (grey + alpha), ``H x W x 3`` or
    ``H x W x 4`` (RGB, RGB + alpha).

    16-bit greyscale (PNG, TIFF) scales as ``round(v * 255 / (2^bit_depth - 1))``, values
    above ``2^bit_depth - 1`` clipped (``bit_depth`` 12 for raw 12-bit values stored in
    16-bit files; default 16). A 16-bit PGM is read at 16 bits whatever ``bit_depth``: PIL
    has applied its header's maxval. Modes "I" and "F" do not record a bit depth: they are
    read at ``bit_depth`` bits when a value exceeds 255, or when ``bit_depth`` is not 16 (mode
    "I"), and as 0..255 otherwise, except that a float image ("F") with no value above 1 is
    read as [0, 1], as float arrays are (up to 1 + :data:`FLOAT_SLACK`, clipped to 1); values
    outside 0..65535 raise ``ValueError``. Palette and other modes become RGB (RGBA when the
    image has transparency).
    """
    mode = image.mode
    if mode in {"L", "LA", "RGB", "RGBA"}:
        return np.array(image, dtype=np.uint8)
    if mode in WIDE_MODES:
        a = np.asarray(image, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (lo >= 0 and hi <= 65535):
            raise ValueError(f"it holds values {lo:g}..{hi:g}, not 8-bit or 16-bit (0..65535)")
        if image.info.get(FULL_RANGE):
            bit_depth = 16
        wide = mode.startswith("I;16") or hi > 255 or (mode == "I" and bit_depth != 16)
        top = float(2**bit_depth - 1) if wide else 255.0
        if mode == "F" and hi <= 1 + FLOAT_SLACK:  # [0, 1], past 1 by rounding at most
            top, a = 1.0, np.minimum(a, 1.0)
        return np.rint(np.minimum(a, top) * (255.0 / top)).astype(np.uint8)
    if mode == "1":
        return np.array(image.convert("L"), dtype=np.uint8)
    return np.array(
        image.convert("RGBA" if "transparency" in image.info else "RGB"), dtype=np.uint8
    )


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 N x C x H x W with C in 1..4 -> ``channels`` channels (alpha dropped).

    RGB -> L uses PIL's integer ITU-R 601-2 luma (the weights sum to one exactly, so a
    gray RGB image keeps its values, and the result equals ``Image.convert("L")``).
    """
    c = x.shape[1]
    if c == 2:  # grayscale + alpha
        x, c = x[:, :1], 1
    elif c == 4:  # RGB + alpha
        x, c = x[:, :3], 3
    if c == channels:
        return x
    if c == 3 and channels == 1:
        r, g, b = x.int().unbind(dim=1)
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        return luma.to(torch.uint8)[:, None]
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise DataError(f"cannot turn {c}-channel images into the model's {channels} channels.")


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 N x C x H x W -> N x C x ``size`` (height, width): bilinear, antialiased, the
    aspect ratio not kept.

    What torchvision's ``resize`` gives a uint8 tensor (a test compares them), without
    importing torchvision, which imports ``torch._dynamo`` (seconds, in ``unseen predict``
    too): on a CPU with AVX2 or AVX-512, or an ARM one, torch interpolates the uint8 values
    directly; elsewhere, and on a GPU, in float32, rounded back to uint8.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.numel() == 0:
        return x.new_empty((*x.shape[:-2], *size))
    native = x.device.type == "cpu" and (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        or platform.machine() in ("aarch64", "arm64")
    )
    # torchvision's steps before interpolating: the reshape recomputes the strides of size-1
    # dimensions and a channels-last batch of one is restrided to stay channels-last. They
    # change no value, but torch's float kernel does not give every layout the same values
    # (a 1 x 3 x H x W view of an RGBA array resized to width 1, for one), so the float path
    # (no AVX2, or a GPU) matches torchvision's only when its input is laid out the same.
    n, c, h, w = x.shape
    x = x.reshape(-1, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and n == 1 and x.numel() != x.stride(0):
        x = x.as_strided((1, c, h, w), (x.numel(), *x.stride()[1:]))
    y = F.interpolate(
        x if native else x.float(), size=list(size), mode="bilinear", align_corners=False,
        antialias=True,
    )  # fmt: skip
    return y if native else y.round_().to(torch.uint8)


def image_tensor(image, bit_depth: int = 16) -> torch.Tensor:
    """A PIL image -> uint8 ``1 x C x H x W``, C from :func:`image_array` (1 to 4): the one
    conversion that training on a folder and ``unseen predict`` share."""
    a = image_array(image, bit_depth)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def decode_error(exc: BaseException, path: str | os.PathLike) -> str:
    """Why an image file could not be decoded, in a few words: the exception's type and the
    first line of its message (without the file name, which PIL repeats)."""
    text = str(exc).strip()
    reason = text.splitlines()[0][:160] if text else ""
    reason = "" if str(path) in reason else reason
    return f"{type(exc).__name__}{': ' + reason if reason else ''}"


def wide_peak(image: Any) -> float | None:
    """The largest raw value of a wide greyscale PIL image (16-bit, mode "I" or "F"), which
    ``--bit-depth`` scales; None for other images and for a PGM, whose maxval PIL applied."""
    if image.mode not in WIDE_MODES or image.info.get(FULL_RANGE):
        return None
    return float(np.asarray(image).max(initial=0))


def _image_file_tensor(path: Path, bit_depth: int = 16) -> tuple[torch.Tensor, int | None]:
    """One image file of a folder dataset -> uint8 1 x C x H x W (:func:`image_tensor`), and
    for a 16-bit image its largest value before scaling (None for others)."""
    try:
        image = read_image_file(path)
    except Exception as exc:  # PIL's decoders raise more than OSError: DecompressionBombError,
        # SyntaxError, struct.error... on damaged or huge files
        raise DataError(f"image {path} could not be decoded ({decode_error(exc, path)}).") from None
    # 16-bit and whole-number wide images: their largest value, for the notes (a float image
    # in [0, 1] or 0..255 is read as such, not at any bit depth)
    top, peak = wide_peak(image), None
    if top is not None and (image.mode.startswith("I;16") or (top > 255 and top.is_integer())):
        peak = int(top)
    try:
        return image_tensor(image, bit_depth), peak
    except ValueError as exc:  # values no bit depth explains
        raise DataError(f"image {path} could not be decoded ({exc}).") from None


def _load_image_files(
    files: dict[str, list[Path]], bit_depth: int = 16
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Decode the image files of every split into uint8 N x C x H x W tensors of one channel
    count and one size, as ``unseen predict`` reads a file, and say what that changed.

    The images are RGB when any image of any split has colour, grey otherwise; those of
    another size are resized (``resize_images``) to the most common size over all splits.
    The notes count the images resized and made RGB, and warn when the 16-bit images use at
    most an eighth of their range (12-bit data, say), which 0..255 keeps only a few levels of.
    """
    from collections import Counter

    read = {
        split: [_image_file_tensor(p, bit_depth) for p in paths] for split, paths in files.items()
    }
    decoded = {split: [t for t, _ in pairs] for split, pairs in read.items()}
    everything = [t for ts in decoded.values() for t in ts]
    channels = 3 if any(t.shape[1] >= 3 for t in everything) else 1
    sizes = Counter(tuple(t.shape[-2:]) for t in everything)
    size = sizes.most_common(1)[0][0]
    notes = []
    if n_other := sum(n for s, n in sizes.items() if s != size):
        others = ", ".join(f"{h} x {w} ({n})" for (h, w), n in sizes.most_common()[1:4])
        more = ", ..." if len(sizes) > 4 else ""
        notes.append(
            f"{n_other} of {len(everything)} images were resized to {size[0]} x {size[1]}, the "
            f"most common size (from {others}{more}); unseen predict resizes new images too"
        )
    if channels == 3 and (n_grey := sum(t.shape[1] < 3 for t in everything)):
        notes.append(
            f"{len(everything) - n_grey} colour images make the dataset RGB: its {n_grey} "
            "greyscale images were copied into three channels"
        )
    peaks = [peak for pairs in read.values() for _, peak in pairs if peak is not None]
    full = 2**bit_depth - 1
    if bit_depth != 16 and not peaks:
        notes.append(
            f"--bit-depth {bit_depth} has no effect: none of the images holds raw 16-bit values"
        )
    if peaks and (top := max(peaks)) == 0:
        notes.append(f"all {len(peaks)} 16-bit images are black (every value 0)")
    elif peaks and top > full:
        over = sum(p > full for p in peaks)
        notes.append(
            f"{over} of the {len(peaks)} 16-bit images hold values above {full} (up to {top}), "
            f"which --bit-depth {bit_depth} clips to white; give a larger --bit-depth"
        )
    elif peaks and top <= full // 8:
        levels = round(top * 255 / full) + 1
        notes.append(
            f"the {len(peaks)} 16-bit images use values up to {top} of {full} ({top.bit_length()}-"
            f"bit data?): scaled from {bit_depth} bits to 0..255 they keep only {levels} grey "
            f"level{'s' if levels > 1 else ''}; --bit-depth {max(8, top.bit_length())} reads "
            "them at their own depth (unseen predict then does too)"
        )
    tensors = {
        split: torch.cat([resize_images(convert_channels(t, channels), size) for t in ts])
        for split, ts in decoded.items()
    }
    return tensors, tuple(notes)


def image_files(folder: str | os.PathLike, others: list[Path] | None = None) -> list[Path]:
    """The image files below ``folder`` (:data:`IMAGE_EXTENSIONS`, any case), in the order of
    torchvision's ``ImageFolder``: folder by folder, sorted by path, then by name.

    Links to folders are followed, each real folder once (a link back up the tree is not
    searched again); hidden entries such as ``.ipynb_checkpoints/`` or macOS's ``._x.png``
    are skipped. A broken link is listed: reading it fails with its own message. The files
    left out for their extension (not hidden ones) are added to ``others`` when given.
    """
    listed, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # the same alias wins anywhere
        visible = [f for f in files if not f.startswith(".")]
        names = [f for f in visible if f.lower().endswith(IMAGE_EXTENSIONS)]
        listed.append((root, sorted(names)))
        if others is not None:
            others += [Path(root) / f for f in sorted(set(visible) - set(names))]
    return [Path(root) / f for root, names in sorted(listed) for f in names]


def _class_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """A folder dataset's split: its class folders (sorted, hidden ones skipped) and every
    image file under them with its class index. Two folders whose names differ only in
    Unicode form (composed, or decomposed as macOS writes them: ``a`` + accent) are refused:
    they look like one class."""
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and e.name[0] != ".")
    if not classes:
        raise DataError(
            f"folder dataset {split_dir} holds no class folders (it needs {split_dir}/<class>/*)."
        )
    composed = [unicodedata.normalize("NFC", c) for c in classes]
    if len(set(composed)) < len(composed):
        twice = next(c for c in composed if composed.count(c) > 1)
        raise DataError(
            f"{split_dir} has two class folders named {twice!r}, written in two Unicode forms "
            "(composed and decomposed); merge them."
        )
    return classes, [(p, i) for i, c in enumerate(classes) for p in image_files(split_dir / c)]


def _folder_source(path: str) -> tuple[Callable, Callable]:
    root = Path(path)

    def locate(_root: str | None = None) -> str:
        for split in ("train", "test"):
            if not (root / split).is_dir():
                parent = (
                    f"; give the folder above it, folder:{root.parent}"
                    if root.name in ("train", "test") and (root.parent / split).is_dir()
                    else ""
                )
                raise DataError(
                    f"folder dataset {root} needs subfolders train/<class>/ and test/<class>/ "
                    f"({root / split} is missing){parent}."
                )
        return str(root)

    def load(_root: str | None = None, download: bool = False, bit_depth: int = 16) -> ImageData:
        locate()
        splits = {}
        for split in ("train", "test"):
            try:
                names, samples = _class_images(root / split)
            except OSError as exc:
                raise DataError(f"folder dataset {root / split}: {str(exc).rstrip('.')}.") from None
            empty = [c for i, c in enumerate(names) if not any(t == i for _, t in samples)]
            if empty:
                raise DataError(
                    f"class folder(s) {', '.join(empty)} in {root / split} hold no images "
                    f"(files ending in {', '.join(IMAGE_EXTENSIONS)}, in any case)."
                )
            splits[split] = names, samples
        # the folder names as written (runs record them); test/ may write a name in the other
        # Unicode form (copied from a Mac): the same class. A class only test/ has (a novel
        # class met in deployment) joins the list: it has no training images, so every run
        # holds it out (ImageData.untrained).
        trained = {unicodedata.normalize("NFC", c) for c in splits["train"][0]}
        extra = [c for c in splits["test"][0] if unicodedata.normalize("NFC", c) not in trained]
        folders = sorted(splits["train"][0] + extra)
        index = {unicodedata.normalize("NFC", c): i for i, c in enumerate(folders)}
        # a folder name's bytes that are not UTF-8 written as \xe9: runs, reports and JSON
        # hold the name as text
        classes = tuple(valid_unicode(c) for c in folders)
        x, notes = _load_image_files(
            {split: [p for p, _ in s] for split, (_, s) in splits.items()}, bit_depth
        )
        y = {
            split: np.array(
                [index[unicodedata.normalize("NFC", names[t])] for _, t in s], dtype=np.int64
            )
            for split, (names, s) in splits.items()
        }
        return ImageData(
            name=f"folder:{root}",
            x_train=x["train"].contiguous(),
            y_train=torch.from_numpy(y["train"]),
            x_test=x["test"].contiguous(),
            y_test=torch.from_numpy(y["test"]),
            classes=classes,
            source=str(root),
            notes=notes,
        )

    return load, locate


#: the image layouts an npz array may have, in words
NPZ_LAYOUTS = "N x H x W, N x H x W x C or N x C x H x W with C = 1, 3 or 4"


def npz_layout(shape: Sequence[int]) -> str | None:
    """Which of :data:`NPZ_LAYOUTS` an array of ``shape`` holds: ``"nhw"``, ``"nhwc"`` or
    ``"nchw"`` (when both the second and the last axis could be C, the last is); None for
    other shapes."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return "nhwc"
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return "nchw"
    return None


def looks_like_one_image(shape: Sequence[int]) -> bool:
    """``H x W x C`` with C = 3 or 4 and H, W above 4: one colour image saved without its
    N axis, which :func:`npz_layout` would read as H images C pixels wide. ``unseen predict``
    and the far-OOD ``npz:`` sets refuse it, saying to save ``x[None]``."""
    return len(shape) == 3 and shape[2] in (3, 4) and min(shape[:2]) > 4


def npz_images_nchw(a: np.ndarray) -> np.ndarray | None:
    """An npz image array as ``N x C x H x W``, from any of :data:`NPZ_LAYOUTS`
    (:func:`npz_layout`); None for other shapes. The ``npz:PATH`` source and ``unseen
    predict`` read npz files through this one rule."""
    layout = npz_layout(a.shape)
    if layout == "nhw":
        return a[:, None]
    if layout == "nhwc":
        return np.moveaxis(a, 3, 1)
    return a if layout == "nchw" else None


def _npz_source(path: str) -> tuple[Callable, Callable]:
    file = Path(path)

    def locate(_root: str | None = None) -> str:
        if file.is_dir():
            raise DataError(
                f"npz file {file} is a folder; for images in train/ and test/ use folder:{file}."
            )
        if not file.is_file():
            raise DataError(f"npz file {file} does not exist.")
        return str(file)

    def load(_root: str | None = None, download: bool = False) -> ImageData:
        locate()
        try:
            arrays = read_npz(file, "npz file")
        except UnseenError as exc:
            raise DataError(str(exc)) from None
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise DataError(
                f"npz file {file} lacks the arrays {', '.join(missing)} (it has: "
                f"{', '.join(sorted(arrays)) or 'none'})."
            )

        def images(a: np.ndarray, key: str) -> torch.Tensor:
            if a.dtype != np.uint8:
                hint = (
                    " (floats in [0, 1]: save (x * 255).round().astype(np.uint8))"
                    if a.dtype.kind == "f"
                    else ""
                )
                raise DataError(f"{key} in {file} must be uint8 images, not {a.dtype}{hint}.")
            if (nchw := npz_images_nchw(a)) is None:
                raise DataError(f"{key} in {file} must be {NPZ_LAYOUTS}, not {a.shape}.")
            a = nchw
            if len(a) == 0:
                raise DataError(f"{key} in {file} holds no images; both splits need some.")
            # alpha is dropped, as the folder source and `unseen predict` drop it
            return torch.from_numpy(np.ascontiguousarray(a[:, :3]))

        def labels(a: np.ndarray, key: str, n: int) -> torch.Tensor:
            if a.ndim == 2 and a.shape[1:] == (1,):  # a column of labels (N x 1)
                a = a[:, 0]
            if a.ndim != 1 or len(a) != n or not np.issubdtype(a.dtype, np.integer):
                raise DataError(
                    f"{key} in {file} must be {n} integer labels, not {a.dtype} {a.shape}."
                )
            if a.min() < 0:
                raise DataError(f"{key} in {file} has negative labels; labels start at 0.")
            if a.max() > np.iinfo(np.int64).max:
                raise DataError(
                    f"{key} in {file} has labels up to {a.max()}, beyond int64; labels must "
                    "number the classes from 0."
                )
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
            names = arrays["classes"]
            if names.ndim != 1:
                raise DataError(
                    f"'classes' in {file} must be a one-dimensional array of class names, "
                    f"not an array of shape {names.shape}."
                )
            classes = tuple(
                c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                for c in names.tolist()
            )
            if twice := next((c for i, c in enumerate(classes) if c in classes[:i]), None):
                raise DataError(
                    f"'classes' in {file} names {twice!r} twice; class names must differ."
                )
            if len(classes) < n_classes:
                raise DataError(
                    f"'classes' in {file} names {len(classes)} classes but labels go up to "
                    f"{n_classes - 1}; labels must lie in 0..{len(classes) - 1}."
                )
        elif n_classes > MAX_NPZ_CLASSES:
            raise DataError(
                f"labels in {file} go up to {n_classes - 1}, more than {MAX_NPZ_CLASSES:,} "
                "classes; number the classes from 0, or save a 'classes' array naming each."
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
    "cifar10": Source(
        "cifar10", "32x32 colour images, 10 classes (torchvision's files)", *_cifar10
    ),
    "cifar100": Source(
        "cifar100", "32x32 colour images, 100 classes (torchvision's files)", *_cifar100
    ),
    "svhn": Source("svhn", "32x32 house-number digits (torchvision's files)", *_svhn),
}
PATH_SOURCES = {
    "folder": ("image-folder tree PATH/train/<class>/*, PATH/test/<class>/*", _folder_source),
    "npz": ("arrays x_train, y_train, x_test, y_test (uint8), optional classes", _npz_source),
}


def get_source(name: str, flag: str = "--dataset") -> Source:
    """Look up a data source by name, including ``folder:PATH`` and ``npz:PATH`` (``~`` is
    expanded in PATH). ``flag`` is the option an error names."""
    prefix, sep, path = name.partition(":")
    if sep and prefix in PATH_SOURCES:
        if not path:
            raise ConfigError(f"{flag} {name!r} needs a path after '{prefix}:'.")
        description, factory = PATH_SOURCES[prefix]
        return Source(name, description, *factory(os.path.expanduser(path)))
    if name in SOURCES:
        return SOURCES[name]
    valid = list(SOURCES) + [f"{p}:PATH" for p in PATH_SOURCES]
    there = Path(os.path.expanduser(name))
    if there.is_dir() or (there.is_file() and there.suffix.lower() == ".npz"):
        kind = "folder" if there.is_dir() else "npz"
        raise ConfigError(f"{flag} {name!r} is a path: give it as {flag} {kind}:{name}.")
    raise ConfigError(f"{flag} {name!r} is not known; choose one of: {', '.join(valid)}.")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_dataset(name: str) -> str:
    """``folder:PATH`` and ``npz:PATH`` with PATH made absolute (``~`` expanded); other names
    as they are. Run folders record this, so ``--resume`` works from any directory."""
    prefix, sep, path = name.partition(":")
    if sep and prefix in PATH_SOURCES and path:
        return f"{prefix}:{_absolute(path)}"
    return name


def absolute_paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a run's options, or its config.json) with every path absolute and ``~``
    expanded: a ``folder:``/``npz:`` dataset's path (``dataset``, and each of ``ood``),
    ``data_root``, and a ``pretrained`` file or run folder (not 'torchvision'). Run folders
    record paths so, to resume from any directory; ones written before recorded them as
    given, and a relative one is read here against the working directory."""
    out = dict(config)
    if isinstance(out.get("dataset"), str):
        out["dataset"] = absolute_dataset(out["dataset"])
    if isinstance(out.get("ood"), (list, tuple)):
        out["ood"] = type(out["ood"])(
            absolute_dataset(d) if isinstance(d, str) else d for d in out["ood"]
        )
    for key in ("data_root", "pretrained"):
        value = out.get(key)
        if isinstance(value, str) and not (key == "pretrained" and value.lower() == "torchvision"):
            out[key] = _absolute(value)
    return out


def check_dataset_name(name: str, flag: str = "--dataset") -> None:
    get_source(name, flag)


def load_dataset(
    name: str, root: str | None = None, download: bool = False, bit_depth: int = 16
) -> ImageData:
    """Load a whole dataset by registry name. Raises :class:`DataError` when it is missing.
    ``bit_depth`` is that of a folder dataset's 16-bit greyscale files (:func:`image_array`);
    the other sources are 8-bit."""
    source = get_source(name)
    if name.partition(":")[0] == "folder":
        return source.load(root, download, bit_depth=bit_depth)
    return source.load(root, download)


@dataclass(frozen=True)
class TestImages:
    """A dataset's test images without their labels: what far-OOD scoring reads."""

    name: str
    #: uint8 N x C x H x W
    x: torch.Tensor
    #: where they were read from
    source: str
    notes: tuple[str, ...] = ()


#: the arrays an ``npz:`` far-OOD set may hold its images in, tried in this order (a
#: dataset's test split first, then the names ``unseen predict`` reads)
TEST_NPZ_KEYS = ("x_test", "x", "images")


def locate_test_images(name: str, root: str | None = None) -> str:
    """Where :func:`load_test_images` finds ``name``'s test images, or a :class:`DataError`:
    a folder with image files, an npz archive with an array of :data:`TEST_NPZ_KEYS` (its
    names read, not its arrays), a built-in dataset's files."""
    prefix, sep, path = name.partition(":")
    if sep and prefix == "folder" and path:
        folder = _test_folder(Path(os.path.expanduser(path)))
        if not image_files(folder):
            raise DataError(
                f"folder {folder} holds no image files (ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}, in any case)."
            )
        return str(folder)
    where = get_source(name).locate(root)
    if sep and prefix == "npz" and path:
        _npz_test_key(Path(where))
    return where


def _test_folder(folder: Path) -> Path:
    """A far-OOD folder's images: its ``test/`` if it has one, else the folder itself."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"folder {folder} {what}.")
    return folder / "test" if (folder / "test").is_dir() else folder


def _npz_test_key(file: Path) -> str:
    """The array of :data:`TEST_NPZ_KEYS` that an npz far-OOD set holds its images in, its
    type and shape checked from its header (the array itself is not read)."""
    import zipfile

    names: list[str] = []

    def keep(key: str) -> bool:
        names.append(key)
        return False  # the names only

    try:
        read_npz(file, "npz file", keep=keep)
    except UnseenError as exc:
        raise DataError(str(exc)) from None
    key = next((k for k in TEST_NPZ_KEYS if k in names), None)
    if key is None:
        raise DataError(
            f"npz file {file} has no array named {', '.join(TEST_NPZ_KEYS)} (it has: "
            f"{', '.join(names) or 'none'})."
        )
    try:
        with zipfile.ZipFile(file) as archive, archive.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
    except Exception:  # an unusual header: the array is checked when it is read
        return key
    _check_test_array(file, key, dtype, shape)
    return key


def _check_test_array(file: Path, key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """An npz far-OOD set's images: uint8, in one of :data:`NPZ_LAYOUTS`, at least one, none
    empty, and all of them fitting in this machine's memory."""
    if dtype != np.uint8:
        raise DataError(f"{key} in {file} must be uint8 images, not {dtype}.")
    if npz_layout(shape) is None:
        raise DataError(f"{key} in {file} must be {NPZ_LAYOUTS}, not {shape}.")
    if looks_like_one_image(shape):
        raise DataError(
            f"{key} in {file} of shape {shape} looks like one H x W x C image; it must hold N "
            f"images ({NPZ_LAYOUTS}): save it as x[None]."
        )
    if shape[0] == 0:
        raise DataError(f"{key} in {file} holds no images.")
    if 0 in shape[1:]:
        raise DataError(f"{key} in {file} holds images of no pixels (shape {shape}).")
    size = math.prod(shape)
    if (memory := physical_memory()) is not None and size > memory:
        raise DataError(
            f"{key} in {file} holds {size / 2**30:.0f} GiB of images (shape {shape}), more "
            f"than this machine's {memory / 2**30:.0f} GiB of memory (it is read whole); split "
            "it into smaller files."
        )


def physical_memory() -> int | None:
    """Bytes of memory this machine has, where the OS says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def load_test_images(
    name: str, root: str | None = None, download: bool = False, bit_depth: int = 16
) -> TestImages:
    """The test images of a data source, as a run reads them but without labels, so that a
    set of images that was never a training set can be scored as unseen:

    * ``folder:PATH``: the images under ``PATH/test/`` if there is one, else every image
      under ``PATH`` (class folders or none), read as a folder dataset's (brought to their
      most common size; 16-bit files at ``bit_depth``);
    * ``npz:PATH``: the array ``x_test``, else ``x``, else ``images`` (uint8, any of
      :data:`NPZ_LAYOUTS`); no labels or training split needed;
    * a built-in dataset: its test split.
    """
    prefix, sep, path = name.partition(":")
    if sep and prefix == "folder" and path:
        folder = Path(locate_test_images(name))
        x, notes = _load_image_files({"test": image_files(folder)}, bit_depth)
        return TestImages(name, x["test"].contiguous(), str(folder), notes)
    if sep and prefix == "npz" and path:
        file = Path(get_source(name).locate(root))
        key = _npz_test_key(file)
        try:
            a = read_npz(file, "npz file", keep=lambda k: k == key)[key]
        except UnseenError as exc:
            raise DataError(str(exc)) from None
        _check_test_array(file, key, a.dtype, a.shape)
        nchw = npz_images_nchw(a)
        # alpha is dropped, as the npz source and `unseen predict` drop it
        return TestImages(name, torch.from_numpy(np.ascontiguousarray(nchw[:, :3])), str(file))
    data = load_dataset(name, root, download, bit_depth=bit_depth)
    return TestImages(data.name, data.x_test, data.source, data.notes)


def describe_sources(root: str | None = None) -> list[tuple[str, str, str]]:
    """(name, description, where found or how to get it) for `unseen datasets`."""
    rows = []
    for src in SOURCES.values():
        try:
            where = "found: " + src.locate(root)
        except DamagedData as exc:
            where = "damaged: " + str(exc)
        except DataError as exc:
            where = "missing: " + str(exc)
        rows.append((src.name, src.description, where))
    for prefix, (description, _) in PATH_SOURCES.items():
        rows.append((f"{prefix}:PATH", description, "give the path"))
    return rows
