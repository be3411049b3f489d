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
|beta| large (clipped only at 1e18, before b / r overflows). At
a_i = 0 and b_i = 0 together relu has no derivative; the kernel returns 0 there, as relu'(0) = 0.

The tile structure is the one of the bias-free kernel (``population._closed_form_tiles``): for
a block of points and a tile of sources, the Gram products a_i . a_j by BLAS, one elementwise
pass that turns each entry into c_j alpha_ij and sums c_j kappa, c_j beta and c_j gb per
point, and a second BLAS product sum_j (c_j alpha_ij) a_j; no pair-sized array.
"""
import math

import numpy as np
from numba import get_num_threads, njit, prange

from ._gaussian import _excess_small_rho, bivariate_normal_cdf_s, normal_cdf, normal_pdf
from ._scalar import ERF, LINEAR, NORMAL_CDF, RELU, like
from .population import _round_robin_pair, general_tile_shape, self_tile_size

# Activations with a closed form with biases (by code).
BIAS_CLOSED_FORM_CODES = (RELU, ERF, NORMAL_CDF, LINEAR)

# beta = b / r is clipped only where r is so small that b / r would overflow (r < |b| 1e-18):
# phi(1e18) = 0 and Phi(1e18) = 1 in either precision and no inf - inf arises, while every
# term linear in beta (r_j beta_j = b_j in E[relu(h_j) | h_i = 0]) keeps its value. A clip at
# 50 (the first version) gave E[delta(h_i) relu(h_j)] 50 r_j instead of b_j for |a_j| = 1e-3.
_RATIO_CLIP = 1e18


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
def _relu_degenerate(r_i, r_j, b_i, b_j):
    """(kappa, alpha, beta, gb) of relu when a_i = 0 or a_j = 0: a constant pre-activation
    factors out, E[relu(r z + b)] = r phi(b / r) + b Phi(b / r)."""
    zero = like(r_i, 0.0)
    one = like(r_i, 1.0)
    on_i = one if b_i > zero else zero
    if r_i == zero and r_j == zero:
        return max(b_i, zero) * max(b_j, zero), zero, zero, on_i * max(b_j, zero)
    if r_i == zero:
        t = _clip(b_j / r_j, like(r_i, _RATIO_CLIP))
        mean_j = r_j * normal_pdf(t) + b_j * normal_cdf(t)
        # grad_{a_i} E[relu(a_i . x + b_i) relu(h_j)] at a_i = 0, b_i > 0: E[x relu(h_j)] = Phi(t) a_j
        return max(b_i, zero) * mean_j, on_i * normal_cdf(t), zero, on_i * mean_j
    t = _clip(b_i / r_i, like(r_i, _RATIO_CLIP))
    relu_j = max(b_j, zero)
    mean_i = r_i * normal_pdf(t) + b_i * normal_cdf(t)
    return relu_j * mean_i, zero, relu_j * normal_pdf(t) / r_i, relu_j * normal_cdf(t)


@njit(cache=True)
def particle_features(r, b, code):
    """The five per-particle numbers the pair terms need, computed once per particle.

    relu: (r, b, beta = b / r clipped at +-1e18, phi(beta), Phi(beta)); normal CDF and erf:
    (n = sqrt(1 + r^2), u = b / n, phi(u), Phi(u), erf(u / sqrt 2)); linear: (r, b, 0, 0, 0).
    """
    zero = like(r, 0.0)
    one = like(r, 1.0)
    if code == RELU:
        beta = _clip(b / r, like(r, _RATIO_CLIP)) if r > zero else zero
        return r, b, beta, normal_pdf(beta), normal_cdf(beta)
    if code == ERF or code == NORMAL_CDF:
        n = math.sqrt(one + r * r)
        u = b / n
        return n, u, normal_pdf(u), normal_cdf(u), math.erf(u * like(r, 0.7071067811865476))
    return r, b, zero, zero, zero


@njit(cache=True)
def _bivariate_with(h, k, rho, cdf_h, cdf_k, s):
    """Phi_2(h, k; rho) given Phi(h), Phi(k) (two erfc fewer per pair for |rho| < 0.925) and
    s = sqrt(1 - rho^2)."""
    if abs(rho) < like(h, 0.925):
        return cdf_h * cdf_k + _excess_small_rho(h, k, rho)
    return bivariate_normal_cdf_s(h, k, rho, s)


@njit(cache=True)
def _relu_pair_both(dot, r_i, b_i, beta_i, pdf_i, cdf_i, r_j, b_j, beta_j, pdf_j, cdf_j, both):
    """relu: (kappa, alpha, beta_ij, gb_ij, beta_ji, gb_ji); the last two only when ``both``.

    Near rho = 1, s = sqrt(1 - rho^2) from the rounded rho is uncertain by its whole size
    (~1e-8), and so are alpha and beta by ~1e-9 each; but their errors cancel in the force
    alpha a_j + beta a_i (a_j is then nearly parallel to a_i), which is what the field uses:
    tests/test_population_bias.py checks it at sin(angle) = 5e-9 to 1e-13."""
    zero = like(dot, 0.0)
    one = like(dot, 1.0)
    if r_i == zero or r_j == zero:
        kappa, alpha, beta_ij, gb_ij = _relu_degenerate(r_i, r_j, b_i, b_j)
        beta_ji = zero
        gb_ji = zero
        if both:
            _, _, beta_ji, gb_ji = _relu_degenerate(r_j, r_i, b_j, b_i)
        return kappa, alpha, beta_ij, gb_ij, beta_ji, gb_ji
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
    cdf_gi = normal_cdf(g_i)
    cdf_gj = normal_cdf(g_j)
    P = _bivariate_with(beta_i, beta_j, rho, cdf_i, cdf_j, s)
    mean_i = zero
    if s > zero:
        pdf_gi = normal_pdf(g_i)
        # s phi(beta_j) phi(g_i) = s phi(beta_i) phi(g_j): the bivariate density term.
        tail = s * pdf_j * pdf_gi
        # E[relu(h_j) | h_i = 0] / r_j = s (phi(g_j) + g_j Phi(g_j)), insensitive to g_j's rounding
        mean_j = s * (normal_pdf(g_j) + g_j * cdf_gj)
        if both:
            mean_i = s * (pdf_gi + g_i * cdf_gi)
    else:
        tail = zero
        mean_j = max(beta_j - rho * beta_i, zero)
        mean_i = max(beta_i - rho * beta_j, zero)
    kappa = (b_i * b_j + dot) * P + b_i * r_j * pdf_j * cdf_gi + b_j * r_i * pdf_i * cdf_gj + r_i * r_j * tail
    beta_ij = pdf_i * r_j / r_i * mean_j
    gb_ij = b_j * P + r_j * pdf_j * cdf_gi + rho * r_j * pdf_i * cdf_gj
    beta_ji = zero
    gb_ji = zero
    if both:
        beta_ji = pdf_j * r_i / r_j * mean_i
        gb_ji = b_i * P + r_i * pdf_i * cdf_gj + rho * r_i * pdf_j * cdf_gi
    return kappa, P, beta_ij, gb_ij, beta_ji, gb_ji


@njit(cache=True)
def _gaussian_cdf_pair_both(dot, n_i, u_i, pdf_i, cdf_i, erf_i, n_j, u_j, pdf_j, cdf_j, erf_j, erf_form, both):
    """sigma = Phi (``erf_form`` False) or erf(z / sqrt 2) = 2 Phi - 1: (kappa, alpha, beta_ij,
    gb_ij, beta_ji, gb_ji), the last two only when ``both``.

    E[Phi(h_i) Phi(h_j)] = Phi_2(u_i, u_j; q) with u = b / sqrt(1 + r^2) and
    q = a_i . a_j / (n_i n_j): Phi(h) = P(Y < h) for an independent Y ~ N(0, 1).
    """
    zero = like(dot, 0.0)
    one = like(dot, 1.0)
    q = min(max(dot / (n_i * n_j), -one), one)
    s = math.sqrt((one - q) * (one + q))  # > 0: |a_i . a_j| <= r_i r_j < n_i n_j
    z_i = (u_j - q * u_i) / s
    density = pdf_i * normal_pdf(z_i) / s  # d Phi_2 / d q
    if abs(q) < like(dot, 0.925):
        excess = _excess_small_rho(u_i, u_j, q)
    else:
        excess = bivariate_normal_cdf_s(u_i, u_j, q, s) - cdf_i * cdf_j
    du_j = zero
    if erf_form:
        sqrt_half = like(dot, 0.7071067811865476)
        two = like(dot, 2.0)
        kappa = like(dot, 4.0) * excess + erf_i * erf_j
        # d kappa / d u_i = 4 phi(u_i) Phi(z_i) - 2 phi(u_i) = 2 phi(u_i) erf(z_i / sqrt 2)
        du_i = two * pdf_i * math.erf(z_i * sqrt_half)
        if both:
            du_j = two * pdf_j * math.erf((u_i - q * u_j) / s * sqrt_half)
        d_q = like(dot, 4.0) * density
    else:
        kappa = excess + cdf_i * cdf_j
        du_i = pdf_i * normal_cdf(z_i)
        if both:
            du_j = pdf_j * normal_cdf((u_i - q * u_j) / s)
        d_q = density
    # d u_i / d a_i = -u_i a_i / n_i^2, d u_i / d b_i = 1 / n_i, d q / d a_i = a_j / (n_i n_j) - q a_i / n_i^2
    return (kappa, d_q / (n_i * n_j), -(du_i * u_i + d_q * q) / (n_i * n_i), du_i / n_i,
            -(du_j * u_j + d_q * q) / (n_j * n_j), du_j / n_j)


@njit(cache=True)
def _pair_both(dot, fi0, fi1, fi2, fi3, fi4, fj0, fj1, fj2, fj3, fj4, code, both):
    """(kappa, alpha, beta_ij, gb_ij, beta_ji, gb_ji) from the two particles' features."""
    if code == RELU:
        return _relu_pair_both(dot, fi0, fi1, fi2, fi3, fi4, fj0, fj1, fj2, fj3, fj4, both)
    if code == ERF or code == NORMAL_CDF:
        return _gaussian_cdf_pair_both(dot, fi0, fi1, fi2, fi3, fi4, fj0, fj1, fj2, fj3, fj4, code == ERF, both)
    zero = like(dot, 0.0)
    return dot + fi1 * fj1, like(dot, 1.0), zero, fj1, zero, fi1


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
    fi0, fi1, fi2, fi3, fi4 = particle_features(r_i, b_i, code)
    fj0, fj1, fj2, fj3, fj4 = particle_features(r_j, b_j, code)
    kappa, alpha, beta, gb, _, _ = _pair_both(dot, fi0, fi1, fi2, fi3, fi4, fj0, fj1, fj2, fj3, fj4, code, False)
    return kappa, alpha, beta, gb


# ---------------------------------------------------------------------------------------
# Small correlations: Hermite (Mehler) series with coefficients in closed form
# ---------------------------------------------------------------------------------------
# For |rho| <= SERIES_RHO the pair terms are summed as series in rho (no transcendental per
# pair; a loop over the sources that vectorises), E[f(Z_1) g(Z_2)] = sum_n rho^n f_n g_n with
# normalised Hermite coefficients f_n = E[f(Z) He_n(Z)] / sqrt(n!), and by Stein's identity
#     kappa = sum rho^n F_i F_j,  alpha = sum rho^n D_i D_j,  beta_ij = sum rho^n S_i F_j,
#     gb_ij = sum rho^n D_i F_j,
# with F, D, S the coefficients of sigma, sigma' and sigma'' at (r z + b). In closed form, with
# e_k(x) = phi(x) He_k(-x) / sqrt(k!) (|e_k| <= phi(x)^(1/2), Cramer's inequality):
#   relu (beta = b / r):  F_0 = r phi(beta) + b Phi(beta), F_1 = r Phi(beta),
#                         F_n = r e_{n-2} / sqrt(n (n - 1)); D_0 = Phi(beta), D_n = e_{n-1} / sqrt(n);
#                         S_n = e_n / r;
#   Phi (n = sqrt(1 + r^2), u = b / n, t = r / n):  F_0 = Phi(u), F_k = t^k e_{k-1}(u) / sqrt(k);
#                         D_k = t^k e_k(u) / n;  S_k = t^k e_{k+1}(u) sqrt(k + 1) / n^2;
#   erf(z / sqrt 2) = 2 Phi - 1: twice those, and F_0 = erf(u / sqrt 2).
# A particle with a = 0 has only n = 0 terms (and rho is taken as 0 for its pairs), which is
# the exact constant-pre-activation limit. Truncation at degree L: every term is bounded by
# |rho|^n times a product of coefficients that is at most O(1) (relu: r_i r_j phi^(1/2) /
# n^(3/2) for kappa, 1 / sqrt(n) for alpha), so |rho| <= 0.4 and L = 40 leave 0.4^41 = 5e-17
# (float32: L = 20, 0.4^21 = 4e-9). Measured against the exact path in
# tests/test_population_bias.py.
SERIES_RHO = 0.4
SERIES_DEGREE_64 = 40
SERIES_DEGREE_32 = 20


@njit(cache=True)
def _series_tables(A, b, code, F, D, S):
    """Coefficient tables F, D, S, each (L + 1, m), of every particle (rows of A (m, d), b (m,))."""
    L = F.shape[0] - 1
    dtype = A.dtype
    zero = dtype.type(0.0)
    one = dtype.type(1.0)
    two = dtype.type(2.0)
    for j in range(A.shape[0]):
        acc = zero
        for k in range(A.shape[1]):
            acc += A[j, k] * A[j, k]
        r = math.sqrt(acc)
        for n in range(L + 1):
            F[n, j] = zero
            D[n, j] = zero
            S[n, j] = zero
        if code == RELU:
            if r == zero:
                F[0, j] = max(b[j], zero)
                D[0, j] = one if b[j] > zero else zero
                continue
            beta = _clip(b[j] / r, like(r, _RATIO_CLIP))
            x = -beta
            e_prev = zero
            e = normal_pdf(beta)  # e_0
            cdf = normal_cdf(beta)
            F[0, j] = r * e + b[j] * cdf
            D[0, j] = cdf
            if L >= 1:
                F[1, j] = r * cdf
            for n in range(L + 1):
                # here e = e_n, e_prev = e_{n-1}
                S[n, j] = e / r
                if n + 1 <= L:
                    D[n + 1, j] = e / math.sqrt(dtype.type(n + 1))
                if n + 2 <= L:
                    F[n + 2, j] = r * e / math.sqrt(dtype.type((n + 2) * (n + 1)))
                e_next = (x * e - math.sqrt(dtype.type(n)) * e_prev) / math.sqrt(dtype.type(n + 1))
                e_prev = e
                e = e_next
        else:  # ERF, NORMAL_CDF
            scale = two if code == ERF else one
            nrm = math.sqrt(one + r * r)
            u = b[j] / nrm
            t = r / nrm
            x = -u
            e_prev = zero
            e = normal_pdf(u)  # e_0(u)
            if code == ERF:
                F[0, j] = math.erf(u * like(r, 0.7071067811865476))
            else:
                F[0, j] = normal_cdf(u)
            t_power = one  # t^n
            for n in range(L + 1):
                # e = e_n(u), e_prev = e_{n-1}(u)
                e_next = (x * e - math.sqrt(dtype.type(n)) * e_prev) / math.sqrt(dtype.type(n + 1))
                D[n, j] = scale * t_power * e / nrm
                S[n, j] = scale * t_power * e_next * math.sqrt(dtype.type(n + 1)) / (nrm * nrm)
                if n + 1 <= L:
                    F[n + 1, j] = scale * t_power * t * e / math.sqrt(dtype.type(n + 1))
                t_power *= t
                e_prev = e
                e = e_next


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _series_row(rho, Fi, Di, Si, i, F, D, j0, cols, L, kap, alp, bij, gij):
    """Series of degree L of point i (tables Fi, Di, Si) against sources j0 .. j0 + cols - 1
    (tables F, D) by Horner's rule over the degree, the inner loop over the sources (it
    vectorises). rho (cols,) the correlations."""
    for t in range(cols):
        kap[t] = Fi[L, i] * F[L, j0 + t]
        alp[t] = Di[L, i] * D[L, j0 + t]
        bij[t] = Si[L, i] * F[L, j0 + t]
        gij[t] = Di[L, i] * F[L, j0 + t]
    for n in range(L - 1, -1, -1):
        f_i = Fi[n, i]
        d_i = Di[n, i]
        s_i = Si[n, i]
        F_n = F[n, j0:j0 + cols]
        D_n = D[n, j0:j0 + cols]
        for t in range(cols):
            x = rho[t]
            fj = F_n[t]
            kap[t] = kap[t] * x + f_i * fj
            alp[t] = alp[t] * x + d_i * D_n[t]
            bij[t] = bij[t] * x + s_i * fj
            gij[t] = gij[t] * x + d_i * fj


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _series_row_both(rho, i, F, D, S, j0, cols, L, kap, alp, bij, gij, bji, gji):
    """``_series_row`` with the transposed terms beta_ji = sum rho^n F_i S_j, gb_ji = sum rho^n F_i D_j."""
    for t in range(cols):
        kap[t] = F[L, i] * F[L, j0 + t]
        alp[t] = D[L, i] * D[L, j0 + t]
        bij[t] = S[L, i] * F[L, j0 + t]
        gij[t] = D[L, i] * F[L, j0 + t]
        bji[t] = F[L, i] * S[L, j0 + t]
        gji[t] = F[L, i] * D[L, j0 + t]
    for n in range(L - 1, -1, -1):
        f_i = F[n, i]
        d_i = D[n, i]
        s_i = S[n, i]
        F_n = F[n, j0:j0 + cols]
        D_n = D[n, j0:j0 + cols]
        S_n = S[n, j0:j0 + cols]
        for t in range(cols):
            x = rho[t]
            fj = F_n[t]
            dj = D_n[t]
            kap[t] = kap[t] * x + f_i * fj
            alp[t] = alp[t] * x + d_i * dj
            bij[t] = bij[t] * x + s_i * fj
            gij[t] = gij[t] * x + d_i * fj
            bji[t] = bji[t] * x + f_i * S_n[t]
            gji[t] = gji[t] * x + f_i * dj


@njit(cache=True)
def _row_degree(rho, cols, limit, max_degree):
    """Degree of a row's series: the smallest L with r^(L + 1) <= limit^(max_degree + 1), r the
    largest |rho| <= limit of the row, so that every pair's truncation factor |rho|^(L + 1) stays
    within the design's (0.4^41 = 5e-17 in float64). At random initialisation in d = 100 the
    rows of a tile reach |rho| ~ 0.3: degree 31 instead of 40."""
    largest = like(limit, 0.0)
    for t in range(cols):
        a = abs(rho[t])
        if a <= limit and a > largest:
            largest = a
    if largest == like(limit, 0.0):
        return 0
    if largest >= limit:
        return max_degree
    needed = int(math.ceil((max_degree + 1) * math.log(limit) / math.log(largest))) - 1
    return max(0, min(max_degree, needed))


@njit(cache=True, error_model="numpy")
def _correlations(dot, inv_i, inv_j, rho):
    """rho[t] = dot[t] / (r_i r_j), 0 where a particle has a = 0 (inv = 0 there)."""
    for t in range(dot.shape[0]):
        rho[t] = dot[t] * inv_i * inv_j[t]


@njit(cache=True)
def _features_of(A, b, code, features):
    """features[i] = particle_features(|a_i|, b_i) for every row of A (n, d)."""
    for i in range(A.shape[0]):
        acc = A.dtype.type(0.0)
        for k in range(A.shape[1]):
            acc += A[i, k] * A[i, k]
        f0, f1, f2, f3, f4 = particle_features(math.sqrt(acc), b[i], code)
        features[i, 0] = f0
        features[i, 1] = f1
        features[i, 2] = f2
        features[i, 3] = f3
        features[i, 4] = f4


@njit(cache=True)
def _bias_row(dot, i, f_i, inv_i, f_j, inv_j, c_j, code, tables, j0, work):
    """One row of a tile: on entry dot[t] = a_i . a_j, on exit c_j alpha_ij; returns the row's
    (sum c_j kappa, sum c_j beta, sum c_j gb). ``f_i`` (5,) and ``f_j`` (cols, 5) are the
    features; the series (``tables`` = (F_i, D_i, S_i, F_j, D_j, S_j), degree >= 1) for
    |rho| <= SERIES_RHO and the exact formulas above it; ``work`` (5, cols) scratch."""
    cols = dot.shape[0]
    zero = like(dot[0], 0.0)
    rho = work[0, :cols]
    kap = work[1, :cols]
    alp = work[2, :cols]
    bet = work[3, :cols]
    gam = work[4, :cols]
    F_i, D_i, S_i, F_j, D_j, S_j = tables
    series = F_j.shape[0] > 1
    if series:
        _correlations(dot, inv_i, inv_j, rho)
        degree = _row_degree(rho, cols, like(dot[0], SERIES_RHO), F_j.shape[0] - 1)
        _series_row(rho, F_i, D_i, S_i, i, F_j, D_j, j0, cols, degree, kap, alp, bet, gam)
    k_acc = zero
    beta_acc = zero
    gb_acc = zero
    limit = like(dot[0], SERIES_RHO)
    for t in range(cols):
        if series and abs(rho[t]) <= limit:
            kappa = kap[t]
            alpha = alp[t]
            beta = bet[t]
            gb = gam[t]
        else:
            kappa, alpha, beta, gb, _, _ = _pair_both(dot[t], f_i[0], f_i[1], f_i[2], f_i[3], f_i[4], f_j[t, 0],
                                                      f_j[t, 1], f_j[t, 2], f_j[t, 3], f_j[t, 4], code, False)
        cj = c_j[t]
        k_acc += cj * kappa
        beta_acc += cj * beta
        gb_acc += cj * gb
        dot[t] = cj * alpha
    return k_acc, beta_acc, gb_acc


@njit(cache=True)
def _inverse_norms(A, inv):
    """inv[i] = 1 / |a_i|, 0 where a_i = 0."""
    zero = A.dtype.type(0.0)
    for i in range(A.shape[0]):
        acc = zero
        for k in range(A.shape[1]):
            acc += A[i, k] * A[i, k]
        inv[i] = A.dtype.type(1.0) / math.sqrt(acc) if acc > zero else zero


@njit(cache=True)
def _tables_of(A, b, code, degree):
    """(F, D, S), each (degree + 1, m); (1, m) placeholders when degree = 0 (no series)."""
    rows = degree + 1 if degree > 0 else 1
    F = np.zeros((rows, A.shape[0]), dtype=A.dtype)
    D = np.zeros((rows, A.shape[0]), dtype=A.dtype)
    S = np.zeros((rows, A.shape[0]), dtype=A.dtype)
    if degree > 0:
        _series_tables(A, b, code, F, D, S)
    return F, D, S


@njit(cache=True, parallel=True)
def _bias_tiles(points, sources, activation_code, degree, n_chunks, K, G):
    """Body of :func:`bias_pair_field` for any points; ``n_chunks`` contiguous runs of point blocks."""
    n, p = points.shape
    m = sources.shape[0]
    d = p - 2
    dtype = points.dtype
    zero = dtype.type(0.0)
    A_i = np.ascontiguousarray(points[:, :d])
    A_j = np.ascontiguousarray(sources[:, :d])
    c_j = sources[:, d + 1].copy()
    f_i = np.empty((n, 5), dtype=dtype)
    f_j = np.empty((m, 5), dtype=dtype)
    _features_of(A_i, points[:, d], activation_code, f_i)
    _features_of(A_j, sources[:, d], activation_code, f_j)
    inv_i = np.empty(n, dtype=dtype)
    inv_j = np.empty(m, dtype=dtype)
    _inverse_norms(A_i, inv_i)
    _inverse_norms(A_j, inv_j)
    F_i, D_i, S_i = _tables_of(A_i, points[:, d].copy(), activation_code, degree)
    F_j, D_j, S_j = _tables_of(A_j, sources[:, d].copy(), activation_code, degree)
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
        work = np.empty((5, cols_max), dtype=dtype)
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
                    k, beta, gb = _bias_row(tile[r], i, f_i[i], inv_i[i], f_j[j0:j0 + cols], inv_j[j0:j0 + cols],
                                            c_j[j0:j0 + cols], activation_code, (F_i, D_i, S_i, F_j, D_j, S_j),
                                            j0, work)
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


@njit(cache=True)
def _bias_self_tile(A, f, inv, c, cA, code, tables, i0, rows, j0, cols, both, dot_buf, part_buf, work, K, beta, gb,
                    G):
    """One tile (I, J) of ``_bias_self_tiles``: adds to the rows of I and, when ``both``
    (I != J), to the rows of J. The caller makes sure no other thread writes those rows."""
    d = A.shape[1]
    F, D, S = tables
    series = F.shape[0] > 1
    limit = like(A[0, 0], SERIES_RHO)
    rho = work[0, :cols]
    kap = work[1, :cols]
    alp = work[2, :cols]
    bij = work[3, :cols]
    gij = work[4, :cols]
    bji = work[5, :cols]
    gji = work[6, :cols]
    tile = dot_buf[:rows * cols].reshape((rows, cols))
    np.dot(A[i0:i0 + rows], A[j0:j0 + cols].T, tile)
    for r in range(rows):
        i = i0 + r
        if series:
            _correlations(tile[r], inv[i], inv[j0:j0 + cols], rho)
            degree = _row_degree(rho, cols, limit, F.shape[0] - 1)
            _series_row_both(rho, i, F, D, S, j0, cols, degree, kap, alp, bij, gij, bji, gji)
        k_acc = like(tile[0, 0], 0.0)
        beta_acc = like(tile[0, 0], 0.0)
        gb_acc = like(tile[0, 0], 0.0)
        for t in range(cols):
            j = j0 + t
            if series and abs(rho[t]) <= limit:
                kappa = kap[t]
                alpha = alp[t]
                beta_ij = bij[t]
                gb_ij = gij[t]
                beta_ji = bji[t]
                gb_ji = gji[t]
            else:
                kappa, alpha, beta_ij, gb_ij, beta_ji, gb_ji = _pair_both(
                    tile[r, t], f[i, 0], f[i, 1], f[i, 2], f[i, 3], f[i, 4], f[j, 0], f[j, 1], f[j, 2], f[j, 3],
                    f[j, 4], code, both)
            k_acc += c[j] * kappa
            beta_acc += c[j] * beta_ij
            gb_acc += c[j] * gb_ij
            if both:
                K[j] += c[i] * kappa
                beta[j] += c[i] * beta_ji
                gb[j] += c[i] * gb_ji
            tile[r, t] = alpha
        K[i] += k_acc
        beta[i] += beta_acc
        gb[i] += gb_acc
    part = part_buf[:rows * d].reshape((rows, d))
    np.dot(tile, cA[j0:j0 + cols], part)
    for r in range(rows):
        for k in range(d):
            G[i0 + r, k] += part[r, k]
    if both:
        part = part_buf[:cols * d].reshape((cols, d))
        np.dot(tile.T, cA[i0:i0 + rows], part)
        for t in range(cols):
            for k in range(d):
                G[j0 + t, k] += part[t, k]


@njit(cache=True, parallel=True)
def _bias_self_tiles(sources, code, degree, n_workers, K, G):
    """Pair sums of a measure with itself on the tiles j >= i only: kappa and alpha are
    symmetric, and one evaluation of a pair's transcendental functions gives both (i, j) and
    (j, i) (``_pair_both``). The tiles run in the rounds of a round-robin tournament over
    blocks, as in ``population._relu_self_tiles`` (its docstring says why): each row gets its
    terms in the same order for any number of threads, so the sums are bitwise the same.
    """
    m, p = sources.shape
    d = p - 2
    dtype = sources.dtype
    zero = dtype.type(0.0)
    A = np.ascontiguousarray(sources[:, :d])
    c = sources[:, d + 1].copy()
    f = np.empty((m, 5), dtype=dtype)
    _features_of(A, sources[:, d], code, f)
    inv = np.empty(m, dtype=dtype)
    _inverse_norms(A, inv)
    tables = _tables_of(A, sources[:, d].copy(), code, degree)
    cA = np.empty((m, d), dtype=dtype)
    for j in range(m):
        for k in range(d):
            cA[j, k] = c[j] * A[j, k]
    size = self_tile_size(d)
    n_blocks = (m + size - 1) // size
    n_slots = n_blocks + n_blocks % 2  # an odd count gets a phantom block: its pairs are skipped
    n_pairs = n_slots // 2
    n_workers = max(1, min(n_workers, n_blocks))
    beta = np.zeros(m, dtype=dtype)
    gb = np.zeros(m, dtype=dtype)
    K[:] = zero
    G[:, :] = zero
    dot_buf = np.empty((n_workers, size * size), dtype=dtype)
    part_buf = np.empty((n_workers, size * d), dtype=dtype)
    work = np.empty((n_workers, 7, size), dtype=dtype)
    for worker in prange(n_workers):
        for blk in range(worker, n_blocks, n_workers):
            i0 = blk * size
            rows = min(size, m - i0)
            _bias_self_tile(A, f, inv, c, cA, code, tables, i0, rows, i0, rows, False, dot_buf[worker],
                            part_buf[worker], work[worker], K, beta, gb, G)
    for round_index in range(n_slots - 1):
        for worker in prange(n_workers):
            for pair in range(worker, n_pairs, n_workers):
                one, other = _round_robin_pair(n_slots, round_index, pair)
                lo = min(one, other)
                hi = max(one, other)
                if hi >= n_blocks:
                    continue
                i0 = lo * size
                j0 = hi * size
                _bias_self_tile(A, f, inv, c, cA, code, tables, i0, min(size, m - i0), j0, min(size, m - j0), True,
                                dot_buf[worker], part_buf[worker], work[worker], K, beta, gb, G)
    for i in prange(m):
        for k in range(d):
            G[i, k] += beta[i] * A[i, k]
        G[i, d] = gb[i]


def bias_pair_field(points, sources, activation_code, K, G, symmetric=True, series=True):
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
    symmetric : bool
        When ``points is sources``, evaluate each pair once for both orders on the tiles
        j >= i (``_bias_self_tiles``, about half the work). Its sums are rounded differently
        from the general tiles'; pass False where other points must get bitwise the same
        field (tracers on particles).
    series : bool
        Sum pairs with |rho| <= SERIES_RHO as Hermite series (no transcendental function
        per pair; agrees with the exact formulas to about 1e-15, tested); False: the
        exact formulas for every pair (a reference).
    """
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    degree = series_degree(points.dtype, activation_code) if series else 0
    if symmetric and points is sources:
        _bias_self_tiles(sources, activation_code, degree, get_num_threads(), K, G)
    else:
        _bias_tiles(points, sources, activation_code, degree, get_num_threads(), K, G)


def series_degree(dtype, activation_code) -> int:
    """Degree of the small-correlation series: 0 (exact formulas only) for linear."""
    if activation_code == LINEAR:
        return 0
    return SERIES_DEGREE_32 if np.dtype(dtype) == np.float32 else SERIES_DEGREE_64
