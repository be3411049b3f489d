"""Every velocity is minus m times the gradient of its objective (central finite differences).

Covers every activation x loss x problem kind x bias/readout/scaling option; relative error
< 1e-6 in float64, as the engine issue requires.
"""
import itertools

import numpy as np
import pytest

import meanfield as mf

D = 3
M = 5
H = 1e-6
ACTIVATIONS = mf.ACTIVATIONS
CLOSED = ("relu", "erf", "linear")
LOSSES = ("squared", "logistic", "exponential")

# (bias, train_readout, scaling, alpha)
OPTIONS = [
    (False, True, "mean_field", 1.0),
    (True, True, "mean_field", 1.0),
    (True, False, "mean_field", 3.0),
    (False, False, "sum", 1.0),
    (True, True, "mean_field", "sqrt_m"),
]


def finite_difference_velocity(objective, W, trainable):
    """-m dF/dW by central differences on the trainable columns (0 elsewhere)."""
    m = W.shape[0]
    V = np.zeros_like(W)
    for i, k in itertools.product(range(W.shape[0]), range(W.shape[1])):
        if not trainable[k]:
            continue
        Wp = W.copy()
        Wm = W.copy()
        Wp[i, k] += H
        Wm[i, k] -= H
        V[i, k] = -m * (objective(Wp) - objective(Wm)) / (2 * H)
    return V


def state(model, seed):
    rng = np.random.default_rng(seed)
    W = mf.initialize(model, M, rng, mf.Init(b="gaussian"))
    if model.train_readout or model.scaling == "mean_field":
        # random readout even when frozen, so the frozen value matters
        W[:, -1] = rng.standard_normal(M) if model.scaling == "mean_field" else 1.0
    return W


def teacher(activation, bias, seed=1):
    return mf.Teacher.random(D, 3, np.random.default_rng(seed), activation=activation, bias=bias)


def check(problem, W, objective=None, velocity=None):
    objective = objective or problem.risk
    if velocity is None:
        velocity = problem.evaluate(W).velocity
    expected = finite_difference_velocity(objective, W, problem.model.trainable)
    frozen = ~problem.model.trainable
    assert np.all(velocity[:, frozen] == 0), "frozen columns must have zero velocity"
    error = np.linalg.norm(velocity - expected) / np.linalg.norm(expected)
    assert error < 1e-6, f"relative error {error:.2e}"


def model_for(activation, options):
    bias, train_readout, scaling, alpha = options
    return mf.Model(D, activation, bias=bias, train_readout=train_readout, scaling=scaling, alpha=alpha)


@pytest.mark.parametrize("activation", CLOSED)
@pytest.mark.parametrize("options", [o for o in OPTIONS if not o[0]])
def test_population_closed_form_velocity_is_minus_gradient(activation, options):
    """Closed-form population risk (relu, erf, linear; no bias): v = -m grad F."""
    model = model_for(activation, options)
    problem = mf.PopulationProblem(model, teacher(activation, False), noise_std=0.3)
    assert problem.method == "closed_form"
    check(problem, state(model, 2))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("options", OPTIONS)
def test_population_quadrature_velocity_is_minus_gradient(activation, options):
    """Quadrature population risk (any activation, with bias): v = -m grad of that risk."""
    model = model_for(activation, options)
    problem = mf.PopulationProblem(model, teacher(activation, options[0]), method="quadrature",
                                   quadrature_order=12)
    check(problem, state(model, 3))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("options", OPTIONS)
def test_finite_data_velocity_is_minus_gradient(activation, loss, options):
    """Empirical risk on a finite training set: every activation, loss and option."""
    model = model_for(activation, options)
    problem = mf.FiniteDataProblem.from_teacher(model, teacher(activation, options[0]), 41,
                                                np.random.default_rng(4), loss=loss, noise_std=0.1)
    check(problem, state(model, 5))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_population_monte_carlo_velocity_is_minus_gradient(activation, loss):
    """Population risk on a fixed Monte Carlo sample (needed for non-squared losses)."""
    model = mf.Model(D, activation, bias=True)
    problem = mf.PopulationProblem(model, teacher(activation, True), loss=loss, method="monte_carlo",
                                   mc_samples=57, rng=np.random.default_rng(6))
    assert problem.method == "monte_carlo"
    check(problem, state(model, 7))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["population", "finite"])
def test_batch_velocity_is_minus_gradient_of_batch_loss(loss, kind):
    """Online / minibatch SGD: the batch velocity is -m grad of the loss on that batch."""
    model = mf.Model(D, "sigmoid", bias=True)
    t = teacher("sigmoid", True)
    if kind == "population":
        problem = mf.PopulationProblem(model, t, loss=loss, method="monte_carlo", mc_samples=10,
                                       rng=np.random.default_rng(0))
    else:
        problem = mf.FiniteDataProblem.from_teacher(model, t, 30, np.random.default_rng(8), loss=loss)
    W = state(model, 9)

    def batch_objective(V):
        return problem.batch_evaluate(V, np.random.default_rng(10), 13).value

    velocity = problem.batch_evaluate(W, np.random.default_rng(10), 13).velocity
    check(problem, W, batch_objective, velocity)


@pytest.mark.parametrize("kind", ["closed_form", "quadrature", "finite"])
def test_field_at_points_is_the_velocity_of_a_tracer(kind):
    """v[mu_m](x) at a point equal to a particle is that particle's velocity, and extra
    points feel the field without acting on the particles (tracers)."""
    model = mf.Model(D, "erf", bias=kind != "closed_form")
    t = teacher("erf", False)
    if kind == "finite":
        problem = mf.FiniteDataProblem.from_teacher(model, t, 37, np.random.default_rng(3))
    else:
        problem = mf.PopulationProblem(model, t, method=kind, quadrature_order=12)
    W = state(model, 11)
    other = state(model, 12)[:2]
    points = np.vstack([W[2:3], other, W[4:5]])
    evaluation = problem.evaluate(W, points)
    alone = problem.evaluate(W)
    np.testing.assert_allclose(evaluation.points_velocity[0], alone.velocity[2], rtol=1e-12)
    np.testing.assert_allclose(evaluation.points_velocity[3], alone.velocity[4], rtol=1e-12)
    np.testing.assert_array_equal(evaluation.velocity, alone.velocity)
    assert evaluation.value == alone.value
    # the tracers' own velocity differs from every particle's (they are elsewhere)
    assert np.abs(evaluation.points_velocity[1:3, None] - alone.velocity[None]).max(axis=-1).min() > 1e-6
    np.testing.assert_allclose(problem.velocity_at(W, points), evaluation.points_velocity, rtol=1e-12)
