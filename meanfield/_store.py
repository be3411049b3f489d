"""One HDF5 file per run (H5MD-style), written live in SWMR mode, with checkpoints to resume.

Layout (``T`` records, ``m`` particles, ``p = d + 2`` coordinates)::

    /                               attrs: config (JSON), config_sha256, run_id, status,
                                    message, method, creator, versions (JSON), git_revision,
                                    host, start_time, end_time, resumed (count),
                                    integrator_info (JSON: an adaptive integrator's method,
                                    tolerances and evaluation counts)
    /h5md                           attrs: version = [1, 1]; groups creator, author (name, version)
    /particles/neurons/position/    step (T,) int64, time (T,) float64,
                                    value (T, m, p), attr columns = ["a_0", ..., "b", "c"]
    /particles/tracers/position/    the same for tracer particles (n, p), when the run has them;
                                    attr blocks = JSON [[label, start, stop], ...]
    /observables/<name>/            step (T,), time (T,), value (T,)   (risk, grad_norm, and the
                                    values of the run's measures: step_error, step_risk_gap)
    /parameters/model               attrs: activation, d, m, scaling, output_scale, alpha, ...
    /parameters/teacher/position    (k, p) teacher neurons (teacher problems)
    /checkpoint/active              which slot holds the last complete checkpoint (-1: none)
    /checkpoint/slot_{0,1}/         W (m, p), buffers/<name> (m, p) at full precision; step,
                                    time, value, records (scalars); rng_state (JSON bytes)

``time`` is a dimension scale of each series (and ``particle``, ``coord`` of the particle
values), so tools that read netCDF-style dimensions see named dimensions.

Crash safety: the file is written under ``<id>.h5.part`` in SWMR mode. Each record appends
one frame to every series, then writes the checkpoint, then flushes; a checkpoint is also
written between records every ``checkpoint_seconds``. A checkpoint is written into the slot
that is not active, flushed, and only then made active by one small write, so a kill in the
middle of a checkpoint leaves the previous one whole. A process killed at any moment leaves a
file that opens (read-only, ``swmr=True``) with every record flushed before the kill. HDF5
will not reopen such a file for writing, so resuming copies its valid prefix (the records up
to the last checkpoint) into a fresh file and continues there. A finished run is renamed to
``<id>.h5``.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import getpass
import json
import os
import socket
import subprocess
import sys
import time

import h5py
import numpy as np

OBSERVABLES = ("risk", "grad_norm")
RNG_STATE_BYTES = 4096
LOCKING_VARIABLE = "MEANFIELD_FILE_LOCKING"
FRAME_BLOCK = 64  # frames copied at once when a run is resumed


UPDATE_WAIT_S = 30.0  # how long a writer waits for readers to close a file it must update


def _is_lock_error(error: OSError) -> bool:
    return "unable to lock file" in str(error)


def open_for_update(path, wait_s: float | None = None, only_writer: bool = False, **kwargs) -> h5py.File:
    """Open an HDF5 file ``r+``, waiting for other processes that hold it to close it.

    HDF5 takes an exclusive file lock to open for writing, so a reader in another process (a
    concurrent shard rebuilding ``index.h5``, ``meanfield status``, a notebook watching a run
    with ``swmr=True``) makes the open fail at once. Readers that come and go are waited for,
    retrying for ``wait_s`` seconds (``UPDATE_WAIT_S`` by default).

    After that, with ``only_writer`` (the caller holds the run's ``RunLock``, so whoever
    holds the file can only be reading it), the file is opened without HDF5's lock, with a
    warning: a reader that stays does not get to fail a finished run, and sees the update
    when it reopens the file. Without it, another writer may hold the file, and writing
    beside it could corrupt it: OSError, naming the file.
    """
    wait_s = UPDATE_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return h5py.File(path, "r+", **kwargs)
        except OSError as error:
            if not _is_lock_error(error):
                raise
            if time.monotonic() >= deadline:
                break
        time.sleep(delay)
        delay = min(2 * delay, 0.5)
    if not only_writer:
        raise OSError(errno.EAGAIN, f"another process has held {os.fspath(path)} open for more than {wait_s:g} s "
                      "(HDF5 file lock); close it and run the command again")
    print(f"meanfield: {os.fspath(path)} is held open by a reader after {wait_s:g} s; updating it "
          "without HDF5's file lock", file=sys.stderr, flush=True)
    return h5py.File(path, "r+", locking=False, **kwargs)


class RunLocked(RuntimeError):
    """Another process is writing this run."""


class RunLock:
    """Exclusive lock on a run, held while a process writes it.

    An exclusive ``flock`` on ``<id>.lock``, held by the open file: released by the kernel
    when the process dies, SIGKILL included, so a crash never leaves a stale lock. Local file
    systems support it, and Linux NFS clients map it to POSIX locks (lockd); on a file
    system without locks the run is refused with that reason, unless the environment
    variable ``MEANFIELD_FILE_LOCKING=FALSE`` turns run locks off (as
    ``HDF5_USE_FILE_LOCKING=FALSE`` does for HDF5's own locks).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._handle = None

    def __enter__(self):
        if os.environ.get(LOCKING_VARIABLE, "TRUE").upper() in ("FALSE", "0", "NO", "OFF"):
            return self
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    handle.close()
                    raise RunLocked(f"{self.path}: cannot take the run lock ({error}); on a file system "
                                    f"without locks set {LOCKING_VARIABLE}=FALSE (then nothing stops two "
                                    "processes from writing the same run)") from None
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunLocked(f"{self.path}: this run is being written by {holder}; refusing to write it too") from None
            # The previous holder unlinks the file when it is done; a lock on that unlinked
            # file would not exclude a process that opens the path anew, so take it again.
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc):
        if self._handle is None:
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._handle.close()
        return False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions() -> dict:
    import numba
    import scipy

    from . import __version__

    return {"meanfield": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "numba": numba.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}


def column_names(d: int) -> list[str]:
    """Names of the p = d + 2 particle coordinates: a_0 .. a_{d-1}, b, c."""
    return [f"a_{k}" for k in range(d)] + ["b", "c"]


def _series(group, value_shape, dtype, compress):
    group.create_dataset("step", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
    time_ds = group.create_dataset("time", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1024,))
    chunks = (1, *value_shape) if value_shape else (1024,)
    options = {"compression": "gzip", "shuffle": True} if compress else {}
    value = group.create_dataset("value", shape=(0, *value_shape), maxshape=(None, *value_shape),
                                 dtype=dtype, chunks=chunks, **options)
    time_ds.make_scale("time")
    value.dims[0].attach_scale(time_ds)
    group["step"].dims[0].attach_scale(time_ds)
    return value


class RunFile:
    """Writer of one run's file; an observer of :func:`meanfield.run`.

    Use :meth:`create` for a new run and :meth:`resume` to continue a ``.part`` file.
    """

    def __init__(self, handle: h5py.File, part_path: str, final_path: str, checkpoint_seconds: float,
                 records: int, observables=()):
        self.file = handle
        self.part_path = part_path
        self.final_path = final_path
        self.checkpoint_seconds = checkpoint_seconds
        self.records = records
        self._last_checkpoint = time.monotonic()
        self._particles = "particles/neurons/position" in handle
        self._tracers = "particles/tracers/position" in handle
        self.observables = tuple(observables)
        # Set by the caller to the problem's describe(): written as method_description at close.
        self.describe = None
        handle.swmr_mode = True

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def _layout(cls, path, header: dict, model, m: int, teacher_W, buffer_shapes, particles: bool,
                particles_dtype: str, tracer_blocks, observables=()) -> h5py.File:
        f = h5py.File(path, "w", libver="latest")
        for key, value in header.items():
            f.attrs[key] = value
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1], dtype=np.int32)
        creator = h5md.create_group("creator")
        creator.attrs["name"] = "meanfield"
        creator.attrs["version"] = json.loads(header["versions"])["meanfield"]
        author = h5md.create_group("author")
        author.attrs["name"] = getpass.getuser()
        p = model.p
        if particles:
            group = f.create_group("particles/neurons/position")
            value = _series(group, (m, p), np.dtype(particles_dtype), compress=True)
            value.attrs["columns"] = column_names(model.d)
            particle = group.create_dataset("particle", data=np.arange(m, dtype=np.int64))
            coord = group.create_dataset("coord", data=np.array(column_names(model.d), dtype="S16"))
            particle.make_scale("particle")
            coord.make_scale("coord")
            value.dims[1].attach_scale(particle)
            value.dims[2].attach_scale(coord)
        n_tracers = tracer_blocks[-1][2] if tracer_blocks else 0
        if n_tracers:
            group = f.create_group("particles/tracers/position")
            value = _series(group, (n_tracers, p), np.dtype(particles_dtype), compress=True)
            value.attrs["columns"] = column_names(model.d)
            group.attrs["blocks"] = json.dumps(tracer_blocks)
        for name in (*OBSERVABLES, *observables):
            _series(f.create_group(f"observables/{name}"), (), np.float64, compress=False)
        params = f.create_group("parameters/model")
        for key, value in (("activation", model.activation), ("d", model.d), ("m", m), ("p", p),
                           ("scaling", model.scaling), ("output_scale", model.output_scale(m)),
                           ("alpha", model.alpha_value(m)), ("bias", model.bias),
                           ("train_readout", model.train_readout), ("dtype", model.dtype)):
            params.attrs[key] = value
        if teacher_W is not None:
            f.create_dataset("parameters/teacher/position", data=teacher_W)
        checkpoint = f.create_group("checkpoint")
        checkpoint.create_dataset("active", data=np.int64(-1))
        for slot in range(2):
            ckpt = checkpoint.create_group(f"slot_{slot}")
            ckpt.create_dataset("W", shape=(m, p), dtype=model.dtype)
            if n_tracers:
                ckpt.create_dataset("tracers", shape=(n_tracers, p), dtype=model.dtype)
            for name, shape in buffer_shapes.items():
                ckpt.create_dataset(f"buffers/{name}", shape=shape, dtype=model.dtype)
            ckpt.create_dataset("step", data=np.int64(-1))
            ckpt.create_dataset("time", data=np.float64(0))
            ckpt.create_dataset("value", data=np.float64(np.nan))
            ckpt.create_dataset("records", data=np.int64(0))
            ckpt.create_dataset("rng_state", shape=(RNG_STATE_BYTES,), dtype=np.uint8)
            ckpt.create_dataset("rng_state_length", data=np.int64(0))
        return f

    @classmethod
    def header(cls, spec, method: str) -> dict:
        return {"config": spec.config_json, "config_sha256": spec.sha256, "run_id": spec.id,
                "source": os.path.abspath(spec.source), "status": "running", "message": "", "method": method,
                "creator": "meanfield", "versions": json.dumps(_versions()), "git_revision": _git_revision(),
                "host": socket.gethostname(), "start_time": _now(), "end_time": "", "resumed": 0}

    @classmethod
    def create(cls, part_path, final_path, header: dict, model, m: int, teacher_W, buffer_shapes,
               particles: bool = True, particles_dtype: str = "float64",
               checkpoint_seconds: float = 60.0, tracer_blocks=(), observables=()) -> "RunFile":
        """A new run file at ``part_path`` (renamed to ``final_path`` when the run ends).

        ``buffer_shapes`` maps the integrator's state buffers to their shapes;
        ``tracer_blocks`` lists ``(label, start, stop)`` row ranges of the tracer array;
        ``observables`` names the series of the run's measures (``state.measured``).
        """
        f = cls._layout(part_path, header, model, m, teacher_W, buffer_shapes, particles, particles_dtype,
                        list(tracer_blocks), observables)
        return cls(f, os.fspath(part_path), os.fspath(final_path), checkpoint_seconds, 0, observables)

    @classmethod
    def resume(cls, part_path, final_path, header: dict, model, m: int, teacher_W, buffer_shapes,
               particles: bool = True, particles_dtype: str = "float64", checkpoint_seconds: float = 60.0,
               tracer_blocks=(), observables=()):
        """Continue an unfinished run file.

        Returns ``(writer, checkpoint)`` where ``checkpoint`` is None when the file holds no
        checkpoint yet (the run starts over) or a dict with W, buffers, step, value and
        rng_state (a bit-generator state dict or None).

        Raises
        ------
        ValueError
            The file belongs to another configuration.
        """
        part_path = os.fspath(part_path)
        with h5py.File(part_path, "r", libver="latest", swmr=True) as old:
            if old.attrs["config_sha256"] != header["config_sha256"]:
                raise ValueError(f"{part_path}: written by another configuration "
                                 f"({old.attrs['config_sha256']}), not {header['config_sha256']}")
            checkpoint = read_checkpoint(old)
            if checkpoint is None:
                return cls.create(part_path, final_path, header, model, m, teacher_W, buffer_shapes, particles,
                                  particles_dtype, checkpoint_seconds, tracer_blocks, observables), None
            n = checkpoint["records"]
            step = checkpoint["step"]
            header = dict(header, start_time=old.attrs["start_time"], resumed=int(old.attrs["resumed"]) + 1)
            fresh_path = part_path + ".new"
            f = cls._layout(fresh_path, header, model, m, teacher_W, buffer_shapes, particles, particles_dtype,
                            list(tracer_blocks), observables)
            groups = [f"observables/{name}" for name in (*OBSERVABLES, *observables)]
            if particles:
                groups.append("particles/neurons/position")
            if tracer_blocks:
                groups.append("particles/tracers/position")
            for group in groups:
                for name in ("step", "time", "value"):
                    src, dst = old[f"{group}/{name}"], f[f"{group}/{name}"]
                    dst.resize(n, axis=0)
                    for start in range(0, n, FRAME_BLOCK):
                        stop = min(n, start + FRAME_BLOCK)
                        dst[start:stop] = src[start:stop]
        writer = cls(f, fresh_path, final_path, checkpoint_seconds, n, observables)
        writer._write_checkpoint_arrays(checkpoint["W"], checkpoint["buffers"], step, checkpoint["time"],
                                        checkpoint["value"], checkpoint["rng_state"], checkpoint["tracers"])
        writer.file.flush()
        os.replace(fresh_path, part_path)
        writer.part_path = part_path
        return writer, checkpoint

    # -- observer protocol ---------------------------------------------------------------
    def observe(self, state, evaluation) -> None:
        """Append one record to every series, then checkpoint and flush."""
        n = self.records
        values = {"risk": evaluation.value, "grad_norm": evaluation.grad_norm}
        measured = getattr(state, "measured", {})
        values.update({name: measured.get(name, np.nan) for name in self.observables})
        for name, value in values.items():
            self._append(f"observables/{name}", n, state, value)
        if self._particles:
            self._append("particles/neurons/position", n, state, state.W)
        if self._tracers:
            self._append("particles/tracers/position", n, state, state.tracers)
        self.records = n + 1
        self.checkpoint(state)

    def after_step(self, state) -> None:
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
            self.checkpoint(state)

    def close(self, state, status: str, message: str) -> None:
        """Finish the file: final checkpoint, status and end time; rename it into place."""
        if status != "diverged":
            self.checkpoint(state)
        info = getattr(state, "info", None)
        extra = {"integrator_info": json.dumps(info)} if info else {}
        if self.describe is not None:
            # How the objective was computed, with what the last evaluation says of its error
            # (the Hermite series' velocity bound): PopulationProblem.describe().
            extra["method_description"] = self.describe()
        self.finish(status, message, extra or None)

    # -- writing -------------------------------------------------------------------------
    def _append(self, group, n, state, value):
        g = self.file[group]
        for name in ("step", "time", "value"):
            g[name].resize(n + 1, axis=0)
        g["step"][n] = state.step
        g["time"][n] = state.t
        g["value"][n] = value

    def _write_checkpoint_arrays(self, W, buffers, step, step_time, value, rng_state, tracers=None):
        active = self.file["checkpoint/active"]
        slot = 1 - int(active[()]) if int(active[()]) >= 0 else 0
        ckpt = self.file[f"checkpoint/slot_{slot}"]
        ckpt["W"][...] = W
        if tracers is not None:
            ckpt["tracers"][...] = tracers
        for name, array in buffers.items():
            ckpt[f"buffers/{name}"][...] = array
        ckpt["step"][()] = step
        ckpt["time"][()] = step_time
        ckpt["value"][()] = value
        ckpt["records"][()] = self.records
        raw = json.dumps(rng_state).encode() if rng_state is not None else b""
        if len(raw) > RNG_STATE_BYTES:
            raise ValueError(f"random generator state of {len(raw)} bytes exceeds {RNG_STATE_BYTES}")
        buffer = np.zeros(RNG_STATE_BYTES, dtype=np.uint8)
        buffer[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        ckpt["rng_state"][...] = buffer
        ckpt["rng_state_length"][()] = len(raw)
        self.file.flush()
        active[()] = slot  # the switch: one 8-byte write, after the slot is on disk

    def checkpoint(self, state) -> None:
        """Save what resuming needs (state, buffers, generator, record count) and flush."""
        rng_state = state.rng.bit_generator.state if state.rng is not None else None
        self._write_checkpoint_arrays(state.W, state.buffers, state.step, state.t, state.value, rng_state,
                                      state.tracers)
        self.file.flush()
        self._last_checkpoint = time.monotonic()

    def finish(self, status: str, message: str, extra: dict | None = None) -> str:
        """Leave SWMR mode, write the final attributes, and rename a finished run into place.

        A ``failed`` run keeps its ``.part`` name so that a later call resumes it. Returns the
        path of the file.
        """
        self.file.close()
        # The run's RunLock is held: no other process writes this file.
        with open_for_update(self.part_path, only_writer=True, libver="latest") as f:
            f.attrs["status"] = status
            f.attrs["message"] = message
            f.attrs["end_time"] = _now()
            for key, value in (extra or {}).items():
                f.attrs[key] = value
        if status == "failed":
            return self.part_path
        os.replace(self.part_path, self.final_path)
        return self.final_path


def read_checkpoint(f: h5py.File) -> dict | None:
    """The last complete checkpoint of an open run file, or None if it has none.

    Returns a dict with W, tracers (or None), buffers (name -> array), step, time, value,
    records and rng_state
    (a bit-generator state dict, or None for deterministic integrators).
    """
    active = int(f["checkpoint/active"][()])
    if active < 0:
        return None
    ckpt = f[f"checkpoint/slot_{active}"]
    length = int(ckpt["rng_state_length"][()])
    buffers = ckpt["buffers"] if "buffers" in ckpt else {}
    return {
        "W": ckpt["W"][()],
        "tracers": ckpt["tracers"][()] if "tracers" in ckpt else None,
        "buffers": {name: buffers[name][()] for name in buffers},
        "step": int(ckpt["step"][()]),
        "time": float(ckpt["time"][()]),
        "value": float(ckpt["value"][()]),
        "records": int(ckpt["records"][()]),
        "rng_state": json.loads(bytes(ckpt["rng_state"][:length]).decode()) if length else None,
    }


def read_attrs(path) -> dict:
    """Root attributes of a run file (finished or being written), as Python values."""
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        return attrs_of(f)


def attrs_of(f: h5py.File) -> dict:
    """Root attributes of an open run file, as Python values."""
    return {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}


def read_series(path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, time, value) of an observable (``risk``, ``grad_norm``) or ``particles``."""
    group = "particles/neurons/position" if name == "particles" else f"observables/{name}"
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        g = f[group]
        return g["step"][()], g["time"][()], g["value"][()]
