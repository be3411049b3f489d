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
:func:`report` tabulates, over windows alpha <= j alpha_max / 4, per d the mean over seeds with a
percentile-bootstrap 95% interval and fits the rate in d (log-log slope of the mean, bootstrap interval over seeds:
:func:`meanfield.distance.rate`); d^(-1/2) is expected while the runs do not leave a plateau (the
time of a plateau's escape at finite d is set by O(d^(-1/2)) fluctuations that the ODE lacks, so
its error need not shrink).
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np

from ..distance import rate, rate_table
from ..engine._model import Model
from ..io._store import finished_run_files, open_run
from ..online import (
    alpha_of_time,
    generalisation_error,
    integrate_order_parameters,
    ode_learning_rates,
    stack_biases,
    stack_order_parameters,
)


def _model(config: dict) -> Model:
    mc = config["model"]
    return Model(mc["d"], mc["activation"], bias=mc["bias"], train_readout=mc["train_readout"],
                 scaling=mc["scaling"], alpha=mc["alpha"], dtype=mc["dtype"])


def applicable(config: dict) -> str:
    """Why a run's resolved config is not one the ODE describes, or "" when it is.

    The ODE of :func:`meanfield.online.integrate_order_parameters` needs: ``[record]
    order_parameters``, a population problem with the squared loss, a teacher of the student's
    activation, the ``"sgd"`` integrator with ``batch_size = 1`` and no weight decay (biases, of the
    student or the teacher, are in the ODE).

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
        (dynamics.get("batch_size") == 1, "batch_size is not 1 (the ODE is one sample per step)"),
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
        if status == "complete" and not config.get("experiment") and "problem.teacher" in config \
                and not applicable(config):
            found.append((path, config))
    return found


def has_runs(out_dir) -> bool:
    """Whether a directory holds runs for :func:`report`."""
    return bool(runs(out_dir))


def compare(path) -> dict:
    """One run against the ODE integrated from its own initial overlaps.

    Parameters
    ----------
    path : path-like
        A finished run file that :func:`applicable` accepts.

    Returns
    -------
    dict
        ``d``, ``seed``, ``eta``, ``eta_v`` (floats/ints); ``alpha`` (T,), the ODE time of each
        record; ``eps_run``, ``eps_ode`` (T,); ``Q_run``, ``Q_ode`` (T, K, K); ``R_run``, ``R_ode``
        (T, K, M); ``v_run``, ``v_ode`` (T, K); ``b_run``, ``b_ode`` (T, K), zeros without biases;
        the teacher's ``T`` (M, M), ``teacher_v`` and ``teacher_b`` (M,); ``eps_distance`` =
        max_t |eps_run - eps_ode| and ``R_distance`` = max_t ||R_run - R_ode||_F.
    """
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
    model = _model(config)
    d, step = model.d, config["dynamics"]["step"]
    Q, R, v = stack_order_parameters(series, m, k)
    b = stack_biases(series, m)
    T = teacher_W[:, :d] @ teacher_W[:, :d].T
    teacher_v, teacher_b = teacher_W[:, d + 1], teacher_W[:, d]
    eta, eta_v = ode_learning_rates(model, m, step)
    alpha = alpha_of_time(d, step, times)
    activation = model.activation
    # the biases train at the first layer's eta when the model has them (b stays 0 otherwise)
    ode = integrate_order_parameters(Q[0], R[0], v[0], T, teacher_v, eta, alpha,
                                     noise_std=config["problem"]["noise_std"], activation=activation,
                                     train_second_layer=model.train_readout, second_layer_learning_rate=eta_v,
                                     b0=b[0], teacher_b=teacher_b, train_bias=model.bias)
    eps_run = np.array([generalisation_error(q, r, T, w, teacher_v, activation, b=bk, teacher_b=teacher_b)
                        for q, r, w, bk in zip(Q, R, v, b)])
    return {"d": d, "seed": config["run"]["seed"], "eta": eta, "eta_v": eta_v, "alpha": alpha,
            "eps_run": eps_run, "eps_ode": ode.generalisation_error, "Q_run": Q, "Q_ode": ode.Q,
            "R_run": R, "R_ode": ode.R, "v_run": v, "v_ode": ode.v, "b_run": b, "b_ode": ode.b,
            "T": T, "teacher_v": teacher_v, "teacher_b": teacher_b,
            "eps_distance": float(np.max(np.abs(eps_run - ode.generalisation_error))),
            "R_distance": float(np.max(np.linalg.norm(R - ode.R, axis=(1, 2))))}


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


def report(out_dir, n_boot: int = 2000, windows: int = 4) -> str:
    """The table of ``meanfield report DIR`` for online-SGD runs against the ODE (module docstring).

    Runs are grouped by every config value but the seed, ``model.d`` and ``dynamics.step`` (the
    step scales as 1/d at a fixed ODE learning rate). For each group and each window alpha <=
    j alpha_max / windows (j = 1..windows; the last is the whole run): one row per d with the
    mean over seeds of D_eps and D_R over the window and their bootstrap 95% intervals, then the
    fitted rate in d of each. The windows separate the part of a run that the ODE follows to
    O(d^(-1/2)) from a plateau's escape, whose time is not (module docstring).

    Parameters
    ----------
    out_dir : path-like
    n_boot : int
        Bootstrap resamples for the intervals and the rates.
    windows : int
        Number of time windows.

    Returns
    -------
    str
        "" when the directory has no such runs.
    """
    found = runs(out_dir)
    if not found:
        return ""
    groups = defaultdict(list)
    for path, config in found:
        key = json.loads(json.dumps(config))
        key["model"].pop("d")
        key["dynamics"].pop("step")
        key["run"].pop("seed")
        groups[json.dumps(key, sort_keys=True, default=str)].append(compare(path))
    blocks = []
    for members in groups.values():
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
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
