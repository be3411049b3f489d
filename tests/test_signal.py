"""Signal propagation: maps against closed forms and finite differences, fixed points and depth
scales against iterated maps, the critical line, the compiled simulation against a numpy
reference and against the theory as the width grows."""
import math

import numpy as np
import pytest

from meanfield import kernels
from meanfield import signal as sp
from meanfield.kernels import deep_random

ALL = sp.ACTIVATIONS


def test_numpy_activations_match_the_kernels():
    z = np.linspace(-6, 6, 101)
    for name, code in kernels.ACTIVATION_CODES.items():
        want = np.array([kernels.activation(float(x), code) for x in z])
        want_d = np.array([kernels.activation_derivative(float(x), code) for x in z])
        np.testing.assert_allclose(sp.phi(z, name), want, rtol=1e-13, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(sp.dphi(z, name), want_d, rtol=1e-13, atol=1e-15, err_msg=name)


def test_closed_forms_against_monte_carlo():
    """The relu (arc-cosine) and erf (arcsine) kernels, independently of the quadrature."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 1_000_000))
    for q1, q2, c in [(0.7, 1.3, 0.4), (2.0, 0.5, -0.6)]:
        u1 = math.sqrt(q1) * z[0]
        u2 = math.sqrt(q2) * (c * z[0] + math.sqrt(1 - c * c) * z[1])
        for name in ("relu", "erf"):
            value, deriv = sp.pair_moments(q1, q2, c * math.sqrt(q1 * q2), name, "closed_form")
            samples = sp.phi(u1, name) * sp.phi(u2, name)
            d_samples = sp.dphi(u1, name) * sp.dphi(u2, name)
            assert abs(samples.mean() - value) < 5 * samples.std() / 1000, name
            assert abs(d_samples.mean() - deriv) < 5 * d_samples.std() / 1000, name


@pytest.mark.parametrize("name", ["relu", "erf", "linear"])
def test_quadrature_accuracy_as_documented(name):
    """The accuracy stated in the module docstring of meanfield.signal._maps, measured."""
    q = np.array([0.3, 1.0, 3.0])
    second, deriv, slope = sp.gaussian_moments(q, name, "closed_form")
    g_second, g_deriv, g_slope = sp.gaussian_moments(q, name, "quadrature")
    tol_1d = 1e-12
    np.testing.assert_allclose(g_second, second, rtol=tol_1d)
    np.testing.assert_allclose(g_deriv, deriv, rtol=tol_1d)
    np.testing.assert_allclose(g_slope, slope, rtol=tol_1d)
    c = np.linspace(-0.95, 0.95, 39)
    for qq in q:
        value, d = sp.pair_moments(qq, qq, qq * c, name, "closed_form")
        g_value, g_d = sp.pair_moments(qq, qq, qq * c, name, "quadrature")
        if name == "relu":  # measured: 2.1e-3 q and 2.6e-2 at order2 = 64
            assert np.abs(g_value - value).max() < 2.5e-3 * qq
            assert np.abs(g_d - d).max() < 3e-2
        else:  # measured: 5e-12 q and 2.4e-10 (erf, q = 3, the worst)
            assert np.abs(g_value - value).max() < 1e-10 * qq
            assert np.abs(g_d - d).max() < 1e-9


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus"])
def test_quadrature_converges_for_smooth_activations(name):
    """Without a closed form: the default orders against order 200 (measured: 4e-6 for tanh
    at q = 3, below 1e-11 otherwise; 1-D at order 100 against 300: 1.4e-11)."""
    c = np.linspace(-0.95, 0.95, 21)
    for q in (0.3, 1.0, 3.0):
        ref = sp.pair_moments(q, q, q * c, name, "quadrature", order2=200)
        got = sp.pair_moments(q, q, q * c, name)
        assert np.abs(got[0] - ref[0]).max() < 1e-5 and np.abs(got[1] - ref[1]).max() < 1e-4
        ref1 = sp.gaussian_moments(q, name, order=300)
        got1 = sp.gaussian_moments(q, name)
        np.testing.assert_allclose(got1, ref1, rtol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_slopes_are_derivatives_of_the_maps(name):
    """V'(q) and chi_1 = dC/dc at c = 1, chi_c = dC/dc at c < 1, by central differences."""
    sw2, sb2, q, h = 1.7, 0.1, 0.8, 1e-5
    _, _, slope = sp.gaussian_moments(q, name)
    fd = (sp.variance_map(q + h, sw2, sb2, name) - sp.variance_map(q - h, sw2, sb2, name)) / (2 * h)
    assert abs(sw2 * slope - fd) < 1e-7 * max(1, abs(fd))
    for c in (0.3, 0.8):
        _, deriv = sp.pair_moments(q, q, q * c, name)
        fd = (sp.correlation_map(c + h, q, sw2, sb2, name) - sp.correlation_map(c - h, q, sw2, sb2, name)) / (2 * h)
        assert abs(sw2 * deriv - fd) < 1e-7 * max(1, abs(fd)), (name, c)
    # chi_1: the slope of q12' in q12 at q12 = q (c = 1, one-sided) is sigma_w^2 E[phi'(sqrt(q) z)^2]
    dq12 = sp.covariance_map(q, q, q, sw2, sb2, name) - sp.covariance_map(q, q, q * (1 - h), sw2, sb2, name)
    # (relu: the arc-cosine kernel has a (1 - c)^(3/2) term, so the one-sided error is O(sqrt h))
    tol = 2e-3 if name == "relu" else 1e-4
    assert abs(dq12 / (q * h) - sw2 * sp.gaussian_moments(q, name)[1]) < tol, name


@pytest.mark.parametrize("name,sw2,sb2", [("tanh", 1.5, 0.05), ("tanh", 3.0, 0.05), ("erf", 2.5, 0.2),
                                          ("relu", 1.5, 0.1), ("sigmoid", 4.0, 0.1), ("softplus", 1.2, 0.3)])
def test_fixed_points_and_depth_scales_against_iterated_maps(name, sw2, sb2):
    """q* and c* are fixed points; iterating the maps converges to them geometrically with
    ratio V'(q*) and chi_c, i.e. depth scales xi_q and xi_c."""
    fp = sp.fixed_points(sw2, sb2, name)
    assert abs(sp.variance_map(fp.q_star, sw2, sb2, name) - fp.q_star) < 1e-12 * fp.q_star
    assert abs(sp.correlation_map(fp.c_star, fp.q_star, sw2, sb2, name) - fp.c_star) < 1e-11
    assert (fp.chi_1 > 1) == (fp.c_star < 1)
    # the variance map, from q* (1 + 1e-3): the gaps shrink by V'(q*) per layer
    q = fp.q_star * 1.001
    gaps = []
    for _ in range(6):
        q = float(sp.variance_map(q, sw2, sb2, name))
        gaps.append(q - fp.q_star)
    ratio = gaps[-1] / gaps[-2]
    assert abs(ratio - fp.slope_q) < 2e-3, (ratio, fp.slope_q)
    assert abs(-1 / math.log(ratio) - fp.xi_q) < 2e-2 * fp.xi_q
    c = fp.c_star - 1e-4 if fp.c_star == 1.0 else fp.c_star + 1e-4
    gaps = []
    for _ in range(6):
        c = float(sp.correlation_map(c, fp.q_star, sw2, sb2, name))
        gaps.append(c - fp.c_star)
    ratio = gaps[-1] / gaps[-2]
    assert abs(ratio - fp.chi_c) < 5e-3, (ratio, fp.chi_c)
    assert abs(-1 / math.log(ratio) - fp.xi_c) < 5e-2 * fp.xi_c


def test_relu_closed_forms_of_the_fixed_points():
    """relu: q* = sigma_b^2 / (1 - sigma_w^2 / 2), chi_1 = sigma_w^2 / 2, q* = inf beyond sigma_w^2 = 2."""
    for sw2, sb2 in [(1.0, 0.1), (1.9, 0.3)]:
        fp = sp.fixed_points(sw2, sb2, "relu")
        assert abs(fp.q_star - sb2 / (1 - sw2 / 2)) < 1e-12
        assert fp.chi_1 == pytest.approx(sw2 / 2, rel=1e-14) and fp.c_star == 1.0
    assert sp.q_fixed_point(2.5, 0.1, "relu") == math.inf
    fp_q = sp.fixed_points(1.9, 0.3, "relu", method="quadrature")
    assert fp_q.q_star == pytest.approx(0.3 / (1 - 0.95), rel=1e-12)


def test_critical_line():
    """tanh: sigma_w^2 = 1 at sigma_b^2 = 0 and increasing with the bias; relu: 2 everywhere;
    chi_1 = 1 on the curve and the phases on either side."""
    assert sp.critical_sigma_w2(0.0, "tanh") == pytest.approx(1.0, abs=1e-6)
    curve = sp.critical_curve([0.0, 0.05, 0.1, 0.2], "tanh")
    assert np.all(np.diff(curve) > 0)
    for sb2, sw2 in zip([0.05, 0.1, 0.2], curve[1:]):
        assert sp.chi_1_at(sw2, sb2, "tanh") == pytest.approx(1.0, abs=1e-9)
        assert sp.fixed_points(sw2 * 0.9, sb2, "tanh").c_star == 1.0
        assert sp.fixed_points(sw2 * 1.1, sb2, "tanh").c_star < 1.0
    np.testing.assert_allclose(sp.critical_curve([0.0, 0.3], "relu"), 2.0, rtol=1e-10)
    assert math.isnan(sp.critical_sigma_w2(0.1, "sigmoid", bracket=(0.1, 10.0)))
    xi, chi = sp.xi_c_grid([0.9 * curve[2], curve[2], 1.1 * curve[2]], [0.1], "tanh")
    assert xi[0, 1] > 50 * max(xi[0, 0], xi[0, 2])  # xi_c diverges at criticality
    assert chi[0, 0] < 1 < chi[0, 2]


# --------------------------------------------------------------------------- simulation
def _splitmix64(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _normals(seed, layer, N):
    """The (N, N + 1) standard normals of one layer (weights, then the bias), in numpy."""
    with np.errstate(over="ignore"):
        rows = _splitmix64(_splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) + np.uint64(layer))
                           + np.arange(N, dtype=np.uint64))
        n_pairs = (N + 2) // 2
        base = rows[:, None] + np.uint64(2) * np.arange(n_pairs, dtype=np.uint64)[None, :]
        u1 = ((_splitmix64(base) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
        u2 = ((_splitmix64(base + np.uint64(1)) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
    r = np.sqrt(-2 * np.log(u1))
    z = np.stack([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=-1).reshape(N, -1)
    return z[:, : N + 1]


@pytest.mark.parametrize("N", [7, 8])
@pytest.mark.parametrize("name", ALL)
def test_kernel_against_numpy_reference(N, name):
    rng = np.random.default_rng(1)
    X0 = rng.standard_normal((N, 4))
    depth, sw, sb, seed = 3, 1.3, 0.4, 12345678901234567
    H, Y = np.empty_like(X0), np.empty_like(X0)
    q, cross = np.empty((depth + 1, 4)), np.empty((depth + 1, 2))
    deep_random.deep_random_forward(X0, depth, sw, sb, kernels.ACTIVATION_CODES[name], np.uint64(seed), H, Y, q,
                                    cross)
    y = X0
    q_ref, cross_ref = [np.mean(X0**2, axis=0)], [np.mean(X0[:, ::2] * X0[:, 1::2], axis=0)]
    for layer in range(1, depth + 1):
        z = _normals(seed, layer, N)
        h = (sw / math.sqrt(N)) * z[:, :N] @ y + sb * z[:, N:]
        q_ref.append(np.mean(h**2, axis=0))
        cross_ref.append(np.mean(h[:, ::2] * h[:, 1::2], axis=0))
        y = sp.phi(h, name)
    np.testing.assert_allclose(q, np.array(q_ref), rtol=1e-12)
    np.testing.assert_allclose(cross, np.array(cross_ref), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(H, h, rtol=1e-12, atol=1e-14)


def test_counter_normals_are_standard_normal():
    """Kolmogorov-Smirnov on 10^5 of the counter-based normals (alpha = 1e-3)."""
    from scipy import stats

    z = _normals(7, 1, 316)[:, :316].ravel()
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_input_pairs_have_the_requested_statistics():
    X = sp.input_pairs(50, [1.0, 2.0], [0.3, -0.5], np.random.default_rng(0))
    q = np.mean(X**2, axis=0)
    np.testing.assert_allclose(q, [1, 1, 2, 2], rtol=1e-12)
    np.testing.assert_allclose(np.mean(X[:, 0] * X[:, 1]), 0.3, rtol=1e-12)
    np.testing.assert_allclose(np.mean(X[:, 2] * X[:, 3]) / 2, -0.5, rtol=1e-12)


def test_simulation_approaches_the_theory_as_the_width_grows():
    """tanh in the chaotic phase (sigma_w^2 = 2.5, sigma_b^2 = 0.1), three pairs, 8 layers.

    Fluctuations of q_l and c_l are O(N^-1/2) per network and the finite-width bias O(1/N), so
    the error of the mean over 6 networks must shrink as N grows (a factor 4 expected from 64
    to 1024; required: 2), and at N = 1024 each layer's mean must lie within 5 standard errors
    (over networks) of the theory, plus 2/N for the bias."""
    q0, c0, depth, sw2, sb2 = [1.0, 1.0, 0.5], [0.2, 0.6, 0.95], 8, 2.5, 0.1
    q_theory, c_theory = sp.propagate(q0, c0, depth, sw2, sb2, "tanh")
    errors = {}
    for N in (64, 256, 1024):
        sim = sp.simulate(q0, c0, depth, sw2, sb2, "tanh", N, n_networks=6, seed=3)
        np.testing.assert_allclose(sim.mean_q()[0], q0, rtol=1e-12)
        dq = sim.mean_q()[1:] - q_theory[1:]
        dc = sim.mean_c()[1:] - c_theory[1:]
        errors[N] = math.sqrt(np.mean((dq / q_theory[1:]) ** 2) + np.mean(dc**2))
        if N == 1024:
            assert np.all(np.abs(dq) < 5 * sim.stderr_q()[1:] + 2 / N)
            assert np.all(np.abs(dc) < 5 * sim.stderr_c()[1:] + 2 / N)
    assert errors[64] > errors[256] > errors[1024]
    assert errors[1024] < errors[64] / 2
