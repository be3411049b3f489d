"""Engine online SGD in Saad & Solla's scaling against the order-parameter ODEs of
``meanfield.online``: the map of ``meanfield/online/_engine_map.py`` (eta = eta_e m d / alpha_o^2,
eta_v = eta_e m s^2 d, eta_b = eta for trained biases, alpha = t / (eta_e d)) and
``meanfield/_online_ode.py``."""
import math
import os
import shutil

import numpy as np
import pytest
import xarray as xr
from test_sweep import write

from meanfield.analysis import open_run, open_sweep
from meanfield.cli import main
from meanfield.experiments import _online_ode
from meanfield.experiments._summaries import directory_summaries
from meanfield.io import catalog_rows
from meanfield.online import integrate_order_parameters, read_trajectory, stack_order_parameters, write_trajectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Online SGD of the engine in Saad & Solla's scaling: erf, K = M = 2, T = I (orthonormal teacher,
# v* = 1), label noise 0.1, batch 1. ODE learning rate eta = 0.5 on both layers' time axis:
# engine step eta_e = eta / (m d) (alpha_o = 1), alpha = t / (eta_e d) = t m / eta, so t_max = 1
# is alpha = 4. Readout: mean field, trained, c = 1 at t = 0 (v = 1/2, eta_v = eta / m^2).
ETA, ALPHA_MAX = 0.5, 4.0


def _mapping_doc(dims, seeds, scaling):
    frozen = scaling == "sum"
    return {"model": {"d": dims[0], "m": 2, "activation": "erf", "scaling": scaling, "train_readout": not frozen},
            "init": {"tau": 0.6, "c": "one"},
            "problem": {"kind": "population", "noise_std": 0.1,
                        "teacher": {"kind": "orthonormal", "k": 2, "readout": "sum"}},
            "dynamics": {"integrator": "sgd", "step": ETA / (2 * dims[0]), "batch_size": 1,
                         "t_max": ALPHA_MAX * ETA / 2},
            "record": {"times": 9, "order_parameters": True, "particles": False}}


def _write_mapping(tmp_path, dims, seeds, scaling):
    path = write(tmp_path, _mapping_doc(dims, seeds, scaling))
    steps = ", ".join(repr(ETA / (2 * d)) for d in dims)
    path.write_text(path.read_text() + f'[sweep]\n"run.seed" = {list(seeds)}\n[sweep.zip]\n'
                    f'"model.d" = {list(dims)}\n"dynamics.step" = [{steps}]\n')
    return path


@pytest.mark.parametrize("scaling", ["mean_field", "sum"])
def test_engine_online_sgd_follows_the_ode(tmp_path, scaling):
    """Engine runs at d = 250 and 1000 (6 seeds each, alpha up to 4) follow the ODE integrated from
    their own overlaps at t = 0 with eta = eta_e m d and alpha = t / (eta_e d): the RMS over seeds of
    max_t |(Q, R, v)_run - (Q, R, v)_ODE| is below 0.03 at d = 1000, and it shrinks from d = 250
    to 1000 by a factor above 1.4 (2 expected for d^(-1/2)). A wrong map fails: the same runs
    against the ODE at eta / 2 or 2 eta (the time axis off by 2) are off by more than 0.08 at
    d = 1000. Measured (2 shared cores, 2026-12-02): RMS 0.0249 -> 0.0125 (mean field, trained
    readout) and 0.0255 -> 0.0149 (sum, frozen); wrong eta 0.116 to 0.257."""
    dims, seeds = (250, 1000), range(6)
    out = tmp_path / "out"
    assert main(["run", str(_write_mapping(tmp_path, dims, seeds, scaling)), "--out", str(out), "--quiet"]) == 0
    results = [_online_ode.compare(path) for path, _ in _online_ode.runs(out)]
    assert len(results) == len(dims) * len(seeds)
    errors = {}
    for d in dims:
        worst = []
        for r in (r for r in results if r["d"] == d):
            assert r["eta"] == pytest.approx(ETA) and r["alpha"][-1] == pytest.approx(ALPHA_MAX)
            assert r["eta_v"] == pytest.approx(ETA / 4 if scaling == "mean_field" else ETA)
            worst.append(max(np.abs(r[f"{x}_run"] - r[f"{x}_ode"]).max() for x in "QRv"))
        errors[d] = math.sqrt(np.mean(np.square(worst)))
    assert errors[1000] < 0.03, errors
    assert errors[250] / errors[1000] > 1.4, errors
    r = next(r for r in results if r["d"] == 1000)
    for wrong in (ETA / 2, 2 * ETA):
        ode = integrate_order_parameters(r["Q_run"][0], r["R_run"][0], r["v_run"][0], np.eye(2), np.ones(2), wrong,
                                         r["alpha"], noise_std=0.1, train_second_layer=scaling == "mean_field",
                                         second_layer_learning_rate=wrong / 4 if scaling == "mean_field" else None)
        assert max(np.abs(r["Q_run"] - ode.Q).max(), np.abs(r["R_run"] - ode.R).max()) > 0.08


def test_engine_minibatch_sgd_follows_the_ode_of_its_batch(tmp_path):
    """Engine SGD on the mean of B = 4 fresh samples per step (erf soft committee: "sum" scaling,
    frozen readout v = 1, K = M = 2, T = I, label noise 0.5, ODE eta = 1, d = 1000, alpha up to 4,
    4 seeds) follows the ODE with the eta^2 terms divided by B (``batch_size = 4``) from each
    run's own initial overlaps: max_t |(Q, R)_run - (Q, R)_ODE| below 0.04 for every seed. The ODE
    of one sample per step (B = 1) is off by more than 0.2, and that of B = 16 by more than the
    largest deviation from the right one. Measured (2 shared cores, 2026-12-03): 0.012 to 0.017
    against B = 4; 0.35 to 0.37 against B = 1; 0.044 to 0.065 against B = 16."""
    eta, d, batch = 1.0, 1000, 4
    doc = {"model": {"d": d, "m": 2, "activation": "erf", "scaling": "sum", "train_readout": False},
           "init": {"tau": 0.6, "c": "one"},
           "problem": {"kind": "population", "noise_std": 0.5,
                       "teacher": {"kind": "orthonormal", "k": 2, "readout": "sum"}},
           "dynamics": {"integrator": "sgd", "step": eta / (2 * d), "batch_size": batch, "t_max": 4.0 * eta / 2},
           "record": {"times": 9, "order_parameters": True, "particles": False}}
    path = write(tmp_path, doc)
    path.write_text(path.read_text() + '[sweep]\n"run.seed" = [0, 1, 2, 3]\n')
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    results = [_online_ode.compare(p) for p, _ in _online_ode.runs(out)]
    assert len(results) == 4
    right = [max(np.abs(r[f"{x}_run"] - r[f"{x}_ode"]).max() for x in "QR") for r in results]
    assert max(right) < 0.04, right
    for wrong_batch, bound in ((1, 0.2), (16, max(right))):
        for r in results:
            ode = integrate_order_parameters(r["Q_run"][0], r["R_run"][0], r["v_run"][0], np.eye(2), np.ones(2),
                                             eta, r["alpha"], noise_std=0.5, batch_size=wrong_batch)
            assert max(np.abs(r["Q_run"] - ode.Q).max(), np.abs(r["R_run"] - ode.R).max()) > bound, wrong_batch


def _biased_doc(dims, activation):
    """Engine runs with trained biases: the soft committee ("sum" scaling, c = 1, v = 1), student
    biases b ~ 0.6 N(0, 1) at t = 0, a random teacher with biases b* ~ N(0, 1) (and a* ~ N(0, I/d),
    c* ~ N(0, 1) / k, drawn per seed), label noise 0.1; eta = 0.5 on the ODE's axis, alpha <= 4."""
    return {"model": {"d": dims[0], "m": 2, "activation": activation, "scaling": "sum", "train_readout": False,
                      "bias": True},
            "init": {"tau": 0.6, "c": "one", "b": "gaussian"},
            "problem": {"kind": "population", "noise_std": 0.1, "teacher": {"kind": "random", "k": 2, "bias": True}},
            "dynamics": {"integrator": "sgd", "step": ETA / (2 * dims[0]), "batch_size": 1,
                         "t_max": ALPHA_MAX * ETA / 2},
            "record": {"times": 9, "order_parameters": True, "particles": False}}


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_engine_online_sgd_with_biases_follows_the_ode(tmp_path, activation):
    """Engine runs with trained biases (student and teacher; _biased_doc) at d = 250 and 1000
    (6 seeds each) follow the ODE from their own (Q, R, v, b) at t = 0, with the teacher's T, v*
    and b*, eta = eta_e m d and the biases' rate eta_b = eta (the engine moves b with the same
    eta_e m / alpha_o^2 factor as a, and b is not scaled by sqrt(d)): the RMS over seeds of
    max_t |(Q, R, v, b)_run - ODE| is below 0.04 at d = 1000 and shrinks from d = 250 by a factor
    above 1.4. A wrong bias rate fails: against the ODE at eta_b = eta / 2 or 2 eta the RMS of
    max_t |b_run - b_ODE| at d = 1000 is above 0.1, while at eta_b = eta it is below 0.03.
    Measured (2 shared cores, 2026-12-03): relu 0.080 -> 0.027 (b alone 0.016; wrong eta_b
    about 0.23 and 0.25), erf 0.030 -> 0.016 (b alone 0.009)."""
    dims, seeds = (250, 1000), range(6)
    path = write(tmp_path, _biased_doc(dims, activation))
    steps = ", ".join(repr(ETA / (2 * d)) for d in dims)
    path.write_text(path.read_text() + f'[sweep]\n"run.seed" = {list(seeds)}\n[sweep.zip]\n'
                    f'"model.d" = {list(dims)}\n"dynamics.step" = [{steps}]\n')
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    results = [_online_ode.compare(p) for p, _ in _online_ode.runs(out)]
    assert len(results) == len(dims) * len(seeds)
    errors = {}
    for d in dims:
        worst = []
        for r in (r for r in results if r["d"] == d):
            assert r["eta"] == pytest.approx(ETA) and r["alpha"][-1] == pytest.approx(ALPHA_MAX)
            assert np.abs(r["b_run"][-1] - r["b_run"][0]).max() > 0.05          # the biases move
            worst.append(max(np.abs(r[f"{x}_run"] - r[f"{x}_ode"]).max() for x in "QRvb"))
        errors[d] = math.sqrt(np.mean(np.square(worst)))
    assert errors[1000] < 0.04, errors
    assert errors[250] / errors[1000] > 1.4, errors
    for rate, bound in ((ETA, None), (ETA / 2, 0.1), (2 * ETA, 0.1)):
        deviations = []
        for r in (r for r in results if r["d"] == 1000):
            ode = integrate_order_parameters(r["Q_run"][0], r["R_run"][0], r["v_run"][0], r["T"], r["teacher_v"], ETA,
                                             r["alpha"], noise_std=0.1, activation=activation, b0=r["b_run"][0],
                                             teacher_b=r["teacher_b"], train_bias=True, bias_learning_rate=rate)
            deviations.append(np.abs(r["b_run"] - ode.b).max())
        rms = math.sqrt(np.mean(np.square(deviations)))
        assert (rms < 0.03) if bound is None else (rms > bound), (rate, rms)


@pytest.fixture(scope="module")
def shipped_short(tmp_path_factory):
    """runs/online_sgd_ode.toml, shortened (d = 100 and 400, alpha up to 8, 3 seeds), run once with
    --quiet: its online_ode stage (which writes figures, so a quiet run makes its report too) has
    stored every run's ODE in DIR/ode/ and drawn the figures. Returns DIR."""
    text = open(os.path.join(ROOT, "runs", "online_sgd_ode.toml")).read()
    changes = {"t_max = 75.0": "t_max = 2.0", '"run.seed" = [0, 1, 2, 3]': '"run.seed" = [0, 1, 2]',
               '"model.d" = [100, 500, 2000]': '"model.d" = [100, 400]',
               '"dynamics.step" = [0.0025, 0.0005, 0.000125]': '"dynamics.step" = [0.0025, 0.000625]',
               "times = 61": "times = 9"}
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    tmp_path = tmp_path_factory.mktemp("shipped")
    path = tmp_path / "short.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    return out


def test_shipped_experiment_report(shipped_short, capsys):
    """`meanfield report DIR` on the shortened shipped experiment: one table, a row per (window, d)
    whose numbers are the mean over seeds of max |eps_g - eps_ODE| and max ||R - R_ODE||_F
    (recomputed here from `compare`, which reads the ODE back from its file, 1e-3 relative in the
    printed digits), and a fitted rate per window; over the whole run the R distance shrinks from
    d = 100 to 400 (measured 0.034 -> 0.024). The ODE files were written by the run and are read,
    not written again; the figures are there."""
    out = shipped_short
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    results = [_online_ode.compare(p) for p, _ in _online_ode.runs(out)]
    assert len(results) == 6 and all(r["alpha"][-1] == pytest.approx(8.0) for r in results)
    assert not any(r["ode_written"] for r in results)
    assert {os.path.basename(r["ode_path"]) for r in results} == {os.path.basename(p) for p, _ in
                                                                   _online_ode.runs(out)}
    assert f"ODE solutions: 0 written, 6 up to date, in {out / 'ode'}/<run id>.h5" in printed
    assert "online SGD against the order-parameter ODE" in printed
    for d in (100, 400):
        eps = np.mean([r["eps_distance"] for r in results if r["d"] == d])
        R = np.mean([r["R_distance"] for r in results if r["d"] == d])
        row = next(line for line in printed.splitlines() if line.split()[:3] == ["8", str(d), "3"])
        numbers = [float(x.strip("[],")) for x in row.split()[3:]]
        assert numbers[0] == pytest.approx(eps, rel=1e-3) and numbers[3] == pytest.approx(R, rel=1e-3)
        assert numbers[1] <= numbers[0] <= numbers[2] and numbers[4] <= numbers[3] <= numbers[5]
    assert sum(line.startswith(("eps_g, alpha <=", "R, alpha <=")) for line in printed.splitlines()) == 8
    assert np.mean([r["R_distance"] for r in results if r["d"] == 400]) < \
        np.mean([r["R_distance"] for r in results if r["d"] == 100])
    for name in ("online_ode_eps_g.png", "online_ode_R.png"):
        assert f"plot: {out / name}" in printed
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _direct_ode(run_path):
    """The ODE of a run integrated here from its file: its overlaps, teacher and times, with
    eta = eta_e m d (alpha_o = 1, frozen readout of the shipped file) and alpha = t / (eta_e d)."""
    with open_run(run_path) as ds:
        config = ds.attrs["config"]
        d, m, step = config["model"]["d"], config["model"]["m"], config["dynamics"]["step"]
        Q, R, v = stack_order_parameters({name: ds[name].values for name in ds.data_vars
                                          if name[:2] in ("Q_", "R_", "v_")}, m, 2)
        teacher = ds["teacher_position"].values
        times, steps, risk = ds["time"].values, ds["step"].values, ds["risk"].values
    alpha = times / (step * d)
    np.testing.assert_allclose(alpha, steps / d, rtol=1e-12)  # alpha = steps / d, the ODE's time
    ode = integrate_order_parameters(Q[0], R[0], v[0], teacher[:, :d] @ teacher[:, :d].T, teacher[:, d + 1],
                                     step * m * d, alpha)
    return ode, times, steps, risk


def test_ode_files_are_the_direct_integration(shipped_short):
    """Each file DIR/ode/<run id>.h5 holds bitwise the ODE integrated here from the run's initial
    overlaps; open_run reads it on the run's own time axis and steps, with the run's series names,
    and its risk at t = 0 is the run's recorded population risk (the same overlaps: 1e-12)."""
    run_paths = [path for path, _ in _online_ode.runs(shipped_short)]
    assert len(run_paths) == 6
    for run_path in run_paths:
        ode, times, steps, risk = _direct_ode(run_path)
        stored = read_trajectory(_online_ode.ode_path(run_path))
        for field in ("alpha", "Q", "R", "v", "generalisation_error", "T", "teacher_v"):
            assert np.array_equal(getattr(stored, field), getattr(ode, field)), field
        with open_run(_online_ode.ode_path(run_path)) as ds:
            assert np.array_equal(ds["time"].values, times) and np.array_equal(ds["step"].values, steps)
            assert ds.attrs["source_run_id"] == os.path.basename(run_path)[:-3] and ds.attrs["kind"] == "ode"
            assert ds["risk"].values[0] == pytest.approx(risk[0], rel=1e-12, abs=1e-14)
            assert np.array_equal(ds["R_1_0"].values, ode.R[:, 1, 0])


def test_ode_files_stay_out_of_the_runs_catalog(shipped_short, tmp_path, capsys):
    """The particle runs' catalog lists the 6 runs and nothing of DIR/ode (no kind column), and
    open_sweep(DIR / "ode") lists their 6 ODEs (kind "ode"), indexed by the same run ids; the risk
    of both by (d, seed) lines up on one time axis with no gap. An ODE file written among the runs
    is listed as kind "ode", left out of the report's risk summary and of the online_ode stage,
    and `meanfield status` and `report` of that directory work."""
    runs, odes = open_sweep(shipped_short, refresh=False), open_sweep(shipped_short / "ode")
    assert len(runs.catalog) == 6 and "kind" not in runs.catalog.columns
    assert sorted(odes.catalog.index) == sorted(runs.catalog.index) and set(odes.catalog["kind"]) == {"ode"}
    both = xr.concat([runs.risk(by=("d", "seed")), odes.risk(by=("d", "seed"))], dim="source")
    assert both.shape == (2, 2, 3, 9) and not both.isnull().any()

    mixed = tmp_path / "mixed"
    shutil.copytree(shipped_short, mixed)
    run_id = runs.catalog.index[0]
    write_trajectory(mixed / "ode_solution.h5", read_trajectory(mixed / "ode" / f"{run_id}.h5"), 0.5)
    rows = catalog_rows(mixed)
    assert [row.get("kind") for row in rows].count("ode") == 1 and len(rows) == 7
    summaries, _ = directory_summaries(mixed)
    assert len(summaries) == 6 and all(not s["path"].endswith("ode_solution.h5") for s in summaries)
    assert len(_online_ode.runs(mixed)) == 6
    assert main(["status", str(mixed)]) == 0 and main(["report", str(mixed)]) == 0
    assert "risk at the end of the 6 finished runs" in capsys.readouterr().out


def test_report_rewrites_only_a_stale_ode_file(shipped_short, capsys):
    """An ODE file that does not hold its run's ODE any more (here: integrated at another
    learning rate) is integrated and written again by the next report; the others are left as
    they were (same inode and mtime)."""
    run_paths = [path for path, _ in _online_ode.runs(shipped_short)]
    stale = _online_ode.ode_path(run_paths[0])
    good = read_trajectory(stale)
    wrong = integrate_order_parameters(good.Q[0], good.R[0], good.v[0], good.T, good.teacher_v, 0.25, good.alpha)
    with open_run(stale) as ds:
        source = dict(ds.attrs["config"]["source"])
        time, steps = ds["time"].values, ds["step"].values
    write_trajectory(stale, wrong, 0.25, time=time, steps=steps, source=source)
    others = {path: os.stat(_online_ode.ode_path(path)) for path in run_paths[1:]}
    assert main(["report", str(shipped_short)]) == 0
    assert "ODE solutions: 1 written, 5 up to date" in capsys.readouterr().out
    again = read_trajectory(stale)
    assert np.array_equal(again.R, good.R) and not np.array_equal(again.R, wrong.R)
    for path, before in others.items():
        after = os.stat(_online_ode.ode_path(path))
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
