"""CUDA twin of ``finite_data``: empirical risk and particle velocity, tiled over samples.

Two kernels per evaluation, with no N x m array:

* forward, one thread per sample n and chunk of particles (a two-dimensional grid, so that
  a batch of a few hundred samples still fills the device): the partial sums of
  h(x_n) = s sum_i c_i sigma(a_i . x_n + b_i) over the chunk, the particles read in tiles
  held in shared memory; then one thread per sample adds its partial sums in chunk order
  (no atomics: the same sum on every run) and writes the loss l(alpha h, y_n) and the
  residual r_n = l'(alpha h, y_n);
* backward, one thread per particle (or tracer) i: sum_n r_n grad_w [c sigma(a . x_n + b)]
  at w_i, the samples (x_n, r_n) read in tiles held in shared memory, the d-vector
  accumulated in a local array; the thread writes its own velocity row.

The objective is the sum of the per-sample losses (``gpu_reductions.device_sum``).
"""
import functools

import numpy as np
from numba import cuda

from ._gpu_launch import TARGET_BLOCKS, THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type, tile_rows
from ._gpu_scalar import activation, activation_derivative, loss, loss_derivative
from .gpu_reductions import device_sum


@functools.lru_cache(maxsize=None)
def forward_kernel(T, d):
    """Partial network sums over one chunk of particles, for type ``T`` and dimension ``d``.

    Grid: x over samples, y over chunks of ``chunk`` particles, so that a small batch (online
    SGD) still fills the device; ``partial[y, n] = sum_{i in chunk y} c_i sigma(a_i . x_n + b_i)``.
    """
    row = d + 2  # a_i, b_i, c_i

    def kernel(W, X, activation_code, chunk, tile, partial):
        shared = cuda.shared.array(0, T)
        N = X.shape[0]
        n = cuda.grid(1)
        active = n < N
        zero = T(0.0)
        x = cuda.local.array(d, T)
        if active:
            for k in range(d):
                x[k] = X[n, k]
        begin = cuda.blockIdx.y * chunk
        end = min(W.shape[0], begin + chunk)
        h = zero
        for start in range(begin, end, tile):
            rows = min(tile, end - start)
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
            partial[cuda.blockIdx.y, n] = h

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def loss_kernel(T):
    """h_n = scale * (sum of the partial sums, in chunk order), the loss and the residual."""

    def kernel(partial, y, loss_code, scale, alpha, losses, residual):
        n = cuda.grid(1)
        if n < y.shape[0]:
            h = T(0.0)
            for j in range(partial.shape[0]):
                h += partial[j, n]
            f = alpha * scale * h
            yn = y[n]
            residual[n] = loss_derivative(f, yn, loss_code)
            losses[n] = loss(f, yn, loss_code)

    return cuda.jit(kernel)


def _ceil_div(a, b):
    return -(-a // b)


def _forward(W, X, y, activation_code, loss_code, scale, alpha, tile_size, losses, residual):
    """Losses and residuals of every sample (device arrays)."""
    m = W.shape[0]
    N, d = X.shape
    T = numba_type(W.dtype)
    itemsize = W.dtype.itemsize
    tile = tile_rows(d + 2, itemsize, max(1, min(int(tile_size), THREADS_PER_BLOCK)))
    sample_blocks = blocks(N)
    # Enough chunks of particles for about TARGET_BLOCKS blocks; each a whole number of tiles.
    chunks = max(1, min(_ceil_div(TARGET_BLOCKS, sample_blocks), _ceil_div(m, tile)))
    chunk = _ceil_div(_ceil_div(m, chunks), tile) * tile
    chunks = _ceil_div(m, chunk)
    partial = cuda.device_array((chunks, N), dtype=W.dtype)
    forward_kernel(T, d)[(sample_blocks, chunks), THREADS_PER_BLOCK, 0, tile * (d + 2) * itemsize](
        W, X, int(activation_code), chunk, tile, partial)
    scalar = W.dtype.type
    loss_kernel(T)[sample_blocks, THREADS_PER_BLOCK](
        partial, y, int(loss_code), scalar(scale), scalar(alpha), losses, residual)


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
                      bias, train_readout, tile_size, velocity, points_velocity, workspace=None):
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
    workspace : None
        Kept for the CPU signature; the device temporaries here are two vectors of N
        (losses, residuals), whose allocation is small beside the kernels.

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
    _forward(W, X, y, activation_code, loss_code, output_scale, alpha, tile_size, losses, residual)
    scalar = W.dtype.type
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
    _forward(W, X, zeros, activation_code, 0, output_scale, 1.0, tile_size, losses, out)

def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T``
    and input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, int64

    M, V = T[:, ::1], T[::1]
    return [
        ("finite_data_forward", forward_kernel(T, d).py_func, (M, M, int64, int64, int64, M)),
        ("finite_data_loss", loss_kernel(T).py_func, (M, V, int64, T, T, V, V)),
        ("finite_data_backward", backward_kernel(T, d).py_func, (M, M, V, int64, T, boolean, boolean, int64, M)),
    ]
