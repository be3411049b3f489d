"""Summaries of a sweep directory: a risk table across the swept values and a risk plot."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from .experiments._summaries import (
    FINISHED,
    GROUP_EXCLUDE,
    cell_text,
    group_label,
    short_names,
    sort_key,
)
from .io._store import open_run, read_series


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
