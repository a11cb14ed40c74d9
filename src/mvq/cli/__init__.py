"""The `mvq` command line.

Every subcommand is one `Command` (name, texts, arguments, run) in
the table of its module (`mvq.cli.tokenizers`, `mvq.cli.priors`,
`mvq.cli.experiments`); `build_parser` and `COMMANDS` are both built from
`TABLE`. The commands parse arguments and call the library; the work is done there.
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import nullcontext

from mvq._version import __version__
from mvq.cli import experiments, priors, tokenizers
from mvq.cli.command import Command
from mvq.errors import MvqError
from mvq.runtime.threads import configure_threads
from mvq.saved import pretrained
from mvq.values.argtypes import OneLineParser, threads

EPILOG = """examples:
  mvq demo                                   # hvqvae vs mvqvae at 1+1 tokens on FashionMNIST
  mvq presets                                # the shipped presets, one line each
  mvq quantizers                             # the quantizer families of model.quantizer
  mvq train --config fmnist_f28_k16_quick model.type=vqvae model.quantizer=fsq
  mvq train --config fmnist_f28_k16_quick model.num_masks=256 train.steps=2000
  mvq train --config fmnist_f28_k16_quick --resume
  mvq reconstruct --checkpoint runs/fmnist_f28_k16_quick/checkpoint --out recon.png
  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --n 1000
  mvq evaluate --checkpoint runs/demo/mvqvae/checkpoint --prior runs/priordemo/mvq_prior/checkpoint
  mvq compare runs/*/eval_test_1000.json
  mvq bench sampling --threads 1 --lengths 256,1024
  mvq reproduce fig5 --scale quick --dry-run
"""

TABLE: tuple[Command, ...] = (*tokenizers.TABLE, *priors.TABLE, *experiments.TABLE)
COMMANDS = {command.name: command.run for command in TABLE}  # name -> run(args) -> exit code


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
    parser.add_argument("--no-verify", action="store_true",
                        help="load model folders that no manifest vouches for (written before "
                        "manifests, or with manifest.json removed), with a warning; damaged "
                        "files a manifest lists are still refused")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in TABLE:
        p = command.add_to(sub)
        if command.name != "bench":  # bench hands what follows its name to the benchmark script
            p.add_argument("--threads", type=threads, metavar="N", default=argparse.SUPPRESS,
                           help="as `mvq --threads N`, here after the command")  # global too
            p.add_argument("--no-verify", action="store_true", default=argparse.SUPPRESS,
                           help="as `mvq --no-verify`, here after the command")
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


def main(argv: list[str] | None = None) -> int:
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
        with pretrained.unverified() if args.no_verify else nullcontext():
            return COMMANDS[args.command](args)
    except MvqError as err:
        print(f"mvq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mvq {args.command}: interrupted", file=sys.stderr)
        return 130
