"""The README's and docs/'s examples run as written (docs cannot rot): every Python block runs
(a `print(...)  # shown` line prints what its comment shows), every `mvq ...` command line in a
shell block is accepted by the CLI's parser, every relative link points at a file, and the
README stays short."""

import re
import shlex
from pathlib import Path

import pytest

from mvq import presets
from mvq.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = {page: re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S) for page in PAGES}
CASES = [(page, i) for page, blocks in BLOCKS.items() for i in range(len(blocks))]


def _name(case) -> str:
    return f"{case[0].relative_to(ROOT)}-{case[1]}" if isinstance(case, tuple) else str(case)


def test_docs_have_python_examples():
    assert len(BLOCKS[ROOT / "README.md"]) >= 1 and len(BLOCKS[ROOT / "docs/python-api.md"]) >= 3


@pytest.mark.parametrize("case", CASES, ids=[_name(c) for c in CASES])
def test_python_block_runs(case, tmp_path, monkeypatch, capsys):
    """Each block runs after the earlier blocks of its page (they may define names)."""
    page, index = case
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in BLOCKS[page][:index]:
        exec(compile(block, f"{page.name} block", "exec"), namespace)
    capsys.readouterr()
    exec(compile(BLOCKS[page][index], f"{page.name} block {index}", "exec"), namespace)
    shown = [c.strip() for c in re.findall(r"^print\(.*\)[ \t]*#(.*)$", BLOCKS[page][index],
                                            flags=re.M)]
    assert capsys.readouterr().out.splitlines() == shown


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, fences paired in order."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _command_lines(text: str) -> list[str]:
    """`mvq ...` lines of the shell blocks, continuation lines joined, comments dropped."""
    lines = []
    for lang, block in _fenced(text):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            if line[:1].isspace():  # an indented line: part of a diagram, not a command
                continue
            line = line.split(" #")[0].strip()
            for prefix in (".venv/bin/", "OMP_NUM_THREADS=1 "):
                line = line.removeprefix(prefix)
            if line.startswith("mvq "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_shell_commands_parse(page, capsys):
    """Every `mvq` command shown is a real subcommand whose options the parser accepts, and
    every preset named exists."""
    parser = build_parser()
    text = page.read_text()
    for line in _command_lines(text):
        argv = shlex.split(line)[1:]
        assert argv[0].startswith("-") or argv[0] in COMMANDS, line
        if "--help" in argv or "-h" in argv:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as stop:
            pytest.fail(f"{page.name}: `{line}` is refused by the CLI: "
                        f"{capsys.readouterr().err.strip().splitlines()[-1:]} ({stop.code})")
    for name in set(re.findall(r"--config ([a-z0-9_]+)", text)):  # NAME: a placeholder
        assert presets.is_preset(name), f"{page.name}: preset {name}"


def test_relative_links_point_at_files():
    for page in [*PAGES, ROOT / "RESULTS.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}"


def test_readme_is_short_and_points_at_every_page():
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") < 200
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert f"docs/{page.name}" in text, page.name


def _doc_tiers() -> list[set[str]]:
    """The part lists of docs/architecture.md's "Tiers" table, top first."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Tiers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    return [set(re.findall(r"`([\w.]+)`", cells[2])) for cells in rows]


def test_the_tiers_of_the_docs_are_the_import_contract():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")
    contract = [{m.strip() for m in re.split(r"[|:]", line)} for line in layers["layers"]]
    assert _doc_tiers() == contract
    assert layers["exhaustive"] is True  # every module is placed (a new one must be)
    section = (ROOT / "docs" / "architecture.md").read_text().split("## Tiers", 1)[1]
    section = " ".join(section.split("\n## ", 1)[0].split())
    for other in config["contracts"]:  # the independence contracts, by name
        if other is not layers:
            assert f'"{other["name"]}"' in section, other["name"]


def _script(name: str):
    """A module of scripts/ (their names have dashes), imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    """docs/cli.md is what scripts/cli-reference.py prints from today's parser, every command
    in it: after changing a command, run `python scripts/cli-reference.py > docs/cli.md`."""
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == _script("cli-reference.py").reference(), (
        "docs/cli.md is stale: run `python scripts/cli-reference.py > docs/cli.md`")
    for name in COMMANDS:
        assert f"\n## mvq {name}\n" in page, name


SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const|ref):`")


def _docstrings(tree) -> list[tuple[int, str]]:
    """(line, text) of the module's, its classes' and its functions' docstrings."""
    import ast

    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(
        n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return [(getattr(n, "lineno", 1), doc) for n in nodes
            if (doc := ast.get_docstring(n, clean=False))]


def test_docstrings_have_no_sphinx_roles():
    """The API reference (mkdocstrings) renders markdown: cross references are
    [`Name`][mvq.module.Name] (to an object docs/api.md documents) or plain `Name`, never
    Sphinx's :class:`Name`, which would show raw."""
    import ast

    found = [f"{path.relative_to(ROOT)}:{line}: {SPHINX_ROLE.search(doc).group(0)}"
             for path in sorted((ROOT / "src" / "mvq").rglob("*.py"))
             for line, doc in _docstrings(ast.parse(path.read_text()))
             if SPHINX_ROLE.search(doc)]
    assert not found, found


def _documented() -> set[str]:
    return set(re.findall(r"^::: ([\w.]+)", (ROOT / "docs" / "api.md").read_text(), flags=re.M))


def test_api_reference_documents_every_public_name():
    """Every name `mvq` exports has its entry in docs/api.md (by its defining module's path),
    and so do `mvq.values.codes.Codes` and the detailed output of `VectorQuantize.quantize`."""
    import mvq
    from mvq.values.codes import Codes

    documented = _documented()
    for name in sorted(set(mvq.__all__) - {"__version__"}):
        obj = getattr(mvq, name)
        assert f"{obj.__module__}.{obj.__qualname__}" in documented, name
    assert {"mvq.values.codes.Codes", "mvq.quantize.vq.QuantizeOutput"} <= documented
    assert Codes.load.__doc__  # members without a docstring are not rendered


def test_vector_quantize_docstring_lists_the_codebook_defaults():
    """`VectorQuantize`'s codebook keywords are its own (one class, no engine under it); its
    Args write each as ``name=default`` with the signature's default."""
    import ast
    import inspect

    from mvq import VectorQuantize
    from mvq.quantize.arguments import VQ_ARGUMENTS

    listed = {name: ast.literal_eval(value)
              for name, value in re.findall(r"``(\w+)=([^`]+)``", VectorQuantize.__doc__)}
    defaults = {name: p.default
                for name, p in inspect.signature(VectorQuantize.__init__).parameters.items()
                if name in VQ_ARGUMENTS}
    assert set(defaults) == set(VQ_ARGUMENTS)
    assert listed == defaults
