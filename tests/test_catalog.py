"""The catalog of an output directory with the shards' fragments (catalog.d/): the same rows
as opening every run file, whatever the fragments hold (truncated, stale, missing), and a
shard's bookkeeping that reads no other run file.

Runs are tiny (m = 4, d = 3, a few steps, no particles) so that every test takes about a second,
except the concurrent-shards one (four processes, a few seconds).
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import pytest
from test_sweep import toml_text

from meanfield import io, sweep
from meanfield.cli import main
from meanfield.io import _catalog
from meanfield.io._store import updating

# The diverging runs overflow on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")

TINY = {
    "model": {"d": 3, "m": 4, "activation": "relu"},
    "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
    "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 2.0},
    "record": {"times": 3, "particles": False},
    "sweep": {"model.m": [4, 5, 6, 7]},  # not seeds: runs that differ in the seed alone may share a shard
}
# A step far too large: the particles blow up at the 6th step, the run ends "diverged".
DIVERGING = {**TINY, "dynamics": {"integrator": "gradient_descent", "step": 50.0, "t_max": 500.0},
             "sweep": {"model.m": [4, 5]}}


def _write(tmp_path, doc, name):
    path = tmp_path / name
    path.write_text(toml_text(doc))
    return path


def _same(a, b):
    """Rows equal value for value, key order included (NaN equal to NaN: compared as JSON)."""
    return json.dumps(a) == json.dumps(b)


def _rows_from_the_files(out):
    """catalog_rows as it was before the cache: every run file opened (the cache moved away)."""
    cache = out / _catalog.CATALOG_DIR
    aside = out.parent / "cache-aside"
    if cache.exists():
        shutil.move(cache, aside)
    try:
        return io.catalog_rows(out)
    finally:
        if aside.exists():
            shutil.move(aside, cache)


@pytest.fixture
def opened(monkeypatch):
    """The names of the run files that catalog_rows opens (those not taken from the cache)."""
    names = []
    real = _catalog.catalog_row

    def counting(path):
        names.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(_catalog, "catalog_row", counting)
    return names


def _sharded_sweep(tmp_path):
    """TINY and DIVERGING (two files into one directory), each in two shards: four fragments,
    no catalog.csv."""
    out = tmp_path / "out"
    statuses = []
    for doc, name in ((TINY, "tiny.toml"), (DIVERGING, "diverging.toml")):
        for task in range(2):
            statuses += [s["status"] for s in sweep.run_shard(_write(tmp_path, doc, name), out, task_index=task,
                                                               task_count=2)]
    assert sorted(statuses) == ["complete"] * 4 + ["diverged"] * 2
    return out


def _fragments(out):
    return sorted(p for p in (out / _catalog.CATALOG_DIR).glob("*.jsonl") if p.name != _catalog.MERGED_NAME)


def test_rows_from_fragments_equal_rows_from_the_files(tmp_path, opened):
    """Finished, diverged, interrupted (.part) and corrupt files: the merged catalog is the one
    of opening every file, row for row; only the files no fragment covers are opened."""
    out = _sharded_sweep(tmp_path)
    assert not (out / "catalog.csv").exists() and not (out / "index.h5").exists()  # shards of several
    assert len(_fragments(out)) == 4
    # an interrupted run (a .part no process holds) and two unreadable files
    source = sorted(out.glob("*.h5"))[0]
    shutil.copy(source, out / "0123456789abcdef.h5.part")
    with h5py.File(out / "0123456789abcdef.h5.part", "r+") as f:
        f.attrs["status"], f.attrs["run_id"] = "running", "0123456789abcdef"
    (out / "fedcba9876543210.h5").write_bytes(b"not an HDF5 file at all")
    (out / "00000000deadbeef.h5").write_bytes(source.read_bytes()[:5000])
    opened.clear()
    rows = io.catalog_rows(out)
    statuses = sorted(row["status"] for row in rows)
    assert statuses == ["complete"] * 4 + ["corrupt"] * 2 + ["diverged"] * 2 + ["interrupted"], statuses
    assert sorted(opened) == sorted(["0123456789abcdef.h5.part", "fedcba9876543210.h5", "00000000deadbeef.h5"])
    reference = _rows_from_the_files(out)
    assert len(opened) == 3 + len(rows)  # the reference opened every file
    assert _same(rows, reference)


def test_concurrent_shards_each_run_listed_once(tmp_path, capsys):
    """Four shards started at once as processes (a Slurm array on one node): each writes its own
    fragment and no index; then status and catalog_rows list every planned run once, complete,
    with the values of the files."""
    doc = {**TINY, "sweep": {"model.m": list(range(3, 11))}}
    path = _write(tmp_path, doc, "tiny.toml")
    out = tmp_path / "out"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    processes = [subprocess.Popen([sys.executable, "-m", "meanfield", "run", str(path), "--out", str(out), "--quiet",
                                   "--task-index", str(i), "--task-count", "4"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    assert not (out / "catalog.csv").exists() and not (out / "index.h5").exists()
    fragments = _fragments(out)
    assert len(fragments) == 4 and all(p.read_bytes().endswith(_catalog._CLOSED) for p in fragments)
    assert sum(p.read_text().count('"row"') for p in fragments) == 8
    planned = {spec.id for spec in sweep.plan(path)}
    rows = io.catalog_rows(out)
    assert sorted(row["id"] for row in rows) == sorted(planned)
    assert {row["status"] for row in rows} == {"complete"}
    assert _same(rows, _rows_from_the_files(out))
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "", printed.err
    listed = [line.split() for line in printed.out.splitlines()[1:] if line.strip()]
    assert sorted(line[0] for line in listed) == sorted(planned) and {line[1] for line in listed} == {"complete"}
    # status compacted: catalog.csv and index.h5 written, the closed fragments merged and removed
    assert len((out / "catalog.csv").read_text().splitlines()) == 9
    with h5py.File(out / "index.h5", "r") as index:
        assert set(index) == planned
    assert _fragments(out) == [] and (out / _catalog.CATALOG_DIR / _catalog.MERGED_NAME).exists()
    assert _same(io.catalog_rows(out), rows)


def test_a_fragment_cut_mid_line_is_ignored(tmp_path, opened):
    """A writer killed in the middle of a line (and before its closing line): the lines before
    it are used, the cut one is ignored (its run read from the file), and the fragment is kept
    while its writer may still append."""
    out = _sharded_sweep(tmp_path)
    fragment = next(p for p in _fragments(out) if p.read_bytes().count(b"\n") == 3)  # a shard of TINY: 2 runs
    lines = fragment.read_bytes().splitlines(keepends=True)
    assert lines[-1] == _catalog._CLOSED
    cut = json.loads(lines[1])["file"]
    fragment.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    opened.clear()
    rows = io.catalog_rows(out)
    assert opened == [cut]
    assert _same(rows, _rows_from_the_files(out))
    io.write_index(out)  # its writer (this process) is alive and it is not closed: kept
    assert fragment.exists()
    opened.clear()
    assert _same(io.catalog_rows(out), rows) and opened == []  # the compacted catalog covers the run


def test_a_row_made_before_the_file_changed_is_not_used(tmp_path, opened):
    """A run file replaced after its row was cached (a resumed run finishing, a stage updating
    it): the cached row is stale and the file is read again."""
    out = _sharded_sweep(tmp_path)
    name = json.loads(_fragments(out)[0].read_bytes().splitlines()[0])["file"]
    for seed, cache in ((100, "a fragment"), (200, "merged.jsonl")):
        with updating(out / name) as f:
            f.attrs["status"] = "diverged"
            f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), "run": {"seed": seed}})
        opened.clear()
        rows = io.catalog_rows(out)
        assert opened == [name], cache
        (row,) = [row for row in rows if row["file"] == name]
        assert row["status"] == "diverged" and row["run.seed"] == seed
        assert _same(rows, _rows_from_the_files(out))
        io.write_index(out)  # the fragments merged (and removed): the row cached in merged.jsonl
        assert _fragments(out) == []


def test_fragments_absorbed_by_a_compaction_are_not_read_again(tmp_path, monkeypatch, opened):
    """write_index absorbs the closed fragments into merged.jsonl; those it had no time to
    remove are skipped by readers (a row forged in one is never used), and a later
    write_index removes them."""
    out = _sharded_sweep(tmp_path)
    monkeypatch.setattr(_catalog, "REMOVAL_BUDGET_S", -1.0)  # no time to remove any
    io.write_index(out)
    fragments = _fragments(out)
    assert len(fragments) == 4
    for fragment in fragments:  # each row made wrong, its stat key left valid
        entries = [json.loads(line) for line in fragment.read_bytes().splitlines()]
        for entry in entries:
            if "row" in entry:
                entry["row"]["final_risk"] = 123.0
        fragment.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    opened.clear()
    rows = io.catalog_rows(out)
    assert opened == [] and 123.0 not in [row["final_risk"] for row in rows]
    assert _same(rows, _rows_from_the_files(out))
    monkeypatch.setattr(_catalog, "REMOVAL_BUDGET_S", 1.0)
    io.write_index(out)
    assert _fragments(out) == []


def test_a_full_disk_while_writing_a_fragment_loses_no_run(tmp_path, monkeypatch):
    """The fragment is a cache: an error writing it (ENOSPC) stops its lines, the shard's runs
    complete, and their rows come from the files."""
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_catalog.os, "write", full)
    path = _write(tmp_path, TINY, "tiny.toml")
    summaries = sweep.run_shard(path, tmp_path / "out", task_index=0, task_count=2)
    monkeypatch.undo()
    assert [s["status"] for s in summaries] == ["complete", "complete"]
    rows = io.catalog_rows(tmp_path / "out")
    assert sorted(row["id"] for row in rows) == sorted(s["id"] for s in summaries)


def test_a_pool_shard_writes_its_rows_too(tmp_path, opened):
    """With --jobs 2 the parent writes the rows of the runs its workers finish."""
    path = _write(tmp_path, TINY, "tiny.toml")
    out = tmp_path / "out"
    summaries = sweep.run_shard(path, out, task_index=1, task_count=2, jobs=2)
    assert len(summaries) == 2
    opened.clear()
    rows = io.catalog_rows(out)
    assert opened == [] and sorted(row["id"] for row in rows) == sorted(s["id"] for s in summaries)


def test_open_sweep_merges_in_memory_and_writes_nothing(tmp_path):
    """open_sweep of a directory whose shards wrote no catalog.csv: the catalog merged in
    memory, the same frame as the catalog.csv that write_index then writes; nothing written."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("xarray")
    from meanfield import analysis

    out = _sharded_sweep(tmp_path)
    before = sorted(os.listdir(out)), sorted(os.listdir(out / _catalog.CATALOG_DIR))
    merged = analysis.open_sweep(out).catalog
    assert (sorted(os.listdir(out)), sorted(os.listdir(out / _catalog.CATALOG_DIR))) == before
    assert len(merged) == 6
    written = analysis.open_sweep(out, refresh=True).catalog
    assert (out / "catalog.csv").exists()
    pd.testing.assert_frame_equal(merged, written)
    pd.testing.assert_frame_equal(analysis.open_sweep(out).catalog, written)  # up to date: read
