"""meanfield: two-layer neural networks as particle clouds under Wasserstein gradient flow.

Five lines from nothing to a risk curve::

    import numpy as np, meanfield as mf
    model = mf.Model(d=20, activation="relu")
    problem = mf.PopulationProblem(model, mf.Teacher.orthonormal(d=20, k=5))
    W0 = mf.initialize(model, m=256, rng=np.random.default_rng(0))
    traj = mf.run(problem, mf.gradient_descent(problem, step=0.5), W0, t_max=100)
    traj.times, traj.risk, traj.W

Time is the continuous time t of the gradient flow dw_i/dt = -m grad_{w_i} F (SCIENCE.md
section 3), so runs of different widths m are compared at equal t.
"""
import os

# The finite-data kernels interleave BLAS products (OpenBLAS threads) with numba parallel
# loops (OpenMP threads). With OpenMP's default busy-waiting the two pools fight for the
# cores and a step runs ~10x slower on 2 cores; passive waiting removes that. It takes
# effect only if set before numba starts its thread pool, and a user's value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The same fight from the other side: after each product OpenBLAS's worker threads spin for
# 2^28 cycles (about 0.1 s) by default, taking a core from the numba loop that follows; 2^4
# puts them to sleep at once. Measured on 2 cores, N = 10^4, m = 4000: the finite-data step
# 0.70 s -> 0.49 s (benchmarks/CPU_RESULTS.md). Read when OpenBLAS loads (numba's products
# use scipy's OpenBLAS, loaded below), so it has no effect if scipy.linalg came first; a
# user's value is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _kernels_from_checkout() -> None:
    """Make ``meanfield.kernels`` importable when this package is a source checkout.

    The kernels live in the checkout's top-level folder ``kernels/`` (the design card's layout)
    and are installed as ``meanfield/kernels``. Python started in the checkout (a script,
    ``python -c``, a notebook) imports this folder's ``meanfield/`` before the installed
    package, and it has no ``kernels/``: they are loaded from the folder beside it.
    """
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.join(os.path.dirname(here), "kernels")
    if ("meanfield.kernels" in sys.modules or os.path.isdir(os.path.join(here, "kernels"))
            or not os.path.isfile(os.path.join(beside, "__init__.py"))):
        return
    spec = importlib.util.spec_from_file_location("meanfield.kernels", os.path.join(beside, "__init__.py"),
                                                  submodule_search_locations=[beside])
    module = importlib.util.module_from_spec(spec)
    sys.modules["meanfield.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["meanfield.kernels"]
        raise


_kernels_from_checkout()
from . import kernels  # noqa: E402
from ._version import __version__  # noqa: E402, F401
from .engine import (  # noqa: E402
    ACTIVATIONS,
    ODE_METHODS,
    Evaluation,
    FiniteDataProblem,
    Init,
    Integrator,
    IsotropicProblem,
    Model,
    PopulationProblem,
    Problem,
    State,
    StepSizeError,
    TangentProblem,
    Teacher,
    Trajectory,
    flow,
    gradient_descent,
    heavy_ball,
    initialize,
    langevin,
    record_steps,
    restore,
    run,
    sgd,
    step_size_error,
    tangent_predict,
    time_grid,
)
from .landscape._refine import REFINE_METHODS, Refinement, refine  # noqa: E402
from .radial import RadialFlow, RadialSolution  # noqa: E402

__all__ = [
    "ACTIVATIONS",
    "ODE_METHODS",
    "REFINE_METHODS",
    "Refinement",
    "Evaluation",
    "FiniteDataProblem",
    "Init",
    "IsotropicProblem",
    "Integrator",
    "Model",
    "PopulationProblem",
    "Problem",
    "RadialFlow",
    "RadialSolution",
    "State",
    "StepSizeError",
    "TangentProblem",
    "Teacher",
    "Trajectory",
    "flow",
    "gradient_descent",
    "heavy_ball",
    "initialize",
    "kernels",
    "langevin",
    "record_steps",
    "refine",
    "restore",
    "run",
    "sgd",
    "step_size_error",
    "tangent_predict",
    "time_grid",
]
