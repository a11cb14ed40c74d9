"""mvq VectorQuantize vs vector-quantize-pytorch's VectorQuantize, forward + backward.

Equal settings: EMA codebook (decay 0.99), commitment weight 0.25, dead-code restart on, no
k-means init, straight-through gradients, fp32, the same input tensor (B, N, D) fed as
channel-first maps to ours and channel-last sequences to theirs (that layout change is counted
in our time). Runs alternate between the two, in one process, and the median is reported.

    python -m mvq.bench.quantizer [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
import warnings
from importlib.metadata import version

import torch

from mvq.bench.common import json_path, write_json
from mvq.quantize import VectorQuantize as Ours
from mvq.runtime.extras import missing

warnings.filterwarnings("ignore")

CASES = [  # (batch, tokens, dim, codebook size)
    (32, 1, 16, 8),  # MVQ FashionMNIST, 1+1 tokens, K/2 = 8
    (32, 16, 64, 512),
    (32, 256, 64, 1024),  # MoVQ-like 16x16 map, 1024 x 64 codebook
    (16, 1024, 256, 8192),
]


def run(case, repeats: int) -> dict:
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:  # an optional dependency
        raise missing("vector-quantize-pytorch", "bench") from None

    b, n, d, k = case
    torch.manual_seed(0)
    ours = Ours(d, k, channel_first=True, beta=0.25, ema=True, decay=0.99,
                restart_dead=True).train()
    theirs = VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25,
                            threshold_ema_dead_code=1, kmeans_init=False).train()
    side = int(n ** 0.5)
    x = torch.randn(b, n, d)

    def step_ours():
        z = x.transpose(1, 2).reshape(b, d, side, side).contiguous().requires_grad_()
        out = ours.quantize(z)
        (out.quantized.square().mean() + out.loss).backward()

    def step_theirs():
        z = x.clone().requires_grad_()
        q, _, loss = theirs(z)
        (q.square().mean() + loss.sum()).backward()

    times = {"ours": [], "theirs": []}
    for f in (step_ours, step_theirs):
        f()  # warm-up
    for _ in range(repeats):
        for name, f in (("ours", step_ours), ("theirs", step_theirs)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"batch": b, "tokens": n, "dim": d, "codebook": k, "ours_ms": med["ours"] * 1e3,
            "theirs_ms": med["theirs"] * 1e3, "speedup": med["theirs"] / med["ours"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="two small cases, 5 repeats")
    p.add_argument("--json", type=json_path, help="write the results here")
    args = p.parse_args(argv)
    cases = CASES[:2] if args.quick else CASES
    repeats = 5 if args.quick else args.repeats
    print(f"forward+backward, median of {repeats} alternating runs, CPU threads "
          f"{torch.get_num_threads()}; "
          f"vector-quantize-pytorch {version('vector-quantize-pytorch')}")
    print(f"{'B':>4} {'N':>5} {'D':>4} {'K':>5} | {'mvq ms':>8} | {'vqp ms':>8} | {'vqp / mvq':>9}")
    rows = []
    for case in cases:
        r = run(case, repeats)
        rows.append(r)
        print(f"{r['batch']:>4} {r['tokens']:>5} {r['dim']:>4} {r['codebook']:>5} | "
              f"{r['ours_ms']:>8.2f} | "
              f"{r['theirs_ms']:>8.2f} | {r['speedup']:>8.2f}x")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
