"""Fault suite for bad input (issue 13, items 3, 5, 6): every bad config key, command-line value
and API call gets one readable MvqError / error line, never a traceback, a hang or a silently
wrong result; and what is valid but unusual (strings for numbers, 16-bit PNGs, empty batches,
small LPIPS images) gives the right answer."""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_labelled, tiny_model_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from mvq.cli import main
from mvq.configuration.config import (
    RANGES,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from mvq.errors import MvqError
from mvq.losses.vqgan import VQGANLossConfig
from mvq.models import build_model
from mvq.models.movq import MoVQConfig
from mvq.saved.checkpoint import save_checkpoint
from mvq.values.codes import Codes

TINY_MOVQ = dict(image_size=16, channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(8,), z_channels=8, codebook_size=16, code_dim=4,
                 num_channels=4, fourier_frequencies=4, num_groups=4)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `mvq ARGV`, in process."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    return rc, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(rc: int, err: list[str], *fragments: str) -> None:
    assert rc != 0
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "error:" in err[0]
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


# ----------------------------------------------------------------------------- configuration
def test_numbers_written_as_text_become_numbers(tmp_path):
    """YAML reads 5e-4 (no dot) as a string; overrides arrive as text too."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-4\n  steps: 1e3\n  betas: [0.5, 9e-1]\n")
    cfg = load_config(path, ["train.disc_lr=1e-4", "model.decay=0.9"])
    assert cfg.train.lr == 5e-4 and type(cfg.train.lr) is float
    assert cfg.train.steps == 1000 and type(cfg.train.steps) is int
    assert cfg.train.betas == (0.5, 0.9) and type(cfg.train.disc_lr) is float
    assert cfg.model.decay == 0.9


@pytest.mark.parametrize("override, fragment", [
    ("train.batch_size=-3", "train.batch_size must be >= 1, found -3"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.ckpt_every=0", "train.ckpt_every must be >= 1"),
    ("train.val_every=0", "train.val_every"),
    ("train.log_every=-1", "train.log_every"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=-1e-4", "train.lr must be > 0"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.lr=1e999", "train.lr must be a finite number"),
    ("train.lr=fast", "train.lr must be a finite number, found 'fast'"),
    ("train.steps=2.5", "train.steps must be an integer"),
    ("train.amp=maybe", "train.amp is 'maybe': it is replaced by train.precision"),
    ("train.precision=fp8", "train.precision must be one of"),
    ("train.betas=[0.5]", "train.betas must be a list of 2 values"),
    ("train.betas=[0.5, 1.5]", "each value of train.betas must be in [0, 1); train.betas[1] is "
                                "1.5 in [0.5, 1.5]"),
    ("train.ema_decay=1", "train.ema_decay must be in [0, 1), found 1.0"),
    ("model.decay=-0.1", "model.decay"),
    ("model.codebook_size=0", "model.codebook_size must be >= 1"),
    ("model.num_masks=0", "model.num_masks"),
    ("data.train_limit=0", "data.train_limit"),
    ("loss.rec_loss=l3", "loss.rec_loss must be one of l1, l2"),
    ("loss.adaptive_eps=0", "loss.adaptive_eps must be > 0"),
    ("train.steps", "section.key=value"),
    ("train.stepz=5", "unknown config key train.stepz"),
])
def test_bad_config_values_are_one_clear_error(override, fragment):
    with pytest.raises(MvqError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_element_of_a_list_value_is_named():
    with pytest.raises(MvqError) as err:
        load_config("fmnist_f28_k16_quick", ["model.quantizer=fsq", "model.levels=[8, 0, 5]"])
    assert str(err.value).startswith("each value of model.levels must be >= 3; "
                                     "model.levels[1] is 0 in [8, 0, 5]")


def test_movq_config_keys_are_typed_and_ranged():
    movq = ["model.type=movq"]
    cfg = load_config(None, movq + ["model.ch_mult=[1, 2]", "model.fourier_sigma=2"])
    assert cfg.model.ch_mult == (1, 2) and type(cfg.model.fourier_sigma) is float
    for bad, fragment in [("model.ch_mult=[1, 0]", "model.ch_mult[1] is 0 in [1, 0]"),
                          ("model.ch_mult=[]", "non-empty list"),
                          ("model.dropout=1", "model.dropout"),
                          ("model.fourier_sigma=0", "model.fourier_sigma must be > 0")]:
        with pytest.raises(MvqError, match=fragment.replace("[", r"\[")):
            load_config(None, movq + [bad])


def test_a_section_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(MvqError, match="section 'train' must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("cls", [ModelConfig, MoVQConfig, DataConfig, TrainConfig,
                                 VQGANLossConfig])
def test_every_numeric_and_choice_key_has_a_range(cls):
    """The range table covers every int/float key (seeds explicitly unbounded), and every
    default lies inside its range."""
    hints = typing.get_type_hints(cls)
    table = RANGES[cls.__name__]
    for f in dataclasses.fields(cls):
        kinds = {hints[f.name], *typing.get_args(hints[f.name])}
        kinds |= {a for k in kinds for a in typing.get_args(k)}
        if {int, float} & kinds:
            assert f.name in table, f"{cls.__name__}.{f.name} has no range"
        if f.name in table and getattr(cls(), f.name) is not None:
            values = getattr(cls(), f.name)
            values = values if isinstance(values, tuple) else (values,)
            assert all(table[f.name].admits(v) for v in values), f.name


def _train_args(tmp_path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "data.name=shapes", "data.train_limit=8", "data.val_limit=4",
            "train.steps=1", "train.batch_size=4", "model.hidden=8", "model.res_blocks=1",
            "model.res_channels=8", "model.num_masks=4", f"train.out_dir={tmp_path / 'run'}",
            *extra]


@pytest.mark.parametrize("extra, fragment", [
    (["train.batch_size=-3"], "train.batch_size must be >= 1"),  # used to hang
    (["train.steps=0"], "train.steps must be >= 1"),  # used to report a checkpoint it never wrote
    (["train.ckpt_every=0"], "train.ckpt_every"),  # used to crash after training started
    (["train.device=tpu"], "device"),
    (["data.name=mnist"], "unknown data set"),
])
def test_cli_train_refuses_bad_config_before_writing(tmp_path, capsys, extra, fragment):
    rc, err = run_cli(_train_args(tmp_path, *extra), capsys)
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_train_names_a_missing_cuda_device(tmp_path, capsys):
    rc, err = run_cli(_train_args(tmp_path, "train.device=cuda"), capsys)
    assert_one_line_error(rc, err, "no usable CUDA GPU")  # was an AssertionError
    assert not (tmp_path / "run").exists()


def test_cli_train_refuses_an_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = _train_args(tmp_path) + [f"train.out_dir={blocker / 'run'}"]
    rc, err = run_cli(args, capsys)
    assert_one_line_error(rc, err, "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_configs_built_in_python_get_the_same_checks(tmp_path):
    from mvq.configuration.config import check_ready
    from mvq.train import train

    with pytest.raises(MvqError, match="model.codebook_size must be >= 1"):
        build_model(tiny_model_config(codebook_size=0))
    with pytest.raises(MvqError, match="model.ch_mult must be >= 1"):
        build_model(MoVQConfig(**{**TINY_MOVQ, "ch_mult": (1, 0)}))
    cfg = Config(model=tiny_model_config(), data=DataConfig(name="shapes"),
                 train=TrainConfig(batch_size=-3, out_dir=str(tmp_path / "run")))
    with pytest.raises(MvqError, match="train.batch_size must be >= 1"):
        check_ready(cfg)
    with pytest.raises(MvqError, match="train.batch_size must be >= 1"):
        train(cfg, progress=False)  # refused at once: no hang, nothing written
    assert not (tmp_path / "run").exists()


def test_check_writable_probes_without_leaving_files(tmp_path):
    from mvq.configuration.config import check_writable

    check_writable(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []  # nothing created, probe file removed


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """An untrained tiny mvqvae checkpoint on the shapes set (28 px, 1 channel)."""
    cfg = Config(model=tiny_model_config(), data=DataConfig(name="shapes"))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return save_checkpoint(path, build_model(cfg.model), cfg, step=0)


@pytest.mark.parametrize("argv, fragment", [
    (["sample", "--top-k", "0"], "argument --top-k: expected an integer >= 1, found 0"),
    (["sample", "--temperature", "nan"], "argument --temperature: expected a finite number"),
    (["sample", "--temperature", "0"], "argument --temperature: expected a finite number > 0"),
    (["sample", "--temperature", "-1"], "argument --temperature"),
    (["sample", "--scale", "0"], "argument --scale"),
    (["sample", "--n", "0"], "argument --n"),
    (["sample", "--n", "many"], "expected an integer, found 'many'"),
    (["evaluate", "--top-k", "0"], "argument --top-k"),
    (["evaluate", "--temperature", "inf"], "argument --temperature"),
    (["evaluate", "--n", "-5"], "argument --n"),
    (["evaluate", "--batch-size", "0"], "argument --batch-size"),
    (["reconstruct", "--n", "0"], "argument --n"),
    (["reconstruct", "--scale", "0"], "argument --scale"),
    (["encode-dataset", "--limit", "0"], "argument --limit"),
    (["encode-dataset", "--batch-size", "0"], "argument --batch-size"),
    (["train-prior", "tok.safetensors", "--steps", "0"], "argument --steps"),
    (["train-prior", "tok.safetensors", "--batch-size", "0"], "argument --batch-size"),
    (["train-prior", "tok.safetensors", "--lr", "-1"],
     "argument --lr: expected a finite number > 0"),
    (["train-prior", "tok.safetensors", "--val-fraction", "2"], "argument --val-fraction"),
    (["train-prior", "tok.safetensors", "--val-fraction", "0"], "argument --val-fraction"),
    (["demo", "--steps", "0"], "argument --steps"),
    (["--threads", "0", "compare", "x.json"], "argument --threads"),
    (["evaluate", "--device", "gpu"], "argument --device: unknown device 'gpu'"),
    (["encode-dataset", "--device", "cuda:99"], "argument --device"),
])
def test_bad_arguments_are_one_line_and_nonzero(tmp_path, capsys, argv, fragment):
    required = {"sample": ["--tokenizer", "t", "--prior", "p"], "evaluate": ["--checkpoint", "c"],
                "reconstruct": ["--checkpoint", "c"], "encode-dataset": ["--checkpoint", "c"]}
    rc, err = run_cli(argv + required.get(argv[0], []), capsys)
    assert rc == 2
    assert_one_line_error(rc, err, fragment)


@pytest.mark.parametrize("temperature, top_k, fragment", [
    (float("nan"), None, "temperature must be a finite number >= 0"),
    (-1.0, None, "temperature"),
    (1.0, 0, "top_k must be None or an integer >= 1, got 0"),
    (1.0, 2.5, "top_k"),
])
def test_sampling_api_refuses_bad_settings(tmp_path, temperature, top_k, fragment):
    from mvq.inference.sample import Sampling, sample_images
    from mvq.values.decoding import Decoding

    with pytest.raises(MvqError, match=fragment):  # checked before any checkpoint is read
        sample_images(tmp_path / "no-tokenizer", tmp_path / "no-prior",
                      sampling=Sampling(4, Decoding(temperature=temperature, top_k=top_k)))


def test_sample_refuses_a_png_no_viewer_opens(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "s.png"
    rc, err = run_cli(["sample", "--tokenizer", str(tokenizer_dir), "--prior",
                       str(tmp_path / "no-prior"), "--n", "100000", "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "at most 16384 px a side", "lower --n or --scale")
    assert not out.exists()


def test_reconstruct_refuses_a_png_no_viewer_opens(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "r.png"
    rc, err = run_cli(["reconstruct", "--checkpoint", str(tokenizer_dir), "--n", "200",
                       "--scale", "3", "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "px a side")  # 200 x 30 px x 3 > 16384
    assert not out.exists()
    rc, _ = run_cli(["reconstruct", "--checkpoint", str(tokenizer_dir), "--n", "4",
                     "--out", str(out)], capsys)
    assert rc == 0 and Image.open(out).width > 4 * 30 * 3  # a labelled figure at scale 3
    assert_labelled(out)


# ----------------------------------------------------------------------------- threads
def test_threads_option_and_default_policy(monkeypatch, capsys):
    from mvq.runtime import threads

    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == (1, "--threads")
        assert torch.get_num_threads() == 1
        assert threads.default_threads({"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
        monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
        monkeypatch.setattr(threads, "running_mvq_processes", lambda: 1)
        assert threads.default_threads({})[0] == 4  # alone: torch's default
        monkeypatch.setattr(threads, "running_mvq_processes", lambda: 3)
        assert threads.default_threads({})[0] == 1  # 4 cores among 3 runs
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, expected", [
    (["python3", "-m", "mvq", "train"], True),
    (["/venv/bin/python", "/venv/bin/mvq", "demo"], True),
    (["/venv/bin/mvq", "train"], True),
    (["python", "-m", "torch.distributed.run", "-m", "mvq", "train"], False),  # the launcher
    (["python", "-m", "pytest", "tests/"], False),
    ([], False),
])
def test_mvq_processes_are_recognised(argv, expected):
    from mvq.runtime.threads import _is_mvq

    assert _is_mvq(argv) is expected


# ----------------------------------------------------------------------------- public API
MODEL_KINDS = ["vqvae", "hvqvae", "mvqvae", "movq"]
_MODELS: dict[str, torch.nn.Module] = {}


def tiny(kind: str):
    """One tiny model per kind, built once (hypothesis reuses them across examples)."""
    if kind not in _MODELS:
        torch.manual_seed(0)
        cfg = MoVQConfig(**TINY_MOVQ) if kind == "movq" else tiny_model_config(type=kind)
        _MODELS[kind] = build_model(cfg).eval()
    return _MODELS[kind]


def _images(model, b: int = 2) -> torch.Tensor:
    s, c = model.cfg.image_size, model.cfg.channels
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_encode_refuses_what_is_not_an_image_batch(kind):
    model = tiny(kind)
    x = _images(model)
    bad = {"divide 0..255 pixels by 255": [(x * 255).to(torch.uint8), x * 255],
           "NaN or infinite": [x.masked_fill(x > 0.5, float("nan")),
                               x.masked_fill(x > 0.5, math.inf)],
           "clamp them": [x - 0.5],
           "resize the images": [x[:, :, :-1], x[0], torch.cat([x, x], 1)],
           "as a torch.Tensor": [x.numpy()],
           "convert with .float()": [x > 0.5]}
    for fragment, inputs in bad.items():
        for t in inputs:
            with pytest.raises(MvqError, match=fragment.replace(".", r"\.")) as err:
                model.encode(t)
            assert f"images (B, {model.cfg.channels}, {model.cfg.image_size}," in str(err.value)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_encode_accepts_any_float_dtype_and_empty_batches(kind):
    model = tiny(kind)
    x = _images(model, 3)
    codes = model.encode(x)
    for other in (x.double(), x.half().float()):
        same = model.encode(other)
        assert torch.equal(model.decode(same), model.decode(model.encode(other.float())))
    assert torch.equal(model.encode(x.double()).primary, codes.primary)
    empty = model.encode(x[:0])
    assert len(empty) == 0 and empty.meta == codes.meta
    for name in ("primary", "secondary", "mask"):
        full, none = getattr(codes, name), getattr(empty, name)
        assert (full is None) == (none is None)
        if full is not None:
            assert none.shape == (0, *full.shape[1:]) and none.dtype == full.dtype
    assert model.decode(empty).shape == (0, *x.shape[1:])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_decode_refuses_codes_that_do_not_fit(kind):
    model = tiny(kind)
    codes = model.encode(_images(model))
    k = model.code_layout.primary_codes
    bad = [
        (Codes(codes.primary.float(), codes.secondary, codes.mask), "integer ids"),
        (Codes(codes.primary.bool(), codes.secondary, codes.mask), "integer ids"),
        (Codes(codes.primary * 0 + k, codes.secondary, codes.mask), f"found ids in [{k}, {k}]"),
        (Codes(codes.primary - codes.primary - 1, codes.secondary, codes.mask), "found ids in [-1"),
        (Codes(codes.primary[..., None], codes.secondary, codes.mask), "another model"),
        (codes.primary, "decode expects mvq.Codes"),
    ]
    if codes.secondary is not None:
        bad.append((Codes(codes.primary, None, codes.mask), "need secondary"))
        bad.append((Codes(codes.primary, codes.secondary[:1], codes.mask), "one batch size"))
    else:
        bad.append((Codes(codes.primary, codes.primary), "have no secondary"))
    if codes.mask is not None:
        bad.append((Codes(codes.primary, codes.secondary, codes.mask.long() * 2), "0 and 1"))
        bad.append((Codes(codes.primary, codes.secondary, codes.mask[..., :-1]), "mask bits"))
    for c, fragment in bad:
        with pytest.raises(MvqError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
            model.decode(c)


def test_decode_refuses_codes_of_another_config():
    """Codes of an mvqvae of another config fit this one's layout but are not its codes: their
    meta's config hash says so (docs/python-api.md); force=True or codes without meta decode."""
    model = tiny("mvqvae")
    torch.manual_seed(0)
    other = build_model(tiny_model_config(hidden=24)).eval()
    codes = other.encode(_images(other))
    assert codes.meta["config_hash"] != model._meta()["config_hash"]
    with pytest.raises(MvqError) as err:
        model.decode(codes)
    for fragment in (codes.meta["config_hash"], model._meta()["config_hash"], "mvqvae",
                     "tokenizer that encoded them", "force=True"):
        assert fragment in str(err.value)
    forced = model.decode(codes, force=True)
    bare = Codes(codes.primary, codes.secondary, codes.mask)
    assert torch.equal(forced, model.decode(bare))
    assert torch.equal(other.decode(codes), other.decode(bare))


def test_decode_takes_01_masks_and_int32_ids_as_the_same_codes():
    model = tiny("mvqvae")
    codes = model.encode(_images(model))
    ref = model.decode(codes)
    for mask in (codes.mask.to(torch.uint8), codes.mask.float(), codes.mask.long()):
        same = Codes(codes.primary.int(), codes.secondary.short(), mask, codes.meta)
        assert torch.equal(model.decode(same), ref)


# hypothesis: random shapes, dtypes and values give results or MvqError, nothing else
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64,
          torch.bool]


@st.composite
def image_batches(draw):
    kind = draw(st.sampled_from(MODEL_KINDS))
    model = tiny(kind)
    s, c = model.cfg.image_size, model.cfg.channels
    shape = (draw(st.integers(0, 3)), c, s, s)
    if draw(st.booleans()):  # half the batches get a wrong shape
        shape = (shape[0], draw(st.sampled_from([c, 1, 3, 4])),
                 draw(st.sampled_from([s, s - 1, 2 * s])), draw(st.sampled_from([s, 7])))
        shape = shape[: draw(st.integers(0, 4))]
    values = draw(st.sampled_from(["unit"] * 4 + ["pixels", "signed", "nan", "inf"]))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    x = {"unit": x, "pixels": x * 255, "signed": x * 2 - 1,
         "nan": x.masked_fill(x > 0.7, float("nan")),
         "inf": x.masked_fill(x > 0.7, -math.inf)}[values]
    return model, x.to(draw(st.sampled_from(DTYPES)))


@settings(max_examples=50, deadline=5000, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(image_batches())
def test_encode_gives_codes_or_mvqerror(batch):
    model, x = batch
    ok_input = (x.dim() == 4 and tuple(x.shape[1:]) == (model.cfg.channels, model.cfg.image_size,
                                                        model.cfg.image_size)
                and x.is_floating_point() and bool(torch.isfinite(x).all())
                and (x.numel() == 0 or (float(x.min()) >= 0 and float(x.max()) <= 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            codes = model.encode(x)
        except MvqError:
            assert not ok_input
            event("MvqError")
            return
    assert ok_input, (x.shape, x.dtype)
    event("codes")
    assert len(codes) == len(x) and codes.primary.dtype == torch.int64


@st.composite
def code_batches(draw):
    model = tiny(draw(st.sampled_from(MODEL_KINDS)))
    layout = model.code_layout
    b = draw(st.integers(0, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))

    def ids(shape, k):
        hi, lo, dtype = k, 0, draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
        fault = draw(st.sampled_from([None] * 3 + ["shape", "range", "dtype"]))
        if fault == "shape":
            shape = draw(st.sampled_from([shape[:-1], (*shape, 2), tuple(d + 1 for d in shape)]))
        elif fault == "range":
            hi, lo = draw(st.sampled_from([(k + 3, 0), (k, -2)]))
        elif fault == "dtype":
            dtype = draw(st.sampled_from([torch.float32, torch.bool]))
        return torch.randint(lo, hi, (b, *shape), generator=gen).to(dtype)

    primary = ids(layout.primary, layout.primary_codes)
    secondary = mask = None
    if layout.secondary is not None and draw(st.integers(0, 9)):
        secondary = ids(layout.secondary, layout.secondary_codes)
    if layout.mask is not None and draw(st.integers(0, 9)):
        mask = torch.randint(0, draw(st.sampled_from([2, 3])), (b, *layout.mask), generator=gen)
        mask = mask.to(draw(st.sampled_from([torch.bool, torch.uint8, torch.float32])))
    return model, Codes(primary, secondary, mask)


def _fits(t, shape, k) -> bool:
    return (t.dtype not in (torch.bool, torch.float32) and tuple(t.shape[1:]) == shape
            and (t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < k)))


@settings(max_examples=50, deadline=5000, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(code_batches())
def test_decode_gives_images_or_mvqerror(batch):
    model, codes = batch
    layout = model.code_layout
    ok = _fits(codes.primary, layout.primary, layout.primary_codes)
    if layout.secondary is not None:
        ok &= codes.secondary is not None and _fits(codes.secondary, layout.secondary,
                                                    layout.secondary_codes)
    if layout.mask is not None:
        ok &= codes.mask is not None and bool(((codes.mask == 0) | (codes.mask == 1)).all())
    try:
        with torch.no_grad():
            images = model.decode(codes)
    except MvqError:
        assert not ok
        event("MvqError")
        return
    assert ok
    event("images")
    s, c = model.cfg.image_size, model.cfg.channels
    assert images.shape == (len(codes), c, s, s) and bool(torch.isfinite(images).all())


# ----------------------------------------------------------------------------- LPIPS, images
def test_lpips_distance_resizes_small_images_as_evaluate_does():
    from mvq.metrics import LPIPS, lpips_distance
    from mvq.metrics.perceptual import lpips_resize

    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = x.flip(-1)
    with pytest.warns(UserWarning, match="28x28 -> 32x32"):
        d = lpips_distance(x, y)
    xr, note = lpips_resize(x)
    assert xr.shape[-2:] == (32, 32) and "AlexNet" in note
    ref = LPIPS("alex")(xr, lpips_resize(y)[0])
    torch.testing.assert_close(d, ref)
    with pytest.raises(MvqError, match="at least 31 px"):
        LPIPS("alex")(x, y)  # the module itself refuses clearly instead of torch's error


def _ramp(side: int = 40) -> np.ndarray:
    return np.tile(np.linspace(0, 1, side, dtype=np.float32), (side, 1))


def test_every_pil_mode_loads_with_its_own_range(tmp_path):
    from mvq.data.folder import load_image

    ramp = _ramp()
    gray = Image.fromarray((ramp * 255).round().astype(np.uint8))
    files = {
        "i16.png": Image.fromarray((ramp * 65535).round().astype(np.uint16)),  # 'I;16'
        "l.png": gray,
        "p.png": gray.convert("P"),
        "cmyk.jpg": gray.convert("RGB").convert("CMYK"),
        "la.png": Image.merge("LA", [gray, Image.new("L", gray.size, 255)]),
        "rgba.png": Image.merge("RGBA", [gray, gray, gray, Image.new("L", gray.size, 255)]),
    }
    ref = load_image(_save(tmp_path, "l.png", gray), 20, 1)
    for name, im in files.items():
        path = _save(tmp_path, name, im)
        for channels in (1, 3):
            x = load_image(path, 20, channels)
            assert x.shape == (channels, 20, 20) and x.dtype == torch.float32
            tol = 0.02 if name.endswith(".jpg") else 1 / 255 + 1e-6
            assert (x - ref).abs().max() <= tol, (name, channels, float((x - ref).abs().max()))
    assert Image.open(tmp_path / "i16.png").mode == "I;16"


def test_transparent_pixels_load_as_white_and_16bit_is_not_clipped(tmp_path):
    from mvq.data.folder import load_image

    black = Image.new("L", (8, 8), 0)
    clear = Image.merge("RGBA", [black, black, black, Image.new("L", (8, 8), 0)])
    assert torch.equal(load_image(_save(tmp_path, "clear.png", clear), 8, 3), torch.ones(3, 8, 8))
    dark = Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16))  # 1000 / 65535: nearly black
    x = load_image(_save(tmp_path, "dark16.png", dark), 8, 1)
    torch.testing.assert_close(x, torch.full((1, 8, 8), 1000 / 65535))


def _save(folder, name: str, im: Image.Image) -> str:
    path = folder / name
    im.save(path)
    return str(path)
