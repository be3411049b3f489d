"""Simulation of wide random deep networks, to compare layer statistics with the theory."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..kernels.deep_random import deep_random_forward
from ._maps import ACTIVATIONS


@dataclass(frozen=True)
class SimulatedPropagation:
    """Layer statistics measured in random networks.

    Attributes
    ----------
    q : ndarray, shape (n_networks, depth + 1, P, 2)
        q_l = |h^l|^2 / N of both inputs of each pair (layer 0: the inputs).
    c : ndarray, shape (n_networks, depth + 1, P)
        c_l = h^l_a . h^l_b / (N sqrt(q_l^a q_l^b)) of each pair.
    q0, c0 : ndarray, shape (P,)
        The pairs' input variance and correlation.
    width, depth : int
    sigma_w2, sigma_b2 : float
    activation : str
    seed : int
    """

    q: np.ndarray
    c: np.ndarray
    q0: np.ndarray
    c0: np.ndarray
    width: int
    depth: int
    sigma_w2: float
    sigma_b2: float
    activation: str
    seed: int

    def mean_q(self) -> np.ndarray:
        """q_l averaged over networks and both inputs, shape (depth + 1, P)."""
        return self.q.mean(axis=(0, 3))

    def mean_c(self) -> np.ndarray:
        """c_l averaged over networks, shape (depth + 1, P)."""
        return self.c.mean(axis=0)

    def stderr_q(self) -> np.ndarray:
        """Standard error of :meth:`mean_q` over networks (the inputs of a pair are averaged
        first, since they share the network), shape (depth + 1, P)."""
        per_network = self.q.mean(axis=3)
        return per_network.std(axis=0, ddof=1) / math.sqrt(per_network.shape[0])

    def stderr_c(self) -> np.ndarray:
        """Standard error of :meth:`mean_c` over networks, shape (depth + 1, P)."""
        return self.c.std(axis=0, ddof=1) / math.sqrt(self.c.shape[0])


def input_pairs(width: int, q0, c0, rng: np.random.Generator) -> np.ndarray:
    """Inputs of exact squared norm N q0 and exact correlation c0, as columns.

    Parameters
    ----------
    width : int
        N (>= 2).
    q0, c0 : array_like, shape (P,)
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (N, 2 P), float64: columns 2k and 2k + 1 are sqrt(N q0) u and
    sqrt(N q0) (c0 u + sqrt(1 - c0^2) v), with u, v random orthonormal vectors.
    """
    q0, c0 = np.broadcast_arrays(np.atleast_1d(np.asarray(q0, dtype=np.float64)),
                                 np.atleast_1d(np.asarray(c0, dtype=np.float64)))
    X = np.empty((width, 2 * q0.size))
    for k in range(q0.size):
        basis, _ = np.linalg.qr(rng.standard_normal((width, 2)))
        u, v = basis[:, 0], basis[:, 1]
        scale = math.sqrt(width * q0[k])
        X[:, 2 * k] = scale * u
        X[:, 2 * k + 1] = scale * (c0[k] * u + math.sqrt(max(1.0 - c0[k] ** 2, 0.0)) * v)
    return X


def network_seed(seed: int, network: int) -> int:
    """The counter-RNG seed of network ``network`` of a simulation with root seed ``seed``.

    Parameters
    ----------
    seed : int
        Root seed of the simulation.
    network : int
        Index of the network.

    Returns
    -------
    int
        A 64-bit seed in [0, 2^64), from ``numpy.random.SeedSequence(seed, spawn_key=(network,))``.
    """
    state = np.random.SeedSequence(seed, spawn_key=(network,)).generate_state(1, np.uint64)[0]
    return int(state)


def simulate(q0, c0, depth: int, sigma_w2: float, sigma_b2: float, activation: str, width: int,
             n_networks: int = 8, seed: int = 0) -> SimulatedPropagation:
    """Propagate input pairs through ``n_networks`` random networks of width N and depth L.

    Weights W^l_ij ~ N(0, sigma_w^2 / N), biases ~ N(0, sigma_b^2), all layers of width N
    (inputs included), compiled kernel ``meanfield.kernels.deep_random.deep_random_forward``
    (parallel over the rows of each layer; weights generated on the fly, never stored).

    Parameters
    ----------
    q0, c0 : array_like, shape (P,)
        Input variance |x|^2 / N and correlation of each pair (broadcast).
    depth : int
        L >= 1.
    sigma_w2, sigma_b2 : float
    activation : str
    width : int
        N >= 2.
    n_networks : int
        Independent networks (>= 2 for standard errors).
    seed : int
        Root seed: the inputs come from ``default_rng(seed)``, network n from
        :func:`network_seed`.

    Returns
    -------
    SimulatedPropagation
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not (isinstance(width, (int, np.integer)) and width >= 2):
        raise ValueError(f"width must be an integer >= 2, got {width!r}")
    if not (isinstance(depth, (int, np.integer)) and depth >= 1):
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not (sigma_w2 >= 0 and sigma_b2 >= 0):
        raise ValueError(f"sigma_w2 and sigma_b2 must be >= 0, got {sigma_w2!r}, {sigma_b2!r}")
    q0, c0 = np.broadcast_arrays(np.atleast_1d(np.asarray(q0, dtype=np.float64)),
                                 np.atleast_1d(np.asarray(c0, dtype=np.float64)))
    X0 = input_pairs(width, q0, c0, np.random.default_rng(seed))
    H, Y = np.empty_like(X0), np.empty_like(X0)
    P = q0.size
    q = np.empty((n_networks, depth + 1, 2 * P))
    cross = np.empty((n_networks, depth + 1, P))
    code = kernels.ACTIVATION_CODES[activation]
    for n in range(n_networks):
        deep_random_forward(X0, depth, math.sqrt(sigma_w2), math.sqrt(sigma_b2), code,
                            np.uint64(network_seed(seed, n)), H, Y, q[n], cross[n])
    q = q.reshape(n_networks, depth + 1, P, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = cross / np.sqrt(q[..., 0] * q[..., 1])
    return SimulatedPropagation(q, c, q0.copy(), c0.copy(), int(width), int(depth), float(sigma_w2), float(sigma_b2),
                                activation, int(seed))
