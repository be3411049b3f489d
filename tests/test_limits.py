"""The [limit] comparison: reference runs with tracers, stored distances, rates across widths."""
import json

import h5py
import numpy as np
import pytest

from meanfield import limits, sweep
from meanfield.cli import main

DOC = """
[model]
d = 4
m = 8
activation = "relu"
[problem]
kind = "{kind}"
{extra}
[problem.teacher]
kind = "{teacher}"
k = 2
[dynamics]
integrator = "{integrator}"
step = 0.5
t_max = 4.0
{dynamics}
[record]
times = 5
[limit]
reference_m = 8
metrics = {metrics}
[sweep]
"model.m" = [4, 8]
"run.seed" = [0, 1]
"""


def experiment(tmp_path, kind="population", integrator="gradient_descent", metrics=None, dynamics="", extra=""):
    metrics = metrics or ["risk_gap", "tracer_deviation"]
    text = DOC.format(kind=kind, teacher="orthonormal" if kind == "population" else "random",
                      integrator=integrator, metrics=json.dumps(metrics), dynamics=dynamics, extra=extra)
    path = tmp_path / "limit.toml"
    path.write_text(text)
    return path


def test_plan_has_members_and_one_reference_per_seed(tmp_path):
    """Members keep their widths; each seed gets one reference of width M whose tracers are
    the members' initial points, block by block."""
    specs = sweep.plan(experiment(tmp_path))
    members = [s for s in specs if s.config["limit"]["role"] == "member"]
    references = [s for s in specs if s.config["limit"]["role"] == "reference"]
    assert len(members) == 4 and len(references) == 2
    assert [s.index for s in specs] == list(range(6))
    for ref in references:
        assert ref.config["model"]["m"] == 8 and ref.config["limit"]["tracer_widths"] == [4, 8]
        experiment_ = sweep.build(ref.config)
        assert experiment_.tracer_blocks == (("m=4", 0, 4), ("m=8", 4, 12))
        member = next(s for s in members if s.config["run"]["seed"] == ref.config["run"]["seed"]
                      and s.config["model"]["m"] == 4)
        np.testing.assert_array_equal(experiment_.tracers[:4], sweep.build(member.config).W0)


@pytest.mark.parametrize("kind, integrator, dynamics, extra", [
    ("population", "gradient_descent", "", ""),
    ("finite_data", "sgd", "batch_size = 16", "n_samples = 64"),
])
def test_tracer_deviation_is_zero_when_m_equals_M(tmp_path, kind, integrator, dynamics, extra):
    """Stored distances: the member of width M follows its reference to rounding (deviation
    and risk gap ~1e-16 at every time: the member sums its self-interaction on the symmetric
    tiles, the reference's tracers on the general ones), the narrower member does not; for the
    population and the finite-data problems."""
    path = experiment(tmp_path, kind, integrator, dynamics=dynamics, extra=extra)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    pairs = limits.pairs(out)
    assert len(pairs) == 4 and all(reference is not None for _, reference in pairs)
    for member_path, _ in pairs:
        with h5py.File(member_path, "r") as f:
            m = json.loads(f.attrs["config"])["model"]["m"]
            deviation = f["observables/limit/tracer_deviation/value"][()]
            gap = f["observables/limit/risk_gap/value"][()]
            assert deviation.shape == (5,) and deviation[0] == 0  # tracers start on the particles
            if m == 8:
                assert np.all(deviation <= 1e-13) and np.all(np.abs(gap) <= 1e-13), (deviation, gap)
            else:
                assert np.all(deviation[1:] > 1e-6) and np.all(np.isfinite(deviation)), deviation
    assert limits.compute_missing(out) == {"measured": 0, "up_to_date": 4, "waiting": 0}


def test_limit_configuration_errors(tmp_path, capsys):
    """Tracers wider than the reference, or unknown metrics, are refused up front (Langevin
    noise is accepted: tests/test_langevin_tracers.py)."""
    path = experiment(tmp_path)
    assert main(["run", str(path), "--set", "limit.reference_m=6", "--out", str(tmp_path / "o")]) == 2
    assert "m must be <= reference_m = 6" in capsys.readouterr().err
    path = experiment(tmp_path, integrator="langevin", dynamics="beta = 10.0")
    assert main(["run", str(path), "--set", 'limit.metrics=["nope"]', "--out", str(tmp_path / "o")]) == 2
    assert "a list of names from" in capsys.readouterr().err


def test_limit_times_select_the_nearest_records(tmp_path):
    """[limit] times restricts the distances to the recorded times nearest to the list."""
    path = experiment(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--set", "limit.times=[0.9, 4.0]"]) == 0
    for member_path, _ in limits.pairs(out):
        with h5py.File(member_path, "r") as f:
            np.testing.assert_allclose(f["observables/limit/risk_gap/time"][()], [1.0, 4.0])
    assert main(["run", str(path), "--out", str(out), "--set", "limit.times=[-1]"]) == 2
