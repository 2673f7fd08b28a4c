"""Layering: lower layers never import higher ones (see ARCHITECTURE.md)."""

import subprocess
import sys

import attnjax


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_functional_imports_no_flax_optax_or_layers():
    loaded = imported_after("attnjax.functional")
    forbidden = {"flax", "optax", "attnjax.layers", "attnjax.models", "orbax", "matplotlib"}
    assert not loaded & forbidden, loaded & forbidden


def test_public_api_is_listed_and_importable():
    for name in attnjax.__all__:
        assert getattr(attnjax, name) is not None, name
    assert attnjax.dot_product_attention is attnjax.functional.dot_product_attention
