"""Token sampling time per image, the MVQ paper's Table 6 re-measured on this machine.

For S primary tokens (+1 secondary token) the two-stage prior has the MVQ paper's Table 4
sizes (the 16+1 size beyond 16 tokens; codebooks of --vocab entries each) and samples one
image's codes (primary, secondary, random mask) with
  naive     full recompute of the whole prefix for every token, batch 1
  cached    KV cache (preallocated, single-token steps), batch 1
  cached/64 KV cache, batch 64, time per image
  unfused   the cached sampler with each step through the transformer Block (the training
            code) instead of the fused single-token step: what the fused step buys
  maskgit   a bidirectional transformer with the primary stage's width/depth over the S+1
            tokens, 8 and 12 parallel decoding steps, batch 1 (skipped where S+1 is
            fewer tokens than steps: a step that reveals nothing is no decoding step)
All cells are measured in this one run (median of --repeats, runs interleaved, one warm-up;
a cell whose runs already took --cell-budget seconds is not repeated further);
the paper's CPU column (Intel i9-9900) is printed beside them for reference.

    python -m mvq.bench.sampling [--quick] [--lengths 1,4,16,64,256,1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from mvq.bench.common import json_path, positive_ints, write_json
from mvq.priors import MaskGIT, MaskGITConfig, MVQPrior, table4_size

PAPER_CPU_S = {1: 0.014, 4: 0.070, 16: 0.637, 64: 11.107, 256: 268.368, 1024: 1365.668}
MASK_DIM = 64  # D' mask bits of the secondary token (drawn at random, cost negligible)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _linear_weights(gpt) -> list[torch.Tensor]:
    return [m.weight for m in gpt.modules() if isinstance(m, torch.nn.Linear)]


@torch.inference_mode()
def step_floor(gpt, cache_len: int = 0, repeats: int = 20) -> float:
    """Seconds of the data a batch-1 cached step of `gpt` must read, with no other work:
    one row through every linear layer (each weight read once) and, with cache_len > 0,
    each layer's attention over cache_len cached keys and values (two bmm and a softmax).

    Every generated token does at least this, so it bounds any single-token step from below.
    Sampling S tokens attends to 1..S cached positions, (S + 1) / 2 on average: the
    benchmark takes the floor at that length for the mean step.
    """
    c, nh = gpt.cfg.n_embd, gpt.cfg.n_head
    weights = [w.t().contiguous() for w in _linear_weights(gpt)]
    rows = {w.shape[0]: torch.randn(1, w.shape[0]) for w in weights}
    n_layer = gpt.cfg.n_layer
    keys = [torch.randn(nh, c // nh, cache_len) for _ in range(n_layer)] if cache_len else []
    values = [torch.randn(nh, cache_len, c // nh) for _ in range(n_layer)] if cache_len else []
    query = torch.randn(nh, 1, c // nh)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            rows[w.shape[0]] @ w
        for k, v in zip(keys, values):
            torch.bmm(torch.bmm(query, k).softmax(-1), v)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(length: int, vocab: int, repeats: int, batch: int, naive_max_len: int,
            budget_s: float = 60.0) -> dict:
    torch.manual_seed(0)
    sizes = table4_size(length)
    prior = MVQPrior(grid(length), [vocab, vocab], (1, 1), mask_dim=MASK_DIM, sizes=sizes).eval()
    maskgit = MaskGIT(MaskGITConfig(vocab, length + 1, 1, **sizes["primary"])).eval()
    def unfused():  # the same cached sampler with every step through `Block.forward`
        for gpt in (prior.primary, prior.secondary):
            gpt.fused_decode = False
        try:
            prior.sample(1, seed=0)
        finally:
            for gpt in (prior.primary, prior.secondary):
                gpt.fused_decode = True

    cells = {
        "cached": lambda: prior.sample(1, seed=0),
        "unfused": unfused,
        f"cached_b{batch}": lambda: prior.sample(batch, seed=0),
    }
    for steps in (8, 12):  # a step must reveal a token: no more steps than the S+1 tokens
        if steps <= length + 1:
            cells[f"maskgit{steps}"] = lambda steps=steps: maskgit.generate(1, steps)
    if length <= naive_max_len:
        cells["naive"] = lambda: prior.sample(1, seed=0, use_cache=False)
    for name, fn in cells.items():  # warm-up (allocator, kernels); a long naive one is skipped
        if name != "naive" or length <= 16:
            fn()
    times: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(repeats):
        for name, fn in cells.items():
            if times[name] and sum(times[name]) > budget_s:
                continue  # a long cell (naive at 1024+1 runs for minutes): fewer repeats
            times[name].append(timed(fn))
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    floor = step_floor(prior.primary)
    floor_cache = step_floor(prior.primary, (length + 1) // 2)
    med[f"cached_b{batch}"] /= batch  # per image
    row = {"tokens": f"{length}+1", "length": length, "paper_cpu_s": PAPER_CPU_S.get(length),
           "primary_params_m": prior.primary.num_params / 1e6,
           "secondary_params_m": prior.secondary.num_params / 1e6,
           "naive_s": med.get("naive"), "cached_s": med["cached"],
           "unfused_s": med["unfused"], "speedup_fused": med["unfused"] / med["cached"],
           f"cached_b{batch}_s_per_image": med[f"cached_b{batch}"],
           "maskgit8_s": med.get("maskgit8"), "maskgit12_s": med.get("maskgit12")}
    row["speedup_cached_vs_naive"] = (med["naive"] / med["cached"]) if "naive" in med else None
    row["runs"] = {name: len(v) for name, v in times.items()}
    row["primary_weights_mb"] = sum(w.numel() * w.element_size() for w in _linear_weights(
        prior.primary)) / 1e6
    row["linear_floor_ms_per_token"] = floor * 1e3
    row["step_floor_ms_per_token"] = floor_cache * 1e3  # linear layers + mean cache read
    row["max_speedup_vs_naive"] = (med["naive"] / (length * floor_cache)) if "naive" in med \
        else None
    return row


def fmt(x: float | None, width: int = 9, missing: str = "skipped") -> str:
    if x is None:
        return f"{missing:>{width}}"
    return f"{x:>{width}.4f}" if x < 10 else f"{x:>{width}.2f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=positive_ints, default=[1, 4, 16, 64, 256, 1024],
                   help="primary token counts S (each gets +1 secondary token)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=256, help="entries per codebook (K/2)")
    p.add_argument("--batch", type=int, default=64, help="batch of the batched cached column")
    p.add_argument("--naive-max-len", type=int, default=1024,
                   help="skip the naive path above this S (it costs O(S^2) token-forwards)")
    p.add_argument("--cell-budget", type=float, default=60.0,
                   help="stop repeating a cell once its runs took this many seconds (default 60)")
    p.add_argument("--quick", action="store_true", help="S = 1, 4, 16 and 1 repeat (seconds)")
    p.add_argument("--json", type=json_path, help="write the rows here")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    return p


def _ratio(a, c) -> str:
    return f"{a / c:.1f}x" if a is not None and c else "-"


def _print_header(vocab: int, repeats: int, b: int) -> None:
    print(f"token sampling, seconds per image; median of up to {repeats} runs per cell; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s), {cpu_name()}; "
          f"codebooks {vocab} + {vocab}, mask {MASK_DIM} bits")
    head = (f"{'tokens':>7} | {'paper CPU':>9} | {'naive':>9} | {'cached':>9} | "
            f"{'naive/cached':>12} | {f'cached b{b}':>9} | {'maskgit 8':>9} | {'maskgit 12':>10}"
            f" | {'params M':>10}")
    print(head)
    print("-" * len(head))


def _print_row(r: dict, b: int) -> None:
    speed = r["speedup_cached_vs_naive"]
    speed_s = f"{speed:>11.1f}x" if speed is not None else f"{'-':>12}"
    paper = fmt(r["paper_cpu_s"]) if r["paper_cpu_s"] is not None else f"{'-':>9}"
    params = f"{r['primary_params_m']:.1f}+{r['secondary_params_m']:.1f}"
    print(f"{r['tokens']:>7} | {paper} | "
          f"{fmt(r['naive_s'])} | {fmt(r['cached_s'])} | {speed_s} | "
          f"{fmt(r[f'cached_b{b}_s_per_image'])} | {fmt(r['maskgit8_s'], 9, 'n/a')} | "
          f"{fmt(r['maskgit12_s'], 10, 'n/a')} | {params:>10}", flush=True)


def _print_summary(rows: list[dict], b: int, naive_max_len: int) -> None:
    """The speed-ups of the same run, the memory-read bound of a cached step, the notes."""
    if any(r["maskgit12_s"] is None for r in rows):
        print("maskgit n/a: S+1 tokens are fewer than the steps (each step reveals a token)")
    print(f"\nspeed-ups, same run: {'tokens':>7} | {'naive/cached':>12} | "
          f"{f'cached/cached b{b}':>17} | {'cached/maskgit 8':>16} | {'cached/maskgit 12':>17} | "
          f"{'unfused/cached':>14}")
    for r in rows:
        print(f"{'':21} {r['tokens']:>7} | {_ratio(r['naive_s'], r['cached_s']):>12} | "
              f"{_ratio(r['cached_s'], r[f'cached_b{b}_s_per_image']):>17} | "
              f"{_ratio(r['cached_s'], r['maskgit8_s']):>16} | "
              f"{_ratio(r['cached_s'], r['maskgit12_s']):>17} | "
              f"{_ratio(r['unfused_s'], r['cached_s']):>14}")
    print("\nbound: a batch-1 cached step reads every primary weight once and the cached keys "
          "and values; those reads alone take (median of 20, this run; cache at the mean "
          "length (S + 1) / 2):")
    for r in rows:
        best = r["max_speedup_vs_naive"]
        print(f"{'':21} {r['tokens']:>7} | {r['primary_weights_mb']:6.1f} MB | linear layers "
              f"{r['linear_floor_ms_per_token']:6.2f} ms/token | + cache "
              f"{r['step_floor_ms_per_token']:6.2f} ms/token | naive / (S x floor) = "
              + (f"{best:.1f}x" if best is not None else "-"))
    skipped = [str(r["tokens"]) for r in rows if r["naive_s"] is None]
    print("paper CPU: MVQ paper Table 6, Intel i9-9900, their implementation (not re-run here); "
          "every other cell was measured in this run.")
    if skipped:
        print(f"naive skipped for {', '.join(skipped)} (--naive-max-len {naive_max_len}).")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [1, 4, 16] if args.quick else args.lengths
    repeats = 1 if args.quick else args.repeats
    b = args.batch
    _print_header(args.vocab, repeats, b)
    rows = []
    for length in lengths:
        rows.append(measure(length, args.vocab, repeats, b, args.naive_max_len, args.cell_budget))
        _print_row(rows[-1], b)
    _print_summary(rows, b, args.naive_max_len)
    write_json(args.json, {"repeats": repeats, "vocab": args.vocab, "batch": b,
                           "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "rows": rows})


if __name__ == "__main__":
    main()
