"""The measure on the sphere of a 2-homogeneous model and distances between such measures.

For relu without bias and with a trained readout, phi(w, x) = c relu(a . x) is positively
2-homogeneous in w = (a, c): c relu(a . x) = |c||a| sign(c) relu(u . x) with u = a / |a|. The
network therefore depends on the particles only through the measure on the sphere S^(d-1)

    nu = (1/m) sum_i |c_i| |a_i| delta_{a_i / |a_i|}

(Chizat & Bach 2018; SCIENCE.md section 4), which is the object to compare across widths:
rescaling a_i -> s a_i, c_i -> c_i / s, or splitting a particle into copies with the same
direction, leaves nu unchanged. The sign of c_i is not represented.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.spatial.distance import cdist

from ._clouds import _check_p, _emd, _too_large
from ._observables import _state

COSTS = ("geodesic", "chordal")
NORMALISATIONS = ("mean", "sum")


class SphereDistance(NamedTuple):
    """Result of :func:`sphere_distance`.

    Attributes
    ----------
    distance : float
        W_p between the two measures normalised to probability measures (NaN when either
        has zero mass).
    mass : float
        Total mass of the first measure, sum_i |c_i||a_i| / m (or without 1/m).
    mass_ref : float
        Total mass of the reference measure.
    """

    distance: float
    mass: float
    mass_ref: float


def _is_teacher(W) -> bool:
    return hasattr(W, "W") and hasattr(W, "activation")


def sphere_measure(W, d: int, normalisation: str = "mean"):
    r"""Directions and weights of the measure nu = sum_i w_i delta_{u_i} on S^(d-1).

    .. math::
        u_i = a_i / |a_i|, \qquad w_i = |c_i| |a_i| / m \ (\text{"mean"})
        \quad\text{or}\quad w_i = |c_i| |a_i| \ (\text{"sum"})

    Particles of weight zero (a_i = 0, which have no direction, or c_i = 0) are dropped.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), or :class:`meanfield.Teacher`
        State in the particle layout (a, b, c); the bias column is ignored (the measure
        describes bias-free 2-homogeneous models).
    d : int
        Input dimension.
    normalisation : {"mean", "sum"}
        ``"mean"`` for a mean-field student h = (1/m) sum_i c_i relu(a_i . x);
        ``"sum"`` for absolute output weights, as in a teacher f* = sum_j c*_j relu(a*_j . x)
        (:class:`meanfield.Teacher` stores absolute c*_j). With these conventions a student
        and a teacher computing the same function have the same measure.

    Returns
    -------
    directions : ndarray, shape (m', d), float64
        Unit vectors, m' <= m.
    weights : ndarray, shape (m',), float64
        Positive weights (not normalised; their sum is the mass).
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    W = _state(W, d)
    a, c = W[:, :d], W[:, d + 1]
    norms = np.linalg.norm(a, axis=1)
    weights = np.abs(c) * norms
    if normalisation == "mean":
        weights = weights / W.shape[0]
    keep = (norms > 0) & (weights > 0)
    return a[keep] / norms[keep, None], weights[keep]


def _sphere_cost(U, V, cost: str, p: float) -> np.ndarray:
    chord = cdist(U, V, "euclidean")  # |u - v|
    if cost == "chordal":
        M = chord
    else:
        # arccos(clip(u . v, -1, 1)) written as 2 atan2(|u - v|, |u + v|): the same angle for
        # unit vectors, but accurate to rounding at every angle (arccos loses half the digits
        # near 0 and pi).
        M = 2.0 * np.arctan2(chord, cdist(U, -V, "euclidean"))
    return M if p == 1 else M**p


def sphere_distance(W, W_ref, d: int, cost: str = "geodesic", p=2, normalisation: str = "mean",
                    ref_normalisation: str | None = None, *, max_pairs=25_000_000,
                    num_iter_max=None) -> SphereDistance:
    r"""W_p between the sphere measures of two states, with their masses.

    .. math::
        W_p\Big(\frac{\nu}{\nu(S)}, \frac{\nu'}{\nu'(S)}\Big), \qquad
        \text{cost}(u, v) = \arccos(\mathrm{clip}(u \cdot v, -1, 1))\ (\text{geodesic})
        \ \text{or}\ |u - v|\ (\text{chordal}) = 2 \sin(\text{angle} / 2)

    Optimal transport compares measures of equal mass, so both measures are normalised to
    probability measures before the exact solve (``ot.emd2``); the masses nu(S) and nu'(S)
    are returned alongside, and the mass difference must be read separately: a distance of
    0 with different masses means same directions, different scales.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2)
        State (a, b, c); see :func:`sphere_measure`.
    W_ref : ndarray, shape (M, d + 2), or :class:`meanfield.Teacher`
        Reference state of any width, or a teacher (k, d + 2) in the same layout.
    d : int
        Input dimension.
    cost : {"geodesic", "chordal"}
        Ground distance on the sphere (raised to the power p).
    p : float
        Order, p >= 1.
    normalisation : {"mean", "sum"}
        Weights of W: |c_i||a_i| / m (``"mean"``, a mean-field student) or |c_i||a_i|.
    ref_normalisation : {"mean", "sum"}, optional
        Weights of W_ref. Default: ``"sum"`` when W_ref is a :class:`meanfield.Teacher`
        (absolute output weights c*_j, no 1/m), ``"mean"`` for an array. **Pass "sum" when
        W_ref is a teacher's (k, d + 2) array**, so that its weights are |c*_j||a*_j|.
    max_pairs : int
        Largest m' M' for the dense exact solver.
    num_iter_max : int, optional
        Iteration cap of the network simplex.

    Returns
    -------
    SphereDistance
        (distance, mass, mass_ref); distance is NaN when either mass is 0.

    Raises
    ------
    RuntimeError
        If POT's exact solver does not report an optimal plan.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    p = _check_p(p)
    if ref_normalisation is None:
        ref_normalisation = "sum" if _is_teacher(W_ref) else "mean"
    U, w = sphere_measure(W, d, normalisation)
    V, w_ref = sphere_measure(W_ref, d, ref_normalisation)
    mass, mass_ref = float(w.sum()), float(w_ref.sum())
    if mass == 0 or mass_ref == 0:
        return SphereDistance(math.nan, mass, mass_ref)
    n, n2 = U.shape[0], V.shape[0]
    if n * n2 > max_pairs:
        raise ValueError(_too_large(n, n2, max_pairs, advice="Raise max_pairs if the memory is there."))
    value = _emd(w / mass, w_ref / mass_ref, _sphere_cost(U, V, cost, p), num_iter_max)
    return SphereDistance(value ** (1.0 / p), mass, mass_ref)
