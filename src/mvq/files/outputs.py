"""Writing outputs without losing files: every file mvq writes goes through `atomic_write`
(a temporary file beside the target, renamed over it when complete, removed on failure), and
the commands check their output paths with `check_outputs` before any work starts: each
against the others and against the command's inputs, then each on its own (`check_output`)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file

from mvq.errors import MvqError
from mvq.runtime.memory import human

# the files training writes into a checkpoint folder; nothing else may replace them
CHECKPOINT_FILES = ("config.json", "model.safetensors", "train_state.safetensors",
                    "manifest.json")


def atomic_write(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temporary file beside ``target``, then rename it
    over ``target``: a reader sees the old file or the new one, never half of one."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise MvqError(f"cannot write {target}: {err.strerror or err}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, target)
    except OSError as err:
        raise MvqError(f"cannot write {target}: {err.strerror or err}") from None
    except MvqError as err:  # name the target, not the temporary file removed below
        if str(tmp) not in str(err):
            raise
        raise type(err)(str(err).replace(str(tmp), str(target))) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def open_lock(path: Path):
    """Open (creating) the lock file ``path`` for reading and writing, never through a symbolic
    link (its target would be overwritten) and only as a regular file; MvqError otherwise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise MvqError(f"{path} is a symbolic link; mvq does not follow it (its target would "
                           "be overwritten): remove the link and run again") from None
        raise MvqError(f"cannot open the lock file {path}: {err.strerror}; remove it or choose "
                       "another output folder") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MvqError(f"{path} is not a regular file; remove it and run again")
    return os.fdopen(fd, "r+")


@contextmanager
def try_lock(path: Path) -> Iterator[str | None]:
    """Try the exclusive lock file ``path`` (the one lock of every mvq writer: runs, reproduce,
    saved models). Yields None while this process holds it (its pid written in the file), or
    the holder's pid when another process holds it. The OS releases the lock when a process
    dies, so a killed writer never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield fh.read(32).strip() or "?"
            return
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield None


@contextmanager
def wait_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock file ``path``, waiting for another process that holds it: for
    short shared writes that processes take turns at (a kept run, an estimate log, a cache
    entry). The OS releases it when a process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(path) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text))


def is_checkpoint(folder: Path) -> bool:
    """A folder written by training (a tokenizer or prior checkpoint)."""
    return (folder / "manifest.json").is_file() or (
        (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


def _sealed(folder: Path) -> set[str]:
    """The names of a checkpoint folder's own files: those its manifest lists (a model card
    included) and training's standard files."""
    try:
        listed = json.loads((folder / "manifest.json").read_text())["files"]
        names = set(listed) if isinstance(listed, dict) else set()
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # a damaged manifest
        names = set()
    return names | set(CHECKPOINT_FILES)


def check_output(path: str | Path | None, overwrite: bool, option: str,
                 beside_checkpoint: bool = False) -> Path | None:
    """MvqError before any work when writing ``path`` (given as ``option``) could lose a file:
    it exists and ``overwrite`` is off, it is a folder, or it lies in a checkpoint folder
    (``beside_checkpoint``: reports may sit there, but never replace training's own files)."""
    if path is None:
        return None
    path = Path(path)
    for folder in path.resolve().parents:
        if is_checkpoint(folder):
            if not beside_checkpoint or path.resolve().name in _sealed(folder):
                raise MvqError(f"{option} {path} lies in the checkpoint folder {folder}; only "
                               "training writes there: choose a path outside it")
            break
    if path.is_dir():
        raise MvqError(f"{option} {path} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise MvqError(f"{option} {path} exists; pass --overwrite to replace it, or choose "
                       "another path")
    return path


Named = tuple[str, "str | Path | None"]  # (option as the user names it, path)


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (links resolved, hard links included)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: list[Named], overwrite: bool, inputs: list[Named] = (),
                  beside_checkpoint: bool = False) -> list[Path | None]:
    """MvqError before any work when the files one command writes (``outputs``, (option, path)
    pairs; None paths are skipped) could lose a file: two of them are one file, one of them is
    an input file (``inputs``, e.g. ("--checkpoint", folder), ("--images", file)), or one fails
    `check_output`. Returns the paths (as Path, None kept) in order."""
    given = [(opt, Path(p)) for opt, p in outputs if p is not None]
    for i, (opt, path) in enumerate(given):
        for other_opt, other in given[:i]:
            if _same_file(path, other):
                raise MvqError(f"{other_opt} {other} and {opt} {path} are the same file: one "
                               "would replace the other; give each output its own path")
        for in_opt, source in inputs:
            if source is not None and _same_file(path, Path(source)):
                raise MvqError(f"{opt} {path} is the input {in_opt} {source}: writing it would "
                               "destroy the input; choose another output path")
    for opt, path in given:
        check_output(path, overwrite, opt, beside_checkpoint)
    return [None if p is None else Path(p) for _, p in outputs]


def write_failure(path: str | Path, err: Exception, need: int) -> MvqError:
    """One line for a write of about ``need`` bytes to ``path`` that failed with ``err``: the
    file, the space it needs, and why (a full disk, the file size limit, or the OS's words)."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    text = getattr(err, "strerror", None) or str(err)
    if free is not None and free < need:
        why = f"the disk is full ({human(free)} free)"
    elif (getattr(err, "errno", None) == errno.EFBIG or "File too large" in text
          or "code: 27" in text):
        why = "the file size limit (ulimit -f) is lower"
    else:
        why = text.splitlines()[0][:200] if text else type(err).__name__
    return MvqError(f"cannot write {path}: it needs about {human(need)} and {why}; free some "
                    "space (or raise the limit) or write elsewhere")


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None
                     ) -> None:
    """safetensors' save_file, with a failed write (disk full, ``ulimit -f``) as one MvqError
    naming the file and the space it needs; a partial file is removed."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as err:  # noqa: BLE001 - SafetensorError wraps the OS error as text
        Path(path).unlink(missing_ok=True)
        need = sum(t.numel() * t.element_size() for t in tensors.values()) + 8 + 100 * len(tensors)
        raise write_failure(path, err, need) from None
