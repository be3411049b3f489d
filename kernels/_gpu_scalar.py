"""CUDA device versions of the scalar functions of ``_scalar`` and of the pair kernels.

The device functions are compiled from the very Python source of the CPU ones: every
``numba.njit`` function of a module is re-bound to one namespace in which each njit function
is replaced by its device twin (``numba.cuda.jit(device=True)`` of the same code), so calls
between them stay on the device. The GPU therefore evaluates exactly the formulas the CPU
kernels evaluate, with the same typed constants (``like(z, value)`` is a float32 constant in a
float32 kernel), and a new activation or loss in ``_scalar.py`` (a branch in ``activation``
and ``activation_derivative``, private helpers included) is on the GPU with no change here,
as long as its body uses what CUDA supports (``math`` functions, arithmetic, ``like``).

One ``math`` function differs on the device: ``math.sin`` in float32 (``_device_sin``), whose
libdevice version carries a double-precision slow path.
"""
import math
import types

from numba import cuda, float32
from numba.core import types as nb_types
from numba.core.extending import overload
from numba.core.registry import CPUDispatcher

from . import _gaussian, _scalar
from . import ensemble as _ensemble
from . import population as _population
from . import population_bias as _population_bias
from . import population_bias_hessian as _population_bias_hessian
from . import population_series as _population_series


def device_twins(module, **device_helpers):
    """{name: CUDA device function} for every njit function of ``module``.

    ``device_helpers`` are device functions of other modules that ``module`` calls (they
    replace its imported njit names). Compilation is lazy, so the shared namespace is
    complete by the time any twin is compiled.
    """
    namespace = dict(vars(module))
    namespace.update(device_helpers)
    twins = {}
    for name, value in vars(module).items():
        if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__:
            py = value.py_func
            clone = types.FunctionType(py.__code__, namespace, py.__name__, py.__defaults__, py.__closure__)
            clone.__doc__ = py.__doc__
            twins[name] = cuda.jit(device=True)(clone)
    namespace.update(twins)
    return twins


_scalar_twins = device_twins(_scalar)
activation = _scalar_twins["activation"]
activation_derivative = _scalar_twins["activation_derivative"]
loss = _scalar_twins["loss"]
loss_derivative = _scalar_twins["loss_derivative"]
_population_twins = device_twins(_population, activation=activation, activation_derivative=activation_derivative)
closed_form_pair = _population_twins["_closed_form_pair"]
quadrature_pair = _population_twins["_quadrature_pair"]
# The fused closed-form pass of ``ensemble``: a pair's scalars in both orders, and a point's
# ordered sums against a measure (kernels/gpu_ensemble.py).
_ensemble_twins = device_twins(_ensemble)
symmetric_pair = _ensemble_twins["_symmetric_pair"]
ordered_sums = _ensemble_twins["_ordered_sums"]


def _device_sin(x):
    """sin(x); in a float32 CUDA kernel, sinpi(x / pi), which has no double precision in it.

    libdevice's sinf reduces arguments beyond |x| ~ 1e5 (Payne-Hanek) in double precision,
    so a float32 kernel calling math.sin has f64 instructions (tests/cuda_ptx_kernels.py
    forbids them); sinpif reduces exactly in single precision. The rounding of x / pi costs
    about one ulp of the argument, so about one ulp of the result (|x cot x| <= 1 for
    |x| <= pi / 2, the range of the Genz rule). Float64 keeps math.sin. Called as Python (the
    CUDA simulator), this is math.sin.
    """
    return math.sin(x)


# Not inline="always": numba-cuda 0.30 then fails to lower the float32 product (mul of "omitted").
@overload(_device_sin, target="cuda")
def _device_sin_overload(x):
    if isinstance(x, nb_types.Float) and x.bitwidth == 32:
        from numba.cuda import libdevice

        def impl(x):
            return libdevice.sinpif(x * float32(0.3183098861837907))  # 1 / pi
        return impl

    def impl(x):
        return math.sin(x)
    return impl


# ``math`` as the device twins of ``_gaussian`` see it: the same module but for sin.
_device_math = types.ModuleType("math")
_device_math.__dict__.update(vars(math))
_device_math.sin = _device_sin

_gaussian_twins = device_twins(_gaussian, math=_device_math)
normal_pdf = _gaussian_twins["normal_pdf"]
normal_cdf = _gaussian_twins["normal_cdf"]
bivariate_normal_cdf = _gaussian_twins["bivariate_normal_cdf"]
bivariate_normal_excess = _gaussian_twins["bivariate_normal_excess"]
# Every _gaussian twin, whichever of them population_bias imports (private ones included).
_bias_twins = device_twins(_population_bias, **_gaussian_twins)
bias_pair = _bias_twins["bias_pair"]

# The scalar parts of the Hessian with biases (``population_bias_hessian``): a pair's Gaussian
# moments, its geometry and basis, and a block applied to a direction, compiled for the device
# from the CPU source (their constants are ``like`` the arguments, as above).
_bias_hessian_twins = device_twins(_population_bias_hessian, **_gaussian_twins, _clip=_bias_twins["_clip"],
                                   _one_sided_ratio=_bias_twins["_one_sided_ratio"])
hessian_dot = _bias_hessian_twins["_dot"]
hessian_pair_scalars = _bias_hessian_twins["_pair_scalars"]
hessian_pair_blocks = _bias_hessian_twins["_pair_blocks"]
hessian_block_product = _bias_hessian_twins["_block_product"]

# The per-pair parts of the Hermite-series kernel (``population_series``): the near pairs'
# diagonal formula and long series, and the rotated-basis quadrature.
_series_twins = device_twins(_population_series, activation=activation, activation_derivative=activation_derivative,
                             activation_second_derivative=_scalar_twins["activation_second_derivative"])
series_near_pair = _series_twins["_near_pair"]
series_conditional_pair = _series_twins["_conditional_pair"]
