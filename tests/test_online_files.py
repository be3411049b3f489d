"""A solution of the order-parameter ODEs as a run file of its own (``meanfield.online.write_trajectory``,
``meanfield/io/_ode_file.py``): exact round trip, what ``meanfield.analysis.open_run`` and the catalog
make of it, and a write killed before its rename."""
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from meanfield.analysis import open_run, open_sweep
from meanfield.io import catalog_rows, remove_abandoned
from meanfield.online import (
    integrate_order_parameters,
    read_ode_settings,
    read_trajectory,
    write_trajectory,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# K = 2 students, M = 3 teacher neurons (K != M catches a transposed R), trained second layer and
# label noise, so that every field of the trajectory and every setting of the header is exercised.
Q0 = np.array([[0.4, 0.05], [0.05, 0.3]])
R0 = np.array([[0.1, -0.05, 0.02], [0.02, 0.15, -0.01]])
T = np.array([[1.0, 0.1, 0.0], [0.1, 0.9, 0.05], [0.0, 0.05, 1.1]])
V0, TEACHER_V = np.array([0.8, 1.1]), np.array([1.0, 0.7, 1.2])
SETTINGS = {"learning_rate": 0.5, "noise_std": 0.1, "activation": "erf", "train_second_layer": True,
            "second_layer_learning_rate": 0.125, "batch_size": 2, "train_bias": True, "bias_learning_rate": 0.4,
            "rtol": 1e-7, "atol": 1e-9}
B0, TEACHER_B = np.array([0.3, -0.2]), np.array([0.5, -1.0, 0.0])
ALPHA = np.linspace(0.0, 2.0, 9)


def _trajectory():
    return integrate_order_parameters(Q0, R0, V0, T, TEACHER_V, alpha=ALPHA, b0=B0, teacher_b=TEACHER_B, **SETTINGS)


def _write(path, trajectory, **extra):
    kwargs = {key: value for key, value in SETTINGS.items() if key != "learning_rate"}
    return write_trajectory(path, trajectory, SETTINGS["learning_rate"], **{**kwargs, **extra})


def test_trajectory_round_trip_is_exact(tmp_path):
    """Every array of the trajectory comes back bitwise; the header gives back the settings it was
    integrated with, and integrating again from the file's first point with them gives the file's
    trajectory bitwise (the header is all it takes to reproduce the file)."""
    trajectory = _trajectory()
    path = _write(tmp_path / "deep" / "ode.h5", trajectory)
    back = read_trajectory(path)
    for field in ("alpha", "Q", "R", "v", "b", "generalisation_error", "T", "teacher_v", "teacher_b"):
        assert np.array_equal(getattr(back, field), getattr(trajectory, field)), field
    assert np.abs(back.b[-1] - back.b[0]).max() > 0.01        # the biases trained
    assert read_ode_settings(path) == SETTINGS
    again = integrate_order_parameters(back.Q[0], back.R[0], back.v[0], back.T, back.teacher_v, alpha=back.alpha,
                                       b0=back.b[0], teacher_b=back.teacher_b, **read_ode_settings(path))
    assert np.array_equal(again.Q, back.Q) and np.array_equal(again.v, back.v) and np.array_equal(again.b, back.b)


def test_open_run_reads_an_ode_file_as_a_run(tmp_path):
    """open_run gives the series of a particle run with order parameters (Q_k_l, R_k_n, v_k, risk)
    equal to the trajectory's entries, over the time axis given (t = alpha eta_e d of an engine
    run), with alpha as a coordinate, risk = (eps_g + sigma^2 / 2) / alpha_o^2 and no particles;
    the header in its attributes."""
    trajectory = _trajectory()
    d, engine_step = 200, 0.5 / (2 * 200)
    time = ALPHA * engine_step * d
    path = _write(tmp_path / "ode.h5", trajectory, model_alpha=2.0, time=time, steps=np.rint(ALPHA * d),
                  source={"run_id": "abc", "d": d, "seed": 4, "step": engine_step})
    with open_run(path) as ds:
        assert np.array_equal(ds["time"].values, time) and np.array_equal(ds["alpha"].values, ALPHA)
        assert np.array_equal(ds["step"].values, np.rint(ALPHA * d).astype(int))
        for k in range(2):
            assert np.array_equal(ds[f"v_{k}"].values, trajectory.v[:, k])
            for l in range(2):
                assert np.array_equal(ds[f"Q_{k}_{l}"].values, trajectory.Q[:, k, l])
            for n in range(3):
                assert np.array_equal(ds[f"R_{k}_{n}"].values, trajectory.R[:, k, n])
        assert np.array_equal(ds["eps_g"].values, trajectory.generalisation_error)
        np.testing.assert_allclose(ds["risk"].values, (trajectory.generalisation_error + 0.1 ** 2 / 2) / 4,
                                   rtol=1e-15)
        assert "position" not in ds and "grad_norm" not in ds
        assert np.array_equal(ds["teacher_overlaps"].values, T) and np.array_equal(ds["teacher_v"].values, TEACHER_V)
        attrs = ds.attrs
        assert (attrs["kind"], attrs["K"], attrs["M"], attrs["m"], attrs["d"], attrs["seed"]) == ("ode", 2, 3, 2, d, 4)
        assert (attrs["learning_rate"], attrs["second_layer_learning_rate"], attrs["noise_std"]) == (0.5, 0.125, 0.1)
        assert attrs["source_run_id"] == "abc" and attrs["run_id"] == "ode"
        assert attrs["method"].startswith("erf: I2: closed form") and attrs["method"] == attrs["averages"]


def test_catalog_and_sweep_of_ode_files(tmp_path):
    """A directory of ODE files is a sweep: its catalog marks every row kind = "ode", with the
    settings as ode.* and the source run as source.* columns, so that the short keys d and seed
    select and stack them as they do particle runs."""
    trajectory = _trajectory()
    for d in (100, 400):
        for seed in (0, 1):
            _write(tmp_path / f"run{d}_{seed}.h5", trajectory, time=ALPHA * 0.25 * (1 + seed),
                   source={"run_id": f"run{d}_{seed}", "d": d, "seed": seed, "step": 0.25 / d})
    rows = catalog_rows(tmp_path)
    assert len(rows) == 4 and {row["kind"] for row in rows} == {"ode"}
    assert rows[0]["ode.learning_rate"] == 0.5 and rows[0]["source.d"] == 100
    sweep = open_sweep(tmp_path)
    risk = sweep.risk(by=("d", "seed"))
    assert risk.dims == ("d", "seed", "time") and list(risk["d"].values) == [100, 400]
    np.testing.assert_array_equal(risk.sel(d=400, seed=1).dropna("time").values,
                                  (trajectory.generalisation_error + 0.1 ** 2 / 2))


def test_inconsistent_input_is_refused_and_writes_nothing(tmp_path):
    """A time axis of the wrong length is refused before anything is written; a file without
    kind = "ode" (what a particle run file is) is not read as a trajectory."""
    with pytest.raises(ValueError, match="time"):
        _write(tmp_path / "bad.h5", _trajectory(), time=ALPHA[:-1])
    assert os.listdir(tmp_path) == []
    path = _write(tmp_path / "ode.h5", _trajectory())
    with h5py.File(path, "r+") as f:
        del f.attrs["kind"]
    with pytest.raises(ValueError, match="not an ODE run file"):
        read_trajectory(path)


_KILLED_WRITE = """
import sys
import numpy as np
from meanfield.online import integrate_order_parameters, write_trajectory
ode = integrate_order_parameters(np.eye(2) * 0.3, np.zeros((2, 1)) + 0.1, np.ones(2), np.eye(1), np.ones(1), 0.9,
                                 np.linspace(0.0, 1.0, 5))
write_trajectory(sys.argv[1], ode, 0.9)
"""


def test_a_killed_write_leaves_the_old_file_whole(tmp_path):
    """A process killed (SIGKILL) after writing the new file's data but before its rename leaves
    the file under the final name as it was, plus a temporary file that remove_abandoned removes."""
    path = _write(tmp_path / "ode.h5", _trajectory())
    before = read_trajectory(path)
    env = dict(os.environ, MEANFIELD_KILL_AT="ode-written", PYTHONPATH=ROOT)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITE, path], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after = read_trajectory(path)
    assert np.array_equal(after.Q, before.Q) and after.R.shape == (9, 2, 3)
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".ode.h5.tmp.")]
    assert len(leftovers) == 1
    assert remove_abandoned(tmp_path) == leftovers and sorted(os.listdir(tmp_path)) == ["ode.h5"]
