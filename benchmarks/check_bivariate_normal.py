"""Check the vectorised bivariate normal CDF of the population baselines against scipy.

    python benchmarks/check_bivariate_normal.py

``population_baselines.bvn_cdf`` (Genz's Drezner-Wesolowsky scheme, written for numpy, JAX and
PyTorch arrays) against ``scipy.stats.multivariate_normal.cdf`` (tolerances 1e-13) and against
``scipy.integrate.quad`` of phi(x) Phi((k - r x) / s) over x < h, at points in every |rho|
regime (the 6-, 12- and 20-point rules, the expansion about |rho| = 1, rho = +-1), one call per
regime so that each gets its own rule. Also the gradient of JAX's (autodiff) against the
analytic dPhi_2/dh = phi(h) Phi((k - rho h)/s) and dPhi_2/drho = phi_2. Not part of the suite.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import population_baselines as pb
from scipy import integrate, special, stats


def reference_quad(h, k, r):
    if abs(r) >= 1.0:
        return special.ndtr(min(h, k)) if r > 0 else max(0.0, special.ndtr(h) - special.ndtr(-k))
    s = math.sqrt(1 - r * r)
    f = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * special.ndtr((k - r * x) / s)  # noqa: E731
    return integrate.quad(f, -np.inf, h, epsabs=1e-15, epsrel=1e-13, limit=200)[0]


def reference_scipy(h, k, r):
    if abs(r) >= 1.0:
        return reference_quad(h, k, r)
    return float(stats.multivariate_normal.cdf([h, k], mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]],
                                               abseps=1e-13, releps=1e-13))


def main():
    rng = np.random.default_rng(0)
    ops = pb.numpy_ops()
    regimes = {"|r|<0.3": (0.0, 0.3), "0.3-0.75": (0.3, 0.75), "0.75-0.925": (0.75, 0.925),
               "0.925-1": (0.925, 0.99999)}
    worst = 0.0
    for name, (lo, hi) in regimes.items():
        n = 200
        r = rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
        h = rng.normal(0, 2, n)
        k = rng.normal(0, 2, n)
        h[:10] = k[:10]  # ties (h = k) as on the diagonal
        ours = pb.bvn_cdf(ops, h, k, r)
        e_sc = max(abs(ours[i] - reference_scipy(h[i], k[i], r[i])) for i in range(n))
        e_q = max(abs(ours[i] - reference_quad(h[i], k[i], r[i])) for i in range(n))
        worst = max(worst, e_sc, e_q)
        print(f"{name:12} max |error| vs scipy.stats {e_sc:.1e}, vs quad {e_q:.1e}")
    h = np.array([0.3, -1.0, 2.0, 0.5])
    k = np.array([0.1, 0.7, -2.0, 0.5])
    for rr in (1.0, -1.0):
        r = np.full(4, rr)
        ours = pb.bvn_cdf(ops, h, k, r)
        e = max(abs(ours[i] - reference_quad(h[i], k[i], r[i])) for i in range(4))
        worst = max(worst, e)
        print(f"rho = {rr:+.0f}     max |error| {e:.1e}")
    # mixed regimes in one call (the full where-branch)
    r = np.concatenate([rng.uniform(-0.99, 0.99, 300), [0.95, -0.97, 0.999]])
    h = rng.normal(0, 1.5, r.size)
    k = rng.normal(0, 1.5, r.size)
    ours = pb.bvn_cdf(ops, h, k, r)
    e = max(abs(ours[i] - reference_quad(h[i], k[i], r[i])) for i in range(r.size))
    worst = max(worst, e)
    print(f"mixed        max |error| vs quad {e:.1e}")
    try:
        import jax
    except ImportError:
        print("JAX absent: gradient check skipped")
    else:
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        jops = pb.jax_ops()
        for lo, hi in ((0.0, 0.3), (0.3, 0.75), (0.75, 0.925), (0.93, 0.99)):
            r = rng.uniform(lo, hi, 50) * rng.choice([-1.0, 1.0], 50)
            h = rng.normal(0, 1.5, 50)
            k = rng.normal(0, 1.5, 50)
            vj = pb.bvn_cdf(jops, jnp.asarray(h), jnp.asarray(k), jnp.asarray(r))
            gh, gr = jax.grad(lambda h, r: pb.bvn_cdf(jops, h, jnp.asarray(k), r).sum(), argnums=(0, 1))(
                jnp.asarray(h), jnp.asarray(r))
            s = np.sqrt(1 - r * r)
            dh = np.exp(-h * h / 2) / math.sqrt(2 * math.pi) * special.ndtr((k - r * h) / s)
            dr = np.exp(-(h * h - 2 * r * h * k + k * k) / (2 * s * s)) / (2 * math.pi * s)
            e_v = np.abs(np.asarray(vj) - pb.bvn_cdf(ops, h, k, r)).max()
            e_g = max(np.abs(np.asarray(gh) - dh).max(), np.abs(np.asarray(gr) - dr).max())
            worst = max(worst, e_v)
            print(f"JAX |r| in [{lo}, {hi}): value vs numpy {e_v:.1e}, autodiff gradient vs analytic {e_g:.1e}")
    print(f"worst value error {worst:.1e}")
    return 0 if worst < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
