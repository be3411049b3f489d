"""Engine online-SGD runs against the order-parameter ODEs (``meanfield report DIR``).

For every finished run of a directory that is online SGD on a population problem with a teacher
and records ``[record] order_parameters`` (:func:`applicable` says which), :func:`compare`
integrates :func:`meanfield.online.integrate_order_parameters` from the run's own overlaps at
t = 0 (Q0, R0, v0, and b0 when the model has biases; T, v* and b* from its teacher) with the ODE's
learning rates and time of the run (:mod:`meanfield.online._engine_map`: eta = eta_e m d /
alpha_o^2, the biases' eta_b = eta, eta_v = eta_e m s^2 d, alpha = t / (eta_e d)), and measures
two distances over the recorded times:

    D_eps = max_t |eps_g(run) - eps_g(ODE)|,    D_R = max_t ||R(run) - R(ODE)||_F,

where eps_g(run) is the generalisation error of the run's recorded overlaps
(:func:`meanfield.online.generalisation_error`, equal to its population risk minus sigma^2 / 2).

Each ODE is stored as a run file of its own, ``DIR/ode/<run id>.h5`` (:func:`ode_path`;
:func:`meanfield.online.write_trajectory`: the run's series names on the run's time axis, no
particles), and the distances are computed from the ODE read back from that file. A file that
holds the ODE of the run as it is now (same settings, source config, times, steps and initial
overlaps: :func:`store_ode`) is not integrated again, so a second report redoes nothing. The
subdirectory keeps the ODE files out of the directory's own catalog, so the width and seed
analyses of the particle runs see exactly the runs they saw before; ``open_sweep(DIR / "ode")``
lists the ODE files (``kind = "ode"``, columns ``ode.*`` and ``source.*``).
:func:`report` tabulates, over windows alpha <= j alpha_max / 4, per d the mean over seeds with a
percentile-bootstrap 95% interval and fits the rate in d (log-log slope of the mean, bootstrap interval over seeds:
:func:`meanfield.distance.rate`); d^(-1/2) is expected while the runs do not leave a plateau (the
time of a plateau's escape at finite d is set by O(d^(-1/2)) fluctuations that the ODE lacks, so
its error need not shrink). With matplotlib, :func:`report` draws eps_g(alpha) and R_kn(alpha) of
the runs against their ODEs (``online_ode_eps_g.png``, ``online_ode_R.png``).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from ..distance import rate, rate_table
from ..engine._model import Model
from ..io._ode_file import read_ode_file
from ..io._store import finished_run_files, open_run, remove_abandoned, replacing
from ..online import (
    ODE_ATOL,
    ODE_RTOL,
    GaussianAverages,
    alpha_of_time,
    generalisation_error,
    integrate_order_parameters,
    ode_learning_rates,
    read_trajectory,
    stack_biases,
    stack_order_parameters,
    write_trajectory,
)
from ..online._trajectory_file import SOLVER

ODE_DIR = "ode"  # DIR/ode/<run id>.h5: the ODE of each run (a subdirectory: not in DIR's catalog)


def _model(config: dict) -> Model:
    mc = config["model"]
    return Model(mc["d"], mc["activation"], bias=mc["bias"], train_readout=mc["train_readout"],
                 scaling=mc["scaling"], alpha=mc["alpha"], dtype=mc["dtype"])


def applicable(config: dict) -> str:
    """Why a run's resolved config is not one the ODE describes, or "" when it is.

    The ODE of :func:`meanfield.online.integrate_order_parameters` needs: ``[record]
    order_parameters``, a population problem with the squared loss, a teacher of the student's
    activation, the ``"sgd"`` integrator (any ``batch_size``: the ODE's eta^2 terms are divided by
    it) and no weight decay (biases, of the student or the teacher, are in the ODE).

    Parameters
    ----------
    config : dict
        A resolved config.

    Returns
    -------
    str
    """
    problem, dynamics, model = config["problem"], config["dynamics"], config["model"]
    teacher = config["problem.teacher"]
    checks = [
        (config["record"].get("order_parameters"), "[record] order_parameters is not set"),
        (problem["kind"] == "population", "not a population problem"),
        (problem["loss"] == "squared", "not the squared loss"),
        (teacher["activation"] == model["activation"], "the teacher's activation differs from the student's"),
        (dynamics["integrator"] == "sgd", 'not integrator = "sgd"'),
        (dynamics.get("batch_size") is not None, "no batch_size (online SGD draws fresh samples each step)"),
        (dynamics.get("weight_decay", 0.0) == 0.0, "weight decay"),
    ]
    return next((why for ok, why in checks if not ok), "")


def runs(out_dir) -> list[tuple[str, dict]]:
    """(path, resolved config) of every complete run of a directory that :func:`applicable` accepts.

    Parameters
    ----------
    out_dir : path-like

    Returns
    -------
    list of (str, dict), in file-name order
    """
    if not os.path.isdir(out_dir):
        return []
    found = []
    for path in finished_run_files(out_dir):
        with open_run(path) as f:
            config = json.loads(f.attrs["config"])
            status = f.attrs["status"]
            kind = f.attrs.get("kind", "")
        if status == "complete" and not kind and not config.get("experiment") and "problem.teacher" in config \
                and not applicable(config):
            found.append((path, config))
    return found


def has_runs(out_dir) -> bool:
    """Whether a directory holds runs for :func:`report`."""
    return bool(runs(out_dir))


def ode_path(path) -> str:
    """Where the ODE of the run file ``path`` is stored: ``<its directory>/ode/<its name>``.

    Parameters
    ----------
    path : path-like
        A run file ``DIR/<id>.h5``.

    Returns
    -------
    str
        ``DIR/ode/<id>.h5``.
    """
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, ODE_DIR, name)


def _read_run(path) -> dict:
    """What the ODE of a run needs from its file: its config, model, overlaps (T records),
    teacher, record times and steps."""
    with open_run(path) as f:
        config = json.loads(f.attrs["config"])
        why = applicable(config)
        if why:
            raise ValueError(f"{os.fspath(path)}: not a run the order-parameter ODE describes: {why}")
        teacher_W = f["parameters/teacher/position"][()].astype(np.float64)
        m, k = config["model"]["m"], teacher_W.shape[0]
        names = [name for name in f["observables"] if name[:2] in ("Q_", "R_", "v_", "b_")]
        series = {name: f[f"observables/{name}/value"][()] for name in names}
        times = f["observables/risk/time"][()]
        steps = f["observables/risk/step"][()]
        run_id = f.attrs["run_id"]
        config_sha256 = f.attrs.get("config_sha256", "")
    model = _model(config)
    d = model.d
    Q, R, v = stack_order_parameters(series, m, k)
    return {"path": os.fspath(path), "config": config, "model": model, "m": m, "k": k, "d": d,
            "step": config["dynamics"]["step"], "Q": Q, "R": R, "v": v, "b": stack_biases(series, m),
            "T": teacher_W[:, :d] @ teacher_W[:, :d].T, "teacher_v": teacher_W[:, d + 1],
            "teacher_b": teacher_W[:, d], "times": times, "steps": steps, "run_id": str(run_id),
            "config_sha256": str(config_sha256)}


def _ode_arguments(run: dict) -> dict:
    """Keyword arguments of :func:`meanfield.online.write_trajectory` (those of the integration
    and the header) for the ODE of a run read by :func:`_read_run`."""
    model, config = run["model"], run["config"]
    eta, eta_v = ode_learning_rates(model, run["m"], run["step"])
    return {"learning_rate": eta, "noise_std": config["problem"]["noise_std"], "activation": model.activation,
            "train_second_layer": model.train_readout, "second_layer_learning_rate": eta_v,
            "batch_size": config["dynamics"]["batch_size"], "train_bias": model.bias,
            "model_alpha": model.alpha_value(run["m"]),
            "time": run["times"], "steps": run["steps"],
            "source": {"run_id": run["run_id"], "file": os.path.basename(run["path"]),
                       "config_sha256": run["config_sha256"], "d": run["d"], "m": run["m"],
                       "seed": config["run"]["seed"], "step": run["step"]}}


def _up_to_date(target, run: dict, arguments: dict) -> bool:
    """Whether ``target`` holds the ODE of ``run`` as :func:`store_ode` would write it now: the
    same settings (the averages' method and the default tolerances included), source (the run's
    config hash), times, steps and initial overlaps."""
    try:
        data = read_ode_file(target)
    except (OSError, ValueError, KeyError):  # absent, damaged or not an ODE file: written anew
        return False
    stored = data["attrs"]["config"]
    ode, source = stored.get("ode", {}), stored.get("source", {})
    wanted = {key: arguments[key] for key in ("learning_rate", "noise_std", "activation", "train_second_layer",
                                              "second_layer_learning_rate", "batch_size", "train_bias",
                                              "model_alpha")}
    wanted.update(rtol=ODE_RTOL, atol=ODE_ATOL, solver=SOLVER, averages=GaussianAverages(run["model"].activation)
                  .describe())
    if any(ode.get(key) != json.loads(json.dumps(value)) for key, value in wanted.items()):
        return False
    if source != json.loads(json.dumps(arguments["source"])):
        return False
    series = data["series"]
    if not (np.array_equal(data["times"], run["times"]) and np.array_equal(data["steps"], run["steps"])):
        return False
    first = {name: values[:1] for name, values in series.items() if name[:2] in ("Q_", "R_", "v_", "b_")}
    Q, R, v = stack_order_parameters(first, run["m"], run["k"])
    return (np.array_equal(Q[0], run["Q"][0]) and np.array_equal(R[0], run["R"][0])
            and np.array_equal(v[0], run["v"][0]) and np.array_equal(stack_biases(first, run["m"])[0], run["b"][0])
            and np.array_equal(data["arrays"]["T"], run["T"])
            and np.array_equal(data["arrays"]["teacher_v"], run["teacher_v"])
            and np.array_equal(data["arrays"]["teacher_b"], run["teacher_b"]))


def store_ode(path, run: dict | None = None) -> tuple[str, bool]:
    """Integrate the ODE of a run from its overlaps at t = 0 and store it as ``DIR/ode/<run id>.h5``
    (:func:`ode_path`), unless that file holds it already.

    The ODE is :func:`meanfield.online.integrate_order_parameters` at the run's record times
    alpha = t / (eta_e d), with eta = eta_e m d / alpha_o^2, eta_v = eta_e m s^2 d, sigma of the
    problem, the default tolerances; the file (:func:`meanfield.online.write_trajectory`) has the
    run's times t and steps on its time axis, ``risk`` = (eps_g + sigma^2 / 2) / alpha_o^2 (the
    run's population risk) and, as its ``source``, the run's id, file, config hash, d, m, seed and
    step.

    Parameters
    ----------
    path : path-like
        A finished run file that :func:`applicable` accepts.
    run : dict, optional
        Its contents as :func:`_read_run` reads them (read here when not given).

    Returns
    -------
    (str, bool)
        The ODE file's path, and whether it was written now (False: it was up to date).
    """
    run = _read_run(path) if run is None else run
    target = ode_path(path)
    arguments = _ode_arguments(run)
    if _up_to_date(target, run, arguments):
        return target, False
    alpha = alpha_of_time(run["d"], run["step"], run["times"])
    ode = integrate_order_parameters(run["Q"][0], run["R"][0], run["v"][0], run["T"], run["teacher_v"],
                                     arguments["learning_rate"], alpha, noise_std=arguments["noise_std"],
                                     activation=arguments["activation"],
                                     train_second_layer=arguments["train_second_layer"],
                                     second_layer_learning_rate=arguments["second_layer_learning_rate"],
                                     batch_size=arguments["batch_size"], b0=run["b"][0], teacher_b=run["teacher_b"],
                                     train_bias=arguments["train_bias"])
    write_trajectory(target, ode, rtol=ODE_RTOL, atol=ODE_ATOL, run_id=run["run_id"], **arguments)
    return target, True


def compare(path) -> dict:
    """One run against the ODE integrated from its own initial overlaps, read back from its ODE
    run file (:func:`store_ode`, which writes the file when it is missing or out of date).

    Parameters
    ----------
    path : path-like
        A finished run file that :func:`applicable` accepts.

    Returns
    -------
    dict
        ``d``, ``seed``, ``eta``, ``eta_v`` (floats/ints); ``alpha`` (T,), the ODE time of each
        record; ``eps_run``, ``eps_ode`` (T,); ``Q_run``, ``Q_ode`` (T, K, K); ``R_run``, ``R_ode``
        (T, K, M); ``v_run``, ``v_ode`` (T, K); ``eps_distance`` = max_t |eps_run - eps_ode| and
        ``R_distance`` = max_t ||R_run - R_ode||_F; ``b_run``, ``b_ode`` (T, K), zeros without
        biases; the teacher's ``T`` (M, M), ``teacher_v`` and ``teacher_b`` (M,); ``ode_path``
        (the ODE's file) and ``ode_written`` (whether it was written by this call).
    """
    run = _read_run(path)
    target, written = store_ode(path, run)
    ode = read_trajectory(target)
    Q, R, v, T, teacher_v = run["Q"], run["R"], run["v"], run["T"], run["teacher_v"]
    b, teacher_b = run["b"], run["teacher_b"]
    activation = run["model"].activation
    eta, eta_v = ode_learning_rates(run["model"], run["m"], run["step"])
    eps_run = np.array([generalisation_error(q, r, T, w, teacher_v, activation, b=bk, teacher_b=teacher_b)
                        for q, r, w, bk in zip(Q, R, v, b)])
    return {"d": run["d"], "seed": run["config"]["run"]["seed"], "eta": eta, "eta_v": eta_v, "alpha": ode.alpha,
            "eps_run": eps_run, "eps_ode": ode.generalisation_error, "Q_run": Q, "Q_ode": ode.Q,
            "R_run": R, "R_ode": ode.R, "v_run": v, "v_ode": ode.v, "b_run": b, "b_ode": ode.b,
            "T": T, "teacher_v": teacher_v, "teacher_b": teacher_b,
            "eps_distance": float(np.max(np.abs(eps_run - ode.generalisation_error))),
            "R_distance": float(np.max(np.linalg.norm(R - ode.R, axis=(1, 2)))),
            "ode_path": target, "ode_written": written}


def bootstrap_mean(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of values and its percentile-bootstrap interval (resampling with replacement).

    Parameters
    ----------
    values : array_like, shape (n,)
    n_boot : int
    seed : int
    level : float

    Returns
    -------
    (mean, low, high) : floats (low = high = mean for one value)
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(low), float(high)


def _distances(result: dict, alpha_cut: float) -> tuple[float, float]:
    """(max |eps_run - eps_ODE|, max ||R_run - R_ODE||_F) over the records with alpha <= alpha_cut."""
    keep = result["alpha"] <= alpha_cut * (1 + 1e-9)
    eps = np.abs(result["eps_run"] - result["eps_ode"])[keep]
    R = np.linalg.norm(result["R_run"] - result["R_ode"], axis=(1, 2))[keep]
    return float(eps.max()), float(R.max())


def report(out_dir, n_boot: int = 2000, windows: int = 4, plots: bool = True) -> tuple[str, list[str]]:
    """The table and figures of ``meanfield report DIR`` for online-SGD runs against the ODE
    (module docstring).

    Every run's ODE is stored first (:func:`store_ode`: written when missing or out of date) and
    read back. Runs are grouped by every config value but the seed, ``model.d`` and
    ``dynamics.step`` (the step scales as 1/d at a fixed ODE learning rate). For each group and
    each window alpha <= j alpha_max / windows (j = 1..windows; the last is the whole run): one
    row per d with the mean over seeds of D_eps and D_R over the window and their bootstrap 95%
    intervals, then the fitted rate in d of each. The windows separate the part of a run that
    the ODE follows to O(d^(-1/2)) from a plateau's escape, whose time is not (module docstring).

    Parameters
    ----------
    out_dir : path-like
    n_boot : int
        Bootstrap resamples for the intervals and the rates.
    windows : int
        Number of time windows.
    plots : bool
        Draw, per group, ``online_ode_eps_g.png`` and ``online_ode_R.png`` in ``out_dir``
        (:func:`plot_eps` and :func:`plot_overlaps`; ``_<j>`` before ``.png`` for the j-th
        group when there are several), written under a temporary name and renamed. Without
        matplotlib the text says how to install it.

    Returns
    -------
    (str, list of str)
        The report's text ("" when the directory has no such runs) and the paths of the
        figures written.
    """
    found = runs(out_dir)
    if not found:
        return "", []
    remove_abandoned(os.path.join(os.fspath(out_dir), ODE_DIR))  # temporary files of a killed writer
    groups = defaultdict(list)
    for path, config in found:
        key = json.loads(json.dumps(config))
        key["model"].pop("d")
        key["dynamics"].pop("step")
        key["run"].pop("seed")
        groups[json.dumps(key, sort_keys=True, default=str)].append(compare(path))
    results = [result for members in groups.values() for result in members]
    written = sum(result["ode_written"] for result in results)
    blocks = [f"ODE solutions: {written} written, {len(results) - written} up to date, in "
              f"{os.path.join(os.fspath(out_dir), ODE_DIR)}/<run id>.h5 (meanfield.analysis.open_run reads them)"]
    figures = []
    draw = plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            draw = False
            blocks.append("plots: install 'meanfield[analysis]' (matplotlib)")
    for index, members in enumerate(groups.values()):
        blocks.append(_table(members, n_boot, windows))
        if draw:
            suffix = f"_{index}" if len(groups) > 1 else ""
            for name, figure in ((f"online_ode_eps_g{suffix}.png", plot_eps(members)),
                                 (f"online_ode_R{suffix}.png", plot_overlaps(members))):
                path = os.path.join(os.fspath(out_dir), name)
                with replacing(path, suffix=".png") as tmp:
                    figure.savefig(tmp, dpi=120)
                figures.append(path)
    return "\n\n".join(blocks), figures


def _table(members: list[dict], n_boot: int, windows: int) -> str:
    """The table of one group of runs (:func:`report`)."""
    by_d = defaultdict(list)
    for result in members:
        by_d[result["d"]].append(result)
    dims = sorted(by_d)
    eta = members[0]["eta"]
    alpha_max = min(float(r["alpha"][-1]) for r in members)
    lines = [f"online SGD against the order-parameter ODE from each run's initial overlaps (eta = {eta:.4g}): "
             "max over the records with alpha <= cut, mean over seeds [bootstrap 95%]",
             f"{'alpha <=':>9}  {'d':>6}  {'seeds':>5}  {'max |eps_g - eps_ODE|':>34}  "
             f"{'max ||R - R_ODE||_F':>34}"]
    rows = []
    for j in range(1, windows + 1):
        cut = alpha_max * j / windows
        columns = ([], [])
        for d in dims:
            distances = np.array([_distances(r, cut) for r in by_d[d]])
            cells = []
            for i in range(2):
                columns[i].append(distances[:, i])
                mean, low, high = bootstrap_mean(distances[:, i], n_boot)
                cells.append(f"{mean:.3e} [{low:.3e}, {high:.3e}]")
            lines.append(f"{cut:>9.4g}  {d:>6}  {len(by_d[d]):>5}  {cells[0]:>34}  {cells[1]:>34}")
        if len(dims) < 2:
            continue
        for values, label in zip(columns, ("eps_g", "R")):
            table = np.full((len(dims), max(len(v) for v in values)), math.nan)
            for i, v in enumerate(values):
                table[i, :len(v)] = v
            fit = rate(np.array(dims, dtype=float), table, n_boot=n_boot) if np.nanmin(table) > 0 else None
            rows.append((f"{label}, alpha <= {cut:.4g}", fit))
    if rows:
        lines.append("rate in d, d^slope (-0.5 expected where the ODE holds; the 'widths' column is d):")
        lines.append(rate_table(rows))
    return "\n".join(lines)


def _by_d(members: list[dict]) -> tuple[list[int], dict]:
    """The d of a group, increasing, and its results by d, by seed."""
    by_d = defaultdict(list)
    for result in members:
        by_d[result["d"]].append(result)
    return sorted(by_d), {d: sorted(by_d[d], key=lambda r: r["seed"]) for d in by_d}


def plot_eps(members: list[dict]):
    """eps_g(alpha) of the runs of one group against their ODEs: a panel per d, a colour per seed,
    the run solid (eps_g of its recorded overlaps) and the ODE from its initial overlaps dashed,
    log scale in eps_g (the plateau and the specialisation).

    Parameters
    ----------
    members : list of dict
        :func:`compare` results of runs that differ in d, step and seed only.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    dims, by_d = _by_d(members)
    figure = Figure(figsize=(4.0 * len(dims), 3.6), layout="constrained")
    axes_row = figure.subplots(1, len(dims), sharey=True, squeeze=False)[0]
    colours = colormaps["tab10"]
    for axes, d in zip(axes_row, dims):
        for index, result in enumerate(by_d[d]):
            colour = colours(index % 10)
            axes.plot(result["alpha"], result["eps_run"], color=colour, linewidth=1.0)
            axes.plot(result["alpha"], result["eps_ode"], color=colour, linewidth=1.4, linestyle="--")
        axes.set_yscale("log")
        axes.set_xlabel("alpha = steps / d")
        axes.set_title(f"d = {d} ({len(by_d[d])} seeds)")
        axes.grid(True, which="both", alpha=0.3)
    axes_row[0].set_ylabel("eps_g")
    # Which line is which is said in the title: a legend would cover curves in some panel.
    figure.suptitle(f"online SGD (eta = {members[0]['eta']:.4g}): eps_g of each run (solid) and of the ODE "
                    "from its initial overlaps (dashed), a colour per seed")
    return figure


def plot_overlaps(members: list[dict], max_entries: int = 8):
    """R_kn(alpha) of the runs of one group against their ODEs: a row of panels per d, a panel per
    entry (k, n) (the first ``max_entries`` in row-major order), a colour per seed, the run solid
    and its ODE dashed.

    Parameters
    ----------
    members : list of dict
        :func:`compare` results of runs that differ in d, step and seed only.
    max_entries : int
        Most entries of R drawn.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    dims, by_d = _by_d(members)
    K, M = members[0]["R_run"].shape[1:]
    entries = [(k, n) for k in range(K) for n in range(M)][:max_entries]
    figure = Figure(figsize=(2.9 * len(entries), 2.4 * len(dims)), layout="constrained")
    grid = figure.subplots(len(dims), len(entries), sharex=True, sharey=True, squeeze=False)
    colours = colormaps["tab10"]
    for row, d in zip(grid, dims):
        for axes, (k, n) in zip(row, entries):
            for index, result in enumerate(by_d[d]):
                colour = colours(index % 10)
                axes.plot(result["alpha"], result["R_run"][:, k, n], color=colour, linewidth=1.0)
                axes.plot(result["alpha"], result["R_ode"][:, k, n], color=colour, linewidth=1.4, linestyle="--")
            axes.set_title(f"R_{k}{n}, d = {d}", fontsize="medium")
            axes.grid(True, alpha=0.3)
        row[0].set_ylabel("R_kn")
    for axes in grid[-1]:
        axes.set_xlabel("alpha = steps / d")
    shown = "" if len(entries) == K * M else f" (the first {len(entries)} of K M = {K * M} entries)"
    figure.suptitle(f"student-teacher overlaps R_kn{shown}: each run (solid) and the ODE from its initial "
                    "overlaps (dashed), a colour per seed")
    return figure
