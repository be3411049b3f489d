"""The landscape stage of experiment files: end points of runs, the census of spurious minima, and
the connectivity of pairs of runs, stored in the run files and summarised as tables.

A run of a file with a ``[landscape]`` table continues, after its ordinary dynamics up to
t_max, by :func:`descend_to_precision` to ``grad_tol``; its end point is classified by
:func:`classify` and written to ``/landscape`` of its run file:

    /landscape                      attrs: kind, risk, grad_norm, lambda_min, lambda_max,
                                    lambda_min_error, lambda_max_error, grad_tol,
                                    risk_threshold, eig_tol, spectrum_method, steps, rejected,
                                    step, time, message
    /landscape/end_point            (m, d + 2) float64

A file with a ``[connectivity]`` table pairs its runs that differ only in the seed (seeds 2i
and 2i + 1) and writes, into the file of seed 2i,

    /connectivity                   attrs: partner_id, partner_seed, n_points, risk_A, risk_B,
                                    barrier_<path> for path in linear, arc, linear_matched,
                                    arc_matched
    /connectivity/t                 (n_points,)
    /connectivity/<path>            (n_points,) risk along the path
    /connectivity/permutation       (m,) the matching of B's particles to A's
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from ..io._store import finished_run_files, open_run, updating
from ._connectivity import PATHS, connectivity
from ._endpoint import classify
from ._precise import descend_to_precision

PATH_NAMES = tuple(f"{p}{s}" for s in ("", "_matched") for p in PATHS)


def _run_files(out_dir):
    out_dir = os.fspath(out_dir)
    yield from finished_run_files(out_dir)


def _final_W(f) -> np.ndarray:
    from ..io._store import read_checkpoint

    checkpoint = read_checkpoint(f)
    if checkpoint is None:
        raise ValueError(f"{f.filename} has no checkpoint to read its final particles from")
    return checkpoint["W"].astype(np.float64)


def store_endpoint(path, config: dict, problem=None) -> dict | None:
    """Descend from a finished run's final state to ``[landscape] grad_tol``, classify the end
    point and write ``/landscape`` into the run file (nothing if it is already there).

    Returns the stored attributes, or None when the run has no ``[landscape]`` stage.

    The start is the run's final particles, read from its checkpoint (``ValueError`` when the
    file has none). The file is updated crash-safely (``meanfield.io._store.updating``): it
    gains the group ``/landscape`` with the dataset ``end_point``, shape (m, d + 2), float64
    (the end point of the descent) and the attributes of the returned dict. A file that
    already has ``/landscape`` (stored before, or meanwhile by another process) is not
    changed.

    Parameters
    ----------
    path : path-like
        The run file (``<id>.h5``) of a finished run.
    config : dict
        The run's resolved config: its ``[landscape]`` table (``enabled``, ``grad_tol``,
        ``risk_threshold``, ``eig_tol``, ``step`` (None: ``[dynamics] step``), ``max_steps``,
        ``spectrum``, ``hessian``).
    problem : Problem, optional
        The run's problem, when the caller has it; default ``build(config).problem``.

    Returns
    -------
    dict or None
        The attributes of ``/landscape``: the fields of the :class:`EndPoint` of
        :func:`classify` (``kind``, ``risk``, ``grad_norm``, ``lambda_min``, ``lambda_max``,
        their error bounds, the thresholds ``grad_tol``, ``risk_threshold``, ``eig_tol`` and
        ``spectrum_method``) and of the :class:`PreciseDescent` (``steps``, ``rejected``,
        ``step``: its final step size, ``time``: the continuous time the descent travelled
        after the run's end, ``message``); read back from the file (numpy scalars) when ``/landscape`` was there
        already. None when ``[landscape]`` is not enabled or the run's status is not
        ``"complete"``.
    """
    settings = config.get("landscape", {})
    if not settings.get("enabled"):
        return None
    with open_run(path) as f:
        if "landscape" in f:
            return dict(f["landscape"].attrs)
        if f.attrs.get("status") != "complete":
            return None
        W = _final_W(f)
    if problem is None:
        from ..experiments._assembly import build

        problem = build(config).problem
    step = settings["step"] if settings["step"] is not None else config["dynamics"]["step"]
    descent = descend_to_precision(problem, W, settings["grad_tol"], step, settings["max_steps"])
    return _write_endpoint(path, settings, problem, descent)


def endpoint_writers(configs, problems, final_W) -> list:
    """The landscape stage for the members of an ensemble: one batched descent
    (:func:`meanfield.landscape._precise.descend_batch`, bitwise each member's descent alone),
    then each end point classified; returns per member a function that writes ``/landscape``
    into its open run file (``RunFile.close(..., also=...)``: in the copy that finishing writes
    anyway, instead of a second copy), or the exception that stopped its stage.

    Parameters
    ----------
    configs : list of dict
        The members' resolved configs (the same ``[landscape]`` and ``[dynamics]`` tables).
    problems : list of Problem
    final_W : list of ndarray, shape (m, d + 2)
        Their final particles (what each file's last checkpoint holds).

    Returns
    -------
    list of callable or Exception
        ``write(f)`` per member (``f`` an h5py File open for writing), or its error.
    """
    from ._precise import descend_batch

    settings = configs[0]["landscape"]
    step = settings["step"] if settings["step"] is not None else configs[0]["dynamics"]["step"]
    starts = np.stack([np.asarray(W, dtype=np.float64) for W in final_W])
    descents = descend_batch(problems, starts, settings["grad_tol"], step, settings["max_steps"])
    writers = []
    for problem, descent in zip(problems, descents):
        try:
            if isinstance(descent, Exception):
                raise descent
            writers.append(_landscape_writer(_endpoint_attrs(settings, problem, descent), descent.W))
        except Exception as error:  # noqa: BLE001 - one member's failure is its own
            writers.append(error)
    return writers


def _landscape_writer(attrs, end_point):
    def write(f):
        _write_landscape_group(f, attrs, end_point)

    return write


def _endpoint_attrs(settings, problem, descent) -> dict:
    """Classify a descent's end point: the attributes of ``/landscape``."""
    end = classify(problem, descent.W, grad_tol=settings["grad_tol"], risk_threshold=settings["risk_threshold"],
                   eig_tol=settings["eig_tol"], spectrum_method=settings["spectrum"],
                   hessian_method=settings["hessian"])
    attrs = end.as_dict()
    attrs.update(steps=descent.steps, rejected=descent.rejected, step=descent.step, time=descent.time,
                 message=descent.message)
    return attrs


def _write_landscape_group(f, attrs, end_point) -> None:
    group = f.create_group("landscape")
    group.create_dataset("end_point", data=end_point)
    for key, value in attrs.items():
        group.attrs[key] = value


def _write_endpoint(path, settings, problem, descent) -> dict:
    """Classify a descent's end point and write ``/landscape`` into the run file."""
    attrs = _endpoint_attrs(settings, problem, descent)
    with updating(path) as f:
        if "landscape" in f:  # another process stored it meanwhile
            return dict(f["landscape"].attrs)
        _write_landscape_group(f, attrs, descent.W)
    return attrs


def _merge_permuted(points, tol: float) -> int:
    """Number of classes of end points equal up to a permutation of neurons (rows).

    Two (m, p) end points are merged when min over permutations of max_i |A_i - B_pi(i)|_inf
    is below ``tol`` (optimal assignment on the row distances, then the largest matched
    distance); each point joins the first class whose representative it matches.
    """
    from scipy.optimize import linear_sum_assignment

    representatives = []
    for W in points:
        for R in representatives:
            cost = np.abs(W[:, None, :] - R[None, :, :]).max(axis=2)
            rows, cols = linear_sum_assignment(cost)
            if cost[rows, cols].max() < tol:
                break
        else:
            representatives.append(W)
    return len(representatives)


def _distinct_levels(values, rtol: float) -> int:
    values = np.sort(np.asarray(values))
    if values.size == 0:
        return 0
    return 1 + int(np.sum(np.diff(values) > rtol * np.maximum(np.abs(values[1:]), 1e-300)))


def census(out_dir, merge_tol: float = 1e-5, level_rtol: float = 1e-7) -> list[dict]:
    """One row per (k, n) (teacher neurons, student neurons) of the runs with ``/landscape``.

    Each row: k, n, d, runs, counts per kind, the fraction at spurious minima with its 95 %
    Clopper-Pearson interval (``scipy.stats.binomtest(...).proportion_ci(method="exact")``),
    the mean smallest Hessian eigenvalue and mean risk among spurious minima, ``distinct``
    (spurious end points merged when equal up to a permutation of neurons within
    ``merge_tol``) and ``levels`` (distinct risk values, relative tolerance ``level_rtol``:
    minima related by a symmetry of the teacher, e.g. permuting its orthonormal directions,
    share their risk).

    Parameters
    ----------
    out_dir : path-like
        A sweep directory; its finished run files (``*.h5``) that have ``/landscape`` are
        counted, the others left out.
    merge_tol : float
        Two spurious end points count as one when their largest coordinate difference, after
        the best permutation of neurons, is below ``merge_tol``.
    level_rtol : float
        Relative tolerance under which two spurious risks count as one level.

    Returns
    -------
    list of dict
        One row per (k, n, d), sorted by (k, n, d), with keys ``k``, ``n``, ``d`` (int),
        ``runs`` (int), ``kinds`` (dict: kind -> number of runs, for the kinds that occur),
        ``fraction``, ``ci_low``, ``ci_high`` (float: fraction at spurious minima and its 95 %
        interval), ``mean_lambda_min``, ``mean_risk`` (float, NaN without spurious minima),
        ``distinct`` and ``levels`` (int, 0 without spurious minima). Empty when no run has
        ``/landscape``.
    """
    from scipy.stats import binomtest

    groups = defaultdict(list)
    for path in _run_files(out_dir):
        with open_run(path) as f:
            if "landscape" not in f:
                continue
            config = json.loads(f.attrs["config"])
            g = f["landscape"]
            attrs = dict(g.attrs)
            attrs["end_point"] = g["end_point"][()] if attrs["kind"] == "spurious_minimum" else None
        key = (config["problem.teacher"]["k"], config["model"]["m"], config["model"]["d"])
        groups[key].append(attrs)
    rows = []
    for (k, n, d), runs in sorted(groups.items()):
        kinds = defaultdict(int)
        for run in runs:
            kinds[str(run["kind"])] += 1
        spurious = [run for run in runs if run["kind"] == "spurious_minimum"]
        interval = binomtest(len(spurious), len(runs)).proportion_ci(0.95, method="exact")
        rows.append({
            "k": k, "n": n, "d": d, "runs": len(runs), "kinds": dict(kinds),
            "fraction": len(spurious) / len(runs), "ci_low": float(interval.low), "ci_high": float(interval.high),
            "mean_lambda_min": float(np.mean([r["lambda_min"] for r in spurious])) if spurious else math.nan,
            "mean_risk": float(np.mean([r["risk"] for r in spurious])) if spurious else math.nan,
            "distinct": _merge_permuted([r["end_point"] for r in spurious], merge_tol),
            "levels": _distinct_levels([r["risk"] for r in spurious], level_rtol),
        })
    return rows


def census_table(rows) -> str:
    """The census rows as a text table.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`census`.

    Returns
    -------
    str
        A header line, a rule, one line per row (k, n, runs, counts per kind, fraction
        spurious with its interval, mean lambda_min, mean risk, distinct, levels; "-" for NaN)
        and a closing line that explains the columns; no trailing newline.
    """
    header = (f"{'k':>3} {'n':>3} {'runs':>5} {'global':>6} {'spur.':>5} {'saddle':>6} {'degen.':>6} {'n.conv':>6}"
              f"  {'fraction spurious [95% CI]':<28} {'mean lambda_min':>15} {'mean risk':>10} {'distinct':>8}"
              f" {'levels':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        kinds = r["kinds"]
        ci = f"{r['fraction']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lam = f"{r['mean_lambda_min']:.4e}" if math.isfinite(r["mean_lambda_min"]) else "-"
        risk = f"{r['mean_risk']:.4e}" if math.isfinite(r["mean_risk"]) else "-"
        lines.append(f"{r['k']:>3} {r['n']:>3} {r['runs']:>5} {kinds.get('global_minimum', 0):>6} "
                     f"{kinds.get('spurious_minimum', 0):>5} {kinds.get('saddle', 0):>6} "
                     f"{kinds.get('degenerate', 0):>6} {kinds.get('not_converged', 0):>6}  {ci:<28} {lam:>15} "
                     f"{risk:>10} {r['distinct']:>8} {r['levels']:>6}")
    lines.append("(fraction: Clopper-Pearson 95% interval; mean lambda_min and risk over spurious minima; distinct: "
                 "spurious end points up to permutation of neurons; levels: distinct spurious risk values)")
    return "\n".join(lines)


def _pair_key(config: dict) -> str:
    from ..experiments._config import canonical_json

    stripped = json.loads(json.dumps(config))
    stripped["run"]["seed"] = None
    return canonical_json(stripped)


def connectivity_missing(out_dir) -> dict:
    """Measure every pair (seeds 2i, 2i + 1 of otherwise equal configs with ``[connectivity]``)
    whose seed-2i file has no ``/connectivity`` yet. Returns counts measured / up_to_date /
    waiting (partner missing or unfinished).

    Each measured pair's risk along the paths of :func:`connectivity` (``n_points`` and
    ``match`` of the ``[connectivity]`` table), from the final particles of both runs (their
    checkpoints), is written crash-safely into the seed-2i file as ``/connectivity`` (layout
    in the module docstring; one that another process stored meanwhile is replaced).

    Parameters
    ----------
    out_dir : path-like
        A sweep directory; its finished run files with ``[connectivity]`` enabled and status
        ``"complete"`` are paired.

    Returns
    -------
    dict
        ``{"measured": int, "up_to_date": int, "waiting": int}``, counting the seed-2i runs
        (even seeds) measured now, already measured, and without a complete seed-2i + 1
        partner.
    """
    from ..experiments._assembly import build

    found = {}
    for path in _run_files(out_dir):
        with open_run(path) as f:
            config = json.loads(f.attrs["config"])
            if not config.get("connectivity", {}).get("enabled") or f.attrs.get("status") != "complete":
                continue
            found[(_pair_key(config), config["run"]["seed"])] = (path, config, "connectivity" in f)
    counts = {"measured": 0, "up_to_date": 0, "waiting": 0}
    for (key, seed), (path, config, done) in sorted(found.items()):
        if seed % 2:
            continue
        if done:
            counts["up_to_date"] += 1
            continue
        partner = found.get((key, seed + 1))
        if partner is None:
            counts["waiting"] += 1
            continue
        problem = build(config).problem
        with open_run(path) as f:
            W_A = _final_W(f)
        with open_run(partner[0]) as f:
            W_B = _final_W(f)
            partner_id = f.attrs["run_id"]
        settings = config["connectivity"]
        result = connectivity(problem, W_A, W_B, settings["n_points"], settings["match"])
        with updating(path) as f:
            if "connectivity" in f:
                del f["connectivity"]
            group = f.create_group("connectivity")
            group.attrs["partner_id"] = partner_id
            group.attrs["partner_seed"] = seed + 1
            group.attrs["n_points"] = settings["n_points"]
            group.attrs["risk_A"], group.attrs["risk_B"] = result["end_risks"]
            group.create_dataset("t", data=result["t"])
            if result["permutation"] is not None:
                group.create_dataset("permutation", data=result["permutation"])
            for name in PATH_NAMES:
                if name in result:
                    group.create_dataset(name, data=result[name]["risk"])
                    group.attrs[f"barrier_{name}"] = result[name]["barrier"]
        counts["measured"] += 1
    return counts


def connectivity_rows(out_dir) -> list[dict]:
    """Barriers per width m (and any other setting but the seed): mean, standard error and
    maximum over pairs, for each path with and without matching.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory; its finished run files that have ``/connectivity`` are read.

    Returns
    -------
    list of dict
        One row per group of pairs whose configs differ only in seed (so one per width m when
        nothing else varies), sorted by m, with keys ``m`` (int), ``pairs`` (int),
        ``end_risk`` (float: mean risk of both end points over the pairs), and for each path
        name of ``PATH_NAMES`` that was measured (``linear``, ``arc``, ``linear_matched``,
        ``arc_matched``) a tuple (mean, standard error, maximum) of its barriers, floats (the
        standard error is NaN for a single pair). Empty when no file has ``/connectivity``.
    """
    groups = defaultdict(list)
    for path in _run_files(out_dir):
        with open_run(path) as f:
            if "connectivity" not in f:
                continue
            config = json.loads(f.attrs["config"])
            attrs = dict(f["connectivity"].attrs)
        groups[(config["model"]["m"], _pair_key({**config, "model": {**config["model"], "m": None}}))].append(
            (attrs, config))
    rows = []
    for (m, _), pairs in sorted(groups.items(), key=lambda item: item[0][0]):
        row = {"m": m, "pairs": len(pairs), "end_risk": float(np.mean([[a["risk_A"], a["risk_B"]] for a, _ in pairs]))}
        for name in PATH_NAMES:
            values = np.array([a[f"barrier_{name}"] for a, _ in pairs if f"barrier_{name}" in a])
            if values.size:
                row[name] = (float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))
                             if values.size > 1 else math.nan, float(values.max()))
        rows.append(row)
    return rows


def connectivity_table(rows) -> str:
    """Barrier versus width as a text table.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`connectivity_rows`.

    Returns
    -------
    str
        A header line, a rule, one line per row (m, pairs, end risk, then "mean +- standard
        error" of the barrier for each path that any row has) and a closing line that defines
        the barrier; no trailing newline.
    """
    names = [n for n in PATH_NAMES if any(n in r for r in rows)]
    header = f"{'m':>6} {'pairs':>5} {'end risk':>10}  " + "  ".join(f"{n:>24}" for n in names)
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = []
        for n in names:
            if n in r:
                mean, sem, _ = r[n]
                cells.append(f"{mean:>11.3e} +- {sem:<9.2e}" if math.isfinite(sem) else f"{mean:>24.3e}")
            else:
                cells.append(" " * 24)
        lines.append(f"{r['m']:>6} {r['pairs']:>5} {r['end_risk']:>10.3e}  " + "  ".join(f"{c:>24}" for c in cells))
    lines.append("(barrier = max_t F(W(t)) - max(F(W_A), F(W_B)), mean +- standard error over pairs of seeds "
                 "(2i, 2i+1); _matched: B's particles permuted by optimal assignment first)")
    return "\n".join(lines)


def report_text(out_dir) -> str:
    """The census and connectivity tables of a sweep directory ("" when it has neither).

    Reads only: nothing is measured (:func:`after_runs` measures missing connectivity pairs
    first).

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.

    Returns
    -------
    str
        The :func:`census_table` and the :func:`connectivity_table` of the directory, each
        under a title line, separated by a blank line; a table without rows is left out.
    """
    parts = []
    rows = census(out_dir)
    if rows:
        parts.append("census of end points (meanfield.landscape)\n" + census_table(rows))
    pairs = connectivity_rows(out_dir)
    if pairs:
        parts.append("mode connectivity: barrier versus width\n" + connectivity_table(pairs))
    return "\n\n".join(parts)


def after_runs(out_dir, specs) -> str:
    """What ``meanfield run`` does after the runs of a file with a landscape stage: measure the
    missing connectivity pairs, then return the report text.

    Parameters
    ----------
    out_dir : path-like
        The sweep directory of the runs.
    specs : sequence of RunSpec
        The planned runs of the file (their ``config`` says whether ``[landscape]`` or
        ``[connectivity]`` is enabled).

    Returns
    -------
    str
        The text of :func:`report_text` after :func:`connectivity_missing` (which writes
        ``/connectivity`` into the run files) when some run has ``[connectivity]``; "" when no
        run has ``[landscape]`` or ``[connectivity]`` (nothing is read or written then).
    """
    if not any(s.config.get("landscape", {}).get("enabled") or s.config.get("connectivity", {}).get("enabled")
               for s in specs):
        return ""
    if any(s.config.get("connectivity", {}).get("enabled") for s in specs):
        connectivity_missing(out_dir)
    return report_text(out_dir)


def plot_census(rows):
    """Fraction of runs at spurious minima against k, one line per n - k, with the 95 %
    Clopper-Pearson intervals as error bars. Returns a matplotlib Figure (Agg, object API).

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`census` (keys ``k``, ``n``, ``fraction``, ``ci_low``, ``ci_high``).

    Returns
    -------
    matplotlib.figure.Figure
        6 x 4.2 inches at 110 dpi, not registered with pyplot; save it with
        ``figure.savefig(path)``. Nothing is written or shown.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.2), dpi=110)
    axes = figure.add_subplot()
    by_excess = defaultdict(list)
    for r in rows:
        by_excess[r["n"] - r["k"]].append(r)
    for excess, group in sorted(by_excess.items()):
        group = sorted(group, key=lambda r: r["k"])
        k = np.array([r["k"] for r in group])
        fraction = np.array([r["fraction"] for r in group])
        errors = np.array([[r["fraction"] - r["ci_low"] for r in group], [r["ci_high"] - r["fraction"] for r in group]])
        axes.errorbar(k, fraction, yerr=errors, marker="o", capsize=3, label=f"n = k + {excess}" if excess else "n = k")
    axes.set_xlabel("teacher neurons k")
    axes.set_ylabel("fraction of runs at spurious minima")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def plot_paths(result):
    """Risk along the paths of :func:`connectivity` (one line per path) against t.

    Here t is the path parameter in [0, 1], not the time of a run.

    Parameters
    ----------
    result : dict
        A result of :func:`connectivity`: ``"t"`` and, under the name of each path drawn
        (``linear``, ``arc``, ``linear_matched``, ``arc_matched``), a dict with ``"risk"`` and
        ``"barrier"``.

    Returns
    -------
    matplotlib.figure.Figure
        6 x 4.2 inches at 110 dpi, not registered with pyplot; each line's label gives the
        path's barrier. Nothing is written or shown.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.2), dpi=110)
    axes = figure.add_subplot()
    for name in PATH_NAMES:
        if name in result:
            axes.plot(result["t"], result[name]["risk"], label=f"{name} (barrier {result[name]['barrier']:.2e})")
    axes.set_xlabel("path parameter t")
    axes.set_ylabel("risk F(W(t))")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure
