"""Stages that belong to one run: done in the run's own worker right after it finishes
complete (and redone on the next ``meanfield run`` if a kill came in between).

Each stage is one entry of :data:`RUN_STAGES`; ``meanfield.sweep.execute`` runs every entry
that the run's config enables and names none. The stages over a whole directory (distances
to the limit, census tables, lazy-training reports) are ``meanfield.experiments._stages``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..engine._registry import Registry


@dataclass(frozen=True)
class RunStage:
    """One per-run stage.

    Attributes
    ----------
    name : str
        Named in the message of a run whose stage failed (``"<name> stage: ..."``).
    enabled : callable
        ``enabled(config) -> bool`` from the run's resolved config.
    after_run : callable
        ``after_run(path, config, problem)``: store the stage's result into the finished run
        file at ``path`` (nothing when it is there already); ``problem`` is the run's problem
        when the caller has it, else None.
    ensemble_writers : callable or None
        ``ensemble_writers(configs, problems, final_W) -> writers``: the stage for the complete
        members of an ensemble at once (``meanfield.sweep.execute_ensemble``), before their files
        are finished: per member a function ``write(f)`` that stores what ``after_run`` would
        store into the open file being finished, or the exception that stopped it. None:
        ``after_run`` member by member after the files are finished.
    """

    name: str
    enabled: Callable
    after_run: Callable
    ensemble_writers: Callable | None = None


RUN_STAGES = Registry("run stage")  # run in the order of registration
register_run_stage = RUN_STAGES.register


def _landscape_end_point(path, config, problem=None) -> None:
    from ..landscape import store_endpoint

    store_endpoint(path, config, problem)


def _landscape_end_points(configs, problems, final_W) -> list:
    from ..landscape._census import endpoint_writers

    return endpoint_writers(configs, problems, final_W)


register_run_stage(RunStage("landscape", lambda config: bool(config.get("landscape", {}).get("enabled")),
                            _landscape_end_point, _landscape_end_points))
