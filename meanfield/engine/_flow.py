"""The exact gradient flow dW/dt = v(W) = -m grad F, integrated with error control, and the
distance of a fixed-step scheme to it (the step-size error).

:func:`flow` drives scipy's ``solve_ivp`` solvers (the ``OdeSolver`` classes RK45, DOP853,
RK23, BDF, Radau, LSODA that ``scipy.integrate.solve_ivp`` uses) over the trainable
coordinates x = W[:, model.trainable].ravel(): right-hand side the compiled velocity,
Jacobian dv/dx = -m H (H the analytic Hessian of F, ``problem.hessian``) for the stiff
methods when the problem has one. Between two records one solver object steps from its own
state, like a single ``solve_ivp`` call; a record at an arbitrary time is read from its dense
output (the interpolant of the method's order), exactly what ``solve_ivp(t_eval=...)`` does.
A solver carried across records cannot be saved in a checkpoint, so ``meanfield.run`` starts
a fresh one at the first record after ``RESTART_STEPS`` steps, with the step size the old one
had reached, and only there does the run file checkpoint: a run resumed from that checkpoint
is bitwise the uninterrupted one. ``meanfield.run`` records on the same time grid and
through the same observers (HDF5 storage) as for the fixed-step integrators; the ``step``
column of a record holds the cumulative number of right-hand-side evaluations.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.integrate import BDF, DOP853, LSODA, RK23, RK45, Radau

from ._integrators import WEIGHT_DECAY_KEYS, Integrator, IntegratorEntry, State, WeightDecay, register_integrator
from ._problems import Problem

# A solver is restarted (at a record) once it has taken this many steps: a run file can only
# checkpoint a state that a fresh solver continues bitwise, and a restart costs an evaluation
# and some steps of lost history (most for the multistep BDF and LSODA), so it is made rare.
RESTART_STEPS = 64

ODE_METHODS = {"RK45": RK45, "DOP853": DOP853, "RK23": RK23, "BDF": BDF, "Radau": Radau, "LSODA": LSODA}
STIFF_METHODS = ("BDF", "Radau", "LSODA")


def _positive(name, value):
    if not (isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class _FlowSystem:
    """The ODE over the trainable coordinates of the particles (and tracers) of one state."""

    def __init__(self, problem: Problem, W, tracers, decay: WeightDecay | None = None):
        self.problem = problem
        self.decay = decay if decay is not None and decay.value else None
        self.mask = problem.model.trainable
        self.W = np.array(W, copy=True)
        self.tracers = None if tracers is None else np.array(tracers, copy=True)
        self.n_particles = self.W.shape[0] * int(self.mask.sum())
        self.value = math.nan

    def pack(self, W, tracers) -> np.ndarray:
        parts = [np.asarray(W[:, self.mask], dtype=np.float64).ravel()]
        if tracers is not None:
            parts.append(np.asarray(tracers[:, self.mask], dtype=np.float64).ravel())
        return np.concatenate(parts)

    def unpack(self, x, W, tracers) -> None:
        m = W.shape[0]
        W[:, self.mask] = x[: self.n_particles].reshape(m, -1)
        if tracers is not None:
            tracers[:, self.mask] = x[self.n_particles:].reshape(tracers.shape[0], -1)

    def velocity(self, t, x) -> np.ndarray:
        self.unpack(x, self.W, self.tracers)
        evaluation = self.problem.evaluate(self.W, points=self.tracers)
        self.value = float(evaluation.value)
        parts = [evaluation.velocity[:, self.mask].ravel()]
        if self.tracers is not None:
            parts.append(evaluation.points_velocity[:, self.mask].ravel())
        velocity = np.concatenate(parts).astype(np.float64, copy=False)
        if self.decay is not None:
            velocity -= self.decay(t) * x  # -lambda(t) w on every trainable coordinate
        return velocity

    def jacobian(self, t, x) -> np.ndarray:
        """dv/dx = -m H - lambda(t) I over the particles' trainable coordinates (no tracers)."""
        self.unpack(x, self.W, self.tracers)
        jacobian = -self.W.shape[0] * self.problem.hessian(self.W)
        if self.decay is not None:
            jacobian[np.diag_indices_from(jacobian)] -= self.decay(t)
        return jacobian


def flow(problem: Problem, method: str = "RK45", rtol: float = 1e-8, atol: float = 1e-10,
         max_step: float = math.inf, jacobian: str = "auto", weight_decay=0.0) -> Integrator:
    """The gradient flow dW/dt = v(W) - lambda(t) W, v = -m grad F, with adaptive steps and
    error control (without weight decay: dW/dt = v(W)).

    Parameters
    ----------
    problem : Problem
    method : str
        A ``solve_ivp`` method: explicit Runge-Kutta ``"RK45"`` (Dormand-Prince 5(4)),
        ``"DOP853"`` (order 8), ``"RK23"``; stiff ``"BDF"``, ``"Radau"``, ``"LSODA"``.
    rtol, atol : float
        Relative and absolute tolerances of the local error estimate, per coordinate. The
        solver works in float64; with a float32 model the velocity carries rounding errors of
        about 1e-7 relative, so tolerances much below that only cost steps.
    max_step : float
        Largest step in t.
    jacobian : str
        For the stiff methods: ``"auto"`` (the analytic -m H when ``problem.has_analytic_hessian``
        and the run has no tracers, else scipy's finite differences), ``"analytic"`` or
        ``"finite_difference"``. The Jacobian is dense, n_var x n_var: the stiff methods
        are for n_var up to a few thousand.
    weight_decay : float or WeightDecay
        lambda_0 >= 0 or a schedule lambda(t) (``meanfield.engine._integrators.WeightDecay``),
        on the trainable coordinates of particles and tracers, evaluated at each stage's time;
        default none. A ``"step"`` schedule is discontinuous at t_on: the solver's error
        control shortens its steps there.

    Returns
    -------
    Integrator
        Adaptive: ``meanfield.run`` calls its ``advance(state, t, t_bound)``, which
        integrates to time t (reading t from the dense output) with a solver that keeps its
        step size and history across records. ``state.step`` counts right-hand-side
        evaluations; ``state.info`` holds the method, the tolerances and the counts
        ``nfev``, ``njev``, ``nlu`` (stored in a run file's ``integrator_info`` attribute).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {tuple(ODE_METHODS)}, got {method!r}")
    rtol = _positive("rtol", rtol)
    atol = _positive("atol", atol)
    max_step = _positive("max_step", max_step) if max_step != math.inf else math.inf
    if jacobian not in ("auto", "analytic", "finite_difference"):
        raise ValueError(f"jacobian must be 'auto', 'analytic' or 'finite_difference', got {jacobian!r}")
    analytic = bool(getattr(problem, "has_analytic_hessian", False))
    if jacobian == "analytic" and not analytic:
        raise ValueError(f"{type(problem).__name__} has no analytic Hessian: use jacobian='finite_difference'")
    solver_class = ODE_METHODS[method]
    decay = WeightDecay.of(weight_decay)
    params = {"method": method, "rtol": rtol, "atol": atol, "max_step": max_step, "jacobian": jacobian,
              **decay.params()}

    def init(W0, rng=None, tracers=None) -> State:
        W = np.array(problem.model.check_state(W0), copy=True)
        if tracers is not None:
            tracers = np.array(problem.model.check_state(tracers, "tracers"), copy=True)
        info = {"method": method, "rtol": rtol, "atol": atol, "nfev": 0, "njev": 0, "nlu": 0, "jacobian": ""}
        return State(W=W, rng=rng, tracers=tracers, info=info)

    def _solver(state: State, t_bound: float):
        system = _FlowSystem(problem, state.W, state.tracers, decay)
        use_jacobian = (method in STIFF_METHODS and state.tracers is None
                        and (jacobian == "analytic" or (jacobian == "auto" and analytic)))
        options = {"rtol": rtol, "atol": atol, "max_step": max_step}
        # A solver restarted at a record goes on with the step size the previous one had
        # reached (saved in the checkpoint with the counts): without it, each restart spent
        # ~15 evaluations climbing back from a tiny initial step (4x the evaluations of a
        # single solver over 101 records).
        next_step = state.info.get("next_step")
        if next_step and 0 < next_step and state.t < t_bound:
            options["first_step"] = min(float(next_step), t_bound - state.t)
        if method in STIFF_METHODS and use_jacobian:
            options["jac"] = system.jacobian
        state.info["jacobian"] = ("analytic" if use_jacobian else "finite_difference") if method in STIFF_METHODS \
            else "none"
        solver = solver_class(system.velocity, state.t, system.pack(state.W, state.tracers), t_bound,
                              **options)
        # counts of earlier solvers of this run (a resumed run starts a new one)
        base = {key: state.info[key] for key in ("nfev", "njev", "nlu")}
        state.scratch["flow"] = (solver, system, base, t_bound)
        state.scratch["flow_steps"] = 0
        return state.scratch["flow"]

    def _sync(state: State, solver, base) -> None:
        step = getattr(solver, "h_abs", None) or solver.step_size  # the next step an RK/BDF/Radau solver plans
        if step:
            state.info["next_step"] = float(step)
        state.info["nfev"] = base["nfev"] + int(solver.nfev)
        state.info["njev"] = base["njev"] + int(solver.njev)
        state.info["nlu"] = base["nlu"] + int(solver.nlu)
        state.step = state.info["nfev"]

    def advance(state: State, t_target: float, t_bound: float) -> State:
        """Integrate the flow from ``state.t`` to ``t_target`` (<= ``t_bound``, the run's end).

        On failure (the solver's step size underflows, or the state becomes NaN or inf),
        ``state.value`` is NaN and ``state.info["message"]`` says why.
        """
        current = state.scratch.get("flow")
        if current is None or current[3] != t_bound or current[0].t < state.t:
            current = _solver(state, t_bound)
        solver, system, base, _ = current
        if t_target <= state.t:
            return state
        while solver.t < t_target:
            if solver.status != "running":
                break
            message = solver.step()
            state.scratch["flow_steps"] = state.scratch.get("flow_steps", 0) + 1
            _sync(state, solver, base)
            if solver.status == "failed" or not np.all(np.isfinite(solver.y)):
                state.value = math.nan
                state.info["message"] = f"the ODE solver failed at t = {solver.t:g}: {message or 'non-finite state'}"
                return state
        if solver.t == t_target:
            x = solver.y
        else:
            x = solver.dense_output()(t_target)
        system.unpack(x, state.W, state.tracers)
        state.t = float(t_target)
        state.value = system.value
        # Where the solver has gone far enough, meanfield.run records here, then restarts it
        # (a checkpoint of this state resumes bitwise); elsewhere the solver carries on.
        state.checkpointable = state.scratch.get("flow_steps", 0) >= RESTART_STEPS
        return state

    def step(state: State) -> State:
        raise TypeError("flow is an adaptive integrator: advance it with meanfield.run (or integrator.advance)")

    return Integrator(init, step, 0.0, "flow", params, False, advance)


class StepSizeError:
    """The distance of a fixed-step trajectory to the exact flow from the same start, as a
    measure of :func:`meanfield.run`.

    Called with a state of the fixed-step scheme at time t, it advances its own adaptive
    solution of the gradient flow (started at ``W0``) to t and returns::

        step_error     = ((1/m) sum_i |w_i^eta(t) - w_i(t)|^2)^(1/2)   (root-mean-square particle
                         distance, O(eta) for gradient descent), and
        step_risk_gap  = |F(W^eta(t)) - F(W(t))|                       (O(eta)),

    the counterparts of the width error of ``[limit]`` (``tracer_deviation`` is the mean square
    of the same particle distance, O(1/m); ``risk_gap`` O(1/m)): together they show both terms
    of the mean-field bound max(eta, 1/m). Times must be requested in increasing order; a run
    resumed from a checkpoint integrates the reference flow from ``W0`` again.

    Parameters
    ----------
    problem : Problem
    W0 : ndarray, shape (m, d + 2)
    method, rtol, atol : str, float, float
        Of the reference flow (default DOP853 at rtol 1e-10, atol 1e-12: its own error is far
        below any step-size error worth measuring).
    """

    names = ("step_error", "step_risk_gap")

    def __init__(self, problem: Problem, W0, method: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12):
        self.problem = problem
        self.integrator = flow(problem, method, rtol, atol)
        self.state = self.integrator.init(W0)
        self.t_bound = math.inf

    def __call__(self, state: State) -> dict:
        if state.t < self.state.t:
            raise ValueError(f"StepSizeError: time {state.t:g} is before the last requested {self.state.t:g}")
        if state.t > self.state.t:
            self.integrator.advance(self.state, state.t, max(self.t_bound, state.t))
        exact = self.state.W
        if not math.isfinite(self.state.value) and state.t > 0:
            return {"step_error": math.nan, "step_risk_gap": math.nan}
        difference = np.asarray(state.W, dtype=np.float64) - exact
        distance = math.sqrt(float(np.sum(difference * difference)) / exact.shape[0])
        gap = abs(self.problem.risk(state.W) - self.problem.risk(exact))
        return {"step_error": distance, "step_risk_gap": gap}

    def set_horizon(self, t_max: float) -> None:
        """The last time that will be requested (lets the solver step up to it)."""
        self.t_bound = float(t_max)


def step_size_error(problem: Problem, times, particles, method: str = "DOP853", rtol: float = 1e-10,
                    atol: float = 1e-12) -> dict:
    """Step-size error of a recorded trajectory: its distance to the exact flow at its record times.

    Parameters
    ----------
    problem : Problem
    times : array_like, shape (T,)
        Increasing record times, the first the start (``trajectory.times``).
    particles : ndarray, shape (T, m, d + 2)
        The recorded particles (``mf.run(..., keep_particles=True).particles``).

    Returns
    -------
    dict
        ``step_error`` and ``step_risk_gap``, arrays of shape (T,) (see :class:`StepSizeError`).
    """
    times = np.asarray(times, dtype=np.float64)
    particles = np.asarray(particles)
    if particles.ndim != 3 or particles.shape[0] != times.shape[0]:
        raise ValueError(f"particles must have shape (T, m, d + 2) with T = {times.shape[0]}, got {particles.shape}")
    measure = StepSizeError(problem, particles[0], method, rtol, atol)
    measure.set_horizon(float(times[-1]))
    out = {name: np.empty(times.shape[0]) for name in StepSizeError.names}
    for k, (t, W) in enumerate(zip(times, particles)):
        values = measure(State(W=W, t=float(t)))
        for name in StepSizeError.names:
            out[name][k] = values[name]
    return out


register_integrator(IntegratorEntry(
    "flow", lambda problem, dc: flow(problem, dc["ode_method"], dc["rtol"], dc["atol"],
                                     weight_decay=WeightDecay.from_dynamics(dc)), None,
    keys=("ode_method", "rtol", "atol", *WEIGHT_DECAY_KEYS)))
