"""Command line: ``meanfield run FILE.toml``, ``meanfield status DIR``, ``meanfield info``.

Bad input (an experiment file, an option) is reported as one line naming the file, the key
and what is allowed, with exit status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import numpy as np

from ._version import __version__

USAGE_ERROR = 2


def _out_dir(args) -> str:
    """The output directory, refused (ConfigError) when it cannot be created or written;
    nothing is written here."""
    from .experiments._config import ConfigError

    if args.out is not None:
        out, named = args.out, f"--out {args.out}"
    else:
        out = os.path.join("out", os.path.splitext(os.path.basename(args.file))[0])
        named = f"output directory {out} (the default; choose another with --out)"
    if not out:
        raise ConfigError(f"{named}: an empty path")
    # The directory, or its nearest existing ancestor, must be a writable directory.
    # os.access reports a read-only mount even to root (EROFS), whom permission bits do not stop.
    target, missing = os.path.abspath(out), []
    while not os.path.exists(target):
        if os.path.lexists(target):
            raise ConfigError(f"{named}: {target} is a broken symbolic link")
        target, name = os.path.split(target)
        missing.append(name)
    where = "cannot be created: " if missing else ""
    if not os.path.isdir(target):
        raise ConfigError(f"{named}: {where}{target} is not a directory" if missing else
                          f"{named}: exists and is not a directory")
    name_max = os.pathconf(target, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    too_long = [name for name in missing if len(os.fsencode(name)) > name_max]
    if too_long:
        raise ConfigError(f"{named}: {where}the name {too_long[0][:40]}... is longer than {name_max} bytes")
    if not os.access(target, os.W_OK | os.X_OK | (0 if missing else os.R_OK)):
        read_only = hasattr(os, "statvfs") and os.statvfs(target).f_flag & os.ST_RDONLY
        reason = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise ConfigError(f"{named}: {where}{target if missing else 'the directory'} {reason}")
    return out


def run_command(args) -> int:
    from . import report, sweep
    from .experiments._config import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {args.jobs}")
    if args.task_count < 1:
        raise ConfigError(f"--task-count must be an integer >= 1, got {args.task_count}")
    if args.ensemble_size is not None and args.ensemble_size < 1:
        raise ConfigError(f"--ensemble-size must be an integer >= 1, got {args.ensemble_size}")
    from . import experiments

    if experiments.experiment_kind(args.file) is not None:  # signal propagation, deep linear
        _out_dir(args)  # a bad --out is refused before the experiment writes anything
        return experiments.run_command(args)
    if getattr(args, "backend", None):
        args.set = [*args.set, f'run.backend="{args.backend}"']
    notes = []
    specs = sweep.plan(args.file, args.set, notes)  # validates everything before any output exists
    for note in notes:  # a --set that replaced a sweep list is never silent, even with --quiet
        print(f"meanfield run: {args.file}: {note}", file=sys.stderr, flush=True)
    from .experiments import _memory

    # Runs that cannot fit in memory are refused here, before the output directory exists.
    mine = specs if args.slurm else [s for s in specs if s.index % args.task_count == args.task_index]
    _memory.check(mine, _memory.parse_size(getattr(args, "max_memory", None)), jobs=1 if args.slurm else args.jobs)
    out = _out_dir(args)
    if args.slurm:
        from .experiments._slurm import submit

        if args.jobs != 1 or args.task_count != 1 or args.task_index != 0:
            raise ConfigError("--slurm makes one array task per ensemble or run: --jobs, --task-index and --task-count "
                              "do not apply (use --slurm-tasks and --slurm-cpus-per-task)")
        try:
            return submit(args.file, out, overrides=args.set, task_count=args.slurm_tasks,
                          partition=args.slurm_partition, cpus_per_task=args.slurm_cpus_per_task,
                          time_min=args.slurm_time, array_parallelism=args.slurm_array_parallelism,
                          wait=args.wait, restart=args.restart)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(str(error)) from None
    size = sweep.ENSEMBLE_SIZE if args.ensemble_size is None else args.ensemble_size
    shard = [s for unit in sweep.shard_units(specs, args.task_index, args.task_count, size) for s in unit]
    if not args.quiet:
        where = f" (shard {args.task_index} of {args.task_count})" if args.task_count > 1 else ""
        print(f"meanfield {__version__}: {len(shard)} run{'s' if len(shard) != 1 else ''} of {args.file}{where} "
              f"-> {out}/", flush=True)
    summaries = sweep.run_shard(args.file, out, args.set, args.task_index, args.task_count, args.jobs,
                                quiet=args.quiet, restart=args.restart, specs=specs, ensemble_size=size)
    bad = [s for s in summaries if s["status"] in ("failed", "locked")]
    reasons = [f"{s['id']} {s['status']}: {s['message'].splitlines()[0] if s['message'] else ''}" for s in bad]
    if args.quiet:  # a failure is never silent: a batch job's log must say why it exits 1
        for reason in reasons:
            print(f"meanfield: run {reason}", file=sys.stderr, flush=True)
    from .experiments._stages import STAGES

    # The post-run stages the file asks for measure what is missing even when quiet. Their
    # reports read the whole directory: a shard of several leaves them to `meanfield report`
    # (made by every shard they would cost the square of the sweep), and a quiet run makes
    # only those that write figures.
    stage_reports = []
    for stage in STAGES.values():
        if stage.wanted(specs):
            report_too = args.task_count == 1 and (stage.figures or not args.quiet)
            progress, lines = stage.run(out, args.jobs, 4, report_too)
            stage_reports += lines
            for line in progress if not args.quiet else ():
                print(line)
    if not args.quiet:
        counts = {}
        for s in summaries:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        print("runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        for reason in reasons:
            print(f"  {reason}")
        for line in stage_reports:
            print(line)
        curves = report.risk_curves(summaries)
        if curves:
            print(report.risk_table(curves))
            _risk_plot(out)
        print(f"files: {out}/ (index.h5, catalog.csv, one .h5 per run)" if args.task_count == 1 else
              f"files: {out}/ (one .h5 per run; 'meanfield status {out}' merges the shards' catalogs)")
    return 1 if bad else 0


def _risk_plot(out) -> None:
    """``<out>/risk.png``: the figure of the directory, every finished run in it, one curve per
    combination of the keys that vary across it (mean over run.seed), whichever files and
    --set wrote them; so it never shows one sweep's runs in place of another's."""
    from . import report
    from .experiments import _summaries as summaries_

    summaries, keys = summaries_.directory_summaries(out)
    curves = report.risk_curves(summaries)
    if not curves:
        return
    png = report.plot_risk(curves, os.path.join(out, "risk.png"))
    if png is None:
        print("plot: install 'meanfield[analysis]' (matplotlib) for risk.png")
        return
    finished = sum(s["status"] in summaries_.FINISHED for s in summaries)
    names = summaries_.short_names(k for k in keys if k not in summaries_.GROUP_EXCLUDE)
    by = f", a curve per {', '.join(names.values())}" if names else ""
    print(f"plot: {png} (every finished run in {out}: {finished} run{'s' if finished != 1 else ''}{by})")


def report_command(args) -> int:
    from . import report
    from .experiments._config import ConfigError

    if not os.path.isdir(args.dir):
        raise ConfigError(f"{args.dir}: no such directory")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {args.jobs}")
    from . import experiments, io
    from .experiments import _summaries as summaries_

    rows = io.catalog_rows(args.dir)
    for row in rows:  # damaged files are named once, and left out below
        if row["status"] == "corrupt":
            print(f"meanfield report: {os.path.join(args.dir, row['file'])}: {row['message']} (left out; "
                  "the next 'meanfield run' moves it aside and redoes the run)", file=sys.stderr)
    figures = experiments.report(args.dir)  # files of [experiment] kinds
    for path in figures:
        print(f"plot: {path}")
    # The risk summary of any sweep first (every run of the directory, grouped by the keys
    # that vary across it, mean ± standard error over run.seed), then what the stages add.
    summaries, _ = summaries_.directory_summaries(args.dir, rows)
    finished = [s for s in summaries if s["status"] in summaries_.FINISHED]
    if finished:
        print(f"risk at the end of the {len(finished)} finished run{'s' if len(finished) != 1 else ''} "
              f"in {args.dir}:")
        print(report.final_risk_table(summaries))
    from .experiments._stages import STAGES

    lines = []
    for stage in STAGES.values():
        if stage.present(args.dir):
            progress, report_lines = stage.run(args.dir, args.jobs, args.times)
            lines += progress + report_lines
    if not (figures or finished or lines):
        print(f"{args.dir}: no finished runs to report")
    for line in lines:
        print(line)
    return 0


def status_command(args) -> int:
    """The runs of a directory: id, status, the keys that vary across them, final time and
    risk; with ``--file`` (and its ``--set``), the runs of that experiment not started yet too."""
    import json

    from . import io, sweep
    from .experiments import _summaries as summaries_
    from .experiments._config import ConfigError

    specs = []
    if args.file is not None:
        from . import experiments

        if experiments.experiment_kind(args.file) is not None:
            raise ConfigError(f"{args.file}: an [experiment] file is one computation; --file lists the runs of "
                              "sweep files (meanfield run FILE runs it)")
        notes = []
        specs = sweep.plan(args.file, args.set, notes)  # bad input is refused before anything is read
        for note in notes:
            print(f"meanfield status: {args.file}: {note}", file=sys.stderr)
    elif args.set:
        raise ConfigError(f"--set {args.set[0]}: needs --file (the experiment whose runs it changes)")
    exists = os.path.isdir(args.dir)
    if not exists and (args.file is None or os.path.lexists(args.dir)):
        raise ConfigError(f"{args.dir}: no such directory")
    rows = []
    if exists:
        # write_index first removes what killed writers left (temporary and lock files), then
        # merges the shards' catalog fragments (io.catalog_rows) and writes the index from them.
        try:
            rows = io.write_index(args.dir)
        except OSError as error:  # a full disk or a read-only directory: the table is still shown
            print(f"meanfield status: index not rewritten ({error.strerror or error})", file=sys.stderr)
            rows = io.catalog_rows(args.dir)
    present = {row["id"] for row in rows}
    waiting = []
    for spec in specs:
        if spec.id not in present:
            row = {"id": spec.id, "status": "not started", "file": "", "final_risk": math.nan,
                   "final_time": math.nan}
            for section, values in json.loads(spec.config_json).items():
                for key, value in values.items():
                    row[f"{section}.{key}"] = value
            waiting.append(row)
    table = rows + waiting
    if not table:
        print(f"{args.dir}: no runs")
        return 0
    varying = summaries_.varying_keys(table) or [k for k in ("model.m", "run.seed") if k in table[0]]
    names = summaries_.short_names(varying)
    # Ordered by the varying values (numbers as numbers), corrupt rows (no config) last.
    table.sort(key=lambda row: (row["status"] == "corrupt",
                                tuple(summaries_.sort_key(row.get(k, summaries_.ABSENT)) for k in varying), row["id"]))
    cells = [[summaries_.cell_text(row.get(k, summaries_.ABSENT)) if row["status"] != "corrupt" else ""
              for k in varying]
             for row in table]
    widths = [max(len(names[k]), *(len(c[i]) for c in cells)) for i, k in enumerate(varying)]
    status_width = max(11, *(len(row["status"]) for row in table))
    print(f"{'id':<16}  {'status':<{status_width}}  " + "".join(f"{names[k]:>{w}}  " for k, w in zip(varying, widths))
          + f"{'t':>8}  {'risk':>11}")
    for row, values in zip(table, cells):
        risk, t = float(row["final_risk"]), float(row["final_time"])
        numbers = f"{t:>8.4g}  {risk:>11.4e}" if row["status"] != "not started" else f"{'':>8}  {'':>11}"
        print((f"{row['id']:<16}  {row['status']:<{status_width}}  "
               + "".join(f"{v:>{w}}  " for v, w in zip(values, widths)) + numbers).rstrip())
        if row["status"] == "corrupt":
            print(f"    {row['file']}: {row['message']} (the next 'meanfield run' moves it aside and redoes the run)")
    if specs:
        mine = {spec.id for spec in specs}
        counts = {}
        for row in table:
            if row["id"] in mine:
                counts[row["status"]] = counts.get(row["status"], 0) + 1
        print(f"{len(specs)} run{'s' if len(specs) != 1 else ''} of {args.file}: "
              + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def info(args) -> int:
    """Versions, threads and backends, for bug reports and cluster set-up."""
    import numba
    import scipy

    print(f"meanfield {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}")
    for name in ("ot", "h5py", "submitit", "matplotlib", "tqdm"):
        try:
            module = __import__(name)
            print(f"{'pot' if name == 'ot' else name} {module.__version__}")
        except ImportError:
            print(f"{name}: not installed")
    print(f"numba threads: {numba.get_num_threads()} (NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'unset')}), cpus: {os.cpu_count()}")
    print(f"numba cache dir: {os.environ.get('NUMBA_CACHE_DIR', 'next to the kernels (default)')}")
    print(f"HDF5_USE_FILE_LOCKING={os.environ.get('HDF5_USE_FILE_LOCKING', 'unset')}")
    from .engine._cuda import cuda_status

    usable, why = cuda_status()
    print(f"backends: cpu (available); cuda: {'usable, ' if usable else 'not usable: '}{why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meanfield", description="Mean-field simulations of two-layer networks.")
    parser.add_argument("--version", action="version", version=f"meanfield {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every run of an experiment file (one, or a sweep)")
    p.add_argument("file", help="experiment file (TOML), e.g. runs/quickstart.toml")
    p.add_argument("--out", help="output directory (default: out/<file name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set model.m=512 (repeatable; the value is read as TOML); a swept "
                        "key gets that one value (a note on stderr says so); --set 'sweep.\"model.m\"=[16, 32]' "
                        "replaces or adds a sweep list")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel on this machine (default 1)")
    p.add_argument("--ensemble-size", type=int, default=None, metavar="N",
                   help="runs that differ only in their seed advance together, N at most (default 128; "
                        "1: every run alone); each is still its own run file, with the same numbers")
    p.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their last checkpoint (the default)")
    p.add_argument("--restart", action="store_true", help="start unfinished runs over instead of resuming")
    p.add_argument("--task-index", type=int, default=0, help="shard to run (a Slurm array task), 0-based")
    p.add_argument("--task-count", type=int, default=1, help="number of shards")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--slurm", action="store_true", help="submit the runs as a Slurm job array (submitit)")
    p.add_argument("--slurm-tasks", type=int, help="array tasks (default: one per ensemble or lone run)")
    p.add_argument("--slurm-partition", help="Slurm partition")
    p.add_argument("--slurm-cpus-per-task", type=int, default=1, help="cpus per array task (default 1)")
    p.add_argument("--slurm-time", type=int, default=60, help="time limit per task, minutes (default 60)")
    p.add_argument("--slurm-array-parallelism", type=int, help="array tasks running at once")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the array and summarise")
    p.add_argument("--backend", choices=("cpu", "cuda"),
                   help="run on the CPU or the GPU (same as --set run.backend=...; default: the file's)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse runs whose estimated memory exceeds SIZE (e.g. 64G, 512M; inf: no check; "
                        "default: this machine's memory, or its cgroup limit)")
    p.set_defaults(func=run_command)
    r = sub.add_parser("report", help="distances to the limit and their rates across widths")
    r.add_argument("dir")
    r.add_argument("--times", type=int, default=4, help="recorded times to fit at (default 4)")
    r.add_argument("--jobs", type=int, default=1, help="members measured in parallel (default 1)")
    r.set_defaults(func=report_command)
    s = sub.add_parser("status", help="table of the runs in an output directory")
    s.add_argument("dir")
    s.add_argument("--file", metavar="FILE.toml",
                   help="also list the runs of this experiment file that are not started yet")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --file: the overrides the runs were started with (as for 'meanfield run')")
    s.set_defaults(func=status_command)
    from ._picture_cli import add_parsers as add_picture_parsers

    add_picture_parsers(sub)  # meanfield plot DIR, meanfield animate RUN.h5
    i = sub.add_parser("info", help="versions, threads, backends")
    i.set_defaults(func=info)
    return parser


def main(argv=None) -> int:
    from .experiments._config import ConfigError

    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resume", False) and getattr(args, "restart", False):
        print("meanfield run: --resume and --restart exclude each other", file=sys.stderr)
        return USAGE_ERROR
    from .engine import _interrupt

    _interrupt.reset()
    try:
        with _interrupt.handling():
            return args.func(args)
    except _interrupt.Interrupted as stop:
        runs = [s for s in getattr(stop, "summaries", []) if s["status"] == "interrupted"]
        what = f"{len(runs)} run{'s' if len(runs) != 1 else ''} interrupted, resumable" if runs else "nothing lost"
        print(f"meanfield {args.command}: stopped by {stop.name} ({what}; run the same command again to go on)",
              file=sys.stderr, flush=True)
        return stop.exit_status
    except ConfigError as error:
        print(f"meanfield {args.command}: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # the machine's, not the input's: disk full, permissions, a file held open
        print(f"meanfield {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
