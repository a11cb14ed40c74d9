"""mvq.inference.reconstruct (what `mvq reconstruct` calls): the error it reports is the
hand-computed one, the codes it saves decode to the figure's reconstructions, image paths are
read in order."""

import math

import pytest
import torch
from conftest import assert_labelled, tiny_model_config
from PIL import Image

from mvq.configuration.config import Config, DataConfig
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.inference.reconstruct import load_images, reconstruct
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint
from mvq.saved.pretrained import load_tokenizer
from mvq.values.codes import Codes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint", build_model(cfg.model),
                           cfg, step=0)


def test_reported_error_is_the_hand_computed_one_and_the_codes_decode_back(checkpoint, tmp_path):
    r = reconstruct(checkpoint, tmp_path / "r.png", n=5, codes=tmp_path / "c.safetensors")
    assert r.path == tmp_path / "r.png" and r.n == 5
    assert_labelled(r.path)
    ds = build_dataset("shapes", split="test", size=28, channels=1, limit=5)
    x = torch.stack([ds[i][0] for i in range(5)])
    model = load_tokenizer(checkpoint)[0].eval()
    with torch.no_grad():
        rec = model.decode(Codes.load(tmp_path / "c.safetensors")).clamp(0, 1)
    per_image = [float(((rec[i] - x[i]) ** 2).mean()) for i in range(5)]
    assert r.mse == pytest.approx(sum(per_image) / 5, rel=1e-5)
    assert r.psnr == pytest.approx(sum(10 * math.log10(1 / m) for m in per_image) / 5, rel=1e-5)


def test_images_are_read_folders_first_and_bad_files_skipped(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (28, 28), color=200).save(folder / "a.png")
    Image.new("L", (28, 28), color=0).save(tmp_path / "black.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    x = load_images([str(tmp_path / "black.png"), str(tmp_path / "bad.png"), str(folder)],
                    28, 1, 5)
    assert x.shape == (2, 1, 28, 28)
    assert x[0].mean() == pytest.approx(200 / 255, abs=1e-6) and x[1].max() == 0
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err
    with pytest.raises(MvqError, match="image path not found: .*nope"):
        load_images([str(tmp_path / "nope")], 28, 1, 5)
    with pytest.raises(MvqError, match="no readable images"):
        load_images([str(tmp_path / "bad.png")], 28, 1, 5)
