"""Plain dataclass configs, loaded from YAML with `section.key=value` overrides.

Unknown keys are errors (a typo must not silently train the default model). The resolved config
is saved as JSON beside every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mvq import presets
from mvq.configuration.choice import quantizer_picks_type
from mvq.configuration.sections import (
    GAN_TYPES,
    MASK_TYPES,
    MODEL_TYPES,
    PRECISIONS,
    QUANTIZER_TYPES,
    RANGES,
    DataConfig,
    ModelConfig,
    ModelType,
    MoVQConfig,
    TrainConfig,
    VQGANLossConfig,
    model_type,
)
from mvq.data import canonical_name
from mvq.errors import MvqError
from mvq.quantize.registry import DEFAULT as DEFAULT_QUANTIZER
from mvq.quantize.registry import (
    FAMILIES,
    FAMILY_FIELDS,
    family,
    secondary_family,
    secondary_sizes,
)
from mvq.runtime.devices import check_device, pick_device
from mvq.runtime.memory import check_fits
from mvq.values.codes import MAX_CODEBOOK
from mvq.values.fields import Range, build_checked

# the section classes and tables are defined in mvq.configuration.sections, re-exported here
__all__ = [
    "GAN_TYPES", "MASK_TYPES", "MODEL_TYPES", "PRECISIONS", "QUANTIZER_TYPES", "RANGES",
    "RESUME_MAY_CHANGE", "Config", "DataConfig", "ModelConfig", "ModelType", "MoVQConfig",
    "TrainConfig", "VQGANLossConfig",
    "apply_overrides", "changed_keys", "check_model", "check_ready", "check_resume",
    "check_section", "check_training_sizes", "check_writable", "codebook_sizes",
    "config_from_dict", "config_to_dict", "load_config", "model_hash", "model_record",
    "model_type",
    "resolve_config",
    "resume_changes",
]
from mvq.files.yamlio import parse_yaml, read_mapping


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # or its type's section (MoVQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # VQGANLossConfig (GAN types)
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "loss": None}


def _ranges(cls) -> dict[str, Range]:
    """The range table of a config section class (mvq.configuration.sections.RANGES, by class
    name)."""
    return RANGES[cls.__name__]


def _build(cls, values: dict, where: str):
    return build_checked(cls, values, where, _ranges(cls))


def codebook_sizes(model) -> list[int]:
    """Entries per codebook of a model config, as its type's record says (`ModelType`): [K]
    for one-codebook models (the quantizer family's K on the one-level backbone), [K/2, K/2]
    for the two-codebook ones (the paper's convention: K is the total)."""
    k, kind = model.codebook_size, model_type(model.type)
    if kind.quantizer:
        return [family(model.quantizer).codebook_size(model)]
    if kind.masks:  # the secondary code's K': K/2, or an FSQ / LFQ secondary's implicit codes
        return [k // 2, secondary_sizes(model)[1]]
    return [k] if kind.codebooks == 1 else [k // 2, k // 2]


def _check_quantizer(model) -> None:
    """The quantizer family's keys: only the chosen family's may leave their defaults (another
    family's key would be silently ignored), the family's own checks, and a codebook a token
    file can hold."""
    chosen = family(getattr(model, "quantizer", DEFAULT_QUANTIZER))
    picks = model_type(model.type).quantizer
    if not picks and chosen.name != DEFAULT_QUANTIZER:
        raise MvqError(f"model.quantizer={chosen.name} needs the one-level backbone: set "
                       f"model.type={' or '.join(QUANTIZER_TYPES)} (model.type={model.type} has "
                       f"its own quantizers)")
    defaults = ModelConfig()
    second = _check_secondary(model, defaults)
    if not picks:  # the two-level types build their own quantizers, which read none of these
        for key in sorted(chosen.fields):
            if getattr(model, key, getattr(defaults, key)) != getattr(defaults, key):
                raise MvqError(f"model.{key} is a key of model.quantizer={chosen.name} on the "
                               f"one-level backbone (model.type={' or '.join(QUANTIZER_TYPES)}); "
                               f"model.type={model.type} builds its own quantizers: drop it")
    reads = chosen.reads() | (second.reads() if second.secondary is not None else set())
    for key in sorted(FAMILY_FIELDS - reads):
        if hasattr(model, key) and getattr(model, key) != getattr(defaults, key):
            owners = " or ".join(f.name for f in FAMILIES.values() if key in f.fields)
            if not picks:
                seconds = [f.name for f in FAMILIES.values()
                           if key in f.fields and f.secondary is not None]
                also = (f", or set model.secondary={' or '.join(seconds)} (MVQ's masked "
                        "secondary code)" if seconds and model_type(model.type).masks else "")
                raise MvqError(f"model.{key} is a key of model.quantizer={owners}, not read by "
                               f"model.type={model.type} (it builds its own quantizers): drop "
                               f"it{also}")
            raise MvqError(f"model.{key} is not read by model.quantizer={chosen.name}; drop it, "
                           f"or choose the quantizer it belongs to ({owners}; `mvq quantizers`)")
    if picks:
        chosen.check(model)
        k = chosen.codebook_size(model)
        if k > MAX_CODEBOOK:
            raise MvqError(f"model.quantizer={chosen.name} with these keys has {k} codes, more "
                           f"than the {MAX_CODEBOOK} a token file holds; choose fewer")


def _check_secondary(model, defaults: ModelConfig):
    """``model.secondary``: only masked types have one; an FSQ / LFQ secondary sets D' to its
    channels (so ``dim2`` stays at its default) and has codes a token file can hold. Returns
    its family."""
    second = secondary_family(getattr(model, "secondary", DEFAULT_QUANTIZER))
    if second.secondary is None:
        return second
    if not model_type(model.type).masks:
        raise MvqError(f"model.secondary={second.name} is MVQ's masked secondary code: set "
                       f"model.type={' or '.join(MASK_TYPES)} (model.type={model.type} has none)")
    dim2, k2 = secondary_sizes(model)
    if model.dim2 != defaults.dim2:
        raise MvqError(f"model.dim2 is not read with model.secondary={second.name}: D' is the "
                       f"secondary code's {dim2} channels; drop model.dim2")
    if k2 > MAX_CODEBOOK:
        raise MvqError(f"model.secondary={second.name} with these keys has {k2} codes, more "
                       f"than the {MAX_CODEBOOK} a token file holds; choose fewer")
    return second


def check_model(model) -> None:
    """Checks across the model keys: the quantizer family's keys (`_check_quantizer`),
    two-codebook models split K evenly (K/2 each), and every codebook has at least two entries
    (a one-entry codebook is a 0-bit code)."""
    k, kind = model.codebook_size, model.type
    if isinstance(model, ModelConfig):
        _check_quantizer(model)
    record = model_type(kind)
    if record.quantizer:
        return
    if record.codebooks == 1:
        if k < 2:
            raise MvqError(f"model.codebook_size must be >= 2 for {kind} (one entry is a 0-bit "
                           f"code), found {k}; set model.codebook_size=16 or more")
    elif k < 4 or k % 2:
        raise MvqError(f"model.codebook_size is K, split into two codebooks of K/2 for {kind}: "
                       f"expected an even K >= 4, found {k}; set model.codebook_size="
                       f"{max(4, k + k % 2)}")


def config_from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise MvqError(f"a config must be a mapping with sections {list(_SECTIONS)}, "
                       f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise MvqError(f"unknown config section '{unknown[0]}': "
                       f"valid sections are {', '.join(_SECTIONS)}")
    for name in _SECTIONS:
        if not isinstance(data.get(name) or {}, dict):
            raise MvqError(f"config section '{name}' must be a mapping of key: value, found "
                           f"{data[name]!r:.80}; write it as {name}: {{key: value, ...}}")
    kind = model_type((data.get("model") or {}).get("type", ModelConfig.type))
    classes = {**_SECTIONS, "model": kind.section, "loss": VQGANLossConfig}
    data = _upgrade(data)
    cfg = Config(**{name: _build(cls, data.get(name) or {}, name) for name, cls in classes.items()})
    check_model(cfg.model)
    return cfg


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
    checked = _build(type(section), json.loads(json.dumps(asdict(section))), where)
    if where == "model":
        check_model(checked)
    return checked


def model_record(model) -> dict:
    """A model config as a dict, without the quantizer keys its family does not read (checked
    to be at their defaults), without its family's optional keys left at their defaults, and
    without ``quantizer`` and ``secondary`` when they are the defaults: a model of today's
    quantizers is recorded, and hashed, exactly as before families could be chosen. An FSQ /
    LFQ secondary is recorded with its keys and without ``dim2``."""
    out = asdict(model)
    if "quantizer" in out:
        chosen = family(out["quantizer"])
        defaults = asdict(ModelConfig())
        second = secondary_family(out.pop("secondary", DEFAULT_QUANTIZER))
        reads = chosen.reads()
        if second.secondary is not None:  # recorded only when not the default
            reads |= second.reads()
            out["secondary"] = second.name
            out.pop("dim2")  # D' is the secondary's channels
        for key in FAMILY_FIELDS - reads:
            out.pop(key, None)
        for key in chosen.optional:  # recorded only when set (`Family.optional`)
            if key in out and out[key] == defaults[key]:
                del out[key]
        if chosen.name == DEFAULT_QUANTIZER:
            del out["quantizer"]
    return out


def config_to_dict(cfg: Config) -> dict:
    """Plain JSON-able dict (tuples become lists); the model as `model_record`."""
    return json.loads(json.dumps({**asdict(cfg), "model": model_record(cfg.model)}))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a config dict."""
    try:
        data = json.loads(json.dumps(data))
    except (TypeError, ValueError) as err:  # YAML dates, sets, binary: no config value is one
        raise MvqError(f"a config value is not plain data ({err}); write numbers, text, "
                       "true/false or lists") from None
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise MvqError(f"override {item!r} must look like section.key=value "
                           "(e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise MvqError(f"override {item!r}: config section '{section}' is "
                           f"{type(data[section]).__name__}, not a mapping of key: value")
        data[section][name] = parse_yaml(raw, f"override {item!r}")
    return data


def resolve_config(ref: str | Path) -> Path:
    """The YAML file that ``ref`` names: a bare preset name (no folder, no suffix; see ``mvq
    presets``) is always the preset, even when a file of that name is here (said on stderr);
    else an existing file, else a preset ``NAME.yaml``; MvqError naming both choices
    otherwise."""
    path = Path(ref)
    if str(ref) == path.name and path.suffix == "" and presets.is_preset(path.name):
        if path.is_file():  # a bare name is the preset; say so when a file could be meant
            print(f"mvq: --config {ref} is the shipped preset; the file {ref} in this folder "
                  f"is not read (pass ./{ref} to use it)", file=sys.stderr)
        return presets.path(path.name)
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
    ``section.key=value`` overrides; ``model.quantizer`` may choose the type
    (`quantizer_picks_type`)."""
    data: dict = {}
    if path is not None:
        data = read_mapping(resolve_config(path), ", ".join(_SECTIONS))
    overrides = overrides or []
    return config_from_dict(quantizer_picks_type(apply_overrides(data, overrides), overrides))


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
    blob = json.dumps(model_record(model), sort_keys=True).encode()
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
    config_from_dict(config_to_dict(cfg))  # a Config built in Python gets the loaded one's checks
    check_device(cfg.train.device)
    canonical_name(cfg.data.name)
    if not cfg.train.out_dir.strip():
        raise MvqError("train.out_dir is empty: set train.out_dir=FOLDER")
    check_training_sizes(cfg)
    check_writable(cfg.train.out_dir, "train.out_dir")


def check_training_sizes(cfg: Config) -> None:
    """What training would meet only at its first step: fp16 without a GPU, a batch of one image
    (BatchNorm normalises over the batch), and MH-Dropout's J hypotheses per image exceeding
    the device's free memory."""
    device = pick_device(cfg.train.device)
    if cfg.train.precision == "fp16" and device.type != "cuda":  # before anything is written
        raise MvqError(f"train.precision=fp16 needs a CUDA GPU, this run is on {device.type}; "
                       "use train.precision=bf16 (or fp32) on a CPU")
    batch = min(cfg.train.batch_size, cfg.data.train_limit or cfg.train.batch_size)
    if batch < 2:
        raise MvqError(f"training needs batches of at least 2 images (BatchNorm normalises over "
                       f"the batch), found train.batch_size={cfg.train.batch_size}, "
                       f"train_limit={cfg.data.train_limit}; set both to 2 or more")
    m = cfg.model
    if model_type(m.type).masks:
        # torch.rand of (B, J, D') masks (4 bytes each, 1 more as bool), the J_eval bank, and
        # one chunk of f's outputs (B * chunk, D, g, g) in fp32
        grid = max(1, m.image_size // m.factor)
        chunk = min(m.chunk_size, m.num_masks)
        dim2 = secondary_sizes(m)[0]
        need = (5 * cfg.train.batch_size * m.num_masks * dim2
                + 5 * (m.eval_masks or m.num_masks) * dim2
                + 4 * 3 * cfg.train.batch_size * chunk * (dim2 + m.dim * grid * grid))
        check_fits(need, f"MH-Dropout with model.num_masks={m.num_masks} (J), "
                   f"eval_masks={m.eval_masks}, chunk_size={m.chunk_size} at batch "
                   f"{cfg.train.batch_size}", "lower model.num_masks / model.chunk_size or "
                   "train.batch_size", device)
