"""The training loop as one object: a trainee's run state lives on its instance, and the
tokenizer's batches come from the step-seeded sampler (through a DataLoader with workers), the
same for any train.num_workers (and so the same trajectory, resumed or not)."""

from __future__ import annotations

import csv

import torch
from conftest import tiny_model_config
from safetensors.torch import load_file

from mvq.configuration.config import Config, DataConfig, TrainConfig
from mvq.data import build_dataset
from mvq.data.base import TensorImageDataset
from mvq.runtime.distributed import Launch
from mvq.train import train
from mvq.train.batches import StepBatches, StepSampler
from mvq.train.engine import Trainee
from mvq.train.loop import TokenizerTrainee
from mvq.train.prior import PriorTrainee


def test_trainees_share_no_mutable_state():
    a, b = Trainee(), Trainee(["x"])
    a.fields.append("y")
    a.grids["g"] = 1
    a.changes.append(("train.lr", 1, 2))
    assert b.fields == ["x"] and b.grids == {} and b.changes == []
    assert Trainee().fields == []
    for cls in (Trainee, TokenizerTrainee, PriorTrainee):  # nothing a run could change in place
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if name.startswith("__"):
                    continue
                assert not isinstance(value, (list, dict, set, torch.Tensor)), (klass, name)


def _cfg(tmp_path, name="run", **train_kw) -> Config:
    kw = dict(steps=4, batch_size=8, val_every=2, ckpt_every=2, log_every=1, grid_images=2,
              out_dir=str(tmp_path / name))
    kw.update(train_kw)
    return Config(model=tiny_model_config(num_masks=8),
                  data=DataConfig(name="shapes", train_limit=40, val_limit=8),
                  train=TrainConfig(**kw))


def test_batches_are_the_same_for_any_number_of_workers(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 20, 20), dtype=torch.uint8, generator=gen)
    resized = TensorImageDataset(images, torch.zeros(40, dtype=torch.int64), split="train",
                                 num_classes=1, size=28)  # converted and resized per item
    shapes = build_dataset("shapes", split="train", limit=40, size=28, channels=1)
    before = torch.get_num_threads()
    for data in (resized, shapes):
        batches = StepBatches(len(data), 8, seed=3)  # 5 steps an epoch: steps 2-8 cross one
        torch.set_num_threads(2)  # the workers run one thread each: the items do not depend on it
        try:  # what the loop stacked before its DataLoader
            want = [torch.stack([data[j][0] for j in batches(s).tolist()]) for s in range(2, 9)]
        finally:
            torch.set_num_threads(before)
        for workers in (0, 1, 2):
            cfg = _cfg(tmp_path, num_workers=workers, seed=3)
            trainee = TokenizerTrainee(cfg, Launch(), torch.device("cpu"), None, (data, data))
            rng = torch.get_rng_state()
            got = list(trainee.batches(StepSampler(StepBatches(len(data), 8, 3), 2, 9)))
            assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not drawn from
            assert len(got) == len(want), workers
            for g, w in zip(got, want):
                assert torch.equal(g, w), workers


def test_workers_train_the_same_trajectory_and_resume_exactly(tmp_path):
    plain = train(_cfg(tmp_path, "plain"), progress=False)  # train.num_workers=0
    train(_cfg(tmp_path, "part", steps=2, num_workers=2), progress=False)
    resumed = train(_cfg(tmp_path, "part", num_workers=1), resume=True, progress=False)
    for name in ("model.safetensors", "train_state.safetensors"):
        a = load_file(str(plain.out_dir / "checkpoint" / name))
        b = load_file(str(resumed.out_dir / "checkpoint" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert resumed.metrics == plain.metrics

    def losses(run):
        return [(r["step"], r["loss"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert losses(resumed.out_dir) == losses(plain.out_dir)
