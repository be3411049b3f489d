"""Landscape tools: Hessians, end-point classification, precise descent, spurious-minima census
and mode connectivity (SCIENCE.md section 5).

Variables of every Hessian are the trainable coordinates of the particles, particle-major:
x = W[:, model.trainable].ravel(), n_var = m * model.trainable.sum(); the Hessian is that of
the objective F (grad F = -v / m).
"""
from ._census import (
                      after_runs,
                      census,
                      census_table,
                      connectivity_missing,
                      connectivity_rows,
                      connectivity_table,
                      plot_census,
                      plot_paths,
                      report_text,
                      store_endpoint,
)
from ._connectivity import PATHS, connectivity, match_particles, path_points
from ._endpoint import KINDS, EndPoint, classify
from ._hessian import Spectrum, gradient, hessian, hessian_operator, spectrum_extremes
from ._precise import PreciseDescent, descend_to_precision

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
