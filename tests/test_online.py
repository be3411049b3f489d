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


INDEX_PAIRS = [(0, 1), (0, 0), (1, 2), (2, 3), (3, 1), (1, 0)]
INDEX_TRIPLES = [(0, 1, 2), (0, 0, 1), (1, 0, 0), (2, 3, 3), (3, 2, 1), (1, 1, 1), (2, 0, 3)]
INDEX_QUADRUPLES = [(0, 1, 2, 3), (0, 0, 1, 1), (0, 1, 0, 1), (2, 3, 3, 2), (1, 1, 2, 2), (3, 2, 1, 0),
                    (0, 0, 0, 0), (2, 2, 0, 3), (0, 1, 2, 2), (3, 2, 0, 1), (2, 3, 0, 3), (0, 2, 3, 3)]
# Means of u (the biases of student and teacher fields): none, and large ones of both signs.
TEST_MEANS = {"zero": None, "biased": np.array([2.5, -3.0, 0.7, -1.2])}
# relu I4 is the conditional Gauss-Legendre rule: its error (measured below 8e-6 on these
# covariances, tests below) is allowed on top of the Monte Carlo's.
RELU_I4_ALLOWANCE = 2e-5


def _monte_carlo_averages(C, activation, n_samples, seed, mu=None, indices=None):
    """Sample means and standard errors of the integrands of I2, I3, I4, J2, K2 at the test
    indices (or at ``indices``: name -> list of tuples), u ~ N(mu, C) by any square root of C."""
    rng = np.random.default_rng(seed)
    mu = np.zeros(len(C)) if mu is None else np.asarray(mu)
    eigenvalues, eigenvectors = np.linalg.eigh(C)
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    centred = rng.standard_normal((n_samples, C.shape[0])) @ root.T
    u = centred + mu
    g, gp = _g(activation, u), _g_prime(activation, u)
    integrands = {"i2": lambda a, b: g[:, a] * g[:, b], "j2": lambda a, b: gp[:, a] * gp[:, b],
                  "k2": lambda a, c: gp[:, a] * g[:, c], "i3": lambda a, b, c: gp[:, a] * centred[:, b] * g[:, c],
                  "i4": lambda a, b, c, e: gp[:, a] * gp[:, b] * g[:, c] * g[:, e]}
    indices = indices or {"i2": INDEX_PAIRS, "j2": INDEX_PAIRS, "k2": INDEX_PAIRS, "i3": INDEX_TRIPLES,
                          "i4": INDEX_QUADRUPLES}
    out = {}
    for name, tuples in indices.items():
        for index in tuples:
            values = integrands[name](*index)
            out[(name, index)] = (values.mean(), values.std() / math.sqrt(n_samples))
    return out


def _monte_carlo_failures(averages, C, mu, reference):
    """The averages outside 5 standard errors (+ 1e-12 rounding, + RELU_I4_ALLOWANCE for relu I4)."""
    failures = []
    for (name, index), (mean, standard_error) in reference.items():
        value = float(getattr(averages, name)(C, *index, mu=mu))
        allowance = 5.0 * standard_error + 1e-12
        if (averages.activation, name) == ("relu", "i4"):
            allowance += RELU_I4_ALLOWANCE
        if not abs(value - mean) <= allowance:
            failures.append(f"{name}{index}: {value:.6g} vs MC {mean:.6g} +- {standard_error:.2g}")
    return failures


@pytest.mark.parametrize("means", sorted(TEST_MEANS))
@pytest.mark.parametrize("case", sorted(_test_covariances()))
@pytest.mark.parametrize("activation", ["erf", "relu", "linear"])
def test_averages_against_monte_carlo(case, activation, means):
    """Every average (closed forms; relu I4 by its conditional rule) within 5 standard errors of
    10^6-sample Monte Carlo, plus RELU_I4_ALLOWANCE for relu I4 and 1e-12 for rounding. Covers
    correlations 0.999 and -0.998, variances from 0.04 to 25, means from -3 to 2.5 (and zero),
    and repeated indices (I3(k, k, j), I4(k, l, k, l), I4(k, k, k, k), ...)."""
    C, mu = _test_covariances()[case], TEST_MEANS[means]
    reference = _monte_carlo_averages(C, activation, 1_000_000, seed=11, mu=mu)
    failures = _monte_carlo_failures(GaussianAverages(activation), C, mu, reference)
    assert not failures, failures


def _singular_covariance():
    """u_0 of variance 0, u_2 = 1.5 u_1 - 0.5 (parallel, mean shifted: the same step as u_1 only
    where their means allow), u_3 = -0.7 u_1 (antiparallel), u_4 generic: rank 2 with 5 variables,
    and the mean (the first variable's nonzero: its step is then H(mu_0), not a convention)."""
    rng = np.random.default_rng(3)
    root = rng.standard_normal((5, 3))
    root[0] = 0.0
    root[2], root[3] = 1.5 * root[1], -0.7 * root[1]
    return root @ root.T, np.array([0.8, 0.5, 0.25, -0.35, -1.0])


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_averages_with_singular_covariance(activation):
    """A singular covariance (a variable of variance 0, exactly parallel and antiparallel pairs,
    whose Stein terms must cancel exactly where relu(u_1) relu(u_3) = 0) against 10^6-sample Monte
    Carlo, within 5 standard errors (+ RELU_I4_ALLOWANCE for relu I4): finite values everywhere."""
    C, mu = _singular_covariance()
    pairs = [(0, 1), (1, 2), (1, 3), (3, 1), (2, 2), (0, 0), (3, 4), (2, 3)]
    indices = {"i2": pairs, "j2": pairs, "k2": pairs,
               "i3": [(0, 1, 2), (1, 2, 3), (3, 0, 1), (2, 2, 1), (0, 0, 0), (1, 3, 3), (3, 1, 4)],
               "i4": [(0, 1, 2, 3), (1, 2, 3, 4), (1, 3, 2, 4), (0, 4, 1, 1), (4, 1, 2, 0), (1, 2, 1, 2),
                      (2, 3, 4, 4), (0, 0, 3, 3), (1, 2, 4, 4), (1, 3, 4, 2), (4, 0, 1, 3)]}
    reference = _monte_carlo_averages(C, activation, 1_000_000, seed=5, mu=mu, indices=indices)
    failures = _monte_carlo_failures(GaussianAverages(activation), C, mu, reference)
    assert not failures, failures


def test_zero_mean_is_no_mean():
    """A zero mean vector gives bit for bit the averages without one (the centred formulas), for
    every activation path (closed forms, relu's rule, Gauss-Hermite, Sobol)."""
    C = _test_covariances()["generic"]
    idx = np.arange(4)
    for averages in (GaussianAverages("erf"), GaussianAverages("relu"), GaussianAverages("linear"),
                     GaussianAverages("tanh"), GaussianAverages("relu", method="quadrature")):
        for name, index in (("i2", (idx[:, None], idx)), ("j2", (idx[:, None], idx)), ("k2", (idx[:, None], idx)),
                            ("i3", (idx[:, None, None], idx[:, None], idx)), ("i4", (0, 1, idx[:, None], idx))):
            method = getattr(averages, name)
            np.testing.assert_array_equal(method(C, *index), method(C, *index, mu=np.zeros(4)))


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


# The quadrature path with the means of TEST_MEANS["biased"] against the closed forms with means,
# largest absolute error allowed per covariance (about 3x the measured one, 2026-12-03):
# erf (I2, J2, I3, I4, K2) by Gauss-Hermite; relu (I2, J2, I3, K2) by scrambled Sobol 2^16.
QUADRATURE_TOLERANCES_WITH_MEANS = {
    "generic": {"erf": (1e-12, 1e-12, 1e-12, 1e-5, 1e-12), "relu": (5e-5, 5e-4, 2e-4, 7e-5)},
    "near_plus_minus_one": {"erf": (1e-12, 1e-12, 1e-12, 1.5e-5, 1e-12), "relu": (1e-4, 2e-4, 5e-4, 1.5e-4)},
    "large_norms": {"erf": (5e-4, 2e-3, 3e-2, 3e-2, 1.5e-3), "relu": (1.5e-3, 4e-4, 6e-3, 2e-4)},
}


@pytest.mark.parametrize("case", sorted(QUADRATURE_TOLERANCES_WITH_MEANS))
def test_quadrature_accuracy_with_means(case):
    """The cubature shifted by the mean (u = mu + L z) against the closed forms with means, over
    all 4^n index tuples: erf by Gauss-Hermite, relu by Sobol. Measured largest errors
    (2026-12-03), means (2.5, -3, 0.7, -1.2): erf I2, J2, K2 below 1e-15 and I3 below 3e-13 at
    variances up to 1.5 (I4 3.4e-6 and 4.8e-6), the Gauss-Hermite check of the erf closed forms
    with means; at variances up to 25 erf I2 1.5e-4, J2 6.6e-4, I3 1.1e-2, I4 1.1e-2, K2 4.8e-4.
    relu (Sobol, its randomised error): I2 1.7e-5 to 4.6e-4, J2 6e-5 to 1.5e-4, I3 5e-5 to 2e-3,
    K2 2e-5 to 6.5e-5. Tolerances: QUADRATURE_TOLERANCES_WITH_MEANS."""
    C, mu = _test_covariances()[case], TEST_MEANS["biased"]
    idx = np.arange(4)
    shapes = {"i2": (idx[:, None], idx), "j2": (idx[:, None], idx), "k2": (idx[:, None], idx),
              "i3": (idx[:, None, None], idx[:, None], idx), "i4": np.ix_(idx, idx, idx, idx)}
    for activation, tolerances in QUADRATURE_TOLERANCES_WITH_MEANS[case].items():
        exact, quadrature = GaussianAverages(activation), GaussianAverages(activation, method="quadrature")
        names = ("i2", "j2", "i3", "i4", "k2") if activation == "erf" else ("i2", "j2", "i3", "k2")
        for name, tolerance in zip(names, tolerances):
            index = shapes[name]
            error = np.abs(getattr(exact, name)(C, *index, mu=mu) - getattr(quadrature, name)(C, *index, mu=mu)).max()
            assert error < tolerance, (activation, name, error)


@pytest.mark.parametrize("means", sorted(TEST_MEANS))
@pytest.mark.parametrize("case", sorted(_test_covariances()))
def test_relu_i4_rule_converges(case, means):
    """relu I4 by the conditional rule with RELU_I4_NODES = 24 Gauss-Legendre nodes per piece
    against the same rule with 64, over all 4^4 index tuples. Measured (2026-12-03): below 1e-10
    except for correlations 0.999 and -0.998, where 1.0e-6 (the conditional variance of a relu
    variable given the step variables is then tiny, and its kink sharp). Allowed: 3e-6 there,
    1e-9 elsewhere."""
    from meanfield.online._integrals import _relu_i4

    C, mu = _test_covariances()[case], TEST_MEANS[means]
    mu = np.zeros(4) if mu is None else mu
    idx = np.arange(4)
    tuples = [np.array(index) for index in np.broadcast_arrays(*np.ix_(idx, idx, idx, idx))]
    error = np.abs(_relu_i4(C, mu, *tuples) - _relu_i4(C, mu, *tuples, order=64)).max()
    assert error < (3e-6 if case == "near_plus_minus_one" else 1e-9), error


def test_relu_i4_rule_is_smooth():
    """The rule is a smooth function of (mu, C), unlike the Sobol estimate (piecewise constant:
    a node crossing a kink): along C(t) = (R + t A)(R + t A)^T, mu(t) = mu + t m, the second
    difference (f(-h) - 2 f(0) + f(h)) / h^2 of every I4(a, b, c, e) stays the same from h = 1e-3
    to 1e-4 (within 20%: a second derivative), while Sobol's grows like 1/h^2 (a jump).
    Measured (2026-12-03): rule 0.046 at both h, Sobol 160 and 3960."""
    C0, mu0 = _test_covariances()["generic"], np.array([0.5, -0.3, 0.2, 0.4])
    rng = np.random.default_rng(0)
    eigenvalues, eigenvectors = np.linalg.eigh(C0)
    root = eigenvectors * np.sqrt(eigenvalues)
    A, m = rng.standard_normal((4, 4)) / 10, rng.standard_normal(4) / 5
    idx = np.arange(4)
    tuples = np.ix_(idx, idx, idx, idx)

    def second_difference(averages, h):
        values = [averages.i4((root + t * A) @ (root + t * A).T, *tuples, mu=mu0 + t * m) for t in (-h, 0.0, h)]
        return np.abs(values[0] - 2 * values[1] + values[2]).max() / h ** 2

    rule = [second_difference(GaussianAverages("relu"), h) for h in (1e-3, 1e-4)]
    assert rule[1] < 1.2 * rule[0] and rule[0] < 1.0, rule
    sobol = [second_difference(GaussianAverages("relu", method="quadrature"), h) for h in (1e-3, 1e-4)]
    assert sobol[1] > 10 * sobol[0], sobol


def _state(K, M, seed, scale=0.6):
    """A generic (Q, R, T) with [[Q, R], [R^T, T]] positive definite, and generic v, v*."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K + M, K + M + 2)) * scale
    C = A @ A.T / (K + M + 2) + 0.3 * np.eye(K + M)
    v = rng.uniform(0.5, 1.5, K) * rng.choice([-1.0, 1.0], K)
    teacher_v = rng.uniform(0.5, 1.5, M)
    return C[:K, :K], C[:K, K:], C[K:, K:], v, teacher_v


# Biases of the tests with biases: student b (first K), teacher b* (first M); |b| up to 1.2.
STUDENT_BIASES = np.array([0.4, -0.8, 1.2])
TEACHER_BIASES = np.array([-0.5, 1.0])


@pytest.mark.parametrize("activation, K, M, biased", [
    ("erf", 3, 2, False), ("linear", 2, 2, False), ("relu", 2, 1, False), ("tanh", 2, 1, False),
    ("erf", 3, 2, True), ("relu", 2, 2, True), ("tanh", 2, 1, True)])
def test_rates_against_one_sgd_step(activation, K, M, biased):
    """E[Delta Q] d, E[Delta R] d, E[Delta v] d (and E[Delta b] d with biases) of one SGD step
    (second layer trained, label noise sigma = 0.5, eta = 0.8, eta_v = 0.6, eta_b = 0.7) from one
    state at d = 1000, averaged over 10^5 independent steps, within 5 standard errors of the ODE
    rates, plus 3 (K + M) / d times the eta^2 term for dQ (the O(1/d) correlation of |x|^2 / d
    with (lambda, nu)) and 1e-5 for relu (its I4 rule). With biases the fields are
    lambda = w . x / sqrt(d) + b, nu = w* . x / sqrt(d) + b* (b = STUDENT_BIASES, b* =
    TEACHER_BIASES), and b trains: b_k <- b_k - (eta_b / d) v_k g'(lambda_k) (yhat - y). tanh goes
    through the Gauss-Hermite path (shifted by the means) for every average. The eta^2 term is
    checked to be many standard errors large, so a wrong factor in it would fail."""
    d, n_samples, batch = 1000, 100_000, 5_000
    eta, eta_v, eta_b, sigma = 0.8, 0.6, 0.7, 0.5
    Q, R, T, v, teacher_v = _state(K, M, seed=3)
    b = STUDENT_BIASES[:K] if biased else np.zeros(K)
    teacher_b = TEACHER_BIASES[:M] if biased else np.zeros(M)
    rng = np.random.default_rng(5)
    W, W_star = weights_with_overlaps(Q, R, T, d, rng)
    sums = {key: [] for key in ("dQ", "dR", "dv", "db")}
    for _ in range(n_samples // batch):
        X = rng.standard_normal((batch, d))
        projection, nu = X @ W.T / math.sqrt(d), X @ W_star.T / math.sqrt(d) + teacher_b
        lam = projection + b
        error = _g(activation, lam) @ v - _g(activation, nu) @ teacher_v - sigma * rng.standard_normal(batch)
        # the step of each sample: Delta w_k = coefficient_k x, coefficient = -(eta/sqrt d) v_k g'_k error
        coefficient = -(eta / math.sqrt(d)) * v * _g_prime(activation, lam) * error[:, None]      # (batch, K)
        cross = coefficient[:, :, None] * projection[:, None, :] * math.sqrt(d)     # Delta w_k . w_l
        square = coefficient[:, :, None] * coefficient[:, None, :] * np.einsum("si,si->s", X, X)[:, None, None]
        sums["dQ"].append(cross + cross.transpose(0, 2, 1) + square)           # d * Delta Q
        sums["dR"].append(coefficient[:, :, None] * (nu - teacher_b)[:, None, :] * math.sqrt(d))   # d * Delta R
        sums["dv"].append(-eta_v * _g(activation, lam) * error[:, None])               # d * Delta v
        sums["db"].append(-eta_b * v * _g_prime(activation, lam) * error[:, None])     # d * Delta b
    biases = {"b": b, "teacher_b": teacher_b, "train_bias": True, "bias_learning_rate": eta_b} if biased else {}
    rates = order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation, True, eta_v, **biases)
    # the eta^2 part of dQ: rates(eta) = eta A + eta^2 B, rates(-eta) = -eta A + eta^2 B
    quadratic = 0.5 * (order_parameter_rates(Q, R, v, T, teacher_v, eta, sigma, activation, **biases)[0]
                       + order_parameter_rates(Q, R, v, T, teacher_v, -eta, sigma, activation, **biases)[0])
    extra = 1e-5 if activation == "relu" else 0.0
    names = ("dQ", "dR", "dv", "db") if biased else ("dQ", "dR", "dv")
    assert len(rates) == len(names)
    for name, rate in zip(names, rates):
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


@pytest.mark.parametrize("activation, biased", [("erf", False), ("linear", False), ("erf", True), ("relu", True),
                                                ("linear", True)])
def test_small_learning_rate_is_gradient_flow(activation, biased):
    """At eta -> 0 the ODE is the gradient flow of eps_g(Q, R, v, b) through the chain rule:
    with G_kl = d eps / d Q_kl (symmetric perturbation; twice it on the diagonal) and
    P = d eps / d R by central differences (h = 1e-5),
    dR/dalpha = -eta (G R + P T), dQ/dalpha = -eta (G Q + P R^T) - eta (G Q + P R^T)^T,
    dv/dalpha = -eta_v d eps / d v and, with biases (b = STUDENT_BIASES, b* = TEACHER_BIASES,
    trained), db/dalpha = -eta_b d eps / d b (eta_b = 0.7 eta: its own rate). The order-eta part
    of the rates, (rates(eta) - rates(-eta)) / (2 eta) at eta = 0.1 (the eta^2 term dropped
    exactly), agrees within 1e-8 (the finite-difference error is about 1e-10). relu with biases
    (closed forms with means) is smooth at this generic state."""
    K, M = 3, 2
    Q, R, T, v, teacher_v = _state(K, M, seed=9)
    b = STUDENT_BIASES if biased else np.zeros(K)
    teacher_b = TEACHER_BIASES if biased else None
    h = 1e-5

    def eps(Q_, R_=R, v_=v, b_=b):
        return generalisation_error(Q_, R_, T, v_, teacher_v, activation, b=b_, teacher_b=teacher_b)

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
    grad_b = np.array([(eps(Q, R, v, b + h * e) - eps(Q, R, v, b - h * e)) / (2 * h) for e in np.eye(K)])
    eta = 0.1
    biases = {"b": b, "teacher_b": teacher_b, "train_bias": True, "bias_learning_rate": 0.7 * eta} if biased else {}
    plus = order_parameter_rates(Q, R, v, T, teacher_v, eta, 0.0, activation, True, **biases)
    biases = {**biases, "bias_learning_rate": -0.7 * eta} if biased else {}
    minus = order_parameter_rates(Q, R, v, T, teacher_v, -eta, 0.0, activation, True, **biases)
    dQ, dR, dv, *db = ((p - m) / (2 * eta) for p, m in zip(plus, minus))
    drift = G @ Q + P @ R.T
    np.testing.assert_allclose(dR, -(G @ R + P @ T), atol=1e-8)
    np.testing.assert_allclose(dQ, -(drift + drift.T), atol=1e-8)
    np.testing.assert_allclose(dv, -grad_v, atol=1e-8)
    if biased:
        np.testing.assert_allclose(db[0], -0.7 * grad_b, atol=1e-8)
        assert np.abs(grad_b).max() > 1e-2          # the bias gradient is not trivially zero


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


def _simulation_error(d, seeds, alpha, train_second_layer, activation="erf", biased=False, batch_size=1):
    """RMS over seeds of the largest deviation of (Q, R, v, b) from the ODE over the alpha grid.
    With ``biased``: student biases (0.3, -0.2) that train, teacher biases (0.5, -1)."""
    M = 2
    Q0 = np.array([[0.4, 0.05], [0.05, 0.3]])
    R0 = np.array([[0.1, -0.05], [0.02, 0.15]])
    T = np.eye(M)
    v0, teacher_v = np.array([0.8, 1.1]), np.ones(M)
    biases = {"b0": np.array([0.3, -0.2]), "teacher_b": np.array([0.5, -1.0]), "train_bias": True} if biased else {}
    ode = integrate_order_parameters(Q0, R0, v0, T, teacher_v, 0.5, alpha, noise_std=0.1, activation=activation,
                                     train_second_layer=train_second_layer, batch_size=batch_size, **biases)
    errors = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        W, W_star = weights_with_overlaps(Q0, R0, T, d, rng)
        run = simulate_online_sgd(W, W_star, v0, teacher_v, 0.5, alpha, rng, noise_std=0.1, activation=activation,
                                  train_second_layer=train_second_layer, batch_size=batch_size, **biases)
        assert np.allclose(run.alpha, alpha)
        errors.append(max(np.abs(getattr(run, x) - getattr(ode, x)).max() for x in "QRvb"))
    return math.sqrt(np.mean(np.square(errors))), ode


@pytest.mark.parametrize("train_second_layer, activation, biased, batch_size",
                         [(False, "erf", False, 1), (True, "erf", False, 1), (True, "relu", True, 1),
                          (True, "erf", True, 3)])
def test_simulation_approaches_the_ode(train_second_layer, activation, biased, batch_size):
    """Online SGD at d = 100, 500, 2000 (erf, K = M = 2, eta = 0.5, sigma = 0.1, alpha up to 2,
    exact initial overlaps; 6 seeds each; relu with trained biases, student (0.3, -0.2) and
    teacher (0.5, -1); erf with those biases and the mean of 3 samples per step against the ODE
    of batch_size = 3) deviates from the ODE like d^(-1/2): the RMS over seeds of
    max_alpha |(Q, R, v, b)_sim - (Q, R, v, b)_ode| decreases with d, the ratio from d = 100 to
    d = 2000 is above 2.5 (sqrt(20) = 4.5 expected), sqrt(d) * error stays within a factor 2.5
    of its mean over the three d, and the error at d = 2000 is below 0.03."""
    alpha = np.linspace(0.0, 2.0, 9)
    errors = {d: _simulation_error(d, range(6), alpha, train_second_layer, activation, biased, batch_size)[0]
              for d in (100, 500, 2000)}
    assert errors[100] > errors[500] > errors[2000], errors
    assert errors[100] / errors[2000] > 2.5, errors
    scaled = np.array([errors[d] * math.sqrt(d) for d in errors])
    assert scaled.max() < 2.5 * scaled.mean() and scaled.min() > scaled.mean() / 2.5, errors
    assert errors[2000] < 0.03, errors


def test_biased_simulation_needs_the_bias_rate():
    """The relu run with trained biases of test_simulation_approaches_the_ode at d = 2000 is far
    from the ODE whose biases do not train (the biases' drift matters on this time scale): the
    deviation of b alone is above 0.05 (measured 0.079; the ODE with trained biases: 0.019)."""
    alpha = np.linspace(0.0, 2.0, 9)
    biases = {"b0": np.array([0.3, -0.2]), "teacher_b": np.array([0.5, -1.0])}
    Q0, R0, T = np.array([[0.4, 0.05], [0.05, 0.3]]), np.array([[0.1, -0.05], [0.02, 0.15]]), np.eye(2)
    rng = np.random.default_rng(0)
    W, W_star = weights_with_overlaps(Q0, R0, T, 2000, rng)
    run = simulate_online_sgd(W, W_star, np.array([0.8, 1.1]), np.ones(2), 0.5, alpha, rng, noise_std=0.1,
                              activation="relu", train_second_layer=True, train_bias=True, **biases)
    fixed = integrate_order_parameters(Q0, R0, np.array([0.8, 1.1]), T, np.ones(2), 0.5, alpha, noise_std=0.1,
                                       activation="relu", train_second_layer=True, **biases)
    assert np.abs(run.b - fixed.b).max() > 0.05


def test_zero_biases_are_no_biases():
    """Zero biases (student and teacher) reproduce the results without biases bit for bit: the
    rates (also with train_bias, whose db is then returned), eps_g, the integrated trajectory
    (relu and erf) and the finite-d simulation; the trajectory's b and teacher_b are zeros."""
    K, M = 2, 2
    Q, R, T, v, teacher_v = _state(K, M, seed=4)
    zeros = {"b": np.zeros(K), "teacher_b": np.zeros(M)}
    for activation in ("erf", "relu", "tanh"):
        plain = order_parameter_rates(Q, R, v, T, teacher_v, 0.6, 0.2, activation, True, 0.3)
        biased = order_parameter_rates(Q, R, v, T, teacher_v, 0.6, 0.2, activation, True, 0.3, **zeros,
                                       train_bias=True)
        assert len(plain) == 3 and len(biased) == 4
        for x, y in zip(plain, biased):
            np.testing.assert_array_equal(x, y)
        assert generalisation_error(Q, R, T, v, teacher_v, activation) == \
            generalisation_error(Q, R, T, v, teacher_v, activation, **zeros)
    alpha = np.linspace(0.0, 1.0, 5)
    for activation in ("erf", "relu"):
        plain = integrate_order_parameters(Q, R, v, T, teacher_v, 0.5, alpha, 0.1, activation, True)
        biased = integrate_order_parameters(Q, R, v, T, teacher_v, 0.5, alpha, 0.1, activation, True,
                                            b0=np.zeros(K), teacher_b=np.zeros(M))
        for name in ("Q", "R", "v", "generalisation_error", "b", "teacher_b"):
            np.testing.assert_array_equal(getattr(plain, name), getattr(biased, name))
        assert plain.b.shape == (5, K) and not plain.b.any() and not plain.teacher_b.any()
    W, W_star = weights_with_overlaps(Q, R, T, 50, np.random.default_rng(0))
    runs = [simulate_online_sgd(W, W_star, v, teacher_v, 0.5, alpha, np.random.default_rng(1), 0.1, "relu", True,
                                **extra) for extra in ({}, {"b0": np.zeros(K), "teacher_b": np.zeros(M)})]
    for name in ("Q", "R", "v", "generalisation_error", "b"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))


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
