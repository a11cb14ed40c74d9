"""The report of an experiment: a markdown table (mean ± std over seeds), PNG plots, and a
JSON with every figure and each run's resolved config."""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from pathlib import Path

from mvq._compat import missing
from mvq.evaluation.metrics_table import BY_KEY, lower_is_better, report_columns
from mvq.outputs import atomic_write, write_text
from mvq.reproduce.plan import Plan
from mvq.reproduce.timing import read_estimates

LABEL_ORDER = ("variant", "tokens", "K", "model", "J", "f0", "c", "prior", "decoding")
METRIC_NAMES = report_columns()  # {key: column header}, from the one metric table


def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def aggregate(plan: Plan, records: list[dict]) -> list[dict]:
    """One cell per distinct value of ``plan.cell`` labels: mean / std / n over its seeds."""
    cells: dict[tuple, dict] = {}
    for rec in records:
        labels = {k: rec["labels"].get(k) for k in plan.cell if k in rec["labels"]}
        key = tuple(labels.items())
        cell = cells.setdefault(key, {"labels": labels, "runs": [], "values": {}})
        cell["runs"].append(rec["name"])
        values = {**rec.get("metrics", {}), **(rec.get("samples") or {})}
        for metric, value in values.items():
            if isinstance(value, (int, float)):
                cell["values"].setdefault(metric, []).append(float(value))
        if rec.get("train_seconds") is not None:
            cell["values"].setdefault("train_seconds", []).append(rec["train_seconds"])
    out = []
    for cell in cells.values():
        stats = {m: _stats(v) for m, v in cell["values"].items()}
        out.append({"labels": cell["labels"], "runs": cell["runs"], "seeds": len(cell["runs"]),
                    "stats": stats})
    return out


def _fmt(stat: dict | None, digits: int, scale: float = 1.0) -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std'] * scale:.{digits}f}"
    return text


def columns(cells: list[dict]) -> list[str]:
    present = {m for c in cells for m in c["stats"]}
    return [m for m in METRIC_NAMES if m in present]


def markdown_table(plan: Plan, cells: list[dict]) -> str:
    label_keys = [k for k in LABEL_ORDER if any(k in c["labels"] for c in cells)]
    metrics = columns(cells)
    samples = plan.rows == "samples"  # rows are priors: their parameters, no tokenizer bits
    head = label_keys + ([] if samples else ["bits/img"]) + \
        ["prior params" if samples else "params"] + [METRIC_NAMES[m] for m in metrics] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cells:
        s = c["stats"]
        bits = s.get("bits_per_image", {}).get("mean")
        params = s.get("parameters", {}).get("mean")
        row = [str(c["labels"].get(k, "")) for k in label_keys]
        if not samples:
            row.append(f"{bits:g}" if bits is not None else "n/a")
        row.append(f"{params / 1e6:.2f} M" if params else "n/a")
        row += [_fmt(s.get(m), BY_KEY[m].digits, BY_KEY[m].scale) for m in metrics]
        row.append(str(c["seeds"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def comparisons(plan: Plan, cells: list[dict]) -> list[str]:
    """Each non-baseline cell against each baseline cell that shares its ``plan.match`` labels
    (the same tokens and K by default): the change of every metric, better or worse, and
    whether it exceeds the two cells' seed spread."""
    if not plan.baseline:
        return []

    def is_base(c):
        return all(c["labels"].get(k) == v for k, v in plan.baseline.items())
    lines = []
    for c in cells:
        if is_base(c):
            continue
        for b in cells:
            if is_base(b) and all(b["labels"].get(k) == c["labels"].get(k) for k in plan.match):
                lines.append(_compare(c, b, plan.match))
    return lines


def _compare(c: dict, b: dict, shared: tuple[str, ...]) -> str:
    """One line: cell c against baseline cell b, metric by metric."""
    parts = []
    for m in columns([c, b]):
        sc, sb = c["stats"].get(m), b["stats"].get(m)
        if not sc or not sb or sc["mean"] is None or sb["mean"] is None or sb["mean"] == 0:
            continue
        change = (sc["mean"] - sb["mean"]) / abs(sb["mean"])
        spread = (sc["std"] or 0) + (sb["std"] or 0)
        better = (sc["mean"] < sb["mean"]) == lower_is_better(m)
        verdict = "" if not spread else (" (beyond the seeds' spread)"
                                         if abs(sc["mean"] - sb["mean"]) > spread
                                         else " (within the seeds' spread)")
        parts.append(f"{METRIC_NAMES[m]} {change:+.1%} {'better' if better else 'worse'}{verdict}")

    def own(cell):
        return " ".join(f"{k}={v}" if k not in ("model", "prior", "decoding") else str(v)
                        for k, v in cell["labels"].items() if k not in shared)

    where = ", ".join(f"{k} {c['labels'][k]}" for k in shared if k in c["labels"])
    return f"- {own(c)} vs {own(b)}" + (f" ({where})" if where else "") + ": " + "; ".join(parts)


def plot(plan: Plan, cells: list[dict], path: Path) -> Path | None:
    """Metric against plan.plot's x label, one panel per series and metric; the baseline as a
    horizontal band (mean ± std)."""
    if plan.plot is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # an optional dependency
        raise missing("matplotlib", "explore") from None

    x_key, series_key = plan.plot
    series = sorted({c["labels"].get(series_key) for c in cells}, key=str)
    metrics = [m for m in ("rfid", "mse", "lpips") if m in columns(cells)]
    if not metrics:
        return None
    fig, axes = plt.subplots(len(metrics), len(series), figsize=(4.2 * len(series),
                             3.0 * len(metrics)), squeeze=False)
    for col, value in enumerate(series):
        mine = [c for c in cells if c["labels"].get(series_key) == value]
        for row, m in enumerate(metrics):
            ax = axes[row][col]
            pts = sorted((c["labels"][x_key], c["stats"][m]) for c in mine
                         if x_key in c["labels"] and m in c["stats"]
                         and c["stats"][m]["mean"] is not None)
            if pts:
                xs = [p[0] for p in pts]
                ax.errorbar(xs, [p[1]["mean"] for p in pts],
                            yerr=[p[1]["std"] or 0 for p in pts], marker="o", capsize=3,
                            label="MVQ")
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(x) for x in xs])
            for c in mine:
                if all(c["labels"].get(k) == v for k, v in plan.baseline.items()) \
                        and m in c["stats"] and c["stats"][m]["mean"] is not None:
                    mean, std = c["stats"][m]["mean"], c["stats"][m]["std"] or 0
                    ax.axhline(mean, color="gray", linestyle="--", label="hierarchical VQ")
                    if std:
                        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.2)
            ax.set_title(f"{series_key} {value}: {METRIC_NAMES[m]}")
            ax.set_xlabel(x_key)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(f"{plan.title}: mean ± std over seeds (mvq reproduce "
                               f"{plan.experiment} --scale {plan.scale})", 60 * len(series)),
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(plan: Plan, records: list[dict], folder: Path, missing: list[str],
                 figures: tuple[Path, ...] = (), extra: dict | None = None) -> dict:
    """report.md, results.json and the plot in ``folder``; returns the JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:  # bits and parameters travel with the metrics
        rec.setdefault("metrics", {})
    cells = aggregate(plan, records)
    table = markdown_table(plan, cells)
    comp = comparisons(plan, cells)
    png = plot(plan, cells, folder / f"{plan.experiment}.png")
    lines = [f"# {plan.title}", "", f"`mvq reproduce {plan.experiment} --scale {plan.scale}`; "
             f"N = {plan.eval_n} evaluation images; mean ± std over seeds (sample std).", "",
             table, ""]
    if comp:
        lines += [f"Against the baseline rows with the same {' and '.join(plan.match)}:"
                  if plan.match else "Against the baseline rows:", "", *comp, ""]
    agree = (extra or {}).get("class_agreement")
    if agree:
        spread = f" ± {agree['std']:.3f}" if agree.get("std") is not None else ""
        lines += [f"Class agreement (a small CNN classifier, {agree['n']} images each): the "
                  f"class-conditional samples are of the class asked for "
                  f"{agree['mean']:.3f}{spread} of the time ({len(agree['accuracy'])} priors; "
                  f"chance {1 / agree['classes']:.3g} for {agree['classes']} classes); the classifier's accuracy on the test images is "
                  f"{agree['classifier_accuracy_test']:.3f}, on their reconstructions through "
                  f"the tokenizer {agree['classifier_accuracy_reconstructions']:.3f}.", ""]
    for fig in (png, *figures):
        if fig:
            lines += [f"![{fig.stem}]({fig.name})", ""]
    lines += [f"- {n}" for n in plan.notes]
    spent = [sum(r.get(k) or 0.0 for r in records) / 60 for k in ("train_seconds", "eval_seconds")]
    lines.append(f"- wall time of the {len(records)} rows above, as recorded: {spent[0]:.0f} min "
                 f"training, {spent[1]:.0f} min evaluation")
    estimates = read_estimates(folder)
    if estimates:
        lines.append("- estimated when it started (measured: from earlier runs' seconds; model: "
                     "a quiet 2-core CPU): " + "; ".join(
                         f"{e.get('date')}, {e.get('runs_to_do')} runs to do: "
                         f"{_minutes(e.get('seconds'))} ({_minutes(e.get('measured_seconds'))} "
                         f"measured, {_minutes(e.get('model_seconds'))} model)"
                         for e in estimates))
    if missing:
        lines += ["", f"**Incomplete:** {len(missing)} planned runs are not in this report yet: "
                  + ", ".join(missing)]
    md = "\n".join(lines) + "\n"
    data = {"experiment": plan.experiment, "scale": plan.scale, "title": plan.title,
            "eval_n": plan.eval_n, "metrics": list(plan.metrics), "notes": plan.notes,
            "cells": cells, "comparisons": comp, "runs": records, "missing": missing,
            "estimates": estimates, **(extra or {})}
    write_text(folder / "results.json", json.dumps(data, indent=2) + "\n")
    write_text(folder / "report.md", md)
    return data


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"
