"""Tracers under Langevin noise: the keyed noise stream and the [limit] table with Langevin."""
import json

import h5py
import numpy as np
import pytest

import meanfield as mf
from meanfield import limits, sweep
from meanfield.cli import main
from meanfield.engine._integrators import keyed_normal, noise_key

DOC = """
[model]
d = 4
m = 8
activation = "relu"
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 2
[dynamics]
integrator = "langevin"
beta = 10.0
step = 0.5
t_max = 4.0
[record]
times = 5
[limit]
reference_m = {M}
metrics = ["risk_gap", "tracer_deviation"]
[sweep]
"model.m" = {widths}
"run.seed" = {seeds}
"""


def experiment(tmp_path, M=8, widths=(4, 8), seeds=(0, 1)):
    path = tmp_path / "langevin_limit.toml"
    path.write_text(DOC.format(M=M, widths=json.dumps(list(widths)), seeds=json.dumps(list(seeds))))
    return path


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_keyed_stream_is_a_prefix_of_wider_blocks(dtype):
    """The block of step k for m rows is the first m rows of the block for M > m rows, bitwise;
    it is numpy's own property (``standard_normal(size=n)`` is a prefix of ``size=n2``, checked
    here on a plain generator) applied row-major; blocks of other steps and keys differ."""
    plain = np.random.default_rng(np.random.SeedSequence(3))
    first = plain.standard_normal(size=50, dtype=dtype)
    again = np.random.default_rng(np.random.SeedSequence(3)).standard_normal(size=5000, dtype=dtype)
    np.testing.assert_array_equal(first, again[:50])

    key = noise_key(np.random.default_rng(np.random.SeedSequence(11, spawn_key=(2, 2))))
    wide = keyed_normal(key, 7, np.empty((1000, 6), dtype=dtype))
    for m in (1, 3, 64, 999):
        np.testing.assert_array_equal(keyed_normal(key, 7, np.empty((m, 6), dtype=dtype)), wide[:m])
    assert not np.any(keyed_normal(key, 8, np.empty((1000, 6), dtype=dtype)) == wide)
    other = noise_key(np.random.default_rng(np.random.SeedSequence(11, spawn_key=(3, 2))))
    assert not np.any(keyed_normal(other, 7, np.empty((1000, 6), dtype=dtype)) == wide)
    assert abs(wide.mean()) < 0.05 and abs(wide.std() - 1) < 0.05  # 6000 draws: sd of the mean 0.013


def test_a_tracer_receives_the_increments_of_its_particle():
    """One step of a width-4 run and of a width-8 run carrying it as tracers (same SeedSequence):
    the increments the tracers receive are bitwise those the width-4 run's particles receive,
    the width-8 run's own particles take the same rows, and the width-4 run's state after its
    step equals W0 + eta v + sqrt(2 eta / beta) xi computed here from the keyed block, and
    the tracers the same with the width-8 field (on the trainable columns; the bias column of
    this model stays 0)."""
    model = mf.Model(4, "relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(4, 2))
    W8 = mf.initialize(model, 8, np.random.default_rng(0))
    eta, beta = 0.5, 10.0
    integrator = mf.langevin(problem, eta, beta=beta, noise="keyed", tracer_rows=[0, 1, 2, 3])
    narrow = integrator.init(W8[:4], np.random.default_rng(np.random.SeedSequence(5)))
    wide = integrator.init(W8, np.random.default_rng(np.random.SeedSequence(5)), tracers=W8[:4])
    velocity = problem.evaluate(W8[:4]).velocity.copy()
    integrator.step(narrow)
    integrator.step(wide)
    xi = narrow.scratch["keyed_noise"]
    assert xi.shape == (4, 6)
    np.testing.assert_array_equal(wide.scratch["tracer_noise"], xi)
    np.testing.assert_array_equal(wide.scratch["keyed_noise"][:4], xi)
    expected = np.where(model.trainable, W8[:4] + eta * velocity + np.sqrt(2 * eta / beta) * xi, W8[:4])
    np.testing.assert_allclose(narrow.W, expected, rtol=0, atol=1e-14)
    field = problem.evaluate(W8, points=W8[:4]).points_velocity  # the tracers feel the width-8 field
    expected = np.where(model.trainable, W8[:4] + eta * field + np.sqrt(2 * eta / beta) * xi, W8[:4])
    np.testing.assert_allclose(wide.tracers, expected, rtol=0, atol=1e-14)


def test_resumed_keyed_run_is_bitwise_uninterrupted():
    """A keyed Langevin run with tracers stopped at t = 1 and restored with a fresh generator
    continues bitwise as the uninterrupted run (the keyed noise has no state); the same resume
    of a run with the stream noise does not (the check can tell)."""
    model = mf.Model(4, "relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(4, 2))
    W0 = mf.initialize(model, 16, np.random.default_rng(1))

    def resumed(noise):
        make = dict(step=0.1, beta=20.0, weight_decay=0.01, noise=noise)
        tracers = W0[:6] if noise == "keyed" else None
        rng = np.random.default_rng(np.random.SeedSequence(9))
        whole = mf.run(problem, mf.langevin(problem, **make), W0, t_max=2.0, rng=rng, tracers=tracers)
        integrator = mf.langevin(problem, **make)
        half = mf.run(problem, integrator, W0, t_max=1.0, rng=np.random.default_rng(np.random.SeedSequence(9)),
                      tracers=tracers)
        state = mf.restore(integrator, half.final.W, half.final.step, half.final.value, half.final.buffers,
                           np.random.default_rng(np.random.SeedSequence(9)), half.final.tracers)
        rest = mf.run(problem, integrator, W0, t_max=2.0, state=state, tracers=tracers)
        return whole.final, rest.final

    whole, rest = resumed("keyed")
    assert whole.step == rest.step == 20
    np.testing.assert_array_equal(rest.W, whole.W)
    np.testing.assert_array_equal(rest.tracers, whole.tracers)
    whole, rest = resumed("stream")
    assert not np.array_equal(rest.W, whole.W)


def test_tracer_deviation_is_zero_at_m_equal_M(tmp_path):
    """[limit] with Langevin: the member of width M = 8 and its reference's tracers (same
    particles, same keyed noise, same field) stay equal, deviation and risk gap exactly 0 at
    every record; the width-4 member's tracers move away (> 1e-4 after t = 0)."""
    out = tmp_path / "out"
    assert main(["run", str(experiment(tmp_path)), "--out", str(out), "--quiet"]) == 0
    pairs = limits.pairs(out)
    assert len(pairs) == 4 and all(reference is not None for _, reference in pairs)
    for member_path, _ in pairs:
        with h5py.File(member_path, "r") as f:
            m = json.loads(f.attrs["config"])["model"]["m"]
            deviation = f["observables/limit/tracer_deviation/value"][()]
            gap = f["observables/limit/risk_gap/value"][()]
        assert deviation.shape == (5,) and deviation[0] == 0
        if m == 8:
            assert np.all(deviation == 0) and np.all(gap == 0), (deviation, gap)
        else:
            assert np.all(deviation[1:] > 1e-4) and np.all(np.isfinite(deviation)), deviation


def test_tracer_deviation_shrinks_with_the_width(tmp_path):
    """Propagation of chaos with noise: against M = 256, the seed-averaged deviation of m = 32
    is below half that of m = 8 at every recorded t > 0 (1/m predicts a quarter; measured
    0.0011/0.017, 0.0081/0.062, 0.045/0.197, 0.092/0.387 at t = 1, 2, 3, 4, three seeds)."""
    out = tmp_path / "out"
    path = experiment(tmp_path, M=256, widths=(8, 32), seeds=(0, 1, 2))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    result = limits.collect(out, "tracer_deviation")
    assert list(result["widths"]) == [8, 32] and list(result["seeds"]) == [0, 1, 2]
    mean = result["values"].mean(axis=2)
    assert np.all(mean[0] == 0) and np.all(mean[1:, 0] > 0)
    assert np.all(mean[1:, 1] < 0.5 * mean[1:, 0]), mean


def test_config_accepts_limit_with_langevin(tmp_path):
    """Members and references of a [limit] table with Langevin are planned with keyed noise
    (the reference's tracers take the rows of their members' particles) and outside ensembles;
    on the CUDA backend the same file runs in the simulator (tests/cuda_sim_kernels.py,
    ``test_meanfield_run_limit_with_langevin_on_cuda``)."""
    path = experiment(tmp_path)
    specs = sweep.plan(path)
    assert sorted(s.config["limit"]["role"] for s in specs) == ["member"] * 4 + ["reference"] * 2
    for spec in specs:
        built = sweep.build(spec.config)
        assert built.integrator.name == "langevin" and built.integrator.params["noise"] == "keyed"
        assert sweep.ensemble_key(spec) is None
    reference = sweep.build(next(s for s in specs if s.config["limit"]["role"] == "reference").config)
    state = reference.integrator.init(reference.W0, reference.rng, reference.tracers)
    np.testing.assert_array_equal(state.scratch["tracer_rows"], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7])


def test_runs_without_limit_keep_the_stream_noise(tmp_path):
    """A Langevin run without [limit], or with [limit] tracers = false, draws its noise in order
    from its dynamics stream as before: its integrator is not keyed."""
    path = experiment(tmp_path)
    for spec in sweep.plan(path, overrides=["limit.tracers=false"]):
        assert "noise" not in sweep.build(spec.config).integrator.params
    text = path.read_text().split("[limit]")[0] + '[sweep]\n"run.seed" = [0]\n'
    path.write_text(text)
    (spec,) = sweep.plan(path)
    assert "noise" not in sweep.build(spec.config).integrator.params
