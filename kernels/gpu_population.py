"""CUDA twin of ``population``: pair sums of the population risk.

For every point w_i and the measure sum_j c_j delta_{(a_j, b_j)} of the sources,

    K_i = sum_j c_j kappa(w_i, w_j),      G_i = sum_j c_j grad_{(a_i, b_i)} kappa(w_i, w_j),

with kappa in closed form (``population._closed_form_pair``: relu, erf, linear, no bias;
``population_bias.bias_pair``: relu, erf, normal CDF, linear, with biases) or by the
symmetrised Gauss-Hermite rule (``population._quadrature_pair``: any activation, with bias),
all compiled for the device from the CPU source. One thread per point; the sources
are read in tiles held in shared memory (the tiled N-body scheme: every block loads a tile
of sources once and all its threads use it), and each thread keeps its G_i in a local array
of length d.
"""
import functools
import math

from numba import cuda

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type, tile_rows
from ._gpu_scalar import bias_pair, closed_form_pair, quadrature_pair
from .population_bias import BIAS_CLOSED_FORM_CODES

# How a pair kernel computes kappa (``pair_kernel``'s ``method``).
CLOSED_FORM = "closed_form"  # population._closed_form_pair: no bias
QUADRATURE = "quadrature"  # population._quadrature_pair: Gauss-Hermite, any activation
BIAS_CLOSED_FORM = "bias_closed_form"  # population_bias.bias_pair: closed form with biases
PAIR_METHODS = (CLOSED_FORM, QUADRATURE, BIAS_CLOSED_FORM)


@functools.lru_cache(maxsize=None)
def pair_kernel(T, d, method=CLOSED_FORM):
    """The pair-sum kernel for floating type ``T``, input dimension ``d`` and ``method`` (one
    of ``PAIR_METHODS``); the three share the tiling and differ in the pair function only."""
    if method not in PAIR_METHODS:
        raise ValueError(f"method must be one of {PAIR_METHODS}, got {method!r}")
    # Booleans, not the string: the kernel closes over them as compile-time constants (the
    # branches not taken are not compiled), and CUDA kernels have no strings.
    quadrature = method == QUADRATURE
    with_bias = method == BIAS_CLOSED_FORM
    row = d + 3  # a_j (d), |a_j|, b_j, c_j in shared memory

    def kernel(points, sources, activation_code, nodes, weights, tile, K, G):
        shared = cuda.shared.array(0, T)
        n = points.shape[0]
        m = sources.shape[0]
        i = cuda.grid(1)
        active = i < n
        zero = T(0.0)
        point = cuda.local.array(d, T)
        acc = cuda.local.array(d, T)
        norm_i = zero
        b_i = zero
        if active:
            norm_sq = zero
            for k in range(d):
                point[k] = points[i, k]
                norm_sq += point[k] * point[k]
                acc[k] = zero
            norm_i = math.sqrt(norm_sq)
            b_i = points[i, d]
        kappa_sum = zero
        beta_sum = zero
        gb_sum = zero
        for start in range(0, m, tile):
            rows = min(tile, m - start)
            for r in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
                j = start + r
                norm_sq = zero
                for k in range(d):
                    v = sources[j, k]
                    shared[r * row + k] = v
                    norm_sq += v * v
                shared[r * row + d] = math.sqrt(norm_sq)
                shared[r * row + d + 1] = sources[j, d]
                shared[r * row + d + 2] = sources[j, d + 1]
            cuda.syncthreads()
            if active:
                for r in range(rows):
                    base = r * row
                    dot = zero
                    for k in range(d):
                        dot += point[k] * shared[base + k]
                    if quadrature:
                        kappa, alpha, beta, gb = quadrature_pair(dot, norm_i, shared[base + d], b_i,
                                                                 shared[base + d + 1], activation_code, nodes,
                                                                 weights)
                    elif with_bias:
                        kappa, alpha, beta, gb = bias_pair(dot, norm_i, shared[base + d], b_i, shared[base + d + 1],
                                                           activation_code)
                    else:
                        kappa, alpha, beta = closed_form_pair(dot, norm_i, shared[base + d], activation_code)
                        gb = zero
                    cj = shared[base + d + 2]
                    kappa_sum += cj * kappa
                    beta_sum += cj * beta
                    gb_sum += cj * gb
                    weight = cj * alpha
                    for k in range(d):
                        acc[k] += weight * shared[base + k]
            cuda.syncthreads()
        if active:
            for k in range(d):
                G[i, k] = acc[k] + beta_sum * point[k]
            G[i, d] = gb_sum
            K[i] = kappa_sum

    return cuda.jit(kernel)


def _pair_field(points, sources, activation_code, nodes, weights, K, G, method):
    check_device_arrays(points, sources, nodes, weights, K, G)
    n, p = points.shape
    if n == 0:
        return
    d = p - 2
    T = numba_type(points.dtype)
    tile = tile_rows(d + 3, points.dtype.itemsize)
    shared = tile * (d + 3) * points.dtype.itemsize
    pair_kernel(T, d, method)[blocks(n), THREADS_PER_BLOCK, 0, shared](
        points, sources, int(activation_code), nodes, weights, tile, K, G)


def closed_form_pair_field(points, sources, activation_code, K, G):
    """Closed-form pair sums for relu, erf or linear activations without bias (on the GPU).

    Same contract as ``meanfield.kernels.closed_form_pair_field``, on device arrays.

    Parameters
    ----------
    points : device array, shape (n, d + 2), float32 or float64
    sources : device array, shape (m, d + 2), same dtype
    activation_code : int
        RELU, ERF or LINEAR.
    K : device array, shape (n,), output
        K_i = sum_j c_j kappa(a_i, a_j).
    G : device array, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa(a_i, a_j); G_i[d] = 0.
    """
    no_rule = _no_rule(points.dtype)
    _pair_field(points, sources, activation_code, no_rule, no_rule, K, G, CLOSED_FORM)


def quadrature_pair_field(points, sources, activation_code, nodes, weights, K, G):
    """Pair sums by symmetrised two-dimensional Gauss-Hermite quadrature (any activation), on the GPU.

    Same contract as ``meanfield.kernels.quadrature_pair_field``, on device arrays.

    Parameters
    ----------
    points : device array, shape (n, d + 2), float32 or float64
    sources : device array, shape (m, d + 2), same dtype
    activation_code : int
    nodes, weights : device arrays, shape (Q,), same dtype
        Probabilists' Gauss-Hermite rule normalised to N(0, 1).
    K : device array, shape (n,), output
    G : device array, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa_Q, G_i[d] = sum_j c_j d kappa_Q / d b_i.
    """
    _pair_field(points, sources, activation_code, nodes, weights, K, G, QUADRATURE)


def bias_pair_field(points, sources, activation_code, K, G):
    """Closed-form pair sums with biases for relu, erf(z/sqrt 2), the normal CDF or linear (on the GPU).

    Same contract as ``meanfield.kernels.bias_pair_field``, on device arrays: the pair function
    is ``population_bias.bias_pair`` compiled for the device, summed with the tiling of the
    other pair kernels (one thread per point, sources in shared memory) instead of the CPU's
    BLAS tiles, so the sums agree to rounding.

    Parameters
    ----------
    points : device array, shape (n, d + 2), float32 or float64
        Points w_i = (a_i, b_i, c_i) (c_i is not used).
    sources : device array, shape (m, d + 2), same dtype
        Measure sum_j c_j delta_{(a_j, b_j)}.
    activation_code : int
        RELU, ERF, NORMAL_CDF or LINEAR.
    K : device array, shape (n,), output
        K_i = sum_j c_j kappa(w_i, w_j).
    G : device array, shape (n, d + 1), output
        G_i[:d] = sum_j c_j grad_{a_i} kappa(w_i, w_j), G_i[d] = sum_j c_j d kappa / d b_i.
    """
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    no_rule = _no_rule(points.dtype)
    _pair_field(points, sources, activation_code, no_rule, no_rule, K, G, BIAS_CLOSED_FORM)


@functools.lru_cache(maxsize=None)
def _no_rule_cached(dtype_name):
    import numpy as np
    return cuda.to_device(np.zeros(1, dtype=dtype_name))


def _no_rule(dtype):
    return _no_rule_cached(str(dtype))


@functools.lru_cache(maxsize=None)
def _pair_velocity_kernel(T):
    def kernel(points, m, scale, inv_alpha, bias, train_readout, K_w, G_w, K_t, G_t, out, energy):
        i = cuda.grid(1)
        if i < points.shape[0]:
            d = points.shape[1] - 2
            s = scale
            ia = inv_alpha
            factor = -T(m) * s
            c = points[i, d + 1]
            for k in range(d + 1):
                out[i, k] = factor * c * (s * G_w[i, k] - ia * G_t[i, k])
            if not bias:
                out[i, d] = T(0.0)
            out[i, d + 1] = factor * (s * K_w[i] - ia * K_t[i]) if train_readout else T(0.0)
            energy[i] = c * (T(0.5) * s * s * K_w[i] - s * ia * K_t[i])

    return cuda.jit(kernel)


def pair_velocity(points, m, output_scale, inv_alpha, bias, train_readout, K_w, G_w, K_t, G_t, out, energy):
    """Velocity of ``points`` from the pair sums of a squared-loss population objective.

    The device twin of ``meanfield.engine._problems.pair_velocity``:
    v(x) = -m s [c (s G_w - G_t / alpha), s K_w - K_t / alpha], frozen columns 0; also
    ``energy_i = c_i (s^2 K_w_i / 2 - s K_t_i / alpha)``, whose sum over the particles plus
    E[y^2] / (2 alpha^2) is the objective F.

    Parameters
    ----------
    points : device array, shape (n, d + 2)
    m : int
        Width of the measure.
    output_scale, inv_alpha : float
        s and 1 / alpha.
    bias, train_readout : bool
    K_w, K_t : device arrays, shape (n,)
    G_w, G_t : device arrays, shape (n, d + 1)
    out : device array, shape (n, d + 2), output
    energy : device array, shape (n,), output
    """
    check_device_arrays(points, K_w, G_w, K_t, G_t, out, energy)
    n = points.shape[0]
    if n == 0:
        return
    scalar = points.dtype.type
    _pair_velocity_kernel(numba_type(points.dtype))[blocks(n), THREADS_PER_BLOCK](
        points, int(m), scalar(output_scale), scalar(inv_alpha), bool(bias), bool(train_readout), K_w, G_w, K_t, G_t,
        out, energy)


def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T``
    and input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, int64

    M, V = T[:, ::1], T[::1]
    return [
        ("closed_form_pair_field", pair_kernel(T, d, CLOSED_FORM).py_func, (M, M, int64, V, V, int64, V, M)),
        ("quadrature_pair_field", pair_kernel(T, d, QUADRATURE).py_func, (M, M, int64, V, V, int64, V, M)),
        ("bias_pair_field", pair_kernel(T, d, BIAS_CLOSED_FORM).py_func, (M, M, int64, V, V, int64, V, M)),
        ("pair_velocity", _pair_velocity_kernel(T).py_func,
         (M, int64, T, T, boolean, boolean, V, M, V, M, M, V)),
    ]
