"""The command line of a researcher's first hour (issue 16): --set on swept keys and sweeps
from the command line, the directory's risk plot, status columns and runs not started, the
report's risk summary, separate seeds for the problem and the particles, --version, LICENSE,
CITATION.cff and the notebook extra."""
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

import meanfield
from meanfield import lazy, sweep
from meanfield.cli import main
from test_sweep import merged, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "meanfield", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _refused(result, command, *parts):
    """Exit 2, one line on stderr that starts with the command and contains ``parts``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meanfield {command}: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def _listing(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)


# --------------------------------------------------------------------------- seeds
# The ids of every run of runs/quickstart.toml, computed before [problem] seed existed (commit
# a811383, `[s.id for s in meanfield.sweep.plan("runs/quickstart.toml")]`), and the SHA-256 of
# the space-joined ids of each shipped sweep file, computed the same way at that commit: a key
# that is absent must not change any id.
QUICKSTART_IDS = ["ea86c3bb57ce2652", "b9c9d280f5b93545", "784c92fd3697f8a0", "2946e063b82a9c8f",
                  "d974804851545d3a", "ae3d61ba639a5212", "1173d7e067fbbad0", "757b9c59483168cc",
                  "faab3d3509007906", "a3c02f24fa550e1c", "5804483483500f20", "128dc3ea33369842"]
SHIPPED_IDS = {"census": (900, "38edc39b562a4950"), "flow_step_error": (4, "d1c0ebf5708ab457"),
               "langevin": (3, "a45c8177851a1725"), "lazy_relu_width": (24, "6e5fbb79bd5d5245"),
               "lazy_vs_active": (24, "1fa46b289f306cab"), "limit_relu": (24, "b2e9f73ecaa2ed25"),
               "mode_connectivity": (64, "43d22d72f2695f10"), "online_sgd": (3, "ffc01a33af591f19"),
               "quickstart": (12, "ffc360b80f32cea1"), "width_sweep": (20, "926f73348be47164")}


def test_run_ids_of_the_shipped_files_are_unchanged():
    assert [s.id for s in sweep.plan(os.path.join(ROOT, "runs", "quickstart.toml"))] == QUICKSTART_IDS
    for name, (count, digest) in SHIPPED_IDS.items():
        specs = sweep.plan(os.path.join(ROOT, "runs", f"{name}.toml"))
        assert "seed" not in specs[0].config["problem"]
        ids = " ".join(s.id for s in specs)
        assert (len(specs), hashlib.sha256(ids.encode()).hexdigest()[:16]) == (count, digest), name


def _built(path, **changes):
    specs = sweep.plan(path, [f"{k}={v}" for k, v in changes.items()])
    return [(spec, sweep.build(spec.config)) for spec in specs]


@pytest.mark.parametrize("problem", [
    {"kind": "finite_data", "n_samples": 50, "teacher": {"kind": "random", "k": 2}},
    {"kind": "population", "method": "monte_carlo", "mc_samples": 300, "teacher": {"kind": "orthonormal", "k": 2,
                                                                                    "rotate": True}},
])
def test_problem_seed_fixes_teacher_and_data_and_run_seed_moves_the_particles(tmp_path, problem):
    """Two runs with run.seed 0 and 1 and the same problem.seed share the teacher, the data
    (and the held-out sample) exactly and start from different particles; without
    problem.seed their problems differ; problem.seed = s is the problem of run.seed = s."""
    doc = merged(problem=problem, lazy={"test_samples": 20}, sweep={"run.seed": [0, 1]})
    doc["problem"]["seed"] = 7
    path = write(tmp_path, doc)
    (a, A), (b, B) = _built(path)
    assert a.config["problem"]["seed"] == b.config["problem"]["seed"] == 7
    np.testing.assert_array_equal(A.teacher.W, B.teacher.W)
    data = ("X", "y") if problem["kind"] == "finite_data" else ("_X", "_y")
    for name in data:
        np.testing.assert_array_equal(_data(A.problem, name), _data(B.problem, name))
    for x, y in zip(lazy.held_out_sample(a.config, A.teacher.W), lazy.held_out_sample(b.config, B.teacher.W)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(A.W0, B.W0)
    del doc["problem"]["seed"]
    plain = write(tmp_path, doc, "plain.toml")
    (c, C), (d, D) = _built(plain)
    assert "seed" not in c.config["problem"]
    assert not np.array_equal(C.teacher.W, D.teacher.W)
    np.testing.assert_array_equal(C.W0, A.W0)  # the particles follow run.seed either way
    (e, E), _ = _built(path, **{"problem.seed": 1})
    np.testing.assert_array_equal(E.teacher.W, D.teacher.W)
    for name in data:
        np.testing.assert_array_equal(_data(E.problem, name), _data(D.problem, name))
    np.testing.assert_array_equal(E.W0, C.W0)


def _data(problem, name):
    """The training set of a finite-data problem, or the fixed sample of a Monte Carlo one."""
    return getattr(problem, name)


def test_problem_seed_is_checked(tmp_path):
    doc = merged()
    doc["problem"]["seed"] = -1
    path = write(tmp_path, doc)
    _refused(_cli("run", path, cwd=tmp_path), "run", str(path), "[problem] seed = -1", "must be an integer >= 0")
