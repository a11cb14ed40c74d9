"""`mvq reproduce`: the papers' experiments as resumable commands with a report folder.

    mvq reproduce fig5 --scale quick            # plan, estimate, train / resume, evaluate, report
    mvq reproduce fig5 --scale quick --dry-run  # the plan and the estimate only
    mvq reproduce fig5 --report-only            # the report from the runs finished so far

Runs go to ``OUT/runs/NAME`` (shared between experiments), reports to ``OUT/EXPERIMENT/``
(report.md, results.json, a PNG plot where the experiment has one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mvq.errors import MvqError
from mvq.outputs import write_text
from mvq.reproduce.plan import EXPERIMENTS, SCALES, Plan, build_plan
from mvq.reproduce.report import write_report
from mvq.reproduce.runner import collect, execute

__all__ = ["EXPERIMENTS", "SCALES", "Plan", "build_plan", "reproduce"]


def reproduce(experiment: str, scale: str = "quick", seeds: int | None = None,
              out: str | Path = "runs/reproduce", data_root: str | None = None,
              dataset: str | None = None, progress: bool = True, device: str = "auto",
              dry_run: bool = False, report_only: bool = False) -> dict | None:
    """Carry out ``experiment`` at ``scale`` and write its report; returns the report's JSON
    (None for a dry run)."""
    out = _check_out(Path(out), create=not dry_run)
    if experiment == "table6":
        return _table6(scale, out / "table6", dry_run)
    plan = build_plan(experiment, scale, seeds, dataset)
    if report_only:
        records, missing = collect(plan, out, data_root)
        if not records:
            raise MvqError(f"no finished run of {experiment} in {out / 'runs'} yet: run "
                           f"`mvq reproduce {experiment} --scale {scale}` first")
    else:
        execute(plan, out, data_root, progress, device, dry_run)
        if dry_run:
            return None
        records, missing = collect(plan, out, data_root)
    folder = out / experiment
    figures, extra = (), {}
    if plan.figure == "class-grid" and records:
        figures = (class_grid(records, folder / "class_grid.png", device),)
        extra["class_agreement"] = class_agreement(records, folder / "class_agreement.json",
                                                   plan.eval_n, device, data_root)
    result = write_report(plan, records, folder, missing, figures, extra)
    print((folder / "report.md").read_text())
    print(f"written: {folder / 'report.md'}, {folder / 'results.json'}", file=sys.stderr)
    return result


def class_grid(records: list[dict], path: Path, device: str = "auto", per_class: int = 10
               ) -> Path:
    """One row per class: ``per_class`` samples of the first class-conditional prior among the
    records (seed 0), decoded by its tokenizer; the row's label is its class name and id."""
    from mvq.checkpoint import read_info
    from mvq.data import class_names
    from mvq.devices import pick_device
    from mvq.pretrained import load_prior
    from mvq.sample import Sampling, class_labels, sample_codes_and_images, sample_figure

    rec = next((r for r in sorted(records, key=lambda r: r["seed"])
                if r.get("class_conditional")), None)
    if rec is None:
        raise MvqError("class grid: no finished class-conditional prior among the runs")
    prior = Path(rec["checkpoint"])
    prior_model = load_prior(prior)[0]
    classes = tuple(range(prior_model.num_classes))
    sampling = Sampling(n=per_class * len(classes), classes=classes)
    _, images = sample_codes_and_images(rec["tokenizer"], prior, sampling,
                                        str(pick_device(device)))
    model = read_info(rec["tokenizer"])["config"]
    title = (f"class-conditional samples: {per_class} per class, {rec.get('prior_kind', 'prior')}"
             f" on {model['model']['type']} codes, seed 0")
    figure = sample_figure(images, title, class_labels(prior_model, sampling.n, classes),
                           class_names(model.get("data", {}).get("name", "folder")), per_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    return figure.save(path)


def class_agreement(records: list[dict], path: Path, n: int, device: str = "auto",
                    data_root: str | None = None, classifier_steps: int = 600) -> dict:
    """How often a class-conditional prior's samples are of the class asked for.

    A small CNN (`mvq.analysis.classkeep`, seed 0, ``classifier_steps`` steps on 10000 training
    images) classifies ``n`` samples of each class-conditional prior among the records (every
    class in equal blocks, the record's seed); its accuracy on the first ``n`` test images and
    on their reconstructions through the tokenizer are the ceilings. Kept in ``path`` (JSON) and
    reused while the priors and n are the same. Returns {"classifier_accuracy_test",
    "classifier_accuracy_reconstructions", "priors": {checkpoint: accuracy}, "mean", "std"}.
    """
    import json
    import statistics

    from mvq.analysis.classkeep import ceilings, predict, split_images, train_classifier
    from mvq.decoding import Decoding
    from mvq.devices import pick_device
    from mvq.pretrained import load_prior, load_tokenizer
    from mvq.sample import Sampling, class_labels, sample_codes_and_images

    cond = [r for r in records if r.get("class_conditional")]
    key = {"n": n, "classifier_steps": classifier_steps,
           "priors": sorted({r["checkpoint"] for r in cond})}
    try:
        kept = json.loads(path.read_text())
        if all(kept.get(k) == v for k, v in key.items()):
            return kept
    except (OSError, ValueError):
        pass
    if not cond:
        raise MvqError("class agreement: no finished class-conditional prior among the runs")
    dev = str(pick_device(device))
    model, cfg, _ = load_tokenizer(cond[0]["tokenizer"], device=dev)
    model.eval()
    if data_root is not None:
        cfg.data.root = data_root
    net = train_classifier(*split_images(cfg, "train", 10_000), steps=classifier_steps)
    x, y = split_images(cfg, "test", n)
    out = {**key, **ceilings(model, net, x, y)[0], "accuracy": {}}
    for r in cond:
        prior = load_prior(r["checkpoint"])[0]
        out["classes"] = prior.num_classes
        sampling = Sampling(n=n, decoding=Decoding(seed=r["seed"]), batch_size=100)
        _, images = sample_codes_and_images(r["tokenizer"], r["checkpoint"], sampling, dev)
        want = class_labels(prior, n)
        out["accuracy"][r["checkpoint"]] = float((predict(net, images) == want).float().mean())
    values = list(out["accuracy"].values())
    out["mean"] = statistics.fmean(values)
    out["std"] = statistics.stdev(values) if len(values) > 1 else None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(out, indent=2) + "\n")
    return out


def _check_out(out: Path, create: bool = True) -> Path:
    """The output folder must be a folder (new, or an earlier reproduce's) that can be written
    (``create``: made and probed now; a dry run only checks that no file stands in the way)."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise MvqError(f"--out {out}: {folder} is a file, expected a folder; pass a new "
                               "folder or the one an earlier `mvq reproduce` used")
            break
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MvqError(f"--out {out} cannot be written ({err.strerror or err}); pass a folder "
                       "you can write") from None
    return out


def _table6(scale: str, folder: Path, dry_run: bool) -> dict | None:
    """MVQ Table 6: the token sampling benchmark (mvq.bench.sampling), its output kept."""
    args = [sys.executable, "-m", "mvq.bench.sampling", "--json", str(folder / "results.json")]
    args += ["--quick"] if scale == "quick" else ["--threads", "1"]
    print(f"mvq reproduce table6 --scale {scale}: {' '.join(args[1:])}\n"
          f"estimated {'1 min' if scale == 'quick' else '15-25 min'} on a 2-core CPU",
          file=sys.stderr)
    if dry_run:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise MvqError(f"the sampling benchmark failed: {done.stderr.strip().splitlines()[-1:]}")
    text = (f"# MVQ paper Table 6: token sampling times\n\n`python {' '.join(args[1:])}`\n\n"
            f"```\n{done.stdout.rstrip()}\n```\n")
    write_text(folder / "report.md", text)
    print(text)
    return {"experiment": "table6", "scale": scale, "output": done.stdout}
