"""The mean-field limit of :class:`IsotropicProblem` as a 1-D PDE in r = |a| (SCIENCE.md section 4).

Setting: no bias, frozen readout c_i = 1, the mean-field scaling h = (1/m) sum_i sigma(a_i . x)
and a fixed alpha. The objective of a measure mu on R^d is

    R(mu) = 1/(2 alpha^2) - (1/alpha) int V dmu + (1/2) int int U dmu dmu

(E[y^2] = 1; V and U as in :mod:`meanfield.engine._isotropic`), and the particles move with
v(w_i) = -m grad_{w_i} F, whose m -> infinity limit is

    v[mu](a) = (1/alpha) grad V(a) - int grad_1 U(a, a') dmu(a').

Both V and U are invariant under rotations (the data law is), so V(a) = V(|a|) and U depends
only on |a|, |a'| and a.a'. If mu is rotation-invariant with law rho of r = |a|,

    int U(a, a') dmu(a') = int u_bar(|a|, r') rho(dr'),
    u_bar(r, r') = E_t[ U(r e_1, r' (t e_1 + sqrt(1 - t^2) e_2)) ],

t = cos(angle) being distributed like one coordinate of a uniform unit vector of R^d, with
density proportional to (1 - t^2)^((d - 3)/2) on [-1, 1]. The field is then radial,
v[mu](a) = v_r(|a|) a/|a| with

    v_r(r) = -Psi'(r) = (1/alpha) V'(r) - int d_1 u_bar(r, r') rho(dr'),
    Psi(r) = -(1/alpha) V(r) + int u_bar(r, r') rho(dr'),

it keeps mu rotation-invariant, and every radius moves by dr/dt = v_r(r), so rho follows

    d_t rho = -d_r (rho v_r) = d_r (rho d_r Psi)          on r >= 0,

with the risk R(rho) = 1/(2 alpha^2) - (1/alpha) int V drho + (1/2) int int u_bar drho drho.
R(rho) is the particle objective of :class:`IsotropicProblem` in the limit m -> infinity
for a rotation-invariant measure. At finite m the particle velocity also contains the
self-interaction -(1/m) grad_1 U(a_i, a_i) (the i = j pair term), and the empirical measure
is not exactly rotation-invariant: both are O(1/m) corrections to the objective (and the
sampling fluctuations of mu_m are O(1/sqrt(m))).

For relu, U = (1 + Delta^2) kappa_relu, kappa is 1-homogeneous in each argument, and
u_bar(r, r') = C r r' with C = (1 + Delta^2) d c_d^2, c_d = E[(u_1)_+] =
Gamma(d/2) / (2 sqrt(pi) Gamma((d + 1)/2)) (E_u kappa(e_1, u) = E_x[(x_1)_+ |x|] c_d =
d c_d^2), while V(r) = Delta r / sqrt(2 pi). Hence v_r = Delta/(alpha sqrt(2 pi)) - C M(t)
with M = int r drho the mean radius: all radii shift by the same amount (as long as they stay
positive) and M' = v_0/alpha - C M, M(t) = M* + (M(0) - M*) e^(-C t), M* = v_0 / (alpha C),
v_0 = Delta / sqrt(2 pi); the risk is 1/(2 alpha^2) - v_0 M / alpha + C M^2 / 2.

For sigmoid, tanh, erf and linear (sigma - sigma(0) odd) V = 0 and the angle average of the
odd part of the kernel vanishes, so u_bar is constant and nothing moves: the radial flow is
frozen (the particle system only moves through its O(1/sqrt(m)) fluctuations).

Discretisation: cells [r_{i-1/2}, r_{i+1/2}] of width h = r_max / n_cells on [0, r_max],
cell masses m_i (the measure of cell i sits at its centre r_i for V and u_bar), velocity at
the faces v_f = V'(r_f)/alpha - sum_j d_1 u_bar(r_f, r_j) m_j, upwind fluxes
F_f = v_f^+ rho_{f-1} + v_f^- rho_f (rho = m / h; optionally a minmod-limited MUSCL
reconstruction), zero flux at r = 0 and r = r_max, and the two-stage SSP Runge-Kutta (Heun)
step with dt = cfl h / max |v_f|. The update of the masses is m_i += dt (F_i - F_{i+1}), so the
total mass is conserved to rounding and the masses stay >= 0 for cfl <= 1/2.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.special
import scipy.stats

from . import kernels
from .engine._isotropic import IsotropicProblem, activation_values, gauss_hermite_1d, hermite_coefficients
from .engine._run import time_grid

RECONSTRUCTIONS = ("upwind", "minmod")


def relu_radial_constant(d: int, delta: float) -> float:
    """C in u_bar(r, r') = C r r' for relu: (1 + Delta^2) d c_d^2, c_d = E[(u_1)_+].

    Parameters
    ----------
    d : int
        Input dimension.
    delta : float
        Delta in (0, 1): the two classes of the data have scales 1 +- Delta
        (:class:`IsotropicProblem`).

    Returns
    -------
    float
    """
    c_d = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / (2 * math.sqrt(math.pi))
    return (1.0 + delta**2) * d * c_d**2


def jacobi_rule(d: int, order: int):
    """Nodes t_k and weights (summing to 1) for E_t f(t), t = u_1 for u uniform on the sphere of R^d.

    Gauss-Jacobi with alpha = beta = (d - 3)/2 (density proportional to (1 - t^2)^((d-3)/2)),
    d >= 2.

    Parameters
    ----------
    d : int
        Dimension, >= 2.
    order : int
        Number of nodes.

    Returns
    -------
    t : ndarray, shape (order,), float64
        Nodes in (-1, 1), ascending.
    w : ndarray, shape (order,), float64
        Weights, summing to 1.
    """
    if d < 2:
        raise ValueError(f"the angle average needs d >= 2, got d = {d}")
    a = (d - 3) / 2
    t, w = scipy.special.roots_jacobi(int(order), a, a)
    return t, w / w.sum()


def sphere_moments(d: int, order: int) -> np.ndarray:
    """E[t^k], k = 0..order, for t = u_1, u uniform on the sphere of R^d (0 for odd k).

    Parameters
    ----------
    d : int
        Dimension.
    order : int
        Highest moment.

    Returns
    -------
    ndarray, shape (order + 1,), float64
        E[t^k] at index k (E[t^(2j)] = E[t^(2j-2)] (2j - 1) / (d + 2j - 2)).
    """
    mom = np.zeros(order + 1)
    mom[0] = 1.0
    for j in range(1, order // 2 + 1):
        mom[2 * j] = mom[2 * j - 2] * (2 * j - 1) / (d + 2 * j - 2)
    return mom


class RadialSolution(NamedTuple):
    """Result of :meth:`RadialFlow.run`.

    Attributes
    ----------
    times : ndarray, shape (T,)
    densities : ndarray, shape (T, n_cells)
        Cell densities rho_i (cell mass / h) at each time.
    risks : ndarray, shape (T,)
        R(rho) at each time.
    n_steps : int
        Time steps taken (each with two evaluations of the velocity).
    """

    times: np.ndarray
    densities: np.ndarray
    risks: np.ndarray
    n_steps: int


class RadialFlow:
    """Finite-volume solver of the radial mean-field PDE of an :class:`IsotropicProblem`.

    See the module docstring for the equation and the scheme.

    Parameters
    ----------
    problem : IsotropicProblem
        Its model must have no bias, a frozen readout (c_i = 1 is assumed), the
        ``"mean_field"`` scaling and a numeric alpha. V and u_bar are computed the way the
        problem computes V and U:

        * ``"closed_form"``: u_bar by the closed-form pair kernel (points r e_1, sources
          r'(t_k e_1 + sqrt(1 - t_k^2) e_2) with the Jacobi weights as output weights, on the
          coordinates scaled by 1 +- Delta); relu: = C r r' up to the Jacobi error (measured
          3e-9 relative with the default order 32 at d = 10);
        * ``"quadrature"``: u_bar(r, r') = E_t E_{z1, z2}[sigma(r z1) sigma(r'(t z1 +
          sqrt(1-t^2) z2))] per scale, Gauss-Jacobi in t and a Q x Q Gauss-Hermite rule,
          evaluated separably (Q = ``quadrature_order``, default the problem's);
        * ``"hermite"``: the rotation average of the truncated Mehler series, exact:
          u_bar = (1/2) sum_{+-} sum_k E[t^k] c_k(s r) c_k(s r') (the very same kernel as
          the particle system).
    r_max : float
        The grid is [0, r_max]; the density must stay well inside (zero-flux wall there).
    n_cells : int
    jacobi_order : int
        Gauss-Jacobi nodes for the t-average.
    quadrature_order : int, optional
        Gauss-Hermite order per dimension for the ``"quadrature"`` tabulation (default: the
        problem's; the table costs about 0.7 s at Q = 64 on 100 cells and grows like Q^2).
    reconstruction : str
        ``"upwind"`` (first order, default) or ``"minmod"`` (MUSCL, second order away from
        extrema).
    cfl : float
        Time step dt = cfl * h / max_f |v_f| (<= 0.5 keeps the masses non-negative).

    Notes
    -----
    Accuracy (tests/test_radial.py).
    Relu, d = 10, Delta = 0.5, alpha = 1, rho_0 the law of |a| for a ~ 0.5 N(0, I/d), grid
    [0, 3] with 300 cells, t in [0, 10]: the semi-discrete upwind scheme moves the mean radius
    exactly by its ODE, so the mean radius and the risk only carry the O(dt^2) Heun error:
    2.1e-5 and 2.5e-7 at the CFL step (106 steps), 3.1e-8 and 1.5e-9 with max_step = 0.005
    (minmod: 3.7e-5 and 1.6e-6 at the CFL step). The shape is diffused: W2 to the exactly
    translated law at t = 10 is 1.7e-2 with upwind and 1.5e-3 with minmod (on 150 cells 3.3e-2
    and 5.4e-3: first order and close to second order).
    Softplus (hermite), d = 10, Delta = 0.5, rho_0 from a ~ 1.5 N(0, I/d), grid [0, 4] with
    200 cells, t in [0, 4], against a Lagrangian solution (1000 quantile radii moved by v_r,
    RK4): risk error 2.0e-4 (upwind) and 9e-6 (minmod); W2 1.05e-2 (upwind, growing from the
    4.1e-3 quantisation floor of the 1000 radii) and 4.1e-3 (minmod, at that floor).
    The tables: relu u_bar = C r r' to 3e-14 (d = 10), 1e-8 (d = 3), 1e-7 (d = 2) with 32
    Jacobi nodes; softplus Jacobi x Gauss-Hermite against the exact angle average of the
    Mehler series: 2e-8 (r < 2), 5e-6 (r < 3), 1e-4 (r < 4) at Q = 64, 3e-10, 3e-7, 1e-5 at
    Q = 96 (16 Jacobi nodes are enough for smooth activations).
    """

    def __init__(self, problem: IsotropicProblem, r_max: float, n_cells: int, jacobi_order: int = 32,
                 quadrature_order: int | None = None, reconstruction: str = "upwind", cfl: float = 0.4):
        if not isinstance(problem, IsotropicProblem):
            raise TypeError(f"problem must be an IsotropicProblem, got {type(problem).__name__}")
        model = problem.model
        if model.bias or model.train_readout:
            raise ValueError("the radial reduction needs a model without bias and with a frozen readout (c = 1)")
        if model.scaling != "mean_field" or isinstance(model.alpha, str):
            raise ValueError("the radial reduction is the m -> infinity limit of the mean-field scaling "
                             "with a fixed numeric alpha")
        if model.d < 2:
            raise ValueError("the radial reduction needs d >= 2")
        if not (math.isfinite(r_max) and r_max > 0):
            raise ValueError(f"r_max must be a finite number > 0, got {r_max!r}")
        if not (isinstance(n_cells, (int, np.integer)) and n_cells >= 2):
            raise ValueError(f"n_cells must be an integer >= 2, got {n_cells!r}")
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        if not 0 < cfl <= 1:
            raise ValueError(f"cfl must be in (0, 1], got {cfl!r}")
        self.problem = problem
        self.d = model.d
        self.delta = problem.delta
        self.alpha = float(model.alpha)
        self.r_max = float(r_max)
        self.n_cells = int(n_cells)
        self.h = self.r_max / self.n_cells
        self.edges = np.linspace(0.0, self.r_max, self.n_cells + 1)
        self.centers = 0.5 * (self.edges[:-1] + self.edges[1:])
        self.jacobi_order = int(jacobi_order)
        self.quadrature_order = int(quadrature_order if quadrature_order is not None
                                    else problem.quadrature_order)
        self.reconstruction = reconstruction
        self.cfl = float(cfl)
        self._jacobi = jacobi_rule(self.d, self.jacobi_order)
        # Tables: V at the centres (risk), V' at the faces (velocity), u_bar centres x centres
        # (risk), d_1 u_bar faces x centres (velocity).
        self.V_centers, _ = problem.radial_V(self.centers)
        _, self.dV_faces = problem.radial_V(self.edges)
        u, du = self.u_bar_table(np.concatenate([self.centers, self.edges]), self.centers)
        self.u_bar = u[: self.n_cells]
        self.du_bar = du[self.n_cells:]

    # ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line saying what is solved and how (grid, fluxes, pair kernel)."""
        how = {"closed_form": "closed-form pair kernel and Gauss-Jacobi angle average",
               "quadrature": f"{self.quadrature_order} x {self.quadrature_order} Gauss-Hermite and "
                             "Gauss-Jacobi angle average",
               "hermite": f"Mehler series of order {self.problem.hermite_order}, exact angle average"}
        return (f"radial PDE of {self.problem.describe()}; {self.n_cells} cells on [0, {self.r_max:g}], "
                f"{self.reconstruction} fluxes, u_bar by {how[self.problem.method]}")

    def u_bar_table(self, r, r2):
        """u_bar(r_i, r2_j) and d_1 u_bar(r_i, r2_j) (derivative in the first radius).

        Parameters
        ----------
        r, r2 : array_like, shape (N,), (M,)
            Radii (>= 0).

        Returns
        -------
        u, du : ndarray, shape (N, M)
        """
        r = np.atleast_1d(np.asarray(r, dtype=np.float64))
        r2 = np.atleast_1d(np.asarray(r2, dtype=np.float64))
        method = self.problem.method
        if method == "hermite":
            return self._table_hermite(r, r2)
        u = np.zeros((r.size, r2.size))
        du = np.zeros((r.size, r2.size))
        for s in (self.problem.s_plus, self.problem.s_minus):
            if method == "closed_form":
                us, dus = self._table_closed_form(s * r, s * r2)
            else:
                us, dus = self._table_quadrature(s * r, s * r2)
            u += 0.5 * us
            du += 0.5 * s * dus
        return u, du

    def _table_closed_form(self, x, x2):
        """Standard-Gaussian kappa averaged over the angle, and its d/dx, by the pair kernel."""
        t, w = self._jacobi
        code = self.problem.model.activation_code
        points = np.zeros((x.size, 4))
        points[:, 0] = x
        points[:, 3] = 1.0
        u = np.empty((x.size, x2.size))
        du = np.empty((x.size, x2.size))
        K = np.empty(x.size)
        G = np.empty((x.size, 3))
        sources = np.zeros((t.size, 4))
        sources[:, 3] = w
        for j, xj in enumerate(x2):
            sources[:, 0] = xj * t
            sources[:, 1] = xj * np.sqrt(1.0 - t * t)
            kernels.closed_form_pair_field(points, sources, code, K, G)
            u[:, j] = K
            du[:, j] = G[:, 0]
        return u, du

    def _table_quadrature(self, x, x2):
        """Same by a Q x Q Gauss-Hermite rule in the basis (e_1, e_2), evaluated separably."""
        t, w = self._jacobi
        z, wz = gauss_hermite_1d(self.quadrature_order)
        code = self.problem.model.activation_code
        # A[q1, j] = E_t sum_q2 w_q2 sigma(x2_j (t z_q1 + sqrt(1 - t^2) z_q2))
        A = np.zeros((z.size, x2.size))
        for tk, wk in zip(t, w):
            arg = (tk * z[:, None, None] + math.sqrt(1.0 - tk * tk) * z[None, :, None]) * x2[None, None, :]
            A += wk * np.tensordot(wz, activation_values(arg, code), axes=(0, 1))
        arg = np.multiply.outer(x, z)
        u = (activation_values(arg, code) * wz) @ A
        du = (activation_values(arg, code, True) * (wz * z)) @ A
        return u, du

    def _table_hermite(self, r, r2):
        pr = self.problem
        K = pr.hermite_order
        mom = sphere_moments(self.d, K)
        u = np.zeros((r.size, r2.size))
        du = np.zeros((r.size, r2.size))
        code = pr.model.activation_code
        for s in (pr.s_plus, pr.s_minus):
            c1, dc1 = hermite_coefficients(s * r, code, K, pr.hermite_nodes)
            c2, _ = hermite_coefficients(s * r2, code, K, pr.hermite_nodes)
            u += 0.5 * (c1 * mom) @ c2.T
            du += 0.5 * s * (dc1 * mom) @ c2.T
        return u, du

    def _hermite_sums(self, r, r_atoms, weights):
        """V(r_i), V'(r_i), sum_j w_j u_bar(r_i, r_j) and sum_j w_j d_1 u_bar(r_i, r_j) in
        O((N + M) K) operations (hermite; the coefficients are shared when r is r_atoms)."""
        pr = self.problem
        K = pr.hermite_order
        mom = sphere_moments(self.d, K)
        code = pr.model.activation_code
        same = r.shape == r_atoms.shape and np.array_equal(r, r_atoms)
        V = np.zeros(r.size)
        dV = np.zeros(r.size)
        u = np.zeros(r.size)
        du = np.zeros(r.size)
        for s, sign in ((pr.s_plus, 0.5), (pr.s_minus, -0.5)):
            c1, dc1 = hermite_coefficients(s * r, code, K, pr.hermite_nodes)
            c2 = c1 if same else hermite_coefficients(s * r_atoms, code, K, pr.hermite_nodes, False)[0]
            moment = mom * (weights @ c2)
            u += 0.5 * c1 @ moment
            du += 0.5 * s * dc1 @ moment
            V += sign * c1[:, 0]
            dV += sign * s * dc1[:, 0]
        return V, dV, u, du

    def _atom_sums(self, r, r_atoms, weights):
        """V, V' at r and the u_bar, d_1 u_bar sums against the atoms."""
        r = np.atleast_1d(np.asarray(r, dtype=np.float64))
        r_atoms = np.atleast_1d(np.asarray(r_atoms, dtype=np.float64))
        weights = np.asarray(weights, dtype=np.float64)
        if self.problem.method == "hermite":
            return self._hermite_sums(r, r_atoms, weights)
        V, dV = self.problem.radial_V(r)
        u, du = self.u_bar_table(r, r_atoms)
        return V, dV, u @ weights, du @ weights

    def radial_velocity(self, r, r_atoms, weights):
        """v_r at radii r for the measure sum_j weights_j delta_{r_atoms_j} (any radii, no grid).

        With r = r_atoms this moves a Lagrangian (particle) discretisation of the radial PDE.
        """
        _, dV, _, du = self._atom_sums(r, r_atoms, weights)
        return dV / self.alpha - du

    def atoms_risk(self, r_atoms, weights):
        """R of the radial measure sum_j weights_j delta_{r_atoms_j} (any radii, no grid)."""
        weights = np.asarray(weights, dtype=np.float64)
        V, _, u, _ = self._atom_sums(r_atoms, r_atoms, weights)
        return (0.5 * self.problem.label_second_moment / self.alpha**2 - float(V @ weights) / self.alpha
                + 0.5 * float(weights @ u))

    # ----------------------------------------------------------------------------------------
    # Densities.

    def initial_density(self, tau: float = 1.0, law: str = "gaussian", samples=None) -> np.ndarray:
        """Cell densities of the law of |a| at t = 0.

        Parameters
        ----------
        tau : float
            Init scale, as in :class:`meanfield.Init`.
        law : str
            ``"gaussian"``: a ~ tau N(0, I_d / d), so |a| = tau chi_d / sqrt(d) (scipy.stats.chi);
            ``"sphere"``: |a| = tau (all the mass in one cell).
        samples : array_like, optional
            Radii (for instance |a_i| of a particle state): their histogram on the grid
            (each sample counts 1/len(samples)); overrides ``tau`` and ``law``.

        Returns
        -------
        ndarray, shape (n_cells,): densities, sum(rho) * h = 1.

        Raises
        ------
        ValueError
            If more than 1e-10 of the mass lies beyond r_max (or a sample does).
        """
        h = self.h
        if samples is not None:
            samples = np.asarray(samples, dtype=np.float64).ravel()
            if samples.size == 0 or not np.isfinite(samples).all() or (samples < 0).any():
                raise ValueError("samples must be finite radii >= 0")
            if samples.max() > self.r_max:
                raise ValueError(f"a sample radius {samples.max():g} exceeds r_max = {self.r_max:g}")
            index = np.minimum((samples / h).astype(np.int64), self.n_cells - 1)
            mass = np.bincount(index, minlength=self.n_cells) / samples.size
            return mass / h
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if law == "gaussian":
            scale = tau / math.sqrt(self.d)
            cdf = scipy.stats.chi(self.d).cdf(self.edges / scale)
            tail = 1.0 - cdf[-1]
            if tail > 1e-10:
                raise ValueError(f"mass {tail:.2e} of the initial law lies beyond r_max = {self.r_max:g}")
            mass = np.diff(cdf)
            mass[-1] += tail
            return mass / h
        if law == "sphere":
            if tau >= self.r_max:
                raise ValueError(f"tau = {tau} must be < r_max = {self.r_max}")
            mass = np.zeros(self.n_cells)
            mass[min(int(tau / h), self.n_cells - 1)] = 1.0
            return mass / h
        raise ValueError(f"law must be 'gaussian' or 'sphere', got {law!r}")

    def mass(self, density) -> float:
        """Total mass sum_i rho_i h (math.fsum)."""
        return math.fsum(np.asarray(density, dtype=np.float64) * self.h)

    def mean_radius(self, density) -> float:
        """int r drho (cell masses at the cell centres; exact for the piecewise-constant density)."""
        mass = np.asarray(density, dtype=np.float64) * self.h
        return float(mass @ self.centers) / float(mass.sum())

    def risk(self, density) -> float:
        """R(rho) = 1/(2 alpha^2) - (1/alpha) sum_i V(r_i) m_i + (1/2) sum_ij u_bar(r_i, r_j) m_i m_j."""
        mass = np.asarray(density, dtype=np.float64) * self.h
        return (0.5 * self.problem.label_second_moment / self.alpha**2
                - float(self.V_centers @ mass) / self.alpha + 0.5 * float(mass @ self.u_bar @ mass))

    def face_velocity(self, density) -> np.ndarray:
        """v_r at the n_cells + 1 faces (the two walls included, where the flux is zero)."""
        mass = np.asarray(density, dtype=np.float64) * self.h
        return self.dV_faces / self.alpha - self.du_bar @ mass

    def quantile(self, density, q) -> np.ndarray:
        """Inverse of the (piecewise-linear) cumulative distribution of the density at q in [0, 1]."""
        p = np.asarray(density, dtype=np.float64) * self.h
        p = p / p.sum()
        cum = np.concatenate([[0.0], np.cumsum(p)])
        q = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
        # the cell i with cum_i <= q < cum_{i+1} (a cell of positive mass); q = 1: the last such
        i = np.searchsorted(cum, q, side="right") - 1
        last = int(np.flatnonzero(p > 0)[-1])
        i = np.minimum(i, last)
        frac = np.clip((q - cum[i]) / np.where(p[i] > 0, p[i], 1.0), 0.0, 1.0)
        return self.edges[i] + frac * self.h

    def wasserstein2(self, density, samples) -> float:
        """Exact W2 between the piecewise-constant density and the empirical law of ``samples``.

        W2^2 = int_0^1 (F^-1(q) - G^-1(q))^2 dq, integrated exactly on the merged breakpoints
        (F^-1 is linear on each cell of positive mass, G^-1 constant between samples).
        """
        mass = np.asarray(density, dtype=np.float64) * self.h
        total = mass.sum()
        cum = np.concatenate([[0.0], np.cumsum(mass)]) / total
        x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
        n = x.size
        knots = np.union1d(cum[np.concatenate([[True], mass > 0])], np.arange(n + 1) / n)
        knots = knots[(knots >= 0) & (knots <= 1)]
        q0, q1 = knots[:-1], knots[1:]
        keep = q1 > q0
        q0, q1 = q0[keep], q1[keep]
        mid = 0.5 * (q0 + q1)
        i = np.clip(np.searchsorted(cum, mid, side="right") - 1, 0, self.n_cells - 1)
        p = mass[i] / total
        # F^-1 at both ends of the piece, clamped into cell i (robust to rounding in cum)
        a = self.edges[i] + np.clip((q0 - cum[i]) / p, 0.0, 1.0) * self.h
        b = self.edges[i] + np.clip((q1 - cum[i]) / p, 0.0, 1.0) * self.h
        c = x[np.clip((mid * n).astype(np.int64), 0, n - 1)]
        e = a - c
        g = b - a
        w2 = np.sum((q1 - q0) * (e * e + e * g + g * g / 3.0))
        return math.sqrt(max(w2, 0.0))

    # ----------------------------------------------------------------------------------------
    def _fluxes(self, mass):
        rho = mass / self.h
        v = self.dV_faces / self.alpha - self.du_bar @ mass
        n = self.n_cells
        if self.reconstruction == "upwind":
            left = rho[:-1]
            right = rho[1:]
        else:
            diff = np.diff(rho)
            slope = np.zeros(n)
            a, b = diff[:-1], diff[1:]
            slope[1:-1] = np.where(a * b > 0, np.sign(a) * np.minimum(np.abs(a), np.abs(b)), 0.0)
            left = rho[:-1] + 0.5 * slope[:-1]
            right = rho[1:] - 0.5 * slope[1:]
        vi = v[1:-1]
        F = np.zeros(n + 1)
        F[1:-1] = np.maximum(vi, 0.0) * left + np.minimum(vi, 0.0) * right
        return F, v

    def run(self, density0, t_max: float, times=None, max_step: float | None = None) -> RadialSolution:
        """Integrate the PDE from ``density0`` up to ``t_max``, recording at ``times``.

        Parameters
        ----------
        density0 : ndarray, shape (n_cells,)
            Initial cell densities (e.g. from :meth:`initial_density`).
        t_max : float
        times : array_like, optional
            Recording times in [0, t_max] (default ``meanfield.time_grid(t_max)``); the steps
            are shortened to land on them exactly.
        max_step : float, optional
            Upper bound on the time step (besides the CFL limit).

        Returns
        -------
        RadialSolution
        """
        mass = np.asarray(density0, dtype=np.float64).ravel() * self.h
        if mass.shape != (self.n_cells,) or not np.isfinite(mass).all() or (mass < 0).any():
            raise ValueError(f"density0 must be {self.n_cells} finite values >= 0")
        if not (math.isfinite(t_max) and t_max > 0):
            raise ValueError(f"t_max must be a finite number > 0, got {t_max!r}")
        times = time_grid(t_max) if times is None else np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or (np.diff(times) < 0).any() or times[0] < 0 or times[-1] > t_max:
            raise ValueError("times must be sorted and within [0, t_max]")
        max_step = math.inf if max_step is None else float(max_step)
        t = 0.0
        n_steps = 0
        densities = np.empty((times.size, self.n_cells))
        risks = np.empty(times.size)
        for k, t_record in enumerate(times):
            while t < t_record:
                F, v = self._fluxes(mass)
                vmax = np.abs(v[1:-1]).max()
                dt = min(t_record - t, max_step, self.cfl * self.h / vmax if vmax > 0 else math.inf)
                stage = mass + dt * (F[:-1] - F[1:])
                F2, _ = self._fluxes(stage)
                mass = 0.5 * (mass + stage + dt * (F2[:-1] - F2[1:]))
                t = t_record if t_record - t - dt <= 1e-12 * max(1.0, t_record) else t + dt
                n_steps += 1
            densities[k] = mass / self.h
            risks[k] = self.risk(densities[k])
        return RadialSolution(times, densities, risks, n_steps)
