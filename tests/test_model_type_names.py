"""No module outside the models package names a tokenizer type (``model.type``): what a type
is (its model section, codebooks, masks, VQGAN loss, quantizer) is its record in
mvq.configuration.sections.MODEL_TYPES, what the tiers above need of it (tokens of a config,
reproduce's seconds per step) is its class in mvq.models, and everything else asks those.

The allow-list, each for a reason:
- ``models/``: the tokenizer classes name the types they are built for (``model_types``).
- ``configuration/sections.py``: the one record of each type below the models. A config is
  loaded and checked (which dataclass its model section is, how K splits into codebooks) in
  mvq.configuration.config, which the models import and which imports no model
  (docs/architecture.md, Tiers; lint-imports), and the section dataclasses' defaults
  (``type: str = "mvqvae"``) are type names.
- the experiments ``reproduce/plan.py`` registers (``reproduce/mvq_paper.py``,
  ``reproduce/movq_paper.py``, ``reproduce/frontier.py``): the experiments of the papers are
  comparisons of named models (hvqvae against mvqvae, VQGAN against MoVQ); their run names and
  labels carry them.
"""

import ast
from pathlib import Path

from mvq.configuration.config import GAN_TYPES, MASK_TYPES, MODEL_TYPES, QUANTIZER_TYPES, model_type
from mvq.models import MODELS

SRC = Path(__file__).resolve().parents[1] / "src" / "mvq"
ALLOWED = ("models/", "configuration/sections.py", "reproduce/mvq_paper.py",
           "reproduce/movq_paper.py", "reproduce/frontier.py")


def _type_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in MODEL_TYPES]


def test_no_module_outside_the_models_package_names_a_model_type():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(ALLOWED):
            continue
        found += [f"{rel}:{line} {name!r}" for line, name in _type_literals(path)]
    assert not found, ("ask the type's record (mvq.configuration.config.model_type) or its class "
                       "(mvq.models.model_class): " + ", ".join(found))


def test_the_scan_sees_a_model_type_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('SECONDS = {"hvqgan": 0.3}\nif cfg.type in ("mvqvae", "movq"):\n'
                     '    print(f"an mvqvae run")\n')
    assert sorted(_type_literals(probe)) == [(1, "hvqgan"), (2, "movq"), (2, "mvqvae")]


def test_every_record_has_its_class_and_every_class_its_record():
    assert set(MODELS) == set(MODEL_TYPES)
    for name, cls in MODELS.items():
        record = model_type(name)
        assert name in cls.model_types and name in cls.step_seconds
        assert record.name == name
        if record.masks:
            assert model_type(record.unmasked).section is record.section
            assert model_type(record.unmasked).gan == record.gan
            assert not model_type(record.unmasked).masks


def test_the_derived_lists_keep_their_order():
    """Messages, ``mvq train --help`` and the VQGAN loss's choice read these lists."""
    assert tuple(MODEL_TYPES) == ("vqvae", "hvqvae", "mvqvae", "hvqgan", "mvqgan", "movq")
    assert GAN_TYPES == ("hvqgan", "mvqgan", "movq")
    assert MASK_TYPES == ("mvqvae", "mvqgan")
    assert QUANTIZER_TYPES == ("vqvae",)


def _experiment_comparisons(tree: ast.AST, names) -> list[tuple[int, str]]:
    """(line, name) of each comparison in ``tree`` with an experiment name on a side (alone or
    in a tuple / list / set)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                found += [(node.lineno, e.value) for e in items
                          if isinstance(e, ast.Constant) and e.value in names]
    return found


def test_no_module_compares_against_an_experiment_name():
    """What an experiment does is its `Experiment` record (mvq.reproduce.plan.EXPERIMENTS):
    no code branches on an experiment's name (``experiment == "table6"``, ``in (...)``)."""
    from mvq.reproduce.plan import EXPERIMENTS

    found = [f"{path.relative_to(SRC)}:{line} {name}" for path in sorted(SRC.rglob("*.py"))
             for line, name in _experiment_comparisons(ast.parse(path.read_text()), EXPERIMENTS)]
    assert not found, found
    # the same scan finds such comparisons where they are
    probe = ast.parse('if plan.experiment == "fig5" or name in ("table6", "x"): pass')
    assert _experiment_comparisons(probe, EXPERIMENTS) == [(1, "fig5"), (1, "table6")]
