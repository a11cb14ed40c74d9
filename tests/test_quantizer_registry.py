"""model.quantizer: the one-level backbone (model.type=vqvae) with each quantizer family of
mvq.quantize.registry; existing configs keep their records and hashes."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from mvq.configuration.config import (
    codebook_sizes,
    config_from_dict,
    config_to_dict,
    load_config,
    model_hash,
)
from mvq.configuration.sections import ModelConfig
from mvq.errors import MvqError
from mvq.models import VQVAE, build_model
from mvq.quantize import registry
from mvq.quantize.registry import DEFAULT, FAMILIES, FAMILY_FIELDS

ROOT = Path(__file__).resolve().parents[1]
KEPT = sorted((ROOT / "docs" / "results" / "runs").glob("*/checkpoint/config.json"))

# model_hash of configs on main before quantizer families could be chosen (tags token files)
PINNED = {
    ("fmnist_f28_k16_quick", "vqvae"): "51a2c755402f",
    ("fmnist_f28_k16_quick", "hvqvae"): "cb151a717247",
    ("fmnist_f28_k16_quick", "mvqvae"): "3179ae6fd6e3",
    ("fmnist_f28_k16_quick", "mvqgan"): "dd5958289741",
}
PINNED_KEPT = {
    "fashion-mnist_f14_k16_hvqgan_1200steps_s0": "e95a99f8baf9",
    "fashion-mnist_f14_k16_mvqvae_j1_1200steps_s2": "994abffc5628",
    "fashion-mnist_f28_k256_mvqvae_j16_1200steps_s2": "f5c429e252b9",
    "movq_quick_spatialnorm_f0-sinusoidal_800steps_s1": "ea2f09729f5d",
}


def tiny(name: str, **kw) -> ModelConfig:
    keys = dict(type="vqvae", quantizer=name, factor=7, levels=(5, 3), bits=3, depth=2)
    keys.update(kw)
    return tiny_model_config(**{k: v for k, v in keys.items()
                                if k not in FAMILY_FIELDS - FAMILIES[name].reads()})


@pytest.mark.parametrize(("preset", "kind"), sorted(PINNED))
def test_model_hashes_of_existing_configs_are_unchanged(preset, kind):
    cfg = load_config(preset, [f"model.type={kind}"])
    assert model_hash(cfg.model) == PINNED[preset, kind]
    assert model_hash(config_from_dict({"model": {"type": "movq"}}).model) == "30c583bad864"


def test_every_kept_run_config_still_parses_with_its_record_and_hash():
    assert len(KEPT) > 50
    for path in KEPT:
        saved = json.loads(path.read_text())["config"]
        cfg = config_from_dict(saved)
        assert config_to_dict(cfg)["model"].keys() == saved["model"].keys(), path
        name = path.parts[-3]
        if name in PINNED_KEPT:
            assert model_hash(cfg.model) == PINNED_KEPT[name]


def test_registry_lists_each_family_once_with_its_description():
    assert list(FAMILIES)[0] == DEFAULT and set(FAMILIES) >= {"vq", "fsq", "lfq", "rvq"}
    for fam in FAMILIES.values():
        assert fam.summary and "\n" not in fam.summary and fam.bits
        assert all(hasattr(ModelConfig, key) for key in fam.fields)  # a ModelConfig key each


@pytest.mark.parametrize("name", ["vq", "fsq", "lfq", "rvq"])
def test_each_family_trains_encodes_decodes_and_counts_bits(name):
    cfg = tiny(name)
    model = build_model(cfg)
    fam = FAMILIES[name]
    k, depth = fam.codebook_size(cfg), fam.depth(cfg)
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    out.loss.backward()  # the encoder learns through the quantizer (straight-through)
    assert all(p.grad is not None for p in model.encoder.parameters())
    codes = model.encode(x)
    shape = (4, 4, 4) if depth == 1 else (4, 4, 4, depth)
    assert tuple(codes.primary.shape) == shape and codes.secondary is None
    assert int(codes.primary.max()) < k and codebook_sizes(cfg) == model.codebook_sizes == [k]
    model.eval()  # the codes decode to what the forward reconstructs from them
    torch.testing.assert_close(model.decode(codes), model(x).recon, atol=1e-5, rtol=1e-5)
    assert torch.equal(model(x).codes.primary, codes.primary)
    assert model.bits_per_image == pytest.approx(16 * fam.bits_per_token(cfg))
    layer_bits = getattr(model.quantizer, "bits_per_token", math.log2(k))
    assert fam.bits_per_token(cfg) == pytest.approx(layer_bits)


def test_bits_per_image_follow_each_familys_formula():
    s = 16  # factor 7 at 28 px: 4 x 4 positions
    assert build_model(tiny("vq", codebook_size=32)).bits_per_image == s * 5
    assert build_model(tiny("fsq", levels=(8, 5, 5))).bits_per_image == pytest.approx(
        s * (3 + 2 * math.log2(5)))
    assert build_model(tiny("lfq", bits=6)).bits_per_image == s * 6
    assert build_model(tiny("rvq", depth=3, codebook_size=16)).bits_per_image == s * 3 * 4


def test_a_family_changes_the_hash_and_the_record_keeps_only_its_keys():
    base = load_config("fmnist_f28_k16_quick", ["model.type=vqvae"])
    fsq = load_config("fmnist_f28_k16_quick", ["model.type=vqvae", "model.quantizer=fsq"])
    assert model_hash(fsq.model) != model_hash(base.model)
    record = config_to_dict(fsq)["model"]
    assert record["quantizer"] == "fsq" and "levels" in record and "bits" not in record
    assert "quantizer" not in config_to_dict(base)["model"]
    assert config_from_dict(config_to_dict(fsq)) == fsq


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.quantizer=nope"], "model.quantizer must be one of vq"),
    (["model.quantizer=fsq", "model.type=mvqvae"], "needs the one-level backbone"),
    (["model.type=vqvae", "model.levels=[5,5]"], "model.levels is not read by"),
    (["model.type=vqvae", "model.quantizer=lfq", "model.bits=21"], "model.bits"),
    (["model.type=vqvae", "model.quantizer=fsq", "model.levels=[2,5]"], "model.levels"),
    (["model.type=vqvae", "model.quantizer=fsq", "model.levels=[]"], "non-empty"),
    (["model.type=vqvae", "model.quantizer=rvq", "model.depth=0"], "model.depth"),
    (["model.type=vqvae", "model.quantizer=fsq", "model.levels=[64,64,64,64]"], "token file"),
])
def test_bad_quantizer_keys_are_one_line_errors(overrides, message):
    with pytest.raises(MvqError, match=message.replace("[", r"\[")):
        load_config("fmnist_f28_k16_quick", overrides)


def test_the_architecture_docs_example_family_is_a_working_quantizer(monkeypatch, tmp_path):
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## How to add a quantizer"):text.index("## How to add a prior")]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"__name__": "mvq.quantize.families.sign"}
    exec(compile(source, "sign.py", "exec"), namespace)  # noqa: S102 - the docs' own example
    fam = namespace["FAMILY"]
    monkeypatch.setitem(registry.FAMILIES, fam.name, fam)  # as if the file were in families/
    cfg = tiny_model_config(type="vqvae", quantizer=fam.name, factor=7, dim=4)
    model = VQVAE(cfg)
    x = torch.rand(4, 1, 28, 28)
    model(x).loss.backward()
    codes = model.eval().encode(x)
    assert codes.primary.shape == (4, 4, 4) and model.codebook_sizes == [16]
    assert model.bits_per_image == 16 * 4
    torch.testing.assert_close(model.decode(codes), model(x).recon)


# the vq family's lookup options (VectorQuantize's codebook_dim, cosine, rotation_trick)
LOOKUPS = {"low-dim": dict(lookup_dim=4), "cosine": dict(cosine=True),
           "rotation": dict(rotation_trick=True),
           "modern": dict(lookup_dim=4, cosine=True, rotation_trick=True)}


@pytest.mark.parametrize("name", sorted(LOOKUPS))
def test_vq_lookup_options_train_and_decode_what_they_encode(name):
    cfg = tiny("vq", **LOOKUPS[name])
    model = build_model(cfg)
    q = model.quantizer
    assert q.dim == (4 if "lookup_dim" in LOOKUPS[name] else cfg.dim)  # the looked-up size
    assert q.cosine == LOOKUPS[name].get("cosine", False)
    assert q.rotation_trick == LOOKUPS[name].get("rotation_trick", False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 1, 28, 28)
    for _ in range(4):  # a few steps: finite losses, the encoder reached through the lookup
        opt.zero_grad()
        out = model(x)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(p.grad is not None for p in model.encoder.parameters())
        opt.step()
    model.eval()
    codes = model.encode(x)
    assert codes.primary.shape == (8, 4, 4) and int(codes.primary.max()) < 16
    torch.testing.assert_close(model.decode(codes), model(x).recon, atol=1e-5, rtol=1e-5)
    assert model.bits_per_image == 16 * 4  # the options change the lookup, not the rate


def test_vq_lookup_options_are_recorded_and_hashed_only_when_set():
    base = load_config("fmnist_f28_k16_quick", ["model.type=vqvae"])
    assert model_hash(base.model) == PINNED[("fmnist_f28_k16_quick", "vqvae")]
    assert not {"lookup_dim", "cosine", "rotation_trick"} & set(config_to_dict(base)["model"])
    modern = load_config("fmnist_f28_k16_quick", ["model.type=vqvae", "model.lookup_dim=4",
                                                  "model.cosine=true",
                                                  "model.rotation_trick=true"])
    record = config_to_dict(modern)["model"]
    assert (record["lookup_dim"], record["cosine"], record["rotation_trick"]) == (4, True, True)
    assert "quantizer" not in record and model_hash(modern.model) != model_hash(base.model)
    assert config_from_dict(config_to_dict(modern)) == modern
    cos = load_config("fmnist_f28_k16_quick", ["model.type=vqvae", "model.cosine=true"])
    assert set(config_to_dict(cos)["model"]) - set(config_to_dict(base)["model"]) == {"cosine"}


@pytest.mark.parametrize("key", ["model.lookup_dim=4", "model.cosine=true",
                                 "model.rotation_trick=true"])
@pytest.mark.parametrize("where", [["model.type=vqvae", "model.quantizer=fsq"],
                                   ["model.type=vqvae", "model.quantizer=lfq"],
                                   ["model.type=vqvae", "model.quantizer=rvq"],
                                   ["model.type=hvqvae"], ["model.type=mvqvae"],
                                   ["model.type=mvqgan"]])
def test_vq_lookup_options_are_refused_for_other_families_and_types(key, where):
    with pytest.raises(MvqError, match=rf"model\.{key.split('.')[1].split('=')[0]} "):
        load_config("fmnist_f28_k16_quick", [*where, key])


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.lookup_dim=-1"], "model.lookup_dim"),
    (["model.lookup_dim=32"], "larger than model.dim"),
    (["model.cosine=maybe"], "model.cosine"),
])
def test_bad_vq_lookup_options_are_one_line_errors(overrides, message):
    with pytest.raises(MvqError, match=message):
        load_config("fmnist_f28_k16_quick", ["model.type=vqvae", *overrides])
