"""[record] options of a first hour: the risk on a held-out sample for finite data, and the note
when a time grid asks for more times than it has distinct steps."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_sweep import merged, write

from meanfield import sweep
from meanfield.cli import main
from meanfield.engine._teacher import Teacher

FINITE = {"problem": {"kind": "finite_data", "n_samples": 60, "teacher": {"kind": "orthonormal", "k": 2}},
          "model": {"d": 5, "m": 16, "activation": "relu", "bias": True},
          "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 20.0},
          "record": {"times": 5, "test_samples": 3000}}


def test_test_samples_records_the_held_out_risk(tmp_path):
    """`[record] test_samples = n` records test_risk at every record: ½ mean (h(x) - y)² over n
    fresh inputs X ~ N(0, I) labelled by the teacher, drawn from the run's test stream,
    recomputed here from the stored particles with numpy. The training risk of 60 samples
    falls below it (overfitting), and the held-out risk agrees with the population risk to a
    few standard errors."""
    path = write(tmp_path, FINITE)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    (spec,) = sweep.plan(path)
    with h5py.File(out / f"{spec.id}.h5") as f:
        frames = f["particles/neurons/position/value"][()]
        test_risk = f["observables/test_risk/value"][()]
        train_risk = f["observables/risk/value"][()]
        teacher_W = f["parameters/teacher/position"][()]
    rng = sweep.generator(spec.config, "test")
    X = rng.standard_normal((3000, 5))
    y = Teacher(teacher_W, "relu").labels(X, rng, "squared", 0.0, 0.0)
    assert test_risk.shape == (5,)
    for W, recorded in zip(frames, test_risk):
        h = np.maximum(X @ W[:, :5].T + W[:, 5], 0.0) @ W[:, 6] / W.shape[0]
        np.testing.assert_allclose(recorded, 0.5 * np.mean((h - y) ** 2), rtol=1e-10)
    assert train_risk[-1] < test_risk[-1]
    population = sweep.build(_population_config(spec.config)).problem
    errors = 0.5 * (np.maximum(X @ frames[-1][:, :5].T + frames[-1][:, 5], 0.0) @ frames[-1][:, 6] / 16 - y) ** 2
    assert abs(population.risk(frames[-1]) - test_risk[-1]) < 4 * errors.std() / np.sqrt(3000)


def _population_config(config):
    import copy

    config = copy.deepcopy(config)
    config["problem"].update(kind="population", n_samples=None, method="closed_form")
    config["record"].pop("test_samples")
    return config


@pytest.mark.parametrize("change, message", [
    ({"problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}}},
     "[record] test_samples: the population risk is the test risk already"),
    ({"lazy": {"test_samples": 100}}, "[record] test_samples: [lazy] test_samples records test_risk"),
])
def test_test_samples_refused_where_it_has_no_meaning(tmp_path, change, message):
    doc = {**FINITE, **change}
    path = write(tmp_path, doc)
    result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_the_run_ids_without_test_samples_are_unchanged(tmp_path):
    """The key is left out of the resolved config when absent: a file without it keeps its id."""
    doc = {key: value for key, value in FINITE.items()}
    doc["record"] = {"times": 5}
    (spec,) = sweep.plan(write(tmp_path, doc))
    assert "test_samples" not in spec.config["record"]


def test_a_collapsed_log_grid_is_noted(tmp_path):
    """A log grid of 41 times from t = 0.5 with dt = 0.5 falls on 30 distinct steps: the run
    says so on stderr (even with --quiet) and records 30 times."""
    doc = merged(record__times=41, record__spacing="log", record__t_min=0.5, dynamics__t_max=50.0)
    path = write(tmp_path, doc)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[record] times = 41 (log from t = 0.5) falls on 30 distinct steps of dt = 0.5: 11 times" in result.stderr
    (spec,) = sweep.plan(path)
    with h5py.File(out / f"{spec.id}.h5") as f:
        assert f["observables/risk/value"].shape == (30,)
