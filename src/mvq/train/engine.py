"""One training engine for tokenizers and priors.

A model supplies a `Trainee` (its step, its validation, the contents of its checkpoint);
`fit` supplies everything around it: step-seeded batches, exact resume, the validation
and checkpoint cadence, the CSV log, the progress bar, DDP under torchrun, the divergence stop
and the lock on the output folder.

Batches are a pure function of (seed, step) (mvq.train.batches), and the training state (with the
RNG state) is checkpointed, so a resumed run continues the exact trajectory of an uninterrupted one
(tests/test_train.py, tests/test_faults.py). Who may use the output folder is mvq.train.runs'.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mvq.errors import MvqError
from mvq.files import sealed
from mvq.runtime import distributed
from mvq.runtime.threads import resume_threads
from mvq.saved import checkpoint
from mvq.train.batches import StepBatches, StepSampler
from mvq.train.logs import RunLog
from mvq.train.runs import locked, log_resume

LINES = "lines"  # progress=LINES: a plain line per log step instead of the bar


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
    """What a model hands the engine. Subclasses call ``super().__init__()``, set ``model`` (the
    module DDP wraps), ``optimizer``, ``size`` (training items, indexed by the batches) and
    implement the methods; the engine sets ``net`` (``model`` or its DDP wrapper) for the step
    to call and ``run_id``. What a run changes lives on its instance, never on the class."""

    name = "train"  # progress bar label
    what = "training"  # "training diverged ..."
    validate_first = False  # validate (and log a step-0 row) before the first step
    lower_lr = "lower train.lr"
    fields: list[str]  # CSV columns after step and loss
    grids: dict  # name -> uint8 (H, W, 3) images of the last validation, for TensorBoard
    changes: list  # (key, old, new) settings a resume changes; the engine logs them
    run_id: str  # set by the engine: sealed into the run's checkpoints (kept on resume)
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    size: int

    def __init__(self, fields: Iterable[str] = ()) -> None:
        self.fields = list(fields)
        self.grids = {}
        self.changes = []
        self.run_id = ""

    def batches(self, sampler: StepSampler) -> Iterable:
        """What `step` is given, one per step of ``sampler``: here each step's item indices
        (an int64 tensor); a trainee may serve the items themselves (e.g. from a DataLoader)."""
        return (torch.tensor(indices, dtype=torch.long) for indices in sampler)

    def aux_state(self) -> dict:
        """{name: (module, optimizer or None)} kept in the training state besides optimizer."""
        return {}

    def restored(self) -> None:
        """Called after a resumed run's training state is loaded: apply the settings that may
        change on resume (e.g. the learning rate) to the restored optimizers."""

    def step(self, step: int, batch) -> StepOutput:
        """One optimizer step on ``batch`` (what `batches` served for ``step``)."""
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
    if schedule.keep_checkpoints < 1:
        raise MvqError(f"keep_checkpoints must be >= 1 (the newest N checkpoints are kept), "
                       f"got {schedule.keep_checkpoints}")
    if launch.world > 1 and trainee.size < schedule.batch_size:
        raise MvqError(f"{trainee.size} training items, fewer than one global batch of "
                       f"{schedule.batch_size}: lower {schedule.batch_option}")
    training = Training(trainee, schedule, out_dir, launch, device, progress)
    if not training.main:
        return training.run(resume_from)
    with locked(out_dir):  # before the training state is read: no other run swaps it meanwhile
        target = out_dir / "checkpoint"
        if resume_from is None:
            sealed.remove_all(target)  # a run started over: its old checkpoints go
        sealed.remove_unfinished(target)
        return training.run(resume_from)


@dataclass
class RunState:
    """Where a run stands: what a resume restores and every step advances."""

    step: int = 0
    metrics: dict = field(default_factory=dict)  # the last validation's
    initial: dict = field(default_factory=dict)  # the step-0 validation's (validate_first)
    saved: int = 0  # the step of the last checkpoint this process wrote or resumed (0: none)
    diverged: torch.Tensor | None = None  # the first step whose loss was not finite (0: none),
    # kept on the device: no host read between the steps that talk to the host


class Training:
    """One run of `fit`: the trainee, its schedule, the run's state (`RunState`) and, on rank 0,
    its log and progress bar. `run` resumes (or not), then `loop` trains; each reads top to
    bottom."""

    def __init__(self, trainee: Trainee, schedule: Schedule, out_dir: Path, launch,
                 device: torch.device, progress: bool | str) -> None:
        self.trainee, self.schedule, self.out_dir = trainee, schedule, out_dir
        self.launch, self.device, self.progress = launch, device, progress
        self.main = launch.rank == 0  # rank 0 validates, logs and writes checkpoints
        self.state = RunState()
        self.log: RunLog | None = None
        self.bar = None
        self.lines = False  # a plain line per log step instead of the bar
        self.t0 = 0.0

    def run(self, resume_from: Path | None) -> FitResult:
        """Resume (the run's place, training state, changed settings and threads) or start,
        wrap the model for DDP, open the log and train."""
        trainee, state = self.trainee, self.state
        run = sealed.run_of(resume_from) if resume_from is not None else None
        trainee.run_id = run or sealed.new_run_id()
        threads = torch.get_num_threads()
        if resume_from is not None:
            info = sealed.read_json(resume_from / "config.json")
            state.step, state.saved = int(info["step"]), int(info["step"])
            state.metrics = dict(info.get("metrics") or {})
            state.initial = dict(info.get("initial_metrics") or {})
            if state.step >= self.schedule.steps:
                return self.result(0.0, finished_before=True)
            threads = self.restore(resume_from, info)
        with _threads(threads):  # results depend on them: a resumed run takes its own again
            self.wrap()
            with self.opened_log(fresh=resume_from is None):
                if self.main and trainee.validate_first and resume_from is None:
                    state.initial = trainee.validate(0, self.out_dir)
                    state.metrics = dict(state.initial)
                    self.log.write({"step": 0, **state.initial})
                return self.loop()

    def restore(self, source: Path, info: dict) -> int:
        """Load the trainee's training state from ``source``, apply and log the settings a
        resume may change; the run's own thread count (said on stderr when it differs)."""
        checkpoint.load_train_state(source, self.trainee.optimizer, self.trainee.aux_state())
        self.trainee.restored()
        log_resume(self.out_dir, self.state.step, self.trainee.changes)
        threads, note = resume_threads(info.get("threads"))
        if note and self.main:
            print(f"mvq: {note}", file=sys.stderr)
        return threads

    def wrap(self) -> None:
        """``trainee.net``: the model, or under torchrun its DDP wrapper."""
        trainee, launch = self.trainee, self.launch
        trainee.net = trainee.model
        if launch.world > 1:
            if launch.rank:  # own random draws (MH-Dropout masks) per rank; rank 0 as alone
                torch.manual_seed(self.schedule.seed + 7919 * launch.rank + self.state.step)
            # buffers are not synced by DDP: the quantizers keep theirs in step
            # (mvq.runtime.distributed); BatchNorm statistics stay per rank, the checkpoint
            # holds rank 0's
            trainee.net = torch.nn.parallel.DistributedDataParallel(
                trainee.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None, forward_sync_buffers=False)

    @contextmanager
    def opened_log(self, fresh: bool):
        """Rank 0: the run's CSV and TensorBoard log for the block (a resumed run's keeps its
        rows up to the resumed step)."""
        if not self.main:
            yield
            return
        self.log = RunLog(self.out_dir, ["step", "loss", *self.trainee.fields],
                          None if fresh else self.state.step)
        try:
            yield
        finally:
            self.log.close()

    def loop(self) -> FitResult:
        """The training loop: a step on the next batch; at the steps that talk to the host, the
        divergence check, the log row, validation and the checkpoint."""
        trainee, state, schedule = self.trainee, self.state, self.schedule
        sampler = StepSampler(StepBatches(trainee.size, schedule.batch_size, schedule.seed,
                                          (self.launch.rank, self.launch.world)),
                              state.step, schedule.steps)
        batches = iter(trainee.batches(sampler))
        self.t0 = time.time()
        self.open_bar()
        trainee.model.train()
        try:
            for batch in batches:
                out = trainee.step(state.step, batch)
                state.step += 1
                # no host read between log steps: a loss that is not finite is noted on the
                # device and read at the next step that talks to the host
                state.diverged = _first_nonfinite(state.diverged, out.loss.detach(), state.step)
                self.bar.update(1)
                if any(self.due(every) for every in (schedule.log_every, schedule.val_every,
                                                     schedule.ckpt_every)):
                    self.host_step(out)
        finally:
            self.bar.close()
            batches = None  # a DataLoader's worker processes end with their iterator
        return self.result(time.time() - self.t0)

    def due(self, every: int) -> bool:
        """Whether the step just taken is one of those ``every`` steps (or the last)."""
        return self.state.step % every == 0 or self.state.step == self.schedule.steps

    def host_step(self, out: StepOutput) -> None:
        """A step that talks to the host: every rank checks the loss and averages the logged
        terms (collectives, in the same order on every rank); rank 0 logs, validates and
        writes the checkpoint."""
        trainee, state, schedule = self.trainee, self.state, self.schedule
        loss = self.checked_loss(out)
        log_now = self.due(schedule.log_every)
        # on every rank: the logged terms are means over the ranks' shares
        terms = distributed.mean_over_ranks(out.terms, self.device) if log_now else {}
        if not self.main:
            return
        row = self.log_row(loss, terms) if log_now else None
        if self.due(schedule.val_every):
            state.metrics = trainee.validate(state.step, self.out_dir)
            row = {**(row or {"step": state.step, "loss": loss}), **state.metrics}
            self.log.images(state.step, trainee.grids)
        if row is not None:
            self.log.write(row)
        if self.due(schedule.ckpt_every):
            self.save()

    def checked_loss(self, out: StepOutput) -> float:
        """The step's loss (mean over the ranks); MvqError when a step since the last check
        diverged, or when a layer of the model noted values that were not finite."""
        state = self.state
        read = distributed.mean_over_ranks({"loss": out.loss.detach(),
                                            "diverged": state.diverged}, self.device)
        loss = read["loss"]
        if read["diverged"] != 0 or not math.isfinite(loss):
            first = int(state.diverged) or state.step
            raise MvqError(f"{self.trainee.what} diverged at step {first} (loss not finite); "
                           f"{self.trainee.lower_lr}. {_kept(self.out_dir, state.saved)}")
        self.trainee.check_finite()
        return loss

    def log_row(self, loss: float, terms: dict) -> dict:
        """The CSV row of a log step; the bar's postfix, or a plain line without a bar."""
        step, said = self.state.step, self.trainee.postfix(loss, terms)
        self.bar.set_postfix(said)
        if self.lines:  # no bar (--no-progress, or a log file): a plain line per log step
            words = ", ".join(f"{k} {v}" for k, v in said.items())
            print(f"{self.trainee.name}: step {step}/{self.schedule.steps}, {words}, "
                  f"{time.time() - self.t0:.0f}s", file=sys.stderr, flush=True)
        return {"step": step, "loss": loss, **terms}

    def save(self) -> None:
        """Write the step's checkpoint (the model's files and the training state), sealed."""
        trainee, state = self.trainee, self.state
        try:
            with sealed.writing(self.out_dir / "checkpoint", state.step,
                                self.schedule.keep_checkpoints, trainee.run_id) as folder:
                trainee.write(folder, state.step, state.metrics)
                checkpoint.save_train_state(folder, trainee.optimizer, trainee.aux_state())
        except checkpoint.NonFiniteError as err:
            raise MvqError(f"{trainee.what} diverged by step {state.step} ({err}); "
                           f"{trainee.lower_lr}. {_kept(self.out_dir, state.saved)}") from None
        state.saved = state.step

    def open_bar(self) -> None:
        """The progress bar (rank 0 on a terminal with progress=True), or plain lines."""
        tty, progress = sys.stderr.isatty(), self.progress
        self.lines = self.main and (progress == LINES or (progress is True and not tty))
        self.bar = tqdm(total=self.schedule.steps, initial=self.state.step,
                        desc=self.trainee.name,
                        disable=not (progress is True and self.main and tty), file=sys.stderr,
                        dynamic_ncols=True, leave=True, mininterval=0.1)

    def result(self, seconds: float, finished_before: bool = False) -> FitResult:
        state = self.state
        return FitResult(state.step, state.metrics, seconds, state.initial, finished_before)


@contextmanager
def _threads(n: int):
    """torch's CPU thread count ``n`` for the block, the one before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
