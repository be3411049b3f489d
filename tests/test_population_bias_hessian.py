"""The analytic Hessian of the closed-form population risk with biases
(``kernels/population_bias_hessian.py``) against central finite differences of the velocity.

The reference is the Hessian of F by central differences of grad F = -v / m, with v the
velocity of ``PopulationProblem.evaluate`` (float64, the closed-form kernels with biases): it
shares the pair terms of ``population_bias`` with nothing in the Hessian kernel, whose blocks
are Gaussian moments of their own. The kernels are called through ``_hessian`` and ``_hvp``,
which build the arguments from the problem as ``PopulationProblem._closed_form_arguments``
does (to be switched to ``problem.hessian`` / ``problem.hessian_vector_product`` once those
use these kernels).
"""
import math

import numpy as np
import pytest
from numba import get_num_threads, set_num_threads

import meanfield as mf
from meanfield.kernels.population_bias_hessian import (
    bias_closed_form_hessian,
    bias_closed_form_hessian_vector_product,
    bias_hessian_singular_particles,
)

ACTIVATIONS = ("relu", "erf", "normal_cdf", "linear")


def _arguments(problem, W):
    """The kernels' arguments, as ``PopulationProblem._closed_form_arguments`` builds them."""
    model = problem.model
    m = W.shape[0]
    teacher = np.ascontiguousarray(problem.teacher.W, dtype=np.float64)
    return (np.ascontiguousarray(W, dtype=np.float64), teacher, model.activation_code, model.output_scale(m),
            1.0 / model.alpha_value(m), model.bias, model.train_readout)


def _hessian(problem, W, with_count=False):
    n_var = W.shape[0] * int(problem.model.trainable.sum())
    H = np.empty((n_var, n_var))
    count = bias_closed_form_hessian(*_arguments(problem, W), H)
    return (H, count) if with_count else H


def _hvp(problem, W, V):
    out = np.empty_like(W)
    bias_closed_form_hessian_vector_product(*_arguments(problem, W), np.ascontiguousarray(V, dtype=np.float64), out)
    return out


def _gradient(problem, W):
    return (-problem.evaluate(W).velocity[:, problem.model.trainable] / W.shape[0]).ravel()


def _fd_hessian(problem, W, h):
    """Central differences of grad F, one trainable coordinate at a time (not symmetrised)."""
    rows, cols = np.nonzero(np.broadcast_to(problem.model.trainable, W.shape))
    H = np.empty((rows.size, rows.size))
    probe = W.copy()
    for n, (r, c) in enumerate(zip(rows, cols)):
        probe[r, c] = W[r, c] + h
        plus = _gradient(problem, probe)
        probe[r, c] = W[r, c] - h
        minus = _gradient(problem, probe)
        probe[r, c] = W[r, c]
        H[:, n] = (plus - minus) / (2 * h)
    return H


def _fd_hessian_of_risk(problem, W, h):
    """Second central differences of F itself (4 risks per entry): a reference that does not use
    the velocity's gradient formulas (``population_bias.bias_pair``'s alpha, beta, gb)."""
    rows, cols = np.nonzero(np.broadcast_to(problem.model.trainable, W.shape))
    n = rows.size
    H = np.empty((n, n))

    def risk(shifts):
        probe = W.copy()
        for index, step in shifts:
            probe[rows[index], cols[index]] += step
        return problem.evaluate(probe).value

    for p in range(n):
        for q in range(p, n):
            H[p, q] = H[q, p] = (risk(((p, h), (q, h))) - risk(((p, h), (q, -h))) - risk(((p, -h), (q, h)))
                                 + risk(((p, -h), (q, -h)))) / (4 * h * h)
    return H


def _relative_error(H, reference):
    return float(np.abs(H - reference).max() / np.abs(reference).max())


def _problem(activation, *, bias=True, train_readout=True, scaling="mean_field", alpha=1.0, d=3, k=3, seed=0,
             teacher_bias=0.8):
    rng = np.random.default_rng(seed)
    model = mf.Model(d, activation, bias=bias, train_readout=train_readout, scaling=scaling, alpha=alpha)
    T = rng.standard_normal((k, d + 2))
    T[:, d] *= teacher_bias
    return mf.PopulationProblem(model, mf.Teacher(T, activation)), rng


def _state(problem, rng, m):
    d = problem.model.d
    W = rng.standard_normal((m, d + 2))
    W[:, :d] *= 1.2 / math.sqrt(d)
    if not problem.model.bias:
        W[:, d] = 0.0
    if problem.model.scaling == "sum":
        W[:, d + 1] = 1.0
    return W


# The settings the Model offers: mean-field (s = 1/m) at alpha = 1 and at a larger alpha, the
# sqrt(m) (NTK) alpha, the unnormalised sum (frozen c = 1), and a bias-free student with a
# biased teacher (b not a variable, but in the pair terms through the teacher).
SETTINGS = {
    "mean_field": dict(),
    "mean_field_frozen_readout": dict(train_readout=False),
    "lazy_alpha_10": dict(alpha=10.0),
    "lazy_alpha_10_frozen_readout": dict(alpha=10.0, train_readout=False),
    "sqrt_m": dict(alpha="sqrt_m"),
    "sum": dict(scaling="sum", train_readout=False),
    "student_without_bias": dict(bias=False),
    "student_without_bias_frozen_readout": dict(bias=False, train_readout=False),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_against_finite_differences_of_the_velocity(activation, setting):
    # Measured max relative error (max |H - H_fd| / max |H_fd|, h = 1e-5) over these
    # settings, 2026-12-02: relu 3e-10, erf 2e-10, normal_cdf 3e-10, linear 2e-10 (the
    # finite-difference error itself).
    problem, rng = _problem(activation, **SETTINGS[setting])
    W = _state(problem, rng, 5)
    H, count = _hessian(problem, W, with_count=True)
    assert count == 0
    reference = _fd_hessian(problem, W, 1e-5)
    assert _relative_error(H, reference) < 1e-8, _relative_error(H, reference)
    assert np.array_equal(H, H.T) or np.abs(H - H.T).max() <= 1e-14 * np.abs(H).max()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_vector_product_is_the_matrix_product(activation, setting):
    problem, rng = _problem(activation, seed=1, **SETTINGS[setting])
    W = _state(problem, rng, 6)
    mask = problem.model.trainable
    H = _hessian(problem, W)
    for _ in range(3):
        V = rng.standard_normal(W.shape)  # frozen columns nonzero: they must be ignored
        product = _hvp(problem, W, V)
        expected = H @ V[:, mask].ravel()
        assert np.abs(product[:, mask].ravel() - expected).max() <= 1e-13 * max(1.0, np.abs(expected).max())
        assert not np.any(product[:, ~mask])


# Edge cases, each a state of m = 6 particles in d = 3 (entries set over a random state):
def _edge_state(case, rng, d=3, m=6):
    W = rng.standard_normal((m, d + 2))
    W[:, :d] *= 1.2 / math.sqrt(d)
    if case == "a_zero_b_positive":
        W[0, :d] = 0.0
        W[0, d] = 0.7
    elif case == "a_zero_b_negative":
        W[0, :d] = 0.0
        W[0, d] = -0.4
    elif case == "two_a_zero":  # pairs with r_i = r_j = 0 (h_i, h_j both constant)
        W[0, :d] = 0.0
        W[0, d] = 0.7
        W[1, :d] = 0.0
        W[1, d] = 1.3
    elif case == "rho_minus_one":  # a_j = -lambda a_i, biases generic
        W[1, :d] = -1.7 * W[0, :d]
    elif case == "rho_minus_one_coinciding_hyperplanes":  # w_j = -lambda w_i: beta_j = -beta_i
        W[1, : d + 1] = -1.7 * W[0, : d + 1]
    elif case == "large_bias":
        W[0, d] = 5.0
        W[1, d] = -5.0
        W[2, d] = 5.0
        W[2, :d] *= 0.5
    elif case == "large_ratio":  # b / |a| = 90: relu(h_0) = h_0 but for 1e-1700
        W[0, :d] *= 1e-2 / np.linalg.norm(W[0, :d])
        W[0, d] = 0.9
    elif case == "huge_ratio":  # b / |a| = 9e5, a_0 nearly parallel to a_1 (|rho| > 0.925)
        W[0, :d] = 1e-6 * (W[1, :d] / np.linalg.norm(W[1, :d]) + 0.1 * W[0, :d] / np.linalg.norm(W[0, :d]))
        W[0, d] = 0.9
    elif case == "duplicates_different_ratios":  # collinear a, different b / |a|
        W[1, :d] = 2.0 * W[0, :d]
        W[1, d] = 2.0 * W[0, d] + 0.6
        W[2, :d] = W[0, :d]
        W[2, d] = W[0, d] - 0.5
    elif case == "duplicates_equal_ratios":  # exactly duplicated, and a scaled copy (same ratio)
        W[1] = W[0]
        W[2, : d + 1] = 1.5 * W[0, : d + 1]
    else:
        raise ValueError(case)
    return W


# Where the kink hyperplanes of two relu particles coincide, the risk is C^2 but not C^3 (the
# third derivatives jump): the central difference then errs by O(h), not O(h^2).
C2_ONLY = {"rho_minus_one_coinciding_hyperplanes", "duplicates_equal_ratios"}
EDGE_CASES = ("a_zero_b_positive", "a_zero_b_negative", "two_a_zero", "rho_minus_one",
              "rho_minus_one_coinciding_hyperplanes", "large_bias", "large_ratio", "huge_ratio",
              "duplicates_different_ratios", "duplicates_equal_ratios")


@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_at_edge_cases(activation, case):
    # Measured max relative error, 2026-12-02: at most 2e-10 everywhere except the relu cases
    # where two kink hyperplanes coincide (the central difference at h = 1e-7 errs by O(h):
    # 2e-8 and 4e-8) and the large ratio (differences of the risk at h = 1e-4: 3e-8).
    problem, rng = _problem(activation, seed=2)
    W = _edge_state(case, rng)
    H, count = _hessian(problem, W, with_count=True)
    assert count == 0 and np.isfinite(H).all()
    assert np.abs(H - H.T).max() <= 1e-14 * np.abs(H).max()
    c2_only = activation == "relu" and case in C2_ONLY
    if activation == "relu" and case == "large_ratio":
        # Reference: differences of the risk, independent of the velocity's gradient formulas
        # (whose relu bias force was wrong here while b / |a| was clipped at 50, before 93f88b3).
        reference = _fd_hessian_of_risk(problem, W, 1e-4)
        tolerance = 1e-6
    else:
        reference = _fd_hessian(problem, W, 1e-7 if c2_only else 1e-5)
        tolerance = 3e-7 if c2_only else 1e-8
    # Finite since Phi_2 saturates its limits at +-40 (7fcfc5c): before, Genz's remainder
    # overflowed to NaN for |h| ~ 1e4 and the velocity with it near a = 0.
    assert np.isfinite(reference).all()
    assert _relative_error(H, reference) < tolerance, _relative_error(H, reference)
    V = rng.standard_normal(W.shape)
    assert np.abs(_hvp(problem, W, V).ravel() - H @ V.ravel()).max() <= 1e-12 * np.abs(H).max()


@pytest.mark.parametrize("case", sorted(C2_ONLY))
def test_relu_hessian_is_continuous_where_hyperplanes_coincide(case):
    # The relu risk is twice differentiable at duplicated particles with equal bias ratios:
    # its Hessian there is the limit of the Hessians at nearby points (difference O(|dW|)),
    # and the finite differences converge to it at O(h).
    problem, rng = _problem("relu", seed=3)
    W = _edge_state(case, rng)
    H = _hessian(problem, W)
    scale = np.abs(H).max()
    # Measured (2026-12-02): |H(W + dW) - H(W)| / max |H| <= 8 |dW|_max-ish down to |dW| ~ 1e-14,
    # i.e. no rounding error of order sqrt(eps) near collinear pairs (s from |y|, Phi_2 at
    # 1 - rho^2 = s^2).
    for size in (1e-4, 1e-7, 1e-10, 1e-12):
        for _ in range(5):
            nearby = W + size * rng.standard_normal(W.shape)
            assert np.abs(_hessian(problem, nearby) - H).max() <= 50 * size * scale
    errors = [np.abs(_fd_hessian(problem, W, h) - H).max() / scale for h in (1e-4, 1e-5, 1e-6)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5, errors


def test_relu_particle_at_the_origin_is_reported_not_nan():
    # a_i = 0 and b_i = 0: relu(a_i . x + b_i) is 1-homogeneous in (a_i, b_i), F is not twice
    # differentiable. The kernels return finite entries (the particle's rows and columns 0:
    # relu'(0) = relu''(0) = 0, as in the velocity) and count the particle.
    problem, rng = _problem("relu", seed=4)
    W = _state(problem, rng, 5)
    W[3, :4] = 0.0
    H, count = _hessian(problem, W, with_count=True)
    assert count == 1
    assert list(bias_hessian_singular_particles(W, problem.model.activation_code, True)) == [3]
    assert np.isfinite(H).all()
    n_loc = int(problem.model.trainable.sum())
    rows = slice(3 * n_loc, 4 * n_loc)
    assert not np.any(H[rows]) and not np.any(H[:, rows])
    out = np.empty_like(W)
    V = rng.standard_normal(W.shape)
    assert bias_closed_form_hessian_vector_product(*_arguments(problem, W), V, out) == 1
    assert np.isfinite(out).all()
    # Away from it, the rest of the Hessian is the finite-difference one.
    keep = np.ones(H.shape[0], dtype=bool)
    keep[rows] = False
    reference = _fd_hessian(problem, W, 1e-5)[np.ix_(keep, keep)]
    assert _relative_error(H[np.ix_(keep, keep)], reference) < 1e-8


def test_singular_particles_only_for_relu_and_only_where_they_enter():
    W = np.zeros((4, 5))
    W[:, 4] = (1.0, 0.0, 2.0, 0.0)
    W[2, 0] = 0.3  # a != 0: regular
    W[3, 3] = 0.5  # b != 0: regular
    codes = mf.kernels.ACTIVATION_CODES
    assert list(bias_hessian_singular_particles(W, codes["relu"], True)) == [0, 1]
    # frozen readout and c_1 = 0: particle 1 does not enter F
    assert list(bias_hessian_singular_particles(W, codes["relu"], False)) == [0]
    for name in ("erf", "normal_cdf", "linear"):
        assert bias_hessian_singular_particles(W, codes[name], True).size == 0


@pytest.mark.parametrize("activation", ("erf", "normal_cdf", "linear"))
def test_smooth_activations_at_the_origin(activation):
    # a_i = 0 and b_i = 0 is a regular point for the smooth activations.
    problem, rng = _problem(activation, seed=5)
    W = _state(problem, rng, 5)
    W[1, :4] = 0.0
    H, count = _hessian(problem, W, with_count=True)
    assert count == 0
    assert _relative_error(H, _fd_hessian(problem, W, 1e-5)) < 1e-8


def test_results_are_independent_of_the_thread_count():
    problem, rng = _problem("relu", seed=6, d=5)
    W = _state(problem, rng, 8)
    W[1] = W[0]
    V = rng.standard_normal(W.shape)
    results = []
    before = get_num_threads()
    try:
        for threads in sorted({1, min(2, before), before}):
            set_num_threads(threads)
            results.append((_hessian(problem, W), _hvp(problem, W, V)))
    finally:
        set_num_threads(before)
    for H, product in results[1:]:
        assert np.array_equal(H, results[0][0]) and np.array_equal(product, results[0][1])


def test_student_equal_to_teacher_gives_a_positive_semidefinite_hessian():
    # At the global minimum F = 0 (student = teacher, mean-field with c = m c*), the Hessian
    # is the Gauss-Newton term s^2 E[grad h grad h^T] >= 0.
    rng = np.random.default_rng(7)
    d, k = 3, 4
    T = rng.standard_normal((k, d + 2))
    T[:, d + 1] = 1.0 / k
    for activation in ACTIVATIONS:
        problem = mf.PopulationProblem(mf.Model(d, activation, bias=True), mf.Teacher(T, activation))
        W = T.copy()
        W[:, d + 1] *= k  # h_m = (1/m) sum c_i sigma = f*
        assert abs(problem.evaluate(W).value) < 1e-12
        H = _hessian(problem, W)
        low = np.linalg.eigvalsh(H)[0]
        assert low >= -1e-12 * np.abs(H).max(), (activation, low)


@pytest.mark.parametrize("sign", (1.0, -1.0))
def test_relu_blocks_near_coinciding_hyperplanes_against_mpmath(sign):
    # The relu blocks of a pair whose kink hyperplanes nearly coincide (s = 1e-3 .. 1e-11),
    # against the same formulas in 40-digit arithmetic with Phi_2 by mpmath quadrature.
    # Measured (2026-12-02): absolute error <= 1.1e-16 (M, of size 0.6 for sign +1) and
    # 5e-17 (H); with Phi_2 at the rounded rho, M erred by 2e-9 at s ~ 1e-8.
    mp = pytest.importorskip("mpmath")
    from meanfield.kernels.population_bias_hessian import _pair_blocks
    mp.mp.dps = 40
    rng = np.random.default_rng(11)
    d = 3
    a_i = rng.standard_normal(d)
    b_i = 0.7
    perp = rng.standard_normal(d)
    perp -= (perp @ a_i) / (a_i @ a_i) * a_i
    perp /= np.linalg.norm(perp)

    def assemble(z, u1, u2):
        z0, z11, z12, z22, v1, v2, zb = (float(x) for x in z)
        u1 = np.array([float(x) for x in u1])
        u2 = np.array([float(x) for x in u2])
        B = np.zeros((d + 1, d + 1))
        B[:d, :d] = (z0 * np.eye(d) + z11 * np.outer(u1, u1) + z12 * (np.outer(u1, u2) + np.outer(u2, u1))
                     + z22 * np.outer(u2, u2))
        B[:d, d] = B[d, :d] = v1 * u1 + v2 * u2
        B[d, d] = zb
        return B

    def reference(a_i, a_j, b_i, b_j):
        ai = [mp.mpf(float(x)) for x in a_i]
        aj = [mp.mpf(float(x)) for x in a_j]
        bi, bj = mp.mpf(float(b_i)), mp.mpf(float(b_j))
        u = mp.fsum(x * x for x in ai)
        p = mp.fsum(x * y for x, y in zip(ai, aj))
        ri, rj = mp.sqrt(u), mp.sqrt(mp.fsum(x * x for x in aj))
        y = [aj[k] - p / u * ai[k] for k in range(d)]
        t = mp.sqrt(mp.fsum(x * x for x in y))
        rho, s = p / (ri * rj), t / rj
        Bi, Bj = bi / ri, bj / rj
        gi, gj = (Bi - rho * Bj) / s, (Bj - rho * Bi) / s
        zs = Bj / rho  # the integrand's step, of width s
        points = sorted({x for x in (zs - 50 * s, zs - s, zs, zs + s, zs + 50 * s) if x < Bi})
        P = mp.quad(lambda z: mp.npdf(z) * mp.ncdf((Bj - rho * z) / s), [-mp.inf] + points + [Bi])
        pdf_i, pdf_j = mp.npdf(Bi), mp.npdf(Bj)
        K = pdf_i / ri
        KR0 = K * (rj * s * mp.npdf(gj) + (bj - rho * rj * Bi) * mp.ncdf(gj))
        m_c = s * mp.npdf(gi) - rho * Bj * mp.ncdf(gi)
        M = (P, -Bi * pdf_i * mp.ncdf(gj) + rho * pdf_j * m_c, s * pdf_j * m_c,
             -pdf_j * (s * s * Bj * mp.ncdf(gi) + rho * s * mp.npdf(gi)),
             pdf_i * mp.ncdf(gj) + rho * pdf_j * mp.ncdf(gi), s * pdf_j * mp.ncdf(gi), P)
        H = (KR0, KR0 * (Bi ** 2 - 1), -Bi * K * t * mp.ncdf(gj), K * t * mp.npdf(gj), -Bi * KR0,
             K * t * mp.ncdf(gj), KR0)
        e1, e2 = [x / ri for x in ai], [x / t for x in y]
        return assemble(H, e1, e2), assemble(M, e1, e2)

    for s in (1e-3, 1e-6, 1e-8, 1e-9, 1e-11):
        a_j = sign * 1.3 * (a_i + s * np.linalg.norm(a_i) * perp)
        b_j = sign * 1.3 * b_i + 1e-3 * s
        u1, u2 = np.empty(d), np.empty(d)
        values = _pair_blocks(a_i, a_j, b_i, b_j, d, mf.kernels.ACTIVATION_CODES["relu"], u1, u2)
        H_ref, M_ref = reference(a_i, a_j, b_i, b_j)
        assert np.abs(assemble(values[14:21], u1, u2) - H_ref).max() <= 1e-15, s
        assert np.abs(assemble(values[7:14], u1, u2) - M_ref).max() <= 1e-15, s


# ---------------------------------------------------------------------------------------
# The landscape tools on the analytic Hessian, and their report of singular particles
# ---------------------------------------------------------------------------------------

class _AnalyticBiasProblem:
    """A biased closed-form PopulationProblem with the analytic Hessian, as the wiring in
    ``PopulationProblem`` will give it (``has_analytic_hessian``, ``hessian``,
    ``hessian_vector_product``, ``hessian_singularities``); the rest is delegated."""

    has_analytic_hessian = True

    def __init__(self, problem):
        self.problem = problem
        self.model = problem.model

    def evaluate(self, W, points=None, out=None):
        return self.problem.evaluate(W, points, out)

    def hessian(self, W):
        return _hessian(self.problem, np.asarray(W, dtype=np.float64))

    def hessian_vector_product(self, W, V):
        return _hvp(self.problem, np.asarray(W, dtype=np.float64), V)

    def hessian_singularities(self, W):
        return bias_hessian_singular_particles(W, self.model.activation_code, self.model.train_readout)


def test_landscape_tools_on_the_analytic_hessian():
    from meanfield import landscape
    problem, rng = _problem("relu", seed=8, d=4)
    W = _state(problem, rng, 6)
    analytic = _AnalyticBiasProblem(problem)
    H, error = landscape.hessian(analytic, W, return_error=True)
    H_fd, error_fd = landscape.hessian(problem, W, return_error=True)  # finite differences
    assert np.abs(H - H_fd).max() <= error_fd and error <= 1e-12 * np.abs(H).max()
    values = np.linalg.eigvalsh(H)
    for method in ("dense", "lanczos"):
        spectrum = landscape.spectrum_extremes(analytic, W, method=method)
        assert abs(spectrum.lambda_min - values[0]) <= 1e-8 * np.abs(values).max()
        assert abs(spectrum.lambda_max - values[-1]) <= 1e-8 * np.abs(values).max()
        assert spectrum.lambda_min_error < 1e-6


def test_landscape_reports_particles_where_f_is_not_twice_differentiable():
    from meanfield import landscape
    problem, rng = _problem("relu", seed=9, d=3)
    W = _state(problem, rng, 5)
    W[2, :4] = 0.0
    analytic = _AnalyticBiasProblem(problem)
    with pytest.warns(RuntimeWarning, match=r"not twice differentiable at particles \[2\]"):
        H, error = landscape.hessian(analytic, W, return_error=True)
    assert np.isfinite(H).all() and error == math.inf
    for method in ("dense", "lanczos"):
        with pytest.warns(RuntimeWarning, match=r"particles \[2\]"):
            spectrum = landscape.spectrum_extremes(analytic, W, method=method)
        assert spectrum.lambda_min_error == math.inf and spectrum.lambda_max_error == math.inf
    with pytest.warns(RuntimeWarning, match=r"particles \[2\]"):
        _, error = landscape.hessian(analytic, W, method="finite_difference", return_error=True)
    assert error == math.inf
    # Neither a minimum nor a saddle can be claimed there.
    with pytest.warns(RuntimeWarning):
        point = landscape.classify(analytic, W, grad_tol=math.inf, risk_threshold=-1.0)
    assert point.kind == "degenerate"


def test_kernels_refuse_what_they_do_not_compute():
    problem, rng = _problem("relu", seed=10)
    W = _state(problem, rng, 3)
    args = list(_arguments(problem, W))
    args[2] = mf.kernels.ACTIVATION_CODES["sigmoid"]
    with pytest.raises(ValueError, match="no closed form"):
        bias_closed_form_hessian(*args, np.empty((15, 15)))
    with pytest.raises(ValueError, match="shape"):
        bias_closed_form_hessian(*_arguments(problem, W), np.empty((14, 14)))
    with pytest.raises(TypeError, match="float64"):
        bias_closed_form_hessian_vector_product(*_arguments(problem, W), W.astype(np.float32), np.empty_like(W))
