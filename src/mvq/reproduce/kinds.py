"""The kinds of experiment and the plan that names one.

A kind decides what a finished run contributes to the report (one row per tokenizer, or one
per prior and decoding), the size columns of the table, and the figures and text of its own
(the fig5 plot, the class grid and class agreement). The generic report
(`mvq.reproduce.report`) asks the plan's kind and names no experiment.

- `TokenizerSweep`: tokenizers compared by their reconstructions (fig5, table1, ...);
- `TrainingLength`: a sweep whose runs are also evaluated at earlier steps, one row per
  (run, length) (training-length);
- `Generation`: priors on shared tokenizer runs, compared by their samples;
- `ClassConditional`: a generation experiment with a class grid and class agreement;
- `Frontier` (`mvq.reproduce.frontier`, beside its experiment): quantizer families at several
  rates, with their leaders and a rate-distortion plot.

A benchmark (table6) is no plan of runs: `mvq.reproduce.benchmark`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from mvq.files.outputs import atomic_write
from mvq.reproduce.classgrid import agreement_text, class_agreement, class_grid
from mvq.reproduce.records import METRIC_NAMES, Cell, Record, columns, run_record, sample_records
from mvq.reproduce.spec import Run, RunState
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
    # earlier steps each run is also evaluated at (none here); a run trained part way is a
    # row at those it reached, so a study cut short still reports the lengths it got to
    lengths: tuple[int, ...] = ()
    # a run evaluated but with a prior still to train or sample is a row of the report (its
    # sample metrics absent), not a missing run: where the priors are one column among many
    ROWS_BEFORE_PRIORS = False

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
        return [f"{round(bits, 2):g}" if bits is not None else "n/a", _params(cell)]

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
        for step in self.stops(st.steps) if st.rows_at is None else st.rows_at:
            rec = run_record(st, step)
            rec.name, rec.labels = f"{rec.name}@{step}", {**rec.labels, "steps": step}
            if step != st.steps:  # the run's training time is counted once, on its last row
                rec.train_seconds = None
            out.append(rec)
        return out

    def figures(self, plan: Plan, cells: list[Cell], folder: Path) -> tuple[Path, ...]:
        png = length_plot(plan, cells, folder / f"{plan.experiment}.png")
        return (png,) if png else ()


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
    # how it was built, for its report to be built again the same way: --seeds (None: the
    # scale's default) and whether its priors are in it (--no-priors: False)
    seeds: int | None = None
    priors: bool = True

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
    plt = pyplot()

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
    return finish_figure(plt, fig, plan, path, 60 * len(series), "std")


def length_plot(plan: Plan, cells: list[Cell], path: Path) -> Path | None:
    """rFID and MSE (those measured) against ``steps``: a panel per token count and metric, a
    line per model (mean over seeds, error bars the sample sd)."""
    plt = pyplot()
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
    return finish_figure(plt, fig, plan, path, 52 * len(tokens), "sd")


def finish_figure(plt, fig, plan: Plan, path: Path, width: int, spread: str) -> Path:
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


def pyplot():
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
