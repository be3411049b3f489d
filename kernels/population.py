"""Pair kernels for population risks with Gaussian inputs x ~ N(0, I_d).

For the squared loss the population objective only involves the pair function

    kappa(w, w') = E[sigma(a . x + b) sigma(a' . x + b')]

(SCIENCE.md section 2). The kernels here compute, for each point w_i of ``points`` and the
measure carried by ``sources`` (weights = their output weights c_j),

    K_i = sum_j c_j kappa(w_i, w_j),      G_i = sum_j c_j grad_{(a, b)} kappa(w_i, w_j),

in one pass over the n x m pairs, parallel over points, with no pair-sized temporary. The
objective and the velocity are assembled from K and G in ``meanfield``.

Two ways to evaluate kappa:

* closed form (no bias): relu (arc-cosine kernel), erf(z/sqrt 2) (arcsine kernel), linear;
* two-dimensional Gauss-Hermite quadrature in the span of (a, a'), any activation, with
  bias. The quadrature is symmetrised (the average of the rule built on a and the rule built
  on a'), so that kappa_Q(w, w') = kappa_Q(w', w) exactly, and G is the exact gradient of
  the quadrature formula: the velocity is minus the gradient of the risk that is reported.
"""
import math

import numpy as np
from numba import njit, prange

from ._scalar import ERF, LINEAR, RELU, activation, activation_derivative, like


@njit(cache=True)
def _closed_form_pair(dot, norm_i, norm_j, code):
    """kappa(a_i, a_j) and (alpha, beta) with grad_{a_i} kappa = alpha a_j + beta a_i."""
    zero = like(dot, 0.0)
    one = like(dot, 1.0)
    if code == RELU:
        if norm_i == zero or norm_j == zero:
            return zero, zero, zero
        cos_t = dot / (norm_i * norm_j)
        if cos_t > one:
            cos_t = one
        elif cos_t < -one:
            cos_t = -one
        theta = math.acos(cos_t)
        sin_t = math.sqrt(one - cos_t * cos_t)
        inv_2pi = like(dot, 0.15915494309189535)
        pi = like(dot, math.pi)
        kappa = norm_i * norm_j * (sin_t + (pi - theta) * cos_t) * inv_2pi
        return kappa, (pi - theta) * inv_2pi, sin_t * norm_j / norm_i * inv_2pi
    elif code == ERF:
        qi = one + norm_i * norm_i
        qj = one + norm_j * norm_j
        denom = math.sqrt(qi * qj)
        q = dot / denom
        two_over_pi = like(dot, 0.6366197723675814)
        kappa = two_over_pi * math.asin(q)
        g = two_over_pi / math.sqrt(one - q * q) / denom
        return kappa, g, -g * dot / qi
    else:  # linear
        return dot, one, zero


@njit(cache=True)
def _ordered_rule(n1, p, n2, b1, b2, code, nodes, weights):
    """Gauss-Hermite sums for u = n1 z1 + b1, u' = p z1 + n2 z2 + b2, z ~ N(0, I_2).

    Returns (kappa, K1, K2, K3, B1, B2) with
    kappa = E[s(u) s(u')], K1 = E[s'(u) s(u') z1], K2 = E[s(u) s'(u') z1],
    K3 = E[s(u) s'(u') z2], B1 = E[s'(u) s(u')], B2 = E[s(u) s'(u')].
    """
    zero = like(n1, 0.0)
    kappa = zero
    K1 = zero
    K2 = zero
    K3 = zero
    B1 = zero
    B2 = zero
    Q = nodes.shape[0]
    for q1 in range(Q):
        z1 = nodes[q1]
        u = n1 * z1 + b1
        s1 = activation(u, code)
        ds1 = activation_derivative(u, code)
        base = p * z1 + b2
        acc_s = zero  # sum_q2 w2 s(u')
        acc_ds = zero  # sum_q2 w2 s'(u')
        acc_ds_z2 = zero  # sum_q2 w2 s'(u') z2
        for q2 in range(Q):
            z2 = nodes[q2]
            v = base + n2 * z2
            w2 = weights[q2]
            acc_s += w2 * activation(v, code)
            dv = w2 * activation_derivative(v, code)
            acc_ds += dv
            acc_ds_z2 += dv * z2
        w1 = weights[q1]
        kappa += w1 * s1 * acc_s
        K1 += w1 * ds1 * acc_s * z1
        K2 += w1 * s1 * acc_ds * z1
        K3 += w1 * s1 * acc_ds_z2
        B1 += w1 * ds1 * acc_s
        B2 += w1 * s1 * acc_ds
    return kappa, K1, K2, K3, B1, B2


@njit(cache=True)
def _quadrature_pair(dot, norm_i, norm_j, b_i, b_j, code, nodes, weights):
    """Symmetrised quadrature kappa(w_i, w_j) and its gradient in (a_i, b_i).

    Returns (kappa, alpha, beta, gb) with grad_{a_i} kappa = alpha a_j + beta a_i and
    d kappa / d b_i = gb; kappa is the average of the rule in the basis built on a_i and
    the rule in the basis built on a_j.
    """
    zero = like(dot, 0.0)
    half = like(dot, 0.5)
    # Below this relative size a perpendicular component is rounding noise; the terms it
    # multiplies vanish with it (kappa_Q is even in it), so they are dropped.
    tiny = like(dot, 1e-12)
    alpha = zero
    beta = zero

    # Rule 1: basis on a_i; u = |a_i| z1 + b_i, u' = p z1 + n2 z2 + b_j.
    if norm_i > zero:
        p = dot / norm_i
        n2 = math.sqrt(max(norm_j * norm_j - p * p, zero))
        k_1, K1, K2, K3, B1, _ = _ordered_rule(norm_i, p, n2, b_i, b_j, code, nodes, weights)
        # d/d a_i through |a_i|, p = a_i.a_j/|a_i| and n2 = |a_j - p a_i/|a_i||.
        if n2 > tiny * norm_j:
            c_r = K2 / norm_i - p * K3 / (norm_i * n2)
        else:
            c_r = zero
        alpha += c_r
        beta += K1 / norm_i - c_r * p / norm_i
    else:
        # a_i = 0: u = b_i, the basis is built on a_j alone.
        k_1, K1, _, _, B1, _ = _ordered_rule(zero, norm_j, zero, b_i, b_j, code, nodes, weights)
        if norm_j > zero:
            alpha += K1 / norm_j

    # Rule 2: basis on a_j; u = |a_j| z1 + b_j, u' = p z1 + n2 z2 + b_i (w_i second).
    if norm_j > zero:
        p = dot / norm_j
        n2 = math.sqrt(max(norm_i * norm_i - p * p, zero))
        k_2, _, K2, K3, _, B2 = _ordered_rule(norm_j, p, n2, b_j, b_i, code, nodes, weights)
        # d/d a_i through p = a_i.a_j/|a_j| and n2 = |a_i - p a_j/|a_j||.
        if n2 > tiny * norm_i:
            c_perp = K3 / n2
        else:
            c_perp = zero
        alpha += K2 / norm_j - c_perp * p / norm_j
        beta += c_perp
    else:
        k_2, _, K2, _, _, B2 = _ordered_rule(zero, norm_i, zero, b_j, b_i, code, nodes, weights)
        if norm_i > zero:
            beta += K2 / norm_i

    return half * (k_1 + k_2), half * alpha, half * beta, half * (B1 + B2)


@njit(cache=True, parallel=True)
def _pair_field(points, sources, activation_code, quadrature, nodes, weights, K, G):
    """K_i and G_i for every point, by the closed form or by quadrature (see the wrappers)."""
    n, p = points.shape
    m = sources.shape[0]
    d = p - 2
    norms = np.empty(m, dtype=sources.dtype)
    for j in range(m):
        acc = sources.dtype.type(0.0)
        for k in range(d):
            acc += sources[j, k] * sources[j, k]
        norms[j] = math.sqrt(acc)
    for i in prange(n):
        zero = points.dtype.type(0.0)
        norm_sq = zero
        for k in range(d):
            norm_sq += points[i, k] * points[i, k]
        norm_i = math.sqrt(norm_sq)
        b_i = points[i, d]
        for k in range(d + 1):
            G[i, k] = zero
        kappa_sum = zero
        beta_sum = zero
        gb_sum = zero
        for j in range(m):
            dot = zero
            for k in range(d):
                dot += points[i, k] * sources[j, k]
            if quadrature:
                kappa, alpha, beta, gb = _quadrature_pair(
                    dot, norm_i, norms[j], b_i, sources[j, d], activation_code, nodes, weights)
            else:
                kappa, alpha, beta = _closed_form_pair(dot, norm_i, norms[j], activation_code)
                gb = zero
            cj = sources[j, d + 1]
            kappa_sum += cj * kappa
            beta_sum += cj * beta
            gb_sum += cj * gb
            weight = cj * alpha
            for k in range(d):
                G[i, k] += weight * sources[j, k]
        for k in range(d):
            G[i, k] += beta_sum * points[i, k]
        G[i, d] = gb_sum
        K[i] = kappa_sum


@njit(cache=True)
def closed_form_pair_field(points, sources, activation_code, K, G):
    """Closed-form pair sums for relu, erf or linear activations without bias.

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
        Points w_i at which the field is evaluated (columns a, b, c; b is ignored).
    sources : ndarray, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{a_j}; c_j is the last column (b is ignored).
    activation_code : int
        RELU, ERF or LINEAR.
    K : ndarray, shape (n,), output
        K_i = sum_j c_j kappa(a_i, a_j).
    G : ndarray, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa(a_i, a_j); G_i[d] = 0 (no bias).
    """
    no_rule = np.empty(0, dtype=points.dtype)
    _pair_field(points, sources, activation_code, False, no_rule, no_rule, K, G)


@njit(cache=True)
def quadrature_pair_field(points, sources, activation_code, nodes, weights, K, G):
    """Pair sums by symmetrised two-dimensional Gauss-Hermite quadrature (any activation).

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
        Points w_i = (a_i, b_i, c_i) at which the field is evaluated.
    sources : ndarray, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{(a_j, b_j)}.
    activation_code : int
    nodes, weights : ndarray, shape (Q,), same dtype
        Probabilists' Gauss-Hermite rule normalised to the standard normal (weights sum
        to 1); Q^2 nodes per pair and per ordering.
    K : ndarray, shape (n,), output
        K_i = sum_j c_j kappa_Q(w_i, w_j).
    G : ndarray, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa_Q, G_i[d] = sum_j c_j d kappa_Q / d b_i.
    """
    _pair_field(points, sources, activation_code, True, nodes, weights, K, G)
