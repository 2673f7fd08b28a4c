"""The setup cell of the sweep notebook finds the repository (its configs/) or says why not."""

import pathlib

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).parents[1]
SWEEP_NOTEBOOK = REPO / "experiments" / "notebooks" / "04_heads_layers_sweep.ipynb"


def run_setup_cell(workdir: pathlib.Path, *before: str):
    """Run ``before`` cells, the notebook's setup cell and ``print(repo)`` in ``workdir``."""
    setup = nbformat.read(SWEEP_NOTEBOOK, as_version=4).cells[1]
    assert "configs" in setup.source
    cells = [nbformat.v4.new_code_cell(s) for s in before]
    cells += [setup, nbformat.v4.new_code_cell("print(repo)")]
    notebook = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return [out for cell in notebook.cells for out in cell.get("outputs", [])]


def test_outside_the_repository_it_finds_the_checkout_attnjax_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    outputs = run_setup_cell(tmp_path)
    assert not [o for o in outputs if o.output_type == "error"], outputs
    assert outputs[-1].text.strip() == str(REPO.resolve())


def test_without_a_checkout_it_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    installed = tmp_path / "site-packages" / "attnjax" / "__init__.py"
    pretend = f"import attnjax\nattnjax.__file__ = {str(installed)!r}"  # a non-editable install
    outputs = run_setup_cell(tmp_path, pretend)
    errors = [o for o in outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "FileNotFoundError", outputs
    assert "needs a checkout of the attnjax repository" in errors[0].evalue
