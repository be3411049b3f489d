"""The catalog of an output directory: one row per run file, ``catalog.csv`` and ``index.h5``.

The catalog is what ``meanfield status`` and ``report`` read and what the analysis loaders
list; it is made from the run files themselves (they are the truth; the catalog and the
index are views, written under temporary names and renamed).

Opening every run file costs about 1.2 ms a file, so rows are cached in ``<out>/catalog.d/``
(a cache only: a row is used only while its file is the one it was made from):

- ``<host>-<pid>-<random>.jsonl``: a *fragment*, the file of one :class:`CatalogFragment` (one
  ``run_shard`` call), written by that process alone. One JSON line per finished run, appended
  and flushed as the run ends: ``{"file": name, "stat": [size, mtime_ns, inode], "row": row}``,
  the row as :func:`catalog_row` makes it and the stat of the file when it was made (before and
  after; a file that changed meanwhile gets no line). ``{"closed": true}`` ends a fragment
  whose writer is done.
- ``merged.jsonl``: written by :func:`write_index`, replaced whole (a temporary name renamed):
  a first line ``{"absorbed": [fragment names]}``, then the rows of every finished run file in
  the same form as a fragment's.

:func:`catalog_rows` lists the run files (one ``stat`` each) and reads the cache (``merged.jsonl``
and the fragments it has not absorbed); a file whose current stat matches a cached line takes
that line's row, any other (no line: its writer was killed first, it was resumed or updated
since, a ``.part``, a corrupt file) is opened as before. The rows are therefore those of
opening every file, in the same order. A line that does not parse (a writer killed in the
middle of it) is ignored. :func:`write_index` compacts: it writes ``merged.jsonl``, absorbing
the fragments that no writer can append to any more (closed, or of a process of this host that
no longer runs), and removes absorbed fragments (for ``REMOVAL_BUDGET_S`` at most; readers skip
the others). No lock is taken anywhere, so this works on NFS and Lustre, and a race can only
cost a cache miss (a file opened once more).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import socket
import time
import uuid

import h5py

from ._store import (
    INDEX_NAME,
    CorruptRunFile,
    _fault,
    _pid_alive,
    lock_held,
    open_run,
    remove_abandoned,
    replacing,
    run_file_names,
    run_paths,
    run_status,
)


def final_values(path) -> tuple[float, float]:
    """(risk, time) of the last record of the run file at ``path`` (``last_risk``)."""
    with open_run(path) as f:
        return last_risk(f)


def last_risk(f: h5py.File) -> tuple[float, float]:
    """(risk, time) of the last record of an open run file; NaNs before the first."""
    risk = f["observables/risk"]
    if risk["value"].shape[0] == 0:
        return math.nan, math.nan
    return float(risk["value"][-1]), float(risk["time"][-1])


CATALOG_DIR = "catalog.d"  # the cache of catalog rows (module docstring)
MERGED_NAME = "merged.jsonl"
REMOVAL_BUDGET_S = 1.0  # a compaction removes absorbed fragments for this long at most (_compact)
_FRAGMENT = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{12}\.jsonl$")
_CLOSED = b'{"closed": true}\n'


def catalog_row(path) -> dict | None:
    """The catalog row of one run file (finished, being written or interrupted), read from
    that file alone: what :func:`catalog_rows` lists for it.

    Parameters
    ----------
    path : str or path-like
        A run file, ``<dir>/<id>.h5`` or ``<dir>/<id>.h5.part``.

    Returns
    -------
    dict or None
        The row (keys as in :func:`catalog_rows`); a row with status ``corrupt`` and the reason
        under ``message`` for a file that cannot be read; None for a ``.part`` that a live
        writer is creating right now (its run lock is held, the file not readable yet).
    """
    path = os.fspath(path)
    out_dir, name = os.path.split(path)
    run_id = name.split(".h5")[0]
    try:
        with open_run(path) as f:
            return open_file_row(f, path)
    except (OSError, KeyError, ValueError) as error:
        _, _, lock = run_paths(out_dir, run_id)
        if name.endswith(".part") and lock_held(lock):
            return None  # being created right now
        reason = error.reason if isinstance(error, CorruptRunFile) else f"not a run file ({error})"
        return {"id": run_id, "status": "corrupt", "file": name, "final_risk": math.nan,
                "final_time": math.nan, "message": reason}


def open_file_row(f: h5py.File, path) -> dict:
    """The catalog row (:func:`catalog_row`) of the open run file ``f`` that is, or is about
    to be, at ``path``: a finished file still in memory gives its row before it is written.

    Parameters
    ----------
    f : h5py.File
        A run file, open for reading or writing.
    path : str or path-like
        Where the file lies: its name gives the row's ``file`` and, for a ``.part``, its status.

    Returns
    -------
    dict
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    # Only the attributes the row needs: reading all of them costs more than the rest of the row.
    attrs = {}
    for key in ("run_id", "config", "status", "experiment", "kind"):
        if key in f.attrs:
            value = f.attrs[key]
            attrs[key] = value.decode() if isinstance(value, bytes) else value
    config = json.loads(attrs["config"])
    # A file of an [experiment] kind (meanfield.experiments) records no risk series.
    risk, t = (math.nan, math.nan) if attrs.get("experiment") else last_risk(f)
    row = {"id": attrs["run_id"], "status": run_status(path, attrs), "file": name, "final_risk": risk,
           "final_time": t}
    if attrs.get("experiment"):
        row["experiment"] = attrs["experiment"]
    if attrs.get("kind"):  # an ODE run file (meanfield.io._ode_file): kind "ode"; particle runs have none
        row["kind"] = attrs["kind"]
    for section, values in config.items():
        for key, value in values.items():
            row[f"{section}.{key}"] = value
    return row


def _stat_key(path) -> list[int] | None:
    """What tells one version of a file from another: size, mtime (ns), inode (a finished run
    file is only ever replaced by a rename, which gives a new inode). None if it is gone."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _cache_line(name: str, key: list[int], row: dict) -> bytes:
    return (json.dumps({"file": name, "stat": key, "row": row}) + "\n").encode()


def _cached_row(path, name: str):
    """(row, stat key) of a finished run file read from the file itself; the key is None
    when the row must not be cached (the file changed while it was read, or is corrupt)."""
    before = _stat_key(path)
    row = catalog_row(path)
    if row is None or row["status"] == "corrupt" or before is None or _stat_key(path) != before:
        return row, None
    return row, before


def _parse_lines(content: bytes, cache: dict) -> list | None:
    """Add the rows of cache lines to ``cache`` ({(file name, stat key): row}); lines that do not
    parse (a writer killed mid-line) are ignored. Returns the ``absorbed`` list of a
    ``merged.jsonl`` (None if there is none)."""
    absorbed = None
    for line in content.splitlines():
        try:
            entry = json.loads(line)
            if isinstance(entry.get("absorbed"), list):
                absorbed = [name for name in entry["absorbed"] if isinstance(name, str)]
                continue
            row, key = entry["row"], tuple(entry["stat"])
            if row["file"] != entry["file"] or len(key) != 3:
                continue
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a truncated or foreign line
        cache[(entry["file"], key)] = row
    return absorbed


def _read_file(path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # removed by a concurrent compaction: its rows are in merged.jsonl
        return None


def _read_cache(out_dir):
    """({(file name, stat key): row}, [fragments absorbed: no writer appends to them any more and
    their rows are merged]) from ``<out_dir>/catalog.d``. The fragments that ``merged.jsonl``
    lists as absorbed by an earlier compaction are not read again."""
    directory = os.path.join(out_dir, CATALOG_DIR)
    cache, absorbed = {}, []
    try:
        names = sorted(os.listdir(directory))
    except OSError:  # no cache yet
        return cache, absorbed
    host = socket.gethostname()
    merged = _read_file(os.path.join(directory, MERGED_NAME)) if MERGED_NAME in names else None
    earlier = set(_parse_lines(merged, cache) or ()) if merged is not None else set()
    for name in names:
        found = _FRAGMENT.match(name)
        if found is None or name.startswith("."):
            continue  # merged.jsonl, a temporary file of a compaction
        if name in earlier:
            absorbed.append(name)
            continue
        # Asked before the file is read: a writer found dead had written all its lines.
        dead = found["host"] == host and not _pid_alive(int(found["pid"]))
        content = _read_file(os.path.join(directory, name))
        if content is None:
            continue
        _parse_lines(content, cache)
        if dead or content.endswith(_CLOSED):
            absorbed.append(name)
    return cache, absorbed


def _merge(out_dir):
    """(rows as :func:`catalog_rows` returns them, cache lines of the rows that may be cached,
    fragments absorbed: :func:`_read_cache`)."""
    # The cache is read before the directory is listed: a fragment closed by then names only
    # files that were finished by then.
    cache, absorbed = _read_cache(out_dir)
    rows, lines = [], []
    names = run_file_names(out_dir)
    finished = {name for name in names if name.endswith(".h5")}
    for name in names:
        if name.endswith(".part") and name[: -len(".part")] in finished:
            continue
        path = os.path.join(out_dir, name)
        if name.endswith(".part"):  # its status depends on its run lock: always read
            row = catalog_row(path)
            if row is not None:
                rows.append(row)
            continue
        key = _stat_key(path)
        row = cache.get((name, tuple(key))) if key is not None else None
        if row is None:
            row, key = _cached_row(path, name)
            if row is None:
                continue
        if key is not None:
            lines.append(_cache_line(name, key, row))
        rows.append(row)
    return rows, lines, absorbed


def catalog_rows(out_dir) -> list[dict]:
    """One row per run in ``out_dir`` (finished, being written or interrupted): id, status,
    file, final_risk, final_time and every config value as ``section.key``; the file of an
    ``[experiment]`` kind (:mod:`meanfield.experiments`) has its kind under ``experiment`` and
    NaN for the risk and time (it records no risk series); an ODE run file
    (:mod:`meanfield.io._ode_file`) has ``kind = "ode"`` and its last risk and time, and its
    config columns are ``ode.*`` and ``source.*``.

    A ``.part`` that no process writes is ``interrupted`` (:func:`run_status`);
    a file that cannot be read is a row with status ``corrupt`` and the reason under
    ``message`` (the next ``meanfield run`` moves it aside and does the run again). A file
    being created by a live writer is left out; so is the ``.part`` of a run whose finished
    file exists already.

    The rows are those of opening every run file (:func:`catalog_row`), but a finished file
    whose size, mtime and inode match a row cached in ``out_dir/catalog.d`` (written as each
    run of ``run_shard`` ends, and by :func:`write_index`) is not opened: the cost is one
    ``stat`` per run file, the reading of the cache and one open per file not cached
    (``.part`` files, files written by a shard killed before its line, files changed since).
    Nothing is written.

    Parameters
    ----------
    out_dir : str or path-like
        An output directory of ``meanfield run``.

    Returns
    -------
    list of dict
        In the order of the file names. Keys ``id``, ``status`` (``running``, ``complete``,
        ``diverged`` or ``interrupted``: :func:`run_status`; ``corrupt`` for a file that
        cannot be read), ``file`` (the file name), ``final_risk`` and ``final_time`` (float:
        the risk and the continuous time t of the last record), ``experiment`` and ``kind`` where set,
        ``message`` for a corrupt file, and ``section.key`` for every config value.
    """
    return _merge(os.fspath(out_dir))[0]


class CatalogFragment:
    """The catalog rows of the runs one process finishes, appended to a file of its own,
    ``<out_dir>/catalog.d/<host>-<pid>-<random>.jsonl`` (created at the first row), so that
    :func:`catalog_rows` need not open those run files again.

    The file is written by this object alone (shards on many nodes never share one), one
    line per :meth:`add`, opened in append mode, written in one call and closed (flushed)
    each time. It is a cache: an error writing it (a full disk) stops its writes, silently,
    and costs only the opening of those run files by the next :func:`catalog_rows`.

    Parameters
    ----------
    out_dir : str or path-like
        The output directory the runs are written to.
    """

    def __init__(self, out_dir):
        directory = os.path.join(os.fspath(out_dir), CATALOG_DIR)
        self.path = os.path.join(directory, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl")
        self.broken = False
        self.written = 0

    def add(self, path, row: dict | None = None) -> bool:
        """Append the row of the finished run file at ``path`` (read from it, :func:`catalog_row`).

        Parameters
        ----------
        path : str or path-like
            A run file of the output directory; anything but a readable finished ``<id>.h5``
            (a ``.part``, a missing or corrupt file) is not cached.
        row : dict, optional
            The file's row, made by its writer from the file before it was written
            (:func:`open_file_row`): then the file is not opened again.

        Returns
        -------
        bool
            Whether a line was written.
        """
        path = os.fspath(path)
        name = os.path.basename(path)
        if self.broken or not name.endswith(".h5") or name == INDEX_NAME:
            return False
        try:
            row, key = (row, _stat_key(path)) if row is not None else _cached_row(path, name)
            line = _cache_line(name, key, row) if key is not None else None
        except Exception:  # noqa: BLE001 - a row that cannot be cached is read from its file later
            return False
        return line is not None and self._append(line)

    def close(self) -> None:
        """End the fragment (``{"closed": true}``): no more lines, so a compaction
        (:func:`write_index`) may remove it once its rows are merged."""
        if self.written and not self.broken:
            self._append(_CLOSED)
        self.broken = True

    def _append(self, data: bytes) -> bool:
        try:
            if not self.written:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError("short write")
            finally:
                os.close(fd)
        except BaseException as error:  # a full disk; a signal (this line is then left whole or out)
            self.broken = True  # a part of a line may be there: nothing may follow it
            if isinstance(error, OSError):
                return False
            raise
        self.written += 1
        return True


def write_index(out_dir, rows=None) -> list[dict]:
    """Rebuild ``index.h5`` (external links to every run file) and ``catalog.csv`` (one row per
    run: id, status, file, config values, final risk) from the run files in ``out_dir``, and
    compact the cache of rows (``catalog.d``): write ``catalog.d/merged.jsonl``, absorbing the
    fragments that no writer appends to any more, and remove absorbed fragments (for one second
    at most; the next calls remove the rest, readers skip them meanwhile).

    Written under temporary names and renamed, so a reader never sees a half-written index;
    concurrent callers each write a complete view of what was there. The rows come from
    :func:`catalog_rows` (run files not in the cache are opened), so the cost is that of
    :func:`catalog_rows` plus writing the three files, linear in the number of runs.

    Parameters
    ----------
    out_dir : str or path-like
        An output directory of ``meanfield run``; ``index.h5`` and ``catalog.csv`` are
        (re)written there, and abandoned temporary files removed first.
    rows : list of dict, optional
        Rows to write as they are (the cache is then not compacted); default:
        :func:`catalog_rows` of ``out_dir``.

    Returns
    -------
    list of dict
        The rows written (:func:`catalog_rows`).
    """
    out_dir = os.fspath(out_dir)
    remove_abandoned(out_dir)
    remove_abandoned(os.path.join(out_dir, CATALOG_DIR))
    lines, absorbed = None, ()
    if rows is None:
        rows, lines, absorbed = _merge(out_dir)
    try:
        _write_index_files(out_dir, rows)
        if lines is not None and (lines or absorbed or os.path.isdir(os.path.join(out_dir, CATALOG_DIR))):
            _compact(out_dir, lines, absorbed)
    except OSError as error:
        if error.filename is None and error.errno is not None:  # h5py's and write()'s errors name no file
            raise OSError(error.errno, f"{os.strerror(error.errno)} (writing the index of {out_dir})",
                          os.path.join(out_dir, INDEX_NAME)) from None
        raise
    return rows


def _compact(out_dir, lines, absorbed) -> None:
    """Replace ``catalog.d/merged.jsonl`` with the names of the ``absorbed`` fragments and
    ``lines``, then remove absorbed fragments for at most ``REMOVAL_BUDGET_S``: a removal is a
    metadata operation (2.5 ms on a disk mounted with online discard, a server round trip on
    NFS or Lustre), and the fragments of an array of 10^4 one-run tasks are 10^4 files; those
    left are skipped by readers (listed as absorbed) and removed by the next compactions."""
    directory = os.path.join(out_dir, CATALOG_DIR)
    os.makedirs(directory, exist_ok=True)
    with replacing(os.path.join(directory, MERGED_NAME)) as tmp:
        with open(tmp, "wb") as handle:
            handle.write((json.dumps({"absorbed": absorbed}) + "\n").encode())
            handle.writelines(lines)
    deadline = time.monotonic() + REMOVAL_BUDGET_S
    for name in absorbed:
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))


def _write_index_files(out_dir, rows) -> None:
    with replacing(os.path.join(out_dir, INDEX_NAME)) as index_tmp:
        with h5py.File(index_tmp, "w") as f:
            for row in rows:
                f[row["id"]] = h5py.ExternalLink(row["file"], "/")
        _fault("index-written")
    with replacing(os.path.join(out_dir, "catalog.csv")) as catalog_tmp:
        with open(catalog_tmp, "w", newline="") as handle:
            write_catalog_csv(handle, rows)


def write_catalog_csv(handle, rows) -> None:
    """Write catalog rows as ``catalog.csv`` holds them: a header of every key (in the order
    first seen), then one line per row.

    Parameters
    ----------
    handle : text file
        Opened with ``newline=""`` (or a :class:`io.StringIO`).
    rows : list of dict
        :func:`catalog_rows`.
    """
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
