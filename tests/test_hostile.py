"""A hostile user, generated (issue 19, item 7): the CLI (in process) and the Python API (priors,
tokenizers, metrics, config loading, token files, checkpoint folders) fed generated bad input.

Every call ends in a result, an `MvqError` (the CLI: exit 2 and one error line), or argparse's
one-line usage error; never a raw exception or a traceback; and nothing on disk changes.

Bounded in `make test` (a few examples per target, derandomized); ``MVQ_FUZZ=long`` (the
`make fuzz` target) runs many more, with fresh randomness each time.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from mvq.cli import main
from mvq.configuration.config import Config, load_config
from mvq.errors import MvqError
from mvq.files import sealed
from mvq.inference.tokens import load_tokens
from mvq.metrics.fid import fid_from_features
from mvq.metrics.perceptual import lpips_distance
from mvq.metrics.prd import prd_from_features
from mvq.models import build_model
from mvq.priors.registry import PRIORS
from mvq.saved import checkpoint
from mvq.saved.pretrained import load_tokenizer
from mvq.values.codes import Codes

LONG = os.environ.get("MVQ_FUZZ", "")  # "long" (make fuzz), or a number of examples per target
EXAMPLES = 400 if LONG == "long" else int(LONG) if LONG.isdigit() else 12
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file under ``root`` (what "nothing changed" means)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            out[os.path.relpath(p, root)] = (st_.st_size if name in filenames else 0,
                                             st_.st_mtime_ns if name in filenames else 0)
    return out


# ----------------------------------------------------------------------------- hostile files
def _write_checkpoint(folder: Path, edit=None) -> Path:
    cfg = Config(model=tiny_model_config())
    checkpoint.save_checkpoint(folder, build_model(cfg.model), cfg, 1)
    if edit is not None:
        edit(folder)
    return folder


def _nan_weights(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    w = load_file(str(folder / "model.safetensors"))
    next(v for v in w.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_file(w, str(folder / "model.safetensors"))


def _tokens(path: Path, header: str, sizes, labels) -> Path:
    p = torch.randint(0, 8, (4, 2, 2))
    meta = {"mvq_codes": json.dumps({"codebook_sizes": sizes, "config_hash": "h"}),
            "mvq_tokens": header}
    save_file({"primary": p, "labels": labels}, str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Bad inputs of every kind, made once: {kind: [paths]}, plus a valid tokenizer."""
    root = tmp_path_factory.mktemp("hostile")
    deep = "[" * 100000 + "]" * 100000
    yamls = {"dup.yaml": "train: {steps: 1}\ntrain: {lr: 1}\n",
             "alias.yaml": "a: &a [1, 1, 1, 1]\nb: [*a, *a, *a]\n",
             "list.yaml": "- model\n", "deep.yaml": "train: " + "[" * 3000 + "]" * 3000,
             "odd.yaml": "model: {codebook_size: 17}\n", "amp.yaml": "train: {amp: true}\n",
             "masks.yaml": "model: {num_masks: 100000000}\n",
             "one.yaml": "train: {batch_size: 1}\n"}
    for name, text in yamls.items():
        (root / name).write_text(text)
    (root / "latin.yaml").write_bytes("train: {out_dir: caf\xe9}\n".encode("latin-1"))
    garbage = root / "garbage.bin"
    garbage.write_bytes(os.urandom(300))
    (root / "pipe.png").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "pipe.png")
    ckpts = [root / "missing", garbage, root / "empty"]
    (root / "empty").mkdir()
    ckpts.append(_write_checkpoint(root / "nan", _nan_weights))
    for name, text in {"deep": deep, "list": "[]", "bad": "{", "wrong": '{"step": "x"}'}.items():
        ckpts.append(_write_checkpoint(root / f"man_{name}",
                                       lambda f, t=text: (f / "manifest.json").write_text(t)))
        ckpts.append(_write_checkpoint(
            root / f"cfg_{name}", lambda f, t=text: ((f / "manifest.json").unlink(),
                                                     (f / "config.json").write_text(t))))
    tokens = [root / "missing.safetensors", garbage,
              _tokens(root / "t_lie.safetensors", "{}", [4096, 4096], torch.zeros(4).long()),
              _tokens(root / "t_sizes.safetensors", "{}", [True], torch.zeros(4).long()),
              _tokens(root / "t_deep.safetensors", deep, [8], torch.zeros(4).long()),
              _tokens(root / "t_json.safetensors", "{x", [8], torch.zeros(4).long()),
              _tokens(root / "t_neg.safetensors", "{}", [8], -torch.ones(4).long()),
              _tokens(root / "t_big.safetensors", '{"num_classes": 3}', [8],
                      torch.arange(4).long())]
    valid = _write_checkpoint(root / "valid")
    return {"root": root, "yaml": sorted(root.glob("*.yaml")), "ckpt": ckpts, "tokens": tokens,
            "valid": valid, "garbage": garbage, "pipe": root / "pipe.png"}


# ----------------------------------------------------------------------------- the CLI
NUMBERS = st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e999", "2.5", "x", "",
                           "10000000000", "0x10", "1,2", "-0"])
POISON_OVERRIDES = ["model.codebook_size=17", "model.codebook_size=1", "train.amp=true",
                    "model.num_masks=100000000", "train.batch_size=1", "data.train_limit=1",
                    "train.steps=[*a]", "model.dim=&a 3", "train.lr=.nan", "train.seed=2024-01-01",
                    "train.steps={a: 1, a: 2}", "model.type=gpt", "train=5", "train.x.y=1",
                    "train.steps=" + "[" * 2000 + "]" * 2000, "data.name=folder",
                    "train.device=cuda:7", "train.out_dir=", "model.image_size=0"]
OPTIONS = {"--n": NUMBERS, "--temperature": NUMBERS, "--top-k": NUMBERS, "--top-p": NUMBERS,
           "--steps": NUMBERS, "--seed": NUMBERS, "--scale": NUMBERS, "--batch-size": NUMBERS,
           "--limit": NUMBERS, "--lr": NUMBERS, "--class": NUMBERS, "--choice-temperature": NUMBERS,
           "--split": st.sampled_from(["train", "test", "val", ""]),
           "--type": st.sampled_from(["gpt", "maskgit", "pixelcnn", "lstm"]),
           "--metrics": st.sampled_from(["mse", "fid,lpips", "bogus", ""]),
           "--val-fraction": NUMBERS, "--port": NUMBERS}


@st.composite
def cli_argv(draw, hostile):
    """A command whose required input is hostile, plus random (often bad) options."""
    ckpt = st.sampled_from([str(p) for p in hostile["ckpt"]])
    tokens = st.sampled_from([str(p) for p in hostile["tokens"]])
    command = draw(st.sampled_from(["train", "train-prior", "encode-dataset", "reconstruct",
                                    "sample", "evaluate", "analyze", "explore", "reproduce"]))
    if command == "train":
        argv = ["train", *draw(st.lists(st.sampled_from(POISON_OVERRIDES), min_size=1, max_size=3))]
        if draw(st.booleans()):
            argv[1:1] = ["--config", str(draw(st.sampled_from(hostile["yaml"])))]
        argv += draw(st.lists(st.sampled_from(["--resume", "--overwrite", "--no-progress"]),
                              max_size=2, unique=True))
        return argv
    if command == "reproduce":
        return ["reproduce", draw(st.sampled_from(["fig5", "table1", "nope"])), "--dry-run",
                "--seeds", draw(NUMBERS | st.integers(-3, 10**7).map(str)), "--scale",
                draw(st.sampled_from(["quick", "paper", "huge"]))]
    required = {"train-prior": lambda: [draw(tokens)],
                "sample": lambda: ["--tokenizer", draw(ckpt), "--prior", draw(ckpt)],
                "analyze": lambda: ["--checkpoint", draw(ckpt), "--what", "usage"]}
    argv = [command, *required.get(command, lambda: ["--checkpoint", draw(ckpt)])()]
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=3, unique=True)):
        argv += [name, draw(OPTIONS[name])]
    return argv


@FUZZ
@given(data=st.data())
def test_the_cli_fuzzed_is_one_line_and_writes_nothing(hostile, capsys, monkeypatch, data):
    monkeypatch.chdir(Path(tempfile.mkdtemp(dir=hostile["root"], prefix="cwd-")))
    argv = data.draw(cli_argv(hostile), label="argv")
    before = snapshot(hostile["root"])
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(err)
    if argv[0] == "reproduce" and rc == 0:  # a valid dry run prints its plan
        assert snapshot(hostile["root"]) == before
        return
    assert rc == 2, (argv, rc, err)
    assert len([line for line in err if "error:" in line]) == 1, (argv, err)
    assert snapshot(hostile["root"]) == before, argv


# ----------------------------------------------------------------------------- priors
PRIOR_CACHE: dict = {}


def _prior(kind: str):
    if kind not in PRIOR_CACHE:
        two = Codes(torch.randint(0, 8, (4, 2, 2)), torch.randint(0, 8, (4, 1, 1)),
                    torch.rand(4, 1, 1, 3) < 0.5, {"codebook_sizes": [8, 8]})
        one = Codes(torch.randint(0, 8, (4, 2, 2)), meta={"codebook_sizes": [8]})
        sizes = {"gpt": {s: dict(n_layer=1, n_head=1, n_embd=8) for s in ("primary", "secondary")},
                 "maskgit": dict(n_layer=1, n_head=1, n_embd=8),
                 "pixelcnn": dict(channels=8, n_layers=1)}[kind]
        PRIOR_CACHE[kind] = PRIORS[kind].from_codes(one if kind == "maskgit" else two, sizes=sizes)
    return PRIOR_CACHE[kind]


ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-5, 12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                     st.just(10**12))


@FUZZ
@given(kind=st.sampled_from(["gpt", "maskgit", "pixelcnn"]), n=ANYTHING,
       temperature=ANYTHING, top_k=ANYTHING, top_p=ANYTHING,
       labels=st.sampled_from([None, [0, 1], "x"]))
def test_prior_sample_fuzzed(kind, n, temperature, top_k, top_p, labels):
    prior = _prior(kind)
    assume(not (isinstance(n, int) and n > 12))  # valid but slow; n > 0 is tried below 13
    try:
        codes = prior.sample(n, labels=labels, temperature=temperature, top_k=top_k, top_p=top_p)
    except MvqError:
        return
    assert len(codes) == n and int(codes.primary.max()) < 8 and int(codes.primary.min()) >= 0


def _ids(draw, shape_choices, low=-3, high=11):
    shape = draw(st.sampled_from(shape_choices))
    dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.float32,
                                  torch.bool]))
    values = draw(st.lists(st.integers(low, high), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape))))
    t = torch.tensor(values, dtype=torch.int64).reshape(shape)
    return t.clamp(min=0).to(dtype) if dtype in (torch.uint8, torch.bool) else t.to(dtype)


@st.composite
def codes_strategy(draw):
    primary = _ids(draw, [(0, 2, 2), (3, 2, 2), (3, 2, 3), (3, 4), (3, 2, 2, 1)])
    secondary = None if draw(st.booleans()) else _ids(draw, [(3, 1, 1), (2, 1, 1), (0, 1, 1)])
    mask = draw(st.sampled_from([None, torch.ones(3, 1, 1, 3, dtype=torch.bool),
                                 torch.full((3, 1, 1, 3), 2), torch.ones(2, 1, 1, 3)]))
    return Codes(primary, secondary, mask, {"codebook_sizes": [8, 8]})


@FUZZ
@given(kind=st.sampled_from(["gpt", "maskgit", "pixelcnn"]), codes=codes_strategy(),
       call=st.sampled_from(["loss", "nll"]))
def test_prior_loss_and_nll_fuzzed(kind, codes, call):
    prior = _prior(kind)
    try:
        out = getattr(prior, call)(codes)
    except MvqError:
        return
    values = out[1].values() if call == "loss" else out.values()
    assert all(np.isfinite(float(v)) for v in values)


# ----------------------------------------------------------------------------- tokenizers
TOKENIZERS: dict = {}


@FUZZ
@given(kind=st.sampled_from(["vqvae", "mvqvae"]), train=st.booleans(),
       call=st.sampled_from(["forward", "encode"]),
       shape=st.sampled_from([(2, 1, 28, 28), (1, 1, 28, 28), (0, 1, 28, 28), (2, 3, 28, 28),
                              (2, 1, 14, 14), (1, 28, 28)]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.uint8, torch.int64]),
       scale=st.sampled_from([1.0, 255.0, -1.0, float("nan"), float("inf")]))
def test_tokenizers_fuzzed(kind, train, call, shape, dtype, scale):
    if kind not in TOKENIZERS:
        TOKENIZERS[kind] = build_model(tiny_model_config(type=kind))
    model = TOKENIZERS[kind].train(train)
    x = (torch.rand(shape) * scale).to(dtype) if scale == scale else torch.full(shape, scale)
    try:
        out = model(x) if call == "forward" else model.encode(x)
    except MvqError:
        return
    if call == "forward":
        assert torch.isfinite(out.loss)
    else:
        assert len(out) == shape[0]


# ----------------------------------------------------------------------------- metrics
FEATURES = st.builds(
    lambda n, d, seed, poison, where: _features(n, d, seed, poison, where),
    st.integers(0, 24), st.integers(1, 4), st.integers(0, 10**6),
    st.sampled_from([None, float("nan"), float("inf"), 1e300]), st.integers(0, 100))


def _features(n, d, seed, poison, where):
    a = np.random.default_rng(seed).normal(size=(n, d))
    if poison is not None and a.size:
        a.flat[where % a.size] = poison
    return a


@FUZZ
@given(f1=FEATURES, f2=FEATURES, as_tensor=st.booleans())
def test_fid_and_prd_fuzzed(f1, f2, as_tensor):
    if as_tensor:
        f1, f2 = torch.from_numpy(f1), torch.from_numpy(f2)
    try:
        value = fid_from_features(f1, f2)
        assert np.isfinite(value)
    except MvqError:
        pass
    try:
        precision, recall = prd_from_features(f1, f2, num_clusters=2, num_runs=1, n_init=1,
                                              num_angles=11, enforce_balance=False)
        assert np.isfinite(precision).all() and np.isfinite(recall).all()
    except MvqError:
        pass


@FUZZ
@given(scale=st.sampled_from([255.0, -1.0, 2.0, float("nan")]),
       shape=st.sampled_from([(1, 3, 32, 32), (2, 1, 8, 8), (0, 3, 32, 32)]),
       dtype=st.sampled_from([torch.float32, torch.uint8]))
def test_lpips_refuses_images_outside_the_unit_range(scale, shape, dtype):
    x = torch.rand(shape)
    y = (torch.rand(shape) * scale + (0.5 if scale < 0 else 0)).to(dtype)
    with pytest.raises(MvqError):
        lpips_distance(x, y)


# ----------------------------------------------------------------------------- config
YAML_PIECES = st.sampled_from([
    "train:", "model:", "data:", "loss:", "  steps: 3", "  steps: -3", "  lr: .nan", "  a: &x 1",
    "  b: *x", "  codebook_size: 17", "  codebook_size: 1", "  type: vqvae", "  type: movq",
    "  amp: true", "  batch_size: 1", "  num_masks: 100000000", "- 1", "? [1]", ": 2",
    "  seed: 2024-01-01", "  out_dir: !!binary aGk=", "  betas: [0.5, 0.9]", "  betas: {}",
    "  name: folder", "train: 5", "{", "]", "\t", "  dim: 4", "  dim: 4", "%YAML 1.1", "---",
    "  x: !!python/object:os.system {}", "  x: [" * 50, "  chunk_size: 0"])


@FUZZ
@given(lines=st.lists(YAML_PIECES, max_size=8), raw=st.binary(max_size=40),
       use_raw=st.booleans(), overrides=st.lists(st.sampled_from(POISON_OVERRIDES + [
           "train.steps=5", "model.codebook_size=18", "train.lr=5e-4"]), max_size=3))
def test_config_loading_fuzzed(tmp_path_factory, lines, raw, use_raw, overrides):
    folder = tmp_path_factory.mktemp("yaml")
    path = folder / "c.yaml"
    path.write_bytes(raw if use_raw else "\n".join(lines).encode())
    before = snapshot(folder)
    try:
        cfg = load_config(path, overrides)
        assert isinstance(cfg, Config) and cfg.model.codebook_size >= 2
    except MvqError as err:
        assert "\n" not in str(err)
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- files
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8)


@FUZZ
@given(codes_meta=JSON | st.fixed_dictionaries({"codebook_sizes": JSON}),
       tokens_meta=JSON | st.just("[" * 20000), labels=st.sampled_from(
           [None, [0, 1, 2], [-1, 0, 1], [0, 0, 70000], [0.5, 1.0, 2.0]]),
       primary=st.sampled_from([(3, 2, 2), (3,), (2, 2, 2), (3, 2, 2, 2)]),
       high=st.sampled_from([1, 8, 5000]))
def test_token_files_fuzzed(tmp_path_factory, codes_meta, tokens_meta, labels, primary, high):
    path = tmp_path_factory.mktemp("tok") / "t.safetensors"
    tensors = {"primary": torch.randint(0, high, primary)}
    if labels is not None:
        tensors["labels"] = torch.tensor(labels)
    text = tokens_meta if isinstance(tokens_meta, str) and tokens_meta.startswith("[") \
        else json.dumps(tokens_meta)
    save_file(tensors, str(path), metadata={"mvq_codes": json.dumps(codes_meta),
                                            "mvq_tokens": text})
    before = snapshot(path.parent)
    try:
        codes, lab, meta = load_tokens(path)
        assert isinstance(meta, dict) and len(lab) == len(codes)
    except MvqError as err:
        assert "\n" not in str(err)
    assert snapshot(path.parent) == before


@FUZZ
@given(target=st.sampled_from(["config.json", "manifest.json", "model.safetensors"]),
       content=JSON.map(json.dumps) | st.binary(max_size=64).map(bytes.hex)
       | st.sampled_from(["{" * 3000, "[" * 100000, "\ud800", struct.pack("<Q", 2**60).hex()]))
def test_checkpoint_files_fuzzed(hostile, tmp_path_factory, target, content):
    folder = tmp_path_factory.mktemp("ck") / "checkpoint"
    _write_checkpoint(folder)
    (folder / target).write_bytes(content.encode("utf-8", "surrogatepass"))
    before = snapshot(folder.parent)
    try:
        model, _, _ = load_tokenizer(folder)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    except MvqError as err:
        assert "\n" not in str(err)
    sealed.latest(folder)  # finds or refuses, never raises
    assert snapshot(folder.parent) == before
