"""Who may use a run's output folder: the lock a running run holds on it, what a new run or a
resume may do to what it holds, and the line a resume says about the settings it changes."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from mvq.configuration.config import check_writable
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import is_checkpoint, try_lock
from mvq.runtime import distributed
from mvq.saved import checkpoint


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
