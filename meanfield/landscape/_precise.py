"""Gradient descent to high precision, so that end points can be certified."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = np.finfo(np.float64).eps


@dataclass
class PreciseDescent:
    """Result of :func:`descend_to_precision`.

    Attributes
    ----------
    W : ndarray, shape (m, d + 2), float64
        The end point.
    risk, grad_norm : float
        F and |grad F| at ``W``.
    converged : bool
        grad_norm <= grad_tol.
    steps : int
        Accepted steps.
    rejected : int
        Trial steps rejected (F increased or became non-finite), each followed by halving.
    step : float
        The step size at the end.
    time : float
        Continuous time travelled, the sum of the accepted steps.
    message : str
    """

    W: np.ndarray
    risk: float
    grad_norm: float
    converged: bool
    steps: int
    rejected: int
    step: float
    time: float
    message: str


def descend_to_precision(problem, W, grad_tol: float = 1e-9, step: float = 1.0, max_steps: int = 100_000,
                         max_step: float | None = None, grow_after: int = 20, grow: float = 1.25,
                         min_step: float = 1e-12) -> PreciseDescent:
    """Gradient descent W <- W + eta v(W), v = -m grad F, until |grad F| <= grad_tol.

    A trial step is rejected and eta halved when F(W + eta v) or its gradient is not finite,
    when F increases by more than its rounding (64 eps (|F(W0)| + E[y^2] / 2), the size of the
    terms whose sum is F), or when F changes by less than that rounding and |grad F| does not
    decrease (near a minimum with F ~ 0 the decrease of F drowns in rounding, the gradient does
    not); after ``grow_after`` accepted steps in a row eta grows by ``grow`` up to ``max_step``
    (default: the initial ``step``). Every
    accepted step decreases F up to rounding, so a divergent initial step costs a few halvings,
    never a NaN. Runs in float64 whatever the model's dtype.

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)
        Start (copied).
    grad_tol : float
        Target Euclidean norm of grad F over the trainable coordinates (|v| / m).
    step : float
        Initial step eta in continuous time (as in :func:`meanfield.gradient_descent`).
    max_steps : int
        Accepted plus rejected steps at most.
    max_step, grow_after, grow, min_step : float, int, float, float
        Step-size control; the descent stops (not converged) if eta falls below ``min_step``.

    Returns
    -------
    PreciseDescent
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    if not grad_tol > 0:
        raise ValueError(f"grad_tol must be > 0, got {grad_tol!r}")
    if np.dtype(problem.model.dtype) != np.float64:
        raise ValueError("descend_to_precision needs a float64 model (float32 gradients stop near 1e-4)")
    max_step = step if max_step is None else float(max_step)
    mask = problem.model.trainable
    W = np.array(W, dtype=np.float64)
    m = W.shape[0]
    evaluation = problem.evaluate(W)
    value, velocity = float(evaluation.value), evaluation.velocity.copy()
    if not math.isfinite(value):
        raise ValueError("the objective is not finite at the starting point")
    # Rounding of F: population risks are sums of terms of the size of E[y^2] / 2.
    scale = abs(value) + 0.5 * abs(float(getattr(problem, "label_second_moment", 0.0)))
    slack = 64 * EPS * max(scale, 1e-300)
    eta, accepted, rejected, streak, travelled = float(step), 0, 0, 0, 0.0
    message = ""
    while True:
        grad_norm = float(np.linalg.norm(velocity)) / m
        if grad_norm <= grad_tol:
            message = f"|grad F| = {grad_norm:.3e} <= {grad_tol:g} after {accepted} steps"
            break
        if accepted + rejected >= max_steps:
            message = f"stopped after {max_steps} steps with |grad F| = {grad_norm:.3e} > {grad_tol:g}"
            break
        if eta < min_step:
            message = f"step fell below {min_step:g} with |grad F| = {grad_norm:.3e}"
            break
        trial = W + eta * velocity
        trial[:, ~mask] = W[:, ~mask]
        evaluation = problem.evaluate(trial)
        new_value = float(evaluation.value)
        new_norm = float(np.linalg.norm(evaluation.velocity)) / m
        finite = math.isfinite(new_value) and math.isfinite(new_norm)
        # Below the rounding of F (a sum of terms of the size of F(W0)), compare gradients.
        within_rounding = abs(new_value - value) <= slack
        if not finite or (new_value > value and not within_rounding) or (within_rounding and new_norm > grad_norm):
            eta *= 0.5
            rejected += 1
            streak = 0
            continue
        W, value, velocity = trial, new_value, evaluation.velocity.copy()
        accepted += 1
        travelled += eta
        streak += 1
        if streak >= grow_after and eta < max_step:
            eta = min(max_step, eta * grow)
            streak = 0
    return PreciseDescent(W, value, grad_norm, grad_norm <= grad_tol, accepted, rejected, eta, travelled, message)
