"""CPU benchmark suite: meanfield's kernels against numpy, PyTorch eager and the FLOP floor.

    python benchmarks/cpu_suite.py                 # the full table (~9 min on an idle 2-core machine)
    python benchmarks/cpu_suite.py --quick         # small sizes, a smoke run (~1 min)
    python benchmarks/cpu_suite.py --only F P      # some workload families only

Prints one table (workload, size, ours, numpy, PyTorch, floor, ratios, peak memory) and
writes it as JSON (``--json``, default ``benchmarks/cpu_results.json``).

Every workload runs in its own subprocess, so that its peak resident memory (``ru_maxrss``)
is its own; inside it ours, the numpy step (written as a user would write it) and PyTorch
eager with autograd run side by side, interleaved, ``--repeats`` times each, and the table
gives medians. The floor is the workload's compulsory flop count divided by the machine's
matrix-product rate, measured in the same process (numpy ``@`` on 2048 x 2048 matrices of
the workload's dtype), timed interleaved with the workload itself so that both see the
same load on a shared machine. PyTorch is optional: without it the column says so.

Workloads (one step = objective + velocity of every particle):

* ``F``: finite data, relu, squared loss, bias and trained readout, N = 10^4, d = 100,
  m in {10^3, 4 10^3, 10^4}; floor 4 N m d flops (two products);
* ``F-large``: N = 10^5, d = 100, m = 10^4 (the N x m matrix would be 8 GB): ours only;
* ``P``: population, relu, no bias, closed form, teacher k = 10, d = 100,
  m in {10^3, 4 10^3, 10^4}; floor 4 m^2 d flops (Gram matrix and force assembly);
* ``S``: online SGD on the population problem, batch 256, m = 10^4 (steps/s);
* ``L``: Langevin on F at m = 10^4 (steps/s);
* ``record``: a gradient-descent run on F (m = 4 10^3) recording all particles every 10
  steps against one recording only at the ends: the overhead in % of run time;
* ``F32``, ``P32``: float32 variants at m = 4 10^3;
* ``compile``: first-call compile time of the kernels in a fresh process with an empty
  numba cache, then in a second fresh process that reuses the cache.

Threads: numba and BLAS use all cores unless ``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS``
say otherwise; PyTorch gets ``torch.set_num_threads`` of the same count.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The thread settings meanfield makes on import (meanfield/__init__.py), made here before
# numpy loads its own OpenBLAS, so that every column runs under the same settings. Without
# them numpy's BLAS workers spin ~0.1 s after each baseline product and take a core from
# whatever is timed next: F at m = 1000 measured 110 ms against 63 ms for the same kernel
# timed right after the numpy step (2 cores, 2026-11-27), which made it look like a regression.
# Set here rather than by importing meanfield first: the compile worker times that import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
D = 100
TEACHER_K = 10
MATMUL_N = 2048  # side of the reference matrix product


# ----------------------------------------------------------------------------- helpers

def _threads() -> int:
    return int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1))


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(_threads())
    return torch


def _peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, run round-robin ``repeats`` times after one warm-up."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def _matmul(dtype, n: int | None = None):
    """A callable doing one n x n product with numpy ``@`` (2 n^3 flops; n = MATMUL_N)."""
    n = MATMUL_N if n is None else n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    return lambda: a @ b


def matmul_rate(dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured flop/s of numpy ``@`` on n x n matrices (2 n^3 flops per product)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


def _rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ----------------------------------------------------------------------------- baselines
# Written as a researcher would write them: whole arrays, no tiling. Conventions as in
# meanfield: h(x) = (1/m) sum_i c_i relu(a_i . x + b_i), F = mean (h - y)^2 / 2, velocity
# v = -m grad F; W[:, :d] = a, W[:, d] = b, W[:, d + 1] = c.

def numpy_finite_step(W, X, y):
    """F and v = -m grad F for the finite-data relu network (bias, trained readout)."""
    m = W.shape[0]
    N, d = X.shape
    A, b, c = W[:, :d], W[:, d], W[:, d + 1]
    Z = X @ A.T + b
    S = np.maximum(Z, 0)
    r = S @ c / m - y
    value = 0.5 * np.mean(r * r)
    G = (r[:, None] * c) * (Z > 0)  # N x m: dF/dz_ni * N m
    v = np.empty_like(W)
    v[:, :d] = -(G.T @ X) / N
    v[:, d] = -G.sum(axis=0) / N
    v[:, d + 1] = -(S.T @ r) / N
    return value, v


def torch_finite_step(torch, W, X, y):
    """The same with PyTorch autograd (W, X, y tensors; W.grad is reset)."""
    m = W.shape[0]
    d = X.shape[1]
    W = W.detach().requires_grad_(True)
    h = torch.relu(X @ W[:, :d].T + W[:, d]) @ W[:, d + 1] / m
    value = 0.5 * torch.mean((h - y) ** 2)
    value.backward()
    return value.item(), -m * W.grad


def _numpy_relu_pairs(A_i, A_j, c_j):
    """K_i = sum_j c_j kappa(a_i, a_j) and G_i = sum_j c_j grad_{a_i} kappa (arc-cosine kernel)."""
    n_i = np.linalg.norm(A_i, axis=1)
    n_j = np.linalg.norm(A_j, axis=1)
    cos = np.clip((A_i @ A_j.T) / np.outer(n_i, n_j), -1.0, 1.0)
    theta = np.arccos(cos)
    sin = np.sqrt(1.0 - cos * cos)
    kappa = np.outer(n_i, n_j) * (sin + (np.pi - theta) * cos) / (2 * np.pi)
    alpha = (np.pi - theta) / (2 * np.pi)  # grad = alpha a_j + beta a_i
    beta = sin * (n_j / (2 * np.pi))[None, :] / n_i[:, None]
    K = kappa @ c_j
    G = (alpha * c_j) @ A_j + (beta @ c_j)[:, None] * A_i
    return K, G


def numpy_population_step(W, T, y2):
    """Closed-form population risk (relu, no bias, mean-field 1/m) and v = -m grad F.

    F = E y^2 / 2 - (1/m) sum_i c_i K*_i + (1/(2 m^2)) sum_ij c_i c_j kappa_ij with
    K*_i = sum_k c*_k kappa(a_i, a*_k).
    """
    m = W.shape[0]
    d = W.shape[1] - 2
    A, c = W[:, :d], W[:, d + 1]
    K_w, G_w = _numpy_relu_pairs(A, A, c)
    K_t, G_t = _numpy_relu_pairs(A, T[:, :d], T[:, d + 1])
    value = 0.5 * y2 - c @ K_t / m + 0.5 * c @ K_w / m**2
    v = np.zeros_like(W)
    v[:, :d] = -c[:, None] * (G_w / m - G_t)
    v[:, d + 1] = -(K_w / m - K_t)
    return value, v


def torch_population_step(torch, W, T, y2):
    """The same risk with PyTorch autograd (the arccos argument kept inside (-1, 1): its
    derivative is infinite at +-1, where the kernel's is finite)."""
    m = W.shape[0]
    d = W.shape[1] - 2
    W = W.detach().requires_grad_(True)
    A, c = W[:, :d], W[:, d + 1]
    eps = 1e-7 if W.dtype == torch.float32 else 1e-12

    def kappa(Ai, Aj):
        ni = Ai.norm(dim=1)
        nj = Aj.norm(dim=1)
        cos = torch.clamp((Ai @ Aj.T) / torch.outer(ni, nj), -1 + eps, 1 - eps)
        theta = torch.acos(cos)
        return torch.outer(ni, nj) * (torch.sqrt(1 - cos * cos) + (math.pi - theta) * cos) / (2 * math.pi)

    value = (0.5 * y2 - c @ (kappa(A, T[:, :d]) @ T[:, d + 1]) / m
             + 0.5 * c @ (kappa(A, A) @ c) / m**2)
    value.backward()
    return value.item(), -m * W.grad


# ----------------------------------------------------------------------------- workloads

def _finite_problem(m, N, dtype, seed=0):
    import meanfield as mf
    rng = np.random.default_rng(seed)
    model = mf.Model(d=D, activation="relu", bias=True, train_readout=True, dtype=dtype)
    teacher = mf.Teacher.orthonormal(d=D, k=TEACHER_K)
    problem = mf.FiniteDataProblem.from_teacher(model, teacher, N, rng)
    W = mf.initialize(model, m, rng)
    W[:, D] = 0.1 * rng.standard_normal(m)
    return problem, W


def _population_problem(m, dtype, seed=0):
    import meanfield as mf
    rng = np.random.default_rng(seed)
    model = mf.Model(d=D, activation="relu", dtype=dtype)
    teacher = mf.Teacher.orthonormal(d=D, k=TEACHER_K)
    problem = mf.PopulationProblem(model, teacher, method="closed_form")
    return problem, mf.initialize(model, m, rng)


def work_finite(m, N, dtype, repeats, baselines=True, previous=True):
    problem, W = _finite_problem(m, N, dtype)
    out = np.empty_like(W)
    ours = lambda: problem.evaluate(W, out=out)  # noqa: E731
    ours()
    peak = None
    fns = {"ours": ours}
    result = {"floor_flops": 4.0 * N * m * D}
    if not baselines:
        times = _interleaved(fns, repeats)
        peak = _peak_mib()
        times.update(_interleaved({"matmul": _matmul(dtype)}, repeats))
        result.update(ours=times["ours"], peak_mib=peak, matmul_flops=2.0 * MATMUL_N**3 / times["matmul"])
        return result
    peak = _peak_mib()  # before any baseline allocates its N x m arrays
    X, y = problem.X, problem.y
    if previous:
        fns["previous"] = _previous_finite(problem, W)
    fns["matmul"] = _matmul(dtype)
    fns["numpy"] = lambda: numpy_finite_step(W, X, y)
    value, v = problem.value_and_velocity(W)
    nv, nvel = numpy_finite_step(W, X, y)
    result["check_numpy"] = max(abs(value - nv) / abs(nv), _rel_err(v, nvel))
    times = _interleaved(fns, repeats)
    result.update(ours=times["ours"], numpy=times["numpy"], peak_mib=peak,
                  previous=times.get("previous"), matmul_flops=2.0 * MATMUL_N**3 / times["matmul"])
    _torch_phase(result, ours, lambda torch: (lambda tW=torch.from_numpy(W), tX=torch.from_numpy(X),
                                              ty=torch.from_numpy(y): torch_finite_step(torch, tW, tX, ty)),
                 value, v, repeats)
    return result


def _torch_phase(result, ours, make_step, value, v, repeats):
    """PyTorch against ours, after the other measurements: importing torch starts its own
    thread runtime, which slowed numpy's and numba's products in the same process (2048^2
    ``@``: 37 -> 19 GFLOP/s here); so the PyTorch ratio is taken against ours timed again,
    interleaved with it, after the import."""
    torch = _torch()
    if torch is None:
        return
    step = make_step(torch)
    tv, tvel = step()
    result["check_torch"] = max(abs(value - tv) / abs(tv), _rel_err(v, tvel.numpy()))
    times = _interleaved({"ours": ours, "torch": step}, repeats)
    result.update(torch=times["torch"], ours_with_torch=times["ours"])


def _previous_finite(problem, W):
    """The finite-data step with the previous (unfused) kernel, kept as the reference."""
    from meanfield import kernels
    from meanfield._model import tile_rows
    model = problem.model
    m = W.shape[0]
    velocity = np.empty_like(W)
    pts = np.empty((0, W.shape[1]), dtype=W.dtype)
    return lambda: kernels.unfused_finite_data_field(
        W, problem.X, problem.y, pts, model.activation_code, kernels.LOSS_CODES[problem.loss],
        model.output_scale(m), model.alpha_value(m), model.bias, model.train_readout, tile_rows(m),
        velocity, np.empty_like(pts))


def _previous_population(problem, W):
    """The population step's pair sums with the previous (fused scalar) kernel."""
    from meanfield import kernels
    T = problem._teacher_W
    n, p = W.shape
    K, G = np.empty(n, dtype=W.dtype), np.empty((n, p - 1), dtype=W.dtype)

    def step():
        kernels.fused_closed_form_pair_field(W, W, 0, K, G)
        kernels.fused_closed_form_pair_field(W, T, 0, K, G)
    return step


def work_population(m, dtype, repeats, previous=True):
    problem, W = _population_problem(m, dtype)
    out = np.empty_like(W)
    ours = lambda: problem.evaluate(W, out=out)  # noqa: E731
    ours()
    peak = _peak_mib()
    T = problem._teacher_W
    y2 = problem.label_second_moment
    fns = {"ours": ours, "matmul": _matmul(dtype), "numpy": lambda: numpy_population_step(W, T, y2)}
    if previous:
        fns["previous"] = _previous_population(problem, W)
    value, v = problem.value_and_velocity(W)
    nv, nvel = numpy_population_step(W, T, y2)
    result = {"floor_flops": 4.0 * m * m * D,
              "check_numpy": max(abs(value - nv) / abs(nv), _rel_err(v, nvel))}
    times = _interleaved(fns, repeats)
    result.update(ours=times["ours"], numpy=times["numpy"], peak_mib=peak,
                  previous=times.get("previous"), matmul_flops=2.0 * MATMUL_N**3 / times["matmul"])
    _torch_phase(result, ours, lambda torch: (lambda tW=torch.from_numpy(W), tT=torch.from_numpy(T):
                                              torch_population_step(torch, tW, tT, y2)), value, v, repeats)
    return result


def work_steps(kind, m, N, steps, repeats):
    """Steps per second of a whole integrator step (S: online SGD, L: Langevin on F)."""
    import meanfield as mf
    if kind == "S":
        problem, W = _population_problem(m, "float64")
        integrator = mf.sgd(problem, step=0.1, batch_size=256)
    else:
        problem, W = _finite_problem(m, N, "float64")
        integrator = mf.langevin(problem, step=0.1, beta=1e4)
    state = integrator.init(W, np.random.default_rng(1))

    def ours():
        for _ in range(steps):
            integrator.step(state)

    fns = {"ours": ours}
    if kind == "S":
        rng = np.random.default_rng(2)
        Wn = W.copy()

        def numpy_sgd():
            for _ in range(steps):
                X, y = problem.sample_batch(rng, 256)
                _, v = numpy_finite_step(Wn, X, y)
                v[:, D] = 0  # no bias in this model
                Wn[...] += 0.1 * v

        fns["numpy"] = numpy_sgd
    else:
        rng = np.random.default_rng(2)
        Wn = W.copy()
        X, y = problem.X, problem.y
        scale = math.sqrt(2 * 0.1 / 1e4)

        def numpy_langevin():
            for _ in range(steps):
                _, v = numpy_finite_step(Wn, X, y)
                Wn[...] += 0.1 * v + scale * rng.standard_normal(Wn.shape)

        fns["numpy"] = numpy_langevin
    ours()
    peak = _peak_mib()
    times = _interleaved(fns, repeats)
    return {"ours": times["ours"] / steps, "numpy": times["numpy"] / steps, "peak_mib": peak,
            "steps_per_s": steps / times["ours"]}


def work_record(m, N, steps, repeats):
    """Run time with all particles recorded every 10 steps against records at the ends only."""
    import meanfield as mf
    problem, W0 = _finite_problem(m, N, "float64")
    integrator = mf.gradient_descent(problem, step=0.05)
    t_max = steps * 0.05
    every = np.arange(0, steps + 1, 10) * 0.05
    plain = lambda: mf.run(problem, integrator, W0, t_max, times=[0.0, t_max])  # noqa: E731
    recorded = lambda: mf.run(problem, integrator, W0, t_max, times=every, keep_particles=True)  # noqa: E731
    # As before the record evaluation was shared with the next step: a recording problem
    # that is another object than the integrator's gets its own evaluation.
    twin = mf.FiniteDataProblem(problem.model, problem.X, problem.y)
    separate = lambda: mf.run(twin, integrator, W0, t_max, times=every, keep_particles=True)  # noqa: E731
    times = _interleaved({"plain": plain, "recorded": recorded, "separate": separate}, repeats)
    return {"ours": times["recorded"], "plain": times["plain"], "previous": times["separate"],
            "overhead": times["recorded"] / times["plain"] - 1.0,
            "overhead_previous": times["separate"] / times["plain"] - 1.0, "peak_mib": _peak_mib()}


def work_compile():
    """Time of the first evaluation of F and P (float64) in this process: compile or cache load."""
    t0 = time.perf_counter()
    import meanfield  # noqa: F401
    t_import = time.perf_counter() - t0
    problem, W = _finite_problem(8, 16, "float64")
    t0 = time.perf_counter()
    problem.evaluate(W)
    t_f = time.perf_counter() - t0
    problem, W = _population_problem(8, "float64")
    t0 = time.perf_counter()
    problem.evaluate(W)
    t_p = time.perf_counter() - t0
    return {"import": t_import, "F": t_f, "P": t_p, "ours": t_import + t_f + t_p}


def worker(spec):
    kind = spec["kind"]
    if kind == "finite":
        return work_finite(spec["m"], spec["N"], spec["dtype"], spec["repeats"], spec.get("baselines", True),
                           spec.get("previous", True))
    if kind == "population":
        return work_population(spec["m"], spec["dtype"], spec["repeats"], spec.get("previous", True))
    if kind == "steps":
        return work_steps(spec["family"], spec["m"], spec["N"], spec["steps"], spec["repeats"])
    if kind == "record":
        return work_record(spec["m"], spec["N"], spec["steps"], spec["repeats"])
    if kind == "compile":
        return work_compile()
    if kind == "matmul":
        return {"float64": matmul_rate(np.float64), "float32": matmul_rate(np.float32)}
    raise ValueError(kind)


# ----------------------------------------------------------------------------- driver

def plan(quick: bool):
    """The workloads: (family, size label, spec)."""
    if quick:
        N, ms, mL, NL, r = 1000, (100, 400), 400, 4000, 3
    else:
        N, ms, mL, NL, r = 10_000, (1000, 4000, 10_000), 10_000, 100_000, 7
    m_mid = ms[1]
    rows = []
    big = max(3, r // 2)  # fewer repeats where one numpy or PyTorch step takes seconds
    for m in ms:
        rows.append(("F", f"N={N} m={m}", {"kind": "finite", "m": m, "N": N, "dtype": "float64",
                                            "repeats": big if m == ms[-1] else r}))
    rows.append(("F-large", f"N={NL} m={mL}",
                 {"kind": "finite", "m": mL, "N": NL, "dtype": "float64", "repeats": max(2, r // 3),
                  "baselines": False}))
    for m in ms:
        rows.append(("P", f"m={m}", {"kind": "population", "m": m, "dtype": "float64",
                                      "repeats": big if m == ms[-1] else r}))
    rows.append(("F32", f"N={N} m={m_mid}", {"kind": "finite", "m": m_mid, "N": N, "dtype": "float32", "repeats": r}))
    rows.append(("P32", f"m={m_mid}", {"kind": "population", "m": m_mid, "dtype": "float32", "repeats": r}))
    rows.append(("S", f"batch=256 m={ms[-1]}",
                 {"kind": "steps", "family": "S", "m": ms[-1], "N": N, "steps": 20, "repeats": r}))
    rows.append(("L", f"N={N} m={ms[-1]}",
                 {"kind": "steps", "family": "L", "m": ms[-1], "N": N, "steps": 3, "repeats": max(3, r // 2)}))
    rows.append(("record", f"N={N // 4} m={m_mid} 100 steps",
                 {"kind": "record", "m": m_mid, "N": N // 4, "steps": 100 if not quick else 20,
                  "repeats": r}))
    return rows


def run_worker(spec, env=None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_time(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} us"


def _ratio(a, b):
    return None if (a is None or b is None) else b / a


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", nargs="*", help="families to run (F F-large P F32 P32 S L record compile)")
    parser.add_argument("--json", default=str(HERE / "cpu_results.json"), help="where to write the table")
    parser.add_argument("--markdown", metavar="JSON", help="print a written table as markdown and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0

    torch_ok = True
    try:
        import torch  # noqa: F401
        torch_version = torch.__version__
    except ImportError:
        torch_ok, torch_version = False, None
    rates = run_worker({"kind": "matmul"})
    rows = []
    print(f"matrix-product rate (numpy @, 2048^2): float64 {rates['float64'] / 1e9:.1f} GFLOP/s, "
          f"float32 {rates['float32'] / 1e9:.1f} GFLOP/s; threads {_threads()}; "
          f"PyTorch {'absent (pip install meanfield[bench])' if not torch_ok else torch_version}")
    header = (f"{'workload':8} {'size':26} {'ours':>10} {'numpy':>10} {'torch':>10} {'floor':>10} "
              f"{'np/ours':>8} {'pt/ours':>8} {'floor/ours':>10} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for family, size, spec in plan(args.quick):
        if args.only and family not in args.only:
            continue
        res = run_worker(spec)
        dtype = spec.get("dtype", "float64")
        # The floor from the matrix-product rate measured in the workload's own process,
        # interleaved with it (same load), else the one measured at the start.
        rate = res.get("matmul_flops", rates[dtype])
        floor = res["floor_flops"] / rate if "floor_flops" in res else None
        row = {"workload": family, "size": size, "dtype": dtype, **res, "floor": floor,
               "numpy_ratio": _ratio(res["ours"], res.get("numpy")),
               "torch_ratio": _ratio(res.get("ours_with_torch", res["ours"]), res.get("torch")),
               "floor_fraction": _ratio(res["ours"], floor)}
        if family == "record":
            extra = (f"  overhead {100 * res['overhead']:.1f} % (plain {_fmt_time(res['plain'])}; with a "
                     f"separate record evaluation, as before: {100 * res['overhead_previous']:.1f} %)")
        elif family in ("S", "L"):
            extra = f"  {res['steps_per_s']:.1f} steps/s"
        else:
            extra = "".join(f"  {k} {res[k]:.1e}" for k in ("check_numpy", "check_torch") if k in res)
            if res.get("previous"):
                extra += f"  previous kernel {_fmt_time(res['previous'])} ({res['previous'] / res['ours']:.2f}x)"
        rows.append(row)
        f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        torch_cell = _fmt_time(res.get("torch")) if torch_ok or family not in ("F", "P", "F32", "P32") else "absent"
        print(f"{family:8} {size:26} {_fmt_time(res['ours']):>10} {_fmt_time(res.get('numpy')):>10} "
              f"{torch_cell:>10} {_fmt_time(floor):>10} {f(row['numpy_ratio']):>8} "
              f"{f(row['torch_ratio']):>8} {f(row['floor_fraction']):>10} {res['peak_mib']:>9.0f}{extra}",
              flush=True)
    if not args.only or "compile" in args.only:
        cache = tempfile.mkdtemp(prefix="meanfield-numba-cache-")
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        try:
            cold = run_worker({"kind": "compile"}, env)
            warm = run_worker({"kind": "compile"}, env)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rows.append({"workload": "compile", "cold": cold, "cached": warm})
        print(f"compile: first process {cold['ours']:.1f} s (F {cold['F']:.1f} s, P {cold['P']:.1f} s, "
              f"import {cold['import']:.1f} s); second process with the cache {warm['ours']:.2f} s")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": _cpu_name(), "cores": os.cpu_count(), "threads": _threads(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch_version,
            "matmul_flops": rates, "quick": args.quick}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"written {args.json}")
    return 0


def markdown(table: dict) -> str:
    """The table of a JSON written by this script, as markdown."""
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["| workload | size | ours | numpy | PyTorch | floor | numpy/ours | PyTorch/ours | floor/ours "
             "| previous kernel/ours | peak MiB |", "|" + "---|" * 11]
    for row in table["rows"]:
        if row["workload"] == "compile":
            continue
        note = ""
        if row["workload"] == "record":
            note = f" (overhead {100 * row['overhead']:.1f} %; before: {100 * row['overhead_previous']:.1f} %)"
        elif row["workload"] in ("S", "L"):
            note = f" ({row['steps_per_s']:.1f} steps/s)"
        prev = _ratio(row["ours"], row.get("previous"))
        lines.append(f"| {row['workload']} | {row['size']}{note} | {_fmt_time(row['ours'])} | "
                     f"{_fmt_time(row.get('numpy'))} | {_fmt_time(row.get('torch'))} | {_fmt_time(row.get('floor'))} | "
                     f"{f(row.get('numpy_ratio'))} | {f(row.get('torch_ratio'))} | {f(row.get('floor_fraction'))} | "
                     f"{f(prev)} | {row['peak_mib']:.0f} |")
    for row in table["rows"]:
        if row["workload"] == "compile":
            cold, warm = row["cold"], row["cached"]
            lines.append(f"\nCompile: first process {cold['ours']:.1f} s (F {cold['F']:.1f} s, P {cold['P']:.1f} s, "
                         f"import {cold['import']:.1f} s); second process, numba cache reused: {warm['ours']:.2f} s.")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
