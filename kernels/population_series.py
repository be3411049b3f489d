"""Population pair kernel for smooth activations by Hermite (Mehler) series.

For Gaussian inputs x ~ N(0, I_d) and neurons w = (a, b, c), the pre-activations
h_i = a_i . x + b_i are jointly Gaussian with means b_i, variances r_i^2 = |a_i|^2 and
correlation rho_ij = a_i . a_j / (r_i r_j). With f_i(z) = sigma(r_i z + b_i) and Z_1, Z_2
standard normals with correlation rho, Mehler's formula gives

    kappa_ij = E[sigma(h_i) sigma(h_j)] = sum_{n >= 0} rho^n F_{i,n} F_{j,n},
    F_{i,n}  = E[f_i(Z) He_n(Z)] / sqrt(n!)            (normalised Hermite coefficients).

The gradient comes from Stein's identity, E[x g(h_i, h_j)] = a_i E[d_1 g] + a_j E[d_2 g]:

    grad_{a_i} kappa_ij = alpha_ij a_j + beta_ij a_i,     d kappa_ij / d b_i = gamma_ij,
    alpha_ij = E[sigma'(h_i) sigma'(h_j)]  = sum_n rho^n D_{i,n} D_{j,n},
    beta_ij  = E[sigma''(h_i) sigma(h_j)]  = sum_n rho^n S_{i,n} F_{j,n},
    gamma_ij = E[sigma'(h_i) sigma(h_j)]   = sum_n rho^n D_{i,n} F_{j,n},

with D and S the coefficients of sigma'(r z + b) and sigma''(r z + b). This form (rather than
the chain rule through r_i and rho) has no 1/r_i: it holds at a_i = 0, where rho is set to 0.
(The chain rule gives the same numbers: D_{i,n} = sqrt(n + 1) F_{i,n+1} / r_i, and
alpha = (d kappa / d rho) / (r_i r_j).)

Every particle's coefficients are one-dimensional integrals, computed once per evaluation
(:func:`series_tables`: a trapezoid rule on a uniform grid, exponentially accurate for these
analytic integrands; :func:`choose_rule` checks its step on a pilot of particles against half
the step, and reports the difference as the coefficients' error); each pair is then a
polynomial of degree L in rho. (Checked against scipy's quad: at most 3e-15 for |a| <= 4,
|b| <= 3, n <= 64, all activations.)

Truncation. By Cauchy-Schwarz and Parseval, for |rho| <= 1,

    |sum_{n > L} rho^n F_{i,n} F_{j,n}| <= |rho|^{L+1} tau^F_i(L) tau^F_j(L),
    tau^F_i(L)^2 = E[f_i^2] - sum_{n <= L} F_{i,n}^2,

and likewise for alpha (tau^D tau^D), beta (tau^S tau^F) and gamma (tau^D tau^F). The tails are
stored at degrees ``levels`` (multiples of 4) and used to choose the degree of each pair.

Regimes, chosen per pair by a threshold rho* on |rho| (:func:`choose_threshold`, from the
|rho| of a sample of pairs and a cost model):

* |rho| <= rho* (almost all pairs of a random configuration): the series of one common
  degree L_short, the smallest stored one with rho*^(L+1) max_i U_i max_j V_j <= tol,
  evaluated by Horner's rule in loops over the sources that vectorise;
* |rho| > rho*, one pair at a time (by source within a tile, for the cache): exact
  duplicates (rho = 1, same r, same b; the diagonal i = j) take the one-dimensional diagonal
  values E[sigma(h)^2], ... of the tables; other pairs take the series to the smallest stored
  degree whose bound meets tol; pairs for which no stored degree suffices (|rho| close to 1
  with large r: sigma(r z) close to a step) take a quadrature in the rotated basis
  Z_j = rho Z_i + sqrt(1 - rho^2) V (:func:`_conditional_pair`): a trapezoid rule in Z_i and,
  in the short direction V, Gauss-Hermite or a trapezoid rule on a grid shared by all the
  Z_i nodes, chosen by eps = r_j sqrt(1 - rho^2) (accurate to 1e-12 against scipy for
  |a| <= 4, eps from 0 to 2.4). At rho = +-1 (eps = 0) this is the exact one-dimensional
  formula.

The tables' degree is sized on the largest |rho| of a sample of the pairs (up to the degree
that rho = 1 needs, at most ``max_degree``); :func:`shared_tables` builds the tables of the
particles and of a teacher once for both pair sums of a population objective.

Entry points: :func:`series_pair_sums` (chooses everything, returns K, G and an error bound),
:func:`series_pair_field` (the tiled kernel, the contract of ``quadrature_pair_field``),
:func:`series_tables` / :func:`shared_tables` (the per-particle tables). The GPU twin
(``gpu_population_series``) makes the same choices (:func:`planned_pair_sums`) and compiles
``_near_pair`` and ``_conditional_pair`` for the device; their constants are ``like`` their
arguments, so that a float32 kernel computes in float32.

Layout: ``W[:, :d] = a``, ``W[:, d] = b``, ``W[:, d + 1] = c``; float32 or float64.
"""
import functools
import math
from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange

from ._scalar import SIGMOID, SOFTPLUS, TANH, activation, activation_derivative, activation_second_derivative, like
from .population import _BLAS_SERIAL_MNK

# Tails are stored at the degrees 0, 4, 8, ...: the per-pair degree search is short and the
# table small, at the cost of up to 3 terms more than needed.
LEVEL_STRIDE = 4
# Half-width of the coefficient grid: the integrands are bounded by |f(z)| e^{-z^2/4} (Cramer's
# inequality for He_n / sqrt(n!)), and e^{-13^2/4} = 4e-19 with |f| <= 4 * 13 + 3 for a
# linearly growing sigma (softplus, gelu) at |a| = 4, |b| = 3.
Z_MAX = 13.0
# Half-widths of the rotated-basis rule: no He_n there, phi(9) = 1e-18 and phi(9.5) = 1e-20.
_U_MAX = 9.0
_V_MAX = 9.5
# Distance from the real axis of tanh's poles (i pi / 2), the nearest of the activations
# defined in _scalar (sigmoid and softplus: pi; erf, gelu, linear: entire). The node counts
# of the short direction are calibrated on it; an activation with closer singularities needs
# a smaller value here.
_STRIP = math.pi / 2
# Gauss-Hermite rules of the short direction: the rule ``_INNER_SIZES[q]`` serves
# eps / _STRIP <= ``_INNER_LIMITS[q]``. Calibrated on E[tanh(mu + eps V)] and E[tanh'(...)]
# against 300-node Gauss-Hermite, mu in [-2, 2]: error <= 3e-15 up to 0.0064 (4 nodes), 0.0255
# (6), 0.051 (8), 0.083 (12), 0.127 (16), 0.19 (24); the limits keep 20 % margin. Beyond the
# last, a trapezoid rule of step min(0.6, 0.1 _STRIP / eps) (error <= 3e-15 measured where
# 0.127 _STRIP / eps sufficed).
_INNER_SIZES = (1, 4, 6, 8, 12, 16, 24)
_INNER_LIMITS = (1e-8, 0.005, 0.02, 0.04, 0.065, 0.1, 0.15)
# Distance from the real axis of the singularities (in the pre-activation) of the activations
# that have some; the others get tanh's, the nearest. Sets the coefficient rule's first step.
_POLE_DISTANCE = {TANH: math.pi / 2, SIGMOID: math.pi, SOFTPLUS: math.pi}
_TILE_ROWS = 32


class SeriesTables(NamedTuple):
    """Per-particle Hermite tables of one set of particles (:func:`series_tables`).

    Attributes
    ----------
    coefficients : ndarray, shape (p, 3, L + 1)
        Normalised Hermite coefficients E[g(r Z + b) He_n(Z)] / sqrt(n!) of g = sigma,
        sigma', sigma'' (index 0, 1, 2), r = |a|, b the bias of each particle.
    tails : ndarray, shape (p, 3, n_levels)
        Upper bounds on sqrt(sum_{n > levels[l]} coefficient_n^2) (Parseval, with the
        estimated quadrature error and a rounding floor added to the square).
    norms : ndarray, shape (p, 3)
        sqrt(E[g(h)^2]) for the three g.
    errors : ndarray, shape (p, 3)
        Estimate of the l2 norm (over n <= L) of the coefficients' quadrature error (from
        :func:`choose_rule`'s comparison with half the step) plus the rounding of the sums.
    diagonal : ndarray, shape (p, 2, 4)
        [0]: E[sigma(h)^2], E[sigma'(h)^2], E[sigma''(h) sigma(h)], E[sigma'(h) sigma(h)] (the
        pair terms of a particle with itself); [1]: their estimated quadrature errors.
    levels : ndarray, shape (n_levels,), int64
        Degrees 0, 4, 8, ..., L at which ``tails`` are given.
    log_bounds : ndarray, shape (p, 2, n_levels)
        log U(L) = log max(tau^F, tau^D, r tau^S) (the particle as a point) and
        log V(L) = log max(tau^F, r tau^D) (as a source): a pair meets ``tol`` at degree L
        when (L + 1) log |rho| + log U_i + log V_j <= log tol.
    step : float
        Step h of the trapezoid rule (nodes k h, |k h| <= Z_MAX).
    relative_error : float
        Largest estimated quadrature error of a coefficient vector relative to its norm (the
        ``relative_error`` passed to :func:`series_tables`).
    """

    coefficients: np.ndarray
    tails: np.ndarray
    norms: np.ndarray
    errors: np.ndarray
    diagonal: np.ndarray
    levels: np.ndarray
    log_bounds: np.ndarray
    step: float
    relative_error: float


class InnerRules(NamedTuple):
    """Gauss-Hermite rules of the short direction of the rotated-basis quadrature
    (:func:`inner_rules`): rule q has ``sizes[q]`` nodes ``nodes[q, :sizes[q]]`` (weights sum
    to 1) and serves eps / (pi / 2) <= ``limits[q]``."""

    nodes: np.ndarray
    weights: np.ndarray
    sizes: np.ndarray
    limits: np.ndarray


class SeriesErrorBound(NamedTuple):
    """What :func:`series_pair_sums` guarantees, and how it got there.

    Attributes
    ----------
    K : ndarray, shape (n,)
        Bound on |K_i - K_i(exact)|.
    G : ndarray, shape (n,)
        Bound on the Euclidean norm of G_i - G_i(exact) (all d + 1 entries).
    short_degree, table_degree : int
        Degree of the series for |rho| <= rho_threshold; largest degree available to the others.
    rho_threshold : float
    step : float
        Step of the coefficient quadrature.
    coefficient_error : float
        Largest estimated quadrature error of a coefficient vector, relative to its norm.
    near_pairs, fallback_pairs : int
        Pairs with |rho| > rho_threshold, and among them those computed by the rotated-basis
        quadrature (the others by the long series or the diagonal formula).
    """

    K: np.ndarray
    G: np.ndarray
    short_degree: int
    table_degree: int
    rho_threshold: float
    step: float
    coefficient_error: float
    near_pairs: int
    fallback_pairs: int


# ---------------------------------------------------------------------------------------
# Scalars
# ---------------------------------------------------------------------------------------

@njit(cache=True)
def _unit_roundoff(x):
    """Machine epsilon of the type of x (float64's rounds away in float32: 1 + 2^-52 == 1)."""
    u64 = like(x, 2.220446049250313e-16)
    return u64 if like(x, 1.0) + u64 != like(x, 1.0) else like(x, 1.1920928955078125e-07)


@njit(cache=True)
def _int_power(x, exponent):
    """x ** exponent (exponent >= 0) by repeated squaring in the type of x: numba's x ** n for a
    float64 x (the same operations, so the same bits), without its conversion to double for a
    float32 x on the GPU."""
    out = like(x, 1.0)
    while exponent > 0:
        if exponent & 1:
            out *= x
        exponent >>= 1
        if exponent > 0:
            x *= x
    return out


@njit(cache=True)
def _value_slope(t, code):
    """(sigma(t), sigma'(t)); tanh, sigmoid and softplus share one transcendental."""
    one = like(t, 1.0)
    if code == TANH:
        s = math.tanh(t)
        return s, one - s * s
    if code == SIGMOID:
        s = activation(t, code)
        return s, s * (one - s)
    return activation(t, code), activation_derivative(t, code)


@njit(cache=True)
def _value_slope_curvature(t, code):
    """(sigma(t), sigma'(t), sigma''(t))."""
    one = like(t, 1.0)
    two = like(t, 2.0)
    if code == TANH:
        s = math.tanh(t)
        ds = one - s * s
        return s, ds, -two * s * ds
    if code == SIGMOID:
        s = activation(t, code)
        ds = s * (one - s)
        return s, ds, ds * (one - two * s)
    if code == SOFTPLUS:
        p = activation(t, SIGMOID)
        return activation(t, code), p, p * (one - p)
    return activation(t, code), activation_derivative(t, code), activation_second_derivative(t, code)


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

@njit(cache=True)
def hermite_table(nodes, degree):
    """He_n(z) / sqrt(n!) at the nodes, n = 0 .. degree (three-term recurrence).

    Parameters
    ----------
    nodes : ndarray, shape (N,), float64
    degree : int

    Returns
    -------
    ndarray, shape (degree + 1, N), float64
        Row n holds He_n(z_k) / sqrt(n!).
    """
    N = nodes.shape[0]
    H = np.empty((degree + 1, N))
    root = np.sqrt(np.arange(degree + 2).astype(np.float64))
    for k in range(N):
        H[0, k] = 1.0
    if degree >= 1:
        for k in range(N):
            H[1, k] = nodes[k]
    for n in range(1, degree):
        inv = 1.0 / root[n + 1]
        for k in range(N):
            H[n + 1, k] = (nodes[k] * H[n, k] - root[n] * H[n - 1, k]) * inv
    return H


@functools.lru_cache(maxsize=8)
def _cached_hermite(step, degree):
    """(nodes, weights, He table) of the trapezoid rule of ``step``, shared across evaluations
    with the same rule (a simulation keeps its step while max |a| stays put); not to be
    modified."""
    nodes, weights = trapezoid_rule(step)
    return nodes, weights, hermite_table(nodes, degree)


@njit(cache=True, parallel=True)
def _coefficient_sums(radius, bias, activation_code, nodes, weights, HT, n_chunks, coefficients, moments, diagonal):
    """Trapezoid sums of one set of particles (body of :func:`series_tables`).

    coefficients[i, q, n] = sum_k weights[k] g_q(r_i z_k + b_i) HT[n, k] for g_0 = sigma,
    g_1 = sigma', g_2 = sigma''; moments[i, q] = sum_k weights[k] g_q(...)^2;
    diagonal[i] = the four diagonal pair terms (see SeriesTables). The sums over the nodes are
    BLAS products of blocks small enough (M N K <= _BLAS_SERIAL_MNK) to run on the calling
    thread.
    """
    p = radius.shape[0]
    N = nodes.shape[0]
    L1 = HT.shape[0]
    block = max(1, min(64, _BLAS_SERIAL_MNK // (3 * N * L1)))
    cols = max(1, min(L1, _BLAS_SERIAL_MNK // (3 * block * N)))
    n_blocks = (p + block - 1) // block
    n_chunks = max(1, min(n_chunks, n_blocks))
    for chunk in prange(n_chunks):
        values = np.empty((3 * block, N))
        out_buf = np.empty(3 * block * cols)
        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            i0 = blk * block
            rows = min(block, p - i0)
            for t in range(rows):
                i = i0 + t
                r = radius[i]
                b = bias[i]
                m0 = 0.0
                m1 = 0.0
                m2 = 0.0
                cross2 = 0.0
                cross1 = 0.0
                for k in range(N):
                    w = weights[k]
                    s, ds, dds = _value_slope_curvature(r * nodes[k] + b, activation_code)
                    values[3 * t, k] = w * s
                    values[3 * t + 1, k] = w * ds
                    values[3 * t + 2, k] = w * dds
                    m0 += w * s * s
                    m1 += w * ds * ds
                    m2 += w * dds * dds
                    cross2 += w * dds * s
                    cross1 += w * ds * s
                moments[i, 0] = m0
                moments[i, 1] = m1
                moments[i, 2] = m2
                diagonal[i, 0] = m0
                diagonal[i, 1] = m1
                diagonal[i, 2] = cross2
                diagonal[i, 3] = cross1
            for c0 in range(0, L1, cols):
                width = min(cols, L1 - c0)
                out = out_buf[:3 * rows * width].reshape((3 * rows, width))
                np.dot(values[:3 * rows], HT[c0:c0 + width].T, out)
                for t in range(rows):
                    for q in range(3):
                        for n in range(width):
                            coefficients[i0 + t, q, c0 + n] = out[3 * t + q, n]


def quadrature_step(r_max, degree, pole_distance=_STRIP):
    """Step of the coefficient rule for radii up to ``r_max`` and Hermite degree ``degree``.

    h = 1 / sqrt((r/0.15)^2 + (sqrt(L)/4)^2 + 2^2), the largest step at which the
    coefficients of tanh(r z + 0.5) and tanh'' were accurate to 2e-15, measured against a step
    of 0.004 for r in [0.01, 4], L in [32, 512]: the term in r resolves the poles at distance
    pi / (2 r) from the real axis, the term in L the oscillations of He_n. For an activation
    whose singularities lie at ``pole_distance`` from the real axis (sigmoid, softplus: pi)
    the term in r scales by (pi / 2) / pole_distance. :func:`choose_rule` checks the step on
    the particles at hand and halves it if needed.
    """
    r_term = r_max / (0.15 * pole_distance / _STRIP)
    return 1.0 / math.sqrt(r_term ** 2 + degree / 16.0 + 4.0)


def trapezoid_rule(step, z_max=Z_MAX):
    """Nodes k h and weights h phi(k h), |k h| <= z_max, of the trapezoid rule for N(0, 1)."""
    half = int(z_max / step)
    nodes = np.arange(-half, half + 1) * step
    weights = step * np.exp(-0.5 * nodes * nodes) / math.sqrt(2.0 * math.pi)
    return nodes, weights


def _raw_tables(W, activation_code, degree, step):
    """(coefficients (p, 3, L + 1), moments (p, 3), diagonal (p, 4), node count), float64."""
    d = W.shape[1] - 2
    radius = _radius(W)
    bias = np.ascontiguousarray(W[:, d], dtype=np.float64)
    nodes, weights, HT = _cached_hermite(float(step), int(degree))
    p = W.shape[0]
    coefficients = np.empty((p, 3, degree + 1))
    moments = np.empty((p, 3))
    diagonal = np.empty((p, 4))
    _coefficient_sums(radius, bias, activation_code, nodes, weights, HT, get_num_threads(), coefficients, moments,
                      diagonal)
    return coefficients, moments, diagonal, nodes.shape[0]


@njit(cache=True, parallel=True)
def _tails(coefficients, second, errors, moment_allowance, radius, levels, tails, log_bounds):
    """tails[i, q, l] >= sqrt(sum_{n > levels[l]} c_n^2) and the log bounds (see SeriesTables).

    By Parseval, sum_{n > L} c_n^2 = E[g^2] - sum_{n <= L} c_n^2; with the computed E and c,
    tau_true^2 <= E - sum c^2 + |dE| + 2 |c| |dc| + |dc|^2 (|dc| <= ``errors``,
    |dE| <= ``moment_allowance[q]`` E, which includes the rounding of the two sums).
    """
    p = coefficients.shape[0]
    L1 = coefficients.shape[2]
    n_levels = levels.shape[0]
    for i in prange(p):
        for q in range(3):
            E = second[i, q]
            e = errors[i, q]
            partial = 0.0
            level = 0
            for n in range(L1):
                c = coefficients[i, q, n]
                partial += c * c
                while level < n_levels and levels[level] == n:
                    tails[i, q, level] = math.sqrt(max(E - partial, 0.0) + moment_allowance[q] * E
                                                   + 2.0 * math.sqrt(partial) * e + e * e)
                    level += 1
        for level in range(n_levels):
            U = max(max(tails[i, 0, level], tails[i, 1, level]), radius[i] * tails[i, 2, level])
            V = max(tails[i, 0, level], radius[i] * tails[i, 1, level])
            log_bounds[i, 0, level] = math.log(U) if U > 0.0 else -np.inf
            log_bounds[i, 1, level] = math.log(V) if V > 0.0 else -np.inf


def series_tables(W, activation_code, degree, step, relative_error=None):
    """Per-particle Hermite tables of the particles ``W`` (the sources or the points).

    Parameters
    ----------
    W : ndarray, shape (p, d + 2), float32 or float64
        Particles (a, b, c); only r = |a| and b matter.
    activation_code : int
    degree : int
        Largest Hermite degree L (rounded up to a multiple of ``LEVEL_STRIDE``).
    step : float
        Trapezoid step (:func:`quadrature_step`, :func:`choose_rule`).
    relative_error : ndarray, shape (2, 3), optional
        Estimated quadrature error of the coefficient vectors ([0]) and of the second moments
        ([1]) of sigma, sigma', sigma'', relative to sqrt(E[g^2]) and E[g^2]
        (:func:`choose_rule`); default 0. Added to ``errors``, ``tails`` and the diagonal's error.

    Returns
    -------
    SeriesTables
        In the dtype of W (computed in float64).
    """
    W = np.asarray(W)
    dtype = W.dtype
    degree = max(LEVEL_STRIDE, -(-int(degree) // LEVEL_STRIDE) * LEVEL_STRIDE)
    coefficients, second, diagonal, N = _raw_tables(W, activation_code, degree, step)
    if relative_error is None:
        relative_error = np.zeros((2, 3))
    u = np.finfo(np.float64).eps
    norms = np.sqrt(second)
    # Quadrature error (estimated) and rounding of the N-term sums.
    errors = (relative_error[0] + N * u) * norms
    levels = np.arange(0, degree + 1, LEVEL_STRIDE, dtype=np.int64)
    radius = _radius(W)
    tails = np.empty((W.shape[0], 3, levels.shape[0]))
    log_bounds = np.empty((W.shape[0], 2, levels.shape[0]))
    _tails(coefficients, second, errors, relative_error[1] + (N + degree + 4) * u, radius, levels, tails, log_bounds)
    diag = np.empty((W.shape[0], 2, 4))
    diag[:, 0] = diagonal
    # E[g_q g_q'] <= |g_q| |g_q'|: the products' error is bounded like the moments'.
    scale = np.stack([second[:, 0], second[:, 1], norms[:, 2] * norms[:, 0], norms[:, 1] * norms[:, 0]], axis=1)
    diag[:, 1] = (relative_error[1].max() + 4 * N * u) * scale
    return SeriesTables(coefficients.astype(dtype, copy=False), tails.astype(dtype, copy=False),
                        norms.astype(dtype, copy=False), errors.astype(dtype, copy=False),
                        diag.astype(dtype, copy=False), levels, log_bounds.astype(dtype, copy=False), float(step),
                        float(relative_error[0].max()))


@functools.lru_cache(maxsize=2)
def _inner_rules(dtype_name):
    return inner_rules(np.dtype(dtype_name))


def inner_rules(dtype=np.float64):
    """The Gauss-Hermite rules of the rotated-basis quadrature's short direction (InnerRules)."""
    Q = max(_INNER_SIZES)
    nodes = np.zeros((len(_INNER_SIZES), Q))
    weights = np.zeros((len(_INNER_SIZES), Q))
    for q, size in enumerate(_INNER_SIZES):
        x, w = np.polynomial.hermite_e.hermegauss(size)
        nodes[q, :size] = x
        weights[q, :size] = w / w.sum()
    return InnerRules(nodes.astype(dtype), weights.astype(dtype), np.array(_INNER_SIZES, dtype=np.int64),
                      np.array(_INNER_LIMITS, dtype=dtype))


# ---------------------------------------------------------------------------------------
# Pair terms
# ---------------------------------------------------------------------------------------

@njit(cache=True)
def _conditional_pair(r_i, b_i, r_j, b_j, rho, code, step, rules, s0, s1, grid0, grid1, mode=-1):
    """(kappa, alpha, beta, gamma) of one pair by quadrature in the rotated basis.

    With Z_j = rho Z_i + s V (s = sqrt(1 - rho^2), V independent of Z_i):
    kappa = E_u[sigma(r_i u + b_i) S_0(u)], S_0(u) = E_V[sigma(A u + b_j + eps V)], A = r_j rho,
    eps = r_j s, and alpha, beta, gamma the same with (sigma', S_1), (sigma'', S_0),
    (sigma', S_0), S_1 = E_V[sigma'(...)].

    u: trapezoid rule of step h = 1 / sqrt((max(r_i, |A|) / 0.15)^2 + 4) (``quadrature_step``
    without its Hermite term: no He_n here), at most ``step``'s node count, |u| <= 9. V, the
    short direction, by the cheaper of (``mode`` -1; 0, 1, 2 force one, for the tests):

    0. Gauss-Hermite from ``rules``, its size set by eps / (pi / 2) (one node at eps = 0: the
       exact one-dimensional formula of rho = +-1): ``size`` evaluations per u node;
    1. a trapezoid rule whose points A u_k + b_j + eps v_q fall on one grid of step A h / p
       (p an integer, V step A h / (p eps) <= min(0.6, 0.1 (pi / 2) / eps)): sigma and sigma' are
       evaluated once per grid point, about p per u node, and S_0, S_1 are discrete
       convolutions (6 times fewer evaluations than 16-node Gauss-Hermite at |a| = 3,
       rho = 0.999);
    2. the same trapezoid rule evaluated at every (u, v) (when the grid would not fit the
       buffers).

    ``s0``, ``s1``: work buffers of at least 2 floor(9 / step) + 1 entries; ``grid0``,
    ``grid1``: at least as many, more for rule 1 to be available.
    """
    zero = like(rho, 0.0)
    one = like(rho, 1.0)
    slope = r_j * rho
    s = math.sqrt(max(one - rho * rho, zero))
    eps = r_j * s
    scale = max(r_i, abs(slope)) / like(rho, 0.15)
    h = max(like(rho, step), min(like(rho, 0.5), one / math.sqrt(scale * scale + like(rho, 4.0))))
    n_u = int(like(rho, _U_MAX) / h)
    n_nodes = 2 * n_u + 1
    for k in range(n_nodes):
        s0[k] = zero
        s1[k] = zero
    x = eps / like(rho, _STRIP)
    rule = -1
    for q in range(rules.limits.shape[0]):
        if x <= rules.limits[q]:
            rule = q
            break
    inv_sqrt_2pi = like(rho, 0.3989422804014327)
    hv_max = min(like(rho, 0.6), like(rho, 0.1) / x) if x > zero else like(rho, 0.6)
    # Rule 1's grid: p points per u step, n_v on each side of a u node.
    p = 0
    n_v = 0
    n_t = 0
    hv = zero
    if eps > zero and slope != zero:
        p = max(1, int(math.ceil(abs(slope) * h / (hv_max * eps))))
        hv = abs(slope) * h / (like(eps, p) * eps)
        n_v = int(like(rho, _V_MAX) / hv)
        n_t = (n_nodes - 1) * p + 2 * n_v + 1
    if mode < 0:
        cost_gh = rules.sizes[rule] * n_nodes if rule >= 0 else np.iinfo(np.int64).max
        # A convolution term costs about an eighth of an activation (measured order).
        cost_grid = n_t + n_nodes * (2 * n_v + 1) // 8 if 0 < n_t <= grid0.shape[0] else np.iinfo(np.int64).max
        mode = 0 if rule >= 0 and cost_gh <= cost_grid else (1 if cost_grid < np.iinfo(np.int64).max else 2)
    if mode == 0:
        for q in range(rules.sizes[rule]):
            v = rules.nodes[rule, q]
            omega = rules.weights[rule, q]
            shift = b_j + eps * v
            for k in range(n_nodes):
                val, der = _value_slope(slope * (h * like(h, k - n_u)) + shift, code)
                s0[k] += omega * val
                s1[k] += omega * der
    elif mode == 1:
        # t_l = b_j + g (l - n_v - p n_u): node k, offset q (V = q hv sign(A), the law of V
        # being symmetric) is l = p k + n_v + q.
        g = slope * h / like(h, p)
        for l in range(n_t):
            val, der = _value_slope(b_j + g * like(g, l - n_v - p * n_u), code)
            grid0[l] = val
            grid1[l] = der
        for q in range(-n_v, n_v + 1):
            v = hv * like(hv, q)
            omega = hv * inv_sqrt_2pi * math.exp(-like(rho, 0.5) * v * v)
            offset = n_v + q
            for k in range(n_nodes):
                s0[k] += omega * grid0[p * k + offset]
                s1[k] += omega * grid1[p * k + offset]
    else:
        hv = hv_max
        n_half = int(like(rho, _V_MAX) / hv)
        for q in range(-n_half, n_half + 1):
            v = hv * like(hv, q)
            omega = hv * inv_sqrt_2pi * math.exp(-like(rho, 0.5) * v * v)
            shift = b_j + eps * v
            for k in range(n_nodes):
                val, der = _value_slope(slope * (h * like(h, k - n_u)) + shift, code)
                s0[k] += omega * val
                s1[k] += omega * der
    kappa = zero
    alpha = zero
    beta = zero
    gamma = zero
    for k in range(n_nodes):
        u = h * like(h, k - n_u)
        w = h * inv_sqrt_2pi * math.exp(-like(rho, 0.5) * u * u)
        val, der, curv = _value_slope_curvature(r_i * u + b_i, code)
        kappa += w * val * s0[k]
        alpha += w * der * s1[k]
        beta += w * curv * s0[k]
        gamma += w * der * s0[k]
    return kappa, alpha, beta, gamma


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _series_pair(rho, p_coef, i, s_coef, j, degree, powers):
    """(kappa, alpha, beta, gamma) of one pair: the four series to ``degree``.

    As sums over n of rho^n (source coefficient) (point coefficient), with the powers in a
    buffer (powers[n] = powers[n - 8] rho^8, a recurrence that vectorises): the sums vectorise
    along n, six operations per degree for the four series, where Horner's rule took eight
    dependent ones (1.6 times faster at L = 150 with the data in cache, measured).
    """
    one = like(rho, 1.0)
    zero = like(rho, 0.0)
    value = one
    for n in range(min(8, degree + 1)):
        powers[n] = value
        value *= rho
    rho8 = value
    for n in range(8, degree + 1):
        powers[n] = powers[n - 8] * rho8
    kappa = zero
    alpha = zero
    beta = zero
    gamma = zero
    F_j = s_coef[j, 0]
    D_j = s_coef[j, 1]
    F_i = p_coef[i, 0]
    D_i = p_coef[i, 1]
    S_i = p_coef[i, 2]
    for n in range(degree + 1):
        x = powers[n] * F_j[n]
        y = powers[n] * D_j[n]
        kappa += x * F_i[n]
        beta += x * S_i[n]
        gamma += x * D_i[n]
        alpha += y * D_i[n]
    return kappa, alpha, beta, gamma


@njit(cache=True)
def _near_pair(rho, i, j, r_i, b_i, r_j, b_j, p_coef, p_tails, p_norms, p_errors, p_diag, p_logs, s_coef,
               s_tails, s_norms, s_errors, s_logs, levels, tol, short_level, guess, powers, out):
    """Pair terms of a pair with |rho| > rho* by the diagonal formula or the long series.

    Writes out[0:4] = (kappa, alpha, beta, gamma) and out[4:8] = bounds on their errors
    (truncation plus estimated coefficient error) and returns (kind, level): kind 0 for the
    diagonal (rho = 1, same r and b), 1 for the series at the smallest stored degree
    levels[level] whose bound meets ``tol`` (searched from the level ``guess``, on the tables'
    log bounds), 2, writing nothing, when no stored degree suffices (the caller then takes
    the quadrature). ``powers``: work buffer of at least L + 1 entries.
    """
    zero = like(rho, 0.0)
    one = like(rho, 1.0)
    ulp4 = like(rho, 4.0) * _unit_roundoff(rho)
    if one - abs(rho) <= ulp4:
        rho = one if rho > zero else -one
        if rho > zero and b_i == b_j and abs(r_i - r_j) <= ulp4 * r_i:
            for q in range(4):
                out[q] = p_diag[i, 0, q]
                out[4 + q] = p_diag[i, 1, q]
            return 0, guess
    n_levels = min(levels.shape[0], s_tails.shape[2])
    log_rho = math.log(abs(rho))
    log_tol = math.log(tol)
    # The bound decreases with the level: walk from ``guess`` (the level of the previous near
    # pair, usually one of the same cluster) to the first level that meets tol. Bisection's
    # scattered reads of the source's row missed the cache one after the other: 0.35 us more
    # per near pair (measured, tanh, m = 1000 with 82 000 aligned pairs).
    level = min(max(guess, short_level), n_levels - 1)
    if like(log_rho, levels[level] + 1) * log_rho + p_logs[i, 0, level] + s_logs[j, 1, level] <= log_tol:
        while level > short_level and (
                like(log_rho, levels[level - 1]) * log_rho + p_logs[i, 0, level - 1] + s_logs[j, 1, level - 1]
                <= log_tol):
            level -= 1
    else:
        level += 1
        while level < n_levels and (
                like(log_rho, levels[level] + 1) * log_rho + p_logs[i, 0, level] + s_logs[j, 1, level] > log_tol):
            level += 1
        if level == n_levels:
            return 2, guess
    L = levels[level]
    kappa, alpha, beta, gamma = _series_pair(rho, p_coef, i, s_coef, j, L, powers)
    power = _int_power(abs(rho), L + 1)
    tF_i = p_tails[i, 0, level]
    tD_i = p_tails[i, 1, level]
    tS_i = p_tails[i, 2, level]
    tF_j = s_tails[j, 0, level]
    tD_j = s_tails[j, 1, level]
    out[0] = kappa
    out[1] = alpha
    out[2] = beta
    out[3] = gamma
    out[4] = power * tF_i * tF_j + p_errors[i, 0] * s_norms[j, 0] + p_norms[i, 0] * s_errors[j, 0]
    out[5] = power * tD_i * tD_j + p_errors[i, 1] * s_norms[j, 1] + p_norms[i, 1] * s_errors[j, 1]
    out[6] = power * tS_i * tF_j + p_errors[i, 2] * s_norms[j, 0] + p_norms[i, 2] * s_errors[j, 0]
    out[7] = power * tD_i * tF_j + p_errors[i, 1] * s_norms[j, 0] + p_norms[i, 1] * s_errors[j, 0]
    return 1, level


# ---------------------------------------------------------------------------------------
# Rows of a tile
# ---------------------------------------------------------------------------------------

@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _horner_one(acc, rho, coefficient, row, cols):
    """acc[t] = acc[t] rho[t] + coefficient row[t]."""
    for t in range(cols):
        acc[t] = acc[t] * rho[t] + coefficient * row[t]


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _horner_four(acc, rho, coefficients, n, table, j0, cols):
    """Four Horner steps, degrees n, n - 1, n - 2, n - 3, in one pass over acc."""
    c3 = coefficients[n]
    c2 = coefficients[n - 1]
    c1 = coefficients[n - 2]
    c0 = coefficients[n - 3]
    row3 = table[n, j0:j0 + cols]
    row2 = table[n - 1, j0:j0 + cols]
    row1 = table[n - 2, j0:j0 + cols]
    row0 = table[n - 3, j0:j0 + cols]
    for t in range(cols):
        r = rho[t]
        acc[t] = (((acc[t] * r + c3 * row3[t]) * r + c2 * row2[t]) * r + c1 * row1[t]) * r + c0 * row0[t]


@njit(cache=True)
def _short_series_row(rho, coef_i, FT, DT, j0, cols, degree, kap, alp, bet, gam):
    """The four series of degree ``degree`` for one point against ``cols`` sources.

    Horner's rule along the sources (FT, DT: (degree + 1, m) source coefficients of sigma and
    sigma', transposed so that a degree is contiguous in j). One loop per series and four
    degrees per pass: a loop writing one array and reading three vectorises (several written
    arrays defeat LLVM's runtime alias checks), and each accumulator is loaded and stored once
    per four degrees; 3.5 times faster than one loop over the four series (measured).
    """
    for t in range(cols):
        kap[t] = like(rho[0], 0.0)
        alp[t] = like(rho[0], 0.0)
        bet[t] = like(rho[0], 0.0)
        gam[t] = like(rho[0], 0.0)
    F = coef_i[0]
    D = coef_i[1]
    S = coef_i[2]
    n = degree
    while (n + 1) % 4 != 0:
        row_F = FT[n, j0:j0 + cols]
        _horner_one(kap, rho, F[n], row_F, cols)
        _horner_one(alp, rho, D[n], DT[n, j0:j0 + cols], cols)
        _horner_one(bet, rho, S[n], row_F, cols)
        _horner_one(gam, rho, D[n], row_F, cols)
        n -= 1
    while n >= 3:
        _horner_four(kap, rho, F, n, FT, j0, cols)
        _horner_four(alp, rho, D, n, DT, j0, cols)
        _horner_four(bet, rho, S, n, FT, j0, cols)
        _horner_four(gam, rho, D, n, FT, j0, cols)
        n -= 4


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _powers(rho, cols, exponent, out, work):
    """out[t] = |rho[t]|^exponent by repeated squaring (passes over t that vectorise)."""
    for t in range(cols):
        work[t] = abs(rho[t])
        out[t] = like(work[t], 1.0)
    e = exponent
    while e > 0:
        if e & 1:
            for t in range(cols):
                out[t] *= work[t]
        e >>= 1
        if e > 0:
            for t in range(cols):
                work[t] *= work[t]


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _reduce_row(c_j, kap, alp, bet, gam, power, w_F, w_D, tile_row, cols):
    """Row sums of a tile: (sum c_j kappa, sum c_j beta, sum c_j gamma, sum p w_F, sum p w_D);
    tile_row[t] becomes c_j alpha_ij, the weight of a_j in the force (second product)."""
    zero = like(kap[0], 0.0)
    k_acc = zero
    b_acc = zero
    g_acc = zero
    eF = zero
    eD = zero
    for t in range(cols):
        c = c_j[t]
        k_acc += c * kap[t]
        b_acc += c * bet[t]
        g_acc += c * gam[t]
        tile_row[t] = c * alp[t]
        eF += power[t] * w_F[t]
        eD += power[t] * w_D[t]
    return k_acc, b_acc, g_acc, eF, eD


@njit(cache=True)
def _norms(A, norms, inverses):
    """|a| of each row and 1 / |a| (0 for a = 0), summed in order: BLAS's ddot rounds
    differently with the alignment of the row, which made the sums depend on where the
    thread's copy happened to be allocated."""
    zero = A.dtype.type(0.0)
    for i in range(A.shape[0]):
        acc = zero
        for k in range(A.shape[1]):
            acc += A[i, k] * A[i, k]
        norms[i] = math.sqrt(acc)
        inverses[i] = A.dtype.type(1.0) / norms[i] if norms[i] > zero else zero


@njit(cache=True)
def _float64_norms(W):
    """|a| of each particle of W (columns :d), in float64, summed in order."""
    d = W.shape[1] - 2
    out = np.empty(W.shape[0])
    for i in range(W.shape[0]):
        acc = 0.0
        for k in range(d):
            value = np.float64(W[i, k])
            acc += value * value
        out[i] = math.sqrt(acc)
    return out


@njit(cache=True)
def _tile_shape(d):
    """(points, sources) per tile: M N K <= _BLAS_SERIAL_MNK, so that OpenBLAS runs each
    product on the calling thread (see kernels/population.py)."""
    rows = max(1, min(_TILE_ROWS, _BLAS_SERIAL_MNK // (16 * max(d, 1))))
    return rows, max(1, min(256, _BLAS_SERIAL_MNK // (rows * max(d, 1))))


@njit(cache=True, parallel=True)
def _series_tiles(points, sources, activation_code, pt, st, rules, rho_threshold, short_degree, tol, n_chunks,
                  K, G, bound, counts):
    """Body of :func:`series_pair_field`; ``n_chunks`` contiguous runs of point blocks."""
    n, p = points.shape
    m = sources.shape[0]
    d = p - 2
    dtype = points.dtype
    zero = dtype.type(0.0)
    one = dtype.type(1.0)
    A_i = np.ascontiguousarray(points[:, :d])
    A_j = np.ascontiguousarray(sources[:, :d])
    b_i = points[:, d].copy()
    b_j = sources[:, d].copy()
    c_j = sources[:, d + 1].copy()
    norm_i = np.empty(n, dtype=dtype)
    inv_i = np.empty(n, dtype=dtype)
    norm_j = np.empty(m, dtype=dtype)
    inv_j = np.empty(m, dtype=dtype)
    _norms(A_i, norm_i, inv_i)
    _norms(A_j, norm_j, inv_j)
    short_level = short_degree // LEVEL_STRIDE
    p_coef = pt.coefficients
    p_tails = pt.tails
    p_norms = pt.norms
    p_errors = pt.errors
    p_diag = pt.diagonal
    p_logs = pt.log_bounds
    s_logs = st.log_bounds
    s_coef = st.coefficients
    s_tails = st.tails
    s_norms = st.norms
    s_errors = st.errors
    levels = pt.levels
    step = pt.step
    # Source coefficients of degree <= short_degree with j contiguous, for the vectorised rows.
    FT = np.empty((short_degree + 1, m), dtype=dtype)
    DT = np.empty((short_degree + 1, m), dtype=dtype)
    for j in range(m):
        for k in range(short_degree + 1):
            FT[k, j] = st.coefficients[j, 0, k]
            DT[k, j] = st.coefficients[j, 1, k]
    # Per-source weights of the truncation bound (|c_j| tau^F_j, |c_j| r_j tau^D_j at
    # short_degree) and of the coefficient-error bound (sums over all sources).
    w_F = np.empty(m, dtype=dtype)
    w_D = np.empty(m, dtype=dtype)
    coef_F = zero  # sum |c_j| |F_j|
    coef_D = zero  # sum |c_j| |D_j| r_j
    err_F = zero  # sum |c_j| e^F_j
    err_D = zero  # sum |c_j| e^D_j r_j
    for j in range(m):
        c = abs(c_j[j])
        w_F[j] = c * st.tails[j, 0, short_level]
        w_D[j] = c * norm_j[j] * st.tails[j, 1, short_level]
        coef_F += c * st.norms[j, 0]
        coef_D += c * norm_j[j] * st.norms[j, 1]
        err_F += c * st.errors[j, 0]
        err_D += c * norm_j[j] * st.errors[j, 1]
    rows_max, cols_max = _tile_shape(d)
    n_blocks = (n + rows_max - 1) // rows_max
    n_chunks = max(1, min(n_chunks, n_blocks))
    n_u = int(like(zero, _U_MAX) / like(zero, pt.step))
    for chunk in prange(n_chunks):
        # Work memory of this thread, allocated once per chunk.
        dot_buf = np.empty(rows_max * cols_max, dtype=dtype)
        part_buf = np.empty(rows_max * d, dtype=dtype)
        force = np.empty((rows_max, d), dtype=dtype)
        k_row = np.empty(rows_max, dtype=dtype)
        b_row = np.empty(rows_max, dtype=dtype)
        g_row = np.empty(rows_max, dtype=dtype)
        eK_row = np.empty(rows_max, dtype=dtype)
        eG_row = np.empty(rows_max, dtype=dtype)
        eB_row = np.empty(rows_max, dtype=dtype)
        eF_row = np.empty(rows_max, dtype=dtype)
        eD_row = np.empty(rows_max, dtype=dtype)
        rho = np.empty((rows_max, cols_max), dtype=dtype)
        kap = np.empty((rows_max, cols_max), dtype=dtype)
        alp = np.empty((rows_max, cols_max), dtype=dtype)
        bet = np.empty((rows_max, cols_max), dtype=dtype)
        gam = np.empty((rows_max, cols_max), dtype=dtype)
        power = np.empty(cols_max, dtype=dtype)
        work = np.empty(cols_max, dtype=dtype)
        # Near pairs of a tile: (row, column) in row order, then their indices by column.
        near_row = np.empty(rows_max * cols_max, dtype=np.int64)
        near_col = np.empty(rows_max * cols_max, dtype=np.int64)
        by_column = np.empty(rows_max * cols_max, dtype=np.int64)
        row_start = np.empty(rows_max + 1, dtype=np.int64)
        column_start = np.empty(cols_max + 1, dtype=np.int64)
        s0 = np.empty(2 * n_u + 1, dtype=dtype)
        s1 = np.empty(2 * n_u + 1, dtype=dtype)
        grid0 = np.empty(32 * (2 * n_u + 1), dtype=dtype)
        grid1 = np.empty(32 * (2 * n_u + 1), dtype=dtype)
        pair = np.empty(8, dtype=dtype)
        powers_buf = np.empty(p_coef.shape[2], dtype=dtype)
        n_near = 0
        n_fallback = 0
        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            i0 = blk * rows_max
            rows = min(rows_max, n - i0)
            A_rows = A_i[i0:i0 + rows]
            force[:rows] = zero
            k_row[:] = zero
            b_row[:] = zero
            g_row[:] = zero
            eK_row[:] = zero
            eG_row[:] = zero
            eB_row[:] = zero
            eF_row[:] = zero
            eD_row[:] = zero
            for j0 in range(0, m, cols_max):
                cols = min(cols_max, m - j0)
                tile = dot_buf[:rows * cols].reshape((rows, cols))
                np.dot(A_rows, A_j[j0:j0 + cols].T, tile)
                count = 0
                for r in range(rows):
                    i = i0 + r
                    row_start[r] = count
                    for t in range(cols):
                        value = tile[r, t] * inv_i[i] * inv_j[j0 + t]
                        value = min(max(value, -one), one)
                        rho[r, t] = value
                        if abs(value) > rho_threshold:
                            near_row[count] = r
                            near_col[count] = t
                            count += 1
                    _short_series_row(rho[r], pt.coefficients[i], FT, DT, j0, cols, short_degree, kap[r], alp[r],
                                      bet[r], gam[r])
                row_start[rows] = count
                # The near pairs by source (counting sort on the column): a source's long
                # coefficient rows are then read once for all the block's points near it, not
                # once per pair (in a trained configuration they otherwise come from memory,
                # pair after pair).
                for t in range(cols + 1):
                    column_start[t] = 0
                for q in range(count):
                    column_start[near_col[q] + 1] += 1
                for t in range(cols):
                    column_start[t + 1] += column_start[t]
                for q in range(count):
                    t = near_col[q]
                    by_column[column_start[t]] = q
                    column_start[t] += 1
                guess = short_level
                for k in range(count):
                    q = by_column[k]
                    r = near_row[q]
                    t = near_col[q]
                    i = i0 + r
                    j = j0 + t
                    kind, guess = _near_pair(rho[r, t], i, j, norm_i[i], b_i[i], norm_j[j], b_j[j], p_coef, p_tails,
                                             p_norms, p_errors, p_diag, p_logs, s_coef, s_tails, s_norms, s_errors,
                                             s_logs, levels, tol, short_level, guess, powers_buf, pair)
                    if kind == 2:
                        kappa, alpha, beta, gamma = _conditional_pair(
                            norm_i[i], b_i[i], norm_j[j], b_j[j], rho[r, t], activation_code, step, rules, s0, s1,
                            grid0, grid1)
                        pair[0] = kappa
                        pair[1] = alpha
                        pair[2] = beta
                        pair[3] = gamma
                        for e in range(4, 8):
                            pair[e] = tol
                        n_fallback += 1
                    kap[r, t] = pair[0]
                    alp[r, t] = pair[1]
                    bet[r, t] = pair[2]
                    gam[r, t] = pair[3]
                    c = abs(c_j[j])
                    eK_row[r] += c * pair[4]
                    eG_row[r] += c * (pair[5] * norm_j[j] + pair[6] * norm_i[i])
                    eB_row[r] += c * pair[7]
                n_near += count
                for r in range(rows):
                    _powers(rho[r], cols, short_degree + 1, power, work)
                    # A near pair's bound replaces the short series' one.
                    for q in range(row_start[r], row_start[r + 1]):
                        power[near_col[q]] = zero
                    k, b, g, eF, eD = _reduce_row(c_j[j0:j0 + cols], kap[r], alp[r], bet[r], gam[r], power,
                                                  w_F[j0:j0 + cols], w_D[j0:j0 + cols], tile[r], cols)
                    k_row[r] += k
                    b_row[r] += b
                    g_row[r] += g
                    eF_row[r] += eF
                    eD_row[r] += eD
                part = part_buf[:rows * d].reshape((rows, d))
                np.dot(tile, A_j[j0:j0 + cols], part)
                force[:rows] += part
            for r in range(rows):
                i = i0 + r
                K[i] = k_row[r]
                for k in range(d):
                    G[i, k] = force[r, k] + b_row[r] * A_i[i, k]
                G[i, d] = g_row[r]
                # Truncation of the short series (|rho|^(L+1) tau_i tau_j summed over the row)
                # plus the near pairs' bounds plus the coefficient errors (|e_i| |F_j| + |F_i| |e_j|).
                tF = pt.tails[i, 0, short_level]
                tD = pt.tails[i, 1, short_level]
                tS = pt.tails[i, 2, short_level]
                r_i = norm_i[i]
                bound[i, 0] = (tF * eF_row[r] + eK_row[r]
                               + pt.errors[i, 0] * coef_F + pt.norms[i, 0] * err_F)
                bound[i, 1] = (tD * eD_row[r] + r_i * tS * eF_row[r] + eG_row[r]
                               + pt.errors[i, 1] * coef_D + pt.norms[i, 1] * err_D
                               + r_i * (pt.errors[i, 2] * coef_F + pt.norms[i, 2] * err_F))
                bound[i, 2] = (tD * eF_row[r] + eB_row[r]
                               + pt.errors[i, 1] * coef_F + pt.norms[i, 1] * err_F)
        counts[chunk, 0] = n_near
        counts[chunk, 1] = n_fallback


def series_pair_field(points, sources, activation_code, point_tables, source_tables, rules, rho_threshold,
                      short_degree, tol, K, G, bound=None):
    """Pair sums by Hermite series (smooth activations, with bias), tiled like the closed form.

    K_i = sum_j c_j kappa(w_i, w_j) and G_i = sum_j c_j grad_{(a_i, b_i)} kappa(w_i, w_j), with
    kappa(w, w') = E[sigma(a . x + b) sigma(a' . x + b')], x ~ N(0, I_d), by the series and
    regimes of the module docstring. For a block of points and a tile of sources, the dot
    products a_i . a_j come from a BLAS product; one pass over the tile turns them into rho and
    evaluates the four series (Horner, vectorised over the sources), the few pairs with
    |rho| > ``rho_threshold`` are redone one by one (in source order, so that a source's long
    coefficient rows serve all the block's points near it), each entry becomes c_j alpha_ij, and a
    second BLAS product adds sum_j c_j alpha_ij a_j. No pair-sized array; each row's sums are
    taken in the same order for any number of threads.

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
        Points w_i = (a_i, b_i, c_i) at which the field is evaluated.
    sources : ndarray, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{(a_j, b_j)}.
    activation_code : int
        Any smooth activation of ``kernels._scalar`` (sigma, sigma', sigma'' are used).
    point_tables, source_tables : SeriesTables
        ``series_tables(points, ...)`` and ``series_tables(sources, ...)`` (the same object
        when points is sources), same dtype, built to the same degree and step.
    rules : InnerRules
        ``inner_rules(dtype)``.
    rho_threshold : float
        rho*: pairs with |rho| > rho* take the per-pair treatment.
    short_degree : int
        Degree L_short of the series for |rho| <= rho*, a multiple of LEVEL_STRIDE; should
        satisfy rho*^(L+1) max_i U_i max_j V_j <= tol (``series_pair_sums`` chooses it).
    tol : float
        Per-pair tolerance on kappa, gamma, r_j alpha and r_i beta for the near pairs.
    K : ndarray, shape (n,), output
    G : ndarray, shape (n, d + 1), output
        G[i, :d] = sum_j c_j grad_{a_i} kappa, G[i, d] = sum_j c_j d kappa / d b_i.
    bound : ndarray, shape (n, 3), output, optional
        Bounds on |K_i error|, |G_i[:d] error| (Euclidean) and |G_i[d] error| from truncation
        and the estimated coefficient quadrature error (see ``SeriesErrorBound``).

    Returns
    -------
    (int, int)
        Number of pairs with |rho| > rho*, and of those computed by quadrature.
    """
    if bound is None:
        bound = np.empty((points.shape[0], 3), dtype=points.dtype)
    n_chunks = get_num_threads()
    counts = np.zeros((n_chunks, 2), dtype=np.int64)
    _series_tiles(points, sources, activation_code, point_tables, source_tables, rules,
                  points.dtype.type(rho_threshold), int(short_degree), points.dtype.type(tol), n_chunks, K, G, bound,
                  counts)
    return int(counts[:, 0].sum()), int(counts[:, 1].sum())


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

def _products(point_tables, source_tables, radius_p, radius_s):
    """max_i U_i(L) and max_j V_j(L) at every stored level (float64):
    U = max(tau^F, tau^D, r tau^S) of the points, V = max(tau^F, r tau^D) of the sources."""
    tp = point_tables.tails.astype(np.float64, copy=False)
    ts = source_tables.tails.astype(np.float64, copy=False)
    U = np.maximum(np.maximum(tp[:, 0], tp[:, 1]), radius_p[:, None] * tp[:, 2]).max(axis=0)
    V = np.maximum(ts[:, 0], radius_s[:, None] * ts[:, 1]).max(axis=0)
    return U, V


def _radius(W):
    return _float64_norms(np.ascontiguousarray(W))


def choose_rule(points, sources, activation_code, tol, max_degree=1024, rho_cap=1.0, pilot=16, target=1e-12):
    """Table degree, quadrature step and its estimated error, from a pilot of particles.

    The pilot: the ``pilot`` particles of each set with the largest |a| (the slowest tails and
    the sharpest integrands). Its tables of degree 64, 128, ... (up to ``max_degree``) with
    half the step ``quadrature_step(r_max, degree)`` serve as reference, until the smallest
    stored degree L with rho_cap^(L+1) max U(L) max V(L) <= tol / 4 on the pilot is found.
    With rho_cap = 1 (every pair summable even at rho = 1) that is the degree; with
    rho_cap < 1 (the largest |rho| of a sample of the pairs, :func:`sample_correlations`) the
    degree is 2 L + 8 (at most the degree for rho = 1), a margin for the pairs more aligned
    than the sample's (the others take the rotated-basis quadrature). The step is
    ``quadrature_step(r_max, degree, pole distance of the activation)``, halved while
    the pilot's coefficients differ from the reference by more than ``target`` relative (an
    activation sharper than tanh). The returned error estimate is 4 times the largest
    relative difference on the pilot.

    Returns
    -------
    degree : int
    step : float
    relative_error : ndarray, shape (2, 3)
        For ``series_tables``: [0] coefficient vectors, [1] second moments, of sigma, sigma',
        sigma''.
    """
    samples = []
    for W in (points, sources):
        W = np.asarray(W)
        samples.append(W[np.argsort(_radius(W))[-pilot:]].astype(np.float64))
    sample = np.concatenate(samples)
    r = _radius(sample)
    r_max = float(r.max(initial=0.0))
    pole = _POLE_DISTANCE.get(activation_code, _STRIP)
    n_p = samples[0].shape[0]
    # Reference degrees 64, 128, ... until the pilot's tails allow rho = 1 within tol.
    reference_degree = min(64, max_degree)
    while True:
        reference, second, _, n_nodes = _raw_tables(sample, activation_code, reference_degree,
                                                    0.5 * quadrature_step(r_max, reference_degree, pole))
        levels = np.arange(0, reference_degree + 1, LEVEL_STRIDE)
        # The floor of series_tables' tails (rounding of N-term sums, about 3 (N + L) u E with
        # the reference's N, twice the final one), and a factor 4 of margin on tol: the degree
        # must also serve the final tables, whose tails carry these allowances.
        floor = 3 * (n_nodes + reference_degree + 4) * np.finfo(np.float64).eps * second[:, :, None]
        tails = np.sqrt(np.maximum(second[:, :, None] - np.cumsum(reference ** 2, axis=2)[:, :, levels], floor))
        U = np.maximum(np.maximum(tails[:n_p, 0], tails[:n_p, 1]), r[:n_p, None] * tails[:n_p, 2]).max(axis=0)
        V = np.maximum(tails[n_p:, 0], r[n_p:, None] * tails[n_p:, 1]).max(axis=0)
        ok = np.nonzero(rho_cap ** (levels + 1.0) * U * V <= 0.25 * tol)[0]
        if ok.size or reference_degree >= max_degree:
            break
        reference_degree = min(2 * reference_degree, max_degree)
    degree = max(int(levels[ok[0]]) if ok.size else int(levels[-1]), LEVEL_STRIDE)
    if rho_cap < 1.0 and ok.size:
        at_one = np.nonzero(U * V <= 0.25 * tol)[0]
        ceiling = int(levels[at_one[0]]) if at_one.size else max_degree
        degree = min(ceiling, -(-(2 * degree + 8) // LEVEL_STRIDE) * LEVEL_STRIDE)
        if degree > reference_degree:
            reference, second, _, _ = _raw_tables(sample, activation_code, degree,
                                                  0.5 * quadrature_step(r_max, degree, pole))
    step = quadrature_step(r_max, degree, pole)
    tiny = 1e-300
    for _ in range(4):
        coefficients, moments, _, _ = _raw_tables(sample, activation_code, degree, step)
        difference = np.sqrt(((coefficients - reference[:, :, :degree + 1]) ** 2).sum(axis=2))
        relative = np.stack([(difference / np.maximum(np.sqrt(second), tiny)).max(axis=0),
                             (np.abs(moments - second) / np.maximum(second, tiny)).max(axis=0)])
        if relative[0].max() <= target:
            break
        step *= 0.5
    return degree, step, 4.0 * relative


def shared_tables(particle_sets, activation_code, tol=1e-10, max_degree=1024):
    """Tables of several particle sets with one rule (degree, step), for several pair sums.

    For a population objective with a teacher: ``tW, tT = shared_tables((W, teacher), code)``,
    then ``series_pair_sums(W, W, code, tables=(tW, tW))`` and
    ``series_pair_sums(W, teacher, code, tables=(tW, tT))``: the particles' tables are built
    once. The rule is :func:`choose_rule` on all the sets together, its degree sized on the
    largest |rho| of a sample of the pairs (:func:`sample_correlations`): pairs more aligned
    than that and beyond the tables' degree take the (slower) rotated-basis quadrature, which
    ``SeriesErrorBound.fallback_pairs`` counts; ``max_degree`` and a second call with
    ``rho_cap=1`` in :func:`choose_rule` give tables for every pair.

    Parameters
    ----------
    particle_sets : sequence of ndarray, shape (p_k, d + 2), float32 or float64
        The particle sets (a, b, c), e.g. ``(W, teacher)``; each set's tables are in its dtype.
    activation_code : int
    tol : float
        Per-pair tolerance on the truncation of the series (as in :func:`series_pair_sums`),
        which sizes the degree.
    max_degree : int
        Largest table degree (:func:`choose_rule`).

    Returns
    -------
    list of SeriesTables
        One per set, in order.
    """
    sets = [np.ascontiguousarray(S) for S in particle_sets]
    union = np.concatenate([S.astype(np.float64, copy=False) for S in sets])
    rho_cap = float(sample_correlations(union, union).max(initial=0.0))
    degree, step, relative_error = choose_rule(union, union, activation_code, tol, max_degree, rho_cap)
    return [series_tables(S, activation_code, degree, step, relative_error) for S in sets]


# Cost model of the threshold choice, in nanoseconds on one core (measured at d = 100): a
# pair of the vectorised short series costs about 1 per degree; a pair of the per-pair path
# about 300 plus 3 per degree.
_SHORT_COST_PER_DEGREE = 1.0
_NEAR_COST = 300.0
_NEAR_COST_PER_DEGREE = 3.0
_THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)


def sample_correlations(points, sources, samples=2048, seed=0):
    """|rho| of a fixed random sample of (point, source) pairs (the diagonal left out when
    points is sources), float64; the fixed seed makes every choice made from it reproducible."""
    points = np.asarray(points)
    sources = np.asarray(sources)
    rng = np.random.default_rng(seed)
    i = rng.integers(points.shape[0], size=samples)
    j = rng.integers(sources.shape[0], size=samples)
    if sources is points:
        keep = i != j
        i, j = i[keep], j[keep]
    return _sampled_correlations(points, sources, i, j)


@njit(cache=True)
def _sampled_correlations(points, sources, i, j):
    d = points.shape[1] - 2
    out = np.empty(i.shape[0])
    for q in range(i.shape[0]):
        dot = 0.0
        norm_i = 0.0
        norm_j = 0.0
        for k in range(d):
            x = np.float64(points[i[q], k])
            y = np.float64(sources[j[q], k])
            dot += x * y
            norm_i += x * x
            norm_j += y * y
        norms = math.sqrt(norm_i * norm_j)
        out[q] = min(abs(dot) / norms, 1.0) if norms > 0.0 else 0.0
    return out


def choose_threshold(rho, U, V, levels, tol):
    """rho* minimising the modelled cost, given the |rho| of a sample of pairs.

    For each candidate c in _THRESHOLDS: L_short(c) = the smallest stored degree with
    c^(L+1) max U max V <= tol, and the cost of a pair is L_short(c) + 1 (times
    _SHORT_COST_PER_DEGREE) if |rho| <= c, else _NEAR_COST + _NEAR_COST_PER_DEGREE (L(|rho|) + 1).
    """
    if rho.size == 0:
        return 0.5
    log_tol = math.log(tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_product = np.log(U * V)
        log_rho = np.log(rho)  # -inf at rho = 0: any degree will do

    def degree(log_x):
        """Smallest stored degree with x^(L+1) U V <= tol (the largest if none), for each x."""
        with np.errstate(invalid="ignore"):
            ok = np.asarray(log_x)[..., None] * (levels + 1.0) + log_product <= log_tol
        return np.where(ok.any(axis=-1), levels[np.argmax(ok, axis=-1)], levels[-1])

    near_cost = _NEAR_COST + _NEAR_COST_PER_DEGREE * (degree(log_rho) + 1.0)
    best, best_cost = _THRESHOLDS[0], np.inf
    for c in _THRESHOLDS:
        cost = _SHORT_COST_PER_DEGREE * (degree(math.log(c)) + 1.0) + float(np.where(rho > c, near_cost, 0.0).mean())
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def series_pair_sums(points, sources, activation_code, tol=1e-10, rho_threshold=None, max_degree=1024,
                     tables=None):
    """Pair sums K, G of ``points`` against ``sources`` by Hermite series, with an error bound.

    Chooses the table degree and quadrature step (:func:`choose_rule`, the degree sized on the
    largest |rho| of a sample of the pairs; if more than max(n, m) pairs then need the
    rotated-basis quadrature, it starts again with tables for rho = 1), builds the tables
    (:func:`series_tables`), chooses rho* (:func:`choose_threshold`) and the short degree
    L_short (smallest multiple of 4 with rho*^(L+1) max_i U_i max_j V_j <= tol) and calls
    :func:`series_pair_field`.

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
    sources : ndarray, shape (m, d + 2), same dtype
    activation_code : int
    tol : float
        Per-pair tolerance on the truncation of kappa, d kappa / d b_i, r_j alpha_ij and
        r_i beta_ij (the parts of grad_{a_i} kappa along a_j and a_i). At least 1e-7 is used in
        float32.
    rho_threshold : float, optional
        rho* between the vectorised short series and the per-pair treatment; default
        :func:`choose_threshold`.
    max_degree : int
        Largest table degree; pairs that need more take the rotated-basis quadrature. The
        tables take 24 (L + 1) bytes per particle and their construction O(p N L) time (N
        about 26 / step nodes): at |a| about 1 the degree chosen is 40 to 170; aligned tanh
        particles with |a| = 3 need about 1000 (sigmoid at |a| = 4: about 400).
    tables : (SeriesTables, SeriesTables), optional
        Prebuilt (point, source) tables with the same step and degree (:func:`shared_tables`,
        or :func:`series_tables` of both sets); skips the choice of the rule.

    Returns
    -------
    K : ndarray, shape (n,)
        sum_j c_j kappa(w_i, w_j).
    G : ndarray, shape (n, d + 1)
        [:d] sum_j c_j grad_{a_i} kappa, [d] sum_j c_j d kappa / d b_i.
    error_bound : SeriesErrorBound
        ``K[i]``, ``G[i]``: bounds on |K_i - K_i(exact)| and |G_i - G_i(exact)|_2, the sum over
        j of |c_j| times (1) the series truncation, rigorous given the coefficients
        (|rho|^(L+1) tau_i tau_j for each of the four series, |G| error <= r_j |d alpha| +
        r_i |d beta| + |d gamma|), (2) the coefficient quadrature error, estimated (4 times the
        difference from half the step on a pilot of particles, plus N u for the rounding of the
        node sums; |e_i| |F_j| + |F_i| |e_j| per series), (3) for the diagonal pairs, the
        estimated error of the one-dimensional rule, and (4) for pairs computed by the
        rotated-basis quadrature, ``tol`` (its design accuracy, measured in the tests, not
        proven). Floating-point rounding of the series sums and of the dot products a_i . a_j
        is not included (measured: about 1e-14 of sum |c_j| in float64; in float32 about 2e-7,
        which then dominates and which the bound does not cover).
    """
    points = np.ascontiguousarray(points)
    same = sources is points
    sources = points if same else np.ascontiguousarray(sources)
    dtype = points.dtype
    if sources.dtype != dtype:
        raise ValueError(f"points and sources must share a dtype, got {dtype} and {sources.dtype}")
    n, p = points.shape
    if n == 0 or sources.shape[0] == 0:
        return (np.zeros(n, dtype=dtype), np.zeros((n, p - 1), dtype=dtype),
                SeriesErrorBound(np.zeros(n), np.zeros(n), 0, 0, 0.0, 0.0, 0.0, 0, 0))
    K = np.empty(n, dtype=dtype)
    G = np.empty((n, p - 1), dtype=dtype)
    bound = np.empty((n, 3), dtype=dtype)

    def field(point_tables, source_tables, rules, threshold, short_degree, tol):
        near, fallback = series_pair_field(points, sources, activation_code, point_tables, source_tables, rules,
                                           threshold, short_degree, tol, K, G, bound)
        return near, fallback, bound

    return K, G, planned_pair_sums(points, sources, same, activation_code, tol, rho_threshold, max_degree, tables,
                                   field)


def planned_pair_sums(points, sources, same, activation_code, tol, rho_threshold, max_degree, tables, field):
    """The choices of :func:`series_pair_sums` (rule, tables, rho*, short degree, the retry with
    tables for rho = 1), with the pair sums left to ``field``; returns the SeriesErrorBound.

    ``points`` and ``sources`` are host arrays (n, m > 0; ``same``: the sources are the points);
    ``field(point_tables, source_tables, rules, rho_threshold, short_degree, tol)`` computes
    the sums (``series_pair_field`` on the CPU, its device twin on the GPU) and returns
    (near pairs, fallback pairs, the (n, 3) host array of bounds).
    """
    dtype = points.dtype
    if dtype == np.float32:
        tol = max(tol, 1e-7)
    n = points.shape[0]
    radius_p = _radius(points)
    radius_s = radius_p if same else _radius(sources)
    rho_sample = sample_correlations(points, sources)
    # Tables sized on the sample's largest |rho| first; if many pairs then fall back on the
    # quadrature (aligned pairs the sample missed), again with tables for rho = 1.
    sample_max = float(rho_sample.max(initial=0.0))
    for rho_cap in ((sample_max, 1.0) if sample_max < 1.0 else (1.0,)) if tables is None else (None,):
        if tables is None:
            degree, step, relative_error = choose_rule(points, sources, activation_code, tol, max_degree, rho_cap)
            point_tables = series_tables(points, activation_code, degree, step, relative_error)
            source_tables = point_tables if same else series_tables(sources, activation_code, degree, step,
                                                                     relative_error)
        else:
            point_tables, source_tables = tables
        coefficient_error = max(point_tables.relative_error, source_tables.relative_error)
        U, V = _products(point_tables, source_tables, radius_p, radius_s)
        levels = point_tables.levels
        threshold = rho_threshold
        if threshold is None:
            threshold = choose_threshold(rho_sample, U, V, levels, tol)
        ok = np.nonzero(threshold ** (levels + 1.0) * U * V <= tol)[0]
        short_degree = int(levels[ok[0]]) if ok.size else int(levels[-1])
        near, fallback, bound = field(point_tables, source_tables, _inner_rules(np.dtype(dtype).name), threshold,
                                      short_degree, tol)
        if fallback <= max(n, sources.shape[0]):
            break
    bound = bound.astype(np.float64)
    return SeriesErrorBound(bound[:, 0], bound[:, 1] + bound[:, 2], short_degree, int(levels[-1]),
                            float(threshold), point_tables.step, coefficient_error, near, fallback)

