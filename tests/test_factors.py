import json
import math

import pytest
import torch
from conftest import tiny_model_config

from mvq.analysis.factors import (
    code_dimensions,
    discretize,
    factor_scores,
    mutual_information,
    score_checkpoint,
)
from mvq.cli import main
from mvq.configuration.config import Config, DataConfig
from mvq.errors import MvqError
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint
from mvq.values.codes import Codes


def test_mutual_information_of_copies_and_of_independent_bits():
    a = torch.tensor([0, 1] * 50)
    assert mutual_information(a, a) == pytest.approx(math.log(2))
    b = torch.tensor([0, 0, 1, 1] * 25)  # independent of a, exactly
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


def test_scores_find_the_dimension_that_copies_a_factor():
    g = torch.Generator().manual_seed(0)
    f = torch.randint(0, 2, (400,), generator=g)
    noise = torch.randint(0, 2, (400,), generator=g)
    dims = torch.stack([noise, f, torch.zeros(400, dtype=torch.long)], 1)
    s = factor_scores(dims, {"f": f})["f"]
    assert s["best"] == pytest.approx(1.0) and s["gap"] > 0.95


def test_discretize_makes_equal_count_bins():
    ids = discretize(torch.rand(800), 8)
    assert torch.bincount(ids).tolist() == [100] * 8


def test_code_dimensions_mask_bits_or_one_hot_ids():
    mask = torch.zeros(2, 1, 2, 3, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    codes = Codes(torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2, 1, 2, dtype=torch.long),
                  mask)
    assert code_dimensions(codes, 8).tolist() == [[0, 0, 1], [0, 0, 0]]
    ids = Codes(torch.zeros(2, 1, 1, dtype=torch.long), torch.tensor([[[1]], [[3]]]))
    assert code_dimensions(ids, 4).tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]


def test_score_checkpoint_needs_the_shapes_set(tmp_path):
    for name, kind in (("shapes", "mvqvae"), ("shapes", "hvqvae")):
        cfg = Config(model=tiny_model_config(type=kind, factor=14), data=DataConfig(name=name))
        ck = save_checkpoint(tmp_path / kind, build_model(cfg.model), cfg, step=0)
        res = score_checkpoint(str(ck), n=64)
        assert set(res["scores"]) == {"shape", "size", "x", "y", "color"}
        assert res["dimensions"] == 8  # D' = 8 mask bits; K/2 = 8 secondary ids
    cfg = Config(model=tiny_model_config(), data=DataConfig(name="fashion-mnist"))
    ck = save_checkpoint(tmp_path / "fm", build_model(cfg.model), cfg, step=0)
    with pytest.raises(MvqError, match="trained on fashion-mnist"):
        score_checkpoint(str(ck), n=8)


def test_mvq_analyze_what_factors_writes_the_scores(tmp_path, capsys):
    """`mvq analyze --what factors` (the one way to run it) writes and prints the record of
    score_checkpoint with the command line's --images and --bins; a baseline checkpoint is
    scored too (the figures need MVQ, the factor scores do not); figures and the measure mix."""
    for kind, what in (("hvqvae", ["factors"]), ("mvqvae", ["dims", "factors"])):
        cfg = Config(model=tiny_model_config(type=kind, factor=14), data=DataConfig(name="shapes"))
        ck = save_checkpoint(tmp_path / kind, build_model(cfg.model), cfg, step=0)
        out = tmp_path / f"out_{kind}"
        argv = ["analyze", "--checkpoint", str(ck), "--what", *what, "--images", "48",
                "--bins", "4", "--out", str(out)]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        written = json.loads((out / "factors.json").read_text())
        assert written == json.loads(json.dumps(score_checkpoint(str(ck), n=48, bins=4)))
        assert written["n"] == 48 and written["model"] == kind
        assert f"written: {out / 'factors.json'}" in printed and '"scores"' in printed
        assert (out / "dims.png").exists() == ("dims" in what)
    cfg = Config(model=tiny_model_config(), data=DataConfig(name="fashion-mnist"))
    ck = save_checkpoint(tmp_path / "fm", build_model(cfg.model), cfg, step=0)
    assert main(["analyze", "--checkpoint", str(ck), "--what", "factors", "--out",
                 str(tmp_path / "fm_out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on fashion-mnist" in err[0]
    assert not (tmp_path / "fm_out" / "factors.json").exists()
