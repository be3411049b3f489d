"""Experiment files of the other mean-field objects: ``[experiment] kind = ...``.

A TOML file with a top-level ``[experiment]`` table is dispatched here by ``meanfield run``
(the two-layer files have no such table). Kinds:

``signal_propagation``
    [network] activation ("tanh"), sigma_w2 (2.5), sigma_b2 (0.1): the simulated point;
    [phase] sigma_w2_min (0.5), sigma_w2_max (4.0), sigma_w2_points (36), sigma_b2_min (0.0),
    sigma_b2_max (0.3), sigma_b2_points (31), method ("auto"): the xi_c grid and critical line;
    [maps] q_max (4.0), points (101): the variance and correlation maps tabulated;
    [simulation] widths ([64, 256, 1024]), depth (20), networks (8), q0 (1.0),
    c0 ([0.1, 0.5, 0.9, 0.99]), seed (0).
``deep_linear``
    [network] K (3); [target] eigenvalues ([-0.5, 0.0, 0.5, 1.0, 2.0]), seed (0);
    [init] w0 (0.3, or one value per layer); [dynamics] integrator ("gradient_descent" |
    "heavy_ball"), step (0.01), momentum (0.9), t_max (15.0); [record] times (151).

Each experiment writes one HDF5 file ``<out>/<id>.h5`` (id: the first 16 hex digits of the
SHA-256 of the resolved config), with root attributes ``config`` (JSON), ``config_sha256``,
``run_id``, ``experiment`` (the kind), ``status``, ``versions``, ``git_revision``,
``start_time``, ``end_time``; ``meanfield report DIR`` draws its figures.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from ..engine._integrators import INTEGRATORS
from ..engine._problems import CLOSED_FORM_ACTIVATIONS
from ..io._store import (
    CorruptRunFile,
    _now,
    finished_run_files,
    move_aside,
    open_run,
    remove_abandoned,
    write_experiment_file,
)
from ._config import ConfigError, Key, canonical_json, fill_section, jsonable, load_document, parse_override

# The deep-linear experiment takes the deterministic fixed-step integrators (their entries read
# only step and momentum from [dynamics]).
DETERMINISTIC = tuple(name for name, entry in INTEGRATORS.items() if entry.deterministic)
KINDS = ("signal_propagation", "deep_linear")


class ListKey:
    """A non-empty list of numbers in a range (optionally of a given length)."""

    def __init__(self, default, integer=False, minimum=None, maximum=None, strict_minimum=False):
        self.default, self.integer = default, integer
        self.minimum, self.maximum, self.strict_minimum = minimum, maximum, strict_minimum

    def allowed(self) -> str:
        text = f"a non-empty list of {'integers' if self.integer else 'numbers'}"
        if self.minimum is not None:
            text += f" {'>' if self.strict_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" and <= {self.maximum:g}"
        return text

    def default_value(self) -> list:
        """A fresh copy of the default list."""
        return list(self.default)

    def check(self, file, section, name, value, via=None):
        """The list, checked and converted (one number stands for a list of one)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        shown = json.dumps(value) if jsonable(value) else repr(value)
        bad = ConfigError(f"{file}: [{section}] {name} = {shown}: must be {self.allowed()}")
        if not isinstance(value, list) or not value:
            raise bad
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
                raise bad
            if not math.isfinite(v):
                raise bad
            if self.minimum is not None and (v < self.minimum or self.strict_minimum and v <= self.minimum):
                raise bad
            if self.maximum is not None and v > self.maximum:
                raise bad
            out.append(int(v) if self.integer else float(v))
        return out


_ACTIVATIONS = ("relu", "sigmoid", "tanh", "erf", "softplus", "linear")

SCHEMAS = {
    "signal_propagation": {
        "experiment": {"kind": Key("str", choices=KINDS)},
        "network": {
            "activation": Key("str", "tanh", choices=_ACTIVATIONS),
            "sigma_w2": Key("float", 2.5, minimum=0, strict_minimum=True),
            "sigma_b2": Key("float", 0.1, minimum=0),
        },
        "phase": {
            "sigma_w2_min": Key("float", 0.5, minimum=0, strict_minimum=True),
            "sigma_w2_max": Key("float", 4.0, minimum=0, strict_minimum=True),
            "sigma_w2_points": Key("int", 36, minimum=2, maximum=400),
            "sigma_b2_min": Key("float", 0.0, minimum=0),
            "sigma_b2_max": Key("float", 0.3, minimum=0, strict_minimum=True),
            "sigma_b2_points": Key("int", 31, minimum=2, maximum=400),
            "method": Key("str", "auto", choices=("auto", "closed_form", "quadrature")),
        },
        "maps": {
            "q_max": Key("float", 4.0, minimum=0, strict_minimum=True),
            "points": Key("int", 101, minimum=2, maximum=10000),
        },
        "simulation": {
            "widths": ListKey([64, 256, 1024], integer=True, minimum=2, maximum=65536),
            "depth": Key("int", 20, minimum=1, maximum=1000),
            "networks": Key("int", 8, minimum=2, maximum=10000),
            "q0": Key("float", 1.0, minimum=0, strict_minimum=True),
            "c0": ListKey([0.1, 0.5, 0.9, 0.99], minimum=-1.0, maximum=1.0),
            "seed": Key("int", 0, minimum=0),
        },
    },
    "deep_linear": {
        "experiment": {"kind": Key("str", choices=KINDS)},
        "network": {"K": Key("int", 3, minimum=1, maximum=100)},
        "target": {
            "eigenvalues": ListKey([-0.5, 0.0, 0.5, 1.0, 2.0]),
            "seed": Key("int", 0, minimum=0),
        },
        "init": {"w0": ListKey([0.3], minimum=0, strict_minimum=True)},
        "dynamics": {
            "integrator": Key("str", "gradient_descent", choices=DETERMINISTIC),
            "step": Key("float", 0.01, minimum=0, strict_minimum=True),
            "momentum": Key("float", 0.9, minimum=0, maximum=1, strict_maximum=True),
            "t_max": Key("float", 15.0, minimum=0, strict_minimum=True),
        },
        "record": {"times": Key("int", 151, minimum=2, maximum=100000)},
    },
}


def experiment_kind(path) -> str | None:
    """The ``[experiment] kind`` of a file, or None for a two-layer experiment file.

    Raises
    ------
    ConfigError
        An unreadable file, or an ``[experiment]`` table without a known kind.
    """
    file = os.fspath(path)
    document = load_document(file)
    if "experiment" not in document:
        return None
    table = document["experiment"]
    kind = table.get("kind") if isinstance(table, dict) else None
    if kind not in KINDS:
        shown = json.dumps(kind) if kind is not None and jsonable(kind) else "missing"
        raise ConfigError(f"{file}: [experiment] kind = {shown}: must be one of "
                          + ", ".join(json.dumps(k) for k in KINDS))
    return kind


def resolve(path, overrides=()) -> dict:
    """The validated, fully resolved config of an experiment file (defaults filled in).

    Parameters
    ----------
    path : path
    overrides : sequence of str
        ``section.key=value`` (``--set``; the value is read as TOML).

    Raises
    ------
    ConfigError
        Naming the file, the key and what is allowed.
    """
    file = os.fspath(path)
    kind = experiment_kind(file)
    if kind is None:
        raise ConfigError(f"{file}: no [experiment] table; allowed kinds: " + ", ".join(KINDS))
    schema = SCHEMAS[kind]
    document = copy.deepcopy(load_document(file))
    for text in overrides:
        section, name, value, _ = parse_override(file, text, schema)
        document.setdefault(section, {})[name] = value
    for section, content in document.items():
        if section not in schema or not isinstance(content, dict):
            raise ConfigError(f"{file}: unknown section [{section}] for kind {json.dumps(kind)}; allowed sections: "
                              + ", ".join(f"[{s}]" for s in schema))
        for name in content:
            if name not in schema[section]:
                raise ConfigError(f"{file}: [{section}] unknown key {name!r}; allowed: {', '.join(schema[section])}")
    config = {section: fill_section(file, section, keys, document.get(section, {}))
              for section, keys in schema.items()}

    def fail(section, name, text):
        raise ConfigError(f"{file}: [{section}] {name}: {text}")

    if kind == "signal_propagation":
        phase = config["phase"]
        if phase["sigma_w2_min"] >= phase["sigma_w2_max"]:
            fail("phase", "sigma_w2_max", f"must be > sigma_w2_min = {phase['sigma_w2_min']:g}")
        if phase["sigma_b2_min"] >= phase["sigma_b2_max"]:
            fail("phase", "sigma_b2_max", f"must be > sigma_b2_min = {phase['sigma_b2_min']:g}")
        if phase["method"] == "closed_form" and config["network"]["activation"] not in CLOSED_FORM_ACTIVATIONS:
            fail("phase", "method", '"closed_form" exists for relu, erf and linear only; use "auto" or "quadrature"')
        config["simulation"]["widths"] = sorted(set(config["simulation"]["widths"]))
    else:
        w0 = config["init"]["w0"]
        K = config["network"]["K"]
        if len(w0) not in (1, K):
            fail("init", "w0", f"must be one number (balanced) or K = {K} numbers, got {len(w0)}")
        dyn = config["dynamics"]
        dt = INTEGRATORS[dyn["integrator"]].time_step(dyn)
        if dyn["t_max"] < dt:
            fail("dynamics", "t_max", f"must be at least one step of dt = {dt:g}")
    return config


def identity(config: dict) -> tuple[str, str]:
    """(run id, sha256) of a resolved config."""
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()
    return digest[:16], digest


# --------------------------------------------------------------------------- computations
def compute_signal_propagation(config: dict) -> dict:
    """Every array of a signal-propagation experiment, by HDF5 path."""
    from .. import signal as sp

    net, phase, maps, sim = config["network"], config["phase"], config["maps"], config["simulation"]
    act, sw2, sb2, method = net["activation"], net["sigma_w2"], net["sigma_b2"], phase["method"]
    fp = sp.fixed_points(sw2, sb2, act, method)
    q = np.linspace(0.0, maps["q_max"], maps["points"])
    c = np.linspace(-1.0, 1.0, maps["points"])
    q_star = fp.q_star if math.isfinite(fp.q_star) and fp.q_star > 0 else 1.0
    grid_w = np.linspace(phase["sigma_w2_min"], phase["sigma_w2_max"], phase["sigma_w2_points"])
    grid_b = np.linspace(phase["sigma_b2_min"], phase["sigma_b2_max"], phase["sigma_b2_points"])
    xi_c, chi = sp.xi_c_grid(grid_w, grid_b, act, method)
    curve = sp.critical_curve(grid_b, act, bracket=(min(1e-2, grid_w[0]), max(1e2, grid_w[-1])), method=method)
    P = len(sim["c0"])
    q0 = np.full(P, sim["q0"])
    c0 = np.array(sim["c0"])
    theory_q, theory_c = sp.propagate(q0, c0, sim["depth"], sw2, sb2, act, method)
    sims = [sp.simulate(q0, c0, sim["depth"], sw2, sb2, act, N, sim["networks"], sim["seed"]) for N in sim["widths"]]
    data = {
        "maps/q": q, "maps/variance_map": sp.variance_map(q, sw2, sb2, act, method),
        "maps/c": c, "maps/correlation_map": sp.correlation_map(c, q_star, sw2, sb2, act, method),
        "phase/grid_sigma_w2": grid_w, "phase/grid_sigma_b2": grid_b, "phase/xi_c": xi_c, "phase/chi_1": chi,
        "phase/curve_sigma_b2": grid_b, "phase/curve_sigma_w2": curve,
        "simulation/widths": np.array(sim["widths"]), "simulation/q0": q0, "simulation/c0": c0,
        "simulation/theory_q": theory_q, "simulation/theory_c": theory_c,
        "simulation/q": np.stack([s.q for s in sims]), "simulation/c": np.stack([s.c for s in sims]),
    }
    attrs = {"fixed_point": {k: getattr(fp, k) for k in ("q_star", "c_star", "chi_1", "chi_c", "slope_q", "xi_q",
                                                         "xi_c")}}
    return {"data": data, "attrs": attrs}


def compute_deep_linear(config: dict) -> dict:
    """Every array of a deep-linear experiment, by HDF5 path."""
    from .. import linear
    from ..engine._run import run, time_grid

    K = config["network"]["K"]
    eigenvalues = np.array(config["target"]["eigenvalues"])
    R = linear.symmetric_target(eigenvalues, np.random.default_rng(config["target"]["seed"]))
    problem = linear.DeepLinearProblem(R, K)
    w0 = np.broadcast_to(np.array(config["init"]["w0"]), (K,)).copy()
    W0 = linear.identity_init(problem.model, w0)
    dyn = config["dynamics"]
    scheme = INTEGRATORS[dyn["integrator"]].build(problem, dyn)
    traj = run(problem, scheme, W0, dyn["t_max"], times=time_grid(dyn["t_max"], config["record"]["times"]),
               keep_particles=True)
    matrices = np.array([problem.model.unpack(f) for f in traj.particles])  # (T, K, n, n)
    r, w_theory, products_theory = linear.commuting_theory(R, w0, traj.times, eigenvalues)
    products = np.array([linear.product(m) for m in matrices])
    modes = np.array([linear.mode_values([P], R)[0] for P in products])
    C0 = linear.conserved(matrices[0]) if K > 1 else np.zeros((0,) + R.shape)
    drift = np.array([np.abs(linear.conserved(m) - C0).max() if K > 1 else 0.0 for m in matrices])
    data = {
        "target/matrix": R, "target/eigenvalues": r,
        "trajectory/time": traj.times, "trajectory/step": traj.steps, "trajectory/matrices": matrices,
        "trajectory/risk": traj.risk, "trajectory/grad_norm": traj.grad_norm,
        "trajectory/modes": modes, "trajectory/singular_values": np.linalg.svd(products, compute_uv=False),
        "trajectory/conserved_drift": drift,
        "theory/w": w_theory, "theory/products": products_theory,
    }
    return {"data": data, "attrs": {"status_message": {"message": traj.message, "status": traj.status}}}


COMPUTE = {"signal_propagation": compute_signal_propagation, "deep_linear": compute_deep_linear}


def write(path_final, kind: str, config: dict, result: dict, start_time: str) -> str:
    """Write the experiment file (:func:`meanfield.io.write_experiment_file`: under a temporary
    name, renamed when complete)."""
    run_id, sha = identity(config)
    attrs = {"config": canonical_json(config), "config_sha256": sha, "run_id": run_id, "experiment": kind,
             "status": "complete", "message": "", "start_time": start_time}
    return write_experiment_file(path_final, attrs, result["data"], result["attrs"])


def run_file(path, out_dir, overrides=(), quiet: bool = False) -> dict:
    """Validate, compute and store one experiment file; skipped when its file is complete.

    Returns
    -------
    dict
        id, kind, path, status (``complete`` or ``skipped``), seconds.
    """
    config = resolve(path, overrides)
    kind = config["experiment"]["kind"]
    run_id, sha = identity(config)
    os.makedirs(out_dir, exist_ok=True)
    remove_abandoned(out_dir)
    final = os.path.join(os.fspath(out_dir), f"{run_id}.h5")
    if os.path.exists(final):
        try:
            with open_run(final, swmr=False) as f:
                if f.attrs.get("config_sha256") == sha and f.attrs.get("status") == "complete":
                    return {"id": run_id, "kind": kind, "path": final, "status": "skipped", "seconds": 0.0}
        except CorruptRunFile as error:
            move_aside(final, error.reason)
    start, start_time = time.perf_counter(), _now()
    result = COMPUTE[kind](config)
    write(final, kind, config, result, start_time)
    return {"id": run_id, "kind": kind, "path": final, "status": "complete", "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- report
def _read(f, name):
    return f[name][()]


def summary(path) -> str:
    """A few lines on an experiment file: fixed points and errors, or the final modes."""
    with open_run(path, swmr=False) as f:
        kind = f.attrs["experiment"]
        config = json.loads(f.attrs["config"])
        if kind == "signal_propagation":
            fp = dict(f["fixed_point"].attrs)
            lines = [f"{config['network']['activation']} sigma_w2 = {config['network']['sigma_w2']:g}, "
                     f"sigma_b2 = {config['network']['sigma_b2']:g}: q* = {fp['q_star']:.6g}, c* = {fp['c_star']:.6g}, "
                     f"chi_1 = {fp['chi_1']:.6g}, xi_q = {fp['xi_q']:.4g}, xi_c = {fp['xi_c']:.4g}"]
            tq, tc = _read(f, "simulation/theory_q"), _read(f, "simulation/theory_c")
            lines.append("  rms over layers >= 1 and pairs of the error of the mean over networks, and of the error "
                         "in standard errors (z; about 1 when the error is statistical):")
            for width, q, c in zip(_read(f, "simulation/widths"), _read(f, "simulation/q"), _read(f, "simulation/c")):
                per_network = q.mean(axis=3)
                n = q.shape[0]
                dq = (per_network.mean(axis=0)[1:] - tq[1:]) / tq[1:]
                zq = (per_network.mean(axis=0)[1:] - tq[1:]) / (per_network.std(axis=0, ddof=1)[1:] / math.sqrt(n))
                dc = c.mean(axis=0)[1:] - tc[1:]
                zc = dc / (c.std(axis=0, ddof=1)[1:] / math.sqrt(n))
                lines.append(f"  N = {width:>5}: (q_l - theory) / q_l {np.sqrt(np.mean(dq**2)):.2e} "
                             f"(z {np.sqrt(np.mean(zq**2)):.2f}), "
                             f"c_l - theory {np.sqrt(np.mean(dc**2)):.2e} (z {np.sqrt(np.mean(zc**2)):.2f})")
            return "\n".join(lines)
        modes, theory = _read(f, "trajectory/modes"), _read(f, "theory/products")
        drift = _read(f, "trajectory/conserved_drift")
        return (f"deep linear K = {config['network']['K']}: max |mode - theory| = {np.abs(modes - theory).max():.3e}, "
                f"final modes {np.round(modes[-1], 4).tolist()} for r = {_read(f, 'target/eigenvalues').tolist()}, "
                f"conserved drift {drift.max():.2e}")


def report(out_dir) -> list[str]:
    """Draw the figures of every experiment file in ``out_dir``; returns the PNG paths.

    signal_propagation: ``<id>_phase_diagram.png`` and ``<id>_theory_vs_simulation.png``;
    deep_linear: ``<id>_modes.png``.
    """
    from ..linear import plot_modes
    from ..signal import plot_phase_diagram, plot_theory_vs_simulation

    written = []
    for path in finished_run_files(out_dir):
        name = os.path.basename(path)
        try:
            with open_run(path, swmr=False) as f:
                kind = f.attrs.get("experiment")
                if kind not in KINDS:
                    continue
                config = json.loads(f.attrs["config"])
                stem = os.path.join(os.fspath(out_dir), name[:-3])
                if kind == "signal_propagation":
                    net = config["network"]
                    figure = plot_phase_diagram(_read(f, "phase/grid_sigma_w2"), _read(f, "phase/grid_sigma_b2"),
                                                _read(f, "phase/xi_c"), _read(f, "phase/curve_sigma_b2"),
                                                _read(f, "phase/curve_sigma_w2"), net["activation"],
                                                point=(net["sigma_w2"], net["sigma_b2"]))
                    figure.savefig(f"{stem}_phase_diagram.png")
                    written.append(f"{stem}_phase_diagram.png")
                    q, c = _read(f, "simulation/q"), _read(f, "simulation/c")
                    n = q.shape[1]
                    per_net_q = q.mean(axis=4)
                    figure = plot_theory_vs_simulation(
                        _read(f, "simulation/theory_q"), _read(f, "simulation/theory_c"),
                        _read(f, "simulation/widths").tolist(), per_net_q.mean(axis=1), c.mean(axis=1),
                        _read(f, "simulation/c0"), per_net_q.std(axis=1, ddof=1) / math.sqrt(n),
                        c.std(axis=1, ddof=1) / math.sqrt(n),
                        title=f"{net['activation']}, sigma_w^2 = {net['sigma_w2']:g}, sigma_b^2 = {net['sigma_b2']:g}, "
                              f"{n} networks per width")
                    figure.savefig(f"{stem}_theory_vs_simulation.png")
                    written.append(f"{stem}_theory_vs_simulation.png")
                else:
                    figure = plot_modes(_read(f, "trajectory/time"), _read(f, "trajectory/modes"),
                                        _read(f, "theory/products"), _read(f, "target/eigenvalues"))
                    figure.savefig(f"{stem}_modes.png")
                    written.append(f"{stem}_modes.png")
        except OSError as error:  # a damaged file is named, and the others are still drawn
            print(f"meanfield report: {error if isinstance(error, CorruptRunFile) else f'{path}: {error}'}",
                  file=sys.stderr)
            continue
    return written


def run_command(args) -> int:
    """``meanfield run FILE`` for a file with an ``[experiment]`` table."""
    if args.slurm or args.task_count != 1 or args.task_index != 0:
        raise ConfigError(f"{args.file}: [experiment] files are one computation: --slurm, --task-index and "
                          "--task-count do not apply")
    config = resolve(args.file, args.set)  # everything validated before any output exists
    out = args.out or os.path.join("out", os.path.splitext(os.path.basename(args.file))[0])
    if not args.quiet:
        print(f"meanfield: {config['experiment']['kind']} experiment of {args.file} -> {out}/", flush=True)
    result = run_file(args.file, out, args.set)
    if not args.quiet:
        print(f"{result['id']}  {result['status']}  {result['seconds']:.1f} s")
        print(summary(result["path"]))
        try:
            for png in report(out):
                print(f"plot: {png}")
        except ImportError:
            print("plot: install 'meanfield[analysis]' (matplotlib) for the figures")
        print(f"files: {result['path']}")
    return 0
