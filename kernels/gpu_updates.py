"""CUDA twins of ``updates``: in-place particle updates on device arrays.

One thread per particle row. The Langevin noise comes from ``numba.cuda.random``
xoroshiro128+ generators, one per row (``create_noise_states``), so the noise of a run is
fixed by its seed; a row draws one standard normal per trainable column and step, which
lets ``advance_noise_states`` skip a generator forward by whole steps (resume).
"""
import functools
import math

from numba import cuda, float32, int32, uint64
from numba.cuda import libdevice
from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_next, xoroshiro128p_normal_float64

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type


@cuda.jit(device=True)
def _normal_float32(states, index):
    """N(0, 1) in float32 only: Box-Muller on two 24-bit uniforms (two raw draws, like the
    float64 draw), z = sqrt(-2 log u1) cos(pi (2 u2 - 1)); the cosine's argument lies in
    [-pi, pi), where the hardware cosine (``fast_cosf``, absolute error below 1e-6) is
    accurate; the libdevice ``cosf`` and numba's float32 draw go through double precision.
    (cos(pi (2u - 1)) = -cos(2 pi u): the sign is that of a symmetric law, still N(0, 1).)"""
    scale = float32(5.9604644775390625e-08)  # 2^-24
    u1 = float32(int32(xoroshiro128p_next(states, index) >> uint64(40)) + int32(1)) * scale  # (0, 1]
    u2 = float32(int32(xoroshiro128p_next(states, index) >> uint64(40))) * scale  # [0, 1)
    angle = float32(3.141592653589793) * (float32(2.0) * u2 - float32(1.0))
    return math.sqrt(-float32(2.0) * math.log(u1)) * libdevice.fast_cosf(angle)


@functools.lru_cache(maxsize=None)
def _euler_kernel(T):
    def kernel(W, velocity, step):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = step
            for k in range(W.shape[1]):
                W[i, k] += eta * velocity[i, k]

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _heavy_ball_kernel(T):
    def kernel(W, velocity, buffer, step, momentum):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = step
            beta = momentum
            for k in range(W.shape[1]):
                buffer[i, k] = beta * buffer[i, k] - eta * velocity[i, k]
                W[i, k] -= buffer[i, k]

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _langevin_kernel(T):
    normal = _normal_float32 if T.bitwidth == 32 else xoroshiro128p_normal_float64

    def kernel(W, velocity, states, step, weight_decay, noise_scale, trainable, noisy):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = step
            shrink = T(1.0) - step * weight_decay
            sigma = noise_scale
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
    scalar = W.dtype.type
    _euler_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](W, velocity, scalar(step))


def heavy_ball_update(W, velocity, buffer, step, momentum):
    """buffer <- momentum * buffer - step * velocity; W <- W - buffer (device arrays)."""
    check_device_arrays(W, velocity, buffer)
    scalar = W.dtype.type
    _heavy_ball_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](
        W, velocity, buffer, scalar(step), scalar(momentum))


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
    scalar = W.dtype.type
    _langevin_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](
        W, velocity, states if noisy else _no_states(), scalar(step), scalar(weight_decay), scalar(noise_scale),
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


def ptx_signatures(T):
    """(name, python function, argument types) of every kernel of this module for type ``T``,
    as the launchers above call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, from_dtype, int64
    from numba.cuda.random import xoroshiro128p_dtype

    M = T[:, ::1]
    states = from_dtype(xoroshiro128p_dtype)[::1]
    return [
        ("euler_update", _euler_kernel(T).py_func, (M, M, T)),
        ("heavy_ball_update", _heavy_ball_kernel(T).py_func, (M, M, M, T, T)),
        ("langevin_update", _langevin_kernel(T).py_func, (M, M, states, T, T, T, boolean[::1], boolean)),
        ("advance_noise_states", _advance_kernel.py_func, (states, int64)),
    ]
