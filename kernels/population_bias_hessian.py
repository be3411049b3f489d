"""Second derivatives of the closed-form population risk with biases (squared loss; relu,
erf(z/sqrt 2), normal CDF, linear): the dense Hessian and Hessian-vector products, in float64.
The scalar functions take their constants from their arguments (``like``): the GPU twins
(``gpu_population_bias_hessian``) compile them for the device, in float32 too.

The objective of ``meanfield.PopulationProblem`` in closed form is

    F = E[y^2] / (2 alpha^2) - (s / alpha) sum_i c_i sum_t c*_t kappa(w_i, w*_t)
        + (s^2 / 2) sum_ij c_i c_j kappa(w_i, w_j),

kappa(w_i, w_j) = E[sigma(h_i) sigma(h_j)], h = a . x + b, x ~ N(0, I_d) (``population_bias``).
With x~ = (x, 1), so that h = w~ . x~ for w~ = (a, b), the derivatives of kappa in w~ are
Gaussian moments:

    grad_1 kappa      = E[sigma'(h_i) sigma(h_j) x~],
    H(w_i, w_j)       = d2 kappa / dw~_i dw~_i^T = E[sigma''(h_i) sigma(h_j) x~ x~^T],
    M(w_i, w_j)       = d2 kappa / dw~_i dw~_j^T = E[sigma'(h_i) sigma'(h_j) x~ x~^T].

For F(h_i, h_j) a function of the two pre-activations only, E[F x x^T] = E[F] I plus a
symmetric rank-2 term in span(a_i, a_j), and E[F x] lies in that span, so both blocks are

    B = [[z0 I + z11 u1 u1^T + z12 (u1 u2^T + u2 u1^T) + z22 u2 u2^T,  v1 u1 + v2 u2],
         [v1 u1^T + v2 u2^T,                                             zb          ]]

for two vectors (u1, u2) spanning span(a_i, a_j). Which two depends on the activation:

* erf, normal CDF, linear (smooth sigma): u1 = a_i, u2 = a_j and, by Stein's identity twice,
  E[F x x^T] = E[F] I + sum_kl a_k a_l^T E[d_k d_l F] and E[F x] = sum_k a_k E[d_k F]. With
  G_kl = E[sigma^(k)(h_i) sigma^(l)(h_j)] = d^k/db_i^k d^l/db_j^l kappa,

      H: z0 = zb = G20, z11 = G40, z12 = G31, z22 = G22, v1 = G30, v2 = G21;
      M: z0 = zb = G11, z11 = G31, z12 = G22, z22 = G13, v1 = G21, v2 = G12.

  For sigma = Phi, kappa = Phi_2(U_i, U_j; q) with U = b / n, n = sqrt(1 + |a|^2),
  q = a_i . a_j / (n_i n_j), so G_kl = n_i^-k n_j^-l d^k_x d^l_y Phi_2(x, y; q) at (U_i, U_j):
  with S = sqrt(1 - q^2), psi the bivariate density, l_x = -(x - q y) / S^2,
  l_y = -(y - q x) / S^2,

      D10 = phi(x) Phi((y - q x) / S),  D20 = -x D10 - q psi,  D30 = -D10 - x D20 - q psi_x,
      D40 = -2 D20 - x D30 - q psi_xx,  D11 = psi,  D21 = psi_x = l_x psi,
      D31 = psi_xx = (l_x^2 - 1/S^2) psi,  D22 = psi_xy = (l_x l_y + q / S^2) psi,
      D12, D13, D01, D02 by symmetry.

  erf(z/sqrt 2) = 2 Phi - 1: G_kl = 4 (Phi's) for k, l >= 1, and in G_k0 Phi((y - q x) / S)
  becomes Phi - 1/2 (the -2 E[Phi(h_j)] - 2 E[Phi(h_i)] + 1 terms). Linear: G11 = 1,
  G10 = b_j, all others 0 (M = I, H = 0). S^2 is computed as (1 + u + v + |a_i|^2 |y|^2) /
  (n_i^2 n_j^2), y = a_j - (a_i . a_j / |a_i|^2) a_i (so uv - (a_i . a_j)^2 = |a_i|^2 |y|^2
  without cancellation).

* relu: Stein's identity would bring E[delta(h_i) delta(h_j)] (infinite where the two kink
  hyperplanes coincide), multiplied by terms that cancel. Instead the moments are taken in
  the orthonormal basis u1 = e1 = a_i / r_i, u2 = e2 = y / |y| of the plane, with
  x . e1 = z1, x . e2 = z2 standard normals, h_i = r_i z1 + b_i, h_j = r_j rho z1 + |y| z2 + b_j,
  E[F x x^T] = E[F] I + (E[F z1^2] - E[F]) e1 e1^T + E[F z1 z2] (e1 e2^T + e2 e1^T)
  + (E[F z2^2] - E[F]) e2 e2^T, E[F x] = E[F z1] e1 + E[F z2] e2. With beta_k = b_k / r_k,
  rho = a_i . a_j / (r_i r_j), s = |y| / r_j = sqrt(1 - rho^2), g_i = (beta_i - rho beta_j) / s,
  g_j = (beta_j - rho beta_i) / s, P = Phi_2(beta_i, beta_j; rho), K = phi(beta_i) / r_i,
  R0 = r_j s phi(g_j) + (b_j - rho r_j beta_i) Phi(g_j) = E[relu(h_j) | h_i = 0]:

      H (F = delta(h_i) relu(h_j)): z0 = zb = K R0, z11 = K R0 (beta_i^2 - 1),
          z12 = -beta_i K |y| Phi(g_j), z22 = K |y| phi(g_j), v1 = -beta_i K R0, v2 = K |y| Phi(g_j);
      M (F = H(h_i) H(h_j)): z0 = zb = P,
          z11 = -beta_i phi(beta_i) Phi(g_j) + rho phi(beta_j) (s phi(g_i) - rho beta_j Phi(g_i)),
          z12 = s phi(beta_j) (s phi(g_i) - rho beta_j Phi(g_i)),
          z22 = -phi(beta_j) (s^2 beta_j Phi(g_i) + rho s phi(g_i)),
          v1 = phi(beta_i) Phi(g_j) + rho phi(beta_j) Phi(g_i), v2 = s phi(beta_j) Phi(g_i)

  (each moment by one Stein step on a bounded integrand, then conditioning on h_i = 0 or
  h_j = 0). Every coefficient is bounded, and those of e2 carry a factor s: at rho = +-1
  (|y| = 0) they vanish and the blocks are the limits of the formula, with the one-sided
  ratios of ``population_bias`` (0/0 counted as 0, i.e. Phi(0) = 1/2 where the hyperplanes
  coincide). |y| is computed entry by entry, so s is accurate near collinear pairs (from rho
  it would carry an error of order sqrt(eps)), and s is used throughout: 1 -+ rho = s^2 /
  (1 +- rho) in the numerators of g_i, g_j, and P by Genz's |rho| >= 0.925 branch at
  1 - rho^2 = s^2 (``_gaussian.bivariate_normal_cdf_s``; at the rounded rho, M erred by 2e-9 at s ~ 1e-8,
  now 1e-16 against mpmath). The factor b_j - rho r_j beta_i of R0 keeps the raw bias (it is
  linear in b_j, also where the ratio is clipped). a_i = 0 or a_j = 0: h is the constant b, and
  the same moments with one direction (e.g. M = H(b_i) [Phi(beta_j) I - beta_j phi(beta_j)
  e e^T, phi(beta_j) e; ., Phi(beta_j)] with e = a_j / r_j).

Differentiability (relu). H and M are continuous wherever a_i != 0 or b_i != 0: the relu risk
is twice differentiable there, duplicated particles included (also with equal bias ratios,
where kappa is C^2 but not C^3: its third derivatives jump; E[delta(h_i) delta(h_j)] is a
coefficient of the second derivatives in the five numbers (a_i . a_j, |a_i|, |a_j|, b_i, b_j),
not of the Hessian in the particle coordinates). At a particle with a_i = 0 and b_i = 0,
relu(h_i) is 1-homogeneous in (a_i, b_i) and F is not twice differentiable (not even once,
unless c_i = 0 and the readout is frozen, when the particle does not enter F): the kernels use
relu'(0) = relu''(0) = 0 there, as the velocity does (all rows and columns of that particle are
then 0), and return how many such particles there are; ``bias_hessian_singular_particles``
lists them.

Hessian of F, particle-major over the trainable coordinates (a_i, then b_i when the bias is
trained, then c_i when the readout is trained), n_loc = d (+1) (+1) per particle; the blocks
are those of w~ = (a, b) restricted to the trainable ones:

    d2F / dw~_i dw~_j = s^2 c_i c_j M(w_i, w_j)                                    (i != j)
    d2F / dw~_i dc_j  = s^2 c_i grad_1 kappa(w_i, w_j)                               (i != j)
    d2F / dc_i dc_j   = s^2 kappa(w_i, w_j)                                          (all i, j)
    d2F / dw~_i^2     = c_i [s^2 sum_k c_k H(w_i, w_k) - (s/alpha) sum_t c*_t H(w_i, w*_t)]
                        + s^2 c_i^2 M(w_i, w_i)
    d2F / dw~_i dc_i  = s^2 sum_k c_k grad_1 kappa(w_i, w_k)
                        - (s/alpha) sum_t c*_t grad_1 kappa(w_i, w*_t) + s^2 c_i grad_1 kappa(w_i, w_i)
"""
import math

import numpy as np
from numba import njit, prange

from ._gaussian import bivariate_normal_cdf_s, bivariate_normal_excess, normal_cdf, normal_pdf
from ._scalar import ERF, LINEAR, NORMAL_CDF, RELU, like
from .population_bias import _RATIO_CLIP, BIAS_CLOSED_FORM_CODES, _clip, _one_sided_ratio

SQRT_HALF = 0.7071067811865476
# |limit| beyond which Phi_2(h, k; rho) no longer changes in float64 (Phi(-40) = 4e-350).
_PHI2_SATURATION = 40.0


@njit(cache=True)
def _dot(x, y, d):
    acc = like(x[0], 0.0)  # d >= 1 (Model)
    for k in range(d):
        acc += x[k] * y[k]
    return acc


@njit(cache=True)
def _perpendicular(a_i, a_j, d, p, u, u2):
    """u2 <- y = a_j - (p / u) a_i entry by entry (the part of a_j orthogonal to a_i); |y|^2."""
    lam = p / u
    y2 = 0.0
    for k in range(d):
        yk = a_j[k] - lam * a_i[k]
        u2[k] = yk
        y2 += yk * yk
    return y2


# How the two vectors (u1, u2) of a pair's blocks are made from a_i and a_j (``_basis``).
BASIS_A = 0  # u1 = a_i, u2 = a_j (smooth activations)
BASIS_PLANE = 1  # u1 = a_i / |a_i|, u2 = y / |y|, y = a_j - (a_i . a_j / |a_i|^2) a_i (relu)
BASIS_J = 2  # u1 = a_j / |a_j|, u2 = 0 (relu, a_i = 0)
BASIS_I = 3  # u1 = a_i / |a_i|, u2 = 0 (relu, a_j = 0 or a_j collinear with a_i)
BASIS_NONE = 4  # no vector (relu, a_i = a_j = 0)


@njit(cache=True)
def _zero_block(x):
    """Seven zeros of the floating type of x (a block that vanishes)."""
    zero = like(x, 0.0)
    return (zero, zero, zero, zero, zero, zero, zero)


@njit(cache=True)
def _relu_one_direction(r, b):
    """Moments of H(r z + b), z ~ N(0, 1), r > 0: (E[H], E[H z], E[H z^2] - E[H]) =
    (Phi(beta), phi(beta), -beta phi(beta)), and E[relu(r z + b)] = r phi(beta) + b Phi(beta)."""
    beta = _clip(b / r, like(r, _RATIO_CLIP))
    pdf = normal_pdf(beta)
    cdf = normal_cdf(beta)
    return cdf, pdf, -beta * pdf, r * pdf + b * cdf


@njit(cache=True)
def _relu_pair_scalars(p, u, v, y2, b_i, b_j):
    """The relu pair from its scalars (module docstring): p = a_i . a_j, u = |a_i|^2,
    v = |a_j|^2, y2 = |y|^2 computed entry by entry. Returns the basis kind and the 21 numbers
    of ``_pair_scalars``."""
    # Constants of the floating type of the arguments (float32 on the GPU: like()).
    zero = like(p, 0.0)
    one = like(p, 1.0)
    clip = like(p, _RATIO_CLIP)
    on_i = one if b_i > zero else zero  # relu'(0) = 0, as in the velocity
    on_j = one if b_j > zero else zero
    relu_i = max(b_i, zero)
    relu_j = max(b_j, zero)
    if u == zero and v == zero:
        hh = on_i * on_j  # M = H(b_i) H(b_j) E[x~ x~^T] = H(b_i) H(b_j) I
        return ((BASIS_NONE, relu_i * relu_j, zero, zero, on_i * relu_j, zero, zero, on_j * relu_i)
                + (hh, zero, zero, zero, zero, zero, hh) + _zero_block(p))
    if u == zero:
        # h_i = b_i: kappa = relu(b_i) E[relu(h_j)]; H = E[delta(b_i) ...] = 0 (b_i != 0; at
        # b_i = 0 the particle is singular and relu''(0) = 0 is used). Basis e = a_j / r_j.
        r_j = math.sqrt(v)
        cdf, pdf, zz, mean_j = _relu_one_direction(r_j, b_j)
        return ((BASIS_J, relu_i * mean_j, zero, on_i * cdf, on_i * mean_j, zero, relu_i * pdf / r_j, relu_i * cdf)
                + (on_i * cdf, on_i * zz, zero, zero, on_i * pdf, zero, on_i * cdf) + _zero_block(p))
    r_i = math.sqrt(u)
    if v == zero:
        # h_j = b_j: H = relu(b_j) E[delta(h_i) x~ x~^T], M = H(b_j) E[H(h_i) x~ x~^T]; e = a_i / r_i.
        cdf, pdf, zz, mean_i = _relu_one_direction(r_i, b_i)
        beta_i = _clip(b_i / r_i, clip)
        k_r = relu_j * pdf / r_i
        return ((BASIS_I, relu_j * mean_i, k_r, zero, relu_j * cdf, on_j * cdf, zero, on_j * mean_i)
                + (on_j * cdf, on_j * zz, zero, zero, on_j * pdf, zero, on_j * cdf)
                + (k_r, k_r * (beta_i * beta_i - one), zero, zero, -beta_i * k_r, zero, k_r))
    r_j = math.sqrt(v)
    t = math.sqrt(y2)
    beta_i = _clip(b_i / r_i, clip)
    beta_j = _clip(b_j / r_j, clip)
    if t > zero:
        rho = min(max(p / (r_i * r_j), -one), one)
        s = min(t / r_j, one)
    else:
        # exactly collinear (a particle with itself included): rho = +-1 exactly, so that
        # Phi_2 takes its rho = +-1 branch and 0/0 ratios their limit convention.
        rho = one if p > zero else -one
        s = zero
    if s > zero:
        # The numerators beta_i - rho beta_j and beta_j - rho beta_i with 1 -+ rho taken from s
        # (1 - rho = s^2 / (1 + rho)): from the rounded rho, 1 - rho has a relative error
        # eps / s^2 near collinear pairs. The differences beta_i -+ beta_j are then exactly
        # opposite in g_i and g_j, so g_i + g_j (rho > 0) and g_i - g_j (rho < 0), on which the
        # blocks depend where the hyperplanes nearly coincide, carry no rounding error of 1 / s.
        if rho >= zero:
            c = s * s / (one + rho)
            g_i = ((beta_i - beta_j) + c * beta_j) / s
            g_j = ((beta_j - beta_i) + c * beta_i) / s
            # r_j (beta_j - rho beta_i) and r_i (beta_i - rho beta_j) with the raw biases: beyond
            # the clip, |b_j| / r_j > 50, h_j has one sign almost surely and E[relu(h_j) | h_i = 0]
            # is b_j - rho r_j beta_i, linear in b_j (the clipped ratio would give 50 r_j)
            lin_j = (b_j - r_j * beta_i) + c * r_j * beta_i
            lin_i = (b_i - r_i * beta_j) + c * r_i * beta_j
        else:
            c = s * s / (one - rho)
            g_i = ((beta_i + beta_j) - c * beta_j) / s
            g_j = ((beta_i + beta_j) - c * beta_i) / s
            lin_j = (b_j + r_j * beta_i) - c * r_j * beta_i
            lin_i = (b_i + r_i * beta_j) - c * r_i * beta_j
    else:
        g_i = _one_sided_ratio(beta_i - rho * beta_j, s)
        g_j = _one_sided_ratio(beta_j - rho * beta_i, s)
        lin_j = b_j - rho * r_j * beta_i
        lin_i = b_i - rho * r_i * beta_j
    pdf_i = normal_pdf(beta_i)
    pdf_j = normal_pdf(beta_j)
    cdf_gi = normal_cdf(g_i)
    cdf_gj = normal_cdf(g_j)
    # s phi(g): 0 at s = 0 (the bivariate density terms vanish with the plane).
    s_pdf_gi = s * normal_pdf(g_i) if s > zero else zero
    s_pdf_gj = s * normal_pdf(g_j) if s > zero else zero
    P = bivariate_normal_cdf_s(beta_i, beta_j, rho, s)
    kappa = (b_i * b_j + p) * P + b_i * r_j * pdf_j * cdf_gi + b_j * r_i * pdf_i * cdf_gj + r_i * r_j * pdf_j * s_pdf_gi
    K = pdf_i / r_i
    # E[relu(h_j) | h_i = 0] = r_j s phi(g_j) + lin_j Phi(g_j), lin_j = r_j s g_j (up to the clip):
    # no inf * 0 at g_j = -inf; at s = 0 it is relu(lin_j) (Phi(0) = 1/2 only where lin_j = 0)
    R0 = r_j * s_pdf_gj + lin_j * cdf_gj
    R0_rev = r_i * s_pdf_gi + lin_i * cdf_gi  # E[relu(h_i) | h_j = 0]
    KR0 = K * R0
    # grad_1 kappa = KR0 a_i + P a_j, d/db_i = gb; grad_2 kappa = P a_i + (phi_j / r_j) R0_rev a_j.
    gb = b_j * P + r_j * pdf_j * cdf_gi + rho * r_j * pdf_i * cdf_gj
    rb = b_i * P + r_i * pdf_i * cdf_gj + rho * r_i * pdf_j * cdf_gi
    m_c = s_pdf_gi - rho * beta_j * cdf_gi
    return (BASIS_PLANE if t > zero else BASIS_I, kappa, KR0, P, gb, P, pdf_j / r_j * R0_rev, rb,
            P, -beta_i * pdf_i * cdf_gj + rho * pdf_j * m_c, s * pdf_j * m_c,
            -pdf_j * (s * s * beta_j * cdf_gi + rho * s_pdf_gi),
            pdf_i * cdf_gj + rho * pdf_j * cdf_gi, s * pdf_j * cdf_gi, P,
            KR0, KR0 * (beta_i * beta_i - one), -beta_i * K * t * cdf_gj,
            K * r_j * s_pdf_gj, -beta_i * KR0, K * t * cdf_gj, KR0)


@njit(cache=True)
def _gaussian_cdf_pair_scalars(p, u, v, y2, b_i, b_j, erf_form):
    """sigma = Phi or erf(z/sqrt 2) from the pair's scalars (module docstring); basis (a_i, a_j)."""
    one = like(p, 1.0)
    sqrt_half = like(p, SQRT_HALF)
    saturation = like(p, _PHI2_SATURATION)
    ni2 = one + u
    nj2 = one + v
    n_i = math.sqrt(ni2)
    n_j = math.sqrt(nj2)
    x = b_i / n_i
    y = b_j / n_j
    q = min(max(p / (n_i * n_j), -one), one)
    S2 = (one + u + v + u * y2) / (ni2 * nj2)  # 1 - q^2 without cancellation (u v - p^2 = u y2); > 0
    S = math.sqrt(S2)
    zy = (y - q * x) / S
    zx = (x - q * y) / S
    pdf_x = normal_pdf(x)
    pdf_y = normal_pdf(y)
    psi = pdf_x * normal_pdf(zy) / S  # bivariate density at (x, y)
    lx = -zx / S
    ly = -zy / S
    inv_S2 = one / S2
    psi_x = lx * psi
    psi_y = ly * psi
    psi_xx = (lx * lx - inv_S2) * psi
    psi_yy = (ly * ly - inv_S2) * psi
    psi_xy = (lx * ly + q * inv_S2) * psi
    # limits clipped where Phi_2 - Phi Phi is saturated (0 in float64; see _gaussian._saturate)
    excess = bivariate_normal_excess(_clip(x, saturation), _clip(y, saturation), q)
    if erf_form:
        f = like(p, 4.0)
        half = like(p, 0.5)
        # Phi(z) - 1/2 = erf(z / sqrt 2) / 2, without cancellation for small z
        D10 = pdf_x * half * math.erf(zy * sqrt_half)
        D01 = pdf_y * half * math.erf(zx * sqrt_half)
        kappa = f * excess + math.erf(x * sqrt_half) * math.erf(y * sqrt_half)
    else:
        f = one
        D10 = pdf_x * normal_cdf(zy)
        D01 = pdf_y * normal_cdf(zx)
        kappa = excess + normal_cdf(x) * normal_cdf(y)
    D20 = -x * D10 - q * psi
    D30 = -D10 - x * D20 - q * psi_x
    D40 = -like(p, 2.0) * D20 - x * D30 - q * psi_xx
    D02 = -y * D01 - q * psi
    # G_kl = f D_kl / (n_i^k n_j^l)
    G10 = f * D10 / n_i
    G01 = f * D01 / n_j
    G20 = f * D20 / ni2
    G02 = f * D02 / nj2
    G30 = f * D30 / (ni2 * n_i)
    G40 = f * D40 / (ni2 * ni2)
    G11 = f * psi / (n_i * n_j)
    G21 = f * psi_x / (ni2 * n_j)
    G12 = f * psi_y / (n_i * nj2)
    G31 = f * psi_xx / (ni2 * n_i * n_j)
    G22 = f * psi_xy / (ni2 * nj2)
    G13 = f * psi_yy / (n_i * nj2 * n_j)
    return (BASIS_A, kappa, G20, G11, G10, G11, G02, G01,
            G11, G31, G22, G13, G21, G12, G11,
            G20, G40, G31, G22, G30, G21, G20)


@njit(cache=True)
def _pair_scalars(p, u, v, y2, b_i, b_j, code):
    """Everything the Hessian needs from one pair (w_i, w_j), from its scalars.

    Parameters
    ----------
    p, u, v : float
        a_i . a_j, |a_i|^2, |a_j|^2.
    y2 : float
        |y|^2, y = a_j - (p / u) a_i, computed entry by entry (``_geometry``); 0 when u = 0.
    b_i, b_j : float
    code : int
        RELU, ERF, NORMAL_CDF or LINEAR.

    Returns
    -------
    tuple of an int and 21 floats
        The basis kind (``BASIS_*``: how u1, u2 are made from a_i, a_j); kappa; (f_i, f_j, f_b)
        with grad_1 kappa = (f_i a_i + f_j a_j, f_b); (r_i, r_j, r_b) with grad_2 kappa =
        (r_i a_i + r_j a_j, r_b); M as (z0, z11, z12, z22, v1, v2, zb); H likewise.
    """
    if code == RELU:
        return _relu_pair_scalars(p, u, v, y2, b_i, b_j)
    if code == ERF:
        return _gaussian_cdf_pair_scalars(p, u, v, y2, b_i, b_j, True)
    if code == NORMAL_CDF:
        return _gaussian_cdf_pair_scalars(p, u, v, y2, b_i, b_j, False)
    # linear: kappa = a_i . a_j + b_i b_j, M = I, H = 0
    zero = like(p, 0.0)
    one = like(p, 1.0)
    return ((BASIS_A, p + b_i * b_j, zero, one, b_j, one, zero, b_i)
            + (one, zero, zero, zero, zero, zero, one) + _zero_block(p))


@njit(cache=True)
def _geometry(a_i, a_j, d, u, v):
    """(p, y2) of a pair: p = a_i . a_j and |y|^2 with y = a_j - (p / u) a_i entry by entry (so
    that s = |y| / |a_j| keeps its relative accuracy near collinear pairs); y2 = 0 if u or v is 0."""
    zero = like(u, 0.0)
    p = _dot(a_i, a_j, d)
    y2 = zero
    if u > zero and v > zero:
        lam = p / u
        for k in range(d):
            yk = a_j[k] - lam * a_i[k]
            y2 += yk * yk
    return p, y2


@njit(cache=True)
def _basis(kind, a_i, a_j, d, p, u, v, y2, u1, u2):
    """Fill u1, u2 (length d) for the basis ``kind`` of a pair (``BASIS_*``)."""
    r_i = math.sqrt(u)
    r_j = math.sqrt(v)
    t = math.sqrt(y2)
    zero = like(u, 0.0)
    lam = p / u if u > zero else zero
    for k in range(d):
        if kind == BASIS_A:
            u1[k] = a_i[k]
            u2[k] = a_j[k]
        elif kind == BASIS_PLANE:
            u1[k] = a_i[k] / r_i
            u2[k] = (a_j[k] - lam * a_i[k]) / t
        elif kind == BASIS_J:
            u1[k] = a_j[k] / r_j
            u2[k] = zero
        elif kind == BASIS_I:
            u1[k] = a_i[k] / r_i
            u2[k] = zero
        else:
            u1[k] = zero
            u2[k] = zero


@njit(cache=True)
def _pair_blocks(a_i, a_j, b_i, b_j, d, code, u1, u2):
    """``_pair_scalars`` of the pair (a_i, b_i), (a_j, b_j) with its basis filled into u1, u2;
    returns the 21 numbers (no kind)."""
    u = _dot(a_i, a_i, d)
    v = _dot(a_j, a_j, d)
    p, y2 = _geometry(a_i, a_j, d, u, v)
    values = _pair_scalars(p, u, v, y2, b_i, b_j, code)
    _basis(values[0], a_i, a_j, d, p, u, v, y2, u1, u2)
    return values[1:]


@njit(cache=True)
def _add_block(H, r0, c0, scale, u1, u2, d, z0, z11, z12, z22, v1, v2, zb, with_b):
    """H[r0:, c0:] += scale B, B the block of the module docstring ((d + 1) x (d + 1) with the
    bias row and column, d x d without)."""
    if scale == 0.0:
        return
    for k in range(d):
        rk = scale * (z11 * u1[k] + z12 * u2[k])
        sk = scale * (z12 * u1[k] + z22 * u2[k])
        for l in range(d):
            H[r0 + k, c0 + l] += rk * u1[l] + sk * u2[l]
        H[r0 + k, c0 + k] += scale * z0
        if with_b:
            wk = scale * (v1 * u1[k] + v2 * u2[k])
            H[r0 + k, c0 + d] += wk
            H[r0 + d, c0 + k] += wk
    if with_b:
        H[r0 + d, c0 + d] += scale * zb


@njit(cache=True)
def _apply_block(acc, scale, u1, u2, d, z0, z11, z12, z22, v1, v2, zb, va, vb, with_b):
    """acc += scale B (va, vb): B of the module docstring applied to a direction (va, vb)."""
    if scale == 0.0:
        return
    x1 = 0.0
    x2 = 0.0
    for k in range(d):
        x1 += u1[k] * va[k]
        x2 += u2[k] * va[k]
    p1 = z11 * x1 + z12 * x2 + v1 * vb
    p2 = z12 * x1 + z22 * x2 + v2 * vb
    for k in range(d):
        acc[k] += scale * (z0 * va[k] + p1 * u1[k] + p2 * u2[k])
    if with_b:
        acc[d] += scale * (v1 * x1 + v2 * x2 + zb * vb)


@njit(cache=True)
def _singular_flags(W, activation_code, train_readout, flags):
    """flags[i] = particle i is a relu neuron with a_i = 0 and b_i = 0 that enters F (trained
    readout, or c_i != 0): F is not twice differentiable there. Returns the count."""
    m, p = W.shape
    d = p - 2
    count = 0
    for i in range(m):
        flags[i] = False
        if activation_code != RELU or W[i, d] != 0.0 or (not train_readout and W[i, d + 1] == 0.0):
            continue
        zero = True
        for k in range(d):
            if W[i, k] != 0.0:
                zero = False
                break
        if zero:
            flags[i] = True
            count += 1
    return count


def bias_hessian_singular_particles(W, activation_code, train_readout):
    """Particles at which the closed-form population risk with biases is not twice differentiable.

    Only relu has such points: a particle with a_i = 0 and b_i = 0 (relu(a_i . x + b_i) is then
    1-homogeneous in (a_i, b_i)), unless the readout is frozen and c_i = 0 (the particle does
    not enter F). Duplicated particles are not singular (module docstring).

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
    activation_code : int
    train_readout : bool

    Returns
    -------
    ndarray of int64, the indices (empty where F is twice differentiable at W).
    """
    W = np.ascontiguousarray(W, dtype=np.float64)
    flags = np.empty(W.shape[0], dtype=np.bool_)
    _singular_flags(W, activation_code, train_readout, flags)
    return np.flatnonzero(flags)


@njit(cache=True, parallel=True)
def _bias_hessian(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, H):
    """Body of :func:`bias_closed_form_hessian`; returns the number of singular particles."""
    m, p = W.shape
    d = p - 2
    ob = d
    oc = d + 1 if train_bias else d
    n_loc = oc + 1 if train_readout else oc
    n_teacher = teacher.shape[0]
    s2 = s * s
    for i in prange(m):
        r0 = i * n_loc
        for k in range(n_loc):
            for col in range(H.shape[1]):
                H[r0 + k, col] = 0.0
        u1 = np.empty(d)
        u2 = np.empty(d)
        a_i = W[i, :d]
        b_i = W[i, d]
        c_i = W[i, d + 1]
        for j in range(m):
            a_j = W[j, :d]
            b_j = W[j, d]
            c_j = W[j, d + 1]
            (kappa, f_i, f_j, f_b, q_i, q_j, q_b, m0, m11, m12, m22, mv1, mv2, mb,
             h0, h11, h12, h22, hv1, hv2, hb) = _pair_blocks(a_i, a_j, b_i, b_j, d, activation_code, u1, u2)
            c0 = j * n_loc
            w = s2 * c_i * c_j
            # M(w_i, w_j): the off-diagonal block, or for j = i the s^2 c_i^2 M(w_i, w_i) term
            _add_block(H, r0, c0, w, u1, u2, d, m0, m11, m12, m22, mv1, mv2, mb, train_bias)
            # H(w_i, w_j) enters the diagonal block with weight s^2 c_i c_j
            _add_block(H, r0, r0, w, u1, u2, d, h0, h11, h12, h22, hv1, hv2, hb, train_bias)
            if train_readout:
                for k in range(d):
                    g_k = f_i * a_i[k] + f_j * a_j[k]
                    # d2F/dw_i dc_j (for j = i: the s^2 c_i grad_1 kappa(w_i, w_i) term), and the
                    # sum over j of s^2 c_j grad_1 kappa(w_i, w_j) into the (w_i, c_i) entry
                    H[r0 + k, c0 + oc] += s2 * c_i * g_k
                    H[r0 + k, r0 + oc] += s2 * c_j * g_k
                    if j != i:
                        # d2F/dc_i dw_j = s^2 c_j grad_2 kappa(w_i, w_j); j = i is copied below
                        H[r0 + oc, c0 + k] += s2 * c_j * (q_i * a_i[k] + q_j * a_j[k])
                if train_bias:
                    H[r0 + ob, c0 + oc] += s2 * c_i * f_b
                    H[r0 + ob, r0 + oc] += s2 * c_j * f_b
                    if j != i:
                        H[r0 + oc, c0 + ob] += s2 * c_j * q_b
                H[r0 + oc, c0 + oc] += s2 * kappa
        for t in range(n_teacher):
            a_t = teacher[t, :d]
            c_t = teacher[t, d + 1]
            (_, f_i, f_j, f_b, _, _, _, _, _, _, _, _, _, _,
             h0, h11, h12, h22, hv1, hv2, hb) = _pair_blocks(a_i, a_t, b_i, teacher[t, d], d, activation_code, u1, u2)
            weight = -s * inv_alpha * c_t
            _add_block(H, r0, r0, weight * c_i, u1, u2, d, h0, h11, h12, h22, hv1, hv2, hb, train_bias)
            if train_readout:
                for k in range(d):
                    H[r0 + k, r0 + oc] += weight * (f_i * a_i[k] + f_j * a_t[k])
                if train_bias:
                    H[r0 + ob, r0 + oc] += weight * f_b
        if train_readout:
            # the c_i row's own (a_i, b_i) entries: the full derivative is in the column (symmetric)
            for k in range(oc):
                H[r0 + oc, r0 + k] = H[r0 + k, r0 + oc]
    flags = np.empty(m, dtype=np.bool_)
    return _singular_flags(W, activation_code, train_readout, flags)


@njit(cache=True)
def _project(kind, ai_v, aj_v, y_v, r_i, r_j, t):
    """(u1 . v, u2 . v) for the basis ``kind`` from a_i . v, a_j . v and y . v (y . v from the
    entries of y, so that u2 . v = y . v / |y| keeps its accuracy near collinear pairs)."""
    zero = like(r_i, 0.0)
    if kind == BASIS_A:
        return ai_v, aj_v
    if kind == BASIS_PLANE:
        return ai_v / r_i, y_v / t
    if kind == BASIS_J:
        return aj_v / r_j, zero
    if kind == BASIS_I:
        return ai_v / r_i, zero
    return zero, zero


@njit(cache=True)
def _lift(kind, P1, P2, r_i, r_j, t, lam):
    """(coefficient of a_i, coefficient of a_j) of u1 P1 + u2 P2 for the basis ``kind``.

    For BASIS_PLANE, u2 = (a_j - lam a_i) / |y|: P2 / |y| is bounded (the e2 coefficients carry a
    factor s = |y| / |a_j|, and u2 . v is at most |v|), so the split costs no accuracy.
    """
    zero = like(r_i, 0.0)
    if kind == BASIS_A:
        return P1, P2
    if kind == BASIS_PLANE:
        q = P2 / t
        return P1 / r_i - lam * q, q
    if kind == BASIS_J:
        return zero, P1 / r_j
    if kind == BASIS_I:
        return P1 / r_i, zero
    return zero, zero


@njit(cache=True)
def _block_product(kind, z0, z11, z12, z22, v1, v2, zb, ai_v, aj_v, y_v, vb, r_i, r_j, t, lam):
    """B (v, vb) as (coefficient of a_i, of a_j, of v itself, b component), from dot products."""
    x1, x2 = _project(kind, ai_v, aj_v, y_v, r_i, r_j, t)
    P1 = z11 * x1 + z12 * x2 + v1 * vb
    P2 = z12 * x1 + z22 * x2 + v2 * vb
    c_i, c_j = _lift(kind, P1, P2, r_i, r_j, t, lam)
    return c_i, c_j, z0, v1 * x1 + v2 * x2 + zb * vb


@njit(cache=True, parallel=True)
def _bias_hessian_vector_product(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, V, out):
    """Body of :func:`bias_closed_form_hessian_vector_product`; returns the number of singular particles.

    Every term of (H V)_{w_i} is a combination of a_i, V_ai, a_j and V_aj: per pair, one pass
    for the dot products a_i . a_j, a_i . V_aj, a_j . V_ai, one for y = a_j - lam a_i (|y|^2,
    y . V_aj, y . V_ai, entry by entry), the block products in scalars, and one pass adding
    c_j a_j + d_j V_aj; the a_i and V_ai terms are summed as scalars and added once.
    """
    m, p = W.shape
    d = p - 2
    n_teacher = teacher.shape[0]
    s2 = s * s
    norms = np.empty(m)  # |a_j|^2
    self_dots = np.empty(m)  # a_j . V_aj
    for j in range(m):
        norms[j] = _dot(W[j], W[j], d)
        self_dots[j] = _dot(W[j], V[j], d)
    teacher_norms = np.empty(n_teacher)
    for t_ in range(n_teacher):
        teacher_norms[t_] = _dot(teacher[t_], teacher[t_], d)
    for i in prange(m):
        acc = np.zeros(d)
        a_i = W[i, :d]
        b_i = W[i, d]
        c_i = W[i, d + 1]
        va_i = V[i, :d]
        vb_i = V[i, d] if train_bias else 0.0
        vc_i = V[i, d + 1] if train_readout else 0.0
        u = norms[i]
        r_i = math.sqrt(u)
        ai_vi = self_dots[i]
        coef_ai = 0.0  # of a_i in (H V)_{a_i}
        coef_vi = 0.0  # of V_ai
        acc_b = 0.0
        acc_c = 0.0
        for j in range(m + n_teacher):
            teacher_pair = j >= m
            if teacher_pair:
                a_j = teacher[j - m, :d]
                b_j = teacher[j - m, d]
                c_j = teacher[j - m, d + 1]
                v = teacher_norms[j - m]
                va_j = va_i  # unused: no (a*, b*) variables
                vb_j = 0.0
                vc_j = 0.0
                aj_vj = 0.0
            else:
                a_j = W[j, :d]
                b_j = W[j, d]
                c_j = W[j, d + 1]
                v = norms[j]
                va_j = V[j, :d]
                vb_j = V[j, d] if train_bias else 0.0
                vc_j = V[j, d + 1] if train_readout else 0.0
                aj_vj = self_dots[j]
            # pass 1: dot products
            pdot = 0.0
            ai_vj = 0.0
            aj_vi = 0.0
            for k in range(d):
                pdot += a_i[k] * a_j[k]
                ai_vj += a_i[k] * va_j[k]
                aj_vi += a_j[k] * va_i[k]
            # pass 2: y = a_j - lam a_i entry by entry (relu's s, the erf / Phi 1 - q^2)
            lam = pdot / u if u > 0.0 else 0.0
            y2 = 0.0
            y_vj = 0.0
            y_vi = 0.0
            if u > 0.0 and v > 0.0 and activation_code != LINEAR:
                for k in range(d):
                    yk = a_j[k] - lam * a_i[k]
                    y2 += yk * yk
                    y_vj += yk * va_j[k]
                    y_vi += yk * va_i[k]
            (kind, kappa, f_i, f_j, f_b, q_i, q_j, q_b, m0, m11, m12, m22, mv1, mv2, mb,
             h0, h11, h12, h22, hv1, hv2, hb) = _pair_scalars(pdot, u, v, y2, b_i, b_j, activation_code)
            r_j = math.sqrt(v)
            t = math.sqrt(y2)
            coef_aj = 0.0  # of a_j (a*_t for a teacher pair)
            coef_vj = 0.0  # of V_aj
            if teacher_pair:
                w = -s * inv_alpha * c_j
                wh = w * c_i  # c_i H(w_i, w*_t) V_wi; the V_ci grad_1 kappa(w_i, w*_t) term
                wg = w * vc_i
            else:
                w = s2 * c_i * c_j
                wh = w
                wg = s2 * (c_i * vc_j + c_j * vc_i)
                if w != 0.0:
                    # M(w_i, w_j) V_wj
                    ci_, cj_, cv_, cb_ = _block_product(kind, m0, m11, m12, m22, mv1, mv2, mb, ai_vj, aj_vj, y_vj,
                                                        vb_j, r_i, r_j, t, lam)
                    coef_ai += w * ci_
                    coef_aj += w * cj_
                    coef_vj += w * cv_
                    acc_b += w * cb_
            if wh != 0.0:
                # H(w_i, w_j) V_wi
                ci_, cj_, cv_, cb_ = _block_product(kind, h0, h11, h12, h22, hv1, hv2, hb, ai_vi, aj_vi, y_vi,
                                                    vb_i, r_i, r_j, t, lam)
                coef_ai += wh * ci_
                coef_aj += wh * cj_
                coef_vi += wh * cv_
                acc_b += wh * cb_
            # gradient terms: (c_i V_cj + c_j V_ci) grad_1 kappa (students), V_ci grad_1 kappa(w_i, w*_t)
            coef_ai += wg * f_i
            coef_aj += wg * f_j
            acc_b += wg * f_b
            if train_readout:
                grad_dot_vi = f_i * ai_vi + f_j * aj_vi + f_b * vb_i
                if teacher_pair:
                    acc_c += w * grad_dot_vi
                else:
                    grad2_dot_vj = q_i * ai_vj + q_j * aj_vj + q_b * vb_j
                    acc_c += s2 * (kappa * vc_j + c_j * (grad_dot_vi + grad2_dot_vj))
            # pass 3: the a_j and V_aj terms
            if coef_aj != 0.0 or coef_vj != 0.0:
                for k in range(d):
                    acc[k] += coef_aj * a_j[k] + coef_vj * va_j[k]
        for k in range(d):
            out[i, k] = acc[k] + coef_ai * a_i[k] + coef_vi * va_i[k]
        out[i, d] = acc_b if train_bias else 0.0
        out[i, d + 1] = acc_c if train_readout else 0.0
    flags = np.empty(m, dtype=np.bool_)
    return _singular_flags(W, activation_code, train_readout, flags)


def _check_arrays(W, teacher, *arrays):
    for name, x in (("W", W), ("teacher", teacher)) + arrays:
        if x.dtype != np.float64 or not x.flags.c_contiguous:
            raise TypeError(f"{name} must be a C-contiguous float64 array")
    if teacher.shape[1] != W.shape[1]:
        raise ValueError(f"teacher has {teacher.shape[1]} columns, W has {W.shape[1]}")


def bias_closed_form_hessian(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, H):
    """Dense Hessian of the closed-form population risk with biases over the trainable coordinates.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
        Particles (a, b, c); the b column is used as it is (0 for a model without bias).
    teacher : ndarray, shape (k, d + 2), float64
        Teacher neurons (a*_t, b*_t, c*_t), same activation.
    activation_code : int
        RELU, ERF, NORMAL_CDF or LINEAR.
    s, inv_alpha : float
        Output scale s (1/m or 1) and 1/alpha.
    train_bias, train_readout : bool
        Whether b and c are variables (``Model.trainable``): n_loc = d + train_bias +
        train_readout per particle.
    H : ndarray, shape (m n_loc, m n_loc), float64, output
        The Hessian of F, particle-major: rows i n_loc .. i n_loc + d - 1 are a_i, then b_i
        (with the bias), then c_i (with the readout). Formulas in the module docstring;
        cost O(m^2 d^2), rows of one particle per thread (independent of the thread count).

    Returns
    -------
    int
        The number of particles at which F is not twice differentiable (relu, a_i = 0 and
        b_i = 0; ``bias_hessian_singular_particles``). Their rows and columns are 0 (the
        convention relu'(0) = relu''(0) = 0 of the velocity), so H is finite but not a
        Hessian there.
    """
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    _check_arrays(W, teacher, ("H", H))
    n_loc = W.shape[1] - 2 + int(train_bias) + int(train_readout)
    n_var = W.shape[0] * n_loc
    if H.shape != (n_var, n_var):
        raise ValueError(f"H must have shape {(n_var, n_var)}, got {H.shape}")
    return int(_bias_hessian(W, teacher, activation_code, float(s), float(inv_alpha), bool(train_bias),
                             bool(train_readout), H))


def bias_closed_form_hessian_vector_product(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout,
                                            V, out):
    """Hessian-vector product of the closed-form population risk with biases, without the matrix.

    Parameters
    ----------
    W, teacher, activation_code, s, inv_alpha, train_bias, train_readout
        As in :func:`bias_closed_form_hessian`.
    V : ndarray, shape (m, d + 2), float64
        The direction in the particle layout; frozen columns (b without the bias, c with a
        frozen readout) are ignored.
    out : ndarray, shape (m, d + 2), float64, output
        (H V) in the particle layout, frozen columns 0::

            (H V)_{w_i} = sum_j s^2 c_i c_j [M(w_i, w_j) V_wj + H(w_i, w_j) V_wi]
                          + sum_j s^2 (c_i V_cj + c_j V_ci) grad_1 kappa(w_i, w_j)
                          - (s/alpha) sum_t c*_t [c_i H(w_i, w*_t) V_wi + V_ci grad_1 kappa(w_i, w*_t)],
            (H V)_{c_i} = sum_j s^2 [kappa(w_i, w_j) V_cj + c_j (grad_1 kappa(w_i, w_j) . V_wi
                          + grad_2 kappa(w_i, w_j) . V_wj)] - (s/alpha) sum_t c*_t grad_1 kappa(w_i, w*_t) . V_wi.

        Cost O(m^2 d), like one gradient; one particle per thread.

    Returns
    -------
    int
        The number of particles at which F is not twice differentiable (as
        :func:`bias_closed_form_hessian`; their entries use relu'(0) = relu''(0) = 0).
    """
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    _check_arrays(W, teacher, ("V", V), ("out", out))
    if V.shape != W.shape or out.shape != W.shape:
        raise ValueError(f"V and out must have the shape of W, {W.shape}")
    return int(_bias_hessian_vector_product(W, teacher, activation_code, float(s), float(inv_alpha),
                                            bool(train_bias), bool(train_readout), V, out))
