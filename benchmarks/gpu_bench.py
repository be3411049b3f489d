"""GPU benchmark of the CUDA kernels and of whole run steps, against the device's peaks and the CPU.

    python benchmarks/gpu_bench.py                    # on a GPU machine: the full table
    python benchmarks/gpu_bench.py --write            # ... and append it to benchmarks/GPU_RESULTS.md
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --tiny   # smoke test, no GPU (numbers meaningless)

What it measures, for float32 and float64:

* the device's peaks: FMA throughput (a kernel of independent fused multiply-adds, 2 FLOP
  each) and memory bandwidth (a copy kernel, bytes read + written);
* each kernel at several m: the closed-form pair field (m up to 10^5: m^2 pairs), the
  quadrature pair field (Q = 32, tanh with biases; m up to 10^4), the
  finite-data forward/backward on N = 4096 samples and the online-SGD batch of 256 (m up to
  10^6), the ensemble kernel (B small networks of m = k = 20 at once: the "m" column is B, up
  to 10^4), the Euler, heavy-ball and Langevin updates and the gradient-norm reduction (m up to
  10^6), timed with CUDA events (median of ``--repeats`` after a warm-up);
* a whole run step through the backend (``meanfield.engine._cuda.to_device``) for the same three
  problems, host round trip of the objective included;
* the same operation on the CPU backend (numba kernels, this machine's threads), for the
  speed-up; skipped (``-``) where its extrapolated time exceeds ``--cpu-budget`` seconds.

Achieved FLOP/s and bytes/s use the operation counts stated next to each entry of ``CASES``
(the compulsory traffic: every input read once and every output written once), and are given
as fractions of the measured peaks.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
from numba import config, cuda

import meanfield as mf
from meanfield import kernels
from meanfield.engine._cuda import cuda_status, to_device
from meanfield.kernels import gpu_ensemble, gpu_finite_data, gpu_population, gpu_reductions, gpu_updates

SIM = config.ENABLE_CUDASIM
D = 20
N_DATA = 4096
BATCH = 256
ENSEMBLE_WIDTH = 20  # m = k of each member of the ensemble case
TRANSCENDENTAL = 20  # FLOP counted for one activation, loss or closed-form kernel evaluation


def timed(fn, repeats):
    """Median seconds of ``fn()`` on the device (CUDA events; wall clock in the simulator)."""
    fn()
    cuda.synchronize()
    samples = []
    for _ in range(repeats):
        if SIM:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        else:
            start, end = cuda.event(), cuda.event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(cuda.event_elapsed_time(start, end) / 1e3)
    return statistics.median(samples)


def wall(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def peaks(dtype, tiny):
    """(FLOP/s, bytes/s) measured on this device for ``dtype``."""
    T = np.dtype(dtype).type
    iterations = 8 if tiny else 4096

    @cuda.jit
    def fma(out, a, b):
        i = cuda.grid(1)
        x0 = out[i]
        x1 = x0 + a
        x2 = x0 + b
        x3 = x0 - a
        for _ in range(iterations):
            x0 = x0 * a + b
            x1 = x1 * a + b
            x2 = x2 * a + b
            x3 = x3 * a + b
        out[i] = x0 + x1 + x2 + x3

    @cuda.jit
    def copy(src, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            dst[i] = src[i]

    threads = 8 if tiny else 256
    n_blocks = 2 if tiny else 132 * 64
    out = cuda.to_device(np.zeros(threads * n_blocks, dtype))
    seconds = timed(lambda: fma[n_blocks, threads](out, T(0.999), T(1e-3)), 3)
    flops = 2.0 * 4 * iterations * threads * n_blocks / seconds
    size = 16 if tiny else 1 << 27
    src, dst = cuda.to_device(np.ones(size, dtype)), cuda.device_array(size, dtype)
    seconds = timed(lambda: copy[(size + threads - 1) // threads, threads](src, dst), 3)
    return flops, 2.0 * size * np.dtype(dtype).itemsize / seconds


def population_case(m, dtype):
    model = mf.Model(d=D, activation="relu", dtype=dtype)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=D, k=min(5, D)))
    return model, problem, mf.initialize(model, m, np.random.default_rng(0))


def data_case(m, dtype, n):
    model = mf.Model(d=D, activation="relu", dtype=dtype)
    problem = mf.FiniteDataProblem.from_teacher(model, mf.Teacher.orthonormal(d=D, k=min(5, D)), n,
                                                np.random.default_rng(1))
    return model, problem, mf.initialize(model, m, np.random.default_rng(0))


def bench_size(name, m, dtype, repeats, cpu_budget, cpu_estimate):
    """One row: (seconds on GPU, FLOP, bytes, seconds on CPU or None)."""
    item = np.dtype(dtype).itemsize
    p = D + 2
    dev = cuda.to_device
    if name == "pair field (closed form)":
        _, _, W = population_case(m, dtype)
        dW, K, G = dev(W), cuda.device_array(m, dtype), cuda.device_array((m, p - 1), dtype)
        gpu = timed(lambda: gpu_population.closed_form_pair_field(dW, dW, 0, K, G), repeats)
        flop = m * m * (4 * D + TRANSCENDENTAL)
        byte = (m * p + m * (p - 1) + m) * item
        Kc, Gc = np.empty(m, dtype), np.empty((m, p - 1), dtype)
        cpu_fn = lambda: kernels.closed_form_pair_field(W, W, 0, Kc, Gc)  # noqa: E731
    elif name == "pair field (quadrature, Q = 32)":
        model = mf.Model(d=D, activation="tanh", bias=True, dtype=dtype)
        W = mf.initialize(model, m, np.random.default_rng(0), mf.Init(b="gaussian"))
        Q = 2 if SIM else 32
        nodes, weights = np.polynomial.hermite_e.hermegauss(Q)
        nodes, weights = nodes.astype(dtype), (weights / weights.sum()).astype(dtype)
        code = kernels.ACTIVATION_CODES["tanh"]
        dW, K, G = dev(W), cuda.device_array(m, dtype), cuda.device_array((m, p - 1), dtype)
        dn, dw = dev(nodes), dev(weights)
        gpu = timed(lambda: gpu_population.quadrature_pair_field(dW, dW, code, dn, dw, K, G), repeats)
        flop = m * m * (4 * D + 2 * Q * Q * (2 * TRANSCENDENTAL + 12))
        byte = (m * p + m * (p - 1) + m) * item
        Kc, Gc = np.empty(m, dtype), np.empty((m, p - 1), dtype)
        cpu_fn = lambda: kernels.quadrature_pair_field(W, W, code, nodes, weights, Kc, Gc)  # noqa: E731
    elif name in ("finite data field", "online-SGD batch field"):
        n = N_DATA if name == "finite data field" else BATCH
        model, problem, W = data_case(m, dtype, n)
        X, y = problem.X, problem.y
        args = (0, 0, 1.0 / m, 1.0, False, True, 512)
        dW, dX, dy, dP = dev(W), dev(X), dev(y), dev(np.empty((0, p), dtype))
        v, pv = cuda.device_array_like(W), cuda.device_array((0, p), dtype)
        gpu = timed(lambda: gpu_finite_data.finite_data_field(dW, dX, dy, dP, *args, v, pv), repeats)
        flop = n * m * (6 * D + 2 * TRANSCENDENTAL)
        byte = (2 * m * p + n * (D + 1)) * item
        vc, pvc, Pc = np.empty_like(W), np.empty((0, p), dtype), np.empty((0, p), dtype)
        cpu_fn = lambda: kernels.finite_data_field(W, X, y, Pc, *args, vc, pvc)  # noqa: E731
    elif name == "ensemble of B networks (m = k = 20)":
        B, w = m, ENSEMBLE_WIDTH
        rng = np.random.default_rng(0)
        W = (rng.standard_normal((B, w, p)) / np.sqrt(D)).astype(dtype)
        teacher = (rng.standard_normal((B, w, p)) / np.sqrt(D)).astype(dtype)
        moments = np.ones(B, dtype)
        args = (kernels.ACTIVATION_CODES["relu"], 1.0 / w, 1.0)
        dW, dT, dM = dev(W), dev(teacher), dev(moments)
        values, velocity = cuda.device_array(B, dtype), cuda.device_array_like(W)
        work = gpu_ensemble.gpu_ensemble_work_arrays(B, w, w, D, dtype)
        gpu = timed(lambda: gpu_ensemble.gpu_ensemble_closed_form_evaluate(dW, dT, *args, dM, True, values, velocity,
                                                                           *work), repeats)
        flop = B * w * 2 * w * (4 * D + TRANSCENDENTAL)
        byte = B * (3 * w * p + 1) * item
        cpu_values, cpu_velocity = np.empty(B, dtype), np.empty_like(W)
        cpu_work = kernels.ensemble_work_arrays(B, w, w, D, dtype)
        cpu_fn = lambda: kernels.ensemble_closed_form_evaluate(W, teacher, *args, moments, True, cpu_values,  # noqa: E731
                                                               cpu_velocity, *cpu_work)
    elif name in ("euler update", "heavy-ball update", "langevin update", "gradient norm"):
        W = np.random.default_rng(0).standard_normal((m, p)).astype(dtype)
        V = np.random.default_rng(1).standard_normal((m, p)).astype(dtype)
        dW, dV, dB = dev(W), dev(V), dev(np.zeros_like(W))
        mask = np.ones(p, bool)
        if name == "euler update":
            gpu = timed(lambda: gpu_updates.euler_update(dW, dV, 1e-6), repeats)
            flop, byte = 2 * m * p, 3 * m * p * item
            cpu_fn = lambda: kernels.euler_update(W, V, 1e-6)  # noqa: E731
        elif name == "heavy-ball update":
            B = np.zeros_like(W)
            gpu = timed(lambda: gpu_updates.heavy_ball_update(dW, dV, dB, 1e-6, 0.9), repeats)
            flop, byte = 4 * m * p, 5 * m * p * item
            cpu_fn = lambda: kernels.heavy_ball_update(W, V, B, 1e-6, 0.9)  # noqa: E731
        elif name == "langevin update":
            states, dmask = gpu_updates.create_noise_states(m, 1), dev(mask)
            gpu = timed(lambda: gpu_updates.langevin_update(dW, dV, states, 1e-6, 0.1, 1e-3, dmask), repeats)
            flop, byte = (6 + TRANSCENDENTAL) * m * p, (3 * m * p * item + 2 * 16 * m)
            noise = np.empty_like(W)
            rng = np.random.default_rng(2)

            def cpu_fn():
                rng.standard_normal(dtype=W.dtype, out=noise)
                kernels.langevin_update(W, V, noise, 1e-6, 0.1, 1e-3, mask)
        else:
            gpu = timed(lambda: gpu_reductions.sum_of_squares(dV), repeats)
            flop, byte = 2 * m * p, m * p * item
            cpu_fn = lambda: float(np.linalg.norm(V))  # noqa: E731
    else:  # whole run steps through the backend
        if name == "step: population gd":
            model, problem, W = population_case(m, dtype)
            integrator = mf.gradient_descent(problem, 0.1)
            flop = 2 * m * (m + 5) * (4 * D + TRANSCENDENTAL)
        elif name == "step: finite data gd":
            model, problem, W = data_case(m, dtype, N_DATA)
            integrator = mf.gradient_descent(problem, 0.1)
            flop = N_DATA * m * (6 * D + 2 * TRANSCENDENTAL)
        else:
            model, problem, W = data_case(m, dtype, max(N_DATA, BATCH))
            integrator = mf.sgd(problem, 0.1, BATCH)
            flop = BATCH * m * (6 * D + 2 * TRANSCENDENTAL)
        byte = 4 * m * p * item
        device_problem, device_integrator = to_device(problem, integrator)
        state = device_integrator.init(W, np.random.default_rng(0))
        gpu = wall(lambda: device_integrator.step(state), repeats)
        cpu_state = integrator.init(W, np.random.default_rng(0))
        cpu_fn = lambda: integrator.step(cpu_state)  # noqa: E731
    cpu = None
    if cpu_estimate is None or cpu_estimate <= cpu_budget:
        cpu = wall(cpu_fn, max(1, min(repeats, 3)))
    return gpu, flop, byte, cpu


CASES = {  # name: (sizes, exponent of the cost in m, for extrapolating the CPU time)
    "pair field (closed form)": ([10**3, 10**4, 10**5], 2),
    "pair field (quadrature, Q = 32)": ([10**3, 10**4], 2),
    "finite data field": ([10**3, 10**4, 10**5, 10**6], 1),
    "online-SGD batch field": ([10**3, 10**4, 10**5, 10**6], 1),
    "ensemble of B networks (m = k = 20)": ([10**2, 10**3, 10**4], 1),
    "euler update": ([10**4, 10**5, 10**6], 1),
    "heavy-ball update": ([10**4, 10**5, 10**6], 1),
    "langevin update": ([10**4, 10**5, 10**6], 1),
    "gradient norm": ([10**4, 10**5, 10**6], 1),
    "step: population gd": ([10**3, 10**4, 10**5], 2),
    "step: finite data gd": ([10**3, 10**4, 10**5, 10**6], 1),
    "step: online sgd": ([10**3, 10**4, 10**5, 10**6], 1),
}
TINY_SIZES = [11]  # with d = 3, N = 13, batch = 5: small enough for the simulator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="m = 11, d = 3 only (a smoke test, e.g. in the simulator)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-budget", type=float, default=30.0,
                        help="skip a CPU timing whose extrapolated time exceeds this many seconds")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/GPU_RESULTS.md")
    args = parser.parse_args(argv)
    usable, device = cuda_status()
    if not usable:
        print(f"gpu_bench: CUDA is not usable here ({device})", file=sys.stderr)
        return 2
    global N_DATA, BATCH, D, ENSEMBLE_WIDTH
    if args.tiny:
        N_DATA, BATCH, D, ENSEMBLE_WIDTH = 13, 5, 3, 4
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    import numba
    lines = [f"## {datetime.date.today().isoformat()}: {device}", "",
             f"`python benchmarks/gpu_bench.py{' --tiny' if args.tiny else ''}`; d = {D}, N = {N_DATA}, "
             f"batch = {BATCH}; numba {numba.__version__}, CPU baseline on {os.cpu_count()} cores "
             f"({platform.processor() or platform.machine()}, {numba.get_num_threads()} numba threads)", ""]
    for dtype in dtypes:
        peak_flops, peak_bytes = peaks(dtype, args.tiny)
        lines += [f"### {dtype}: measured peaks {peak_flops / 1e12:.3g} TFLOP/s (FMA), "
                  f"{peak_bytes / 1e9:.4g} GB/s (copy)", "",
                  "| operation | m | GPU time | GFLOP/s | % FMA peak | GB/s | % copy peak | CPU time | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, (sizes, exponent) in CASES.items():
            if args.only and args.only not in name:
                continue
            previous = None
            for m in (TINY_SIZES if args.tiny else sizes):
                estimate = None if previous is None else previous[1] * (m / previous[0]) ** exponent
                gpu, flop, byte, cpu = bench_size(name, m, dtype, args.repeats, args.cpu_budget, estimate)
                if cpu is not None:
                    previous = (m, cpu)
                row = (f"| {name} | {m} | {gpu * 1e3:.4g} ms | {flop / gpu / 1e9:.4g} | "
                       f"{100 * flop / gpu / peak_flops:.3g} | {byte / gpu / 1e9:.4g} | "
                       f"{100 * byte / gpu / peak_bytes:.3g} | "
                       + (f"{cpu * 1e3:.4g} ms | {cpu / gpu:.3g} |" if cpu is not None else "- | - |"))
                lines.append(row)
                print(row, flush=True)
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "GPU_RESULTS.md"), "a") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
