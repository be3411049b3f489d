"""Submit an experiment file to Slurm as a job array, through ``submitit``.

``meanfield run FILE --slurm`` calls :func:`submit`. Task ``i`` of ``K`` runs
``meanfield.sweep.run_shard(FILE, OUT, task_index=i, task_count=K)``: the runs whose index in
the file's sorted run list is ``i`` modulo ``K``, one ``OUT/<run_id>.h5`` each, completed runs
skipped (so submitting again finishes what is missing). ``submitit`` is an optional
dependency: ``pip install 'meanfield[cluster]'``.

The template ``runs/slurm/sweep.sbatch`` does the same with plain ``sbatch``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

__all__ = ["submit"]

_FAILED_RUN_STATUSES = ("failed", "locked", "error")  # as `meanfield run` counts them


def _numba_cache_setup(out_dir):
    """Shell lines giving each node type its own numba cache (compiled kernels depend on the
    CPU), named as in runs/slurm/sweep.sbatch; MEANFIELD_NUMBA_CACHE=DIR moves the root."""
    return [
        f"meanfield_cache_root={shlex.quote(os.path.join(out_dir, '.numba-cache'))}",
        'meanfield_cpu_id=$( { uname -m; grep -m1 -E "^(model name|Model|cpu model|CPU part)" /proc/cpuinfo; '
        'grep -m1 -E "^(flags|Features)" /proc/cpuinfo; } 2>/dev/null | sha256sum | cut -c1-12)',
        'export NUMBA_CACHE_DIR="${MEANFIELD_NUMBA_CACHE:-$meanfield_cache_root}/$(uname -m)-$meanfield_cpu_id"',
    ]


def _run_task(config_file, out_dir, overrides, task_index, task_count, restart=False):
    """One array task (runs on the compute node)."""
    from .. import sweep

    return sweep.run_shard(config_file, out_dir, overrides=overrides, task_index=task_index,
                           task_count=task_count, jobs=1, quiet=True, restart=restart)


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise RuntimeError("submitting to Slurm needs the submitit package: "
                           "pip install 'meanfield[cluster]' (or pip install submitit)") from None
    return submitit


def submit(config_file, out_dir, overrides=(), task_count=None, partition=None, cpus_per_task=1,
           time_min=60, array_parallelism=None, wait=False, log_dir=None, restart=False) -> int:
    """Submit the runs of an experiment file as one Slurm job array.

    Parameters
    ----------
    config_file : str or path-like
        The TOML experiment file (validated here, before anything is submitted).
    out_dir : str or path-like
        Where each run writes ``<run_id>.h5`` (created if missing).
    overrides : sequence of str
        ``section.key=value`` overrides, as ``meanfield run --set``.
    task_count : int, optional
        Number of array tasks; default (and at most) the number of units of
        ``meanfield.sweep.plan_units``: one ensemble (runs that differ only in their seed, up
        to 128) or one run per task.
    partition : str, optional
        Slurm partition (the cluster's default if not given).
    cpus_per_task : int
        CPUs per task; also the tasks' ``NUMBA_NUM_THREADS``.
    time_min : int
        Time limit of each task in minutes.
    array_parallelism : int, optional
        At most this many tasks run at once (``--array=0-N%P``).
    wait : bool
        Wait for every task and report, then write ``index.h5`` and ``catalog.csv`` of
        ``out_dir`` (merging the tasks' catalog fragments); otherwise return once submitted.
    log_dir : str or path-like, optional
        submitit's folder (sbatch script, pickles, task logs); default ``out_dir/slurm-logs``.
    restart : bool
        Start unfinished runs over instead of resuming them (``--restart``).

    Returns
    -------
    int
        0 once submitted (``wait=False``), or after waiting if every task returned without
        an exception and no run reported a failure; 1 otherwise.

    Raises
    ------
    RuntimeError
        submitit is not installed, or there is no Slurm here (no ``srun``).
    meanfield.experiments._config.ConfigError
        The experiment file is invalid (nothing is submitted).
    """
    submitit = _import_submitit()
    from .. import sweep

    config_file = os.path.abspath(os.fspath(config_file))
    out_dir = os.path.abspath(os.fspath(out_dir))
    overrides = tuple(overrides)
    specs = sweep.plan(config_file, overrides)
    n_runs = len(specs)
    if n_runs < 1:
        raise RuntimeError(f"{config_file}: no runs to submit")
    n_units = len(sweep.plan_units(specs))  # a task takes whole ensembles (sweep.shard_units)
    if task_count is None:
        task_count = n_units
    if isinstance(task_count, bool) or not isinstance(task_count, int) or task_count < 1:
        raise ValueError(f"task_count must be an integer >= 1, got {task_count!r}")
    task_count = min(task_count, n_units)  # more tasks than units would only start idle tasks
    if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int) or cpus_per_task < 1:
        raise ValueError(f"cpus_per_task must be an integer >= 1, got {cpus_per_task!r}")

    os.makedirs(out_dir, exist_ok=True)
    folder = os.path.abspath(os.fspath(log_dir)) if log_dir is not None else os.path.join(out_dir, "slurm-logs")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as error:
        raise RuntimeError(f"cannot submit to Slurm from here: {error}") from None
    setup = [f"export NUMBA_NUM_THREADS={int(cpus_per_task)}", *_numba_cache_setup(out_dir)]
    executor.update_parameters(
        name="meanfield",
        timeout_min=int(time_min),
        cpus_per_task=int(cpus_per_task),
        slurm_partition=partition,
        slurm_array_parallelism=array_parallelism,
        slurm_setup=setup,
    )
    indices = list(range(task_count))
    jobs = executor.map_array(_run_task, [config_file] * task_count, [out_dir] * task_count,
                              [overrides] * task_count, indices, [task_count] * task_count,
                              [restart] * task_count)
    job_id = jobs[0].job_id.split("_")[0]
    print(f"submitted Slurm job {job_id}: {task_count} task{'s' * (task_count != 1)} for {n_runs} "
          f"run{'s' * (n_runs != 1)} of {config_file} -> {out_dir} (logs in {folder})", flush=True)
    if not wait:
        return 0
    status = _wait(jobs, job_id, n_runs)
    try:  # the tasks leave their catalog rows in out_dir/catalog.d: merged once, here
        sweep.write_index(out_dir)
    except OSError as error:
        print(f"meanfield run: index not written ({error.strerror or error}); 'meanfield status {out_dir}' "
              "writes it", file=sys.stderr)
    return status


def _array_in_queue(job_id) -> bool | None:
    """Whether squeue still lists a task of the array (None: squeue did not answer)."""
    try:
        result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%i"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # A finished job is eventually purged from the controller: "Invalid job id specified".
        return False if "invalid job id" in result.stderr.lower() else None
    return bool(result.stdout.strip())


def _last_line_of_trace(error) -> str:
    """The exception line of a task's traceback (submitit wraps it between dashed lines)."""
    text = str(error)
    parts = text.split("-" * 22)
    body = parts[1] if len(parts) >= 3 else text
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _status_of(summary):
    if isinstance(summary, dict):
        return summary.get("status")
    return getattr(summary, "status", None)


def _wait(jobs, job_id, n_runs, poll_s=2.0, grace_s=15.0) -> int:
    """Wait for every task: a task is over once its result file exists, or once the array has
    left the queue and the file did not appear within ``grace_s`` (killed, timed out, ...).
    Needs neither sacct nor Slurm accounting."""
    pending = set(range(len(jobs)))
    gone_since = None
    while pending:
        pending = {i for i in pending if not jobs[i].paths.result_pickle.exists()}
        if not pending:
            break
        if _array_in_queue(job_id) is False:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > grace_s:
                break
        else:
            gone_since = None
        time.sleep(poll_s)

    failures = []  # (task index, one-line reason, log path)
    statuses = {}
    for index, job in enumerate(jobs):
        if index in pending:
            failures.append((index, "no result (killed, timed out or never started)", job.paths.stderr))
            continue
        try:
            summaries = job.result()
        except Exception as error:  # noqa: BLE001 - the task's exception, reported not raised
            failures.append((index, f"raised {_last_line_of_trace(error)}", job.paths.stderr))
            continue
        bad = 0
        for summary in summaries or ():
            status = _status_of(summary)
            statuses[status] = statuses.get(status, 0) + 1
            bad += status in _FAILED_RUN_STATUSES
        if bad:
            failures.append((index, f"{bad} failed run{'s' * (bad != 1)}", job.paths.stdout))

    ok = len(jobs) - len(failures)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items(), key=lambda kv: str(kv[0]))
                       if status is not None)
    print(f"Slurm job {job_id}: {ok} of {len(jobs)} tasks succeeded; {n_runs} run{'s' * (n_runs != 1)}"
          + (f": {counts}" if counts else ""), flush=True)
    for index, reason, log in failures:
        print(f"  task {index}: {reason} (log: {log})", file=sys.stderr)
    return 0 if not failures else 1
