"""Reconstruction evaluation of a tokenizer checkpoint on a fixed, reproducible set of images.

The images are the first ``n`` of a split of the checkpoint's data set (shapes: seed 0), at the
model's image size and channels. Each batch goes encode -> decode (clamped to [0, 1]); metrics:
MSE and PSNR (means of per-image values), SSIM, LPIPS (AlexNet, v0.1), rFID and PRD (F_8, F_1/8)
on pytorch-fid Inception features of the originals vs the reconstructions, codebook usage and
perplexity, bits per image and tokens. The result records everything that decides whether two
numbers are comparable (data, n, extractor and backbone hashes, resize conventions, version).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq.configuration.config import MASK_TYPES
from mvq.errors import MvqError, expect_value
from mvq.evaluation.common import (
    EvalRun,
    EvalSettings,
    close_run,
    inception_scores,
    open_run,
    real_features,
)
from mvq.evaluation.metrics_table import METRICS, check_metrics, needs_features
from mvq.metrics import (
    extract_features,
    lpips_backbone_path,
    lpips_distance,
    perplexity,
    ssim,
    usage,
)
from mvq.metrics.image import MSE_FLOOR, psnr_from_mse
from mvq.metrics.perceptual import lpips_resize
from mvq.metrics.weights import weights_sha256

LPIPS_NET = "alex"


def evaluate_checkpoint(checkpoint: str | Path, settings: EvalSettings | None = None,
                        metrics: tuple[str, ...] | str = METRICS, refine: bool = False) -> dict:
    """Evaluate the reconstructions of ``checkpoint`` on the first ``settings.n`` images of
    ``settings.split`` (None: `EvalSettings`' defaults); ``metrics``: names from `METRICS` (or
    a comma-separated string).

    ``refine``: MVQ models only, encode with inference-time mask refinement
    (`mvq.quantize.refine`); bits_per_image then counts D' mask bits per secondary token.

    Returns a JSON-serialisable dict: the metric values under ``"metrics"`` and, top level, what
    makes them comparable (checkpoint, model, step, data set, split, n, sizes, extractor hashes,
    resize conventions, mvq version, seconds). Raises MvqError for anything the user can fix.
    """
    settings = expect_value(settings, EvalSettings, "settings")
    chosen = check_metrics(metrics)
    inception = needs_features(chosen)
    run = open_run(checkpoint, settings, chosen, inception, "reconstructions")
    model, result = run.model, run.result
    if refine and not hasattr(model, "refined_mask_bits"):
        raise MvqError(f"mask refinement needs an MVQ checkpoint ({' or '.join(MASK_TYPES)}); "
                       f"{checkpoint} holds a {result['model_type']}: drop --refine")
    result.update(lpips_net=None, lpips_backbone_sha256=None, lpips_resize=None,
                  mask_refine=refine, encode_seconds=0.0)
    extractor, real_stats = None, None
    if inception:
        extractor, real_stats = real_features(run, need_features="prd" in chosen)
    if "lpips" in chosen:
        result.update(lpips_net=f"{LPIPS_NET} (lpips v0.1 heads)",
                      lpips_backbone_sha256=weights_sha256(lpips_backbone_path(LPIPS_NET)))
    seen = _encode_decode(run, chosen, extractor)
    _image_metrics(run, chosen, seen)
    if inception:
        inception_scores(run, real_stats, torch.cat(seen["features"]),
                         "rfid" if "rfid" in chosen else None, "prd" in chosen,
                         "reconstructions")
    _token_metrics(run, chosen, seen)
    return close_run(run)


def _encode_decode(run: EvalRun, chosen: tuple[str, ...], extractor) -> dict[str, list]:
    """Encode and decode every batch: per-image MSE / SSIM / LPIPS, the reconstructions'
    Inception features (with an ``extractor``) and the ids, as lists of per-batch tensors."""
    model, dev, result, s = run.model, run.dev, run.result, run.settings
    seen: dict[str, list] = {"mse": [], "ssim": [], "lpips": [], "features": [], "ids1": [],
                             "ids2": []}
    bar = tqdm(total=run.n_used, desc="evaluate", unit="img", file=sys.stderr,
               disable=not s.progress, dynamic_ncols=True)
    with torch.no_grad():
        for x in run.batches:
            x = x.to(dev)
            t_enc = time.perf_counter()
            codes = model.encode(x, refine=True) if result["mask_refine"] else model.encode(x)
            result["encode_seconds"] += time.perf_counter() - t_enc
            rec = model.decode(codes).clamp(0, 1)
            seen["mse"].append((rec.double() - x.double()).pow(2).flatten(1).mean(1).cpu())
            if "ssim" in chosen:
                seen["ssim"].append(ssim(x, rec).double().cpu())
            if "lpips" in chosen:
                (xl, note), (rl, _) = lpips_resize(x), lpips_resize(rec)
                result["lpips_resize"] = note
                lp = lpips_distance(xl, rl, LPIPS_NET, s.batch_size)
                seen["lpips"].append(lp.double().cpu())
            if extractor is not None:
                seen["features"].append(extract_features(rec, s.batch_size, dev, False,
                                                         extractor))
            seen["ids1"].append(codes.primary.flatten().cpu())
            if codes.secondary is not None:
                seen["ids2"].append(codes.secondary.flatten().cpu())
            bar.update(len(x))
    bar.close()
    return seen


def _image_metrics(run: EvalRun, chosen: tuple[str, ...], seen: dict[str, list]) -> None:
    """MSE, PSNR (means of per-image values), SSIM and LPIPS into the result."""
    out = run.result["metrics"]
    mse = torch.cat(seen["mse"])
    if "mse" in chosen:
        out["mse"] = float(mse.mean())
    if "psnr" in chosen:
        out["psnr"] = float(psnr_from_mse(mse, floor=MSE_FLOOR).mean())
    for key in ("ssim", "lpips"):
        if key in chosen:
            out[key] = float(torch.cat(seen[key]).mean())


def _token_metrics(run: EvalRun, chosen: tuple[str, ...], seen: dict[str, list]) -> None:
    """Codebook usage and perplexity per level, bits per image, tokens and parameters."""
    model, out = run.model, run.result["metrics"]
    if "usage" in chosen:
        sizes = model.codebook_sizes
        out["usage"] = usage(torch.cat(seen["ids1"]), sizes[0])
        out["perplexity"] = perplexity(torch.cat(seen["ids1"]), sizes[0])
        if seen["ids2"]:
            out["usage2"] = usage(torch.cat(seen["ids2"]), sizes[1])
            out["perplexity2"] = perplexity(torch.cat(seen["ids2"]), sizes[1])
    s, s2 = model.tokens
    mask_bits = model.refined_mask_bits if run.result["mask_refine"] else model.mask_bits
    out["bits_per_image"] = float(model.id_bits + mask_bits)
    out["tokens"] = int(s + s2)
    out["parameters"] = int(model.num_parameters)
    run.result.update(tokens_primary=int(s), tokens_secondary=int(s2),
                      codebook_sizes=list(model.codebook_sizes),
                      mask_bits=float(mask_bits))
