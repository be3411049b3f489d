"""CUDA device versions of the scalar functions of ``_scalar`` and of the pair kernels.

The device functions are compiled from the very Python source of the CPU ones: every
``numba.njit`` function of a module is re-bound to one namespace in which each njit function
is replaced by its device twin (``numba.cuda.jit(device=True)`` of the same code), so calls
between them stay on the device. The GPU therefore evaluates exactly the formulas the CPU
kernels evaluate, with the same typed constants (``like(z, value)`` is a float32 constant in a
float32 kernel), and a new activation or loss in ``_scalar.py`` (a branch in ``activation``
and ``activation_derivative``, private helpers included) is on the GPU with no change here,
as long as its body uses what CUDA supports (``math`` functions, arithmetic, ``like``).
"""
import types

from numba import cuda
from numba.core.registry import CPUDispatcher

from . import _scalar
from . import population as _population


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
