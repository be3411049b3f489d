"""The CUDA backend: a whole run on the GPU, with the CPU problem and integrator contracts.

``to_device(problem, integrator)`` turns a CPU problem and an integrator built on it into
their device twins: a :class:`CudaProblem` (the same ``evaluate`` contract on host arrays,
plus ``evaluate_device`` on device arrays) and an :class:`~meanfield.Integrator` whose state
(:class:`DeviceState`) keeps the particles, the momentum, the tracers and the noise
generators on the GPU between steps. Only what is recorded comes back: ``state.W``,
``state.tracers`` and ``state.buffers`` are host copies made when an observer (a record, a
checkpoint) asks for them. :func:`meanfield.run` drives it unchanged.

A batched :class:`~meanfield.engine._ensemble.PopulationEnsemble` (small bias-free closed-form
networks) has its twin too, :class:`CudaEnsemble`: one launch of ``kernels.gpu_ensemble`` per
evaluation, one thread block per member; a small bias-free closed-form problem alone takes the
same kernel with B = 1 (as on the CPU), so a member of a device ensemble is bitwise its device
run alone.

numba-cuda is an optional dependency (``pip install ".[cuda]"``); this module imports it
lazily so that the CPU backend never needs it. ``cuda_status()`` says whether a GPU (or
numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) is usable.
"""
from __future__ import annotations

import math

import numpy as np

from ._ensemble import PopulationEnsemble
from ._integrators import INTEGRATORS, Integrator
from ._model import TILE_SIZE
from ._problems import ClosedFormExpectation, Evaluation, FiniteDataProblem, PopulationProblem, Problem


def cuda_status() -> tuple[bool, str]:
    """(usable, description): whether CUDA runs can start here, and the GPU's name or why not."""
    try:
        from numba import config, cuda
    except ImportError as error:  # numba-cuda not installed, or numba without its cuda module
        return False, f"numba-cuda is not installed ({error}); pip install \"meanfield[cuda]\""
    if config.ENABLE_CUDASIM:
        return True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): slow, for tests only"
    try:
        if not cuda.is_available():
            return False, "no usable CUDA GPU or driver found"
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        major, minor = device.compute_capability[0], device.compute_capability[1]
        return True, f"{name} (compute capability {major}.{minor})"
    except Exception as error:  # noqa: BLE001 - the driver reports its failures in many ways
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return False, f"CUDA is not usable: {reason}"


def _gpu():
    from numba import cuda

    from ..kernels import gpu_finite_data, gpu_population, gpu_reductions, gpu_updates
    return cuda, gpu_population, gpu_finite_data, gpu_updates, gpu_reductions


class CudaProblem(Problem):
    """The device twin of a population (closed form, Hermite series, quadrature, Monte Carlo) or
    finite-data problem.

    ``evaluate`` keeps the CPU contract (host arrays in, host :class:`Evaluation` out);
    ``evaluate_device`` and ``batch_evaluate_device`` work on device arrays and return
    ``(value, velocity, points_velocity)`` with device velocities. In closed form with biases,
    ``hessian``, ``hessian_vector_product`` and ``hessian_singularities`` run on the GPU too
    (host arrays in and out, float64 as on the CPU). Attributes not defined here (teacher,
    describe, sample_batch, n_samples, ...) are those of the CPU problem.

    Parameters
    ----------
    problem : PopulationProblem or FiniteDataProblem
        Any other problem class raises ValueError.
    """

    def __init__(self, problem: Problem):
        cuda, *_ = _gpu()
        self.host = problem
        self.model = problem.model
        self.loss = problem.loss
        self.method = problem.method
        self._scratch = {}
        if isinstance(problem, PopulationProblem) and problem.method in ("closed_form", "quadrature", "series"):
            self._kind = "pair"
            # A student or teacher with biases takes the closed form with biases, as on the CPU
            # (PopulationProblem.with_bias); a bias-free problem keeps the bias-free kernel.
            self._bias_closed_form = problem.method == "closed_form" and problem.with_bias
            self._teacher = cuda.to_device(problem.teacher_W)
            if problem.method == "quadrature":
                rule = problem.expectation
                self._rule = cuda.to_device(rule.nodes), cuda.to_device(rule.weights)
        elif isinstance(problem, PopulationProblem) and problem.method == "monte_carlo":
            self._kind = "data"
            X, y, self._offset = problem.sample
            self._X, self._y = cuda.to_device(X), cuda.to_device(y)
        elif isinstance(problem, FiniteDataProblem):
            self._kind = "data"
            self._X, self._y = cuda.to_device(problem.X), cuda.to_device(problem.y)
            self._offset = 0.0
        else:
            raise ValueError(f"the CUDA backend has no kernel for {type(problem).__name__}: use the cpu backend")
        self._trainable = None
        self._teacher64 = None  # the teacher in float64 on the device, for the Hessian kernels
        self._fused = None  # (work arrays, value, E[y^2]) of the fused kernel, made on first use

    def __getattr__(self, name):
        if name == "host":  # not set yet: avoid recursion during construction
            raise AttributeError(name)
        return getattr(self.host, name)

    def _buffer(self, key, shape, dtype):
        cuda = _gpu()[0]
        array = self._scratch.get(key)
        if array is None or array.shape != tuple(shape):
            array = self._scratch[key] = cuda.device_array(shape, dtype=dtype)
        return array

    def _empty_points(self):
        return self._buffer("no_points", (0, self.model.p), self.model.dtype)

    def _data(self, W, X, y, points, out, offset):
        _, _, gpu_finite_data, _, _ = _gpu()
        model = self.model
        m = W.shape[0]
        velocity = out if out is not None else self._buffer("velocity", W.shape, W.dtype)
        pts = points if points is not None else self._empty_points()
        pts_velocity = self._buffer("points_velocity", pts.shape, W.dtype)
        alpha = model.alpha_value(m)
        value = gpu_finite_data.finite_data_field(
            W, X, y, pts, model.activation_code, _loss_code(self.loss), model.output_scale(m), alpha, model.bias,
            model.train_readout, TILE_SIZE, velocity, pts_velocity)
        return float(value) + offset / alpha**2, velocity, (pts_velocity if points is not None else None)

    def _pair_velocity(self, points, W, out, energy):
        _, gpu_population, _, _, _ = _gpu()
        n, p = points.shape
        K_w = self._buffer(("K_w", n), (n,), points.dtype)
        G_w = self._buffer(("G_w", n), (n, p - 1), points.dtype)
        K_t = self._buffer(("K_t", n), (n,), points.dtype)
        G_t = self._buffer(("G_t", n), (n, p - 1), points.dtype)
        code = self.model.activation_code
        if self.method == "series":
            self._series_sums(points, W, K_w, G_w, K_t, G_t)
        elif self.method == "quadrature":
            gpu_population.quadrature_pair_field(points, W, code, *self._rule, K_w, G_w)
            gpu_population.quadrature_pair_field(points, self._teacher, code, *self._rule, K_t, G_t)
        elif self._bias_closed_form:
            gpu_population.bias_pair_field(points, W, code, K_w, G_w)
            gpu_population.bias_pair_field(points, self._teacher, code, K_t, G_t)
        else:
            gpu_population.closed_form_pair_field(points, W, code, K_w, G_w)
            gpu_population.closed_form_pair_field(points, self._teacher, code, K_t, G_t)
        m = W.shape[0]
        gpu_population.pair_velocity(points, m, self.model.output_scale(m), 1.0 / self.model.alpha_value(m),
                                     self.model.bias, self.model.train_readout, K_w, G_w, K_t, G_t, out, energy)

    def _series_sums(self, points, W, K_w, G_w, K_t, G_t):
        """Pair sums by Hermite series (``SeriesExpectation.series_sums`` on the device): the
        tables of the points, W and the teacher built once on the host under one rule (from
        host copies of the particles), the sums on the GPU; the velocity's error bound of an
        evaluation of W goes to the host problem's ``last_error_bound`` (``describe()``)."""
        from .. import kernels
        from ..kernels import gpu_population_series
        from ._problems import SERIES_TOL

        host = self.host
        code = self.model.activation_code
        W_host = W.copy_to_host()
        points_host = W_host if points is W else points.copy_to_host()
        teacher = host.teacher_W
        sets = (W_host, teacher) if points is W else (points_host, W_host, teacher)
        tables = kernels.shared_tables(sets, code, SERIES_TOL)
        t_points, t_teacher = tables[0], tables[-1]
        t_w = tables[0] if points is W else tables[1]
        _, _, bound_w = gpu_population_series.series_pair_sums(
            points, W, code, SERIES_TOL, tables=(t_points, t_w), out=(K_w, G_w), host_arrays=(points_host, W_host),
            scratch=self._scratch)
        _, _, bound_t = gpu_population_series.series_pair_sums(
            points, self._teacher, code, SERIES_TOL, tables=(t_points, t_teacher), out=(K_t, G_t),
            host_arrays=(points_host, teacher), scratch=self._scratch)
        if points is W:
            host.expectation.last_error_bound = host.expectation.velocity_bound(W_host, bound_w, bound_t)

    def _fused_applies(self, m: int) -> bool:
        """Whether width m takes the fused kernel, as on the CPU (``ClosedFormExpectation.fused_applies``)."""
        expectation = getattr(self.host, "expectation", None)
        return (self._kind == "pair" and isinstance(expectation, ClosedFormExpectation)
                and expectation.fused_applies(m))

    def _fused_evaluate(self, W, points, out):
        """(F, velocity, points_velocity) by ``gpu_ensemble`` with one member, and the tracers in its
        arithmetic (``gpu_closed_form_points_velocity``), as ``ClosedFormExpectation.evaluate``."""
        from ..kernels import gpu_ensemble
        cuda = _gpu()[0]
        model = self.model
        m, p = W.shape
        k = self._teacher.shape[0]
        velocity = out if out is not None else self._buffer("velocity", W.shape, W.dtype)
        if self._fused is None or self._fused[0][0].shape[1] != m:
            moment = np.array([self.host.label_second_moment], dtype=W.dtype)
            self._fused = (gpu_ensemble.gpu_ensemble_work_arrays(1, m, k, p - 2, W.dtype),
                           cuda.device_array(1, W.dtype), cuda.to_device(moment))
        work, value, moment = self._fused
        s, alpha = model.output_scale(m), model.alpha_value(m)
        gpu_ensemble.gpu_ensemble_closed_form_evaluate(
            W.reshape(1, m, p), self._teacher.reshape(1, k, p), model.activation_code, s, alpha, moment,
            model.train_readout, value, velocity.reshape(1, m, p), *work)
        points_velocity = None
        if points is not None:
            points_velocity = self._buffer("points_velocity", points.shape, points.dtype)
            gpu_ensemble.gpu_closed_form_points_velocity(W, self._teacher, points, model.activation_code, s, alpha,
                                                         model.train_readout, points_velocity)
        return float(value.copy_to_host()[0]), velocity, points_velocity

    def evaluate_device(self, W, points=None, out=None):
        """(F, velocity, points_velocity) of the device state ``W`` (velocities on the device)."""
        if self._kind == "data":
            return self._data(W, self._X, self._y, points, out, self._offset)
        if self._fused_applies(W.shape[0]):
            return self._fused_evaluate(W, points, out)
        _, _, _, _, gpu_reductions = _gpu()
        velocity = out if out is not None else self._buffer("velocity", W.shape, W.dtype)
        energy = self._buffer(("energy", W.shape[0]), (W.shape[0],), W.dtype)
        self._pair_velocity(W, W, velocity, energy)
        alpha = self.model.alpha_value(W.shape[0])
        value = self.host.label_second_moment / (2 * alpha**2) + gpu_reductions.device_sum(energy)
        points_velocity = None
        if points is not None:
            points_velocity = self._buffer("points_velocity", points.shape, points.dtype)
            self._pair_velocity(points, W, points_velocity,
                                self._buffer(("energy", points.shape[0]), (points.shape[0],), W.dtype))
        return value, velocity, points_velocity

    def batch_evaluate_device(self, W, rng, batch_size, points=None, out=None):
        """(batch loss, velocity, points_velocity) on a fresh batch drawn on the host from ``rng``."""
        cuda = _gpu()[0]
        X, y = self.host.sample_batch(rng, batch_size)
        return self._data(W, cuda.to_device(X), cuda.to_device(y), points, out, 0.0)

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Host-array evaluation (the CPU contract), computed on the device."""
        cuda = _gpu()[0]
        W, points = self._state(W, points)
        value, velocity, points_velocity = self.evaluate_device(
            cuda.to_device(W), None if points is None else cuda.to_device(points))
        return Evaluation(value, velocity.copy_to_host(out) if out is not None else velocity.copy_to_host(),
                          None if points_velocity is None else points_velocity.copy_to_host())

    def batch_evaluate(self, W, rng, batch_size, points=None, out=None) -> Evaluation:
        cuda = _gpu()[0]
        W, points = self._state(W, points)
        value, velocity, points_velocity = self.batch_evaluate_device(
            cuda.to_device(W), rng, batch_size, None if points is None else cuda.to_device(points))
        return Evaluation(value, velocity.copy_to_host(), None if points_velocity is None
                          else points_velocity.copy_to_host())

    @property
    def has_analytic_hessian(self) -> bool:
        """True for the closed form with biases (relu, erf, normal CDF, linear), whose Hessian and
        Hessian-vector products run on the GPU (``kernels.gpu_population_bias_hessian``); the
        other device problems have none here (``meanfield.landscape`` then takes finite
        differences of the device velocity)."""
        return self._kind == "pair" and self._bias_closed_form

    def _hessian_device_arguments(self, W):
        """Device arguments of the Hessian kernels, in float64 as on the CPU
        (``ClosedFormExpectation._arguments``)."""
        cuda = _gpu()[0]
        if self._teacher64 is None:
            self._teacher64 = cuda.to_device(np.ascontiguousarray(self.host.teacher.W, dtype=np.float64))
        m = W.shape[0]
        model = self.model
        return (cuda.to_device(W), self._teacher64, model.activation_code, model.output_scale(m),
                1.0 / model.alpha_value(m), model.bias, model.train_readout)

    def hessian(self, W) -> np.ndarray:
        if not self.has_analytic_hessian:
            return super().hessian(W)
        from ..kernels import gpu_population_bias_hessian
        cuda = _gpu()[0]
        W, _ = self._hessian_arrays(W)
        n_var = W.shape[0] * int(self.model.trainable.sum())
        H = cuda.device_array((n_var, n_var), dtype=np.float64)
        gpu_population_bias_hessian.bias_closed_form_hessian(*self._hessian_device_arguments(W), H)
        return H.copy_to_host()

    hessian.__doc__ = Problem.hessian.__doc__

    def hessian_vector_product(self, W, V) -> np.ndarray:
        if not self.has_analytic_hessian:
            return super().hessian_vector_product(W, V)
        from ..kernels import gpu_population_bias_hessian
        cuda = _gpu()[0]
        W, V = self._hessian_arrays(W, V)
        out = cuda.device_array(W.shape, dtype=np.float64)
        gpu_population_bias_hessian.bias_closed_form_hessian_vector_product(*self._hessian_device_arguments(W),
                                                                            cuda.to_device(V), out)
        return out.copy_to_host()

    hessian_vector_product.__doc__ = Problem.hessian_vector_product.__doc__

    def hessian_singularities(self, W) -> np.ndarray:
        """Particles at which F is not twice differentiable (as ``PopulationProblem.hessian_singularities``;
        found on the GPU for the closed form with biases)."""
        if not self.has_analytic_hessian:
            return super().hessian_singularities(W)
        from ..kernels import gpu_population_bias_hessian
        W, _ = self._hessian_arrays(W)
        return gpu_population_bias_hessian.bias_hessian_singular_particles(
            _gpu()[0].to_device(W), self.model.activation_code, self.model.train_readout)

    def trainable_device(self):
        if self._trainable is None:
            self._trainable = _gpu()[0].to_device(np.ascontiguousarray(self.model.trainable))
        return self._trainable


class CudaEnsemble:
    """The device twin of a batched :class:`~meanfield.engine._ensemble.PopulationEnsemble`.

    ``evaluate_device`` on the stacked device state (B m, d + 2) is one launch of
    ``kernels.gpu_ensemble.gpu_ensemble_closed_form_evaluate`` (one thread block per member)
    and returns ``(values, velocity, None)``: every member's F on the host (B,), the velocity on
    the device. ``evaluate`` keeps the host contract of ``PopulationEnsemble.evaluate``.

    Parameters
    ----------
    ensemble : PopulationEnsemble
        A batched one (``ensemble.batched``); any other raises ValueError.
    """

    def __init__(self, ensemble: PopulationEnsemble):
        if not ensemble.batched:
            raise ValueError("only a batched ensemble (small bias-free closed-form problems) has a CUDA twin")
        from ..kernels import gpu_ensemble
        cuda = _gpu()[0]
        self.host = ensemble
        self.members = ensemble.members
        self.m = ensemble.m
        self.model = ensemble.model
        self.loss = ensemble.loss
        self.method = ensemble.method
        B, dtype = len(self.members), np.dtype(self.model.dtype)
        teachers = np.stack([problem.teacher_W for problem in self.members]).astype(dtype)
        self._teachers = cuda.to_device(teachers)
        self._second_moments = cuda.to_device(np.array([p.label_second_moment for p in self.members], dtype=dtype))
        self._values = cuda.device_array(B, dtype)
        self._work = gpu_ensemble.gpu_ensemble_work_arrays(B, self.m, teachers.shape[1], self.model.d, dtype)
        self._velocity = None
        self._trainable = None

    def evaluate_device(self, W, points=None, out=None):
        """(values (B,) on the host, velocity on the device, None) of the stacked device state ``W``."""
        from ..kernels import gpu_ensemble
        if points is not None:
            raise ValueError("ensembles carry no tracers")
        B, m, model = len(self.members), self.m, self.model
        p = W.shape[1]
        velocity = out
        if velocity is None:
            if self._velocity is None or self._velocity.shape != W.shape:
                self._velocity = _gpu()[0].device_array(W.shape, W.dtype)
            velocity = self._velocity
        gpu_ensemble.gpu_ensemble_closed_form_evaluate(
            W.reshape(B, m, p), self._teachers, model.activation_code, model.output_scale(m), model.alpha_value(m),
            self._second_moments, model.train_readout, self._values, velocity.reshape(B, m, p), *self._work)
        return self._values.copy_to_host().astype(np.float64), velocity, None

    def evaluate(self, W, points=None, out=None) -> Evaluation:
        """Every member's objective and velocity from host particles (computed on the device).

        Parameters
        ----------
        W : ndarray, shape (B m, d + 2)
        points : None
        out : ndarray, shape (B m, d + 2), optional

        Returns
        -------
        Evaluation
            ``value``: ndarray (B,); ``velocity`` (B m, d + 2), on the host.
        """
        cuda = _gpu()[0]
        values, velocity, _ = self.evaluate_device(cuda.to_device(np.ascontiguousarray(W)), points)
        return Evaluation(values, velocity.copy_to_host(out) if out is not None else velocity.copy_to_host(), None)

    def trainable_device(self):
        if self._trainable is None:
            self._trainable = _gpu()[0].to_device(np.ascontiguousarray(self.model.trainable))
        return self._trainable


def _loss_code(loss: str) -> int:
    from .. import kernels
    return kernels.LOSS_CODES[loss]


class DeviceState:
    """An integrator state whose arrays live on the GPU (same attributes as ``State``).

    ``W``, ``tracers`` and ``buffers`` are host copies, made when read (records and
    checkpoints; ``W`` and ``tracers`` once per step, read-only); ``device_W``,
    ``device_tracers`` and ``device_buffers`` are the live arrays.
    Buffers written on the host before the first step (``restore``) are sent to the device
    by that step.
    """

    def __init__(self, W, rng, buffer_names, tracers):
        cuda = _gpu()[0]
        self.step = 0
        self.t = 0.0
        self.value = math.nan
        self.rng = rng
        self.device_W = cuda.to_device(np.ascontiguousarray(W))
        self.device_tracers = None if tracers is None else cuda.to_device(np.ascontiguousarray(tracers))
        self._host_buffers = {name: np.zeros_like(W) for name in buffer_names}
        if tracers is not None:
            self._host_buffers.update({f"tracer_{name}": np.zeros_like(tracers) for name in buffer_names})
        self.device_buffers = {name: cuda.to_device(array) for name, array in self._host_buffers.items()}
        self._pending_push = True
        self.scratch = {}
        self.noise_states = None
        self.tracer_noise_states = None  # keyed noise: the generators of the tracers' rows
        self.noise_step = 0  # the step the generators are at
        self._host_copies = {}

    def _host(self, name, device_array):
        """A read-only host copy of ``device_array``, made once per step (a record reads the
        particles several times: the evaluation, the trajectory, the file)."""
        step, array = self._host_copies.get(name, (None, None))
        if step != self.step:
            array = device_array.copy_to_host()
            array.flags.writeable = False
            self._host_copies[name] = (self.step, array)
        return array

    @property
    def W(self) -> np.ndarray:
        return self._host("W", self.device_W)

    @property
    def tracers(self):
        return None if self.device_tracers is None else self._host("tracers", self.device_tracers)

    @property
    def buffers(self) -> dict:
        if not self._pending_push:
            for name, array in self.device_buffers.items():
                array.copy_to_host(self._host_buffers[name])
        return self._host_buffers

    def push_buffers(self):
        """Send buffers written on the host (by ``restore``) to the device, once."""
        if self._pending_push:
            for name, array in self._host_buffers.items():
                self.device_buffers[name].copy_to_device(array)
            self._pending_push = False

    def all_finite(self) -> bool:
        """No NaN or inf in the particles (checked on the device)."""
        return _gpu()[4].all_finite(self.device_W)


def _noise_seed(rng: np.random.Generator) -> int:
    """A 64-bit seed for the device generators, fixed by the run's stream (not by its state).

    Derived from the generator's SeedSequence, so that a resumed run (whose generator state
    has moved on) seeds its device generators exactly as the run it continues.
    """
    seq = rng.bit_generator.seed_seq
    if isinstance(seq, np.random.SeedSequence):
        child = np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, 0x6375),
                                       pool_size=seq.pool_size)
        return int(child.generate_state(1, np.uint64)[0])
    return int(np.random.Generator(type(rng.bit_generator)(seq)).integers(2**63))


def to_device(problem: Problem, integrator: Integrator):
    """The CUDA twins ``(CudaProblem, Integrator)`` of a CPU problem and an integrator on it.

    A batched ``PopulationEnsemble`` becomes a :class:`CudaEnsemble` (deterministic integrators
    only: gradient descent, heavy ball), which ``run_ensemble`` drives as it drives the CPU one.
    The integrator's entry (``INTEGRATORS[integrator.name]``) gives its buffers and its
    update on the GPU (``device_update``); its steps run the CUDA kernels on a
    :class:`DeviceState`.
    """
    cuda, _, _, gpu_updates, _ = _gpu()
    if isinstance(problem, (CudaProblem, CudaEnsemble)):
        device_problem = problem
    elif isinstance(problem, PopulationEnsemble):
        device_problem = CudaEnsemble(problem)
    else:
        device_problem = CudaProblem(problem)
    name, params = integrator.name, integrator.params
    entry = INTEGRATORS.get(name)
    if entry is None or entry.device_update is None:
        raise ValueError(f"the integrator {name!r} has no CUDA twin")
    if isinstance(device_problem, CudaEnsemble) and integrator.stochastic:
        raise ValueError("a noisy ensemble runs on the cpu backend: on the GPU the noise comes from per-particle "
                         "generators, not from each member's own stream")
    buffer_names = entry.buffers
    batch_size = params.get("batch_size")
    noise_scale = math.sqrt(2.0 * params["step"] / params.get("beta", math.inf))
    keyed = params.get("noise") == "keyed"  # the device's noise is keyed by row already; tracers get rows

    def init(W0, rng=None, tracers=None) -> DeviceState:
        if integrator.stochastic and not isinstance(rng, np.random.Generator):
            raise TypeError("this integrator is stochastic: pass rng=numpy.random.default_rng(seed)")
        if tracers is not None and noise_scale > 0 and not keyed:
            raise ValueError("tracers are coupled to the particles through shared randomness, which Langevin noise "
                             'has only when keyed: pass noise="keyed", or use tracers with gradient_descent, '
                             "heavy_ball or sgd")
        W = problem.model.check_state(W0)
        if tracers is not None:
            tracers = problem.model.check_state(tracers, "tracers")
        state = DeviceState(W, rng, buffer_names, tracers)
        if noise_scale > 0:
            seed = _noise_seed(rng)
            state.noise_states = gpu_updates.create_noise_states(W.shape[0], seed)
            if tracers is not None:
                rows = params.get("tracer_rows")
                rows = np.arange(tracers.shape[0]) if rows is None else np.asarray(rows)
                if rows.shape != (tracers.shape[0],):
                    raise ValueError(f"tracer_rows gives {rows.size} rows for {tracers.shape[0]} tracers")
                state.tracer_noise_states = gpu_updates.create_noise_states_of_rows(rows, seed)
        return state

    def evaluate(state):
        velocity = state.scratch.get("velocity")
        if velocity is None:
            velocity = state.scratch["velocity"] = cuda.device_array_like(state.device_W)
        if batch_size is None:
            return device_problem.evaluate_device(state.device_W, state.device_tracers, velocity)
        return device_problem.batch_evaluate_device(state.device_W, state.rng, batch_size, state.device_tracers,
                                                    velocity)

    def step_fn(state: DeviceState) -> DeviceState:
        state.push_buffers()
        value, velocity, points_velocity = evaluate(state)
        entry.device_update(gpu_updates, device_problem, state, velocity, points_velocity, params)
        state.value = value
        state.step += 1
        state.t = state.step * integrator.dt
        return state

    return device_problem, Integrator(init, step_fn, integrator.dt, name, dict(params, backend="cuda"),
                                      integrator.stochastic)
