"""Kept runs: what a report reads of each finished run, without its weights, so that results
outlive the run folders (``mvq reproduce --keep DIR``).

A run folder holds megabytes of weights and token files; what a report reads of a finished run
is a few kilobytes of JSON: ``eval.json`` (and the ``eval_<STEP>steps.json`` of its earlier
steps, training-length), ``run.json``, the checkpoint's ``config.json`` and,
for each prior, its ``samples_*.json``, ``run.json`` and checkpoint ``config.json``. With
``--keep DIR`` every run is copied, as it finishes, into ``DIR/NAME/`` in the run folder's own
layout (those files only), and a run kept there counts as done when ``OUT`` holds no finished
copy of it, provided it was made with the plan's settings (the whole resolved config but the
paths and the device), N, metrics and steps. Commit ``DIR`` and the evidence travels with the
repository: ``--report-only --keep DIR`` regenerates a report on a fresh clone, and a later
session on another machine trains only what is not kept.

A kept run has no weights: a generation experiment that needs a kept tokenizer's weights to train
a new prior trains the tokenizer again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mvq.configuration.config import Config, config_from_dict, config_to_dict
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import wait_lock, write_text
from mvq.reproduce.spec import Run, RunState
from mvq.reproduce.timing import config_and_step, latest_checkpoint

# (section, field) that differ between machines, not between experiments
MACHINE_FIELDS = (("train", "out_dir"), ("train", "device"), ("data", "root"))
RUN_FILES = ("eval.json", "run.json")
EARLIER_EVALS = "eval_*steps.json"  # a training-length run's evaluations at earlier steps
PRIOR_FILES = ("run.json",)
LOCK = ".keep.lock"


def comparable(config: dict) -> dict:
    """A resolved config without the fields that name this machine's paths and device."""
    out = {name: dict(section) if isinstance(section, dict) else section
           for name, section in config.items()}
    for section, name in MACHINE_FIELDS:
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


# fields added since runs were kept, with the value every run made before them had (not
# today's default, which may change)
ADDED_FIELDS = (("train", "mask_sampling", "instance"),)


def _with_defaults(saved: dict) -> dict:
    """A saved config as this version resolves it: a field added since it was written takes the
    value the run was made with (``ADDED_FIELDS``), any other its default."""
    saved = {name: dict(section) if isinstance(section, dict) else section
             for name, section in saved.items()} if isinstance(saved, dict) else saved
    for section, name, value in ADDED_FIELDS:
        if isinstance(saved, dict) and isinstance(saved.get(section), dict):
            saved[section].setdefault(name, value)
    try:
        return config_to_dict(config_from_dict(saved))
    except MvqError:  # unreadable as a config: compared as written, so the difference is named
        return saved


def differences(saved: dict, cfg: Config) -> list[str]:
    """The ``section.field`` names where a kept run's resolved config differs from ``cfg``."""
    want, got = comparable(config_to_dict(cfg)), comparable(_with_defaults(saved))
    names = []
    for section in sorted(set(want) | set(got)):
        a, b = want.get(section), got.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            names.append(section)
    return names


def kept_folder(keep: Path, run: Run) -> Path:
    """``keep/NAME``; a kept folder that a kill left set aside mid-swap (``_swap``) is put back
    first."""
    target = keep / run.name
    if not target.exists():
        for old in sorted(keep.glob(f".{run.name}.old-*/{run.name}")):
            os.rename(old, target)
            shutil.rmtree(old.parent, ignore_errors=True)
            break
    return target


def check_kept(folder: Path, run: Run, cfg: Config, stops: tuple[int, ...] = ()
               ) -> tuple[int, str | None]:
    """(step, None) for a kept run made with ``cfg``'s settings; (0, why) for one that cannot
    count (no readable record, or other settings: named). ``stops``: the earlier lengths the
    plan trains the run to in parts (training-length), whose checkpoints say the part's
    length."""
    config, step = config_and_step(folder / "checkpoint")
    if config is None:
        return 0, f"{folder} has no readable checkpoint/config.json"
    other = differences(config, cfg)
    if other == ["train.steps"] and _part_way(config, step, stops):
        other = []
    if other:
        return 0, (f"{folder} was made with other settings than the plan's {run.name} "
                   f"({', '.join(other[:4])}{', ...' if len(other) > 4 else ''}): not counted")
    return step, None


def _part_way(config: dict, step: int, stops: tuple[int, ...]) -> bool:
    """A run kept part way (training-length): its checkpoint was written by the part of the
    plan that trains to one of its earlier stops (train.steps = that stop), at the stop or on
    the way to it (a kill between two stops)."""
    train = config.get("train")
    end = train.get("steps") if isinstance(train, dict) else None
    return end in stops and 0 < step <= end


def keep(st: RunState, keep_dir: Path) -> Path:
    """Copy the records of the run ``st`` (in OUT; finished, or trained part way and evaluated
    at an earlier length) into ``keep_dir/NAME``, merged with
    what was kept there before (another experiment's priors stay); all or nothing: a kill leaves
    the old kept folder or the new one. Returns the kept folder. A run folder that is its own
    kept folder (``--keep OUT/runs``) is left as it is."""
    src = st.out_dir
    if src.resolve() == (keep_dir / st.run.name).resolve():  # --keep OUT/runs: already there
        return src
    ckpt, _ = latest_checkpoint(src / "checkpoint")
    if ckpt is None:
        raise MvqError(f"{src} has no finished checkpoint to keep")
    keep_dir.mkdir(parents=True, exist_ok=True)
    ignore = keep_dir / ".gitignore"
    if not ignore.exists():  # the folder is made to be committed; its working files are not
        write_text(ignore, f"{LOCK}\n.*.tmp-*\n.*.old-*\n")
    with wait_lock(keep_dir / LOCK):  # two processes keeping the same run take turns
        return _keep(src, ckpt, keep_dir, st.run)


def _keep(src: Path, ckpt: Path, keep_dir: Path, run: Run) -> Path:
    target = kept_folder(keep_dir, run)
    # under the lock, a working folder of this run is one a killed keep left behind
    for stale in [*keep_dir.glob(f".{run.name}.tmp-*"), *keep_dir.glob(f".{run.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=keep_dir))
    try:
        if target.is_dir():
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        files = [(src / name, tmp / name) for name in RUN_FILES]
        files += [(p, tmp / p.name) for p in sorted(src.glob(EARLIER_EVALS))]
        files.append((ckpt / "config.json", tmp / "checkpoint" / "config.json"))
        for prior in sorted((src / "priors").glob("*/")):
            into = tmp / "priors" / prior.name
            files += [(prior / name, into / name) for name in PRIOR_FILES]
            files += [(p, into / p.name) for p in sorted(prior.glob("samples_*.json"))]
            found, _ = latest_checkpoint(prior / "checkpoint")
            if found is not None:
                files.append((found / "config.json", into / "checkpoint" / "config.json"))
        for a, b in files:
            if a.is_file():
                b.parent.mkdir(parents=True, exist_ok=True)
                sealed.read_json(a)  # only whole JSON objects are kept; else MvqError naming a
                shutil.copyfile(a, b)
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target`` (absent or a folder). Two renames: a kill
    between them leaves the old folder in ``.NAME.old-*/``, where kept_folder finds it."""
    old = None
    if target.exists():
        if not target.is_dir():
            raise MvqError(f"{target} is a file, expected a kept run's folder; move it away")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
