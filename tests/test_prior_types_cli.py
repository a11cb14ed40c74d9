"""The prior commands for every prior type: MoVQ's second stage end to end from the CLI
(encode-dataset -> train-prior (MaskGIT by default) -> sample -> evaluate --prior), --type,
--class-conditional / --class, --top-p, --steps / --choice-temperature, and their refusals."""

import json
import math

import pytest
import torch
from conftest import assert_labelled
from test_prior_interface import tiny_movq_config

from mvq.cli import main
from mvq.train import train

FAST = ["--batch-size", "8", "--val-every", "3", "--steps", "3", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(scope="module")
def movq(tmp_path_factory):
    """A tiny MoVQ trained 2 steps and its token file, written by `mvq encode-dataset`."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("movq_cli")
    ckpt = train(tiny_movq_config(root / "tok"), progress=False).out_dir / "checkpoint"
    tokens = root / "tokens.safetensors"
    assert main(["encode-dataset", "--checkpoint", str(ckpt), "--out", str(tokens),
                 "--limit", "24", "--device", "cpu", "--no-progress"]) == 0
    return {"root": root, "tok": ckpt, "tokens": tokens}


def _run(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as stop:  # a usage error, found while parsing
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_movq_second_stage_end_to_end(movq, capsys):
    root, tok = movq["root"], str(movq["tok"])
    code, out, err = _run(capsys, ["train-prior", str(movq["tokens"]), "--out",
                                   str(root / "mg"), *FAST])
    assert code == 0, err
    assert "trained maskgit prior for 3 steps" in out and "masked" in out
    prior = root / "mg" / "checkpoint"
    info = json.loads((prior / "config.json").read_text())
    assert info["prior_type"] == "maskgit" and info["prior"]["shape"] == [8, 8, 2]
    png = root / "mg.png"
    code, out, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior), "--n",
                                   "4", "--steps", "4", "--choice-temperature", "4.5",
                                   "--top-p", "0.9", "--out", str(png), "--scale", "1"])
    assert code == 0 and png.is_file(), err
    report = root / "mg.json"
    code, out, err = _run(capsys, ["evaluate", "--checkpoint", tok, "--prior", str(prior),
                                   "--n", "4", "--metrics", "nll", "--json", str(report),
                                   "--steps", "4", "--no-progress", "--device", "cpu"])
    assert code == 0, err
    saved = json.loads(report.read_text())
    assert saved["prior_type"] == "maskgit" and saved["decoding"]["steps"] == 4
    assert set(saved["metrics"]) == {"nll_masked", "nll_masked_bits"}
    assert math.isfinite(saved["metrics"]["nll_masked"])
    assert "NLL masked tokens" in out
    # more steps than the 8 * 8 * 2 tokens: refused, nothing written
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior), "--n", "2",
                                 "--steps", "129", "--out", str(root / "x.png")])
    assert code == 2 and "steps must be in [1, 128]" in err and not (root / "x.png").exists()


def test_movq_codes_with_gpt_and_pixelcnn(movq, capsys):
    root, tok = movq["root"], str(movq["tok"])
    # the bug of issue 12: a GPT sized from h*w on h*w*c tokens ("exceeds block_size")
    code, out, err = _run(capsys, ["train-prior", str(movq["tokens"]), "--type", "gpt",
                                   "--out", str(root / "gpt"), *FAST])
    assert code == 0 and "trained gpt prior" in out, err
    prior = str(root / "gpt" / "checkpoint")
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", prior, "--n", "2",
                                 "--out", str(root / "gpt.png"), "--scale", "1"])
    assert code == 0, err
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", prior, "--n", "2",
                                 "--steps", "4", "--out", str(root / "no.png")])
    assert code == 2 and "gpt prior has no decoding option 'steps'" in err
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", prior, "--n", "2",
                                 "--class", "1", "--out", str(root / "no.png")])
    assert code == 2 and "--class needs a class-conditional prior" in err
    assert not (root / "no.png").exists()
    code, _, err = _run(capsys, ["train-prior", str(movq["tokens"]), "--type", "pixelcnn",
                                 "--out", str(root / "pix"), *FAST])
    assert code == 2 and "cannot model multichannel codes" in err and "--type gpt or maskgit" in err
    assert not (root / "pix").exists()
    code, _, err = _run(capsys, ["train-prior", str(movq["tokens"]), "--type", "vqgan",
                                 "--out", str(root / "bad"), *FAST])
    assert code == 2 and "unknown prior type 'vqgan': expected one of gpt, maskgit" in err
    assert not (root / "bad").exists()


def test_class_conditional_prior_from_the_cli(movq, capsys):
    root, tok = movq["root"], str(movq["tok"])
    code, _, err = _run(capsys, ["train-prior", str(movq["tokens"]), "--class-conditional",
                                 "--out", str(root / "cond"), *FAST])
    assert code == 0, err
    prior = root / "cond" / "checkpoint"
    info = json.loads((prior / "config.json").read_text())
    assert info["num_classes"] == info["prior"]["num_classes"] == 5  # the shapes labels
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior), "--n",
                                 "4", "--class", "0,3", "--steps", "2", "--out",
                                 str(root / "cond.png"), "--scale", "1"])
    assert code == 0, err
    assert_labelled(root / "cond.png")  # rows named by class
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior), "--n",
                                 "2", "--class", "7", "--out", str(root / "no.png")])
    assert code == 2 and "knows classes 0..4" in err
    code, _, err = _run(capsys, ["evaluate", "--checkpoint", tok, "--prior", str(prior), "--n",
                                 "4", "--metrics", "nll", "--json", str(root / "cond.json"),
                                 "--no-progress", "--device", "cpu"])
    assert code == 0, err  # the real images' labels condition the NLL
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior),
                                 "--class", "a"])
    assert code == 2 and "argument --class: expected a class id or a comma list" in err
    code, _, err = _run(capsys, ["sample", "--tokenizer", tok, "--prior", str(prior),
                                 "--top-p", "0"])
    assert code == 2 and "argument --top-p: expected a number in (0, 1]" in err
