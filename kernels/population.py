"""Pair kernels for population risks with Gaussian inputs x ~ N(0, I_d).

For the squared loss the population objective only involves the pair function

    kappa(w, w') = E[sigma(a . x + b) sigma(a' . x + b')]

(SCIENCE.md section 2). The kernels here compute, for each point w_i of ``points`` and the
measure carried by ``sources`` (weights = their output weights c_j),

    K_i = sum_j c_j kappa(w_i, w_j),      G_i = sum_j c_j grad_{(a, b)} kappa(w_i, w_j),

parallel over points, with no pair-sized temporary. The objective and the velocity are
assembled from K and G in ``meanfield``. The closed form goes by tiles: the dot products and
the force sums by BLAS on each thread, the kernel in between in a vectorised loop (a
branch-free arccos for relu); the quadrature goes in one fused pass over the pairs.

Two ways to evaluate kappa:

* closed form (no bias): relu (arc-cosine kernel), erf(z/sqrt 2) (arcsine kernel), linear;
* two-dimensional Gauss-Hermite quadrature in the span of (a, a'), any activation, with
  bias. The quadrature is symmetrised (the average of the rule built on a and the rule built
  on a'), so that kappa_Q(w, w') = kappa_Q(w', w) exactly, and G is the exact gradient of
  the quadrature formula: the velocity is minus the gradient of the risk that is reported.
"""
import math

import numpy as np
from numba import get_num_threads, njit, prange

from ._scalar import RELU, activation, activation_derivative, like
from .ensemble import _symmetric_pair

# Tiles of the BLAS closed-form kernels keep M N K (rows x sources x d) at most
# _BLAS_SERIAL_MNK, so that OpenBLAS runs each product on the calling numba thread: it gives
# a gemm floor(M N K / 262144) threads (SMP_THRESHOLD_MIN 65536 x GEMM_MULTITHREAD_THRESHOLD
# 4, interface/gemm.c), one below 524288. Above, its threads fight numba's: 30-100x slower
# (m = 500, d = 2000: 1.75 s against 55 ms). General tiles: up to _TILE_ROWS points (fewer
# at d > 940) x up to 256 sources.
_TILE_ROWS = 32
_BLAS_SERIAL_MNK = 480_000
# Square tiles of the self-interaction: the largest side with side^2 d <= _BLAS_SERIAL_MNK
# (69 at d = 100, 21 at d = 1000), at most _SELF_TILE_MAX. A fixed side of 48 crossed the
# limit at d > 227: at m = 2000 the self-interaction took 0.65 s at d = 400 and 13 s at
# d = 1000 (now 81 ms and 0.31 s).
_SELF_TILE_MAX = 128


@njit(cache=True)
def _closed_form_pair(dot, norm_i, norm_j, code):
    """kappa(a_i, a_j) and (alpha, beta) with grad_{a_i} kappa = alpha a_j + beta a_i
    (``ensemble._symmetric_pair``, whose beta of the other order is not needed here)."""
    kappa, alpha, beta, _ = _symmetric_pair(dot, norm_i, norm_j, code)
    return kappa, alpha, beta


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


# fdlibm's rational approximation of asin on [-0.5, 0.5]: asin(s) = s + s R(s^2),
# R(t) = t P(t) / Q(t) (error below one ulp in double precision).
_PS0 = 1.66666666666666657415e-01
_PS1 = -3.25565818622400915405e-01
_PS2 = 2.01212532134862925881e-01
_PS3 = -4.00555345006794114027e-02
_PS4 = 7.91534994289814532176e-04
_PS5 = 3.47933107596021167570e-05
_QS1 = -2.40339491173441421878e+00
_QS2 = 2.02094576023350569471e+00
_QS3 = -6.88283971605453293030e-01
_QS4 = 7.70381505559019352791e-02


@njit(cache=True, inline="always")
def acos_branchless(x):
    """arccos(x) for x in [-1, 1] without branches, so that loops over it vectorise.

    With a = |x|: for a <= 1/2, acos(a) = pi/2 - asin(a); for a > 1/2,
    acos(a) = 2 asin(sqrt((1 - a) / 2)) (no cancellation near a = 1); both asin by fdlibm's
    rational approximation on [0, 1/2], and acos(x) = pi - acos(a) for x < 0. Both halves
    are computed and one is selected. Relative error a few ulp (float64 and float32; tested
    against ``numpy.arccos``).

    Parameters
    ----------
    x : float32 or float64
        A scalar in [-1, 1] (outside it the result is meaningless: no check).

    Returns
    -------
    float32 or float64
        arccos(x) in [0, pi], in the type of x.
    """
    one = like(x, 1.0)
    half = like(x, 0.5)
    a = abs(x)
    big = a > half
    z = half * (one - a) if big else a * a
    s = math.sqrt(z) if big else a
    p = z * (like(x, _PS0) + z * (like(x, _PS1) + z * (like(x, _PS2) + z * (
        like(x, _PS3) + z * (like(x, _PS4) + z * like(x, _PS5))))))
    q = one + z * (like(x, _QS1) + z * (like(x, _QS2) + z * (like(x, _QS3) + z * like(x, _QS4))))
    asin_s = s + s * (p / q)
    acos_a = like(x, 2.0) * asin_s if big else like(x, 1.5707963267948966) - asin_s
    return like(x, math.pi) - acos_a if x < like(x, 0.0) else acos_a


# LLVM vectorises this loop only with reassociation (the row sums) and numpy's error model
# (Python's raises ZeroDivisionError, a branch in every division); no flag here changes
# NaN or inf semantics.
@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _relu_row(dot, norm_i, inv_i, norm_j, c_j):
    """Arc-cosine kernel along one row of dot products, in place.

    On entry ``dot[t] = a_i . a_j``; on exit ``dot[t] = c_j alpha_ij``, the weight of a_j in
    grad_{a_i} kappa = alpha_ij a_j + beta_ij a_i. Returns (sum_j c_j kappa_ij,
    sum_j c_j beta_ij). ``inv_i`` is 1/|a_i|, 0 where a_i = 0 (there the gradient is 0, as
    in the reference); likewise |a_j| = 0 gives cos = 0 and kappa = 0.

    kappa = (|a_i||a_j| sin theta + (pi - theta) a_i . a_j) / 2 pi,
    alpha = (pi - theta) / 2 pi, beta = sin theta |a_j| / (2 pi |a_i|).
    """
    one = like(norm_i, 1.0)
    zero = like(norm_i, 0.0)
    pi = like(norm_i, math.pi)
    inv_2pi = like(norm_i, 0.15915494309189535)
    sin_acc = zero  # sum_j c_j |a_j| sin theta
    dot_acc = zero  # sum_j c_j (pi - theta) a_i . a_j
    w_i = inv_2pi if inv_i > zero else zero
    for t in range(dot.shape[0]):
        nj = norm_j[t]
        dt = dot[t]
        inv_j = one / nj if nj > zero else zero
        cos_t = min(max(dt * inv_i * inv_j, -one), one)
        angle = pi - acos_branchless(cos_t)
        sin_t = math.sqrt(one - cos_t * cos_t)
        cj = c_j[t]
        sin_acc += cj * nj * sin_t
        dot_acc += cj * angle * dt
        dot[t] = cj * angle * w_i
    return (norm_i * sin_acc + dot_acc) * inv_2pi, sin_acc * inv_i * inv_2pi


@njit(cache=True)
def _generic_row(dot, norm_i, norm_j, c_j, code):
    """``_relu_row`` for the other closed forms, through the scalar ``_closed_form_pair``."""
    k_acc = like(norm_i, 0.0)
    b_acc = like(norm_i, 0.0)
    for t in range(dot.shape[0]):
        kappa, alpha, beta = _closed_form_pair(dot[t], norm_i, norm_j[t], code)
        cj = c_j[t]
        k_acc += cj * kappa
        b_acc += cj * beta
        dot[t] = cj * alpha
    return k_acc, b_acc


@njit(cache=True)
def _row_norms(A, norms, inverses):
    zero = A.dtype.type(0.0)
    for i in range(A.shape[0]):
        acc = zero
        for k in range(A.shape[1]):
            acc += A[i, k] * A[i, k]
        norms[i] = math.sqrt(acc)
        inverses[i] = A.dtype.type(1.0) / norms[i] if norms[i] > zero else zero


@njit(cache=True, parallel=True)
def _closed_form_tiles(points, sources, activation_code, n_chunks, K, G):
    """Body of :func:`closed_form_pair_field`; ``n_chunks`` contiguous runs of point blocks."""
    n, p = points.shape
    m = sources.shape[0]
    d = p - 2
    dtype = points.dtype
    zero = dtype.type(0.0)
    A_i = np.ascontiguousarray(points[:, :d])
    A_j = np.ascontiguousarray(sources[:, :d])
    c_j = sources[:, d + 1].copy()
    norm_i = np.empty(n, dtype=dtype)
    inv_i = np.empty(n, dtype=dtype)
    norm_j = np.empty(m, dtype=dtype)
    inv_j = np.empty(m, dtype=dtype)
    _row_norms(A_i, norm_i, inv_i)
    _row_norms(A_j, norm_j, inv_j)
    rows_max, cols_max = general_tile_shape(d)
    n_blocks = (n + rows_max - 1) // rows_max
    n_chunks = max(1, min(n_chunks, n_blocks))
    for chunk in prange(n_chunks):
        # Work tiles of this thread, allocated once per chunk (not per block).
        dot_buf = np.empty(rows_max * cols_max, dtype=dtype)
        part_buf = np.empty(rows_max * d, dtype=dtype)
        force = np.empty((rows_max, d), dtype=dtype)
        k_row = np.empty(rows_max, dtype=dtype)
        b_row = np.empty(rows_max, dtype=dtype)
        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            i0 = blk * rows_max
            rows = min(rows_max, n - i0)
            A_rows = A_i[i0:i0 + rows]
            force[:rows] = zero
            k_row[:] = zero
            b_row[:] = zero
            for j0 in range(0, m, cols_max):
                cols = min(cols_max, m - j0)
                tile = dot_buf[:rows * cols].reshape((rows, cols))
                np.dot(A_rows, A_j[j0:j0 + cols].T, tile)
                for r in range(rows):
                    i = i0 + r
                    if activation_code == RELU:
                        k, b = _relu_row(tile[r], norm_i[i], inv_i[i], norm_j[j0:j0 + cols], c_j[j0:j0 + cols])
                    else:
                        k, b = _generic_row(tile[r], norm_i[i], norm_j[j0:j0 + cols], c_j[j0:j0 + cols],
                                            activation_code)
                    k_row[r] += k
                    b_row[r] += b
                part = part_buf[:rows * d].reshape((rows, d))
                np.dot(tile, A_j[j0:j0 + cols], part)
                force[:rows] += part
            for r in range(rows):
                i = i0 + r
                K[i] = k_row[r]
                for k in range(d):
                    G[i, k] = force[r, k] + b_row[r] * A_i[i, k]
                G[i, d] = zero


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _relu_pair_row(dot, norm_i, inv_i, c_i, norm_j, inv_j, c_j, col_K, col_beta, both):
    """``_relu_row`` for a tile of the self-interaction, both ways.

    On exit ``dot[t] = alpha_ij = (pi - theta) / 2 pi`` (symmetric). Returns the row's
    (sum_j c_j kappa_ij, sum_j c_j |a_j| sin theta_ij); when ``both``, also adds the column
    sides c_i kappa_ij to ``col_K[t]`` and c_i |a_i| sin theta_ij to ``col_beta[t]``.
    """
    one = like(norm_i, 1.0)
    pi = like(norm_i, math.pi)
    inv_2pi = like(norm_i, 0.15915494309189535)
    sin_acc = like(norm_i, 0.0)
    k_acc = like(norm_i, 0.0)
    for t in range(dot.shape[0]):
        dt = dot[t]
        cos_t = min(max(dt * inv_i * inv_j[t], -one), one)
        angle = pi - acos_branchless(cos_t)
        sin_t = math.sqrt(one - cos_t * cos_t)
        kappa = (norm_i * norm_j[t] * sin_t + angle * dt) * inv_2pi
        k_acc += c_j[t] * kappa
        sin_acc += c_j[t] * norm_j[t] * sin_t
        if both:
            col_K[t] += c_i * kappa
            col_beta[t] += c_i * norm_i * sin_t
        dot[t] = angle * inv_2pi
    return k_acc, sin_acc


@njit(cache=True)
def general_tile_shape(d):
    """(points, sources) per tile of the general closed-form kernel for input dimension d."""
    rows = max(1, min(_TILE_ROWS, _BLAS_SERIAL_MNK // (16 * max(d, 1))))
    return rows, max(1, min(256, _BLAS_SERIAL_MNK // (rows * max(d, 1))))


@njit(cache=True)
def self_tile_size(d):
    """Side of the square tiles of the relu self-interaction for input dimension d."""
    side = int(math.sqrt(_BLAS_SERIAL_MNK / max(d, 1)))
    return max(1, min(_SELF_TILE_MAX, side))


@njit(cache=True)
def _round_robin_pair(n_slots, round_index, k):
    """Blocks of the k-th pair of a round of the circle method (round-robin tournament).

    Over the rounds 0 .. n_slots - 2 every pair of the (even) ``n_slots`` blocks meets
    exactly once, and within a round each block is in exactly one pair.
    """
    last = n_slots - 1
    if k == 0:
        return round_index, last
    return (round_index + k) % last, (round_index - k + last) % last


@njit(cache=True)
def _relu_self_tile(A, norm, inv, c, cA, i0, rows, j0, cols, both, dot_buf, part_buf, K, beta, G):
    """One tile (I, J) of ``_relu_self_tiles``: adds to the rows of I and, when ``both``
    (I != J), to the rows of J. The caller makes sure no other thread writes those rows."""
    d = A.shape[1]
    tile = dot_buf[:rows * cols].reshape((rows, cols))
    np.dot(A[i0:i0 + rows], A[j0:j0 + cols].T, tile)
    for r in range(rows):
        i = i0 + r
        k, b = _relu_pair_row(tile[r], norm[i], inv[i], c[i], norm[j0:j0 + cols], inv[j0:j0 + cols],
                              c[j0:j0 + cols], K[j0:j0 + cols], beta[j0:j0 + cols], both)
        K[i] += k
        beta[i] += b
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
def _relu_self_tiles(sources, n_workers, K, G):
    """Relu pair sums of a measure with itself, on the tiles j >= i only (kappa and alpha
    are symmetric): half the Gram products and half the arccos of ``_closed_form_tiles``.

    With cA_j = c_j a_j: G_i = sum_j alpha_ij cA_j + (sum_j c_j beta_ij) a_i; a tile (I, J)
    with I < J adds alpha_IJ cA_J to the rows of I and alpha_IJ^T cA_I to the rows of J.
    The tiles run in rounds of a round-robin tournament over the blocks (the diagonal tiles
    first, then the circle method's rounds), in which each block is in one tile at most, so
    the tiles of a round run in parallel with no two threads writing the same row and no
    per-thread copies of the sums. Each row gets its terms in the same order whatever the
    number of threads, so the sums (and a run's files) are bitwise the same for any
    NUMBA_NUM_THREADS (sweeps with --jobs, Slurm tasks), and up to n_blocks / 2 threads
    share the work. ``n_workers`` only sets how many work buffers run at once.
    """
    m, p = sources.shape
    d = p - 2
    dtype = sources.dtype
    zero = dtype.type(0.0)
    A = np.ascontiguousarray(sources[:, :d])
    c = sources[:, d + 1].copy()
    norm = np.empty(m, dtype=dtype)
    inv = np.empty(m, dtype=dtype)
    _row_norms(A, norm, inv)
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
    K[:] = zero
    G[:, :] = zero
    dot_buf = np.empty((n_workers, size * size), dtype=dtype)
    part_buf = np.empty((n_workers, size * d), dtype=dtype)
    for worker in prange(n_workers):
        for blk in range(worker, n_blocks, n_workers):
            i0 = blk * size
            rows = min(size, m - i0)
            _relu_self_tile(A, norm, inv, c, cA, i0, rows, i0, rows, False, dot_buf[worker], part_buf[worker],
                            K, beta, G)
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
                _relu_self_tile(A, norm, inv, c, cA, i0, min(size, m - i0), j0, min(size, m - j0), True,
                                dot_buf[worker], part_buf[worker], K, beta, G)
    inv_2pi = dtype.type(0.15915494309189535)
    for i in prange(m):
        # a_i = 0: no gradient (as in the reference); inv[i] is 0 there.
        live = dtype.type(1.0) if norm[i] > zero else zero
        b = beta[i] * inv[i] * inv_2pi
        for k in range(d):
            G[i, k] = live * G[i, k] + b * A[i, k]
        G[i, d] = zero


def closed_form_pair_field(points, sources, activation_code, K, G, symmetric=True):
    """Closed-form pair sums for relu, erf or linear activations without bias.

    K_i = sum_j c_j kappa(a_i, a_j) and G_i = sum_j c_j grad_{a_i} kappa(a_i, a_j), with
    grad_{a_i} kappa = alpha_ij a_j + beta_ij a_i. Tiled: each thread takes a run of blocks
    of ``_TILE_ROWS`` points; for a block and a tile of sources, the dot products a_i . a_j
    come from a BLAS product, the kernel is evaluated on the tile in place (a branch-free,
    vectorised arccos for relu), turning each entry into the force weight c_j alpha_ij, and
    a second BLAS product adds sum_j c_j alpha_ij a_j; beta_ij a_i is summed per point. The
    tiles are small enough (M N K <= ``_BLAS_SERIAL_MNK``) that OpenBLAS runs each product
    on the calling thread: numba's threads never wait on BLAS's own pool, which on a loaded
    machine stalled the kernel by an order of magnitude. Work memory is a few KiB per thread.
    Same sums as :func:`fused_closed_form_pair_field` (the reference, tested against it).

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
    symmetric : bool
        When ``points is sources`` (relu), compute only the tiles j >= i
        (``_relu_self_tiles``). Its sums are rounded differently from the general tiles';
        pass False where other points must get bitwise the same field (tracers on particles).
    """
    if symmetric and points is sources and activation_code == RELU:
        _relu_self_tiles(sources, get_num_threads(), K, G)
    else:
        _closed_form_tiles(points, sources, activation_code, get_num_threads(), K, G)


@njit(cache=True)
def fused_closed_form_pair_field(points, sources, activation_code, K, G):
    """Closed-form pair sums for relu, erf or linear activations without bias (reference).

    One fused pass over the pairs (dot products, kernel and force in scalar code); the
    reference for :func:`closed_form_pair_field`, which computes the same sums with BLAS
    tiles and is several times faster at m >= 10^3. Same parameters and outputs as
    :func:`closed_form_pair_field` (without ``symmetric``).

    Parameters
    ----------
    points : ndarray, shape (n, d + 2), float32 or float64
        Points w_i at which the field is evaluated (columns a, b, c; b is ignored).
    sources : ndarray, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{a_j}; c_j is the last column (b is ignored).
    activation_code : int
        RELU, ERF or LINEAR.
    K : ndarray, shape (n,), output
        K_i = sum_j c_j kappa(a_i, a_j), overwritten.
    G : ndarray, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa(a_i, a_j); G_i[d] = 0 (no bias); overwritten.
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
