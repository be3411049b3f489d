"""The integration loop: time grids, observers, divergence, and the in-memory trajectory."""
from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field

import numpy as np

from .. import kernels
from . import _interrupt
from ._integrators import Integrator, State, share_evaluation
from ._problems import Evaluation, Problem

SPACINGS = ("linear", "log")


def time_grid(t_max: float, num: int = 101, spacing: str = "linear", t_min: float | None = None) -> np.ndarray:
    """Recording times in continuous time t, always starting at 0.

    Parameters
    ----------
    t_max : float
        Last time (> 0).
    num : int
        Number of times, including 0 and t_max.
    spacing : str
        ``"linear"`` (equal gaps) or ``"log"`` (0, then ``num - 1`` log-spaced times from
        ``t_min`` to ``t_max``).
    t_min : float, optional
        First positive time of a log grid (default t_max / 1000).

    Returns
    -------
    ndarray, shape (num,), float64
    """
    if not (math.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be a finite number > 0, got {t_max!r}")
    if not (isinstance(num, (int, np.integer)) and num >= 2):
        raise ValueError(f"num must be an integer >= 2, got {num!r}")
    if spacing == "linear":
        return np.linspace(0.0, t_max, num)
    if spacing == "log":
        t_min = t_max / 1000 if t_min is None else t_min
        if not 0 < t_min < t_max:
            raise ValueError(f"t_min must be in (0, t_max), got {t_min!r}")
        return np.concatenate([[0.0], np.geomspace(t_min, t_max, num - 1)])
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


def record_steps(times, dt: float, n_steps: int) -> np.ndarray:
    """Step indices nearest to the requested times (sorted, unique, within [0, n_steps]).

    Parameters
    ----------
    times : array_like
        Requested continuous times t.
    dt : float
        Time advanced by one step.
    n_steps : int
        Number of steps of the run.

    Returns
    -------
    ndarray, shape (k,), int64
        round(t / dt) of each time, clipped to [0, n_steps], sorted, without repeats.
    """
    steps = np.rint(np.asarray(times, dtype=np.float64) / dt).astype(np.int64)
    return np.unique(np.clip(steps, 0, n_steps))


@dataclass
class Trajectory:
    """What a run observed, in memory; also the default observer of :func:`run`.

    Attributes
    ----------
    steps : ndarray of int, shape (T,)
    times : ndarray, shape (T,)
        Continuous times t of the records.
    risk : ndarray, shape (T,)
        Objective ``problem.risk`` at each record (the full, deterministic objective even
        when the integrator uses minibatches).
    grad_norm : ndarray, shape (T,)
        Euclidean norm of grad F over all particle coordinates, |v| / m.
    particles : ndarray, shape (T, m, d + 2) or None
        Copies of the state at each record, when requested.
    status : str
        ``"complete"`` or ``"diverged"``.
    message : str
        Why the run stopped.
    final : State
        The integrator state at the end.
    method : str
        How the problem computes its objective (closed form, quadrature, Monte Carlo, data).
    observables : dict
        name -> ndarray (T,): the values of the run's measures at each record.
    """

    keep_particles: bool = False
    steps: list = field(default_factory=list)
    times: list = field(default_factory=list)
    risk: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    particles: list | None = None
    tracers: list | None = None
    status: str = "running"
    message: str = ""
    final: State | None = None
    method: str = ""
    observables: dict = field(default_factory=dict)

    def observe(self, state: State, evaluation: Evaluation) -> None:
        """Record one frame (called by :func:`run` at each recording step)."""
        self.steps.append(state.step)
        self.times.append(state.t)
        self.risk.append(evaluation.value)
        self.grad_norm.append(evaluation.grad_norm)
        for name, value in getattr(state, "measured", {}).items():
            self.observables.setdefault(name, []).append(value)
        if self.keep_particles:
            if self.particles is None:
                self.particles = []
            self.particles.append(state.W.copy())
            if state.tracers is not None:
                self.tracers = (self.tracers or []) + [state.tracers.copy()]

    def close(self, state: State, status: str, message: str) -> None:
        """Called once at the end of the run."""
        self.final = state
        self.status = status
        self.message = message
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.times = np.asarray(self.times, dtype=np.float64)
        self.risk = np.asarray(self.risk, dtype=np.float64)
        self.grad_norm = np.asarray(self.grad_norm, dtype=np.float64)
        self.observables = {name: np.asarray(values, dtype=np.float64) for name, values in self.observables.items()}
        if self.particles is not None:
            self.particles = np.stack(self.particles)
        if self.tracers is not None:
            self.tracers = np.stack(self.tracers)

    @property
    def W(self) -> np.ndarray:
        """Final particles, shape (m, d + 2)."""
        return self.final.W


def run(problem: Problem, integrator: Integrator, W0, t_max: float, times=None,
        rng: np.random.Generator | None = None, observers=(), keep_particles: bool = False,
        state: State | None = None, tracers=None, measures=()) -> Trajectory:
    """Integrate from ``W0`` up to time ``t_max``, recording on a time grid.

    Parameters
    ----------
    problem : Problem
        Used for the records (objective and gradient norm at each recording time).
    integrator : Integrator
        Built on the same problem (``gradient_descent(problem, step)``, ...).
    W0 : ndarray, shape (m, d + 2)
        Initial particles (copied).
    t_max : float
        Final time; the run takes ``round(t_max / dt)`` steps.
    times : array_like, optional
        Recording times (default ``time_grid(t_max)``); each is rounded to the nearest step.
    rng : numpy.random.Generator, optional
        Required by stochastic integrators.
    observers : sequence
        Objects with ``observe(state, evaluation)`` and ``close(state, status, message)``,
        called at each recording step and at the end (storage plugs in here).
        An observer may also have ``after_step(state)``, called between steps, after the
        record of the current step if it has one (for checkpoints between records).
    keep_particles : bool
        Keep a copy of the particles at each record in the returned trajectory.
    tracers : ndarray, shape (n, d + 2), optional
        Tracer particles started here: they move in the field of the particles (same
        scheme) without acting on them; ``trajectory.tracers`` holds them at each record
        when ``keep_particles`` is set, and ``trajectory.final.tracers`` at the end.
    state : State, optional
        Continue this state (from :func:`meanfield.restore`) instead of starting from
        ``W0``; records at or before ``state.step`` are taken as already made.
    measures : sequence of callables
        Each is called with the state at every record and returns {name: float}; the values
        are in ``state.measured`` for the observers and in ``trajectory.observables``
        (e.g. :class:`meanfield.StepSizeError`).

    Returns
    -------
    Trajectory
        ``status`` is ``"diverged"`` when a step produced NaN or inf; the run stops at that
        step and nothing is clipped.

    Notes
    -----
    An adaptive integrator (``meanfield.flow``) is advanced from record to record exactly:
    records are at the requested times (not rounded to steps), and ``state.step`` counts
    its right-hand-side evaluations.
    """
    if not (math.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be a finite number > 0, got {t_max!r}")
    for measure in measures:
        if hasattr(measure, "set_horizon"):
            measure.set_horizon(t_max)
    # SIGINT (and SIGTERM under the command line) stop the run at a step boundary:
    # meanfield.engine._interrupt.
    with _interrupt.handling((signal.SIGINT,), only_if_default=True):
        if integrator.advance is not None:
            return _run_adaptive(problem, integrator, W0, t_max, times, rng, observers, keep_particles, state,
                                 tracers, measures)
        return _run_fixed(problem, integrator, W0, t_max, times, rng, observers, keep_particles, state, tracers,
                          measures)


def _run_fixed(problem, integrator, W0, t_max, times, rng, observers, keep_particles, state, tracers,
               measures) -> Trajectory:
    """The loop of :func:`run` for a fixed-step integrator."""
    n_steps = int(round(t_max / integrator.dt))
    if n_steps < 1:
        raise ValueError(f"t_max = {t_max} is shorter than one step (dt = {integrator.dt})")
    steps = record_steps(time_grid(t_max) if times is None else times, integrator.dt, n_steps)
    trajectory, watchers, stepped, state, next_record = _start(
        problem, integrator, W0, rng, observers, keep_particles, state, tracers, steps, "step")
    status, message = "complete", f"reached t = {n_steps * integrator.dt:g} in {n_steps} steps"
    try:
        with _interrupt.deferred():
            while True:
                if next_record < len(steps) and state.step == steps[next_record]:
                    # The next step starts from this same evaluation when it can (one evaluation
                    # per recorded step, not two); otherwise _record makes a separate one.
                    evaluation = None if state.step == n_steps else share_evaluation(integrator, problem, state)
                    _record(problem, state, watchers, measures, evaluation)
                    next_record += 1
                if state.step == n_steps:
                    break
                # A checkpoint (of an interrupt, or between records) is taken only here, after
                # the record of this step: a run resumed from it takes every record after its
                # step and none before.
                _interrupt.poll()
                for hook in stepped:
                    hook(state)
                integrator.step(state)
                # A device state (CUDA backend) checks its particles where they are.
                finite = state.all_finite() if hasattr(state, "all_finite") else kernels.all_finite(state.W)
                if not (math.isfinite(state.value) and finite):
                    status = "diverged"
                    message = (f"diverged at step {state.step} (t = {state.t:g}): the "
                               f"{'objective' if not math.isfinite(state.value) else 'particles'} became NaN or inf")
                    break
    except _interrupt.Interrupted as stop:
        _close(state, watchers, "interrupted", f"stopped by {stop.name} at step {state.step} (t = {state.t:g})")
        raise
    _close(state, watchers, status, message)
    return trajectory


def _close(state, watchers, status: str, message: str) -> None:
    state.scratch.pop("evaluation", None)
    with _interrupt.deferred():  # a second signal must not cut the final checkpoint short
        for watcher in watchers:
            watcher.close(state, status, message)


def _start(problem, integrator, W0, rng, observers, keep_particles, state, tracers, marks, clock):
    """What both run loops set up: the trajectory, the watchers (trajectory first), the
    watchers' ``after_step`` hooks, the state (new, or the one resumed) and the index of the
    next record: the first mark (a step, or a time for ``clock = "t"``) after the state's."""
    trajectory = Trajectory(keep_particles=keep_particles, method=getattr(problem, "method", ""))
    watchers = [trajectory, *observers]
    if state is None:
        state = integrator.init(W0, rng, tracers)
        next_record = 0
    else:
        next_record = int(np.searchsorted(marks, getattr(state, clock), side="right"))
    stepped = [w.after_step for w in watchers if hasattr(w, "after_step")]
    return trajectory, watchers, stepped, state, next_record


def _record(problem, state, watchers, measures, evaluation=None) -> None:
    if evaluation is None:
        evaluation = problem.evaluate(state.W, points=state.tracers)
    if measures:
        state.measured = {}
        for measure in measures:
            state.measured.update(measure(state))
        # The particles of this record, for a checkpoint before the next one: a measure that
        # compares a record with the one before (resume(W)) takes them up on a resume.
        state.scratch["record_W"] = np.array(state.W, copy=True)
    for watcher in watchers:
        watcher.observe(state, evaluation)


def _run_adaptive(problem, integrator, W0, t_max, times, rng, observers, keep_particles, state, tracers,
                  measures) -> Trajectory:
    """The loop of :func:`run` for an integrator with ``advance`` (records at the exact times)."""
    grid = time_grid(t_max) if times is None else np.asarray(times, dtype=np.float64)
    grid = np.unique(np.clip(grid, 0.0, t_max))
    trajectory, watchers, stepped, state, next_record = _start(
        problem, integrator, W0, rng, observers, keep_particles, state, tracers, grid, "t")
    status = "complete"
    targets = list(grid[next_record:])
    if not targets or targets[-1] < t_max:
        targets.append(t_max)
    try:
        with _interrupt.deferred():
            for target in targets:
                _interrupt.poll()
                if target > state.t:
                    # A signal stops the solver at once; the state returns to the last record.
                    with _interrupt.immediate():
                        integrator.advance(state, float(target), float(t_max))
                    finite = kernels.all_finite(state.W) and (
                        state.tracers is None or kernels.all_finite(state.tracers))
                    if not (math.isfinite(state.value) and finite):
                        status = "diverged"
                        break
                if next_record < len(grid) and target == grid[next_record]:
                    _record(problem, state, watchers, measures)
                    next_record += 1
                if state.checkpointable:
                    # The integrator restarts its solver from this state, which the run file
                    # checkpoints: a run resumed from it continues bitwise as this one does.
                    state.scratch.pop("flow", None)
                for hook in stepped:
                    hook(state)
    except _interrupt.Interrupted as stop:
        # Not checkpointed mid-way: the last checkpoint (a restart) is where a resume begins.
        state.checkpointable = False
        _close(state, watchers, "interrupted", f"stopped by {stop.name} at t = {state.t:g}")
        raise
    if status == "diverged":
        message = state.info.get("message") or f"diverged at t = {state.t:g}: the state became NaN or inf"
    else:
        message = f"reached t = {state.t:g} with {state.info.get('nfev', state.step)} evaluations ({integrator.name})"
    _close(state, watchers, status, message)
    return trajectory
