"""The class-conditional experiment's own figures: a grid of samples, one row per class, and
how often the samples are of the class asked for (a small CNN classifier's verdict)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mvq.analysis.classkeep import ceilings, predict, train_classifier
from mvq.data import class_names, first_images
from mvq.errors import MvqError
from mvq.files.outputs import write_text
from mvq.inference.sample import Sampling, class_labels, sample_codes_and_images, sample_figure
from mvq.reproduce.records import Record, SampleRecord
from mvq.runtime.devices import pick_device
from mvq.saved.checkpoint import read_info
from mvq.saved.pretrained import load_prior, load_tokenizer
from mvq.values.decoding import Decoding


def _conditional(records: list[Record]) -> list[SampleRecord]:
    return [r for r in records if isinstance(r, SampleRecord) and r.class_conditional]


def class_grid(records: list[Record], path: Path, device: str = "auto", per_class: int = 10
               ) -> Path:
    """One row per class: ``per_class`` samples of the first class-conditional prior among the
    records (seed 0), decoded by its tokenizer; the row's label is its class name and id."""
    rec = next(iter(sorted(_conditional(records), key=lambda r: r.seed)), None)
    if rec is None:
        raise MvqError("class grid: no finished class-conditional prior among the runs")
    prior = Path(rec.checkpoint)
    prior_model = load_prior(prior)[0]
    classes = tuple(range(prior_model.num_classes))
    sampling = Sampling(n=per_class * len(classes), classes=classes)
    _, images = sample_codes_and_images(rec.tokenizer, prior, sampling,
                                        str(pick_device(device)))
    model = read_info(rec.tokenizer)["config"]
    title = (f"class-conditional samples: {per_class} per class, {rec.prior_kind or 'prior'}"
             f" on {model['model']['type']} codes, seed 0")
    figure = sample_figure(images, title, class_labels(prior_model, sampling.n, classes),
                           class_names(model.get("data", {}).get("name", "folder")), per_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    return figure.save(path)


def class_agreement(records: list[Record], path: Path, n: int, device: str = "auto",
                    data_root: str | None = None, classifier_steps: int = 600) -> dict:
    """How often a class-conditional prior's samples are of the class asked for.

    A small CNN (`mvq.analysis.classkeep`, seed 0, ``classifier_steps`` steps on 10000 training
    images) classifies ``n`` samples of each class-conditional prior among the records (every
    class in equal blocks, the record's seed); its accuracy on the first ``n`` test images and
    on their reconstructions through the tokenizer are the ceilings. Kept in ``path`` (JSON) and
    reused while the priors and n are the same. Returns {"classifier_accuracy_test",
    "classifier_accuracy_reconstructions", "priors": {checkpoint: accuracy}, "mean", "std"}.
    """
    cond = _conditional(records)
    key = {"n": n, "classifier_steps": classifier_steps,
           "priors": sorted({r.checkpoint for r in cond})}
    try:
        kept = json.loads(path.read_text())
        if all(kept.get(k) == v for k, v in key.items()):
            return kept
    except (OSError, ValueError):
        pass
    if not cond:
        raise MvqError("class agreement: no finished class-conditional prior among the runs")
    dev = str(pick_device(device))
    model, cfg, _ = load_tokenizer(cond[0].tokenizer, device=dev)
    model.eval()
    if data_root is not None:
        cfg.data.root = data_root
    net = train_classifier(*first_images(cfg, "train", 10_000), steps=classifier_steps)
    x, y = first_images(cfg, "test", n)
    out = {**key, **ceilings(model, net, x, y)[0], "accuracy": {}}
    for r in cond:
        prior = load_prior(r.checkpoint)[0]
        out["classes"] = prior.num_classes
        sampling = Sampling(n=n, decoding=Decoding(seed=r.seed), batch_size=100)
        _, images = sample_codes_and_images(r.tokenizer, r.checkpoint, sampling, dev)
        want = class_labels(prior, n)
        out["accuracy"][r.checkpoint] = float((predict(net, images) == want).float().mean())
    values = list(out["accuracy"].values())
    out["mean"] = statistics.fmean(values)
    out["std"] = statistics.stdev(values) if len(values) > 1 else None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(out, indent=2) + "\n")
    return out


def agreement_text(agree: dict) -> list[str]:
    """The report's paragraph on the class agreement."""
    spread = f" ± {agree['std']:.3f}" if agree.get("std") is not None else ""
    return [f"Class agreement (a small CNN classifier, {agree['n']} images each): the "
            f"class-conditional samples are of the class asked for "
            f"{agree['mean']:.3f}{spread} of the time ({len(agree['accuracy'])} priors; "
            f"chance {1 / agree['classes']:.3g} for {agree['classes']} classes); the "
            f"classifier's accuracy on the test images is "
            f"{agree['classifier_accuracy_test']:.3f}, on their reconstructions through "
            f"the tokenizer {agree['classifier_accuracy_reconstructions']:.3f}.", ""]
