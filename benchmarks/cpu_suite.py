"""CPU benchmark suite: meanfield's kernels against numpy, PyTorch eager, JAX jit and the FLOP floor.

    python benchmarks/cpu_suite.py                     # the full table (~35 min on an idle 2-core machine)
    python benchmarks/cpu_suite.py --quick             # one small size per family, a smoke run (3-6 min)
    python benchmarks/cpu_suite.py --only F P PB       # some workload families only (PB, PS: every PB-*, PS-*)
    python benchmarks/cpu_suite.py --libs ours jax     # some libraries only (ours still writes the inputs)

Most of the full run is the baselines of the PB/PS rows at m = 4000 (PyTorch eager takes
~25 s a step there, numpy and JAX 2-12 s) and of P and F-large at m = 10^4. ``--budget``
caps each process's timed repeats; a step longer than the budget is timed by its first
call (the table says so). Where our PB/PS step at the smaller m predicts (m^2 scaling) more
than ``--max-step`` seconds at the larger m (as the Gauss-Hermite quadrature did, 35-70 s
a step at m = 1000, before the Hermite series), ours is skipped there and the baselines are
checked against numpy.

Prints one table (workload, size, ours, numpy, PyTorch, JAX, floor, ratios, peak memory) and
writes it as JSON (``--json``, default ``benchmarks/cpu_results.json``); ``--markdown FILE``
prints a written JSON as a markdown table.

**Each library runs in its own process**, one after the other for each workload: ours first
(it writes the workload's inputs and its value and velocity to a temporary folder), then
numpy, PyTorch and JAX, each reading those inputs, checking its value and velocity against
ours (the "check" columns: max of the relative errors of the value and of the velocity; where
ours is absent, against numpy's), and timing its step. So no library's thread pool (OpenBLAS,
numba, PyTorch's, XLA's Eigen pool) runs in another's process, and each process's peak resident
memory (``ru_maxrss``) is its own. Inside each process the library's step and the reference
matrix product (numpy ``@`` on 2048 x 2048 matrices of the workload's dtype; 1024 x 1024 with
``--quick``) run interleaved, round-robin, 7 times (3 for the largest sizes, 2 with ``--quick``)
after one warm-up (JAX: the warm-up compiles; the baselines' warm-up is also their check), and
the table gives medians; a process whose first step takes longer than ``--budget`` / repeats
seconds times fewer repeats (at least one; the JSON says how many). The floor is the workload's
compulsory flop count divided by the matrix-product rate measured in ours' process; each
process's rate is in the JSON, and the table flags a row whose processes saw rates more than
25 % apart (the machine's load changed between them, so the ratios are less certain). The
ratios are baseline time / our time. PyTorch and JAX are optional (``pip install
".[bench]"``): without them their columns say "absent".

Baselines (written as a researcher would write them: whole arrays, no tiling; same dtype as
ours; JAX with ``jax_enable_x64`` for float64 workloads, ``jax.jit`` of ``jax.value_and_grad``
of the objective, ``block_until_ready`` inside the timed call; PyTorch eager with autograd):

* F, F32, L: the relu network on the data with squared loss; numpy by hand (two products and
  the elementwise backward), PyTorch and JAX by autodiff of the mean loss;
* F-large: the same in chunks of 10^4 samples (the N x m matrix would be 8 GB): numpy and
  PyTorch in a Python loop over chunks, JAX in ``lax.scan`` accumulating value and gradient;
* P, P32, S: the closed-form bias-free relu population risk (arc-cosine kernel) over the m x m
  and m x k cosine matrices; numpy with the explicit kernel gradient, PyTorch and JAX by
  autodiff (the arccos argument clamped 1e-12 (float32: 1e-7) inside +-1);
* S: online SGD, batch 256 drawn in the library (numpy ``Generator``, ``jax.random`` inside the
  jitted step), labels from the teacher in the library;
* L: Langevin: the F step plus Gaussian noise drawn in the library;
* PB-*, PS-*: see ``population_baselines.py`` (its docstring says exactly what each computes):
  relu / erf / normal_cdf with biases by the closed forms of SCIENCE.md section 2b through
  Genz's bivariate normal CDF written in each library (checked against scipy by
  ``check_bivariate_normal.py``); tanh / sigmoid / softplus / gelu with biases by Mehler's
  series (1-D Gauss-Hermite coefficients, a polynomial in rho over the m x m correlation
  matrix, truncated where the terms fall below 1e-12, diagonal by 1-D quadrature); numpy with
  explicit gradients (Stein's identity), JAX and PyTorch by autodiff (Phi_2 with its analytic
  derivatives).

Workloads (one step = objective + velocity of every particle; d = 100, teacher k = 10):

* ``F``: finite data, relu, squared loss, bias and trained readout, N = 10^4,
  m in {10^3, 4 10^3, 10^4}; floor 4 N m d flops (two products);
* ``F-large``: N = 10^5, m = 10^4, baselines in chunks;
* ``P``: population, relu, no bias, closed form, teacher orthonormal, m in {10^3, 4 10^3, 10^4};
  floor 4 m^2 d flops (Gram matrix and force assembly);
* ``S``: online SGD on the population problem, batch 256, m = 10^4 (time per step);
* ``L``: Langevin on F at m = 10^4 (time per step);
* ``record``: a gradient-descent run on F (m = 4 10^3) recording all particles every 10
  steps against one recording only at the ends: the overhead in % of run time (ours only);
* ``F32``, ``P32``: float32 variants at m = 4 10^3;
* ``PB-relu``, ``PB-erf``, ``PB-normal_cdf``: population risk with biases in student and
  teacher (``Model(d, activation, bias=True)``, teacher a*_j = e_j, b*_j ~ N(0, 1),
  c*_j = 1/k; student a ~ N(0, I/d), b ~ N(0, 1), c ~ N(0, 1)), m in {10^3, 4 10^3}; ours is
  ``PopulationProblem(model, teacher).evaluate`` with method "auto" (the table gives
  ``describe()``); floor 4 m^2 d as for P; column "x P": our step over our bias-free relu P
  step at the same m, timed interleaved in the same process (targets: <= 3 here);
* ``PS-tanh``, ``PS-sigmoid``, ``PS-softplus``, ``PS-gelu``: the same with smooth activations
  (target: <= 10x the P step);
* ``compile``: first-call compile time of the kernels in a fresh process with an empty
  numba cache, then in a second fresh process that reuses the cache.

Threads: numba and BLAS use all cores unless ``NUMBA_NUM_THREADS`` / ``OMP_NUM_THREADS``
say otherwise; PyTorch gets ``torch.set_num_threads`` of the same count; XLA uses its own
pool over all cores (with ``NUMBA_NUM_THREADS=1`` it is made single-threaded by ``XLA_FLAGS``).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
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

# benchmarks/ is on sys.path when the suite runs as a script, not when it is loaded by path
# (tests/test_perf.py): put it there for the baselines module next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import population_baselines as pb  # noqa: E402

HERE = Path(__file__).resolve().parent
D = 100
TEACHER_K = 10
MATMUL_N = 2048  # side of the reference matrix product
LIBS = ("ours", "numpy", "torch", "jax")
BASELINES = LIBS[1:]
CHUNK = 10_000  # samples per chunk of the F-large baselines
RATE_SPREAD = 1.25  # flag a row whose processes' matrix-product rates differ by more than this
PB_FAMILIES = tuple(f"PB-{a}" for a in pb.CLOSED_FORM)
PS_FAMILIES = tuple(f"PS-{a}" for a in pb.SMOOTH)


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


def _jax(dtype):
    """JAX on the CPU, x64 for float64 workloads (None if not installed)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if _threads() == 1:
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", dtype == "float64")
    return jax


def _available(lib) -> bool:
    return lib in ("ours", "numpy") or importlib.util.find_spec(lib) is not None


def _version(lib):
    try:
        return importlib.metadata.version(lib)
    except importlib.metadata.PackageNotFoundError:
        return None


def _peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _interleaved(fns: dict, repeats: int, warm=True, budget=None, main=None) -> tuple[dict, int]:
    """Median seconds of each callable, run round-robin after one warm-up call each (none for
    the names in ``warm`` when it is a set: already called). With a ``budget`` (seconds), the
    repeats fall to about budget / (time of ``main``'s warm-up), at least one. Returns the
    medians and the number of repeats."""
    first = {}
    for name, fn in fns.items():
        if warm is True or name not in warm:
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
    if budget is not None and main in first:
        repeats = max(1, min(repeats, int(min(budget / max(first[main], 1e-9), 1e9))))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}, repeats


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


def _check(value, v, ref) -> float:
    """max(relative error of the value, relative error of the velocity) against ``ref``."""
    rv = float(ref["value"])
    return max(abs(float(value) - rv) / max(abs(rv), 1e-300), _rel_err(v, ref["velocity"]))


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


def numpy_finite_step_chunked(W, X, y, chunk=CHUNK):
    """``numpy_finite_step`` summed over chunks of ``chunk`` samples (N x m never formed)."""
    N = X.shape[0]
    value, v = 0.0, np.zeros_like(W)
    for start in range(0, N, chunk):
        cv, cvel = numpy_finite_step(W, X[start:start + chunk], y[start:start + chunk])
        share = min(chunk, N - start) / N
        value += share * cv
        v += share * cvel
    return value, v


def torch_finite_step_chunked(torch, W, X, y, chunk=CHUNK):
    """The F-large step in PyTorch: autograd accumulating W.grad over chunks."""
    m = W.shape[0]
    N, d = X.shape
    W = W.detach().requires_grad_(True)
    value = 0.0
    for start in range(0, N, chunk):
        Xc, yc = X[start:start + chunk], y[start:start + chunk]
        h = torch.relu(Xc @ W[:, :d].T + W[:, d]) @ W[:, d + 1] / m
        part = 0.5 * torch.sum((h - yc) ** 2) / N
        part.backward()
        value += part.item()
    return value, -m * W.grad


def _jax_finite_objective(jax, m, d, N=None):
    """0.5 mean (h - y)^2 (or 0.5 sum / N over a chunk of a data set of N samples)."""
    jnp = jax.numpy

    def objective(W, X, y):
        h = jax.nn.relu(X @ W[:, :d].T + W[:, d]) @ W[:, d + 1] / m
        r2 = (h - y) ** 2
        return 0.5 * (jnp.mean(r2) if N is None else jnp.sum(r2) / N)

    return objective


def jax_finite_step(jax, W, X, y, chunk=None):
    """Jitted (value, v = -m grad F) of the relu network on the data; with ``chunk``, value and
    gradient accumulated over chunks of samples by ``lax.scan``. Returns step(W, X, y)."""
    m = W.shape[0]
    N, d = X.shape
    if chunk is None or chunk >= N:
        objective = _jax_finite_objective(jax, m, d)

        @jax.jit
        def step(W, X, y):
            value, grad = jax.value_and_grad(objective)(W, X, y)
            return value, -m * grad
        return step
    if N % chunk:
        raise ValueError(f"N = {N} is not a multiple of the chunk {chunk}")
    objective = _jax_finite_objective(jax, m, d, N)
    vg = jax.value_and_grad(objective)

    @jax.jit
    def step(W, X, y):
        def body(carry, xy):
            value, grad = vg(W, *xy)
            return (carry[0] + value, carry[1] + grad), None
        zero = (jax.numpy.zeros((), W.dtype), jax.numpy.zeros_like(W))
        (value, grad), _ = jax.lax.scan(body, zero, (X.reshape(-1, chunk, d), y.reshape(-1, chunk)))
        return value, -m * grad
    return step


def jax_population_step(jax, W, T, y2):
    """Jitted (value, v) of the closed-form bias-free relu population risk, as the PyTorch one."""
    jnp = jax.numpy
    m = W.shape[0]
    d = W.shape[1] - 2
    eps = 1e-12 if W.dtype == np.float64 else 1e-7

    def kappa(Ai, Aj):
        ni = jnp.linalg.norm(Ai, axis=1)
        nj = jnp.linalg.norm(Aj, axis=1)
        cos = jnp.clip((Ai @ Aj.T) / jnp.outer(ni, nj), -1 + eps, 1 - eps)
        theta = jnp.arccos(cos)
        return jnp.outer(ni, nj) * (jnp.sqrt(1 - cos * cos) + (math.pi - theta) * cos) / (2 * math.pi)

    def objective(W, T):
        A, c = W[:, :d], W[:, d + 1]
        return (0.5 * y2 - c @ (kappa(A, T[:, :d]) @ T[:, d + 1]) / m
                + 0.5 * c @ (kappa(A, A) @ c) / m**2)

    @jax.jit
    def step(W, T):
        value, grad = jax.value_and_grad(objective)(W, T)
        return value, -m * grad
    return step


def numpy_sgd(W, T, steps, rng, step=0.1, batch=256):
    """``steps`` online SGD steps on the population problem (relu teacher without bias):
    a fresh Gaussian batch each step, labels from the teacher, the F step on it."""
    d = T.shape[1] - 2
    for _ in range(steps):
        X = rng.standard_normal((batch, d)).astype(W.dtype)
        y = np.maximum(X @ T[:, :d].T, 0) @ T[:, d + 1]
        _, v = numpy_finite_step(W, X, y)
        v[:, d] = 0  # no bias in this model
        W += step * v


def jax_sgd(jax, W, step=0.1, batch=256):
    """A jitted online SGD step (batch drawn by jax.random inside it): step(W, key) -> (W, key)."""
    m = W.shape[0]
    d = W.shape[1] - 2
    objective = _jax_finite_objective(jax, m, d)

    @jax.jit
    def sgd_step(W, key, T):
        key, sub = jax.random.split(key)
        X = jax.random.normal(sub, (batch, d), W.dtype)
        y = jax.nn.relu(X @ T[:, :d].T) @ T[:, d + 1]
        v = -m * jax.grad(objective)(W, X, y)
        return W + step * v.at[:, d].set(0), key
    return sgd_step


def numpy_langevin(W, X, y, steps, rng, step=0.1, beta=1e4):
    """``steps`` Langevin steps W += step v + sqrt(2 step / beta) N(0, I) on the data."""
    scale = math.sqrt(2 * step / beta)
    for _ in range(steps):
        _, v = numpy_finite_step(W, X, y)
        W += step * v + scale * rng.standard_normal(W.shape)


def jax_langevin(jax, W, step=0.1, beta=1e4):
    """A jitted Langevin step on the data: step(W, key, X, y) -> (W, key)."""
    m = W.shape[0]
    d = W.shape[1] - 2
    objective = _jax_finite_objective(jax, m, d)
    scale = math.sqrt(2 * step / beta)

    @jax.jit
    def langevin_step(W, key, X, y):
        key, sub = jax.random.split(key)
        v = -m * jax.grad(objective)(W, X, y)
        return W + step * v + scale * jax.random.normal(sub, W.shape, W.dtype), key
    return langevin_step


# ----------------------------------------------------------------------------- workloads: inputs

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


def _save(io, name, **arrays):
    if io is not None:
        np.savez(Path(io) / f"{name}.npz", **arrays)


def _reference(io):
    """Ours' value and velocity if ours ran, else numpy's; (None, None) if neither."""
    for who in ("ours", "numpy"):
        path = Path(io) / f"ref_{who}.npz"
        if path.exists():
            return who, dict(np.load(path))
    return None, None


# ----------------------------------------------------------------------------- workloads: ours

def _previous_finite(problem, W):
    """The finite-data step with the previous (unfused) kernel, kept as the reference."""
    from meanfield import kernels
    from meanfield.engine._model import tile_rows
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


def _ours_timed(fns, spec, dtype, result, warm=True):
    """Time ``fns`` (ours first) interleaved with the reference product; fill ``result``."""
    n = spec.get("matmul_n", MATMUL_N)
    fns = dict(fns, matmul=_matmul(dtype, n))
    times, repeats = _interleaved(fns, spec["repeats"], warm, spec.get("budget"), "ours")
    result.update(ours=times["ours"], repeats=repeats, matmul_flops=2.0 * n**3 / times["matmul"])
    for name in fns:
        if name not in ("ours", "matmul"):
            result[name] = times[name]
    return result


def ours_finite(spec, io):
    m, N, dtype = spec["m"], spec["N"], spec["dtype"]
    problem, W = _finite_problem(m, N, dtype)
    out = np.empty_like(W)
    ours = lambda: problem.evaluate(W, out=out)  # noqa: E731
    ours()
    result = {"floor_flops": 4.0 * N * m * D, "peak_mib": _peak_mib()}
    if io is not None:
        value, v = problem.value_and_velocity(W)
        _save(io, "inputs", W=W, X=problem.X, y=problem.y)
        _save(io, "ref_ours", value=value, velocity=v)
    if spec.get("inputs_only"):
        return {}
    fns = {"ours": ours}
    if spec.get("previous", True):
        fns["previous"] = _previous_finite(problem, W)
    return _ours_timed(fns, spec, dtype, result)


def ours_population(spec, io):
    m, dtype = spec["m"], spec["dtype"]
    problem, W = _population_problem(m, dtype)
    out = np.empty_like(W)
    ours = lambda: problem.evaluate(W, out=out)  # noqa: E731
    ours()
    result = {"floor_flops": 4.0 * m * m * D, "peak_mib": _peak_mib()}
    if io is not None:
        value, v = problem.value_and_velocity(W)
        _save(io, "inputs", W=W, T=problem._teacher_W, y2=problem.label_second_moment)
        _save(io, "ref_ours", value=value, velocity=v)
    if spec.get("inputs_only"):
        return {}
    fns = {"ours": ours}
    if spec.get("previous", True):
        fns["previous"] = _previous_population(problem, W)
    return _ours_timed(fns, spec, dtype, result)


def ours_bias_population(spec, io):
    """PB-* / PS-*: ``PopulationProblem(model, teacher)`` with method "auto", timed
    interleaved with our bias-free relu P step at the same m."""
    import meanfield as mf
    activation, m = spec["activation"], spec["m"]
    W, T = pb.inputs(activation, m, D, TEACHER_K)
    _save(io, "inputs", W=W, T=T)
    if spec.get("inputs_only"):
        return {}
    result = {"floor_flops": 4.0 * m * m * D}
    try:
        model = mf.Model(d=D, activation=activation, bias=True)
        problem = mf.PopulationProblem(model, mf.Teacher(T, activation))
    except Exception as error:  # an activation or method not (yet) in meanfield
        result.update(ours=None, ours_error=f"{type(error).__name__}: {error}", peak_mib=_peak_mib())
        return result
    result["method"] = problem.describe()
    t0 = time.perf_counter()
    first = problem.evaluate(W)  # the warm-up (compile) and the reference
    result["first_call"] = time.perf_counter() - t0
    result["peak_mib"] = _peak_mib()
    _save(io, "ref_ours", value=first.value, velocity=first.velocity)
    out = np.empty_like(W)
    ours = lambda: problem.evaluate(W, out=out)  # noqa: E731
    p_problem, p_W = _population_problem(m, "float64")
    p_out = np.empty_like(p_W)
    p_step = lambda: p_problem.evaluate(p_W, out=p_out)  # noqa: E731
    budget = spec.get("budget", math.inf)
    if result["first_call"] > budget:  # a step slower than the budget: its first call is the time
        _ours_timed({"ours": p_step}, dict(spec, budget=None), "float64", result)
        result.update(p_step=result["ours"], ours=result["first_call"], repeats=0)
    else:
        repeats = max(1, min(spec["repeats"], int(min(budget / result["first_call"], 1e9))))
        _ours_timed({"ours": ours, "p_step": p_step}, dict(spec, repeats=repeats, budget=None), "float64", result,
                    warm={"ours"})
    result["p_ratio"] = result["ours"] / result["p_step"]
    return result


def ours_steps(spec, io):
    """Time per step of a whole integrator step (S: online SGD, L: Langevin on F)."""
    import meanfield as mf
    kind, m, steps = spec["family"], spec["m"], spec["steps"]
    if kind == "S":
        problem, W = _population_problem(m, "float64")
        integrator = mf.sgd(problem, step=0.1, batch_size=256)
        _save(io, "inputs", W=W, T=problem._teacher_W)
    else:
        problem, W = _finite_problem(m, spec["N"], "float64")
        integrator = mf.langevin(problem, step=0.1, beta=1e4)
        _save(io, "inputs", W=W, X=problem.X, y=problem.y)
    if spec.get("inputs_only"):
        return {}
    state = integrator.init(W, np.random.default_rng(1))

    def ours():
        for _ in range(steps):
            integrator.step(state)

    ours()
    result = {"peak_mib": _peak_mib()}
    _ours_timed({"ours": ours}, spec, "float64", result, warm={"ours"})
    result["ours"] /= steps
    result["steps_per_s"] = 1.0 / result["ours"]
    return result


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
    times, _ = _interleaved({"plain": plain, "recorded": recorded, "separate": separate}, repeats)
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


# ----------------------------------------------------------------------------- workloads: baselines

def _baseline_step(lib, mod, spec, data):
    """(timed callable, callable giving (value, velocity as numpy) or None, extra result)
    of the library ``lib`` (module ``mod``: torch, jax or None) for the workload ``spec``."""
    kind = spec["kind"]
    extra = {}
    if kind == "finite":
        W, X, y = data["W"], data["X"], data["y"]
        chunk = spec.get("chunk")
        if lib == "numpy":
            fn = (lambda: numpy_finite_step_chunked(W, X, y, chunk)) if chunk else (lambda: numpy_finite_step(W, X, y))
            return fn, fn, extra
        if lib == "torch":
            tW, tX, ty = (mod.from_numpy(a) for a in (W, X, y))
            fn = ((lambda: torch_finite_step_chunked(mod, tW, tX, ty, chunk)) if chunk
                  else (lambda: torch_finite_step(mod, tW, tX, ty)))
            return fn, lambda: (lambda r: (r[0], r[1].numpy()))(fn()), extra
        step = jax_finite_step(mod, W, X, y, chunk)
        args = [mod.numpy.asarray(a) for a in (W, X, y)]
    elif kind == "population":
        W, T, y2 = data["W"], data["T"], float(data["y2"])
        if lib == "numpy":
            fn = lambda: numpy_population_step(W, T, y2)  # noqa: E731
            return fn, fn, extra
        if lib == "torch":
            tW, tT = mod.from_numpy(W), mod.from_numpy(T)
            fn = lambda: torch_population_step(mod, tW, tT, y2)  # noqa: E731
            return fn, lambda: (lambda r: (r[0], r[1].numpy()))(fn()), extra
        step = jax_population_step(mod, W, T, y2)
        args = [mod.numpy.asarray(a) for a in (W, T)]
    elif kind == "bias_population":
        activation = spec["activation"]
        W, T = data["W"], data["T"]
        mehler = pb.mehler_setup(activation, W, T) if activation in pb.SMOOTH else None
        if mehler is not None:
            extra.update(terms=mehler["N"], rho_max=mehler["rho_max"])
        y2 = pb.label_second_moment(activation, T, mehler)
        if lib == "numpy":
            fn = lambda: pb.numpy_step(activation, W, T, y2, mehler)  # noqa: E731
            return fn, fn, extra
        if lib == "torch":
            fn = pb.torch_step(mod, activation, mod.from_numpy(W), mod.from_numpy(T), y2, mehler)
            return fn, lambda: (lambda r: (r[0], r[1].numpy()))(fn()), extra
        step = pb.jax_step(activation, W, T, y2, mehler)
        args = [mod.numpy.asarray(W)]
    elif kind == "steps":
        steps, W0 = spec["steps"], data["W"]
        W = W0.copy()
        if spec["family"] == "S":
            if lib == "numpy":
                rng = np.random.default_rng(2)
                return lambda: numpy_sgd(W, data["T"], steps, rng), None, extra
            sgd_step = jax_sgd(mod, W0)
            T = mod.numpy.asarray(data["T"])
        else:
            if lib == "numpy":
                rng = np.random.default_rng(2)
                return lambda: numpy_langevin(W, data["X"], data["y"], steps, rng), None, extra
            langevin_step = jax_langevin(mod, W0)
            X, y = mod.numpy.asarray(data["X"]), mod.numpy.asarray(data["y"])
        if lib == "torch":
            return None, None, extra
        state = [mod.numpy.asarray(W0), mod.random.PRNGKey(2)]

        def run_steps():
            for _ in range(steps):
                state[:] = (sgd_step(state[0], state[1], T) if spec["family"] == "S"
                            else langevin_step(state[0], state[1], X, y))
            state[0].block_until_ready()

        return run_steps, None, extra
    else:
        raise ValueError(kind)
    timed = lambda: mod.block_until_ready(step(*args))  # noqa: E731
    return timed, lambda: (lambda r: (float(r[0]), np.asarray(r[1])))(step(*args)), extra


def baseline_worker(spec):
    """One library's step for one workload, in its own process: check against ours, time it
    interleaved with the reference product."""
    lib, io = spec["lib"], spec["io"]
    dtype = spec.get("dtype", "float64")
    mod = _torch() if lib == "torch" else _jax(dtype) if lib == "jax" else None
    if lib in ("torch", "jax") and mod is None:
        return {"absent": True}
    data = dict(np.load(Path(io) / "inputs.npz"))
    timed, evaluate, result = _baseline_step(lib, mod, spec, data)
    if timed is None:
        return {"none": True}
    t0 = time.perf_counter()
    if evaluate is not None:
        value, v = evaluate()  # the warm-up (JAX: compiles) and the check
        who, ref = _reference(io)
        if who is None and lib == "numpy":
            _save(io, "ref_numpy", value=value, velocity=v)
        elif who is not None:
            result.update(check=_check(value, v, ref), check_against=who)
    else:
        timed()
    first = time.perf_counter() - t0
    result["first_call"] = first
    n = spec.get("matmul_n", MATMUL_N)
    per = spec["steps"] if spec["kind"] == "steps" else 1
    budget = spec.get("budget", math.inf)
    if first > budget:  # a step slower than the budget: its first call is the time
        times, _ = _interleaved({"matmul": _matmul(dtype, n)}, spec["repeats"])
        times["lib"], repeats = first, 0
    else:
        repeats = max(1, min(spec["repeats"], int(min(budget / first, 1e9))))
        times, repeats = _interleaved({"lib": timed, "matmul": _matmul(dtype, n)}, repeats, warm={"lib"})
    result.update(time=times["lib"] / per, repeats=repeats, peak_mib=_peak_mib(),
                  matmul_flops=2.0 * n**3 / times["matmul"])
    return result


def worker(spec):
    kind, lib = spec["kind"], spec.get("lib", "ours")
    if kind == "compile":
        return work_compile()
    if kind == "matmul":
        return {"float64": matmul_rate(np.float64), "float32": matmul_rate(np.float32)}
    if kind == "record":
        return work_record(spec["m"], spec["N"], spec["steps"], spec["repeats"])
    if lib != "ours":
        return baseline_worker(spec)
    io = spec.get("io")
    return {"finite": ours_finite, "population": ours_population, "bias_population": ours_bias_population,
            "steps": ours_steps}[kind](spec, io)


# ----------------------------------------------------------------------------- driver

def plan(quick: bool):
    """The workloads: (family, size label, spec); spec["baselines"] names the other libraries."""
    # --quick: one size per family, 2 repeats, a 1024^2 reference product: every process and
    # code path runs once (what takes the time there is starting ~60 processes and JAX's compiles).
    if quick:
        N, ms, mL, NL, r, chunk, pbm = 1000, (400,), 400, 4000, 2, 1000, (100,)
    else:
        N, ms, mL, NL, r, chunk, pbm = 10_000, (1000, 4000, 10_000), 10_000, 100_000, 7, CHUNK, (1000, 4000)
    m_mid = ms[len(ms) // 2]
    rows = []
    big = max(min(3, r), r // 2)  # fewer repeats where one numpy or PyTorch step takes seconds
    for m in ms:
        rows.append(("F", f"N={N} m={m}", {"kind": "finite", "m": m, "N": N, "dtype": "float64",
                                            "repeats": big if m == ms[-1] else r, "baselines": BASELINES}))
    rows.append(("F-large", f"N={NL} m={mL}",
                 {"kind": "finite", "m": mL, "N": NL, "dtype": "float64", "repeats": max(min(2, r), r // 3),
                  "previous": False, "chunk": chunk, "baselines": BASELINES}))
    for m in ms:
        rows.append(("P", f"m={m}", {"kind": "population", "m": m, "dtype": "float64",
                                      "repeats": big if m == ms[-1] else r, "baselines": BASELINES}))
    rows.append(("F32", f"N={N} m={m_mid}", {"kind": "finite", "m": m_mid, "N": N, "dtype": "float32", "repeats": r,
                                              "baselines": BASELINES}))
    rows.append(("P32", f"m={m_mid}", {"kind": "population", "m": m_mid, "dtype": "float32", "repeats": r,
                                        "baselines": BASELINES}))
    rows.append(("S", f"batch=256 m={ms[-1]}",
                 {"kind": "steps", "family": "S", "m": ms[-1], "N": N, "steps": 20, "repeats": r,
                  "baselines": ("numpy", "jax")}))
    rows.append(("L", f"N={N} m={ms[-1]}",
                 {"kind": "steps", "family": "L", "m": ms[-1], "N": N, "steps": 3, "repeats": big,
                  "baselines": ("numpy", "jax")}))
    rows.append(("record", f"N={N // 4} m={m_mid} 100 steps",
                 {"kind": "record", "m": m_mid, "N": N // 4, "steps": 100 if not quick else 20,
                  "repeats": r, "baselines": ()}))
    for family in PB_FAMILIES + PS_FAMILIES:
        for m in pbm:
            rows.append((family, f"m={m}", {"kind": "bias_population", "activation": family[3:], "m": m,
                                             "dtype": "float64", "repeats": big if m == pbm[-1] else r,
                                             "baselines": BASELINES}))
    if quick:
        for _, _, spec in rows:
            spec["matmul_n"] = 1024
    return rows


def _selected(family, only):
    if not only:
        return True
    return any(family == name or (name in ("PB", "PS") and family.startswith(name + "-")) for name in only)


def run_worker(spec, env=None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_row(spec, libs, budget) -> dict:
    """Ours, then each baseline, each in its own process; {lib: that process's result}."""
    spec = dict(spec, budget=budget)
    if spec["kind"] == "record":
        return {"ours": run_worker(spec)}
    io = tempfile.mkdtemp(prefix="meanfield-bench-")
    try:
        skip = "ours" not in libs or spec.get("skip_ours")
        results = {"ours": run_worker(dict(spec, lib="ours", io=io, inputs_only=bool(skip)))}
        if skip:
            results["ours"] = {"ours": None, "ours_skipped": spec["skip_ours"]} if spec.get("skip_ours") else {}
        for lib in spec["baselines"]:
            if lib not in libs:
                continue
            if not _available(lib):
                results[lib] = {"absent": True}
                continue
            try:
                results[lib] = run_worker(dict(spec, lib=lib, io=io))
            except RuntimeError as error:
                lines = [line for line in str(error).splitlines() if line.strip()]
                results[lib] = {"error": lines[-1] if lines else "failed"}
        return results
    finally:
        shutil.rmtree(io, ignore_errors=True)


def assemble(family, size, spec, results, rates) -> dict:
    """One table row from the processes' results (JSON keys as before, plus JAX's and ``libs``)."""
    dtype = spec.get("dtype", "float64")
    ours = results.get("ours", {})
    row = {"workload": family, "size": size, "dtype": dtype, **ours}
    row["ours"] = ours.get("ours")
    if "floor_flops" in ours:
        row["floor"] = ours["floor_flops"] / ours.get("matmul_flops", rates[dtype])
        row["floor_fraction"] = _ratio(row["ours"], row["floor"])
    row["libs"] = {lib: res for lib, res in results.items() if lib != "ours"}
    for lib in BASELINES:
        res = results.get(lib) or {}
        row[lib] = res.get("time")
        if "check" in res:
            row[f"check_{lib}"] = res["check"]
        row[f"{lib}_ratio"] = _ratio(row["ours"], row[lib])
    flops = [r["matmul_flops"] for r in results.values() if r and r.get("matmul_flops")]
    if len(flops) > 1:
        row["rate_spread"] = max(flops) / min(flops)
    return row


def _fmt_time(t):
    if t is None:
        return "-"
    return f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} us"


def _fmt_mib(x):
    return "-" if not x else f"{x:.0f}"


def _ratio(a, b):
    return None if (a is None or b is None) else b / a


def _cell(row, lib):
    """A baseline's time, or why there is none."""
    res = (row.get("libs") or {}).get(lib)
    if res is None:
        return _fmt_time(row.get(lib))
    if res.get("absent"):
        return "absent"
    if "error" in res:
        return "failed"
    return _fmt_time(res.get("time"))


def _notes(row) -> str:
    """Checks, previous kernel, method and warnings of a row, for the printed table."""
    family = row["workload"]
    if family == "record":
        return (f"  overhead {100 * row['overhead']:.1f} % (plain {_fmt_time(row['plain'])}; with a "
                f"separate record evaluation, as before: {100 * row['overhead_previous']:.1f} %)")
    parts = []
    if row.get("steps_per_s"):
        parts.append(f"{row['steps_per_s']:.1f} steps/s")
    short = {"numpy": "np", "torch": "pt", "jax": "jx"}
    checks = " ".join(f"{short[lib]} {row[f'check_{lib}']:.0e}" for lib in BASELINES if f"check_{lib}" in row)
    if checks:
        against = {res.get("check_against") for res in (row.get("libs") or {}).values() if res.get("check_against")}
        parts.append(f"check {checks}" + (" (vs numpy)" if against == {"numpy"} else ""))
    if row.get("previous"):
        parts.append(f"previous kernel {_fmt_time(row['previous'])} ({row['previous'] / row['ours']:.2f}x)")
    if row.get("method"):
        parts.append(f"[{row['method']}]")
    if row.get("ours_error"):
        parts.append(f"ours: {row['ours_error']}")
    if row.get("ours_skipped"):
        parts.append(f"ours {row['ours_skipped']}")
    if row.get("repeats") == 0:
        parts.append("ours timed by its first call (slower than --budget)")
    slow = [lib for lib, res in (row.get("libs") or {}).items() if res.get("repeats") == 0]
    if slow:
        parts.append(f"{', '.join(slow)} timed by the first call")
    terms = (row.get("libs") or {}).get("numpy", {}).get("terms")
    if terms:
        parts.append(f"Mehler terms {terms}")
    for lib, res in (row.get("libs") or {}).items():
        if "error" in res:
            parts.append(f"{lib} failed: {res['error'][:120]}")
    if row.get("rate_spread", 1.0) > RATE_SPREAD:
        parts.append(f"! matmul rate varied {row['rate_spread']:.2f}x between the processes")
    return ("  " + "; ".join(parts)) if parts else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", nargs="*", help="families to run (F F-large P F32 P32 S L record compile, "
                        f"{' '.join(PB_FAMILIES + PS_FAMILIES)}; PB and PS select every PB-* or PS-*)")
    parser.add_argument("--libs", nargs="*", default=list(LIBS), choices=LIBS,
                        help="libraries to time (default all; ours always writes the inputs)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed repeats per process before the repeats are cut (default 60)")
    parser.add_argument("--max-step", type=float, default=300.0,
                        help="skip our PB/PS step at a larger m when the smaller m predicts a step longer than "
                             "this many seconds (m^2 scaling; default 300)")
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

    versions = {lib: _version(lib) for lib in ("torch", "jax", "jaxlib")}
    rates = run_worker({"kind": "matmul"})
    rows = []
    absent = lambda lib: "absent (pip install meanfield[bench])" if versions[lib] is None else versions[lib]  # noqa: E731
    print(f"matrix-product rate (numpy @, 2048^2): float64 {rates['float64'] / 1e9:.1f} GFLOP/s, "
          f"float32 {rates['float32'] / 1e9:.1f} GFLOP/s; threads {_threads()}; "
          f"PyTorch {absent('torch')}; JAX {absent('jax')}; each library in its own process", flush=True)
    header = (f"{'workload':14} {'size':22} {'ours':>10} {'numpy':>10} {'torch':>10} {'jax':>10} {'floor':>10} "
              f"{'np/ours':>7} {'pt/ours':>7} {'jx/ours':>7} {'fl/ours':>7} {'x P':>7} {'MiB':>5}")
    print(header)
    print("-" * len(header), flush=True)
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    t_start = time.perf_counter()
    seen = {}  # family -> (m, our step time, method) of its last row
    for family, size, spec in plan(args.quick):
        if not _selected(family, args.only):
            continue
        if family in seen and spec["kind"] == "bias_population":
            m0, t0, method = seen[family]
            predicted = t0 * (spec["m"] / m0) ** 2  # m^2 pairs
            if predicted > args.max_step:
                spec = dict(spec, skip_ours=f"not run: predicted {predicted:.0f} s a step from m = {m0} "
                                            f"({method}), over --max-step {args.max_step:.0f} s")
        row = assemble(family, size, spec, run_row(spec, args.libs, args.budget), rates)
        rows.append(row)
        if row.get("ours") and "m" in spec:
            seen[family] = (spec["m"], row["ours"], row.get("method"))
        print(f"{family:14} {size:22} {_fmt_time(row['ours']):>10} {_cell(row, 'numpy'):>10} "
              f"{_cell(row, 'torch'):>10} {_cell(row, 'jax'):>10} {_fmt_time(row.get('floor')):>10} "
              f"{f(row['numpy_ratio']):>7} {f(row['torch_ratio']):>7} {f(row['jax_ratio']):>7} "
              f"{f(row.get('floor_fraction')):>7} {f(row.get('p_ratio')):>7} "
              f"{_fmt_mib(row.get('peak_mib')):>5}{_notes(row)}", flush=True)
    if _selected("compile", args.only) and "ours" in args.libs:
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
    for target, measured, verdict in targets(rows):
        print(f"target: {target}: {verdict} ({measured})")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": _cpu_name(), "cores": os.cpu_count(), "threads": _threads(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": versions["torch"],
            "jax": versions["jax"], "jaxlib": versions["jaxlib"], "matmul_flops": rates, "quick": args.quick,
            "libs": args.libs, "budget": args.budget, "max_step": args.max_step, "separate_processes": True,
            "wall_s": time.perf_counter() - t_start}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"written {args.json} ({meta['wall_s'] / 60:.1f} min)")
    return 0


def targets(rows) -> list[tuple[str, str, str]]:
    """The issue's targets: (target, measured, verdict) for the rows present."""
    out = []
    for prefix, limit in (("PB-", 3.0), ("PS-", 10.0)):
        sel = [r for r in rows if r["workload"].startswith(prefix)]
        if not sel:
            continue
        vals = [f"{r['workload'][3:]} {r['size']} {r['p_ratio']:.2f}" if r.get("p_ratio") else
                f"{r['workload'][3:]} {r['size']} -" for r in sel]
        ok = all(r.get("p_ratio") is not None and r["p_ratio"] <= limit for r in sel)
        out.append((f"{prefix}*: our step <= {limit:g}x our bias-free relu P step", "; ".join(vals),
                    "met" if ok else "not met"))
    sel = [r for r in rows if r.get("jax_ratio") is not None]
    unmeasured = [f"{r['workload']} {r['size']}" for r in rows if r.get("jax") is not None and r.get("ours") is None]
    if sel:
        behind = [f"{r['workload']} {r['size']} {r['jax_ratio']:.2f}" for r in sel if r["jax_ratio"] <= 1.0]
        ratios = [r["jax_ratio"] for r in sel]
        out.append(("ours ahead of JAX jit on every workload",
                    f"JAX/ours {min(ratios):.2f} to {max(ratios):.2f}"
                    + (f"; behind or level: {', '.join(behind)}" if behind else "")
                    + (f"; ours not measured: {', '.join(unmeasured)}" if unmeasured else ""),
                    "met" if not behind and not unmeasured else "not met"))
    return out


def markdown(table: dict) -> str:
    """The table of a JSON written by this script, as markdown (older JSON without JAX too)."""
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["| workload | size | ours | numpy | PyTorch | JAX | floor | numpy/ours | PyTorch/ours | JAX/ours "
             "| floor/ours | × P step | previous kernel/ours | peak MiB |", "|" + "---|" * 14]
    notes = []
    for row in table["rows"]:
        if row["workload"] == "compile":
            continue
        note = ""
        if row["workload"] == "record":
            note = f" (overhead {100 * row['overhead']:.1f} %; before: {100 * row['overhead_previous']:.1f} %)"
        elif row.get("steps_per_s"):
            note = f" ({row['steps_per_s']:.1f} steps/s)"
        flag = " †" if row.get("rate_spread", 1.0) > RATE_SPREAD else ""
        prev = _ratio(row["ours"], row.get("previous"))
        lines.append(f"| {row['workload']} | {row['size']}{note} | {_fmt_time(row['ours'])} | "
                     f"{_cell(row, 'numpy')} | {_cell(row, 'torch')} | {_cell(row, 'jax')} | "
                     f"{_fmt_time(row.get('floor'))} | {f(row.get('numpy_ratio'))}{flag} | "
                     f"{f(row.get('torch_ratio'))}{flag} | {f(row.get('jax_ratio'))}{flag} | "
                     f"{f(row.get('floor_fraction'))} | {f(row.get('p_ratio'))} | {f(prev)} | "
                     f"{_fmt_mib(row.get('peak_mib'))} |")
        checks = [f"{name} {row[f'check_{lib}']:.1e}" for lib, name in
                  (("numpy", "numpy"), ("torch", "PyTorch"), ("jax", "JAX")) if f"check_{lib}" in row]
        extra = [row["method"]] if row.get("method") else []
        if row.get("ours_error"):
            extra.append(f"ours: {row['ours_error']}")
        if row.get("ours_skipped"):
            extra.append(f"ours {row['ours_skipped']}")
        first = (["ours"] if row.get("repeats") == 0 else []) + [
            lib for lib, res in (row.get("libs") or {}).items() if res.get("repeats") == 0]
        if first:
            extra.append(f"timed by the first call (slower than the budget): {', '.join(first)}")
        terms = (row.get("libs") or {}).get("numpy", {}).get("terms")
        if terms:
            extra.append(f"Mehler series to n = {terms}")
        against = {res.get("check_against") for res in (row.get("libs") or {}).values() if res.get("check_against")}
        if checks and against == {"numpy"}:
            checks.append("(against numpy: ours absent)")
        if checks or extra:
            notes.append(f"| {row['workload']} | {row['size']} | {'; '.join(extra) or '-'} "
                         f"| {', '.join(checks) or '-'} |")
    if notes:
        lines += ["", "| workload | size | how ours computes it | check (max relative error of value and velocity "
                  "against ours) |", "|---|---|---|---|"] + notes
    goals = targets([row for row in table["rows"] if row["workload"] != "compile"])
    if goals:
        lines += ["", "| target | measured | |", "|---|---|---|"] + [f"| {t} | {v} | {ok} |" for t, v, ok in goals]
    if any(row.get("rate_spread", 1.0) > RATE_SPREAD for row in table["rows"]):
        lines.append(f"\n† the matrix-product rates measured in the row's processes differ by more than "
                     f"{100 * (RATE_SPREAD - 1):.0f} %: the load changed between them.")
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
