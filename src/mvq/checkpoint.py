"""Checkpoints: a folder of config.json + model.safetensors (+ train_state.safetensors).

Nothing here unpickles: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import mvq
from mvq.config import Config, config_from_dict, config_to_dict
from mvq.errors import MvqError

FORMAT = "mvq-checkpoint-v1"


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, cfg: Config, step: int,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]] | None = None
                    ) -> Path:
    """Write model (and optionally optimizer + RNG state) to ``directory``.

    ``aux``: other modules with their optimizers (e.g. the GAN discriminator; None for a module
    without one, e.g. the raw weights behind EMA weights), kept in the training state so that
    a resumed run continues exactly.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save(model.state_dict(), directory / "model.safetensors")
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        metadata = {"optimizer": json.dumps(meta)}
        for name, (module, opt) in (aux or {}).items():
            tensors.update({f"aux.{name}.{k}": v for k, v in module.state_dict().items()})
            metadata[f"module.{name}"] = "1"
            if opt is not None:
                opt_tensors, opt_meta = _flatten_optimizer(opt)
                tensors.update({f"auxopt.{name}.{k}": v for k, v in opt_tensors.items()})
                metadata[f"optimizer.{name}"] = json.dumps(opt_meta)
        _atomic_save(tensors, directory / "train_state.safetensors", metadata=metadata)
    info = {"format": FORMAT, "mvq_version": mvq.__version__, "kind": "tokenizer",
            "model_type": cfg.model.type, "step": step, "config": config_to_dict(cfg),
            **(extra or {})}
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, directory / "config.json")
    return directory


def read_info(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise MvqError(f"checkpoint folder not found: {directory} (expected a folder written by `mvq train`)")
    path = directory / "config.json"
    if not path.is_file() or not (directory / "model.safetensors").is_file():
        raise MvqError(f"{directory} is not an mvq checkpoint: it needs config.json and model.safetensors")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MvqError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if info.get("format") != FORMAT:
        raise MvqError(f"{path} has format {info.get('format')!r}, expected {FORMAT!r}")
    return info


def load_tokenizer(directory: str | Path, expect_type: str | None = None, device: str = "cpu"):
    """Rebuild the tokenizer of a checkpoint; returns (model, cfg, info)."""
    from mvq.models import build_model

    info = read_info(directory)
    if expect_type is not None and info["model_type"] != expect_type:
        raise MvqError(f"{directory} holds a {info['model_type']} checkpoint, expected {expect_type}")
    cfg = config_from_dict(info["config"])
    model = build_model(cfg.model)
    state = load_file(str(Path(directory) / "model.safetensors"), device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MvqError(f"{directory}: weights do not fit a {cfg.model.type} built from its config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device), cfg, info


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer,
                     aux: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer | None]] | None = None
                     ) -> None:
    path = Path(directory) / "train_state.safetensors"
    if not path.is_file():
        raise MvqError(f"cannot resume: {path} is missing (the checkpoint has no training state)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    torch.set_rng_state(tensors.pop("rng.torch"))
    for name, (module, opt) in (aux or {}).items():
        if f"optimizer.{name}" not in metadata and (opt is not None
                                                     or f"module.{name}" not in metadata):
            raise MvqError(f"cannot resume: {path} has no state for the {name}")
        mod_prefix, opt_prefix = f"aux.{name}.", f"auxopt.{name}."
        module.load_state_dict({k[len(mod_prefix):]: v for k, v in tensors.items() if k.startswith(mod_prefix)})
        if opt is not None:
            opt_tensors = {k[len(opt_prefix):]: v for k, v in tensors.items() if k.startswith(opt_prefix)}
            opt.load_state_dict(_unflatten_optimizer(opt_tensors, json.loads(metadata[f"optimizer.{name}"])))
    own = {k: v for k, v in tensors.items() if k.startswith("state.")}
    optimizer.load_state_dict(_unflatten_optimizer(own, json.loads(metadata["optimizer"])))


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
