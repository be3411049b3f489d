"""Refinement of an approximate critical point (the end of a flow) to a certified one.

:func:`refine` minimises F over the trainable coordinates x = W[:, model.trainable].ravel()
with ``scipy.optimize.minimize``: Newton with a trust region (``trust-exact``: the dense
analytic Hessian, ``trust-krylov``: Hessian-vector products only) or ``BFGS``, down to a
gradient norm |grad F| <= grad_tol (Euclidean norm, the norm of ``meanfield.landscape``).

Near a minimum the decrease of F per Newton step is of order |grad F|^2 / lambda, which falls
below the rounding error of F (about eps |F|-sized terms) long before |grad F| reaches 1e-12,
so a trust-region method that compares actual and predicted decreases of F stalls there. When
it stops above grad_tol (or |grad F| has not decreased by 1 % in 3 iterations), the refinement
finishes with Newton steps on the gradient itself (solve H p = -g, accept while |grad F|
decreases), which converge quadratically to a nondegenerate critical point of any index;
``method`` then says ``"+newton"``. The end point
is classified by :func:`meanfield.landscape.classify` (Hessian spectrum extremes with error
bounds).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..engine._problems import Problem

REFINE_METHODS = ("trust-exact", "trust-krylov", "BFGS")
STALL_ITERATIONS = 3  # iterations without a 1 % decrease of |grad F| that hand over to Newton steps


@dataclass(frozen=True)
class Refinement:
    """A refined critical point and what certifies it.

    Attributes
    ----------
    W : ndarray, shape (m, d + 2), float64
        The refined particles.
    converged : bool
        Whether |grad F| <= grad_tol.
    grad_norm, risk : float
        |grad F| (Euclidean, trainable coordinates) and F at W.
    lambda_min, lambda_max : float
        Extreme eigenvalues of the Hessian of F at W (from the classification).
    end_point : meanfield.landscape.EndPoint
        The class of W (global or spurious minimum, saddle, degenerate, not converged) with
        its thresholds and eigenvalue error bounds.
    method : str
        The scipy method, with ``"+newton"`` when gradient-Newton steps finished the job.
    iterations : int
        Iterations of the scipy method plus Newton steps.
    n_evaluations, n_hessians : int
        Objective-and-gradient evaluations and Hessian (or Hessian-vector product) calls.
    grad_norms : ndarray
        |grad F| after each iteration (the first entry at the starting point).
    message : str
        scipy's message, and what the Newton steps did.
    seconds : float
        Wall time of the refinement (classification excluded).
    """

    W: np.ndarray
    converged: bool
    grad_norm: float
    risk: float
    lambda_min: float
    lambda_max: float
    end_point: object
    method: str
    iterations: int
    n_evaluations: int
    n_hessians: int
    grad_norms: np.ndarray = field(repr=False)
    message: str = ""
    seconds: float = 0.0


class _TimeLimit(Exception):
    """Raised inside the scipy iterations when the refinement's time limit is spent."""


class _Objective:
    """F, grad F, H and H v over the trainable coordinates, caching the last evaluation."""

    deadline = math.inf

    def _check_time(self):
        if time.perf_counter() > self.deadline:
            raise _TimeLimit

    def __init__(self, problem: Problem, W):
        self.problem = problem
        self.mask = problem.model.trainable
        self.W = np.array(W, dtype=np.float64, copy=True)
        self.m = self.W.shape[0]
        self.n_evaluations = 0
        self.n_hessians = 0
        self._key = None
        self._value = None

    def state(self, x) -> np.ndarray:
        W = self.W.copy()
        W[:, self.mask] = np.asarray(x, dtype=np.float64).reshape(self.m, -1)
        return W

    def evaluate(self, x):
        key = np.asarray(x, dtype=np.float64).tobytes()
        if key != self._key:
            evaluation = self.problem.evaluate(self.state(x))
            grad = (-evaluation.velocity[:, self.mask] / self.m).ravel().astype(np.float64)
            self._key, self._value = key, (float(evaluation.value), grad)
            self.n_evaluations += 1
        return self._value

    def fun(self, x):
        return self.evaluate(x)[0]

    def jac(self, x):
        return self.evaluate(x)[1].copy()

    def hess(self, x):
        self._check_time()
        self.n_hessians += 1
        H = np.asarray(self.problem.hessian(self.state(x)), dtype=np.float64)
        return 0.5 * (H + H.T)

    def hessp(self, x, p):
        self._check_time()
        self.n_hessians += 1
        V = np.zeros_like(self.W)
        V[:, self.mask] = np.asarray(p, dtype=np.float64).reshape(self.m, -1)
        return np.asarray(self.problem.hessian_vector_product(self.state(x), V))[:, self.mask].ravel()


def refine(problem: Problem, W, method: str = "trust-exact", grad_tol: float = 1e-12, max_iter: int = 200,
           newton_steps: int = 20, risk_threshold: float = 1e-6, eig_tol: float = 0.0,
           classify: bool = True, time_limit: float | None = None) -> Refinement:
    """Refine W (e.g. the end of :func:`meanfield.flow`) to a critical point with |grad F| <= grad_tol.

    Parameters
    ----------
    problem : Problem
        With an analytic Hessian for ``trust-exact`` and ``trust-krylov``
        (``problem.has_analytic_hessian``: closed-form population risks, finite data, Monte
        Carlo); ``BFGS`` needs gradients only.
    W : ndarray, shape (m, d + 2)
        Starting point (float64 is used throughout).
    method : str
        ``"trust-exact"``, ``"trust-krylov"`` or ``"BFGS"``.
    grad_tol : float
        Target |grad F| (Euclidean norm over the trainable coordinates); 1e-12 is reachable in
        float64 at a nondegenerate critical point.
    max_iter : int
        Iterations of the scipy method.
    newton_steps : int
        Most gradient-Newton steps after the scipy method (0: none; needs the Hessian).
    risk_threshold, eig_tol : float
        Passed to :func:`meanfield.landscape.classify` (a converged point with F below
        risk_threshold is a global minimum).
    classify : bool
        Classify the end point (computes the spectrum extremes); otherwise ``end_point`` is
        None and the eigenvalues NaN.
    time_limit : float, optional
        Stop the scipy iterations after this many seconds (checked at every iteration and
        Hessian call; the result is the last iterate, and no Newton steps follow).

    Returns
    -------
    Refinement
    """
    if method not in REFINE_METHODS:
        raise ValueError(f"method must be one of {REFINE_METHODS}, got {method!r}")
    if not (math.isfinite(grad_tol) and grad_tol > 0):
        raise ValueError(f"grad_tol must be a finite number > 0, got {grad_tol!r}")
    analytic = bool(getattr(problem, "has_analytic_hessian", False))
    if method != "BFGS" and not analytic:
        raise ValueError(f"{method} needs the Hessian, which {type(problem).__name__} ({problem.method}) does not "
                         "have in closed form: use method='BFGS'")
    start = time.perf_counter()
    objective = _Objective(problem, problem.model.check_state(W))
    x0 = np.asarray(objective.W[:, objective.mask], dtype=np.float64).ravel()
    grad_norms = [float(np.linalg.norm(objective.jac(x0)))]

    timed_out = []
    last = [x0]
    if time_limit is not None:
        objective.deadline = start + time_limit

    def callback(intermediate_result):
        last[0] = np.array(intermediate_result.x, dtype=np.float64)
        grad_norms.append(float(np.linalg.norm(objective.jac(last[0]))))
        if time_limit is not None and time.perf_counter() - start > time_limit:
            timed_out.append(True)
            raise StopIteration
        # F-based step acceptance has hit the rounding of F: |grad F| no longer moves
        if len(grad_norms) > STALL_ITERATIONS and \
                grad_norms[-1] >= 0.99 * grad_norms[-1 - STALL_ITERATIONS] and analytic and newton_steps > 0:
            raise StopIteration

    options = {"gtol": grad_tol, "maxiter": max_iter}
    kwargs = {"jac": objective.jac, "callback": callback}
    if method == "trust-exact":
        kwargs["hess"] = objective.hess
    elif method == "trust-krylov":
        kwargs["hessp"] = objective.hessp
    else:
        options["norm"] = 2.0
    if grad_norms[0] > grad_tol:
        try:
            with np.errstate(invalid="ignore"):  # a collapsed trust radius late in the run: Newton finishes
                result = minimize(objective.fun, x0, method=method, options=options, **kwargs)
            x, message, iterations = np.asarray(result.x, dtype=np.float64), str(result.message), int(result.nit)
        except _TimeLimit:
            timed_out.append(True)
            x, message, iterations = last[0], "interrupted inside an iteration", len(grad_norms) - 1
        objective.deadline = math.inf
    else:
        x, message, iterations = x0, "already at grad_tol", 0
    _, g = objective.evaluate(x)
    used = method
    if timed_out:
        message = f"{message}; stopped at the time limit of {time_limit:g} s"
    elif float(np.linalg.norm(g)) > grad_tol and analytic and newton_steps > 0:
        x, steps, newton_message = _newton_on_gradient(objective, x, grad_tol, newton_steps, grad_norms)
        iterations += steps
        used = f"{method}+newton"
        message = f"{message}; {newton_message}"
    W_out = objective.state(x)
    value, g = objective.evaluate(x)
    grad_norm = float(np.linalg.norm(g))
    seconds = time.perf_counter() - start
    end_point = None
    low = high = math.nan
    if classify:
        from ._endpoint import classify as classify_point

        end_point = classify_point(problem, W_out, grad_tol=grad_tol, risk_threshold=risk_threshold,
                                   eig_tol=eig_tol)
        low, high = end_point.lambda_min, end_point.lambda_max
    return Refinement(W_out, grad_norm <= grad_tol, grad_norm, float(value), low, high, end_point, used,
                      iterations, objective.n_evaluations, objective.n_hessians, np.asarray(grad_norms), message,
                      seconds)


def _newton_on_gradient(objective: _Objective, x, grad_tol, max_steps, grad_norms):
    """Newton steps on grad F = 0, accepted while they decrease |grad F| (halved otherwise)."""
    _, g = objective.evaluate(x)
    norm = float(np.linalg.norm(g))
    for step in range(1, max_steps + 1):
        H = objective.hess(x)
        try:
            p = np.linalg.solve(H, -g)
        except np.linalg.LinAlgError:
            p = np.linalg.lstsq(H, -g, rcond=None)[0]
        for _ in range(30):
            candidate = x + p
            _, g_new = objective.evaluate(candidate)
            new_norm = float(np.linalg.norm(g_new))
            if new_norm < norm:
                break
            p = 0.5 * p
        else:
            return x, step - 1, f"Newton on the gradient stalled at |grad F| = {norm:.3e}"
        x, g, norm = candidate, g_new, new_norm
        grad_norms.append(norm)
        if norm <= grad_tol:
            return x, step, f"Newton on the gradient reached |grad F| = {norm:.3e} in {step} steps"
    return x, max_steps, f"Newton on the gradient: |grad F| = {norm:.3e} after {max_steps} steps"
