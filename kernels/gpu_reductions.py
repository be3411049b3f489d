"""CUDA reductions: sums (risk), sums of squares (gradient norm), all-finite check.

Two passes and no atomics, so that a sum is the same from run to run: each block reduces its
part of the array in shared memory (a tree, ``THREADS_PER_BLOCK`` a power of two) into one
partial sum, then one block reduces the partials. Accumulation is in the array's dtype.
"""
import functools
import math

import numpy as np
from numba import config, cuda

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type

# Partial sums of the first pass; each thread strides over the rest (8 in the simulator, so
# that small test arrays exercise the stride).
_MAX_BLOCKS = 8 if config.ENABLE_CUDASIM else 1024


@functools.lru_cache(maxsize=None)
def _sum_kernel(T, square):
    def kernel(x, partial):
        shared = cuda.shared.array(THREADS_PER_BLOCK, T)
        tid = cuda.threadIdx.x
        acc = T(0.0)
        for k in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[k]
            acc += v * v if square else v
        shared[tid] = acc
        cuda.syncthreads()
        width = THREADS_PER_BLOCK // 2
        while width > 0:
            if tid < width:
                shared[tid] += shared[tid + width]
            cuda.syncthreads()
            width //= 2
        if tid == 0:
            partial[cuda.blockIdx.x] = shared[0]

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _finite_kernel(T):
    def kernel(x, flag):
        for k in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            if not math.isfinite(x[k]):
                flag[0] = 1  # every writer writes 1: the race is harmless

    return cuda.jit(kernel)


def _flat(x):
    check_device_arrays(x)
    return x.reshape(x.size) if x.ndim != 1 else x


def _reduce(x, square):
    flat = _flat(x)
    T = numba_type(flat.dtype)
    n_blocks = min(_MAX_BLOCKS, blocks(flat.shape[0]))
    partial = cuda.device_array(n_blocks, dtype=flat.dtype)
    _sum_kernel(T, square)[n_blocks, THREADS_PER_BLOCK](flat, partial)
    total = cuda.device_array(1, dtype=flat.dtype)
    _sum_kernel(T, False)[1, THREADS_PER_BLOCK](partial, total)
    return float(total.copy_to_host()[0])


def device_sum(x):
    """sum_k x_k of a device array (any shape, C-contiguous), as a Python float."""
    return _reduce(x, False)


def sum_of_squares(x):
    """sum_k x_k^2 of a device array (any shape, C-contiguous), as a Python float."""
    return _reduce(x, True)


def all_finite(W):
    """True when no entry of the device array W is NaN or infinite."""
    flat = _flat(W)
    flag = cuda.to_device(np.zeros(1, dtype=np.int32))
    _finite_kernel(numba_type(flat.dtype))[min(_MAX_BLOCKS, blocks(flat.shape[0])), THREADS_PER_BLOCK](flat, flag)
    return int(flag.copy_to_host()[0]) == 0


def ptx_signatures(T):
    """(name, python function, argument types) of every kernel of this module for type ``T``."""
    from numba import int32

    V = T[::1]
    return [
        ("device_sum", _sum_kernel(T, False).py_func, (V, V)),
        ("sum_of_squares", _sum_kernel(T, True).py_func, (V, V)),
        ("all_finite", _finite_kernel(T).py_func, (V, int32[::1])),
    ]
