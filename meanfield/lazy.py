"""Lazy versus active training: observables stored next to the trajectories, and their report.

A run with ``[lazy] test_samples = n`` gets, once it is finished, three series measured from
its recorded particles at every recorded time and written into its file:

``/observables/displacement``
    |W(t) - W(0)| / |W(0)| (Frobenius norms over all coordinates)
``/observables/test_risk``
    (1/n) sum_j l(f_t(x_j), y_j) on a held-out sample of n inputs x ~ N(0, I_d) labelled by
    the run's teacher (same label noise as the training labels), drawn from the run's own
    random stream 3; f_t = alpha h(W(t)) for a network run, alpha T(W(t)) for a tangent-model
    run. This is the loss of the predictor the loss sees, not divided by alpha^2 (unlike
    ``risk``, the training objective (1/alpha^2) E l(alpha h, y)), so it compares across alpha.
``/observables/tangent_distance``
    with ``[lazy] tangent = true``: sqrt((1/n) sum_j (alpha h(W(t), x_j) - alpha T(W_T(t), x_j))^2)
    on the same sample, W_T the particles of the paired tangent-model run (attribute
    ``tangent_id``)

``[lazy] tangent = true`` pairs the run with a tangent-model run: the same config with
``[problem] tangent = true`` (same seed, hence the same W0, data and minibatches), planned
next to it like the ``[limit]`` references. Pairing separate runs rather than stepping the
tangent model inside the network's run keeps each run one state, one integrator and one
checkpoint, so sweeps, shards, Slurm arrays and resume-after-kill work for both unchanged.
The distance is measured once both are finished (``meanfield run`` does it at the end,
``meanfield report`` measures what is missing).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from .engine._losses import LOSS_ENTRIES
from .engine._model import Model
from .engine._tangent import tangent_predict

# The held-out sample and its measure are assembled with the run (meanfield.experiments._assembly); their
# public names stay here, on the lazy-training page.
from .experiments._assembly import HeldOutRisk, held_out_sample  # noqa: F401
from .experiments._config import canonical_json, tangent_config
from .io._store import finished_run_files, open_run, updating

SERIES = ("displacement", "test_risk", "tangent_distance")


def _model(config: dict) -> Model:
    mc = config["model"]
    return Model(mc["d"], mc["activation"], bias=mc["bias"], train_readout=mc["train_readout"],
                 scaling=mc["scaling"], alpha=mc["alpha"], dtype=mc["dtype"])


def _load(path) -> dict:
    with open_run(path) as f:
        position = f["particles/neurons/position"]
        tangent = f["observables/tangent_distance"].attrs.get("tangent_id") \
            if "observables/tangent_distance" in f else None
        return {
            "config": json.loads(f.attrs["config"]),
            "id": f.attrs["run_id"],
            "steps": position["step"][()],
            "times": position["time"][()],
            "particles": position["value"][()].astype(np.float64),
            "teacher": f["parameters/teacher/position"][()],
            "measured": "observables/test_risk" in f,
            "tangent_id": tangent,
        }


def predictions(config: dict, particles, X) -> np.ndarray:
    """The predictor f_t(x) the loss sees at every record: alpha h(W(t), x) for a network run,
    alpha T(W(t), x) (tangent model at the first record) for a tangent-model run.

    Parameters
    ----------
    config : dict
        The run's resolved config.
    particles : ndarray, shape (T, m, d + 2)
        Recorded particles; record 0 is t = 0.
    X : ndarray, shape (n, d)

    Returns
    -------
    ndarray, shape (T, n), float64
    """
    model = _model(config)
    if config["problem"].get("tangent"):
        return np.array([tangent_predict(model, W, particles[0], X) for W in particles], dtype=np.float64)
    return np.array([model.predict(W, X) for W in particles], dtype=np.float64)


def compute(path, tangent_path=None) -> dict:
    """The lazy observables of one finished run (and its distance to the paired tangent run).

    Reads the files only; :func:`write` stores the result.

    Parameters
    ----------
    path : path-like
        The run file of a finished ``[lazy]`` run with recorded particles, the first record at
        step 0 (``ValueError`` otherwise).
    tangent_path : path-like, optional
        The file of its paired tangent-model run (``[lazy] tangent = true``); without it no
        ``tangent_distance`` is measured.

    Returns
    -------
    dict
        name -> (steps (T,), times (T,), values (T,)) for ``displacement``, ``test_risk`` and,
        with ``tangent_path``, ``tangent_distance`` (at the records common to both runs),
        plus ``"_tangent_id"``.
        Steps are the integer step counts of the records, times their continuous times t
        (float64), values float64 (T: the run's records, fewer for ``tangent_distance`` when
        the two runs recorded different steps); ``"_tangent_id"`` is the tangent run's id
        (str), present only with ``tangent_path``.
    """
    run = _load(path)
    config = run["config"]
    W = run["particles"]
    if run["steps"][0] != 0:
        raise ValueError(f"{path}: the first recorded particles are not at t = 0")
    displacement = np.linalg.norm(W - W[0], axis=(1, 2)) / np.linalg.norm(W[0])
    X, y = held_out_sample(config, run["teacher"])
    f = predictions(config, W, X)
    test_risk = LOSS_ENTRIES[config["problem"]["loss"]].value(f, y[None, :]).mean(axis=1)
    results = {"displacement": (run["steps"], run["times"], displacement),
               "test_risk": (run["steps"], run["times"], test_risk)}
    if tangent_path is not None:
        partner = _load(tangent_path)
        steps, mine, theirs = np.intersect1d(run["steps"], partner["steps"], return_indices=True)
        g = predictions(partner["config"], partner["particles"], X)
        distance = np.sqrt(np.mean((f[mine] - g[theirs]) ** 2, axis=1))
        results["tangent_distance"] = (steps, run["times"][mine], distance)
        results["_tangent_id"] = partner["id"]
    return results


def write(path, results: dict) -> None:
    """Store the series under ``/observables/<name>`` of a finished run file (replacing old ones).

    Each series of ``SERIES`` found in ``results`` becomes the group ``/observables/<name>``
    with datasets ``step`` (int64), ``time`` (float64, the continuous time t, a dimension
    scale of ``value``) and ``value`` (float64); ``tangent_distance`` gets the attribute
    ``tangent_id``. The file is updated crash-safely (``meanfield.io._store.updating``).

    Parameters
    ----------
    path : path-like
        The finished run file, changed in place.
    results : dict
        A result of :func:`compute`.
    """
    with updating(path) as f:
        for name in SERIES:
            if name not in results:
                continue
            if f"observables/{name}" in f:
                del f[f"observables/{name}"]
            steps, times, values = results[name]
            g = f.create_group(f"observables/{name}")
            g.create_dataset("step", data=np.asarray(steps, dtype=np.int64))
            time_ds = g.create_dataset("time", data=np.asarray(times, dtype=np.float64))
            value = g.create_dataset("value", data=np.asarray(values, dtype=np.float64))
            time_ds.make_scale("time")
            value.dims[0].attach_scale(time_ds)
            if name == "tangent_distance":
                g.attrs["tangent_id"] = results["_tangent_id"]


def runs(out_dir) -> list[tuple[str, dict, str | None]]:
    """(file, config, paired tangent-model file or None) of every finished ``[lazy]`` run.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.

    Returns
    -------
    list of (str, dict, str or None)
        In file-name order, for every run file of the directory with status ``"complete"``
        and a ``[lazy]`` role (``[lazy] test_samples`` set; network and tangent-model runs
        alike): its path, its resolved config, and the path of its paired tangent-model run,
        None when the run has ``[lazy] tangent = false`` (tangent-model runs included) or
        its tangent-model run is not complete.
    """
    out_dir = os.fspath(out_dir)
    found, tangents = [], {}
    for path in finished_run_files(out_dir):
        with open_run(path) as f:
            config = json.loads(f.attrs["config"])
            status = f.attrs["status"]
        if status != "complete" or not config.get("lazy", {}).get("role"):
            continue
        found.append((path, config))
        if config["lazy"]["role"] == "tangent":
            tangents[canonical_json(config)] = path
    return [(path, config, tangents.get(canonical_json(tangent_config(config))) if config["lazy"]["tangent"]
             else None) for path, config in found]


def compute_missing(out_dir) -> dict:
    """Measure every finished ``[lazy]`` run that lacks its series (or whose tangent distance
    is missing or refers to another tangent run).

    Each such run is measured by :func:`compute` and its series written into its file by
    :func:`write`.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory (its runs as listed by :func:`runs`).

    Returns
    -------
    dict
        counts: ``measured``, ``up_to_date``, ``waiting`` (the paired tangent run is not finished;
        displacement and test risk are measured meanwhile).
    """
    counts = {"measured": 0, "up_to_date": 0, "waiting": 0}
    for path, config, tangent_path in runs(out_dir):
        with open_run(path) as f:
            measured = "observables/test_risk" in f
            current = f["observables/tangent_distance"].attrs.get("tangent_id") \
                if "observables/tangent_distance" in f else None
        wanted = None
        if tangent_path is not None:
            with open_run(tangent_path) as f:
                wanted = f.attrs["run_id"]
        if config["lazy"]["tangent"] and tangent_path is None:
            counts["waiting"] += 1
        if measured and current == wanted:
            counts["up_to_date"] += 1
            continue
        write(path, compute(path, tangent_path))
        counts["measured"] += 1
    return counts


def has_lazy(out_dir) -> bool:
    """Whether a directory holds finished ``[lazy]`` runs.

    Parameters
    ----------
    out_dir : path-like
        Any path; a path that is not a directory gives False.

    Returns
    -------
    bool
        True when :func:`runs` lists at least one run.
    """
    return os.path.isdir(out_dir) and bool(runs(out_dir))


def collect(out_dir) -> list[dict]:
    """One record per finished ``[lazy]`` run: path, role, alpha (resolved), tau, seed, m,
    and the stored series (times, displacement, test_risk, tangent_distance or None).

    Reads the files only; runs not measured yet (no ``/observables/test_risk``) are left out.

    Parameters
    ----------
    out_dir : path-like
        A sweep directory.

    Returns
    -------
    list of dict
        Keys ``path`` (str), ``role`` (``"network"`` or ``"tangent"``), ``config`` (dict),
        ``alpha`` (float, the output scale for the run's width), ``tau`` (float, the init
        scale), ``seed`` and ``m`` (int), ``times`` (ndarray (T,), float64: continuous times t
        of the records of ``test_risk``), and ``displacement``, ``test_risk`` (ndarray (T,),
        float64) and ``tangent_distance`` (ndarray, float64, at the records common to both
        runs) or None when a series is not stored.
    """
    records = []
    for path, config, _ in runs(out_dir):
        with open_run(path) as f:
            if "observables/test_risk" not in f:
                continue
            series = {name: f[f"observables/{name}/value"][()] if f"observables/{name}" in f else None
                      for name in SERIES}
            times = f["observables/test_risk/time"][()]
        records.append({"path": path, "role": config["lazy"]["role"], "config": config,
                        "alpha": _model(config).alpha_value(config["model"]["m"]), "tau": config["init"]["tau"],
                        "seed": config["run"]["seed"], "m": config["model"]["m"], "times": times, **series})
    return records


def _scale(records) -> str:
    """The parameter the experiment varies: alpha, or the init scale tau."""
    return "alpha" if len({r["alpha"] for r in records}) > 1 or len({r["tau"] for r in records}) == 1 else "tau"


def _mean_series(members, name):
    length = min(len(r[name]) for r in members)
    return members[0]["times"][:length], np.mean([r[name][:length] for r in members], axis=0)


def table(records) -> str:
    """Final-time values, mean over seeds, one row per (alpha or tau, width m, model).

    The first column is alpha when the records have several alphas or a single tau, tau
    otherwise.

    Parameters
    ----------
    records : list of dict
        Records of :func:`collect`.

    Returns
    -------
    str
        A header line, one line per group (scale, m, model, number of seeds, last recorded
        time t, then the means of test_risk, displacement and, for paired runs,
        tangent_distance at the last record) and a closing line; ``"lazy: no measured runs"``
        when ``records`` is empty. No trailing newline.
    """
    if not records:
        return "lazy: no measured runs"
    key = _scale(records)
    groups = defaultdict(list)
    for r in records:
        groups[(r[key], r["m"], r["role"])].append(r)
    lines = [f"{key:>8}  {'m':>6}  {'model':<8}  {'seeds':>5}  {'t':>8}  {'test_risk':>10}  {'displacement':>12}  "
             f"{'tangent_distance':>16}"]
    for (scale, m, role), members in sorted(groups.items()):
        distance = [r["tangent_distance"][-1] for r in members if r["tangent_distance"] is not None]
        line = (f"{scale:>8g}  {m:>6}  {role:<8}  {len(members):>5}  {members[0]['times'][-1]:>8.4g}  "
                f"{np.mean([r['test_risk'][-1] for r in members]):>10.4e}  "
                f"{np.mean([r['displacement'][-1] for r in members]):>12.4e}  "
                + (f"{np.mean(distance):>16.4e}" if distance else ""))
        lines.append(line.rstrip())
    lines.append("(mean over seeds at the last recorded time; test_risk is the loss of the predictor "
                 "alpha h on the held-out sample)")
    return "\n".join(lines)


def report(out_dir, plots: bool = True) -> tuple[str, list[str]]:
    """Measure what is missing, then the table and (with matplotlib) the plots.

    Plots written into ``out_dir``: ``trajectories_<scale>=<value>.png`` for the smallest and
    the largest alpha (or tau) of the network runs (lowest seed, then largest m; each
    particle's input weights projected onto the teacher's first two directions, or onto the top
    two principal components of the final cloud when the teacher has one neuron),
    ``displacement.png`` (displacement against t, one line per value and width, mean over
    seeds) and ``tangent_distance.png`` (distance to the tangent model at the last recorded time
    against alpha or tau, log-log, one line per width, with its slope).

    Parameters
    ----------
    out_dir : path-like
        A sweep directory. Missing series are measured and written into its run files
        (:func:`compute_missing`) and the plots are written into it as PNG files (replacing
        files of the same names).
    plots : bool
        Write the plots. Without matplotlib the text says how to install it and nothing is
        plotted; without measured network runs there is nothing to plot.

    Returns
    -------
    (str, list of str)
        The table and the paths of the plots written.
    """
    counts = compute_missing(out_dir)
    records = collect(out_dir)
    text = (f"lazy: {counts['measured']} runs measured, {counts['up_to_date']} up to date, "
            f"{counts['waiting']} waiting for their tangent-model run\n" + table(records))
    written = []
    networks = [r for r in records if r["role"] == "network"]
    if not plots or not networks:
        return text, written
    try:
        from .analysis import (
            plot_displacement,
            plot_particle_trajectories,
            plot_tangent_distance,
            projection_directions,
        )
    except ImportError:
        return text + "\nplots: install 'meanfield[analysis]' (matplotlib)", written
    key = _scale(networks)
    values = sorted({r[key] for r in networks})
    widths = sorted({r["m"] for r in networks})
    for value in dict.fromkeys([values[0], values[-1]]):
        run = min((r for r in networks if r[key] == value), key=lambda r: (r["seed"], -r["m"]))
        with open_run(run["path"]) as f:
            particles = f["particles/neurons/position/value"][()]
            teacher = f["parameters/teacher/position"][()]
        directions, names = projection_directions(particles, teacher)
        figure = plot_particle_trajectories(particles, directions, axis_names=names,
                                            title=f"{key} = {value:g}, m = {run['m']}, seed {run['seed']}")
        written.append(_save(figure, out_dir, f"trajectories_{key}={value:g}.png"))
    curves = {}
    for value in values:
        for m in widths:
            members = [r for r in networks if r[key] == value and r["m"] == m]
            if members:
                label = f"{key} = {value:g}" + (f", m = {m}" if len(widths) > 1 else "")
                curves[label] = _mean_series(members, "displacement")
    written.append(_save(plot_displacement(curves), out_dir, "displacement.png"))
    curves = {}
    for m in widths:
        paired = [r for r in networks if r["tangent_distance"] is not None and r["m"] == m]
        scales = sorted({r[key] for r in paired})
        if scales:
            curves[f"m = {m}"] = (scales, [float(np.mean([r["tangent_distance"][-1] for r in paired
                                                          if r[key] == s])) for s in scales])
    if curves:
        figure = plot_tangent_distance(curves, xlabel=key, time=networks[0]["times"][-1])
        written.append(_save(figure, out_dir, "tangent_distance.png"))
    return text, written


def _save(figure, out_dir, name) -> str:
    path = os.path.join(os.fspath(out_dir), name)
    figure.savefig(path)
    return path


def slope(scales, values) -> float:
    """Least-squares slope of log(values) against log(scales) (NaN with fewer than 2 points).

    Parameters
    ----------
    scales, values : array_like, shape (n,)
        Points (scale, value); those with a scale or value that is not positive, or a value
        that is not finite, are left out.

    Returns
    -------
    float
        The fitted exponent p of values ~ scales^p; NaN when fewer than 2 points are kept.
    """
    scales, values = np.asarray(scales, float), np.asarray(values, float)
    keep = (scales > 0) & (values > 0) & np.isfinite(values)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(scales[keep]), np.log(values[keep]), 1)[0])
