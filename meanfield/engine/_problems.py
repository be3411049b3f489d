"""Problems: an objective F(W) and the velocity field it generates, v(w_i) = -m grad_{w_i} F.

A problem answers three questions about a state ``W`` of shape (m, d + 2):

* ``evaluate(W, points=None)``: the objective, the velocity of every particle and, for extra
  points (tracers), the velocity they would have in the field of the measure of ``W``;
* ``batch_evaluate(W, rng, batch_size)``: the same on a fresh random batch (SGD);
* ``risk(W)``: the objective alone, used when recording.

Integrators only use these, so a new problem is one new class.
"""
from __future__ import annotations

import abc
import math
from typing import NamedTuple

import numpy as np

from .. import kernels
from ._activations import activations_where
from ._losses import LOSS_ENTRIES
from ._model import TILE_SIZE, Model, tile_rows
from ._teacher import CLASSIFICATION_LOSSES, Teacher

LOSSES = tuple(LOSS_ENTRIES)
# Closed forms without bias (arc-cosine and arcsine kernels) and with biases (bivariate normal
# CDF, kernels/population_bias.py); bias-free runs keep the bias-free kernels.
CLOSED_FORM_ACTIVATIONS = activations_where(lambda entry: entry.closed_form)
BIAS_CLOSED_FORM_ACTIVATIONS = activations_where(lambda entry: entry.bias_closed_form)
METHODS = ("auto", "closed_form", "series", "quadrature", "monte_carlo")
# Per-pair truncation tolerance of the Hermite series (kernels.population_series).
SERIES_TOL = 1e-10
# Bias-free closed-form networks with at most this many pairs (m (m + 1) / 2 with itself plus
# m k with the teacher) are evaluated by one fused serial pass (kernels.ensemble): below it the
# tiled kernels' thread launches, BLAS calls and allocations cost more than the arithmetic.
# Set from `python benchmarks/ensemble_throughput.py --crossover`.
FUSED_MAX_PAIRS = 1000


class Evaluation(NamedTuple):
    """Result of a problem evaluation.

    Attributes
    ----------
    value : float
        The objective F (population risk, empirical risk, or batch loss).
    velocity : ndarray, shape (m, d + 2)
        v(w_i) = -m grad_{w_i} F for every particle; frozen columns are 0.
    points_velocity : ndarray, shape (n, d + 2) or None
        Velocity of the extra points in the field of the measure (None without points).
    """

    value: float
    velocity: np.ndarray
    points_velocity: np.ndarray | None

    @property
    def grad_norm(self) -> float:
        """Euclidean norm of grad F over all particle coordinates, |v| / m (v = -m grad F)."""
        return math.sqrt(kernels.sum_of_squares(self.velocity)) / self.velocity.shape[0]


class Problem:
    """Shared behaviour of all problems; subclasses implement ``evaluate`` and ``sample_batch``."""

    model: Model
    loss: str
    method: str

    def evaluate(self, W, points=None, out=None) -> Evaluation:  # pragma: no cover - interface
        """Objective F(W), particle velocities v(w_i) = -m grad_{w_i} F and, with ``points``, the field there."""
        raise NotImplementedError

    def sample_batch(self, rng: np.random.Generator, batch_size: int):  # pragma: no cover
        """A batch (X, y) for stochastic integrators: fresh draws from the data law, or a minibatch."""
        raise NotImplementedError

    def value_and_velocity(self, W):
        """(F(W), v(W)) with v of shape (m, d + 2)."""
        evaluation = self.evaluate(W)
        return evaluation.value, evaluation.velocity

    def velocity_at(self, W, points) -> np.ndarray:
        """Velocity v[mu_m](x) of arbitrary points x (n, d + 2) in the field of the measure of W.

        For a point equal to a particle of W this is that particle's velocity; the points do
        not act on the measure (tracer particles).
        """
        return self.evaluate(W, points).points_velocity

    def risk(self, W) -> float:
        """The objective F(W)."""
        return self.evaluate(W).value

    def batch_evaluate(self, W, rng: np.random.Generator, batch_size: int, points=None,
                       out=None) -> Evaluation:
        """Objective and velocity on a fresh batch of ``batch_size`` samples (SGD).

        The velocity is an unbiased estimate of the full one (for the population problem:
        online SGD, a fresh sample from the data law each call).
        """
        X, y = self.sample_batch(rng, batch_size)
        return _data_evaluation(self.model, self.loss, W, X, y, points, out, workspaces=self._workspaces("batch"))

    def _workspaces(self, role: str) -> dict:
        """This problem's kept work arrays of the data kernel for one role ("batch": SGD
        batches, "sample": the full sample), so that each step reuses them (``_data_evaluation``)."""
        return self.__dict__.setdefault("_kernel_workspaces", {}).setdefault(role, {})

    def _state(self, W, points):
        W = self.model.check_state(W)
        if points is not None:
            points = self.model.check_state(points, "points")
        return W, points

    @property
    def has_analytic_hessian(self) -> bool:
        """Whether :meth:`hessian` and :meth:`hessian_vector_product` are available."""
        return False

    def hessian(self, W) -> np.ndarray:
        """Dense Hessian of F over the trainable coordinates (see ``meanfield.landscape``).

        Variables are particle-major, x = W[:, model.trainable].ravel(), n_var =
        m * model.trainable.sum(); it is the Hessian of F itself (grad F = -v / m). Computed
        in float64 by a compiled kernel; only where ``has_analytic_hessian``.

        Returns
        -------
        ndarray, shape (n_var, n_var), float64
        """
        # Not a stub: the default for problems without a Hessian kernel (quadrature, isotropic,
        # tangent, deep linear). Callers check ``has_analytic_hessian`` first, and
        # ``meanfield.landscape`` then uses finite differences of the gradient instead.
        raise NotImplementedError(f"{type(self).__name__} ({self.method}) has no analytic Hessian")

    def hessian_vector_product(self, W, V) -> np.ndarray:
        """(H V) without forming H, in the particle layout.

        Parameters
        ----------
        W : ndarray, shape (m, d + 2)
        V : ndarray, shape (m, d + 2)
            Direction; its frozen columns are ignored.

        Returns
        -------
        ndarray, shape (m, d + 2), float64
            The Hessian of F applied to V; frozen columns are 0.
        """
        # The default, as for ``hessian``: landscape's operators fall back to finite
        # differences of the gradient when ``has_analytic_hessian`` is False.
        raise NotImplementedError(f"{type(self).__name__} ({self.method}) has no analytic Hessian")

    def hessian_singularities(self, W) -> np.ndarray:
        """Indices of the particles at which F is not twice differentiable (``meanfield.landscape``
        then reports an infinite Hessian error); empty where F is, or where the problem cannot tell."""
        return np.empty(0, dtype=np.int64)

    def _hessian_arrays(self, W, V=None):
        W = np.ascontiguousarray(self.model.check_state(W), dtype=np.float64)
        if V is None:
            return W, None
        V = np.asarray(V, dtype=np.float64)
        if V.shape != W.shape:
            raise ValueError(f"V must have the shape of W, {W.shape}, got {V.shape}")
        return W, np.ascontiguousarray(V)




def _data_evaluation(model: Model, loss: str, W, X, y, points=None, out=None,
                     value_offset: float = 0.0, workspaces: dict | None = None) -> Evaluation:
    """Evaluation of the empirical objective on the sample (X, y) through the tiled kernel.

    ``workspaces`` (a dict the caller keeps) holds the kernel's work arrays between calls
    under the key "kernel": fresh ones of this size cost a page fault per page each call
    (``kernels.FiniteDataWorkspace``)."""
    m = W.shape[0]
    velocity = np.empty_like(W) if out is None else out
    pts = np.empty((0, model.p), dtype=W.dtype) if points is None else points
    pts_velocity = np.empty_like(pts)
    alpha = model.alpha_value(m)
    tile = min(tile_rows(m), X.shape[0])
    workspace = None
    if workspaces is not None:
        workspace = kernels.finite_data_workspace(m, pts.shape[0], X.shape[1], tile, W.dtype,
                                                  reuse=workspaces.get("kernel"))
        workspaces["kernel"] = workspace
    value = kernels.finite_data_field(
        W, X, y, pts, model.activation_code, kernels.LOSS_CODES[loss], model.output_scale(m),
        alpha, model.bias, model.train_readout, tile, velocity, pts_velocity, workspace)
    return Evaluation(float(value) + value_offset / alpha**2, velocity,
                      None if points is None else pts_velocity)


def _data_hessian_arguments(model: Model, loss: str, W, X, y) -> tuple:
    """The arguments ``kernels.finite_data_hessian`` and its vector product share (float64)."""
    m = W.shape[0]
    return (W, np.ascontiguousarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), model.activation_code,
            kernels.LOSS_CODES[loss], model.output_scale(m), model.alpha_value(m), model.bias,
            model.train_readout, TILE_SIZE)


def _data_hessian(model: Model, loss: str, W, X, y) -> np.ndarray:
    """Dense Hessian of the empirical objective on (X, y) (``kernels.finite_data_hessian``)."""
    n_var = W.shape[0] * int(model.trainable.sum())
    H = np.empty((n_var, n_var))
    kernels.finite_data_hessian(*_data_hessian_arguments(model, loss, W, X, y), H)
    return H


def _data_hessian_vector_product(model: Model, loss: str, W, X, y, V) -> np.ndarray:
    """H V of the empirical objective on (X, y) (``kernels.finite_data_hessian_vector_product``)."""
    out = np.empty_like(W)
    kernels.finite_data_hessian_vector_product(*_data_hessian_arguments(model, loss, W, X, y), V, out)
    return out


def pair_sums(points, sources, activation_code: int, closed_form: bool, nodes=None, weights=None,
              symmetric: bool = True, bias: bool = False):
    """Pair sums K (n,) and G (n, d + 1) of ``points`` against ``sources`` (see
    ``kernels.closed_form_pair_field``, and its ``symmetric``), in closed form (with biases:
    ``kernels.bias_pair_field``) or with the Gauss-Hermite rule."""
    n, p = points.shape
    K = np.empty(n, dtype=points.dtype)
    G = np.empty((n, p - 1), dtype=points.dtype)
    if closed_form and bias:
        kernels.bias_pair_field(points, sources, activation_code, K, G, symmetric)
    elif closed_form:
        kernels.closed_form_pair_field(points, sources, activation_code, K, G, symmetric)
    else:
        kernels.quadrature_pair_field(points, sources, activation_code, nodes, weights, K, G)
    return K, G


def pair_velocity(model: Model, points, m: int, K_w, G_w, K_target, G_target, out):
    """Velocity of ``points`` from the pair sums of a squared-loss population objective.

    With K_w, G_w the pair sums over the measure (``kernels.closed_form_pair_field``) and
    K_target, G_target those of the target term E[y sigma(a.x + b)] at the points,
    v(x) = -m s [ c (s G_w - G_target / alpha), s K_w - K_target / alpha ], frozen columns 0.

    Parameters
    ----------
    model : Model
    points : ndarray, shape (n, d + 2)
    m : int
        Width of the measure.
    K_w, K_target : ndarray, shape (n,)
    G_w, G_target : ndarray, shape (n, d + 1)
    out : ndarray, shape (n, d + 2), output
    """
    d = model.d
    s = model.output_scale(m)
    inv_alpha = 1.0 / model.alpha_value(m)
    c = points[:, d + 1:]
    out[:, : d + 1] = (-m * s) * c * (s * G_w - inv_alpha * G_target)
    out[:, d + 1] = (-m * s) * (s * K_w - inv_alpha * K_target)
    if not model.bias:
        out[:, d] = 0
    if not model.train_readout:
        out[:, d + 1] = 0
    return out


def pair_objective(model: Model, W, K_w, K_target, label_second_moment: float) -> float:
    """F = E[y^2] / (2 alpha^2) - (s / alpha) sum_i c_i K_target_i + (s^2 / 2) sum_i c_i K_w_i."""
    m = W.shape[0]
    s = model.output_scale(m)
    alpha = model.alpha_value(m)
    c = np.asarray(W[:, -1], dtype=np.float64)
    return (label_second_moment / (2 * alpha**2) - (s / alpha) * float(c @ K_target)
            + 0.5 * s * s * float(c @ K_w))


def method_applies(loss: str, activation: str, teacher_activation: str, bias: bool,
                   teacher_bias: bool) -> tuple[bool, bool, bool]:
    """Which ways of computing the population risk apply (``PopulationProblem``).

    Parameters
    ----------
    loss : str
    activation, teacher_activation : str
        The student's and the teacher's activations.
    bias, teacher_bias : bool
        Whether student and teacher have biases.

    Returns
    -------
    (pair, with_bias, closed_form) : tuple of bool
        ``pair``: the risk expands into pair sums (a regression loss and the teacher's
        activation; series and quadrature apply); ``with_bias``: the closed forms with biases
        are the ones to use (biases in student or teacher, or an activation whose only closed
        form is that one, normal_cdf); ``closed_form``: a closed form exists.
    """
    pair = not LOSS_ENTRIES[loss].classification and teacher_activation == activation
    with_bias = bool(bias or teacher_bias or activation not in CLOSED_FORM_ACTIVATIONS)
    closed = pair and activation in (BIAS_CLOSED_FORM_ACTIVATIONS if with_bias else CLOSED_FORM_ACTIVATIONS)
    return pair, with_bias, closed


def automatic_method(pair: bool, closed_form: bool) -> str:
    """What ``method="auto"`` picks: the closed form, else the series, else Monte Carlo.

    Parameters
    ----------
    pair, closed_form : bool
        From :func:`method_applies`.

    Returns
    -------
    str
    """
    return "closed_form" if closed_form else "series" if pair else "monte_carlo"


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def _check_noise(noise_std: float, flip_prob: float):
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if not 0 <= flip_prob < 0.5:
        raise ValueError(f"flip_prob must be in [0, 0.5), got {flip_prob!r}")


def _gauss_hermite(order: int, dtype):
    """Probabilists' Gauss-Hermite rule for N(0, 1): nodes and weights summing to 1."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    return nodes.astype(dtype), (weights / weights.sum()).astype(dtype)


class PopulationProblem(Problem):
    """Teacher-student regression or classification with inputs x ~ N(0, I_d).

    The objective is the population risk F = (1/alpha^2) E l(alpha h_m(x), y), with
    y = f*(x) + noise (squared loss) or y = sign f*(x) with label flips (logistic,
    exponential). How E is computed is ``method``:

    ``"closed_form"``
        Squared loss, the same activation in student and teacher:
        F = E[y^2] / (2 alpha^2) - (s/alpha) sum_i c_i E[y sigma(a_i.x + b_i)]
        + (s^2/2) sum_ij c_i c_j kappa(w_i, w_j). Without bias, relu / erf / linear by the
        arc-cosine and arcsine kernels (``kernels.closed_form_pair_field``); with biases in
        student or teacher (and normal_cdf always), relu / erf / normal_cdf / linear through the
        bivariate normal CDF (``kernels.bias_pair_field``; pairs with |rho| <= 0.4 by a Hermite
        series with closed-form coefficients). Within 1e-12 of 1-D adaptive quadrature of the
        conditional expectation, 10^7-sample Monte Carlo and finite differences
        (tests/test_population_bias.py), duplicated particles, rho = +-1 and a = 0 included.
    ``"series"``
        Squared loss, any activation with the teacher's (tanh, sigmoid, softplus, gelu, ...),
        with or without biases: kappa by Mehler's Hermite series in the correlation rho with
        per-particle coefficients from a 1-D rule, the pairs near |rho| = 1 by longer series, the
        1-D diagonal formula or a rotated-basis quadrature (``kernels.series_pair_sums``); each
        pair's truncation is kept below ``SERIES_TOL`` = 1e-10, and ``last_error_bound`` holds a
        bound on the velocity error of the last evaluation (``describe()`` says it).
    ``"quadrature"``
        Squared loss, any activation, with biases: the same expansion with kappa computed by
        Gauss-Hermite quadrature of order ``quadrature_order`` in the span of (a, a')
        (order^2 nodes per pair, symmetrised). The velocity is the exact gradient of this
        discretised risk. Kept for comparison; it is slow (order^2 activations per pair) and
        inaccurate wherever |a| is not small.
        Measured by ``benchmarks/quadrature_accuracy.py`` against the closed forms and the
        series (20 random problems, d = 10, m = 8, |a| up to 3, b ~ N(0, 1); relative velocity
        error, median / worst): order 32: relu 2.5e-2 / 9.1e-2, erf 1.2e-3 / 7.8e-3, normal_cdf
        6.0e-4 / 2.8e-3, tanh 8.2e-3 / 4.3e-2, sigmoid 5.4e-5 / 2.8e-4, softplus 4.1e-6 /
        2.2e-5, gelu 4.8e-4 / 2.8e-3; order 100: relu 1.3e-2 / 6.8e-2, tanh 2.0e-4 / 2.0e-3,
        the others 1e-8 to 2e-7 / 1e-8 to 2e-5. Linear is exact.
    ``"monte_carlo"``
        Any loss: the empirical risk on a fixed sample of ``mc_samples`` inputs drawn once
        from ``rng`` (labels noise-free for the squared loss, whose noise adds the constant
        noise_std^2 / (2 alpha^2)).

    ``"auto"`` picks the first that applies. The choice is ``self.method``; ``describe()``
    says it in words.

    Parameters
    ----------
    model : Model
    teacher : Teacher
    loss : str
        ``"squared"``, ``"logistic"`` or ``"exponential"``.
    noise_std : float
        Standard deviation of Gaussian label noise (squared loss).
    flip_prob : float
        Probability of a flipped label (classification losses).
    method : str
        ``"auto"``, ``"closed_form"``, ``"series"``, ``"quadrature"`` or ``"monte_carlo"``.
    quadrature_order : int
        Gauss-Hermite nodes per dimension.
    mc_samples : int
        Size of the fixed Monte Carlo sample.
    rng : numpy.random.Generator, optional
        Draws the Monte Carlo sample (required for that method).
    """

    def __init__(self, model: Model, teacher: Teacher, loss: str = "squared", noise_std: float = 0.0,
                 flip_prob: float = 0.0, method: str = "auto", quadrature_order: int = 32,
                 mc_samples: int = 200_000, rng: np.random.Generator | None = None):
        self.model = model
        self.teacher = teacher
        self.loss = _check_loss(loss)
        _check_noise(noise_std, flip_prob)
        self.noise_std = float(noise_std)
        self.flip_prob = float(flip_prob)
        if teacher.d != model.d:
            raise ValueError(f"teacher input dimension {teacher.d} differs from the model's d = {model.d}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        # with_bias: the closed forms with biases (kernels.bias_pair_field) apply; bias-free relu,
        # erf and linear keep the bias-free kernels (bitwise the same runs).
        pair_ok, self.with_bias, closed_ok = method_applies(self.loss, model.activation, teacher.activation,
                                                            model.bias, teacher.has_bias)
        if method == "auto":
            method = automatic_method(pair_ok, closed_ok)
        if method == "closed_form" and not closed_ok:
            raise ValueError(
                "method='closed_form' needs the squared loss and the same activation in student and "
                f"teacher, one of {BIAS_CLOSED_FORM_ACTIVATIONS} ({CLOSED_FORM_ACTIVATIONS} without bias)")
        if method in ("quadrature", "series") and not pair_ok:
            raise ValueError(f"method={method!r} needs the squared loss and the teacher's activation "
                             "equal to the student's")
        self.method = method
        self.quadrature_order = int(quadrature_order)
        self.mc_samples = int(mc_samples)
        self._teacher_W = np.ascontiguousarray(teacher.W, dtype=model.dtype)
        if method == "quadrature" and self.quadrature_order < 2:
            raise ValueError(f"quadrature_order must be >= 2, got {quadrature_order}")
        if method == "monte_carlo" and rng is None:
            raise ValueError("method='monte_carlo' draws a fixed sample: pass rng=numpy.random.default_rng(seed)")
        # How the expectation is computed: one strategy object per method (EXPECTATIONS).
        self.expectation = EXPECTATIONS[method](self, rng)
        if method != "monte_carlo":
            K, _ = self.expectation.pair(self._teacher_W, self._teacher_W)
            # E[y^2] of the rule in use, so that F = 0 exactly when the student equals the teacher.
            self.label_second_moment = float(self._teacher_W[:, -1] @ K) + self.noise_std**2

    @property
    def teacher_W(self) -> np.ndarray:
        """The teacher's neurons in the model's dtype, shape (k, d + 2)."""
        return self._teacher_W

    @property
    def last_error_bound(self) -> float | None:
        """Series only: a bound on the velocity error of the last evaluation (absolute, the
        largest over particles; see ``kernels.series_pair_sums`` for what it covers); None
        for the other methods and before the first evaluation."""
        return getattr(self.expectation, "last_error_bound", None)

    @property
    def sample(self):
        """Monte Carlo only: the fixed sample (X (n, d), y (n,), value offset), else None."""
        return getattr(self.expectation, "sample", None)

    def describe(self) -> str:
        """One line saying how the population expectation is computed."""
        return self.expectation.describe()

    def sample_batch(self, rng, batch_size):
        """A fresh batch from the data law: X ~ N(0, I_d) of shape (batch_size, d), labels y."""
        X = rng.standard_normal((batch_size, self.model.d))
        y = self.teacher.labels(X, rng, self.loss, self.noise_std, self.flip_prob)
        dtype = self.model.dtype
        return np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Population objective, particle velocities and (optionally) the field at ``points``.

        Parameters
        ----------
        W : ndarray, shape (m, d + 2)
        points : ndarray, shape (n, d + 2), optional
        out : ndarray, shape (m, d + 2), optional
            Buffer for the velocity.
        """
        W, points = self._state(W, points)
        return self.expectation.evaluate(W, points, out)

    @property
    def has_analytic_hessian(self) -> bool:
        """True in closed form (relu, erf, linear without bias: ``kernels.closed_form_hessian``;
        relu, erf, normal CDF, linear with biases: ``kernels.bias_closed_form_hessian``) and for
        Monte Carlo (the empirical Hessian of the fixed sample); quadrature has none (finite
        differences of the velocity). relu has no Hessian at a particle with a_i = 0 and
        b_i = 0: see :meth:`hessian_singularities`."""
        return self.expectation.analytic_hessian

    def hessian_singularities(self, W) -> np.ndarray:
        """Particles at which F is not twice differentiable: in closed form with biases, relu
        particles with a_i = 0 and b_i = 0 that enter F (``kernels.bias_hessian_singular_particles``;
        their rows and columns of :meth:`hessian` are 0, the convention relu'(0) = relu''(0) = 0
        of the velocity). Duplicated particles are not singular (the pair term is C^2 there)."""
        singular = self.expectation.hessian_singularities(W)
        return super().hessian_singularities(W) if singular is None else singular

    def hessian(self, W) -> np.ndarray:
        W, _ = self._hessian_arrays(W)
        H = self.expectation.hessian(W)
        return super().hessian(W) if H is None else H

    hessian.__doc__ = Problem.hessian.__doc__

    def hessian_vector_product(self, W, V) -> np.ndarray:
        W, V = self._hessian_arrays(W, V)
        HV = self.expectation.hessian_vector_product(W, V)
        return super().hessian_vector_product(W, V) if HV is None else HV

    hessian_vector_product.__doc__ = Problem.hessian_vector_product.__doc__


class PairExpectation(abc.ABC):
    """The population expectation of a :class:`PopulationProblem` through pair sums (closed
    form, series, quadrature): F and v from K_ij = E sigma(w_i . x) sigma(w_j . x) and its
    gradient, summed against the particles and against the teacher.

    A strategy: the problem delegates ``evaluate``, ``describe`` and the Hessians to it. A
    subclass gives :meth:`pair` (and may override :meth:`pair_velocity`, :meth:`hessian`, ...).
    Methods returning None mean "no analytic form: the problem's default (finite differences)".
    """

    name = ""
    analytic_hessian = False

    def __init__(self, problem: PopulationProblem, rng=None):
        self.problem = problem

    @abc.abstractmethod
    def pair(self, points, sources, symmetric=True):
        """(K (n,), G (n, d + 1)): the pair sums of ``points`` against the measure ``sources``."""
        # Abstract: each method's class (closed form, series, quadrature) gives its own kernel
        # call; ABC refuses to make a PairExpectation that lacks it.

    def pair_velocity(self, points, W, out, symmetric=True):
        """Velocity of ``points`` in the field of W, and the pair sums K_W, K_teacher there."""
        problem = self.problem
        K_w, G_w = self.pair(points, W, symmetric)
        K_t, G_t = self.pair(points, problem.teacher_W)
        return pair_velocity(problem.model, points, W.shape[0], K_w, G_w, K_t, G_t, out), K_w, K_t

    def evaluate(self, W, points, out) -> Evaluation:
        """Objective, particle velocities and the field at ``points`` (None: no points)."""
        problem = self.problem
        velocity = np.empty_like(W) if out is None else out
        # With tracers, the particles take the general tiles too: a tracer on a particle then
        # gets bitwise the particle's velocity.
        velocity, K_w, K_t = self.pair_velocity(W, W, velocity, symmetric=points is None)
        value = pair_objective(problem.model, W, K_w, K_t, problem.label_second_moment)
        points_velocity = None
        if points is not None:
            points_velocity, _, _ = self.pair_velocity(points, W, np.empty_like(points))
        return Evaluation(value, velocity, points_velocity)

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying how the expectation is computed."""
        # Abstract, as ``pair``: each method says in its own words what it computes.

    def hessian_singularities(self, W):
        return None

    def hessian(self, W):
        return None

    def hessian_vector_product(self, W, V):
        return None


class ClosedFormExpectation(PairExpectation):
    """Closed forms: the arc-cosine and arcsine kernels without bias, the bivariate normal CDF
    with biases (``PopulationProblem.with_bias``); analytic Hessians."""

    name = "closed_form"
    analytic_hessian = True

    def __init__(self, problem, rng=None):
        super().__init__(problem, rng)
        self._fused_work = None

    def fused_applies(self, m: int) -> bool:
        """Whether a width-m evaluation takes the fused per-network kernel
        (``kernels.ensemble_closed_form_evaluate``): bias-free float64 networks with at most
        ``FUSED_MAX_PAIRS`` pairs, where the tiled kernels spend more time in their calls than in
        arithmetic. An ensemble member (``meanfield.engine.PopulationEnsemble``) takes the same
        kernel, so its numbers are bitwise those of the same run alone."""
        problem = self.problem
        k = problem.teacher_W.shape[0]
        return (not problem.with_bias and np.dtype(problem.model.dtype) == np.float64
                and m * (m + 1) // 2 + m * k <= FUSED_MAX_PAIRS)

    def evaluate(self, W, points, out) -> Evaluation:
        m = W.shape[0]
        if not self.fused_applies(m):
            return super().evaluate(W, points, out)
        problem = self.problem
        velocity = np.empty_like(W) if out is None else out
        if self._fused_work is None or self._fused_work[0].shape[1] != m:
            self._fused_work = kernels.ensemble_work_arrays(1, m, problem.teacher_W.shape[0], problem.model.d,
                                                            W.dtype)
        values = np.empty(1)
        kernels.ensemble_closed_form_evaluate(
            W[None], problem.teacher_W[None], problem.model.activation_code, problem.model.output_scale(m),
            problem.model.alpha_value(m), np.array([problem.label_second_moment]), problem.model.train_readout,
            values, velocity[None], *self._fused_work)
        points_velocity = None
        if points is not None:  # in the same arithmetic: a tracer on a particle moves bitwise with it
            points_velocity = np.empty_like(points)
            kernels.closed_form_points_velocity(W, problem.teacher_W, points, problem.model.activation_code,
                                                problem.model.output_scale(m), problem.model.alpha_value(m),
                                                problem.model.train_readout, points_velocity)
        return Evaluation(float(values[0]), velocity, points_velocity)

    def pair(self, points, sources, symmetric=True):
        problem = self.problem
        return pair_sums(points, sources, problem.model.activation_code, True, None, None, symmetric,
                         problem.with_bias)

    def describe(self) -> str:
        activation = self.problem.model.activation
        if self.problem.with_bias:
            return f"population risk in closed form with biases ({activation} kernel, bivariate normal CDF)"
        return f"population risk in closed form ({activation} kernel)"

    def _arguments(self, W):
        problem = self.problem
        m = W.shape[0]
        teacher = np.ascontiguousarray(problem.teacher.W, dtype=np.float64)
        arguments = (W, teacher, problem.model.activation_code, problem.model.output_scale(m),
                     1.0 / problem.model.alpha_value(m))
        if problem.with_bias:  # the bias kernels take whether b is a variable (Model.trainable)
            return arguments + (problem.model.bias, problem.model.train_readout)
        return arguments + (problem.model.train_readout,)

    def hessian_singularities(self, W):
        problem = self.problem
        if not problem.with_bias:
            return None
        return kernels.bias_hessian_singular_particles(
            np.ascontiguousarray(problem.model.check_state(W), dtype=np.float64), problem.model.activation_code,
            problem.model.train_readout)

    def hessian(self, W):
        n_var = W.shape[0] * int(self.problem.model.trainable.sum())
        H = np.empty((n_var, n_var))
        kernel = kernels.bias_closed_form_hessian if self.problem.with_bias else kernels.closed_form_hessian
        kernel(*self._arguments(W), H)
        return H

    def hessian_vector_product(self, W, V):
        out = np.empty_like(W)
        kernel = (kernels.bias_closed_form_hessian_vector_product if self.problem.with_bias
                  else kernels.closed_form_hessian_vector_product)
        kernel(*self._arguments(W), V, out)
        return out


class SeriesExpectation(PairExpectation):
    """Mehler's Hermite series in the correlation (``kernels.series_pair_sums``), truncation
    below ``SERIES_TOL`` per pair, with a bound on the velocity error of the last evaluation
    (``last_error_bound``)."""

    name = "series"

    def __init__(self, problem, rng=None):
        super().__init__(problem, rng)
        self.last_error_bound = None

    def pair(self, points, sources, symmetric=True):
        K, G, _ = kernels.series_pair_sums(points, sources, self.problem.model.activation_code, SERIES_TOL)
        return K, G

    def pair_velocity(self, points, W, out, symmetric=True):
        K_w, G_w, K_t, G_t = self.series_sums(points, W)
        return pair_velocity(self.problem.model, points, W.shape[0], K_w, G_w, K_t, G_t, out), K_w, K_t

    def series_sums(self, points, W):
        """Pair sums against W and the teacher by the Hermite series, with every set's
        coefficient tables built once under one rule (``kernels.shared_tables``)."""
        problem = self.problem
        code = problem.model.activation_code
        sets = (W, problem.teacher_W) if points is W else (points, W, problem.teacher_W)
        tables = kernels.shared_tables(sets, code, SERIES_TOL)
        t_points, t_teacher = tables[0], tables[-1]
        t_w = tables[0] if points is W else tables[1]
        K_w, G_w, bound_w = kernels.series_pair_sums(points, W, code, SERIES_TOL, tables=(t_points, t_w))
        K_t, G_t, bound_t = kernels.series_pair_sums(points, problem.teacher_W, code, SERIES_TOL,
                                                     tables=(t_points, t_teacher))
        if points is W:
            self.last_error_bound = self.velocity_bound(W, bound_w, bound_t)
        return K_w, G_w, K_t, G_t

    def velocity_bound(self, W, bound_w, bound_t) -> float:
        """max_i of a bound on |v_i - v_i(exact)|_2 from the series' bounds on K and G
        (v = -m s [c (s G_w - G_t / alpha), s K_w - K_t / alpha]); rounding not included."""
        model = self.problem.model
        m = W.shape[0]
        s = model.output_scale(m)
        inv_alpha = 1.0 / model.alpha_value(m)
        c = np.abs(np.asarray(W[:, -1], dtype=np.float64))
        field = c * (s * bound_w.G + inv_alpha * bound_t.G)
        readout = (s * bound_w.K + inv_alpha * bound_t.K) if model.train_readout else 0.0
        return float(np.max(m * s * (field + readout), initial=0.0))

    def describe(self) -> str:
        bound = "" if self.last_error_bound is None else (
            f"; last evaluation: |error| <= {self.last_error_bound:.1e} in the velocity")
        return f"population risk by Hermite (Mehler) series, truncation <= {SERIES_TOL:g} per pair{bound}"


class QuadratureExpectation(PairExpectation):
    """Gauss-Hermite quadrature of order ``quadrature_order`` in the span of each pair."""

    name = "quadrature"

    def __init__(self, problem, rng=None):
        super().__init__(problem, rng)
        self.nodes, self.weights = _gauss_hermite(problem.quadrature_order, problem.model.dtype)

    def pair(self, points, sources, symmetric=True):
        problem = self.problem
        return pair_sums(points, sources, problem.model.activation_code, False, self.nodes, self.weights,
                         symmetric, problem.with_bias)

    def describe(self) -> str:
        q = self.problem.quadrature_order
        return f"population risk by Gauss-Hermite quadrature ({q} x {q} nodes per pair)"


class MonteCarloExpectation:
    """The empirical risk of a fixed sample of ``mc_samples`` inputs drawn once from ``rng``
    (labels noise-free for the squared loss, whose noise adds a constant)."""

    name = "monte_carlo"
    analytic_hessian = True

    def __init__(self, problem: PopulationProblem, rng):
        self.problem = problem
        model, teacher = problem.model, problem.teacher
        X = rng.standard_normal((problem.mc_samples, model.d))
        y = teacher.labels(X, rng, problem.loss, 0.0, problem.flip_prob)
        offset = 0.0 if LOSS_ENTRIES[problem.loss].classification else 0.5 * problem.noise_std**2
        self.sample = (np.ascontiguousarray(X, dtype=model.dtype), np.ascontiguousarray(y, dtype=model.dtype),
                       offset)

    def evaluate(self, W, points, out) -> Evaluation:
        problem = self.problem
        X, y, offset = self.sample
        return _data_evaluation(problem.model, problem.loss, W, X, y, points, out, offset,
                                problem._workspaces("sample"))

    def describe(self) -> str:
        return f"population risk by Monte Carlo on a fixed sample of {self.problem.mc_samples} inputs"

    def hessian_singularities(self, W):
        return None

    def hessian(self, W):
        X, y, _ = self.sample
        return _data_hessian(self.problem.model, self.problem.loss, W, X, y)

    def hessian_vector_product(self, W, V):
        X, y, _ = self.sample
        return _data_hessian_vector_product(self.problem.model, self.problem.loss, W, X, y, V)


# method name -> strategy: how PopulationProblem computes its expectation (a new method is one
# class and one entry here).
EXPECTATIONS = {cls.name: cls for cls in (ClosedFormExpectation, SeriesExpectation, QuadratureExpectation,
                                          MonteCarloExpectation)}


class FiniteDataProblem(Problem):
    """Empirical risk on a fixed training set (x_n, y_n), n = 1..N.

    F = (1 / (alpha^2 N)) sum_n l(alpha h_m(x_n), y_n), computed by the tiled kernel (cost
    O(N m d) per evaluation, no N x m array). Minibatches for SGD are drawn without
    replacement.

    Parameters
    ----------
    model : Model
    X : array_like, shape (N, d)
    y : array_like, shape (N,)
        Real labels for the squared loss; -1 / +1 for the logistic and exponential losses.
    loss : str
    """

    method = "finite_data"

    def __init__(self, model: Model, X, y, loss: str = "squared"):
        self.model = model
        self.loss = _check_loss(loss)
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim != 2 or X.shape[1] != model.d or X.shape[0] < 1:
            raise ValueError(f"X must have shape (N, d) = (N, {model.d}) with N >= 1, got {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape (N,) = ({X.shape[0]},), got {y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must not contain NaN or inf")
        if loss in CLASSIFICATION_LOSSES and not np.isin(y, (-1.0, 1.0)).all():
            raise ValueError(f"the {loss} loss needs labels in {{-1, +1}}")
        self.X = np.ascontiguousarray(X, dtype=model.dtype)
        self.y = np.ascontiguousarray(y, dtype=model.dtype)

    @classmethod
    def from_teacher(cls, model: Model, teacher: Teacher, n: int, rng: np.random.Generator,
                     loss: str = "squared", noise_std: float = 0.0, flip_prob: float = 0.0):
        """A training set of n Gaussian inputs x ~ N(0, I_d) labelled by ``teacher``, drawn once."""
        _check_noise(noise_std, flip_prob)
        X = rng.standard_normal((n, model.d))
        return cls(model, X, teacher.labels(X, rng, loss, noise_std, flip_prob), loss)

    @property
    def n_samples(self) -> int:
        """N, the number of training samples."""
        return self.X.shape[0]

    def describe(self) -> str:
        """One line saying what the objective is."""
        return f"empirical risk on {self.n_samples} samples"

    def sample_batch(self, rng, batch_size):
        """A minibatch of ``batch_size`` distinct training samples."""
        if not 1 <= batch_size <= self.n_samples:
            raise ValueError(f"batch_size must be in [1, N = {self.n_samples}], got {batch_size}")
        index = np.sort(rng.choice(self.n_samples, size=batch_size, replace=False))
        return self.X[index], self.y[index]

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Empirical objective, particle velocities and (optionally) the field at ``points``."""
        W, points = self._state(W, points)
        return _data_evaluation(self.model, self.loss, W, self.X, self.y, points, out,
                                workspaces=self._workspaces("sample"))

    @property
    def has_analytic_hessian(self) -> bool:
        """Always: every activation and loss has a second derivative (relu's away from its kink)."""
        return True

    def hessian(self, W) -> np.ndarray:
        W, _ = self._hessian_arrays(W)
        return _data_hessian(self.model, self.loss, W, self.X, self.y)

    hessian.__doc__ = Problem.hessian.__doc__

    def hessian_vector_product(self, W, V) -> np.ndarray:
        W, V = self._hessian_arrays(W, V)
        return _data_hessian_vector_product(self.model, self.loss, W, self.X, self.y, V)

    hessian_vector_product.__doc__ = Problem.hessian_vector_product.__doc__
