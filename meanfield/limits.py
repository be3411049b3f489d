"""Distances to the mean-field limit, stored next to the trajectories.

A file with ``[limit] reference_m = M`` plans its runs ("members") and, per group of members
that differ only in the width, one reference run of width M that carries the members'
initial points as tracers (see ``meanfield.experiments._config``). Once a member and its reference are
finished, :func:`compute` measures, at every common recorded time (or at the recorded times
nearest to ``[limit] times``),

``risk_gap``
    |R(mu_m(t)) - R(mu_M(t))|
``tracer_deviation``
    (1/m) sum_i |w_i(t) - wbar_i(t)|^2, w_i the member's particles and wbar_i the tracers
    started at the same points inside the reference
``norm_w2``, ``readout_w2``, ``signed_norm_w2``
    exact 1-D W2 between the laws of |a_i|, c_i, c_i |a_i| in both clouds
``overlap_w2``
    1-D W2 of the overlaps a_i . a*_j, one per teacher neuron j
``sliced_w2``
    sliced W2 between the clouds in R^(d+2) (``sliced_projections`` directions, seed 0)
``w2``
    exact W2 between the clouds (POT; sliced above its size limit)
``sphere_w2``
    W2 (geodesic cost) between the measures sum |c_i||a_i| delta_{a_i/|a_i|}

and writes them into the member's file as ``/observables/limit/<metric>/{step, time, value}``.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os

import numpy as np

from .experiments._config import canonical_json, reference_config
from .io._store import finished_run_files, open_run, updating


def _load(path):
    with open_run(path) as f:
        config = json.loads(f.attrs["config"])
        position = f["particles/neurons/position"]
        data = {
            "config": config,
            "id": f.attrs["run_id"],
            "status": f.attrs["status"],
            "steps": position["step"][()],
            "times": position["time"][()],
            "particles": position["value"][()].astype(np.float64),
            "risk_steps": f["observables/risk/step"][()],
            "risk": f["observables/risk/value"][()],
            "teacher": f["parameters/teacher/position"][()] if "parameters/teacher/position" in f else None,
        }
        if "particles/tracers/position" in f:
            tracers = f["particles/tracers/position"]
            data["tracers"] = tracers["value"][()].astype(np.float64)
            data["tracer_blocks"] = json.loads(tracers.attrs["blocks"])
        has_limit = "observables/limit" in f and f["observables/limit"].attrs.get("reference_id") is not None
        data["limit_reference"] = f["observables/limit"].attrs["reference_id"] if has_limit else None
    return data


def _reference_key(config: dict) -> str:
    reference = json.loads(json.dumps(config))
    reference["limit"]["tracer_widths"] = []
    return canonical_json(reference)


def pairs(out_dir) -> list[tuple[str, str | None]]:
    """(member file, its reference file or None) for every finished member in ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.

    Returns
    -------
    list of (str, str or None)
        In file-name order, for every run file with ``[limit]`` role ``"member"`` and status
        ``"complete"``: its path and the path of its reference run (the same config at width
        ``reference_m``), None when that run is not complete.
    """
    out_dir = os.fspath(out_dir)
    references, members = {}, []
    for path in finished_run_files(out_dir):
        with open_run(path) as f:
            config = json.loads(f.attrs["config"])
            status = f.attrs["status"]
        role = config.get("limit", {}).get("role")
        if role == "reference" and status == "complete":
            references[_reference_key(config)] = path
        elif role == "member" and status == "complete":
            members.append((path, config))
    return [(path, references.get(canonical_json(reference_config(config)))) for path, config in members]


def compute(member_path, reference_path) -> dict:
    """Every metric of the member's ``[limit]`` table at the records common to both runs.

    Records are matched by step number; with ``[limit] times`` only the common records
    nearest to those times are kept. Reads the files only; :func:`write` stores the result.

    Parameters
    ----------
    member_path : path-like
        The finished member's run file (recorded particles and risk).
    reference_path : path-like
        The finished reference's run file (its tracers are needed for
        ``tracer_deviation``, which is NaN without them).

    Returns
    -------
    dict
        metric -> (steps (T,), times (T,), values (T,) or (T, k) for ``overlap_w2``), plus
        the key ``"_reference"`` -> (reference id, reference width).
        Steps are the step numbers of the records, times the member's continuous times t
        (float64), values float64 (k: teacher neurons); the metrics are those listed in
        ``[limit] metrics``, the reference id a str and the width an int.
    """
    from . import distance

    member, reference = _load(member_path), _load(reference_path)
    config = member["config"]
    limit = config["limit"]
    d = config["model"]["d"]
    m = config["model"]["m"]
    steps, mine, theirs = np.intersect1d(member["steps"], reference["steps"], return_indices=True)
    if limit.get("times"):
        recorded = member["times"][mine]
        keep = np.unique([int(np.argmin(np.abs(recorded - t))) for t in limit["times"]])
        steps, mine, theirs = steps[keep], mine[keep], theirs[keep]
    times = member["times"][mine]
    risk_m = dict(zip(member["risk_steps"], member["risk"]))
    risk_M = dict(zip(reference["risk_steps"], reference["risk"]))
    block = None
    if "tracers" in reference:
        for label, start, stop in reference["tracer_blocks"]:
            if label == f"m={m}":
                block = (start, stop)
    teacher = member["teacher"]
    results = {}
    for metric in limit["metrics"]:
        values = []
        for i, j, step in zip(mine, theirs, steps):
            Wm, WM = member["particles"][i], reference["particles"][j]
            if metric == "risk_gap":
                values.append(distance.risk_gap(risk_m[step], risk_M[step]))
            elif metric == "tracer_deviation":
                if block is None:
                    values.append(np.nan)
                else:
                    tracers = reference["tracers"][j][block[0]:block[1]]
                    values.append(float(np.sum((Wm - tracers) ** 2) / m))
            elif metric in ("norm_w2", "readout_w2", "signed_norm_w2", "overlap_w2"):
                observable = metric[: -len("_w2")]  # norm, readout, signed_norm, overlap
                values.append(distance.observable_w2(Wm, WM, d, observable, teacher=teacher))
            elif metric == "sliced_w2":
                values.append(distance.sliced_wasserstein(Wm, WM, n_projections=limit["sliced_projections"], seed=0))
            elif metric == "w2":
                values.append(distance.wasserstein(Wm, WM, method="auto"))
            elif metric == "sphere_w2":
                values.append(distance.sphere_distance(Wm, WM, d).distance)
        results[metric] = (steps, times, np.asarray(values, dtype=np.float64))
    results["_reference"] = (reference["id"], reference["config"]["model"]["m"])
    return results


def write(member_path, results: dict) -> None:
    """Store the metrics in the member file under ``/observables/limit`` (replacing old ones).

    The group ``/observables/limit`` gets the attributes ``reference_id`` and ``reference_m``
    and one subgroup per metric with datasets ``step``, ``time`` (the continuous time t, a
    dimension scale of ``value``) and ``value``. The file is updated crash-safely
    (``meanfield.io._store.updating``).

    Parameters
    ----------
    member_path : path-like
        The finished member's run file, changed in place.
    results : dict
        A result of :func:`compute`.
    """
    reference_id, reference_m = results["_reference"]
    with updating(member_path) as f:
        if "observables/limit" in f:
            del f["observables/limit"]
        group = f.create_group("observables/limit")
        group.attrs["reference_id"] = reference_id
        group.attrs["reference_m"] = reference_m
        for metric, result in results.items():
            if metric.startswith("_"):
                continue
            steps, times, values = result
            g = group.create_group(metric)
            g.create_dataset("step", data=steps)
            time_ds = g.create_dataset("time", data=times)
            value = g.create_dataset("value", data=values)
            time_ds.make_scale("time")
            value.dims[0].attach_scale(time_ds)


def _measure(member_path, reference_path):
    write(member_path, compute(member_path, reference_path))
    return member_path


def compute_missing(out_dir, jobs: int = 1) -> dict:
    """Measure every finished member whose reference is finished and that has no (or stale)
    ``/observables/limit``; members in parallel with ``jobs`` spawned processes.

    Stale means measured against another reference run (``reference_id``). Each member is
    measured by :func:`compute` and written into its file by :func:`write`.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory (its pairs as listed by :func:`pairs`).
    jobs : int
        Number of worker processes (``spawn`` context); 1 or less measures in this process.

    Returns
    -------
    dict
        counts: ``measured``, ``up_to_date``, ``waiting`` (reference not finished).
    """
    todo, counts = [], {"measured": 0, "up_to_date": 0, "waiting": 0}
    for member_path, reference_path in pairs(out_dir):
        if reference_path is None:
            counts["waiting"] += 1
            continue
        with open_run(member_path) as f:
            current = f["observables/limit"].attrs.get("reference_id") if "observables/limit" in f else None
        with open_run(reference_path) as f:
            reference_id = f.attrs["run_id"]
        if current == reference_id:
            counts["up_to_date"] += 1
        else:
            todo.append((member_path, reference_path))
    if jobs <= 1 or len(todo) <= 1:
        for member_path, reference_path in todo:
            _measure(member_path, reference_path)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            list(pool.map(_measure, *zip(*todo)))
    counts["measured"] = len(todo)
    return counts


def collect(out_dir, metric: str) -> dict:
    """Values of one metric across the members of a directory.

    Reads the files only; members without the metric stored are left out.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.
    metric : str
        One of ``LIMIT_METRICS`` (``meanfield.experiments._config``), e.g. ``"risk_gap"``.

    Returns
    -------
    dict
        ``times`` (T,), ``widths`` (n_w,), ``seeds`` (n_s,), ``values`` (T, n_w, n_s) with
        NaN where a (width, seed) is missing; for ``overlap_w2`` the mean over teacher neurons.
        ``times`` are continuous times t (float64) of the first member read, T the fewest
        records of any member (series are cut to it); widths and seeds are sorted int arrays,
        values float64. All empty (``values`` of shape (0, 0, 0)) when no member has the
        metric.
    """
    records = []
    for member_path, _ in pairs(out_dir):
        with open_run(member_path) as f:
            if f"observables/limit/{metric}" not in f:
                continue
            config = json.loads(f.attrs["config"])
            g = f[f"observables/limit/{metric}"]
            values = g["value"][()]
            if values.ndim == 2:
                values = values.mean(axis=1)
            records.append((config["model"]["m"], config["run"]["seed"], g["time"][()], values))
    if not records:
        return {"times": np.empty(0), "widths": np.empty(0, int), "seeds": np.empty(0, int),
                "values": np.empty((0, 0, 0))}
    widths = sorted({r[0] for r in records})
    seeds = sorted({r[1] for r in records})
    length = min(len(r[2]) for r in records)
    times = records[0][2][:length]
    values = np.full((length, len(widths), len(seeds)), np.nan)
    for m, seed, _, v in records:
        values[:, widths.index(m), seeds.index(seed)] = v[:length]
    return {"times": times, "widths": np.asarray(widths), "seeds": np.asarray(seeds), "values": values}
