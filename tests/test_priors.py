"""Priors: KV cache vs full recompute, causality, MaskGIT schedule/loss, fitting tiny data sets,
sampling filters. References are computed independently inside each test."""

import math

import pytest
import torch
import torch.nn.functional as F

from mvq.errors import MvqError
from mvq.priors import (
    GPT,
    TABLE4,
    GPTConfig,
    MaskGIT,
    MaskGITConfig,
    MVQPrior,
    PixelCNN,
    filter_top_k,
    filter_top_p,
    mask_schedule,
    sample_logits,
    table4_size,
)
from mvq.values.codes import Codes
from mvq.values.decoding import Draw


def tiny_gpt(vocab=11, block=12, classes=0, dtype=torch.float32) -> GPT:
    cfg = GPTConfig(vocab, block, n_layer=2, n_head=2, n_embd=16, num_classes=classes)
    return GPT(cfg).to(dtype).eval()


# --- GPT: cache, causality, sizes ----------------------------------------------------------

@pytest.mark.parametrize("classes", [0, 3])
def test_kv_cache_matches_full_recompute_float64(classes):
    model = tiny_gpt(classes=classes, dtype=torch.float64)
    idx = torch.randint(0, 11, (3, 12))
    cond = torch.tensor([0, 2, 1]) if classes else None
    with torch.no_grad():
        full, _ = model(idx, cond=cond)  # (3, 12, V): logits[:, t] predicts idx[:, t]
        cache = model.new_cache(3)
        steps = [model.step_logits(None, cache, cond, batch=3)]
        for t in range(11):
            steps.append(model.step_logits(idx[:, t:t + 1], cache))
        stepped = torch.stack(steps, 1)
        # a multi-token prefill after a filled cache (the masked-attention path) agrees too
        cache2 = model.new_cache(3)
        model.step_logits(idx[:, :4], cache2, cond)
        chunk = model._trunk(model._embed(idx[:, 4:9], cache2.pos), cache2)
        chunk_logits = model.head(chunk)
    assert stepped.dtype == torch.float64
    torch.testing.assert_close(stepped, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunk_logits, full[:, 5:10], atol=1e-6, rtol=0)
    model.step_logits(idx[:, 11:], cache)  # start + 12 tokens: the cache is full
    with pytest.raises(MvqError):
        model.step_logits(idx[:, :1], cache)


def _stepped_logits(model, idx):
    cache = model.new_cache(idx.shape[0])
    steps = [model.step_logits(None, cache, batch=idx.shape[0])]
    for t in range(idx.shape[1] - 1):
        steps.append(model.step_logits(idx[:, t:t + 1], cache))
    return torch.stack(steps, 1)


def test_single_token_step_follows_weight_updates():
    """The decode step keeps transposed weight copies; an optimizer step, load_state_dict and a
    dtype change must all be seen by the next sequence."""
    model = tiny_gpt(dtype=torch.float64)
    idx = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        before = _stepped_logits(model, idx)  # builds the copies
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(idx, targets=idx)[1].backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        full, _ = model(idx)
        after = _stepped_logits(model, idx)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, full, atol=1e-6, rtol=0)
    other = tiny_gpt(dtype=torch.float64)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_stepped_logits(model, idx), other(idx)[0], atol=1e-6, rtol=0)
        model.float()
        stepped = _stepped_logits(model, idx)
        assert stepped.dtype == torch.float32
        torch.testing.assert_close(stepped, model(idx)[0], atol=1e-4, rtol=0)


def test_cached_and_naive_generation_agree():
    model = tiny_gpt(dtype=torch.float64)
    a = model.generate(4, 12, generator=torch.Generator().manual_seed(3))
    b = model.generate(4, 12, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert a.shape == (4, 12) and torch.equal(a, b)
    model.fused_decode = False  # the cached steps through Block, not the fused single-token step
    c = model.generate(4, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, c)


def test_gpt_is_causal():
    model = tiny_gpt(dtype=torch.float64)
    idx = torch.randint(0, 11, (1, 12))
    with torch.no_grad():
        base, _ = model(idx)
        for t in range(12):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 1) % 11
            out, _ = model(changed)
            assert torch.equal(out[0, : t + 1], base[0, : t + 1]), t  # logits <= t see tokens < t
            if t < 11:
                assert not torch.allclose(out[0, t + 1], base[0, t + 1])


def test_table4_sizes_and_param_counts():
    assert TABLE4["4+1"]["primary"] == dict(n_layer=8, n_head=8, n_embd=128)
    assert table4_size(1024) == TABLE4["16+1"] and table4_size(3) == TABLE4["4+1"]
    for key, (p_m, s_m) in {"1+1": (0.2, 0.2), "4+1": (1.6, 0.8), "16+1": (9.5, 3.2)}.items():
        sizes = TABLE4[key]
        n1 = GPT(GPTConfig(256, 16, **sizes["primary"])).num_params / 1e6
        n2 = GPT(GPTConfig(512, 17, **sizes["secondary"])).num_params / 1e6
        assert abs(n1 - p_m) / p_m < 0.2 and abs(n2 - s_m) / s_m < 0.4, (key, n1, n2)
    with pytest.raises(MvqError):
        GPTConfig(10, 4, n_head=3, n_embd=16)


# --- sampling filters ------------------------------------------------------------------------

def test_top_k_one_is_argmax_and_top_p_keeps_minimal_nucleus():
    logits = torch.randn(64, 30)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_logits(logits, 1.0, top_k=1, generator=g), logits.argmax(-1))
    kept = filter_top_k(logits, 5)
    assert (kept.isfinite().sum(-1) == 5).all()

    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    for p, keep in [(0.4, [1]), (0.75, [1, 3]), (0.9, [1, 2, 3]), (0.99, [0, 1, 2, 3])]:
        out = filter_top_p(logits, p)
        assert sorted(out[0].isfinite().nonzero().flatten().tolist()) == keep, p
        assert torch.equal(out[0, keep], logits[0, keep])  # kept logits untouched
    for _ in range(20):  # samples come only from the nucleus
        assert sample_logits(logits, 1.0, top_p=0.75, generator=g).item() in (1, 3)


# --- fitting tiny data sets ------------------------------------------------------------------

def _fit(model, batch_fn, steps=300, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = batch_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def test_tiny_gpt_memorises_four_sequences():
    data = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [7, 7, 0, 0, 7, 7],
                         [2, 4, 6, 8, 0, 2]])
    cond = torch.tensor([0, 1, 2, 3])  # the class picks the sequence: NLL can reach zero
    model = GPT(GPTConfig(9, 6, n_layer=2, n_head=2, n_embd=32, num_classes=4))
    _fit(model, lambda: model(data, data, cond)[1])
    with torch.no_grad():
        assert model(data, data, cond)[1].item() < 0.05
    out = model.generate(4, 6, Draw(top_k=1), cond=cond)
    assert torch.equal(out, data)
    out = model.generate(8, 6, Draw(temperature=0.1), cond=cond.repeat(2),
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, data.repeat(2, 1))


def _mvq_codes(n_mask=4):
    primary = torch.tensor([[[0, 1], [2, 3]], [[3, 2], [1, 0]], [[1, 1], [0, 0]],
                            [[2, 0], [2, 0]]])
    secondary = torch.tensor([[[4]], [[1]], [[0]], [[5]]])  # a function of the primary ids
    mask = torch.rand(4, 1, 1, n_mask) < 0.5
    return Codes(primary, secondary, mask, {"model": "mvqvae", "codebook_sizes": [4, 6]})


def test_mvq_prior_fits_and_samples_codes():
    codes = _mvq_codes()
    small = {"primary": dict(n_layer=2, n_head=2, n_embd=32),
             "secondary": dict(n_layer=2, n_head=2, n_embd=32)}
    cond = torch.arange(4)
    prior = MVQPrior.from_codes(codes, sizes=small, num_classes=4)
    assert prior.primary_shape == (2, 2) and prior.secondary_shape == (1, 1)
    assert prior.mask_dim == 4 and (prior.k1, prior.k2) == (4, 6)
    _fit(prior, lambda: prior(codes, cond)[0])
    nll = prior.nll(codes, cond)
    assert set(nll) == {"primary", "secondary"} and max(nll.values()) < 0.05, nll

    out = prior.sample(4, top_k=1, labels=cond)
    assert torch.equal(out.primary, codes.primary) and torch.equal(out.secondary, codes.secondary)
    assert out.meta["codebook_sizes"] == [4, 6]

    # masks: random Bernoulli(0.5), reproducible from the seed, independent of the tokens
    big = prior.sample(256, temperature=0.1, labels=torch.arange(4).repeat(64), seed=7)
    assert big.primary.shape == (256, 2, 2) and big.secondary.shape == (256, 1, 1)
    assert big.mask.shape == (256, 1, 1, 4) and big.mask.dtype == torch.bool
    assert abs(big.mask.float().mean().item() - 0.5) < 0.05
    again = prior.sample(256, temperature=0.1, labels=torch.arange(4).repeat(64), seed=7)
    assert torch.equal(again.mask, big.mask) and torch.equal(again.primary, big.primary)
    other = prior.sample(256, temperature=0.1, labels=torch.arange(4).repeat(64), seed=8)
    assert not torch.equal(other.mask, big.mask)
    naive = prior.sample(256, temperature=0.1, labels=torch.arange(4).repeat(64), seed=7,
                         use_cache=False)
    assert torch.equal(naive.secondary, big.secondary) and torch.equal(naive.mask, big.mask)


def test_mvq_prior_hierarchical_and_one_level_codes():
    codes = _mvq_codes()
    hier = Codes(codes.primary, codes.secondary, None, codes.meta)
    prior = MVQPrior.from_codes(hier)  # default sizes: Table 4, 4+1
    assert prior.primary.cfg.n_layer == 8 and prior.secondary.cfg.n_embd == 128
    out = prior.sample(3)
    assert out.mask is None and out.secondary.shape == (3, 1, 1)
    assert out.secondary.max() < 6 and out.primary.max() < 4
    assert set(prior.nll(hier)) == {"primary", "secondary"}

    rebuilt = MVQPrior(**prior.config())
    rebuilt.load_state_dict(prior.state_dict())
    assert rebuilt.nll(hier) == prior.nll(hier)

    one = Codes(codes.primary, meta={"codebook_sizes": [4]})
    prior1 = MVQPrior.from_codes(one, sizes={"primary": dict(n_layer=1, n_head=1, n_embd=8)})
    assert set(prior1.nll(one)) == {"primary"}
    assert prior1.sample(2).secondary is None
    with pytest.raises(MvqError):
        prior.nll(Codes(torch.zeros(1, 3, 3, dtype=torch.long), codes.secondary[:1]))


# --- MaskGIT ---------------------------------------------------------------------------------

def test_mask_schedule_values():
    assert mask_schedule(0, 8, 100) == 100 and mask_schedule(8, 8, 100) == 0
    counts = [mask_schedule(s, 12, 64) for s in range(13)]
    assert counts == sorted(counts, reverse=True)
    assert counts[6] == math.floor(64 * math.cos(math.pi / 4))


@pytest.mark.parametrize("channels,steps", [(1, 6), (4, 12), (3, 10)])
def test_maskgit_decoding_follows_schedule(channels, steps):
    cfg = MaskGITConfig(vocab_size=7, seq_len=6, channels=channels, n_layer=1, n_head=2,
                        n_embd=16)
    model = MaskGIT(cfg)
    n_tok = 6 * channels
    out, history = model.generate(5, steps, generator=torch.Generator().manual_seed(0),
                                  return_history=True)
    assert len(history) == steps and model.mask_id == 7
    for s, ids in enumerate(history, start=1):
        per_sample = (ids == model.mask_id).view(5, -1).sum(1)
        assert (per_sample == mask_schedule(s, steps, n_tok)).all(), s
        if s > 1:  # decided entries never change afterwards
            prev = history[s - 2]
            decided = prev != model.mask_id
            assert torch.equal(ids[decided], prev[decided])
    assert out.shape == (5, 6, channels)
    assert (out != model.mask_id).all() and out.min() >= 0 and out.max() < 7


def test_maskgit_keeps_the_most_confident_entries():
    model = MaskGIT(MaskGITConfig(vocab_size=7, seq_len=8, channels=2, n_layer=1, n_head=2,
                                  n_embd=16)).eval()
    # greedy draws, no noise: after step 1 the kept entries are those with the largest max-prob
    out, history = model.generate(3, 8, Draw(temperature=0.0), return_history=True)
    with torch.no_grad():
        logp = model(torch.full((3, 8, 2), 7)).log_softmax(-1).max(-1).values.view(3, -1)
    kept = (history[0] != 7).view(3, -1)
    n_kept = 16 - mask_schedule(1, 8, 16)
    assert (kept.sum(1) == n_kept).all()
    assert torch.equal(kept, logp >= logp.topk(n_kept, dim=1).values[:, -1:])


def test_maskgit_never_emits_mask_id_even_when_favoured():
    model = MaskGIT(MaskGITConfig(vocab_size=5, seq_len=4, channels=2, n_layer=1, n_head=1,
                                  n_embd=8))
    with torch.no_grad():
        model.tok.weight[5] = 100.0  # a mask embedding that would dominate any input
    out = model.generate(16, 8, Draw(temperature=2.0), generator=torch.Generator().manual_seed(2))
    assert out.max() < 5 and model.head.out_features == 2 * 5


def test_maskgit_loss_counts_masked_entries_only():
    model = MaskGIT(MaskGITConfig(vocab_size=9, seq_len=5, channels=3, n_layer=1, n_head=2,
                                  n_embd=16))
    ids = torch.randint(0, 9, (4, 5, 3))
    loss, mask = model.loss(ids, generator=torch.Generator().manual_seed(0))
    assert mask.any() and mask.shape == ids.shape
    logits = model(torch.where(mask, torch.full_like(ids, 9), ids))
    logp = logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    hand = -(logp * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, hand)
    # targets at unmasked entries do not matter (their inputs do, so keep those fixed)
    fixed = torch.zeros_like(mask)
    fixed[:, 0, 0] = True
    loss_a, _ = model.loss(ids, mask=fixed)
    ids2 = ids.clone()
    ids2[:, 1:] = (ids2[:, 1:] + 1) % 9
    logits2 = model(torch.where(fixed, torch.full_like(ids, 9), ids2))
    hand2 = F.cross_entropy(logits2[fixed], ids2[fixed])
    torch.testing.assert_close(model.loss(ids2, mask=fixed)[0], hand2)
    assert loss_a.ndim == 0
    # the number masked per sequence follows ceil(cos(pi/2 r) N) in [1, N]
    _, m = model.loss(ids.repeat(64, 1, 1), generator=torch.Generator().manual_seed(1))
    counts = m.view(256, -1).sum(1)
    assert counts.min() >= 1 and counts.max() <= 15 and 5 < counts.float().mean() < 14


def test_maskgit_learns_tiny_multichannel_set():
    data = torch.tensor([[[0, 1], [2, 3], [4, 5]], [[5, 4], [3, 2], [1, 0]]])
    model = MaskGIT(MaskGITConfig(vocab_size=6, seq_len=3, channels=2, n_layer=2, n_head=2,
                                  n_embd=32, num_classes=2))
    cond = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(0)
    _fit(model, lambda: model.loss(data.repeat(8, 1, 1), cond.repeat(8), generator=g)[0])
    out = model.generate(2, 6, Draw(temperature=0.0), cond=cond)
    assert torch.equal(out, data)


# --- PixelCNN --------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [3, 5])
def test_pixelcnn_raster_causality(kernel):
    model = PixelCNN(6, channels=8, n_layers=3, kernel_size=kernel).double().eval()
    h, w = 5, 4
    ids = torch.randint(0, 6, (1, h, w))
    with torch.no_grad():
        base = model(ids).flatten(2)  # (1, K, H*W) in raster order
        for t in range(h * w):
            changed = ids.clone().view(-1)
            changed[t] = (changed[t] + 1) % 6
            out = model(changed.view(1, h, w)).flatten(2)
            assert torch.equal(out[..., : t + 1], base[..., : t + 1]), t
            if t < h * w - 1:  # the next position does see token t
                assert not torch.allclose(out[..., t + 1], base[..., t + 1]), t


def test_pixelcnn_learns_and_samples():
    data = torch.tensor([[[0, 1, 2], [3, 0, 1]], [[2, 2, 2], [1, 1, 1]]])
    model = PixelCNN(4, channels=16, n_layers=3, num_classes=2)
    cond = torch.tensor([0, 1])
    _fit(model, lambda: model.loss(data, cond), steps=200, lr=1e-2)
    assert model.loss(data, cond).item() < 0.05
    assert model.forward(data, cond).shape == (2, 4, 2, 3)
    assert torch.equal(model.sample(2, 2, 3, Draw(top_k=1), cond=cond), data)


def test_transformer_configs_refuse_bad_sizes():
    with pytest.raises(MvqError, match="n_embd=30 must be divisible by n_head=4"):
        GPTConfig(10, 8, n_embd=30)
    with pytest.raises(MvqError, match="block_size must be >= 1"):
        GPTConfig(10, 0)
    with pytest.raises(MvqError, match="n_embd=30 must be divisible by n_head=4"):
        MaskGITConfig(10, 8, n_embd=30)
    with pytest.raises(MvqError, match="channels must be >= 1"):
        MaskGITConfig(10, 8, channels=0)
    with pytest.raises(MvqError, match="n_layer must be >= 1"):
        MaskGITConfig(10, 8, n_layer=0)
