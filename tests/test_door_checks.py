"""Issue 19, "check at the door": every value is checked where it enters (config YAML, token
files, checkpoint JSON, a full disk, the priors' / tokenizers' / metrics' Python API) and
refused with one MvqError line; each class is tried on more than the issue's example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import load_file, save_file

from mvq.configuration.config import (
    Config,
    DataConfig,
    TrainConfig,
    check_training_sizes,
    codebook_sizes,
    load_config,
    model_hash,
)
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.files.outputs import check_outputs
from mvq.inference.tokens import load_tokens
from mvq.metrics.fid import fid_from_features, frechet_distance
from mvq.metrics.perceptual import lpips_distance
from mvq.metrics.prd import prd_from_features
from mvq.models import build_model
from mvq.models.base import model_bytes
from mvq.models.movq import MoVQConfig
from mvq.priors.registry import PRIORS
from mvq.reproduce.plan import MAX_SEEDS, build_plan
from mvq.runtime import memory
from mvq.saved import checkpoint
from mvq.saved.pretrained import load_tokenizer
from mvq.values.codes import Codes


def one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    text = str(err.value)
    assert "\n" not in text and type(err.value) is not Exception
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# ----------------------------------------------------------------------------- config YAML
DEEP = "train: " + "[" * 3000 + "]" * 3000 + "\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, fragment", [
    ("- 1\n- 2\n", "must hold a mapping of sections"),
    ("just text\n", "found a YAML str"),
    ("42\n", "found a YAML int"),
    ("train:\n  steps: 5\ntrain:\n  lr: 0.1\n", "key 'train' appears twice"),
    ("model:\n  dim: 4\n  dim: 8\n", "key 'dim' appears twice"),
    ("train: {steps: 3, steps: 4}\n", "key 'steps' appears twice"),
    (LAUGHS, "YAML aliases"),
    ("train: &t {steps: 3}\nmodel: *t\n", "YAML aliases"),
    (DEEP, "nests too deeply"),
    ("? [1, 2]\n: 3\n", "a config key must be a name"),
    ("train:\n  seed: 2024-01-01\n", "not plain data"),
    ("train: [unclosed\n", "is not valid YAML"),
    ("train:\n  out_dir: a\x00b\n", "is not valid YAML"),  # found by test_hostile's long run
    ("\x07", "is not valid YAML"),
])
def test_a_config_file_that_is_not_a_plain_mapping_is_one_line(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(MvqError) as err:
        load_config(path)
    one_line(err, fragment)


@pytest.mark.parametrize("data", ["train:\n  out_dir: caf\xe9\n".encode("latin-1"),
                                  "train: {}\n".encode("utf-16"), b"\xff\xfe\x00"])
def test_a_config_file_that_is_not_utf8_is_refused(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(MvqError) as err:
        load_config(path)
    one_line(err, "is not UTF-8 text")


@pytest.mark.parametrize("override", ["train.steps=[*a]", "model.dim=*x",
                                      "train.betas=[&a 0.5, *a]", "train.lr={a: 1, a: 2}"])
def test_an_override_with_aliases_or_duplicates_is_refused(override):
    with pytest.raises(MvqError) as err:
        load_config(None, [override])
    one_line(err, "override")


@pytest.mark.parametrize("kind, k, fix", [
    ("mvqvae", 17, "set model.codebook_size=18"), ("hvqvae", 3, "set model.codebook_size=4"),
    ("mvqgan", 2, "set model.codebook_size=4"), ("hvqgan", 255, "=256"),
    ("vqvae", 1, "0-bit code"), ("movq", 1, "0-bit code"),
])
def test_codebook_sizes_that_cannot_split_or_carry_no_bits_are_refused(kind, k, fix):
    with pytest.raises(MvqError) as err:
        load_config(None, [f"model.type={kind}", f"model.codebook_size={k}"])
    one_line(err, "model.codebook_size", fix)


def test_codebook_size_checks_hold_for_configs_built_in_python():
    with pytest.raises(MvqError, match="even K >= 4, found 17"):
        build_model(tiny_model_config(codebook_size=17))
    assert build_model(tiny_model_config(codebook_size=18)).codebook_sizes == [9, 9]
    assert build_model(tiny_model_config(type="vqvae", codebook_size=3)).codebook_sizes == [3]
    for kind, k in (("vqvae", 5), ("hvqvae", 6), ("mvqvae", 16)):
        cfg = tiny_model_config(type=kind, codebook_size=k)
        assert codebook_sizes(cfg) == build_model(cfg).codebook_sizes


def _cfg(tmp_path, **train) -> Config:
    return Config(model=tiny_model_config(), data=DataConfig(name="shapes"),
                  train=TrainConfig(out_dir=str(tmp_path / "run"), device="cpu", **train))


@pytest.mark.parametrize("train, data, fragment", [
    ({"precision": "fp16"}, {}, "train.precision=fp16 needs a CUDA GPU"),
    ({"batch_size": 1}, {}, "batches of at least 2 images"),
    ({}, {"train_limit": 1}, "train_limit=1"),
])
def test_training_settings_that_fail_at_step_one_are_refused_before_it(tmp_path, train, data,
                                                                        fragment):
    cfg = _cfg(tmp_path, **train)
    cfg.data = DataConfig(name="shapes", **data)
    with pytest.raises(MvqError) as err:
        check_training_sizes(cfg)
    one_line(err, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [("num_masks", 10**8), ("chunk_size", 10**9),
                                        ("eval_masks", 10**10)])
def test_mh_dropout_memory_is_estimated_before_training(tmp_path, monkeypatch, key, value):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 8 << 30)
    cfg = _cfg(tmp_path)
    check_training_sizes(cfg)  # the defaults fit
    setattr(cfg.model, key, value)
    if key == "chunk_size":  # chunks are capped at J: 32 x 1e6 x (8 + 8) x 12 bytes = 6.1 GB
        cfg.model.num_masks = 10**6
        check_training_sizes(cfg)
        cfg.model.num_masks = 10**7
    with pytest.raises(MvqError) as err:
        check_training_sizes(cfg)
    one_line(err, "needs about", "8.0 GiB free; lower model.num_masks")


def test_mask_allocation_is_checked_against_free_memory(monkeypatch):
    """The estimate at the allocation itself (the Python API, encode's mask bank): 5 bytes per
    mask bit (fp32 draw + bool), refused when over the free memory."""
    model = build_model(tiny_model_config(num_masks=2_000_000, dim2=8)).train()
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 100 << 20)
    with pytest.raises(MvqError) as err:  # 2 x 2e6 x 8 bits x 5 bytes = 160 MB > 100 MiB
        model(torch.rand(2, 1, 28, 28))
    one_line(err, "2 x 2000000 MH-Dropout masks", "needs about 152.6 MiB", "100.0 MiB free")


def test_model_memory_is_counted_on_the_meta_device_before_building():
    movq = MoVQConfig(image_size=16, channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(8,), z_channels=8, codebook_size=16, code_dim=4,
                      num_channels=4, fourier_frequencies=4, num_groups=4)
    for cfg in [tiny_model_config(type=k) for k in ("vqvae", "hvqvae", "mvqvae")] + [movq]:
        model = build_model(cfg)
        real = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        assert model_bytes(cfg) == real
    for key, value in (("hidden", 10**8), ("res_channels", 10**8)):
        with pytest.raises(MvqError) as err:  # refused without allocating (a build would hang)
            build_model(tiny_model_config(**{key: value}))
        one_line(err, "the weights of a mvqvae model of these sizes needs about", "lower model")
    with pytest.raises(MvqError) as err:  # the quantizer layer's own check comes first
        build_model(tiny_model_config(codebook_size=10**10))
    one_line(err, "codebook needs about", "lower codebook_size")


@pytest.mark.parametrize("seeds", [MAX_SEEDS + 1, 10**6, 0, True, 2.5])
def test_reproduce_seeds_have_a_declared_range(seeds):
    with pytest.raises(MvqError) as err:
        build_plan("fig5", "quick", seeds)
    one_line(err, f"--seeds must be an integer in [1, {MAX_SEEDS}]")


# ----------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["vqvae", "hvqvae", "mvqvae"])
def test_the_training_forward_refuses_what_would_give_a_nan_loss(kind):
    model = build_model(tiny_model_config(type=kind)).train()
    nan = torch.rand(3, 1, 28, 28)
    nan[1, 0, 5, 5] = float("nan")
    for x, fragment in [(nan, "NaN or infinite"), (torch.rand(2, 1, 28, 28) * 255, "255.0"),
                        (torch.rand(0, 1, 28, 28), "empty batch"),
                        (torch.rand(1, 1, 28, 28), "batches of at least 2 images")]:
        with pytest.raises(MvqError) as err:
            model(x)
        one_line(err, fragment)
    out = model.eval()(torch.rand(1, 1, 28, 28))  # one image is fine outside training mode
    assert torch.isfinite(out.loss)
    # found by test_hostile's long run: float64 images, and encode() of one image while the
    # model is in training mode (encode runs in eval mode and restores the mode)
    assert torch.isfinite(model(torch.rand(2, 1, 28, 28, dtype=torch.float64)).loss)
    model.train()
    x = torch.rand(1, 1, 28, 28)
    codes = model.encode(x)
    assert model.training and len(codes) == 1
    assert torch.equal(codes.primary, model.eval().encode(x).primary)


# ----------------------------------------------------------------------------- token files
def _tokens(path, meta=None, header=None, labels=None, sizes=(8, 8), n=6):
    codes = Codes(torch.randint(0, 8, (n, 2, 2)), torch.randint(0, 8, (n, 1, 1)),
                  meta={"model": "mvqvae", "config_hash": "h", "codebook_sizes": list(sizes),
                        **(meta or {})})
    tmeta = {"format": "mvq-tokens-v1", "n": n}
    text = json.dumps(tmeta) if header is None else header
    lab = torch.arange(n) % 3 if labels is None else labels
    codes.save(path, extra={"labels": lab}, metadata={"mvq_tokens": text})
    return path


@pytest.mark.parametrize("sizes", [[8], [8, 8, 8], [True, 8], ["8", 8], [1, 8], [2**21, 8],
                                   [4, 8], {"a": 8}])
def test_token_files_declaring_impossible_codebooks_are_refused(tmp_path, sizes):
    path = _tokens(tmp_path / "t.safetensors", meta={"codebook_sizes": sizes})
    with pytest.raises(MvqError) as err:
        load_tokens(path)
    one_line(err, str(path))


def test_token_codebook_sizes_must_match_their_tokenizer(tmp_path):
    """The issue's lie: a file that says 4096 ids per codebook for a K=16 tokenizer."""
    cfg = _cfg(tmp_path)
    ck = checkpoint.save_checkpoint(tmp_path / "ck", build_model(cfg.model), cfg, 0)
    meta = {"config_hash": model_hash(cfg.model), "codebook_sizes": [4096, 4096]}
    header = json.dumps({"format": "mvq-tokens-v1", "checkpoint": str(ck)})
    path = _tokens(tmp_path / "lie.safetensors", meta=meta, header=header)
    with pytest.raises(MvqError) as err:
        load_tokens(path)
    one_line(err, "declares codebook sizes [4096, 4096]", "has [8, 8]")
    honest = _tokens(tmp_path / "ok.safetensors", meta={**meta, "codebook_sizes": [8, 8]},
                     header=header)
    assert load_tokens(honest)[0].meta["codebook_sizes"] == [8, 8]


@pytest.mark.parametrize("labels, declared, fragment", [
    (torch.tensor([0, 1, 2, 3, 4, 10]), 10, "span [0, 10], expected [0, 10)"),
    (torch.tensor([0, 1, -1, 0, 1, 0]), 10, "span [-1, 1]"),
    (torch.tensor([0, 1, 2, 0, 1, 1 << 20]), None, "at most 65536 classes"),
    (torch.tensor([0, 1, 2, 0, 1, 2]), 0, "declares num_classes 0"),
    (torch.tensor([0, 1, 2, 0, 1, 2]), "10", "declares num_classes '10'"),
])
def test_class_labels_are_checked_once_at_load(tmp_path, labels, declared, fragment):
    header = json.dumps({"format": "mvq-tokens-v1", "num_classes": declared})
    path = _tokens(tmp_path / "t.safetensors", header=header, labels=labels)
    with pytest.raises(MvqError) as err:
        load_tokens(path)
    one_line(err, fragment)


@pytest.mark.parametrize("header, fragment", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"), ('"x"', "JSON str"),
    ("[" * 100000 + "]" * 100000, "nests JSON too deeply"),
    ('{"a": ' + "[" * 50000 + "]" * 50000 + "}", "nests JSON too deeply"),
])
def test_malformed_or_deep_token_metadata_is_one_line(tmp_path, header, fragment):
    path = _tokens(tmp_path / "t.safetensors", header=header)
    with pytest.raises(MvqError) as err:
        load_tokens(path)
    one_line(err, "'mvq_tokens' header", fragment)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def ckpt(tmp_path):
    cfg = _cfg(tmp_path)
    return checkpoint.save_checkpoint(tmp_path / "checkpoint", build_model(cfg.model), cfg, 3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_without_a_manifest_are_refused_at_load(ckpt, value):
    (ckpt / "manifest.json").unlink()  # a checkpoint from before manifests: nothing to verify
    weights = load_file(str(ckpt / "model.safetensors"))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[-1]
    weights[name].view(-1)[-1] = value
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(MvqError) as err:
        load_tokenizer(ckpt, verify=False)
    one_line(err, "holds NaN or infinite values in " + name)


@pytest.mark.parametrize("manifest", [
    "[]", "null", '{"step": 1}', '{"step": "3", "files": {"a": {"bytes": 1, "sha256": "x"}}}',
    '{"step": -1, "files": {}}', '{"step": 3, "files": []}', '{"step": 3, "files": {}}',
    '{"step": 3, "files": {"../x": {"bytes": 1, "sha256": "' + "0" * 64 + '"}}}',
    '{"step": 3, "files": {"m": {"bytes": true, "sha256": "' + "0" * 64 + '"}}}',
    '{"step": 3, "files": {"m": {"bytes": 1, "sha256": 5}}}',
    "{" * 5, "[" * 100000 + "]" * 100000,
])
def test_manifests_of_the_wrong_shape_are_one_line(ckpt, manifest):
    (ckpt / "manifest.json").write_text(manifest)
    with pytest.raises(MvqError) as err:
        load_tokenizer(ckpt)
    one_line(err, "manifest.json")
    assert sealed.latest(ckpt) is None  # and it is not taken for a complete checkpoint
    try:  # an output beside it (evaluate's report; found by test_hostile's long run)
        check_outputs([("--json", ckpt / "e.json")], False, beside_checkpoint=True)
    except MvqError as refused:
        assert "\n" not in str(refused)


@pytest.mark.parametrize("edit", [
    lambda info: {k: v for k, v in info.items() if k != "config"},
    lambda info: {**info, "config": []},
    lambda info: {**info, "config": {**info["config"], "model": [1]}},
    lambda info: [info],
])
def test_checkpoint_configs_of_the_wrong_shape_are_one_line(ckpt, edit):
    (ckpt / "manifest.json").unlink()
    info = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(edit(info)))
    with pytest.raises(MvqError) as err:
        load_tokenizer(ckpt, verify=False)
    one_line(err)


DISK_FULL = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_model_config
    from mvq.saved import checkpoint
    from mvq.configuration.config import Config
    from mvq.errors import MvqError
    from mvq.models import build_model
    cfg = Config(model=tiny_model_config())
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    try:
        checkpoint.save_checkpoint(sys.argv[1], build_model(cfg.model), cfg, 7)
    except MvqError as err:
        print(err)
""")


def test_a_full_disk_names_the_file_and_the_space_and_tears_nothing(ckpt):
    before = (ckpt / "model.safetensors").read_bytes()
    tests = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(ckpt), tests],
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr[-2000:])
    assert f"cannot write {ckpt}/model.safetensors: it needs about" in lines[0]
    assert "ulimit -f" in lines[0]
    sealed.verify(ckpt)  # the old checkpoint is whole and still the one in place
    assert sealed.read_manifest(ckpt)["step"] == 3
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- priors
def _prior(kind: str):
    two = Codes(torch.randint(0, 8, (4, 2, 2)), torch.randint(0, 8, (4, 1, 1)),
                torch.rand(4, 1, 1, 3) < 0.5, {"codebook_sizes": [8, 8]})
    one = Codes(torch.randint(0, 8, (4, 2, 2)), meta={"codebook_sizes": [8]})
    sizes = {"gpt": {s: dict(n_layer=1, n_head=1, n_embd=8) for s in ("primary", "secondary")},
             "maskgit": dict(n_layer=1, n_head=1, n_embd=8),
             "pixelcnn": dict(channels=8, n_layers=1)}[kind]
    codes = one if kind == "maskgit" else two
    return PRIORS[kind].from_codes(codes, sizes=sizes), codes


@pytest.mark.parametrize("kind", ["gpt", "maskgit", "pixelcnn"])
@pytest.mark.parametrize("kw, fragment", [
    ({"n": 0}, "n >= 1"), ({"n": -3}, "n >= 1"), ({"n": 2.0}, "n >= 1"), ({"n": True}, "n >= 1"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": -0.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": 9}, "top_k=9"),
    ({"top_k": 2.0}, "top_k"), ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
])
def test_prior_sample_checks_its_arguments(kind, kw, fragment):
    prior, _ = _prior(kind)
    with pytest.raises(MvqError) as err:
        prior.sample(**{"n": 2, **kw})
    one_line(err, fragment)


@pytest.mark.parametrize("kind", ["gpt", "maskgit", "pixelcnn"])
def test_prior_loss_and_nll_check_the_codes(kind):
    prior, codes = _prior(kind)
    bad = [codes[:0], Codes(codes.primary + 8, codes.secondary, codes.mask, codes.meta),
           Codes(codes.primary - 9, codes.secondary, codes.mask, codes.meta),
           Codes(codes.primary.float(), codes.secondary, codes.mask, codes.meta), codes.primary]
    if codes.secondary is not None:
        bad.append(Codes(codes.primary, codes.secondary + 8, codes.mask, codes.meta))
    for item in bad:
        for call in (prior.loss, prior.nll):
            with pytest.raises(MvqError) as err:
                call(item)
            one_line(err)
    assert set(prior.nll(codes)) == set(prior.stages)  # good codes still pass
    assert len(prior.sample(2, top_k=8, top_p=1.0, temperature=0.0)) == 2


# ----------------------------------------------------------------------------- metrics
def test_metrics_refuse_non_finite_features_and_images_outside_the_unit_range():
    f = torch.randn(30, 4)
    g = f.clone()
    g[3, 1] = float("nan")
    for call in (lambda: fid_from_features(f, g), lambda: fid_from_features(g.numpy(), f),
                 lambda: prd_from_features(f, g, num_clusters=3, num_runs=1),
                 lambda: frechet_distance(torch.zeros(4).numpy() * float("nan"),
                                          torch.eye(4).numpy(), torch.zeros(4).numpy(),
                                          torch.eye(4).numpy())):
        with pytest.raises(MvqError) as err:
            call()
        one_line(err, "finite")
    x = torch.rand(2, 3, 32, 32)
    for y, fragment in [(x * 255, "divide 0..255"), (x - 0.5, "clamp"),
                        (x.to(torch.uint8), "float images"), (x[:0], "empty"),
                        (x.masked_fill(x > 0.5, float("nan")), "NaN")]:
        with pytest.raises(MvqError) as err:
            lpips_distance(x, y)
        one_line(err, "LPIPS", fragment)
