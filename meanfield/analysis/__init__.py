"""Analysis of stored runs: plots of particle trajectories and of lazy-versus-active observables.

Plot functions use matplotlib's object-oriented API on the Agg backend and return the Figure
(``pip install 'meanfield[analysis]'``).
"""
from ._particles import (
    plot_displacement,
    plot_particle_trajectories,
    plot_tangent_distance,
    projection_directions,
)

__all__ = [
    "plot_displacement",
    "plot_particle_trajectories",
    "plot_tangent_distance",
    "projection_directions",
]
