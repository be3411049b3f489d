"""The tangent (linearised) model of a two-layer network on a finite sample, and its velocity.

The tangent model at the initial particles W0 (Chizat & Bach, "A note on lazy training") is

    T(W, x) = h(W0, x) + (W - W0) . grad_W h(W0, x)
            = s * sum_i [ c_i sigma(z0_i) + c0_i sigma'(z0_i) ((a_i - a0_i) . x + (b_i - b0_i)) ],

with z0_i = a0_i . x + b0_i: linear in W, with the features sigma(z0), sigma'(z0) frozen at W0.
Like the network kernels (``finite_data.py``) the sample is processed in tiles of rows, so no
N x m array is formed; each tile costs three BLAS products (X_t A0^T, X_t (A - A0)^T, G^T X_t).

Particle layout (every kernel): ``W[:, :d]`` input weights a, ``W[:, d]`` bias b,
``W[:, d + 1]`` output weight c.
"""
import numpy as np
from numba import njit, prange

from ._scalar import loss, loss_derivative
from .finite_data import _activate, _assemble, _backward, split_columns


@njit(cache=True, parallel=True)
def _tangent_rows(sig0, dsig0, shift, db, c, c0, s, rows, out):
    """T(x_n) / alpha for the rows of one tile: s sum_i [c_i sig0 + c0_i dsig0 (shift + db_i)]."""
    m = sig0.shape[1]
    T = out.dtype.type
    for n in prange(rows):
        h = T(0.0)
        for i in range(m):
            h += c[i] * sig0[n, i] + c0[i] * dsig0[n, i] * (shift[n, i] + db[i])
        out[n] = s * h


@njit(cache=True, parallel=True)
def tangent_field(W, W0, X, y, activation_code, loss_code, output_scale, alpha, bias, train_readout,
                  tile_size, velocity):
    """Empirical objective of the tangent model at ``W0`` and its particle velocity.

    The objective is F_T(W) = (1 / (alpha^2 N)) sum_n l(alpha T(W, x_n), y_n) and the velocity
    v(w_i) = -m grad_{w_i} F_T = -(m s / (alpha N)) sum_n l'(alpha T_n, y_n) g_i(x_n) with the
    frozen features g_i(x) = (c0_i sigma'(z0_i) x, c0_i sigma'(z0_i), sigma(z0_i)).

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float32 or float64
        Parameters of the tangent model. Column layout: a, b, c.
    W0 : ndarray, shape (m, d + 2), same dtype
        The point of linearisation (the initial particles).
    X : ndarray, shape (N, d), same dtype, C-contiguous
    y : ndarray, shape (N,), same dtype
    activation_code, loss_code : int
        Codes of ``meanfield.kernels.ACTIVATION_CODES`` and ``LOSS_CODES``.
    output_scale : float
        s: 1/m (mean field) or 1 (unnormalised sum).
    alpha : float
        Output scale seen by the loss.
    bias, train_readout : bool
        Whether the b and c columns move; frozen columns get velocity 0.
    tile_size : int
        Rows of X per tile.
    velocity : ndarray, shape (m, d + 2), output

    Returns
    -------
    float
        F_T (same dtype as W).
    """
    m, p = W.shape
    N, d = X.shape
    T = W.dtype.type
    s = T(output_scale)
    al = T(alpha)
    tile = min(tile_size, N)

    A0, b0, c0 = split_columns(W0, d)
    dA = np.ascontiguousarray(W[:, :d] - W0[:, :d])
    db = W[:, d] - W0[:, d]
    c = W[:, d + 1].copy()

    sig0 = np.empty((tile, m), dtype=W.dtype)
    dsig0 = np.empty((tile, m), dtype=W.dtype)
    shift = np.empty((tile, m), dtype=W.dtype)
    prediction = np.empty(tile, dtype=W.dtype)
    residual = np.empty(tile, dtype=W.dtype)
    grad_a = np.zeros((m, d), dtype=W.dtype)
    grad_b = np.zeros(m, dtype=W.dtype)
    grad_c = np.zeros(m, dtype=W.dtype)
    work = np.empty((m, d), dtype=W.dtype)

    total = T(0.0)
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A0.T, dsig0[:rows])
        _activate(dsig0, b0, activation_code, sig0, dsig0, rows)
        np.dot(X_tile, dA.T, shift[:rows])
        _tangent_rows(sig0, dsig0, shift, db, c, c0, s, rows, prediction)
        tile_total = T(0.0)
        for n in prange(rows):
            f = al * prediction[n]
            yn = y[start + n]
            residual[n] = loss_derivative(f, yn, loss_code)
            tile_total += loss(f, yn, loss_code)
        total += tile_total
        # The gradient of T in w_i is the network's gradient at W0 with readout c0.
        _backward(residual, sig0, dsig0, c0, rows, X_tile, grad_a, grad_b, grad_c, work)

    factor = -T(m) * s / (al * T(N))
    _assemble(grad_a, grad_b, grad_c, factor, bias, train_readout, velocity)
    return total / (al * al * T(N))


@njit(cache=True, parallel=True)
def tangent_output(W, W0, X, activation_code, output_scale, tile_size, out):
    """T(W, x_n) = s sum_i [c_i sigma(z0_i) + c0_i sigma'(z0_i) ((a_i - a0_i) . x_n + b_i - b0_i)]
    for every row of X (without the factor alpha), tiled over rows.

    Parameters
    ----------
    W, W0 : ndarray, shape (m, d + 2)
    X : ndarray, shape (N, d), same dtype, C-contiguous
    activation_code : int
    output_scale : float
    tile_size : int
    out : ndarray, shape (N,), output
    """
    m = W.shape[0]
    N, d = X.shape
    T = W.dtype.type
    s = T(output_scale)
    tile = min(tile_size, N)
    A0, b0, c0 = split_columns(W0, d)
    dA = np.ascontiguousarray(W[:, :d] - W0[:, :d])
    db = W[:, d] - W0[:, d]
    c = W[:, d + 1].copy()
    sig0 = np.empty((tile, m), dtype=W.dtype)
    dsig0 = np.empty((tile, m), dtype=W.dtype)
    shift = np.empty((tile, m), dtype=W.dtype)
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A0.T, dsig0[:rows])
        _activate(dsig0, b0, activation_code, sig0, dsig0, rows)
        np.dot(X_tile, dA.T, shift[:rows])
        _tangent_rows(sig0, dsig0, shift, db, c, c0, s, rows, out[start:start + rows])
