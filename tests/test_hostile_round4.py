"""The third hostile round's remaining items (issue 33): precision paths, the layers' argument
checks, the import's cost and side effects, and the even-kernel 'same' convolution."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from mvq.nn.vqvae2 import same_conv

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _seconds(code: str) -> float:
    """Wall seconds of a fresh interpreter running ``code`` (the best of two runs)."""
    best = float("inf")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter()\n"
                              + code + "\nprint(time.perf_counter() - t)"],
                             capture_output=True, text=True, env=ENV, check=True)
        best = min(best, float(out.stdout.split()[-1]))
    return best


def test_import_mvq_imports_no_torchvision_and_patches_nothing():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, mvq\n"
         "mvq.VectorQuantize, mvq.MaskedVectorQuantize, mvq.FSQ, mvq.LFQ, mvq.ResidualVQ\n"
         "shim = sys.modules.get('mvq._compat')\n"
         "print('torchvision' in sys.modules, 'mvq.metrics' in sys.modules,"
         " 'mvq.models' in sys.modules, shim is None or shim._LIBRARY is None)"],
        capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.split() == ["False", "False", "False", "True"]


def test_import_mvq_costs_little_beyond_torch():
    torch_alone = _seconds("import torch")
    with_mvq = _seconds("import torch\nimport mvq\nmvq.VectorQuantize")
    assert with_mvq - torch_alone < 1.5, (torch_alone, with_mvq)


def test_the_lazy_names_still_load():
    import mvq

    assert mvq.load.__module__ == "mvq.pretrained"
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
