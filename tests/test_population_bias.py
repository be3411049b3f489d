"""The closed-form population pair terms with biases against independent references.

References kept here, sharing no code with the kernels:
* Phi_2: scipy's ``multivariate_normal.cdf`` and a 1-D adaptive quadrature of
  int_{-inf}^h phi(z) Phi((k - rho z) / s) dz;
* a pair term kappa: 1-D adaptive quadrature (scipy.integrate.quad) of the conditional
  expectation E[sigma(h_i) E[sigma(h_j) | h_i]], the inner one in closed form for a Gaussian;
* gradients: central finite differences (a 4-point stencil) of kappa and of the risk;
* the whole problem: Monte Carlo with 10^7 inputs, within 4 standard errors.
"""
import math

import numpy as np
import pytest
from numba import get_num_threads, set_num_threads
from scipy.integrate import quad
from scipy.special import erf, ndtr
from scipy.stats import multivariate_normal

import meanfield as mf
from meanfield import kernels
from meanfield.kernels._gaussian import bivariate_normal_cdf, bivariate_normal_excess
from meanfield.kernels.population_bias import bias_pair

# scipy's quad warns of roundoff at its tightest tolerances; the assertions bound the error.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")

CODES = {name: kernels.ACTIVATION_CODES[name] for name in ("relu", "erf", "normal_cdf", "linear")}


def npdf(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------------
# Phi_2
# ---------------------------------------------------------------------------------------

def phi2_by_quadrature(h, k, rho):
    s = math.sqrt((1.0 - rho) * (1.0 + rho))
    value, _ = quad(lambda z: npdf(z) * ndtr((k - rho * z) / s), -40.0, h, epsabs=1e-17, epsrel=1e-14,
                    limit=500, points=[k / rho] if rho != 0 and -40 < k / rho < h else None)
    return value


RHOS = (-1.0, -0.9999, -0.99, -0.93, -0.925, -0.9, -0.75, -0.5, -0.3, -0.1, 0.0, 0.2, 0.3, 0.6, 0.75,
        0.8, 0.9249, 0.925, 0.97, 0.999, 1.0)
LIMITS = ((0.0, 0.0), (1.0, -1.0), (-2.0, -3.0), (3.0, 2.5), (-5.0, 5.0), (0.3, 0.31), (-8.0, -7.5),
          (6.0, -1.0), (2.0, 2.0))


@pytest.mark.parametrize("rho", RHOS)
def test_bivariate_normal_cdf_against_scipy_and_quadrature(rho):
    # Measured worst absolute error over this grid: 1e-15 or below (2026-12-02).
    for h, k in LIMITS:
        ours = bivariate_normal_cdf(h, k, rho)
        if abs(rho) == 1.0:
            exact = ndtr(min(h, k)) if rho > 0 else max(0.0, ndtr(h) - ndtr(-k))
            assert abs(ours - exact) <= 2e-16, (h, k, rho, ours, exact)
            continue
        cov = [[1.0, rho], [rho, 1.0]]
        by_scipy = multivariate_normal(mean=[0.0, 0.0], cov=cov, abseps=1e-15, releps=1e-15).cdf([h, k])
        by_quad = phi2_by_quadrature(h, k, rho)
        assert abs(ours - by_scipy) <= 2e-15, (h, k, rho, ours, by_scipy)
        assert abs(ours - by_quad) <= 2e-15, (h, k, rho, ours, by_quad)


def test_bivariate_normal_excess_keeps_relative_accuracy_at_small_rho():
    # Phi_2 - Phi Phi ~ rho phi(h) phi(k): the excess must not lose it to cancellation.
    for rho in (1e-12, 1e-6, -1e-3, 0.1):
        for h, k in ((0.0, 0.0), (1.5, -0.5), (-3.0, -2.0)):
            exact = phi2_by_quadrature(h, k, rho) - ndtr(h) * ndtr(k)
            series = rho * npdf(h) * npdf(k) * (1.0 + rho * h * k / 2.0)  # first terms in rho
            ours = bivariate_normal_excess(h, k, rho)
            if abs(rho) <= 1e-6:
                assert ours == pytest.approx(series, rel=1e-9)
            else:
                assert ours == pytest.approx(exact, rel=1e-10, abs=1e-16)


def test_bivariate_normal_cdf_float32():
    for rho in (-1.0, -0.95, -0.5, 0.0, 0.4, 0.8, 0.96, 1.0):
        for h, k in LIMITS:
            ours = bivariate_normal_cdf(np.float32(h), np.float32(k), np.float32(rho))
            assert abs(float(ours) - bivariate_normal_cdf(h, k, float(np.float32(rho)))) <= 2e-6


# ---------------------------------------------------------------------------------------
# One pair: kappa by 1-D quadrature of the conditional expectation
# ---------------------------------------------------------------------------------------

def sigma(name, z):
    return {"relu": max(z, 0.0), "erf": math.erf(z / math.sqrt(2.0)), "normal_cdf": ndtr(z), "linear": z}[name]


def conditional_mean(name, mu, sd):
    """E[sigma(mu + sd Z)]."""
    if name == "relu":
        return max(mu, 0.0) if sd == 0 else sd * npdf(mu / sd) + mu * ndtr(mu / sd)
    if name == "normal_cdf":
        return ndtr(mu / math.sqrt(1.0 + sd * sd))
    if name == "erf":
        return 2.0 * ndtr(mu / math.sqrt(1.0 + sd * sd)) - 1.0
    return mu


def kappa_by_quadrature(name, a_i, b_i, a_j, b_j):
    """E[sigma(h_i) sigma(h_j)] = E_z[sigma(r_i z + b_i) E[sigma(h_j) | z]]."""
    r_i, r_j = np.linalg.norm(a_i), np.linalg.norm(a_j)
    if r_i == 0:
        return sigma(name, b_i) * conditional_mean(name, b_j, r_j)
    rho = float(np.clip(a_i @ a_j / (r_i * r_j), -1, 1)) if r_j > 0 else 0.0
    sd = r_j * math.sqrt(max(1.0 - rho * rho, 0.0))
    kinks = sorted({z for z in (-b_i / r_i, -b_j / (r_j * rho) if rho else 50.0) if -40 < z < 40})
    if name != "relu":
        kinks = []
    value, _ = quad(lambda z: sigma(name, r_i * z + b_i) * conditional_mean(name, b_j + r_j * rho * z, sd) * npdf(z),
                    -40.0, 40.0, epsabs=1e-16, epsrel=1e-14, limit=500, points=kinks or None)
    return value


def random_pairs(rng, count, d=3):
    """Pairs over |a| up to 4, |b| up to 3 (and 5), with rho = +-1 exactly, a = 0."""
    cases = []
    for t in range(count):
        a_i = rng.normal(size=d) / math.sqrt(d) * rng.uniform(0.2, 4.0)
        a_j = rng.normal(size=d) / math.sqrt(d) * rng.uniform(0.2, 4.0)
        b_i, b_j = rng.uniform(-3.0, 3.0, 2)
        kind = t % 6
        if kind == 1:
            a_j = a_i * rng.uniform(0.5, 2.0)  # rho = 1
        elif kind == 2:
            a_j = -a_i * rng.uniform(0.5, 2.0)  # rho = -1
        elif kind == 3:
            b_i = 5.0 * rng.choice((-1.0, 1.0))
        elif kind == 4:
            a_i = np.zeros(d)
        elif kind == 5:
            a_j, b_j = a_i.copy(), b_i  # the same neuron
        if t % 12 == 6:
            a_j *= 1e-3 / np.linalg.norm(a_j)  # b_j / |a_j| in the thousands
        cases.append((a_i, float(b_i), a_j, float(b_j)))
    return cases


@pytest.mark.parametrize("name", tuple(CODES))
def test_pair_kappa_against_conditional_quadrature(name):
    rng = np.random.default_rng(7 + list(CODES).index(name))
    for a_i, b_i, a_j, b_j in random_pairs(rng, 30):
        kappa, *_ = bias_pair(float(a_i @ a_j), float(np.linalg.norm(a_i)), float(np.linalg.norm(a_j)), b_i, b_j,
                              CODES[name])
        reference = kappa_by_quadrature(name, a_i, b_i, a_j, b_j)
        # Relative 1e-12, with an absolute floor at the quadrature's own accuracy for the
        # tiny values of nearly dead relu pairs.
        assert abs(kappa - reference) <= 1e-12 * abs(reference) + 1e-16, (name, a_i, b_i, a_j, b_j, kappa, reference)


def _kappa_of(name, a_i, b_i, a_j, b_j):
    return bias_pair(float(a_i @ a_j), float(np.linalg.norm(a_i)), float(np.linalg.norm(a_j)), b_i, b_j,
                     CODES[name])


@pytest.mark.parametrize("name", tuple(CODES))
def test_pair_gradient_is_derivative_of_kappa(name):
    rng = np.random.default_rng(70 + list(CODES).index(name))
    h = 1e-3
    for a_i, b_i, a_j, b_j in random_pairs(rng, 24):
        if not np.any(a_i) or (name == "relu" and np.linalg.norm(a_i - a_j) == 0 and b_i == b_j):
            continue  # a_i = 0 is a kink of relu at b_i; checked separately
        if name == "relu" and abs(abs(a_i @ a_j) - np.linalg.norm(a_i) * np.linalg.norm(a_j)) < 1e-12:
            continue  # collinear relu pairs: kappa is C^1 only there, checked by the limit test below
        _, alpha, beta, gb = _kappa_of(name, a_i, b_i, a_j, b_j)
        grad = np.append(alpha * a_j + beta * a_i, gb)
        fd = np.empty(a_i.size + 1)
        for t in range(a_i.size + 1):
            def at(step):
                e = np.zeros(a_i.size + 1)
                e[t] = step
                return _kappa_of(name, a_i + e[:-1], b_i + e[-1], a_j, b_j)[0]
            # fourth-order central difference: truncation O(h^4 kappa^(5))
            fd[t] = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
        assert np.allclose(grad, fd, rtol=1e-8, atol=1e-10), (name, grad, fd)


def test_relu_gradient_is_continuous_at_collinear_pairs():
    # rho = +-1 exactly: the kernel takes one-sided limits; the gradient is continuous there
    # (relu's pair term is C^1), so it must equal the gradient at a nearby generic pair.
    rng = np.random.default_rng(3)
    for sign in (1.0, -1.0):
        for _ in range(5):
            a_i = rng.normal(size=3)
            a_j = sign * a_i * rng.uniform(0.5, 2.0)
            b_i, b_j = rng.uniform(-2, 2, 2)
            at_limit = _kappa_of("relu", a_i, b_i, a_j, b_j)
            nudge = np.array([0.0, 0.0, 1e-7]) if abs(a_i[2]) < 0.5 else np.array([1e-7, 0.0, 0.0])
            near = _kappa_of("relu", a_i, b_i, a_j + nudge, b_j)
            for x, y in zip(at_limit, near):
                assert x == pytest.approx(y, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("sign", (1.0, -1.0))
def test_relu_pair_is_well_conditioned_near_duplicates(sign):
    # Nearly duplicated (sign 1) or antipodal (sign -1, relu(h) against relu(-h)) neurons:
    # 1 - |rho| at rounding level makes s = sqrt(1 - rho^2) ~ 1e-8 and every ratio over s
    # uncertain; kappa and its gradient are Lipschitz in rho, so they must stay within
    # r_i r_j |1 - |rho|| of their values at |rho| = 1 exactly (the first version lost 1e-10).
    rng = np.random.default_rng(17)
    for _ in range(20):
        a = rng.normal(size=4)
        scale = rng.uniform(0.5, 2.0)
        b = rng.uniform(-3.0, 3.0)
        r_i = float(np.linalg.norm(a))
        r_j = scale * r_i
        exact = bias_pair(sign * r_i * r_j, r_i, r_j, b, sign * scale * b, 0)
        for eps in (1e-16, 3e-16, 1e-14, 1e-12):
            near = bias_pair(sign * (1.0 - eps) * r_i * r_j, r_i, r_j, b, sign * scale * b, 0)
            bound = 2.0 * r_i * r_j * eps + 1e-15 * (r_i * r_j + b * b)
            assert abs(near[0] - exact[0]) <= bound, (eps, near, exact)
            assert abs(near[3] - exact[3]) <= 4.0 * r_j * eps**0.5 + 1e-14 * (r_j + abs(b)), (eps, near, exact)


def test_relu_pair_at_zero_weights():
    # a_i = 0: h_i = b_i is a constant; the gradient in a_i is E[x relu(h_j)] 1[b_i > 0] = Phi(b_j/r_j) a_j.
    a_j = np.array([0.6, -0.8, 0.0])
    for b_i in (-1.0, 0.7):
        kappa, alpha, beta, gb = _kappa_of("relu", np.zeros(3), b_i, a_j, 0.4)
        mean_j = npdf(0.4) + 0.4 * ndtr(0.4)
        assert kappa == pytest.approx(max(b_i, 0.0) * mean_j, rel=1e-15)
        assert alpha == pytest.approx(ndtr(0.4) if b_i > 0 else 0.0, rel=1e-15)
        assert gb == pytest.approx(mean_j if b_i > 0 else 0.0, rel=1e-15)
        # the same from the other side (a_j = 0)
        kappa2, *_ = _kappa_of("relu", a_j, 0.4, np.zeros(3), b_i)
        assert kappa2 == pytest.approx(kappa, rel=1e-15)


@pytest.mark.parametrize("name", ("relu", "erf", "linear"))
def test_bias_free_limit_matches_bias_free_kernels(name):
    rng = np.random.default_rng(11)
    d = 6
    W = np.zeros((9, d + 2))
    W[:, :d] = rng.normal(size=(9, d))
    W[:, d + 1] = rng.normal(size=9)
    W[3, :d] = 2.0 * W[1, :d]  # collinear
    W[4, :d] = -W[2, :d]
    K0, G0 = np.empty(9), np.empty((9, d + 1))
    K1, G1 = np.empty(9), np.empty((9, d + 1))
    kernels.closed_form_pair_field(W, W, CODES[name], K0, G0, False)
    kernels.bias_pair_field(W, W, CODES[name], K1, G1)
    assert np.allclose(K1, K0, rtol=1e-13, atol=1e-14)
    assert np.allclose(G1[:, :d], G0[:, :d], rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------
# The tiled field against a loop over pairs
# ---------------------------------------------------------------------------------------

def kappa_sums_by_quadrature(name, points, sources):
    """K_i = sum_j c_j kappa(w_i, w_j) with kappa by 1-D quadrature (slow: small sizes)."""
    d = points.shape[1] - 2
    K = np.zeros(len(points))
    for i, w_i in enumerate(points):
        for w_j in sources:
            K[i] += w_j[d + 1] * kappa_by_quadrature(name, w_i[:d], w_i[d], w_j[:d], w_j[d])
    return K


@pytest.mark.parametrize("name", tuple(CODES))
@pytest.mark.parametrize("d, n, m", [(5, 1, 1), (4, 7, 3), (1500, 37, 41)])
def test_field_matches_pairwise_reference(name, d, n, m):
    # d = 1500 makes the tiles 20 x 16 (general_tile_shape), so 37 x 41 crosses both edges.
    rng = np.random.default_rng(d + n + m)
    points = rng.normal(size=(n, d + 2))
    points[:, :d] *= rng.uniform(0.2, 3.0, size=(n, 1)) / math.sqrt(d)
    sources = rng.normal(size=(m, d + 2))
    sources[:, :d] *= rng.uniform(0.2, 3.0, size=(m, 1)) / math.sqrt(d)
    if n > 3 and m > 3:
        sources[0] = points[0]
        sources[1, :d] = -points[1, :d]
        points[2, :d] = 0.0
    K = np.empty(n)
    G = np.empty((n, d + 1))
    kernels.bias_pair_field(points, sources, CODES[name], K, G)
    K_ref = np.zeros(n)
    G_ref = np.zeros((n, d + 1))
    for i in range(n):
        for j in range(m):
            a_i, a_j = points[i, :d], sources[j, :d]
            kappa, alpha, beta, gb = _kappa_of(name, a_i, points[i, d], a_j, sources[j, d])
            c = sources[j, d + 1]
            K_ref[i] += c * kappa
            G_ref[i, :d] += c * (alpha * a_j + beta * a_i)
            G_ref[i, d] += c * gb
    scale = np.abs(sources[:, d + 1]).sum() * (1 + np.abs(points[:, :d + 1]).max())
    assert np.allclose(K, K_ref, rtol=1e-12, atol=1e-13 * scale)
    assert np.allclose(G, G_ref, rtol=1e-11, atol=1e-12 * scale)
    if d < 10 and n * m < 30:
        K_quad = kappa_sums_by_quadrature(name, points, sources)
        assert np.allclose(K, K_quad, rtol=1e-12, atol=1e-14 * scale)


@pytest.mark.parametrize("name", tuple(CODES))
def test_field_float32_close_to_float64(name):
    rng = np.random.default_rng(5)
    d, m = 7, 19
    W = rng.normal(size=(m, d + 2))
    W[:, :d] /= math.sqrt(d)
    W[3] = W[4]
    K64, G64 = np.empty(m), np.empty((m, d + 1))
    kernels.bias_pair_field(W, W, CODES[name], K64, G64)
    W32 = W.astype(np.float32)
    K32, G32 = np.empty(m, np.float32), np.empty((m, d + 1), np.float32)
    kernels.bias_pair_field(W32, W32, CODES[name], K32, G32)
    scale = np.abs(W[:, d + 1]).sum() * 3
    assert np.abs(K32 - K64).max() <= 2e-6 * scale
    assert np.abs(G32 - G64).max() <= 2e-6 * scale


def test_field_is_independent_of_the_thread_count():
    rng = np.random.default_rng(9)
    d, m = 30, 300
    W = rng.normal(size=(m, d + 2))
    W[:, :d] /= math.sqrt(d)
    results = []
    before = get_num_threads()
    try:
        for threads in sorted({1, min(2, before), before}):
            set_num_threads(threads)
            K, G = np.empty(m), np.empty((m, d + 1))
            kernels.bias_pair_field(W, W, CODES["relu"], K, G)
            results.append((K, G))
    finally:
        set_num_threads(before)
    for K, G in results[1:]:
        assert np.array_equal(K, results[0][0]) and np.array_equal(G, results[0][1])


# ---------------------------------------------------------------------------------------
# The whole problem: Monte Carlo and finite differences
# ---------------------------------------------------------------------------------------

def biased_problem(name, d=4, k=3, m=6, seed=0, readout=True):
    rng = np.random.default_rng(seed)
    T = np.zeros((k, d + 2))
    T[:, :d] = rng.normal(size=(k, d)) * 1.5 / math.sqrt(d)
    T[:, d] = rng.uniform(-2.0, 2.0, size=k)
    T[:, d + 1] = rng.normal(size=k) / k
    model = mf.Model(d=d, activation=name, bias=True, train_readout=readout)
    problem = mf.PopulationProblem(model, mf.Teacher(T, name))
    W = mf.initialize(model, m=m, rng=rng)
    W[:, :d] *= 2.0
    W[:, d] = rng.uniform(-3.0, 3.0, size=m)
    W[1] = W[0]  # duplicated particles
    return problem, W, T


@pytest.mark.parametrize("name", tuple(CODES))
def test_problem_against_monte_carlo(name):
    problem, W, T = biased_problem(name)
    assert problem.method == "closed_form" and "biases" in problem.describe()
    evaluation = problem.evaluate(W)
    d, m = problem.model.d, W.shape[0]
    rng = np.random.default_rng(123)
    n_total, chunk = 10_000_000, 500_000
    sums = {"value": 0.0, "value2": 0.0}
    grad = np.zeros_like(W)
    grad2 = np.zeros_like(W)

    def act(z):
        return {"relu": np.maximum(z, 0), "erf": erf(z / math.sqrt(2)), "normal_cdf": ndtr(z), "linear": z}[name]

    def dact(z):
        return {"relu": (z > 0) * 1.0, "erf": math.sqrt(2 / math.pi) * np.exp(-z * z / 2),
                "normal_cdf": np.exp(-z * z / 2) / math.sqrt(2 * math.pi), "linear": np.ones_like(z)}[name]

    for _ in range(n_total // chunk):
        X = rng.standard_normal((chunk, d))
        y = act(X @ T[:, :d].T + T[:, d]) @ T[:, d + 1]
        Z = X @ W[:, :d].T + W[:, d]
        f = act(Z) @ W[:, d + 1] / m
        r = f - y
        loss = 0.5 * r * r
        sums["value"] += loss.sum()
        sums["value2"] += (loss * loss).sum()
        # per-sample gradient of the loss in (a_i, b_i, c_i), summed; second moments per coordinate
        dZ = (r[:, None] * dact(Z)) * W[:, d + 1] / m
        ga = dZ.T @ X
        ga2 = (dZ * dZ).T @ (X * X)
        gc = (r[:, None] * act(Z) / m)
        grad[:, :d] += ga
        grad2[:, :d] += ga2
        grad[:, d] += dZ.sum(0)
        grad2[:, d] += (dZ * dZ).sum(0)
        grad[:, d + 1] += gc.sum(0)
        grad2[:, d + 1] += (gc * gc).sum(0)
    mean = sums["value"] / n_total
    sd = math.sqrt((sums["value2"] / n_total - mean * mean) / n_total)
    assert abs(evaluation.value - mean) <= 4 * sd + 1e-12, (evaluation.value, mean, sd)
    g_mean = grad / n_total
    g_sd = np.sqrt(np.maximum(grad2 / n_total - g_mean**2, 0) / n_total)
    velocity_mc = -m * g_mean
    assert np.all(np.abs(evaluation.velocity - velocity_mc) <= 4 * m * g_sd + 1e-12)


@pytest.mark.parametrize("name", tuple(CODES))
@pytest.mark.parametrize("readout", (True, False))
def test_problem_velocity_is_minus_m_gradient(name, readout):
    problem, W, _ = biased_problem(name, readout=readout, seed=4)
    W[2, :problem.model.d] = -W[3, :problem.model.d]  # rho = -1 with other biases
    v = problem.evaluate(W).velocity
    m = W.shape[0]
    h = 1e-5
    fd = np.zeros_like(W)
    for i in range(m):
        for t in range(W.shape[1]):
            if not problem.model.trainable[t]:
                continue
            E = np.zeros_like(W)
            E[i, t] = h
            fd[i, t] = -m * (problem.risk(W + E) - problem.risk(W - E)) / (2 * h)
    assert np.allclose(v, fd, rtol=1e-6, atol=1e-8)


def test_problem_is_zero_at_the_teacher_and_bias_free_runs_keep_their_kernels():
    for name in CODES:
        problem, _, T = biased_problem(name, m=3, k=3)
        W = T.copy()
        W[:, -1] *= 3  # the 1/m model: c_i = m c*_i reproduces the teacher
        evaluation = problem.evaluate(W)
        assert abs(evaluation.value) <= 1e-14
        assert np.abs(evaluation.velocity).max() <= 1e-12
    model = mf.Model(d=5, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=5, k=2))
    assert problem.method == "closed_form" and not problem.with_bias
    assert problem.has_analytic_hessian


@pytest.mark.parametrize("name", tuple(CODES))
@pytest.mark.parametrize("m", (1, 35, 52))
def test_self_interaction_tiles_match_general_tiles(name, m):
    # d = 1500: self tiles of 17 particles (self_tile_size), so m = 35 has an odd number of
    # blocks (a phantom block in the round robin) and m = 52 an even one.
    rng = np.random.default_rng(m)
    d = 1500
    W = rng.normal(size=(m, d + 2))
    W[:, :d] *= rng.uniform(0.2, 3.0, size=(m, 1)) / math.sqrt(d)
    if m > 30:
        W[5] = W[30]
        W[6, :d] = -W[29, :d]
        W[7, :d] = 0.0
    K_self, G_self = np.empty(m), np.empty((m, d + 1))
    K_gen, G_gen = np.empty(m), np.empty((m, d + 1))
    kernels.bias_pair_field(W, W, CODES[name], K_self, G_self, True)
    kernels.bias_pair_field(W, W, CODES[name], K_gen, G_gen, False)
    scale = np.abs(W[:, d + 1]).sum() * (1 + np.abs(W[:, :d + 1]).max())
    assert np.allclose(K_self, K_gen, rtol=1e-13, atol=1e-14 * scale)
    assert np.allclose(G_self, G_gen, rtol=1e-12, atol=1e-13 * scale)


@pytest.mark.parametrize("name", ("relu", "erf", "normal_cdf"))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 4e-15), (np.float32, 2e-7)])
def test_small_correlation_series_matches_the_exact_formulas(name, dtype, tol):
    # Pairs with |rho| <= 0.4 go through the Hermite series (population_bias.SERIES_RHO);
    # the exact formulas are the reference (series=False). Correlations spread over
    # [-0.4, 0.4] (d = 3 makes them large), |a| up to 4 and down to 1e-3, |b| up to 8 and one
    # at 60 (beyond the clip of beta), a = 0: the series' worst cases.
    rng = np.random.default_rng(21)
    d, m = 3, 60
    W = rng.normal(size=(m, d + 2))
    W[:, :d] *= rng.uniform(0.2, 4.0, size=(m, 1)) / np.linalg.norm(W[:, :d], axis=1, keepdims=True)
    W[:, d] = rng.uniform(-8.0, 8.0, size=m)
    W[0, :d] = 0.0
    W[1, :d] *= 1e-3 / np.linalg.norm(W[1, :d])
    W[2, d] = 60.0
    W[3, d] = -60.0
    W = W.astype(dtype)
    out = {}
    for series in (True, False):
        K, G = np.empty(m, dtype), np.empty((m, d + 1), dtype)
        kernels.bias_pair_field(W, W, CODES[name], K, G, True, series)
        out[series] = (K.astype(np.float64), G.astype(np.float64))
    A = W[:, :d].astype(np.float64)
    norms = np.linalg.norm(A, axis=1)
    rho = (A @ A.T) / np.maximum(np.outer(norms, norms), 1e-300)
    assert (np.abs(rho) <= 0.4).mean() > 0.2  # the series is exercised
    per_pair = np.abs(W[:, d + 1]).astype(np.float64)
    scale = per_pair.sum() * (1.0 + np.abs(W[:, :d + 1]).max()) ** 2
    assert np.abs(out[True][0] - out[False][0]).max() <= tol * scale
    assert np.abs(out[True][1] - out[False][1]).max() <= tol * scale


def test_nearly_collinear_relu_pair_force_is_accurate():
    # a_j = 2 a_i + delta u (u orthogonal to a_i), b_j = 2 b_i: sin(theta) = delta / |a_j| ~ 5e-9,
    # while 1 - rho rounds to 0 or 1e-16 and s from rho is 0 or ~1e-8: alpha = Phi_2(beta, beta;
    # rho) and beta are each off by ~1e-9, but G_0 = alpha a_j + beta a_i = (2 alpha + beta) a_i
    # + alpha delta u needs only 2 alpha + beta to full accuracy (the u part is O(delta)), and
    # their errors cancel there (measured: 0.75298033033878 both ways). References, with
    # Z_2 = rho Z_1 + s V and s, rho from the construction: alpha = E_V[Phi(min(beta_i,
    # (beta_j - s V) / rho))], beta = E[delta(h_i) relu(h_j)] in closed form given s, and the
    # bias force E[H(h_i) relu(h_j)] = r_j rho E_V[phi(m) + c Phi(-m)], c = (s V + beta_j) / rho,
    # m = max(-beta_i, -c) (insensitive to s: a check of the rest); 1-D quadratures with one kink.
    rng = np.random.default_rng(12)
    d = 6
    for trial in range(4):
        a_i = rng.normal(size=d)
        u = rng.normal(size=d)
        u -= (u @ a_i) / (a_i @ a_i) * a_i
        u /= np.linalg.norm(u)
        delta = 1e-8 * np.linalg.norm(a_i)
        a_j = 2.0 * a_i + delta * u
        b_i = rng.uniform(-1.0, 1.0)
        W = np.zeros((2, d + 2))
        W[0, :d], W[0, d], W[0, d + 1] = a_i, b_i, 0.0
        W[1, :d], W[1, d], W[1, d + 1] = a_j, 2.0 * b_i, 1.0
        K, G = np.empty(2), np.empty((2, d + 1))
        kernels.bias_pair_field(W, W, CODES["relu"], K, G, trial % 2 == 0)
        r_i, r_j = np.linalg.norm(a_i), np.linalg.norm(a_j)
        s = delta / r_j
        rho = math.sqrt((1.0 - s) * (1.0 + s))
        beta_i, beta_j = b_i / r_i, 2.0 * b_i / r_j

        def integrand(v):
            c = (s * v + beta_j) / rho
            low = max(-beta_i, -c)
            return npdf(v) * (npdf(low) + c * ndtr(-low))

        kink = (rho * beta_i - beta_j) / s
        value, _ = quad(integrand, -40.0, 40.0, epsabs=1e-17, epsrel=1e-14, limit=500,
                        points=[kink] if abs(kink) < 40 else None)
        assert G[0, d] == pytest.approx(r_j * rho * value, rel=1e-12, abs=1e-14), trial
        alpha, _ = quad(lambda v: npdf(v) * ndtr(min(beta_i, (beta_j - s * v) / rho)), -40.0, 40.0, epsabs=1e-17,
                        epsrel=1e-14, limit=500, points=[-kink] if abs(kink) < 40 else None)
        gamma = (beta_j - rho * beta_i) / s
        beta = npdf(beta_i) * r_j / r_i * (s * npdf(gamma) + (beta_j - rho * beta_i) * ndtr(gamma))
        assert G[0, :d] @ a_i / (a_i @ a_i) == pytest.approx(2.0 * alpha + beta, rel=1e-13), trial


@pytest.mark.parametrize("name", tuple(CODES))
def test_problem_hessian_is_the_derivative_of_the_velocity(name):
    # Through the problem API (kernels.bias_closed_form_hessian is tested in detail in
    # tests/test_population_bias_hessian.py): H = -(1/m) d v / d x by central differences.
    problem, W, _ = biased_problem(name, d=3, k=2, m=4, seed=6)
    assert problem.has_analytic_hessian
    model = problem.model
    mask = model.trainable
    m = W.shape[0]
    H = problem.hessian(W)
    n_loc = int(mask.sum())
    h = 1e-6
    fd = np.empty_like(H)
    for i in range(m):
        for col, t in enumerate(np.flatnonzero(mask)):
            E = np.zeros_like(W)
            E[i, t] = h
            dv = (problem.evaluate(W + E).velocity - problem.evaluate(W - E).velocity) / (2 * h)
            fd[:, i * n_loc + col] = -dv[:, mask].ravel() / m
    assert np.allclose(H, fd, rtol=1e-6, atol=1e-7 * np.abs(H).max())
    V = np.random.default_rng(1).normal(size=W.shape)
    Hv = problem.hessian_vector_product(W, V)
    assert np.allclose(Hv[:, mask].ravel(), H @ V[:, mask].ravel(), rtol=1e-12, atol=1e-12 * np.abs(H).max())
    assert len(problem.hessian_singularities(W)) == 0


def test_relu_particle_at_the_origin_is_reported_as_singular():
    problem, W, _ = biased_problem("relu", d=3, k=2, m=4, seed=6)
    W[2, :problem.model.d + 1] = 0.0  # a = 0 and b = 0: relu(a . x + b) has no second derivative there
    assert list(problem.hessian_singularities(W)) == [2]
    assert np.isfinite(problem.hessian(W)).all()


def test_row_degree_keeps_the_design_truncation():
    # A row's series degree L is the smallest with r^(L+1) <= 0.4^41 (r its largest |rho| <= 0.4);
    # pairs beyond 0.4 take the exact formulas and do not count.
    from meanfield.kernels.population_bias import SERIES_RHO, _row_degree

    design = SERIES_RHO ** 41
    for largest in (1e-3, 0.05, 0.1, 0.3, 0.39):
        rho = np.array([0.0, -largest, largest / 2, 0.9, -0.95])
        L = _row_degree(rho, rho.size, SERIES_RHO, 40)
        assert largest ** (L + 1) <= design * (1 + 1e-12) and (L == 0 or largest ** L > design)
    assert _row_degree(np.zeros(4), 4, SERIES_RHO, 40) == 0
    assert _row_degree(np.array([0.4, 0.1]), 2, SERIES_RHO, 40) == 40
