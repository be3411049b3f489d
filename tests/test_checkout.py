"""A researcher's first hour: importing from the checkout, and the test command on a machine
without Slurm or root."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Python as a non-editable install leaves it: meanfield is found first in the current folder
# (the checkout), and no editable-install finder maps meanfield.kernels to kernels/.
WITHOUT_EDITABLE_FINDER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import meanfield, meanfield.kernels, meanfield.kernels.population
print(meanfield.kernels.__file__)
print(meanfield.kernels.population.__name__)
"""


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_import_from_the_checkout_folder_after_either_install():
    """`python -c "import meanfield"` started in the checkout imports the checkout's package
    with its kernels (from the top-level kernels/), with or without an editable install; the
    error it gave before ("cannot import name 'kernels' from partially initialized module")
    came from the checkout's meanfield/ having no kernels/ of its own."""
    for code in (WITHOUT_EDITABLE_FINDER, "import meanfield.kernels as k; print(k.__file__); print(k.__name__)"):
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        path, name = result.stdout.split()[-2:]
        assert Path(path).resolve() == REPO / "kernels" / "__init__.py"
        assert name.startswith("meanfield.kernels")


def test_the_slurm_tests_skip_with_their_reason_outside_ci(tmp_path):
    """On a machine without a Slurm cluster, outside CI, the tests that need one are skipped
    and say why (the one that needs no cluster passes): nothing is installed or started (no
    root needed). A stub `sinfo` first on the
    PATH plays a machine whose Slurm shows no node."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\n"
                                "exit 1\n")
    (stub / "sinfo").chmod(0o755)
    env = _env()
    env.pop("CI", None)
    env["PATH"] = f"{stub}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             str(REPO / "tests" / "test_slurm.py")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "failed" not in summary and "error" not in summary, summary
    assert "no Slurm cluster on this machine: sinfo shows no ready node" in result.stdout
    assert "Unable to contact slurm controller" in result.stdout
