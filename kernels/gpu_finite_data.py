"""CUDA twin of ``finite_data``: empirical risk and particle velocity, tiled over samples.

Two kernels per evaluation, with no N x m array:

* forward, one thread per sample n: h(x_n) = s sum_i c_i sigma(a_i . x_n + b_i), the
  particles read in tiles held in shared memory; writes the loss l(alpha h, y_n) and the
  residual r_n = l'(alpha h, y_n) of its sample;
* backward, one thread per particle (or tracer) i: sum_n r_n grad_w [c sigma(a . x_n + b)]
  at w_i, the samples (x_n, r_n) read in tiles held in shared memory, the d-vector
  accumulated in a local array; the thread writes its own velocity row.

The objective is the sum of the per-sample losses (``gpu_reductions.device_sum``).
"""
import functools

import numpy as np
from numba import cuda

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type, tile_rows
from .gpu_reductions import device_sum
from ._gpu_scalar import activation, activation_derivative, loss, loss_derivative


@functools.lru_cache(maxsize=None)
def forward_kernel(T, d):
    """Per-sample losses and residuals for floating type ``T`` and input dimension ``d``."""
    row = d + 2  # a_i, b_i, c_i

    def kernel(W, X, y, activation_code, loss_code, scale, alpha, tile, losses, residual):
        shared = cuda.shared.array(0, T)
        N = X.shape[0]
        m = W.shape[0]
        n = cuda.grid(1)
        active = n < N
        zero = T(0.0)
        x = cuda.local.array(d, T)
        if active:
            for k in range(d):
                x[k] = X[n, k]
        h = zero
        for start in range(0, m, tile):
            rows = min(tile, m - start)
            for r in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
                for k in range(row):
                    shared[r * row + k] = W[start + r, k]
            cuda.syncthreads()
            if active:
                for r in range(rows):
                    base = r * row
                    z = shared[base + d]
                    for k in range(d):
                        z += shared[base + k] * x[k]
                    h += shared[base + d + 1] * activation(z, activation_code)
            cuda.syncthreads()
        if active:
            f = alpha * scale * h
            yn = y[n]
            residual[n] = loss_derivative(f, yn, loss_code)
            losses[n] = loss(f, yn, loss_code)

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def backward_kernel(T, d):
    """Velocities of the rows of ``P`` from the residuals, for type ``T`` and dimension ``d``."""
    row = d + 1  # x_n, r_n

    def kernel(P, X, residual, activation_code, factor, bias, train_readout, tile, out):
        shared = cuda.shared.array(0, T)
        N = X.shape[0]
        n_rows = P.shape[0]
        i = cuda.grid(1)
        active = i < n_rows
        zero = T(0.0)
        a = cuda.local.array(d, T)
        acc = cuda.local.array(d, T)
        b = zero
        c = zero
        if active:
            for k in range(d):
                a[k] = P[i, k]
                acc[k] = zero
            b = P[i, d]
            c = P[i, d + 1]
        gb = zero
        gc = zero
        for start in range(0, N, tile):
            rows = min(tile, N - start)
            for r in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
                for k in range(d):
                    shared[r * row + k] = X[start + r, k]
                shared[r * row + d] = residual[start + r]
            cuda.syncthreads()
            if active:
                for r in range(rows):
                    base = r * row
                    z = b
                    for k in range(d):
                        z += a[k] * shared[base + k]
                    rn = shared[base + d]
                    g = rn * c * activation_derivative(z, activation_code)
                    gb += g
                    gc += rn * activation(z, activation_code)
                    for k in range(d):
                        acc[k] += g * shared[base + k]
            cuda.syncthreads()
        if active:
            f = factor
            for k in range(d):
                out[i, k] = f * acc[k]
            out[i, d] = f * gb if bias else zero
            out[i, d + 1] = f * gc if train_readout else zero

    return cuda.jit(kernel)


def finite_data_field(W, X, y, points, activation_code, loss_code, output_scale, alpha,
                      bias, train_readout, tile_size, velocity, points_velocity):
    """Empirical risk of the width-m network ``W`` and its velocity field, on the GPU.

    Same contract as ``meanfield.kernels.finite_data_field`` with device arrays:
    F = (1 / (alpha^2 N)) sum_n l(alpha h(x_n), y_n), h(x) = s sum_i c_i sigma(a_i . x + b_i),
    v(w) = -(m s / (alpha N)) sum_n l'(alpha h(x_n), y_n) grad_w [c sigma(a . x_n + b)].

    Parameters
    ----------
    W : device array, shape (m, d + 2), float32 or float64
    X : device array, shape (N, d), same dtype
    y : device array, shape (N,), same dtype
    points : device array, shape (n, d + 2), same dtype (n may be 0)
    activation_code, loss_code : int
    output_scale, alpha : float
    bias, train_readout : bool
    tile_size : int
        Upper bound on the samples (backward) and particles (forward) per shared-memory tile.
    velocity : device array, shape (m, d + 2), output
    points_velocity : device array, shape (n, d + 2), output

    Returns
    -------
    float
        The objective F.
    """
    check_device_arrays(W, X, y, points, velocity, points_velocity)
    m, p = W.shape
    N, d = X.shape
    T = numba_type(W.dtype)
    itemsize = W.dtype.itemsize
    limit = max(1, min(int(tile_size), THREADS_PER_BLOCK))
    losses = cuda.device_array(N, dtype=W.dtype)
    residual = cuda.device_array(N, dtype=W.dtype)
    tile = tile_rows(d + 2, itemsize, limit)
    scalar = W.dtype.type
    forward_kernel(T, d)[blocks(N), THREADS_PER_BLOCK, 0, tile * (d + 2) * itemsize](
        W, X, y, int(activation_code), int(loss_code), scalar(output_scale), scalar(alpha), tile, losses, residual)
    factor = scalar(-m * float(output_scale) / (float(alpha) * N))
    tile = tile_rows(d + 1, itemsize, limit)
    backward = backward_kernel(T, d)
    shared = tile * (d + 1) * itemsize
    backward[blocks(m), THREADS_PER_BLOCK, 0, shared](
        W, X, residual, int(activation_code), factor, bool(bias), bool(train_readout), tile, velocity)
    if points.shape[0] > 0:
        backward[blocks(points.shape[0]), THREADS_PER_BLOCK, 0, shared](
            points, X, residual, int(activation_code), factor, bool(bias), bool(train_readout), tile,
            points_velocity)
    total = device_sum(losses)
    return W.dtype.type(total / (float(alpha) ** 2 * N))


def network_output(W, X, activation_code, output_scale, tile_size, out):
    """h(x_n) = s sum_i c_i sigma(a_i . x_n + b_i) for every row of X (device arrays).

    Runs the forward kernel with the squared loss and y = 0, whose residual is the
    prediction alpha h with alpha = 1.
    """
    check_device_arrays(W, X, out)
    N, d = X.shape
    zeros = cuda.to_device(np.zeros(N, dtype=W.dtype))
    losses = cuda.device_array(N, dtype=W.dtype)
    tile = tile_rows(d + 2, W.dtype.itemsize, max(1, min(int(tile_size), THREADS_PER_BLOCK)))
    forward_kernel(numba_type(W.dtype), d)[blocks(N), THREADS_PER_BLOCK, 0, tile * (d + 2) * W.dtype.itemsize](
        W, X, zeros, int(activation_code), 0, W.dtype.type(output_scale), W.dtype.type(1.0), tile, losses, out)


def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T``
    and input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, int64

    M, V = T[:, ::1], T[::1]
    return [
        ("finite_data_forward", forward_kernel(T, d).py_func, (M, M, V, int64, int64, T, T, int64, V, V)),
        ("finite_data_backward", backward_kernel(T, d).py_func, (M, M, V, int64, T, boolean, boolean, int64, M)),
    ]
