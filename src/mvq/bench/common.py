"""What the benchmarks share: argument types checked at the door (so a bad ``--json`` path or
``--lengths`` fails before minutes of measuring, not after), timing side by side, the fp32
GEMM peak of this run and atomic JSON output."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mvq.configuration.config import check_writable
from mvq.errors import MvqError
from mvq.files.outputs import write_text
from mvq.values.argtypes import positive_int


def json_path(text: str) -> Path:
    """``--json PATH``: a file that can be written (not a folder), checked before measuring."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name such as "
                                         f"{path / 'bench.json'}")
    try:
        check_writable(path.parent if str(path.parent) else Path("."), "--json folder")
    except MvqError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return path


def positive_ints(text: str) -> list[int]:
    """``1,4,16``: a comma-separated list of integers >= 1 (each as argtypes.positive_int)."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, such as "
                                         f"1,4,16; found {text!r}") from None


def write_json(path: Path | None, data: object) -> None:
    if path is not None:
        write_text(path, json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def side_by_side(steps: dict[str, Callable[[], object]], repeats: int,
                 budget: float = 30.0) -> dict[str, float]:
    """Median seconds of each step; one warm-up each, then rounds that run every step once in
    turn (a slow minute of a shared machine hits all of them), stopping early once the rounds
    took ``budget`` seconds (at least 3 rounds)."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    for done in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if done >= 2 and time.perf_counter() - start > budget:
            break
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def gemm_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a (size x size) @ (size x size) product on this machine, now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = side_by_side({"gemm": lambda: a @ b}, repeats)["gemm"]
    return 2 * size**3 / seconds / 1e9
