"""Order-parameter ODEs of online SGD in high dimension, and the finite-d simulation they describe.

Setting (Saad & Solla 1995; Goldt et al. 2019, arXiv:1906.08632). Inputs x ~ N(0, I_d); student
committee yhat(x) = sum_k v_k g(lambda_k), lambda_k = w_k . x / sqrt(d) + b_k, k = 1..K; teacher
y = y0 + sigma zeta, y0 = sum_n v*_n g(nu_n), nu_n = w*_n . x / sqrt(d) + b*_n, n = 1..M,
zeta ~ N(0, 1); the biases b, b* are optional (zero by default; b* is fixed). One online SGD step
on a fresh sample (x, y):

    w_k <- w_k - (eta / sqrt(d)) v_k g'(lambda_k) (yhat - y) x
    v_k <- v_k - (eta_v / d) g(lambda_k) (yhat - y)              (when the second layer trains)
    b_k <- b_k - (eta_b / d) v_k g'(lambda_k) (yhat - y)         (when the biases train)

The order parameters Q = W W^T / d (K x K), R = W W*^T / d (K x M), T = W* W*^T / d (M x M,
fixed), v and b become deterministic as d -> infinity and follow, in alpha = steps / d, with
u = (lambda, nu) ~ N(mu, C), mu = (b, b*), C = [[Q, R], [R^T, T]], indexed by c = 1..K+M, and
the signed readout s = (-v, v*) (so y0 - yhat = sum_c s_c g(u_c)),

    dR_kn/dalpha = eta v_k sum_c s_c I3(k, K+n, c)
    dQ_kl/dalpha = eta v_k sum_c s_c I3(k, l, c) + eta v_l sum_c s_c I3(l, k, c)
                   + eta^2 v_k v_l [ sum_{c,e} s_c s_e I4(k, l, c, e) + sigma^2 J2(k, l) ]
    dv_k/dalpha  = eta_v sum_c s_c I2(k, c)                        (zero when v is fixed)
    db_k/dalpha  = eta_b v_k sum_c s_c K2(k, c)                    (zero when b is fixed)
    eps_g        = (1/2) E[(yhat - y0)^2] = (1/2) sum_{c,e} s_c s_e I2(c, e)

with the averages of :class:`GaussianAverages` (I3(a, b, c) = E[g'(u_a) (u_b - mu_b) g(u_c)],
K2(a, c) = E[g'(u_a) g(u_c)]). Expanding s gives the form of Goldt et al.:
dR_kn = eta v_k [sum_m v*_m I3(k,n,m) - sum_j v_j I3(k,n,j)], the eta^2 bracket
sum v*v* I4(k,l,n,m) - 2 sum v_j v*_n I4(k,l,j,n) + sum v_j v_i I4(k,l,j,i) + sigma^2 J2(k,l),
and dv_k = eta_v [sum_n v*_n I2(k,n) - sum_j v_j I2(k,j)]. Why: E[Delta R_kn] d =
-eta v_k E[g'(lambda_k) (w*_n . x / sqrt(d)) (yhat - y)] exactly, and w*_n . x / sqrt(d) =
nu_n - b*_n is the centred field (hence the centred variable of I3); E[Delta Q_kl] d adds the
square of the step, eta^2 v_k v_l E[g'_k g'_l (yhat - y)^2 |x|^2 / d], and |x|^2 / d -> 1 (an
O(1/d) correction at finite d); E[Delta b_k] d = -eta_b v_k E[g'_k (yhat - y)] with no
fluctuation term at order 1/d; alpha advances by 1/d per step. tests/test_online.py checks these
rates against the Monte Carlo average of one SGD step (with and without biases) and, at
eta -> 0, against the gradient flow of eps_g(Q, R, v, b) (db/dalpha = -eta_b d eps_g / d b).

Minibatches. A step on the mean gradient of B fresh samples (``batch_size`` = B) has the same
mean change, so in alpha = steps / d the drift terms are unchanged and the eta^2 bracket (the
square of the step) is divided by B: of the B^2 products of two samples' steps, the B with the
same sample carry |x|^2 / d -> 1, while the B (B - 1) of different samples are products of two
O(1) means and add only O(eta^2 / d) per unit alpha. Time then counts steps, not samples: one
unit of alpha is d steps and B d samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from ..engine._activations import ACTIVATION_ENTRIES
from ._integrals import GaussianAverages

# Tolerances of solve_ivp (DOP853) in integrate_order_parameters unless given.
ODE_RTOL = 1e-8
ODE_ATOL = 1e-10


@dataclass(frozen=True)
class OrderParameterTrajectory:
    """Order parameters of a student-teacher committee on a grid of alpha = steps / d.

    Attributes
    ----------
    alpha : ndarray, shape (n,), float64
        Times (steps / d).
    Q : ndarray, shape (n, K, K), float64
        Student-student overlaps w_k . w_l / d.
    R : ndarray, shape (n, K, M), float64
        Student-teacher overlaps w_k . w*_n / d.
    v : ndarray, shape (n, K), float64
        Second-layer weights (constant when the second layer is fixed).
    generalisation_error : ndarray, shape (n,), float64
        eps_g = (1/2) E[(yhat - y0)^2], noise-free labels y0.
    T : ndarray, shape (M, M), float64
        Teacher overlaps w*_n . w*_m / d.
    teacher_v : ndarray, shape (M,), float64
        Teacher second layer v*.
    b : ndarray, shape (n, K), float64
        Student biases (zeros when the committee has none; constant when they are fixed).
    teacher_b : ndarray, shape (M,), float64
        Teacher biases b* (zeros when it has none).
    """

    alpha: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    v: np.ndarray
    generalisation_error: np.ndarray
    T: np.ndarray
    teacher_v: np.ndarray
    b: np.ndarray | None = None
    teacher_b: np.ndarray | None = None

    def __post_init__(self):
        if self.b is None:
            object.__setattr__(self, "b", np.zeros(np.shape(self.v)))
        if self.teacher_b is None:
            object.__setattr__(self, "teacher_b", np.zeros(np.shape(self.teacher_v)))


def _averages(activation) -> GaussianAverages:
    return activation if isinstance(activation, GaussianAverages) else GaussianAverages(activation)


def _biases(b, teacher_b, K, M) -> tuple[np.ndarray, np.ndarray]:
    """Student (K,) and teacher (M,) biases as float64, zeros where absent."""
    b = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    teacher_b = np.zeros(M) if teacher_b is None else np.asarray(teacher_b, dtype=np.float64)
    if b.shape != (K,) or teacher_b.shape != (M,):
        raise ValueError(f"biases b {b.shape} and teacher_b {teacher_b.shape} must have shapes ({K},) and ({M},)")
    return b, teacher_b


def joint_covariance(Q, R, T) -> np.ndarray:
    """The covariance C = [[Q, R], [R^T, T]] of (lambda_1..lambda_K, nu_1..nu_M).

    Parameters
    ----------
    Q : array_like, shape (K, K)
    R : array_like, shape (K, M)
    T : array_like, shape (M, M)

    Returns
    -------
    ndarray, shape (K + M, K + M), float64
    """
    Q, R, T = (np.asarray(array, dtype=np.float64) for array in (Q, R, T))
    return np.block([[Q, R], [R.T, T]])


def generalisation_error(Q, R, T, v, teacher_v, activation="erf", b=None, teacher_b=None) -> float:
    """eps_g = (1/2) E[(yhat - y0)^2] = (1/2) sum_{c,e} s_c s_e I2(c, e), s = (-v, v*).

    Parameters
    ----------
    Q : array_like, shape (K, K)
    R : array_like, shape (K, M)
    T : array_like, shape (M, M)
    v : array_like, shape (K,)
        Student second layer.
    teacher_v : array_like, shape (M,)
        Teacher second layer v*.
    activation : str or GaussianAverages
        g, by name (see :class:`GaussianAverages`) or as the averages object to use.
    b : array_like, shape (K,), optional
        Student biases (the fields lambda_k = w_k . x / sqrt(d) + b_k); default zero.
    teacher_b : array_like, shape (M,), optional
        Teacher biases b*; default zero.

    Returns
    -------
    float
        The noise-free generalisation error (label noise sigma adds sigma^2 / 2 to the risk).
    """
    averages = _averages(activation)
    C = joint_covariance(Q, R, T)
    signed = np.concatenate([-np.asarray(v, dtype=np.float64), np.asarray(teacher_v, dtype=np.float64)])
    mu = np.concatenate(_biases(b, teacher_b, np.shape(v)[0], np.shape(teacher_v)[0]))
    index = np.arange(len(signed))
    I2 = averages.i2(C, index[:, None], index[None, :], mu=mu)
    return 0.5 * float(signed @ I2 @ signed)


def order_parameter_rates(Q, R, v, T, teacher_v, learning_rate, noise_std=0.0, activation="erf",
                          train_second_layer=False, second_layer_learning_rate=None, batch_size=1, b=None,
                          teacher_b=None, train_bias=False, bias_learning_rate=None):
    """The right-hand side of the order-parameter ODEs: dQ/dalpha, dR/dalpha, dv/dalpha (and
    db/dalpha when the student has biases).

    Formulas in the module docstring (:mod:`meanfield.online`), alpha = steps / d.

    Parameters
    ----------
    Q : array_like, shape (K, K), float64
        Student overlaps w_k . w_l / d (symmetric).
    R : array_like, shape (K, M), float64
        Student-teacher overlaps w_k . w*_n / d.
    v : array_like, shape (K,), float64
        Student second layer.
    T : array_like, shape (M, M), float64
        Teacher overlaps.
    teacher_v : array_like, shape (M,), float64
        Teacher second layer v*.
    learning_rate : float
        eta of the first layer (step eta / sqrt(d) on w).
    noise_std : float
        sigma, standard deviation of the label noise.
    activation : str or GaussianAverages
        g of student and teacher.
    train_second_layer : bool
        Whether v trains (dv/dalpha = eta_v sum_c s_c I2(k, c)); otherwise dv/dalpha = 0.
    second_layer_learning_rate : float, optional
        eta_v (step eta_v / d on v); default ``learning_rate``.
    batch_size : int
        B, the samples whose mean gradient makes one step: the eta^2 bracket of dQ is divided by
        B (module docstring, "Minibatches"); alpha still counts steps / d.
    b : array_like, shape (K,), float64, optional
        Student biases, lambda_k = w_k . x / sqrt(d) + b_k. When given, db/dalpha is returned too.
    teacher_b : array_like, shape (M,), float64, optional
        Teacher biases b* (fixed), nu_n = w*_n . x / sqrt(d) + b*_n; default zero.
    train_bias : bool
        Whether b trains (db/dalpha = eta_b v_k sum_c s_c K2(k, c)); otherwise db/dalpha = 0.
        Needs ``b``.
    bias_learning_rate : float, optional
        eta_b (step eta_b / d on b); default ``learning_rate`` (the engine's bias, see
        :mod:`meanfield.online._engine_map`).

    Returns
    -------
    dQ : ndarray, shape (K, K), float64
    dR : ndarray, shape (K, M), float64
    dv : ndarray, shape (K,), float64
    db : ndarray, shape (K,), float64
        Only when ``b`` is given (zeros when the biases are fixed).
    """
    averages = _averages(activation)
    batch_size = _check_batch_size(batch_size)
    v = np.asarray(v, dtype=np.float64)
    teacher_v = np.asarray(teacher_v, dtype=np.float64)
    C = joint_covariance(Q, R, T)
    K, M = len(v), len(teacher_v)
    if train_bias and b is None:
        raise ValueError("train_bias needs the student biases b")
    mu = np.concatenate(_biases(b, teacher_b, K, M))             # the means of (lambda, nu)
    signed = np.concatenate([-v, teacher_v])                       # (K + M,)
    students = np.arange(K)
    every = np.arange(K + M)
    I3 = averages.i3(C, students[:, None, None], every[None, :, None], every[None, None, :], mu=mu)  # (K, K+M, K+M)
    first = I3 @ signed                                            # (K, K+M): sum_c s_c I3(k, b, c)
    eta = float(learning_rate)
    dR = eta * v[:, None] * first[:, K:]
    drift = eta * v[:, None] * first[:, :K]
    dQ = drift + drift.T
    if eta != 0.0:
        I4 = _symmetric_i4(averages, C, K, M, mu)                  # (K, K, K+M, K+M)
        bracket = np.einsum("klce,c,e->kl", I4, signed, signed)
        if noise_std:
            bracket = bracket + float(noise_std) ** 2 * averages.j2(C, students[:, None], students[None, :], mu=mu)
        dQ = dQ + (eta ** 2 / batch_size) * np.outer(v, v) * bracket
    if train_second_layer:
        eta_v = eta if second_layer_learning_rate is None else float(second_layer_learning_rate)
        I2 = averages.i2(C, students[:, None], every[None, :], mu=mu)   # (K, K+M)
        dv = eta_v * (I2 @ signed)
    else:
        dv = np.zeros(K)
    if b is None:
        return dQ, dR, dv
    if train_bias:
        eta_b = eta if bias_learning_rate is None else float(bias_learning_rate)
        K2 = averages.k2(C, students[:, None], every[None, :], mu=mu)   # (K, K+M)
        db = eta_b * v * (K2 @ signed)
    else:
        db = np.zeros(K)
    return dQ, dR, dv, db


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _symmetric_i4(averages, C, K, M, mu=None) -> np.ndarray:
    """I4(k, l, c, e) for k, l < K and c, e < K + M, computed on k <= l, c <= e only (I4 is
    symmetric in (k, l) and in (c, e)) and copied to the rest."""
    k, l = np.triu_indices(K)
    c, e = np.triu_indices(K + M)
    half = averages.i4(C, k[:, None], l[:, None], c[None, :], e[None, :], mu=mu)  # (pairs kl, pairs ce)
    I4 = np.empty((K, K, K + M, K + M))
    for (ki, li), row in zip(zip(k, l), half):
        for first, second in ((ki, li), (li, ki)):
            I4[first, second, c, e] = row
            I4[first, second, e, c] = row
    return I4


def integrate_order_parameters(Q0, R0, v0, T, teacher_v, learning_rate, alpha, noise_std=0.0, activation="erf",
                               train_second_layer=False, second_layer_learning_rate=None, rtol=ODE_RTOL,
                               atol=ODE_ATOL, batch_size=1, b0=None, teacher_b=None, train_bias=False,
                               bias_learning_rate=None) -> OrderParameterTrajectory:
    """Integrate the order-parameter ODEs in alpha with ``scipy.integrate.solve_ivp`` (DOP853).

    Parameters
    ----------
    Q0 : array_like, shape (K, K)
        Initial student overlaps.
    R0 : array_like, shape (K, M)
        Initial student-teacher overlaps.
    v0 : array_like, shape (K,)
        Initial (or fixed) student second layer.
    T : array_like, shape (M, M)
        Teacher overlaps.
    teacher_v : array_like, shape (M,)
        Teacher second layer v*.
    learning_rate : float
        eta.
    alpha : array_like, shape (n,)
        Increasing output times (steps / d), alpha[0] the initial time of (Q0, R0, v0).
    noise_std : float
        Label noise sigma.
    activation : str or GaussianAverages
        g of student and teacher.
    train_second_layer : bool
        Whether v trains.
    second_layer_learning_rate : float, optional
        eta_v; default eta.
    rtol, atol : float
        Tolerances of solve_ivp (defaults :data:`ODE_RTOL` = 1e-8, :data:`ODE_ATOL` = 1e-10).
    batch_size : int
        B, samples per step (:func:`order_parameter_rates`).
    b0 : array_like, shape (K,), optional
        Initial (or fixed) student biases; default zero.
    teacher_b : array_like, shape (M,), optional
        Teacher biases b*; default zero.
    train_bias : bool
        Whether the student biases train (from ``b0``, or from zero).
    bias_learning_rate : float, optional
        eta_b; default eta.

    Returns
    -------
    OrderParameterTrajectory
        Q, R, v, b and eps_g at the times ``alpha``.
    """
    averages = _averages(activation)
    batch_size = _check_batch_size(batch_size)
    Q0, R0, T = (np.asarray(array, dtype=np.float64) for array in (Q0, R0, T))
    v0 = np.asarray(v0, dtype=np.float64)
    teacher_v = np.asarray(teacher_v, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    K, M = R0.shape
    if Q0.shape != (K, K) or v0.shape != (K,) or T.shape != (M, M) or teacher_v.shape != (M,):
        raise ValueError(f"inconsistent shapes: Q0 {Q0.shape}, R0 {R0.shape}, v0 {v0.shape}, T {T.shape}, "
                         f"teacher_v {teacher_v.shape}")
    if alpha.ndim != 1 or len(alpha) < 1 or np.any(np.diff(alpha) <= 0):
        raise ValueError("alpha must be a non-empty increasing 1-D array")
    b0, teacher_b = _biases(b0, teacher_b, K, M)
    size = K * K + K * M

    def unpack(state):
        # (Q, R, v, b): b is part of the state only when it trains (fixed biases are parameters,
        # so that zero fixed biases integrate bit for bit as none: the solver's error norm
        # would see the extra components)
        b = state[size + K:] if train_bias else b0
        return state[:K * K].reshape(K, K), state[K * K:size].reshape(K, M), state[size:size + K], b

    def rates(_, state):
        Q, R, v, b = unpack(state)
        dQ, dR, dv, db = order_parameter_rates(Q, R, v, T, teacher_v, learning_rate, noise_std, averages,
                                               train_second_layer, second_layer_learning_rate, batch_size, b=b,
                                               teacher_b=teacher_b, train_bias=train_bias,
                                               bias_learning_rate=bias_learning_rate)
        return np.concatenate([dQ.ravel(), dR.ravel(), dv] + ([db] if train_bias else []))

    state0 = np.concatenate([Q0.ravel(), R0.ravel(), v0] + ([b0] if train_bias else []))
    if len(alpha) == 1:
        states = state0[:, None]
    else:
        solution = solve_ivp(rates, (alpha[0], alpha[-1]), state0, method="DOP853", t_eval=alpha, rtol=rtol,
                             atol=atol)
        if not solution.success:
            raise RuntimeError(f"solve_ivp failed: {solution.message}")
        states = solution.y
    return _trajectory(alpha, [unpack(state) for state in states.T], T, teacher_v, averages, teacher_b)


def _trajectory(alpha, states, T, teacher_v, averages, teacher_b=None) -> OrderParameterTrajectory:
    """The trajectory of states (Q, R, v) or (Q, R, v, b), with eps_g at each."""
    Q = np.array([state[0] for state in states])
    R = np.array([state[1] for state in states])
    v = np.array([state[2] for state in states])
    b = np.array([state[3] if len(state) > 3 else np.zeros(len(state[2])) for state in states])
    errors = np.array([generalisation_error(q, r, T, vk, teacher_v, averages, b=bk, teacher_b=teacher_b)
                       for q, r, vk, bk in zip(Q, R, v, b)])
    return OrderParameterTrajectory(np.asarray(alpha, dtype=np.float64), Q, R, v, errors, np.array(T),
                                    np.array(teacher_v), b,
                                    np.zeros(len(teacher_v)) if teacher_b is None else np.array(teacher_b))


def weights_with_overlaps(Q, R, T, d, rng) -> tuple[np.ndarray, np.ndarray]:
    """Student and teacher first layers in dimension d with exactly the given overlaps.

    W_all = sqrt(d) L O with L L^T = C = [[Q, R], [R^T, T]] (Cholesky, or the eigendecomposition
    when C is singular) and O a random (K + M) x d matrix with orthonormal rows, so that
    W W^T / d = Q, W W*^T / d = R and W* W*^T / d = T up to rounding.

    Parameters
    ----------
    Q : array_like, shape (K, K)
    R : array_like, shape (K, M)
    T : array_like, shape (M, M)
    d : int
        Input dimension, at least K + M.
    rng : numpy.random.Generator
        Draws O.

    Returns
    -------
    student_weights : ndarray, shape (K, d), float64
    teacher_weights : ndarray, shape (M, d), float64
    """
    C = joint_covariance(Q, R, T)
    n = C.shape[0]
    if d < n:
        raise ValueError(f"d = {d} is below K + M = {n}")
    try:
        factor = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(C)
        if eigenvalues.min() < -1e-12 * max(1.0, eigenvalues.max()):
            raise ValueError("[[Q, R], [R^T, T]] is not positive semidefinite") from None
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    frame, upper = np.linalg.qr(rng.standard_normal((d, n)))
    frame = frame * np.sign(np.diag(upper))
    weights = math.sqrt(d) * factor @ frame.T
    K = np.shape(Q)[0]
    return weights[:K], weights[K:]


def simulate_online_sgd(student_weights, teacher_weights, v0, teacher_v, learning_rate, alpha, rng,
                        noise_std=0.0, activation="erf", train_second_layer=False,
                        second_layer_learning_rate=None, block_size=1024, batch_size=1, b0=None, teacher_b=None,
                        train_bias=False, bias_learning_rate=None) -> OrderParameterTrajectory:
    """Online SGD of the committee at finite d, recorded as order parameters.

    One step per fresh sample x ~ N(0, I_d), y = sum_n v*_n g(nu_n) + sigma zeta, with the fields
    lambda_k = w_k . x / sqrt(d) + b_k and nu_n = w*_n . x / sqrt(d) + b*_n:
    w_k <- w_k - (eta / sqrt(d)) v_k g'(lambda_k) (yhat - y) x, when the second layer trains
    v_k <- v_k - (eta_v / d) g(lambda_k) (yhat - y), and when the biases train
    b_k <- b_k - (eta_b / d) v_k g'(lambda_k) (yhat - y) (all from the same yhat, before the step).
    With ``batch_size`` = B each step takes the mean of these changes over B fresh samples.

    Parameters
    ----------
    student_weights : array_like, shape (K, d)
        Initial first layer W (not modified).
    teacher_weights : array_like, shape (M, d)
        Teacher first layer W*.
    v0 : array_like, shape (K,)
        Initial student second layer.
    teacher_v : array_like, shape (M,)
        Teacher second layer v*.
    learning_rate : float
        eta.
    alpha : array_like, shape (n,)
        Nondecreasing record times; the state is recorded after round(alpha_i d) steps (alpha_0
        may be 0: the initial state).
    rng : numpy.random.Generator
        Draws the samples and the label noise.
    noise_std : float
        Label noise sigma.
    activation : str
        g (an activation of ``meanfield.engine``); eps_g uses :class:`GaussianAverages` of it.
    train_second_layer : bool
        Whether v trains.
    second_layer_learning_rate : float, optional
        eta_v; default eta.
    block_size : int
        Steps whose samples are drawn per call of the generator.
    batch_size : int
        B, fresh samples per step (their mean step is taken); alpha counts steps / d.
    b0 : array_like, shape (K,), optional
        Initial (or fixed) student biases; default zero.
    teacher_b : array_like, shape (M,), optional
        Teacher biases b*; default zero.
    train_bias : bool
        Whether the student biases train.
    bias_learning_rate : float, optional
        eta_b; default eta.

    Returns
    -------
    OrderParameterTrajectory
        ``alpha`` holds the times actually recorded, round(alpha_i d) / d; eps_g is the exact
        population value at the recorded weights (the Gaussian averages of their overlaps).
    """
    if activation not in ACTIVATION_ENTRIES:
        raise ValueError(f"activation must be one of {tuple(ACTIVATION_ENTRIES)}, got {activation!r}")
    entry = ACTIVATION_ENTRIES[activation]
    g, g_prime = entry.sigma, entry.sigma_prime
    W = np.array(student_weights, dtype=np.float64)
    W_star = np.asarray(teacher_weights, dtype=np.float64)
    v = np.array(v0, dtype=np.float64)
    teacher_v = np.asarray(teacher_v, dtype=np.float64)
    if W.ndim != 2 or W_star.ndim != 2 or W_star.shape[1] != W.shape[1]:
        raise ValueError(f"student and teacher weights must be (K, d) and (M, d), got {W.shape} and {W_star.shape}")
    if v.shape != (W.shape[0],) or teacher_v.shape != (W_star.shape[0],):
        raise ValueError(f"v0 {v.shape} and teacher_v {teacher_v.shape} must match K = {W.shape[0]}, "
                         f"M = {W_star.shape[0]}")
    K, d = W.shape
    batch_size = _check_batch_size(batch_size)
    b, teacher_b = _biases(b0, teacher_b, K, W_star.shape[0])
    b = b.copy()
    steps_at = np.rint(np.asarray(alpha, dtype=np.float64) * d).astype(np.int64)
    if np.any(np.diff(steps_at) < 0) or steps_at[0] < 0:
        raise ValueError("alpha must be nonnegative and nondecreasing")
    eta = float(learning_rate)
    eta_v = eta if second_layer_learning_rate is None else float(second_layer_learning_rate)
    eta_b = eta if bias_learning_rate is None else float(bias_learning_rate)
    sqrt_d = math.sqrt(d)
    T = W_star @ W_star.T / d
    states = []
    step = 0
    block = np.empty((0, d))
    position = 0
    for target in steps_at:
        while step < target:
            if position == len(block):
                count = int(min(block_size, steps_at[-1] - step)) * batch_size
                block = rng.standard_normal((count, d))
                noise = rng.standard_normal(count)
                position = 0
            X = block[position:position + batch_size]                  # (B, d)
            lam = X @ W.T / sqrt_d + b                                  # (B, K)
            nu = X @ W_star.T / sqrt_d + teacher_b                      # (B, M)
            error = g(lam) @ v - g(nu) @ teacher_v - noise_std * noise[position:position + batch_size]
            if train_second_layer:
                v_new = v - (eta_v / d) * (g(lam) * error[:, None]).mean(axis=0)
            coefficient = v * g_prime(lam) * error[:, None]            # (B, K)
            W -= (eta / (sqrt_d * batch_size)) * coefficient.T @ X
            if train_bias:
                b -= (eta_b / d) * coefficient.mean(axis=0)
            if train_second_layer:
                v = v_new
            position += batch_size
            step += 1
        states.append((W @ W.T / d, W @ W_star.T / d, v.copy(), b.copy()))
    return _trajectory(steps_at / d, states, T, teacher_v, GaussianAverages(activation), teacher_b)
