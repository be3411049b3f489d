"""Scalar observables of particle states, their 1-D W2 distances, and the risk gap.

A state W has shape (m, d + 2) in the particle layout of :class:`meanfield.Model`: columns
W[:, :d] = a (input weights), W[:, d] = b (bias), W[:, d + 1] = c (output weight). The
empirical law of a scalar observable g(w) converges at the m^(-1/2) rate in any dimension,
unlike W2 between full clouds in R^(d+2) (SCIENCE.md section 4).
"""
from __future__ import annotations

import numpy as np

from ._clouds import wasserstein_1d

OBSERVABLES = ("norm", "readout", "signed_norm", "overlap")


def _state(W, d: int, name: str = "W") -> np.ndarray:
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    W = np.asarray(getattr(W, "W", W), dtype=np.float64)
    if W.ndim != 2 or W.shape[1] != d + 2 or W.shape[0] < 1:
        raise ValueError(f"{name} must have shape (m, d + 2) = (m, {d + 2}) with m >= 1, got {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError(f"{name} contains NaN or inf")
    return W


def observable(W, d: int, name: str, teacher=None) -> np.ndarray:
    r"""Per-particle values of a scalar observable of a state.

    =============== ======================== ==============
    name            value for particle i     shape
    =============== ======================== ==============
    ``norm``        |a_i|                    (m,)
    ``readout``     c_i                      (m,)
    ``signed_norm`` c_i |a_i|                (m,)
    ``overlap``     a_i . a*_j, j = 1..k     (m, k)
    =============== ======================== ==============

    Parameters
    ----------
    W : ndarray, shape (m, d + 2)
        State in the particle layout (a, b, c).
    d : int
        Input dimension.
    name : str
        One of ``OBSERVABLES``.
    teacher : ndarray, shape (k, d + 2), or :class:`meanfield.Teacher`, optional
        Teacher neurons in the same layout; required for ``"overlap"``. The overlaps use the
        raw teacher input weights a*_j (not normalised; unit vectors for an orthonormal
        teacher).

    Returns
    -------
    ndarray, float64, shape (m,) or (m, k) for ``"overlap"``
    """
    W = _state(W, d)
    a, c = W[:, :d], W[:, d + 1]
    if name == "norm":
        return np.linalg.norm(a, axis=1)
    if name == "readout":
        return c.copy()
    if name == "signed_norm":
        return c * np.linalg.norm(a, axis=1)
    if name == "overlap":
        if teacher is None:
            raise ValueError("the 'overlap' observable needs the teacher (k, d + 2) array")
        T = _state(teacher, d, "teacher")
        return a @ T[:, :d].T
    raise ValueError(f"unknown observable {name!r}; choose one of {OBSERVABLES}")


def observable_w2(W, W_ref, d: int, name: str, teacher=None):
    r"""Exact 1-D W2 between the empirical laws of an observable in two states.

    .. math::
        W_2\Big(\frac1m \sum_i \delta_{g(w_i)},\ \frac1M \sum_j \delta_{g(w'_j)}\Big)
        = \Big(\int_0^1 |F_m^{-1}(q) - F_M^{-1}(q)|^2 dq\Big)^{1/2}

    Parameters
    ----------
    W : ndarray, shape (m, d + 2)
    W_ref : ndarray, shape (M, d + 2)
        The two states; the widths m and M may differ.
    d : int
    name : str
        One of ``OBSERVABLES`` (see :func:`observable`).
    teacher : ndarray, shape (k, d + 2), optional
        Required for ``"overlap"``.

    Returns
    -------
    float, or ndarray of shape (k,) for ``"overlap"`` (one W2 per teacher neuron j, between
    the laws of a_i . a*_j)
    """
    g = observable(W, d, name, teacher)
    g_ref = observable(W_ref, d, name, teacher)
    if name == "overlap":
        return np.array([wasserstein_1d(g[:, j], g_ref[:, j], p=2) for j in range(g.shape[1])])
    return wasserstein_1d(g, g_ref, p=2)


def risk_gap(risk, risk_ref):
    r"""Risk gap |R(mu_m) - R(mu_M)|, elementwise.

    Parameters
    ----------
    risk, risk_ref : float or ndarray (broadcastable shapes)
        Risks of the width-m run and of the reference (e.g. along a common time grid).

    Returns
    -------
    float for scalar inputs, else ndarray of float64
    """
    gap = np.abs(np.asarray(risk, dtype=np.float64) - np.asarray(risk_ref, dtype=np.float64))
    return float(gap) if gap.ndim == 0 else gap
