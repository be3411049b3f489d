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
