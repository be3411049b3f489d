"""Integrators in continuous time t (SCIENCE.md section 3), as init/step pairs over a State.

Each constructor takes a problem and its parameters and returns an :class:`Integrator`:
``init(W0, rng)`` makes a :class:`State`, ``step(state)`` advances it by one step of
``dt`` time units (in place, and returns it). A new integrator is one new function.

In every integrator the particle step is ``eta * v`` with v = -m grad F (the mean-field
step-size scaling), so a width-m run and a width-M run are compared at equal t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .. import kernels
from ._problems import Problem
from ._registry import Registry


@dataclass
class State:
    """The evolving state of an integrator.

    Attributes
    ----------
    W : ndarray, shape (m, d + 2)
        Particles, updated in place.
    step : int
        Steps taken.
    t : float
        Continuous time, ``step * dt``.
    value : float
        Objective (or batch loss) at the start of the last step; NaN before the first.
    rng : numpy.random.Generator or None
        Stream for minibatches and noise.
    buffers : dict
        Arrays of shape (m, d + 2) that are part of the dynamics (the momentum of the heavy
        ball): a checkpoint must save them to resume exactly.
    scratch : dict
        Work arrays overwritten at every step (velocity, noise); not saved.
    tracers : ndarray, shape (n, d + 2) or None
        Tracer particles: moved by the field of the measure of ``W`` with the same scheme,
        without acting on it (synchronous coupling, propagation of chaos).
    measured : dict
        Values of the run's measures at the current record (``meanfield.run(measures=...)``).
    info : dict
        What an adaptive integrator reports (method, tolerances, evaluation counts); JSON
        values, written to a run file's ``integrator_info`` attribute.
    checkpointable : bool
        Whether a run resumed from this state continues bitwise as this one does (always, for
        the fixed-step integrators; for an adaptive solver only where it restarts).
    """

    W: np.ndarray
    step: int = 0
    t: float = 0.0
    value: float = math.nan
    rng: np.random.Generator | None = None
    buffers: dict = field(default_factory=dict)
    scratch: dict = field(default_factory=dict)
    tracers: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    checkpointable: bool = True


class Integrator(NamedTuple):
    """An integration scheme: ``init(W0, rng) -> State`` and ``step(State) -> State``.

    Attributes
    ----------
    init, step : callable
    dt : float
        Continuous time advanced by one step.
    name : str
    params : dict
        Parameters, for the record.
    stochastic : bool
        Whether ``step`` draws from ``state.rng``.
    advance : callable or None
        Adaptive integrators (``meanfield.flow``) have no fixed step: ``advance(state, t,
        t_bound)`` integrates to time t, and ``dt`` is 0.
    problem : Problem or None
        The problem whose full evaluation ``step`` starts from, when it does (deterministic
        velocity: no minibatch). :func:`meanfield.run` then hands the evaluation it made for
        a record to the next step (:func:`share_evaluation`) instead of evaluating twice.
    """

    init: Callable
    step: Callable
    dt: float
    name: str
    params: dict
    stochastic: bool
    advance: Callable | None = None
    problem: object = None


@dataclass(frozen=True)
class IntegratorEntry:
    """An integrator as the rest of meanfield sees it: one entry of :data:`INTEGRATORS`.

    A new integrator is one module that defines its constructor and calls
    :func:`register_integrator` with its entry (and, if its arithmetic is new, its update
    kernel and the CUDA twin of that kernel). The experiment files, the memory estimate and
    the CUDA backend read everything they need from the entry; none of them names an
    integrator.

    Attributes
    ----------
    name : str
        The value of ``[dynamics] integrator``.
    build : callable
        ``build(problem, dynamics) -> Integrator`` from a resolved ``[dynamics]`` section.
    time_step : callable or None
        ``time_step(dynamics) -> dt``, the continuous time of one step; None for an adaptive
        integrator (its records are at the exact times).
    keys : tuple of str
        The ``[dynamics]`` keys it reads besides ``integrator`` and ``t_max``.
    requires : dict
        key -> what the key must be, for keys that have no default for this integrator
        (``{"batch_size": "an integer >= 1"}``).
    buffers : tuple of str
        Arrays of shape (m, d + 2) that are part of its state (checkpointed, and counted by
        the memory estimate).
    deterministic : bool
        Full-batch and noise-free with a fixed step: the runs that ``[landscape]``,
        ``[record] step_error`` and step-paired comparisons accept.
    tracers : bool
        Whether tracer particles can be coupled to its particles.
    ensembles : bool
        Whether runs of it can advance as one ensemble (``meanfield.engine._ensemble``): with the
        full velocity, its step draws nothing or only standard normals of the state's shape
        (``state.rng.standard_normal(out=...)``), and updates element by element.
    device_update : callable or None
        ``device_update(updates, problem, state, velocity, points_velocity, params)``: the
        step's update on the GPU (``updates`` is ``meanfield.kernels.gpu_updates``, ``problem``
        the ``CudaProblem``, ``state`` a ``DeviceState``, ``params`` the integrator's
        ``params``); None when the integrator has no CUDA twin.
    device_keys : tuple of str
        The weight-decay keys (:data:`WEIGHT_DECAY_KEYS`) that ``device_update`` honours: a run
        with a weight decay (or a schedule) that its ``device_update`` does not apply is refused
        on the CUDA backend.
    """

    name: str
    build: Callable
    time_step: Callable | None
    keys: tuple = ()
    requires: dict = field(default_factory=dict)
    buffers: tuple = ()
    deterministic: bool = False
    tracers: bool = True
    device_update: Callable | None = None
    ensembles: bool = False
    device_keys: tuple = ()


INTEGRATORS = Registry("integrator")
register_integrator = INTEGRATORS.register


def _positive(name, value):
    if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


WEIGHT_DECAY_SCHEDULES = ("constant", "step", "anneal")


@dataclass(frozen=True)
class WeightDecay:
    """A weight decay lambda(t) >= 0 on the trainable coordinates, as a function of the
    continuous time t (``step * dt``).

    The decay adds the velocity term -lambda(t) w to every trainable coordinate of every particle
    (first-layer weights a_i, the bias b_i when trained, the readout c_i when trained; a frozen
    column has no decay). With the particle velocity v = -m grad F this is the gradient flow of
    F(W) + (lambda / (2 m)) sum_i |w_i|^2, i.e. of R(rho) + (lambda / 2) int |w|^2 drho in the
    mean-field limit: the convention of :func:`langevin`'s ``weight_decay`` (SCIENCE.md
    section 3). For the linear model f(x) = w . x (m = 1) with the squared loss
    (1/2N) |X w - y|^2 the fixed point is the ridge solution (X^T X / N + lambda I)^-1 X^T y / N.

    Schedules (lambda_0 = ``value``, t in time units):

    - ``"constant"``: lambda(t) = lambda_0;
    - ``"step"``: lambda(t) = 0 for t < t_on, lambda_0 for t >= t_on (``start`` = t_on >= 0);
    - ``"anneal"``: lambda(t) = lambda_0 / (1 + t / tau) (inverse-time decay, ``time`` = tau > 0).

    A fixed-step integrator uses lambda(t_k) at the start t_k = k dt of step k (explicit Euler);
    the adaptive flow evaluates lambda(t) at every stage.

    Parameters
    ----------
    value : float
        lambda_0 >= 0, in 1 / time units; 0 is no decay (any schedule).
    schedule : str
        One of :data:`WEIGHT_DECAY_SCHEDULES`.
    start : float, optional
        t_on, for ``"step"`` only (required there).
    time : float, optional
        tau, for ``"anneal"`` only (required there).
    """

    value: float = 0.0
    schedule: str = "constant"
    start: float | None = None
    time: float | None = None

    def __post_init__(self):
        value = self.value
        if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating, np.integer))
                                           and math.isfinite(value) and value >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {value!r}")
        if self.schedule not in WEIGHT_DECAY_SCHEDULES:
            raise ValueError(f"the weight decay schedule must be one of {WEIGHT_DECAY_SCHEDULES}, "
                             f"got {self.schedule!r}")
        if (self.schedule == "step") != (self.start is not None):
            raise ValueError('start (t_on) is given with schedule = "step", and only then')
        if (self.schedule == "anneal") != (self.time is not None):
            raise ValueError('time (tau) is given with schedule = "anneal", and only then')
        if self.start is not None and not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"start must be a finite number >= 0, got {self.start!r}")
        if self.time is not None:
            _positive("time", self.time)
        object.__setattr__(self, "value", float(value))

    def __call__(self, t: float) -> float:
        """lambda(t), in 1 / time units."""
        if self.schedule == "step":
            return self.value if t >= self.start else 0.0
        if self.schedule == "anneal":
            return self.value / (1.0 + t / self.time)
        return self.value

    def params(self) -> dict:
        """The integrator parameters it adds: none without decay (the records of runs without
        it are unchanged), else ``weight_decay`` and the schedule's keys."""
        if self.value == 0:
            return {}
        params = {"weight_decay": self.value, "weight_decay_schedule": self.schedule}
        if self.start is not None:
            params["weight_decay_start"] = float(self.start)
        if self.time is not None:
            params["weight_decay_time"] = float(self.time)
        return params

    @classmethod
    def of(cls, weight_decay) -> "WeightDecay":
        """A :class:`WeightDecay` from itself or a number lambda_0 (constant)."""
        return weight_decay if isinstance(weight_decay, cls) else cls(weight_decay)

    @classmethod
    def from_dynamics(cls, dynamics: dict) -> "WeightDecay":
        """From a resolved ``[dynamics]`` section (absent keys: no decay, ``"constant"``)."""
        return cls(dynamics.get("weight_decay", 0.0), dynamics.get("weight_decay_schedule", "constant"),
                   dynamics.get("weight_decay_start"), dynamics.get("weight_decay_time"))


def _make_init(problem: Problem, stochastic: bool, extra_buffers=(), tracers_allowed: str = ""):
    def init(W0, rng: np.random.Generator | None = None, tracers=None) -> State:
        if stochastic and not isinstance(rng, np.random.Generator):
            raise TypeError("this integrator is stochastic: pass rng=numpy.random.default_rng(seed)")
        W = np.array(problem.model.check_state(W0), copy=True)
        buffers = {name: np.zeros_like(W) for name in extra_buffers}
        scratch = {"velocity": np.empty_like(W), "noise": np.zeros_like(W)}
        if tracers is not None:
            if tracers_allowed:
                raise ValueError(tracers_allowed)
            tracers = np.array(problem.model.check_state(tracers, "tracers"), copy=True)
            buffers.update({f"tracer_{name}": np.zeros_like(tracers) for name in extra_buffers})
            scratch["tracer_noise"] = np.zeros_like(tracers)
        return State(W=W, rng=rng, buffers=buffers, scratch=scratch, tracers=tracers)

    return init


def share_evaluation(integrator: Integrator, problem: Problem, state: State):
    """Evaluate ``problem`` at ``state`` so that the next ``integrator.step`` can reuse it.

    Returns the evaluation (its velocity lives in the state's scratch buffer, overwritten
    by the step after next), or None when the integrator does not start from the full
    evaluation of this problem (minibatches, another problem, other backends).
    """
    if integrator.problem is None or integrator.problem is not problem or "velocity" not in state.scratch:
        return None
    evaluation = problem.evaluate(state.W, points=state.tracers, out=state.scratch["velocity"])
    state.scratch["evaluation"] = (state.step, evaluation)
    return evaluation


def _evaluate(problem: Problem, state: State, batch_size):
    out = state.scratch["velocity"]
    if batch_size is None:
        shared = state.scratch.pop("evaluation", None)
        if shared is not None and shared[0] == state.step:
            return shared[1]
        return problem.evaluate(state.W, points=state.tracers, out=out)
    return problem.batch_evaluate(state.W, state.rng, batch_size, points=state.tracers, out=out)


def _advance(state: State, value: float, dt: float) -> State:
    state.value = value
    state.step += 1
    state.t = state.step * dt
    return state


def gradient_descent(problem: Problem, step: float, weight_decay=0.0) -> Integrator:
    """Explicit Euler on dW/dt = v(W) - lambda(t) W: W <- W + eta (v(W) - lambda(t_k) W); dt = eta.

    v = -m grad F; the decay acts on the trainable coordinates only (:class:`WeightDecay`),
    computed as W <- (1 - eta lambda) W + eta v (the arithmetic of :func:`langevin` without
    noise, and of its CUDA kernel). A step where lambda(t_k) = 0 is the plain step
    W <- W + eta v, bitwise.

    Parameters
    ----------
    problem : Problem
    step : float
        Step size eta > 0, also the time dt advanced by one step.
    weight_decay : float or WeightDecay
        lambda_0 >= 0 (a constant decay) or a schedule lambda(t); default none.

    Returns
    -------
    Integrator
        Deterministic (``init`` needs no generator); tracers move with the same scheme.
    """
    eta = _positive("step", step)
    decay = WeightDecay.of(weight_decay)
    trainable = problem.model.trainable

    def step_fn(state: State) -> State:
        evaluation = _evaluate(problem, state, None)
        lam = decay(state.t) if decay.value else 0.0
        if lam == 0:
            kernels.euler_update(state.W, evaluation.velocity, eta)
            if state.tracers is not None:
                kernels.euler_update(state.tracers, evaluation.points_velocity, eta)
        else:
            kernels.langevin_update(state.W, evaluation.velocity, state.scratch["noise"], eta, lam, 0.0, trainable)
            if state.tracers is not None:
                kernels.langevin_update(state.tracers, evaluation.points_velocity, state.scratch["tracer_noise"],
                                        eta, lam, 0.0, trainable)
        return _advance(state, evaluation.value, eta)

    params = {"step": eta, **decay.params()}
    return Integrator(_make_init(problem, False), step_fn, eta, "gradient_descent", params, False,
                      problem=problem)


def heavy_ball(problem: Problem, step: float, momentum: float = 0.9, weight_decay=0.0) -> Integrator:
    """Heavy-ball momentum: V <- beta V + eta (m grad F + lambda(t_k) W), W <- W - V.

    Each step advances t by dt = eta / (1 - beta): in the slowly varying regime the buffer
    settles at V = eta m grad F / (1 - beta), so at equal t the scheme follows the same
    gradient flow as gradient descent (with the decay: the flow of v - lambda(t) W). The decay
    acts on the trainable coordinates only (:class:`WeightDecay`); a step where lambda(t_k) = 0
    is the plain step, bitwise.

    Parameters
    ----------
    problem : Problem
    step : float
        Step size eta > 0.
    momentum : float
        beta in [0, 1).
    weight_decay : float or WeightDecay
        lambda_0 >= 0 (a constant decay) or a schedule lambda(t); default none.

    Returns
    -------
    Integrator
        Deterministic, with ``dt = eta / (1 - beta)`` and the buffer ``"momentum"`` (and
        ``"tracer_momentum"`` with tracers) in ``State.buffers``, saved by checkpoints.
    """
    eta = _positive("step", step)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    dt = eta / (1.0 - momentum)
    decay = WeightDecay.of(weight_decay)
    trainable = problem.model.trainable

    def step_fn(state: State) -> State:
        evaluation = _evaluate(problem, state, None)
        lam = decay(state.t) if decay.value else 0.0
        moving = [(state.W, evaluation.velocity, state.buffers["momentum"])]
        if state.tracers is not None:
            moving.append((state.tracers, evaluation.points_velocity, state.buffers["tracer_momentum"]))
        for W, velocity, buffer in moving:
            if lam == 0:
                kernels.heavy_ball_update(W, velocity, buffer, eta, momentum)
            else:
                kernels.heavy_ball_decay_update(W, velocity, buffer, eta, momentum, lam, trainable)
        return _advance(state, evaluation.value, dt)

    params = {"step": eta, "momentum": float(momentum), **decay.params()}
    return Integrator(_make_init(problem, False, ("momentum",)), step_fn, dt, "heavy_ball", params, False,
                      problem=problem)


NOISE_KEY_TAG = 0x6B6579  # "key": the spawn-key word of the keyed noise (the device seed uses 0x6375)


def noise_key(rng: np.random.Generator) -> tuple:
    """The key of a run's keyed Langevin noise, fixed by its generator's SeedSequence.

    The key depends on the stream the generator was made from, not on its state, so a run
    resumed from a checkpoint (whose generator state has moved on) has the key of the run it
    continues; runs made from equal SeedSequences (runs that differ only in the width m) have
    equal keys.

    Parameters
    ----------
    rng : numpy.random.Generator
        Made from a ``numpy.random.SeedSequence`` (``np.random.default_rng(seed)`` is).

    Returns
    -------
    tuple
        (entropy, spawn_key, pool_size) of that SeedSequence, for :func:`keyed_normal`.
    """
    try:
        seq = rng.bit_generator.seed_seq
    except (AttributeError, TypeError):
        seq = None
    if not isinstance(seq, np.random.SeedSequence):
        raise TypeError("keyed noise is fixed by the run's own generator made from a numpy.random.SeedSequence "
                        "(numpy.random.default_rng(seed)); an ensemble's or a bare bit generator has none")
    return seq.entropy, tuple(seq.spawn_key), seq.pool_size


def keyed_normal(key: tuple, step: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` with the standard normal block of step ``step`` of a keyed stream.

    The block is drawn row-major from a PCG64 generator on
    ``SeedSequence(entropy, spawn_key=(*spawn_key, NOISE_KEY_TAG, step))``: entry (i, j) is
    the (i p + j)-th draw of that generator, so the block of n rows is the first n rows of
    the block of any n2 > n rows (the same p, the same dtype). The increment of particle i at
    step k thus depends only on (key, k, i): a width-m run's noise is a prefix of a wider
    run's, and nothing has to be checkpointed.

    Parameters
    ----------
    key : tuple
        From :func:`noise_key`.
    step : int
        Steps taken before the step the block is for (0 for the step from t = 0 to dt).
    out : ndarray, shape (n, p), float32 or float64, C-contiguous
        Filled in place.

    Returns
    -------
    ndarray
        ``out``.
    """
    entropy, spawn_key, pool_size = key
    seq = np.random.SeedSequence(entropy, spawn_key=(*spawn_key, NOISE_KEY_TAG, int(step)), pool_size=pool_size)
    return np.random.Generator(np.random.PCG64(seq)).standard_normal(dtype=out.dtype, out=out)


def langevin(problem: Problem, step: float, beta: float = math.inf, weight_decay: float = 0.0,
             batch_size: int | None = None, noise: str = "stream", tracer_rows=None) -> Integrator:
    """Noisy (stochastic) gradient descent, the Euler-Maruyama scheme of Langevin dynamics:

        w <- w + eta v(w) - eta lambda w + sqrt(2 eta / beta) xi,   xi ~ N(0, I),

    on the trainable columns, with inverse temperature ``beta`` (inf: no noise), weight decay
    ``lambda`` and, when ``batch_size`` is given, v estimated on a fresh minibatch each step.
    Its mean-field limit is the Fokker-Planck equation of SCIENCE.md section 3. dt = eta.

    Parameters
    ----------
    problem : Problem
    step : float
        Step size eta > 0, also the time dt advanced by one step.
    beta : float
        Inverse temperature > 0; ``math.inf`` (the default) adds no noise.
    weight_decay : float
        lambda >= 0.
    batch_size : int, optional
        Samples per step: minibatches of a finite data set, fresh samples of the data law
        for a population problem. Default: the full velocity.
    noise : {"stream", "keyed"}
        Where xi comes from. ``"stream"`` (the default): drawn in order from the state's
        generator, an (m, d + 2) block per step (after the step's minibatch, if any).
        ``"keyed"``: the block of step k is :func:`keyed_normal` of the generator's
        :func:`noise_key`, so the increment of particle i at step k depends only on (the
        generator's SeedSequence, k, i) and a width-m run's noise is the first m rows of a
        wider run's; tracers are then coupled (tracer r receives row ``tracer_rows[r]``).
    tracer_rows : array_like of int, shape (n,), optional
        With ``noise="keyed"``: the row of the keyed block whose increment each tracer
        receives (default ``arange(n)``). A tracer started at particle i of a width-m run
        with the same SeedSequence and given row i receives that particle's increments. On
        the CUDA backend (``meanfield.engine._cuda.to_device``) tracer r gets the device
        generator of row ``tracer_rows[r]``, the device noise being keyed by the row already.

    Returns
    -------
    Integrator
        Named ``"langevin"`` when it adds noise, else ``"sgd"``; stochastic (``init`` needs
        a ``numpy.random.Generator``) when it adds noise or draws batches. With noise it
        refuses tracers unless ``noise="keyed"``.
    """
    eta = _positive("step", step)
    beta = _positive("beta", beta) if beta != math.inf else math.inf
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if batch_size is not None and not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if noise not in ("stream", "keyed"):
        raise ValueError(f'noise must be "stream" or "keyed", got {noise!r}')
    noise_scale = math.sqrt(2.0 * eta / beta)
    trainable = problem.model.trainable
    stochastic = noise_scale > 0 or batch_size is not None
    keyed = noise == "keyed" and noise_scale > 0
    rows = None if tracer_rows is None else np.asarray(tracer_rows, dtype=np.int64)
    if rows is not None and (rows.ndim != 1 or (rows.size and rows.min() < 0)):
        raise ValueError("tracer_rows must be a 1-D array of row indices >= 0")

    def step_fn(state: State) -> State:
        evaluation = _evaluate(problem, state, batch_size)
        noise = state.scratch["noise"]
        if keyed:
            block = keyed_normal(state.scratch["noise_key"], state.step, state.scratch["keyed_noise"])
            noise = block[:state.W.shape[0]]
        elif noise_scale > 0:
            state.rng.standard_normal(dtype=noise.dtype, out=noise)
        kernels.langevin_update(state.W, evaluation.velocity, noise, eta, weight_decay, noise_scale, trainable)
        if state.tracers is not None:  # with "stream" noise there are no tracers unless noise_scale = 0
            tracer_noise = state.scratch["tracer_noise"]
            if keyed:
                np.take(block, state.scratch["tracer_rows"], axis=0, out=tracer_noise)
            kernels.langevin_update(state.tracers, evaluation.points_velocity, tracer_noise, eta,
                                    weight_decay, noise_scale if keyed else 0.0, trainable)
        return _advance(state, evaluation.value, eta)

    name = "langevin" if noise_scale > 0 else "sgd"
    params = {"step": eta, "beta": beta, "weight_decay": float(weight_decay), "batch_size": batch_size}
    if keyed:
        params["noise"] = "keyed"
        params["tracer_rows"] = None if rows is None else rows.tolist()
    refuse = ("tracers are coupled to the particles through shared randomness, which Langevin noise has only "
              'when keyed: pass noise="keyed", or use tracers with gradient_descent, heavy_ball or sgd'
              ) if noise_scale > 0 and not keyed else ""
    base_init = _make_init(problem, stochastic, (), refuse)

    def init(W0, rng: np.random.Generator | None = None, tracers=None) -> State:
        state = base_init(W0, rng, tracers)
        if keyed:
            state.scratch["noise_key"] = noise_key(rng)
            n_rows = state.W.shape[0]
            if state.tracers is not None:
                n = state.tracers.shape[0]
                where = np.arange(n, dtype=np.int64) if rows is None else rows
                if where.shape != (n,):
                    raise ValueError(f"tracer_rows gives {where.size} rows for {n} tracers")
                state.scratch["tracer_rows"] = where
                n_rows = max(n_rows, int(where.max()) + 1 if n else 0)
            state.scratch["keyed_noise"] = np.empty((n_rows, state.W.shape[1]), dtype=state.W.dtype)
        return state

    return Integrator(init, step_fn, eta, name, params, stochastic,
                      problem=problem if batch_size is None else None)


def sgd(problem: Problem, step: float, batch_size: int, weight_decay: float = 0.0) -> Integrator:
    """Minibatch SGD (finite data) or online SGD (population problem: a fresh batch from the
    data law each step): w <- w + eta v_batch(w) - eta lambda w. dt = eta.

    Parameters
    ----------
    problem : Problem
    step : float
        Step size eta > 0, also the time dt advanced by one step.
    batch_size : int
        Samples per step (>= 1).
    weight_decay : float
        lambda >= 0.

    Returns
    -------
    Integrator
        :func:`langevin` without noise (named ``"sgd"``): stochastic, ``init`` needs a
        ``numpy.random.Generator``.
    """
    return langevin(problem, step, math.inf, weight_decay, batch_size)


def weight_normalized_descent(problem: Problem, step: float, weight_decay=0.0) -> Integrator:
    """Gradient descent in the weight-normalised parameterisation a_i = rho_i u_i, |u_i| = 1
    (Salimans & Kingma 2016): explicit Euler, with dt = eta, on the gradient flow of F in the
    coordinates (rho_i, u_i) with their own Euclidean metric,

        d rho_i / dt = u_i . g_i,          d u_i / dt = rho_i (I - u_i u_i^T) g_i,

    with g_i = -m grad_{a_i} F - lambda(t) a_i (the velocity of a_i in the plain flow, with the
    decay), u_i renormalised after each step (``kernels.weight_normalized_update``); the bias and
    the readout, when trained, take the plain step. The particles keep storing a_i = rho_i u_i,
    so every observable, record and measure is that of the plain model.

    Which flow: the radial/tangential split of the plain flow, d rho/dt = u . g and
    du/dt = (I - u u^T) g / rho, is the plain flow da/dt = g itself written in (rho, u): it
    would only be another discretisation of ``gradient_descent``. The flow of the
    parameterisation, the one gradient descent on (rho, u) follows, differs from it by the
    metric: in a it reads

        da_i/dt = (u_i u_i^T + rho_i^2 (I - u_i u_i^T)) g_i,

    the same radial speed, the tangential speed scaled by rho_i^2 (directions turn faster
    where the norm is large, slower where it is small). It has the same critical points as
    the plain flow (for rho_i != 0) and decreases F; the weight decay (lambda/2)|a|^2 =
    (lambda/2) rho^2 is radial, so it enters d rho/dt only. The flow is invariant under
    (rho, u) -> (-rho, -u), so storing a alone (rho = |a| >= 0) loses nothing.

    Parameters
    ----------
    problem : Problem
    step : float
        Step size eta > 0, also the time dt advanced by one step.
    weight_decay : float or WeightDecay
        lambda_0 >= 0 or a schedule lambda(t) (:class:`WeightDecay`); default none.

    Returns
    -------
    Integrator
        Deterministic (``init`` needs no generator), without tracers; ``init`` refuses a
        particle with a_i = 0 (its direction u_i is undefined).
    """
    eta = _positive("step", step)
    decay = WeightDecay.of(weight_decay)
    trainable = problem.model.trainable
    d = problem.model.d
    plain_init = _make_init(problem, False, (), "weight_normalized_descent carries no tracers")

    def init(W0, rng=None, tracers=None) -> State:
        state = plain_init(W0, rng, tracers)
        if not np.all(np.any(state.W[:, :d] != 0, axis=1)):
            raise ValueError("weight_normalized_descent needs a_i != 0 for every particle (the direction "
                             "u_i = a_i / |a_i| of a_i = 0 is undefined)")
        return state

    def step_fn(state: State) -> State:
        evaluation = _evaluate(problem, state, None)
        lam = decay(state.t) if decay.value else 0.0
        kernels.weight_normalized_update(state.W, evaluation.velocity, eta, lam, trainable, d)
        return _advance(state, evaluation.value, eta)

    params = {"step": eta, **decay.params()}
    return Integrator(init, step_fn, eta, "weight_normalized_descent", params, False, problem=problem)


def _euler_on_device(updates, problem, state, velocity, points_velocity, params):
    decay = WeightDecay.from_dynamics(params)
    lam = decay(state.t) if decay.value else 0.0
    if lam == 0:
        updates.euler_update(state.device_W, velocity, params["step"])
        if state.device_tracers is not None:
            updates.euler_update(state.device_tracers, points_velocity, params["step"])
        return
    # with the decay: the noise-free Langevin kernel, the arithmetic of the CPU step
    trainable = problem.trainable_device()
    updates.langevin_update(state.device_W, velocity, None, params["step"], lam, 0.0, trainable)
    if state.device_tracers is not None:
        updates.langevin_update(state.device_tracers, points_velocity, None, params["step"], lam, 0.0, trainable)


def _heavy_ball_on_device(updates, problem, state, velocity, points_velocity, params):
    eta, momentum = params["step"], params["momentum"]
    decay = WeightDecay.from_dynamics(params)
    lam = decay(state.t) if decay.value else 0.0
    moving = [(state.device_W, velocity, state.device_buffers["momentum"])]
    if state.device_tracers is not None:
        moving.append((state.device_tracers, points_velocity, state.device_buffers["tracer_momentum"]))
    for W, moving_velocity, buffer in moving:
        if lam == 0:
            updates.heavy_ball_update(W, moving_velocity, buffer, eta, momentum)
        else:
            updates.heavy_ball_decay_update(W, moving_velocity, buffer, eta, momentum, lam,
                                            problem.trainable_device())


def _langevin_on_device(updates, problem, state, velocity, points_velocity, params):
    eta, weight_decay = params["step"], params["weight_decay"]
    noise_scale = math.sqrt(2.0 * eta / params["beta"])
    trainable = problem.trainable_device()
    tracer_states = getattr(state, "tracer_noise_states", None)  # keyed noise: one generator per tracer
    if state.noise_states is not None and state.noise_step != state.step:
        # A restored state: bring the generators to where the saved run left them.
        for states in (state.noise_states, tracer_states):
            if states is not None:
                updates.advance_noise_states(states, state.step - state.noise_step, int(problem.model.trainable.sum()))
    updates.langevin_update(state.device_W, velocity, state.noise_states, eta, weight_decay, noise_scale, trainable)
    state.noise_step = state.step + 1
    if state.device_tracers is not None:
        updates.langevin_update(state.device_tracers, points_velocity, tracer_states, eta, weight_decay,
                                noise_scale if tracer_states is not None else 0.0, trainable)


# The [dynamics] keys of a weight decay with a schedule (WeightDecay.from_dynamics).
WEIGHT_DECAY_KEYS = ("weight_decay", "weight_decay_schedule", "weight_decay_start", "weight_decay_time")

register_integrator(IntegratorEntry(
    "gradient_descent",
    lambda problem, dc: gradient_descent(problem, dc["step"], WeightDecay.from_dynamics(dc)),
    lambda dc: dc["step"], keys=("step", *WEIGHT_DECAY_KEYS), deterministic=True, device_update=_euler_on_device,
    ensembles=True, device_keys=WEIGHT_DECAY_KEYS))
register_integrator(IntegratorEntry(
    "heavy_ball",
    lambda problem, dc: heavy_ball(problem, dc["step"], dc["momentum"], WeightDecay.from_dynamics(dc)),
    lambda dc: dc["step"] / (1 - dc["momentum"]), keys=("step", "momentum", *WEIGHT_DECAY_KEYS),
    buffers=("momentum",), deterministic=True, device_update=_heavy_ball_on_device, ensembles=True,
    device_keys=WEIGHT_DECAY_KEYS))
register_integrator(IntegratorEntry(
    "weight_normalized_descent",
    lambda problem, dc: weight_normalized_descent(problem, dc["step"], WeightDecay.from_dynamics(dc)),
    lambda dc: dc["step"], keys=("step", *WEIGHT_DECAY_KEYS), tracers=False, ensembles=True))
register_integrator(IntegratorEntry(
    "sgd", lambda problem, dc: sgd(problem, dc["step"], dc["batch_size"], dc["weight_decay"]),
    lambda dc: dc["step"], keys=("step", "batch_size", "weight_decay"),
    requires={"batch_size": "a batch_size (an integer >= 1)"}, device_update=_langevin_on_device,
    device_keys=("weight_decay",)))
register_integrator(IntegratorEntry(
    "langevin", lambda problem, dc: langevin(problem, dc["step"], dc["beta"], dc["weight_decay"], dc["batch_size"],
                                             dc.get("noise", "stream"), dc.get("tracer_rows")),
    lambda dc: dc["step"], keys=("step", "beta", "weight_decay", "batch_size"),
    requires={"beta": "an inverse temperature beta (a number > 0)"},
    device_update=_langevin_on_device, ensembles=True, device_keys=("weight_decay",)))


def restore(integrator: Integrator, W, step: int, value: float = math.nan, buffers=None,
            rng: np.random.Generator | None = None, tracers=None, time: float | None = None,
            info: dict | None = None) -> State:
    """Rebuild a state saved by a checkpoint, so that stepping it continues the saved run.

    Parameters
    ----------
    integrator : Integrator
    W : ndarray, shape (m, d + 2)
        The particles at ``step``.
    step : int
        Steps already taken; ``t = step * dt``.
    value : float
        Objective at the start of the last step.
    buffers : dict, optional
        The saved ``State.buffers`` (e.g. momentum).
    rng : numpy.random.Generator, optional
        The generator, in the state it had at ``step``.
    tracers : ndarray, shape (n, d + 2), optional
        The tracer particles at ``step``.
    time : float, optional
        The time of the checkpoint: required by adaptive integrators (whose ``step`` counts
        evaluations, not time); fixed-step ones use ``step * dt``.
    info : dict, optional
        The saved ``State.info`` of an adaptive integrator (its evaluation counts).

    Returns
    -------
    State
        A fresh state of ``integrator`` (``integrator.init``) with W, the tracers, the
        buffers, ``step``, ``value`` and the time t (``step * dt``, or ``time``) of the
        checkpoint.
    """
    state = integrator.init(W, rng, tracers)
    for name, array in (buffers or {}).items():
        if name not in state.buffers:
            raise ValueError(f"the checkpoint has a buffer {name!r} that {integrator.name} does not use")
        state.buffers[name][...] = array
    missing = set(state.buffers) - set(buffers or {})
    if missing:
        raise ValueError(f"the checkpoint lacks the buffers {sorted(missing)} of {integrator.name}")
    state.step = int(step)
    if integrator.advance is not None:
        if time is None:
            raise ValueError(f"restoring {integrator.name} needs the time of the checkpoint")
        state.t = float(time)
        state.info.update(info or {})
        state.info["nfev"] = state.step
    else:
        state.t = state.step * integrator.dt
    state.value = float(value)
    return state
