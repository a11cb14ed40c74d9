"""VectorQuantize's modern lookup options: a low-dimensional codebook (``codebook_dim``), cosine
lookup (``cosine``) and the rotation trick (``rotation_trick``), against vector-quantize-pytorch
(the field's reference) where the definitions match and against a hand-built rotation matrix."""

from __future__ import annotations

import pytest
import torch

from mvq import VectorQuantize
from mvq.errors import MvqError
from mvq.quantize.vq import rotated


def _reference(**kwargs):
    from vector_quantize_pytorch import VectorQuantize as Reference

    torch.manual_seed(0)
    return Reference(dim=6, codebook_size=16, rotation_trick=False, **kwargs).eval()


def test_cosine_lookup_matches_vector_quantize_pytorch():
    """Eval mode, the reference's (unit) codebook copied in: the same ids and outputs."""
    ref = _reference(use_cosine_sim=True)
    ours = VectorQuantize(6, 16, cosine=True).eval()
    ours.embedding.data.copy_(ref._codebook.embed[0])
    x = torch.randn(3, 40, 6) * 3
    quantized, indices, _ = ours(x)
    want, want_ids, _ = ref(x)
    assert torch.equal(indices, want_ids) and len(torch.unique(indices)) > 4
    assert torch.allclose(quantized, want, atol=1e-6)
    assert torch.allclose(quantized.norm(dim=-1), torch.ones(3, 40), atol=1e-6)
    # a scaled copy of the codebook finds the same codes: only directions count
    ours.embedding.data.mul_(torch.rand(16, 1) * 5 + 0.1)
    assert torch.equal(ours(x)[1], indices)


def test_low_dimensional_lookup_matches_vector_quantize_pytorch():
    ref = _reference(codebook_dim=3)
    ours = VectorQuantize(6, 16, codebook_dim=3).eval()
    ours.embedding.data.copy_(ref._codebook.embed[0])
    for mine, theirs in ((ours.project_in, ref.project_in), (ours.project_out, ref.project_out)):
        mine.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 30, 6)
    quantized, indices, _ = ours(x)
    want, want_ids, _ = ref(x)
    assert torch.equal(indices, want_ids) and len(torch.unique(indices)) > 4
    assert torch.allclose(quantized, want, atol=1e-6)
    assert torch.allclose(ours.get_output_from_indices(indices), quantized, atol=1e-6)
    assert ours.embedding.shape == (16, 3)


@pytest.mark.parametrize("channel_first", [False, True])
def test_low_dimensional_lookup_layouts_autocast_and_empty(channel_first):
    layer = VectorQuantize(6, 16, codebook_dim=2, channel_first=channel_first).eval()
    x = torch.randn(2, 6, 3, 4) if channel_first else torch.randn(2, 12, 6)
    quantized, indices, loss = layer(x)
    assert quantized.shape == x.shape and indices.shape == ((2, 3, 4) if channel_first
                                                            else (2, 12))
    assert torch.allclose(layer.get_output_from_indices(indices), quantized, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = layer(x)
    assert again[0].dtype == torch.float32 and torch.equal(again[0], quantized)
    assert layer(x.bfloat16())[0].dtype == torch.bfloat16
    empty = x[:0]
    out, ids, zero = layer.train()(empty)
    assert out.shape == empty.shape and ids.shape[0] == 0 and float(zero) == 0.0
    with pytest.raises(MvqError, match=r"expects \(B"):
        layer(torch.randn(2, 2, 12) if not channel_first else torch.randn(2, 2, 3, 4))


def _naive_rotation(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Row by row, the rotation matrix written out: R = I - 2 w w^T + 2 q u^T, times
    |e| / |z|, applied to z (R and the scale constant)."""
    rows = []
    for x, code in zip(z, e):
        u = (x / x.norm()).detach()
        q = code / code.norm()
        w = (u + q) / (u + q).norm()
        eye = torch.eye(len(x), dtype=z.dtype)
        r = eye - 2 * torch.outer(w, w) + 2 * torch.outer(q, u)
        rows.append((code.norm() / x.norm()).detach() * (r @ x))
    return torch.stack(rows)


def test_rotation_trick_value_and_gradient_against_a_hand_built_rotation():
    torch.manual_seed(1)
    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    e = torch.randn(7, 5, dtype=torch.float64)
    g = torch.randn(7, 5, dtype=torch.float64)
    out = rotated(z[:, :, None, None], e[:, :, None, None])[:, :, 0, 0]
    assert torch.equal(out, e)  # the forward value is the code, bit for bit
    (grad,) = torch.autograd.grad((out * g).sum(), z)
    naive = _naive_rotation(z, e)
    assert torch.allclose(naive, e, atol=1e-12)  # the written-out rotation lands on e too
    (want,) = torch.autograd.grad((naive * g).sum(), z)
    assert torch.allclose(grad, want, atol=1e-12)
    assert not torch.allclose(grad, g)  # not the straight-through gradient


def test_rotation_trick_gradient_matches_vector_quantize_pytorch():
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    torch.manual_seed(2)
    z = torch.randn(9, 6, requires_grad=True)
    e = torch.randn(9, 6)
    g = torch.randn(9, 6)
    (ours,) = torch.autograd.grad((rotated(z[:, :, None, None], e[:, :, None, None])[:, :, 0, 0]
                                   * g).sum(), z)
    (theirs,) = torch.autograd.grad((rotate_to(z, e) * g).sum(), z)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_rotation_trick_opposite_and_zero_inputs_stay_finite():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])[:, :, None, None]
    z = torch.tensor([[-3.0, 0.0], [0.0, 0.0]])[:, :, None, None].requires_grad_()
    out = rotated(z, e)
    assert torch.equal(out, e)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("options", [dict(rotation_trick=True), dict(cosine=True),
                                     dict(codebook_dim=3, cosine=True, rotation_trick=True)])
def test_training_reaches_the_encoder_and_keeps_the_contract(options):
    torch.manual_seed(3)
    layer = VectorQuantize(6, 8, **options)
    encoder = torch.nn.Linear(4, 6)
    x = encoder(torch.randn(2, 20, 4))
    quantized, indices, loss = layer(x)
    (quantized.pow(2).sum() + loss).backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert indices.shape == (2, 20) and 0 <= int(indices.min()) and int(indices.max()) < 8
    if layer.cosine:  # the EMA moved the codebook; the codes stay unit vectors
        assert torch.allclose(layer.codebook().norm(dim=1), torch.ones(8), atol=1e-6)
    layer.eval()
    with torch.no_grad():
        again, ids, _ = layer(x)
    assert torch.allclose(layer.get_output_from_indices(ids), again, atol=1e-6)


def test_rotation_trick_without_gradients_is_straight_through_exactly():
    layer = VectorQuantize(6, 8, rotation_trick=True).eval()
    plain = VectorQuantize(6, 8).eval()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 10, 6)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(layer(x), plain(x)))
