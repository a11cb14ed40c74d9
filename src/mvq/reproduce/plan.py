"""The papers' experiments as plans: which models to train, with which settings and seeds.

A plan is a list of `Run` (one trained tokenizer each, optionally with a prior) and the
evaluation every run gets. Runs are named by what they are (data, factor, K, model, J, seed,
steps), so two experiments that need the same model share one run folder: ``two-vs-five``
reuses ``fig5``'s runs.

Scales: ``quick`` fits this project's 2-core CPU on FashionMNIST; ``paper`` is the papers' own
set-up (MVQ paper A.1 Table 2, MoVQ section 4), for a GPU and the user's data files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType, SimpleNamespace

from mvq.configuration.sections import ModelConfig
from mvq.errors import MvqError
from mvq.priors.gpt import table4_size
from mvq.quantize.registry import DEFAULT as DEFAULT_QUANTIZER
from mvq.quantize.registry import FAMILIES, SECONDARIES
from mvq.reproduce.benchmark import Benchmark
from mvq.reproduce.kinds import (
    ClassConditional,
    Frontier,
    Generation,
    Plan,
    Plot,
    TokenizerSweep,
    TrainingLength,
)
from mvq.reproduce.spec import Changes, Decode, PriorSpec, Run
from mvq.reproduce.timing import tokens_per_image as model_tokens
from mvq.values.decoding import Decoding

__all__ = ["DATASETS", "EXPERIMENTS", "SCALES", "Benchmark", "Changes", "Dataset", "Decode",
           "Experiment", "Plan", "PriorSpec", "Run", "build_plan"]

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


def _run(data: Dataset, preset: str, model: str, factor: int, k: int, steps: int, seed: int,
         j: int | None = None, extra: Changes | None = None,
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


def _cadence(steps: int) -> Changes:
    """Validate and checkpoint 3 times per run (resume loses at most a third)."""
    every = max(1, steps // 3)
    return Changes(train={"val_every": every, "ckpt_every": every})


def _data(dataset: str | None, scale: str) -> Dataset:
    key = dataset or "fashion-mnist"
    if key not in DATASETS:
        raise MvqError(f"--dataset must be one of {', '.join(DATASETS)}, got {key!r}")
    if scale == "quick" and key != "fashion-mnist":
        raise MvqError("--scale quick runs on FashionMNIST only (sized for a CPU); "
                       f"use --scale paper for {key}")
    return DATASETS[key]


# The quick scale's headline cells, where MVQ's lead is the question (1+1 tokens, K = 16 in
# fig5 and table1), take at least this many seeds: three cannot resolve a 5-10% gap
HEADLINE_SEEDS = 5


def _cell_seeds(scale: str, seeds: int, factor: int, k: int) -> int:
    return max(seeds, HEADLINE_SEEDS) if (scale, factor, k) == ("quick", 28, 16) else seeds


def fig5(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MVQ Fig. 5: MVQVAE against the hierarchical baseline on FashionMNIST, FID against J."""
    data = _data(dataset, scale)
    if data.key != "fashion-mnist":
        raise MvqError("fig5 is the paper's FashionMNIST experiment: drop --dataset")
    if scale == "quick":
        factors, ks, js, steps, n = (28, 14), (16, 256), (1, 16, 128, 1024), 1200, 500
        seeded_j = js  # every J seeded: single runs of one J differ by more than J-to-J steps
    else:
        factors, ks, js, seeded_j, steps, n = (28, 14), (16, 256), (16, 64, 256, 1024, 2048), \
            (2048,), data.steps(), 10_000
    runs = []
    # K = 16 first (at quick scale the published comparison), then the 1+1 runs of each K:
    # a partial report already compares them
    for k in ks:
        for factor in factors:
            preset = f"fmnist_f{factor}_k{k}{'_quick' if scale == 'quick' else ''}.yaml"
            cell = _cell_seeds(scale, seeds, factor, k)
            for s in range(cell):
                runs.append(_run(data, preset, "hvqvae", factor, k, steps, s,
                                 extra=_cadence(steps)))
            for j in js:
                for s in range(cell if j in seeded_j else 1):
                    runs.append(_run(data, preset, "mvqvae", factor, k, steps, s, j,
                                     extra=_cadence(steps)))
    return Plan("fig5", scale, "MVQ paper Fig. 5: reconstruction FID against the masks per pass J "
                "(MVQVAE) and the hierarchical VQ-VAE-2 baseline, FashionMNIST",
                runs, n, ("mse", "psnr", "lpips", "rfid"), ("tokens", "K", "model", "J"),
                baseline={"model": "hvqvae"}, kind=TokenizerSweep(Plot("J", "tokens", hue="K")),
                notes=[f"{steps} steps of batch 32 per model; {_seeded(js, seeded_j, seeds)}"
                       + (f" ({max(seeds, HEADLINE_SEEDS)} at 1+1 tokens, K = 16, the headline "
                          "cell)" if scale == "quick" and seeds < HEADLINE_SEEDS else "")
                       + f"; evaluation on the first {n} test images through the discrete "
                       "codes"])


def _seeded(js: tuple[int, ...], seeded_j: tuple[int, ...], seeds: int) -> str:
    if set(js) <= set(seeded_j):
        return f"the baseline and every J with {seeds} seeds"
    return (f"J = {', '.join(map(str, seeded_j))} and the baseline with {seeds} seeds, "
            "other J with one")


def two_vs_five(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MVQ 4.2: MVQVAE with 1+1 tokens against the VQ-VAE-2 baseline with 4+1 tokens."""
    base = fig5(scale, seeds, dataset)
    j = 128 if scale == "quick" else 2048
    runs = [r for r in base.runs  # fig5's order
            if (r.labels["F"] in (28, 14) if base.is_baseline(r)
                else r.labels["F"] == 28 and r.labels["J"] == j)]
    return Plan("two-vs-five", scale, "MVQ paper 4.2: MVQVAE with 2 tokens (1+1) against the "
                "VQ-VAE-2 baseline with 2 and 5 tokens (1+1, 4+1), FashionMNIST", runs,
                base.eval_n, base.metrics, ("tokens", "K", "model", "J"),
                baseline={"model": "hvqvae"}, notes=base.notes + ["the same runs as fig5"],
                match=("K",))  # MVQ's 1+1 against the baseline at 1+1 and at 4+1


# training-length: fig5's 1200 steps, 4x that, and 10 epochs of FashionMNIST at batch 32
TRAINING_LENGTHS = (1200, 4800, 10 * DATASETS["fashion-mnist"].train_images // 32)


def training_length(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """fig5's K = 16 cells (MVQVAE at J = 128 against the A.6 baseline, 1+1 and 4+1 tokens)
    trained 18,750 steps and evaluated at 1200, 4800 and 18,750: does the gap hold with
    training? One run per (model, tokens, seed): the learning rate is constant, so its
    evaluation at step s stands for a run of s steps."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("training-length uses fig5's FashionMNIST cells: drop --dataset")
    if scale != "quick":
        raise MvqError("training-length is a --scale quick study (fig5's quick cells trained "
                       "longer); at paper scale fig5's runs train 350 epochs already")
    data, first = DATASETS["fashion-mnist"], fig5(scale, 1)
    steps, j, every = TRAINING_LENGTHS[-1], 128, TRAINING_LENGTHS[0]
    cadence = Changes(train={"val_every": every, "ckpt_every": every})
    runs = []
    for factor in (28, 14):  # 1+1 tokens first: a partial report already compares them
        preset = f"fmnist_f{factor}_k16_quick.yaml"  # fig5's, through fig5's builder
        for s in range(seeds):
            runs.append(_run(data, preset, "hvqvae", factor, 16, steps, s, extra=cadence))
            runs.append(_run(data, preset, "mvqvae", factor, 16, steps, s, j, extra=cadence))
    lengths = ", ".join(f"{s:,}" for s in TRAINING_LENGTHS[:-1]) + f" and {steps:,}"
    return Plan("training-length", scale, "MVQVAE (J = 128) against the hierarchical baseline "
                "(A.6, hvqvae) at 1+1 and 4+1 tokens, K = 16, after 1200, 4800 and 18,750 "
                "training steps, FashionMNIST", runs, first.eval_n, first.metrics,
                ("tokens", "K", "model", "J", "steps"), baseline={"model": "hvqvae"},
                match=("tokens", "K", "steps"), kind=TrainingLength(lengths=TRAINING_LENGTHS),
                notes=[f"the learning rate is constant (Adam at train.lr, no schedule), so one "
                       f"run's evaluation at step s stands for a run of s steps: each (model, "
                       f"tokens, seed) is one run of {steps:,} steps of batch 32 (10 epochs of "
                       f"FashionMNIST's 60,000 training images), evaluated at {lengths} steps "
                       "(its training stops at each, is evaluated there, and resumes)",
                       f"fig5's K = 16 cells and settings (fig5's presets and run builder) but "
                       f"the length, and validation / checkpoints every {every} steps; "
                       f"{seeds} seed{'s' * (seeds != 1)} per cell; evaluation on the first "
                       f"{first.eval_n} test images at every length, as fig5's; each run's "
                       "training time is "
                       f"counted once, on its {steps:,}-step row"])


def table1(scale: str, seeds: int, dataset: str | None = None, prior_steps: int = 0) -> Plan:
    """MVQ Table 1: hvqgan against mvqgan at 1+1 and 4+1 tokens, K in {16, 256}."""
    data = _data(dataset, scale)
    if scale == "quick":
        token_counts, steps, j, n = (1, 4), 1200, 128, 500
        preset = "fmnist_f28_k16_mvqgan_quick.yaml"
        extra = Changes(loss={"disc_start": 400})
    else:
        token_counts, steps, j, n = (1, 4, 16), data.steps(), 2048, 10_000
        preset = "fmnist_f28_k16_mvqgan.yaml"
        extra = Changes()
    runs = []
    for s_tokens in token_counts:
        factor = data.factor(s_tokens)
        for k in (16, 256):
            # table5 samples priors of table1's first seeds only
            cell = seeds if prior_steps else _cell_seeds(scale, seeds, factor, k)
            for s in range(cell):
                gpt = (PriorSpec("gpt", prior_steps, s),) if prior_steps else ()
                runs.append(_run(data, preset, "hvqgan", factor, k, steps, s,
                                 extra=extra + _cadence(steps), priors=gpt))
                runs.append(_run(data, preset, "mvqgan", factor, k, steps, s, j,
                                 extra=extra + _cadence(steps), priors=gpt))
    name = "table5" if prior_steps else "table1"
    title = ("MVQ paper Table 5: a two-stage GPT prior on each table1 tokenizer: sample FID*, "
             "F_8 / F_1/8, NLL" if prior_steps else
             "MVQ paper Table 1: VQGAN-style hierarchical baseline (hvqgan) against MVQGAN")
    return Plan(name, scale, f"{title} ({data.key})", runs, n, ("mse", "lpips", "rfid", "prd"),
                ("tokens", "K", "model"), baseline={"model": "hvqgan"},
                sample_metrics=("fid", "prd", "nll") if prior_steps else (),
                notes=[f"{steps} steps of batch 32 per tokenizer (GAN terms from step "
                       f"{'400' if scale == 'quick' else 'the preset'}), J = {j}; evaluation on "
                       f"the first {n} test images"]
                + ([f"{seeds} seeds per cell, {max(seeds, HEADLINE_SEEDS)} at 1+1 tokens, K = 16 "
                    "(the headline cell)"] if scale == "quick" and not prior_steps
                   and seeds < HEADLINE_SEEDS else [])
                + ([f"prior: {prior_steps} steps of batch 64 on the training split's tokens; "
                    f"{n} samples"] if prior_steps else []))


def table5(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    return table1(scale, seeds, dataset, prior_steps=2000 if scale == "quick" else 100_000)


@dataclass(frozen=True)
class Variant:
    """A MoVQ ablation variant: its preset stem at quick scale, its paper preset (which holds
    the variant whole), the model changes at quick scale, its labels."""

    quick: str
    paper: str
    model: dict
    labels: dict


MOVQ_VARIANTS = {
    "VQGAN": Variant("vqgan", "vqgan", {}, {"spatial_norm": "none", "c": 1}),
    "+ multichannel": Variant("multichannel", "multichannel", {}, {"spatial_norm": "none", "c": 4}),
    "+ SpatialNorm, F0 Fourier (MoVQ)": Variant("movq", "fourier", {}, {"f0": "fourier", "c": 4}),
    "+ SpatialNorm, F0 sinusoidal": Variant("movq", "sinusoidal", {"f0": "sinusoidal"},
                                            {"f0": "sinusoidal", "c": 4}),
    "+ SpatialNorm, F0 constant": Variant("movq", "constant", {"f0": "constant"},
                                          {"f0": "constant", "c": 4}),
    "MoVQ c=1": Variant("movq", "c1", {"num_channels": 1, "code_dim": 64}, {"c": 1}),
    "MoVQ c=2": Variant("movq", "c2", {"num_channels": 2, "code_dim": 32}, {"c": 2}),
}


def movq_ablation(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MoVQ Fig. 6 (a) VQGAN / + multichannel / + SpatialNorm with each F0, (c) c in {1,2,4}."""
    if dataset is not None:
        raise MvqError("movq-ablation runs on FashionMNIST (quick) or on an ImageNet image "
                       "folder (paper: --data-root DIR); drop --dataset")
    runs = []
    steps = 800 if scale == "quick" else None
    for variant, v in MOVQ_VARIANTS.items():
        if scale == "quick":
            preset = f"movq_fmnist_{v.quick}_quick.yaml"
            changes = Changes(model=v.model, train={"steps": steps}) + _cadence(steps)
        else:  # the paper presets hold each variant whole
            preset, changes = f"movq_paper_{v.paper}.yaml", Changes()
        tag = variant.split("(")[0].strip().lower().replace("+ ", "").replace(", ", "_") \
            .replace(" ", "-").replace("=", "")
        for s in range(seeds):
            name = f"movq_{scale}_{tag}" + (f"_{steps}steps" if steps else "") + f"_s{s}"
            runs.append(Run(name, preset, changes, {"variant": variant, **v.labels}, s))
    n = 1000 if scale == "quick" else 50_000
    return Plan("movq-ablation", scale, "MoVQ paper Fig. 6: (a) VQGAN, + multichannel, + "
                "SpatialNorm with each initial feature F0; (c) channels c in {1, 2, 4}",
                runs, n, ("mse", "psnr", "ssim", "lpips", "rfid", "prd"), ("variant",),
                notes=[("800 steps of batch 32 (GAN terms from step 300) on FashionMNIST, one "
                        "256-entry codebook on a 7x7 grid" if scale == "quick" else
                        "the movq_paper_* presets (256 px ImageNet, 16x16x4 tokens)")
                       + f"; evaluation on the first {n} test images"],
                pairs=ABLATION_STEPS)


def _variants(*pairs: tuple[str, str]) -> tuple[tuple[dict, dict], ...]:
    return tuple(({"variant": a}, {"variant": b}) for a, b in pairs)


# the steps MoVQ Fig. 6 reads: (a) B against A, C (each F0) against B, Fourier against the other
# two F0; (c) each channel count against the one below it
ABLATION_STEPS = _variants(
    ("+ multichannel", "VQGAN"),
    *((f0, "+ multichannel") for f0 in list(MOVQ_VARIANTS)[2:5]),
    ("+ SpatialNorm, F0 Fourier (MoVQ)", "+ SpatialNorm, F0 sinusoidal"),
    ("+ SpatialNorm, F0 Fourier (MoVQ)", "+ SpatialNorm, F0 constant"),
    ("MoVQ c=2", "MoVQ c=1"), ("+ SpatialNorm, F0 Fourier (MoVQ)", "MoVQ c=2"))


# MoVQ Fig. 6 (b): VQGAN and MoVQ at the paper's 1024 and 16384 codebook entries; at quick scale
# a quarter of each (the quick presets' 256 entries stand for the paper's 1024), 16x apart as there
CODEBOOK_SIZES = {"quick": (256, 4096), "paper": (1024, 16384)}
CODEBOOK_VARIANTS = {"VQGAN": "VQGAN", "MoVQ": "+ SpatialNorm, F0 Fourier (MoVQ)"}


def movq_codebook(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MoVQ Fig. 6 (b): VQGAN and MoVQ each with a small and a 16x larger codebook; the small
    one's runs are movq-ablation's (the same folders)."""
    if dataset is not None:
        raise MvqError("movq-codebook uses movq-ablation's settings (FashionMNIST at quick "
                       "scale, an ImageNet folder at paper scale): drop --dataset")
    base = movq_ablation(scale, seeds)
    small, large = CODEBOOK_SIZES[scale]
    runs = []
    for label, variant in CODEBOOK_VARIANTS.items():
        for r in [r for r in base.runs if r.labels["variant"] == variant]:
            for k in (small, large):
                head, _, seed = r.name.rpartition("_s")
                name = r.name if k == small else f"{head}_k{k}_s{seed}"
                changes = r.changes + Changes(model={"codebook_size": k}) if k != small \
                    else r.changes
                runs.append(replace(r, name=name, changes=changes,
                                    labels={"variant": label, "K": k}))
    return Plan("movq-codebook", scale, f"MoVQ paper Fig. 6 (b): VQGAN and MoVQ with {small} "
                f"and {large} codebook entries", runs, base.eval_n, base.metrics,
                ("variant", "K"), baseline={"K": small}, match=("variant",),
                pairs=tuple(({"variant": "MoVQ", "K": k}, {"variant": "VQGAN", "K": k})
                            for k in (small, large)),
                notes=["the paper compares 1024 and 16384 entries (FFHQ, MoVQ Fig. 6 b); "
                       + (f"the quick presets hold a quarter of the paper's codebook ({small} "
                          f"for 1024), so {small} and {large} here, 16x apart as there; "
                          if scale == "quick" else "")
                       + f"the {small}-entry runs are movq-ablation's VQGAN and MoVQ (Fourier "
                       f"F0) runs; each size against the {small}-entry one of its model, and "
                       "MoVQ against VQGAN at each size",
                       ("800 steps of batch 32 (GAN terms from step 300) on FashionMNIST, a 7x7 "
                        "grid of 1 (VQGAN) or 4 (MoVQ) ids per position"
                        if scale == "quick" else "the movq_paper_* presets (256 px ImageNet)")
                       + f"; evaluation on the first {base.eval_n} test images"])


# --- generation: priors on shared tokenizer runs (one row per prior and decoding) ---------

SAMPLE_METRICS = ("fid", "prd", "nll")
# the GPT of movq-table2 gets MaskGIT's transformer size (4 layers, 4 heads, width 64), so the
# comparison is one of decoding orders, not of model sizes
MASKGIT_SIZE = {"n_layer": 4, "n_head": 4, "n_embd": 64}


def _prior_steps(scale: str) -> int:
    return 2000 if scale == "quick" else 100_000


def _sample_plan(name: str, scale: str, title: str, runs: list[Run], cell: tuple[str, ...],
                 baseline: dict, match: tuple[str, ...], notes: list[str],
                 kind: Generation | None = None) -> Plan:
    n = 500 if scale == "quick" else 10_000
    return Plan(name, scale, title, runs, n, (), cell, baseline=baseline,
                sample_metrics=SAMPLE_METRICS, match=match, kind=kind or Generation(),
                notes=notes + [f"each prior: {_prior_steps(scale)} steps of batch 64 on the "
                               f"training split's tokens; {n} samples (batches of 100) against "
                               f"the first {n} test images; prior seeds are the table's seeds; "
                               "params: the prior's; ms/img: wall milliseconds per image on this "
                               "machine (one thread, batches of 100, shared with other jobs), "
                               "token sampling alone and with decoding (Inception not counted)"])


def movq_table2(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MoVQ Table 2 at CPU scale: MaskGIT at 4/8/12/16 steps against autoregressive decoding of
    the same MoVQ tokens by a GPT of the same size."""
    if dataset is not None:
        raise MvqError("movq-table2 uses movq-ablation's MoVQ tokenizer: drop --dataset")
    tok = next(r for r in movq_ablation(scale, 1).runs if r.labels.get("f0") == "fourier")
    steps = _prior_steps(scale)
    specs = []
    for s in range(seeds):
        specs.append(PriorSpec("gpt", steps, s, "GPT (autoregressive)",
                               sizes={"primary": MASKGIT_SIZE},
                               decodes=(Decode("one token per step"),)))
        specs.append(PriorSpec("maskgit", steps, s, "MaskGIT",
                               decodes=tuple(Decode(f"{k} steps", Decoding(steps=k))
                                             for k in (4, 8, 12, 16))))
    run = replace(tok, priors=tuple(specs))
    return _sample_plan(
        "movq-table2", scale, "MoVQ paper Table 2 at CPU scale: MaskGIT decoding at 4 to 16 "
        "steps against autoregressive decoding, one transformer size, MoVQ's tokens",
        [run], ("prior", "decoding"), {"prior": "GPT (autoregressive)"}, (),
        [f"tokenizer: movq-ablation's MoVQ run ({tok.name}); both priors are transformers of "
         "4 layers, 4 heads, width 64 over the 7x7 grid's 4 channel ids per position"])


# the PixelCNN's two ways of conditioning its secondary stage (mvq.priors.pixelcnn.CONDITIONINGS)
PIXELCNN_CONDITIONINGS = (("average", "primary averaged"), ("layout", "primary layout"))


def pixelcnn_vs_gpt(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """The gated PixelCNN (the prior the MVQ paper pairs with VQ-VAE-2), its secondary stage
    conditioned both ways, against the two-stage GPT on the hierarchical baseline's tokens."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("pixelcnn-vs-gpt uses fig5's FashionMNIST tokenizers: drop --dataset")
    base = fig5(scale, 1)
    toks = [r for r in base.baseline_runs() if r.labels["K"] == 16 and r.seed == 0]
    steps = _prior_steps(scale)
    runs = []
    for tok in toks:
        specs = []
        for s in range(seeds):
            specs.append(PriorSpec("gpt", steps, s, "GPT (two-stage)"))
            for cond, label in PIXELCNN_CONDITIONINGS:
                specs.append(PriorSpec("pixelcnn", steps, s, f"PixelCNN (gated), {label}",
                                       sizes={"conditioning": cond}, tag=cond))
        runs.append(replace(tok, priors=tuple(specs)))
    return _sample_plan(
        "pixelcnn-vs-gpt", scale, "Gated PixelCNN against the two-stage GPT on the hierarchical "
        "baseline's tokens (hvqvae, K=16): NLL and FID*", runs, ("tokens", "model", "prior"),
        {"prior": "GPT (two-stage)"}, ("tokens",),
        [f"tokenizers: fig5's hvqvae runs ({', '.join(r.name for r in toks)}); the 1+1 one is "
         "the demo's configuration; default sizes (GPT: MVQ Table 4; PixelCNN: 64 channels, "
         "6 gated layers); the PixelCNN's secondary stage sees the primary ids averaged onto "
         "the secondary grid (its first form) or the whole primary grid through a learned "
         "projection (its default since issue 21)"])


def class_conditional(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """A class-conditional two-stage GPT on MVQ tokens against the unconditional one."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("class-conditional uses fig5's FashionMNIST tokenizers: drop --dataset")
    base = fig5(scale, 1)
    j = 128 if scale == "quick" else 2048
    tok = next(r for r in base.compared_runs() if r.labels["F"] == 28 and r.labels["K"] == 16
               and r.labels["J"] == j)
    steps = _prior_steps(scale)
    specs = []
    for s in range(seeds):
        specs.append(PriorSpec("gpt", steps, s, "GPT"))
        specs.append(PriorSpec("gpt", steps, s, "GPT, class-conditional",
                               class_conditional=True))
    return _sample_plan(
        "class-conditional", scale, "A class-conditional two-stage GPT on MVQ tokens (mvqvae, "
        "1+1, K=16) against the unconditional one", [replace(tok, priors=tuple(specs))],
        ("tokens", "model", "prior"), {"prior": "GPT"}, ("tokens",),
        [f"tokenizer: fig5's {tok.name} (the demo's configuration); the conditional prior "
         "samples every class in equal blocks; class_grid.png: one row per class, seed 0"],
        kind=ClassConditional())


def mask_sampling(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MH-Dropout's training masks drawn per instance (the paper) or one bank per batch (the
    table search): fig5's 1+1, K = 16 MVQVAE cell at J = 128 and 1024."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("mask-sampling uses fig5's FashionMNIST tokenizers: drop --dataset")
    js = (128, 1024) if scale == "quick" else (2048,)
    base = [r for r in fig5(scale, seeds).compared_runs() if r.labels["F"] == 28
            and r.labels["K"] == 16 and r.labels["J"] in js and r.seed < seeds]
    runs = []
    for run in base:
        runs.append(replace(run, labels={**run.labels, "masks": "per instance"}))
        runs.append(replace(run, name=run.name.replace("_j", "_batchmasks_j", 1),
                            changes=run.changes + Changes(train={"mask_sampling": "batch"}),
                            labels={**run.labels, "masks": "per batch"}))
    first = fig5(scale, seeds)
    return Plan("mask-sampling", scale, "MH-Dropout's training masks per instance (the paper's "
                "reading) against one bank per batch (the table search), MVQVAE 1+1, K=16",
                runs, first.eval_n, first.metrics, ("tokens", "K", "J", "masks"),
                baseline={"masks": "per instance"}, match=("tokens", "K", "J"),
                notes=first.notes + ["the per-instance runs are fig5's; the per-batch runs "
                                     "differ only in train.mask_sampling=batch"])


# --- frontier: every quantizer family at the same rates ------------------------------------

FRONTIER_RATES = (8, 16, 32, 64)  # bits per image
# every family on the Table 3 networks of F = 14 at 28 px: a 2 x 2 primary grid (4 positions;
# 4 + 1 tokens for the two-level types, whose secondary code is one token)
FRONTIER_FACTOR = 14
FRONTIER_PRESET = "fmnist_f28_k16_quick.yaml"  # fig5's quick settings (lr, batch, steps, ...)
FRONTIER_STEPS, FRONTIER_N = 1200, 500
FRONTIER_NLL_RATES = (16, 32)  # the GPT prior's NLL at these two rates only (the budget)
# "VQ with the modern options": a 4-dimensional cosine lookup (ViT-VQGAN) and the rotation trick
MODERN_LOOKUP = {"lookup_dim": 4, "cosine": True, "rotation_trick": True}
FRONTIER_BASELINE, FRONTIER_MVQ = DEFAULT_QUANTIZER.upper(), "MVQ"


@dataclass(frozen=True)
class FrontierLine:
    """One line of the frontier: its label in the report, and its model keys at a rate in bits
    per image (``model(rate)``: ``model.type`` and the keys that set the rate)."""

    label: str
    model: Callable[[int], dict]


def _positions() -> int:
    return (DATASETS["fashion-mnist"].image_size // FRONTIER_FACTOR) ** 2


def _one_level(name: str, extra: Mapping | None = None) -> Callable[[int], dict]:
    """The one-level backbone with the family ``name`` at rate / positions bits per token."""
    fam = FAMILIES[name]
    return lambda rate: {"type": "vqvae", "quantizer": name,
                         **fam.rate(rate // _positions()), **(extra or {})}


def _hierarchical(rate: int) -> dict:
    """VQ-VAE-2 (A.6) with 4 + 1 tokens of K/2 entries: K/2 = 2^(rate / 5), rounded."""
    return {"type": "hvqvae", "codebook_size": 2 * max(2, round(2 ** (rate / (_positions() + 1))))}


def _masked(rate: int) -> dict:
    """MVQ with 4 + 1 tokens of K/2 = 2^a entries and J = 2^j masks (log2 J bits per secondary
    token): a = (rate - 7) / 5 rounded, at least 1, so that J stays near fig5's 128; j the rest."""
    a = max(1, round((rate - 7) / (_positions() + 1)))
    return {"type": "mvqvae", "codebook_size": 2 * 2 ** a,
            "num_masks": 2 ** (rate - (_positions() + 1) * a), "eval_masks": 0}


def _masked_over(name: str) -> Callable[[int], dict]:
    """MVQ whose secondary code is the channel-code family ``name`` (FSQ, LFQ): MVQ's primary
    (4 tokens of K/2 = 2^a, a as `_masked`'s), then the secondary's keys (its ``rate``) and
    J = 2^m masks (m <= its channels D', at least 1) whose bits come closest to the rest of the
    rate; among equals, the most mask bits."""
    fam = FAMILIES[name]

    def model(rate: int) -> dict:
        a = max(1, round((rate - 7) / (_positions() + 1)))
        rest, options = rate - _positions() * a, []
        for bits in range(1, 21):
            keys = fam.rate(bits)
            layer = fam.secondary(SimpleNamespace(**{**asdict(ModelConfig()), **keys}))
            for m in range(1, layer.dim + 1):
                options.append((abs(layer.bits_per_token + m - rest), -m, bits, keys))
        _, m, _, keys = min(options, key=lambda o: o[:3])
        return {"type": "mvqvae", "codebook_size": 2 * 2 ** a, "secondary": name, **keys,
                "num_masks": 2 ** -m, "eval_masks": 0}

    return model


def frontier_lines() -> tuple[FrontierLine, ...]:
    """Every family on the frontier: each family of `mvq.quantize.registry` that sets a rate
    (the default first: the baseline), VQ with the modern lookup options, the hierarchical
    baseline, MVQ, and MVQ over each family that can be its secondary code. A family added to
    the registry with a ``rate`` (and a ``secondary``) joins it as it is."""
    one = [FrontierLine(name.upper(), _one_level(name)) for name, fam in FAMILIES.items()
           if fam.rate is not None]
    modern = FrontierLine(f"{FRONTIER_BASELINE} (low-dim, cosine, rotation)",
                          _one_level(DEFAULT_QUANTIZER, MODERN_LOOKUP))
    over = [FrontierLine(f"{FRONTIER_MVQ} over {name.upper()}", _masked_over(name))
            for name in SECONDARIES if FAMILIES[name].secondary is not None
            and FAMILIES[name].rate is not None]
    return (one[0], modern, *one[1:], FrontierLine("hierarchical VQ (A.6)", _hierarchical),
            FrontierLine(FRONTIER_MVQ, _masked), *over)


# the short names of the model keys in run names
_SHORT = {"secondary": "over-", "codebook_size": "k", "levels": "l", "bits": "b", "depth": "d",
          "lookup_dim": "lookup", "cosine": "cos", "rotation_trick": "rot", "num_masks": "j"}


def _frontier_run(data: Dataset, line: FrontierLine, rate: int, seed: int, prior: bool) -> Run:
    model = line.model(rate)
    kind = model.pop("type")
    model.pop("eval_masks", None)
    quantizer = model.pop("quantizer", None)
    parts = [kind] + ([quantizer] if quantizer else [])
    for key, value in model.items():
        text = "-".join(map(str, value)) if isinstance(value, tuple) else \
            "" if value is True else str(value)
        parts.append(_SHORT.get(key, key) + text)
    steps = FRONTIER_STEPS
    name = f"{data.key}_f{FRONTIER_FACTOR}_{'-'.join(parts)}_{steps}steps_s{seed}"
    settings = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         if v is not True else k for k, v in model.items())
    extra = {"eval_masks": 0} if "num_masks" in model else {}
    changes = Changes(model={"type": kind, "factor": FRONTIER_FACTOR, "image_size": data.image_size,
                             "channels": data.channels, "dim": data.dim, "dim2": data.dim,
                             **({"quantizer": quantizer} if quantizer else {}), **model, **extra},
                      data={"name": data.data_name}, train={"steps": steps}) + _cadence(steps)
    cfg = Run(name, FRONTIER_PRESET, changes, {}, seed).config(None, "x")
    s, s2 = model_tokens(cfg.model)
    labels = {"rate": rate, "family": line.label, "tokens": f"{s}+{s2}" if s2 else f"{s}",
              "settings": settings, "model": kind}
    # one prior size for every family (Table 4's for 4 + 1 tokens): the NLL compares the codes
    priors = (PriorSpec("gpt", _prior_steps("quick"), seed, sizes=table4_size(_positions())),) \
        if prior else ()
    return Run(name, FRONTIER_PRESET, changes, labels, seed, priors)


def frontier(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """Every quantizer family on the same backbone at 8 to 64 bits per image: reconstruction
    against rate, each family against plain VQ at each rate, MVQ against each family."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("frontier runs on FashionMNIST: drop --dataset")
    if scale != "quick":
        raise MvqError("frontier is a --scale quick study (FashionMNIST, 1200 steps); drop "
                       "--scale paper")
    data, lines = DATASETS["fashion-mnist"], frontier_lines()
    runs = [_frontier_run(data, line, rate, s, rate in FRONTIER_NLL_RATES)
            for rate in FRONTIER_RATES for line in lines for s in range(seeds)]
    others = [ln.label for ln in lines if ln.label not in (FRONTIER_BASELINE, FRONTIER_MVQ)]
    pairs = tuple(({"rate": r, "family": FRONTIER_MVQ}, {"rate": r, "family": o})
                  for r in FRONTIER_RATES for o in others)
    return Plan("frontier", scale, "Rate against distortion: every quantizer family on the same "
                f"backbone (Table 3, F = {FRONTIER_FACTOR}) at "
                f"{', '.join(map(str, FRONTIER_RATES))} bits per image, FashionMNIST", runs,
                FRONTIER_N, ("mse", "lpips", "rfid"),
                ("rate", "family", "tokens", "settings"), baseline={"family": FRONTIER_BASELINE},
                match=("rate",), pairs=pairs, sample_metrics=("nll",),
                kind=Frontier(nll_rates=FRONTIER_NLL_RATES),
                notes=[f"{FRONTIER_STEPS} steps of batch 32 per tokenizer ({FRONTIER_PRESET}'s "
                       f"settings), {seeds} seeds per cell, evaluation on the first {FRONTIER_N} "
                       "test images through the discrete codes",
                       f"one-level families: {_positions()} positions of rate / "
                       f"{_positions()} bits (residual VQ: 2 stages; FSQ: the paper's levels "
                       "from 2^8 codes, channels of 4 levels below); VQ (modern): "
                       + ", ".join(f"{k}={v}" for k, v in MODERN_LOOKUP.items())
                       + f"; hierarchical VQ and MVQ: {_positions()} + 1 tokens of K/2 entries, "
                       "MVQ with log2 J mask bits per secondary token",
                       "each family against plain VQ at each rate, and MVQ against every other "
                       "family; the leaders: the best mean at each rate, resolved where it is "
                       "ahead of the runner-up (Welch, BH over the leader tests)",
                       f"the GPT prior's NLL (bits per image: per-token bits x tokens, plus MVQ's "
                       f"uniform mask bits) at {' and '.join(map(str, FRONTIER_NLL_RATES))} bits "
                       f"per image only (the budget): {_prior_steps('quick')} steps of batch 64, "
                       "one size for all (Table 4's for 4 + 1 tokens); encode ms/img: wall "
                       "time of the evaluation's encode calls per image on this machine "
                       "(shared, one thread), not compared"])


def table6(scale: str, seeds: int, dataset: str | None = None) -> Benchmark:
    """MVQ Table 6: the token sampling benchmark (mvq.bench.sampling), its output kept."""
    return Benchmark("table6", scale, "MVQ paper Table 6: token sampling times",
                     "mvq.bench.sampling", {"quick": "1 min", "paper": "15-25 min"}[scale])


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
