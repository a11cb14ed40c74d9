import math

import pytest
import torch
from conftest import tiny_model_config

from mvq.errors import MvqError
from mvq.models import build_model
from mvq.quantize.refine import refine_masks


def _model(**kw):
    model = build_model(tiny_model_config(factor=14, eval_masks=4, **kw)).eval()
    return model


def _distance(model, x, codes):
    with torch.no_grad():
        y = model.encoder(x * 2 - 1)
        y_hat = model.mvq.decode_codes(codes.primary, codes.secondary, codes.mask)
    return (y_hat - y).pow(2).flatten(1).sum(1)


def test_refinement_never_increases_the_distance_and_usually_lowers_it():
    model = _model()
    x = torch.rand(6, 1, 28, 28)
    bank, refined = model.encode(x), model.encode(x, refine=True)
    d_bank, d_ref = _distance(model, x, bank), _distance(model, x, refined)
    assert (d_ref <= d_bank + 1e-4 * d_bank).all()
    assert (d_ref < d_bank * (1 - 1e-4)).any()  # 4 bank masks of 2^32: flips must help somewhere
    assert torch.equal(bank.primary, refined.primary)
    assert torch.equal(bank.secondary, refined.secondary)
    assert torch.equal(model.encode(x).mask, bank.mask)  # a per-call option: no state left


def test_refine_masks_is_a_local_minimum_over_single_flips():
    model = _model()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        y = model.encoder(x * 2 - 1)
        q1, q2 = model.mvq.primary.quantize(y), model.mvq.secondary.quantize(model.encoder2(y))
        start = torch.zeros(3, *q2.codes.shape[1:], dtype=torch.bool)
        mask, before, after = refine_masks(model.mvq, q1.codes, q2.codes, y, start)
        assert (after <= before).all()
        for bit in range(mask[0].numel()):
            flipped = mask.clone().flatten(1)
            flipped[:, bit] ^= True
            y_hat = model.mvq.combine(q1.codes, q2.codes, flipped.view_as(mask))
            d = (y_hat - y).pow(2).flatten(1).sum(1)
            assert (d >= after - 1e-4 * after).all()


def test_bits_per_image_counts_the_free_mask_when_refining():
    model = _model()
    s, s2 = model.tokens
    assert model.mask_bits == s2 * math.log2(4)
    assert model.refined_mask_bits == s2 * model.cfg.dim2
    assert model.id_bits + model.refined_mask_bits == s * 3 + s2 * 3 + s2 * model.cfg.dim2


def test_evaluate_refine_counts_bits_and_refuses_other_models(tmp_path):
    import pytest

    from mvq.configuration.config import Config, DataConfig
    from mvq.errors import MvqError
    from mvq.evaluation import EvalSettings, evaluate_checkpoint
    from mvq.saved.checkpoint import save_checkpoint

    def ck(name, **kw):
        cfg = Config(model=tiny_model_config(factor=14, eval_masks=4, **kw),
                     data=DataConfig(name="shapes"))
        return save_checkpoint(tmp_path / name, build_model(cfg.model), cfg, step=0)

    mvq_dir = ck("mvq")
    settings = EvalSettings(n=8, batch_size=4, device="cpu", progress=False)
    plain = evaluate_checkpoint(mvq_dir, settings, metrics=("mse",))
    refined = evaluate_checkpoint(mvq_dir, settings, metrics=("mse",), refine=True)
    s2, d2 = plain["tokens_secondary"], 8  # D' = 8 in the tiny config; the bank: log2(4) = 2 bits
    assert refined["mask_refine"] and not plain["mask_refine"]
    assert (refined["metrics"]["bits_per_image"] - plain["metrics"]["bits_per_image"]
            == pytest.approx(s2 * d2 - s2 * 2))
    assert refined["encode_seconds"] > 0
    with pytest.raises(MvqError, match="needs an MVQ checkpoint"):
        evaluate_checkpoint(ck("h", type="hvqvae"), EvalSettings(n=4, device="cpu", progress=False),
                            metrics=("mse",), refine=True)


def test_setting_the_old_refine_flag_is_refused_not_ignored():
    model = _model()
    with pytest.raises(MvqError, match=r"encode\(x, refine=True\)"):
        model.refine = True
    assert not hasattr(model, "refine")

