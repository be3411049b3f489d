"""Cost of one evaluation of the tangent model against the network's, as a ratio (one run).

Both are O(N m d): the network does two BLAS products per tile (X_t A^T, G^T X_t), the
tangent model three (X_t A0^T, X_t (A - A0)^T, G^T X_t) plus the same elementwise work.

    NUMBA_NUM_THREADS=1 python benchmarks/tangent_vs_network.py [--repeat 20]

Prints, per size, the median seconds of ``problem.evaluate(W)`` for the network
(FiniteDataProblem) and its tangent model (TangentProblem), and their ratio.
"""
import argparse
import time

import numpy as np

import meanfield as mf

SIZES = [(10, 256, 500), (10, 512, 2000), (50, 1024, 4000)]  # (d, m, N)


def median_seconds(fn, repeat):
    fn()  # compile / warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'d':>4} {'m':>6} {'N':>6}  {'network s':>10}  {'tangent s':>10}  {'ratio':>6}")
    for d, m, n in SIZES:
        model = mf.Model(d, "relu")
        rng = np.random.default_rng(0)
        problem = mf.FiniteDataProblem.from_teacher(model, mf.Teacher.orthonormal(d, 3), n, rng)
        W0 = mf.initialize(model, m, rng)
        W = W0 + 0.01 * rng.standard_normal(W0.shape)
        tangent = mf.TangentProblem(problem, W0)
        out = np.empty_like(W)
        network_s = median_seconds(lambda: problem.evaluate(W, out=out), args.repeat)
        tangent_s = median_seconds(lambda: tangent.evaluate(W, out=out), args.repeat)
        print(f"{d:>4} {m:>6} {n:>6}  {network_s:>10.3e}  {tangent_s:>10.3e}  {tangent_s / network_s:>6.2f}")


if __name__ == "__main__":
    main()
