"""Multi-process data-parallel training under ``torchrun`` (plain PyTorch DDP).

``torchrun --nproc_per_node N -m mvq train ...`` starts N processes with RANK / WORLD_SIZE /
LOCAL_RANK set; `setup` joins them into one process group (NCCL on GPUs, Gloo on CPU).
Outside torchrun everything here is a no-op, so single-process code pays nothing. The
collectives run only inside `synced` (which `run`, used by mvq's training loops,
enters): a quantizer or loss used in a user's own process group, or on one rank alone, never
waits for the others.

What stays in step across ranks: the parameters (DDP averages their gradients), the EMA
codebooks (each quantizer sums its per-code counts and vector sums over all ranks before the
update, so the codebook sees the global batch) and dead-code restarts / k-means initialisation
(rank 0 draws, the others take its result).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mvq.errors import MvqError

_SYNC = False
# rank 0 validates and saves while the others wait in the next step's all-reduce: a long
# validation must not trip the collective timeout (NCCL's default is 10 minutes)
TIMEOUT = timedelta(minutes=60)


def world_size() -> int:
    """Processes that keep the model in step: the group's size inside `synced`, else 1."""
    if _SYNC and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@contextmanager
def synced():
    """Inside this block the quantizers' statistics, the GAN adaptive weight and the helpers
    below act over every rank of the default process group."""
    global _SYNC
    before, _SYNC = _SYNC, True
    try:
        yield
    finally:
        _SYNC = before


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s in place (no-op in a single process)."""
    if world_size() > 1:
        dist.broadcast(tensor, src)
    return tensor


def mean_over_ranks(values: dict, device: torch.device | str = "cpu") -> dict[str, float]:
    """Each value (a number or a one-element tensor) as a float, averaged over the ranks.

    Every rank must pass the same keys in the same order (one collective for all of them)."""
    n = world_size()
    if n == 1:
        return {k: float(v) for k, v in values.items()}
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    return dict(zip(values, (all_reduce_sum_(t) / n).tolist()))


def launched_rank() -> int:
    """RANK as torchrun set it, 0 without torchrun (only rank 0 reports to the user)."""
    return int(os.environ.get("RANK", "0") or 0)


def average_gradients_(params) -> None:
    """Mean of each parameter's gradient over the ranks (for modules not wrapped in DDP)."""
    n = world_size()
    if n == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)


@dataclass
class Launch:
    """This process's place in a torchrun launch (world 1, rank 0 when not launched)."""

    world: int = 1
    rank: int = 0
    started_group: bool = False  # we created the process group, so we also destroy it


def launched_world() -> int:
    """WORLD_SIZE as torchrun set it, 1 without torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MvqError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch "
                       "with torchrun --nproc_per_node N") from None


def setup(device: torch.device) -> tuple[Launch, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1; returns the launch and the device
    this rank trains on (cuda:LOCAL_RANK for a cuda device)."""
    world = launched_world()
    if world <= 1:
        return Launch(), device
    if not dist.is_available():
        raise MvqError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise MvqError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) "
                           "here: lower --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        started = True
    return Launch(dist.get_world_size(), dist.get_rank(), started), device


def run(device: torch.device, batch_size: int, what: str, fn):
    """``fn(launch, device)`` inside torchrun's process group (if any), which is left after.

    ``batch_size`` (named ``what`` in the error) is the global batch: it must split evenly
    over the processes; checked before anything is started or written.
    """
    world = launched_world()
    if batch_size % world:
        raise MvqError(f"{what} {batch_size} does not split over {world} processes: use a "
                       f"multiple of {world} (it is the global batch)")
    launch, device = setup(device)
    try:
        with synced():
            result = fn(launch, device)
    except BaseException:
        teardown(launch, finished=False)
        raise
    teardown(launch)
    return result


def teardown(launch: Launch, finished: bool = True) -> None:
    """Leave the process group we joined; after a finished run, wait for every rank first.
    After an error, leave at once: with Gloo the others then fail at their next collective,
    with NCCL torchrun stops them (or the collective timeout does)."""
    if launch.started_group and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
