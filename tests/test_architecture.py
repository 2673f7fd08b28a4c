"""Layering: lower layers never import higher ones (see ARCHITECTURE.md)."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import attnjax

PACKAGE = pathlib.Path(attnjax.__file__).parent
# bench (timing suites over the whole library) sits above every other library layer.
_MIDDLE = ("accounting", "analysis", "pretrained", "data", "training", "viz")
HIGHER_THAN = {
    "functional": {"layers", "models", *_MIDDLE, "bench"},
    "layers": {"models", *_MIDDLE, "bench"},
    "models": {*_MIDDLE, "bench"},
    **{layer: {"bench"} for layer in _MIDDLE},
}


def imported_names(path: pathlib.Path) -> set[str]:
    """Every module a file imports, with relative imports resolved against its package."""
    package = ".".join(path.parent.relative_to(PACKAGE.parent).parts)
    return imported_names_in(path.read_text(), package)


def imported_names_in(source: str, package: str) -> set[str]:
    """Modules imported by ``source`` (a file in ``package``).

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule), and
    ``from ..x import y`` is resolved against ``package``.
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, package)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
    return names


def _resolve_from(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module
    parts = package.split(".")
    if node.level > len(parts):
        raise ValueError(f"relative import beyond the top package in {package}")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from attnjax import models", "attnjax.layers", "attnjax.models"),
        ("from attnjax import models as m", "attnjax.layers", "attnjax.models"),
        ("from ..training import loop", "attnjax.layers", "attnjax.training.loop"),
        ("from .. import viz", "attnjax.layers", "attnjax.viz"),
        ("from . import mlp", "attnjax.layers", "attnjax.layers.mlp"),
        ("from ...models.config import ModelConfig", "attnjax.layers.sub", "attnjax.models.config"),
        ("import attnjax.models.config", "attnjax.layers", "attnjax.models.config"),
    ],
)
def test_imported_names_sees_every_import_form(source, package, expected):
    names = imported_names_in(source, package)
    assert expected in names, names


def forbidden_imports(names: set[str], layer: str) -> set[str]:
    forbidden = {f"attnjax.{name}" for name in HIGHER_THAN[layer]}
    return {n for n in names if ".".join(n.split(".")[:2]) in forbidden}


def test_an_upward_import_is_caught_in_either_form():
    for source in ("from attnjax import models", "from ..training import loop"):
        assert forbidden_imports(imported_names_in(source, "attnjax.layers"), "layers"), source


@pytest.mark.parametrize("layer", sorted(HIGHER_THAN))
def test_lower_layers_do_not_import_higher_ones(layer):
    for path in (PACKAGE / layer).rglob("*.py"):
        bad = forbidden_imports(imported_names(path), layer)
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
