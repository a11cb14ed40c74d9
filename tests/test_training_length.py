"""`mvq reproduce training-length` (one run per seed, evaluated at each length on the way): the
plan, the stop / evaluate / resume path on tiny runs (lengths 2 / 4 / 6, N = 8), kill and
resume, kept records and the report."""

import dataclasses
import json
import shutil

import pytest
from safetensors.torch import load_file
from test_reproduce import TINY

import mvq.reproduce.runner as runner
import mvq.train
from mvq.cli import main
from mvq.configuration.config import config_to_dict
from mvq.errors import MvqError
from mvq.reproduce import build_plan
from mvq.reproduce import plan as plans
from mvq.reproduce.kinds import TrainingLength
from mvq.reproduce.plan import Changes, Plan, Run
from mvq.reproduce.report import write_report
from mvq.reproduce.runner import collect, execute, inspect
from mvq.reproduce.timing import Measured, model_inception_seconds

LENGTHS = (2, 4, 6)


def _run(model: str, seed: int) -> Run:
    # checkpoints every 5 steps: only the stops put one at 2 and 4
    over = TINY + Changes(model={"type": model, **({"num_masks": 4} if model == "mvqvae" else {})},
                          train={"steps": 6, "val_every": 5, "ckpt_every": 5})
    labels = {"model": model, "tokens": "1+1", "K": 16} | ({"J": 4} if model == "mvqvae" else {})
    return Run(f"tl_{model}_s{seed}", "fmnist_f28_k16_quick.yaml", over, labels, seed)


def _plan(runs) -> Plan:
    real = build_plan("training-length", "quick", 1)
    return dataclasses.replace(real, runs=runs, eval_n=8, metrics=("mse", "psnr"),
                               kind=TrainingLength(lengths=LENGTHS))


@pytest.fixture
def calls(monkeypatch):
    """Each training as (run, steps, resume) and each evaluation as (run, step)."""
    got = {"train": [], "eval": []}
    train, evaluate = mvq.train.train, runner.evaluate_checkpoint

    def spy_train(cfg, resume=False, **kw):
        got["train"].append((cfg.train.out_dir.split("/")[-1], cfg.train.steps, resume))
        return train(cfg, resume=resume, **kw)

    def spy_eval(ckpt, settings, **kw):
        result = evaluate(ckpt, settings, **kw)
        got["eval"].append((ckpt.parent.name, result["step"]))
        return result

    monkeypatch.setattr(mvq.train, "train", spy_train)
    monkeypatch.setattr(runner, "evaluate_checkpoint", spy_eval)
    return got


def test_the_plan_is_fig5s_k16_cells_trained_longer():
    plan = build_plan("training-length", "quick")
    assert plans.TRAINING_LENGTHS == (1200, 4800, 18_750) and 18_750 == 10 * 60_000 // 32
    assert isinstance(plan.kind, TrainingLength) and plan.kind.stops(18_750) == (1200, 4800, 18_750)
    assert len(plan.runs) == len({r.name for r in plan.runs}) == 2 * 2 * 3
    assert plan.eval_n == 500 and plan.metrics == build_plan("fig5", "quick").metrics
    assert plan.match == ("tokens", "K", "steps") and plan.baseline == {"model": "hvqvae"}
    assert any("constant" in n and "stands for a run of s steps" in n for n in plan.notes)
    fig5 = {(r.labels["tokens"], r.labels["model"], r.labels.get("J"), r.seed): r
            for r in build_plan("fig5", "quick").runs if r.labels["K"] == 16}
    for run in plan.runs:
        twin = fig5[(run.labels["tokens"], run.labels["model"], run.labels.get("J"), run.seed)]
        assert run.labels == twin.labels and run.labels.get("J") in (None, 128)
        mine, theirs = (config_to_dict(r.config(None, "x")) for r in (run, twin))
        assert mine["train"].pop("steps") == 18_750 and theirs["train"].pop("steps") == 1200
        for key in ("val_every", "ckpt_every"):  # the cadence differs, nothing that trains
            assert mine["train"].pop(key) == 1200
            theirs["train"].pop(key)
        assert mine == theirs
    with pytest.raises(MvqError, match="--scale quick study"):
        build_plan("training-length", "paper")
    with pytest.raises(MvqError, match="drop --dataset"):
        build_plan("training-length", "quick", dataset="cifar10")


def test_the_estimate_counts_an_evaluation_per_length(tmp_path, capsys):
    plan = build_plan("training-length", "quick")
    states = inspect(plan, tmp_path / "fresh", None)
    est = runner.estimate(plan, states, Measured(), None)
    evals = [p for p in est.parts if p.what == "evaluation"]
    assert len(evals) == 12 and all(
        p.seconds == pytest.approx(3 * model_inception_seconds(500)) for p in evals)
    assert main(["reproduce", "training-length", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "12 runs, evaluation on N=500" in err and "12 of 12 runs to do; estimated" in err
    assert not (tmp_path / "o").exists()


def test_each_length_is_evaluated_on_the_way_and_the_report_compares_them(tmp_path, monkeypatch,
                                                                         calls):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run(m, s) for m in ("hvqvae", "mvqvae") for s in (0, 1)]
    plan, out = _plan(runs), tmp_path / "rep"
    records = execute(plan, out, progress=False)
    # one run each, stopped at 2 and 4 and resumed: three trainings, three evaluations
    first = runs[0].name
    assert [c for c in calls["train"] if c[0] == first] == \
        [(first, 2, False), (first, 4, True), (first, 6, True)]
    assert [c for c in calls["eval"] if c[0] == first] == [(first, 2), (first, 4), (first, 6)]
    folder = out / "runs" / first
    assert {p.name: json.loads(p.read_text())["step"] for p in folder.glob("eval*.json")} == \
        {"eval_2steps.json": 2, "eval_4steps.json": 4, "eval.json": 6}
    # the stopped and resumed run is the uninterrupted one, bit for bit (CPU)
    whole = tmp_path / "whole"
    mvq.train.train(runs[0].config(None, whole), progress=False)
    a = load_file(str(folder / "checkpoint" / "model.safetensors"))
    b = load_file(str(whole / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # a row per run and length; the training time once per run
    assert [(r.name, r.labels["steps"]) for r in records[:3]] == \
        [(f"{first}@{s}", s) for s in LENGTHS]
    assert [r.train_seconds is None for r in records[:3]] == [True, True, False]
    assert records[0].metrics != records[2].metrics

    data = write_report(plan, records, out / "training-length", [])
    cells = {(c["labels"]["model"], c["labels"]["steps"]): c for c in data["cells"]}
    assert set(cells) == {(m, s) for m in ("hvqvae", "mvqvae") for s in LENGTHS}
    assert all(c["seeds"] == 2 for c in cells.values())
    want = sum(r.metrics["mse"] for r in records if r.labels["model"] == "hvqvae"
               and r.labels["steps"] == 4) / 2
    assert cells[("hvqvae", 4)]["stats"]["mse"]["mean"] == pytest.approx(want)
    # MVQ against the baseline at each length (same tokens, K and steps), with the stats
    found = {(c["compared"], c["metric"]): c for c in data["comparisons"]}
    for s in LENGTHS:
        c = found[(f"mvqvae J=4 vs hvqvae (tokens 1+1, K 16, steps {s})", "mse")]
        assert c["labels"]["steps"] == c["against"]["steps"] == s
        assert c["n"] == [2, 2] and c["verdict"] and "q" in c and "ci95" in c
    assert len(found) == 3 * 2  # 3 lengths x (mse, psnr)
    md = (out / "training-length" / "report.md").read_text()
    assert "| tokens | K | model | J | steps | bits/img |" in md
    assert "| 1+1 | 16 | hvqvae |  | 2 |" in md and "stands for a run of s steps" in md
    assert (out / "training-length" / "training-length.png").stat().st_size > 1000

    calls["train"].clear(), calls["eval"].clear()
    execute(plan, out, progress=False)  # all done: nothing trained or evaluated again
    assert calls == {"train": [], "eval": []}


def test_a_kill_resumes_without_redoing_the_earlier_evaluations(tmp_path, monkeypatch, calls):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("mvqvae", 0)
    plan, out = _plan([run]), tmp_path / "rep"
    folder = out / "runs" / run.name
    real = mvq.train.train  # the spy

    def killed_at_5(cfg, resume=False, **kw):  # dies after its step-5 checkpoint
        if cfg.train.steps == 6:
            real(Changes(train={"steps": 5}).apply(cfg), resume=resume, **kw)
            raise KeyboardInterrupt
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(mvq.train, "train", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, out, progress=False)
    (st,) = inspect(plan, out, None)
    assert st.status == "resume at 5" and runner._to_evaluate(plan, folder, 6) == [6]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("eval_*steps.json")}
    assert sorted(stamps) == ["eval_2steps.json", "eval_4steps.json"]
    monkeypatch.setattr(mvq.train, "train", real)
    calls["train"].clear(), calls["eval"].clear()
    execute(plan, out, progress=False)
    assert calls == {"train": [(run.name, 6, True)], "eval": [(run.name, 6)]}
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("eval_*steps.json")} == stamps

    # killed between a stop's training and its evaluation: evaluated on resume, not retrained
    (folder / "eval_4steps.json").unlink()
    shutil.rmtree(folder / "checkpoint")  # back to the step-4 checkpoint alone
    mvq.train.train(Changes(train={"steps": 4}).apply(run.config(None, tmp_path / "again")),
                    progress=False)
    shutil.copytree(tmp_path / "again" / "checkpoint", folder / "checkpoint")
    (folder / "eval.json").unlink()
    calls["train"].clear(), calls["eval"].clear()
    execute(plan, out, progress=False)
    assert calls["eval"] == [(run.name, 4), (run.name, 6)]
    assert calls["train"] == [(run.name, 6, True)]
    # an evaluation that can no longer be made (trained past it) is named, not faked
    (folder / "eval_2steps.json").unlink()
    with pytest.raises(MvqError, match="no checkpoint at step 2 to evaluate"):
        execute(plan, out, progress=False)


def test_kept_records_carry_the_earlier_evaluations_and_regenerate_the_report(tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run(m, s) for m in ("hvqvae", "mvqvae") for s in (0, 1)]
    plan, out, kept = _plan(runs), tmp_path / "rep", tmp_path / "kept"
    first = write_report(plan, execute(plan, out, progress=False, kept=kept), tmp_path / "r1", [])
    assert sorted(p.name for p in (kept / runs[0].name).glob("*.json")) == \
        ["eval.json", "eval_2steps.json", "eval_4steps.json", "run.json"]
    shutil.rmtree(out)
    # a kept run lacking an earlier evaluation is not done
    shutil.copytree(kept, tmp_path / "partial")
    (tmp_path / "partial" / runs[0].name / "eval_2steps.json").unlink()
    states = inspect(plan, tmp_path / "fresh", None, tmp_path / "partial")
    assert [s.kept for s in states] == [False, True, True, True]
    # the CLI on a fresh clone: --report-only --keep, nothing trained, the same report
    monkeypatch.setitem(plans.EXPERIMENTS, "training-length", dataclasses.replace(
        plans.EXPERIMENTS["training-length"], build=lambda scale, seeds, dataset: plan))
    fresh = tmp_path / "fresh"
    assert main(["reproduce", "training-length", "--report-only", "--keep", str(kept),
                 "--out", str(fresh), "--no-progress"]) == 0
    assert not (fresh / "runs").exists()
    again = json.loads((fresh / "training-length" / "results.json").read_text())
    assert again["cells"] == first["cells"] and again["comparisons"] == first["comparisons"]
    assert again["missing"] == [] and len(again["runs"]) == 4 * 3
    assert "training-length.png" in (fresh / "training-length" / "report.md").read_text()
    records, _ = collect(plan, fresh, None, kept)
    assert sorted({r.labels["steps"] for r in records}) == list(LENGTHS)


def test_a_run_cut_short_is_a_row_at_the_lengths_it_reached_and_is_kept_that_far(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run(m, s) for m in ("hvqvae", "mvqvae") for s in (0, 1)]
    plan, out, kept = _plan(runs), tmp_path / "rep", tmp_path / "kept"
    last, real = runs[-1].name, mvq.train.train

    def cut(cfg, resume=False, **kw):  # the session ends on the last run's way from 4 to 6
        if cfg.train.steps == 6 and cfg.train.out_dir.endswith(last):
            raise KeyboardInterrupt
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(mvq.train, "train", cut)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, out, progress=False, kept=kept)
    # kept as far as it got: its two evaluations, at once (before the kill)
    assert sorted(p.name for p in (kept / last).glob("*.json")) == \
        ["eval_2steps.json", "eval_4steps.json", "run.json"]
    here, missing = collect(plan, out, None)
    assert missing == [last]
    assert [r.name for r in here if r.name.startswith(last)] == [f"{last}@2", f"{last}@4"]
    # the same rows from the kept records alone, on a fresh --out
    shutil.rmtree(out)
    again, missing = collect(plan, tmp_path / "fresh", None, kept)
    assert missing == [last]
    assert [(r.name, r.metrics) for r in again] == [(r.name, r.metrics) for r in here]
    data = write_report(plan, again, tmp_path / "report", missing)
    seeds = {(c["labels"]["model"], c["labels"]["steps"]): c["seeds"] for c in data["cells"]}
    assert seeds == {("hvqvae", 2): 2, ("hvqvae", 4): 2, ("hvqvae", 6): 2,
                     ("mvqvae", 2): 2, ("mvqvae", 4): 2, ("mvqvae", 6): 1}
    assert data["missing"] == [last]
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"**Part way:** 1 run in the table only at the lengths they were trained to and " \
        f"evaluated at so far: {last} (2 / 4 steps)" in md and "**Incomplete:**" not in md
    # a kept run part way is not done: it has no weights to go on from, so it trains again
    (st,) = [s for s in inspect(plan, tmp_path / "fresh", None, kept) if s.run.name == last]
    assert not st.kept and st.status == "to train" and "resume at 4" in st.note
    # a kept copy whose step is not the length its config trained to is another run's
    cfg_path = kept / last / "checkpoint" / "config.json"
    info = json.loads(cfg_path.read_text())
    info["config"]["train"]["steps"] = 5
    cfg_path.write_text(json.dumps(info))
    (st,) = [s for s in inspect(plan, tmp_path / "fresh", None, kept) if s.run.name == last]
    assert "other settings" in st.note and "train.steps" in st.note
    assert [r.name for r in collect(plan, tmp_path / "fresh", None, kept)[0]
            if r.name.startswith(last)] == []


def test_a_report_keeps_a_run_found_part_way_in_out(tmp_path, monkeypatch):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    run = _run("hvqvae", 0)
    plan, out, kept = _plan([run]), tmp_path / "rep", tmp_path / "kept"
    real = mvq.train.train

    def cut(cfg, resume=False, **kw):
        if cfg.train.steps > 2:
            raise KeyboardInterrupt
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(mvq.train, "train", cut)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, out, progress=False)  # no --keep while it ran
    records, missing = collect(plan, out, None, kept)  # --report-only --keep: kept that far
    assert [r.name for r in records] == [f"{run.name}@2"] and missing == [run.name]
    assert sorted(p.name for p in (kept / run.name).glob("*.json")) == \
        ["eval_2steps.json", "run.json"]


def test_a_run_killed_between_two_lengths_is_kept_with_the_lengths_before(tmp_path, monkeypatch):
    """A kill after a checkpoint between two stops (the part training to 4 saved at 3): the
    checkpoint's config says the part's length (4), not its step; the report kept from it
    still has the run's row at 2, on a fresh --out."""
    from mvq.train.engine import Training

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    base = _run("hvqvae", 0)
    run = dataclasses.replace(base, changes=base.changes + Changes(train={"ckpt_every": 3}))
    plan, out, kept = _plan([run]), tmp_path / "rep", tmp_path / "kept"
    save = Training.save

    def killed_after_3(self):
        save(self)
        if self.state.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Training, "save", killed_after_3)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, out, progress=False)
    (st,) = inspect(plan, out, None)
    assert st.status == "resume at 3"
    records, missing = collect(plan, out, None, kept)  # --report-only --keep
    assert [r.name for r in records] == [f"{run.name}@2"] and missing == [run.name]
    saved = json.loads((kept / run.name / "checkpoint" / "config.json").read_text())
    assert (saved["step"], saved["config"]["train"]["steps"]) == (3, 4)
    again, _ = collect(plan, tmp_path / "fresh", None, kept)
    assert [(r.name, r.metrics) for r in again] == [(r.name, r.metrics) for r in records]
