"""The tuned CPU kernels (BLAS tiles, branch-free arccos, compiled reductions) against their
references: the fused scalar kernels they replace and plain numpy.

Sizes are chosen to cross the tile boundaries of the tuned kernels (several row blocks and
several source tiles, with partial last tiles), and stay small enough to run in milliseconds.
"""
import os

import numpy as np
import pytest

from meanfield import kernels


def _cloud(rng, n, d, dtype):
    """n particles with a zero row, a row equal to another's a and one opposite to it."""
    W = rng.standard_normal((n, d + 2))
    W[0, :d] = 0.0
    W[2, :d] = W[5, :d]
    W[3, :d] = -W[6, :d]
    return W.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_acos_branchless_matches_numpy(dtype):
    """acos_branchless is np.arccos to a few ulp on [-1, 1], both branches and both signs."""
    x = np.concatenate([np.linspace(-1, 1, 4001), [-1.0, -0.5, 0.0, 0.5, 1.0],
                        1 - np.geomspace(1e-16, 1e-1, 50), -1 + np.geomspace(1e-16, 1e-1, 50)])
    x = x.astype(dtype)
    ours = np.array([kernels.acos_branchless(v) for v in x])
    ref = np.arccos(x.astype(np.float64))
    ulp = np.finfo(dtype).eps
    # relative error where acos is away from 0; absolute near x = 1 (acos -> 0)
    err = np.abs(ours.astype(np.float64) - ref) / np.maximum(ref, 1e-3)
    assert err.max() < 4 * ulp, err.max()


def test_tiled_closed_form_matches_numpy_arccos_kernel():
    """The relu pair sums (points other than the sources: the general tiles) equal a plain
    numpy arc-cosine kernel with np.arccos (float64), over several row blocks and source
    tiles. (relu, erf, linear in float64 and float32 against numpy: tests/test_kernels.py.)"""
    rng = np.random.default_rng(8)
    P = rng.standard_normal((40, 5))
    S = rng.standard_normal((270, 5))
    d = 3
    A, B, c = P[:, :d], S[:, :d], S[:, d + 1]
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    cos = np.clip(A @ B.T / np.outer(na, nb), -1, 1)
    theta = np.arccos(cos)
    sin = np.sqrt(1 - cos**2)
    K_ref = (np.outer(na, nb) * (sin + (np.pi - theta) * cos) / (2 * np.pi)) @ c
    G_ref = ((np.pi - theta) / (2 * np.pi) * c) @ B + ((sin * nb / (2 * np.pi)) @ c / na)[:, None] * A
    K, G = np.empty(40), np.empty((40, d + 1))
    kernels.closed_form_pair_field(P, S, kernels.ACTIVATION_CODES["relu"], K, G)
    np.testing.assert_allclose(K, K_ref, rtol=1e-12)
    np.testing.assert_allclose(G[:, :d], G_ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("act, loss", [("relu", "squared"), ("tanh", "logistic")])
def test_fused_finite_data_matches_unfused_reference(act, loss, dtype=np.float64):
    """finite_data_field (one fused sweep per row, per-chunk sums) equals the unfused
    reference kernel, with tracers, over several tiles (N = 37, tile 8: a partial last one)
    and more rows per tile than row chunks. (float32 against numpy: tests/test_kernels.py.)"""
    rng = np.random.default_rng(9)
    N, d, m = 37, 3, 11
    X = rng.standard_normal((N, d)).astype(dtype)
    y = np.sign(rng.standard_normal(N)).astype(dtype)
    W = rng.standard_normal((m, d + 2)).astype(dtype)
    points = rng.standard_normal((4, d + 2)).astype(dtype)
    results = []
    for kernel in (kernels.finite_data_field, kernels.unfused_finite_data_field):
        v, pv = np.full_like(W, np.nan), np.full_like(points, np.nan)
        value = kernel(W, X, y, points, kernels.ACTIVATION_CODES[act], kernels.LOSS_CODES[loss], 1.0 / m,
                       1.0, True, True, 8, v, pv)
        results.append((value, v, pv))
    (value, v, pv), (value_ref, v_ref, pv_ref) = results
    rtol = 1e-13 if dtype == np.float64 else 1e-5
    assert abs(value - value_ref) <= rtol * abs(value_ref)
    np.testing.assert_allclose(v, v_ref, rtol=0, atol=rtol * np.abs(v_ref).max())
    np.testing.assert_allclose(pv, pv_ref, rtol=0, atol=rtol * np.abs(pv_ref).max())


def test_fused_finite_data_matches_numpy():
    """The fused kernel against a plain numpy relu network with squared loss (float64)."""
    rng = np.random.default_rng(10)
    N, d, m = 23, 4, 9
    X, y = rng.standard_normal((N, d)), rng.standard_normal(N)
    W = rng.standard_normal((m, d + 2))
    A, b, c = W[:, :d], W[:, d], W[:, d + 1]
    Z = X @ A.T + b
    r = np.maximum(Z, 0) @ c / m - y
    G = (r[:, None] * c) * (Z > 0)
    v_ref = np.column_stack([-(G.T @ X) / N, -G.sum(0) / N, -(np.maximum(Z, 0).T @ r) / N])
    v, pv = np.empty_like(W), np.empty((0, d + 2))
    value = kernels.finite_data_field(W, X, y, np.empty((0, d + 2)), kernels.ACTIVATION_CODES["relu"],
                                      kernels.LOSS_CODES["squared"], 1.0 / m, 1.0, True, True, 5, v, pv)
    np.testing.assert_allclose(value, 0.5 * np.mean(r * r), rtol=1e-13)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=1e-14)


def test_sum_of_squares_matches_numpy(dtype=np.float64):
    """kernels.sum_of_squares (Evaluation.grad_norm) equals numpy's squared norm."""
    W = np.random.default_rng(11).standard_normal((13, 6)).astype(dtype)
    ref = float(np.sum(W.astype(np.float64) ** 2))
    assert abs(kernels.sum_of_squares(W) - ref) <= 1e-14 * ref
    assert abs(kernels.sum_of_squares(W[:, ::2]) - float(np.sum(W[:, ::2].astype(np.float64) ** 2))) <= 1e-14 * ref


def test_run_evaluates_once_per_recorded_step():
    """mf.run hands the evaluation made for a record to the next step: with a record at every
    step, n steps cost n + 1 evaluations (not 2n + 1), and the trajectory is the same as
    with separate evaluations (the recording problem another object than the integrator's)."""
    import meanfield as mf

    rng = np.random.default_rng(12)
    model = mf.Model(d=3, activation="relu", bias=True)
    X, y = rng.standard_normal((15, 3)), rng.standard_normal(15)
    problem = mf.FiniteDataProblem(model, X, y)
    W0 = mf.initialize(model, 6, rng)
    calls = []
    evaluate = problem.evaluate
    problem.evaluate = lambda *a, **k: calls.append(1) or evaluate(*a, **k)
    n = 5
    for integrator in (mf.gradient_descent(problem, 0.1), mf.heavy_ball(problem, 0.1, 0.5)):
        calls.clear()
        shared = mf.run(problem, integrator, W0, n * integrator.dt, times=np.arange(n + 1) * integrator.dt)
        assert len(calls) == n + 1
        separate = mf.run(mf.FiniteDataProblem(model, X, y), integrator, W0, n * integrator.dt,
                          times=np.arange(n + 1) * integrator.dt)
        assert len(calls) == 2 * n + 1
        np.testing.assert_array_equal(shared.risk, separate.risk)
        np.testing.assert_array_equal(shared.W, separate.W)


def test_cpu_suite_smoke(tmp_path):
    """benchmarks/cpu_suite.py at a tiny size: its numpy finite-data and population steps
    compute the same objective and velocity as meanfield (the suite prints this check for
    every workload; each library runs in its own process, sharing inputs through a folder)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_suite.py"
    spec = importlib.util.spec_from_file_location("cpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    suite.D = 4
    suite.TEACHER_K = 2
    for kind, extra in (("finite", {"N": 20}), ("population", {})):
        io = tmp_path / kind
        io.mkdir()
        common = {"kind": kind, "m": 6, "dtype": "float64", "repeats": 1, "io": str(io), "matmul_n": 64, **extra}
        ours = suite.worker({**common, "previous": False})
        assert ours["ours"] > 0
        numpy = suite.worker({**common, "lib": "numpy"})
        assert numpy["check"] < 1e-12 and numpy["check_against"] == "ours"


def test_blas_tiles_stay_on_one_openblas_thread():
    """Every product the closed-form kernels issue from inside numba's threads has
    M N K < 524288, below which OpenBLAS runs a gemm on the calling thread (it takes
    floor(M N K / 262144) threads, interface/gemm.c); above, its threads fight numba's and
    the step was 30-100x slower (d = 400 to 2000)."""
    from meanfield.kernels import population as pop

    for d in [1, 2, 5, 25, 99, 100, 101, 227, 228, 400, 940, 941, 1000, 2000, 5000, 30000, 100000]:
        side = pop.self_tile_size(d)
        rows, cols = pop.general_tile_shape(d)
        assert side >= 1 and rows >= 1 and cols >= 1
        if d <= 480_000:
            assert side * side * d < 524288, (d, side)
            assert rows * cols * d < 524288, (d, rows, cols)
    assert pop.self_tile_size(100) >= 48 and pop.general_tile_shape(100) == (32, 150)


@pytest.mark.parametrize("m, d", [(130, 4), (170, 4), (48, 4), (20, 4), (60, 1500), (30, 40000)])
def test_self_interaction_tiles_match_general_tiles_and_numpy(m, d):
    """closed_form_pair_field(W, W) (relu: only the tiles j >= i, both ways, in round-robin
    rounds) equals the general tiles (the same particles as another array) and a plain numpy
    arc-cosine kernel: 3 blocks of 48 (odd: a phantom block sits out each round), 4 blocks
    (even), one full block, one partial block; a partial last block, a zero particle, a
    repeated one and an opposite one. A tile missed or done twice by the schedule fails."""
    rng = np.random.default_rng(13)
    W = _cloud(rng, m, d, np.float64)
    code = kernels.ACTIVATION_CODES["relu"]
    K, G = np.full(m, np.nan), np.full((m, d + 1), np.nan)
    K_gen, G_gen = np.empty(m), np.empty((m, d + 1))
    kernels.closed_form_pair_field(W, W, code, K, G)
    kernels.closed_form_pair_field(W, W.copy(), code, K_gen, G_gen)
    np.testing.assert_allclose(K, K_gen, rtol=0, atol=1e-13 * np.abs(K_gen).max())
    np.testing.assert_allclose(G, G_gen, rtol=0, atol=1e-13 * np.abs(G_gen).max())
    A, c = W[:, :d], W[:, d + 1]
    n = np.linalg.norm(A, axis=1)
    live = n > 0
    cos = np.clip(A @ A.T / np.outer(np.where(live, n, 1), np.where(live, n, 1)), -1, 1)
    theta = np.arccos(cos)
    kappa = (np.outer(n, n) * np.sqrt(1 - cos**2) + (np.pi - theta) * (A @ A.T)) / (2 * np.pi)
    np.testing.assert_allclose(K, kappa @ c, rtol=0, atol=1e-13 * np.abs(K).max())
    assert np.all(G[0] == 0)


def test_relu_tracers_on_particles_get_their_velocity_bitwise():
    """With tracers the closed-form relu problem evaluates the particles on the general tiles
    too (not the symmetric ones), so a tracer started on a particle stays on it exactly."""
    import meanfield as mf

    model = mf.Model(3, "relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(3, 2))
    W0 = mf.initialize(model, 60, np.random.default_rng(14))
    tracers = np.vstack([W0, mf.initialize(model, 2, np.random.default_rng(15))])
    run = mf.run(problem, mf.gradient_descent(problem, 0.1), W0, t_max=0.5, tracers=tracers, keep_particles=True)
    np.testing.assert_array_equal(run.tracers[:, :60], run.particles)


def test_reductions_do_not_depend_on_the_thread_count():
    """The self-interaction pair sums and the squared norm give the same bits with 1, 2, 3 and
    12 threads (more threads than the 5 and 10 blocks' pairs per round, and than the cores):
    a sweep run with --jobs or as Slurm tasks (other thread counts) writes the same files as
    one run alone. In a subprocess, where NUMBA_NUM_THREADS allows 12 threads."""
    import subprocess
    import sys

    script = (
        "import numpy as np, numba\n"
        "from meanfield import kernels\n"
        "rng = np.random.default_rng(0)\n"
        "for m in (203, 470):\n"
        "    W = rng.standard_normal((m, 7)); W[:, 5] = 0\n"
        "    out = []\n"
        "    for threads in (1, 2, 3, 12):\n"
        "        numba.set_num_threads(threads)\n"
        "        K, G = np.empty(m), np.empty((m, 6))\n"
        "        kernels.closed_form_pair_field(W, W, kernels.ACTIVATION_CODES['relu'], K, G)\n"
        "        out.append((K.tobytes(), G.tobytes(), kernels.sum_of_squares(W)))\n"
        "    assert all(o == out[0] for o in out), f'thread-count dependent at m = {m}'\n"
        "print('same')\n")
    env = dict(os.environ, NUMBA_NUM_THREADS="12")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "same", result.stdout + result.stderr


def test_data_tiles_stay_bounded_in_memory_at_large_width():
    """The CPU data kernels take tile_rows(m) rows of data per tile, each tile an rows x m
    array: about 2^22 entries from m = 2^22 / 16 down to m = 2^22 / 2048, never fewer than
    16 rows or more than 2048; at m = 10^6 a tile is 16 rows (128 MB in float64), not 512
    (4 GB)."""
    from meanfield.engine._model import MAX_TILE_ROWS, MIN_TILE_ROWS, TILE_ENTRIES, tile_rows

    for m in [1, 10, 1000, 2048, 2049, 4000, 10_000, 100_000, 262_144, 10**6, 10**7]:
        rows = tile_rows(m)
        assert MIN_TILE_ROWS <= rows <= MAX_TILE_ROWS
        assert rows * m <= max(TILE_ENTRIES, MIN_TILE_ROWS * m)
        assert rows == MAX_TILE_ROWS or rows == MIN_TILE_ROWS or rows * m > TILE_ENTRIES - m
    assert tile_rows(10**6) == 16 and tile_rows(1000) == 2048
