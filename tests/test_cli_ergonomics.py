"""A new user's first hour (issue 19): global options after the command, options and overrides
in any order, a plain progress line without a terminal, and help that lists every model type
and every option's default."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mvq.cli import build_parser, main, split_overrides
from mvq.configuration.config import MODEL_TYPES

TINY = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=8",
        "data.val_limit=2", "train.batch_size=4", "train.grid_images=2", "train.log_every=1"]


@pytest.mark.parametrize("argv, rest, overrides", [
    (["train", "a.b=1", "--resume"], ["train", "--resume"], ["a.b=1"]),
    (["--threads", "1", "train", "--config", "C", "train.steps=16", "--resume"],
     ["--threads", "1", "train", "--config", "C", "--resume"], ["train.steps=16"]),
    (["train", "x.y=1", "--no-progress", "x.z=[1,2]", "--threads", "2", "x.y=3"],
     ["train", "--no-progress", "--threads", "2"], ["x.y=1", "x.z=[1,2]", "x.y=3"]),
    (["train", "--data-root", "d.e=f", "m.n=1"], ["train", "--data-root", "d.e=f"], ["m.n=1"]),
    (["train", "--config", "a.b=c.yaml"], ["train", "--config", "a.b=c.yaml"], []),
    (["sample", "a.b=1"], ["sample", "a.b=1"], []),  # only train takes overrides
    (["train", "--out=x", "/p/a.b=1", "-x.y=1"], ["train", "--out=x", "/p/a.b=1", "-x.y=1"], []),
])
def test_split_overrides_takes_them_from_anywhere_in_order(argv, rest, overrides):
    assert split_overrides(argv) == (rest, overrides)


def test_options_and_overrides_in_any_order_and_threads_after_the_command(tmp_path, capsys):
    out = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        argv = ["train", *TINY[:4], "--no-progress", *TINY[4:], "--threads", "2",
                f"train.out_dir={out}", "train.steps=1"]
        assert main(argv) == 0
        assert torch.get_num_threads() == 2  # --threads after the command was taken
        info = json.loads((out / "checkpoint" / "config.json").read_text())
        assert info["config"]["model"]["hidden"] == 16 and info["threads"] == 2
        # options after the overrides, the last of two overrides of one key wins
        assert main(["--threads", "1", "train", *TINY, f"train.out_dir={out}", "train.steps=9",
                     "train.steps=2", "--resume", "--no-progress"]) == 0
        assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == 2
        capsys.readouterr()
        assert main(["train", "--bogus", *TINY]) == 2  # an unknown option is still refused
    except SystemExit as exc:
        assert exc.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("flag", [["--no-progress"], []])  # capsys: stderr is no terminal
def test_training_without_a_bar_prints_a_plain_line_per_log_step(tmp_path, capsys, flag):
    assert main(["train", *TINY, "train.steps=4", "train.log_every=2",
                 f"train.out_dir={tmp_path / 'run'}", *flag]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": step " in ln]
    assert [ln.split(",")[0] for ln in lines] == ["mvqvae: step 2/4", "mvqvae: step 4/4"]
    assert all("loss " in ln and "\r" not in ln for ln in lines)


def test_help_lists_every_model_type(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(t in text for t in MODEL_TYPES)


def _actions(parser: argparse.ArgumentParser, name: str = "mvq"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _actions(p, sub)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield name, action


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for command, action in _actions(build_parser()):
        text = action.help or ""
        shown = action.default in (None, False, argparse.SUPPRESS) or "default" in text
        if not text or not shown:
            missing.append(f"{command} {action.option_strings or action.dest}")
    assert missing == []
    helps = {a.option_strings[0]: a.help for c, a in _actions(build_parser())
             if c == "train-prior" and a.option_strings}
    for option, default in (("--steps", "2000"), ("--batch-size", "64"), ("--lr", "3e-4"),
                            ("--seed", "0"), ("--val-fraction", "0.05"), ("--val-every", "250")):
        assert f"default {default}" in helps[option], option
