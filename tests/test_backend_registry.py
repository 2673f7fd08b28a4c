"""Adding a backend is one module and one registry line: the public function picks it up."""

import jax
import numpy as np
import pytest

import attnjax
from attnjax.functional.backends import REGISTRY
from attnjax.functional.backends.base import Backend
from attnjax.functional.backends.einsum import BACKEND as EINSUM


def _needs_equal_widths(call):
    return "my_kernel needs R = H" if call.value.shape[-1] != call.key.shape[-1] else None


def test_a_registered_backend_runs_and_refuses_with_its_own_reason(key, monkeypatch):
    calls = []

    def run(call):
        calls.append(call)
        return EINSUM.run(call)

    backend = Backend(name="my_kernel", run=run, unsupported=_needs_equal_widths)
    monkeypatch.setitem(REGISTRY, "my_kernel", backend)
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (2, 5, 4, 8))
    k = jax.random.normal(kk, (2, 7, 2, 8))
    v = jax.random.normal(kv, (2, 7, 2, 8))
    got = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation="my_kernel")
    expected = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation="vmap")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(calls) == 1 and calls[0].masking.is_causal
    with pytest.raises(ValueError, match="does not support this call: my_kernel needs R = H"):
        attnjax.dot_product_attention(q, k, v[..., :4], implementation="my_kernel")


def test_a_registered_backend_for_a_platform_becomes_the_automatic_choice(monkeypatch):
    backend = Backend(name="my_cpu_kernel", run=EINSUM.run, platforms=("cpu",))
    monkeypatch.setitem(REGISTRY, "my_cpu_kernel", backend)
    q = np.ones((1, 4, 2, 8), np.float32)
    assert attnjax.functional.choose_implementation(q, q, q, platform="cpu") == "my_cpu_kernel"
    assert attnjax.functional.choose_implementation(q, q, q, platform="tpu") != "my_cpu_kernel"


def test_pallas_is_not_chosen_for_a_value_width_it_cannot_take():
    q = np.ones((1, 8, 2, 16), np.float32)
    v = np.ones((1, 8, 2, 24), np.float32)
    assert attnjax.functional.choose_implementation(q, q, q, platform="tpu") == "pallas_tpu"
    assert attnjax.functional.choose_implementation(q, q, v, platform="tpu") == "blocked"
    with pytest.raises(ValueError, match="value width R=24 unlike the query/key width H=16"):
        attnjax.dot_product_attention(q, q, v, implementation="pallas_tpu")
