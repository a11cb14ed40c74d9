"""Every figure of RESULTS.md's tables is a figure of the committed report it quotes: the table
under a section is checked against the results.json of the last `docs/results/EXPERIMENT/` the
text names before it, at the precision it is printed with. A table right after an
HTML comment starting `<!-- external` (figures no committed report holds, e.g. a paper's) is
left out."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "RESULTS.md"
# a cell holding figures: "0.0348 ± 0.0009", "246.5", "2.40 M", "6"
FIGURE = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))?( M)?$")
SCALES = (1.0, 1000.0)  # ms columns are seconds x 1000 in results.json


def _tables(text: str) -> list[tuple[str | None, int, list[str]]]:
    """(the experiment named last before it, or None where marked external; line; rows)."""
    lines = text.split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            start = i
            before = "\n".join(lines[:start])
            named = [n for n in re.findall(r"docs/results/([\w-]+)/", before)
                     if (REPO / "docs" / "results" / n / "results.json").exists()]
            last = before.rstrip()  # the table right after an `<!-- external ... -->` comment
            external = last.endswith("-->") and last[last.rfind("<!--"):].startswith(
                "<!-- external")
            experiment = None if external else named[-1]
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(lines[i])
                i += 1
            found.append((experiment, start + 1, rows))
        else:
            i += 1
    return found


def _numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def _shown(values: list[float], digits_of: str, scales) -> set[str]:
    digits = len(digits_of.split(".")[1]) if "." in digits_of else 0
    return {f"{v * s:.{digits}f}" for v in values for s in scales}


TABLES = _tables(RESULTS.read_text())


def test_results_md_has_tables_and_names_their_reports():
    assert len(TABLES) >= 7
    for experiment, line, _ in TABLES:
        assert experiment is None or (REPO / "docs" / "results" / experiment
                                      / "results.json").exists(), (line, experiment)


@pytest.mark.parametrize("experiment,line,rows", TABLES, ids=[f"line{t[1]}" for t in TABLES])
def test_every_figure_of_a_results_table_is_in_its_report(experiment, line, rows):
    if experiment is None:
        pytest.skip("figures marked external")
    data = json.loads((REPO / "docs" / "results" / experiment / "results.json").read_text())
    values = _numbers({k: data[k] for k in ("cells", "runs", "rows") if k in data})  # rows: a
    # benchmark's (table6)
    wrong = []
    for row in rows:
        for cell in (c.strip().strip("*") for c in row.strip("|").split("|")):
            m = FIGURE.match(cell)
            if not m:
                continue
            mean, std, millions = m.groups()
            scales = (1e-6,) if millions else SCALES
            if mean not in _shown(values, mean, scales) \
                    or (std and std not in _shown(values, std, scales)):
                wrong.append(cell)
    assert not wrong, f"RESULTS.md line {line}: not in docs/results/{experiment}: {wrong}"
