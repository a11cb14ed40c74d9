"""Reconstruction evaluation of a tokenizer checkpoint on a fixed, reproducible set of images.

The images are the first ``n`` of a split of the checkpoint's data set (shapes: seed 0), at the
model's image size and channels. Each batch goes encode -> decode (clamped to [0, 1]); metrics:
MSE and PSNR (means of per-image values), SSIM, LPIPS (AlexNet, v0.1), rFID and PRD (F_8, F_1/8)
on pytorch-fid Inception features of the originals vs the reconstructions, codebook usage and
perplexity, bits per image and tokens. The result records everything that decides whether two
numbers are comparable (data, n, extractor and backbone hashes, resize conventions, version).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from mvq._version import __version__
from mvq.codes import Codes
from mvq.config import model_hash
from mvq.data import build_dataset, canonical_name
from mvq.devices import pick_device
from mvq.errors import MvqError
from mvq.metrics import (
    FeatureStats,
    cached_feature_stats,
    extract_features,
    get_inception,
    lpips_backbone_path,
    lpips_distance,
    perplexity,
    prd_f_scores,
    ssim,
    usage,
)
from mvq.metrics.fid import default_stats_dir, frechet_distance, mean_cov, stats_cache_path
from mvq.metrics.perceptual import lpips_resize
from mvq.metrics.weights import weights_sha256
from mvq.outputs import write_text
from mvq.pretrained import load_tokenizer

METRICS = ("mse", "psnr", "ssim", "lpips", "rfid", "prd", "usage")
FEATURE_EXTRACTOR = "pytorch-fid FIDInceptionV3 pool3 2048-d"
INCEPTION_RESIZE = "bilinear to 299 (pytorch-fid convention), gray repeated to RGB"
LPIPS_NET = "alex"
PRD_CLUSTERS = 20
DATA_SEED = 0  # only the procedural shapes set uses it
MSE_FLOOR = 1e-10  # PSNR of an exact reconstruction is capped at 100 dB (as in training)

_LABELS = {
    "mse": ("MSE", "{:.6f}"), "psnr": ("PSNR (dB)", "{:.2f}"), "ssim": ("SSIM", "{:.4f}"),
    "lpips": ("LPIPS (alex)", "{:.4f}"), "rfid": ("rFID", "{:.3f}"),
    "prd_f8": ("PRD F_8 (recall)", "{:.4f}"), "prd_f1_8": ("PRD F_1/8 (precision)", "{:.4f}"),
    "usage": ("codebook usage", "{:.3f}"), "perplexity": ("perplexity", "{:.2f}"),
    "usage2": ("codebook usage (secondary)", "{:.3f}"),
    "perplexity2": ("perplexity (secondary)", "{:.2f}"),
    "bits_per_image": ("bits / image", "{:.1f}"), "tokens": ("tokens (S + S')", "{}"),
    "parameters": ("parameters", "{:,}"),
    "fid_samples": ("FID* (samples)", "{:.3f}"),
    "nll_primary": ("NLL primary (nats/token)", "{:.4f}"),
    "nll_primary_bits": ("NLL primary (bits/token)", "{:.4f}"),
    "nll_secondary": ("NLL secondary (nats/token)", "{:.4f}"),
    "nll_secondary_bits": ("NLL secondary (bits/token)", "{:.4f}"),
    "nll_masked": ("NLL masked tokens, MaskGIT at a fixed 50% mask (nats/token)", "{:.4f}"),
    "nll_masked_bits": ("NLL masked tokens, MaskGIT at a fixed 50% mask (bits/token)",
                        "{:.4f}"),
    "tokens_s_per_img": ("token sampling, s / image", "{:.5f}"),
    "sample_s_per_img": ("token sampling + decoding, s / image", "{:.5f}"),
}


def _check_metrics(metrics, allowed: tuple[str, ...] = METRICS, what: str = "metric"
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


class _Batches:
    """The first n images of a data set as (B, C, H, W) batches; sized, re-iterable."""

    def __init__(self, dataset, n: int, batch_size: int) -> None:
        self.dataset, self.n, self.batch_size = dataset, n, batch_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            end = min(start + self.batch_size, self.n)
            yield torch.stack([self.dataset[i][0] for i in range(start, end)])


def _dataset_key(name: str, root: str | None, channels: int) -> str:
    """Cache name of the image set: the data set plus what changes its pixels."""
    key = f"{name}-{channels}ch"
    if name == "shapes":
        key += f"-seed{DATA_SEED}"
    if name == "folder" and root:
        key += "-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return key


def _check_inception_n(n: int, what: str) -> None:
    if n < 2:
        raise MvqError(
            f"rFID/PRD: FID needs at least 2 images, {what} {n}; pass n >= 2 (recommend "
            "n >= 1000 for comparable numbers), or leave rfid and prd out of the metrics"
        )


@dataclass
class _Run:
    """What both evaluations share: the tokenizer, its first n_used images of a split, the
    result dict that records how the numbers were made."""

    model: torch.nn.Module
    cfg: object
    dev: torch.device
    name: str
    root: str | None
    split: str
    n_used: int
    batch_size: int
    batches: _Batches
    progress: bool
    result: dict


def _open_run(checkpoint, split: str, n: int, batch_size: int, device: str, data_root,
              chosen: tuple[str, ...], inception: bool, against: str, progress: bool) -> _Run:
    """Check the arguments, load the tokenizer and the first n images of ``split``; raise
    MvqError for anything the user can fix. ``against``: what the real images are compared
    with (for messages and the PRD note)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MvqError(f"n must be a positive number of images, got {n!r}; pass e.g. n=1000")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MvqError(f"batch_size must be a positive integer, got {batch_size!r}")
    if inception:
        _check_inception_n(n, "asked for")
    dev = pick_device(device)
    model, cfg, info = load_tokenizer(checkpoint, device=str(dev))
    model.eval()
    name = canonical_name(cfg.data.name)
    root = data_root if data_root is not None else cfg.data.root
    size, channels = cfg.model.image_size, cfg.model.channels
    dataset = build_dataset(name, root=root, split=split, size=size, channels=channels,
                            limit=n, seed=DATA_SEED)
    n_used = min(n, len(dataset))
    if inception:
        _check_inception_n(n_used, f"the {name} {split} split has")
    if "prd" in chosen and 2 * n_used < PRD_CLUSTERS:
        raise MvqError(
            f"PRD clusters reals + {against} into {PRD_CLUSTERS} groups: it needs at least "
            f"{PRD_CLUSTERS // 2} images, found {n_used}; pass a larger n or leave prd out"
        )
    result: dict = {
        "checkpoint": str(Path(checkpoint).resolve()), "model_type": info.get("model_type"),
        "config_hash": model_hash(cfg.model), "step": info.get("step"), "dataset": name,
        "data_root": None if root is None else str(root),
        "data_seed": DATA_SEED if name == "shapes" else None, "split": split, "n": n_used,
        "n_requested": n, "image_size": size, "channels": channels,
        "metrics_requested": list(chosen),
        "feature_extractor": None, "feature_extractor_sha256": None, "inception_resize": None,
        "fid_stats_cache": None, "fid_stats_cache_hit": None, "prd": None,
        "device": str(dev), "batch_size": batch_size, "mvq_version": __version__,
        "torch_version": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": None,
        "notes": [], "metrics": {},
    }
    return _Run(model, cfg, dev, name, root, split, n_used, batch_size,
                _Batches(dataset, n_used, batch_size), progress, result)


def _real_features(run: _Run, cache_dir, need_features: bool):
    """(extractor, FeatureStats of the run's real images): from the stats cache when it has
    them, else extracted (and cached). Records the extractor, resize and cache in the result;
    adds the small-n note."""
    extractor = get_inception(device=run.dev)
    sha = extractor.weights_sha256
    size, channels = run.cfg.model.image_size, run.cfg.model.channels
    key = _dataset_key(run.name, run.root, channels)
    cache = Path(cache_dir) if cache_dir is not None else default_stats_dir()
    path = stats_cache_path(cache, key, run.split, size, run.n_used, sha)
    run.result.update(feature_extractor=FEATURE_EXTRACTOR, feature_extractor_sha256=sha,
                      inception_resize=INCEPTION_RESIZE, fid_stats_cache=str(path),
                      fid_stats_cache_hit=path.is_file())
    real_stats = cached_feature_stats(
        key, run.split, size, run.n_used, lambda: run.batches, cache_dir=cache,
        extractor=extractor, batch_size=run.batch_size, device=run.dev, progress=run.progress)
    if need_features and (real_stats.features is None
                          or len(real_stats.features) != run.n_used):
        feats = extract_features(run.batches, run.batch_size, run.dev, run.progress, extractor)
        real_stats = FeatureStats.from_features(feats)
    if run.n_used < 1000:
        run.result["notes"].append(f"FID/PRD from {run.n_used} images: not comparable with "
                                   "numbers from other n (use n >= 1000)")
    return extractor, real_stats


def _inception_scores(run: _Run, real_stats: FeatureStats, fake, fid_key: str | None,
                      prd: bool, against: str) -> None:
    """FID (under ``fid_key``) and PRD F_8 / F_1/8 of the real images vs ``fake`` features."""
    out = run.result["metrics"]
    if fid_key:
        out[fid_key] = frechet_distance(real_stats.mu, real_stats.sigma, *mean_cov(fake))
    if prd:
        out["prd_f8"], out["prd_f1_8"] = prd_f_scores(real_stats.features, fake,
                                                      num_clusters=PRD_CLUSTERS)
        run.result["prd"] = (f"Sajjadi et al. 2018: {PRD_CLUSTERS} k-means clusters, 10 runs, "
                             f"1001 angles, reals vs {against}")


def _close_run(run: _Run, n: int, t0: float) -> dict:
    if run.n_used < n:
        run.result["notes"].append(f"asked for {n} images, the {run.name} {run.split} split "
                                   f"has {run.n_used}")
    run.result["seconds"] = round(time.time() - t0, 3)
    return run.result


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    n: int = 1000,
    batch_size: int = 100,
    device: str = "auto",
    metrics: tuple[str, ...] = METRICS,
    progress: bool = True,
    data_root: str | None = None,
    cache_dir: str | None = None,
    refine: bool = False,
) -> dict:
    """Evaluate the reconstructions of ``checkpoint`` on the first ``n`` images of ``split``.

    ``refine``: MVQ models only, encode with inference-time mask refinement
    (:mod:`mvq.quantize.refine`); bits_per_image then counts D' mask bits per secondary token.

    Returns a JSON-serialisable dict: the metric values under ``"metrics"`` and, top level, what
    makes them comparable (checkpoint, model, step, data set, split, n, sizes, extractor hashes,
    resize conventions, mvq version, seconds). Raises MvqError for anything the user can fix.
    """
    t0 = time.time()
    chosen = _check_metrics(metrics)
    inception = "rfid" in chosen or "prd" in chosen
    run = _open_run(checkpoint, split, n, batch_size, device, data_root, chosen, inception,
                    "reconstructions", progress)
    model, dev, result = run.model, run.dev, run.result
    if refine:
        if not hasattr(model, "refine"):
            raise MvqError(f"mask refinement needs an MVQ checkpoint (mvqvae or mvqgan); "
                           f"{checkpoint} holds a {result['model_type']}: drop --refine")
        model.refine = True
    result.update(lpips_net=None, lpips_backbone_sha256=None, lpips_resize=None,
                  mask_refine=refine, encode_seconds=0.0)
    extractor, real_stats = None, None
    if inception:
        extractor, real_stats = _real_features(run, cache_dir, need_features="prd" in chosen)
    if "lpips" in chosen:
        result.update(lpips_net=f"{LPIPS_NET} (lpips v0.1 heads)",
                      lpips_backbone_sha256=weights_sha256(lpips_backbone_path(LPIPS_NET)))

    per_image: dict[str, list[torch.Tensor]] = {"mse": [], "ssim": [], "lpips": []}
    rec_feats, ids1, ids2 = [], [], []
    from tqdm.auto import tqdm

    bar = tqdm(total=run.n_used, desc="evaluate", unit="img", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with torch.no_grad():
        for x in run.batches:
            x = x.to(dev)
            t_enc = time.perf_counter()
            codes = model.encode(x)
            result["encode_seconds"] += time.perf_counter() - t_enc
            rec = model.decode(codes).clamp(0, 1)
            per_image["mse"].append((rec.double() - x.double()).pow(2).flatten(1).mean(1).cpu())
            if "ssim" in chosen:
                per_image["ssim"].append(ssim(x, rec).double().cpu())
            if "lpips" in chosen:
                (xl, note), (rl, _) = lpips_resize(x), lpips_resize(rec)
                result["lpips_resize"] = note
                lp = lpips_distance(xl, rl, LPIPS_NET, batch_size)
                per_image["lpips"].append(lp.double().cpu())
            if inception:
                rec_feats.append(extract_features(rec, batch_size, dev, False, extractor))
            ids1.append(codes.primary.flatten().cpu())
            if codes.secondary is not None:
                ids2.append(codes.secondary.flatten().cpu())
            bar.update(len(x))
    bar.close()

    out = result["metrics"]
    mse = torch.cat(per_image["mse"])
    if "mse" in chosen:
        out["mse"] = float(mse.mean())
    if "psnr" in chosen:
        out["psnr"] = float((10 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))).mean())
    for key in ("ssim", "lpips"):
        if key in chosen:
            out[key] = float(torch.cat(per_image[key]).mean())
    if inception:
        _inception_scores(run, real_stats, torch.cat(rec_feats),
                          "rfid" if "rfid" in chosen else None, "prd" in chosen,
                          "reconstructions")
    if "usage" in chosen:
        sizes = model.codebook_sizes
        out["usage"] = usage(torch.cat(ids1), sizes[0])
        out["perplexity"] = perplexity(torch.cat(ids1), sizes[0])
        if ids2:
            out["usage2"] = usage(torch.cat(ids2), sizes[1])
            out["perplexity2"] = perplexity(torch.cat(ids2), sizes[1])
    s, s2 = model.tokens
    out["bits_per_image"] = float(model.bits_per_image)
    out["tokens"] = int(s + s2)
    out["parameters"] = int(model.num_parameters)
    result.update(tokens_primary=int(s), tokens_secondary=int(s2),
                  codebook_sizes=list(model.codebook_sizes), mask_bits=float(model.mask_bits))
    return _close_run(run, n, t0)


SAMPLE_METRICS = ("fid", "prd", "nll")


def evaluate_samples(
    checkpoint: str | Path,
    prior: str | Path,
    split: str = "test",
    n: int = 1000,
    batch_size: int = 100,
    device: str = "auto",
    metrics: tuple[str, ...] = SAMPLE_METRICS,
    progress: bool = True,
    data_root: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    force: bool = False,
    top_p: float | None = None,
    steps: int | None = None,
    choice_temperature: float | None = None,
) -> dict:
    """Second-stage metrics of a prior on ``checkpoint``'s tokens (MVQ paper Table 5).

    fid: FID* between ``n`` samples (prior -> codes -> decoder, seeded, MVQ masks random) and
    the first ``n`` real images of ``split`` (the same cached real statistics as rFID);
    prd: F_8 (recall) / F_1/8 (precision) of the samples against those real images;
    nll: the prior's mean NLL on the tokens of those real images, per stage it reports (GPT
    and PixelCNN: primary and secondary; MaskGIT: 'masked', its masked-token NLL at a fixed
    mask, not a likelihood), in nats and bits per token. A class-conditional prior samples every
    class in equal blocks and scores the real tokens given their labels. ``steps`` and
    ``choice_temperature`` are MaskGIT's (refused by the other priors). Returns a
    JSON-serialisable dict like `evaluate_checkpoint`.
    """
    from mvq.pretrained import load_prior
    from mvq.priors.base import validate_prior
    from mvq.sample import (
        check_same_tokenizer,
        check_sampling,
        class_labels,
        decoding_options,
        sample_batches,
    )

    t0 = time.time()
    chosen = _check_metrics(metrics, SAMPLE_METRICS, "sample metric")
    check_sampling(temperature, top_k, top_p)
    inception = "fid" in chosen or "prd" in chosen
    run = _open_run(checkpoint, split, n, batch_size, device, data_root, chosen, inception,
                    "samples", progress)
    model, dev = run.model, run.dev
    prior_model, prior_info = load_prior(prior, device=str(dev))
    check_same_tokenizer(prior_info, run.result["config_hash"], prior, model, force)
    decoding = decoding_options(prior_model, temperature, top_k, top_p, steps,
                                choice_temperature)
    run.result.update(kind="samples", prior=str(Path(prior).resolve()),
                      prior_step=prior_info.get("step"), prior_type=prior_model.kind,
                      sample_seed=seed, temperature=temperature, top_k=top_k,
                      decoding=decoding, num_classes=prior_model.num_classes,
                      prior_parameters=sum(p.numel() for p in prior_model.parameters()),
                      sample_batch_size=batch_size)
    out = run.result["metrics"]
    from tqdm.auto import tqdm

    with torch.no_grad():
        if inception:
            extractor, real_stats = _real_features(run, cache_dir, need_features="prd" in chosen)
            gen = torch.Generator(device=dev).manual_seed(seed)
            bar = tqdm(total=run.n_used, desc="sample", unit="img", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
            feats = []
            labels = class_labels(prior_model, run.n_used)
            clock: dict[str, float] = {}
            for _, images in sample_batches(model, prior_model, run.n_used, batch_size, gen,
                                            labels, clock, **decoding):
                feats.append(extract_features(images, batch_size, dev, False, extractor))
                bar.update(len(images))
            bar.close()
            # wall seconds per sample, batches of batch_size: the prior's token sampling, and
            # with the tokenizer's decoder (Inception features not counted)
            out["tokens_s_per_img"] = clock["tokens"] / run.n_used
            out["sample_s_per_img"] = (clock["tokens"] + clock["decode"]) / run.n_used
            _inception_scores(run, real_stats, torch.cat(feats),
                              "fid_samples" if "fid" in chosen else None, "prd" in chosen,
                              "samples")
        if "nll" in chosen:
            codes = Codes.cat([model.encode(x.to(dev)) for x in tqdm(
                run.batches, desc="nll", disable=not progress, file=sys.stderr,
                dynamic_ncols=True)])
            real_labels = None
            if prior_model.num_classes:  # the real images' classes
                ds = run.batches.dataset
                real_labels = torch.tensor([int(ds[i][1]) for i in range(run.n_used)]).to(dev)
            val = validate_prior(prior_model, codes, batch_size, real_labels)
            for stage in prior_model.stages:
                if f"val_{stage}_nll" in val:
                    out[f"nll_{stage}"] = val[f"val_{stage}_nll"]
                    out[f"nll_{stage}_bits"] = val[f"val_{stage}_bits"]
    return _close_run(run, n, t0)


def _cell(key: str, value) -> str:
    """A metric value as its label's format shows it; n/a when missing, nan/inf as is."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return _LABELS.get(key, (key, "{}"))[1].format(value)


def format_table(result: dict) -> str:
    """Markdown: a header line (model, checkpoint, N, split), then one row per metric."""
    r = result.get
    head = (f"**{r('model_type')}** `{r('checkpoint')}` (step {r('step')}) - N={r('n')} "
            f"{r('split')} images of {r('dataset')} ({r('image_size')} px, {r('channels')} ch)")
    if r("kind") == "samples":
        head += (f"; samples of {r('prior_type') or 'gpt'} prior `{r('prior')}` (step "
                 f"{r('prior_step')}), seed {r('sample_seed')}, decoding "
                 f"{r('decoding') or {'temperature': r('temperature'), 'top_k': r('top_k')}}")
    rows = [head, "", "| metric | value |", "| --- | --- |"]
    for key, value in (r("metrics") or {}).items():
        rows.append(f"| {_LABELS.get(key, (key, ''))[0]} | {_cell(key, value)} |")
    foot = []
    if r("feature_extractor"):
        foot.append(f"FID/PRD features: {r('feature_extractor')} (sha256 "
                    f"{str(r('feature_extractor_sha256'))[:12]}), {r('inception_resize')}")
    if r("lpips_net"):
        foot.append(f"LPIPS: {r('lpips_net')}, backbone sha256 "
                    f"{str(r('lpips_backbone_sha256'))[:12]}, resize {r('lpips_resize')}")
    foot += list(r("notes") or [])
    foot.append(f"mvq {r('mvq_version')}, {r('seconds')} s")
    return "\n".join(rows + [""] + [f"_{f}_  " for f in foot])


def load_result(path: str | Path) -> dict:
    """A result JSON written by `mvq evaluate`; MvqError if it is not one."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise MvqError(f"{path} not found: pass JSON files written by `mvq evaluate`") from None
    except (OSError, json.JSONDecodeError) as err:
        raise MvqError(f"{path} is not a readable JSON file ({err})") from None
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise MvqError(f"{path} has no 'metrics': expected a JSON written by `mvq evaluate`")
    return result


def format_comparison(results: list[dict], names: list[str] | None = None) -> str:
    """One markdown table, a row per result and a column per metric any of them has.

    Rows are named by ``names`` or by each run's folder (the checkpoint's parent). A footer
    warns when the results differ in data set, split or N (then they are not comparable).
    """
    if not results:
        raise MvqError("nothing to compare: pass at least one result")
    keys = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    names = names or [Path(r.get("checkpoint") or "?").parent.name for r in results]
    head = "| run | " + " | ".join(_LABELS.get(k, (k, ""))[0] for k in keys) + " |"
    rows = [head, "|" + " --- |" * (len(keys) + 1)]
    for name, r in zip(names, results):
        cells = [_cell(k, r["metrics"].get(k)) for k in keys]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    setups = {(r.get("dataset"), r.get("split"), r.get("n"), r.get("kind", "reconstruction"))
              for r in results}
    if len(setups) > 1:
        rows += ["", "_not comparable: the results differ in (data set, split, N, kind): "
                 + "; ".join(str(s) for s in sorted(setups, key=str)) + "_"]
    else:
        (data, split, n, kind), = setups
        rows += ["", f"_{kind}, N={n} {split} images of {data}_"]
    return "\n".join(rows)


def write_reports(result: dict, json_path: Path | None, md_path: Path | None) -> None:
    """Write the result as JSON and/or the markdown table (parent folders are created)."""
    for path, text in ((json_path, lambda: json.dumps(result, indent=2) + "\n"),
                       (md_path, lambda: format_table(result) + "\n")):
        if path is None:
            continue
        write_text(path, text())
