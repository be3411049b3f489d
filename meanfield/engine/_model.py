"""Two-layer networks as particle clouds: the model, its column layout, and initialisation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ._activations import ACTIVATION_ENTRIES

ACTIVATIONS = tuple(ACTIVATION_ENTRIES)  # the registered activations (engine/_activations.py)
SCALINGS = ("mean_field", "sum")
DTYPES = ("float64", "float32")
TILE_SIZE = 512  # rows of data per tile in the finite-data Hessian kernels and the CUDA kernels

# Rows per sample tile of the CPU data kernels (field, output, tangent) at width m: about
# 2^22 pre-activations (a tile of 32 MiB in float64), between MIN_TILE_ROWS and
# MAX_TILE_ROWS. Each tile is two BLAS products and one parallel sweep, each a
# synchronisation of the threads; at m = 1000 the 512-row tile made 60 of them per step, and
# on a loaded 2-core machine the step took 297 ms against 109 ms with 2048 rows
# (benchmarks/CPU_RESULTS.md). The floor is low so that memory stays bounded at large m: a
# fixed 512 rows made each tile 4 GB at m = 10^6.
TILE_ENTRIES = 1 << 22
MIN_TILE_ROWS = 16
MAX_TILE_ROWS = 2048


def tile_rows(m: int) -> int:
    """Rows of data per tile of the CPU data kernels (``kernels.finite_data_field``,
    ``network_output``, ``tangent_field``, ``tangent_output``) for width m."""
    return int(min(MAX_TILE_ROWS, max(MIN_TILE_ROWS, TILE_ENTRIES // max(m, 1))))


@dataclass(frozen=True)
class Model:
    """A two-layer network whose m neurons are the particles of a measure.

    A particle is one row of the state ``W``, shape (m, p) with p = d + 2:

    ======== ================ ==========================================
    column   name             meaning
    ======== ================ ==========================================
    0 .. d-1 a                input weights
    d        b                bias (held at 0 when ``bias`` is False)
    d + 1    c                output weight (held fixed when frozen)
    ======== ================ ==========================================

    The network is h_m(x) = s * sum_i c_i sigma(a_i . x + b_i), with s = 1/m for the
    ``"mean_field"`` scaling and s = 1 for the unnormalised ``"sum"`` (frozen c_i = 1, the
    setting of Safran & Shamir; it is the 1/m model with c_i = m frozen). The loss sees
    alpha * h_m (SCIENCE.md section 1): the objective is F = (1 / alpha^2) E l(alpha h_m, y)
    and particles move with dw_i/dt = -m grad_{w_i} F in every scaling.

    Parameters
    ----------
    d : int
        Input dimension.
    activation : str
        One of ``relu``, ``sigmoid``, ``tanh``, ``erf`` (erf(z/sqrt 2)), ``softplus``,
        ``linear``, ``gelu`` (z Phi(z), Phi the standard normal CDF).
    bias : bool
        Whether the bias column b is trained (otherwise it stays 0).
    train_readout : bool
        Whether the output weights c are trained (otherwise they keep their initial value).
    scaling : str
        ``"mean_field"`` (1/m) or ``"sum"`` (unnormalised, requires a frozen readout).
    alpha : float or "sqrt_m"
        Output scale: 1 is the mean-field regime, large alpha the lazy regime, and
        ``"sqrt_m"`` (alpha = sqrt(m)) the standard / NTK parameterisation.
    dtype : str
        ``"float64"`` (default) or ``"float32"``.
    """

    d: int
    activation: str = "relu"
    bias: bool = False
    train_readout: bool = True
    scaling: str = "mean_field"
    alpha: float | str = 1.0
    dtype: str = "float64"

    def __post_init__(self):
        if not (isinstance(self.d, (int, np.integer)) and self.d >= 1):
            raise ValueError(f"Model.d must be an integer >= 1, got {self.d!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"Model.scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.scaling == "sum" and self.train_readout:
            raise ValueError("Model.scaling='sum' has the frozen readout c = 1: set train_readout=False")
        if isinstance(self.alpha, str):
            if self.alpha != "sqrt_m":
                raise ValueError(f"Model.alpha must be a positive number or 'sqrt_m', got {self.alpha!r}")
        elif not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"Model.alpha must be a positive number or 'sqrt_m', got {self.alpha!r}")
        if str(np.dtype(self.dtype)) not in DTYPES:
            raise ValueError(f"Model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))

    @property
    def p(self) -> int:
        """Coordinates per particle, d + 2."""
        return self.d + 2

    @property
    def activation_code(self) -> int:
        """The activation's integer code in the kernels (``kernels.ACTIVATION_CODES``)."""
        return kernels.ACTIVATION_CODES[self.activation]

    @property
    def trainable(self) -> np.ndarray:
        """Boolean mask of shape (p,): the columns that move."""
        mask = np.ones(self.p, dtype=bool)
        mask[self.d] = self.bias
        mask[self.d + 1] = self.train_readout
        return mask

    def output_scale(self, m: int) -> float:
        """s in h_m = s * sum_i c_i sigma(...): 1/m (mean field) or 1 (sum)."""
        return 1.0 / m if self.scaling == "mean_field" else 1.0

    def alpha_value(self, m: int) -> float:
        """alpha for width m (sqrt(m) for the standard parameterisation)."""
        return math.sqrt(m) if self.alpha == "sqrt_m" else float(self.alpha)

    def a(self, W):
        """Input weights, view of shape (m, d)."""
        return W[:, : self.d]

    def b(self, W):
        """Biases, view of shape (m,)."""
        return W[:, self.d]

    def c(self, W):
        """Output weights, view of shape (m,)."""
        return W[:, self.d + 1]

    def pack(self, a, b=None, c=None) -> np.ndarray:
        """State of shape (m, d + 2) from a (m, d), b (m,) and c (m,) (missing: 0 and 1)."""
        a = np.asarray(a)
        m = a.shape[0]
        W = np.zeros((m, self.p), dtype=self.dtype)
        W[:, : self.d] = a
        if b is not None:
            W[:, self.d] = b
        W[:, self.d + 1] = 1.0 if c is None else c
        return W

    def check_state(self, W, name: str = "W") -> np.ndarray:
        """W as a C-contiguous array of the model's dtype; a clear error on a wrong shape."""
        W = np.asarray(W)
        if W.ndim != 2 or W.shape[1] != self.p or W.shape[0] < 1:
            raise ValueError(f"{name} must have shape (m, d + 2) = (m, {self.p}) with m >= 1, got {W.shape}")
        return np.ascontiguousarray(W, dtype=self.dtype)

    def predict(self, W, X) -> np.ndarray:
        """The output seen by the loss, alpha * h_m(x), for each row of X.

        Parameters
        ----------
        W : ndarray, shape (m, d + 2)
        X : ndarray, shape (N, d)

        Returns
        -------
        ndarray, shape (N,), the model's dtype
        """
        W = self.check_state(W)
        X = np.ascontiguousarray(X, dtype=self.dtype)
        m = W.shape[0]
        out = np.empty(X.shape[0], dtype=self.dtype)
        kernels.network_output(W, X, self.activation_code, self.output_scale(m), tile_rows(m), out)
        return self.alpha_value(m) * out


A_LAWS = ("gaussian", "sphere")
C_LAWS = ("gaussian", "sign", "zero", "one")
B_LAWS = ("zero", "gaussian")


@dataclass(frozen=True)
class Init:
    """The initial law mu_0 of the particles (SCIENCE.md section 1).

    Parameters
    ----------
    a : str
        ``"gaussian"``: a ~ tau * N(0, I_d / d); ``"sphere"``: uniform on the sphere of
        radius tau.
    c : str
        ``"gaussian"``: c ~ tau * N(0, 1); ``"sign"``: c = +-tau with equal probability;
        ``"zero"``; ``"one"`` (c = 1). Ignored for the ``"sum"`` scaling, where c = 1.
    b : str
        ``"zero"`` or ``"gaussian"`` (b ~ tau * N(0, 1)); ignored when the model has no bias.
    tau : float
        Init scale (small: active regime, large: lazy regime).
    symmetric : bool
        Paired init: particles m/2 .. m-1 copy particles 0 .. m/2-1 with c negated, so that
        h_m = 0 at t = 0 (m must be even).
    """

    a: str = "gaussian"
    c: str = "gaussian"
    b: str = "zero"
    tau: float = 1.0
    symmetric: bool = False

    def __post_init__(self):
        if self.a not in A_LAWS:
            raise ValueError(f"Init.a must be one of {A_LAWS}, got {self.a!r}")
        if self.c not in C_LAWS:
            raise ValueError(f"Init.c must be one of {C_LAWS}, got {self.c!r}")
        if self.b not in B_LAWS:
            raise ValueError(f"Init.b must be one of {B_LAWS}, got {self.b!r}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"Init.tau must be a finite number >= 0, got {self.tau!r}")

    def sample(self, model: Model, m: int, rng: np.random.Generator) -> np.ndarray:
        """Draw a width-m state of shape (m, d + 2) in the model's dtype.

        Each particle takes one row of d + 2 standard normals (a, b, c), drawn in float64
        and cast: float32 and float64 states from the same generator state are the same
        numbers up to rounding, and a width-m state is the first m rows of any wider state
        from the same generator state (not for the symmetric init, which pairs rows).
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed))")
        if not (isinstance(m, (int, np.integer)) and m >= 1):
            raise ValueError(f"the width m must be an integer >= 1, got {m!r}")
        if self.symmetric:
            if m % 2:
                raise ValueError(f"a symmetric init pairs particles: m must be even, got {m}")
            if model.scaling == "sum":
                raise ValueError("a symmetric init negates c, but the 'sum' scaling fixes c = 1")
        d = model.d
        n = m // 2 if self.symmetric else m
        # One row of d + 2 standard normals per particle, so that a width-m state is the first
        # m rows of every wider state drawn from the same generator state (coupled widths).
        z = rng.standard_normal((n, d + 2))
        if self.a == "gaussian":
            a = z[:, :d] * (self.tau / math.sqrt(d))
        else:
            a = self.tau * z[:, :d] / np.linalg.norm(z[:, :d], axis=1, keepdims=True)
        b = self.tau * z[:, d] if model.bias and self.b == "gaussian" else np.zeros(n)
        if model.scaling == "sum" or self.c == "one":
            c = np.ones(n)
        elif self.c == "gaussian":
            c = self.tau * z[:, d + 1]
        elif self.c == "sign":
            c = np.where(z[:, d + 1] >= 0, self.tau, -self.tau)
        else:
            c = np.zeros(n)
        if self.symmetric:
            a = np.concatenate([a, a])
            b = np.concatenate([b, b])
            c = np.concatenate([c, -c])
        return model.pack(a, b, c)


def initialize(model: Model, m: int, rng: np.random.Generator, init: Init | None = None) -> np.ndarray:
    """Initial state of width m drawn from ``init`` (default: ``Init()``), shape (m, d + 2).

    Parameters
    ----------
    model : Model
    m : int
        Width (number of particles).
    rng : numpy.random.Generator
        The stream the particles are drawn from.
    init : Init, optional
        The initial law; default ``Init()``.

    Returns
    -------
    ndarray, shape (m, d + 2), the model's dtype
        Rows (a, b, c) (:meth:`Init.sample`).
    """
    return (init or Init()).sample(model, m, rng)
