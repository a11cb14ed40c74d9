"""`mvq reproduce`: plans, skip / resume, the report (tiny runs on the shapes set)."""

import json

import pytest
from conftest import assert_labelled
from PIL import Image

import mvq.train
from mvq.cli import main
from mvq.errors import MvqError
from mvq.files.figures import GAP
from mvq.reproduce import build_plan
from mvq.reproduce.kinds import ClassConditional, Plot, TokenizerSweep, plot
from mvq.reproduce.plan import Changes, Decode, Plan, Run
from mvq.reproduce.records import Cell, Stat
from mvq.reproduce.report import aggregate
from mvq.reproduce.runner import collect, execute, inspect
from mvq.values.decoding import Decoding

TINY = Changes(model={"hidden": 16, "res_blocks": 1, "res_channels": 8, "dim": 8, "dim2": 8},
               data={"name": "shapes", "train_limit": 64, "val_limit": 16},
               train={"batch_size": 8, "grid_images": 4, "log_every": 1})


def _run(model: str, seed: int, steps: int = 4, j: int | None = None) -> Run:
    over = TINY + Changes(model={"type": model},
                          train={"steps": steps, "val_every": 2, "ckpt_every": 2})
    labels = {"model": model, "tokens": "1+1", "K": 16}
    if j:
        over += Changes(model={"num_masks": j})
        labels["J"] = j
    name = f"tiny_{model}" + (f"_j{j}" if j else "") + f"_s{seed}"
    return Run(name, "fmnist_f28_k16_quick.yaml", over, labels, seed)


def _plan(runs) -> Plan:
    return Plan("fig5", "quick", "tiny", runs, 12, ("mse", "psnr", "lpips"),
                ("tokens", "K", "model", "J"), baseline={"model": "hvqvae"},
                kind=TokenizerSweep(Plot("J", "tokens")))


@pytest.fixture
def counted_train(monkeypatch):
    calls = []
    real = mvq.train.train

    def spy(cfg, resume=False, **kw):
        calls.append((cfg.train.out_dir, resume))
        return real(cfg, resume=resume, **kw)

    monkeypatch.setattr(mvq.train, "train", spy)
    return calls


def test_reproduce_skips_finished_and_resumes_interrupted(tmp_path, counted_train, monkeypatch,
                                                          capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run("hvqvae", 0), _run("hvqvae", 1), _run("mvqvae", 0, j=4), _run("mvqvae", 0, j=8)]
    plan = _plan(runs)
    out = tmp_path / "rep"
    # an interrupted run: the first model stopped at its step-2 checkpoint
    half = _run("hvqvae", 0, steps=2)
    mvq.train.train(half.config(None, out / "runs" / runs[0].name), progress=False)
    states = inspect(plan, out, None)
    assert [s.status for s in states] == ["resume at 2", "to train", "to train", "to train"]
    counted_train.clear()

    capsys.readouterr()
    execute(plan, out, progress=False)
    assert [(p.split("/")[-1], r) for p, r in counted_train] == \
        [(runs[0].name, True), (runs[1].name, False), (runs[2].name, False), (runs[3].name, False)]
    # no bar (--no-progress, a log file): a line per run, the training steps, the total
    err = capsys.readouterr().err
    assert f"fig5 run 1/4: {runs[0].name}: resume at 2 (0 s so far)" in err
    assert f"fig5 run 4/4: {runs[3].name}: to train" in err
    assert "step 4/4" in err and "(estimated " in err
    assert "fig5: this process ran 4 of the 4 runs to do, in " in err
    assert all(s.status == "done" for s in inspect(plan, out, None))
    # resumed run = an uninterrupted one (same seed, same steps), bit for bit on CPU
    whole = tmp_path / "whole"
    mvq.train.train(runs[0].config(None, whole), progress=False)
    from safetensors.torch import load_file

    a = load_file(str(out / "runs" / runs[0].name / "checkpoint" / "model.safetensors"))
    b = load_file(str(whole / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # everything done: a second call trains and evaluates nothing
    counted_train.clear()
    stamp = (out / "runs" / runs[2].name / "eval.json").stat().st_mtime_ns
    execute(plan, out, progress=False)
    assert counted_train == []
    assert (out / "runs" / runs[2].name / "eval.json").stat().st_mtime_ns == stamp


def test_report_aggregates_seeds_and_writes_table_plot_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run("hvqvae", 0), _run("hvqvae", 1), _run("mvqvae", 0, j=4), _run("mvqvae", 1, j=4),
            _run("mvqvae", 0, j=8)]
    plan = _plan(runs)
    out = tmp_path / "rep"
    execute(plan, out, progress=False)
    records, missing = collect(plan, out, None)
    assert missing == [] and len(records) == 5
    cells = aggregate(plan, records)
    by = {(c.labels["model"], c.labels.get("J")): c for c in cells}
    assert set(by) == {("hvqvae", None), ("mvqvae", 4), ("mvqvae", 8)}
    base = by[("hvqvae", None)]
    mses = [r.metrics["mse"] for r in records if r.labels["model"] == "hvqvae"]
    assert base.seeds == 2
    assert base.stats["mse"].mean == pytest.approx(sum(mses) / 2)
    assert base.stats["mse"].std == pytest.approx(abs(mses[0] - mses[1]) / 2 ** 0.5)
    assert by[("mvqvae", 8)].stats["mse"].std is None  # one seed: no spread
    # honest rate per J: log2(J) mask bits on top of 2 x log2(8)
    assert by[("mvqvae", 4)].stats["bits_per_image"].mean == 6 + 2
    assert by[("mvqvae", 8)].stats["bits_per_image"].mean == 6 + 3

    from mvq.reproduce.report import write_report

    data = write_report(plan, records, out / "fig5", missing)
    folder = out / "fig5"
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(data))
    assert all("config" in r and r["config"]["model"]["type"] == r["labels"]["model"]
               for r in data["runs"])
    md = (folder / "report.md").read_text()
    assert "| 1+1 | 16 | hvqvae |" in md and " ± " in md and "fig5.png" in md
    assert (folder / "fig5.png").stat().st_size > 1000
    assert any(c["compared"].startswith("mvqvae J=4 vs hvqvae") and c["metric"] == "mse"
               for c in data["comparisons"])
    assert "| compared | metric | verdict |" in md


def test_report_only_marks_missing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run("hvqvae", 0), _run("mvqvae", 0, j=4)]
    plan = _plan(runs)
    out = tmp_path / "rep"
    execute(_plan(runs[:1]), out, progress=False)
    records, missing = collect(plan, out, None)
    assert [r.name for r in records] == [runs[0].name] and missing == [runs[1].name]


def test_plan_refuses_a_folder_with_other_settings(tmp_path):
    out = tmp_path / "rep"
    run = _run("hvqvae", 0)
    mvq.train.train(_run("hvqvae", 0, steps=2).config(None, out / "runs" / run.name),
                    progress=False)
    other = Run(run.name, run.preset, run.changes + Changes(model={"dim": 4}), run.labels, 0)
    with pytest.raises(MvqError, match="other model settings"):
        inspect(_plan([other]), out, None)


def test_quick_plans_fit_their_claims():
    fig5 = build_plan("fig5", "quick")
    names = [r.name for r in fig5.runs]
    # 2 factors x 2 K x (3 baseline + 3 seeds at each of 4 J), the headline cell (1+1 tokens,
    # K = 16) with 5 seeds
    assert len(names) == len(set(names)) == 3 * (3 + 3 * 4) + 5 * (1 + 4)
    per = {}
    for r in fig5.runs:
        key = (r.labels["F"], r.labels["K"], r.labels["model"], r.labels.get("J"))
        per.setdefault(key, []).append(r.seed)
    assert set(per) == {(f, k, "hvqvae", None) for f in (28, 14) for k in (16, 256)} | {
        (f, k, "mvqvae", j) for f in (28, 14) for k in (16, 256) for j in (1, 16, 128, 1024)}
    assert all(seeds == ([0, 1, 2, 3, 4] if key[:2] == (28, 16) else [0, 1, 2])
               for key, seeds in per.items())
    assert "(5 at 1+1 tokens, K = 16, the headline cell)" in fig5.notes[0]
    assert len(build_plan("fig5", "quick", seeds=6).runs) == 4 * 6 * 5  # never fewer than asked
    cfg = fig5.runs[0].config(None, "x")
    assert (cfg.model.factor, cfg.model.codebook_size, cfg.train.steps) == (28, 16, 1200)
    k256 = next(r for r in fig5.runs if r.labels["K"] == 256).config(None, "x")
    assert k256.model.codebook_size == 256
    assert "the baseline and every J with 3 seeds" in fig5.notes[0]
    # every experiment defaults to 3 seeds at quick scale, 1 at paper scale
    t1 = build_plan("table1", "quick").runs
    assert sorted({r.seed for r in t1 if (r.labels["F"], r.labels["K"]) != (28, 16)}) == [0, 1, 2]
    assert sorted({r.seed for r in t1 if (r.labels["F"], r.labels["K"]) == (28, 16)}) == list(
        range(5))
    assert {r.seed for r in build_plan("table5", "quick").runs} == {0, 1, 2}  # priors on 3
    assert sorted({s.seed for s in build_plan("movq-table2", "quick").runs[0].priors}) == [0, 1, 2]
    assert {r.seed for r in build_plan("table1", "paper", dataset="cifar10").runs} == {0}
    # two-vs-five reuses fig5's runs: the same names, so the same folders
    assert {r.name for r in build_plan("two-vs-five", "quick").runs} <= set(names)
    t1 = build_plan("table1", "quick", seeds=1)
    assert {(r.labels["model"], r.labels["F"], r.labels["K"]) for r in t1.runs} == {
        (m, f, k) for m in ("hvqgan", "mvqgan") for f in (28, 14) for k in (16, 256)}
    t5 = build_plan("table5", "quick", seeds=1)
    assert [r.name for r in t5.runs] == [r.name for r in t1.runs if r.seed == 0] and all(
        [s.kind for s in r.priors] == ["gpt"] for r in t5.runs)
    movq = build_plan("movq-ablation", "quick", seeds=1)
    cfgs = [r.config(None, "x").model for r in movq.runs]
    assert {c.num_channels * c.code_dim for c in cfgs} == {64}  # c splits the same latent
    assert {c.f0 for c in cfgs} >= {"fourier", "sinusoidal", "constant"}


def test_paper_scale_plans_use_the_papers_settings():
    fig5 = build_plan("fig5", "paper", seeds=1)
    cfg = fig5.runs[-1].config(None, "x")
    assert cfg.train.steps == 350 * 60_000 // 32 and cfg.model.num_masks == 2048
    t1 = build_plan("table1", "paper", seeds=1, dataset="cifar10")
    cfgs = [r.config("/data/cifar", "x") for r in t1.runs]
    assert {c.model.factor for c in cfgs} == {32, 16, 8}  # 1+1, 4+1, 16+1 tokens at 32 px
    assert {(c.model.image_size, c.model.channels, c.model.dim, c.data.name) for c in cfgs} == \
        {(32, 3, 96, "cifar10")}
    assert {c.train.steps for c in cfgs} == {650 * 50_000 // 32}


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "fig5", "--dataset", "cifar10"], "FashionMNIST only"),
    (["reproduce", "table1", "--scale", "paper", "--dataset", "mnist"], "--dataset must be one of"),
    (["reproduce", "fig5", "--seeds", "0"], "--seeds: expected an integer >= 1, found 0"),
    (["reproduce", "fig5", "--report-only", "--out", "{tmp}"], "no finished run"),
])
def test_cli_errors(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own value checks
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_dry_run_prints_plan_and_estimate(tmp_path, capsys):
    assert main(["reproduce", "fig5", "--dry-run", "--out", str(tmp_path / "new")]) == 0
    err = capsys.readouterr().err
    assert "70 runs" in err and "estimated 6 h" in err and "to train" in err
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_two_processes_share_the_runs(tmp_path, monkeypatch, counted_train):
    """A run whose reproduce lock another process holds is left to it; the next one is taken."""
    import fcntl

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    runs = [_run("hvqvae", 0), _run("mvqvae", 0, j=4)]
    plan = _plan(runs)
    out = tmp_path / "rep"
    held = out / "runs" / runs[0].name
    held.mkdir(parents=True)
    with open(held / ".reproduce.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the other process"
        records = execute(plan, out, progress=False)
    assert [r.name for r in records] == [runs[1].name]
    assert [p.split("/")[-1] for p, _ in counted_train] == [runs[1].name]
    assert collect(plan, out, None)[1] == [runs[0].name]
    execute(plan, out, progress=False)  # released: now it is done here
    assert collect(plan, out, None)[1] == []


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "below"):
        assert main(["reproduce", "fig5", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a file, expected a folder" in err[0]
    assert blocker.read_text() == "keep me"


def _tiny_cifar(root):
    import pickle

    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)


def _tiny_folder(root):
    import numpy as np
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(4):
            path = root / split / "class_a" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("dataset, write", [("cifar10", _tiny_cifar), ("celeba64", _tiny_folder),
                                            ("imagenet64", _tiny_folder)])
def test_paper_scale_reads_the_users_files(dataset, write, tmp_path, monkeypatch):
    """The paper plans' data wiring on tiny files in each data set's on-disk format: the first
    table1 run (its real model and data settings; one step, batch 2) trains and is evaluated."""
    import dataclasses

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    write(root)
    plan = build_plan("table1", "paper", seeds=1, dataset=dataset)
    first = plan.runs[0]
    tiny = dataclasses.replace(first, changes=first.changes + Changes(
        train={"steps": 1, "batch_size": 2, "val_every": 1, "ckpt_every": 1, "grid_images": 2},
        data={"val_limit": 2}, model={"num_masks": 4}, loss={"disc_start": 0}))
    plan = dataclasses.replace(plan, runs=[tiny], eval_n=2, metrics=("mse", "psnr"))
    records = execute(plan, tmp_path / "rep", data_root=str(root), progress=False)
    (rec,) = records
    size = {"cifar10": 32}.get(dataset, 64)
    assert rec.config["data"]["root"] == str(root)
    assert (rec.config["model"]["image_size"], rec.config["model"]["channels"]) == (size, 3)
    assert 0 < rec.metrics["mse"] < 1


def test_a_run_with_a_prior_trains_it_and_evaluates_its_samples(tmp_path, monkeypatch):
    """table5's path: tokens of the training split, a GPT prior, sample metrics (NLL here, to
    stay fast); a second call reuses all of it."""
    import dataclasses

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    from mvq.reproduce.plan import PriorSpec

    run = dataclasses.replace(_run("mvqvae", 0, j=4), priors=(PriorSpec("gpt", 3, 0),))
    plan = dataclasses.replace(_plan([run]), sample_metrics=("nll",))
    out = tmp_path / "rep"
    (rec,) = execute(plan, out, progress=False)
    folder = out / "runs" / run.name
    assert (folder / "tokens_train.safetensors").is_file()
    prior = folder / "priors" / "gpt_3steps_s0"
    assert (prior / "checkpoint" / "config.json").is_file()
    assert rec.samples["nll_primary"] > 0 and rec.samples["nll_secondary"] > 0
    stamp = (prior / "samples_default.json").stat().st_mtime_ns
    execute(plan, out, progress=False)
    assert (prior / "samples_default.json").stat().st_mtime_ns == stamp
    cells = aggregate(plan, collect(plan, out, None)[0])
    assert cells[0].stats["nll_primary"].n == 1


def _seeds(mean: float, sd: float) -> Stat:
    """Three seeds' values with this mean and sample sd."""
    return Stat.of([mean - sd, mean, mean + sd])


def test_two_vs_five_compares_across_token_counts():
    """MVQ at 1+1 is set against the baseline at 1+1 and at 4+1 (same K), not only its own."""
    from mvq.reproduce.report import comparisons

    plan = build_plan("two-vs-five", "quick")

    def cell(model, tokens, mse, j=None):
        labels = {"tokens": tokens, "K": 16, "model": model, **({"J": j} if j else {})}
        return Cell(labels, ["a", "b", "c"], {"mse": _seeds(mse, 0.001)})

    found = comparisons(plan, [cell("hvqvae", "1+1", 0.036), cell("hvqvae", "4+1", 0.020),
                               cell("mvqvae", "1+1", 0.030, 128)])
    assert [c["compared"] for c in found] == ["tokens=1+1 mvqvae J=128 vs tokens=1+1 hvqvae (K 16)",
                                              "tokens=1+1 mvqvae J=128 vs tokens=4+1 hvqvae (K 16)"]
    assert found[0]["change"] == pytest.approx(-1 / 6) and found[0]["verdict"] == "ahead"
    assert found[1]["change"] == pytest.approx(0.5) and found[1]["verdict"] == "behind"


def test_the_movq_ablation_sets_each_step_of_fig6_against_the_one_before():
    """No baseline row: multichannel against VQGAN, each F0 against multichannel, Fourier
    against the other F0, each channel count against the one below (hand-computed changes)."""
    from mvq.reproduce.report import comparisons

    plan = build_plan("movq-ablation", "quick")
    rfid = {"VQGAN": 100.0, "+ multichannel": 80.0, "+ SpatialNorm, F0 Fourier (MoVQ)": 90.0,
            "+ SpatialNorm, F0 sinusoidal": 72.0, "MoVQ c=1": 120.0, "MoVQ c=2": 100.0}
    cells = [Cell({"variant": v}, ["a", "b", "c"], {"rfid": _seeds(x, 5.0)})
             for v, x in rfid.items()]  # F0 constant not run yet: its two pairs are left out
    found = comparisons(plan, cells)
    assert [(c["compared"], round(c["change"], 3)) for c in found] == [
        ("+ multichannel vs VQGAN", -0.2),
        ("+ SpatialNorm, F0 Fourier (MoVQ) vs + multichannel", 0.125),
        ("+ SpatialNorm, F0 sinusoidal vs + multichannel", -0.1),
        ("+ SpatialNorm, F0 Fourier (MoVQ) vs + SpatialNorm, F0 sinusoidal", 0.25),
        ("MoVQ c=2 vs MoVQ c=1", -0.167),
        ("+ SpatialNorm, F0 Fourier (MoVQ) vs MoVQ c=2", -0.1)]
    # sd 5 on 3 seeds each (df 4): 20 apart p = 0.0080 (t 4.90), 18 apart 0.0116, 10 apart
    # 0.0705, 8 apart 0.1216; BH over the six: sorted p .0080 .0080 .0116 .0705 .0705 .1216
    # times 6/rank, then the running minimum from the top: q .0232 .0232 .0232 .0846 .0846 .1216
    assert [c["p"] for c in found] == pytest.approx([0.0080, 0.0705, 0.1216, 0.0116, 0.0080,
                                                     0.0705], abs=1e-4)
    assert [c["q"] for c in found] == pytest.approx([0.0232, 0.0846, 0.1216, 0.0232, 0.0232,
                                                     0.0846], abs=1e-4)
    assert [c["verdict"] for c in found] == ["ahead", "unresolved", "unresolved", "behind",
                                             "ahead", "unresolved"]
    assert found[0]["ci95"] == pytest.approx([-20 - 2.776 * 5 * (2 / 3) ** 0.5,
                                              -20 + 2.776 * 5 * (2 / 3) ** 0.5], abs=1e-2)


def test_generation_plans_train_each_prior_and_report_one_row_per_decoding(tmp_path,
                                                                           monkeypatch):
    """The generation experiments' path (pixelcnn-vs-gpt, movq-table2, class-conditional):
    every prior of a run is trained once on the run's tokens, each decoding is one sample
    evaluation and one report row labelled by prior and decoding, with the prior's parameters;
    a second call trains and evaluates nothing; the class grid has one row per class."""
    import dataclasses

    from mvq.reproduce import class_grid
    from mvq.reproduce.plan import PriorSpec
    from mvq.reproduce.report import write_report

    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    specs = (PriorSpec("gpt", 2, 0, "GPT", decodes=(Decode("t=1", Decoding(temperature=1.0)),
                                                     Decode("t=0.5", Decoding(temperature=0.5)))),
             PriorSpec("pixelcnn", 2, 0, "PixelCNN"),
             PriorSpec("gpt", 2, 1, "GPT", class_conditional=True))
    run = dataclasses.replace(_run("hvqvae", 0), priors=specs)
    plan = dataclasses.replace(_plan([run]), metrics=(), sample_metrics=("nll",),
                               kind=ClassConditional(), cell=("tokens", "prior", "decoding"),
                               baseline={"prior": "GPT"}, match=("tokens",))
    out = tmp_path / "rep"
    rows = execute(plan, out, progress=False)
    assert [(r.labels["prior"], r.labels.get("decoding"), r.seed) for r in rows] == [
        ("GPT", "t=1", 0), ("GPT", "t=0.5", 0), ("PixelCNN", None, 0), ("GPT", None, 1)]
    folder = out / "runs" / run.name
    assert not (folder / "eval.json").exists()  # no reconstruction metrics were planned
    priors = sorted(p.name for p in (folder / "priors").iterdir())
    assert priors == ["gpt-cond_2steps_s1", "gpt_2steps_s0", "pixelcnn_2steps_s0"]
    for r in rows:
        assert r.metrics["nll_primary"] > 0 and r.metrics["parameters"] > 0
    gpt, pcnn = rows[0].metrics["parameters"], rows[2].metrics["parameters"]
    assert gpt != pcnn  # each row carries its own prior's size
    # the same prior and seed, two temperatures: one training, the NLL does not depend on it
    assert rows[0].checkpoint == rows[1].checkpoint
    assert rows[0].metrics["nll_primary"] == rows[1].metrics["nll_primary"]
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("samples_*.json")}
    assert len(stamps) == 4
    assert [s.status for s in inspect(plan, out, None)] == ["done"]
    execute(plan, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("samples_*.json")} == stamps
    records, missing = collect(plan, out, None)
    assert len(records) == 4 and not missing
    # a prior folder holding another kind of prior is refused, not resumed or sampled
    other = dataclasses.replace(plan, runs=[dataclasses.replace(run, priors=(
        PriorSpec("gpt", 3, 0, "GPT"),))])
    import shutil

    shutil.copytree(folder / "priors" / "pixelcnn_2steps_s0", folder / "priors" / "gpt_3steps_s0")
    with pytest.raises(MvqError, match="holds a prior with other settings"):
        execute(other, out, progress=False)
    copied = folder / "priors" / "gpt_3steps_s0" / "samples_default.json"
    assert json.loads(copied.read_text())["prior_type"] == "pixelcnn"  # nothing written over
    grid = class_grid(records, tmp_path / "grid.png", "cpu", per_class=3)
    from mvq.saved.pretrained import load_prior

    classes = load_prior(rows[3].checkpoint)[0].num_classes
    assert classes >= 2
    side = 3 * 28 + GAP  # the tiny runs' 28 px images at the readable scale 3, plus the gap
    with Image.open(grid) as im:  # one row per class, per_class=3 images per row
        assert classes * side <= im.height < (classes + 1) * side
        assert im.width > 3 * side  # the images, the class names left of them
    assert_labelled(grid)  # the classes' names
    from mvq.reproduce import class_agreement

    agree = class_agreement(records, tmp_path / "agree.json", 12, "cpu", classifier_steps=5)
    (acc,) = agree["accuracy"].values()  # the one class-conditional prior
    assert agree["mean"] == acc and agree["std"] is None and agree["classes"] == classes
    assert min(abs(acc - k / 12) for k in range(13)) < 1e-6  # a fraction of the 12 samples
    for key in ("classifier_accuracy_test", "classifier_accuracy_reconstructions"):
        assert 0 <= agree[key] <= 1
    stamp = (tmp_path / "agree.json").stat().st_mtime_ns
    assert class_agreement(records, tmp_path / "agree.json", 12, "cpu", classifier_steps=5) \
        == agree  # kept, not measured again
    assert (tmp_path / "agree.json").stat().st_mtime_ns == stamp
    data = write_report(plan, records, tmp_path / "report", missing, (grid,),
                        {"class_agreement": agree})
    md = (tmp_path / "report" / "report.md").read_text()
    assert "prior params" in md and "bits/img" not in md and "grid.png" in md
    assert f"asked for {acc:.3f} of the time" in md and data["class_agreement"] == agree
    assert "- work recorded by the 4 rows above (one process's time; " in md
    assert len(data["cells"]) == 4
    assert any(c["compared"] == "PixelCNN vs GPT t=1 (tokens 1+1)"
               and c["metric"] == "nll_primary_bits" for c in data["comparisons"])


def test_generation_plans_share_the_tokenizer_runs():
    """movq-table2 samples movq-ablation's MoVQ run, pixelcnn-vs-gpt fig5's hvqvae runs and
    class-conditional fig5's J=128 run: the same folders, so no tokenizer is trained twice."""
    ablation = {r.name for r in build_plan("movq-ablation", "quick", 1).runs}
    fig5 = {r.name for r in build_plan("fig5", "quick", 1).runs}
    table2 = build_plan("movq-table2", "quick", 2)
    assert [r.name for r in table2.runs] == ["movq_quick_spatialnorm_f0-fourier_800steps_s0"]
    assert table2.runs[0].name in ablation
    decodes = [d.label for spec in table2.runs[0].priors for d in spec.decodes]
    assert decodes == ["one token per step", "4 steps", "8 steps", "12 steps", "16 steps"] * 2
    gpt = next(s for s in table2.runs[0].priors if s.kind == "gpt")
    assert gpt.sizes == {"primary": {"n_layer": 4, "n_head": 4, "n_embd": 64}}
    pix = build_plan("pixelcnn-vs-gpt", "quick")
    assert {r.name for r in pix.runs} <= fig5 and len(pix.runs) == 2
    assert sorted({s.kind for r in pix.runs for s in r.priors}) == ["gpt", "pixelcnn"]
    assert len(pix.runs[0].priors) == 9  # 3 seeds x (GPT, PixelCNN averaged / layout)
    pixel = [s for s in pix.runs[0].priors if s.kind == "pixelcnn" and s.seed == 0]
    assert [(s.folder, s.sizes) for s in pixel] == [
        ("pixelcnn-average_2000steps_s0", {"conditioning": "average"}),
        ("pixelcnn-layout_2000steps_s0", {"conditioning": "layout"})]
    cond = build_plan("class-conditional", "quick")
    assert cond.runs[0].name in fig5 and isinstance(cond.kind, ClassConditional)
    assert [s.class_conditional for s in cond.runs[0].priors] == [False, True] * 3


def test_every_experiment_has_its_help_line_and_seeds():
    from mvq.reproduce.plan import EXPERIMENTS, SCALES

    for name, e in EXPERIMENTS.items():
        assert e.name == name and e.summary and "\n" not in e.summary
        assert set(e.seeds) == set(SCALES)
    assert build_plan("fig5", "quick").runs == build_plan("fig5", "quick", seeds=3).runs


def test_fig5_plot_draws_each_codebook_against_its_own_baseline(tmp_path):
    """With K = 16 and 256 in one sweep, a panel per token count holds a line and a baseline
    band per K, in one colour each: a K = 256 point is never read against the K = 16 band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mvq.reproduce.kinds import _panel

    def cell(tokens, k, model, j, rfid, std=None):
        labels = {"tokens": tokens, "K": k, "model": model} | ({"J": j} if j else {})
        return Cell(labels, [f"{tokens}{k}{model}{j}"], {"rfid": Stat(rfid, std, 1)})

    cells = [cell(t, k, m, j, 100.0 * k + (j or 0), 2.0) for t in ("1+1", "4+1")
             for k in (16, 256) for m, j in (("hvqvae", None), ("mvqvae", 4), ("mvqvae", 8))]
    plan = build_plan("fig5", "quick", 1)
    axes_of = plan.kind.plot
    assert sorted({axes_of.key(c) for c in cells}) == [("1+1",), ("4+1",)]
    assert axes_of.title(("4+1",)) == "tokens 4+1"
    assert Plot("J", ("tokens", "K")).key(cells[3]) == ("1+1", 256)  # several names still work

    fig, ax = plt.subplots()
    _panel(ax, plan, axes_of, [c for c in cells if c.labels["tokens"] == "4+1"], "rfid")
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["hierarchical VQ, K 16", "hierarchical VQ, K 256", "MVQ, K 16",
                      "MVQ, K 256"]
    drawn = dict(zip(labels, handles))
    for k in (16, 256):
        band, curve = drawn[f"hierarchical VQ, K {k}"], drawn[f"MVQ, K {k}"][0]
        assert band.get_ydata()[0] == 100.0 * k  # the baseline of this K, not the other's
        assert list(curve.get_ydata()) == [100.0 * k + 4, 100.0 * k + 8]
        assert band.get_color() == curve.get_color()
    assert drawn["MVQ, K 16"][0].get_color() != drawn["MVQ, K 256"][0].get_color()
    plt.close(fig)
    png = plot(plan, axes_of, cells, tmp_path / "f.png")
    assert Image.open(png).size[0] < 3 * 4.2 * 110  # two panels across (one per token count)


def test_a_verdict_needs_two_seeds_a_side_and_equivalence_a_tight_interval():
    """One seed on a side: no test, 'unresolved (n=1)'; neither side varying: 'unresolved (no
    spread)'; a difference whose 90% interval lies well inside ± 5% of the compared-with
    mean: 'equivalent' (TOST); a tight difference in a higher-is-better metric: 'behind'."""
    from mvq.reproduce.stats import Comparison, adjust

    one = Comparison("rfid", [100.0], [101.0, 99.0])
    flat = Comparison("rfid", [100.0, 100.0], [100.0, 100.0])
    same = Comparison("rfid", [100.0, 100.2, 99.8, 100.1], [100.1, 99.9, 100.0, 100.2])
    lower = Comparison("psnr", [15.0, 15.1, 14.9], [16.0, 16.1, 15.9])
    adjust([one, flat, same, lower])
    assert one.verdict == "unresolved (n=1)" and one.p is None and one.ci95 is None
    assert flat.verdict == "unresolved (no spread)" and flat.p is None
    assert same.verdict == "equivalent" and same.tost_q < 0.05 < same.p
    assert lower.verdict == "behind" and lower.ci95[1] < 0
    assert one.to_json()["sd"] == [None, 2 ** 0.5]


def test_movq_codebook_sweeps_figure_6b_sizes_on_movq_ablations_runs():
    from mvq.reproduce.report import comparisons

    plan = build_plan("movq-codebook", "quick")
    ablation = {r.name for r in build_plan("movq-ablation", "quick").runs}
    cells = {}
    for r in plan.runs:
        cfg = r.config(None, "x").model
        assert cfg.codebook_size == r.labels["K"]
        assert (r.name in ablation) == (r.labels["K"] == 256)  # the small size: shared runs
        cells.setdefault((r.labels["variant"], r.labels["K"]), []).append(r.seed)
        assert (cfg.num_channels, cfg.spatial_norm) == (
            (1, "none") if r.labels["variant"] == "VQGAN" else (4, "first3"))
    assert cells == {(v, k): [0, 1, 2] for v in ("VQGAN", "MoVQ") for k in (256, 4096)}
    assert len({r.name for r in plan.runs}) == 12
    paper = build_plan("movq-codebook", "paper")
    assert sorted({r.config(None, "x").model.codebook_size for r in paper.runs}) == [1024, 16384]
    with pytest.raises(MvqError, match="drop --dataset"):
        build_plan("movq-codebook", "quick", dataset="cifar10")

    def cell(variant, k, rfid):
        return Cell({"variant": variant, "K": k}, ["a", "b", "c"],
                    {"rfid": Stat.of([rfid - 1, rfid, rfid + 1])})

    found = comparisons(plan, [cell("VQGAN", 256, 60.0), cell("VQGAN", 4096, 50.0),
                               cell("MoVQ", 256, 30.0), cell("MoVQ", 4096, 30.5)])
    assert [(c["compared"], round(c["change"], 3)) for c in found] == [
        ("MoVQ K=256 vs VQGAN K=256", -0.5), ("MoVQ K=4096 vs VQGAN K=4096", -0.39),
        ("K=4096 vs K=256 (variant VQGAN)", -0.167), ("K=4096 vs K=256 (variant MoVQ)", 0.017)]
    assert found[0]["verdict"] == "ahead" and found[3]["verdict"] == "unresolved"


def test_movq_codebook_dry_run(tmp_path, capsys):
    assert main(["reproduce", "movq-codebook", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "256 and 4096 codebook entries" in err and "12 runs, evaluation on N=1000" in err
    assert "movq_quick_vqgan_800steps_k4096_s0" in err and "estimated" in err


def test_table6_is_a_benchmark_not_a_plan_of_runs(tmp_path, monkeypatch, capsys):
    """table6 builds a `Benchmark` (no runs): a dry run prints the command and its estimate and
    writes nothing; a run keeps the module's output as report.md and results.json."""
    import dataclasses
    import os

    from mvq.reproduce import plan as plans
    from mvq.reproduce.benchmark import Benchmark

    bench = build_plan("table6", "quick")
    assert isinstance(bench, Benchmark) and bench.module == "mvq.bench.sampling"
    assert build_plan("table6", "paper").minutes == "15-25 min"
    assert main(["reproduce", "table6", "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    err = capsys.readouterr().err
    assert "-m mvq.bench.sampling --json" in err and "--quick" in err and "estimated 1 min" in err
    assert not (tmp_path / "dry").exists()
    # a stand-in module with the benchmark's contract: --json PATH, a printed table
    (tmp_path / "fakebench.py").write_text(
        "import json, sys\nargs = sys.argv[1:]\n"
        "json.dump({'args': args}, open(args[args.index('--json') + 1], 'w'))\n"
        "print('length  ms\\n256     1.0')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setitem(plans.EXPERIMENTS, "table6", dataclasses.replace(
        plans.EXPERIMENTS["table6"],
        build=lambda scale, seeds, dataset: dataclasses.replace(bench, module="fakebench")))
    assert main(["reproduce", "table6", "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "table6"
    report = (folder / "report.md").read_text()
    assert report.startswith("# MVQ paper Table 6: token sampling times\n\n`python -m fakebench")
    assert "256     1.0" in report and "--quick" in report
    assert json.loads((folder / "results.json").read_text())["args"][-1] == "--quick"


def test_plans_select_runs_by_their_role_not_by_a_model_name():
    """The plans pick another plan's runs as its baseline or compared runs (`Plan.is_baseline`),
    never by comparing a label with a model name."""
    import re
    from pathlib import Path

    import mvq.reproduce.plan

    names = r"(vqvae|hvqvae|mvqvae|hvqgan|mvqgan|movq)"
    pattern = re.compile(rf"labels(\[|\.get\()\"model\"\S*\s*[!=]=|[!=]=\s*\"{names}\"")
    folder = Path(mvq.reproduce.plan.__file__).parent
    for stem in ("plan", "builders", "mvq_paper", "movq_paper", "frontier"):  # the plans
        path = folder / f"{stem}.py"
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.name}:{number}: {line.strip()}"
    fig5 = build_plan("fig5", "quick", 1)
    assert {r.labels["model"] for r in fig5.baseline_runs()} == {"hvqvae"}
    assert {r.labels["model"] for r in fig5.compared_runs()} == {"mvqvae"}


def test_progress_lines_keep_a_runs_seed():
    """Two processes share a plan: a run's progress line shows its seed, however long its
    name (the beginning, "...", the end)."""
    from mvq.reproduce.runner import short_name

    name = "fashion-mnist_f14_mvqvae-k4096-over-lfq-b10-j1024_1200steps_s2"
    short = short_name(name)
    assert len(short) == 40 and short.endswith("_1200steps_s2") and short.startswith("fashion")
    assert "..." in short and short_name("vqvae_s0") == "vqvae_s0"


def test_p_and_q_print_on_their_side_of_the_threshold():
    from mvq.reproduce.stats import p_text
    assert [p_text(v) for v in (None, 0.0004, 0.0123, 0.04962, 0.04991, 0.05, 0.05049, 0.0506,
                                0.8)] == ["n/a", "<0.001", "0.012", "0.0496", "0.0499", "0.050",
                                          "0.0505", "0.051", "0.800"]


def test_a_table_figure_measured_on_fewer_seeds_than_its_row_says_so():
    from mvq.reproduce.records import Stat
    from mvq.reproduce.report import _fmt
    three, one = Stat(2.0, 0.5, 3, [1.5, 2.0, 2.5]), Stat(9.6, None, 1, [9.6])
    assert [_fmt(three, 1, seeds=3), _fmt(one, 1, seeds=3), _fmt(one, 1, seeds=1),
            _fmt(None, 1, seeds=3)] == ["2.0 ± 0.5", "9.6 (n=1)", "9.6", "n/a"]
