"""Command line: ``meanfield run`` (the quickstart teacher-student run) and ``meanfield info``."""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

from . import __version__
from ._integrators import gradient_descent
from ._model import DTYPES, Model, initialize
from ._problems import PopulationProblem
from ._run import run, time_grid
from ._teacher import Teacher


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def _positive_int(name, value):
    if value < 1:
        raise UsageError(f"--{name} must be an integer >= 1, got {value}")
    return value


def _positive_float(name, value):
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--{name} must be a finite number > 0, got {value}")
    return value


def quickstart(args) -> int:
    """Relu teacher-student on the population risk, gradient descent, risk printed along time."""
    d = _positive_int("dim", args.dim)
    k = _positive_int("teacher-width", args.teacher_width)
    if k > d:
        raise UsageError(f"--teacher-width must be <= --dim = {d} (orthonormal teacher), got {k}")
    m = _positive_int("width", args.width)
    t_max = _positive_float("time", args.time)
    step = _positive_float("step", args.step)
    n_records = _positive_int("records", args.records)
    if t_max < step:
        raise UsageError(f"--time must be at least one --step ({step}), got {t_max}")

    model = Model(d, "relu", dtype=args.dtype)
    teacher = Teacher.orthonormal(d, k)
    problem = PopulationProblem(model, teacher)
    W0 = initialize(model, m, np.random.default_rng(args.seed))
    print(f"meanfield {__version__}: relu teacher-student, d = {d}, teacher k = {k} orthonormal "
          f"directions, student m = {m}, alpha = 1, {args.dtype}")
    print(f"{problem.describe()}; gradient descent, step {step:g}, until t = {t_max:g}")
    print(f"{'t':>10}  {'risk':>12}  {'risk / risk(0)':>14}  {'|grad F|':>10}")

    class Printer:
        def observe(self, state, evaluation):
            if not hasattr(self, "first"):
                self.first = evaluation.value
            grad = np.linalg.norm(evaluation.velocity) / state.W.shape[0]
            print(f"{state.t:10.4g}  {evaluation.value:12.5e}  {evaluation.value / self.first:14.3e}  {grad:10.3e}",
                  flush=True)

        def close(self, state, status, message):
            pass

    start = time.perf_counter()
    times = time_grid(t_max, n_records + 1, spacing="log", t_min=max(step, t_max / 1000))
    trajectory = run(problem, gradient_descent(problem, step), W0, t_max, times=times, observers=[Printer()])
    elapsed = time.perf_counter() - start
    print(f"{trajectory.status}: {trajectory.message} ({elapsed:.1f} s)")
    return 0 if trajectory.status == "complete" else 1


def info(args) -> int:
    """Versions and threading, for bug reports and cluster set-up."""
    import numba
    import scipy

    print(f"meanfield {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}")
    for name in ("ot", "h5py"):
        try:
            module = __import__(name)
            print(f"{'pot' if name == 'ot' else name} {module.__version__}")
        except ImportError:
            print(f"{name}: not installed")
    print(f"numba threads: {numba.get_num_threads()} (NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'unset')}), cpus: {os.cpu_count()}")
    print(f"numba cache dir: {os.environ.get('NUMBA_CACHE_DIR', 'next to the kernels (default)')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meanfield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the quickstart relu teacher-student simulation and print its risk")
    p.add_argument("--dim", type=int, default=20, help="input dimension d (default 20)")
    p.add_argument("--teacher-width", type=int, default=5, help="teacher neurons k (default 5)")
    p.add_argument("--width", type=int, default=256, help="student width m (default 256)")
    p.add_argument("--time", type=float, default=1000.0, help="final continuous time t (default 1000)")
    p.add_argument("--step", type=float, default=1.0, help="time step eta (default 1)")
    p.add_argument("--records", type=int, default=12, help="log-spaced recording times (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial particles (default 0)")
    p.add_argument("--dtype", choices=DTYPES, default="float64")
    p.set_defaults(func=quickstart)
    i = sub.add_parser("info", help="versions, threads and cache settings")
    i.set_defaults(func=info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"meanfield {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
