"""Save and load in one line: save_pretrained -> a fresh process -> mvq.load decodes
bit-identically; training checkpoints and run folders load in eval mode; the old weight names
still load; errors are one line."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import load_file, save_file

import mvq
from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.models import Tokenizer, build_model
from mvq.priors import Prior, prior_class
from mvq.saved import checkpoint
from mvq.saved.pretrained import UnverifiedWarning
from mvq.train import train
from mvq.values.codes import Codes


def _all_eval(module: torch.nn.Module) -> bool:
    return not any(m.training for m in module.modules())


@pytest.mark.parametrize("kind", ["mvqvae", "hvqvae", "vqvae"])
def test_saved_model_decodes_bit_identically_in_a_fresh_process(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(type=kind)).eval()
    x = torch.rand(5, 1, 28, 28)
    codes = model.encode(x)
    with torch.no_grad():
        want = model.decode(codes)
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "manifest.json", "model.safetensors"]
    codes.save(tmp_path / "codes.safetensors")
    script = textwrap.dedent(f"""
        import torch, mvq
        from mvq.values.codes import Codes
        from safetensors.torch import save_file
        model = mvq.load({str(folder)!r})
        assert not any(m.training for m in model.modules()), "not in eval mode"
        with torch.no_grad():
            out = model.decode(Codes.load({str(tmp_path / 'codes.safetensors')!r}))
        save_file({{"x": out}}, {str(tmp_path / 'out.safetensors')!r})
    """)
    outside = tmp_path / "elsewhere"  # no presets, no checkout around
    outside.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=outside, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got = load_file(str(tmp_path / "out.safetensors"))["x"]
    assert torch.equal(got, want)


def test_training_checkpoint_and_run_folder_load_in_eval_mode(tmp_path):
    out = tmp_path / "run"
    cfg = Config(model=tiny_model_config(image_size=32, channels=3, factor=8),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(steps=2, batch_size=4, val_every=2, ckpt_every=2, log_every=1,
                                   grid_images=2, out_dir=str(out), device="cpu"))
    train(cfg, progress=False)
    for path in (out, out / "checkpoint"):
        model = mvq.load(path)
        assert isinstance(model, Tokenizer) and _all_eval(model)
        assert model.checkpoint_info["step"] == 2
    model = Tokenizer.from_pretrained(out)
    card = (out / "checkpoint" / "README.md").read_text()
    assert "steps: 2" in card and "shapes" in card and "val_mse" in card and '"num_masks"' in card
    # a loaded model saved again keeps its training record
    again = model.save_pretrained(tmp_path / "again")
    assert (json.loads((again / "config.json").read_text())["metrics"]
            == model.checkpoint_info["metrics"])
    with pytest.raises(MvqError, match="not a Prior"):
        Prior.from_pretrained(out)


def test_prior_round_trip_and_kind_checks(tmp_path):
    model = build_model(tiny_model_config()).eval()
    codes = model.encode(torch.rand(6, 1, 28, 28))
    prior = prior_class("pixelcnn").from_codes(codes, sizes={"channels": 8, "n_layers": 2}).eval()
    folder = prior.save_pretrained(tmp_path / "prior")
    loaded = mvq.load(folder)
    assert isinstance(loaded, Prior) and loaded.kind == "pixelcnn" and _all_eval(loaded)
    assert loaded.nll(codes) == prior.nll(codes)
    assert Prior.from_pretrained(folder).config() == prior.config()
    with pytest.raises(MvqError, match="not a Tokenizer"):
        Tokenizer.from_pretrained(folder)
    assert "# mvq prior: pixelcnn" in (folder / "README.md").read_text()
    info = json.loads((folder / "config.json").read_text())
    assert (info["format"], info["kind"]) == (checkpoint.FORMAT, "prior")  # one format for all


def test_folders_saved_in_the_earlier_formats_still_load(tmp_path):
    """Priors saved as format mvq-prior-v1 (mvq 0.1.0, before one format) load as before; a
    config.json of today's format that names no kind was never written and is refused."""
    model = build_model(tiny_model_config()).eval()
    codes = model.encode(torch.rand(6, 1, 28, 28))
    prior = prior_class("pixelcnn").from_codes(codes, sizes={"channels": 8, "n_layers": 2}).eval()
    folder = prior.save_pretrained(tmp_path / "prior")
    info = json.loads((folder / "config.json").read_text())
    info = {**{k: v for k, v in info.items() if k != "kind"}, "format": "mvq-prior-v1"}
    (folder / "config.json").write_text(json.dumps(info))
    (folder / "manifest.json").unlink()  # written before manifests: nothing to check
    with pytest.warns(UnverifiedWarning):  # loads only when asked to, unverified
        assert type(mvq.load(folder, verify=False)) is type(prior)
    one = {"n_layer": 1, "n_head": 1, "n_embd": 8}  # before the registry: no prior_type, a GPT
    gpt = prior_class("gpt").from_codes(codes, sizes={"primary": one, "secondary": one})
    early = gpt.save_pretrained(tmp_path / "gpt")
    old = json.loads((early / "config.json").read_text())
    old = {k: v for k, v in old.items() if k not in ("kind", "prior_type")}
    (early / "config.json").write_text(json.dumps({**old, "format": "mvq-prior-v1"}))
    (early / "manifest.json").unlink()
    with pytest.warns(UnverifiedWarning):
        assert type(mvq.load(early, verify=False)) is type(gpt)
    tok = model.save_pretrained(tmp_path / "tok")
    edited = json.loads((tok / "config.json").read_text())
    del edited["kind"]
    (tok / "config.json").write_text(json.dumps(edited))
    with pytest.raises(MvqError, match="kind None"):
        mvq.load(tok, verify=False)
    info["format"] = "someone-else-v3"
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(MvqError, match="format 'someone-else-v3'"):
        mvq.load(folder, verify=False)


def test_weights_saved_with_the_old_names_still_load(tmp_path):
    """Before E' moved into the MVQ layer the weights named it encoder2.*."""
    model = build_model(tiny_model_config()).eval()
    folder = model.save_pretrained(tmp_path / "new")
    state = load_file(str(folder / "model.safetensors"))
    old = {k.replace("mvq.secondary_encoder.", "encoder2."): v for k, v in state.items()}
    assert any(k.startswith("encoder2.") for k in old)
    save_file(old, str(folder / "model.safetensors"))
    (folder / "manifest.json").unlink()  # as written before manifests: nothing to check against
    x = torch.rand(3, 1, 28, 28)
    with pytest.warns(UnverifiedWarning):
        loaded = mvq.load(folder, verify=False)
    with torch.no_grad():
        assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_load_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(MvqError, match="no such folder"):
        mvq.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MvqError, match="holds no mvq model"):
        mvq.load(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(MvqError, match=r"mvq\[hub\]"):
        mvq.load("someone/some-tokenizer")
    folder = build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    if not torch.cuda.is_available():
        with pytest.raises(MvqError, match="no usable CUDA GPU") as err:
            mvq.load(folder, device="cuda")
        assert "damaged" not in str(err.value)
    info = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**info, "kind": "banana"}))
    with pytest.raises(MvqError, match="kind 'banana'"):  # named before the manifest's check
        mvq.load(folder)


def test_save_pretrained_never_replaces_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MvqError, match="not an mvq checkpoint"):
        build_model(tiny_model_config()).save_pretrained(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    # no temp folder left behind; the writer's lock file stays (as a run's .lock does)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.lock", "notes"]


def test_codes_survive_save_and_load_with_the_model(tmp_path):
    """Codes made before saving decode with the loaded model (ids and mask layout agree)."""
    model = build_model(tiny_model_config()).eval()
    codes = model.encode(torch.rand(2, 1, 28, 28))
    assert codes.mask.shape == (2, 1, 1, 8)  # (B, H', W', D'): the one mask layout
    loaded = mvq.load(model.save_pretrained(tmp_path / "m"))
    assert isinstance(codes, Codes)
    with torch.no_grad():
        assert torch.equal(loaded.decode(codes), model.decode(codes))
    assert sealed.read_manifest(tmp_path / "m") is not None


def test_save_refuses_a_folder_of_another_kind_and_load_checks_types(tmp_path):
    model = build_model(tiny_model_config()).eval()
    codes = model.encode(torch.rand(4, 1, 28, 28))
    prior = prior_class("pixelcnn").from_codes(codes, sizes={"channels": 8, "n_layers": 2})
    prior.save_pretrained(tmp_path / "p")
    with pytest.raises(MvqError, match="holds a prior model, not a tokenizer"):
        model.save_pretrained(tmp_path / "p")
    assert isinstance(mvq.load(tmp_path / "p"), Prior)  # untouched
    model.save_pretrained(tmp_path / "t")
    model.save_pretrained(tmp_path / "t")  # the same kind: replaced, all or nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.lock", ".t.lock", "p", "t"]
    for bad in (None, 3, ["a"]):
        with pytest.raises(MvqError, match="expected a folder path"):
            mvq.load(bad)


def test_weights_hash_is_the_one_recorded_before_the_rename():
    """Token files and priors record the tokenizer weights' sha256; the hash is taken under the
    names of before E' moved into the MVQ layer, so they still match."""
    from mvq.files.hashes import state_dict_sha256

    model = build_model(tiny_model_config())
    old = {k.replace("mvq.secondary_encoder.", "encoder2."): v
           for k, v in model.state_dict().items()}
    assert any(k.startswith("encoder2.") for k in old)
    assert checkpoint.tensors_sha256(model) == state_dict_sha256(old)
    other = build_model(tiny_model_config(type="hvqvae"))
    assert checkpoint.tensors_sha256(other) == state_dict_sha256(other.state_dict())


def test_two_saves_into_one_folder_at_once_give_one_line(tmp_path):
    """While one process writes a folder (it holds .FOLDER.lock), a second save is refused in
    one line and the folder stays loadable."""
    from mvq.files.outputs import try_lock

    model = build_model(tiny_model_config(type="vqvae"))
    model.save_pretrained(tmp_path / "m")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from mvq.files.outputs import try_lock
        with try_lock(Path({str(tmp_path / '.m.lock')!r})) as holder:
            print(holder, flush=True)
            time.sleep(30)
    """)
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "None"  # the other process holds the lock
        with pytest.raises(MvqError, match="being written by another process"):
            model.save_pretrained(tmp_path / "m")
    finally:
        other.kill()
        other.wait()
    assert isinstance(mvq.load(tmp_path / "m"), Tokenizer)
    with try_lock(tmp_path / ".m.lock") as holder:  # released when the holder died
        assert holder is None
