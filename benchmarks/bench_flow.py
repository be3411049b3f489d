"""Flow, Newton and Hessian benchmarks (side by side in one run; see benchmarks/FLOW_RESULTS.md).

1. Time to reach |grad F| <= 1e-9 from the same start with
   - gradient descent at several steps, as fractions of the largest stable step
     eta_max = 2 / (m lambda_max(H*)) at the minimum W* that the run converges to (H* the Hessian
     of F there; GD on W <- W - eta m grad F is linearly stable iff eta m lambda_max < 2), and at
     the step eta_opt = 2 / (m (lambda_min + lambda_max)) that is optimal for the local quadratic
     (both steps are chosen with hindsight, which favours gradient descent);
   - the adaptive flow (``meanfield.flow``: RK45, DOP853, LSODA with the analytic Jacobian);
   - flow until |grad F| <= switch, then ``meanfield.refine`` (Newton with a trust region).
   Problems: relu teacher-student with k = n = 7 (the Safran-Shamir setting: x ~ N(0, I_7),
   frozen readouts 1, orthonormal teacher; population risk in closed form), and a mean-field
   relu network with m = 1000 (d = 5, k = 3 teacher, trained readout; closed form).
2. Time for one full Hessian at p m = 500 and 2000 (p trainable coordinates per neuron)
   against ``torch.autograd.functional.hessian`` of the same objective written in torch:
   the closed-form relu population risk (d = 9, trained readout: p = 10) and the empirical
   risk of a tanh network with biases on N = 1000 samples (d = 9: p = 11).

Run: ``NUMBA_NUM_THREADS=1 python benchmarks/bench_flow.py`` (torch is the ``bench`` extra; both
sides run on one thread). ``--quick`` runs smaller budgets.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np

import meanfield as mf
from meanfield import landscape

TARGET = 1e-9


# -- time to a gradient norm ------------------------------------------------------------------------

def grad_norm(problem, W) -> float:
    return problem.evaluate(W).grad_norm


def time_descent(problem, W0, eta, budget):
    """Gradient descent until |grad F| <= TARGET; (seconds, steps, final |grad F|, status)."""
    integrator = mf.gradient_descent(problem, eta)
    state = integrator.init(W0)
    start = time.perf_counter()
    m = W0.shape[0]
    while True:
        integrator.step(state)
        norm = float(np.linalg.norm(state.scratch["velocity"])) / m  # at the start of this step
        if not math.isfinite(norm) or norm > 1e6:
            return time.perf_counter() - start, state.step, norm, "diverged"
        if norm <= TARGET:
            return time.perf_counter() - start, state.step - 1, norm, "reached"
        if state.step % 100 == 0 and time.perf_counter() - start > budget:
            return time.perf_counter() - start, state.step, norm, "budget"


def _flow_until(problem, integrator, state, target, budget, start, t_bound=1e7):
    """Advance the flow over geometric times until |grad F| <= target (or the budget)."""
    t = max(state.t, 0.05)
    while True:
        t = t * 1.3
        integrator.advance(state, t, t_bound)
        norm = grad_norm(problem, state.W)
        elapsed = time.perf_counter() - start
        if not math.isfinite(state.value):
            return elapsed, norm, "failed: " + state.info.get("message", "")
        if norm <= target:
            return elapsed, norm, "reached"
        if elapsed > budget or t >= t_bound:
            return elapsed, norm, "budget"


def time_flow(problem, W0, method, budget, rtol=1e-8, atol=1e-12):
    integrator = mf.flow(problem, method, rtol=rtol, atol=atol)
    state = integrator.init(W0)
    start = time.perf_counter()
    seconds, norm, status = _flow_until(problem, integrator, state, TARGET, budget, start)
    return seconds, state.info["nfev"], norm, status, state


def time_flow_newton(problem, W0, method, switch, refine_method, budget, rtol=1e-6, atol=1e-9):
    integrator = mf.flow(problem, method, rtol=rtol, atol=atol)
    state = integrator.init(W0)
    start = time.perf_counter()
    _, norm, status = _flow_until(problem, integrator, state, switch, budget, start)
    flow_seconds = time.perf_counter() - start
    result = mf.refine(problem, state.W, method=refine_method, grad_tol=TARGET, classify=False)
    seconds = time.perf_counter() - start
    return seconds, flow_seconds, state.info["nfev"], result


def spectrum(problem, W):
    s = landscape.spectrum_extremes(problem, W)
    return s.lambda_min, s.lambda_max


def descent_table(name, problem, W0, budget, fractions, flow_methods, newton):
    print(f"\n## {name}")
    m = W0.shape[0]
    n_var = m * int(problem.model.trainable.sum())
    print(f"m = {m}, n_var = {n_var}, F(W0) = {problem.risk(W0):.4e}, |grad F(W0)| = {grad_norm(problem, W0):.3e}")
    rows = []
    W_star = None
    # flow + Newton first: its end point gives the spectrum that sets the GD steps
    for method, switch, refine_method in newton:
        seconds, flow_seconds, nfev, result = time_flow_newton(problem, W0, method, switch, refine_method, budget)
        kind = landscape.classify(problem, result.W, grad_tol=TARGET, risk_threshold=1e-6).kind
        rows.append((f"flow {method} (rtol 1e-6) to {switch:g} + {result.method}", seconds, result.grad_norm,
                     f"flow {flow_seconds:.2f} s ({nfev} evals), {result.iterations} Newton/TR iterations, "
                     f"{result.n_hessians} Hessians; end point {kind}, F = {result.risk:.3e}"))
        if W_star is None:  # the first (most conservative) variant sets the reference minimum
            W_star = result.W
    low, high = spectrum(problem, W_star)
    eta_max = 2.0 / (m * high)
    eta_opt = 2.0 / (m * (low + high)) if low > 0 else eta_max / 2
    print(f"Hessian at the end point: lambda_min = {low:.4e}, lambda_max = {high:.4e} "
          f"(condition {high / low:.3g}); eta_max = 2/(m lambda_max) = {eta_max:.4g}, "
          f"eta_opt = 2/(m (lambda_min + lambda_max)) = {eta_opt:.4g}")
    for method in flow_methods:
        seconds, nfev, norm, status, state = time_flow(problem, W0, method, budget)
        rows.append((f"flow {method} (rtol 1e-8, atol 1e-12)", seconds, norm,
                     f"{status}, {nfev} evals, {state.info['njev']} Jacobians, t = {state.t:.4g}"))
    steps = [(f"{f:g} eta_max", f * eta_max) for f in fractions] + [("eta_opt", eta_opt)]
    best = None
    for label, eta in steps:
        seconds, n_steps, norm, status = time_descent(problem, W0, eta, budget)
        rows.append((f"gradient descent eta = {eta:.4g} ({label})", seconds, norm, f"{status}, {n_steps} steps"))
        if status == "reached" and (best is None or seconds < best[1]):
            best = (label, seconds)
    print("\n| method | seconds | final grad norm | notes |\n|---|---|---|---|")
    for label, seconds, norm, notes in rows:
        print(f"| {label} | {seconds:.3f} | {norm:.2e} | {notes} |")
    return rows, best


def budget_table(name, problem, W0, budget, fractions, flow_budget, refine_iterations):
    """The large case: every method gets the same wall-time budget; what |grad F| each reaches."""
    print(f"\n## {name}")
    m = W0.shape[0]
    d = problem.model.d
    n_var = m * int(problem.model.trainable.sum())
    print(f"m = {m}, n_var = {n_var}, F(W0) = {problem.risk(W0):.4e}, |grad F(W0)| = {grad_norm(problem, W0):.3e}, "
          f"budget {budget:g} s per method")
    rows = []
    integrator = mf.flow(problem, "RK45", rtol=1e-6, atol=1e-9)
    state = integrator.init(W0)
    start = time.perf_counter()
    # step the solver one step at a time, so that the budget holds even where it stalls
    integrator.advance(state, 1e-3, 1e7)
    solver, system, _, _ = state.scratch["flow"]
    status = "budget"
    while time.perf_counter() - start < flow_budget and solver.status == "running":
        solver.step()
        if solver.nfev % 50 < 7:
            system.unpack(solver.y, state.W, None)
            if grad_norm(problem, state.W) <= TARGET:
                status = "reached"
                break
    system.unpack(solver.y, state.W, None)
    state.t, state.info["nfev"] = solver.t, solver.nfev
    norm = grad_norm(problem, state.W)
    flow_seconds = time.perf_counter() - start
    norms = np.linalg.norm(state.W[:, :d], axis=1)
    rows.append(("flow RK45 (rtol 1e-6, atol 1e-9)", flow_seconds, norm,
                 f"{status}; reached t = {state.t:.3g} with {state.info['nfev']} evals; "
                 f"min_i |a_i| = {norms.min():.2e} (F = {problem.risk(state.W):.3e})"))
    result = mf.refine(problem, state.W, method="trust-krylov", grad_tol=TARGET, max_iter=refine_iterations,
                       newton_steps=0, classify=False, time_limit=budget - flow_seconds)
    seconds = time.perf_counter() - start
    rows.append(("the flow above + trust-krylov (to the budget)", seconds,
                 result.grad_norm, f"{result.iterations} iterations, {result.n_hessians} Hessian-vector products, "
                                   f"F = {result.risk:.3e}"))
    high = landscape.spectrum_extremes(problem, W0, method="lanczos", tol=1e-4).lambda_max
    eta_max = 2.0 / (m * high)
    print(f"lambda_max of the Hessian at W0 = {high:.4e}: eta_max = 2/(m lambda_max) = {eta_max:.4g}")
    for fraction in fractions:
        eta = fraction * eta_max
        seconds, n_steps, norm, status = time_descent(problem, W0, eta, budget)
        rows.append((f"gradient descent eta = {eta:.4g} ({fraction:g} eta_max at W0)", seconds, norm,
                     f"{status}, {n_steps} steps, t = {n_steps * eta:.3g}"))
    print("\n| method | seconds | final grad norm | notes |\n|---|---|---|---|")
    for label, seconds, norm, notes in rows:
        print(f"| {label} | {seconds:.3f} | {norm:.2e} | {notes} |")


def problem_k7():
    k = 7
    model = mf.Model(d=k, activation="relu", scaling="sum", train_readout=False)
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=k, k=k, readout="sum"))
    W0 = mf.initialize(model, k, np.random.default_rng(0))
    return problem, W0


def problem_m1000():
    d, k = 5, 3
    model = mf.Model(d=d, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=k))
    W0 = mf.initialize(model, 1000, np.random.default_rng(0))
    return problem, W0


# -- Hessian against torch ------------------------------------------------------------------------

def torch_relu_population(torch, d, teacher_W, s, alpha, label_second_moment):
    A_t = torch.tensor(teacher_W[:, :d])
    c_t = torch.tensor(teacher_W[:, d + 1])

    def kappa(A, B, same):
        na = A.norm(dim=1, keepdim=True)
        nb = B.norm(dim=1, keepdim=True)
        G = A @ B.T
        if same:  # the diagonal (theta = 0) has an infinite derivative of acos: keep it out
            eye = torch.eye(A.shape[0], dtype=torch.bool)
            cos = torch.where(eye, torch.zeros_like(G), G) / (na * nb.T)
        else:
            cos = G / (na * nb.T)
        cos = cos.clamp(-1.0, 1.0)
        theta = torch.acos(cos)
        value = na * nb.T * (torch.sqrt(1 - cos * cos) + (math.pi - theta) * cos) / (2 * math.pi)
        if same:
            value = torch.where(eye, 0.5 * (na * na).expand_as(G), value)
        return value

    def F(x):
        A = x[:, :d]
        c = x[:, d]
        return (label_second_moment / (2 * alpha**2) - (s / alpha) * (c @ kappa(A, A_t, False) @ c_t)
                + 0.5 * s * s * (c @ kappa(A, A, True) @ c))

    return F


def torch_tanh_data(torch, d, X, y, s):
    Xt = torch.tensor(X)
    yt = torch.tensor(y)

    def F(x):
        A = x[:, :d]
        b = x[:, d]
        c = x[:, d + 1]
        h = s * (torch.tanh(Xt @ A.T + b) @ c)
        return 0.5 * torch.mean((h - yt) ** 2)

    return F


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def hessian_table(sizes, repeat):
    import torch

    torch.set_num_threads(1)
    print("\n## Full Hessian: meanfield (analytic, compiled) against torch.autograd.functional.hessian")
    print(f"torch {torch.__version__}, 1 thread each; best of {repeat}\n")
    print("| objective | p m | meanfield (s) | torch (s) | torch vectorize=True (s) | speed-up | max rel. difference |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for target in sizes:
        # closed-form relu population risk, trained readout: p = d + 1 = 10
        d = 9
        m = target // (d + 1)
        model = mf.Model(d=d, activation="relu")
        problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=d, k=4))
        W = mf.initialize(model, m, np.random.default_rng(1))
        F = torch_relu_population(torch, d, problem.teacher.W, 1.0 / m, 1.0, problem.label_second_moment)
        results.append(_hessian_row(torch, f"relu population, closed form (d = {d}, m = {m})", problem, W, F,
                                    torch.tensor(W[:, [*range(d), d + 1]].copy()), repeat))
        # finite data, tanh with bias, trained readout: p = d + 2 = 11, N = 1000
        m = target // (d + 2)
        model = mf.Model(d=d, activation="tanh", bias=True)
        rng = np.random.default_rng(2)
        X = rng.standard_normal((1000, d))
        y = np.tanh(X[:, 0]) - 0.5 * np.tanh(X[:, 1])
        data = mf.FiniteDataProblem(model, X, y)
        W = mf.initialize(model, m, np.random.default_rng(3), mf.Init(b="gaussian"))
        F = torch_tanh_data(torch, d, X, y, 1.0 / m)
        results.append(_hessian_row(torch, f"tanh finite data, N = 1000 (d = {d}, m = {m})", data, W, F,
                                    torch.tensor(W.copy()), repeat))
    return results


def _hessian_row(torch, label, problem, W, F, x, repeat):
    """Time problem.hessian(W) against torch's Hessian of F at x (the trainable coordinates),
    print one table row, and return the speed-up over the faster torch variant."""
    problem.hessian(W)  # compile
    ours_t, H = best_of(lambda: problem.hessian(W), repeat)
    torch_t, Ht = best_of(lambda: torch.autograd.functional.hessian(F, x), 1)
    torch_v, _ = best_of(lambda: torch.autograd.functional.hessian(F, x, vectorize=True), 1)
    n_var = x.numel()
    Ht = Ht.reshape(n_var, n_var).numpy()
    diff = np.abs(H - Ht).max() / np.abs(Ht).max()
    best_torch = min(torch_t, torch_v)
    print(f"| {label} | {n_var} | {ours_t:.4f} | {torch_t:.3f} | {torch_v:.3f} | {best_torch / ours_t:.0f}x | "
          f"{diff:.1e} |")
    return best_torch / ours_t

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-hessian", action="store_true")
    parser.add_argument("--skip-descent", action="store_true")
    args = parser.parse_args()
    import numba

    print(f"# bench_flow.py ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); {platform.processor() or 'cpu'}, "
          f"numba threads {numba.get_num_threads()}")
    budget = 20.0 if args.quick else 90.0
    if not args.skip_hessian:
        hessian_table([500, 2000], 1 if args.quick else 3)
    if not args.skip_descent:
        problem, W0 = problem_k7()
        descent_table("relu teacher-student, k = n = 7 (Safran-Shamir), closed form", problem, W0, budget,
                      (0.5, 0.9, 0.99), ("RK45", "DOP853", "LSODA"),
                      [("LSODA", 1e-3, "trust-exact"), ("RK45", 1e-3, "trust-exact"),
                       ("LSODA", 1e-1, "trust-exact")])
        problem, W0 = problem_m1000()
        budget_table("mean-field relu, m = 1000, d = 5, k = 3, closed form", problem, W0, budget,
                     (0.5, 1.0), budget / 2, 200)


if __name__ == "__main__":
    main()
