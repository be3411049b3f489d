"""An :class:`~meanfield.online.OrderParameterTrajectory` as a run file of its own, and back.

The file is the store's ODE run file (:mod:`meanfield.io._ode_file`, docs/hdf5.md): the series of a
particle run with ``[record] order_parameters`` (``Q_k_l``, ``R_k_n``, ``v_k``, ``risk``) on the
same time axis, plus ``eps_g`` and ``alpha``, and no particles, so that
``meanfield.analysis.open_run`` reads either and their variables line up by name and time.
"""
from __future__ import annotations

import os

import numpy as np

from ..io._ode_file import read_ode_file, write_ode_file
from ._engine_map import order_parameter_names, stack_biases, stack_order_parameters
from ._ode import ODE_ATOL, ODE_RTOL, OrderParameterTrajectory, _averages

# The solver of integrate_order_parameters, named in the header.
SOLVER = "scipy.integrate.solve_ivp, DOP853"

LABELS = {"risk": "population risk F = (eps_g + sigma^2 / 2) / alpha_o^2 (as a particle run's risk)",
          "eps_g": "generalisation error eps_g = E (yhat - y0)^2 / 2, noise-free labels",
          "alpha": "ODE time alpha = steps / d"}


def write_trajectory(path, trajectory: OrderParameterTrajectory, learning_rate, *, activation="erf",
                     noise_std=0.0, train_second_layer=False, second_layer_learning_rate=None, rtol=ODE_RTOL,
                     atol=ODE_ATOL, model_alpha=1.0, time=None, steps=None, source=None, run_id=None,
                     batch_size=1, train_bias=False, bias_learning_rate=None) -> str:
    """Write an ODE solution as a run file of its own (atomically: a temporary name, renamed).

    The keyword arguments are those the trajectory was integrated with
    (:func:`integrate_order_parameters`); they are the file's header (``/parameters/ode`` and the
    ``ode`` section of its config) and :func:`read_ode_settings` gives them back.

    Parameters
    ----------
    path : str or path-like
        The file to write (``.h5``); its directory is created if needed.
    trajectory : OrderParameterTrajectory
        alpha (n,), Q (n, K, K), R (n, K, M), v (n, K), generalisation_error (n,), T (M, M),
        teacher_v (M,), b (n, K) and teacher_b (M,). The series ``b_k`` are written when the
        biases train or are not all zero (as a particle run of a model with biases records them).
    learning_rate : float
        eta.
    activation : str or GaussianAverages
        g; the header names it and how its averages are computed (``GaussianAverages.describe()``).
    noise_std : float
        Label noise sigma.
    train_second_layer : bool
    second_layer_learning_rate : float, optional
        eta_v; default eta (written as the value used).
    rtol, atol : float
        The solver's tolerances.
    model_alpha : float
        The output scale alpha_o of the engine's model the ODE is compared with (1 otherwise): the
        series ``risk`` is (eps_g + sigma^2 / 2) / alpha_o^2, the population risk F that a particle
        run records (:mod:`meanfield.online._engine_map`).
    time : array_like, shape (n,), optional
        The time axis: the engine's continuous time t of each point (an engine run's recorded
        times, so that its series and these line up exactly). Default: alpha itself.
    steps : array_like, shape (n,), int, optional
        The engine step of each point (default -1: none).
    batch_size : int
        B, samples per step (the eta^2 terms divided by B).
    train_bias : bool
        Whether the student biases trained.
    bias_learning_rate : float, optional
        eta_b; default eta (written as the value used).
    source : dict, optional
        The engine run the ODE was started from, scalars by name (``run_id``, ``file``,
        ``config_sha256``, ``d``, ``m``, ``seed``, ``step``, ...): the ``source`` section of the
        file's config (catalog columns ``source.<name>``) and its ``source_run_id``.
    run_id : str, optional
        Default: the file name without ``.h5``.

    Returns
    -------
    str
        ``path``.
    """
    averages = _averages(activation)
    alpha = np.asarray(trajectory.alpha, dtype=np.float64)
    Q, R, v = (np.asarray(x, dtype=np.float64) for x in (trajectory.Q, trajectory.R, trajectory.v))
    eps = np.asarray(trajectory.generalisation_error, dtype=np.float64)
    n, K, M = R.shape if R.ndim == 3 else (len(alpha), -1, -1)
    if alpha.shape != (n,) or Q.shape != (n, K, K) or v.shape != (n, K) or eps.shape != (n,) \
            or np.shape(trajectory.T) != (M, M) or np.shape(trajectory.teacher_v) != (M,):
        raise ValueError(f"inconsistent trajectory: alpha {alpha.shape}, Q {Q.shape}, R {R.shape}, v {v.shape}, "
                         f"eps_g {eps.shape}, T {np.shape(trajectory.T)}, teacher_v {np.shape(trajectory.teacher_v)}")
    time = alpha.copy() if time is None else np.asarray(time, dtype=np.float64)
    steps = np.full(n, -1, dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    if time.shape != (n,) or steps.shape != (n,):
        raise ValueError(f"time {time.shape} and steps {steps.shape} must be ({n},), one per point")
    eta = float(learning_rate)
    settings = {"activation": averages.activation, "K": int(K), "M": int(M), "learning_rate": eta,
                "second_layer_learning_rate": eta if second_layer_learning_rate is None
                else float(second_layer_learning_rate), "train_second_layer": bool(train_second_layer),
                "noise_std": float(noise_std), "batch_size": int(batch_size), "train_bias": bool(train_bias),
                "bias_learning_rate": eta if bias_learning_rate is None else float(bias_learning_rate),
                "model_alpha": float(model_alpha),
                "rtol": float(rtol),
                "atol": float(atol), "solver": SOLVER, "averages": averages.describe()}
    config = {"ode": settings}
    if source:
        config["source"] = dict(source)
    series = {"risk": (eps + 0.5 * float(noise_std) ** 2) / float(model_alpha) ** 2, "eps_g": eps, "alpha": alpha}
    b = np.asarray(trajectory.b, dtype=np.float64)
    bias = bool(train_bias) or bool(np.any(b != 0))
    values = np.concatenate([Q.reshape(n, -1), R.reshape(n, -1), v] + ([b] if bias else []), axis=1)
    series.update(zip(order_parameter_names(K, M, bias), values.T))
    if run_id is None:
        run_id = os.path.basename(os.fspath(path)).removesuffix(".h5")
    return write_ode_file(path, run_id, config, averages.describe(), settings,
                          {"T": trajectory.T, "teacher_v": trajectory.teacher_v, "teacher_b": trajectory.teacher_b},
                          steps, time, series, LABELS)


def read_trajectory(path) -> OrderParameterTrajectory:
    """The trajectory of an ODE run file (:func:`write_trajectory`), exactly as written.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    OrderParameterTrajectory
        alpha (n,), Q (n, K, K), R (n, K, M), v (n, K), generalisation_error (n,), T (M, M),
        teacher_v (M,), b (n, K) (zeros when the file has no b_k series), teacher_b (M,), float64.

    Raises
    ------
    ValueError
        The file is not an ODE run file.
    """
    data = read_ode_file(path)
    K, M = int(data["settings"]["K"]), int(data["settings"]["M"])
    series = data["series"]
    Q, R, v = stack_order_parameters(series, K, M)
    return OrderParameterTrajectory(alpha=series["alpha"], Q=Q, R=R, v=v, generalisation_error=series["eps_g"],
                                    T=data["arrays"]["T"], teacher_v=data["arrays"]["teacher_v"],
                                    b=stack_biases(series, K), teacher_b=data["arrays"]["teacher_b"])


def read_ode_settings(path) -> dict:
    """The settings an ODE run file was integrated with, as keyword arguments of
    :func:`integrate_order_parameters`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        ``learning_rate``, ``noise_std``, ``activation`` (name), ``train_second_layer``,
        ``second_layer_learning_rate``, ``batch_size``, ``train_bias``, ``bias_learning_rate``,
        ``rtol``, ``atol``. The rest of the header (K, M,
        model_alpha, solver, averages, the source run) is in the file's ``/parameters/ode`` and
        root attributes (``meanfield.io.read_ode_file``, or the attributes of
        ``meanfield.analysis.open_run``).
    """
    settings = read_ode_file(path)["settings"]
    return {"learning_rate": float(settings["learning_rate"]), "noise_std": float(settings["noise_std"]),
            "activation": str(settings["activation"]), "train_second_layer": bool(settings["train_second_layer"]),
            "second_layer_learning_rate": float(settings["second_layer_learning_rate"]),
            "batch_size": int(settings["batch_size"]), "train_bias": bool(settings["train_bias"]),
            "bias_learning_rate": float(settings["bias_learning_rate"]), "rtol": float(settings["rtol"]),
            "atol": float(settings["atol"])}
