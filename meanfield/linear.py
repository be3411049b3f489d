"""Deep linear networks: gradient flow of a product of matrices, and its exact 1-D reductions.

The network is the product P = W_K ... W_1 of K square n x n matrices, trained on the
quadratic loss with input covariance Sigma (SCIENCE.md section 6; Saxe et al. 2013):

    F(W) = 1/2 tr((P - R) Sigma (P - R)^T),
    grad_{W_k} F = (W_K ... W_{k+1})^T (P - R) Sigma (W_{k-1} ... W_1)^T,

and the flow dW_k/dt = -grad_{W_k} F runs on the engine's integrators unchanged
(``mf.gradient_descent``, ``mf.heavy_ball``, ``mf.run``): the state is one "particle" holding
every matrix, ``W`` of shape (1, K n^2) with ``unpack(W)[k] = W_{k+1}``, so the velocity
v = -m grad F with m = 1 is -grad F and the recorded gradient norm is |grad F|.

Two facts make clean tests of integrators:

* the flow conserves W_{k+1}^T W_{k+1} - W_k W_k^T for every k (:func:`conserved`);
* with Sigma = I, a symmetric target R = U diag(r) U^T and commuting initial matrices
  W_k(0) = w_k(0) I, every W_k(t) = U diag(w_k(t)) U^T and each eigen-direction follows the
  1-D flow dw_k/dt = prod_{j != k} w_j (r - prod_j w_j) (:func:`mode_flow`); balanced
  (w_k equal) it has the closed forms of :func:`balanced_mode`. With r <= 0 and positive
  balanced w the product can never change sign: it decays to 0 and stays there
  (the flow gets stuck at prod w = 0, with loss r^2 / 2 in that direction).
"""
from __future__ import annotations

import numpy as np
from scipy import integrate

from .engine._problems import Evaluation, Problem


class DeepLinearModel:
    """Shapes of a deep linear network: K layers of n x n matrices packed in (1, K n^2).

    Attributes
    ----------
    K, n : int
    p : int
        K n^2, the number of coordinates of the single particle.
    dtype : numpy.dtype
        float64.
    trainable : ndarray of bool, shape (p,)
        All True.
    """

    def __init__(self, K: int, n: int):
        if not (isinstance(K, (int, np.integer)) and K >= 1):
            raise ValueError(f"K must be an integer >= 1, got {K!r}")
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.K, self.n = int(K), int(n)
        self.p = self.K * self.n * self.n
        self.dtype = np.dtype(np.float64)
        self.trainable = np.ones(self.p, dtype=bool)

    def check_state(self, W, name: str = "W") -> np.ndarray:
        """W as a C-contiguous float64 array of shape (1, K n^2); (K, n, n) is packed."""
        W = np.asarray(W, dtype=np.float64)
        if W.shape == (self.K, self.n, self.n):
            W = W.reshape(1, self.p)
        if W.shape != (1, self.p):
            raise ValueError(f"{name} must have shape (1, K n^2) = (1, {self.p}) or (K, n, n) = "
                             f"({self.K}, {self.n}, {self.n}), got {W.shape}")
        return np.ascontiguousarray(W)

    def pack(self, matrices) -> np.ndarray:
        """(K, n, n) matrices [W_1, ..., W_K] -> state (1, K n^2)."""
        return self.check_state(np.asarray(matrices, dtype=np.float64))

    def unpack(self, W) -> np.ndarray:
        """State (1, K n^2) -> view (K, n, n) with [k] = W_{k+1}."""
        return np.asarray(W).reshape(self.K, self.n, self.n)


def product(matrices) -> np.ndarray:
    """P = W_K ... W_1 of matrices (K, n, n) ordered [W_1, ..., W_K].

    Parameters
    ----------
    matrices : array_like, shape (K, n, n)
        [W_1, ..., W_K] (e.g. ``model.unpack(W)``).

    Returns
    -------
    ndarray, shape (n, n)
        The product, a new array in the dtype of the matrices.
    """
    P = np.array(matrices[0], copy=True)
    for Wk in matrices[1:]:
        P = Wk @ P
    return P


def conserved(matrices) -> np.ndarray:
    """W_{k+1}^T W_{k+1} - W_k W_k^T for k = 1 .. K - 1, shape (K - 1, n, n); constant under
    the gradient flow.

    Parameters
    ----------
    matrices : array_like, shape (K, n, n)
        [W_1, ..., W_K].

    Returns
    -------
    ndarray, shape (K - 1, n, n)
        In the dtype of the matrices; shape (0,) when K = 1.
    """
    matrices = np.asarray(matrices)
    return np.array([matrices[k + 1].T @ matrices[k + 1] - matrices[k] @ matrices[k].T
                     for k in range(len(matrices) - 1)])


class DeepLinearProblem(Problem):
    """F = 1/2 tr((W_K ... W_1 - R) Sigma (W_K ... W_1 - R)^T) and its velocity -grad F.

    Parameters
    ----------
    target : array_like, shape (n, n)
        R.
    K : int
        Number of layers.
    covariance : array_like, shape (n, n), optional
        Sigma, symmetric positive semi-definite (default I).
    """

    loss = "squared"
    method = "closed_form"

    def __init__(self, target, K: int, covariance=None):
        R = np.asarray(target, dtype=np.float64)
        if R.ndim != 2 or R.shape[0] != R.shape[1]:
            raise ValueError(f"target must be a square matrix, got shape {R.shape}")
        n = R.shape[0]
        S = np.eye(n) if covariance is None else np.asarray(covariance, dtype=np.float64)
        if S.shape != (n, n) or not np.allclose(S, S.T) or np.linalg.eigvalsh(S).min() < -1e-12:
            raise ValueError(f"covariance must be a symmetric positive semi-definite ({n}, {n}) matrix")
        self.model = DeepLinearModel(K, n)
        self.target, self.covariance = R, S

    def describe(self) -> str:
        """One line saying what the objective is."""
        return f"deep linear network, K = {self.model.K}, n = {self.model.n}, closed-form quadratic loss"

    def value_and_gradient(self, matrices):
        """F and grad F for matrices (K, n, n): (float, ndarray (K, n, n))."""
        K = len(matrices)
        n = self.model.n
        below = [np.eye(n)]  # below[k] = W_k ... W_1 (W_0 ... = I)
        for Wk in matrices:
            below.append(Wk @ below[-1])
        E = below[-1] - self.target
        ES = E @ self.covariance
        value = 0.5 * float(np.sum(ES * E))
        gradient = np.empty_like(np.asarray(matrices))
        above = np.eye(n)  # W_K ... W_{k+2}
        for k in range(K - 1, -1, -1):
            gradient[k] = above.T @ ES @ below[k].T
            above = above @ matrices[k]
        return value, gradient

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """F and v = -grad F (shape (1, K n^2), written into ``out`` when given)."""
        if points is not None:
            raise ValueError("a deep linear network has no tracer particles")
        W = self.model.check_state(W)
        value, gradient = self.value_and_gradient(self.model.unpack(W))
        velocity = np.empty_like(W) if out is None else out
        velocity[...] = -gradient.reshape(1, -1)
        return Evaluation(value, velocity, None)

    # Honest, not unfinished: the deep linear flow is the exact gradient flow of a deterministic
    # objective; sgd and langevin are refused for it at config time, so no minibatch exists.
    def sample_batch(self, rng, batch_size):
        """Not available: the problem is deterministic (raises NotImplementedError)."""
        raise NotImplementedError("the deep linear problem is deterministic: use gradient_descent or heavy_ball")


# --------------------------------------------------------------------------- 1-D theory
def mode_flow(r: float, w0, times, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """The decoupled flow dw_k/dt = prod_{j != k} w_j (r - prod_j w_j), k = 1 .. K.

    Parameters
    ----------
    r : float
        The target's eigenvalue in this direction.
    w0 : array_like, shape (K,)
        Initial w_k(0).
    times : array_like, shape (T,)
        Increasing times >= 0.
    rtol, atol : float
        Tolerances of scipy's DOP853.

    Returns
    -------
    ndarray, shape (T, K)
    """
    w0 = np.atleast_1d(np.asarray(w0, dtype=np.float64))
    times = np.asarray(times, dtype=np.float64)

    def rhs(_, w):
        total = np.prod(w)
        others = np.array([np.prod(np.delete(w, k)) for k in range(w.size)])
        return others * (r - total)

    solution = integrate.solve_ivp(rhs, (0.0, float(times[-1])), w0, method="DOP853", t_eval=times, rtol=rtol,
                                   atol=atol)
    if not solution.success:  # pragma: no cover - a smooth polynomial field
        raise RuntimeError(solution.message)
    return solution.y.T


def balanced_mode(r: float, w0: float, times, K: int) -> np.ndarray:
    """Exact balanced solutions (all w_k = w, w(0) = w0 > 0) of dw/dt = w^{K-1} (r - w^K).

    K = 1: w = r + (w0 - r) e^{-t}. K = 2: u = w^2 solves the logistic du/dt = 2 u (r - u),
    u(t) = r u0 / (u0 + (r - u0) e^{-2 r t}) (u0 / (1 + 2 u0 t) at r = 0). Other K: the
    implicit solution t = int_{w0}^{w} ds / (s^{K-1} (r - s^K)) inverted numerically with
    :func:`mode_flow` (rtol 1e-10).

    Parameters
    ----------
    r : float
        The target's eigenvalue in this direction.
    w0 : float
        Initial value w(0) > 0 of every w_k.
    times : array_like, shape (T,)
        Times t >= 0 (increasing for K > 2, where they are passed to :func:`mode_flow`).
    K : int
        Number of layers.

    Returns
    -------
    ndarray, shape (T,): w(t).
    """
    t = np.asarray(times, dtype=np.float64)
    if K == 1:
        return r + (w0 - r) * np.exp(-t)
    if K == 2:
        u0 = w0 * w0
        if r == 0:
            return np.sqrt(u0 / (1 + 2 * u0 * t))
        return np.sqrt(r * u0 / (u0 + (r - u0) * np.exp(-2 * r * t)))
    return mode_flow(r, np.full(K, w0), t)[:, 0]


def commuting_theory(target, w0, times, eigenvalues=None):
    """Theory of the commuting case: Sigma = I, R symmetric, W_k(0) = w0[k] I.

    ``eigenvalues``, when given, are R's eigenvalues as constructed (sorted here; they must
    agree with ``eigvalsh(target)`` to 1e-10), so that an eigenvalue 0 is exactly 0.

    Parameters
    ----------
    target : array_like, shape (n, n)
        The symmetric target R.
    w0 : array_like, shape (K,)
        Initial w_k(0) (W_k(0) = w0[k] I).
    times : array_like, shape (T,)
        Increasing times t >= 0.
    eigenvalues : array_like, shape (n,), optional
        R's eigenvalues as constructed (any order).

    Returns
    -------
    (eigenvalues (n,), w (T, n, K), products (T, n)): the eigenvalues r_i of R (ascending),
    each mode's w_k(t), and prod_k w_k(t), the eigenvalues of P(t) in the eigenbasis of R.
    """
    R = np.asarray(target, dtype=np.float64)
    if not np.allclose(R, R.T):
        raise ValueError("the commuting theory needs a symmetric target")
    r = np.linalg.eigvalsh(R)
    if eigenvalues is not None:
        given = np.sort(np.asarray(eigenvalues, dtype=np.float64))
        if given.shape != r.shape or np.abs(given - r).max() > 1e-10 * max(1.0, np.abs(r).max()):
            raise ValueError(f"eigenvalues {given} are not those of the target {r}")
        r = given
    w = np.stack([mode_flow(ri, w0, times) for ri in r], axis=1)
    return r, w, np.prod(w, axis=2)


def identity_init(model: DeepLinearModel, w0) -> np.ndarray:
    """State with W_k = w0[k] I (w0 a number or a (K,) sequence).

    Parameters
    ----------
    model : DeepLinearModel
    w0 : float or array_like, shape (K,)
        The scale of each layer (one number: the same for all).

    Returns
    -------
    ndarray, shape (1, K n^2), float64
    """
    w0 = np.broadcast_to(np.asarray(w0, dtype=np.float64), (model.K,))
    return model.pack(np.stack([w * np.eye(model.n) for w in w0]))


def symmetric_target(eigenvalues, rng: np.random.Generator) -> np.ndarray:
    """R = U diag(eigenvalues) U^T with U a random orthogonal matrix (Haar, from ``rng``).

    Parameters
    ----------
    eigenvalues : array_like, shape (n,)
    rng : numpy.random.Generator
        Draws the n x n Gaussian matrix whose QR factor (signs fixed) is U.

    Returns
    -------
    ndarray, shape (n, n), float64
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    Q, Rq = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    U = Q * np.sign(np.diag(Rq))
    return (U * eigenvalues) @ U.T


def mode_values(matrices, target) -> np.ndarray:
    """Diagonal of U^T M U for each matrix M (the eigenbasis U of the symmetric target, ascending
    eigenvalues): the w_k of each mode when the matrices commute with R. Shape (K, n).

    Parameters
    ----------
    matrices : array_like, shape (K, n, n)
        [W_1, ..., W_K].
    target : array_like, shape (n, n)
        The symmetric target R.

    Returns
    -------
    ndarray, shape (K, n)
        Row k: the diagonal of U^T W_{k+1} U, in the order of R's ascending eigenvalues.
    """
    _, U = np.linalg.eigh(np.asarray(target))
    return np.array([np.diag(U.T @ M @ U) for M in matrices])


__all__ = ["DeepLinearModel", "DeepLinearProblem", "balanced_mode", "commuting_theory", "conserved",
           "identity_init", "mode_flow", "mode_values", "plot_modes", "product", "symmetric_target"]


def plot_modes(times, measured, theory, eigenvalues):
    """Singular values of P(t) against the theory: the products prod_k w_k(t) per mode.

    Parameters
    ----------
    times : ndarray, shape (T,)
    measured : ndarray, shape (T, n)
        Eigen-direction values of the simulated product (diagonal of U^T P U).
    theory : ndarray, shape (T, n)
        prod_k w_k(t) of each mode (1-D flows).
    eigenvalues : ndarray, shape (n,)
        The target's r_i (labels and dotted asymptotes).

    Returns
    -------
    matplotlib.figure.Figure
        One axes; per mode one theory line, one marker series (simulation) and one dotted
        horizontal line at r_i.
    """
    # A bare Figure needs no backend: a notebook's own backend is left alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    axes = figure.add_subplot()
    step = max(1, len(times) // 30)
    for i, r in enumerate(eigenvalues):
        color = f"C{i}"
        axes.plot(times, theory[:, i], color=color, label=f"theory, r = {r:.3g}")
        axes.plot(times[::step], measured[::step, i], linestyle="none", marker="o", markersize=3, color=color)
        axes.axhline(r, color=color, linestyle=":", linewidth=0.8)
    axes.set_xlabel("time t")
    axes.set_ylabel(r"mode of $W_K \cdots W_1$ (singular value up to sign)")
    axes.set_title("deep linear network: simulation (markers) and 1-D flows (lines)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
