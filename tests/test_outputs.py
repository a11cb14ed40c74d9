"""Never lose a file: atomic writes, no silent replacement, nothing written into a checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config

from mvq.cli import main
from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.errors import MvqError
from mvq.files.outputs import atomic_write
from mvq.train import train


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("outputs") / "tok"
    cfg = Config(model=tiny_model_config(num_masks=8, factor=7),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(steps=1, batch_size=8, grid_images=2, out_dir=str(out)))
    return train(cfg, progress=False).out_dir / "checkpoint"


def _refused(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err


def test_existing_outputs_are_replaced_only_with_overwrite(ckpt, tmp_path, capsys):
    c = ["--checkpoint", str(ckpt)]
    for name in ("tokens.safetensors", "rec.png", "codes.safetensors", "e.json", "e.md"):
        (tmp_path / name).write_text("keep me")
    tokens, png, codes = (tmp_path / n for n in ("tokens.safetensors", "rec.png",
                                                 "codes.safetensors"))
    _refused(capsys, ["encode-dataset", *c, "--out", str(tokens), "--limit", "4",
                      "--no-progress"], "--out")
    _refused(capsys, ["reconstruct", *c, "--out", str(png), "--n", "2"], "exists; pass --overwrite")
    _refused(capsys, ["reconstruct", *c, "--out", str(tmp_path / "new.png"), "--codes",
                      str(codes), "--n", "2"], "--codes")
    _refused(capsys, ["evaluate", *c, "--json", str(tmp_path / "e.json"), "--n", "2",
                      "--metrics", "mse", "--no-progress"], "--json")
    _refused(capsys, ["evaluate", *c, "--md", str(tmp_path / "e.md"), "--n", "2",
                      "--metrics", "mse", "--no-progress"], "--md")
    _refused(capsys, ["sample", "--tokenizer", str(ckpt), "--prior", str(tmp_path),
                      "--out", str(png)], "--out")
    for name in ("tokens.safetensors", "rec.png", "codes.safetensors", "e.json", "e.md"):
        assert (tmp_path / name).read_text() == "keep me", name
    assert not (tmp_path / "new.png").exists()
    assert main(["encode-dataset", *c, "--out", str(tokens), "--limit", "4", "--no-progress",
                 "--overwrite", "--device", "cpu"]) == 0
    assert main(["reconstruct", *c, "--out", str(png), "--codes", str(codes), "--n", "2",
                 "--overwrite"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and tokens.stat().st_size > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_nothing_but_training_writes_into_a_checkpoint(ckpt, capsys):
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    _refused(capsys, ["reconstruct", "--checkpoint", str(ckpt), "--out", str(ckpt / "r.png"),
                      "--n", "2"], "lies in the checkpoint folder")
    _refused(capsys, ["reconstruct", "--checkpoint", str(ckpt), "--out", "r.png", "--codes",
                      str(ckpt / "model.safetensors"), "--n", "2", "--overwrite"],
             "lies in the checkpoint folder")
    _refused(capsys, ["encode-dataset", "--checkpoint", str(ckpt), "--out",
                      str(ckpt / "model.safetensors"), "--overwrite"],
             "lies in the checkpoint folder")
    _refused(capsys, ["evaluate", "--checkpoint", str(ckpt), "--json",
                      str(ckpt / "config.json"), "--overwrite"], "lies in the checkpoint folder")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    with pytest.raises(MvqError, match="lies in the checkpoint folder"):
        from mvq.inference.tokens import encode_dataset

        encode_dataset(ckpt, ckpt / "tokens.safetensors", overwrite=True)
