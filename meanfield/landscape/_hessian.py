"""The Hessian of the objective F with respect to the trainable particle coordinates.

Variables are ordered particle-major, x = W[:, model.trainable].ravel(), so
n_var = m * model.trainable.sum(). Everything here is the Hessian of F itself (not of -mF):
grad F = -v / m with v the velocity of ``problem.evaluate``.

Without an analytic Hessian on the problem (``problem.has_analytic_hessian``), the Hessian is
the central finite difference of the analytic gradient,

    H e_j ~ (g(x + h e_j) - g(x - h e_j)) / (2 h),   h = eps^(1/3) max(1, |x|_inf),

symmetrised, and its error is estimated by comparing with the same difference at step 2h:
the truncation error of a central difference is O(h^2) (4 times smaller at h than at 2h) and
the rounding error O(eps |g| / h), so ||H_h - H_2h||_2 estimates the error of H_h up to a
factor of order one; the reported error is 2 ||H_h - H_2h||_2, and by Weyl's inequality it
bounds the error of every eigenvalue. Measured (2026-11-23, with the script
``benchmarks/landscape_fd_accuracy.py``): on a quadratic F (linear activation, exact Hessian known) the actual
relative error ||H - H_exact|| / ||H_exact|| was 1.5e-11 to 4.1e-11 over three seeds, and
the reported error 1.9 to 2.7 times the actual one; the reported relative error at a generic
point was 2.7e-9 (relu closed form, m = 20, d = 6) and 1.0e-9 (erf); the relu kernel is only
C^2 where a student is collinear with another neuron (a |theta|^3 term), where the truncation
error is O(h): 9.3e-7 relative at the Safran-Shamir global minimum (students = teacher).

Where F is not twice differentiable (a problem that says so through
``problem.hessian_singularities(W)``, the particle indices; e.g. a relu particle with
a_i = 0 and b_i = 0 in the closed forms), there is no Hessian to approximate: the matrix
returned is the kernel's convention (or a finite difference across the kink), a
``RuntimeWarning`` names the particles, and the reported error is inf (so is every
eigenvalue's bound, and ``classify`` cannot call such a point a minimum or a saddle).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

EPS = np.finfo(np.float64).eps
DENSE_LIMIT = 600  # n_var up to which spectrum_extremes builds the dense Hessian


def _variables(problem, W):
    W = np.array(W, dtype=np.float64)  # float64 copy: differences of float32 gradients are noise
    mask = problem.model.trainable
    return W, mask


def gradient(problem, W) -> np.ndarray:
    """grad F over the trainable coordinates, flattened particle-major, shape (n_var,).

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)

    Returns
    -------
    ndarray, shape (n_var,), float64
        grad F = -v / m on the columns of ``problem.model.trainable``, n_var = m times their
        number (computed in the problem's dtype, returned as float64).
    """
    W = np.asarray(W)
    velocity = problem.evaluate(W).velocity
    return (-velocity[:, problem.model.trainable] / W.shape[0]).ravel().astype(np.float64)


def singular_particles(problem, W) -> np.ndarray:
    """Indices of the particles at which F is not twice differentiable, as the problem reports
    them (``problem.hessian_singularities``; none for a problem without that method)."""
    report = getattr(problem, "hessian_singularities", None)
    if report is None:
        return np.empty(0, dtype=np.int64)
    return np.asarray(report(np.asarray(W)), dtype=np.int64).ravel()


def _singular_error(problem, W) -> bool:
    """True (after a warning naming them) when F has no Hessian at some particles of W."""
    singular = singular_particles(problem, W)
    if singular.size == 0:
        return False
    warnings.warn(f"F is not twice differentiable at particles {singular.tolist()} of W: the Hessian "
                  "there is a convention, and its error is reported as inf", RuntimeWarning, stacklevel=3)
    return True


def _fd_step(W, mask) -> float:
    return EPS ** (1 / 3) * max(1.0, float(np.abs(W[:, mask]).max(initial=0.0)))


def _fd_hessian(problem, W, h) -> np.ndarray:
    W, mask = _variables(problem, W)
    rows, cols = np.nonzero(np.broadcast_to(mask, W.shape))
    n_var = rows.size
    H = np.empty((n_var, n_var))
    probe = W.copy()
    for j, (r, c) in enumerate(zip(rows, cols)):
        probe[r, c] = W[r, c] + h
        plus = gradient(problem, probe)
        probe[r, c] = W[r, c] - h
        minus = gradient(problem, probe)
        probe[r, c] = W[r, c]
        H[:, j] = (plus - minus) / (2 * h)
    return 0.5 * (H + H.T)


def hessian(problem, W, method: str = "auto", return_error: bool = False):
    """Hessian of F with respect to the trainable coordinates, dense.

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)
    method : str
        ``"auto"`` (``problem.hessian`` when ``problem.has_analytic_hessian``, else finite
        differences), ``"analytic"`` or ``"finite_difference"``.
    return_error : bool
        Also return an estimate of the spectral-norm error ||H - H_true||_2 (finite
        differences: 2 ||H_h - H_2h||_2; analytic: n_var eps ||H||_2, rounding only; inf
        where F is not twice differentiable, see the module docstring).

    Returns
    -------
    H : ndarray, shape (n_var, n_var), float64, symmetric
    error : float (with ``return_error``)
    """
    analytic = bool(getattr(problem, "has_analytic_hessian", False))
    if method not in ("auto", "analytic", "finite_difference"):
        raise ValueError(f"method must be 'auto', 'analytic' or 'finite_difference', got {method!r}")
    if method == "analytic" and not analytic:
        raise ValueError(f"{type(problem).__name__} has no analytic Hessian; use method='finite_difference'")
    if method == "analytic" or (method == "auto" and analytic):
        H = np.asarray(problem.hessian(np.asarray(W)), dtype=np.float64)
        H = 0.5 * (H + H.T)
        singular = _singular_error(problem, W)
        if not return_error:
            return H
        if singular:
            return H, float("inf")
        return H, float(H.shape[0] * EPS * np.linalg.norm(H, 2)) if H.size else 0.0
    W64, mask = _variables(problem, W)
    h = _fd_step(W64, mask)
    H = _fd_hessian(problem, W64, h)
    singular = _singular_error(problem, W)
    if not return_error:
        return H
    if singular:
        return H, float("inf")
    H2 = _fd_hessian(problem, W64, 2 * h)
    return H, 2.0 * float(np.linalg.norm(H - H2, 2)) if H.size else 0.0


def _fd_product(problem, W, mask, vector, h):
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        return np.zeros_like(vector)
    step = h / norm
    V = np.zeros_like(W)
    V[:, mask] = vector.reshape(W.shape[0], -1)
    return (gradient(problem, W + step * V) - gradient(problem, W - step * V)) / (2 * step)


def hessian_operator(problem, W, method: str = "auto", step_scale: float = 1.0) -> LinearOperator:
    """The Hessian of F as a ``scipy.sparse.linalg.LinearOperator`` on n_var coordinates.

    Uses ``problem.hessian_vector_product(W, V)`` when the problem has an analytic Hessian
    (``method="auto"`` or ``"analytic"``), else the central difference of the gradient along
    the vector, H u ~ (g(x + h u/|u|) - g(x - h u/|u|)) |u| / (2 h), with
    h = step_scale eps^(1/3) max(1, |x|_inf). Cost: one (analytic) or two gradient
    evaluations per product.

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)
        The point (copied to float64).
    method : str
        ``"auto"``, ``"analytic"`` (refused when the problem has no analytic Hessian) or
        ``"finite_difference"``.
    step_scale : float
        Factor on the finite-difference step h.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        Symmetric, shape (n_var, n_var), float64; ``matvec`` takes a vector of n_var
        coordinates (particle-major).
    """
    analytic = bool(getattr(problem, "has_analytic_hessian", False))
    W64, mask = _variables(problem, W)
    m = W64.shape[0]
    n_var = int(m * mask.sum())
    if method == "analytic" or (method == "auto" and analytic):
        if not analytic:
            raise ValueError(f"{type(problem).__name__} has no analytic Hessian; use method='finite_difference'")

        def matvec(u):
            V = np.zeros_like(W64)
            V[:, mask] = np.asarray(u, dtype=np.float64).reshape(m, -1)
            return np.asarray(problem.hessian_vector_product(W64, V))[:, mask].ravel().astype(np.float64)
    else:
        h = step_scale * _fd_step(W64, mask)

        def matvec(u):
            return _fd_product(problem, W64, mask, np.asarray(u, dtype=np.float64).ravel(), h)

    return LinearOperator((n_var, n_var), matvec=matvec, rmatvec=matvec, dtype=np.float64)


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenvalues of the Hessian and bounds on their error.

    Attributes
    ----------
    lambda_min, lambda_max : float
    lambda_min_error, lambda_max_error : float
        Error bounds: for the dense path the finite-difference (or rounding) error of the
        matrix (Weyl); for Lanczos, the residual |H u - lambda u| plus the finite-difference
        error of the product at the eigenvector, 2 |(H_h - H_2h) u|. inf where F is not
        twice differentiable at W (``problem.hessian_singularities``).
    method : str
        ``"dense"`` or ``"lanczos"``.
    vector_min : ndarray, shape (n_var,)
        Unit eigenvector of lambda_min (a direction of negative curvature at a saddle).
    """

    lambda_min: float
    lambda_max: float
    lambda_min_error: float
    lambda_max_error: float
    method: str
    vector_min: np.ndarray


def spectrum_extremes(problem, W, method: str = "auto", hessian_method: str = "auto", tol: float = 1e-10,
                      maxiter: int | None = None, rng: np.random.Generator | None = None) -> Spectrum:
    """Smallest and largest eigenvalues of the Hessian of F at W, with error bounds.

    Parameters
    ----------
    problem : Problem
    W : ndarray, shape (m, d + 2)
    method : str
        ``"dense"`` (``numpy.linalg.eigh`` of :func:`hessian`), ``"lanczos"`` (``eigsh`` with
        ``which="SA"`` and ``"LA"`` on :func:`hessian_operator`) or ``"auto"`` (dense up to
        n_var = 600).
    hessian_method : str
        Passed to :func:`hessian` / :func:`hessian_operator`.
    tol, maxiter : float, int
        ARPACK's relative tolerance and iteration limit.
    rng : numpy.random.Generator, optional
        Starting vector of Lanczos (default: seed 0, so results are reproducible).

    Returns
    -------
    Spectrum
        lambda_min and lambda_max with their error bounds, the method used and the unit
        eigenvector of lambda_min.
    """
    W64, mask = _variables(problem, W)
    n_var = int(W64.shape[0] * mask.sum())
    if method == "auto":
        method = "dense" if n_var <= DENSE_LIMIT else "lanczos"
    if method == "dense" or n_var < 3:
        analytic = hessian_method == "analytic" or (hessian_method == "auto"
                                                    and getattr(problem, "has_analytic_hessian", False))
        if analytic:
            # hessian()'s bound n_var eps |H|_2, with |H|_2 = max |eigenvalue| of the symmetric H
            # taken from the spectrum computed anyway (an SVD less: a third of the spectrum's cost
            # for the small Hessians of a census).
            H = hessian(problem, W64, hessian_method)
            values, vectors = _dense_eigh(H)
            error = (math.inf if _singular_error(problem, W64) else
                     float(H.shape[0] * EPS * np.abs(values).max(initial=0.0)) if H.size else 0.0)
        else:
            H, error = hessian(problem, W64, hessian_method, return_error=True)
            values, vectors = _dense_eigh(H)
        error = error + 4 * EPS * float(np.abs(values).max(initial=0.0)) * n_var
        error = float(error)
        return Spectrum(float(values[0]), float(values[-1]), error, error, "dense", vectors[:, 0])
    if method != "lanczos":
        raise ValueError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    operator = hessian_operator(problem, W64, hessian_method)
    analytic = hessian_method == "analytic" or (hessian_method == "auto"
                                                 and getattr(problem, "has_analytic_hessian", False))
    coarse = None if analytic else hessian_operator(problem, W64, "finite_difference", step_scale=2.0)
    rng = rng if rng is not None else np.random.default_rng(0)
    v0 = rng.standard_normal(n_var)
    results = []
    for which in ("SA", "LA"):
        try:
            values, vectors = eigsh(operator, k=1, which=which, tol=tol, maxiter=maxiter, v0=v0)
        except ArpackNoConvergence as error:
            if len(error.eigenvalues):
                values, vectors = error.eigenvalues, error.eigenvectors
            else:  # finite-difference noise can stall a tight tolerance; the residual is reported anyway
                values, vectors = eigsh(operator, k=1, which=which, tol=max(tol, 1e-6), maxiter=maxiter, v0=v0)
        u = vectors[:, 0] / np.linalg.norm(vectors[:, 0])
        Hu = operator.matvec(u)
        value = float(u @ Hu)
        error = float(np.linalg.norm(Hu - value * u))
        if coarse is not None:
            error += 2.0 * float(np.linalg.norm(Hu - coarse.matvec(u)))
        results.append((value, error, u))
    (low, low_error, u_low), (high, high_error, _) = results
    if _singular_error(problem, W64):
        low_error = high_error = float("inf")
    return Spectrum(low, high, low_error, high_error, "lanczos", u_low)


def _dense_eigh(H):
    """Eigenvalues and eigenvectors of a symmetric matrix, by LAPACK's divide and conquer
    (``numpy.linalg.eigh``), else by the relatively robust representations (``scipy.linalg.eigh``,
    driver ``evr``): OpenBLAS's divide and conquer refused ("Eigenvalues did not converge") the
    Hessian of a Safran-Shamir global minimum at k = n = 18 (runs/safran_shamir.toml, seed 539),
    whose spectrum is one value repeated many times; ``evr`` takes it."""
    try:
        return np.linalg.eigh(H)
    except np.linalg.LinAlgError:
        from scipy.linalg import eigh

        return eigh(H, driver="evr")
