"""The frontier experiment (`mvq reproduce frontier`): every quantizer family of
`mvq.quantize.registry` on the same backbone at 8 to 64 bits per image. Its plan (the lines,
their model keys at each rate, the runs) and its kind (`Frontier`: the report's rows with
encode times and the prior's NLL per image, the leaders at each rate, the rate-distortion plot
with its Pareto front).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mvq.configuration.sections import ModelConfig
from mvq.errors import MvqError
from mvq.evaluation.metrics_table import lower_is_better
from mvq.priors.gpt import table4_size
from mvq.quantize.registry import DEFAULT as DEFAULT_QUANTIZER
from mvq.quantize.registry import FAMILIES, SECONDARIES, secondary_sizes
from mvq.reproduce.builders import DATASETS, Dataset, cadence, default_prior_steps
from mvq.reproduce.kinds import Plan, TokenizerSweep, finish_figure, pyplot
from mvq.reproduce.records import METRIC_NAMES, Cell, Record, run_record
from mvq.reproduce.spec import Changes, PriorSpec, Run, RunState
from mvq.reproduce.stats import Comparison, adjust, p_text
from mvq.reproduce.timing import tokens_per_image as model_tokens

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
            cfg = ModelConfig(type="mvqvae", secondary=name, **keys)
            channels, own = secondary_sizes(cfg)[0], fam.bits_per_token(cfg)
            for m in range(1, channels + 1):
                options.append((abs(own + m - rest), -m, bits, keys))
        _, m, _, keys = min(options, key=lambda o: o[:3])
        return {"type": "mvqvae", "codebook_size": 2 * 2 ** a, "secondary": name, **keys,
                "num_masks": 2 ** -m, "eval_masks": 0}

    return model


def _label(name: str) -> str:
    """A family's label in the report: acronyms (vq, fsq, ...) in capitals, words as they are."""
    return name.upper() if len(name) <= 3 else name


def _fixed_keys() -> str:
    """What each one-level family's rate sweep holds fixed (residual VQ's depth, the
    multichannel heads), as ``LABEL: key=value``, read from the families' ``rate``."""
    parts = []
    for name, fam in FAMILIES.items():
        if fam.rate is None:
            continue
        sweep = [fam.rate(rate // _positions()) for rate in FRONTIER_RATES]
        fixed = [f"{key}={value}" for key, value in sweep[0].items()
                 if all(keys.get(key) == value for keys in sweep[1:])]
        if fixed:
            parts.append(f"{_label(name)}: {', '.join(fixed)}")
    return "; ".join(parts)


def frontier_lines() -> tuple[FrontierLine, ...]:
    """Every family on the frontier: each family of `mvq.quantize.registry` that sets a rate
    (the default first: the baseline), VQ with the modern lookup options, the hierarchical
    baseline, MVQ, and MVQ over each family that can be its secondary code. A family added to
    the registry with a ``rate`` (and a ``secondary``) joins it as it is."""
    one = [FrontierLine(_label(name), _one_level(name)) for name, fam in FAMILIES.items()
           if fam.rate is not None]
    modern = FrontierLine(f"{FRONTIER_BASELINE} (low-dim, cosine, rotation)",
                          _one_level(DEFAULT_QUANTIZER, MODERN_LOOKUP))
    over = [FrontierLine(f"{FRONTIER_MVQ} over {_label(name)}", _masked_over(name))
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
                      data={"name": data.data_name}, train={"steps": steps}) + cadence(steps)
    cfg = Run(name, FRONTIER_PRESET, changes, {}, seed).config(None, "x")
    s, s2 = model_tokens(cfg.model)
    labels = {"rate": rate, "family": line.label, "tokens": f"{s}+{s2}" if s2 else f"{s}",
              "settings": settings, "model": kind}
    # one prior size for every family (Table 4's for 4 + 1 tokens): the NLL compares the codes
    priors = (PriorSpec("gpt", default_prior_steps("quick"), seed,
                        sizes=table4_size(_positions())),) if prior else ()
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
                       f"settings), {seeds} seed{'s' * (seeds != 1)} per cell, evaluation on "
                       f"the first {FRONTIER_N} "
                       "test images through the discrete codes",
                       f"one-level families: {_positions()} positions of rate / "
                       f"{_positions()} bits ({_fixed_keys()}; "
                       "FSQ: the paper's levels from 2^8 codes, channels of 4 levels below); "
                       "VQ (modern): "
                       + ", ".join(f"{k}={v}" for k, v in MODERN_LOOKUP.items())
                       + f"; hierarchical VQ and MVQ: {_positions()} + 1 tokens of K/2 entries, "
                       "MVQ with log2 J mask bits per secondary token",
                       "each family against plain VQ at each rate, and MVQ against every other "
                       "family; the leaders: the best mean at each rate, resolved where it is "
                       "ahead of the runner-up (Welch, BH over the leader tests)",
                       f"the GPT prior's NLL (bits per image: per-token bits x tokens, plus MVQ's "
                       f"uniform mask bits) at {' and '.join(map(str, FRONTIER_NLL_RATES))} bits "
                       f"per image only (the budget): {default_prior_steps('quick')} steps of "
                       "batch 64, one size for all (Table 4's for 4 + 1 tokens); encode ms/img: "
                       "wall time of the evaluation's encode calls per image on this machine "
                       "(shared, one thread), not compared"])


# --- the frontier's kind: its report rows, leaders and plot -------------------------------

# the frontier's metrics, each drawn against bits per image and led at each rate
FRONTIER_METRICS = ("mse", "lpips", "rfid", "nll_bits_image")


@dataclass
class Frontier(TokenizerSweep):
    """Quantizer families at several rates (mvq reproduce frontier): one row per (rate,
    family); each row's encode ms per image (from its evaluation's encode seconds, a size
    column: timings on a shared machine are not compared) and, where its run has a GPT prior,
    the prior's NLL in bits per image; the plot: each metric against bits per image, a line per
    family, the Pareto front marked; the leaders: the best family at each rate and metric, and
    whether it is resolved against the runner-up."""

    nll_rates: tuple[int, ...] = ()
    ROWS_BEFORE_PRIORS = True  # the NLL is one column of four: a run without it is a row

    def records(self, st: RunState) -> list[Record]:
        rec = run_record(st)
        ev = json.loads(st.eval_path(st.steps).read_text())
        seconds, n = ev.get("encode_seconds"), ev.get("n")
        if isinstance(seconds, (int, float)) and isinstance(n, int) and n > 0 and seconds > 0:
            rec.metrics["encode_ms"] = 1000.0 * seconds / n
        if rec.samples is not None:  # per image: families differ in tokens per image
            bits = [rec.samples.get(k) for k in ("nll_primary_bits", "nll_secondary_bits")]
            tokens = [ev.get("tokens_primary", 0), ev.get("tokens_secondary", 0)]
            if bits[0] is not None:
                rec.samples = {"nll_bits_image": sum((b or 0.0) * t for b, t in zip(bits, tokens))
                               + float(rec.mask_bits or 0.0)}
        return [rec]

    def size_columns(self) -> list[str]:
        return ["bits/img", "params", "encode ms/img"]

    def size_cells(self, cell: Cell) -> list[str]:
        ms = cell.stats.get("encode_ms")
        return [*super().size_cells(cell),
                f"{ms.mean:.2f}" if ms is not None and ms.mean is not None else "n/a"]

    def figures(self, plan: Plan, cells: list[Cell], folder: Path) -> tuple[Path, ...]:
        png = frontier_plot(plan, cells, folder / f"{plan.experiment}.png")
        return (png,) if png else ()

    def summary(self, plan: Plan, cells: list[Cell]) -> tuple[list[str], dict]:
        found = leaders(cells)
        if not found:
            return [], {}
        lines = ["Leaders: at each rate and metric, the family with the best mean, and whether "
                 "its lead is resolved: ahead of the runner-up where a Welch test of their seeds "
                 "gives q < 0.05 (Benjamini-Hochberg over these leader tests alone); else "
                 "unresolved (the runner-up may be as good).", "",
                 "| rate (bits/img) | metric | leader | runner-up | resolved | change | q |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in found:
            q = p_text(f["q"])
            change = "n/a" if f["change"] is None else f"{f['change']:+.1%}"
            lines.append(f"| {f['rate']} | {METRIC_NAMES[f['metric']]} | {f['leader']} | "
                         f"{f['runner_up'] or 'n/a'} | {'yes' if f['resolved'] else 'no'} "
                         f"({f['verdict']}) | {change} | {q} |")
        return lines + [""], {"leaders": found}


def leaders(cells: list[Cell]) -> list[dict]:
    """At each rate and frontier metric, the family of best mean and its runner-up, the
    leader's Welch test against the runner-up BH-adjusted over these tests (`adjust`)."""
    found = []
    for rate in sorted({c.labels.get("rate") for c in cells if "rate" in c.labels}):
        here = [c for c in cells if c.labels.get("rate") == rate]
        for m in FRONTIER_METRICS:
            ranked = sorted((c for c in here if m in c.stats and c.stats[m].mean is not None),
                            key=lambda c: c.stats[m].mean * (1 if lower_is_better(m) else -1))
            if not ranked:
                continue
            lead, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
            comp = (Comparison(m, lead.stats[m].values, second.stats[m].values)
                    if second is not None and second.stats[m].mean else None)
            found.append((rate, m, lead, second, comp))
    adjust([f[4] for f in found if f[4] is not None])
    return [{"rate": rate, "metric": m, "leader": lead.labels.get("family"),
             "runner_up": second.labels.get("family") if second is not None else None,
             "verdict": comp.verdict if comp else "unresolved (alone)",
             "resolved": bool(comp and comp.verdict == "ahead"),
             "change": comp.change if comp else None, "q": comp.q if comp else None,
             "mean": lead.stats[m].mean}
            for rate, m, lead, second, comp in found]


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both rate and metric (lower is better on both),
    by rate."""
    front, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def frontier_plot(plan: Plan, cells: list[Cell], path: Path) -> Path | None:
    """Each frontier metric measured against bits per image (log 2): a line per family (mean
    over seeds at each rate, error bars the sd), the Pareto front over all families' means as
    a black step line with ringed points; MVQ's own line drawn heavier, the legend in a panel of
    its own so that it hides no point."""
    plt = pyplot()
    metrics = [m for m in FRONTIER_METRICS if any(m in c.stats and c.stats[m].mean is not None
                                                  for c in cells)]
    families = list(dict.fromkeys(c.labels.get("family") for c in cells))
    if not metrics or not families:
        return None
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.6 * len(metrics) + 1.6, 4.2),
                             squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(metrics) + [0.3]})
    for ax, m in zip(axes[0], metrics):
        points = []
        for i, fam in enumerate(families):
            pts = sorted((c.stats["bits_per_image"].mean, c.stats[m]) for c in cells
                         if c.labels.get("family") == fam and "bits_per_image" in c.stats
                         and m in c.stats and c.stats[m].mean is not None)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                            yerr=[p[1].std or 0 for p in pts], marker="o", capsize=3,
                            color=f"C{i % 10}", linestyle="-" if i < 10 else "--", label=fam,
                            **({"linewidth": 2.8, "zorder": 4} if fam == FRONTIER_MVQ else {}))
                points += [(p[0], p[1].mean * (1 if lower_is_better(m) else -1)) for p in pts]
        front = [(x, y if lower_is_better(m) else -y) for x, y in pareto(points)]
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                    linewidth=1.2, alpha=0.7, label="Pareto front")
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none",
                       edgecolors="black", zorder=5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per image")
        ax.set_title(METRIC_NAMES[m])
        ax.grid(alpha=0.3)
    legend = axes[0][-1]
    legend.axis("off")
    legend.legend(*axes[0][0].get_legend_handles_labels(), loc="center", fontsize=7,
                  frameon=False)
    return finish_figure(plt, fig, plan, path, 40 * len(metrics), "sd")
