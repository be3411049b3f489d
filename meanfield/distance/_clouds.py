"""Wasserstein distances between weighted point clouds, computed with POT.

All functions take clouds X of shape (n, k) and Y of shape (n', k) (a 1-D array is read as
n points in R^1) with optional weights a (n,) and b (n',), uniform by default. Weights must
be finite and nonnegative with a positive sum; they are normalised to probability vectors,
and points of weight zero are dropped (they carry no mass). Everything is computed in
float64 and the distances are returned as Python floats.

POT behaviours this module guards against (POT 0.9):

- ``ot.emd2`` does not raise when the network simplex stops early (``numItermax`` reached,
  result code 3): it returns the cost of the non-optimal plan and only issues a
  ``UserWarning``. :func:`wasserstein` reads the result code and raises instead.
- ``ot.sinkhorn2`` has ``warn=False`` by default, so an unconverged Sinkhorn loop is
  silent, and its value is the linear part <C, P> of the entropic problem only.
  :func:`sinkhorn_divergence` checks the marginal error and adds the entropy term.
- ``ot.sliced_wasserstein_distance`` with an integer seed reseeds numpy's *global* random
  state; :func:`sliced_wasserstein` draws its own directions from
  ``numpy.random.default_rng(seed)`` and leaves the global state alone.
- ``ot.wasserstein_1d`` returns W_p^p, not W_p, and does not normalise the weights.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import ot
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

METHODS = ("exact", "sliced", "auto")

# POT's network simplex result codes (ot.lp.emd_wrap.check_result).
_EMD_CODES = {
    0: "problem infeasible (the weights are not in the simplex)",
    1: "optimal",
    2: "problem unbounded",
    3: "numItermax reached before optimality",
}


# ----------------------------------------------------------------------------- validation
def _points(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, k) with n, k >= 1 (or (n,) for k = 1), got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf")
    return X


def _weights(w, n: int, name: str) -> np.ndarray:
    """Probability vector of length n: uniform for None, else w validated and normalised."""
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its points, got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf: weights must be finite")
    if np.any(w < 0):
        raise ValueError(f"{name} has negative entries: weights must be nonnegative")
    total = w.sum()
    if not total > 0:
        raise ValueError(f"{name} sums to {total}: weights need a positive total mass")
    return w / total


def _measure(X, w, name: str, wname: str):
    """(points, probability weights) with zero-weight points removed."""
    X = _points(X, name)
    w = _weights(w, X.shape[0], wname)
    keep = w > 0
    if not keep.all():
        X, w = X[keep], w[keep]
        w = w / w.sum()
    return X, w


def _pair(X, Y, a, b):
    X, a = _measure(X, a, "X", "a")
    Y, b = _measure(Y, b, "Y", "b")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must have the same number of columns, got {X.shape[1]} and {Y.shape[1]}")
    return X, Y, a, b


def _check_p(p) -> float:
    p = float(p)
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    return p


def _gigabytes(n: int, n2: int) -> float:
    # dense float64 cost matrix plus the dense plan POT's network simplex returns
    return 2 * 8 * n * n2 / 1e9


def _too_large(n: int, n2: int, max_pairs: int, solver: str = "exact", advice: str | None = None) -> str:
    if advice is None:
        advice = ("Use method=\"sliced\" (or \"auto\", which switches to sliced above max_pairs), "
                  "or raise max_pairs if the memory is there.")
    return (f"{solver} optimal transport between {n} and {n2} points needs an {n} x {n2} cost matrix "
            f"({n * n2:,} pairs > max_pairs = {max_pairs:,}); the cost matrix and transport plan "
            f"would need about {_gigabytes(n, n2):.1f} GB. " + advice)


def _cost(X, Y, p: float) -> np.ndarray:
    """|x_i - y_j|^p, shape (n, n'), float64, C order (direct differences, no cancellation)."""
    if p == 2:
        return cdist(X, Y, "sqeuclidean")
    M = cdist(X, Y, "euclidean")
    return M if p == 1 else M**p


def _emd(a, b, M, num_iter_max: int | None) -> float:
    """min_P <M, P> over couplings of a and b (ot.emd2); raises unless POT reports optimal."""
    n, n2 = M.shape
    if num_iter_max is None:
        num_iter_max = max(10_000_000, 50 * n * n2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cost, log = ot.emd2(a, b, np.ascontiguousarray(M), numItermax=int(num_iter_max), log=True)
    code = int(log["result_code"])
    if code != 1:
        message = log.get("warning") or _EMD_CODES.get(code, "unknown result")
        raise RuntimeError(
            f"POT's exact solver (ot.emd2) did not reach an optimal plan: result code {code}, "
            f"{message!r} (numItermax = {int(num_iter_max)}). Its value would be the cost of a "
            "non-optimal plan, so it is not returned; raise num_iter_max or use method=\"sliced\".")
    for w in caught:  # anything else POT said, passed on unchanged
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return max(float(cost), 0.0)


# ----------------------------------------------------------------------------- distances
def wasserstein(X, Y, a=None, b=None, p=2, method="exact", max_pairs=25_000_000, n_projections=500,
                seed=0, *, num_iter_max=None) -> float:
    r"""Wasserstein distance W_p between two weighted point clouds.

    .. math::
        W_p(\mu, \nu) = \Big(\min_{P \ge 0,\ P 1 = a,\ P^T 1 = b}
        \sum_{ij} P_{ij} |x_i - y_j|^p\Big)^{1/p},
        \quad \mu = \sum_i a_i \delta_{x_i},\ \nu = \sum_j b_j \delta_{y_j}

    Parameters
    ----------
    X : ndarray, shape (n, k) or (n,)
    Y : ndarray, shape (n', k) or (n',)
    a : ndarray, shape (n,), optional
        Weights of X (uniform by default); nonnegative and finite, normalised to sum 1.
    b : ndarray, shape (n',), optional
        Weights of Y, likewise.
    p : float
        Order, p >= 1 (ground cost |x - y|^p with the Euclidean norm; p = 2 uses the
        squared Euclidean cost computed from direct differences).
    method : {"exact", "sliced", "auto"}
        ``"exact"``: POT's network simplex (``ot.emd2``) on the dense cost matrix, memory
        O(n n'). ``"sliced"``: :func:`sliced_wasserstein` (a different, smaller quantity:
        SW_p <= W_p). ``"auto"``: exact when n n' <= max_pairs, otherwise sliced -- the
        returned number then changes meaning above the size limit.
    max_pairs : int
        Largest n n' for the exact solver (default 25e6: 0.2 GB per dense float64 matrix).
    n_projections, seed
        Passed to :func:`sliced_wasserstein` for the sliced method.
    num_iter_max : int, optional
        Iteration cap of the network simplex (default max(1e7, 50 n n')).

    Returns
    -------
    float
        W_p (the p-th root of the optimal cost, not its p-th power).

    Raises
    ------
    ValueError
        Bad shapes or weights, unknown method, or ``"exact"`` with n n' > max_pairs (the
        message gives the memory it would need).
    RuntimeError
        If POT's solver does not report an optimal plan (e.g. its result code 3,
        "numItermax reached before optimality"): a truncated value is never returned.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = _check_p(p)
    X, Y, a, b = _pair(X, Y, a, b)
    n, n2 = X.shape[0], Y.shape[0]
    if n * n2 > max_pairs:
        if method == "exact":
            raise ValueError(_too_large(n, n2, max_pairs))
        method = "sliced"
    if method == "sliced":
        return sliced_wasserstein(X, Y, a, b, n_projections=n_projections, seed=seed, p=p)
    return _emd(a, b, _cost(X, Y, p), num_iter_max) ** (1.0 / p)


def _symmetric_scaling(a, M, reg: float, num_iter_max: int, stop_thr: float) -> np.ndarray:
    """Log-scaling u of the symmetric problem OT_eps(a, a): P_ij = exp(u_i + u_j - M_ij / reg).

    Alternating Sinkhorn on a symmetric problem can crawl (e.g. > 1e5 iterations for 60
    points at reg = 0.1 where the averaged iteration needs ~30), so the self terms use the
    averaged fixed-point iteration u <- (u + T(u)) / 2 with T(u)_i = log a_i - logsumexp_j
    (u_j - M_ij / reg) (Feydy et al. 2019); the result then warm-starts POT, which checks it.
    """
    log_a, K = np.log(a), -M / reg
    u = log_a.copy()
    for it in range(int(num_iter_max)):
        lse = logsumexp(K + u[None, :], axis=1)
        if it % 10 == 0 and np.linalg.norm(np.exp(u + lse) - a) < 0.1 * stop_thr:
            break
        u = 0.5 * (u + log_a - lse)
    return u


def _entropic_ot(a, b, M, reg: float, num_iter_max: int, stop_thr: float, label: str,
                 warmstart=None) -> float:
    """OT_eps(a, b) = min_P <M, P> + reg KL(P | a x b), log-domain Sinkhorn (ot.sinkhorn2)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, log = ot.sinkhorn2(a, b, M, reg, method="sinkhorn_log", numItermax=int(num_iter_max),
                              stopThr=stop_thr, log=True, warn=True, warmstart=warmstart)
    unconverged = [w for w in caught if "did not converge" in str(w.message)]
    err = float(log["err"][-1]) if len(log["err"]) else math.inf
    if unconverged or not err < stop_thr:
        raise RuntimeError(
            f"Sinkhorn (ot.sinkhorn2, method='sinkhorn_log') did not converge for {label}: marginal "
            f"error {err:.3g} >= stopThr {stop_thr:g} after {int(log['niter']) + 1} iterations "
            f"(numItermax = {int(num_iter_max)}). Increase num_iter_max or reg.")
    for w in caught:
        # log["u"] = exp(log_u) can overflow harmlessly for small reg; it is not used here.
        if not (issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    u, v = np.asarray(log["log_u"]), np.asarray(log["log_v"])
    log_plan = u[:, None] + v[None, :] - M / reg
    P = np.exp(log_plan)
    # <M, P> + reg sum P log(P / (a b^T)) = reg sum P (u_i + v_j - log a_i - log b_j)
    return float(reg * np.sum(P * ((u - np.log(a))[:, None] + (v - np.log(b))[None, :])))


def sinkhorn_divergence(X, Y, reg, a=None, b=None, p=2, *, num_iter_max=100_000, stop_thr=1e-9,
                        max_pairs=25_000_000) -> float:
    r"""Debiased entropic (Sinkhorn) divergence between two weighted point clouds.

    .. math::
        S_\varepsilon(\mu, \nu) = OT_\varepsilon(\mu, \nu)
            - \tfrac12 \big(OT_\varepsilon(\mu, \mu) + OT_\varepsilon(\nu, \nu)\big),
        \qquad OT_\varepsilon(\mu, \nu) = \min_{P \in \Pi(a, b)} \langle C, P \rangle
            + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b),
        \quad C_{ij} = |x_i - y_j|^p

    Each OT_eps is solved by log-domain Sinkhorn (``ot.sinkhorn2(method="sinkhorn_log")``);
    the symmetric self terms are first brought to convergence by the averaged symmetric
    iteration (plain alternating Sinkhorn can need 1000x more iterations on them) and POT,
    warm-started there, checks the marginals. Each value is recomputed from the returned
    potentials including the entropy term (POT's ``sinkhorn2`` value is the linear part
    <C, P> only, for which the properties below are not guaranteed).

    Convergence: Sinkhorn needs of order 1/reg iterations or more, and it crawls when reg is
    small compared with the squared gaps between nearby points *and* the two clouds nearly
    coincide (the plan is then close to a permutation and the potentials barely
    determined); identical inputs return 0 at once. An unconverged solve raises.

    Properties (Feydy et al. 2019, for p = 1 or 2): S_eps >= 0, S_eps = 0 when the two
    measures are equal, and S_eps -> W_p^p as reg -> 0 (at rate O(eps log 1/eps)), while it
    tends to an MMD as reg -> infinity. Note it approximates W_p^p, not W_p.

    Parameters
    ----------
    X : ndarray, shape (n, k) or (n,)
    Y : ndarray, shape (n', k) or (n',)
    reg : float
        Entropic regularisation eps > 0, in the units of the cost |x - y|^p (absolute, not
        relative to the cost's scale). Small reg needs many iterations (~ 1/reg).
    a, b : ndarray, shapes (n,), (n',), optional
        Weights (uniform by default), nonnegative, finite, normalised.
    p : float
        Exponent of the ground cost, p >= 1.
    num_iter_max : int
        Sinkhorn iteration cap for each of the three problems.
    stop_thr : float
        Convergence threshold on POT's marginal error (Euclidean norm of P^T 1 - b).
    max_pairs : int
        Largest n n' (and n^2, n'^2) allowed; the dense cost matrices are O(n n').

    Returns
    -------
    float
        S_eps (units of W_p^p).

    Raises
    ------
    RuntimeError
        If any of the three Sinkhorn problems does not reach stop_thr within num_iter_max
        iterations (POT itself would only warn, and only with ``warn=True``).
    """
    reg = float(reg)
    if not (math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a positive finite number, got {reg!r}")
    p = _check_p(p)
    X, Y, a, b = _pair(X, Y, a, b)
    n, n2 = X.shape[0], Y.shape[0]
    if max(n * n2, n * n, n2 * n2) > max_pairs:
        big = max(n, n2)
        raise ValueError(_too_large(big, big, max_pairs, solver="entropic",
                                    advice="Use sliced_wasserstein, or raise max_pairs if the memory is there."))
    if X.shape == Y.shape and np.array_equal(X, Y) and np.array_equal(a, b):
        return 0.0  # S_eps(mu, mu) = 0 by definition (and alternating Sinkhorn crawls there)
    ab = _entropic_ot(a, b, _cost(X, Y, p), reg, num_iter_max, stop_thr, "OT_eps(X, Y)")
    self_terms = []
    for Z, w, label in ((X, a, "OT_eps(X, X)"), (Y, b, "OT_eps(Y, Y)")):
        M = _cost(Z, Z, p)
        u = _symmetric_scaling(w, M, reg, num_iter_max, stop_thr)
        self_terms.append(_entropic_ot(w, w, M, reg, num_iter_max, stop_thr, label, warmstart=(u, u)))
    aa, bb = self_terms
    return float(ab - 0.5 * (aa + bb))


def _directions(k: int, n_projections: int, seed) -> np.ndarray:
    """n_projections directions uniform on the sphere S^(k-1), shape (k, n_projections)."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((k, n_projections))
    norms = np.linalg.norm(theta, axis=0)
    while np.any(norms == 0):  # probability zero, but never divide by it
        bad = norms == 0
        theta[:, bad] = rng.standard_normal((k, int(bad.sum())))
        norms = np.linalg.norm(theta, axis=0)
    return theta / norms


def sliced_wasserstein(X, Y, a=None, b=None, n_projections=500, seed=0, p=2, return_error=False):
    r"""Monte Carlo estimate of the sliced Wasserstein distance SW_p.

    .. math::
        SW_p(\mu, \nu)^p = \int_{S^{k-1}} W_p^p(\theta_\# \mu, \theta_\# \nu)\, d\sigma(\theta)
        \approx \frac1L \sum_{l=1}^L W_p^p(\theta_l{}_\# \mu, \theta_l{}_\# \nu)

    with L = n_projections directions theta_l drawn uniformly on the sphere (normalised
    Gaussians from ``numpy.random.default_rng(seed)``; the global numpy random state is not
    touched), and each 1-D W_p^p computed exactly from quantile functions
    (``ot.sliced_wasserstein_distance`` with these projections). Example: for a cloud and
    its translate by v, SW_2^2 = |v|^2 / k exactly in expectation over the directions.

    Parameters
    ----------
    X : ndarray, shape (n, k) or (n,)
    Y : ndarray, shape (n', k) or (n',)
    a, b : ndarray, shapes (n,), (n',), optional
        Weights (uniform by default), nonnegative, finite, normalised.
    n_projections : int
        Number L of random directions (>= 1; >= 2 for a standard error).
    seed : int or numpy.random.Generator
        Seed of the directions.
    p : float
        Order, p >= 1.
    return_error : bool
        Also return the Monte Carlo standard error of the estimate of SW_p^p,
        std_l(W_p^p(theta_l)) / sqrt(L) (sample standard deviation over projections).

    Returns
    -------
    float
        The estimate of SW_p (the p-th root of the mean over projections).
    float
        Only with return_error: the standard error of the SW_p^p estimate (units of SW_p^p;
        NaN for a single projection). By the delta method the standard error of SW_p itself
        is about this / (p SW_p^(p-1)).
    """
    p = _check_p(p)
    if not (isinstance(n_projections, (int, np.integer)) and n_projections >= 1):
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    X, Y, a, b = _pair(X, Y, a, b)
    theta = _directions(X.shape[1], int(n_projections), seed)
    _, log = ot.sliced_wasserstein_distance(X, Y, a, b, p=p, projections=theta, log=True)
    per_projection = np.maximum(np.asarray(log["projected_emds"], dtype=np.float64), 0.0)
    mean = float(per_projection.mean())
    value = mean ** (1.0 / p)
    if not return_error:
        return value
    L = per_projection.size
    error = float(per_projection.std(ddof=1) / math.sqrt(L)) if L > 1 else math.nan
    return value, error


def wasserstein_1d(u, v, u_weights=None, v_weights=None, p=2) -> float:
    r"""Exact W_p between two weighted empirical measures on the line.

    .. math::
        W_p^p(\mu, \nu) = \int_0^1 |F_\mu^{-1}(q) - F_\nu^{-1}(q)|^p \, dq

    computed from the quantile functions (``ot.wasserstein_1d``, O((n + n') log(n + n'))).

    Parameters
    ----------
    u : ndarray, shape (n,)
    v : ndarray, shape (n',)
    u_weights, v_weights : ndarray, shapes (n,), (n',), optional
        Weights (uniform by default), nonnegative, finite, normalised here (POT does not).
    p : float
        Order, p >= 1.

    Returns
    -------
    float
        W_p (POT's ``wasserstein_1d`` returns W_p^p; this returns its p-th root).
    """
    p = _check_p(p)
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.ndim != 1 or v.ndim != 1:
        raise ValueError(f"u and v must be 1-D arrays, got shapes {u.shape} and {v.shape}")
    u, uw = _measure(u, u_weights, "u", "u_weights")
    v, vw = _measure(v, v_weights, "v", "v_weights")
    value = float(ot.wasserstein_1d(u[:, 0], v[:, 0], uw, vw, p=p))
    return max(value, 0.0) ** (1.0 / p)
