"""The drop-in layers side by side: MVQ's mask search against plain VQ (issue 30).

For each shape (B, N, D, K), one thread by default, in one run: ``VectorQuantize``,
vector-quantize-pytorch's ``VectorQuantize`` (same settings: EMA 0.99, commitment 0.25, dead-code
restart), ``MaskedVectorQuantize`` at each J with its training masks drawn per instance (the
paper's reading: the chunked search) and per batch (the table search), and
``MultiChannelVectorQuantize`` (c = 4). Training mode is forward + backward of
``quantized.square().mean() + loss``; inference is ``eval()`` forward under no_grad (MVQ: the
search over its seeded bank). Each cell is a median over rounds that run every layer once in
turn; ratios are to mvq's VectorQuantize in the same mode. GFLOP counts come from torch's
FlopCounterMode (matrix products and convolutions) and are set against the fp32 GEMM peak
measured in this run; "GFLOP x VQ" is a layer's count over VectorQuantize's, the time ratio it
would have at VectorQuantize's GFLOP/s (docs/implementation.md: what the FLOPs allow).
``--tokenizers`` adds the tokenizer-level step (mvq bench mh-dropout keeps the memory view).
``--argmin`` adds every layer with torch's argmin in place of
`mvq.quantize.argmin.row_argmin` (rows "... torch argmin"), in the same rounds: the speed-up of
the grouped argmin, side by side.

    python -m mvq.bench.layers [--quick] [--shapes 32,49,32,64 ...] [--masks 16 128 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvq.bench.common import gemm_peak_gflops, json_path, positive_ints, side_by_side, write_json
from mvq.configuration.config import load_config, model_type
from mvq.models import build_model
from mvq.quantize import MaskedVectorQuantize, MultiChannelVectorQuantize, VectorQuantize
from mvq.quantize import masked as masked_module
from mvq.quantize import vq as vq_module
from mvq.runtime.extras import missing

SHAPES = ((32, 49, 32, 64), (32, 256, 64, 512))  # (B, N, D, K): the two shapes
NAIVE_LIMIT = 1 << 21  # per-instance hypotheses B * N * J above which the chunked path is skipped
QUICK = "fmnist_f28_k16_quick"  # the preset whose tokenizer step --tokenizers times


@contextlib.contextmanager
def torch_argmin():
    """The quantizers' searches end in torch's own argmin while inside (the baseline of
    `mvq.quantize.argmin.row_argmin`)."""
    saved = vq_module.row_argmin, masked_module.row_argmin
    vq_module.row_argmin = masked_module.row_argmin = lambda x: x.argmin(-1)
    try:
        yield
    finally:
        vq_module.row_argmin, masked_module.row_argmin = saved


def _with_torch_argmin(step):
    def patched():
        with torch_argmin():
            step()
    return patched


def _train_step(layer, x: torch.Tensor):
    def step():
        xx = x.clone().requires_grad_()
        out = layer(xx)
        (out[0].square().mean() + out[2].sum()).backward()
    return step


def _eval_step(layer, x: torch.Tensor):
    def step():
        with torch.no_grad():
            layer(x)
    return step


def _flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _layers(d: int, k: int, masks: list[int], n_instances: int, everything: bool) -> dict:
    try:
        from vector_quantize_pytorch import VectorQuantize as TheirVQ
    except ImportError:  # an optional dependency
        raise missing("vector-quantize-pytorch", "bench") from None
    torch.manual_seed(0)
    layers = {"VectorQuantize": VectorQuantize(d, k),
              "vector-quantize-pytorch": TheirVQ(dim=d, codebook_size=k, decay=0.99,
                                                 commitment_weight=0.25,
                                                 threshold_ema_dead_code=1)}
    for j in masks:
        for sampling in ("instance", "batch"):
            if sampling == "instance" and n_instances * j > NAIVE_LIMIT and not everything:
                continue
            layers[f"MVQ J={j} {sampling}"] = MaskedVectorQuantize(
                d, k, num_masks=j, mask_sampling=sampling)
    layers["MultiChannel c=4"] = MultiChannelVectorQuantize(d, k, channels=4)
    return layers


def bench_shape(shape: tuple[int, ...], masks: list[int], repeats: int, everything: bool,
                peak: float, argmin: bool = False) -> list[dict]:
    b, n, d, k = shape
    x = torch.randn(b, n, d)
    layers = _layers(d, k, masks, b * n, everything)
    rows = []
    for mode, make in (("train", _train_step), ("eval", _eval_step)):
        steps = {}
        for name, layer in layers.items():
            if mode == "eval" and name.endswith(" instance"):
                continue  # inference searches the seeded bank whatever the training masks
            layer.train(mode == "train")
            steps[name.removesuffix(" batch") if mode == "eval" else name] = make(layer, x)
            if argmin and name != "vector-quantize-pytorch":
                key = name.removesuffix(" batch") if mode == "eval" else name
                steps[f"{key} torch argmin"] = _with_torch_argmin(steps[key])
        seconds = side_by_side(steps, repeats)
        base, theirs = seconds["VectorQuantize"], seconds["vector-quantize-pytorch"]
        flops = {name: _flops(steps[name]) for name in seconds}
        for name, sec in seconds.items():
            rows.append({"shape": list(shape), "mode": mode, "layer": name, "ms": sec * 1e3,
                         "vs_vq": sec / base, "vs_vqp": sec / theirs,
                         "gflop": flops[name] / 1e9,
                         # the time ratio a layer would have at VectorQuantize's GFLOP/s
                         "flop_vs_vq": flops[name] / flops["VectorQuantize"],
                         "gflops_per_s": flops[name] / sec / 1e9,
                         "peak_fraction": flops[name] / sec / 1e9 / peak})
    return rows


def bench_tokenizers(masks: list[int], repeats: int) -> list[dict]:
    """One training step (forward + backward, batch 32) of the quick preset's tokenizers: its
    MVQ type at each J and mask sampling against the same tokenizer without the mask. Each row's
    ``vs_BASELINE`` is its time over the baseline's."""
    x = torch.rand(32, 1, 28, 28)
    masked = load_config(QUICK).model.type
    base_type = model_type(masked).unmasked
    variants = {base_type: [f"model.type={base_type}"]}
    for j in masks:
        for sampling in ("instance", "batch"):
            variants[f"{masked} J={j} {sampling}"] = [f"model.num_masks={j}"]
    steps, models = {}, {}
    for name, over in variants.items():
        torch.manual_seed(0)
        model = build_model(load_config(QUICK, over).model).train()
        if name.endswith("batch"):
            model.mvq.mask_sampling = "batch"
        models[name] = model

        def step(model=model):
            model(x).loss.backward()
        steps[name] = step
    seconds = side_by_side(steps, repeats)
    base = seconds[base_type]
    return [{"tokenizer": name, "ms": sec * 1e3, f"vs_{base_type}": sec / base}
            for name, sec in seconds.items()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", type=positive_ints, default=None,
                   help="B,N,D,K per shape (default: 32,49,32,64 and 32,256,64,512)")
    p.add_argument("--masks", type=positive_ints, default=[16, 128, 1024],
                   help="J values, comma-separated (default 16,128,1024)")
    p.add_argument("--repeats", type=int, default=10, help="rounds per cell (median)")
    p.add_argument("--all", action="store_true",
                   help=f"also per-instance masks above {NAIVE_LIMIT} hypotheses (minutes)")
    p.add_argument("--tokenizers", action="store_true",
                   help="also the quick preset's tokenizer step: hvqvae against mvqvae")
    p.add_argument("--argmin", action="store_true",
                   help="also each layer with torch's argmin instead of mvq's grouped one "
                   "(rows '... torch argmin'), in the same rounds")
    p.add_argument("--quick", action="store_true", help="the first shape, J = 16, 3 rounds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", type=json_path, help="also write the rows here")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    for shape in args.shapes or []:
        if len(shape) != 4:
            parser.error(f"--shapes takes B,N,D,K (4 integers) per shape, found "
                         f"{','.join(map(str, shape))}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    shapes = [tuple(s) for s in args.shapes] if args.shapes else list(SHAPES)
    masks, repeats = args.masks, args.repeats
    if args.quick:
        shapes, masks, repeats = shapes[:1], [16], 3
    peak = gemm_peak_gflops()
    print(f"drop-in layers, forward + backward (train) and inference (eval); median of "
          f"{repeats} alternating rounds; {torch.get_num_threads()} thread(s); fp32 GEMM peak "
          f"{peak:.1f} GFLOP/s (1024^3, this run)")
    rows = []
    for shape in shapes:
        print(f"\n(B, N, D, K) = {shape}")
        print(f"{'mode':5} {'layer':38} {'ms':>9} {'x VQ':>7} {'x vqp':>7} {'GFLOP':>7} "
              f"{'GFLOP x VQ':>10} {'% peak':>7}")
        for r in bench_shape(shape, masks, repeats, args.all, peak, args.argmin):
            rows.append(r)
            print(f"{r['mode']:5} {r['layer']:38} {r['ms']:9.2f} {r['vs_vq']:6.2f}x "
                  f"{r['vs_vqp']:6.2f}x {r['gflop']:7.3f} {r['flop_vs_vq']:9.1f}x "
                  f"{100 * r['peak_fraction']:6.1f}%",
                  flush=True)
        skipped = [j for j in masks if shape[0] * shape[1] * j > NAIVE_LIMIT]
        if skipped and not args.all:
            print(f"per-instance masks skipped at J = {', '.join(map(str, skipped))} "
                  f"(over {NAIVE_LIMIT} hypotheses a step; --all measures them)")
    tokenizers = []
    if args.tokenizers:
        print("\ntokenizer step (fmnist_f28_k16_quick, batch 32, forward + backward)")
        for r in bench_tokenizers(masks, repeats):
            tokenizers.append(r)
            vs = next(key for key in r if key.startswith("vs_"))
            print(f"{r['tokenizer']:25} {r['ms']:9.2f} ms {r[vs]:6.2f}x {vs[3:]}")
    write_json(args.json, {"threads": torch.get_num_threads(), "gemm_peak_gflops": peak,
                           "repeats": repeats, "layers": rows, "tokenizers": tokenizers,
                           "hypotheses_limit": NAIVE_LIMIT, "log2_limit": math.log2(NAIVE_LIMIT)})


if __name__ == "__main__":
    main()
