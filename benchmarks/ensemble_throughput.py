"""Census throughput: runs per minute on one core, ensembles against one run at a time.

The workload is the census of spurious minima at k = n = 10 (runs/census.toml's model:
relu, "sum" scaling, frozen readout, orthonormal teacher, population risk in closed form;
gradient descent for t = 20 at step 0.02, then the landscape stage: precise descent to
|grad F| <= 1e-9 and the Hessian's extreme eigenvalues), over ``--runs`` seeds.

Measured side by side in one invocation, each in its own process pinned to one core
(``taskset -c 0`` where it exists; NUMBA_NUM_THREADS = OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = 1),
process start included, after a warm-up that fills numba's cache:

- ``meanfield run FILE --quiet --ensemble-size 1`` (every run alone, as before ensembles);
- ``meanfield run FILE --quiet`` (ensembles of up to 128 runs, the default);
- the engine alone, no files: the same dynamics and descents, one at a time and as one
  ensemble (what the run files cost is the difference).

``--crossover`` times one evaluation of a network alone through the tiled kernels and
through the fused kernel, for m = k = d from 8 to 40 (``FUSED_MAX_PAIRS``).

    python benchmarks/ensemble_throughput.py --runs 1000 [--write]

1000 runs, the seeds of one row of a census: the process start (about a second: imports,
planning, numba's cache) is then a small part of the wall time, as it is in a real census.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "ENSEMBLE_RESULTS.md")

CENSUS = """
[model]
d = {k}
m = {n}
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
k = {k}
readout = "sum"
[dynamics]
integrator = "gradient_descent"
step = 0.02
t_max = 20.0
[record]
times = 2
particles = false
[landscape]
grad_tol = 1e-9
risk_threshold = 1e-6
step = 0.1
max_steps = 100000
[sweep]
"run.seed" = {{start = 0, stop = {runs}}}
"""

ONE_CORE_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1"}


def _pinned(command):
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + command


def timed_cli(file, out, extra):
    env = dict(os.environ, **ONE_CORE_ENV)
    command = _pinned([sys.executable, "-m", "meanfield", "run", file, "--out", out, "--quiet", *extra])
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


ENGINE = r"""
import json, sys, time
import numpy as np
from meanfield import sweep
from meanfield.engine._ensemble import PopulationEnsemble, run_ensemble
from meanfield.engine._integrators import INTEGRATORS
from meanfield.experiments._assembly import build
from meanfield.landscape._precise import descend_batch, descend_to_precision
import meanfield as mf

specs = sweep.plan(sys.argv[1])
mode = sys.argv[2]
experiments = [build(s.config) for s in specs]
dynamics = specs[0].config["dynamics"]
start = time.perf_counter()
if mode == "alone":
    for e in experiments:
        trajectory = mf.run(e.problem, e.integrator, e.W0, e.t_max, times=e.times)
        descend_to_precision(e.problem, trajectory.W, 1e-9, 0.1, 100000)
else:
    for first in range(0, len(experiments), 128):
        chunk = experiments[first:first + 128]
        m = chunk[0].W0.shape[0]
        ensemble = PopulationEnsemble([e.problem for e in chunk], m)
        integrator = INTEGRATORS[dynamics["integrator"]].build(ensemble, dynamics)
        results = run_ensemble(ensemble, integrator, np.stack([e.W0 for e in chunk]), chunk[0].t_max, chunk[0].times)
        descend_batch([e.problem for e in chunk], np.stack([r[2] for r in results]), 1e-9, 0.1, 100000)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def timed_engine(file, mode):
    env = dict(os.environ, **ONE_CORE_ENV)
    result = subprocess.run(_pinned([sys.executable, "-c", ENGINE, file, mode]), check=True, env=env,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


CROSSOVER = r"""
import json, time
import numpy as np
import meanfield as mf
from meanfield.engine import _problems
rows = []
rng = np.random.default_rng(0)
for m in (8, 12, 16, 20, 24, 28, 32, 40):
    model = mf.Model(d=m, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(m, m, readout="sum"), method="closed_form")
    W = np.zeros((m, m + 2)); W[:, :m] = rng.standard_normal((m, m)) / np.sqrt(m); W[:, -1] = 1
    times = {}
    for name, limit in (("tiled", -1), ("fused", 10**9)):
        _problems.FUSED_MAX_PAIRS = limit
        problem.evaluate(W)
        n = 3000
        start = time.perf_counter()
        for _ in range(n):
            problem.evaluate(W)
        times[name] = (time.perf_counter() - start) / n * 1e6
    rows.append({"m": m, "pairs": m * (m + 1) // 2 + m * m, **times})
print(json.dumps(rows))
"""


def crossover():
    env = dict(os.environ, **ONE_CORE_ENV)
    result = subprocess.run(_pinned([sys.executable, "-c", CROSSOVER]), check=True, env=env, capture_output=True,
                            text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="seeds (default 1000)")
    parser.add_argument("--k", type=int, default=10, help="teacher width k = d (default 10)")
    parser.add_argument("--n", type=int, default=None, help="student width (default k)")
    parser.add_argument("--crossover", action="store_true", help="also time the fused kernel against the tiles")
    parser.add_argument("--write", action="store_true", help=f"write {os.path.relpath(RESULTS)}")
    args = parser.parse_args(argv)
    n = args.k if args.n is None else args.n
    work = tempfile.mkdtemp(prefix="mf_ensemble_bench_")
    try:
        file = os.path.join(work, "census.toml")
        with open(file, "w") as handle:
            handle.write(CENSUS.format(k=args.k, n=n, runs=args.runs))
        warm = os.path.join(work, "warm.toml")
        with open(warm, "w") as handle:
            handle.write(CENSUS.format(k=args.k, n=n, runs=3))
        timed_cli(warm, os.path.join(work, "warm_a"), ["--ensemble-size", "1"])
        timed_cli(warm, os.path.join(work, "warm_b"), [])
        alone = timed_cli(file, os.path.join(work, "alone"), ["--ensemble-size", "1"])
        together = timed_cli(file, os.path.join(work, "together"), [])
        engine_alone = timed_engine(file, "alone")
        engine_together = timed_engine(file, "together")
        table = crossover() if args.crossover else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_min = lambda seconds: 60 * args.runs / seconds  # noqa: E731
    lines = [
        f"census k = {args.k}, n = {n}, {args.runs} runs, one core "
        f"({'taskset -c 0, ' if shutil.which('taskset') else ''}one numba thread), process start included:",
        "",
        "| path | wall time (s) | runs/min | ratio |",
        "|---|---:|---:|---:|",
        f"| `meanfield run --ensemble-size 1` (one at a time) | {alone:.1f} | {per_min(alone):.0f} | 1.0 |",
        f"| `meanfield run` (ensembles of 128) | {together:.1f} | {per_min(together):.0f} | {alone / together:.2f} |",
        f"| engine only, one at a time (no files) | {engine_alone:.1f} | {per_min(engine_alone):.0f} | "
        f"{alone / engine_alone:.2f} |",
        f"| engine only, ensembles (no files) | {engine_together:.1f} | {per_min(engine_together):.0f} | "
        f"{alone / engine_together:.2f} |",
    ]
    if table:
        lines += ["", "one evaluation of a network alone (m = k = d), microseconds:", "",
                  "| m | pairs | tiled | fused |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['m']} | {r['pairs']} | {r['tiled']:.1f} | {r['fused']:.1f} |" for r in table]
    print("\n".join(lines))
    if args.write:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        command = "python benchmarks/ensemble_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(RESULTS, "w") as handle:
            handle.write(f"# Ensemble throughput\n\nMeasured {stamp} on {machine} with\n\n    {command.strip()}\n\n")
            handle.write("\n".join(lines) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
