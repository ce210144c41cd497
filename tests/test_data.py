"""Data sources: each loader on small files the test writes in that source's format."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseen.data import DEBIAN_FASHION_MNIST, describe_sources, load_dataset
from unseen.errors import ConfigError, DataError


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """Write an IDX file (the MNIST format): magic, dims, big-endian, then the raw uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_set(folder: Path, gz: bool, n_train=30, n_test=20, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, a in arrays.items():
        write_idx(folder / name, a, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "."])
def test_fashion_mnist_idx_in_torchvision_layout_or_flat(tmp_path, gz, layout):
    arrays = make_idx_set(tmp_path / layout, gz)
    data = load_dataset("fashion-mnist", str(tmp_path))
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert torch.equal(
        data.x_test[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8))
    )
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.classes[9] == "Ankle boot" and data.flip_ok


def test_mnist_idx(tmp_path):
    make_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    data = load_dataset("mnist", str(tmp_path))
    assert data.classes == tuple(str(i) for i in range(10)) and not data.flip_ok


def test_missing_idx_names_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", str(tmp_path))
    msg = str(exc.value)
    assert str(tmp_path) in msg and "--data-root" in msg and "\n" not in msg


def test_truncated_idx_is_one_clear_error(tmp_path):
    make_idx_set(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated or not an IDX file"):
        load_dataset("fashion-mnist", str(tmp_path))


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_from_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(data.y_test.numpy()).tolist() == [1000] * 10


def test_npz_source_grey_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "g.npz"
    np.savez(grey, x_train=rng.integers(0, 256, (12, 6, 5), dtype=np.uint8), y_train=np.arange(12) % 3,
             x_test=rng.integers(0, 256, (6, 6, 5), dtype=np.uint8), y_test=np.arange(6) % 3,
             classes=np.array(["cat", "dog", "eel"]))  # fmt: skip
    d = load_dataset(f"npz:{grey}")
    assert d.x_train.shape == (12, 1, 6, 5) and d.classes == ("cat", "dog", "eel")
    colour = tmp_path / "c.npz"
    xc = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    np.savez(
        colour, x_train=xc, y_train=np.array([0, 1, 0, 1]), x_test=xc, y_test=np.array([0, 1, 0, 1])
    )
    d = load_dataset(f"npz:{colour}")
    assert d.x_train.shape == (4, 3, 6, 5) and d.classes == ("0", "1")
    assert torch.equal(d.x_train[2, 1], torch.from_numpy(xc[2, :, :, 1]))


def test_npz_errors(tmp_path):
    bad = tmp_path / "b.npz"
    np.savez(
        bad,
        x_train=np.zeros((2, 3, 3), np.float32),
        y_train=np.zeros(2, int),
        x_test=np.zeros((2, 3, 3), np.uint8),
        y_test=np.zeros(2, int),
    )
    with pytest.raises(DataError, match="must be uint8"):
        load_dataset(f"npz:{bad}")
    np.savez(bad, x_train=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match="lacks the arrays"):
        load_dataset(f"npz:{bad}")
    trunc = tmp_path / "t.npz"
    trunc.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="truncated or not an npz"):
        load_dataset(f"npz:{trunc}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("ant", "bee"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ("ant", "bee")
    assert data.x_train.shape == (6, 3, 7, 9) and data.x_test.shape == (4, 3, 7, 9)
    assert sorted(data.y_train.tolist()) == [0, 0, 0, 1, 1, 1]


def test_folder_source_bad_image_and_empty_class(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / split / "a" / "x.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="could not be decoded"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="needs subfolders"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def _write_cifar10(root: Path, monkeypatch) -> None:
    """Tiny CIFAR-10 python-format files, with torchvision's md5 table pointed at them."""
    from torchvision.datasets import CIFAR10

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, obj: dict) -> list[str]:
        (base / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((base / name).read_bytes()).hexdigest()]

    train_list = [
        dump(
            f"data_batch_{i}",
            {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i % 10, 1, 2, 3]},
        )
        for i in range(1, 6)
    ]
    test_list = [
        dump(
            "test_batch",
            {"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 9]},
        )
    ]
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    meta = dump("batches.meta", {"label_names": names})
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(
        CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta[1]}
    )


def test_cifar10_through_torchvision(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (5, 3, 32, 32)
    assert data.classes[9] == "truck" and data.y_test.tolist() == [0, 1, 2, 3, 9]


def test_cifar10_missing_suggests_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", str(tmp_path))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="digits, fashion-mnist"):
        load_dataset("imagenet")


def test_describe_sources_lists_every_source():
    rows = describe_sources()
    names = [r[0] for r in rows]
    assert names[:6] == ["digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"]
    assert rows[0][2].startswith("found")
