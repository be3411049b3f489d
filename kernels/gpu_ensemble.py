"""CUDA twin of ``ensemble``: objective and velocity of many small networks at once.

One thread block per member (members are small: m, k, d up to a few tens), so that one launch
evaluates B members. In a block:

1. the norms of the member's particles and teacher neurons go to shared memory;
2. the pair table: one thread per pair (i, j) of a tile of rows i and every source j (the
   particles, then the teacher's neurons) computes the scalars of the pair,
   ``c_j kappa_ij``, ``c_j alpha_ij`` and ``c_j beta_ij`` (``ensemble._symmetric_pair``,
   compiled for the device from the CPU source), into shared memory;
3. the reductions, from the table: one thread per (row, particles or teacher) sums K_i and
   beta_i (K*_i, beta*_i), one thread per (row, coordinate t) sums G_i[t] and G*_i[t] and
   writes the velocity;
4. one thread sums the objective F over the rows.

Every sum is made by one thread over j = 0, 1, ... in order, with the operands of the CPU's
fused pass (whose row i also receives the terms of j = 0 ... m - 1 in order): the numbers do
not depend on the number of threads, on the tile of rows, or on the other members (member b
of a batch is bitwise the batch of that member alone), and they are the CPU kernel's to
rounding. They are not bitwise the CPU's on a GPU, which contracts products and sums into
fused multiply-adds; in numba's CUDA simulator (plain Python arithmetic) they happen to be.

Arrays may be device arrays or host arrays; a host input is copied to the device (in W's
dtype), a host output is filled when the call returns.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._gpu_launch import SHARED_BYTES, THREADS_PER_BLOCK, blocks, numba_type
from ._gpu_scalar import ordered_sums, symmetric_pair

__all__ = ["ensemble_rows", "gpu_closed_form_points_velocity", "gpu_ensemble_closed_form_evaluate",
           "gpu_ensemble_work_arrays", "gpu_member_sums_of_squares"]

# Lanes of the sums of squares: lane l sums the entries l, l + LANES, ... of a member, then a
# tree over the lanes in shared memory. Fixed (not the block's width), so that the sum's order
# is the same for any launch. A power of two.
LANES = 32


@functools.lru_cache(maxsize=None)
def _evaluate_kernel(T, d):
    """The ensemble kernel for floating type ``T`` and input dimension ``d`` (one block per member)."""

    def kernel(W, teacher, activation_code, output_scale, alpha, second_moment, train_readout, rows, values,
               velocity, K, G, beta, K_t, G_t, norms, teacher_norms):
        # Shared memory: the n source norms | 4 sums per row of the tile (K, beta, K*, beta*) |
        # the pair table, 3 scalars per (row of the tile, source).
        shared = cuda.shared.array(0, T)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        m = W.shape[1]
        n = m + teacher.shape[1]  # sources: the particles, then the teacher's neurons
        sums = n
        table = n + 4 * rows
        zero = T(0.0)
        s = output_scale
        inv_alpha = T(1.0) / alpha
        scale = -T(m) * s
        for j in range(tid, n, threads):
            acc = zero
            if j < m:
                for t in range(d):
                    acc += W[b, j, t] * W[b, j, t]
                norm = math.sqrt(acc)
                norms[b, j] = norm
            else:
                for t in range(d):
                    acc += teacher[b, j - m, t] * teacher[b, j - m, t]
                norm = math.sqrt(acc)
                teacher_norms[b, j - m] = norm
            shared[j] = norm
        cuda.syncthreads()
        for start in range(0, m, rows):
            count = min(rows, m - start)
            # The pair table of rows start ... start + count - 1.
            for e in range(tid, count * n, threads):
                r = e // n
                j = e - r * n
                i = start + r
                dot = zero
                if j < m:
                    for t in range(d):
                        dot += W[b, i, t] * W[b, j, t]
                    c_j = W[b, j, d + 1]
                else:
                    for t in range(d):
                        dot += W[b, i, t] * teacher[b, j - m, t]
                    c_j = teacher[b, j - m, d + 1]
                kappa, weight, beta_ij, _ = symmetric_pair(dot, shared[i], shared[j], activation_code)
                base = table + 3 * e
                shared[base] = c_j * kappa
                shared[base + 1] = c_j * weight
                shared[base + 2] = c_j * beta_ij
            cuda.syncthreads()
            # K_i, beta_i over the particles (part 0) and K*_i, beta*_i over the teacher (part 1).
            for e in range(tid, 2 * count, threads):
                r = e // 2
                part = e - 2 * r
                kappa_sum = zero
                beta_sum = zero
                for j in range(m if part == 1 else 0, n if part == 1 else m):
                    base = table + 3 * (r * n + j)
                    kappa_sum += shared[base]
                    beta_sum += shared[base + 2]
                shared[sums + 4 * r + 2 * part] = kappa_sum
                shared[sums + 4 * r + 2 * part + 1] = beta_sum
            cuda.syncthreads()
            # G_i[t], G*_i[t] and the velocity (t < d); the sums and the last two columns (t = d).
            for e in range(tid, count * (d + 1), threads):
                r = e // (d + 1)
                t = e - r * (d + 1)
                i = start + r
                c_i = W[b, i, d + 1]
                if t < d:
                    row = table + 3 * r * n + 1
                    g = zero
                    for j in range(m):
                        g += shared[row + 3 * j] * W[b, j, t]
                    g_t = zero
                    for j in range(m, n):
                        g_t += shared[row + 3 * j] * teacher[b, j - m, t]
                    g += shared[sums + 4 * r + 1] * W[b, i, t]
                    g_t += shared[sums + 4 * r + 3] * W[b, i, t]
                    G[b, i, t] = g
                    G_t[b, i, t] = g_t
                    factor = scale * c_i
                    velocity[b, i, t] = factor * (s * g - inv_alpha * g_t)
                else:
                    k_i = shared[sums + 4 * r]
                    k_t = shared[sums + 4 * r + 2]
                    K[b, i] = k_i
                    beta[b, i] = shared[sums + 4 * r + 1]
                    K_t[b, i] = k_t
                    velocity[b, i, d] = zero
                    velocity[b, i, d + 1] = scale * (s * k_i - inv_alpha * k_t) if train_readout else zero
            cuda.syncthreads()  # the next tile overwrites the table and the sums
        if tid == 0:
            self_sum = zero
            teacher_sum = zero
            for i in range(m):
                c_i = W[b, i, d + 1]
                self_sum += c_i * K[b, i]
                teacher_sum += c_i * K_t[b, i]
            values[b] = (second_moment[b] / (T(2.0) * alpha * alpha) - (s / alpha) * teacher_sum
                         + T(0.5) * s * s * self_sum)

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _points_kernel(T, d):
    """The field of one network at extra points, one thread per point (``ensemble._ordered_sums``
    compiled for the device), the m + k source norms in shared memory."""

    def kernel(W, teacher, points, activation_code, output_scale, alpha, train_readout, out):
        shared = cuda.shared.array(0, T)
        m = W.shape[0]
        k = teacher.shape[0]
        zero = T(0.0)
        for j in range(cuda.threadIdx.x, m + k, cuda.blockDim.x):
            acc = zero
            if j < m:
                for t in range(d):
                    acc += W[j, t] * W[j, t]
            else:
                for t in range(d):
                    acc += teacher[j - m, t] * teacher[j - m, t]
            shared[j] = math.sqrt(acc)
        cuda.syncthreads()
        i = cuda.grid(1)
        if i < points.shape[0]:
            G = cuda.local.array(d, T)
            G_t = cuda.local.array(d, T)
            acc = zero
            for t in range(d):
                G[t] = zero
                G_t[t] = zero
                acc += points[i, t] * points[i, t]
            norm_i = math.sqrt(acc)
            s = output_scale
            inv_alpha = T(1.0) / alpha
            scale = -T(m) * s
            K_i, beta_i = ordered_sums(points[i], norm_i, W, shared[:m], activation_code, G)
            K_ti, b_ti = ordered_sums(points[i], norm_i, teacher, shared[m:m + k], activation_code, G_t)
            factor = scale * points[i, d + 1]
            for t in range(d):
                g = G[t] + beta_i * points[i, t]
                g_t = G_t[t] + b_ti * points[i, t]
                out[i, t] = factor * (s * g - inv_alpha * g_t)
            out[i, d] = zero
            out[i, d + 1] = scale * (s * K_i - inv_alpha * K_ti) if train_readout else zero

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _squares_kernel(T):
    """sum_ij V[b, i, j]^2 of each member: one block per member, LANES partial sums, a tree."""

    def kernel(V, out):
        shared = cuda.shared.array(LANES, T)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        p = V.shape[2]
        n = V.shape[1] * p
        for lane in range(tid, LANES, threads):
            acc = T(0.0)
            for e in range(lane, n, LANES):
                i = e // p
                v = V[b, i, e - i * p]
                acc += v * v
            shared[lane] = acc
        cuda.syncthreads()
        width = LANES // 2
        while width > 0:
            for lane in range(tid, width, threads):
                shared[lane] += shared[lane + width]
            cuda.syncthreads()
            width //= 2
        if tid == 0:
            out[b] = shared[0]

    return cuda.jit(kernel)


def _is_device(array):
    return hasattr(array, "copy_to_host")


def _arrays(dtype, named, shapes, outputs):
    """({name: device array}, {name: host array to fill afterwards, or None}) of the arrays of
    ``named``, their shapes checked: a device array is itself (it must have ``dtype``); a host
    one is copied to the device in ``dtype``, or only allocated there if its name is in
    ``outputs``."""
    device, host = {}, {}
    for name, array in named.items():
        if not _is_device(array):
            array = np.asarray(array)
        if tuple(array.shape) != tuple(shapes[name]):
            raise ValueError(f"{name} must have shape {tuple(shapes[name])}, got {tuple(array.shape)}")
        if _is_device(array):
            if array.dtype != dtype:
                raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (that of W), got {array.dtype}")
            device[name], host[name] = array, None
        elif name in outputs:
            device[name], host[name] = cuda.device_array(array.shape, dtype), array
        else:
            device[name], host[name] = cuda.to_device(np.ascontiguousarray(array, dtype=dtype)), array
    return device, host


_EVALUATE_OUTPUTS = ("values", "velocity", "K", "G", "beta", "K_t", "G_t", "norms", "teacher_norms")


def _copy_back(device, host, names):
    for name in names:
        if host[name] is not None:
            host[name][...] = device[name].copy_to_host()


def ensemble_rows(m, k, itemsize, shared_bytes=None):
    """Rows of a member whose pair table fits in a block's shared memory (1 .. m).

    Parameters
    ----------
    m, k : int
        The member's width and teacher width.
    itemsize : int
        Bytes per number (4 or 8).
    shared_bytes : int, optional
        The budget (default ``SHARED_BYTES``).

    Returns
    -------
    int
        The rows of a tile: n + rows (3 n + 4) numbers fit, n = m + k.
    """
    budget = (SHARED_BYTES if shared_bytes is None else shared_bytes) // itemsize
    n = m + k
    rows = (budget - n) // (3 * n + 4)
    if rows < 1:
        raise ValueError(f"a member of width {m} with {k} teacher neurons does not fit in one block's shared memory "
                         f"({budget} numbers): use the CPU kernel or the tiled GPU kernels")
    return int(min(m, rows))


def gpu_ensemble_work_arrays(B, m, k, d, dtype):
    """Work arrays of :func:`gpu_ensemble_closed_form_evaluate` on the device, kept by the caller.

    Parameters
    ----------
    B, m, k, d : int
        Members, width, teacher width, input dimension.
    dtype : numpy dtype
        float32 or float64.

    Returns
    -------
    tuple of device arrays
        K (B, m), G (B, m, d), beta (B, m), K_t (B, m), G_t (B, m, d), norms (B, m),
        teacher_norms (B, k): after a call, the values the CPU kernel leaves in its work arrays
        (``ensemble.ensemble_work_arrays``).
    """
    numba_type(dtype)
    return (cuda.device_array((B, m), dtype), cuda.device_array((B, m, d), dtype), cuda.device_array((B, m), dtype),
            cuda.device_array((B, m), dtype), cuda.device_array((B, m, d), dtype), cuda.device_array((B, m), dtype),
            cuda.device_array((B, k), dtype))


def gpu_ensemble_closed_form_evaluate(W, teacher, activation_code, output_scale, alpha, second_moment,
                                      train_readout, values, velocity, K, G, beta, K_t, G_t, norms, teacher_norms):
    """Population objective and velocities of B bias-free networks in closed form (relu, erf,
    linear), squared loss, x ~ N(0, I_d), on the GPU: one thread block per member.

    Same contract as ``meanfield.kernels.ensemble_closed_form_evaluate``: for member b with
    particles w_i = (a_i, b_i, c_i) (biases ignored) and teacher neurons (t_j, 0, c*_j),

        F = E[y^2] / (2 alpha^2) - (s / alpha) sum_i c_i K*_i + (s^2 / 2) sum_i c_i K_i,
        K_i = sum_j c_j kappa(a_i, a_j),  K*_i = sum_j c*_j kappa(a_i, t_j),
        G_i = sum_j c_j grad_{a_i} kappa(a_i, a_j) = sum_j c_j (alpha_ij a_j + beta_ij a_i),
        v(w_i) = -m s [c_i (s G_i - G*_i / alpha), 0, s K_i - K*_i / alpha],

    the readout column 0 when ``train_readout`` is False. Each sum runs over j in order (see the
    module docstring): the numbers do not depend on the launch or on the other members.

    Parameters
    ----------
    W : array, shape (B, m, d + 2), float32 or float64
        The members' particles (device or host).
    teacher : array, shape (B, k, d + 2)
        Each member's teacher neurons (biases ignored).
    activation_code : int
        RELU, ERF or LINEAR.
    output_scale, alpha : float
        s and alpha of the model at width m.
    second_moment : array, shape (B,)
        E[y^2] of each member's labels (a host array is converted to W's dtype).
    train_readout : bool
    values : array, shape (B,), output
        F of each member.
    velocity : array, shape (B, m, d + 2), output
    K, G, beta, K_t, G_t, norms, teacher_norms : arrays
        Work arrays (:func:`gpu_ensemble_work_arrays`); on return they hold K_i, G_i (beta term
        included), beta_i = sum_j c_j beta_ij, K*_i, G*_i, |a_i| and |t_j|, as on the CPU.

    Raises
    ------
    ValueError
        A shape that does not match, or a member too large for one block's shared memory
        (:func:`ensemble_rows`).
    TypeError
        A dtype other than float32 or float64, or a device array of another dtype than W's.
    """
    dtype = W.dtype
    T = numba_type(dtype)
    if W.ndim != 3 or teacher.ndim != 3:
        raise ValueError(f"W and teacher must be (B, m, d + 2) and (B, k, d + 2), got {W.shape} and {teacher.shape}")
    B, m, p = W.shape
    k = teacher.shape[1]
    d = p - 2
    shapes = {"W": (B, m, p), "teacher": (B, k, p), "second_moment": (B,), "values": (B,), "velocity": (B, m, p),
              "K": (B, m), "G": (B, m, d), "beta": (B, m), "K_t": (B, m), "G_t": (B, m, d), "norms": (B, m),
              "teacher_norms": (B, k)}
    dev, host = _arrays(dtype, {"W": W, "teacher": teacher, "second_moment": second_moment, "values": values,
                                "velocity": velocity, "K": K, "G": G, "beta": beta, "K_t": K_t, "G_t": G_t,
                                "norms": norms, "teacher_norms": teacher_norms}, shapes, _EVALUATE_OUTPUTS)
    if B == 0:
        return
    if m == 0:
        raise ValueError("members need at least one particle")
    itemsize = np.dtype(dtype).itemsize
    rows = ensemble_rows(m, k, itemsize)
    n = m + k
    scalar = np.dtype(dtype).type
    _evaluate_kernel(T, d)[B, THREADS_PER_BLOCK, 0, (n + rows * (3 * n + 4)) * itemsize](
        dev["W"], dev["teacher"], int(activation_code), scalar(output_scale), scalar(alpha), dev["second_moment"],
        bool(train_readout), rows, dev["values"], dev["velocity"], dev["K"], dev["G"], dev["beta"], dev["K_t"],
        dev["G_t"], dev["norms"], dev["teacher_norms"])
    _copy_back(dev, host, _EVALUATE_OUTPUTS)


def gpu_closed_form_points_velocity(W, teacher, points, activation_code, output_scale, alpha, train_readout, out):
    """The velocity field of one network's measure at extra points (tracers), on the GPU.

    Same contract as ``meanfield.kernels.closed_form_points_velocity``: one thread per point
    sums over the particles j = 0 ... m - 1, then over the teacher's neurons, in order
    (``ensemble._ordered_sums`` compiled for the device), so a point equal to particle i gets
    the velocity :func:`gpu_ensemble_closed_form_evaluate` gives particle i (bitwise in the
    simulator; to the rounding of fused multiply-adds on a GPU).

    Parameters
    ----------
    W : array, shape (m, d + 2), float32 or float64
        The measure's particles (device or host).
    teacher : array, shape (k, d + 2)
    points : array, shape (n, d + 2)
    activation_code : int
        RELU, ERF or LINEAR.
    output_scale, alpha : float
    train_readout : bool
    out : array, shape (n, d + 2), output
    """
    dtype = W.dtype
    T = numba_type(dtype)
    if W.ndim != 2:
        raise ValueError(f"W must be (m, d + 2), got {W.shape}")
    m, p = W.shape
    n_points = points.shape[0]
    shapes = {"W": (m, p), "teacher": (teacher.shape[0], p), "points": (n_points, p), "out": (n_points, p)}
    dev, host = _arrays(dtype, {"W": W, "teacher": teacher, "points": points, "out": out}, shapes, ("out",))
    if n_points == 0:
        return
    sources = m + teacher.shape[0]
    itemsize = np.dtype(dtype).itemsize
    if sources * itemsize > SHARED_BYTES:
        raise ValueError(f"{sources} particles and teacher neurons do not fit in one block's shared memory")
    scalar = np.dtype(dtype).type
    _points_kernel(T, p - 2)[blocks(n_points), THREADS_PER_BLOCK, 0, max(1, sources) * itemsize](
        dev["W"], dev["teacher"], dev["points"], int(activation_code), scalar(output_scale), scalar(alpha),
        bool(train_readout), dev["out"])
    _copy_back(dev, host, ("out",))


def gpu_member_sums_of_squares(V, out):
    """sum_ij V[b, i, j]^2 of each member, on the GPU, in one order for any launch.

    One block per member: lane l of ``LANES`` sums the squares of the entries l, l + LANES, ...
    (row-major) in order, and the lanes are added by a fixed tree in shared memory. The order
    differs from the CPU's serial one (``meanfield.kernels.member_sums_of_squares``): the sums
    agree to rounding.

    Parameters
    ----------
    V : array, shape (B, m, p), float32 or float64
        Device or host.
    out : array, shape (B,), output
    """
    dtype = V.dtype
    T = numba_type(dtype)
    if V.ndim != 3:
        raise ValueError(f"V must be (B, m, p), got {V.shape}")
    dev, host = _arrays(dtype, {"V": V, "out": out}, {"V": V.shape, "out": (V.shape[0],)}, ("out",))
    if V.shape[0] == 0:
        return
    _squares_kernel(T)[V.shape[0], THREADS_PER_BLOCK](dev["V"], dev["out"])
    _copy_back(dev, host, ("out",))


def ptx_signatures(T, d):
    """(name, python function, argument types) of every kernel of this module for type ``T`` and
    input dimension ``d``, as the launchers call them (for ``numba.cuda.compile_ptx``)."""
    from numba import boolean, int64

    A, M, V = T[:, :, ::1], T[:, ::1], T[::1]
    return [
        ("ensemble_closed_form_evaluate", _evaluate_kernel(T, d).py_func,
         (A, A, int64, T, T, V, boolean, int64, V, A, M, A, M, M, A, M, M)),
        ("closed_form_points_velocity", _points_kernel(T, d).py_func, (M, M, M, int64, T, T, boolean, M)),
        ("member_sums_of_squares", _squares_kernel(T).py_func, (A, V)),
    ]
