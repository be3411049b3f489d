"""Post-run stages: what ``meanfield run`` and ``meanfield report`` do after the runs themselves.

Each stage is one entry of :data:`STAGES`: it finds in an output directory what it has to
measure (distances to the limit, lazy-training observables, the landscape census and mode
connectivity), measures what is missing into the run files, and returns the lines of its
report (tables and ``plot: <path>``). The command line runs the entries in order; it names
no stage. A new post-run analysis is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..engine._registry import Registry


@dataclass(frozen=True)
class PostRunStage:
    """One post-run stage.

    Attributes
    ----------
    name : str
    wanted : callable
        ``wanted(specs) -> bool``: whether the runs of an experiment file (``RunSpec`` list)
        ask for it (``meanfield run``).
    present : callable
        ``present(out_dir) -> bool``: whether a directory holds runs it reports on
        (``meanfield report``).
    run : callable
        ``run(out_dir, jobs, n_times, report) -> (progress, report)``: measures what is missing
        (with up to ``jobs`` processes) and, when ``report`` is true, writes its plots and
        makes its report; returns two lists of lines: progress (what it measured) and its
        report (empty when ``report`` is false).
    figures : bool
        Whether its report writes figures (a quiet ``meanfield run`` still makes those; a
        report of text alone is made only to be printed).
    """

    name: str
    wanted: Callable
    present: Callable
    run: Callable
    figures: bool = True


STAGES = Registry("post-run stage")  # run in the order of registration
register_stage = STAGES.register


def _plots(paths) -> list[str]:
    return [f"plot: {path}" for path in paths]


def _limit(out_dir, jobs, n_times, report=True):
    from .. import limits
    from .. import report as reports

    counts = limits.compute_missing(out_dir, jobs=jobs)
    progress = [f"limit: {counts['measured']} members measured, {counts['up_to_date']} up to date, "
                f"{counts['waiting']} waiting for their reference"]
    if not report:
        return progress, []
    table, plots = reports.limit_rates(out_dir, n_times=n_times)
    return progress, [table, *_plots(plots)]


def _connectivity(out_dir, jobs, n_times, report=True):
    from .. import landscape

    landscape.connectivity_missing(out_dir)  # no-op without [connectivity] runs
    return [], []


def _landscape(out_dir, jobs, n_times, report=True):
    from .. import landscape

    text = landscape.report_text(out_dir) if report else None
    return [], [text] if text else []


def _lazy(out_dir, jobs, n_times, report=True):
    from .. import lazy

    if not report:
        return [], []
    table, plots = lazy.report(out_dir)
    return [], [table, *_plots(plots)]


def _classification(out_dir, jobs, n_times, report=True):
    from .. import report as reports

    if not report:
        return [], []
    table, plots = reports.classification_report(out_dir)
    return [], [table, *_plots(plots)]


def _config_asks(section: str, key: str):
    return lambda specs: any(spec.config.get(section, {}).get(key) for spec in specs)


def _limit_present(out_dir) -> bool:
    from .. import limits

    return bool(limits.pairs(out_dir))


def _lazy_present(out_dir) -> bool:
    from .. import lazy

    return lazy.has_lazy(out_dir)


register_stage(PostRunStage("limit", _config_asks("limit", "role"), _limit_present, _limit))
register_stage(PostRunStage("connectivity", _config_asks("connectivity", "enabled"), lambda out_dir: True,
                            _connectivity, figures=False))
register_stage(PostRunStage(
    "landscape",
    lambda specs: _config_asks("landscape", "enabled")(specs) or _config_asks("connectivity", "enabled")(specs),
    lambda out_dir: True, _landscape, figures=False))
register_stage(PostRunStage("lazy", _config_asks("lazy", "role"), _lazy_present, _lazy))


def _online_ode(out_dir, jobs, n_times, report=True):
    from . import _online_ode

    # The ODE files are the report's inputs: a shard of an array (report false) leaves them to
    # `meanfield report`, which stores every run's ODE once (DIR/ode/<run id>.h5).
    if not report:
        return [], []
    text, plots = _online_ode.report(out_dir)
    return [], [text, *_plots(plots)] if text else []


def _online_ode_present(out_dir) -> bool:
    from . import _online_ode

    return _online_ode.has_runs(out_dir)


register_stage(PostRunStage("online_ode", _config_asks("record", "order_parameters"), _online_ode_present,
                            _online_ode))


def _classification_present(out_dir) -> bool:
    from .. import report as reports

    return reports.has_classification(out_dir)


register_stage(PostRunStage("classification", _config_asks("record", "classification"), _classification_present,
                            _classification))
