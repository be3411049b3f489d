"""Runs of experiment files: from a resolved config to objects, to a stored HDF5 trajectory.

The data flows one way: experiment file -> :func:`plan` (validated, resolved
:class:`~meanfield.experiments._config.RunSpec` list) -> :func:`build` (model, problem, integrator,
initial state) -> :func:`meanfield.run` with a :class:`~meanfield.io._store.RunFile` observer ->
``<out>/<run id>.h5``.

Random streams and the assembly of a run's objects: :mod:`meanfield.experiments._assembly`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import sys
import time
import traceback

import numpy as np

from .engine import _interrupt
from .engine._integrators import restore
from .engine._run import run
from .experiments import _progress
from .experiments._assembly import Experiment, build, generator, initial_state, keyed_noise, seed_sequence
from .experiments._config import ConfigError, RunSpec, plan
from .experiments._progress import _PoolSteps, _StepBar, _tqdm, _worker_observer
from .experiments._run_stages import RUN_STAGES
from .io import CatalogFragment, catalog_rows, final_values, open_file_row, publish, write_index
from .io._store import (
    CorruptRunFile,
    RunFile,
    RunLock,
    RunLocked,
    move_aside,
    read_attrs,
    remove_abandoned,
    run_paths,
)

__all__ = ["ConfigError", "Experiment", "RunSpec", "build", "catalog_rows", "execute", "execute_ensemble",
           "execute_unit", "generator", "initial_state", "plan", "plan_units", "run_shard", "seed_sequence",
           "shard_units", "write_index"]

FINISHED = ("complete", "diverged")


def paths(out_dir, spec: RunSpec):
    """(finished file, file being written, run lock) of a run."""
    return run_paths(out_dir, spec.id)


def _summary(spec: RunSpec, status: str, path: str, risk=math.nan, time_=math.nan, message="", seconds=0.0):
    return {"id": spec.id, "index": spec.index, "status": status, "final_risk": float(risk),
            "final_time": float(time_), "message": message, "path": path, "swept": spec.swept,
            "seconds": seconds}


def execute(spec: RunSpec, out_dir, restart: bool = False, step_bar: bool = False) -> dict:
    """Run one spec into ``out_dir``: skip it if finished, resume it if unfinished.

    Parameters
    ----------
    spec : RunSpec
    out_dir : path
    restart : bool
        Start an unfinished run over instead of resuming it from its checkpoint.
    step_bar : bool
        Show a progress bar over the steps (when tqdm is installed and stderr is a terminal).

    Returns
    -------
    dict
        id, index, status (``complete``, ``diverged``, ``failed``, ``skipped``, ``locked``,
        ``interrupted``), final_risk, final_time, message, path, swept, seconds. Errors of the
        run itself are reported as ``failed`` with their message, never raised; a run stopped
        by SIGINT or SIGTERM is ``interrupted`` (checkpointed, resumable), with the signal's
        exit status under ``exit_status``.

    Notes
    -----
    Files that a kill, a full disk or a power cut left unreadable (a truncated or overwritten
    ``.h5`` or ``.h5.part``) are moved aside as ``<name>.corrupt-<UTC time>``, with one line on
    stderr naming the file and the reason, and the run is done again.
    """
    final, part, lock_path = paths(out_dir, spec)
    start = time.perf_counter()
    if _interrupt.stop_requested_in_worker():  # told to stop before this run began: start nothing
        summary = _summary(spec, "interrupted", part, message="not started: the sweep was stopped")
        summary["exit_status"] = 128 + _interrupt.received[0]
        return summary
    try:
        with RunLock(lock_path), _interrupt.worker_run():
            return _execute_locked(spec, final, part, restart, step_bar, start)
    except RunLocked as error:
        return _summary(spec, "locked", part, message=str(error))
    except _interrupt.Interrupted as stop:
        summary = _summary(spec, "interrupted", part, message=f"stopped by {stop.name}; resumable",
                           seconds=time.perf_counter() - start)
        summary["exit_status"] = stop.exit_status
        return summary
    except OSError as error:  # the machine's: a full disk, a file system gone read-only
        summary = _summary(spec, "failed", part, message=_os_error_text(error, part),
                           seconds=time.perf_counter() - start)
        summary["os_error"] = True
        return summary
    except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
        return _summary(spec, "failed", part, message=f"{type(error).__name__}: {error}",
                        seconds=time.perf_counter() - start)


def _os_error_text(error: OSError, path) -> str:
    """One line for an OS error: the file, the errno's name and its text."""
    code = error.errno
    text = str(error)
    if code is None:  # h5py passes HDF5's text, which carries the errno inside
        import re

        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    where = error.filename or path
    if code is not None:
        import errno as errno_names

        return f"{where}: {errno_names.errorcode.get(code, code)} ({os.strerror(code)}); the run is resumable"
    return f"{where}: {text.splitlines()[0] if text else type(error).__name__}; the run is resumable"


def _execute_locked(spec, final, part, restart, step_bar, start) -> dict:
    """:func:`execute` with the run's lock held."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(part + ".new")  # a resume killed while copying; the .part itself is whole
    finished = _finished_summary(spec, final, part)
    if finished is not None:
        return finished
    experiment = build(spec.config)
    writer, checkpoint = _open_writer(spec, experiment, final, part, restart)
    state = None
    if checkpoint is not None:
        rng = experiment.rng
        if checkpoint["rng_state"] is not None:
            rng.bit_generator.state = checkpoint["rng_state"]
        state = restore(experiment.integrator, checkpoint["W"], checkpoint["step"], checkpoint["value"],
                        checkpoint["buffers"], rng, checkpoint["tracers"], checkpoint["time"], checkpoint["info"])
        _resume_measures(experiment.measures, checkpoint, state)
    observers = [writer]
    tqdm = _tqdm() if step_bar else None
    if tqdm is not None and experiment.integrator.advance is None:
        total = int(round(experiment.t_max / experiment.integrator.dt))
        observers.append(_StepBar(tqdm, total, spec.id[:8]))
    shown = _worker_observer(spec, experiment, state)  # in a pool worker whose parent shows step bars
    if shown is not None:
        observers.append(shown)
    try:
        trajectory = run(experiment.problem, experiment.integrator, experiment.W0, experiment.t_max,
                         times=experiment.times, rng=experiment.rng, observers=observers, state=state,
                         tracers=experiment.tracers, measures=experiment.measures)
    except (KeyboardInterrupt, OSError):
        # Interrupted (the run loop checkpointed it) or an OS error such as a full disk: the
        # .part keeps everything up to its last checkpoint and is resumed by the next call.
        writer.abandon()
        raise
    except BaseException as error:
        if writer.is_open:
            writer.finish("failed", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        raise
    path = final if trajectory.status in FINISHED else part
    if trajectory.status == "complete":
        for stage in RUN_STAGES.values():
            if stage.enabled(spec.config):
                stage.after_run(path, spec.config, experiment.problem)
    risk, t = final_values(path)
    return _summary(spec, trajectory.status, path, risk, t, trajectory.message, time.perf_counter() - start)


def _finished_summary(spec, final, part) -> dict | None:
    """The summary of a run whose finished file is there already (``skipped``, or ``failed``
    when a stage that a kill cut short fails now); None when the run is still to do."""
    if not os.path.exists(final):
        return None
    try:
        attrs = read_attrs(final)
    except CorruptRunFile as error:
        move_aside(final, error.reason)
        return None
    if not (attrs.get("config_sha256") == spec.sha256 and attrs.get("status") in FINISHED):
        return None
    with contextlib.suppress(FileNotFoundError):
        os.remove(part)  # a finish killed between its rename and the removal of the .part
    risk, t = final_values(final)
    for stage in RUN_STAGES.values():  # a kill may have come between the run and its stages
        if not stage.enabled(spec.config):
            continue
        try:
            stage.after_run(final, spec.config, None)
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
            return _summary(spec, "failed", final, risk, t, f"{stage.name} stage: {type(error).__name__}: {error}")
    return _summary(spec, "skipped", final, risk, t, f"already {attrs['status']}")


def _open_writer(spec, experiment, final, part, restart, in_memory: bool = False):
    """(writer, checkpoint): the run file created, or resumed from its ``.part`` (checkpoint
    None when there is nothing to resume: a new file, or a damaged ``.part`` moved aside).
    ``in_memory``: a new file is built in memory (``RunFile.create``)."""
    buffers = experiment.integrator.init(experiment.W0, experiment.rng, experiment.tracers).buffers
    buffer_shapes = {name: array.shape for name, array in sorted(buffers.items())}
    record = spec.config["record"]
    header = RunFile.header(spec, experiment.problem.method)
    teacher_W = experiment.teacher.W if experiment.teacher is not None else None
    observables = tuple(name for measure in experiment.measures for name in measure.names)
    args = (part, final, header, experiment.model, experiment.W0.shape[0], teacher_W, buffer_shapes,
            record["particles"], record["particles_dtype"], record["checkpoint_seconds"],
            experiment.tracer_blocks, observables)
    checkpoint = None
    if os.path.exists(part) and not restart:
        try:
            writer, checkpoint = RunFile.resume(*args)
        except (CorruptRunFile, KeyError) as error:
            move_aside(part, getattr(error, "reason", f"not a run file ({error})"))
            writer, checkpoint = RunFile.create(*args, in_memory=in_memory), None
    else:
        writer = RunFile.create(*args, in_memory=in_memory)
    writer.describe = getattr(experiment.problem, "describe", None)
    return writer, checkpoint


def _resume_measures(measures, checkpoint, state=None) -> bool:
    """Give the measures that compare a record with the one before (``resume(W)``) the
    particles of the last record before the checkpoint, and keep them in ``state`` for the
    next checkpoint; whether the checkpoint had them."""
    record_W = checkpoint.get("record_W")
    if record_W is None or not measures:
        return False
    for measure in measures:
        if hasattr(measure, "resume"):
            measure.resume(record_W)
    if state is not None:
        state.scratch["record_W"] = record_W
    return True


ENSEMBLE_SIZE = 128  # members of one ensemble at most (``run_shard(ensemble_size=...)``)


def ensemble_key(spec: RunSpec) -> str | None:
    """What runs must share to advance as one ensemble: the whole config but the seed; None for
    a run that is never put in an ensemble (an integrator whose entry does not allow it,
    minibatches, an adaptive integrator, noise on the CUDA backend, tracers, keyed noise).
    Whether a group is worth batching is decided on its first member (:func:`plan_units`)."""
    import json

    from .engine._integrators import INTEGRATORS

    config = spec.config
    entry = INTEGRATORS.get(config["dynamics"]["integrator"])
    if entry is None or not entry.ensembles or entry.time_step is None:
        return None
    if config["dynamics"].get("batch_size") is not None:  # minibatches: drawn per member, not batched
        return None
    if config.get("limit", {}).get("enabled"):
        return None
    # On the GPU the noise comes from per-particle generators, not from each member's stream.
    if config.get("run", {}).get("backend", "cpu") != "cpu" and not entry.deterministic:
        return None
    if keyed_noise(config):  # its noise is keyed by its own stream, which an ensemble's stream does not serve
        return None
    rest = {section: dict(values) for section, values in config.items()}
    rest.get("run", {}).pop("seed", None)
    return json.dumps(rest, sort_keys=True, default=str)


def plan_units(specs, ensemble_size: int = ENSEMBLE_SIZE) -> list[list[RunSpec]]:
    """Group runs into ensembles: runs with the same :func:`ensemble_key` whose problem the
    batched kernel evaluates (``meanfield.engine._ensemble.batched``), in chunks of at most
    ``ensemble_size``, in the order of their first run; every other run is a unit of one.

    Parameters
    ----------
    specs : list of RunSpec
    ensemble_size : int
        Members at most; 1 turns ensembles off.

    Returns
    -------
    list of list of RunSpec
        The units, ordered by the index of their first run; each list in run order.
    """
    from .engine._ensemble import batched

    if ensemble_size <= 1:
        return [[spec] for spec in specs]
    key = (tuple((spec.index, spec.sha256) for spec in specs), ensemble_size)
    if _LAST_UNITS[0] == key:  # the command line plans the shard it then runs
        return [list(unit) for unit in _LAST_UNITS[1]]
    groups: dict = {}
    units = []
    for spec in specs:
        key = ensemble_key(spec)
        if key is None:
            units.append([spec])
            continue
        if key not in groups:
            try:
                experiment = build(spec.config)
                problem = getattr(experiment.problem, "host", experiment.problem)  # a CUDA run's CPU problem
                eligible = experiment.tracers is None and batched(problem, experiment.W0.shape[0])
            except Exception:  # noqa: BLE001 - a run that cannot be built fails alone, with its message
                eligible = False
            groups[key] = [] if eligible else None
        if groups[key] is None:
            units.append([spec])
            continue
        chunk = groups[key]
        if not chunk or len(chunk[-1]) >= ensemble_size:
            chunk.append([])
            units.append(chunk[-1])
        chunk[-1].append(spec)
    _LAST_UNITS[:] = [key, [list(unit) for unit in units]]
    return units


# (key, units) of the last plan_units call: the command line plans the shard it then runs, and
# the ensemble keys cost about 0.2 ms a run.
_LAST_UNITS = [None, None]


def shard_units(specs, task_index: int = 0, task_count: int = 1,
                ensemble_size: int = ENSEMBLE_SIZE) -> list[list[RunSpec]]:
    """The units (:func:`plan_units`) of one shard: every ``task_count``-th unit of the whole
    experiment from ``task_index``, so that a shard (a Slurm array task) takes whole ensembles.
    Without ensembles the units are the runs in index order: a shard takes the runs whose
    index is ``task_index`` modulo ``task_count``.

    Parameters
    ----------
    specs : list of RunSpec
        Every run of the experiment.
    task_index, task_count : int
    ensemble_size : int

    Returns
    -------
    list of list of RunSpec
    """
    units = plan_units(specs, ensemble_size)
    return [unit for position, unit in enumerate(units) if position % task_count == task_index]


def execute_unit(unit, out_dir, restart: bool = False) -> list[dict]:
    """:func:`execute` for a unit of :func:`plan_units` (one run, or an ensemble).

    Parameters
    ----------
    unit : list of RunSpec
    out_dir : path
    restart : bool

    Returns
    -------
    list of dict
        One summary per run (see :func:`execute`), in the unit's order.
    """
    if len(unit) == 1:
        return [execute(unit[0], out_dir, restart)]
    return execute_ensemble(unit, out_dir, restart)


def execute_ensemble(specs, out_dir, restart: bool = False) -> list[dict]:
    """Run runs that share everything but their seed as one ensemble; each ends as its own run.

    Each member gets what :func:`execute` would give it alone: its lock, its run file
    (created, or resumed from its checkpoint), its records, its status and its summary, and
    bitwise the same numbers (``meanfield.engine._ensemble``). Members already finished are
    skipped; members resumed from checkpoints at different steps advance as separate
    ensembles; a member that diverges is closed at that step while the others go on.

    Parameters
    ----------
    specs : list of RunSpec
        Runs with the same :func:`ensemble_key`.
    out_dir : path
    restart : bool
        Start unfinished runs over instead of resuming them.

    Returns
    -------
    list of dict
        One summary per run, in the order of ``specs``; a member finished here carries its
        catalog row under ``catalog_row`` (``run_shard`` moves it to the catalog).
    """
    summaries = {}
    start = time.perf_counter()
    if _interrupt.stop_requested_in_worker():
        for spec in specs:
            summary = _summary(spec, "interrupted", paths(out_dir, spec)[1],
                               message="not started: the sweep was stopped")
            summary["exit_status"] = 128 + _interrupt.received[0]
            summaries[spec.id] = summary
        return [summaries[spec.id] for spec in specs]
    with contextlib.ExitStack() as locks:
        todo = []
        for spec in specs:
            final, part, lock_path = paths(out_dir, spec)
            try:
                locks.enter_context(RunLock(lock_path))
            except RunLocked as error:
                summaries[spec.id] = _summary(spec, "locked", part, message=str(error))
                continue
            try:
                finished = _finished_summary(spec, final, part)
            except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                finished = _summary(spec, "failed", final, message=f"{type(error).__name__}: {error}")
            if finished is not None:
                summaries[spec.id] = finished
            else:
                todo.append(spec)
        groups: dict = {}
        for spec in todo:
            final, part, _ = paths(out_dir, spec)
            try:
                experiment = build(spec.config)
                # Members start in memory: most ensembles are of runs that end in seconds.
                writer, checkpoint = _open_writer(spec, experiment, final, part, restart, in_memory=True)
            except OSError as error:
                summary = _summary(spec, "failed", part, message=_os_error_text(error, part))
                summary["os_error"] = True
                summaries[spec.id] = summary
                continue
            except Exception as error:  # noqa: BLE001
                summaries[spec.id] = _summary(spec, "failed", part, message=f"{type(error).__name__}: {error}")
                continue
            step = checkpoint["step"] if checkpoint is not None else 0
            groups.setdefault(step, []).append((spec, experiment, writer, checkpoint))
        with _interrupt.worker_run():
            for step in sorted(groups):
                summaries.update(_run_members(groups[step], out_dir, start))
    return [summaries[spec.id] for spec in specs]


def _run_members(members, out_dir, start) -> dict:
    """Advance members that start at the same step as one ensemble; their summaries by id."""
    from .engine._ensemble import MemberStreams, PopulationEnsemble, run_ensemble
    from .engine._integrators import INTEGRATORS

    specs = [member[0] for member in members]
    experiments = [member[1] for member in members]
    writers = [member[2] for member in members]
    checkpoints = [member[3] for member in members]
    first = experiments[0]
    m = first.W0.shape[0]
    ensemble = PopulationEnsemble([getattr(e.problem, "host", e.problem) for e in experiments], m)
    dynamics = specs[0].config["dynamics"]
    integrator = INTEGRATORS[dynamics["integrator"]].build(ensemble, dynamics)
    if specs[0].config["run"]["backend"] == "cuda":  # one launch for all members (engine._cuda.CudaEnsemble)
        from .engine._cuda import to_device

        ensemble, integrator = to_device(ensemble, integrator)
    W0 = np.stack([e.W0 for e in experiments])
    state = None
    if checkpoints[0] is not None:
        for experiment, checkpoint in zip(experiments, checkpoints):
            if checkpoint["rng_state"] is not None:
                experiment.rng.bit_generator.state = checkpoint["rng_state"]
        streams = MemberStreams([e.rng for e in experiments], m) if integrator.stochastic else None
        names = checkpoints[0]["buffers"].keys()
        state = restore(integrator, np.concatenate([c["W"] for c in checkpoints]), checkpoints[0]["step"],
                        buffers={name: np.concatenate([c["buffers"][name] for c in checkpoints]) for name in names},
                        rng=streams)
        state.value = np.array([c["value"] for c in checkpoints])  # one objective per member
        for b, (experiment, checkpoint) in enumerate(zip(experiments, checkpoints)):
            if _resume_measures(experiment.measures, checkpoint):
                state.scratch.setdefault("record_W", {})[b] = checkpoint["record_W"]
    summaries = {}
    try:
        results = run_ensemble(ensemble, integrator, W0, first.t_max, first.times, [[w] for w in writers],
                               [e.measures for e in experiments], state,
                               specs[0].config["record"]["checkpoint_seconds"], [e.rng for e in experiments],
                               close_complete=False)
        # The per-run stages of the complete members, at once, stored in the copy that
        # finishing their files writes anyway; then the files are finished.
        complete = [i for i, result in enumerate(results) if result[0] == "complete"]
        writes = {i: [] for i in complete}
        failed = {}
        for stage in RUN_STAGES.values():
            chosen = [i for i in complete if stage.enabled(specs[i].config)]
            if not chosen:
                continue
            if stage.ensemble_writers is None:
                continue  # after the files are finished, below
            try:
                found = stage.ensemble_writers([specs[i].config for i in chosen],
                                               [experiments[i].problem for i in chosen],
                                               [results[i][2] for i in chosen])
            except Exception as error:  # noqa: BLE001 - the stage failed for all of them
                found = [error] * len(chosen)
            for i, write in zip(chosen, found):
                if isinstance(write, Exception):
                    failed.setdefault(specs[i].id, f"{stage.name} stage: {type(write).__name__}: {write}")
                else:
                    writes[i].append(write)
        rows = {}  # the catalog rows of the finished files, made before they are written

        def finishing(f, i):
            for write in writes[i]:
                write(f)
            rows[i] = open_file_row(f, paths(out_dir, specs[i])[0])

        with _interrupt.deferred():  # the files finished together, put on the disk by one sync
            for i in complete:
                writers[i].close(results[i][3], "complete", results[i][1], also=lambda f, i=i: finishing(f, i),
                                 publish_now=False)
            publish(writers[i] for i in complete)
    except _interrupt.Interrupted as stop:
        ended = getattr(stop, "results", [None] * len(specs))
        for spec, writer, result in zip(specs, writers, ended):
            writer.abandon()
            if result is not None and result[0] in FINISHED:  # diverged before the signal: finished
                path = paths(out_dir, spec)[0]
                risk, t = final_values(path)
                summaries[spec.id] = _summary(spec, result[0], path, risk, t, result[1])
                continue
            summary = _summary(spec, "interrupted", writer.part_path, message=f"stopped by {stop.name}; resumable",
                               seconds=time.perf_counter() - start)
            summary["exit_status"] = stop.exit_status
            summaries[spec.id] = summary
        return summaries
    except OSError as error:
        for spec, writer in zip(specs, writers):
            writer.abandon()
            summary = _summary(spec, "failed", writer.part_path, message=_os_error_text(error, writer.part_path),
                               seconds=time.perf_counter() - start)
            summary["os_error"] = True
            summaries[spec.id] = summary
        return summaries
    except Exception as error:  # noqa: BLE001 - one failed ensemble must not stop the sweep
        for spec, writer in zip(specs, writers):
            if writer.is_open:
                writer.finish("failed", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
            summaries[spec.id] = _summary(spec, "failed", writer.part_path, message=f"{type(error).__name__}: {error}")
        return summaries
    for i, spec in enumerate(specs):
        status, message = results[i][0], results[i][1]
        final, part, _ = paths(out_dir, spec)
        path = final if status in FINISHED else part
        if status == "complete" and spec.id not in failed:
            for stage in RUN_STAGES.values():  # stages without an ensemble form, member by member
                if stage.ensemble_writers is not None or not stage.enabled(spec.config):
                    continue
                try:
                    stage.after_run(path, spec.config, experiments[i].problem)
                except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                    failed[spec.id] = f"{stage.name} stage: {type(error).__name__}: {error}"
                    break
        row = rows.get(i) if spec.id not in failed else None
        risk, t = (row["final_risk"], row["final_time"]) if row is not None else final_values(path)
        if spec.id in failed:
            summaries[spec.id] = _summary(spec, "failed", path, risk, t, failed[spec.id])
        else:
            summaries[spec.id] = _summary(spec, status, path, risk, t, message, time.perf_counter() - start)
            if row is not None and not any(stage.ensemble_writers is None and stage.enabled(spec.config)
                                           for stage in RUN_STAGES.values()):
                summaries[spec.id]["catalog_row"] = row  # for run_shard's catalog (no stage changed the file)
    return summaries

def _worker_init(threads: int, steps=None):
    import numba

    numba.set_num_threads(threads)
    _interrupt.worker_setup()
    if steps is not None:  # the parent shows step bars: take a slot of its shared array
        _progress.claim_slot(*steps)


def run_shard(config_file, out_dir, overrides=(), task_index: int = 0, task_count: int = 1, jobs: int = 1,
              quiet: bool = True, restart: bool = False, progress=None, specs=None,
              ensemble_size: int = ENSEMBLE_SIZE) -> list[dict]:
    """Run the runs of one shard of an experiment file (:func:`shard_units`).

    Runs that share everything but their seed and whose problem has the batched kernel advance
    together as ensembles (:func:`plan_units`, :func:`execute_ensemble`), each still its own
    run file with bitwise the numbers it would have alone.

    Parameters
    ----------
    config_file : path
    out_dir : path
        Created if needed; one ``<id>.h5`` per run. The catalog row of each run is appended as
        it ends to this call's own file ``catalog.d/<host>-<pid>-<random>.jsonl``
        (:class:`meanfield.io.CatalogFragment`); with ``task_count == 1`` (the whole
        experiment) ``index.h5`` and ``catalog.csv`` are written at the end
        (:func:`write_index`), one shard of several leaves them to ``meanfield status``
        (and :func:`catalog_rows`), so its bookkeeping does not grow with the directory.
    overrides : sequence of str
        ``section.key=value`` (``--set``).
    task_index, task_count : int
        The shard (a Slurm array task) of this call: whole ensembles, every ``task_count``-th
        from ``task_index`` (without ensembles, the runs whose index is ``task_index`` modulo
        ``task_count``).
    jobs : int
        Runs in parallel (a process pool with the spawn start method); numba threads per
        job are ``max(1, cores // jobs)``.
    quiet : bool
        No progress lines.
    restart : bool
        Start unfinished runs over instead of resuming them.
    progress : callable, optional
        Called with each run's summary as it finishes.
    specs : list of RunSpec, optional
        ``plan(config_file, overrides)`` when the caller has it already.
    ensemble_size : int
        Members of an ensemble at most (with ``jobs`` > 1, also at most the shard's runs over
        ``jobs``, so that every worker gets some); 1 runs every run alone.

    Returns
    -------
    list of dict
        One summary per run of the shard (see :func:`execute`), in run order.
    """
    if not (0 <= task_index < task_count):
        raise ConfigError(f"--task-index must be in [0, --task-count = {task_count}), got {task_index}")
    specs = specs if specs is not None else plan(config_file, overrides)
    units = shard_units(specs, task_index, task_count, ensemble_size)
    specs = sorted((spec for unit in units for spec in unit), key=lambda spec: spec.index)
    os.makedirs(out_dir, exist_ok=True)
    summaries = []
    tqdm = None if quiet or progress is not None else _tqdm()
    bar = tqdm(total=len(specs), desc="runs", unit="run") if tqdm is not None else None

    catalog = CatalogFragment(out_dir)  # this call's own file of catalog rows (made at its first row)

    def done(summary):
        row = summary.pop("catalog_row", None)
        summaries.append(summary)
        if progress is not None:
            progress(summary)
        elif bar is not None:
            bar.write(format_summary_line(summary))
            bar.update(1)
        elif not quiet:
            print(format_summary_line(summary), flush=True)
        # A cache: an error writing it loses nothing, the run file is the truth.
        catalog.add(summary["path"], row)

    if task_count == 1:  # a shard of several leaves it to write_index (status): it lists the whole directory
        remove_abandoned(out_dir)
    stop = None
    if jobs <= 1 or len(specs) <= 1:
        try:
            for unit in units:
                _interrupt.poll()
                unit_summaries = (execute_unit(unit, out_dir, restart) if len(unit) > 1
                                  else [execute(unit[0], out_dir, restart, step_bar=bar is not None)])
                for summary in unit_summaries:
                    done(summary)
                interrupted = [s for s in unit_summaries if s["status"] == "interrupted"]
                if interrupted:
                    stop = _interrupt.Interrupted(interrupted[0]["exit_status"] - 128)
                    break
        except _interrupt.Interrupted as error:
            stop = error
    else:
        # Step bars follow one run per worker: with them, every run goes alone; without, the
        # ensembles are cut so that every worker gets some.
        size = 1 if bar is not None else max(1, -(-len(specs) // jobs))
        pieces = [unit[start:start + size] for unit in units for start in range(0, len(unit), size)]
        stop = _run_pool(pieces, out_dir, restart, jobs, done, step_bars=tqdm if bar is not None else None)
    if bar is not None:
        bar.close()
    summaries.sort(key=lambda s: s["index"])
    catalog.close()
    with _interrupt.deferred():  # the index is written whole even after a signal
        try:
            # One shard of several leaves its rows in its fragment only: rebuilding the index
            # here reads every run of the directory, O(runs) per shard and O(runs^2) for an
            # array; `meanfield status` or open_sweep merges the fragments when asked.
            if task_count == 1:
                write_index(out_dir)
        except OSError:
            # The index is derived from the run files and rebuilt by the next run or status;
            # when a run already failed for the same cause (a full disk), that run's line says it.
            if not any(s["status"] == "failed" and s.get("os_error") for s in summaries):
                raise
    if stop is not None:
        stop.summaries = summaries
        raise stop
    return summaries


def _run_pool(units, out_dir, restart, jobs, done, step_bars=None):
    """Runs in a pool of ``jobs`` spawned processes; returns the Interrupted that stopped it, or None.

    On SIGINT or SIGTERM nothing new starts; the signal is passed on to the workers, whose runs
    stop at their next step boundary (checkpointed, ``interrupted``), and their summaries are
    collected. Workers watch this process and stop their runs themselves if it is killed.
    With ``step_bars`` (the tqdm class), one bar per running run shows its steps
    (:class:`_PoolSteps`).
    """
    cores = os.cpu_count() or 1
    threads = max(1, cores // jobs)
    context = multiprocessing.get_context("spawn")
    specs = [spec for unit in units for spec in unit]
    steps = _PoolSteps(step_bars, context, jobs, specs) if step_bars is not None else None
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                                                  initargs=(threads, steps.initargs if steps else None))
    futures = {}
    waiting = list(units)
    stop = None
    try:
        # At most one run per worker is handed to the pool: a run queued ahead would start
        # in a worker right after a signal, before the pool could be told to stop.
        # Signals are taken between waits (never inside the pool's own bookkeeping).
        with _interrupt.deferred():
            while waiting or futures:
                _interrupt.poll()
                while waiting and len(futures) < jobs:
                    unit = waiting.pop(0)
                    futures[pool.submit(execute_unit, unit, out_dir, restart)] = unit
                finished, _ = concurrent.futures.wait(list(futures), timeout=0.1,
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                if steps is not None:
                    for future in finished:
                        for spec in futures[future]:
                            steps.end(spec.index)
                    steps.update(force=bool(finished))
                for future in finished:
                    del futures[future]
                    unit_summaries = future.result()
                    for summary in unit_summaries:
                        done(summary)
                    interrupted = [s for s in unit_summaries if s["status"] == "interrupted"]
                    if interrupted:
                        raise _interrupt.Interrupted(interrupted[0]["exit_status"] - 128)
    except _interrupt.Interrupted as error:
        stop = error
        with _interrupt.deferred():
            _stop_pool(pool, futures, error.signum, done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if steps is not None:
            steps.close()
    return stop


def _stop_pool(pool, futures, signum, done, grace_s: float = 60.0) -> None:
    """Cancel the runs not started, pass the signal to the workers and collect the summaries
    of the runs they stop."""
    for future in futures:
        future.cancel()
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(process.pid, signum)
    running = [f for f in futures if not f.cancelled() and not f.done()]
    finished, _ = concurrent.futures.wait(running, timeout=grace_s)
    for future in finished:
        with contextlib.suppress(Exception):
            for summary in future.result():
                done(summary)


def format_summary_line(summary: dict) -> str:
    swept = " ".join(f"{k.split('.')[-1]}={v}" for k, v in summary["swept"].items())
    risk = summary["final_risk"]
    risk_text = f"risk {risk:.4e} at t = {summary['final_time']:g}" if math.isfinite(risk) else ""
    line = f"{summary['id']}  {summary['status']:<9} {swept}  {risk_text}".rstrip()
    if summary["status"] in ("failed", "locked"):
        line += f"\n    {summary['message'].splitlines()[0] if summary['message'] else ''}"
    return line


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the command line: meanfield run FILE.toml")
