"""Forward pass of wide random deep networks with weights drawn on the fly (counter-based).

The network has L layers of width N, W^l_ij = sigma_w z^l_ij / sqrt(N), b^l_i = sigma_b z^l_iN
with z standard normal, h^1 = W^1 x + b^1 and h^l = W^l phi(h^{l-1}) + b^l. The weights are
never stored: z^l_ij is a pure function of (seed, l, i, j) (splitmix64 hashes of the counter,
two 53-bit uniforms, Box-Muller), so a network is reproducible whatever the thread count,
costs O(N) memory, and the numpy reference ``random_normals`` draws exactly the same numbers.
"""
import math

import numpy as np
from numba import njit, prange

from ._scalar import activation

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_UNIT = 1.0 / 9007199254740992.0  # 2^-53
_TWO_PI = 6.283185307179586


@njit(cache=True)
def splitmix64(x):
    """The splitmix64 finaliser of x + golden ratio (uint64 -> uint64, a bijection)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def row_key(seed, layer, row):
    """Key of row ``row`` of layer ``layer`` (1-based) of network ``seed``."""
    return splitmix64(splitmix64(splitmix64(np.uint64(seed)) + np.uint64(layer)) + np.uint64(row))


@njit(cache=True)
def normal_pair(key, pair):
    """Normals number 2 pair and 2 pair + 1 of a row: Box-Muller on two 53-bit uniforms in (0, 1]."""
    base = key + _TWO * np.uint64(pair)
    u1 = (np.float64(splitmix64(base) >> _S11) + 1.0) * _UNIT
    u2 = (np.float64(splitmix64(base + _ONE) >> _S11) + 1.0) * _UNIT
    radius = math.sqrt(-2.0 * math.log(u1))
    angle = _TWO_PI * u2
    return radius * math.cos(angle), radius * math.sin(angle)


@njit(cache=True, parallel=True)
def deep_random_forward(X0, depth, sigma_w, sigma_b, activation_code, seed, H, Y, q_out, cross_out):
    """Pre-activation statistics of inputs propagated through one random network.

    Parameters
    ----------
    X0 : ndarray, shape (N, M), float64
        The M inputs as columns (pairs are columns 2k, 2k + 1).
    depth : int
        Number of layers L.
    sigma_w, sigma_b : float
        Weight and bias scales (standard deviations).
    activation_code : int
        ``meanfield.kernels.ACTIVATION_CODES``.
    seed : int
        The network: its weights are a function of (seed, layer, row, column) only.
    H, Y : ndarray, shape (N, M), float64
        Work arrays (pre- and post-activations), overwritten.
    q_out : ndarray, shape (depth + 1, M), output
        q_l = |h^l|^2 / N of each input (row 0: |x|^2 / N).
    cross_out : ndarray, shape (depth + 1, M // 2), output
        h^l_a . h^l_b / N of each pair (row 0: the inputs').

    Returns
    -------
    int
        M // 2, the number of input pairs (the columns of ``cross_out`` written).
    """
    N, M = X0.shape
    P = M // 2
    scale = sigma_w / math.sqrt(N)
    n_pairs = (N + 2) // 2  # N weights and one bias per row
    for p in range(M):
        for j in range(N):
            Y[j, p] = X0[j, p]
    _statistics(Y, 0, q_out, cross_out)
    for layer in range(1, depth + 1):
        for i in prange(N):
            key = row_key(seed, layer, i)
            for p in range(M):
                H[i, p] = 0.0
            for k in range(n_pairs):
                z0, z1 = normal_pair(key, k)
                j = 2 * k
                if j < N:
                    w = scale * z0
                    for p in range(M):
                        H[i, p] += w * Y[j, p]
                else:
                    for p in range(M):
                        H[i, p] += sigma_b * z0
                j += 1
                if j < N:
                    w = scale * z1
                    for p in range(M):
                        H[i, p] += w * Y[j, p]
                elif j == N:
                    for p in range(M):
                        H[i, p] += sigma_b * z1
        _statistics(H, layer, q_out, cross_out)
        for j in prange(N):
            for p in range(M):
                Y[j, p] = activation(H[j, p], activation_code)
    return P


@njit(cache=True, parallel=True)
def _statistics(H, layer, q_out, cross_out):
    N, M = H.shape
    for p in prange(M):
        total = 0.0
        for i in range(N):
            total += H[i, p] * H[i, p]
        q_out[layer, p] = total / N
    for k in prange(M // 2):
        total = 0.0
        for i in range(N):
            total += H[i, 2 * k] * H[i, 2 * k + 1]
        cross_out[layer, k] = total / N
