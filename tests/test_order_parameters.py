"""``[record] order_parameters`` and the map from engine online-SGD runs to the order-parameter ODEs
of ``meanfield.online`` (``meanfield/online/_engine_map.py``)."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_sweep import write

from meanfield import sweep
from meanfield.cli import main
from meanfield.online import generalisation_error

SMALL = {"model": {"d": 7, "m": 3, "activation": "erf"},
         "init": {"tau": 0.8},
         "problem": {"kind": "population", "noise_std": 0.2,
                     "teacher": {"kind": "orthonormal", "k": 2, "readout": "sum", "rotate": True}},
         "dynamics": {"integrator": "sgd", "step": 0.05, "batch_size": 1, "t_max": 2.0},
         "record": {"times": 5, "order_parameters": True}}


def _read(path):
    with h5py.File(path, "r") as f:
        series = {name: f[f"observables/{name}/value"][()] for name in f["observables"]}
        frames = f["particles/neurons/position/value"][()]
        teacher_W = f["parameters/teacher/position"][()]
    return series, frames, teacher_W


@pytest.mark.parametrize("scaling", ["mean_field", "sum"])
def test_order_parameters_are_the_overlaps_of_the_stored_particles(tmp_path, scaling):
    """At every record Q_k_l = a_k . a_l, R_k_n = a_k . a*_n and v_k = s c_k (s = 1/m mean field,
    1 for "sum"), recomputed with numpy from the particles and the teacher stored in the run file
    (1e-12). Independently of that formula, eps_g of the recorded overlaps plus sigma^2 / 2 is the
    recorded closed-form population risk (1e-10): the normalisation is that of the ODE."""
    doc = {**SMALL, "model": {**SMALL["model"], "scaling": scaling, "train_readout": scaling == "mean_field"}}
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, doc)), "--out", str(out), "--quiet"]) == 0
    (spec,) = sweep.plan(write(tmp_path, doc))
    series, frames, teacher_W = _read(out / f"{spec.id}.h5")
    d, m = 7, 3
    s = 1.0 / m if scaling == "mean_field" else 1.0
    assert len(frames) == 5
    for index, W in enumerate(frames):
        a, a_star = W[:, :d], teacher_W[:, :d]
        Q = np.array([[series[f"Q_{i}_{j}"][index] for j in range(m)] for i in range(m)])
        R = np.array([[series[f"R_{i}_{n}"][index] for n in range(2)] for i in range(m)])
        v = np.array([series[f"v_{i}"][index] for i in range(m)])
        np.testing.assert_allclose(Q, a @ a.T, atol=1e-12)
        np.testing.assert_allclose(R, a @ a_star.T, atol=1e-12)
        np.testing.assert_allclose(v, s * W[:, d + 1], atol=1e-12)
        eps = generalisation_error(Q, R, a_star @ a_star.T, v, teacher_W[:, d + 1], "erf")
        assert eps + 0.2 ** 2 / 2 == pytest.approx(series["risk"][index], rel=1e-10)
    assert frames[0][0, d + 1] != frames[-1][0, d + 1] or scaling == "sum"


def test_order_parameters_with_biases(tmp_path):
    """With model.bias (trained, b ~ 0.8 N(0, 1) at t = 0) and a random teacher with biases, the
    run records Q and R as without biases and b_k = b of the stored particles (1e-12), and eps_g
    of the recorded overlaps and biases (with the teacher's b*) plus sigma^2 / 2 is the recorded
    closed-form population risk (1e-10): the biases enter the ODE's fields as
    lambda = w . x / sqrt(d) + b."""
    doc = {**SMALL, "model": {**SMALL["model"], "bias": True}, "init": {"tau": 0.8, "b": "gaussian"},
           "problem": {**SMALL["problem"], "teacher": {"kind": "random", "k": 2, "bias": True}}}
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, doc)), "--out", str(out), "--quiet"]) == 0
    (spec,) = sweep.plan(write(tmp_path, doc))
    series, frames, teacher_W = _read(out / f"{spec.id}.h5")
    d, m = 7, 3
    assert np.abs(teacher_W[:, d]).min() > 0
    for index, W in enumerate(frames):
        a, a_star = W[:, :d], teacher_W[:, :d]
        Q = np.array([[series[f"Q_{i}_{j}"][index] for j in range(m)] for i in range(m)])
        R = np.array([[series[f"R_{i}_{n}"][index] for n in range(2)] for i in range(m)])
        v = np.array([series[f"v_{i}"][index] for i in range(m)])
        b = np.array([series[f"b_{i}"][index] for i in range(m)])
        np.testing.assert_allclose(b, W[:, d], atol=1e-12)
        np.testing.assert_allclose(Q, a @ a.T, atol=1e-12)
        np.testing.assert_allclose(R, a @ a_star.T, atol=1e-12)
        eps = generalisation_error(Q, R, a_star @ a_star.T, v, teacher_W[:, d + 1], "erf", b=b,
                                   teacher_b=teacher_W[:, d])
        assert eps + 0.2 ** 2 / 2 == pytest.approx(series["risk"][index], rel=1e-10)
    assert frames[0][0, d] != frames[-1][0, d]                      # the biases train


@pytest.mark.parametrize("change, message", [
    ({"problem": {**SMALL["problem"], "kind": "finite_data", "n_samples": 30, "tangent": True}},
     "[record] order_parameters: measures the network, not the tangent model"),
    ({"model": {**SMALL["model"], "m": 40}},
     "[record] order_parameters: one series per order parameter, m (m + k) + m = 1720"),
    ({"model": {**SMALL["model"], "m": 33, "bias": True}},
     "[record] order_parameters: one series per order parameter, m (m + k) + 2 m = 1221"),
    ({"record": {"order_parameters": "yes"}}, '[record] order_parameters = "yes"'),
])
def test_order_parameters_refused_where_they_have_no_meaning(tmp_path, change, message):
    """One line on stderr, exit 2, nothing written."""
    path = write(tmp_path, {**SMALL, **change})
    result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_order_parameters_refused_without_a_teacher(tmp_path):
    """A data file has no teacher: refused with one line, exit 2."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((20, 7)), y=rng.standard_normal(20))
    doc = {**SMALL, "problem": {"kind": "finite_data", "data": "data.npz", "teacher": {"k": 2}},
           "dynamics": {"integrator": "gradient_descent", "step": 0.1, "t_max": 1.0}}
    result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(write(tmp_path, doc)), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "[record] order_parameters: the overlaps are with the teacher" in \
        result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_the_run_ids_without_order_parameters_are_unchanged(tmp_path):
    """Left out of the resolved config when false: a file without it keeps its id."""
    doc = {**SMALL, "record": {"times": 5}}
    (plain,) = sweep.plan(write(tmp_path, doc, "plain.toml"))
    (off,) = sweep.plan(write(tmp_path, {**SMALL, "record": {"times": 5, "order_parameters": False}}, "off.toml"))
    assert "order_parameters" not in plain.config["record"] and plain.id == off.id
