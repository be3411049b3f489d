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


@njit(cache=True, parallel=True)
def heavy_ball_decay_update(W, velocity, buffer, step, momentum, weight_decay, trainable):
    """Heavy ball with weight decay: buffer <- momentum * buffer - step * (velocity - lambda W)
    on the trainable columns (velocity alone on the others); W <- W - buffer.

    Parameters
    ----------
    W : ndarray, shape (m, p), updated in place
    velocity : ndarray, shape (m, p), same dtype
        v = -m grad F.
    buffer : ndarray, shape (m, p), same dtype, updated in place
        The momentum buffer V.
    step, momentum, weight_decay : float
        eta, beta in [0, 1) and lambda >= 0 (1 / time units).
    trainable : ndarray of bool, shape (p,)
        Columns that decay.
    """
    T = W.dtype.type
    eta = T(step)
    beta = T(momentum)
    lam = T(weight_decay)
    zero = T(0.0)
    for i in prange(W.shape[0]):
        for k in range(W.shape[1]):
            decay = lam * W[i, k] if trainable[k] else zero
            buffer[i, k] = beta * buffer[i, k] - eta * (velocity[i, k] - decay)
            W[i, k] -= buffer[i, k]


@njit(cache=True, parallel=True)
def weight_normalized_update(W, velocity, step, weight_decay, trainable, d):
    """One explicit Euler step of the weight-normalised gradient flow, in place.

    Each first-layer vector is a_i = rho_i u_i with rho_i = |a_i| and |u_i| = 1. With
    g_i = v_i[:d] - lambda a_i (v = -m grad F, the velocity of a_i in the plain flow) and
    r_i = u_i . g_i::

        rho_i <- rho_i + eta r_i,
        u_i   <- normalise(u_i + eta rho_i (g_i - r_i u_i)),
        a_i   <- rho_i u_i,

    and the other trainable columns (bias, readout) take the plain step
    w <- (1 - eta lambda) w + eta v. (The decay -lambda a_i is radial: it enters r_i only.)

    Parameters
    ----------
    W : ndarray, shape (m, p), updated in place
        Rows (a_i, b_i, c_i); a_i != 0.
    velocity : ndarray, shape (m, p)
    step, weight_decay : float
        eta and lambda >= 0.
    trainable : ndarray of bool, shape (p,)
    d : int
        The first d columns are a_i.
    """
    T = W.dtype.type
    eta = T(step)
    lam = T(weight_decay)
    shrink = T(1.0) - eta * lam
    zero = T(0.0)
    for i in prange(W.shape[0]):
        rho2 = zero
        for k in range(d):
            rho2 += W[i, k] * W[i, k]
        rho = math.sqrt(rho2)
        radial = zero
        for k in range(d):
            radial += W[i, k] / rho * (velocity[i, k] - lam * W[i, k])
        new_rho = rho + eta * radial
        norm2 = zero
        for k in range(d):
            u = W[i, k] / rho
            g = velocity[i, k] - lam * W[i, k]
            W[i, k] = u + eta * rho * (g - radial * u)  # the unnormalised new direction
            norm2 += W[i, k] * W[i, k]
        scale = new_rho / math.sqrt(norm2)
        for k in range(d):
            W[i, k] *= scale
        for k in range(d, W.shape[1]):
            if trainable[k]:
                W[i, k] = shrink * W[i, k] + eta * velocity[i, k]


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
