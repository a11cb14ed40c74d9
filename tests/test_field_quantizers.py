"""The field's quantizers as mvq layers (FSQ, LFQ, residual VQ): checked against
vector-quantize-pytorch 1.32 (the independent reference, with its weights copied in) and
against brute-force loops written here; mvq's contract (argument checks, MvqError on bad input,
fp32 under autocast, empty batches, straight-through gradients) on each."""

import math

import pytest
import torch

from mvq.errors import MvqError
from mvq.quantize.fsq import FSQ

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


# ------------------------------------------------------------------------- mvq's contract, all

LAYERS = {  # name: (a small layer's factory on D = 6, channel_first)
    "fsq": lambda cf: FSQ([5, 4, 3], dim=6, channel_first=cf),
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
    for ids in (torch.zeros(2, 5), [[0]], torch.full((2, 5), -1)):
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
])
def test_arguments_are_checked_at_construction(make, message):
    with pytest.raises(MvqError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make()
