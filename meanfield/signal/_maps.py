"""The mean-field maps of signal propagation in deep random networks (SCIENCE.md section 6).

A deep network with weights W^l_ij ~ N(0, sigma_w^2 / N) and biases b^l_i ~ N(0, sigma_b^2),
pre-activations h^l = W^l phi(h^{l-1}) + b^l (h^1 = W^1 x + b^1), has, as the width N grows,
layer statistics q_l = |h^l|^2 / N and c_l = h^l_a . h^l_b / (N sqrt(q_l^a q_l^b)) of two
inputs a, b that follow deterministic maps (Poole et al. 2016, Schoenholz et al. 2016):

    variance     q' = V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2,            z ~ N(0, 1)
    covariance   q12' = sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2,  (u1, u2) ~ N(0, [[q1, q12], [q12, q2]])
    correlation  c' = C(c) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*   with q1 = q2 = q*, q12 = q* c
    chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]           (slope of C at c = 1: order < 1 < chaos)
    chi_c = sigma_w^2 E[phi'(u1) phi'(u2)] at c*      (slope of C at its stable fixed point c*)
    xi_q = -1 / ln V'(q*),   V'(q) = sigma_w^2 E[phi(sqrt(q) z) phi'(sqrt(q) z) z] / sqrt(q)
    xi_c = -1 / ln chi_c

so that |q_l - q*| ~ exp(-l / xi_q) and |c_l - c*| ~ exp(-l / xi_c).

Expectations are computed in closed form where one exists (``relu``: arc-cosine kernel;
``erf`` = erf(z / sqrt 2): arcsine kernel; ``linear``) and otherwise by Gauss-Hermite
quadrature (probabilists' rule; 1-D of order ``order`` = 100, 2-D as the tensor rule of order
``order2`` = 64 in the Cholesky coordinates u1 = sqrt(q1) z1, u2 = sqrt(q2) (c z1 + sqrt(1 - c^2) z2)),
with the order raised with the variance (200 q in 1-D, 56 q in 2-D, capped at 4000 and 256)
because the features of phi shrink to 1 / sqrt(q) in z. Measured accuracy at the defaults for
q in [0.3, 3] and c in [-0.95, 0.95] (tests/test_signal.py, ``test_quadrature_*``): erf, against
the closed forms: 1e-12 relative in 1-D, 5e-12 q (value) and 2.4e-10 (E phi' phi') in 2-D;
tanh, sigmoid, softplus against order 200 / 300: below 1e-9 in 1-D and 1e-5 in 2-D (tanh
at q = 3 the worst); relu: exact in 1-D (even order: no node on the kink, and the symmetric
rule halves z^2 exactly), but in 2-D only 2e-3 q in the value and 3e-2 in E[phi'(u1) phi'(u2)]
(a step function), so ``method="auto"`` uses the closed forms for relu, erf and linear.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from ..engine._activations import ACTIVATION_ENTRIES, activations_where

ACTIVATIONS = tuple(ACTIVATION_ENTRIES)
CLOSED_FORM = activations_where(lambda entry: entry.closed_form)
METHODS = ("auto", "closed_form", "quadrature")
ORDER = 100  # even: no node at the kink z = 0 (relu'(0) would count a whole node weight)
ORDER2 = 64
Q_INFINITE = 1e15  # a variance map that reaches this from q = 1 has no finite fixed point
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def phi(z, activation: str):
    """The activation sigma(z) in numpy (the same functions as ``meanfield.kernels.activation``).

    Parameters
    ----------
    z : float or array_like
        Pre-activations.
    activation : str
        One of ``ACTIVATIONS``.

    Returns
    -------
    ndarray, float64
        sigma(z), of the shape of z.
    """
    z = np.asarray(z, dtype=np.float64)
    return _entry(activation).sigma(z)


def dphi(z, activation: str):
    """sigma'(z) in numpy (relu'(0) = 0, as in the kernels).

    Parameters
    ----------
    z : float or array_like
        Pre-activations.
    activation : str
        One of ``ACTIVATIONS``.

    Returns
    -------
    ndarray, float64
        sigma'(z), of the shape of z.
    """
    z = np.asarray(z, dtype=np.float64)
    return _entry(activation).sigma_prime(z)


def _entry(activation: str):
    entry = ACTIVATION_ENTRIES.get(activation)
    if entry is None:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return entry


@functools.lru_cache(maxsize=32)
def gauss_hermite(order: int):
    """Probabilists' Gauss-Hermite rule for N(0, 1): nodes (order,) and weights summing to 1
    (cached, read-only arrays).

    Parameters
    ----------
    order : int
        Number of nodes.

    Returns
    -------
    nodes : ndarray, shape (order,), float64
        Ascending, symmetric about 0; read-only.
    weights : ndarray, shape (order,), float64
        Positive, summing to 1: sum_k weights[k] f(nodes[k]) approximates E f(z), z ~ N(0, 1);
        read-only.
    """
    nodes, weights = special.roots_hermitenorm(int(order))  # numpy's hermegauss overflows beyond ~170
    weights = weights / weights.sum()
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


def _check(activation: str, method: str) -> bool:
    """Whether to use the closed form."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "closed_form" and activation not in CLOSED_FORM:
        raise ValueError(f"no closed form for {activation!r}: closed forms exist for {CLOSED_FORM}")
    return method != "quadrature" and activation in CLOSED_FORM


# --------------------------------------------------------------------------- expectations
def _order_for(order: int, q, cap: int, factor: float) -> int:
    """The rule's order, raised to factor * q (at most ``cap``): in z, the features of phi at
    scale 1 shrink to 1 / sqrt(q), and the nodes of an order-n rule near 0 are about
    pi / sqrt(2 n) apart."""
    q_max = float(np.max(q)) if np.size(q) else 0.0
    if not math.isfinite(q_max):
        return int(order)
    wanted = min(cap, int(math.ceil(factor * q_max)))
    return int(max(order, wanted + (wanted % 2)))


def gaussian_moments(q, activation: str, method: str = "auto", order: int = ORDER):
    """One-dimensional Gaussian expectations at variance q.

    Parameters
    ----------
    q : float or ndarray
        Variance(s) >= 0.
    activation : str
    method : {"auto", "closed_form", "quadrature"}
    order : int
        Gauss-Hermite order of the quadrature.

    Returns
    -------
    (E phi^2, E phi'^2, dE phi^2 / dq) : three float64 arrays of the shape of q,
        expectations over z ~ N(0, 1) of phi(sqrt(q) z)^2, phi'(sqrt(q) z)^2 and the derivative
        of the first in q, E[phi phi'(sqrt(q) z) z] / sqrt(q) (Gaussian integration by parts).
    """
    q = np.asarray(q, dtype=np.float64)
    if _check(activation, method):
        if activation == "relu":
            return 0.5 * q, np.full_like(q, 0.5), np.full_like(q, 0.5)
        if activation == "linear":
            return q.copy(), np.ones_like(q), np.ones_like(q)
        # erf(z / sqrt 2): E phi^2 = (2/pi) arcsin(q / (1 + q)); E phi'^2 = (2/pi) / sqrt(1 + 2q)
        second = (2.0 / math.pi) * np.arcsin(q / (1.0 + q))
        slope = (2.0 / math.pi) / ((1.0 + q) * np.sqrt(1.0 + 2.0 * q))
        return second, (2.0 / math.pi) / np.sqrt(1.0 + 2.0 * q), slope
    z, w = gauss_hermite(_order_for(order, q, 4000, 200.0))
    root = np.sqrt(q)[..., None]
    u = root * z
    f = phi(u, activation)
    g = dphi(u, activation)
    second = f**2 @ w
    derivative = g**2 @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        # at q = 0 every node sits at u = 0: the limit phi'(0)^2 (+ phi(0) phi''(0), 0 for the odd
        # activations, the only ones whose fixed point can be q* = 0)
        slope = np.where(q > 0, (f * g * z) @ w / np.where(q > 0, np.sqrt(q), 1.0), g[..., 0] ** 2)
    return second, derivative, slope


def pair_moments(q1, q2, q12, activation: str, method: str = "auto", order2: int = ORDER2):
    """Two-dimensional Gaussian expectations E[phi(u1) phi(u2)] and E[phi'(u1) phi'(u2)].

    Parameters
    ----------
    q1, q2, q12 : float or ndarray (broadcast)
        Covariance [[q1, q12], [q12, q2]] of (u1, u2); q1, q2 > 0, |q12| <= sqrt(q1 q2).
    activation, method : str
    order2 : int
        Order of each factor of the tensor Gauss-Hermite rule (order2^2 nodes).

    Returns
    -------
    (E phi(u1) phi(u2), E phi'(u1) phi'(u2)) : float64 arrays of the broadcast shape.
    """
    q1, q2, q12 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (q1, q2, q12)))
    r1, r2 = np.sqrt(q1), np.sqrt(q2)
    c = np.clip(q12 / (r1 * r2), -1.0, 1.0)
    if _check(activation, method):
        if activation == "linear":
            return q12.copy(), np.ones_like(q12)
        if activation == "relu":
            theta = np.arccos(c)
            value = r1 * r2 * (np.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
            return value, (math.pi - theta) / (2 * math.pi)
        det = (1.0 + q1) * (1.0 + q2) - q12**2
        value = (2.0 / math.pi) * np.arcsin(q12 / np.sqrt((1.0 + q1) * (1.0 + q2)))
        return value, (2.0 / math.pi) / np.sqrt(det)
    z, w = gauss_hermite(_order_for(order2, np.maximum(q1, q2), 256, 56.0))
    z1, z2 = z[:, None], z[None, :]
    weight = w[:, None] * w[None, :]
    s = np.sqrt(np.maximum(1.0 - c**2, 0.0))
    u1 = r1[..., None, None] * z1
    u2 = r2[..., None, None] * (c[..., None, None] * z1 + s[..., None, None] * z2)
    value = np.einsum("...ij,ij->...", phi(u1, activation) * phi(u2, activation), weight)
    derivative = np.einsum("...ij,ij->...", dphi(u1, activation) * dphi(u2, activation), weight)
    return value, derivative


# --------------------------------------------------------------------------- maps
def variance_map(q, sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto",
                 order: int = ORDER):
    """q' = V(q) = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (float or array, like q).

    Parameters
    ----------
    q : float or array_like
        Variance(s) q >= 0 of the pre-activations of a layer.
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order : int
        Gauss-Hermite order of the quadrature (raised with q, see the module docstring).

    Returns
    -------
    float64 or ndarray
        q' of the next layer, of the shape of q.
    """
    return sigma_w2 * gaussian_moments(q, activation, method, order)[0] + sigma_b2


def covariance_map(q1, q2, q12, sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto",
                   order2: int = ORDER2):
    """q12' = sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2 for (u1, u2) ~ N(0, [[q1, q12], [q12, q2]]).

    Parameters
    ----------
    q1, q2, q12 : float or array_like (broadcast)
        Covariance of the pre-activations of two inputs; q1, q2 > 0, |q12| <= sqrt(q1 q2).
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order2 : int
        Order of each factor of the tensor Gauss-Hermite rule.

    Returns
    -------
    float64 or ndarray
        q12' of the next layer, of the broadcast shape.
    """
    return sigma_w2 * pair_moments(q1, q2, q12, activation, method, order2)[0] + sigma_b2


def correlation_map(c, q_star: float, sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto",
                    order2: int = ORDER2):
    """c' = C(c) = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*, u1, u2 of variance q*,
    correlation c (float or array, like c). C(1) = 1 at the fixed point q*.

    Parameters
    ----------
    c : float or array_like
        Correlation(s) in [-1, 1].
    q_star : float
        The variance fixed point q* (:func:`q_fixed_point`), > 0.
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order2 : int
        Order of each factor of the tensor Gauss-Hermite rule.

    Returns
    -------
    float64 or ndarray
        c' of the next layer, of the shape of c.
    """
    c = np.asarray(c, dtype=np.float64)
    return covariance_map(q_star, q_star, q_star * c, sigma_w2, sigma_b2, activation, method, order2) / q_star


def q_fixed_point(sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto", q0: float = 1.0,
                  order: int = ORDER) -> float:
    """The fixed point q* = V(q*) reached by iterating the variance map from q0.

    V is increasing in q for every supported activation, so the iterates move monotonically
    to the nearest fixed point in the direction of V(q0) - q0; it is bracketed and found by
    Brent's method (relative tolerance 1e-14). Returns ``inf`` when the iterates grow without
    bound (relu or softplus with sigma_w^2 >= 2, linear with sigma_w^2 >= 1) and 0 when they
    decay to 0 (odd activations without bias in the ordered phase).

    Parameters
    ----------
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    q0 : float
        Starting variance, > 0.
    order : int
        Gauss-Hermite order of the quadrature.

    Returns
    -------
    float
        q* >= 0, or ``inf``.
    """
    def gap(q):
        return float(variance_map(q, sigma_w2, sigma_b2, activation, method, order)) - q

    g0 = gap(q0)
    if g0 == 0:
        return float(q0)
    if g0 > 0:
        lo, hi = q0, 2.0 * q0
        while gap(hi) > 0:
            lo, hi = hi, 2.0 * hi
            if hi > Q_INFINITE:
                return math.inf
        return optimize.brentq(gap, lo, hi, xtol=1e-300, rtol=1e-14)
    grid = np.geomspace(1e-16, q0, 200)[:-1]
    values = variance_map(grid, sigma_w2, sigma_b2, activation, method, order) - grid
    above = np.flatnonzero(values >= 0)
    if above.size == 0:
        return 0.0
    i = above[-1]
    if values[i] == 0:
        return float(grid[i])
    return optimize.brentq(gap, grid[i], grid[i + 1] if i + 1 < grid.size else q0, xtol=1e-300, rtol=1e-14)


def chi_1(q_star: float, sigma_w2: float, activation: str, method: str = "auto", order: int = ORDER) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2], the slope of the correlation map at c = 1.

    With q* = inf (unbounded growth) the limit of large q is used (evaluated at q = 1e12).

    Parameters
    ----------
    q_star : float
        The variance fixed point q* (:func:`q_fixed_point`), possibly ``inf``.
    sigma_w2 : float
        Weight variance sigma_w^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order : int
        Gauss-Hermite order of the quadrature.

    Returns
    -------
    float
        chi_1: < 1 ordered phase, > 1 chaotic phase.
    """
    q = 1e12 if math.isinf(q_star) else q_star
    return float(sigma_w2 * gaussian_moments(q, activation, method, order)[1])


def c_fixed_point(q_star: float, sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto",
                  order: int = ORDER, order2: int = ORDER2) -> float:
    """The stable fixed point c* of the correlation map on [0, 1].

    C(1) = 1 with slope chi_1. When chi_1 <= 1 (order) c* = 1. When chi_1 > 1 (chaos) C is
    convex on [0, 1] with C(0) >= 0 (its Hermite expansion has non-negative coefficients), so
    it has exactly one other fixed point in [0, 1), stable; found by Brent's method
    (absolute tolerance 1e-13).

    Parameters
    ----------
    q_star : float
        The variance fixed point q* (:func:`q_fixed_point`).
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order, order2 : int
        Gauss-Hermite orders of the 1-D rule (for chi_1) and of each factor of the 2-D rule.

    Returns
    -------
    float
        c* in [0, 1]; 1 when q* = 0, NaN when q* is ``inf`` (or NaN).
    """
    if not math.isfinite(q_star) or q_star <= 0:
        return 1.0 if q_star <= 0 else math.nan
    if chi_1(q_star, sigma_w2, activation, method, order) <= 1.0:
        return 1.0

    def gap(c):
        return float(correlation_map(c, q_star, sigma_w2, sigma_b2, activation, method, order2)) - c

    g0 = gap(0.0)
    if g0 <= 1e-14:
        return 0.0
    eps = 0.5
    while gap(1.0 - eps) >= 0:
        eps *= 0.5
        if eps < 1e-15:
            return 1.0
    return optimize.brentq(gap, 0.0, 1.0 - eps, xtol=1e-13, rtol=1e-14)


@dataclass(frozen=True)
class SignalPropagation:
    """Fixed points and depth scales of one (activation, sigma_w^2, sigma_b^2).

    Attributes
    ----------
    q_star, c_star : float
        Fixed points of the variance and (stable) correlation maps.
    chi_1 : float
        sigma_w^2 E[phi'(sqrt(q*) z)^2]; < 1 ordered, > 1 chaotic.
    chi_c : float
        Slope of the correlation map at c* (equal to chi_1 when c* = 1).
    slope_q : float
        V'(q*), the slope of the variance map at its fixed point.
    xi_q, xi_c : float
        Depth scales -1 / ln V'(q*) and -1 / ln chi_c (inf at criticality).
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    slope_q: float
    xi_q: float
    xi_c: float


def _depth(slope: float) -> float:
    if slope >= 1:
        return math.inf
    if slope <= 0:
        return 0.0
    return -1.0 / math.log(slope)


def fixed_points(sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto", order: int = ORDER,
                 order2: int = ORDER2) -> SignalPropagation:
    """q*, c*, chi_1, chi_c and the depth scales xi_q, xi_c (see the module docstring).

    A depth scale is inf where its slope is >= 1 (criticality, or no finite q*) and 0 where
    the slope is 0 (convergence in one layer).

    Parameters
    ----------
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order, order2 : int
        Gauss-Hermite orders of the 1-D rule and of each factor of the 2-D rule.

    Returns
    -------
    SignalPropagation
    """
    q_star = q_fixed_point(sigma_w2, sigma_b2, activation, method, order=order)
    chi1 = chi_1(q_star, sigma_w2, activation, method, order)
    c_star = c_fixed_point(q_star, sigma_w2, sigma_b2, activation, method, order, order2)
    if math.isfinite(q_star) and q_star > 0:
        slope_q = float(sigma_w2 * gaussian_moments(q_star, activation, method, order)[2])
        if c_star == 1.0:
            chi_c = chi1
        else:
            chi_c = float(sigma_w2 * pair_moments(q_star, q_star, q_star * c_star, activation, method, order2)[1])
    elif q_star == 0:
        slope_q = float(sigma_w2 * gaussian_moments(0.0, activation, method, order)[2])
        chi_c = chi1
    else:
        slope_q, chi_c = math.inf, chi1
    return SignalPropagation(activation, float(sigma_w2), float(sigma_b2), q_star, c_star, chi1, chi_c,
                             slope_q, _depth(slope_q), _depth(chi_c))


def propagate(q0, c0, depth: int, sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto",
              order: int = ORDER, order2: int = ORDER2):
    """Layer-by-layer theory of q_l and c_l for input pairs, l = 0 .. depth.

    Layer 0 is the input: q_0 = |x|^2 / N, c_0 = the inputs' correlation. Layer 1 is linear
    in the input (h^1 = W^1 x + b^1): q_1 = sigma_w^2 q_0 + sigma_b^2,
    q12_1 = sigma_w^2 q_0 c_0 + sigma_b^2; then q_{l+1} = V(q_l) and
    q12_{l+1} = sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2 with covariance [[q_l, q12_l], [q12_l, q_l]].

    Parameters
    ----------
    q0, c0 : array_like, shape (P,)
        Input variance and correlation of each pair (both inputs of a pair have variance q0).
    depth : int

    Returns
    -------
    (q, c) : float64 arrays of shape (depth + 1, P)
    """
    q0, c0 = np.broadcast_arrays(np.atleast_1d(np.asarray(q0, dtype=np.float64)),
                                 np.atleast_1d(np.asarray(c0, dtype=np.float64)))
    q = np.empty((depth + 1, q0.size))
    q12 = np.empty_like(q)
    q[0], q12[0] = q0, q0 * c0
    for layer in range(1, depth + 1):
        if layer == 1:
            q[1] = sigma_w2 * q0 + sigma_b2
            q12[1] = sigma_w2 * q0 * c0 + sigma_b2
        else:
            q[layer] = variance_map(q[layer - 1], sigma_w2, sigma_b2, activation, method, order)
            q12[layer] = covariance_map(q[layer - 1], q[layer - 1], q12[layer - 1], sigma_w2, sigma_b2, activation,
                                        method, order2)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = q12 / q
    return q, c
