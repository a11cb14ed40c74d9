"""The report of an experiment: a markdown table (mean ± std over seeds), PNG plots, and a
JSON with every figure and each run's resolved config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mvq.evaluation.metrics_table import BY_KEY
from mvq.files.outputs import write_text
from mvq.reproduce.records import (
    METRIC_NAMES,
    Cell,
    Record,
    RunRecord,
    SampleRecord,
    Stat,
    columns,
)
from mvq.reproduce.records import aggregate as aggregate_cells
from mvq.reproduce.stats import RULE, Comparison, adjust, p_text
from mvq.reproduce.timing import read_estimates

if TYPE_CHECKING:  # the plan names its kind, and the kinds draw with this module's table
    from mvq.reproduce.kinds import Plan

LABEL_ORDER = ("rate", "family", "variant", "tokens", "K", "model", "J", "masks", "steps", "f0",
               "c", "prior", "decoding", "settings")


def aggregate(plan: Plan, records: list[Record]) -> list[Cell]:
    """One cell per distinct value of ``plan.cell`` labels: mean / std / n over its seeds."""
    return aggregate_cells(plan.cell, records)


def _fmt(stat: Stat | None, digits: int, scale: float = 1.0, seeds: int | None = None) -> str:
    """mean ± std; ``(n=N)`` after it where fewer of the row's ``seeds`` measured it (a
    prior not yet trained for every seed)."""
    if not stat or stat.mean is None:
        return "n/a"
    text = f"{stat.mean * scale:.{digits}f}"
    if stat.std is not None:
        text += f" ± {stat.std * scale:.{digits}f}"
    if seeds is not None and stat.n < seeds:
        text += f" (n={stat.n})"
    return text


def markdown_table(plan: Plan, cells: list[Cell]) -> str:
    label_keys = [k for k in LABEL_ORDER if any(k in c.labels for c in cells)]
    metrics = columns(cells)
    head = label_keys + plan.kind.size_columns() + [METRIC_NAMES[m] for m in metrics] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cells:
        row = [str(c.labels.get(k, "")) for k in label_keys] + plan.kind.size_cells(c)
        row += [_fmt(c.stats.get(m), BY_KEY[m].digits, BY_KEY[m].scale, c.seeds)
                for m in metrics]
        row.append(str(c.seeds))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def comparisons(plan: Plan, cells: list[Cell]) -> list[dict]:
    """Each non-baseline cell against each baseline cell that shares its ``plan.match`` labels
    (the same tokens and K by default), then each of ``plan.pairs`` whose two rows are both
    there: one entry per metric measured on both sides, with its Welch test, its q over all the
    report's comparisons and its verdict (`mvq.reproduce.stats`)."""
    def has(c: Cell, labels: dict) -> bool:
        return all(c.labels.get(k) == v for k, v in labels.items())

    def is_base(c: Cell) -> bool:
        return has(c, plan.baseline)
    pairs: list[tuple[Cell, Cell, tuple[str, ...]]] = []
    for want, against in plan.pairs:
        found = [next((c for c in cells if has(c, side)), None) for side in (want, against)]
        if None not in found:
            pairs.append((found[0], found[1], ()))
    if plan.baseline:
        pairs += [(c, b, plan.match) for c in cells if not is_base(c) for b in cells
                  if is_base(b) and all(b.labels.get(k) == c.labels.get(k) for k in plan.match)]
    found: list[tuple[str, Cell, Cell, Comparison]] = []
    for c, b, shared in pairs:
        for m in columns([c, b]):
            sc, sb = c.stats.get(m), b.stats.get(m)
            if not sc or not sb or sc.mean is None or sb.mean is None or sb.mean == 0:
                continue
            found.append((_title(c, b, shared), c, b, Comparison(m, sc.values, sb.values)))
    adjust([f[3] for f in found])
    return [{"compared": title, "labels": c.labels, "against": b.labels, **comp.to_json()}
            for title, c, b, comp in found]


QUIET = ("settings",)  # labels a comparison's title leaves to the table


def _title(c: Cell, b: Cell, shared: tuple[str, ...]) -> str:
    """'ROW vs AGAINST (SHARED LABELS)': the two rows by the labels they do not share."""
    def own(cell: Cell) -> str:
        return " ".join(f"{k}={v}" if k not in ("model", "prior", "decoding", "variant",
                                                "family") else str(v)
                        for k, v in cell.labels.items() if k not in shared and k not in QUIET)

    where = ", ".join(f"{k} {c.labels[k]}" for k in shared if k in c.labels)
    return f"{own(c)} vs {own(b)}" + (f" ({where})" if where else "")


def comparison_table(found: list[dict]) -> str:
    """The comparisons as one markdown table: a row per metric, the pair named on its first."""
    head = ["compared", "metric", "verdict", "change", "difference (95% CI)", "p", "q",
            "n", "mean ± sd (row; compared with)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    last = None
    for f in found:
        spec = BY_KEY[f["metric"]]
        digits, scale = spec.digits, spec.scale

        def num(x: float | None, sign: str = "") -> str:
            return "n/a" if x is None else f"{x * scale:{sign}.{digits}f}"

        ci = f" ({num(f['ci95'][0], '+')}, {num(f['ci95'][1], '+')})" if f["ci95"] else ""
        sides = "; ".join(num(mean) + (f" ± {num(sd)}" if sd is not None else "")
                          for mean, sd in zip(f["mean"], f["sd"]))
        row = [f["compared"] if f["compared"] != last else "", METRIC_NAMES[f["metric"]],
               f["verdict"], f"{f['change']:+.1%}", num(f["diff"], "+") + ci, p_text(f["p"]),
               p_text(f["q"]), "/".join(map(str, f["n"])), sides]
        last = f["compared"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(plan: Plan, records: list[Record], folder: Path, missing: list[str],
                 figures: tuple[Path, ...] = (), extra: dict | None = None) -> dict:
    """report.md, results.json and the kind's figures in ``folder``; returns the JSON.
    ``figures`` and ``extra`` (results.json entries) are those the kind made before."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = extra or {}
    cells = aggregate(plan, records)
    comp = comparisons(plan, cells)
    lines = [f"# {plan.title}", "", f"`mvq reproduce {plan.experiment} --scale {plan.scale}`; "
             f"N = {plan.eval_n} evaluation images; mean ± std over seeds (sample std).", "",
             markdown_table(plan, cells), ""]
    if comp:
        what = ("Each row against the one named after it" if not plan.baseline else
                f"Each row against the baseline rows with the same {' and '.join(plan.match)}"
                if plan.match else "Each row against the baseline rows")
        lines += [f"{what}: change and difference are the row minus the one it is compared "
                  f"with; n: the seeds of each. {RULE}", "", comparison_table(comp), ""]
    lines += plan.kind.sections(extra)
    summary, summary_json = plan.kind.summary(plan, cells)
    lines += summary
    for fig in (*plan.kind.figures(plan, cells, folder), *figures):
        lines += [f"![{fig.stem}]({fig.name})", ""]
    estimates = read_estimates(folder)
    lines += [f"- {n}" for n in plan.notes] + _times(records, estimates)
    rows = {r.name for r in records}  # a missing run with a row lacks only its prior
    # a missing run with rows at some lengths (training-length: NAME@STEP) was cut short
    part_way = {m: [r.labels["steps"] for r in records if r.name.startswith(f"{m}@")]
                for m in missing}
    part_way = {m: steps for m, steps in part_way.items() if steps}
    absent = [m for m in missing if m not in rows and m not in part_way]
    if absent:
        lines += ["", f"**Incomplete:** {len(absent)} planned runs are not in this report yet: "
                  + ", ".join(absent)]
    if part_way:
        lines += ["", f"**Part way:** {len(part_way)} run{'s' * (len(part_way) != 1)} in the "
                  "table only at the lengths they were trained to and evaluated at so far: "
                  + ", ".join(f"{m} ({' / '.join(f'{s:,}' for s in steps)} steps)"
                              for m, steps in part_way.items())]
    waiting = [m for m in missing if m in rows]
    if waiting:
        lines += ["", f"**Priors to come:** {len(waiting)} run{'s' * (len(waiting) != 1)} in "
                  "the table without their prior's metrics yet: " + ", ".join(waiting)]
    data = {"experiment": plan.experiment, "scale": plan.scale, "title": plan.title,
            "eval_n": plan.eval_n, "metrics": list(plan.metrics), "notes": plan.notes,
            "cells": [c.to_json() for c in cells], "comparisons": comp,
            "runs": [r.to_json() for r in records], "missing": missing,
            "estimates": estimates, **extra, **summary_json}
    # how the plan was built, where not by default (--seeds, --no-priors): built again so
    if plan.seeds is not None:
        data["seeds"] = plan.seeds
    if not plan.priors:
        data["priors"] = False
    write_text(folder / "results.json", json.dumps(data, indent=2) + "\n")
    write_text(folder / "report.md", "\n".join(lines) + "\n")
    return data


def _times(records: list[Record], estimates: list[dict]) -> list[str]:
    """The notes on the wall time the rows took and on the estimates made when it started."""
    tokenizer = [r for r in records if isinstance(r, RunRecord)]
    trained = {}  # the priors: one training per checkpoint, however many decodings it sampled
    for r in records:
        if isinstance(r, SampleRecord):
            trained[r.checkpoint or r.name] = r.train_seconds or 0.0
    spent = {"tokenizer training": sum(r.train_seconds or 0.0 for r in tokenizer),
             "reconstruction evaluation": sum(r.eval_seconds or 0.0 for r in tokenizer),
             "prior training and sampling": sum(r.prior_seconds or 0.0 for r in tokenizer)
             + sum(trained.values())
             + sum(r.eval_seconds or 0.0 for r in records if isinstance(r, SampleRecord))}
    lines = [f"- work recorded by the {len(records)} rows above (one process's time; processes "
             f"sharing the plan divide the wall time): {sum(spent.values()) / 60:.0f} min, of "
             "which " + ", ".join(f"{v / 60:.0f} min {k}" for k, v in spent.items() if v)]
    if estimates:
        lines.append("- work estimated when it started (measured: from earlier runs' seconds; "
                     "model: a 2-core CPU): " + "; ".join(
                         f"{e.get('date')}, {e.get('runs_to_do')} "
                         f"run{'' if e.get('runs_to_do') == 1 else 's'} to do: "
                         f"{_minutes(e.get('seconds'))} ({_minutes(e.get('measured_seconds'))} "
                         f"measured, {_minutes(e.get('model_seconds'))} model)"
                         + (f", printed by {n} starts (processes sharing the plan)"
                            if n > 1 else "")
                         for e, n in _starts(estimates)))
    return lines


def _starts(estimates: list[dict]) -> list[tuple[dict, int]]:
    """The estimates with repeats folded: a start that found the same runs to do and printed
    the same estimate as the one before it (a second process joining the plan, nothing
    finished in between) is counted with it, not listed again."""
    same = ("runs_to_do", "seconds", "measured_seconds", "model_seconds")
    folded: list[tuple[dict, int]] = []
    for e in estimates:
        if folded and all(folded[-1][0].get(k) == e.get(k) for k in same):
            folded[-1] = (folded[-1][0], folded[-1][1] + 1)
        else:
            folded.append((e, 1))
    return folded


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"
