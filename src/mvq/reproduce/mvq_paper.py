"""The MVQ paper's experiments as plans: fig5, two-vs-five, table1 / table5 and table6, and
the studies built on fig5's tokenizers (training-length, mask-sampling, pixelcnn-vs-gpt,
class-conditional). Their registry: `mvq.reproduce.plan`.
"""

from __future__ import annotations

from dataclasses import replace

from mvq.errors import MvqError
from mvq.reproduce.benchmark import Benchmark
from mvq.reproduce.builders import (
    DATASETS,
    cadence,
    data_set,
    default_prior_steps,
    sample_plan,
    tokenizer_run,
)
from mvq.reproduce.kinds import ClassConditional, Plan, Plot, TokenizerSweep, TrainingLength
from mvq.reproduce.spec import Changes, PriorSpec

# The quick scale's headline cells, where MVQ's lead is the question (1+1 tokens, K = 16 in
# fig5 and table1), take at least this many seeds: three cannot resolve a 5-10% gap
HEADLINE_SEEDS = 5


def _cell_seeds(scale: str, seeds: int, factor: int, k: int) -> int:
    return max(seeds, HEADLINE_SEEDS) if (scale, factor, k) == ("quick", 28, 16) else seeds


def fig5(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MVQ Fig. 5: MVQVAE against the hierarchical baseline on FashionMNIST, FID against J."""
    data = data_set(dataset, scale)
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
                runs.append(tokenizer_run(data, preset, "hvqvae", factor, k, steps, s,
                                          extra=cadence(steps)))
            for j in js:
                for s in range(cell if j in seeded_j else 1):
                    runs.append(tokenizer_run(data, preset, "mvqvae", factor, k, steps, s,
                                              j, extra=cadence(steps)))
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
    saves = Changes(train={"val_every": every, "ckpt_every": every})
    runs = []
    for factor in (28, 14):  # 1+1 tokens first: a partial report already compares them
        preset = f"fmnist_f{factor}_k16_quick.yaml"  # fig5's, through fig5's builder
        for s in range(seeds):
            runs.append(tokenizer_run(data, preset, "hvqvae", factor, 16, steps, s,
                                      extra=saves))
            runs.append(tokenizer_run(data, preset, "mvqvae", factor, 16, steps, s, j,
                                      extra=saves))
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
    data = data_set(dataset, scale)
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
                runs.append(tokenizer_run(data, preset, "hvqgan", factor, k, steps, s,
                                          extra=extra + cadence(steps), priors=gpt))
                runs.append(tokenizer_run(data, preset, "mvqgan", factor, k, steps, s, j,
                                          extra=extra + cadence(steps), priors=gpt))
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

# the PixelCNN's two ways of conditioning its secondary stage (mvq.priors.pixelcnn.CONDITIONINGS)
PIXELCNN_CONDITIONINGS = (("average", "primary averaged"), ("layout", "primary layout"))


def pixelcnn_vs_gpt(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """The gated PixelCNN (the prior the MVQ paper pairs with VQ-VAE-2), its secondary stage
    conditioned both ways, against the two-stage GPT on the hierarchical baseline's tokens."""
    if dataset not in (None, "fashion-mnist"):
        raise MvqError("pixelcnn-vs-gpt uses fig5's FashionMNIST tokenizers: drop --dataset")
    base = fig5(scale, 1)
    toks = [r for r in base.baseline_runs() if r.labels["K"] == 16 and r.seed == 0]
    steps = default_prior_steps(scale)
    runs = []
    for tok in toks:
        specs = []
        for s in range(seeds):
            specs.append(PriorSpec("gpt", steps, s, "GPT (two-stage)"))
            for cond, label in PIXELCNN_CONDITIONINGS:
                specs.append(PriorSpec("pixelcnn", steps, s, f"PixelCNN (gated), {label}",
                                       sizes={"conditioning": cond}, tag=cond))
        runs.append(replace(tok, priors=tuple(specs)))
    return sample_plan(
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
    steps = default_prior_steps(scale)
    specs = []
    for s in range(seeds):
        specs.append(PriorSpec("gpt", steps, s, "GPT"))
        specs.append(PriorSpec("gpt", steps, s, "GPT, class-conditional",
                               class_conditional=True))
    return sample_plan(
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


def table6(scale: str, seeds: int, dataset: str | None = None) -> Benchmark:
    """MVQ Table 6: the token sampling benchmark (mvq.bench.sampling), its output kept."""
    return Benchmark("table6", scale, "MVQ paper Table 6: token sampling times",
                     "mvq.bench.sampling", {"quick": "1 min", "paper": "15-25 min"}[scale])
