"""Shared test set-up: CPU only, fresh random keys per test."""

import os
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name (reproducible, never zeros)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def without_jaxtyping(monkeypatch):
    """Run the library as users do, without the runtime type checks pytest turns on."""
    import jaxtyping

    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)
