"""Mode connectivity: the risk along paths between two trained particle sets (SCIENCE.md section 5)."""
from __future__ import annotations

import numpy as np

PATHS = ("linear", "arc")


def match_particles(W_A, W_B, mask=None) -> np.ndarray:
    """The permutation of W_B's particles closest to W_A: ``W_B[perm]`` is matched to ``W_A``.

    Optimal assignment for the squared Euclidean cost between rows (over the columns of
    ``mask``, default all), solved as exact optimal transport between uniform measures
    (POT ``ot.emd``), whose plan is a permutation matrix for equal sizes (Birkhoff).

    Parameters
    ----------
    W_A, W_B : ndarray, shape (m, p)
    mask : ndarray of bool, shape (p,), optional

    Returns
    -------
    ndarray of int, shape (m,)
    """
    import ot

    W_A, W_B = np.asarray(W_A, dtype=np.float64), np.asarray(W_B, dtype=np.float64)
    if W_A.shape != W_B.shape:
        raise ValueError(f"matching needs particle sets of equal shape, got {W_A.shape} and {W_B.shape}")
    if mask is not None:
        W_A, W_B = W_A[:, mask], W_B[:, mask]
    m = W_A.shape[0]
    cost = ot.dist(W_A, W_B)
    uniform = np.full(m, 1.0 / m)
    plan = ot.emd(uniform, uniform, cost)
    perm = np.argmax(plan, axis=1)
    if len(set(perm.tolist())) != m:  # a degenerate plan (ties) that is not a permutation
        from scipy.optimize import linear_sum_assignment

        perm = linear_sum_assignment(cost)[1]
    return perm


def path_points(W_A, W_B, t, path: str, mask=None) -> np.ndarray:
    """The state at parameter t in [0, 1] of the ``"linear"`` path (1 - t) W_A + t W_B or the
    ``"arc"`` path cos(pi t / 2) W_A + sin(pi t / 2) W_B, on the columns of ``mask`` (the
    trainable ones); other columns keep W_A's values (frozen readouts, absent biases).

    Parameters
    ----------
    W_A, W_B : ndarray, shape (m, d + 2)
        The two end points (t = 0 and t = 1).
    t : float
        Path parameter in [0, 1] (a path parameter, not the time of a run).
    path : str
        ``"linear"`` or ``"arc"``.
    mask : ndarray of bool, shape (d + 2,), optional
        The columns that move; default all.

    Returns
    -------
    ndarray, shape (m, d + 2), float64
        A new array.
    """
    if path == "linear":
        alpha, beta = 1.0 - t, t
    elif path == "arc":
        alpha, beta = np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
    else:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    W = np.array(W_A, dtype=np.float64)
    mask = np.ones(W.shape[1], dtype=bool) if mask is None else mask
    W[:, mask] = alpha * W[:, mask] + beta * np.asarray(W_B, dtype=np.float64)[:, mask]
    return W


def connectivity(problem, W_A, W_B, n_points: int = 41, match: bool = True, paths=PATHS) -> dict:
    """Risk along the linear and arc paths from W_A to W_B, without and with matching.

    The barrier of a path is max_t F(W(t)) - max(F(W_A), F(W_B)) over ``n_points`` equally
    spaced t in [0, 1] (0 when the path never rises above its end points' larger risk).

    Parameters
    ----------
    problem : Problem
    W_A, W_B : ndarray, shape (m, d + 2)
        Two particle sets of equal width.
    n_points : int
        Points per path, end points included (>= 2).
    match : bool
        Also evaluate the paths to W_B with its particles permuted by :func:`match_particles`
        (the network function is unchanged by the permutation).
    paths : sequence of str

    Returns
    -------
    dict
        ``"t"`` (n_points,), ``"permutation"`` (m,) or None, ``"end_risks"`` (F(W_A), F(W_B)),
        and for each ``<path>`` and ``<path>_matched``: {"risk": (n_points,), "barrier": float}.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    mask = problem.model.trainable
    W_A, W_B = np.asarray(W_A, dtype=np.float64), np.asarray(W_B, dtype=np.float64)
    if W_A.shape != W_B.shape:
        raise ValueError(f"paths need particle sets of equal shape, got {W_A.shape} and {W_B.shape}")
    t = np.linspace(0.0, 1.0, n_points)
    ends = (problem.risk(W_A), problem.risk(W_B))
    result = {"t": t, "end_risks": ends, "permutation": None}
    targets = [("", W_B)]
    if match:
        perm = match_particles(W_A, W_B, mask)
        result["permutation"] = perm
        targets.append(("_matched", W_B[perm]))
    for suffix, target in targets:
        for path in paths:
            risk = np.array([problem.risk(path_points(W_A, target, s, path, mask)) for s in t])
            result[path + suffix] = {"risk": risk, "barrier": float(max(0.0, risk.max() - max(ends)))}
    return result
