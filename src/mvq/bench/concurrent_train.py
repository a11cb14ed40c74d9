"""Two `mvq train` runs started together vs one alone, each with mvq's default thread policy.

Times one short training run alone, then --jobs runs started at the same moment, each a
separate process with OMP_NUM_THREADS removed from its environment (so mvq's default applies:
torch's default threads shared among the mvq processes running, see src/mvq/runtime/threads.py), and
prints each concurrent run's time over the lone run's. The goal (issue 13): every concurrent run
at most 2.5x the lone one on a 2-core machine. --threads N passes `mvq --threads N` to every run
instead, to compare a fixed policy.

    python -m mvq.bench.concurrent_train [--quick] [--steps 150] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = "shapes_f8_k16_quick"  # a shipped preset that needs no data set installed
GOAL = 2.5


def train_command(out_dir: Path, steps: int, threads: int | None) -> list[str]:
    """One short CPU training run that validates and checkpoints once, at the end."""
    cmd = [sys.executable, "-m", "mvq"] + (["--threads", str(threads)] if threads else [])
    return cmd + ["train", "--config", CONFIG, "--no-progress", f"train.out_dir={out_dir}",
                  f"train.steps={steps}", f"train.val_every={steps}", f"train.ckpt_every={steps}",
                  f"train.log_every={steps}", "data.val_limit=64", "data.train_limit=512",
                  "train.device=cpu"]


def run_together(commands: list[list[str]]) -> list[tuple[float, float]]:
    """Start every command at once; (wall seconds, CPU seconds) of each. CPU time that grows
    when runs share the machine means threads spinning against each other; wall time alone
    growing means waiting for a core."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=log)
                 for c in commands]
        times = {}
        while len(times) < len(procs):
            pid, status, usage = os.wait4(-1, 0)
            if pid not in {p.pid for p in procs}:
                continue
            if os.waitstatus_to_exitcode(status):
                log.seek(0)
                raise SystemExit(f"a training run failed:\n{log.read().decode()[-2000:]}")
            times[pid] = (time.perf_counter() - start, usage.ru_utime + usage.ru_stime)
        for p in procs:
            p.returncode = 0  # reaped above
    return [times[p.pid] for p in procs]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150, help="training steps of each run")
    ap.add_argument("--jobs", type=int, default=2, help="runs started together")
    ap.add_argument("--threads", type=int, help="give every run `mvq --threads N`")
    ap.add_argument("--quick", action="store_true", help="20 steps")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    steps = 20 if args.quick else args.steps
    with tempfile.TemporaryDirectory(prefix="mvq-concurrent-") as tmp:
        (alone, alone_cpu), = run_together([train_command(Path(tmp, "alone"), steps, args.threads)])
        together = run_together([train_command(Path(tmp, f"job{i}"), steps, args.threads)
                                 for i in range(args.jobs)])
    ratios = [t / alone for t, _ in together]
    policy = f"--threads {args.threads}" if args.threads else "default thread policy"
    print(f"mvq train, {steps} steps, {policy}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine counts):")
    print(f"  alone:            {alone:6.1f} s wall, {alone_cpu:6.1f} s CPU")
    for i, ((t, cpu), r) in enumerate(zip(together, ratios)):
        print(f"  together, run {i}: {t:6.1f} s wall, {cpu:6.1f} s CPU = {r:.2f}x alone")
    verdict = "within" if max(ratios) <= GOAL else "ABOVE"
    print(f"worst ratio {max(ratios):.2f}x: {verdict} the {GOAL}x goal")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"steps": steps, "jobs": args.jobs, "threads": args.threads, "alone_s": alone,
             "alone_cpu_s": alone_cpu, "together_s": [t for t, _ in together],
             "together_cpu_s": [c for _, c in together], "ratios": ratios, "goal": GOAL},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
