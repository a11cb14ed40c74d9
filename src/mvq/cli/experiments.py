"""Experiment and tool commands: demo, bench, reproduce, analyze, explore."""

from __future__ import annotations

import argparse
import importlib

from mvq.analysis import ANALYSES, DEFAULT_IMAGES, AnalysisOptions, analyze
from mvq.analysis.explore import make_server
from mvq.bench import BENCHMARKS
from mvq.cli.command import Command, add_device_and_progress, add_force, add_overwrite
from mvq.demo import run_demo
from mvq.errors import MvqError
from mvq.reproduce import Options, reproduce
from mvq.reproduce.plan import EXPERIMENTS
from mvq.values.argtypes import positive_int, seed


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps per model (default: preset)")
    p.add_argument("--num-masks", type=positive_int, default=None,
                   help="J for MVQ (default: preset)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data-root", help="folder with the FashionMNIST idx files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(out=args.out, steps=args.steps, num_masks=args.num_masks, data_root=args.data_root,
             progress=not args.no_progress)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--json", help="also write the results as JSON")
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="further options for the benchmark script, e.g. `mvq bench sampling "
                   "--lengths 256,1024 --repeats 3` (see `python -m mvq.bench.NAME --help`)")


def cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"mvq.bench.{BENCHMARKS[args.which]}")
    argv = ((["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
            + list(args.options))
    module.main(argv)
    return 0


def _reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=list(EXPERIMENTS), help="which experiment (listed "
                   "below)")
    p.add_argument("--scale", choices=["quick", "paper"], default="quick",
                   help="quick: FashionMNIST on a CPU (default); paper: the papers' settings")
    p.add_argument("--seeds", type=positive_int, help="seeds per compared cell (default: 3 at "
                   "quick scale, 1 at paper scale); the generation experiments seed their priors")
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    p.add_argument("--data-root", help="folder of the data set's files")
    p.add_argument("--dataset", help="paper scale: fashion-mnist, cifar10, celeba64 or "
                   "imagenet64 (table1 / table5)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the runs finished so far; train nothing")
    p.add_argument("--no-priors", action="store_true",
                   help="train and evaluate the tokenizers only, leaving the priors of the "
                   "experiments that have them (NLL, samples) to a later run of the same command "
                   "without it, which trains them on the tokenizers' weights in --out")
    p.add_argument("--keep", metavar="DIR",
                   help="keep each finished run's records (its JSON files, no weights) in "
                   "DIR/NAME, and count a run kept there as done: commit DIR and the results "
                   "outlive the run folders (this repository keeps its own in docs/results/runs)")
    add_device_and_progress(p)


def cmd_reproduce(args: argparse.Namespace) -> int:
    options = Options(args.data_root, progress=not args.no_progress, device=args.device,
                      dry_run=args.dry_run, report_only=args.report_only, keep=args.keep,
                      priors=not args.no_priors)
    reproduce(args.experiment, args.scale, args.seeds, args.out, args.dataset, options)
    return 0


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="MVQ checkpoint folder (factors: also "
                   "hvqvae)")
    p.add_argument("--what", nargs="+", required=True, choices=ANALYSES, metavar="WHAT",
                   help=f"one or more of {', '.join(ANALYSES)}")
    p.add_argument("--images", type=positive_int, help="test images per grid, or scored by "
                   "factors / classkeep (default: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items()) + ")")
    p.add_argument("--masks", type=positive_int, default=8,
                   help="random masks in transfer / diversity (default 8)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random masks and of "
                   "classkeep's classifier (default 0)")
    p.add_argument("--sum", default="codes", choices=("codes", "outputs"),
                   help="compose's corners: sum the masked secondary codes before f (codes, "
                   "default) or f's outputs (outputs)")
    p.add_argument("--scale", type=positive_int, default=3, help="integer upscaling (default 3)")
    p.add_argument("--bins", type=positive_int, default=8,
                   help="factors: equal-count bins per continuous factor (default 8)")
    p.add_argument("--train-images", type=positive_int, default=10_000,
                   help="classkeep: training images of the classifier (default 10000)")
    p.add_argument("--classifier-steps", type=positive_int, default=600,
                   help="classkeep: training steps of the classifier (default 600)")
    p.add_argument("--out", default="runs/analyze", help="output folder (default runs/analyze)")
    add_overwrite(p)


def cmd_analyze(args: argparse.Namespace) -> int:
    options = AnalysisOptions(images=args.images, masks=args.masks, seed=args.seed,
                              sum_mode=args.sum, scale=args.scale, bins=args.bins,
                              train_images=args.train_images,
                              classifier_steps=args.classifier_steps)
    for path in analyze(args.checkpoint, args.what, args.out, options, args.overwrite):
        if path.suffix == ".json":  # a measure: its numbers, then where they are kept
            print(path.read_text(), end="")
        print(f"written: {path}")
    return 0


def _explore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", help="a prior checkpoint folder trained on this tokenizer's "
                   "codes (mvq train-prior): adds the sampling panel")
    add_force(p)
    p.add_argument("--checkpoint", required=True, help="MVQ checkpoint folder")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; "
                   "0: any free port)")
    p.add_argument("--images", type=positive_int, default=64,
                   help="test images to choose from (default 64)")


def cmd_explore(args: argparse.Namespace) -> int:
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


TABLE = (
    Command(
        "demo", "hvqvae vs mvqvae at 1+1 tokens, K=16 on FashionMNIST, side by side",
        "Trains the hierarchical VQ-VAE-2 baseline and MVQ-VAE at the paper's tightest "
        "budget (1 primary + 1 secondary token, K=16) and prints a comparison table. Falls back "
        "to the procedural shapes set (with a message) when FashionMNIST is not installed.",
        _demo_arguments, cmd_demo),
    Command(
        "bench", "benchmarks: MH-Dropout efficient vs naive, VQ vs vector-quantize-pytorch, "
        "token sampling times (MVQ Table 6)",
        "Run a benchmark; prints ratios measured side by side.", _bench_arguments, cmd_bench),
    Command(
        "reproduce", "run one of the papers' experiments and write its report "
        f"({', '.join(EXPERIMENTS)})",
        "Plan, train, evaluate and report one experiment of the MVQ or MoVQ paper. "
        "Prints the plan and an estimated time of work first. Resumable: finished runs are "
        "skipped, interrupted ones resumed (run the same command again). Two processes may run "
        "the same command at once: they share the plan, each run done by one of them (on 2 "
        "cores, each with --threads 1: about half the wall time). Runs go to OUT/runs/NAME, "
        "shared between experiments; the report (report.md, results.json, plots) to "
        "OUT/EXPERIMENT/.",
        _reproduce_arguments, cmd_reproduce,
        epilog="experiments:\n"
        + "".join(f"  {e.name:<18} {e.summary}\n" for e in EXPERIMENTS.values()) + "\n"
        "examples:\n  mvq reproduce fig5 --scale quick --dry-run\n"
        "  mvq reproduce fig5 --scale quick\n"
        "  mvq reproduce table1 --scale paper --dataset cifar10 --data-root "
        "/data/cifar-10-batches-py"),
    Command(
        "analyze", "labelled grids of what MVQ's mask dimensions learned (paper Figs. 2, 6, 8), "
        "and two measures of it (factors, classkeep)",
        "From an MVQ checkpoint (mvqvae or mvqgan), write OUT/<what>.png for each "
        "analysis: dims (each mask dimension on / off, Fig. 2), transfer (masked configurations "
        "of one primary code on others, Fig. 6a / 9), compose (3x3 additive composition, Fig. "
        "6b), diversity (random masks of one (e, e'), Fig. 8); and OUT/<what>.json (also "
        "printed) for each measure: factors (how much single secondary-code dimensions tell "
        "about the shapes set's factors; also for hvqvae, model trained on data.name=shapes), "
        "classkeep (how often a transfer keeps the target's class, by a small CNN trained on "
        "the training images).",
        _analyze_arguments, cmd_analyze,
        epilog="examples:\n  mvq analyze --checkpoint runs/demo/mvqvae/checkpoint "
        "--what dims transfer compose diversity --out docs/analysis\n"
        "  mvq analyze --checkpoint runs/demo/mvqvae/checkpoint --what classkeep --images 1000"),
    Command(
        "explore", "a local web page to toggle an MVQ code's mask bits and see the decode",
        "Serve a page on http://127.0.0.1:PORT/ (this machine only): pick a test "
        "image, toggle each mask bit of its code and see the decoded image update, see every "
        "single-bit flip at once (the bit atlas), apply the mask to other primary codes, save "
        "the grid as PNG. With --prior: draw codes from a prior, keep one's primary and "
        "secondary codes and redraw its mask. Needs an MVQ checkpoint.",
        _explore_arguments, cmd_explore),
)
