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
    after_ensemble : callable or None
        ``after_ensemble(paths, configs, problems, final_W) -> errors``: the stage for the
        complete members of an ensemble at once (``meanfield.sweep.execute_ensemble``), each
        member's result the one ``after_run`` would store; returns per member the exception that
        stopped it, or None. None: ``after_run`` member by member.
    """

    name: str
    enabled: Callable
    after_run: Callable
    after_ensemble: Callable | None = None


RUN_STAGES = Registry("run stage")  # run in the order of registration
register_run_stage = RUN_STAGES.register


def _landscape_end_point(path, config, problem=None) -> None:
    from ..landscape import store_endpoint

    store_endpoint(path, config, problem)


def _landscape_end_points(paths, configs, problems, final_W) -> list:
    from ..landscape._census import store_endpoints

    return store_endpoints(paths, configs, problems, final_W)


register_run_stage(RunStage("landscape", lambda config: bool(config.get("landscape", {}).get("enabled")),
                            _landscape_end_point, _landscape_end_points))
