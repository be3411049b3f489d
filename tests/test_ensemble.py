"""Ensembles: runs that share everything but their seed advance together (one batch dimension),
and each member ends as its own run with bitwise the numbers it has alone.

References: the tiled closed-form kernels (``kernels.population``) for the fused kernel; the
run loop ``meanfield.run`` and ``descend_to_precision`` of each member alone for the ensemble
loop and the batched descent; a sweep with ensembles turned off for the sweep level.
"""
import os
import signal

import h5py
import numba
import numpy as np
import pytest

import meanfield as mf
from meanfield import kernels, sweep
from meanfield.engine import _ensemble, _interrupt, _problems
from meanfield.engine._integrators import INTEGRATORS
from meanfield.landscape._precise import descend_batch, descend_to_precision


def problem_for(activation="relu", d=5, k=3, train_readout=False, seed=0, scaling="sum"):
    model = mf.Model(d=d, activation=activation, train_readout=train_readout, scaling=scaling)
    teacher = mf.Teacher.random(d=d, k=k, activation=activation, rng=np.random.default_rng(100 + seed)) \
        if seed else mf.Teacher.orthonormal(d=d, k=k, activation=activation, readout="sum")
    return mf.PopulationProblem(model, teacher, method="closed_form")


def hard_state(d, m, rng):
    """Particles where closed forms are weakest: a duplicate, an antipode, a parallel copy,
    a zero vector, large weights, signed readouts."""
    W = np.zeros((m, d + 2))
    W[:, :d] = rng.standard_normal((m, d)) / np.sqrt(d)
    W[:, d + 1] = rng.choice([-1.5, 0.7, 1.0], m)
    W[1, :d] = W[0, :d]  # duplicated particle: correlation +1
    W[2, :d] = -W[0, :d]  # correlation -1
    W[3, :d] = 1e3 * W[4, :d]  # parallel, large
    W[5, :d] = 0.0  # a = 0
    return W


def tiled(problem, W, points=None):
    """The evaluation of the tiled kernels (the fused path switched off)."""
    saved = _problems.FUSED_MAX_PAIRS
    _problems.FUSED_MAX_PAIRS = -1
    try:
        return problem.evaluate(W, points)
    finally:
        _problems.FUSED_MAX_PAIRS = saved


@pytest.mark.parametrize("activation", ["relu", "erf", "linear"])
@pytest.mark.parametrize("train_readout", [False, True])
def test_fused_kernel_matches_the_tiled_kernels(activation, train_readout):
    """The fused per-network pass gives the objective and velocity of the tiled kernels to
    rounding, at duplicated, antipodal, parallel, zero and large particles (odd sizes)."""
    rng = np.random.default_rng(1)
    problem = problem_for(activation, d=5, k=3, train_readout=train_readout, seed=2, scaling="mean_field")
    W = hard_state(5, 7, rng)
    assert problem.expectation.fused_applies(7)
    fused, reference = problem.evaluate(W), tiled(problem, W)
    scale = np.abs(reference.velocity).max()
    np.testing.assert_allclose(fused.velocity, reference.velocity, rtol=0, atol=1e-12 * scale)
    assert abs(fused.value - reference.value) <= 1e-12 * max(1.0, abs(reference.value))
    if not train_readout:
        assert np.all(fused.velocity[:, -1] == 0) and np.all(fused.velocity[:, -2] == 0)


def test_fused_kernel_against_the_fused_reference_sums():
    """K and G of the fused pass through v = -m s [c (s G - G* / alpha), s K - K* / alpha],
    recomputed from ``kernels.fused_closed_form_pair_field`` (the scalar reference)."""
    rng = np.random.default_rng(3)
    problem = problem_for("relu", d=4, k=2, train_readout=True, seed=3, scaling="mean_field")
    W = hard_state(4, 6, rng)
    m, d = 6, 4
    K, G = np.empty(m), np.empty((m, d + 1))
    Kt, Gt = np.empty(m), np.empty((m, d + 1))
    kernels.fused_closed_form_pair_field(W, W, kernels.ACTIVATION_CODES["relu"], K, G)
    kernels.fused_closed_form_pair_field(W, problem.teacher_W, kernels.ACTIVATION_CODES["relu"], Kt, Gt)
    s, alpha = problem.model.output_scale(m), problem.model.alpha_value(m)
    c = W[:, -1:]
    expected = np.zeros_like(W)
    expected[:, :d] = -m * s * c * (s * G[:, :d] - Gt[:, :d] / alpha)
    expected[:, -1] = -m * s * (s * K - Kt / alpha)
    value = problem.label_second_moment / (2 * alpha**2) - s / alpha * (c[:, 0] @ Kt) + 0.5 * s * s * (c[:, 0] @ K)
    got = problem.evaluate(W)
    np.testing.assert_allclose(got.velocity, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    assert abs(got.value - value) < 1e-12 * max(1, abs(value))


def test_members_are_independent_and_thread_count_free():
    """Member b of a batched call is bitwise the member evaluated alone, whatever the other
    members and the number of threads."""
    rng = np.random.default_rng(4)
    members = [problem_for("relu", d=6, k=4, seed=s) for s in (1, 2, 3)]
    Ws = np.stack([hard_state(6, 9, rng) for _ in members])
    ensemble = _ensemble.PopulationEnsemble(members, 9)
    assert ensemble.batched
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = ensemble.evaluate(Ws.reshape(-1, 8))
        numba.set_num_threads(max(1, min(2, numba.config.NUMBA_NUM_THREADS)))
        two = ensemble.evaluate(Ws.reshape(-1, 8))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one.velocity, two.velocity)
    np.testing.assert_array_equal(one.value, two.value)
    for b, problem in enumerate(members):
        alone = problem.evaluate(Ws[b])
        np.testing.assert_array_equal(one.velocity[b * 9:(b + 1) * 9], alone.velocity)
        assert one.value[b] == alone.value


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_a_tracer_on_a_particle_moves_bitwise_with_it(activation):
    """The field at points (tracers) is in the fused pass's arithmetic: a point on particle i gets
    bitwise its velocity; the particles' velocities do not depend on the points; other points
    get the tiled kernels' field to rounding."""
    rng = np.random.default_rng(5)
    problem = problem_for(activation, d=5, k=3, train_readout=True, seed=4, scaling="mean_field")
    W = hard_state(5, 8, rng)
    points = np.vstack([W[[0, 3, 5, 7]], rng.standard_normal((2, 7))])
    with_points, alone = problem.evaluate(W, points), problem.evaluate(W)
    np.testing.assert_array_equal(with_points.velocity, alone.velocity)
    np.testing.assert_array_equal(with_points.points_velocity[:4], alone.velocity[[0, 3, 5, 7]])
    reference = tiled(problem, W, points).points_velocity
    np.testing.assert_allclose(with_points.points_velocity, reference, rtol=0,
                               atol=1e-12 * np.abs(reference).max())


def solo_and_ensemble(problems, W0s, integrator_name, dynamics, t_max, times):
    m = W0s.shape[1]
    solo = []
    for problem, W0 in zip(problems, W0s):
        integrator = INTEGRATORS[integrator_name].build(problem, dynamics)
        solo.append(mf.run(problem, integrator, W0, t_max, times=times))
    ensemble = _ensemble.PopulationEnsemble(problems, m)
    integrator = INTEGRATORS[integrator_name].build(ensemble, dynamics)
    recorded = [mf.Trajectory() for _ in problems]
    results = _ensemble.run_ensemble(ensemble, integrator, W0s, t_max, times, [[r] for r in recorded])
    return solo, recorded, results, ensemble


@pytest.mark.parametrize("integrator_name, dynamics", [("gradient_descent", {"step": 0.05}),
                                                       ("heavy_ball", {"step": 0.02, "momentum": 0.7})])
@pytest.mark.parametrize("kind", ["closed_form", "series", "finite_data"])
def test_members_equal_their_solo_runs(integrator_name, dynamics, kind):
    """Every deterministic fixed-step integrator, batched (closed form) and member by member
    (series, finite data): records, final particles, status and message bitwise as alone."""
    rng = np.random.default_rng(6)
    d, m = 4, 5
    model = mf.Model(d=d, activation="erf" if kind == "series" else "relu", scaling="mean_field")
    problems = []
    for seed in range(3):
        teacher = mf.Teacher.random(d=d, k=2, activation=model.activation, rng=np.random.default_rng(seed))
        if kind == "finite_data":
            problems.append(mf.FiniteDataProblem.from_teacher(model, teacher, 23, np.random.default_rng(seed)))
        else:
            problems.append(mf.PopulationProblem(model, teacher, method=kind))
    W0s = np.stack([mf.initialize(model, m, rng) for _ in problems])
    solo, recorded, results, ensemble = solo_and_ensemble(problems, W0s, integrator_name, dynamics, 2.0,
                                                          np.linspace(0, 2.0, 5))
    assert ensemble.batched == (kind == "closed_form")
    for alone, member, (status, message, W, _) in zip(solo, recorded, results):
        assert (status, message) == (alone.status, alone.message) == (member.status, member.message)
        np.testing.assert_array_equal(W, alone.W)
        np.testing.assert_array_equal(member.risk, alone.risk)
        np.testing.assert_array_equal(member.grad_norm, alone.grad_norm)
        np.testing.assert_array_equal(member.steps, alone.steps)


def test_a_diverging_member_stops_alone():
    """A member whose step is unstable diverges at the step where it would alone, with the same
    message; the others complete, bitwise as alone."""
    rng = np.random.default_rng(7)
    d, m = 3, 4
    model = mf.Model(d=d, activation="linear", scaling="mean_field")
    problems = [mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=2, activation="linear"))
                for _ in range(3)]
    W0s = np.stack([mf.initialize(model, m, rng) for _ in problems])
    W0s[1, :, :d] *= 1e60  # the quadratic field at 1e60 overflows within a few steps
    W0s[1, :, -1] *= 1e60
    solo, recorded, results, _ = solo_and_ensemble(problems, W0s, "gradient_descent", {"step": 0.5}, 5.0, None)
    statuses = [r[0] for r in results]
    assert statuses == ["complete", "diverged", "complete"]
    for alone, member, (status, message, W, _) in zip(solo, recorded, results):
        assert (status, message) == (alone.status, alone.message)
        np.testing.assert_array_equal(member.risk, alone.risk)
        if status == "complete":
            np.testing.assert_array_equal(W, alone.W)


def test_batched_descent_equals_each_descent_alone():
    """descend_batch: each member's PreciseDescent is bitwise the one of descend_to_precision;
    a member whose objective is not finite at its start gets its ValueError, the others go on."""
    rng = np.random.default_rng(8)
    problems = [problem_for("relu", d=4, k=4, seed=0) for _ in range(4)]
    W = np.stack([mf.initialize(problems[0].model, 4, rng, mf.Init(a="gaussian", tau=1.0)) for _ in problems])
    W[2, 0, 0] = np.nan
    results = descend_batch(problems, W, grad_tol=1e-9, step=0.1, max_steps=20_000)
    assert isinstance(results[2], ValueError)
    for b in (0, 1, 3):
        alone = descend_to_precision(problems[b], W[b], grad_tol=1e-9, step=0.1, max_steps=20_000)
        got = results[b]
        np.testing.assert_array_equal(got.W, alone.W)
        assert (got.risk, got.grad_norm, got.converged, got.steps, got.rejected, got.step, got.time, got.message) == (
            alone.risk, alone.grad_norm, alone.converged, alone.steps, alone.rejected, alone.step, alone.time,
            alone.message)
    # members stop at different steps: the batch shrinks to the members still descending
    assert len({results[b].steps for b in (0, 1, 3)}) == 3
    assert any(results[b].converged for b in (0, 1, 3))


CENSUS = """
[model]
d = 4
m = 4
activation = "relu"
scaling = "sum"
train_readout = false
[init]
a = "gaussian"
tau = 1.0
[problem]
kind = "population"
method = "closed_form"
[problem.teacher]
kind = "orthonormal"
k = 4
readout = "sum"
[dynamics]
integrator = "gradient_descent"
step = 0.05
t_max = 4.0
[record]
times = 3
particles = true
checkpoint_seconds = 1e-9
[landscape]
grad_tol = 1e-8
step = 0.1
max_steps = 20000
[sweep]
"model.m" = [4, 5]
"run.seed" = {start = 0, stop = 5}
"""

VOLATILE = {"start_time", "end_time", "host", "resumed", "DIMENSION_LIST", "REFERENCE_LIST"}


def file_contents(path):
    """Every dataset and attribute of a run file, but times, host and HDF5 references."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for key, value in obj.attrs.items():
                if key not in VOLATILE:
                    out[f"{name}@{key}"] = value
        visit("", f)
        f.visititems(visit)
    return out


def assert_same_files(one, other):
    names = sorted(n for n in os.listdir(one) if n.endswith(".h5") and n != "index.h5")
    assert names == sorted(n for n in os.listdir(other) if n.endswith(".h5") and n != "index.h5")
    assert names
    for name in names:
        a, b = file_contents(os.path.join(one, name)), file_contents(os.path.join(other, name))
        assert a.keys() == b.keys(), name
        for key in a:
            assert np.array_equal(a[key], b[key], equal_nan=np.asarray(a[key]).dtype.kind == "f"), (name, key)


def test_planner_groups_runs_that_differ_only_in_seed(tmp_path):
    path = tmp_path / "census.toml"
    path.write_text(CENSUS)
    specs = sweep.plan(path)
    units = sweep.plan_units(specs, ensemble_size=3)
    assert sorted(len(u) for u in units) == [2, 2, 3, 3]
    for unit in units:
        assert len({s.config["model"]["m"] for s in unit}) == 1
        assert [s.index for s in unit] == sorted(s.index for s in unit)
    assert sorted(s.index for u in units for s in u) == [s.index for s in specs]
    assert all(len(u) == 1 for u in sweep.plan_units(specs, ensemble_size=1))


def test_sweep_with_ensembles_writes_the_files_of_runs_alone(tmp_path):
    """run_shard with ensembles (default) and without (ensemble_size=1): the same run files,
    dataset by dataset and attribute by attribute (records, particles, checkpoints, /landscape)."""
    path = tmp_path / "census.toml"
    path.write_text(CENSUS)
    together = sweep.run_shard(path, tmp_path / "together")
    alone = sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert [s["status"] for s in together] == [s["status"] for s in alone] == ["complete"] * 10
    assert_same_files(tmp_path / "together", tmp_path / "alone")
    with h5py.File(together[0]["path"], "r") as f:
        assert f["landscape"].attrs["kind"] in ("global_minimum", "spurious_minimum", "saddle", "not_converged")
    again = sweep.run_shard(path, tmp_path / "together")
    assert {s["status"] for s in again} == {"skipped"}


def test_an_interrupted_ensemble_resumes_to_the_files_of_runs_alone(tmp_path, monkeypatch):
    """SIGINT in the middle of an ensemble: every member is checkpointed and interrupted; the
    next call resumes them together and ends with the files of runs done alone."""
    path = tmp_path / "census.toml"
    path.write_text(CENSUS)
    calls = {"n": 0}
    original = _interrupt.poll

    def poll():
        calls["n"] += 1
        if calls["n"] == 40:
            raise _interrupt.Interrupted(signal.SIGINT)
        original()

    monkeypatch.setattr(_ensemble._interrupt, "poll", poll)
    with pytest.raises(_interrupt.Interrupted) as stopped:
        sweep.run_shard(path, tmp_path / "out")
    assert "interrupted" in {s["status"] for s in stopped.value.summaries}
    assert any(n.endswith(".h5.part") for n in os.listdir(tmp_path / "out"))
    monkeypatch.setattr(_ensemble._interrupt, "poll", original)
    resumed = sweep.run_shard(path, tmp_path / "out")
    assert {s["status"] for s in resumed} <= {"complete", "skipped"}
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert_same_files(tmp_path / "out", tmp_path / "alone")


def test_noisy_members_draw_their_own_noise():
    """Full-batch Langevin: each member's noise comes from its own generator, so records, final
    particles and generator states are bitwise those of the runs alone; any other draw from the
    ensemble's stream is refused."""
    rng = np.random.default_rng(9)
    d, m = 4, 5
    model = mf.Model(d=d, activation="relu", scaling="mean_field")
    problems = [mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=2)) for _ in range(3)]
    W0s = np.stack([mf.initialize(model, m, rng) for _ in problems])
    dynamics = {"step": 0.05, "beta": 50.0, "weight_decay": 0.01, "batch_size": None}
    solo = []
    for b, (problem, W0) in enumerate(zip(problems, W0s)):
        integrator = INTEGRATORS["langevin"].build(problem, dynamics)
        solo.append(mf.run(problem, integrator, W0, 1.0, times=np.linspace(0, 1, 3),
                           rng=np.random.default_rng(100 + b)))
    ensemble = _ensemble.PopulationEnsemble(problems, m)
    integrator = INTEGRATORS["langevin"].build(ensemble, dynamics)
    rngs = [np.random.default_rng(100 + b) for b in range(3)]
    recorded = [mf.Trajectory() for _ in problems]
    results = _ensemble.run_ensemble(ensemble, integrator, W0s, 1.0, np.linspace(0, 1, 3), [[r] for r in recorded],
                                     rngs=rngs)
    for b, (alone, member, result) in enumerate(zip(solo, recorded, results)):
        np.testing.assert_array_equal(result[2], alone.W)
        np.testing.assert_array_equal(member.risk, alone.risk)
        assert rngs[b].bit_generator.state == alone.final.rng.bit_generator.state
    streams = _ensemble.MemberStreams(rngs, m)
    with pytest.raises(TypeError, match="standard_normal only"):
        streams.integers(3)
    with pytest.raises(TypeError, match="stacked state"):
        streams.standard_normal(size=4)


LANGEVIN = CENSUS.replace('integrator = "gradient_descent"', 'integrator = "langevin"\nbeta = 200.0').replace(
    "[landscape]\ngrad_tol = 1e-8\nstep = 0.1\nmax_steps = 20000\n", "")


def test_noisy_sweep_with_ensembles_writes_the_files_of_runs_alone(tmp_path):
    """Langevin runs grouped by seed: the same run files as alone (checkpointed generator
    states included), and after an interruption the resumed members draw on where they were."""
    path = tmp_path / "langevin.toml"
    path.write_text(LANGEVIN)
    assert sorted(len(u) for u in sweep.plan_units(sweep.plan(path))) == [5, 5]
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    calls = {"n": 0}
    original = _interrupt.poll

    def poll():
        calls["n"] += 1
        if calls["n"] == 30:
            raise _interrupt.Interrupted(signal.SIGINT)
        original()

    import meanfield.engine._ensemble as ensemble_module
    ensemble_module._interrupt.poll = poll
    try:
        with pytest.raises(_interrupt.Interrupted):
            sweep.run_shard(path, tmp_path / "together")
    finally:
        ensemble_module._interrupt.poll = original
    resumed = sweep.run_shard(path, tmp_path / "together")
    assert {s["status"] for s in resumed} <= {"complete", "skipped"}
    assert_same_files(tmp_path / "together", tmp_path / "alone")


IN_MEMORY = CENSUS.replace("checkpoint_seconds = 1e-9", "checkpoint_seconds = 600.0")


def test_members_kept_in_memory_write_the_files_of_runs_alone(tmp_path, monkeypatch):
    """Members of short runs stay in memory (no .part, no checkpoint on the disk) and are
    written once when they finish, from a layout template shared by the ensemble: the same
    files as runs alone, every dataset and attribute (records, particles, both checkpoint
    slots, /landscape), and the catalog rows made in memory equal those read from the files."""
    from meanfield.io import RunFile, catalog_row

    path = tmp_path / "census.toml"
    path.write_text(IN_MEMORY)
    written = []
    materialize = RunFile.materialize
    monkeypatch.setattr(RunFile, "materialize", lambda self: written.append(self.part_path) or materialize(self))
    together = sweep.run_shard(path, tmp_path / "together")
    assert not written, "a member reached the disk before it finished"
    assert {s["status"] for s in together} == {"complete"}
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert_same_files(tmp_path / "together", tmp_path / "alone")
    cached = sweep.catalog_rows(tmp_path / "together")
    for row in cached:
        assert row == catalog_row(tmp_path / "together" / row["file"])
    assert not [n for n in os.listdir(tmp_path / "together") if ".tmp." in n or n.endswith(".part")]


@pytest.mark.parametrize("stage", ["image-written:3", "finish-renamed:2"])
def test_a_kill_while_an_ensemble_is_written_loses_nothing_finished(tmp_path, stage):
    """SIGKILL while an ensemble's files are written (after the third image, before any is
    renamed; or between two renames of the one sync): no half file under a run's name, the
    next call removes the temporary files, redoes what was not published and ends with the
    files of runs alone."""
    import subprocess
    import sys

    path = tmp_path / "census.toml"
    path.write_text(IN_MEMORY)
    out = tmp_path / "together"
    command = [sys.executable, "-m", "meanfield", "run", str(path), "--out", str(out), "--quiet"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", MEANFIELD_KILL_AT=stage)
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = os.listdir(out)
    finished = [n for n in names if n.endswith(".h5") and n != "index.h5"]
    assert len(finished) == (0 if stage.startswith("image") else 2), names
    assert any(".tmp." in n for n in names), names  # written, not yet renamed
    env.pop("MEANFIELD_KILL_AT")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert not [n for n in os.listdir(out) if ".tmp." in n or n.endswith(".part")]
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert_same_files(out, tmp_path / "alone")


def test_members_in_memory_interrupted_become_parts_and_resume(tmp_path, monkeypatch):
    """SIGINT while members are still in memory: each is written as its .part with its
    checkpoint (records so far included), and the next call resumes them to the files of runs
    done alone."""
    path = tmp_path / "census.toml"
    path.write_text(IN_MEMORY)
    calls = {"n": 0}
    original = _interrupt.poll

    def poll():
        calls["n"] += 1
        if calls["n"] == 40:
            raise _interrupt.Interrupted(signal.SIGINT)
        original()

    monkeypatch.setattr(_ensemble._interrupt, "poll", poll)
    with pytest.raises(_interrupt.Interrupted) as stopped:
        sweep.run_shard(path, tmp_path / "out")
    interrupted = [s for s in stopped.value.summaries if s["status"] == "interrupted"]
    assert interrupted
    for summary in interrupted:
        assert summary["path"].endswith(".h5.part") and os.path.exists(summary["path"])
        with h5py.File(summary["path"], "r") as f:
            assert int(f["checkpoint/active"][()]) >= 0 and f["observables/risk/value"].shape[0] >= 1
    monkeypatch.setattr(_ensemble._interrupt, "poll", original)
    resumed = sweep.run_shard(path, tmp_path / "out")
    assert {s["status"] for s in resumed} <= {"complete", "skipped"}
    sweep.run_shard(path, tmp_path / "alone", ensemble_size=1)
    assert_same_files(tmp_path / "out", tmp_path / "alone")
