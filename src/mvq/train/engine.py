"""One training engine for tokenizers and priors.

A model supplies a `Trainee` (its step, its validation, the contents of its checkpoint);
`fit` supplies everything around it: step-seeded batches, exact resume, the validation
and checkpoint cadence, the CSV log, the progress bar, DDP under torchrun, the divergence stop
and the lock on the output folder.

Batches are a pure function of (seed, step), and the RNG state is checkpointed, so a resumed
run continues the exact trajectory of an uninterrupted one (tests/test_train.py,
tests/test_faults.py).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq import checkpoint, distributed, sealed
from mvq.config import check_writable
from mvq.errors import MvqError
from mvq.outputs import is_checkpoint, try_lock
from mvq.threads import resume_threads
from mvq.train.logs import RunLog


class StepBatches:
    """Item indices for step s: a slice of a per-epoch permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)
                 ) -> None:
        """shard (rank, world): this rank's share of every batch, items rank, rank + world, ..."""
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = shard
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world]


@dataclass
class Schedule:
    """How long and how often; ``batch_size`` is the global batch (split over DDP ranks)."""

    steps: int
    batch_size: int
    seed: int = 0
    log_every: int = 50
    val_every: int = 500
    ckpt_every: int = 1000
    keep_checkpoints: int = 1
    batch_option: str = "train.batch_size"  # how the user sets batch_size, for messages


@dataclass
class StepOutput:
    """One optimizer step: the total loss (checked for divergence, logged as ``loss``) and its
    named parts, logged at log steps as means over the ranks."""

    loss: torch.Tensor
    terms: dict = field(default_factory=dict)


class Trainee:
    """What a model hands the engine. Subclasses set ``model`` (the module DDP wraps),
    ``optimizer``, ``size`` (training items, indexed by the batches) and implement the methods;
    the engine sets ``net`` (``model`` or its DDP wrapper) for the step to call."""

    name = "train"  # progress bar label
    what = "training"  # "training diverged ..."
    fields: list[str] = []  # CSV columns after step and loss
    validate_first = False  # validate (and log a step-0 row) before the first step
    grids: dict = {}  # name -> uint8 (H, W, 3) images of the last validation, for TensorBoard
    lower_lr = "lower train.lr"
    run_id = ""  # set by the engine: sealed into the run's checkpoints (kept on resume)
    changes: list = []  # (key, old, new) settings a resume changes; the engine logs them
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    size: int

    def aux_state(self) -> dict:
        """{name: (module, optimizer or None)} kept in the training state besides optimizer."""
        return {}

    def restored(self) -> None:
        """Called after a resumed run's training state is loaded: apply the settings that may
        change on resume (e.g. the learning rate) to the restored optimizers."""

    def step(self, step: int, indices: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def validate(self, step: int, out_dir: Path) -> dict[str, float]:
        """Rank 0 only; may also write images into ``out_dir`` (and set ``grids``)."""
        raise NotImplementedError

    def write(self, directory: Path, step: int, metrics: dict[str, float]) -> None:
        """Write the model's files (weights, config.json) into the new checkpoint folder."""
        raise NotImplementedError

    def postfix(self, loss: float, terms: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}"}

    def check_finite(self) -> None:
        """At the engine's host steps: raise what a layer of the model noted on the device
        since the last one (its ``check_finite``: quantizers count training batches that were
        not finite instead of reading each on the host)."""
        for module in self.model.modules():
            check = getattr(module, "check_finite", None)
            if module is not self.model and callable(check):
                check()


@dataclass
class FitResult:
    step: int
    metrics: dict[str, float]
    seconds: float
    initial: dict[str, float] = field(default_factory=dict)
    finished_before: bool = False  # resumed a run that had already reached its last step


@contextmanager
def locked(out_dir: Path):
    """Hold an exclusive lock on ``out_dir`` (a run's folder) for the block. The OS releases it
    when the process dies, so a killed run never leaves a stale lock."""
    with try_lock(out_dir / ".lock") as holder:
        if holder is not None:
            raise MvqError(f"{out_dir} is in use by another mvq run (pid {holder}); wait for it "
                           "to finish or choose another output folder")
        yield


COMMANDS = {"tokenizer": "mvq train", "prior": "mvq train-prior"}
LINES = "lines"  # progress=LINES: a plain line per log step instead of the bar


def claim_run(out: Path, kind: str, resume: bool, overwrite: bool, option: str) -> Path | None:
    """The checkpoint of ``out`` to resume (None: a fresh start), after refusing, before any
    work, what a run of ``kind`` ("tokenizer", "prior") must not touch: ``out`` inside a
    checkpoint folder, a run of another kind (--overwrite included), a run of its own kind
    without --resume or --overwrite, and --resume with nothing to resume. ``option``: how the
    user names ``out`` (train.out_dir, --out)."""
    check_writable(out, option)  # a file, or a folder not writable, is refused here
    here = out.resolve()
    for folder in (here, *here.parents):
        if is_checkpoint(folder):
            where = "is" if folder == here else f"lies in the checkpoint folder {folder}, which is"
            raise MvqError(f"{option} {out} {where} a checkpoint, not a run folder; give the run "
                           f"folder that holds it ({folder.parent}) or a new folder")
    target = out / "checkpoint"
    source = sealed.latest(target)
    if source is not None:
        found, words = checkpoint.describe(source)
        if found != kind:
            raise MvqError(f"{out} holds {words}, not a {kind} run: {COMMANDS[kind]} neither "
                           f"resumes nor overwrites it; choose another {option}")
        if not resume and not overwrite:
            raise MvqError(f"{out} already holds {words}; pass --resume to continue it, "
                           f"--overwrite to start again over it, or another {option}")
    elif resume:
        raise MvqError(f"nothing to resume: {target} holds no complete {kind} checkpoint")
    return source if resume else None


def log_resume(out: Path, step: int, changes: list[tuple[str, object, object]]) -> None:
    """Say on stderr (rank 0) which settings a resumed run changes from ``step`` on."""
    if changes and not distributed.launched_rank():
        said = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
        print(f"mvq: resuming {out} at step {step} with {said}", file=sys.stderr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def fit(trainee: Trainee, schedule: Schedule, out_dir: Path, launch, device: torch.device,
        resume_from: Path | None = None, progress: bool | str = True) -> FitResult:
    """Train ``trainee`` from step 0, or from the checkpoint ``resume_from``, to
    ``schedule.steps``; rank 0 validates, logs and writes ``out_dir/checkpoint``. ``progress``:
    True: a bar on a terminal, else a plain line every ``log_every`` steps; LINES: those lines;
    False: nothing."""
    main = launch.rank == 0
    if schedule.keep_checkpoints < 1:
        raise MvqError(f"keep_checkpoints must be >= 1 (the newest N checkpoints are kept), "
                       f"got {schedule.keep_checkpoints}")
    if launch.world > 1 and trainee.size < schedule.batch_size:
        raise MvqError(f"{trainee.size} training items, fewer than one global batch of "
                       f"{schedule.batch_size}: lower {schedule.batch_option}")
    if not main:
        return _run(trainee, schedule, out_dir, launch, device, resume_from, None, progress)
    with locked(out_dir):  # before the training state is read: no other run swaps it meanwhile
        target = out_dir / "checkpoint"
        if resume_from is None:
            sealed.remove_all(target)  # a run started over: its old checkpoints go
        sealed.remove_unfinished(target)
        return _run(trainee, schedule, out_dir, launch, device, resume_from, target, progress)


def _run(trainee: Trainee, schedule: Schedule, out_dir: Path, launch, device,
         resume_from: Path | None, target: Path | None, progress: bool | str) -> FitResult:
    """Resume (or not: the training state, the settings that may change, the run's threads),
    then `_wrapped`."""
    step, metrics, initial = 0, {}, {}
    threads = torch.get_num_threads()
    run = sealed.run_of(resume_from) if resume_from is not None else None
    trainee.run_id = run or sealed.new_run_id()
    if resume_from is not None:
        info = sealed.read_json(resume_from / "config.json")
        step, metrics = int(info["step"]), dict(info.get("metrics") or {})
        initial = dict(info.get("initial_metrics") or {})
        if step >= schedule.steps:
            return FitResult(step, metrics, 0.0, initial, finished_before=True)
        checkpoint.load_train_state(resume_from, trainee.optimizer, trainee.aux_state())
        trainee.restored()
        log_resume(out_dir, step, trainee.changes)
        threads, note = resume_threads(info.get("threads"))
        if note and not launch.rank:
            print(f"mvq: {note}", file=sys.stderr)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # results depend on it: a resumed run takes its own again
    try:
        return _wrapped(trainee, schedule, out_dir, launch, device, resume_from, target,
                        progress, (step, metrics, initial))
    finally:
        torch.set_num_threads(before)


def _wrapped(trainee: Trainee, schedule: Schedule, out_dir: Path, launch, device,
             resume_from: Path | None, target: Path | None, progress, state: tuple) -> FitResult:
    """Wrap for DDP, open the logs (rank 0: ``target`` is set) and loop from ``state`` (step,
    metrics, initial metrics)."""
    step, metrics, initial = state
    trainee.net = trainee.model
    if launch.world > 1:
        if launch.rank:  # own random draws (MH-Dropout masks) per rank; rank 0 as alone
            torch.manual_seed(schedule.seed + 7919 * launch.rank + step)
        # buffers are not synced by DDP: the quantizers keep theirs in step (mvq.distributed);
        # BatchNorm statistics stay per rank, the checkpoint holds rank 0's
        trainee.net = torch.nn.parallel.DistributedDataParallel(
            trainee.model, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False)
    if target is None:
        return _loop(trainee, schedule, out_dir, launch, device, step, metrics, initial,
                     None, progress)
    log = RunLog(out_dir, ["step", "loss", *trainee.fields],
                 None if resume_from is None else step)
    try:
        if trainee.validate_first and resume_from is None:
            initial = trainee.validate(0, out_dir)
            metrics = dict(initial)
            log.write({"step": 0, **initial})
        return _loop(trainee, schedule, out_dir, launch, device, step, metrics, initial, log,
                     progress)
    finally:
        log.close()


def _loop(trainee: Trainee, schedule: Schedule, out_dir: Path, launch, device, step: int,
          metrics: dict, initial: dict, log: RunLog | None, progress: bool | str) -> FitResult:
    main = log is not None
    batches = StepBatches(trainee.size, schedule.batch_size, schedule.seed,
                          (launch.rank, launch.world))
    t0 = time.time()
    tty = sys.stderr.isatty()
    lines = main and (progress == LINES or (progress is True and not tty))
    bar = tqdm(total=schedule.steps, initial=step, desc=trainee.name,
               disable=not (progress is True and main and tty), file=sys.stderr,
               dynamic_ncols=True, leave=True, mininterval=0.1)
    trainee.model.train()
    saved = step
    try:
        diverged = None  # the first step whose loss was not finite, kept on the device
        while step < schedule.steps:
            out = trainee.step(step, batches(step))
            step += 1
            # no host read between log steps: a loss that is not finite is noted on the device
            # and read at the next step that talks to the host (log, validation, checkpoint)
            diverged = _first_nonfinite(diverged, out.loss.detach(), step)
            bar.update(1)
            log_now = step % schedule.log_every == 0 or step == schedule.steps
            host = log_now or step % schedule.val_every == 0 or step % schedule.ckpt_every == 0
            if not host:
                continue
            read = distributed.mean_over_ranks({"loss": out.loss.detach(),
                                                "diverged": diverged}, device)
            loss = read["loss"]
            if read["diverged"] != 0 or not math.isfinite(loss):
                first = int(diverged) or step
                raise MvqError(f"{trainee.what} diverged at step {first} (loss not finite); "
                               f"{trainee.lower_lr}. {_kept(out_dir, saved)}")
            trainee.check_finite()
            if log_now:  # on every rank: the logged terms are means over the ranks' shares
                terms = distributed.mean_over_ranks(out.terms, device)
            if not main:
                continue
            row = None
            if log_now:
                row = {"step": step, "loss": loss, **terms}
                bar.set_postfix(trainee.postfix(loss, terms))
                if lines:  # no bar (--no-progress, or a log file): a plain line per log step
                    said = ", ".join(f"{k} {v}" for k, v in trainee.postfix(loss, terms).items())
                    print(f"{trainee.name}: step {step}/{schedule.steps}, {said}, "
                          f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
            if step % schedule.val_every == 0 or step == schedule.steps:
                metrics = trainee.validate(step, out_dir)
                row = {**(row or {"step": step, "loss": loss}), **metrics}
                log.images(step, trainee.grids)
            if row is not None:
                log.write(row)
            if step % schedule.ckpt_every == 0 or step == schedule.steps:
                try:
                    with sealed.writing(out_dir / "checkpoint", step,
                                            schedule.keep_checkpoints,
                                            trainee.run_id) as folder:
                        trainee.write(folder, step, metrics)
                        checkpoint.save_train_state(folder, trainee.optimizer,
                                                    trainee.aux_state())
                except checkpoint.NonFiniteError as err:
                    raise MvqError(f"{trainee.what} diverged by step {step} ({err}); "
                                   f"{trainee.lower_lr}. {_kept(out_dir, saved)}") from None
                saved = step
    finally:
        bar.close()
    return FitResult(step, metrics, time.time() - t0, initial)


def _first_nonfinite(first: torch.Tensor | None, loss: torch.Tensor, step: int) -> torch.Tensor:
    """``first`` (0-d int64 on the loss's device, 0 = none yet) with ``step`` where this loss is
    the first that is not finite; no host read."""
    if first is None:
        first = torch.zeros((), dtype=torch.long, device=loss.device)
    return torch.where((first == 0) & ~torch.isfinite(loss), step, first)


def _kept(out_dir: Path, saved: int) -> str:
    if saved == 0:
        return "No checkpoint was written."
    return f"The last finite checkpoint (step {saved}) is kept in {out_dir / 'checkpoint'}."
