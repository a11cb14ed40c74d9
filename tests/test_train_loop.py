"""The training loop as one object: a trainee's run state lives on its instance, and the
tokenizer's batches come from a DataLoader over the step-seeded sampler, the same for any
train.num_workers (and so the same trajectory, resumed or not)."""

from __future__ import annotations

import torch

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
