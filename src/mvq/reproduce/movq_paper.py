"""The MoVQ paper's experiments as plans: the ablation of Fig. 6 (a, c), the codebook sizes of
Fig. 6 (b) and Table 2's decoding orders (MaskGIT against a GPT on MoVQ's tokens). Their
registry: `mvq.reproduce.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mvq.errors import MvqError
from mvq.reproduce.builders import cadence, default_prior_steps, sample_plan
from mvq.reproduce.kinds import Plan
from mvq.reproduce.spec import Changes, Decode, PriorSpec, Run
from mvq.values.decoding import Decoding


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
            changes = Changes(model=v.model, train={"steps": steps}) + cadence(steps)
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


# the GPT of movq-table2 gets MaskGIT's transformer size (4 layers, 4 heads, width 64), so the
# comparison is one of decoding orders, not of model sizes
MASKGIT_SIZE = {"n_layer": 4, "n_head": 4, "n_embd": 64}


def movq_table2(scale: str, seeds: int, dataset: str | None = None) -> Plan:
    """MoVQ Table 2 at CPU scale: MaskGIT at 4/8/12/16 steps against autoregressive decoding of
    the same MoVQ tokens by a GPT of the same size."""
    if dataset is not None:
        raise MvqError("movq-table2 uses movq-ablation's MoVQ tokenizer: drop --dataset")
    tok = next(r for r in movq_ablation(scale, 1).runs if r.labels.get("f0") == "fourier")
    steps = default_prior_steps(scale)
    specs = []
    for s in range(seeds):
        specs.append(PriorSpec("gpt", steps, s, "GPT (autoregressive)",
                               sizes={"primary": MASKGIT_SIZE},
                               decodes=(Decode("one token per step"),)))
        specs.append(PriorSpec("maskgit", steps, s, "MaskGIT",
                               decodes=tuple(Decode(f"{k} steps", Decoding(steps=k))
                                             for k in (4, 8, 12, 16))))
    run = replace(tok, priors=tuple(specs))
    return sample_plan(
        "movq-table2", scale, "MoVQ paper Table 2 at CPU scale: MaskGIT decoding at 4 to 16 "
        "steps against autoregressive decoding, one transformer size, MoVQ's tokens",
        [run], ("prior", "decoding"), {"prior": "GPT (autoregressive)"}, (),
        [f"tokenizer: movq-ablation's MoVQ run ({tok.name}); both priors are transformers of "
         "4 layers, 4 heads, width 64 over the 7x7 grid's 4 channel ids per position"])
