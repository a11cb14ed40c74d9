"""How long the rest of a plan will take on this machine (issue 21); runner.estimate adds it up.

Each piece of work left (a tokenizer's training steps, its evaluation, a prior's steps, a sample
evaluation) is estimated from the seconds earlier runs in the same output folder measured for
the same work where they exist: ``run.json``'s ``train_seconds`` over the steps they timed
(``train_timed_steps``; the checkpoint's step for records made before that field),
``eval.json``'s / ``samples_*.json``'s ``seconds`` (the median over the earlier runs). Work no
earlier run measured falls back to a model of a quiet 2-core CPU. Every estimate says which of
the two it came from.

A run trained and evaluated on the CPU with one thread also records its CPU seconds
(``train_cpu_seconds``, ``eval.json``'s ``cpu_seconds``: `cpu_clock`), which is the wall time
the work takes on a core it has to itself; the estimate reads those where a run has them, so
runs measured while other processes shared the cores (their wall time stretched) do not
stretch it, and where some runs of the same work have them, it reads only those (a wall time
may have been stretched five times over by a busy machine). On a GPU, or on several threads,
the wall time is the measure.

"The same work": a tokenizer of the same model settings and batch size (any seed); its
evaluation on the same N and metrics; a prior of the same folder variant (kind, class
conditioning, sizes tag) on a tokenizer of the same model settings; its samples with the same
decoding, N and metrics.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import wait_lock, write_text
from mvq.models import MODELS, model_class
from mvq.priors.gpt import table4_size
from mvq.priors.maskgit import MaskGITConfig
from mvq.runtime.devices import pick_device

MEASURED, MODEL = "measured", "model"

# The model: seconds per training step of batch 32 on this project's 2-core CPU (measured with
# the quick presets on a quiet machine: each tokenizer class's step_seconds, per model.type;
# _OTHER_STEP_SECONDS for a type without one), per prior step of batch 64, Inception's images
# per s.
_OTHER_STEP_SECONDS = 0.3
_MASK_SECONDS = 0.00022  # per mask J per step (MH-Dropout search, F=28, batch 32)
_INCEPTION_IMAGES_PER_S = 6.0
# A transformer prior's step (batch 64) grows with the multiply-adds of its blocks per image,
# 12 L d^2 per token and layer stack (prior_work): overhead + per-unit cost, fitted to the GPT
# on hvqvae 1+1 / 4+1 tokens (0.03 / 0.13 s), the GPT on MoVQ's 196 ids (0.77 s) and MaskGIT on
# its 49 positions (0.18 s), each within 20% (measured at one thread beside a second job: a
# per-kind constant had put the MoVQ GPT at 17x too fast). The PixelCNN's convolutions: flat.
_PRIOR_OVERHEAD_SECONDS = 0.02
_PRIOR_WORK_SECONDS = 1.9e-8
_PIXELCNN_SECONDS = 0.09


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        got = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return got if isinstance(got, dict) else {}


def latest_checkpoint(target: Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint (a tokenizer's or a prior's) under ``target`` and its
    step; (None, 0) when there is none."""
    found = sealed.latest(target)
    if found is None:
        return None, 0
    try:  # a tokenizer's or a prior's checkpoint: both record their step in config.json
        return found, int(sealed.read_json(found / "config.json").get("step", 0))
    except (MvqError, TypeError, ValueError):
        return None, 0


def tokenizer_key(model: dict, batch_size: int) -> str:
    """What a tokenizer's step costs depends on: its model settings and batch size."""
    return json.dumps({"model": model, "batch_size": batch_size}, sort_keys=True)


def prior_variant(folder: str) -> str:
    """A prior folder's name without its steps and seed: "gpt-cond_2000steps_s1" -> "gpt-cond"."""
    return re.sub(r"_\d+steps_s\d+$", "", folder)


def positive_seconds(value) -> float | None:
    """``value`` as seconds when it is a positive number (not a bool); else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


@contextmanager
def cpu_clock(device: str) -> Iterator[dict]:
    """Yields a dict that holds, once the block is done, ``cpu_seconds``: this process's CPU
    seconds in the block, when ``device`` (a ``train.device`` value) is the CPU; nothing on a
    GPU (the wall time is the measure there). Only work done on one thread is measured by
    them (the caller checks): there CPU seconds are the wall time of a core of its own, while
    on several threads a serial part would count a fraction of its length."""
    got: dict = {}
    start = time.process_time()
    yield got
    if pick_device(device).type == "cpu":
        got["cpu_seconds"] = time.process_time() - start


def checkpoint_threads(run: Path) -> int | None:
    """The torch threads the run in ``run`` last trained with (its newest checkpoint's)."""
    found, _ = latest_checkpoint(run / "checkpoint")
    if found is None:
        return None
    threads = read_json(found / "config.json").get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) else None


class Measured:
    """Seconds measured by the runs under one ``OUT/runs`` folder, by what they measured."""

    def __init__(self) -> None:
        # seconds per unit of work, and whether the CPU clock measured them
        self.values: dict[tuple, list[tuple[float, bool]]] = defaultdict(list)

    def get(self, key: tuple) -> float | None:
        """The median of the measurements of ``key``, of its CPU-clock ones where it has some;
        None when nothing measured it."""
        got = self.values.get(key, [])
        best = [v for v, cpu in got if cpu] or [v for v, _ in got]
        return statistics.median(best) if best else None

    @classmethod
    def scan(cls, *roots: Path) -> Measured:
        """Read every run folder under each of ``roots`` (``OUT/runs`` and a folder of kept
        runs, mvq.reproduce.kept: their checkpoint folders hold only config.json; unreadable
        records are skipped)."""
        found = cls()
        folders = [f for runs in roots if runs.is_dir() for f in sorted(runs.glob("*/"))]
        for folder in [f for f in folders if not f.name.startswith(".")]:  # not working folders
            cfg, step = config_and_step(folder / "checkpoint")
            if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
                continue
            tok = tokenizer_key(cfg["model"], (cfg.get("train") or {}).get("batch_size"))
            run = read_json(folder / "run.json")
            found._add(("train", tok), *_clocks(run, "train_cpu_seconds", "train_seconds"),
                       per=timed_steps(run, step))
            ev = read_json(folder / "eval.json")
            found._add(("eval", tok, ev.get("n"), _metrics(ev)),
                       *_clocks(ev, "cpu_seconds", "seconds"))
            for prior in sorted((folder / "priors").glob("*/")):
                found._add_prior(tok, prior)
        return found

    def _add_prior(self, tok: str, prior: Path) -> None:
        variant = prior_variant(prior.name)
        _, step = config_and_step(prior / "checkpoint")
        run = read_json(prior / "run.json")
        self._add(("prior", tok, variant), run.get("train_seconds"),
                  per=timed_steps(run, step))
        for path in prior.glob("samples_*.json"):
            got = read_json(path)
            self._add(("samples", tok, variant, path.name, got.get("n"), _metrics(got)),
                      got.get("seconds"))

    def _add(self, key: tuple, seconds, cpu: bool = False, per: int = 1) -> None:
        seconds = positive_seconds(seconds)
        if seconds is not None and per > 0:
            self.values[key].append((seconds / per, cpu))


def recorded_timed_steps(run: dict) -> int | None:
    """run.json's ``train_timed_steps``, the steps its seconds cover, where it is a positive
    count (None: absent or unsound; `runner._train_times` writes it)."""
    timed = run.get("train_timed_steps")
    return timed if isinstance(timed, int) and not isinstance(timed, bool) and timed > 0 \
        else None


def timed_steps(run: dict, step: int) -> int:
    """The training steps ``run`` (a run.json) timed: its ``train_timed_steps`` where it has a
    sound one (no more than the checkpoint's step), else the checkpoint's ``step`` (records
    made before that field)."""
    timed = recorded_timed_steps(run)
    return timed if timed is not None and timed <= step else step


def _clocks(record: dict, cpu_key: str, wall_key: str) -> tuple[object, bool]:
    """A record's seconds, its CPU-clock ones where it has them, and whether they are."""
    cpu = positive_seconds(record.get(cpu_key))
    return (cpu, True) if cpu is not None else (record.get(wall_key), False)


def config_and_step(target: Path) -> tuple[dict | None, int]:
    """The resolved config and step of the newest checkpoint under ``target``, or of the bare
    ``target/config.json`` a kept run holds ((None, 0) when neither is readable)."""
    ckpt, step = latest_checkpoint(target)
    info = read_json((ckpt or target) / "config.json")
    if ckpt is None:
        step = info.get("step")
        step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    cfg = info.get("config")
    return (cfg if isinstance(cfg, dict) else None), step


def _metrics(result: dict) -> tuple:
    planned = result.get("planned_metrics")
    return tuple(planned) if isinstance(planned, list) else ()


@dataclass(frozen=True)
class Part:
    """One piece of work left: its run, prior folder ("" for the tokenizer's own work), what it
    is, its estimated seconds and where that figure came from (MEASURED or MODEL)."""

    run: str
    prior: str
    what: str
    seconds: float
    source: str


@dataclass
class Estimate:
    parts: list[Part]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    def of(self, run: str, prior: str | None = None) -> list[Part]:
        """The parts of one run (``prior`` None: all of them; "": the tokenizer's own)."""
        return [p for p in self.parts if p.run == run and (prior is None or p.prior == prior)]

    def by_source(self) -> dict[str, float]:
        out = {MEASURED: 0.0, MODEL: 0.0}
        for p in self.parts:
            out[p.source] += p.seconds
        return out


def part(run: str, prior: str, what: str, count: float, measured: float | None,
         model: float) -> Part:
    """``count`` units of work at the ``measured`` seconds per unit where there are some, else at
    the ``model``'s."""
    if measured is not None:
        return Part(run, prior, what, count * measured, MEASURED)
    return Part(run, prior, what, count * model, MODEL)


def model_step_seconds(model_type: str, num_masks: int = 0) -> float:
    """The model's seconds per tokenizer training step (batch 32)."""
    cls = MODELS.get(model_type)
    step = cls.step_seconds.get(model_type, _OTHER_STEP_SECONDS) if cls else _OTHER_STEP_SECONDS
    return step + _MASK_SECONDS * num_masks


def tokens_per_image(model) -> tuple[int, int]:
    """(primary, secondary) token ids per image of a tokenizer's model section, as its model's
    ``tokens`` says (its class's ``tokens_of``), without building it."""
    return model_class(model.type).tokens_of(model)


def prior_work(kind: str, sizes, model) -> float:
    """Multiply-adds per image of the blocks of a ``kind`` prior on the tokens of ``model`` (a
    tokenizer's model section), 12 L d^2 per token per stack: the GPT's stages at ``sizes``
    ({"primary": {...}, "secondary": {...}}, default Table 4), MaskGIT's grid positions at its
    flat ``sizes`` (default MaskGITConfig's); 0 for other kinds."""
    primary, secondary = tokens_per_image(model)
    if kind == "gpt":
        stages = dict(sizes) if sizes else table4_size(primary)
        work = 12 * stages["primary"]["n_layer"] * stages["primary"]["n_embd"] ** 2 * primary
        if secondary:
            second = stages.get("secondary", stages["primary"])
            work += 12 * second["n_layer"] * second["n_embd"] ** 2 * secondary
        return float(work)
    if kind == "maskgit":
        default = {f.name: f.default for f in fields(MaskGITConfig)}
        size = {**default, **(dict(sizes) if sizes else {})}
        positions = primary // getattr(model, "num_channels", 1)
        return float(12 * size["n_layer"] * size["n_embd"] ** 2 * positions)
    return 0.0


def model_prior_step_seconds(kind: str, work: float = 0.0) -> float:
    """The model's seconds per prior training step (batch 64) of a prior whose transformer
    blocks do ``work`` multiply-adds per image (prior_work)."""
    if kind == "pixelcnn":
        return _PIXELCNN_SECONDS
    return _PRIOR_OVERHEAD_SECONDS + _PRIOR_WORK_SECONDS * work


def model_inception_seconds(n: int) -> float:
    """The model's seconds for Inception features of ``n`` images."""
    return n / _INCEPTION_IMAGES_PER_S


ESTIMATES = "estimates.json"  # in the report folder OUT/EXPERIMENT


def log_estimate(folder: Path, est: Estimate, runs_to_do: int) -> None:
    """Append the estimate printed as work starts to ``folder/estimates.json`` (a JSON list, one
    entry per start), so the report can set it beside the wall time the runs took."""
    split = est.by_source()
    entry = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs_to_do": runs_to_do,
             "seconds": round(est.seconds), "measured_seconds": round(split[MEASURED]),
             "model_seconds": round(split[MODEL])}
    folder.mkdir(parents=True, exist_ok=True)
    with wait_lock(folder / f".{ESTIMATES}.lock"):  # processes sharing a plan take turns
        write_text(folder / ESTIMATES,
                   json.dumps([*read_estimates(folder), entry], indent=2) + "\n")


def read_estimates(folder: Path) -> list[dict]:
    """The entries of ``folder/estimates.json`` ([] when there is none or it is unreadable)."""
    try:
        got = json.loads((folder / ESTIMATES).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    return [e for e in got if isinstance(e, dict)] if isinstance(got, list) else []
