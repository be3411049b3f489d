"""Closed-form population pair kernels with biases: relu, erf(z/sqrt 2), normal CDF, linear.

For x ~ N(0, I_d) and two neurons with pre-activations h_i = a_i . x + b_i, (h_i, h_j) is a
Gaussian pair: means b_i, b_j, variances r_i^2 = |a_i|^2, r_j^2, covariance a_i . a_j. The pair
term kappa(w_i, w_j) = E[sigma(h_i) sigma(h_j)] is then a function of five numbers
(a_i . a_j, r_i, r_j, b_i, b_j), and by Stein's identity its gradient in a_i lies in the span
of a_i and a_j:

    grad_{a_i} kappa = alpha_ij a_j + beta_ij a_i,      d kappa / d b_i = gb_ij.

With beta_k = b_k / r_k, rho = a_i . a_j / (r_i r_j), s = sqrt(1 - rho^2), phi and Phi the
standard normal density and CDF and Phi_2 the bivariate CDF (``_gaussian``):

* relu: with g_i = (beta_i - rho beta_j) / s, g_j = (beta_j - rho beta_i) / s, P = Phi_2(beta_i,
  beta_j; rho),
  kappa = (b_i b_j + a_i . a_j) P + b_i r_j phi(beta_j) Phi(g_i) + b_j r_i phi(beta_i) Phi(g_j)
          + r_i r_j s phi(beta_j) phi(g_i),
  alpha = E[H(h_i) H(h_j)] = P,
  beta = E[delta(h_i) relu(h_j)] = (phi(beta_i) / r_i) (r_j s phi(g_j) + (b_j - rho r_j beta_i) Phi(g_j)),
  gb = E[H(h_i) relu(h_j)] = b_j P + r_j phi(beta_j) Phi(g_i) + rho r_j phi(beta_i) Phi(g_j);
* normal CDF sigma = Phi: with n_k = sqrt(1 + r_k^2), u_k = b_k / n_k, q = a_i . a_j / (n_i n_j),
  kappa = Phi_2(u_i, u_j; q); d/du_i = phi(u_i) Phi((u_j - q u_i) / s_q), d/dq = the bivariate
  density, chained through u_i(a_i, b_i) and q(a_i);
* erf(z / sqrt 2) = 2 Phi(z) - 1: kappa = 4 (Phi_2 - Phi(u_i) Phi(u_j)) + erf(u_i/sqrt 2) erf(u_j/sqrt 2),
  the first term computed without cancellation (``bivariate_normal_excess``);
* linear: kappa = a_i . a_j + b_i b_j.

Limits, all finite: r_i = 0 (h_i = b_i is a constant), rho = +-1 (s = 0: the ratios g take
their one-sided limits, 0/0 counts as 0, which gives the exact value on duplicated neurons),
|beta| large (clipped at 50, where phi underflows and Phi is 0 or 1 in either precision). At
a_i = 0 and b_i = 0 together relu has no derivative; the kernel returns 0 there, as relu'(0) = 0.

The tile structure is the one of the bias-free kernel (``population._closed_form_tiles``): for
a block of points and a tile of sources, the Gram products a_i . a_j by BLAS, one elementwise
pass that turns each entry into c_j alpha_ij and sums c_j kappa, c_j beta and c_j gb per
point, and a second BLAS product sum_j (c_j alpha_ij) a_j; no pair-sized array.
"""
import math

import numpy as np
from numba import get_num_threads, njit, prange

from ._gaussian import bivariate_normal_cdf, bivariate_normal_excess, normal_cdf, normal_pdf
from ._scalar import ERF, LINEAR, NORMAL_CDF, RELU, like
from .population import _row_norms, general_tile_shape

# Activations with a closed form with biases (by code).
BIAS_CLOSED_FORM_CODES = (RELU, ERF, NORMAL_CDF, LINEAR)

# Beyond |beta| = 50, phi(beta) = 0 and Phi(beta) is 0 or 1 in float32 and float64, so the
# clipped ratio gives the same terms and no inf - inf.
_RATIO_CLIP = 50.0


@njit(cache=True)
def _one_sided_ratio(num, den):
    """num / den for den >= 0; at den = 0 the limit as den -> 0+ (+-inf), 0 for 0 / 0."""
    if den > like(den, 0.0):
        return num / den
    if num > like(num, 0.0):
        return like(num, math.inf)
    if num < like(num, 0.0):
        return like(num, -math.inf)
    return like(num, 0.0)


@njit(cache=True)
def _clip(x, bound):
    return min(max(x, -bound), bound)


@njit(cache=True)
def _relu_bias_pair(dot, r_i, r_j, b_i, b_j):
    """(kappa, alpha, beta, gb) of the relu pair term with biases (module docstring)."""
    zero = like(dot, 0.0)
    one = like(dot, 1.0)
    if r_i == zero or r_j == zero:
        # A constant pre-activation factors out: kappa = relu(h_i) relu(h_j) with one of them
        # deterministic; E[relu(r z + b)] = r phi(b / r) + b Phi(b / r).
        if r_i == zero and r_j == zero:
            on_i = one if b_i > zero else zero
            return max(b_i, zero) * max(b_j, zero), zero, zero, on_i * max(b_j, zero)
        if r_i == zero:
            on_i = one if b_i > zero else zero
            t = _clip(b_j / r_j, like(dot, _RATIO_CLIP))
            mean_j = r_j * normal_pdf(t) + b_j * normal_cdf(t)
            # grad_{a_i} E[relu(a_i . x + b_i)] relu(h_j) at a_i = 0, b_i > 0: E[x relu(h_j)] = a_j Phi(t)
            return max(b_i, zero) * mean_j, on_i * normal_cdf(t), zero, on_i * mean_j
        t = _clip(b_i / r_i, like(dot, _RATIO_CLIP))
        relu_j = max(b_j, zero)
        mean_i = r_i * normal_pdf(t) + b_i * normal_cdf(t)
        return relu_j * mean_i, zero, relu_j * normal_pdf(t) / r_i, relu_j * normal_cdf(t)
    bound = like(dot, _RATIO_CLIP)
    beta_i = _clip(b_i / r_i, bound)
    beta_j = _clip(b_j / r_j, bound)
    rho = min(max(dot / (r_i * r_j), -one), one)
    s = math.sqrt((one - rho) * (one + rho))
    g_i = _one_sided_ratio(beta_i - rho * beta_j, s)
    # g_j from g_i through an exact identity, not as (beta_j - rho beta_i) / s: near rho = +-1
    # each ratio carries a rounding error eps |beta| / s, and only their difference (rho > 0)
    # or sum (rho < 0) cancels in kappa and gb; computed apart, an exact duplicate with
    # |b| ~ 3 lost 1e-10 relative (measured against mpmath).
    if rho >= zero:
        g_j = (beta_i + beta_j) * s / (one + rho) - g_i  # g_i + g_j = (beta_i + beta_j)(1 - rho) / s
    else:
        g_j = g_i - (beta_i - beta_j) * s / (one - rho)  # g_i - g_j = (beta_i - beta_j)(1 + rho) / s
    pdf_i = normal_pdf(beta_i)
    pdf_j = normal_pdf(beta_j)
    cdf_gi = normal_cdf(g_i)
    cdf_gj = normal_cdf(g_j)
    P = bivariate_normal_cdf(beta_i, beta_j, rho)
    if s > zero:
        # s phi(beta_j) phi(g_i) = s phi(beta_i) phi(g_j): the bivariate density term.
        tail = s * pdf_j * normal_pdf(g_i)
        # E[relu(h_j) | h_i = 0] / r_j = s (phi(g_j) + g_j Phi(g_j)), insensitive to g_j's rounding
        mean_j = s * (normal_pdf(g_j) + g_j * cdf_gj)
    else:
        tail = zero
        mean_j = max(beta_j - rho * beta_i, zero)
    kappa = (b_i * b_j + dot) * P + b_i * r_j * pdf_j * cdf_gi + b_j * r_i * pdf_i * cdf_gj + r_i * r_j * tail
    beta = pdf_i * r_j / r_i * mean_j
    gb = b_j * P + r_j * pdf_j * cdf_gi + rho * r_j * pdf_i * cdf_gj
    return kappa, P, beta, gb


@njit(cache=True)
def _gaussian_cdf_pair(dot, r_i, r_j, b_i, b_j, erf_form):
    """(kappa, alpha, beta, gb) for sigma = Phi (``erf_form`` False) or erf(z / sqrt 2) = 2 Phi - 1.

    E[Phi(h_i) Phi(h_j)] = Phi_2(u_i, u_j; q) with u = b / sqrt(1 + r^2) and
    q = a_i . a_j / (n_i n_j): Phi(h) = P(Y < h) for an independent Y ~ N(0, 1).
    """
    one = like(dot, 1.0)
    n_i = math.sqrt(one + r_i * r_i)
    n_j = math.sqrt(one + r_j * r_j)
    u_i = b_i / n_i
    u_j = b_j / n_j
    q = min(max(dot / (n_i * n_j), -one), one)
    s = math.sqrt((one - q) * (one + q))  # > 0: |a_i . a_j| <= r_i r_j < n_i n_j
    z = (u_j - q * u_i) / s
    pdf_i = normal_pdf(u_i)
    density = pdf_i * normal_pdf(z) / s  # d Phi_2 / d q
    excess = bivariate_normal_excess(u_i, u_j, q)
    if erf_form:
        sqrt_half = like(dot, 0.7071067811865476)
        two = like(dot, 2.0)
        four = like(dot, 4.0)
        kappa = four * excess + math.erf(u_i * sqrt_half) * math.erf(u_j * sqrt_half)
        # d kappa / d u_i = 4 phi(u_i) Phi(z) - 2 phi(u_i) = 2 phi(u_i) erf(z / sqrt 2)
        d_u = two * pdf_i * math.erf(z * sqrt_half)
        d_q = four * density
    else:
        kappa = excess + normal_cdf(u_i) * normal_cdf(u_j)
        d_u = pdf_i * normal_cdf(z)
        d_q = density
    # d u_i / d a_i = -u_i a_i / n_i^2, d u_i / d b_i = 1 / n_i, d q / d a_i = a_j / (n_i n_j) - q a_i / n_i^2
    inv_ni2 = one / (n_i * n_i)
    return kappa, d_q / (n_i * n_j), -(d_u * u_i + d_q * q) * inv_ni2, d_u / n_i


@njit(cache=True)
def bias_pair(dot, r_i, r_j, b_i, b_j, code):
    """kappa(w_i, w_j) and its gradient in (a_i, b_i) for the closed forms with biases.

    Parameters
    ----------
    dot : float32 or float64
        a_i . a_j.
    r_i, r_j : same type
        |a_i|, |a_j|.
    b_i, b_j : same type
        Biases.
    code : int
        RELU, ERF, NORMAL_CDF or LINEAR.

    Returns
    -------
    (kappa, alpha, beta, gb) with grad_{a_i} kappa = alpha a_j + beta a_i, d kappa / d b_i = gb.
    """
    if code == RELU:
        return _relu_bias_pair(dot, r_i, r_j, b_i, b_j)
    if code == ERF:
        return _gaussian_cdf_pair(dot, r_i, r_j, b_i, b_j, True)
    if code == NORMAL_CDF:
        return _gaussian_cdf_pair(dot, r_i, r_j, b_i, b_j, False)
    return dot + b_i * b_j, like(dot, 1.0), like(dot, 0.0), b_j


@njit(cache=True)
def _bias_row(dot, r_i, b_i, r_j, b_j, c_j, code):
    """One row of a tile: on entry dot[t] = a_i . a_j, on exit c_j alpha_ij; returns the row's
    (sum c_j kappa, sum c_j beta, sum c_j gb)."""
    k_acc = like(r_i, 0.0)
    beta_acc = like(r_i, 0.0)
    gb_acc = like(r_i, 0.0)
    for t in range(dot.shape[0]):
        kappa, alpha, beta, gb = bias_pair(dot[t], r_i, r_j[t], b_i, b_j[t], code)
        cj = c_j[t]
        k_acc += cj * kappa
        beta_acc += cj * beta
        gb_acc += cj * gb
        dot[t] = cj * alpha
    return k_acc, beta_acc, gb_acc


@njit(cache=True, parallel=True)
def _bias_tiles(points, sources, activation_code, n_chunks, K, G):
    """Body of :func:`bias_pair_field`; ``n_chunks`` contiguous runs of point blocks."""
    n, p = points.shape
    m = sources.shape[0]
    d = p - 2
    dtype = points.dtype
    zero = dtype.type(0.0)
    A_i = np.ascontiguousarray(points[:, :d])
    A_j = np.ascontiguousarray(sources[:, :d])
    b_i = points[:, d].copy()
    b_j = sources[:, d].copy()
    c_j = sources[:, d + 1].copy()
    norm_i = np.empty(n, dtype=dtype)
    inv_i = np.empty(n, dtype=dtype)
    norm_j = np.empty(m, dtype=dtype)
    inv_j = np.empty(m, dtype=dtype)  # unused: _row_norms fills both
    _row_norms(A_i, norm_i, inv_i)
    _row_norms(A_j, norm_j, inv_j)
    rows_max, cols_max = general_tile_shape(d)
    n_blocks = (n + rows_max - 1) // rows_max
    n_chunks = max(1, min(n_chunks, n_blocks))
    for chunk in prange(n_chunks):
        dot_buf = np.empty(rows_max * cols_max, dtype=dtype)
        part_buf = np.empty(rows_max * d, dtype=dtype)
        force = np.empty((rows_max, d), dtype=dtype)
        k_row = np.empty(rows_max, dtype=dtype)
        beta_row = np.empty(rows_max, dtype=dtype)
        gb_row = np.empty(rows_max, dtype=dtype)
        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            i0 = blk * rows_max
            rows = min(rows_max, n - i0)
            A_rows = A_i[i0:i0 + rows]
            force[:rows] = zero
            k_row[:] = zero
            beta_row[:] = zero
            gb_row[:] = zero
            for j0 in range(0, m, cols_max):
                cols = min(cols_max, m - j0)
                tile = dot_buf[:rows * cols].reshape((rows, cols))
                np.dot(A_rows, A_j[j0:j0 + cols].T, tile)
                for r in range(rows):
                    i = i0 + r
                    k, beta, gb = _bias_row(tile[r], norm_i[i], b_i[i], norm_j[j0:j0 + cols], b_j[j0:j0 + cols],
                                            c_j[j0:j0 + cols], activation_code)
                    k_row[r] += k
                    beta_row[r] += beta
                    gb_row[r] += gb
                part = part_buf[:rows * d].reshape((rows, d))
                np.dot(tile, A_j[j0:j0 + cols], part)
                force[:rows] += part
            for r in range(rows):
                i = i0 + r
                K[i] = k_row[r]
                for k in range(d):
                    G[i, k] = force[r, k] + beta_row[r] * A_i[i, k]
                G[i, d] = gb_row[r]


def bias_pair_field(points, sources, activation_code, K, G):
    """Closed-form pair sums with biases for relu, erf(z/sqrt 2), the normal CDF or linear.

    K_i = sum_j c_j kappa(w_i, w_j), G_i[:d] = sum_j c_j grad_{a_i} kappa(w_i, w_j) and
    G_i[d] = sum_j c_j d kappa / d b_i, kappa(w, w') = E[sigma(a . x + b) sigma(a' . x + b')]
    for x ~ N(0, I_d) in closed form (module docstring). Tiled like
    ``population.closed_form_pair_field``: BLAS Gram tiles, one elementwise pass, BLAS back.

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
        Points w_i = (a_i, b_i, c_i) at which the field is evaluated (c_i is not used).
    sources : ndarray, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{(a_j, b_j)}.
    activation_code : int
        RELU, ERF, NORMAL_CDF or LINEAR.
    K : ndarray, shape (n,), output
    G : ndarray, shape (n, d + 1), output
    """
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    _bias_tiles(points, sources, activation_code, get_num_threads(), K, G)
