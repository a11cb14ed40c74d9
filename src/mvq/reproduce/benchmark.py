"""An experiment that is a benchmark (table6: token sampling times): no runs to train, no
`Plan`; the benchmark module's output is the report."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mvq.errors import MvqError
from mvq.files.outputs import write_text


@dataclass(frozen=True)
class Benchmark:
    """A benchmark at one scale: ``module`` (run as ``python -m``; quick: its --quick form,
    paper: one thread) writes results.json and prints the table kept in report.md;
    ``minutes``: the estimate printed before it runs."""

    experiment: str
    scale: str
    title: str
    module: str
    minutes: str

    def run(self, folder: Path, dry_run: bool) -> dict | None:
        """Run the benchmark into ``folder`` (report.md, results.json); None for a dry run."""
        args = [sys.executable, "-m", self.module, "--json", str(folder / "results.json")]
        args += ["--quick"] if self.scale == "quick" else ["--threads", "1"]
        print(f"mvq reproduce {self.experiment} --scale {self.scale}: {' '.join(args[1:])}\n"
              f"estimated {self.minutes} on a 2-core CPU", file=sys.stderr)
        if dry_run:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise MvqError(f"the benchmark {self.module} failed: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
        text = (f"# {self.title}\n\n`python {' '.join(args[1:])}`\n\n"
                f"```\n{done.stdout.rstrip()}\n```\n")
        write_text(folder / "report.md", text)
        print(text)
        return {"experiment": self.experiment, "scale": self.scale, "output": done.stdout}
