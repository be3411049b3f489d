"""Style and architecture, checked on every test run (the ``test`` extra installs the tools).

- ruff (pyflakes, pycodestyle, isort; configured in pyproject.toml) finds nothing;
- the import contracts of pyproject.toml (import-linter) hold: the kernels import nothing of
  meanfield, the engine no HDF5 and no TOML, only ``meanfield.io`` and the analysis adapter
  import h5py, nothing imports the command line, and the layers run one way (no circle);
- the contracts bite: a copy of the package with one forbidden import breaks them;
- inside the package the root ``meanfield`` is imported for its kernels only (the contracts
  rely on that: see the comment on ``ignore_imports`` in pyproject.toml).
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL_MISSING = "{tool} is not installed: pip install -e '.[test]' installs it"


def _tool(name: str) -> str:
    """Path of a console script of this environment (next to the interpreter), or fail."""
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.fail(TOOL_MISSING.format(tool=name))
    return path


def test_ruff_finds_nothing():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"ruff check . found:\n{result.stdout[-8000:]}{result.stderr[-2000:]}"


def test_import_contracts_hold():
    result = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"lint-imports:\n{result.stdout[-8000:]}{result.stderr[-2000:]}"
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("meanfield/engine/_run.py", "import h5py", "the engine computes"),
    ("kernels/updates.py", "import h5py", "kernels are numeric code only"),
    ("meanfield/io/_store.py", "from ..sweep import execute", "the store does not know"),
    ("meanfield/experiments/_config.py", "from ..cli import main", "nothing imports the command line"),
    ("meanfield/engine/_model.py", "from ..analysis import open_runs", "layers"),
])
def test_import_contracts_bite(tmp_path, module, line, contract):
    """A copy of the checkout's code with one forbidden import: lint-imports names the contract."""
    for name in ("meanfield", "kernels"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n{line}  # a forbidden import\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode != 0, result.stdout[-4000:]
    broken = [block for block in result.stdout.split("\n\n") if "BROKEN" in block]
    assert any(contract in " ".join(block.split()) for block in broken), result.stdout[-4000:]


def _package_modules():
    for folder, _, files in os.walk(os.path.join(ROOT, "meanfield")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                yield path, parts[:-1]  # the package a relative import starts from


def test_package_imports_its_root_for_the_kernels_only():
    """``from .. import kernels`` is the only import of the package ``meanfield`` itself from
    within it: ``from .. import run`` or ``import meanfield`` would import the facade, which
    imports every layer, and the import graph would hide it (pyproject.toml's ignore_imports)."""
    offending = []
    for path, package in _package_modules():
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offending += [f"{path}:{node.lineno} import {a.name}" for a in node.names
                              if a.name == "meanfield" or a.name.startswith("meanfield.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if node.module and (node.module == "meanfield" or node.module.startswith("meanfield.")):
                        offending.append(f"{path}:{node.lineno} from {node.module} import ...")
                    continue
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
                if target != ["meanfield"]:
                    continue
                for alias in node.names:
                    submodule = os.path.join(ROOT, "meanfield", alias.name)
                    if alias.name == "kernels" or os.path.exists(submodule + ".py") or os.path.isdir(submodule):
                        continue
                    offending.append(f"{path}:{node.lineno} from {'.' * node.level} import {alias.name}")
    assert not offending, "imports of the package meanfield's own names from within it:\n" + "\n".join(offending)
