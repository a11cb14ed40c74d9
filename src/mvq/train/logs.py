"""A run's logs, written by rank 0: ``metrics.csv`` and TensorBoard event files in
``OUT_DIR/tb`` (``tensorboard --logdir runs`` shows the losses, validation metrics and the
validation image grids)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

from mvq.files.outputs import atomic_write


class CsvLog:
    """metrics.csv. On resume, rows past the resumed step (logged by a run killed after its
    last checkpoint) are dropped, so the log matches the trajectory that continues."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None) -> None:
        kept = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if _int(r.get("step")) <= resume_step]

        def start(tmp: Path) -> None:  # whole, or the old log stays
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(path, start)
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return sys.maxsize


class RunLog:
    """The CSV log plus TensorBoard scalars (``train/<term>``, ``val/<metric>``) and images.
    Without the tensorboard package only the CSV is written."""

    def __init__(self, out_dir: Path, fields: list[str], resume_step: int | None) -> None:
        self.csv = CsvLog(out_dir / "metrics.csv", fields, resume_step)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the CSV is the log
            return
        # on resume, events a killed run logged past its checkpoint are hidden (purge_step)
        self.tb = SummaryWriter(str(out_dir / "tb"), flush_secs=10,
                                purge_step=None if resume_step is None else resume_step + 1)

    def write(self, row: dict) -> None:
        self.csv.write(row)
        if self.tb is None:
            return
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.tb.add_scalar(tag, value, step)

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        """``grids``: name -> uint8 (H, W, 3) image."""
        if self.tb is not None:
            for name, grid in grids.items():
                self.tb.add_image(f"val/{name}", grid, step, dataformats="HWC")

    def close(self) -> None:
        self.csv.close()
        if self.tb is not None:
            self.tb.close()
