"""Gaussian averages of a committee machine's activations: I2, I3, I4 and J2.

For a centred Gaussian vector u with covariance C (for the committee machines of
:mod:`meanfield.online` u = (lambda_1..lambda_K, nu_1..nu_M) and C = [[Q, R], [R^T, T]]):

    I2(a, b)       = E[g(u_a) g(u_b)]
    I3(a, b, c)    = E[g'(u_a) u_b g(u_c)]
    I4(a, b, c, e) = E[g'(u_a) g'(u_b) g(u_c) g(u_e)]
    J2(a, b)       = E[g'(u_a) g'(u_b)]

Indices may repeat (I3(k, k, j) uses the same variable twice). How each is computed:

``erf`` (g(z) = erf(z / sqrt 2)): the closed forms of Saad & Solla (1995), with C-hat = 1 + C on
the diagonal,

    I2 = (2/pi) arcsin(C_ab / sqrt((1 + C_aa)(1 + C_bb)))
    I3 = (2/pi) (C_bc (1 + C_aa) - C_ab C_ac) / ((1 + C_aa) sqrt(L3)),
         L3 = (1 + C_aa)(1 + C_cc) - C_ac^2
    J2 = (2/pi) / sqrt((1 + C_aa)(1 + C_bb) - C_ab^2)
    I4 = (4/pi^2) L4^(-1/2) arcsin(L0 / sqrt(L1 L2)),  L4 = (1 + C_aa)(1 + C_bb) - C_ab^2,
         L0 = L4 C_ce - C_bc C_be (1 + C_aa) - C_ac C_ae (1 + C_bb) + C_ab C_ac C_be + C_ab C_ae C_bc,
         L1 = L4 (1 + C_cc) - C_bc^2 (1 + C_aa) - C_ac^2 (1 + C_bb) + 2 C_ab C_ac C_bc,
         L2 = L1 with e in place of c.

Each is checked against 10^6-sample Monte Carlo in tests/test_online.py (correlations near +-1
and variances up to 9 included): all four hold within 5 standard errors.

``linear`` (g(z) = z): exact, I2 = C_ab, I3 = C_bc, I4 = C_ce, J2 = 1.

``relu``: I2 is the arc-cosine kernel sqrt(C_aa C_bb) (sin t + (pi - t) cos t) / (2 pi) with
cos t = C_ab / sqrt(C_aa C_bb); J2 = 1/4 + arcsin(rho_ab) / (2 pi); I3 by Stein's identity,
E[u_b F(u)] = sum_j C_bj E[d_j F], with F = H(u_a) relu(u_c):

    I3 = C_ab sqrt(C_aa C_cc - C_ac^2) / (2 pi C_aa) + C_bc (1/4 + arcsin(rho_ac) / (2 pi))

(the first term is C_ab E[delta(u_a) relu(u_c)]); I4 (an orthant probability in four
dimensions) by quadrature.

Any other activation of ``meanfield.engine`` (``sigmoid``, ``tanh``, ``softplus``, ``gelu``,
``normal_cdf``), and every average when ``method="quadrature"``: a cubature over the distinct
variables of the index tuple (I4(k, k, j, j) is a 2-dimensional integral), u = L z with z standard
normal and L the Cholesky factor of their covariance C_sub (smooth in C, so that the ODE solver
sees a smooth right-hand side), or V diag(sqrt(max(w, 0))) from the eigendecomposition
C_sub = V diag(w) V^T where C_sub is singular. Smooth activations: tensor-product
Gauss-Hermite with :data:`QUADRATURE_ORDERS` nodes per dimension (number of distinct variables ->
order). relu (:data:`NON_SMOOTH_ACTIVATIONS`): its step and kink defeat Gauss-Hermite (measured:
I4 off by 20% with 16^4 nodes, J2 by 6% with 96^2), so 2^16 scrambled Sobol points (seed 0)
mapped to N(0, I_n), a fixed randomised quasi-Monte Carlo rule.

Measured accuracy (tests/test_online.py, ``test_quadrature_accuracy``, all 4^n index tuples of
three 4 x 4 covariances): erf through Gauss-Hermite against its closed forms, variances up to 1.5
and correlations up to 0.999 / -0.998: I2, J2 below 1e-15, I3 below 3e-10, I4 below 4e-5;
variances up to 25: I2 3e-4, J2 1.2e-3, I3 1.5e-2, I4 1.6e-2 (the Gaussian factor g' is then much
narrower than the node spacing). relu through Sobol against its closed forms: I2 4e-5, J2 8e-5,
I3 6e-5 at variances up to 1.5; I2 5e-4, J2 2.4e-4, I3 1.5e-3 at variances up to 25 (values of
the order of the variance); relu I4 against 10^6-sample Monte Carlo within 5 standard errors +
1e-3. The Sobol estimate is piecewise constant in C (a node crossing a kink), so an adaptive ODE
solver takes small steps with it: integrating relu is slow (about 15 s for K = M = 2 up to
alpha = 2 at rtol 1e-5, against 2 s for tanh and 0.1 s for erf).
"""
from __future__ import annotations

import math

import numpy as np

from ..engine._activations import ACTIVATION_ENTRIES

# Gauss-Hermite nodes per dimension for an average over n distinct variables (n -> order):
# order^n nodes per index tuple.
QUADRATURE_ORDERS = {1: 128, 2: 96, 3: 40, 4: 16}
# Activations whose kinks or steps defeat Gauss-Hermite (measured: relu I4 off by 20% with 16^4
# nodes, relu J2 by 6e-2 with 96^2): their averages by randomised quasi-Monte Carlo instead,
# 2^SOBOL_LOG2_POINTS scrambled Sobol points (seed 0) mapped to N(0, I_n).
NON_SMOOTH_ACTIVATIONS = ("relu",)
SOBOL_LOG2_POINTS = 16
# Index tuples per block of the quadrature (bounds the memory at order^n * n * block floats).
_QUADRATURE_BLOCK_NODES = 1 << 21

CLOSED_FORM_AVERAGES = {
    "erf": ("I2", "I3", "I4", "J2"),
    "linear": ("I2", "I3", "I4", "J2"),
    "relu": ("I2", "I3", "J2"),
}
AVERAGE_METHODS = ("auto", "closed_form", "quadrature")


def _sobol_rule(n_dims: int, log2_points: int):
    """Scrambled Sobol points (seed 0) mapped to N(0, I_n): nodes (2^log2_points, n), equal weights."""
    from scipy.stats import norm, qmc

    uniform = qmc.Sobol(n_dims, scramble=True, seed=0).random_base2(log2_points)
    nodes = norm.ppf(uniform)
    return nodes, np.full(len(nodes), 1.0 / len(nodes))


def _hermite_rule(n_dims: int, order: int):
    """Tensor-product probabilists' Gauss-Hermite rule for N(0, I_n): nodes (order^n, n), weights
    (order^n,) summing to 1."""
    nodes_1d, weights_1d = np.polynomial.hermite_e.hermegauss(order)
    weights_1d = weights_1d / math.sqrt(2.0 * math.pi)
    grids = np.meshgrid(*([nodes_1d] * n_dims), indexing="ij")
    nodes = np.stack([grid.ravel() for grid in grids], axis=1)
    weight_grids = np.meshgrid(*([weights_1d] * n_dims), indexing="ij")
    weights = np.prod(np.stack([grid.ravel() for grid in weight_grids], axis=1), axis=1)
    return nodes, weights


class GaussianAverages:
    """I2, I3, I4 and J2 of one activation, vectorised over index tuples.

    Every method takes the covariance ``C`` of shape (n, n) (float64, symmetric positive
    semidefinite) and integer index arrays that broadcast together to a shape S; it returns a
    float64 array of shape S whose entries are the average at each index tuple. See the module
    docstring for the formulas and the measured accuracy of the quadrature.

    Parameters
    ----------
    activation : str
        ``"erf"`` (erf(z/sqrt 2)), ``"linear"``, ``"relu"``, or any other activation of
        ``meanfield.engine`` (``sigmoid``, ``tanh``, ``softplus``, ``gelu``, ``normal_cdf``),
        whose averages are all by quadrature.
    method : str
        ``"auto"`` (closed forms where they exist, else quadrature), ``"closed_form"`` (raise
        where none exists) or ``"quadrature"`` (Gauss-Hermite for every average, to measure it).
    quadrature_orders : dict, optional
        Gauss-Hermite nodes per dimension by number of distinct variables (1 to 4), overriding
        those of :data:`QUADRATURE_ORDERS`.
    """

    def __init__(self, activation: str = "erf", method: str = "auto", quadrature_orders: dict | None = None):
        if activation not in ACTIVATION_ENTRIES:
            raise ValueError(f"activation must be one of {tuple(ACTIVATION_ENTRIES)}, got {activation!r}")
        if method not in AVERAGE_METHODS:
            raise ValueError(f"method must be one of {AVERAGE_METHODS}, got {method!r}")
        closed = CLOSED_FORM_AVERAGES.get(activation, ())
        if method == "closed_form" and len(closed) < 4:
            raise ValueError(f"{activation!r} has closed forms for {closed} only: use method='auto' or 'quadrature'")
        self.activation = activation
        self.method = method
        self.closed_form = () if method == "quadrature" else closed
        self.quadrature_orders = {**QUADRATURE_ORDERS, **(quadrature_orders or {})}
        entry = ACTIVATION_ENTRIES[activation]
        self._g = entry.sigma
        self._g_prime = entry.sigma_prime
        self._rules = {}

    def describe(self) -> str:
        """One line saying how each average is computed.

        Returns
        -------
        str
        """
        parts = []
        for name, n in (("I2", 2), ("I3", 3), ("I4", 4), ("J2", 2)):
            if name in self.closed_form:
                how = "closed form"
            elif self.activation in NON_SMOOTH_ACTIVATIONS:
                how = f"scrambled Sobol 2^{SOBOL_LOG2_POINTS} points"
            else:
                how = f"Gauss-Hermite, {self.quadrature_orders[n]}^{n} nodes (fewer for repeated indices)"
            parts.append(f"{name}: {how}")
        return f"{self.activation}: " + ", ".join(parts)

    # --- the four averages --------------------------------------------------------------------

    def i2(self, C, a, b) -> np.ndarray:
        """I2(a, b) = E[g(u_a) g(u_b)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b : array_like of int
            Indices into u, broadcast together to a shape S.

        Returns
        -------
        ndarray, shape S, float64
        """
        C, (a, b) = _prepare(C, a, b)
        if "I2" in self.closed_form:
            return _CLOSED_I2[self.activation](C, a, b)
        return self._quadrature(C, (a, b), (self._g, self._g))

    def i3(self, C, a, b, c) -> np.ndarray:
        """I3(a, b, c) = E[g'(u_a) u_b g(u_c)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b, c : array_like of int
            Indices into u (b is the variable that multiplies), broadcast to a shape S.

        Returns
        -------
        ndarray, shape S, float64
        """
        C, (a, b, c) = _prepare(C, a, b, c)
        if "I3" in self.closed_form:
            return _CLOSED_I3[self.activation](C, a, b, c)
        return self._quadrature(C, (a, b, c), (self._g_prime, _identity, self._g))

    def i4(self, C, a, b, c, e) -> np.ndarray:
        """I4(a, b, c, e) = E[g'(u_a) g'(u_b) g(u_c) g(u_e)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b, c, e : array_like of int
            Indices into u, broadcast together to a shape S.

        Returns
        -------
        ndarray, shape S, float64
        """
        C, (a, b, c, e) = _prepare(C, a, b, c, e)
        if "I4" in self.closed_form:
            return _CLOSED_I4[self.activation](C, a, b, c, e)
        return self._quadrature(C, (a, b, c, e), (self._g_prime, self._g_prime, self._g, self._g))

    def j2(self, C, a, b) -> np.ndarray:
        """J2(a, b) = E[g'(u_a) g'(u_b)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b : array_like of int
            Indices into u, broadcast together to a shape S.

        Returns
        -------
        ndarray, shape S, float64
        """
        C, (a, b) = _prepare(C, a, b)
        if "J2" in self.closed_form:
            return _CLOSED_J2[self.activation](C, a, b)
        return self._quadrature(C, (a, b), (self._g_prime, self._g_prime))

    # --- quadrature -----------------------------------------------------------------------------

    def _rule(self, n_dims: int):
        if n_dims not in self._rules:
            if self.activation in NON_SMOOTH_ACTIVATIONS:
                self._rules[n_dims] = _sobol_rule(n_dims, SOBOL_LOG2_POINTS)
            else:
                self._rules[n_dims] = _hermite_rule(n_dims, int(self.quadrature_orders[n_dims]))
        return self._rules[n_dims]

    def _quadrature(self, C, indices, functions) -> np.ndarray:
        """E[prod_i f_i(u_{indices_i})] by the rule of the distinct variables of each tuple (a
        tuple with repeated indices, I4(k, k, j, j), is a lower-dimensional integral), after the
        factor C_sub = L L^T of their covariance."""
        shape = indices[0].shape
        stacked = np.stack([index.ravel() for index in indices], axis=1)          # (T, slots)
        # pattern[t, i]: which distinct variable slot i of tuple t is (first occurrence order)
        equal = stacked[:, :, None] == stacked[:, None, :]
        first = np.argmax(equal, axis=2)                                           # first equal slot
        is_new = first == np.arange(stacked.shape[1])
        pattern = np.cumsum(is_new, axis=1)[np.arange(len(stacked))[:, None], first] - 1
        out = np.empty(len(stacked))
        patterns, which = np.unique(pattern, axis=0, return_inverse=True)
        for number, slots in enumerate(patterns):
            rows = np.flatnonzero(which.ravel() == number)
            n_dims = int(slots.max()) + 1
            distinct = np.stack([stacked[rows][:, int(np.flatnonzero(slots == j)[0])] for j in range(n_dims)],
                                axis=1)                                             # (t, n_dims)
            sub = C[distinct[:, :, None], distinct[:, None, :]]                     # (t, n, n)
            factor = _smooth_factor(sub)
            nodes, weights = self._rule(n_dims)
            block = max(1, _QUADRATURE_BLOCK_NODES // len(weights))
            for start in range(0, len(rows), block):
                part = rows[start:start + block]
                u = np.matmul(nodes, factor[start:start + block].transpose(0, 2, 1))   # (t, P, n)
                integrand = functions[0](u[..., slots[0]])
                for i in range(1, len(slots)):
                    integrand = integrand * functions[i](u[..., slots[i]])
                out[part] = integrand @ weights
        return out.reshape(shape)


def _smooth_factor(covariances) -> np.ndarray:
    """L with L L^T = C for a stack of covariances (t, n, n): the Cholesky factor, a smooth
    function of C (an eigendecomposition is not: its eigenvectors flip sign or rotate, and the
    cubature jumps by its error, which stalls an adaptive ODE solver); the eigendecomposition
    V diag(sqrt(max(w, 0))) only for the singular ones."""
    factor = np.empty_like(covariances)
    regular = np.ones(len(covariances), dtype=bool)
    try:
        factor[:] = np.linalg.cholesky(covariances)
    except np.linalg.LinAlgError:
        for t, covariance in enumerate(covariances):
            try:
                factor[t] = np.linalg.cholesky(covariance)
            except np.linalg.LinAlgError:
                regular[t] = False
    if not regular.all():
        eigenvalues, eigenvectors = np.linalg.eigh(covariances[~regular])
        factor[~regular] = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None, :]
    return factor


def _identity(z):
    return z


def _prepare(C, *indices):
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"the covariance must be a square matrix, got shape {C.shape}")
    arrays = np.broadcast_arrays(*[np.asarray(index, dtype=np.intp) for index in indices])
    return C, [np.array(array) for array in arrays]


# --- closed forms ---------------------------------------------------------------------------------

def _erf_i2(C, a, b):
    return (2.0 / np.pi) * np.arcsin(C[a, b] / np.sqrt((1.0 + C[a, a]) * (1.0 + C[b, b])))


def _erf_i3(C, a, b, c):
    one_aa = 1.0 + C[a, a]
    lambda_3 = one_aa * (1.0 + C[c, c]) - C[a, c] ** 2
    return (2.0 / np.pi) * (C[b, c] * one_aa - C[a, b] * C[a, c]) / (one_aa * np.sqrt(lambda_3))


def _erf_i4(C, a, b, c, e):
    one_aa, one_bb = 1.0 + C[a, a], 1.0 + C[b, b]
    C_ab, C_ac, C_ae, C_bc, C_be = C[a, b], C[a, c], C[a, e], C[b, c], C[b, e]
    lambda_4 = one_aa * one_bb - C_ab ** 2
    lambda_0 = (lambda_4 * C[c, e] - C_bc * C_be * one_aa - C_ac * C_ae * one_bb
                + C_ab * C_ac * C_be + C_ab * C_ae * C_bc)
    lambda_1 = lambda_4 * (1.0 + C[c, c]) - C_bc ** 2 * one_aa - C_ac ** 2 * one_bb + 2.0 * C_ab * C_ac * C_bc
    lambda_2 = lambda_4 * (1.0 + C[e, e]) - C_be ** 2 * one_aa - C_ae ** 2 * one_bb + 2.0 * C_ab * C_ae * C_be
    ratio = np.clip(lambda_0 / np.sqrt(lambda_1 * lambda_2), -1.0, 1.0)
    return (4.0 / np.pi ** 2) / np.sqrt(lambda_4) * np.arcsin(ratio)


def _erf_j2(C, a, b):
    return (2.0 / np.pi) / np.sqrt((1.0 + C[a, a]) * (1.0 + C[b, b]) - C[a, b] ** 2)


def _correlation(C, a, b):
    norms = np.sqrt(C[a, a] * C[b, b])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(norms > 0, C[a, b] / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(rho, -1.0, 1.0), norms


def _relu_i2(C, a, b):
    rho, norms = _correlation(C, a, b)
    theta = np.arccos(rho)
    return norms * (np.sqrt(1.0 - rho ** 2) + (np.pi - theta) * rho) / (2.0 * np.pi)


def _relu_j2(C, a, b):
    rho, _ = _correlation(C, a, b)
    return 0.25 + np.arcsin(rho) / (2.0 * np.pi)


def _relu_i3(C, a, b, c):
    # Stein: E[u_b H(u_a) relu(u_c)] = C_ab E[delta(u_a) relu(u_c)] + C_bc E[H(u_a) H(u_c)]
    C_aa = C[a, a]
    residual = np.sqrt(np.clip(C_aa * C[c, c] - C[a, c] ** 2, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        delta_term = np.where(C_aa > 0, residual / (2.0 * np.pi * np.where(C_aa > 0, C_aa, 1.0)), 0.0)
    return C[a, b] * delta_term + C[b, c] * _relu_j2(C, a, c)


_CLOSED_I2 = {"erf": _erf_i2, "relu": _relu_i2, "linear": lambda C, a, b: C[a, b]}
_CLOSED_I3 = {"erf": _erf_i3, "relu": _relu_i3, "linear": lambda C, a, b, c: C[b, c]}
_CLOSED_I4 = {"erf": _erf_i4, "linear": lambda C, a, b, c, e: C[c, e]}
_CLOSED_J2 = {"erf": _erf_j2, "relu": _relu_j2, "linear": lambda C, a, b: np.ones(np.shape(a))}
