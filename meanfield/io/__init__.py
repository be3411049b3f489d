"""The run-file format and everything that reads or writes it (the only package that imports h5py,
with the analysis package's array adapter).

- ``_store``: one run's HDF5 file (:class:`RunFile`: series, particle frames, checkpoints,
  crash-safe finish), its paths, locks, temporary names and status.
- ``_ode_file``: the run file of a solution of the order-parameter ODEs (``kind = "ode"``: the
  series of a particle run with order parameters, no particles).
- ``_catalog``: an output directory's catalog (``catalog.csv``), index (``index.h5``) and cache
  of catalog rows (``catalog.d/``: a fragment per shard, merged on demand).

The layout itself is documented in docs/hdf5.md.
"""
from ._catalog import (
    CatalogFragment,
    catalog_row,
    catalog_rows,
    final_values,
    last_risk,
    open_file_row,
    write_catalog_csv,
    write_index,
)
from ._ode_file import ODE_KIND, is_ode_file, read_ode_file, write_ode_file
from ._store import (
    OBSERVABLES,
    CorruptRunFile,
    RunFile,
    RunLock,
    RunLocked,
    attrs_of,
    column_names,
    finished_run_files,
    lock_held,
    move_aside,
    open_run,
    publish,
    read_attrs,
    read_checkpoint,
    read_series,
    remove_abandoned,
    replacing,
    run_file_names,
    run_paths,
    run_status,
    temporary_name,
    updating,
    write_experiment_file,
)

__all__ = [
    "ODE_KIND", "OBSERVABLES", "CatalogFragment", "CorruptRunFile", "RunFile", "RunLock", "RunLocked", "attrs_of",
    "catalog_row", "catalog_rows", "column_names", "final_values", "finished_run_files", "is_ode_file", "last_risk",
    "lock_held", "move_aside", "open_file_row", "open_run", "publish", "read_attrs", "read_checkpoint",
    "read_ode_file", "read_series", "remove_abandoned", "replacing", "run_file_names", "run_paths", "run_status",
    "temporary_name", "updating", "write_catalog_csv", "write_experiment_file", "write_index", "write_ode_file",
]
