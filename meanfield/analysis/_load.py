"""Run files and sweep directories as xarray and pandas objects, read lazily.

:func:`open_run` maps one run file (``<id>.h5`` or a ``<id>.h5.part`` being written) to an
:class:`xarray.Dataset`; :func:`open_sweep` maps a sweep directory to a :class:`Sweep`
(its catalog as a :class:`pandas.DataFrame`, and the runs opened on demand). The particle
arrays are never read when a file is opened: ``position`` is an xarray lazily indexed
array over the h5py dataset (xarray's backend-array protocol), so ``ds.position.isel(time=-1)``
reads one frame (one HDF5 chunk) and nothing else. The scalar series (risk, gradient norm,
distances to the limit) are small and read at once.
"""
from __future__ import annotations

import contextlib
import json
import os

import h5py
import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from ..io._ode_file import ODE_KIND
from ..io._store import column_names, read_checkpoint, run_file_names
from ..io._store import open_run as _open_file

__all__ = ["Sweep", "moments", "open_run", "open_sweep", "particle_observables", "quantiles"]

NOT_CONFIG = ("id", "status", "file", "final_risk", "final_time", "kind")
PARTICLE_OBSERVABLES = ("norm", "readout", "signed_norm", "overlap")


class _LazyH5(BackendArray):
    """An h5py dataset seen by xarray as a lazily indexed array of its first ``length`` frames.

    Only integer and slice keys reach h5py (``IndexingSupport.BASIC``); xarray applies any
    fancier indexing to the block read.
    """

    def __init__(self, dataset: h5py.Dataset, length: int):
        self.dataset = dataset
        self.shape = (length, *dataset.shape[1:])
        self.dtype = dataset.dtype

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key):
        return self.dataset[key]


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _records(f: h5py.File, status: str) -> int:
    """Records complete in every series (a file being written may be one record ahead in some)."""
    lengths = [f[f"observables/{name}/{part}"].shape[0] for name in ("risk", "grad_norm")
               for part in ("step", "time", "value")]
    for group in ("particles/neurons/position", "particles/tracers/position"):
        if group in f:
            lengths += [f[f"{group}/{part}"].shape[0] for part in ("step", "time", "value")]
    count = min(lengths)
    if status == "running":
        # Records after the last checkpoint may not be flushed yet; the checkpoint counts them.
        checkpoint = read_checkpoint(f)
        count = min(count, checkpoint["records"] if checkpoint is not None else 0)
    return count


def _series_variable(group, steps, long_name):
    """A stored series (``step``, ``time``, ``value``) as a variable over the run's records:
    its values where its steps are records, NaN elsewhere (a series written at every record
    is read as it is)."""
    value = group["value"]
    T = steps.shape[0]
    dims = ("time",) + tuple(f"{group.name.rsplit('/', 1)[-1]}_{k}" for k in range(1, value.ndim))
    stored_steps = group["step"][()]
    if stored_steps.shape[0] >= T and np.array_equal(stored_steps[:T], steps):
        return dims, value[:T], {"long_name": _text(long_name)}
    full = np.full((T, *value.shape[1:]), np.nan)
    where = {int(s): i for i, s in enumerate(steps)}
    values = value[()]
    for row, step in enumerate(stored_steps):
        if int(step) in where:
            full[where[int(step)]] = values[row]
    return dims, full, {"long_name": _text(long_name)}


def open_run(path) -> xr.Dataset:
    """Open one run file as an :class:`xarray.Dataset`, without reading its particles.

    Parameters
    ----------
    path : str or path-like
        A run file ``<id>.h5``, or ``<id>.h5.part`` while it is written (opened in SWMR
        mode; the Dataset holds the records complete when it was opened: open it again to
        see newer ones).

    Returns
    -------
    xarray.Dataset
        Dimensions ``time`` (T records), ``particle`` (m), ``coord`` (d + 2, named
        ``a_0 … a_{d-1}, b, c``), and where present ``tracer`` and ``teacher``. Variables:

        ``position`` (time, particle, coord)
            The particles w_i(t) = (a_i, b_i, c_i), lazily read from the file (float32 or
            float64 as stored); absent with ``[record] particles = false``.
        ``risk``, ``grad_norm`` (time)
            F(mu_m(t)) and |grad F| at each record, float64.
        every other series ``/observables/<name>`` (time)
            The run's measures (``step_error``, ``test_risk``, any registered observable,
            ``meanfield.experiments._assembly.OBSERVABLES``) and the series that post-run stages add
            (``tangent_distance``, ...): NaN at records where the series has no value.
        ``limit_<metric>`` (time) or (time, teacher) for ``overlap_w2``
            Distances to the reference of width ``reference_m`` (``/observables/limit``),
            NaN at records where they were not measured.
        ``tracer_position`` (time, tracer, coord)
            Tracer particles of a reference run, lazy; attribute ``blocks``.
        ``teacher_position`` (teacher, coord)
            Teacher neurons.

        Coordinates ``time`` (continuous time t), ``step`` (time), ``particle``, ``coord``.
        ``attrs``: ``config`` (the resolved config as a dict), ``config_json``, ``run_id``,
        ``status``, ``message``, ``method``, ``path``, ``m``, ``d``, ``seed``, and
        ``reference_m``, ``reference_id`` when limit distances are stored.

    An ODE run file (``meanfield.online.write_trajectory``, the ``online_ode`` stage's
    ``DIR/ode/<run id>.h5``; attribute ``kind = "ode"``) gives the same series without
    particles (:func:`_ode_dataset`): ``risk``, ``eps_g`` and the order parameters over ``time``,
    with the coordinate ``alpha``.

    Notes
    -----
    The Dataset keeps the HDF5 file open (read-only) until ``ds.close()``; use it in a
    ``with open_run(path) as ds:`` block to close it. ``ds.load()`` reads everything.
    """
    path = os.fspath(path)
    f = _open_file(path)
    try:
        attrs = {key: _text(value) for key, value in f.attrs.items()}
        if attrs.get("kind") == ODE_KIND:  # read at once (no particles): the file is closed below
            ds = _ode_dataset(f, path, attrs)
            f.close()
            return ds
        config = json.loads(attrs["config"])
        T = _records(f, attrs["status"])
        d = int(config["model"]["d"])
        risk = f["observables/risk"]
        coords = {"time": ("time", risk["time"][:T]), "step": ("time", risk["step"][:T])}
        variables = {name: (("time",), f[f"observables/{name}/value"][:T], {"long_name": label})
                     for name, label in (("risk", "risk F"), ("grad_norm", "gradient norm |grad F|"))}
        columns = column_names(d)
        if "particles/neurons/position" in f:
            value = f["particles/neurons/position/value"]
            columns = [_text(c) for c in value.attrs.get("columns", columns)]
            lazy = indexing.LazilyIndexedArray(_LazyH5(value, T))
            variables["position"] = (("time", "particle", "coord"), lazy,
                                     {"long_name": "particle positions (a, b, c)"})
            coords["particle"] = ("particle", np.arange(value.shape[1]))
        coords["coord"] = ("coord", np.array(columns, dtype=object))
        if "particles/tracers/position" in f:
            group = f["particles/tracers/position"]
            lazy = indexing.LazilyIndexedArray(_LazyH5(group["value"], T))
            variables["tracer_position"] = (("time", "tracer", "coord"), lazy,
                                            {"long_name": "tracer particles", "blocks": _text(group.attrs["blocks"])})
            coords["tracer"] = ("tracer", np.arange(group["value"].shape[1]))
        if "parameters/teacher/position" in f:
            variables["teacher_position"] = (("teacher", "coord"), f["parameters/teacher/position"][()],
                                             {"long_name": "teacher neurons"})
        steps = coords["step"][1]
        for name, group in f["observables"].items():
            if name in variables or name == "limit" or "value" not in group:
                continue
            variables[name] = _series_variable(group, steps, group.attrs.get("long_name", name))
        if "observables/limit" in f:
            limit = f["observables/limit"]
            for key in ("reference_m", "reference_id"):
                if key in limit.attrs:
                    attrs[key] = _text(limit.attrs[key])
            for metric in limit:
                g = limit[metric]
                values = g["value"][()]
                where = {int(s): i for i, s in enumerate(steps)}
                full = np.full((T, *values.shape[1:]), np.nan)
                for row, step in enumerate(g["step"][()]):
                    if int(step) in where:
                        full[where[int(step)]] = values[row]
                dims = ("time",) if values.ndim == 1 else ("time", "teacher")
                variables[f"limit_{metric}"] = (dims, full, {"long_name": f"{metric} to the width-"
                                                             f"{attrs.get('reference_m', 'M')} reference"})
        ds_attrs = {"run_id": attrs["run_id"], "status": attrs["status"], "message": attrs.get("message", ""),
                    "method": attrs.get("method", ""), "path": path, "m": int(config["model"]["m"]), "d": d,
                    "seed": int(config["run"]["seed"]), "config": config, "config_json": attrs["config"]}
        for key in ("reference_m", "reference_id"):
            if key in attrs:
                ds_attrs[key] = attrs[key]
        ds = xr.Dataset(variables, coords=coords, attrs=ds_attrs)
    except BaseException:
        f.close()
        raise
    ds.set_close(f.close)
    return ds


def _ode_dataset(f, path: str, attrs: dict) -> xr.Dataset:
    """The Dataset of an ODE run file (``kind = "ode"``, docs/hdf5.md), read at once (it is small).

    Dimensions ``time`` (T) and ``teacher`` (M). Variables over ``time``: ``risk`` (the population
    risk F = (eps_g + sigma^2 / 2) / alpha_o^2, as a particle run records it), ``eps_g`` and the
    order parameters ``Q_k_l``, ``R_k_n``, ``v_k`` (and ``b_k`` with biases); ``teacher_overlaps``
    (teacher, teacher_2) = T, ``teacher_v`` (teacher) = v* and ``teacher_b`` (teacher) = b*.
    Coordinates ``time`` (the engine's continuous time t of the run the ODE was started from; alpha
    when it has none), ``step`` (the engine step, -1 without a run) and ``alpha`` (steps / d).
    ``attrs``: ``kind`` = "ode", ``run_id``, ``status``, ``message``, ``method`` (the Gaussian
    averages), ``path``, ``config``, ``config_json``, ``source_run_id``, the ODE's settings
    (``activation``, ``K``, ``M``, ``learning_rate``, ``second_layer_learning_rate``,
    ``train_second_layer``, ``noise_std``, ``batch_size``, ``train_bias``, ``bias_learning_rate``,
    ``model_alpha``, ``rtol``, ``atol``, ``solver``, ``averages``), ``m`` = K, and ``d``, ``seed``
    of the source run where it has them.
    """
    config = json.loads(attrs["config"])
    observables = f["observables"]
    risk = observables["risk"]
    coords = {"time": ("time", risk["time"][()]), "step": ("time", risk["step"][()]),
              "alpha": ("time", observables["alpha/value"][()])}
    variables = {name: (("time",), group["value"][()], {"long_name": _text(group.attrs.get("long_name", name))})
                 for name, group in observables.items() if name != "alpha"}
    parameters = f["parameters/ode"]
    variables["teacher_overlaps"] = (("teacher", "teacher_2"), parameters["T"][()], {"long_name": "T"})
    variables["teacher_v"] = (("teacher",), parameters["teacher_v"][()], {"long_name": "v*"})
    variables["teacher_b"] = (("teacher",), parameters["teacher_b"][()], {"long_name": "b*"})
    settings = {key: _text(value) for key, value in parameters.attrs.items()}
    settings = {key: value.item() if isinstance(value, np.generic) else value for key, value in settings.items()}
    ds_attrs = {"kind": attrs["kind"], "run_id": attrs["run_id"], "status": attrs["status"],
                "message": attrs.get("message", ""), "method": attrs.get("method", ""), "path": path,
                "config": config, "config_json": attrs["config"], "source_run_id": attrs.get("source_run_id", ""),
                **settings, "m": int(settings["K"])}
    for key in ("d", "seed"):
        if key in config.get("source", {}):
            ds_attrs[key] = config["source"][key]
    return xr.Dataset(variables, coords=coords, attrs=ds_attrs)


# -------------------------------------------------------------------- width-free reductions
def particle_observables(ds: xr.Dataset, names=("norm", "readout", "signed_norm")) -> xr.Dataset:
    r"""Scalar observables of every particle at every record, read one frame at a time.

    ``norm`` |a_i|, ``readout`` c_i, ``signed_norm`` c_i |a_i| (dims time, particle) and
    ``overlap`` a_i . a*_j (time, particle, teacher), as in
    :func:`meanfield.distance.observable`. Memory: one frame of ``position`` at a time plus
    the result.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`open_run` (needs ``position``; ``teacher_position`` for ``overlap``).
    names : sequence of str

    Returns
    -------
    xarray.Dataset
        One float64 variable per name.
    """
    for name in names:
        if name not in PARTICLE_OBSERVABLES:
            raise ValueError(f"unknown observable {name!r}; choose from {PARTICLE_OBSERVABLES}")
    if "position" not in ds:
        raise ValueError(f"{ds.attrs.get('path', 'this run')}: no particles were recorded "
                         "([record] particles = false)")
    d = int(ds.attrs["d"])
    T, m = ds.sizes["time"], ds.sizes["particle"]
    teacher = ds["teacher_position"].values[:, :d] if "overlap" in names and "teacher_position" in ds else None
    if "overlap" in names and teacher is None:
        raise ValueError("the overlap observable needs the teacher (teacher_position)")
    out = {name: np.empty((T, m) if name != "overlap" else (T, m, teacher.shape[0])) for name in names}
    for t in range(T):
        W = np.asarray(ds["position"].isel(time=t).values, dtype=np.float64)
        a, c = W[:, :d], W[:, d + 1]
        norm = np.linalg.norm(a, axis=1)
        values = {"norm": norm, "readout": c, "signed_norm": c * norm}
        for name in names:
            out[name][t] = a @ teacher.T if name == "overlap" else values[name]
    labels = {"norm": "|a|", "readout": "c", "signed_norm": "c |a|", "overlap": "a . a*"}
    variables = {name: (("time", "particle", "teacher") if name == "overlap" else ("time", "particle"), value,
                        {"long_name": labels[name]}) for name, value in out.items()}
    return xr.Dataset(variables, coords={"time": ds["time"], "particle": ds["particle"]})


def moments(ds: xr.Dataset, names=("norm", "readout", "signed_norm"), orders=(1, 2)) -> xr.Dataset:
    r"""Empirical moments (1/m) sum_i g(w_i(t))^k of particle observables, per time.

    Width-free: runs of different widths m give arrays of the same shape (time, order)
    (``overlap``: time, order, teacher).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`open_run` (needs ``position``; ``teacher_position`` for ``overlap``).
    names : sequence of str
        Observables of :func:`particle_observables`: ``norm``, ``readout``, ``signed_norm``,
        ``overlap``.
    orders : sequence of int
        The powers k.

    Returns
    -------
    xarray.Dataset
        One float64 variable per name, dims (time, order) (``overlap``: time, order,
        teacher), with the coordinates ``time`` (the continuous time t of each record) and
        ``order`` (``orders``).
    """
    obs = particle_observables(ds, names)
    order = xr.DataArray(np.asarray(orders), dims="order", coords={"order": np.asarray(orders)})
    return (obs ** order).mean("particle").transpose("time", "order", ...)


def quantiles(ds: xr.Dataset, names=("norm", "readout", "signed_norm"), q=(0.1, 0.25, 0.5, 0.75, 0.9)) -> xr.Dataset:
    """Quantiles over the particles of each observable, per time: the 1-D laws, width-free.

    Returns a Dataset with dims (time, quantile) per observable (``overlap``: with teacher).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`open_run` (needs ``position``; ``teacher_position`` for ``overlap``).
    names : sequence of str
        Observables of :func:`particle_observables`: ``norm``, ``readout``, ``signed_norm``,
        ``overlap``.
    q : sequence of float
        Quantile levels in [0, 1].

    Returns
    -------
    xarray.Dataset
        One float64 variable per name, dims (time, quantile) (``overlap``: time, quantile,
        teacher), with the coordinates ``time`` (the continuous time t of each record) and
        ``quantile`` (``q``); xarray's default (linear) interpolation between particles.
    """
    obs = particle_observables(ds, names)
    return obs.quantile(np.asarray(q, dtype=np.float64), dim="particle").transpose("time", "quantile", ...)


# -------------------------------------------------------------------------------- sweeps
def _newest_run_file(directory: str) -> float:
    newest = 0.0
    for name in run_file_names(directory):
        with contextlib.suppress(FileNotFoundError):  # a .part renamed meanwhile
            newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime)
    return newest


def _catalog_frame(source) -> pd.DataFrame:
    """The catalog frame of ``catalog.csv`` text (a path or a text buffer), indexed by run id."""
    try:
        frame = pd.read_csv(source, dtype={"id": str, "file": str, "status": str})
    except (FileNotFoundError, pd.errors.EmptyDataError):  # no runs yet
        return pd.DataFrame(columns=["status", "file"], index=pd.Index([], name="id"))
    return frame.set_index("id")


def _merged_catalog(directory: str) -> pd.DataFrame:
    """The catalog merged now (:func:`meanfield.io.catalog_rows`: the shards' fragments, and the
    run files they do not cover), parsed from the very text write_index would write to
    ``catalog.csv``, so its columns and types are those of a fresh ``catalog.csv``."""
    import io as text_io

    from ..io import catalog_rows, write_catalog_csv

    rows = catalog_rows(directory)
    if not rows:
        return _catalog_frame(text_io.StringIO(""))
    buffer = text_io.StringIO(newline="")
    write_catalog_csv(buffer, rows)
    buffer.seek(0)
    return _catalog_frame(buffer)


def _read_catalog(directory: str, refresh) -> pd.DataFrame:
    from ..io import write_index

    csv_path = os.path.join(directory, "catalog.csv")
    if refresh is True:
        try:
            write_index(directory)
        except OSError:  # a read-only directory: the same table, in memory
            return _merged_catalog(directory)
    elif refresh == "auto":
        # catalog.csv is written by `meanfield run` (a whole experiment) and `meanfield status`,
        # not by each shard of an array: when a run file is newer, or the files differ, the
        # catalog is merged in memory (nothing is written here).
        if not os.path.exists(csv_path) or os.path.getmtime(csv_path) < _newest_run_file(directory):
            return _merged_catalog(directory)
        frame = _catalog_frame(csv_path)
        names = set(run_file_names(directory))
        if set(frame["file"]) != {n for n in names if not (n.endswith(".part") and n[: -len(".part")] in names)}:
            return _merged_catalog(directory)
        return frame
    return _catalog_frame(csv_path)


class Sweep:
    """A sweep directory: its catalog, and its runs opened on demand.

    Attributes
    ----------
    directory : str
    catalog : pandas.DataFrame
        One row per run file, indexed by run id: ``status``, ``file``, ``final_risk``,
        ``final_time`` and every config value as a ``section.key`` column (``model.m``,
        ``run.seed``, ...), as the directory's ``catalog.csv`` holds them (read, or merged in
        memory when it is not up to date: :func:`open_sweep`).

    Selections (``select``, ``runs``, ``stack``, the reductions) take keyword arguments
    ``key=value`` where ``key`` is a catalog column or its last part when that is unique
    (``m`` for ``model.m``, ``seed`` for ``run.seed``, ``alpha``, ``status``) and ``value``
    a value or a list of values.
    """

    def __init__(self, directory, catalog: pd.DataFrame):
        self.directory = os.fspath(directory)
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"<Sweep {self.directory}: {len(self.catalog)} runs>"

    # -- selection ---------------------------------------------------------------------
    def column(self, key: str) -> str:
        """The catalog column a short key names (``m`` -> ``model.m``)."""
        if key in self.catalog.columns:
            return key
        matches = [c for c in self.catalog.columns if c.split(".")[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise KeyError(f"{key!r} is ambiguous in the catalog: {', '.join(matches)}; use the full name")
        raise KeyError(f"no catalog column {key!r}; columns: {', '.join(map(str, self.catalog.columns))}")

    def select(self, **selection) -> pd.DataFrame:
        """The catalog rows matching every ``key=value`` (a list of values matches any)."""
        rows = self.catalog
        for key, value in selection.items():
            column = rows[self.column(key)]
            values = value if isinstance(value, (list, tuple, set, np.ndarray)) else [value]
            rows = rows[column.isin(list(values))]
        return rows

    def path(self, run_id: str) -> str:
        """The file of a run, given its id or a unique prefix of it."""
        ids = [i for i in self.catalog.index if str(i).startswith(run_id)]
        if len(ids) != 1:
            raise KeyError(f"{run_id!r} matches {len(ids)} runs of {self.directory}")
        return os.path.join(self.directory, self.catalog.loc[ids[0], "file"])

    def run(self, run_id: str) -> xr.Dataset:
        """One run as a Dataset (:func:`open_run`), by id or unique id prefix."""
        return open_run(self.path(run_id))

    def runs(self, **selection) -> list[xr.Dataset]:
        """The selected runs, opened (files open, particles not read), in catalog order."""
        return [open_run(os.path.join(self.directory, name)) for name in self.select(**selection)["file"]]

    # -- combining runs ----------------------------------------------------------------
    def _keys(self, by, rows):
        columns = [self.column(b) for b in by]
        dims = [c.split(".")[-1] for c in columns]
        keys = list(rows[columns].itertuples(index=False, name=None))
        if len(set(keys)) != len(keys):
            others = [c for c in rows.columns if c not in NOT_CONFIG and c not in columns
                      and rows[c].astype(str).nunique() > 1]
            raise ValueError(f"several runs share the same {', '.join(dims)}: they differ in "
                             f"{', '.join(others) or 'nothing else'}; select among them, e.g. "
                             f"{others[0].split('.')[-1] if others else 'status'}=...")
        return dims, keys

    def reduce(self, function, by=("m", "seed"), **selection):
        """Apply ``function(dataset) -> DataArray or Dataset`` to every selected run and
        combine the results along new dimensions ``by`` (outer join on time: NaN where a run
        has no record). Each run's file is closed once its result is loaded.

        Runs for which ``function`` raises ``KeyError`` (a variable it lacks) are left out.
        The coordinates ``step`` and (ODE run files) ``alpha`` are dropped: runs joined on
        ``time`` need not share them.
        """
        rows = self.select(**selection)
        dims, keys = self._keys(by, rows)
        parts = []
        for name, key in zip(rows["file"], keys):
            with open_run(os.path.join(self.directory, name)) as ds:
                try:
                    result = function(ds)
                except KeyError:
                    continue
                result = result.load()
            # Coordinates along time that differ between runs at one t (the step, and an ODE
            # file's alpha = t / (eta_e d)) would make the outer join on time conflict.
            result = result.drop_vars([c for c in ("step", "alpha") if c in result.coords])
            parts.append(result.expand_dims({dim: [value] for dim, value in zip(dims, key)}))
        if not parts:
            raise ValueError(f"no selected run of {self.directory} gives this quantity")
        if isinstance(parts[0], xr.DataArray):
            name = parts[0].name
            merged = xr.merge([p.rename("_value") for p in parts], join="outer", compat="no_conflicts",
                              combine_attrs="drop_conflicts")["_value"]
            return merged.rename(name).transpose(*dims, ...)
        merged = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
        return merged.transpose(*dims, ...)

    def observable(self, name: str = "risk", by=("m", "seed"), **selection) -> xr.DataArray:
        """A time series of every selected run, as an array (by..., time).

        ``name``: ``risk``, ``grad_norm`` or ``limit_<metric>`` (runs without it, such as the
        references of a limit comparison, are left out).
        """
        return self.reduce(lambda ds: ds[name], by, **selection)

    def risk(self, by=("m", "seed"), **selection) -> xr.DataArray:
        """The risk of the selected runs, dims (m, seed, time) by default."""
        return self.observable("risk", by, **selection)

    def moments(self, names=("norm", "readout", "signed_norm"), orders=(1, 2), by=("m", "seed"),
                **selection) -> xr.Dataset:
        """:func:`moments` of every selected run, dims (m, seed, time, order)."""
        return self.reduce(lambda ds: moments(ds, names, orders), by, **selection)

    def quantiles(self, names=("norm", "readout", "signed_norm"), q=(0.1, 0.25, 0.5, 0.75, 0.9),
                  by=("m", "seed"), **selection) -> xr.Dataset:
        """:func:`quantiles` of every selected run, dims (m, seed, time, quantile)."""
        return self.reduce(lambda ds: quantiles(ds, names, q), by, **selection)

    def stack(self, along: str = "seed", particles: bool = False, **selection) -> xr.Dataset:
        """Runs that differ only in ``along`` (e.g. the seeds of one width) as one Dataset
        with a new dimension ``along``.

        Parameters
        ----------
        along : str
            Catalog key the runs differ in (``seed``).
        particles : bool
            Include ``position`` (and tracers). Without dask the particles are read into
            memory; with dask installed they stay lazy, one chunk per record, and the run
            files stay open as long as the result is used.
        **selection
            Which runs, e.g. ``m=512``.

        Raises
        ------
        ValueError
            If the selected runs differ in another config value too (it is named).
        """
        column = self.column(along)
        rows = self.select(**selection).sort_values(column)
        others = [c for c in rows.columns if c not in NOT_CONFIG and c != column
                  and rows[c].astype(str).nunique() > 1]
        if others:
            raise ValueError(f"the selected runs differ in {', '.join(others)}, not only in {column}: "
                             f"select one value, e.g. {others[0].split('.')[-1]}="
                             f"{rows[others[0]].iloc[0]!r}")
        if rows[column].nunique() != len(rows):
            raise ValueError(f"several selected runs share a value of {column}")
        datasets = []
        for name in rows["file"]:
            ds = open_run(os.path.join(self.directory, name))
            lazy = [v for v in ("position", "tracer_position") if v in ds]
            if not particles:
                ds = ds.drop_vars(lazy)
                datasets.append(ds.load())
                ds.close()
            else:
                try:
                    import dask  # noqa: F401
                    datasets.append(ds.chunk({"time": 1}))
                except ImportError:
                    datasets.append(ds.load())
                    ds.close()
        dim = pd.Index(rows[column].to_numpy(), name=column.split(".")[-1])
        return xr.concat(datasets, dim=dim, join="outer", combine_attrs="drop_conflicts")


def open_sweep(directory, refresh="auto") -> Sweep:
    """Open a sweep directory: the catalog now, the runs when asked.

    Parameters
    ----------
    directory : str or path-like
        An output directory of ``meanfield run`` (run files, ``catalog.csv``, ``index.h5``).
    refresh : "auto", True or False
        ``"auto"``: read ``catalog.csv`` when it is up to date, and when it is missing, older
        than a run file or lists other files (a Slurm array's shards do not write it), merge
        the catalog in memory (:func:`meanfield.io.catalog_rows`: the rows the shards cached
        in ``catalog.d/``, and each run file they do not cover read for its attributes and
        last risk, never its particles), writing nothing. True: rewrite ``catalog.csv`` and
        ``index.h5`` first (:func:`meanfield.io.write_index`; in a read-only directory the
        catalog is merged in memory instead). False: read ``catalog.csv`` as it is.

    Returns
    -------
    Sweep
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory")
    return Sweep(directory, _read_catalog(directory, refresh))
