"""What a shard's bookkeeping costs: a Slurm array of ``--runs`` one-run-file tasks, cut into
``--shards`` shards (``run_shard(..., task_index=i, task_count=K)``), into one directory.

    python benchmarks/bookkeeping.py                       # 10^4 runs in 100 shards
    python benchmarks/bookkeeping.py --runs 2000 --shards 20
    python benchmarks/bookkeeping.py --write               # also benchmarks/BOOKKEEPING_RESULTS.md

Bookkeeping is what ``meanfield.sweep.run_shard`` does to the directory besides executing runs:
removing abandoned temporary files (``remove_abandoned``), appending each run's catalog row to
the shard's fragment (``CatalogFragment.add``, ``.close``: ``catalog.d/``), and (a whole
experiment, or the old behaviour) rewriting ``index.h5`` and ``catalog.csv`` (``write_index``).
It is the time spent in those calls, timed around each. The rest of ``run_shard`` besides the
runs (choosing the shard's runs from the plan, the summaries) is reported too ("other").

The runs are not integrated: ``sweep.execute`` is replaced by a stand-in that writes the run's
file the cheap way, a copy of one real finished run file (m = 2, d = 2, 2 records, no
particles, made once by ``run_shard``) with the run's own ``run_id``, ``config`` and
``config_sha256`` stamped in, renamed to ``<id>.h5`` as a run's finish does, and returns the
run's summary. The run ids are those of the experiment's plan (``run.seed = 0 .. runs-1``), so
the directory is what a real array leaves, to the bookkeeping: every row is read from a real
run file of the real layout (about 96 kB, mostly HDF5 metadata). Where ``run_shard`` groups runs
that differ only in their seed into ensembles, ``ensemble_size=1`` keeps every run alone (one run
per array task, each through ``execute``).

Reported:

- new: the total bookkeeping of the shards, finishing in task order and in a shuffled order
  (each into a fresh directory), against ``shards`` x the bookkeeping of one shard into an empty
  directory (the target: within 2x);
- old: what each shard did before (``write_index`` rebuilt from every run file of the
  directory, as ``catalog_rows`` did by opening each of them), measured on the same directory
  after some of the shards and extrapolated to the others with a least-squares line in the
  number of run files (said so in the output; ``--old-every 1`` measures after every shard);
- one merge at the end: ``catalog_rows`` from the fragments, ``meanfield status`` (which
  compacts: ``write_index``), ``catalog_rows`` from the compacted cache, and ``catalog_rows`` by
  opening every file (the old merge).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io as text_io
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

from meanfield import io, sweep
from meanfield.cli import main as cli_main
from meanfield.io import _catalog

EXPERIMENT = """[model]
d = 2
m = 2
activation = "relu"
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 1
[dynamics]
integrator = "gradient_descent"
step = 0.5
t_max = 1.0
[record]
times = 2
particles = false
[sweep]
"run.seed" = {seeds}
"""
HERE = os.path.dirname(os.path.abspath(__file__))


class Timer:
    """Wraps functions and sums the seconds spent in them, in all and by name."""

    def __init__(self):
        self.seconds = 0.0
        self.parts = {}

    def wrap(self, function, name):
        self.parts[name] = 0.0

        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                self.seconds += seconds
                self.parts[name] += seconds
        return timed_call


BOOKKEEPING = Timer()


def instrument() -> None:
    """Time what run_shard calls for its bookkeeping (the names it looks up at each call)."""
    sweep.remove_abandoned = BOOKKEEPING.wrap(sweep.remove_abandoned, "remove_abandoned")
    sweep.write_index = BOOKKEEPING.wrap(sweep.write_index, "write_index")
    io.CatalogFragment.add = BOOKKEEPING.wrap(io.CatalogFragment.add, "fragment lines (CatalogFragment.add)")
    io.CatalogFragment.close = BOOKKEEPING.wrap(io.CatalogFragment.close, "CatalogFragment.close")


class StandIn:
    """``sweep.execute`` replaced: the run's file is a stamped copy of ``template``; the time
    spent here (the "run") is summed in ``seconds``."""

    def __init__(self, template):
        self.template = template
        self.seconds = 0.0

    def __call__(self, spec, out_dir, restart=False, step_bar=False):
        start = time.perf_counter()
        final = os.path.join(out_dir, f"{spec.id}.h5")
        part = final + ".part"
        shutil.copyfile(self.template, part)
        with h5py.File(part, "r+") as f:
            f.attrs["run_id"], f.attrs["config"], f.attrs["config_sha256"] = spec.id, spec.config_json, spec.sha256
            risk, t = float(f["observables/risk/value"][-1]), float(f["observables/risk/time"][-1])
        os.replace(part, final)
        self.seconds += time.perf_counter() - start
        return sweep._summary(spec, "complete", final, risk, t, "", time.perf_counter() - start)


ALONE = {"ensemble_size": 1} if "ensemble_size" in inspect.signature(sweep.run_shard).parameters else {}
OTHER = []  # seconds of each run_shard call that are neither runs nor bookkeeping


def shard_bookkeeping(stand_in, path, out, specs, task_index, task_count) -> float:
    """Bookkeeping seconds of one ``run_shard`` call."""
    runs, before = stand_in.seconds, BOOKKEEPING.seconds
    start = time.perf_counter()
    summaries = sweep.run_shard(path, out, task_index=task_index, task_count=task_count, specs=specs, **ALONE)
    total = time.perf_counter() - start
    assert summaries and all(s["status"] == "complete" for s in summaries)
    bookkeeping = BOOKKEEPING.seconds - before
    OTHER.append(total - (stand_in.seconds - runs) - bookkeeping)
    return bookkeeping


def old_write_index(out) -> float:
    """Seconds of the old end of ``run_shard``: ``write_index`` with the rows of every run file
    read from the file (the old ``catalog_rows`` loop, now ``io.catalog_row``)."""
    start = time.perf_counter()
    io.remove_abandoned(out)
    rows = []
    names = io.run_file_names(out)
    finished = {name for name in names if name.endswith(".h5")}
    for name in names:
        if name.endswith(".part") and name[: -len(".part")] in finished:
            continue
        row = io.catalog_row(os.path.join(out, name))
        if row is not None:
            rows.append(row)
    _catalog._write_index_files(out, rows)
    return time.perf_counter() - start


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def empty_shard(stand_in, path, specs, root, task, shards) -> float:
    """Bookkeeping seconds of one shard into an empty directory (removed after)."""
    empty = tempfile.mkdtemp(prefix="empty-", dir=root)
    try:
        return shard_bookkeeping(stand_in, path, empty, specs, task, shards)
    finally:
        shutil.rmtree(empty)


def array(stand_in, path, specs, out, shards, order, old_at, probes, probe_every) -> dict:
    """Every shard into ``out`` in ``order``; the old bookkeeping measured after the shards
    counted in ``old_at`` (numbers of shards done); every ``probe_every`` shards, one shard
    into an empty directory appended to ``probes`` (the unit, measured under the same load)."""
    new, old, parts = [], {}, dict.fromkeys(BOOKKEEPING.parts, 0.0)
    root = os.path.dirname(out)
    for done, task in enumerate(order, start=1):
        before = dict(BOOKKEEPING.parts)
        new.append(shard_bookkeeping(stand_in, path, out, specs, task, shards))
        for name in parts:
            parts[name] += BOOKKEEPING.parts[name] - before[name]
        if done % probe_every == 0:
            probes.append(empty_shard(stand_in, path, specs, root, task, shards))
        if done in old_at:
            files = len(io.run_file_names(out))
            old[files] = old_write_index(out)
            os.remove(os.path.join(out, "index.h5"))  # what the old shards left: not read by the new code
            os.remove(os.path.join(out, "catalog.csv"))
    return {"new": new, "old": old, "parts": parts}


def old_total(old: dict, sizes) -> tuple[float, str]:
    """The old bookkeeping summed over shards that left ``sizes`` run files, from the
    measurements ``old`` ({files: seconds}): measured where there, else the fitted line."""
    measured = {n: s for n, s in old.items()}
    if all(n in measured for n in sizes):
        return sum(measured[n] for n in sizes), "measured after every shard"
    n = np.array(sorted(measured), dtype=float)
    s = np.array([measured[int(k)] for k in n])
    slope, intercept = np.polyfit(n, s, 1)
    total = sum(measured.get(k, intercept + slope * k) for k in sizes)
    how = (f"measured after {len(measured)} of the {len(sizes)} shards (at {', '.join(str(int(k)) for k in n)} "
           f"run files), the others from the fitted line {intercept * 1e3:.1f} ms + {slope * 1e6:.1f} us x files")
    return total, how


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return f"{socket.gethostname()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, " \
           f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--old-every", type=int, default=0,
                        help="measure the old bookkeeping after every Nth shard (default: 7 points, extrapolated)")
    parser.add_argument("--dir", default=None, help="where to write the run files (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffled order")
    parser.add_argument("--write", action="store_true", help="write benchmarks/BOOKKEEPING_RESULTS.md")
    parser.add_argument("--append", action="store_true", help="add a section to benchmarks/BOOKKEEPING_RESULTS.md")
    args = parser.parse_args(argv)
    runs, shards = args.runs, args.shards
    if shards < 1 or runs < shards:
        parser.error("need 1 <= --shards <= --runs")
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    root = tempfile.mkdtemp(prefix="bookkeeping-", dir=args.dir)
    try:
        path = os.path.join(root, "array.toml")
        with open(path, "w") as handle:
            handle.write(EXPERIMENT.format(seeds=list(range(runs))))
        seconds, specs = timed(sweep.plan, path)
        say(f"{runs} runs in {shards} shards ({runs // shards} runs a shard); plan {seconds:.1f} s")
        template_dir = os.path.join(root, "template")
        (template,) = [s["path"] for s in sweep.run_shard(path, template_dir, specs=specs[:1])]
        stand_in = StandIn(template)
        sweep.execute = stand_in  # run_shard calls sweep.execute: the runs are stamped copies
        instrument()

        # One shard into an empty directory: the unit. Measured 3 times here, and again every
        # tenth of each array below (the machine's load may change): the median of them all.
        probes = [empty_shard(stand_in, path, specs, root, i % shards, shards) for i in range(3)]
        probe_every = max(1, shards // 10)

        if args.old_every:
            old_at = set(range(args.old_every, shards + 1, args.old_every)) | {shards}
        else:
            old_at = {k for k in (1, 2, 5, 10, 20, 50, 100, shards) if k <= shards}
            old_at |= {max(1, round(shards * f)) for f in (0.01, 0.1, 0.25, 0.5, 1.0)}
        results = {}
        for label, order in (("in order", list(range(shards))),
                             ("shuffled", random.Random(args.seed).sample(range(shards), shards))):
            out = os.path.join(root, label.replace(" ", "-"))
            result = array(stand_in, path, specs, out, shards, order, old_at if label == "in order" else set(),
                           probes, probe_every)
            results[label] = (out, result, np.array(result["new"]) * 1e3)  # per shard, ms
        unit = float(np.median(probes))
        say(f"one shard into an empty directory: bookkeeping {unit * 1e3:.1f} ms "
            f"({unit / (runs // shards) * 1e3:.2f} ms a run), the median of {len(probes)} (3 first, then one every "
            f"{probe_every} shards of the arrays below; from {min(probes) * 1e3:.1f} to {max(probes) * 1e3:.1f} ms)")
        for label, (out, result, per) in results.items():
            total = per.sum() / 1e3
            say(f"{label}: {shards} shards, bookkeeping {total:.2f} s in all = {total / (shards * unit):.2f} x "
                f"{shards} x one shard into an empty directory; per shard {per.min():.1f} ms (min) "
                f"{np.median(per):.1f} ms (median) {per.max():.1f} ms (max), first 10 shards {per[:10].mean():.1f} ms, "
                f"last 10 {per[-10:].mean():.1f} ms on average; in all: "
                + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result["parts"].items()))
            if label != "in order":
                shutil.rmtree(out)

        say(f"other (run_shard besides its runs and the bookkeeping: picking the shard's runs from the plan of "
            f"{runs}, the summaries): median {np.median(OTHER) * 1e3:.1f} ms a shard")
        out, result, _ = results["in order"]
        sizes = [runs // shards * k + min(k, runs % shards) for k in range(1, shards + 1)]
        total_old, how = old_total(result["old"], sizes)
        total_new = sum(result["new"])
        say(f"old behaviour (each shard rebuilds index.h5 and catalog.csv from every run file), same directory: "
            f"{total_old:.1f} s in all = {total_old / total_new:.0f} x the new; the last shard alone "
            f"{result['old'][max(result['old'])]:.2f} s at {max(result['old'])} run files; {how}")

        # The merge, at the end.
        seconds, rows = timed(io.catalog_rows, out)
        assert len(rows) == runs
        fragments = len(os.listdir(os.path.join(out, _catalog.CATALOG_DIR)))
        say(f"merge at {runs} runs: catalog_rows from {fragments} fragments {seconds:.2f} s")
        with contextlib.redirect_stdout(text_io.StringIO()):
            seconds, code = timed(cli_main, ["status", out])
        assert code == 0
        left = len(os.listdir(os.path.join(out, _catalog.CATALOG_DIR))) - 1
        say(f"meanfield status (in process; merges, compacts, writes index.h5, catalog.csv, catalog.d/merged.jsonl, "
            f"removes absorbed fragments for {_catalog.REMOVAL_BUDGET_S:g} s at most, prints the table) "
            f"{seconds:.2f} s; {left} fragments left (absorbed: skipped by readers)")
        with contextlib.redirect_stdout(text_io.StringIO()):
            seconds, code = timed(cli_main, ["status", out])
        left = len(os.listdir(os.path.join(out, _catalog.CATALOG_DIR))) - 1
        say(f"meanfield status again {seconds:.2f} s; {left} fragments left")
        seconds, again = timed(io.catalog_rows, out)
        assert len(again) == runs
        say(f"catalog_rows from the compacted catalog.d/merged.jsonl {seconds:.2f} s")
        seconds, _ = timed(io.write_index, out)
        say(f"write_index (what `meanfield run` without shards does at its end) {seconds:.2f} s")
        shutil.move(os.path.join(out, _catalog.CATALOG_DIR), os.path.join(root, "cache-aside"))
        seconds, opened = timed(io.catalog_rows, out)
        assert json.dumps(opened) == json.dumps(rows) == json.dumps(again)  # the same rows, whichever way
        say(f"catalog_rows opening every run file (the old merge: status, report, open_sweep) {seconds:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if args.write or args.append:
        command = "python benchmarks/bookkeeping.py " + " ".join(argv if argv is not None else sys.argv[1:])
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=HERE).stdout.strip()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        section = (f"## {runs} runs in {shards} shards\n\n"
                   f"`{command.strip()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
                   f"{revision or '?'} (plus the working tree), on {machine()}; load average {load:.1f} at the end "
                   f"(other jobs shared the machine).\n\n```\n" + "\n".join(lines) + "\n```\n")
        target = os.path.join(HERE, "BOOKKEEPING_RESULTS.md")
        if args.append and os.path.exists(target):
            with open(target, "a") as handle:
                handle.write("\n" + section)
        else:
            with open(target, "w") as handle:
                handle.write("# Bookkeeping of a sharded sweep\n\nWhat is measured and how: the docstring of "
                             "benchmarks/bookkeeping.py; what it means: docs/experiments.md (\"Bookkeeping of a "
                             "sweep\"). Each section is one command's output.\n\n" + section)
        print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
