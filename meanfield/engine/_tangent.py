"""The tangent (linearised) model of a problem: lazy training as a problem of its own.

Chizat & Bach ("A note on lazy training", arXiv:1812.07956) compare a network trained with
output scale alpha with its linearisation at the initial particles W0,

    T(W, x) = h(W0, x) + (W - W0) . grad_W h(W0, x),

trained on the same objective F_T(W) = (1/alpha^2) E l(alpha T(W, x), y), with the same
velocity convention v(w_i) = -m grad_{w_i} F_T. As alpha -> infinity the network's predictor
alpha h(W(t)) and the tangent model's alpha T(W_T(t)) agree within O(1/alpha) at every fixed
t, and the particles move by O(1/alpha) relative to their initial positions.

:class:`TangentProblem` wraps a problem whose expectation is a sample mean (finite data, or a
population problem with ``method="monte_carlo"``) and works with every integrator and the run
loop. Population problems in closed form or by quadrature are refused with a clear error:
their pair-kernel expansion has no tangent counterpart here, so build them with
``method="monte_carlo"`` (the tangent model is then evaluated on that fixed sample).
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ._model import tile_rows
from ._problems import Evaluation, FiniteDataProblem, Problem


def _sample_of(problem: Problem):
    """(X, y, value offset) of a problem whose objective is a mean over a fixed sample."""
    if isinstance(problem, FiniteDataProblem):
        return problem.X, problem.y, 0.0
    if getattr(problem, "method", None) == "monte_carlo" and getattr(problem, "sample", None) is not None:
        return problem.sample
    raise ValueError(
        f"the tangent model is evaluated on a sample, but this problem computes its expectation by "
        f"{getattr(problem, 'method', type(problem).__name__)!r}: use a FiniteDataProblem or a "
        "PopulationProblem with method='monte_carlo'")


class TangentProblem(Problem):
    """The tangent model of ``base`` at the initial particles ``W0``.

    T(W, x) = s sum_i [ c_i sigma(z0_i) + c0_i sigma'(z0_i) ((a_i - a0_i) . x + b_i - b0_i) ],
    z0_i = a0_i . x + b0_i (the network h(W0, x) plus its first-order term in W - W0), seen by
    the loss as alpha T. The objective is F_T(W) = (1/alpha^2) mean_n l(alpha T(W, x_n), y_n)
    on the base problem's sample, and the velocity v(w_i) = -m grad_{w_i} F_T is linear in the
    features of W0 (``kernels.tangent_field``, O(N m d) per evaluation like the network). At
    W = W0 value and velocity equal the network's. Frozen columns have velocity 0.

    Parameters
    ----------
    base : FiniteDataProblem or PopulationProblem (method ``"monte_carlo"``)
        The problem whose network is linearised; its model, loss and sample are used.
    W0 : array_like, shape (m, d + 2)
        Point of linearisation (copied). The width m of the states evaluated must match.

    Notes
    -----
    Tracers (``points``) are refused: the tangent model is not a mean-field interaction, each
    particle has its own linearisation point. ``batch_evaluate`` draws batches through
    ``base.sample_batch``, so SGD and Langevin dynamics work, with the same random stream use
    as the network (a network run and its tangent run with the same seed see the same batches).
    """

    def __init__(self, base: Problem, W0):
        if isinstance(base, TangentProblem):
            raise ValueError("base is already a tangent model")
        self.base = base
        self.model = base.model
        self.loss = base.loss
        self._X, self._y, self._value_offset = _sample_of(base)
        self.W0 = np.array(self.model.check_state(W0, "W0"), copy=True)
        self.W0.setflags(write=False)
        self.method = f"tangent_{base.method}"

    @property
    def m(self) -> int:
        """The width m, the number of particles of ``W0``."""
        return self.W0.shape[0]

    def describe(self) -> str:
        """One line saying what the objective is."""
        return f"tangent model at the initial particles, {self.base.describe()}"

    def sample_batch(self, rng, batch_size):
        """A batch from the base problem (the tangent model is trained on the same data)."""
        return self.base.sample_batch(rng, batch_size)

    def _check(self, W, points):
        if points is not None:
            raise ValueError("the tangent model has no tracers: each particle is linearised at its own "
                             "initial point (pass points=None)")
        W = self.model.check_state(W)
        if W.shape != self.W0.shape:
            raise ValueError(f"W has shape {W.shape}, but the tangent model is linearised at W0 of shape "
                             f"{self.W0.shape}")
        return W

    def _evaluation(self, W, X, y, out, value_offset=0.0) -> Evaluation:
        model = self.model
        m = W.shape[0]
        velocity = np.empty_like(W) if out is None else out
        alpha = model.alpha_value(m)
        value = kernels.tangent_field(W, self.W0, X, y, model.activation_code, kernels.LOSS_CODES[self.loss],
                                      model.output_scale(m), alpha, model.bias, model.train_readout, tile_rows(m),
                                      velocity)
        return Evaluation(float(value) + value_offset / alpha**2, velocity, None)

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Objective F_T(W) and velocities v(w_i) = -m grad_{w_i} F_T, shape (m, d + 2)."""
        W = self._check(W, points)
        return self._evaluation(W, self._X, self._y, out, self._value_offset)

    def batch_evaluate(self, W, rng, batch_size, points=None, out=None) -> Evaluation:
        """F_T and its velocity on a fresh batch from ``base.sample_batch`` (SGD)."""
        W = self._check(W, points)
        X, y = self.sample_batch(rng, batch_size)
        return self._evaluation(W, X, y, out)

    def predict(self, W, X) -> np.ndarray:
        """The output seen by the loss, alpha T(W, x), for each row of X (N, d); shape (N,)."""
        W = self._check(W, None)
        X = np.ascontiguousarray(X, dtype=self.model.dtype)
        out = np.empty(X.shape[0], dtype=self.model.dtype)
        m = W.shape[0]
        kernels.tangent_output(W, self.W0, X, self.model.activation_code, self.model.output_scale(m), tile_rows(m),
                               out)
        return self.model.alpha_value(m) * out


def tangent_predict(model, W, W0, X) -> np.ndarray:
    """alpha T(W, x) of the tangent model at ``W0`` for each row of X, without a problem.

    Parameters
    ----------
    model : Model
    W, W0 : ndarray, shape (m, d + 2)
    X : ndarray, shape (N, d)

    Returns
    -------
    ndarray, shape (N,), the model's dtype
    """
    W = model.check_state(W)
    W0 = model.check_state(W0, "W0")
    if W.shape != W0.shape:
        raise ValueError(f"W {W.shape} and W0 {W0.shape} must have the same shape")
    X = np.ascontiguousarray(X, dtype=model.dtype)
    out = np.empty(X.shape[0], dtype=model.dtype)
    m = W.shape[0]
    kernels.tangent_output(W, W0, X, model.activation_code, model.output_scale(m), tile_rows(m), out)
    return model.alpha_value(m) * out
