"""MH-Dropout: efficient (chunked no-grad search + winner recompute) vs naive (all J with autograd).

For each J, one training step (forward + backward) of the MVQ layer — the two quantizers, the
search and f — on encoder outputs of a batch of 32, in the FashionMNIST set-up of the MVQ paper
(Table 3 networks, D = D' = 16). Both variants run side by side in this one run, each step in a
fresh subprocess so peak memory is the step's own: peak RSS growth on CPU,
torch.cuda.max_memory_allocated on GPU.

    python -m mvq.bench.mh_dropout [--factor 28] [--masks 16 128 1024 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import torch

from mvq.nn.vqvae2 import build_networks
from mvq.quantize import MaskedVectorQuantize


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(factor: int, j: int, naive: bool, batch: int, repeats: int, device: str,
           chunk: int) -> dict:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    size = 28 if factor in (7, 14, 28) else 32
    nets = build_networks(factor, size, 1, 16, 16)
    layer = MaskedVectorQuantize(16, 8, dim2=16, codebook_size2=8,
                                 secondary_encoder=torch.nn.Identity(), f=nets["f"],
                                 channel_first=True, num_masks=j, chunk_size=chunk,
                                 naive=naive).to(device)
    grid = size // factor
    y = torch.randn(batch, 16, grid, grid, device=device, requires_grad=True)
    y2 = torch.randn(batch, 16, 1, 1, device=device, requires_grad=True)

    def step():
        out = layer.quantize(y, y2=y2)  # y2 given: the layer's secondary encoder is not run
        (out.mhd_loss + out.y_hat.square().mean() + out.primary.loss
         + out.secondary.loss).backward()

    step()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_mb": max(peak, 0.0)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factor", type=int, default=28, help="Table 3 factor (28: 1+1 tokens at 28px)")
    p.add_argument("--masks", type=int, nargs="+", default=[16, 128, 1024, 2048])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=256, help="hypotheses per chunk (efficient search)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="J in {16, 128} only, 2 repeats")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", nargs=2, metavar=("J", "NAIVE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        j, naive = int(args.worker[0]), args.worker[1] == "1"
        print(json.dumps(worker(args.factor, j, naive, args.batch, args.repeats, args.device,
                                args.chunk)))
        return
    masks = [16, 128] if args.quick else args.masks
    repeats = 2 if args.quick else args.repeats
    print(f"MH-Dropout layer, F={args.factor}, batch {args.batch}, D=D'=16, device {args.device}, "
          f"chunk {args.chunk}; median of {repeats} steps, each variant in its own process")
    print(f"{'J':>6} | {'efficient s':>11} | {'naive s':>9} | {'speed-up':>8} | "
          f"{'eff. peak MB':>12} | {'naive peak MB':>13} | {'memory ratio':>12}")
    rows = []
    for j in masks:
        res = {}
        for naive in (False, True):
            cmd = [sys.executable, "-m", "mvq.bench.mh_dropout", "--worker", str(j),
                   str(int(naive)), "--factor", str(args.factor), "--batch", str(args.batch),
                   "--repeats", str(repeats),
                   "--device", args.device, "--chunk", str(args.chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"worker failed for J={j} naive={naive}:\n{out.stderr[-2000:]}")
            res["naive" if naive else "efficient"] = json.loads(out.stdout.strip().splitlines()[-1])
        e, n = res["efficient"], res["naive"]
        row = {"J": j, "efficient_s": e["seconds"], "naive_s": n["seconds"],
               "efficient_peak_mb": e["peak_mb"], "naive_peak_mb": n["peak_mb"]}
        rows.append(row)
        print(f"{j:>6} | {e['seconds']:>11.4f} | {n['seconds']:>9.4f} | "
              f"{n['seconds'] / e['seconds']:>7.2f}x | {e['peak_mb']:>12.1f} | "
              f"{n['peak_mb']:>13.1f} | "
              f"{n['peak_mb'] / max(e['peak_mb'], 1e-3):>11.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"factor": args.factor, "batch": args.batch, "device": args.device,
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
