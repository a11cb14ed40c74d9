"""Plain dataclass configs, loaded from YAML with `section.key=value` overrides.

Unknown keys are errors (a typo must not silently train the default model). The resolved config
is saved as JSON beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mvq.errors import MvqError

MODEL_TYPES = ("vqvae", "hvqvae", "mvqvae", "hvqgan", "mvqgan", "movq")
GAN_TYPES = ("hvqgan", "mvqgan", "movq")  # trained with the VQGAN loss (LPIPS + PatchGAN)


@dataclass
class ModelConfig:
    """Tokenizer architecture. K = codebook_size is the total over both codebooks (K/2 each
    for hvqvae/mvqvae, the paper's convention); tokens per image follow from factor F."""

    type: str = "mvqvae"
    image_size: int = 28
    channels: int = 1
    factor: int = 28  # F = sqrt(h*w/S): 28 -> 1 primary token at 28px
    codebook_size: int = 16  # K, total entries
    dim: int = 16  # D (primary code dim)
    dim2: int = 16  # D' (secondary code dim = mask bits per secondary token)
    hidden: int = 128
    res_blocks: int = 2
    res_channels: int = 64
    beta: float = 0.25
    ema: bool = True  # EMA codebooks: gradient codebooks make MVQ diverge (DESIGN.md)
    decay: float = 0.99
    restart_dead: bool = True
    kmeans_init: bool = False
    num_masks: int = 64  # J, hypotheses per instance while training
    eval_masks: int = 0  # masks searched by encode(); 0 = num_masks
    chunk_size: int = 256  # hypotheses per chunk of the no-grad search
    search_seed: int = 0


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | cifar10 | folder | shapes
    root: str | None = None
    train_limit: int | None = None
    val_limit: int = 1000  # fixed validation subset (first N test images)


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    grad_clip: float = 0.0  # 0 = off
    amp: bool = False
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 50
    val_every: int = 500
    ckpt_every: int = 1000
    keep_checkpoints: int = 1  # the newest N checkpoints stay (older: OUT_DIR/checkpoint-NNNNNN)
    grid_images: int = 16
    out_dir: str = "runs/train"
    disc_lr: float = 0.0  # discriminator learning rate of GAN models; 0 = train.lr
    # EMA weights: validation, grids and model.safetensors use an exponential moving average of
    # the trained weights with this decay (e.g. 0.999); 0 = off, the trained weights themselves
    ema_decay: float = 0.0


def _loss_config_cls():
    from mvq.losses.vqgan import VQGANLossConfig

    return VQGANLossConfig


def _model_config_cls(model_type: str):
    if model_type == "movq":
        from mvq.models.movq import MoVQConfig

        return MoVQConfig
    return ModelConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # MoVQConfig when type is movq
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: object = field(default_factory=lambda: _loss_config_cls()())  # VQGANLossConfig (GAN types)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "loss": None}


def _build(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise MvqError(
            f"unknown config key {where}.{unknown[0]}: valid keys in '{where}' are "
            f"{', '.join(sorted(names))}"
        )
    out = cls()
    for key, value in values.items():
        default = getattr(out, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise MvqError(f"{where}.{key} must be true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            if value != int(value):
                raise MvqError(f"{where}.{key} must be an integer, got {value!r}")
            value = int(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(out, key, value)
    return out


def config_from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise MvqError(f"a config must be a mapping with sections {list(_SECTIONS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise MvqError(f"unknown config section '{unknown[0]}': valid sections are {', '.join(_SECTIONS)}")
    model_type = (data.get("model") or {}).get("type", ModelConfig.type)
    if model_type not in MODEL_TYPES:
        raise MvqError(f"model.type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    classes = {**_SECTIONS, "model": _model_config_cls(model_type), "loss": _loss_config_cls()}
    return Config(**{name: _build(cls, data.get(name) or {}, name) for name, cls in classes.items()})


def config_to_dict(cfg: Config) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a config dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise MvqError(f"override {item!r} must look like section.key=value (e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][name] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            presets = sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
            hint = f"; presets here: {', '.join(presets)}" if presets else ""
            raise MvqError(f"config file not found: {path}{hint}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MvqError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return config_from_dict(apply_overrides(data, overrides or []))


def model_hash(model: ModelConfig) -> str:
    """Short hash of the architecture config (tags codes and token files)."""
    blob = json.dumps(asdict(model), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
