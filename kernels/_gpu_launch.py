"""Launch geometry and kernel factories shared by the CUDA kernels.

The CUDA kernels are built by factories specialised on the floating type and on d (the
input dimension), so that per-thread accumulators of length d live in registers or local
memory (``cuda.local.array`` needs a compile-time length) and every constant of a float32
kernel is a float32. Each factory is memoised: one compilation per (dtype, d).
"""
import numpy as np
from numba import config, float32, float64

# 128 threads on a GPU; 8 in numba's CUDA simulator, which runs every thread of a block as a
# Python thread (the simulator's cost grows with the threads launched, and small blocks make
# small test sizes cross tile and block edges). A power of two: the reductions are trees.
THREADS_PER_BLOCK = 8 if config.ENABLE_CUDASIM else 128
# Blocks a launch should have to fill a device (a few per SM of the largest GPUs); small
# in the simulator so that test sizes split into several chunks.
TARGET_BLOCKS = 4 if config.ENABLE_CUDASIM else 1024
SHARED_BYTES = 32 * 1024  # per block, well below the 48 KiB every GPU since Kepler has


def numba_type(dtype):
    """The numba scalar type of a float32 or float64 numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return float32
    if dtype == np.float64:
        return float64
    raise TypeError(f"CUDA kernels take float32 or float64 arrays, got {dtype}")


def blocks(n, threads=THREADS_PER_BLOCK):
    """Blocks of ``threads`` threads covering n items (at least one)."""
    return max(1, (n + threads - 1) // threads)


def tile_rows(row_floats, itemsize, limit=THREADS_PER_BLOCK):
    """Rows of ``row_floats`` numbers that fit in the shared-memory budget (1 .. limit)."""
    return int(max(1, min(limit, SHARED_BYTES // (row_floats * itemsize))))


def check_device_arrays(*arrays):
    """Raise TypeError unless every argument is a CUDA device array (or a simulator one)."""
    for array in arrays:
        if not hasattr(array, "copy_to_host"):
            raise TypeError("the CUDA kernels take device arrays (numba.cuda.to_device), "
                            f"got {type(array).__name__}")
