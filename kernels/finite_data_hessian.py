"""Second derivatives of the empirical risk on a finite sample: the dense Hessian and
Hessian-vector products, tiled over samples like ``finite_data.py`` (float64).

With f_n = alpha h(x_n), h = s sum_i c_i sigma(a_i . x_n + b_i) and
F = (1 / (alpha^2 N)) sum_n l(f_n, y_n),

    d2F / dtheta dtheta' = (1/N) sum_n l''(f_n) dh_n/dtheta dh_n/dtheta'
                           + (1 / (alpha N)) sum_n l'(f_n) d2h_n / dtheta dtheta'.

The first term (Gauss-Newton) couples all particles: with the Jacobian J (N x n_var),
J[n, (i, a)] = s c_i sigma'(z_ni) x_n, J[n, (i, b)] = s c_i sigma'(z_ni),
J[n, (i, c)] = s sigma(z_ni), it is J^T diag(l''/N) J, one BLAS product per tile. The second
is block diagonal (d2h couples the coordinates of one particle only):
d2h/da da^T = s c sigma'' x x^T, d2h/da db = s c sigma'' x, d2h/db^2 = s c sigma'',
d2h/da dc = s sigma' x, d2h/db dc = s sigma', d2h/dc^2 = 0.

Variables are the trainable coordinates, particle-major: a_i (d), then b_i when ``bias``, then
c_i when ``train_readout``; n_loc = d + bias + train_readout. relu's sigma'' = 0: its Hessian is
the one away from the kinks (the kinks have measure zero on a sample in general position).
"""
import math

import numpy as np
from numba import njit, prange

from ._scalar import (
    activation,
    activation_derivative,
    activation_second_derivative,
    loss_derivative,
    loss_second_derivative,
)
from .finite_data import split_columns


@njit(cache=True, parallel=True)
def _tile_activations(pre, bias, code, sig, d1, d2, rows):
    for n in prange(rows):
        for i in range(pre.shape[1]):
            z = pre[n, i] + bias[i]
            sig[n, i] = activation(z, code)
            d1[n, i] = activation_derivative(z, code)
            d2[n, i] = activation_second_derivative(z, code)


@njit(cache=True)
def _tile_residuals(sig, c, y, start, rows, s, alpha, loss_code, r1, r2):
    m = sig.shape[1]
    for n in range(rows):
        h = 0.0
        for i in range(m):
            h += c[i] * sig[n, i]
        f = alpha * s * h
        r1[n] = loss_derivative(f, y[start + n], loss_code)
        r2[n] = loss_second_derivative(f, y[start + n], loss_code)


@njit(cache=True, parallel=True)
def _fill_jacobian(X_tile, sig, d1, c, s, scale, bias, train_readout, rows, J):
    """J[n, :] = scale_n * (dh_n / dtheta) over the trainable coordinates."""
    m = sig.shape[1]
    d = X_tile.shape[1]
    n_loc = d + (1 if bias else 0) + (1 if train_readout else 0)
    for n in prange(rows):
        for i in range(m):
            base = i * n_loc
            g = scale[n] * s * c[i] * d1[n, i]
            for k in range(d):
                J[n, base + k] = g * X_tile[n, k]
            col = base + d
            if bias:
                J[n, col] = g
                col += 1
            if train_readout:
                J[n, col] = scale[n] * s * sig[n, i]


@njit(cache=True, parallel=True)
def _add_block_diagonal(X_tile, d1, d2, c, weight, bias, train_readout, rows, H):
    """H[block i] += sum_n weight_n d2h_n / dtheta_i dtheta_i^T / s (weight includes s)."""
    m = d1.shape[1]
    d = X_tile.shape[1]
    n_loc = d + (1 if bias else 0) + (1 if train_readout else 0)
    for i in prange(m):
        base = i * n_loc
        col_b = base + d
        col_c = base + d + (1 if bias else 0)
        for n in range(rows):
            e2 = weight[n] * c[i] * d2[n, i]  # coefficient of (x, 1)(x, 1)^T
            e1 = weight[n] * d1[n, i]  # coefficient of (x, 1) e_c^T + e_c (x, 1)^T
            for k in range(d):
                xk = X_tile[n, k]
                for l in range(d):
                    H[base + k, base + l] += e2 * xk * X_tile[n, l]
                if bias:
                    H[base + k, col_b] += e2 * xk
                    H[col_b, base + k] += e2 * xk
                if train_readout:
                    H[base + k, col_c] += e1 * xk
                    H[col_c, base + k] += e1 * xk
            if bias:
                H[col_b, col_b] += e2
                if train_readout:
                    H[col_b, col_c] += e1
                    H[col_c, col_b] += e1


@njit(cache=True)
def finite_data_hessian(W, X, y, activation_code, loss_code, output_scale, alpha, bias, train_readout,
                        tile_size, H):
    """Dense Hessian of the empirical risk over the trainable coordinates.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
    X : ndarray, shape (N, d), float64, C-contiguous
    y : ndarray, shape (N,), float64
    activation_code, loss_code : int
    output_scale, alpha : float
        s and alpha (see ``finite_data_field``).
    bias, train_readout : bool
        Whether b and c are variables.
    tile_size : int
        Rows of X per tile.
    H : ndarray, shape (m n_loc, m n_loc), float64, output
        Particle-major: a_i, then b_i (bias), then c_i (train_readout).
    """
    m, p = W.shape
    N, d = X.shape
    n_loc = d + (1 if bias else 0) + (1 if train_readout else 0)
    n_var = m * n_loc
    s = output_scale
    tile = min(tile_size, N)
    A, b, c = split_columns(W, d)
    pre = np.empty((tile, m))
    sig = np.empty((tile, m))
    d1 = np.empty((tile, m))
    d2 = np.empty((tile, m))
    r1 = np.empty(tile)
    r2 = np.empty(tile)
    scale = np.empty(tile)
    weight = np.empty(tile)
    J = np.zeros((tile, n_var))
    work = np.empty((n_var, n_var))
    H[:, :] = 0.0
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A.T, pre[:rows])
        _tile_activations(pre, b, activation_code, sig, d1, d2, rows)
        _tile_residuals(sig, c, y, start, rows, s, alpha, loss_code, r1, r2)
        for n in range(rows):
            # l'' >= 0 for the squared, logistic and exponential losses
            scale[n] = math.sqrt(max(r2[n], 0.0) / N)
            weight[n] = r1[n] * s / (alpha * N)
        _fill_jacobian(X_tile, sig, d1, c, s, scale, bias, train_readout, rows, J)
        np.dot(J[:rows].T, J[:rows], work)
        H += work
        _add_block_diagonal(X_tile, d1, d2, c, weight, bias, train_readout, rows, H)


@njit(cache=True, parallel=True)
def _hvp_weights(pre_v, sig, d1, d2, c, Vb, Vc, s, r1, r2, N, alpha, bias, train_readout, rows,
                 u, weight_ab, weight_c):
    """Per (sample, particle) weights of (H V): see ``finite_data_hessian_vector_product``."""
    m = sig.shape[1]
    for n in prange(rows):
        acc = 0.0
        for i in range(m):
            q = pre_v[n, i] + (Vb[i] if bias else 0.0)
            acc += s * (c[i] * d1[n, i] * q + (sig[n, i] * Vc[i] if train_readout else 0.0))
        u[n] = acc
    for n in prange(rows):
        gn = r2[n] * u[n] / N
        e = r1[n] * s / (alpha * N)
        for i in range(m):
            q = pre_v[n, i] + (Vb[i] if bias else 0.0)
            vc = Vc[i] if train_readout else 0.0
            weight_ab[n, i] = gn * s * c[i] * d1[n, i] + e * (c[i] * d2[n, i] * q + d1[n, i] * vc)
            weight_c[n, i] = gn * s * sig[n, i] + e * d1[n, i] * q


@njit(cache=True)
def finite_data_hessian_vector_product(W, X, y, activation_code, loss_code, output_scale, alpha, bias,
                                       train_readout, tile_size, V, out):
    """(H V) of the empirical risk without forming H; cost O(N m d), like one gradient.

    With u_n = J_n . V (the directional derivative of h_n) and q_ni = x_n . V_ai + V_bi,
    (H V)_{a_i} = sum_n w_ni x_n, (H V)_{b_i} = sum_n w_ni, (H V)_{c_i} = sum_n w'_ni with
    w_ni = (l''_n u_n / N) s c_i sigma'_ni + e_n (c_i sigma''_ni q_ni + sigma'_ni V_ci),
    w'_ni = (l''_n u_n / N) s sigma_ni + e_n sigma'_ni q_ni and e_n = l'_n s / (alpha N).

    Parameters
    ----------
    W, X, y, activation_code, loss_code, output_scale, alpha, bias, train_readout, tile_size
        As in :func:`finite_data_hessian`.
    V : ndarray, shape (m, d + 2), float64
        The direction in the particle layout (frozen columns ignored).
    out : ndarray, shape (m, d + 2), float64, output
        (H V) in the particle layout; frozen columns 0.
    """
    m, p = W.shape
    N, d = X.shape
    s = output_scale
    tile = min(tile_size, N)
    A, b, c = split_columns(W, d)
    Va, Vb, Vc = split_columns(V, d)
    pre = np.empty((tile, m))
    pre_v = np.empty((tile, m))
    sig = np.empty((tile, m))
    d1 = np.empty((tile, m))
    d2 = np.empty((tile, m))
    r1 = np.empty(tile)
    r2 = np.empty(tile)
    u = np.empty(tile)
    weight_ab = np.empty((tile, m))
    weight_c = np.empty((tile, m))
    grad_a = np.zeros((m, d))
    work = np.empty((m, d))
    out[:, :] = 0.0
    for start in range(0, N, tile):
        rows = min(tile, N - start)
        X_tile = X[start:start + rows]
        np.dot(X_tile, A.T, pre[:rows])
        np.dot(X_tile, Va.T, pre_v[:rows])
        _tile_activations(pre, b, activation_code, sig, d1, d2, rows)
        _tile_residuals(sig, c, y, start, rows, s, alpha, loss_code, r1, r2)
        _hvp_weights(pre_v, sig, d1, d2, c, Vb, Vc, s, r1, r2, N, alpha, bias, train_readout, rows,
                     u, weight_ab, weight_c)
        np.dot(weight_ab[:rows].T, X_tile, work)
        grad_a += work
        for i in range(m):
            wb = 0.0
            wc = 0.0
            for n in range(rows):
                wb += weight_ab[n, i]
                wc += weight_c[n, i]
            if bias:
                out[i, d] += wb
            if train_readout:
                out[i, d + 1] += wc
    out[:, :d] = grad_a
