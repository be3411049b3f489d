"""The map between meanfield's particle networks and the committee machines of the order-parameter
ODEs: overlaps from particles, the ODE's learning rates and its time alpha from an engine SGD run.

Engine (``meanfield.engine``): m particles (a_i, b_i, c_i), a_i in R^d, network
h(x) = s sum_i c_i sigma(a_i . x + b_i) with s = 1/m (``"mean_field"``) or 1 (``"sum"``), output
scale alpha_o (``Model.alpha``), objective F = (1 / alpha_o^2) E (1/2)(alpha_o h - y)^2, and one SGD
step of size eta_e on a fresh batch of B samples, w_i <- w_i + eta_e v_i with v_i = -m grad_{w_i}
F_batch on every trained coordinate (b_i trains when ``Model.bias``; otherwise b_i = 0). Teacher
f*(x) = sum_n c*_n sigma(a*_n . x + b*_n), label y = f* + sigma zeta.

ODE (``meanfield.online``): K = m students, M = k teacher neurons,

    w_k = sqrt(d) a_k,   v_k = alpha_o s c_k,   b_k = b_k,   w*_n = sqrt(d) a*_n,   v*_n = c*_n,
    b*_n = b*_n,

so that yhat = alpha_o h = sum_k v_k g(w_k . x / sqrt d + b_k) is exactly what the loss sees, and

    Q_kl = w_k . w_l / d = a_k . a_l,   R_kn = w_k . w*_n / d = a_k . a*_n,   T_nm = a*_n . a*_m.

One engine step with B = 1 is one ODE step: the velocities are (``kernels.finite_data_field``)
v_a = -(m / alpha_o^2)(yhat - y) v_k g'(lambda_k) x and v_b = -(m / alpha_o^2)(yhat - y) v_k
g'(lambda_k) (the same factor: d(c sigma(a . x + b)) / db = c sigma'), so w_k moves by
-sqrt(d) eta_e (m / alpha_o^2)(yhat - y) v_k g' x, which is the ODE's
-(eta / sqrt d) v_k g' (yhat - y) x, and b_k by -eta_e (m / alpha_o^2)(yhat - y) v_k g', the ODE's
-(eta_b / d) v_k g' (yhat - y), with

    eta   = eta_e m d / alpha_o^2                (first layer)
    eta_b = eta_e m d / alpha_o^2 = eta          (biases, when they train: the first layer's rate)
    eta_v = eta_e m s^2 d = eta alpha_o^2 s^2    (second layer, when the readout trains;
                                                  eta / m^2 for the mean-field scaling, alpha_o = 1)
    alpha = steps / d = t / (eta_e d) = t m / (eta alpha_o^2)     (t = steps eta_e, engine time)

For a fixed ODE eta the engine's step must then scale as eta_e = eta alpha_o^2 / (m d): at fixed
``dynamics.step`` a wider input dimension is a larger ODE learning rate. A batch of B > 1 samples
(the engine's velocity is the batch mean) keeps eta, eta_v and alpha = steps / d and divides the
eta^2 terms of dQ/dalpha by B: ``integrate_order_parameters(..., batch_size=B)``.
"""
from __future__ import annotations

import numpy as np

# Most series of [record] order_parameters (m^2 + m k + m, + m with biases): one HDF5 series per
# order parameter.
ORDER_PARAMETER_MAX_SERIES = 1200


def order_parameter_names(m: int, k: int, bias: bool = False) -> tuple[str, ...]:
    """The series of ``[record] order_parameters``: ``Q_k_l`` (m x m, row-major), ``R_k_n``
    (m x k), ``v_k`` (m), then, when the student has biases, ``b_k`` (m), indices from 0.

    Parameters
    ----------
    m, k : int
        Student width K = m and teacher width M = k.
    bias : bool
        Whether the student has (trained) biases (``Model.bias``).

    Returns
    -------
    tuple of str
        m^2 + m k + m names (+ m with biases).
    """
    return (tuple(f"Q_{i}_{j}" for i in range(m) for j in range(m))
            + tuple(f"R_{i}_{n}" for i in range(m) for n in range(k)) + tuple(f"v_{i}" for i in range(m))
            + (tuple(f"b_{i}" for i in range(m)) if bias else ()))


def readout_factor(model, m: int) -> float:
    """alpha_o s with v_k = alpha_o s c_k (module docstring): 1/m for the mean-field scaling with
    alpha_o = 1, 1 for the ``"sum"`` scaling."""
    return model.alpha_value(m) * model.output_scale(m)


def overlaps(model, W, teacher_W) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order parameters of particles in the ODE's normalisation (module docstring).

    Parameters
    ----------
    model : meanfield.Model
        The student's model (its d, scaling and output scale); biases: :func:`biases`.
    W : ndarray, shape (m, d + 2)
        Student particles (a, b, c).
    teacher_W : ndarray, shape (k, d + 2)
        Teacher neurons (a*, b*, c*).

    Returns
    -------
    Q : ndarray, shape (m, m), float64
        a_k . a_l = w_k . w_l / d.
    R : ndarray, shape (m, k), float64
        a_k . a*_n = w_k . w*_n / d.
    T : ndarray, shape (k, k), float64
        a*_n . a*_m.
    v : ndarray, shape (m,), float64
        alpha_o s c_k.
    teacher_v : ndarray, shape (k,), float64
        c*_n.
    """
    W = np.asarray(W, dtype=np.float64)
    teacher_W = np.asarray(teacher_W, dtype=np.float64)
    d, m = model.d, W.shape[0]
    a, a_star = W[:, :d], teacher_W[:, :d]
    return (a @ a.T, a @ a_star.T, a_star @ a_star.T, readout_factor(model, m) * W[:, d + 1],
            teacher_W[:, d + 1].copy())


def biases(model, W, teacher_W) -> tuple[np.ndarray, np.ndarray]:
    """The biases of student and teacher in the ODE's normalisation (b_k and b*_n unchanged).

    Parameters
    ----------
    model : meanfield.Model
    W : ndarray, shape (m, d + 2)
        Student particles (a, b, c); b is 0 when the model has no bias.
    teacher_W : ndarray, shape (k, d + 2)
        Teacher neurons (a*, b*, c*).

    Returns
    -------
    b : ndarray, shape (m,), float64
    teacher_b : ndarray, shape (k,), float64
    """
    d = model.d
    return (np.array(np.asarray(W, dtype=np.float64)[:, d]),
            np.array(np.asarray(teacher_W, dtype=np.float64)[:, d]))


def ode_learning_rates(model, m: int, step: float) -> tuple[float, float]:
    """(eta, eta_v) of the ODE for an engine SGD step ``step`` (eta_e) at width m, any batch size.

    eta = eta_e m d / alpha_o^2, eta_v = eta_e m s^2 d (module docstring); the biases, when they
    train, have eta_b = eta.

    Parameters
    ----------
    model : meanfield.Model
    m : int
    step : float
        The engine's step eta_e (``[dynamics] step``).

    Returns
    -------
    (float, float)
    """
    alpha_o = model.alpha_value(m)
    return step * m * model.d / alpha_o ** 2, step * m * model.output_scale(m) ** 2 * model.d


def alpha_of_time(d: int, step: float, t) -> np.ndarray:
    """The ODE time alpha = steps / d of engine time t = steps eta_e: alpha = t / (eta_e d).

    Parameters
    ----------
    d : int
        Input dimension.
    step : float
        eta_e.
    t : array_like
        Engine times.

    Returns
    -------
    ndarray, float64, the shape of t
    """
    return np.asarray(t, dtype=np.float64) / (float(step) * d)


class OrderParameterMeasure:
    """The measure of ``[record] order_parameters``: Q, R and v of the particles at each record
    (:func:`overlaps`), and b when the model has biases (:func:`biases`), as the scalar series of
    :func:`order_parameter_names`.

    Parameters
    ----------
    model : meanfield.Model
    m : int
        Width.
    teacher_W : ndarray, shape (k, d + 2)
    """

    def __init__(self, model, m: int, teacher_W):
        self.model = model
        self.teacher_W = np.asarray(teacher_W, dtype=np.float64)
        self.names = order_parameter_names(m, self.teacher_W.shape[0], model.bias)

    def __call__(self, state) -> dict:
        Q, R, _, v, _ = overlaps(self.model, state.W, self.teacher_W)
        parts = [Q.ravel(), R.ravel(), v] + ([biases(self.model, state.W, self.teacher_W)[0]] if self.model.bias
                                             else [])
        return {name: float(value) for name, value in zip(self.names, np.concatenate(parts))}


def stack_order_parameters(series: dict, m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q (T, m, m), R (T, m, k) and v (T, m) from the series of :func:`order_parameter_names`.

    Parameters
    ----------
    series : dict
        name -> ndarray (T,), the recorded values.
    m, k : int

    Returns
    -------
    (ndarray, ndarray, ndarray), float64
    """
    Q = np.stack([np.stack([series[f"Q_{i}_{j}"] for j in range(m)], axis=-1) for i in range(m)], axis=-2)
    R = np.stack([np.stack([series[f"R_{i}_{n}"] for n in range(k)], axis=-1) for i in range(m)], axis=-2)
    v = np.stack([series[f"v_{i}"] for i in range(m)], axis=-1)
    return (np.asarray(Q, dtype=np.float64), np.asarray(R, dtype=np.float64), np.asarray(v, dtype=np.float64))


def stack_biases(series: dict, m: int) -> np.ndarray:
    """b (T, m) from the series ``b_k`` of :func:`order_parameter_names`; zeros (T, m) where a run
    records none (a model without bias: b = 0), T read from ``Q_0_0``.

    Parameters
    ----------
    series : dict
        name -> ndarray (T,), the recorded values.
    m : int

    Returns
    -------
    ndarray, shape (T, m), float64
    """
    if "b_0" not in series:
        return np.zeros((len(series["Q_0_0"]), m))
    return np.asarray(np.stack([series[f"b_{i}"] for i in range(m)], axis=-1), dtype=np.float64)


def series_count(m: int, k: int, bias: bool = False) -> int:
    """m^2 + m k + m (+ m with biases), the number of series of ``[record] order_parameters``."""
    return m * m + m * k + m + (m if bias else 0)

