"""Rebuild kept runs (mvq.reproduce.kept) from a committed report's results.json.

Reports written before `mvq reproduce --keep` existed hold every figure of their finished
tokenizer runs (metrics, mask bits, seconds, the resolved config) but the run folders they came
from are gone. This writes, for each tokenizer run of the report whose resolved config equals the
plan's today (checked field by field, paths and device aside), the kept records the report reads:
eval.json (metrics, N, metrics planned, step), run.json (training seconds) and
checkpoint/config.json (config and step), each marked ``rebuilt_from`` the report. Runs whose
config differs, and generation rows (their records carry no tokenizer config to check), are
skipped and listed.

    .venv/bin/python scripts/keep-from-results.py docs/results/fig5/results.json docs/results/runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mvq.files.outputs import write_text
from mvq.reproduce import build_plan
from mvq.reproduce.kept import differences


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=2) + "\n")


def main(results_path: str, keep_dir: str) -> int:
    results = json.loads(Path(results_path).read_text())
    plan = build_plan(results["experiment"], results["scale"])
    runs = {r.name: r for r in plan.runs}
    keep, wrote = Path(keep_dir), 0
    for rec in results["runs"]:
        run = runs.get(rec["name"])
        if run is None or "config" not in rec:
            print(f"skipped {rec['name']}: not a tokenizer run of today's plan", file=sys.stderr)
            continue
        other = differences(rec["config"], run.config(None, keep / run.name))
        if other:
            print(f"skipped {rec['name']}: other settings than today's plan ({', '.join(other)})",
                  file=sys.stderr)
            continue
        folder = keep / run.name
        if folder.exists():
            print(f"skipped {rec['name']}: already kept in {folder}", file=sys.stderr)
            continue
        steps = rec["config"]["train"]["steps"]
        source = {"rebuilt_from": results_path}
        _write(folder / "eval.json", {"metrics": rec["metrics"], "mask_bits": rec["mask_bits"],
                                      "seconds": rec["eval_seconds"], "n": results["eval_n"],
                                      "step": steps, "planned_metrics": results["metrics"],
                                      **source})
        _write(folder / "run.json", {"train_seconds": rec["train_seconds"], **source})
        _write(folder / "checkpoint" / "config.json",
               {"format": "mvq-checkpoint-v1", "kind": "tokenizer",
                "model_type": rec["config"]["model"]["type"], "step": steps,
                "config": rec["config"], **source})
        wrote += 1
    print(f"kept {wrote} runs of {results_path} in {keep}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
