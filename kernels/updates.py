"""In-place particle updates of the integrators (one pass over the state, no temporaries)."""
import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def euler_update(W, velocity, step):
    """W <- W + step * velocity (explicit Euler in time units).

    Parameters
    ----------
    W : ndarray, shape (m, p), updated in place
    velocity : ndarray, shape (m, p), same dtype
    step : float
        Time step eta.
    """
    eta = W.dtype.type(step)
    for i in prange(W.shape[0]):
        for k in range(W.shape[1]):
            W[i, k] += eta * velocity[i, k]


@njit(cache=True, parallel=True)
def heavy_ball_update(W, velocity, buffer, step, momentum):
    """Heavy ball: buffer <- momentum * buffer - step * velocity; W <- W - buffer.

    ``velocity`` is minus the (m-scaled) gradient, so ``-step * velocity`` is eta * m grad F.

    Parameters
    ----------
    W : ndarray, shape (m, p), updated in place
    velocity : ndarray, shape (m, p), same dtype
    buffer : ndarray, shape (m, p), same dtype, updated in place
        The momentum buffer V (zero at the first step).
    step : float
        Step size eta.
    momentum : float
        beta in [0, 1).
    """
    eta = W.dtype.type(step)
    beta = W.dtype.type(momentum)
    for i in prange(W.shape[0]):
        for k in range(W.shape[1]):
            buffer[i, k] = beta * buffer[i, k] - eta * velocity[i, k]
            W[i, k] -= buffer[i, k]


@njit(cache=True, parallel=True)
def langevin_update(W, velocity, noise, step, weight_decay, noise_scale, trainable):
    """Noisy step on the trainable columns:
    w <- w + eta v(w) - eta lambda w + noise_scale * xi, with noise_scale = sqrt(2 eta / beta).

    Parameters
    ----------
    W : ndarray, shape (m, p), updated in place
    velocity : ndarray, shape (m, p)
    noise : ndarray, shape (m, p)
        Standard normal draws xi.
    step, weight_decay, noise_scale : float
        eta, lambda and sqrt(2 eta / beta).
    trainable : ndarray of bool, shape (p,)
        Columns that move; frozen columns keep their value exactly.
    """
    T = W.dtype.type
    eta = T(step)
    shrink = T(1.0) - T(step) * T(weight_decay)
    sigma = T(noise_scale)
    for i in prange(W.shape[0]):
        for k in range(W.shape[1]):
            if trainable[k]:
                W[i, k] = shrink * W[i, k] + eta * velocity[i, k] + sigma * noise[i, k]


@njit(cache=True)
def all_finite(W):
    """True when no entry of W is NaN or infinite (stops at the first one that is).

    Parameters
    ----------
    W : ndarray, any shape, float32 or float64

    Returns
    -------
    bool
    """
    flat = W.ravel()
    for k in range(flat.shape[0]):
        if not math.isfinite(flat[k]):
            return False
    return True


@njit(cache=True, parallel=True)
def sum_of_squares(W):
    """sum_ik W[i, k]^2, accumulated in float64 (for |grad F| at every record).

    Parameters
    ----------
    W : ndarray, shape (m, p), float32 or float64

    Returns
    -------
    float
        The squared Frobenius norm, float64.
    """
    # Row sums in parallel, then their sum in order: the same bits whatever the thread count
    # (a prange reduction would sum per thread).
    m = W.shape[0]
    rows = np.empty(m, dtype=np.float64)
    for i in prange(m):
        row = 0.0
        for k in range(W.shape[1]):
            x = np.float64(W[i, k])
            row += x * x
        rows[i] = row
    total = 0.0
    for i in range(m):
        total += rows[i]
    return total
