"""Tests for mvq.data: idx / CIFAR pickle / image folder readers and the shapes set."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from mvq.data import (
    DATASETS,
    build_dataset,
    default_fashion_mnist_root,
    fashion_mnist_available,
)
from mvq.errors import MvqError

# ---------------------------------------------------------------- Fashion-MNIST (idx files)


def _write_idx(path, magic, array, compress):
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = str(path) + ".gz"
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)


def _fake_fmnist(root, compress, n_train=6, n_test=4, image_magic=2051):
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", image_magic, images, compress)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", 2049, labels, compress)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    truth = _fake_fmnist(tmp_path, compress)
    assert fashion_mnist_available(str(tmp_path))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = build_dataset("fashion-mnist", root=str(tmp_path), split=split)
        images, labels = truth[prefix]
        assert len(ds) == len(images)
        assert (ds.image_size, ds.channels, ds.num_classes, ds.skipped) == (28, 1, 10, 0)
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            assert torch.equal((x[0] * 255).round().to(torch.uint8), torch.from_numpy(images[i]))
            assert type(y) is int and y == int(labels[i])
    assert "fashion-mnist" in repr(ds) and "N=4" in ds.describe()


def test_idx_size_channels_limit(tmp_path):
    _fake_fmnist(tmp_path, compress=True)
    ds = build_dataset("fashion-mnist", root=str(tmp_path), size=16, channels=3, limit=2)
    assert len(ds) == 2 and ds.image_size == 16 and ds.channels == 3
    x, _ = ds[1]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # gray repeated
    with pytest.raises(IndexError):
        ds[2]


def test_idx_bad_magic(tmp_path):
    _fake_fmnist(tmp_path, compress=False, image_magic=2049)
    with pytest.raises(MvqError, match="magic number 2049, expected 2051"):
        build_dataset("fashion-mnist", root=str(tmp_path))


def test_idx_truncated_and_count_mismatch(tmp_path):
    _fake_fmnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(MvqError, match="truncated"):
        build_dataset("fashion-mnist", root=str(tmp_path))
    labels = np.zeros(3, dtype=np.uint8)  # test split: 4 images, 3 labels
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, labels, compress=False)
    with pytest.raises(MvqError, match="4 images but .* 3 labels"):
        build_dataset("fashion-mnist", root=str(tmp_path), split="test")


def test_fashion_mnist_missing_folder_hint(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(MvqError) as err:
        build_dataset("fashion-mnist", root=str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "MVQ_FASHION_MNIST" in msg and "--data-root" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(MvqError, match="train-images-idx3-ubyte.*apt-get install"):
        build_dataset("fashion-mnist", root=str(tmp_path / "empty"))
    assert not fashion_mnist_available(str(tmp_path / "empty"))
    monkeypatch.setenv("MVQ_FASHION_MNIST", str(missing))
    assert default_fashion_mnist_root() == str(missing)
    assert not fashion_mnist_available()


def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("MVQ_FASHION_MNIST", raising=False)
    if default_fashion_mnist_root() is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    ds = build_dataset("fashion-mnist", split="test")
    assert len(ds) == 10000 and ds.num_classes == 10
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 1000))
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and 0 <= y < 10 and float(x.max()) > 0.5


# ---------------------------------------------------------------- CIFAR-10 (python pickles)


def _fake_cifar(folder, n=4, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.zeros((n, 3072), dtype=np.uint8)
        data[0, 0 * 1024 + 5 * 32 + 7] = 200  # red at (y=5, x=7)
        data[0, 1 * 1024 + 2 * 32 + 30] = 100  # green at (y=2, x=30)
        data[1, 2 * 1024 + 31 * 32 + 0] = 255  # blue at (y=31, x=0)
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": [k, 1, 2, 3][:n]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_channel_order(tmp_path, protocol):
    _fake_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = build_dataset("cifar10", root=str(tmp_path))
    assert len(ds) == 20 and (ds.image_size, ds.channels, ds.num_classes) == (32, 3, 10)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert x[0, 5, 7] == pytest.approx(200 / 255) and x[1, 5, 7] == 0 and x[2, 5, 7] == 0
    assert x[1, 2, 30] == pytest.approx(100 / 255) and x[0, 2, 30] == 0
    assert float(x.sum()) == pytest.approx(300 / 255, abs=1e-5)
    assert ds[1][0][2, 31, 0] == 1.0 and ds[1][1] == 1
    assert [ds[i][1] for i in range(0, 20, 4)] == [0, 1, 2, 3, 4]  # batch order
    test = build_dataset("cifar10", root=str(tmp_path), split="test", channels=1, size=8)
    x, y = test[0]
    assert len(test) == 4 and x.shape == (1, 8, 8) and y == 5
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_cifar_files_in_root_and_missing(tmp_path):
    _fake_cifar(tmp_path)
    assert len(build_dataset("cifar10", root=str(tmp_path), limit=6)) == 6
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(MvqError, match="data_batch_3"):
        build_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(MvqError, match="does not exist"):
        build_dataset("cifar10", root=str(tmp_path / "nope"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_malicious_pickle_refused(tmp_path):
    _fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(MvqError, match="refused.*system"):
        build_dataset("cifar10", root=str(tmp_path), split="test")


def test_cifar_wrong_shape(tmp_path):
    _fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(MvqError, match=r"\(N, 3072\)"):
        build_dataset("cifar10", root=str(tmp_path), split="test")


# ---------------------------------------------------------------- image folder


def _save(path, size=(40, 20), color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_skips_corrupt(tmp_path, capsys):
    train = tmp_path / "train"
    _save(train / "cats" / "a.png", color=(255, 0, 0))
    _save(train / "cats" / "b.JPG", color=(0, 255, 0))
    _save(train / "dogs" / "deep" / "c.bmp", color=(0, 0, 255))
    (train / "dogs" / "bad.png").write_bytes(b"not an image at all")
    (train / "cats" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (train / "notes.txt").write_text("ignored")
    _save(tmp_path / "test" / "cats" / "t.png")
    ds = build_dataset("folder", root=str(tmp_path), size=16)
    assert len(ds) == 3 and ds.skipped == 2
    assert ds.classes == ["cats", "dogs"] and ds.num_classes == 2
    assert "mvq: skipped 2 unreadable image(s) in" in capsys.readouterr().err
    items = [ds[i] for i in range(3)]
    assert [y for _, y in items] == [0, 0, 1]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.float32 for x, _ in items)
    assert torch.allclose(items[0][0][:, 8, 8], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(items[2][0][:, 8, 8], torch.tensor([0.0, 0.0, 1.0]))
    gray = build_dataset("folder", root=str(tmp_path), size=10, channels=1)
    x, _ = gray[0]
    assert x.shape == (1, 10, 10) and x[0, 5, 5] == pytest.approx(0.299, abs=0.01)


def test_folder_resize_crop_and_root_images(tmp_path):
    img = Image.new("L", (60, 30), 0)  # wide: left third black, middle white, right black
    img.paste(255, (20, 0, 40, 30))
    (tmp_path / "train").mkdir()
    img.save(tmp_path / "train" / "x.png")
    _save(tmp_path / "test" / "y.png")
    ds = build_dataset("folder", root=str(tmp_path), size=12)
    assert ds.channels == 1 and ds.classes == ["."] and ds.num_classes == 1
    x, y = ds[0]
    assert y == 0 and x.shape == (1, 12, 12)  # 60x30 -> 24x12 -> center crop 12x12
    assert float(x[0, :, 3:9].min()) > 0.99 and float(x[0, :, 0].max()) < 0.5
    assert build_dataset("folder", root=str(tmp_path)).image_size == 64


def test_folder_train_test_subfolders(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png")
    _save(tmp_path / "train" / "b" / "2.png")
    _save(tmp_path / "test" / "b" / "3.webp")
    assert len(build_dataset("folder", root=str(tmp_path), split="train")) == 2
    test = build_dataset("folder", root=str(tmp_path), split="test", size=8)
    assert len(test) == 1 and test.classes == ["b"]


def test_folder_errors(tmp_path):
    with pytest.raises(MvqError, match="does not exist"):
        build_dataset("folder", root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MvqError, match="no image files"):
        build_dataset("folder", root=str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"\x89PNG broken" * i)
    with pytest.raises(MvqError, match="none of the 2 image file"):  # 1 of 3 held out
        build_dataset("folder", root=str(bad))


# ---------------------------------------------------------------- shapes and the registry


def test_shapes_deterministic_and_factors():
    a = build_dataset("shapes", limit=64, seed=3)
    b = build_dataset("shapes", limit=64, seed=3)
    t = build_dataset("shapes", split="test", limit=64, seed=3)
    assert len(a) == 64 and (a.image_size, a.channels) == (32, 3) and a.num_classes >= 3
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(64))
    assert not all(torch.equal(a[i][0], t[i][0]) for i in range(64))
    assert set(a.factor_names) == {"shape", "size", "x", "y", "color"}
    assert all(len(a.factors[k]) == 64 for k in a.factor_names)
    assert torch.equal(a.factors["shape"], torch.tensor([a[i][1] for i in range(64)]))
    assert set(a.factors["shape"].tolist()) == set(range(a.num_classes))
    longer = build_dataset("shapes", limit=200, seed=3)  # same prefix
    assert all(torch.equal(longer.factors[k][:64], a.factors[k]) for k in a.factor_names)
    assert not torch.equal(build_dataset("shapes", limit=64, seed=4).factors["x"], a.factors["x"])


def test_shapes_pixels_and_lengths():
    ds = build_dataset("shapes", size=24, channels=1, limit=20)
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (1, 24, 24) and x.dtype == torch.float32
        values = x.unique()  # black background, one shape of the sampled brightness
        assert torch.allclose(values, torch.stack([torch.tensor(0.0), ds.factors["color"][i, 0]]))
        ys, xs = torch.nonzero(x[0], as_tuple=True)
        cx, cy = (xs.float().mean() + 0.5) / 24, (ys.float().mean() + 0.5) / 24
        assert abs(float(cx) - float(ds.factors["x"][i])) < 0.1
        if y != 2:  # the triangle's mass centre sits below its box centre
            assert abs(float(cy) - float(ds.factors["y"][i])) < 0.1
    assert len(build_dataset("shapes")) == 10000
    assert len(build_dataset("shapes", split="test")) == 2000


def test_build_dataset_registry_errors():
    assert DATASETS == ("fashion-mnist", "cifar10", "folder", "shapes")
    with pytest.raises(MvqError, match="unknown data set"):
        build_dataset("mnist-ish")
    with pytest.raises(MvqError, match="split"):
        build_dataset("shapes", split="val")
    with pytest.raises(MvqError, match="channels"):
        build_dataset("shapes", channels=2)
    with pytest.raises(MvqError, match="limit"):
        build_dataset("shapes", limit=0)
