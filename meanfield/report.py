"""Summaries of a sweep directory: a risk table across the swept values and a risk plot."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from .engine._classification import HOMOGENEOUS_ACTIVATIONS
from .experiments._summaries import (
    FINISHED,
    GROUP_EXCLUDE,
    cell_text,
    group_label,
    short_names,
    sort_key,
)
from .io._store import finished_run_files, open_run, read_series


def risk_curves(summaries) -> dict:
    """Mean risk over seeds for each combination of the swept values other than the seed.

    Parameters
    ----------
    summaries : list of dict
        Run summaries (``meanfield.sweep.execute``) with a readable ``path``.

    Returns
    -------
    dict
        label -> (times (T,), mean risk (T,), number of seeds), for runs that recorded the
        same times; runs without records are left out.
    """
    groups = defaultdict(list)
    for summary in summaries:
        if summary["status"] not in ("complete", "skipped", "diverged") or not os.path.exists(summary["path"]):
            continue
        _, times, risk = read_series(summary["path"], "risk")
        if len(times):
            groups[group_label(summary["swept"])].append((times, risk, summary["swept"]))
    curves = {}
    for label, members in groups.items():
        length = min(len(t) for t, _, _ in members)
        times = members[0][0][:length]
        curves[label] = (times, np.mean([r[:length] for _, r, _ in members], axis=0), len(members))
    def order(label):
        swept = groups[label][0][2]
        return tuple(sort_key(v) for k, v in swept.items() if k not in GROUP_EXCLUDE)
    return dict(sorted(curves.items(), key=lambda item: order(item[0])))


def final_risk_table(summaries) -> str:
    """The risk at the end of each group of finished runs (runs that differ only in their
    seed): mean ± standard error over the seeds, one row per group, a column per key.

    Parameters
    ----------
    summaries : list of dict
        Run summaries (:func:`meanfield.sweep.execute`, or :func:`directory_summaries`).

    Returns
    -------
    str
        The table, or "" when no run has finished.
    """
    groups = defaultdict(list)
    for summary in summaries:
        if summary["status"] in FINISHED:
            swept = {k: v for k, v in summary["swept"].items() if k not in GROUP_EXCLUDE}
            groups[json.dumps({k: cell_text(v) for k, v in swept.items()})].append((swept, summary))
    if not groups:
        return ""
    keys = list(next(iter(groups.values()))[0][0])
    names = short_names(keys)
    table = []
    for members in groups.values():
        swept = members[0][0]
        risks = np.array([s["final_risk"] for _, s in members], dtype=float)
        finite = risks[np.isfinite(risks)]
        mean = float(np.mean(finite)) if len(finite) else math.nan
        error = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
        diverged = sum(s["status"] == "diverged" for _, s in members)
        risk = f"{mean:.4e}" + (f" ± {error:.1e}" if math.isfinite(error) else "")
        if diverged:
            risk += f" ({diverged} diverged)"
        t = max((s["final_time"] for _, s in members if math.isfinite(s["final_time"])), default=math.nan)
        table.append(([cell_text(swept[k]) for k in keys], len(members), t, risk,
                      tuple(sort_key(swept[k]) for k in keys)))
    table.sort(key=lambda row: row[-1])
    widths = [max(len(names[k]), *(len(cells[i]) for cells, *_ in table)) for i, k in enumerate(keys)]
    header = "  ".join(f"{names[k]:>{w}}" for k, w in zip(keys, widths))
    lines = [f"{header}{'  ' if keys else ''}{'seeds':>5}  {'t':>8}  final risk (mean ± standard error over seeds)"]
    for cells, n, t, risk, _ in table:
        row = "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
        lines.append(f"{row}{'  ' if keys else ''}{n:>5}  {t:>8.4g}  {risk}")
    return "\n".join(lines)


def risk_table(curves: dict, rows: int = 8) -> str:
    """A text table: recorded times (rows, log-spaced subset) by group (columns), mean risk."""
    if not curves:
        return "no recorded runs"
    times = next(iter(curves.values()))[0]
    picks = sorted({0, *_pick_times(times, max(1, rows - 1))})
    labels = list(curves)
    width = max(12, *(len(label) for label in labels))
    header = f"{'t':>10}  " + "  ".join(f"{label:>{width}}" for label in labels)
    lines = [header]
    for i in picks:
        cells = []
        for label in labels:
            t, r, _ = curves[label]
            cells.append(f"{r[i]:>{width}.4e}" if i < len(r) else " " * width)
        lines.append(f"{times[i]:>10.4g}  " + "  ".join(cells))
    seeds = {label: n for label, (_, _, n) in curves.items()}
    lines.append("(mean risk over seeds; seeds per column: " + ", ".join(f"{n}" for n in seeds.values()) + ")")
    return "\n".join(lines)


def plot_risk(curves: dict, path) -> str | None:
    """Risk versus time, one curve per group, log-log axes, saved as PNG
    (:func:`meanfield.analysis.plot_risk`). Needs the analysis extra
    (``pip install 'meanfield[analysis]'``); returns the path, or None without it."""
    try:
        import xarray as xr

        from .analysis import plot_risk as draw
    except ImportError:
        return None
    labels = [f"{label} ({seeds} seed{'s' if seeds > 1 else ''})" for label, (_, _, seeds) in curves.items()]
    lines = [xr.DataArray(risk, dims="time", coords={"time": times}) for times, risk, _ in curves.values()]
    risk = xr.concat(lines, dim="group", join="outer").assign_coords(group=labels).rename("risk")
    figure = draw(risk, line="group", band=None, ylabel="risk (mean over seeds)")
    figure.set_size_inches(6.4, 4.4)
    figure.savefig(path, dpi=120)
    return os.fspath(path)


def _pick_times(times: np.ndarray, count: int) -> list[int]:
    """Indices of up to ``count`` recorded times, log-spaced over the positive ones."""
    positive = np.flatnonzero(times > 0)
    if len(positive) == 0:
        return []
    targets = np.geomspace(times[positive[0]], times[positive[-1]], count)
    picks = [int(positive[np.argmin(np.abs(np.log(times[positive]) - math.log(t)))]) for t in targets]
    return sorted(set(picks))


def limit_rates(out_dir, n_times: int = 4, metrics=None, plots: bool = True, n_boot: int = 2000):
    """Log-log slopes of the limit metrics against m, with bootstrap intervals over seeds.

    Parameters
    ----------
    out_dir : path
        A sweep directory with a ``[limit]`` comparison (members and references).
    n_times : int
        How many recorded times (log-spaced) to fit at.
    metrics : sequence of str, optional
        Default: every metric stored in the members.
    plots : bool
        Write ``rates_<metric>.png`` (metric versus m, one line per time, slopes in the legend).

    Returns
    -------
    (str, list of str)
        The rate table as text, and the paths of the plots written.
    """
    from . import distance, limits

    if metrics is None:
        metrics = set()
        for member_path, _ in limits.pairs(out_dir):
            with open_run(member_path) as f:
                if "observables/limit" in f:
                    metrics.update(f["observables/limit"])
    rows, written = [], []
    for metric in sorted(metrics):
        data = limits.collect(out_dir, metric)
        if data["values"].size == 0 or len(data["widths"]) < 2:
            continue
        by_time, picked = {}, []
        for index in _pick_times(data["times"], n_times):
            values = data["values"][index]
            if not np.all(np.isfinite(values) & (values > 0) | np.isnan(values)) or np.nanmax(values) <= 0:
                rows.append((f"{metric} t={data['times'][index]:g}", None))
                continue
            label = f"t={data['times'][index]:g}"
            by_time[label] = values
            picked.append(data["times"][index])
            rows.append((f"{metric} {label}", distance.rate(data["widths"], values, n_boot=n_boot)))
        if plots and by_time:
            path = os.path.join(os.fspath(out_dir), f"rates_{metric}.png")
            try:
                import xarray as xr

                from .analysis import plot_rate

                table = xr.DataArray(np.stack(list(by_time.values())), name=metric, dims=("time", "m", "seed"),
                                     coords={"time": picked, "m": data["widths"], "seed": data["seeds"]})
                plot_rate(table, times=table["time"].values, n_boot=n_boot, path=path)
                written.append(path)
            except ImportError:
                pass
    usable = [(label, rate) for label, rate in rows if rate is not None]
    table = distance.rate_table(usable) if usable else "no limit metrics to fit"
    skipped = [label for label, rate in rows if rate is None]
    if skipped:
        table += "\nnot fitted (zero or negative values): " + ", ".join(skipped)
    return table, written


# ------------------------------------------------------------------ classification (issue 20)
CLASSIFICATION_SERIES = ("norm", "normalized_margin", "train_error", "test_error")


def weight_decay_setting(config: dict) -> str:
    """The weight decay of a run in one token: ``"0"`` (none), ``"<lambda_0>"`` (constant),
    ``"<lambda_0>,step@<t_on>"`` or ``"<lambda_0>,anneal@<tau>"``.

    Parameters
    ----------
    config : dict
        A resolved run config (its ``[dynamics]``).

    Returns
    -------
    str
    """
    dynamics = config["dynamics"]
    decay = dynamics.get("weight_decay", 0.0)
    if not decay:
        return "0"
    schedule = dynamics.get("weight_decay_schedule", "constant")
    if schedule == "step":
        return f"{decay:g},step@{dynamics['weight_decay_start']:g}"
    if schedule == "anneal":
        return f"{decay:g},anneal@{dynamics['weight_decay_time']:g}"
    return f"{decay:g}"


def classification_runs(out_dir) -> list[tuple[str, dict]]:
    """The complete runs of a directory that record ``[record] classification``.

    Parameters
    ----------
    out_dir : path-like
        Any path; one that is not a directory has none.

    Returns
    -------
    list of (str, dict)
        (path of the run file, resolved config), sorted by path.
    """
    if not os.path.isdir(out_dir):
        return []
    found = []
    for path in finished_run_files(out_dir):
        with open_run(path) as f:
            config = json.loads(f.attrs["config"])
            status = f.attrs["status"]
        if status == "complete" and config.get("record", {}).get("classification"):
            found.append((path, config))
    return found


def has_classification(out_dir) -> bool:
    """Whether a directory holds complete runs with ``[record] classification = true``.

    Parameters
    ----------
    out_dir : path-like

    Returns
    -------
    bool
    """
    return bool(classification_runs(out_dir))


def classification_records(out_dir) -> list[dict]:
    """One record per complete classification run: its settings and its recorded series.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.

    Returns
    -------
    list of dict
        Keys ``path``, ``config``, ``loss`` (str), ``decay`` (:func:`weight_decay_setting`),
        ``m``, ``seed`` (int), ``times`` (ndarray (T,): the continuous times of the records of
        ``norm``) and the series ``norm``, ``normalized_margin``, ``train_error``,
        ``test_error`` (ndarray (T,), float64), each None when the run does not store it (no
        margin for a non-homogeneous activation, no test error without ``test_samples``).
    """
    records = []
    for path, config in classification_runs(out_dir):
        with open_run(path) as f:
            times = f["observables/norm/time"][()]
            series = {name: f[f"observables/{name}/value"][()].astype(np.float64)
                      if f"observables/{name}" in f else None for name in CLASSIFICATION_SERIES}
        records.append({"path": path, "config": config, "loss": config["problem"]["loss"],
                        "decay": weight_decay_setting(config), "m": config["model"]["m"],
                        "seed": config["run"]["seed"], "times": times, **series})
    return records


def homogeneity_degree_of(config: dict) -> int | None:
    """The degree L of f in the trained coordinates of a run (2 with a trained readout, 1 with a
    frozen one) for a positively homogeneous activation; None for the others.

    Parameters
    ----------
    config : dict
        A resolved run config (its ``[model]``).

    Returns
    -------
    int or None
    """
    model = config["model"]
    if model["activation"] not in HOMOGENEOUS_ACTIVATIONS:
        return None
    return 2 if model["train_readout"] else 1


def last_decade_trend(times, norm, margin=None, degree=None) -> dict:
    """The growth of rho and the change of the margin over the last decade of recorded time.

    The window is the records with t >= t_last / 10 (t_last the last recorded time).

    Parameters
    ----------
    times : array_like, shape (T,)
        Recorded times, increasing.
    norm : array_like, shape (T,)
        rho at those times.
    margin : array_like, shape (T,), optional
        The normalised margin at those times.
    degree : int, optional
        The homogeneity degree L (:func:`homogeneity_degree_of`).

    Returns
    -------
    dict
        ``norm_per_decade``: least-squares slope of rho against log10 t over the window (the
        growth of rho per factor 10 of t; NaN with fewer than 2 records in it);
        ``normL_per_decade``: the same slope for rho^L (NaN without a degree);
        ``margin_change``: margin(t_last) - margin(first record of the window) (NaN without a
        margin or with one record in the window).
    """
    times, norm = np.asarray(times, float), np.asarray(norm, float)
    window = np.flatnonzero(times >= times[-1] / 10.0)
    window = window[times[window] > 0]
    result = {"norm_per_decade": math.nan, "normL_per_decade": math.nan, "margin_change": math.nan}
    if len(window) >= 2:
        result["norm_per_decade"] = float(np.polyfit(np.log10(times[window]), norm[window], 1)[0])
        if degree is not None:
            result["normL_per_decade"] = float(np.polyfit(np.log10(times[window]), norm[window] ** degree, 1)[0])
        if margin is not None:
            margin = np.asarray(margin, float)
            result["margin_change"] = float(margin[window[-1]] - margin[window[0]])
    return result


def classification_rows(records) -> list[dict]:
    """The numbers of the classification table: one row per (loss, weight decay, m), means over seeds.

    Parameters
    ----------
    records : list of dict
        Records of :func:`classification_records`.

    Returns
    -------
    list of dict
        Sorted by (loss, decay, m); keys ``loss``, ``decay``, ``m``, ``seeds`` (count), ``t``
        (the last recorded time of the first member) and the means over seeds of ``norm``
        (rho at the last record), ``norm_per_decade``, ``normL_per_decade`` and ``margin_change``
        (:func:`last_decade_trend`), ``margin`` (normalised margin at the last record),
        ``train_error`` and ``test_error`` (at the last record); NaN where the runs do not
        store the series.
    """
    groups = defaultdict(list)
    for r in records:
        groups[(r["loss"], r["decay"], r["m"])].append(r)

    def mean_last(members, name):
        values = [r[name][-1] for r in members if r[name] is not None]
        return float(np.mean(values)) if values else math.nan

    rows = []
    for (loss, decay, m), members in sorted(groups.items(), key=lambda item: (item[0][0], float(
            item[0][1].split(",")[0]), item[0][1], item[0][2])):
        trends = [last_decade_trend(r["times"], r["norm"], r["normalized_margin"], homogeneity_degree_of(r["config"]))
                  for r in members]
        rows.append({"loss": loss, "decay": decay, "m": m, "seeds": len(members), "t": float(members[0]["times"][-1]),
                     "norm": mean_last(members, "norm"),
                     "norm_per_decade": float(np.mean([t["norm_per_decade"] for t in trends])),
                     "normL_per_decade": float(np.mean([t["normL_per_decade"] for t in trends])),
                     "margin": mean_last(members, "normalized_margin"),
                     "margin_change": float(np.mean([t["margin_change"] for t in trends])),
                     "train_error": mean_last(members, "train_error"),
                     "test_error": mean_last(members, "test_error")})
    return rows


CLASSIFICATION_COLUMNS = ("norm", "norm_per_decade", "normL_per_decade", "margin", "margin_change", "train_error",
                          "test_error")


def classification_table(records) -> str:
    """The classification table as text.

    Parameters
    ----------
    records : list of dict
        Records of :func:`classification_records`.

    Returns
    -------
    str
        A header line (``loss decay m seeds t`` then :data:`CLASSIFICATION_COLUMNS`), one line
        per row of :func:`classification_rows` (the numbers in ``%.4e``, ``nan`` where a series
        is not stored) and a closing line saying what the columns are; ``"classification: no
        complete runs"`` when ``records`` is empty. No trailing newline.
    """
    if not records:
        return "classification: no complete runs"
    lines = [f"{'loss':<12}  {'decay':<16}  {'m':>6}  {'seeds':>5}  {'t':>8}  "
             + "  ".join(f"{name:>15}" for name in CLASSIFICATION_COLUMNS)]
    for row in classification_rows(records):
        lines.append(f"{row['loss']:<12}  {row['decay']:<16}  {row['m']:>6}  {row['seeds']:>5}  {row['t']:>8.4g}  "
                     + "  ".join(f"{row[name]:>15.4e}" for name in CLASSIFICATION_COLUMNS))
    lines.append("(means over seeds at the last recorded time t; decay: weight_decay lambda_0 (0: none) and its "
                 "schedule; norm_per_decade, normL_per_decade: least-squares slope of rho, of rho^L (L the "
                 "homogeneity degree) against log10 t over t >= t/10; "
                 "margin_change: normalized_margin(t) - normalized_margin at the first record with t >= t/10)")
    return "\n".join(lines)


def _mean_curve(members, name):
    length = min(len(r[name]) for r in members)
    return members[0]["times"][:length], np.mean([r[name][:length] for r in members], axis=0)


def plot_classification_series(records, name: str, ylabel: str, positive_view: bool = False):
    """A recorded series against t (log axis), one panel per loss, one line per (decay, m), mean over seeds.

    Parameters
    ----------
    records : list of dict
        Records of :func:`classification_records`; those without the series are left out.
    name : str
        The series (``"norm"``, ``"normalized_margin"``).
    ylabel : str
    positive_view : bool
        Show the values from -1/2 to 1.15 times the largest plotted value (when it is
        positive): for the margin, whose values before the data are separated are far below
        its small positive values after; the title says so.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when no record has the series. Colours go with m (dark: small), the line style with
        the weight decay (solid: none); the point t = 0 is left out.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    records = [r for r in records if r[name] is not None]
    if not records:
        return None
    losses = sorted({r["loss"] for r in records})
    widths = sorted({r["m"] for r in records})
    decays = sorted({r["decay"] for r in records}, key=lambda d: (float(d.split(",")[0]), d))
    styles = ["-", "--", ":", "-."]
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(widths)))
    figure = Figure(figsize=(5.2 * len(losses), 4.4), dpi=110)
    axes_list = figure.subplots(1, len(losses), squeeze=False)[0]
    for axes, loss in zip(axes_list, losses):
        for d_index, decay in enumerate(decays):
            for m_index, m in enumerate(widths):
                members = [r for r in records if (r["loss"], r["decay"], r["m"]) == (loss, decay, m)]
                if not members:
                    continue
                times, values = _mean_curve(members, name)
                keep = times > 0
                label = ("no decay" if decay == "0" else f"decay {decay}") + f", m = {m}"
                axes.plot(times[keep], values[keep], styles[d_index % len(styles)], color=colours[m_index],
                          label=label)
        axes.set_xscale("log")
        axes.set_xlabel("time t")
        axes.set_ylabel(ylabel)
        axes.set_title(f"{loss} loss")
        upper = max((line.get_ydata().max() for line in axes.get_lines() if len(line.get_ydata())), default=0.0)
        if positive_view and upper > 0:
            axes.set_ylim(-0.5 * upper, 1.15 * upper)
            axes.set_title(f"{loss} loss (values below {-0.5 * upper:.2g} off the axes)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


def classification_report(out_dir, plots: bool = True) -> tuple[str, list[str]]:
    """The classification table of a directory and (with matplotlib) its two figures.

    Figures written into ``out_dir``: ``classification_norm.png`` (rho against t) and
    ``classification_margin.png`` (the normalised margin against t), both by
    :func:`plot_classification_series`.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory; its complete runs with ``[record] classification`` are read.
    plots : bool
        Write the figures (replacing files of the same names). Without matplotlib the text
        says how to install it.

    Returns
    -------
    (str, list of str)
        The table (:func:`classification_table`) and the paths of the figures written.
    """
    records = classification_records(out_dir)
    text = f"classification: {len(records)} runs\n" + classification_table(records)
    written = []
    if not plots or not records:
        return text, written
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return text + "\nplots: install 'meanfield[analysis]' (matplotlib)", written
    for name, ylabel, file_name in (("norm", "ρ (norm of the parameters)", "classification_norm.png"),
                                    ("normalized_margin", "normalised margin min y f / ρ^L",
                                     "classification_margin.png")):
        figure = plot_classification_series(records, name, ylabel, positive_view=name == "normalized_margin")
        if figure is not None:
            path = os.path.join(os.fspath(out_dir), file_name)
            figure.savefig(path)
            written.append(path)
    return text, written
