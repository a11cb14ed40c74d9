"""Second-stage evaluation: a prior's samples (FID*, PRD) and its NLL on real tokens (MVQ paper
Table 5), on the same fixed set of real images as the reconstruction evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq.errors import expect_value
from mvq.evaluation.common import (
    EvalRun,
    EvalSettings,
    close_run,
    inception_scores,
    open_run,
    real_features,
)
from mvq.evaluation.metrics_table import SAMPLE_METRICS, check_metrics, needs_features
from mvq.inference.sample import check_same_tokenizer, class_labels, sample_batches
from mvq.metrics import extract_features
from mvq.priors.base import validate_prior
from mvq.saved.pretrained import load_prior
from mvq.values.codes import Codes
from mvq.values.decoding import Decoding


def evaluate_samples(checkpoint: str | Path, prior: str | Path,
                     settings: EvalSettings | None = None,
                     metrics: tuple[str, ...] | str = SAMPLE_METRICS,
                     decoding: Decoding | None = None, force: bool = False) -> dict:
    """Second-stage metrics of a prior on ``checkpoint``'s tokens (MVQ paper Table 5).

    fid: FID* between ``settings.n`` samples (prior -> codes -> decoder, drawn with
    ``decoding``, its seed included; MVQ masks random) and the first n real images of the split
    (the same cached real statistics as rFID); prd: F_8 (recall) / F_1/8 (precision) of the
    samples against those real images; nll: the prior's mean NLL on the tokens of those real
    images, per stage it reports (GPT and PixelCNN: primary and secondary; MaskGIT: 'masked',
    its masked-token NLL at a fixed mask, not a likelihood), in nats and bits per token. A
    class-conditional prior samples every class in equal blocks and scores the real tokens
    given their labels. ``force``: sample through other weights of the prior's tokenizer
    architecture. None: `EvalSettings`' / `Decoding`'s defaults. Returns a JSON-serialisable
    dict like `evaluate_checkpoint`.
    """
    settings = expect_value(settings, EvalSettings, "settings")
    decoding = expect_value(decoding, Decoding, "decoding")
    chosen = check_metrics(metrics, SAMPLE_METRICS, "sample metric")
    inception = needs_features(chosen)
    run = open_run(checkpoint, settings, chosen, inception, "samples")
    prior_model, prior_info = load_prior(prior, device=str(run.dev))
    check_same_tokenizer(prior_info, run.result["config_hash"], prior, run.model, force)
    options = decoding.for_prior(prior_model)  # before any work
    run.result.update(kind="samples", prior=str(Path(prior).resolve()),
                      prior_step=prior_info.get("step"), prior_type=prior_model.kind,
                      sample_seed=decoding.seed, temperature=decoding.temperature,
                      top_k=decoding.top_k, decoding=options,
                      num_classes=prior_model.num_classes,
                      prior_parameters=sum(p.numel() for p in prior_model.parameters()),
                      sample_batch_size=settings.batch_size)
    with torch.no_grad():
        if inception:
            _sample_scores(run, prior_model, chosen, decoding)
        if "nll" in chosen:
            _nll(run, prior_model)
    return close_run(run)


def _sample_scores(run: EvalRun, prior, chosen: tuple[str, ...], decoding: Decoding) -> None:
    """FID* / PRD of n samples against the real images, and the seconds per sample."""
    s, out = run.settings, run.result["metrics"]
    extractor, real_stats = real_features(run, need_features="prd" in chosen)
    bar = tqdm(total=run.n_used, desc="sample", unit="img", file=sys.stderr,
               disable=not s.progress, dynamic_ncols=True)
    feats = []
    labels = class_labels(prior, run.n_used)
    clock: dict[str, float] = {}
    for _, images in sample_batches(run.model, prior, run.n_used, s.batch_size, decoding,
                                    labels, clock):
        feats.append(extract_features(images, s.batch_size, run.dev, False, extractor))
        bar.update(len(images))
    bar.close()
    # wall seconds per sample, batches of batch_size: the prior's token sampling, and with the
    # tokenizer's decoder (Inception features not counted)
    out["tokens_s_per_img"] = clock["tokens"] / run.n_used
    out["sample_s_per_img"] = (clock["tokens"] + clock["decode"]) / run.n_used
    inception_scores(run, real_stats, torch.cat(feats),
                     "fid_samples" if "fid" in chosen else None, "prd" in chosen, "samples")


def _nll(run: EvalRun, prior) -> None:
    """The prior's mean NLL per stage on the real images' tokens (given their classes)."""
    s, out = run.settings, run.result["metrics"]
    codes = Codes.cat([run.model.encode(x.to(run.dev)) for x in tqdm(
        run.batches, desc="nll", disable=not s.progress, file=sys.stderr, dynamic_ncols=True)])
    real_labels = None
    if prior.num_classes:  # the real images' classes
        ds = run.batches.dataset
        real_labels = torch.tensor([int(ds[i][1]) for i in range(run.n_used)]).to(run.dev)
    val = validate_prior(prior, codes, s.batch_size, real_labels)
    for stage in prior.stages:
        if f"val_{stage}_nll" in val:
            out[f"nll_{stage}"] = val[f"val_{stage}_nll"]
            out[f"nll_{stage}_bits"] = val[f"val_{stage}_bits"]
