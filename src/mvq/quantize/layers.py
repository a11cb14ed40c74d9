"""Drop-in quantizer layers: ``quantized, indices, loss = vq(x)``.

Each layer is an ``nn.Module`` that takes tokens ``(B, N, D)`` (any ``(B, ..., D)``, channels
last) or, with ``channel_first=True``, feature maps ``(B, D, H, W)`` (any ``(B, D, ...)``);
returns the straight-through quantized tensor in the input's layout, the ids and the layer's
whole loss (its codebook / commitment / MH-Dropout terms already summed: add it to yours); and
maps ids back to vectors with ``get_output_from_indices``. The tokenizers are built on these
same layers; ``quantize(...)`` gives the detailed output they use (every loss term, the raw
codes) on channel-first maps.

One layout for everything that is not a feature map: ids are ``(B, *grid)``, multichannel ids
``(B, *grid, c)`` and MVQ masks ``(B, *grid, D')``, the per-position axis last, as in
`mvq.values.codes.Codes`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mvq.errors import MvqError
from mvq.quantize.arguments import (
    LOOKUP_RENAMED,
    check_bool,
    check_choice,
    check_codebook,
    check_int,
    check_module,
    check_optional_int,
    check_vq_kwargs,
    linear,
)
from mvq.quantize.layout import (
    as_rows,
    check_ids,
    check_ids_per_position,
    check_input,
    check_mask,
    from_columns,
    to_columns,
)
from mvq.quantize.masked import MASK_SAMPLING, SEARCHES, MaskedOutput, MaskedQuantizer
from mvq.quantize.multichannel import MultiChannelQuantizer
from mvq.quantize.pointwise import Pointwise, pointwise_mlp
from mvq.quantize.secondary import ChannelCode
from mvq.quantize.vq import QuantizeOutput, VectorQuantizer


class VectorQuantize(VectorQuantizer):
    """Nearest-code VQ with a straight-through gradient, EMA codebook by default.

    ``quantized, indices, loss = vq(x)``: x ``(B, N, D)`` (or ``(B, D, H, W)`` with
    ``channel_first``); quantized has x's shape, indices ``(B, N)`` (``(B, H, W)``), loss the
    commitment term ``beta * ||x - sg[e]||^2`` (plus ``||sg[x] - e||^2`` when ``ema=False``).

    Args:
        dim: vector size D.
        codebook_size: entries K.
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        codebook_dim: search a codebook of this size: a linear map takes each vector from
            ``dim`` down to it before the lookup and another back after (ViT-VQGAN's
            low-dimensional code lookup; the loss is the looked-up space's). Default ``dim``:
            no projection.
        cosine: l2-normalise vectors and codes before the lookup (cosine similarity).
        rotation_trick: the rotation trick's gradient instead of straight through.
        **kwargs: the codebook keywords of the engine
            [`VectorQuantizer`][mvq.quantize.vq.VectorQuantizer], with their defaults:
            ``beta=0.25`` (commitment weight), ``ema=True`` (EMA codebook updates, no codebook
            gradient), ``decay=0.99`` (EMA decay), ``restart_dead=True`` (re-seed rarely used
            codes from the batch), ``dead_threshold=0.03`` (expected assignments per batch
            below which a code is dead), ``kmeans_init=False`` (k-means on the first training
            batch), ``eps=1e-5`` (EMA smoothing).
    """

    def __init__(self, dim: int, codebook_size: int, *, channel_first: bool = False,
                 codebook_dim: int | None = None, cosine: bool = False,
                 rotation_trick: bool = False, **kwargs: object) -> None:
        layer = "VectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        lookup = dim if codebook_dim is None else check_int(layer, "codebook_dim", codebook_dim,
                                                            1, "codebook_dim=8")
        for name, value in (("channel_first", channel_first), ("cosine", cosine),
                            ("rotation_trick", rotation_trick)):
            check_bool(layer, name, value)
        kwargs = check_vq_kwargs(layer, kwargs, "dim, codebook_size, channel_first, "
                                 "codebook_dim, cosine, rotation_trick", LOOKUP_RENAMED)
        check_codebook(layer, codebook_size, lookup)
        super().__init__(codebook_size, lookup, cosine=cosine, rotation_trick=rotation_trick,
                         **kwargs)
        self.channel_first, self.input_dim = channel_first, dim
        projects = lookup != dim
        self.project_in = nn.Linear(dim, lookup) if projects else nn.Identity()
        self.project_out = nn.Linear(lookup, dim) if projects else nn.Identity()

    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """The detailed output on a ``(B, D, H, W)`` map of the looked-up size
        (``codebook_dim``): every loss term, the raw codes."""
        return VectorQuantizer.forward(self, z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_input(x, self.input_dim, self.channel_first, "VectorQuantize")
        if self.input_dim != self.dim:
            return self._projected(x)
        if not self.channel_first:  # (B, ..., D): its rows as (M, D, 1, 1), no transpose
            out = self.quantize(as_rows(x, self.dim))
            return out.quantized.reshape(x.shape), out.indices.reshape(x.shape[:-1]), out.loss
        z, grid = to_columns(x, self.channel_first)
        out = self.quantize(z)
        return (from_columns(out.quantized, grid, self.channel_first),
                out.indices.reshape(x.shape[0], *grid), out.loss)

    def _projected(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Down to ``codebook_dim``, the lookup, back up (fp32 maths under autocast)."""
        last = x.movedim(1, -1) if self.channel_first else x
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows = last.reshape(-1, self.input_dim)
            rows = rows if rows.dtype == torch.float64 else rows.float()
            out = self.quantize(linear(self.project_in, rows)[:, :, None, None])
            up = linear(self.project_out, out.quantized.flatten(1)).reshape(last.shape)
        up = up.movedim(-1, 1) if self.channel_first else up
        return up.to(x.dtype), out.indices.reshape(last.shape[:-1]), out.loss

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids ``(B, *grid)`` (after ``project_out``), in the layer's layout."""
        check_ids(indices, "indices")
        grid = tuple(indices.shape[1:])
        codes = self.lookup(indices.reshape(indices.shape[0], math.prod(grid), 1))  # (B, D, N, 1)
        if self.input_dim != self.dim:
            with torch.autocast(device_type=codes.device.type, enabled=False):
                up = linear(self.project_out, codes.squeeze(-1).transpose(1, 2))
            codes = up.transpose(1, 2).unsqueeze(-1)
        return from_columns(codes, grid, self.channel_first)


class MultiChannelVectorQuantize(MultiChannelQuantizer):
    """MoVQ's multichannel VQ: each D-vector is cut into ``channels`` chunks of D / channels,
    all quantized by one shared codebook.

    ``quantized, indices, loss = vq(x)``: x ``(B, N, D)`` (or ``(B, D, H, W)``), indices
    ``(B, N, channels)`` (``(B, H, W, channels)``), loss as
    [`VectorQuantize`][mvq.quantize.layers.VectorQuantize]'s.
    """

    def __init__(self, dim: int, codebook_size: int, *, channels: int = 4,
                 channel_first: bool = False, **kwargs) -> None:
        layer = "MultiChannelVectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        check_int(layer, "channels", channels, 1, "channels=4")
        check_bool(layer, "channel_first", channel_first)
        kwargs = check_vq_kwargs(layer, kwargs, "dim, codebook_size, channels, channel_first")
        check_codebook(layer, codebook_size, dim // channels)
        if dim % channels:
            raise MvqError(f"MultiChannelVectorQuantize: dim={dim} must split into channels="
                           f"{channels} equal chunks; pick a divisor of dim")
        super().__init__(codebook_size, dim, channels, **kwargs)
        self.channel_first = channel_first

    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """The detailed output on a ``(B, D, H, W)`` map; indices ``(B, H, W, channels)``."""
        return MultiChannelQuantizer.forward(self, z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_input(x, self.dim_total, self.channel_first, "MultiChannelVectorQuantize")
        if not self.channel_first:  # each chunk of each vector one row of the shared codebook
            out = self.vq(as_rows(x, self.code_dim))
            ids = out.indices.reshape(*x.shape[:-1], self.channels)
            return out.quantized.reshape(x.shape), ids, out.loss
        z, grid = to_columns(x, self.channel_first)
        out = self.quantize(z)
        ids = out.indices.reshape(x.shape[0], *grid, self.channels)
        return from_columns(out.quantized, grid, self.channel_first), ids, out.loss

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Vectors for ids ``(B, *grid, channels)``, in the layer's layout."""
        grid = check_ids_per_position(indices, self.channels, "channel")
        flat = indices.reshape(indices.shape[0], math.prod(grid), 1, self.channels)
        return from_columns(self.lookup(flat), grid, self.channel_first)


class MaskedVectorQuantize(MaskedQuantizer):
    """Masked VQ with Multiple Hypotheses Dropout (MVQ paper, section 3) as one layer.

    Each position gets a primary code e, a secondary code e' of the secondary projection
    y' = E'(x), and a mask m over e''s D' channels; the output is ``e + f(e' * m)`` (eq. 5).
    Training searches ``num_masks`` random masks per position and keeps the nearest to x
    (winner takes all); at inference the search runs over a fixed seeded bank, so codes are
    deterministic.

    ``quantized, (indices, indices2), loss, mask = mvq(x)``: x ``(B, N, D)`` (or
    ``(B, D, H, W)``); ids ``(B, N)`` each; mask ``(B, N, D')`` bool; loss = primary VQ +
    secondary quantizer + MH-Dropout terms.

    The layer owns E' and f. By default both are per position (a 1x1 convolution and a
    two-layer 1x1 MLP), so every position is an independent instance of the search. Give your
    own ``secondary_encoder`` ((B, D, H, W) -> (B, D', H', W'), e.g. a downsampling network)
    and ``f`` ((B, D', H', W') -> (B, D, H, W)) for a coarser secondary grid (VQ-VAE-2 style,
    as the tokenizers do); then inputs must be ``channel_first`` maps, each image is one
    instance, and ids / mask follow the two grids: ``(B, H, W)``, ``(B, H', W')``,
    ``(B, H', W', D')``.

    Args:
        dim: D, the input's vector size.
        codebook_size: K of the primary codebook (the paper gives each codebook K/2).
        dim2: D', the secondary code's size and the mask's bits (default D).
        codebook_size2: K' of the secondary codebook (default K).
        num_masks: J, hypotheses per instance while training.
        eval_masks: the size of the seeded bank searched at inference (default J).
        secondary_encoder: E', (B, D, H, W) -> (B, D', H', W') (default: a 1x1 convolution).
        f: (B, D', H', W') -> (B, D, H, W) (default: a 1x1 two-layer MLP).
        hidden: width of the default f (default 2 max(D, D')).
        channel_first: inputs are ``(B, D, ...)`` feature maps.
        chunk_size: hypotheses scored at once in the search (memory bound, not a result).
        search_seed: seed of the inference bank.
        naive: score all J hypotheses with autograd (a reference; slower, same gradients).
        mask_sampling: ``"instance"`` (J fresh masks per instance while training, the paper's
            reading) or ``"batch"`` (one bank of J fresh masks per step, shared by the batch's
            instances: the search becomes a table lookup, docs/implementation.md).
        search: ``"auto"``, ``"table"`` or ``"chunked"`` (the reference search); the winners
            are the same.
        secondary: the secondary quantizer: ``None`` (a VQ codebook of ``codebook_size2``
            entries of ``dim2``) or a channel-code layer, ``mvq.FSQ(levels)`` (e' = the rounded
            channels, D' = len(levels), K' = prod(levels)) or ``mvq.LFQ(bits)`` (e' = the
            signs, D' = bits, K' = 2^bits), built without ``dim`` (no projection: the mask
            covers the code's own channels); ``dim2`` and ``codebook_size2`` follow from it.
            Its loss (LFQ's commitment and entropy terms; FSQ has none) joins the layer's.
        **vq_kwargs: both codebooks' ``beta``, ``ema``, ``decay``, ``restart_dead``,
            ``dead_threshold``, ``kmeans_init``.
    """

    def __init__(self, dim: int, codebook_size: int, *, dim2: int | None = None,
                 codebook_size2: int | None = None, num_masks: int = 64,
                 eval_masks: int | None = None, secondary_encoder: nn.Module | None = None,
                 f: nn.Module | None = None, hidden: int | None = None,
                 channel_first: bool = False, chunk_size: int = 256, search_seed: int = 0,
                 naive: bool = False, mask_sampling: str = "instance", search: str = "auto",
                 secondary: nn.Module | None = None, **vq_kwargs: object) -> None:
        layer = "MaskedVectorQuantize"
        check_int(layer, "dim", dim, 1, "dim=64")
        check_int(layer, "codebook_size", codebook_size, 1, "codebook_size=512")
        channel_code = None if secondary is None else ChannelCode(secondary)
        if channel_code is not None:
            for name, given, implied in (("dim2", dim2, channel_code.dim),
                                         ("codebook_size2", codebook_size2,
                                          channel_code.num_codes)):
                if given is not None and given != implied:
                    raise MvqError(f"MaskedVectorQuantize: {name}={given!r} disagrees with the "
                                   f"secondary {type(secondary).__name__}, which has {implied}; "
                                   f"leave {name} out")
            dim2, codebook_size2 = channel_code.dim, channel_code.num_codes
        dim2 = check_optional_int(layer, "dim2", dim2, 1, "dim2=16 (or None: dim)") or dim
        codebook_size2 = check_optional_int(layer, "codebook_size2", codebook_size2, 1,
                                            "codebook_size2=512 (or None: codebook_size)"
                                            ) or codebook_size
        check_int(layer, "num_masks", num_masks, 1, "num_masks=64")
        check_optional_int(layer, "eval_masks", eval_masks, 1, "eval_masks=256 (or None: "
                           "num_masks)")
        check_optional_int(layer, "hidden", hidden, 1, "hidden=128 (or None: 2 max(dim, dim2))")
        check_int(layer, "chunk_size", chunk_size, 1, "chunk_size=256")
        check_int(layer, "search_seed", search_seed, 0, "search_seed=0")
        check_bool(layer, "channel_first", channel_first)
        check_bool(layer, "naive", naive)
        check_choice(layer, "mask_sampling", mask_sampling, MASK_SAMPLING)
        check_choice(layer, "search", search, SEARCHES)
        check_module(layer, "secondary_encoder", secondary_encoder)
        check_module(layer, "f", f)
        vq_kwargs = check_vq_kwargs(layer, vq_kwargs, "dim, codebook_size, dim2, codebook_size2, "
                                    "num_masks, eval_masks, secondary_encoder, f, hidden, "
                                    "channel_first, chunk_size, search_seed, naive, "
                                    "mask_sampling, search, secondary")
        check_codebook(layer, codebook_size + (0 if channel_code else codebook_size2),
                       max(dim, dim2))
        custom = secondary_encoder is not None or f is not None
        if custom and (secondary_encoder is None or f is None):
            raise MvqError("MaskedVectorQuantize: give both secondary_encoder and f, or neither "
                           "(the per-position defaults)")
        if custom and not channel_first:
            raise MvqError("MaskedVectorQuantize: a custom secondary_encoder / f works on "
                           "feature maps; pass channel_first=True and (B, D, H, W) inputs")
        primary = VectorQuantizer(codebook_size, dim, **vq_kwargs)
        secondary = channel_code or VectorQuantizer(codebook_size2, dim2, **vq_kwargs)
        width = hidden or 2 * max(dim, dim2)
        super().__init__(primary, secondary, f if custom else pointwise_mlp(dim2, dim, width),
                         num_masks=num_masks, eval_masks=eval_masks, chunk_size=chunk_size,
                         search_seed=search_seed, naive=naive, mask_sampling=mask_sampling,
                         search=search)
        self.secondary_encoder = secondary_encoder if custom else Pointwise(dim, dim2)
        self.per_position = not custom
        self.channel_first = channel_first
        self.dim, self.dim2 = dim, dim2

    def quantize(self, y: torch.Tensor, masks: torch.Tensor | None = None) -> MaskedOutput:
        """The detailed output on a ``(B, D, H, W)`` map (each image one instance)."""
        return MaskedQuantizer.forward(self, y, self.secondary_encoder(y), masks)

    def _instances(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Per-position: (B*N, D, 1, 1) instances; custom modules: the map as it is."""
        if not self.per_position:
            if x.dim() != 4:
                raise MvqError(f"MaskedVectorQuantize with custom modules expects (B, {self.dim}, "
                               f"H, W), found shape {tuple(x.shape)}")
            return x, tuple(x.shape[2:])
        if not self.channel_first:
            return as_rows(x, self.dim), tuple(x.shape[1:-1])
        z, grid = to_columns(x, self.channel_first)  # (B, D, N, 1)
        return z.permute(0, 2, 1, 3).reshape(-1, self.dim, 1, 1), grid

    def _restore(self, y: torch.Tensor, batch: int, grid: tuple[int, ...]) -> torch.Tensor:
        if not self.per_position:
            return y
        if not self.channel_first:  # the rows of as_rows, back in place
            return y.reshape(batch, *grid, self.dim)
        cols = y.reshape(batch, math.prod(grid), self.dim, 1).permute(0, 2, 1, 3)  # (B, D, N, 1)
        return from_columns(cols, grid, self.channel_first)

    def forward(self, x: torch.Tensor):
        """x -> (quantized, (ids, ids2), loss, mask); see the class docstring for shapes."""
        x = check_input(x, self.dim, self.channel_first, "MaskedVectorQuantize")
        z, grid = self._instances(x)
        out = self.quantize(z)
        loss = out.primary.loss + out.secondary.loss + out.mhd_loss
        b = x.shape[0]
        if self.per_position:
            ids = out.primary.indices.reshape(b, *grid)
            return (self._restore(out.y_hat, b, grid),
                    (ids, out.secondary.indices.reshape(b, *grid)), loss,
                    out.mask.reshape(b, *grid, self.dim2))
        return out.y_hat, (out.primary.indices, out.secondary.indices), loss, out.mask

    def get_output_from_indices(self, indices: torch.Tensor, indices2: torch.Tensor,
                                mask: torch.Tensor) -> torch.Tensor:
        """``e + f(e' * m)`` for ids and mask in the layouts ``forward`` returns."""
        check_ids(indices, "indices"), check_ids(indices2, "indices2")
        if not self.per_position:
            if indices.dim() != 3 or indices2.dim() != 3 or indices.shape[0] != indices2.shape[0]:
                raise MvqError(f"indices and indices2 must be (B, H, W) and (B, H', W'), found "
                               f"{tuple(indices.shape)} and {tuple(indices2.shape)}")
            mask = check_mask(mask, (*indices2.shape, self.dim2))
            return self.decode_codes(indices, indices2, mask)
        check_ids(indices2, "indices2", indices.shape)
        mask = check_mask(mask, (*indices.shape, self.dim2))
        b, grid = indices.shape[0], tuple(indices.shape[1:])
        flat = (indices.reshape(-1, 1, 1), indices2.reshape(-1, 1, 1),
                mask.reshape(-1, 1, 1, self.dim2))
        return self._restore(self.decode_codes(*flat), b, grid)
