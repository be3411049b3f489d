"""Standard normal density, CDF and bivariate CDF as scalar device functions.

``bivariate_normal_cdf`` is Genz's algorithm (Drezner and Wesolowsky's integral in rho, as
refined by Genz, "Numerical computation of rectangular bivariate and trivariate normal and t
probabilities", Statistics and Computing 14, 2004): Gauss-Legendre rules of 6, 12 or 20 points
by the regime of |rho|, and for |rho| >= 0.925 an expansion around rho = +-1 whose remainder is
integrated with the 20-point rule. Absolute error about 1e-16 in float64 for every (h, k, rho),
rho = +-1 included (tests/test_gaussian.py measures it against scipy).

Every function works in float32 and float64 alike (constants through ``like``) and is compiled
for the GPU from this source (``_gpu_scalar.device_twins``).
"""
import math

from numba import njit

from ._scalar import like

# Gauss-Legendre nodes on [-1, 1] (the negative half; the rule is symmetric) and weights, for
# 6, 12 and 20 points: rows 0-2, 3-8 and 9-18 of these flat tables.
_GL_X = (
    -0.9324695142031522, -0.6612093864662647, -0.2386191860831970,
    -0.9815606342467191, -0.9041172563704750, -0.7699026741943050,
    -0.5873179542866171, -0.3678314989981802, -0.1252334085114692,
    -0.9931285991850949, -0.9639719272779138, -0.9122344282513259,
    -0.8391169718222188, -0.7463319064601508, -0.6360536807265150,
    -0.5108670019508271, -0.3737060887154196, -0.2277858511416451,
    -0.07652652113349733,
)
_GL_W = (
    0.1713244923791705, 0.3607615730481384, 0.4679139345726904,
    0.04717533638651177, 0.1069393259953183, 0.1600783285433464,
    0.2031674267230659, 0.2334925365383547, 0.2491470458134029,
    0.01761400713915212, 0.04060142980038694, 0.06267204833410906,
    0.08327674157670475, 0.1019301198172404, 0.1181945319615184,
    0.1316886384491766, 0.1420961093183821, 0.1491729864726037,
    0.1527533871307259,
)
_TWO_PI = 6.283185307179586


@njit(cache=True)
def normal_pdf(x):
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    return like(x, 0.3989422804014327) * math.exp(-like(x, 0.5) * x * x)


@njit(cache=True)
def normal_cdf(x):
    """Phi(x) = P(Z < x), by erfc (full relative accuracy in the lower tail)."""
    return like(x, 0.5) * math.erfc(-x * like(x, 0.7071067811865476))


@njit(cache=True)
def _rule(abs_rho):
    """(first row, number of rows) of the Gauss-Legendre half-rule for this |rho|."""
    if abs_rho < like(abs_rho, 0.3):
        return 0, 3
    if abs_rho < like(abs_rho, 0.75):
        return 3, 6
    return 9, 10


@njit(cache=True)
def _excess_small_rho(h, k, rho):
    """Phi_2(h, k; rho) - Phi(h) Phi(k) for |rho| < 0.925, without cancellation.

    Drezner-Wesolowsky: d Phi_2 / d rho is the bivariate density, so with rho = sin(theta)
    Phi_2 - Phi(h) Phi(k) = (1 / 2 pi) int_0^asin(rho) exp(-(h^2 + k^2 - 2 h k sin t) /
    (2 cos^2 t)) dt, integrated by Gauss-Legendre (entire integrand: geometric convergence).
    """
    one = like(h, 1.0)
    if rho == like(h, 0.0):
        return like(h, 0.0)
    first, count = _rule(abs(rho))
    hk = h * k
    hs = like(h, 0.5) * (h * h + k * k)
    asr = math.asin(rho)
    total = like(h, 0.0)
    for q in range(first, first + count):
        x = like(h, _GL_X[q])
        w = like(h, _GL_W[q])
        sn = math.sin(asr * (x + one) * like(h, 0.5))
        total += w * math.exp((sn * hk - hs) / (one - sn * sn))
        sn = math.sin(asr * (one - x) * like(h, 0.5))
        total += w * math.exp((sn * hk - hs) / (one - sn * sn))
    return total * asr / like(h, 2.0 * _TWO_PI)


@njit(cache=True)
def _upper_near_one(h, k, a2):
    """Genz's remainder for |rho| >= 0.925: P(X > h, Y > k) = Phi(-max(h, k)) - this
    (rho > 0), with k already reflected for rho < 0; a2 = 1 - rho^2 (zero at |rho| = 1).

    a2 is an argument, not computed from rho, so that a caller who knows s = sqrt(1 - rho^2)
    to full relative accuracy (from the component of one weight vector orthogonal to the
    other) can pass s^2: 1 - rho^2 from a rounded rho carries an absolute error of eps, the
    whole of s^2 at s ~ 1e-8, and Phi_2 then errs by about phi(h) s.
    """
    one = like(h, 1.0)
    half = like(h, 0.5)
    hk = h * k
    if a2 <= like(h, 0.0):
        return like(h, 0.0)
    a = math.sqrt(a2)
    bs = (h - k) * (h - k)
    c = (like(h, 4.0) - hk) / like(h, 8.0)
    d = (like(h, 12.0) - hk) / like(h, 16.0)
    total = a * math.exp(-half * (bs / a2 + hk)) * (
        one - c * (bs - a2) * (one - d * bs / like(h, 5.0)) / like(h, 3.0) + c * d * a2 * a2 / like(h, 5.0))
    if hk > like(h, -160.0):
        b = math.sqrt(bs)
        total -= (math.exp(-half * hk) * like(h, 2.5066282746310002) * normal_cdf(-b / a) * b
                  * (one - c * bs * (one - d * bs / like(h, 5.0)) / like(h, 3.0)))
    a = half * a
    for q in range(9, 19):
        x = like(h, _GL_X[q])
        w = like(h, _GL_W[q])
        xs = (a * (x + one)) * (a * (x + one))
        rs = math.sqrt(one - xs)
        total += a * w * (math.exp(-bs / (like(h, 2.0) * xs) - hk / (one + rs)) / rs
                          - math.exp(-half * (bs / xs + hk)) * (one + c * xs * (one + d * xs)))
        xs = a2 * (one - x) * (one - x) * like(h, 0.25)
        rs = math.sqrt(one - xs)
        total += a * w * math.exp(-half * (bs / xs + hk)) * (
            math.exp(-hk * (one - rs) / (like(h, 2.0) * (one + rs))) / rs - (one + c * xs * (one + d * xs)))
    return total / like(h, _TWO_PI)


@njit(cache=True)
def _saturate(x):
    """x clipped to [-40, 40]: Phi(-40) = 4e-350 is 0 in float64 (and float32), so Phi_2 does
    not change, while Genz's remainder overflows (exp(-h k / 2) with h k << 0) for |h| ~ 1e4."""
    bound = like(x, 40.0)
    return min(max(x, -bound), bound)


@njit(cache=True)
def bivariate_normal_cdf_s(h, k, rho, s):
    """Phi_2(h, k; rho) with s = sqrt(1 - rho^2) given to full relative accuracy (used for
    |rho| >= 0.925 only; see ``_upper_near_one``). Same arguments otherwise as
    :func:`bivariate_normal_cdf`."""
    zero = like(h, 0.0)
    h = _saturate(h)
    k = _saturate(k)
    if abs(rho) < like(h, 0.925):
        return normal_cdf(h) * normal_cdf(k) + _excess_small_rho(h, k, rho)
    # Genz works with the upper orthant P(X > -h, Y > -k) = Phi_2(h, k; rho).
    uh = -h
    uk = -k
    if rho < zero:
        uk = -uk
    remainder = _upper_near_one(uh, uk, s * s)
    if rho > zero:
        return normal_cdf(-max(uh, uk)) - remainder
    return max(zero, normal_cdf(-uh) - normal_cdf(-uk)) + remainder


@njit(cache=True)
def bivariate_normal_cdf(h, k, rho):
    """Phi_2(h, k; rho) = P(Z_1 < h, Z_2 < k) for standard normals with correlation rho.

    Parameters
    ----------
    h, k : float32 or float64
        Upper limits (may be +-inf).
    rho : same type
        Correlation in [-1, 1] (the caller clips rounding excursions).

    Genz's algorithm (module docstring); absolute error about 1e-16 in float64 (about 1e-7 in
    float32), rho = +-1 exactly included (then the probability of an interval of one normal).
    """
    one = like(h, 1.0)
    return bivariate_normal_cdf_s(h, k, rho, math.sqrt(max((one - rho) * (one + rho), like(h, 0.0))))


@njit(cache=True)
def bivariate_normal_excess(h, k, rho):
    """Phi_2(h, k; rho) - Phi(h) Phi(k): the part of Phi_2 that the correlation makes.

    Without cancellation for |rho| < 0.925 (``_excess_small_rho``); above, the difference of
    the two (absolute error about 1e-16 still). Used where Phi_2 - Phi Phi is what a formula
    needs (the erf pair term), so that a small correlation gives a small relative error.
    """
    if abs(rho) < like(h, 0.925):
        return _excess_small_rho(h, k, rho)
    return bivariate_normal_cdf(h, k, rho) - normal_cdf(h) * normal_cdf(k)
