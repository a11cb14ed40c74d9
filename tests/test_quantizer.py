import pytest
import torch

from mvq.errors import MvqError
from mvq.quantize import VectorQuantize, code_stats


def _vq(**kw):
    return VectorQuantize(4, 8, channel_first=True, **{"ema": False, "restart_dead": False, **kw})


def test_codebook_term_moves_codebook_and_beta_term_moves_encoder():
    vq = _vq()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq.quantize(z)
    out.codebook_loss.backward(retain_graph=True)
    assert vq.embedding.grad.abs().sum() > 0
    assert z.grad is None or z.grad.abs().sum() == 0
    vq.embedding.grad = None
    out.commit_loss.backward()
    assert z.grad.abs().sum() > 0
    assert vq.embedding.grad is None or vq.embedding.grad.abs().sum() == 0


def test_loss_values_match_hand_computation():
    vq = _vq(beta=0.25)
    z = torch.randn(3, 4, 2, 2)
    out = vq.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    ids = torch.cdist(flat, vq.embedding.detach()).argmin(1)
    e = vq.embedding.detach()[ids]
    expect = ((e - flat) ** 2).mean()
    assert torch.allclose(out.codebook_loss, expect)
    assert torch.allclose(out.commit_loss, expect)
    assert torch.allclose(out.loss, expect * 1.25)
    assert torch.equal(out.indices.flatten(), ids)
    # EMA codebooks: no gradient codebook term, only beta * commitment
    vq_ema = _vq(ema=True)
    vq_ema.load_state_dict(vq.state_dict())
    assert torch.allclose(vq_ema.quantize(z).loss, 0.25 * expect)
    assert not vq_ema.embedding.requires_grad


def test_nearest_matches_brute_force_and_vector_quantize_pytorch():
    from vector_quantize_pytorch import VectorQuantize as Reference

    vq = VectorQuantize(6, 32, channel_first=True, ema=False)
    x = torch.randn(500, 6)
    brute = ((x[:, None, :] - vq.embedding.detach()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(vq.nearest(x), brute)
    ref = Reference(dim=6, codebook_size=32, decay=0.99)
    ref.eval()
    ref._codebook.embed.data.copy_(vq.embedding.detach()[None])
    _, ref_ids, _ = ref(x[None])
    assert torch.equal(ref_ids[0], brute)


def test_index_code_round_trip_and_straight_through():
    vq = _vq()
    ids = torch.randint(0, 8, (2, 3, 3))
    codes = vq.lookup(ids)
    assert codes.shape == (2, 4, 3, 3)
    out = vq.quantize(codes)
    assert torch.equal(out.indices, ids)
    assert torch.allclose(out.quantized, codes)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    vq.quantize(z).quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient
    with pytest.raises(MvqError, match="code ids must lie in"):
        vq.lookup(torch.tensor([[[8]]]))


def test_ema_update_equals_formula():
    eps = 1e-3  # Laplace smoothing of the counts: (size + eps) / (n + K eps) * n
    vq = VectorQuantize(2, 4, channel_first=True, ema=True, decay=0.9, eps=eps,
                        restart_dead=False)
    w0, size0, sum0 = vq.embedding.detach().clone(), vq.cluster_size.clone(), vq.embed_sum.clone()
    z = torch.randn(5, 2, 1, 1)
    ids = vq.quantize(z).indices.flatten()
    flat = z.flatten(1)
    onehot = torch.nn.functional.one_hot(ids, 4).float()
    size = 0.9 * size0 + 0.1 * onehot.sum(0)
    esum = 0.9 * sum0 + 0.1 * onehot.t() @ flat
    assert torch.allclose(vq.cluster_size, size)
    smoothed = (size + eps) / (size.sum() + 4 * eps) * size.sum()
    assert torch.allclose(vq.embedding, esum / smoothed[:, None], atol=1e-6)
    assert not torch.allclose(vq.embedding, w0)


def test_dead_codes_restart_onto_batch_vectors():
    vq = VectorQuantize(2, 16, channel_first=True, ema=True, restart_dead=True, dead_threshold=0.5)
    vq.cluster_size.fill_(0.0)  # every code looks dead
    z = torch.randn(64, 2, 1, 1) + 10.0  # far from the initial codebook
    vq.train()
    vq.quantize(z)
    # restarted codes now sit among the batch vectors (near 10), not near the initial ~0
    assert (vq.embedding.mean(1) > 5).float().mean() > 0.9


def test_code_stats_hand_case():
    ids = torch.tensor([0, 1, 2, 3] * 5)
    st = code_stats(ids, 16)
    assert st["usage"] == pytest.approx(0.25)
    assert st["perplexity"] == pytest.approx(4.0, rel=1e-5)


def test_kmeans_init_places_codes_on_data():
    vq = VectorQuantize(2, 4, channel_first=True, ema=True, kmeans_init=True, restart_dead=False)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    x = (centers.repeat(50, 1) + 0.1 * torch.randn(200, 2)).view(200, 2, 1, 1)
    vq.train()
    vq.quantize(x)
    got = sorted(map(tuple, vq.embedding.detach().round().tolist()))
    assert got == sorted(map(tuple, centers.tolist()))
