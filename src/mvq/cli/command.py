"""One `mvq` subcommand as one value, and the options several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from mvq.values.argtypes import device_name, positive_float, positive_int, top_p_fraction
from mvq.values.decoding import Decoding


@dataclass(frozen=True)
class Command:
    """A subcommand: its name and texts, the function that adds its arguments to its parser,
    and the function that runs it on the parsed arguments (returns the exit code). Listed once
    in a table; the parser and the dispatch of `mvq.cli.main` are both built from it."""

    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None  # shown as written, as is the description then

    def add_to(self, sub) -> argparse.ArgumentParser:
        """Add this command's parser to ``sub`` (an argparse subparsers action)."""
        texts = {"help": self.help, "description": self.description}
        if self.epilog is not None:
            texts.update(epilog=self.epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser = sub.add_parser(self.name, **texts)
        self.arguments(parser)
        return parser


def no_arguments(p: argparse.ArgumentParser) -> None:
    """For a command that takes no arguments of its own."""


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="sample through tokenizer weights other "
                   "than those the prior was trained on (same architecture)")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (without it, mvq refuses)")


def add_device_and_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (default: cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (training: "
                   "a plain line every N steps instead)")


def add_decoding(p: argparse.ArgumentParser, prefix: str) -> None:
    """The decoding options (`mvq.values.decoding.Decoding` but its seed) of sample and evaluate
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


def decoding(args: argparse.Namespace) -> Decoding:
    """The `Decoding` of sample / evaluate --prior's options (checked once, here)."""
    return Decoding(args.temperature, args.top_k, args.top_p, args.steps,
                    args.choice_temperature, args.seed)
