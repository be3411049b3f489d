"""The exact gradient flow (meanfield.flow), analytic Hessians, refinement to critical points,
the step-size error and the gelu activation."""
import json
import math

import h5py
import numpy as np
import pytest
from scipy.linalg import expm
from scipy.special import ndtr

import meanfield as mf
from meanfield import kernels, landscape, linear
from meanfield.cli import main
from meanfield.kernels import _scalar


def _fd_hessian(problem, W):
    return landscape.hessian(problem, W, method="finite_difference", return_error=True)


def _check_hessian(problem, W, rng, rtol):
    """Analytic Hessian against central differences of the analytic gradient (with their error
    bound), symmetric, and the matrix-free product against the matrix."""
    H = problem.hessian(W)
    H_fd, fd_error = _fd_hessian(problem, W)
    assert np.abs(H - H.T).max() <= 1e-14 * np.abs(H).max()
    assert np.linalg.norm(H - H_fd, 2) <= max(fd_error, rtol * np.linalg.norm(H_fd, 2))
    mask = problem.model.trainable
    V = rng.standard_normal(W.shape)
    product = problem.hessian_vector_product(W, V)
    assert np.allclose(product[:, mask].ravel(), H @ V[:, mask].ravel(), rtol=0,
                       atol=1e-13 * np.abs(H).max() * np.abs(V).max() * H.shape[0])
    assert not product[:, ~mask].any()


# -- gelu and second derivatives ---------------------------------------------------------------

def test_gelu_and_every_second_derivative_against_references():
    z = np.linspace(-6, 6, 49)
    gelu = np.array([_scalar.activation(v, _scalar.GELU) for v in z])
    assert np.allclose(gelu, z * ndtr(z), rtol=1e-14, atol=1e-300)
    h = 1e-5
    for name, code in kernels.ACTIVATION_CODES.items():
        zz = z[np.abs(z) > 1e-3] if name == "relu" else z  # away from relu's kink
        for f, df in ((_scalar.activation, _scalar.activation_derivative),
                      (_scalar.activation_derivative, _scalar.activation_second_derivative)):
            exact = np.array([df(v, code) for v in zz])
            central = np.array([(f(v + h, code) - f(v - h, code)) / (2 * h) for v in zz])
            assert np.allclose(exact, central, rtol=1e-7, atol=1e-8), (name, f.__name__)
    for name, code in kernels.LOSS_CODES.items():
        for f, y in ((0.3, 1.0), (-1.2, -1.0), (2.0, 1.0)):
            exact = _scalar.loss_second_derivative(f, y, code)
            central = (_scalar.loss_derivative(f + h, y, code) - _scalar.loss_derivative(f - h, y, code)) / (2 * h)
            assert abs(exact - central) < 1e-8, name


@pytest.mark.parametrize("method", ["series", "quadrature"])
def test_gelu_population_risk_matches_monte_carlo(method):
    d = 3
    model = mf.Model(d=d, activation="gelu", bias=True)
    teacher = mf.Teacher.random(d, 2, np.random.default_rng(0), "gelu", bias=True)
    problem = mf.PopulationProblem(model, teacher, method=method)
    assert mf.PopulationProblem(model, teacher).method == "series"
    W = mf.initialize(model, 4, np.random.default_rng(1), mf.Init(b="gaussian"))
    X = np.random.default_rng(2).standard_normal((100_000, d))
    residual = model.predict(W, X) - teacher.labels(X, None, "squared", 0.0, 0.0)
    loss = 0.5 * residual**2
    assert abs(problem.risk(W) - loss.mean()) < 4 * loss.std() / math.sqrt(loss.size)


# -- analytic Hessians --------------------------------------------------------------------------

@pytest.mark.parametrize("act, train_readout", [("relu", True), ("erf", True), ("linear", False)])
def test_closed_form_population_hessian_against_finite_differences(act, train_readout):
    d = 4
    model = mf.Model(d=d, activation=act, train_readout=train_readout, alpha=1.5)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=2, activation=act))
    assert problem.has_analytic_hessian and problem.method == "closed_form"
    W = mf.initialize(model, 5, np.random.default_rng(3))
    _check_hessian(problem, W, np.random.default_rng(4), 1e-8)


def test_relu_hessian_at_collinear_pairs_is_the_limit_of_nearby_hessians():
    """The relu kernel is C^2 at collinear pairs (where the formulas' 1/sin(theta) terms
    cancel): the Hessian there must be the limit of the Hessians at nearby points."""
    d = 3
    model = mf.Model(d=d, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=d, readout="sum"))
    W = np.zeros((3, d + 2))
    W[:, :d] = np.eye(d) * np.array([[1.3], [0.7], [1.0]])  # collinear with the teachers
    W[2, :d] = W[1, :d] * 2.0  # and with another student
    W[:, d + 1] = 1.0
    H = problem.hessian(W)
    direction = np.random.default_rng(5).standard_normal(W.shape)
    direction[:, d:] = 0
    for eps in (1e-4, 1e-6):
        near = problem.hessian(W + eps * direction)
        assert np.abs(near - H).max() < 20 * eps * np.abs(H).max()


@pytest.mark.parametrize("act, loss, bias, train_readout", [
    ("gelu", "squared", True, True), ("tanh", "logistic", False, True), ("softplus", "exponential", True, False)])
def test_finite_data_hessian_against_finite_differences(act, loss, bias, train_readout):
    rng = np.random.default_rng(6)
    d = 3
    model = mf.Model(d=d, activation=act, bias=bias, train_readout=train_readout, alpha=2.0)
    X = rng.standard_normal((600, d))  # more than one tile of 512 rows
    y = np.sign(rng.standard_normal(600)) if loss != "squared" else rng.standard_normal(600)
    problem = mf.FiniteDataProblem(model, X, y, loss)
    W = mf.initialize(model, 4, np.random.default_rng(7), mf.Init(b="gaussian"))
    _check_hessian(problem, W, rng, 1e-8)


def test_monte_carlo_population_hessian_is_that_of_its_fixed_sample():
    model = mf.Model(d=3, activation="sigmoid")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=3, k=2, activation="sigmoid"), loss="logistic",
                                   mc_samples=300, rng=np.random.default_rng(9))
    assert problem.method == "monte_carlo" and problem.has_analytic_hessian
    W = mf.initialize(model, 3, np.random.default_rng(10))
    X, y, _ = problem.sample
    sample = mf.FiniteDataProblem(model, X, y, "logistic")
    assert np.array_equal(problem.hessian(W), sample.hessian(W))
    _check_hessian(problem, W, np.random.default_rng(11), 1e-8)


# -- the flow -------------------------------------------------------------------------------------

def _quadratic():
    """Linear activation, frozen readout: F is quadratic, grad F(x) = g0 + H (x - x0)."""
    d, m = 3, 4
    model = mf.Model(d=d, activation="linear", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=2, activation="linear"))
    W0 = mf.initialize(model, m, np.random.default_rng(0))
    mask = model.trainable
    H = np.kron(np.outer(W0[:, d + 1], W0[:, d + 1]) / m**2, np.eye(d))  # E[x x^T] = I
    g0 = -problem.evaluate(W0).velocity[:, mask].ravel() / m
    n = H.shape[0]
    generator = np.zeros((n + 1, n + 1))  # d/dt (x - x0, 1) = (-m (g0 + H (x - x0)), 0)
    generator[:n, :n] = -m * H
    generator[:n, n] = -m * g0

    def exact(t):
        return W0[:, mask].ravel() + (expm(generator * t) @ np.r_[np.zeros(n), 1.0])[:n]

    return problem, W0, exact


@pytest.mark.parametrize("method", ["RK45", "DOP853", "BDF", "LSODA"])
def test_flow_of_a_quadratic_is_its_matrix_exponential(method):
    problem, W0, exact = _quadratic()
    times = [0.0, 0.3, 1.7, 4.0]
    traj = mf.run(problem, mf.flow(problem, method, rtol=1e-10, atol=1e-12), W0, 4.0, times=times,
                  keep_particles=True)
    assert traj.status == "complete" and np.array_equal(traj.times, times)  # records at the exact times
    mask = problem.model.trainable
    for t, W in zip(traj.times, traj.particles):
        assert np.abs(W[:, mask].ravel() - exact(t)).max() < 1e-8
    info = traj.final.info
    assert info["method"] == method and info["rtol"] == 1e-10 and info["nfev"] == traj.steps[-1] > 0
    assert info["jacobian"] == ("analytic" if method in ("BDF", "LSODA") else "none")


def test_a_restored_flow_continues_the_run():
    problem, W0, exact = _quadratic()
    integrator = mf.flow(problem, "DOP853", rtol=1e-11, atol=1e-13)
    first = mf.run(problem, integrator, W0, 1.0, times=[0.0, 1.0])
    state = mf.restore(integrator, first.W, first.final.step, time=1.0)
    second = mf.run(problem, integrator, None, 3.0, times=[0.0, 1.0, 2.0, 3.0], state=state)
    assert np.array_equal(second.times, [2.0, 3.0])
    assert np.abs(second.W[:, problem.model.trainable].ravel() - exact(3.0)).max() < 1e-9


def test_deep_linear_flow_conserves_the_balance_matrices():
    """W_{k+1}^T W_{k+1} - W_k W_k^T is conserved by the flow (gradient descent drifts by O(eta t))."""
    R = linear.symmetric_target([-0.5, 0.5, 1.0, 2.0], np.random.default_rng(0))
    problem = linear.DeepLinearProblem(R, K=3)
    W0 = problem.model.pack(np.random.default_rng(1).standard_normal((3, 4, 4)) * 0.4)
    before = linear.conserved(problem.model.unpack(W0))
    traj = mf.run(problem, mf.flow(problem, "DOP853", rtol=1e-11, atol=1e-13), W0, 6.0, times=[0.0, 6.0])
    after = linear.conserved(problem.model.unpack(traj.W))
    descent = mf.run(problem, mf.gradient_descent(problem, 0.01), W0, 6.0, times=[0.0, 6.0])
    drift_gd = np.abs(linear.conserved(problem.model.unpack(descent.W)) - before).max()
    assert traj.risk[-1] < 0.5 * traj.risk[0]  # it moved
    assert np.abs(after - before).max() < 1e-8 < 1e-3 * drift_gd


def test_step_size_error_is_first_order_in_the_step():
    model = mf.Model(d=4, activation="erf")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=4, k=2, activation="erf"))
    W0 = mf.initialize(model, 6, np.random.default_rng(2))
    errors = []
    for eta in (0.2, 0.1):
        traj = mf.run(problem, mf.gradient_descent(problem, eta), W0, 4.0, times=[0.0, 2.0, 4.0],
                      keep_particles=True, measures=[mf.StepSizeError(problem, W0)])
        offline = mf.step_size_error(problem, traj.times, traj.particles)
        assert np.allclose(traj.observables["step_error"], offline["step_error"], rtol=1e-6)
        assert traj.observables["step_error"][0] == 0
        errors.append(traj.observables["step_error"][-1])
    assert 1.8 < errors[0] / errors[1] < 2.2


# -- refinement -----------------------------------------------------------------------------------

def test_newton_converges_quadratically_on_a_strongly_convex_problem():
    """Logistic regression (one linear neuron, frozen readout) on non-separable data: strictly
    convex, so the trust-region Newton iterates converge quadratically to the minimiser."""
    rng = np.random.default_rng(8)
    d = 4
    model = mf.Model(d=d, activation="linear", train_readout=False, scaling="sum")
    X = rng.standard_normal((300, d))
    y = np.where(X[:, 0] + rng.standard_normal(300) > 0, 1.0, -1.0)
    problem = mf.FiniteDataProblem(model, X, y, "logistic")
    W = model.pack(np.zeros((1, d)))
    result = mf.refine(problem, W, method="trust-exact", grad_tol=1e-12)
    assert result.converged and result.grad_norm <= 1e-12
    norms = result.grad_norms
    # the last steps from |g| < 1e-2: each squares the gradient norm (up to a constant)
    tail = [g for g in norms if g < 1e-2]
    assert len(tail) >= 3
    for g, g_next in zip(tail[:-1], tail[1:]):
        assert g_next <= 10 * g * g or g_next <= 1e-12
    assert result.end_point.kind in ("spurious_minimum", "global_minimum")
    assert result.lambda_min > 0


@pytest.mark.parametrize("method", ["trust-exact", "trust-krylov", "BFGS"])
def test_flow_then_refine_certifies_the_teacher_student_global_minimum(method):
    k = 4
    model = mf.Model(d=k, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=k, k=k, readout="sum"))
    W0 = mf.initialize(model, k, np.random.default_rng(3))
    traj = mf.run(problem, mf.flow(problem, "RK45", rtol=1e-6, atol=1e-9), W0, 60.0)
    result = mf.refine(problem, traj.W, method=method, grad_tol=1e-12)
    assert result.converged and result.grad_norm <= 1e-12
    # F = (K_ww - 2 K_wt + K_tt) / 2 with K of order k: at the minimum it is 0 up to the rounding
    # of that cancellation (~k eps), whatever order the kernel sums in.
    assert result.end_point.kind == "global_minimum" and result.risk < 100 * k * np.finfo(float).eps
    assert result.lambda_min > 0  # students on the teachers: a strict minimum


# -- experiment files -----------------------------------------------------------------------------

FLOW_FILE = """
[model]
d = 4
m = 6
activation = "erf"
[problem.teacher]
k = 2
[dynamics]
step = 0.2
t_max = 2.0
[record]
times = 5
[sweep.zip]
"dynamics.integrator" = ["flow", "gradient_descent"]
"record.step_error" = [false, true]
"""


def test_flow_and_step_error_experiment_file_runs_end_to_end(tmp_path):
    path = tmp_path / "flow.toml"
    path.write_text(FLOW_FILE)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--set", "dynamics.ode_method=\"DOP853\""]) == 0
    files = {}
    for run_file in out.glob("*.h5"):
        if run_file.name == "index.h5":
            continue
        with h5py.File(run_file, "r") as f:
            config = json.loads(f.attrs["config"])
            files[config["dynamics"]["integrator"]] = (config, dict(f.attrs), {
                name: f[f"observables/{name}/value"][()] for name in f["observables"]})
    config, attrs, series = files["flow"]
    assert config["dynamics"]["ode_method"] == "DOP853" and config["dynamics"]["step"] is None
    assert json.loads(attrs["integrator_info"])["nfev"] > 0
    assert len(series["risk"]) == 5
    config, attrs, series = files["gradient_descent"]
    assert "ode_method" not in config["dynamics"] and config["record"]["step_error"] is True
    assert series["step_error"][0] == 0 and 0 < series["step_error"][-1] < 0.1


@pytest.mark.parametrize("body, expected", [
    ('[dynamics]\nintegrator = "flow"\node_method = "euler"\n',
     '[dynamics] ode_method = "euler": must be one of "RK45"'),
    ('[dynamics]\nintegrator = "flow"\nrtol = 0\n', "[dynamics] rtol = 0: must be a number > 0"),
    ('[dynamics]\nrtol = 1e-6\n', '[dynamics] rtol: only for integrator = "flow", not "gradient_descent"'),
    ('[dynamics]\nintegrator = "flow"\n[record]\nstep_error = true\n', '[record] step_error: measures the distance'),
    ('[dynamics]\nintegrator = "flow"\n[limit]\nreference_m = 8\n', '[limit] reference_m: pairs records'),
])
def test_bad_flow_input_exits_2_naming_file_and_key(tmp_path, capsys, body, expected):
    base = '[model]\nd = 4\nm = 4\n[problem.teacher]\nk = 2\n[dynamics]\nstep = 0.5\nt_max = 1.0\n'
    from test_landscape import _merge_toml

    path = tmp_path / "bad.toml"
    path.write_text(_merge_toml(base, body))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err, err
    assert not out.exists()
