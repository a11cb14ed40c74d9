"""Per-image PSNR, SSIM and MS-SSIM for batches (B, C, H, W) with values in [0, data_range].

SSIM / MS-SSIM are computed here (gaussian window, K1 = 0.01, K2 = 0.03, statistics over the
valid interior only, as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` and pytorch-msssim). torchmetrics 1.9 is not used: its SSIM
reflect-pads and averages the whole image, and sizes its gaussian from sigma (ignoring
``kernel_size``), which disagrees with scikit-image by ~1e-3 on 32x32 images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvq.errors import MvqError

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.ndim != 4:
        raise MvqError(
            f"{what}: expected two batches of one shape (B, C, H, W), found {tuple(x.shape)} and "
            f"{tuple(y.shape)}. Match the shapes (add a batch dimension for single images)."
        )
    return x.float(), y.float()


# the reports' PSNR of an exact reconstruction: 100 dB (an average over images stays finite)
MSE_FLOOR = 1e-10


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0, floor: float = 0.0) -> torch.Tensor:
    """PSNR in dB of per-image MSEs: 10 log10(data_range^2 / max(MSE, floor)). With the
    default ``floor`` 0 identical images give +inf; evaluation and training use MSE_FLOOR."""
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (B,): 10 log10(data_range^2 / MSE); +inf for identical images."""
    x, y = _check_pair(x, y, "PSNR")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return psnr_from_mse(mse, data_range).float()


def ssim_window(
    height: int, width: int, kernel_size: int = 11, sigma: float = 1.5
) -> tuple[int, float]:
    """Window actually used for an H x W image: the requested one when it fits, else the largest
    odd size that fits (>= 3) with sigma scaled by the same factor (7 px, sigma 0.95 at 8x8)."""
    fit = min(height, width, kernel_size)
    fit = fit if fit % 2 == 1 else fit - 1
    if fit < 3:
        raise MvqError(f"SSIM: expected images of at least 3x3 pixels, found {height}x{width}.")
    return (kernel_size, sigma) if fit == kernel_size else (fit, sigma * fit / kernel_size)


def _gaussian_1d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_maps(
    x: torch.Tensor, y: torch.Tensor, data_range: float, kernel_size: int, sigma: float,
    k1: float = 0.01, k2: float = 0.03,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps over the valid interior: (B, C, H-k+1, W-k+1) each."""
    c = x.shape[1]
    g = _gaussian_1d(kernel_size, sigma, x)
    wx, wy = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, valid (no padding)
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return luminance * cs, cs


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Per-image SSIM (B,) (Wang et al. 2004): gaussian window (11x11, sigma 1.5; shrunk for
    tiny images, see `ssim_window`), population statistics, mean over channels and the valid
    interior (as scikit-image ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)`` and pytorch-msssim). Computed in float64."""
    x, y = _check_pair(x, y, "SSIM")
    k, s = ssim_window(x.shape[-2], x.shape[-1], kernel_size, sigma)
    ssim_map, _ = _ssim_maps(x.double(), y.double(), data_range, k, s)
    return ssim_map.flatten(1).mean(1).float()


def ms_ssim_min_size(kernel_size: int = 11, num_scales: int = len(MS_SSIM_BETAS)) -> int:
    """Smallest H = W for which MS-SSIM with ``num_scales`` scales is defined: the coarsest scale
    (each scale halves the image) must still hold one full window (176 px for 5 scales, 11 px)."""
    return kernel_size * 2 ** (num_scales - 1)


def ms_ssim_unavailable_reason(
    height: int, width: int, kernel_size: int = 11, betas: tuple[float, ...] = MS_SSIM_BETAS
) -> str | None:
    """None when MS-SSIM is computable at this size, else a sentence saying why not."""
    need = ms_ssim_min_size(kernel_size, len(betas))
    if min(height, width) >= need:
        return None
    side = min(height, width)
    fits = [n for n in range(1, len(betas) + 1) if ms_ssim_min_size(kernel_size, n) <= side]
    hint = f"use at most {max(fits)} scales (betas)" if fits else "use a smaller kernel_size"
    return (
        f"MS-SSIM with {len(betas)} scales and a {kernel_size}px window needs images of at least "
        f"{need}x{need}, found {height}x{width}; {hint}, or report SSIM instead."
    )


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    betas: tuple[float, ...] = MS_SSIM_BETAS,
) -> torch.Tensor:
    """Per-image MS-SSIM (B,) (Wang et al. 2003; default betas are theirs).

    Scale j < n: mean contrast-structure term cs_j; last scale: mean SSIM; each clipped at 0 and
    raised to beta_j, then multiplied. Between scales: 2x2 average pooling (as pytorch-msssim).
    Raises MvqError with the reason when the images are too small (see
    `ms_ssim_unavailable_reason`)."""
    x, y = _check_pair(x, y, "MS-SSIM")
    reason = ms_ssim_unavailable_reason(x.shape[-2], x.shape[-1], kernel_size, betas)
    if reason is not None:
        raise MvqError(reason)
    x, y = x.double(), y.double()
    terms = []
    for j in range(len(betas)):
        ssim_map, cs_map = _ssim_maps(x, y, data_range, kernel_size, sigma)
        last = j == len(betas) - 1
        terms.append((ssim_map if last else cs_map).flatten(1).mean(1).clamp_min(0))
        if not last:
            pad = [s % 2 for s in x.shape[-2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    weights = torch.tensor(betas, dtype=torch.float64, device=x.device)
    return torch.prod(torch.stack(terms, 1) ** weights, dim=1).float()


def ms_ssim_or_none(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    betas: tuple[float, ...] = MS_SSIM_BETAS,
) -> tuple[torch.Tensor | None, str | None]:
    """(values (B,), None) when MS-SSIM is computable at this size, else (None, reason)."""
    reason = ms_ssim_unavailable_reason(x.shape[-2], x.shape[-1], kernel_size, betas)
    if reason is not None:
        return None, reason
    return ms_ssim(x, y, data_range, kernel_size, sigma, betas), None
