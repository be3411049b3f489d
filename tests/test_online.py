"""meanfield.online: the Gaussian averages, the order-parameter ODEs of online SGD and the
finite-d simulation (Saad & Solla 1995; Goldt et al. 2019).

Tolerances are stated at each assertion; Monte Carlo comparisons allow 5 standard errors (a
false failure has probability below 1e-6 per comparison) plus, where said, a stated systematic
allowance. Seeds are fixed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from meanfield import Model, PopulationProblem, Teacher
from meanfield.online import (
    GaussianAverages,
    generalisation_error,
    integrate_order_parameters,
    joint_covariance,
    order_parameter_rates,
    simulate_online_sgd,
    weights_with_overlaps,
)

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _g(activation, z):
    if activation == "erf":
        return special.erf(z / math.sqrt(2.0))
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "tanh":
        return np.tanh(z)
    return z


def _g_prime(activation, z):
    if activation == "erf":
        return SQRT_2_OVER_PI * np.exp(-0.5 * z * z)
    if activation == "relu":
        return (z > 0).astype(np.float64)
    if activation == "tanh":
        return 1.0 - np.tanh(z) ** 2
    return np.ones_like(z)


def _covariance_with(variances, correlations):
    """A covariance from standard deviations and a correlation matrix."""
    std = np.sqrt(np.asarray(variances, dtype=np.float64))
    return np.asarray(correlations) * np.outer(std, std)


def _test_covariances():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((4, 4))
    generic = A @ A.T / 2.0
    # correlations 0.999 between u_0 and u_1, -0.998 between u_2 and u_3, moderate across
    rows = np.array([[1.0, 0.0, 0.0, 0.0],
                     [0.999, math.sqrt(1 - 0.999 ** 2), 0.0, 0.0],
                     [0.3, -0.5, 0.8, 0.0],
                     [0.0, 0.0, 0.0, 0.0]])
    rows[3] = -0.998 * rows[2] / np.linalg.norm(rows[2]) + [0.0, 0.0, 0.0, math.sqrt(1 - 0.998 ** 2)]
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    near_one = rows @ rows.T
    large = _covariance_with([9.0, 16.0, 0.04, 25.0], [[1.0, 0.5, 0.1, -0.6],
                                                       [0.5, 1.0, 0.2, -0.3],
                                                       [0.1, 0.2, 1.0, 0.4],
                                                       [-0.6, -0.3, 0.4, 1.0]])
    return {"generic": generic, "near_plus_minus_one": _covariance_with([1.0, 2.0, 0.5, 1.5], near_one),
            "large_norms": large}


INDEX_PAIRS = [(0, 1), (0, 0), (1, 2), (2, 3), (3, 1)]
INDEX_TRIPLES = [(0, 1, 2), (0, 0, 1), (1, 0, 0), (2, 3, 3), (3, 2, 1), (1, 1, 1), (2, 0, 3)]
INDEX_QUADRUPLES = [(0, 1, 2, 3), (0, 0, 1, 1), (0, 1, 0, 1), (2, 3, 3, 2), (1, 1, 2, 2), (3, 2, 1, 0),
                    (0, 0, 0, 0), (2, 2, 0, 3)]


def _monte_carlo_averages(C, activation, n_samples, seed):
    """Sample means and standard errors of the integrands of I2, I3, I4, J2 at the test indices."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_samples, C.shape[0])) @ np.linalg.cholesky(C).T
    g, gp = _g(activation, u), _g_prime(activation, u)
    out = {}

    def record(name, index, values):
        out[(name, index)] = (values.mean(), values.std() / math.sqrt(n_samples))

    for a, b in INDEX_PAIRS:
        record("i2", (a, b), g[:, a] * g[:, b])
        record("j2", (a, b), gp[:, a] * gp[:, b])
    for a, b, c in INDEX_TRIPLES:
        record("i3", (a, b, c), gp[:, a] * u[:, b] * g[:, c])
    for a, b, c, e in INDEX_QUADRUPLES:
        record("i4", (a, b, c, e), gp[:, a] * gp[:, b] * g[:, c] * g[:, e])
    return out


@pytest.mark.parametrize("case", sorted(_test_covariances()))
@pytest.mark.parametrize("activation", ["erf", "relu", "linear"])
def test_averages_against_monte_carlo(case, activation):
    """Every average (closed form; relu I4 by quasi-Monte Carlo) within 5 standard errors of
    10^6-sample Monte Carlo, plus 1e-3 for relu I4 (its quadrature error, measured below
    2e-4) and 1e-12 for rounding. Covers correlations 0.999 and -0.998, variances from 0.04 to
    25, and repeated indices."""
    C = _test_covariances()[case]
    averages = GaussianAverages(activation)
    reference = _monte_carlo_averages(C, activation, 1_000_000, seed=11)
    failures = []
    for (name, index), (mean, standard_error) in reference.items():
        value = float(getattr(averages, name)(C, *index))
        allowance = 5.0 * standard_error + 1e-12 + (1e-3 if (activation, name) == ("relu", "i4") else 0.0)
        if not abs(value - mean) <= allowance:
            failures.append(f"{name}{index}: {value:.6g} vs MC {mean:.6g} +- {standard_error:.2g}")
    assert not failures, failures


def test_averages_vectorise_over_index_tuples():
    """Broadcast index arrays give the same numbers as one tuple at a time (to 1e-15)."""
    C = _test_covariances()["generic"]
    averages = GaussianAverages("erf")
    a, b, c, e = np.ix_(range(4), range(4), range(4), range(4))
    table = averages.i4(C, a, b, c, e)
    assert table.shape == (4, 4, 4, 4)
    for index in INDEX_QUADRUPLES:
        assert table[index] == pytest.approx(float(averages.i4(C, *index)), abs=1e-15)


# Largest absolute error of the quadrature path allowed per covariance (about 3x the measured one,
# 2026-12-02): (erf I2, J2, I3, I4 by Gauss-Hermite; relu I2, J2, I3 by scrambled Sobol 2^16).
QUADRATURE_TOLERANCES = {
    "generic": {"erf": (1e-12, 1e-12, 1e-9, 7e-5), "relu": (1e-4, 3e-4, 1e-4)},
    "near_plus_minus_one": {"erf": (1e-12, 1e-12, 1e-9, 1e-4), "relu": (1.2e-4, 2e-4, 2e-4)},
    "large_norms": {"erf": (1e-3, 4e-3, 5e-2, 5e-2), "relu": (1.5e-3, 8e-4, 5e-3)},
}


@pytest.mark.parametrize("case", sorted(QUADRATURE_TOLERANCES))
def test_quadrature_accuracy(case):
    """The quadrature path against closed forms, over all 4^n index tuples of each covariance
    (repeated indices included): erf through Gauss-Hermite (orders QUADRATURE_ORDERS by number of
    distinct variables) against the Saad-Solla closed forms; relu through scrambled Sobol against
    the arc-cosine kernel (I2), 1/4 + arcsin(rho)/(2 pi) (J2) and the Stein form of I3.
    Measured largest errors (2026-12-02): variances up to 1.5 (generic; correlations 0.999 and
    -0.998): erf I2, J2 < 1e-15, I3 < 3e-10, I4 2.2e-5 and 3.3e-5; relu I2 4e-5, J2 8e-5, I3 6e-5.
    Variances up to 25: erf I2 3e-4, J2 1.2e-3, I3 1.5e-2, I4 1.6e-2; relu I2 5e-4, J2 2.4e-4,
    I3 1.5e-3 (values of order the variance). Tolerances: QUADRATURE_TOLERANCES, about 3x these."""
    C = _test_covariances()[case]
    idx = np.arange(4)
    shapes = {"i2": (idx[:, None], idx[None, :]), "j2": (idx[:, None], idx[None, :]),
              "i3": (idx[:, None, None], idx[None, :, None], idx[None, None, :]),
              "i4": np.ix_(idx, idx, idx, idx)}
    for activation, tolerances in QUADRATURE_TOLERANCES[case].items():
        exact, quadrature = GaussianAverages(activation), GaussianAverages(activation, method="quadrature")
        for name, tolerance in zip(("i2", "j2", "i3", "i4"), tolerances):
            index = shapes[name]
            error = np.abs(getattr(exact, name)(C, *index) - getattr(quadrature, name)(C, *index)).max()
            assert error < tolerance, (activation, name, error)


def _state(K, M, seed, scale=0.6):
    """A generic (Q, R, T) with [[Q, R], [R^T, T]] positive definite, and generic v, v*."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K + M, K + M + 2)) * scale
    C = A @ A.T / (K + M + 2) + 0.3 * np.eye(K + M)
    v = rng.uniform(0.5, 1.5, K) * rng.choice([-1.0, 1.0], K)
    teacher_v = rng.uniform(0.5, 1.5, M)
    return C[:K, :K], C[:K, K:], C[K:, K:], v, teacher_v


@pytest.mark.parametrize("activation, K, M", [("erf", 3, 2), ("linear", 2, 2), ("relu", 2, 1), ("tanh", 2, 1)])
def test_rates_against_one_sgd_step(activation, K, M):
    """E[Delta Q] d, E[Delta R] d and E[Delta v] d of one SGD step (second layer trained, label
    noise sigma = 0.5, eta = 0.8, eta_v = 0.6) from one state at d = 1000, averaged over 10^5
    independent steps, within 5 standard errors of the ODE rates, plus 3 (K + M) / d times the
    eta^2 term for dQ (the O(1/d) correlation of |x|^2 / d with (lambda, nu)) and 1e-3 for relu
    (its quasi-Monte Carlo I4). tanh goes through the Gauss-Hermite path for every average. The
    eta^2 term is checked to be many standard errors large, so a wrong factor in it would fail."""
    d, n_samples, batch = 1000, 100_000, 5_000
    eta, eta_v, sigma = 0.8, 0.6, 0.5
    Q, R, T, v, teacher_v = _state(K, M, seed=3)
    rng = np.random.default_rng(5)
    W, W_star = weights_with_overlaps(Q, R, T, d, rng)
    sums = {key: [] for key in ("dQ", "dR", "dv")}
    for _ in range(n_samples // batch):
        X = rng.standard_normal((batch, d))
        lam, nu = X @ W.T / math.sqrt(d), X @ W_star.T / math.sqrt(d)
        error = _g(activation, lam) @ v - _g(activation, nu) @ teacher_v - sigma * rng.standard_normal(batch)
        # the step of each sample: Delta w_k = coefficient_k x, coefficient = -(eta/sqrt d) v_k g'_k error
        coefficient = -(eta / math.sqrt(d)) * v * _g_prime(activation, lam) * error[:, None]      # (batch, K)
        cross = coefficient[:, :, None] * lam[:, None, :] * math.sqrt(d)       # Delta w_k . w_l
        square = coefficient[:, :, None] * coefficient[:, None, :] * np.einsum("si,si->s", X, X)[:, None, None]
        sums["dQ"].append(cross + cross.transpose(0, 2, 1) + square)           # d * Delta Q
        sums["dR"].append(coefficient[:, :, None] * nu[:, None, :] * math.sqrt(d))   # d * Delta R
        sums["dv"].append(-eta_v * _g(activation, lam) * error[:, None])               # d * Delta v
    dQ, dR, dv = order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation, True, eta_v)
    # the eta^2 part of dQ: rates(eta) = eta A + eta^2 B, rates(-eta) = -eta A + eta^2 B
    quadratic = 0.5 * (order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation)[0]
                       + order_parameter_rates(Q, R, v, T, teacher_v, -eta, sigma, activation)[0])
    extra = 1e-3 if activation == "relu" else 0.0
    for name, rate in (("dQ", dQ), ("dR", dR), ("dv", dv)):
        samples = np.concatenate(sums[name])          # d * Delta: the rate per unit alpha
        mean, standard_error = samples.mean(axis=0), samples.std(axis=0) / math.sqrt(len(samples))
        allowance = 5.0 * standard_error + extra
        if name == "dQ":
            allowance = allowance + 3.0 * (K + M) / d * np.abs(quadratic)
        assert np.all(np.abs(mean - rate) <= allowance), (name, mean, rate, standard_error)
        if name == "dQ":
            diagonal = np.diag_indices(K)
            assert np.all(np.abs(quadratic[diagonal]) > 10 * standard_error[diagonal])


def test_rates_with_a_minibatch():
    """A step on the mean gradient of B = 4 fresh samples (erf, K = 2, M = 1, sigma = 0.5, eta = 1.5,
    d = 1000, 2 * 10^4 independent steps from one state): its mean d * Delta (Q, R) is within 5
    standard errors of the rates with the eta^2 bracket divided by B, plus 3 (K + M) / d times
    that term (|x|^2 / d) and the O(eta^2 / d) products of two different samples' mean steps,
    eta^2 (B - 1) / (B d) |m_k| |m_l| with m_k = E[v_k g'_k (yhat - y) x] estimated from the same
    samples. The rates of B = 1 (bracket not divided) are more than 10 standard errors off on the
    diagonal, so the 1/B is what the test sees."""
    d, B, steps, chunk = 1000, 4, 20_000, 1_000
    eta, sigma, activation = 1.5, 0.5, "erf"
    K, M = 2, 1
    Q, R, T, v, teacher_v = _state(K, M, seed=4)
    rng = np.random.default_rng(8)
    W, W_star = weights_with_overlaps(Q, R, T, d, rng)
    dQ_samples, dR_samples, mean_steps = [], [], np.zeros((K, d))
    for _ in range(steps // chunk):
        X = rng.standard_normal((chunk, B, d))
        lam, nu = X @ W.T / math.sqrt(d), X @ W_star.T / math.sqrt(d)          # (chunk, B, K), (chunk, B, M)
        error = _g(activation, lam) @ v - _g(activation, nu) @ teacher_v - sigma * rng.standard_normal((chunk, B))
        per_sample = v * _g_prime(activation, lam) * error[..., None]           # (chunk, B, K)
        mean_steps += np.einsum("sbk,sbi->ki", per_sample, X)
        # Delta w_k = -(eta / (sqrt(d) B)) sum_b per_sample_bk x_b
        step = -(eta / (math.sqrt(d) * B)) * np.einsum("sbk,sbi->ski", per_sample, X)   # (chunk, K, d)
        cross = step @ W.T                                                       # Delta w_k . w_l
        dQ_samples.append(cross + cross.transpose(0, 2, 1) + step @ step.transpose(0, 2, 1))
        dR_samples.append(step @ W_star.T)
    m_norm = np.linalg.norm(mean_steps / (steps * B), axis=1)
    dQ, dR, _ = order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation, batch_size=B)
    quadratic = 0.5 * (order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation, batch_size=B)[0]
                       + order_parameter_rates(Q, R, v, T, teacher_v, -eta, sigma, activation, batch_size=B)[0])
    pairs = eta ** 2 * (B - 1) / (B * d) * np.outer(m_norm, m_norm)
    for name, rate, samples in (("dQ", dQ, dQ_samples), ("dR", dR, dR_samples)):
        samples = np.concatenate(samples)
        mean, standard_error = samples.mean(axis=0), samples.std(axis=0) / math.sqrt(len(samples))
        allowance = 5.0 * standard_error
        if name == "dQ":
            allowance = allowance + 3.0 * (K + M) / d * np.abs(quadratic) + pairs
        assert np.all(np.abs(mean - rate) <= allowance), (name, mean, rate, standard_error)
        if name == "dQ":
            single = order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation)[0]
            diagonal = np.diag_indices(K)
            assert np.all(np.abs(mean - single)[diagonal] > 10 * standard_error[diagonal]), (mean, single)


def _symmetric_derivative(function, Q, k, l, h):
    """Derivative of function(Q) along E_kl + E_lk (k != l) or E_kk, by central differences."""
    step = np.zeros_like(Q)
    step[k, l] = step[l, k] = h
    return (function(Q + step) - function(Q - step)) / (2 * h)


@pytest.mark.parametrize("activation", ["erf", "linear"])
def test_small_learning_rate_is_gradient_flow(activation):
    """At eta -> 0 the ODE is the gradient flow of eps_g(Q, R, v) through the chain rule:
    with G_kl = d eps / d Q_kl (symmetric perturbation; twice it on the diagonal) and
    P = d eps / d R by central differences (h = 1e-5),
    dR/dalpha = -eta (G R + P T), dQ/dalpha = -eta (G Q + P R^T) - eta (G Q + P R^T)^T and
    dv/dalpha = -eta_v d eps / d v. The order-eta part of the rates, (rates(eta) - rates(-eta)) /
    (2 eta) at eta = 0.1 (the eta^2 term dropped exactly), agrees within 1e-8 (the
    finite-difference error is about 1e-10)."""
    K, M = 3, 2
    Q, R, T, v, teacher_v = _state(K, M, seed=9)
    h = 1e-5

    def eps(Q_, R_=R, v_=v):
        return generalisation_error(Q_, R_, T, v_, teacher_v, activation)

    G = np.empty((K, K))
    for k in range(K):
        for l in range(K):
            G[k, l] = _symmetric_derivative(eps, Q, k, l, h) * (2.0 if k == l else 1.0)
    P = np.empty((K, M))
    for k in range(K):
        for n in range(M):
            step = np.zeros((K, M))
            step[k, n] = h
            P[k, n] = (eps(Q, R + step) - eps(Q, R - step)) / (2 * h)
    grad_v = np.array([(eps(Q, R, v + h * e) - eps(Q, R, v - h * e)) / (2 * h) for e in np.eye(K)])
    eta = 0.1
    plus = order_parameter_rates(Q, R, v, T, teacher_v, eta, 0.0, activation, True)
    minus = order_parameter_rates(Q, R, v, T, teacher_v, -eta, 0.0, activation, True)
    dQ, dR, dv = ((p - m) / (2 * eta) for p, m in zip(plus, minus))
    drift = G @ Q + P @ R.T
    np.testing.assert_allclose(dR, -(G @ R + P @ T), atol=1e-8)
    np.testing.assert_allclose(dQ, -(drift + drift.T), atol=1e-8)
    np.testing.assert_allclose(dv, -grad_v, atol=1e-8)


@pytest.mark.parametrize("activation", ["erf", "relu", "linear"])
@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_generalisation_error_is_the_population_risk(activation, noise_std):
    """eps_g + sigma^2 / 2 equals meanfield's closed-form population risk (PopulationProblem,
    method "closed_form") within 1e-12 relative, with this normalisation: the committee
    sum_k v_k g(w_k . x / sqrt d) is the mean-field network (1/m) sum_i c_i sigma(a_i . x) with
    m = K, a_k = w_k / sqrt(d), c_k = K v_k, no bias; the teacher has a*_n = w*_n / sqrt(d), c*_n = v*_n;
    the project's risk is (1/2) E[(h - y)^2] with noisy labels (alpha = 1)."""
    K, M, d = 3, 2, 20
    Q, R, T, v, teacher_v = _state(K, M, seed=13, scale=1.0)
    W, W_star = weights_with_overlaps(Q, R, T, d, np.random.default_rng(1))
    particles = np.column_stack([W / math.sqrt(d), np.zeros(K), K * v])
    teacher = Teacher(np.column_stack([W_star / math.sqrt(d), np.zeros(M), teacher_v]), activation=activation)
    problem = PopulationProblem(Model(d, activation=activation), teacher, noise_std=noise_std, method="closed_form")
    expected = problem.risk(particles)
    # the overlaps of the realised weights (rounding aside, Q, R and T)
    value = generalisation_error(W @ W.T / d, W @ W_star.T / d, W_star @ W_star.T / d, v, teacher_v, activation)
    assert value + noise_std ** 2 / 2 == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_weights_with_overlaps_have_them():
    """W W^T / d, W W*^T / d and W* W*^T / d equal Q, R, T to 1e-12."""
    Q, R, T, _, _ = _state(3, 2, seed=2)
    W, W_star = weights_with_overlaps(Q, R, T, 50, np.random.default_rng(0))
    np.testing.assert_allclose(W @ W.T / 50, Q, atol=1e-12)
    np.testing.assert_allclose(W @ W_star.T / 50, R, atol=1e-12)
    np.testing.assert_allclose(W_star @ W_star.T / 50, T, atol=1e-12)
    np.testing.assert_allclose(joint_covariance(Q, R, T)[:3, 3:], R)


def _simulation_error(d, seeds, alpha, train_second_layer, batch_size=1):
    """RMS over seeds of the largest deviation of (Q, R, v) from the ODE over the alpha grid."""
    M = 2
    Q0 = np.array([[0.4, 0.05], [0.05, 0.3]])
    R0 = np.array([[0.1, -0.05], [0.02, 0.15]])
    T = np.eye(M)
    v0, teacher_v = np.array([0.8, 1.1]), np.ones(M)
    ode = integrate_order_parameters(Q0, R0, v0, T, teacher_v, 0.5, alpha, noise_std=0.1,
                                     train_second_layer=train_second_layer, batch_size=batch_size)
    errors = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        W, W_star = weights_with_overlaps(Q0, R0, T, d, rng)
        run = simulate_online_sgd(W, W_star, v0, teacher_v, 0.5, alpha, rng, noise_std=0.1,
                                  train_second_layer=train_second_layer, batch_size=batch_size)
        assert np.allclose(run.alpha, alpha)
        errors.append(max(np.abs(run.Q - ode.Q).max(), np.abs(run.R - ode.R).max(), np.abs(run.v - ode.v).max()))
    return math.sqrt(np.mean(np.square(errors))), ode


@pytest.mark.parametrize("train_second_layer, batch_size", [(False, 1), (True, 1), (True, 3)])
def test_simulation_approaches_the_ode(train_second_layer, batch_size):
    """Online SGD at d = 100, 500, 2000 (erf, K = M = 2, eta = 0.5, sigma = 0.1, alpha up to 2,
    exact initial overlaps; 6 seeds each; one sample per step, or the mean of 3 against the ODE
    of batch_size = 3) deviates from the ODE like d^(-1/2): the RMS over
    seeds of max_alpha |(Q, R, v)_sim - (Q, R, v)_ode| decreases with d, the ratio from d = 100 to
    d = 2000 is above 2.5 (sqrt(20) = 4.5 expected), sqrt(d) * error stays within a factor 2.5
    of its mean over the three d, and the error at d = 2000 is below 0.03."""
    alpha = np.linspace(0.0, 2.0, 9)
    errors = {d: _simulation_error(d, range(6), alpha, train_second_layer, batch_size)[0] for d in (100, 500, 2000)}
    assert errors[100] > errors[500] > errors[2000], errors
    assert errors[100] / errors[2000] > 2.5, errors
    scaled = np.array([errors[d] * math.sqrt(d) for d in errors])
    assert scaled.max() < 2.5 * scaled.mean() and scaled.min() > scaled.mean() / 2.5, errors
    assert errors[2000] < 0.03, errors


def test_plateau_then_specialisation():
    """erf, K = M = 2, T = I, v = v* = 1 fixed, eta = 0.5, sigma = 0, Q0 = 0.25 I and student-teacher
    overlaps of order 1e-3: eps_g falls from 0.46 to a plateau (alpha 20 to 120: relative change
    below 5%, value near 0.015) where R is unspecialised (every R_kn within 0.02 of the others at
    alpha = 60), then drops below 1% of the plateau by alpha = 400 with R specialised: one
    entry per row above 0.9 in distinct columns, the others below 0.05."""
    alpha = np.linspace(0.0, 400.0, 81)
    run = integrate_order_parameters(0.25 * np.eye(2), np.array([[1e-3, 2e-4], [-1e-4, 5e-4]]), np.ones(2),
                                     np.eye(2), np.ones(2), 0.5, alpha)
    error = run.generalisation_error

    def at(value):
        return int(np.argmin(np.abs(alpha - value)))

    plateau = error[at(20):at(120) + 1]
    assert error[0] > 0.4
    assert plateau.max() - plateau.min() < 0.05 * plateau.mean()
    assert 0.005 < plateau.mean() < 0.03
    assert np.ptp(run.R[at(60)]) < 0.02
    assert error[-1] < 0.01 * plateau.mean()
    final = run.R[-1]
    winners = np.argmax(final, axis=1)
    assert sorted(winners) == [0, 1]
    assert np.all(final[np.arange(2), winners] > 0.9)
    assert np.all(final[np.arange(2), 1 - winners] < 0.05)


def test_bad_input_is_refused():
    """Inconsistent shapes, a decreasing alpha grid, an unknown activation or method, a
    non-positive-semidefinite joint covariance, d below K + M and a batch size that is not an
    integer >= 1 raise ValueError."""
    Q, R, T, v, teacher_v = _state(2, 2, seed=1)
    with pytest.raises(ValueError):
        integrate_order_parameters(Q, R, v[:1], T, teacher_v, 0.5, [0.0, 1.0])
    with pytest.raises(ValueError):
        integrate_order_parameters(Q, R, v, T, teacher_v, 0.5, [1.0, 0.0])
    with pytest.raises(ValueError):
        GaussianAverages("cosine")
    with pytest.raises(ValueError):
        GaussianAverages("relu", method="closed_form")
    with pytest.raises(ValueError):
        weights_with_overlaps(Q, 10.0 * np.ones((2, 2)), T, 10, np.random.default_rng(0))
    with pytest.raises(ValueError):
        weights_with_overlaps(Q, R, T, 3, np.random.default_rng(0))
    W, W_star = weights_with_overlaps(Q, R, T, 10, np.random.default_rng(0))
    with pytest.raises(ValueError):
        simulate_online_sgd(W, W_star[:, :5], v, teacher_v, 0.5, [0.0, 1.0], np.random.default_rng(0))
    with pytest.raises(ValueError):
        simulate_online_sgd(W, W_star, v, teacher_v, 0.5, [0.0, 1.0], np.random.default_rng(0), activation="cosine")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            integrate_order_parameters(Q, R, v, T, teacher_v, 0.5, [0.0, 1.0], batch_size=bad)
        with pytest.raises(ValueError, match="batch_size"):
            simulate_online_sgd(W, W_star, v, teacher_v, 0.5, [0.0, 1.0], np.random.default_rng(0), batch_size=bad)
