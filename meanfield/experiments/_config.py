"""Experiment files: TOML -> validated, fully resolved run configurations.

A file describes one run, or a sweep of runs through its ``[sweep]`` table. Everything is
checked before any work starts; the first problem found is raised as a :class:`ConfigError`
whose message names the file, the key and what is allowed.

Sections and keys (defaults in parentheses; ``SCHEMA`` below is the reference):

[model]     d, m, activation ("relu"), bias (false), train_readout (true),
            scaling ("mean_field"), alpha (1.0 or "sqrt_m"), dtype ("float64")
[init]      a ("gaussian"), c ("gaussian"), b ("zero"), tau (1.0), symmetric (false)
[problem]   kind ("population" | "finite_data"), loss ("squared"), noise_std (0),
            flip_prob (0), method ("auto"), quadrature_order (32), mc_samples (200000),
            n_samples (finite data drawn from the teacher), data (a .npz file with X, y),
            tangent (false: train the tangent model at the initial particles instead),
            seed (none: run.seed; the seed of the teacher, the data and the held-out sample)
[problem.teacher]  kind ("orthonormal" | "random"), k, readout ("mean"), activation
            (the model's), bias (false), rotate (false: e_1..e_k; true: random frame)
[dynamics]  integrator ("gradient_descent" | "heavy_ball" | "sgd" | "langevin" | "flow" |
            "weight_normalized_descent"), step (required except for "flow"), t_max, momentum (0.9),
            batch_size, beta, weight_decay (0: lambda_0 of the velocity term -lambda(t) w on the
            trained coordinates),
            weight_decay_schedule ("constant" | "step" | "anneal"; not for "sgd" and "langevin"),
            weight_decay_start (t_on of "step"), weight_decay_time (tau of "anneal":
            lambda_0 / (1 + t / tau)) (the schedule keys kept in the resolved config only when set);
            for "flow" only: ode_method ("RK45"; one of meanfield.ODE_METHODS), rtol (1e-8),
            atol (1e-10) (kept in the resolved config of flow runs only, so that the ids of
            other runs do not change)
[record]    times (101), spacing ("linear" | "log"), t_min, particles (true),
            particles_dtype ("float64" | "float32"), checkpoint_seconds (60), step_error (false:
            record the distance to the exact flow, "gradient_descent" and "heavy_ball"; kept
            in the resolved config only when true), test_samples (none: for kind =
            "finite_data" with a teacher, the risk on a held-out sample of this size recorded as
            test_risk; kept in the resolved config only when set), classification (false: for
            kind = "finite_data" with a classification loss, record the parameter norms, the
            training error, the normalised margin and the normalised predictor's change, and
            test_error on the test_samples sample when set; kept in the resolved config only
            when true), order_parameters (false: with a teacher, record the overlaps
            Q_k_l = a_k . a_l, R_k_n = a_k . a*_n, v_k = alpha s c_k and, with model.bias, the
            biases b_k of the order-parameter ODEs, meanfield.online; kept in the resolved config
            only when true)
[run]       seed (0), root_seed (0), backend ("cpu")
[lazy]      test_samples (none: no lazy observables), tangent (false: pair with a tangent-model run)
[limit]     reference_m (none: no comparison), tracers (true), metrics (see LIMIT_METRICS),
            sliced_projections (200), times (all recorded times, or the recorded times nearest
            to a list)
[landscape] enabled (true when the table is present), grad_tol (1e-9), risk_threshold (1e-6),
            eig_tol (0), step (dynamics.step), max_steps (100000), spectrum ("auto"),
            hessian ("auto"): precise descent after t_max, then classification (meanfield.landscape)
[connectivity]  enabled (true when present), n_points (41), match (true): barriers between the
            end points of runs with seeds 2i and 2i + 1
[sweep]     "section.key" = [values, ...] for any key above, or a range {start = 0, stop = 500}
            (step = 1); [sweep.zip] "section.key" = [...] lists of equal length, zipped, then
            crossed with the plain [sweep] lists. On the command line (:func:`plan`'s
            overrides) ``--set model.m=512`` sets a swept key to one value (a note says which
            list it replaced) and ``--set 'sweep."model.m"=[16, 32]'`` replaces or adds a list

With ``[limit] reference_m = M`` every run of the file ("member") is compared with a
reference run of width M that has the same config otherwise (same seed: same streams). The
reference carries tracer particles started at the initial points of every member of its
group, so the plan holds the members and one reference per group (seed, ...).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import tomllib

from ..engine._integrators import INTEGRATORS as INTEGRATOR_ENTRIES
from ..engine._integrators import WEIGHT_DECAY_SCHEDULES
from ..engine._losses import LOSS_ENTRIES
from ..engine._model import A_LAWS, ACTIVATIONS, B_LAWS, C_LAWS, DTYPES, SCALINGS
from ..engine._problems import BIAS_CLOSED_FORM_ACTIVATIONS, CLOSED_FORM_ACTIVATIONS, method_applies
from ..engine._run import SPACINGS
from ..online._engine_map import ORDER_PARAMETER_MAX_SERIES, series_count


class ConfigError(ValueError):
    """Bad input in an experiment file (reported with exit status 2, nothing written)."""


REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One key of the schema: its type, default and what values are allowed."""

    kind: str  # "int", "float", "bool", "str", "alpha", "readout", "path", "float_or_none", "int_or_none", "names"
    default: object = REQUIRED
    choices: tuple = ()
    minimum: float | None = None
    strict_minimum: bool = False
    maximum: float | None = None
    strict_maximum: bool = False

    def check(self, file, section, name, value, via=None):
        """The value, checked and converted (ConfigError naming the file, the key and what is
        allowed)."""
        return _check_value(file, section, name, self, value, via)

    def default_value(self):
        """The value of the key when a file does not give it."""
        return self.default

    def allowed(self) -> str:
        """What the key allows, in words (for messages)."""
        if self.choices and self.kind != "names":
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "alpha": 'a number > 0 or "sqrt_m"', "readout": '"mean", "sum" or a number',
                 "path": "the path of an existing .npz file with arrays X and y",
                 "names": "a list of names from " + ", ".join(json.dumps(c) for c in self.choices),
                 "times": "a non-empty list of times >= 0",
                 "float_or_none": "a number", "int_or_none": "an integer"}
        text = kinds[self.kind]
        if self.minimum is not None:
            text += f" {'>' if self.strict_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" and {'<' if self.strict_maximum else '<='} {self.maximum:g}"
        return text


# Every rule about integrators below reads their entries (meanfield.engine._integrators):
# a new integrator needs no change here.
ODE_METHODS = ("RK45", "DOP853", "RK23", "BDF", "Radau", "LSODA")  # meanfield.engine._flow.ODE_METHODS
# Keys of adaptive integrators only: dropped from the resolved configs of the others (whose run
# ids predate them).
FLOW_KEYS = tuple(dict.fromkeys(key for entry in INTEGRATOR_ENTRIES.values() if entry.time_step is None
                                for key in entry.keys
                                if not any(key in other.keys for other in INTEGRATOR_ENTRIES.values()
                                           if other.time_step is not None)))


def _quoted(names) -> str:
    """'"a", "b" or "c"'."""
    names = [f'"{name}"' for name in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _integrators_where(predicate) -> str:
    return _quoted([name for name, entry in INTEGRATOR_ENTRIES.items() if predicate(entry)])


def time_step(dynamics: dict) -> float | None:
    """Continuous time of one step of a resolved ``[dynamics]`` section; None for an adaptive
    integrator."""
    entry = INTEGRATOR_ENTRIES[dynamics["integrator"]]
    return None if entry.time_step is None else entry.time_step(dynamics)


def _adaptive(name) -> bool:
    entry = INTEGRATOR_ENTRIES.get(name)
    return entry is not None and entry.time_step is None
PROBLEM_KINDS = ("population", "finite_data")
TEACHER_KINDS = ("orthonormal", "random")
METHODS = ("auto", "closed_form", "series", "quadrature", "monte_carlo")
BACKENDS = ("cpu", "cuda")
LIMIT_METRICS = ("risk_gap", "tracer_deviation", "norm_w2", "readout_w2", "signed_norm_w2", "overlap_w2",
                 "sliced_w2", "w2", "sphere_w2")
DEFAULT_LIMIT_METRICS = ["risk_gap", "tracer_deviation", "norm_w2", "signed_norm_w2", "sliced_w2"]

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "d": Key("int", minimum=1),
        "m": Key("int", minimum=1),
        "activation": Key("str", "relu", choices=ACTIVATIONS),
        "bias": Key("bool", False),
        "train_readout": Key("bool", True),
        "scaling": Key("str", "mean_field", choices=SCALINGS),
        "alpha": Key("alpha", 1.0),
        "dtype": Key("str", "float64", choices=DTYPES),
    },
    "init": {
        "a": Key("str", "gaussian", choices=A_LAWS),
        "c": Key("str", "gaussian", choices=C_LAWS),
        "b": Key("str", "zero", choices=B_LAWS),
        "tau": Key("float", 1.0, minimum=0),
        "symmetric": Key("bool", False),
    },
    "problem": {
        "kind": Key("str", "population", choices=PROBLEM_KINDS),
        "loss": Key("str", "squared", choices=tuple(LOSS_ENTRIES)),
        "noise_std": Key("float", 0.0, minimum=0),
        "flip_prob": Key("float", 0.0, minimum=0, maximum=0.5, strict_maximum=True),
        "method": Key("str", "auto", choices=METHODS),
        "quadrature_order": Key("int", 32, minimum=2, maximum=300),
        "mc_samples": Key("int", 200_000, minimum=1),
        "n_samples": Key("int_or_none", None, minimum=1),
        "data": Key("path", None),
        "tangent": Key("bool", False),
        # The seed of the problem's streams (teacher, data, Monte Carlo and held-out samples);
        # absent: run.seed's. Kept in the resolved config only when given (the ids of files
        # without it do not change).
        "seed": Key("int_or_none", None, minimum=0),
    },
    "problem.teacher": {
        "kind": Key("str", "orthonormal", choices=TEACHER_KINDS),
        "k": Key("int", minimum=1),
        "readout": Key("readout", "mean"),
        "activation": Key("str", None, choices=ACTIVATIONS),
        "bias": Key("bool", False),
        "rotate": Key("bool", False),
    },
    "dynamics": {
        # A live view: an integrator registered after this module is imported is allowed too.
        "integrator": Key("str", "gradient_descent", choices=INTEGRATOR_ENTRIES.keys()),
        "step": Key("float", minimum=0, strict_minimum=True),
        "t_max": Key("float", minimum=0, strict_minimum=True),
        "momentum": Key("float", 0.9, minimum=0, maximum=1, strict_maximum=True),
        "batch_size": Key("int_or_none", None, minimum=1),
        "beta": Key("float_or_none", None, minimum=0, strict_minimum=True),
        "weight_decay": Key("float", 0.0, minimum=0),
        # The schedule of the weight decay (meanfield.engine._integrators.WeightDecay); kept in the
        # resolved config only away from its default (the ids of other runs do not change).
        "weight_decay_schedule": Key("str", "constant", choices=WEIGHT_DECAY_SCHEDULES),
        "weight_decay_start": Key("float_or_none", None, minimum=0),
        "weight_decay_time": Key("float_or_none", None, minimum=0, strict_minimum=True),
        "ode_method": Key("str", "RK45", choices=ODE_METHODS),
        "rtol": Key("float", 1e-8, minimum=0, strict_minimum=True, maximum=1),
        "atol": Key("float", 1e-10, minimum=0, strict_minimum=True),
    },
    "record": {
        "times": Key("int", 101, minimum=2),
        "spacing": Key("str", "linear", choices=SPACINGS),
        "t_min": Key("float_or_none", None, minimum=0, strict_minimum=True),
        "particles": Key("bool", True),
        "particles_dtype": Key("str", "float64", choices=DTYPES),
        "checkpoint_seconds": Key("float", 60.0, minimum=0, strict_minimum=True),
        "step_error": Key("bool", False),
        "test_samples": Key("int_or_none", None, minimum=1),
        "classification": Key("bool", False),
        "order_parameters": Key("bool", False),
    },
    "run": {
        "seed": Key("int", 0, minimum=0),
        "root_seed": Key("int", 0, minimum=0),
        "backend": Key("str", "cpu", choices=BACKENDS),
    },
    "limit": {
        "reference_m": Key("int_or_none", None, minimum=1),
        "tracers": Key("bool", True),
        "metrics": Key("names", DEFAULT_LIMIT_METRICS, choices=LIMIT_METRICS),
        "sliced_projections": Key("int", 200, minimum=1),
        "times": Key("times", None),
    },
    "lazy": {
        "test_samples": Key("int_or_none", None, minimum=1),
        "tangent": Key("bool", False),
    },
    # Landscape stage (meanfield.landscape): present in the file = enabled. After t_max each run
    # continues by precise gradient descent to grad_tol and its end point is classified.
    "landscape": {
        "enabled": Key("bool", False),
        "grad_tol": Key("float", 1e-9, minimum=0, strict_minimum=True),
        "risk_threshold": Key("float", 1e-6, minimum=0, strict_minimum=True),
        "eig_tol": Key("float", 0.0, minimum=0),
        "step": Key("float_or_none", None, minimum=0, strict_minimum=True),
        "max_steps": Key("int", 100_000, minimum=1),
        "spectrum": Key("str", "auto", choices=("auto", "dense", "lanczos")),
        "hessian": Key("str", "auto", choices=("auto", "analytic", "finite_difference")),
    },
    # Mode connectivity: present in the file = enabled. Runs that differ only in their seed are
    # paired (seeds 2i and 2i + 1) and the risk is measured along paths between their end points.
    "connectivity": {
        "enabled": Key("bool", False),
        "n_points": Key("int", 41, minimum=2),
        "match": Key("bool", True),
    },
}


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment file.

    Attributes
    ----------
    index : int
        Position in the sorted run list of the file (what shards are cut by).
    id : str
        Stable identity: the first 16 hex digits of ``sha256``.
    sha256 : str
        SHA-256 of the canonical JSON of ``config``.
    config : dict
        The fully resolved configuration (every key, defaults filled in).
    swept : dict
        The swept keys and their values for this run ("section.key" -> value).
    source : str
        The experiment file.
    """

    index: int
    id: str
    sha256: str
    config: dict
    swept: dict
    source: str

    @property
    def config_json(self) -> str:
        """The resolved config as canonical JSON (sorted keys, no spaces): what ``sha256`` hashes."""
        return canonical_json(self.config)


def canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _where(file, section, key, via=None):
    if via:
        return f"{file}: {via}"
    return f"{file}: [{section}] {key}"


def _check_value(file, section, name, key: Key, value, via=None):
    """The value converted to its canonical type, or a ConfigError naming the key."""
    shown = json.dumps(value) if jsonable(value) else repr(value)
    where = f"{file}: {via}" if via else f"{file}: [{section}] {name} = {shown}"
    bad = ConfigError(f"{where}: must be {key.allowed()}")
    kind = key.kind
    if value is None and key.default is None and kind in ("float_or_none", "int_or_none", "path", "str"):
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in ("int", "int_or_none"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        number = value
    elif kind in ("float", "float_or_none"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        number = float(value)
        if not math.isfinite(number):
            raise bad
    elif kind == "alpha":
        if value == "sqrt_m":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise bad
        return float(value)
    elif kind == "readout":
        if value in ("mean", "sum"):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    elif kind == "str":
        if not isinstance(value, str) or (key.choices and value not in key.choices):
            raise bad
        return value
    elif kind == "path":
        if not isinstance(value, str):
            raise bad
        return value
    elif kind == "times":
        if value is None:
            return None
        if (not isinstance(value, list) or not value or
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                        for v in value)):
            raise bad
        return sorted({float(v) for v in value})
    elif kind == "names":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v in key.choices for v in value):
            raise bad
        return list(dict.fromkeys(value))
    else:  # pragma: no cover - schema error
        raise AssertionError(kind)
    if key.minimum is not None and (number < key.minimum or key.strict_minimum and number <= key.minimum):
        raise bad
    if key.maximum is not None and (number > key.maximum or key.strict_maximum and number >= key.maximum):
        raise bad
    return number


def fill_section(file, section: str, keys: dict, given: dict, via=None, not_required=()) -> dict:
    """One section of a resolved config: the given values checked (``key.check``), the
    defaults for the others; a required key that is missing raises ConfigError.

    The schema engine of every experiment file (``meanfield run`` files and the
    ``[experiment]`` kinds of ``meanfield.experiments``).

    Parameters
    ----------
    file : str
        The file, for messages.
    section : str
    keys : dict
        name -> key (``Key``, or any object with ``check``, ``default``, ``default_value`` and
        ``allowed``).
    given : dict
        The section as the file (and ``--set``) gives it.
    via : callable, optional
        ``via(section, name)`` -> where a value came from, for messages (a sweep, ``--set``).
    not_required : collection of str
        Keys that are None rather than required here (the step of an adaptive integrator).

    Returns
    -------
    dict
        name -> value, in the schema's order.
    """
    out = {}
    for name, key in keys.items():
        if name in given:
            out[name] = key.check(file, section, name, given[name], via(section, name) if via else None)
        elif name in not_required:
            out[name] = None
        elif key.default is REQUIRED:
            raise ConfigError(f"{file}: [{section}] {name} is required: {key.allowed()}")
        else:
            out[name] = key.default_value()
    return out


def jsonable(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _split_key(file, dotted: str, via: str, schema=None):
    schema = SCHEMA if schema is None else schema
    section, _, name = dotted.rpartition(".")
    if section not in schema or name not in schema[section]:
        known = ", ".join(f'"{s}.{k}"' for s in schema for k in schema[s])
        raise ConfigError(f"{file}: {via}: unknown key {dotted!r}; known keys: {known}")
    return section, name


def parse_override(file, text: str, schema=None):
    """``section.key=value`` from ``--set``; the value is read as TOML (a bare word is a string).

    Parameters
    ----------
    file : str
        The experiment file, for messages.
    text : str
        What followed ``--set``.
    schema : dict, optional
        section -> {name: key}; default the schema of ``meanfield run`` files.

    Returns
    -------
    (section, name, value, via) : tuple
        ``via`` is ``"--set <text>"``, for messages.
    """
    dotted, sep, raw = text.partition("=")
    via = f"--set {text}"
    if not sep:
        raise ConfigError(f"{file}: {via}: expected section.key=value")
    section, name = _split_key(file, dotted.strip(), via, schema)
    return section, name, _override_value(raw), via


def _override_value(raw: str):
    raw = raw.strip()
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


SWEEP_OVERRIDE = 'sweep."section.key"=[values] or sweep.zip."section.key"=[values]'


def parse_sweep_override(file, text: str):
    """A ``--set`` that sets a sweep list: ``sweep."model.m"=[16, 32]`` (or ``sweep.model.m=...``:
    the sweep table holds only "section.key" entries and ``zip``, so the dotted form is not
    ambiguous), ``sweep.zip."model.m"=[...]`` for a column of ``[sweep.zip]``. Returns
    (table: "sweep" or "zip", "section.key", value, via), or None for an ordinary key."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if key != "sweep" and not key.startswith(("sweep.", 'sweep"', "sweep ")):
        return None
    via = f"--set {text}"
    try:
        parsed = tomllib.loads(f"{key} = 0") if sep else None
    except tomllib.TOMLDecodeError:
        parsed = None
    parts = []
    while isinstance(parsed, dict) and len(parsed) == 1:
        name, parsed = next(iter(parsed.items()))
        parts.append(name)
    if not sep or len(parts) < 2 or parts[0] != "sweep":
        raise ConfigError(f"{file}: {via}: expected {SWEEP_OVERRIDE}")
    table = "zip" if parts[1] == "zip" and len(parts) > 2 else "sweep"
    dotted = ".".join(parts[2:] if table == "zip" else parts[1:])
    _split_key(file, dotted, via)
    return table, dotted, _override_value(raw), via


def load_document(path) -> dict:
    """The raw TOML document of an experiment file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not an experiment file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _sections(file, document: dict):
    """Flatten the document into {section: {key: value}} and the sweep table, checking names."""
    sections = {name: {} for name in SCHEMA}
    sweep = {}
    for top, content in document.items():
        if top == "sweep":
            if not isinstance(content, dict):
                raise ConfigError(f"{file}: [sweep] must be a table of \"section.key\" = [values]")
            sweep = content
            continue
        if top not in SCHEMA or not isinstance(content, dict):
            allowed = ", ".join(f"[{s}]" for s in [*(s for s in SCHEMA if "." not in s), "sweep"])
            raise ConfigError(f"{file}: unknown section [{top}]; allowed sections: {allowed}")
        for name, value in content.items():
            full = f"{top}.{name}"
            if isinstance(value, dict) and full in SCHEMA:
                for sub, sub_value in value.items():
                    if sub not in SCHEMA[full]:
                        raise ConfigError(f"{file}: [{full}] unknown key {sub!r}; allowed: {', '.join(SCHEMA[full])}")
                    sections[full][sub] = sub_value
                continue
            if name not in SCHEMA[top]:
                raise ConfigError(f"{file}: [{top}] unknown key {name!r}; allowed: {', '.join(SCHEMA[top])}")
            sections[top][name] = value
    return sections, sweep


def _sort_values(values):
    def order(v):
        if isinstance(v, bool):
            return (0, int(v), "")
        if isinstance(v, (int, float)):
            return (1, v, "")
        return (2, 0, str(v))

    return sorted(values, key=order)


def plan(path, overrides=(), notes=None) -> list[RunSpec]:
    """Every run an experiment file describes, validated and resolved, in sorted order.

    Parameters
    ----------
    path : str or path-like
        The TOML experiment file.
    overrides : sequence of str
        ``section.key=value`` strings (``--set``), applied in order before the sweep. A key
        that the file sweeps is set to that one value (its sweep list, or its column of
        ``[sweep.zip]``, is dropped). ``sweep."section.key"=[values]`` (also written
        ``sweep.section.key=[values]``) replaces or adds a ``[sweep]`` list, a range table
        ``{start = 0, stop = 4}`` included; ``sweep.zip."section.key"=[values]`` a column of
        ``[sweep.zip]``.
    notes : list, optional
        Receives one line for each override that replaced a sweep list of the file with a
        single value, and one for each time grid whose times fall on fewer distinct steps than
        requested (the command line prints them on stderr).

    Returns
    -------
    list of RunSpec
        The sorted cartesian product of the ``[sweep]`` values (keys sorted, values sorted),
        or the single run of a file without a sweep.

    Raises
    ------
    ConfigError
        The first bad input, naming the file, the key and what is allowed.
    """
    file = os.fspath(path)
    document = load_document(file)
    sections, sweep = _sections(file, document)
    for name in ("landscape", "connectivity"):
        if name in document:
            sections[name].setdefault("enabled", True)
    zipped = sweep.pop("zip", None)
    overridden_zip = False
    origins = {}
    sweep_origins = {}  # "section.key" -> the --set that gave its sweep list

    def shown(table, dotted):
        if dotted in sweep_origins:
            return sweep_origins[dotted]
        name = "[sweep.zip]" if table == "zip" else "[sweep]"
        values = (zipped if table == "zip" else sweep)[dotted]
        return f"{name} {json.dumps(dotted)} = {json.dumps(values) if jsonable(values) else repr(values)}"

    for text in overrides:
        parsed = parse_sweep_override(file, text)
        if parsed is not None:
            table, dotted, value, via = parsed
            if table == "zip":
                if zipped is None:
                    zipped = {}
                if not isinstance(zipped, dict):
                    raise ConfigError(f'{file}: [sweep.zip] must be a table of "section.key" = [values] lists '
                                      "of equal length")
                if dotted in sweep:
                    raise ConfigError(f"{file}: {via}: {json.dumps(dotted)} is swept in [sweep]; replace that "
                                      f'list with --set sweep."{dotted}"=[values]')
                zipped[dotted] = value
            else:
                if isinstance(zipped, dict) and dotted in zipped:
                    raise ConfigError(f"{file}: {via}: {json.dumps(dotted)} is a column of [sweep.zip]; replace "
                                      f'it with --set sweep.zip."{dotted}"=[values] (lists of equal length)')
                sweep[dotted] = value
            sweep_origins[dotted] = via
            continue
        section, name, value, via = parse_override(file, text)
        dotted = f"{section}.{name}"
        sections[section][name] = value
        if dotted in sweep:
            if notes is not None:
                notes.append(f"{via} replaces {shown('sweep', dotted)}: one value instead of a sweep over "
                             f"{dotted}")
            del sweep[dotted]
        if isinstance(zipped, dict) and dotted in zipped:
            if notes is not None:
                notes.append(f"{via} replaces the column {shown('zip', dotted)}: one value instead of a sweep "
                             f"over {dotted} (repeated tuples of the other columns merged)")
            del zipped[dotted]
            overridden_zip = True
        sweep_origins.pop(dotted, None)
        origins[dotted] = via
    zip_axis = _zip_axis(file, zipped, dedupe=overridden_zip, origins=sweep_origins)
    axes = []
    for dotted in sorted(sweep):
        where = sweep_origins.get(dotted) or f"[sweep] {json.dumps(dotted)}"
        section, name = _split_key(file, dotted, where)
        if zip_axis is not None and dotted in zip_axis[0]:
            raise ConfigError(f"{file}: [sweep] {json.dumps(dotted)}: also in [sweep.zip]; give it in one of them")
        values = _sweep_values(file, where, sweep[dotted])
        if not isinstance(values, list) or not values:
            shown_values = "" if dotted in sweep_origins else f" = {values!r}"
            raise ConfigError(f"{file}: {where}{shown_values}: must be a non-empty list of values "
                              "or a range {start = 0, stop = 100} (step = 1)")
        item = f"{where}: value " if dotted in sweep_origins else where
        checked = [_check_value(file, section, name, SCHEMA[section][name], v,
                                via=f"{item}[{i}] = {json.dumps(v) if jsonable(v) else repr(v)}")
                   for i, v in enumerate(values)]
        if len(set(map(json.dumps, checked))) != len(checked):
            raise ConfigError(f"{file}: {where}: values must be distinct")
        axes.append((dotted, section, name, _sort_values(checked)))

    runs = []
    base_dir = os.path.dirname(os.path.abspath(file))
    zip_rows = [()] if zip_axis is None else zip_axis[1]
    zip_keys = [] if zip_axis is None else zip_axis[0]
    products = itertools.product(zip_rows, *(values for *_, values in axes))
    for index, (row, *combination) in enumerate(products):
        raw = copy.deepcopy(sections)
        swept = {}
        for dotted, value in zip(zip_keys, row):
            section, name = dotted.rsplit(".", 1)
            raw[section][name] = value
            swept[dotted] = value
        for (dotted, section, name, _), value in zip(axes, combination):
            raw[section][name] = value
            swept[dotted] = value
        config = resolve(file, raw, base_dir, swept, origins, sweep_origins)
        runs.append(_spec(index, config, swept, file))
    references = _references(runs, file)
    if notes is not None:
        notes.extend(_collapsed_grids(runs))
    return runs + references + _tangents(runs, len(runs) + len(references), file)


def _collapsed_grids(runs) -> list[str]:
    """One line per distinct time grid whose requested times fall on fewer distinct steps (a
    log grid finer than dt near t_min): those times are recorded once."""
    from ..engine._run import record_steps, time_grid

    lines, seen = [], set()
    for spec in runs:
        dynamics, record = spec.config["dynamics"], spec.config["record"]
        dt = time_step(dynamics)
        if dt is None:
            continue  # an adaptive integrator records at the exact times
        key = (dt, dynamics["t_max"], record["times"], record["spacing"], record["t_min"])
        if key in seen:
            continue
        seen.add(key)
        n_steps = int(round(dynamics["t_max"] / dt))
        distinct = len(record_steps(time_grid(dynamics["t_max"], record["times"], record["spacing"],
                                              record["t_min"]), dt, n_steps))
        if distinct < record["times"]:
            lines.append(f"[record] times = {record['times']} ({record['spacing']} from t = "
                         f"{record['t_min'] if record['t_min'] is not None else 0:g}) falls on {distinct} distinct "
                         f"steps of dt = {dt:g}: {record['times'] - distinct} times that round to a step already "
                         "recorded are recorded once")
    return lines


def _sweep_values(file, where, values):
    """A sweep's list of values, or a range table {start, stop, step = 1} expanded into one."""
    if not isinstance(values, dict):
        return values
    allowed = {"start", "stop", "step"}
    text = f"{file}: {where} = {json.dumps(values) if jsonable(values) else repr(values)}"
    unknown = set(values) - allowed
    if unknown or "stop" not in values:
        raise ConfigError(f"{text}: a range must be a table {{start = 0, stop = 100}} with integer start (default 0), "
                          "stop (required) and step (default 1)" + (f"; unknown key {sorted(unknown)[0]!r}"
                                                                    if unknown else ""))
    start, stop, step = values.get("start", 0), values["stop"], values.get("step", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)) or step < 1 \
            or stop <= start:
        raise ConfigError(f"{text}: a range needs integers start < stop and step >= 1")
    return list(range(start, stop, step))


def _zip_axis(file, zipped, dedupe=False, origins=None):
    """The keys and value tuples of ``[sweep.zip]`` (lists of equal length, zipped), or None.
    With ``dedupe`` (a ``--set`` replaced one of its keys) repeated tuples are merged.
    ``origins``: "section.key" -> the ``--set`` that gave a column."""
    origins = origins or {}
    if zipped is None or (dedupe and not zipped):
        return None
    if not isinstance(zipped, dict) or not zipped:
        raise ConfigError(f'{file}: [sweep.zip] must be a table of "section.key" = [values] lists of equal length')
    keys, columns = [], []
    for dotted in sorted(zipped):
        where = origins.get(dotted) or f"[sweep.zip] {json.dumps(dotted)}"
        section, name = _split_key(file, dotted, where)
        values = _sweep_values(file, where, zipped[dotted])
        if not isinstance(values, list) or not values:
            shown_values = "" if dotted in origins else f" = {values!r}"
            raise ConfigError(f"{file}: {where}{shown_values}: must be a non-empty list of values")
        item = f"{where}: value " if dotted in origins else where
        columns.append([_check_value(file, section, name, SCHEMA[section][name], v,
                                     via=f"{item}[{i}] = {json.dumps(v) if jsonable(v) else repr(v)}")
                        for i, v in enumerate(values)])
        keys.append(dotted)
    lengths = {key: len(column) for key, column in zip(keys, columns)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{json.dumps(k)} has {n}" for k, n in lengths.items())
        raise ConfigError(f"{file}: [sweep.zip]: the lists must have equal lengths ({shown})")
    rows = list(zip(*columns))
    if dedupe:
        rows = list({json.dumps(row): row for row in rows}.values())
    if len(set(map(json.dumps, rows))) != len(rows):
        raise ConfigError(f"{file}: [sweep.zip]: the zipped tuples must be distinct")
    return keys, rows


def _spec(index, config, swept, file) -> RunSpec:
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()
    return RunSpec(index, digest[:16], digest, config, swept, file)


def reference_config(config: dict) -> dict:
    """The config of the reference run a member is compared with (width reference_m),
    without its tracer list."""
    reference = copy.deepcopy(config)
    reference["model"]["m"] = config["limit"]["reference_m"]
    reference["limit"] = {"role": "reference", "tracers": config["limit"]["tracers"], "tracer_widths": []}
    return reference


def _references(members: list[RunSpec], file) -> list[RunSpec]:
    """One reference run per group of members that differ only in their width."""
    groups: dict[str, tuple[dict, dict, list]] = {}
    for spec in members:
        if spec.config["limit"]["reference_m"] is None:
            continue
        reference = reference_config(spec.config)
        key = canonical_json(reference)
        swept = {k: v for k, v in spec.swept.items() if k != "model.m"}
        swept["model.m"] = reference["model"]["m"]
        groups.setdefault(key, (reference, swept, []))[2].append(spec.config["model"]["m"])
    references = []
    for offset, (reference, swept, widths) in enumerate(groups.values()):
        if reference["limit"]["tracers"]:
            reference["limit"]["tracer_widths"] = sorted(set(widths))
        references.append(_spec(len(members) + offset, reference, swept, file))
    return references


def tangent_config(config: dict) -> dict:
    """The config of the tangent-model run paired with a ``[lazy] tangent = true`` run."""
    companion = copy.deepcopy(config)
    companion["problem"]["tangent"] = True
    companion["lazy"] = {"test_samples": config["lazy"]["test_samples"], "tangent": False, "role": "tangent"}
    return companion


def _tangents(members: list[RunSpec], start: int, file) -> list[RunSpec]:
    """One tangent-model run per run with ``[lazy] tangent = true`` (same seed, same W0)."""
    companions = []
    for spec in members:
        if spec.config.get("lazy", {}).get("tangent"):
            swept = dict(spec.swept, **{"problem.tangent": True})
            companions.append(_spec(start + len(companions), tangent_config(spec.config), swept, file))
    return companions


def _check_lazy(config: dict, fail) -> None:
    """Cross-key rules of ``[problem] tangent`` and the ``[lazy]`` table."""
    problem, lazy, limit = config["problem"], config["lazy"], config["limit"]
    sample = problem["kind"] == "finite_data" or problem["method"] == "monte_carlo"
    needs = ('the tangent model is evaluated on a sample: needs kind = "finite_data", or kind = "population" '
             'with method = "monte_carlo"')
    for section, name, on in (("problem", "tangent", problem["tangent"]), ("lazy", "tangent", lazy["tangent"])):
        if on and not sample:
            fail(section, name, needs)
        if on and limit["reference_m"] is not None:
            fail(section, name, "[limit] moves tracers in the field of a measure, which the tangent model "
                                "does not have: remove [limit] reference_m")
    if lazy["tangent"] and problem["tangent"]:
        fail("lazy", "tangent", "this run trains the tangent model already ([problem] tangent = true)")
    if lazy["tangent"] and lazy["test_samples"] is None:
        fail("lazy", "tangent", "the distance to the tangent model is measured on a held-out sample: "
                                "set test_samples (an integer >= 1)")
    if lazy["test_samples"] is not None:
        if problem["data"] is not None:
            fail("lazy", "test_samples", "the held-out sample is drawn from the teacher, which a data file "
                                         "does not have: use n_samples or kind = \"population\"")
        if not config["record"]["particles"]:
            fail("record", "particles", "[lazy] measures from the recorded particles: set particles = true")
        lazy["role"] = "tangent" if problem["tangent"] else "network"


def resolve(file, raw: dict, base_dir: str, swept: dict, origins=None, sweep_origins=None) -> dict:
    """Fill defaults, check types, ranges and cross-key constraints of one run."""

    def via(section, name):
        dotted = f"{section}.{name}"
        if dotted in swept:
            if dotted in (sweep_origins or {}):
                return f"{sweep_origins[dotted]}: {dotted} = {json.dumps(swept[dotted])}"
            return f"[sweep] {json.dumps(dotted)} = {json.dumps(swept[dotted])}"
        return (origins or {}).get(dotted)

    adaptive = _adaptive(raw["dynamics"].get("integrator"))
    config = {section: fill_section(file, section, keys, raw[section], via,
                                    ("step",) if section == "dynamics" and adaptive else ())
              for section, keys in SCHEMA.items()}
    if config["problem"]["seed"] is None:
        del config["problem"]["seed"]  # absent: the problem's streams follow run.seed, as before the key existed

    def fail(section, name, text):
        where = via(section, name) or f"[{section}] {name}"
        raise ConfigError(f"{file}: {where}: {text}")

    context = RuleContext(file, raw, base_dir, fail, via)
    for rule in CROSS_KEY_RULES:  # in order: the first broken rule is the one reported
        rule(config, context)
    return config


@dataclass(frozen=True)
class RuleContext:
    """What a cross-key rule may use besides the config: the file (for messages), its raw
    sections, its folder (for data paths), ``fail(section, name, text)`` (raises ConfigError
    naming where the value came from) and ``via(section, name)``."""

    file: str
    raw: dict
    base_dir: str
    fail: object
    via: object


def _rules_of_model(config: dict, context: RuleContext) -> None:
    model, init, fail = config["model"], config["init"], context.fail
    if model["scaling"] == "sum" and model["train_readout"]:
        fail("model", "scaling", 'the "sum" scaling freezes the readout c = 1: set train_readout = false')
    if init["symmetric"] and model["m"] % 2:
        fail("model", "m", f"a symmetric init pairs particles: m must be even, got {model['m']}")
    if init["symmetric"] and model["scaling"] == "sum":
        fail("init", "symmetric", 'a symmetric init negates c, which the "sum" scaling fixes to 1')


def _rules_of_problem(config: dict, context: RuleContext) -> None:
    model, problem, teacher, fail = config["model"], config["problem"], config["problem.teacher"], context.fail
    if teacher["activation"] is None:
        teacher["activation"] = model["activation"]
    if teacher["kind"] == "orthonormal" and teacher["bias"]:
        fail("problem.teacher", "bias", 'an orthonormal teacher has no bias; use kind = "random"')
    if teacher["kind"] == "orthonormal" and teacher["k"] > model["d"]:
        fail("problem.teacher", "k", f"an orthonormal teacher needs k <= d = {model['d']}, got {teacher['k']}")
    if LOSS_ENTRIES[problem["loss"]].classification and problem["noise_std"] > 0:
        fail("problem", "noise_std", f"Gaussian label noise is for the squared loss; the {problem['loss']} "
                                     "loss uses flip_prob")
    if problem["kind"] == "population":
        for name in ("n_samples", "data"):
            if problem[name] is not None:
                fail("problem", name, 'only for kind = "finite_data"')
        pair_ok, _, closed_ok = method_applies(problem["loss"], model["activation"], teacher["activation"],
                                               model["bias"], teacher["bias"])
        if problem["method"] == "closed_form" and not closed_ok:
            fail("problem", "method", '"closed_form" needs the squared loss and the same activation in student '
                                      f"and teacher, one of {', '.join(BIAS_CLOSED_FORM_ACTIVATIONS)} "
                                      f"({', '.join(CLOSED_FORM_ACTIVATIONS)} without bias)")
        if problem["method"] in ("quadrature", "series") and not pair_ok:
            fail("problem", "method", f'"{problem["method"]}" needs the squared loss and the teacher activation '
                                      "equal to the model's")
    else:
        if (problem["n_samples"] is None) == (problem["data"] is None):
            fail("problem", "n_samples", 'kind = "finite_data" needs exactly one of n_samples (data drawn '
                                         "from the teacher) or data (a .npz file)")
        if problem["method"] != "auto":
            fail("problem", "method", 'only for kind = "population"')
        if problem["data"] is not None:
            problem["data"], problem["data_sha256"] = _check_data(
                context.file, context.base_dir, problem["data"], model["d"], problem["loss"],
                context.via("problem", "data"))


def _rules_of_flow(config: dict, context: RuleContext) -> None:
    _check_flow(config, context.raw, context.fail, context.via)


def _rules_of_dynamics(config: dict, context: RuleContext) -> None:
    problem, dynamics, record, fail = config["problem"], config["dynamics"], config["record"], context.fail
    integrator = dynamics["integrator"]
    entry = INTEGRATOR_ENTRIES[integrator]
    for key, what in entry.requires.items():
        if dynamics[key] is None:
            fail("dynamics", key, f'"{integrator}" needs {what}')
    if "batch_size" not in entry.keys and dynamics["batch_size"] is not None:
        fail("dynamics", "batch_size", f'not used by "{integrator}"; use '
                                       f'{_integrators_where(lambda e: "batch_size" in e.keys)}')
    if problem["kind"] == "finite_data" and dynamics["batch_size"] is not None and problem["n_samples"] is not None:
        if dynamics["batch_size"] > problem["n_samples"]:
            fail("dynamics", "batch_size", f"must be <= n_samples = {problem['n_samples']}")
    dt = time_step(dynamics)
    if dt is not None and dynamics["t_max"] < dt:
        fail("dynamics", "t_max", f"must be at least one step of dt = {dt:g}")
    if record["t_min"] is not None and record["t_min"] >= dynamics["t_max"]:
        fail("record", "t_min", f"must be < t_max = {dynamics['t_max']:g}")


def _rules_of_limit(config: dict, context: RuleContext) -> None:
    model, init, record, limit, fail = config["model"], config["init"], config["record"], config["limit"], context.fail
    if limit["reference_m"] is None:
        return
    entry = INTEGRATOR_ENTRIES[config["dynamics"]["integrator"]]
    if not record["particles"]:
        fail("record", "particles", "[limit] compares particle clouds: the particles must be recorded")
    if limit["tracers"] and not entry.tracers:
        fail("limit", "tracers", f'"{config["dynamics"]["integrator"]}" does not couple tracers: set tracers = '
                                 f"false or use {_integrators_where(lambda e: e.tracers and e.time_step)}")
    if limit["tracers"] and init["symmetric"]:
        fail("limit", "tracers", "a symmetric init pairs particles, so a narrow init is not part of the "
                                 "reference's: set tracers = false")
    if limit["tracers"] and model["m"] > limit["reference_m"]:
        fail("model", "m", f"tracers start at the member's particles inside the reference: m must be <= "
                           f"reference_m = {limit['reference_m']}, got {model['m']}")
    limit["role"] = "member"


def _rules_of_backend(config: dict, context: RuleContext) -> None:
    if config["run"]["backend"] != "cuda":
        return
    integrator = config["dynamics"]["integrator"]
    entry = INTEGRATOR_ENTRIES[integrator]
    if entry.device_update is None and entry.time_step is not None:
        context.fail("dynamics", "integrator", f'"{integrator}" has no CUDA twin: use backend = "cpu" or '
                                                f"{_integrators_where(lambda e: e.device_update is not None)}")
    _check_cuda(context.fail)


def _rules_of_lazy(config: dict, context: RuleContext) -> None:
    _check_lazy(config, context.fail)


def _rules_of_landscape(config: dict, context: RuleContext) -> None:
    if not config["landscape"]["enabled"]:
        return
    if config["model"]["dtype"] != "float64":
        context.fail("model", "dtype", '[landscape] descends to a gradient norm of 1e-9 and needs "float64"')
    if not INTEGRATOR_ENTRIES[config["dynamics"]["integrator"]].deterministic:
        context.fail("dynamics", "integrator", '[landscape] classifies the end points of deterministic runs: use '
                                                f"{_integrators_where(lambda e: e.deterministic)}")
    if config["dynamics"].get("weight_decay"):
        # The precise descent and the Hessian are those of F: a decayed run's end point is a
        # stationary point of F + (lambda/2m) sum |w|^2 instead, and would be misclassified.
        context.fail("dynamics", "weight_decay", "[landscape] classifies critical points of the risk without "
                                                 "decay: needs weight_decay = 0")


def _rules_of_connectivity(config: dict, context: RuleContext) -> None:
    if not config["connectivity"]["enabled"]:
        return
    teacher, problem = config["problem.teacher"], config["problem"]
    if (teacher["kind"] != "orthonormal" or teacher["rotate"] or problem["kind"] != "population"
            or problem["method"] == "monte_carlo"):
        context.fail("connectivity", "enabled", "pairs runs of different seeds, which must train on the same "
                                                'problem: needs kind = "population" (not "monte_carlo") with an '
                                                "orthonormal, unrotated teacher")
    if config["limit"]["reference_m"] is not None:
        context.fail("connectivity", "enabled", "[connectivity] and [limit] pair runs differently: use one per file")


def _rules_of_classification(config: dict, context: RuleContext) -> None:
    """``[record] classification``: measured on the training set of a finite-data problem with
    labels +-1, from the network's particles on the CPU; dropped from the resolved config when
    false (the ids of other runs stay)."""
    record, problem, fail = config["record"], config["problem"], context.fail
    if not record["classification"]:
        del record["classification"]
        return
    if problem["kind"] != "finite_data":
        fail("record", "classification", 'the margin and the errors are measured on the training set: needs '
                                         'kind = "finite_data"')
    if not LOSS_ENTRIES[problem["loss"]].classification:
        classification_losses = _quoted(name for name, entry in LOSS_ENTRIES.items() if entry.classification)
        fail("record", "classification", f"needs labels +-1: loss = {classification_losses}, "
                                         f'not "{problem["loss"]}"')
    if problem["tangent"]:
        fail("record", "classification", "measures the network, not the tangent model: needs tangent = false")
    if config["run"]["backend"] != "cpu":
        fail("record", "classification", 'the observables are evaluated on the CPU: needs backend = "cpu"')


def _rules_of_weight_decay(config: dict, context: RuleContext) -> None:
    """The weight decay lambda(t) of ``[dynamics]`` (``WeightDecay``): its keys need an
    integrator that reads them, a schedule needs its own parameter and no other; the schedule
    keys are dropped from the resolved config at their defaults (the ids of other runs stay) and
    when weight_decay = 0, where every schedule is lambda(t) = 0: so a ``[sweep]`` over
    ``dynamics.weight_decay = [0.0, ...]`` with a schedule holds the run without decay, with the
    id and file of a run that gives no schedule."""
    dynamics, fail = config["dynamics"], context.fail
    integrator = dynamics["integrator"]
    entry = INTEGRATOR_ENTRIES[integrator]
    schedule, start, tau = (dynamics["weight_decay_schedule"], dynamics["weight_decay_start"],
                            dynamics["weight_decay_time"])
    given = {"weight_decay": dynamics["weight_decay"] != 0, "weight_decay_schedule": schedule != "constant",
             "weight_decay_start": start is not None, "weight_decay_time": tau is not None}
    for name, on in given.items():
        if on and name not in entry.keys:
            fail("dynamics", name, f'not used by "{integrator}"; use {_integrators_where(lambda e: name in e.keys)}')
    if schedule == "step" and start is None:
        fail("dynamics", "weight_decay_schedule", '"step" switches the decay on at t = weight_decay_start: '
                                                  "set weight_decay_start (a number >= 0)")
    if schedule != "step" and start is not None:
        fail("dynamics", "weight_decay_start", f'only for weight_decay_schedule = "step", not "{schedule}"')
    if schedule == "anneal" and tau is None:
        fail("dynamics", "weight_decay_schedule", '"anneal" is lambda_0 / (1 + t / weight_decay_time): set '
                                                  "weight_decay_time (a number > 0)")
    if schedule != "anneal" and tau is not None:
        fail("dynamics", "weight_decay_time", f'only for weight_decay_schedule = "anneal", not "{schedule}"')
    no_decay = dynamics["weight_decay"] == 0
    if config["run"]["backend"] == "cuda" and entry.device_update is not None and not no_decay:
        for name, on in given.items():
            if on and name not in entry.device_keys:
                fail("dynamics", name, f'"{integrator}" applies no {name} on the GPU: use backend = "cpu" or '
                                       f"{_integrators_where(lambda e: name in e.device_keys)}")
    for name, default in (("weight_decay_schedule", "constant"), ("weight_decay_start", None),
                          ("weight_decay_time", None)):
        if no_decay or dynamics[name] == default:
            del dynamics[name]


def _rules_of_order_parameters(config: dict, context: RuleContext) -> None:
    """``[record] order_parameters``: the overlaps with a teacher (and the biases) of a network,
    from its particles on the CPU, one series per order parameter (so a narrow network); dropped
    from the resolved config when false (the ids of other runs stay)."""
    record, problem, model, fail = config["record"], config["problem"], config["model"], context.fail
    if not record["order_parameters"]:
        del record["order_parameters"]
        return
    if problem["data"] is not None:
        fail("record", "order_parameters", "the overlaps are with the teacher: a data file has none")
    if problem["tangent"]:
        fail("record", "order_parameters", "measures the network, not the tangent model: needs tangent = false")
    if config["run"]["backend"] != "cpu":
        fail("record", "order_parameters", 'the observables are evaluated on the CPU: needs backend = "cpu"')
    count = series_count(model["m"], config["problem.teacher"]["k"], model["bias"])
    if count > ORDER_PARAMETER_MAX_SERIES:
        formula = "m (m + k) + 2 m" if model["bias"] else "m (m + k) + m"
        fail("record", "order_parameters", f"one series per order parameter, {formula} = {count}: at most "
                                            f"{ORDER_PARAMETER_MAX_SERIES} (a narrow committee)")


# The cross-key rules, one function per feature, applied in this order by resolve(): a new
# feature's rules are one function and one entry here.
CROSS_KEY_RULES = (_rules_of_model, _rules_of_problem, _rules_of_flow, _rules_of_dynamics,
                   _rules_of_weight_decay, _rules_of_limit, _rules_of_backend, _rules_of_lazy,
                   _rules_of_landscape, _rules_of_connectivity, _rules_of_classification,
                   _rules_of_order_parameters)


def _check_flow(config: dict, raw: dict, fail, via=None) -> None:
    """Cross-key rules of the "flow" integrator and of ``[record] step_error``; drops the flow keys
    from the configs of other integrators and step_error when false (their ids stay unchanged)."""
    dynamics, record = config["dynamics"], config["record"]
    integrator = dynamics["integrator"]
    if _adaptive(integrator):
        dynamics["step"] = None  # the solver chooses its steps; a given step is not used
        for name in ("batch_size", "beta"):
            if dynamics[name] is not None:
                fail("dynamics", name, f'not used by "{integrator}" (the exact, deterministic gradient flow)')
        if config["run"]["backend"] != "cpu":
            fail("run", "backend", f'"{integrator}" runs on the CPU (scipy\'s solvers); allowed: "cpu"')
        if config["limit"]["reference_m"] is not None or config["lazy"]["tangent"]:
            section, name = (("limit", "reference_m") if config["limit"]["reference_m"] is not None
                             else ("lazy", "tangent"))
            fail(section, name, f'pairs records of two runs by their step, which "{integrator}" (adaptive steps) '
                                f"does not share: use {_integrators_where(lambda e: e.deterministic)}")
    else:
        # A swept integrator may meet flow keys meant for its flow runs: those are dropped.
        swept_integrator = via is not None and via("dynamics", "integrator") is not None
        for name in FLOW_KEYS:
            if name in raw["dynamics"] and not swept_integrator:
                fail("dynamics", name, f"only for integrator = {_integrators_where(lambda e: name in e.keys)}, "
                                       f'not "{integrator}"')
            del dynamics[name]
    if record["step_error"]:
        if dynamics["weight_decay"] != 0:
            fail("record", "step_error", "measures the distance to the exact flow of F, which has no weight "
                                         "decay: needs weight_decay = 0")
        if not INTEGRATOR_ENTRIES[integrator].deterministic:
            fail("record", "step_error", "measures the distance of a fixed-step run to the exact flow: needs "
                                         f"integrator = {_integrators_where(lambda e: e.deterministic)}, "
                                         f'not "{integrator}"')
        if config["run"]["backend"] != "cpu":
            fail("record", "step_error", 'the exact flow is integrated on the CPU: needs backend = "cpu"')
    else:
        del record["step_error"]
    if record["test_samples"] is None:
        del record["test_samples"]  # absent from the resolved config: the ids of other runs stay
    else:
        problem = config["problem"]
        if problem["kind"] != "finite_data":
            fail("record", "test_samples", 'the population risk is the test risk already: needs kind = '
                                           '"finite_data"')
        if problem["data"] is not None:
            fail("record", "test_samples", "the held-out sample is drawn from the teacher, which a data file "
                                           "does not have: use n_samples")
        if config["lazy"]["test_samples"] is not None:
            fail("record", "test_samples", "[lazy] test_samples records test_risk after the run already: "
                                           "give one of them")
        if config["run"]["backend"] != "cpu":
            fail("record", "test_samples", 'the held-out risk is evaluated on the CPU: needs backend = "cpu"')


def _check_cuda(fail) -> None:
    """The CUDA backend needs a usable GPU (or numba's CUDA simulator)."""
    from ..engine._cuda import cuda_status

    usable, why = cuda_status()
    if not usable:
        fail("run", "backend", f'"cuda" is not usable here ({why}); allowed: "cpu"')


def _check_data(file, base_dir, data, d, loss, via):
    where = via or "[problem] data"
    path = data if os.path.isabs(data) else os.path.join(base_dir, data)
    if not os.path.isfile(path):
        raise ConfigError(f"{file}: {where} = {json.dumps(data)}: no such file (looked at {path}); "
                          "must be a .npz file with arrays X (N, d) and y (N,)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            X, y = archive["X"], archive["y"]
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{file}: {where} = {json.dumps(data)}: cannot read arrays X and y from it "
                          f"({type(error).__name__}: {error}); must be a .npz file with arrays X (N, d) "
                          "and y (N,)") from None
    if X.ndim != 2 or X.shape[1] != d or X.shape[0] < 1 or y.shape != (X.shape[0],):
        raise ConfigError(f"{file}: {where} = {json.dumps(data)}: X has shape {X.shape} and y {y.shape}; "
                          f"must be X (N, d) = (N, {d}) and y (N,)")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ConfigError(f"{file}: {where} = {json.dumps(data)}: X or y contains NaN or inf")
    if LOSS_ENTRIES[loss].classification and not np.isin(y, (-1.0, 1.0)).all():
        raise ConfigError(f"{file}: {where} = {json.dumps(data)}: the {loss} loss needs labels y in {{-1, +1}}")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return os.path.abspath(path), digest
