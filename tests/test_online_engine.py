"""Engine online SGD in Saad & Solla's scaling against the order-parameter ODEs of
``meanfield.online``: the map of ``meanfield/online/_engine_map.py`` (eta = eta_e m d / alpha_o^2,
eta_v = eta_e m s^2 d, alpha = t / (eta_e d)) and ``meanfield/_online_ode.py``."""
import math

import numpy as np
import pytest
from test_sweep import write

from meanfield.cli import main
from meanfield.experiments import _online_ode
from meanfield.online import integrate_order_parameters

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


def test_shipped_experiment_report(tmp_path, capsys):
    """runs/online_sgd_ode.toml, shortened (d = 100 and 400, alpha up to 8, 3 seeds), run and
    reported by `meanfield report DIR`: one table, a row per (window, d) whose numbers are the
    mean over seeds of max |eps_g - eps_ODE| and max ||R - R_ODE||_F (recomputed here from
    `compare`, 1e-3 relative in the printed digits), and a fitted rate per window; over the whole
    run the R distance shrinks from d = 100 to 400 (measured 0.034 -> 0.024)."""
    text = open("runs/online_sgd_ode.toml").read()
    changes = {"t_max = 75.0": "t_max = 2.0", '"run.seed" = [0, 1, 2, 3]': '"run.seed" = [0, 1, 2]',
               '"model.d" = [100, 500, 2000]': '"model.d" = [100, 400]',
               '"dynamics.step" = [0.0025, 0.0005, 0.000125]': '"dynamics.step" = [0.0025, 0.000625]',
               "times = 61": "times = 9"}
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "short.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    results = [_online_ode.compare(p) for p, _ in _online_ode.runs(out)]
    assert len(results) == 6 and all(r["alpha"][-1] == pytest.approx(8.0) for r in results)
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
