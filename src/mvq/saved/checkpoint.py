"""Checkpoints: what a saved model folder holds and the one writer and readers of it.

A folder of config.json (format, kind, the config that rebuilds the model, its step) +
model.safetensors + the model card README.md (+ train_state.safetensors while training) +
manifest.json. Folders are written all-or-nothing and checked on load by `mvq.files.sealed`.

Nothing here unpickles: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mvq._version import __version__
from mvq.configuration.config import Config, config_to_dict
from mvq.errors import MvqError
from mvq.files.hashes import state_dict_sha256
from mvq.files.outputs import save_safetensors
from mvq.files.sealed import CARD, read_json, target_of, writing  # CARD: the model card

FORMAT = "mvq-checkpoint-v1"  # every saved model; config.json's "kind" says which
LEGACY_PRIOR_FORMAT = "mvq-prior-v1"  # priors saved by mvq before one format (read, not written)
TRAIN_STATE = "train_state.safetensors"  # optimizers and RNG states: what --resume reads


def kind_of(info: dict) -> str | None:
    """"tokenizer" or "prior" for a config.json that mvq wrote, None for anything else."""
    fmt = info.get("format")
    if fmt == LEGACY_PRIOR_FORMAT:
        return "prior"
    kind = info.get("kind") if fmt == FORMAT else None
    return kind if kind in ("tokenizer", "prior") else None


def expect_kind(info: dict, path: Path, kind: str) -> None:
    """MvqError unless the config.json at ``path`` is that of a saved ``kind``."""
    found = kind_of(info)
    if found != kind:
        what = (f"a {found}" if found
                else f"format {info.get('format')!r:.80}, which mvq does not write")
        raise MvqError(f"{path} holds {what}; expected a {kind} (format {FORMAT!r}, "
                       f"kind {kind!r}): pass a folder written by mvq for a {kind}")


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


def describe(source: str | Path) -> tuple[str | None, str]:
    """(kind, words) of the complete checkpoint ``source``: kind "tokenizer" or "prior" (None:
    neither), words for messages, e.g. "a prior run (gpt, checkpoint at step 40)"."""
    try:
        info = read_json(Path(source) / "config.json")
    except MvqError:
        return None, f"an unreadable checkpoint ({Path(source) / 'config.json'})"
    kind = kind_of(info)
    if kind is None:
        return None, f"a checkpoint of format {info.get('format')!r}, which mvq does not write"
    name = info.get("model_type") if kind == "tokenizer" else info.get("prior_type", "gpt")
    return kind, f"a {kind} run ({name}, checkpoint at step {info.get('step', '?')})"


# --- tokenizer checkpoints -----------------------------------------------------------------

def write_model(directory: Path, model: torch.nn.Module, info: dict,
                name: str | None = None) -> None:
    """The one writer of a model folder's contents (no swap, no manifest: see ``writing``):
    model.safetensors, config.json (``info``) and the model card README.md, whose load line
    names ``name`` (default: the folder ``directory`` is being written for)."""
    save_tensors(model.state_dict(), directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(info, indent=2))
    (directory / CARD).write_text(model_card(info, name or str(target_of(directory))))


def write_tokenizer(directory: Path, model: torch.nn.Module, cfg: Config, step: int,
                    extra: dict | None = None) -> None:
    """A tokenizer's model.safetensors + config.json + card into ``directory``."""
    write_model(directory, model, tokenizer_info(cfg, step, extra))


def tokenizer_info(cfg: Config, step: int, extra: dict | None = None) -> dict:
    """config.json of a tokenizer: what it is, the config that rebuilds it, its step."""
    return {"format": FORMAT, "mvq_version": __version__, "kind": "tokenizer",
            "model_type": cfg.model.type, "step": step, "config": config_to_dict(cfg),
            **(extra or {})}


def prior_info(kind: str, config: dict, extra: dict | None = None) -> dict:
    """config.json of a prior: its registry name (``kind``), the constructor arguments that
    rebuild it (``config``), and ``extra`` (step, training record)."""
    return {"step": 0, **(extra or {}), "format": FORMAT, "mvq_version": __version__,
            "kind": "prior", "prior_type": kind, "prior": config}


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                              for k, v in rows.items()])


# the hub's ids of the data sets mvq trains on (the others, shapes and image folders, have none)
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10"}


def _front_matter(info: dict, kind: str, what: str, data: str | None) -> list[str]:
    # data: the data set it was trained on (None: untrained, or not a tokenizer)
    """The card's YAML front matter, the hub's metadata: library, license, tags, the data set
    and the names of the metrics recorded."""
    lines = ["---", "library_name: mvq", "license: mit",
             f"tags: [{', '.join(json.dumps(str(t)) for t in ('mvq', kind, what) if t)}]"]
    if data in HUB_DATASETS:
        lines.append(f"datasets: [{json.dumps(HUB_DATASETS[data])}]")
    metrics = info.get("metrics") or {}
    if metrics:
        lines.append(f"metrics: [{', '.join(json.dumps(str(k)) for k in metrics)}]")
    return [*lines, "---", ""]


def model_card(info: dict, folder: str | None = None) -> str:
    """The model card (README.md) of a saved model: hub metadata (YAML front matter), what it
    is, how to load it (from ``folder``, as its writer named it), its config, the data and steps
    it was trained on (or that it is untrained) and the metrics measured then."""
    kind = info["kind"]
    what = str(info.get("model_type") or info.get("prior_type", ""))
    config = info.get("config") or info.get("prior") or {}
    step = info.get("step", 0)
    data = (config.get("data") or {}).get("name") if kind == "tokenizer" and step else None
    where = folder or "path/to/this/folder"
    lines = [*_front_matter(info, kind, what, data), f"# mvq {kind}: {what}", "",
             "Load it with mvq (`pip install mvq`):", "", "```python", "import mvq",
             f"model = mvq.load({json.dumps(str(where))})  # eval mode", "```", ""]
    train = (config.get("train") or {}) if kind == "tokenizer" else (info.get("train") or {})
    lines += ["## Training", ""]
    if not step:
        lines += ["Untrained: the weights are as initialised (step 0).", ""]
    elif kind == "tokenizer":
        lines += [f"- data: {data or '?'} at "
                  f"{(config.get('model') or {}).get('image_size', '?')} px",
                  f"- steps: {step} (batch {train.get('batch_size', '?')}, "
                  f"seed {train.get('seed', '?')})", ""]
    else:
        tokens = info.get("tokens") or {}
        lines += [f"- tokens: {tokens.get('path', '?')}",
                  f"- tokenizer config hash: {info.get('tokenizer_config_hash', '?')}",
                  f"- steps: {step} (batch {train.get('batch_size', '?')}, "
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
    expect_kind(info, path, "tokenizer")
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
    save_tensors(tensors, directory / TRAIN_STATE, metadata=metadata)


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer,
                     aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]]
                     | None = None
                     ) -> None:
    path = Path(directory) / TRAIN_STATE
    if not path.is_file():
        raise MvqError(f"cannot resume: {path} is missing (the checkpoint has no training state)")
    tensors = load_weights(path)
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    _check_train_state(path, tensors, metadata)
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


def _check_train_state(path: Path, tensors: dict, metadata: dict) -> None:
    """MvqError naming what is missing when ``path`` lacks what every training state mvq
    writes holds: the CPU RNG state (a uint8 vector) and the optimizer's JSON record."""
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        what = "no CPU RNG state (rng.torch)" if rng is None else "a damaged rng.torch"
    else:
        try:
            meta = json.loads(metadata["optimizer"])
            ok = isinstance(meta, dict) and {"param_groups", "scalars"} <= set(meta)
        except (KeyError, ValueError, RecursionError):
            ok = False
        if ok:
            return
        what = "no readable optimizer record (its metadata 'optimizer')"
    raise MvqError(f"cannot resume: {path} holds {what}, which mvq writes in every training "
                   "state: it is damaged or not mvq's; resume from an earlier checkpoint, load "
                   "the weights with mvq.load, or train again")


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
