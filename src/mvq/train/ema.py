"""EMA weights: an exponential moving average of a model's trained parameters.

``ema = d_t * ema + (1 - d_t) * w`` after optimizer step t = 0, 1, ..., starting from the
initial weights, with the usual warm-up ``d_t = min(decay, (1 + t) / (10 + t))`` (as
tf.train.ExponentialMovingAverage's num_updates): early on the average forgets the random
initial weights quickly, and it settles at ``decay`` only after ~10 / (1 - decay) steps.
Only parameters the optimizer trains are averaged; everything else (the EMA codebooks,
which are averages already, code counts, BatchNorm statistics) is copied from the live model
when the average is used. So the averaged encoder and decoder meet the codebook that
followed the trained encoder: a trade-off that pays off once training has settled (long runs),
not while the weights still move fast.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mvq.errors import MvqError


def check_decay(decay: float) -> None:
    if not 0.0 < decay < 1.0:
        raise MvqError(f"train.ema_decay must be in (0, 1) (or 0 for no EMA weights), got {decay}")


class WeightEMA:
    """An averaged copy of ``model`` (in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        check_decay(decay)
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        live = dict(model.named_parameters())
        self._pairs = [(p, live[name]) for name, p in self.model.named_parameters()
                       if live[name].requires_grad]
        averaged = {id(p) for p, _ in self._pairs}
        self._copied = [name for name, t in self.model.state_dict(keep_vars=True).items()
                        if id(t) not in averaged]  # taken from the live model when used

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the live weights after optimizer step ``step`` (0-based)."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for avg, w in self._pairs:
            avg.lerp_(w.detach().to(avg.dtype), 1.0 - d)

    @torch.no_grad()
    def synced(self, model: nn.Module) -> nn.Module:
        """The averaged model with every tensor that is not averaged taken from ``model``."""
        own, live = self.model.state_dict(keep_vars=True), model.state_dict()
        for name in self._copied:
            own[name].data.copy_(live[name])
        return self.model
