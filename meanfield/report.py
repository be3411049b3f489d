"""Summaries of a sweep directory: a risk table across the swept values and a risk plot."""
from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from ._store import read_series

GROUP_EXCLUDE = ("run.seed",)


def _label(swept: dict) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in swept.items() if k not in GROUP_EXCLUDE]
    return " ".join(parts) or "run"


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
            groups[_label(summary["swept"])].append((times, risk, summary["swept"]))
    curves = {}
    for label, members in groups.items():
        length = min(len(t) for t, _, _ in members)
        times = members[0][0][:length]
        curves[label] = (times, np.mean([r[:length] for _, r, _ in members], axis=0), len(members))
    def order(label):
        swept = groups[label][0][2]
        return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v))
                     for k, v in swept.items() if k not in GROUP_EXCLUDE)
    return dict(sorted(curves.items(), key=lambda item: order(item[0])))


def risk_table(curves: dict, rows: int = 8) -> str:
    """A text table: recorded times (rows, log-spaced subset) by group (columns), mean risk."""
    if not curves:
        return "no recorded runs"
    times = next(iter(curves.values()))[0]
    positive = np.flatnonzero(times > 0)
    picks = [0]
    if len(positive):
        targets = np.geomspace(times[positive[0]], times[-1], max(1, rows - 1))
        picks += [int(positive[np.argmin(np.abs(np.log(times[positive]) - math.log(t)))]) for t in targets]
    picks = sorted(set(picks))
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
    """Risk versus time, one curve per group, log-log axes, saved as PNG. Needs matplotlib
    (``pip install 'meanfield[analysis]'``); returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    axes = figure.add_subplot()
    for label, (times, risk, seeds) in curves.items():
        keep = times > 0
        axes.loglog(times[keep], risk[keep], label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
    axes.set_xlabel("time t")
    axes.set_ylabel("risk (mean over seeds)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return os.fspath(path)
