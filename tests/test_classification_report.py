"""The shipped classification experiment (runs/classification.toml) and its post-run report.

The file is run shortened through ``meanfield run`` (small widths, short t_max, few samples),
then ``meanfield report`` prints the table; every number of the table is recomputed here from
the observables recorded in the run files (h5py, numpy), so the table says what the files say.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import h5py
import numpy as np

from meanfield import sweep

RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs")
SHORT = ['sweep."model.m"=[8, 16]', "dynamics.t_max=200.0", "record.times=8", "problem.n_samples=30",
         "record.test_samples=200"]
COLUMNS = ("norm", "norm_per_decade", "normL_per_decade", "margin", "margin_change", "train_error", "test_error")
PNG = b"\x89PNG\r\n\x1a\n"


def _meanfield(*arguments):
    result = subprocess.run([sys.executable, "-m", "meanfield", *arguments], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _table_rows(text):
    """(loss, decay, m) -> (seeds, t, the six numbers) from the printed table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["loss", "decay", "m"])
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith("("):
            break
        loss, decay, m, seeds, t, *numbers = line.split()
        rows[(loss, decay, int(m))] = (int(seeds), float(t), [float(x) for x in numbers])
    return rows


def _decay_token(dynamics):
    decay = dynamics.get("weight_decay", 0.0)
    return "0" if decay == 0 else f"{decay:g}"  # the shipped file has no schedule


def _expected_rows(out):
    """The same rows computed directly from the run files."""
    groups = defaultdict(list)
    for name in sorted(os.listdir(out)):
        if not name.endswith(".h5") or name == "index.h5":
            continue
        with h5py.File(out / name) as f:
            config = json.loads(f.attrs["config"])
            series = {key: f[f"observables/{key}/value"][()] for key in
                      ("norm", "normalized_margin", "train_error", "test_error")}
            times = f["observables/norm/time"][()]
        window = times >= times[-1] / 10  # the last decade of recorded time
        design = np.stack([np.log10(times[window]), np.ones(window.sum())], axis=1)
        assert config["model"]["activation"] == "relu" and config["model"]["train_readout"]  # degree L = 2
        slope, slope_squared = np.linalg.lstsq(design, np.stack([series["norm"][window], series["norm"][window] ** 2],
                                                                axis=1), rcond=None)[0][0]
        margin = series["normalized_margin"]
        groups[(config["problem"]["loss"], _decay_token(config["dynamics"]), config["model"]["m"])].append(
            [series["norm"][-1], slope, slope_squared, margin[-1], margin[-1] - margin[window][0],
             series["train_error"][-1], series["test_error"][-1], times[-1]])
    return {key: (len(values), np.mean(values, axis=0)) for key, values in groups.items()}


def test_shipped_classification_experiment_table_equals_the_run_files(tmp_path):
    """runs/classification.toml shortened: 2 losses x 2 decays x 2 widths x 2 seeds = 16 runs; the
    report's table has one row per (loss, decay, m) whose numbers are the seed means of rho, the
    least-squares slopes of rho and rho^2 against log10 t over t >= t_last / 10, the margin and its change over
    that window, and the two errors, all read from the files; the two figures are PNGs; both
    labels occur in the training data."""
    out = tmp_path / "out"
    _meanfield("run", os.path.join(RUNS, "classification.toml"), "--out", str(out), "--quiet",
               *sum((["--set", s] for s in SHORT), []))
    for name in ("classification_norm.png", "classification_margin.png"):  # the stage ran after the runs
        assert (out / name).read_bytes()[:8] == PNG
        (out / name).unlink()  # `meanfield report` writes them again
    report_text = _meanfield("report", str(out))
    assert "classification: 16 runs" in report_text
    printed = _table_rows(report_text)
    expected = _expected_rows(out)
    assert set(printed) == set(expected) == {(loss, decay, m) for loss in ("exponential", "logistic")
                                             for decay in ("0", "0.01") for m in (8, 16)}
    for key, (seeds, values) in expected.items():
        printed_seeds, printed_t, numbers = printed[key]
        assert printed_seeds == seeds == 2
        assert printed_t == values[-1] == 200.0
        np.testing.assert_allclose(numbers, values[:-1], rtol=1e-4, atol=1e-12, err_msg=str(key))
    # Not a degenerate table: rho grows without decay and the decay keeps it smaller.
    no_decay, decay = printed[("exponential", "0", 16)][2], printed[("exponential", "0.01", 16)][2]
    assert no_decay[1] > 0 and decay[0] < no_decay[0]
    for name in ("classification_norm.png", "classification_margin.png"):
        assert f"plot: {out / name}" in report_text
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000
    # Both labels occur (a relu teacher with a positive readout would label everything +1).
    with h5py.File(next(p for p in out.glob("*.h5") if p.name != "index.h5")) as f:
        config = json.loads(f.attrs["config"])
    labels = sweep.build(config).problem.y
    assert set(np.unique(labels)) == {-1.0, 1.0}
