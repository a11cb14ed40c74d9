"""Prior commands: encode-dataset, train-prior, sample."""

from __future__ import annotations

import argparse

from mvq.cli.command import (
    Command,
    add_decoding,
    add_device_and_progress,
    add_force,
    add_overwrite,
    decoding,
)
from mvq.inference.sample import Sampling, sample_images
from mvq.inference.tokens import encode_dataset, load_tokens
from mvq.runtime import distributed
from mvq.train.engine import LINES
from mvq.train.prior import PRIOR_DEFAULTS, PriorTraining, train_prior
from mvq.values.argtypes import class_list, open_fraction, positive_float, positive_int, seed


def _encode_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="tokenizer checkpoint folder")
    p.add_argument("--out", default="tokens.safetensors",
                   help="token file to write (default tokens.safetensors)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="data split (default train)")
    p.add_argument("--limit", type=positive_int, help="only the first N images (default all)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per forward pass (default 256)")
    add_overwrite(p)
    add_device_and_progress(p)


def cmd_encode_dataset(args: argparse.Namespace) -> int:
    path = encode_dataset(args.checkpoint, args.out, args.split, args.limit, args.batch_size,
                          args.device, not args.no_progress, overwrite=args.overwrite)
    meta = load_tokens(path)[2]
    print(f"{meta['n']} images -> {path} ({meta['model']}, tokenizer {meta['config_hash']})")
    return 0


def _train_prior_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tokens", help="token file from `mvq encode-dataset`")
    p.add_argument("--type", dest="prior_type", metavar="TYPE",  # checked by the registry
                   help="the prior, a name in mvq.priors.PRIORS: gpt, maskgit or pixelcnn "
                   "(default: maskgit for multichannel MoVQ codes, else gpt)")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition the prior on the token file's class labels (sample with "
                   "--class)")
    p.add_argument("--out", default="runs/prior",
                   help="output folder, checkpoint in OUT/checkpoint (default runs/prior)")
    d, own = PRIOR_DEFAULTS, "; with --resume: the run's own"
    p.add_argument("--steps", type=positive_int,
                   help=f"training steps, the run's target (default {d.steps}{own})")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"token sequences per step, the global batch (default {d.batch_size}{own})")
    p.add_argument("--lr", type=positive_float,
                   help=f"Adam learning rate (default {_short(d.lr)}{own})")
    p.add_argument("--seed", type=seed, help="seed of the initial weights, batches and held-out "
                   f"split (default {d.seed}{own})")
    p.add_argument("--val-fraction", type=open_fraction,
                   help=f"share of the token file held out for the validation NLL (default "
                   f"{_short(d.val_fraction)}{own})")
    every = PriorTraining.val_every
    p.add_argument("--val-every", type=positive_int, default=every,
                   help=f"validate and checkpoint every N steps (default {every})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT exactly (--steps and --lr may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over a run already in OUT (without it, mvq refuses)")
    add_device_and_progress(p)


def _short(x: float) -> str:
    """A default as the help shows it, the shorter of 0.05 and 5e-2 (3e-4 for 0.0003)."""
    return min(f"{x:g}", f"{x:.0e}".replace("e-0", "e-"), key=len)


def cmd_train_prior(args: argparse.Namespace) -> int:
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


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint folder")
    p.add_argument("--prior", required=True, help="prior checkpoint folder (OUT/checkpoint)")
    p.add_argument("--n", type=positive_int, default=64, help="images to sample (default 64)")
    p.add_argument("--out", default="samples.png", help="output PNG path (default samples.png)")
    add_decoding(p, "")
    p.add_argument("--class", dest="classes", type=class_list, metavar="K[,K...]",
                   help="class-conditional priors: sample these classes, in equal consecutive "
                   "blocks (default: every class)")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed (default 0)")
    p.add_argument("--scale", type=positive_int, default=3,
                   help="integer upscaling of the PNG (default 3)")
    add_force(p)
    add_overwrite(p)


def cmd_sample(args: argparse.Namespace) -> int:
    sampling = Sampling(n=args.n, decoding=decoding(args), classes=args.classes)
    path = sample_images(args.tokenizer, args.prior, args.out, sampling, scale=args.scale,
                         overwrite=args.overwrite, force=args.force)
    print(f"{args.n} samples -> {path}")
    return 0


TABLE = (
    Command(
        "encode-dataset", "tokenize a data set once into a token file",
        "Encode a split of the checkpoint's data set into one .safetensors token file tagged "
        "with the tokenizer's config hash (priors train on it).",
        _encode_dataset_arguments, cmd_encode_dataset),
    Command(
        "train-prior", "train a prior (two-stage GPT, MaskGIT or PixelCNN) on a token file",
        "Train a prior over a token file's codes and log its validation NLL (nats, bits/token). "
        "--type gpt: a causal transformer over the primary tokens and a secondary one "
        "conditioned on them (MVQ Table 4 sizes; MoVQ's h*w*c ids as one sequence); maskgit: a "
        "bidirectional transformer over (h, w[, c]) ids (MoVQ 3.2); pixelcnn: gated PixelCNNs, "
        "the secondary one conditioned on the primary ids (VQ-VAE-2). Default: maskgit for "
        "MoVQ's multichannel codes, gpt otherwise. Data-parallel under `torchrun "
        "--nproc_per_node N -m mvq train-prior ...` (--batch-size is the global batch).",
        _train_prior_arguments, cmd_train_prior),
    Command(
        "sample", "sample images: prior -> tokens -> tokenizer decoder",
        "Sample token sequences with a prior (MVQ masks drawn at random, seeded) and decode "
        "them with the tokenizer they were trained on.",
        _sample_arguments, cmd_sample,
        epilog="examples:\n  mvq sample --tokenizer TOK --prior PRIOR --n 80 "
        "--class 0,1,2,3,4,5,6,7,8,9   # a row per class\n"
        "  mvq sample --tokenizer MOVQ --prior MASKGIT --steps 8 --choice-temperature 4.5"),
)
