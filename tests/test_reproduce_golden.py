"""A tiny `mvq reproduce` gives the same report.md and results.json as the code before the
typed-experiments rewrite (issue 18): the expected files were written by the string-and-dict
version on the same tiny plans, with times, dates and folders taken out."""

import json
import os
import re
from pathlib import Path

import pytest

import mvq.reproduce
from mvq.cli import main
from mvq.reproduce.kinds import Generation, Plot, TokenizerSweep
from mvq.reproduce.plan import Changes, Decode, Plan, PriorSpec, Run
from mvq.values.decoding import Decoding

FIXTURES = Path(__file__).parent / "fixtures" / "reproduce_golden"
TINY = Changes(model={"hidden": 16, "res_blocks": 1, "res_channels": 8, "dim": 8, "dim2": 8},
               data={"name": "shapes", "train_limit": 64, "val_limit": 16},
               train={"batch_size": 8, "grid_images": 4, "log_every": 1, "steps": 3,
                      "val_every": 3, "ckpt_every": 3})


def _run(model: str, seed: int, j: int | None = None, priors=()) -> Run:
    over = TINY + Changes(model={"type": model, **({"num_masks": j} if j else {})})
    labels = {"model": model, "tokens": "1+1", "K": 16, **({"J": j} if j else {})}
    name = f"golden_{model}" + (f"_j{j}" if j else "") + f"_s{seed}"
    return Run(name, "fmnist_f28_k16_quick.yaml", over, labels, seed, priors)


def _plans() -> dict[str, Plan]:
    sweep = Plan("fig5", "quick", "golden sweep", [_run("hvqvae", 0), _run("hvqvae", 1),
                                                   _run("mvqvae", 0, j=4)],
                 8, ("mse", "psnr"), ("tokens", "K", "model", "J"),
                 baseline={"model": "hvqvae"}, notes=["a note"],
                 kind=TokenizerSweep(Plot("J", "tokens")))
    specs = (PriorSpec("gpt", 2, 0, "GPT", decodes=(Decode("t=1", Decoding(temperature=1.0)),
                                                     Decode("t=0.5", Decoding(temperature=0.5)))),
             PriorSpec("pixelcnn", 2, 0, "PixelCNN"))
    gen = Plan("pixelcnn-vs-gpt", "quick", "golden generation", [_run("hvqvae", 0, priors=specs)],
               8, (), ("tokens", "model", "prior", "decoding"), baseline={"prior": "GPT"},
               sample_metrics=("nll",), match=("tokens",), kind=Generation(),
               notes=["gen note"])
    return {"fig5": sweep, "pixelcnn-vs-gpt": gen}


VOLATILE = {"train_seconds", "eval_seconds", "seconds", "prior_seconds", "date", "updated",
            "estimates", "sample_s_per_img", "tokens_s_per_img"}


def _clean(value, out: str):
    """results.json without times and with the run folder as OUT."""
    if isinstance(value, dict):
        return {k: _clean(v, out) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(out, "OUT")
    return value


def _clean_md(text: str, out: str) -> str:
    text = text.replace(out, "OUT")
    text = re.sub(r"- work recorded by the (\d+) rows above.*", r"- work recorded by the \1 rows",
                  text)
    return re.sub(r"- work estimated when it started.*", "- work estimated", text)


def _numbers(text: str) -> tuple[str, list[float]]:
    """``text`` with its numbers as '#', and the numbers (compared with a tolerance: thread
    counts move the last digits of a float sum)."""
    pattern = r"-?\d+\.\d+(?:e-?\d+)?"
    return re.sub(pattern, "#", text), [float(x) for x in re.findall(pattern, text)]


@pytest.mark.parametrize("experiment", ["fig5", "pixelcnn-vs-gpt"])
def test_tiny_reproduce_gives_the_recorded_report(experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVQ_CACHE_DIR", str(tmp_path / "cache"))
    plan = _plans()[experiment]
    monkeypatch.setattr(mvq.reproduce, "build_plan", lambda *a, **k: plan)
    out = tmp_path / "rep"
    assert main(["reproduce", experiment, "--out", str(out), "--device", "cpu"]) == 0
    md = _clean_md((out / experiment / "report.md").read_text(), str(out))
    data = _clean(json.loads((out / experiment / "results.json").read_text()), str(out))
    want = FIXTURES / experiment
    if os.environ.get("MVQ_RECORD_GOLDEN"):  # written once, by the code before the rewrite
        want.mkdir(parents=True, exist_ok=True)
        (want / "report.md").write_text(md)
        (want / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    got_text, got_numbers = _numbers(md)
    want_md = (want / "report.md").read_text()
    want_text, want_numbers = _numbers(want_md)
    assert got_text == want_text
    # a printed number may differ by one unit of its last digit: a value within rel 1e-3 can
    # round the other way (33.65 on one CPU, 33.64 on another)
    units = _last_digit_units(want_md)
    assert len(got_numbers) == len(want_numbers)
    for got, wanted, unit in zip(got_numbers, want_numbers, units):
        assert got == pytest.approx(wanted, rel=1e-3, abs=max(1e-6, unit * 1.001)), (got, wanted)
    got_json, _ = _numbers(json.dumps(data, indent=2, sort_keys=True))
    want_json, _ = _numbers((want / "results.json").read_text())
    assert got_json == want_json.rstrip("\n")
    got_flat, want_flat = _flat(data), _flat(json.loads((want / "results.json").read_text()))
    assert got_flat.keys() == want_flat.keys()
    for key, wanted in want_flat.items():
        # a std over seeds is a difference of close values: its error is that of the values,
        # rel 1e-3 of their mean, not of the (smaller) std itself
        scale = abs(want_flat.get(key[:-len("std")] + "mean", 0.0)) if key.endswith("/std") else 0
        # so is a comparison's sd and difference of two means (and its interval): rel 1e-3 of the
        # means; its change (the difference over the second mean) 2e-3 of their ratio
        scale = max(scale, _of_means(want_flat, key))
        assert got_flat[key] == pytest.approx(wanted, rel=1e-3, abs=max(1e-6, 1e-3 * scale)), key


def _of_means(flat: dict, key: str) -> float:
    """For a comparison's diff, ci95, sd or change in results.json: the scale of its error (the
    larger mean; for the change, twice their ratio); 0 for any other figure."""
    parts = key.split("/")
    if len(parts) < 4 or parts[1] != "comparisons":
        return 0.0
    head = "/".join(parts[:3])
    a, b = abs(flat.get(head + "/mean/0", 0.0)), abs(flat.get(head + "/mean/1", 0.0))
    if parts[3] == "change":
        return 2 * a / b if b else 0.0
    return max(a, b) if parts[3] in ("diff", "ci95", "sd") else 0.0


def _last_digit_units(text: str) -> list[float]:
    """For each number `_numbers` finds: one unit of its last printed decimal (0.1 for 33.6)."""
    found = re.findall(r"-?\d+\.(\d+)(e-?\d+)?", text)
    return [10.0 ** (-len(dec) + (int(exp[1:]) if exp else 0)) for dec, exp in found]


def _flat(value, prefix="") -> dict:
    """Every number of a JSON value by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flat(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value)
                for k, v in _flat(item, f"{prefix}/{i}").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}
