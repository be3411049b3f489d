"""Deep linear networks: the gradient by finite differences, the 1-D theory against its closed
forms, the matrix flow (on the engine's integrators and run loop) against the 1-D theory, the
stuck case r <= 0, and the conserved quantities W_{k+1}^T W_{k+1} - W_k W_k^T."""
import numpy as np
import pytest

import meanfield as mf
from meanfield import linear


def _spd(n, rng):
    A = rng.standard_normal((n, n))
    return A @ A.T / n + 0.2 * np.eye(n)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    for K in (1, 2, 3):
        problem = linear.DeepLinearProblem(rng.standard_normal((3, 3)), K, covariance=_spd(3, rng))
        W = problem.model.pack(0.7 * rng.standard_normal((K, 3, 3)))
        evaluation = problem.evaluate(W)
        h = 1e-6
        fd = np.empty(problem.model.p)
        for i in range(problem.model.p):
            Wp, Wm = W.copy(), W.copy()
            Wp[0, i] += h
            Wm[0, i] -= h
            fd[i] = (problem.risk(Wp) - problem.risk(Wm)) / (2 * h)
        np.testing.assert_allclose(-evaluation.velocity[0], fd, rtol=1e-6, atol=1e-8)
        P = linear.product(problem.model.unpack(W))
        E = P - problem.target
        assert evaluation.value == pytest.approx(0.5 * np.trace(E @ problem.covariance @ E.T), rel=1e-13)
        assert evaluation.grad_norm == pytest.approx(np.linalg.norm(fd), rel=1e-6)


@pytest.mark.parametrize("r", [1.5, 0.3, 0.0, -0.5])
def test_balanced_closed_forms_match_the_ode_solution(r):
    times = np.linspace(0, 8, 33)
    for K in (1, 2):
        exact = linear.balanced_mode(r, 0.4, times, K)
        numeric = linear.mode_flow(r, np.full(K, 0.4), times)
        np.testing.assert_allclose(numeric, np.repeat(exact[:, None], K, axis=1), rtol=1e-8, atol=1e-10)


def _commuting_run(step, t_max=6.0, integrator="gradient_descent"):
    rng = np.random.default_rng(1)
    eigenvalues = np.array([-0.5, 0.0, 0.7, 1.5])
    R = linear.symmetric_target(eigenvalues, rng)
    problem = linear.DeepLinearProblem(R, K=3)
    w0 = [0.6, 0.8, 1.0]
    W0 = linear.identity_init(problem.model, w0)
    scheme = mf.gradient_descent(problem, step) if integrator == "gradient_descent" else mf.heavy_ball(problem, step)
    times = np.linspace(0, t_max, 7)
    traj = mf.run(problem, scheme, W0, t_max, times=times, keep_particles=True)
    return problem, w0, traj


def test_matrix_flow_follows_the_decoupled_modes():
    """Identity-type init, symmetric target, Sigma = I: each eigen-direction of R follows the
    1-D flow (solve_ivp, rtol 1e-10); gradient descent is first order, so the deviation is
    O(eta) and halves with eta; the matrices stay in the eigenbasis of R."""
    errors = []
    for step in (2e-3, 1e-3):
        problem, w0, traj = _commuting_run(step)
        assert traj.status == "complete" and np.all(np.diff(traj.risk) <= 0)
        r, w_theory, _ = linear.commuting_theory(problem.target, w0, traj.times)
        error = 0.0
        for frame, t_index in zip(traj.particles, range(len(traj.times))):
            matrices = problem.model.unpack(frame)
            _, U = np.linalg.eigh(problem.target)
            for k, M in enumerate(matrices):
                D = U.T @ M @ U
                assert np.abs(D - np.diag(np.diag(D))).max() < 1e-12
                error = max(error, np.abs(np.diag(D) - w_theory[t_index, :, k]).max())
        errors.append(error)
    assert errors[0] < 0.01
    assert 1.7 < errors[0] / errors[1] < 2.3


def test_heavy_ball_follows_the_same_flow():
    problem, w0, traj = _commuting_run(1e-4, t_max=3.0, integrator="heavy_ball")
    _, _, products = linear.commuting_theory(problem.target, w0, traj.times)
    got = np.array([np.linalg.eigvalsh(linear.product(problem.model.unpack(f))) for f in traj.particles])
    # eigvalsh sorts; the theory's modes are in the order of R's eigenvalues, which the
    # products keep here (monotone in r at every t)
    np.testing.assert_allclose(got, products, atol=2e-2)


def test_nonpositive_eigenvalues_get_stuck_at_zero():
    """K = 2, balanced positive init: in directions with r <= 0 the product w^2 decays to 0
    (like 1 / (2t) at r = 0, exponentially at r < 0) and can never reach r; the loss keeps
    r^2 / 2 there, while the direction with r > 0 converges to r."""
    rng = np.random.default_rng(2)
    eigenvalues = np.array([-0.5, 0.0, 1.0])
    problem = linear.DeepLinearProblem(linear.symmetric_target(eigenvalues, rng), K=2)
    W0 = linear.identity_init(problem.model, 0.5)
    traj = mf.run(problem, mf.gradient_descent(problem, 0.01), W0, 40.0, times=[0, 40.0], keep_particles=True)
    P = linear.product(problem.model.unpack(traj.W))
    modes = np.diag(np.linalg.eigh(problem.target)[1].T @ P @ np.linalg.eigh(problem.target)[1])
    assert 0 < modes[0] < 1e-6                      # r = -0.5: exponentially to 0, positive
    assert modes[1] == pytest.approx(linear.balanced_mode(0.0, 0.5, [40.0], 2)[0] ** 2, rel=2e-2)
    assert 0 < modes[1] < 0.02                      # r = 0: like 1 / (2t)
    assert modes[2] == pytest.approx(1.0, abs=1e-6)  # r = 1: converged
    assert traj.risk[-1] == pytest.approx(0.5 * 0.5**2, rel=1e-3)  # stuck: r^2 / 2 remains


def test_conserved_quantities_are_constant_up_to_order_eta():
    """Generic non-commuting init and target, Sigma != I: the flow conserves
    C_k = W_{k+1}^T W_{k+1} - W_k W_k^T; gradient descent changes it by O(eta^2) per step, so
    by O(eta t) at time t: measured drift / (eta t) 2.6 here (required < 4), halving with eta."""
    rng = np.random.default_rng(3)
    problem = linear.DeepLinearProblem(rng.standard_normal((3, 3)), K=3, covariance=_spd(3, rng))
    W0 = problem.model.pack(0.6 * rng.standard_normal((3, 3, 3)))
    C0 = linear.conserved(problem.model.unpack(W0))
    t_max, drifts = 2.0, []
    for step in (1e-2, 5e-3, 2.5e-3):
        traj = mf.run(problem, mf.gradient_descent(problem, step), W0, t_max, times=[0, t_max])
        assert traj.risk[-1] < 0.5 * traj.risk[0]  # it moved
        drift = np.abs(linear.conserved(problem.model.unpack(traj.W)) - C0).max()
        drifts.append(drift)
        assert drift < 4 * step * t_max
    assert 1.8 < drifts[0] / drifts[1] < 2.2 and 1.8 < drifts[1] / drifts[2] < 2.2


def test_bad_states_are_refused():
    problem = linear.DeepLinearProblem(np.eye(2), K=2)
    with pytest.raises(ValueError, match="shape"):
        problem.evaluate(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="square"):
        linear.DeepLinearProblem(np.zeros((2, 3)), K=2)
