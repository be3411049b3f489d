"""Activations as registry entries: what meanfield knows about each sigma besides its kernel code.

The compiled code of sigma, sigma' and sigma'' lives in ``kernels/_scalar.py`` (numba needs one
static dispatch on the activation's integer code; the GPU device functions are made from that
code). Everything else is here, one :class:`ActivationEntry` per activation: its numpy twin
(the signal-propagation maps and the tests use it), which closed forms exist for its
population risk, and its symmetry. The problems, the experiment-file checks, the isotropic
problem and the signal maps read these entries; none of them lists activations.

A new activation is its code in ``kernels/_scalar.py``, its entry here, and its numpy
reference in ``tests/test_kernels.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from .. import kernels
from ._registry import Registry

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ActivationEntry:
    """One activation.

    Attributes
    ----------
    name : str
        Its name in models and experiment files (a key of ``kernels.ACTIVATION_CODES``).
    sigma, sigma_prime : callable
        numpy twins of the kernel code: ndarray (float64) -> ndarray, elementwise
        (relu'(0) = 0, as in the kernels).
    closed_form : bool
        Whether the bias-free population risk has a closed form (``kernels.population``:
        the arc-cosine kernel for relu, the arcsine kernel for erf(z/sqrt 2), linear).
    bias_closed_form : bool
        Whether the population risk with biases has a closed form (``kernels.population_bias``).
    odd : bool
        sigma(-z) = -sigma(z) up to a constant (the isotropic problem uses this symmetry).
    """

    name: str
    sigma: Callable
    sigma_prime: Callable
    closed_form: bool = False
    bias_closed_form: bool = False
    odd: bool = False

    @property
    def code(self) -> int:
        """The activation's integer code in the kernels."""
        return kernels.ACTIVATION_CODES[self.name]


ACTIVATION_ENTRIES = Registry("activation")


def register_activation(entry: ActivationEntry) -> ActivationEntry:
    """Add an activation to :data:`ACTIVATION_ENTRIES`; its kernel code must exist.

    Parameters
    ----------
    entry : ActivationEntry

    Returns
    -------
    ActivationEntry
        ``entry``.
    """
    if entry.name not in kernels.ACTIVATION_CODES:
        raise ValueError(f"{entry.name!r} has no code in kernels.ACTIVATION_CODES (kernels/_scalar.py)")
    return ACTIVATION_ENTRIES.register(entry)


def _sigmoid_prime(z):
    s = special.expit(z)
    return s * (1.0 - s)


register_activation(ActivationEntry("relu", lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64),
                                    closed_form=True, bias_closed_form=True))
register_activation(ActivationEntry("sigmoid", special.expit, _sigmoid_prime, odd=True))
register_activation(ActivationEntry("tanh", np.tanh, lambda z: 1.0 - np.tanh(z) ** 2, odd=True))
register_activation(ActivationEntry("erf", lambda z: special.erf(z / math.sqrt(2.0)),
                                    lambda z: _SQRT_2_OVER_PI * np.exp(-0.5 * z * z),
                                    closed_form=True, bias_closed_form=True, odd=True))
register_activation(ActivationEntry("softplus", lambda z: np.logaddexp(0.0, z), special.expit))
register_activation(ActivationEntry("linear", lambda z: z.copy(), np.ones_like, closed_form=True,
                                    bias_closed_form=True, odd=True))
register_activation(ActivationEntry("gelu", lambda z: z * special.ndtr(z),
                                    lambda z: special.ndtr(z) + z * np.exp(-0.5 * z * z) * _INV_SQRT_2PI))
register_activation(ActivationEntry("normal_cdf", special.ndtr, lambda z: np.exp(-0.5 * z * z) * _INV_SQRT_2PI,
                                    bias_closed_form=True))


def activations_where(predicate) -> tuple[str, ...]:
    """Names of the registered activations whose entry satisfies ``predicate``, in order.

    Parameters
    ----------
    predicate : callable
        ``predicate(entry) -> bool``.

    Returns
    -------
    tuple of str
    """
    return tuple(name for name, entry in ACTIVATION_ENTRIES.items() if predicate(entry))
