"""Classification of an end point of training: converged or not, and what kind of critical point."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ._hessian import spectrum_extremes

KINDS = ("not_converged", "global_minimum", "spurious_minimum", "saddle", "degenerate")


@dataclass(frozen=True)
class EndPoint:
    """What an end point W is, with the numbers and thresholds that decided it.

    Attributes
    ----------
    kind : str
        One of ``KINDS``: ``"not_converged"`` (grad_norm > grad_tol), ``"global_minimum"``
        (risk < risk_threshold), ``"saddle"`` (lambda_min < -tolerance),
        ``"spurious_minimum"`` (lambda_min > tolerance), ``"degenerate"`` (|lambda_min| within
        the tolerance), where tolerance = max(eig_tol, lambda_min_error); tested in this order.
    risk, grad_norm : float
        F(W) and |grad F| over the trainable coordinates.
    lambda_min, lambda_max : float
        Extreme eigenvalues of the Hessian of F (NaN when not computed: not converged, or a
        global minimum with ``spectrum_always=False``).
    lambda_min_error, lambda_max_error : float
        Their error bounds (see :func:`spectrum_extremes`).
    grad_tol, risk_threshold, eig_tol : float
        The thresholds used.
    spectrum_method : str
        ``"dense"``, ``"lanczos"`` or ``""`` (not computed).
    """

    kind: str
    risk: float
    grad_norm: float
    lambda_min: float
    lambda_max: float
    lambda_min_error: float
    lambda_max_error: float
    grad_tol: float
    risk_threshold: float
    eig_tol: float
    spectrum_method: str = ""

    def as_dict(self) -> dict:
        """The fields as a dict (``dataclasses.asdict``)."""
        return asdict(self)


def classify(problem, W, *, grad_tol: float, risk_threshold: float, eig_tol: float = 0.0,
             spectrum_method: str = "auto", hessian_method: str = "auto",
             spectrum_always: bool = True) -> EndPoint:
    """Classify the end point W of a run.

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)
    grad_tol : float
        Converged when |grad F| <= grad_tol (Euclidean norm over all trainable coordinates).
    risk_threshold : float
        A converged point with F < risk_threshold is a global minimum.
    eig_tol : float
        Smallest |lambda_min| counted as nonzero, besides its computed error bound.
    spectrum_method, hessian_method : str
        Passed to :func:`spectrum_extremes`.
    spectrum_always : bool
        Compute the spectrum also for unconverged points and global minima (for the record).

    Returns
    -------
    EndPoint
    """
    evaluation = problem.evaluate(np.asarray(W))
    risk, grad_norm = float(evaluation.value), evaluation.grad_norm
    converged = np.isfinite(grad_norm) and grad_norm <= grad_tol
    nan = float("nan")
    spectrum = None
    if np.isfinite(risk) and (spectrum_always or (converged and risk >= risk_threshold)):
        spectrum = spectrum_extremes(problem, W, spectrum_method, hessian_method)
    low, high, low_error, high_error = (nan,) * 4 if spectrum is None else (
        spectrum.lambda_min, spectrum.lambda_max, spectrum.lambda_min_error, spectrum.lambda_max_error)
    tolerance = max(eig_tol, low_error) if spectrum is not None else nan
    if not converged:
        kind = "not_converged"
    elif risk < risk_threshold:
        kind = "global_minimum"
    elif low < -tolerance:
        kind = "saddle"
    elif low > tolerance:
        kind = "spurious_minimum"
    else:
        kind = "degenerate"
    return EndPoint(kind, risk, grad_norm, low, high, low_error, high_error, float(grad_tol),
                    float(risk_threshold), float(eig_tol), "" if spectrum is None else spectrum.method)
