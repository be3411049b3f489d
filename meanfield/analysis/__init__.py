"""Analysis in a notebook: runs as xarray Datasets, sweeps as pandas catalogs, and plots.

Needs the ``analysis`` extra (xarray, pandas, matplotlib)::

    pip install "meanfield[analysis]"

Loading
    :func:`open_run` (one run file, particles read lazily), :func:`open_sweep` (a
    :class:`Sweep`: catalog, runs on demand, ``stack`` of seeds, width-free reductions
    ``risk``, ``moments``, ``quantiles``, ``observable``), and per run
    :func:`particle_observables`, :func:`moments`, :func:`quantiles`.
Plots (each returns a :class:`matplotlib.figure.Figure`)
    :func:`plot_risk` (risk against time across widths, seed bands), :func:`plot_rate`
    (a metric against m with its fitted slope and interval), :func:`plot_norm_histogram`
    (|a| against a reference density), :func:`plot_phase_diagram` and
    :func:`plot_theory_vs_simulation` (signal propagation), :func:`plot_modes` (deep linear),
    :func:`plot_particle_trajectories`, :func:`plot_displacement`, :func:`plot_tangent_distance`
    (lazy versus active).
Pictures for the command line (``meanfield plot``, ``meanfield animate``)
    :func:`plot_directory_risk` and :func:`write_directory_risk` (the risk plot of any run
    directory), :func:`cloud_frames`, :func:`plot_cloud` and :func:`animate_cloud` (a stored
    run's particle cloud projected on the teacher's directions or principal components, one
    frame or a GIF/MP4 over its records).
"""
try:
    import matplotlib  # noqa: F401
    import pandas  # noqa: F401
    import xarray  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f"meanfield.analysis needs xarray, pandas and matplotlib ({error.name} is missing): "
                      'pip install "meanfield[analysis]"') from error

# Plots written beside the objects they draw, re-exported here, one line each.
from ..linear import plot_modes  # noqa: E402
from ..signal import plot_phase_diagram, plot_theory_vs_simulation  # noqa: E402
from ._load import Sweep, moments, open_run, open_sweep, particle_observables, quantiles
from ._particles import (
    plot_displacement,
    plot_particle_trajectories,
    plot_tangent_distance,
    projection_directions,
)
from ._pictures import (
    CloudFrames,
    animate_cloud,
    cloud_frames,
    plot_cloud,
    plot_directory_risk,
    write_directory_risk,
)
from ._plots import initial_norm_density, pick_times, plot_norm_histogram, plot_rate, plot_risk

__all__ = [
    "CloudFrames",
    "Sweep",
    "animate_cloud",
    "cloud_frames",
    "initial_norm_density",
    "moments",
    "open_run",
    "open_sweep",
    "particle_observables",
    "pick_times",
    "plot_cloud",
    "plot_directory_risk",
    "plot_displacement",
    "plot_modes",
    "plot_norm_histogram",
    "plot_particle_trajectories",
    "plot_phase_diagram",
    "plot_rate",
    "plot_risk",
    "plot_tangent_distance",
    "plot_theory_vs_simulation",
    "projection_directions",
    "quantiles",
    "write_directory_risk",
]
