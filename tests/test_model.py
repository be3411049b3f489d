"""Model layout, initial laws, teachers, input validation and the command line."""
import math

import numpy as np
import pytest
from scipy.special import erf

import meanfield as mf


def test_gaussian_init_has_the_stated_law():
    """a ~ tau N(0, I/d) and c ~ tau N(0, 1): means and variances within 4 standard errors."""
    tau, d, m = 1.7, 8, 20000
    model = mf.Model(d, "relu")
    W = mf.initialize(model, m, np.random.default_rng(0), mf.Init(tau=tau))
    a, c = model.a(W).ravel(), model.c(W)
    for x, var in ((a, tau**2 / d), (c, tau**2)):
        assert abs(x.mean()) < 4 * math.sqrt(var / x.size)
        assert abs(x.var() - var) < 4 * var * math.sqrt(2 / x.size)
    assert np.all(model.b(W) == 0)


def test_sphere_sign_and_symmetric_inits():
    """Sphere init has |a| = tau exactly, sign init c = +-tau, and the symmetric init gives h = 0."""
    model = mf.Model(5, "tanh", bias=True)
    rng = np.random.default_rng(1)
    W = mf.initialize(model, 400, rng, mf.Init(a="sphere", c="sign", b="gaussian", tau=0.3))
    np.testing.assert_allclose(np.linalg.norm(model.a(W), axis=1), 0.3, rtol=1e-12)
    assert set(np.unique(model.c(W))) == {-0.3, 0.3}
    assert np.std(model.b(W)) > 0.2
    Ws = mf.initialize(model, 10, rng, mf.Init(symmetric=True, b="gaussian"))
    np.testing.assert_array_equal(Ws[:5, :-1], Ws[5:, :-1])
    np.testing.assert_array_equal(Ws[:5, -1], -Ws[5:, -1])
    assert np.abs(model.predict(Ws, rng.standard_normal((50, 5)))).max() < 1e-15
    with pytest.raises(ValueError, match="even"):
        mf.initialize(model, 7, rng, mf.Init(symmetric=True))


def test_predict_matches_the_formula_in_every_scaling():
    """alpha h_m(x) = alpha s sum_i c_i sigma(a_i x + b_i) with s = 1/m (mean field) or 1 (sum)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 4))
    for model in (mf.Model(4, "erf", bias=True, alpha=2.5),
                  mf.Model(4, "relu", scaling="sum", train_readout=False),
                  mf.Model(4, "sigmoid", alpha="sqrt_m")):
        W = mf.initialize(model, 9, rng, mf.Init(b="gaussian"))
        z = X @ model.a(W).T + model.b(W)
        sigma = {"erf": erf(z / np.sqrt(2)), "relu": np.maximum(z, 0),
                 "sigmoid": 1 / (1 + np.exp(-z))}[model.activation]
        s = 1 / 9 if model.scaling == "mean_field" else 1.0
        expected = model.alpha_value(9) * s * sigma @ model.c(W)
        np.testing.assert_allclose(model.predict(W, X), expected, rtol=1e-12)
        if model.scaling == "sum":
            assert np.all(model.c(W) == 1)


def test_teachers():
    """Orthonormal teachers have orthonormal directions and the stated readout; labels
    of classification problems are +-1 with the stated flip rate."""
    t = mf.Teacher.orthonormal(6, 4, readout="sum", rng=np.random.default_rng(3))
    A = t.W[:, :6]
    np.testing.assert_allclose(A @ A.T, np.eye(4), atol=1e-12)
    assert np.all(t.W[:, -1] == 1.0)
    assert np.all(mf.Teacher.orthonormal(6, 4).W[:, -1] == 0.25)
    X = np.random.default_rng(4).standard_normal((20000, 6))
    np.testing.assert_allclose(t(X), np.maximum(X @ A.T, 0).sum(axis=1), rtol=1e-12)
    y = t.labels(X, np.random.default_rng(5), "logistic", flip_prob=0.2)
    clean = np.where(t(X) >= 0, 1.0, -1.0)
    assert set(np.unique(y)) == {-1.0, 1.0}
    flipped = np.mean(y != clean)
    assert abs(flipped - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(y))


@pytest.mark.parametrize("kwargs, match", [
    (dict(d=3, activation="swish"), "activation"),
    (dict(d=0), "d must be"),
    (dict(d=3, scaling="sum"), "train_readout=False"),
    (dict(d=3, alpha=-1.0), "alpha"),
    (dict(d=3, alpha="big"), "alpha"),
    (dict(d=3, dtype="float16"), "dtype"),
])
def test_model_rejects_bad_parameters(kwargs, match):
    """Bad model parameters raise one clear ValueError naming the parameter."""
    with pytest.raises(ValueError, match=match):
        mf.Model(**kwargs)


def test_problems_reject_bad_data():
    """Finite-data and population problems refuse wrong shapes, NaN, bad labels, bad methods."""
    model = mf.Model(3, "relu")
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="shape"):
        mf.FiniteDataProblem(model, np.zeros((5, 4)), np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        mf.FiniteDataProblem(model, X, np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        mf.FiniteDataProblem(model, X, np.array([0, 1, np.nan, 0, 0.0]))
    with pytest.raises(ValueError, match="labels"):
        mf.FiniteDataProblem(model, X, np.arange(5.0), loss="logistic")
    teacher = mf.Teacher.orthonormal(3, 2)
    with pytest.raises(ValueError, match="closed_form"):
        mf.PopulationProblem(mf.Model(3, "tanh"), mf.Teacher.orthonormal(3, 2, "tanh"), method="closed_form")
    with pytest.raises(ValueError, match="rng"):
        mf.PopulationProblem(model, teacher, loss="logistic")
    with pytest.raises(ValueError, match="dimension"):
        mf.PopulationProblem(mf.Model(4, "relu"), teacher)
    with pytest.raises(ValueError, match="shape"):
        mf.PopulationProblem(model, teacher).evaluate(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="step"):
        mf.gradient_descent(mf.PopulationProblem(model, teacher), step=0.0)
    with pytest.raises(TypeError, match="rng"):
        p = mf.PopulationProblem(model, teacher)
        mf.run(p, mf.sgd(p, 0.1, batch_size=4), np.ones((3, 5)), t_max=1.0)


def test_time_grids():
    """Linear and log grids start at 0 and end at t_max; bad grids are refused."""
    lin = mf.time_grid(5.0, 6)
    np.testing.assert_allclose(lin, [0, 1, 2, 3, 4, 5])
    log = mf.time_grid(100.0, 4, spacing="log", t_min=1.0)
    np.testing.assert_allclose(log, [0, 1, 10, 100])
    with pytest.raises(ValueError):
        mf.time_grid(-1.0)
    with pytest.raises(ValueError):
        mf.time_grid(1.0, spacing="cubic")


def test_narrow_init_is_a_prefix_of_a_wide_init():
    """With the same generator state, a width-m state is the first m rows of a width-M state,
    for every column (a, b, c): widths are coupled through their initial points."""
    model = mf.Model(5, "tanh", bias=True)
    for init in (mf.Init(b="gaussian"), mf.Init(a="sphere", c="sign", b="gaussian", tau=0.5)):
        narrow = mf.initialize(model, 7, np.random.default_rng(9), init)
        wide = mf.initialize(model, 40, np.random.default_rng(9), init)
        np.testing.assert_array_equal(narrow, wide[:7])
