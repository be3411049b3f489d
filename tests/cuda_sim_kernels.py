"""CUDA kernels and the CUDA backend, run in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1).

Run by tests/test_cuda.py in a subprocess with the simulator switched on (the variable is
read once per process). Every GPU kernel is compared with its CPU twin and with the numpy
references of tests/test_kernels.py: float64 to 1e-10 relative, float32 to 1e-4 (the closed
forms with biases against their CPU kernel: 1e-12 and 1e-5), on odd sizes (m = 19, N = 23,
d = 5) that cross the simulator's 8-thread blocks and shared-memory tiles with partial last
ones (kernels/_gpu_launch.py); the Hessians with biases and the Hermite series at d = 3 and
m = 5, 7 (their kernels run a pair's scalars through long Python code in the simulator); the
ensemble kernels (one block per member) at B = 3, m = 5, k = 3, d = 7 against the CPU
ensemble kernel (1e-12 and 1e-5) and the numpy closed forms.
"""
import json
import math
import os

import h5py
import numpy as np
import pytest
from numba import config, cuda
from test_kernels import assert_close_scaled, closed_case, make_data, ref_field, ref_grad_closed, ref_kappa_closed

import meanfield as mf
from meanfield import kernels
from meanfield.engine._cuda import CudaProblem, to_device
from meanfield.engine._problems import pair_velocity as cpu_pair_velocity
from meanfield.kernels import (
    gpu_ensemble,
    gpu_finite_data,
    gpu_population,
    gpu_population_bias_hessian,
    gpu_population_series,
    gpu_reductions,
    gpu_updates,
    population_series,
)
from meanfield.kernels.population_bias_hessian import (
    bias_closed_form_hessian,
    bias_closed_form_hessian_vector_product,
    bias_hessian_singular_particles,
)

assert config.ENABLE_CUDASIM, "run these tests with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda.py does)"

DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-10, np.float32: 1e-4}
M, N, D = 19, 23, 5


def dev(array):
    return cuda.to_device(np.ascontiguousarray(array))


# ---------------------------------------------------------------------------------------
# population pair field
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "linear"])
def test_closed_form_pair_field(act, dtype):
    """K and G of 19 points against 23 sources (three blocks, three tiles, the last ones partial)."""
    points, sources = closed_case(np.random.default_rng(1), n=M, m=N, d=D)
    points[5, :D] = 0.0  # a zero input weight (relu's degenerate branch)
    points = points.astype(dtype)
    sources = sources.astype(dtype)
    code = kernels.ACTIVATION_CODES[act]
    K_cpu, G_cpu = np.empty(M, dtype), np.empty((M, D + 1), dtype)
    kernels.closed_form_pair_field(points, sources, code, K_cpu, G_cpu)
    K, G = cuda.device_array(M, dtype), cuda.device_array((M, D + 1), dtype)
    gpu_population.closed_form_pair_field(dev(points), dev(sources), code, K, G)
    K, G = K.copy_to_host(), G.copy_to_host()
    assert K.dtype == dtype and G.dtype == dtype
    rtol = RTOL[dtype]
    assert_close_scaled(K, K_cpu, rtol)
    assert_close_scaled(G, G_cpu, rtol)
    P, S = points.astype(np.float64), sources.astype(np.float64)
    c = S[:, D + 1]
    K_ref = np.array([sum(c[j] * ref_kappa_closed(P[i, :D], S[j, :D], act) for j in range(N))
                      if (act != "relu" or np.any(P[i, :D])) else 0.0 for i in range(M)])
    G_ref = np.array([sum(c[j] * ref_grad_closed(P[i, :D], S[j, :D], act) for j in range(N))
                      if (act != "relu" or np.any(P[i, :D])) else np.zeros(D) for i in range(M)])
    assert_close_scaled(K, K_ref, max(rtol, 1e-9))
    assert_close_scaled(G[:, :D], G_ref, max(rtol, 1e-9))
    assert np.all(G[:, D] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_quadrature_pair_field(act, dtype):
    """Gauss-Hermite pair sums (Q = 3, with biases) of 13 points against 19 sources (three
    tiles), equal to the CPU kernel (tested against numpy in tests/test_kernels.py); the point
    equal to a source, the antiparallel one and a zero input weight take the degenerate
    branches."""
    points, sources = closed_case(np.random.default_rng(9), n=13, m=M, d=D)
    rng = np.random.default_rng(10)
    points[:, D] = 0.5 * rng.standard_normal(13)
    sources[:, D] = 0.5 * rng.standard_normal(M)
    points[1] = sources[4]
    points[5, :D] = 0.0
    points, sources = points.astype(dtype), sources.astype(dtype)
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    nodes, weights = nodes.astype(dtype), (weights / weights.sum()).astype(dtype)
    code = kernels.ACTIVATION_CODES[act]
    K_cpu, G_cpu = np.empty(13, dtype), np.empty((13, D + 1), dtype)
    kernels.quadrature_pair_field(points, sources, code, nodes, weights, K_cpu, G_cpu)
    K, G = cuda.device_array(13, dtype), cuda.device_array((13, D + 1), dtype)
    gpu_population.quadrature_pair_field(dev(points), dev(sources), code, dev(nodes), dev(weights), K, G)
    K, G = K.copy_to_host(), G.copy_to_host()
    assert_close_scaled(K, K_cpu, RTOL[dtype])
    assert_close_scaled(G, G_cpu, RTOL[dtype])


def bias_case(dtype, n=13, m=19):
    """Points and sources with biases, and the edge cases of the closed forms with biases.

    The degenerate directions are built from the dyadic vector u = (1, 2, -2, 0, 0) / 4
    (|u| = 3/4, every product and sum exact), so that rho is exactly +1 or -1 whatever the
    order of the dot products: the GPU sums a . a' in its own order and the CPU by BLAS, and
    near |rho| = 1 the Phi_2 in alpha moves like sqrt(1 - rho^2), so a one-ulp difference in
    rho would be a sqrt(ulp) difference in the sums, not a test of the kernel.
    """
    rng = np.random.default_rng(12)
    points = rng.standard_normal((n, D + 2))
    sources = rng.standard_normal((m, D + 2))
    points[:, :D] *= rng.uniform(0.3, 2.0, size=(n, 1)) / np.sqrt(D)
    sources[:, :D] *= rng.uniform(0.3, 2.0, size=(m, 1)) / np.sqrt(D)
    u = np.array([1.0, 2.0, -2.0, 0.0, 0.0]) / 4.0
    sources[4, :D], sources[4, D] = u, 0.3
    points[1] = sources[4]  # exactly duplicated particles: rho = 1, beta_i = beta_j (0 / 0 ratios)
    sources[6, :D], sources[6, D] = -2.0 * u, -0.4
    points[3, :D], points[3, D] = u, 1.1  # rho = -1 exactly
    points[4, :D], points[4, D] = 0.5 * u, -0.8  # rho = 1 with other biases (+-inf ratios)
    points[2, :D], points[2, D] = 0.0, 0.7  # a_i = 0: h_i = b_i is a constant (relu's gradient in a_i: Phi)
    points[5, :D], points[5, D] = 0.0, 0.0  # a_i = 0 and b_i = 0 (relu has no derivative: 0)
    sources[9, :D], sources[9, D] = 0.0, 0.6  # a_j = 0
    points[6, D], sources[7, D] = 5.0, -5.0  # |b| = 5
    points[7, :D], points[7, D] = 1e-3 * u, 5.0  # |beta| = 6667, clipped at 50
    return points.astype(dtype), sources.astype(dtype)


BIAS_RTOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "normal_cdf", "linear"])
def test_bias_pair_field(act, dtype):
    """The closed forms with biases: K and G (G[:, d] the bias derivatives) of 13 points against
    19 sources (two blocks of 8 threads, tiles of 8, 8 and 3 sources) equal the CPU kernel's
    (tested against quadrature and finite differences in tests/test_population_bias.py), at
    the degenerate cases of ``bias_case`` too. Measured worst error relative to the largest
    sum (2026-12-02): 2.2e-16 in float64, 1.7e-7 in float32."""
    points, sources = bias_case(dtype)
    n = len(points)
    code = kernels.ACTIVATION_CODES[act]
    K_cpu, G_cpu = np.empty(n, dtype), np.empty((n, D + 1), dtype)
    kernels.bias_pair_field(points, sources, code, K_cpu, G_cpu)
    K, G = cuda.device_array(n, dtype), cuda.device_array((n, D + 1), dtype)
    gpu_population.bias_pair_field(dev(points), dev(sources), code, K, G)
    K, G = K.copy_to_host(), G.copy_to_host()
    assert K.dtype == dtype and G.dtype == dtype
    assert np.all(np.isfinite(K)) and np.all(np.isfinite(G))
    rtol = BIAS_RTOL[dtype]
    assert_close_scaled(K, K_cpu, rtol)
    assert_close_scaled(G[:, :D], G_cpu[:, :D], rtol)
    assert_close_scaled(G[:, D], G_cpu[:, D], rtol)
    if act == "relu":
        assert np.all(G[5] == 0) and K[5] == 0  # a_i = 0, b_i = 0


def test_bias_pair_field_refuses_other_activations():
    points = sources = np.ones((3, D + 2))
    K, G = cuda.device_array(3), cuda.device_array((3, D + 1))
    with pytest.raises(ValueError, match="no closed form with biases"):
        gpu_population.bias_pair_field(dev(points), dev(sources), kernels.ACTIVATION_CODES["tanh"], K, G)


@pytest.mark.parametrize("bias,train_readout", [(False, True), (True, False)])
def test_pair_velocity(bias, train_readout):
    """The device assembly of the velocity equals meanfield.engine._problems.pair_velocity."""
    rng = np.random.default_rng(2)
    model = mf.Model(d=D, activation="relu", bias=bias, train_readout=train_readout)
    points = rng.standard_normal((M, D + 2))
    K_w, K_t = rng.standard_normal(M), rng.standard_normal(M)
    G_w, G_t = rng.standard_normal((M, D + 1)), rng.standard_normal((M, D + 1))
    expected = cpu_pair_velocity(model, points, 41, K_w, G_w, K_t, G_t, np.empty_like(points))
    out, energy = cuda.device_array((M, D + 2)), cuda.device_array(M)
    s, inv_alpha = model.output_scale(41), 1.0 / model.alpha_value(41)
    gpu_population.pair_velocity(dev(points), 41, s, inv_alpha, bias, train_readout, dev(K_w), dev(G_w),
                                 dev(K_t), dev(G_t), out, energy)
    assert_close_scaled(out.copy_to_host(), expected, 1e-12)
    c = points[:, D + 1]
    assert_close_scaled(energy.copy_to_host(), c * (0.5 * s * s * K_w - s * inv_alpha * K_t), 1e-12)


# ---------------------------------------------------------------------------------------
# Hessians with biases
# ---------------------------------------------------------------------------------------

HD = 3  # d of the Hessian tests: n_loc = 3 to 5 rows per particle


def hessian_state(name):
    """(W, teacher) in float64, d = 3, with the edge cases of the closed forms with biases.

    From the dyadic u = (1, 2, -2) / 4 (|u| = 3/4, products exact: rho exactly +-1 in any
    summation order). ``"m5"``: a particle duplicated, a = 0 with b = 0 (relu's singular
    point; smooth activations have a Hessian there), |a| = 1e-3 with b = -5 (|b / |a|| = 6667),
    |b| = 60, and a teacher equal to a particle. ``"m7"``: rho = -1 between particles, a = 0
    with b = 0.7, |b| = 5, correlations 1 - O(1e-14) and -1 + O(1e-12) (not exact), a teacher
    whose hyperplane coincides with a particle's (equal bias ratios) and one with |a| = 1e-3.
    """
    rng = np.random.default_rng(21)
    u = np.array([1.0, 2.0, -2.0]) / 4.0
    if name == "m5":
        W = rng.standard_normal((5, HD + 2))
        W[0, :HD], W[0, HD] = u, 0.3
        W[1] = W[0]
        W[2, :HD], W[2, HD] = 0.0, 0.0
        W[3, :HD], W[3, HD] = 1e-3 * u, -5.0
        W[4, HD] = 60.0
        teacher = rng.standard_normal((2, HD + 2))
        teacher[0, :HD + 1] = W[0, :HD + 1]
    else:
        W = rng.standard_normal((7, HD + 2))
        W[0, :HD], W[0, HD] = u, 0.3
        W[1, :HD], W[1, HD] = -2.0 * u, -0.4
        W[2, :HD], W[2, HD] = 0.0, 0.7
        W[3, HD] = 5.0
        W[5, :HD], W[5, HD] = W[4, :HD] + 1e-7 * rng.standard_normal(HD), W[4, HD]
        W[6, :HD], W[6, HD] = -W[4, :HD] + 1e-6 * rng.standard_normal(HD), 0.1
        teacher = rng.standard_normal((2, HD + 2))
        teacher[0, :HD], teacher[0, HD] = 2.0 * u, 0.6
        teacher[1, :HD], teacher[1, HD] = 1e-3 * u, 5.0
    return W, teacher


HESSIAN_SETTINGS = [(True, True), (False, True), (True, False)]  # (train_bias, train_readout)


@pytest.mark.parametrize("setting", HESSIAN_SETTINGS, ids=["bias,readout", "readout", "bias"])
@pytest.mark.parametrize("state", ["m5", "m7"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "normal_cdf", "linear"])
def test_bias_hessian_and_hessian_vector_product(act, dtype, state, setting):
    """The GPU Hessian, Hessian-vector product and singular particles of the closed forms with
    biases equal the CPU kernels' (tested against finite differences and mpmath in
    tests/test_population_bias_hessian.py), every row and entry, at the edge cases of
    ``hessian_state``; float32 on the device against the float64 CPU kernel at the same
    (float32-rounded) particles. Measured worst error relative to the largest entry
    (2026-12-03): 0 in float64 (the simulator computes the CPU's operations in the CPU's
    order), 2.6e-7 in float32."""
    train_bias, train_readout = setting
    W, teacher = hessian_state(state)
    W, teacher = W.astype(dtype), teacher.astype(dtype)
    W64, teacher64 = W.astype(np.float64), teacher.astype(np.float64)
    code = kernels.ACTIVATION_CODES[act]
    m = W.shape[0]
    n_var = m * (HD + train_bias + train_readout)
    args = (code, 0.37, 1.3, train_bias, train_readout)
    H_cpu = np.empty((n_var, n_var))
    count_cpu = bias_closed_form_hessian(W64, teacher64, *args, H_cpu)
    V = np.random.default_rng(22).standard_normal(W.shape)
    hv_cpu = np.empty_like(W64)
    bias_closed_form_hessian_vector_product(W64, teacher64, *args, V.astype(dtype).astype(np.float64), hv_cpu)
    H = cuda.device_array((n_var, n_var), dtype)
    count = gpu_population_bias_hessian.bias_closed_form_hessian(dev(W), dev(teacher), *args, H)
    hv = cuda.device_array(W.shape, dtype)
    count_hv = gpu_population_bias_hessian.bias_closed_form_hessian_vector_product(
        dev(W), dev(teacher), *args, dev(V.astype(dtype)), hv)
    H, hv = H.copy_to_host(), hv.copy_to_host()
    assert H.dtype == dtype and hv.dtype == dtype
    assert np.all(np.isfinite(H)) and np.all(np.isfinite(hv))
    rtol = RTOL[dtype]
    assert_close_scaled(H, H_cpu, rtol)
    assert_close_scaled(hv, hv_cpu, rtol)
    if not train_bias:
        assert np.all(hv[:, HD] == 0)
    if not train_readout:
        assert np.all(hv[:, HD + 1] == 0)
    singular = gpu_population_bias_hessian.bias_hessian_singular_particles(dev(W), code, train_readout)
    expected = bias_hessian_singular_particles(W64, code, train_readout)
    assert singular.dtype == np.int64 and np.array_equal(singular, expected)
    assert count == count_hv == count_cpu == len(expected)
    # the case is not vacuous: relu's particle at the origin is singular in "m5" (rows of 0)
    assert len(expected) == (1 if act == "relu" and state == "m5" else 0)
    # the CPU Hessian is symmetric to rounding; the GPU's rows are the CPU's rows, not a copy
    assert_close_scaled(H, H.T, 10 * rtol)


def test_bias_hessian_is_independent_of_the_launch_geometry(monkeypatch):
    """Every entry is written by one thread, summing in a fixed order: blocks of 3 or 5 threads
    (instead of 8) give bitwise the same Hessian and Hessian-vector product."""
    W, teacher = hessian_state("m7")
    args = (kernels.ACTIVATION_CODES["relu"], 0.37, 1.3, True, True)
    V = dev(np.random.default_rng(23).standard_normal(W.shape))
    results = []
    for threads in (8, 3, 5):
        monkeypatch.setattr(gpu_population_bias_hessian, "THREADS_PER_BLOCK", threads)
        n_var = W.shape[0] * (HD + 2)
        H, hv = cuda.device_array((n_var, n_var)), cuda.device_array(W.shape)
        gpu_population_bias_hessian.bias_closed_form_hessian(dev(W), dev(teacher), *args, H)
        gpu_population_bias_hessian.bias_closed_form_hessian_vector_product(dev(W), dev(teacher), *args, V, hv)
        results.append((H.copy_to_host(), hv.copy_to_host()))
    for H, hv in results[1:]:
        assert np.array_equal(H, results[0][0]) and np.array_equal(hv, results[0][1])


def test_bias_hessian_kernels_refuse_what_they_do_not_compute():
    W, teacher = hessian_state("m5")
    H = cuda.device_array((25, 25))
    with pytest.raises(ValueError, match="no closed form with biases"):
        gpu_population_bias_hessian.bias_closed_form_hessian(dev(W), dev(teacher), kernels.ACTIVATION_CODES["tanh"],
                                                             1.0, 1.0, True, True, H)
    with pytest.raises(ValueError, match="H must have shape"):
        gpu_population_bias_hessian.bias_closed_form_hessian(dev(W), dev(teacher), 0, 1.0, 1.0, True, False, H)
    with pytest.raises(TypeError, match="dtype"):
        gpu_population_bias_hessian.bias_closed_form_hessian(dev(W), dev(teacher.astype(np.float32)), 0, 1.0, 1.0,
                                                             True, True, H)
    with pytest.raises(TypeError, match="device arrays"):
        gpu_population_bias_hessian.bias_closed_form_hessian(W, dev(teacher), 0, 1.0, 1.0, True, True, H)


@pytest.mark.parametrize("act,scaling,bias,train_readout,dtype", [
    ("relu", "mean_field", True, True, "float64"), ("erf", "mean_field", False, True, "float32"),
    ("normal_cdf", "sum", True, False, "float64")])
def test_cuda_problem_hessian_matches_cpu(act, scaling, bias, train_readout, dtype):
    """CudaProblem.hessian, hessian_vector_product and hessian_singularities of a problem in closed
    form with biases run the GPU kernels (in float64, like the CPU problem, whatever the model's
    dtype) and equal PopulationProblem's; a bias-free problem still has no analytic Hessian on
    the device."""
    rng = np.random.default_rng(24)
    model = mf.Model(d=HD, activation=act, bias=bias, train_readout=train_readout, scaling=scaling, dtype=dtype)
    problem = mf.PopulationProblem(model, mf.Teacher.random(HD, 2, rng, act, bias=True))
    W = mf.initialize(model, m=5, rng=rng, init=mf.Init(b="gaussian") if bias else None)
    W[1] = W[0]
    if act == "relu":
        W[2, :HD + 1] = 0.0  # singular
    device_problem = CudaProblem(problem)
    assert device_problem.has_analytic_hessian and problem.has_analytic_hessian
    H, expected = device_problem.hessian(W), problem.hessian(W)
    assert H.dtype == np.float64 and H.shape == expected.shape
    assert_close_scaled(H, expected, 1e-12)
    V = rng.standard_normal(W.shape)
    hv, hv_expected = device_problem.hessian_vector_product(W, V), problem.hessian_vector_product(W, V)
    assert hv.dtype == np.float64
    assert_close_scaled(hv, hv_expected, 1e-12)
    assert np.array_equal(device_problem.hessian_singularities(W), problem.hessian_singularities(W))
    assert len(problem.hessian_singularities(W)) == (1 if act == "relu" else 0)
    bias_free = CudaProblem(mf.PopulationProblem(mf.Model(d=HD, activation="relu"), mf.Teacher.orthonormal(HD, 2)))
    assert not bias_free.has_analytic_hessian
    # The bias-free closed form has no GPU Hessian (issue 14's note): the backend must say so
    # (NotImplementedError, so landscape falls back to finite differences), not return zeros.
    with pytest.raises(NotImplementedError):
        bias_free.hessian(W[:, :])


# ---------------------------------------------------------------------------------------
# Hermite series (smooth activations)
# ---------------------------------------------------------------------------------------

SMOOTH = ["tanh", "sigmoid", "softplus", "gelu"]


def series_state():
    """(W, teacher), float64, d = 3, m = 7: a duplicated particle (the diagonal formula),
    rho = -1 exactly (dyadic u), a = 0 (rho = 0), |b| = 5, correlations 1 - O(1e-14) and
    -1 + O(1e-12) (long series), the rest generic with |a| up to 2."""
    rng = np.random.default_rng(31)
    u = np.array([1.0, 2.0, -2.0]) / 4.0
    W = rng.standard_normal((7, HD + 2))
    W[:, :HD] *= rng.uniform(0.5, 2.0, size=(7, 1)) / np.sqrt(HD)
    W[0, :HD], W[0, HD] = u, 0.3
    W[1] = W[0]
    W[2, :HD], W[2, HD] = -2.0 * u, -0.4
    W[3, :HD], W[3, HD] = 0.0, 0.7
    W[4, HD] = 5.0
    W[5, :HD], W[5, HD] = W[4, :HD] + 1e-7 * rng.standard_normal(HD), W[4, HD]
    W[6, :HD], W[6, HD] = -W[4, :HD] + 1e-6 * rng.standard_normal(HD), 0.1
    teacher = rng.standard_normal((2, HD + 2))
    return W, teacher


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", SMOOTH)
def test_series_pair_sums(act, dtype):
    """The Hermite-series pair sums on the GPU (gpu_population_series.series_pair_sums: the CPU's
    choices and tables, the pairs on the device) equal the CPU kernel's (tested against scipy
    quadrature and finite differences in tests/test_population_series.py), for the particles
    against themselves (the diagonal, rho = +-1 and the near pairs of ``series_state``) and
    against a teacher with shared tables; the error bounds and the pair counts agree too.
    Measured worst error relative to the largest sum (2026-12-03): 1.2e-15 in float64, 4.1e-7 in
    float32 (against the float32 CPU kernel; 3.7e-7 against the float64 one)."""
    W, teacher = series_state()
    W, teacher = W.astype(dtype), teacher.astype(dtype)
    code = kernels.ACTIVATION_CODES[act]
    rtol = RTOL[dtype]
    K_cpu, G_cpu, bound_cpu = kernels.series_pair_sums(W, W, code, 1e-10)
    dW = dev(W)
    K, G, bound = gpu_population_series.series_pair_sums(dW, dW, code, 1e-10)
    K, G = K.copy_to_host(), G.copy_to_host()
    assert K.dtype == dtype and G.dtype == dtype and np.all(np.isfinite(G))
    assert_close_scaled(K, K_cpu, rtol)
    assert_close_scaled(G, G_cpu, rtol)
    assert bound.near_pairs == bound_cpu.near_pairs > 0 and bound.fallback_pairs == bound_cpu.fallback_pairs
    assert (bound.short_degree, bound.table_degree) == (bound_cpu.short_degree, bound_cpu.table_degree)
    np.testing.assert_allclose(bound.G, bound_cpu.G, rtol=1e-6)
    np.testing.assert_allclose(bound.K, bound_cpu.K, rtol=1e-6)
    tables = gpu_population_series.shared_tables((dW, dev(teacher)), code, 1e-10)
    K_cpu, G_cpu, _ = kernels.series_pair_sums(W, teacher, code, 1e-10, tables=tuple(tables))
    K, G, _ = gpu_population_series.series_pair_sums(dW, dev(teacher), code, 1e-10, tables=tuple(tables))
    assert_close_scaled(K.copy_to_host(), K_cpu, rtol)
    assert_close_scaled(G.copy_to_host(), G_cpu, rtol)


def fallback_case(dtype):
    """3 points, 4 sources, tables of degree 8 and rho* = 0.3: the aligned pairs (rho 0.9 to
    0.999, and an exact duplicate) need more than degree 8 and take the rotated-basis quadrature."""
    rng = np.random.default_rng(32)
    sources = rng.standard_normal((4, HD + 2))
    sources[:, :HD] *= 0.8 / np.linalg.norm(sources[:, :HD], axis=1, keepdims=True)
    points = sources[:3].copy()
    points[0, :HD] += 0.05 * rng.standard_normal(HD)
    points[1, :HD] += 0.4 * rng.standard_normal(HD)
    points[2, HD] += 0.3
    points, sources = points.astype(dtype), sources.astype(dtype)
    step = population_series.quadrature_step(1.0, 8)
    return (points, sources, population_series.series_tables(points, 0, 8, step),
            population_series.series_tables(sources, 0, 8, step))


@pytest.mark.parametrize("act,dtype", [("tanh", np.float64), ("gelu", np.float64), ("sigmoid", np.float32)])
def test_series_pair_field_rotated_basis_quadrature(act, dtype):
    """Pairs beyond the tables' degree take the rotated-basis quadrature on the device too
    (Gauss-Hermite or the direct trapezoid rule where the CPU may take its shared-grid
    convolution, all accurate to ~1e-12): sums, bounds and counts equal the CPU's."""
    points, sources, point_tables, source_tables = fallback_case(dtype)
    code = kernels.ACTIVATION_CODES[act]
    point_tables = population_series.series_tables(points, code, 8, point_tables.step)
    source_tables = population_series.series_tables(sources, code, 8, source_tables.step)
    rules = population_series.inner_rules(dtype)
    n = len(points)
    K_cpu, G_cpu, B_cpu = np.empty(n, dtype), np.empty((n, HD + 1), dtype), np.empty((n, 3), dtype)
    counts_cpu = population_series.series_pair_field(points, sources, code, point_tables, source_tables, rules, 0.3,
                                                     8, 1e-10, K_cpu, G_cpu, B_cpu)
    K, G, B = cuda.device_array(n, dtype), cuda.device_array((n, HD + 1), dtype), cuda.device_array((n, 3), dtype)
    counts = gpu_population_series.series_pair_field(dev(points), dev(sources), code, point_tables, source_tables,
                                                     rules, 0.3, 8, 1e-10, K, G, B)
    assert counts == counts_cpu and counts[1] >= 3, counts
    rtol = RTOL[dtype]
    assert_close_scaled(K.copy_to_host(), K_cpu, rtol)
    assert_close_scaled(G.copy_to_host(), G_cpu, rtol)
    assert_close_scaled(B.copy_to_host(), B_cpu, 1e-6)


def test_series_is_independent_of_the_launch_geometry(monkeypatch):
    """Each pair's terms depend on the pair only and each point's sums run over the sources in
    order: blocks of 3 or 5 threads give bitwise the sums of blocks of 8."""
    W, _ = series_state()
    dW = dev(W)
    code = kernels.ACTIVATION_CODES["tanh"]
    results = []
    for threads in (8, 3, 5):
        monkeypatch.setattr(gpu_population_series, "THREADS_PER_BLOCK", threads)
        K, G, bound = gpu_population_series.series_pair_sums(dW, dW, code, 1e-10)
        results.append((K.copy_to_host(), G.copy_to_host(), bound.G))
    for K, G, bound in results[1:]:
        assert np.array_equal(K, results[0][0]) and np.array_equal(G, results[0][1])
        assert np.array_equal(bound, results[0][2])


@pytest.mark.parametrize("act,dtype", [("tanh", "float64"), ("softplus", "float32")])
def test_cuda_problem_series_matches_cpu(act, dtype):
    """method = "series" runs on the device (it was refused before): value, velocity (bias
    column included), tracer velocities and the velocity's error bound (``last_error_bound``,
    ``describe()``) equal the CPU problem's, then three gradient steps as on the CPU."""
    rng = np.random.default_rng(33)
    model = mf.Model(d=HD, activation=act, bias=True, dtype=dtype)
    problem = mf.PopulationProblem(model, mf.Teacher.random(HD, 2, rng, act, bias=True))
    assert problem.method == "series"
    W0 = mf.initialize(model, m=7, rng=rng, init=mf.Init(b="gaussian"))
    W = W0.copy()
    W[1] = W[0]
    tracers = np.ascontiguousarray(W[:2] + np.asarray(0.01, W.dtype))
    device_problem = CudaProblem(problem)
    evaluation = device_problem.evaluate(W, tracers)
    bound = problem.last_error_bound
    described = device_problem.describe()
    expected = problem.evaluate(W, tracers)
    rtol = RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(evaluation.value, expected.value, rtol=rtol)
    assert evaluation.velocity.dtype == np.dtype(dtype)
    assert_close_scaled(evaluation.velocity, expected.velocity, rtol)
    assert_close_scaled(evaluation.points_velocity, expected.points_velocity, rtol)
    assert np.abs(evaluation.velocity[:, HD]).max() > 0
    assert 0 < bound and math.isclose(bound, problem.last_error_bound, rel_tol=1e-6)
    assert "Hermite" in described and "last evaluation" in described
    # the float64 CPU problem at the same particles: the float32 device sums are accurate too
    model64 = mf.Model(d=HD, activation=act, bias=True)
    reference = mf.PopulationProblem(model64, problem.teacher).evaluate(W.astype(np.float64))
    assert_close_scaled(evaluation.velocity, reference.velocity, 1e-4)
    integrator = mf.gradient_descent(problem, 0.3)
    cpu = mf.run(problem, integrator, W0, 0.9, times=[0, 0.9])
    gpu = mf.run(*to_device(problem, integrator), W0, 0.9, times=[0, 0.9])
    np.testing.assert_allclose(gpu.risk, cpu.risk, rtol=rtol)
    assert_close_scaled(gpu.W, cpu.W, rtol)


# ---------------------------------------------------------------------------------------
# finite data
# ---------------------------------------------------------------------------------------

# Every activation (a new one in kernels/_scalar.py is picked up here) with every loss in
# turn, both dtypes, bias / readout on and off, mean-field and sum scalings, several alphas.
FIELD_CASES = [
    (act, ("squared", "logistic", "exponential")[k % 3], ("mean", "sum")[k % 2 if k < 2 else (k // 2) % 2],
     (1.0, 2.0, 10.0)[k % 3], k % 4 != 0, k % 3 != 2, DTYPES[k % 2])
    for k, act in enumerate(kernels.ACTIVATION_CODES)
]


@pytest.mark.parametrize("act,loss,s_mode,alpha,bias,train_readout,dtype", FIELD_CASES)
def test_finite_data_field(act, loss, s_mode, alpha, bias, train_readout, dtype):
    rng = np.random.default_rng(3)
    W, X, y, points = make_data(rng, M, N, D, loss, with_bias=bias)
    W, X, y, points = (np.ascontiguousarray(a, dtype=dtype) for a in (W, X, y, points))
    s = 1.0 / M if s_mode == "mean" else 1.0
    args = (kernels.ACTIVATION_CODES[act], kernels.LOSS_CODES[loss], s, alpha, bias, train_readout, 16)
    v_cpu, pv_cpu = np.empty_like(W), np.empty_like(points)
    F_cpu = kernels.finite_data_field(W, X, y, points, *args, v_cpu, pv_cpu)
    v, pv = cuda.device_array_like(W), cuda.device_array_like(points)
    F = gpu_finite_data.finite_data_field(dev(W), dev(X), dev(y), dev(points), *args, v, pv)
    v, pv = v.copy_to_host(), pv.copy_to_host()
    rtol = RTOL[dtype]
    assert np.asarray(F).dtype == dtype
    F_ref, v_ref, pv_ref = ref_field(W, X, y, points, act, loss, s, alpha, bias, train_readout)
    for expected_F, expected_v, expected_pv in ((F_cpu, v_cpu, pv_cpu), (F_ref, v_ref, pv_ref)):
        np.testing.assert_allclose(float(F), float(expected_F), rtol=rtol)
        assert_close_scaled(v, expected_v, rtol)
        assert_close_scaled(pv, expected_pv, rtol)
    if not bias:
        assert np.all(v[:, D] == 0)
    if not train_readout:
        assert np.all(v[:, D + 1] == 0)


def test_finite_data_field_without_points():
    rng = np.random.default_rng(4)
    W, X, y, _ = make_data(rng, M, N, D, "squared")
    empty = np.empty((0, D + 2))
    v, pv = cuda.device_array_like(W), cuda.device_array((0, D + 2))
    F = gpu_finite_data.finite_data_field(dev(W), dev(X), dev(y), dev(empty), 0, 0, 1 / M, 1.0, True, True, 1000,
                                          v, pv)
    F_ref, v_ref, _ = ref_field(W, X, y, empty, "relu", "squared", 1 / M, 1.0, True, True)
    np.testing.assert_allclose(F, F_ref, rtol=1e-10)
    assert_close_scaled(v.copy_to_host(), v_ref, 1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_network_output(dtype):
    rng = np.random.default_rng(5)
    W, X, _, _ = make_data(rng, M, N, D, "squared")
    W, X = W.astype(dtype), X.astype(dtype)
    expected = np.empty(N, dtype)
    kernels.network_output(W, X, kernels.ACTIVATION_CODES["tanh"], 1 / M, 16, expected)
    out = cuda.device_array(N, dtype)
    gpu_finite_data.network_output(dev(W), dev(X), kernels.ACTIVATION_CODES["tanh"], 1 / M, 16, out)
    assert_close_scaled(out.copy_to_host(), expected, RTOL[dtype])


# ---------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("size", [1, 19, 101])  # 101 > 8 blocks x 8 threads: the grid stride
def test_sums(size, dtype):
    x = np.random.default_rng(size).standard_normal(size).astype(dtype)
    np.testing.assert_allclose(gpu_reductions.device_sum(dev(x)), x.astype(np.float64).sum(),
                               rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(x).sum())
    np.testing.assert_allclose(gpu_reductions.sum_of_squares(dev(x)), (x.astype(np.float64) ** 2).sum(),
                               rtol=RTOL[dtype])
    W = x[: (size // 7) * 7].reshape(-1, 7) if size >= 7 else x.reshape(1, -1)
    np.testing.assert_allclose(gpu_reductions.sum_of_squares(dev(W)), (W.astype(np.float64) ** 2).sum(),
                               rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_all_finite(dtype):
    W = np.random.default_rng(6).standard_normal((M, D + 2)).astype(dtype)
    assert gpu_reductions.all_finite(dev(W))
    for bad in (np.nan, np.inf, -np.inf):
        for index in [(0, 0), (17, 3), (M - 1, D + 1)]:
            B = W.copy()
            B[index] = bad
            assert not gpu_reductions.all_finite(dev(B)), (bad, index)


# ---------------------------------------------------------------------------------------
# updates
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_euler_and_heavy_ball(dtype):
    rng = np.random.default_rng(7)
    W, V = rng.standard_normal((M, D + 2)).astype(dtype), rng.standard_normal((M, D + 2)).astype(dtype)
    dW = dev(W)
    gpu_updates.euler_update(dW, dev(V), 0.37)
    kernels.euler_update(W, V, 0.37)
    assert_close_scaled(dW.copy_to_host(), W, RTOL[dtype] * 1e-3)
    buf, dbuf = np.zeros_like(W), dev(np.zeros_like(W))
    for _ in range(3):
        V = rng.standard_normal(W.shape).astype(dtype)
        kernels.heavy_ball_update(W, V, buf, 0.2, 0.9)
        gpu_updates.heavy_ball_update(dW, dev(V), dbuf, 0.2, 0.9)
    assert_close_scaled(dW.copy_to_host(), W, RTOL[dtype] * 1e-3)
    assert_close_scaled(dbuf.copy_to_host(), buf, RTOL[dtype] * 1e-3)


TRAINABLE = np.array([True, True, False, True, True, True, False])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_heavy_ball_with_decay(dtype):
    """Three decayed heavy-ball steps (lambda = 0.3, large weights up to 50) against the CPU kernel;
    the frozen columns follow the plain heavy ball exactly (no decay)."""
    rng = np.random.default_rng(9)
    W = (50.0 * rng.standard_normal((M, 7))).astype(dtype)
    dW, buf, dbuf = dev(W), np.zeros_like(W), dev(np.zeros_like(W))
    plain, plain_buf = W.copy(), np.zeros_like(W)
    for _ in range(3):
        V = rng.standard_normal(W.shape).astype(dtype)
        kernels.heavy_ball_decay_update(W, V, buf, 0.2, 0.9, 0.3, TRAINABLE)
        kernels.heavy_ball_update(plain, V, plain_buf, 0.2, 0.9)
        gpu_updates.heavy_ball_decay_update(dW, dev(V), dbuf, 0.2, 0.9, 0.3, dev(TRAINABLE))
    out = dW.copy_to_host()
    assert_close_scaled(out, W, RTOL[dtype] * 1e-3)
    assert_close_scaled(dbuf.copy_to_host(), buf, RTOL[dtype] * 1e-3)
    assert np.array_equal(out[:, ~TRAINABLE], plain[:, ~TRAINABLE])
    assert np.abs(out[:, TRAINABLE] - plain[:, TRAINABLE]).max() > 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_langevin_update_without_noise(dtype):
    rng = np.random.default_rng(8)
    W, V = rng.standard_normal((M, 7)).astype(dtype), rng.standard_normal((M, 7)).astype(dtype)
    dW = dev(W)
    gpu_updates.langevin_update(dW, dev(V), None, 0.05, 0.3, 0.0, dev(TRAINABLE))
    kernels.langevin_update(W, V, np.zeros_like(W), 0.05, 0.3, 0.0, TRAINABLE)
    out = dW.copy_to_host()
    assert_close_scaled(out, W, RTOL[dtype] * 1e-3)
    assert np.array_equal(out[:, ~TRAINABLE], W[:, ~TRAINABLE])
    with pytest.raises(ValueError):
        gpu_updates.langevin_update(dW, dev(V), None, 0.05, 0.3, 0.1, dev(TRAINABLE))


def noise_draw(dtype, seed, rows=400, steps_before=0):
    """One Langevin step from W = 0, v = 0, lambda = 0, noise_scale = 1: W becomes xi."""
    states = gpu_updates.create_noise_states(rows, seed)
    trainable = dev(TRAINABLE)
    W = dev(np.zeros((rows, 7), dtype))
    for _ in range(steps_before):
        gpu_updates.langevin_update(W, W, states, 1.0, 0.0, 1.0, trainable)
        W.copy_to_device(np.zeros((rows, 7), dtype))
    gpu_updates.langevin_update(W, W, states, 1.0, 0.0, 1.0, trainable)
    return W.copy_to_host(), states


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_langevin_noise_is_standard_normal_and_seeded(dtype):
    """400 rows x 5 trainable columns = 2000 draws: mean, variance and P(|xi| < 1) of N(0, 1)
    within 4 standard errors; the same seed gives the same draws, another seed others."""
    xi, _ = noise_draw(dtype, seed=11)
    assert xi.dtype == dtype
    assert np.all(xi[:, ~TRAINABLE] == 0)
    z = xi[:, TRAINABLE].astype(np.float64).ravel()
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    p = math.erf(1 / math.sqrt(2))
    assert abs(np.mean(np.abs(z) < 1) - p) < 4 * math.sqrt(p * (1 - p) / n)
    # independent columns and rows: the lag-one correlation of the draws is small
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4 / math.sqrt(n)
    again, _ = noise_draw(dtype, seed=11)
    assert np.array_equal(again, xi)
    other, _ = noise_draw(dtype, seed=12)
    assert not np.array_equal(other, xi)


def test_advance_noise_states_skips_whole_steps():
    """Advancing the generators by two steps' draws gives the third step's noise."""
    third, _ = noise_draw(np.float64, seed=5, rows=40, steps_before=2)
    states = gpu_updates.create_noise_states(40, 5)
    gpu_updates.advance_noise_states(states, 2, int(TRAINABLE.sum()))
    W = dev(np.zeros((40, 7)))
    gpu_updates.langevin_update(W, W, states, 1.0, 0.0, 1.0, dev(TRAINABLE))
    assert np.array_equal(W.copy_to_host(), third)


# ---------------------------------------------------------------------------------------
# ensembles of small networks (kernels.gpu_ensemble)
# ---------------------------------------------------------------------------------------

EB, EM, EK, ED = 3, 5, 3, 7  # members, width, teacher width, input dimension
ENSEMBLE_RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def ensemble_case(dtype):
    """(W, teacher, second_moment) of 3 members at the closed forms' weak points.

    Member 0: a duplicated particle, an antipodal one, a parallel one, a zero particle, and
    teacher neurons equal and opposite to a particle. The degenerate directions are multiples of
    the dyadic u = (1, 2, -2, 0, ...) / 4 (|u| = 3/4, every product and sum exact), so that the
    cosines are exactly +1 or -1 whatever the order of the dot products (near |cos| = 1 the
    sine moves like the square root of a rounding error). Member 1: weights of norm 500 to
    2000 (one of them 1024 u, parallel to the particle u of norm 3/4). Member 2: generic.
    Signed readouts everywhere.
    """
    rng = np.random.default_rng(41)
    u = np.zeros(ED)
    u[:3] = np.array([1.0, 2.0, -2.0]) / 4.0
    W = rng.standard_normal((EB, EM, ED + 2)) / np.sqrt(ED)
    W[:, :, ED] = 0.0
    W[:, :, ED + 1] = rng.choice([-1.5, 0.7, 1.0], (EB, EM))
    teacher = rng.standard_normal((EB, EK, ED + 2)) / np.sqrt(ED)
    teacher[:, :, ED] = 0.0
    W[0, 0, :ED] = u
    W[0, 1, :ED] = u  # duplicated: cos = 1
    W[0, 2, :ED] = -2.0 * u  # antipodal: cos = -1
    W[0, 3, :ED] = 0.5 * u  # parallel
    W[0, 4, :ED] = 0.0  # zero particle
    teacher[0, 0, :ED] = u
    teacher[0, 1, :ED] = -u
    W[1, :, :ED] *= rng.uniform(500.0, 2000.0, (EM, 1)) / np.linalg.norm(W[1, :, :ED], axis=1, keepdims=True)
    W[1, 0, :ED] = 1024.0 * u
    W[1, 1, :ED] = u
    second_moment = rng.uniform(0.5, 2.0, EB)
    return W.astype(dtype), teacher.astype(dtype), second_moment.astype(dtype)


def cpu_ensemble(W, teacher, second_moment, code, s, alpha, train_readout):
    """values, velocity and work arrays of the CPU kernel (kernels.ensemble)."""
    B, m, p = W.shape
    values, velocity = np.empty(B, W.dtype), np.empty_like(W)
    work = kernels.ensemble_work_arrays(B, m, teacher.shape[1], p - 2, W.dtype)
    kernels.ensemble_closed_form_evaluate(W, teacher, code, s, alpha, second_moment, train_readout, values, velocity,
                                          *work)
    return values, velocity, work


def gpu_ensemble_call(W, teacher, second_moment, code, s, alpha, train_readout):
    """The same on the GPU, every argument a device array; results copied to the host."""
    B, m, p = W.shape
    values, velocity = cuda.device_array(B, W.dtype), cuda.device_array(W.shape, W.dtype)
    work = gpu_ensemble.gpu_ensemble_work_arrays(B, m, teacher.shape[1], p - 2, W.dtype)
    gpu_ensemble.gpu_ensemble_closed_form_evaluate(dev(W), dev(teacher), code, s, alpha, dev(second_moment),
                                                   train_readout, values, velocity, *work)
    return values.copy_to_host(), velocity.copy_to_host(), [w.copy_to_host() for w in work]


def closed_sums(a, sources, act):
    """sum_j c_j kappa(a, s_j) and sum_j c_j grad_a kappa(a, s_j) from numpy (tests/test_kernels.py),
    with relu's convention at zero vectors (both 0)."""
    d = len(a)
    K, G = 0.0, np.zeros(d)
    for source in sources:
        if act == "relu" and (not np.any(a) or not np.any(source[:d])):
            continue
        K += source[d + 1] * ref_kappa_closed(a, source[:d], act)
        G += source[d + 1] * ref_grad_closed(a, source[:d], act)
    return K, G


@pytest.mark.parametrize("train_readout", [True, False], ids=["readout", "frozen"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "linear"])
def test_ensemble_closed_form_evaluate(act, dtype, train_readout):
    """Objective, velocity and work arrays (K, G, beta, K*, G*, norms) of 3 members on the GPU
    equal the CPU kernel's (kernels.ensemble, tested against the tiled kernels in
    tests/test_ensemble.py) to 1e-12 (float64) and 1e-5 (float32, both kernels in float32),
    relative to each array's largest entry; and the numpy closed forms (float64, on the same
    inputs) to 1e-10 and 1e-3. Measured (simulator): float64 bitwise equal to the CPU kernel,
    float32 within 7e-8 of the float32 CPU kernel. The float32 kernels themselves are 1.4e-4
    from float64 (beta, erf): the pair of a particle of norm ~1e3 with itself has
    q = |a|^2 / (1 + |a|^2) = 1 - 1e-6, and 1 - q^2 keeps 3 digits of float32's 7."""
    W, teacher, second_moment = ensemble_case(dtype)
    code = kernels.ACTIVATION_CODES[act]
    s, alpha = 0.37, 1.3
    values, velocity, work = gpu_ensemble_call(W, teacher, second_moment, code, s, alpha, train_readout)
    cpu_values, cpu_velocity, cpu_work = cpu_ensemble(W, teacher, second_moment, code, s, alpha, train_readout)
    assert values.dtype == dtype and velocity.dtype == dtype
    rtol = ENSEMBLE_RTOL[dtype]
    assert_close_scaled(values, cpu_values, rtol)
    assert_close_scaled(velocity, cpu_velocity, rtol)
    for name, got, expected in zip(("K", "G", "beta", "K_t", "G_t", "norms", "teacher_norms"), work, cpu_work):
        assert_close_scaled(got, expected, rtol, name)
    assert np.all(velocity[:, :, ED] == 0)
    assert np.all(velocity[:, :, ED + 1] == 0) != train_readout
    # The closed forms from numpy, member by member, through the formulas of F and v.
    ref_rtol = 1e-10 if dtype == np.float64 else 1e-3
    W64, teacher64 = W.astype(np.float64), teacher.astype(np.float64)
    for b in range(EB):
        sums = [closed_sums(W64[b, i, :ED], W64[b], act) for i in range(EM)]
        sums_t = [closed_sums(W64[b, i, :ED], teacher64[b], act) for i in range(EM)]
        K, G = np.array([x[0] for x in sums]), np.array([x[1] for x in sums])
        K_t, G_t = np.array([x[0] for x in sums_t]), np.array([x[1] for x in sums_t])
        c = W64[b, :, ED + 1]
        expected = np.zeros((EM, ED + 2))
        expected[:, :ED] = -EM * s * c[:, None] * (s * G - G_t / alpha)
        if train_readout:
            expected[:, ED + 1] = -EM * s * (s * K - K_t / alpha)
        value = float(second_moment[b]) / (2 * alpha**2) - s / alpha * (c @ K_t) + 0.5 * s * s * (c @ K)
        assert_close_scaled(work[0][b], K, ref_rtol, f"K of member {b}")
        assert_close_scaled(work[1][b], G, ref_rtol, f"G of member {b}")
        assert_close_scaled(work[3][b], K_t, ref_rtol, f"K* of member {b}")
        assert_close_scaled(work[4][b], G_t, ref_rtol, f"G* of member {b}")
        assert_close_scaled(velocity[b], expected, ref_rtol, f"velocity of member {b}")
        assert abs(values[b] - value) <= ref_rtol * max(1.0, abs(value)), (b, values[b], value)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_ensemble_members_are_independent_and_launch_free(dtype, monkeypatch):
    """Member b of a batch is bitwise the batch of that member alone (and of the members in
    reverse order), and the numbers do not depend on the block's threads (8, 3, 5) or on the
    rows per tile of the pair table (all 5, 2, 1: the shared-memory budget made smaller)."""
    W, teacher, second_moment = ensemble_case(dtype)
    args = (kernels.ACTIVATION_CODES["relu"], 0.37, 1.3, True)
    batch = gpu_ensemble_call(W, teacher, second_moment, *args)
    for b in range(EB):
        alone = gpu_ensemble_call(W[b:b + 1], teacher[b:b + 1], second_moment[b:b + 1], *args)
        assert np.array_equal(alone[0], batch[0][b:b + 1]) and np.array_equal(alone[1], batch[1][b:b + 1])
    reverse = gpu_ensemble_call(W[::-1], teacher[::-1], second_moment[::-1], *args)
    assert np.array_equal(reverse[0], batch[0][::-1]) and np.array_equal(reverse[1], batch[1][::-1])
    itemsize = np.dtype(dtype).itemsize
    n = EM + EK
    for threads, rows in ((3, EM), (5, 2), (8, 1), (3, 2)):
        monkeypatch.setattr(gpu_ensemble, "THREADS_PER_BLOCK", threads)
        monkeypatch.setattr(gpu_ensemble, "SHARED_BYTES", (n + rows * (3 * n + 4)) * itemsize)
        assert gpu_ensemble.ensemble_rows(EM, EK, itemsize) == rows
        other = gpu_ensemble_call(W, teacher, second_moment, *args)
        assert np.array_equal(other[0], batch[0]) and np.array_equal(other[1], batch[1]), (threads, rows)
        for got, expected in zip(other[2], batch[2]):
            assert np.array_equal(got, expected), (threads, rows)
    monkeypatch.setattr(gpu_ensemble, "SHARED_BYTES", (n + 3 * n + 3) * itemsize)
    with pytest.raises(ValueError, match="shared memory"):
        gpu_ensemble_call(W, teacher, second_moment, *args)


def test_ensemble_takes_host_arrays_and_refuses_bad_ones():
    """Host arrays in and out give the numbers of device arrays (a host second moment in float64
    is converted to float32); wrong shapes and dtypes are refused."""
    W, teacher, second_moment = ensemble_case(np.float32)
    args = (kernels.ACTIVATION_CODES["erf"], 0.37, 1.3)
    expected = gpu_ensemble_call(W, teacher, second_moment, *args, True)
    values, velocity = np.empty(EB, np.float64), np.empty_like(W)
    work = kernels.ensemble_work_arrays(EB, EM, EK, ED, np.float32)
    gpu_ensemble.gpu_ensemble_closed_form_evaluate(W, teacher, *args, second_moment.astype(np.float64), True, values,
                                                   velocity, *work)
    assert np.array_equal(values, expected[0]) and np.array_equal(velocity, expected[1])
    for got, want in zip(work, expected[2]):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="teacher must have shape"):
        gpu_ensemble.gpu_ensemble_closed_form_evaluate(W, teacher[:2], *args, second_moment, True, values, velocity,
                                                       *work)
    with pytest.raises(TypeError, match="dtype"):
        gpu_ensemble.gpu_ensemble_closed_form_evaluate(W, dev(teacher.astype(np.float64)), *args, second_moment,
                                                       True, values, velocity, *work)
    with pytest.raises(TypeError, match="float32 or float64"):
        gpu_ensemble.gpu_ensemble_closed_form_evaluate(W.astype(np.float16), teacher, *args, second_moment, True,
                                                       values, velocity, *work)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf"])
def test_closed_form_points_velocity(act, dtype):
    """The field at 11 points (two blocks of 8 in the simulator) of member 0 (duplicated,
    antipodal, parallel and zero particles) equals the CPU kernel's to 1e-12 / 1e-5; points on
    particles 0, 2 and 4 get the ensemble kernel's velocities of those particles: bitwise in
    float64 (the same operands in the same order; the simulator's arithmetic has no fused
    multiply-adds, a GPU's has), to 1e-5 in float32 (the simulator keeps some float32
    intermediates of the ordered sums as Python floats: not the arithmetic of a GPU)."""
    W, teacher, second_moment = ensemble_case(dtype)
    code = kernels.ACTIVATION_CODES[act]
    rng = np.random.default_rng(42)
    points = np.vstack([W[0, [0, 2, 4]], rng.standard_normal((8, ED + 2)).astype(dtype)])
    points[3:, ED] = 0.0
    expected = np.empty_like(points)
    kernels.closed_form_points_velocity(W[0], teacher[0], points, code, 0.37, 1.3, True, expected)
    out = cuda.device_array(points.shape, dtype)
    gpu_ensemble.gpu_closed_form_points_velocity(dev(W[0]), dev(teacher[0]), dev(points), code, 0.37, 1.3, True, out)
    out = out.copy_to_host()
    assert out.dtype == dtype
    assert_close_scaled(out, expected, ENSEMBLE_RTOL[dtype])
    _, velocity, _ = gpu_ensemble_call(W[:1], teacher[:1], second_moment[:1], code, 0.37, 1.3, True)
    if dtype == np.float64:
        assert np.array_equal(out[:3], velocity[0, [0, 2, 4]])
    assert_close_scaled(out[:3], velocity[0, [0, 2, 4]], ENSEMBLE_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_member_sums_of_squares(dtype, monkeypatch):
    """Each member's sum of squares (45 entries over 32 lanes, one row of norm 1e3) equals the
    CPU kernel's serial sum to 1e-14 / 1e-6, and is bitwise the same for blocks of 8, 3 or 5
    threads and for a member alone."""
    rng = np.random.default_rng(43)
    V = rng.standard_normal((EB, EM, ED + 2))
    V[1, 2] *= 1e3 / np.linalg.norm(V[1, 2])
    V = V.astype(dtype)
    expected = np.empty(EB, dtype)
    kernels.member_sums_of_squares(V, expected)
    results = []
    for threads in (8, 3, 5):
        monkeypatch.setattr(gpu_ensemble, "THREADS_PER_BLOCK", threads)
        out = cuda.device_array(EB, dtype)
        gpu_ensemble.gpu_member_sums_of_squares(dev(V), out)
        results.append(out.copy_to_host())
    np.testing.assert_allclose(results[0], expected, rtol=1e-14 if dtype == np.float64 else 1e-6)
    for other in results[1:]:
        assert np.array_equal(other, results[0])
    alone = np.empty(1, dtype)
    gpu_ensemble.gpu_member_sums_of_squares(V[1:2], alone)  # host arrays
    assert alone[0] == results[0][1]

# ---------------------------------------------------------------------------------------
# the backend: whole runs on the device
# ---------------------------------------------------------------------------------------

def population(dtype="float64", m=13):
    model = mf.Model(d=D, activation="relu", dtype=dtype)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=D, k=2))
    return model, problem, mf.initialize(model, m=m, rng=np.random.default_rng(0))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scheme", ["gradient_descent", "heavy_ball"])
def test_cuda_run_matches_cpu_population(scheme, dtype):
    model, problem, W0 = population(dtype)
    integrator = (mf.gradient_descent(problem, 0.5) if scheme == "gradient_descent"
                  else mf.heavy_ball(problem, 0.1, 0.5))
    t_max = 3 * integrator.dt
    tracers = W0[:3] + 0.01
    cpu = mf.run(problem, integrator, W0, t_max, times=[0, t_max], keep_particles=True, tracers=tracers)
    device_problem, device_integrator = to_device(problem, integrator)
    gpu = mf.run(device_problem, device_integrator, W0, t_max, times=[0, t_max], keep_particles=True,
                 tracers=tracers)
    rtol = RTOL[np.dtype(dtype).type]
    assert gpu.status == "complete" and list(gpu.steps) == list(cpu.steps)
    np.testing.assert_allclose(gpu.risk, cpu.risk, rtol=rtol)
    np.testing.assert_allclose(gpu.grad_norm, cpu.grad_norm, rtol=rtol)
    assert gpu.particles.dtype == np.dtype(dtype)
    assert_close_scaled(gpu.particles, cpu.particles, rtol)
    assert_close_scaled(gpu.tracers, cpu.tracers, rtol)


def test_cuda_ensemble_members_equal_their_device_runs_alone(monkeypatch):
    """to_device(PopulationEnsemble) is a CudaEnsemble (one gpu_ensemble launch per evaluation):
    run_ensemble on it gives every member bitwise its device run alone, and the CPU ensemble's
    numbers to 1e-12; noisy ensembles are refused. A member alone takes the same kernel with
    B = 1 (CudaProblem, for a small bias-free closed-form problem, as the CPU does): on a GPU
    that is what makes the member bitwise its run alone; in the simulator (no fused
    multiply-adds) the tiled pair kernels happen to give the same bits, so the kernel a run
    alone takes is checked by counting the launches."""
    from meanfield.engine._cuda import CudaEnsemble
    from meanfield.engine._ensemble import PopulationEnsemble, run_ensemble
    from meanfield.engine._integrators import INTEGRATORS

    d, m = 3, 4
    members = [mf.PopulationProblem(mf.Model(d=d, activation="relu", train_readout=True),
                                    mf.Teacher.random(d, 2, np.random.default_rng(60 + b), "relu")) for b in range(3)]
    W0 = np.stack([mf.initialize(member.model, m=m, rng=np.random.default_rng(70 + b))
                   for b, member in enumerate(members)])
    W0[1, 1] = W0[1, 0]  # a duplicated particle
    ensemble = PopulationEnsemble(members, m)
    assert ensemble.batched
    dynamics = {"step": 0.1, "momentum": 0.5}
    integrator = INTEGRATORS["heavy_ball"].build(ensemble, dynamics)
    device_ensemble, device_integrator = to_device(ensemble, integrator)
    assert isinstance(device_ensemble, CudaEnsemble)
    t_max = 3 * integrator.dt
    device = run_ensemble(device_ensemble, device_integrator, W0, t_max, times=[0, t_max])
    cpu = run_ensemble(ensemble, integrator, W0, t_max, times=[0, t_max])
    launches = []
    kernel = gpu_ensemble.gpu_ensemble_closed_form_evaluate
    monkeypatch.setattr(gpu_ensemble, "gpu_ensemble_closed_form_evaluate",
                        lambda W, *args: launches.append(W.shape) or kernel(W, *args))
    for b, member in enumerate(members):
        del launches[:]
        alone = mf.run(*to_device(member, INTEGRATORS["heavy_ball"].build(member, dynamics)), W0[b], t_max,
                       times=[0, t_max])
        assert launches and set(launches) == {(1, m, d + 2)}
        assert device[b][0] == "complete" and device[b][3].value == alone.final.value
        assert np.array_equal(device[b][2], alone.final.W)
        assert_close_scaled(device[b][2], cpu[b][2], 1e-12)
        assert abs(device[b][3].value - cpu[b][3].value) <= 1e-12 * abs(cpu[b][3].value)
    evaluation, expected = device_ensemble.evaluate(W0.reshape(-1, d + 2)), ensemble.evaluate(W0.reshape(-1, d + 2))
    np.testing.assert_allclose(evaluation.value, expected.value, rtol=1e-12)
    assert_close_scaled(evaluation.velocity, expected.velocity, 1e-12)
    with pytest.raises(ValueError, match="noisy ensemble"):
        to_device(ensemble, INTEGRATORS["langevin"].build(ensemble, {"step": 0.1, "beta": 10.0, "weight_decay": 0.0,
                                                                      "batch_size": None}))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scheme", ["gradient_descent", "heavy_ball"])
def test_cuda_scheduled_weight_decay_matches_cpu(scheme, dtype):
    """Gradient descent with lambda = 0.4 switched on at t_on = 2 dt (the noise-free Langevin
    kernel on the device from there, the plain Euler kernel before), and heavy ball with
    lambda(t) = 0.4 / (1 + t / 0.5) (heavy_ball_decay_update), against the CPU run, with tracers,
    to the dtype's tolerance; and not the run without decay."""
    from meanfield.engine._integrators import WeightDecay

    model, problem, W0 = population(dtype)
    if scheme == "gradient_descent":
        integrator = mf.gradient_descent(problem, 0.5, WeightDecay(0.4, "step", start=1.0))
        plain_integrator = mf.gradient_descent(problem, 0.5)
    else:
        integrator = mf.heavy_ball(problem, 0.2, 0.5, WeightDecay(0.4, "anneal", time=0.5))
        plain_integrator = mf.heavy_ball(problem, 0.2, 0.5)
    t_max = 4 * integrator.dt
    tracers = W0[:3] + 0.01
    cpu = mf.run(problem, integrator, W0, t_max, times=[0, t_max], keep_particles=True, tracers=tracers)
    gpu = mf.run(*to_device(problem, integrator), W0, t_max, times=[0, t_max], keep_particles=True,
                 tracers=tracers)
    rtol = RTOL[np.dtype(dtype).type]
    assert gpu.status == "complete"
    assert_close_scaled(gpu.particles, cpu.particles, rtol)
    assert_close_scaled(gpu.tracers, cpu.tracers, rtol)
    plain = mf.run(problem, plain_integrator, W0, t_max)
    assert np.abs(plain.W - cpu.W).max() > 1e-3


def test_cuda_run_matches_cpu_quadrature():
    """A tanh student with biases (the Gauss-Hermite population risk, Q = 4) on the device."""
    model = mf.Model(d=D, activation="tanh", bias=True)
    problem = mf.PopulationProblem(model, mf.Teacher.random(D, 2, np.random.default_rng(1), "tanh", bias=True),
                                   method="quadrature", quadrature_order=4)
    W0 = mf.initialize(model, m=7, rng=np.random.default_rng(0), init=mf.Init(b="gaussian"))
    integrator = mf.gradient_descent(problem, 0.3)
    cpu = mf.run(problem, integrator, W0, 0.6, times=[0, 0.6])
    device_problem, device_integrator = to_device(problem, integrator)
    gpu = mf.run(device_problem, device_integrator, W0, 0.6, times=[0, 0.6])
    assert device_problem.method == "quadrature"
    np.testing.assert_allclose(gpu.risk, cpu.risk, rtol=1e-10)
    assert_close_scaled(gpu.W, cpu.W, 1e-10)
    assert np.abs(gpu.W[:, D] - W0[:, D]).max() > 0  # the biases moved


@pytest.mark.parametrize("act,student_bias,dtype", [("relu", True, "float64"), ("erf", False, "float64"),
                                                     ("normal_cdf", True, "float32")])
def test_cuda_problem_with_biases_matches_cpu(act, student_bias, dtype):
    """A closed-form problem with biases (a biased teacher; the student with or without biases)
    evaluates on the GPU through gpu_population.bias_pair_field: value, velocity (bias
    column included) and tracer velocities equal the CPU problem's, with a duplicated
    particle and rho = -1 between two particles (exact: ``bias_case``'s dyadic u). Then three
    gradient steps from a generic state, as on the CPU (from exact duplicates the steps would
    leave rho at 1 up to an ulp that the GPU and BLAS round differently, and the sums would
    differ by sqrt(ulp): see ``bias_case``)."""
    rng = np.random.default_rng(13)
    model = mf.Model(d=D, activation=act, bias=student_bias, dtype=dtype)
    problem = mf.PopulationProblem(model, mf.Teacher.random(D, 3, rng, act, bias=True))
    assert problem.method == "closed_form" and problem.with_bias
    W0 = mf.initialize(model, m=9, rng=rng, init=mf.Init(b="gaussian") if student_bias else None)
    W = W0.copy()
    u = np.array([1.0, 2.0, -2.0, 0.0, 0.0]) / 4.0
    W[0, :D] = W[1, :D] = u
    W[1, D:] = W[0, D:]
    W[3, :D] = -u
    tracers = np.ascontiguousarray(W[:3] + np.asarray(0.01, W.dtype))
    device_problem = CudaProblem(problem)
    evaluation, expected = device_problem.evaluate(W, tracers), problem.evaluate(W, tracers)
    rtol = BIAS_RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(evaluation.value, expected.value, rtol=rtol)
    assert evaluation.velocity.dtype == np.dtype(dtype)
    assert_close_scaled(evaluation.velocity, expected.velocity, rtol)
    assert_close_scaled(evaluation.points_velocity, expected.points_velocity, rtol)
    assert (np.abs(evaluation.velocity[:, D]).max() > 0) == student_bias
    if dtype == "float64":
        integrator = mf.gradient_descent(problem, 0.3)
        cpu = mf.run(problem, integrator, W0, 0.9, times=[0, 0.9])
        gpu = mf.run(*to_device(problem, integrator), W0, 0.9, times=[0, 0.9])
        np.testing.assert_allclose(gpu.risk, cpu.risk, rtol=1e-12)
        assert_close_scaled(gpu.W, cpu.W, 1e-12)


def test_cuda_sgd_on_finite_data_matches_cpu():
    """Minibatches are drawn on the host from the run's stream: the same batches as on the CPU."""
    model = mf.Model(d=D, activation="tanh", bias=True)
    problem = mf.FiniteDataProblem.from_teacher(model, mf.Teacher.random(D, 2, np.random.default_rng(1),
                                                                         "tanh"), 29, np.random.default_rng(2))
    W0 = mf.initialize(model, m=13, rng=np.random.default_rng(0))
    integrator = mf.sgd(problem, 0.2, batch_size=17, weight_decay=0.1)
    cpu = mf.run(problem, integrator, W0, 0.6, times=[0, 0.6], rng=np.random.default_rng(3))
    device_problem, device_integrator = to_device(problem, integrator)
    gpu = mf.run(device_problem, device_integrator, W0, 0.6, times=[0, 0.6], rng=np.random.default_rng(3))
    np.testing.assert_allclose(gpu.risk, cpu.risk, rtol=1e-10)
    assert_close_scaled(gpu.W, cpu.W, 1e-10)
    evaluation = device_problem.evaluate(W0)
    expected = problem.evaluate(W0)
    np.testing.assert_allclose(evaluation.value, expected.value, rtol=1e-10)
    assert_close_scaled(evaluation.velocity, expected.velocity, 1e-10)


class Checkpoints:
    """An observer keeping what a checkpoint saves (host copies of W and the buffers)."""

    def __init__(self):
        self.saved = {}

    def observe(self, state, evaluation):
        self.saved[state.step] = (state.W, {name: array.copy() for name, array in state.buffers.items()})

    def close(self, state, status, message):
        pass


def test_cuda_heavy_ball_resumes_exactly():
    """Restored from a host checkpoint (W and momentum read back from the device at step 2),
    a device heavy-ball run continues bitwise like the uninterrupted one."""
    _, problem, W0 = population(m=9)
    device_problem, device_integrator = to_device(problem, mf.heavy_ball(problem, 0.1, 0.5))
    dt = device_integrator.dt
    checkpoints = Checkpoints()
    full = mf.run(device_problem, device_integrator, W0, 4 * dt, times=[0, 2 * dt, 4 * dt], observers=[checkpoints])
    W2, buffers2 = checkpoints.saved[2]
    assert np.abs(buffers2["momentum"]).max() > 0
    state = mf.restore(device_integrator, W2, 2, buffers=buffers2)
    resumed = mf.run(device_problem, device_integrator, W0, 4 * dt, times=[0, 2 * dt, 4 * dt], state=state)
    assert np.array_equal(resumed.W, full.W)


def test_cuda_langevin_resumes_exactly():
    """A Langevin run restored at step 2 (host W, the saved generator) continues to the same
    particles as the uninterrupted run: the device generators are re-seeded from the run's
    stream and skipped forward."""
    model, problem, W0 = population(m=9)
    integrator = mf.langevin(problem, 0.1, beta=50.0, weight_decay=0.5)
    device_problem, device_integrator = to_device(problem, integrator)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 2))))
    full = mf.run(device_problem, device_integrator, W0, 0.4, times=[0, 0.2, 0.4], rng=rng, keep_particles=True)
    assert not np.allclose(full.particles[1], W0)
    rng2 = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 2))))
    state = mf.restore(device_integrator, full.particles[1], 2, rng=rng2)
    resumed = mf.run(device_problem, device_integrator, W0, 0.4, times=[0, 0.2, 0.4], rng=rng2, state=state)
    assert np.array_equal(resumed.W, full.W)
    # the noise has the temperature asked for: the CPU and GPU runs differ only by noise
    cpu = mf.run(problem, integrator, W0, 0.4, times=[0, 0.4], rng=np.random.default_rng(0))
    assert 0 < np.abs(cpu.W - full.W).max() < 10 * math.sqrt(2 * 0.1 / 50.0) * 4


EXPERIMENT = """
[model]
d = 4
m = 11
activation = "relu"
[problem]
kind = "{kind}"
{extra}
[problem.teacher]
kind = "orthonormal"
k = 2
[dynamics]
integrator = "heavy_ball"
step = 0.1
momentum = 0.5
t_max = 0.6
[record]
times = 3
[run]
backend = "{backend}"
"""


def h5_layout(path):
    """{dataset path: (shape, dtype)} of a run file, attributes that vary between runs left out."""
    layout = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: layout.__setitem__(name, (obj.shape, obj.dtype))
                     if isinstance(obj, h5py.Dataset) else None)
        risk = f["observables/risk/value"][()]
        W = f["particles/neurons/position/value"][()]
        assert f.attrs["status"] == "complete"
    return layout, risk, W


@pytest.mark.parametrize("kind,extra", [("population", ""), ("finite_data", "n_samples = 23")])
def test_meanfield_run_backend_cuda_end_to_end(tmp_path, kind, extra):
    """`meanfield run FILE --backend cuda` and `[run] backend = "cuda"` write the same layout and
    numbers as the CPU run of the same file."""
    from meanfield.cli import main

    for backend in ("cpu", "cuda"):
        (tmp_path / f"{backend}.toml").write_text(EXPERIMENT.format(kind=kind, extra=extra, backend=backend))
    assert main(["run", str(tmp_path / "cpu.toml"), "--out", str(tmp_path / "cpu"), "--quiet"]) == 0
    assert main(["run", str(tmp_path / "cpu.toml"), "--backend", "cuda", "--out", str(tmp_path / "flag"),
                 "--quiet"]) == 0
    assert main(["run", str(tmp_path / "cuda.toml"), "--out", str(tmp_path / "file"), "--quiet"]) == 0
    (cpu_file,) = [p for p in (tmp_path / "cpu").glob("*.h5") if p.name != "index.h5"]
    cpu_layout, cpu_risk, cpu_W = h5_layout(cpu_file)
    for folder in ("flag", "file"):
        files = [p for p in (tmp_path / folder).glob("*.h5") if p.name != "index.h5"]
        assert len(files) == 1
        layout, risk, W = h5_layout(files[0])
        assert layout == cpu_layout
        np.testing.assert_allclose(risk, cpu_risk, rtol=1e-10)
        assert_close_scaled(W, cpu_W, 1e-10)


def test_gpu_benchmark_runs_at_tiny_size(capsys):
    """benchmarks/gpu_bench.py runs every case end to end (m = 11, d = 3; the simulator's timings
    mean nothing, this only keeps the script from rotting until it runs on a GPU)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_bench.py")
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--repeats", "1", "--dtype", "float32"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and f"| {bench.TINY_SIZES[0]} |" in line]
    assert {row.split("|")[1].strip() for row in rows} == set(bench.CASES)


def test_cuda_keyed_langevin_tracers_draw_their_particles_noise():
    """Keyed Langevin noise on the device. A row's generator depends only on (seed, row):
    ``create_noise_states_of_rows`` gives bitwise the rows of ``create_noise_states``. A width-9
    run carrying tracers for a width-4 run and for itself: the width-9 block follows the
    particles to rounding (1e-12; without their noise they would differ by ~0.1), the width-4
    block's generators end bitwise where the width-4 run's own end (the same draws), and a run
    restored at step 2 continues bitwise, tracers included."""
    states = gpu_updates.create_noise_states(12, 7).copy_to_host()
    chosen = gpu_updates.create_noise_states_of_rows([3, 0, 11, 3], 7).copy_to_host()
    np.testing.assert_array_equal(chosen, states[[3, 0, 11, 3]])
    model, problem, W0 = population(m=9)
    rows = list(range(4)) + list(range(9))
    tracers = np.concatenate([W0[:4], W0])

    def rng():
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 2))))

    device_problem, wide = to_device(problem, mf.langevin(problem, 0.1, beta=50.0, noise="keyed", tracer_rows=rows))
    full = mf.run(device_problem, wide, W0, 0.4, times=[0, 0.2, 0.4], rng=rng(), tracers=tracers,
                  keep_particles=True)
    assert np.abs(full.particles[2] - W0).max() > 0.05
    np.testing.assert_allclose(full.tracers[:, 4:], full.particles, rtol=0, atol=1e-12)
    _, narrow_integrator = to_device(problem, mf.langevin(problem, 0.1, beta=50.0, noise="keyed"))
    narrow = mf.run(device_problem, narrow_integrator, W0[:4], 0.4, rng=rng())
    np.testing.assert_array_equal(full.final.tracer_noise_states.copy_to_host()[:4],
                                  narrow.final.noise_states.copy_to_host())
    assert not np.array_equal(gpu_updates.create_noise_states(4, 0).copy_to_host(),
                              narrow.final.noise_states.copy_to_host())  # they did draw
    state = mf.restore(wide, full.particles[1], 2, rng=rng(), tracers=full.tracers[1])
    resumed = mf.run(device_problem, wide, W0, 0.4, times=[0, 0.2, 0.4], rng=rng(), state=state)
    assert np.array_equal(resumed.W, full.W) and np.array_equal(resumed.final.tracers, full.final.tracers)


def test_meanfield_run_limit_with_langevin_on_cuda(tmp_path):
    """A [limit] table with Langevin and tracers runs with backend = "cuda": the member of width
    M = 6 and its tracers agree to rounding (deviation <= 1e-20, risk gap <= 1e-12), the width-3
    member does not (> 1e-6)."""
    import h5py as h5

    from meanfield import limits
    from meanfield.cli import main

    text = (EXPERIMENT.format(kind="population", extra="", backend="cuda")
            .replace('integrator = "heavy_ball"', 'integrator = "langevin"\nbeta = 10.0')
            .replace("momentum = 0.5\n", "").replace("m = 11", "m = 6")
            + '[limit]\nreference_m = 6\nmetrics = ["risk_gap", "tracer_deviation"]\n[sweep]\n"model.m" = [3, 6]\n')
    (tmp_path / "limit.toml").write_text(text)
    assert main(["run", str(tmp_path / "limit.toml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    pairs = limits.pairs(tmp_path / "out")
    assert len(pairs) == 2
    for member_path, _ in pairs:
        with h5.File(member_path, "r") as f:
            m = json.loads(f.attrs["config"])["model"]["m"]
            deviation = f["observables/limit/tracer_deviation/value"][()]
            gap = f["observables/limit/risk_gap/value"][()]
        if m == 6:
            assert np.all(deviation <= 1e-20) and np.all(np.abs(gap) <= 1e-12), (deviation, gap)
        else:
            assert np.all(deviation[1:] > 1e-6), deviation


def test_a_cuda_sweep_forms_ensembles_with_the_files_of_runs_alone(tmp_path):
    """`[run] backend = "cuda"` runs that differ only in their seed form one device ensemble
    (CudaEnsemble: one gpu_ensemble launch per step for all members) and write the files of
    the same runs done alone on the device, every dataset and attribute."""
    from test_ensemble import assert_same_files

    from meanfield import sweep
    from meanfield.engine import _cuda

    text = EXPERIMENT.format(kind="population", extra="", backend="cuda").replace("m = 11", "m = 3") + \
        '[sweep]\n"run.seed" = [0, 1, 2]\n'
    path = tmp_path / "cuda.toml"
    path.write_text(text)
    units = sweep.plan_units(sweep.plan(path))
    assert [len(unit) for unit in units] == [3]
    made = []
    real = _cuda.CudaEnsemble.__init__

    def counting(self, ensemble):
        made.append(len(ensemble.members))
        real(self, ensemble)

    _cuda.CudaEnsemble.__init__ = counting
    try:
        together = sweep.run_shard(path, tmp_path / "together")
    finally:
        _cuda.CudaEnsemble.__init__ = real
    assert made == [3] and {s["status"] for s in together} == {"complete"}
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert_same_files(tmp_path / "together", tmp_path / "alone")
