"""CUDA device versions of the scalar functions of ``_scalar`` and of the pair kernels.

The device functions are compiled from the very Python source of the CPU ones: each
``numba.njit`` function's ``py_func`` is re-bound to a globals dictionary in which the
helpers it calls are their device versions, and compiled with ``numba.cuda.jit(device=True)``.
The GPU therefore evaluates exactly the formulas the CPU kernels evaluate, with the same
typed constants (``like(z, value)`` gives a float32 constant in a float32 kernel), and a new
activation or loss added to ``_scalar.py`` (its branch in ``activation`` and
``activation_derivative``) is on the GPU with no change here, provided its body uses only
what CUDA supports (``math`` functions, arithmetic, calls to other functions of
``_scalar``; a new helper function called from ``activation`` needs one line below).
"""
import types

from numba import cuda

from . import _scalar
from . import population as _population


def device_twin(function, **device_helpers):
    """A CUDA device function compiled from the source of the njit ``function``.

    ``device_helpers`` maps the global names ``function`` calls to their device versions.
    """
    py = function.py_func
    namespace = dict(py.__globals__)
    namespace.update(device_helpers)
    clone = types.FunctionType(py.__code__, namespace, py.__name__, py.__defaults__, py.__closure__)
    clone.__doc__ = py.__doc__
    return cuda.jit(device=True)(clone)


_sigmoid = device_twin(_scalar._sigmoid)
_helpers = {"_sigmoid": _sigmoid}
activation = device_twin(_scalar.activation, **_helpers)
activation_derivative = device_twin(_scalar.activation_derivative, **_helpers)
loss = device_twin(_scalar.loss, **_helpers)
loss_derivative = device_twin(_scalar.loss_derivative, **_helpers)
closed_form_pair = device_twin(_population._closed_form_pair)
