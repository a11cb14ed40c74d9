"""Carry out a plan: train what is missing, resume what was interrupted, skip what is done,
evaluate every run on the same images, then write the report.

Each run lives in ``OUT/runs/NAME`` (shared by the experiments that need it); its evaluation in
``OUT/runs/NAME/eval.json``; each prior of a run (`PriorSpec`) in ``priors/FOLDER/``, with one
``samples_DECODING.json`` per decoding (table5: one GPT, one decoding). A finished run is one
whose checkpoint reached the planned steps; an evaluation is reused only if it was made with the
same N and metrics on that checkpoint's step. A training-length plan (kinds.TrainingLength) also
evaluates each run at earlier steps, into ``eval_<STEP>steps.json``: the run is trained to each
such step in turn, evaluated there, and resumed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

import mvq.train
from mvq.configuration.config import config_to_dict, model_type
from mvq.errors import MvqError
from mvq.evaluation import EvalSettings, evaluate_checkpoint, evaluate_samples
from mvq.files.outputs import try_lock, write_text
from mvq.inference.tokens import encode_dataset
from mvq.reproduce.kept import check_kept, keep, kept_folder
from mvq.reproduce.kinds import Plan
from mvq.reproduce.records import Record
from mvq.reproduce.spec import Changes, PriorSpec, Run, RunState, eval_path
from mvq.reproduce.timing import (
    MEASURED,
    MODEL,
    Estimate,
    Measured,
    checkpoint_threads,
    cpu_clock,
    latest_checkpoint,
    log_estimate,
    model_inception_seconds,
    model_prior_step_seconds,
    model_step_seconds,
    part,
    prior_variant,
    prior_work,
    read_json,
    recorded_timed_steps,
    tokenizer_key,
)
from mvq.train.engine import LINES
from mvq.train.prior import PriorTraining, train_prior


def _eval_matches(path: Path, plan: Plan, step: int) -> bool:
    """The tokenizer's eval.json at ``path`` was made with the plan's N and metrics at ``step``."""
    return _made_with(path, plan.eval_n, step, plan.metrics)


def _to_evaluate(plan: Plan, folder: Path, steps: int) -> list[int]:
    """The steps of the plan's evaluations (``kind.stops``: its last step, and the earlier
    lengths of a training-length plan) that the run in ``folder`` has no matching one of."""
    if not plan.metrics:
        return []
    return [s for s in plan.kind.stops(steps)
            if not _eval_matches(eval_path(folder, s, steps), plan, s)]


def _sampled(path: Path, plan: Plan, step: int) -> bool:
    """The samples JSON at ``path`` was made with the plan's N and sample metrics, on the
    tokenizer at ``step``."""
    return _made_with(path, plan.eval_n, step, plan.sample_metrics)


def _made_with(path: Path, n: int, step: int, metrics: tuple[str, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        got = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return got.get("n") == n and got.get("step") == step and \
        got.get("planned_metrics") == list(metrics)


def inspect(plan: Plan, out: Path, data_root: str | None, kept: Path | None = None
            ) -> list[RunState]:
    """Where each run of the plan stands on disk (in ``out``, else as kept in ``kept``)."""
    return [state(plan, run, out / "runs" / run.name, data_root, kept) for run in plan.runs]


def state(plan: Plan, run: Run, out_dir: Path, data_root: str | None,
          kept: Path | None = None) -> RunState:
    """Where one run stands on disk; MvqError if its folder holds a different model. A run
    that is not done in ``out_dir`` but done as kept in ``kept`` (mvq.reproduce.kept) is that
    kept state."""
    cfg = run.config(data_root, out_dir)
    ckpt, step = latest_checkpoint(out_dir / "checkpoint")
    if step:
        saved = json.loads((ckpt / "config.json").read_text()).get("config", {}).get("model")
        if saved is not None and saved != config_to_dict(cfg)["model"]:
            raise MvqError(f"{out_dir} holds a run with other model settings than the plan "
                           f"for {run.name}: move it away or pick another --out")
    steps = cfg.train.steps
    st = RunState(run, out_dir, step, steps, not _to_evaluate(plan, out_dir, steps), False)
    st.sampled = all(_sampled(s.path, plan, steps) for s in st.samples)
    if kept is None or st.status == "done":
        return st
    folder = kept_folder(kept, run)
    if not folder.is_dir():
        return st
    step, why = check_kept(folder, run, cfg, plan.kind.stops(steps)[:-1])
    if why:
        st.note = why
        return st
    got = RunState(run, folder, step, steps, not _to_evaluate(plan, folder, steps), False,
                   kept=True)
    got.sampled = all(_sampled(s.path, plan, steps) for s in got.samples)
    if got.status != "done":  # no weights kept: what is missing is trained again
        st.note = f"kept in {folder} as '{got.status}', without weights: not counted"
        st.kept_copy = got  # its rows may still be shown (_row_state)
        return st
    return got


_NLL_SECONDS = 20.0  # the model's sample evaluation without Inception: the NLL and N samples


def estimate(plan: Plan, states: list[RunState], measured: Measured,
             data_root: str | None) -> Estimate:
    """The work left in ``states``, each part from the seconds earlier runs measured for the same
    work (``measured``, mvq.reproduce.timing) where they exist, else from the model."""
    parts = []
    for st in states:
        cfg = st.run.config(data_root, st.out_dir)
        tok = tokenizer_key(config_to_dict(cfg)["model"], cfg.train.batch_size)
        name = st.run.name
        if st.steps > st.step:
            masks = cfg.model.num_masks if model_type(cfg.model.type).masks else 0
            parts.append(part(name, "", "training", st.steps - st.step,
                              measured.get(("train", tok)),
                              model_step_seconds(cfg.model.type, masks)))
        left = _to_evaluate(plan, st.out_dir, st.steps)
        if left:
            inception = any(m in plan.metrics for m in ("rfid", "prd"))
            parts.append(part(name, "", "evaluation", len(left),
                              measured.get(("eval", tok, plan.eval_n, tuple(plan.metrics))),
                              model_inception_seconds(plan.eval_n) * inception))
        for sample in [] if st.sampled else st.samples:
            spec, path = sample.spec, sample.path
            variant = prior_variant(spec.folder)
            step = latest_checkpoint(path.parent / "checkpoint")[1]
            if sample.first and step < spec.steps:
                parts.append(part(name, spec.folder, "prior training", spec.steps - step,
                                  measured.get(("prior", tok, variant)),
                                  model_prior_step_seconds(
                                      spec.kind, prior_work(spec.kind, spec.sizes, cfg.model))))
            if not _sampled(path, plan, st.steps):
                key = ("samples", tok, variant, path.name, plan.eval_n,
                       tuple(plan.sample_metrics))
                inception = any(m in plan.sample_metrics for m in ("fid", "prd"))
                parts.append(part(name, spec.folder, path.name, 1, measured.get(key),
                                  model_inception_seconds(plan.eval_n) if inception
                                  else _NLL_SECONDS))
    if parts and (plan.sample_metrics or any(m in plan.metrics for m in ("rfid", "prd"))):
        parts.append(part("", "", "the real images' Inception features, once", 1, None,
                          model_inception_seconds(plan.eval_n)))
    return Estimate(parts)


def _sources(parts) -> str:
    """Where the figures of ``parts`` came from, in words."""
    got = {p.source for p in parts}
    return " + ".join(s for s in (MEASURED, MODEL) if s in got)


def describe(plan: Plan, states: list[RunState], est: Estimate) -> str:
    lines = [f"mvq reproduce {plan.experiment} --scale {plan.scale}: {plan.title}",
             f"{len(plan.runs)} runs, evaluation on N={plan.eval_n} images "
             f"({', '.join(plan.metrics or plan.sample_metrics)}"
             f"{' of samples' if not plan.metrics else ''})"]
    for st in states:
        own = est.of(st.run.name, "")
        left = f"  ~{_hms(sum(p.seconds for p in own))} ({_sources(own)})" if own else ""
        lines.append(f"  {st.run.name:<58} {st.status}{' (kept)' * st.kept}{left}")
        if st.note:
            lines.append(f"    note: {st.note}")
        for spec in st.run.priors:  # the generation experiments: each prior and its decodings
            paths = [s.path for s in st.samples if s.spec == spec]
            left = sum(not _sampled(p, plan, st.steps) for p in paths)
            step = latest_checkpoint(paths[0].parent / "checkpoint")[1]
            where = ("trained" if step >= spec.steps else f"resume at {step}" if step
                     else "to train")
            mine = est.of(st.run.name, spec.folder)
            lines.append(f"    prior {spec.folder:<52} {where}, "
                         + (f"{left} of {len(paths)} decodings to sample" if left
                            else "sampled")
                         + (f"  ~{_hms(sum(p.seconds for p in mine))} ({_sources(mine)})"
                            if mine else ""))
    todo = sum(st.status != "done" for st in states)
    split = est.by_source()
    lines.append(f"{todo} of {len(states)} runs to do; estimated {_hms(est.seconds)} of work "
                 f"on this machine ({_hms(split[MEASURED])} from the measured seconds of earlier "
                 f"runs of the same work, in --out and --keep; {_hms(split[MODEL])} from the "
                 "model of a 2-core CPU): one process takes about that long, two sharing the "
                 "plan (the same command twice, each with --threads 1) about half"
                 if todo else "every run is done: writing the report")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    m = int(math.ceil(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def _took(seconds: float) -> str:
    """Elapsed time: seconds under a minute (``_hms`` rounds up, as an estimate should)."""
    return f"{seconds:.0f} s" if seconds < 60 else _hms(seconds)


def execute(plan: Plan, out: Path, data_root: str | None = None, progress: bool = True,
            device: str = "auto", dry_run: bool = False, kept: Path | None = None
            ) -> list[Record]:
    """Run the plan (skip / resume / train, evaluate); returns one record per run. With
    ``kept``, runs kept there count as done and each run is kept there as it finishes."""
    states = inspect(plan, out, data_root, kept)
    roots = (out / "runs",) if kept is None else (out / "runs", kept)
    est = estimate(plan, states, Measured.scan(*roots), data_root)
    print(describe(plan, states, est), file=sys.stderr)
    if dry_run:
        return []
    todo = sum(st.status != "done" for st in states)
    if todo:
        log_estimate(out / plan.experiment, est, todo)
    rows, elsewhere, ran = [], [], 0
    bar = tqdm(states, desc=f"{plan.experiment} runs", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    started = time.time()
    for i, st in enumerate(bar, 1):
        bar.set_postfix_str(st.run.name)
        if st.kept:  # its records are all there is: nothing to run
            rows += plan.kind.records(st)
            continue
        with _claim(st.out_dir) as mine:
            if not mine:  # another `mvq reproduce` has it: share the work, do the next run
                elsewhere.append(st.run.name)
                continue
            now = state(plan, st.run, st.out_dir, data_root, kept)  # another process may have
            if now.kept:  # run and kept it meanwhile
                rows += plan.kind.records(now)
                continue
            if not progress and now.status != "done":  # no bar: a log file still shows where
                print(f"{plan.experiment} run {i}/{len(states)}: {st.run.name}: {now.status} "
                      f"({_took(time.time() - started)} so far)", file=sys.stderr, flush=True)
            ran += now.status != "done"
            rows += _do_run(plan, now, data_root, progress, device, kept)
            if kept is not None:  # at once: a kill later in the plan keeps this one
                keep(state(plan, st.run, now.out_dir, data_root), kept)
    bar.close()
    if not progress and todo:  # another process sharing the plan may have run some of them
        print(f"{plan.experiment}: this process ran {ran} of the {todo} runs to do, in "
              f"{_took(time.time() - started)} (estimated {_hms(est.seconds)} of work for all "
              f"{todo})", file=sys.stderr, flush=True)
    if elsewhere:
        print(f"{len(elsewhere)} runs were in progress in another process: "
              f"{', '.join(elsewhere)}", file=sys.stderr)
    return rows


@contextmanager
def _claim(out_dir: Path):
    """True while this process holds the run's reproduce lock (train + evaluate); False when
    another process holds it. The OS releases it when a process dies."""
    with try_lock(out_dir / ".reproduce.lock") as holder:
        yield holder is None


def _do_run(plan: Plan, st: RunState, data_root, progress: bool, device: str,
            kept: Path | None = None) -> list[Record]:
    cfg = st.run.config(data_root, st.out_dir)
    if device != "auto":
        cfg.train.device = device
    step, left = st.step, _to_evaluate(plan, st.out_dir, st.steps)
    # to each evaluation's step in turn (one, the last, but for a training-length plan): the
    # training stops there, is evaluated, and resumes: one run's trajectory, checkpointed at
    # each step evaluated; an evaluation made before a kill is not made again
    for stop in plan.kind.stops(st.steps):
        if step < stop:
            part_cfg = cfg if stop == st.steps else Changes(train={"steps": stop}).apply(cfg)
            before = read_json(st.out_dir / "run.json")
            with cpu_clock(cfg.train.device) as clock:
                result = mvq.train.train(part_cfg, resume=step > 0, progress=progress or LINES,
                                         desc=short_name(st.run.name))
            _merge_json(st.out_dir / "run.json", _train_times(
                before, result.seconds, clock, checkpoint_threads(st.out_dir), stop - step))
            step = stop
        if stop in left:
            _evaluate(plan, st, stop, data_root, progress, device)
            if kept is not None and stop < st.steps:  # the lengths reached outlive a kill
                keep(st, kept)
    if st.run.priors:
        _do_priors(plan, st, data_root, progress, device)
    return plan.kind.records(st)


def short_name(name: str, width: int = 40) -> str:
    """A run's name in at most ``width`` characters for its progress lines: its beginning and
    its end (steps and seed, which tell two processes' runs of one cell apart), "..." between."""
    if len(name) <= width:
        return name
    tail = min(len(name), 14)
    return name[: width - tail - 3] + "..." + name[-tail:]


def _train_times(before: dict, seconds: float, clock: dict, threads: int | None,
                 steps: int | None = None) -> dict:
    """run.json's times after a part of the training: the wall seconds, and the CPU seconds
    while every part so far was measured by them on one thread (`timing.cpu_clock`); a part
    that was not (a GPU, several threads) leaves none (None), as they would cover part of it.
    ``steps``: the steps this part trained; their sum is ``train_timed_steps``, the steps the
    seconds cover. A run killed in training leaves no time for the steps it lost, and its
    resumption times only the steps from its checkpoint on: dividing by the checkpoint's step
    would make its steps look faster than they are. A record from before the field (seconds,
    no timed steps) covers an unknown count, so none is written after it."""
    times = {"train_seconds": round(seconds + before.get("train_seconds", 0.0), 1),
             **_timed_steps(before, steps)}
    whole = before.get("train_cpu_seconds") is not None or "train_seconds" not in before
    if "cpu_seconds" in clock and threads == 1 and whole:
        times["train_cpu_seconds"] = round(clock["cpu_seconds"]
                                           + (before.get("train_cpu_seconds") or 0.0), 3)
    elif "train_cpu_seconds" in before:
        times["train_cpu_seconds"] = None
    return times


def _timed_steps(before: dict, steps: int | None) -> dict:
    """``train_timed_steps`` after a part that trained ``steps`` (`_train_times`)."""
    counted = recorded_timed_steps(before)
    if steps is None or steps <= 0 or ("train_seconds" in before and counted is None):
        return {}
    return {"train_timed_steps": steps + (counted or 0)}


def _evaluate(plan: Plan, st: RunState, step: int, data_root, progress: bool,
              device: str) -> None:
    """Evaluate the run's checkpoint at ``step`` into ``st.eval_path(step)``; MvqError when its
    newest checkpoint is at another step (trained on past an evaluation that was never made)."""
    found, at = latest_checkpoint(st.out_dir / "checkpoint")
    if found is None or at != step:
        raise MvqError(f"{st.out_dir} has no checkpoint at step {step} to evaluate (its newest "
                       f"is at step {at}): {st.eval_path(step).name} cannot be made; move the "
                       "run folder away to train it again")
    settings = EvalSettings(n=plan.eval_n, device=device, progress=progress,
                            data_root=data_root)
    with cpu_clock(device) as clock:
        result = evaluate_checkpoint(found, settings, metrics=plan.metrics)
    result["planned_metrics"] = list(plan.metrics)
    if "cpu_seconds" in clock and torch.get_num_threads() == 1:
        result["cpu_seconds"] = round(clock["cpu_seconds"], 3)
    _write_json(st.eval_path(step), result)


def collect(plan: Plan, out: Path, data_root: str | None, kept: Path | None = None
            ) -> tuple[list[Record], list[str]]:
    """Records of the runs that are done (in ``out`` or kept in ``kept``), and the names of
    those that are not; with ``kept``, a run done in ``out`` and not yet kept is kept. Where
    the plan's kind says so (``ROWS_BEFORE_PRIORS``), a run evaluated whose priors are not all
    sampled gives its record too (without sample metrics), and is named among those not done;
    so does a run trained part way, at the earlier lengths it was evaluated at (a kind with
    ``lengths``: training-length), and it is kept as far as it got."""
    states = inspect(plan, out, data_root, kept)
    rows = [_row_state(plan, st) for st in states]
    for st, row in zip(states, rows) if kept is not None else []:
        part_way = row is not None and row.rows_at is not None and row.out_dir == st.out_dir
        if not st.kept and (st.status == "done" or part_way):
            keep(st, kept)
    return [rec for st in rows if st is not None for rec in plan.kind.records(st)], \
        [st.run.name for st in states if st.status != "done"]


def _row_state(plan: Plan, st: RunState) -> RunState | None:
    """The state whose records are the run's rows in the report: the run done; for a kind
    with ROWS_BEFORE_PRIORS, evaluated with a prior still to sample; for a kind with
    ``lengths``, trained part way, at the earlier lengths evaluated (here or kept: the one
    with more of them)."""
    if st.status == "done":
        return st
    found = [c for c in (st, st.kept_copy) if c is not None]
    if plan.kind.ROWS_BEFORE_PRIORS:
        row = next((c for c in found if c.status == "to sample"), None)
        # the run without its priors: what a prior still to come left (a corrupt or stale
        # samples file) is not read
        return None if row is None else replace(row, run=replace(row.run, priors=()))
    if plan.kind.lengths and plan.metrics:
        reached = [(_earlier_evaluations(plan, c), c) for c in found]
        best = max(reached, key=lambda r: len(r[0]), default=((), None))
        if best[0]:
            return replace(best[1], rows_at=best[0])
    return None


def _earlier_evaluations(plan: Plan, st: RunState) -> tuple[int, ...]:
    """The stops before the last at which the run in ``st.out_dir`` was evaluated with the
    plan's N and metrics."""
    return tuple(s for s in plan.kind.stops(st.steps)
                 if s < st.steps and _eval_matches(st.eval_path(s), plan, s))


def _do_priors(plan: Plan, st: RunState, data_root, progress: bool, device: str) -> None:
    """Train each of run.priors on the run's training tokens (resuming), then evaluate its
    samples once per decoding (FID*, PRD, NLL and the seconds per image)."""
    ckpt = st.out_dir / "checkpoint"
    tokens = _tokens(st, device, progress)
    for sample in st.samples:
        spec, path = sample.spec, sample.path
        prior_dir = path.parent
        found, step = latest_checkpoint(prior_dir / "checkpoint")
        if found is not None:
            _check_prior(found, spec)
        if _sampled(path, plan, st.steps):
            continue
        if step < spec.steps:
            settings = PriorTraining(kind=spec.kind, steps=spec.steps, seed=spec.seed,
                                     sizes=None if spec.sizes is None else dict(spec.sizes),
                                     class_conditional=spec.class_conditional)
            if not progress:
                print(f"  prior {spec.folder}: training", file=sys.stderr, flush=True)
            result = train_prior(tokens, prior_dir, settings, progress=progress or LINES,
                                 device=device, resume=step > 0)
            before = read_json(prior_dir / "run.json")
            _merge_json(prior_dir / "run.json", {
                "train_seconds": round(result["seconds"] + before.get("train_seconds", 0.0), 1),
                **_timed_steps(before, spec.steps - step)})
        settings = EvalSettings(n=plan.eval_n, device=device, progress=progress,
                                data_root=data_root)
        decoding = replace(sample.decode.decoding, seed=spec.seed)
        result = evaluate_samples(ckpt, prior_dir / "checkpoint", settings,
                                  plan.sample_metrics, decoding)
        result["planned_metrics"] = list(plan.sample_metrics)
        result["step"] = st.steps  # the tokenizer's step, as eval.json
        _write_json(path, result)


def _check_prior(found: Path, spec: PriorSpec) -> None:
    """MvqError unless the prior checkpoint in a spec's folder is of the spec's kind, class
    conditioning and (where the spec sets them) sizes: never resume or sample someone else's."""
    info = read_json(found / "config.json")
    have = (info.get("prior_type", "gpt"), bool(info.get("num_classes")),
            (info.get("prior") or {}).get("sizes") if spec.sizes else None)
    if have != (spec.kind, spec.class_conditional,
                None if spec.sizes is None else dict(spec.sizes)):
        raise MvqError(f"{found.parent} holds a prior with other settings than the plan's "
                       f"{spec.folder} (type, class conditioning or sizes): move it away or "
                       "pick another --out")


def _tokens(st: RunState, device: str, progress: bool) -> Path:
    """The run's training-split token file, encoded once (written atomically: present means
    complete)."""
    tokens = st.out_dir / "tokens_train.safetensors"
    if not tokens.is_file():
        encode_dataset(st.out_dir / "checkpoint", tokens, "train", device=device,
                       progress=progress)
    return tokens


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")  # a kill leaves old or new, never half


def _merge_json(path: Path, values: dict) -> None:
    _write_json(path, {**read_json(path), **values, "updated": time.strftime("%Y-%m-%d %H:%M")})
