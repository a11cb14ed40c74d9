"""The kinds of experiment and the plan that names one.

A kind decides what a finished run contributes to the report (one row per tokenizer, or one
per prior and decoding), the size columns of the table, and the figures and text of its own
(the fig5 plot, the class grid and class agreement). The generic report
(`mvq.reproduce.report`) asks the plan's kind and names no experiment.

- `TokenizerSweep`: tokenizers compared by their reconstructions (fig5, table1, ...);
- `TrainingLength`: a sweep whose runs are also evaluated at earlier steps, one row per
  (run, length) (training-length);
- `Generation`: priors on shared tokenizer runs, compared by their samples;
- `ClassConditional`: a generation experiment with a class grid and class agreement.

A benchmark (table6) is no plan of runs: `mvq.reproduce.benchmark`.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from mvq.evaluation.metrics_table import lower_is_better
from mvq.files.outputs import atomic_write
from mvq.reproduce.classgrid import agreement_text, class_agreement, class_grid
from mvq.reproduce.records import METRIC_NAMES, Cell, Record, columns, run_record, sample_records
from mvq.reproduce.spec import Run, RunState
from mvq.reproduce.stats import Comparison, adjust
from mvq.runtime.extras import missing


@dataclass(frozen=True)
class Plot:
    """The sweep's plot: each metric against the ``x`` label, one panel per value of the
    ``series`` labels (one name, or several: a panel per combination); ``line`` labels the
    swept cells, ``band`` the baseline drawn as a band. With ``hue``, a panel holds one line
    per value of that label, each with its own baseline band in its colour (fig5: K = 16 and
    256 on one panel per token count, as in the paper's figure)."""

    x: str
    series: str | tuple[str, ...]
    line: str = "MVQ"
    band: str = "hierarchical VQ"
    hue: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.series,) if isinstance(self.series, str) else self.series

    def key(self, cell: Cell) -> tuple:
        """The panel a cell belongs to: its values of the series labels."""
        return tuple(cell.labels.get(n) for n in self.names)

    def title(self, key: tuple) -> str:
        return ", ".join(f"{n} {v}" for n, v in zip(self.names, key))


@dataclass
class TokenizerSweep:
    """Tokenizers compared by their reconstructions: one report row per run (cell), with its
    bits per image and parameters; ``plot``: the metric-against-label figure, if any."""

    plot: Plot | None = None
    lengths: tuple[int, ...] = ()  # earlier steps each run is also evaluated at (none here)

    def stops(self, steps: int) -> tuple[int, ...]:
        """The steps a run of ``steps`` steps is evaluated at, in order: the earlier
        ``lengths``, then its last step. The runner trains it from one to the next."""
        return tuple(sorted({s for s in self.lengths if 0 < s < steps} | {steps}))

    def records(self, st: RunState) -> list[Record]:
        return [run_record(st)]

    def size_columns(self) -> list[str]:
        return ["bits/img", "params"]

    def size_cells(self, cell: Cell) -> list[str]:
        bits = cell.stats["bits_per_image"].mean if "bits_per_image" in cell.stats else None
        return [f"{bits:g}" if bits is not None else "n/a", _params(cell)]

    def extras(self, plan: Plan, records: list[Record], folder: Path, device: str,
               data_root: str | None) -> tuple[tuple[Path, ...], dict]:
        """Figures and results.json entries made before the report (none here)."""
        return (), {}

    def figures(self, plan: Plan, cells: list[Cell], folder: Path) -> tuple[Path, ...]:
        """The figures drawn from the table's cells."""
        if self.plot is None:
            return ()
        png = plot(plan, self.plot, cells, folder / f"{plan.experiment}.png")
        return (png,) if png else ()

    def sections(self, extra: dict) -> list[str]:
        """The kind's own paragraphs after the comparisons."""
        return []

    def summary(self, plan: Plan, cells: list[Cell]) -> tuple[list[str], dict]:
        """The kind's own paragraphs drawn from the table's cells, and their results.json
        entries (none here)."""
        return [], {}


@dataclass
class TrainingLength(TokenizerSweep):
    """One run per (model, tokens, seed) trained to its last step at a constant learning rate
    and evaluated at each of ``lengths`` on the way: its evaluation at step s stands for a run
    of s steps. One report row per (run, length), labelled ``steps``; the plot: each metric
    against steps, a line per model, a panel per token count, error bars the sd over seeds."""

    lengths: tuple[int, ...] = ()

    def records(self, st: RunState) -> list[Record]:
        out = []
        for step in self.stops(st.steps):
            rec = run_record(st, step)
            rec.name, rec.labels = f"{rec.name}@{step}", {**rec.labels, "steps": step}
            if step != st.steps:  # the run's training time is counted once, on its last row
                rec.train_seconds = None
            out.append(rec)
        return out

    def figures(self, plan: Plan, cells: list[Cell], folder: Path) -> tuple[Path, ...]:
        png = length_plot(plan, cells, folder / f"{plan.experiment}.png")
        return (png,) if png else ()


# the frontier's metrics, each drawn against bits per image and led at each rate
FRONTIER_METRICS = ("mse", "lpips", "rfid", "nll_bits_image")


@dataclass
class Frontier(TokenizerSweep):
    """Quantizer families at several rates (mvq reproduce frontier): one row per (rate,
    family); each row's encode ms per image (from its evaluation's encode seconds, a size
    column: timings on a shared machine are not compared) and, where its run has a GPT prior,
    the prior's NLL in bits per image; the plot: each metric against bits per image, a line per
    family, the Pareto front marked; the leaders: the best family at each rate and metric, and
    whether it is resolved against the runner-up."""

    nll_rates: tuple[int, ...] = ()

    def records(self, st: RunState) -> list[Record]:
        rec = run_record(st)
        ev = json.loads(st.eval_path(st.steps).read_text())
        seconds, n = ev.get("encode_seconds"), ev.get("n")
        if isinstance(seconds, (int, float)) and isinstance(n, int) and n > 0 and seconds > 0:
            rec.metrics["encode_ms"] = 1000.0 * seconds / n
        if rec.samples is not None:  # per image: families differ in tokens per image
            bits = [rec.samples.get(k) for k in ("nll_primary_bits", "nll_secondary_bits")]
            tokens = [ev.get("tokens_primary", 0), ev.get("tokens_secondary", 0)]
            if bits[0] is not None:
                rec.samples = {"nll_bits_image": sum((b or 0.0) * t for b, t in zip(bits, tokens))
                               + float(rec.mask_bits or 0.0)}
        return [rec]

    def size_columns(self) -> list[str]:
        return ["bits/img", "params", "encode ms/img"]

    def size_cells(self, cell: Cell) -> list[str]:
        ms = cell.stats.get("encode_ms")
        return [*super().size_cells(cell),
                f"{ms.mean:.2f}" if ms is not None and ms.mean is not None else "n/a"]

    def figures(self, plan: Plan, cells: list[Cell], folder: Path) -> tuple[Path, ...]:
        png = frontier_plot(plan, cells, folder / f"{plan.experiment}.png")
        return (png,) if png else ()

    def summary(self, plan: Plan, cells: list[Cell]) -> tuple[list[str], dict]:
        found = leaders(cells)
        if not found:
            return [], {}
        lines = ["Leaders: at each rate and metric, the family with the best mean, and whether "
                 "its lead is resolved: ahead of the runner-up where a Welch test of their seeds "
                 "gives q < 0.05 (Benjamini-Hochberg over these leader tests alone); else "
                 "unresolved (the runner-up may be as good).", "",
                 "| rate (bits/img) | metric | leader | runner-up | resolved | change | q |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in found:
            q = "n/a" if f["q"] is None else "<0.001" if f["q"] < 0.001 else f"{f['q']:.3f}"
            change = "n/a" if f["change"] is None else f"{f['change']:+.1%}"
            lines.append(f"| {f['rate']} | {METRIC_NAMES[f['metric']]} | {f['leader']} | "
                         f"{f['runner_up'] or 'n/a'} | {'yes' if f['resolved'] else 'no'} "
                         f"({f['verdict']}) | {change} | {q} |")
        return lines + [""], {"leaders": found}


def leaders(cells: list[Cell]) -> list[dict]:
    """At each rate and frontier metric, the family of best mean and its runner-up, the
    leader's Welch test against the runner-up BH-adjusted over these tests (`adjust`)."""
    found = []
    for rate in sorted({c.labels.get("rate") for c in cells if "rate" in c.labels}):
        here = [c for c in cells if c.labels.get("rate") == rate]
        for m in FRONTIER_METRICS:
            ranked = sorted((c for c in here if m in c.stats and c.stats[m].mean is not None),
                            key=lambda c: c.stats[m].mean * (1 if lower_is_better(m) else -1))
            if not ranked:
                continue
            lead, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
            comp = (Comparison(m, lead.stats[m].values, second.stats[m].values)
                    if second is not None and second.stats[m].mean else None)
            found.append((rate, m, lead, second, comp))
    adjust([f[4] for f in found if f[4] is not None])
    return [{"rate": rate, "metric": m, "leader": lead.labels.get("family"),
             "runner_up": second.labels.get("family") if second is not None else None,
             "verdict": comp.verdict if comp else "unresolved (alone)",
             "resolved": bool(comp and comp.verdict == "ahead"),
             "change": comp.change if comp else None, "q": comp.q if comp else None,
             "mean": lead.stats[m].mean}
            for rate, m, lead, second, comp in found]


@dataclass
class Generation(TokenizerSweep):
    """Priors on shared tokenizer runs: one report row per prior and decoding, with the
    prior's parameters (no tokenizer bits)."""

    def records(self, st: RunState) -> list[Record]:
        return list(sample_records(st))

    def size_columns(self) -> list[str]:
        return ["prior params"]

    def size_cells(self, cell: Cell) -> list[str]:
        return [_params(cell)]


@dataclass
class ClassConditional(Generation):
    """A generation experiment with class-conditional priors: a grid of samples per class and
    how often the samples are of the class asked for."""

    def extras(self, plan: Plan, records: list[Record], folder: Path, device: str,
               data_root: str | None) -> tuple[tuple[Path, ...], dict]:
        if not records:
            return (), {}
        grid = class_grid(records, folder / "class_grid.png", device)
        agree = class_agreement(records, folder / "class_agreement.json", plan.eval_n, device,
                                data_root)
        return (grid,), {"class_agreement": agree}

    def sections(self, extra: dict) -> list[str]:
        agree = extra.get("class_agreement")
        return agreement_text(agree) if agree else []


@dataclass
class Plan:
    """An experiment at one scale: its runs, the evaluation, and how the report reads them."""

    experiment: str
    scale: str
    title: str
    runs: list[Run]
    eval_n: int
    metrics: tuple[str, ...]
    cell: tuple[str, ...]  # label keys that name a table row (seeds are averaged)
    baseline: dict = field(default_factory=dict)  # labels of the baseline rows
    sample_metrics: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    match: tuple[str, ...] = ("tokens", "K")  # labels a model shares with its baseline rows
    # named comparisons beside the baseline's: (a row's labels, the row it is set against)
    pairs: tuple[tuple[dict, dict], ...] = ()
    kind: TokenizerSweep = field(default_factory=TokenizerSweep)

    def is_baseline(self, run: Run) -> bool:
        """Whether ``run`` is one of the baseline's (its labels hold ``baseline``'s)."""
        return all(run.labels.get(k) == v for k, v in self.baseline.items())

    def baseline_runs(self) -> list[Run]:
        return [r for r in self.runs if self.is_baseline(r)]

    def compared_runs(self) -> list[Run]:
        """The runs set against the baseline (fig5: the MVQ ones)."""
        return [r for r in self.runs if not self.is_baseline(r)]


def _params(cell: Cell) -> str:
    params = cell.stats["parameters"].mean if "parameters" in cell.stats else None
    return f"{params / 1e6:.2f} M" if params else "n/a"


def plot(plan: Plan, axes_of: Plot, cells: list[Cell], path: Path) -> Path | None:
    """Metric against the x label, one panel per series and metric; the baseline as a
    horizontal band (mean ± std)."""
    plt = _pyplot()

    series = sorted({axes_of.key(c) for c in cells}, key=lambda k: tuple(map(str, k)))
    metrics = [m for m in ("rfid", "mse", "lpips") if m in columns(cells)]
    if not metrics:
        return None
    fig, axes = plt.subplots(len(metrics), len(series), figsize=(4.2 * len(series),
                             3.0 * len(metrics)), squeeze=False)
    for col, value in enumerate(series):
        mine = [c for c in cells if axes_of.key(c) == value]
        for row, m in enumerate(metrics):
            _panel(axes[row][col], plan, axes_of, mine, m)
            axes[row][col].set_title(f"{axes_of.title(value)}: {METRIC_NAMES[m]}")
            if row == 0 and col == 0:
                axes[row][col].legend(fontsize=8)
    return _finish(plt, fig, plan, path, 60 * len(series), "std")


def length_plot(plan: Plan, cells: list[Cell], path: Path) -> Path | None:
    """rFID and MSE (those measured) against ``steps``: a panel per token count and metric, a
    line per model (mean over seeds, error bars the sample sd)."""
    plt = _pyplot()
    metrics = [m for m in ("rfid", "mse") if m in columns(cells)]
    tokens = sorted({c.labels.get("tokens") for c in cells}, key=str)
    if not metrics or not tokens:
        return None
    fig, axes = plt.subplots(len(metrics), len(tokens), figsize=(4.2 * len(tokens),
                             3.0 * len(metrics)), squeeze=False)
    models = sorted({_model(c.labels) for c in cells})
    for col, t in enumerate(tokens):
        for row, m in enumerate(metrics):
            ax = axes[row][col]
            for i, model in enumerate(models):
                pts = sorted((c.labels["steps"], c.stats[m]) for c in cells
                             if c.labels.get("tokens") == t and _model(c.labels) == model
                             and "steps" in c.labels and m in c.stats
                             and c.stats[m].mean is not None)
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                                yerr=[p[1].std or 0 for p in pts], marker="o", capsize=3,
                                color=f"C{i}", label=model)
            steps = sorted({c.labels["steps"] for c in cells if "steps" in c.labels})
            ax.set_xscale("log")
            ax.set_xticks(steps, [str(s) for s in steps])
            ax.minorticks_off()
            ax.set_xlabel("training steps (batch 32)")
            ax.set_title(f"tokens {t}: {METRIC_NAMES[m]}")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    return _finish(plt, fig, plan, path, 52 * len(tokens), "sd")


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both rate and metric (lower is better on both),
    by rate."""
    front, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def frontier_plot(plan: Plan, cells: list[Cell], path: Path) -> Path | None:
    """Each frontier metric measured against bits per image (log 2): a line per family (mean
    over seeds at each rate, error bars the sd), the Pareto front over all families' means as
    a black step line with ringed points."""
    plt = _pyplot()
    metrics = [m for m in FRONTIER_METRICS if any(m in c.stats and c.stats[m].mean is not None
                                                  for c in cells)]
    families = list(dict.fromkeys(c.labels.get("family") for c in cells))
    if not metrics or not families:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        points = []
        for i, fam in enumerate(families):
            pts = sorted((c.stats["bits_per_image"].mean, c.stats[m]) for c in cells
                         if c.labels.get("family") == fam and "bits_per_image" in c.stats
                         and m in c.stats and c.stats[m].mean is not None)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                            yerr=[p[1].std or 0 for p in pts], marker="o", capsize=3,
                            color=f"C{i % 10}", linestyle="-" if i < 10 else "--", label=fam)
                points += [(p[0], p[1].mean * (1 if lower_is_better(m) else -1)) for p in pts]
        front = [(x, y if lower_is_better(m) else -y) for x, y in pareto(points)]
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                    linewidth=1.2, alpha=0.7, label="Pareto front")
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none",
                       edgecolors="black", zorder=5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per image")
        ax.set_title(METRIC_NAMES[m])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _finish(plt, fig, plan, path, 40 * len(metrics), "sd")


def _finish(plt, fig, plan: Plan, path: Path, width: int, spread: str) -> Path:
    """Title (what the plot is and the command that made it), layout, an atomic PNG."""
    fig.suptitle(textwrap.fill(f"{plan.title}: mean ± {spread} over seeds (mvq reproduce "
                               f"{plan.experiment} --scale {plan.scale})", width), fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _model(labels: dict) -> str:
    """A row's model as the plot's legend names it: its type, and J where it has one."""
    return f"{labels.get('model')}" + (f" J={labels['J']}" if "J" in labels else "")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # an optional dependency
        raise missing("matplotlib", "explore") from None
    return plt


def _panel(ax, plan: Plan, axes_of: Plot, mine: list[Cell], m: str) -> None:
    """One panel: the series' cells of metric ``m`` against x, the baseline as a band; with
    a hue, a line and a band per hue value, in one colour each, so a line is only ever read
    against its own baseline."""
    hues = sorted({c.labels.get(axes_of.hue) for c in mine}, key=str) if axes_of.hue else [None]
    ticks: set = set()
    for i, value in enumerate(hues):
        group = [c for c in mine if axes_of.hue is None or c.labels.get(axes_of.hue) == value]
        suffix = f", {axes_of.hue} {value}" if axes_of.hue else ""
        color = f"C{i}" if axes_of.hue else None
        pts = sorted((c.labels[axes_of.x], c.stats[m]) for c in group
                     if axes_of.x in c.labels and m in c.stats and c.stats[m].mean is not None)
        if pts:
            xs = [p[0] for p in pts]
            ticks.update(xs)
            ax.errorbar(xs, [p[1].mean for p in pts], yerr=[p[1].std or 0 for p in pts],
                        marker="o", capsize=3, color=color, label=axes_of.line + suffix)
        for c in group:
            if all(c.labels.get(k) == v for k, v in plan.baseline.items()) \
                    and m in c.stats and c.stats[m].mean is not None:
                mean, std = c.stats[m].mean, c.stats[m].std or 0
                ax.axhline(mean, color=color or "gray", linestyle="--",
                           label=axes_of.band + suffix)
                if std:
                    ax.axhspan(mean - std, mean + std, color=color or "gray",
                               alpha=0.15 if color else 0.2)
    if ticks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [str(x) for x in sorted(ticks)])
    ax.set_xlabel(axes_of.x)
    ax.grid(alpha=0.3)
