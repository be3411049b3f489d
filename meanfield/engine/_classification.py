"""Classification observables of a two-layer network trained on labels y = +-1 (SCIENCE.md
section 8): the parameter norm, the normalised margin, the training and held-out errors and the
change of the normalised predictor.

Definitions, for a state W of m particles w_i = (a_i, b_i, c_i) and the output seen by the loss
f(x) = alpha h_m(x) = alpha s sum_i c_i sigma(a_i . x + b_i) (``Model.predict``):

- first-layer norm   rho_1 = ( (1/m) sum_i (|a_i|^2 + b_i^2) )^(1/2)   (b_i = 0 without bias);
- readout norm       rho_c = ( (1/m) sum_i c_i^2 )^(1/2);
- norm               rho = (rho_1^2 + rho_c^2)^(1/2) with a trained readout, rho = rho_1 with a
  frozen one: the root-mean-square norm of the trained coordinates, the mean-field (1/m)
  scaling of the Euclidean norm;
- homogeneity degree L: for an activation with sigma(lambda z) = lambda sigma(z), lambda > 0
  (``relu``, ``linear``), scaling every trained coordinate by lambda scales f by lambda^L, with
  L = 2 for a trained readout and L = 1 for a frozen one; f / rho^L is then invariant under
  that scaling;
- normalised margin  gamma = min_n y_n f(x_n) / rho^L on the training set;
- error              the fraction of samples with y_n f(x_n) <= 0 (an output 0 counts as an
  error, so gamma > 0 exactly when the training error is 0);
- predictor change   |g_k - g_{k-1}| / |g_k|, g_k = f(X) / rho^L on the N training inputs at
  record k (Euclidean norms in R^N): the relative change of the normalised predictor between
  consecutive records.

Other activations are not positively homogeneous: f / rho^L then depends on the scale, so the
normalised margin and the predictor change are not recorded for them (the norms and errors are).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._model import Model

HOMOGENEOUS_ACTIVATIONS = ("relu", "linear")  # sigma(lambda z) = lambda sigma(z) for lambda > 0


def homogeneity_degree(model: Model) -> int | None:
    """The degree L of positive homogeneity of f = alpha h_m in the trained coordinates.

    Parameters
    ----------
    model : Model

    Returns
    -------
    int or None
        2 for a positively homogeneous activation (``relu``, ``linear``) with a trained
        readout (f is linear in c_i and in (a_i, b_i)), 1 with a frozen readout, None for
        any other activation (``sigmoid``, ``tanh``, ``erf``, ``softplus``, ``gelu``,
        ``normal_cdf``), which has no such degree.
    """
    if model.activation not in HOMOGENEOUS_ACTIVATIONS:
        return None
    return 2 if model.train_readout else 1


def parameter_norms(model: Model, W) -> dict:
    """The mean-field parameter norms of a state (module docstring).

    Parameters
    ----------
    model : Model
    W : ndarray, shape (m, d + 2)
        Particles (a, b, c) in rows.

    Returns
    -------
    dict
        ``norm_first_layer`` rho_1 = ((1/m) sum_i |a_i|^2 + b_i^2)^(1/2), ``norm_readout``
        rho_c = ((1/m) sum_i c_i^2)^(1/2), and ``norm`` rho, the norm of the trained
        coordinates ((rho_1^2 + rho_c^2)^(1/2) with a trained readout, rho_1 with a frozen
        one); floats, in the units of the particles.
    """
    W = np.asarray(W, dtype=np.float64)
    m = W.shape[0]
    first = math.sqrt(float(np.sum(W[:, : model.d + 1] ** 2)) / m)
    readout = math.sqrt(float(np.sum(W[:, model.d + 1] ** 2)) / m)
    norm = math.hypot(first, readout) if model.train_readout else first
    return {"norm": norm, "norm_first_layer": first, "norm_readout": readout}


class ClassificationMeasure:
    """The classification observables of a run, as a measure of :func:`meanfield.run` (module
    docstring for the definitions).

    Called with a state at each record, it returns the norms (``norm``,
    ``norm_first_layer``, ``norm_readout``), ``train_error`` on the training set (X, y),
    ``test_error`` on a held-out set when one is given, and, for a positively homogeneous
    activation, ``normalized_margin`` and ``predictor_change``. The outputs are computed in
    float64 whatever the model's dtype.

    ``predictor_change`` is NaN at the first record; a run resumed from a checkpoint takes up
    the previous record's predictor from the particles of that record, which the checkpoint
    keeps (:meth:`resume`), so a resumed run records the same values as one never stopped. It
    is also NaN, as ``normalized_margin`` is, when rho = 0, and when f = 0 on every training
    input.

    Parameters
    ----------
    model : Model
    X : ndarray, shape (N, d)
        Training inputs.
    y : ndarray, shape (N,)
        Training labels, +-1.
    X_test : ndarray, shape (N_test, d), optional
        Held-out inputs.
    y_test : ndarray, shape (N_test,), optional
        Held-out labels, +-1.
    """

    def __init__(self, model: Model, X, y, X_test=None, y_test=None):
        self.model = dataclasses.replace(model, dtype="float64")
        self.degree = homogeneity_degree(model)
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.test = None if X_test is None else (np.ascontiguousarray(X_test, dtype=np.float64),
                                                 np.asarray(y_test, dtype=np.float64))
        names = ["norm", "norm_first_layer", "norm_readout", "train_error"]
        if self.test is not None:
            names.append("test_error")
        if self.degree is not None:
            names += ["normalized_margin", "predictor_change"]
        self.names = tuple(names)
        self.previous = None

    def resume(self, W_record) -> None:
        """Take up the normalised predictor of the last record before a resume.

        Parameters
        ----------
        W_record : ndarray, shape (m, d + 2)
            The particles of that record (a checkpoint's ``record_W``).
        """
        if self.degree is None:
            return
        W = np.asarray(W_record, dtype=np.float64)
        scale = parameter_norms(self.model, W)["norm"] ** self.degree  # as __call__ computes it
        self.previous = self.model.predict(W, self.X) / scale if scale > 0 else None

    def __call__(self, state) -> dict:
        W = np.asarray(state.W, dtype=np.float64)
        values = parameter_norms(self.model, W)
        f = self.model.predict(W, self.X)
        values["train_error"] = float(np.mean(self.y * f <= 0))
        if self.test is not None:
            X_test, y_test = self.test
            values["test_error"] = float(np.mean(y_test * self.model.predict(W, X_test) <= 0))
        if self.degree is not None:
            scale = values["norm"] ** self.degree
            if scale > 0:
                normalized = f / scale
                values["normalized_margin"] = float(np.min(self.y * normalized))
                change = math.nan
                size = float(np.linalg.norm(normalized))
                if self.previous is not None and size > 0:
                    change = float(np.linalg.norm(normalized - self.previous)) / size
                values["predictor_change"] = change
                self.previous = normalized
            else:
                values["normalized_margin"] = values["predictor_change"] = math.nan
                self.previous = None
        return values
