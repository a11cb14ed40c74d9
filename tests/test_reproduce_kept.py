"""`mvq reproduce --keep DIR`: the records of finished runs, without weights, count as done and
regenerate the report on a machine that never had the run folders."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from test_reproduce import _plan, _run, counted_train  # noqa: F401 (a fixture)

from mvq.cli import main
from mvq.reproduce.frontier import Frontier
from mvq.reproduce.kept import keep
from mvq.reproduce.kinds import TokenizerSweep
from mvq.reproduce.plan import Changes, PriorSpec, Run
from mvq.reproduce.report import aggregate, write_report
from mvq.reproduce.runner import collect, execute, inspect


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _table(plan, records):
    return {tuple(sorted(c.labels.items())): {m: (s.mean, s.std, s.n) for m, s in c.stats.items()}
            for c in aggregate(plan, records)}


def test_kept_runs_regenerate_the_report_without_the_run_folders(tmp_path, monkeypatch,
                                                                  counted_train):  # noqa: F811
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    plan = _plan([_run("hvqvae", 0), _run("hvqvae", 1), _run("mvqvae", 0, j=4)])
    out, kept = tmp_path / "rep", tmp_path / "kept"
    first = execute(plan, out, progress=False, kept=kept)
    original = write_report(plan, first, tmp_path / "report1", [])
    # each run is kept as it finishes: its JSON records, no weights, no token file
    name = plan.runs[0].name
    assert _files(kept / name) == ["checkpoint/config.json", "eval.json", "run.json"]
    assert not list(kept.rglob("*.safetensors"))
    assert (kept / ".gitignore").read_text().splitlines() == [".keep.lock", ".*.tmp-*",
                                                              ".*.old-*"]

    shutil.rmtree(out)  # another machine: the kept folder alone
    fresh = tmp_path / "elsewhere"
    states = inspect(plan, fresh, None, kept)
    assert [(s.status, s.kept) for s in states] == [("done", True)] * 3
    counted_train.clear()
    again = execute(plan, fresh, progress=False, kept=kept)
    assert counted_train == []  # nothing trained again
    assert not (fresh / "runs").exists()  # nor a run folder (or lock) made for a kept run
    records, missing = collect(plan, fresh, None, kept)
    assert missing == [] and [r.name for r in records] == [r.name for r in again]
    assert _table(plan, records) == _table(plan, first)
    regenerated = write_report(plan, records, tmp_path / "report2", [])
    assert regenerated["cells"] == original["cells"]
    assert regenerated["comparisons"] == original["comparisons"]


def test_a_kept_run_with_other_settings_is_not_counted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    kept = tmp_path / "kept"
    execute(_plan([run]), tmp_path / "rep", progress=False, kept=kept)
    other = Run(run.name, run.preset, run.changes + Changes(train={"lr": 1e-3}), run.labels, 0)
    (st,) = inspect(_plan([other]), tmp_path / "fresh", None, kept)
    assert st.status == "to train" and not st.kept
    assert "other settings" in st.note and "train.lr" in st.note
    # the same run on another machine (another out_dir, device, data root) still counts
    (st,) = inspect(_plan([run]), tmp_path / "fresh", "/some/data", kept)
    assert st.kept and st.status == "done"
    # a damaged kept record: not counted, said why
    (kept / run.name / "checkpoint" / "config.json").write_text("{not json")
    (st,) = inspect(_plan([run]), tmp_path / "fresh", None, kept)
    assert st.status == "to train" and "no readable checkpoint/config.json" in st.note


def test_kept_priors_merge_and_a_missing_prior_trains_again(tmp_path, monkeypatch):
    """table1 and table5 share runs: a run kept with its prior's samples counts for both; a plan
    with a prior that was not kept trains the run again (no weights were kept)."""
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    base = _run("mvqvae", 0, j=4)
    with_gpt = dataclasses.replace(base, priors=(PriorSpec("gpt", 3, 0),))
    gen = dataclasses.replace(_plan([with_gpt]), sample_metrics=("nll",))
    kept = tmp_path / "kept"
    (rec,) = execute(gen, tmp_path / "rep", progress=False, kept=kept)
    prior = kept / base.name / "priors" / "gpt_3steps_s0"
    assert _files(prior) == ["checkpoint/config.json", "run.json", "samples_default.json"]
    fresh = tmp_path / "fresh"
    (st,) = inspect(gen, fresh, None, kept)
    assert st.kept and st.status == "done"
    (got,) = collect(gen, fresh, None, kept)[0]
    assert got.samples == rec.samples and got.metrics == rec.metrics
    (st,) = inspect(_plan([base]), fresh, None, kept)  # table1's view of the same run
    assert st.kept and st.status == "done"
    other = dataclasses.replace(gen, runs=[dataclasses.replace(
        base, priors=(PriorSpec("gpt", 3, 1),))])
    (st,) = inspect(other, fresh, None, kept)
    assert not st.kept and st.status == "to train" and "'to sample'" in st.note
    # keeping the run again with its second prior adds it beside the first
    execute(other, tmp_path / "rep", progress=False, kept=kept)
    assert sorted(p.name for p in (kept / base.name / "priors").iterdir()) == \
        ["gpt_3steps_s0", "gpt_3steps_s1"]


def test_a_row_stands_before_its_prior_where_the_kind_says_so(tmp_path, monkeypatch):
    """frontier's NLL is one column of four: a run evaluated whose prior is still to train is
    a row without it (still named among the runs not done, and in the report as waiting for its
    prior), in its run folder and from its kept copy alone; other kinds leave the run out until
    its prior is sampled."""
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    base = _run("mvqvae", 0, j=4)
    kept = tmp_path / "kept"
    (rec,) = execute(_plan([base]), tmp_path / "rep", progress=False, kept=kept)
    gen = dataclasses.replace(_plan([dataclasses.replace(
        base, priors=(PriorSpec("gpt", 3, 0),))]), sample_metrics=("nll",))

    class Rows(TokenizerSweep):
        ROWS_BEFORE_PRIORS = True

    assert Frontier.ROWS_BEFORE_PRIORS and not TokenizerSweep.ROWS_BEFORE_PRIORS
    for out in (tmp_path / "rep", tmp_path / "fresh"):  # the run folder, then the kept copy
        assert collect(gen, out, None, kept) == ([], [base.name])
        rows = dataclasses.replace(gen, kind=Rows())
        (got,), missing = collect(rows, out, None, kept)
        assert got.metrics == rec.metrics and got.samples is None
        assert missing == [base.name]
        write_report(rows, [got], tmp_path / "report", missing)
        text = (tmp_path / "report" / "report.md").read_text()
        assert "**Incomplete:**" not in text
        sample = (out / "runs" if out.name == "rep" else kept) / base.name / "priors"
        sample = sample / "gpt_3steps_s0" / "samples_default.json"
        sample.parent.mkdir(parents=True)
        sample.write_text("{not json")  # a kill mid-write elsewhere, or a hand edit
        (again,), _ = collect(rows, out, None, kept)
        assert again.samples is None
        shutil.rmtree(sample.parent)
        assert f"**Priors to come:** 1 run in the table without their prior's metrics yet: " \
            f"{base.name}" in text


def test_a_kill_mid_swap_leaves_the_old_kept_folder_found(tmp_path, monkeypatch):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    kept = tmp_path / "kept"
    plan = _plan([run])
    execute(plan, tmp_path / "rep", progress=False, kept=kept)
    before = _files(kept / run.name)
    aside = kept / f".{run.name}.old-x1"  # the instant between _swap's two renames
    aside.mkdir()
    os.rename(kept / run.name, aside / run.name)
    (st,) = inspect(plan, tmp_path / "fresh", None, kept)
    assert st.kept and st.status == "done"
    assert _files(kept / run.name) == before and not aside.exists()
    # and keeping again replaces it whole, leaving no working folders behind
    (st,) = inspect(plan, tmp_path / "rep", None)
    keep(st, kept)
    assert sorted(p.name for p in kept.iterdir()) == [".gitignore", ".keep.lock", run.name]


def test_a_kill_mid_copy_leaves_a_working_folder_that_neither_counts_nor_stays(tmp_path,
                                                                               monkeypatch):
    from mvq.reproduce.timing import Measured

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    kept = tmp_path / "kept"
    execute(_plan([run]), tmp_path / "rep", progress=False, kept=kept)
    once = Measured.scan(kept).values
    # what a kill inside _keep's copy, or after _swap's second rename, leaves behind
    shutil.copytree(kept / run.name, kept / f".{run.name}.tmp-k1")
    shutil.copytree(kept / run.name, kept / f".{run.name}.old-k2")
    assert Measured.scan(kept).values == once  # not read as a second measurement
    (st,) = inspect(_plan([run]), tmp_path / "rep", None)
    keep(st, kept)
    assert sorted(p.name for p in kept.iterdir()) == [".gitignore", ".keep.lock", run.name]


def test_cli_keep_report_only_and_a_file_in_the_way(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    assert main(["reproduce", "fig5", "--keep", str(blocker), "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"--keep {blocker}: {blocker} is a file, expected a folder; pass a new folder or the "
        "one an earlier `mvq reproduce` used")
    assert blocker.read_text() == "keep me"
    # --report-only with an empty kept folder: the one error names both places
    assert main(["reproduce", "fig5", "--report-only", "--out", str(tmp_path / "o"),
                 "--keep", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished run of fig5" in err[0] and str(tmp_path / "k") in err[0]


def test_kept_runs_give_the_estimate_measured_seconds(tmp_path, monkeypatch):
    from mvq.reproduce.timing import Measured

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    kept = tmp_path / "kept"
    execute(_plan([_run("hvqvae", 0)]), tmp_path / "rep", progress=False, kept=kept)
    from_kept = Measured.scan(tmp_path / "nothing", kept).values
    from_out = Measured.scan(tmp_path / "rep" / "runs").values
    assert from_kept and from_kept == from_out
    assert json.loads((kept / _run("hvqvae", 0).name / "run.json").read_text())["train_seconds"]


REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "docs" / "results" / "runs"
# reported before --keep existed: their generation rows carry no tokenizer config to check, and
# their run folders are gone, so their records could not be kept (docs/reproduce.md)
NOT_KEPT = {"movq-table2", "pixelcnn-vs-gpt"}
# benchmarks: their report is a measurement of this machine, not a function of kept runs
BENCHMARKS = {"table6"}


def _committed():
    return sorted(p.parent.name for p in (REPO / "docs" / "results").glob("*/results.json"))


def test_every_committed_report_is_kept_or_named_as_not():
    assert set(_committed()) - NOT_KEPT, "no committed report is regenerated from kept runs"
    assert NOT_KEPT | BENCHMARKS <= set(_committed())


@pytest.mark.parametrize("experiment", sorted(BENCHMARKS))
def test_a_committed_benchmark_report_prints_its_results(experiment):
    """A benchmark's report.md is the table its module printed from the rows results.json
    holds: every row's times appear in it, as printed (4 decimals, seconds)."""
    from mvq.reproduce import build_plan
    from mvq.reproduce.benchmark import Benchmark

    folder = REPO / "docs" / "results" / experiment
    data = json.loads((folder / "results.json").read_text())
    report = (folder / "report.md").read_text()
    assert isinstance(build_plan(experiment, "quick"), Benchmark)
    assert data["rows"] and f"docs/results/{experiment}/results.json" in report
    for row in data["rows"]:
        line = next(li for li in report.splitlines() if li.strip().startswith(f"{row['tokens']} |"))
        for key in ("naive_s", "cached_s"):
            assert f"{row[key]:.4f}" in line, (key, line)


@pytest.mark.parametrize("experiment", [e for e in _committed()
                                        if e not in NOT_KEPT | BENCHMARKS])
def test_committed_reports_regenerate_from_the_kept_runs(experiment, tmp_path):
    """RESULTS.md's figures come from docs/results/EXPERIMENT/results.json; that report is what
    `mvq reproduce EXPERIMENT --report-only --keep docs/results/runs` writes on a fresh clone,
    from the committed records alone (no run folder, no training)."""
    from mvq.reproduce import build_plan, without_priors

    committed = json.loads((REPO / "docs" / "results" / experiment / "results.json").read_text())
    plan = build_plan(experiment, committed["scale"], committed.get("seeds"))
    if committed.get("priors") is False:  # made with --no-priors
        plan = without_priors(plan)
    records, missing = collect(plan, tmp_path / "fresh", None, KEPT)
    assert not (tmp_path / "fresh").exists()
    data = write_report(plan, records, tmp_path / "report", missing)
    assert data["cells"] == committed["cells"]
    assert data["comparisons"] == committed["comparisons"]
    assert data["missing"] == committed["missing"]


@pytest.mark.parametrize("experiment", sorted(NOT_KEPT))
def test_reports_made_before_keep_regenerate_from_their_own_rows(experiment, tmp_path):
    """The reports whose runs were not kept are written again from the rows their results.json
    holds (scripts/report-from-results.py): the same rows and cells, today's comparisons."""
    from mvq.reproduce import build_plan
    from mvq.reproduce.records import from_json

    committed = json.loads((REPO / "docs" / "results" / experiment / "results.json").read_text())
    plan = build_plan(experiment, committed["scale"])
    records = [from_json(r) for r in committed["runs"]]
    data = write_report(plan, records, tmp_path / "report", committed["missing"])
    assert data["runs"] == committed["runs"]
    assert data["cells"] == committed["cells"]
    assert data["comparisons"] == committed["comparisons"]


def test_keep_into_the_run_folders_themselves_leaves_them_alone(tmp_path, monkeypatch):
    """--out D --keep D/runs (how docs/results is regenerated in place): a run folder is its
    own kept folder; nothing is copied over it."""
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    out = tmp_path / "rep"
    execute(_plan([run]), out, progress=False, kept=out / "runs")
    folder = out / "runs" / run.name
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    records, _ = collect(_plan([run]), out, None, out / "runs")
    assert [r.name for r in records] == [run.name]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamp
    assert not [p for p in (out / "runs").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_table5_row_keeps_the_reconstructions_and_the_samples_prd_apart():
    """Both evaluations name their PRD prd_f8 / prd_f1_8: the table5 row shows both (the
    samples' had silently replaced the reconstructions' in the F_8 columns)."""
    from mvq.reproduce.records import RunRecord

    rec = RunRecord("r", {}, 0, "c", {"mse": 0.1, "prd_f8": 0.5, "prd_f1_8": 0.6},
                    samples={"fid_samples": 200.0, "prd_f8": 0.05, "prd_f1_8": 0.07})
    assert rec.values() == {"mse": 0.1, "prd_f8": 0.5, "prd_f1_8": 0.6, "fid_samples": 200.0,
                            "prd_f8_samples": 0.05, "prd_f1_8_samples": 0.07}


def test_a_corrupt_record_is_not_kept_and_the_old_kept_copy_stays(tmp_path, monkeypatch):
    """A run folder whose eval.json a user damaged: one MvqError naming the file; the kept
    copy from before is untouched and no working folder is left."""
    from mvq.errors import MvqError

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    kept, out = tmp_path / "kept", tmp_path / "rep"
    execute(_plan([run]), out, progress=False, kept=kept)
    before = (kept / run.name / "eval.json").read_text()
    (out / "runs" / run.name / "eval.json").write_text("{half")
    (st,) = inspect(_plan([run]), out, None)
    with pytest.raises(MvqError, match="eval.json"):
        keep(dataclasses.replace(st, evaluated=True), kept)
    assert (kept / run.name / "eval.json").read_text() == before
    assert sorted(p.name for p in kept.iterdir()) == [".gitignore", ".keep.lock", run.name]


def test_a_record_kept_before_mask_sampling_existed_drew_masks_per_instance():
    """A kept config without train.mask_sampling was made with masks per instance: it matches a
    plan that asks for that, and not one that asks for a bank per batch, whatever the default."""
    from mvq.configuration.config import config_to_dict, load_config
    from mvq.reproduce.kept import differences

    cfg = load_config("fmnist_f28_k16_quick")
    saved = config_to_dict(cfg)
    del saved["train"]["mask_sampling"]
    assert differences(saved, cfg) == []
    batch = load_config("fmnist_f28_k16_quick", ["train.mask_sampling=batch"])
    assert differences(saved, batch) == ["train.mask_sampling"]
