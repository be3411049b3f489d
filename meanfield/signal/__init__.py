"""Signal propagation in deep random networks: mean-field maps, phase diagram, simulation.

See :mod:`meanfield.signal._maps` for the formulas (Poole et al. 2016, Schoenholz et al. 2016)
and the measured quadrature accuracy.
"""
from ._maps import (
    ACTIVATIONS,
    CLOSED_FORM,
    SignalPropagation,
    c_fixed_point,
    chi_1,
    correlation_map,
    covariance_map,
    dphi,
    fixed_points,
    gauss_hermite,
    gaussian_moments,
    pair_moments,
    phi,
    propagate,
    q_fixed_point,
    variance_map,
)
from ._phase import chi_1_at, critical_curve, critical_sigma_w2, xi_c_grid

__all__ = [
    "ACTIVATIONS",
    "CLOSED_FORM",
    "SignalPropagation",
    "c_fixed_point",
    "chi_1",
    "chi_1_at",
    "correlation_map",
    "covariance_map",
    "critical_curve",
    "critical_sigma_w2",
    "dphi",
    "fixed_points",
    "gauss_hermite",
    "gaussian_moments",
    "pair_moments",
    "phi",
    "propagate",
    "q_fixed_point",
    "variance_map",
    "xi_c_grid",
]
from ._simulate import SimulatedPropagation, input_pairs, network_seed, simulate  # noqa: E402

__all__ += ["SimulatedPropagation", "input_pairs", "network_seed", "simulate"]
from ._plots import plot_phase_diagram, plot_theory_vs_simulation  # noqa: E402

__all__ += ["plot_phase_diagram", "plot_theory_vs_simulation"]
