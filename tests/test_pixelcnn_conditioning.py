"""The PixelCNN's secondary stage sees the primary grid's layout (issue 21): fold / unfold against
a naive loop, layout sensitivity where the old averaging had none, raster causality kept, every
grid geometry, old checkpoints' kind, refusals."""

import itertools
import math

import pytest
import torch

from mvq.errors import MvqError
from mvq.priors import PixelCNNPrior, build_prior
from mvq.priors.pixelcnn import fold, unfold
from mvq.saved.pretrained import load_prior
from mvq.values.codes import Codes

SIZES = dict(channels=8, n_layers=2)


def _prior(primary, secondary, conditioning="layout", k=(4, 5), **extra) -> PixelCNNPrior:
    torch.manual_seed(0)
    sizes = {**SIZES, "conditioning": conditioning, **extra}
    return PixelCNNPrior(primary, list(k), secondary, sizes=sizes).double().eval()


def _secondary_logits(prior, primary, secondary):
    with torch.no_grad():
        return prior.secondary(secondary, where=prior.condition(primary))


def test_fold_matches_a_naive_loop_and_unfold_inverts_it():
    x = torch.randn(2, 3, 4, 6)
    got = fold(x, 2, 3)
    want = torch.zeros(2, 3 * 6, 2, 2)
    for c, i, j, a, b in itertools.product(range(3), range(2), range(2), range(2), range(3)):
        want[:, c * 6 + a * 3 + b, i, j] = x[:, c, i * 2 + a, j * 3 + b]
    assert torch.equal(got, want)
    assert torch.equal(unfold(got, 2, 3), x)


# primary larger than (the presets: 4x4 or 2x2 over 1x1), equal to, smaller than the secondary
# grid (VQ-VAE-2's top / bottom), and sides that divide neither way
GEOMETRIES = [((4, 4), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (1, 1)), ((2, 2), (2, 2)),
              ((2, 2), (4, 4)), ((2, 3), (3, 2))]


@pytest.mark.parametrize("primary,secondary", GEOMETRIES)
def test_same_histogram_other_layout_changes_the_secondary_logits(primary, secondary):
    """Two primary grids holding the same ids in another order: the layout conditioning gives
    other secondary logits at every position; the old averaging (at a 1x1 secondary grid, where
    it is a plain mean) gives the same ones."""
    n = primary[0] * primary[1]
    ids = torch.arange(n).remainder(4).view(1, *primary)
    swapped = ids.flatten().flip(0).view(1, *primary)
    assert not torch.equal(ids, swapped) or n == 1
    sec = torch.randint(0, 5, (1, *secondary))
    new = _prior(primary, secondary)
    a, b = _secondary_logits(new, ids, sec), _secondary_logits(new, swapped, sec)
    assert a.shape == (1, 5, *secondary)
    if n > 1:
        assert (a - b).abs().flatten(2).amax(1).min() > 1e-6  # every secondary position moves
    if secondary == (1, 1):
        old = _prior(primary, secondary, "average")
        torch.testing.assert_close(_secondary_logits(old, ids, sec),
                                   _secondary_logits(old, swapped, sec))


def test_layout_conditioning_learns_what_the_average_cannot():
    """Secondary id = where id 0 sits among the 2x2 primary ids (all 24 orders of 0..3): every
    grid has the same histogram, so the averaged condition is one constant and its secondary NLL
    cannot go below log 4 nats; the layout-conditioned one fits it."""
    perms = torch.tensor(list(itertools.permutations(range(4))))
    codes = Codes(perms.view(-1, 2, 2), (perms == 0).int().argmax(1).view(-1, 1, 1),
                  meta={"codebook_sizes": [4, 4]})
    got = {}
    for kind in ("average", "layout"):
        torch.manual_seed(0)
        prior = PixelCNNPrior.from_codes(codes, sizes=dict(channels=16, n_layers=1,
                                                           conditioning=kind))
        opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
        for _ in range(100):  # the secondary stage only
            loss = prior.secondary.loss(codes.secondary, where=prior.condition(codes.primary))
            opt.zero_grad()
            loss.backward()
            opt.step()
        got[kind] = prior.nll(codes)["secondary"]
    assert got["average"] > math.log(4) - 1e-3
    assert got["layout"] < 0.1, got


@pytest.mark.parametrize("primary,secondary", [((3, 3), (3, 3)), ((6, 3), (3, 3)),
                                               ((1, 1), (3, 4))])
def test_secondary_stage_stays_raster_causal(primary, secondary):
    """A change at secondary position p moves the secondary logits after p only; the primary
    grid is a fully visible condition. (Three layers: the next position's receptive field
    reaches p.)"""
    prior = _prior(primary, secondary, n_layers=3)
    prim = torch.randint(0, 4, (1, *primary))
    sec = torch.randint(0, 5, (1, *secondary))
    base = _secondary_logits(prior, prim, sec).flatten(2)
    total = secondary[0] * secondary[1]
    for p in range(total):
        changed = sec.clone().view(-1)
        changed[p] = (changed[p] + 1) % 5
        out = _secondary_logits(prior, prim, changed.view(1, *secondary)).flatten(2)
        assert torch.equal(out[..., : p + 1], base[..., : p + 1]), p
        if p < total - 1:
            assert not torch.allclose(out[..., p + 1], base[..., p + 1]), p


def test_sampling_gives_codes_of_the_grids_and_ranges():
    prior = _prior((2, 2), (4, 4)).float()
    out = prior.sample(3, generator=torch.Generator().manual_seed(0))
    assert out.primary.shape == (3, 2, 2) and out.secondary.shape == (3, 4, 4)
    assert 0 <= out.primary.min() and out.primary.max() < 4
    assert 0 <= out.secondary.min() and out.secondary.max() < 5


def test_config_records_the_conditioning_and_old_configs_are_the_average_kind():
    new = _prior((2, 2), (1, 1))
    assert new.config()["sizes"]["conditioning"] == "layout"
    assert build_prior("pixelcnn", new.config()).conditioning == "layout"
    old = _prior((2, 2), (1, 1), "average")
    legacy = old.config()
    del legacy["sizes"]["conditioning"]  # what a prior saved before issue 21 holds
    rebuilt = build_prior("pixelcnn", legacy)
    assert rebuilt.conditioning == "average"
    rebuilt.double().load_state_dict(old.state_dict())  # strict: the same weights fit
    codes = Codes(torch.randint(0, 4, (2, 2, 2)), torch.randint(0, 5, (2, 1, 1)),
                  meta={"codebook_sizes": [4, 5]})
    assert rebuilt.nll(codes) == old.nll(codes)
    with pytest.raises(RuntimeError):  # load_prior turns this into one MvqError line
        rebuilt.load_state_dict(new.state_dict())


def test_unknown_conditioning_refused():
    with pytest.raises(MvqError, match="conditioning must be one of layout, average, got 'x'"):
        _prior((2, 2), (1, 1), "x")


def test_a_checkpoint_saved_before_the_conditioning_loads_as_the_average_kind(tmp_path,
                                                                               monkeypatch):
    """A prior folder whose config.json has no 'conditioning' (as mvq wrote them before) loads
    as the averaging kind with its weights; today's folders record 'layout'."""
    old = _prior((2, 2), (1, 1), "average").float()
    legacy = old.config()
    del legacy["sizes"]["conditioning"]
    monkeypatch.setattr(old, "config", lambda: legacy)
    old.save_pretrained(tmp_path / "old")
    got, info = load_prior(tmp_path / "old")
    assert "conditioning" not in info["prior"]["sizes"] and got.conditioning == "average"
    codes = Codes(torch.randint(0, 4, (3, 2, 2)), torch.randint(0, 5, (3, 1, 1)),
                  meta={"codebook_sizes": [4, 5]})
    assert got.nll(codes) == old.nll(codes)
    _prior((2, 2), (1, 1)).float().save_pretrained(tmp_path / "new")
    assert load_prior(tmp_path / "new")[0].conditioning == "layout"
