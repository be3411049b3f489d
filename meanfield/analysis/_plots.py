"""Plots of runs and sweeps: matplotlib's object-oriented API, each function returns its Figure.

No pyplot state is touched (figures are :class:`matplotlib.figure.Figure` objects, or the
figure of an Axes you pass), so these functions are safe in scripts, tests and notebooks
(``%matplotlib inline`` shows a returned Figure).
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["pick_times", "plot_norm_histogram", "plot_rate", "plot_risk"]


def _axes(ax, figsize=(6.4, 4.4)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _label(dim: str, value) -> str:
    if isinstance(value, str):
        return str(value)
    return f"{dim}={value:g}" if isinstance(value, float) else f"{dim}={value}"


def pick_times(times, count: int) -> np.ndarray:
    """Up to ``count`` recorded times, log-spaced over the positive ones (the nearest records).

    Parameters
    ----------
    times : array_like, shape (T,)
        Recorded times t, increasing; zero, negative and non-finite times are skipped.
    count : int
        Number of log-spaced targets between the first and the last positive time.

    Returns
    -------
    ndarray, shape (k,), float64
        The recorded times nearest (in log t) to the targets, sorted and unique, k <= count;
        empty when no time is positive.
    """
    times = np.asarray(times, dtype=np.float64)
    positive = times[np.isfinite(times) & (times > 0)]
    if positive.size == 0:
        return positive
    targets = np.geomspace(positive[0], positive[-1], count)
    return np.unique([positive[np.argmin(np.abs(np.log(positive) - math.log(t)))] for t in targets])


def plot_risk(risk: xr.DataArray, line: str = "m", band: str | None = "seed", ax=None, ylabel=None, title=None):
    """Risk against time, one line per value of ``line``, log-log axes.

    Each line is the mean over ``band`` (the seeds; NaN-skipping), with the band between the
    smallest and largest value over ``band`` shaded in the same colour. Records at t <= 0
    are left out (log axis).

    Parameters
    ----------
    risk : xarray.DataArray
        Dims ``time`` and optionally ``line`` and ``band``, e.g. ``Sweep.risk()``
        (m, seed, time) or ``open_run(path).risk`` (time).
    line : str
        Dimension drawn as separate lines (absent: one line). String coordinate values are
        used as legend labels as they are; others as ``line=value``.
    band : str or None
        Dimension averaged over, with its min-max band (absent or None: no band).
    ax : matplotlib.axes.Axes, optional
        Draw there; by default on a new Figure.
    ylabel, title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if "time" not in risk.dims:
        raise ValueError(f"risk needs a 'time' dimension, got dims {risk.dims}")
    fig, ax = _axes(ax)
    risk = risk.where(risk["time"] > 0, drop=True)
    values = [(None, risk)] if line not in risk.dims else [(v, risk.sel({line: v})) for v in risk[line].values]
    for value, curve in values:
        extra = [d for d in curve.dims if d not in ("time", band)]
        if extra:
            raise ValueError(f"risk has dimensions {extra} besides time, {line!r} and {band!r}: select or reduce them")
        times = curve["time"].values
        if band is not None and band in curve.dims:
            count = int(curve.notnull().any("time").sum())
            mean = curve.mean(band, skipna=True).values
            label = None if value is None else _label(line, value)
            label = f"{label} ({count} {band}{'s' if count != 1 else ''})" if label else f"mean over {count} {band}s"
            keep = np.isfinite(mean)
            (drawn,) = ax.plot(times[keep], mean[keep], label=label)
            if count > 1:
                ax.fill_between(times[keep], curve.min(band).values[keep], curve.max(band).values[keep],
                                color=drawn.get_color(), alpha=0.2, linewidth=0)
        else:
            keep = np.isfinite(curve.values)
            ax.plot(times[keep], curve.values[keep], label=None if value is None else _label(line, value))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time t")
    banded = band is not None and band in risk.dims
    ax.set_ylabel(ylabel or (f"{risk.name or 'risk'} (mean over {band}s, min-max band)" if banded else
                             str(risk.name or "risk")))
    ax.grid(True, which="both", alpha=0.3)
    if line in risk.dims or banded:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_rate(values: xr.DataArray, times=None, n_times: int = 4, width: str = "m", seed: str = "seed",
              n_boot: int = 2000, level: float = 0.95, ylabel=None, path=None):
    """A metric against the width m, log-log, with its fitted power law and slope interval.

    For each chosen time: the mean over seeds with standard-error bars, the least-squares
    line log(mean) = intercept + slope log m (dashed) and the legend entry
    "t=...: slope s [low, high]", the percentile-bootstrap interval over seeds at ``level``
    (:func:`meanfield.distance.rate`; drawn by :func:`meanfield.distance.plot_rates`).

    Parameters
    ----------
    values : xarray.DataArray
        Dims (m, seed) or (m, seed, time), e.g. ``Sweep.observable("limit_norm_w2")``.
        Widths whose values are all NaN (the reference of a limit sweep) are left out.
    times : sequence of float, optional
        Times to fit at (the nearest records); default ``n_times`` log-spaced records.
    width, seed : str
        Names of the width and seed dimensions.
    n_boot, level
        Bootstrap resamples and confidence level.
    ylabel : str, optional
        Default: the array's name without its ``limit_`` prefix.
    path : str or path-like, optional
        Also save the figure there (PNG).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ..distance import plot_rates

    if seed not in values.dims:
        values = values.expand_dims(seed)
    if "time" not in values.dims:
        by_time = {"": values}
    else:
        chosen = pick_times(values["time"].values, n_times) if times is None else np.asarray(times, dtype=float)
        by_time = {f"t={t:g}": values.sel(time=t, method="nearest") for t in chosen}
    tables = {}
    widths = None
    for label, table in by_time.items():
        table = table.transpose(width, seed)
        table = table.sel({width: table.notnull().any(seed)})
        widths = table[width].values
        tables[label or "fit"] = table.values
    fig = plot_rates(widths, tables, n_boot=n_boot, level=level)
    name = str(values.name or "value")
    fig.axes[0].set_ylabel(ylabel or (name[len("limit_"):] if name.startswith("limit_") else name))
    if path is not None:
        fig.savefig(path, format="png", dpi=120)
    return fig


def initial_norm_density(config: dict):
    r"""The density of |a| under the initial law of a run config, or None if it has none.

    ``init.a = "gaussian"``: a ~ tau N(0, I/d), so |a| = (tau / sqrt(d)) chi_d, with density
    f(r) = (sqrt(d)/tau) chi_d(r sqrt(d)/tau). ``"sphere"``: |a| = tau exactly (no density).

    Parameters
    ----------
    config : dict
        A run's resolved configuration (the ``config`` attribute of a run opened with
        :func:`open_run`); ``config["init"]["a"]``, ``config["init"]["tau"]`` and
        ``config["model"]["d"]`` are read.

    Returns
    -------
    callable or None
        The density r -> f(r) (``scipy.stats.chi(df=d, scale=tau / sqrt(d)).pdf``, vectorised
        over r), or None when ``init.a`` is not ``"gaussian"``.
    """
    from scipy import stats

    init, d = config["init"], int(config["model"]["d"])
    if init["a"] != "gaussian":
        return None
    return stats.chi(df=d, scale=init["tau"] / math.sqrt(d)).pdf


def plot_norm_histogram(ds: xr.Dataset, times=None, reference="initial", bins: int = 40, ax=None):
    r"""Histograms of the input-weight norms |a_i| at some times, against a reference density.

    Parameters
    ----------
    ds : xarray.Dataset
        A run (:func:`open_run`) with ``position``. Only the chosen frames are read.
    times : sequence of float, optional
        Times (nearest records); default the first and last records.
    reference : "initial", callable or None
        ``"initial"``: the density of |a| under the run's initial law
        (:func:`initial_norm_density`: a scaled chi density with d degrees of freedom);
        a callable r -> density; None: no curve.
    bins : int
        Bins shared by all histograms (over the range of all chosen frames).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
        Step histograms normalised to unit area (one per time, labelled ``t=...``) and the
        reference as a black line.
    """
    if "position" not in ds:
        raise ValueError(f"{ds.attrs.get('path', 'this run')}: no particles were recorded")
    d = int(ds.attrs["d"])
    recorded = ds["time"].values
    chosen = [recorded[0], recorded[-1]] if times is None else list(times)
    norms = {}
    for t in chosen:
        frame = ds["position"].sel(time=t, method="nearest")
        norms[float(frame["time"])] = np.linalg.norm(np.asarray(frame.values, dtype=np.float64)[:, :d], axis=1)
    fig, ax = _axes(ax)
    everything = np.concatenate(list(norms.values()))
    edges = np.linspace(0.0, everything.max() * 1.05, bins + 1)
    for t, values in norms.items():
        ax.hist(values, bins=edges, density=True, histtype="step", label=f"t={t:g}")
    density = initial_norm_density(ds.attrs["config"]) if isinstance(reference, str) and reference == "initial" \
        else reference
    if density is not None:
        grid = np.linspace(edges[0], edges[-1], 400)
        ax.plot(grid, density(grid), color="black", linewidth=1.2,
                label="initial law" if isinstance(reference, str) else "reference")
    ax.set_xlabel("|a| (input-weight norm)")
    ax.set_ylabel("density")
    ax.set_title(f"m = {ds.attrs['m']}, seed {ds.attrs['seed']}")
    ax.legend(fontsize="small")
    return fig
