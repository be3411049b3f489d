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
    result = descend_batch([problem], np.asarray(W)[None], grad_tol, step, max_steps, max_step, grow_after, grow,
                           min_step)[0]
    if isinstance(result, ValueError):
        raise result
    return result


def _check(problem, step, grad_tol):
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    if not grad_tol > 0:
        raise ValueError(f"grad_tol must be > 0, got {grad_tol!r}")
    if np.dtype(problem.model.dtype) != np.float64:
        raise ValueError("descend_to_precision needs a float64 model (float32 gradients stop near 1e-4)")


def descend_batch(problems, W, grad_tol: float = 1e-9, step: float = 1.0, max_steps: int = 100_000,
                  max_step: float | None = None, grow_after: int = 20, grow: float = 1.25,
                  min_step: float = 1e-12) -> list:
    """:func:`descend_to_precision` of B problems of equal shape at once (an ensemble).

    Each member keeps its own step size, counts and stopping rule; the members still
    descending are evaluated together (``meanfield.engine._ensemble.PopulationEnsemble``: one
    kernel call for small closed-form problems). Member b's result is bitwise what it would be
    alone: :func:`descend_to_precision` is this function with B = 1, and every operation here
    is member by member.

    Parameters
    ----------
    problems : sequence of Problem
        The members' problems (same model shape).
    W : ndarray, shape (B, m, d + 2)
        Start points (copied).
    grad_tol, step, max_steps, max_step, grow_after, grow, min_step
        As for :func:`descend_to_precision`.

    Returns
    -------
    list of PreciseDescent or ValueError
        Per member; a ValueError (returned, not raised) for a member whose objective is not
        finite at its start, so that the others are still descended.
    """
    from .. import kernels
    from ..engine._ensemble import PopulationEnsemble

    problems = list(problems)
    for problem in problems:
        _check(problem, step, grad_tol)
    W = np.array(W, dtype=np.float64)
    B, m, p = W.shape
    max_step = step if max_step is None else float(max_step)
    frozen = ~problems[0].model.trainable
    results = [None] * B
    members = np.arange(B)  # the members of `ensemble`, in its order
    ensemble = PopulationEnsemble(problems, m)
    evaluation = ensemble.evaluate(W.reshape(B * m, p))
    value = np.array(evaluation.value, dtype=np.float64)
    velocity = evaluation.velocity.reshape(B, m, p).copy()
    second_moments = np.array([abs(float(getattr(q, "label_second_moment", 0.0))) for q in problems])
    # Rounding of F: population risks are sums of terms of the size of E[y^2] / 2.
    slack = 64 * EPS * np.maximum(np.abs(value) + 0.5 * second_moments, 1e-300)
    eta = np.full(B, float(step))
    accepted = np.zeros(B, dtype=np.int64)
    rejected = np.zeros(B, dtype=np.int64)
    streak = np.zeros(B, dtype=np.int64)
    travelled = np.zeros(B)
    grad_norm = np.empty(B)
    new_norm = np.empty(B)
    running = np.isfinite(value)
    for b in np.flatnonzero(~running):
        results[b] = ValueError("the objective is not finite at the starting point")
    while True:
        kernels.member_sums_of_squares(velocity, grad_norm)
        grad_norm = np.sqrt(grad_norm) / m
        for b in np.flatnonzero(running):
            member = members[b]
            if grad_norm[b] <= grad_tol:
                message = f"|grad F| = {grad_norm[b]:.3e} <= {grad_tol:g} after {accepted[b]} steps"
            elif accepted[b] + rejected[b] >= max_steps:
                message = f"stopped after {max_steps} steps with |grad F| = {grad_norm[b]:.3e} > {grad_tol:g}"
            elif eta[b] < min_step:
                message = f"step fell below {min_step:g} with |grad F| = {grad_norm[b]:.3e}"
            else:
                continue
            running[b] = False
            results[member] = PreciseDescent(W[b].copy(), float(value[b]), float(grad_norm[b]),
                                             bool(grad_norm[b] <= grad_tol), int(accepted[b]), int(rejected[b]),
                                             float(eta[b]), float(travelled[b]), message)
        if not running.any():
            break
        if running.sum() <= len(members) // 2:  # evaluate only the members still descending
            keep = np.flatnonzero(running)
            members, W, value, velocity = members[keep], W[keep], value[keep], velocity[keep]
            slack, eta, accepted, rejected = slack[keep], eta[keep], accepted[keep], rejected[keep]
            streak, travelled, running = streak[keep], travelled[keep], running[keep]
            grad_norm, new_norm = grad_norm[keep], new_norm[keep]
            ensemble = PopulationEnsemble([problems[b] for b in members], m)
        trial = W + eta[:, None, None] * velocity
        trial[:, :, frozen] = W[:, :, frozen]
        evaluation = ensemble.evaluate(trial.reshape(-1, p))
        new_value = np.asarray(evaluation.value, dtype=np.float64)
        new_velocity = evaluation.velocity.reshape(trial.shape)
        kernels.member_sums_of_squares(new_velocity, new_norm)
        new_norm = np.sqrt(new_norm) / m
        finite = np.isfinite(new_value) & np.isfinite(new_norm)
        # Below the rounding of F (a sum of terms of the size of F(W0)), compare gradients.
        within_rounding = np.abs(new_value - value) <= slack
        with np.errstate(invalid="ignore"):
            worse = ~finite | ((new_value > value) & ~within_rounding) | (within_rounding & (new_norm > grad_norm))
        reject = running & worse
        take = running & ~worse
        eta[reject] *= 0.5
        rejected[reject] += 1
        streak[reject] = 0
        W[take] = trial[take]
        value[take] = new_value[take]
        velocity[take] = new_velocity[take]
        accepted[take] += 1
        travelled[take] += eta[take]
        streak[take] += 1
        grow_now = take & (streak >= grow_after) & (eta < max_step)
        eta[grow_now] = np.minimum(max_step, eta[grow_now] * grow)
        streak[grow_now] = 0
    return results
