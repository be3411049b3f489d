"""Speed of the deep random network simulation: the compiled kernel (weights drawn on the fly
by a counter-based generator) against a numpy baseline (weights drawn by numpy's PCG64 and a
BLAS product per layer), same sizes, in one run, as ratios.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_deep_random.py [--width 1024 --depth 10 --pairs 4]
"""
import argparse
import math
import time

import numba
import numpy as np

from meanfield import kernels
from meanfield.kernels.deep_random import deep_random_forward
from meanfield.signal import input_pairs


def numpy_baseline(X0, depth, sigma_w, sigma_b, rng):
    N = X0.shape[0]
    y = X0
    q = [np.mean(X0**2, axis=0)]
    for _ in range(depth):
        W = rng.standard_normal((N, N))
        b = rng.standard_normal((N, 1))
        h = (sigma_w / math.sqrt(N)) * (W @ y) + sigma_b * b
        q.append(np.mean(h**2, axis=0))
        y = np.tanh(h)
    return np.array(q)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    N, L, P = args.width, args.depth, args.pairs
    X0 = np.ascontiguousarray(input_pairs(N, np.ones(P), np.linspace(0.1, 0.9, P), np.random.default_rng(0)))
    H, Y = np.empty_like(X0), np.empty_like(X0)
    q, cross = np.empty((L + 1, 2 * P)), np.empty((L + 1, P))
    code = kernels.ACTIVATION_CODES["tanh"]

    def kernel():
        deep_random_forward(X0, L, 1.5, 0.3, code, np.uint64(1), H, Y, q, cross)

    kernel()  # compile / load the cache
    rng = np.random.default_rng(0)
    results = {"numpy (PCG64 weights + BLAS)": best_of(lambda: numpy_baseline(X0, L, 1.5, 0.3, rng), args.repeats)}
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(threads)
        results[f"numba kernel, {threads} thread{'s' if threads > 1 else ''}"] = best_of(kernel, args.repeats)
    base = results["numpy (PCG64 weights + BLAS)"]
    print(f"N = {N}, depth = {L}, {2 * P} inputs; best of {args.repeats}")
    for name, seconds in results.items():
        print(f"{name:<32} {seconds * 1e3:9.1f} ms   {base / seconds:5.2f}x numpy")


if __name__ == "__main__":
    main()
