import re

import pytest
import torch
from torch import nn

from mvq.errors import MvqError
from mvq.quantize import FSQ, LFQ, MaskedVectorQuantize

# MVQ's secondary code, D' = 5 channels each: a VQ codebook (the paper's), an FSQ code (the
# rounded channels), an LFQ code (the signs), and an LFQ code too large to keep whole (the
# table search scores the codes a batch uses)
SECONDARIES = {
    "vq": lambda: None,  # the layer's own codebook, K' = 6
    "fsq": lambda: FSQ([3, 4, 5, 3, 3], channel_first=True),
    "lfq": lambda: LFQ(5),
}


def _f(d2: int, d: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(d2, 12, 1), nn.Tanh(), nn.Conv2d(12, d, 1),
                         nn.Upsample(size=(2, 2)))


def _mq(naive=False, chunk=3, dtype=torch.float64, j=7, secondary="vq", **kw):
    torch.manual_seed(1)
    second = SECONDARIES[secondary]()
    own = {"dim2": 5, "codebook_size2": 6} if second is None else {}
    # the tests give y2 to `quantize` themselves: the secondary encoder is never run
    mq = MaskedVectorQuantize(4, 6, **own, secondary=second, secondary_encoder=nn.Identity(),
                              f=_f(5, 4), channel_first=True, num_masks=j, chunk_size=chunk,
                              naive=naive, ema=False, restart_dead=False, **kw)
    return mq.to(dtype)


def test_winner_equals_brute_force_argmin():
    mq = _mq()
    e = torch.randn(4, 4, 2, 2, dtype=torch.float64)
    e2 = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    y = torch.randn(4, 4, 2, 2, dtype=torch.float64)
    masks = torch.rand(4, 7, 5, 1, 1) < 0.5
    got = mq.best_masks(e, e2, y, masks)
    for b in range(4):
        dists = [((e[b] + mq.f((e2[b] * masks[b, j])[None])[0] - y[b]) ** 2).sum()
                 for j in range(7)]
        assert torch.equal(got[b], masks[b, int(torch.stack(dists).argmin())])
    # a mask bank shared by the batch gives the same search
    bank = masks[0]
    got_shared = mq.best_masks(e, e2, y, bank)
    for b in range(4):
        dists = [((e[b] + mq.f((e2[b] * bank[j])[None])[0] - y[b]) ** 2).sum() for j in range(7)]
        assert torch.equal(got_shared[b], bank[int(torch.stack(dists).argmin())])


@pytest.mark.parametrize("secondary", sorted(SECONDARIES))
@pytest.mark.parametrize("shared", [False, True])
def test_chunked_search_gradients_equal_naive_all_hypotheses(secondary, shared):
    """Per-instance masks (the chunked search) and a bank shared by the batch (the table
    search), for every secondary quantizer: the naive form's winners and gradients."""
    torch.manual_seed(0)
    y = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    y2 = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    masks = torch.rand(7, 5, 1, 1) < 0.5 if shared else torch.rand(3, 7, 5, 1, 1) < 0.5
    grads = []
    for naive in (False, True):
        mq = _mq(naive=naive, secondary=secondary, search="table" if shared else "auto")
        yy, yy2 = y.clone().requires_grad_(), y2.clone().requires_grad_()
        out = mq.quantize(yy, masks=masks, y2=yy2)
        loss = out.mhd_loss + (out.y_hat ** 3).sum() + out.primary.loss + out.secondary.loss
        loss.backward()
        grads.append([yy.grad, yy2.grad] + [p.grad for p in mq.parameters()])
        if naive:
            naive_mask = out.mask
        else:
            eff_mask = out.mask
    assert torch.equal(eff_mask, naive_mask)
    for a, b in zip(*grads):
        assert a is not None and b is not None
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
    assert grads[0][1].abs().sum() > 0  # the secondary encoder output gets gradient


@pytest.mark.parametrize("secondary", ["fsq", "lfq", "lfq-large"])
def test_channel_code_secondary_winners_equal_brute_force(secondary, monkeypatch):
    """An FSQ / LFQ secondary: the chunked and the table search (over every implicit code, or
    the batch's codes when the codebook is too large to keep) pick the brute-force winner of
    ||e + f(e' * m_j) - y||^2, with e' the rounded channels / signs."""
    large = secondary == "lfq-large"
    if large:  # 32 codes, more than the 8 kept whole
        monkeypatch.setattr("mvq.quantize.secondary.TABLE_CODES", 8)
    mq = _mq(secondary=secondary.split("-")[0])
    assert (mq.secondary.embedding is None) == large
    e = torch.randn(6, 4, 2, 2, dtype=torch.float64)
    y = torch.randn(6, 4, 2, 2, dtype=torch.float64)
    q2 = mq.secondary.quantize(torch.randn(6, 5, 1, 1, dtype=torch.float64))
    e2, ids2 = q2.codes, q2.indices
    assert torch.equal(mq.secondary.lookup(ids2), e2)  # ids give the codes back
    bank = torch.rand(9, 5, 1, 1) < 0.5
    for search in ("chunked", "table"):
        mq.search = search
        for train in (True, False):
            mq.train(train)
            got = mq.best_masks(e, e2, y, bank, ids2)
            for b in range(6):
                dists = [((e[b] + mq.f((e2[b] * bank[j])[None])[0] - y[b]) ** 2).sum()
                         for j in range(9)]
                assert torch.equal(got[b], bank[int(torch.stack(dists).argmin())])


def test_only_winner_gets_gradient_in_f():
    """With J identical masks but one, the loss gradient flows only through the winning path."""
    mq = _mq(j=2)
    y = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    y2 = torch.randn(1, 5, 1, 1, dtype=torch.float64)
    all_off = torch.zeros(1, 2, 5, 1, 1, dtype=torch.bool)
    all_off[0, 1] = True  # hypothesis 1 keeps every channel
    out = mq.quantize(y, masks=all_off, y2=y2)
    d = [((out.primary.codes + mq.f(out.secondary.codes * all_off[0, j].double()) - y) ** 2).sum()
         for j in range(2)]
    assert torch.equal(out.mask[0], all_off[0, int(torch.stack(d).argmin())].permute(1, 2, 0))


def test_eval_search_is_deterministic_and_batch_independent():
    mq = _mq().eval()
    y = torch.randn(5, 4, 2, 2, dtype=torch.float64)
    y2 = torch.randn(5, 5, 1, 1, dtype=torch.float64)
    a, b = mq.quantize(y, y2=y2), mq.quantize(y, y2=y2)
    assert torch.equal(a.mask, b.mask)
    single = mq.quantize(y[2:3], y2=y2[2:3])
    assert torch.equal(single.mask[0], a.mask[2])


def test_masks_are_bernoulli_half():
    mq = _mq()
    m = mq.sample_masks(64, 128, torch.zeros(1, 5, 1, 1))
    assert m.shape == (64, 128, 5, 1, 1)
    assert abs(m.float().mean().item() - 0.5) < 0.02


def test_decode_codes_matches_forward():
    mq = _mq().eval()
    y = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    y2 = torch.randn(2, 5, 1, 1, dtype=torch.float64)
    out = mq.quantize(y, y2=y2)
    again = mq.decode_codes(out.primary.indices, out.secondary.indices, out.mask)
    assert torch.allclose(again, out.y_hat)


def test_search_memory_bounded_by_chunk():
    """The search never runs f on more than batch * chunk_size hypotheses at once."""
    mq = _mq(chunk=4, j=64, dtype=torch.float32)
    seen = []
    mq.f.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    mq.quantize(torch.randn(3, 4, 2, 2), y2=torch.randn(3, 5, 1, 1))
    assert max(seen) <= 3 * 4
    assert len(seen) == 64 // 4 + 1  # 16 no-grad chunks + the winner with autograd


@pytest.mark.parametrize("bad", [0, -1])
def test_num_masks_validated(bad):
    with pytest.raises(MvqError, match="num_masks"):
        MaskedVectorQuantize(2, 4, num_masks=bad)


def test_quantize_checks_its_maps_and_masks_at_the_door():
    """`quantize` is public: a wrong map or mask is one MvqError naming what it expected."""
    mq = MaskedVectorQuantize(4, 8, dim2=3)
    y = torch.randn(2, 4, 1, 1)
    assert mq.quantize(y, masks=torch.ones(5, 3, 1, 1, dtype=torch.bool)).mask.shape == (2, 1, 1, 3)
    bad = [({"y": torch.randn(2, 5, 1, 1)}, r"y, the primary encoder output, must be a float "
            r"\(B, 4, H, W\) map"),
           ({"y": "x"}, "found str"),
           ({"y2": torch.randn(2, 4, 1, 1)}, r"y2, the secondary projection, must be a float "
            r"\(B, 3, H, W\)"),
           ({"masks": torch.full((5, 3, 1, 1), 0.3)}, r"mask must hold bits"),
           ({"masks": torch.ones(0, 3, 1, 1, dtype=torch.bool)}, "J >= 1"),
           ({"masks": "bits"}, "masks must be bits"),
           ({"masks": torch.ones(5, 4, 1, 1, dtype=torch.bool)}, r"\(J, 3, 1, 1\) shared"),
           ({"masks": torch.ones(3, 5, 3, 1, 1, dtype=torch.bool)}, "batch of 2")]
    for kwargs, message in bad:
        with pytest.raises(MvqError, match=message):
            mq.quantize(**{"y": y, **kwargs})
    with pytest.raises(MvqError, match=r"VectorQuantize.quantize takes a float \(B, 4, H, W\)"):
        mq.primary.quantize(torch.zeros(2, 4, 1, 1, dtype=torch.long))
    # 0 / 1 numbers are bits too: the same winners as the bool masks
    bank = torch.rand(5, 3, 1, 1) < 0.5
    mq.eval()
    assert torch.equal(mq.quantize(y, masks=bank.float()).mask, mq.quantize(y, masks=bank).mask)


def test_the_merged_engine_names_say_what_to_write():
    """mvq 0.2's engine classes are gone (one class per quantizer): importing one is an
    MvqError naming the layer call that replaces it, argument order included."""
    import mvq.quantize

    for name, layer in (("VectorQuantizer", "VectorQuantize(dim, codebook_size"),
                        ("MaskedQuantizer", "MaskedVectorQuantize("),
                        ("MultiChannelQuantizer", "MultiChannelVectorQuantize(")):
        with pytest.raises(MvqError, match=re.escape(layer)):
            getattr(mvq.quantize, name)
    with pytest.raises(AttributeError):
        mvq.quantize.NoSuchQuantizer  # noqa: B018
    from mvq.quantize.layers import MaskedOutput, QuantizeOutput, VectorQuantize  # old path

    assert VectorQuantize is mvq.quantize.VectorQuantize
    assert QuantizeOutput is mvq.quantize.QuantizeOutput and MaskedOutput.__name__


def test_a_channel_code_secondary_is_called_as_its_layer():
    """Called as a module, the secondary (VQ or channel code) gives the drop-in contract."""
    for second in (None, FSQ([3, 4, 5], channel_first=True)):
        mq = MaskedVectorQuantize(4, 8, dim2=None if second else 3, secondary=second)
        quantized, ids, loss = mq.secondary(torch.randn(2, 3, 1, 1))
        assert quantized.shape == (2, 3, 1, 1) and ids.shape == (2, 1, 1) and loss.dim() == 0
