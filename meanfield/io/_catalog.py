"""The catalog of an output directory: one row per run file, ``catalog.csv`` and ``index.h5``.

The catalog is what ``meanfield status`` and ``report`` read and what the analysis loaders
list; it is rebuilt from the run files themselves (they are the truth; the catalog and the
index are views, written under temporary names and renamed).
"""
from __future__ import annotations

import csv
import json
import math
import os

import h5py

from ._store import (
    INDEX_NAME,
    CorruptRunFile,
    _fault,
    attrs_of,
    lock_held,
    open_run,
    remove_abandoned,
    replacing,
    run_file_names,
    run_paths,
    run_status,
)


def final_values(path) -> tuple[float, float]:
    """(risk, time) of the last record of the run file at ``path`` (``last_risk``)."""
    with open_run(path) as f:
        return last_risk(f)


def last_risk(f: h5py.File) -> tuple[float, float]:
    """(risk, time) of the last record of an open run file; NaNs before the first."""
    risk = f["observables/risk"]
    if risk["value"].shape[0] == 0:
        return math.nan, math.nan
    return float(risk["value"][-1]), float(risk["time"][-1])


def catalog_rows(out_dir) -> list[dict]:
    """One row per run in ``out_dir`` (finished, being written or interrupted): id, status,
    file, final_risk, final_time and every config value as ``section.key``; the file of an
    ``[experiment]`` kind (:mod:`meanfield.experiments`) has its kind under ``experiment`` and
    NaN for the risk and time (it records no risk series).

    A ``.part`` that no process writes is ``interrupted`` (:func:`run_status`);
    a file that cannot be read is a row with status ``corrupt`` and the reason under
    ``message`` (the next ``meanfield run`` moves it aside and does the run again). A file
    being created by a live writer is left out; so is the ``.part`` of a run whose finished
    file exists already.

    Parameters
    ----------
    out_dir : str or path-like
        An output directory of ``meanfield run``.

    Returns
    -------
    list of dict
        In the order of the file names. Keys ``id``, ``status`` (``running``, ``complete``,
        ``diverged`` or ``interrupted``: :func:`run_status`; ``corrupt`` for a file that
        cannot be read), ``file`` (the file name), ``final_risk`` and ``final_time`` (float:
        the risk and the continuous time t of the last record), ``experiment`` where set,
        ``message`` for a corrupt file, and ``section.key`` for every config value.
    """
    out_dir = os.fspath(out_dir)
    rows = []
    names = run_file_names(out_dir)
    finished = {name for name in names if name.endswith(".h5")}
    for name in names:
        if name.endswith(".part") and name[: -len(".part")] in finished:
            continue
        path = os.path.join(out_dir, name)
        run_id = name.split(".h5")[0]
        try:
            with open_run(path) as f:
                attrs = attrs_of(f)
                config = json.loads(attrs["config"])
                # A file of an [experiment] kind (meanfield.experiments) records no risk series.
                risk, t = (math.nan, math.nan) if attrs.get("experiment") else last_risk(f)
        except (OSError, KeyError, ValueError) as error:
            _, _, lock = run_paths(out_dir, run_id)
            if name.endswith(".part") and lock_held(lock):
                continue  # being created right now
            reason = error.reason if isinstance(error, CorruptRunFile) else f"not a run file ({error})"
            rows.append({"id": run_id, "status": "corrupt", "file": name, "final_risk": math.nan,
                         "final_time": math.nan, "message": reason})
            continue
        row = {"id": attrs["run_id"], "status": run_status(path, attrs), "file": name, "final_risk": risk,
               "final_time": t}
        if attrs.get("experiment"):
            row["experiment"] = attrs["experiment"]
        for section, values in config.items():
            for key, value in values.items():
                row[f"{section}.{key}"] = value
        rows.append(row)
    return rows


def write_index(out_dir, rows=None) -> None:
    """Rebuild ``index.h5`` (external links to every run file) and ``catalog.csv`` (one row per
    run: id, status, file, config values, final risk) from the run files in ``out_dir``.

    Written under temporary names and renamed, so a reader never sees a half-written index;
    concurrent shards each write a complete view of what was there. ``rows`` are
    :func:`catalog_rows` when the caller has them already.

    Parameters
    ----------
    out_dir : str or path-like
        An output directory of ``meanfield run``; ``index.h5`` and ``catalog.csv`` are
        (re)written there, and abandoned temporary files removed first.
    rows : list of dict, optional
        :func:`catalog_rows` of ``out_dir``; default: read from the run files.
    """
    out_dir = os.fspath(out_dir)
    remove_abandoned(out_dir)
    rows = catalog_rows(out_dir) if rows is None else rows
    try:
        _write_index_files(out_dir, rows)
    except OSError as error:
        if error.filename is None and error.errno is not None:  # h5py's and write()'s errors name no file
            raise OSError(error.errno, f"{os.strerror(error.errno)} (writing the index of {out_dir})",
                          os.path.join(out_dir, INDEX_NAME)) from None
        raise


def _write_index_files(out_dir, rows) -> None:
    with replacing(os.path.join(out_dir, INDEX_NAME)) as index_tmp:
        with h5py.File(index_tmp, "w") as f:
            for row in rows:
                f[row["id"]] = h5py.ExternalLink(row["file"], "/")
        _fault("index-written")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with replacing(os.path.join(out_dir, "catalog.csv")) as catalog_tmp:
        with open(catalog_tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
