"""How much memory a run needs, estimated from its resolved config, and the refusal of runs
that cannot fit on this machine before anything is written (``meanfield run --max-memory``).

:func:`estimate_bytes` adds up what one run holds in host memory: the interpreter with its
libraries and compiled kernels, the particles and the integrator's arrays of shape
(m, d + 2), the training set or Monte Carlo sample, tracers, the ODE solver's vectors (and
dense Jacobians of the stiff methods), and the largest of the transient peaks that do not
overlap: drawing W0 or the data, one evaluation of the velocity (the kernels' copies and
tiles), writing a recorded frame (HDF5 compresses a whole frame, one chunk), resuming (up to
``io._store.FRAME_BLOCK`` frames copied at once) and the analyses that run in the same process
after the run (``[landscape]``, ``[lazy]``). Device memory of the CUDA backend is not counted;
its host copies are the CPU run's arrays. The estimate aims to be at or somewhat above the
peak resident memory, within a factor of about 2 when the arrays dominate (large m or n).

Measured: the peak resident memory (``ru_maxrss``) of a child ``meanfield run --set ...``
(``[problem.teacher] k = 5``, float64, two records unless said; 2 cores, 2026-12-02) against
the estimate, in MiB. A tiny run (m = 8, d = 4) peaked at 221 (the interpreter, libraries and
kernels; estimate 240).

=============================================================  ========  ========  =====
configuration                                                  estimate  measured  ratio
=============================================================  ========  ========  =====
population, closed form (relu), m = 200000, d = 50, gradient       1038       858   1.21
descent (one evaluation took ~2 min)
finite data n = 20000, d = 200, m = 2000, gradient descent          358       341   1.05
sgd, finite data n = 400000, d = 100, m = 64, batch 1000            599       559   1.07
heavy ball, finite data n = 2000, d = 100, m = 200000              1954      1709   1.14
gradient descent, finite data n = 64, d = 100, m = 200000,         1574      1396   1.13
three records
=============================================================  ========  ========  =====

The last two estimates are their resume peak (one frame of 156 MiB copied at a time, the
checkpoint's arrays; not measured end to end); without it they are 1886 and 1574 (ratios 1.10
and 1.13). Above the tiny run the ratios are 0.98 to 1.32. A flow run with ``ode_method = "BDF"``,
m = 5000, d = 4 (25000 unknowns) held 18.9 GiB when it was stopped after 10 minutes; its estimate is 18.9 GiB.
``tests/test_bad_input.py`` repeats the sgd row, which runs in a few seconds.

Assumptions that make it an estimate: the Hermite series (``problem.method = "series"``) is
counted at degree 128 (the degree chosen at initialisation was 24 to 96 for d = 20 to 200;
particles that align later can raise it up to 1024, eight times the tables); numpy's
temporaries are counted as if none were elided; the analyses of ``[limit]`` (run after a
sweep, with their own size guards in ``meanfield.distance``) are not counted.
"""
from __future__ import annotations

import math
import os
import re
import zipfile

import numpy as np

from ..engine._integrators import INTEGRATORS
from ._assembly import keyed_noise
from ._config import ConfigError

__all__ = ["available_bytes", "check", "estimate_bytes", "format_bytes", "parse_size"]

GiB = 1 << 30
# What `meanfield run` of a tiny run peaked at (221 MiB measured): Python, numpy, scipy, numba,
# h5py and the compiled kernels loaded from numba's cache.
BASELINE_BYTES = 240 << 20
# Per record in memory: the run's lists of steps, times and observables (Python floats) and
# the time grid.
RECORD_BYTES = 256
# The Hermite series degree counted per particle (see the module docstring).
SERIES_DEGREE = 128
_LEVEL_STRIDE = 4  # kernels.population_series.LEVEL_STRIDE
# Dense Jacobians held by a stiff solver step, in units of n_var^2 float64: J and the LU of
# I - c J (BDF), plus the complex LU (Radau, 16-byte entries), plus the new Hessian and its
# scaled copy while the old J is still held.
_STIFF_SQUARES = {"BDF": 4, "Radau": 6, "LSODA": 3}
# Vectors of length n_var held by an explicit solver: stages, state, error estimate and the
# dense output made at each record.
_EXPLICIT_VECTORS = {"RK23": 12, "RK45": 16, "DOP853": 32}
_LANCZOS_VECTORS = 48  # eigsh's Krylov basis (ncv) and work vectors, for [landscape]
_LANDSCAPE_DENSE_LIMIT = 600  # meanfield.landscape._hessian.DENSE_LIMIT


def _frame_block(frame_bytes: int) -> int:
    """Frames that a resume copies at once (``meanfield.io._store``: at most FRAME_BLOCK frames and
    COPY_BLOCK_BYTES bytes)."""
    from ..io._store import copy_block

    return copy_block(frame_bytes)


def _tile_rows(m: int) -> int:
    """``meanfield.engine._model.tile_rows`` in Python integers (m may exceed 64 bits here)."""
    from ..engine._model import MAX_TILE_ROWS, MIN_TILE_ROWS, TILE_ENTRIES

    return int(min(MAX_TILE_ROWS, max(MIN_TILE_ROWS, TILE_ENTRIES // max(m, 1))))


def _npz_rows(path) -> int | None:
    """Rows of the array X in a .npz file, read from its header (the array is not loaded)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("X.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, _, _ = read[version](handle)
            return int(shape[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, IndexError):
        return None


def _population_method(config: dict) -> str:
    """The method ``PopulationProblem(method="auto")`` picks for this config."""
    from ..engine._problems import automatic_method, method_applies

    pc, model, teacher = config["problem"], config["model"], config["problem.teacher"]
    if pc["method"] != "auto":
        return pc["method"]
    pair_ok, _, closed_ok = method_applies(pc["loss"], model["activation"], teacher["activation"], model["bias"],
                                           teacher["bias"])
    return automatic_method(pair_ok, closed_ok)


class _Ledger:
    """Items of an estimate: whole-run arrays, and transient ones grouped by phase (the
    phases do not overlap, so only the largest counts)."""

    def __init__(self):
        self.items = []  # (name, bytes, keys, phase or None)

    def add(self, name: str, nbytes, keys=(), phase: str | None = None):
        nbytes = int(nbytes)
        if nbytes > 0:
            self.items.append((name, nbytes, tuple(keys), phase))


def _data_kernel(ledger, role, m, d, n_points, N, s, keys):
    """Work arrays of ``kernels.finite_data_field`` on N samples, which the problem keeps
    between steps (one set per role, ``Problem._workspaces``): the copies of a, the gradient
    and work arrays (m, d), two sample tiles (tile, m), per-chunk sums."""
    tile = min(_tile_rows(m), max(N, 1))
    ledger.add(f"velocity kernel ({role}, kept): a, grad and work 3 x (m, d), partial sums 24 x (m,)",
               (3 * m * d + 24 * m) * s, keys)
    ledger.add(f"velocity kernel ({role}, kept): two sample tiles 2 x ({tile}, m)", 2 * tile * m * s, keys)
    if n_points:
        ledger.add(f"velocity kernel ({role}, kept): tracers' copies and tiles",
                   (3 * n_points * d + 2 * tile * n_points) * s, ("tracers",))


def _items(config: dict) -> _Ledger:
    mc, pc, dc, rc = config["model"], config["problem"], config["dynamics"], config["record"]
    limit, lazy = config.get("limit", {}), config.get("lazy", {})
    landscape = config.get("landscape", {})
    m, d = int(mc["m"]), int(mc["d"])
    p = d + 2
    s = np.dtype(mc["dtype"]).itemsize
    ps = np.dtype(rc["particles_dtype"]).itemsize
    m_key = "limit.reference_m" if limit.get("role") == "reference" else "model.m"
    mk = (m_key, "model.d")
    n_t = int(sum(limit.get("tracer_widths") or []))
    integrator = dc["integrator"]
    trainable = d + int(bool(mc["bias"])) + int(bool(mc["train_readout"]))
    ledger = _Ledger()
    add = ledger.add

    add("interpreter, libraries and compiled kernels", BASELINE_BYTES)
    # The state's noise buffer is written (zeros_like) even when no noise is drawn; the heavy
    # ball's momentum exists twice: the state's, and the one sweep.execute keeps from the
    # integrator's first init (it reads the buffers' shapes there).
    add(f"particles W0, W, velocity and noise: 4 x (m, d + 2) {mc['dtype']}", 4 * m * p * s, mk)
    n_buffers = len(INTEGRATORS[integrator].buffers)  # the heavy ball's momentum
    if n_buffers:
        add(f"{integrator} buffers, twice: {2 * n_buffers} x (m, d + 2)", 2 * n_buffers * m * p * s, mk)
    if keyed_noise(config):
        add(f"keyed noise block: (m, d + 2) {mc['dtype']}", m * p * s, mk)
    if n_t:
        buffers = 4 + 2 * n_buffers
        add(f"tracers: {buffers} x ({n_t}, d + 2)", buffers * n_t * p * s, ("tracers",))
    times = int(rc["times"])
    add(f"records in memory: {times} x {RECORD_BYTES} B", times * RECORD_BYTES, ("record.times",))

    # Drawing W0: one row of d + 2 float64 normals per particle, a scaled copy, the packed state.
    add("drawing W0: normals (m, d + 2), a (m, d) float64", (m * p + m * d) * 8, mk, "drawing W0")

    # The problem: its sample (finite data, Monte Carlo) and the velocity's temporaries.
    kind = pc["kind"]
    method = _population_method(config) if kind == "population" else "finite_data"
    sample, sample_keys = 0, ()
    if kind == "finite_data":
        if pc.get("data") is not None:
            sample = _npz_rows(pc["data"]) or 0
            sample_keys = ("problem.data", "model.d")
        else:
            sample = int(pc["n_samples"])
            sample_keys = ("problem.n_samples", "model.d")
    elif method == "monte_carlo":
        sample = int(pc["mc_samples"])
        sample_keys = ("problem.mc_samples", "model.d")
    if sample:
        add(f"sample X ({sample}, d) and y {mc['dtype']}", sample * (d + 1) * s, sample_keys)
        # Drawn (or loaded) in float64 (a copy when the model's dtype is float32), labelled by
        # the teacher, checked for NaN (a bool array of its shape).
        add("drawing the sample: X in float64 for a float32 model, its finiteness mask, labels",
            sample * d * (1 + (8 if s != 8 else 0)) + 4 * sample * 8, sample_keys, "drawing the sample")
    batch = dc.get("batch_size")
    eval_phase = "evaluating the velocity"
    # The last record evaluates into a fresh velocity array (the others reuse the step's).
    add("the record's own velocity (m, d + 2)", (m + n_t) * p * s, mk, eval_phase)
    if pc.get("tangent"):
        add("tangent model: W0 and its features (m, d + 2)", 2 * m * p * s, mk)
    if batch is not None:
        B = int(batch)
        bk = ("dynamics.batch_size", "model.d")
        if kind == "finite_data":
            # Generator.choice without replacement shuffles an index of the whole sample
            # unless the batch is below 1/50 of it.
            index = 8 * sample if not (sample > 10_000 and B <= sample // 50) else 16 * B
            add("minibatch: X[index] (batch, d), index", B * (d + 1) * s + index, bk, eval_phase)
        else:
            add("online batch: X (batch, d) float64, labels, cast", B * d * (8 + s) + 4 * B * 8, bk, eval_phase)
        _data_kernel(ledger, "batch", m, d, n_t, B, s, mk)
    if kind == "finite_data" or method == "monte_carlo":
        _data_kernel(ledger, "sample", m, d, n_t, sample, s, mk)
    elif batch is None:
        # Pair kernels: copies of a (m, d), the sums K, G against W and the teacher (m, d + 1),
        # and pair_velocity's temporaries (m, d + 1).
        add("velocity: pair sums and temporaries 5 x (m, d + 1)",
            5 * m * (d + 1) * s + 8 * m * s, mk, eval_phase)
        if method == "closed_form" and (mc["bias"] or config["problem.teacher"]["bias"]):
            add("velocity: bias kernel factors 10 x (m,)", 10 * m * s, mk, eval_phase)
        if method == "series":
            L = SERIES_DEGREE
            per_particle = 8 * (3 * (L + 1) + 5 * (L // _LEVEL_STRIDE + 1) + 14) + 2 * (L + 1) * s + p * 8
            add(f"velocity: Hermite tables at degree {L}, {per_particle} B per particle", m * per_particle,
                (m_key, "problem.method"), eval_phase)
        if n_t:
            add("velocity: tracers' pair sums and copies", 5 * n_t * (d + 1) * s, ("tracers",), eval_phase)

    # The exact flow (integrator "flow") and the step-size error's reference flow: scipy's
    # solvers work in float64 on the trainable coordinates.
    n_var = m * trainable
    fk = (m_key, "model.d", "dynamics.ode_method")
    if integrator == "flow":
        method_name = dc.get("ode_method", "RK45")
        add("flow: packed state, velocity copies 4 x (m, d + 2) float64", 4 * m * p * 8, mk)
        if method_name in _STIFF_SQUARES:
            add(f"flow ({method_name}): dense Jacobians {_STIFF_SQUARES[method_name]} x (n_var, n_var) float64, "
                f"n_var = {n_var}", _STIFF_SQUARES[method_name] * n_var * n_var * 8, fk)
            add(f"flow ({method_name}): solver vectors 24 x n_var", 24 * n_var * 8, fk)
        else:
            add(f"flow ({method_name}): solver vectors {_EXPLICIT_VECTORS[method_name]} x n_var float64",
                _EXPLICIT_VECTORS[method_name] * n_var * 8, fk)
    if rc.get("step_error"):
        add("step error: reference flow (DOP853) vectors and its own W",
            _EXPLICIT_VECTORS["DOP853"] * n_var * 8 + 4 * m * p * 8, mk + ("record.step_error",))

    if rc.get("classification"):
        # The measure keeps float64 copies of the training inputs (a copy only for a float32
        # model), the held-out inputs of [record] test_samples and the last normalised
        # predictor; each record makes a float64 copy of W and a few output vectors.
        n_test = int(rc.get("test_samples") or 0)
        add("classification observables: float64 inputs, held-out sample, outputs and a copy of W",
            (sample * d * (8 if s != 8 else 0) + n_test * (d + 2) * 8 + 4 * (sample + n_test) * 8
             + m * p * 8),
            tuple(dict.fromkeys(mk + ("record.classification",) + sample_keys
                                + (("record.test_samples",) if n_test else ()))))

    # Recording: HDF5 compresses a whole frame (one chunk) at a time; writing one peaked at two
    # frames' worth of buffers (measured, float64 and float32 frames of 200000 x 102). The
    # record's own evaluation keeps its velocity meanwhile.
    record_phase = "writing a record"
    add("record: the evaluation's velocity (m, d + 2)", m * p * s, mk, record_phase)
    frame = m * p * ps
    if rc["particles"]:
        fkeys = mk + ("record.particles",)
        add(f"record: HDF5 buffers of one frame, 2 x (m, d + 2) {rc['particles_dtype']}", 2 * frame, fkeys,
            record_phase)
        if n_t:
            add("record: HDF5 buffers of one tracer frame", 2 * n_t * p * ps, ("tracers",), record_phase)
        # Resuming copies the recorded frames into a fresh file, FRAME_BLOCK at a time (reading
        # three frames peaked at four frames' worth), and holds the checkpoint's arrays.
        block = min(_frame_block(frame), times)
        add(f"resume: {block} frames copied at once and their HDF5 buffers, {block + 2} x (m, d + 2)",
            (block + 2) * frame, fkeys + ("record.times",), "resuming")
    add("resume: the checkpoint's W and buffers", m * p * s * (1 + n_buffers), mk, "resuming")

    # Analyses that run in the same process after the run.
    if landscape.get("enabled"):
        lk = (m_key, "model.d", "landscape.spectrum")
        if landscape.get("spectrum") == "dense" or (landscape.get("spectrum") == "auto"
                                                   and n_var <= _LANDSCAPE_DENSE_LIMIT):
            add("landscape: dense Hessian, eigenvectors and workspace 3 x (n_var, n_var) float64",
                3 * n_var * n_var * 8, lk, "after the run")
        else:
            add(f"landscape: Lanczos vectors {_LANCZOS_VECTORS} x n_var float64", _LANCZOS_VECTORS * n_var * 8, lk,
                "after the run")
        add("landscape: descent state and velocity temporaries 8 x (m, d + 2)", 8 * m * p * 8, mk, "after the run")
    if lazy.get("test_samples"):
        n_test = int(lazy["test_samples"])
        lzk = ("lazy.test_samples", "record.times") + mk
        add(f"lazy: every recorded frame in {rc['particles_dtype']} and float64, {times} x (m, d + 2)",
            times * m * p * (ps + 8), lzk, "after the run")
        add("lazy: held-out sample and predictions", n_test * (d + 4 + 2 * times) * 8 + 2 * _tile_rows(m) * m * 8,
            lzk, "after the run")
    return ledger


def estimate_bytes(config: dict) -> dict:
    """The peak host memory of one run, estimated from its resolved config.

    Parameters
    ----------
    config : dict
        A resolved run configuration (``RunSpec.config`` of :func:`meanfield.sweep.plan`).
        Sizes may exceed 64 bits (a TOML integer such as 10**20): the arithmetic is in Python
        integers.

    Returns
    -------
    dict
        ``total`` (int, bytes): the whole-run items plus the largest transient phase.
        ``breakdown`` ({item: bytes}): the items that make up ``total`` (they sum to it).
        ``phases`` ({phase: bytes}): each transient phase (drawing W0, drawing the sample,
        evaluating the velocity, writing a record, resuming, after the run); only the
        largest, ``peak_phase``, is in ``total``.
        ``keys`` ({item: tuple of str}): the config keys each item grows with
        (``"model.m"``, ``"problem.n_samples"``, ...; ``"tracers"`` for a reference run's
        tracers).
    """
    ledger = _items(config)
    phases = {}
    for _, nbytes, _, phase in ledger.items:
        if phase is not None:
            phases[phase] = phases.get(phase, 0) + nbytes
    peak_phase = max(phases, key=phases.get) if phases else None
    breakdown, keys = {}, {}
    for name, nbytes, item_keys, phase in ledger.items:
        if phase is None or phase == peak_phase:
            label = name if phase is None else f"{name} [{phase}]"
            breakdown[label] = breakdown.get(label, 0) + nbytes
            keys[label] = item_keys
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "phases": phases, "peak_phase": peak_phase,
            "keys": keys}


# --------------------------------------------------------------------------- the machine
def _read_limit(path) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max": no limit
        return None
    return int(text)


def _cgroup_limits(root: str, proc_cgroup: str) -> list[int]:
    """The memory limits of this process's cgroup and its ancestors (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``) that can be read; in a container the cgroup's own directory is
    often the root of /sys/fs/cgroup, so the root files are read too."""
    try:
        with open(proc_cgroup) as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    candidates = [os.path.join(root, "memory.max"), os.path.join(root, "memory", "memory.limit_in_bytes")]
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.strip("/")
        if controllers == "":  # v2 unified hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        pieces = [piece for piece in path.split("/") if piece]
        for depth in range(len(pieces), 0, -1):
            candidates.append(os.path.join(base, *pieces[:depth], name))
    limits = []
    for path in dict.fromkeys(candidates):
        value = _read_limit(path)
        if value is not None:
            limits.append(value)
    return limits


def available_bytes(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The memory this machine gives a run: the physical memory, or the cgroup's limit
    (a container, a Slurm allocation) when one is set and lower.

    Parameters
    ----------
    cgroup_root, proc_cgroup : str
        Where the cgroup file systems and this process's cgroup list are (for tests).

    Returns
    -------
    int
        Bytes.
    """
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # cgroup v1 writes "no limit" as the largest page-aligned 64-bit value: above physical.
    limits = [limit for limit in _cgroup_limits(cgroup_root, proc_cgroup) if 0 < limit < physical]
    return min([physical, *limits])


# --------------------------------------------------------------------------- the check
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text) -> float | None:
    """``--max-memory``: ``64G``, ``512M``, ``1.5T``, ``100000`` (bytes) or ``inf`` (no check).

    Returns
    -------
    float or None
        Bytes (``math.inf`` for no limit), or None when ``text`` is None (the machine's memory).

    Raises
    ------
    ConfigError
        A value that is not a size > 0.
    """
    if text is None:
        return None
    raw = str(text).strip()
    if raw.lower() in ("inf", "infinity", "none", "off", "unlimited"):
        return math.inf
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGTP]?)(?:i?B)?", raw, flags=re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--max-memory {text}: must be a size > 0 such as 64G, 512M, 1.5T, or inf to turn "
                          "the memory check off")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def format_bytes(nbytes) -> str:
    """Bytes in GiB for a message: one decimal, or three significant digits when huge."""
    gib = nbytes / GiB
    return f"{gib:.1f} GiB" if gib < 1e5 else f"{gib:.3g} GiB"


def _key_values(config: dict, keys) -> str:
    shown = []
    for key in keys:
        if key == "tracers":
            widths = config.get("limit", {}).get("tracer_widths") or []
            shown.append(f"tracers of the members' widths {widths}")
            continue
        section, _, name = key.rpartition(".")
        value = config.get(section, {}).get(name)
        if value is None and key == "limit.reference_m":
            value = config["model"]["m"]
        shown.append(f"{key} = {_toml(value)}")
    return ", ".join(shown)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _culprits(estimate: dict, items: dict, top: str) -> list[str]:
    """The keys that most of the memory grows with (in at least 3/4 of it), those of the
    largest item first."""
    total = sum(items.values())
    share = {}
    for name, nbytes in items.items():
        for key in estimate["keys"][name]:
            share[key] = share.get(key, 0) + nbytes
    order = list(dict.fromkeys([*estimate["keys"][top], *share]))
    keys = [key for key in order if share.get(key, 0) >= 0.75 * total]
    return keys or list(estimate["keys"][top])


def check(specs, limit_bytes=None, jobs: int = 1) -> dict | None:
    """Refuse a sweep whose largest run cannot fit in memory.

    Parameters
    ----------
    specs : sequence of RunSpec
        The runs that this command will run (``meanfield.sweep.plan``).
    limit_bytes : float, optional
        The memory allowed (bytes; ``math.inf`` turns the check off). Default: the machine's,
        :func:`available_bytes`.
    jobs : int
        Runs in parallel (``--jobs``): the ``jobs`` largest runs must fit together.

    Returns
    -------
    dict or None
        The estimate of the largest run (:func:`estimate_bytes`), or None without runs.

    Raises
    ------
    ConfigError
        One line: the experiment file, the keys of the largest item with their values, the
        estimate and the machine's memory in GiB, and the option that overrides the check.
    """
    specs = list(specs)
    if not specs:
        return None
    estimates = sorted(((estimate_bytes(spec.config), spec) for spec in specs), key=lambda pair: -pair[0]["total"])
    largest, spec = estimates[0]
    if limit_bytes is not None and math.isinf(limit_bytes):
        return largest
    from_machine = limit_bytes is None
    limit = available_bytes() if from_machine else limit_bytes
    together = estimates[:max(1, min(int(jobs), len(estimates)))]
    need = sum(estimate["total"] for estimate, _ in together)
    if need <= limit:
        return largest
    items = {name: nbytes for name, nbytes in largest["breakdown"].items()
             if name != "interpreter, libraries and compiled kernels"}
    top = max(items, key=items.get)
    what = _key_values(spec.config, _culprits(largest, items, top))
    runs = (f"{len(together)} runs at once (--jobs {jobs}) need about {format_bytes(need)}, the largest "
            f"{format_bytes(largest['total'])}" if len(together) > 1 else
            f"{'the largest run' if len(specs) > 1 else 'the run'} needs about {format_bytes(largest['total'])}")
    have = (f"this machine has {format_bytes(limit)}" if from_machine else
            f"--max-memory allows {format_bytes(limit)}")
    if not from_machine:
        override = "raise --max-memory (inf turns the check off)"
    elif need <= 64 * limit:
        override = f"give --max-memory {math.ceil(1.25 * need / GiB)}G (or inf) to run it anyway"
    else:
        override = "give --max-memory inf to run it anyway"
    raise ConfigError(f"{spec.source}: {what}: {runs} (largest part: {top}, {format_bytes(items[top])}), "
                      f"but {have}; "
                      f"make it smaller{' or lower --jobs' if len(together) > 1 else ''}, or {override}")
