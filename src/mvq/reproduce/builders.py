"""What every experiment's plan is built from: the scales, the MVQ paper's data sets with their
A.1 settings, a tokenizer run named by what it is, the validation / checkpoint cadence, and the
plan of a generation experiment (priors on shared tokenizer runs, one row per prior and
decoding). The experiments themselves: `mvq.reproduce.mvq_paper`, `mvq.reproduce.movq_paper`,
`mvq.reproduce.frontier`; their registry: `mvq.reproduce.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvq.errors import MvqError
from mvq.reproduce.kinds import Generation, Plan
from mvq.reproduce.spec import Changes, PriorSpec, Run

SCALES = ("quick", "paper")


@dataclass(frozen=True)
class Dataset:
    """One of the MVQ paper's data sets with its A.1 settings (D = D')."""

    key: str  # name on the command line
    data_name: str  # mvq data set name (build_dataset)
    image_size: int
    channels: int
    dim: int
    epochs: int
    train_images: int

    def steps(self, batch_size: int = 32) -> int:
        return self.epochs * self.train_images // batch_size

    def factor(self, primary_tokens: int) -> int:
        """F = sqrt(h*w/S) for S primary tokens: 1 -> image size, 4 -> half, 16 -> quarter."""
        side = {1: 1, 4: 2, 16: 4}[primary_tokens]
        return self.image_size // side


DATASETS = {
    "fashion-mnist": Dataset("fashion-mnist", "fashion-mnist", 28, 1, 16, 350, 60_000),
    "cifar10": Dataset("cifar10", "cifar10", 32, 3, 96, 650, 50_000),
    "celeba64": Dataset("celeba64", "folder", 64, 3, 256, 250, 162_770),
    "imagenet64": Dataset("imagenet64", "folder", 64, 3, 256, 650, 1_281_167),
}


def tokenizer_run(data: Dataset, preset: str, model: str, factor: int, k: int, steps: int,
                  seed: int, j: int | None = None, extra: Changes | None = None,
                  priors: tuple[PriorSpec, ...] = ()) -> Run:
    """A tokenizer run of ``data`` at factor F, K codes, ``steps`` steps (J masks for MVQ)."""
    side = data.image_size // factor
    name = f"{data.key}_f{factor}_k{k}_{model}" + (f"_j{j}" if j is not None else "") \
        + f"_{steps}steps_s{seed}"
    masks = {"num_masks": j, "eval_masks": 0} if j is not None else {}
    changes = Changes(model={"type": model, "factor": factor, "codebook_size": k,
                             "image_size": data.image_size, "channels": data.channels,
                             "dim": data.dim, "dim2": data.dim, **masks},
                      data={"name": data.data_name}, train={"steps": steps})
    cell = {"model": model, "tokens": f"{side * side}+1", "F": factor, "K": k}
    if j is not None:
        cell["J"] = j
    return Run(name, preset, changes + (extra or Changes()), cell, seed, priors)


def cadence(steps: int) -> Changes:
    """Validate and checkpoint 3 times per run (resume loses at most a third)."""
    every = max(1, steps // 3)
    return Changes(train={"val_every": every, "ckpt_every": every})


def data_set(dataset: str | None, scale: str) -> Dataset:
    key = dataset or "fashion-mnist"
    if key not in DATASETS:
        raise MvqError(f"--dataset must be one of {', '.join(DATASETS)}, got {key!r}")
    if scale == "quick" and key != "fashion-mnist":
        raise MvqError("--scale quick runs on FashionMNIST only (sized for a CPU); "
                       f"use --scale paper for {key}")
    return DATASETS[key]


# --- generation: priors on shared tokenizer runs (one row per prior and decoding) ---------

SAMPLE_METRICS = ("fid", "prd", "nll")


def default_prior_steps(scale: str) -> int:
    return 2000 if scale == "quick" else 100_000


def sample_plan(name: str, scale: str, title: str, runs: list[Run], cell: tuple[str, ...],
                baseline: dict, match: tuple[str, ...], notes: list[str],
                kind: Generation | None = None) -> Plan:
    n = 500 if scale == "quick" else 10_000
    return Plan(name, scale, title, runs, n, (), cell, baseline=baseline,
                sample_metrics=SAMPLE_METRICS, match=match, kind=kind or Generation(),
                notes=notes + [f"each prior: {default_prior_steps(scale)} steps of batch 64 on the "
                               f"training split's tokens; {n} samples (batches of 100) against "
                               f"the first {n} test images; prior seeds are the table's seeds; "
                               "params: the prior's; ms/img: wall milliseconds per image on this "
                               "machine (one thread, batches of 100, shared with other jobs), "
                               "token sampling alone and with decoding (Inception not counted)"])
