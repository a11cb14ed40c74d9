import json

import torch
from conftest import tiny_model_config

from mvq.analysis import codes as C
from mvq.analysis.classkeep import class_keeping, targets_of, train_classifier
from mvq.cli import main
from mvq.configuration.config import Config, DataConfig
from mvq.data import first_images
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint


def test_targets_have_another_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 0])
    t = targets_of(labels)
    assert t.tolist() == [2, 2, 3, 5, 5, 2]
    assert (labels[t] != labels).all()


def test_rates_against_the_reconstruction_ceiling(tmp_path):
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    model, cfg = C.load_mvq(save_checkpoint(tmp_path / "ck", build_model(cfg.model), cfg, step=0))
    x, y = first_images(cfg, "train", 600)
    net = train_classifier(x, y, steps=150, batch=64)
    xt, yt = first_images(cfg, "test", 60)
    res = class_keeping(model, net, xt, yt, targets_of(yt))
    assert res["classifier_accuracy_test"] > 0.5  # the shapes classifier learns (5 classes)
    # to itself, a "transfer" is the reconstruction: the kept rate equals that accuracy
    same = class_keeping(model, net, xt, yt, torch.arange(len(yt)))
    assert same["transfer_keeps_target_class"] == same["classifier_accuracy_reconstructions"]
    assert 0 <= res["transfer_keeps_target_class"] + res["transfer_takes_source_class"] <= 1


def test_mvq_analyze_what_classkeep_matches_the_rates_computed_by_hand(tmp_path, capsys):
    """`mvq analyze --what classkeep` (the one way to run it): its JSON holds the rates of a
    classifier trained here with the same images, steps and seed."""
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    ck = save_checkpoint(tmp_path / "ck", build_model(cfg.model), cfg, step=0)
    out = tmp_path / "out"
    assert main(["analyze", "--checkpoint", str(ck), "--what", "classkeep", "--images", "40",
                 "--train-images", "300", "--classifier-steps", "40", "--seed", "3",
                 "--out", str(out)]) == 0
    written = json.loads((out / "classkeep.json").read_text())
    assert f"written: {out / 'classkeep.json'}" in capsys.readouterr().out
    model, cfg = C.load_mvq(ck)
    net = train_classifier(*first_images(cfg, "train", 300), steps=40, seed=3)
    x, y = first_images(cfg, "test", 40)
    want = class_keeping(model, net, x, y, targets_of(y))
    assert written == {"checkpoint": str(ck), "train_images": 300, "classifier_steps": 40,
                       **want}
    assert written["n"] == 40
