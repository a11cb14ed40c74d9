"""A small decoder-only transformer prior with an explicit, preallocated KV cache.

Sequence layout: position 0 holds a learned start token (plus a class embedding when the model
is class conditional), positions 1..T hold the tokens. ``logits[:, t]`` is the distribution of
token ``t`` given tokens ``< t``, so a model is trained with ``model(idx, targets=idx)``.

Sampling has two paths that give the same tokens for the same generator:
``use_cache=True`` runs one single-token forward per step against cache tensors allocated once
(writes go into a slice, nothing is concatenated); ``use_cache=False`` recomputes the whole
prefix for every token (the naive ancestral sampler, kept as the benchmark baseline).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.values.decoding import Draw

_INV_SQRT2 = 1.0 / math.sqrt(2.0)

# MVQ paper Table 4: transformer sizes per tokens-per-image setting (S primary + 1 secondary).
TABLE4: dict[str, dict[str, dict[str, int]]] = {
    "1+1": {"primary": dict(n_layer=4, n_head=4, n_embd=64),
            "secondary": dict(n_layer=4, n_head=4, n_embd=64)},
    "4+1": {"primary": dict(n_layer=8, n_head=8, n_embd=128),
            "secondary": dict(n_layer=4, n_head=4, n_embd=128)},
    "16+1": {"primary": dict(n_layer=12, n_head=8, n_embd=256),
             "secondary": dict(n_layer=4, n_head=4, n_embd=256)},
}


def table4_size(primary_tokens: int) -> dict[str, dict[str, int]]:
    """Table 4 sizes for S primary tokens: the smallest preset with S' >= S; 16+1 beyond 16.

    The paper gives sizes only up to 16+1; longer sequences (64+1 .. 1024+1, Table 6) reuse the
    16+1 size, which is what the sampling benchmark measures.
    """
    if primary_tokens < 1:
        raise MvqError(f"a prior needs at least 1 primary token, got {primary_tokens}")
    key = "1+1" if primary_tokens <= 1 else "4+1" if primary_tokens <= 4 else "16+1"
    return {k: dict(v) for k, v in TABLE4[key].items()}


@dataclass
class GPTConfig:
    """vocab_size: token ids 0..V-1; block_size: most tokens per sequence (start token extra)."""

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    num_classes: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_sizes(self, "vocab_size", "block_size")


def check_sizes(cfg, *counts: str) -> None:
    """MvqError unless cfg.n_embd splits into cfg.n_head heads and every named field is >= 1."""
    if cfg.n_head < 1 or cfg.n_embd % cfg.n_head:
        raise MvqError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    for name in ("n_layer", *counts):
        if getattr(cfg, name) < 1:
            raise MvqError(f"{name} must be >= 1, got {getattr(cfg, name)}")


# --- sampling helpers ---------------------------------------------------------------------

def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) logits with all but the k largest per row set to -inf."""
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) logits restricted to the nucleus: the fewest most-probable tokens with mass >= p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of the strictly more probable tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the most probable token always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Draw one id per row of (B, V) logits -> (B,) int64. temperature 0 means argmax."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


# --- the network ---------------------------------------------------------------------------

class KVCache:
    """Keys and values of every layer, allocated once: (n_layer, B, n_head, max_len, head_dim).

    ``pos`` counts the positions already written; a forward of T new positions writes slice
    ``[pos, pos + T)`` and attends to ``[0, pos + T)`` (views, no copies of the past).
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len, self.pos = max_len, 0
        self.weights: tuple | None = None  # the model's decode weights, taken at the first step
        # per layer (B * n_head, max_len, head_dim) views for the single-token step's bmm
        flat = (n_layer, batch * n_head, max_len, head_dim)
        self.k_rows, self.v_rows = self.k.view(flat).unbind(0), self.v.view(flat).unbind(0)


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal or bidirectional; (B, T, C) -> (B, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        start = 0
        if cache is not None:  # write the new keys/values in place, attend over the filled part
            start, end = cache.pos, cache.pos + t
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        p = self.dropout if self.training else 0.0
        if not self.causal or t == 1:  # one new query may see every cached position
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # several new queries after a filled cache: query i sees keys <= start + i
            allowed = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout, causal)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj", "mlp.2")) else 0.02
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)


class GPT(nn.Module):
    """Causal transformer over (B, T) token ids, T <= block_size, optional class condition."""

    #: eval-mode single-token steps take `_decode_one` (off: through `Block`, as in training)
    fused_decode: bool = True

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size + 1, cfg.n_embd)  # +1: the start position
        self.start = nn.Parameter(torch.zeros(cfg.n_embd))
        self.cls = nn.Embedding(cfg.num_classes, cfg.n_embd) if cfg.num_classes else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.dropout)
                                    for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer)
        nn.init.normal_(self.start, 0.0, 0.02)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    # embeddings ------------------------------------------------------------------------
    def _prefix(self, b: int, cond: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, C) start token (+ class embedding) at position 0."""
        x = self.start.expand(b, 1, -1)
        if self.cls is not None:
            if cond is None:
                raise MvqError(f"this prior is class conditional ({self.cfg.num_classes} "
                               "classes): pass cond=(B,) class ids")
            x = x + self.cls(cond.view(b, 1))
        return x + self.wpe.weight[0]

    def _embed(self, idx: torch.Tensor, start_pos: int) -> torch.Tensor:
        """(B, T) ids at sequence positions start_pos.. (1-based after the start token)."""
        return self.wte(idx) + self.wpe.weight[start_pos:start_pos + idx.shape[1]]

    def _inputs(self, idx: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """[start, idx_0 .. idx_{T-1}] embedded: (B, T+1, C)."""
        return torch.cat([self._prefix(idx.shape[0], cond), self._embed(idx, 1)], 1)

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += x.shape[1]
        return self.ln_f(x)

    # public API ------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V), logits[:, t] = p(idx_t | idx_<t, cond); loss if targets.

        targets (B, T) are usually idx itself; entries equal to -1 are ignored.
        """
        if idx.shape[1] > self.cfg.block_size:
            raise MvqError(f"sequence of {idx.shape[1]} tokens exceeds block_size "
                           f"{self.cfg.block_size}")
        logits = self.head(self._trunk(self._inputs(idx[:, :-1], cond)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty cache for `batch` sequences of up to max_len positions (start included)."""
        c = self.cfg
        p = self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, max_len or c.block_size + 1,
                       c.n_embd // c.n_head, p.dtype, p.device)

    def step_logits(self, idx: torch.Tensor | None, cache: KVCache,
                    cond: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """Feed new tokens through the cache; logits (B, V) of the token after the last one.

        With an empty cache the start token is fed first (idx may then be None or a prompt).
        """
        n_new = (0 if idx is None else idx.shape[1]) + (cache.pos == 0)
        limit = min(cache.max_len, self.cfg.block_size + 1)
        if cache.pos + n_new > limit:
            raise MvqError(f"sequence of {cache.pos + n_new} positions (start token included) "
                           f"exceeds the {limit} this cache / block_size allow")
        if cache.pos == 0:
            b = batch if idx is None else idx.shape[0]
            x = self._prefix(b, cond)
            if idx is not None and idx.shape[1]:
                x = torch.cat([x, self._embed(idx, 1)], 1)
        else:
            if idx.shape[1] == 1 and not self.training and self.fused_decode:
                return self._decode_one(idx[:, 0], cache)
            x = self._embed(idx, cache.pos)
        return self.head(self._trunk(x, cache)[:, -1])

    @torch.no_grad()
    def _decode_weights(self) -> tuple:
        """The weights of the single-token step, packed once per sequence (a KVCache keeps
        them): linear weights transposed to (in, out), so a one-row ``x @ W`` reads W row by
        row; the query rows of the qkv projection carry the attention scale 1/sqrt(head_dim) and
        the MLP weights GELU's 1/sqrt(2), so the step needs no separate multiplies."""
        c = self.cfg.n_embd
        scale = 1.0 / math.sqrt(c // self.cfg.n_head)

        def t(w: torch.Tensor) -> torch.Tensor:
            return w.detach().t().contiguous()

        blocks = []
        for b in self.blocks:
            wqkv, bqkv = t(b.attn.qkv.weight), b.attn.qkv.bias.detach().clone()
            wqkv[:, :c] *= scale
            bqkv[:c] *= scale
            blocks.append((b.ln1.weight.detach(), b.ln1.bias.detach(), b.ln1.eps, wqkv, bqkv,
                           t(b.attn.proj.weight), b.attn.proj.bias.detach(),
                           b.ln2.weight.detach(), b.ln2.bias.detach(), b.ln2.eps,
                           t(b.mlp[0].weight) * _INV_SQRT2, b.mlp[0].bias.detach() * _INV_SQRT2,
                           t(b.mlp[2].weight) * _INV_SQRT2, b.mlp[2].bias.detach()))
        return tuple(blocks), t(self.head.weight)

    @torch.no_grad()
    def _decode_one(self, tok: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The single-token step on (B, C) rows: same math as `_trunk`, far fewer ops.

        Batch-1 decoding is bound by reading the weights (37.7 MB per token at the Table 4
        16+1 size) and by per-op overhead, so this path uses pre-transposed weights with the
        attention scale folded in and GELU's 1/sqrt(2) folded into the MLP (`_decode_weights`),
        writes the new key/value rows straight into the cache and attends with two bmm calls
        over the filled part (one query row needs no causal mask). Inference only:
        `step_logits` takes it in eval mode unless ``fused_decode`` is off.

        It repeats `Block.forward`'s maths on purpose: `mvq bench sampling` measures what it
        buys against the same cached sampler through `Block` (column "unfused"), and a test
        keeps both paths' tokens equal (tests/test_priors.py).
        """
        b, c, pos = tok.shape[0], self.cfg.n_embd, cache.pos
        nh = self.cfg.n_head
        hd = c // nh
        if cache.weights is None:  # once per sequence, not per token
            cache.weights = self._decode_weights()
        blocks, head_t = cache.weights
        x = F.embedding(tok, self.wte.weight) + self.wpe.weight[pos]
        for i, (w1, b1, e1, wqkv, bqkv, wo, bo, w2, b2, e2, wfc, bfc, wout, bout) in \
                enumerate(blocks):
            qkv = torch.addmm(bqkv, F.layer_norm(x, (c,), w1, b1, e1), wqkv).view(b, 3, nh, hd)
            keys, values = cache.k_rows[i], cache.v_rows[i]  # (B * nh, max_len, hd)
            keys.select(1, pos).copy_(qkv[:, 1].reshape(b * nh, hd))
            values.select(1, pos).copy_(qkv[:, 2].reshape(b * nh, hd))
            att = torch.bmm(qkv[:, 0].reshape(b * nh, 1, hd),
                            keys[:, :pos + 1].transpose(1, 2)).softmax(-1)
            y = torch.bmm(att, values[:, :pos + 1]).view(b, c)
            x = x + torch.addmm(bo, y, wo)
            # exact GELU with its 1/sqrt(2)s folded into the two MLP weights (two ops, not
            # F.gelu's costly call): u = a/sqrt(2), gelu(a) = (u + u erf(u)) / sqrt(2)
            u = torch.addmm(bfc, F.layer_norm(x, (c,), w2, b2, e2), wfc)
            x = x + torch.addmm(bout, torch.addcmul(u, u, torch.erf(u)), wout)
        cache.pos += 1
        return self.ln_f(x) @ head_t

    @torch.inference_mode()
    def generate(self, n: int, steps: int, draw: Draw = Draw(),
                 cond: torch.Tensor | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, prompt: torch.Tensor | None = None,
                 vocab_range: tuple[int, int] | None = None) -> torch.Tensor:
        """Ancestral sampling of `steps` new tokens -> (n, steps) int64 ids.

        draw: temperature, top_k, top_p of each token (drawn from ``generator``).
        prompt: (n, P) ids that precede the sampled ones (not returned).
        vocab_range: (lo, hi) restricts the sampled ids to [lo, hi) (ids stay in full vocab).
        use_cache=False recomputes the whole prefix for each token (slow reference path).
        """
        p_len = 0 if prompt is None else prompt.shape[1]
        if p_len + steps > self.cfg.block_size:
            raise MvqError(f"prompt {p_len} + steps {steps} exceeds block_size "
                           f"{self.cfg.block_size}")
        device = self.wte.weight.device
        out = torch.empty(n, steps, dtype=torch.long, device=device)
        lo, hi = vocab_range or (0, self.cfg.vocab_size)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return sample_logits(logits[:, lo:hi], draw.temperature, draw.top_k, draw.top_p,
                                 generator) + lo

        if use_cache:
            cache = self.new_cache(n, p_len + steps + 1)
            logits = self.step_logits(prompt, cache, cond, batch=n)
            for t in range(steps):
                out[:, t] = pick(logits)
                if t + 1 < steps:
                    logits = self.step_logits(out[:, t:t + 1], cache)
            return out
        seq = prompt if prompt is not None else out[:, :0]
        for t in range(steps):  # naive: the whole prefix again for every new token
            h = self._trunk(self._inputs(seq, cond))
            out[:, t] = pick(self.head(h[:, -1]))
            seq = torch.cat([seq, out[:, t:t + 1]], 1)
        return out
