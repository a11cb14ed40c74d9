"""Plain dataclass configs, loaded from YAML with `section.key=value` overrides.

Unknown keys are errors (a typo must not silently train the default model). The resolved config
is saved as JSON beside every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mvq import presets
from mvq.devices import check_device
from mvq.errors import MvqError
from mvq.fields import ANY, Range, at_least, build_checked, one_of, positive, unit_interval

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
    ema: bool = True  # EMA codebooks: gradient codebooks make MVQ diverge (docs/architecture.md)
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


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    grad_clip: float = 0.0  # 0 = off
    # autocast of the networks: fp32 (off), bf16 (CPU or GPU), fp16 (GPU only, with a gradient
    # scaler); the quantizers' distances, codebooks and losses stay fp32 whatever is chosen
    precision: str = "fp32"
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


_COMMON_MODEL = {
    "image_size": at_least(1), "channels": at_least(1), "codebook_size": at_least(1),
    "beta": at_least(0), "decay": unit_interval(), "type": one_of(*MODEL_TYPES),
}

# Every int/float key of every section has an entry (tests/test_robust_inputs.py checks it);
# ANY marks keys where every value of the type is valid (seeds).
RANGES: dict[str, dict[str, Range]] = {
    "ModelConfig": {
        **_COMMON_MODEL, "factor": at_least(1), "dim": at_least(1), "dim2": at_least(1),
        "hidden": at_least(1), "res_blocks": at_least(0), "res_channels": at_least(1),
        "num_masks": at_least(1), "eval_masks": at_least(0), "chunk_size": at_least(1),
        "search_seed": ANY,
    },
    "MoVQConfig": {
        **_COMMON_MODEL, "ch": at_least(1), "ch_mult": at_least(1), "num_res_blocks": at_least(1),
        "attn_resolutions": at_least(1), "dropout": unit_interval(), "num_groups": at_least(1),
        "z_channels": at_least(1), "code_dim": at_least(1), "num_channels": at_least(1),
        "fourier_frequencies": at_least(1), "fourier_sigma": positive(),
    },
    "DataConfig": {"train_limit": at_least(1), "val_limit": at_least(0)},  # val_limit 0 = all
    "TrainConfig": {
        "steps": at_least(1), "batch_size": at_least(1), "lr": positive(),
        "betas": unit_interval(), "seed": ANY, "grad_clip": at_least(0), "num_workers": at_least(0),
        "log_every": at_least(1), "val_every": at_least(1), "ckpt_every": at_least(1),
        "grid_images": at_least(1), "disc_lr": at_least(0), "ema_decay": unit_interval(),
        "keep_checkpoints": at_least(1), "precision": one_of(*PRECISIONS),
    },
    "VQGANLossConfig": {
        "disc_start": at_least(0), "disc_weight": at_least(0), "disc_factor": at_least(0),
        "disc_layers": at_least(1), "disc_channels": at_least(1), "disc_norm": one_of("batch", "none"),
        "disc_loss": one_of("hinge", "vanilla"), "perceptual_weight": at_least(0),
        "lpips_net": one_of("alex", "vgg"), "lpips_min_size": at_least(1),
        "rec_loss": one_of("l1", "l2"), "rec_weight": at_least(0), "quant_weight": at_least(0),
        "max_adaptive_weight": positive(), "adaptive_eps": positive(),
    },
}


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


def _ranges(cls) -> dict[str, Range]:
    """The range table of a config class (by name: MoVQConfig and VQGANLossConfig live elsewhere)."""
    return RANGES[cls.__name__]


def _build(cls, values: dict, where: str):
    return build_checked(cls, values, where, _ranges(cls))


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
    data = _upgrade(data)
    for name in classes:
        if not isinstance(data.get(name) or {}, dict):
            raise MvqError(f"config section '{name}' must be a mapping of key: value, found "
                           f"{data[name]!r}; write it as {name}: {{key: value, ...}}")
    return Config(**{name: _build(cls, data.get(name) or {}, name) for name, cls in classes.items()})


def _upgrade(data: dict) -> dict:
    """Configs written by earlier versions: ``train.amp`` (true: fp16 autocast on CUDA) became
    ``train.precision``."""
    train = data.get("train")
    if not isinstance(train, dict) or "amp" not in train:
        return data
    train = dict(train)
    amp = train.pop("amp")
    if amp is True and "precision" not in train:
        train["precision"] = "fp16"
    elif amp not in (True, False, None):
        raise MvqError(f"train.amp is {amp!r}: it is replaced by train.precision "
                       f"({', '.join(PRECISIONS)})")
    return {**data, "train": train}


def check_section(section, where: str):
    """A config section built in Python (``ModelConfig(...)``, ``MoVQConfig(...)``, ...) coerced
    and range-checked exactly as a loaded one is; returns the checked copy, or MvqError."""
    return _build(type(section), json.loads(json.dumps(asdict(section))), where)


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


def resolve_config(ref: str | Path) -> Path:
    """The YAML file that ``ref`` names: an existing file, else a shipped preset (``NAME`` or
    ``NAME.yaml``, see ``mvq presets``); MvqError naming both choices otherwise."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.name == str(ref) and presets.is_preset(path.name):
        return presets.path(path.name)
    if presets.is_preset(path.stem):
        raise MvqError(f"config file not found: {ref}; the preset of that name is shipped with "
                       f"mvq: use --config {path.stem}")
    near = [n for n in presets.names() if n.startswith(path.stem.split("_")[0])] or presets.names()
    raise MvqError(f"config {str(ref)!r} is neither a file nor a preset; presets "
                   f"(`mvq presets`): {', '.join(near)}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """A checked Config from a preset name or YAML file (``None``: the defaults), then
    ``section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = resolve_config(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MvqError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return config_from_dict(apply_overrides(data, overrides or []))


# Keys a resumed run may change: applied from the resumed step on (a new train.lr is set in the
# restored optimizer) and logged. Every other key is fixed for the run's life (the model, the
# data and its order, the seed, the loss): a different value on --resume is refused.
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "train.lr", "train.disc_lr", "train.grad_clip", "train.precision",
    "train.device", "train.num_workers", "train.log_every", "train.val_every", "train.ckpt_every",
    "train.keep_checkpoints", "train.grid_images", "train.out_dir", "data.root",
})


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(key, old value, new value) for every key of two nested config dicts that differs
    (``prefix``: prepended to the keys), a ``type`` key first."""
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k != "type", k)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            out += changed_keys(a or {}, b or {}, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def check_resume(changes: list[tuple[str, object, object]], may_change, where: str,
                 fresh: str) -> list[tuple[str, object, object]]:
    """The ``changes`` (key, run's value, new value) a resume may make (``may_change``: their
    keys); MvqError naming the first fixed one. ``fresh``: how to start a new run instead."""
    for key, old, new in changes:
        if key not in may_change:
            raise MvqError(f"cannot resume {where}: {key} is fixed for a run's life; the run has "
                           f"{old!r}, this command gives {new!r}; drop that setting, or {fresh}")
    return changes


def resume_changes(saved: Config, new: Config, where: str) -> list[tuple[str, object, object]]:
    """The keys in which ``new`` differs from the resumed run's ``saved`` config, all of them in
    RESUME_MAY_CHANGE (MvqError naming a fixed one, with both values)."""
    changes = [c for c in changed_keys(config_to_dict(saved), config_to_dict(new))
               if not (c[0] == "train.out_dir" and Path(c[1] or "") == Path(c[2] or ""))]
    return check_resume(changes, RESUME_MAY_CHANGE, where,
                        "start a new run (--overwrite, or another train.out_dir)")


def model_hash(model: ModelConfig) -> str:
    """Short hash of the architecture config (tags codes and token files)."""
    blob = json.dumps(asdict(model), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """MvqError unless files can be created in ``folder`` (or, when it does not exist yet, in the
    nearest existing folder above it). Probes with a temporary file, removed at once; creates
    nothing that stays (os.access is no test for root)."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise MvqError(f"{what} {path} cannot be created: {probe} is a file, not a folder; "
                       "choose another path")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise MvqError(f"{what} {path} is not writable ({err.strerror} in {probe}); choose a "
                       "folder you can write to") from None


def check_ready(cfg: Config) -> None:
    """Checks run before training writes anything: every key's type and range (also for a
    Config built in Python), the device exists, the data set name is known and
    ``train.out_dir`` is writable."""
    from mvq.data import canonical_name

    config_from_dict(config_to_dict(cfg))  # a Config built in Python gets the loaded one's checks
    check_device(cfg.train.device)
    canonical_name(cfg.data.name)
    if not cfg.train.out_dir.strip():
        raise MvqError("train.out_dir is empty: set train.out_dir=FOLDER")
    check_writable(cfg.train.out_dir, "train.out_dir")
