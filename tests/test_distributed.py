"""Data-parallel training (torchrun, Gloo on CPU) against one process on the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from mvq.errors import MvqError
from mvq.quantize import VectorQuantize
from mvq.runtime import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quantizer_rank(rank: int, world: int, port: int, z: torch.Tensor, out: str,
                    kw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial codebook everywhere, as DDP starts
        vq = VectorQuantize(4, 8, channel_first=True, **kw).train()
        torch.manual_seed(100 + rank)  # different draws on each rank: only rank 0's may be used
        with distributed.synced():
            for _ in range(3):  # each rank sees its own images of the batch
                vq.quantize(z[rank::world])
        save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, f"{out}/rank{rank}.st")
    finally:
        dist.destroy_process_group()


def test_ema_codebook_learns_from_the_global_batch(tmp_path):
    """Two ranks with half a batch each end with the codebook one process gets from all of it."""
    z = torch.randn(6, 4, 3, 3)
    kw = dict(ema=True, restart_dead=False)
    mp.spawn(_quantizer_rank, args=(2, _free_port(), z, str(tmp_path), kw), nprocs=2, join=True)
    torch.manual_seed(0)
    ref = VectorQuantize(4, 8, channel_first=True, **kw).train()
    for _ in range(3):
        ref.quantize(z)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank{rank}.st"))
        for name, want in ref.state_dict().items():
            torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)


def test_restart_and_kmeans_take_rank_0s_draw(tmp_path):
    """k-means initialisation and dead-code restarts draw at random: every rank must end with
    the same codebook (rank 0's draws), though each rank drew its own."""
    z = torch.randn(8, 4, 3, 3) * torch.tensor([3.0, 1.0, 0.1, 0.1]).view(1, 4, 1, 1)
    kw = dict(ema=True, kmeans_init=True, restart_dead=True, dead_threshold=1.0, decay=0.5)
    mp.spawn(_quantizer_rank, args=(2, _free_port(), z, str(tmp_path), kw), nprocs=2, join=True)
    a, b = (load_file(str(tmp_path / f"rank{r}.st")) for r in (0, 1))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    torch.manual_seed(0)  # what rank 1 would hold had it kept its own draws
    alone = VectorQuantize(4, 8, channel_first=True, **kw).train()
    torch.manual_seed(101)
    for _ in range(3):
        alone.quantize(z[1::2])
    assert not torch.equal(alone.embedding, b["embedding"])


MOVQ = ["model.type=movq", "model.image_size=32", "model.channels=1", "model.ch=8",
        "model.ch_mult=[1,2]", "model.attn_resolutions=[16]", "model.z_channels=8",
        "model.codebook_size=16", "model.code_dim=4", "model.num_channels=4", "model.num_groups=4",
        "model.fourier_frequencies=4", "model.restart_dead=false", "data.name=shapes",
        "data.train_limit=32", "data.val_limit=8", "train.steps=1", "train.batch_size=8",
        "train.grid_images=2", "loss.disc_channels=8", "loss.disc_norm=none", "loss.disc_start=0"]


def test_torchrun_matches_one_process_on_the_global_batch(tmp_path):
    """A GAN step (tokenizer, adaptive weight, discriminator) under torchrun with 2 ranks:
    the same weights and Adam moments (which are the gradients) as one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "mvq", "train", *MOVQ,
           f"train.out_dir={two}", "--no-progress"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained movq for 1 steps") == 1  # rank 0 reports, alone
    run = subprocess.run([sys.executable, "-m", "mvq", "train", *MOVQ, f"train.out_dir={one}",
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # Adam's moments are the gradients (m = 0.5 g, v = 0.1 g^2 after one step): they must agree
    # to float noise. The weights moved by lr * m / sqrt(v) ~ +-lr each, so a weight whose
    # gradient is zero in exact arithmetic (the key bias of attention) may move either way.
    state_a = load_file(str(one / "checkpoint" / "train_state.safetensors"))
    state_b = load_file(str(two / "checkpoint" / "train_state.safetensors"))
    model_a = load_file(str(one / "checkpoint" / "model.safetensors"))
    model_b = load_file(str(two / "checkpoint" / "model.safetensors"))
    assert state_a.keys() == state_b.keys() and model_a.keys() == model_b.keys()
    moments = [k for k in state_a if k.endswith(("exp_avg", "exp_avg_sq"))]
    assert len(moments) > 100
    assert any(k.startswith("auxopt.discriminator") for k in moments)  # the discriminator too
    for k in moments:
        err = (state_b[k] - state_a[k]).abs().max()
        assert err <= 1e-4 * state_a[k].abs().max() + 1e-12, (k, float(err))
    for k, a in model_a.items():
        if a.is_floating_point():
            torch.testing.assert_close(model_b[k], a, rtol=0, atol=1e-3, msg=k)  # 2 x lr
    import csv

    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 1  # step 1, written once
    logged = [k for k, v in rows[0][0].items() if v and "usage" not in k and "perplex" not in k
              and not k.startswith("val_")]
    assert {"loss", "rec", "gan_perceptual", "d_loss", "logits_real"} <= set(logged)
    for k in logged:  # means over equal shares = the whole batch's means
        assert float(rows[1][0][k]) == pytest.approx(float(rows[0][0][k]), rel=1e-4, abs=1e-7), k


def test_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    from mvq.configuration.config import load_config
    from mvq.train import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = load_config(None, [*MOVQ, f"train.out_dir={tmp_path}"])
    with pytest.raises(MvqError, match="batch_size 8 does not split over 3 processes"):
        train(cfg, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written


def test_torchrun_prior_training_matches_one_process(tmp_path):
    """train-prior with two ranks: the first step's loss (and its primary / secondary parts) is
    the whole batch's, the same as one process's; the weights after it agree to Adam's step."""
    import csv
    import json

    from mvq.inference.tokens import TOKENS_FORMAT
    from mvq.values.codes import Codes

    gen = torch.Generator().manual_seed(0)
    n = 64
    codes = Codes(torch.randint(0, 8, (n, 2, 2), generator=gen),
                  torch.randint(0, 8, (n, 1, 1), generator=gen),
                  torch.rand(n, 1, 1, 4, generator=gen) > 0.5,
                  {"model": "mvqvae", "config_hash": "test", "codebook_sizes": [8, 8]})
    tokens = tmp_path / "tokens.safetensors"
    codes.save(tokens, extra={"labels": torch.zeros(n, dtype=torch.int64)},
               metadata={"mvq_tokens": json.dumps({"format": TOKENS_FORMAT, "n": n})})
    args = ["train-prior", str(tokens), "--steps", "1", "--batch-size", "16", "--val-every", "1",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), "-m", "mvq", *args, "--out",
                          str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained gpt prior for 1 steps") == 1
    run = subprocess.run([sys.executable, "-m", "mvq", *args, "--out", str(one)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 2  # step 0 and step 1, written once
    for key in ("loss", "primary", "secondary", "val_nll"):
        assert float(rows[1][1][key]) == pytest.approx(float(rows[0][1][key]), rel=1e-5), key
    a = load_file(str(one / "checkpoint" / "model.safetensors"))
    b = load_file(str(two / "checkpoint" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=6e-4, msg=k)  # 2 x lr (3e-4)
