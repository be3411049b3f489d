"""The run file of a solution of the order-parameter ODEs (``meanfield.online``): a run of its own,
in the store's format, without particles.

Layout (``T`` times, ``K`` students, ``M`` teacher neurons)::

    /                               attrs: kind = "ode", run_id, status = "complete", message,
                                    method (how the Gaussian averages were computed), config
                                    (JSON: sections "ode" and, for an ODE started from an
                                    engine run, "source"), config_sha256, source_run_id ("" when
                                    none), creator, versions (JSON), git_revision, host,
                                    start_time, end_time
    /h5md                           attrs: version = [1, 1]; groups creator, author
    /observables/<name>/            step (T,) int64, time (T,) float64, value (T,) float64, for
                                    risk, eps_g, alpha and the Q_k_l, R_k_n, v_k of
                                    ``[record] order_parameters``
    /parameters/ode                 attrs: the ODE's settings (the "ode" section of config)
    /parameters/ode/T               (M, M) teacher overlaps
    /parameters/ode/teacher_v       (M,) teacher second layer

``time`` is a dimension scale of each series, as in a particle run (:mod:`meanfield.io._store`),
and carries the engine's continuous time t of the engine run the ODE was started from, so the
series of both files line up on the same axis. The file is written whole under a temporary name,
pushed to the disk and renamed: a crash leaves no file under the final name, only a temporary one
that :func:`meanfield.io.remove_abandoned` removes. docs/hdf5.md documents the layout.
"""
from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket

import h5py
import numpy as np

from ._store import _fault, _fsync, _fsync_directory, _git_revision, _now, _versions, open_run, temporary_name

ODE_KIND = "ode"  # the root attribute ``kind`` of an ODE run file (particle runs have none)


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def write_ode_file(path, run_id: str, config: dict, method: str, settings: dict, arrays: dict, steps, times,
                   series: dict, labels: dict | None = None) -> str:
    """Write an ODE run file in one piece (module docstring), atomically.

    Parameters
    ----------
    path : str or path-like
        The finished file's path; its directory is created if needed.
    run_id : str
        The ``run_id`` attribute.
    config : dict
        JSON-serialisable, ``{section: {key: scalar}}``: the catalog's ``section.key`` columns.
    method : str
        How the averages were computed (``GaussianAverages.describe()``).
    settings : dict
        Attributes of ``/parameters/ode`` (scalars and strings).
    arrays : dict
        name -> array, datasets of ``/parameters/ode`` (``T``, ``teacher_v``).
    steps : array_like, shape (T,), int
        The engine step of each time (-1 where there is none).
    times : array_like, shape (T,), float
        The time axis (the engine's continuous time t).
    series : dict
        name -> array_like of shape (T,), float64: ``/observables/<name>/value``.
    labels : dict, optional
        name -> ``long_name`` attribute of a series.

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    steps = np.asarray(steps, dtype=np.int64)
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or steps.shape != times.shape:
        raise ValueError(f"steps {steps.shape} and times {times.shape} must be one-dimensional and of one length")
    values = {name: np.asarray(value, dtype=np.float64) for name, value in series.items()}
    for name, value in values.items():
        if value.shape != times.shape:
            raise ValueError(f"series {name!r} has shape {value.shape}, the times {times.shape}")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    config_json = _canonical(config)
    versions = _versions()
    tmp = temporary_name(path)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update({
                "kind": ODE_KIND, "run_id": run_id, "status": "complete", "message": "", "method": method,
                "config": config_json, "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
                "source_run_id": str(config.get("source", {}).get("run_id", "")), "creator": "meanfield",
                "versions": json.dumps(versions), "git_revision": _git_revision(), "host": socket.gethostname(),
                "start_time": _now(), "end_time": _now()})
            h5md = f.create_group("h5md")
            h5md.attrs["version"] = np.array([1, 1], dtype=np.int32)
            h5md.create_group("creator").attrs.update({"name": "meanfield", "version": versions["meanfield"]})
            h5md.create_group("author").attrs["name"] = getpass.getuser()
            for name, value in values.items():
                group = f.create_group(f"observables/{name}")
                time_ds = group.create_dataset("time", data=times)
                time_ds.make_scale("time")
                for part, data in (("step", steps), ("value", value)):
                    group.create_dataset(part, data=data).dims[0].attach_scale(time_ds)
                if labels and name in labels:
                    group.attrs["long_name"] = labels[name]
            parameters = f.create_group("parameters/ode")
            parameters.attrs.update(settings)
            for name, array in arrays.items():
                parameters.create_dataset(name, data=np.asarray(array, dtype=np.float64))
        _fault("ode-written")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)
    return path


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def read_ode_file(path) -> dict:
    """Everything an ODE run file holds.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        ``attrs`` (root attributes, ``config`` parsed into a dict), ``settings`` (the attributes
        of ``/parameters/ode``), ``arrays`` (its datasets), ``steps`` (T,) int64, ``times`` (T,)
        float64 and ``series`` (name -> (T,) float64).

    Raises
    ------
    ValueError
        The file is not an ODE run file (its ``kind`` is not ``"ode"``).
    """
    with open_run(path) as f:
        attrs = {key: _text(value) for key, value in f.attrs.items()}
        if attrs.get("kind") != ODE_KIND:
            raise ValueError(f"{os.fspath(path)}: not an ODE run file (kind {attrs.get('kind', 'absent')!r})")
        attrs["config"] = json.loads(attrs["config"])
        group = f["parameters/ode"]
        settings = {key: _text(value) for key, value in group.attrs.items()}
        arrays = {name: group[name][()] for name in group}
        names = list(f["observables"])
        first = f[f"observables/{names[0]}"]
        return {"attrs": attrs, "settings": settings, "arrays": arrays, "steps": first["step"][()],
                "times": first["time"][()], "series": {name: f[f"observables/{name}/value"][()] for name in names}}


def is_ode_file(f: h5py.File) -> bool:
    """Whether an open run file is an ODE run file (root attribute ``kind = "ode"``)."""
    return _text(f.attrs.get("kind", "")) == ODE_KIND
