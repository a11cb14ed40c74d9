"""Sealed folders: the all-or-nothing writing, checking and retiring of checkpoint folders.

A folder is written into a fresh hidden folder beside its target, its manifest (step, size and
sha256 of every file) is written last, and only then is the folder renamed into place. A folder
named ``checkpoint`` is therefore always complete; a kill leaves at worst a hidden
``.checkpoint.tmp-*`` folder (removed by the next run) or, between the two renames of a swap,
the previous checkpoint under its retired name ``checkpoint-NNNNNN``, which `latest`
finds. Loading checks the manifest (`verify`), so a damaged file is named, not used.
What a checkpoint holds is `mvq.saved.checkpoint`'s business; this module only seals folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from mvq.errors import MvqError
from mvq.files.hashes import file_sha256
from mvq.files.jsonio import loads_object
from mvq.files.outputs import CHECKPOINT_FILES, write_failure

MANIFEST = "manifest.json"
CARD = "README.md"  # the model card: listed in the manifest (it is ours) but not checked
MANIFEST_FORMAT = "mvq-manifest-v1"  # a manifest this module sealed (with its run's id)
WRITING = ".mvq-writing"  # marks a hidden folder this module is writing (removed when sealed)
# test-only: seconds to sleep inside a checkpoint write, so a test can kill the writer there
SLOW_WRITE_ENV = "MVQ_TEST_CHECKPOINT_SLEEP"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_run_id() -> str:
    """A fresh id for a run: sealed into each of its checkpoints' manifests, so that retiring
    old checkpoints deletes only folders this run wrote."""
    return uuid.uuid4().hex


def _write_manifest(folder: Path, step: int, run: str) -> None:
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name == WRITING:
            continue
        with open(p, "rb") as fh:  # on disk before the manifest names them
            os.fsync(fh.fileno())
        files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    manifest = {"format": MANIFEST_FORMAT, "run": run, "step": step, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync_dir(folder)


def target_of(folder: str | Path) -> Path:
    """The folder that ``folder``, one of `writing`'s hidden folders, will become (any
    other folder: itself)."""
    folder = Path(folder)
    if folder.name.startswith(".") and ".tmp-" in folder.name:
        return folder.with_name(folder.name[1:].rsplit(".tmp-", 1)[0])
    return folder


def run_of(folder: str | Path) -> str | None:
    """The id of the run that sealed ``folder`` (None: no manifest of this module's format)."""
    try:
        manifest = read_manifest(Path(folder))
    except MvqError:
        return None
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return None
    run = manifest.get("run")
    return run if isinstance(run, str) else None


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None for a folder written before manifests (or not a
    checkpoint)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    fix = "use an earlier checkpoint or train again"
    manifest = read_json(path)
    step, files = manifest.get("step"), manifest.get("files")
    entries = files.items() if isinstance(files, dict) else ()
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not entries or not all(
            _manifest_entry(name, entry) for name, entry in entries):
        raise MvqError(f"{path} is damaged (expected {{step: N >= 0, files: {{name: {{bytes, "
                       f"sha256}}}}}} naming files of its own folder); {fix}")
    return manifest


def _manifest_entry(name, entry) -> bool:
    """True when a manifest entry names a plain file of its folder with a size and a sha256."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and "/" not in name
            and os.sep not in name and "\0" not in name and isinstance(entry, dict)
            and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
            and entry["bytes"] >= 0 and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64)


class Unverified(MvqError):
    """A folder whose files no manifest vouches for (none, or one that does not list them)."""


def verify(folder: str | Path, needs: tuple[str, ...] = (), optional: tuple[str, ...] = ()
           ) -> None:
    """MvqError naming the file unless every file the manifest lists is whole and unchanged
    (the model card, which people edit, aside; files named in ``optional`` may be absent, e.g.
    a training state a download left out); `Unverified` when there is no manifest or
    it does not list each of ``needs``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise Unverified(f"{path} is not a file: nothing vouches for the files of {folder}")
    manifest = read_manifest(folder)
    if manifest is None:
        raise Unverified(f"{folder} has no {MANIFEST}: nothing vouches for its files (a "
                         "folder written before manifests, or one whose manifest was removed)")
    for name, want in manifest["files"].items():
        if name == CARD:
            continue
        path = folder / name
        if name in optional and not (path.exists() or path.is_symlink()):
            continue
        if not path.is_file():
            raise MvqError(f"{path} is missing: the checkpoint is incomplete")
        if path.stat().st_size != want["bytes"] or file_sha256(path) != want["sha256"]:
            raise MvqError(f"{path} is damaged (size or sha256 differs from {MANIFEST}, which "
                           "was written with it); use an earlier checkpoint or train again")
    if unlisted := [n for n in needs if n not in manifest["files"]]:
        raise Unverified(f"{folder / MANIFEST} does not list {', '.join(unlisted)}: those files "
                         "are not verified (mvq lists every file it writes)")


def _step_of(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, None for anything else."""
    try:
        manifest = read_manifest(folder)
    except MvqError:
        return None
    if manifest is not None:
        files = manifest["files"]
        whole = all((folder / n).is_file() and (n == CARD or (folder / n).stat().st_size
                                                   == f["bytes"]) for n, f in files.items())
        return int(manifest["step"]) if whole else None
    try:  # a checkpoint from before manifests
        return int(json.loads((folder / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _retired_name(target: Path, step: int, k: int = 0) -> Path:
    """Where ``target`` at ``step`` is retired: ``target-NNNNNN``, ``target-NNNNNN-K`` when
    that name is taken by something mvq did not write."""
    return target.with_name(f"{target.name}-{step:06d}" + (f"-{k}" if k else ""))


def retired(target: Path) -> list[Path]:
    """Earlier checkpoints kept beside ``target`` as ``target-NNNNNN[-K]``: complete
    checkpoints whose name is their own step's (a user's ``checkpoint-5`` is none of them)."""
    found = []
    for p in target.parent.glob(f"{target.name}-*"):
        step_k = p.name[len(target.name) + 1:].split("-")
        if (p.is_dir() and not p.is_symlink() and len(step_k) <= 2
                and all(x.isdigit() for x in step_k)):
            step = _step_of(p)
            k = int(step_k[1]) if len(step_k) == 2 else 0
            if step is not None and p == _retired_name(target, step, k):
                found.append((step, k, p))
    return [p for _, _, p in sorted(found)]


def latest(target: str | Path) -> Path | None:
    """The newest complete checkpoint among ``target`` and its retired copies (None: none)."""
    target = Path(target)
    found = [(step, i, p) for i, p in enumerate([*retired(target), target])
             if p.is_dir() and (step := _step_of(p)) is not None]
    return max(found)[2] if found else None


def remove_all(target: str | Path) -> None:
    """Delete ``target``, its retired copies and unfinished writes (a run started over): only
    the files a checkpoint writer wrote; a folder holding anything else is refused first."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and _step_of(target) is None):
        raise MvqError(f"{target} exists but is not an mvq checkpoint; move it away")
    if target.exists() and (other := _foreign(target)):
        raise MvqError(f"{target} holds files mvq did not write there ({', '.join(other[:3])}); "
                       "move them out of the folder, then run again")
    for p in [target, *retired(target)]:
        _remove(p)
    remove_unfinished(target)


def remove_unfinished(target: str | Path) -> None:
    """Delete the hidden folders of checkpoint writes that a killed run left behind (only
    folders this module marked as being written or sealed)."""
    for p in Path(target).parent.glob(f".{Path(target).name}.tmp-*"):
        if p.is_dir() and not p.is_symlink() and ((p / WRITING).is_file() or run_of(p)
                                                  or not any(p.iterdir())):
            shutil.rmtree(p)  # marked while written, sealed (not yet renamed) or still empty


def _own_files(folder: Path) -> list[str]:
    """The files a checkpoint writer put in ``folder``: its manifest's list, else the standard
    names (a checkpoint from before manifests)."""
    try:
        manifest = read_manifest(folder)
    except MvqError:
        manifest = None
    names = list(manifest["files"]) if manifest is not None else list(CHECKPOINT_FILES)
    return [*names, MANIFEST]


def _foreign(folder: Path) -> list[str]:
    """Names in ``folder`` that no checkpoint writer put there (e.g. a user's notes)."""
    own = set(_own_files(folder))
    return sorted(p.name for p in folder.iterdir() if p.name not in own)


def _remove(folder: Path) -> bool:
    """Delete the checkpoint files in ``folder``, then the folder when nothing else is left in
    it; returns whether the folder is gone. Files mvq did not write stay."""
    if not folder.is_dir() or folder.is_symlink():
        return not folder.exists()
    own = _own_files(folder)
    (folder / MANIFEST).unlink(missing_ok=True)  # first: a half-deleted folder is incomplete
    for name in own:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    try:
        folder.rmdir()
    except OSError:  # something else lives there: not ours to delete
        return False
    return True


@contextmanager
def writing(target: str | Path, step: int, keep: int = 1, run: str | None = None):
    """Yield a fresh empty folder; after the block, seal it (manifest with ``run``, the writing
    run's id) and swap it in as ``target``. The previous ``target`` is retired as
    ``target-<its step>``; of the checkpoints ``run`` sealed, the ``keep`` newest stay and older
    ones are deleted (folders of other runs, or of nobody, are never deleted). ``run`` None:
    the run of the present ``target`` (a fresh id when there is none). On any error the new
    folder is removed and ``target`` is as before."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    run = run or run_of(target) or new_run_id()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    (tmp / WRITING).touch()
    try:
        yield tmp
        _write_manifest(tmp, step, run)
        (tmp / WRITING).unlink()
        if target.exists() or target.is_symlink():
            old = None if target.is_symlink() else _step_of(target)
            if old is None:  # never made by this module: not ours to replace
                raise MvqError(f"{target} exists but is not an mvq checkpoint; move it away")
            k, gone = 0, _retired_name(target, old)
            while gone.exists() or gone.is_symlink():
                # the same step saved again
                if gone in retired(target) and run_of(gone) == run and _remove(gone):
                    break
                k, gone = k + 1, _retired_name(target, old, k + 1)  # a name not ours: keep it
            os.rename(target, gone)
        if os.environ.get(SLOW_WRITE_ENV):  # the widest gap: no folder named `target` now
            time.sleep(float(os.environ[SLOW_WRITE_ENV]))
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:  # a JSON file or a rename on a full disk
        need = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()) + (1 << 16)
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(target, err, need) from None
    except MvqError as err:  # name the checkpoint, not the hidden folder just removed
        shutil.rmtree(tmp, ignore_errors=True)
        if str(tmp) not in str(err):
            raise
        raise type(err)(str(err).replace(str(tmp), str(target))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ours = [p for p in retired(target) if run_of(p) == run]
    for old in ours[: max(0, len(ours) - (keep - 1))]:
        _remove(old)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; MvqError naming the file when it is not one (malformed,
    nested too deeply, not UTF-8, or not an object)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise MvqError(f"{path} is missing") from None
    except OSError as err:
        raise MvqError(f"{path} cannot be read ({err.strerror})") from None
    return loads_object(text, str(path), "the checkpoint is damaged: use an earlier one or "
                        "train again")
