"""The Hermite-series pair kernel (kernels/population_series.py) against independent references.

The references below share no code with the kernel:

* ``np_sigma``: the activations and their first two derivatives in numpy / scipy.special;
* ``quad_pair``: kappa, alpha, beta, gamma of one pair by scipy.integrate: the conditional
  expectation over the short direction V (Z_j = rho Z_i + sqrt(1 - rho^2) V) by the adaptive
  ``quad_vec`` at every node of a composite 20-point Gauss-Legendre rule in Z_i (240 panels on
  [-12, 12]);
* ``trapezoid_pair``: the same four numbers by a tensor trapezoid rule in the rotated basis
  (spectrally accurate for these analytic integrands), summed over all pairs of a small
  problem by ``reference_sums``;
* ``quad_coefficient``: a Hermite coefficient E[g(r Z + b) He_n(Z)] / sqrt(n!) by
  ``scipy.integrate.quad`` with scipy's He_n;
* central finite differences of K for G;
* for the linear activation, the exact kappa = a_i.a_j + b_i b_j.
"""
import math

import numba
import numpy as np
import pytest
from scipy import integrate, special

from meanfield.kernels import population_series as ps
from meanfield.kernels._scalar import ACTIVATION_CODES

SMOOTH = ("tanh", "sigmoid", "softplus", "gelu", "erf")
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------

def np_sigma(name, t, k=0):
    """k-th derivative (k = 0, 1, 2) of the activation ``name`` at t, float64."""
    t = np.asarray(t, dtype=np.float64)
    if name == "tanh":
        s = np.tanh(t)
        return (s, 1.0 - s * s, -2.0 * s * (1.0 - s * s))[k]
    if name in ("sigmoid", "softplus"):
        p = special.expit(t)
        if name == "sigmoid":
            return (p, p * (1.0 - p), p * (1.0 - p) * (1.0 - 2.0 * p))[k]
        return (np.logaddexp(0.0, t), p, p * (1.0 - p))[k]
    phi = np.exp(-0.5 * t * t) * INV_SQRT_2PI
    if name == "gelu":
        Phi = special.ndtr(t)
        return (t * Phi, Phi + t * phi, (2.0 - t * t) * phi)[k]
    if name == "erf":
        return (special.erf(t / math.sqrt(2.0)), 2.0 * phi, -2.0 * t * phi)[k]
    if name == "linear":
        return (t.copy(), np.ones_like(t), np.zeros_like(t))[k]
    raise ValueError(name)


# (derivative of sigma(h_i), derivative of sigma(h_j)) of kappa, alpha, beta, gamma
PAIR_TERMS = ((0, 0), (1, 1), (2, 0), (1, 0))


def quad_pair(name, r_i, b_i, r_j, b_j, rho):
    """(kappa, alpha, beta, gamma) of one pair by scipy.integrate (see the module docstring)."""
    s = math.sqrt(max(0.0, 1.0 - rho * rho))
    eps = r_j * s
    x, w = special.roots_legendre(20)
    edges = np.linspace(-12.0, 12.0, 241)
    half = np.diff(edges) / 2
    middle = (edges[1:] + edges[:-1]) / 2
    u = (middle[:, None] + half[:, None] * x).ravel()
    weight = (half[:, None] * w).ravel() * np.exp(-0.5 * u * u) * INV_SQRT_2PI
    mu = r_j * rho * u + b_j
    if eps == 0.0:
        inner = [np_sigma(name, mu, 0), np_sigma(name, mu, 1)]
    else:
        def f(v):
            t = mu + eps * v
            return np.concatenate([np_sigma(name, t, 0), np_sigma(name, t, 1)]) * math.exp(-0.5 * v * v) * INV_SQRT_2PI

        both, _ = integrate.quad_vec(f, -12.0, 12.0, epsabs=1e-15, epsrel=1e-14, norm="max", limit=2000)
        inner = [both[:u.size], both[u.size:]]
    t_i = r_i * u + b_i
    return np.array([weight @ (np_sigma(name, t_i, ki) * inner[kj]) for ki, kj in PAIR_TERMS])


def trapezoid_pair(name, r_i, b_i, r_j, b_j, rho, h=0.03, half_width=9.0):
    """(kappa, alpha, beta, gamma) by the tensor trapezoid rule in (Z_i, V), step h."""
    s = math.sqrt(max(0.0, 1.0 - rho * rho))
    z = np.arange(-int(half_width / h), int(half_width / h) + 1) * h
    w = h * np.exp(-0.5 * z * z) * INV_SQRT_2PI
    t_i = r_i * z + b_i
    t_j = r_j * (rho * z[:, None] + s * z[None, :]) + b_j  # [u, v]
    inner = [(np_sigma(name, t_j, k) * w[None, :]).sum(axis=1) for k in (0, 1)]
    return np.array([w @ (np_sigma(name, t_i, ki) * inner[kj]) for ki, kj in PAIR_TERMS])


def pair_geometry(P, S):
    """r_i, r_j, rho_ij (0 where a norm is 0, clipped to [-1, 1])."""
    d = P.shape[1] - 2
    r_i = np.linalg.norm(P[:, :d], axis=1)
    r_j = np.linalg.norm(S[:, :d], axis=1)
    dots = P[:, :d] @ S[:, :d].T
    norms = np.outer(r_i, r_j)
    rho = np.clip(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0), -1.0, 1.0)
    return r_i, r_j, rho


def reference_sums(P, S, name, pair=trapezoid_pair):
    """K (n,), G (n, d + 1) by summing a pair reference over all pairs (float64)."""
    P = np.asarray(P, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    d = P.shape[1] - 2
    r_i, r_j, rho = pair_geometry(P, S)
    K = np.zeros(P.shape[0])
    G = np.zeros((P.shape[0], d + 1))
    for i in range(P.shape[0]):
        for j in range(S.shape[0]):
            kappa, alpha, beta, gamma = pair(name, r_i[i], P[i, d], r_j[j], S[j, d], rho[i, j])
            c = S[j, d + 1]
            K[i] += c * kappa
            G[i, :d] += c * (alpha * S[j, :d] + beta * P[i, :d])
            G[i, d] += c * gamma
    return K, G


def quad_coefficient(name, k, r, b, n):
    """E[sigma^(k)(r Z + b) He_n(Z)] / sqrt(n!) by scipy.integrate.quad."""
    norm = math.sqrt(math.factorial(n))

    def f(z):
        return float(np_sigma(name, r * z + b, k)) * special.eval_hermitenorm(n, z) / norm * math.exp(-0.5 * z * z)

    value, _ = integrate.quad(f, -14.0, 14.0, epsabs=5e-14, epsrel=1e-13, limit=1000)
    return value * INV_SQRT_2PI


def particles(rng, n, d, scale=1.0, bias=1.0, dtype=np.float64):
    W = np.empty((n, d + 2))
    W[:, :d] = rng.standard_normal((n, d)) / math.sqrt(d) * scale
    W[:, d] = bias * rng.standard_normal(n)
    W[:, d + 1] = rng.standard_normal(n)
    return W.astype(dtype)


def pair_arrays(r_i, b_i, r_j, b_j, rho, d=3, c=1.0):
    """A one-point, one-source problem with the given geometry (a_i along e_0)."""
    P = np.zeros((1, d + 2))
    S = np.zeros((1, d + 2))
    P[0, 0] = r_i
    P[0, d] = b_i
    P[0, d + 1] = 1.0
    S[0, 0] = r_j * rho
    S[0, 1] = r_j * math.sqrt(max(0.0, 1.0 - rho * rho))
    S[0, d] = b_j
    S[0, d + 1] = c
    return P, S


def pair_terms_from_sums(P, S, K, G):
    """(kappa, alpha, beta, gamma) of a one-pair problem from K, G (a_i, a_j independent)."""
    d = P.shape[1] - 2
    A = np.stack([S[0, :d], P[0, :d]], axis=1)
    coefficients, *_ = np.linalg.lstsq(A, G[0, :d], rcond=None)
    return np.array([K[0], coefficients[0], coefficients[1], G[0, d]]) / S[0, d + 1]


# ---------------------------------------------------------------------------------------
# One-dimensional coefficients
# ---------------------------------------------------------------------------------------

# quad flags round-off on some of the oscillating He_60 integrands at epsabs 5e-14; its values
# still agree with the tables to 3e-15 (measured at n <= 64, |a| <= 4, |b| <= 3).
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("name", SMOOTH)
def test_coefficients_match_scipy_quad(name):
    """The tables' Hermite coefficients of sigma, sigma', sigma'' to 1e-12 for |a| <= 4,
    |b| <= 3 (measured: at most 3e-15)."""
    radii = (0.0, 0.5, 2.0, 4.0)
    biases = (-3.0, 0.0, 3.0)
    W = np.array([[r, 0.0, b, 1.0] for r in radii for b in biases])
    tables = ps.series_tables(W, ACTIVATION_CODES[name], 64, ps.quadrature_step(4.0, 64))
    worst = 0.0
    for index, (r, b) in enumerate((r, b) for r in radii for b in biases):
        if r in (0.5, 4.0) and b in (0.0, 3.0) or r == 0.0 and b == -3.0:
            for k in range(3):
                for n in (0, 1, 2, 5, 20, 60):
                    value = quad_coefficient(name, k, r, b, n)
                    worst = max(worst, abs(tables.coefficients[index, k, n] - value))
    assert worst <= 1e-12, worst


@pytest.mark.parametrize("name", ("tanh", "gelu"))
def test_diagonal_and_norms_match_scipy_quad(name):
    """E[sigma(h)^2], E[sigma'(h)^2], E[sigma'' sigma], E[sigma' sigma] (the diagonal pair
    terms) and sqrt(E[g^2]) against scipy.integrate.quad."""
    W = np.array([[4.0, 0.0, 3.0, 1.0], [1.0, 0.0, -0.5, 1.0]])
    degree, step, relative = ps.choose_rule(W, W, ACTIVATION_CODES[name], 1e-10)
    tables = ps.series_tables(W, ACTIVATION_CODES[name], degree, step, relative)
    for index in range(2):
        r, b = W[index, 0], W[index, 2]
        for q, (k1, k2) in enumerate(((0, 0), (1, 1), (2, 0), (1, 0))):
            def f(z):
                t = r * z + b
                return float(np_sigma(name, t, k1) * np_sigma(name, t, k2)) * math.exp(-0.5 * z * z) * INV_SQRT_2PI

            value = integrate.quad(f, -14, 14, epsabs=1e-14, epsrel=1e-13, limit=500)[0]
            assert abs(tables.diagonal[index, 0, q] - value) <= 1e-13
            assert tables.diagonal[index, 1, q] >= 0.0
        for k in range(3):
            def g(z):
                return float(np_sigma(name, r * z + b, k)) ** 2 * math.exp(-0.5 * z * z) * INV_SQRT_2PI

            value = integrate.quad(g, -14, 14, epsabs=1e-14, epsrel=1e-13, limit=500)[0]
            assert abs(tables.norms[index, k] - math.sqrt(value)) <= 1e-13


def test_tails_bound_the_discarded_coefficients():
    """tails[l] >= sqrt(sum_{n > L_l} c_n^2) computed from a table of much higher degree."""
    W = np.array([[2.0, 0.0, 0.5, 1.0], [0.7, 0.1, -1.0, 1.0]])
    code = ACTIVATION_CODES["tanh"]
    step = ps.quadrature_step(2.0, 512)
    low = ps.series_tables(W, code, 96, step)
    high = ps.series_tables(W, code, 512, step)
    for l, L in enumerate(low.levels):
        exact = np.sqrt((high.coefficients[:, :, L + 1:] ** 2).sum(axis=2))
        assert np.all(low.tails[:, :, l] >= exact * (1 - 1e-12))


# ---------------------------------------------------------------------------------------
# Single pairs
# ---------------------------------------------------------------------------------------

PAIRS = (
    # r_i, b_i, r_j, b_j, rho
    (1.0, 0.3, 1.2, -0.4, 0.3),
    (2.0, -1.0, 0.5, 2.0, -0.7),
    (4.0, 3.0, 4.0, -3.0, 0.95),
    (1.5, 0.0, 3.0, 1.0, 0.999),
    (4.0, 0.5, 3.5, 0.2, 0.9999),
)


@pytest.mark.parametrize("name", SMOOTH)
def test_single_pairs_match_scipy(name):
    """kappa, alpha, beta, gamma of single pairs against scipy.integrate: |error| <= 1e-11
    relative to max(1, |value|) (measured: 2e-13 at worst), and within the reported bound
    plus 1e-13 of rounding."""
    code = ACTIVATION_CODES[name]
    for r_i, b_i, r_j, b_j, rho in PAIRS:
        P, S = pair_arrays(r_i, b_i, r_j, b_j, rho)
        K, G, bound = ps.series_pair_sums(P, S, code, tol=1e-11)
        reference = quad_pair(name, r_i, b_i, r_j, b_j, float(pair_geometry(P, S)[2][0, 0]))
        got = pair_terms_from_sums(P, S, K, G)
        error = np.abs(got - reference)
        assert np.all(error <= 1e-11 * np.maximum(1.0, np.abs(reference))), (r_i, rho, error)
        assert error[0] <= bound.K[0] + 1e-13
        d = P.shape[1] - 2
        G_ref = reference[1] * S[0, :d] + reference[2] * P[0, :d]
        assert np.linalg.norm(np.r_[G[0, :d] - G_ref, G[0, d] - reference[3]]) <= bound.G[0] + 1e-13


def test_linear_activation_is_exact():
    """For sigma(z) = z the series stops at degree 1: kappa = a_i.a_j + b_i b_j,
    grad_{a_i} kappa = a_j, d kappa / d b_i = b_j."""
    rng = np.random.default_rng(5)
    P = particles(rng, 6, 4, scale=2.0)
    S = particles(rng, 9, 4, scale=2.0)
    S[3] = P[2]
    K, G, _ = ps.series_pair_sums(P, S, ACTIVATION_CODES["linear"])
    d = 4
    kappa = P[:, :d] @ S[:, :d].T + np.outer(P[:, d], S[:, d])
    c = S[:, d + 1]
    np.testing.assert_allclose(K, kappa @ c, rtol=0, atol=1e-13 * np.abs(c).sum() * 10)
    np.testing.assert_allclose(G[:, :d], np.outer(np.ones(6), c @ S[:, :d]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(G[:, d], np.full(6, c @ S[:, d]), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Whole problems
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ("tanh", "sigmoid", "softplus", "gelu"))
def test_small_problem_matches_2d_reference_and_bound(name):
    """K and G of a small problem (m = 7, with a duplicated particle, an anti-aligned one,
    an aligned one, a = 0) against the 2-D trapezoid reference; the error is below the
    reported bound plus 1e-13 of rounding, and below 1e-10 relative to sum |c_j|."""
    rng = np.random.default_rng(11)
    d = 4
    W = particles(rng, 7, d, scale=1.5)
    W[1, :d + 1] = W[0, :d + 1]  # exact duplicate of w_0 (another c)
    W[2, :d] = -0.6 * W[0, :d]  # rho = -1 with w_0
    W[3, :d] = 1.3 * W[0, :d]  # rho = +1, another norm and bias
    W[4, :d] = 0.0  # a = 0
    K, G, bound = ps.series_pair_sums(W, W, ACTIVATION_CODES[name])
    K_ref, G_ref = reference_sums(W, W, name)
    scale = np.abs(W[:, d + 1]).sum()
    error_K = np.abs(K - K_ref)
    error_G = np.linalg.norm(G - G_ref, axis=1)
    assert np.all(error_K <= bound.K + 1e-13 * scale)
    assert np.all(error_G <= bound.G + 1e-13 * scale)
    assert error_K.max() <= 1e-10 * scale and error_G.max() <= 1e-10 * scale
    # The ordered pairs of the aligned four, and the diagonal but for a = 0 (there rho is 0).
    assert bound.near_pairs >= 4 * 3 + 6


@pytest.mark.parametrize("m", (1, 7, 33))
def test_odd_sizes_points_and_sources(m):
    """Odd sizes, points distinct from sources, against the 2-D reference (tanh, bias)."""
    rng = np.random.default_rng(m)
    d = 3
    S = particles(rng, m, d, scale=1.2)
    P = particles(rng, 5, d, scale=1.2)
    K, G, bound = ps.series_pair_sums(P, S, ACTIVATION_CODES["tanh"])
    def pair(*args):
        return trapezoid_pair(*args, h=0.05)
    K_ref, G_ref = reference_sums(P, S, "tanh", pair)
    scale = np.abs(S[:, d + 1]).sum()
    assert np.abs(K - K_ref).max() <= 1e-11 * scale
    assert np.linalg.norm(G - G_ref, axis=1).max() <= 1e-11 * scale
    assert np.all(np.abs(K - K_ref) <= bound.K + 1e-13 * scale)


@pytest.mark.parametrize("name", ("tanh", "softplus"))
def test_gradient_matches_finite_differences(name):
    """G is the gradient of K in (a_i, b_i): central differences of K, step 1e-4 (tables of
    fixed degree and step, so that K is one smooth function of w_i)."""
    rng = np.random.default_rng(2)
    d = 3
    S = particles(rng, 6, d, scale=1.5)
    S[1, :d] = 0.9 * S[0, :d]  # an aligned source
    P = particles(rng, 3, d, scale=1.5)
    P[0, :d] = S[0, :d] * 1.1  # a point aligned with sources 0 and 1
    P[1, :d] = 0.0  # a = 0
    code = ACTIVATION_CODES[name]
    step = ps.quadrature_step(3.0, 128)
    source_tables = ps.series_tables(S, code, 128, step)

    def K_of(points):
        tables = (ps.series_tables(points, code, 128, step), source_tables)
        return ps.series_pair_sums(points, S, code, tol=1e-12, rho_threshold=0.5, tables=tables)

    K, G, _ = K_of(P)
    h = 1e-4
    for i in range(P.shape[0]):
        for k in range(d + 1):
            plus = P.copy()
            minus = P.copy()
            plus[i, k] += h
            minus[i, k] -= h
            derivative = (K_of(plus)[0][i] - K_of(minus)[0][i]) / (2 * h)
            assert abs(derivative - G[i, k]) <= 1e-7 * max(1.0, abs(G[i, k])), (i, k, derivative, G[i, k])


def test_point_with_zero_weights_vector():
    """a_i = 0: kappa = sigma(b_i) E[sigma(h_j)] and grad_{a_i} kappa = sigma'(b_i) E[sigma'(h_j)] a_j."""
    rng = np.random.default_rng(4)
    d = 3
    S = particles(rng, 4, d, scale=2.0)
    P = np.array([[0.0, 0.0, 0.0, 0.7, 1.0]])
    K, G, _ = ps.series_pair_sums(P, S, ACTIVATION_CODES["gelu"])
    r_j = np.linalg.norm(S[:, :d], axis=1)
    K_ref = 0.0
    G_ref = np.zeros(d + 1)
    for j in range(4):
        mean, _ = integrate.quad(lambda z: float(np_sigma("gelu", r_j[j] * z + S[j, d])) * math.exp(-z * z / 2),
                                 -14, 14, epsabs=1e-14, epsrel=1e-13)
        slope, _ = integrate.quad(lambda z: float(np_sigma("gelu", r_j[j] * z + S[j, d], 1)) * math.exp(-z * z / 2),
                                  -14, 14, epsabs=1e-14, epsrel=1e-13)
        mean *= INV_SQRT_2PI
        slope *= INV_SQRT_2PI
        c = S[j, d + 1]
        K_ref += c * float(np_sigma("gelu", 0.7)) * mean
        G_ref[:d] += c * float(np_sigma("gelu", 0.7, 1)) * slope * S[j, :d]
        G_ref[d] += c * float(np_sigma("gelu", 0.7, 1)) * mean
    assert abs(K[0] - K_ref) <= 1e-13
    np.testing.assert_allclose(G[0], G_ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("rho", (1.0, -1.0))
def test_exactly_aligned_pairs(rho):
    """rho = +-1 exactly with other norms and biases (the one-dimensional formula), and large
    |a| = 4, |b| = 5, against scipy."""
    for name in ("tanh", "sigmoid"):
        for r_i, b_i, r_j, b_j in ((1.0, 0.5, 2.0, -1.0), (4.0, 5.0, 4.0, -3.0), (4.0, 0.0, 4.0, 0.3)):
            P = np.array([[r_i, 0.0, b_i, 1.0]])  # d = 2: a, b, c
            S = np.array([[rho * r_j, 0.0, b_j, 1.0]])
            K, G, bound = ps.series_pair_sums(P, S, ACTIVATION_CODES[name])
            kappa, alpha, beta, gamma = quad_pair(name, r_i, b_i, r_j, b_j, rho)
            assert abs(K[0] - kappa) <= 1e-12
            assert abs(G[0, 0] - (alpha * S[0, 0] + beta * P[0, 0])) <= 1e-11
            assert G[0, 1] == 0.0
            assert abs(G[0, 2] - gamma) <= 1e-12
            assert abs(K[0] - kappa) <= bound.K[0] + 1e-13


def test_exact_duplicates_take_the_diagonal_formula():
    """Duplicated particles (points is sources): every (i, i) and every copy pair is exactly the
    one-dimensional E[sigma(h)^2] etc., so K equals the reference at rho = 1."""
    rng = np.random.default_rng(8)
    d = 3
    W = particles(rng, 3, d, scale=3.0, bias=2.0)
    W = np.concatenate([W, W[:2]])
    K, G, bound = ps.series_pair_sums(W, W, ACTIVATION_CODES["tanh"])
    def pair(*args):
        return trapezoid_pair(*args, h=0.02)
    K_ref, G_ref = reference_sums(W, W, "tanh", pair)
    scale = np.abs(W[:, d + 1]).sum()
    assert np.abs(K - K_ref).max() <= 1e-12 * scale
    assert np.linalg.norm(G - G_ref, axis=1).max() <= 1e-11 * scale
    assert np.all(np.abs(K - K_ref) <= bound.K + 1e-13 * scale)


@pytest.mark.parametrize("rho", (0.9999999, 0.99999, 0.9995, 0.995, 0.95, 0.8, -0.97))
def test_rotated_basis_quadrature(rho):
    """Pairs forced onto the rotated-basis quadrature (tables of degree 8 cannot meet tol),
    eps = r_j sqrt(1 - rho^2) from 0.002 to 2.4, against scipy, to 1e-12."""
    for name in ("tanh", "softplus"):
        for r_i, b_i, r_j, b_j in ((4.0, 0.3, 4.0, -0.2), (1.0, -2.0, 3.0, 3.0)):
            P, S = pair_arrays(r_i, b_i, r_j, b_j, rho)
            code = ACTIVATION_CODES[name]
            step = ps.quadrature_step(4.0, 8)
            tables = (ps.series_tables(P, code, 8, step), ps.series_tables(S, code, 8, step))
            K, G, bound = ps.series_pair_sums(P, S, code, tol=1e-12, rho_threshold=0.5, tables=tables)
            assert bound.fallback_pairs == 1
            reference = quad_pair(name, r_i, b_i, r_j, b_j, float(pair_geometry(P, S)[2][0, 0]))
            got = pair_terms_from_sums(P, S, K, G)
            assert np.all(np.abs(got - reference) <= 1e-12 * np.maximum(1.0, np.abs(reference))), (
                name, r_i, got - reference)


@pytest.mark.parametrize("rho", (0.99999, 0.999, 0.99, 0.9, -0.95))
def test_rotated_basis_rules_for_the_short_direction(rho):
    """Each rule of the short direction (Gauss-Hermite, trapezoid on a shared grid, plain
    trapezoid), forced, against scipy to 1e-12, for |a| = 4 and 2."""
    rules = ps.inner_rules()
    step = ps.quadrature_step(4.0, 64)
    n_nodes = 2 * int(9.0 / step) + 1
    buffers = [np.empty(n_nodes), np.empty(n_nodes), np.empty(64 * n_nodes), np.empty(64 * n_nodes)]
    for name in ("tanh", "gelu"):
        for r_i, b_i, r_j, b_j in ((4.0, 0.3, 4.0, -0.2), (2.0, -1.0, 4.0, 2.5)):
            reference = quad_pair(name, r_i, b_i, r_j, b_j, rho)
            eps_over_strip = r_j * math.sqrt(1 - rho * rho) / (math.pi / 2)
            modes = (1, 2) + ((0,) if eps_over_strip <= rules.limits[-1] else ())
            for mode in modes:
                got = np.array(ps._conditional_pair(r_i, b_i, r_j, b_j, rho, ACTIVATION_CODES[name], step, rules,
                                                    *buffers, mode))
                assert np.all(np.abs(got - reference) <= 1e-12 * np.maximum(1.0, np.abs(reference))), (
                    name, mode, r_i, got - reference)


def test_float32_within_stated_tolerance():
    """float32 points and sources: K and G within 2e-6 of the float64 reference, relative to
    sum |c_j| (rounding dominates; measured about 2e-7)."""
    rng = np.random.default_rng(6)
    d = 4
    W = particles(rng, 9, d, scale=1.5)
    W[1] = W[0]
    W[2, :d] = -0.7 * W[0, :d]
    W32 = W.astype(np.float32)
    for name in ("tanh", "gelu"):
        K, G, _ = ps.series_pair_sums(W32, W32, ACTIVATION_CODES[name])
        assert K.dtype == np.float32 and G.dtype == np.float32
        def pair(*args):
            return trapezoid_pair(*args, h=0.05)
        K_ref, G_ref = reference_sums(W32.astype(np.float64), W32.astype(np.float64), name, pair)
        scale = np.abs(W[:, d + 1]).sum()
        assert np.abs(K - K_ref).max() <= 2e-6 * scale
        assert np.linalg.norm(G - G_ref, axis=1).max() <= 2e-6 * scale


def test_results_independent_of_thread_count():
    """Bitwise the same K, G for 1 and 2 numba threads (disjoint writes, fixed order per row)."""
    rng = np.random.default_rng(9)
    d = 20
    W = particles(rng, 150, d, scale=1.5)
    W[100:, :d] = W[:50, :d] * 1.01 + 0.01 * rng.standard_normal((50, d))  # aligned pairs
    code = ACTIVATION_CODES["tanh"]
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        K1, G1, _ = ps.series_pair_sums(W, W, code)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        K2, G2, _ = ps.series_pair_sums(W, W, code)
    finally:
        numba.set_num_threads(previous)
    assert np.array_equal(K1, K2) and np.array_equal(G1, G2)
