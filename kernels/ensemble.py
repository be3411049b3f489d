"""Population objective and velocity of many small networks at once (ensembles of runs).

A sweep of small networks (a census of spurious minima: m, k <= 20, a thousand seeds each)
is bound by the cost of a call, not by arithmetic: the tiled kernels of
``kernels.population`` spend most of a call at m = 10 in thread launches, BLAS calls and
allocations. Here one call evaluates B members, each by one serial fused pass over its pairs
(the pairs j >= i of the measure with itself, then the pairs with the teacher), with the
members split over the threads: each member's sums are made in the same order whatever the
number of threads and whatever the other members, so a member's numbers are bitwise those
of the same member evaluated alone (B = 1), which is how ``PopulationProblem`` evaluates a
small bias-free closed-form problem.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._scalar import ERF, RELU, like

__all__ = ["closed_form_points_velocity", "ensemble_closed_form_evaluate", "ensemble_work_arrays",
           "member_sums_of_squares"]


@njit(cache=True)
def _symmetric_pair(dot, norm_i, norm_j, code):
    """kappa(a_i, a_j), the weight alpha of the other vector (the same in both orders) and
    beta_ij, beta_ji, with grad_{a_i} kappa = alpha a_j + beta_ij a_i (and i, j swapped).

    The same formulas as ``population._closed_form_pair`` (tested against it), with the
    arccos (relu) or arcsin (erf) computed once for both orders."""
    zero = like(norm_i, 0.0)
    one = like(norm_i, 1.0)
    if code == RELU:
        if norm_i == zero or norm_j == zero:
            return zero, zero, zero, zero
        cos_t = dot / (norm_i * norm_j)
        if cos_t > one:
            cos_t = one
        elif cos_t < -one:
            cos_t = -one
        theta = math.acos(cos_t)
        sin_t = math.sqrt(one - cos_t * cos_t)
        inv_2pi = like(norm_i, 0.15915494309189535)
        pi = like(norm_i, math.pi)
        kappa = norm_i * norm_j * (sin_t + (pi - theta) * cos_t) * inv_2pi
        return (kappa, (pi - theta) * inv_2pi, sin_t * norm_j / norm_i * inv_2pi,
                sin_t * norm_i / norm_j * inv_2pi)
    elif code == ERF:
        qi = one + norm_i * norm_i
        qj = one + norm_j * norm_j
        denom = math.sqrt(qi * qj)
        q = dot / denom
        two_over_pi = like(norm_i, 0.6366197723675814)
        kappa = two_over_pi * math.asin(q)
        g = two_over_pi / math.sqrt(one - q * q) / denom
        return kappa, g, -g * dot / qi, -g * dot / qj
    else:  # linear
        return dot, one, zero, zero


@njit(cache=True)
def _ordered_sums(x, norm_x, sources, source_norms, code, G):
    """sum_j c_j kappa(x, s_j) and sum_j c_j beta(x, s_j) over the sources in order, and
    G += sum_j c_j alpha(x, s_j) s_j (the first d columns): the sums of one point against a
    measure (the teacher, or the particles for a tracer)."""
    d = G.shape[0]
    zero = like(norm_x, 0.0)
    K = zero
    beta = zero
    for j in range(sources.shape[0]):
        dot = zero
        for t in range(d):
            dot += x[t] * sources[j, t]
        kappa, weight, beta_ij, _ = _symmetric_pair(dot, norm_x, source_norms[j], code)
        c_j = sources[j, d + 1]
        K += c_j * kappa
        beta += c_j * beta_ij
        w_ij = c_j * weight
        for t in range(d):
            G[t] += w_ij * sources[j, t]
    return K, beta


@njit(cache=True)
def _member(W, teacher, code, s, alpha, second_moment, train_readout, velocity, K, G, beta, K_t, G_t, norms,
            teacher_norms):
    """One member: fills ``velocity`` and returns F (see ``ensemble_closed_form_evaluate``)."""
    m, p = W.shape
    k = teacher.shape[0]
    d = p - 2
    zero = like(W[0, 0], 0.0)
    for i in range(m):
        acc = zero
        for t in range(d):
            acc += W[i, t] * W[i, t]
        norms[i] = math.sqrt(acc)
        K[i] = zero
        beta[i] = zero
        K_t[i] = zero
        for t in range(d):
            G[i, t] = zero
            G_t[i, t] = zero
    for j in range(k):
        acc = zero
        for t in range(d):
            acc += teacher[j, t] * teacher[j, t]
        teacher_norms[j] = math.sqrt(acc)
    # The measure with itself: each unordered pair once, added to both rows.
    for i in range(m):
        c_i = W[i, d + 1]
        for j in range(i, m):
            dot = zero
            for t in range(d):
                dot += W[i, t] * W[j, t]
            kappa, weight, beta_ij, beta_ji = _symmetric_pair(dot, norms[i], norms[j], code)
            c_j = W[j, d + 1]
            K[i] += c_j * kappa
            beta[i] += c_j * beta_ij
            w_ij = c_j * weight
            for t in range(d):
                G[i, t] += w_ij * W[j, t]
            if j != i:
                K[j] += c_i * kappa
                beta[j] += c_i * beta_ji
                w_ji = c_i * weight
                for t in range(d):
                    G[j, t] += w_ji * W[i, t]
    # The measure against the teacher.
    for i in range(m):
        K_t[i], b_t = _ordered_sums(W[i], norms[i], teacher, teacher_norms, code, G_t[i])
        for t in range(d):
            G[i, t] += beta[i] * W[i, t]
            G_t[i, t] += b_t * W[i, t]
    # v_i = -m s [c_i (s G_i - G_t,i / alpha), 0, s K_i - K_t,i / alpha] and F.
    s_ = like(zero, s)
    alpha_ = like(zero, alpha)
    inv_alpha = like(zero, 1.0) / alpha_
    scale = -like(zero, m) * s_
    half = like(zero, 0.5)
    two = like(zero, 2.0)
    self_sum = zero
    teacher_sum = zero
    for i in range(m):
        c_i = W[i, d + 1]
        factor = scale * c_i
        for t in range(d):
            velocity[i, t] = factor * (s_ * G[i, t] - inv_alpha * G_t[i, t])
        velocity[i, d] = zero
        velocity[i, d + 1] = scale * (s_ * K[i] - inv_alpha * K_t[i]) if train_readout else zero
        self_sum += c_i * K[i]
        teacher_sum += c_i * K_t[i]
    return second_moment / (two * alpha_ * alpha_) - (s_ / alpha_) * teacher_sum + half * s_ * s_ * self_sum


def ensemble_work_arrays(B, m, k, d, dtype):
    """Work arrays of :func:`ensemble_closed_form_evaluate`, kept by the caller between calls.

    Parameters
    ----------
    B, m, k, d : int
        Members, width, teacher width, input dimension.
    dtype : numpy dtype
        float32 or float64.

    Returns
    -------
    tuple of ndarray
        K (B, m), G (B, m, d), beta (B, m), K_t (B, m), G_t (B, m, d), norms (B, m),
        teacher_norms (B, k).
    """
    return (np.empty((B, m), dtype), np.empty((B, m, d), dtype), np.empty((B, m), dtype), np.empty((B, m), dtype),
            np.empty((B, m, d), dtype), np.empty((B, m), dtype), np.empty((B, k), dtype))


@njit(cache=True, parallel=True)
def ensemble_closed_form_evaluate(W, teacher, activation_code, output_scale, alpha, second_moment,
                                  train_readout, values, velocity, K, G, beta, K_t, G_t, norms, teacher_norms):
    """Population objective and velocities of B bias-free networks in closed form (relu, erf,
    linear), squared loss, x ~ N(0, I_d).

    For member b with particles w_i = (a_i, b_i, c_i) (biases ignored: zero) and teacher
    neurons (t_j, 0, c*_j):

        F = E[y^2] / (2 alpha^2) - (s / alpha) sum_i c_i K*_i + (s^2 / 2) sum_i c_i K_i,
        K_i = sum_j c_j kappa(a_i, a_j),  K*_i = sum_j c*_j kappa(a_i, t_j),
        v(w_i) = -m s [c_i (s G_i - G*_i / alpha), 0, s K_i - K*_i / alpha],

    with G_i, G*_i the gradients of K_i, K*_i in the first argument a_i, kappa the arc-cosine
    (relu), arcsine (erf) or linear kernel (SCIENCE.md section 4), and the readout column 0
    when ``train_readout`` is False. The same objective and velocity as
    ``PopulationProblem(method="closed_form")`` (tested against the tiled kernels and the
    fused reference).

    Parameters
    ----------
    W : ndarray, shape (B, m, d + 2), float32 or float64
        The members' particles.
    teacher : ndarray, shape (B, k, d + 2), same dtype
        Each member's teacher neurons (biases ignored).
    activation_code : int
        RELU, ERF or LINEAR.
    output_scale, alpha : float
        s and alpha of the model at width m (``Model.output_scale``, ``Model.alpha_value``).
    second_moment : ndarray, shape (B,), same dtype
        E[y^2] of each member's labels.
    train_readout : bool
    values : ndarray, shape (B,), output
        F of each member.
    velocity : ndarray, shape (B, m, d + 2), output
    K, G, beta, K_t, G_t, norms, teacher_norms : ndarray
        Work arrays (:func:`ensemble_work_arrays`).
    """
    for b in prange(W.shape[0]):
        values[b] = _member(W[b], teacher[b], activation_code, output_scale, alpha, second_moment[b],
                            train_readout, velocity[b], K[b], G[b], beta[b], K_t[b], G_t[b], norms[b],
                            teacher_norms[b])


@njit(cache=True)
def member_sums_of_squares(V, out):
    """sum_ij V[b, i, j]^2 of each member, in one serial order (the same for any B).

    Parameters
    ----------
    V : ndarray, shape (B, m, p)
    out : ndarray, shape (B,), output
    """
    for b in range(V.shape[0]):
        acc = like(V[0, 0, 0], 0.0)
        for i in range(V.shape[1]):
            for j in range(V.shape[2]):
                acc += V[b, i, j] * V[b, i, j]
        out[b] = acc


@njit(cache=True, parallel=True)
def closed_form_points_velocity(W, teacher, points, activation_code, output_scale, alpha, train_readout, out):
    """The velocity field of one network's measure at extra points (tracers), in the arithmetic
    of :func:`ensemble_closed_form_evaluate`: a point equal to particle i gets bitwise the
    velocity of particle i, and the particles' own velocities do not depend on the points.

    The fused pass over the pairs j >= i adds, to particle i, the terms of j = 0, 1, ..., m - 1
    in that order with the same operands; here each point sums over j = 0 ... m - 1 in order.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
        The measure's particles.
    teacher : ndarray, shape (k, d + 2)
    points : ndarray, shape (n, d + 2)
    activation_code : int
    output_scale, alpha : float
    train_readout : bool
    out : ndarray, shape (n, d + 2), output
    """
    m, p = W.shape
    k = teacher.shape[0]
    d = p - 2
    norms = np.empty(m, dtype=W.dtype)
    teacher_norms = np.empty(k, dtype=W.dtype)
    for j in range(m):
        acc = like(W[0, 0], 0.0)
        for t in range(d):
            acc += W[j, t] * W[j, t]
        norms[j] = math.sqrt(acc)
    for j in range(k):
        acc = like(W[0, 0], 0.0)
        for t in range(d):
            acc += teacher[j, t] * teacher[j, t]
        teacher_norms[j] = math.sqrt(acc)
    s_ = like(W[0, 0], output_scale)
    inv_alpha = like(W[0, 0], 1.0) / like(W[0, 0], alpha)
    scale = -like(W[0, 0], m) * s_
    work = np.zeros((points.shape[0], 2, d), dtype=W.dtype)  # per point: G, G_t (disjoint rows)
    for i in prange(points.shape[0]):
        zero = like(W[0, 0], 0.0)
        acc = zero
        for t in range(d):
            acc += points[i, t] * points[i, t]
        norm_i = math.sqrt(acc)
        G = work[i, 0]
        G_t = work[i, 1]
        K, beta = _ordered_sums(points[i], norm_i, W, norms, activation_code, G)
        K_t, b_t = _ordered_sums(points[i], norm_i, teacher, teacher_norms, activation_code, G_t)
        factor = scale * points[i, d + 1]
        for t in range(d):
            g = G[t] + beta * points[i, t]
            g_t = G_t[t] + b_t * points[i, t]
            out[i, t] = factor * (s_ * g - inv_alpha * g_t)
        out[i, d] = zero
        out[i, d + 1] = scale * (s_ * K - inv_alpha * K_t) if train_readout else zero
