"""The one table of mvq's metrics: what each number in a result's "metrics" is called, which way
is better, how it is shown, and what it is computed from. `mvq evaluate`'s markdown, `mvq
compare` and `mvq reproduce`'s reports all read it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mvq.errors import MvqError


@dataclass(frozen=True)
class Metric:
    """One key of a result's "metrics".

    ``better``: "lower", "higher" or "" (a size or a count, not a quality); ``needs``: what it
    is computed from: "images" (pixels of the originals and reconstructions), "features"
    (Inception features: FID, PRD), "tokens" (the codes), "model" (the tokenizer itself) or
    "samples" (the prior's sampling clock); ``asked_by``: the name in ``--metrics`` that asks
    for it ("" : reported with its evaluation). ``column``, ``digits`` and ``scale``: the
    reproduce report's column header ("" : no column), decimals and unit factor.
    """

    key: str
    label: str
    fmt: str
    better: str
    needs: str
    asked_by: str = ""
    column: str = ""
    digits: int = 3
    scale: float = 1.0


TABLE: tuple[Metric, ...] = (
    Metric("mse", "MSE", "{:.6f}", "lower", "images", "mse", "MSE", 4),
    Metric("psnr", "PSNR (dB)", "{:.2f}", "higher", "images", "psnr", "PSNR dB", 2),
    Metric("ssim", "SSIM", "{:.4f}", "higher", "images", "ssim", "SSIM", 3),
    Metric("lpips", "LPIPS (alex)", "{:.4f}", "lower", "images", "lpips", "LPIPS", 4),
    Metric("rfid", "rFID", "{:.3f}", "lower", "features", "rfid", "rFID", 1),
    Metric("prd_f8", "PRD F_8 (recall)", "{:.4f}", "higher", "features", "prd", "F_8", 3),
    Metric("prd_f1_8", "PRD F_1/8 (precision)", "{:.4f}", "higher", "features", "prd",
           "F_1/8", 3),
    Metric("usage", "codebook usage", "{:.3f}", "higher", "tokens", "usage"),
    Metric("perplexity", "perplexity", "{:.2f}", "higher", "tokens", "usage"),
    Metric("usage2", "codebook usage (secondary)", "{:.3f}", "higher", "tokens", "usage"),
    Metric("perplexity2", "perplexity (secondary)", "{:.2f}", "higher", "tokens", "usage"),
    Metric("bits_per_image", "bits / image", "{:.1f}", "", "model"),
    Metric("tokens", "tokens (S + S')", "{}", "", "model"),
    Metric("parameters", "parameters", "{:,}", "", "model"),
    Metric("fid_samples", "FID* (samples)", "{:.3f}", "lower", "features", "fid", "FID*", 1),
    # a prior's samples' PRD beside its tokenizer's reconstructions' (table5 rows hold both)
    Metric("prd_f8_samples", "PRD F_8 of samples (recall)", "{:.4f}", "higher", "features",
           column="samples F_8", digits=3),
    Metric("prd_f1_8_samples", "PRD F_1/8 of samples (precision)", "{:.4f}", "higher",
           "features", column="samples F_1/8", digits=3),
    Metric("nll_primary", "NLL primary (nats/token)", "{:.4f}", "lower", "tokens", "nll"),
    Metric("nll_primary_bits", "NLL primary (bits/token)", "{:.4f}", "lower", "tokens", "nll",
           "NLL prim. bits", 3),
    Metric("nll_secondary", "NLL secondary (nats/token)", "{:.4f}", "lower", "tokens", "nll"),
    Metric("nll_secondary_bits", "NLL secondary (bits/token)", "{:.4f}", "lower", "tokens",
           "nll", "NLL sec. bits", 3),
    Metric("nll_masked", "NLL masked tokens, MaskGIT at a fixed 50% mask (nats/token)",
           "{:.4f}", "lower", "tokens", "nll"),
    Metric("nll_masked_bits", "NLL masked tokens, MaskGIT at a fixed 50% mask (bits/token)",
           "{:.4f}", "lower", "tokens", "nll", "NLL masked bits (MaskGIT)", 3),
    # the GPT's NLL of a tokenizer's codes, bits per image: the per-token bits times the tokens,
    # plus the mask bank index of an MVQ code (uniform: not modelled); mvq reproduce frontier
    Metric("nll_bits_image", "NLL (bits/image)", "{:.2f}", "lower", "tokens", "",
           "NLL bits/img", 1),
    # wall seconds per sample, shown in ms by the reports
    Metric("tokens_s_per_img", "token sampling, s / image", "{:.5f}", "lower", "samples",
           column="ms/img tokens", scale=1000.0),
    Metric("sample_s_per_img", "token sampling + decoding, s / image", "{:.5f}", "lower",
           "samples", column="ms/img tokens+decode", scale=1000.0),
)
BY_KEY: dict[str, Metric] = {m.key: m for m in TABLE}

# the names ``--metrics`` takes, in order: reconstruction metrics, and with --prior sample ones
METRICS = ("mse", "psnr", "ssim", "lpips", "rfid", "prd", "usage")
SAMPLE_METRICS = ("fid", "prd", "nll")


def label(key: str) -> str:
    """The metric's row label in `mvq evaluate`'s table (the key itself when unknown)."""
    return BY_KEY[key].label if key in BY_KEY else key


def cell(key: str, value) -> str:
    """A metric value as its format shows it; n/a when missing, nan/inf as is."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return BY_KEY[key].fmt.format(value) if key in BY_KEY else str(value)


def lower_is_better(key: str) -> bool:
    return key in BY_KEY and BY_KEY[key].better == "lower"


def report_columns() -> dict[str, str]:
    """{key: column header} of the metrics a reproduce report shows, in table order."""
    return {m.key: m.column for m in TABLE if m.column}


def needs_features(chosen: Sequence[str]) -> bool:
    """Whether any of the ``--metrics`` names in ``chosen`` needs Inception features."""
    return any(m.needs == "features" and m.asked_by in chosen for m in TABLE)


def check_metrics(metrics, allowed: tuple[str, ...] = METRICS, what: str = "metric"
                  ) -> tuple[str, ...]:
    """A comma-separated string or a sequence of names -> the chosen names, in order, unique."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(" ", "").split(",") if m]
    chosen = tuple(dict.fromkeys(str(m).lower() for m in metrics))
    unknown = [m for m in chosen if m not in allowed]
    if unknown:
        raise MvqError(f"unknown {what} {unknown[0]!r}: expected some of {', '.join(allowed)}")
    if not chosen:
        raise MvqError(f"no {what} chosen: expected some of {', '.join(allowed)}")
    return chosen
