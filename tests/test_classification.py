"""Classification observables (``[record] classification``) and the implicit bias of gradient
descent on a linear model.

- Each recorded series (norms, normalised margin, training and held-out errors, predictor change)
  is recomputed here with numpy from the particles stored in the run file, at small odd sizes,
  for L = 2 (relu, trained readout, bias) and L = 1 (relu, frozen readout, alpha = 2); a
  non-homogeneous activation (tanh) records the norms and errors only.
- The key's rules: one line naming file and key, exit status 2, nothing written.
- The linear model w . x is the network with m = 1, linear activation, bias off and the readout
  frozen at c = 1 (``init.c = "one"``): h(x) = (1/1) * 1 * (a . x), with a = w, and the
  particle velocity -m grad_a F is the gradient of F = mean_n l(w . x_n, y_n) (alpha = 1), so
  gradient descent on the particle is gradient descent on w. ``init.tau = 0`` starts it at
  w = 0. (With a trained readout, c a . x is not linear in the parameters (c, a).)
  (a) least squares with N < d from w = 0 converges to the minimum-norm interpolant pinv(X) y;
  (b) separable data, exponential loss: w / |w| turns towards the hard-margin SVM direction
  (computed by SLSQP), slowly (like 1 / log t).
"""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.optimize
from test_sweep import write

from meanfield import sweep
from meanfield.engine._teacher import Teacher

RELU_L2 = {"model": {"d": 5, "m": 7, "activation": "relu", "bias": True},
           "init": {"b": "gaussian"},
           "problem": {"kind": "finite_data", "n_samples": 23, "loss": "logistic",
                       "teacher": {"kind": "random", "k": 3}},
           "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 10.0},
           "record": {"times": 5, "test_samples": 101, "classification": True}}
RELU_L1 = {"model": {"d": 3, "m": 9, "activation": "relu", "train_readout": False, "alpha": 2.0},
           "init": {"c": "sign"},
           "problem": {"kind": "finite_data", "n_samples": 17, "loss": "exponential",
                       "teacher": {"kind": "random", "k": 3}},
           "dynamics": {"integrator": "gradient_descent", "step": 0.25, "t_max": 40.0},
           "record": {"times": 7, "spacing": "log", "t_min": 0.5, "test_samples": 51, "classification": True},
           "run": {"seed": 3}}  # seeds 0 and 2 draw a teacher that is positive on all 17 + 51 inputs


def _execute(tmp_path, doc):
    """Run the file's one run in this process; (spec, path of its run file)."""
    path = write(tmp_path, doc)
    (spec,) = sweep.plan(str(path))
    (tmp_path / "out").mkdir()
    summary = sweep.execute(spec, tmp_path / "out")
    assert summary["status"] == "complete", summary
    return spec, summary["path"]


def _series(f, name):
    return f[f"observables/{name}/value"][()]


def _network(W, X, activation, alpha):
    """alpha (1/m) sum_i c_i sigma(a_i . x + b_i), numpy (sigma relu, tanh or identity)."""
    d = X.shape[1]
    z = X @ W[:, :d].T + W[:, d]
    sigma = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "linear": lambda z: z}[activation]
    return alpha * sigma(z) @ W[:, d + 1] / W.shape[0]


@pytest.mark.parametrize("doc, degree", [(RELU_L2, 2), (RELU_L1, 1)], ids=["relu L=2", "relu frozen readout L=1"])
def test_observables_equal_numpy_on_the_stored_particles(tmp_path, doc, degree):
    """Every series at every record against numpy on the stored particles, to 1e-12 relative:
    rho_1 = sqrt((1/m) sum |a_i|^2 + b_i^2), rho_c = sqrt((1/m) sum c_i^2), rho = the norm of
    the trained coordinates, min_n y_n f(x_n) / rho^L, the error fractions (y f <= 0) on the
    training set and on the held-out sample of the run's test stream, and
    |g_k - g_{k-1}| / |g_k| with g = f(X) / rho^L (NaN at the first record)."""
    spec, path = _execute(tmp_path, doc)
    model = spec.config["model"]
    d, alpha = model["d"], model["alpha"]
    experiment = sweep.build(spec.config)
    X, y = experiment.problem.X, experiment.problem.y
    rng = sweep.generator(spec.config, "test")
    n_test = spec.config["record"]["test_samples"]
    X_test = rng.standard_normal((n_test, d))
    y_test = Teacher(experiment.teacher.W, model["activation"]).labels(X_test, rng, spec.config["problem"]["loss"])
    with h5py.File(path) as f:
        frames = f["particles/neurons/position/value"][()]
        recorded = {name: _series(f, name) for name in ("norm", "norm_first_layer", "norm_readout", "train_error",
                                                          "test_error", "normalized_margin", "predictor_change")}
        np.testing.assert_array_equal(f["observables/norm/step"][()], f["observables/risk/step"][()])
    assert frames.shape[0] == spec.config["record"]["times"]
    assert set(y) == set(y_test) == {-1.0, 1.0}  # the teacher (c* of both signs) gives both labels
    first = np.sqrt(np.sum(frames[:, :, : d + 1] ** 2, axis=(1, 2)) / frames.shape[1])
    readout = np.sqrt(np.mean(frames[:, :, d + 1] ** 2, axis=1))
    norm = np.hypot(first, readout) if degree == 2 else first
    outputs = np.stack([_network(W, X, "relu", alpha) for W in frames])
    test_outputs = np.stack([_network(W, X_test, "relu", alpha) for W in frames])
    normalized = outputs / norm[:, None] ** degree
    change = [np.nan] + [np.linalg.norm(normalized[k] - normalized[k - 1]) / np.linalg.norm(normalized[k])
                         for k in range(1, len(frames))]
    expected = {"norm": norm, "norm_first_layer": first, "norm_readout": readout,
                "train_error": np.mean(y * outputs <= 0, axis=1),
                "test_error": np.mean(y_test * test_outputs <= 0, axis=1),
                "normalized_margin": np.min(y * normalized, axis=1), "predictor_change": np.array(change)}
    for name, values in expected.items():
        np.testing.assert_allclose(recorded[name], values, rtol=1e-12, atol=1e-15, err_msg=name)
    # The run learns: the training error falls.
    assert recorded["train_error"][-1] < recorded["train_error"][0]
    if degree == 1:
        np.testing.assert_allclose(readout, 1.0, rtol=1e-15)  # c = +-1 frozen: rho_c stays 1


def test_a_non_homogeneous_activation_records_norms_and_errors_only(tmp_path):
    """tanh has no homogeneity degree: no normalized_margin and no predictor_change; the norms
    and the training error are recorded (checked against numpy)."""
    doc = {**RELU_L2, "model": {**RELU_L2["model"], "activation": "tanh"},
           "record": {"times": 3, "classification": True}}
    spec, path = _execute(tmp_path, doc)
    X, y = sweep.build(spec.config).problem.X, sweep.build(spec.config).problem.y
    with h5py.File(path) as f:
        assert "observables/normalized_margin" not in f and "observables/predictor_change" not in f
        assert "observables/test_error" not in f
        frames = f["particles/neurons/position/value"][()]
        np.testing.assert_allclose(_series(f, "train_error"),
                                   [np.mean(y * _network(W, X, "tanh", 1.0) <= 0) for W in frames], rtol=1e-15)
        np.testing.assert_allclose(_series(f, "norm"), np.sqrt(np.mean(np.sum(frames[:, :, :7] ** 2, axis=2), axis=1)),
                                   rtol=1e-12)


@pytest.mark.parametrize("change, message", [
    ({"problem": {"kind": "population", "loss": "logistic", "teacher": {"kind": "orthonormal", "k": 2}},
      "record": {"classification": True}},
     '[record] classification: the margin and the errors are measured on the training set: needs kind = '
     '"finite_data"'),
    ({"problem": {**RELU_L2["problem"], "loss": "squared"}},
     '[record] classification: needs labels +-1: loss = "logistic" or "exponential", not "squared"'),
    ({"problem": {**RELU_L2["problem"], "tangent": True}},
     "[record] classification: measures the network, not the tangent model: needs tangent = false"),
    ({"record": {"classification": "yes"}}, '[record] classification = "yes"'),
], ids=["population", "squared loss", "tangent model", "not a bool"])
def test_classification_refused_where_it_has_no_meaning(tmp_path, change, message):
    doc = {**RELU_L2, **change}
    path = write(tmp_path, doc)
    result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_run_ids_without_classification_are_unchanged(tmp_path):
    """The key is left out of the resolved config when false: a file without it keeps its id."""
    doc = {**RELU_L2, "record": {"times": 5, "classification": False}}
    (spec,) = sweep.plan(write(tmp_path, doc))
    (plain,) = sweep.plan(write(tmp_path, {**RELU_L2, "record": {"times": 5}}, name="plain.toml"))
    assert "classification" not in spec.config["record"] and spec.id == plain.id


def _linear_model(data, loss, step, t_max, record):
    """The linear model w . x as an experiment file: m = 1, linear activation, no bias,
    readout frozen at c = 1, started at w = 0, on the data file ``data``."""
    return {"model": {"d": data["X"].shape[1], "m": 1, "activation": "linear", "train_readout": False},
            "init": {"c": "one", "tau": 0.0},
            "problem": {"kind": "finite_data", "loss": loss, "data": "data.npz",
                        "teacher": {"kind": "orthonormal", "k": 1}},
            "dynamics": {"integrator": "gradient_descent", "step": step, "t_max": t_max},
            "record": record}


def test_least_squares_from_zero_converges_to_the_minimum_norm_interpolant(tmp_path):
    """N = 7 < d = 13: the interpolants form a 6-dimensional affine space; gradient descent
    from w = 0 stays in the row space of X and converges to pinv(X) y, at the rate
    exp(-lambda_min t) with lambda_min = 0.167 the smallest eigenvalue of X X^T / N. At t = 300
    (step 0.2, below 2 / lambda_max = 2 / 4.67) the distance to pinv(X) y is below 1e-9
    relative (measured 1.3e-15), while the interpolant w* the labels y = X w* came from is far from
    it (w* has a part in the null space of X, which gradient descent from 0 never gains)."""
    rng = np.random.default_rng(3)
    N, d = 7, 13
    X = rng.standard_normal((N, d))
    w_star = rng.standard_normal(d)
    data = {"X": X, "y": X @ w_star}
    np.savez(tmp_path / "data.npz", **data)
    lambdas = np.linalg.eigvalsh(X @ X.T / N)
    assert 0.2 < 2 / lambdas.max()  # the step is stable
    _, path = _execute(tmp_path, _linear_model(data, "squared", 0.2, 300.0, {"times": 3}))
    with h5py.File(path) as f:
        w = f["particles/neurons/position/value"][-1, 0, :d]
        risk = _series(f, "risk")
    minimum_norm = np.linalg.pinv(X) @ data["y"]
    error = np.linalg.norm(w - minimum_norm) / np.linalg.norm(minimum_norm)
    print(f"least squares: relative distance to pinv(X) y {error:.2e}")
    assert error < 1e-9, error
    assert risk[-1] < 1e-20 * risk[0] + 1e-24
    # The test can fail: the interpolant the labels came from is another one, far from w.
    assert np.linalg.norm(w - w_star) > 0.5 * np.linalg.norm(w_star)


def _hard_margin_svm(X, y):
    """argmin |w|^2 subject to y_n w . x_n >= 1 (no bias), by SLSQP."""
    constraint = {"type": "ineq", "fun": lambda w: y * (X @ w) - 1, "jac": lambda w: y[:, None] * X}
    start = np.linalg.lstsq(X, y, rcond=None)[0]
    start = start / np.min(y * (X @ start))  # feasible when the least-squares fit separates
    result = scipy.optimize.minimize(lambda w: w @ w, start, jac=lambda w: 2 * w, constraints=[constraint],
                                     method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert result.success, result.message
    return result.x


def test_exponential_loss_turns_towards_the_hard_margin_svm(tmp_path):
    """Separable data (d = 3, N = 9, labels sign(u . x)), exponential loss, w(0) = 0, step 0.5:
    the angle between w(t) and the SVM direction at t = 10, 100, 1000, 10 000 decreases
    (measured 0.209, 0.170, 0.100, 0.061 rad) and is below 0.07 rad at t = 10 000; the
    recorded normalised margin min y w . x / |w| increases towards the SVM's 1 / |w_svm| =
    0.4921 and never exceeds it (measured 0.365, 0.393, 0.435, 0.457: above 0.9 / |w_svm| at
    the end). The slow approach is the 1 / log t rate of Soudry et al. 2018."""
    rng = np.random.default_rng(5)
    d, N = 3, 9
    u = rng.standard_normal(d)
    X = rng.standard_normal((N, d))
    data = {"X": X, "y": np.where(X @ u >= 0, 1.0, -1.0)}
    np.savez(tmp_path / "data.npz", **data)
    svm = _hard_margin_svm(X, data["y"])
    assert np.min(data["y"] * (X @ svm)) == pytest.approx(1.0, abs=1e-9)
    best_margin = 1 / np.linalg.norm(svm)
    record = {"times": 5, "spacing": "log", "t_min": 10.0, "classification": True}
    _, path = _execute(tmp_path, _linear_model(data, "exponential", 0.5, 1e4, record))
    with h5py.File(path) as f:
        w = f["particles/neurons/position/value"][1:, 0, :d]
        times = f["observables/risk/time"][1:]
        margins = _series(f, "normalized_margin")[1:]
        assert np.isnan(_series(f, "normalized_margin")[0])  # w(0) = 0: rho = 0, no margin
        assert np.isnan(_series(f, "predictor_change")[:2]).all()  # none at t = 0, so none at t = 10
    np.testing.assert_allclose(times, [10.0, 100.0, 1000.0, 10000.0])
    angles = np.arccos(np.clip(w @ svm / np.linalg.norm(w, axis=1) / np.linalg.norm(svm), -1.0, 1.0))
    assert np.all(np.diff(angles) < 0), angles
    assert angles[-1] < 0.07, angles
    assert np.all(np.diff(margins) > 0) and np.all(margins <= best_margin + 1e-12), (margins, best_margin)
    print(f"svm: angles {angles}, margins {margins}, 1 / |w_svm| = {best_margin:.4f}")
    assert margins[-1] > 0.9 * best_margin, (margins, best_margin)


def test_a_run_resumed_between_records_records_the_predictor_change_it_would_have(tmp_path, monkeypatch):
    """SIGINT between two records, then the resume: the checkpoint keeps the particles of the
    last record, so predictor_change at the next record (which compares it with that record)
    is the value of the run never stopped; every series of the file is the same (full-batch
    logistic loss, relu, L = 2; finite-data runs are not batched into ensembles)."""
    import signal

    from meanfield.engine import _interrupt

    doc = {**RELU_L2, "model": {**RELU_L2["model"], "bias": False}, "init": {},
           "problem": {**RELU_L2["problem"], "teacher": {"kind": "random", "k": 3}},
           "record": {**RELU_L2["record"], "checkpoint_seconds": 600.0},
           }
    path = write(tmp_path, doc)
    sweep.run_shard(str(path), tmp_path / "straight")
    calls = {"n": 0}
    original = _interrupt.poll

    def poll():  # records at steps 0, 5, 10, 15, 20: stop between the second and the third
        calls["n"] += 1
        if calls["n"] == 8:
            raise _interrupt.Interrupted(signal.SIGINT)
        original()

    from meanfield.engine import _ensemble, _run
    monkeypatch.setattr(_run._interrupt, "poll", poll)
    monkeypatch.setattr(_ensemble._interrupt, "poll", poll)
    with pytest.raises(_interrupt.Interrupted):
        sweep.run_shard(str(path), tmp_path / "stopped")
    monkeypatch.setattr(_run._interrupt, "poll", original)
    monkeypatch.setattr(_ensemble._interrupt, "poll", original)
    parts = [p for p in (tmp_path / "stopped").iterdir() if p.name.endswith(".h5.part")]
    assert len(parts) == 1
    with h5py.File(parts[0], "r") as f:
        slot = f[f"checkpoint/slot_{int(f['checkpoint/active'][()])}"]
        assert 5 < int(slot["step"][()]) < 10 and int(slot["records"][()]) == 2
    resumed = sweep.run_shard(str(path), tmp_path / "stopped")
    assert {s["status"] for s in resumed} == {"complete"}
    (name,) = [p.name for p in (tmp_path / "straight").glob("*.h5") if p.name != "index.h5"]
    with h5py.File(tmp_path / "straight" / name, "r") as straight, h5py.File(tmp_path / "stopped" / name, "r") as f:
        assert set(f["observables"]) == set(straight["observables"])
        for series in straight["observables"]:
            for column in ("step", "time", "value"):
                a, b = f[f"observables/{series}/{column}"][()], straight[f"observables/{series}/{column}"][()]
                assert np.array_equal(a, b, equal_nan=True), (series, column)
        assert np.array_equal(f["particles/neurons/position/value"][()],
                              straight["particles/neurons/position/value"][()])
        change = _series(straight, "predictor_change")
    assert np.isnan(change[0]) and np.all(np.isfinite(change[1:])) and np.all(change[1:] > 0)
