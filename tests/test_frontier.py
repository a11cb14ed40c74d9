"""`mvq reproduce frontier`: every quantizer family on one backbone at 8-64 bits per image. The
plan's shape and rates, and a report built from fake records (plot, comparisons, leaders)."""

import json

import pytest
from PIL import Image

from mvq.cli import main
from mvq.models import build_model
from mvq.quantize.registry import FAMILIES
from mvq.reproduce import build_plan
from mvq.reproduce import plan as plans
from mvq.reproduce.frontier import Frontier, leaders, pareto
from mvq.reproduce.records import Cell, RunRecord, Stat
from mvq.reproduce.report import write_report

LABELS = ["VQ", "VQ (low-dim, cosine, rotation)", "FSQ", "LFQ", "multichannel", "RVQ",
          "hierarchical VQ (A.6)",
          "MVQ", "MVQ over FSQ", "MVQ over LFQ"]


def test_the_plan_is_families_by_rates_by_seeds_within_the_range():
    plan = build_plan("frontier", "quick")
    assert isinstance(plan.kind, Frontier) and plan.eval_n == 500
    assert [ln.label for ln in plans.frontier_lines()] == LABELS
    assert {ln.label.lower() for ln in plans.frontier_lines()} >= {
        n for n, f in FAMILIES.items() if f.rate is not None}  # every family with a rate
    names = [r.name for r in plan.runs]
    assert len(names) == len(set(names)) == len(LABELS) * 4 * 3
    cells = {}
    for r in plan.runs:
        cells.setdefault((r.labels["rate"], r.labels["family"]), []).append(r.seed)
    assert set(cells) == {(rate, f) for rate in (8, 16, 32, 64) for f in LABELS}
    assert all(seeds == [0, 1, 2] for seeds in cells.values())
    first = None
    for r in plan.runs:
        cfg = r.config(None, "x")
        assert (cfg.model.factor, cfg.train.steps, cfg.train.batch_size) == (14, 1200, 32)
        assert cfg.data.name == "fashion-mnist"
        first = first or cfg
        same = {k: v for k, v in vars(cfg.train).items() if k not in ("seed", "out_dir")}
        assert same == {k: v for k, v in vars(first.train).items()
                        if k not in ("seed", "out_dir")}
        assert bool(r.priors) == (r.labels["rate"] in plans.FRONTIER_NLL_RATES)
        if r.seed:
            continue
        model = build_model(cfg.model)
        bits = model.bits_per_image
        assert 6 <= bits <= 66 and abs(bits - r.labels["rate"]) <= 0.02 * r.labels["rate"], \
            (r.name, bits)
    modern = [r for r in plan.runs if r.labels["family"] == LABELS[1]][0].config(None, "x")
    assert (modern.model.lookup_dim, modern.model.cosine, modern.model.rotation_trick) == \
        (4, True, True)
    # at each rate: each family against plain VQ (baseline), MVQ against every other family
    assert plan.baseline == {"family": "VQ"} and plan.match == ("rate",)
    assert len(plan.pairs) == 4 * (len(LABELS) - 2)
    with pytest.raises(Exception, match="--scale quick study"):
        build_plan("frontier", "paper")


def test_the_dry_run_prints_the_plan_and_an_estimate(tmp_path, capsys):
    assert main(["reproduce", "frontier", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "120 runs, evaluation on N=500" in err and "120 of 120 runs to do; estimated" in err
    assert "gpt-sized_2000steps_s0" in err and not (tmp_path / "o").exists()


def _records(plan, gap: float = 0.0) -> list[RunRecord]:
    """Fake records: MSE falls with rate; MVQ's a fraction ``gap`` below the rest (seeds
    spread a little)."""
    out = []
    for r in plan.runs:
        rate, fam = r.labels["rate"], r.labels["family"]
        i = LABELS.index(fam)
        mse = 0.08 / rate * (1 + 0.02 * i) * (1 - gap if fam == "MVQ" else 1) \
            + 1e-6 * r.seed
        metrics = {"mse": mse, "lpips": 0.3 / rate + 0.001 * i + 1e-4 * r.seed,
                   "rfid": 200.0 / rate + i + 0.1 * r.seed,
                   "bits_per_image": rate * (1 - 0.001 * i), "encode_ms": 0.5 + 0.1 * i}
        samples = {"nll_bits_image": rate * 0.7 + i + 0.01 * r.seed} if r.priors else None
        out.append(RunRecord(r.name, dict(r.labels), r.seed, "ckpt", metrics, None, 10.0, 1.0,
                             {}, samples))
    return out


def test_a_report_from_fake_records_has_the_plot_comparisons_and_leaders(tmp_path):
    plan = build_plan("frontier", "quick")
    data = write_report(plan, _records(plan, gap=0.2), tmp_path / "frontier", [])
    folder = tmp_path / "frontier"
    png = folder / "frontier.png"
    assert png.stat().st_size > 5000 and Image.open(png).size[0] > Image.open(png).size[1]
    assert len(data["cells"]) == len(LABELS) * 4
    found = {(c["compared"], c["metric"]) for c in data["comparisons"]}
    assert ("MVQ tokens=4+1 vs VQ tokens=4 (rate 8)", "mse") in found
    assert ("FSQ tokens=4 vs VQ tokens=4 (rate 64)", "rfid") in found
    assert ("MVQ tokens=4+1 vs FSQ tokens=4", "mse") not in found
    assert ("rate=32 MVQ tokens=4+1 vs rate=32 FSQ tokens=4", "lpips") in found  # a pair
    assert all({"ci95", "p", "q", "verdict"} <= set(c) for c in data["comparisons"])
    nll = [c for c in data["comparisons"] if c["metric"] == "nll_bits_image"]
    assert {c["labels"]["rate"] for c in nll} == set(plans.FRONTIER_NLL_RATES)
    lead = {(x["rate"], x["metric"]): x for x in data["leaders"]}
    assert {r for r, _ in lead} == {8, 16, 32, 64}
    assert {m for r, m in lead if r == 8} == {"mse", "lpips", "rfid"}  # no prior at 8
    assert {m for r, m in lead if r == 16} == {"mse", "lpips", "rfid", "nll_bits_image"}
    assert all(lead[r, "mse"]["leader"] == "MVQ" for r in (8, 16, 32, 64))
    assert lead[8, "mse"]["resolved"] and lead[8, "mse"]["runner_up"] == "VQ"
    assert lead[8, "rfid"]["leader"] == "VQ"
    md = (folder / "report.md").read_text()
    assert "| rate | family | tokens |" in md and "encode ms/img" in md
    assert "Leaders:" in md and "| 8 | MSE | MVQ | VQ | yes (ahead)" in md
    assert "![frontier](frontier.png)" in md
    saved = json.loads((folder / "results.json").read_text())
    assert saved["leaders"] == data["leaders"]


def test_a_lead_within_the_seeds_spread_is_not_resolved():
    def cell(fam, values):
        return Cell({"rate": 8, "family": fam}, [fam], {"mse": Stat.of(values)})

    got = leaders([cell("A", [1.0, 1.2, 0.9]), cell("B", [1.05, 1.1, 1.0])])
    assert got[0]["leader"] == "A" and not got[0]["resolved"]
    assert got[0]["verdict"].startswith(("unresolved", "equivalent"))
    clear = leaders([cell("A", [1.0, 1.01, 0.99]), cell("B", [2.0, 2.01, 1.99])])
    assert clear[0]["resolved"] and clear[0]["verdict"] == "ahead"


def test_the_pareto_front_keeps_the_points_nothing_beats():
    pts = [(8, 5.0), (16, 3.0), (16, 4.0), (32, 3.5), (64, 1.0)]
    assert pareto(pts) == [(8, 5.0), (16, 3.0), (64, 1.0)]


def test_no_priors_keeps_the_tokenizer_runs_and_drops_the_priors(tmp_path, capsys):
    from mvq.reproduce import without_priors

    plan = build_plan("frontier", "quick")
    bare = without_priors(plan)
    assert [r.name for r in bare.runs] == [r.name for r in plan.runs]  # the same run folders
    assert not any(r.priors for r in bare.runs) and any(r.priors for r in plan.runs)
    assert "--no-priors" in bare.notes[-1] and "nll" in bare.notes[-1]
    assert main(["reproduce", "frontier", "--no-priors", "--seeds", "1", "--dry-run", "--out",
                 str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "prior gpt" not in err and f"{len(LABELS) * 4} of {len(LABELS) * 4} runs" in err
    samples_only = build_plan("class-conditional", "quick")
    assert not samples_only.metrics and samples_only.sample_metrics
    with pytest.raises(Exception, match="--no-priors would leave nothing"):
        without_priors(samples_only)
