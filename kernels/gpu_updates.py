"""CUDA twins of ``updates``: in-place particle updates on device arrays.

One thread per particle row. The Langevin noise comes from ``numba.cuda.random``
xoroshiro128+ generators, one per row (``create_noise_states``), so the noise of a run is
fixed by its seed; a row draws one standard normal per trainable column and step, which
lets ``advance_noise_states`` skip a generator forward by whole steps (resume).
"""
import functools

from numba import cuda
from numba.cuda.random import (
    create_xoroshiro128p_states,
    xoroshiro128p_next,
    xoroshiro128p_normal_float32,
    xoroshiro128p_normal_float64,
)

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type


@functools.lru_cache(maxsize=None)
def _euler_kernel(T):
    def kernel(W, velocity, step):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = T(step)
            for k in range(W.shape[1]):
                W[i, k] += eta * velocity[i, k]

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _heavy_ball_kernel(T):
    def kernel(W, velocity, buffer, step, momentum):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = T(step)
            beta = T(momentum)
            for k in range(W.shape[1]):
                buffer[i, k] = beta * buffer[i, k] - eta * velocity[i, k]
                W[i, k] -= buffer[i, k]

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _langevin_kernel(T):
    normal = xoroshiro128p_normal_float32 if T.bitwidth == 32 else xoroshiro128p_normal_float64

    def kernel(W, velocity, states, step, weight_decay, noise_scale, trainable, noisy):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = T(step)
            shrink = T(1.0) - T(step) * T(weight_decay)
            sigma = T(noise_scale)
            for k in range(W.shape[1]):
                if trainable[k]:
                    xi = normal(states, i) if noisy else T(0.0)
                    W[i, k] = shrink * W[i, k] + eta * velocity[i, k] + sigma * xi

    return cuda.jit(kernel)


@cuda.jit
def _advance_kernel(states, draws):
    i = cuda.grid(1)
    if i < states.shape[0]:
        for _ in range(draws):
            xoroshiro128p_next(states, i)


def euler_update(W, velocity, step):
    """W <- W + step * velocity on device arrays of shape (m, p)."""
    check_device_arrays(W, velocity)
    _euler_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](W, velocity, float(step))


def heavy_ball_update(W, velocity, buffer, step, momentum):
    """buffer <- momentum * buffer - step * velocity; W <- W - buffer (device arrays)."""
    check_device_arrays(W, velocity, buffer)
    _heavy_ball_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](
        W, velocity, buffer, float(step), float(momentum))


def langevin_update(W, velocity, states, step, weight_decay, noise_scale, trainable):
    """w <- (1 - eta lambda) w + eta v(w) + noise_scale * xi on the trainable columns.

    Parameters
    ----------
    W : device array, shape (m, p), updated in place
    velocity : device array, shape (m, p)
    states : device array of xoroshiro128p states, shape (m,), or None
        One generator per row (``create_noise_states``); xi ~ N(0, 1) is drawn from row i's
        generator, one draw per trainable column, in column order. None: no noise (and
        ``noise_scale`` must be 0).
    step, weight_decay, noise_scale : float
        eta, lambda and sqrt(2 eta / beta).
    trainable : device array of bool, shape (p,)
    """
    check_device_arrays(W, velocity, trainable)
    noisy = states is not None
    if not noisy and noise_scale != 0:
        raise ValueError("noise_scale > 0 needs generator states")
    if noisy and states.shape[0] < W.shape[0]:
        raise ValueError(f"{states.shape[0]} generator states for {W.shape[0]} rows")
    _langevin_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](
        W, velocity, states if noisy else _no_states(), float(step), float(weight_decay), float(noise_scale),
        trainable, noisy)


@functools.lru_cache(maxsize=1)
def _no_states():
    return create_xoroshiro128p_states(1, 0)


def create_noise_states(m, seed):
    """m independent xoroshiro128+ generators (subsequences 2^64 apart) from a 64-bit seed."""
    return create_xoroshiro128p_states(int(m), int(seed) % 2**64)


def advance_noise_states(states, steps, draws_per_step):
    """Advance every generator by ``steps * draws_per_step`` normal draws (2 raw draws each)."""
    total = 2 * int(steps) * int(draws_per_step)
    if total > 0:
        _advance_kernel[blocks(states.shape[0]), THREADS_PER_BLOCK](states, total)
