"""The train / eval switch of a module for the length of a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``module.train(training)`` inside the block; the module's own mode (``module.training``)
    comes back afterwards, also when the block raises."""
    was = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was)


def eval_mode(module: nn.Module):
    """``with eval_mode(model):`` dropout off, BatchNorm on its running statistics, codebooks
    not updated; the previous mode restored on exit."""
    return mode(module, False)
