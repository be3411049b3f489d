"""Accuracy of the finite-difference Hessian of meanfield.landscape (not a timing).

    NUMBA_NUM_THREADS=1 python benchmarks/landscape_fd_accuracy.py

Prints, on a quadratic objective with a known Hessian, the actual relative error of the dense
FD Hessian and the reported error bound; and the reported relative error at generic relu and
erf points and at the Safran-Shamir global minimum (where the relu kernel is only C^2).
"""
import numpy as np

import meanfield as mf
from meanfield import landscape


def main():
    for seed in range(3):
        model = mf.Model(d=4, activation="linear", train_readout=False)
        problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=4, k=2, activation="linear"))
        W = mf.initialize(model, 5, np.random.default_rng(seed))
        c = W[:, 5]
        exact = np.kron(np.outer(c, c) / 25, np.eye(4))
        H, error = landscape.hessian(problem, W, return_error=True)
        scale = np.linalg.norm(exact, 2)
        actual = np.linalg.norm(H - exact, 2) / scale
        print(f"quadratic seed {seed}: actual relative error {actual:.2e}, reported {error / scale:.2e} "
              f"({error / scale / actual:.1f} x actual)")
    for activation in ("relu", "erf"):
        model = mf.Model(d=6, activation=activation)
        problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=6, k=2, activation=activation))
        W = mf.initialize(model, 20, np.random.default_rng(1))
        H, error = landscape.hessian(problem, W, return_error=True)
        print(f"{activation} mean field, m = 20, d = 6, generic point: reported relative error "
              f"{error / np.linalg.norm(H, 2):.2e}")
    model = mf.Model(d=6, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=6, k=6, readout="sum"))
    H, error = landscape.hessian(problem, problem.teacher.W, return_error=True)
    print(f"Safran-Shamir k = n = 6 at the global minimum: reported relative error {error / np.linalg.norm(H, 2):.2e}")


if __name__ == "__main__":
    main()
