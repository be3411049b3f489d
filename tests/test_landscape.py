"""meanfield.landscape: Hessians, classification of end points, precise descent, the census of
spurious minima, mode connectivity, and the sweep features they use ([sweep.zip], seed ranges)."""
import json
import math
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest

import meanfield as mf
from meanfield import landscape, sweep
from meanfield.cli import main


def safran_shamir(k, n=None):
    """F(W) = 1/2 E[(sum_i relu(w_i.x) - sum_j relu(e_j.x))^2], x ~ N(0, I_k), frozen c = 1."""
    model = mf.Model(d=k, activation="relu", scaling="sum", train_readout=False)
    return model, mf.PopulationProblem(model, mf.Teacher.orthonormal(d=k, k=k, readout="sum"))


def linear_quadratic(m=5, d=4, seed=0):
    """Linear activation, frozen readout: F(a) = 1/2 E[(s sum_i c_i a_i.x - y)^2] is quadratic in a
    with Hessian blocks H_ij = s^2 c_i c_j I_d (E[x x^T] = I), s = 1/m."""
    model = mf.Model(d=d, activation="linear", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=2, activation="linear"))
    W = mf.initialize(model, m, np.random.default_rng(seed))
    c = W[:, d + 1]
    exact = np.kron(np.outer(c, c) / m**2, np.eye(d))
    return problem, W, exact


def test_engine_objective_is_the_safran_shamir_risk():
    """Monte Carlo of 1/2 E[(sum relu(W x) - sum relu(V x))^2] against the closed form (4 standard errors)."""
    k = 5
    model, problem = safran_shamir(k)
    W = mf.initialize(model, 6, np.random.default_rng(1), mf.Init(a="gaussian", tau=1.0))
    a = W[:, :k]
    assert np.allclose(W[:, k + 1], 1.0)
    assert abs(np.std(a) - 1 / math.sqrt(k)) < 0.2 / math.sqrt(k)  # w_i ~ N(0, I_k / k)
    X = np.random.default_rng(2).standard_normal((400_000, k))
    loss = 0.5 * (np.maximum(X @ a.T, 0).sum(1) - np.maximum(X, 0).sum(1)) ** 2
    assert abs(problem.risk(W) - loss.mean()) < 4 * loss.std() / math.sqrt(loss.size)


def test_dense_hessian_of_a_quadratic():
    problem, W, exact = linear_quadratic()
    H, error = landscape.hessian(problem, W, return_error=True)
    assert H.shape == (W.shape[0] * 4,) * 2
    assert np.abs(H - exact).max() < 1e-10 * np.abs(exact).max()
    assert error < 1e-8 * np.linalg.norm(exact, 2)
    assert np.linalg.norm(H - exact, 2) <= error + 1e-14  # the error bound holds


def test_lanczos_extremes_of_a_quadratic():
    problem, W, exact = linear_quadratic(m=12, d=6)
    values = np.linalg.eigvalsh(exact)
    spectrum = landscape.spectrum_extremes(problem, W, method="lanczos")
    assert spectrum.method == "lanczos"
    assert abs(spectrum.lambda_max - values[-1]) <= max(spectrum.lambda_max_error, 1e-12) + 1e-10 * values[-1]
    assert abs(spectrum.lambda_min - values[0]) <= max(spectrum.lambda_min_error, 1e-12) + 1e-10 * values[-1]
    operator = landscape.hessian_operator(problem, W)
    u = np.random.default_rng(3).standard_normal(exact.shape[0])
    assert np.allclose(operator.matvec(u), exact @ u, rtol=0, atol=1e-9 * np.abs(exact @ u).max())


def test_lanczos_agrees_with_dense_on_a_relu_mean_field_network():
    """Non-quadratic case: extremes by Lanczos within their error bounds of the dense ones."""
    model = mf.Model(d=6, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=6, k=2))
    W = mf.initialize(model, 30, np.random.default_rng(4))
    dense = landscape.spectrum_extremes(problem, W, method="dense")
    lanczos = landscape.spectrum_extremes(problem, W, method="lanczos")
    H, error = landscape.hessian(problem, W, return_error=True)
    assert error < 1e-6 * np.linalg.norm(H, 2)  # documented FD accuracy at a generic relu point
    for a, b, e in ((dense.lambda_min, lanczos.lambda_min, lanczos.lambda_min_error),
                    (dense.lambda_max, lanczos.lambda_max, lanczos.lambda_max_error)):
        assert abs(a - b) <= dense.lambda_min_error + e + 1e-8 * abs(dense.lambda_max)


class _AnalyticQuadratic:
    """A problem wrapper that offers the exact Hessian (the contract of the problems' analytic Hessians)."""

    has_analytic_hessian = True

    def __init__(self, problem, exact):
        self.problem, self.model, self.exact = problem, problem.model, exact

    def evaluate(self, W, points=None, out=None):
        return self.problem.evaluate(W, points, out)

    def hessian(self, W):
        return self.exact

    def hessian_vector_product(self, W, V):
        out = np.zeros_like(V)
        out[:, self.model.trainable] = (self.exact @ V[:, self.model.trainable].ravel()).reshape(V.shape[0], -1)
        return out


def test_auto_uses_the_analytic_hessian_when_the_problem_has_one():
    problem, W, exact = linear_quadratic()
    wrapped = _AnalyticQuadratic(problem, 2 * exact)  # deliberately different: which one is used shows
    assert np.allclose(landscape.hessian(wrapped, W), 2 * exact)
    assert np.allclose(landscape.hessian(wrapped, W, method="finite_difference"), exact, atol=1e-12)
    u = np.ones(exact.shape[0])
    assert np.allclose(landscape.hessian_operator(wrapped, W).matvec(u), 2 * exact @ u)
    quadrature = mf.PopulationProblem(problem.model, problem.teacher, method="quadrature", quadrature_order=4)
    with pytest.raises(ValueError, match="no analytic Hessian"):
        landscape.hessian(quadrature, W, method="analytic")


def _symmetric_critical_point(k):
    """All n = k students equal to r (1, ..., 1): by symmetry a critical point once dF/dr = 0."""
    model, problem = safran_shamir(k)

    def state(r):
        W = np.zeros((k, k + 2))
        W[:, :k] = r
        W[:, k + 1] = 1.0
        return W

    def slope(r):
        return -problem.evaluate(state(r)).velocity[:, :k].sum()

    r = brentq(slope, 0.01, 2.0, xtol=1e-15)
    return problem, state(r)


def test_hand_built_saddle_is_classified_as_saddle():
    problem, W = _symmetric_critical_point(4)
    end = landscape.classify(problem, W, grad_tol=1e-9, risk_threshold=1e-6)
    assert end.grad_norm < 1e-9
    assert end.kind == "saddle" and end.lambda_min < -10 * end.lambda_min_error
    # Independent check: F decreases along the computed negative-curvature direction.
    spectrum = landscape.spectrum_extremes(problem, W)
    V = np.zeros_like(W)
    V[:, problem.model.trainable] = spectrum.vector_min.reshape(W.shape[0], -1)
    eps = 1e-3
    drop = 0.5 * (problem.risk(W + eps * V) + problem.risk(W - eps * V)) - problem.risk(W)
    assert drop < 0 and abs(drop - 0.5 * eps**2 * spectrum.lambda_min) < 0.05 * abs(drop)


def test_student_equal_to_teacher_is_a_strict_global_minimum():
    model, problem = safran_shamir(4)
    W = problem.teacher.W[::-1].copy()  # a permutation of the teacher
    end = landscape.classify(problem, W, grad_tol=1e-9, risk_threshold=1e-6)
    assert end.kind == "global_minimum" and end.risk < 1e-14 and end.grad_norm < 1e-12
    assert end.lambda_min > 10 * end.lambda_min_error  # strict: positive definite Hessian
    assert end.grad_tol == 1e-9 and end.risk_threshold == 1e-6


def test_unconverged_point_is_not_converged():
    model, problem = safran_shamir(3)
    W = mf.initialize(model, 3, np.random.default_rng(0), mf.Init(a="gaussian"))
    end = landscape.classify(problem, W, grad_tol=1e-9, risk_threshold=1e-6)
    assert end.kind == "not_converged" and end.grad_norm > 1e-9


def test_noisy_linear_minimum_is_degenerate():
    """Linear student, label noise: every minimiser has risk noise^2 / 2 > threshold and the
    Hessian s^2 c c^T (x) I has a null space (m > 1): a degenerate critical point."""
    model = mf.Model(d=3, activation="linear", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=3, k=3, activation="linear"), noise_std=0.5)
    W = mf.initialize(model, 4, np.random.default_rng(0))
    result = landscape.descend_to_precision(problem, W, grad_tol=1e-11, step=1.0)
    assert result.converged
    end = landscape.classify(problem, result.W, grad_tol=1e-9, risk_threshold=1e-6, eig_tol=1e-8)
    assert abs(end.risk - 0.125) < 1e-12
    assert end.kind == "degenerate"


def test_spurious_minimum_is_found_and_is_a_local_minimum():
    """k = n = 8 (Safran & Shamir): some seeds end at a spurious minimum; random perturbations
    of it all raise the risk (an independent check of the positive spectrum)."""
    model, problem = safran_shamir(8)
    for seed in range(30):
        W0 = mf.initialize(model, 8, np.random.default_rng(seed), mf.Init(a="gaussian"))
        result = landscape.descend_to_precision(problem, W0, grad_tol=1e-9, step=0.1, max_steps=20_000)
        end = landscape.classify(problem, result.W, grad_tol=1e-9, risk_threshold=1e-6)
        if end.kind == "spurious_minimum":
            break
    else:
        pytest.fail("no spurious minimum in 30 seeds at k = n = 8")
    assert end.risk > 1e-3 and end.lambda_min > 1e3 * end.lambda_min_error
    rng = np.random.default_rng(0)
    base = problem.risk(result.W)
    for _ in range(20):
        V = rng.standard_normal(result.W.shape)
        V[:, ~model.trainable] = 0
        V *= 1e-3 / np.linalg.norm(V)
        assert problem.risk(result.W + V) > base


def test_precise_descent_reaches_tolerance_and_halves_a_divergent_step():
    model, problem = safran_shamir(4)
    W0 = mf.initialize(model, 4, np.random.default_rng(5), mf.Init(a="gaussian"))
    result = landscape.descend_to_precision(problem, W0, grad_tol=1e-9, step=100.0, max_steps=50_000)
    assert result.converged and result.grad_norm <= 1e-9
    assert result.rejected >= 5  # 100 -> below the stability limit ~2 / (m lambda_max) takes halvings
    assert abs(problem.evaluate(result.W).grad_norm - result.grad_norm) < 1e-15
    assert result.risk <= problem.risk(W0)
    m32 = mf.Model(d=4, activation="relu", scaling="sum", train_readout=False, dtype="float32")
    with pytest.raises(ValueError, match="float64"):
        landscape.descend_to_precision(SimpleNamespace(model=m32), W0.astype(np.float32))


def test_connectivity_of_identical_and_permuted_networks():
    model = mf.Model(d=5, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=5, k=2))
    W = mf.initialize(model, 12, np.random.default_rng(0))
    same = landscape.connectivity(problem, W, W, n_points=11)
    assert same["linear"]["barrier"] == 0 and same["linear_matched"]["barrier"] == 0
    assert np.allclose(same["linear"]["risk"], problem.risk(W))
    # The arc path between identical networks is the scaling (cos + sin)(pi t / 2) W, not a constant.
    t = same["t"]
    scaled = [problem.risk((math.cos(math.pi * s / 2) + math.sin(math.pi * s / 2)) * W) for s in t]
    assert np.allclose(same["arc"]["risk"], scaled, rtol=1e-12)
    perm = np.random.default_rng(1).permutation(12)
    permuted = landscape.connectivity(problem, W, W[perm], n_points=11)
    assert np.array_equal(W[perm][permuted["permutation"]], W)
    assert permuted["linear_matched"]["barrier"] == 0
    assert np.allclose(permuted["linear_matched"]["risk"], problem.risk(W))
    assert permuted["linear"]["barrier"] > 1e-3


def test_merging_end_points_up_to_permutation():
    from meanfield.landscape._census import _distinct_levels, _merge_permuted

    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 3))
    B = A + 1e-3
    points = [A, A[[4, 2, 0, 1, 3]] + 1e-9, B, B[::-1]]
    assert _merge_permuted(points, 1e-6) == 2
    assert _distinct_levels([0.1, 0.1 * (1 + 1e-10), 0.2], 1e-7) == 2


SMALL_CENSUS = """
[model]
d = 4
m = 4
activation = "relu"
scaling = "sum"
train_readout = false
[problem.teacher]
k = 4
readout = "sum"
[dynamics]
step = 0.05
t_max = 1.0
[record]
times = 2
particles = false
[landscape]
step = 0.2
[sweep.zip]
"model.d" = [5, 8]
"problem.teacher.k" = [4, 8]
"model.m" = [4, 8]
[sweep]
"run.seed" = {start = 0, stop = 3}
"""


def test_census_file_runs_end_to_end(tmp_path, capsys):
    path = tmp_path / "census.toml"
    path.write_text(SMALL_CENSUS)
    specs = sweep.plan(path)
    assert [(s.swept["model.d"], s.swept["model.m"], s.swept["run.seed"]) for s in specs] == \
        [(5, 4, 0), (5, 4, 1), (5, 4, 2), (8, 8, 0), (8, 8, 1), (8, 8, 2)]
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    kinds = []
    for spec in specs:
        with h5py.File(out / f"{spec.id}.h5") as f:
            g = f["landscape"]
            assert g["end_point"].shape == (spec.config["model"]["m"], spec.config["model"]["d"] + 2)
            assert g.attrs["grad_tol"] == 1e-9 and g.attrs["risk_threshold"] == 1e-6
            kinds.append(g.attrs["kind"])
            if g.attrs["kind"] != "not_converged":
                assert g.attrs["grad_norm"] <= 1e-9
    rows = landscape.census(out)
    assert [(r["k"], r["n"], r["d"], r["runs"]) for r in rows] == [(4, 4, 5, 3), (8, 8, 8, 3)]
    for r in rows:
        spurious = r["kinds"].get("spurious_minimum", 0)
        ci = binomtest(spurious, 3).proportion_ci(method="exact")
        assert (r["ci_low"], r["ci_high"]) == (ci.low, ci.high)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "census of end points" in text and "fraction spurious [95% CI]" in text
    assert set(kinds) <= set(landscape.KINDS)


SMALL_CONNECTIVITY = """
[model]
d = 4
m = 8
[problem.teacher]
k = 2
[dynamics]
step = 1.0
t_max = 10.0
[record]
times = 3
particles = false
[connectivity]
n_points = 9
[sweep]
"model.m" = [4, 8]
"run.seed" = {start = 0, stop = 4}
"""


def test_connectivity_file_runs_end_to_end(tmp_path, capsys):
    path = tmp_path / "mc.toml"
    path.write_text(SMALL_CONNECTIVITY)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    specs = sweep.plan(path)
    stored = 0
    for spec in specs:
        with h5py.File(out / f"{spec.id}.h5") as f:
            assert ("connectivity" in f) == (spec.config["run"]["seed"] % 2 == 0)
            if "connectivity" in f:
                g = f["connectivity"]
                assert g["t"].shape == (9,) and g["linear_matched"].shape == (9,)
                risk = g["linear"][()]
                assert math.isclose(g.attrs["barrier_linear"], max(0.0, risk.max() - max(g.attrs["risk_A"],
                                                                                           g.attrs["risk_B"])))
                stored += 1
    assert stored == 4
    rows = landscape.connectivity_rows(out)
    assert [(r["m"], r["pairs"]) for r in rows] == [(4, 2), (8, 2)]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "barrier versus width" in capsys.readouterr().out


@pytest.mark.parametrize("body, expected", [
    ('[sweep.zip]\n"model.d" = [4, 5]\n"model.m" = [4]\n',
     '[sweep.zip]: the lists must have equal lengths ("model.d" has 2, "model.m" has 1)'),
    ('[sweep.zip]\n"model.dd" = [4]\n', "[sweep.zip] \"model.dd\": unknown key 'model.dd'"),
    ('[sweep.zip]\n"model.d" = [4, 4]\n', "[sweep.zip]: the zipped tuples must be distinct"),
    ('[sweep.zip]\n"model.m" = [4, 0]\n', '[sweep.zip] "model.m"[1] = 0: must be an integer >= 1'),
    ('[sweep.zip]\n"model.m" = [4]\n[sweep]\n"model.m" = [4]\n', '"model.m": also in [sweep.zip]'),
    ('[sweep]\n"run.seed" = {start = 0, stop = 0}\n', "a range needs integers start < stop and step >= 1"),
    ('[sweep]\n"run.seed" = {begin = 0, stop = 3}\n', "unknown key 'begin'"),
    ('[sweep]\n"run.seed" = {start = 0.5, stop = 3}\n', "a range needs integers start < stop"),
    ('[sweep]\n"run.seed" = {start = -2, stop = 3}\n', '"run.seed"[0] = -2: must be an integer >= 0'),
    ('[landscape]\ngrad_tol = 0\n', "[landscape] grad_tol = 0: must be a number > 0"),
    ('[landscape]\nspectrum = "full"\n', '[landscape] spectrum = "full": must be one of'),
    ('[model]\ndtype = "float32"\n[landscape]\ngrad_tol = 1e-9\n', '[model] dtype: [landscape] descends'),
    ('[connectivity]\n[problem.teacher]\nrotate = true\n', "[connectivity] enabled: pairs runs of different seeds"),
])
def test_bad_sweep_and_landscape_input_exit_2_naming_file_and_key(tmp_path, capsys, body, expected):
    base = '[model]\nd = 4\nm = 4\n[problem.teacher]\nk = 2\n[dynamics]\nstep = 0.5\nt_max = 1.0\n'
    merged = _merge_toml(base, body)
    path = tmp_path / "bad.toml"
    path.write_text(merged)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert not out.exists()


def _merge_toml(base: str, body: str) -> str:
    """Append ``body``; keys of a section already in ``base`` are moved into that section."""
    sections = {}
    order = []
    for chunk in (base, body):
        current = None
        for line in chunk.strip().splitlines():
            if line.startswith("["):
                current = line
                if current not in sections:
                    sections[current] = []
                    order.append(current)
            else:
                sections[current].append(line)
    return "\n".join(f"{name}\n" + "\n".join(sections[name]) for name in order) + "\n"


def test_seed_range_expands_and_overrides_of_zipped_keys_merge_rows(tmp_path):
    path = tmp_path / "z.toml"
    path.write_text('[model]\nd = 4\nm = 4\n[problem.teacher]\nk = 2\n[dynamics]\nstep = 0.5\nt_max = 1.0\n'
                    '[sweep.zip]\n"model.d" = [4, 4, 5]\n"model.m" = [4, 5, 6]\n'
                    '[sweep]\n"run.seed" = {start = 2, stop = 8, step = 3}\n')
    specs = sweep.plan(path)
    assert [(s.swept["model.d"], s.swept["model.m"], s.swept["run.seed"]) for s in specs] == \
        [(4, 4, 2), (4, 4, 5), (4, 5, 2), (4, 5, 5), (5, 6, 2), (5, 6, 5)]
    assert all(s.config["model"]["m"] == s.swept["model.m"] for s in specs)
    merged = sweep.plan(path, ["model.m=7"])
    assert [(s.config["model"]["d"], s.config["model"]["m"]) for s in merged] == [(4, 7), (4, 7), (5, 7), (5, 7)]
    assert json.loads(json.dumps(specs[0].config))["landscape"]["enabled"] is False


def test_plots_show_the_census_and_the_paths():
    rows = [{"k": 6, "n": 6, "fraction": 0.1, "ci_low": 0.05, "ci_high": 0.2},
            {"k": 8, "n": 8, "fraction": 0.3, "ci_low": 0.2, "ci_high": 0.4},
            {"k": 6, "n": 7, "fraction": 0.0, "ci_low": 0.0, "ci_high": 0.1}]
    figure = landscape.plot_census(rows)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "teacher neurons k" and "spurious" in axes.get_ylabel()
    assert [c.get_label() for c in axes.containers] == ["n = k", "n = k + 1"]
    assert [list(c.lines[0].get_ydata()) for c in axes.containers] == [[0.1, 0.3], [0.0]]
    model = mf.Model(d=3, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=3, k=1))
    W = mf.initialize(model, 4, np.random.default_rng(0))
    result = landscape.connectivity(problem, W, W[::-1], n_points=5)
    figure = landscape.plot_paths(result)
    lines = figure.axes[0].lines
    assert len(lines) == 4 and all(len(line.get_xdata()) == 5 for line in lines)
    assert np.allclose(lines[0].get_ydata(), result["linear"]["risk"])


def test_dense_spectrum_falls_back_when_divide_and_conquer_refuses(monkeypatch):
    """OpenBLAS's eigh refused a Safran-Shamir Hessian (one eigenvalue repeated many times):
    the dense spectrum then takes LAPACK's evr driver, with the same extremes and eigenvector."""
    from meanfield.landscape import _hessian

    problem, W, exact = linear_quadratic(m=6, d=5)  # kron(c c^T, I): eigenvalue 0 repeated
    expected = landscape.spectrum_extremes(problem, W, method="dense")

    def refuse(H):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(_hessian.np.linalg, "eigh", refuse)
    got = landscape.spectrum_extremes(problem, W, method="dense")
    assert abs(got.lambda_min - expected.lambda_min) < 1e-12 and abs(got.lambda_max - expected.lambda_max) < 1e-12
    H = exact
    assert np.linalg.norm(H @ got.vector_min - got.lambda_min * got.vector_min) < 1e-10


def test_dense_spectrum_bound_of_an_analytic_hessian_is_hessians_bound():
    """With an analytic Hessian the dense spectrum takes hessian()'s rounding bound
    n_var eps |H|_2 from the eigenvalues it computes (|H|_2 = max |lambda| for symmetric H)
    instead of an SVD: the same bound to rounding, plus the eigen-solver's 4 eps max|lambda| n_var."""
    from meanfield.landscape._hessian import EPS

    model = mf.Model(d=5, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(5, 5, readout="sum"), method="closed_form")
    assert problem.has_analytic_hessian
    W = mf.initialize(model, 6, np.random.default_rng(3))
    W[1] = W[0]  # duplicated particles: a repeated eigenvalue
    got = landscape.spectrum_extremes(problem, W, method="dense")
    H, bound = landscape.hessian(problem, W, return_error=True)
    values = np.linalg.eigvalsh(H)
    assert 0 < bound < 1e-10
    expected = bound + 4 * EPS * np.abs(values).max() * H.shape[0]
    assert got.lambda_min_error == pytest.approx(expected, rel=1e-10)
    assert got.lambda_min == pytest.approx(values[0], abs=1e-12)
    assert got.lambda_max == pytest.approx(values[-1], rel=1e-12)
