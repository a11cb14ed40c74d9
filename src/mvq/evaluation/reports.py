"""An evaluation result as markdown (`format_table`), several as one table
(`format_comparison`), and the result files `mvq evaluate` writes and `mvq compare` reads."""

from __future__ import annotations

import json
from pathlib import Path

from mvq.errors import MvqError
from mvq.evaluation.metrics_table import cell, label
from mvq.files.jsonio import loads_object
from mvq.files.outputs import write_text


def _head(result: dict) -> str:
    """The table's first line: model, checkpoint, N, split; with samples the prior and decoding."""
    r = result.get
    head = (f"**{r('model_type')}** `{r('checkpoint')}` (step {r('step')}) - N={r('n')} "
            f"{r('split')} images of {r('dataset')} ({r('image_size')} px, {r('channels')} ch)")
    if r("kind") == "samples":
        head += (f"; samples of {r('prior_type') or 'gpt'} prior `{r('prior')}` (step "
                 f"{r('prior_step')}), seed {r('sample_seed')}, decoding "
                 f"{r('decoding') or {'temperature': r('temperature'), 'top_k': r('top_k')}}")
    return head


def format_table(result: dict) -> str:
    """Markdown: a header line (model, checkpoint, N, split), then one row per metric."""
    r = result.get
    rows = [_head(result), "", "| metric | value |", "| --- | --- |"]
    for key, value in (r("metrics") or {}).items():
        rows.append(f"| {label(key)} | {cell(key, value)} |")
    foot = []
    if r("feature_extractor"):
        foot.append(f"FID/PRD features: {r('feature_extractor')} (sha256 "
                    f"{str(r('feature_extractor_sha256'))[:12]}), {r('inception_resize')}")
    if r("lpips_net"):
        foot.append(f"LPIPS: {r('lpips_net')}, backbone sha256 "
                    f"{str(r('lpips_backbone_sha256'))[:12]}, resize {r('lpips_resize')}")
    foot += list(r("notes") or [])
    foot.append(f"mvq {r('mvq_version')}, {r('seconds')} s")
    return "\n".join(rows + [""] + [f"_{f}_  " for f in foot])


def load_result(path: str | Path) -> dict:
    """A result JSON written by `mvq evaluate`; MvqError if it is not one."""
    path = Path(path)
    fix = "pass JSON files written by `mvq evaluate`"
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise MvqError(f"{path} not found: {fix}") from None
    except OSError as err:
        raise MvqError(f"{path} is not a readable file ({err.strerror}); {fix}") from None
    result = loads_object(text, str(path), fix)  # a PNG, a 100000-deep array: one line
    if not isinstance(result.get("metrics"), dict):
        raise MvqError(f"{path} has no 'metrics': expected a JSON written by `mvq evaluate`")
    return result


def row_names(results: list[dict]) -> list[str]:
    """A row name per result: the run folder of what was evaluated (the prior of a samples
    result, else the checkpoint; ``OUT`` for ``OUT/checkpoint`` and for the run folder ``OUT``
    alike), with as many parent folders as it takes to tell the rows apart."""
    paths = []
    for r in results:
        path = Path(str(r.get("prior") or r.get("checkpoint") or "?"))
        paths.append(path.parent if path.name == "checkpoint" else path)
    for depth in range(1, 1 + max(len(p.parts) for p in paths)):
        names = [str(Path(*p.parts[-depth:])) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def format_comparison(results: list[dict], names: list[str] | None = None) -> str:
    """One markdown table, a row per result and a column per metric any of them has.

    Rows are named by ``names`` or by each run's folder (the checkpoint's parent). A footer
    warns when the results differ in data set, split or N (then they are not comparable).
    """
    if not results:
        raise MvqError("nothing to compare: pass at least one result")
    keys = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    names = names or row_names(results)
    head = "| run | " + " | ".join(label(k) for k in keys) + " |"
    rows = [head, "|" + " --- |" * (len(keys) + 1)]
    for name, r in zip(names, results):
        cells = [cell(k, r["metrics"].get(k)) for k in keys]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    setups = {(r.get("dataset"), r.get("split"), r.get("n"), r.get("kind", "reconstruction"))
              for r in results}
    if len(setups) > 1:
        rows += ["", "_not comparable: the results differ in (data set, split, N, kind): "
                 + "; ".join(str(s) for s in sorted(setups, key=str)) + "_"]
    else:
        (data, split, n, kind), = setups
        rows += ["", f"_{kind}, N={n} {split} images of {data}_"]
    return "\n".join(rows)


def write_reports(result: dict, json_path: Path | None, md_path: Path | None) -> None:
    """Write the result as JSON and/or the markdown table (parent folders are created)."""
    for path, text in ((json_path, lambda: json.dumps(result, indent=2) + "\n"),
                       (md_path, lambda: format_table(result) + "\n")):
        if path is None:
            continue
        write_text(path, text())
