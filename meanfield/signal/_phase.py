"""The order-to-chaos phase diagram: the critical curve chi_1 = 1 and the depth scale xi_c."""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from ._maps import ORDER, ORDER2, chi_1, fixed_points, q_fixed_point


def chi_1_at(sigma_w2: float, sigma_b2: float, activation: str, method: str = "auto", order: int = ORDER) -> float:
    """chi_1 at the fixed point q*(sigma_w^2, sigma_b^2).

    Parameters
    ----------
    sigma_w2, sigma_b2 : float
        Weight and bias variances sigma_w^2, sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    method : {"auto", "closed_form", "quadrature"}
    order : int
        Gauss-Hermite order of the quadrature.

    Returns
    -------
    float
        :func:`chi_1` at :func:`q_fixed_point` (iterated from q0 = 1).
    """
    q_star = q_fixed_point(sigma_w2, sigma_b2, activation, method, order=order)
    return chi_1(q_star, sigma_w2, activation, method, order)


def critical_sigma_w2(sigma_b2: float, activation: str, bracket=(1e-3, 1e3), method: str = "auto",
                      order: int = ORDER, xtol: float = 1e-12) -> float:
    """The sigma_w^2 on the critical line chi_1(sigma_w^2, sigma_b^2) = 1, by Brent's method.

    Parameters
    ----------
    sigma_b2 : float
    activation : str
    bracket : (float, float)
        Interval of sigma_w^2 searched; chi_1 - 1 must change sign on it (else NaN: no
        transition there, e.g. sigmoid, whose chi_1 <= sigma_w^2 / 16, needs sigma_w^2 >= 16).
    xtol : float
        Absolute tolerance in sigma_w^2.

    Returns
    -------
    float
        The critical sigma_w^2 (tanh, sigma_b^2 = 0: 1; relu: 2 for every sigma_b^2).
    """
    def gap(sw2):
        return chi_1_at(sw2, sigma_b2, activation, method, order) - 1.0

    lo, hi = bracket
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo == 0:
        return float(lo)
    if g_hi == 0:
        return float(hi)
    if np.sign(g_lo) == np.sign(g_hi):
        return math.nan
    return optimize.brentq(gap, lo, hi, xtol=xtol, rtol=1e-14)


def critical_curve(sigma_b2, activation: str, bracket=(1e-3, 1e3), method: str = "auto",
                   order: int = ORDER) -> np.ndarray:
    """The critical sigma_w^2 for each sigma_b^2 (array (n,) float64; NaN where no transition).

    Parameters
    ----------
    sigma_b2 : float or array_like, shape (n,)
        Bias variances sigma_b^2.
    activation : str
        One of ``ACTIVATIONS``.
    bracket : (float, float)
        Interval of sigma_w^2 searched (:func:`critical_sigma_w2`).
    method : {"auto", "closed_form", "quadrature"}
    order : int
        Gauss-Hermite order of the quadrature.

    Returns
    -------
    ndarray, shape (n,), float64
        :func:`critical_sigma_w2` of each sigma_b^2.
    """
    return np.array([critical_sigma_w2(float(b), activation, bracket, method, order)
                     for b in np.atleast_1d(sigma_b2)])


def xi_c_grid(sigma_w2, sigma_b2, activation: str, method: str = "auto", order: int = ORDER,
              order2: int = ORDER2):
    """The correlation depth scale xi_c and chi_1 over a grid.

    Parameters
    ----------
    sigma_w2 : array_like, shape (nw,)
    sigma_b2 : array_like, shape (nb,)

    Returns
    -------
    (xi_c, chi_1) : float64 arrays of shape (nb, nw) (rows: sigma_b^2, columns: sigma_w^2)
    """
    sigma_w2, sigma_b2 = np.atleast_1d(sigma_w2), np.atleast_1d(sigma_b2)
    xi = np.empty((sigma_b2.size, sigma_w2.size))
    chi = np.empty_like(xi)
    for i, b in enumerate(sigma_b2):
        for j, w in enumerate(sigma_w2):
            point = fixed_points(float(w), float(b), activation, method, order, order2)
            xi[i, j], chi[i, j] = point.xi_c, point.chi_1
    return xi, chi
