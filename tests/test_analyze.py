import pytest
import torch
from conftest import assert_labelled, tiny_model_config
from PIL import Image

from mvq.analysis import analyze, figures, pick_distinct
from mvq.analysis import codes as C
from mvq.cli import main
from mvq.configuration.config import Config, DataConfig
from mvq.data import first_images
from mvq.errors import MvqError
from mvq.files.figures import HEAT
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint


def _checkpoint(path, **kw):
    cfg = Config(model=tiny_model_config(factor=14, **kw), data=DataConfig(name="shapes"))
    return save_checkpoint(path, build_model(cfg.model), cfg, step=0)


@pytest.fixture(scope="module")
def mvq_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("mvq") / "checkpoint")


@pytest.fixture(scope="module")
def loaded(mvq_dir):
    model, cfg = C.load_mvq(mvq_dir)
    x = first_images(cfg, "test", 5)[0]
    return model, x, model.encode(x)


def test_decode_sum_of_one_configuration_is_the_decode_and_sums_follow_the_formula(loaded):
    model, _, codes = loaded
    masks = C.random_masks(codes, 2, seed=1)
    one = C.with_masks(codes[:1], masks[:1])
    for mode in C.SUM_MODES:
        assert torch.allclose(C.decode_sum(model, one.primary, [one], mode), C.decode(model, one),
                              atol=1e-7)
    a, b = one, C.with_masks(codes[1:2], masks[1:])  # another image's secondary code
    e = model.mvq.primary.lookup(a.primary)
    ca, cb = (model.mvq.secondary.lookup(c.secondary) * c.mask.permute(0, 3, 1, 2) for c in (a, b))
    with torch.no_grad():
        want_codes = ((model.decoder(e + model.mvq.f(ca + cb)) + 1) / 2).clamp(0, 1)
        f0 = model.mvq.f(torch.zeros_like(ca))
        want_out = ((model.decoder(e + model.mvq.f(ca) + model.mvq.f(cb) - f0) + 1) / 2).clamp(0, 1)
    assert torch.allclose(C.decode_sum(model, a.primary, [a, b], "codes"), want_codes, atol=1e-7)
    assert torch.allclose(C.decode_sum(model, a.primary, [a, b], "outputs"), want_out, atol=1e-7)
    assert (want_codes - want_out).abs().max() > 1e-6  # the two modes differ (f is not linear)


def test_dims_sets_one_dimension_per_column_and_maps_the_change(loaded):
    model, _, codes = loaded
    fig = figures.dims(model, codes[:1], [0])
    rows, cols = fig.rows, fig.col_labels
    d2 = codes.mask.shape[-1]
    assert len(rows) == 3 and len(cols) == d2 + 1 and rows[0].shape[0] == d2 + 1
    mask = codes.mask[:1].clone()
    mask[..., 3] = False
    off = C.decode(model, C.with_masks(codes[:1], mask))
    assert torch.allclose(rows[1][4:5], off)
    assert torch.allclose(rows[0][0:1], C.decode(model, codes[:1]))
    # the heatmap row: white where on == off, darkest where |on - off| is largest in the figure
    diff = (rows[0] - rows[1]).abs().mean(1)
    heat = rows[2]
    assert diff[0].max() == 0 and (heat[0] == 1).all()  # column m*: on and off are both m*
    peak = diff.flatten().argmax()
    n, h, w = diff.shape
    assert torch.allclose(heat[peak // (h * w), :, (peak % (h * w)) // w, peak % w],
                          torch.tensor(HEAT))
    sizes = [float(t) for t in fig.captions[2][1:]]
    assert sizes == pytest.approx(diff[1:].flatten(1).mean(1).tolist(), abs=6e-4)


def test_transfer_keeps_the_configuration_and_swaps_the_primary(loaded):
    model, _, codes = loaded
    masks = C.random_masks(codes, 3, seed=0)
    fig = figures.transfer(model, codes[:2], [0, 1], masks)
    want = Codes_on(codes, masks[2:3])
    assert torch.allclose(fig.rows[1][4:5], C.decode(model, want))
    assert fig.col_labels[:2] == ["encoded\nmask", "no mask"]


def Codes_on(codes, mask):
    """The first image's (e', mask) on the second image's primary code."""
    from mvq.values.codes import Codes

    return Codes(codes.primary[1:2], codes.secondary[:1], mask, codes.meta)


def test_compose_centre_is_the_primary_code_alone(loaded):
    model, _, codes = loaded
    masks = C.random_masks(codes, 4, seed=0)
    fig = figures.compose(model, codes[:1], [0], masks)
    rows = fig.rows
    assert len(rows) == 3 and all(r.shape[0] == 3 for r in rows)
    zero = C.with_masks(codes[:1], torch.zeros_like(masks[:1]))
    assert torch.allclose(rows[1][1:2], C.decode(model, zero), atol=1e-7)
    assert fig.captions[1] == ["mask B", "no mask", "mask C"] and fig.captions[0][0] == "A and B"
    assert "added before f" in fig.note


def test_pick_distinct_puts_new_primary_codes_first():
    primary = torch.tensor([3, 3, 5, 3, 7]).view(5, 1, 1)
    assert pick_distinct(primary, 4) == [0, 2, 4, 1]


def test_cli_writes_labelled_grids_and_refuses_to_overwrite(mvq_dir, tmp_path, capsys):
    out = tmp_path / "grids"
    argv = ["analyze", "--checkpoint", str(mvq_dir), "--what", "dims", "transfer", "compose",
            "diversity", "--images", "2", "--masks", "3", "--out", str(out)]
    assert main(argv) == 0
    for name in ("dims", "transfer", "compose", "diversity"):
        img = Image.open(out / f"{name}.png")
        assert img.mode == "RGB" and img.width > 3 * 28
        assert_labelled(out / f"{name}.png")
    assert Image.open(out / "diversity.png").height > 2 * 3 * 28  # two rows of images + labels
    before = (out / "dims.png").read_bytes()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "dims.png").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0


def test_non_mvq_checkpoint_is_refused_with_a_clear_message(tmp_path):
    hvq = _checkpoint(tmp_path / "hvq" / "checkpoint", type="hvqvae")
    with pytest.raises(MvqError, match="holds a hvqvae checkpoint.*mvqvae or mvqgan"):
        analyze(hvq, ["dims"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
