"""meanfield.analysis: loaders checked against direct h5py reads, plots checked for content."""
import importlib
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from meanfield import analysis, distance  # noqa: E402
from meanfield.analysis import _load  # noqa: E402
from meanfield.cli import main  # noqa: E402

SWEEP = """
[model]
d = 4
m = 8
activation = "relu"
[init]
tau = 1.5
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 2
[dynamics]
integrator = "gradient_descent"
step = 0.5
t_max = 5.0
[record]
times = 6
spacing = "log"
t_min = 0.5
[sweep]
"model.m" = [8, 64]
"run.seed" = [0, 1]
"""

LIMIT = """
[model]
d = 4
m = 8
activation = "relu"
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 2
[dynamics]
integrator = "gradient_descent"
step = 0.5
t_max = 4.0
[record]
times = 5
spacing = "log"
t_min = 0.5
[limit]
reference_m = 64
metrics = ["tracer_deviation", "norm_w2"]
[sweep]
"model.m" = [8, 16, 32]
"run.seed" = [0, 1, 2]
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Four real runs (m = 8, 64; seeds 0, 1) written by the engine."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.toml").write_text(SWEEP)
    assert main(["run", str(root / "sweep.toml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def limit_dir(tmp_path_factory):
    """A [limit] sweep: m = 8, 16, 32 against M = 64, three seeds, distances stored."""
    root = tmp_path_factory.mktemp("limit")
    (root / "limit.toml").write_text(LIMIT)
    assert main(["run", str(root / "limit.toml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


def _h5(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


def _runs(directory):
    """{(m, seed): path} read from the files themselves."""
    runs = {}
    for name in os.listdir(directory):
        if name.endswith(".h5") and name != "index.h5":
            with h5py.File(directory / name, "r") as f:
                config = json.loads(f.attrs["config"])
            runs[(config["model"]["m"], config["run"]["seed"], config.get("limit", {}).get("role"))] = directory / name
    return runs


# ------------------------------------------------------------------------------ open_run
def test_open_run_matches_the_file(sweep_dir):
    path = _runs(sweep_dir)[(64, 1, None)]
    with analysis.open_run(path) as ds:
        assert dict(ds.sizes) == {"time": 6, "particle": 64, "coord": 6, "teacher": 2}
        assert ds["position"].dims == ("time", "particle", "coord")
        np.testing.assert_array_equal(ds["time"], _h5(path, "observables/risk/time"))
        np.testing.assert_array_equal(ds["step"], _h5(path, "observables/risk/step"))
        np.testing.assert_array_equal(ds["risk"], _h5(path, "observables/risk/value"))
        np.testing.assert_array_equal(ds["grad_norm"], _h5(path, "observables/grad_norm/value"))
        value = _h5(path, "particles/neurons/position/value")
        np.testing.assert_array_equal(ds["position"].isel(time=-1, particle=slice(5, 9)), value[-1, 5:9])
        np.testing.assert_array_equal(ds["position"].sel(coord="c"), value[:, :, -1])
        np.testing.assert_array_equal(ds["teacher_position"], _h5(path, "parameters/teacher/position"))
        assert list(ds["coord"].values) == ["a_0", "a_1", "a_2", "a_3", "b", "c"]
        assert ds.attrs["m"] == 64 and ds.attrs["seed"] == 1 and ds.attrs["d"] == 4
        assert ds.attrs["status"] == "complete" and ds.attrs["run_id"] in os.fspath(path)
        with h5py.File(path, "r") as f:
            assert ds.attrs["config"] == json.loads(f.attrs["config"])


def test_open_run_reads_no_particles_until_asked(sweep_dir, monkeypatch):
    reads = []
    original = _load._LazyH5._read
    monkeypatch.setattr(_load._LazyH5, "_read", lambda self, key: reads.append(key) or original(self, key))
    path = _runs(sweep_dir)[(64, 0, None)]
    with analysis.open_run(path) as ds:
        assert reads == []
        float(ds["risk"].sum()), ds["position"].shape
        assert reads == []
        frame = ds["position"].isel(time=2).values
        assert len(reads) == 1 and reads[0][0] == 2 and frame.shape == (64, 6)


def test_open_run_of_a_file_being_written_stops_at_the_last_checkpoint(sweep_dir, tmp_path):
    """A .part file one record ahead in some series and checkpointed at record 3: the
    Dataset has the 3 records that are complete and flushed, with the stored values."""
    source = _runs(sweep_dir)[(8, 0, None)]
    part = tmp_path / (source.name + ".part")
    shutil.copy(source, part)
    with h5py.File(part, "r+", libver="latest") as f:
        f.attrs["status"] = "running"
        active = int(f["checkpoint/active"][()])
        f[f"checkpoint/slot_{active}/records"][()] = 3
        for name in ("step", "time", "value"):  # the writer has started a 7th risk record
            f[f"observables/risk/{name}"].resize(7, axis=0)
    with analysis.open_run(part) as ds:
        assert ds.sizes["time"] == 3 and ds.attrs["status"] == "running"
        np.testing.assert_array_equal(ds["risk"], _h5(source, "observables/risk/value")[:3])
        np.testing.assert_array_equal(ds["position"][-1], _h5(source, "particles/neurons/position/value")[2])


def test_limit_distances_are_on_the_time_axis(limit_dir):
    path = _runs(limit_dir)[(16, 2, "member")]
    with analysis.open_run(path) as ds:
        np.testing.assert_array_equal(ds["limit_norm_w2"], _h5(path, "observables/limit/norm_w2/value"))
        assert ds.attrs["reference_m"] == 64
    with analysis.open_run(_runs(limit_dir)[(64, 2, "reference")]) as ds:
        assert ds.sizes["tracer"] == 8 + 16 + 32 and "limit_norm_w2" not in ds


# ------------------------------------------------------------------------------ sweeps
def test_sweep_catalog_selection_and_risk_table(sweep_dir):
    os.remove(sweep_dir / "catalog.csv")  # merged in memory on open: a reader writes nothing
    sweep = analysis.open_sweep(sweep_dir)
    assert len(sweep.catalog) == 4 and not (sweep_dir / "catalog.csv").exists()
    assert len(analysis.open_sweep(sweep_dir, refresh=True).catalog) == 4 and (sweep_dir / "catalog.csv").exists()
    assert sorted(sweep.select(m=8)["run.seed"]) == [0, 1]
    assert len(sweep.select(m=[8, 64], seed=1)) == 2
    run_id = sweep.select(m=64, seed=0).index[0]
    with sweep.run(run_id[:6]) as ds:
        assert ds.attrs["run_id"] == run_id
    risk = sweep.risk()
    assert risk.dims == ("m", "seed", "time") and list(risk["m"].values) == [8, 64]
    for (m, seed, _), path in _runs(sweep_dir).items():
        np.testing.assert_array_equal(risk.sel(m=m, seed=seed), _h5(path, "observables/risk/value"))


def test_an_empty_directory_is_an_empty_sweep(tmp_path):
    sweep = analysis.open_sweep(tmp_path)
    assert len(sweep.catalog) == 0 and len(sweep.runs()) == 0
    with pytest.raises(FileNotFoundError):
        analysis.open_sweep(tmp_path / "missing")


def test_stack_seeds_of_one_width_and_refuse_mixed_widths(sweep_dir):
    sweep = analysis.open_sweep(sweep_dir)
    stacked = sweep.stack(m=64, along="seed", particles=True)
    assert list(stacked["seed"].values) == [0, 1]
    assert stacked["position"].dims == ("seed", "time", "particle", "coord")
    runs = _runs(sweep_dir)
    for seed in (0, 1):
        path = runs[(64, seed, None)]
        np.testing.assert_array_equal(stacked["risk"].sel(seed=seed), _h5(path, "observables/risk/value"))
        np.testing.assert_array_equal(stacked["position"].sel(seed=seed), _h5(path, "particles/neurons/position/value"))
    assert "position" not in sweep.stack(m=8)
    with pytest.raises(ValueError, match="model.m"):
        sweep.stack(along="seed")


def test_width_free_moments_and_quantiles_match_numpy(sweep_dir):
    sweep = analysis.open_sweep(sweep_dir)
    moments = sweep.moments(orders=(1, 2))
    quantiles = sweep.quantiles(names=("norm", "signed_norm"), q=(0.25, 0.5))
    assert moments["norm"].dims == ("m", "seed", "time", "order")
    assert quantiles["norm"].dims == ("m", "seed", "time", "quantile")
    for (m, seed, _), path in _runs(sweep_dir).items():
        W = _h5(path, "particles/neurons/position/value")
        norm, c = np.linalg.norm(W[:, :, :4], axis=2), W[:, :, 5]
        np.testing.assert_allclose(moments["norm"].sel(m=m, seed=seed, order=1), norm.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(moments["readout"].sel(m=m, seed=seed, order=2), (c**2).mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(quantiles["signed_norm"].sel(m=m, seed=seed),
                                   np.quantile(c * norm, [0.25, 0.5], axis=1).T, rtol=1e-12)


def test_overlaps_with_the_teacher(sweep_dir):
    path = _runs(sweep_dir)[(8, 1, None)]
    with analysis.open_run(path) as ds:
        overlap = analysis.particle_observables(ds, ["overlap"])["overlap"]
    assert overlap.dims == ("time", "particle", "teacher")
    W, teacher = _h5(path, "particles/neurons/position/value"), _h5(path, "parameters/teacher/position")
    np.testing.assert_allclose(overlap, np.einsum("tid,jd->tij", W[:, :, :4], teacher[:, :4]), rtol=1e-12)


def test_limit_observable_leaves_out_references(limit_dir):
    sweep = analysis.open_sweep(limit_dir)
    values = sweep.observable("limit_tracer_deviation")
    assert list(values["m"].values) == [8, 16, 32] and list(values["seed"].values) == [0, 1, 2]
    for (m, seed, role), path in _runs(limit_dir).items():
        if role == "member":
            np.testing.assert_array_equal(values.sel(m=m, seed=seed),
                                          _h5(path, "observables/limit/tracer_deviation/value"))


# ------------------------------------------------------------------------------ plots
def test_plot_risk_draws_the_seed_mean_per_width_on_log_axes(sweep_dir):
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    risk = analysis.open_sweep(sweep_dir).risk()
    fig = analysis.plot_risk(risk)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_xlabel() == "time t"
    assert "mean over seeds" in ax.get_ylabel()
    assert [line.get_label() for line in ax.get_lines()] == ["m=8 (2 seeds)", "m=64 (2 seeds)"]
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2
    runs = _runs(sweep_dir)
    times = _h5(runs[(8, 0, None)], "observables/risk/time")
    for line, m in zip(ax.get_lines(), (8, 64)):
        expected = np.mean([_h5(runs[(m, s, None)], "observables/risk/value") for s in (0, 1)], axis=0)
        np.testing.assert_array_equal(line.get_xdata(), times[times > 0])
        np.testing.assert_allclose(line.get_ydata(), expected[times > 0], rtol=1e-14)


def test_plot_rate_shows_the_fitted_slope_and_its_interval(limit_dir):
    values = analysis.open_sweep(limit_dir).observable("limit_tracer_deviation")
    t = float(values["time"][-1])
    fig = analysis.plot_rate(values, times=[t], n_boot=300)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "width m" and ax.get_ylabel() == "tracer_deviation"
    expected = distance.rate([8, 16, 32], values.sel(time=t).values, n_boot=300)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == [f"t={t:g}: slope {expected.slope:+.3f} [{expected.low:+.3f}, {expected.high:+.3f}]"]
    means, fit = ax.get_lines()[0], ax.get_lines()[-1]
    np.testing.assert_array_equal(means.get_xdata(), [8, 16, 32])
    np.testing.assert_allclose(means.get_ydata(), values.sel(time=t).mean("seed"), rtol=1e-12)
    assert fit.get_linestyle() == "--"
    np.testing.assert_allclose(fit.get_ydata()[[0, -1]],
                               np.exp(expected.intercept) * np.array([8, 32]) ** expected.slope)


def test_norm_histogram_against_the_initial_chi_law(sweep_dir):
    from scipy import stats

    path = _runs(sweep_dir)[(64, 0, None)]
    with analysis.open_run(path) as ds:
        fig = analysis.plot_norm_histogram(ds, bins=20)
        norms0 = np.linalg.norm(ds["position"].isel(time=0).values[:, :4], axis=1)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("|a|") and ax.get_ylabel() == "density"
    assert len(ax.patches) == 2  # t = 0 and the last record
    for patch in ax.patches:  # each step histogram has unit area
        x, y = patch.get_path().vertices.T
        assert abs(np.sum(np.diff(x) * y[:-1]) - 1.0) < 1e-9
    (reference,) = ax.get_lines()
    law = stats.chi(df=4, scale=1.5 / 2.0)  # a ~ tau N(0, I/d): |a| = (tau / sqrt(d)) chi_d
    np.testing.assert_allclose(reference.get_ydata(), law.pdf(reference.get_xdata()))
    x, y = reference.get_xdata(), reference.get_ydata()
    assert abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) - law.cdf(x[-1])) < 1e-4
    # The reference is the law the initial norms were drawn from (KS test, 64 draws).
    assert stats.kstest(norms0, law.cdf).pvalue > 1e-3


# ------------------------------------------------------------------------------ report, import
def test_report_writes_the_rate_plots_through_plot_rate(limit_dir, capsys):
    from meanfield import report

    table, plots = report.limit_rates(limit_dir, n_times=2, n_boot=200)
    assert sorted(os.path.basename(p) for p in plots) == ["rates_norm_w2.png", "rates_tracer_deviation.png"]
    for path in plots:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "tracer_deviation t=" in table


def test_missing_extra_gives_one_clear_error(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("meanfield.analysis")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r'pip install "meanfield\[analysis\]"'):
        importlib.import_module("meanfield.analysis")
