"""Every compiled kernel of ``meanfield.kernels`` against an independent pure-numpy reference.

The references below are deliberately naive: explicit formulas, full N x m matrices, no
tiling, no symmetrisation. They share no code with the kernels (scipy.special.erf is the only
special function used).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf as sp_erf

from meanfield import kernels

# Every activation the kernels know (a new one in kernels/_scalar.py must get a reference here).
ACTIVATIONS = tuple(kernels.ACTIVATION_CODES)
LOSSES = ("squared", "logistic", "exponential")
SMOOTH = tuple(a for a in ACTIVATIONS if a != "relu")


# ---------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------

def np_sigma(z, name):
    """sigma(z) in float64."""
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "erf":
        return sp_erf(z / np.sqrt(2.0))
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "linear":
        return np.asarray(z, dtype=np.float64).copy()
    if name == "gelu":
        return z * 0.5 * (1.0 + sp_erf(z / np.sqrt(2.0)))
    if name == "normal_cdf":
        return 0.5 * (1.0 + sp_erf(z / np.sqrt(2.0)))
    raise ValueError(name)


def np_sigma_prime(z, name):
    """sigma'(z) in float64 (relu'(0) = 0)."""
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "erf":
        return np.sqrt(2.0 / np.pi) * np.exp(-0.5 * z * z)
    if name == "softplus":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "linear":
        return np.ones_like(z, dtype=np.float64)
    if name == "gelu":
        return 0.5 * (1.0 + sp_erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    if name == "normal_cdf":
        return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    raise ValueError(name)


def np_loss(f, y, name):
    if name == "squared":
        return 0.5 * (y - f) ** 2
    if name == "logistic":
        return np.log1p(np.exp(-y * f))
    if name == "exponential":
        return np.exp(-y * f)
    raise ValueError(name)


def np_loss_prime(f, y, name):
    """d l / d f."""
    if name == "squared":
        return f - y
    if name == "logistic":
        return -y / (1.0 + np.exp(y * f))
    if name == "exponential":
        return -y * np.exp(-y * f)
    raise ValueError(name)


def ref_output(W, X, act, s):
    """h(x_n) = s sum_i c_i sigma(a_i . x_n + b_i), with the N x m matrix."""
    d = X.shape[1]
    Z = X @ W[:, :d].T + W[:, d]
    return s * np_sigma(Z, act) @ W[:, d + 1]


def ref_field(W, X, y, points, act, loss, s, alpha, bias, train_readout):
    """(F, v(W), v(points)) from the explicit formulas of the finite-data kernel."""
    W = np.asarray(W, np.float64)
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    points = np.asarray(points, np.float64)
    m = W.shape[0]
    N, d = X.shape
    h = ref_output(W, X, act, s)
    F = np.mean(np_loss(alpha * h, y, loss)) / alpha**2
    r = np_loss_prime(alpha * h, y, loss)  # (N,)

    def velocity(P):
        Z = X @ P[:, :d].T + P[:, d]  # (N, n)
        sp = np_sigma_prime(Z, act)
        c = P[:, d + 1]
        grad_a = np.einsum("n,ni,i,nk->ik", r, sp, c, X)
        grad_b = np.einsum("n,ni,i->i", r, sp, c)
        grad_c = np.einsum("n,ni->i", r, np_sigma(Z, act))
        v = -(m * s / (alpha * N)) * np.column_stack([grad_a, grad_b, grad_c])
        if not bias:
            v[:, d] = 0.0
        if not train_readout:
            v[:, d + 1] = 0.0
        return v

    return F, velocity(W), velocity(points)


def make_data(rng, m, N, d, loss, with_bias=True):
    W = np.empty((m, d + 2))
    W[:, :d] = rng.standard_normal((m, d)) / np.sqrt(d)
    W[:, d] = 0.5 * rng.standard_normal(m) if with_bias else 0.0
    W[:, d + 1] = rng.standard_normal(m)
    X = rng.standard_normal((N, d))
    if loss == "squared":
        y = rng.standard_normal(N)
    else:
        y = rng.choice(np.array([-1.0, 1.0]), size=N)
    extra = np.empty((4, d + 2))
    extra[:, :d] = rng.standard_normal((4, d)) / np.sqrt(d)
    extra[:, d] = 0.5 * rng.standard_normal(4)
    extra[:, d + 1] = rng.standard_normal(4)
    # tracers: two copies of particles, then fresh points
    points = np.vstack([W[[2 % m, m - 1]], extra])
    return W, X, y, points


def call_field(W, X, y, points, act, loss, s, alpha, bias, train_readout, tile, dtype):
    W = np.ascontiguousarray(W, dtype=dtype)
    X = np.ascontiguousarray(X, dtype=dtype)
    y = np.ascontiguousarray(y, dtype=dtype)
    points = np.ascontiguousarray(points, dtype=dtype)
    v = np.full_like(W, np.nan)
    pv = np.full_like(points, np.nan)
    F = kernels.finite_data_field(
        W, X, y, points, kernels.ACTIVATION_CODES[act], kernels.LOSS_CODES[loss], float(s),
        float(alpha), bool(bias), bool(train_readout), int(tile), v, pv)
    return F, v, pv


def assert_close_scaled(actual, desired, rtol, msg=""):
    """assert_allclose with atol = rtol * max|desired| (entries near 0 judged on the scale)."""
    desired = np.asarray(desired, np.float64)
    scale = max(float(np.max(np.abs(desired))), 1e-300) if desired.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=rtol,
                               atol=rtol * scale, err_msg=msg)


def check_field_case(rng, m, N, d, act, loss, s_mode, alpha, bias, train_readout, tile, dtype):
    W, X, y, points = make_data(rng, m, N, d, loss, with_bias=bias)
    s = 1.0 / m if s_mode == "mean" else 1.0
    if dtype == np.float32:
        # the reference sees exactly the float32 inputs
        W, X, y, points = (np.asarray(t, np.float32).astype(np.float64) for t in (W, X, y, points))
    F_ref, v_ref, pv_ref = ref_field(W, X, y, points, act, loss, s, alpha, bias, train_readout)
    F, v, pv = call_field(W, X, y, points, act, loss, s, alpha, bias, train_readout, tile, dtype)
    msg = f"{act} {loss} m={m} N={N} d={d} s={s_mode} alpha={alpha} bias={bias} " \
          f"readout={train_readout} tile={tile} {np.dtype(dtype).name}"
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    if dtype == np.float32:
        # the returned objective is computed in single precision: it is a float32 number
        # (a float64 accumulation would almost never round-trip through float32)
        assert float(np.float32(F)) == float(F), msg
    np.testing.assert_allclose(float(F), F_ref, rtol=rtol, err_msg=msg)
    assert_close_scaled(v, v_ref, rtol, msg)
    assert_close_scaled(pv, pv_ref, rtol, msg)
    # frozen columns are exactly zero
    if not bias:
        assert np.all(v[:, d] == 0) and np.all(pv[:, d] == 0), msg
    if not train_readout:
        assert np.all(v[:, d + 1] == 0) and np.all(pv[:, d + 1] == 0), msg
    # a tracer equal to a particle moves like that particle
    np.testing.assert_allclose(pv[0], v[2 % m], rtol=rtol, atol=rtol * np.abs(v_ref).max(),
                               err_msg=msg)
    np.testing.assert_allclose(pv[1], v[m - 1], rtol=rtol, atol=rtol * np.abs(v_ref).max(),
                               err_msg=msg)


# ---------------------------------------------------------------------------------------
# finite-data kernels
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_finite_data_field_matches_numpy(act, loss, dtype):
    """finite_data_field's value, particle and tracer velocities equal the numpy formulas for
    every bias/readout/scale/alpha/tile combination."""
    rng = np.random.default_rng(1000 + 17 * ACTIVATIONS.index(act) + LOSSES.index(loss))
    m, N, d = 7, 53, 5
    for bias in (False, True):
        for train_readout in (False, True):
            for s_mode in ("mean", "sum"):
                for alpha in (1.0, 3.0):
                    for tile in (16, 64):
                        check_field_case(rng, m, N, d, act, loss, s_mode, alpha, bias,
                                         train_readout, tile, dtype)


@settings(max_examples=15, deadline=None, database=None)
@given(
    m=st.integers(1, 12),
    N=st.integers(1, 70),
    d=st.integers(1, 6),
    tile=st.integers(1, 80),
    act=st.sampled_from(ACTIVATIONS),
    loss=st.sampled_from(LOSSES),
    bias=st.booleans(),
    train_readout=st.booleans(),
    s_mode=st.sampled_from(["mean", "sum"]),
    alpha=st.sampled_from([1.0, 0.5, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_finite_data_field_random_sizes(m, N, d, tile, act, loss, bias, train_readout, s_mode,
                                        alpha, seed):
    """finite_data_field equals the numpy reference on random sizes, tiles and seeds (float64)."""
    check_field_case(np.random.default_rng(seed), m, N, d, act, loss, s_mode, alpha, bias,
                     train_readout, tile, np.float64)


def test_finite_data_field_no_points():
    """finite_data_field works with zero tracer points and gives the same particle velocity."""
    rng = np.random.default_rng(7)
    W, X, y, points = make_data(rng, 7, 53, 5, "squared")
    F_ref, v_ref, _ = ref_field(W, X, y, points, "tanh", "squared", 1 / 7, 1.0, True, True)
    empty = np.empty((0, 7))
    F, v, pv = call_field(W, X, y, empty, "tanh", "squared", 1 / 7, 1.0, True, True, 16,
                          np.float64)
    assert pv.shape == (0, 7)
    np.testing.assert_allclose(F, F_ref, rtol=1e-10)
    assert_close_scaled(v, v_ref, 1e-10)


def test_finite_data_workspace_reuse_is_bitwise():
    """A kept workspace gives bitwise the fresh-array result, whatever the previous call left
    in it (another sample, other tracers); one of other shapes is replaced, not written past."""
    rng = np.random.default_rng(12)
    m, d = 9, 4
    W, X, y, points = make_data(rng, m, 37, d, "squared")
    args = (kernels.ACTIVATION_CODES["relu"], kernels.LOSS_CODES["squared"], 1 / m, 1.0, True, True, 16)

    def call(X, y, pts, workspace=None):
        v, pv = np.empty_like(W), np.empty_like(pts)
        return kernels.finite_data_field(W, X, y, pts, *args, v, pv, workspace), v, pv

    fresh = call(X, y, points)
    workspace = kernels.finite_data_workspace(m, points.shape[0], d, 16, np.float64)
    for element in workspace:
        element[...] = np.nan  # what a previous call on other data could leave behind
    kept = call(X, y, points, workspace)
    X2, y2 = rng.standard_normal((23, d)), rng.standard_normal(23)
    call(X2, y2, points, workspace)
    again = call(X, y, points, workspace)
    for result in (kept, again):
        assert result[0] == fresh[0]
        np.testing.assert_array_equal(result[1], fresh[1])
        np.testing.assert_array_equal(result[2], fresh[2])
    assert kernels.finite_data_workspace(m, points.shape[0], d, 16, np.float64, reuse=workspace) is workspace
    small = kernels.finite_data_workspace(m, 0, d, 8, np.float64)
    assert kernels.finite_data_workspace(m, points.shape[0], d, 16, np.float64, reuse=small) is not small
    other = call(X, y, points, small)  # wrong shapes: the kernel makes its own
    np.testing.assert_array_equal(other[1], fresh[1])


def test_problem_keeps_its_data_workspace():
    """A finite-data problem reuses one workspace across evaluations, and its numbers equal a
    problem evaluated once (no state carried between steps)."""
    import meanfield as mf
    rng = np.random.default_rng(13)
    model = mf.Model(d=4, activation="tanh")
    X, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    problem = mf.FiniteDataProblem(model, X, y)
    W1, W2 = mf.initialize(model, 6, rng), mf.initialize(model, 6, rng)
    problem.evaluate(W1)
    kept = problem._workspaces("sample")["kernel"]
    second = problem.evaluate(W2)
    assert problem._workspaces("sample")["kernel"] is kept
    alone = mf.FiniteDataProblem(model, X, y).evaluate(W2)
    assert second.value == alone.value
    np.testing.assert_array_equal(second.velocity, alone.velocity)


def test_finite_data_velocity_is_minus_m_gradient():
    """For a particle, the kernel velocity is -m times the finite-difference gradient of F."""
    rng = np.random.default_rng(11)
    m, N, d = 5, 41, 3
    W, X, y, _ = make_data(rng, m, N, d, "logistic")
    pts = np.empty((0, d + 2))
    F0, v, _ = call_field(W, X, y, pts, "softplus", "logistic", 1 / m, 2.0, True, True, 16,
                          np.float64)
    eps = 1e-6
    grad = np.empty_like(W)
    for i in range(m):
        for k in range(d + 2):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, k] += eps
            Wm[i, k] -= eps
            Fp = call_field(Wp, X, y, pts, "softplus", "logistic", 1 / m, 2.0, True, True, 16,
                            np.float64)[0]
            Fm = call_field(Wm, X, y, pts, "softplus", "logistic", 1 / m, 2.0, True, True, 16,
                            np.float64)[0]
            grad[i, k] = (Fp - Fm) / (2 * eps)
    assert_close_scaled(v, -m * grad, 1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_network_output_matches_numpy(act, dtype):
    """network_output equals s * sum_i c_i sigma(a_i.x + b_i) computed in numpy, any tile size."""
    rng = np.random.default_rng(20 + ACTIVATIONS.index(act))
    m, N, d = 7, 53, 5
    W, X, _, _ = make_data(rng, m, N, d, "squared")
    W32, X32 = W.astype(dtype), X.astype(dtype)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    for s in (1.0 / m, 1.0):
        ref = ref_output(W32.astype(np.float64), X32.astype(np.float64), act, s)
        for tile in (1, 16, 53, 100):
            out = np.full(N, np.nan, dtype=dtype)
            kernels.network_output(W32, X32, kernels.ACTIVATION_CODES[act], s, tile, out)
            assert_close_scaled(out, ref, rtol, f"{act} s={s} tile={tile}")


# ---------------------------------------------------------------------------------------
# closed-form pair kernels
# ---------------------------------------------------------------------------------------

def ref_kappa_closed(a, a2, act):
    """kappa(a, a') = E[sigma(a.x) sigma(a'.x)], x ~ N(0, I), SCIENCE.md section 2."""
    if act == "relu":
        na, nb = np.linalg.norm(a), np.linalg.norm(a2)
        theta = np.arccos(np.clip(a @ a2 / (na * nb), -1.0, 1.0))
        return na * nb * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    if act == "erf":
        return 2 / np.pi * np.arcsin(a @ a2 / np.sqrt((1 + a @ a) * (1 + a2 @ a2)))
    if act == "linear":
        return a @ a2
    raise ValueError(act)


def ref_grad_closed(a, a2, act):
    """grad_a kappa(a, a')."""
    if act == "relu":
        na, nb = np.linalg.norm(a), np.linalg.norm(a2)
        theta = np.arccos(np.clip(a @ a2 / (na * nb), -1.0, 1.0))
        return ((np.pi - theta) * a2 + np.sin(theta) * (nb / na) * a) / (2 * np.pi)
    if act == "erf":
        Qa, Qb = 1 + a @ a, 1 + a2 @ a2
        q = a @ a2 / np.sqrt(Qa * Qb)
        dq = (a2 - (a @ a2 / Qa) * a) / np.sqrt(Qa * Qb)
        return 2 / np.pi / np.sqrt(1 - q * q) * dq
    if act == "linear":
        return a2.copy()
    raise ValueError(act)


def closed_case(rng, n=5, m=9, d=7):
    points = rng.standard_normal((n, d + 2))
    sources = rng.standard_normal((m, d + 2))
    points[:, :d] /= np.sqrt(d)
    sources[:, :d] *= rng.uniform(0.3, 2.0, size=(m, 1)) / np.sqrt(d)
    points[:, d] = 0.0
    sources[:, d] = 0.0
    points[1] = sources[4]  # a point equal to a source (theta = 0)
    points[3, :d] = -2.0 * sources[6, :d]  # antiparallel (theta = pi)
    return points, sources


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["relu", "erf", "linear"])
def test_closed_form_pair_field_matches_numpy(act, dtype):
    """closed_form_pair_field K and G equal sum_j c_j kappa, sum_j c_j grad kappa from numpy."""
    points, sources = closed_case(np.random.default_rng(30))
    n, p = points.shape
    d = p - 2
    if dtype == np.float32:
        points = points.astype(np.float32).astype(np.float64)
        sources = sources.astype(np.float32).astype(np.float64)
    c = sources[:, d + 1]
    K_ref = np.array([sum(c[j] * ref_kappa_closed(points[i, :d], sources[j, :d], act)
                          for j in range(len(c))) for i in range(n)])
    G_ref = np.array([sum(c[j] * ref_grad_closed(points[i, :d], sources[j, :d], act)
                          for j in range(len(c))) for i in range(n)])
    K = np.full(n, np.nan, dtype=dtype)
    G = np.full((n, d + 1), np.nan, dtype=dtype)
    kernels.closed_form_pair_field(points.astype(dtype), sources.astype(dtype),
                                   kernels.ACTIVATION_CODES[act], K, G)
    rtol = 1e-12 if dtype == np.float64 else 1e-4
    assert_close_scaled(K, K_ref, rtol)
    assert_close_scaled(G[:, :d], G_ref, rtol)
    assert np.all(G[:, d] == 0)


@pytest.mark.parametrize("act", ["relu", "erf", "linear"])
def test_closed_form_gradient_is_derivative_of_kappa(act):
    """closed_form_pair_field's G is the central finite difference of its K in a_i."""
    points, sources = closed_case(np.random.default_rng(31))
    n, p = points.shape
    d = p - 2
    code = kernels.ACTIVATION_CODES[act]
    K = np.empty(n)
    G = np.empty((n, d + 1))
    kernels.closed_form_pair_field(points, sources, code, K, G)
    eps = 1e-6
    G_fd = np.empty((n, d))
    Kp, Km, Gs = np.empty(n), np.empty(n), np.empty((n, d + 1))
    for k in range(d):
        P = points.copy()
        P[:, k] += eps
        kernels.closed_form_pair_field(P, sources, code, Kp, Gs)
        P[:, k] -= 2 * eps
        kernels.closed_form_pair_field(P, sources, code, Km, Gs)
        G_fd[:, k] = (Kp - Km) / (2 * eps)
    # row 1 sits on a source (theta = 0), row 3 is antiparallel to one (theta = pi)
    assert_close_scaled(G[:, :d], G_fd, 1e-6)


def mc_pair(a, a2, act, n_samples, rng, chunk=250_000):
    """Monte Carlo mean and standard error of sigma(a.x) sigma(a'.x), x ~ N(0, I_d)."""
    total = 0.0
    total_sq = 0.0
    done = 0
    while done < n_samples:
        k = min(chunk, n_samples - done)
        X = rng.standard_normal((k, a.shape[0]))
        prod = np_sigma(X @ a, act) * np_sigma(X @ a2, act)
        total += prod.sum()
        total_sq += (prod * prod).sum()
        done += k
    mean = total / n_samples
    var = total_sq / n_samples - mean * mean
    return mean, math.sqrt(var * n_samples / (n_samples - 1) / n_samples)


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_closed_form_kappa_against_monte_carlo(act):
    """The relu and erf kappa formulas (numpy and kernel) agree with 10^6-sample Monte Carlo."""
    rng = np.random.default_rng(40)
    d = 5
    a = rng.standard_normal(d) / np.sqrt(d)
    pairs = [
        (a, rng.standard_normal(d) * 0.8),  # generic pair
        (a, 1.5 * a),  # parallel (theta = 0)
        (a, -a + 0.2 * rng.standard_normal(d)),  # nearly antiparallel
    ]
    for u, v in pairs:
        ref = ref_kappa_closed(u, v, act)
        points = np.concatenate([u, [0.0, 1.0]])[None, :]
        sources = np.concatenate([v, [0.0, 1.0]])[None, :]
        K = np.empty(1)
        G = np.empty((1, d + 1))
        kernels.closed_form_pair_field(points, sources, kernels.ACTIVATION_CODES[act], K, G)
        mean, se = mc_pair(u, v, act, 1_000_000, rng)
        assert abs(ref - mean) < 4 * se, (act, ref, mean, se)
        assert abs(K[0] - mean) < 4 * se, (act, K[0], mean, se)


# ---------------------------------------------------------------------------------------
# quadrature pair kernel
# ---------------------------------------------------------------------------------------

def gh_rule(order):
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def ref_kappa_quad(w1, w2, act, order=200):
    """E[sigma(u) sigma(u')] for (u, u') ~ N((b, b'), [[|a|^2, a.a'], [a.a', |a'|^2]]) by a
    tensor Gauss-Hermite rule on the Cholesky factor of the covariance."""
    d = w1.shape[0] - 2
    a, b = w1[:d], w1[d]
    a2, b2 = w2[:d], w2[d]
    cov = np.array([[a @ a, a @ a2], [a @ a2, a2 @ a2]])
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:  # singular (parallel a, a'): explicit factor
        l11 = math.sqrt(cov[0, 0])
        l21 = cov[0, 1] / l11
        L = np.array([[l11, 0.0], [l21, math.sqrt(max(cov[1, 1] - l21 * l21, 0.0))]])
    z, w = gh_rule(order)
    Z1, Z2 = np.meshgrid(z, z, indexing="ij")
    Wt = np.outer(w, w)
    u = L[0, 0] * Z1 + b
    u2 = L[1, 0] * Z1 + L[1, 1] * Z2 + b2
    return float(np.sum(Wt * np_sigma(u, act) * np_sigma(u2, act)))


def quad_case(rng, n=5, m=9, d=7):
    points = rng.standard_normal((n, d + 2))
    sources = rng.standard_normal((m, d + 2))
    points[:, :d] *= 1.2 / np.sqrt(d)
    sources[:, :d] *= rng.uniform(0.3, 1.5, size=(m, 1)) / np.sqrt(d)
    points[:, d] *= 0.7
    sources[:, d] *= 0.7
    points[1] = sources[4]  # a point equal to a source
    return points, sources


def call_quad(points, sources, act, order, dtype=np.float64):
    n, p = points.shape
    z, w = gh_rule(order)
    K = np.full(n, np.nan, dtype=dtype)
    G = np.full((n, p - 1), np.nan, dtype=dtype)
    kernels.quadrature_pair_field(np.ascontiguousarray(points, dtype=dtype),
                                  np.ascontiguousarray(sources, dtype=dtype),
                                  kernels.ACTIVATION_CODES[act], z.astype(dtype),
                                  w.astype(dtype), K, G)
    return K, G


def ref_K_quad(points, sources, act, order=200):
    d = points.shape[1] - 2
    return np.array([sum(sources[j, d + 1] * ref_kappa_quad(points[i], sources[j], act, order)
                         for j in range(sources.shape[0])) for i in range(points.shape[0])])


@pytest.mark.parametrize("act", SMOOTH)
def test_quadrature_pair_field_value_matches_numpy(act):
    """quadrature_pair_field's K equals a high-order numpy Gauss-Hermite reference (smooth sigma)."""
    points, sources = quad_case(np.random.default_rng(50))
    # Order 128 (kernel) against order 200 (reference): tanh, whose poles at +-i pi/2 slow
    # Gauss-Hermite down, measured 1.6e-5 (order 32), 2.3e-7 (64), 1.4e-10 (128) absolute
    # error on this case; sigmoid, erf, softplus, linear are below 1e-9 already at order 32.
    K, _ = call_quad(points, sources, act, 128)
    K_ref = ref_K_quad(points, sources, act)
    assert_close_scaled(K, K_ref, 1e-8, act)


@pytest.mark.parametrize("act", SMOOTH)
def test_quadrature_pair_field_gradient_matches_finite_differences(act):
    """quadrature_pair_field's G equals central differences of the numpy reference K in a_i, b_i."""
    points, sources = quad_case(np.random.default_rng(51), n=3, m=5, d=4)
    n, p = points.shape
    d = p - 2
    _, G = call_quad(points, sources, act, 128)
    eps = 1e-5
    G_fd = np.empty((n, d + 1))
    for k in range(d + 1):
        P = points.copy()
        P[:, k] += eps
        Kp = ref_K_quad(P, sources, act, 160)
        P[:, k] -= 2 * eps
        Km = ref_K_quad(P, sources, act, 160)
        G_fd[:, k] = (Kp - Km) / (2 * eps)
    assert_close_scaled(G, G_fd, 1e-6, act)


@pytest.mark.parametrize("act", ["relu", "tanh", "softplus"])
def test_quadrature_is_symmetric(act):
    """kappa_Q(w, w') = kappa_Q(w', w) for single-source calls with c = 1 (with biases)."""
    rng = np.random.default_rng(52)
    d = 6
    for _ in range(4):
        w1 = rng.standard_normal(d + 2)
        w2 = rng.standard_normal(d + 2)
        w1[:d] /= np.sqrt(d)
        w2[:d] *= 1.7 / np.sqrt(d)
        w1[d + 1] = w2[d + 1] = 1.0
        k12 = call_quad(w1[None, :], w2[None, :], act, 32)[0][0]
        k21 = call_quad(w2[None, :], w1[None, :], act, 32)[0][0]
        np.testing.assert_allclose(k12, k21, rtol=1e-13, atol=0)


@pytest.mark.parametrize("act", ["erf", "linear"])
def test_quadrature_agrees_with_closed_form_smooth(act):
    """Without bias, quadrature K and G equal the erf / linear closed forms to 1e-8 relative."""
    points, sources = closed_case(np.random.default_rng(53))
    n, p = points.shape
    Kc = np.empty(n)
    Gc = np.empty((n, p - 1))
    kernels.closed_form_pair_field(points, sources, kernels.ACTIVATION_CODES[act], Kc, Gc)
    # Order 64: this case has |a| up to 2.1, where erf at order 32 is only 3e-7 accurate
    # (measured); order 64 measured 3e-12. Linear is exact at any order.
    Kq, Gq = call_quad(points, sources, act, 64)
    assert_close_scaled(Kq, Kc, 1e-8)
    # the whole G, bias column included: d kappa / d b = 0 at b = 0 for odd activations
    assert_close_scaled(Gq, Gc, 1e-8)


# Relu, no bias, on closed_case(default_rng(53)) (|a| from 0.37 to 2.1), measured max error
# divided by max|K| resp. max|G| (the kink of relu, and the jump of relu' in G, make
# Gauss-Hermite converge only algebraically):
#   order  16: K 7.6e-3, G 7.6e-2      order  32: K 3.2e-3, G 3.3e-2
#   order  64: K 1.2e-3, G 2.7e-2      order 128: K 5.1e-4, G 1.8e-2
# The tolerances below leave a margin of about 2-3 over the measured errors.
RELU_QUAD_TOL = {32: (8e-3, 7e-2), 64: (3e-3, 5e-2)}


@pytest.mark.parametrize("order", [32, 64])
def test_quadrature_agrees_with_closed_form_relu(order):
    """Without bias, relu quadrature K and grad_a K approach the arc-cosine closed form."""
    points, sources = closed_case(np.random.default_rng(53))
    n, p = points.shape
    d = p - 2
    Kc = np.empty(n)
    Gc = np.empty((n, p - 1))
    kernels.closed_form_pair_field(points, sources, kernels.ACTIVATION_CODES["relu"], Kc, Gc)
    Kq, Gq = call_quad(points, sources, "relu", order)
    tol_K, tol_G = RELU_QUAD_TOL[order]
    assert_close_scaled(Kq, Kc, tol_K)
    # the closed form has no bias derivative (G[:, d] = 0); relu's d kappa / d b is not 0
    assert_close_scaled(Gq[:, :d], Gc[:, :d], tol_G)


# ---------------------------------------------------------------------------------------
# updates
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_euler_update(dtype):
    """euler_update sets W <- W + eta v in place."""
    rng = np.random.default_rng(60)
    W = rng.standard_normal((11, 6)).astype(dtype)
    V = rng.standard_normal((11, 6)).astype(dtype)
    expected = W.astype(np.float64) + 0.37 * V.astype(np.float64)
    kernels.euler_update(W, V, 0.37)
    np.testing.assert_allclose(W, expected, rtol=1e-14 if dtype == np.float64 else 1e-6,
                               atol=1e-14 if dtype == np.float64 else 1e-6)


def test_heavy_ball_update():
    """heavy_ball_update: buffer <- beta buffer - eta v, W <- W - buffer, over several steps."""
    rng = np.random.default_rng(61)
    W = rng.standard_normal((9, 5))
    buf = np.zeros_like(W)
    W_ref, buf_ref = W.copy(), buf.copy()
    for _ in range(3):
        V = rng.standard_normal(W.shape)
        kernels.heavy_ball_update(W, V, buf, 0.2, 0.9)
        buf_ref = 0.9 * buf_ref - 0.2 * V
        W_ref = W_ref - buf_ref
    np.testing.assert_allclose(buf, buf_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(W, W_ref, rtol=1e-13, atol=1e-13)


def test_langevin_update():
    """langevin_update moves trainable columns by eta v - eta lambda w + s xi; frozen ones stay."""
    rng = np.random.default_rng(62)
    m, p = 10, 7
    W = rng.standard_normal((m, p))
    V = rng.standard_normal((m, p))
    xi = rng.standard_normal((m, p))
    trainable = np.array([True, True, False, True, True, True, False])
    eta, lam, scale = 0.05, 0.3, math.sqrt(2 * 0.05 / 4.0)
    W0 = W.copy()
    kernels.langevin_update(W, V, xi, eta, lam, scale, trainable)
    expected = W0 + eta * V - eta * lam * W0 + scale * xi
    np.testing.assert_allclose(W[:, trainable], expected[:, trainable], rtol=1e-13, atol=1e-13)
    assert np.array_equal(W[:, ~trainable], W0[:, ~trainable])


def test_all_finite():
    """all_finite is True for finite arrays and False when any entry is NaN, +inf or -inf."""
    W = np.random.default_rng(63).standard_normal((6, 5))
    assert kernels.all_finite(W)
    assert kernels.all_finite(W.astype(np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        for idx in [(0, 0), (3, 2), (5, 4)]:
            B = W.copy()
            B[idx] = bad
            assert not kernels.all_finite(B), (bad, idx)
            assert not kernels.all_finite(B.astype(np.float32)), (bad, idx)
