"""Baselines for the population-risk workloads with biases and smooth activations (cpu_suite.py).

Written in the libraries themselves (numpy + scipy.special, JAX, PyTorch), never calling
meanfield, for the squared-loss population risk of SCIENCE.md section 2 in the mean-field
scaling (h = (1/m) sum_i c_i sigma(a_i . x + b_i), x ~ N(0, I_d)):

    F = E[y^2] / 2 - (1/m) sum_i c_i K*_i + (1/(2 m^2)) sum_ij c_i c_j kappa(w_i, w_j),
    K*_i = sum_k c*_k kappa(w_i, t_k),   v_i = -m grad_{w_i} F   (a, b and c all trained),

with kappa(w, w') = E[sigma(a.x + b) sigma(a'.x + b')] computed as follows.

* relu, erf (erf(z / sqrt 2)), normal_cdf (Phi) with biases: the closed forms of SCIENCE.md
  section 2b through the bivariate normal CDF Phi_2, written here for arrays of any library
  (``bvn_cdf``): Drezner-Wesolowsky as refined by Genz, Gauss-Legendre with 6, 12 or 20 points
  in the arcsine form for |rho| < 0.925 and Genz's expansion for |rho| >= 0.925, the two
  selected elementwise by ``where``. The point count is the one for the largest |rho| of the
  matrix (off the diagonal; one switch per call, ``lax.switch`` in JAX), so every element gets
  at least the accuracy of its own regime (about 1e-15). A self-interaction matrix takes its
  diagonal (rho = 1 for relu, a duplicated neuron) from the one-neuron formulas.
  numpy: value and velocity from the explicit pair coefficients (Stein's identity, section 2b:
  grad_a kappa = A a + B a', d kappa / db = C), then sum_j c_j (...) by matrix-vector and one
  matrix product, as the bias-free numpy step does. JAX and PyTorch: the objective only,
  velocity by autodiff (``where`` kept free of NaN in the branch it discards), with Phi_2 given
  its analytic derivatives (dPhi_2/dh = phi(h) Phi((k - rho h)/s), dPhi_2/drho = phi_2) by
  ``jax.custom_jvp`` / ``torch.autograd.Function``: autodiff through the quadrature inside
  ``lax.switch`` kept every branch's residuals (m = 1000 relu: 12 s a step and 6 GB, against
  0.8 s with the rule). Off the diagonal, exactly collinear neurons (|rho| = 1, s = 0) are not
  handled (0/0); random inputs never have them.
* tanh, sigmoid, softplus, gelu with biases: Mehler's series (SCIENCE.md section 2b),
  kappa_ij = sum_{n <= N} rho_ij^n u_in u_jn with u_in = E[sigma(r_i Z + b_i) He_n(Z)] / sqrt(n!)
  (r_i = |a_i|) by 1-D Gauss-Hermite quadrature of ``GH_ORDER`` nodes, the pair sum a
  polynomial in rho over the m x m matrix of correlations, and the diagonal (rho = 1, where the
  series converges slowest) by the 1-D quadrature of E[sigma(h)^2]. N is fixed per problem
  by ``mehler_setup`` (outside the timed step, as a user fixes a truncation once): the
  smallest N with rho_max^n max|u_n|^2 < ``MEHLER_TOL`` for every n > N up to ``N_MAX``,
  rho_max the largest off-diagonal |rho| of the student-student and student-teacher pairs.
  numpy: coefficient derivatives by quadrature of sigma', and the velocity's pair sums by one
  matrix product rho^(n-1) @ [..] per term (m x m x (d + 1)); JAX and PyTorch: the objective
  with the pair sum sum_ij c_i c_j kappa_ij = sum_ij sum_n rho_ij^n x_in x_jn (x = c u) by
  Horner's rule in rho (one fused pass in XLA), velocity by autodiff, that pair sum given its
  gradient by hand (``jax.custom_vjp`` / ``torch.autograd.Function``: d/drho by Horner,
  d/dx_n = rho^n @ x_n term by term), the coefficients u(r, b) and rho(a) differentiated by
  autodiff: plain autodiff through Horner's rule keeps N m x m residuals (m = 4000 tanh,
  N = 23: 9 s a step and 7.5 GB, against 2.5 s and 3.5 GB).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

SQRT_2PI = math.sqrt(2 * math.pi)
CLOSED_FORM = ("relu", "erf", "normal_cdf")
SMOOTH = ("tanh", "sigmoid", "softplus", "gelu")
TIERS = (0.3, 0.75, 0.925)  # |rho| bounds of Genz's 6-, 12-, 20-point rules and of the high branch
_GL = {n: np.polynomial.legendre.leggauss(n) for n in (6, 12, 20)}
GH_ORDER = 100  # 1-D Gauss-Hermite nodes for the Mehler coefficients
N_MAX = 80
MEHLER_TOL = 1e-12


# ----------------------------------------------------------------------------- array namespaces

def numpy_ops():
    from scipy import special
    ops = SimpleNamespace(
        name="numpy", sqrt=np.sqrt, exp=np.exp, sin=np.sin, arcsin=np.arcsin, abs=np.abs, where=np.where,
        maximum=np.maximum, positive=lambda x: np.maximum(x, 0.0), ndtr=special.ndtr,
        eye=lambda m: np.eye(m, dtype=bool), asarray=np.asarray,
        rmax=lambda r: float(np.max(np.abs(r))) if r.size else 0.0,
        index=lambda t: sum(t >= b for b in TIERS), switch=lambda i, fs, *a: fs[i](*a),
        tanh=np.tanh, sigmoid=special.expit, softplus=lambda z: np.logaddexp(z, 0.0),
        gelu=lambda z: z * special.ndtr(z), bvn=lambda h, k, r: bvn_cdf(ops, h, k, r),
        mehler_form=_mehler_form_value, mehler_form_symmetric=lambda rho, x: _mehler_form_value(rho, x, x))
    return ops


def _bvn_partials(ops, h, k, r):
    """dPhi_2/dh = phi(h) Phi((k - r h)/s), dPhi_2/dk likewise, dPhi_2/dr = phi_2(h, k; r)."""
    s = ops.sqrt(1.0 - r * r)
    g = (k - r * h) / s
    return (_phi(ops, h) * ops.ndtr(g), _phi(ops, k) * ops.ndtr((h - r * k) / s),
            _phi(ops, h) * _phi(ops, g) / s)


def _mehler_form_value(rho, x, y):
    """Q = sum_ij sum_n rho_ij^n x_in y_jn, Horner's rule in rho (one pass, fused by XLA)."""
    N = x.shape[1] - 1
    K = x[:, N:N + 1] * y[:, N][None, :]
    for n in range(N - 1, -1, -1):
        K = K * rho + x[:, n:n + 1] * y[:, n][None, :]
    return K.sum()


def _mehler_form_grads(rho, x, y, stack, symmetric):
    """dQ/drho = sum_n n rho^(n-1) x_in y_jn (Horner); dQ/dx_in = sum_j rho_ij^n y_jn and
    dQ/dy_jn = sum_i rho_ij^n x_in (one rho^n @ vector per term; with ``symmetric`` (rho
    symmetric, y = x) the two are one, counted twice). Memory: three m x m arrays."""
    N = x.shape[1] - 1
    D = N * x[:, N:N + 1] * y[:, N][None, :]
    for n in range(N - 1, 0, -1):
        D = D * rho + n * x[:, n:n + 1] * y[:, n][None, :]
    dx = [y[:, 0].sum() + 0.0 * x[:, 0]]
    dy = [x[:, 0].sum() + 0.0 * y[:, 0]]
    P = rho
    for n in range(1, N + 1):
        dx.append(P @ y[:, n])
        if not symmetric:
            dy.append(x[:, n] @ P)
        if n < N:
            P = P * rho
    dx = stack(dx, 1)
    if symmetric:
        return D, 2.0 * dx, None
    return D, dx, stack(dy, 1)


def jax_ops():
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import ndtr
    ops = SimpleNamespace(
        name="jax", sqrt=jnp.sqrt, exp=jnp.exp, sin=jnp.sin, arcsin=jnp.arcsin, abs=jnp.abs, where=jnp.where,
        maximum=jnp.maximum, positive=lambda x: jnp.maximum(x, 0.0), ndtr=ndtr,
        eye=lambda m: jnp.eye(m, dtype=bool), asarray=jnp.asarray,
        rmax=lambda r: jnp.max(jnp.abs(jax.lax.stop_gradient(r))),
        index=lambda t: sum((t >= b).astype(jnp.int32) for b in TIERS), switch=jax.lax.switch,
        tanh=jnp.tanh, sigmoid=jax.nn.sigmoid, softplus=lambda z: jnp.logaddexp(z, 0.0),
        gelu=lambda z: z * ndtr(z))

    # Phi_2 with its analytic derivatives: autodiff through the quadrature inside lax.switch
    # keeps the residuals of every branch (measured: m = 1000, relu, 12 s a step, 6 GB).
    @jax.custom_jvp
    def bvn(h, k, r):
        return bvn_cdf(ops, h, k, r)

    @bvn.defjvp
    def _bvn_jvp(primals, tangents):
        ph, pk, pr = _bvn_partials(ops, *primals)
        return bvn(*primals), ph * tangents[0] + pk * tangents[1] + pr * tangents[2]

    ops.bvn = bvn

    # The Mehler pair sums with their gradients by hand (SCIENCE.md 2b): autodiff through
    # Horner's rule keeps N m x m residuals and took 9 s and 7.5 GB at m = 4000 (tanh, N = 23).
    @jax.custom_vjp
    def mehler_form(rho, x, y):
        return _mehler_form_value(rho, x, y)

    def _fwd(rho, x, y):
        return mehler_form(rho, x, y), (rho, x, y)

    def _bwd(res, g):
        D, dx, dy = _mehler_form_grads(*res, jnp.stack, False)
        return g * D, g * dx, g * dy

    mehler_form.defvjp(_fwd, _bwd)

    @jax.custom_vjp
    def mehler_form_symmetric(rho, x):
        return _mehler_form_value(rho, x, x)

    def _fwd_sym(rho, x):
        return mehler_form_symmetric(rho, x), (rho, x)

    def _bwd_sym(res, g):
        D, dx, _ = _mehler_form_grads(res[0], res[1], res[1], jnp.stack, True)
        return g * D, g * dx

    mehler_form_symmetric.defvjp(_fwd_sym, _bwd_sym)
    ops.mehler_form, ops.mehler_form_symmetric = mehler_form, mehler_form_symmetric
    return ops


def torch_ops(dtype):
    import torch

    class BVN(torch.autograd.Function):
        """Phi_2 with its analytic derivatives (as in JAX), reduced to the inputs' shapes."""

        @staticmethod
        def forward(ctx, h, k, r):
            ctx.save_for_backward(h, k, r)
            return bvn_cdf(ops, h, k, r)

        @staticmethod
        def backward(ctx, g):
            h, k, r = ctx.saved_tensors
            ph, pk, pr = _bvn_partials(ops, h, k, r)
            return (g * ph).sum_to_size(h.shape), (g * pk).sum_to_size(k.shape), (g * pr).sum_to_size(r.shape)

    class MehlerForm(torch.autograd.Function):
        """The Mehler pair sums with their gradients by hand, as in JAX."""

        @staticmethod
        def forward(ctx, rho, x, y):
            ctx.save_for_backward(rho, x, y)
            return _mehler_form_value(rho, x, y)

        @staticmethod
        def backward(ctx, g):
            D, dx, dy = _mehler_form_grads(*ctx.saved_tensors, torch.stack, False)
            return g * D, g * dx, g * dy

    class MehlerFormSymmetric(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rho, x):
            ctx.save_for_backward(rho, x)
            return _mehler_form_value(rho, x, x)

        @staticmethod
        def backward(ctx, g):
            rho, x = ctx.saved_tensors
            D, dx, _ = _mehler_form_grads(rho, x, x, torch.stack, True)
            return g * D, g * dx

    ops = SimpleNamespace(
        name="torch", sqrt=torch.sqrt, exp=torch.exp, sin=torch.sin, arcsin=torch.asin, abs=torch.abs,
        where=torch.where, maximum=torch.maximum, positive=lambda x: torch.clamp(x, min=0.0),
        ndtr=torch.special.ndtr, eye=lambda m: torch.eye(m, dtype=torch.bool),
        asarray=lambda x: torch.as_tensor(x, dtype=dtype),
        rmax=lambda r: float(r.detach().abs().max()) if r.numel() else 0.0,
        index=lambda t: sum(t >= b for b in TIERS), switch=lambda i, fs, *a: fs[i](*a),
        tanh=torch.tanh, sigmoid=torch.sigmoid,
        softplus=lambda z: torch.logaddexp(z, torch.zeros((), dtype=z.dtype)),
        gelu=lambda z: z * torch.special.ndtr(z), bvn=BVN.apply, mehler_form=MehlerForm.apply,
        mehler_form_symmetric=MehlerFormSymmetric.apply)
    return ops


def _phi(ops, x):
    return ops.exp(-0.5 * x * x) / SQRT_2PI


# ----------------------------------------------------------------------------- bivariate normal CDF

def _bvn_arcsine(ops, h, k, r, n):
    """P(Z1 < h, Z2 < k) for |r| < 0.925: Phi(h) Phi(k) + (1/2 pi) int_0^asin r of
    exp(-(h^2 + k^2 - 2 h k sin t) / (2 cos^2 t)) dt, Gauss-Legendre with n points."""
    x, w = _GL[n]
    hk = h * k
    hs = 0.5 * (h * h + k * k)
    asr = ops.arcsin(r)
    acc = 0.0
    for xq, wq in zip(x, w):
        sn = ops.sin(asr * (0.5 * (1.0 + xq)))
        acc = acc + wq * ops.exp((sn * hk - hs) / (1.0 - sn * sn))
    return ops.ndtr(h) * ops.ndtr(k) + acc * asr / (4 * math.pi)


def _bvn_near_one(ops, h, k, r):
    """P(Z1 < h, Z2 < k) for 0.925 <= |r| <= 1: Genz's expansion about |r| = 1 (upper-orthant
    form with dh = -h, dk = -k; for r < 0 the second variable is reflected)."""
    x, w = _GL[20]
    dh = -h
    dk = ops.where(r < 0, k, -k)
    hk = dh * dk
    positive = r > 0
    one = ops.abs(r) >= 1.0
    r = ops.where(one, 0.95, r)  # the expansion below is for |r| < 1; at |r| = 1 only the last line
    as_ = (1.0 - r) * (1.0 + r)
    a = ops.sqrt(as_)
    bs = (dh - dk) ** 2
    c = (4.0 - hk) / 8.0
    d = (12.0 - hk) / 16.0
    bvn = a * ops.exp(-(bs / as_ + hk) / 2) * (1 - c * (bs - as_) * (1 - d * bs / 5) / 3 + c * d * as_ * as_ / 5)
    pos = bs > 0
    b = ops.where(pos, ops.sqrt(ops.where(pos, bs, 1.0)), 0.0)
    ok = hk > -100.0
    hk_ok = ops.where(ok, hk, 0.0)
    tail = ops.exp(-hk_ok / 2) * SQRT_2PI * ops.ndtr(-b / a) * b * (1 - c * bs * (1 - d * bs / 5) / 3)
    bvn = bvn - ops.where(ok, tail, 0.0)
    a = a / 2
    for xq, wq in zip(x, w):
        xs = (a * (1.0 + xq)) ** 2
        rs = ops.sqrt(1.0 - xs)
        e1 = -(bs / xs + hk) / 2
        e2 = -hk * (1.0 - rs) / (2 * (1.0 + rs))
        sp = 1.0 + c * xs * (1.0 + d * xs)
        bvn = bvn + a * wq * (ops.exp(e1 + e2) / rs - ops.exp(e1) * sp)
    bvn = ops.where(one, 0.0, -bvn / (2 * math.pi))
    return ops.where(positive, bvn + ops.ndtr(-ops.maximum(dh, dk)),
                     -bvn + ops.positive(ops.ndtr(-dh) - ops.ndtr(-dk)))


def _bvn_full(ops, h, k, r):
    near = ops.abs(r) >= TIERS[2]
    low = _bvn_arcsine(ops, h, k, ops.where(near, 0.0, r), 20)
    high = _bvn_near_one(ops, h, k, ops.where(near, r, 0.95))
    return ops.where(near, high, low)


def bvn_cdf(ops, h, k, r):
    """Phi_2(h, k; r) = P(Z1 < h, Z2 < k), elementwise over broadcast h, k, r (shape of r)."""
    h = h + 0.0 * r
    k = k + 0.0 * r
    branches = [lambda h, k, r, n=n: _bvn_arcsine(ops, h, k, r, n) for n in (6, 12, 20)] + [
        lambda h, k, r: _bvn_full(ops, h, k, r)]
    return ops.switch(ops.index(ops.rmax(r)), branches, h, k, r)


# ----------------------------------------------------------------------------- inputs

def inputs(activation: str, m: int, d: int, k: int, seed: int = 0):
    """Student W (m, d + 2) and teacher T (k, d + 2), float64, both with biases.

    Student: a ~ N(0, I_d / d), b ~ N(0, 1), c ~ N(0, 1) (meanfield's ``Init(b="gaussian")``,
    one row of d + 2 normals per particle). Teacher: a*_j = e_j, b*_j ~ N(0, 1), c*_j = 1/k.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((m, d + 2))
    W = z.copy()
    W[:, :d] /= math.sqrt(d)
    T = np.zeros((k, d + 2))
    T[:, :d] = np.eye(d)[:k]
    T[:, d] = np.random.default_rng(seed + 1).standard_normal(k)
    T[:, d + 1] = 1.0 / k
    return W, T


# ----------------------------------------------------------------------------- Mehler series setup

def _hermite_table(z, n_max):
    """He_n(z) / sqrt(n!) for n = 0..n_max, shape (len(z), n_max + 1) (stable recurrence)."""
    H = np.empty((z.size, n_max + 1))
    H[:, 0] = 1.0
    if n_max >= 1:
        H[:, 1] = z
    for n in range(1, n_max):
        H[:, n + 1] = (z * H[:, n] - math.sqrt(n) * H[:, n - 1]) / math.sqrt(n + 1)
    return H


def _act_numpy(activation, z):
    """sigma(z) and sigma'(z) in numpy (scipy.special)."""
    from scipy import special
    if activation == "tanh":
        t = np.tanh(z)
        return t, 1.0 - t * t
    if activation == "sigmoid":
        s = special.expit(z)
        return s, s * (1.0 - s)
    if activation == "softplus":
        return np.logaddexp(z, 0.0), special.expit(z)
    if activation == "gelu":
        P = special.ndtr(z)
        return z * P, P + z * np.exp(-0.5 * z * z) / SQRT_2PI
    raise ValueError(activation)


def mehler_setup(activation, W, T):
    """Gauss-Hermite nodes and the truncation N of the Mehler series for this problem."""
    d = W.shape[1] - 2
    nodes, weights = np.polynomial.hermite_e.hermegauss(GH_ORDER)
    weights = weights / weights.sum()
    table = _hermite_table(nodes, N_MAX)
    P = weights[:, None] * table  # (Q, N_MAX + 1)
    U = np.concatenate([W, T])
    r = np.linalg.norm(U[:, :d], axis=1)
    S, _ = _act_numpy(activation, r[:, None] * nodes[None, :] + U[:, d, None])
    u = S @ P
    A = W[:, :d] / np.linalg.norm(W[:, :d], axis=1)[:, None]
    R = A @ A.T
    np.fill_diagonal(R, 0.0)
    rho = max(np.abs(R).max(initial=0.0), np.abs(A @ (T[:, :d] / np.linalg.norm(T[:, :d], axis=1)[:, None]).T).max())
    umax = np.abs(u).max(axis=0)
    bound = rho ** np.arange(N_MAX + 1) * umax * umax
    above = np.nonzero(bound >= MEHLER_TOL)[0]
    N = int(max(4, above[-1] + 1 if above.size else 4))
    N = min(N, N_MAX)
    return {"nodes": nodes, "weights": weights, "P": P[:, : N + 1].copy(), "N": N, "rho_max": float(rho)}


# ----------------------------------------------------------------------------- pair kernels (any library)

def _relu_unit(ops, bi, bj, rho):
    """kappa / (r_i r_j) for relu with biases (SCIENCE.md 2b), bi = b_i / r_i, bj = b_j / r_j."""
    s = ops.sqrt(1.0 - rho * rho)
    g12 = (bj - rho * bi) / s
    g21 = (bi - rho * bj) / s
    P2 = ops.bvn(bi, bj, rho)
    pi, pj = _phi(ops, bi), _phi(ops, bj)
    return ((bi * bj + rho) * P2 + bi * pj * ops.ndtr(g21) + bj * pi * ops.ndtr(g12)
            + s * pi * _phi(ops, g12))


def mehler_coefficients(ops, activation, r, b, mehler):
    """u_in = E[sigma(r_i Z + b_i) He_n(Z)] / sqrt(n!) and E[sigma(h_i)^2] (1-D Gauss-Hermite)."""
    z = ops.asarray(mehler["nodes"])
    S = getattr(ops, activation)(r[:, None] * z[None, :] + b[:, None])
    return S @ ops.asarray(mehler["P"]), (S * S) @ ops.asarray(mehler["weights"])


def kappa_matrix(ops, activation, Wi, Wj, self_pairs, mehler=None):
    """kappa(w_i, w_j) for every pair, shape (len(Wi), len(Wj)); with ``self_pairs`` (Wi is Wj)
    the diagonal from the one-neuron formulas, ``where`` keeping the discarded branch finite."""
    d = Wi.shape[1] - 2
    Ai, bi, Aj, bj = Wi[:, :d], Wi[:, d], Wj[:, :d], Wj[:, d]
    ri2, rj2 = (Ai * Ai).sum(1), (Aj * Aj).sum(1)
    G = Ai @ Aj.T
    mask = ops.eye(Wi.shape[0]) if self_pairs else None
    if activation == "relu":
        ri, rj = ops.sqrt(ri2), ops.sqrt(rj2)
        rho = G / (ri[:, None] * rj[None, :])
        if mask is not None:
            rho = ops.where(mask, 0.0, rho)
        bi_, bj_ = bi / ri, bj / rj
        K = (ri[:, None] * rj[None, :]) * _relu_unit(ops, bi_[:, None], bj_[None, :], rho)
        if mask is not None:  # E relu(h)^2 = (r^2 + b^2) Phi(beta) + r b phi(beta)
            diag = (ri2 + bi * bi) * ops.ndtr(bi_) + ri * bi * _phi(ops, bi_)
            K = ops.where(mask, diag[:, None], K)
        return K
    if activation in ("erf", "normal_cdf"):
        ni, nj = ops.sqrt(1.0 + ri2), ops.sqrt(1.0 + rj2)
        rho = G / (ni[:, None] * nj[None, :])
        bi_, bj_ = bi / ni, bj / nj
        if mask is not None:
            P2 = ops.bvn(bi_[:, None], bj_[None, :], ops.where(mask, 0.0, rho))
            P2 = ops.where(mask, ops.bvn(bi_, bi_, ri2 / (ni * ni))[:, None], P2)
        else:
            P2 = ops.bvn(bi_[:, None], bj_[None, :], rho)
        if activation == "normal_cdf":
            return P2
        return 4.0 * P2 - 2.0 * ops.ndtr(bi_)[:, None] - 2.0 * ops.ndtr(bj_)[None, :] + 1.0
    ri, rj = ops.sqrt(ri2), ops.sqrt(rj2)
    rho = G / (ri[:, None] * rj[None, :])
    if mask is not None:
        rho = ops.where(mask, 0.0, rho)
    ui, sq = mehler_coefficients(ops, activation, ri, bi, mehler)
    uj = ui if self_pairs else mehler_coefficients(ops, activation, rj, bj, mehler)[0]
    N = mehler["N"]
    K = ui[:, N:N + 1] * uj[:, N][None, :]
    for n in range(N - 1, -1, -1):  # Horner in rho
        K = K * rho + ui[:, n:n + 1] * uj[:, n][None, :]
    if mask is not None:
        K = ops.where(mask, sq[:, None], K)
    return K


def _mehler_pair_sum(ops, activation, W, T, mehler):
    """sum_ij c_i c'_j kappa(w_i, t_j) by the Mehler series (T None: the self-interaction, its
    diagonal E[sigma(h_i)^2] by 1-D quadrature), through ``ops.mehler_form``."""
    d = W.shape[1] - 2
    A, b, c = W[:, :d], W[:, d], W[:, d + 1]
    r = ops.sqrt((A * A).sum(1))
    u, sq = mehler_coefficients(ops, activation, r, b, mehler)
    x = c[:, None] * u
    if T is None:
        rho = (A @ A.T) / (r[:, None] * r[None, :])
        rho = ops.where(ops.eye(W.shape[0]), 0.0, rho)
        # the j = i terms of the series at rho = 0 are x_i0^2: replaced by c_i^2 E[sigma(h_i)^2]
        return ops.mehler_form_symmetric(rho, x) - (x[:, 0] * x[:, 0]).sum() + (c * c * sq).sum()
    At, bt, ct = T[:, :d], T[:, d], T[:, d + 1]
    rt = ops.sqrt((At * At).sum(1))
    y = ct[:, None] * mehler_coefficients(ops, activation, rt, bt, mehler)[0]
    return ops.mehler_form((A @ At.T) / (r[:, None] * rt[None, :]), x, y)


def objective(ops, activation, W, T, y2, mehler=None):
    """F(W) for autodiff (JAX, PyTorch): E[y^2]/2 - (1/m) c . K* + (1/(2 m^2)) c . (kappa c)."""
    m = W.shape[0]
    c, ct = W[:, -1], T[:, -1]
    if activation in SMOOTH:
        return 0.5 * y2 - _mehler_pair_sum(ops, activation, W, T, mehler) / m \
            + 0.5 * _mehler_pair_sum(ops, activation, W, None, mehler) / (m * m)
    K_t = kappa_matrix(ops, activation, W, T, False, mehler) @ ct
    K_w = kappa_matrix(ops, activation, W, W, True, mehler) @ c
    return 0.5 * y2 - (c * K_t).sum() / m + 0.5 * (c * K_w).sum() / (m * m)


def label_second_moment(activation, T, mehler=None):
    """E[y^2] = sum_kl c*_k c*_l kappa(t_k, t_l), in numpy."""
    K = kappa_matrix(numpy_ops(), activation, T, T, True, mehler)
    return float(T[:, -1] @ K @ T[:, -1])


# ----------------------------------------------------------------------------- numpy: explicit gradients

def _numpy_cdf_coefficients(activation, bi_, bj_, bi, ni, nj, rho):
    """kappa, A, B, C (grad_{a_i} kappa = A a_i + B a_j, d kappa / d b_i = C) for erf and
    normal_cdf: kappa from Phi_2(beta_i, beta_j; rho), beta = b / n, n = sqrt(1 + r^2),
    rho = a_i . a_j / (n_i n_j), by the chain rule through dPhi_2/dh = phi(h) Phi((k - rho h)/s)
    and dPhi_2/drho = phi_2 (the Stein coefficients of E[Phi(h_i) Phi(h_j)])."""
    from scipy import special
    ops = numpy_ops()
    s = np.sqrt(1.0 - rho * rho)
    g = (bj_ - rho * bi_) / s
    P2 = bvn_cdf(ops, bi_, bj_, rho)
    pi = _phi(ops, bi_)
    P1 = pi * special.ndtr(g)          # dPhi_2 / d beta_i
    Q = pi * _phi(ops, g) / s           # phi_2(beta_i, beta_j; rho)
    A = -P1 * bi / ni**3 - Q * rho / ni**2
    B = Q / (ni * nj)
    C = P1 / ni
    if activation == "normal_cdf":
        return P2, A, B, C
    kappa = 4.0 * P2 - 2.0 * special.ndtr(bi_) - 2.0 * special.ndtr(bj_) + 1.0
    return kappa, 4.0 * A + 2.0 * pi * bi / ni**3, 4.0 * B, 4.0 * C - 2.0 * pi / ni


def _numpy_closed_form_pairs(activation, Wi, Wj, cj, self_pairs):
    """K_i = sum_j c_j kappa_ij, Ga_i = sum_j c_j grad_{a_i} kappa_ij, Gb_i = sum_j c_j d kappa_ij / d b_i."""
    from scipy import special
    ops = numpy_ops()
    d = Wi.shape[1] - 2
    Ai, bi, Aj, bj = Wi[:, :d], Wi[:, d], Wj[:, :d], Wj[:, d]
    ri, rj = np.linalg.norm(Ai, axis=1), np.linalg.norm(Aj, axis=1)
    G = Ai @ Aj.T
    if activation == "relu":
        rho = np.clip(G / np.outer(ri, rj), -1.0, 1.0)
        if self_pairs:
            np.fill_diagonal(rho, 0.0)
        bi_, bj_ = (bi / ri)[:, None], (bj / rj)[None, :]
        s = np.sqrt(1.0 - rho * rho)
        g12 = (bj_ - rho * bi_) / s
        g21 = (bi_ - rho * bj_) / s
        B = bvn_cdf(ops, bi_, bj_, rho)
        pi, pj = _phi(ops, bi_), _phi(ops, bj_)
        F12, F21, p12 = special.ndtr(g12), special.ndtr(g21), _phi(ops, g12)
        kappa = np.outer(ri, rj) * ((bi_ * bj_ + rho) * B + bi_ * pj * F21 + bj_ * pi * F12 + s * pi * p12)
        A = (rj[None, :] / ri[:, None]) * pi * s * (p12 + g12 * F12)
        C = rj[None, :] * (bj_ * B + pj * F21 + rho * pi * F12)
        if self_pairs:  # rho = 1: E relu^2, A = E[delta relu] = 0, B = E[H H] = Phi, C = E[H relu]
            beta = bi / ri
            Phi, phi = special.ndtr(beta), _phi(ops, beta)
            np.fill_diagonal(kappa, (ri * ri + bi * bi) * Phi + ri * bi * phi)
            np.fill_diagonal(A, 0.0)
            np.fill_diagonal(B, Phi)
            np.fill_diagonal(C, ri * (beta * Phi + phi))
    else:
        ni, nj = np.sqrt(1.0 + ri * ri), np.sqrt(1.0 + rj * rj)
        rho = G / np.outer(ni, nj)
        if self_pairs:
            np.fill_diagonal(rho, 0.0)
        kappa, A, B, C = _numpy_cdf_coefficients(activation, (bi / ni)[:, None], (bj / nj)[None, :],
                                                  bi[:, None], ni[:, None], nj[None, :], rho)
        if self_pairs:
            diag = _numpy_cdf_coefficients(activation, bi / ni, bi / ni, bi, ni, ni, ri * ri / (ni * ni))
            for X, x in zip((kappa, A, B, C), diag):
                np.fill_diagonal(X, x)
    K = kappa @ cj
    Ga = (A @ cj)[:, None] * Ai + B @ (cj[:, None] * Aj)
    return K, Ga, C @ cj


def _numpy_mehler_coefficients(activation, r, b, mehler):
    z, w, P = mehler["nodes"], mehler["weights"], mehler["P"]
    S, dS = _act_numpy(activation, r[:, None] * z[None, :] + b[:, None])
    u, ub, ur = S @ P, dS @ P, (dS * z[None, :]) @ P
    SdS = S * dS
    return u, ub, ur, (S * S) @ w, SdS @ w, (SdS * z[None, :]) @ w


def _numpy_mehler_pairs(activation, Wi, Wj, cj, self_pairs, mehler):
    """The pair sums of the Mehler series. With rho^n = rho^(o n) elementwise and
    V_n = rho^n @ (c u_n): K_i = sum_n u_in V_in; the coefficient of a_i is
    sum_n (-n u_in / r_i^2 + du_in/dr / r_i) V_in; the a_j term is
    sum_n n (u_in / r_i) [rho^(n-1) @ (c_j u_jn / r_j a_j)]_i; d/db_i: sum_n du_in/db V_in."""
    d = Wi.shape[1] - 2
    N = mehler["N"]
    Ai, bi, Aj, bj = Wi[:, :d], Wi[:, d], Wj[:, :d], Wj[:, d]
    ri, rj = np.linalg.norm(Ai, axis=1), np.linalg.norm(Aj, axis=1)
    rho = (Ai @ Aj.T) / np.outer(ri, rj)
    if self_pairs:
        np.fill_diagonal(rho, 0.0)
    ui, ub, ur, sq, ssd, ssdz = _numpy_mehler_coefficients(activation, ri, bi, mehler)
    uj = ui if self_pairs else _numpy_mehler_coefficients(activation, rj, bj, mehler)[0]
    cu = cj[:, None] * uj                                  # (m_j, N + 1)
    V = np.empty((Wi.shape[0], N + 1))
    Gb_a = np.zeros_like(Ai)
    # n = 1 uses rho^0 = ones: column sums
    V[:, 0] = cu[:, 0].sum()
    Gb_a += (ui[:, 1] / ri)[:, None] * ((cu[:, 1] / rj) @ Aj)[None, :]
    Pn = rho.copy()                                        # rho^(n-1) for n = 2 ..
    for n in range(2, N + 1):
        M = Pn @ np.concatenate([Aj * (cu[:, n] / rj)[:, None], cu[:, n - 1:n]], axis=1)
        Gb_a += (n * ui[:, n] / ri)[:, None] * M[:, :d]
        V[:, n - 1] = M[:, d]
        Pn *= rho
    V[:, N] = Pn @ cu[:, N]
    nn = np.arange(N + 1)
    K = (ui * V).sum(1)
    coef_a = ((-nn[None, :] * ui / (ri * ri)[:, None] + ur / ri[:, None]) * V).sum(1)
    Gb = (ub * V).sum(1)
    if self_pairs:  # replace the j = i term of the series (taken at rho = 0) by the exact one
        ci = cj
        K += ci * (sq - ui[:, 0] ** 2)
        coef_a += ci * (ssdz / ri - ur[:, 0] * ui[:, 0] / ri - ui[:, 1] ** 2 / (ri * ri))
        Gb += ci * (ssd - ub[:, 0] * ui[:, 0])
    return K, coef_a[:, None] * Ai + Gb_a, Gb


def numpy_step(activation, W, T, y2, mehler=None):
    """Population objective and v = -m grad F, from explicit pair coefficients (numpy + scipy)."""
    m = W.shape[0]
    d = W.shape[1] - 2
    c, ct = W[:, d + 1], T[:, d + 1]
    if activation in CLOSED_FORM:
        K_w, Ga_w, Gb_w = _numpy_closed_form_pairs(activation, W, W, c, True)
        K_t, Ga_t, Gb_t = _numpy_closed_form_pairs(activation, W, T, ct, False)
    else:
        K_w, Ga_w, Gb_w = _numpy_mehler_pairs(activation, W, W, c, True, mehler)
        K_t, Ga_t, Gb_t = _numpy_mehler_pairs(activation, W, T, ct, False, mehler)
    value = 0.5 * y2 - c @ K_t / m + 0.5 * c @ K_w / m**2
    v = np.empty_like(W)
    v[:, :d] = -c[:, None] * (Ga_w / m - Ga_t)
    v[:, d] = -c * (Gb_w / m - Gb_t)
    v[:, d + 1] = -(K_w / m - K_t)
    return float(value), v


# ----------------------------------------------------------------------------- JAX and PyTorch steps

def jax_step(activation, W, T, y2, mehler=None):
    """A jitted step (value, v = -m grad F) by ``jax.value_and_grad`` of ``objective``."""
    import jax
    import jax.numpy as jnp
    ops = jax_ops()
    m = W.shape[0]
    T = jnp.asarray(T)

    @jax.jit
    def step(W):
        value, grad = jax.value_and_grad(lambda W: objective(ops, activation, W, T, y2, mehler))(W)
        return value, -m * grad

    return step


def torch_step(torch, activation, W, T, y2, mehler=None):
    """The same objective in PyTorch eager, velocity by autograd."""
    ops = torch_ops(W.dtype)
    m = W.shape[0]

    def step(W=W):
        W = W.detach().requires_grad_(True)
        value = objective(ops, activation, W, T, y2, mehler)
        value.backward()
        return value.item(), -m * W.grad

    return step
