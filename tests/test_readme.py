"""The README's Python examples run as written (docs cannot rot)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    """Each block runs, and a `print(...)  # shown` line prints what its comment shows."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in BLOCKS[:index]:  # later blocks may use names from earlier ones
        exec(compile(block, "README block", "exec"), namespace)
    capsys.readouterr()
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), namespace)
    shown = [c.strip() for c in re.findall(r"^print\(.*\)\s*#(.*)$", BLOCKS[index], flags=re.M)]
    assert capsys.readouterr().out.splitlines() == shown


def test_readme_commands_exist():
    """Every `mvq COMMAND` the README shows is a real subcommand, every config it names exists."""
    from mvq.cli import COMMANDS

    text = README.read_text()
    for cmd in set(re.findall(r"^mvq ([a-z-]+)", text, flags=re.M)):
        assert cmd in COMMANDS, cmd
    from mvq import presets

    for cfg in set(re.findall(r"--config ([a-z0-9_]+)", text)):  # NAME: a placeholder
        assert presets.is_preset(cfg), cfg
