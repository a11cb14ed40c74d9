"""`mvq reproduce`: the papers' experiments as resumable commands with a report folder.

    mvq reproduce fig5 --scale quick            # plan, estimate, train / resume, evaluate, report
    mvq reproduce fig5 --scale quick --dry-run  # the plan and the estimate only
    mvq reproduce fig5 --report-only            # the report from the runs finished so far
    mvq reproduce frontier --no-priors          # the tokenizers first, the priors on a later run

Runs go to ``OUT/runs/NAME`` (shared between experiments), reports to ``OUT/EXPERIMENT/``
(report.md, results.json, a PNG plot where the experiment has one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from mvq.errors import MvqError
from mvq.reproduce.benchmark import Benchmark
from mvq.reproduce.classgrid import class_agreement, class_grid
from mvq.reproduce.plan import EXPERIMENTS, SCALES, Plan, build_plan
from mvq.reproduce.report import write_report
from mvq.reproduce.runner import collect, execute

__all__ = ["EXPERIMENTS", "SCALES", "Benchmark", "Options", "Plan", "build_plan",
           "class_agreement", "class_grid", "reproduce", "without_priors"]


@dataclass(frozen=True)
class Options:
    """How to carry out an experiment: the data set's files (``data_root``), ``progress`` bars,
    the ``device``; ``dry_run``: the plan and estimate only; ``report_only``: the report from
    the runs finished so far, training nothing; ``keep``: the folder of kept runs
    (mvq.reproduce.kept), None for none; ``priors``: False trains and evaluates the tokenizers
    only (`without_priors`), leaving the priors to a later run of the same plan."""

    data_root: str | None = None
    progress: bool = True
    device: str = "auto"
    dry_run: bool = False
    report_only: bool = False
    keep: str | Path | None = None
    priors: bool = True


def reproduce(experiment: str, scale: str = "quick", seeds: int | None = None,
              out: str | Path = "runs/reproduce", dataset: str | None = None,
              options: Options | None = None) -> dict | None:
    """Carry out ``experiment`` at ``scale`` (``seeds`` per cell, ``dataset`` at paper scale)
    in ``out`` and write its report; returns the report's JSON (None for a dry run)."""
    opts = options or Options()
    data_root, device, dry_run = opts.data_root, opts.device, opts.dry_run
    out = _check_out(Path(out), create=not dry_run)
    kept = None if opts.keep is None else _check_out(Path(opts.keep), not dry_run,
                                                         "--keep")
    plan = build_plan(experiment, scale, seeds, dataset)
    if not opts.priors and isinstance(plan, Benchmark):
        raise MvqError(f"{experiment} is a benchmark: it trains no tokenizer and no prior, so "
                       "--no-priors has nothing to leave out; run it without --no-priors")
    folder = out / plan.experiment
    if isinstance(plan, Benchmark):  # no runs to train
        return plan.run(folder, dry_run)
    plan.seeds = seeds  # recorded in results.json: the report is built again the same way
    if not opts.priors:
        plan = without_priors(plan)
    if opts.report_only:
        records, missing = collect(plan, out, data_root, kept)
        if not records:
            where = out / "runs" if kept is None else f"{out / 'runs'} or {kept}"
            raise MvqError(f"no finished run of {experiment} in {where} yet: run "
                           f"`mvq reproduce {experiment} --scale {scale}` first")
    else:
        execute(plan, out, data_root, opts.progress, device, dry_run, kept)
        if dry_run:
            return None
        records, missing = collect(plan, out, data_root, kept)
    figures, extra = plan.kind.extras(plan, records, folder, device, data_root)
    result = write_report(plan, records, folder, missing, figures, extra)
    print((folder / "report.md").read_text())
    print(f"written: {folder / 'report.md'}, {folder / 'results.json'}", file=sys.stderr)
    return result


def without_priors(plan: Plan) -> Plan:
    """The plan with its tokenizer runs only: no prior trained, no sample evaluated (a long
    study's tokenizers first; the same command without ``--no-priors`` later trains the priors
    on the runs' weights in ``--out``, skipping what is done). MvqError for a plan that
    measures samples only (nothing would be left to report)."""
    if not plan.metrics:
        raise MvqError(f"{plan.experiment} measures its priors' samples only "
                       f"({', '.join(plan.sample_metrics)}): --no-priors would leave nothing "
                       "to report; run it without --no-priors")
    if not any(run.priors for run in plan.runs):
        return replace(plan, priors=False)
    note = ("Run with --no-priors: the tokenizers only, so the priors' sample metrics "
            f"({', '.join(plan.sample_metrics)}) are absent from this report.")
    return replace(plan, runs=[replace(run, priors=()) for run in plan.runs],
                   notes=[*plan.notes, note], priors=False)


def _check_out(out: Path, create: bool = True, option: str = "--out") -> Path:
    """The output folder must be a folder (new, or an earlier reproduce's) that can be written
    (``create``: made and probed now; a dry run only checks that no file stands in the way)."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise MvqError(f"{option} {out}: {folder} is a file, expected a folder; pass a new "
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
        raise MvqError(f"{option} {out} cannot be written ({err.strerror or err}); pass a folder "
                       "you can write") from None
    return out
