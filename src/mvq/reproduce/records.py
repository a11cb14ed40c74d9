"""What a finished run leaves for the report, and the report's rows.

A tokenizer run leaves a `RunRecord` (its evaluation, its config; table5: its one
prior's sample metrics); the generation experiments read one `SampleRecord` per prior
and decoding. The report aggregates records into `Cell` rows (mean / std over seeds).
Each record's ``to_json`` is its entry in results.json.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields

from mvq.evaluation.metrics_table import report_columns
from mvq.reproduce.spec import RunState
from mvq.reproduce.timing import positive_seconds, read_json

# sample metrics whose keys a reconstruction evaluation also uses -> their keys in a table5 row
SAMPLE_KEYS = {"prd_f8": "prd_f8_samples", "prd_f1_8": "prd_f1_8_samples"}


@dataclass
class RunRecord:
    """What the report needs of one finished, evaluated tokenizer run."""

    name: str
    labels: dict
    seed: int
    checkpoint: str
    metrics: dict = field(default_factory=dict)
    mask_bits: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    config: dict = field(default_factory=dict)  # the checkpoint's resolved config
    samples: dict | None = None  # table5: the run's one prior's sample metrics
    prior_seconds: float | None = None  # table5: that prior's training and sampling seconds

    def values(self) -> dict:
        """Every figure of the row: the reconstruction metrics and the samples' metrics (the
        samples' PRD under its own keys: both evaluations name theirs prd_f8 / prd_f1_8)."""
        samples = {SAMPLE_KEYS.get(k, k): v for k, v in (self.samples or {}).items()}
        return {**self.metrics, **samples}

    def to_json(self) -> dict:
        out = asdict(self)
        if self.samples is None:
            del out["samples"], out["prior_seconds"]
        return out


@dataclass
class SampleRecord:
    """One sample evaluation of a prior on a tokenizer run (a generation experiment's row)."""

    name: str  # RUN/PRIOR_FOLDER/DECODING
    labels: dict  # the run's, with the prior's label and the decoding's
    seed: int  # the prior's
    checkpoint: str | None  # the prior's
    metrics: dict  # the samples' metrics and the prior's "parameters"
    decoding: dict | None
    tokenizer: str
    train_seconds: float | None  # the prior's
    eval_seconds: float | None
    prior_kind: str
    prior_sizes: dict | None
    class_conditional: bool

    def values(self) -> dict:
        return dict(self.metrics)

    def to_json(self) -> dict:
        return asdict(self)


Record = RunRecord | SampleRecord


def from_json(entry: dict) -> Record:
    """A record as results.json holds it (its ``to_json``): how the reports made before
    `--keep`, whose run folders are gone, are written again (scripts/report-from-results.py)."""
    cls = SampleRecord if "tokenizer" in entry else RunRecord
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in entry.items() if k in names})


def run_record(st: RunState, step: int | None = None) -> RunRecord:
    """The record of one finished, evaluated run (reads its eval.json and config); ``step``:
    its evaluation at that earlier step instead (``RunState.eval_path``)."""
    ckpt = st.out_dir / "checkpoint"
    evaluation = json.loads(st.eval_path(st.steps if step is None else step).read_text())
    samples = json.loads(st.samples[0].path.read_text()) if st.samples else None
    prior = (None if samples is None else _sum(
        read_json(st.samples[0].path.parent / "run.json").get("train_seconds"),
        samples.get("seconds")))
    return RunRecord(
        st.run.name, dict(st.run.labels), st.run.seed, str(ckpt), evaluation["metrics"],
        evaluation.get("mask_bits"), read_json(st.out_dir / "run.json").get("train_seconds"),
        evaluation.get("seconds"), json.loads((ckpt / "config.json").read_text())["config"],
        None if samples is None else samples["metrics"], prior)


def _sum(*seconds) -> float | None:
    """The sum of the recorded seconds (None when none is a usable record)."""
    got = [s for s in map(positive_seconds, seconds) if s is not None]
    return sum(got) if got else None


def sample_records(st: RunState) -> list[SampleRecord]:
    """One record per prior and decoding of one finished run, labelled with the prior and the
    decoding on top of the run's labels."""
    out = []
    for sample in st.samples:
        spec, tag = sample.spec, sample.decode.label
        got = json.loads(sample.path.read_text())
        labels = {**st.run.labels, "prior": spec.label or spec.kind}
        if tag:
            labels["decoding"] = tag
        out.append(SampleRecord(
            f"{st.run.name}/{spec.folder}/{sample.decode.slug}", labels, spec.seed,
            got.get("prior"), {**got["metrics"], "parameters": got.get("prior_parameters")},
            got.get("decoding"), str(st.out_dir / "checkpoint"),
            read_json(sample.path.parent / "run.json").get("train_seconds"), got.get("seconds"),
            spec.kind, None if spec.sizes is None else dict(spec.sizes), spec.class_conditional))
    return out


@dataclass
class Stat:
    """Mean and sample std (None for one value) of one figure over a cell's seeds; ``values``:
    the seeds' figures themselves (what the comparisons test; not written to results.json,
    whose runs hold them)."""

    mean: float | None
    std: float | None
    n: int
    values: list[float] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return cls(None, None, 0)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values), values)


@dataclass
class Cell:
    """One row of the report's table: the runs of one label combination, over their seeds."""

    labels: dict
    runs: list[str]
    stats: dict[str, Stat]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def to_json(self) -> dict:
        return {"labels": self.labels, "runs": self.runs, "seeds": self.seeds,
                "stats": {m: s.to_json() for m, s in self.stats.items()}}


def aggregate(cell_keys: tuple[str, ...], records: list[Record]) -> list[Cell]:
    """One cell per distinct value of the ``cell_keys`` labels: mean / std / n over its seeds."""
    cells: dict[tuple, tuple[Cell, dict[str, list[float]]]] = {}
    for rec in records:
        labels = {k: rec.labels.get(k) for k in cell_keys if k in rec.labels}
        cell, values = cells.setdefault(tuple(labels.items()), (Cell(labels, [], {}), {}))
        cell.runs.append(rec.name)
        for metric, value in rec.values().items():
            if isinstance(value, (int, float)):
                values.setdefault(metric, []).append(float(value))
        if rec.train_seconds is not None:
            values.setdefault("train_seconds", []).append(rec.train_seconds)
    for cell, values in cells.values():
        cell.stats = {m: Stat.of(v) for m, v in values.items()}
    return [cell for cell, _ in cells.values()]


METRIC_NAMES = report_columns()  # {key: column header}, from the one metric table


def columns(cells: list[Cell]) -> list[str]:
    """The metric keys measured in any of ``cells``, in the metric table's order."""
    present = {m for c in cells for m in c.stats}
    return [m for m in METRIC_NAMES if m in present]
