"""The command line: help, errors as one line with a non-zero exit, and a tiny end-to-end run."""

import json
import subprocess
import sys

import pytest
from conftest import assert_labelled
from PIL import Image

from mvq.cli import main

TINY = ["model.hidden=16", "model.res_blocks=1", "model.res_channels=8", "model.dim=8",
        "model.dim2=8", "model.num_masks=8", "data.name=shapes", "data.train_limit=64",
        "data.val_limit=8", "train.steps=2", "train.batch_size=4", "train.val_every=2",
        "train.grid_images=4"]


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "mvq.cli", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "train" in out.stdout and "demo" in out.stdout
    for cmd in ("train", "reconstruct", "demo", "bench"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0


def test_unknown_config_key(capsys):
    assert main(["train", "model.nmasks=4"]) == 2
    line = _err_line(capsys)
    assert "unknown config key model.nmasks" in line and "num_masks" in line


def test_missing_config_file(capsys):
    assert main(["train", "--config", "nope.yaml"]) == 2
    assert "config 'nope.yaml' is neither a file nor a preset" in _err_line(capsys)
    assert main(["train", "--config", "configs/shapes_f8_k16_quick.yaml"]) == 2  # the old path
    assert "use --config shapes_f8_k16_quick" in _err_line(capsys)


def test_missing_data_path(capsys, tmp_path):
    code = main(["train", *TINY, "data.name=fashion-mnist", f"data.root={tmp_path / 'none'}"])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in _err_line(capsys)


def test_image_folder_with_corrupt_files(capsys, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (30, 30), color=40 * i).save(folder / f"ok{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    args = ["train", *TINY, "data.name=folder", f"data.root={folder}", "data.val_limit=2",
            f"train.out_dir={tmp_path / 'run'}", "--no-progress"]
    assert main(args) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    # the finished run is not replaced silently
    assert main(args) == 2
    assert ("already holds a tokenizer run (mvqvae, checkpoint at step 2); pass --resume"
            in _err_line(capsys))
    ckpt = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    for f in folder.glob("ok*"):
        f.write_bytes(b"broken")
    assert main([*args, "--overwrite"]) == 2
    assert "could be read" in _err_line(capsys)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == ckpt


def test_wrong_channel_count(capsys):
    assert main(["train", *TINY, "model.channels=2"]) == 2
    assert "channels" in _err_line(capsys)


def test_train_reconstruct_and_wrong_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"train.out_dir={run}", "--no-progress"]) == 0
    ck = run / "checkpoint"
    info = json.loads((ck / "config.json").read_text())
    assert info["model_type"] == "mvqvae" and info["step"] == 2
    out = tmp_path / "rec.png"
    assert main(["reconstruct", "--checkpoint", str(ck), "--n", "4", "--out", str(out),
                 "--codes", str(tmp_path / "codes.safetensors")]) == 0
    assert (tmp_path / "codes.safetensors").is_file()
    assert_labelled(out)
    capsys.readouterr()
    # resuming with another model type refuses the checkpoint
    assert main(["train", *TINY, "model.type=hvqvae", f"train.out_dir={run}", "--resume"]) == 2
    assert ("model.type is fixed for a run's life; the run has 'mvqvae', "
            "this command gives 'hvqvae'" in _err_line(capsys))
    # a folder that is not a checkpoint
    assert main(["reconstruct", "--checkpoint", str(tmp_path)]) == 2
    assert "holds no mvq model" in _err_line(capsys)


def test_bench_quick_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "vq.json"
    assert main(["bench", "quantizer", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["ours_ms"] > 0 and r["theirs_ms"] > 0 for r in rows)
    assert "vqp / mvq" in capsys.readouterr().out


def test_bench_layers_measures_every_layer_side_by_side(tmp_path, capsys):
    """mvq bench layers: each layer in both modes, ratios from the same run's medians, FLOPs
    counted (MVQ's per-instance search does J times the f work of the per-batch table)."""
    out = tmp_path / "layers.json"
    assert main(["bench", "layers", "--shapes", "4,16,8,16", "--masks", "4", "--repeats", "1",
                 "--tokenizers", "--json", str(out)]) == 0
    assert "x VQ" in capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = {(r["mode"], r["layer"]): r for r in data["layers"]}
    assert set(rows) == {("train", "VectorQuantize"), ("train", "vector-quantize-pytorch"),
                         ("train", "MVQ J=4 instance"), ("train", "MVQ J=4 batch"),
                         ("train", "MultiChannel c=4"), ("eval", "VectorQuantize"),
                         ("eval", "vector-quantize-pytorch"), ("eval", "MVQ J=4"),
                         ("eval", "MultiChannel c=4")}
    for (mode, _), r in rows.items():
        assert r["ms"] > 0 and r["vs_vq"] == pytest.approx(
            r["ms"] / rows[(mode, "VectorQuantize")]["ms"])
    assert rows[("train", "MVQ J=4 instance")]["gflop"] > rows[("train", "MVQ J=4 batch")]["gflop"]
    # VQ's count is its distance product, 2 B N K D (by hand); each layer's over VQ's
    assert rows[("eval", "VectorQuantize")]["gflop"] * 1e9 == pytest.approx(2 * 4 * 16 * 16 * 8)
    for (mode, _), r in rows.items():
        assert r["flop_vs_vq"] == pytest.approx(
            r["gflop"] / rows[(mode, "VectorQuantize")]["gflop"])
    assert rows[("eval", "MVQ J=4")]["flop_vs_vq"] > 1
    assert [r["tokenizer"] for r in data["tokenizers"]] == [
        "hvqvae", "mvqvae J=4 instance", "mvqvae J=4 batch"]
    assert data["gemm_peak_gflops"] > 0


def test_bench_layers_argmin_times_each_layer_with_torchs_argmin_too(tmp_path, capsys):
    """--argmin: a '... torch argmin' row beside each of mvq's layers, the same FLOPs, and the
    searches' row_argmin restored afterwards."""
    from mvq.quantize import masked, vq
    from mvq.quantize.argmin import row_argmin

    out = tmp_path / "layers.json"
    assert main(["bench", "layers", "--shapes", "2,8,8,256", "--masks", "4", "--repeats", "1",
                 "--argmin", "--json", str(out)]) == 0
    capsys.readouterr()
    rows = {(r["mode"], r["layer"]): r for r in json.loads(out.read_text())["layers"]}
    for mode, layer in [("train", "VectorQuantize"), ("train", "MVQ J=4 batch"),
                        ("train", "MultiChannel c=4"), ("eval", "MVQ J=4")]:
        twin = rows[(mode, f"{layer} torch argmin")]
        assert twin["ms"] > 0 and twin["gflop"] == rows[(mode, layer)]["gflop"]
    assert ("train", "vector-quantize-pytorch torch argmin") not in rows
    assert vq.row_argmin is row_argmin and masked.row_argmin is row_argmin


@pytest.mark.parametrize("argv,said", [
    (["bench", "sampling", "--lengths", "abc"], "expected integers >= 1"),
    (["bench", "layers", "--masks", "0"], "expected integers >= 1"),
    (["bench", "quantizer", "--json", "."], "is a folder"),
    (["bench", "layers", "--shapes", "1,2,3"], "B,N,D,K"),
])
def test_bench_arguments_refused_before_measuring(argv, said, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert said in capsys.readouterr().err


def test_bench_sampling_short_lengths(tmp_path, capsys):
    """The sampling table on 1+1, 4+1 and 8+1 tokens: every cell measured, ratios from the
    cells; MaskGIT only where the tokens are at least its steps (8+1: 8 steps, not 12)."""
    out = tmp_path / "sampling.json"
    assert main(["bench", "sampling", "--lengths", "1,4,8", "--repeats", "1", "--batch", "4",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "naive/cached" in printed and "naive / (S x floor)" in printed
    assert "maskgit n/a: S+1 tokens are fewer than the steps" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["tokens"] for r in rows] == ["1+1", "4+1", "8+1"]
    assert [(r["maskgit8_s"] is None, r["maskgit12_s"] is None) for r in rows] == [
        (True, True), (True, True), (False, True)]
    assert rows[2]["maskgit8_s"] > 0
    for r in rows:
        for key in ("naive_s", "cached_s", "cached_b4_s_per_image",
                    "linear_floor_ms_per_token", "step_floor_ms_per_token"):
            assert r[key] > 0, key
        assert r["speedup_cached_vs_naive"] == pytest.approx(r["naive_s"] / r["cached_s"])
        assert r["max_speedup_vs_naive"] == pytest.approx(
            r["naive_s"] / (r["length"] * r["step_floor_ms_per_token"] / 1e3))
    assert rows[1]["primary_weights_mb"] > rows[0]["primary_weights_mb"]  # Table 4: 4+1 is larger


def test_prior_commands_end_to_end(capsys, tmp_path):
    run = tmp_path / "tok"
    assert main(["train", *TINY, "model.factor=7", f"train.out_dir={run}", "--no-progress"]) == 0
    ck, tokens = run / "checkpoint", tmp_path / "tokens.safetensors"
    assert main(["encode-dataset", "--checkpoint", str(ck), "--out", str(tokens), "--limit", "48",
                 "--no-progress"]) == 0
    assert "48 images" in capsys.readouterr().out
    prior = tmp_path / "prior"
    assert main(["train-prior", str(tokens), "--out", str(prior), "--steps", "4",
                 "--val-every", "2", "--batch-size", "8", "--no-progress"]) == 0
    assert "val NLL" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert main(["sample", "--tokenizer", str(ck), "--prior", str(prior / "checkpoint"), "--n", "4",
                 "--out", str(png)]) == 0
    assert_labelled(png, row_labels=False)  # unconditional: rows of samples, no classes
    # a prior refuses a tokenizer it was not trained on
    other = tmp_path / "other"
    assert main(["train", *TINY, "model.factor=7", "model.codebook_size=32",
                 f"train.out_dir={other}", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--tokenizer", str(other / "checkpoint"), "--prior",
                 str(prior / "checkpoint")]) == 2
    assert "tokenizer" in _err_line(capsys)
