"""CUDA twins of ``updates``: in-place particle updates on device arrays.

One thread per particle row. The Langevin noise comes from ``numba.cuda.random``
xoroshiro128+ generators, one per row (``create_noise_states``), so the noise of a run is
fixed by its seed; a row draws one standard normal per trainable column and step, which
lets ``advance_noise_states`` skip a generator forward by whole steps (resume).
"""
import functools
import math

import numpy as np
from numba import config, cuda, float32, int32, uint64
from numba.cuda import libdevice
from numba.cuda.random import xoroshiro128p_dtype, xoroshiro128p_next, xoroshiro128p_normal_float64

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type

# The simulator has no hardware cosine; math.cos is the same function to 1e-6.
_cos_float32 = math.cos if config.ENABLE_CUDASIM else libdevice.fast_cosf


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
    return math.sqrt(-float32(2.0) * math.log(u1)) * _cos_float32(angle)


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
def _heavy_ball_decay_kernel(T):
    def kernel(W, velocity, buffer, step, momentum, weight_decay, trainable):
        i = cuda.grid(1)
        if i < W.shape[0]:
            eta = step
            beta = momentum
            lam = weight_decay
            for k in range(W.shape[1]):
                decay = lam * W[i, k] if trainable[k] else T(0.0)
                buffer[i, k] = beta * buffer[i, k] - eta * (velocity[i, k] - decay)
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


def heavy_ball_decay_update(W, velocity, buffer, step, momentum, weight_decay, trainable):
    """Heavy ball with weight decay on device arrays, the twin of ``kernels.heavy_ball_decay_update``:
    buffer <- momentum * buffer - step * (velocity - lambda W) on the trainable columns (velocity
    alone on the others); W <- W - buffer.

    Parameters
    ----------
    W : device array, shape (m, p), updated in place
    velocity : device array, shape (m, p), same dtype
        v = -m grad F.
    buffer : device array, shape (m, p), same dtype, updated in place
        The momentum buffer V.
    step, momentum, weight_decay : float
        eta, beta in [0, 1) and lambda >= 0 (1 / time units).
    trainable : device array of bool, shape (p,)
        Columns that decay.
    """
    check_device_arrays(W, velocity, buffer, trainable)
    scalar = W.dtype.type
    _heavy_ball_decay_kernel(numba_type(W.dtype))[blocks(W.shape[0]), THREADS_PER_BLOCK](
        W, velocity, buffer, scalar(step), scalar(momentum), scalar(weight_decay), trainable)


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
    return create_noise_states(1, 0)


def _splitmix64(x):
    """The SplitMix64 output function (Steele, Lea & Flood 2014) on uint64 arrays."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def create_noise_states(m, seed):
    """m xoroshiro128+ generators on the device, seeded from a 64-bit seed.

    Row i's state is outputs 2i and 2i + 1 of a SplitMix64 stream started at ``seed`` (the
    seeding the xoroshiro authors recommend), computed with numpy in O(m): numba's
    ``create_xoroshiro128p_states`` jumps generator after generator on the host, which is
    slow for 10^6 rows and runs in object mode under the simulator.
    """
    m = int(m)
    with np.errstate(over="ignore"):
        start = np.uint64(int(seed) % 2**64)
        k = np.arange(1, 2 * m + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        words = _splitmix64(start + k - np.uint64(0x9E3779B97F4A7C15))
    states = np.empty(m, dtype=xoroshiro128p_dtype)
    states["s0"] = words[0::2]
    states["s1"] = words[1::2]
    states["s0"][(states["s0"] == 0) & (states["s1"] == 0)] = 1  # the one forbidden state
    return cuda.to_device(states)


def create_noise_states_of_rows(rows, seed):
    """The generators of the given rows of ``create_noise_states(m, seed)``, for any m > rows.

    Row i's state depends only on (seed, i), so ``create_noise_states_of_rows([0, ..., m - 1],
    seed)`` is ``create_noise_states(m, seed)``, and tracers given the rows of the particles
    they started at draw those particles' noise (keyed Langevin noise on the device).

    Parameters
    ----------
    rows : array_like of int, shape (n,)
        Row indices >= 0 (repeats allowed).
    seed : int
        The 64-bit seed of ``create_noise_states``.

    Returns
    -------
    device array of xoroshiro128p states, shape (n,)
    """
    rows = np.asarray(rows, dtype=np.uint64)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        start = np.uint64(int(seed) % 2**64)
        s0 = _splitmix64(start + np.uint64(2) * rows * gamma)
        s1 = _splitmix64(start + (np.uint64(2) * rows + np.uint64(1)) * gamma)
    states = np.empty(rows.shape[0], dtype=xoroshiro128p_dtype)
    states["s0"] = s0
    states["s1"] = s1
    states["s0"][(states["s0"] == 0) & (states["s1"] == 0)] = 1  # the one forbidden state
    return cuda.to_device(states)


def advance_noise_states(states, steps, draws_per_step):
    """Advance every generator by ``steps * draws_per_step`` normal draws (2 raw draws each)."""
    total = 2 * int(steps) * int(draws_per_step)
    if total > 0:
        _advance_kernel[blocks(states.shape[0]), THREADS_PER_BLOCK](states, total)


def ptx_signatures(T):
    """(name, python function, argument types) of every kernel of this module for type ``T``,
    as the launchers above call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, from_dtype, int64
    M = T[:, ::1]
    states = from_dtype(xoroshiro128p_dtype)[::1]
    return [
        ("euler_update", _euler_kernel(T).py_func, (M, M, T)),
        ("heavy_ball_update", _heavy_ball_kernel(T).py_func, (M, M, M, T, T)),
        ("heavy_ball_decay_update", _heavy_ball_decay_kernel(T).py_func, (M, M, M, T, T, T, boolean[::1])),
        ("langevin_update", _langevin_kernel(T).py_func, (M, M, states, T, T, T, boolean[::1], boolean)),
        ("advance_noise_states", _advance_kernel.py_func, (states, int64)),
    ]
