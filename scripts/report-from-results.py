"""Write a committed report again from its own results.json, for the reports made before
`mvq reproduce --keep` existed (movq-table2, pixelcnn-vs-gpt: their run folders are gone and
their records were not kept). Every row's figures are the ones results.json holds; the table,
the comparisons (with today's statistics) and the notes are today's code's.

    .venv/bin/python scripts/report-from-results.py docs/results/movq-table2 [OUT_FOLDER]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mvq.reproduce import build_plan
from mvq.reproduce.records import from_json
from mvq.reproduce.report import write_report


def main(folder: str, out: str | None = None) -> int:
    source = Path(folder)
    data = json.loads((source / "results.json").read_text())
    target = Path(out) if out else source
    if target != source:
        target.mkdir(parents=True, exist_ok=True)
        if (source / "estimates.json").exists():
            shutil.copy(source / "estimates.json", target / "estimates.json")
    plan = build_plan(data["experiment"], data["scale"])
    written = write_report(plan, [from_json(r) for r in data["runs"]], target, data["missing"])
    print(f"{target}: {len(written['runs'])} rows, {len(written['comparisons'])} comparisons")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
