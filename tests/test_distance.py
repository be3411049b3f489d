"""Distances between particle clouds, observables, sphere measures and rates (meanfield.distance)."""
import math

import numpy as np
import pytest
from scipy.linalg import sqrtm

import meanfield as mf
from meanfield import distance


def cloud(n, k, seed):
    return np.random.default_rng(seed).standard_normal((n, k))


def quantile_wp(x, wx, y, wy, p=2):
    """W_p^p on the line from the quantile functions, integrated exactly on the merged grid."""
    ix, iy = np.argsort(x), np.argsort(y)
    x, wx, y, wy = x[ix], wx[ix] / wx.sum(), y[iy], wy[iy] / wy.sum()
    Fx, Fy = np.cumsum(wx), np.cumsum(wy)
    q = np.unique(np.concatenate([[0.0], Fx, Fy, [1.0]]))
    q = q[q <= 1.0]
    mid = 0.5 * (q[1:] + q[:-1])
    qx = x[np.minimum(np.searchsorted(Fx, mid), x.size - 1)]
    qy = y[np.minimum(np.searchsorted(Fy, mid), y.size - 1)]
    return float(np.sum(np.diff(q) * np.abs(qx - qy) ** p))


def bures2(m1, S1, m2, S2):
    """Squared W2 between N(m1, S1) and N(m2, S2): |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)."""
    r = np.real(sqrtm(S2))
    return float(np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * np.real(sqrtm(r @ S1 @ r))))


# ----------------------------------------------------------------------------- exact W_p
def test_exact_w2_and_w1_of_a_translate_is_the_shift_length():
    """W2 and W1 between a weighted cloud and its translate by v are |v| (to rounding)."""
    X, v = cloud(60, 3, 0), np.array([0.3, -1.2, 0.5])
    weights = np.random.default_rng(1).uniform(0.1, 1.0, 60)
    for a in (None, weights):
        assert distance.wasserstein(X, X + v, a, a) == pytest.approx(np.linalg.norm(v), rel=1e-12)
        assert distance.wasserstein(X, X + v, a, a, p=1) == pytest.approx(np.linalg.norm(v), rel=1e-12)
    assert distance.wasserstein(X, X) == pytest.approx(0.0, abs=1e-12)


def test_one_dimensional_w2_matches_the_quantile_formula():
    """Exact W2 of (n, 1) clouds and wasserstein_1d equal the quantile-function integral (any sizes/weights)."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(37), 0.5 + 2 * rng.standard_normal(53)
    wx, wy = rng.uniform(0.1, 1, 37), rng.uniform(0.1, 1, 53)
    expected = math.sqrt(quantile_wp(x, wx, y, wy))
    assert distance.wasserstein(x[:, None], y[:, None], wx, wy) == pytest.approx(expected, rel=1e-10)
    assert distance.wasserstein_1d(x, y, wx, wy) == pytest.approx(expected, rel=1e-10)
    assert distance.wasserstein_1d(x, y, wx, wy, p=1) == pytest.approx(quantile_wp(x, wx, y, wy, p=1), rel=1e-10)
    # equal sizes, uniform weights: mean squared difference of the sorted samples
    u, w = rng.standard_normal(40), rng.standard_normal(40) ** 3
    assert distance.wasserstein_1d(u, w) == pytest.approx(math.sqrt(np.mean((np.sort(u) - np.sort(w)) ** 2)), rel=1e-12)


def test_gaussian_samples_are_sandwiched_by_gelbrich_and_the_noise_floor():
    """Two 2-D Gaussian samples (n = 2000): G^2 <= W2^2 <= G^2 + dX^2 + dY^2.

    G is the Bures closed form |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2) between
    the two *empirical* means and covariances. The lower bound is exact (Gelbrich: W2 between
    any two measures is at least the Bures distance of their first two moments). Comparing
    with the population parameters instead would need a tolerance of ~4 x 0.09 from the
    n^-1/2 fluctuation of the sample means alone, which would test little. The excess
    W2^2 - G^2 is the non-Gaussian sampling noise of each cloud, of the order of half the
    noise floor dX^2 = W2^2 between two independent samples of the first law (likewise dY);
    allowing dX^2 + dY^2 leaves a factor ~2 (observed excess 0.011-0.014 against ~0.028).
    """
    rng = np.random.default_rng(3)
    m1, m2 = np.zeros(2), np.array([1.0, -0.5])
    L1 = np.linalg.cholesky(np.array([[1.0, 0.3], [0.3, 0.5]]))
    L2 = np.linalg.cholesky(np.array([[0.4, -0.1], [-0.1, 1.2]]))
    n = 2000
    X, X2 = (m1 + rng.standard_normal((n, 2)) @ L1.T for _ in range(2))
    Y, Y2 = (m2 + rng.standard_normal((n, 2)) @ L2.T for _ in range(2))
    w2 = distance.wasserstein(X, Y) ** 2
    g2 = bures2(X.mean(0), np.cov(X.T, bias=True), Y.mean(0), np.cov(Y.T, bias=True))
    floor = distance.wasserstein(X, X2) ** 2 + distance.wasserstein(Y, Y2) ** 2
    assert g2 - 1e-10 <= w2 <= g2 + floor


def test_duplicated_points_with_halved_weights_give_the_same_distances():
    """A cloud with every point duplicated at half weight is the same measure for every distance."""
    rng = np.random.default_rng(4)
    X, Y = cloud(30, 2, 5), cloud(25, 2, 6) + 0.7
    a, b = rng.uniform(0.2, 1, 30), rng.uniform(0.2, 1, 25)
    Xd, ad = np.concatenate([X, X]), np.concatenate([a, a]) / 2
    for p in (1, 2):
        assert distance.wasserstein(Xd, Y, ad, b, p=p) == pytest.approx(
            distance.wasserstein(X, Y, a, b, p=p), rel=1e-12)
        assert distance.sliced_wasserstein(Xd, Y, ad, b, p=p) == pytest.approx(
            distance.sliced_wasserstein(X, Y, a, b, p=p), rel=1e-12)
    assert distance.sinkhorn_divergence(Xd, Y, 0.5, ad, b) == pytest.approx(
        distance.sinkhorn_divergence(X, Y, 0.5, a, b), rel=1e-7)
    # zero weights drop points; unnormalised weights are normalised
    Xz, az = np.concatenate([X, X + 100]), np.concatenate([a, np.zeros(30)])
    assert distance.wasserstein(Xz, Y, 3 * az, b) == pytest.approx(distance.wasserstein(X, Y, a, b), rel=1e-12)


def test_invalid_weights_are_refused():
    """Negative, NaN, infinite, zero-sum or wrongly shaped weights raise ValueError."""
    X, Y = cloud(5, 2, 7), cloud(6, 2, 8)
    for a in ([1, 1, -1, 1, 1], [1, 1, np.nan, 1, 1], [1, 1, np.inf, 1, 1], np.zeros(5), np.ones(4)):
        with pytest.raises(ValueError):
            distance.wasserstein(X, Y, a=np.asarray(a, float))
        with pytest.raises(ValueError):
            distance.sliced_wasserstein(X, Y, a=np.asarray(a, float))
    with pytest.raises(ValueError, match="columns"):
        distance.wasserstein(X, cloud(6, 3, 9))


def test_exact_solver_refuses_large_problems_and_auto_switches_to_sliced():
    """Above max_pairs "exact" raises with the memory needed; "auto" returns the sliced estimate."""
    X, Y = cloud(50, 3, 10), cloud(40, 3, 11)
    with pytest.raises(ValueError, match=r'GB.*method="sliced"'):
        distance.wasserstein(X, Y, max_pairs=1000)
    with pytest.raises(ValueError, match=r"0\.1 GB"):  # 2 dense float64 matrices of 2500 x 2500
        distance.wasserstein(cloud(2500, 2, 0), cloud(2500, 2, 1), max_pairs=10**6)
    auto = distance.wasserstein(X, Y, method="auto", max_pairs=1000, n_projections=300, seed=4)
    assert auto == distance.sliced_wasserstein(X, Y, n_projections=300, seed=4)
    assert distance.wasserstein(X, Y, method="auto") == distance.wasserstein(X, Y)


def test_unconverged_exact_solver_raises_instead_of_returning_a_value():
    """numItermax = 1 makes POT stop before optimality (result code 3): a RuntimeError, not a number."""
    X, Y = cloud(80, 3, 12), cloud(80, 3, 13)
    with pytest.raises(RuntimeError, match="numItermax reached"):
        distance.wasserstein(X, Y, num_iter_max=1)
    with pytest.raises(RuntimeError, match="numItermax reached"):
        distance.sphere_distance(np.column_stack([X, np.zeros(80), np.ones(80)]),
                                 np.column_stack([Y, np.zeros(80), np.ones(80)]), 3, num_iter_max=1)


# ----------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_divergence_is_zero_nonnegative_and_tends_to_w2_squared():
    """S_eps = 0 for equal measures (|S| < 1e-9); S_eps >= 0; |S_eps - W2^2| decreases with reg to < 5% at reg = 0.03.

    For these clouds (60 and 70 points, W2^2 = 0.67) the gap is 0.15, 0.08, 0.04, 0.013 at
    reg = 1, 0.3, 0.1, 0.03 (theory: O(reg log 1/reg)).
    """
    X = cloud(60, 2, 0)
    Y = cloud(70, 2, 1) * [1.5, 0.7] + [0.5, 0.0]
    assert distance.sinkhorn_divergence(X, X, 0.1) == 0.0
    # the same measure in another order goes through the solver (reg = 1: Sinkhorn crawls on
    # nearly coincident clouds at small reg, see the docstring)
    assert abs(distance.sinkhorn_divergence(X, X[::-1], 1.0)) < 1e-9
    w22 = distance.wasserstein(X, Y) ** 2
    gaps = []
    for reg in (1.0, 0.3, 0.1, 0.03):
        s = distance.sinkhorn_divergence(X, Y, reg)
        assert s >= 0
        gaps.append(abs(s - w22))
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.05 * w22
    for seed in range(5):  # different sizes, weights, p = 1 and 2, a range of reg
        rng = np.random.default_rng(seed)
        A, B = rng.standard_normal((rng.integers(5, 30), 2)), 0.5 * rng.standard_normal((rng.integers(5, 30), 2))
        for p in (1, 2):
            assert distance.sinkhorn_divergence(A, B, rng.choice([0.3, 1.0, 10.0]), p=p,
                                                a=rng.uniform(0.1, 1, len(A))) >= 0


def test_unconverged_sinkhorn_raises():
    """Too few Sinkhorn iterations raise RuntimeError (POT's sinkhorn2 would be silent by default)."""
    X, Y = cloud(30, 2, 2), cloud(30, 2, 3) + 1
    with pytest.raises(RuntimeError, match="did not converge"):
        distance.sinkhorn_divergence(X, Y, 0.1, num_iter_max=5)


# ----------------------------------------------------------------------------- sliced
def test_sliced_w2_of_a_translate_is_v_squared_over_k_within_its_standard_error():
    """SW2^2 of a translate by v has expectation |v|^2 / k: the estimate is within 4 of its own
    standard errors, and 20x more projections shrink the standard error (by ~sqrt(20))."""
    k, v = 5, np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    X = cloud(200, k, 14)
    target = v @ v / k
    errors = {}
    for n_projections in (100, 2000):
        for seed in range(3):
            value, error = distance.sliced_wasserstein(X, X + v, n_projections=n_projections, seed=seed,
                                                       return_error=True)
            assert abs(value**2 - target) < 4 * error
            errors.setdefault(n_projections, []).append(error)
    assert np.mean(errors[2000]) < np.mean(errors[100]) / 3


def test_sliced_directions_are_reproducible_and_leave_the_global_random_state_alone():
    """The same seed gives the same estimate, and numpy's global random state is not reseeded."""
    X, Y = cloud(50, 4, 15), cloud(60, 4, 16)
    state = np.random.get_state()[1].copy()
    first = distance.sliced_wasserstein(X, Y, seed=7)
    assert np.array_equal(np.random.get_state()[1], state)
    assert distance.sliced_wasserstein(X, Y, seed=7) == first
    assert distance.sliced_wasserstein(X, Y, seed=8) != first
    assert first <= distance.wasserstein(X, Y) + 1e-12  # SW_2 <= W_2 for every direction set


# ----------------------------------------------------------------------------- observables
def state(m, d, seed):
    return np.random.default_rng(seed).standard_normal((m, d + 2))


def test_observables_match_direct_numpy():
    """norm, readout, signed_norm and overlap equal |a_i|, c_i, c_i |a_i| and a_i . a*_j."""
    d = 4
    W, T = state(30, d, 17), state(3, d, 18)
    a, c = W[:, :d], W[:, d + 1]
    np.testing.assert_allclose(distance.observable(W, d, "norm"), np.sqrt((a**2).sum(1)), rtol=1e-14)
    np.testing.assert_array_equal(distance.observable(W, d, "readout"), c)
    np.testing.assert_allclose(distance.observable(W, d, "signed_norm"), c * np.sqrt((a**2).sum(1)), rtol=1e-14)
    overlap = distance.observable(W, d, "overlap", teacher=T)
    assert overlap.shape == (30, 3)
    np.testing.assert_allclose(overlap, np.einsum("id,jd->ij", a, T[:, :d]), rtol=1e-13)
    teacher = mf.Teacher(T)
    np.testing.assert_array_equal(distance.observable(W, d, "overlap", teacher=teacher), overlap)
    with pytest.raises(ValueError, match="teacher"):
        distance.observable(W, d, "overlap")
    with pytest.raises(ValueError, match="unknown observable"):
        distance.observable(W, d, "bias")
    with pytest.raises(ValueError, match="d \\+ 2"):
        distance.observable(W, d + 1, "norm")


def test_observable_w2_closed_forms():
    """W2 is 0 against itself and against a duplicated wider state; readout c vs 2c gives sqrt(mean c^2)."""
    d = 3
    W, T = state(40, d, 19), state(2, d, 20)
    # against a duplicated state the cumulative weights k/40 and k/80 differ by rounding, so
    # W2^2 is ~1e-16 rather than 0 and W2 ~1e-8
    for name in ("norm", "readout", "signed_norm"):
        assert distance.observable_w2(W, W, d, name) == 0.0
        assert distance.observable_w2(W, np.concatenate([W, W]), d, name) < 1e-7
    overlap = distance.observable_w2(W, np.concatenate([W, W, W]), d, "overlap", teacher=T)
    assert overlap.shape == (2,) and np.all(overlap < 1e-7)
    W2 = W.copy()
    W2[:, d + 1] *= 2
    c = W[:, d + 1]
    assert distance.observable_w2(W, W2, d, "readout") == pytest.approx(math.sqrt(np.mean(c**2)), rel=1e-12)
    assert distance.risk_gap(0.3, 0.25) == pytest.approx(0.05)
    np.testing.assert_allclose(distance.risk_gap([0.1, 0.2], [0.3, 0.1]), [0.2, 0.1])


# ----------------------------------------------------------------------------- sphere
def test_sphere_measure_of_a_student_equal_to_the_teacher_is_at_distance_zero():
    """A student computing the teacher's function (copies, rescaled a and c) has distance 0 and equal mass."""
    d, k = 4, 2
    teacher = mf.Teacher.orthonormal(d=d, k=k, rng=np.random.default_rng(0))
    T = teacher.W
    # 2 copies of each teacher neuron, a scaled by 3 and c by 1/3 (2-homogeneity), mean-field 1/m
    m = 2 * k
    W = np.concatenate([T, T])
    W[:, :d] *= 3.0
    W[:, d + 1] = (m / 2) * W[:, d + 1] / 3.0  # (1/m) sum over 2 copies of c_i |a_i| = c*_j
    W = np.concatenate([W, np.zeros((1, d + 2))])  # a = 0: no direction, dropped
    W[-1, d + 1] = 5.0
    dirs, weights = distance.sphere_measure(W, d)
    assert dirs.shape == (m, d) and np.allclose(np.linalg.norm(dirs, axis=1), 1)
    np.testing.assert_allclose(weights, np.abs(W[:m, d + 1]) * 3.0 / (m + 1))  # the state has m + 1 rows
    W = W[:m]
    for cost in ("geodesic", "chordal"):
        result = distance.sphere_distance(W, teacher, d, cost=cost)
        assert result.distance == pytest.approx(0.0, abs=1e-7)
        assert result.mass == pytest.approx(1.0) and result.mass_ref == pytest.approx(1.0)
        by_array = distance.sphere_distance(W, T, d, cost=cost, ref_normalisation="sum")
        assert by_array == result
    # the array read as a mean-field state instead has mass 1/k, but the same directions
    assert distance.sphere_distance(W, T, d).mass_ref == pytest.approx(1.0 / k)


@pytest.mark.parametrize("phi", [1e-6, 0.3, 2.0, math.pi - 1e-6])
def test_rotating_a_single_atom_by_phi_gives_the_angle_and_the_chord(phi):
    """One atom rotated by phi: geodesic W_p = phi and chordal W_p = 2 sin(phi / 2), accurate at every angle."""
    d = 3
    ref = np.array([[1.0, 0.0, 0.0, 0.0, 2.0]])
    W = np.array([[math.cos(phi), math.sin(phi), 0.0, 0.0, 2.0]])
    for p in (1, 2):
        assert distance.sphere_distance(W, ref, d, p=p).distance == pytest.approx(phi, rel=1e-9)
        chord = distance.sphere_distance(W, ref, d, cost="chordal", p=p).distance
        assert chord == pytest.approx(2 * math.sin(phi / 2), rel=1e-9)


def test_sphere_geodesic_cost_equals_arccos_and_masses_are_reported():
    """Geodesic W2 between random states equals the W2 with cost arccos(clip(u.v)); masses are sum |c||a|/m."""
    d = 3
    W, V = state(20, d, 21), state(15, d, 22)
    result = distance.sphere_distance(W, V, d)
    U, w = distance.sphere_measure(W, d)
    Z, z = distance.sphere_measure(V, d)
    import ot

    cost = np.arccos(np.clip(U @ Z.T, -1, 1)) ** 2
    assert result.distance == pytest.approx(math.sqrt(ot.emd2(w / w.sum(), z / z.sum(), cost)), rel=1e-6)
    assert result.mass == pytest.approx(np.sum(np.abs(W[:, d + 1]) * np.linalg.norm(W[:, :d], axis=1)) / 20)
    zero = W.copy()
    zero[:, d + 1] = 0
    assert math.isnan(distance.sphere_distance(zero, V, d).distance)


# ----------------------------------------------------------------------------- rates
WIDTHS = np.array([16, 32, 64, 128, 256])


def noisy_power_law(rng, sigma=0.3, n_seeds=20):
    return 2.0 * WIDTHS[:, None] ** -0.5 * np.exp(sigma * rng.standard_normal((WIDTHS.size, n_seeds)))


def test_rate_interval_covers_the_true_slope_at_about_its_level():
    """C m^-1/2 x lognormal noise, 20 seeds, 5 widths: the 95% interval covers -0.5, its width is
    within 35% of 2 x 1.96 x the delta-method slope s.e. (observed 0.89 x), and it covers in
    88-99% of 200 data sets (observed 92.5%: the percentile bootstrap undercovers slightly with
    20 seeds; binomial s.d. of the coverage 1.5%)."""
    sigma, n_seeds = 0.3, 20
    r = distance.rate(WIDTHS, noisy_power_law(np.random.default_rng(0), sigma, n_seeds))
    assert r.low < -0.5 < r.high and r.level == 0.95
    x = np.log(WIDTHS)
    se = math.sqrt((math.exp(sigma**2) - 1) / n_seeds / np.sum((x - x.mean()) ** 2))
    assert abs((r.high - r.low) / (2 * 1.96 * se) - 1) < 0.35
    covered = [distance.rate(WIDTHS, noisy_power_law(np.random.default_rng(s)), n_boot=1000, seed=s)
               for s in range(1, 201)]
    coverage = np.mean([c.low < -0.5 < c.high for c in covered])
    assert 0.88 <= coverage <= 0.99


def test_exact_power_law_gives_the_exact_slope_and_a_zero_width_interval():
    """values = 3 m^-1 for every seed: slope -1, prefactor 3, interval of zero width; NaN seeds are skipped."""
    values = np.repeat(3.0 / WIDTHS[:, None], 6, axis=1)
    values[1, 2:] = np.nan
    r = distance.rate(WIDTHS, values)
    assert r.slope == pytest.approx(-1.0, abs=1e-12)
    assert math.exp(r.intercept) == pytest.approx(3.0, rel=1e-12)
    assert r.high - r.low < 1e-12 and r.low == pytest.approx(-1.0, abs=1e-12)
    np.testing.assert_array_equal(r.counts, [6, 2, 6, 6, 6])
    with pytest.raises(ValueError, match="positive"):
        distance.rate(WIDTHS, -values)
    table = distance.rate_table([("w2 t=1", r), ("risk t=1", r)])
    assert "w2 t=1" in table and "-1.000" in table and "95%" in table


def test_plot_rates_draws_log_axes_one_line_per_time_and_writes_png(tmp_path):
    """Log-log axes, one legend entry and one dashed fit per time label, saved as PNG."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rng = np.random.default_rng(1)
    by_time = {"t=1": noisy_power_law(rng), "t=10": 0.5 * noisy_power_law(rng)}
    path = tmp_path / "rates.png"
    fig = distance.plot_rates(WIDTHS, by_time, path=path, n_boot=200)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 2 and labels[0].startswith("t=1: slope") and "[" in labels[0]
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sinkhorn_divergence_uses_the_full_entropic_cost():
    """S_eps is built from <C, P> + reg KL(P | a x b) on the Sinkhorn plans, not from POT's linear part <C, P>."""
    import ot
    from scipy.spatial.distance import cdist

    X, Y = cloud(20, 2, 23), cloud(30, 2, 24) + [0.3, 0.0]
    a, b = np.full(20, 1 / 20), np.full(30, 1 / 30)
    reg = 0.5

    def entropic(p, q, A, B):
        C = cdist(A, B, "sqeuclidean")
        P = ot.sinkhorn(p, q, C, reg, method="sinkhorn_log", numItermax=100_000, stopThr=1e-12)
        return np.sum(P * C) + reg * np.sum(P * np.log(P / np.outer(p, q)))

    expected = entropic(a, b, X, Y) - 0.5 * (entropic(a, a, X, X) + entropic(b, b, Y, Y))
    assert distance.sinkhorn_divergence(X, Y, reg) == pytest.approx(expected, rel=1e-6)
