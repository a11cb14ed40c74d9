"""Checkpoints: a folder of config.json + model.safetensors (+ train_state.safetensors) +
manifest.json.

All-or-nothing: a checkpoint is written into a fresh hidden folder beside its target, its
manifest (step, size and sha256 of every file) is written last, and only then is the folder
renamed into place. A folder named ``checkpoint`` is therefore always complete; a kill leaves at
worst a hidden ``.checkpoint.tmp-*`` folder (removed by the next run) or, between the two
renames of a swap, the previous checkpoint under its retired name ``checkpoint-NNNNNN``, which
:func:`latest` finds. Loading checks the manifest, so a damaged file is named, not used.

Nothing here unpickles: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from mvq._version import __version__
from mvq.config import Config, config_to_dict
from mvq.errors import MvqError
from mvq.jsonio import loads_object
from mvq.outputs import CHECKPOINT_FILES, save_safetensors, write_failure

FORMAT = "mvq-checkpoint-v1"  # tokenizers
PRIOR_FORMAT = "mvq-prior-v1"  # priors
CARD = "README.md"  # the model card beside the weights
KIND_OF_FORMAT = {FORMAT: "tokenizer", PRIOR_FORMAT: "prior"}  # config.json "format" -> kind
MANIFEST = "manifest.json"
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


class NonFiniteError(MvqError):
    """Weights or optimizer state hold NaN or Inf: the model diverged."""


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Write ``tensors`` as safetensors, refusing non-finite floats (a diverged model is never
    written: the last finite checkpoint stays the one that is kept)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"non-finite values in {k}: {path.name} not written")
        out[k] = v
    save_safetensors(out, path, metadata)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        files[p.name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": MANIFEST_FORMAT, "run": run, "step": step, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _fsync_dir(folder)


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


def verify(folder: str | Path) -> None:
    """MvqError naming the file unless every file the manifest lists is whole and unchanged."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return  # written by mvq before manifests: nothing to check against
    for name, want in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise MvqError(f"{path} is missing: the checkpoint is incomplete")
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            raise MvqError(f"{path} is damaged (size or sha256 differs from {MANIFEST}, which "
                           "was written with it); use an earlier checkpoint or train again")


def _step_of(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, None for anything else."""
    try:
        manifest = read_manifest(folder)
    except MvqError:
        return None
    if manifest is not None:
        files = manifest["files"]
        whole = all((folder / n).is_file() and (folder / n).stat().st_size == f["bytes"]
                    for n, f in files.items())
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


def describe(source: str | Path) -> tuple[str | None, str]:
    """(kind, words) of the complete checkpoint ``source``: kind "tokenizer" or "prior" (None:
    neither), words for messages, e.g. "a prior run (gpt, checkpoint at step 40)"."""
    try:
        info = read_json(Path(source) / "config.json")
    except MvqError:
        return None, f"an unreadable checkpoint ({Path(source) / 'config.json'})"
    kind = KIND_OF_FORMAT.get(info.get("format"))
    if kind is None:
        return None, f"a checkpoint of format {info.get('format')!r}, which mvq does not write"
    name = info.get("model_type") if kind == "tokenizer" else info.get("prior_type", "gpt")
    return kind, f"a {kind} run ({name}, checkpoint at step {info.get('step', '?')})"


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


# --- tokenizer checkpoints -----------------------------------------------------------------

def write_model(directory: Path, model: torch.nn.Module, info: dict) -> None:
    """The one writer of a model folder's contents (no swap, no manifest: see ``writing``):
    model.safetensors, config.json (``info``) and the model card README.md."""
    save_tensors(model.state_dict(), directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(info, indent=2))
    (directory / CARD).write_text(model_card(info))


def write_tokenizer(directory: Path, model: torch.nn.Module, cfg: Config, step: int,
                    extra: dict | None = None) -> None:
    """A tokenizer's model.safetensors + config.json + card into ``directory``."""
    write_model(directory, model, tokenizer_info(cfg, step, extra))


def tokenizer_info(cfg: Config, step: int, extra: dict | None = None) -> dict:
    """config.json of a tokenizer: what it is, the config that rebuilds it, its step."""
    return {"format": FORMAT, "mvq_version": __version__, "kind": "tokenizer",
            "model_type": cfg.model.type, "step": step, "config": config_to_dict(cfg),
            **(extra or {})}


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                              for k, v in rows.items()])


def model_card(info: dict) -> str:
    """The model card (README.md) of a saved model: what it is, how to load it, its config, the
    data and steps it was trained on and the metrics measured then."""
    kind = info.get("kind", "tokenizer")
    what = info.get("model_type") or info.get("prior_type", "")
    lines = ["---", "library_name: mvq", f"tags: [mvq, {kind}, {what}]", "---", "",
             f"# mvq {kind}: {what}", "",
             "Load it with mvq (`pip install mvq`):", "", "```python", "import mvq",
             'model = mvq.load("THIS_FOLDER")  # eval mode', "```", ""]
    config = info.get("config") or info.get("prior") or {}
    train = (config.get("train") or {}) if kind == "tokenizer" else (info.get("train") or {})
    if kind == "tokenizer":
        data = config.get("data") or {}
        lines += ["## Training", "", f"- data: {data.get('name', '?')} at "
                  f"{config.get('model', {}).get('image_size', '?')} px",
                  f"- steps: {info.get('step', 0)} (batch {train.get('batch_size', '?')}, "
                  f"seed {train.get('seed', '?')})", ""]
    else:
        tokens = info.get("tokens") or {}
        lines += ["## Training", "", f"- tokens: {tokens.get('path', '?')}",
                  f"- tokenizer config hash: {info.get('tokenizer_config_hash', '?')}",
                  f"- steps: {info.get('step', 0)} (batch {train.get('batch_size', '?')}, "
                  f"seed {train.get('seed', '?')})", ""]
    metrics = info.get("metrics") or {}
    lines += ["## Metrics at this step (validation split)", "",
              _table(metrics) if metrics else "none recorded (not trained by mvq)", "",
              "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, cfg: Config, step: int,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]
                    | None = None,
                    keep: int = 1) -> Path:
    """Write model (and optionally optimizer + RNG state) as the checkpoint ``directory``.

    ``aux``: other modules with their optimizers (e.g. the GAN discriminator; None for a module
    without one, e.g. the raw weights behind EMA weights), kept in the training state so that
    a resumed run continues exactly.
    """
    directory = Path(directory)
    with writing(directory, step, keep) as tmp:
        write_tokenizer(tmp, model, cfg, step, extra)
        if optimizer is not None:
            save_train_state(tmp, optimizer, aux)
    return directory


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


def read_info(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise MvqError(f"checkpoint folder not found: {directory} "
                       "(expected a folder written by `mvq train`)")
    path = directory / "config.json"
    if not path.is_file() or not (directory / "model.safetensors").is_file():
        raise MvqError(f"{directory} is not an mvq checkpoint: "
                       "it needs config.json and model.safetensors")
    info = read_json(path)
    if info.get("format") != FORMAT:
        raise MvqError(f"{path} has format {info.get('format')!r:.80}, expected {FORMAT!r}")
    if not isinstance(info.get("config"), dict):
        raise MvqError(f"{path} holds no config section (a mapping of the run's settings): the "
                       "checkpoint is damaged; use an earlier one or train again")
    return info


def load_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; MvqError naming the file when it is not one."""
    try:
        tensors = load_file(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise MvqError(f"{path} is damaged or not a safetensors file ({err})") from None
    for name, t in tensors.items():  # mvq never writes these (save_tensors refuses them)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MvqError(f"{path} holds NaN or infinite values in {name}: the weights are "
                           "damaged or diverged; use an earlier checkpoint or train again")
    return tensors


def fit_weights(module: torch.nn.Module, state: dict, directory: Path, what: str) -> None:
    """Load ``state`` into ``module``; MvqError when names or shapes do not fit its config."""
    if hasattr(module, "upgrade_state_dict"):  # names of weights saved by earlier versions
        state = module.upgrade_state_dict(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (config: {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise MvqError(f"{directory}: weights do not fit a {what} built from its config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]}, "
                       f"other shape {wrong[:3]})")
    module.load_state_dict(state)


def tensors_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes, values): names the exact tokenizer
    weights a token file and the prior trained on it came from."""
    from mvq.metrics.weights import state_dict_sha256

    # under the names the weights had when the hash was first recorded, so a rename of a
    # module (E' moving into the MVQ layer) does not orphan token files and priors
    legacy = getattr(module, "legacy_state_dict", None)
    return state_dict_sha256(legacy() if legacy else module.state_dict())


# --- training state: optimizers, extra modules, RNG ----------------------------------------

def save_train_state(directory: Path, optimizer: torch.optim.Optimizer,
                     aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]] | None
                     = None) -> None:
    """train_state.safetensors: the optimizer, ``aux`` modules + optimizers, and the RNG states
    (CPU, and every CUDA device when CUDA is in use: MH-Dropout masks and code restarts draw
    from them, so a resumed run draws the same)."""
    tensors, meta = _flatten_optimizer(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    metadata = {"optimizer": json.dumps(meta)}
    for name, (module, opt) in (aux or {}).items():
        tensors.update({f"aux.{name}.{k}": v for k, v in module.state_dict().items()})
        metadata[f"module.{name}"] = "1"
        if opt is not None:
            opt_tensors, opt_meta = _flatten_optimizer(opt)
            tensors.update({f"auxopt.{name}.{k}": v for k, v in opt_tensors.items()})
            metadata[f"optimizer.{name}"] = json.dumps(opt_meta)
    save_tensors(tensors, directory / "train_state.safetensors", metadata=metadata)


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer,
                     aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]
                     | None = None
                     ) -> None:
    path = Path(directory) / "train_state.safetensors"
    if not path.is_file():
        raise MvqError(f"cannot resume: {path} is missing (the checkpoint has no training state)")
    from safetensors import safe_open

    tensors = load_weights(path)
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available():
        for key in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(tensors[key], int(key[9:]))
    for name, (module, opt) in (aux or {}).items():
        if f"optimizer.{name}" not in metadata and (opt is not None
                                                     or f"module.{name}" not in metadata):
            raise MvqError(f"cannot resume: {path} has no state for the {name}")
        mod_prefix, opt_prefix = f"aux.{name}.", f"auxopt.{name}."
        module.load_state_dict({k[len(mod_prefix):]: v for k, v in tensors.items()
                                if k.startswith(mod_prefix)})
        if opt is not None:
            opt_tensors = {k[len(opt_prefix):]: v for k, v in tensors.items()
                           if k.startswith(opt_prefix)}
            opt.load_state_dict(_unflatten_optimizer(opt_tensors,
                                                     json.loads(metadata[f"optimizer.{name}"])))
    own = {k: v for k, v in tensors.items() if k.startswith("state.")}
    optimizer.load_state_dict(_unflatten_optimizer(own, json.loads(metadata["optimizer"])))
    _check_optimizer_fits(optimizer, path)


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """MvqError when restored per-parameter state does not match its parameter's shape (a
    training state written for another arrangement of the model's parameters)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise MvqError(f"cannot resume: {path} holds optimizer state {key} of shape "
                                   f"{tuple(value.shape)} for a parameter of shape "
                                   f"{tuple(p.shape)} (written by another mvq version); load "
                                   "the weights with mvq.load or train again")


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
