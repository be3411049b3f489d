"""Lazy versus active training: the tangent model, its kernels, the lazy observables, the report.

References: a numpy tangent model (N x m arrays, small sizes), central finite differences of
the tangent objective, the network itself at W = W0, and the O(1/alpha) law of Chizat & Bach
for the distance between the network and its tangent model at fixed time.
"""
import json

import h5py
import numpy as np
import pytest

import meanfield as mf
from meanfield import kernels
from meanfield._tangent import tangent_predict

from test_gradients import check

D = 3
M = 6
ACTS = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "softplus": lambda z: np.logaddexp(0, z),
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "linear": lambda z: z}
DACTS = {"relu": lambda z: (z > 0).astype(float), "tanh": lambda z: 1 - np.tanh(z) ** 2,
         "softplus": lambda z: 1 / (1 + np.exp(-z)),
         "sigmoid": lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2, "linear": lambda z: np.ones_like(z)}
LOSS = {"squared": (lambda f, y: 0.5 * (y - f) ** 2, lambda f, y: f - y),
        "logistic": (lambda f, y: np.logaddexp(0, -y * f), lambda f, y: -y / (1 + np.exp(y * f)))}


def reference_tangent(model, W, W0, X, y, loss):
    """Numpy tangent model: (alpha T (N,), F_T, v (m, d + 2)) with full N x m arrays."""
    d, m = model.d, W.shape[0]
    s, alpha = model.output_scale(m), model.alpha_value(m)
    sigma, dsigma = ACTS[model.activation], DACTS[model.activation]
    z0 = X @ W0[:, :d].T + W0[:, d]
    shift = X @ (W[:, :d] - W0[:, :d]).T + (W[:, d] - W0[:, d])
    T = s * (sigma(z0) @ W[:, d + 1] + (W0[:, d + 1] * dsigma(z0) * shift).sum(axis=1))
    value_fn, derivative_fn = LOSS[loss]
    F = value_fn(alpha * T, y).mean() / alpha**2
    r = derivative_fn(alpha * T, y)
    G = r[:, None] * W0[:, d + 1] * dsigma(z0)
    grad = np.zeros_like(W)
    grad[:, :d] = s * G.T @ X
    grad[:, d] = s * G.sum(axis=0)
    grad[:, d + 1] = s * sigma(z0).T @ r
    grad /= alpha * len(y)
    v = -m * grad
    v[:, ~model.trainable] = 0
    return alpha * T, F, v


def moved_state(model, m, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    W0 = mf.initialize(model, m, rng, mf.Init(b="gaussian"))
    W = W0.copy()
    W[:, model.trainable] += scale * rng.standard_normal((m, model.trainable.sum()))
    return W0, W


def finite_problem(model, n=40, seed=3, loss="squared"):
    teacher = mf.Teacher.random(model.d, 2, np.random.default_rng(seed), activation=model.activation)
    return mf.FiniteDataProblem.from_teacher(model, teacher, n, np.random.default_rng(seed + 1), loss=loss)


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
@pytest.mark.parametrize("bias, train_readout, loss", [(False, True, "squared"), (True, True, "logistic"),
                                                       (True, False, "squared")])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tangent_kernels_match_numpy_reference(activation, bias, train_readout, loss, dtype):
    """tangent_field and tangent_output against the numpy model, with several tiles."""
    model = mf.Model(D, activation, bias=bias, train_readout=train_readout, alpha=2.5, dtype=dtype)
    W0, W = moved_state(model, M, 0)
    problem = finite_problem(model, n=37, loss=loss)
    X, y = problem.X, problem.y
    prediction, F, v = reference_tangent(model, W.astype(float), W0.astype(float), X.astype(float),
                                         y.astype(float), loss)
    velocity = np.empty_like(W)
    value = kernels.tangent_field(W, W0, X, y, model.activation_code, kernels.LOSS_CODES[loss],
                                  model.output_scale(M), model.alpha_value(M), bias, train_readout, 8, velocity)
    out = np.empty(len(y), dtype=W.dtype)
    kernels.tangent_output(W, W0, X, model.activation_code, model.output_scale(M), 8, out)
    tol = 1e-12 if dtype == "float64" else 2e-5
    assert velocity.dtype == np.dtype(dtype)
    assert abs(value - F) <= tol * max(1.0, abs(F))
    assert np.linalg.norm(velocity - v) <= tol * 10 * np.linalg.norm(v)
    assert np.allclose(model.alpha_value(M) * out, prediction, rtol=tol * 10, atol=tol * 10)


# --------------------------------------------------------------------------- the tangent problem
def _problems(model):
    teacher = mf.Teacher.random(model.d, 2, np.random.default_rng(5), activation=model.activation)
    yield finite_problem(model)
    yield mf.PopulationProblem(model, teacher, method="monte_carlo", mc_samples=50, noise_std=0.2,
                               rng=np.random.default_rng(6))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("bias, alpha", [(False, 1.0), (True, 7.0)])
def test_tangent_model_equals_the_network_at_initialisation(activation, bias, alpha):
    """At W = W0: T = h, F_T = F and the velocities agree (finite data and Monte Carlo)."""
    model = mf.Model(D, activation, bias=bias, alpha=alpha)
    W0, _ = moved_state(model, M, 1)
    for problem in _problems(model):
        tangent = mf.TangentProblem(problem, W0)
        network, linear = problem.evaluate(W0), tangent.evaluate(W0)
        assert linear.value == pytest.approx(network.value, rel=1e-12)
        assert np.allclose(linear.velocity, network.velocity, rtol=1e-12, atol=1e-14)
        X = np.random.default_rng(2).standard_normal((20, D))
        assert np.allclose(tangent.predict(W0, X), model.predict(W0, X), rtol=1e-12, atol=1e-14)
        assert tangent.method == f"tangent_{problem.method}"


OPTIONS = [  # activation, bias, train_readout, scaling, alpha, loss
    ("relu", False, True, "mean_field", 1.0, "squared"),
    ("tanh", True, True, "mean_field", 3.0, "squared"),
    ("softplus", True, False, "mean_field", "sqrt_m", "squared"),
    ("sigmoid", False, False, "sum", 1.0, "squared"),
    ("tanh", True, True, "mean_field", 2.0, "logistic"),
]


@pytest.mark.parametrize("activation, bias, train_readout, scaling, alpha, loss", OPTIONS)
def test_tangent_velocity_is_minus_m_gradient_of_its_objective(activation, bias, train_readout, scaling,
                                                               alpha, loss):
    """Central finite differences of F_T, away from W0 (relative error < 1e-6)."""
    model = mf.Model(D, activation, bias=bias, train_readout=train_readout, scaling=scaling, alpha=alpha)
    W0, W = moved_state(model, M, 2)
    tangent = mf.TangentProblem(finite_problem(model, loss=loss), W0)
    check(tangent, W)
    assert not np.allclose(tangent.risk(W), finite_problem(model, loss=loss).risk(W))  # W is away from W0


def test_tangent_batches_and_refusals():
    """A full, sorted batch is the full objective; closed forms, tracers and wrong widths are refused."""
    model = mf.Model(D, "tanh", alpha=2.0)
    W0, W = moved_state(model, M, 3)
    problem = finite_problem(model, n=12)
    tangent = mf.TangentProblem(problem, W0)
    full, batch = tangent.evaluate(W), tangent.batch_evaluate(W, np.random.default_rng(0), 12)
    assert batch.value == pytest.approx(full.value, rel=1e-12)
    assert np.allclose(batch.velocity, full.velocity, rtol=1e-12)
    closed = mf.PopulationProblem(mf.Model(D, "relu"), mf.Teacher.orthonormal(D, 2))
    with pytest.raises(ValueError, match="evaluated on a sample.*'closed_form'.*method='monte_carlo'"):
        mf.TangentProblem(closed, W0)
    with pytest.raises(ValueError, match="no tracers"):
        tangent.evaluate(W, points=W)
    with pytest.raises(ValueError, match="linearised at W0 of shape"):
        tangent.evaluate(W[:4])
    with pytest.raises(ValueError, match="already a tangent model"):
        mf.TangentProblem(tangent, W0)


# --------------------------------------------------------------------------- the O(1/alpha) law
def _network_and_tangent(alpha, symmetric, m=40, n=15, t=5.0):
    """Train the network and its tangent model (tanh, finite data) to time t from the same W0.

    Without the symmetric init, the readouts are drawn in the null space of the features on
    the sample, so that h(W0, x_n) = 0 there without pairing the particles.
    """
    model = mf.Model(D, "tanh", alpha=alpha)
    problem = finite_problem(model, n=n, seed=1)
    rng = np.random.default_rng(0)
    W0 = mf.initialize(model, m, rng, mf.Init(symmetric=symmetric))
    if not symmetric:
        _, _, Vt = np.linalg.svd(np.tanh(problem.X @ W0[:, :D].T))
        c = Vt[n:].T @ rng.standard_normal(m - n)
        W0[:, -1] = c / c.std()
    assert np.abs(model.predict(W0, problem.X)).max() < 1e-12
    tangent = mf.TangentProblem(problem, W0)
    net = mf.run(problem, mf.gradient_descent(problem, 0.05), W0, t_max=t, times=[0, t])
    lin = mf.run(tangent, mf.gradient_descent(tangent, 0.05), W0, t_max=t, times=[0, t])
    distance = np.sqrt(np.mean((model.predict(net.W, problem.X) - tangent.predict(lin.W, problem.X)) ** 2))
    displacement = np.linalg.norm(net.W - W0) / np.linalg.norm(W0)
    # Both fitted: the risk of the predictor alpha h fell by a factor > 5 (the objective is it / alpha^2).
    assert net.risk[-1] < net.risk[0] / 5 and lin.risk[-1] < lin.risk[0] / 5
    return distance, displacement


def _slope(alphas, values):
    return np.polyfit(np.log(alphas), np.log(values), 1)[0]


@pytest.mark.parametrize("symmetric, distance_slope", [(False, -1.0), (True, -2.0)])
def test_network_approaches_its_tangent_model_like_one_over_alpha(symmetric, distance_slope):
    """Chizat & Bach: at fixed t, |alpha h(W(t)) - alpha T(W_T(t))| = O(1/alpha) and
    |W(t) - W0| / |W0| = O(1/alpha). The bound is attained when h(W0) = 0 on the data without
    pairing (slope -1). With the symmetric init, the second-order terms of the two particles of
    a pair (a, c), (a, -c) cancel, so the distance falls like 1/alpha^2 (slope -2; measured
    -0.994 and -1.999 here). Tolerance +-0.25 on every log-log slope over alpha = 10, 100, 1000.
    """
    alphas = np.array([10.0, 100.0, 1000.0])
    distances, displacements = np.array([_network_and_tangent(a, symmetric) for a in alphas]).T
    assert _slope(alphas, distances) == pytest.approx(distance_slope, abs=0.25)
    assert _slope(alphas, displacements) == pytest.approx(-1.0, abs=0.25)
