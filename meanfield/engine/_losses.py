"""Losses as registry entries: what meanfield knows about each loss besides its kernel code.

The compiled l, l' and l'' live in ``kernels/_scalar.py`` (``LOSS_CODES``). Here, one
:class:`LossEntry` per loss: its numpy twin (the held-out risk of the lazy-training analysis
uses it) and what kind of labels it takes. The problems, the teacher's labels, the
experiment-file checks and the memory estimate read these entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import kernels
from ._registry import Registry


@dataclass(frozen=True)
class LossEntry:
    """One loss l(f, y) of a prediction f and a label y.

    Attributes
    ----------
    name : str
        Its name in problems and experiment files (a key of ``kernels.LOSS_CODES``).
    value : callable
        numpy twin of the kernel code: ``value(f, y)`` elementwise, float64.
    classification : bool
        Labels are signs y = +-1 (label noise is a flip probability); otherwise real labels
        with additive Gaussian noise, and the population risk expands into pair sums
        (closed forms, series, quadrature) when student and teacher share the activation.
    """

    name: str
    value: Callable
    classification: bool

    @property
    def code(self) -> int:
        """The loss's integer code in the kernels."""
        return kernels.LOSS_CODES[self.name]


LOSS_ENTRIES = Registry("loss")


def register_loss(entry: LossEntry) -> LossEntry:
    """Add a loss to :data:`LOSS_ENTRIES`; its kernel code must exist.

    Parameters
    ----------
    entry : LossEntry

    Returns
    -------
    LossEntry
        ``entry``.
    """
    if entry.name not in kernels.LOSS_CODES:
        raise ValueError(f"{entry.name!r} has no code in kernels.LOSS_CODES (kernels/_scalar.py)")
    return LOSS_ENTRIES.register(entry)


register_loss(LossEntry("squared", lambda f, y: 0.5 * (y - f) ** 2, classification=False))
register_loss(LossEntry("logistic", lambda f, y: np.logaddexp(0.0, -y * f), classification=True))
register_loss(LossEntry("exponential", lambda f, y: np.exp(-y * f), classification=True))

CLASSIFICATION_LOSSES = tuple(name for name, entry in LOSS_ENTRIES.items() if entry.classification)
