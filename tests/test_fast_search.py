"""The MVQ mask search's fast paths against the reference (issue 30): the table search and its
grouped scoring give the chunked search's winners and the naive form's gradients; the table is
kept at inference until the weights change; a training step reads nothing on the host between
log steps (counted under a dispatch mode, on the accelerators' read-free paths)."""

from __future__ import annotations

import sys
import traceback
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model_config
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mvq
from mvq.configuration.config import Config, DataConfig, TrainConfig, load_config
from mvq.errors import MvqError
from mvq.quantize import MaskedVectorQuantize
from mvq.quantize.masked import table_argmin
from mvq.quantize.pointwise import Pointwise
from mvq.runtime.devices import sync_free
from mvq.train import loop, train


def _spatial_mq(search: str, j: int = 9, dtype=torch.float64, k2: int = 5):
    """A tokenizer-shaped quantizer: one secondary token per instance, f onto a 2x2 grid."""
    torch.manual_seed(3)
    f = nn.Sequential(nn.Conv2d(4, 12, 1), nn.Tanh(), nn.ConvTranspose2d(12, 3, 2, stride=2))
    # y2 is given to `quantize`: the secondary encoder is never run
    mq = MaskedVectorQuantize(3, 6, dim2=4, codebook_size2=k2, secondary_encoder=nn.Identity(),
                              f=f, channel_first=True, ema=False, restart_dead=False,
                              num_masks=j, chunk_size=4, search=search)
    return mq.to(dtype)


def _brute(mq, e, e2, y, bank):
    d = torch.stack([((e + mq.f(e2 * m.to(e2.dtype)) - y) ** 2).flatten(1).sum(1)
                     for m in bank], 1)
    return d.argmin(1)


@pytest.mark.parametrize("search", ["table", "auto"])
def test_table_search_winners_equal_brute_force(search):
    mq = _spatial_mq(search)
    y = torch.randn(16, 3, 2, 2, dtype=torch.float64)
    ids2 = torch.randint(0, 5, (16, 1, 1))
    e = mq.primary.lookup(torch.randint(0, 6, (16, 2, 2)))
    e2 = mq.secondary.lookup(ids2)
    bank = torch.rand(9, 4, 1, 1) < 0.5
    want = bank[_brute(mq, e, e2, y, bank)]
    assert torch.equal(mq.best_masks(e, e2, y, bank, ids2), want)
    assert torch.equal(mq.best_masks(e, e2, y, bank), want)  # without ids: the chunked search


def test_table_search_gradients_equal_the_naive_form():
    """Per-batch masks through the table: same winners and gradients as every hypothesis with
    autograd and zero weight on the losers (eq. 6)."""
    y = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    y2 = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    bank = torch.rand(9, 4, 1, 1) < 0.5
    grads, masks = [], []
    for search, naive in (("table", False), ("chunked", True)):
        mq = _spatial_mq(search)
        mq.naive = naive
        yy, yy2 = y.clone().requires_grad_(), y2.clone().requires_grad_()
        out = mq.quantize(yy, masks=bank, y2=yy2)
        (out.mhd_loss + (out.y_hat ** 3).sum() + out.primary.loss + out.secondary.loss).backward()
        grads.append([yy.grad, yy2.grad] + [p.grad for p in mq.parameters()])
        masks.append(out.mask)
    assert torch.equal(*masks)
    for a, b in zip(*grads):
        assert a is not None and torch.allclose(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("sampling", ["instance", "batch"])
def test_layer_paths_agree_in_training_and_at_inference(sampling):
    """The drop-in layer (per-position instances): table and chunked search, fp64, identical
    masks, outputs and gradients, whichever way the training masks are drawn."""
    got = {}
    for search in ("chunked", "table"):
        torch.manual_seed(0)
        vq = mvq.MaskedVectorQuantize(8, 12, dim2=6, num_masks=20, mask_sampling=sampling,
                                      search=search).double()
        x = torch.randn(4, 10, 8, dtype=torch.float64, requires_grad=True)
        q, _, loss, mask = vq(x)
        (q.square().mean() + loss).backward()
        vq.eval()
        with torch.no_grad():
            eval_mask = vq(x.detach())[3]
        got[search] = (mask, q, x.grad, eval_mask)
    for a, b in zip(got["chunked"], got["table"]):
        assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-12)


def test_fp32_differences_are_ties():
    """In fp32 the table's ||T||^2 - 2 T.t and the chunked search's ||T - t||^2 round
    differently: a different winner is a tie (distances equal to fp32 rounding)."""
    torch.manual_seed(0)
    vq = mvq.MaskedVectorQuantize(16, 32, num_masks=64, mask_sampling="batch", search="table",
                                  restart_dead=False, decay=1.0)
    x = torch.randn(8, 49, 16)
    torch.manual_seed(1)
    _, (ids, ids2), _, mask = vq(x)
    torch.manual_seed(1)
    vq.search = "chunked"
    ref = vq(x)[3]
    ids, ids2, x = ids.reshape(-1), ids2.reshape(-1), x.reshape(-1, 16)
    for n in (mask.reshape(-1, 16) != ref.reshape(-1, 16)).any(1).nonzero()[:, 0]:
        e, e2 = vq.primary.embedding[ids[n]], vq.secondary.embedding[ids2[n]]
        d = [float(((e + vq.f((e2 * m.reshape(-1).float())[None, :, None, None]).flatten() - x[n])
                    ** 2).sum()) for m in (mask.reshape(-1, 16)[n], ref.reshape(-1, 16)[n])]
        assert d[0] == pytest.approx(d[1], rel=1e-5)


@pytest.mark.parametrize("ids", [
    torch.randint(0, 7, (40,)),  # even usage: one padded batched GEMM
    torch.tensor([2] * 37 + [0, 5, 6]),  # skewed: one GEMM per id
    torch.tensor([4]),
])
def test_table_argmin_every_path_equals_brute_force(ids):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(7, 11, 5, generator=g, dtype=torch.float64)
    target = torch.randn(len(ids), 5, generator=g, dtype=torch.float64)
    want = ((table[ids] - target[:, None]) ** 2).sum(2).argmin(1)
    norms = table.pow(2).sum(2)
    assert torch.equal(table_argmin(table, norms, ids, target), want)
    with sync_free():  # the accelerators' path: each instance's row gathered
        assert torch.equal(table_argmin(table, norms, ids, target), want)


def test_inference_table_is_kept_until_the_weights_change():
    vq = mvq.MaskedVectorQuantize(8, 12, dim2=6, num_masks=20).eval()
    calls = []
    vq.f.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        first = vq(x)[3]
        vq(x)
    assert calls == [12 * 20, 30, 30]  # one table of K' x J, then f on the winners only
    with torch.no_grad():
        vq.f[0].weight.mul_(2)  # an in-place change of f's weights: a new table
        changed = vq(x)[3]
    assert calls[3] == 12 * 20
    vq.train()
    vq.eval()  # training may change the codebooks (EMA writes no version): a new table
    with torch.no_grad():
        vq(x)
    assert calls[5] == 12 * 20
    ref = mvq.MaskedVectorQuantize(8, 12, dim2=6, num_masks=20, search="chunked").eval()
    ref.load_state_dict(vq.state_dict())
    with torch.no_grad():
        assert torch.equal(ref(x)[3], changed)
    assert first.shape == changed.shape


def test_mask_sampling_draws_and_checks():
    vq = mvq.MaskedVectorQuantize(8, 12, dim2=6, num_masks=20, mask_sampling="batch")
    assert vq.training_masks(5, torch.zeros(1, 6, 1, 1)).shape == (20, 6, 1, 1)
    vq.mask_sampling = "instance"
    assert vq.training_masks(5, torch.zeros(1, 6, 1, 1)).shape == (5, 20, 6, 1, 1)
    with pytest.raises(MvqError, match="mask_sampling"):
        MaskedVectorQuantize(2, 4, mask_sampling="image")
    with pytest.raises(MvqError, match="train.mask_sampling"):
        load_config("fmnist_f28_k16_quick", ["train.mask_sampling=images"])


def test_pointwise_equals_a_1x1_convolution():
    conv = nn.Conv2d(5, 7, 1)
    fast = Pointwise(5, 7)
    fast.load_state_dict(conv.state_dict())
    for shape in ((3, 5, 1, 1), (2, 5, 4, 3)):
        x = torch.randn(*shape)
        assert torch.allclose(fast(x), conv(x), atol=1e-6)


def test_training_sets_the_mask_sampling_of_the_tokenizer(tmp_path):
    cfg = Config(model=tiny_model_config(num_masks=4),
                 data=DataConfig(name="shapes", train_limit=16, val_limit=4),
                 train=TrainConfig(steps=1, batch_size=4, out_dir=str(tmp_path),
                                   mask_sampling="batch"))
    trainee = loop.TokenizerTrainee(cfg, SimpleNamespace(rank=0, world=1),
                                    torch.device("cpu"), None)
    layers = [m for m in trainee.model.modules() if isinstance(m, MaskedVectorQuantize)]
    assert layers and all(m.mask_sampling == "batch" for m in layers)


# ---------------------------------------------------------------- host reads of a training step
class _HostReads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``: a device
    sync on a GPU) with the phase of training it happened in."""

    def __init__(self, phase: list) -> None:
        super().__init__()
        self.phase, self.reads = phase, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append((tuple(self.phase), id(args[0]),
                               "".join(traceback.format_stack(limit=8))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model,sampling", [("mvqvae", "instance"), ("mvqvae", "batch"),
                                            ("hvqvae", "instance"), ("mvqgan", "instance")])
def test_no_host_read_inside_a_training_step_between_log_steps(tmp_path, monkeypatch, model,
                                                                sampling):
    """Under ``sync_free`` (the read-free paths a GPU takes), a training step reads nothing on
    the host, except: the first batch's pixels (the door), the data set's own items (host data,
    before the batch goes to the device) and the optimizer's step counters (torch keeps them on
    the host by design). The engine reads only at its log / validation / checkpoint steps."""
    phase, ignore = ["setup", -1], set()
    step, batch = loop.TokenizerTrainee.step, loop.TokenizerTrainee.batch

    def counted_step(self, n, indices):
        phase[:] = ["step", n]
        out = step(self, n, indices)
        for state in self.optimizer.state.values():
            ignore.add(id(state["step"]))
        if self.gan is not None:
            for state in self.gan.optimizer.state.values():
                ignore.add(id(state["step"]))
        phase[:] = ["after", n]
        return out

    def host_batch(self, indices):
        saved = list(phase)
        phase[:] = ["data", saved[1]]
        try:
            return batch(self, indices)
        finally:
            phase[:] = saved

    monkeypatch.setattr(loop.TokenizerTrainee, "step", counted_step)
    monkeypatch.setattr(loop.TokenizerTrainee, "batch", host_batch)
    extra = {"type": model, "num_masks": 4}
    cfg = Config(model=tiny_model_config(**extra),
                 data=DataConfig(name="shapes", train_limit=64, val_limit=4),
                 train=TrainConfig(steps=8, batch_size=8, val_every=4, ckpt_every=8, log_every=4,
                                   grid_images=2, out_dir=str(tmp_path), mask_sampling=sampling))
    if model == "mvqgan":
        cfg = Config(model=cfg.model, data=cfg.data, train=cfg.train,
                     loss=type(cfg.loss)(disc_start=2, disc_channels=8))
    counter = _HostReads(phase)
    with sync_free(), counter:
        train(cfg, progress=False)
    reads = [(p, where) for p, tensor, where in counter.reads if tensor not in ignore]
    steps_read = {p[1] for p, _ in reads if p[0] == "step"}
    assert steps_read <= {0}, [where for p, where in reads if p[0] == "step" and p[1]][:1]
    after = {p[1] + 1 for p, _ in reads if p[0] == "after"}
    assert after and after <= {4, 8}, sorted(after)  # the log and checkpoint steps only
    assert sys.modules["mvq"]  # the package is the one under test


# ---------------------------------------------------------------- non-finite batches
def test_a_nonfinite_training_batch_never_reaches_the_codebook():
    vq = mvq.VectorQuantize(4, 8)
    x = torch.randn(2, 6, 4)
    vq(x)
    before = vq.embedding.detach().clone()
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(MvqError, match="NaN or infinite"):  # the CPU reads at once
        vq(bad)
    assert torch.equal(vq.embedding, before)
    with sync_free():  # a GPU's path: the update is skipped and counted, raised at a check
        vq(bad)
        assert torch.equal(vq.embedding, before) and int(vq.nonfinite_batches) == 1
        with pytest.raises(MvqError, match="1 training batch"):
            vq.check_finite()
    vq.check_finite()  # counted once
    vq.eval()
    with pytest.raises(MvqError, match="NaN or infinite"):
        vq(bad)
