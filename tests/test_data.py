"""Data sources: each loader on small files the test writes in that source's format."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unseen.data import DEBIAN_FASHION_MNIST, absolute_dataset, describe_sources, load_dataset
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


@pytest.mark.parametrize("files, asked", [("fashion-mnist", "mnist"), ("mnist", "fashion-mnist")])
def test_mnist_and_fashion_mnist_files_are_told_apart(tmp_path, files, asked):
    from unseen.data import IDX_FINGERPRINTS

    make_idx_set(tmp_path, gz=True)  # flat: the same file names for both datasets
    train, test = IDX_FINGERPRINTS[files]  # the published files' first labels
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.r_[train, np.arange(20) % 10], gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.r_[test, np.arange(10) % 10], gz=True)
    with pytest.raises(DataError, match=f"holds the {files} files, not {asked}"):
        load_dataset(asked, str(tmp_path))
    assert load_dataset(files, str(tmp_path)).y_train[:10].tolist() == list(train)


def test_a_folder_of_the_other_dataset_does_not_hide_the_right_one(tmp_path):
    # ./data holds MNIST files flat; DIR/FashionMNIST/raw holds Fashion-MNIST: the search
    # goes past the MNIST folder instead of stopping there, and `unseen datasets` agrees
    from unseen.data import IDX_FINGERPRINTS

    for files, where in (("mnist", tmp_path), ("fashion-mnist", tmp_path / "FashionMNIST")):
        make_idx_set(where, gz=True)
        train, test = IDX_FINGERPRINTS[files]
        write_idx(where / "train-labels-idx1-ubyte", np.r_[train, np.arange(20) % 10], gz=True)
        write_idx(where / "t10k-labels-idx1-ubyte", np.r_[test, np.arange(10) % 10], gz=True)
    assert load_dataset("fashion-mnist", str(tmp_path)).source == str(tmp_path / "FashionMNIST")
    assert load_dataset("mnist", str(tmp_path)).source == str(tmp_path)
    shutil.rmtree(tmp_path / "FashionMNIST")
    found = {name: where for name, _, where in describe_sources(str(tmp_path))}
    assert found["mnist"].startswith("found") and found["fashion-mnist"].startswith("missing")
    assert "holds the mnist files" in found["fashion-mnist"]


def test_an_incomplete_idx_set_names_the_missing_file(tmp_path):
    make_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="incomplete in .*: t10k-labels-idx1-ubyte .* missing"):
        load_dataset("fashion-mnist", str(tmp_path))


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


@pytest.mark.parametrize("gz", [True, False])
def test_damaged_idx_files_are_found_before_they_load(tmp_path, gz):
    """A file cut short is named when the dataset is looked for (before a run trains, for
    --ood), and `unseen datasets` calls it damaged, not found; whole files of several gzip
    members (whose trailer has only the last member's size) are not mistaken for damaged."""
    from unseen.data import get_source
    from unseen.errors import DamagedData

    arrays = make_idx_set(tmp_path, gz=gz)
    source = get_source("fashion-mnist")
    assert source.locate(str(tmp_path)) == str(tmp_path)  # whole: found
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    f = tmp_path / name
    whole = f.read_bytes()
    f.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(DamagedData, match=f"{f} is truncated or not an IDX file"):
        source.locate(str(tmp_path))
    row = {n: where for n, _, where in describe_sources(str(tmp_path))}["fashion-mnist"]
    assert row.startswith("damaged: ") and name in row
    if gz:  # the same bytes in two gzip members: whole, and read as such
        payload = gzip.decompress(whole)
        f.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))
        assert source.locate(str(tmp_path)) == str(tmp_path)
        x = load_dataset("fashion-mnist", str(tmp_path)).x_test
        assert np.array_equal(x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize(
    "code, dtype, shape",
    [(0x08, ">u1", (3, 4, 5)), (0x09, ">i1", (7,)), (0x0B, ">i2", (2, 3)),
     (0x0C, ">i4", (4, 1, 2)), (0x0D, ">f4", (5, 2)), (0x0E, ">f8", (3,))],
)  # fmt: skip
def test_idx_files_read_as_torchvision_reads_them(tmp_path, code, dtype, shape):
    """unseen reads IDX itself (torchvision's import costs seconds): its own reader against
    torchvision's, for every IDX type, on values that the byte order would scramble."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    from unseen.data import _read_idx

    rng = np.random.default_rng(code)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1e6, 1e6)
    values = (rng.uniform(lo, hi, shape)).astype(dtype)
    raw = struct.pack(">HBB", 0, code, len(shape)) + b"".join(struct.pack(">I", d) for d in shape)
    path = tmp_path / "x-idx"
    path.write_bytes(raw + values.tobytes())
    theirs = read_sn3_pascalvincent_tensor(str(path), strict=False)
    ours = _read_idx(path)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    assert np.array_equal(ours.numpy(), values)  # in the machine's byte order
    gz = tmp_path / "x-idx.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert torch.equal(_read_idx(gz), theirs)


@pytest.mark.parametrize("capability", ["AVX512", "DEFAULT"])  # uint8 kernel, or via float32
@pytest.mark.parametrize(
    "shape, size",
    [((3, 1, 28, 28), (8, 8)), ((2, 3, 17, 23), (32, 32)), ((1, 3, 40, 30), (12, 45)),
     ((4, 1, 8, 8), (9, 7)), ((0, 3, 5, 5), (2, 2))],
)  # fmt: skip
def test_resize_images_gives_what_torchvision_s_resize_gives(shape, size, capability, monkeypatch):
    """unseen resizes uint8 images itself (torchvision's import costs seconds): its result
    against torchvision's resize, bit for bit, on both of torchvision's paths, which it picks
    by the CPU's vector units (patched here, for both)."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    from unseen.data import resize_images

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, :, ::3] = 255  # edges and saturated pixels, where rounding shows
    ours = resize_images(x, size)
    theirs = resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert ours.dtype == torch.uint8 and ours.shape == (*shape[:2], *size)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("capability", ["AVX512", "DEFAULT"])
@pytest.mark.parametrize(
    "layout", ["nhwc", "nhwc_alpha", "grey_expand", "hwc_one", "nchw_alpha", "channels_last"]
)
@pytest.mark.parametrize("n, size", [(1, (64, 1)), (1, (12, 45)), (3, (40, 1)), (2, (9, 7))])
def test_resize_images_matches_torchvision_on_the_layouts_unseen_passes(
    layout, n, size, capability, monkeypatch
):
    """The strided views unseen resizes (image_tensor's 1 x C x H x W of an H x W x C array,
    convert_channels' alpha dropped or grey expanded, predict's N x H x W x C arrays): torch's
    float kernel gives some layouts other values (an RGBA batch of one to width 1 differed by
    up to 41), so unseen must lay its input out as torchvision does."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    from unseen.data import convert_channels, resize_images

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    g = torch.Generator().manual_seed(0)
    h, w = 28, 23

    def rand(*shape):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)

    x = {
        "nhwc": lambda: rand(n, h, w, 3).permute(0, 3, 1, 2),
        "nhwc_alpha": lambda: convert_channels(rand(n, h, w, 4).permute(0, 3, 1, 2), 3),
        "grey_expand": lambda: convert_channels(rand(n, h, w, 1).permute(0, 3, 1, 2), 3),
        "hwc_one": lambda: convert_channels(
            rand(h, w, 4).permute(2, 0, 1)[None].expand(n, -1, -1, -1), 3
        ),
        "nchw_alpha": lambda: convert_channels(rand(n, 4, h, w), 3),
        "channels_last": lambda: rand(n, 3, h, w).contiguous(memory_format=torch.channels_last),
    }[layout]()
    ours = resize_images(x, size)
    theirs = resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "data, why",
    [(b"", "no IDX header"), (b"\x00\x00\x08", "no IDX header"),
     (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "no IDX header"),  # a magic not starting 0 0
     (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "no IDX header"),  # no such type
     (b"\x00\x00\x08\x02\x00\x00\x00\x02", "no IDX header"),  # a dimension missing
     (b"\x00\x00\x08\x41" + b"\x00\x00\x00\x01" * 65 + b"\x05", "no IDX header"),  # 65 dims
     (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "2 bytes of values for a 3 array"),
     (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "2 bytes of values for a 1 array")],
)  # fmt: skip
def test_a_damaged_idx_file_is_one_data_error(tmp_path, data, why):
    from unseen.data import _read_idx

    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"{path} is truncated or not an IDX file .*{why}"):
        _read_idx(path)
    cut = tmp_path / "cut-idx.gz"  # a .gz cut short, or not gzip at all
    cut.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10" + bytes(16))[:-9])
    with pytest.raises(DataError, match="truncated or not an IDX file"):
        _read_idx(cut)


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


def test_npz_alpha_is_dropped_and_paths_expand_home(tmp_path, monkeypatch):
    # the folder source and `unseen predict` drop alpha: an npz run must see the same channels
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 6, 5, 4), dtype=np.uint8)
    np.savez(tmp_path / "rgba.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x,
             y_test=np.array([0, 1, 0, 1]))  # fmt: skip
    monkeypatch.setenv("HOME", str(tmp_path))
    d = load_dataset("npz:~/rgba.npz")
    assert d.x_train.shape == (4, 3, 6, 5)
    assert torch.equal(d.x_train[1], torch.from_numpy(x[1, :, :, :3]).permute(2, 0, 1))
    assert absolute_dataset("npz:~/rgba.npz") == f"npz:{tmp_path / 'rgba.npz'}"
    monkeypatch.chdir(tmp_path)
    assert absolute_dataset("folder:imgs") == f"folder:{tmp_path / 'imgs'}"
    assert absolute_dataset("digits") == "digits"


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
    with pytest.raises(DataError, match="is truncated or damaged"):
        load_dataset(f"npz:{trunc}")
    np.save(tmp_path / "one.npy", np.zeros((2, 3, 3), np.uint8))  # np.save, not np.savez
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match="is a single .npy array, not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'one.npz'}")
    (tmp_path / "text.npz").write_text("hello\n")  # was reported as holding object arrays
    with pytest.raises(DataError, match="text.npz is not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
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


def test_folder_source_bad_image_and_empty_class(tmp_path, monkeypatch):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / split / "a" / "x.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="could not be decoded"):
        load_dataset(f"folder:{tmp_path}")
    # a decompression bomb (more pixels than PIL's limit) is one more file that cannot be read
    (tmp_path / "train" / "a" / "broken.png").unlink()
    Image.new("L", (16, 16)).save(tmp_path / "train" / "a" / "huge.png")
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 is more than twice the limit
        with pytest.raises(
            DataError,
            match=r"huge.png could not be decoded \(DecompressionBombError: Image size \(256 pixels\)",
        ):
            load_dataset(f"folder:{tmp_path}")
    (tmp_path / "train" / "a" / "huge.png").unlink()
    with pytest.raises(DataError, match="needs subfolders"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(
        DataError, match=re.escape(f"; give the folder above it, folder:{tmp_path}.")
    ):
        load_dataset(f"folder:{tmp_path / 'train'}")


def _dump(base: Path, name: str, obj: dict) -> tuple[str, str]:
    base.mkdir(parents=True, exist_ok=True)
    (base / name).write_bytes(pickle.dumps(obj))
    return name, hashlib.md5((base / name).read_bytes()).hexdigest()


def _write_cifar10(root: Path, monkeypatch) -> dict:
    """Tiny CIFAR-10 python-format files, with unseen's (and torchvision's) MD5 table pointed
    at them; returns unseen's table."""
    from torchvision.datasets import CIFAR10

    import unseen.data as data_module

    base = root / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    train_list = [
        _dump(base, f"data_batch_{i}",
              {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i % 10, 1, 2, 3]})
        for i in range(1, 6)
    ]  # fmt: skip
    test_list = [
        _dump(base, "test_batch",
              {"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 9]})
    ]  # fmt: skip
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    meta = _dump(base, "batches.meta", {"label_names": names})
    table = {"folder": base.name, "train": tuple(train_list), "test": tuple(test_list),
             "meta": (meta[0], "label_names", meta[1])}  # fmt: skip
    monkeypatch.setitem(data_module.TORCHVISION_FILES, "cifar10", table)
    monkeypatch.setattr(CIFAR10, "train_list", [list(t) for t in train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [list(t) for t in test_list])
    monkeypatch.setattr(
        CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta[1]}
    )
    return table


def _write_cifar100(root: Path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR100

    import unseen.data as data_module

    base = root / "cifar-100-python"
    rng = np.random.default_rng(1)

    def split(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                "coarse_labels": [0] * n}  # fmt: skip

    train, test = _dump(base, "train", split(7)), _dump(base, "test", split(3))
    meta = _dump(base, "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    monkeypatch.setitem(data_module.TORCHVISION_FILES, "cifar100",
                        {"folder": base.name, "train": (train,), "test": (test,),
                         "meta": (meta[0], "fine_label_names", meta[1])})  # fmt: skip
    monkeypatch.setattr(CIFAR100, "train_list", [list(train)])
    monkeypatch.setattr(CIFAR100, "test_list", [list(test)])
    monkeypatch.setattr(
        CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": meta[1]}
    )


def _write_svhn(root: Path, monkeypatch) -> None:
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    import unseen.data as data_module

    rng = np.random.default_rng(2)
    listed = {}
    for split, n in (("train", 6), ("test", 4)):
        file = root / f"{split}_32x32.mat"
        labels = np.array([[10], [1], [2], [10], [9], [5]][:n], dtype=np.uint8)  # 10 is digit 0
        savemat(str(file), {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": labels})
        listed[split] = (file.name, hashlib.md5(file.read_bytes()).hexdigest())
    monkeypatch.setitem(data_module.TORCHVISION_FILES, "svhn",
                        {"folder": "", "train": (listed["train"],), "test": (listed["test"],)})  # fmt: skip
    monkeypatch.setattr(SVHN, "split_list", {s: ["", f, md5] for s, (f, md5) in listed.items()})


def test_unseen_s_md5_tables_are_torchvision_s():
    from torchvision import datasets

    from unseen.data import TORCHVISION_FILES

    for name, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        t = TORCHVISION_FILES[name]
        assert t["folder"] == cls.base_folder
        assert [list(f) for f in t["train"]] == cls.train_list
        assert [list(f) for f in t["test"]] == cls.test_list
        assert t["meta"] == (cls.meta["filename"], cls.meta["key"], cls.meta["md5"])
    svhn = TORCHVISION_FILES["svhn"]
    for split in ("train", "test"):
        assert list(svhn[split][0]) == datasets.SVHN.split_list[split][1:]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_cifar_and_svhn_read_as_torchvision_reads_them(name, tmp_path, monkeypatch):
    """unseen reads these files itself (torchvision's import costs seconds): its arrays against
    what torchvision's dataset classes give for the same files, turned into N x C x H x W."""
    from torchvision import datasets

    {"cifar10": _write_cifar10, "cifar100": _write_cifar100, "svhn": _write_svhn}[name](
        tmp_path, monkeypatch
    )
    ours = load_dataset(name, str(tmp_path))
    for train, x, y in ((True, ours.x_train, ours.y_train), (False, ours.x_test, ours.y_test)):
        if name == "svhn":
            ref = datasets.SVHN(str(tmp_path), split="train" if train else "test")
            rx, ry = torch.from_numpy(ref.data), torch.as_tensor(ref.labels)
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ref = cls(str(tmp_path), train=train)
            rx = torch.from_numpy(ref.data).permute(0, 3, 1, 2)
            ry = torch.as_tensor(ref.targets)
            assert ours.classes == tuple(ref.classes)
        assert x.dtype == torch.uint8 and x.is_contiguous() and torch.equal(x, rx)
        assert y.dtype == torch.long and torch.equal(y, ry.long())
    if name == "svhn":
        assert ours.y_train.tolist() == [0, 1, 2, 0, 9, 5]  # the files' 10 is the digit 0


def test_download_goes_through_torchvision_then_unseen_reads_the_files(tmp_path, monkeypatch):
    """--download asks torchvision's class for each split (it skips files already right) and
    only then are the files read; a failed download is one sentence."""
    from torchvision import datasets

    calls = []

    class FakeCIFAR10:  # what a machine with internet gets: the files appear in root
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "cifar-10-batches-py").is_dir():
                shutil.copytree(source / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")

    source = tmp_path / "elsewhere"  # the tiny files, and unseen's MD5 table for them
    _write_cifar10(source, monkeypatch)
    monkeypatch.setattr(datasets, "CIFAR10", FakeCIFAR10)
    data = load_dataset("cifar10", str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert data.x_train.shape == (20, 3, 32, 32)
    calls.clear()
    load_dataset("cifar10", str(tmp_path), download=True)
    assert calls == []  # the files are there and right: nothing to fetch

    class Offline:
        def __init__(self, root, train, download):
            raise OSError("no route to host")

    monkeypatch.setattr(datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match=r"cifar10 could not be downloaded into .*no route to host"):
        load_dataset("cifar10", str(tmp_path / "empty"), download=True)


def test_reading_cifar10_imports_no_torchvision(tmp_path, monkeypatch):
    table = _write_cifar10(tmp_path, monkeypatch)
    code = textwrap.dedent(
        f"""
        import sys
        import unseen.data as d
        d.TORCHVISION_FILES["cifar10"] = {table!r}
        data = d.load_dataset("cifar10", {str(tmp_path)!r})
        assert data.x_train.shape == (20, 3, 32, 32)
        print("torchvision" in sys.modules or "torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "False", out.stderr


def test_cifar10_data_root_with_tilde(tmp_path, monkeypatch):
    """``--data-root=~/data`` reaches unseen unexpanded (no shell expands ``~`` after ``=``);
    torchvision's classes expanded it, and so does unseen's reader."""
    from unseen.data import describe_sources

    _write_cifar10(tmp_path / "data", monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    data = load_dataset("cifar10", "~/data")
    assert data.x_train.shape == (20, 3, 32, 32)
    row = next(r for r in describe_sources("~/data") if r[0] == "cifar10")
    assert row[2] == f"found: {tmp_path / 'data'}"


def test_idx_data_root_with_tilde(tmp_path, monkeypatch):
    """The IDX sources look under ``~`` expanded too (one helper, data_root, for every named
    source), from --data-root and from UNSEEN_DATA_ROOT."""
    from unseen.data import describe_sources

    make_idx_set(tmp_path / "data", gz=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_dataset("fashion-mnist", "~/data").x_train.shape == (30, 1, 28, 28)
    row = next(r for r in describe_sources("~/data") if r[0] == "fashion-mnist")
    assert row[2] == f"found: {tmp_path / 'data'}"
    monkeypatch.setenv("UNSEEN_DATA_ROOT", "~/data")
    assert load_dataset("fashion-mnist").x_test.shape == (20, 1, 28, 28)


def test_cifar10_files_hashed_once_per_load(tmp_path, monkeypatch):
    """Each file's MD5 is computed once per load, also with --download and the files there."""
    import unseen.data as data_module

    table = _write_cifar10(tmp_path, monkeypatch)
    hashed = []
    real = data_module._md5_matches
    monkeypatch.setattr(
        data_module, "_md5_matches", lambda path, md5: hashed.append(path.name) or real(path, md5)
    )
    n_files = len(table["train"]) + len(table["test"]) + 1
    for download in (False, True):
        hashed.clear()
        load_dataset("cifar10", str(tmp_path), download=download)
        assert len(hashed) == n_files == len(set(hashed))


def test_cifar10_file_that_cannot_be_opened_is_one_sentence(tmp_path, monkeypatch):
    """A file that cannot be read (no permission) is a DataError, so `unseen datasets` still
    lists every source (torchvision's check turned it into one too)."""
    import unseen.data as data_module

    _write_cifar10(tmp_path, monkeypatch)

    def refused(path, md5):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data_module, "_md5_matches", refused)
    with pytest.raises(DataError, match=r"cifar10 file .*data_batch_1 could not be read \(Perm"):
        load_dataset("cifar10", str(tmp_path))
    rows = {r[0]: r[2] for r in describe_sources(str(tmp_path))}
    assert rows["cifar10"].startswith("missing: cifar10 file") and "digits" in rows


def test_cifar10_through_torchvision(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (5, 3, 32, 32)
    assert data.classes[9] == "truck" and data.y_test.tolist() == [0, 1, 2, 3, 9]


def test_cifar10_missing_suggests_download(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar10_files_that_fail_the_integrity_check_are_not_called_missing(tmp_path, monkeypatch):
    _write_cifar10(tmp_path, monkeypatch)
    monkeypatch.undo()  # torchvision's real MD5 table: the tiny files do not match it
    with pytest.raises(DataError, match="are there but fail torchvision's integrity"):
        load_dataset("cifar10", str(tmp_path))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="cifar10 not found in"):
        load_dataset("cifar10", str(tmp_path))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="digits, fashion-mnist"):
        load_dataset("imagenet")


def test_describe_sources_lists_every_source():
    rows = describe_sources()
    names = [r[0] for r in rows]
    assert names[:6] == ["digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"]
    assert rows[0][2].startswith("found")


# ----------------------------------------------------------------------------- folder and npz edge cases


def _save_split_images(root: Path, split: str, images: dict[str, list]) -> None:
    """Save PIL images under ``root/split/<class>/<i>.png`` (or the image's own format)."""
    for cls, ims in images.items():
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i, (im, ext) in enumerate(ims):
            im.save(d / f"{i}.{ext}")


def test_folder_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    # 16-bit values v become round(v * 255 / 65535): 257 -> 1, 32768 -> 128, 65535 -> 255.
    v16 = np.array([[0, 257, 1000], [32768, 60000, 65535]], dtype=np.uint16)
    want16 = np.array([[0, 1, 4], [128, 233, 255]], dtype=np.uint8)
    png = Image.fromarray(v16)  # mode I;16
    tif_be = Image.fromarray(v16.astype(">u2"))  # saved as big-endian TIFF, opens as I;16B
    pgm = Image.fromarray(v16)  # a 16-bit PGM opens as mode I
    low = Image.fromarray(np.array([[0, 7, 255], [1, 2, 3]], np.int32), "I")  # mode I <= 255
    _save_split_images(tmp_path, "train", {"a": [(png, "png")], "b": [(tif_be, "tif")]})
    _save_split_images(tmp_path, "test", {"a": [(pgm, "pgm")], "b": [(low, "tif")]})
    assert sorted(Image.open(p).mode for p in tmp_path.rglob("*.*")) == [
        "I", "I", "I;16", "I;16B"
    ]  # fmt: skip
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_train.shape == (2, 1, 2, 3) and data.x_train.dtype == torch.uint8
    for x in (data.x_train[0, 0], data.x_train[1, 0], data.x_test[0, 0]):
        assert x.numpy().tolist() == want16.tolist()
    assert data.x_test[1, 0].numpy().tolist() == [[0, 7, 255], [1, 2, 3]]  # already 8-bit


def test_folder_loading_says_what_it_changed(tmp_path):
    rng = np.random.default_rng(0)
    twelve = [Image.fromarray(rng.integers(0, 4096, (8, 8)).astype(np.uint16)) for _ in range(3)]
    _save_split_images(tmp_path, "train", {"a": [(im, "png") for im in twelve[:2]],
                                           "b": [(twelve[2], "png")]})  # fmt: skip
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    small = Image.fromarray(rng.integers(0, 256, (4, 6), dtype=np.uint8))
    _save_split_images(tmp_path, "test", {"a": [(rgb, "png")], "b": [(small, "png")]})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_train.shape == (3, 3, 8, 8)
    resized, rgbed, depth = data.notes
    assert resized.startswith(
        "1 of 5 images were resized to 8 x 8, the most common size (from 4 x 6 (1))"
    )
    assert rgbed.startswith("1 colour images make the dataset RGB: its 4 greyscale images")
    top = max(int(np.asarray(im).max()) for im in twelve)
    assert depth.startswith(f"the 3 16-bit images use values up to {top} of 65535 (12-bit data?)")
    assert f"they keep only {round(top * 255 / 65535) + 1} grey levels" in depth
    # full-range 16-bit images of one size and mode: nothing to say
    for f in tmp_path.rglob("*.png"):
        f.unlink()
    full = Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16))
    _save_split_images(tmp_path, "train", {"a": [(full, "png")], "b": [(full, "png")]})
    _save_split_images(tmp_path, "test", {"a": [(full, "png")], "b": [(full, "png")]})
    assert load_dataset(f"folder:{tmp_path}").notes == ()
    # all black: said as such, not as "0-bit data"
    for f in tmp_path.rglob("*.png"):
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(f)
    assert load_dataset(f"folder:{tmp_path}").notes == (
        "all 4 16-bit images are black (every value 0)",
    )


def test_bit_depth_reads_12_bit_data_at_its_own_depth(tmp_path):
    twelve = np.array([[0, 1, 2048], [4095, 100, 3000]], dtype=np.uint16)
    over = np.array([[0, 5000, 65535], [4095, 1, 2]], dtype=np.uint16)  # beyond 12 bits
    _save_split_images(tmp_path, "train", {"a": [(Image.fromarray(twelve), "png")],
                                           "b": [(Image.fromarray(twelve), "png")]})  # fmt: skip
    _save_split_images(tmp_path, "test", {"a": [(Image.fromarray(over), "png")],
                                          "b": [(Image.fromarray(twelve), "png")]})  # fmt: skip
    data = load_dataset(f"folder:{tmp_path}", bit_depth=12)
    want = np.rint(twelve.astype(float) * 255 / 4095).astype(np.uint8)
    assert data.x_train[0, 0].numpy().tolist() == want.tolist()  # 4095 -> 255, 2048 -> 128
    assert data.x_test[0, 0].numpy().tolist() == [[0, 255, 255], [255, 0, 0]]  # clipped
    (note,) = data.notes
    assert note.startswith("1 of the 4 16-bit images hold values above 4095 (up to 65535)")
    # read as 16-bit, the same files would keep few levels: the note names the option
    for f in (tmp_path / "test").rglob("*.png"):
        Image.fromarray(twelve).save(f)
    (note,) = load_dataset(f"folder:{tmp_path}").notes
    assert "(12-bit data?)" in note and "--bit-depth 12 reads them at their own depth" in note


def test_bit_depth_leaves_pgm_maxval_alone_and_reads_mode_i_at_its_depth(tmp_path):
    from unseen.data import image_array, read_image_file

    # a 12-bit PGM (maxval 4095): PIL stretches it to 0..65535 already
    values = np.array([[0, 1000], [2048, 4095]], dtype=np.uint16)
    pgm = tmp_path / "m4095.pgm"
    pgm.write_bytes(b"P5 2 2 4095\n" + values.astype(">u2").tobytes())
    want = np.rint(values * (255 / 4095)).astype(np.uint8)
    for depth in (16, 12):
        assert image_array(read_image_file(pgm), depth).tolist() == want.tolist()
    # mode I (a 32-bit TIFF) of 12-bit values: read at 12 bits when asked, even when dark
    dark = Image.fromarray(np.array([[0, 200]], np.int32), "I")
    assert image_array(dark, 12).tolist() == [[0, round(200 * 255 / 4095)]]
    assert image_array(dark, 16).tolist() == [[0, 200]]  # default: an 8-bit scale
    # a folder without raw 16-bit files: --bit-depth says it changes nothing
    eight = Image.fromarray(np.zeros((4, 4), np.uint8))
    _save_split_images(tmp_path / "f", "train", {"a": [(eight, "png")], "b": [(eight, "png")]})
    _save_split_images(tmp_path / "f", "test", {"a": [(eight, "png")], "b": [(eight, "png")]})
    assert load_dataset(f"folder:{tmp_path / 'f'}", bit_depth=12).notes == (
        "--bit-depth 12 has no effect: none of the images holds raw 16-bit values",
    )


def test_dark_16bit_pgm_and_float_tiffs_in_0_1_keep_their_scale(tmp_path):
    from unseen.data import image_array, read_image_file

    # a 16-bit PGM (maxval 65535) whose values stay below 256 is dark, not 8-bit: PIL opens
    # it as mode I, like a 16-bit PNG or TIFF it must scale by 255 / 65535
    dark = np.array([[0, 255], [128, 200]], dtype=np.uint16)
    pgm = tmp_path / "dark.pgm"
    pgm.write_bytes(b"P5 2 2 65535\n" + dark.astype(">u2").tobytes())
    png = tmp_path / "dark.png"
    Image.fromarray(dark).save(png)
    assert Image.open(pgm).mode == "I"
    want = np.rint(dark * 255 / 65535).astype(np.uint8)  # [[0, 1], [0, 1]]
    for f in (pgm, png):
        assert image_array(read_image_file(f)).tolist() == want.tolist(), f
    # a float image with values in [0, 1] reads as float arrays do (x 255), not as 0..255
    unit = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    tif = tmp_path / "unit.tif"
    Image.fromarray(unit, "F").save(tif)
    assert image_array(read_image_file(tif)).tolist() == [[0, 128], [255, 64]]
    # past 1 by rounding only: still [0, 1] (clipped), not a black 0..255 image
    Image.fromarray(unit + np.float32([[0, 0], [0.0001, 0]]), "F").save(tif)
    assert image_array(read_image_file(tif)).tolist() == [[0, 128], [255, 64]]
    wide = np.array([[0.0, 2.0], [255.0, 7.0]], np.float32)  # above 1: 0..255 as before
    Image.fromarray(wide, "F").save(tif)
    assert image_array(read_image_file(tif)).tolist() == [[0, 2], [255, 7]]


def test_folder_files_read_as_unseen_predict_reads_them(tmp_path):
    """A file gives the same pixels in training and in prediction: EXIF orientation, 16-bit
    scaling, palette and alpha, channel conversion and resizing are one code path."""
    from unseen.predict import convert_channels, resize_images, to_nchw_uint8

    rng = np.random.default_rng(1)
    rotated = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to display upright
    wide = Image.fromarray(rng.integers(0, 65536, (6, 6), dtype=np.uint16))
    palette = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).quantize(8)
    rgba = Image.fromarray(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA")
    grey_alpha = Image.fromarray(rng.integers(0, 256, (6, 6, 2), dtype=np.uint8), "LA")
    other_size = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    _save_split_images(tmp_path, "train", {"a": [(rgba, "png")], "b": [(palette, "png")]})
    _save_split_images(tmp_path, "test", {"a": [(wide, "png"), (other_size, "png")],
                                          "b": [(palette, "png")], "c": [(grey_alpha, "png")]})  # fmt: skip
    (tmp_path / "train" / "c").mkdir()
    rgba.save(tmp_path / "train" / "c" / "0.png")
    rotated.save(tmp_path / "test" / "b" / "1.png", exif=exif.tobytes())
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_test.shape == (5, 3, 6, 6)
    files = sorted((tmp_path / "test").rglob("*.png"))  # ImageFolder's order
    for x, path in zip(data.x_test, files, strict=True):
        predicted = resize_images(convert_channels(to_nchw_uint8(path), 3), (6, 6))[0]
        assert torch.equal(x, predicted), path
    upright = np.asarray(rotated.transpose(Image.Transpose.ROTATE_270))  # 270 anticlockwise
    assert data.x_test[3].permute(1, 2, 0).numpy().tolist() == upright.tolist()
    grey = np.asarray(grey_alpha)[:, :, 0]  # alpha dropped, grey repeated into RGB
    assert data.x_test[4].numpy().tolist() == [grey.tolist()] * 3


def test_folder_listing_is_torchvision_s_image_folder_order(tmp_path):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from unseen.data import IMAGE_EXTENSIONS, _class_images

    assert set(IMAGE_EXTENSIONS) == set(IMG_EXTENSIONS)  # datasets keep their files
    names = ["10.png", "9.png", "B.PNG", "a b.jpg", "a.b.png", "é.png", "z.png", "x.gif", "n.txt"]
    for cls in ("Cat", "dog", "ünï"):
        for sub in ("", "a", "a b", "a/z", "Z", "a.b"):
            folder = tmp_path / cls / sub
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                (folder / name).touch()
    classes, samples = _class_images(tmp_path)
    reference = ImageFolder(str(tmp_path), loader=lambda p: p, allow_empty=True)
    assert classes == reference.classes
    assert [(str(p), t) for p, t in samples] == reference.samples
    assert len(samples) == 3 * 6 * 7  # not the GIF, not the text file


def test_folder_listing_keeps_the_same_alias_of_a_linked_folder(tmp_path):
    from unseen.data import image_files

    # two links to one folder: the first alias in sorted order is searched, on any file
    # system (the order os.walk meets them depends on the directory's own order)
    for order in (("2023", "latest", "b"), ("latest", "b", "2023")):
        root = tmp_path / "-".join(order)
        root.mkdir()
        for name in order:
            if name == "latest":
                (root / name).symlink_to(root / "2023")
            else:
                (root / name).mkdir()
                (root / name / f"{name}.png").touch()
        assert [p.relative_to(root).as_posix() for p in image_files(root)] == [
            "2023/2023.png", "b/b.png"
        ]  # fmt: skip


def test_folder_32bit_values_beyond_16_bits_are_refused(tmp_path):
    big = Image.fromarray(np.array([[0, 70000]], np.int32), "I")
    _save_split_images(tmp_path, "train", {"a": [(big, "tif")]})
    _save_split_images(tmp_path, "test", {"a": [(big, "tif")]})
    with pytest.raises(DataError, match=r"0\.\.65535") as exc:
        load_dataset(f"folder:{tmp_path}")
    assert "0.tif" in str(exc.value) and "\n" not in str(exc.value)


def test_folder_size_is_most_common_over_train_and_test_together(tmp_path):
    rng = np.random.default_rng(0)

    def grey(h: int, w: int) -> tuple:
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)), "png"

    # train: three 5x6 images; test: two 7x8 images and one 5x6: 5x6 wins over all six.
    _save_split_images(tmp_path, "train", {"a": [grey(5, 6), grey(5, 6)], "b": [grey(5, 6)]})
    keep = grey(5, 6)
    _save_split_images(tmp_path, "test", {"a": [grey(7, 8), grey(7, 8)], "b": [keep]})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_train.shape == (3, 1, 5, 6) and data.x_test.shape == (3, 1, 5, 6)
    assert data.x_test[2, 0].numpy().tolist() == np.asarray(keep[0]).tolist()


def test_folder_one_colour_image_makes_both_splits_colour(tmp_path):
    rng = np.random.default_rng(0)
    grey_a = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    colour = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    _save_split_images(tmp_path, "train", {"a": [(Image.fromarray(grey_a), "png")]})
    _save_split_images(
        tmp_path,
        "test",
        {"a": [(Image.fromarray(grey_a), "png")], "b": [(Image.fromarray(colour), "png")]},
    )
    (tmp_path / "train" / "b").mkdir()
    Image.fromarray(grey_a).save(tmp_path / "train" / "b" / "0.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_train.shape == (2, 3, 4, 5) and data.x_test.shape == (2, 3, 4, 5)
    for c in range(3):  # grey images are repeated over the three channels
        assert data.x_train[0, c].numpy().tolist() == grey_a.tolist()
    assert data.x_test[1].permute(1, 2, 0).numpy().tolist() == colour.tolist()


def test_folder_skips_hidden_folders_and_files(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(
                tmp_path / split / cls / "0.png"
            )
        hidden = tmp_path / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.new("L", (4, 4)).save(hidden / "0-checkpoint.png")
        (tmp_path / split / "ant" / "._0.png").write_bytes(b"AppleDouble, not a png")
        (tmp_path / split / "bee" / ".ipynb_checkpoints").mkdir()
        Image.new("L", (9, 9)).save(tmp_path / split / "bee" / ".ipynb_checkpoints" / "x.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ("ant", "bee")
    assert data.x_train.shape == (2, 1, 4, 4) and data.y_test.tolist() == [0, 1]
    (tmp_path / "train" / "cat").mkdir()  # a class folder holding only hidden files is empty
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"AppleDouble, not a png")
    with pytest.raises(DataError, match="cat in .* hold no images"):
        load_dataset(f"folder:{tmp_path}")
    for split in ("train", "test"):  # only hidden folders: no classes at all
        for cls in ("ant", "bee", "cat"):
            shutil.rmtree(tmp_path / split / cls, ignore_errors=True)
    with pytest.raises(DataError, match="holds no class folders"):
        load_dataset(f"folder:{tmp_path}")
    shutil.rmtree(tmp_path / "train" / ".ipynb_checkpoints")  # no folder at all: same sentence
    with pytest.raises(DataError, match="train holds no class folders") as err:
        load_dataset(f"folder:{tmp_path}")
    assert "Couldn't find" not in str(err.value)  # torchvision's wording, with a double '.'


def _npz(path: Path, **changes) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 5, 7), dtype=np.uint8),
        "y_train": np.arange(6) % 3,
        "x_test": rng.integers(0, 256, (4, 5, 7), dtype=np.uint8),
        "y_test": np.arange(4) % 3,
    }
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"x_train": np.zeros((0, 5, 7), np.uint8), "y_train": np.zeros(0, int)}, "no images"),
        ({"x_test": np.zeros((0, 5, 7), np.uint8), "y_test": np.zeros(0, int)}, "no images"),
        ({"y_train": np.array([0, 1, 2, -1, 0, 1])}, "negative"),
        ({"y_test": np.array([10**12, 0, 1, 2])}, "100,000"),
        ({"y_test": np.array([2**63 + 5, 0, 1, 2], np.uint64)}, "int64"),
        ({"y_test": np.array([0, 1, 2, 3]), "classes": np.array(["a", "b", "c"])}, "3 classes"),
        ({"classes": np.array("abc")}, "one-dimensional"),
        ({"classes": np.array(["a", "b", "a"])}, "names 'a' twice"),
        ({"classes": np.array([["a", "b", "c"]])}, "one-dimensional"),
        ({"x_train": np.zeros((6, 2, 5, 7), np.uint8)}, r"N x C x H x W"),
    ],
)
def test_npz_bad_splits_labels_and_classes_are_one_sentence(tmp_path, changes, match):
    path = _npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(DataError, match=match) as exc:
        load_dataset(f"npz:{path}")
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg and msg.count(". ") == 0


def test_npz_channels_first_images(tmp_path):
    rng = np.random.default_rng(1)
    xc = rng.integers(0, 256, (6, 3, 5, 7), dtype=np.uint8)  # N x C x H x W, PyTorch's layout
    d = load_dataset(f"npz:{_npz(tmp_path / 'c.npz', x_train=xc, x_test=xc[:4])}")
    assert d.x_train.shape == (6, 3, 5, 7) and torch.equal(d.x_train, torch.from_numpy(xc))
    x1 = rng.integers(0, 256, (6, 1, 5, 7), dtype=np.uint8)
    d = load_dataset(f"npz:{_npz(tmp_path / 'g.npz', x_train=x1, x_test=x1[:4])}")
    assert d.x_test.shape == (4, 1, 5, 7) and torch.equal(d.x_test, torch.from_numpy(x1[:4]))
    xl = rng.integers(0, 256, (6, 5, 7, 4), dtype=np.uint8)  # N x H x W x C still works
    d = load_dataset(f"npz:{_npz(tmp_path / 'l.npz', x_train=xl, x_test=xl[:4])}")
    assert d.x_train.shape == (6, 3, 5, 7) and torch.equal(  # alpha dropped
        d.x_train[2, 2], torch.from_numpy(xl[2, :, :, 2])
    )


def test_npz_classes_and_labels_within_range_load(tmp_path):
    path = _npz(tmp_path / "ok.npz", y_test=np.array([0, 1, 2, 3]), classes=np.array(list("abcd")))
    d = load_dataset(f"npz:{path}")
    assert d.classes == ("a", "b", "c", "d") and d.y_test.tolist() == [0, 1, 2, 3]
    d = load_dataset(f"npz:{_npz(tmp_path / 'b.npz', classes=np.array([b'ant', b'bee', b'cat']))}")
    assert d.classes == ("ant", "bee", "cat")  # bytes names decoded, not "b'ant'"
    d = load_dataset(f"npz:{_npz(tmp_path / 'u.npz', y_test=np.array([0, 1, 2, 9], np.uint64))}")
    assert d.classes == tuple(str(i) for i in range(10)) and d.y_test.dtype == torch.int64


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_labels_outside_the_classes_are_refused(tmp_path, split):
    make_idx_set(tmp_path, gz=False)
    labels = np.arange(30 if split == "train" else 20) % 26  # EMNIST letters: 0..25
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(DataError, match="0..9") as exc:
        load_dataset("mnist", str(tmp_path))
    assert f"{split}-labels-idx1-ubyte" in str(exc.value) and "\n" not in str(exc.value)


def test_folder_class_names_written_decomposed_are_the_same_class(tmp_path):
    import unicodedata

    composed = "Sac à main"
    decomposed = unicodedata.normalize("NFD", composed)
    grey = Image.fromarray(np.zeros((4, 4), np.uint8))
    for n, (first, second) in enumerate(((composed, decomposed), (decomposed, composed))):
        root = tmp_path / str(n)
        for split, name in (("train", first), ("test", second)):
            for cls in (name, "Coat"):
                (root / split / cls).mkdir(parents=True)
                grey.save(root / split / cls / "0.png")
        data = load_dataset(f"folder:{root}")  # test/ used to have a class train/ lacks
        # the name as train/ writes it (runs recorded it so), the test image its class
        assert data.classes == ("Coat", first) and data.y_test.tolist() == [0, 1]
    # both forms side by side in one split would be two classes that look like one
    (tmp_path / "0" / "train" / decomposed).mkdir()
    grey.save(tmp_path / "0" / "train" / decomposed / "0.png")
    with pytest.raises(DataError, match="two class folders named 'Sac à main', written in two"):
        load_dataset(f"folder:{tmp_path / '0'}")


def test_folder_class_only_in_test_joins_the_classes_without_training_images(tmp_path):
    # a novel class met in deployment: test/ has it, train/ cannot
    grey = Image.fromarray(np.zeros((4, 4), np.uint8))
    for split, names in (("train", ("bee", "dog")), ("test", ("ant", "bee", "dog"))):
        for cls in names:
            (tmp_path / split / cls).mkdir(parents=True)
            grey.save(tmp_path / split / cls / "0.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ("ant", "bee", "dog")  # sorted over both splits, as ImageFolder
    assert data.y_train.tolist() == [1, 2] and data.y_test.tolist() == [0, 1, 2]
    assert data.untrained == (0,)


def test_npz_classes_only_the_test_split_has_are_untrained(tmp_path):
    # label 3 only in the test split; label 4 named by 'classes' but in neither split, so
    # not a novel class of the test set (a run refuses it as a known class without images)
    data = load_dataset(
        f"npz:{_npz(tmp_path / 'd.npz', y_test=np.array([0, 1, 2, 3]), classes=np.array(list('abcde')))}"
    )
    assert data.untrained == (3,)


def test_class_folders_named_in_another_encoding_keep_their_bytes_as_escapes(tmp_path):
    from unseen.plots import literal

    for split in ("train", "test"):
        for name in (os.fsdecode(b"caf\xe9"), "tea"):  # a Latin-1 folder name, not UTF-8
            try:
                (tmp_path / split / name).mkdir(parents=True)
            except OSError:  # a file system that takes only UTF-8 names (macOS)
                pytest.skip("this file system refuses names that are not UTF-8")
            Image.new("L", (4, 4)).save(tmp_path / split / name / "x.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.classes == ("caf\\xe9", "tea")
    "".join(data.classes).encode("utf-8")  # text that files, JSON and plots can hold
    assert literal(os.fsdecode(b"caf\xe9 $x$")) == "caf\\xe9 \\$x\\$"  # runs made before


def test_a_dataset_given_as_a_bare_path_is_told_its_prefix(tmp_path, monkeypatch):
    (tmp_path / "tree").mkdir()
    np.savez(tmp_path / "d.npz", x=np.zeros(1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="'tree' is a path: give it as --dataset folder:tree."):
        load_dataset("tree")
    with pytest.raises(ConfigError, match="'d.npz' is a path: give it as --dataset npz:d.npz."):
        load_dataset("d.npz")
    with pytest.raises(ConfigError, match="'nowhere' is not known; choose one of"):
        load_dataset("nowhere")
    with pytest.raises(DataError, match="npz file tree is a folder; for images in train/ and"):
        load_dataset("npz:tree")
