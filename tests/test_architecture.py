"""Layering: lower layers never import higher ones (see ARCHITECTURE.md)."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import attnjax

PACKAGE = pathlib.Path(attnjax.__file__).parent
HIGHER_THAN = {
    "functional": {
        "layers",
        "models",
        "accounting",
        "analysis",
        "pretrained",
        "data",
        "training",
        "viz",
    },
    "layers": {"models", "accounting", "analysis", "pretrained", "data", "training", "viz"},
    "models": {"accounting", "analysis", "pretrained", "data", "training", "viz"},
}


def imported_names(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(HIGHER_THAN))
def test_lower_layers_do_not_import_higher_ones(layer):
    forbidden = {f"attnjax.{name}" for name in HIGHER_THAN[layer]}
    for path in (PACKAGE / layer).rglob("*.py"):
        bad = {
            n
            for n in imported_names(path)
            if n.split(".")[:2] and ".".join(n.split(".")[:2]) in forbidden
        }
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_library_never_imports_launchers_or_configs():
    for path in PACKAGE.rglob("*.py"):
        bad = {
            n
            for n in imported_names(path)
            if n.split(".")[0] in ("experiments", "configs", "tests")
        }
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_functional_runs_without_flax_or_optax():
    """Load attnjax.functional alone (not via attnjax/__init__) and list what it imports."""
    code = textwrap.dedent(
        f"""
        import sys, types
        package = types.ModuleType("attnjax")
        package.__path__ = [{str(PACKAGE)!r}]
        sys.modules["attnjax"] = package
        import attnjax.functional
        print("\\n".join(sorted(sys.modules)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert "attnjax.functional.attention" in loaded
    forbidden = {"flax", "optax", "orbax", "matplotlib", "attnjax.layers", "attnjax.models"}
    assert not loaded & forbidden, loaded & forbidden


def test_public_api_is_listed_and_importable():
    for name in attnjax.__all__:
        assert getattr(attnjax, name) is not None, name
    assert attnjax.dot_product_attention is attnjax.functional.dot_product_attention
