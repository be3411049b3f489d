"""Numba-compiled numeric kernels of meanfield (CPU). No I/O, no configuration.

Every kernel takes plain arrays in the particle layout ``W[:, :d] = a``, ``W[:, d] = b``,
``W[:, d + 1] = c`` and works in float32 or float64 (the dtype of ``W``).
"""
from ._scalar import (
    ACTIVATION_CODES,
    LOSS_CODES,
    activation,
    activation_derivative,
    activation_second_derivative,
    loss,
    loss_derivative,
    loss_second_derivative,
)
from .deep_random import deep_random_forward
from .ensemble import (
    closed_form_points_velocity,
    ensemble_closed_form_evaluate,
    ensemble_work_arrays,
    member_sums_of_squares,
)
from .finite_data import (
    FiniteDataWorkspace,
    finite_data_field,
    finite_data_workspace,
    network_output,
    unfused_finite_data_field,
)
from .finite_data_hessian import finite_data_hessian, finite_data_hessian_vector_product
from .population import acos_branchless, closed_form_pair_field, fused_closed_form_pair_field, quadrature_pair_field
from .population_bias import bias_pair_field
from .population_bias_hessian import (
    bias_closed_form_hessian,
    bias_closed_form_hessian_vector_product,
    bias_hessian_singular_particles,
)
from .population_hessian import closed_form_hessian, closed_form_hessian_vector_product
from .population_series import series_pair_sums, shared_tables
from .tangent import tangent_field, tangent_output
from .updates import (
    all_finite,
    euler_update,
    heavy_ball_decay_update,
    heavy_ball_update,
    langevin_update,
    sum_of_squares,
    weight_normalized_update,
)

__all__ = [
    "closed_form_points_velocity",
    "ensemble_closed_form_evaluate",
    "ensemble_work_arrays",
    "member_sums_of_squares",
    "ACTIVATION_CODES",
    "LOSS_CODES",
    "activation",
    "activation_derivative",
    "activation_second_derivative",
    "loss",
    "loss_derivative",
    "loss_second_derivative",
    "finite_data_field",
    "finite_data_workspace",
    "FiniteDataWorkspace",
    "network_output",
    "unfused_finite_data_field",
    "closed_form_pair_field",
    "bias_pair_field",
    "series_pair_sums",
    "shared_tables",
    "bias_closed_form_hessian",
    "bias_closed_form_hessian_vector_product",
    "bias_hessian_singular_particles",
    "closed_form_hessian",
    "closed_form_hessian_vector_product",
    "finite_data_hessian",
    "finite_data_hessian_vector_product",
    "fused_closed_form_pair_field",
    "acos_branchless",
    "quadrature_pair_field",
    "all_finite",
    "euler_update",
    "heavy_ball_update",
    "langevin_update",
    "heavy_ball_decay_update",
    "weight_normalized_update",
    "sum_of_squares",
    "deep_random_forward",
    "tangent_field",
    "tangent_output",
]
