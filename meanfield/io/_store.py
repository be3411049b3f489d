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
to the last checkpoint) into a fresh file and continues there.

The ``.part`` file is never reopened for writing: HDF5 marks a file open for writing in its
superblock, and a process killed while it holds the file so leaves a file that no one can open
again. Finishing a run therefore closes the ``.part`` (whole, with its final checkpoint),
copies it to a temporary name, writes the final attributes (status, message, end time) into
the copy, and renames the copy to ``<id>.h5``; only then is the ``.part`` removed. A kill at
any point of this leaves either the ``.part`` (resumed at its final checkpoint: nothing to
integrate, the finish is redone) or the finished file. Every later update of a finished file
(the landscape, limit and lazy stages) goes the same way, through :func:`updating`.

The status of a ``.part`` says ``running`` while it is written; whether a writer still holds
it is told by the run lock (:class:`RunLock`), so :func:`run_status` reports a ``.part`` that no
process holds as ``interrupted`` (killed, stopped by a signal, or on a full disk): resumable.

Every reader opens run files through :func:`open_run`, which checks the file's superblock
first (an HDF5 signature at byte 0 and an end-of-file address within the file's size) and
limits HDF5's metadata read retries, so a truncated or overwritten file is named with its
reason (:class:`CorruptRunFile`) instead of hanging a SWMR reader or raising an anonymous error.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import fcntl
import functools
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np

OBSERVABLES = ("risk", "grad_norm")
RNG_STATE_BYTES = 4096
INFO_BYTES = 4096  # an adaptive integrator's counts (JSON) in each checkpoint slot
LOCKING_VARIABLE = "MEANFIELD_FILE_LOCKING"
FRAME_BLOCK = 64  # frames copied at once when a run is resumed ...
COPY_BLOCK_BYTES = 64 * 2**20  # ... and at most this many bytes of them


# A SWMR reader retries a metadata read whose checksum fails (the writer may be mid-flush),
# with a backoff that grows with each attempt: HDF5's default of 100 attempts made a reader
# of a truncated file wait for more than ten minutes; 16 attempts cost under a second.
METADATA_READ_ATTEMPTS = 16
TEMPORARY_MAX_AGE_S = 3600.0  # a temporary file of another host older than this is abandoned
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CorruptRunFile(OSError):
    """A run file that cannot be read: truncated, overwritten or not HDF5. The message names
    the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(errno.EIO, f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self):
        return f"{self.path}: {self.reason}"


def check_superblock(path) -> str | None:
    """Why ``path`` is not a whole HDF5 file, or None when its superblock looks whole.

    Checks the signature at byte 0 (meanfield writes no user block) and that the end-of-file
    address the superblock records lies within the file: a file cut short by a power cut or
    a copy that stopped is detected here, before HDF5 reads past its end.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if head[:8] != _SIGNATURE:
        if not head.strip(b"\x00"):
            return f"not an HDF5 file: its first {len(head)} bytes are zero (overwritten or never written)"
        return "not an HDF5 file (no HDF5 signature at byte 0)"
    version = head[8] if len(head) > 8 else -1
    if version in (2, 3):
        offsets = head[9]
        at = 12 + 2 * offsets  # base address, superblock extension, then end of file
    elif version in (0, 1):
        offsets = head[13]
        at = (24 if version == 0 else 28) + 2 * offsets  # base, free space, then end of file
    else:
        return f"unknown HDF5 superblock version {version}"
    if offsets not in (4, 8) or len(head) < at + offsets:
        return "damaged HDF5 superblock"
    end = int.from_bytes(head[at: at + offsets], "little")
    if end > size:
        return f"truncated: {size} bytes of the {end} its superblock records"
    return None


def _hdf5_library():
    """The HDF5 shared library that h5py uses (ctypes), or None where it cannot be found."""
    if not hasattr(_hdf5_library, "handle"):
        _hdf5_library.handle = None
        try:
            with open("/proc/self/maps") as maps:  # Linux: the library h5py loaded, wherever it is
                paths = {line.split()[-1] for line in maps if "libhdf5" in line and "libhdf5_hl" not in line}
            for path in sorted(p for p in paths if p.startswith("/")):
                library = ctypes.CDLL(path)
                if hasattr(library, "H5Pset_metadata_read_attempts"):
                    _hdf5_library.handle = library
                    break
        except OSError:
            pass
    return _hdf5_library.handle


def open_run(path, swmr: bool = True) -> h5py.File:
    """Open a run file read-only: the one way meanfield reads run files.

    Parameters
    ----------
    path : path-like
        ``<id>.h5`` or a ``<id>.h5.part`` (possibly being written, or left by a kill).
    swmr : bool
        Open in SWMR read mode (required for a ``.part``, harmless for a finished file).

    Raises
    ------
    CorruptRunFile
        The file is truncated, overwritten or not HDF5 (its message names the file and why).
    """
    path = os.fspath(path)
    reason = check_superblock(path)
    if reason is not None:
        raise CorruptRunFile(path, reason)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    library = _hdf5_library()
    if library is not None and swmr:
        library.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(METADATA_READ_ATTEMPTS))
    flags = h5py.h5f.ACC_RDONLY | (h5py.h5f.ACC_SWMR_READ if swmr else 0)
    try:
        return h5py.File(h5py.h5f.open(path.encode(), flags, fapl=fapl))
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        if _is_lock_error(error) or isinstance(error, FileNotFoundError):
            raise
        raise CorruptRunFile(path, f"HDF5 cannot open it ({error})") from None


def _fault(stage: str) -> None:
    """Kill this process at a named write stage, for the tests of crash safety.

    ``MEANFIELD_KILL_AT=<stage>[:<n>]`` sends SIGKILL to the process the n-th time (default
    the first) it reaches ``stage``; unset, this does nothing.
    """
    spec = os.environ.get("MEANFIELD_KILL_AT")
    if not spec or spec.partition(":")[0] != stage:
        return
    count = _fault.counts.get(stage, 0) + 1
    _fault.counts[stage] = count
    if count >= int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_fault.counts = {}


# .<name>.tmp.<host>.<pid>.<12 hex digits>[.<extension>]: temporary_name(), plus a suffix
_TEMPORARY = re.compile(r"^\..+\.tmp\.(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]{12}(\.[A-Za-z0-9]+)?$")


def temporary_name(path) -> str:
    """A fresh hidden name beside ``path`` for a file written and then renamed onto it.

    It names the host and process so that :func:`remove_abandoned` can tell a temporary file
    of a live writer from one a killed writer left; the random part keeps shards on several
    nodes (which may share a process id) apart.
    """
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f".{name}.tmp.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(directory) -> list[str]:
    """Remove the temporary files and lock files that killed writers left in ``directory``.

    A temporary file (:func:`temporary_name`) is abandoned when its process no longer runs
    on this host, or, for another host, when it is older than ``TEMPORARY_MAX_AGE_S``; a lock
    file when no process holds its lock. Returns the names removed.
    """
    removed = []
    host = socket.gethostname()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(".lock") and _locking_enabled():
            # A lock file that no process holds (its holder was killed): the lock protocol
            # re-takes a lock whose file was unlinked meanwhile (_flock), so removing it is safe.
            path = os.path.join(directory, name)
            if not lock_held(path):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append(name)
            continue
        found = _TEMPORARY.match(name)
        if found is None:
            continue
        path = os.path.join(directory, name)
        try:
            if found["host"] == host:
                abandoned = not _pid_alive(int(found["pid"]))
            else:
                abandoned = time.time() - os.path.getmtime(path) > TEMPORARY_MAX_AGE_S
            if abandoned:
                os.remove(path)
                removed.append(name)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def replacing(path, suffix: str = ""):
    """A fresh temporary name beside ``path`` (:func:`temporary_name`, plus ``suffix`` for
    writers that choose a format by extension), renamed onto ``path`` when the block ends.

    A reader never sees a half-written file; concurrent writers (shards on several nodes)
    never share a temporary file; one that a killed writer leaves is removed by the next run
    or status (:func:`remove_abandoned`). Removed if the block raises.
    """
    tmp = temporary_name(path) + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def move_aside(path, reason: str) -> str:
    """Rename an unreadable run file out of the way as ``<name>.corrupt-<UTC time>``, keeping it
    for inspection, and say so in one line on stderr. Returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.corrupt-{stamp}"
    os.replace(path, aside)
    print(f"meanfield: {path}: {reason}; moved to {os.path.basename(aside)}, the run is done again",
          file=sys.stderr, flush=True)
    return aside


INDEX_NAME = "index.h5"


def run_file_names(out_dir, partial: bool = True) -> list[str]:
    """Names of the run files in ``out_dir``, sorted: ``<id>.h5`` and, with ``partial``, the
    ``<id>.h5.part`` of runs being written or interrupted (never ``index.h5``).

    Parameters
    ----------
    out_dir : str or os.PathLike
    partial : bool
        Include the ``.h5.part`` files.

    Returns
    -------
    list of str
        File names (not paths).
    """
    return [name for name in sorted(os.listdir(os.fspath(out_dir)))
            if (name.endswith(".h5") or (partial and name.endswith(".h5.part"))) and name != INDEX_NAME]


def finished_run_files(out_dir):
    """Paths of the finished run files (``*.h5``, not ``index.h5``) in ``out_dir`` whose
    superblock is whole, sorted. Unreadable files are skipped here: ``meanfield status`` and
    ``meanfield run`` name them, and the next run moves them aside."""
    out_dir = os.fspath(out_dir)
    for name in run_file_names(out_dir, partial=False):
        path = os.path.join(out_dir, name)
        if check_superblock(path) is None:
            yield path


def _fsync(path) -> None:
    """Push a file's data to the disk (a rename after it then never exposes a hollow file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _locking_enabled() -> bool:
    return os.environ.get(LOCKING_VARIABLE, "TRUE").upper() not in ("FALSE", "0", "NO", "OFF")


def _flock(path, blocking: bool):
    """An open handle holding an exclusive ``flock`` on ``path`` (created if needed), or None
    when another process holds it and ``blocking`` is false.

    The holder unlinks the file when it is done; a lock on that unlinked file would not
    exclude a process that opens the path anew, so the lock is taken again until the locked
    file is the one at ``path``.
    """
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as error:
            handle.close()
            if blocking or error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            return None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _unlock(path, handle) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    handle.close()


@contextlib.contextmanager
def updating(path, target=None):
    """Update a closed run file crash-safely: yield it copied to a temporary name and opened
    ``r+``; when the block ends, rename the copy onto ``target`` (default ``path``).

    A kill at any moment leaves ``path`` as it was (and a temporary file that
    :func:`remove_abandoned` removes later). Concurrent updates of one file are serialised by
    an exclusive lock on ``.<name>.update.lock``; a reader holding ``path`` open keeps reading
    the old version and sees the new one when it reopens the file.
    """
    path = os.fspath(path)
    target = path if target is None else os.fspath(target)
    directory, name = os.path.split(path)
    lock_path = os.path.join(directory, f".{name}.update.lock")
    lock = _flock(lock_path, blocking=True) if _locking_enabled() else None
    tmp = temporary_name(target)
    try:
        shutil.copyfile(path, tmp)
        _fault("update-copied")
        with h5py.File(tmp, "r+", libver="latest", locking=False) as f:
            yield f
        _fault("update-written")
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    finally:
        if lock is not None:
            _unlock(lock_path, lock)


def run_paths(out_dir, run_id: str) -> tuple[str, str, str]:
    """(finished file, file being written, run lock) of run ``run_id`` in ``out_dir``."""
    base = os.path.join(os.fspath(out_dir), run_id)
    return base + ".h5", base + ".h5.part", os.path.join(os.fspath(out_dir), f".{run_id}.lock")


def lock_held(lock_path) -> bool:
    """Whether a live process holds the run lock at ``lock_path`` (its file may outlive a kill)."""
    try:
        handle = open(lock_path)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            return error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def run_status(path, attrs: dict) -> str:
    """The status of a run file: its ``status`` attribute, except that a ``.part`` marked
    ``running`` that no process writes (its run lock is free) is ``interrupted``.

    With run locks turned off (``MEANFIELD_FILE_LOCKING=FALSE``) a live run cannot be told
    from an interrupted one, and the attribute is returned as it is.
    """
    status = attrs.get("status", "")
    path = os.fspath(path)
    if status == "running" and path.endswith(".h5.part") and _locking_enabled():
        run_id = attrs.get("run_id") or os.path.basename(path)[: -len(".h5.part")]
        _, _, lock = run_paths(os.path.dirname(path), run_id)
        if not lock_held(lock):
            return "interrupted"
    return status


def _is_lock_error(error: OSError) -> bool:
    return "unable to lock file" in str(error)


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
        if not _locking_enabled():
            return self
        try:
            handle = _flock(self.path, blocking=False)
        except OSError as error:
            raise RunLocked(f"{self.path}: cannot take the run lock ({error}); on a file system "
                            f"without locks set {LOCKING_VARIABLE}=FALSE (then nothing stops two "
                            "processes from writing the same run)") from None
        if handle is None:
            try:
                with open(self.path) as holder_file:
                    holder = holder_file.read().strip() or "another process"
            except OSError:
                holder = "another process"
            raise RunLocked(f"{self.path}: this run is being written by {holder}; refusing to write it too")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            _unlock(self.path, self._handle)
            self._handle = None
        return False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=None)
def _git_revision() -> str:
    # Once per process: the code a process runs does not change under it, and a subprocess
    # per run file cost more than the rest of a small run's header.
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions() -> dict:
    """The versions of meanfield and its numeric dependencies (looked up once per process; a
    fresh dict each call)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=None)
def _package_versions() -> dict:
    import numba
    import scipy

    from .._version import __version__

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


_LAYOUT_TEMPLATES: dict = {}  # layout key -> image of an empty in-memory run file (RunFile._layout_in_memory)


def _model_attributes(model, m: int) -> list:
    """(name, value) of ``/parameters/model``'s attributes."""
    return [("activation", model.activation), ("d", model.d), ("m", m), ("p", model.p),
            ("scaling", model.scaling), ("output_scale", model.output_scale(m)), ("alpha", model.alpha_value(m)),
            ("bias", model.bias), ("train_readout", model.train_readout), ("dtype", model.dtype)]


class RunFile:
    """Writer of one run's file; an observer of :func:`meanfield.run`.

    Use :meth:`create` for a new run and :meth:`resume` to continue a ``.part`` file.
    """

    def __init__(self, handle: h5py.File | None, part_path: str, final_path: str, checkpoint_seconds: float,
                 records: int, observables=(), layout: tuple | None = None):
        self.file = handle
        self.part_path = part_path
        self.final_path = final_path
        self.checkpoint_seconds = checkpoint_seconds
        self.records = records
        self._last_checkpoint = time.monotonic()
        self.observables = tuple(observables)
        self._handles = {}  # path -> dataset of this file (_node)
        # Set by the caller to the problem's describe(): written as method_description at close.
        self.describe = None
        # A run file kept in memory (create(in_memory=True)): ``layout`` holds _layout's
        # arguments, records and checkpoints wait in _pending and _slots, and the file is laid
        # out once, when it is finished or must reach the disk (materialize).
        self.in_memory = handle is None
        self._layout_args = layout
        self._pending = {}  # series group -> [(step, time, value)]
        self._slots = {}  # checkpoint slot -> _write_slot's arguments
        self._active = -1
        self.unpublished = None  # (temporary file, name) of a finished file left to publish()
        if self.in_memory:
            self._particles, self._tracers = bool(layout[5]), bool(layout[7])
        else:
            self._particles = "particles/neurons/position" in handle
            self._tracers = "particles/tracers/position" in handle
            handle.swmr_mode = True

    @property
    def is_open(self) -> bool:
        """Whether the run can still be written (kept in memory, or its file open)."""
        return self.in_memory or (self.file is not None and self.file.id.valid)

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def _layout(cls, path, header: dict, model, m: int, teacher_W, buffer_shapes, particles: bool,
                particles_dtype: str, tracer_blocks, observables=()) -> h5py.File:
        # No chunk cache: a frame that cannot be written (a full disk) fails its own write call
        # instead of failing silently when the cache is evicted later.
        if path is None:
            return cls._layout_in_memory(header, model, m, teacher_W, buffer_shapes, particles, particles_dtype,
                                         tracer_blocks, observables)
        f = h5py.File(path, "w", libver="latest", rdcc_nbytes=0)
        cls._lay_out(f, header, model, m, teacher_W, buffer_shapes, particles, particles_dtype, tracer_blocks,
                     observables)
        _fault("create")
        return f

    @classmethod
    def _layout_in_memory(cls, header: dict, model, m: int, teacher_W, buffer_shapes, particles: bool,
                          particles_dtype: str, tracer_blocks, observables=()) -> h5py.File:
        """The layout of :meth:`_layout` in an in-memory file. The members of an ensemble share
        everything but the header and the teacher: the first lays the file out and leaves its
        image as a template, which the others copy (a third of the cost) and fill in."""
        key = json.dumps([sorted(header), _model_attributes(model, m), m, None if teacher_W is None else
                          [list(np.shape(teacher_W)), str(np.asarray(teacher_W).dtype)],
                          sorted((name, list(shape)) for name, shape in buffer_shapes.items()), bool(particles),
                          str(particles_dtype), list(tracer_blocks), list(observables), header["versions"]],
                         default=str)
        template = _LAYOUT_TEMPLATES.get(key)
        if template is None:
            f = h5py.File.in_memory(libver="latest")
            cls._lay_out(f, header, model, m, teacher_W, buffer_shapes, particles, particles_dtype, tracer_blocks,
                         observables)
            f.flush()
            if len(_LAYOUT_TEMPLATES) >= 8:
                _LAYOUT_TEMPLATES.pop(next(iter(_LAYOUT_TEMPLATES)))
            _LAYOUT_TEMPLATES[key] = (f.id.get_file_image(), dict(header))
            return f
        image, written = template
        f = h5py.File.in_memory(file_image=image, libver="latest")
        for name, value in header.items():
            if type(value) is not type(written[name]) or value != written[name]:  # the run's own: id, config, ...
                f.attrs[name] = value
        if teacher_W is not None:
            f["parameters/teacher/position"][...] = teacher_W
        return f

    @classmethod
    def _lay_out(cls, f, header: dict, model, m: int, teacher_W, buffer_shapes, particles: bool,
                 particles_dtype: str, tracer_blocks, observables=()) -> None:
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
        for key, value in _model_attributes(model, m):
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
            ckpt.create_dataset("info", shape=(INFO_BYTES,), dtype=np.uint8)
            ckpt.create_dataset("info_length", data=np.int64(0))
            if observables:  # the particles of the last record, for measures that compare records
                ckpt.create_dataset("record_W", shape=(m, p), dtype=model.dtype)

    @classmethod
    def header(cls, spec, method: str) -> dict:
        return {"config": spec.config_json, "config_sha256": spec.sha256, "run_id": spec.id,
                "source": os.path.abspath(spec.source), "status": "running", "message": "", "method": method,
                "creator": "meanfield", "versions": json.dumps(_versions()), "git_revision": _git_revision(),
                "host": socket.gethostname(), "start_time": _now(), "end_time": "", "resumed": 0}

    @classmethod
    def create(cls, part_path, final_path, header: dict, model, m: int, teacher_W, buffer_shapes,
               particles: bool = True, particles_dtype: str = "float64",
               checkpoint_seconds: float = 60.0, tracer_blocks=(), observables=(),
               in_memory: bool = False) -> "RunFile":
        """A new run file at ``part_path`` (renamed to ``final_path`` when the run ends).

        ``buffer_shapes`` maps the integrator's state buffers to their shapes;
        ``tracer_blocks`` lists ``(label, start, stop)`` row ranges of the tracer array;
        ``observables`` names the series of the run's measures (``state.measured``).

        ``in_memory``: the file is built in memory and written once, when it is finished,
        or as ``part_path`` when its first checkpoint falls due by time (``checkpoint_seconds``),
        when the run is interrupted or abandoned; from then on it is an ordinary ``.part``.
        For the members of an ensemble of short runs: a run file written by records and
        checkpoints costs several times the arithmetic of such a run (docs/performance.md).
        A kill before the file reaches the disk loses at most ``checkpoint_seconds`` of work.
        """
        if in_memory:
            layout = (header, model, m, teacher_W, buffer_shapes, particles, particles_dtype, list(tracer_blocks),
                      tuple(observables))
            return cls(None, os.fspath(part_path), os.fspath(final_path), checkpoint_seconds, 0, observables,
                       layout=layout)
        # Laid out under a temporary name and renamed once in SWMR mode: a kill before that
        # leaves no .part that HDF5 would refuse to open, only a temporary file to remove.
        tmp = temporary_name(part_path)
        f = cls._layout(tmp, header, model, m, teacher_W, buffer_shapes, particles, particles_dtype,
                        list(tracer_blocks), observables)
        writer = cls(f, tmp, os.fspath(final_path), checkpoint_seconds, 0, observables)
        writer.file.flush()
        os.replace(tmp, part_path)
        writer.part_path = os.fspath(part_path)
        return writer

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
        with open_run(part_path) as old:
            if old.attrs["config_sha256"] != header["config_sha256"]:
                raise ValueError(f"{part_path}: written by another configuration "
                                 f"({old.attrs['config_sha256']}), not {header['config_sha256']}")
            checkpoint = read_checkpoint(old)
            if checkpoint is not None:
                fresh_path = part_path + ".new"
                n = checkpoint["records"]
                header = dict(header, start_time=old.attrs["start_time"], resumed=int(old.attrs["resumed"]) + 1)
                f = cls._layout(fresh_path, header, model, m, teacher_W, buffer_shapes, particles,
                                particles_dtype, list(tracer_blocks), observables)
                groups = [f"observables/{name}" for name in (*OBSERVABLES, *observables)]
                if particles:
                    groups.append("particles/neurons/position")
                if tracer_blocks:
                    groups.append("particles/tracers/position")
                for group in groups:
                    for name in ("step", "time", "value"):
                        src, dst = old[f"{group}/{name}"], f[f"{group}/{name}"]
                        # Frames copied a block at a time, a block bounded in bytes too (a frame
                        # of a wide run can be hundreds of MB).
                        block = copy_block(int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize)
                        if src.shape[0] < n:
                            f.close()
                            raise CorruptRunFile(part_path, f"{group}/{name} holds {src.shape[0]} records, "
                                                 f"its checkpoint counts {n}")
                        dst.resize(n, axis=0)
                        for start in range(0, n, block):
                            stop = min(n, start + block)
                            dst[start:stop] = src[start:stop]
                _fault("resume-copied")
        if checkpoint is None:  # killed before its first checkpoint: nothing to keep
            return cls.create(part_path, final_path, header, model, m, teacher_W, buffer_shapes, particles,
                              particles_dtype, checkpoint_seconds, tracer_blocks, observables), None
        writer = cls(f, fresh_path, final_path, checkpoint_seconds, n, observables)
        writer._write_checkpoint_arrays(checkpoint["W"], checkpoint["buffers"], checkpoint["step"],
                                        checkpoint["time"], checkpoint["value"], checkpoint["rng_state"],
                                        checkpoint["tracers"], checkpoint["info"], checkpoint["record_W"])
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
            _fault("record")
        if self._particles:
            self._append("particles/neurons/position", n, state, state.W)
        if self._tracers:
            self._append("particles/tracers/position", n, state, state.tracers)
        self.records = n + 1
        if getattr(state, "checkpointable", True):
            self.checkpoint(state)
        elif not self.in_memory:
            self.file.flush()

    def after_step(self, state) -> None:
        due = time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds
        if due and getattr(state, "checkpointable", True):
            if self.in_memory:
                self.materialize()
            self.checkpoint(state)

    def close(self, state, status: str, message: str, also=None, publish_now: bool = True) -> None:
        """End the file: a final checkpoint, then :meth:`finish` (an ``interrupted`` run is
        checkpointed where its state allows it and closed, and stays a ``.part`` to resume);
        ``also(f)``, when given, writes more into the finished file, and ``publish_now`` is
        passed on (see :meth:`finish`)."""
        if status == "interrupted":
            if getattr(state, "checkpointable", True):
                self.checkpoint(state)
            if self.in_memory:
                self.materialize()
            self._close_file()
            return
        if status != "diverged":
            # Even where an adaptive solver would not resume from here bitwise: the run is
            # over, and a resume from its end only finishes the file again.
            self.checkpoint(state)
        info = getattr(state, "info", None)
        extra = {"integrator_info": json.dumps(info)} if info else {}
        if self.describe is not None:
            # How the objective was computed, with what the last evaluation says of its error
            # (the Hermite series' velocity bound): PopulationProblem.describe().
            extra["method_description"] = self.describe()
        self.finish(status, message, extra or None, also, publish_now)

    # -- writing -------------------------------------------------------------------------
    def _close_file(self) -> None:
        # The cached dataset objects go first: h5py's close visits every live h5py object of
        # the process, and an ensemble holds the files of all its members open at once.
        self._handles = {}
        self.file.close()

    def _node(self, path):
        """The dataset at ``path``, looked up once per file: h5py's lookup by name costs about
        70 us, several times the write of a small record or checkpoint field."""
        node = self._handles.get(path)
        if node is None:
            node = self._handles[path] = self.file[path]
        return node

    def _append(self, group, n, state, value):
        if self.in_memory:
            self._pending.setdefault(group, []).append((state.step, state.t, np.array(value, copy=True)))
            return
        for name in ("step", "time", "value"):
            self._node(f"{group}/{name}").resize(n + 1, axis=0)
        self._node(f"{group}/step")[n] = state.step
        self._node(f"{group}/time")[n] = state.t
        self._node(f"{group}/value")[n] = value

    def _write_checkpoint_arrays(self, W, buffers, step, step_time, value, rng_state, tracers=None, info=None,
                                 record_W=None):
        if self.in_memory:  # the same alternation of slots as on disk, written out later (_replay)
            slot = 1 - self._active if self._active >= 0 else 0
            self._slots[slot] = (np.array(W, copy=True), {name: np.array(a, copy=True) for name, a in buffers.items()},
                                 step, step_time, value, rng_state,
                                 None if tracers is None else np.array(tracers, copy=True), info, self.records,
                                 None if record_W is None else np.array(record_W, copy=True))
            self._active = slot
            return
        active = self._node("checkpoint/active")
        current = int(active[()])
        slot = 1 - current if current >= 0 else 0
        self._write_slot(slot, W, buffers, step, step_time, value, rng_state, tracers, info, self.records, record_W)
        self.file.flush()
        _fault("checkpoint-slot")
        active[()] = slot  # the switch: one 8-byte write, after the slot is on disk

    def _write_slot(self, slot, W, buffers, step, step_time, value, rng_state, tracers, info, records,
                    record_W=None, fresh: bool = False):
        """Write one checkpoint slot; ``fresh``: into a file just laid out from its template,
        by h5py's low-level calls (:meth:`_replay`)."""
        put = self._put if fresh else self._assign
        ckpt = f"checkpoint/slot_{slot}"
        put(f"{ckpt}/W", W)
        if tracers is not None:
            put(f"{ckpt}/tracers", tracers)
        for name, array in buffers.items():
            put(f"{ckpt}/buffers/{name}", array)
        put(f"{ckpt}/step", step)
        put(f"{ckpt}/time", step_time)
        put(f"{ckpt}/value", value)
        put(f"{ckpt}/records", records)
        if record_W is not None and self.observables:
            put(f"{ckpt}/record_W", record_W)
        for name, size, content in (("rng_state", RNG_STATE_BYTES, rng_state), ("info", INFO_BYTES, info or None)):
            if content is not None or not fresh:  # a fresh slot holds no state already
                raw = json.dumps(content).encode() if content is not None else b""
                if len(raw) > size:
                    raise ValueError(f"checkpoint {name} of {len(raw)} bytes exceeds {size}")
                buffer = np.zeros(size, dtype=np.uint8)
                buffer[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
                put(f"{ckpt}/{name}", buffer)
                put(f"{ckpt}/{name}_length", len(raw))

    def _assign(self, path, value) -> None:
        self._node(path)[()] = value

    def _put(self, path, value, extent=None) -> None:
        """Write a whole dataset (first resized to ``extent``) by h5py's low-level calls: a tenth
        of the cost of the high-level ones, which dominates writing a small run's file."""
        dataset = h5py.h5d.open(self.file.id, path.encode())
        if extent is not None:
            dataset.set_extent(extent)
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(value, dtype=dataset.dtype))

    def _replay(self) -> None:
        """Write what a run kept in memory (records, checkpoint slots) into ``self.file``, just
        laid out (:meth:`_layout`)."""
        for group, rows in self._pending.items():
            steps, times, values = zip(*rows)
            for name, column in (("step", steps), ("time", times), ("value", values)):
                column = np.asarray(column)
                self._put(f"{group}/{name}", column, extent=column.shape)
        for slot, arguments in sorted(self._slots.items()):
            self._write_slot(slot, *arguments, fresh=True)
        if self._active >= 0:
            self._put("checkpoint/active", self._active)
        self._pending, self._slots = {}, {}

    def checkpoint(self, state) -> None:
        """Save what resuming needs (state, buffers, generator, record count, an adaptive
        integrator's counts) and flush."""
        rng_state = state.rng.bit_generator.state if state.rng is not None else None
        info = getattr(state, "info", None)
        self._write_checkpoint_arrays(state.W, state.buffers, state.step, state.t, state.value, rng_state,
                                      state.tracers, _json_safe(info), getattr(state, "scratch", {}).get("record_W"))
        if not self.in_memory:
            self.file.flush()
        _fault("checkpoint")
        self._last_checkpoint = time.monotonic()

    def abandon(self) -> None:
        """Close the file after an interrupt or an OS error (a full disk), keeping what is on
        disk: everything up to the last checkpoint, which the next call resumes (a file still
        in memory is written as its ``.part`` first, where the disk allows it)."""
        if self.in_memory:
            with contextlib.suppress(Exception):
                self.materialize()
        if self.file is not None and self.file.id.valid:
            with contextlib.suppress(Exception):
                self._close_file()

    def _write_image(self, target, sync: bool = True) -> str:
        """Write the in-memory file to a temporary name beside ``target`` in one piece and
        return that name; ``sync``: then push it to the disk and rename it onto ``target``
        (a kill leaves ``target`` as it was). Without ``sync``, :func:`publish` does both, for
        many files at once."""
        image = self.file.id.get_file_image()
        tmp = temporary_name(target)
        try:
            with open(tmp, "wb") as handle:
                handle.write(image)
                handle.flush()
                _fault("image-written")
                if sync:
                    os.fsync(handle.fileno())
            if sync:
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return tmp

    def materialize(self) -> None:
        """Write a run kept in memory to its ``.part`` (laid out under a temporary name, then
        renamed) and continue writing it there."""
        if not self.in_memory:
            return
        tmp = temporary_name(self.part_path)
        try:
            self.file = self._layout(tmp, *self._layout_args)
            self._handles = {}
            self._replay()
            self.file.flush()
            self.file.swmr_mode = True
            os.replace(tmp, self.part_path)
        except BaseException:
            if self.file is not None and self.file.id.valid:
                with contextlib.suppress(Exception):
                    self._close_file()
            self.file = None
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        self.in_memory = False

    def finish(self, status: str, message: str, extra: dict | None = None, also=None,
               publish_now: bool = True) -> str:
        """Close the file and write its final attributes into a renamed copy (:func:`updating`);
        ``also(f)``, when given, writes more into that copy (a per-run stage's results: one copy
        instead of two).

        A finished run (``complete``, ``diverged``) becomes ``<id>.h5`` and its ``.part`` is
        removed; a ``failed`` run keeps its ``.part`` name so that a later call resumes it.
        Returns the path of the file.

        ``publish_now=False``, for a run kept in memory: the file is written under a temporary
        name and left for :func:`publish`, which puts many on the disk with one sync.
        """
        target = self.part_path if status == "failed" else self.final_path

        def write_end(f):
            f.attrs["status"] = status
            f.attrs["message"] = message
            f.attrs["end_time"] = _now()
            for key, value in (extra or {}).items():
                f.attrs[key] = value
            if also is not None:
                also(f)

        if self.in_memory:  # no .part on the disk: the finished file is laid out and written once
            self.file = self._layout(None, *self._layout_args)
            self._handles = {}
            self._replay()
            write_end(self.file)
            self.file.flush()
            try:
                written = self._write_image(target, sync=publish_now)
            finally:
                self._close_file()
            self.in_memory = False
            if not publish_now:
                self.unpublished = (written, target)
                return target
        else:
            if self.file.id.valid:
                self._close_file()
            with updating(self.part_path, target) as f:
                write_end(f)
        if target != self.part_path:  # a .part of an earlier call, too, when started over
            _fault("finish-renamed")
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.part_path)
        return target


def publish(writers) -> None:
    """Put the files that :meth:`RunFile.finish` left unpublished (``publish_now=False``) in
    place: their data pushed to the disk by one sync of the file system (``syncfs``, where the
    system has it; a sync per file elsewhere), then each renamed onto its name and its ``.part``
    removed. One sync instead of one per file: on a parallel file system a sync is a round
    trip to its servers, and an ensemble finishes its members at once.

    Parameters
    ----------
    writers : iterable of RunFile
        Writers with a file left unpublished; the others are passed over.
    """
    pending = [writer for writer in writers if writer.unpublished is not None]
    if not pending:
        return
    _sync_files([writer.unpublished[0] for writer in pending])
    for writer in pending:
        written, target = writer.unpublished
        os.replace(written, target)
        writer.unpublished = None
        if target != writer.part_path:
            _fault("finish-renamed")
            with contextlib.suppress(FileNotFoundError):
                os.remove(writer.part_path)
    for directory in sorted({os.path.dirname(writer.final_path) for writer in pending}):
        _fsync_directory(directory)


def _sync_files(paths) -> None:
    """Push the data of the files at ``paths`` (in one directory) to the disk."""
    paths = list(paths)
    if len(paths) > 1 and sys.platform.startswith("linux"):
        try:
            syncfs = ctypes.CDLL(None, use_errno=True).syncfs
            fd = os.open(paths[0], os.O_RDONLY)
            try:
                if syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        except (AttributeError, OSError):
            pass
    for path in paths:
        _fsync(path)


def copy_block(frame_bytes: int) -> int:
    """Frames a resume copies at once: at most FRAME_BLOCK frames and COPY_BLOCK_BYTES bytes."""
    return max(1, min(FRAME_BLOCK, COPY_BLOCK_BYTES // max(1, frame_bytes)))


def _json_safe(info):
    """The JSON-representable entries of an integrator's ``state.info`` (counts, names)."""
    if not info:
        return None
    return {key: value for key, value in info.items()
            if isinstance(value, (str, int, float, bool)) or value is None}


def _read_json(ckpt, name: str):
    if name not in ckpt:  # written before this field existed
        return None
    length = int(ckpt[f"{name}_length"][()])
    return json.loads(bytes(ckpt[name][:length]).decode()) if length else None


def read_checkpoint(f: h5py.File) -> dict | None:
    """The last complete checkpoint of an open run file, or None if it has none.

    Returns a dict with W, tracers (or None), buffers (name -> array), step, time, value,
    records, rng_state (a bit-generator state dict, or None for deterministic integrators),
    info (an adaptive integrator's counts, or None) and record_W (the particles of the last
    record, kept for a run with measures; None otherwise or before the first record).
    """
    active = int(f["checkpoint/active"][()])
    if active < 0:
        return None
    ckpt = f[f"checkpoint/slot_{active}"]
    buffers = ckpt["buffers"] if "buffers" in ckpt else {}
    return {
        "W": ckpt["W"][()],
        "tracers": ckpt["tracers"][()] if "tracers" in ckpt else None,
        "buffers": {name: buffers[name][()] for name in buffers},
        "step": int(ckpt["step"][()]),
        "time": float(ckpt["time"][()]),
        "value": float(ckpt["value"][()]),
        "records": int(ckpt["records"][()]),
        "rng_state": _read_json(ckpt, "rng_state"),
        "info": _read_json(ckpt, "info"),
        "record_W": ckpt["record_W"][()] if "record_W" in ckpt and int(ckpt["records"][()]) > 0 else None,
    }


def read_attrs(path) -> dict:
    """Root attributes of a run file (finished or being written), as Python values."""
    with open_run(path) as f:
        return attrs_of(f)


def attrs_of(f: h5py.File) -> dict:
    """Root attributes of an open run file, as Python values."""
    return {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}


def read_series(path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, time, value) of an observable (``risk``, ``grad_norm``) or ``particles``."""
    group = "particles/neurons/position" if name == "particles" else f"observables/{name}"
    with open_run(path) as f:
        g = f[group]
        return g["step"][()], g["time"][()], g["value"][()]


def write_experiment_file(path_final, attrs: dict, data: dict, group_attrs: dict) -> str:
    """Write the file of an ``[experiment]`` kind (``meanfield.experiments``) in one piece.

    Written under a temporary name, synced and renamed: a kill leaves no partial file, only a
    temporary one that the next run removes.

    Parameters
    ----------
    path_final : str or os.PathLike
        The finished file's path.
    attrs : dict
        Root attributes (config, run id, kind, status, start time); the versions, git revision,
        end time and the H5MD header are added here.
    data : dict
        Dataset path (``"group/name"``) -> array.
    group_attrs : dict
        Group path -> attributes of that group.

    Returns
    -------
    str
        ``path_final``.
    """
    part = temporary_name(path_final)
    with h5py.File(part, "w") as f:
        f.attrs.update(attrs)
        f.attrs.update({"versions": json.dumps(_versions()), "git_revision": _git_revision(), "end_time": _now()})
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = [1, 1]
        h5md.create_group("creator").attrs.update({"name": "meanfield", "version": json.loads(
            f.attrs["versions"])["meanfield"]})
        for name, array in data.items():
            f.create_dataset(name, data=np.asarray(array))
        for group, values in group_attrs.items():
            f.require_group(group).attrs.update(values)
    _fsync(part)
    os.replace(part, path_final)
    return path_final
