"""Summaries of an output directory's runs, for the report, the status table and the
pictures: which config keys vary across the runs, short names for them, one summary per run.

Built on the catalog (:func:`meanfield.io.catalog_rows`) and ordered by the config schema.
"""
from __future__ import annotations

import json
import os

from ..io import catalog_rows
from ._config import SCHEMA

GROUP_EXCLUDE = ("run.seed",)
FINISHED = ("complete", "skipped", "diverged")
ABSENT = object()  # the value of a key that a run's config lacks


def short_names(keys) -> dict:
    """``section.key`` -> its last part (``model.m`` -> ``m``), or the whole name where two
    keys share a last part (``dynamics.step``, ``landscape.step``)."""
    keys = list(keys)
    last = [k.split(".")[-1] for k in keys]
    return {k: (name if last.count(name) == 1 else k) for k, name in zip(keys, last)}


def cell_text(value) -> str:
    """A config value as a table cell: "-" for an absent value, JSON for lists and dicts."""
    if value is ABSENT or value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def varying_keys(rows) -> list[str]:
    """The ``section.key`` columns of catalog rows (:func:`meanfield.io.catalog_rows`)
    whose values differ across the rows, in the order of the schema; corrupt rows, which
    have no config, are left out. A key that some rows lack (a key kept in the resolved
    config only when given, such as ``problem.seed``) varies too."""
    rows = [row for row in rows if row.get("status") != "corrupt"]
    columns = dict.fromkeys(key for row in rows for key in row if "." in key)
    sections = list(SCHEMA)

    def order(key):  # the schema's order (model, init, problem, ..., run), derived keys after their section's
        section, _, name = key.rpartition(".")
        names = list(SCHEMA.get(section, ()))
        return (sections.index(section) if section in sections else len(sections),
                names.index(name) if name in names else len(names), key)

    return sorted((key for key in columns
                   if len({json.dumps(row.get(key, "<absent>"), sort_keys=True, default=str) for row in rows}) > 1),
                  key=order)


def group_label(swept: dict) -> str:
    """"m=64 d=10": the swept values of a run other than the seed (``GROUP_EXCLUDE``), or "run"."""
    names = short_names(k for k in swept if k not in GROUP_EXCLUDE)
    parts = [f"{names[k]}={cell_text(v)}" for k, v in swept.items() if k not in GROUP_EXCLUDE]
    return " ".join(parts) or "run"


def sort_key(value):
    """A key that sorts config values of mixed types: numbers (and booleans) by value, then text."""
    if isinstance(value, bool):
        return (0, int(value), "")
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, cell_text(value))


def directory_summaries(out_dir, rows=None) -> tuple[list[dict], list[str]]:
    """Every run of a directory as a run summary for :func:`risk_curves`, its ``swept`` the
    keys that vary across the directory (:func:`varying_keys`); returns (summaries, keys).

    The runs of every sweep written into the directory are there, whatever file and
    ``--set`` wrote them: a summary of the directory shows all of them, never one sweep's
    runs under another sweep's name. Files of ``[experiment]`` kinds and ODE run files
    (``kind = "ode"``) are not runs of the network and are left out.
    """
    out_dir = os.fspath(out_dir)
    rows = catalog_rows(out_dir) if rows is None else rows
    # [experiment] files have their own report; ODE run files (kind "ode") are not particle runs
    rows = [row for row in rows if not row.get("experiment") and not row.get("kind")]
    keys = varying_keys(rows)
    summaries = [{"id": row["id"], "status": row["status"], "path": os.path.join(out_dir, row["file"]),
                  "final_risk": float(row["final_risk"]), "final_time": float(row["final_time"]),
                  "swept": {k: row.get(k, ABSENT) for k in keys}}
                 for row in rows if row["status"] != "corrupt"]
    return summaries, keys
