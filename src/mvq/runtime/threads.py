"""How many CPU threads mvq gives torch.

``mvq --threads N`` wins; otherwise ``OMP_NUM_THREADS`` when it is set; otherwise torch's default
(one thread per physical core) shared fairly among the mvq processes already running here.
Training results depend on the thread count (CPU kernels sum in another order), so a training
run records its count in config.json and a resumed run takes it again (`resume_threads`):
an exact resume does not depend on what else runs on the machine.
Two runs that each take every core make both wait on each other's threads: on a 2-core machine
two default ``mvq train`` runs took 3.3x the time of one alone with 2 threads each, 1.6x with one
thread each (`mvq bench concurrent-train` measures it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _is_mvq(argv: list[str]) -> bool:
    """True for ``python -m mvq ...`` and the ``mvq`` console script (not torchrun's launcher,
    whose own module comes first)."""
    if len(argv) >= 2 and Path(argv[1]).name == "mvq" and Path(argv[0]).name.startswith("python"):
        return True
    if argv and Path(argv[0]).name == "mvq":
        return True
    if "-m" in argv:
        i = argv.index("-m")
        return i + 1 < len(argv) and argv[i + 1] == "mvq"
    return False


def running_mvq_processes() -> int:
    """mvq processes on this machine, this one included (Linux /proc; 1 where unreadable)."""
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 1
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            raw = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if _is_mvq(raw.decode(errors="replace").split("\0")[:-1] if raw else []):
            count += 1
    return max(1, count)


def default_threads(env: dict[str, str] | None = None) -> tuple[int, str]:
    """(threads, why) when ``--threads`` is not given."""
    env = os.environ if env is None else env
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    base = torch.get_num_threads()
    runs = running_mvq_processes()
    if runs == 1:
        return base, "torch default"
    return max(1, base // runs), f"torch default {base} shared by {runs} mvq processes"


_chosen: tuple[int, str] | None = None  # what configure_threads set, and why


def configure_threads(requested: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads; returns (threads, why)."""
    global _chosen
    threads, why = (requested, "--threads") if requested else default_threads()
    torch.set_num_threads(threads)
    _chosen = (threads, why)
    return threads, why


def resume_threads(recorded: object) -> tuple[int, str | None]:
    """(threads, note) for resuming a run that recorded ``recorded`` threads: the run's own
    count, unless ``--threads`` asked for another (then the note warns that the weights will
    differ from an uninterrupted run's); a note too when the run recorded none."""
    now = torch.get_num_threads()
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
        return now, (f"the run did not record its thread count; resuming with {now}: if it "
                     "trained with another count, the weights will differ from an uninterrupted "
                     "run's (--threads N sets it)")
    if recorded == now:
        return now, None
    if _chosen is not None and _chosen[1] == "--threads":
        return now, (f"the run trained with {recorded} threads, --threads gives {now}: the "
                     "weights will differ from an uninterrupted run's (drop --threads to resume "
                     "exactly)")
    why = f" ({_chosen[1]})" if _chosen is not None else ""
    return recorded, (f"resuming with the run's own {recorded} threads, not {now}{why}, so that "
                      "it continues exactly")
