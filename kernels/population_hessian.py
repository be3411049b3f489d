"""Second derivatives of the closed-form population risk (squared loss, no bias; relu, erf,
linear): the dense Hessian and Hessian-vector products, in float64.

The objective of ``meanfield.PopulationProblem`` in closed form is

    F = E[y^2] / (2 alpha^2) - (s / alpha) sum_i c_i sum_t c*_t kappa(a_i, a*_t)
        + (s^2 / 2) sum_ij c_i c_j kappa(a_i, a_j),

with kappa the pair kernel of ``population.py``. Its second derivatives only need, for each
pair (a, b), the gradient grad_1 kappa(a, b), the Hessian in the first argument
H(a, b) = d^2 kappa / da da^T and the mixed block M(a, b) = d^2 kappa / da db^T
(M[k, l] = d^2 kappa / da_k db_l). Both blocks are written in the basis of a and of
y = b - t a (t = 0 for erf and linear; t = a.b / |a|^2 for relu, so that y is the component
of b orthogonal to a):

    H = h0 I + h_aa a a^T + h_ay (a y^T + y a^T) + h_yy y y^T,
    M = m0 I + m_aa a a^T + m_ay a y^T + m_ya y a^T + m_yy y y^T.

With kappa = f(u, v, w), u = |a|^2, v = |b|^2, w = a.b (erf, linear; subscripts are partial
derivatives): H = 2 f_u I + 4 f_uu a a^T + 2 f_uw (a b^T + b a^T) + f_ww b b^T and
M = f_w I + 4 f_uv a b^T + 2 f_uw a a^T + 2 f_vw b b^T + f_ww b a^T.

relu, kappa = |a||b| (sin theta + (pi - theta) cos theta) / (2 pi): in the plane of (a, b),
with e = a/|a| and e_perp = y/|y|,

    H = |b| sin theta / (2 pi |a|) (I - e e^T + e_perp e_perp^T),
    M = ((pi - theta) I + sin theta [cos theta (e e^T - e_perp e_perp^T)
                                     + sin theta (e e_perp^T + e_perp e^T)]) / (2 pi).

Written with y (|y| = |b| sin theta) these have no 1/sin theta that cancels: y is computed
as b - t a entry by entry (absolute error eps |b|), so the blocks stay accurate up to
collinear pairs, where the sin theta terms vanish. The relu kernel is C^2 at collinear
pairs (a |theta|^3 term), so the Hessian there is the limit of these formulas; it is not
twice differentiable at a = 0, where the blocks are set to 0.

Hessian of F, particle-major over the trainable coordinates (a_i, then c_i when the readout
is trained), n_loc = d (+1) per particle:

    d2F / da_i da_j = s^2 c_i c_j M(a_i, a_j)                              (i != j)
    d2F / da_i dc_j = s^2 c_i grad_1 kappa(a_i, a_j)                          (i != j)
    d2F / dc_i dc_j = s^2 kappa(a_i, a_j)                                     (all i, j)
    d2F / da_i^2    = c_i [s^2 sum_k c_k H(a_i, a_k) - (s/alpha) sum_t c*_t H(a_i, a*_t)]
                      + s^2 c_i^2 M(a_i, a_i)
    d2F / da_i dc_i = s^2 sum_k c_k grad_1 kappa(a_i, a_k)
                      - (s/alpha) sum_t c*_t grad_1 kappa(a_i, a*_t) + s^2 c_i grad_1 kappa(a_i, a_i)
"""
import math

from numba import njit, prange

from ._scalar import ERF, RELU

INV_2PI = 0.15915494309189535
TWO_OVER_PI = 0.6366197723675814


@njit(cache=True)
def _second_derivatives(a, b, d, code):
    """Gradient and second-derivative coefficients of kappa at the pair (a, b) (float64 rows).

    Returns (kappa, g_a, g_b, t, h0, h_aa, h_ay, h_yy, m0, m_aa, m_ay, m_ya, m_yy) with
    grad_1 kappa = g_a a + g_b b and the blocks H, M in the basis (a, y = b - t a) as in the
    module docstring.
    """
    u = 0.0
    v = 0.0
    w = 0.0
    for k in range(d):
        u += a[k] * a[k]
        v += b[k] * b[k]
        w += a[k] * b[k]
    if code == RELU:
        if u == 0.0 or v == 0.0:
            return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        t = w / u
        y2 = 0.0  # |y|^2, y = b - t a, computed from the entries (accurate near collinear pairs)
        for k in range(d):
            yk = b[k] - t * a[k]
            y2 += yk * yk
        na = math.sqrt(u)
        nb = math.sqrt(v)
        ny = math.sqrt(y2)
        sin_t = min(ny / nb, 1.0)
        cos_t = max(-1.0, min(1.0, w / (na * nb)))
        theta = math.atan2(sin_t, cos_t)
        phi = math.pi - theta
        kappa = na * nb * (sin_t + phi * cos_t) * INV_2PI
        g_b = phi * INV_2PI
        g_a = sin_t * nb / na * INV_2PI
        h0 = nb * sin_t / na * INV_2PI
        h_aa = -h0 / u
        m0 = phi * INV_2PI
        if ny > 0.0:
            # e_perp e_perp^T = y y^T / |y|^2; sin theta / |y|^2 = 1 / (|b| |y|)
            h_yy = INV_2PI / (na * ny)
            m_aa = sin_t * cos_t / u * INV_2PI
            m_yy = -cos_t / (nb * ny) * INV_2PI
            m_ay = sin_t / (na * nb) * INV_2PI
        else:
            h_yy = 0.0
            m_aa = 0.0
            m_yy = 0.0
            m_ay = 0.0
        return kappa, g_a, g_b, t, h0, h_aa, 0.0, h_yy, m0, m_aa, m_ay, m_ay, m_yy
    elif code == ERF:
        A = 1.0 + u
        B = 1.0 + v
        D = math.sqrt(A * B)
        q = w / D
        g1 = TWO_OVER_PI / math.sqrt(1.0 - q * q)  # d/dq (2/pi) asin q
        g2 = g1 * q / (1.0 - q * q)
        q_u = -q / (2.0 * A)
        q_v = -q / (2.0 * B)
        q_w = 1.0 / D
        q_uu = 3.0 * q / (4.0 * A * A)
        q_uv = q / (4.0 * A * B)
        q_uw = -1.0 / (2.0 * A * D)
        q_vw = -1.0 / (2.0 * B * D)
        f_u = g1 * q_u
        f_w = g1 * q_w
        f_uu = g2 * q_u * q_u + g1 * q_uu
        f_uv = g2 * q_u * q_v + g1 * q_uv
        f_uw = g2 * q_u * q_w + g1 * q_uw
        f_vw = g2 * q_v * q_w + g1 * q_vw
        f_ww = g2 * q_w * q_w
        kappa = TWO_OVER_PI * math.asin(q)
        return (kappa, 2.0 * f_u, f_w, 0.0, 2.0 * f_u, 4.0 * f_uu, 2.0 * f_uw, f_ww,
                f_w, 2.0 * f_uw, 4.0 * f_uv, f_ww, 2.0 * f_vw)
    else:  # linear: kappa = a.b
        return w, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0


@njit(cache=True)
def _add_block(out, r0, c0, scale, a, b, d, t, z0, z_aa, z_ay, z_ya, z_yy):
    """out[r0 + k, c0 + l] += scale (z0 I + z_aa a a^T + z_ay a y^T + z_ya y a^T + z_yy y y^T)[k, l]."""
    for k in range(d):
        ak = a[k]
        yk = b[k] - t * ak
        rk = scale * (z_aa * ak + z_ya * yk)
        sk = scale * (z_ay * ak + z_yy * yk)
        for l in range(d):
            al = a[l]
            out[r0 + k, c0 + l] += rk * al + sk * (b[l] - t * al)
        out[r0 + k, c0 + k] += scale * z0


@njit(cache=True, parallel=True)
def closed_form_hessian(W, teacher, activation_code, s, inv_alpha, train_readout, H):
    """Dense Hessian of the closed-form population risk over the trainable coordinates.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
        Particles (a, b, c); b must be 0 (closed form, no bias).
    teacher : ndarray, shape (k, d + 2), float64
        Teacher neurons (a*_t, 0, c*_t).
    activation_code : int
        RELU, ERF or LINEAR.
    s, inv_alpha : float
        Output scale s (1/m or 1) and 1/alpha.
    train_readout : bool
        Whether c is a variable (n_loc = d + 1 per particle) or frozen (n_loc = d).
    H : ndarray, shape (m n_loc, m n_loc), float64, output
        The Hessian of F, particle-major: rows i n_loc .. i n_loc + d - 1 are a_i, row
        i n_loc + d is c_i.
    """
    m, p = W.shape
    d = p - 2
    n_loc = d + 1 if train_readout else d
    n_teacher = teacher.shape[0]
    s2 = s * s
    for i in prange(m):
        r0 = i * n_loc
        for k in range(n_loc):
            for col in range(H.shape[1]):
                H[r0 + k, col] = 0.0
        a_i = W[i, :d]
        c_i = W[i, d + 1]
        for j in range(m):
            a_j = W[j, :d]
            c_j = W[j, d + 1]
            (kappa, g_a, g_b, t, h0, h_aa, h_ay, h_yy,
             m0, m_aa, m_ay, m_ya, m_yy) = _second_derivatives(a_i, a_j, d, activation_code)
            c0 = j * n_loc
            # H(a_i, a_j) enters the diagonal block with weight c_i c_j s^2.
            _add_block(H, r0, r0, s2 * c_i * c_j, a_i, a_j, d, t, h0, h_aa, h_ay, h_ay, h_yy)
            # the mixed block M(a_i, a_j): off-diagonal block, or the diagonal's c_i^2 term.
            _add_block(H, r0, c0, s2 * c_i * c_j, a_i, a_j, d, t, m0, m_aa, m_ay, m_ya, m_yy)
            if train_readout:
                for k in range(d):
                    grad_k = g_a * a_i[k] + g_b * a_j[k]
                    # d2F/da_i dc_j (i != j); for j = i this is the c_i grad_1 kappa(a_i, a_i) term,
                    # and the sum over j of c_j grad_1 kappa is added to the same entry below.
                    H[r0 + k, c0 + d] += s2 * c_i * grad_k
                    H[r0 + k, r0 + d] += s2 * c_j * grad_k
                H[r0 + d, c0 + d] += s2 * kappa
                # d2F/dc_i da_j = s^2 c_j grad_2 kappa(a_i, a_j) = s^2 c_j grad_1 kappa(a_j, a_i)
                (_, g_a2, g_b2, _, _, _, _, _, _, _, _, _, _) = _second_derivatives(a_j, a_i, d, activation_code)
                for k in range(d):
                    H[r0 + d, c0 + k] += s2 * c_j * (g_a2 * a_j[k] + g_b2 * a_i[k])
        for j in range(n_teacher):
            a_t = teacher[j, :d]
            c_t = teacher[j, d + 1]
            (_, g_a, g_b, t, h0, h_aa, h_ay, h_yy,
             _, _, _, _, _) = _second_derivatives(a_i, a_t, d, activation_code)
            _add_block(H, r0, r0, -s * inv_alpha * c_i * c_t, a_i, a_t, d, t, h0, h_aa, h_ay, h_ay, h_yy)
            if train_readout:
                for k in range(d):
                    H[r0 + k, r0 + d] -= s * inv_alpha * c_t * (g_a * a_i[k] + g_b * a_t[k])
        if train_readout:
            # the diagonal c_i a_i entries: the row of c_i holds, for j = i, c_i grad_1 kappa(a_i, a_i)
            # only; the full derivative is the a_i row's entry (symmetric), copied.
            for k in range(d):
                H[r0 + d, r0 + k] = H[r0 + k, r0 + d]


@njit(cache=True, parallel=True)
def closed_form_hessian_vector_product(W, teacher, activation_code, s, inv_alpha, train_readout, V, out):
    """Hessian-vector product of the closed-form population risk, without the matrix.

    Parameters
    ----------
    W : ndarray, shape (m, d + 2), float64
    teacher : ndarray, shape (k, d + 2), float64
    activation_code : int
    s, inv_alpha : float
    train_readout : bool
    V : ndarray, shape (m, d + 2), float64
        The direction, in the particle layout (the b column and, with a frozen readout, the
        c column are ignored).
    out : ndarray, shape (m, d + 2), float64, output
        (H V) in the particle layout; b (and frozen c) columns 0. Cost O(m^2 d), like one
        gradient.
    """
    m, p = W.shape
    d = p - 2
    n_teacher = teacher.shape[0]
    s2 = s * s
    for i in prange(m):
        for k in range(p):
            out[i, k] = 0.0
        a_i = W[i, :d]
        c_i = W[i, d + 1]
        vc_i = V[i, d + 1] if train_readout else 0.0
        # (H V)_{a_i} = sum_j [s^2 c_i c_j (M(a_i, a_j) V_aj + H(a_i, a_j) V_ai)
        #                      + s^2 grad_1 kappa(a_i, a_j) (c_i V_cj + c_j V_ci)]
        #               - (s/alpha) sum_t c*_t [c_i H(a_i, a*_t) V_ai + grad_1 kappa(a_i, a*_t) V_ci]
        # (H V)_{c_i} = sum_j [s^2 c_j (grad_1 kappa(a_i, a_j) . V_ai + grad_1 kappa(a_j, a_i) . V_aj)
        #                      + s^2 kappa(a_i, a_j) V_cj]
        #               - (s/alpha) sum_t c*_t grad_1 kappa(a_i, a*_t) . V_ai
        # (the j = i terms give the diagonal blocks of the module docstring).
        acc_c = 0.0
        for j in range(m):
            a_j = W[j, :d]
            c_j = W[j, d + 1]
            (kappa, g_a, g_b, t, h0, h_aa, h_ay, h_yy,
             m0, m_aa, m_ay, m_ya, m_yy) = _second_derivatives(a_i, a_j, d, activation_code)
            vc_j = V[j, d + 1] if train_readout else 0.0
            # y-basis dot products
            a_vj = 0.0
            y_vj = 0.0
            a_vi = 0.0
            y_vi = 0.0
            for k in range(d):
                yk = a_j[k] - t * a_i[k]
                a_vj += a_i[k] * V[j, k]
                y_vj += yk * V[j, k]
                a_vi += a_i[k] * V[i, k]
                y_vi += yk * V[i, k]
            w_m = s2 * c_i * c_j
            grad_dot_vi = 0.0
            for k in range(d):
                ak = a_i[k]
                yk = a_j[k] - t * ak
                mv = m0 * V[j, k] + (m_aa * ak + m_ya * yk) * a_vj + (m_ay * ak + m_yy * yk) * y_vj
                hv = h0 * V[i, k] + (h_aa * ak + h_ay * yk) * a_vi + (h_ay * ak + h_yy * yk) * y_vi
                grad_k = g_a * ak + g_b * a_j[k]
                out[i, k] += w_m * (mv + hv) + s2 * (c_i * vc_j + c_j * vc_i) * grad_k
                grad_dot_vi += grad_k * V[i, k]
            if train_readout:
                acc_c += s2 * c_j * grad_dot_vi + s2 * kappa * vc_j
                (_, g_a2, g_b2, _, _, _, _, _, _, _, _, _, _) = _second_derivatives(a_j, a_i, d, activation_code)
                dot2 = 0.0
                for k in range(d):
                    dot2 += (g_a2 * a_j[k] + g_b2 * a_i[k]) * V[j, k]
                acc_c += s2 * c_j * dot2
        for j in range(n_teacher):
            a_t = teacher[j, :d]
            c_t = teacher[j, d + 1]
            (_, g_a, g_b, t, h0, h_aa, h_ay, h_yy,
             _, _, _, _, _) = _second_derivatives(a_i, a_t, d, activation_code)
            a_vi = 0.0
            y_vi = 0.0
            for k in range(d):
                yk = a_t[k] - t * a_i[k]
                a_vi += a_i[k] * V[i, k]
                y_vi += yk * V[i, k]
            weight = -s * inv_alpha * c_t
            grad_dot_vi = 0.0
            for k in range(d):
                ak = a_i[k]
                yk = a_t[k] - t * ak
                hv = h0 * V[i, k] + (h_aa * ak + h_ay * yk) * a_vi + (h_ay * ak + h_yy * yk) * y_vi
                grad_k = g_a * ak + g_b * a_t[k]
                out[i, k] += weight * (c_i * hv + grad_k * vc_i)
                grad_dot_vi += grad_k * V[i, k]
            if train_readout:
                acc_c += weight * grad_dot_vi
        if train_readout:
            out[i, d + 1] = acc_c
