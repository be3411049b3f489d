"""Weight decay lambda(t) |w|^2 with a schedule, and the weight-normalised descent.

References: a numpy step for the decayed updates; two runs (no decay, then constant decay)
for the step schedule; the one-step differences of a run for the annealed lambda(t); the ridge
solution (X^T X / N + lambda I)^-1 X^T y / N for the linear model w . x (m = 1, linear
activation, readout frozen at c = 1: the model of tests/test_classification.py) with the squared
loss (1/2N) |X w - y|^2; central finite differences of F(rho u) for the weight-normalised flow
and a DOP853 solution of that flow written in a; each member alone for ensembles; run ids of
files without the new keys.
"""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from test_classification import _hard_margin_svm
from test_ensemble import solo_and_ensemble
from test_sweep import write

import meanfield as mf
from meanfield import sweep
from meanfield.engine._integrators import (
    INTEGRATORS,
    WeightDecay,
    gradient_descent,
    heavy_ball,
    weight_normalized_descent,
)
from meanfield.experiments._config import ConfigError


def _problem(train_readout=True, bias=True, seed=0, d=3, m=5, n=13):
    rng = np.random.default_rng(seed)
    model = mf.Model(d=d, activation="relu", bias=bias, train_readout=train_readout)
    teacher = mf.Teacher.random(d=d, k=2, activation="relu", rng=rng)
    problem = mf.FiniteDataProblem.from_teacher(model, teacher, n, rng)
    W0 = mf.initialize(model, m, rng, mf.Init(b="gaussian") if bias else None)
    return problem, W0


# -- the decayed step against numpy -------------------------------------------------------------

@pytest.mark.parametrize("train_readout", [True, False], ids=["trained readout", "frozen readout"])
def test_constant_decay_steps_equal_numpy(train_readout):
    """Three steps of gradient descent, heavy ball and weight_normalized_descent with lambda =
    0.3 against numpy from the problem's velocity v: W + eta (v - lambda W) on the trainable
    columns; V <- beta V - eta (v - lambda W), W <- W - V; rho + eta u.g, normalise(u + eta rho
    (g - (u.g) u)) with g = v[:d] - lambda a. Tolerance 1e-14 relative to max |W|; frozen columns
    exactly unchanged."""
    problem, W0 = _problem(train_readout)
    trainable = problem.model.trainable
    d, eta, lam, beta = problem.model.d, 0.05, 0.3, 0.6
    assert trainable.sum() < W0.shape[1] or train_readout  # the bias column is frozen without bias
    integrators = {"gd": gradient_descent(problem, eta, lam), "hb": heavy_ball(problem, eta, beta, lam),
                   "wn": weight_normalized_descent(problem, eta, lam)}
    plain_integrators = {"gd": gradient_descent(problem, eta), "hb": heavy_ball(problem, eta, beta),
                         "wn": weight_normalized_descent(problem, eta)}
    for name, integrator in integrators.items():
        state = integrator.init(W0)
        W, V = W0.copy(), np.zeros_like(W0)
        for _ in range(3):
            v = problem.evaluate(W).velocity
            g = v - lam * W * trainable
            if name == "gd":
                W = W + eta * g
            elif name == "hb":
                V = beta * V - eta * g
                W = W - V
            else:
                a = W[:, :d]
                rho = np.linalg.norm(a, axis=1, keepdims=True)
                u = a / rho
                radial = np.sum(u * g[:, :d], axis=1, keepdims=True)
                direction = u + eta * rho * (g[:, :d] - radial * u)
                W = W + eta * g
                W[:, :d] = (rho + eta * radial) * direction / np.linalg.norm(direction, axis=1, keepdims=True)
            integrator.step(state)
        np.testing.assert_allclose(state.W, W, rtol=0, atol=1e-14 * np.abs(W).max(), err_msg=name)
        np.testing.assert_array_equal(state.W[:, ~trainable], W0[:, ~trainable])
        plain = plain_integrators[name]
        plain_state = plain.init(W0)
        for _ in range(3):
            plain.step(plain_state)
        assert np.abs(plain_state.W - state.W).max() > 1e-4  # the decay moved W


def test_without_decay_the_steps_are_the_plain_ones_bitwise():
    """weight_decay = 0 (and lambda(t) = 0 before t_on) takes the plain kernels: bitwise the
    runs of gradient_descent and heavy_ball without the argument."""
    problem, W0 = _problem()
    for plain, zero in ((gradient_descent(problem, 0.1), gradient_descent(problem, 0.1, 0.0)),
                        (heavy_ball(problem, 0.05, 0.5), heavy_ball(problem, 0.05, 0.5, WeightDecay(0.0)))):
        a, b = mf.run(problem, plain, W0, 1.0), mf.run(problem, zero, W0, 1.0)
        np.testing.assert_array_equal(a.W, b.W)
        assert plain.params == zero.params  # no weight_decay entry without decay


# -- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dynamics", [("gradient_descent", {"step": 0.125}),
                                            ("heavy_ball", {"step": 0.0625, "momentum": 0.5}),
                                            ("weight_normalized_descent", {"step": 0.125})])
def test_step_schedule_is_no_decay_then_constant_decay(name, dynamics):
    """lambda(t) = 0 for t < t_on = 1, 0.4 after (dt = 0.125: t_on is step 8): bitwise the run
    without decay to t = 1 followed by the run with constant decay 0.4 from its state (momentum
    buffer included) to t = 2; and not the run with decay from t = 0."""
    problem, W0 = _problem()
    entry = INTEGRATORS[name]
    scheduled = entry.build(problem, {**dynamics, "weight_decay": 0.4, "weight_decay_schedule": "step",
                                      "weight_decay_start": 1.0})
    whole = mf.run(problem, scheduled, W0, 2.0, times=[0.0, 1.0, 2.0], keep_particles=True)
    plain = entry.build(problem, dynamics)
    constant = entry.build(problem, {**dynamics, "weight_decay": 0.4})
    state = plain.init(W0)
    for _ in range(8):
        plain.step(state)
    np.testing.assert_array_equal(state.W, whole.particles[1])
    state = mf.restore(constant, state.W, state.step, buffers=state.buffers)
    for _ in range(8):
        constant.step(state)
    np.testing.assert_array_equal(whole.W, state.W)
    early = mf.run(problem, constant, W0, 2.0)
    assert np.abs(early.W - whole.W).max() > 1e-3


@pytest.mark.parametrize("name, dynamics", [("gradient_descent", {"step": 0.05}),
                                            ("heavy_ball", {"step": 0.025, "momentum": 0.5})])
def test_annealed_schedule_at_recorded_times(name, dynamics):
    """lambda(t) = lambda_0 / (1 + t / tau), lambda_0 = 0.5, tau = 2, read back from a run: at
    each recorded pair of consecutive steps (t_k, t_k + dt), the step of gradient descent gives
    lambda(t_k) = (W_k + dt v(W_k) - W_{k+1}) / (dt W_k) on the trainable coordinates; heavy ball
    the same from V_{k+1} = beta V_k - eta (v - lambda W_k) with V the recorded differences.
    Agreement to 1e-9 relative at t = 0, 1, 4, 10 (where lambda is 0.5, 0.333, 0.167, 0.083)."""
    problem, W0 = _problem()
    decay = WeightDecay(0.5, "anneal", time=2.0)
    integrator = INTEGRATORS[name].build(problem, {**dynamics, "weight_decay": 0.5, "weight_decay_schedule": "anneal",
                                                   "weight_decay_time": 2.0})
    dt, eta = integrator.dt, dynamics["step"]
    beta = dynamics.get("momentum", 0.0)
    marks = [0.0, 1.0, 4.0, 10.0]
    times = sorted({t + k * dt for t in marks for k in (-1, 0, 1) if t + k * dt >= 0})
    run = mf.run(problem, integrator, W0, 10.0 + 2 * dt, times=times, keep_particles=True)
    frames = dict(zip(np.round(run.times / dt).astype(int), run.particles))
    mask = problem.model.trainable
    for t in marks:
        k = int(round(t / dt))
        W, W_next = frames[k], frames[k + 1]
        v = problem.evaluate(W).velocity
        if name == "gradient_descent":
            measured = (W + eta * v - W_next)[:, mask] / (eta * W[:, mask])
        else:
            V_prev = W - frames[k - 1] if k > 0 else np.zeros_like(W)  # W_k - W_{k-1} = -V_k
            V_next = W - W_next
            measured = (V_next - (-beta * V_prev) + eta * v)[:, mask] / (eta * W[:, mask])
        np.testing.assert_allclose(measured, decay(t), rtol=1e-9, err_msg=f"t = {t}")
    assert decay(4.0) == pytest.approx(0.5 / 3)


def test_weight_decay_schedule_values():
    """The three forms, by value: constant, step at t_on (0 before, lambda_0 at and after),
    anneal lambda_0 / (1 + t / tau); and the refusals of the engine."""
    assert WeightDecay(0.2)(7.0) == 0.2
    step = WeightDecay(0.2, "step", start=3.0)
    assert (step(2.999), step(3.0), step(10.0)) == (0.0, 0.2, 0.2)
    assert WeightDecay(0.2, "anneal", time=4.0)(12.0) == pytest.approx(0.05, rel=1e-15)
    for bad in (dict(value=-1.0), dict(value=0.1, schedule="step"), dict(value=0.1, time=1.0),
                dict(value=0.1, schedule="anneal", time=0.0), dict(value=0.1, schedule="cosine")):
        with pytest.raises(ValueError):
            WeightDecay(**bad)


# -- the ridge solution ------------------------------------------------------------------------

def _linear_model(dynamics, record=None, loss="squared"):
    """The linear model w . x: m = 1, linear activation, no bias, readout frozen at c = 1, on
    data.npz; started at a Gaussian w (weight_normalized_descent needs a != 0)."""
    return {"model": {"d": 5, "m": 1, "activation": "linear", "train_readout": False},
            "init": {"c": "one"},
            "problem": {"kind": "finite_data", "loss": loss, "data": "data.npz",
                        "teacher": {"kind": "orthonormal", "k": 1}},
            "dynamics": dynamics, "record": record or {"times": 3}}


def _execute(tmp_path, doc, name="exp.toml"):
    path = write(tmp_path, doc, name=name)
    (spec,) = sweep.plan(str(path))
    out = tmp_path / ("out_" + name)
    out.mkdir()
    summary = sweep.execute(spec, out)
    assert summary["status"] == "complete", summary
    return spec, summary["path"]


@pytest.mark.parametrize("dynamics", [
    {"integrator": "gradient_descent", "step": 0.2},
    {"integrator": "heavy_ball", "step": 0.1, "momentum": 0.5},
    {"integrator": "weight_normalized_descent", "step": 0.1},
    {"integrator": "flow", "rtol": 1e-11, "atol": 1e-13},
], ids=lambda dc: dc["integrator"])
def test_squared_loss_with_decay_converges_to_ridge(tmp_path, dynamics):
    """N = 20, d = 5, lambda = 0.1 from a Gaussian start, t = 200 (the slowest rate is the
    smallest eigenvalue of X^T X / N + lambda I, >= 0.1: e^-20 ~ 2e-9 of the start): the final
    w equals (X^T X / N + lambda I)^-1 X^T y / N to 1e-7 relative (measured: below 1e-9
    for every integrator), and is far from the least-squares solution (> 1e-2 relative: the test
    can fail on the factor convention, lambda vs lambda / 2 or 2 lambda)."""
    rng = np.random.default_rng(11)
    N, d, lam = 20, 5, 0.1
    X = rng.standard_normal((N, d))
    y = X @ rng.standard_normal(d) + 0.5 * rng.standard_normal(N)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    ridge = np.linalg.solve(X.T @ X / N + lam * np.eye(d), X.T @ y / N)
    least_squares = np.linalg.lstsq(X, y, rcond=None)[0]
    _, path = _execute(tmp_path, _linear_model({**dynamics, "t_max": 200.0, "weight_decay": lam}))
    with h5py.File(path) as f:
        w = f["particles/neurons/position/value"][-1, 0, :d]
    error = np.linalg.norm(w - ridge) / np.linalg.norm(ridge)
    print(f"{dynamics['integrator']}: relative distance to the ridge solution {error:.1e}")
    assert error < 1e-7, error
    assert np.linalg.norm(w - least_squares) > 1e-2 * np.linalg.norm(least_squares)


def test_exponential_loss_norm_settles_with_decay_and_grows_without(tmp_path):
    """Separable data (d = 3, N = 9, labels sign(u . x): the data of tests/test_classification.py),
    the linear model, exponential loss, w(0) Gaussian, step 0.5, records at t = 10, 100, 1000,
    10 000. Without decay the norm rho = |w| grows like log t: the increments per decade grow
    towards ln(10) / gamma* = ln(10) |w_svm| = 4.68 (gamma* the hard-margin SVM margin) and the
    last is within 15% of it (measured 2.67, 3.77, 4.42; rho = 2.55, 5.21, 8.98, 13.40). With
    lambda = 0.05 switched on at t_on = 100 (step schedule) the norm settles: |rho(10 000) -
    rho(1000)| < 1e-6 rho (measured rho = 2.55, 5.21, 2.2632, 2.2632)."""
    rng = np.random.default_rng(5)
    d, N = 3, 9
    u = rng.standard_normal(d)
    X = rng.standard_normal((N, d))
    labels = np.where(X @ u >= 0, 1.0, -1.0)
    np.savez(tmp_path / "data.npz", X=X, y=labels)
    per_decade = np.log(10.0) * np.linalg.norm(_hard_margin_svm(X, labels))
    record = {"times": 5, "spacing": "log", "t_min": 10.0, "classification": True}
    base = {"integrator": "gradient_descent", "step": 0.5, "t_max": 1e4}
    norms = {}
    for name, dynamics in (("plain", base), ("decay", {**base, "weight_decay": 0.05, "weight_decay_schedule": "step",
                                                       "weight_decay_start": 100.0})):
        doc = _linear_model(dynamics, record, loss="exponential")
        doc["model"]["d"] = d
        _, path = _execute(tmp_path, doc, name=f"{name}.toml")
        with h5py.File(path) as f:
            np.testing.assert_allclose(f["observables/norm/time"][1:], [10.0, 100.0, 1000.0, 10000.0])
            norms[name] = f["observables/norm/value"][1:]
    increments = np.diff(norms["plain"])
    print(f"norms at t = 10, 100, 1000, 10000: without decay {norms['plain']} (increments {increments}, "
          f"ln(10) |w_svm| = {per_decade:.3f}), with {norms['decay']}")
    assert np.all(np.diff(increments) > 0) and abs(increments[-1] - per_decade) < 0.15 * per_decade, increments
    assert np.all(increments < per_decade)
    assert abs(norms["decay"][-1] - norms["decay"][-2]) < 1e-6 * norms["decay"][-1], norms["decay"]
    assert norms["decay"][-1] < 0.5 * norms["decay"][1]  # the decay pulled the norm back after t_on


# -- the weight-normalised descent -------------------------------------------------------------

def _tangent_basis(u):
    """An orthonormal basis of the plane orthogonal to the unit vector u, shape (d - 1, d)."""
    q, _ = np.linalg.qr(np.column_stack([u, np.eye(u.size)]))
    return q[:, 1:u.size].T


def test_weight_normalized_velocity_against_finite_differences():
    """With F~(rho, u) = F(rho u) (the problem's objective, the other columns fixed): the first
    step of weight_normalized_descent at eta = 1e-7 moves rho_i by eta (-m dF~/drho_i) and u_i by
    eta (-m grad_u F~) along each tangent direction e of the sphere at u_i (the derivative of
    F~ along u cos h + e sin h), both by central differences at h = 1e-5; agreement to 1e-5
    relative to the largest component (O(eta) + O(h^2) + rounding / eta). Also (the plain
    flow in (rho, u)) the move of a_i is eta (u u^T + rho^2 (I - u u^T)) g_i, g the plain
    velocity, to the same tolerance, and differs from eta g_i (rho != 1)."""
    problem, W0 = _problem(seed=4)
    m, d = W0.shape[0], problem.model.d
    W0[:, :d] *= np.linspace(0.5, 2.0, m)[:, None]  # norms away from 1
    eta, h = 1e-7, 1e-5
    integrator = weight_normalized_descent(problem, eta)
    state = integrator.init(W0)
    integrator.step(state)
    a0, a1 = W0[:, :d], state.W[:, :d]
    rho0, rho1 = np.linalg.norm(a0, axis=1), np.linalg.norm(a1, axis=1)
    u0, u1 = a0 / rho0[:, None], a1 / rho1[:, None]

    def F(i, rho, u):
        W = W0.copy()
        W[i, :d] = rho * u
        return problem.evaluate(W).value

    measured, expected = [], []
    for i in range(m):
        dF_drho = (F(i, rho0[i] + h, u0[i]) - F(i, rho0[i] - h, u0[i])) / (2 * h)
        measured.append((rho1[i] - rho0[i]) / eta)
        expected.append(-m * dF_drho)
        for e in _tangent_basis(u0[i]):
            along = (F(i, rho0[i], u0[i] * np.cos(h) + e * np.sin(h))
                     - F(i, rho0[i], u0[i] * np.cos(-h) + e * np.sin(-h))) / (2 * h)
            measured.append((u1[i] - u0[i]) @ e / eta)
            expected.append(-m * along)
    measured, expected = np.array(measured), np.array(expected)
    np.testing.assert_allclose(measured, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    g = problem.evaluate(W0).velocity[:, :d]
    projector = np.einsum("ij,ik->ijk", u0, u0)
    metric = projector + rho0[:, None, None] ** 2 * (np.eye(d) - projector)
    predicted = np.einsum("ijk,ik->ij", metric, g)
    np.testing.assert_allclose((a1 - a0) / eta, predicted, rtol=0, atol=1e-5 * np.abs(predicted).max())
    assert np.abs(g - predicted).max() > 0.1 * np.abs(g).max()


def test_weight_normalized_descent_converges_to_its_flow_at_first_order():
    """The flow da_i/dt = (u u^T + rho^2 (I - u u^T)) g_i, g = -m grad_a F (bias and readout:
    the plain flow), solved by DOP853 at rtol 1e-12, against weight_normalized_descent at
    eta = 0.02 and 0.01 at t = 1: errors of order eta, ratio 2 within [1.6, 2.4] (measured
    ~2.0); the plain gradient descent at eta = 0.01 ends far from it (> 10x the error)."""
    problem, W0 = _problem(seed=2)
    d = problem.model.d
    W0[:, :d] *= np.linspace(0.4, 2.5, W0.shape[0])[:, None]
    mask = problem.model.trainable

    def rhs(t, x):
        W = W0.copy()
        W[:, mask] = x.reshape(W.shape[0], -1)
        v = problem.evaluate(W).velocity
        a = W[:, :d]
        rho = np.linalg.norm(a, axis=1, keepdims=True)
        u = a / rho
        g = v[:, :d]
        v[:, :d] = np.sum(u * g, axis=1, keepdims=True) * u + rho ** 2 * (g - np.sum(u * g, axis=1, keepdims=True) * u)
        return v[:, mask].ravel()

    solution = solve_ivp(rhs, (0.0, 1.0), W0[:, mask].ravel(), method="DOP853", rtol=1e-12, atol=1e-14)
    exact = solution.y[:, -1].reshape(W0.shape[0], -1)
    errors = []
    for eta in (0.02, 0.01):
        W = mf.run(problem, weight_normalized_descent(problem, eta), W0, 1.0).W
        errors.append(np.abs(W[:, mask] - exact).max())
    plain = np.abs(mf.run(problem, gradient_descent(problem, 0.01), W0, 1.0).W[:, mask] - exact).max()
    print(f"errors {errors}, ratio {errors[0] / errors[1]:.3f}, plain descent {plain:.2e}")
    assert 1.6 < errors[0] / errors[1] < 2.4, errors
    assert plain > 10 * errors[1]


def test_weight_normalized_descent_refuses_a_zero_first_layer_vector():
    problem, W0 = _problem()
    W0[2, :problem.model.d] = 0.0
    with pytest.raises(ValueError, match="a_i != 0"):
        weight_normalized_descent(problem, 0.1).init(W0)


# -- ensembles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dynamics", [
    ("gradient_descent", {"step": 0.05, "weight_decay": 0.3, "weight_decay_schedule": "step",
                          "weight_decay_start": 0.5}),
    ("heavy_ball", {"step": 0.02, "momentum": 0.7, "weight_decay": 0.3, "weight_decay_schedule": "anneal",
                    "weight_decay_time": 0.5}),
    ("weight_normalized_descent", {"step": 0.05, "weight_decay": 0.2}),
])
def test_members_with_weight_decay_equal_their_solo_runs(name, dynamics):
    """Closed-form population members (the batched kernel) with a weight decay: final
    particles and recorded risks bitwise those of each run alone."""
    rng = np.random.default_rng(6)
    d, m = 4, 5
    model = mf.Model(d=d, activation="relu", scaling="mean_field")
    problems = [mf.PopulationProblem(model, mf.Teacher.random(d=d, k=2, activation="relu",
                                                              rng=np.random.default_rng(seed)), method="closed_form")
                for seed in range(3)]
    W0s = np.stack([mf.initialize(model, m, rng) for _ in problems])
    solo, recorded, results, ensemble = solo_and_ensemble(problems, W0s, name, dynamics, 1.0, np.linspace(0, 1.0, 3))
    assert ensemble.batched
    for alone, member, (status, _, W, _) in zip(solo, recorded, results):
        assert status == alone.status == "complete"
        np.testing.assert_array_equal(W, alone.W)
        np.testing.assert_array_equal(member.risk, alone.risk)


# -- experiment files --------------------------------------------------------------------------

def test_run_ids_without_the_new_keys_are_unchanged(tmp_path):
    """The schedule keys at their defaults are left out of the resolved config: a file that
    gives weight_decay_schedule = "constant" has the id of one that does not; a step schedule
    changes the id and is kept."""
    base = {"model": {"d": 3, "m": 4}, "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
            "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 1.0}, "record": {"times": 2}}
    (plain,) = sweep.plan(write(tmp_path, base, "plain.toml"))
    (explicit,) = sweep.plan(write(tmp_path, {**base, "dynamics": {**base["dynamics"], "weight_decay_schedule":
                                                                   "constant"}}, "explicit.toml"))
    (stepped,) = sweep.plan(write(tmp_path, {**base, "dynamics": {**base["dynamics"], "weight_decay": 0.1,
                                                                  "weight_decay_schedule": "step",
                                                                  "weight_decay_start": 2.0}}, "step.toml"))
    assert plain.id == explicit.id and stepped.id != plain.id
    assert not {"weight_decay_schedule", "weight_decay_start", "weight_decay_time"} & set(plain.config["dynamics"])
    assert stepped.config["dynamics"]["weight_decay_start"] == 2.0
    assert sweep.build(stepped.config).integrator.params["weight_decay_schedule"] == "step"


def test_a_sweep_holds_no_decay_beside_a_late_switched_one(tmp_path):
    """[sweep] dynamics.weight_decay = [0.0, 0.05] with a step schedule switched on at t = 2: the
    run without decay drops the schedule keys (lambda(t) = 0 for every schedule) and has the id
    and the resolved config of a run that gives no schedule; the other keeps them. A schedule that
    is inconsistent in itself is still refused at weight_decay = 0 (test BAD)."""
    base = {"model": {"d": 3, "m": 4}, "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
            "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 1.0}, "record": {"times": 2}}
    (plain,) = sweep.plan(write(tmp_path, base, "plain.toml"))
    path = write(tmp_path, {**base, "dynamics": {**base["dynamics"], "weight_decay_schedule": "step",
                                                 "weight_decay_start": 2.0}}, "swept.toml")
    path.write_text(path.read_text() + '[sweep]\n"dynamics.weight_decay" = [0.0, 0.05]\n')
    runs = {run.config["dynamics"]["weight_decay"]: run for run in sweep.plan(path)}
    assert set(runs) == {0.0, 0.05}
    assert runs[0.0].id == plain.id and runs[0.0].config == plain.config
    assert runs[0.05].config["dynamics"]["weight_decay_start"] == 2.0
    assert sweep.build(runs[0.05].config).integrator.params["weight_decay_schedule"] == "step"


BAD = [
    ({"weight_decay_schedule": "step", "weight_decay": 0.1},
     '[dynamics] weight_decay_schedule: "step" switches the decay on at t = weight_decay_start'),
    ({"weight_decay_schedule": "anneal", "weight_decay": 0.1},
     '[dynamics] weight_decay_schedule: "anneal" is lambda_0 / (1 + t / weight_decay_time)'),
    ({"weight_decay_start": 1.0, "weight_decay": 0.1},
     '[dynamics] weight_decay_start: only for weight_decay_schedule = "step", not "constant"'),
    ({"weight_decay_schedule": "step"},
     '[dynamics] weight_decay_schedule: "step" switches the decay on at t = weight_decay_start'),
    ({"weight_decay_schedule": "cosine"}, '[dynamics] weight_decay_schedule = "cosine": must be one of'),
    ({"weight_decay_time": 0.0}, "[dynamics] weight_decay_time = 0.0: must be a number > 0"),
    ({"integrator": "langevin", "beta": 10.0, "weight_decay": 0.1, "weight_decay_schedule": "step",
      "weight_decay_start": 1.0},
     '[dynamics] weight_decay_schedule: not used by "langevin"; use "gradient_descent", "heavy_ball", '
     '"weight_normalized_descent" or "flow"'),
]


BAD_WITH_OTHER_SECTIONS = [
    ({"weight_decay": 0.1}, {"landscape": {"enabled": True}},
     "[dynamics] weight_decay: [landscape] classifies critical points of the risk without decay: needs "
     "weight_decay = 0"),
]


@pytest.mark.parametrize("change, other, message",
                         [(change, {}, message) for change, message in BAD] + BAD_WITH_OTHER_SECTIONS,
                         ids=range(len(BAD) + len(BAD_WITH_OTHER_SECTIONS)))
def test_bad_weight_decay_keys_are_refused(tmp_path, change, other, message):
    """One ConfigError naming the file and the key."""
    doc = {"model": {"d": 3, "m": 4}, "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
           "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 1.0, **change}, "record": {"times": 2},
           **other}
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as error:
        sweep.plan(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)


def test_bad_weight_decay_key_exits_2_with_one_line(tmp_path):
    """On the command line: exit status 2, one line on stderr naming file and key, nothing
    written; also step_error with a decay (its reference flow has none)."""
    for extra, message in (({"dynamics": {"weight_decay_schedule": "step", "weight_decay": 0.1}},
                            "[dynamics] weight_decay_schedule"),
                           ({"dynamics": {"weight_decay": 0.1}, "record": {"times": 2, "step_error": True}},
                            "[record] step_error: measures the distance to the exact flow of F")):
        doc = {"model": {"d": 3, "m": 4},
               "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
               "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 1.0, **extra["dynamics"]},
               "record": extra.get("record", {"times": 2})}
        path = write(tmp_path, doc)
        result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert str(path) in result.stderr and not (tmp_path / "out").exists()


def test_a_decay_the_gpu_update_does_not_apply_is_refused_on_cuda(tmp_path, monkeypatch):
    """An integrator whose GPU update applies no decay (an entry like heavy_ball's without its
    device_keys) is refused on cuda with a decay, naming the key (before the check that a GPU is
    usable); gradient_descent and heavy_ball list every decay key in their device_keys, and
    heavy ball with a decay on cuda passes the rules (planned where a GPU is usable; otherwise
    refused by the GPU check only, which comes after them)."""
    import dataclasses

    doc = {"model": {"d": 3, "m": 4}, "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
           "dynamics": {"integrator": "heavy_ball", "step": 0.05, "t_max": 1.0, "weight_decay": 0.1},
           "record": {"times": 2}, "run": {"backend": "cuda"}}
    path = write(tmp_path, doc)
    try:
        (accepted,) = sweep.plan(path)
        assert accepted.config["dynamics"]["weight_decay"] == 0.1
    except ConfigError as error:
        assert '[run] backend: "cuda" is not usable here' in str(error), error
    for name in ("gradient_descent", "heavy_ball"):
        assert set(INTEGRATORS[name].device_keys) == {"weight_decay", "weight_decay_schedule", "weight_decay_start",
                                                      "weight_decay_time"}
    without = dataclasses.replace(INTEGRATORS["heavy_ball"], device_keys=())
    monkeypatch.setitem(INTEGRATORS, "heavy_ball", without)
    with pytest.raises(ConfigError, match='weight_decay: "heavy_ball" applies no weight_decay on the GPU: use '
                                          'backend = "cpu" or "gradient_descent", "sgd" or "langevin"'):
        sweep.plan(path)
