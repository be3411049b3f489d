"""From a resolved config to the objects of one run: random streams, model, teacher,
problem, integrator, initial particles, tracers and measures (:func:`build`).

Random streams come from ``numpy.random.SeedSequence(root_seed, spawn_key=(seed, stream))``,
with streams 0 (initial particles), 1 (problem: teacher, data, Monte Carlo sample) and
2 (dynamics: minibatches, noise); seed is ``run.seed``, or ``[problem] seed`` for the
problem's streams 1 and 3 when the file gives it (:func:`seed_sequence`). They depend on the
run's identity only, never on a worker or array-task number, so any sharding of a sweep
reproduces the same runs; and runs that
differ only in the width m share their streams (the first particles of a width-m run are
those of every wider run with the same seed). Stream 3 draws the held-out test sample of
``[lazy]`` (``meanfield.lazy``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..engine._classification import ClassificationMeasure
from ..engine._flow import StepSizeError
from ..engine._integrators import INTEGRATORS, Integrator
from ..engine._model import Init, Model
from ..engine._problems import FiniteDataProblem, PopulationProblem, Problem
from ..engine._registry import Registry
from ..engine._run import time_grid
from ..engine._teacher import Teacher
from ..online._engine_map import OrderParameterMeasure

STREAMS = {"init": 0, "problem": 1, "dynamics": 2, "test": 3}


PROBLEM_STREAMS = ("problem", "test")


def seed_sequence(config: dict, stream: str) -> np.random.SeedSequence:
    """The SeedSequence of one random stream of a run (``init``, ``problem``, ``dynamics`` or
    ``test``).

    ``SeedSequence(root_seed, spawn_key=(seed, stream))`` with seed ``run.seed``, except that
    the problem's streams (``problem``: teacher, data, Monte Carlo sample; ``test``: the
    held-out sample) take ``[problem] seed`` when the config has it: runs with different
    ``run.seed`` and the same ``problem.seed`` train on the same teacher and data from
    different initial particles. ``problem.seed = s`` draws the problem of ``run.seed = s``.

    Parameters
    ----------
    config : dict
        A resolved config (its ``run`` section: ``seed`` and ``root_seed``; and
        ``problem.seed`` if given).
    stream : str
        ``init``, ``problem``, ``dynamics`` or ``test`` (``KeyError`` for another name).

    Returns
    -------
    numpy.random.SeedSequence
        A new SeedSequence, equal for equal (root_seed, seed, stream).
    """
    seed = config["run"]["seed"]
    if stream in PROBLEM_STREAMS:
        seed = config.get("problem", {}).get("seed", seed)
    return np.random.SeedSequence(config["run"]["root_seed"], spawn_key=(seed, STREAMS[stream]))


def generator(config: dict, stream: str) -> np.random.Generator:
    """A PCG64 generator on the stream's SeedSequence (:func:`seed_sequence`).

    Parameters
    ----------
    config : dict
        A resolved config (its ``run`` section, and ``problem.seed`` if given).
    stream : str
        ``init``, ``problem``, ``dynamics`` or ``test``.

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.Generator(np.random.PCG64(seed_sequence(config, stream)))


@dataclass
class Experiment:
    """Everything one run needs, built from its resolved config."""

    model: Model
    problem: Problem
    integrator: Integrator
    W0: np.ndarray
    times: np.ndarray
    t_max: float
    rng: np.random.Generator
    teacher: Teacher | None
    tracers: np.ndarray | None = None
    tracer_blocks: tuple = ()
    measures: tuple = ()


def _model(config: dict) -> Model:
    mc = config["model"]
    return Model(mc["d"], mc["activation"], bias=mc["bias"], train_readout=mc["train_readout"],
                 scaling=mc["scaling"], alpha=mc["alpha"], dtype=mc["dtype"])


def initial_state(config: dict) -> np.ndarray:
    """The initial particles of a run, shape (m, d + 2) (drawn from its ``init`` stream).

    Parameters
    ----------
    config : dict
        A resolved config: its ``model`` section (d, m, dtype, bias, scaling) and its
        ``init`` section (the laws of a, b and c, the scale tau, ``symmetric``), plus the
        seeds of :func:`seed_sequence`.

    Returns
    -------
    ndarray, shape (m, d + 2), in the model's dtype (float32 or float64)
        A new array, columns a (d), b, c; equal for equal config and seeds, and a width-m
        state is the first m rows of a wider one (except for the symmetric init).
    """
    ic = config["init"]
    init = Init(a=ic["a"], c=ic["c"], b=ic["b"], tau=ic["tau"], symmetric=ic["symmetric"])
    return init.sample(_model(config), config["model"]["m"], generator(config, "init"))


def keyed_noise(config: dict) -> bool:
    """Whether a run's Langevin noise is keyed (``langevin(noise="keyed")``): Langevin runs of
    a ``[limit]`` table with tracers, members and references, so that a member's particle i
    and the reference's tracer i receive the same increments. Every other run draws its noise
    from its ``dynamics`` stream in order, as before (its files and ids are unchanged).

    Parameters
    ----------
    config : dict
        A resolved config.

    Returns
    -------
    bool
    """
    limit = config.get("limit", {})
    return (config["dynamics"]["integrator"] == "langevin" and limit.get("role") in ("member", "reference")
            and bool(limit.get("tracers")))


def _tracer_rows(config: dict, blocks) -> np.ndarray | None:
    """Row of the keyed noise block each tracer of a reference receives: row i for the tracer
    started at particle i of a member, whose noise key is the reference's (the members and
    their reference differ only in the width, so they share the ``dynamics`` stream)."""
    if not blocks:
        return None
    for label, start, stop in blocks:
        member = json.loads(json.dumps(config))
        member["model"]["m"] = stop - start
        theirs, mine = seed_sequence(member, "dynamics"), seed_sequence(config, "dynamics")
        if (theirs.entropy, theirs.spawn_key) != (mine.entropy, mine.spawn_key):
            raise ValueError(f"the member {label} has another noise stream than its reference")
    return np.concatenate([np.arange(stop - start) for _, start, stop in blocks])


def _tracers(config: dict):
    """A reference run's tracers: the initial particles of each member width, stacked."""
    widths = config.get("limit", {}).get("tracer_widths") or []
    if not widths:
        return None, ()
    blocks, states, start = [], [], 0
    for width in widths:
        member = json.loads(json.dumps(config))
        member["model"]["m"] = width
        states.append(initial_state(member))
        blocks.append((f"m={width}", start, start + width))
        start += width
    return np.concatenate(states), tuple(blocks)


@dataclass(frozen=True)
class ObservableContext:
    """What an observable's ``make`` may use: the run's resolved config and its objects."""

    config: dict
    model: Model
    problem: Problem
    W0: np.ndarray
    teacher: Teacher | None


@dataclass(frozen=True)
class ObservableEntry:
    """A series recorded at every record time of a run: one entry of :data:`OBSERVABLES`.

    The entry's measure is called at each record with the integrator's state and returns
    ``{series name: float}``; the run file stores each series as ``/observables/<name>``
    (``meanfield.io.RunFile``) and :func:`meanfield.analysis.open_run` reads every
    ``/observables/*`` series as a variable over ``time``. Nothing else names it.

    Attributes
    ----------
    name : str
        The entry's name (one entry may record several series: the measure's ``names``).
    enabled : callable
        ``enabled(config) -> bool`` from the resolved config.
    make : callable
        ``make(context: ObservableContext) -> measure``; a measure is a callable
        ``measure(state) -> dict`` with a ``names`` attribute (the series it returns), and
        optionally ``set_horizon(t_max)``.
    """

    name: str
    enabled: Callable
    make: Callable


OBSERVABLES = Registry("observable")
register_observable = OBSERVABLES.register


def build(config: dict) -> Experiment:
    """Model, problem, integrator, initial particles and recording times of one run.

    Parameters
    ----------
    config : dict
        A resolved config (every section filled in, as in ``RunSpec.config``). The file of
        ``[problem] data``, if given, is read here (an ``.npz`` with ``X`` and ``y``); nothing
        is written.

    Returns
    -------
    Experiment
        ``model``; ``problem`` (population or finite-data, wrapped as the tangent model when
        ``[problem] tangent``; with ``[run] backend = "cuda"`` it and ``integrator`` are the
        CUDA twins); ``integrator`` (``[dynamics] integrator``; Langevin with keyed noise
        under ``[limit]`` with tracers, :func:`keyed_noise`); ``W0`` (m, d + 2), from
        :func:`initial_state`; ``times``, the recording times in continuous time t, float64,
        from 0 to ``t_max``; ``t_max``; ``rng``, the generator of the ``dynamics`` stream;
        ``teacher`` (None for a data file); ``tracers`` (n, d + 2) and ``tracer_blocks`` for a
        ``[limit]`` reference run (None and () otherwise); ``measures``, one per enabled
        entry of :data:`OBSERVABLES`.
    """
    mc, pc, tc = config["model"], config["problem"], config["problem.teacher"]
    dc, rc = config["dynamics"], config["record"]
    model = _model(config)
    W0 = initial_state(config)
    problem_rng = generator(config, "problem")
    teacher = None
    if pc["kind"] == "population" or pc["data"] is None:
        if tc["kind"] == "orthonormal":
            teacher = Teacher.orthonormal(mc["d"], tc["k"], tc["activation"], tc["readout"],
                                          rng=problem_rng if tc["rotate"] else None)
        else:
            teacher = Teacher.random(mc["d"], tc["k"], problem_rng, tc["activation"], bias=tc["bias"])
    if pc["kind"] == "population":
        problem = PopulationProblem(model, teacher, pc["loss"], pc["noise_std"], pc["flip_prob"], pc["method"],
                                    pc["quadrature_order"], pc["mc_samples"], rng=problem_rng)
    elif pc["data"] is None:
        problem = FiniteDataProblem.from_teacher(model, teacher, pc["n_samples"], problem_rng, pc["loss"],
                                                 pc["noise_std"], pc["flip_prob"])
    else:
        with np.load(pc["data"], allow_pickle=False) as archive:
            problem = FiniteDataProblem(model, archive["X"], archive["y"], pc["loss"])
    if pc.get("tangent"):
        from ..engine._tangent import TangentProblem

        problem = TangentProblem(problem, W0)
    tracers, blocks = _tracers(config)
    dynamics = dict(dc, noise="keyed", tracer_rows=_tracer_rows(config, blocks)) if keyed_noise(config) else dc
    integrator = INTEGRATORS[dc["integrator"]].build(problem, dynamics)
    if config["run"]["backend"] == "cuda":
        from ..engine._cuda import to_device

        problem, integrator = to_device(problem, integrator)
    times = time_grid(dc["t_max"], rc["times"], rc["spacing"], rc["t_min"])
    context = ObservableContext(config, model, problem, W0, teacher)
    measures = tuple(entry.make(context) for entry in OBSERVABLES.values() if entry.enabled(config))
    return Experiment(model, problem, integrator, W0, times, dc["t_max"], generator(config, "dynamics"), teacher,
                      tracers, blocks, measures)


def held_out_sample(config: dict, teacher_W, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out sample of a run: X (n, d) ~ N(0, I_d) and its labels y (n,), float64.

    Drawn from the run's stream 3 (``generator(config, "test")``), so a run and
    its tangent-model run share it, and it never consumes draws of the training streams.
    ``n`` defaults to ``[lazy] test_samples``.
    """
    rng = generator(config, "test")
    pc = config["problem"]
    teacher = Teacher(np.asarray(teacher_W, dtype=np.float64), config["problem.teacher"]["activation"])
    n = config["lazy"]["test_samples"] if n is None else n
    X = rng.standard_normal((n, config["model"]["d"]))
    return X, teacher.labels(X, rng, pc["loss"], pc["noise_std"], pc["flip_prob"])


class HeldOutRisk:
    """The risk on a held-out sample, as a measure of :func:`meanfield.run` (``[record]
    test_samples``): the same loss as the training objective, averaged over n fresh inputs
    X ~ N(0, I_d) labelled by the teacher (with the run's label noise), drawn once from the
    run's test stream (:func:`held_out_sample`).

    Parameters
    ----------
    model : Model
    config : dict
        The run's resolved config (its teacher, loss, label noise and test stream).
    teacher_W : ndarray, shape (k, d + 2)
    n : int
        Size of the held-out sample.
    """

    names = ("test_risk",)

    def __init__(self, model: Model, config: dict, teacher_W, n: int):
        X, y = held_out_sample(config, teacher_W, n)
        self.problem = FiniteDataProblem(model, X, y, config["problem"]["loss"])

    def __call__(self, state) -> dict:
        return {"test_risk": float(self.problem.risk(state.W))}


register_observable(ObservableEntry(
    "step_error", lambda config: bool(config["record"].get("step_error")),
    lambda c: StepSizeError(c.problem, c.W0)))
register_observable(ObservableEntry(
    "test_risk", lambda config: bool(config["record"].get("test_samples")),
    lambda c: HeldOutRisk(c.model, c.config, c.teacher.W, c.config["record"]["test_samples"])))


def classification_measure(context: ObservableContext) -> ClassificationMeasure:
    """The measure of ``[record] classification``: norms, normalised margin, errors and
    predictor change on the run's training set (``meanfield.engine._classification``).

    Parameters
    ----------
    context : ObservableContext
        The run's config and objects; its problem is a :class:`FiniteDataProblem` (the
        experiment-file rules see to it), whose X and y are the training set.

    Returns
    -------
    ClassificationMeasure
        With ``test_error`` on the held-out sample of ``[record] test_samples`` (the sample of
        ``test_risk``, :func:`held_out_sample`) when that key is set.
    """
    problem, config = context.problem, context.config
    X_test = y_test = None
    n_test = config["record"].get("test_samples")
    if n_test:
        X_test, y_test = held_out_sample(config, context.teacher.W, n_test)
    return ClassificationMeasure(context.model, problem.X, problem.y, X_test, y_test)


register_observable(ObservableEntry(
    "classification", lambda config: bool(config["record"].get("classification")), classification_measure))


register_observable(ObservableEntry(
    "order_parameters", lambda config: bool(config["record"].get("order_parameters")),
    lambda c: OrderParameterMeasure(c.model, c.config["model"]["m"], c.teacher.W)))
