"""Scalar device functions shared by every kernel: typed constants, activations, losses.

Activations and losses are selected by small integer codes so that one compiled kernel
serves all of them (numba caches one machine-code version per dtype, not per activation).
Adding an activation means writing its value, first and second derivatives here, giving it
the next code and registering its name in ``ACTIVATION_CODES``; nothing else changes.

All functions are written for float32 and float64 alike: every constant goes through
:func:`like`, so a float32 kernel never promotes to double precision.
"""
import math

from numba import njit
from numba.extending import overload

# Activation codes (the order is part of the compiled kernels' interface).
RELU = 0
SIGMOID = 1
TANH = 2
ERF = 3  # erf(z / sqrt(2)), the activation with the arcsine closed form
SOFTPLUS = 4
LINEAR = 5
GELU = 6  # z Phi(z), Phi the standard normal CDF (exact, not the tanh approximation)
NORMAL_CDF = 7  # Phi(z): the sigmoid-like activation whose pair terms have a closed form

ACTIVATION_CODES = {
    "relu": RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "erf": ERF,
    "softplus": SOFTPLUS,
    "linear": LINEAR,
    "gelu": GELU,
    "normal_cdf": NORMAL_CDF,
}

# Loss codes; ``f`` is the prediction and ``y`` the label.
SQUARED = 0  # (y - f)^2 / 2
LOGISTIC = 1  # log(1 + exp(-y f)), labels +-1
EXPONENTIAL = 2  # exp(-y f), labels +-1

LOSS_CODES = {"squared": SQUARED, "logistic": LOGISTIC, "exponential": EXPONENTIAL}


def like(z, value):
    """``value`` converted to the floating type of ``z`` (works inside numba kernels)."""
    return type(z)(value)


@overload(like, inline="always")
def _like_overload(z, value):
    target = z

    def impl(z, value):
        return target(value)

    return impl


@njit(cache=True)
def _sigmoid(z):
    one = like(z, 1.0)
    if z >= like(z, 0.0):
        return one / (one + math.exp(-z))
    e = math.exp(z)
    return e / (one + e)


@njit(cache=True)
def activation(z, code):
    """sigma(z) for the activation ``code``.

    Parameters
    ----------
    z : float32 or float64
        Pre-activation (a scalar).
    code : int
        Activation code, a value of ``ACTIVATION_CODES``; an unknown code is the identity
        (``linear``).

    Returns
    -------
    float32 or float64
        sigma(z), in the type of z.
    """
    zero = like(z, 0.0)
    if code == RELU:
        return z if z > zero else zero
    elif code == SIGMOID:
        return _sigmoid(z)
    elif code == TANH:
        return math.tanh(z)
    elif code == ERF:
        return math.erf(z * like(z, 0.7071067811865476))
    elif code == SOFTPLUS:
        return math.log1p(math.exp(-abs(z))) + (z if z > zero else zero)
    elif code == GELU:
        # z Phi(z) = z (1 + erf(z / sqrt 2)) / 2; erfc keeps the relative accuracy for z << 0
        return like(z, 0.5) * z * math.erfc(-z * like(z, 0.7071067811865476))
    elif code == NORMAL_CDF:
        return like(z, 0.5) * math.erfc(-z * like(z, 0.7071067811865476))
    else:
        return z


@njit(cache=True)
def activation_derivative(z, code):
    """sigma'(z) for the activation ``code`` (relu'(0) = 0).

    Parameters
    ----------
    z : float32 or float64
        Pre-activation (a scalar).
    code : int
        Activation code, a value of ``ACTIVATION_CODES``; an unknown code is the identity
        (derivative 1).

    Returns
    -------
    float32 or float64
        sigma'(z), in the type of z.
    """
    zero = like(z, 0.0)
    one = like(z, 1.0)
    if code == RELU:
        return one if z > zero else zero
    elif code == SIGMOID:
        s = _sigmoid(z)
        return s * (one - s)
    elif code == TANH:
        t = math.tanh(z)
        return one - t * t
    elif code == ERF:
        # d/dz erf(z/sqrt 2) = sqrt(2/pi) exp(-z^2/2)
        return like(z, 0.7978845608028654) * math.exp(-like(z, 0.5) * z * z)
    elif code == SOFTPLUS:
        return _sigmoid(z)
    elif code == GELU:
        # Phi(z) + z phi(z), phi(z) = exp(-z^2/2) / sqrt(2 pi)
        phi = like(z, 0.3989422804014327) * math.exp(-like(z, 0.5) * z * z)
        return like(z, 0.5) * math.erfc(-z * like(z, 0.7071067811865476)) + z * phi
    elif code == NORMAL_CDF:
        return like(z, 0.3989422804014327) * math.exp(-like(z, 0.5) * z * z)
    else:
        return one


@njit(cache=True)
def activation_second_derivative(z, code):
    """sigma''(z) for the activation ``code`` (relu'' = 0 away from the kink z = 0, where the
    second derivative is a Dirac mass that the Hessians of this package leave out).

    Parameters
    ----------
    z : float32 or float64
        Pre-activation (a scalar).
    code : int
        Activation code, a value of ``ACTIVATION_CODES``; relu, linear and an unknown code
        give 0.

    Returns
    -------
    float32 or float64
        sigma''(z), in the type of z.
    """
    zero = like(z, 0.0)
    one = like(z, 1.0)
    two = like(z, 2.0)
    if code == SIGMOID:
        s = _sigmoid(z)
        return s * (one - s) * (one - two * s)
    elif code == TANH:
        t = math.tanh(z)
        return -two * t * (one - t * t)
    elif code == ERF:
        # d^2/dz^2 erf(z/sqrt 2) = -z sqrt(2/pi) exp(-z^2/2)
        return -z * like(z, 0.7978845608028654) * math.exp(-like(z, 0.5) * z * z)
    elif code == SOFTPLUS:
        s = _sigmoid(z)
        return s * (one - s)
    elif code == GELU:
        # (2 - z^2) phi(z)
        return (two - z * z) * like(z, 0.3989422804014327) * math.exp(-like(z, 0.5) * z * z)
    elif code == NORMAL_CDF:
        return -z * like(z, 0.3989422804014327) * math.exp(-like(z, 0.5) * z * z)
    else:  # relu (away from 0) and linear
        return zero


@njit(cache=True)
def loss(f, y, code):
    """Pointwise loss l(f, y).

    Parameters
    ----------
    f : float32 or float64
        Prediction (a scalar).
    y : float32 or float64
        Label, in the type of f (+-1 for the logistic and exponential losses).
    code : int
        Loss code, a value of ``LOSS_CODES``: squared (y - f)^2 / 2, logistic
        log(1 + exp(-y f)) (computed without overflow), exponential exp(-y f) (any other code).

    Returns
    -------
    float32 or float64
        l(f, y), in the type of f.
    """
    if code == SQUARED:
        r = y - f
        return like(f, 0.5) * r * r
    elif code == LOGISTIC:
        z = -y * f  # log(1 + e^z), computed without overflow
        return math.log1p(math.exp(-abs(z))) + (z if z > like(f, 0.0) else like(f, 0.0))
    else:
        return math.exp(-y * f)


@njit(cache=True)
def loss_derivative(f, y, code):
    """dl/df at (f, y).

    Parameters
    ----------
    f : float32 or float64
        Prediction (a scalar).
    y : float32 or float64
        Label, in the type of f.
    code : int
        Loss code, a value of ``LOSS_CODES`` (any other code: exponential).

    Returns
    -------
    float32 or float64
        dl/df: f - y, -y sigmoid(-y f) or -y exp(-y f), in the type of f.
    """
    if code == SQUARED:
        return f - y
    elif code == LOGISTIC:
        return -y * _sigmoid(-y * f)
    else:
        return -y * math.exp(-y * f)


@njit(cache=True)
def loss_second_derivative(f, y, code):
    """d^2 l / df^2 at (f, y) (labels +-1 for the classification losses, y^2 = 1).

    Parameters
    ----------
    f : float32 or float64
        Prediction (a scalar).
    y : float32 or float64
        Label, in the type of f.
    code : int
        Loss code, a value of ``LOSS_CODES`` (any other code: exponential).

    Returns
    -------
    float32 or float64
        d^2 l / df^2, in the type of f (1 for the squared loss).
    """
    if code == SQUARED:
        return like(f, 1.0)
    elif code == LOGISTIC:
        s = _sigmoid(-y * f)
        return y * y * s * (like(f, 1.0) - s)
    else:
        return y * y * math.exp(-y * f)
