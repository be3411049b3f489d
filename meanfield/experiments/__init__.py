"""Experiments: from an experiment file to runs and their analyses, above the engine.

- ``_config``: the schema of ``meanfield run`` files, ``--set``, sweeps and the cross-key rules;
- ``_assembly``: a resolved config's objects (random streams, problem, integrator, measures)
  and the observable registry;
- ``_stages`` and ``_run_stages``: the post-run stages, over a directory and per run;
- ``_summaries``: a directory's runs as summaries for reports and pictures;
- ``_memory``: the memory estimate that refuses runs that cannot fit;
- ``_slurm``: submission to a Slurm cluster (submitit); ``_progress``: step bars;
- ``_kinds``: the ``[experiment]`` kinds (signal propagation, deep linear networks), each a
  file that is one computation; their public functions are re-exported here.

Executing and resuming runs and sweeps is :mod:`meanfield.sweep`.
"""
from ._kinds import (
    KINDS,
    SCHEMAS,
    compute_deep_linear,
    compute_signal_propagation,
    experiment_kind,
    identity,
    report,
    resolve,
    run_command,
    run_file,
    summary,
    write,
)

__all__ = ["KINDS", "SCHEMAS", "compute_deep_linear", "compute_signal_propagation", "experiment_kind", "identity",
           "report", "resolve", "run_command", "run_file", "summary", "write"]
