"""Gaussian averages of a committee machine's activations: I2, I3, I4, J2 and K2.

For a Gaussian vector u ~ N(mu, C) (for the committee machines of :mod:`meanfield.online`
u = (lambda_1..lambda_K, nu_1..nu_M), C = [[Q, R], [R^T, T]] and mu = (b, b*), the biases):

    I2(a, b)       = E[g(u_a) g(u_b)]
    I3(a, b, c)    = E[g'(u_a) (u_b - mu_b) g(u_c)]
    I4(a, b, c, e) = E[g'(u_a) g'(u_b) g(u_c) g(u_e)]
    J2(a, b)       = E[g'(u_a) g'(u_b)]
    K2(a, c)       = E[g'(u_a) g(u_c)]

Indices may repeat (I3(k, k, j) uses the same variable twice). mu defaults to zero, and a zero
mu takes the centred formulas below, so that results without biases are bit for bit those of
before. How each is computed:

``erf`` (g(z) = erf(z / sqrt 2) = 2 Phi(z) - 1), centred: the closed forms of Saad & Solla
(1995), with C-hat = 1 + C on the diagonal,

    I2 = (2/pi) arcsin(C_ab / sqrt((1 + C_aa)(1 + C_bb)))
    I3 = (2/pi) (C_bc (1 + C_aa) - C_ab C_ac) / ((1 + C_aa) sqrt(L3)),
         L3 = (1 + C_aa)(1 + C_cc) - C_ac^2
    J2 = (2/pi) / sqrt((1 + C_aa)(1 + C_bb) - C_ab^2)
    I4 = (4/pi^2) L4^(-1/2) arcsin(L0 / sqrt(L1 L2)),  L4 = (1 + C_aa)(1 + C_bb) - C_ab^2,
         L0 = L4 C_ce - C_bc C_be (1 + C_aa) - C_ac C_ae (1 + C_bb) + C_ab C_ac C_be + C_ab C_ae C_bc,
         L1 = L4 (1 + C_cc) - C_bc^2 (1 + C_aa) - C_ac^2 (1 + C_bb) + 2 C_ab C_ac C_bc,
         L2 = L1 with e in place of c.

erf with a mean, all in closed form (n_a = sqrt(1 + C_aa); Phi(x) = P(X < x) for an
independent standard normal X per factor, so that E[Phi(u_a) Phi(u_b)] is a bivariate normal
CDF; phi(u_a) = E_Y[delta(u_a + Y)], so that E[phi(u_a) F] is the N(mu_a, n_a^2) density at 0
times E[F | u_a + Y = 0]):

    I2 = 4 [Phi_2(h_a, h_b; rho) - Phi(h_a) Phi(h_b)] + erf(h_a / sqrt 2) erf(h_b / sqrt 2),
         h_a = mu_a / n_a, rho = C_ab / (n_a n_b)
    J2 = (2/pi) L4^(-1/2) exp(-q / 2),  q = ((1 + C_bb) mu_a^2 - 2 C_ab mu_a mu_b + (1 + C_aa) mu_b^2) / L4
    K2 = 2 p_a erf(xi / sqrt 2),  p_a = exp(-mu_a^2 / (2 n_a^2)) / (sqrt(2 pi) n_a),
         xi = (mu_c n_a^2 - C_ac mu_a) / (n_a sqrt(L3))
    I3 = C_ab E[g''(u_a) g(u_c)] + C_bc J2(a, c)     (Stein's identity), with
         E[g''(u_a) g(u_c)] = -2 p_a [(mu_a / n_a^2) erf(xi / sqrt 2) + 2 phi(xi) C_ac / (n_a sqrt(L3))]
         (the derivative of K2 in the mean of its g' factor)
    I4 = J2(a, b) I2'(c, e): exp(-(u_a^2 + u_b^2) / 2) tilts N(mu, C) into the Gaussian of u
         given u_a + Y_a = 0 and u_b + Y_b = 0, with mean mu - K A^-1 (mu_a, mu_b) and covariance
         C - K A^-1 K^T (A = I + C_{ab,ab}, K = C_{., ab}); I2' is I2 of that law.

At mu = 0 these reduce to Saad & Solla's. Phi_2 is Genz's algorithm of
``meanfield.kernels._gaussian`` (absolute error about 1e-16).

``linear`` (g(z) = z): exact, I2 = C_ab + mu_a mu_b, I3 = C_bc, I4 = C_ce + mu_c mu_e, J2 = 1,
K2 = mu_c.

``relu``, centred: I2 is the arc-cosine kernel sqrt(C_aa C_bb) (sin t + (pi - t) cos t) / (2 pi)
with cos t = C_ab / sqrt(C_aa C_bb); J2 = 1/4 + arcsin(rho_ab) / (2 pi); I3 by Stein's identity,
E[u_b F(u)] = sum_j C_bj E[d_j F], with F = H(u_a) relu(u_c):

    I3 = C_ab sqrt(C_aa C_cc - C_ac^2) / (2 pi C_aa) + C_bc (1/4 + arcsin(rho_ac) / (2 pi))

(the first term is C_ab E[delta(u_a) relu(u_c)]).

relu with a mean (r_a = sqrt(C_aa), beta_a = mu_a / r_a, rho = C_ac / (r_a r_c),
s = sqrt(1 - rho^2), gamma_c = (beta_c - rho beta_a) / s; SCIENCE.md section 2b):

    J2 = Phi_2(beta_a, beta_b; rho)
    K2 = E[H(u_a) relu(u_c)] = mu_c Phi_2 + r_c [rho phi(beta_a) Phi(gamma_c) + phi(beta_c) Phi(gamma_a)]
    I2 = mu_a K2(a, c) + r_a phi(beta_a) E[relu(u_c) | u_a = 0] + C_ac Phi_2
    I3 = (C_ab / r_a) phi(beta_a) E[relu(u_c) | u_a = 0] + C_bc Phi_2(beta_a, beta_c; rho)

with E[relu(x)] = sd phi(m / sd) + m Phi(m / sd) for x ~ N(m, sd^2), the conditional law of u_c
given u_a = 0 being N(mu_c - C_ac mu_a / C_aa, C_cc - C_ac^2 / C_aa). In this form every term has
its limit at a zero variance (the variable is its mean: H(mu), with H(0) = 1/2, the limit of
neighbouring states) and at |rho| = 1 (a = c included: E[H(u) relu(u)] = E[relu(u)]).

relu I4 (an orthant average in up to four dimensions), centred or not, by a conditional rule:
H(u) relu(u) = relu(u) and H^2 = H leave 0, 1 or 2 step variables S not among the relu variables
c, e. None: I2. Otherwise u_S = mu_S + L z (L the Cholesky factor of C_SS), and given z the pair
(u_c, u_e) is Gaussian with mean linear in z and a fixed covariance, so E[relu(u_c) relu(u_e) | z]
is I2 above, a smooth function of z; it is integrated over {u_S > 0} within |z_i| <= 8.5 by
Gauss-Legendre with :data:`RELU_I4_NODES` (24) nodes per piece, the pieces split at z = 0, at the
kinks of relu (zeros of the conditional means) and the edges of their boundary layers (4
conditional standard deviations), and, in two dimensions, where the boundary u_b = 0 or a kink
line crosses the window or the two meet. The rule is smooth in (mu, C), unlike a Monte Carlo
estimate (``test_relu_i4_rule_is_smooth``).

Any other activation of ``meanfield.engine`` (``sigmoid``, ``tanh``, ``softplus``, ``gelu``,
``normal_cdf``), and every average when ``method="quadrature"``: a cubature over the distinct
variables of the index tuple (I4(k, k, j, j) is a 2-dimensional integral), u = mu + L z with z
standard normal and L the Cholesky factor of their covariance C_sub (smooth in C, so that the ODE
solver sees a smooth right-hand side), or V diag(sqrt(max(w, 0))) from the eigendecomposition
C_sub = V diag(w) V^T where C_sub is singular. Smooth activations: tensor-product Gauss-Hermite
with :data:`QUADRATURE_ORDERS` nodes per dimension (number of distinct variables -> order). relu
(:data:`NON_SMOOTH_ACTIVATIONS`): its step and kink defeat Gauss-Hermite (measured: I4 off by 20%
with 16^4 nodes, J2 by 6% with 96^2), so 2^16 scrambled Sobol points (seed 0) mapped to N(0, I_n),
a fixed randomised quasi-Monte Carlo rule.

Measured accuracy (tests/test_online.py; covariances with variances 0.04 to 25, correlations
0.999 and -0.998, means (2.5, -3, 0.7, -1.2) and zero, all 4^n index tuples):

- every closed form and the relu I4 rule within 5 standard errors of 10^6-sample Monte Carlo
  (``test_averages_against_monte_carlo``), singular covariances included
  (``test_averages_with_singular_covariance``);
- relu I4 rule, 24 nodes against 96: below 1e-10, and 1.0e-6 at correlations 0.999 / -0.998
  (``test_relu_i4_rule_converges``); the Sobol rule is off by 1.8e-4 to 1.7e-2 on the same tuples;
- erf through Gauss-Hermite against its closed forms, variances up to 1.5: I2, J2, K2 below
  1e-15, I3 below 3e-10, I4 below 4e-5 (centred) and 5e-6 (with the means); variances up to 25:
  I2 3e-4, J2 1.2e-3, I3 1.5e-2, I4 1.6e-2 (the Gaussian factor g' is then much narrower than the
  node spacing). relu through Sobol against its closed forms: I2 4e-5, J2 1.5e-4, I3 1.7e-4,
  K2 5e-5 at variances up to 1.5; I2 5e-4, J2 2.4e-4, I3 2e-3 at variances up to 25.

Cost: the relu ODE (K = M = 2, alpha <= 2) took 0.13 s at rtol 1e-5 and 0.20 s at the default
rtol 1e-8 with the I4 rule, against 3.05 s and 94 s with the Sobol rule, whose estimate is
piecewise constant in C so that the adaptive solver takes small steps; for K = M = 4 (rtol 1e-6)
5.6 s against more than 19 minutes (stopped). docs/capabilities/online_sgd.md has the snippets.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy import special

from ..engine._activations import ACTIVATION_ENTRIES
from ..kernels._gaussian import bivariate_normal_cdf_s, bivariate_normal_excess

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
# relu I4 by the conditional rule (module docstring): Gauss-Legendre nodes per piece, and the
# window |z| <= RELU_I4_WINDOW of each standard normal coordinate (the mass beyond, times the
# quadratic growth of the integrand, is below 1e-15).
RELU_I4_NODES = 24
RELU_I4_WINDOW = 8.5
# A pivot of the factor of the step variables' covariance below this fraction of its diagonal
# entry counts as zero (the two students are parallel): the regression on it would divide
# rounding errors by it.
_PIVOT_TOLERANCE = 1e-14
# Floor on sqrt(1 - rho^2) in the conditional step probabilities of a relu pair (_relu_pair).
_S_FLOOR = 1e-8
# The boundary layer of a smoothed kink, in widths either side of it (the pieces of the rule
# split there too).
_LAYER_WIDTHS = 4.0

AVERAGE_NAMES = ("I2", "I3", "I4", "J2", "K2")
CLOSED_FORM_AVERAGES = {
    "erf": AVERAGE_NAMES,
    "linear": AVERAGE_NAMES,
    "relu": ("I2", "I3", "J2", "K2"),
}
# Averages by the conditional Gauss-Legendre rule of the module docstring (method "auto").
CONDITIONAL_RULE_AVERAGES = {"relu": ("I4",)}
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
    """I2, I3, I4, J2 and K2 of one activation, vectorised over index tuples.

    Every method takes the covariance ``C`` of shape (n, n) (float64, symmetric positive
    semidefinite), integer index arrays that broadcast together to a shape S, and optionally the
    mean ``mu`` of shape (n,) (float64; default zero); it returns a float64 array of shape S
    whose entries are the average at each index tuple. With ``mu`` absent or all zero the
    centred formulas are used, so that a zero mean gives bit for bit the results without one.
    See the module docstring for the formulas and the measured accuracy of the quadrature.

    Parameters
    ----------
    activation : str
        ``"erf"`` (erf(z/sqrt 2)), ``"linear"``, ``"relu"``, or any other activation of
        ``meanfield.engine`` (``sigmoid``, ``tanh``, ``softplus``, ``gelu``, ``normal_cdf``),
        whose averages are all by quadrature.
    method : str
        ``"auto"`` (closed forms where they exist, relu I4 by its conditional rule, else
        quadrature), ``"closed_form"`` (raise where a closed form is missing for any average) or
        ``"quadrature"`` (the cubature for every average, to measure it).
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
        if method == "closed_form" and len(closed) < len(AVERAGE_NAMES):
            raise ValueError(f"{activation!r} has closed forms for {closed} only: use method='auto' or 'quadrature'")
        self.activation = activation
        self.method = method
        self.closed_form = () if method == "quadrature" else closed
        self.conditional_rule = CONDITIONAL_RULE_AVERAGES.get(activation, ()) if method == "auto" else ()
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
        for name, n in (("I2", 2), ("I3", 3), ("I4", 4), ("J2", 2), ("K2", 2)):
            if name in self.closed_form:
                how = "closed form"
            elif name in self.conditional_rule:
                how = (f"closed form given the step variables, Gauss-Legendre over them ({RELU_I4_NODES} nodes "
                       "per piece)")
            elif self.activation in NON_SMOOTH_ACTIVATIONS:
                how = f"scrambled Sobol 2^{SOBOL_LOG2_POINTS} points"
            else:
                how = f"Gauss-Hermite, {self.quadrature_orders[n]}^{n} nodes (fewer for repeated indices)"
            parts.append(f"{name}: {how}")
        return f"{self.activation}: " + ", ".join(parts)

    # --- the five averages --------------------------------------------------------------------

    def i2(self, C, a, b, mu=None) -> np.ndarray:
        """I2(a, b) = E[g(u_a) g(u_b)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b : array_like of int
            Indices into u, broadcast together to a shape S.
        mu : array_like, shape (n,), float64, optional
            Mean of u (default zero).

        Returns
        -------
        ndarray, shape S, float64
        """
        C, mu, (a, b) = _prepare(C, mu, a, b)
        if "I2" in self.closed_form:
            return _CLOSED_I2[self.activation](C, a, b) if mu is None else _BIASED_I2[self.activation](C, mu, a, b)
        return self._quadrature(C, mu, (a, b), (self._g, self._g))

    def i3(self, C, a, b, c, mu=None) -> np.ndarray:
        """I3(a, b, c) = E[g'(u_a) (u_b - mu_b) g(u_c)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b, c : array_like of int
            Indices into u (b is the variable that multiplies, centred), broadcast to a shape S.
        mu : array_like, shape (n,), float64, optional
            Mean of u (default zero).

        Returns
        -------
        ndarray, shape S, float64
        """
        C, mu, (a, b, c) = _prepare(C, mu, a, b, c)
        if "I3" in self.closed_form:
            if mu is None:
                return _CLOSED_I3[self.activation](C, a, b, c)
            return _BIASED_I3[self.activation](C, mu, a, b, c)
        return self._quadrature(C, mu, (a, b, c), (self._g_prime, _identity, self._g), centred_slot=1)

    def i4(self, C, a, b, c, e, mu=None) -> np.ndarray:
        """I4(a, b, c, e) = E[g'(u_a) g'(u_b) g(u_c) g(u_e)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b, c, e : array_like of int
            Indices into u, broadcast together to a shape S.
        mu : array_like, shape (n,), float64, optional
            Mean of u (default zero).

        Returns
        -------
        ndarray, shape S, float64
        """
        C, mu, (a, b, c, e) = _prepare(C, mu, a, b, c, e)
        if "I4" in self.closed_form:
            if mu is None:
                return _CLOSED_I4[self.activation](C, a, b, c, e)
            return _BIASED_I4[self.activation](C, mu, a, b, c, e)
        if "I4" in self.conditional_rule:
            return _relu_i4(C, np.zeros(len(C)) if mu is None else mu, a, b, c, e)
        return self._quadrature(C, mu, (a, b, c, e), (self._g_prime, self._g_prime, self._g, self._g))

    def j2(self, C, a, b, mu=None) -> np.ndarray:
        """J2(a, b) = E[g'(u_a) g'(u_b)].

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, b : array_like of int
            Indices into u, broadcast together to a shape S.
        mu : array_like, shape (n,), float64, optional
            Mean of u (default zero).

        Returns
        -------
        ndarray, shape S, float64
        """
        C, mu, (a, b) = _prepare(C, mu, a, b)
        if "J2" in self.closed_form:
            return _CLOSED_J2[self.activation](C, a, b) if mu is None else _BIASED_J2[self.activation](C, mu, a, b)
        return self._quadrature(C, mu, (a, b), (self._g_prime, self._g_prime))

    def k2(self, C, a, c, mu=None) -> np.ndarray:
        """K2(a, c) = E[g'(u_a) g(u_c)] (the drift of a bias).

        Parameters
        ----------
        C : ndarray, shape (n, n), float64
            Covariance of u.
        a, c : array_like of int
            Indices into u, broadcast together to a shape S.
        mu : array_like, shape (n,), float64, optional
            Mean of u (default zero).

        Returns
        -------
        ndarray, shape S, float64
        """
        C, mu, (a, c) = _prepare(C, mu, a, c)
        if "K2" in self.closed_form:
            return _BIASED_K2[self.activation](C, np.zeros(len(C)) if mu is None else mu, a, c)
        return self._quadrature(C, mu, (a, c), (self._g_prime, self._g))

    # --- quadrature -----------------------------------------------------------------------------

    def _rule(self, n_dims: int):
        if n_dims not in self._rules:
            if self.activation in NON_SMOOTH_ACTIVATIONS:
                self._rules[n_dims] = _sobol_rule(n_dims, SOBOL_LOG2_POINTS)
            else:
                self._rules[n_dims] = _hermite_rule(n_dims, int(self.quadrature_orders[n_dims]))
        return self._rules[n_dims]

    def _quadrature(self, C, mu, indices, functions, centred_slot=None) -> np.ndarray:
        """E[prod_i f_i(u_{indices_i})] by the rule of the distinct variables of each tuple (a
        tuple with repeated indices, I4(k, k, j, j), is a lower-dimensional integral), after the
        factor C_sub = L L^T of their covariance: u = mu + L z. The slot ``centred_slot`` sees
        u - mu (the multiplying variable of I3)."""
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
                centred = np.matmul(nodes, factor[start:start + block].transpose(0, 2, 1))   # (t, P, n)
                u = centred if mu is None else centred + mu[distinct[start:start + block]][:, None, :]
                integrand = None
                for i, slot in enumerate(slots):
                    value = functions[i]((centred if i == centred_slot else u)[..., slot])
                    integrand = value if integrand is None else integrand * value
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


def _prepare(C, mu, *indices):
    """C as float64 (n, n); mu as float64 (n,), or None when absent or all zero (the centred
    formulas then apply, bit for bit those without a mean); the index arrays broadcast."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"the covariance must be a square matrix, got shape {C.shape}")
    if mu is not None:
        mu = np.asarray(mu, dtype=np.float64)
        if mu.shape != (C.shape[0],):
            raise ValueError(f"the mean must have shape ({C.shape[0]},), got {mu.shape}")
        if not np.any(mu):
            mu = None
    arrays = np.broadcast_arrays(*[np.asarray(index, dtype=np.intp) for index in indices])
    return C, mu, [np.array(array) for array in arrays]


# --- standard normal helpers -----------------------------------------------------------------

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _pdf(z):
    """phi(z); 0 at z = +-inf."""
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(z))


def _ratio(numerator, denominator):
    """numerator / denominator, with x / 0 = sign(x) inf and 0 / 0 = 0.

    The limits the relu formulas need: a variable of zero variance is its mean, so its step is
    H(mean) = Phi(+-inf); at a zero mean too, Phi(0) = 1/2 is the limit of the neighbouring
    states (the convention that makes E[H(u) relu(u)] = E[relu(u)] hold at correlation 1).
    """
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, dtype=np.float64),
                                                 np.asarray(denominator, dtype=np.float64))
    nonzero = denominator != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient = numerator / np.where(nonzero, denominator, 1.0)
    return np.where(nonzero, quotient, np.where(numerator > 0, np.inf, np.where(numerator < 0, -np.inf, 0.0)))


def _regression(covariance, scale):
    """covariance / scale where scale > 0, else 0 (a regression on a variable of zero variance,
    whose covariances with everything are 0)."""
    positive = scale > 0
    return np.where(positive, covariance / np.where(positive, scale, 1.0), 0.0)


@njit(cache=True)
def _bivariate_cdf_loop(h, k, rho, s, out):
    for i in range(h.size):
        out[i] = bivariate_normal_cdf_s(h[i], k[i], rho[i], s[i])


@njit(cache=True)
def _bivariate_excess_loop(h, k, rho, out):
    for i in range(h.size):
        out[i] = bivariate_normal_excess(h[i], k[i], rho[i])


def _flat(*arrays):
    arrays = np.broadcast_arrays(*[np.asarray(array, dtype=np.float64) for array in arrays])
    return arrays[0].shape, [np.ascontiguousarray(array).ravel() for array in arrays]


def _bivariate_cdf(h, k, rho, s):
    """Phi_2(h, k; rho) elementwise (Genz, ``kernels._gaussian``), s = sqrt(1 - rho^2) given to
    full relative accuracy; h, k may be +-inf."""
    shape, flat = _flat(h, k, rho, s)
    out = np.empty(flat[0].size)
    _bivariate_cdf_loop(*flat, out)
    return out.reshape(shape)


def _bivariate_excess(h, k, rho):
    """Phi_2(h, k; rho) - Phi(h) Phi(k) elementwise, without cancellation at small rho."""
    shape, flat = _flat(h, k, rho)
    out = np.empty(flat[0].size)
    _bivariate_excess_loop(*flat, out)
    return out.reshape(shape)


# --- relu with means ---------------------------------------------------------------------------

def _relu_mean(mean, std):
    """E[relu(x)], x ~ N(mean, std^2): std phi(mean/std) + mean Phi(mean/std) (relu(mean) at std = 0)."""
    z = _ratio(mean, std)
    return std * _pdf(z) + mean * special.ndtr(z)


def _relu_pair(m1, m2, S11, S22, S12):
    """The relu averages of a Gaussian pair (x1, x2) ~ N((m1, m2), [[S11, S12], [S12, S22]]).

    With r_i = sqrt(S_ii), beta_i = m_i / r_i, rho = S12 / (r1 r2), P = Phi_2(beta1, beta2; rho)
    and, by Stein's identity E[(x_i - m_i) F] = sum_j S_ij E[d_j F],

        P                  = E[H(x1) H(x2)]
        E[H(x1) relu(x2)]  = m2 P + S12 E[delta(x1) H(x2)] + S22 E[H(x1) delta(x2)]
        E[relu(x1) relu(x2)] = m1 E[H(x1) relu(x2)] + S11 E[delta(x1) relu(x2)] + S12 P
        E[delta(x1) F(x2)] = (phi(beta1) / r1) E[F(x2) | x1 = 0]

    the conditional law of x2 given x1 = 0 being N(m2 - S12 m1 / S11, det S / S11). Written with
    the conditional means and deviations (not rho and sqrt(1 - rho^2)), every term has its limit
    at r_i = 0 or |rho| = 1 (x1 = x2 included) through :func:`_ratio`. Arrays broadcast.

    Returns
    -------
    (steps, step_relu, relu_relu, density_relu) : ndarrays
        P, E[H(x1) relu(x2)], E[relu(x1) relu(x2)] and r1 E[delta(x1) relu(x2)] =
        phi(beta1) E[relu(x2) | x1 = 0].
    """
    r1, r2 = np.sqrt(S11), np.sqrt(S22)
    root_det = np.sqrt(np.clip(S11 * S22 - S12 ** 2, 0.0, None))
    both = (r1 > 0) & (r2 > 0)
    # sqrt(S11 S22), not r1 r2: rho = 1 exactly for one variable twice (sqrt(fl(x^2)) = x)
    norms = np.where(both, np.sqrt(S11 * S22), 1.0)
    rho = np.where(both, np.clip(S12 / norms, -1.0, 1.0), 0.0)
    s = np.where(both, np.minimum(root_det / norms, 1.0), 1.0)
    beta1, beta2 = _ratio(m1, r1), _ratio(m2, r2)
    steps = _bivariate_cdf(beta1, beta2, rho, s)
    # P(x2 > 0 | x1 = 0) = Phi(gamma2), gamma2 = (beta2 - rho beta1) / s, and gamma1 likewise.
    # At |rho| = 1 the terms with Phi(gamma1) and Phi(gamma2) cancel (x2 = -x1 scaled) or add up
    # (x2 = x1) only if gamma1 and gamma2 agree, while their numerators are rounding-size and of
    # either sign: s is floored at _S_FLOOR, so that they give Phi(gamma) = 1/2 to O(1e-8), not
    # Phi(+-inf) (an error of r phi(beta)); a genuine s below the floor shifts the result by O(1e-8).
    with np.errstate(invalid="ignore"):    # rho beta with beta = +-inf where a variance is 0: unused
        floor = np.maximum(s, _S_FLOOR)
        gamma2 = np.where(both, (beta2 - rho * beta1) / floor, beta2)
        gamma1 = np.where(both, (beta1 - rho * beta2) / floor, beta1)
    pdf1, pdf2 = _pdf(beta1), _pdf(beta2)
    # S12 E[delta(x1) H(x2)] = (S12 / r1) phi(beta1) P(x2 > 0 | x1 = 0), S12 / r1 = rho r2
    step_relu = m2 * steps + rho * r2 * pdf1 * special.ndtr(gamma2) + r2 * pdf2 * special.ndtr(gamma1)
    # x2 given x1 = 0: N(m2 - S12 m1 / S11, det S / S11) (x2 itself where S11 = 0)
    mean2, std2 = m2 - _regression(S12, S11) * m1, np.where(r1 > 0, _regression(root_det, r1), r2)
    density_relu = pdf1 * _relu_mean(mean2, std2)
    relu_relu = m1 * step_relu + r1 * density_relu + S12 * steps
    return steps, step_relu, relu_relu, density_relu


def _relu_pair_of(C, mu, a, b):
    return _relu_pair(mu[a], mu[b], C[a, a], C[b, b], C[a, b])


def _relu_i2_mean(C, mu, a, b):
    return _relu_pair_of(C, mu, a, b)[2]


def _relu_j2_mean(C, mu, a, b):
    return _relu_pair_of(C, mu, a, b)[0]


def _relu_k2_mean(C, mu, a, c):
    return _relu_pair_of(C, mu, a, c)[1]


def _relu_i3_mean(C, mu, a, b, c):
    # Stein: E[(u_b - mu_b) H(u_a) relu(u_c)] = C_ab E[delta(u_a) relu(u_c)] + C_bc E[H(u_a) H(u_c)]
    steps, _, _, density_relu = _relu_pair_of(C, mu, a, c)
    return _regression(C[a, b], np.sqrt(C[a, a])) * density_relu + C[b, c] * steps


def _gauss_legendre_pieces(breaks, nodes, weights):
    """Gauss-Legendre on each piece [breaks[..., j], breaks[..., j + 1]] of sorted breakpoints
    (..., P + 1): the points (..., P n) and their weights (0 on an empty piece)."""
    low, high = breaks[..., :-1, None], breaks[..., 1:, None]
    half = 0.5 * (high - low)
    points = 0.5 * (high + low) + half * nodes
    return (points.reshape(*breaks.shape[:-1], -1), (half * weights).reshape(*breaks.shape[:-1], -1))


def _relu_i4(C, mu, a, b, c, e, order=None, window=None):
    """relu I4(a, b, c, e) = E[H(u_a) H(u_b) relu(u_c) relu(u_e)] by the conditional rule.

    H(u) relu(u) = relu(u) and H^2 = H first leave the distinct step variables that are not relu
    variables (0, 1 or 2 of them). None: I2(c, e) in closed form. Otherwise, with the step
    variables u_S = mu_S + L z (L the lower Cholesky factor of their covariance, z standard
    normal), (u_c, u_e) given z is Gaussian with mean mu + G z (G = C_{ce,S} L^-T) and the fixed
    covariance C_{ce,ce} - G G^T, so that E[relu(u_c) relu(u_e) | z] is the closed form of
    :func:`_relu_pair`, a smooth function of z; it is integrated over the region {u_S > 0} of the
    window |z_i| <= ``window`` by Gauss-Legendre (``order`` nodes per piece), the pieces split
    where the integrand has a kink or a steep boundary layer: at the zeros of the conditional
    means of u_c and u_e (the kinks of relu when the conditional variance is small), and, in two
    dimensions, where the boundary u_b = 0 enters or leaves the window of the inner variable.
    """
    order = RELU_I4_NODES if order is None else order
    window = RELU_I4_WINDOW if window is None else window
    nodes, weights = np.polynomial.legendre.leggauss(order)
    shape = a.shape
    a, b, c, e = (index.ravel() for index in (a, b, c, e))
    out = np.empty(a.shape)
    a_free = (a != c) & (a != e)
    b_free = (b != c) & (b != e) & (b != a)
    free = a_free.astype(int) + b_free
    none = free == 0
    out[none] = _relu_pair_of(C, mu, c[none], e[none])[2]
    one = free == 1
    if one.any():
        step = np.where(a_free, a, b)[one]
        out[one] = _relu_i4_one_step(C, mu, step, c[one], e[one], nodes, weights, window)
    two = free == 2
    if two.any():
        out[two] = _relu_i4_two_steps(C, mu, a[two], b[two], c[two], e[two], nodes, weights, window)
    return out.reshape(shape)


def _kink_breaks(offset, slope, variance, low, high):
    """Breakpoints of a Gauss-Legendre rule in z for the kink of relu at the zero of a
    conditional mean offset + slope z, smoothed by the conditional variance over the width
    sqrt(variance) / |slope|: the kink and the edges of its boundary layer, clipped to [low, high]."""
    kink, width = _ratio(-offset, slope), _ratio(np.sqrt(variance), np.abs(slope))
    with np.errstate(invalid="ignore"):    # inf - inf where the slope is 0: no kink, no break
        points = [kink - _LAYER_WIDTHS * width, kink, kink + _LAYER_WIDTHS * width]
    return [np.clip(np.nan_to_num(point), low, high) for point in points]


def _pieces(low, high, breaks, nodes, weights):
    """Gauss-Legendre points and weights (..., P n) on [low, high] split at ``breaks`` (a list of
    arrays of low's shape, already within [low, high]) and at 0 (the bulk of the Gaussian weight)."""
    points = np.stack([low, np.clip(0.0, low, high), *breaks, high], axis=-1)
    return _gauss_legendre_pieces(np.sort(points, axis=-1), nodes, weights)


def _weighted_pair_sum(weight, mean_c, mean_e, S_cc, S_ee, S_ce):
    """sum over the last axis of weight * E[relu(x_c) relu(x_e)] (``_relu_pair``), evaluated at
    the points of nonzero weight only (the empty pieces of the rule have weight 0). weight and
    the means have shape (t, P); S_* have shape (t,)."""
    keep = weight != 0
    rows = np.broadcast_to(np.arange(len(weight))[:, None], weight.shape)[keep]
    values = weight[keep] * _relu_pair(mean_c[keep], mean_e[keep], S_cc[rows], S_ee[rows], S_ce[rows])[2]
    return np.bincount(rows, weights=values, minlength=len(weight))


def _relu_i4_one_step(C, mu, h, c, e, nodes, weights, window):
    """E[H(u_h) relu(u_c) relu(u_e)] (h not in {c, e}) as a 1-D integral over z, u_h = mu_h + L z."""
    L = np.sqrt(C[h, h])
    G_c, G_e = _regression(C[c, h], L), _regression(C[e, h], L)
    S_cc = np.clip(C[c, c] - G_c ** 2, 0.0, None)
    S_ee = np.clip(C[e, e] - G_e ** 2, 0.0, None)
    S_ce = C[c, e] - G_c * G_e
    low = np.clip(_ratio(-mu[h], L), -window, window)
    high = np.full_like(low, window)
    breaks = _kink_breaks(mu[c], G_c, S_cc, low, high) + _kink_breaks(mu[e], G_e, S_ee, low, high)
    z, w = _pieces(low, high, breaks, nodes, weights)                             # (t, P order)
    return _weighted_pair_sum(w * _pdf(z), mu[c][:, None] + G_c[:, None] * z, mu[e][:, None] + G_e[:, None] * z,
                              S_cc, S_ee, S_ce)


def _relu_i4_two_steps(C, mu, a, b, c, e, nodes, weights, window):
    """E[H(u_a) H(u_b) relu(u_c) relu(u_e)] (a != b, neither in {c, e}) as a 2-D integral over
    (z1, z2): u_a = mu_a + L11 z1, u_b = mu_b + L21 z1 + L22 z2."""
    L11 = np.sqrt(C[a, a])
    L21 = _regression(C[a, b], L11)
    pivot = C[b, b] - L21 ** 2
    L22 = np.where(pivot > _PIVOT_TOLERANCE * C[b, b], np.sqrt(np.clip(pivot, 0.0, None)), 0.0)
    relus = []
    for x in (c, e):
        first = _regression(C[x, a], L11)
        relus.append((mu[x], first, _regression(C[x, b] - first * L21, L22)))
    S_cc = np.clip(C[c, c] - relus[0][1] ** 2 - relus[0][2] ** 2, 0.0, None)
    S_ee = np.clip(C[e, e] - relus[1][1] ** 2 - relus[1][2] ** 2, 0.0, None)
    S_ce = C[c, e] - relus[0][1] * relus[1][1] - relus[0][2] * relus[1][2]
    low = np.clip(_ratio(-mu[a], L11), -window, window)
    high = np.full_like(low, window)
    # Lines p0 + p1 z1 + p2 z2 = 0 in the plane: the boundary u_b = 0 and the kinks of relu(u_c),
    # relu(u_e) (zeros of their conditional means). The outer integrand (the inner integral) is
    # steep where a line nearly parallel to the z2 axis sweeps through the inner window, and has a
    # kink where a kink line meets the boundary: it is smooth between the z1 where a line crosses
    # z2 = -window or +window, and where a kink line crosses the boundary.
    boundary = (mu[b], L21, L22)
    lines = [boundary] + relus
    crossings = [_ratio(-(p0 + sign * window * p2), p1) for p0, p1, p2 in lines for sign in (-1.0, 1.0)]
    crossings += [_ratio(boundary[2] * p0 - boundary[0] * p2, boundary[1] * p2 - boundary[2] * p1)
                  for p0, p1, p2 in relus]
    z1, w1 = _pieces(low, high, [np.clip(point, low, high) for point in crossings], nodes, weights)  # (t, P1 n)
    # the inner rule at the outer points of nonzero weight only (most pieces are empty), one row each
    keep = w1 != 0
    if not keep.any():
        return np.zeros(len(a))
    rows = np.broadcast_to(np.arange(len(a))[:, None], keep.shape)[keep]
    z1, w1 = z1[keep], w1[keep] * _pdf(z1[keep])                                   # (N,)
    inner_low = np.clip(_ratio(-(mu[b][rows] + L21[rows] * z1), L22[rows]), -window, window)
    inner_high = np.full_like(inner_low, window)
    breaks = []
    for (p0, p1, p2), S in zip(relus, (S_cc, S_ee)):
        breaks += _kink_breaks(p0[rows] + p1[rows] * z1, p2[rows], S[rows], inner_low, inner_high)
    z2, w2 = _pieces(inner_low, inner_high, breaks, nodes, weights)               # (N, P2 n)
    means = [(p0[rows] + p1[rows] * z1)[:, None] + p2[rows][:, None] * z2 for p0, p1, p2 in relus]
    inner = _weighted_pair_sum(w2 * _pdf(z2), *means, S_cc[rows], S_ee[rows], S_ce[rows])
    return np.bincount(rows, weights=w1 * inner, minlength=len(a))


# --- erf and linear with means -------------------------------------------------------------------

def _erf_mean_value(C, mu, a):
    """E[g(u_a)] = 2 Phi(mu_a / sqrt(1 + C_aa)) - 1 = erf(mu_a / sqrt(2 (1 + C_aa)))."""
    return special.erf(mu[a] / np.sqrt(2.0 * (1.0 + C[a, a])))


def _erf_pair(m1, m2, S11, S22, S12):
    """E[g(x1) g(x2)] for g = erf(./sqrt 2) = 2 Phi - 1, (x1, x2) ~ N((m1, m2), S): with
    Phi(x) = P(X < x) for an independent standard normal X per factor,
    E[Phi(x1) Phi(x2)] = Phi_2(m1 / n1, m2 / n2; S12 / (n1 n2)), n_i = sqrt(1 + S_ii), so
    E[g g] = 4 (Phi_2 - Phi(h1) Phi(h2)) + E[g(x1)] E[g(x2)] (the excess without cancellation)."""
    n1, n2 = np.sqrt(1.0 + S11), np.sqrt(1.0 + S22)
    h1, h2 = m1 / n1, m2 / n2
    rho = np.clip(S12 / (n1 * n2), -1.0, 1.0)
    return 4.0 * _bivariate_excess(h1, h2, rho) + special.erf(h1 / math.sqrt(2.0)) * special.erf(h2 / math.sqrt(2.0))


def _erf_i2_mean(C, mu, a, b):
    return _erf_pair(mu[a], mu[b], C[a, a], C[b, b], C[a, b])


def _erf_j2_mean(C, mu, a, b):
    # E[g'g'] = (2/pi) E[exp(-(u_a^2 + u_b^2)/2)] = (2/pi) det(I + S)^(-1/2) exp(-mu^T (I + S)^-1 mu / 2)
    one_aa, one_bb, C_ab = 1.0 + C[a, a], 1.0 + C[b, b], C[a, b]
    lambda_4 = one_aa * one_bb - C_ab ** 2
    quadratic = (one_bb * mu[a] ** 2 - 2.0 * C_ab * mu[a] * mu[b] + one_aa * mu[b] ** 2) / lambda_4
    return (2.0 / np.pi) / np.sqrt(lambda_4) * np.exp(-0.5 * quadratic)


def _erf_k2_parts(C, mu, a, c):
    """(2 p_a, xi, C_ac / (n_a sqrt(L))) with K2 = 2 p_a erf(xi / sqrt 2): p_a the N(mu_a, 1 + C_aa)
    density at 0, xi = (mu_c n_a^2 - C_ac mu_a) / (n_a sqrt(L)), L = n_a^2 n_c^2 - C_ac^2."""
    one_aa, one_cc, C_ac = 1.0 + C[a, a], 1.0 + C[c, c], C[a, c]
    root_lambda = np.sqrt(one_aa * one_cc - C_ac ** 2)
    n_a = np.sqrt(one_aa)
    twice_density = 2.0 * _INV_SQRT_2PI / n_a * np.exp(-0.5 * mu[a] ** 2 / one_aa)
    xi = (mu[c] * one_aa - C_ac * mu[a]) / (n_a * root_lambda)
    return twice_density, xi, C_ac / (n_a * root_lambda)


def _erf_k2_mean(C, mu, a, c):
    # E[2 phi(u_a) (2 Phi(u_c) - 1)]: phi(u_a) = E_Y[delta(u_a + Y)], so E[phi(u_a) F] is the
    # density of V = u_a + Y at 0 times E[F | V = 0]; P(X < u_c | V = 0) = Phi(xi)
    twice_density, xi, _ = _erf_k2_parts(C, mu, a, c)
    return twice_density * special.erf(xi / math.sqrt(2.0))


def _erf_i3_mean(C, mu, a, b, c):
    # Stein: I3 = C_ab E[g''(u_a) g(u_c)] + C_bc E[g'(u_a) g'(u_c)], and E[g''(u_a) g(u_c)] is the
    # derivative of K2 in the mean of its g' factor alone
    twice_density, xi, slope = _erf_k2_parts(C, mu, a, c)
    second = -twice_density * (mu[a] / (1.0 + C[a, a]) * special.erf(xi / math.sqrt(2.0))
                               + 2.0 * _pdf(xi) * slope)
    return C[a, b] * second + C[b, c] * _erf_j2_mean(C, mu, a, c)


def _erf_i4_mean(C, mu, a, b, c, e):
    # exp(-(u_a^2 + u_b^2)/2) tilts N(mu, C) into another Gaussian (the law of u given the noisy
    # observations u_a + Y_a = 0, u_b + Y_b = 0): I4 = J2(a, b) * E_tilted[g(u_c) g(u_e)], the
    # tilted mean mu - K A^-1 mu_ab and covariance C - K A^-1 K^T, A = I + C_{ab,ab}, K = C_{.,ab}
    one_aa, one_bb, C_ab = 1.0 + C[a, a], 1.0 + C[b, b], C[a, b]
    lambda_4 = one_aa * one_bb - C_ab ** 2

    def solve(x, y):
        """(x_a, x_b) A^-1 (y_a, y_b)^T for vectors x, y given by their (a, b) components."""
        return (x[0] * (one_bb * y[0] - C_ab * y[1]) + x[1] * (one_aa * y[1] - C_ab * y[0])) / lambda_4

    k_c, k_e, m_ab = (C[c, a], C[c, b]), (C[e, a], C[e, b]), (mu[a], mu[b])
    tilted = _erf_pair(mu[c] - solve(k_c, m_ab), mu[e] - solve(k_e, m_ab), C[c, c] - solve(k_c, k_c),
                       C[e, e] - solve(k_e, k_e), C[c, e] - solve(k_c, k_e))
    return _erf_j2_mean(C, mu, a, b) * tilted


_BIASED_I2 = {"erf": _erf_i2_mean, "relu": _relu_i2_mean,
              "linear": lambda C, mu, a, b: C[a, b] + mu[a] * mu[b]}
_BIASED_I3 = {"erf": _erf_i3_mean, "relu": _relu_i3_mean, "linear": lambda C, mu, a, b, c: C[b, c]}
_BIASED_I4 = {"erf": _erf_i4_mean, "linear": lambda C, mu, a, b, c, e: C[c, e] + mu[c] * mu[e]}
_BIASED_J2 = {"erf": _erf_j2_mean, "relu": _relu_j2_mean, "linear": lambda C, mu, a, b: np.ones(np.shape(a))}
_BIASED_K2 = {"erf": _erf_k2_mean, "relu": _relu_k2_mean, "linear": lambda C, mu, a, c: mu[c] + 0.0 * a}


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
