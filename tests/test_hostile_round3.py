"""Issue 33, the third hostile round: each fault found, reproduced here, and its fix."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import mvq
from mvq import presets
from mvq.cli import main
from mvq.configuration.config import Config, DataConfig, TrainConfig, resolve_config
from mvq.errors import MvqError
from mvq.evaluation.reports import format_comparison, row_names
from mvq.files import sealed
from mvq.files.hashes import file_sha256
from mvq.inference.tokens import encode_dataset
from mvq.models import Tokenizer, build_model
from mvq.saved import checkpoint
from mvq.saved.pretrained import UnverifiedWarning, load_tokenizer
from mvq.train import train
from mvq.train.prior import PriorTraining, train_prior
from mvq.values.decoding import Decoding


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained tokenizer run (2 steps): OUT/checkpoint with its training state."""
    out = tmp_path_factory.mktemp("r3") / "run"
    cfg = Config(model=tiny_model_config(image_size=32, channels=3, factor=8),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(steps=2, batch_size=4, val_every=2, ckpt_every=2, log_every=1,
                                   grid_images=2, out_dir=str(out), device="cpu"))
    train(cfg, progress=False)
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# --- 1. save_pretrained never takes a run's training state ----------------------------------

def test_save_pretrained_refuses_a_folder_holding_training_state(run, tmp_path):
    out = _copy(run, tmp_path)
    before = sorted(p.name for p in (out / "checkpoint").iterdir())
    model = mvq.load(out)
    with pytest.raises(MvqError, match="training state .*--resume"):
        model.save_pretrained(out / "checkpoint")
    with pytest.raises(MvqError, match="training run's folder"):
        model.save_pretrained(out)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == before
    assert (out / "checkpoint" / "train_state.safetensors").is_file()
    # a retired copy holding training state is refused too (the swap would delete it)
    (out / "checkpoint").rename(out / "checkpoint-000002")
    (out / "checkpoint-000002" / "train_state.safetensors").rename(out / "ts")
    shutil.copytree(out / "checkpoint-000002", out / "checkpoint")
    (out / "ts").rename(out / "checkpoint-000002" / "train_state.safetensors")
    with pytest.raises(MvqError, match="checkpoint-000002 holds a run's training state"):
        model.save_pretrained(out / "checkpoint")
    assert (out / "checkpoint-000002" / "train_state.safetensors").is_file()
    saved = model.save_pretrained(tmp_path / "elsewhere")  # a new folder is fine
    assert isinstance(mvq.load(saved), mvq.Tokenizer)


def test_save_pretrained_takes_the_run_lock(run, tmp_path):
    """While a training holds OUT/.lock, nothing saves into the run."""
    out = _copy(run, tmp_path)
    model = mvq.load(out)
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mvq.files.outputs import try_lock
        with try_lock(Path({str(out / '.lock')!r})) as holder:
            print(holder, flush=True)
            time.sleep(30)
    """)
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "None"
        with pytest.raises(MvqError, match="in use by an mvq training"):
            model.save_pretrained(out / "exported")
    finally:
        other.kill()
        other.wait()
    assert not (out / "exported").exists()
    model.save_pretrained(out / "exported")  # the training is gone: the lock is free


# --- 2. loading verifies or refuses --------------------------------------------------------

def _reseal(folder, drop=()):
    """Rewrite the manifest for the files as they are now, leaving out ``drop``."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                         for p in sorted(folder.iterdir())
                         if p.name not in ("manifest.json", *drop)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _saved(tmp_path, name="m"):
    return build_model(tiny_model_config(type="vqvae")).save_pretrained(tmp_path / name)


def test_a_folder_without_a_manifest_loads_only_unverified(tmp_path):
    folder = _saved(tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(MvqError, match=r"no manifest.json.*verify=False.*--no-verify"):
        mvq.load(folder)
    with pytest.warns(UnverifiedWarning, match="unverified"):
        assert isinstance(mvq.load(folder, verify=False), Tokenizer)
    (folder / "manifest.json").mkdir()  # a folder in its place
    with pytest.raises(MvqError, match="manifest.json is not a file"):
        mvq.load(folder)
    with pytest.warns(UnverifiedWarning):
        mvq.load(folder, verify=False)
    (folder / "manifest.json").rmdir()
    with pytest.raises(MvqError, match="no manifest"):  # the commands load the same way
        load_tokenizer(folder)


def test_the_manifest_must_list_the_weights_and_config(tmp_path):
    folder = _saved(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"))
    _reseal(folder, drop=("model.safetensors",))
    with pytest.raises(MvqError, match="does not list model.safetensors"):
        mvq.load(folder)
    _reseal(folder, drop=("config.json",))
    with pytest.raises(MvqError, match="does not list config.json"):
        mvq.load(folder)


def test_a_model_type_contradicting_the_config_is_refused(tmp_path):
    folder = _saved(tmp_path)
    info = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**info, "model_type": "mvqvae"}))
    with pytest.raises(MvqError, match="damaged"):  # the manifest catches the edit
        mvq.load(folder)
    _reseal(folder)  # and with the manifest made to agree, the contradiction itself
    with pytest.raises(MvqError, match="model_type 'mvqvae' but its config builds 'vqvae'"):
        mvq.load(folder)


def test_an_edited_model_card_still_loads_and_resumes(run, tmp_path):
    out = _copy(run, tmp_path)
    with open(out / "checkpoint" / "README.md", "a") as fh:
        fh.write("\nMy notes on this model, at length.\n")
    assert isinstance(mvq.load(out), Tokenizer)
    assert sealed.latest(out / "checkpoint") == out / "checkpoint"  # --resume still finds it


def test_no_verify_on_the_command_line(tmp_path, capsys):
    folder = _saved(tmp_path)
    (folder / "manifest.json").unlink()
    png = tmp_path / "r.png"
    argv = ["reconstruct", "--checkpoint", str(folder), "--out", str(png), "--n", "1",
            "--images", str(_image(tmp_path))]
    assert main(argv) == 2
    assert "--no-verify" in capsys.readouterr().err and not png.exists()
    with pytest.warns(UnverifiedWarning):
        assert main([*argv, "--no-verify"]) == 0
    with pytest.warns(UnverifiedWarning):
        assert main(["--no-verify", *argv, "--overwrite"]) == 0
    assert png.is_file()


def _image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((28, 28), 128, dtype=np.uint8)).save(path)
    return path


# --- 3. local paths never go to the hub; the model card; the hub through huggingface_hub ------

class FakeHub(types.SimpleNamespace):
    """huggingface_hub as mvq calls it, recording each call (nothing touches the network)."""

    def __init__(self, snapshot=None):
        calls = []

        class HfApi:
            def __init__(self, token=None):
                calls.append(("HfApi", {"token": token}))

            def create_repo(self, repo_id, **kw):
                calls.append(("create_repo", {"repo_id": repo_id, **kw}))

            def create_branch(self, repo_id, **kw):
                calls.append(("create_branch", {"repo_id": repo_id, **kw}))

            def upload_folder(self, **kw):
                folder = Path(kw["folder_path"])
                kw["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
                calls.append(("upload_folder", kw))
                return types.SimpleNamespace(commit_url="https://hub/commit/1")

        def snapshot_download(repo_id, **kw):
            calls.append(("snapshot_download", {"repo_id": repo_id, **kw}))
            if snapshot is None:
                raise OSError("offline")
            return str(snapshot)

        super().__init__(calls=calls, HfApi=HfApi, snapshot_download=snapshot_download)


@pytest.mark.parametrize("name", ["runs/mvqq", "./mvqq", "/no/such/mvqq", "~/no-such-mvqq",
                                  "a/b/c", "runs/mvqq/checkpoint"])
def test_a_local_looking_path_never_goes_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(MvqError, match=f"no such folder: {re.escape(name)}") as err:
        mvq.load(name)
    assert "download" not in str(err.value) and hub.calls == []


def test_a_repository_id_downloads_only_the_model_files(tmp_path, monkeypatch, run):
    monkeypatch.chdir(tmp_path)
    snapshot = shutil.copytree(run / "checkpoint", tmp_path / "cache" / "snap")
    (snapshot / "train_state.safetensors").unlink()  # left out by allow_patterns
    hub = FakeHub(snapshot)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    model = mvq.load("someone/tok", revision="v1", token="secret")
    assert isinstance(model, Tokenizer)
    [(what, kw)] = hub.calls
    assert what == "snapshot_download" and kw["repo_id"] == "someone/tok"
    assert (kw["revision"], kw["token"]) == ("v1", "secret")
    assert sorted(kw["allow_patterns"]) == ["README.md", "config.json", "manifest.json",
                                            "model.safetensors"]
    with pytest.raises(MvqError, match="hub repositories only"):
        mvq.load(snapshot, revision="v1")
    hub = FakeHub(None)  # offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(MvqError, match="cannot download someone/tok .*offline"):
        mvq.load("someone/tok")


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch, run):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    model = mvq.load(run)
    assert model.push_to_hub("me/tok", token="t", revision="dev") == "https://hub/commit/1"
    names = [c[0] for c in hub.calls]
    assert names == ["HfApi", "create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1]["token"] == "t"
    up = hub.calls[-1][1]
    assert (up["repo_id"], up["revision"]) == ("me/tok", "dev")
    assert sorted(up["files"]) == ["README.md", "config.json", "manifest.json",
                                   "model.safetensors"]  # no training state
    assert b'mvq.load("me/tok")' in up["files"]["README.md"]
    with pytest.raises(MvqError, match="not a hub repository id"):
        model.push_to_hub("no-owner")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MvqError, match=r"mvq\[hub\]"):
        model.push_to_hub("me/tok")


def test_the_model_card(tmp_path, run):
    fresh = build_model(tiny_model_config()).save_pretrained(tmp_path / "fresh")
    card = (fresh / "README.md").read_text()
    assert "THIS_FOLDER" not in card and f'mvq.load("{fresh}")' in card
    assert "Untrained" in card and "steps: 0" not in card and "data:" not in card
    meta = card.split("---")[1]
    assert "license: mit" in meta and '"tokenizer"' in meta and "datasets" not in meta
    card = (run / "checkpoint" / "README.md").read_text()
    assert f'mvq.load("{run / "checkpoint"}")' in card and "steps: 2" in card
    meta = card.split("---")[1]
    assert '"val_mse"' in meta.split("metrics:")[1] and "license: mit" in meta
    assert "Untrained" not in card


# --- 4. the command line: one readable line each --------------------------------------------

@pytest.fixture(scope="module")
def prior(run, tmp_path_factory):
    """A class-conditional GPT prior (2 steps) on the run's tokens."""
    root = tmp_path_factory.mktemp("r3p")
    tokens = encode_dataset(run / "checkpoint", root / "tokens.safetensors", limit=16,
                            batch_size=8, device="cpu", progress=False)
    tiny = {k: dict(n_layer=1, n_head=2, n_embd=16) for k in ("primary", "secondary")}
    settings = PriorTraining(steps=2, batch_size=8, lr=3e-3, val_fraction=0.25, sizes=tiny,
                             val_every=2, log_every=1, class_conditional=True)
    train_prior(tokens, root / "prior", settings, progress=False, device="cpu")
    return root / "prior"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return err


def test_a_seed_too_large_for_torch_is_one_line(run, prior, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--tokenizer", str(run), "--prior", str(prior), "--seed", "9" * 23,
              "--out", str(tmp_path / "s.png")])
    assert "expected a seed from 0 to 2**64 - 1" in _err(capsys)
    with pytest.raises(MvqError, match="seed must be an integer in"):
        Decoding(seed=10**30)


def test_sample_writes_the_format_its_name_says(run, prior, tmp_path, capsys):
    base = ["sample", "--tokenizer", str(run), "--prior", str(prior), "--n", "5"]
    assert main([*base, "--out", str(tmp_path / "s.jpg")]) == 0
    assert Image.open(tmp_path / "s.jpg").format == "JPEG"
    assert main([*base, "--out", str(tmp_path / "s.gif")]) == 2
    assert "mvq writes images as .png, .jpg" in _err(capsys)
    assert not (tmp_path / "s.gif").exists()


def test_more_classes_than_samples_is_refused(run, prior, tmp_path, capsys):
    out = tmp_path / "c.png"
    argv = ["sample", "--tokenizer", str(run), "--prior", str(prior), "--out", str(out)]
    assert main([*argv, "--class", "0,1,2,3,4", "--n", "3"]) == 2
    assert "--n 3 is fewer than the 5 classes of --class" in _err(capsys)
    assert not out.exists()
    assert main([*argv, "--class", "0,1,2", "--n", "3"]) == 0


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
                                     b"[" * 100000 + b"]" * 100000, b"[1]"])
def test_compare_refuses_what_is_not_a_result_in_one_line(content, tmp_path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    assert main(["compare", str(path)]) == 2
    assert "pass JSON files written by `mvq evaluate`" in _err(capsys)


def test_compare_names_rows_by_what_was_evaluated():
    def result(path, **kw):
        return {"checkpoint": path, "metrics": {"mse": 0.1}, **kw}
    got = row_names([result("/w/runs/a"), result("/w/runs/b/checkpoint"),
                     result("/w/runs/c", prior="/w/priors/p/checkpoint")])
    assert got == ["a", "b", "p"]
    assert row_names([result("/w/x/run"), result("/w/y/run")]) == ["x/run", "y/run"]
    table = format_comparison([result("/w/runs/a"), result("/w/runs/b")])
    assert "| a |" in table and "| b |" in table and "| runs |" not in table


def test_demo_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in _err(capsys)
    assert (tmp_path / "f").read_text() == "mine"


def test_resume_from_a_training_state_without_rng_is_one_line(run, tmp_path):
    out = _copy(run, tmp_path)
    model = mvq.load(out)
    path = out / "checkpoint" / "train_state.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    del tensors["rng.torch"]
    save_file(tensors, str(path), metadata=metadata)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(MvqError, match=r"cannot resume: .* no CPU RNG state \(rng.torch\)"):
        checkpoint.load_train_state(out / "checkpoint", opt)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(path), metadata={})
    with pytest.raises(MvqError, match="no readable optimizer record"):
        checkpoint.load_train_state(out / "checkpoint", opt)


def test_a_bare_preset_name_is_the_preset_even_with_a_file_of_that_name(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    name = presets.names()[0]
    (tmp_path / name).write_text("model: {codebook_size: 3}\n")
    assert resolve_config(name) == presets.path(name)
    assert "is the shipped preset; the file" in capsys.readouterr().err
    assert resolve_config(f"./{name}") == Path(f"./{name}")  # a path: the file
    (tmp_path / "mine.yaml").write_text("model: {codebook_size: 3}\n")
    assert resolve_config("mine.yaml") == Path("mine.yaml")
