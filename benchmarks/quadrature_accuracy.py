"""Accuracy of the Gauss-Hermite quadrature method against the exact methods, per activation.

    python benchmarks/quadrature_accuracy.py

For 20 random small problems per activation (d = 10, m = 8, teacher k = 3, |a| up to 3,
biases ~ N(0, 1)), the relative error of the risk and the velocity (max |v_Q - v| / max |v|)
of ``method="quadrature"`` (order 32 and 100) against the closed form with biases (relu,
erf, normal_cdf) or the Hermite series (tanh, sigmoid, softplus, gelu; its own error bound is
printed, orders below the quadrature's error). Prints median and worst.
"""
import numpy as np

import meanfield as mf


def case(activation, seed):
    rng = np.random.default_rng(seed)
    d, m, k = 10, 8, 3
    T = np.zeros((k, d + 2))
    T[:, :d] = rng.normal(size=(k, d)) * rng.uniform(0.3, 3.0, size=(k, 1)) / np.sqrt(d)
    T[:, d] = rng.normal(size=k)
    T[:, d + 1] = rng.normal(size=k) / k
    model = mf.Model(d=d, activation=activation, bias=True)
    W = rng.normal(size=(m, d + 2))
    W[:, :d] *= rng.uniform(0.3, 3.0, size=(m, 1)) / np.sqrt(d)
    return model, mf.Teacher(T, activation), W


def main():
    print(f"{'activation':<11} {'reference':<12} {'order':>5} {'risk median':>12} {'risk worst':>11} "
          f"{'velocity median':>16} {'velocity worst':>15}")
    for activation in ("relu", "erf", "normal_cdf", "tanh", "sigmoid", "softplus", "gelu"):
        for order in (32, 100):
            risk_err, vel_err, bound = [], [], []
            for seed in range(20):
                model, teacher, W = case(activation, seed)
                exact = mf.PopulationProblem(model, teacher)
                quad = mf.PopulationProblem(model, teacher, method="quadrature", quadrature_order=order)
                e, q = exact.evaluate(W), quad.evaluate(W)
                risk_err.append(abs(q.value - e.value) / abs(e.value))
                vel_err.append(np.abs(q.velocity - e.velocity).max() / np.abs(e.velocity).max())
                if exact.method == "series":
                    bound.append(exact.last_error_bound / np.abs(e.velocity).max())
            ref = exact.method + (f" (<={max(bound):.0e})" if bound else "")
            print(f"{activation:<11} {ref:<12} {order:>5} {np.median(risk_err):>12.1e} {max(risk_err):>11.1e} "
                  f"{np.median(vel_err):>16.1e} {max(vel_err):>15.1e}", flush=True)


if __name__ == "__main__":
    main()
