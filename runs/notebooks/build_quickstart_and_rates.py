"""Write quickstart.ipynb and width_sweep_rates.ipynb (without outputs) from the cells below.

    python runs/notebooks/build_quickstart_and_rates.py

Edit the cells here, not in the notebooks, and run this again; tests/test_notebooks.py
executes every notebook of this folder headless (MEANFIELD_NOTEBOOK_SMALL=1).
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def setup(experiment: str, out_name: str) -> str:
    """The first code cell: SMALL, the checkout (REPO) and the output folder (OUT)."""
    return f'''import os
import pathlib
import tempfile

SMALL = os.environ.get("MEANFIELD_NOTEBOOK_SMALL") == "1"  # tiny sizes (the test suite sets it)


def find_repo():
    """The checkout: $MEANFIELD_REPO, or the nearest folder above that holds runs/{experiment}."""
    if os.environ.get("MEANFIELD_REPO"):
        return pathlib.Path(os.environ["MEANFIELD_REPO"])
    here = pathlib.Path.cwd().resolve()
    return next(p for p in (here, *here.parents) if (p / "runs" / "{experiment}").exists())


REPO = find_repo()
EXPERIMENT = REPO / "runs" / "{experiment}"
# The full runs go where `meanfield run` puts them (finished runs are reused, not redone).
OUT = pathlib.Path(tempfile.mkdtemp(prefix="{out_name}-")) if SMALL else REPO / "out" / "{out_name}"
%matplotlib inline'''


def quickstart():
    return [
        new_markdown_cell("""# Quickstart in a notebook

The main job (`runs/quickstart.toml`): a relu teacher–student problem, d = 20, students of
width m = 32 … 2048 trained by gradient descent on the population risk, three seeds per
width. We run it (or reuse the runs `meanfield run runs/quickstart.toml` left in
`out/quickstart`), open the sweep, slice it by width, seed and time, and plot.
With `MEANFIELD_NOTEBOOK_SMALL=1` the runs stop at t = 2."""),
        new_code_cell(setup("quickstart.toml", "quickstart")),
        new_markdown_cell("## Run the sweep\n\n`meanfield.sweep.run_shard` is what `meanfield run` calls: "
                          "one HDF5 file per run in `OUT`, plus `catalog.csv` and `index.h5`."),
        new_code_cell('''from meanfield import sweep

overrides = ["dynamics.t_max=2.0", "record.times=3"] if SMALL else []
summaries = sweep.run_shard(EXPERIMENT, OUT, overrides=overrides, jobs=1 if SMALL else 2)
print(f"{len(summaries)} runs in {OUT}:", sorted({s['status'] for s in summaries}))'''),
        new_markdown_cell("## Open it\n\nThe catalog is a pandas DataFrame (one row per run, every config "
                          "value as a column); runs are opened only when asked."),
        new_code_cell('''from meanfield.analysis import open_sweep, plot_norm_histogram, plot_risk

runs = open_sweep(OUT)
runs.catalog[["model.m", "run.seed", "status", "final_time", "final_risk"]].sort_values(["model.m", "run.seed"])'''),
        new_code_cell('''risk = runs.risk()  # an xarray.DataArray with dims (m, seed, time)
risk.sel(time=[1.0, risk.time.values[-1]], method="nearest").mean("seed").to_pandas()'''),
        new_code_cell('''plot_risk(risk, title="relu teacher-student, d = 20")'''),
        new_markdown_cell("## One run\n\n`position` (time, particle, coord) is read from the file only when "
                          "sliced: here one frame."),
        new_code_cell('''ds = runs.run(runs.select(m=512, seed=0).index[0])
ds'''),
        new_code_cell('''c_final = ds.position.sel(coord="c").isel(time=-1)  # reads one frame
print(f"t = {float(c_final.time):g}: mean c = {float(c_final.mean()):.4f}, "
      f"largest |c| = {float(abs(c_final).max()):.3f}")
plot_norm_histogram(ds)'''),
        new_markdown_cell("## Width-free observables\n\nRuns of different widths reduce to arrays of the "
                          "same shape: moments and quantiles over the particles of |a|, c and c|a|."),
        new_code_cell('''moments = runs.moments(names=("norm", "signed_norm"), orders=(1, 2))
moments["signed_norm"].sel(order=1).mean("seed").isel(time=[0, -1]).to_pandas()  # E c|a|, start and end'''),
        new_code_cell('''ds.close()'''),
    ]


def width_sweep_rates():
    return [
        new_markdown_cell("""# Width sweep and rates

`runs/limit_relu.toml`: students of width m = 32 … 512 (four seeds) are compared at every
recorded time with a reference of width M = 2048 from the same seed, which carries each
student's initial points as tracers. The distances are stored in each run file under
`/observables/limit`; here we fit their log–log slopes against m. The full run takes a few
minutes on 2 cores; with `MEANFIELD_NOTEBOOK_SMALL=1` it is shrunk to m = 32, 64, 128
(three seeds) against M = 512, up to t = 2."""),
        new_code_cell(setup("limit_relu.toml", "limit_relu")),
        new_markdown_cell("## Run it, as `meanfield run` would\n\nThe command line prints the rate table "
                          "and writes `rates_<metric>.png` next to the runs."),
        new_code_cell('''from meanfield.cli import main

overrides = []
if SMALL:  # a smaller copy of the experiment: m = 32, 64, 128 and three seeds against M = 512, up to t = 2
    text = EXPERIMENT.read_text()
    EXPERIMENT = pathlib.Path(tempfile.mkdtemp()) / "limit_relu_small.toml"
    EXPERIMENT.write_text(text[: text.index("[sweep]")]
                          + '[sweep]\\n"model.m" = [32, 64, 128]\\n"run.seed" = [0, 1, 2]\\n')
    overrides = ["dynamics.t_max=2.0", "record.times=3", "limit.reference_m=512", "limit.sliced_projections=50"]
arguments = ["run", str(EXPERIMENT), "--out", str(OUT), "--jobs", "1" if SMALL else "2"]
for override in overrides:
    arguments += ["--set", override]
assert main(arguments) == 0'''),
        new_markdown_cell("## The distances as arrays"),
        new_code_cell('''from meanfield import distance
from meanfield.analysis import open_sweep, pick_times, plot_rate, plot_risk

runs = open_sweep(OUT)
runs.catalog.groupby(["limit.role", "model.m"]).size()'''),
        new_code_cell('''deviation = runs.observable("limit_tracer_deviation")  # (m, seed, time): members only
deviation'''),
        new_code_cell('''plot_rate(deviation, n_times=2)'''),
        new_markdown_cell("## A rate table for several metrics\n\n`meanfield.distance.rate` fits the slope "
                          "and a bootstrap interval over seeds."),
        new_code_cell('''rows = []
for metric in ("tracer_deviation", "norm_w2", "sliced_w2"):
    values = runs.observable(f"limit_{metric}")
    for t in pick_times(values.time.values, 2):
        rows.append((f"{metric} t={t:g}", distance.rate(values.m.values, values.sel(time=t).values)))
print(distance.rate_table(rows))'''),
        new_markdown_cell("## Risk across widths, reference included"),
        new_code_cell('''plot_risk(runs.risk(), title="members and their width-M reference")'''),
    ]


def write(name, cells):
    for index, cell in enumerate(cells):  # stable ids: rebuilding gives the same file
        cell["id"] = f"{os.path.splitext(name)[0]}-{index}"
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nbformat.validate(notebook)
    nbformat.write(notebook, os.path.join(HERE, name))


if __name__ == "__main__":
    write("quickstart.ipynb", quickstart())
    write("width_sweep_rates.ipynb", width_sweep_rates())
