"""Online SGD of committee machines in high dimension: the order-parameter ODEs (d -> infinity at
fixed width) and the finite-d simulation they describe.

See :mod:`meanfield.online._ode` for the equations with optional biases (Saad & Solla 1995; Goldt
et al. 2019) and :mod:`meanfield.online._integrals` for the Gaussian averages I2, I3, I4, J2, K2
(with means) and their measured accuracy, :mod:`meanfield.online._engine_map` for the map to
meanfield's particle networks (overlaps and biases of particles, the ODE's learning rates and time
of an engine SGD run), :mod:`meanfield.online._trajectory_file` for a trajectory as a run file of
its own. The user page is docs/capabilities/online_sgd.md.
"""
from ._engine_map import (
    ORDER_PARAMETER_MAX_SERIES,
    OrderParameterMeasure,
    alpha_of_time,
    biases,
    ode_learning_rates,
    order_parameter_names,
    overlaps,
    stack_biases,
    stack_order_parameters,
)
from ._integrals import (
    AVERAGE_METHODS,
    AVERAGE_NAMES,
    CLOSED_FORM_AVERAGES,
    CONDITIONAL_RULE_AVERAGES,
    NON_SMOOTH_ACTIVATIONS,
    QUADRATURE_ORDERS,
    RELU_I4_NODES,
    SOBOL_LOG2_POINTS,
    GaussianAverages,
)
from ._ode import (
    ODE_ATOL,
    ODE_RTOL,
    OrderParameterTrajectory,
    generalisation_error,
    integrate_order_parameters,
    joint_covariance,
    order_parameter_rates,
    simulate_online_sgd,
    weights_with_overlaps,
)
from ._trajectory_file import read_ode_settings, read_trajectory, write_trajectory

__all__ = [
    "AVERAGE_METHODS",
    "AVERAGE_NAMES",
    "CLOSED_FORM_AVERAGES",
    "CONDITIONAL_RULE_AVERAGES",
    "NON_SMOOTH_ACTIVATIONS",
    "QUADRATURE_ORDERS",
    "RELU_I4_NODES",
    "SOBOL_LOG2_POINTS",
    "GaussianAverages",
    "ODE_ATOL",
    "ODE_RTOL",
    "ORDER_PARAMETER_MAX_SERIES",
    "OrderParameterMeasure",
    "OrderParameterTrajectory",
    "alpha_of_time",
    "biases",
    "ode_learning_rates",
    "order_parameter_names",
    "overlaps",
    "stack_biases",
    "stack_order_parameters",
    "generalisation_error",
    "integrate_order_parameters",
    "joint_covariance",
    "order_parameter_rates",
    "read_ode_settings",
    "read_trajectory",
    "simulate_online_sgd",
    "weights_with_overlaps",
    "write_trajectory",
]
