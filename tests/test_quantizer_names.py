"""No module outside mvq.quantize names a quantizer family: the config, the tokenizers and the
CLI ask mvq.quantize.registry, so a family is added by adding its module there."""

import ast
from pathlib import Path

from mvq.quantize.registry import FAMILIES

SRC = Path(__file__).resolve().parents[1] / "src" / "mvq"
# "vq" is also the name of a tokenizer's quantizer loss term (losses["vq"], logged as a column):
# the keys of the loss dicts and the training log's column list name the term, not the family
# "multichannel" is also the name of an ids layout (several ids per position, whichever
# tokenizer made them) that the priors read, and of the MoVQ ablation's multichannel VQGAN
# variant (a model.type=movq config, not the family)
OTHER_MEANINGS = {("train/loop.py", "vq"), ("priors/base.py", "multichannel"),
                  ("priors/maskgit.py", "multichannel"),
                  ("reproduce/movq_paper.py", "multichannel")}


def _family_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    dict_keys = {id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict)
                 for k in node.keys if k is not None}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in FAMILIES and id(node) not in dict_keys]


def test_no_module_outside_the_quantize_package_names_a_family():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("quantize/"):
            continue
        found += [f"{rel}:{line} {name!r}" for line, name in _family_literals(path)
                  if (rel, name) not in OTHER_MEANINGS]
    assert not found, "name the family through mvq.quantize.registry: " + ", ".join(found)


def test_the_scan_sees_a_family_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('if cfg.quantizer == "fsq":\n    losses = {"vq": 0}\n')
    assert _family_literals(probe) == [(1, "fsq")]


def test_one_class_per_quantizer():
    """No engine / layer pairs: no module class of mvq.quantize subclasses another (each
    quantizer is one class, which the tokenizers and users share), and each exported layer
    is its own module's."""
    import importlib
    import inspect
    import pkgutil

    from torch import nn

    import mvq.quantize as package

    classes = set()
    for info in pkgutil.walk_packages(package.__path__, "mvq.quantize."):
        module = importlib.import_module(info.name)
        classes |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if cls.__module__ == module.__name__ and issubclass(cls, nn.Module)}
    assert {"VectorQuantize", "MaskedVectorQuantize", "MultiChannelVectorQuantize", "FSQ", "LFQ",
            "ResidualVQ"} <= {cls.__name__ for cls in classes}
    pairs = [(cls.__name__, base.__name__) for cls in classes for base in cls.__mro__[1:]
             if base in classes]
    assert pairs == []
