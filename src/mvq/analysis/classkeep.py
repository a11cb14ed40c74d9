"""Does a transfer keep the target's class? (measured, beyond the MVQ paper)

A small CNN classifier is trained on the checkpoint's training images. Each test image i gives
its masked configuration (e'_i, m_i) to a target t(i), the next test image of another class;
the transfer D(e_t + f(e'_i * m_i)) is classified. Reported: how often the prediction is the
target's class (kept), the source's class (taken over), and, as the ceiling, the classifier's
accuracy on the test images and on the targets' own reconstructions.

    python -m mvq.analysis.classkeep --checkpoint runs/demo/mvqvae/checkpoint --n 1000
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from mvq.analysis import codes as C
from mvq.codes import Codes


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


def split_images(cfg, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mvq.data import build_dataset

    ds = build_dataset(cfg.data.name, root=cfg.data.root, split=split, size=cfg.model.image_size,
                       channels=cfg.model.channels, limit=n)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mvq.analysis.classkeep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--steps", type=int, default=600, help="classifier steps (default 600)")
    args = p.parse_args(argv)
    model, cfg = C.load_mvq(args.checkpoint)
    net = train_classifier(*split_images(cfg, "train", args.train), steps=args.steps)
    x, y = split_images(cfg, "test", args.n)
    result = {"checkpoint": args.checkpoint, "train_images": args.train,
              "classifier_steps": args.steps, **class_keeping(model, net, x, y, targets_of(y))}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
