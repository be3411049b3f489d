"""The CUDA backend, tested without a GPU.

* ``tests/cuda_sim_kernels.py``: every CUDA kernel against its CPU twin and the numpy
  references, and whole runs with ``backend = "cuda"``, in numba's CUDA simulator;
* ``tests/cuda_ptx_kernels.py``: every kernel compiled to PTX for Hopper (cc 9.0) in float32
  and float64, and no double precision in the float32 PTX.

Each runs in its own pytest subprocess: ``NUMBA_ENABLE_CUDASIM`` is read once per process,
and this process (the CPU tests) must not import numba.cuda in simulator mode. A failure
shows the subprocess's report.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(path, **env):
    environment = dict(os.environ, NUMBA_NUM_THREADS="1", **env)
    environment.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
         "--rootdir", ROOT, os.path.join(ROOT, "tests", path)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    report = (result.stdout + result.stderr)[-15000:]
    assert result.returncode == 0, f"{path} failed (exit {result.returncode}):\n{report}"
    assert " passed" in result.stdout and " failed" not in result.stdout, report


def test_cuda_kernels_and_backend_in_the_simulator():
    _pytest("cuda_sim_kernels.py", NUMBA_ENABLE_CUDASIM="1")


def test_cuda_kernels_compile_to_ptx_for_hopper():
    _pytest("cuda_ptx_kernels.py", NUMBA_ENABLE_CUDASIM="0")


def _cli(*args):
    # No device visible and no simulator: CUDA is unusable, on a GPU machine too.
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "meanfield", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("how", ["flag", "file"])
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path, how):
    experiment = tmp_path / "e.toml"
    experiment.write_text('[model]\nd = 3\nm = 4\n[problem.teacher]\nk = 1\n[dynamics]\nstep = 0.1\nt_max = 0.2\n'
                          + ('[run]\nbackend = "cuda"\n' if how == "file" else ""))
    out = tmp_path / "out"
    result = _cli("run", str(experiment), "--out", str(out), *(["--backend", "cuda"] if how == "flag" else []))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(experiment) in lines[0] and "backend" in lines[0] and '"cuda" is not usable' in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_info_says_whether_cuda_is_usable():
    result = _cli("info")
    assert result.returncode == 0
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("backends:")]
    assert "cuda: not usable" in line
