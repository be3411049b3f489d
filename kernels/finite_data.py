"""Empirical risk of a two-layer network on a finite sample, and its particle velocity.

The sample is processed in tiles of ``tile_size`` rows: each tile needs the pre-activations
of its rows only (the prediction h(x_n) depends on sample n alone), so forward pass, loss
derivative and backward pass all happen per tile and no N x m array is ever formed. The two
products per tile (X_t A^T and G^T X_t) go to BLAS; the elementwise work is parallel.

Particle layout (every kernel): ``W[:, :d]`` input weights a, ``W[:, d]`` bias b,
``W[:, d + 1]`` output weight c.
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._scalar import RELU, activation, activation_derivative, loss, loss_derivative

# Row chunks of a tile in the fused sweep (each with its own b and c gradient sums): a few
# per thread, so that a thread slowed by another process does not hold the others up.
_ROW_CHUNKS = 8


@njit(cache=True)
def split_columns(W, d):
    """Columns of particles W, shape (n, d + 2): a as a C-contiguous (n, d) copy (a BLAS
    operand), b and c as contiguous (n,) copies."""
    return np.ascontiguousarray(W[:, :d]), W[:, d].copy(), W[:, d + 1].copy()


@njit(cache=True, parallel=True)
def _activate(pre, bias, code, sigma, sigma_prime, rows):
    """sigma and sigma' of ``pre[:rows] + bias`` into ``sigma`` and ``sigma_prime``."""
    for n in prange(rows):
        for i in range(pre.shape[1]):
            z = pre[n, i] + bias[i]
            sigma[n, i] = activation(z, code)
            sigma_prime[n, i] = activation_derivative(z, code)


@njit(cache=True, parallel=True)
def _backward(residual, sigma, sigma_prime, readout, rows, X_tile, grad_a, grad_b, grad_c, work):
    """Accumulate sum_n r_n grad_w phi(w_i, x_n) over the rows of one tile.

    ``sigma_prime`` is overwritten by G[n, i] = r_n c_i sigma'(z_ni); ``work`` (m, d) holds
    G^T X_tile before it is added to ``grad_a``.
    """
    m = sigma.shape[1]
    for i in prange(m):
        gb = grad_b.dtype.type(0.0)
        gc = grad_c.dtype.type(0.0)
        ci = readout[i]
        for n in range(rows):
            g = residual[n] * ci * sigma_prime[n, i]
            sigma_prime[n, i] = g
            gb += g
            gc += residual[n] * sigma[n, i]
        grad_b[i] += gb
        grad_c[i] += gc
    np.dot(sigma_prime[:rows].T, X_tile, work)
    grad_a += work


@njit(cache=True, parallel=True)
def unfused_finite_data_field(W, X, y, points, activation_code, loss_code, output_scale, alpha,
                              bias, train_readout, tile_size, velocity, points_velocity):
    """Reference for :func:`finite_data_field`: the same tiles, one pass per operation.

    Activation, prediction, residual and backward pass each sweep the tile separately (the
    backward one column by column); kept to test the fused kernel against and as the
    benchmarks' "previous kernel". Same formula, parameters, outputs and return value as
    :func:`finite_data_field`.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float32 or float64
        Particles (sources of the field). Column layout: a, b, c.
    X : ndarray, shape (N, d), same dtype, C-contiguous
        Inputs.
    y : ndarray, shape (N,), same dtype
        Labels.
    points : ndarray, shape (n, d + 2), same dtype
        Extra points (tracers) that feel the field of ``W`` without acting on it; n may be 0.
    activation_code, loss_code : int
        Codes of ``meanfield.kernels.ACTIVATION_CODES`` and ``LOSS_CODES``.
    output_scale : float
        s: 1/m for the mean-field scaling, 1 for the unnormalised sum.
    alpha : float
        Scale of the output seen by the loss (1 mean-field, large lazy).
    bias, train_readout : bool
        Whether the b and c columns move; frozen columns get velocity 0.
    tile_size : int
        Rows of X per tile (at most N are used). Work arrays are allocated at every call (no
        workspace argument).
    velocity : ndarray, shape (m, d + 2), output
        v(w_i) for every particle (overwritten).
    points_velocity : ndarray, shape (n, d + 2), output
        v(x_j) for every extra point (overwritten).

    Returns
    -------
    float
        The objective F (same dtype as W).
    """
    m, p = W.shape
    N, d = X.shape
    n_points = points.shape[0]
    T = W.dtype.type
    s = T(output_scale)
    al = T(alpha)
    tile = min(tile_size, N)

    A, b, c = split_columns(W, d)
    A_pts, b_pts, c_pts = split_columns(points, d)

    pre = np.empty((tile, m), dtype=W.dtype)
    sig = np.empty((tile, m), dtype=W.dtype)
    pre_pts = np.empty((tile, n_points), dtype=W.dtype)
    sig_pts = np.empty((tile, n_points), dtype=W.dtype)
    residual = np.empty(tile, dtype=W.dtype)
    grad_a = np.zeros((m, d), dtype=W.dtype)
    grad_b = np.zeros(m, dtype=W.dtype)
    grad_c = np.zeros(m, dtype=W.dtype)
    work = np.empty((m, d), dtype=W.dtype)
    pgrad_a = np.zeros((n_points, d), dtype=W.dtype)
    pgrad_b = np.zeros(n_points, dtype=W.dtype)
    pgrad_c = np.zeros(n_points, dtype=W.dtype)
    pwork = np.empty((n_points, d), dtype=W.dtype)

    total = T(0.0)
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A.T, pre[:rows])
        _activate(pre, b, activation_code, sig, pre, rows)
        tile_total = T(0.0)
        for n in prange(rows):
            h = T(0.0)
            for i in range(m):
                h += c[i] * sig[n, i]
            f = al * s * h
            yn = y[start + n]
            residual[n] = loss_derivative(f, yn, loss_code)
            tile_total += loss(f, yn, loss_code)
        total += tile_total
        _backward(residual, sig, pre, c, rows, X_tile, grad_a, grad_b, grad_c, work)
        if n_points > 0:
            np.dot(X_tile, A_pts.T, pre_pts[:rows])
            _activate(pre_pts, b_pts, activation_code, sig_pts, pre_pts, rows)
            _backward(residual, sig_pts, pre_pts, c_pts, rows, X_tile,
                      pgrad_a, pgrad_b, pgrad_c, pwork)

    factor = -T(m) * s / (al * T(N))
    _assemble(grad_a, grad_b, grad_c, factor, bias, train_readout, velocity)
    _assemble(pgrad_a, pgrad_b, pgrad_c, factor, bias, train_readout, points_velocity)
    return total / (al * al * T(N))


@njit(cache=True, fastmath={"reassoc"}, error_model="numpy")
def _relu_forward_row(pre, sig, n, b, c):
    """``_forward_row`` for relu, vectorised: reassociation (the sum only; max and the
    comparison are exact in any order or width) and numpy's error model."""
    zero = pre.dtype.type(0.0)
    one = pre.dtype.type(1.0)
    h = zero
    for i in range(pre.shape[1]):
        z = pre[n, i] + b[i]
        s = max(z, zero)
        sig[n, i] = s
        pre[n, i] = one if z > zero else zero
        h += c[i] * s
    return h


@njit(cache=True)
def _forward_row(pre, sig, n, b, c, code):
    """z = pre[n] + b: sigma(z) into ``sig[n]``, sigma'(z) into ``pre[n]``; returns
    sum_i c_i sigma(z_i). Smooth activations stay in plain (not fast) math: a vectorised
    transcendental may round differently from the scalar one, and a tracer sitting on a
    particle must get bitwise the particle's velocity whatever the array lengths."""
    if code == RELU:
        return _relu_forward_row(pre, sig, n, b, c)
    h = pre.dtype.type(0.0)
    for i in range(pre.shape[1]):
        z = pre[n, i] + b[i]
        s = activation(z, code)
        sig[n, i] = s
        pre[n, i] = activation_derivative(z, code)
        h += c[i] * s
    return h


@njit(cache=True, error_model="numpy")
def _backward_row(pre, sig, n, c, r, chunk, grad_b_part, grad_c_part):
    """G[n, i] = r c_i sigma'(z_i) into ``pre[n]``; grad_b_part[chunk] += G[n],
    grad_c_part[chunk] += r sigma(z). No reassociation here: particles and tracers share
    this code, so a tracer on a particle gets bitwise its velocity."""
    for i in range(pre.shape[1]):
        g = r * c[i] * pre[n, i]
        pre[n, i] = g
        grad_b_part[chunk, i] += g
        grad_c_part[chunk, i] += r * sig[n, i]


@njit(cache=True)
def _forward_backward_rows(pre, sig, b, c, y, start, rows, chunk, n_chunks, code, loss_code,
                           scale, residual, grad_b_part, grad_c_part):
    """Forward and local backward pass over the rows of one chunk of a tile, row by row.

    For each row n: sigma(z), h = sum_i c_i sigma(z_i), r_n = l'(scale h, y_n) into
    ``residual[n]``; then, while the row is in cache, G[n] = r_n c sigma'(z) into ``pre[n]``
    (the left factor of grad_a = G^T X) and the chunk's sums of the b and c gradients.
    Returns the sum of the losses of the chunk's rows.
    """
    total = pre.dtype.type(0.0)
    for n in range(chunk * rows // n_chunks, (chunk + 1) * rows // n_chunks):
        f = scale * _forward_row(pre, sig, n, b, c, code)
        yn = y[start + n]
        r = loss_derivative(f, yn, loss_code)
        residual[n] = r
        total += loss(f, yn, loss_code)
        _backward_row(pre, sig, n, c, r, chunk, grad_b_part, grad_c_part)
    return total


@njit(cache=True)
def _tracer_rows(pre, sig, b, c, residual, rows, chunk, n_chunks, code, grad_b_part, grad_c_part):
    """``_forward_backward_rows`` for tracers: the residual is the particles'."""
    for n in range(chunk * rows // n_chunks, (chunk + 1) * rows // n_chunks):
        _forward_row(pre, sig, n, b, c, code)
        _backward_row(pre, sig, n, c, residual[n], chunk, grad_b_part, grad_c_part)


class FiniteDataWorkspace(NamedTuple):
    """Work arrays of :func:`finite_data_field` for m particles, n tracer points, inputs of
    dimension d and tiles of ``tile`` samples (``finite_data_workspace`` makes one).

    A caller that evaluates the same shapes again (an integrator's loop) keeps one and passes
    it to every call: fresh arrays of this size cost a page fault per 4 KiB page on first
    touch, which at m = 10^4 and a 256-sample batch took half of the step (38 ms against
    18.7 ms with the same arrays reused, ``benchmarks/CPU_RESULTS.md``).
    """

    A: np.ndarray  # (m, d) copy of the input weights (a BLAS operand)
    pre: np.ndarray  # (tile, m) pre-activations, then sigma', then G
    sig: np.ndarray  # (tile, m) sigma
    grad_a: np.ndarray  # (m, d)
    work: np.ndarray  # (m, d) one tile's G^T X
    grad_b_part: np.ndarray  # (chunks, m) per-chunk sums
    grad_c_part: np.ndarray  # (chunks, m)
    A_pts: np.ndarray  # the same for the tracer points, with n for m
    pre_pts: np.ndarray
    sig_pts: np.ndarray
    pgrad_a: np.ndarray
    pwork: np.ndarray
    pgrad_b_part: np.ndarray
    pgrad_c_part: np.ndarray


def finite_data_workspace(m: int, n_points: int, d: int, tile: int, dtype, reuse=None) -> FiniteDataWorkspace:
    """Work arrays of :func:`finite_data_field` (uninitialised; the kernel sets them).

    Parameters
    ----------
    m, n_points, d : int
        Particles, tracer points and input dimension.
    tile : int
        Samples per tile: ``min(tile_size, N)`` of the call.
    dtype : numpy dtype
        float32 or float64, that of the particles.
    reuse : FiniteDataWorkspace, optional
        Returned as it is when it has these shapes and dtype.

    Returns
    -------
    FiniteDataWorkspace
        About (3 m d + 2 tile m + 2 chunks m) elements, and the same for the tracers.
    """
    if reuse is not None and _fits(reuse, m, n_points, d, tile, np.dtype(dtype)):
        return reuse
    chunks = min(_ROW_CHUNKS, max(int(tile), 1))
    arrays = []
    for n in (m, n_points):
        arrays += [np.empty((n, d), dtype), np.empty((tile, n), dtype), np.empty((tile, n), dtype),
                   np.empty((n, d), dtype), np.empty((n, d), dtype), np.empty((chunks, n), dtype),
                   np.empty((chunks, n), dtype)]
    return FiniteDataWorkspace(*arrays)


def _fits(workspace, m, n_points, d, tile, dtype) -> bool:
    return (workspace.A.shape == (m, d) and workspace.pre.shape == (tile, m) and workspace.A.dtype == dtype
            and workspace.A_pts.shape == (n_points, d) and workspace.grad_b_part.shape[0] == min(_ROW_CHUNKS, tile))


def finite_data_field(W, X, y, points, activation_code, loss_code, output_scale, alpha,
                      bias, train_readout, tile_size, velocity, points_velocity, workspace=None):
    """Empirical risk of the width-m network ``W`` and the velocity field it generates.

    The network is h(x) = s * sum_i c_i sigma(a_i . x + b_i) with s = ``output_scale``; the
    objective is F = (1 / (alpha^2 N)) sum_n l(alpha h(x_n), y_n) and the velocity of a
    point w in the field of the measure is
    v(w) = -(m s / (alpha N)) sum_n l'(alpha h(x_n), y_n) grad_w [c sigma(a . x_n + b)],
    so that for a particle of ``W`` itself v(w_i) = -m grad_{w_i} F.

    Per tile of ``tile_size`` samples: Z = X_t A^T by BLAS; one parallel sweep over the rows
    does the activation, the prediction, the residual r and G = r c sigma'(Z) while each row
    is in cache (``_forward_backward_rows``), with per-chunk sums for the b and c gradients;
    then grad_a += G^T X_t by BLAS. No N x m array; work memory two tiles of
    ``tile_size`` x m. Tested against :func:`unfused_finite_data_field` and numpy.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float32 or float64
        Particles (sources of the field). Column layout: a, b, c.
    X : ndarray, shape (N, d), same dtype, C-contiguous
        Inputs.
    y : ndarray, shape (N,), same dtype
        Labels.
    points : ndarray, shape (n, d + 2), same dtype
        Extra points (tracers) that feel the field of ``W`` without acting on it; n may be 0.
    activation_code, loss_code : int
        Codes of ``meanfield.kernels.ACTIVATION_CODES`` and ``LOSS_CODES``.
    output_scale : float
        s: 1/m for the mean-field scaling, 1 for the unnormalised sum.
    alpha : float
        Scale of the output seen by the loss (1 mean-field, large lazy).
    bias, train_readout : bool
        Whether the b and c columns move; frozen columns get velocity 0.
    tile_size : int
        Rows of X per tile.
    velocity : ndarray, shape (m, d + 2), output
        v(w_i) for every particle.
    points_velocity : ndarray, shape (n, d + 2), output
        v(x_j) for every extra point.
    workspace : FiniteDataWorkspace, optional
        Work arrays from ``finite_data_workspace(m, n, d, min(tile_size, N), W.dtype)``,
        reused across calls; made afresh when absent or of other shapes. The result does not
        depend on it.

    Returns
    -------
    float
        The objective F (same dtype as W).
    """
    m, n_points, (N, d) = W.shape[0], points.shape[0], X.shape
    tile = min(int(tile_size), N)
    workspace = finite_data_workspace(m, n_points, d, tile, W.dtype, reuse=workspace)
    # The arrays one by one: numba types a tuple argument in Python at every call (~0.2 ms
    # for these 14), an array in C.
    return _finite_data_field(W, X, y, points, activation_code, loss_code, output_scale, alpha, bias,
                              train_readout, tile, velocity, points_velocity, *workspace)


@njit(cache=True, parallel=True)
def _finite_data_field(W, X, y, points, activation_code, loss_code, output_scale, alpha,
                       bias, train_readout, tile, velocity, points_velocity,
                       A, pre, sig, grad_a, work, grad_b_part, grad_c_part,
                       A_pts, pre_pts, sig_pts, pgrad_a, pwork, pgrad_b_part, pgrad_c_part):
    """:func:`finite_data_field` with its work arrays given (those of ``FiniteDataWorkspace``,
    in its order; ``tile`` <= N)."""
    m, p = W.shape
    N, d = X.shape
    n_points = points.shape[0]
    T = W.dtype.type
    s = T(output_scale)
    al = T(alpha)
    _copy_columns(W, d, A)
    b, c = _column(W, d), _column(W, d + 1)
    _copy_columns(points, d, A_pts)
    b_pts, c_pts = _column(points, d), _column(points, d + 1)
    residual = np.empty(tile, dtype=W.dtype)
    grad_b = _zeros(W, m)
    grad_c = _zeros(W, m)
    n_chunks = min(_ROW_CHUNKS, tile)
    chunk_loss = _zeros(W, n_chunks)
    pgrad_b = _zeros(W, n_points)
    pgrad_c = _zeros(W, n_points)
    # Zeroed by a plain loop: an array expression here would be a parallel region of its own
    # (a thread launch each, ~20 us on a small problem).
    for array in (grad_a, grad_b_part, grad_c_part, pgrad_a, pgrad_b_part, pgrad_c_part):
        _clear(array)

    scale = al * s
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A.T, pre[:rows])
        for chunk in prange(n_chunks):
            chunk_loss[chunk] += _forward_backward_rows(
                pre, sig, b, c, y, start, rows, chunk, n_chunks, activation_code, loss_code, scale,
                residual, grad_b_part, grad_c_part)
        np.dot(pre[:rows].T, X_tile, work)
        grad_a += work
        if n_points > 0:
            np.dot(X_tile, A_pts.T, pre_pts[:rows])
            for chunk in prange(n_chunks):
                _tracer_rows(pre_pts, sig_pts, b_pts, c_pts, residual, rows, chunk, n_chunks,
                             activation_code, pgrad_b_part, pgrad_c_part)
            np.dot(pre_pts[:rows].T, X_tile, pwork)
            pgrad_a += pwork
    total = T(0.0)
    for chunk in range(n_chunks):
        total += chunk_loss[chunk]
        for i in range(m):
            grad_b[i] += grad_b_part[chunk, i]
            grad_c[i] += grad_c_part[chunk, i]
        for i in range(n_points):
            pgrad_b[i] += pgrad_b_part[chunk, i]
            pgrad_c[i] += pgrad_c_part[chunk, i]

    factor = -T(m) * s / (al * T(N))
    _assemble(grad_a, grad_b, grad_c, factor, bias, train_readout, velocity)
    _assemble(pgrad_a, pgrad_b, pgrad_c, factor, bias, train_readout, points_velocity)
    return total / (al * al * T(N))


@njit(cache=True)
def _column(W, k):
    """W[:, k] as a contiguous copy, serially (in a parallel function the slice copy would be
    a parallel region of its own)."""
    out = np.empty(W.shape[0], dtype=W.dtype)
    for i in range(W.shape[0]):
        out[i] = W[i, k]
    return out


@njit(cache=True)
def _zeros(W, n):
    """np.zeros(n) of W's dtype, serially (see ``_column``)."""
    return np.zeros(n, dtype=W.dtype)


@njit(cache=True)
def _clear(array):
    """array[...] = 0 for a 2-D array, serially."""
    zero = array.dtype.type(0.0)
    for i in range(array.shape[0]):
        for k in range(array.shape[1]):
            array[i, k] = zero


@njit(cache=True)
def _copy_columns(W, d, A):
    """A[:, :] = W[:, :d] (the input weights as a C-contiguous BLAS operand)."""
    for i in range(W.shape[0]):
        for k in range(d):
            A[i, k] = W[i, k]


@njit(cache=True)
def _assemble(grad_a, grad_b, grad_c, factor, bias, train_readout, out):
    n, d = grad_a.shape
    zero = out.dtype.type(0.0)
    for i in range(n):
        for k in range(d):
            out[i, k] = factor * grad_a[i, k]
        out[i, d] = factor * grad_b[i] if bias else zero
        out[i, d + 1] = factor * grad_c[i] if train_readout else zero


@njit(cache=True, parallel=True)
def network_output(W, X, activation_code, output_scale, tile_size, out):
    """h(x_n) = s * sum_i c_i sigma(a_i . x_n + b_i) for every row of X, tiled over rows.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2)
    X : ndarray, shape (N, d), same dtype, C-contiguous
    activation_code : int
    output_scale : float
        s.
    tile_size : int
    out : ndarray, shape (N,), output
    """
    m = W.shape[0]
    N, d = X.shape
    T = W.dtype.type
    s = T(output_scale)
    tile = min(tile_size, N)
    A, b, c = split_columns(W, d)
    pre = np.empty((tile, m), dtype=W.dtype)
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        np.dot(X[start:start + rows], A.T, pre[:rows])
        for n in prange(rows):
            h = T(0.0)
            for i in range(m):
                h += c[i] * activation(pre[n, i] + b[i], activation_code)
            out[start + n] = s * h
