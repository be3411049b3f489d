"""Landscape tools: Hessians, end-point classification, precise descent, spurious-minima census
and mode connectivity (SCIENCE.md section 5).

Variables of every Hessian are the trainable coordinates of the particles, particle-major:
x = W[:, model.trainable].ravel(), n_var = m * model.trainable.sum(); the Hessian is that of
the objective F (grad F = -v / m).
"""
import importlib

# name -> submodule. The submodules load on first use (PEP 562): ``import meanfield`` imports
# ``landscape._refine`` (``meanfield.refine``), and an eager import here would load h5py and
# scipy.sparse.linalg into every process, 60 ms each time the command line starts.
_WHERE = {
    **dict.fromkeys(("after_runs", "census", "census_table", "connectivity_missing", "connectivity_rows",
                     "connectivity_table", "plot_census", "plot_paths", "report_text", "store_endpoint"), "_census"),
    **dict.fromkeys(("PATHS", "connectivity", "match_particles", "path_points"), "_connectivity"),
    **dict.fromkeys(("KINDS", "EndPoint", "classify"), "_endpoint"),
    **dict.fromkeys(("Spectrum", "gradient", "hessian", "hessian_operator", "spectrum_extremes"), "_hessian"),
    **dict.fromkeys(("PreciseDescent", "descend_to_precision"), "_precise"),
}


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "KINDS",
    "after_runs",
    "census",
    "census_table",
    "connectivity_missing",
    "connectivity_rows",
    "connectivity_table",
    "report_text",
    "store_endpoint",
    "PATHS",
    "EndPoint",
    "PreciseDescent",
    "Spectrum",
    "classify",
    "connectivity",
    "descend_to_precision",
    "gradient",
    "hessian",
    "hessian_operator",
    "match_particles",
    "path_points",
    "plot_census",
    "plot_paths",
    "spectrum_extremes",
]
