"""Does a transfer keep the target's class? (measured, beyond the MVQ paper)

A small CNN classifier is trained on the checkpoint's training images. Each test image i gives
its masked configuration (e'_i, m_i) to a target t(i), the next test image of another class;
the transfer D(e_t + f(e'_i * m_i)) is classified. Reported: how often the prediction is the
target's class (kept), the source's class (taken over), and, as the ceiling, the classifier's
accuracy on the test images and on the targets' own reconstructions.

    mvq analyze --checkpoint runs/demo/mvqvae/checkpoint --what classkeep --images 1000

writes ``OUT/classkeep.json`` (`transfer_class_rates`' record).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mvq.analysis import codes as C
from mvq.data import first_images
from mvq.values.codes import Codes


def classifier(channels: int, classes: int) -> nn.Module:
    """Two conv blocks and a linear head; any image size (global average pooling)."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, classes))


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 600, batch: int = 128,
                     seed: int = 0) -> nn.Module:
    """Adam on (x (N, C, H, W) in [0, 1], y (N,) class ids); returns the net in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = classifier(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(net(x[idx] * 2 - 1), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([net(x[i : i + batch] * 2 - 1).argmax(1) for i in range(0, len(x), batch)])


def targets_of(labels: torch.Tensor) -> torch.Tensor:
    """t(i): the next index (cyclically) whose label differs from label i."""
    n = len(labels)
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        j = (i + 1) % n
        while labels[j] == labels[i] and j != i:
            j = (j + 1) % n
        out[i] = j
    return out


def _decode_all(model, codes: Codes, batch: int) -> torch.Tensor:
    return torch.cat([C.decode(model, codes[i : i + batch]).cpu()
                      for i in range(0, len(codes), batch)])


@torch.no_grad()
def ceilings(model, net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 250) -> tuple[dict, Codes]:
    """The classifier's accuracy on ``images`` and on their reconstructions through the
    tokenizer ``model`` (what anything decoded from its codes can reach); returns them and the
    images' codes."""
    dev = next(model.parameters()).device
    codes = Codes.cat([model.encode(images[i : i + batch].to(dev))
                       for i in range(0, len(images), batch)])
    rec = _decode_all(model, codes, batch)
    return {"classifier_accuracy_test": float((predict(net, images) == labels).float().mean()),
            "classifier_accuracy_reconstructions": float(
                (predict(net, rec) == labels).float().mean())}, codes


@torch.no_grad()
def class_keeping(model, net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  targets: torch.Tensor, batch: int = 250) -> dict:
    """Rates over the test images (see the module docstring); ``targets``: t(i) per image."""
    tops, codes = ceilings(model, net, images, labels, batch)
    moved = Codes(codes.primary[targets], codes.secondary, codes.mask, codes.meta)
    pred = predict(net, _decode_all(model, moved, batch))
    return {"n": len(images), **tops,
            "transfer_keeps_target_class": float((pred == labels[targets]).float().mean()),
            "transfer_takes_source_class": float((pred == labels).float().mean())}



def transfer_class_rates(checkpoint: str | Path, n: int = 1000, train_images: int = 10_000,
                         steps: int = 600, seed: int = 0) -> dict:
    """The rates of the module docstring for the MVQ tokenizer in ``checkpoint``: a classifier
    trained ``steps`` steps (seeded) on the first ``train_images`` training images, scored on
    the first ``n`` test images and their transfers."""
    model, cfg = C.load_mvq(checkpoint)
    net = train_classifier(*first_images(cfg, "train", train_images), steps=steps, seed=seed)
    x, y = first_images(cfg, "test", n)
    return {"checkpoint": str(checkpoint), "train_images": train_images,
            "classifier_steps": steps, **class_keeping(model, net, x, y, targets_of(y))}


if __name__ == "__main__":  # the former mini-CLI: say where it went
    raise SystemExit("python -m mvq.analysis.classkeep is gone: "
                     "use `mvq analyze --what classkeep --checkpoint CKPT`")
