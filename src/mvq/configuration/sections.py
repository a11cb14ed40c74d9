"""The sections of a config: one dataclass per section (tokenizer architectures, data,
training, the VQGAN loss) and the range table every int/float key is checked against.

They live here, below the models and losses that read them, so that
`mvq.configuration.config` (which loads and checks a whole config) imports no model and no
model imports the loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvq.errors import MvqError
from mvq.nn.spatial_norm import F0_KINDS
from mvq.nn.taming import SPATIAL_NORM_KINDS
from mvq.quantize.masked import MASK_SAMPLING
from mvq.quantize.registry import DEFAULT as DEFAULT_QUANTIZER
from mvq.quantize.registry import FAMILIES, SECONDARIES
from mvq.values.fields import ANY, Range, at_least, one_of, positive, unit_interval


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
    # the quantizer of the one-level backbone (type vqvae): a family of mvq.quantize.registry
    # (`mvq quantizers`); the keys below belong to one family each (mvq.quantize.families)
    quantizer: str = DEFAULT_QUANTIZER
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ's levels per channel: prod(levels) codes
    bits: int = 10  # LFQ's sign channels: 2^bits codes
    depth: int = 4  # residual VQ's stages of K entries each
    heads: int = 4  # multichannel VQ's chunks of each D-vector, one shared codebook of K
    # MVQ's secondary code (masked types): its own VQ codebook of K/2 entries of dim2 (the
    # default), or a channel-code family of mvq.quantize.registry.SECONDARIES (FSQ, LFQ), read
    # with its keys (levels, bits), whose channels the masks cover (D' = len(levels) or bits)
    secondary: str = DEFAULT_QUANTIZER
    # VQ's lookup options (vq family): a linear map down to lookup_dim before the lookup and
    # back after (0 = none), cosine lookup (l2-normalised vectors and codes), the rotation trick
    lookup_dim: int = 0
    cosine: bool = False
    rotation_trick: bool = False


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
    # MVQ's MH-Dropout hypotheses while training: J fresh masks per instance (the paper's
    # reading) or one bank of J fresh masks per step shared by the batch (a table search,
    # docs/implementation.md); models without masks ignore it
    mask_sampling: str = "instance"


@dataclass
class MoVQConfig:
    """MoVQ architecture (defaults: the paper's 256 px, f = 16, 16 x 16 x 4 tokens, K = 1024)."""

    type: str = "movq"
    image_size: int = 256
    channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # len L -> downsampling 2^(L-1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sides that get self-attention
    dropout: float = 0.0
    num_groups: int = 32  # GroupNorm groups (reduced to a divisor of tiny widths)
    z_channels: int = 256  # encoder output / decoder input width (VQGAN z_channels)
    codebook_size: int = 1024  # K, one codebook shared by the c chunks
    code_dim: int = 64  # n_q; the quantized latent has c * n_q channels
    num_channels: int = 4  # c, ids per position
    spatial_norm: str = "first3"  # none (baseline VQGAN) | first3 | all
    f0: str = "fourier"  # fourier | sinusoidal | constant | none (post_quant_conv(z_q))
    fourier_frequencies: int = 128  # Fourier F0 has 2x this many channels
    fourier_sigma: float = 1.0
    fourier_learnable: bool = True
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    restart_dead: bool = True
    kmeans_init: bool = False

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.factor

    def validate(self) -> None:
        if self.type not in types_of(MoVQConfig):
            raise MvqError(f"MoVQConfig.type must be "
                           f"{' or '.join(repr(t) for t in types_of(MoVQConfig))}, "
                           f"got {self.type!r}")
        if not self.ch_mult or self.image_size % self.factor:
            raise MvqError(f"model.image_size {self.image_size} must be divisible by the "
                           f"downsampling factor 2^(len(ch_mult)-1) = {self.factor}")
        if self.spatial_norm not in SPATIAL_NORM_KINDS:
            raise MvqError(f"model.spatial_norm must be one of {', '.join(SPATIAL_NORM_KINDS)}, "
                           f"got {self.spatial_norm!r}")
        if self.f0 not in F0_KINDS:
            raise MvqError(f"model.f0 must be one of {', '.join(F0_KINDS)}, got {self.f0!r}")
        if self.spatial_norm == "none" and self.f0 in ("sinusoidal", "constant"):
            raise MvqError(f"model.f0={self.f0!r} carries no code content, so with "
                           "spatial_norm='none' the decoder would never see the codes: use "
                           "f0='none' or 'fourier', or spatial_norm='first3'/'all'")
        for name in ("codebook_size", "code_dim", "num_channels", "ch", "z_channels",
                     "num_res_blocks", "fourier_frequencies"):
            if getattr(self, name) < 1:
                raise MvqError(f"model.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelType:
    """What the config layer knows of one ``model.type``, said once: the tokenizer class that
    builds it (`mvq.models`, above this layer) names it in its ``model_types``, and everything
    else asks this record (through `model_type`) or the class, never the name.

    name: the ``model.type`` value. section: the dataclass of its model section.
    codebooks: 1 (one codebook of ``model.codebook_size`` entries, or of the quantizer family's K
        when ``quantizer``) or 2 (two codebooks of K/2 each, the paper's convention: K is the
        total). masks: MVQ's masked secondary code (``num_masks``, ``eval_masks``,
        ``chunk_size``, ``search_seed``, ``train.mask_sampling``). gan: trained with the VQGAN
        loss (LPIPS + PatchGAN, the ``loss`` section). quantizer: the one-level backbone whose
        quantizer ``model.quantizer`` picks. unmasked: for a masked type, the same tokenizer
        without the mask (the baseline MVQ is compared against). listed_as: for a two-level
        type, its name among the quantizers (``mvq quantizers``, ``model.quantizer=NAME``
        chooses it; the GAN and non-GAN types of one name share it), with ``bits`` (per token,
        as a formula) and a one-line ``summary``.
    """

    name: str
    section: type
    codebooks: int
    masks: bool = False
    gan: bool = False
    quantizer: bool = False
    unmasked: str = ""
    listed_as: str = ""
    bits: str = ""
    summary: str = ""


_HIERARCHICAL = dict(
    listed_as="hierarchical", bits="log2(K/2), top and bottom tokens",
    summary="hierarchical VQ (VQ-VAE-2, MVQ paper A.6): a bottom code and a top code, two "
            "codebooks of K/2; model.type=hvqvae (hvqgan with the VQGAN loss)")
_MASKED = dict(
    listed_as="mvq", bits="log2(K/2) primary, log2(K') secondary",
    summary="masked VQ (MVQ): a primary code and a masked secondary code chosen by MH-Dropout "
            "over J masks; model.type=mvqvae (mvqgan with the VQGAN loss)")

# Every model.type, in the order messages list them. This is the one place below mvq.models
# that names them: a config is loaded and checked (its model section's class, its codebooks)
# before, and without, any model being imported (docs/architecture.md, Tiers).
MODEL_TYPES: dict[str, ModelType] = {t.name: t for t in (
    ModelType("vqvae", ModelConfig, codebooks=1, quantizer=True),
    ModelType("hvqvae", ModelConfig, codebooks=2, **_HIERARCHICAL),
    ModelType("mvqvae", ModelConfig, codebooks=2, masks=True, unmasked="hvqvae", **_MASKED),
    ModelType("hvqgan", ModelConfig, codebooks=2, gan=True, **_HIERARCHICAL),
    ModelType("mvqgan", ModelConfig, codebooks=2, masks=True, gan=True, unmasked="hvqgan",
              **_MASKED),
    ModelType("movq", MoVQConfig, codebooks=1, gan=True),
)}
GAN_TYPES = tuple(t for t, m in MODEL_TYPES.items() if m.gan)  # trained with the VQGAN loss
MASK_TYPES = tuple(t for t, m in MODEL_TYPES.items() if m.masks)  # MVQ's masked secondary code
# the one-level backbone whose quantizer model.quantizer picks
QUANTIZER_TYPES = tuple(t for t, m in MODEL_TYPES.items() if m.quantizer)
# the two-level tokenizers among the quantizers (`mvq quantizers`): name -> their model types
LISTED_TYPES: dict[str, tuple[ModelType, ...]] = {}
for _record in MODEL_TYPES.values():
    if _record.listed_as:
        LISTED_TYPES.setdefault(_record.listed_as, ())
        LISTED_TYPES[_record.listed_as] += (_record,)
if set(LISTED_TYPES) & set(FAMILIES):
    raise MvqError(f"a two-level model type is listed as a quantizer family's name: "
                   f"{sorted(set(LISTED_TYPES) & set(FAMILIES))}")


def model_type(name: str) -> ModelType:
    """The record of ``model.type`` ``name``; MvqError listing the types otherwise."""
    if not isinstance(name, str) or name not in MODEL_TYPES:
        raise MvqError(f"model.type must be one of {', '.join(MODEL_TYPES)}, got {name!r:.80}")
    return MODEL_TYPES[name]


def types_of(section: type) -> tuple[str, ...]:
    """The model types whose model section is the dataclass ``section``."""
    return tuple(t for t, m in MODEL_TYPES.items() if m.section is section)


@dataclass
class VQGANLossConfig:
    """Settings of `VQGANLoss` (taming defaults where they apply)."""

    disc_start: int = 10000  # generator step at which the GAN terms switch on
    disc_weight: float = 0.8  # multiplies the adaptive weight
    disc_factor: float = 1.0  # multiplies both GAN losses once active
    disc_layers: int = 3  # PatchGAN stride-2 layers (needs images >= 24 px at 3; 2 at 16 px)
    disc_channels: int = 64
    disc_norm: str = "batch"  # batch | none
    disc_loss: str = "hinge"  # hinge | vanilla
    perceptual_weight: float = 1.0  # 0 = no LPIPS (nothing loaded)
    lpips_net: str = "alex"
    lpips_min_size: int = 32  # smaller images are resized up for LPIPS (AlexNet needs 32)
    rec_loss: str = "l1"  # l1 | l2, on the [-1, 1] scale
    rec_weight: float = 1.0
    quant_weight: float = 1.0  # on the tokenizer's quantizer terms (vq, vq2, mhd)
    max_adaptive_weight: float = 1e4
    adaptive_eps: float = 1e-4


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
        "search_seed": ANY, "quantizer": one_of(*FAMILIES), "secondary": one_of(*SECONDARIES),
        **{key: rng for f in FAMILIES.values() for key, rng in f.fields.items()},
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
        "mask_sampling": one_of(*MASK_SAMPLING),
    },
    "VQGANLossConfig": {
        "disc_start": at_least(0), "disc_weight": at_least(0), "disc_factor": at_least(0),
        "disc_layers": at_least(1), "disc_channels": at_least(1),
        "disc_norm": one_of("batch", "none"),
        "disc_loss": one_of("hinge", "vanilla"), "perceptual_weight": at_least(0),
        "lpips_net": one_of("alex", "vgg"), "lpips_min_size": at_least(1),
        "rec_loss": one_of("l1", "l2"), "rec_weight": at_least(0), "quant_weight": at_least(0),
        "max_adaptive_weight": positive(), "adaptive_eps": positive(),
    },
}
