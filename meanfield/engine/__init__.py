"""The engine: models, teachers, problems (a velocity field each), integrators (init/step
pairs over a state), the run loop and the exact flow, and their CUDA twins.

It computes and nothing else: no HDF5, no TOML, no configuration. Experiment files are read
and runs are stored by the packages above it (``meanfield.experiments``-side modules and
``meanfield.io``), which import it; it imports nothing of theirs (checked by import-linter,
``tests/test_style.py``). The public names are re-exported by ``meanfield`` itself.
"""
from ._flow import ODE_METHODS, StepSizeError, flow, step_size_error
from ._integrators import Integrator, State, gradient_descent, heavy_ball, langevin, restore, sgd
from ._isotropic import IsotropicProblem
from ._model import ACTIVATIONS, Init, Model, initialize
from ._problems import Evaluation, FiniteDataProblem, PopulationProblem, Problem
from ._run import Trajectory, record_steps, run, time_grid
from ._tangent import TangentProblem, tangent_predict
from ._teacher import Teacher

__all__ = [
    "ACTIVATIONS", "Evaluation", "FiniteDataProblem", "Init", "Integrator", "IsotropicProblem", "Model",
    "ODE_METHODS", "PopulationProblem", "Problem", "State", "StepSizeError", "TangentProblem", "Teacher",
    "Trajectory", "flow", "gradient_descent", "heavy_ball", "initialize", "langevin", "record_steps", "restore",
    "run", "sgd", "step_size_error", "tangent_predict", "time_grid",
]
