"""Every Colab notebook runs top to bottom (on CPU, with this checkout's attnjax)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).parents[1] / "experiments" / "notebooks").glob("*.ipynb")
)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.cells[0].cell_type == "markdown" and "colab-badge" in notebook.cells[0].source
    assert "except ImportError" in notebook.cells[1].source  # the install cell
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("ATTNJAX_WORKDIR", str(tmp_path))
    # Run where the notebook lives, as Jupyter does; files go to ATTNJAX_WORKDIR.
    client = NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
