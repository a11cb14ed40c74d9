"""The drop-in layers: `quantized, indices, loss = vq(x)` on (B, N, D) and (B, D, H, W), checked
against brute-force nearest codes and hand-summed losses; gradients reach the encoder."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mvq import FSQ, LFQ, MaskedVectorQuantize, MultiChannelVectorQuantize, VectorQuantize
from mvq.errors import MvqError


def _nearest(flat: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return torch.cdist(flat.double(), book.double()).argmin(1)


@pytest.mark.parametrize("channel_first", [False, True])
def test_vector_quantize_tuple_matches_brute_force(channel_first):
    torch.manual_seed(0)
    vq = VectorQuantize(6, 10, channel_first=channel_first, ema=False, restart_dead=False)
    tokens = torch.randn(3, 5, 6)
    x = tokens.permute(0, 2, 1).reshape(3, 6, 5, 1) if channel_first else tokens
    x.requires_grad_(True)
    quantized, indices, loss = vq(x)
    assert quantized.shape == x.shape
    assert indices.shape == ((3, 5, 1) if channel_first else (3, 5))
    want = _nearest(tokens.reshape(-1, 6), vq.embedding.detach()).view(3, 5)
    assert torch.equal(indices.reshape(3, 5), want)
    codes = vq.embedding.detach()[want]  # (3, 5, 6)
    got = quantized.reshape(3, 6, 5).transpose(1, 2) if channel_first else quantized
    assert torch.allclose(got, codes, atol=1e-6)
    # gradient codebook: ||sg[x]-e||^2 + beta ||x-sg[e]||^2
    hand = F.mse_loss(codes, tokens) * (1 + vq.beta)
    assert torch.allclose(loss, hand, atol=1e-6)
    assert torch.allclose(vq.get_output_from_indices(indices), quantized.detach(), atol=1e-6)
    (quantized.sum() + loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layouts_agree_and_bad_inputs_are_refused():
    vq = VectorQuantize(4, 8).eval()
    maps = torch.randn(2, 4, 3, 5)
    first = VectorQuantize(4, 8, channel_first=True).eval()
    first.load_state_dict(vq.state_dict())
    q_map, ids_map, _ = first(maps)
    q_tok, ids_tok, _ = vq(maps.permute(0, 2, 3, 1))  # (B, H, W, D) channels last
    assert ids_map.shape == ids_tok.shape == (2, 3, 5)
    assert torch.equal(ids_map, ids_tok)
    assert torch.allclose(q_map, q_tok.permute(0, 3, 1, 2), atol=1e-6)
    for bad in (torch.randn(2, 5, 3), torch.randn(4), torch.ones(2, 3, 4, dtype=torch.long), "x"):
        with pytest.raises(MvqError, match="VectorQuantize"):
            vq(bad)


@pytest.mark.parametrize("channel_first", [False, True])
def test_multichannel_ids_are_per_chunk_nearest(channel_first):
    torch.manual_seed(1)
    mc = MultiChannelVectorQuantize(8, 6, channels=4, channel_first=channel_first, ema=False,
                                    restart_dead=False)
    tokens = torch.randn(2, 7, 8)
    x = tokens.transpose(1, 2) if channel_first else tokens  # (B, D, N) is a 1-d map
    quantized, indices, loss = mc(x)
    assert indices.shape == (2, 7, 4) and quantized.shape == x.shape and loss.dim() == 0
    want = _nearest(tokens.reshape(-1, 2), mc.embedding.detach()).view(2, 7, 4)
    assert torch.equal(indices, want)
    assert torch.allclose(mc.get_output_from_indices(indices), quantized.detach(), atol=1e-6)
    with pytest.raises(MvqError, match="channels=3"):
        MultiChannelVectorQuantize(8, 6, channels=3)


def test_masked_layer_picks_each_positions_nearest_hypothesis():
    """Per position: the output is e + f(e' * m) for the bank mask nearest to x (brute force)."""
    torch.manual_seed(2)
    mvq = MaskedVectorQuantize(4, 8, dim2=3, num_masks=16, restart_dead=False).eval()
    x = torch.randn(2, 5, 4)
    quantized, (ids, ids2), loss, mask = mvq(x)
    assert ids.shape == ids2.shape == (2, 5)
    assert mask.shape == (2, 5, 3) and mask.dtype == torch.bool
    bank = mvq.eval_mask_bank(torch.zeros(1, 3, 1, 1))[:, :, 0, 0]  # (J, D')
    with torch.no_grad():
        e = mvq.primary.embedding[ids]  # (2, 5, 4)
        e2 = mvq.secondary.embedding[ids2]  # (2, 5, 3)
        f = lambda c: mvq.f(c.reshape(-1, 3, 1, 1)).reshape(*c.shape[:-1], 4)  # noqa: E731
        hyp = e[:, :, None] + f(e2[:, :, None] * bank)  # (2, 5, J, 4)
        best = (hyp - x[:, :, None]).pow(2).sum(-1).argmin(-1)  # (2, 5)
        assert torch.equal(mask, bank[best])
        assert torch.allclose(quantized,
                              hyp.gather(2, best[..., None, None].expand(2, 5, 1, 4))[:, :, 0],
                              atol=1e-5)
        assert torch.allclose(mvq.get_output_from_indices(ids, ids2, mask), quantized, atol=1e-6)
    # the layer's loss is its three terms, summed
    out = mvq.quantize(x.transpose(1, 2).reshape(2, 4, 5, 1).permute(0, 2, 1, 3)
                       .reshape(10, 4, 1, 1))
    assert torch.allclose(loss, out.primary.loss + out.secondary.loss + out.mhd_loss, atol=1e-6)


@pytest.mark.parametrize("secondary", ["fsq", "lfq"])
def test_masked_layer_over_a_channel_code_secondary(secondary):
    """MVQ over an FSQ / LFQ secondary: e' is the rounded channels / the signs, the mask covers
    them (D' = len(levels) / bits), each position's bank winner is the brute-force nearest,
    the ids decode back, and the rate is the secondary's: K' = prod(levels) / 2^bits."""
    torch.manual_seed(4)
    layer2 = FSQ([5, 3, 4]) if secondary == "fsq" else LFQ(3)
    mvq = MaskedVectorQuantize(4, 8, num_masks=16, restart_dead=False, secondary=layer2)
    assert (mvq.dim2, mvq.secondary.num_codes) == (3, 60 if secondary == "fsq" else 8)
    x = torch.randn(2, 5, 4, requires_grad=True)
    quantized, (ids, ids2), loss, mask = mvq(x)  # training: fresh masks
    (quantized.pow(2).mean() + loss).backward()
    assert x.grad.abs().sum() > 0 and mvq.secondary_encoder.weight.grad.abs().sum() > 0
    mvq.eval()
    quantized, (ids, ids2), loss, mask = mvq(x.detach())
    assert ids2.shape == (2, 5) and mask.shape == (2, 5, 3)
    assert int(ids2.max()) < mvq.secondary.num_codes
    bank = mvq.eval_mask_bank(torch.zeros(1, 3, 1, 1))[:, :, 0, 0]  # (J, D')
    with torch.no_grad():
        e = mvq.primary.embedding[ids]
        e2 = layer2.indices_to_codes(ids2)  # (2, 5, 3): the rounded channels / signs
        z2 = mvq.secondary_encoder(x.detach().reshape(10, 4, 1, 1)).reshape(2, 5, 3)
        assert torch.equal(e2, layer2(z2)[0])  # the secondary's own code of E'(x)
        f = lambda c: mvq.f(c.reshape(-1, 3, 1, 1)).reshape(*c.shape[:-1], 4)  # noqa: E731
        hyp = e[:, :, None] + f(e2[:, :, None] * bank)
        best = (hyp - x.detach()[:, :, None]).pow(2).sum(-1).argmin(-1)
        assert torch.equal(mask, bank[best])
        assert torch.allclose(mvq.get_output_from_indices(ids, ids2, mask), quantized, atol=1e-6)
    assert mvq(torch.randn(0, 5, 4))[3].shape == (0, 5, 3)
    with pytest.raises(MvqError, match=r"lie in \[0,"):
        mvq.get_output_from_indices(ids, ids2 + 1000, mask)


def test_masked_layer_refuses_a_secondary_it_cannot_mask():
    with pytest.raises(MvqError, match="without dim"):
        MaskedVectorQuantize(4, 8, secondary=FSQ([5, 3], dim=6))
    with pytest.raises(MvqError, match="dim2=5 disagrees"):
        MaskedVectorQuantize(4, 8, dim2=5, secondary=LFQ(3))
    with pytest.raises(MvqError, match="codebook_size2=4 disagrees"):
        MaskedVectorQuantize(4, 8, codebook_size2=4, secondary=LFQ(3))
    with pytest.raises(MvqError, match="channel-code quantizer"):
        MaskedVectorQuantize(4, 8, secondary=VectorQuantize(4, 8))


@pytest.mark.parametrize("channel_first", [False, True])
def test_gradients_reach_the_encoder_through_every_layer(channel_first):
    torch.manual_seed(3)
    layers = [VectorQuantize(4, 8, channel_first=channel_first),
              MultiChannelVectorQuantize(4, 8, channels=2, channel_first=channel_first),
              MaskedVectorQuantize(4, 8, num_masks=8, channel_first=channel_first),
              MaskedVectorQuantize(4, 8, num_masks=8, channel_first=channel_first,
                                   secondary=FSQ([5, 3, 4, 3])),
              MaskedVectorQuantize(4, 8, num_masks=8, channel_first=channel_first,
                                   secondary=LFQ(4))]
    for layer in layers:
        enc = nn.Linear(3, 4)
        h = enc(torch.randn(2, 6, 3))  # (B, N, D)
        x = h.transpose(1, 2).reshape(2, 4, 2, 3) if channel_first else h
        quantized, _, loss, *rest = layer(x)
        (quantized.pow(2).mean() + loss).backward()
        assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0, type(layer).__name__
        if rest:  # MVQ: the mask has the bits last, one per position
            assert rest[0].shape == ((2, 2, 3, 4) if channel_first else (2, 6, 4))


def test_masked_layer_with_own_modules_and_refusals():
    f = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(size=(2, 2)))
    down = nn.Sequential(nn.Conv2d(4, 3, 1), nn.AdaptiveAvgPool2d(1))
    mvq = MaskedVectorQuantize(4, 8, dim2=3, num_masks=8, secondary_encoder=down, f=f,
                               channel_first=True)
    quantized, (ids, ids2), loss, mask = mvq(torch.randn(2, 4, 2, 2))
    assert quantized.shape == (2, 4, 2, 2) and ids.shape == (2, 2, 2)
    assert ids2.shape == (2, 1, 1) and mask.shape == (2, 1, 1, 3)
    mvq.eval()
    q, (i1, i2), _, m = mvq(torch.randn(2, 4, 2, 2))
    assert torch.allclose(mvq.get_output_from_indices(i1, i2, m), q)
    with pytest.raises(MvqError, match="channel_first"):
        MaskedVectorQuantize(4, 8, secondary_encoder=down, f=f)
    with pytest.raises(MvqError, match="both"):
        MaskedVectorQuantize(4, 8, f=f, channel_first=True)


def test_tokenizers_are_built_on_the_layers():
    from mvq.configuration.config import ModelConfig
    from mvq.models import build_model
    from mvq.models.movq import MoVQConfig

    kw = dict(image_size=28, channels=1, factor=28, codebook_size=16, num_masks=4)
    assert isinstance(build_model(ModelConfig(type="vqvae", **kw)).quantizer, VectorQuantize)
    assert isinstance(build_model(ModelConfig(type="hvqvae", **kw)).quantizer2, VectorQuantize)
    assert isinstance(build_model(ModelConfig(type="mvqvae", **kw)).mvq, MaskedVectorQuantize)
    movq = build_model(MoVQConfig(image_size=16, channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                  attn_resolutions=(8,), z_channels=8, codebook_size=8, code_dim=4,
                                  num_channels=2, fourier_frequencies=4, num_groups=4))
    assert isinstance(movq.quantizer, MultiChannelVectorQuantize)


def test_layers_refuse_bad_arguments_and_take_empty_batches():
    for make in (lambda: VectorQuantize(0, 8), lambda: VectorQuantize("a", 8),
                 lambda: MultiChannelVectorQuantize(8, 6, channels=0),
                 lambda: MaskedVectorQuantize(4, 8, num_masks=0),
                 lambda: MaskedVectorQuantize(4, 8, dim2=True)):
        with pytest.raises(MvqError, match="must be an integer >= 1"):
            make()
    vq, mvq = VectorQuantize(4, 8), MaskedVectorQuantize(4, 8, dim2=3)
    assert vq(torch.randn(0, 5, 4))[1].shape == (0, 5)
    assert mvq(torch.randn(0, 5, 4))[3].shape == (0, 5, 3)
    ids = torch.zeros(1, 3, dtype=torch.long)
    bad = [(lambda: vq.get_output_from_indices(torch.full((1, 3), 8)), r"lie in \[0, 8\)"),
           (lambda: vq.get_output_from_indices(torch.zeros(1, 3)), "integer tensor"),
           (lambda: mvq.get_output_from_indices(ids, ids, torch.zeros(1, 3, 5, dtype=torch.bool)),
            r"mask has shape \(1, 3, 5\), expected \(1, 3, 3\)"),
           (lambda: mvq.get_output_from_indices(ids, ids[:, :2], torch.zeros(1, 3, 3)),
            "indices2 has shape")]
    for call, message in bad:
        with pytest.raises(MvqError, match=message):
            call()
