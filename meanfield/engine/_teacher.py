"""Teacher networks and the labels they give to Gaussian inputs."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ._losses import CLASSIFICATION_LOSSES
from ._model import ACTIVATIONS, tile_rows


@dataclass(frozen=True, eq=False)
class Teacher:
    """A two-layer teacher f*(x) = sum_j c*_j sigma(a*_j . x + b*_j) with k neurons.

    Parameters
    ----------
    W : ndarray, shape (k, d + 2), float64
        Teacher neurons in the particle layout (a*, b*, c*). The output weights are absolute:
        a mean-field teacher (1/k) sum_j sigma(...) has c*_j = 1/k.
    activation : str
        The teacher's activation.
    """

    W: np.ndarray
    activation: str = "relu"

    def __post_init__(self):
        W = np.array(self.W, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] < 3 or W.shape[0] < 1:
            raise ValueError(f"Teacher.W must have shape (k, d + 2) with k >= 1, d >= 1, got {W.shape}")
        if not np.isfinite(W).all():
            raise ValueError("Teacher.W contains NaN or inf")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Teacher.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        W.setflags(write=False)
        object.__setattr__(self, "W", W)

    @property
    def d(self) -> int:
        """Input dimension d."""
        return self.W.shape[1] - 2

    @property
    def k(self) -> int:
        """Number of teacher neurons k."""
        return self.W.shape[0]

    @property
    def has_bias(self) -> bool:
        """Whether any teacher neuron has a nonzero bias."""
        return bool(np.any(self.W[:, self.d] != 0))

    @classmethod
    def orthonormal(cls, d: int, k: int, activation: str = "relu", readout: str | float = "mean",
                    rng: np.random.Generator | None = None) -> "Teacher":
        """Teacher with k orthonormal directions (Safran & Shamir) and equal output weights.

        Parameters
        ----------
        d, k : int
            Input dimension and number of neurons, k <= d.
        activation : str
        readout : "mean", "sum" or float
            Output weight of every neuron: 1/k (f* = (1/k) sum_j sigma(e_j . x)), 1, or the
            number given.
        rng : numpy.random.Generator, optional
            With a generator the directions are a random orthonormal k-frame; without one
            they are the first k standard basis vectors e_1, ..., e_k.
        """
        if not 1 <= k <= d:
            raise ValueError(f"an orthonormal teacher needs 1 <= k <= d, got k={k}, d={d}")
        if rng is None:
            directions = np.eye(d)[:k]
        else:
            q, r = np.linalg.qr(rng.standard_normal((d, k)))
            directions = (q * np.sign(np.diag(r))).T
        weight = {"mean": 1.0 / k, "sum": 1.0}.get(readout, readout)
        if isinstance(weight, str):
            raise ValueError(f"readout must be 'mean', 'sum' or a number, got {readout!r}")
        W = np.zeros((k, d + 2))
        W[:, :d] = directions
        W[:, d + 1] = weight
        return cls(W, activation)

    @classmethod
    def random(cls, d: int, k: int, rng: np.random.Generator, activation: str = "relu",
               bias: bool = False) -> "Teacher":
        """Random mean-field teacher: a*_j ~ N(0, I_d / d), b*_j ~ N(0, 1) if ``bias`` else 0,
        c*_j ~ N(0, 1) / k."""
        W = np.zeros((k, d + 2))
        W[:, :d] = rng.standard_normal((k, d)) / math.sqrt(d)
        if bias:
            W[:, d] = rng.standard_normal(k)
        W[:, d + 1] = rng.standard_normal(k) / k
        return cls(W, activation)

    def __call__(self, X) -> np.ndarray:
        """f*(x) for each row of X, shape (N,), float64."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty(X.shape[0])
        kernels.network_output(self.W, X, kernels.ACTIVATION_CODES[self.activation], 1.0, tile_rows(self.W.shape[0]),
                               out)
        return out

    def labels(self, X, rng: np.random.Generator | None, loss: str = "squared",
               noise_std: float = 0.0, flip_prob: float = 0.0) -> np.ndarray:
        """Labels of inputs X (N, d), float64.

        Squared loss: y = f*(x) + noise_std * eps, eps ~ N(0, 1). Logistic and exponential
        losses: y = sign(f*(x)) in {-1, +1} (sign(0) = +1), each flipped with probability
        ``flip_prob``. ``rng`` is needed only when there is noise.
        """
        f = self(X)
        if loss in CLASSIFICATION_LOSSES:
            y = np.where(f >= 0, 1.0, -1.0)
            if flip_prob > 0:
                y = np.where(rng.random(y.shape) < flip_prob, -y, y)
            return y
        if noise_std > 0:
            f = f + noise_std * rng.standard_normal(f.shape)
        return f
