"""CUDA twin of ``population_series``: pair sums of the population risk by Hermite (Mehler) series.

The regimes and formulas are those of the CPU module (its docstring). What runs where:

* on the host, by the CPU code (``population_series.planned_pair_sums``, ``shared_tables``):
  the choice of the rule (a pilot of particles), the per-particle tables (coefficients of
  sigma, sigma', sigma'', Parseval tails, log bounds, diagonal values: O(p N L) for p particles,
  N nodes, degree L) and of rho* and the short degree, from host copies of the particles
  (O(p d) copied per call);
* on the device, the O(n m (d + L)) part (:func:`series_pair_field`): one thread per point,
  looping over the sources in order; per pair the dot product, rho, and either the short
  series of degree L_short by Horner's rule (|rho| <= rho*), or the near pair's diagonal
  formula or long series (``_near_pair``) or rotated-basis quadrature (``_conditional_pair``),
  both compiled for the device from the CPU source (``_gpu_scalar``); the thread sums c_j
  kappa, c_j alpha a_j, c_j beta, c_j gamma and the terms of the error bound as the CPU does.

Differences from the CPU kernel, all within the per-pair tolerance that the bound covers:
the dot products a_i . a_j are summed in order (the CPU takes them from BLAS), each near
pair's degree is the smallest stored one from L_short up that meets ``tol`` (the CPU starts
its search from the previous near pair's degree, which may stop one level higher), and the
rotated-basis quadrature takes its Gauss-Hermite or direct trapezoid rule, never the
shared-grid convolution (whose buffers would be 32 times larger per thread). Each pair's
terms depend on the pair only, so the sums are independent of the launch geometry.

Work memory: per point, L + 1 numbers for the powers of the long series and 2 (2 floor(9 / h)
+ 1) for the quadrature (h the coefficient rule's step), in device arrays allocated per
shape and reused through ``scratch``.
"""
import functools
import math

import numpy as np
from numba import cuda

from . import population_series as _series
from ._gpu_launch import THREADS_PER_BLOCK, blocks, check_device_arrays, numba_type
from ._gpu_scalar import series_conditional_pair, series_near_pair
from .population_series import LEVEL_STRIDE, InnerRules, SeriesErrorBound, SeriesTables


@functools.lru_cache(maxsize=None)
def _series_kernel(T, d):
    def kernel(points, sources, activation_code, p_coef, p_tails, p_norms, p_errors, p_diag, p_logs, s_coef, s_tails,
               s_norms, s_errors, s_logs, levels, step, rule_nodes, rule_weights, rule_sizes, rule_limits,
               rho_threshold, short_degree, tol, powers, s0, s1, grid, K, G, bound, counts):
        i = cuda.grid(1)
        n = points.shape[0]
        if i >= n:
            return
        m = sources.shape[0]
        zero = T(0.0)
        one = T(1.0)
        rules = InnerRules(rule_nodes, rule_weights, rule_sizes, rule_limits)
        short_level = short_degree // LEVEL_STRIDE
        force = cuda.local.array(d, T)
        pair = cuda.local.array(8, T)
        norm_sq = zero
        for k in range(d):
            force[k] = zero
            norm_sq += points[i, k] * points[i, k]
        norm_i = math.sqrt(norm_sq)
        inv_i = one / norm_i if norm_i > zero else zero
        b_i = points[i, d]
        powers_i = powers[i]
        s0_i = s0[i]
        s1_i = s1[i]
        k_sum = zero
        b_sum = zero
        g_sum = zero
        eK = zero  # the near pairs' bounds, summed with |c_j|
        eG = zero
        eB = zero
        eF = zero  # the short series' truncation weights
        eD = zero
        coef_F = zero  # sum |c_j| |F_j|, sum |c_j| r_j |D_j|, and their coefficient errors
        coef_D = zero
        err_F = zero
        err_D = zero
        n_near = 0
        n_fallback = 0
        for j in range(m):
            norm_sq = zero
            dot = zero
            for k in range(d):
                v = sources[j, k]
                norm_sq += v * v
                dot += points[i, k] * v
            norm_j = math.sqrt(norm_sq)
            inv_j = one / norm_j if norm_j > zero else zero
            b_j = sources[j, d]
            c_j = sources[j, d + 1]
            c = abs(c_j)
            coef_F += c * s_norms[j, 0]
            coef_D += c * norm_j * s_norms[j, 1]
            err_F += c * s_errors[j, 0]
            err_D += c * norm_j * s_errors[j, 1]
            rho = min(max(dot * inv_i * inv_j, -one), one)
            if abs(rho) > rho_threshold:
                kind, _ = series_near_pair(rho, i, j, norm_i, b_i, norm_j, b_j, p_coef, p_tails, p_norms, p_errors,
                                           p_diag, p_logs, s_coef, s_tails, s_norms, s_errors, s_logs, levels, tol,
                                           short_level, short_level, powers_i, pair)
                if kind == 2:
                    kappa, alpha, beta, gamma = series_conditional_pair(norm_i, b_i, norm_j, b_j, rho, activation_code,
                                                                        step, rules, s0_i, s1_i, grid, grid)
                    for e in range(4, 8):
                        pair[e] = tol
                    n_fallback += 1
                else:
                    kappa = pair[0]
                    alpha = pair[1]
                    beta = pair[2]
                    gamma = pair[3]
                eK += c * pair[4]
                eG += c * (pair[5] * norm_j + pair[6] * norm_i)
                eB += c * pair[7]
                n_near += 1
            else:
                kappa = zero
                alpha = zero
                beta = zero
                gamma = zero
                for q in range(short_degree, -1, -1):
                    F_j = s_coef[j, 0, q]
                    kappa = kappa * rho + p_coef[i, 0, q] * F_j
                    alpha = alpha * rho + p_coef[i, 1, q] * s_coef[j, 1, q]
                    beta = beta * rho + p_coef[i, 2, q] * F_j
                    gamma = gamma * rho + p_coef[i, 1, q] * F_j
                # |rho|^(L_short + 1) by repeated squaring (as the CPU's _powers)
                power = one
                base = abs(rho)
                e = short_degree + 1
                while e > 0:
                    if e & 1:
                        power *= base
                    e >>= 1
                    if e > 0:
                        base *= base
                eF += power * (c * s_tails[j, 0, short_level])
                eD += power * (c * norm_j * s_tails[j, 1, short_level])
            k_sum += c_j * kappa
            b_sum += c_j * beta
            g_sum += c_j * gamma
            weight = c_j * alpha
            for k in range(d):
                force[k] += weight * sources[j, k]
        K[i] = k_sum
        for k in range(d):
            G[i, k] = force[k] + b_sum * points[i, k]
        G[i, d] = g_sum
        tF = p_tails[i, 0, short_level]
        tD = p_tails[i, 1, short_level]
        tS = p_tails[i, 2, short_level]
        bound[i, 0] = tF * eF + eK + p_errors[i, 0] * coef_F + p_norms[i, 0] * err_F
        bound[i, 1] = (tD * eD + norm_i * tS * eF + eG + p_errors[i, 1] * coef_D + p_norms[i, 1] * err_D
                       + norm_i * (p_errors[i, 2] * coef_F + p_norms[i, 2] * err_F))
        bound[i, 2] = tD * eF + eB + p_errors[i, 1] * coef_F + p_norms[i, 1] * err_F
        counts[i, 0] = n_near
        counts[i, 1] = n_fallback

    return cuda.jit(kernel)


def _is_device(array):
    return hasattr(array, "copy_to_host")


def _device(array, scratch, key):
    """``array`` on the device: itself if it is there, else copied into a buffer of ``scratch``
    kept per key, shape and dtype (allocated once, reused by later calls)."""
    if _is_device(array):
        return array
    array = np.ascontiguousarray(array)
    full_key = ("series", key, array.shape, array.dtype.str)
    buffer = scratch.get(full_key)
    if buffer is None:
        buffer = scratch[full_key] = cuda.to_device(array)
    else:
        buffer.copy_to_device(array)
    return buffer


def _work(scratch, key, shape, dtype):
    full_key = ("series work", key, tuple(shape), np.dtype(dtype).str)
    buffer = scratch.get(full_key)
    if buffer is None:
        buffer = scratch[full_key] = cuda.device_array(shape, dtype=dtype)
    return buffer


def device_tables(tables, scratch=None, key="tables"):
    """A SeriesTables whose arrays are on the device (copied into ``scratch``'s buffers)."""
    scratch = {} if scratch is None else scratch
    return SeriesTables(*(_device(value, scratch, (key, name)) if isinstance(value, np.ndarray) else value
                          for name, value in zip(SeriesTables._fields, tables)))


def series_pair_field(points, sources, activation_code, point_tables, source_tables, rules, rho_threshold,
                      short_degree, tol, K, G, bound=None, scratch=None):
    """Pair sums by Hermite series (smooth activations, with bias), on the GPU.

    Same contract as ``meanfield.kernels.population_series.series_pair_field``, on device
    arrays: ``points``, ``sources``, ``K``, ``G`` and ``bound`` (optional, (n, 3)) are device
    arrays; the tables and ``rules`` may be host (copied to the device) or device ones.
    One thread per point; see the module docstring for what differs from the CPU kernel.

    Returns
    -------
    (int, int)
        Number of pairs with |rho| > rho*, and of those computed by quadrature.
    """
    check_device_arrays(points, sources, K, G)
    scratch = {} if scratch is None else scratch
    n, p = points.shape
    dtype = points.dtype
    if sources.dtype != dtype:
        raise ValueError(f"points and sources must share a dtype, got {dtype} and {sources.dtype}")
    if bound is None:
        bound = _work(scratch, "bound", (n, 3), dtype)
    if n == 0:
        return 0, 0
    scalar = dtype.type
    pt = device_tables(point_tables, scratch, "point tables")
    st = pt if source_tables is point_tables else device_tables(source_tables, scratch, "source tables")
    rules = InnerRules(*(_device(value, scratch, ("rules", name)) for name, value in zip(InnerRules._fields, rules)))
    degree = pt.coefficients.shape[2] - 1
    n_u = int(scalar(_series._U_MAX) / scalar(pt.step))
    powers = _work(scratch, "powers", (n, degree + 1), dtype)
    s0 = _work(scratch, "s0", (n, 2 * n_u + 1), dtype)
    s1 = _work(scratch, "s1", (n, 2 * n_u + 1), dtype)
    grid = _work(scratch, "grid", (0,), dtype)
    counts = _work(scratch, "counts", (n, 2), np.int64)
    _series_kernel(numba_type(dtype), p - 2)[blocks(n, THREADS_PER_BLOCK), THREADS_PER_BLOCK](
        points, sources, int(activation_code), pt.coefficients, pt.tails, pt.norms, pt.errors, pt.diagonal,
        pt.log_bounds, st.coefficients, st.tails, st.norms, st.errors, st.log_bounds, pt.levels, scalar(pt.step),
        rules.nodes, rules.weights, rules.sizes, rules.limits, scalar(rho_threshold), int(short_degree), scalar(tol),
        powers, s0, s1, grid, K, G, bound, counts)
    total = counts.copy_to_host().sum(axis=0)
    return int(total[0]), int(total[1])


def shared_tables(particle_sets, activation_code, tol=1e-10, max_degree=1024):
    """Tables of several particle sets with one rule, as ``population_series.shared_tables``
    (which builds them, on the host, from host copies of device sets); host SeriesTables."""
    host = [s.copy_to_host() if _is_device(s) else np.asarray(s) for s in particle_sets]
    return _series.shared_tables(host, activation_code, tol, max_degree)


def series_pair_sums(points, sources, activation_code, tol=1e-10, rho_threshold=None, max_degree=1024, tables=None,
                     *, out=None, host_arrays=None, scratch=None):
    """Pair sums K, G of ``points`` against ``sources`` by Hermite series, with an error bound.

    Same contract as ``meanfield.kernels.series_pair_sums`` on device arrays: the choices
    (rule, tables, rho*, short degree, the retry with tables for rho = 1) are the CPU's, made on
    the host from host copies, and the pair sums are :func:`series_pair_field` on the GPU.

    Parameters
    ----------
    points, sources : device arrays, shapes (n, d + 2) and (m, d + 2), float32 or float64
    activation_code, tol, rho_threshold, max_degree, tables
        As on the CPU (``tables``: host SeriesTables, e.g. from :func:`shared_tables`).
    out : (device array (n,), device array (n, d + 1)), optional
        Where to write K and G (default: new arrays).
    host_arrays : (ndarray, ndarray), optional
        Host copies of (points, sources) already at hand (the same object twice when the
        sources are the points); default: copied here.
    scratch : dict, optional
        Device buffers reused across calls (tables, work memory).

    Returns
    -------
    K : device array, shape (n,)
    G : device array, shape (n, d + 1)
    error_bound : SeriesErrorBound
        On the host, as on the CPU.
    """
    check_device_arrays(points, sources)
    same = sources is points
    if host_arrays is None:
        host_points = points.copy_to_host()
        host_arrays = (host_points, host_points if same else sources.copy_to_host())
    host_points, host_sources = host_arrays
    dtype = points.dtype
    if sources.dtype != dtype:
        raise ValueError(f"points and sources must share a dtype, got {dtype} and {sources.dtype}")
    n, p = points.shape
    K, G = out if out is not None else (cuda.device_array(n, dtype=dtype), cuda.device_array((n, p - 1), dtype=dtype))
    scratch = {} if scratch is None else scratch
    if n == 0 or sources.shape[0] == 0:
        K.copy_to_device(np.zeros(n, dtype=dtype))
        G.copy_to_device(np.zeros((n, p - 1), dtype=dtype))
        return K, G, SeriesErrorBound(np.zeros(n), np.zeros(n), 0, 0, 0.0, 0.0, 0.0, 0, 0)
    bound = _work(scratch, "bound", (n, 3), dtype)

    def field(point_tables, source_tables, rules, threshold, short_degree, tol):
        near, fallback = series_pair_field(points, sources, activation_code, point_tables, source_tables, rules,
                                           threshold, short_degree, tol, K, G, bound, scratch)
        return near, fallback, bound.copy_to_host()

    error = _series.planned_pair_sums(host_points, host_sources, same, activation_code, tol, rho_threshold, max_degree,
                                      tables, field)
    return K, G, error


def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T``
    and input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import int64

    M, A3, V = T[:, ::1], T[:, :, ::1], T[::1]
    return [
        ("series_pair_field", _series_kernel(T, d).py_func,
         (M, M, int64, A3, A3, M, M, A3, A3, A3, A3, M, M, A3, int64[::1], T, M, M, int64[::1], V, T, int64, T,
          M, M, M, V, V, M, M, int64[:, ::1])),
    ]
