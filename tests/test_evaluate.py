"""mvq.evaluation: reconstruction metrics of a checkpoint, checked against hand computations."""

import json
import math

import pytest
import torch
from conftest import tiny_model_config

import mvq.metrics.fid as fid_module
from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.data import build_dataset
from mvq.errors import MvqError
from mvq.evaluation import EvalSettings, evaluate_checkpoint, format_table, write_reports
from mvq.metrics import extract_features, fid_from_features, get_inception, ssim
from mvq.saved.pretrained import load_tokenizer
from mvq.train import train

NO_INCEPTION = ("mse", "psnr", "ssim", "lpips", "usage")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = Config(model=tiny_model_config(num_masks=8),
                 data=DataConfig(name="shapes", train_limit=32, val_limit=8),
                 train=TrainConfig(steps=2, batch_size=8, val_every=2, ckpt_every=2, log_every=1,
                                   grid_images=4, out_dir=str(out)))
    return train(cfg, progress=False).out_dir / "checkpoint"


def _by_hand(checkpoint, n):
    """The first n shapes test images and their reconstructions, without mvq.evaluation."""
    model, cfg, _ = load_tokenizer(checkpoint)
    model.eval()
    ds = build_dataset("shapes", split="test", size=cfg.model.image_size,
                       channels=cfg.model.channels, limit=n)
    x = torch.stack([ds[i][0] for i in range(n)])
    with torch.no_grad():
        rec = model.decode(model.encode(x)).clamp(0, 1)
    return model, x, rec


def test_pixel_metrics_match_hand_computation(checkpoint, tmp_path):
    result = evaluate_checkpoint(checkpoint, EvalSettings(n=16, batch_size=8, progress=False,
                                                          device="cpu"), metrics=NO_INCEPTION)
    model, x, rec = _by_hand(checkpoint, 16)
    mse_i = (rec.double() - x.double()).pow(2).flatten(1).mean(1)
    m = result["metrics"]
    assert m["mse"] == pytest.approx(float(mse_i.mean()), rel=1e-5)
    assert m["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse_i)).mean()), rel=1e-5)
    assert m["ssim"] == pytest.approx(float(ssim(x, rec).double().mean()), rel=1e-4, abs=1e-6)
    assert 0 <= m["lpips"] and math.isfinite(m["lpips"])
    for key in ("usage", "usage2"):
        assert 0 <= m[key] <= 1
    assert 1 <= m["perplexity"] <= model.codebook_sizes[0]
    assert m["bits_per_image"] == model.bits_per_image
    assert m["tokens"] == sum(model.tokens)
    assert "rfid" not in m and "prd_f8" not in m and result["feature_extractor"] is None
    assert result["lpips_resize"].startswith("bilinear 28x28 -> 32x32")

    json_path, md_path = tmp_path / "r" / "eval.json", tmp_path / "r" / "eval.md"
    write_reports(result, json_path, md_path)
    back = json.loads(json_path.read_text())
    assert back == result
    assert back["checkpoint"] == str(checkpoint.resolve())
    assert (back["model_type"], back["step"], back["dataset"], back["split"]) == \
        ("mvqvae", 2, "shapes", "test")
    assert (back["n"], back["image_size"], back["channels"]) == (16, 28, 1)
    assert len(back["lpips_backbone_sha256"]) == 64 and back["mvq_version"]
    assert back["seconds"] > 0
    md = md_path.read_text()
    assert md == format_table(result) + "\n"
    assert "mvqvae" in md.splitlines()[0] and "N=16 test" in md.splitlines()[0]
    # 2 x log2(8) + log2(J_eval = 8): the mask is an index into the bank
    assert "| MSE |" in md and "| bits / image | 9.0 |" in md


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 12 images: rank-deficient covariances
def test_rfid_and_prd_with_feature_cache(checkpoint, tmp_path, monkeypatch):
    calls = []
    original = fid_module.extract_features

    def counting(images, *args, **kw):  # called by cached_feature_stats on a cache miss only
        calls.append(1)
        return original(images, *args, **kw)

    monkeypatch.setattr(fid_module, "extract_features", counting)
    cache = tmp_path / "stats"
    kw = EvalSettings(n=12, batch_size=12, progress=False, device="cpu", cache_dir=str(cache))
    first = evaluate_checkpoint(checkpoint, kw, metrics=("rfid", "prd"))
    assert len(calls) == 1 and first["fid_stats_cache_hit"] is False
    path = first["fid_stats_cache"]
    assert path.startswith(str(cache)) and (cache / path.rsplit("/", 1)[1]).is_file()
    assert first["feature_extractor"] == "pytorch-fid FIDInceptionV3 pool3 2048-d"
    assert first["inception_resize"].startswith("bilinear to 299")
    rfid = first["metrics"]["rfid"]
    assert math.isfinite(rfid) and rfid >= 0
    for key in ("prd_f8", "prd_f1_8"):
        assert 0 <= first["metrics"][key] <= 1

    second = evaluate_checkpoint(checkpoint, kw, metrics=("prd",))  # PRD reads the cache too
    assert len(calls) == 1 and second["fid_stats_cache_hit"] is True
    assert second["metrics"]["prd_f8"] == first["metrics"]["prd_f8"]
    assert second["metrics"]["prd_f1_8"] == first["metrics"]["prd_f1_8"]

    _, x, rec = _by_hand(checkpoint, 12)
    ext = get_inception(device="cpu")
    assert first["feature_extractor_sha256"] == ext.weights_sha256
    real = original(x, batch_size=12, progress=False, extractor=ext)
    fake = extract_features(rec, batch_size=12, progress=False, extractor=ext)
    assert abs(rfid - fid_from_features(real, fake)) < 1e-3


def test_errors(checkpoint, tmp_path):
    with pytest.raises(MvqError, match="FID needs at least 2 images"):
        evaluate_checkpoint(checkpoint, EvalSettings(n=1, progress=False), metrics=("rfid",))
    with pytest.raises(MvqError, match="unknown metric 'fid'"):
        evaluate_checkpoint(checkpoint, EvalSettings(progress=False), metrics=("fid",))
    with pytest.raises(MvqError, match="no such folder: .*missing .expected a model folder"):
        evaluate_checkpoint(tmp_path / "missing", EvalSettings(n=4, progress=False),
                            metrics=("mse",))
    one = evaluate_checkpoint(checkpoint, EvalSettings(n=1, progress=False, device="cpu"),
                              metrics=("mse",))
    assert one["n"] == 1 and "mse" in one["metrics"]


def test_compare_results_table(tmp_path, capsys):
    from mvq.cli import main

    def result(run, n, **metrics):
        return {"checkpoint": f"/x/{run}/checkpoint", "dataset": "shapes", "split": "test",
                "n": n, "metrics": metrics}

    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    write_reports(result("vq", 100, mse=0.5, rfid=12.3456), a, None)
    write_reports(result("mvq", 100, mse=0.25, lpips=0.1), b, None)
    assert main(["compare", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | MSE | rFID | LPIPS (alex) |"
    assert lines[2] == "| vq | 0.500000 | 12.346 | n/a |"
    assert lines[3] == "| mvq | 0.250000 | n/a | 0.1000 |"
    assert "N=100 test images of shapes" in lines[-1]
    out = tmp_path / "t.md"
    assert main(["compare", str(a), str(b), "--names", "base,ours", "--out", str(out)]) == 0
    assert "| ours | 0.250000 |" in out.read_text()
    c = tmp_path / "c.json"
    write_reports(result("other", 50, mse=0.1), c, None)
    assert main(["compare", str(a), str(c)]) == 0
    assert "not comparable" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--names", "one"]) == 2
    assert "--names has 1 names for 2 results" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert main(["compare", str(tmp_path / "junk.json")]) == 2
    assert "has no 'metrics'" in capsys.readouterr().err
