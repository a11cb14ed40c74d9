"""Writing outputs without losing files: every file mvq writes goes through :func:`atomic_write`
(a temporary file beside the target, renamed over it when complete, removed on failure), and
the commands check their output paths with :func:`check_output` before any work starts."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mvq.errors import MvqError

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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text))


def is_checkpoint(folder: Path) -> bool:
    """A folder written by training (a tokenizer or prior checkpoint)."""
    return (folder / "manifest.json").is_file() or (
        (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


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
            if not beside_checkpoint or path.name in CHECKPOINT_FILES:
                raise MvqError(f"{option} {path} lies in the checkpoint folder {folder}; only "
                               "training writes there: choose a path outside it")
            break
    if path.is_dir():
        raise MvqError(f"{option} {path} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise MvqError(f"{option} {path} exists; pass --overwrite to replace it, or choose "
                       "another path")
    return path
