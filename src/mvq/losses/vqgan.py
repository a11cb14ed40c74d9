"""VQGAN training objective: reconstruction + LPIPS + PatchGAN hinge loss with adaptive weight.

Generator side (`VQGANLoss.forward`), images x and recon in [0, 1]::

    nll   = rec_weight * rec(x, recon) + perceptual_weight * LPIPS(x, recon)
    g_adv = -mean(D(recon))
    loss  = nll + disc_factor * [step >= disc_start] * lambda * g_adv
            + quant_weight * (quantizer terms)
    lambda = disc_weight * clamp(||d nll / d w_last|| / (||d g_adv / d w_last|| + eps), 0, max)

``rec`` is L1 (or squared error) on the networks' [-1, 1] scale, as in taming-transformers
(twice the [0, 1] L1). ``w_last`` is the decoder's output-layer weight; lambda is detached.
Before ``disc_start`` the discriminator is not even run (no BatchNorm statistics change) and the
adversarial term is 0. During the generator pass the discriminator's parameters are frozen, so no
gradient accumulates in them.

Discriminator side (`VQGANLoss.discriminator_step`), run with its own optimizer::

    d_loss = disc_factor * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(sg[recon]))))

Before ``disc_start`` it returns a zero loss and does not touch the discriminator.

LPIPS comes from `mvq.metrics.LPIPS` (offline weights). AlexNet LPIPS needs images of at
least 32 px; smaller pairs are bilinearly resized to ``lpips_min_size`` first (as ``evaluate``
does), which is exact for >= 32 px inputs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from mvq.configuration.sections import VQGANLossConfig
from mvq.metrics.perceptual import LPIPS
from mvq.runtime import distributed


# ----------------------------------------------------------------------------- discriminator
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming): a stack of 4x4 convs, stride 2, LeakyReLU 0.2.

    ``n_layers`` stride-2 convs (width ch, 2ch, 4ch, ... capped at 8ch), then a stride-1 conv and
    a stride-1 conv to one channel: (B, C, s, s) -> (B, 1, s', s') logits, one per patch.
    norm: 'batch' (BatchNorm after every conv but the first and last) or 'none'.
    Input images on the [-1, 1] scale. Needs s >= `min_input_size`.
    """

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"disc norm must be 'batch' or 'none', got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"discriminator n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        use_bias = norm == "none"

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=use_bias)]
            if norm == "batch":
                mods.append(nn.BatchNorm2d(c_out))
            return mods + [nn.LeakyReLU(0.2, inplace=True)]

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ch
        for n in range(1, n_layers):
            layers += block(c, ch * min(2 ** n, 8), 2)
            c = ch * min(2 ** n, 8)
        layers += block(c, ch * min(2 ** n_layers, 8), 1)
        layers.append(nn.Conv2d(ch * min(2 ** n_layers, 8), 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DCGAN init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        for _ in range(self.n_layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2  # two stride-1 4x4 convs with padding 1

    def min_input_size(self) -> int:
        size = 1
        while self.output_size(size) < 1:
            size += 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(self.output_size(x.shape[-2]), self.output_size(x.shape[-1])) < 1:
            raise ValueError(
                f"PatchDiscriminator with n_layers={self.n_layers} needs images of at least "
                f"{self.min_input_size()} px, got {tuple(x.shape[-2:])}: lower disc_layers"
            )
        return self.net(x)


# ----------------------------------------------------------------------------- loss pieces
def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def vanilla_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(softplus(-real)) + mean(softplus(fake))): the non-saturating GAN loss."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake))."""
    return -fake_logits.mean()


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """||d nll / d w|| / (||d g / d w|| + eps), clamped to [0, max_weight], detached.

    Both graphs are kept (``retain_graph``) for the caller's backward.
    """
    nll_grad, = torch.autograd.grad(nll_loss, last_layer_weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    if distributed.world_size() > 1:  # the global batch's gradients, as DDP's backward sees them
        both = distributed.all_reduce_sum_(torch.stack([nll_grad, g_grad]))
        both /= distributed.world_size()
        nll_grad, g_grad = both[0], both[1]
    return (nll_grad.norm() / (g_grad.norm() + eps)).clamp(0.0, max_weight).detach()


@contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` do not require grad inside the block (inputs still get grads)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def find_last_layer(model: nn.Module) -> torch.Tensor:
    """Weight of a tokenizer's output layer: ``model.last_layer`` if it has one, else the last
    conv (or transposed conv) of ``model.decoder`` (the vqvae2 decoders end in one)."""
    last = getattr(model, "last_layer", None)
    if isinstance(last, torch.Tensor):
        return last
    decoder = getattr(model, "decoder", model)
    convs = [m for m in decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        raise ValueError(f"no conv layer found in {type(decoder).__name__}")
    return convs[-1].weight


def in_dtype_of(module: nn.Module, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``images`` in the dtype of ``module``'s parameters (gradients flow through the cast).

    The tokenizer's output may come in another precision than the loss's networks (a
    ``train.precision=bf16`` forward under autocast, a tokenizer cast with ``.to(dtype)``,
    a loss cast with ``.double()``): each network sees its own dtype; under autocast the
    cast changes nothing autocast would not."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return images
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in images)


# ----------------------------------------------------------------------------- the loss
class VQGANLoss(nn.Module):
    """Reconstruction + LPIPS + PatchGAN (hinge) with taming's adaptive generator weight.

    ``self.discriminator`` holds the only trainable parameters: give
    ``loss.discriminator.parameters()`` to a separate optimizer. (The LPIPS net is a frozen
    submodule; checkpoint ``loss.discriminator.state_dict()``, not the whole module.)
    ``lpips``: an already built `mvq.metrics.LPIPS` to share (default: build one).
    """

    def __init__(self, image_channels: int = 3, cfg: VQGANLossConfig | None = None,
                 lpips: nn.Module | None = None, **overrides) -> None:
        super().__init__()
        cfg = cfg or VQGANLossConfig()
        if overrides:
            cfg = VQGANLossConfig(**{**asdict(cfg), **overrides})
        if cfg.rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {cfg.rec_loss!r}")
        if cfg.disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss must be one of {', '.join(D_LOSSES)}, "
                             f"got {cfg.disc_loss!r}")
        self.cfg = cfg
        self.discriminator = PatchDiscriminator(image_channels, cfg.disc_channels,
                                                cfg.disc_layers, cfg.disc_norm)
        self.d_loss_fn = D_LOSSES[cfg.disc_loss]
        self.lpips = None
        if cfg.perceptual_weight > 0:
            self.lpips = lpips if lpips is not None else LPIPS(cfg.lpips_net)

    disc_start = property(lambda self: self.cfg.disc_start)

    def disc_active(self, step: int) -> bool:
        return step >= self.cfg.disc_start and self.cfg.disc_factor > 0

    # ------------------------------------------------------------- pieces
    def reconstruction(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        diff = (2 * recon - 1) - (2 * x - 1)
        return diff.abs().mean() if self.cfg.rec_loss == "l1" else diff.pow(2).mean()

    def perceptual(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over the batch (inputs in [0, 1]; resized up below lpips_min_size)."""
        if self.lpips is None:
            return x.new_zeros(())
        side = min(x.shape[-2:])
        if side < self.cfg.lpips_min_size:
            scale = self.cfg.lpips_min_size / side
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            recon = F.interpolate(recon, size=size, mode="bilinear", align_corners=False)
        return self.lpips(*in_dtype_of(self.lpips, x, recon)).mean()

    # ------------------------------------------------------------- generator side
    def forward(self, x: torch.Tensor, recon: torch.Tensor, step: int,
                last_layer: torch.Tensor | None = None,
                quant_losses: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator loss. x, recon: (B, C, H, W) in [0, 1] (recon not clamped).

        last_layer: decoder output weight for the adaptive weight; None = fixed ``disc_weight``.
        Without autograd (validation) the adaptive weight cannot be computed and is 0.
        quant_losses: the tokenizer's quantizer terms (e.g. {'vq': ..., 'mhd': ...}), added
        times ``quant_weight``.
        Returns (loss, logs): logs holds detached scalars 'rec', 'perceptual', 'nll', 'g_adv',
        'd_weight', 'disc_factor', 'total' and every quantizer term.
        """
        cfg = self.cfg
        x, recon = in_dtype_of(self.discriminator, x, recon)
        rec = self.reconstruction(x, recon)
        perc = self.perceptual(x, recon)
        nll = cfg.rec_weight * rec + cfg.perceptual_weight * perc
        zero = rec.new_zeros(())
        g_adv, d_weight, factor = zero, zero, 0.0
        if self.disc_active(step):
            factor = cfg.disc_factor
            with frozen(self.discriminator):
                g_adv = generator_adv_loss(self.discriminator(2 * recon - 1))
            if last_layer is None:
                d_weight = zero + cfg.disc_weight
            elif torch.is_grad_enabled() and nll.requires_grad and g_adv.requires_grad:
                d_weight = cfg.disc_weight * adaptive_weight(
                    nll, g_adv, last_layer, cfg.max_adaptive_weight, cfg.adaptive_eps)
        quant = dict(quant_losses or {})
        loss = nll + factor * d_weight * g_adv
        for value in quant.values():
            loss = loss + cfg.quant_weight * value
        logs = {"rec": rec, "perceptual": perc, "nll": nll, "g_adv": g_adv,
                "d_weight": d_weight, "disc_factor": zero + factor, **quant, "total": loss}
        return loss, {k: v.detach() for k, v in logs.items()}

    def tokenizer_loss(self, x: torch.Tensor, out, step: int,
                       last_layer: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator loss for a ``TokenizerOutput``: its 'rec' (MSE) is replaced by this
        loss's reconstruction + LPIPS + GAN terms; its other terms are the quantizer terms."""
        quant = {k: v for k, v in out.losses.items() if k != "rec"}
        return self(x, out.recon, step, last_layer, quant)

    # ------------------------------------------------------------- discriminator side
    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, step: int
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss on real images and (detached) reconstructions, both in [0, 1].

        Before ``disc_start`` returns a zero loss (backward-able, no gradient reaches the
        discriminator) without running it. Logs 'd_loss', 'logits_real', 'logits_fake'.
        """
        if not self.disc_active(step):
            zero = torch.zeros((), device=real.device, requires_grad=True)
            return zero, {"d_loss": zero.detach(), "logits_real": zero.detach(),
                          "logits_fake": zero.detach()}
        real, fake = in_dtype_of(self.discriminator, real.detach(), fake.detach())
        logits_real = self.discriminator(2 * real - 1)
        logits_fake = self.discriminator(2 * fake - 1)
        loss = self.cfg.disc_factor * self.d_loss_fn(logits_real, logits_fake)
        return loss, {"d_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean()}


def build_vqgan_loss(image_channels: int, cfg: VQGANLossConfig | None = None,
                     **overrides) -> VQGANLoss:
    return VQGANLoss(image_channels, cfg, **overrides)
