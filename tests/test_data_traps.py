"""Issue 19, "data sets that cannot hang or lie": link loops, pipes, gzip bombs, empty splits
and folders without train/ and test/."""

from __future__ import annotations

import gzip
import os
import struct

import pytest
from PIL import Image

from mvq.data import build_dataset
from mvq.data.fashion_mnist import MAX_IDX_BYTES, load_fashion_mnist_arrays
from mvq.data.folder import HELD_OUT, held_out, list_images
from mvq.errors import MvqError


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("L", (8, 8), 20 * i).save(folder / name)


def test_link_loops_are_walked_once_and_pipes_are_not_opened(tmp_path):
    _images(tmp_path / "a", ["0.png", "1.png"])
    _images(tmp_path / "b", ["2.png"])
    os.symlink("..", tmp_path / "a" / "up")  # a loop back to the root
    os.symlink(tmp_path / "a", tmp_path / "b" / "again")  # a second way into a/
    os.symlink(tmp_path / "a", tmp_path / "b" / "loop")  # and a third
    os.link(tmp_path / "b" / "2.png", tmp_path / "b" / "2-hard.png")  # the same file twice
    os.mkfifo(tmp_path / "b" / "pipe.png")  # opening it would block forever
    os.symlink(tmp_path / "gone.png", tmp_path / "b" / "dangling.png")
    found = list_images(str(tmp_path))
    assert sorted(found) == ["a/0.png", "a/1.png", "b/2-hard.png"] or \
        sorted(found) == ["a/0.png", "a/1.png", "b/2.png"]
    # the data set takes each file once, across both splits
    sets = [build_dataset("folder", root=str(tmp_path), split=s) for s in ("train", "test")]
    paths = [p for ds in sets for p, _ in ds.samples]
    assert len(paths) == len(set(paths)) == 3


def test_a_folder_without_train_and_test_holds_out_a_test_split_and_says_so(tmp_path, capsys):
    names = [f"{i:02d}.png" for i in range(40)]
    _images(tmp_path / "x", names)
    train = build_dataset("folder", root=str(tmp_path / "x"), split="train")
    test = build_dataset("folder", root=str(tmp_path / "x"), split="test")
    said = capsys.readouterr().err
    a, b = {p for p, _ in train.samples}, {p for p, _ in test.samples}
    assert not a & b and len(a | b) == 40 and 1 <= len(b) <= 15
    assert f"{len(b)} of its 40 images (1 in {HELD_OUT}" in said and said.count("held out") == 1
    expect = {os.path.join("x", n) for n in names if held_out(names) and n in held_out(names)}
    assert {os.path.relpath(p, tmp_path) for p in b} == expect
    again = build_dataset("folder", root=str(tmp_path / "x"), split="test")
    assert again.samples == test.samples  # the same images every run


@pytest.mark.parametrize("count", [2, 3, 5])
def test_tiny_folders_still_get_both_splits(tmp_path, count):
    _images(tmp_path, [f"{i}.png" for i in range(count)])
    sizes = [len(build_dataset("folder", root=str(tmp_path), split=s)) for s in ("train", "test")]
    assert sizes[0] >= 1 and sizes[1] >= 1 and sum(sizes) == count


def test_a_folder_of_one_image_cannot_be_split(tmp_path):
    _images(tmp_path, ["only.png"])
    with pytest.raises(MvqError, match="holds one image and no train/ and test/"):
        build_dataset("folder", root=str(tmp_path))


def _idx_files(root, n_train=4, n_test=2, images=None, gz=True):
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = images if images is not None and prefix == "train" else \
            struct.pack(">4I", 2051, n, 28, 28) + bytes(n * 784)
        lab = struct.pack(">2I", 2049, n) + bytes(n)
        for stem, data in ((f"{prefix}-images-idx3-ubyte", img),
                           (f"{prefix}-labels-idx1-ubyte", lab)):
            if gz:
                with gzip.open(root / f"{stem}.gz", "wb") as fh:
                    fh.write(data)
            else:
                (root / stem).write_bytes(data)


def _bomb(path, header_n, inflated):
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(struct.pack(">4I", 2051, header_n, 28, 28))
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            fh.write(block)


def test_a_gzip_bomb_is_refused_by_its_declared_size(tmp_path):
    _idx_files(tmp_path)
    _bomb(tmp_path / "train-images-idx3-ubyte.gz", 4, MAX_IDX_BYTES + (1 << 20))
    with pytest.raises(MvqError, match="declares .* bytes inflated, more than"):
        load_fashion_mnist_arrays(str(tmp_path), "train")


def test_a_gzip_bomb_with_a_forged_trailer_is_not_inflated_past_its_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _idx_files(tmp_path)
    _bomb(path, 4, 64 << 20)
    data = bytearray(path.read_bytes())
    data[-4:] = struct.pack("<I", 16 + 4 * 784)  # the trailer agrees with the header
    path.write_bytes(bytes(data))
    with pytest.raises(MvqError, match="holds more than 3136 data bytes"):
        load_fashion_mnist_arrays(str(tmp_path), "train")


@pytest.mark.parametrize("images, fragment", [
    (struct.pack(">4I", 2051, 2**31, 2**10, 2**10), "do not fit its size"),
    (struct.pack(">4I", 2051, 4, 28, 28) + bytes(100), "corrupt"),
    (struct.pack(">2I", 2051, 4), "too short"),
    (struct.pack(">4I", 2049, 4, 28, 28) + bytes(4 * 784), "magic number 2049"),
])
def test_idx_headers_that_lie_are_one_line(tmp_path, images, fragment):
    for gz in (True, False):
        root = tmp_path / str(gz)
        _idx_files(root, images=images, gz=gz)
        with pytest.raises(MvqError, match=fragment):
            load_fashion_mnist_arrays(str(root), "train")


def test_an_empty_split_is_one_line(tmp_path):
    _idx_files(tmp_path, n_test=0)
    assert len(build_dataset("fashion-mnist", root=str(tmp_path), split="train")) == 4
    with pytest.raises(MvqError, match="the test split of fashion-mnist holds no images"):
        build_dataset("fashion-mnist", root=str(tmp_path), split="test")
    (tmp_path / "f" / "train").mkdir(parents=True)
    (tmp_path / "f" / "test").mkdir()
    _images(tmp_path / "f" / "train", ["a.png"])
    with pytest.raises(MvqError, match="no image files found in .*test"):
        build_dataset("folder", root=str(tmp_path / "f"), split="test")
