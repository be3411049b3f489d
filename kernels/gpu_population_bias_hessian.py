"""CUDA twin of ``population_bias_hessian``: the Hessian and Hessian-vector products of the
closed-form population risk with biases (relu, erf(z/sqrt 2), normal CDF, linear).

The formulas are those of the CPU module (its docstring), compiled for the device from the
same source (``_gpu_scalar``: ``_pair_blocks``, ``_pair_scalars``, ``_block_product`` with
constants of the kernel's type), in float64 or float32. What differs is who computes what:

* ``bias_closed_form_hessian``: one thread per row of H (particle i, local coordinate k). The
  thread zeroes its row, then, for every student j and teacher t in order, adds row k of the
  pair's blocks exactly as the CPU kernel adds them to the rows of particle i (the
  off-diagonal block (i, j), the diagonal block's sums over j and t, the readout entries;
  the c_i row takes the sums of the c_i column, which the CPU copies). Every entry is
  written by one thread only, with the CPU's terms in the CPU's order: no atomics, the
  result is independent of the launch geometry. A pair's scalars are recomputed by each of
  the n_loc threads of its row block (cheap next to the O(d) row it adds).
* ``bias_closed_form_hessian_vector_product``: one thread per particle, the loop of the CPU
  kernel over the students and the teachers (dot products, the block products in scalars,
  one pass adding the a_j and V_aj terms into a local array of length d).
* ``bias_hessian_singular_particles``: one thread per particle sets a flag (relu, a_i = 0,
  b_i = 0, entering F); the indices are gathered on the host.

The kernels are specialised on the floating type and on d (local arrays of length d).
"""
import functools
import math

import numpy as np
from numba import cuda

from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type
from ._gpu_scalar import hessian_block_product, hessian_dot, hessian_pair_blocks, hessian_pair_scalars
from ._scalar import LINEAR, RELU, like
from .population_bias import BIAS_CLOSED_FORM_CODES


@cuda.jit(device=True)
def _add_block_row(H, row, k, c0, scale, u1, u2, d, z0, z11, z12, z22, v1, v2, zb, with_b):
    """H[row, c0:] += row k of scale B (``population_bias_hessian._add_block``, one row, the same
    arithmetic per entry): k < d an a row, k = d the b row (with the bias); a c row has none."""
    if scale == like(scale, 0.0):
        return
    if k < d:
        rk = scale * (z11 * u1[k] + z12 * u2[k])
        sk = scale * (z12 * u1[k] + z22 * u2[k])
        for l in range(d):
            H[row, c0 + l] += rk * u1[l] + sk * u2[l]
        H[row, c0 + k] += scale * z0
        if with_b:
            H[row, c0 + d] += scale * (v1 * u1[k] + v2 * u2[k])
    elif with_b and k == d:
        for l in range(d):
            H[row, c0 + l] += scale * (v1 * u1[l] + v2 * u2[l])
        H[row, c0 + d] += scale * zb


@functools.lru_cache(maxsize=None)
def _hessian_kernel(T, d):
    def kernel(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, H):
        m = W.shape[0]
        n_loc = d + (1 if train_bias else 0) + (1 if train_readout else 0)
        row = cuda.grid(1)
        if row >= m * n_loc:
            return
        i = row // n_loc
        k = row - i * n_loc
        ob = d
        oc = d + 1 if train_bias else d
        is_b = train_bias and k == ob
        is_c = train_readout and k == oc
        r0 = i * n_loc
        zero = T(0.0)
        for col in range(H.shape[1]):
            H[row, col] = zero
        u1 = cuda.local.array(d, T)
        u2 = cuda.local.array(d, T)
        a_i = W[i, :d]
        b_i = W[i, d]
        c_i = W[i, d + 1]
        s2 = s * s
        for j in range(m):
            a_j = W[j, :d]
            b_j = W[j, d]
            c_j = W[j, d + 1]
            (kappa, f_i, f_j, f_b, q_i, q_j, q_b, m0, m11, m12, m22, mv1, mv2, mb,
             h0, h11, h12, h22, hv1, hv2, hb) = hessian_pair_blocks(a_i, a_j, b_i, b_j, d, activation_code, u1, u2)
            c0 = j * n_loc
            w = s2 * c_i * c_j
            _add_block_row(H, row, k, c0, w, u1, u2, d, m0, m11, m12, m22, mv1, mv2, mb, train_bias)
            _add_block_row(H, row, k, r0, w, u1, u2, d, h0, h11, h12, h22, hv1, hv2, hb, train_bias)
            if train_readout:
                if k < d:
                    g_k = f_i * a_i[k] + f_j * a_j[k]
                    H[row, c0 + oc] += s2 * c_i * g_k
                    H[row, r0 + oc] += s2 * c_j * g_k
                elif is_b:
                    H[row, c0 + oc] += s2 * c_i * f_b
                    H[row, r0 + oc] += s2 * c_j * f_b
                else:
                    # the c_i row: d2F/dc_i dw_j (j != i), and the (c_i, w_i) entries as the
                    # CPU sums them in the (w_i, c_i) column (same terms, same order)
                    for l in range(d):
                        g_l = f_i * a_i[l] + f_j * a_j[l]
                        if j == i:
                            H[row, r0 + l] += s2 * c_i * g_l
                        H[row, r0 + l] += s2 * c_j * g_l
                        if j != i:
                            H[row, c0 + l] += s2 * c_j * (q_i * a_i[l] + q_j * a_j[l])
                    if train_bias:
                        if j == i:
                            H[row, r0 + ob] += s2 * c_i * f_b
                        H[row, r0 + ob] += s2 * c_j * f_b
                        if j != i:
                            H[row, c0 + ob] += s2 * c_j * q_b
                    H[row, c0 + oc] += s2 * kappa
        for t in range(teacher.shape[0]):
            a_t = teacher[t, :d]
            c_t = teacher[t, d + 1]
            (_, f_i, f_j, f_b, _, _, _, _, _, _, _, _, _, _,
             h0, h11, h12, h22, hv1, hv2, hb) = hessian_pair_blocks(a_i, a_t, b_i, teacher[t, d], d, activation_code,
                                                                     u1, u2)
            weight = -s * inv_alpha * c_t
            _add_block_row(H, row, k, r0, weight * c_i, u1, u2, d, h0, h11, h12, h22, hv1, hv2, hb, train_bias)
            if train_readout:
                if k < d:
                    H[row, r0 + oc] += weight * (f_i * a_i[k] + f_j * a_t[k])
                elif is_b:
                    H[row, r0 + oc] += weight * f_b
                elif is_c:
                    for l in range(d):
                        H[row, r0 + l] += weight * (f_i * a_i[l] + f_j * a_t[l])
                    if train_bias:
                        H[row, r0 + ob] += weight * f_b

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _hessian_vector_product_kernel(T, d):
    def kernel(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, V, out):
        m = W.shape[0]
        i = cuda.grid(1)
        if i >= m:
            return
        n_teacher = teacher.shape[0]
        zero = T(0.0)
        s2 = s * s
        acc = cuda.local.array(d, T)
        for k in range(d):
            acc[k] = zero
        a_i = W[i, :d]
        b_i = W[i, d]
        c_i = W[i, d + 1]
        va_i = V[i, :d]
        vb_i = V[i, d] if train_bias else zero
        vc_i = V[i, d + 1] if train_readout else zero
        u = hessian_dot(a_i, a_i, d)
        ai_vi = hessian_dot(a_i, va_i, d)
        coef_ai = zero  # of a_i in (H V)_{a_i}
        coef_vi = zero  # of V_ai
        acc_b = zero
        acc_c = zero
        for j in range(m + n_teacher):
            teacher_pair = j >= m
            if teacher_pair:
                a_j = teacher[j - m, :d]
                b_j = teacher[j - m, d]
                c_j = teacher[j - m, d + 1]
                va_j = va_i  # unused: no (a*, b*) variables
                vb_j = zero
                vc_j = zero
                aj_vj = zero
            else:
                a_j = W[j, :d]
                b_j = W[j, d]
                c_j = W[j, d + 1]
                va_j = V[j, :d]
                vb_j = V[j, d] if train_bias else zero
                vc_j = V[j, d + 1] if train_readout else zero
                aj_vj = hessian_dot(a_j, va_j, d)
            v = hessian_dot(a_j, a_j, d)
            # pass 1: dot products
            pdot = zero
            ai_vj = zero
            aj_vi = zero
            for k in range(d):
                pdot += a_i[k] * a_j[k]
                ai_vj += a_i[k] * va_j[k]
                aj_vi += a_j[k] * va_i[k]
            # pass 2: y = a_j - lam a_i entry by entry
            lam = pdot / u if u > zero else zero
            y2 = zero
            y_vj = zero
            y_vi = zero
            if u > zero and v > zero and activation_code != LINEAR:
                for k in range(d):
                    yk = a_j[k] - lam * a_i[k]
                    y2 += yk * yk
                    y_vj += yk * va_j[k]
                    y_vi += yk * va_i[k]
            (kind, kappa, f_i, f_j, f_b, q_i, q_j, q_b, m0, m11, m12, m22, mv1, mv2, mb,
             h0, h11, h12, h22, hv1, hv2, hb) = hessian_pair_scalars(pdot, u, v, y2, b_i, b_j, activation_code)
            r_i = math.sqrt(u)
            r_j = math.sqrt(v)
            t = math.sqrt(y2)
            coef_aj = zero  # of a_j (a*_t for a teacher pair)
            coef_vj = zero  # of V_aj
            if teacher_pair:
                w = -s * inv_alpha * c_j
                wh = w * c_i
                wg = w * vc_i
            else:
                w = s2 * c_i * c_j
                wh = w
                wg = s2 * (c_i * vc_j + c_j * vc_i)
                if w != zero:
                    ci_, cj_, cv_, cb_ = hessian_block_product(kind, m0, m11, m12, m22, mv1, mv2, mb, ai_vj, aj_vj,
                                                               y_vj, vb_j, r_i, r_j, t, lam)
                    coef_ai += w * ci_
                    coef_aj += w * cj_
                    coef_vj += w * cv_
                    acc_b += w * cb_
            if wh != zero:
                ci_, cj_, cv_, cb_ = hessian_block_product(kind, h0, h11, h12, h22, hv1, hv2, hb, ai_vi, aj_vi, y_vi,
                                                           vb_i, r_i, r_j, t, lam)
                coef_ai += wh * ci_
                coef_aj += wh * cj_
                coef_vi += wh * cv_
                acc_b += wh * cb_
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
            if coef_aj != zero or coef_vj != zero:
                for k in range(d):
                    acc[k] += coef_aj * a_j[k] + coef_vj * va_j[k]
        for k in range(d):
            out[i, k] = acc[k] + coef_ai * a_i[k] + coef_vi * va_i[k]
        out[i, d] = acc_b if train_bias else zero
        out[i, d + 1] = acc_c if train_readout else zero

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _singular_kernel(T, d):
    def kernel(W, activation_code, train_readout, flags):
        i = cuda.grid(1)
        if i < W.shape[0]:
            zero = T(0.0)
            flag = activation_code == RELU and W[i, d] == zero and (train_readout or W[i, d + 1] != zero)
            if flag:
                for k in range(d):
                    if W[i, k] != zero:
                        flag = False
            flags[i] = flag

    return cuda.jit(kernel)


def _check(W, teacher, activation_code, *arrays):
    if activation_code not in BIAS_CLOSED_FORM_CODES:
        raise ValueError(f"no closed form with biases for activation code {activation_code}")
    check_device_arrays(W, teacher, *arrays)
    for x in (teacher, *arrays):
        if x.dtype != W.dtype:
            raise TypeError(f"every array must have the dtype of W ({W.dtype}), got {x.dtype}")
    if teacher.shape[1] != W.shape[1]:
        raise ValueError(f"teacher has {teacher.shape[1]} columns, W has {W.shape[1]}")


def bias_hessian_singular_particles(W, activation_code, train_readout):
    """Particles at which the closed-form population risk with biases is not twice differentiable.

    Same contract as ``meanfield.kernels.bias_hessian_singular_particles``, with W a device array
    (float32 or float64): relu particles with a_i = 0 and b_i = 0 that enter F.

    Returns
    -------
    ndarray of int64 (host), the indices.
    """
    check_device_arrays(W)
    m, p = W.shape
    flags = cuda.device_array(m, dtype=np.bool_)
    if m:
        _singular_kernel(numba_type(W.dtype), p - 2)[blocks(m, THREADS_PER_BLOCK), THREADS_PER_BLOCK](
            W, int(activation_code), bool(train_readout), flags)
    return np.flatnonzero(flags.copy_to_host()).astype(np.int64)


def bias_closed_form_hessian(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout, H):
    """Dense Hessian of the closed-form population risk with biases, on the GPU.

    Same contract as ``meanfield.kernels.bias_closed_form_hessian`` on device arrays, in float32
    or float64 (the dtype of W; the CPU kernel is float64 only): one thread per row of H.

    Parameters
    ----------
    W : device array, shape (m, d + 2)
    teacher : device array, shape (k, d + 2), same dtype
    activation_code : int
        RELU, ERF, NORMAL_CDF or LINEAR.
    s, inv_alpha : float
    train_bias, train_readout : bool
    H : device array, shape (m n_loc, m n_loc), same dtype, output
        n_loc = d + train_bias + train_readout, particle-major (a_i, then b_i, then c_i).

    Returns
    -------
    int
        The number of particles at which F is not twice differentiable (their rows and
        columns use relu'(0) = relu''(0) = 0, as on the CPU).
    """
    _check(W, teacher, activation_code, H)
    m, p = W.shape
    d = p - 2
    n_loc = d + int(bool(train_bias)) + int(bool(train_readout))
    if H.shape != (m * n_loc, m * n_loc):
        raise ValueError(f"H must have shape {(m * n_loc, m * n_loc)}, got {H.shape}")
    if m:
        scalar = W.dtype.type
        _hessian_kernel(numba_type(W.dtype), d)[blocks(m * n_loc, THREADS_PER_BLOCK), THREADS_PER_BLOCK](
            W, teacher, int(activation_code), scalar(s), scalar(inv_alpha), bool(train_bias), bool(train_readout), H)
    return len(bias_hessian_singular_particles(W, activation_code, train_readout))


def bias_closed_form_hessian_vector_product(W, teacher, activation_code, s, inv_alpha, train_bias, train_readout,
                                            V, out):
    """Hessian-vector product of the closed-form population risk with biases, on the GPU.

    Same contract as ``meanfield.kernels.bias_closed_form_hessian_vector_product`` on device
    arrays, float32 or float64: ``out`` = (H V) in the particle layout, frozen columns 0; one
    thread per particle, O(m d) each.

    Returns
    -------
    int
        The number of particles at which F is not twice differentiable.
    """
    _check(W, teacher, activation_code, V, out)
    if V.shape != W.shape or out.shape != W.shape:
        raise ValueError(f"V and out must have the shape of W, {W.shape}")
    m, p = W.shape
    if m:
        scalar = W.dtype.type
        _hessian_vector_product_kernel(numba_type(W.dtype), p - 2)[blocks(m, THREADS_PER_BLOCK), THREADS_PER_BLOCK](
            W, teacher, int(activation_code), scalar(s), scalar(inv_alpha), bool(train_bias), bool(train_readout), V,
            out)
    return len(bias_hessian_singular_particles(W, activation_code, train_readout))


def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T``
    and input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, int64

    M = T[:, ::1]
    return [
        ("bias_closed_form_hessian", _hessian_kernel(T, d).py_func, (M, M, int64, T, T, boolean, boolean, M)),
        ("bias_closed_form_hessian_vector_product", _hessian_vector_product_kernel(T, d).py_func,
         (M, M, int64, T, T, boolean, boolean, M, M)),
        ("bias_hessian_singular_particles", _singular_kernel(T, d).py_func, (M, int64, boolean, boolean[::1])),
    ]
