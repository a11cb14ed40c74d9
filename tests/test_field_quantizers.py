"""The field's quantizers as mvq layers (FSQ, LFQ, residual VQ): checked against
vector-quantize-pytorch 1.32 (the independent reference, with its weights copied in) and
against brute-force loops written here; mvq's contract (argument checks, MvqError on bad input,
fp32 under autocast, empty batches, straight-through gradients) on each."""

import math
import re

import pytest
import torch

from mvq.errors import MvqError
from mvq.quantize import lfq
from mvq.quantize.fsq import FSQ
from mvq.quantize.lfq import LFQ
from mvq.quantize.residual import ResidualVQ

# ---------------------------------------------------------------------------------------- FSQ


def _fsq_pair(levels, dim):
    """mvq's FSQ and the reference's on the same weights. The definitions were read first and
    match: the same bound (h = (L-1)(1+1e-3)/2, offset 1/2 for even L, shift atanh(offset/h)),
    rounding, scaling by L//2 and mixed-radix ids with the first channel least significant;
    projections are nn.Linear with a bias in both, so their weights are copied into ours."""
    from vector_quantize_pytorch import FSQ as Reference

    ref = Reference(levels=levels, dim=dim)
    ours = FSQ(levels, dim)
    assert ours.has_projections == ref.has_projections
    if ours.has_projections:
        ours.project_in.load_state_dict(ref.project_in.state_dict())
        ours.project_out.load_state_dict(ref.project_out.state_dict())
    return ours, ref


@pytest.mark.parametrize("levels,dim", [([8, 5, 5, 5], None), ([7, 6, 5], 12), ([4, 3], None)])
def test_fsq_matches_vector_quantize_pytorch(levels, dim):
    ours, ref = _fsq_pair(levels, dim)
    x = 2 * torch.randn(3, 40, ours.dim)
    quantized, indices, loss = ours(x)
    want, want_ids = ref(x)
    assert torch.equal(indices, want_ids.long())
    assert torch.allclose(quantized, want, atol=1e-6, rtol=0)
    if not ours.has_projections:
        assert torch.equal(quantized, want)
    assert loss.shape == () and float(loss) == 0.0
    assert ours.codebook_size == ref.codebook_size == math.prod(levels)
    assert ours.bits_per_token == pytest.approx(sum(math.log2(v) for v in levels))
    # every code of the implicit codebook, in the reference's order
    every = torch.arange(ours.codebook_size)
    assert torch.equal(ours.indices_to_codes(every), ref.implicit_codebook)


def test_fsq_codes_are_the_grid_and_ids_round_trip():
    fsq = FSQ([8, 5, 3])
    x = 3 * torch.randn(2, 4, 6, 3)  # (B, H, W, D) channels last: any (B, ..., D)
    quantized, indices, _ = fsq(x)
    assert indices.shape == (2, 4, 6) and indices.dtype == torch.int64
    half = torch.tensor([4, 2, 1])
    levels = quantized * half  # integers in -L//2 .. (L-1)//2
    assert torch.equal(levels, levels.round())
    assert (levels >= -half).all() and (levels <= torch.tensor([3, 2, 1])).all()
    digits = levels + half
    assert torch.equal(indices, digits[..., 0] + 8 * digits[..., 1] + 40 * digits[..., 2])
    assert torch.equal(fsq.get_output_from_indices(indices), quantized)
    every = fsq.get_output_from_indices(torch.arange(fsq.codebook_size)[None])[0]
    assert len(torch.unique(every, dim=0)) == fsq.codebook_size  # prod(levels) distinct codes
    assert torch.equal(fsq.codes_to_indices(every), torch.arange(fsq.codebook_size))


def test_fsq_channel_first_and_projection_round_trip():
    fsq = FSQ([5, 5, 5], dim=8, channel_first=True)
    maps = torch.randn(2, 8, 3, 4)
    quantized, indices, _ = fsq(maps)
    assert quantized.shape == maps.shape and indices.shape == (2, 3, 4)
    assert torch.allclose(fsq.get_output_from_indices(indices), quantized, atol=1e-6)
    last = FSQ([5, 5, 5], dim=8)
    last.load_state_dict(fsq.state_dict())
    q_last, ids_last, _ = last(maps.permute(0, 2, 3, 1))
    assert torch.equal(ids_last, indices)
    assert torch.allclose(q_last.permute(0, 3, 1, 2), quantized, atol=1e-6)


def test_fsq_gradient_is_straight_through():
    fsq = FSQ([8, 5, 5, 5])
    x = torch.randn(2, 5, 4, requires_grad=True)
    quantized, _, loss = fsq(x)
    (quantized.sum() + loss).backward()
    bounded = fsq.bound(x.detach())  # d/dx of bound(x) / (L//2): the rounding passes through
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        (fsq.bound(z) / torch.tensor([4.0, 2.0, 2.0, 2.0])).sum().backward()
    assert bounded.shape == x.shape
    assert torch.allclose(x.grad, z.grad) and x.grad.abs().min() > 0


# ---------------------------------------------------------------------------------------- LFQ


def _lfq_pair(bits, dim, tau, scale=1.0):
    """mvq's LFQ and the reference's on the same weights (read first: the same sign codes,
    most-significant-first binary ids, softmax of 2 tau z.c over the codes (-tau||z - c||^2 up
    to a constant) and loss = entropy weight x (per-sample - gamma x batch entropy) +
    commitment weight x mse(z, sg[q]); projections nn.Linear with a bias in both)."""
    from vector_quantize_pytorch import LFQ as Reference

    ref = Reference(dim=dim or bits, codebook_size=2 ** bits, entropy_loss_weight=0.1,
                    commitment_loss_weight=0.25, diversity_gamma=0.7, codebook_scale=scale)
    ours = LFQ(bits, dim, entropy_loss_weight=0.1, commitment_loss_weight=0.25,
               diversity_gamma=0.7, inv_temperature=tau, codebook_scale=scale)
    assert ours.has_projections == ref.has_projections
    if ours.has_projections:
        ours.project_in.load_state_dict(ref.project_in.state_dict())
        ours.project_out.load_state_dict(ref.project_out.state_dict())
    return ours, ref


def _brute_entropies(z, tau, scale, clamp=None):
    """Both entropies from the softmax over the enumerated 2^bits codebook, in float64;
    ``clamp``: log(max(p, clamp)) as vector-quantize-pytorch takes it."""
    bits = z.shape[-1]
    ids = torch.arange(2 ** bits)
    book = ((ids[:, None] >> torch.arange(bits - 1, -1, -1)) & 1).double() * 2 * scale - scale
    prob = (-tau * torch.cdist(z.double(), book) ** 2).softmax(-1)

    def entropy(p):  # 0 log 0 = 0
        return -(torch.xlogy(p, p.clamp_min(clamp)) if clamp else torch.xlogy(p, p)).sum(-1)

    return entropy(prob).mean(), entropy(prob.mean(0))


@pytest.mark.parametrize("bits,dim,tau,scale", [(4, None, 0.5, 1.0), (3, 7, 0.3, 0.5)])
def test_lfq_matches_vector_quantize_pytorch(bits, dim, tau, scale):
    """Small tau: every code's probability is above the reference's 1e-5 clamp, so the
    entropy terms are the same quantities and the whole loss agrees."""
    ours, ref = _lfq_pair(bits, dim, tau, scale)
    x = torch.randn(2, 30, ours.dim)
    quantized, indices, loss = ours(x)
    (want, want_ids, want_loss), parts = ref(x, inv_temperature=tau, return_loss_breakdown=True)
    assert torch.equal(indices, want_ids.long())
    assert torch.equal(quantized, want) if dim is None else torch.allclose(quantized, want,
                                                                            atol=1e-6)
    assert torch.allclose(loss, want_loss, atol=1e-6)
    with torch.no_grad():
        per_token, average = ours.entropies(ours.project_in(x).reshape(-1, bits))
    assert torch.allclose(per_token, parts.per_sample_entropy, atol=1e-5)
    assert torch.allclose(average, parts.batch_entropy, atol=1e-5)
    assert ours.codebook_size == ref.codebook_size == 2 ** bits and ours.bits_per_token == bits


def test_lfq_entropies_are_exact_where_the_reference_clamps():
    """Default tau = 100: most codes' probabilities are far below 1e-5. Ours are the exact
    entropies; the reference's are the entropies with log(max(p, 1e-5)), a different number."""
    ours, ref = _lfq_pair(5, None, 100.0)
    x = torch.randn(3, 20, 5)
    with torch.no_grad():
        per_token, average = ours.entropies(x.reshape(-1, 5))
    _, parts = ref(x, inv_temperature=100.0, return_loss_breakdown=True)
    exact = _brute_entropies(x.reshape(-1, 5), 100.0, 1.0)
    clamped = _brute_entropies(x.reshape(-1, 5), 100.0, 1.0, clamp=1e-5)
    assert torch.allclose(per_token.double(), exact[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(average.double(), exact[1], rtol=1e-4, atol=1e-6)
    assert torch.allclose(parts.per_sample_entropy.double(), clamped[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(exact[0], clamped[0], rtol=1e-6, atol=0)  # a real difference


def test_lfq_ids_round_trip_and_gradient_is_straight_through():
    layer = LFQ(6, channel_first=True)
    x = (2 * torch.randn(2, 6, 3, 4)).requires_grad_(True)
    quantized, indices, loss = layer(x)
    assert indices.shape == (2, 3, 4) and indices.dtype == torch.int64
    signs = torch.where(x > 0, 1.0, -1.0)
    assert torch.equal(quantized, signs)
    want = ((x > 0).long() * (2 ** torch.arange(5, -1, -1))[None, :, None, None]).sum(1)
    assert torch.equal(indices, want)
    assert torch.equal(layer.get_output_from_indices(indices), quantized)
    quantized.sum().backward(retain_graph=True)
    assert torch.equal(x.grad, torch.ones_like(x))  # identity through the sign
    x.grad = None
    loss.backward()  # entropy + commitment at tau = 100 on large inputs: finite gradients
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lfq_chunked_average_equals_the_whole(monkeypatch):
    """The batch-average entropy built in chunks of tokens (recomputed in backward) gives the
    value and gradient of the one-piece computation."""
    layer = LFQ(5, inv_temperature=1.0)
    z = torch.randn(37, 5, dtype=torch.float64, requires_grad=True)
    whole = layer.entropies(z)[1]
    (grad_whole,) = torch.autograd.grad(whole, z)
    monkeypatch.setattr(lfq, "CHUNK_ELEMENTS", 2 ** 5 * 4)  # 4 tokens at a time
    chunked = layer.entropies(z)[1]
    (grad_chunked,) = torch.autograd.grad(chunked, z)
    assert torch.allclose(whole, chunked) and torch.allclose(grad_whole, grad_chunked)
    assert torch.allclose(whole, _brute_entropies(z.detach(), 1.0, 1.0)[1])


def test_lfq_eval_drops_the_entropy_term():
    layer = LFQ(4, entropy_loss_weight=0.1, commitment_loss_weight=0.25)
    x = torch.randn(2, 9, 4)
    commit = 0.25 * ((x - torch.where(x > 0, 1.0, -1.0)) ** 2).mean()
    assert torch.allclose(layer.eval()(x)[2], commit)
    assert not torch.allclose(layer.train()(x)[2], commit)


# --------------------------------------------------------------------------------- residual VQ


def _brute_residual(tokens, books):
    """The residual loop written out: each stage's nearest code (float64) to what is left."""
    residual, total, ids = tokens.double(), torch.zeros_like(tokens, dtype=torch.float64), []
    for book in books:
        pick = torch.cdist(residual, book.double()).argmin(-1)
        residual, total = residual - book.double()[pick], total + book.double()[pick]
        ids.append(pick)
    return total, torch.stack(ids, -1)


@pytest.mark.parametrize("channel_first", [False, True])
def test_residual_vq_matches_the_loop_over_stages(channel_first):
    rvq = ResidualVQ(5, 12, depth=3, channel_first=channel_first, ema=False,
                     restart_dead=False).eval()
    for k, stage in enumerate(rvq.stages):  # codebooks at shrinking scales, as trained ones are
        stage.embedding.data = torch.randn(12, 5) * 0.5 ** k
    tokens = torch.randn(2, 3, 4, 5)  # (B, H, W, D)
    x = tokens.permute(0, 3, 1, 2) if channel_first else tokens
    quantized, indices, loss = rvq(x)
    total, want = _brute_residual(tokens.reshape(2, 12, 5), [s.embedding for s in rvq.stages])
    assert indices.shape == (2, 3, 4, 3) and torch.equal(indices.reshape(2, 12, 3), want)
    got = quantized.permute(0, 2, 3, 1) if channel_first else quantized
    assert torch.allclose(got.reshape(2, 12, 5).double(), total, atol=1e-5)
    assert len(torch.unique(indices[..., 1])) > 1  # later stages really choose
    hand, residual = 0.0, tokens.reshape(-1, 5)  # sum of (1 + beta) ||r - e||^2 (ema=False)
    for k, stage in enumerate(rvq.stages):
        codes = stage.embedding.detach()[want.reshape(-1, 3)[:, k]]
        hand, residual = hand + 1.25 * ((residual - codes) ** 2).mean(), residual - codes
    assert torch.allclose(loss, hand, atol=1e-5)
    assert torch.allclose(rvq.get_output_from_indices(indices), quantized, atol=1e-5)
    assert rvq.codebook_size == 12 and rvq.bits_per_token == pytest.approx(3 * math.log2(12))


def test_residual_vq_matches_vector_quantize_pytorch():
    """Eval mode (no EMA update, no dead-code restart) with the reference's codebooks copied
    into mvq's stages: the same ids and output. (Its loss in eval mode is zero; mvq's layers
    keep the commitment terms in eval, so the losses are not compared.)"""
    from vector_quantize_pytorch import ResidualVQ as Reference

    ref = Reference(dim=6, num_quantizers=4, codebook_size=16).eval()
    ours = ResidualVQ(6, 16, depth=4).eval()
    for stage, layer in zip(ours.stages, ref.layers):
        stage.embedding.data.copy_(layer._codebook.embed[0])
    x = torch.randn(2, 25, 6)
    quantized, indices, _ = ours(x)
    want, want_ids, _ = ref(x)
    assert torch.equal(indices, want_ids)
    assert torch.allclose(quantized, want, atol=1e-6)
    assert len(torch.unique(indices[..., 3])) > 1


def test_multichannel_vq_matches_vector_quantize_pytorch_heads():
    """The multichannel family's layer is vector-quantize-pytorch's VectorQuantize with heads
    sharing one codebook (``separate_codebook_per_head=False``, ``codebook_dim = dim / heads``:
    no projection): with the reference's codebook copied in, the same ids (chunk k at id k) and
    output in eval mode."""
    from vector_quantize_pytorch import VectorQuantize as Reference

    from mvq import MultiChannelVectorQuantize

    torch.manual_seed(0)
    ref = Reference(dim=8, codebook_size=16, heads=4, codebook_dim=2,
                    separate_codebook_per_head=False).eval()
    ours = MultiChannelVectorQuantize(8, 16, channels=4).eval()
    ours.embedding.data.copy_(ref._codebook.embed[0])
    x = torch.randn(2, 25, 8)
    quantized, indices, _ = ours(x)
    want, want_ids, _ = ref(x)
    assert indices.shape == (2, 25, 4) and torch.equal(indices, want_ids)
    assert torch.allclose(quantized, want, atol=1e-6)
    assert len(torch.unique(indices)) > 4


def test_residual_vq_gradient_and_training_updates():
    rvq = ResidualVQ(4, 8, depth=2)
    x = torch.randn(3, 10, 4, requires_grad=True)
    before = [stage.embedding.detach().clone() for stage in rvq.stages]
    quantized, _, loss = rvq(x)  # training: EMA updates each stage from its own residual
    assert all(not torch.equal(b, s.embedding) for b, s in zip(before, rvq.stages))
    quantized.sum().backward(retain_graph=True)
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through of the whole sum
    x.grad = None
    loss.backward()  # the first stage's commitment reaches the input
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------------- mvq's contract, all

LAYERS = {  # name: (a small layer's factory on D = 6, channel_first)
    "fsq": lambda cf: FSQ([5, 4, 3], dim=6, channel_first=cf),
    "lfq": lambda cf: LFQ(4, dim=6, channel_first=cf),
    "lfq-no-projection": lambda cf: LFQ(6, channel_first=cf),
    "residual": lambda cf: ResidualVQ(6, 8, depth=3, channel_first=cf),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("channel_first", [False, True])
def test_fp32_under_autocast_and_empty_batches(name, channel_first):
    layer = LAYERS[name](channel_first).eval()
    x = torch.randn(2, 6, 3, 2) if channel_first else torch.randn(2, 5, 6)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32
    for a, b in zip(want, got):
        assert torch.equal(a, b)  # the same fp32 maths: autocast changed nothing
    half = layer(x.bfloat16())  # a bf16 input: fp32 inside, bf16 out
    assert half[0].dtype == torch.bfloat16
    empty = torch.randn(0, 6, 3, 2) if channel_first else torch.randn(0, 5, 6)
    quantized, indices, loss = layer.train()(empty)
    assert quantized.shape == empty.shape and indices.shape[0] == 0
    assert loss.shape == () and float(loss) == 0.0
    assert layer.get_output_from_indices(indices).shape == empty.shape
    assert isinstance(layer.codebook_size, int) and layer.bits_per_token > 0


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_inputs_are_refused(name):
    layer = LAYERS[name](False)
    for bad in (torch.randn(2, 5, 4), torch.randn(6), torch.ones(2, 5, 6, dtype=torch.long), "x"):
        with pytest.raises(MvqError, match=type(layer).__name__):
            layer(bad)
    bad_ids = torch.full((2, 5, 3), -1) if name == "residual" else torch.full((2, 5), -1)
    for ids in (torch.zeros(2, 5), [[0]], bad_ids):
        with pytest.raises(MvqError):
            layer.get_output_from_indices(ids)


@pytest.mark.parametrize("make,message", [
    (lambda: FSQ([8, 2, 5]), "each of levels must be an integer >= 3, found 2; e.g. levels="),
    (lambda: FSQ([]), "levels must be a non-empty list"),
    (lambda: FSQ(8), "levels must be a non-empty list of integers >= 3, found 8"),
    (lambda: FSQ([8, 5.0]), "found 5.0"),
    (lambda: FSQ([8, 5], dim=0), "dim must be an integer >= 1, found 0; e.g. dim=64"),
    (lambda: FSQ([8, 5], channel_first=1), "channel_first must be True or False, found 1"),
    (lambda: FSQ([8, 5], num_codebooks=2), "num_codebooks= is vector-quantize-pytorch's"),
    (lambda: FSQ([8, 5], bogus=1), "unknown argument bogus=1; its arguments are levels"),
    (lambda: FSQ([8] * 22), "do not fit int64 ids"),
    (lambda: LFQ(0), "bits must be an integer in [1, 62], found 0; e.g. bits=10"),
    (lambda: LFQ(63, entropy_loss_weight=0), "bits must be an integer in [1, 62], found 63"),
    (lambda: LFQ(True), "bits must be an integer in [1, 62], found True"),
    (lambda: LFQ(25), "bits=25 is beyond the memory bound of bits <= 24; use e.g. bits=18"),
    (lambda: LFQ(4, dim=2.5), "dim must be an integer >= 1, found 2.5"),
    (lambda: LFQ(4, entropy_loss_weight=-1), "entropy_loss_weight must be a finite number >= 0"),
    (lambda: LFQ(4, inv_temperature=0), "inv_temperature must be a finite number > 0"),
    (lambda: LFQ(4, diversity_gamma=float("nan")), "diversity_gamma must be a finite number"),
    (lambda: LFQ(4, codebook_scale="1"), "codebook_scale must be a finite number > 0, found '1'"),
    (lambda: LFQ(4, codebook_size=16), "codebook_size= is vector-quantize-pytorch's argument; "
                                       "give bits=log2"),
    (lambda: LFQ(4, num_codebooks=2), "num_codebooks= is vector-quantize-pytorch's"),
    (lambda: ResidualVQ(0, 8), "dim must be an integer >= 1, found 0; e.g. dim=64"),
    (lambda: ResidualVQ(4, 8, depth=0), "depth must be an integer >= 1, found 0; e.g. depth=4"),
    (lambda: ResidualVQ(4, "8"), "codebook_size must be an integer >= 1, found '8'"),
    (lambda: ResidualVQ(4, 8, num_quantizers=4), "num_quantizers= is vector-quantize-pytorch's "
                                                 "argument; give depth="),
    (lambda: ResidualVQ(4, 8, codebook_dim=2), "codebook_dim= is vector-quantize-pytorch's"),
    (lambda: ResidualVQ(4, 8, commitment_weight=1.0), "give beta="),
    (lambda: ResidualVQ(4, 8, beta=-1), "beta must be a finite number >= 0, found -1"),
    (lambda: ResidualVQ(4, 8, decay=1.5), "decay must be a finite number > 0, <= 1, found 1.5"),
    (lambda: ResidualVQ(4, 8, ema="yes"), "ema must be True or False, found 'yes'"),
    (lambda: ResidualVQ(4, 8, bogus=1), "unknown argument bogus=1; its arguments are dim"),
])
def test_arguments_are_checked_at_construction(make, message):
    with pytest.raises(MvqError, match=re.escape(message)):
        make()


def test_training_losses_are_fp32_under_autocast():
    """LFQ's entropy and commitment terms and ResidualVQ's stage losses: the same fp32 numbers
    with and without bf16 autocast (ResidualVQ's EMA state reset between the two runs)."""
    x = torch.randn(2, 7, 6)
    lfq = LFQ(4, dim=6)
    want = lfq(x)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lfq(x)[2]
    assert got.dtype == torch.float32 and torch.equal(want, got)
    rvq = ResidualVQ(6, 8, depth=2, restart_dead=False)
    state = {k: v.clone() for k, v in rvq.state_dict().items()}
    want = rvq(x)
    rvq.load_state_dict(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = rvq(x)
    assert torch.equal(want[1], got[1]) and torch.equal(want[2], got[2])


def test_residual_ids_need_one_id_per_stage():
    rvq = ResidualVQ(6, 8, depth=3)
    with pytest.raises(MvqError, match=re.escape("indices must be (B, *grid, 3) (one id per")):
        rvq.get_output_from_indices(torch.zeros(2, 5, 2, dtype=torch.long))
