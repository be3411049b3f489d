"""Distances between particle clouds and to the mean-field limit, and their rates in m.

SCIENCE.md section 4 lists the yardsticks; this package computes them (optimal transport
with POT, in float64):

Point clouds (any dimension)
    :func:`wasserstein` (exact W_p, sliced above a size limit with ``method="auto"``),
    :func:`sinkhorn_divergence` (debiased entropic divergence, -> W_p^p as reg -> 0),
    :func:`sliced_wasserstein` (with its Monte Carlo standard error),
    :func:`wasserstein_1d` (exact, from quantile functions).
Scalar observables of states (m, d + 2) = (a, b, c)
    :func:`observable` (``norm`` |a_i|, ``readout`` c_i, ``signed_norm`` c_i |a_i|,
    ``overlap`` a_i . a*_j), :func:`observable_w2` (exact 1-D W2 across widths),
    :func:`risk_gap`.
2-homogeneous models (relu, trained readout)
    :func:`sphere_measure` (nu = (1/m) sum |c_i||a_i| delta_{a_i/|a_i|}),
    :func:`sphere_distance` (W_p between normalised sphere measures, plus both masses).
Rates across widths
    :func:`rate` (log-log slope, bootstrap interval over seeds), :func:`rate_table`,
    :func:`plot_rates` (needs matplotlib).

Caution: W2 between an m-sample and its law in p = d + 2 dimensions decays like m^(-1/p),
so a raw cloud W2 mostly measures sampling noise; the 1-D observables and the sliced
distance converge at m^(-1/2).
"""
from ._clouds import METHODS, sinkhorn_divergence, sliced_wasserstein, wasserstein, wasserstein_1d
from ._observables import OBSERVABLES, observable, observable_w2, risk_gap
from ._rates import Rate, plot_rates, rate, rate_table
from ._sphere import COSTS, SphereDistance, sphere_distance, sphere_measure

__all__ = [
    "COSTS",
    "METHODS",
    "OBSERVABLES",
    "Rate",
    "SphereDistance",
    "observable",
    "observable_w2",
    "plot_rates",
    "rate",
    "rate_table",
    "risk_gap",
    "sinkhorn_divergence",
    "sliced_wasserstein",
    "sphere_distance",
    "sphere_measure",
    "wasserstein",
    "wasserstein_1d",
]
