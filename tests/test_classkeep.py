import torch

from conftest import tiny_model_config
from mvq.analysis import codes as C
from mvq.analysis.classkeep import split_images, class_keeping, targets_of, train_classifier
from mvq.checkpoint import save_checkpoint
from mvq.config import Config, DataConfig
from mvq.models import build_model


def test_targets_have_another_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 0])
    t = targets_of(labels)
    assert t.tolist() == [2, 2, 3, 5, 5, 2]
    assert (labels[t] != labels).all()


def test_rates_against_the_reconstruction_ceiling(tmp_path):
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    model, cfg = C.load_mvq(save_checkpoint(tmp_path / "ck", build_model(cfg.model), cfg, step=0))
    x, y = split_images(cfg, "train", 600)
    net = train_classifier(x, y, steps=150, batch=64)
    xt, yt = split_images(cfg, "test", 60)
    res = class_keeping(model, net, xt, yt, targets_of(yt))
    assert res["classifier_accuracy_test"] > 0.5  # the shapes classifier learns (5 classes)
    # to itself, a "transfer" is the reconstruction: the kept rate equals that accuracy
    same = class_keeping(model, net, xt, yt, torch.arange(len(yt)))
    assert same["transfer_keeps_target_class"] == same["classifier_accuracy_reconstructions"]
    assert 0 <= res["transfer_keeps_target_class"] + res["transfer_takes_source_class"] <= 1
