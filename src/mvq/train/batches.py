"""Step-seeded batches: the items of step s are a pure function of (seed, s), so a run resumed
at any step draws the batches an uninterrupted run draws there (tests/test_train.py,
tests/test_faults.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatches:
    """Item indices for step s: a slice of a per-epoch permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)
                 ) -> None:
        """shard (rank, world): this rank's share of every batch, items rank, rank + world, ..."""
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = shard
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world]


class StepSampler:
    """The batch sampler of steps ``start`` .. ``stop - 1``: each step's item indices (a list,
    as `torch.utils.data.DataLoader`'s ``batch_sampler`` takes them), in step order. The
    indices are a pure function of (seed, step), so a run resumed at ``start`` draws the
    batches an uninterrupted run draws there."""

    def __init__(self, batches: StepBatches, start: int, stop: int) -> None:
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.batches(step).tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
