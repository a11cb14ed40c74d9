"""Delete only what you wrote, overwrite only what you own (issue 19): checkpoint retirement
removes only folders its own run sealed, locks never follow links, --overwrite replaces only a
run of the command's own kind, and one command's outputs are checked against each other and
its inputs before any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_engine import TINY_PRIOR, tokenizer_config, toy_tokens

from mvq.cli import main
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import check_outputs
from mvq.train import train
from mvq.train.engine import locked
from mvq.train.prior import PriorTraining, train_prior

TINY = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=8",
        "data.val_limit=2", "train.steps=1", "train.batch_size=4", "train.grid_images=2"]
PRIOR_SETTINGS = PriorTraining(steps=2, batch_size=8, val_fraction=0.25, sizes=TINY_PRIOR,
                               val_every=2, log_every=1)


def _tokenizer_run(out: Path, steps: int = 2, keep: int = 1, resume: bool = False):
    cfg = tokenizer_config(out)
    cfg.train.steps, cfg.train.ckpt_every, cfg.train.keep_checkpoints = steps, 1, keep
    return train(cfg, resume=resume, progress=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


# ----------------------------------------------------------------------------- retirement
def test_checkpoint_swaps_keep_every_folder_the_run_did_not_seal(tmp_path):
    out = tmp_path / "run"
    mine = {  # a user's folders that look like (retired / unfinished) checkpoints
        "checkpoint-5/notes.txt": b"a",  # the example of the issue
        "checkpoint-000002/notes.txt": b"b",  # exactly the name step 2 is retired to
        "checkpoint-000003-1/notes.txt": b"c",  # the fallback name of step 3
        ".checkpoint.tmp-mine/notes.txt": b"d",  # named like an unfinished write
        "checkpoint-x/config.json": b"{}",
    }
    for name, data in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    _tokenizer_run(out, steps=4, keep=3)  # a checkpoint per step: three swaps
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    ckpt = out / "checkpoint"
    assert sealed.read_manifest(ckpt)["step"] == 4
    # step 1 deleted (keep 3), step 2 retired beside the user's folder of its name
    assert [p.name for p in sealed.retired(ckpt)] == ["checkpoint-000002-1",
                                                          "checkpoint-000003"]
    assert not (out / "checkpoint-000001").exists()


def test_retirement_keeps_a_checkpoint_another_run_sealed(tmp_path):
    other = tmp_path / "other"
    _tokenizer_run(other, steps=1)
    out = tmp_path / "run"
    _tokenizer_run(out, steps=1, keep=3)
    foreign = out / "checkpoint-000001"  # another run's sealed checkpoint, at its own name
    shutil.copytree(other / "checkpoint", foreign)
    before = _snapshot(foreign)
    assert foreign in sealed.retired(out / "checkpoint")
    assert sealed.run_of(foreign) != sealed.run_of(out / "checkpoint")
    _tokenizer_run(out, steps=5, keep=1, resume=True)
    assert _snapshot(foreign) == before  # not this run's: kept
    assert sealed.retired(out / "checkpoint") == [foreign]  # the run's own step 1 went


def test_a_user_file_inside_a_checkpoint_survives_retirement_and_blocks_overwrite(tmp_path):
    out = tmp_path / "run"
    _tokenizer_run(out, steps=1)
    (out / "checkpoint" / "notes.txt").write_text("mine")
    _tokenizer_run(out, steps=3, resume=True)  # step 1 retired, then deleted: all but notes
    assert (out / "checkpoint-000001" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "checkpoint-000001").iterdir()) == ["notes.txt"]
    (out / "checkpoint" / "eval_mine.md").write_text("mine too")
    before = _snapshot(out / "checkpoint")
    with pytest.raises(MvqError, match="holds files mvq did not write there .eval_mine.md."):
        cfg = tokenizer_config(out)
        train(cfg, overwrite=True, progress=False)
    assert _snapshot(out / "checkpoint") == before


# ----------------------------------------------------------------------------- locks
@pytest.mark.parametrize("kind", ["symlink", "dangling", "folder", "fifo"])
def test_a_lock_that_is_not_a_regular_file_is_refused_and_not_followed(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    lock = out / ".lock"
    if kind == "symlink":
        lock.symlink_to(target)
    elif kind == "dangling":
        lock.symlink_to(tmp_path / "nothing-here")
    elif kind == "folder":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    with pytest.raises(MvqError, match="symbolic link|not a regular file|lock file"):
        with locked(out):
            pass
    assert target.read_text() == "precious"
    assert not (tmp_path / "nothing-here").exists()


def test_train_refuses_a_symlinked_lock_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (out / ".lock").symlink_to(target)
    args = ["train", *TINY, f"train.out_dir={out}"]
    assert main(args) == 2
    assert "is a symbolic link; mvq does not follow it" in _err(capsys)
    assert target.read_text() == "precious" and not (out / "checkpoint").exists()


# ----------------------------------------------------------------------------- run kinds
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tokenizer run and a finished prior run."""
    root = tmp_path_factory.mktemp("runs")
    _tokenizer_run(root / "tok", steps=2)
    tokens = toy_tokens(root / "tokens.safetensors")
    train_prior(tokens, root / "prior", PRIOR_SETTINGS, progress=False, device="cpu")
    return root


@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--resume"]])
def test_each_training_command_refuses_the_other_kind_of_run(runs, capsys, flag):
    tok, prior = runs / "tok", runs / "prior"
    before = _snapshot(tok), _snapshot(prior)
    tiny = ["--steps", "2", "--batch-size", "8", "--val-fraction", "0.25", "--no-progress"]
    assert main(["train-prior", str(runs / "tokens.safetensors"), "--out", str(tok), *tiny,
                 *flag]) == 2
    assert (f"{tok} holds a tokenizer run (mvqvae, checkpoint at step 2), not a prior run: "
            "mvq train-prior neither resumes nor overwrites it") in _err(capsys)
    assert main(["train", "data.name=shapes", f"train.out_dir={prior}", *flag]) == 2
    assert (f"{prior} holds a prior run (gpt, checkpoint at step 2), not a tokenizer run"
            in _err(capsys))
    assert (_snapshot(tok), _snapshot(prior)) == before


def test_a_run_folder_that_is_a_file_is_refused(runs, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["train-prior", str(runs / "tokens.safetensors"), "--out", str(afile)]) == 2
    assert "is a file, not a folder" in _err(capsys) and afile.read_text() == "mine"


def test_a_run_folder_inside_a_checkpoint_is_refused(runs, capsys):
    before = _snapshot(runs / "tok")
    for out in (runs / "tok" / "checkpoint", runs / "tok" / "checkpoint" / "sub"):
        assert main(["train", "data.name=shapes", f"train.out_dir={out}"]) == 2
        assert "a checkpoint, not a run folder" in _err(capsys)
        assert main(["train-prior", str(runs / "tokens.safetensors"), "--out", str(out)]) == 2
        assert "a checkpoint, not a run folder" in _err(capsys)
    assert _snapshot(runs / "tok") == before


# ----------------------------------------------------------------------------- output clashes
def test_check_outputs_finds_one_file_under_several_names(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(a)
    os.link(a, tmp_path / "hard.png")
    for other in (a, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "." / "a.png"):
        with pytest.raises(MvqError, match="are the same file"):
            check_outputs([("--out", a), ("--codes", other)], overwrite=True)
        with pytest.raises(MvqError, match="is the input --tokens"):
            check_outputs([("--out", other)], overwrite=True, inputs=[("--tokens", a)])
    new = tmp_path / "new.png"  # not yet on disk: compared by path
    with pytest.raises(MvqError, match="are the same file"):
        check_outputs([("--json", new), ("--md", tmp_path / "sub" / ".." / "new.png")], True)
    assert check_outputs([("--out", new), ("--codes", None)], False, [("--x", a)]) == [new, None]
    assert a.read_bytes() == b"x" and not new.exists()


def test_commands_refuse_outputs_that_clash_before_any_work(runs, tmp_path, capsys):
    ck = runs / "tok" / "checkpoint"
    x = tmp_path / "x.png"
    assert main(["reconstruct", "--checkpoint", str(ck), "--out", str(x), "--codes", str(x)]) == 2
    assert "--out" in _err(capsys) and not x.exists()
    e = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--json", str(e), "--md", str(e)]) == 2
    assert "are the same file" in _err(capsys) and not e.exists()
    r = tmp_path / "r.json"
    r.write_text("{}")
    assert main(["compare", str(r), "--out", str(r), "--overwrite"]) == 2
    assert "is the input RESULTS" in _err(capsys) and r.read_text() == "{}"
    assert main(["sample", "--tokenizer", str(ck), "--prior", str(runs / "prior" / "checkpoint"),
                 "--out", str(ck / "model.safetensors"), "--overwrite"]) == 2
    assert "lies in the checkpoint folder" in _err(capsys)
    card = (ck / "README.md").read_bytes()  # the model card: sealed by the manifest
    assert main(["evaluate", "--checkpoint", str(ck), "--md", str(ck / "README.md"),
                 "--overwrite"]) == 2  # (a report beside it is allowed, never over its files)
    assert "lies in the checkpoint folder" in _err(capsys) and (ck / "README.md").read_bytes() \
        == card
    assert main(["reconstruct", "--checkpoint", str(ck), "--images", str(x), "--out", str(x),
                 "--overwrite"]) == 2
    assert "is the input --images" in _err(capsys)
