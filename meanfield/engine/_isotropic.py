"""Classification of two isotropic Gaussians (Mei, Montanari & Nguyen 2018, arXiv:1804.06561).

Labels y = +1 or -1 with probability 1/2 each; x | y = +1 ~ N(0, s_+^2 I_d) and
x | y = -1 ~ N(0, s_-^2 I_d) with s_+ = 1 + Delta, s_- = 1 - Delta, 0 < Delta < 1. The
Bayes-optimal predictor depends on |x| only. The student is h_m(x) = s sum_i c_i
sigma(a_i . x + b_i) (normally no bias and a frozen readout c_i = 1) and the objective is the
squared loss in the scaling of SCIENCE.md section 1,

    F = (1/alpha^2) E[ (1/2) (y - alpha h_m(x))^2 ]
      = E[y^2] / (2 alpha^2) - (s/alpha) sum_i c_i V(w_i) + (s^2/2) sum_ij c_i c_j U(w_i, w_j),

with E[y^2] = 1 and, since x = s_y z with z ~ N(0, I_d),

    V(w)     = E[y sigma(a.x + b)]          = (g(s_+ |a|, b) - g(s_- |a|, b)) / 2,
               g(r, b) = E sigma(r z + b), z ~ N(0, 1),
    U(w, w') = E[sigma(a.x + b) sigma(a'.x + b')]
             = (kappa(s_+ a, b; s_+ a', b') + kappa(s_- a, b; s_- a', b')) / 2,

kappa being the standard-Gaussian pair kernel of SCIENCE.md section 2. U is therefore
computed with the existing pair kernels on particle coordinates scaled by s_+ and s_-
(gradients by the chain rule: grad_a picks up the factor s_+-, grad_b none). The velocity is
v(w_i) = -m grad_{w_i} F, assembled exactly as in :class:`meanfield.PopulationProblem`.

Uninformative activations. sigma(z) - sigma(0) is odd for sigmoid, tanh, erf and linear, so
g(r, 0) = sigma(0) for every r and V = 0 without bias: the labels are invisible to the
network, the flow only minimises E[h^2] (and for a rotation-invariant law the radial dynamics
of :mod:`meanfield.radial` is frozen, since the rotation average of an odd kernel vanishes).
Only relu and softplus (whose even parts |z|/2 and log(2 cosh(z/2)) are not constant) learn
anything without bias. The problem is still well posed, so such activations give a
``UserWarning`` at construction rather than an error (linear warns even with bias: its V is 0
for every bias too).
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import scipy.special
from numba import njit, prange

from .. import kernels
from ._activations import activations_where
from ._model import Model
from ._problems import Evaluation, Problem, _gauss_hermite, pair_objective, pair_sums, pair_velocity

ISOTROPIC_METHODS = ("auto", "closed_form", "quadrature", "hermite")
ISOTROPIC_CLOSED_FORM = activations_where(lambda entry: entry.closed_form)
# With biases (or normal_cdf): the pair kernels of kernels.bias_pair_field and V in closed form.
ISOTROPIC_BIAS_CLOSED_FORM = activations_where(lambda entry: entry.bias_closed_form)
# sigma - sigma(0) odd: V = 0 without bias.
ODD_ACTIVATIONS = activations_where(lambda entry: entry.odd)
INV_SQRT_2PI = 0.3989422804014327


# --------------------------------------------------------------------------------------------
# Vectorised activations (the very same scalar functions as the compiled kernels).

@njit(cache=True, parallel=True)
def _activation_table(z, code, derivative, out):
    for i in prange(z.shape[0]):
        if derivative:
            out[i] = kernels.activation_derivative(z[i], code)
        else:
            out[i] = kernels.activation(z[i], code)


def activation_values(z, code: int, derivative: bool = False) -> np.ndarray:
    """sigma(z) (or sigma'(z)) elementwise for a float64 array, with the kernels' definitions."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    out = np.empty_like(z)
    _activation_table(z.reshape(-1), code, derivative, out.reshape(-1))
    return out


# --------------------------------------------------------------------------------------------
# Hermite (Mehler) expansion of the Gaussian pair kernel without bias.

@functools.lru_cache(maxsize=16)
def gauss_hermite_1d(n_nodes: int):
    """Probabilists' Gauss-Hermite rule for N(0, 1), float64, weights summing to 1.

    scipy's ``roots_hermitenorm`` stays finite for any order (numpy's ``hermegauss``
    overflows beyond about 300 nodes).
    """
    z, w = scipy.special.roots_hermitenorm(int(n_nodes))
    return z, w / w.sum()


@functools.lru_cache(maxsize=8)
def _hermite_basis(order: int, n_nodes: int):
    """Gauss-Hermite rule (nodes z, weights w summing to 1) and h_k(z) = He_k(z)/sqrt(k!), k <= order."""
    z, w = gauss_hermite_1d(n_nodes)
    H = np.empty((order + 1, n_nodes))
    H[0] = 1.0
    if order >= 1:
        H[1] = z
    for k in range(1, order):
        H[k + 1] = (z * H[k] - math.sqrt(k) * H[k - 1]) / math.sqrt(k + 1)
    return z, w, H


def hermite_coefficients(x, code: int, order: int, n_nodes: int, derivative: bool = True):
    """c_k(x) = E[sigma(x z) h_k(z)] and c_k'(x) for k = 0..order, by a 1-D Gauss-Hermite rule.

    Then E[sigma(x z) sigma(x' z')] = sum_k c_k(x) c_k(x') t^k for standard normals z, z'
    with correlation t (Mehler's formula); the truncated sum and its derivatives are exact
    derivatives of each other.

    Returns
    -------
    c, dc : ndarray, shape (len(x), order + 1) (dc is None when ``derivative`` is False)
    """
    x = np.asarray(x, dtype=np.float64)
    z, w, H = _hermite_basis(order, n_nodes)
    arg = np.multiply.outer(x, z)
    c = activation_values(arg, code) @ (w * H).T
    dc = activation_values(arg, code, True) @ (w * z * H).T if derivative else None
    return c, dc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _hermite_pair_field(p_hat, s_hat, s_weight, A, B, Q, E, K, G):
    """Pair sums of the truncated Mehler kernel.

    For point i and source j with unit directions p_hat_i, s_hat_j (rows of zeros for a zero
    vector) and t = p_hat_i . s_hat_j, with the interleaved index l = 2k + (0 for s_+, 1 for s_-):

        kappa_ij = sum_l A_il E_jl t^k,   grad_{a_i} kappa_ij = alpha_ij s_hat_j + beta_ij p_hat_i,
        alpha_ij = sum_l Q_il E_jl t^(k-1),   beta_ij = sum_l B_il E_jl t^k,

    and K_i = sum_j c_j kappa_ij, G_i = sum_j c_j grad_{a_i} kappa_ij.
    """
    n, d = p_hat.shape
    m = s_hat.shape[0]
    L = E.shape[1]
    for i in prange(n):
        pw = np.empty(L)
        pwm1 = np.empty(L)
        g = np.zeros(d)
        kappa_sum = 0.0
        beta_sum = 0.0
        for j in range(m):
            t = 0.0
            for k in range(d):
                t += p_hat[i, k] * s_hat[j, k]
            tk = 1.0
            tkm1 = 0.0
            for k in range(L // 2):
                pw[2 * k] = tk
                pw[2 * k + 1] = tk
                pwm1[2 * k] = tkm1
                pwm1[2 * k + 1] = tkm1
                tkm1 = tk
                tk *= t
            kap = 0.0
            alp = 0.0
            bet = 0.0
            for l in range(L):
                e = E[j, l]
                x = e * pw[l]
                kap += A[i, l] * x
                bet += B[i, l] * x
                alp += Q[i, l] * e * pwm1[l]
            cj = s_weight[j]
            kappa_sum += cj * kap
            beta_sum += cj * bet
            weight = cj * alp
            for k in range(d):
                g[k] += weight * s_hat[j, k]
        K[i] = kappa_sum
        for k in range(d):
            G[i, k] = g[k] + beta_sum * p_hat[i, k]


def _unit_rows(a):
    """Norms and unit vectors of the rows of a (zero rows stay zero), float64."""
    a = np.asarray(a, dtype=np.float64)
    r = np.sqrt(np.einsum("ij,ij->i", a, a))
    hat = np.zeros_like(a)
    pos = r > 0
    hat[pos] = a[pos] / r[pos, None]
    return r, hat


# --------------------------------------------------------------------------------------------

class IsotropicProblem(Problem):
    """Two isotropic Gaussian classes x ~ N(0, (1 +- Delta)^2 I_d), labels y = +-1, squared loss.

    The population objective is F = (1/alpha^2) E[(1/2)(y - alpha h_m(x))^2] (module
    docstring for V, U and the assembly); ``evaluate`` returns F, the particle velocities
    v(w_i) = -m grad_{w_i} F and the field at extra points (tracers), like
    :class:`meanfield.PopulationProblem`. How the Gaussian expectations are computed is
    ``method``:

    ``"closed_form"``
        relu, erf, linear without bias: the pair kernels of SCIENCE.md section 2 on the
        coordinates scaled by 1 +- Delta (relu and linear are 1-homogeneous in each argument,
        so U = (1 + Delta^2) kappa: one kernel call); V = Delta |a| / sqrt(2 pi) for relu and
        0 for the odd erf and linear. With biases (relu, erf, normal_cdf, linear; normal_cdf
        also without): U by ``kernels.bias_pair_field`` on the scaled coordinates and V in
        closed form (``_closed_form_V``).
    ``"quadrature"``
        Any activation, with or without bias: U by the symmetrised two-dimensional
        Gauss-Hermite rule of :func:`meanfield.kernels.quadrature_pair_field` of order
        ``quadrature_order`` (Q^2 nodes per pair and class), V by a one-dimensional
        Gauss-Hermite rule of order 4 * ``quadrature_order``. The velocity is the exact
        gradient of the discretised objective. The error grows with the effective radius
        (1 + Delta)|a|, since sigma(r z) varies on the scale 1/r: for softplus, E sigma(r z) by
        a 1-D rule of order 32 is off by 1e-14 at r = 1, 3e-8 at r = 2, 5e-6 at r = 3, 8e-5 at
        r = 4 (order 128: 6e-9 at r = 4); the pair rule of order 32, on softplus particles
        a ~ tau N(0, I/10), has risk / velocity errors 2e-9 / 2e-6 at tau = 1 and 6e-7 / 1.5e-4
        at tau = 1.5 (relative to max |v|). relu (a kink) converges only algebraically (see
        PopulationProblem). Cost about 3 us per pair and class at order 8 and 60 us at order
        32: prefer ``"hermite"`` for smooth activations beyond a few hundred particles.
    ``"hermite"``
        Smooth activations without bias: Mehler's expansion
        kappa(a, a') = sum_{k <= K} c_k(|a|) c_k(|a'|) (a.a' / |a||a'|)^k truncated at
        K = ``hermite_order``, with c_k(r) = E[sigma(r z) He_k(z)] / sqrt(k!) from a 1-D
        Gauss-Hermite rule of ``hermite_nodes`` nodes; V uses c_0. The truncated kernel is a
        positive-semidefinite kernel and the velocity its exact gradient. Cost O(K) per pair
        (0.1 to 0.15 us at K = 32, i.e. 0.25 s per evaluation at m = 1600 on 2 cores): 20 to
        50 times faster than ``"quadrature"``. Accuracy: the truncation error of kappa is at
        most sqrt(T_K(r) T_K(r')) |t|^(K+1), T_K(r) = sum_{k > K} c_k(r)^2, largest on the
        diagonal t = 1 (the i = j self term); for softplus T_32(r) = 5e-16, 1e-11, 2e-9,
        7e-7, 1.4e-5 at r = 1, 1.5, 2, 3, 4 (r = (1 + Delta)|a|; T_64: 1e-22 ... 2e-7).
        Measured against the quadrature of order 64 (d = 10, tau = 1): risk 4e-12, velocity
        3e-9 relative (tests/test_radial.py).

    ``"auto"`` picks ``"closed_form"`` for relu, erf, linear (with or without bias) and
    normal_cdf, and ``"quadrature"`` otherwise; ``"hermite"`` is only used when asked for.

    Parameters
    ----------
    model : Model
        Any scaling, alpha, bias or readout; the setting of Mei, Montanari & Nguyen is
        ``Model(d, activation, bias=False, train_readout=False)`` with c_i = 1
        (``Init(c="one")``).
    delta : float
        0 < Delta < 1.
    method : str
        ``"auto"``, ``"closed_form"``, ``"quadrature"`` or ``"hermite"``.
    quadrature_order : int
        Gauss-Hermite nodes per dimension (``"quadrature"``).
    hermite_order : int
        Truncation order K of the Mehler series (``"hermite"``, default 32).
    hermite_nodes : int, optional
        Nodes of the 1-D rule for the Hermite coefficients (default max(256, 4 K)).

    Warns
    -----
    UserWarning
        For sigmoid, tanh, erf or linear without bias (and linear with bias): V = 0, the
        labels do not reach the network.
    """

    loss = "squared"
    label_second_moment = 1.0

    def __init__(self, model: Model, delta: float, method: str = "auto", quadrature_order: int = 32,
                 hermite_order: int = 32, hermite_nodes: int | None = None):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a meanfield.Model, got {type(model).__name__}")
        self.model = model
        if not (isinstance(delta, (int, float, np.integer, np.floating)) and math.isfinite(delta)
                and 0 < delta < 1):
            raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
        self.delta = float(delta)
        self.s_plus = 1.0 + self.delta
        self.s_minus = 1.0 - self.delta
        if method not in ISOTROPIC_METHODS:
            raise ValueError(f"method must be one of {ISOTROPIC_METHODS}, got {method!r}")
        self.with_bias = bool(model.bias or model.activation not in ISOTROPIC_CLOSED_FORM)
        closed_ok = model.activation in (ISOTROPIC_BIAS_CLOSED_FORM if self.with_bias else ISOTROPIC_CLOSED_FORM)
        if method == "auto":
            method = "closed_form" if closed_ok else "quadrature"
        if method == "closed_form" and not closed_ok:
            raise ValueError(f"method='closed_form' needs an activation in {ISOTROPIC_BIAS_CLOSED_FORM} "
                             f"({ISOTROPIC_CLOSED_FORM} without bias)")
        if method == "hermite":
            if model.bias:
                raise ValueError("method='hermite' needs a model without bias")
            if model.activation == "relu":
                raise ValueError("method='hermite' converges only algebraically for relu (a kink): "
                                 "use 'closed_form'")
        self.method = method
        self.quadrature_order = int(quadrature_order)
        self.hermite_order = int(hermite_order)
        self.hermite_nodes = int(hermite_nodes) if hermite_nodes is not None else max(256, 4 * self.hermite_order)
        if method == "quadrature":
            if self.quadrature_order < 2:
                raise ValueError(f"quadrature_order must be >= 2, got {quadrature_order}")
            self._nodes, self._weights = _gauss_hermite(self.quadrature_order, model.dtype)
            self._nodes_1d, self._weights_1d = gauss_hermite_1d(4 * self.quadrature_order)
        if method == "hermite":
            if self.hermite_order < 1:
                raise ValueError(f"hermite_order must be >= 1, got {hermite_order}")
            if self.hermite_nodes < self.hermite_order + 1:
                raise ValueError("hermite_nodes must exceed hermite_order")
        if model.activation == "linear" or (model.activation in ODD_ACTIVATIONS and not model.bias):
            warnings.warn(
                f"IsotropicProblem with a {model.activation} activation"
                f"{'' if model.bias else ' and no bias'}: sigma - sigma(0) is odd, so "
                "V(w) = E[y sigma(a.x + b)] = 0 and the labels do not reach the network (the flow "
                "only minimises E[h^2]); use relu or softplus", UserWarning, stacklevel=2)

    # ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line saying what the problem is and how its expectations are computed."""
        head = f"isotropic Gaussians (Delta = {self.delta:g}, d = {self.model.d}): population risk"
        if self.method == "closed_form" and self.with_bias:
            return f"{head} in closed form with biases ({self.model.activation} kernel, bivariate normal CDF)"
        if self.method == "closed_form":
            return f"{head} in closed form ({self.model.activation} kernel)"
        if self.method == "quadrature":
            q = self.quadrature_order
            return f"{head} by Gauss-Hermite quadrature ({q} x {q} nodes per pair and class)"
        return (f"{head} by the Mehler (Hermite) series truncated at order {self.hermite_order} "
                f"({self.hermite_nodes}-node coefficients)")

    def sample(self, rng: np.random.Generator, n: int):
        """n fresh samples of the mixture: X of shape (n, d) and labels y = +-1, model dtype.

        ``FiniteDataProblem(model, *problem.sample(rng, N))`` is a training set of the same law.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy.random.Generator")
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"the number of samples must be an integer >= 1, got {n!r}")
        y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        X = rng.standard_normal((n, self.model.d)) * (1.0 + self.delta * y)[:, None]
        dtype = self.model.dtype
        return np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)

    def sample_batch(self, rng, batch_size):
        """A fresh batch from the mixture (online SGD): X (batch_size, d), y = +-1."""
        return self.sample(rng, batch_size)

    # ----------------------------------------------------------------------------------------
    # V and its gradient.

    def radial_V(self, r):
        """V and dV/dr at radii r (no bias): V(a) = V(|a|) for this problem's method.

        Returns
        -------
        V, dV : ndarray of float64, same shape as r
        """
        r = np.asarray(r, dtype=np.float64)
        flat = r.ravel()
        code = self.model.activation_code
        if self.method == "closed_form":
            if self.model.activation == "relu":
                V = self.delta * INV_SQRT_2PI * flat
                dV = np.full_like(flat, self.delta * INV_SQRT_2PI)
            else:
                V = np.zeros_like(flat)
                dV = np.zeros_like(flat)
        elif self.method == "quadrature":
            V, dV, _ = self._quadrature_V(flat, np.zeros_like(flat))
        else:
            V = np.zeros_like(flat)
            dV = np.zeros_like(flat)
            for s, sign in ((self.s_plus, 0.5), (self.s_minus, -0.5)):
                c, dc = hermite_coefficients(s * flat, code, 0, self.hermite_nodes)
                V += sign * c[:, 0]
                dV += sign * s * dc[:, 0]
        return V.reshape(r.shape), dV.reshape(r.shape)

    def _quadrature_V(self, r, b):
        """V, dV/dr and dV/db by the 1-D rule, for radii r and biases b (float64 arrays)."""
        z, w = self._nodes_1d, self._weights_1d
        code = self.model.activation_code
        V = np.zeros_like(r)
        dV = np.zeros_like(r)
        dVb = np.zeros_like(r)
        for s, sign in ((self.s_plus, 0.5), (self.s_minus, -0.5)):
            arg = np.multiply.outer(s * r, z) + b[:, None]
            V += sign * (activation_values(arg, code) @ w)
            deriv = activation_values(arg, code, True)
            dV += sign * s * (deriv @ (w * z))
            dVb += sign * (deriv @ w)
        return V, dV, dVb

    def _closed_form_V(self, r, b):
        """V, dV/dr and dV/db in closed form with biases, V = (g(s_+ r, b) - g(s_- r, b)) / 2 with
        g(r, b) = E sigma(r z + b): relu r phi(b/r) + b Phi(b/r) (g_r = phi(b/r), g_b = Phi(b/r);
        b/r = 0 at r = b = 0, the bias-free limit |a|/sqrt(2 pi)); normal CDF Phi(b/n),
        n = sqrt(1 + r^2) (g_b = phi(b/n)/n, g_r = -phi(b/n) b r/n^3); erf 2 Phi(b/n) - 1; linear b."""
        name = self.model.activation
        V = np.zeros_like(r)
        dV = np.zeros_like(r)
        dVb = np.zeros_like(r)
        for s, sign in ((self.s_plus, 0.5), (self.s_minus, -0.5)):
            rs = s * r
            if name == "relu":
                with np.errstate(divide="ignore", invalid="ignore"):
                    t = np.where(rs > 0, b / np.where(rs > 0, rs, 1.0),
                                 np.where(b > 0, np.inf, np.where(b < 0, -np.inf, 0.0)))
                pdf = np.exp(-0.5 * np.minimum(t * t, 1e4)) * INV_SQRT_2PI
                cdf = scipy.special.ndtr(t)
                g, g_r, g_b = rs * pdf + b * cdf, pdf, cdf
            elif name in ("erf", "normal_cdf"):
                n = np.sqrt(1.0 + rs * rs)
                u = b / n
                pdf = np.exp(-0.5 * u * u) * INV_SQRT_2PI
                scale = 2.0 if name == "erf" else 1.0
                g = scale * scipy.special.ndtr(u) - (1.0 if name == "erf" else 0.0)
                g_b, g_r = scale * pdf / n, -scale * pdf * u * rs / (n * n)
            else:  # linear
                g, g_r, g_b = b.copy(), np.zeros_like(r), np.ones_like(r)
            V += sign * g
            dV += sign * s * g_r
            dVb += sign * g_b
        return V, dV, dVb

    def _linear_field(self, points):
        """V at the points and its gradient in (a, b), shape (n,) and (n, d + 1), float64."""
        d = self.model.d
        r, hat = _unit_rows(points[:, :d])
        GV = np.zeros((points.shape[0], d + 1))
        if self.method == "quadrature" or (self.method == "closed_form" and self.with_bias):
            b = np.asarray(points[:, d], dtype=np.float64)
            V, dV, dVb = (self._quadrature_V(r, b) if self.method == "quadrature" else self._closed_form_V(r, b))
            GV[:, d] = dVb
        else:
            V, dV = self.radial_V(r)
        # grad_a V = V'(|a|) a/|a|; at a = 0 it is 0 (smooth activations) or a subgradient (relu).
        GV[:, :d] = dV[:, None] * hat
        return V, GV

    # ----------------------------------------------------------------------------------------
    # U: pair sums K_i = sum_j c_j U(w_i, w_j), G_i = sum_j c_j grad_{(a_i, b_i)} U(w_i, w_j).

    def _kernel(self, points, sources):
        return pair_sums(points, sources, self.model.activation_code, self.method == "closed_form",
                         getattr(self, "_nodes", None), getattr(self, "_weights", None), bias=self.with_bias)

    def _pair(self, points, sources, same: bool):
        d = self.model.d
        n = points.shape[0]
        K = np.zeros(n)
        G = np.zeros((n, d + 1))
        if self.method == "closed_form" and not self.with_bias and self.model.activation in ("relu", "linear"):
            # kappa(s a, s a') = s^2 kappa(a, a'): U = (s_+^2 + s_-^2)/2 kappa = (1 + Delta^2) kappa.
            k_, g_ = self._kernel(points, sources)
            factor = 1.0 + self.delta**2
            return factor * k_.astype(np.float64), factor * g_.astype(np.float64)
        for s in (self.s_plus, self.s_minus):
            P = points.copy()
            P[:, :d] *= s
            if same:
                S = P
            else:
                S = sources.copy()
                S[:, :d] *= s
            k_, g_ = self._kernel(P, S)
            K += 0.5 * k_
            G[:, :d] += (0.5 * s) * g_[:, :d]
            G[:, d] += 0.5 * g_[:, d]
        return K, G

    def _hermite_tables(self, a):
        """Per-particle coefficient rows for the Mehler kernel (interleaved l = 2k + sign)."""
        K = self.hermite_order
        code = self.model.activation_code
        r, hat = _unit_rows(a)
        n = r.shape[0]
        L = 2 * (K + 1)
        E = np.empty((n, L))
        A = np.empty((n, L))
        B = np.empty((n, L))
        Q = np.empty((n, L))
        k = np.arange(K + 1, dtype=np.float64)
        pos = r > 0
        for sign, s in enumerate((self.s_plus, self.s_minus)):
            c, dc = hermite_coefficients(s * r, code, K, self.hermite_nodes)
            q = np.zeros_like(c)  # c_k(s r) / r, with its limit at r = 0 (only k = 1 survives)
            q[pos] = c[pos] / r[pos, None]
            if K >= 1:
                q[~pos, 1] = s * dc[~pos, 1]
            E[:, sign::2] = c
            A[:, sign::2] = 0.5 * c
            B[:, sign::2] = 0.5 * (s * dc - k * q)
            Q[:, sign::2] = 0.5 * k * q
        return hat, E, A, B, Q

    def _hermite_fields(self, points, sources, same: bool):
        """Pair sums and the V field of the Mehler method, sharing the coefficient tables."""
        d = self.model.d
        p_hat, E_p, A, B, Q = self._hermite_tables(points[:, :d])
        if same:
            s_hat, E = p_hat, E_p
        else:
            s_hat, E, _, _, _ = self._hermite_tables(sources[:, :d])
        n = points.shape[0]
        K = np.empty(n)
        G = np.zeros((n, d + 1))
        Ga = np.empty((n, d))
        weight = np.ascontiguousarray(sources[:, d + 1], dtype=np.float64)
        _hermite_pair_field(p_hat, s_hat, weight, A, B, Q, E, K, Ga)
        G[:, :d] = Ga
        # V = (c_0(s_+ r) - c_0(s_- r))/2 and dV/dr = (s_+ c_0'(s_+ r) - s_- c_0'(s_- r))/2 = B_0+ - B_0-
        V = 0.5 * (E_p[:, 0] - E_p[:, 1])
        GV = np.zeros((n, d + 1))
        GV[:, :d] = (B[:, 0] - B[:, 1])[:, None] * p_hat
        return K, G, V, GV

    # ----------------------------------------------------------------------------------------
    def _velocity(self, points, W, out, same: bool):
        if self.method == "hermite":
            K_w, G_w, V, GV = self._hermite_fields(points, W, same)
        else:
            K_w, G_w = self._pair(points, W, same)
            V, GV = self._linear_field(points)
        return pair_velocity(self.model, points, W.shape[0], K_w, G_w, V, GV, out), K_w, V

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Population objective, particle velocities and (optionally) the field at ``points``.

        Parameters
        ----------
        W : ndarray, shape (m, d + 2)
        points : ndarray, shape (n, d + 2), optional
            Tracers: their velocity in the field of the measure of W (they do not act on it).
        out : ndarray, shape (m, d + 2), optional
            Buffer for the velocity.
        """
        W, points = self._state(W, points)
        velocity = np.empty_like(W) if out is None else out
        velocity, K_w, V = self._velocity(W, W, velocity, True)
        value = pair_objective(self.model, W, K_w, V, self.label_second_moment)
        points_velocity = None
        if points is not None:
            points_velocity, _, _ = self._velocity(points, W, np.empty_like(points), False)
        return Evaluation(value, velocity, points_velocity)
