"""What the flow integrator's restarts cost: right-hand-side evaluations of a run (which
restarts its solver at a record every ``RESTART_STEPS`` steps, so that checkpoints resume
bitwise) against one solver carried over the whole run, for each scipy method.

    python benchmarks/flow_restarts.py

Problem: relu teacher-student on the population risk, d = 8, k = 3, m = 64, t in [0, 20],
rtol 1e-8, atol 1e-10, records at 21 and 101 equally spaced times.
"""
import numpy as np

import meanfield as mf
from meanfield.engine._flow import RESTART_STEPS


def main():
    model = mf.Model(d=8, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=8, k=3))
    W0 = mf.initialize(model, m=64, rng=np.random.default_rng(0))
    print(f"restart every {RESTART_STEPS} solver steps")
    print(f"{'method':<8} {'records':>7} {'restarting':>10} {'one solver':>10} {'ratio':>6} {'max |dW|':>9}")
    for method in ("RK45", "DOP853", "RK23", "BDF", "Radau", "LSODA"):
        for records in (21, 101):
            integrator = mf.flow(problem, method, rtol=1e-8, atol=1e-10)
            times = mf.time_grid(20.0, records)
            restarting = mf.run(problem, integrator, W0, 20.0, times=times).final
            single = integrator.init(W0)
            for t in times[1:]:
                integrator.advance(single, float(t), 20.0)
            ratio = restarting.info["nfev"] / single.info["nfev"]
            print(f"{method:<8} {records:>7} {restarting.info['nfev']:>10} {single.info['nfev']:>10} {ratio:>6.2f} "
                  f"{np.abs(restarting.W - single.W).max():>9.1e}")


if __name__ == "__main__":
    main()
