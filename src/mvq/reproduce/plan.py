"""The papers' experiments as plans: which models to train, with which settings and seeds.

A plan is a list of `Run` (one trained tokenizer each, optionally with a prior) and the
evaluation every run gets. Runs are named by what they are (data, factor, K, model, J, seed,
steps), so two experiments that need the same model share one run folder: ``two-vs-five``
reuses ``fig5``'s runs.

Scales: ``quick`` fits this project's 2-core CPU on FashionMNIST; ``paper`` is the papers' own
set-up (MVQ paper A.1 Table 2, MoVQ section 4), for a GPU and the user's data files.

This module is the registry (`EXPERIMENTS`, `build_plan`); the experiments live in
`mvq.reproduce.mvq_paper`, `mvq.reproduce.movq_paper` and `mvq.reproduce.frontier`, built
from `mvq.reproduce.builders`. Their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mvq.errors import MvqError
from mvq.reproduce.benchmark import Benchmark
from mvq.reproduce.builders import DATASETS, SCALES, Dataset
from mvq.reproduce.frontier import (
    FRONTIER_NLL_RATES,
    FRONTIER_RATES,
    FrontierLine,
    frontier,
    frontier_lines,
)
from mvq.reproduce.kinds import Plan
from mvq.reproduce.movq_paper import movq_ablation, movq_codebook, movq_table2
from mvq.reproduce.mvq_paper import (
    HEADLINE_SEEDS,
    TRAINING_LENGTHS,
    class_conditional,
    fig5,
    mask_sampling,
    pixelcnn_vs_gpt,
    table1,
    table5,
    table6,
    training_length,
    two_vs_five,
)
from mvq.reproduce.spec import Changes, Decode, PriorSpec, Run

__all__ = ["DATASETS", "EXPERIMENTS", "FRONTIER_NLL_RATES", "FRONTIER_RATES", "HEADLINE_SEEDS",
           "MAX_SEEDS", "SCALES", "TRAINING_LENGTHS", "Benchmark", "Changes", "Dataset",
           "Decode", "Experiment", "FrontierLine", "Plan", "PriorSpec", "Run", "build_plan",
           "class_conditional", "fig5", "frontier", "frontier_lines", "mask_sampling",
           "movq_ablation", "movq_codebook", "movq_table2", "pixelcnn_vs_gpt", "table1",
           "table5", "table6", "training_length", "two_vs_five"]


# seeds per compared cell without --seeds: 3 at quick scale (single runs of one variant differ
# by 10-35 rFID there), 1 at paper scale (a GPU day per run)
DEFAULT_SEEDS = MappingProxyType({"quick": 3, "paper": 1})


@dataclass(frozen=True)
class Experiment:
    """One experiment of `mvq reproduce`: its name on the command line, the one line
    `mvq reproduce --help` lists it with, the builder of its work at a scale
    (``build(scale, seeds, dataset)``: a `Plan` of runs, or a `Benchmark` that runs alone) and
    its seeds per compared cell without --seeds, by scale."""

    name: str
    summary: str
    build: Callable[[str, int, str | None], Plan | Benchmark]
    seeds: Mapping[str, int] = field(default_factory=lambda: DEFAULT_SEEDS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", MappingProxyType(dict(self.seeds)))


# in the order `mvq reproduce --help` lists them
EXPERIMENTS = {e.name: e for e in (
    Experiment("fig5", "MVQVAE vs the hierarchical baseline, FID against J (MVQ Fig. 5)", fig5),
    Experiment("table1", "hvqgan vs mvqgan at 1+1 / 4+1 tokens, K 16 / 256 (MVQ Table 1)",
               table1),
    Experiment("table5", "a GPT prior on each table1 tokenizer: FID*, F-scores, NLL (Table 5)",
               table5),
    Experiment("two-vs-five", "MVQVAE with 1+1 tokens vs the baseline with 4+1 (MVQ 4.2)",
               two_vs_five),
    Experiment("movq-ablation", "VQGAN / + multichannel / + SpatialNorm, F0 and c (MoVQ Fig. 6)",
               movq_ablation),
    Experiment("movq-table2", "MaskGIT at 4-16 steps vs autoregressive GPT on MoVQ tokens "
               "(MoVQ Table 2)", movq_table2),
    Experiment("pixelcnn-vs-gpt", "gated PixelCNN vs two-stage GPT on hvqvae tokens: NLL, FID*",
               pixelcnn_vs_gpt),
    Experiment("class-conditional", "class-conditional vs unconditional GPT on MVQ tokens, "
               "class grid", class_conditional),
    Experiment("mask-sampling", "MH-Dropout masks per instance vs one bank per batch (fig5's "
               "1+1 cell)", mask_sampling),
    Experiment("training-length", "fig5's K=16 cells at 1200 / 4800 / 18750 steps (one run per "
               "seed)", training_length),
    Experiment("movq-codebook", "VQGAN and MoVQ with a small and a 16x larger codebook (MoVQ "
               "Fig. 6b)", movq_codebook),
    Experiment("frontier", "every quantizer family at 8-64 bits per image: rate vs MSE, "
               "LPIPS, rFID", frontier),
    Experiment("table6", "token sampling times (MVQ Table 6; the sampling benchmark)", table6),
)}


MAX_SEEDS = 20  # the papers report 1-5 seeds; more is a typo, not a plan


def build_plan(experiment: str, scale: str = "quick", seeds: int | None = None,
               dataset: str | None = None) -> Plan | Benchmark:
    """The plan of ``experiment`` at ``scale`` (a `Benchmark` for a benchmark); MvqError for an
    unknown name or bad option."""
    if experiment not in EXPERIMENTS:
        raise MvqError(f"unknown experiment {experiment!r}: expected one of "
                       f"{', '.join(EXPERIMENTS)}")
    if scale not in SCALES:
        raise MvqError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if seeds is None:
        seeds = EXPERIMENTS[experiment].seeds[scale]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise MvqError(f"--seeds must be an integer in [1, {MAX_SEEDS}] (each seed trains every "
                       f"run of the plan once more), got {seeds!r}")
    return EXPERIMENTS[experiment].build(scale, seeds, dataset)
