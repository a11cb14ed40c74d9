"""`mvq reproduce`'s estimates come from the seconds earlier runs in the same --out measured for
the same work, else from the model, and say which (issue 21). Earlier runs are faked on disk:
a checkpoint config.json with its step (the pre-manifest form), run.json, eval.json and
samples_*.json, as the runner writes them."""

import json
from dataclasses import replace

import pytest
from test_reproduce import _plan, _run

from mvq.configuration.config import config_to_dict, load_config
from mvq.models.base import build_model
from mvq.reproduce import build_plan
from mvq.reproduce.kinds import Generation
from mvq.reproduce.plan import Changes, Plan, PriorSpec
from mvq.reproduce.report import write_report
from mvq.reproduce.runner import collect, describe, estimate, execute, inspect
from mvq.reproduce.timing import (
    MEASURED,
    MODEL,
    Measured,
    model_prior_step_seconds,
    model_step_seconds,
    prior_work,
    read_estimates,
    tokens_per_image,
)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _earlier(out, run, step, train_seconds, eval_seconds=None, n=12,
             metrics=("mse", "psnr", "lpips")):
    """A finished run as the runner leaves it: checkpoint step and config, run.json, eval.json."""
    folder = out / "runs" / run.name
    _write(folder / "checkpoint" / "config.json",
           {"step": step, "config": config_to_dict(run.config(None, folder))})
    _write(folder / "run.json", train_seconds if isinstance(train_seconds, str)
           else {"train_seconds": train_seconds})
    if eval_seconds is not None:
        _write(folder / "eval.json", {"seconds": eval_seconds, "n": n,
                                      "planned_metrics": list(metrics)})
    return folder


def _estimate(plan, out):
    return estimate(plan, inspect(plan, out, None), Measured.scan(out / "runs"), None)


def test_measured_seconds_of_the_same_work_win_over_the_model(tmp_path):
    out = tmp_path / "rep"
    _earlier(out, _run("hvqvae", 0), 4, 400.0, eval_seconds=50.0)  # 100 s per step
    _earlier(out, _run("hvqvae", 2), 2, 400.0)  # 200 s per step: the median is 150
    other = replace(_run("hvqvae", 3), name="tiny_other",
                    changes=_run("hvqvae", 3).changes + Changes(model={"dim": 4}))
    _earlier(out, other, 4, 4.0)  # other model settings: not the same work
    plan = _plan([_run("hvqvae", 1), _run("mvqvae", 0, j=4)])
    est = _estimate(plan, out)
    hv = {p.what: (p.seconds, p.source) for p in est.of("tiny_hvqvae_s1")}
    assert hv == {"training": (4 * 150.0, MEASURED), "evaluation": (50.0, MEASURED)}
    mv = {p.what: (p.seconds, p.source) for p in est.of("tiny_mvqvae_j4_s0")}
    train = 4 * model_step_seconds("mvqvae", 4)
    assert mv == {"training": (pytest.approx(train), MODEL), "evaluation": (0.0, MODEL)}
    assert est.by_source()[MEASURED] == 650.0 and est.seconds == pytest.approx(650 + train)
    text = describe(plan, inspect(plan, out, None), est)
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines["tiny_hvqvae_s1"].endswith("to train  ~11 min (measured)")
    assert lines["tiny_mvqvae_j4_s0"].endswith("(model)")
    assert "estimated 11 min of work on this machine (11 min from the measured seconds" in text


@pytest.mark.parametrize("record", ["not json", {"train_seconds": "fast"},
                                    {"train_seconds": -5.0}, {"train_seconds": True},
                                    {"other": 1.0}])
def test_unusable_records_fall_back_to_the_model(tmp_path, record):
    out = tmp_path / "rep"
    _earlier(out, _run("hvqvae", 0), 4, record if isinstance(record, str) else 0.0)
    if not isinstance(record, str):
        _write(out / "runs" / _run("hvqvae", 0).name / "run.json", record)
    _earlier(out, _run("hvqvae", 2), 0, 400.0)  # step 0: nothing per step to learn
    [part] = [p for p in _estimate(_plan([_run("hvqvae", 1)]), out).parts if p.what == "training"]
    assert part.source == MODEL and part.seconds == pytest.approx(
        4 * model_step_seconds("hvqvae"))


def test_prior_steps_and_samples_from_earlier_priors(tmp_path):
    out = tmp_path / "rep"
    spec = PriorSpec("gpt", 10, 0, "GPT")
    folder = _earlier(out, _run("hvqvae", 0), 4, 40.0)
    prior = folder / "priors" / "gpt_20steps_s3"  # another seed and length: the same per step
    _write(prior / "checkpoint" / "config.json", {"step": 20})
    _write(prior / "run.json", {"train_seconds": 100.0})
    _write(prior / "samples_default.json", {"seconds": 30.0, "n": 12,
                                            "planned_metrics": ["nll"]})
    _write(folder / "priors" / "maskgit_20steps_s0" / "run.json", {"train_seconds": 1.0})
    plan = Plan("gen", "quick", "tiny", [replace(_run("hvqvae", 1), priors=(
        spec, PriorSpec("maskgit", 10, 0, "MaskGIT")))], 12, (), ("model", "prior"),
        sample_metrics=("nll",), kind=Generation())
    est = _estimate(plan, out)
    got = {(p.prior, p.what): (p.seconds, p.source) for p in est.parts}
    assert got[("gpt_10steps_s0", "prior training")] == (10 * 5.0, MEASURED)
    assert got[("gpt_10steps_s0", "samples_default.json")] == (30.0, MEASURED)
    # maskgit's earlier folder has no checkpoint: no step, no measurement
    assert got[("maskgit_10steps_s0", "prior training")][1] == MODEL
    assert got[("maskgit_10steps_s0", "samples_default.json")][1] == MODEL
    assert got[("", "the real images' Inception features, once")][1] == MODEL


def test_the_estimate_printed_at_each_start_goes_into_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    plan = Plan("fig5", "quick", "tiny", [_run("hvqvae", 0)], 12, ("mse",), ("model",))
    out = tmp_path / "rep"
    execute(plan, out, progress=False)
    printed = capsys.readouterr().err
    [entry] = read_estimates(out / "fig5")
    assert entry["runs_to_do"] == 1 and entry["model_seconds"] == entry["seconds"] > 0
    assert f"estimated {-(-entry['seconds'] // 60)} min of work on this machine" in printed
    assert "two sharing the plan (the same command twice, each with --threads 1) about half" \
        in printed
    execute(plan, out, progress=False)  # nothing left to do: nothing logged
    assert read_estimates(out / "fig5") == [entry]
    records, missing = collect(plan, out, None)
    data = write_report(plan, records, out / "fig5", missing)
    assert data["estimates"] == [entry]
    line = (out / "fig5" / "report.md").read_text().splitlines()[-1]
    assert line.startswith("- work estimated when it started") and "1 run to do: " in line
    # run on the CPU with one thread: its CPU seconds beside the wall time, for later estimates
    # (the train call's, its set-up included, which a tiny run's loop does not outlast)
    import torch

    folder = out / "runs" / plan.runs[0].name
    ran = json.loads((folder / "run.json").read_text())
    evaluated = json.loads((folder / "eval.json").read_text())
    assert ran["train_timed_steps"] == plan.runs[0].config(None, folder).train.steps
    if torch.get_num_threads() == 1:
        assert ran["train_cpu_seconds"] > 0 and evaluated["cpu_seconds"] > 0
    else:
        assert "train_cpu_seconds" not in ran and "cpu_seconds" not in evaluated


def test_cpu_seconds_win_over_a_wall_time_stretched_by_shared_cores(tmp_path):
    """A run measured while other processes shared the cores took longer on the clock than its
    CPU seconds say; the estimate reads the CPU seconds (what the work costs on its own)."""
    out = tmp_path / "rep"
    folder = _earlier(out, _run("hvqvae", 0), 4, 800.0, eval_seconds=90.0)
    _write(folder / "run.json", {"train_seconds": 800.0, "train_cpu_seconds": 400.0})
    gone = _earlier(out, _run("hvqvae", 2), 4, 400.0)  # no CPU seconds left: the wall time
    _write(gone / "run.json", {"train_seconds": 400.0, "train_cpu_seconds": None})
    _write(folder / "eval.json", {"seconds": 90.0, "cpu_seconds": 50.0, "n": 12,
                                  "planned_metrics": ["mse", "psnr", "lpips"]})
    est = _estimate(_plan([_run("hvqvae", 1)]), out)
    got = {p.what: (p.seconds, p.source) for p in est.of("tiny_hvqvae_s1")}
    assert got == {"training": (4 * 100.0, MEASURED), "evaluation": (50.0, MEASURED)}  # median


def test_the_cpu_clock_counts_on_the_cpu_only(monkeypatch):
    import time

    import torch

    from mvq.reproduce import timing

    with timing.cpu_clock("cpu") as clock:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    assert 0.05 <= clock["cpu_seconds"] < 0.5
    monkeypatch.setattr(timing, "pick_device", lambda name: torch.device("cuda"))
    with timing.cpu_clock("cuda") as clock:
        pass
    assert clock == {}


def test_cpu_seconds_are_kept_only_while_every_part_of_a_run_had_them():
    from mvq.reproduce.runner import _train_times

    cpu = {"cpu_seconds": 30.0}
    assert _train_times({}, 40.0, cpu, 1) == {"train_seconds": 40.0, "train_cpu_seconds": 30.0}
    resumed = _train_times({"train_seconds": 40.0, "train_cpu_seconds": 30.0}, 20.0, cpu, 1)
    assert resumed == {"train_seconds": 60.0, "train_cpu_seconds": 60.0}
    # a part on several threads, on a GPU (no CPU clock), or after parts without CPU seconds
    gone = {"train_seconds": 60.0, "train_cpu_seconds": None}
    assert _train_times({"train_seconds": 40.0, "train_cpu_seconds": 30.0}, 20.0, cpu, 2) == gone
    assert _train_times({"train_seconds": 40.0, "train_cpu_seconds": 30.0}, 20.0, {}, 1) == gone
    assert _train_times({"train_seconds": 40.0}, 20.0, cpu, 1) == {"train_seconds": 60.0}
    assert _train_times({"train_seconds": 40.0, "train_cpu_seconds": None}, 20.0, cpu, 1) == gone
    assert _train_times({}, 40.0, cpu, 4) == {"train_seconds": 40.0}


def test_the_steps_a_resumed_run_timed_count_not_its_checkpoint_step():
    """A run killed in training writes no time; its resumption times only the steps from its
    checkpoint on. run.json says how many steps its seconds cover, so the estimate divides by
    those, not by the checkpoint's step (which made such a run look 3x faster)."""
    from mvq.reproduce.runner import _train_times

    cpu = {"cpu_seconds": 30.0}
    assert _train_times({}, 40.0, cpu, 1, 400) == {
        "train_seconds": 40.0, "train_cpu_seconds": 30.0, "train_timed_steps": 400}
    part2 = _train_times({"train_seconds": 40.0, "train_cpu_seconds": 30.0,
                          "train_timed_steps": 400}, 20.0, cpu, 1, 200)
    assert part2["train_timed_steps"] == 600 and part2["train_seconds"] == 60.0
    # after a record from before the field the count is unknown: none is written
    assert "train_timed_steps" not in _train_times({"train_seconds": 40.0}, 20.0, cpu, 1, 200)
    for bad in (True, -3, "400", 0):  # an unsound count in run.json is not added to
        assert "train_timed_steps" not in _train_times(
            {"train_seconds": 40.0, "train_timed_steps": bad}, 20.0, cpu, 1, 200)


def test_the_estimate_divides_by_the_timed_steps(tmp_path):
    from mvq.reproduce.timing import timed_steps

    out = tmp_path / "rep"
    # resumed at step 3 of 4 after a kill: 100 s timed one step, not four
    folder = _earlier(out, _run("hvqvae", 0), 4, 100.0)
    _write(folder / "run.json", {"train_seconds": 100.0, "train_timed_steps": 1})
    est = _estimate(_plan([_run("hvqvae", 1)]), out)
    assert {p.what: p.seconds for p in est.of("tiny_hvqvae_s1")}["training"] == 4 * 100.0
    assert timed_steps({"train_timed_steps": 1}, 4) == 1
    for bad in (None, 0, 9, True, 2.5):  # absent, unsound or more than the checkpoint's step
        assert timed_steps({"train_timed_steps": bad}, 4) == 4


def test_cpu_clock_measurements_win_over_wall_times_of_the_same_work(tmp_path):
    """Two runs measured on the wall clock of a busy machine (500 s a step) and one on its CPU
    clock (25 s a step): the median of all three would be 500, the CPU one says 25."""
    out = tmp_path / "rep"
    _earlier(out, _run("hvqvae", 0), 4, 2000.0)
    _earlier(out, _run("hvqvae", 2), 4, 2000.0)
    cpu = _earlier(out, _run("hvqvae", 3), 4, 2000.0)
    _write(cpu / "run.json", {"train_seconds": 2000.0, "train_cpu_seconds": 100.0})
    est = _estimate(_plan([_run("hvqvae", 1)]), out)
    assert {p.what: p.seconds for p in est.of("tiny_hvqvae_s1")}["training"] == 4 * 25.0


def _log_estimates(folder, times):
    from mvq.reproduce.timing import Estimate, Part, log_estimate

    for _ in range(times):
        log_estimate(folder, Estimate([Part("r", "", "training", 60.0, MODEL)]), 3)


def test_processes_sharing_a_plan_log_every_estimate_and_the_report_folds_repeats(tmp_path):
    """Two processes may start the same plan at once: each start's estimate is appended under
    a lock (none lost to a read-modify-write race), and the report lists a start that printed
    the same estimate for the same runs as the one before it once, with the count."""
    import multiprocessing

    from mvq.reproduce.report import _times

    procs = [multiprocessing.get_context("fork").Process(target=_log_estimates,
                                                         args=(tmp_path, 25)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert [proc.exitcode for proc in procs] == [0] * 4
    assert len(read_estimates(tmp_path)) == 100

    def entry(date, todo, seconds):
        return {"date": date, "runs_to_do": todo, "seconds": seconds, "measured_seconds": 0,
                "model_seconds": seconds}

    logged = [entry("06:07", 36, 600), entry("06:08", 36, 600), entry("07:00", 30, 540),
              entry("08:00", 36, 600)]  # the last: not next to its twin, a start of its own
    [line] = [x for x in _times([], logged) if x.startswith("- work estimated")]
    parts = line.split("CPU): ", 1)[1].split("; ")
    assert parts == ["06:07, 36 runs to do: 10 min (0 min measured, 10 min model), printed by 2 "
                     "starts (processes sharing the plan)",
                     "07:00, 30 runs to do: 9 min (0 min measured, 9 min model)",
                     "08:00, 36 runs to do: 10 min (0 min measured, 10 min model)"]


def test_the_prior_model_grows_with_the_transformer_work_per_image():
    """A fresh --out (nothing measured): the prior's step comes from its blocks' multiply-adds
    per image, 12 L d^2 per token, so the GPT over MoVQ's 196 ids is no longer estimated at the
    cost of one over two hvqvae tokens (measured here at one thread: 0.77 s against 0.03 s per
    step; a per-kind constant had put both at 0.045 s)."""
    movq = build_plan("movq-table2", "quick", 1).runs[0]
    cfg = movq.config(None, "x").model
    assert tokens_per_image(cfg) == (7 * 7 * 4, 0)
    gpt, maskgit = movq.priors
    # hand-computed: 4 layers of width 64 over 196 ids; MaskGIT over the 49 positions
    assert prior_work("gpt", gpt.sizes, cfg) == 12 * 4 * 64 ** 2 * 196
    assert prior_work("maskgit", maskgit.sizes, cfg) == 12 * 4 * 64 ** 2 * 49
    hvq = [r.config(None, "x").model for r in build_plan("pixelcnn-vs-gpt", "quick", 1).runs]
    assert [tokens_per_image(m) for m in hvq] == [(1, 1), (4, 1)]  # 1+1 and 4+1, Table 4 sizes
    assert prior_work("gpt", None, hvq[1]) == 12 * 8 * 128 ** 2 * 4 + 12 * 4 * 128 ** 2 * 1
    # the tokenizer models' own count, from a built model, agrees with the config-only one
    assert build_model(cfg).tokens == tokens_per_image(cfg)
    assert build_model(hvq[1]).tokens == tokens_per_image(hvq[1])
    step = {name: model_prior_step_seconds(kind, prior_work(kind, sizes, model))
            for name, kind, sizes, model in [
                ("gpt 1+1", "gpt", None, hvq[0]), ("gpt 4+1", "gpt", None, hvq[1]),
                ("gpt movq", "gpt", gpt.sizes, cfg), ("maskgit movq", "maskgit", None, cfg)]}
    measured = {"gpt 1+1": 0.030, "gpt 4+1": 0.13, "gpt movq": 0.77, "maskgit movq": 0.18}
    assert all(0.8 < step[k] / measured[k] < 1.25 for k in measured), step
    assert model_prior_step_seconds("pixelcnn") > 0


def test_the_config_only_token_count_is_the_model_class_own():
    """tokens_per_image asks the tokenizer class (tokens_of), so it counts a residual VQ's
    depth ids per position as the built model does (a copy of the geometry here had counted
    one id per position)."""
    for over in ([], ["model.type=vqvae"], ["model.type=vqvae", "model.quantizer=rvq",
                                            "model.depth=3"]):
        cfg = load_config("fmnist_f28_k16_quick", over).model
        assert tokens_per_image(cfg) == build_model(cfg).tokens
    assert tokens_per_image(cfg) == (3, 0)


def test_the_report_counts_all_the_recorded_work_and_each_prior_once():
    """table5's rows carry their prior's training and sampling; a MaskGIT prior sampled with
    several decodings was trained once (hand-computed minutes)."""
    from mvq.reproduce.records import RunRecord, SampleRecord
    from mvq.reproduce.report import _times

    row = RunRecord("t", {}, 0, "ck", {}, train_seconds=600.0, eval_seconds=120.0,
                    samples={"fid": 1.0}, prior_seconds=300.0)

    def sampled(decoding):
        return SampleRecord(f"m/p/{decoding}", {}, 0, "prior-ck", {}, None, "m", 240.0, 60.0,
                            "maskgit", None, False)

    (line,) = _times([row, sampled("s4"), sampled("s8")], [])
    # 10 + 2 + (5 + 4 + 2 * 1) = 23 min: the prior's 4 min of training counted once
    assert line == ("- work recorded by the 3 rows above (one process's time; processes sharing "
                    "the plan divide the wall time): 23 min, of which 10 min tokenizer training, "
                    "2 min reconstruction evaluation, 11 min prior training and sampling")
    assert "prior_seconds" not in RunRecord("f", {}, 0, "ck", {}).to_json()  # fig5's rows
