"""Ensembles: runs of equal shape advanced together, one batch dimension over members.

A sweep of small networks over many seeds (a census of spurious minima) is bound by the cost
of each step's Python and kernel calls, not by arithmetic. Members that share their width,
input dimension, problem kind, integrator and time grid are stacked into one state of shape
(B m, d + 2); one :class:`PopulationEnsemble` evaluation gives every member's objective and
velocity, and the integrator's own step (``gradient_descent``, ``heavy_ball``: updates element
by element) moves all members at once. Each member keeps its own observers (its run file), its
own records and its own status: a member that diverges is closed at that step, as it would have
been alone, and the others go on.

Numbers: a member's evaluation is the one its problem makes alone (the same kernel, the same
order of sums, see ``kernels.ensemble``), and the updates are element by element, so a member's
trajectory is bitwise that of the same run alone.
"""
from __future__ import annotations

import signal
import time

import numpy as np

from .. import kernels
from . import _interrupt
from ._integrators import Integrator, State, share_evaluation
from ._problems import ClosedFormExpectation, Evaluation, PopulationProblem
from ._run import record_steps, time_grid

__all__ = ["MemberStreams", "PopulationEnsemble", "batched", "member_states", "run_ensemble"]


def batched(problem, m: int) -> bool:
    """Whether members of this problem at width m are evaluated by one batched kernel call
    (bias-free closed-form population problems small enough for the fused kernel); others are
    evaluated member by member (the same numbers, without the speed-up)."""
    return (isinstance(problem, PopulationProblem) and isinstance(problem.expectation, ClosedFormExpectation)
            and problem.expectation.fused_applies(m))


class PopulationEnsemble:
    """B problems of equal shape as one problem over stacked particles.

    Parameters
    ----------
    members : sequence of Problem
        One problem per member: the same model (width m, d, activation, scaling), the same
        kind and method; teachers, samples and seeds may differ.
    m : int
        The members' width.

    Attributes
    ----------
    members : list of Problem
    model : Model
        The first member's model (``check_state`` accepts the stacked (B m, d + 2) state).
    method : str
    batched : bool
        One kernel call per evaluation (:func:`batched`); otherwise each member's own
        ``evaluate``.
    """

    def __init__(self, members, m: int):
        self.members = list(members)
        first = self.members[0]
        self.model = first.model
        self.loss = getattr(first, "loss", None)
        self.method = getattr(first, "method", "")
        self.m = int(m)
        model = first.model
        self.batched = all(batched(p, m) for p in self.members) and all(
            (p.model.activation, p.model.scaling, p.model.alpha_value(m), p.model.train_readout,
             p.teacher_W.shape) == (model.activation, model.scaling, model.alpha_value(m), model.train_readout,
                                    first.teacher_W.shape) for p in self.members)
        if self.batched:
            B = len(self.members)
            self._teachers = np.ascontiguousarray(np.stack([p.teacher_W for p in self.members]))
            self._second_moments = np.array([p.label_second_moment for p in self.members], dtype=np.float64)
            self._values = np.empty(B)
            self._work = kernels.ensemble_work_arrays(B, self.m, self._teachers.shape[1], model.d, np.float64)

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Every member's objective and velocity.

        Parameters
        ----------
        W : ndarray, shape (B m, d + 2)
            The members' particles, member b in rows b m ... (b + 1) m - 1.
        points : None
            Ensembles carry no tracers.
        out : ndarray, shape (B m, d + 2), optional
            Buffer for the velocities.

        Returns
        -------
        Evaluation
            ``value``: ndarray (B,) of each member's F; ``velocity`` (B m, d + 2).
        """
        if points is not None:
            raise ValueError("ensembles carry no tracers")
        B, m = len(self.members), self.m
        p = W.shape[1]
        velocity = np.empty_like(W) if out is None else out
        stacked, stacked_velocity = W.reshape(B, m, p), velocity.reshape(B, m, p)
        if self.batched:
            model = self.model
            values = np.empty(B)
            kernels.ensemble_closed_form_evaluate(
                stacked, self._teachers, model.activation_code, model.output_scale(m), model.alpha_value(m),
                self._second_moments, model.train_readout, values, stacked_velocity, *self._work)
        else:
            values = np.array([problem.evaluate(stacked[b], out=stacked_velocity[b]).value
                               for b, problem in enumerate(self.members)], dtype=np.float64)
        return Evaluation(values, velocity, None)


class MemberStreams(np.random.Generator):
    """The random stream of a stacked state: each member's block of a draw comes from that
    member's own generator, so a noisy member draws what it would alone.

    Only ``standard_normal(dtype=..., out=...)`` over the stacked state is served (what a
    Langevin step draws); any other draw would mix the members' streams and is refused.

    Parameters
    ----------
    rngs : sequence of numpy.random.Generator
        One per member, in the stacking order.
    m : int
        Rows per member.
    """

    def __init__(self, rngs, m: int):
        super().__init__(np.random.PCG64(0))
        self.members = list(rngs)
        self.m = int(m)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        """Fill ``out`` (shape (B m, p)) block by block from the members' generators.

        Parameters
        ----------
        size : None
            Draws are made into ``out`` only.
        dtype : numpy dtype
        out : ndarray, shape (B m, p)

        Returns
        -------
        ndarray
            ``out``.
        """
        if out is None or size is not None or out.shape[0] != self.m * len(self.members):
            raise TypeError("an ensemble's stream fills the stacked state's array (out=...) only")
        for b, rng in enumerate(self.members):
            rng.standard_normal(dtype=dtype, out=out[b * self.m:(b + 1) * self.m])
        return out

    def __getattribute__(self, name):
        if name in ("standard_normal", "members", "m", "__class__", "__dict__") or name.startswith("__"):
            return object.__getattribute__(self, name)
        raise TypeError(f"an ensemble's stream serves standard_normal only, not {name}")


class _Member:
    """The state of one member as its observers see it: views of the stacked arrays."""

    __slots__ = ("W", "buffers", "step", "t", "value", "rng", "tracers", "info", "measured", "checkpointable",
                 "scratch")

    def __init__(self, state: State, b: int, m: int, rng=None):
        rows = slice(b * m, (b + 1) * m)
        self.W = state.W[rows]
        self.buffers = {name: array[rows] for name, array in state.buffers.items()}
        self.step = state.step
        self.t = state.t
        value = state.value
        self.value = float(value[b]) if np.ndim(value) else float(value)
        self.rng = rng  # the member's own generator: its checkpoints save it as a run alone does
        self.tracers = None
        self.info = {}
        self.measured = {}
        self.checkpointable = True
        records = state.scratch.get("record_W")  # the particles of each member's last record
        self.scratch = {"record_W": records[b]} if isinstance(records, dict) and b in records else {}


def run_ensemble(ensemble: PopulationEnsemble, integrator: Integrator, W0, t_max: float, times=None,
                 observers=None, measures=None, state: State | None = None,
                 checkpoint_seconds: float = 60.0, rngs=None, close_complete: bool = True) -> list:
    """Integrate B members together up to ``t_max``, each recorded by its own observers.

    The loop of :func:`meanfield.run` for a fixed-step integrator built on ``ensemble`` whose
    entry allows ensembles (gradient descent, heavy ball, full-batch Langevin: its noise comes
    from each member's own generator, :class:`MemberStreams`): the same records (steps nearest
    to ``times``), the same divergence rule per member (its objective or particles NaN or inf
    after a step: that member is closed ``"diverged"`` at that step, the others go on), the
    same interrupt handling (SIGINT stops at a step boundary; every running member is
    checkpointed and closed ``"interrupted"``).
    Checkpoints are taken for all members at the same step, every ``checkpoint_seconds``, so
    that a resumed ensemble starts its members together.

    Parameters
    ----------
    ensemble : PopulationEnsemble
    integrator : Integrator
        Built on ``ensemble`` (``INTEGRATORS[name].build(ensemble, dynamics)``), with a fixed
        step.
    W0 : ndarray, shape (B, m, d + 2)
        The members' initial particles (ignored when ``state`` is given).
    t_max : float
        Final continuous time t; ``round(t_max / dt)`` steps.
    times : array_like, optional
        Recording times (default ``time_grid(t_max)``).
    observers : list of sequences, optional
        ``observers[b]``: member b's observers (``observe(state, evaluation)``,
        ``close(state, status, message)``, optionally ``checkpoint(state)``).
    measures : list of sequences, optional
        ``measures[b]``: member b's measures (called with its state at each record).
    state : State, optional
        A stacked state to continue (``meanfield.restore`` on the stacked arrays).
    checkpoint_seconds : float
        Wall time between checkpoints.
    close_complete : bool
        Close the observers of the members that complete (False: the caller closes them, with
        the member state returned, after what it stores at the end of a run).
    rngs : list of numpy.random.Generator, optional
        ``rngs[b]``: member b's generator (its noise when the integrator draws, and what its
        checkpoints save, as a run alone saves it).

    Returns
    -------
    list of (status, message, W, member)
        Per member: ``"complete"`` or ``"diverged"``, the message a run alone would have, its
        final particles (a view, shape (m, d + 2)) and its state as its observers see it.
    """
    B, m = len(ensemble.members), ensemble.m
    rngs = rngs if rngs is not None else [None] * B
    observers = observers if observers is not None else [()] * B
    measures = measures if measures is not None else [()] * B
    n_steps = int(round(t_max / integrator.dt))
    if n_steps < 1:
        raise ValueError(f"t_max = {t_max} is shorter than one step (dt = {integrator.dt})")
    steps = record_steps(time_grid(t_max) if times is None else times, integrator.dt, n_steps)
    if state is None:
        W0 = np.asarray(W0)
        streams = MemberStreams(rngs, m) if integrator.stochastic else None
        state = integrator.init(W0.reshape(B * m, W0.shape[-1]), streams, None)
        next_record = 0
    else:
        next_record = int(np.searchsorted(steps, state.step, side="right"))
    active = np.ones(B, dtype=bool)
    results = [None] * B
    last_checkpoint = time.monotonic()

    def close(b, status, message, observed=True):
        member = _Member(state, b, m, rngs[b])
        if observed:
            with _interrupt.deferred():
                for observer in observers[b]:
                    observer.close(member, status, message)
        results[b] = (status, message, member.W, member)
        active[b] = False

    with _interrupt.handling((signal.SIGINT,), only_if_default=True):
        try:
            with _interrupt.deferred():
                while True:
                    if next_record < len(steps) and state.step == steps[next_record]:
                        evaluation = (share_evaluation(integrator, ensemble, state) if state.step != n_steps
                                      else None)
                        if evaluation is None:
                            evaluation = ensemble.evaluate(state.W)
                        _record(state, evaluation, m, active, observers, measures, rngs)
                        next_record += 1
                    if state.step == n_steps:
                        break
                    _interrupt.poll()
                    if time.monotonic() - last_checkpoint >= checkpoint_seconds:
                        for b in np.flatnonzero(active):
                            member = _Member(state, b, m, rngs[b])
                            for observer in observers[b]:
                                if hasattr(observer, "checkpoint"):
                                    observer.checkpoint(member)
                        last_checkpoint = time.monotonic()
                    integrator.step(state)
                    values = state.value
                    finite_value = np.isfinite(values)
                    finite = finite_value & np.isfinite(state.W.reshape(B, -1)).all(axis=1)
                    for b in np.flatnonzero(active & ~finite):
                        what = "objective" if not finite_value[b] else "particles"
                        close(b, "diverged", f"diverged at step {state.step} (t = {state.t:g}): the {what} "
                                             "became NaN or inf")
                    if not active.any():
                        break
        except _interrupt.Interrupted as stop:
            for b in np.flatnonzero(active):
                close(b, "interrupted", f"stopped by {stop.name} at step {state.step} (t = {state.t:g})")
            stop.results = results  # what each member ended as: diverged before the signal, or interrupted
            raise
    for b in np.flatnonzero(active):
        close(b, "complete", f"reached t = {n_steps * integrator.dt:g} in {n_steps} steps", close_complete)
    return results


def _record(state, evaluation, m, active, observers, measures, rngs) -> None:
    """One record for every running member: its own evaluation, measures and observers."""
    for b in np.flatnonzero(active):
        member = _Member(state, b, m, rngs[b])
        member_evaluation = Evaluation(float(evaluation.value[b]), evaluation.velocity[b * m:(b + 1) * m], None)
        for measure in measures[b]:
            member.measured.update(measure(member))
        if measures[b]:  # as engine._run._record does for a run alone
            state.scratch.setdefault("record_W", {})[b] = member.scratch["record_W"] = np.array(member.W, copy=True)
        for observer in observers[b]:
            observer.observe(member, member_evaluation)


def member_states(state: State, B: int, m: int) -> list:
    """Views of each member of a stacked state (for checkpoints and observers).

    Parameters
    ----------
    state : State
        A stacked state of :func:`run_ensemble`.
    B, m : int
        Members and width.

    Returns
    -------
    list
        B member states whose W and buffers are views of ``state``'s.
    """
    return [_Member(state, b, m) for b in range(B)]

