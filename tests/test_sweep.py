"""Experiment files, HDF5 runs, sweeps: validation, layout, skip, reshard, lock, kill and resume."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from meanfield import io, sweep
from meanfield.cli import main
from meanfield.io import _catalog
from meanfield.io._store import RunLock, read_checkpoint

BASE = {
    "model": {"d": 4, "m": 8, "activation": "relu"},
    "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
    "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 5.0},
    "record": {"times": 6},
}


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def toml_text(doc: dict) -> str:
    """A TOML file for nested dicts of plain values (tables one level deep, plus sub-tables)."""
    lines = []
    for section, content in doc.items():
        plain = {k: v for k, v in content.items() if not isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k) if '.' in k else k} = {_value(v)}" for k, v in plain.items()]
        for sub, table in content.items():
            if isinstance(table, dict):
                lines.append(f"[{section}.{sub}]")
                lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path, doc, name="exp.toml"):
    path = tmp_path / name
    path.write_text(toml_text(doc))
    return path


def merged(**changes):
    """BASE with section-level updates; a value None deletes the key."""
    doc = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        table = doc
        for section in sections:
            table = table.setdefault(section, {})
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return doc


# --------------------------------------------------------------------------- validation
def _npz(tmp_path, name, X, y):
    path = tmp_path / name
    np.savez(path, X=X, y=y)
    return name


def _bad_cases():
    return [
        ("unknown section", lambda t: merged(modle={"d": 3}), "unknown section [modle]"),
        ("unknown key", lambda t: merged(model__widht=8), "[model] unknown key 'widht'"),
        ("m zero", lambda t: merged(model__m=0), "[model] m = 0: must be an integer >= 1"),
        ("m float", lambda t: merged(model__m=2.5), "[model] m = 2.5: must be an integer >= 1"),
        ("d string", lambda t: merged(model__d="ten"), '[model] d = "ten": must be an integer >= 1'),
        ("d missing", lambda t: merged(model__d=None), "[model] d is required: an integer >= 1"),
        ("activation", lambda t: merged(model__activation="swish"),
         '[model] activation = "swish": must be one of "relu", "sigmoid", "tanh", "erf", "softplus", "linear"'),
        ("step zero", lambda t: merged(dynamics__step=0.0), "[dynamics] step = 0.0: must be a number > 0"),
        ("step negative", lambda t: merged(dynamics__step=-1), "[dynamics] step = -1: must be a number > 0"),
        ("negative time", lambda t: merged(dynamics__t_max=-5.0), "[dynamics] t_max = -5.0: must be a number > 0"),
        ("time below a step", lambda t: merged(dynamics__t_max=0.1), "[dynamics] t_max: must be at least one step"),
        ("alpha zero", lambda t: merged(model__alpha=0), '[model] alpha = 0: must be a number > 0 or "sqrt_m"'),
        ("alpha word", lambda t: merged(model__alpha="big"), '[model] alpha = "big": must be a number > 0 or "sqrt_m"'),
        ("integrator", lambda t: merged(dynamics__integrator="adam"),
         '[dynamics] integrator = "adam": must be one of "gradient_descent", "heavy_ball", '
         '"weight_normalized_descent", "sgd", "langevin", "flow"'),
        ("sgd batch", lambda t: merged(dynamics__integrator="sgd"), '[dynamics] batch_size: "sgd" needs a batch_size'),
        ("langevin beta", lambda t: merged(dynamics__integrator="langevin"), '[dynamics] beta: "langevin" needs'),
        ("batch for gd", lambda t: merged(dynamics__batch_size=4),
         '[dynamics] batch_size: not used by "gradient_descent"'),
        ("flip prob", lambda t: merged(problem__flip_prob=0.7),
         "[problem] flip_prob = 0.7: must be a number >= 0 and < 0.5"),
        ("k > d", lambda t: merged(problem__teacher__k=9),
         "[problem.teacher] k: an orthonormal teacher needs k <= d = 4"),
        ("teacher key", lambda t: merged(problem__teacher__width=2), "[problem.teacher] unknown key 'width'"),
        ("closed form tanh", lambda t: merged(model__activation="tanh", problem__method="closed_form"),
         '[problem] method: "closed_form" needs the squared loss'),
        ("odd symmetric", lambda t: merged(model__m=7, init={"symmetric": True}), "[model] m: a symmetric init pairs"),
        ("sum scaling", lambda t: merged(model__scaling="sum"),
         '[model] scaling: the "sum" scaling freezes the readout'),
        ("times", lambda t: merged(record__times=1), "[record] times = 1: must be an integer >= 2"),
        ("backend", lambda t: merged(run={"backend": "tpu"}), '[run] backend = "tpu": must be one of "cpu", "cuda"'),
        ("noise with logistic", lambda t: merged(problem__loss="logistic", problem__noise_std=0.1),
         "[problem] noise_std: Gaussian label noise is for the squared loss"),
        ("sweep bad value", lambda t: merged(sweep={"model.m": [8, 0]}),
         '[sweep] "model.m"[1] = 0: must be an integer >= 1'),
        ("sweep unknown key", lambda t: merged(sweep={"model.width": [8]}), "unknown key 'model.width'"),
        ("sweep not a list", lambda t: merged(sweep={"model.m": 8}), '[sweep] "model.m" = 8: must be a non-empty list'),
        ("sweep activation", lambda t: merged(sweep={"model.activation": ["relu", "swish"]}),
         '[sweep] "model.activation"[1] = "swish": must be one of'),
        ("finite data both", lambda t: merged(problem__kind="finite_data"),
         "[problem] n_samples: kind = \"finite_data\" needs exactly one of n_samples"),
        ("data missing", lambda t: merged(problem__kind="finite_data", problem__data="nowhere.npz"),
         '[problem] data = "nowhere.npz": no such file'),
        ("data shape", lambda t: merged(problem__kind="finite_data",
                                        problem__data=_npz(t, "shape.npz", np.zeros((5, 3)), np.zeros(5))),
         "X has shape (5, 3) and y (5,); must be X (N, d) = (N, 4) and y (N,)"),
        ("data NaN", lambda t: merged(problem__kind="finite_data",
                                      problem__data=_npz(t, "nan.npz", np.full((5, 4), np.nan), np.zeros(5))),
         "X or y contains NaN or inf"),
        ("data labels", lambda t: merged(problem__kind="finite_data", problem__loss="logistic",
                                         problem__data=_npz(t, "labels.npz", np.zeros((5, 4)), np.arange(5.0))),
         "the logistic loss needs labels y in {-1, +1}"),
    ]


@pytest.mark.parametrize("name, make, expected", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_experiment_files_exit_2_with_one_clear_message(tmp_path, capsys, name, make, expected):
    """Each bad input: exit status 2, one line on stderr naming the file, the key and what is
    allowed, nothing on stdout, and no output directory created."""
    path = write(tmp_path, make(tmp_path))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"meanfield run: {path}: ")
    assert expected in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--set", "model.widht=3"], "--set model.widht=3: unknown key 'model.widht'"),
    (["--set", "model.m=-3"], "--set model.m=-3: must be an integer >= 1"),
    (["--set", "model.m"], "--set model.m: expected section.key=value"),
    (["--jobs", "0"], "--jobs must be an integer >= 1"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, expected):
    """Bad command-line overrides are reported like bad files."""
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), *args]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_missing_and_invalid_files(tmp_path, capsys):
    """A file that does not exist or is not TOML: exit 2 and the reason."""
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    assert "no such experiment file" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd = 3\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


# --------------------------------------------------------------------------- plans and seeds
def test_sweep_is_the_sorted_cartesian_product_with_stable_ids(tmp_path):
    """Runs are the product of the sweep values (keys and values sorted); ids depend only on
    the resolved config, not on the order in the file."""
    a = write(tmp_path, merged(sweep={"run.seed": [1, 0], "model.m": [16, 8]}), "a.toml")
    b = write(tmp_path, merged(sweep={"model.m": [8, 16], "run.seed": [0, 1]}), "b.toml")
    plan_a, plan_b = sweep.plan(a), sweep.plan(b)
    assert [s.swept for s in plan_a] == [{"model.m": 8, "run.seed": 0}, {"model.m": 8, "run.seed": 1},
                                         {"model.m": 16, "run.seed": 0}, {"model.m": 16, "run.seed": 1}]
    assert [s.id for s in plan_a] == [s.id for s in plan_b]
    assert len({s.id for s in plan_a}) == 4
    assert plan_a[0].config["model"]["m"] == 8 and plan_a[0].config["init"]["tau"] == 1.0
    assert sweep.plan(a, ["dynamics.step=0.25"])[0].id != plan_a[0].id


def test_streams_come_from_the_run_identity():
    """Each stream is SeedSequence(root_seed, spawn_key=(seed, stream)): equal for equal
    identities, different across seeds and streams."""
    config = {"run": {"seed": 3, "root_seed": 11}}
    ss = sweep.seed_sequence(config, "dynamics")
    assert ss.entropy == 11 and ss.spawn_key == (3, 2)
    draws = {(seed, stream): sweep.generator({"run": {"seed": seed, "root_seed": 11}}, stream).random()
             for seed in (0, 1) for stream in ("init", "problem", "dynamics")}
    assert len(set(draws.values())) == 6
    assert sweep.generator(config, "init").random() == sweep.generator(dict(config), "init").random()


# --------------------------------------------------------------------------- HDF5 runs
def _datasets(path):
    """Every dataset of a run file as arrays; of the checkpoint only the last complete one
    (the other slot holds an earlier checkpoint whose time depends on the wall clock)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("checkpoint/"):
                out[name] = obj[()]
        f.visititems(visit)
        checkpoint = read_checkpoint(f)
        for key, value in checkpoint.items():
            if key == "buffers":
                out.update({f"checkpoint/buffers/{k}": v for k, v in value.items()})
            else:
                out[f"checkpoint/{key}"] = np.asarray(json.dumps(value) if key in ("rng_state", "info") else value)
        attrs = {k: f.attrs[k] for k in ("config", "config_sha256", "status", "run_id", "integrator_info")
                 if k in f.attrs}
    return out, attrs


def test_run_file_layout(tmp_path):
    """One run writes the H5MD-style layout: metadata, series with time scales, parameters,
    checkpoint; the file alone reproduces the recorded risk."""
    path = write(tmp_path, merged(record__particles_dtype="float32"))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    (spec,) = sweep.plan(path)
    file = out / f"{spec.id}.h5"
    assert file.exists() and not (out / f"{spec.id}.h5.part").exists()
    with h5py.File(file, "r") as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert f["h5md/creator"].attrs["name"] == "meanfield"
        assert f.attrs["status"] == "complete"
        assert f.attrs["config_sha256"] == spec.sha256
        config = json.loads(f.attrs["config"])
        assert config == spec.config
        versions = json.loads(f.attrs["versions"])
        assert {"numpy", "numba", "h5py", "meanfield"} <= set(versions)
        assert f.attrs["host"] and f.attrs["start_time"] and f.attrs["end_time"]
        position = f["particles/neurons/position"]
        value = position["value"]
        assert value.shape == (6, 8, 6) and value.dtype == np.float32
        assert list(value.attrs["columns"]) == ["a_0", "a_1", "a_2", "a_3", "b", "c"]
        assert value.compression == "gzip" and value.shuffle
        assert value.dims[0][0].name.endswith("/time") and value.dims[1][0].name.endswith("/particle")
        np.testing.assert_allclose(position["time"][()], [0, 1, 2, 3, 4, 5])
        np.testing.assert_array_equal(position["step"][()], [0, 2, 4, 6, 8, 10])
        risk = f["observables/risk/value"][()]
        assert risk.shape == (6,) and np.all(np.diff(risk) < 0)
        assert f["parameters/teacher/position"].shape == (2, 6)
        assert f["parameters/model"].attrs["output_scale"] == 1 / 8
        checkpoint = read_checkpoint(f)
        W_last = checkpoint["W"]
        assert W_last.dtype == np.float64 and checkpoint["step"] == 10 and checkpoint["records"] == 6
    # the file alone is enough to recompute the risk of its final state
    experiment = sweep.build(config)
    assert experiment.problem.risk(W_last) == pytest.approx(risk[-1], rel=1e-12)
    with h5py.File(file, "r") as f:
        np.testing.assert_array_equal(f["particles/neurons/position/value"][-1], W_last.astype(np.float32))


@pytest.mark.parametrize("activation, method, words", [
    ("relu", "closed_form", "closed form with biases"),
    ("tanh", "series", "Hermite (Mehler) series"),
])
def test_run_file_says_how_the_population_risk_was_computed(tmp_path, activation, method, words):
    """The run file names the method and describes it: for the series, with the velocity error
    bound of the last evaluation."""
    doc = merged(model__activation=activation, model__bias=True, problem__teacher={"kind": "random", "k": 2})
    path = write(tmp_path, doc)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    (spec,) = sweep.plan(path)
    with h5py.File(out / f"{spec.id}.h5", "r") as f:
        assert f.attrs["method"] == method
        assert words in f.attrs["method_description"]
        if method == "series":
            assert "|error| <=" in f.attrs["method_description"]


def test_finished_runs_are_skipped_and_index_links_every_run(tmp_path, capsys):
    """A second invocation skips finished runs without touching them; index.h5 links every
    run file and catalog.csv has one row per run."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 16], "run.seed": [0, 1]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    files = sorted(out.glob("*.h5"))
    files.remove(out / "index.h5")
    assert len(files) == 4
    stamps = {p: p.stat().st_mtime_ns for p in files}
    summaries = sweep.run_shard(path, out)
    assert [s["status"] for s in summaries] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    with h5py.File(out / "index.h5", "r") as index:
        assert sorted(index) == sorted(p.stem for p in files)
        for run_id in index:
            assert index[run_id].attrs["run_id"] == run_id
    lines = (out / "catalog.csv").read_text().splitlines()
    assert len(lines) == 5 and "model.m" in lines[0] and "final_risk" in lines[0]
    assert main(["status", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("complete") == 4


def test_resharding_reproduces_the_same_runs(tmp_path):
    """Running a sweep in 3 shards gives bitwise the same files as running it whole."""
    doc = merged(dynamics__integrator="langevin", dynamics__beta=50.0, dynamics__batch_size=16,
                 sweep={"model.m": [8, 12], "run.seed": [0, 1, 2]})
    path = write(tmp_path, doc)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    sweep.run_shard(path, whole)
    for task in range(3):
        assert main(["run", str(path), "--out", str(sharded), "--quiet", "--task-index", str(task),
                     "--task-count", "3"]) == 0
    specs = sweep.plan(path)
    for spec in specs:
        a, attrs_a = _datasets(whole / f"{spec.id}.h5")
        b, attrs_b = _datasets(sharded / f"{spec.id}.h5")
        assert attrs_a == attrs_b
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # and different seeds really are different runs
    first, _ = _datasets(whole / f"{specs[0].id}.h5")
    second, _ = _datasets(whole / f"{specs[1].id}.h5")
    assert not np.array_equal(first["checkpoint/W"], second["checkpoint/W"])


def test_a_second_writer_is_refused(tmp_path, capsys):
    """While a run is locked by another writer, the run is refused with a clear message."""
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    out.mkdir()
    (spec,) = sweep.plan(path)
    _, part, lock = sweep.paths(out, spec)
    with RunLock(lock):
        summary = sweep.execute(spec, out)
        assert summary["status"] == "locked"
        assert "being written by pid" in summary["message"]
        assert main(["run", str(path), "--out", str(out)]) == 1
        assert "locked" in capsys.readouterr().out
    assert not os.path.exists(part)
    assert sweep.execute(spec, out)["status"] == "complete"


def test_one_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    """A run that raises is reported as failed with its error; the other runs complete."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 10, 12]}))
    real_build = sweep.build

    def build(config):
        if config["model"]["m"] == 10:
            raise RuntimeError("boom")
        return real_build(config)

    monkeypatch.setattr(sweep, "build", build)
    summaries = sweep.run_shard(path, tmp_path / "out")
    assert [s["status"] for s in summaries] == ["complete", "failed", "complete"]
    assert "RuntimeError: boom" in summaries[1]["message"]


def test_parallel_jobs_give_the_same_files(tmp_path):
    """--jobs 2 (spawned processes) writes the same runs as one process."""
    path = write(tmp_path, merged(sweep={"run.seed": [0, 1]}))
    sweep.run_shard(path, tmp_path / "one")
    assert main(["run", str(path), "--out", str(tmp_path / "two"), "--jobs", "2", "--quiet"]) == 0
    for spec in sweep.plan(path):
        a, _ = _datasets(tmp_path / "one" / f"{spec.id}.h5")
        b, _ = _datasets(tmp_path / "two" / f"{spec.id}.h5")
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --------------------------------------------------------------------------- kill and resume
KILL_DOC = {
    "model": {"d": 8, "m": 48, "activation": "tanh", "bias": True},
    "problem": {"kind": "finite_data", "n_samples": 1500, "teacher": {"kind": "random", "k": 3}},
    "dynamics": {"integrator": "langevin", "step": 0.01, "t_max": 40.0, "beta": 1000.0, "batch_size": 200},
    "record": {"times": 81, "checkpoint_seconds": 0.2},
}


def _cli(path, out, *extra):
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    return [sys.executable, "-m", "meanfield", "run", str(path), "--out", str(out), "--quiet", *extra], env


def _records_so_far(part):
    """Records in a run file that is being written (a reader in SWMR mode, as a notebook would)."""
    try:
        with h5py.File(part, "r", libver="latest", swmr=True) as f:
            return f["observables/risk/value"].shape[0]
    except (OSError, KeyError):
        return 0


@pytest.mark.parametrize("integrator", ["langevin", "heavy_ball"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, integrator):
    """A run killed with SIGKILL at random moments (each time once the live file shows a random
    number of records), resumed after each kill, ends bitwise equal to the uninterrupted run
    (same thread count); the file being written stays readable throughout."""
    doc = json.loads(json.dumps(KILL_DOC))
    if integrator == "heavy_ball":
        doc["dynamics"] = {"integrator": "heavy_ball", "step": 0.002, "momentum": 0.8, "t_max": 40.0}
    path = write(tmp_path, doc)
    (spec,) = sweep.plan(path)
    reference = tmp_path / "reference"
    command, env = _cli(path, reference)
    subprocess.run(command, env=env, check=True)

    out = tmp_path / "killed"
    part = out / f"{spec.id}.h5.part"
    rng = random.Random(integrator)
    targets = sorted(rng.sample(range(3, 78), 4))
    kills = 0
    for target in targets:
        command, env = _cli(path, out)
        process = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if part.exists() and _records_so_far(part) >= target:
                time.sleep(rng.uniform(0, 0.05))  # anywhere between records, checkpoints included
                break
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert not (out / f"{spec.id}.h5").exists() or process.returncode == 0
    assert kills >= 3
    command, env = _cli(path, out, "--resume")
    subprocess.run(command, env=env, check=True)
    a, attrs_a = _datasets(reference / f"{spec.id}.h5")
    b, attrs_b = _datasets(out / f"{spec.id}.h5")
    assert attrs_a == attrs_b and attrs_b["status"] == "complete"
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert h5py.File(out / f"{spec.id}.h5").attrs["resumed"] >= 1


# --------------------------------------------------------------------------- shipped files, report
RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs")
SHIPPED = sorted(name for name in os.listdir(RUNS) if name.endswith(".toml")
                 and "[experiment]" not in open(os.path.join(RUNS, name)).read())  # tests/test_experiments.py


def test_the_shipped_experiment_files_are_there():
    """The main job and the four examples the sweep issue asks for."""
    assert {"quickstart.toml", "width_sweep.toml", "lazy_vs_active.toml", "online_sgd.toml",
            "langevin.toml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiment_files_validate_and_run_shortened(tmp_path, name):
    """Every file in runs/ says what it shows, validates, and runs when shortened."""
    path = os.path.join(RUNS, name)
    with open(path) as handle:
        assert handle.readline().startswith("# ")
    assert len(sweep.plan(path)) >= 1
    short = ["model.m=8", "dynamics.t_max=2.0", "record.times=3", "run.seed=0"]
    summaries = sweep.run_shard(path, tmp_path, overrides=short)
    assert summaries and all(s["status"] == "complete" for s in summaries)


def test_main_job_output_has_the_risk_table_and_plot(tmp_path, capsys):
    """`meanfield run` prints a risk table with one column per width and writes risk.png."""
    path = write(tmp_path, merged(record__spacing="log", record__t_min=0.5,
                                  sweep={"model.m": [8, 32], "run.seed": [0, 1]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.strip().startswith("t "))
    assert header.split()[1:] == ["m=8", "m=32"]
    assert "runs: 4 complete" in text
    png = out / "risk.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


_HOLD_OPEN = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
print("open", flush=True)
time.sleep(float(sys.argv[2]))
f.close()
"""


def _finish_while_read(monkeypatch, hold_s):
    """Make every run's finish start while another process holds its file open for reading,
    as a concurrent shard's ``write_index`` or a notebook watching the run does."""
    from meanfield.io import _store

    real_finish = _store.RunFile.finish
    readers = []

    def finish(self, status, message, extra=None, also=None, publish_now=True):
        reader = subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, self.part_path, str(hold_s)],
                                  stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "open"
        readers.append(reader)
        return real_finish(self, status, message, extra, also, publish_now)

    monkeypatch.setattr(_store.RunFile, "finish", finish)
    return readers


def test_a_reader_holding_the_file_does_not_delay_or_fail_the_finished_run(tmp_path, monkeypatch, capsys):
    """HDF5 refuses to open a file for writing while another process reads it (a CI Slurm
    sweep once lost a run so). Finishing never reopens the file for writing: it writes a copy
    and renames it, so a reader that holds the .part for 4 s neither delays nor fails it."""
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    out.mkdir()
    readers = _finish_while_read(monkeypatch, hold_s=4.0)
    (spec,) = sweep.plan(path)
    summary = sweep.execute(spec, out)
    assert len(readers) == 1
    assert readers[0].poll() is None, "the run should finish while the reader still holds the file"
    assert summary["status"] == "complete", summary["message"]
    final, part, _ = sweep.paths(out, spec)
    assert os.path.exists(final) and not os.path.exists(part)
    with h5py.File(final, "r") as f:
        assert f.attrs["status"] == "complete"
    assert readers[0].wait(timeout=30) == 0
    assert capsys.readouterr().err == ""


def test_quiet_runs_still_report_failures_on_stderr(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, BASE)

    def build(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(sweep, "build", build)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "failed: RuntimeError: boom" in captured.err
    assert captured.out == ""


def test_index_files_are_replaced_whole_with_unique_temporary_names(tmp_path, monkeypatch):
    """index.h5 and catalog.csv are written under a fresh name and renamed into place: two
    shards with the same pid (on two nodes of a cluster) never share a temporary file, a
    failed write leaves neither a temporary file nor a changed index, and the files get the
    umask's permissions like any other output."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 10]}))
    out = tmp_path / "out"
    sweep.run_shard(path, out)
    names = []
    real_file = h5py.File

    def recording_file(name, mode="r", *args, **kwargs):
        if mode == "w":
            names.append(os.path.basename(name))
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(_catalog.h5py, "File", recording_file)
    io.write_index(out)
    io.write_index(out)
    assert len(names) == 2 and names[0] != names[1] and all(n.startswith(".index.h5.") for n in names)
    monkeypatch.setattr(_catalog.h5py, "File", real_file)
    before = (out / "catalog.csv").read_bytes()

    def failing_writerows(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(_catalog.csv.DictWriter, "writerows", failing_writerows)
    with pytest.raises(OSError, match="disk full"):
        io.write_index(out)
    assert (out / "catalog.csv").read_bytes() == before
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("index.h5", "catalog.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_update_beside_a_reader_replaces_the_file_whole(tmp_path):
    """Post-run updates (limits, lazy series, census) write a copy and rename it: a reader
    that holds the file keeps the old version, the next open sees the new one, and no
    temporary or lock file is left."""
    from meanfield.io._store import updating

    path = tmp_path / "x.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["a"] = np.zeros(3)
    reader = subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, str(path), "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with updating(path) as f:
            f.attrs["done"] = 1
            f["a"][1] = 2.0
    finally:
        reader.kill()
        reader.wait()
    with h5py.File(path, "r") as f:
        assert f.attrs["done"] == 1 and f["a"][1] == 2.0
    assert sorted(os.listdir(tmp_path)) == ["x.h5"]
    with pytest.raises(RuntimeError, match="stop"):
        with updating(path) as f:
            f.attrs["done"] = 2
            raise RuntimeError("stop")
    with h5py.File(path, "r") as f:
        assert f.attrs["done"] == 1
    assert sorted(os.listdir(tmp_path)) == ["x.h5"]


def test_an_os_error_after_the_runs_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """An error of the machine (here: a run file held open past the wait while the distances
    to the limit are stored) ends the command with its message and status 1, no traceback;
    the runs themselves are complete."""
    from meanfield import limits

    path = write(tmp_path, merged(limit={"reference_m": 16}, sweep={"model.m": [8, 16]}))

    def held(out_dir, jobs=1):
        raise OSError(11, "another process has held x.h5 open for more than 30 s (HDF5 file lock); "
                          "close it and run the command again")

    monkeypatch.setattr(limits, "compute_missing", held)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meanfield run: [Errno 11] another process has held x.h5 open") and "Traceback" not in err
    statuses = [row["status"] for row in io.catalog_rows(tmp_path / "out")]
    assert len(statuses) >= 2 and set(statuses) == {"complete"}, statuses
