"""Lookup-free quantization (LFQ; Yu et al. 2023, MAGVIT-v2, "Language Model Beats Diffusion")
as a drop-in layer with mvq's contract: ``quantized, indices, loss = lfq(x)``.

Each of the ``bits`` channels is quantized to its sign, ``-s`` or ``+s`` (s = ``codebook_scale``,
1 by default), with a straight-through gradient; the implicit codebook is the 2^bits sign
patterns, the id the binary number of the signs (the first channel the most significant bit,
``+s`` a 1). Training adds MAGVIT-v2's entropy penalty and a commitment term.

The entropy penalty: each token z gets a distribution over the 2^bits codes,
``q(c | z) = softmax_c(-tau ||z - c||^2)`` (tau = ``inv_temperature``); the loss is the mean
per-token entropy ``E[H(q(. | z))]`` minus ``diversity_gamma`` times the entropy of the batch's
average ``H(E[q(. | z)])``: confident tokens, evenly used codes. Because ``||c||^2`` is the same
for every code, q is a product of independent bits, ``q(bit_i = +) = sigmoid(4 tau s z_i)``, so
the per-token entropy is a sum of ``bits`` binary entropies and needs no enumeration. The
average does not factorize: it is built over the 2^bits codes in chunks of tokens (bounded
memory; with autograd each chunk is recomputed in the backward pass instead of kept), and
``bits`` above `ENTROPY_MAX_BITS` is refused when the entropy term is on.

Against vector-quantize-pytorch 1.32's ``LFQ`` (the test reference): the same codes, ids and
straight-through output, and the same definition of both entropies, with one difference: it
takes ``log(max(p, 1e-5))`` inside the entropies, so where probabilities fall below 1e-5 (at
its and this layer's default tau = 100, for most codes) its terms differ from the exact
entropies computed here; they are equal where every probability is above 1e-5. Its commitment
weight defaults to 0 (here 0.25, as in mvq's VQ), and in eval mode it returns a zero loss;
here eval mode keeps the commitment term (as `mvq.VectorQuantize` does) and drops the
entropy term, a statistic of the training batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mvq.errors import MvqError
from mvq.quantize.arguments import (
    check_bool,
    check_int,
    check_number,
    check_projections,
    from_tokens,
    linear,
    refuse_unknown,
    tokens_of,
)
from mvq.quantize.layout import check_ids, check_input

ENTROPY_MAX_BITS = 24  # the batch's average over 2^bits codes: 64 MiB per fp32 row at 24 bits
MAX_BITS = 62  # int64 ids
CHUNK_ELEMENTS = 1 << 22  # (tokens x codes) enumerated at once for the codebook entropy
_TINY = torch.finfo(torch.float32).tiny

_RENAMED = {
    "codebook_size": "give bits=log2(codebook_size), e.g. bits=10 for 1024 codes",
    "num_codebooks": "mvq's LFQ has one codebook; split the channels over several LFQ layers",
    "keep_num_codebooks_dim": "mvq's LFQ has one codebook (indices are (B, N))",
    "has_projections": "projections are used exactly when dim != bits",
    "projection_has_bias": "mvq's projections always have a bias",
    "force_quantization_f32": "mvq's LFQ always quantizes in fp32 (float64 stays float64)",
    "frac_per_sample_entropy": "not supported: the per-token entropy is exact and cheap here",
    "straight_through_activation": "not supported",
    "soft_clamp_input_value": "not supported",
    "cosine_sim_project_in": "not supported",
    "cosine_sim_project_in_scale": "not supported",
    "spherical": "not supported",
    "experimental_softplus_entropy_loss": "not supported",
    "entropy_loss_offset": "not supported",
    "orthogonal_rotation": "not supported",
}


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise, stable for any logit."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def code_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The product distribution over the 2^bits sign patterns: ``(M, bits)`` logits of each
    bit being + to ``(M, 2^bits)`` probabilities, code ids with the first bit most
    significant."""
    plus, minus = torch.sigmoid(logits), torch.sigmoid(-logits)
    dist = logits.new_ones(logits.shape[0], 1)
    for i in range(logits.shape[1]):
        pair = torch.stack([minus[:, i], plus[:, i]], -1)  # bit 0 (-s), bit 1 (+s)
        dist = (dist[:, :, None] * pair[:, None, :]).reshape(logits.shape[0], -1)
    return dist


def _summed_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return code_probabilities(logits).sum(0)


def average_code_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``E_tokens[q(c | z)]`` ``(2^bits,)`` from ``(M, bits)`` logits, in chunks of tokens so
    that no more than `CHUNK_ELEMENTS` probabilities exist at once (M >= 1)."""
    chunk = max(1, CHUNK_ELEMENTS >> logits.shape[1])
    if logits.shape[0] <= chunk:
        return _summed_probabilities(logits) / logits.shape[0]
    total = logits.new_zeros(1 << logits.shape[1])
    for part in logits.split(chunk):
        if part.requires_grad:  # keep the chunk's input only; recompute it in backward
            total = total + checkpoint(_summed_probabilities, part, use_reentrant=False)
        else:
            total = total + _summed_probabilities(part)
    return total / logits.shape[0]


class LFQ(nn.Module):
    """Lookup-free quantization: ``quantized, indices, loss = lfq(x)``.

    x ``(B, N, D)`` (or ``(B, D, H, W)`` with ``channel_first``); quantized has x's shape and
    dtype (the sign codes, after ``project_out`` when D != bits), indices ``(B, N)``
    (``(B, H, W)``) int64 in [0, 2^bits), loss ``commitment_loss_weight * ||z - sg[q]||^2``
    plus, in training, ``entropy_loss_weight * (E[H(q(.|z))] - diversity_gamma H(E[q(.|z)]))``
    (the module docstring defines q). The maths runs in fp32 (float64 stays float64)
    whatever autocast says.

    Args:
        bits: channels quantized to a sign each; codebook_size = 2^bits (MAGVIT-v2: 18).
        dim: the input's vector size D; when it differs from bits a linear projection maps D
            to bits before quantizing and back after (default bits).
        entropy_loss_weight: weight of the entropy penalty (0 turns it off).
        commitment_loss_weight: weight of ``||z - sg[q]||^2``.
        diversity_gamma: weight of the batch-average entropy inside the penalty.
        inv_temperature: tau of ``q(c | z)`` (vector-quantize-pytorch's default, 100).
        codebook_scale: s, the codes' magnitude.
        channel_first: inputs are ``(B, D, ...)`` feature maps.

    Attributes:
        codebook_size: 2^bits.
        bits_per_token: bits.
    """

    def __init__(self, bits: int, dim: int | None = None, *, entropy_loss_weight: float = 0.1,
                 commitment_loss_weight: float = 0.25, diversity_gamma: float = 1.0,
                 inv_temperature: float = 100.0, codebook_scale: float = 1.0,
                 channel_first: bool = False, **unknown: object) -> None:
        super().__init__()
        refuse_unknown("LFQ", unknown, _RENAMED, "bits, dim, entropy_loss_weight, "
                       "commitment_loss_weight, diversity_gamma, inv_temperature, "
                       "codebook_scale, channel_first")
        self.bits = check_int("LFQ", "bits", bits, 1, "bits=10 (1024 codes)", high=MAX_BITS)
        self.dim = self.bits if dim is None else check_int("LFQ", "dim", dim, 1, "dim=64")
        check_projections("LFQ", self.dim, self.bits)
        self.entropy_loss_weight = check_number("LFQ", "entropy_loss_weight",
                                                entropy_loss_weight, "entropy_loss_weight=0.1")
        self.commitment_loss_weight = check_number("LFQ", "commitment_loss_weight",
                                                   commitment_loss_weight,
                                                   "commitment_loss_weight=0.25")
        self.diversity_gamma = check_number("LFQ", "diversity_gamma", diversity_gamma,
                                            "diversity_gamma=1.0")
        self.inv_temperature = check_number("LFQ", "inv_temperature", inv_temperature,
                                            "inv_temperature=100.0", low_open=True)
        self.codebook_scale = check_number("LFQ", "codebook_scale", codebook_scale,
                                           "codebook_scale=1.0", low_open=True)
        self.channel_first = check_bool("LFQ", "channel_first", channel_first)
        if self.entropy_loss_weight > 0 and self.bits > ENTROPY_MAX_BITS:
            raise MvqError(f"LFQ: the entropy loss averages each token's distribution over the "
                           f"2^bits codes, and bits={self.bits} is beyond the memory bound of "
                           f"bits <= {ENTROPY_MAX_BITS}; use e.g. bits=18 (MAGVIT-v2's), or "
                           f"entropy_loss_weight=0")
        self.codebook_size = 1 << self.bits
        self.bits_per_token = self.bits
        self.has_projections = self.dim != self.bits
        self.project_in = nn.Linear(self.dim, self.bits) if self.has_projections else nn.Identity()
        self.project_out = (nn.Linear(self.bits, self.dim) if self.has_projections
                            else nn.Identity())
        self.register_buffer("_shifts", torch.arange(self.bits - 1, -1, -1), persistent=False)

    def entropies(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean per-token entropy, entropy of the average) of q(. | z) for ``(M, bits)``
        pre-quantization values (M >= 1), in nats."""
        logits = 4 * self.inv_temperature * self.codebook_scale * z
        per_token = binary_entropy(logits).sum(-1).mean()
        average = average_code_probabilities(logits)
        # -sum p log p; below the smallest normal float the term is 0 and its gradient finite
        return per_token, -(average * average.clamp_min(_TINY).log()).sum()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_input(x, self.dim, self.channel_first, "LFQ")
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows, grid = tokens_of(x, self.channel_first)
            z = linear(self.project_in, rows)
            positive = z > 0
            scale = torch.full_like(z, self.codebook_scale)
            signs = torch.where(positive, scale, -scale)
            indices = (positive.long() << self._shifts).sum(-1)
            codes = signs + (z - z.detach())  # the signs exactly, identity gradient
            out = linear(self.project_out, codes)
            loss = torch.zeros((), device=x.device, dtype=torch.float32)
            if z.shape[0] and self.commitment_loss_weight > 0:
                loss = loss + self.commitment_loss_weight * F.mse_loss(z, signs).float()
            if z.shape[0] and self.training and self.entropy_loss_weight > 0:
                per_token, average = self.entropies(z)
                penalty = per_token - self.diversity_gamma * average
                loss = loss + self.entropy_loss_weight * penalty.float()
        return (from_tokens(out, x.shape[0], grid, self.channel_first).to(x.dtype),
                indices.reshape(x.shape[0], *grid), loss)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Ids ``(...)`` to sign codes ``(..., bits)`` (fp32), before ``project_out``."""
        ones = (indices[..., None] >> self._shifts) & 1
        return (2.0 * ones.float() - 1.0) * self.codebook_scale

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Vectors (after ``project_out``) for ids ``(B, *grid)``, in the layer's layout."""
        check_ids(indices, "indices")
        if indices.dim() < 1:
            raise MvqError(f"indices must be (B, *grid), found shape {tuple(indices.shape)}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise MvqError(f"LFQ code ids must lie in [0, {self.codebook_size}), found "
                           f"[{int(indices.min())}, {int(indices.max())}]")
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = linear(self.project_out, self.indices_to_codes(indices.reshape(-1).long()))
        return from_tokens(codes, indices.shape[0], tuple(indices.shape[1:]), self.channel_first)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, dim={self.dim}, entropy_loss_weight="
                f"{self.entropy_loss_weight}, commitment_loss_weight="
                f"{self.commitment_loss_weight}")
