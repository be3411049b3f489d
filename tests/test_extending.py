"""The worked examples of docs/extending.md: a new integrator and a new observable, each added
as one registry entry (no other file changed), run from an experiment file end to end.

- The integrator (explicit midpoint, second order in dt) is checked against the same scheme
  written here in numpy on the problem's velocity, and against gradient descent's first-order
  error: on the same run, its distance to the exact flow is far smaller.
- The observable (the mean output weight) reaches the HDF5 file and ``meanfield.analysis``'s
  xarray Dataset, and equals the mean of the stored particles' c column at every record.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_sweep import merged, write

from meanfield import kernels, sweep
from meanfield.engine import _integrators
from meanfield.engine._integrators import Integrator, IntegratorEntry, _advance, _make_init, _positive
from meanfield.experiments import _assembly

# --- the worked example of an integrator (docs/extending.md shows this code) -------------------

def midpoint(problem, step: float) -> Integrator:
    """Explicit midpoint (RK2) on dW/dt = v(W): W <- W + eta v(W + eta/2 v(W)); dt = eta."""
    eta = _positive("step", step)

    def step_fn(state):
        first = problem.evaluate(state.W)
        half = state.W + 0.5 * eta * first.velocity
        second = problem.evaluate(half)
        kernels.euler_update(state.W, second.velocity, eta)
        return _advance(state, first.value, eta)

    return Integrator(_make_init(problem, False, (), "midpoint has no tracers"), step_fn, eta, "midpoint",
                      {"step": eta}, False)


MIDPOINT = IntegratorEntry("midpoint", lambda problem, dc: midpoint(problem, dc["step"]), lambda dc: dc["step"],
                           keys=("step",), deterministic=True, tracers=False)


# --- the worked example of an observable -------------------------------------------------------

class MeanReadout:
    """The mean output weight (1/m) sum_i c_i at each record."""

    names = ("mean_readout",)

    def __call__(self, state) -> dict:
        return {"mean_readout": float(np.mean(state.W[:, -1]))}


MEAN_READOUT = _assembly.ObservableEntry("mean_readout", lambda config: True, lambda context: MeanReadout())


@pytest.fixture
def registered(monkeypatch):
    """Register the two entries for one test (as a module would at import), then remove them."""
    monkeypatch.setitem(_integrators.INTEGRATORS, "midpoint", MIDPOINT)
    monkeypatch.setitem(_assembly.OBSERVABLES, "mean_readout", MEAN_READOUT)


def _run(tmp_path, **changes):
    path = write(tmp_path, merged(**changes))
    specs = sweep.plan(str(path))
    (tmp_path / "out").mkdir()
    summary = sweep.execute(specs[0], tmp_path / "out")
    assert summary["status"] == "complete", summary
    return specs[0], summary["path"]


def test_registered_integrator_runs_from_an_experiment_file(tmp_path, registered):
    spec, path = _run(tmp_path, dynamics__integrator="midpoint", dynamics__step=0.25, dynamics__t_max=2.0)
    experiment = sweep.build(spec.config)
    W = experiment.W0.copy()
    for _ in range(8):  # the scheme in numpy, on the same problem
        v1 = experiment.problem.evaluate(W).velocity
        W = W + 0.25 * experiment.problem.evaluate(W + 0.125 * v1).velocity
    with h5py.File(path) as f:
        stored = f["particles/neurons/position/value"][-1]
        assert f.attrs["run_id"] == spec.id
    np.testing.assert_allclose(stored, W, rtol=1e-12, atol=1e-14)


def test_registered_integrator_is_second_order(tmp_path, registered):
    """Against the exact flow at t = 2: the midpoint error falls 4x when dt halves, gradient
    descent's 2x; and at dt = 0.25 midpoint is far closer."""
    import meanfield as mf

    spec, _ = _run(tmp_path, dynamics__integrator="midpoint", dynamics__step=0.25, dynamics__t_max=2.0)
    problem, W0 = sweep.build(spec.config).problem, sweep.build(spec.config).W0
    exact = mf.run(problem, mf.flow(problem, rtol=1e-12, atol=1e-14), W0, 2.0, times=[0.0, 2.0],
                   keep_particles=True).particles[-1]

    def error(integrator):
        return np.abs(mf.run(problem, integrator, W0, 2.0, times=[0.0, 2.0], keep_particles=True).particles[-1]
                      - exact).max()

    mid = [error(midpoint(problem, eta)) for eta in (0.25, 0.125)]
    gd = [error(mf.gradient_descent(problem, eta)) for eta in (0.25, 0.125)]
    assert 3.0 < mid[0] / mid[1] < 5.0, mid
    assert 1.5 < gd[0] / gd[1] < 2.5, gd
    assert mid[0] < 0.2 * gd[0], (mid, gd)


def test_unregistered_integrator_is_refused_with_the_allowed_names(tmp_path, capsys):
    from meanfield.cli import main

    path = write(tmp_path, merged(dynamics__integrator="midpoint"))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "integrator" in err and '"gradient_descent"' in err and '"flow"' in err
    assert not (tmp_path / "out").exists()


def test_registered_observable_reaches_the_file_and_xarray(tmp_path, registered):
    pytest.importorskip("xarray")
    from meanfield.analysis import open_run

    spec, path = _run(tmp_path, dynamics__integrator="heavy_ball", dynamics__step=0.1, record__times=5)
    with h5py.File(path) as f:
        series = f["observables/mean_readout/value"][()]
        frames = f["particles/neurons/position/value"][()]
        steps = f["observables/mean_readout/step"][()]
        np.testing.assert_array_equal(steps, f["observables/risk/step"][()])
    assert series.shape == (5,)
    np.testing.assert_allclose(series, frames[:, :, -1].mean(axis=1), rtol=1e-14)
    with open_run(path) as ds:
        np.testing.assert_array_equal(ds["mean_readout"].values, series)
        assert ds["mean_readout"].dims == ("time",)
        np.testing.assert_array_equal(ds["step"].values, steps)


def test_a_run_without_the_entry_has_no_such_series(tmp_path):
    _, path = _run(tmp_path)
    with h5py.File(path) as f:
        assert "observables/mean_readout" not in f


# --- activations: the registry entries agree with the kernels ------------------------------------

def test_activation_entries_are_the_kernels_activations():
    from meanfield.engine._activations import ACTIVATION_ENTRIES

    assert list(ACTIVATION_ENTRIES) == list(kernels.ACTIVATION_CODES)
    assert all(entry.code == kernels.ACTIVATION_CODES[name] for name, entry in ACTIVATION_ENTRIES.items())


@pytest.mark.parametrize("name", list(kernels.ACTIVATION_CODES))
def test_activation_numpy_twins_match_the_kernel_code(name):
    """The entry's numpy sigma and sigma' equal the compiled kernels' at random and large |z|
    (relu'(0) = 0 in both)."""
    from meanfield.engine._activations import ACTIVATION_ENTRIES

    entry = ACTIVATION_ENTRIES[name]
    z = np.concatenate([np.random.default_rng(5).normal(0.0, 3.0, 200), [0.0, -40.0, 40.0, 1e-300]])
    code = kernels.ACTIVATION_CODES[name]
    sigma = np.array([kernels.activation(x, code) for x in z])
    prime = np.array([kernels.activation_derivative(x, code) for x in z])
    np.testing.assert_allclose(entry.sigma(z), sigma, rtol=1e-13, atol=1e-300)
    # 1 - tanh(z)^2 and s (1 - s) cancel: an absolute rounding floor of a few 1e-16.
    np.testing.assert_allclose(entry.sigma_prime(z), prime, rtol=1e-12, atol=1e-15)


def test_activation_closed_form_flags_match_the_kernels():
    """The activations flagged closed_form are those whose bias-free closed-form pair term is
    right: kappa(a, a') = E sigma(a . x) sigma(a' . x) against 2-D adaptive quadrature (scipy)
    for one pair each; the bias_closed_form ones are the kernels' BIAS_CLOSED_FORM_CODES."""
    from scipy import integrate

    from meanfield.engine._activations import ACTIVATION_ENTRIES, activations_where
    from meanfield.kernels.population_bias import BIAS_CLOSED_FORM_CODES

    bias = activations_where(lambda entry: entry.bias_closed_form)
    assert {kernels.ACTIVATION_CODES[name] for name in bias} == set(BIAS_CLOSED_FORM_CODES)
    a = np.array([[0.9, -0.4, 0.3, 0.0, 1.0]])  # d = 3, b = 0, c = 1
    b = np.array([[0.2, 0.7, -1.1, 0.0, 1.0]])
    ra, rb = np.linalg.norm(a[0, :3]), np.linalg.norm(b[0, :3])
    rho = a[0, :3] @ b[0, :3] / (ra * rb)
    K, G = np.empty(1), np.empty((1, 4))
    for name in activations_where(lambda entry: entry.closed_form):
        sigma = ACTIVATION_ENTRIES[name].sigma

        def integrand(z2, z1):
            u = np.array([ra * z1])
            v = np.array([rb * (rho * z1 + np.sqrt(1.0 - rho * rho) * z2)])
            return float(sigma(u)[0] * sigma(v)[0]) * np.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2.0 * np.pi)

        reference, _ = integrate.dblquad(integrand, -9.0, 9.0, -9.0, 9.0, epsabs=1e-11, epsrel=1e-10)
        kernels.closed_form_pair_field(a, b, kernels.ACTIVATION_CODES[name], K, G)
        assert abs(K[0] - reference) <= 1e-8 * max(1.0, abs(reference)), (name, K[0], reference)
