"""Compile every CUDA kernel to PTX for Hopper (cc 9.0), float32 and float64, with no GPU.

Run by tests/test_cuda.py in a subprocess (numba's CUDA simulator, which the other CUDA
tests use, cannot compile: ``NUMBA_ENABLE_CUDASIM`` is read once per process).

The simulator does no type checking; this compiles each kernel for real with the argument
types its launcher passes (``ptx_signatures`` of each module), and checks that a float32
kernel does no double-precision work: its PTX may contain no instruction on ``.f64``
operands (arithmetic, loads, stores, comparisons, and also ``cvt`` to or from f64, since a
float32 kernel has no reason to convert to double) and no ``%fd`` (double) register. That
is the whole rule: no exception for conversions, because none is needed.
"""
import re
import types

import numba.cuda.dispatcher
import pytest
from numba import cuda, float32, float64

from meanfield.kernels import (
    gpu_ensemble,
    gpu_finite_data,
    gpu_population,
    gpu_population_bias_hessian,
    gpu_population_series,
    gpu_reductions,
    gpu_updates,
)

# compile_ptx needs no GPU, but numba-cuda compiles the device functions a kernel calls for
# the current device's compute capability; with no device, say it is Hopper.
numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

D = 5  # the kernels are specialised on d; any d compiles to the same instructions
F64_INSTRUCTION = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z][a-z0-9_.]*\.f64\b.*$", re.MULTILINE)
F64_REGISTER = re.compile(r"%fd\d*")


def signatures(T):
    return (gpu_population.ptx_signatures(T, D) + gpu_population_bias_hessian.ptx_signatures(T, D)
            + gpu_population_series.ptx_signatures(T, D) + gpu_finite_data.ptx_signatures(T, D)
            + gpu_updates.ptx_signatures(T) + gpu_reductions.ptx_signatures(T) + gpu_ensemble.ptx_signatures(T, D))


NAMES = [name for name, _, _ in signatures(float64)]


def compile_for_hopper(T, name):
    (function, argtypes), = [(f, a) for n, f, a in signatures(T) if n == name]
    ptx, _ = cuda.compile_ptx(function, argtypes, cc=(9, 0))
    return ptx


def double_precision(ptx):
    """The lines of ``ptx`` that compute in double precision, and its %fd registers."""
    return F64_INSTRUCTION.findall(ptx) + sorted(set(F64_REGISTER.findall(ptx)))


def test_every_kernel_is_listed():
    expected = {"closed_form_pair_field", "quadrature_pair_field", "bias_pair_field", "pair_velocity",
                "bias_closed_form_hessian", "bias_closed_form_hessian_vector_product",
                "bias_hessian_singular_particles", "series_pair_field",
                "finite_data_forward", "finite_data_loss",
                "finite_data_backward",
                "euler_update", "heavy_ball_update", "heavy_ball_decay_update", "langevin_update",
                "advance_noise_states", "device_sum",
                "sum_of_squares", "all_finite", "ensemble_closed_form_evaluate", "closed_form_points_velocity",
                "member_sums_of_squares"}
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_float64_kernel_compiles_for_hopper(name):
    ptx = compile_for_hopper(float64, name)
    assert ".target sm_90" in ptx
    assert ".entry" in ptx


@pytest.mark.parametrize("name", NAMES)
def test_float32_kernel_has_no_double_precision(name):
    ptx = compile_for_hopper(float32, name)
    assert ".target sm_90" in ptx
    offending = double_precision(ptx)
    assert not offending, f"{name} (float32) computes in double precision: {offending[:10]}"


def test_double_precision_detector_sees_f64():
    """The check is not vacuous: the float64 pair kernel's PTX is full of f64 instructions."""
    assert len(double_precision(compile_for_hopper(float64, "closed_form_pair_field"))) > 10
