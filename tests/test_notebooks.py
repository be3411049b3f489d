"""Every notebook of runs/notebooks/ runs headless, start to end, at small sizes.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (the kernel of this
interpreter, installed by ipykernel), with ``MEANFIELD_NOTEBOOK_SMALL=1`` (the notebooks
shrink every size) and ``MEANFIELD_REPO`` (where they find ``runs/*.toml``), in a temporary
working directory. A cell that raises fails the test, as does a cell running longer than
``CELL_TIMEOUT`` seconds. Notebooks are stored without outputs.
"""
import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "runs", "notebooks", "*.ipynb")))
CELL_TIMEOUT = 300
SMALL_LINE = 'SMALL = os.environ.get("MEANFIELD_NOTEBOOK_SMALL") == "1"'
# Notebooks whose plots must show up as images in the executed notebook.
WITH_FIGURES = {"quickstart.ipynb": 2, "width_sweep_rates.ipynb": 2}


def test_there_are_notebooks():
    assert {"quickstart.ipynb", "width_sweep_rates.ipynb"} <= {os.path.basename(p) for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and SMALL_LINE in code[0].source, f"the first code cell must read {SMALL_LINE}"
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "stored with outputs"
    monkeypatch.setenv("MEANFIELD_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MEANFIELD_REPO", REPO)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    images = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert images >= WITH_FIGURES.get(os.path.basename(path), 0)
